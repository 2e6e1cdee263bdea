/* Gibbs draw of one site whose factors are all pairwise, specialized for K = 2..8 states.
 *
 * The weights of the K states are products of precomputed exponentials (see _sample.pyx):
 * exp_unary[k] times, for each pairwise slot j (other variable o, table offset, step of v),
 * the entry exp_tables[offset + x_o * ostride + k * step] with ostride = K if step == 1 else 1.
 * With K a compile-time constant the K running products live in registers and every loop
 * unrolls; the generic loops of _sample.pyx keep them in memory (K known only at run time).
 *
 * smp_draw_pairwise returns the drawn state, or -1 when the weights' sum is below `tiny`
 * (the products may have underflowed: the caller redoes the site in energy space), or -2
 * when K is not specialized here.
 */
#ifndef FACTOREBM_SAMPLE_SITE_H
#define FACTOREBM_SAMPLE_SITE_H
#include <stdint.h>

/* The first state whose cumulative weight exceeds r = u * total, branch-free (the number of
   cumulative weights <= r); when r rounds up to the total, the last state of positive weight. */
#define SMP_INVERSE_CDF(K)                                                                  \
    double r = u * total, c = 0.0;                                                          \
    int64_t sel = 0;                                                                        \
    for (int k = 0; k < (K) - 1; k++) { c += w[k]; sel += c <= r; }                         \
    while (w[sel] == 0.0) sel--;                                                            \
    return sel;

#define SMP_DEFINE_PAIRWISE(K)                                                              \
static inline int64_t smp_draw_pairwise_##K(const double* eu, const int32_t* slot,        \
                                            int64_t n_slots, const double* et,             \
                                            const int64_t* x, double u, double tiny) {     \
    double w[K];                                                                            \
    for (int k = 0; k < (K); k++) w[k] = eu[k];                                             \
    for (int64_t j = 0; j < n_slots; j++) {                                                 \
        const int32_t* s = slot + 3 * j;                                                    \
        const int64_t step = s[2];                                                          \
        const double* t = et + s[1] + x[s[0]] * (step == 1 ? (K) : 1);                      \
        for (int k = 0; k < (K); k++) w[k] *= t[k * step];                                  \
    }                                                                                       \
    double total = 0.0;                                                                     \
    for (int k = 0; k < (K); k++) total += w[k];                                            \
    if (!(total >= tiny)) return -1;                                                        \
    SMP_INVERSE_CDF(K)                                                                      \
}

SMP_DEFINE_PAIRWISE(2)
SMP_DEFINE_PAIRWISE(3)
SMP_DEFINE_PAIRWISE(4)
SMP_DEFINE_PAIRWISE(5)
SMP_DEFINE_PAIRWISE(6)
SMP_DEFINE_PAIRWISE(7)
SMP_DEFINE_PAIRWISE(8)

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
