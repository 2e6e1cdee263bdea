/* The Gibbs draw of one site from products of precomputed exponentials (see _sample.pyx).
 *
 * A site v with K states has weights w[k] = exp_unary[k] times, for each pairwise slot j
 * (other variable o, table offset, step of v), the entry
 *     exp_tables[offset + x_o * ostride + k * step],   ostride = K if step == 1 else 1,
 * (times one entry per factor of arity >= 3, multiplied in by the caller), and is drawn by
 * inverse CDF from one uniform.
 *
 * One body, SMP_PAIR_WEIGHTS, serves every K: smp_pair_weights takes K at run time, and
 * smp_draw_pairwise_K (K = 2..8) is the same body with K a compile-time constant, so that
 * the K running products live in registers and every loop unrolls -- twice as fast on a
 * Potts grid as the run-time loops, which keep the weights in memory.
 */
#ifndef FACTOREBM_SAMPLE_SITE_H
#define FACTOREBM_SAMPLE_SITE_H
#include <stdint.h>

#define SMP_PAIR_WEIGHTS(K)                                                                 \
    for (int64_t k = 0; k < (K); k++) w[k] = eu[k];                                         \
    for (int64_t j = 0; j < n_slots; j++) {                                                 \
        const int32_t* s = slot + 3 * j;                                                    \
        const int64_t step = s[2];                                                          \
        const double* t = et + s[1] + x[s[0]] * (step == 1 ? (K) : 1);                      \
        for (int64_t k = 0; k < (K); k++) w[k] *= t[k * step];                              \
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
   trailing state of weight 0: step back to the last state of positive weight. */
static inline int64_t smp_inverse_cdf(const double* w, int64_t K, double total, double u) {
    double r = u * total, c = 0.0;
    int64_t sel = 0;
    for (int64_t k = 0; k < K - 1; k++) {
        c += w[k];
        sel += c <= r;
    }
    while (w[sel] == 0.0) sel--;
    return sel;
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
#endif
