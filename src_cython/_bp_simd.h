/* Flat loops of the belief-propagation kernel (_bp.pyx): batched exp and log, and the
 * [state][factor] block steps of a flooding sweep (normalize, contract, damp, measure).
 *
 * Kept in C so that GCC compiles each loop for the baseline ISA and the wider vector ISAs
 * (function multiversioning), dispatched at load time. Plain IEEE arithmetic: +inf is a
 * forbidden state and propagates as usual.
 */
#ifndef FACTOREBM_BP_SIMD_H
#define FACTOREBM_BP_SIMD_H
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 12
/* x86-64-v3 is AVX2 with FMA: the polynomials run 1.7x faster than with AVX2 alone
   (ISA levels as target_clones names need GCC 12, PR101696) */
#define BP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define BP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BP_CLONES
#endif
static inline double bp_asdouble(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }
static inline uint64_t bp_asuint(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }

/* exp(-beta * x) for x >= 0 (or +inf); 0 when it is below ~1e-307. */
static inline __attribute__((always_inline)) double bp_exp_neg1(double x, double beta) {
    const double shift = 6755399441055744.0;            /* 0x1.8p52 */
    const double log2e = 1.4426950408889634;
    /* Cody-Waite split of ln 2 (fdlibm): ln2hi has 21 trailing zero bits, so
       kd * ln2hi is exact for |kd| < 2^21 with or without FMA contraction. */
    const double ln2hi = 6.93147180369123816490e-01, ln2lo = 1.90821492927058770002e-10;
    double y = -beta * x;
    double yc = y < -708.0 ? -708.0 : y;                 /* also maps -inf (and NaN-free) */
    double kd = yc * log2e + shift;
    uint64_t ki = bp_asuint(kd);
    kd -= shift;
    double r = (yc - kd * ln2hi) - kd * ln2lo;           /* |r| <= ln2 / 2 */
    double p = 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    double scale = bp_asdouble((ki + 1023u) << 52);
    return y <= -708.0 ? 0.0 : p * scale;
}

/* out[i] = exp(-beta * x[i]) for x[i] >= 0 (or +inf); 0 when it is below ~1e-307. */
BP_CLONES
static void bp_exp_neg(const double* x, double* out, Py_ssize_t n, double beta) {
    for (Py_ssize_t i = 0; i < n; i++) out[i] = bp_exp_neg1(x[i], beta);
}

/* log(c) for 128 centres c of [1, 2): log(x) = e ln2 + log(c_j) + log1p(r) with
   r = m / c_j - 1 small (|r| < 2^-8), so a degree-7 series replaces the division and the
   long polynomial of a full-range log. logc[j] is -log(invc[j]) rather than log(c_j),
   which makes the identity exact whatever rounding invc[j] took. Filled at import. */
static double bp_log_invc[128], bp_log_logc[128];
static void bp_log_table_init(void) {
    for (int j = 0; j < 128; j++) {
        double c = 1.0 + (j + 0.5) / 128.0;
        bp_log_invc[j] = 1.0 / c;
        bp_log_logc[j] = -log(bp_log_invc[j]);
    }
}

/* out[i] = -log(x[i]) / beta for x[i] >= tiny (finite); NaN (a flag) otherwise; returns
   whether it flagged any. x and out
   must not overlap (restrict: with two table lookups per element, GCC vectorizes only
   then). */
BP_CLONES
static int bp_neg_log(const double* restrict x, double* restrict out, Py_ssize_t n,
                       double beta, double tiny) {
    const double ln2hi = 6.93147180369123816490e-01, ln2lo = 1.90821492927058770002e-10;
    const double scale = -1.0 / beta;   /* a multiply, not a divide, per element */
    int flagged = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double xi = x[i];
        double xs = xi >= tiny ? xi : 1.0;
        uint64_t u = bp_asuint(xs);
        double e = bp_asdouble((u >> 52) | 0x4330000000000000ULL) - 4503599627371519.0; /* 2^52 + 1023 */
        uint64_t mb = u & 0x000FFFFFFFFFFFFFULL;
        uint64_t j = mb >> 45;                 /* 64-bit index: GCC gathers only then */
        double m = bp_asdouble(mb | 0x3FF0000000000000ULL);            /* [1, 2) */
        double r = m * bp_log_invc[j] - 1.0;
        double r2 = r * r;
        double p = r2 * (-0.5 + r * (1.0 / 3.0) + r2 * (-0.25 + r * 0.2
                   + r2 * (-1.0 / 6.0 + r * (1.0 / 7.0))));
        double lg = (e * ln2hi + bp_log_logc[j]) + (r + (p + e * ln2lo));
        out[i] = xi >= tiny ? lg * scale : NAN;
        flagged |= !(xi >= tiny);
    }
    return flagged;
}

/* Flat loops of the pairwise block update (_flood_pairwise_block), over
   buffers laid out [state][factor] (nf factors): kept here, next to exp and
   log, so that they are cloned for the wider vector ISAs as well. */

/* Rows r0..r1-1 of x: subtract each column's minimum (left alone if +inf), and out =
   exp(-beta x) on them (as bp_exp_neg), the subtraction and the exponential in one pass.
   lo: nf doubles of scratch. */
BP_CLONES
static void bp_shift_exp_rows(double* restrict x, double* restrict out, Py_ssize_t nf,
                              Py_ssize_t r0, Py_ssize_t r1, double beta, double* restrict lo) {
    for (Py_ssize_t f = 0; f < nf; f++) lo[f] = x[r0 * nf + f];
    for (Py_ssize_t r = r0 + 1; r < r1; r++) {
        const double* row = x + r * nf;
        for (Py_ssize_t f = 0; f < nf; f++) lo[f] = row[f] < lo[f] ? row[f] : lo[f];
    }
    for (Py_ssize_t f = 0; f < nf; f++) lo[f] = lo[f] != INFINITY ? lo[f] : 0.0;
    for (Py_ssize_t r = r0; r < r1; r++) {
        double* row = x + r * nf;
        double* o = out + r * nf;
        for (Py_ssize_t f = 0; f < nf; f++) {
            const double v = row[f] - lo[f];
            row[f] = v;
            o[f] = bp_exp_neg1(v, beta);
        }
    }
}

/* Both directions of nf pairwise factors sharing the K0 x K1 table T: the
   semiring's sum over the other variable, min-plus on energies (min_sum) or
   multiply-add on scaled probabilities. ya (K0 rows), yb (K1 rows). */
BP_CLONES
static void bp_pair_shared(const double* restrict xa, const double* restrict xb,
                           double* restrict ya, double* restrict yb, const double* T,
                           Py_ssize_t nf, Py_ssize_t K0, Py_ssize_t K1, int min_sum) {
    if (min_sum) {
        for (Py_ssize_t j = 0; j < K1; j++) {
            double* y = yb + j * nf;
            for (Py_ssize_t f = 0; f < nf; f++) y[f] = INFINITY;
            for (Py_ssize_t i = 0; i < K0; i++) {
                const double w = T[i * K1 + j];
                const double* x = xa + i * nf;
                for (Py_ssize_t f = 0; f < nf; f++) { double v = x[f] + w; y[f] = v < y[f] ? v : y[f]; }
            }
        }
        for (Py_ssize_t i = 0; i < K0; i++) {
            double* y = ya + i * nf;
            for (Py_ssize_t f = 0; f < nf; f++) y[f] = INFINITY;
            for (Py_ssize_t j = 0; j < K1; j++) {
                const double w = T[i * K1 + j];
                const double* x = xb + j * nf;
                for (Py_ssize_t f = 0; f < nf; f++) { double v = x[f] + w; y[f] = v < y[f] ? v : y[f]; }
            }
        }
    } else {
        for (Py_ssize_t j = 0; j < K1; j++) {
            double* y = yb + j * nf;
            for (Py_ssize_t f = 0; f < nf; f++) y[f] = 0.0;
            for (Py_ssize_t i = 0; i < K0; i++) {
                const double w = T[i * K1 + j];
                const double* x = xa + i * nf;
                for (Py_ssize_t f = 0; f < nf; f++) y[f] += x[f] * w;
            }
        }
        for (Py_ssize_t i = 0; i < K0; i++) {
            double* y = ya + i * nf;
            for (Py_ssize_t f = 0; f < nf; f++) y[f] = 0.0;
            for (Py_ssize_t j = 0; j < K1; j++) {
                const double w = T[i * K1 + j];
                const double* x = xb + j * nf;
                for (Py_ssize_t f = 0; f < nf; f++) y[f] += x[f] * w;
            }
        }
    }
}

/* The end of a pairwise block's update for the messages in rows r0..r1-1 ([state][factor],
   nf factors), fused into two passes: damp the new messages acc against old (where acc is
   NaN, the underflow flag, the exact value fb replaces it; use_fb = 0 when nothing was
   flagged), normalize each factor's message to minimum 0 (an all +inf message is left
   alone), and return the largest change |acc - old| (the values are >= 0 and never NaN, so
   the maximum is taken on their bit patterns as integers, which order like the doubles and
   vectorize without fast-math). Two passes over the rows. fb is read at every element,
   set or not (the caller zeroes it once): read only where acc is NaN, the compiler makes it
   a masked load, which costs a microcode assist per vector on pages never written to (a new
   thread's scratch). lo: nf doubles of scratch. */
BP_CLONES
static double bp_finish_rows(double* restrict acc, const double* restrict old,
                             const double* restrict fb, Py_ssize_t nf, Py_ssize_t r0,
                             Py_ssize_t r1, double damping, int use_fb, double* restrict lo) {
    const double keep = 1.0 - damping;
    for (Py_ssize_t f = 0; f < nf; f++) lo[f] = INFINITY;
    for (Py_ssize_t r = r0; r < r1; r++) {
        double* a = acc + r * nf;
        const double* o = old + r * nf;
        const double* b = fb + r * nf;
        if (use_fb && damping > 0.0) {
            for (Py_ssize_t f = 0; f < nf; f++) {
                const double x = a[f], y = b[f];
                const double v = keep * (x == x ? x : y) + damping * o[f];
                a[f] = v;
                lo[f] = v < lo[f] ? v : lo[f];
            }
        } else if (use_fb) {
            for (Py_ssize_t f = 0; f < nf; f++) {
                const double x = a[f], y = b[f];
                const double v = x == x ? x : y;
                a[f] = v;
                lo[f] = v < lo[f] ? v : lo[f];
            }
        } else if (damping > 0.0) {
            for (Py_ssize_t f = 0; f < nf; f++) {
                const double v = keep * a[f] + damping * o[f];
                a[f] = v;
                lo[f] = v < lo[f] ? v : lo[f];
            }
        } else {
            for (Py_ssize_t f = 0; f < nf; f++) lo[f] = a[f] < lo[f] ? a[f] : lo[f];
        }
    }
    for (Py_ssize_t f = 0; f < nf; f++) lo[f] = lo[f] != INFINITY ? lo[f] : 0.0;
    int64_t m = 0;       /* sign bits cleared: signed order is the doubles' order */
    for (Py_ssize_t r = r0; r < r1; r++) {
        double* a = acc + r * nf;
        const double* o = old + r * nf;
        for (Py_ssize_t f = 0; f < nf; f++) {
            const double x = a[f] - lo[f];
            a[f] = x;
            int64_t u = (int64_t)(bp_asuint(x - o[f]) & 0x7FFFFFFFFFFFFFFFULL);   /* fabs */
            u &= -(int64_t)(x != o[f]);                                          /* 0 if equal */
            m = u > m ? u : m;
        }
    }
    return bp_asdouble((uint64_t)m);
}

/* Pairwise Potts factors T(a, b) = d + c [a != b] (0 <= c <= +inf), nf of them with K states
   on both sides: the messages to one side from x, the other side's input (K rows of nf,
   [state][factor]), in O(K) per factor instead of O(K^2), without the constant d (the caller
   normalizes or adds it). The semiring is a parameter, as in bp_pair_shared:
     min-sum (x energies, cw[f] = c):               y_k = min(x_k, min_l x_l + c)
     sum-product (x = exp(-beta v2f), cw = exp(-beta c)):  y_k = cw sum_l x_l + (1 - cw) x_k
   agg: nf doubles of scratch. */
static inline __attribute__((always_inline)) void bp_potts_body(
        const double* restrict x, double* restrict y, const double* restrict cw, Py_ssize_t nf,
        Py_ssize_t K, int min_sum, double* restrict agg) {
    for (Py_ssize_t f = 0; f < nf; f++) agg[f] = x[f];
    if (min_sum) {
        for (Py_ssize_t k = 1; k < K; k++) {
            const double* row = x + k * nf;
            for (Py_ssize_t f = 0; f < nf; f++) agg[f] = row[f] < agg[f] ? row[f] : agg[f];
        }
        for (Py_ssize_t f = 0; f < nf; f++) agg[f] += cw[f];
        for (Py_ssize_t k = 0; k < K; k++) {
            const double* row = x + k * nf;
            double* out = y + k * nf;
            for (Py_ssize_t f = 0; f < nf; f++) out[f] = row[f] < agg[f] ? row[f] : agg[f];
        }
    } else {
        for (Py_ssize_t k = 1; k < K; k++) {
            const double* row = x + k * nf;
            for (Py_ssize_t f = 0; f < nf; f++) agg[f] += row[f];
        }
        for (Py_ssize_t f = 0; f < nf; f++) agg[f] *= cw[f];
        for (Py_ssize_t k = 0; k < K; k++) {
            const double* row = x + k * nf;
            double* out = y + k * nf;
            for (Py_ssize_t f = 0; f < nf; f++) out[f] = agg[f] + (1.0 - cw[f]) * row[f];
        }
    }
}

BP_CLONES
static void bp_potts(const double* restrict x, double* restrict y, const double* restrict cw,
                     Py_ssize_t nf, Py_ssize_t K, int min_sum, double* restrict agg) {
    bp_potts_body(x, y, cw, nf, K, min_sum, agg);
}

/* The scalar gathers and scatters of a flooding sweep (no +inf anywhere, so no counts of
   +inf terms). Their loops over a variable's few states cost more in loop control than in
   work, so each is written once as an always-inline body and instantiated for the common
   cardinalities, where the compiler unrolls the state loops completely. */
#define BP_INLINE static inline __attribute__((always_inline))
#define BP_BY_CARD(K, CALL_K, CALL_ANY) \
    switch (K) { case 2: CALL_K(2); break; case 3: CALL_K(3); break; case 4: CALL_K(4); break; \
                 case 5: CALL_K(5); break; case 6: CALL_K(6); break; case 8: CALL_K(8); break; \
                 default: CALL_ANY; }

/* tot[s0 .. s0+K) = unary + the f2v of each edge of the variable (edges e of msg: m[i]). */
BP_INLINE void bp_var_total_k(double* restrict tot, const double* restrict unary,
                              const double* restrict f2v, const int64_t* restrict msg,
                              Py_ssize_t n_edges, Py_ssize_t K) {
    double t[K > 0 ? K : 1];
    for (Py_ssize_t k = 0; k < K; k++) t[k] = unary[k];
    for (Py_ssize_t i = 0; i < n_edges; i++) {
        const double* inc = f2v + msg[i];
        for (Py_ssize_t k = 0; k < K; k++) t[k] += inc[k];
    }
    for (Py_ssize_t k = 0; k < K; k++) tot[k] = t[k];
}

/* Variable v's total (tot, unary at its first state s0); msg_of_edge[i]: the message slot of
   its i-th edge, gathered into the stack for the unrolled loop. */
BP_INLINE void bp_var_total(double* restrict tot, const double* restrict unary,
                                const double* restrict f2v, const int64_t* restrict var_edges,
                                const int64_t* restrict edge_msg_offset, Py_ssize_t n_edges,
                                Py_ssize_t K) {
    int64_t msg[16];
    if (n_edges > 16) {
        for (Py_ssize_t k = 0; k < K; k++) tot[k] = unary[k];
        for (Py_ssize_t i = 0; i < n_edges; i++) {
            const double* inc = f2v + edge_msg_offset[var_edges[i]];
            for (Py_ssize_t k = 0; k < K; k++) tot[k] += inc[k];
        }
        return;
    }
    for (Py_ssize_t i = 0; i < n_edges; i++) msg[i] = edge_msg_offset[var_edges[i]];
#define BP_VT(KK) bp_var_total_k(tot, unary, f2v, msg, n_edges, KK)
    BP_BY_CARD(K, BP_VT, BP_VT(K))
#undef BP_VT
}

/* The totals of variables v_lo .. v_hi-1 (bp_var_total for each): one call per run of
   variables, so that the unrolled state loops are cloned for the wider vector ISAs too. */
BP_CLONES
static void bp_var_totals(double* restrict tot, const double* restrict unary,
                          const double* restrict f2v, const int64_t* restrict var_edges,
                          const int64_t* restrict edge_msg_offset,
                          const int64_t* restrict var_edge_offset,
                          const int64_t* restrict var_state_offset, Py_ssize_t v_lo,
                          Py_ssize_t v_hi) {
    for (Py_ssize_t v = v_lo; v < v_hi; v++) {
        const int64_t s0 = var_state_offset[v], i0 = var_edge_offset[v];
        bp_var_total(tot + s0, unary + s0, f2v, var_edges + i0, edge_msg_offset,
                     var_edge_offset[v + 1] - i0, var_state_offset[v + 1] - s0);
    }
}

/* Load of a pairwise block, transposed: for factor f (message slots fo + f W, W = K0 + K1,
   variables of states s0 = vso[ev[2f]], s1 = vso[ev[2f+1]]) old[k][f] = its f2v and
   m[k][f] = tot - f2v, the v2f (rows 0..K0-1 the first edge, then the second). */
BP_INLINE void bp_load_pair_k(const double* restrict fo, const double* restrict tot,
                              const int64_t* restrict ev, const int64_t* restrict vso,
                              double* restrict old, double* restrict m, Py_ssize_t nf,
                              Py_ssize_t K0, Py_ssize_t K1) {
    const Py_ssize_t W = K0 + K1;
    for (Py_ssize_t f = 0; f < nf; f++) {
        const double* t0 = tot + vso[ev[2 * f]];
        const double* t1 = tot + vso[ev[2 * f + 1]];
        const double* o = fo + f * W;
        for (Py_ssize_t k = 0; k < K0; k++) {
            const double x = o[k];
            old[k * nf + f] = x;
            m[k * nf + f] = t0[k] - x;
        }
        for (Py_ssize_t k = 0; k < K1; k++) {
            const double x = o[K0 + k];
            old[(K0 + k) * nf + f] = x;
            m[(K0 + k) * nf + f] = t1[k] - x;
        }
    }
}

static inline void bp_load_pair(const double* restrict fo, const double* restrict tot,
                                const int64_t* restrict ev, const int64_t* restrict vso,
                                double* restrict old, double* restrict m, Py_ssize_t nf,
                                Py_ssize_t K0, Py_ssize_t K1) {
#define BP_LP(KK) bp_load_pair_k(fo, tot, ev, vso, old, m, nf, KK, KK)
    if (K0 == K1) {
        BP_BY_CARD(K0, BP_LP, bp_load_pair_k(fo, tot, ev, vso, old, m, nf, K0, K1))
    } else {
        bp_load_pair_k(fo, tot, ev, vso, old, m, nf, K0, K1);
    }
#undef BP_LP
}

/* Store of a pairwise block, transposed back: fo[f W + k] = acc[k][f]. */
BP_INLINE void bp_store_pair_k(double* restrict fo, const double* restrict acc, Py_ssize_t nf,
                               Py_ssize_t W) {
    for (Py_ssize_t f = 0; f < nf; f++) {
        double* o = fo + f * W;
        for (Py_ssize_t k = 0; k < W; k++) o[k] = acc[k * nf + f];
    }
}

static inline void bp_store_pair(double* restrict fo, const double* restrict acc, Py_ssize_t nf,
                                 Py_ssize_t W) {
#define BP_SP(KK) bp_store_pair_k(fo, acc, nf, 2 * KK)
    if (W % 2 == 0) {
        BP_BY_CARD(W / 2, BP_SP, bp_store_pair_k(fo, acc, nf, W))
    } else {
        bp_store_pair_k(fo, acc, nf, W);
    }
#undef BP_SP
}

/* Flooding on a graph whose every non-unary factor is Potts, pairwise with K states on both
   sides (factor f owns edges 2f and 2f + 1), with each semiring in its own domain: min-sum
   on energies (the cavity tot - m, damping a linear mix, normalization to minimum 0), and
   sum-product on probabilities exp(-beta energy) (the cavity tot / m, damping 0.5 the
   geometric mean sqrt(y m), normalization to maximum 1), where it needs no exp and no log
   per message. The messages keep one layout for the whole run: blocks of BP_NF factors,
   [state][factor] rows (W = 2K rows, the messages to the first variables, then to the
   second), so a block's update is flat vector loops with no transposes; a variable's total
   reads each message's states at a fixed stride. BP_NF 32: a row is four AVX-512 vectors
   (of 16, 32 and 64 factors a block, the fewest instructions a sweep). */
#define BP_NF 32

/* The slot of edge e's message at state 0 (state k at + k BP_NF). */
BP_INLINE int64_t bp_potts_slot(int64_t e, Py_ssize_t K) {
    const uint64_t f = (uint64_t)e >> 1;
    return (int64_t)((f / BP_NF) * (2 * K * BP_NF) + (e & 1) * (K * BP_NF) + f % BP_NF);
}

/* tot[0 .. K) = u combined with the messages at slots[0 .. n) (a variable's incoming ones),
   by the semiring's product: + on energies, x on probabilities. */
BP_INLINE void bp_potts_total_k(double* restrict tot, const double* restrict u,
                                const double* restrict msg, const int32_t* restrict slots,
                                Py_ssize_t n, Py_ssize_t K, int prob) {
    double t[K > 0 ? K : 1];
    for (Py_ssize_t k = 0; k < K; k++) t[k] = u[k];
    for (Py_ssize_t i = 0; i < n; i++) {
        const double* m = msg + slots[i];
        if (prob) {
            for (Py_ssize_t k = 0; k < K; k++) t[k] *= m[k * BP_NF];
        } else {
            for (Py_ssize_t k = 0; k < K; k++) t[k] += m[k * BP_NF];
        }
    }
    for (Py_ssize_t k = 0; k < K; k++) tot[k] = t[k];
}

/* The totals of n variables (u: unary energies, or their probabilities for sum-product; K
   states each): the i-th's first state s0[i], its messages' slots slots[eo[i] .. eo[i+1]).
   32-bit indices in the order the totals are taken: a sweep reads them once each, from a
   third of the memory of the graph's own arrays. */
BP_CLONES
static void bp_potts_totals(double* restrict tot, const double* restrict u,
                            const double* restrict msg, const int32_t* restrict s0,
                            const int32_t* restrict eo, const int32_t* restrict slots,
                            Py_ssize_t n, Py_ssize_t K, int prob) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const int32_t o = s0[i], e0 = eo[i], ne = eo[i + 1] - e0;
#define BP_PTP(KK) bp_potts_total_k(tot + o, u + o, msg, slots + e0, ne, KK, 1)
#define BP_PTE(KK) bp_potts_total_k(tot + o, u + o, msg, slots + e0, ne, KK, 0)
        if (prob) {
            BP_BY_CARD(K, BP_PTP, BP_PTP(K))
        } else {
            BP_BY_CARD(K, BP_PTE, BP_PTE(K))
        }
#undef BP_PTP
#undef BP_PTE
    }
}

/* The totals of a block's variables, transposed: x[k][f] the first variable's of factor f,
   x[K + k][f] the second's (s01: the first states of factor f's variables at 2f, 2f + 1). */
BP_INLINE void bp_potts_gather_k(double* restrict x, const double* restrict tot,
                                 const int32_t* restrict s01, Py_ssize_t nf, Py_ssize_t K) {
    for (Py_ssize_t f = 0; f < nf; f++) {
        const double* t0 = tot + s01[2 * f];
        const double* t1 = tot + s01[2 * f + 1];
        for (Py_ssize_t k = 0; k < K; k++) {
            x[k * BP_NF + f] = t0[k];
            x[(K + k) * BP_NF + f] = t1[k];
        }
    }
}

/* One flooding update of a block's nf <= BP_NF factors, in place on its messages msg
   (W BP_NF doubles): cavity, Potts contraction (bp_potts_body, cw: c or exp(-beta c) per
   factor), damping, normalization. Returns the largest change in energy. Slots past nf
   are padding that stays neutral (message 0 or 1, cw 0). Min-sum takes any damping,
   sum-product 0 or 0.5. x, acc: W BP_NF doubles of scratch each; s: 3 BP_NF. */
BP_CLONES
static double bp_potts_block(double* restrict msg, const double* restrict tot,
                             const int32_t* restrict s01, const double* restrict cw,
                             Py_ssize_t nf, Py_ssize_t K, int min_sum, double damping,
                             double beta, double* restrict x, double* restrict acc,
                             double* restrict s) {
    const Py_ssize_t W = 2 * K, n = W * BP_NF;
    const double keep = 1.0 - damping;
    double* restrict lo = s;                 /* per factor: the minimum (or maximum) */
    double* restrict hi = s + BP_NF;         /* the largest change (or ratio new / old) */
    double* restrict rlo = s + 2 * BP_NF;    /* sum-product: the smallest ratio */
#define BP_PG(KK) bp_potts_gather_k(x, tot, s01, nf, KK)
    BP_BY_CARD(K, BP_PG, BP_PG(K))
#undef BP_PG
    for (Py_ssize_t r = 0; r < (nf < BP_NF ? W : 0); r++)
        for (Py_ssize_t f = nf; f < BP_NF; f++) x[r * BP_NF + f] = min_sum ? 0.0 : 1.0;
    /* v2f: the variable's total without this edge's own message */
    if (min_sum) {
        for (Py_ssize_t i = 0; i < n; i++) x[i] -= msg[i];
    } else {
        for (Py_ssize_t i = 0; i < n; i++) x[i] /= msg[i];
    }
    bp_potts_body(x, acc + K * BP_NF, cw, BP_NF, K, min_sum, lo);
    bp_potts_body(x + K * BP_NF, acc, cw, BP_NF, K, min_sum, lo);
    for (Py_ssize_t f = 0; f < BP_NF; f++) { hi[f] = min_sum ? 0.0 : 1.0; rlo[f] = 1.0; }
    for (Py_ssize_t r0 = 0; r0 < W; r0 += K) {
        /* each edge's message apart: damp, then normalize and measure the change */
        if (min_sum) {
            for (Py_ssize_t f = 0; f < BP_NF; f++) lo[f] = INFINITY;
            for (Py_ssize_t r = r0; r < r0 + K; r++) {
                double* a = acc + r * BP_NF;
                const double* o = msg + r * BP_NF;
                for (Py_ssize_t f = 0; f < BP_NF; f++) {
                    const double v = damping > 0.0 ? keep * a[f] + damping * o[f] : a[f];
                    a[f] = v;
                    lo[f] = v < lo[f] ? v : lo[f];
                }
            }
            for (Py_ssize_t r = r0; r < r0 + K; r++) {
                const double* a = acc + r * BP_NF;
                double* o = msg + r * BP_NF;
                for (Py_ssize_t f = 0; f < BP_NF; f++) {
                    const double v = a[f] - lo[f];
                    const double d = fabs(v - o[f]);
                    hi[f] = d > hi[f] ? d : hi[f];
                    o[f] = v;
                }
            }
        } else {
            /* energies mix linearly: with damping 0.5, probabilities by their geometric mean */
            for (Py_ssize_t f = 0; f < BP_NF; f++) lo[f] = 0.0;
            for (Py_ssize_t r = r0; r < r0 + K; r++) {
                double* a = acc + r * BP_NF;
                const double* o = msg + r * BP_NF;
                for (Py_ssize_t f = 0; f < BP_NF; f++) {
                    const double v = damping > 0.0 ? sqrt(a[f] * o[f]) : a[f];
                    a[f] = v;
                    lo[f] = v > lo[f] ? v : lo[f];
                }
            }
            for (Py_ssize_t f = 0; f < BP_NF; f++) lo[f] = 1.0 / lo[f];
            for (Py_ssize_t r = r0; r < r0 + K; r++) {
                const double* a = acc + r * BP_NF;
                double* o = msg + r * BP_NF;
                for (Py_ssize_t f = 0; f < BP_NF; f++) {
                    const double v = a[f] * lo[f];
                    const double q = v / o[f];
                    hi[f] = q > hi[f] ? q : hi[f];
                    rlo[f] = q < rlo[f] ? q : rlo[f];
                    o[f] = v;
                }
            }
        }
    }
    double dmax = hi[0], rmin = rlo[0];
    for (Py_ssize_t f = 1; f < BP_NF; f++) {
        dmax = hi[f] > dmax ? hi[f] : dmax;
        rmin = rlo[f] < rmin ? rlo[f] : rmin;
    }
    if (min_sum) return dmax;
    /* the largest |log(new / old)| / beta: the change of the energies */
    const double up = log(dmax), down = -log(rmin);
    return (up > down ? up : down) / beta;
}

#endif
