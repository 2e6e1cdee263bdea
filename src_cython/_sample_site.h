/* The Gibbs draw of one site from products of precomputed exponentials (see _sample.pyx).
 *
 * A site v with K states has weights w[k] = exp_unary[k] times, for each pairwise slot j
 * (other variable o, offset of the factor's table oriented with v's states contiguous),
 * the entry exp_tables[offset + x_o * K + k] (times one entry per factor of arity >= 3,
 * multiplied in by the caller), and is drawn by inverse CDF from one uniform.
 *
 * One body, SMP_PAIR_WEIGHTS, serves every K: smp_pair_weights takes K at run time, and
 * smp_draw_pairwise_K (K = 2..8) is the same body with K a compile-time constant, so that
 * the K running products live in registers and every loop unrolls -- twice as fast on a
 * Potts grid as the run-time loops, which keep the weights in memory.
 */
#ifndef FACTOREBM_SAMPLE_SITE_H
#define FACTOREBM_SAMPLE_SITE_H
#include <stdint.h>

/* A uniform double in [0, 1) (53 bits): SplitMix64's output function (Steele, Lea and Flood
   2014) at state key + (counter + 1) * golden, i.e. the counter-th draw of stream `key`. */
static inline double smp_uniform(uint64_t key, uint64_t counter) {
    uint64_t z = key + (counter + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z = z ^ (z >> 31);
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

#define SMP_PAIR_WEIGHTS(K)                                                                 \
    for (int64_t k = 0; k < (K); k++) w[k] = eu[k];                                         \
    _Pragma("GCC unroll 4") /* n_slots known only at run time: fewer loop branches */       \
    for (int64_t j = 0; j < n_slots; j++) {                                                 \
        const double* t = et + slot[2 * j + 1] + x[slot[2 * j]] * (K);                      \
        for (int64_t k = 0; k < (K); k++) w[k] *= t[k];                                     \
    }

/* w[k] for k < K: the unary weight times one entry of each pairwise slot's table. */
static inline void smp_pair_weights(int64_t K, const double* eu, const int32_t* slot,
                                    int64_t n_slots, const double* et, const int64_t* x,
                                    double* w) {
    SMP_PAIR_WEIGHTS(K)
}

/* The state drawn with the uniform u from weights w of sum total > 0, branch-free: the
   first state whose cumulative weight exceeds r = u * total is the number of cumulative
   weights <= r. When r rounds up to the total (u close to 1), that count can land on a
   trailing state of weight 0: the draw is then the last state of positive weight, and in
   every other case the draw is at most that state, hence the min. (No index into w depends
   on the data, so that w can stay in registers.) */
static inline int64_t smp_inverse_cdf(const double* w, int64_t K, double total, double u) {
    double r = u * total, c = 0.0;
    int64_t sel = 0, last = 0;
    for (int64_t k = 0; k < K; k++) {
        c += w[k];
        sel += k < K - 1 && c <= r;
        last = w[k] > 0.0 ? k : last;
    }
    return sel < last ? sel : last;
}

/* The drawn state of a site whose factors are all pairwise, or -1 when the weights' sum is
   below `tiny` (the products may have underflowed: the caller redoes the site in energy
   space). */
#define SMP_DEFINE_DRAW_PAIRWISE(K)                                                         \
static inline int64_t smp_draw_pairwise_##K(const double* eu, const int32_t* slot,         \
                                            int64_t n_slots, const double* et,             \
                                            const int64_t* x, double u, double tiny) {     \
    double w[K], total = 0.0;                                                               \
    SMP_PAIR_WEIGHTS(K)                                                                     \
    for (int k = 0; k < (K); k++) total += w[k];                                            \
    return total >= tiny ? smp_inverse_cdf(w, K, total, u) : -1;                            \
}

SMP_DEFINE_DRAW_PAIRWISE(2)
SMP_DEFINE_DRAW_PAIRWISE(3)
SMP_DEFINE_DRAW_PAIRWISE(4)
SMP_DEFINE_DRAW_PAIRWISE(5)
SMP_DEFINE_DRAW_PAIRWISE(6)
SMP_DEFINE_DRAW_PAIRWISE(7)
SMP_DEFINE_DRAW_PAIRWISE(8)

/* smp_draw_pairwise_K for K = 2..8; -2 for other K (the caller takes the run-time path). */
static inline int64_t smp_draw_pairwise(int64_t K, const double* eu, const int32_t* slot,
                                        int64_t n_slots, const double* et, const int64_t* x,
                                        double u, double tiny) {
    switch (K) {
        case 2: return smp_draw_pairwise_2(eu, slot, n_slots, et, x, u, tiny);
        case 3: return smp_draw_pairwise_3(eu, slot, n_slots, et, x, u, tiny);
        case 4: return smp_draw_pairwise_4(eu, slot, n_slots, et, x, u, tiny);
        case 5: return smp_draw_pairwise_5(eu, slot, n_slots, et, x, u, tiny);
        case 6: return smp_draw_pairwise_6(eu, slot, n_slots, et, x, u, tiny);
        case 7: return smp_draw_pairwise_7(eu, slot, n_slots, et, x, u, tiny);
        case 8: return smp_draw_pairwise_8(eu, slot, n_slots, et, x, u, tiny);
        default: return -2;
    }
}
/* The uniforms of a block of sites are drawn apart from the sites, in one loop that the
   AVX-512 clone vectorizes with its 64-bit multiply (0.4 ns a uniform instead of 1.5 on an
   EPYC; AVX2, which emulates that multiply, is no faster than scalar code, hence no AVX2
   clone): inlined, SplitMix64 was a quarter of a K = 2 site's instructions. Only integer
   arithmetic and an exact conversion (z >> 11 < 2^53) are cloned, so every clone returns the
   same bits; the products of the weights stay in portable code, where no FMA contraction can
   round them otherwise. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 12
#define SMP_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SMP_CLONES __attribute__((target_clones("avx512dq", "default")))
#else
#define SMP_CLONES
#endif
/* sites per block of uniforms: the block's uniforms stay in L1 */
#define SMP_BLOCK 64

/* u[i] = the uniform of site order[i] (draw ctr + 2 order[i] of stream key), i < n. */
SMP_CLONES
static void smp_uniforms(const int64_t* restrict order, int64_t n, uint64_t key, uint64_t ctr,
                         double* restrict u) {
    for (int64_t i = 0; i < n; i++) u[i] = smp_uniform(key, ctr + 2 * (uint64_t)order[i]);
}

/* Gibbs updates of the sites order[lo:hi] of chain x when every variable has K states and
   every factor is pairwise: the loop of _sample.pyx's _sweep_range with the site inlined,
   for K = 2..8. The site at position i of the order reads its unary weights at
   pos_eu[K i ..] and its slots at pos_slot[2 pos_offset[i] ..], or, when every position has
   deg slots (padded with slots that multiply by 1), at pos_slot[2 deg i ..] with no offsets
   to load: laid out in update order, so that a sweep streams through them once (in variable
   order, the sites of one colour of a checkerboard would use every other entry, and each
   cache line would be fetched twice per sweep). The uniform of site v is draw ctr + 2 v of
   stream key. Returns hi, or the position i of the first site whose weights underflowed
   (left unchanged: the caller redoes it in energy space and resumes at i + 1). */
/* The sweep over order[lo:hi] with the slots of position i at SLOT (N_SLOTS of them);
   returns. */
#define SMP_SWEEP_BLOCKS(K, SLOT, N_SLOTS)                                                  \
    double u[SMP_BLOCK];                                                                    \
    for (int64_t b = lo; b < hi; b += SMP_BLOCK) {                                          \
        const int64_t e = hi - b < SMP_BLOCK ? hi : b + SMP_BLOCK;                          \
        smp_uniforms(order + b, e - b, key, ctr, u);                                        \
        for (int64_t i = b; i < e; i++) {                                                   \
            const int64_t sel = smp_draw_pairwise_##K(pos_eu + (K) * i, SLOT, N_SLOTS, et,  \
                                                      x, u[i - b], tiny);                   \
            if (sel < 0) return i;                                                          \
            x[order[i]] = sel;                                                              \
        }                                                                                   \
    }                                                                                       \
    return hi;

/* The common lattice degrees (a chain or ring, a 2-D, a 3-D and an 8-neighbour 2-D grid)
   get the slot loop unrolled at compile time: on a K = 2 grid the run-time count cost 11 of
   the site's 63 instructions. */
#define SMP_DEFINE_SWEEP_PAIRWISE(K)                                                        \
static int64_t smp_sweep_pairwise_##K(const int64_t* order, int64_t lo, int64_t hi,         \
                                      const int64_t* pos_offset, int64_t deg,               \
                                      const int32_t* pos_slot, const double* pos_eu,        \
                                      const double* et, int64_t* x, uint64_t key,           \
                                      uint64_t ctr, double tiny) {                          \
    switch (deg) {                                                                          \
        case 0: { SMP_SWEEP_BLOCKS(K, pos_slot + 2 * pos_offset[i],                         \
                                   pos_offset[i + 1] - pos_offset[i]) }                     \
        case 2: { SMP_SWEEP_BLOCKS(K, pos_slot + 4 * i, 2) }                                \
        case 4: { SMP_SWEEP_BLOCKS(K, pos_slot + 8 * i, 4) }                                \
        case 6: { SMP_SWEEP_BLOCKS(K, pos_slot + 12 * i, 6) }                               \
        case 8: { SMP_SWEEP_BLOCKS(K, pos_slot + 16 * i, 8) }                               \
        default: { SMP_SWEEP_BLOCKS(K, pos_slot + 2 * deg * i, deg) }                       \
    }                                                                                       \
}

SMP_DEFINE_SWEEP_PAIRWISE(2)
SMP_DEFINE_SWEEP_PAIRWISE(3)
SMP_DEFINE_SWEEP_PAIRWISE(4)
SMP_DEFINE_SWEEP_PAIRWISE(5)
SMP_DEFINE_SWEEP_PAIRWISE(6)
SMP_DEFINE_SWEEP_PAIRWISE(7)
SMP_DEFINE_SWEEP_PAIRWISE(8)

/* smp_sweep_pairwise_K for K = 2..8 (the caller checks K). */
static inline int64_t smp_sweep_pairwise(int64_t K, const int64_t* order, int64_t lo, int64_t hi,
                                         const int64_t* pos_offset, int64_t deg,
                                         const int32_t* pos_slot, const double* pos_eu,
                                         const double* et, int64_t* x, uint64_t key,
                                         uint64_t ctr, double tiny) {
#define SMP_CALL(K) \
    smp_sweep_pairwise_##K(order, lo, hi, pos_offset, deg, pos_slot, pos_eu, et, x, key, ctr, tiny)
    switch (K) {
        case 2: return SMP_CALL(2);
        case 3: return SMP_CALL(3);
        case 4: return SMP_CALL(4);
        case 5: return SMP_CALL(5);
        case 6: return SMP_CALL(6);
        case 7: return SMP_CALL(7);
        default: return SMP_CALL(8);
    }
#undef SMP_CALL
}
#endif
