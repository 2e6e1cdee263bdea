/* A barrier for the threads of one OpenMP team: spin for at most 10 microseconds, then sleep
 * on a futex.
 *
 * The blocked Gibbs sweep of one chain (_sample.pyx) meets at a barrier after every colour,
 * two per sweep. libgomp's barrier spins up to GOMP_SPINCOUNT (300000) pauses, milliseconds,
 * before it sleeps: on a machine whose cores are also busy with other processes, a thread
 * spinning on the core where the thread it waits for is queued holds that core all that
 * time, at every barrier. On a 2-core VM at load 3, one chain on 2 threads ran 10 M site
 * updates/s (K = 2, 300x300 Potts grid; median of 25 calls) where one thread ran 90 M; with
 * this barrier, 91 M (spinning 20 or 50 us: 57 M, 200 us: 45 M, 1 ms: 24 M). Threads that
 * split a colour evenly and both run meet within the spin (one colour's share of that grid
 * is 90 us of work), so an idle machine takes no sleep.
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
#define TB_SPIN_NS 10000

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

/* Wait until all n threads of the team have called it in this round. Every write a thread
   made before the call is visible to all of them after it. */
static inline void tb_wait(tb_barrier* b, int n) {
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
    int64_t t0 = -1;
    for (int spins = 0; __atomic_load_n(&b->round, __ATOMIC_ACQUIRE) == round; spins++) {
        if (spins % 64 != 63) {
            TB_PAUSE();
        } else if (t0 < 0) {
            t0 = tb_now_ns();
        } else if (tb_now_ns() - t0 < TB_SPIN_NS && t0 > 0) {
            continue;
        } else {
            __atomic_add_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
            /* the futex returns at once when round has moved on */
            if (__atomic_load_n(&b->round, __ATOMIC_SEQ_CST) == round) TB_SLEEP(&b->round, round);
            __atomic_sub_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
        }
    }
#else
    (void)b;        /* no atomics: a build without OpenMP (MSVC here), whose teams have one thread */
#endif
}
#endif
