/* A barrier for the threads of one OpenMP team that spins while the threads it waits for
 * make progress, and sleeps on a futex when they stall.
 *
 * The blocked Gibbs sweep of one chain (_sample.pyx) meets at a barrier after every colour,
 * two per sweep. libgomp's barrier spins up to GOMP_SPINCOUNT (300000) pauses, milliseconds,
 * before it sleeps: when other processes keep the cores busy, the thread it waits for may be
 * queued behind the spinning thread on its core, and every barrier then costs a time slice.
 * On a 2-core VM at load 2-3, one chain on 2 threads (K = 2, 300x300 Potts grid) ran a median
 * 10 M site updates/s in such stretches, where one thread ran 90 M. Sleeping after a fixed
 * 10 us spin never fell that low (91 M), but slept at nearly every barrier, and on this VM a
 * wake-up waits for the scheduler (milliseconds): 2 threads never beat one. So each thread
 * ticks a counter of its own as it works (every few microseconds), and a waiting thread spins
 * while some teammate's counter moves, and sleeps once none has moved for TB_STALL_NS.
 */
#ifndef FACTOREBM_TEAM_BARRIER_H
#define FACTOREBM_TEAM_BARRIER_H
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__)
#include <time.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define TB_SLEEP(addr, val) syscall(SYS_futex, (addr), FUTEX_WAIT_PRIVATE, (val), NULL, NULL, 0)
#define TB_WAKE(addr) syscall(SYS_futex, (addr), FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0)
#elif defined(_WIN32)
#include <windows.h>
#define TB_SLEEP(addr, val) SwitchToThread()
#define TB_WAKE(addr) ((void)0)
#else
#include <sched.h>
#define TB_SLEEP(addr, val) sched_yield()
#define TB_WAKE(addr) ((void)0)
#endif
#if defined(__x86_64__) || defined(__i386__)
#define TB_PAUSE() __builtin_ia32_pause()
#else
#define TB_PAUSE() ((void)0)
#endif
/* no teammate ticked for this long: they do not run, give the core up */
#define TB_STALL_NS 20000
/* int64 slots between two threads' counters: 64 bytes, so never on one cache line */
#define TB_STRIDE 8

#if defined(__GNUC__) || defined(__clang__)
/* Count a step of the calling thread's work (its counter, read by the waiting threads). */
static inline void tb_tick(int64_t* counter) {
    __atomic_store_n(counter, *counter + 1, __ATOMIC_RELAXED);
}

/* The sum of the n threads' counters. */
static inline int64_t tb_progress(const int64_t* counters, int n) {
    int64_t sum = 0;
    for (int t = 0; t < n; t++) {
        sum += __atomic_load_n(&counters[TB_STRIDE * t], __ATOMIC_RELAXED);
    }
    return sum;
}
#else
static inline void tb_tick(int64_t* counter) { *counter += 1; }
#endif

/* A monotonic clock in nanoseconds (0 where there is none: the spin then stops after its
   first check, as if the time were up). */
static inline int64_t tb_now_ns(void) {
#if defined(__linux__)
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
#else
    return 0;
#endif
}

typedef struct {
    int count;      /* threads arrived in this round */
    int round;      /* rounds completed (the futex word) */
    int sleepers;   /* threads that may sleep on round: the last to arrive wakes them */
} tb_barrier;

static inline void tb_init(tb_barrier* b) { b->count = 0; b->round = 0; b->sleepers = 0; }

/* The number of threads of the calling team (1 outside a parallel region, or without
   OpenMP). */
static inline int tb_team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* Wait until all n threads of the team have called it in this round; counters[TB_STRIDE t]
   is thread t's (tb_tick). Every write a thread made before the call is visible to all of
   them after it. */
static inline void tb_wait(tb_barrier* b, int n, const int64_t* counters) {
    if (n <= 1) return;
#if defined(__GNUC__) || defined(__clang__)
    const int round = __atomic_load_n(&b->round, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == n) {
        /* the last to arrive: count is reset before the round is published, so that a thread
           that leaves and enters the next round counts from 0. Round is published before
           sleepers is read, and a sleeper counts itself before it reads round (sequentially
           consistent, both): either the sleeper sees the new round and does not sleep, or
           this thread sees it and wakes it (a thread that sleeps in a later round may be
           woken too; it goes back to sleep) */
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->round, round + 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&b->sleepers, __ATOMIC_SEQ_CST) > 0) TB_WAKE(&b->round);
        return;
    }
    int64_t seen = tb_progress(counters, n), moved = tb_now_ns();
    for (int spins = 0; __atomic_load_n(&b->round, __ATOMIC_ACQUIRE) == round; spins++) {
        if (spins % 64 != 63) {
            TB_PAUSE();
            continue;
        }
        const int64_t now = tb_now_ns(), p = tb_progress(counters, n);
        if (p != seen) {
            seen = p;
            moved = now;
        } else if (now - moved >= TB_STALL_NS || now == 0) {
            __atomic_add_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
            /* the futex returns at once when round has moved on */
            if (__atomic_load_n(&b->round, __ATOMIC_SEQ_CST) == round) TB_SLEEP(&b->round, round);
            __atomic_sub_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
            moved = tb_now_ns();
        }
    }
#else
    /* no atomics: a build without OpenMP (MSVC here), whose teams have one thread */
    (void)b;
    (void)counters;
#endif
}
#endif
