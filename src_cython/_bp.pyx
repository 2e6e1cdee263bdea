# Belief propagation on a compiled factor graph: one kernel, two semirings.
#
# Messages live in energy space and are normalized so that their minimum is 0
# (a message is only defined up to an additive constant; keeping the minimum at 0
# keeps it finite on arbitrarily long chains). +inf is a forbidden state.
#
#   variable -> factor   v2f_e(k) = U_v(k) + sum_{e' in edges(v), e' != e} f2v_e'(k)
#   factor -> variable   f2v_t(k) = (+)_{x : x_t = k} [ T_f(x) + sum_{e in edges(f), e != t} v2f_e(x_e) ]
#
# where (+) is the semiring's "sum": min for min-sum (beta = inf) and the soft-min
# -(1/beta) log sum exp(-beta .) for sum-product at temperature 1/beta
# (Kschischang, Frey and Loeliger 2001; LeCun et al. 2006, section 6).
#
# The soft-min is evaluated in scaled probability space so that the inner loop is
# a multiply-add: the table is exponentiated once per call (exp_tables =
# exp(-beta (T - min T)), computed by the caller), each incoming message once per
# state (q_e = exp(-beta v2f_e)), and one log is taken per output state. When an
# output state's sum falls below _TINY the scaled value has lost its precision
# (or underflowed to 0 although the exact energy is finite), so that state is
# recomputed exactly in energy space with a log-sum-exp: the result is exact for
# any energy scale, and the fast path is taken whenever it is accurate.
#
# Schedules. On a forest the caller passes the exact two-pass sweep (one message
# per step, leaves to roots then back). Otherwise flooding, which never stores
# v2f during the sweeps: each variable keeps its total U_v + sum of incoming f2v
# (and, when +inf can occur, the number of +inf terms, so that a factor can
# take its own f2v back out exactly), and each factor computes its v2f as
# total - f2v_e on the fly. A sweep runs over blocks of consecutive factors
# (their message slots are contiguous): v2f into a small buffer, one batched
# exp per (edge, state) for sum-product, the contraction (pairwise factors do
# both directions in one pass over the table), one batched log per (edge,
# state), then damping, normalization and the store; then every variable's
# total is recomputed. The sweeps stop when the largest f2v change is at most
# tol; v2f is then set from the final f2v. Loops over blocks and variables run
# under OpenMP prange (n_threads). Factors with identical tables share one
# stored table (and one exp table), so a Potts grid reads a single K x K table.
#
# Layout (see factorebm/compiled.py): variables v own the global states
# [var_state_offset[v], var_state_offset[v+1]); non-unary factors f own the edges
# [fac_edge_offset[f], fac_edge_offset[f+1]) in scope order; edge e joins factor
# edge_fac[e] to variable edge_var[e], has row-major stride edge_stride[e] in the
# factor's table, and owns the message slots [edge_msg_offset[e], edge_msg_offset[e+1]).
from cython.parallel cimport prange, parallel, threadid
from libc.math cimport exp, log, INFINITY, fabs
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memset

from _typedefs cimport float64_t, intp_t

cdef double _TINY = 1e-290
# message slots per block of factors in a flooding sweep (the per-thread unit of
# work; its four buffers, 32 KiB, stay in the core's cache)
cdef intp_t _BLOCK = 1024

# Batched exp and log for the flooding sum-product sweeps. Every message state
# needs one exp (q = exp(-beta v2f)) and one log (the output energy); libm's
# scalar calls dominate the sweep, so these flat loops use branch-free
# polynomials that the compiler vectorizes, cloned for AVX-512, AVX2 and the
# baseline ISA and dispatched at load time. Accuracy is within a few ulp
# (tested against libm in tests/test_bp_loopy.py); +inf inputs give exactly 0
# (exp) and sums below _TINY are flagged with NaN for the exact fallback.
cdef extern from *:
    """
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

    /* out[i] = exp(-beta * x[i]) for x[i] >= 0 (or +inf); 0 when it is below ~1e-307. */
    BP_CLONES
    static void bp_exp_neg(const double* x, double* out, Py_ssize_t n, double beta) {
        const double shift = 6755399441055744.0;            /* 0x1.8p52 */
        const double log2e = 1.4426950408889634;
        /* Cody-Waite split of ln 2 (fdlibm): ln2hi has 21 trailing zero bits, so
           kd * ln2hi is exact for |kd| < 2^21 with or without FMA contraction. */
        const double ln2hi = 6.93147180369123816490e-01, ln2lo = 1.90821492927058770002e-10;
        for (Py_ssize_t i = 0; i < n; i++) {
            double y = -beta * x[i];
            double yc = y < -708.0 ? -708.0 : y;             /* also maps -inf (and NaN-free) */
            double kd = yc * log2e + shift;
            uint64_t ki = bp_asuint(kd);
            kd -= shift;
            double r = (yc - kd * ln2hi) - kd * ln2lo;       /* |r| <= ln2 / 2 */
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
            out[i] = y <= -708.0 ? 0.0 : p * scale;
        }
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

    /* out[i] = -log(x[i]) / beta for x[i] >= tiny (finite); NaN (a flag) otherwise. x and out
       must not overlap (restrict: with two table lookups per element, GCC vectorizes only
       then). */
    BP_CLONES
    static void bp_neg_log(const double* restrict x, double* restrict out, Py_ssize_t n,
                           double beta, double tiny) {
        const double ln2hi = 6.93147180369123816490e-01, ln2lo = 1.90821492927058770002e-10;
        const double scale = -1.0 / beta;   /* a multiply, not a divide, per element */
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
        }
    }

    /* Flat loops of the pairwise block update (_flood_pairwise_block), over
       buffers laid out [state][factor] (nf factors): kept here, next to exp and
       log, so that they are cloned for the wider vector ISAs as well. */

    /* Rows r0..r1-1 of x: subtract each column's minimum (left alone if +inf). lo: nf scratch. */
    BP_CLONES
    static void bp_shift_columns(double* restrict x, Py_ssize_t nf, Py_ssize_t r0, Py_ssize_t r1,
                                 double* restrict lo) {
        for (Py_ssize_t f = 0; f < nf; f++) lo[f] = x[r0 * nf + f];
        for (Py_ssize_t r = r0 + 1; r < r1; r++) {
            const double* row = x + r * nf;
            for (Py_ssize_t f = 0; f < nf; f++) lo[f] = row[f] < lo[f] ? row[f] : lo[f];
        }
        for (Py_ssize_t f = 0; f < nf; f++) lo[f] = lo[f] != INFINITY ? lo[f] : 0.0;
        for (Py_ssize_t r = r0; r < r1; r++) {
            double* row = x + r * nf;
            for (Py_ssize_t f = 0; f < nf; f++) row[f] -= lo[f];
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

    /* acc[i] = (1 - damping) * new + damping * old[i], new = acc[i] or, where acc
       is NaN (the underflow flag), fb[i]; no damping term when damping == 0
       (0 * inf would be NaN). fb is read at every i, set or not (the caller
       zeroes it once): read only where acc is NaN, the compiler makes it a masked
       load, which costs a microcode assist per vector on pages never written to
       (a new thread's scratch): 2-thread BP ran at half the 1-thread speed. */
    BP_CLONES
    static void bp_damp(double* restrict acc, const double* restrict old, const double* restrict fb,
                        Py_ssize_t n, double damping) {
        const double keep = 1.0 - damping;
        if (damping > 0.0) {
            for (Py_ssize_t i = 0; i < n; i++) {
                const double f = fb[i], a = acc[i];
                const double y = a == a ? a : f;
                acc[i] = keep * y + damping * old[i];
            }
        } else {
            for (Py_ssize_t i = 0; i < n; i++) {
                const double f = fb[i], a = acc[i];
                acc[i] = a == a ? a : f;
            }
        }
    }

    /* max_i |x[i] - old[i]| (0 where equal, also both +inf). The values are >= 0
       and never NaN, so the maximum is taken on their bit patterns as integers,
       which order like the doubles and vectorize without fast-math. */
    BP_CLONES
    static double bp_max_change(const double* restrict x, const double* restrict old, Py_ssize_t n) {
        uint64_t m = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t u = bp_asuint(x[i] - old[i]) & 0x7FFFFFFFFFFFFFFFULL;   /* fabs */
            u &= (uint64_t)0 - (uint64_t)(x[i] != old[i]);                  /* 0 if equal */
            m = u > m ? u : m;
        }
        return bp_asdouble(m);
    }

    /* Whether some x[i] < tiny (a scaled sum that needs the exact fallback). */
    BP_CLONES
    static int bp_any_below(const double* restrict x, Py_ssize_t n, double tiny) {
        int any = 0;
        for (Py_ssize_t i = 0; i < n; i++) any |= x[i] < tiny;
        return any;
    }
    """
    void bp_exp_neg(const double* x, double* out, Py_ssize_t n, double beta) noexcept nogil
    void bp_log_table_init() noexcept nogil
    void bp_neg_log(const double* x, double* out, Py_ssize_t n, double beta, double tiny) noexcept nogil
    void bp_shift_columns(double* x, Py_ssize_t nf, Py_ssize_t r0, Py_ssize_t r1, double* lo) noexcept nogil
    void bp_pair_shared(const double* xa, const double* xb, double* ya, double* yb, const double* T,
                        Py_ssize_t nf, Py_ssize_t K0, Py_ssize_t K1, int min_sum) noexcept nogil
    void bp_damp(double* acc, const double* old, const double* fb, Py_ssize_t n, double damping) noexcept nogil
    double bp_max_change(const double* x, const double* old, Py_ssize_t n) noexcept nogil
    int bp_any_below(const double* x, Py_ssize_t n, double tiny) noexcept nogil


bp_log_table_init()


def _test_exp_log(const float64_t[::1] x, float64_t[::1] out_exp, float64_t[::1] out_log, double beta):
    """Test hook: the batched exp(-beta x) and -log(x)/beta (NaN below 1e-290)."""
    with nogil:
        bp_exp_neg(&x[0], &out_exp[0], x.shape[0], beta)
        bp_neg_log(&x[0], &out_log[0], x.shape[0], beta, _TINY)


cdef struct Graph:
    intp_t n_vars
    intp_t n_facs
    const intp_t* var_state_offset   # (V+1,)
    const intp_t* var_edge_offset    # (V+1,)
    const intp_t* var_edges          # (E,) edges of each variable
    const intp_t* fac_edge_offset    # (F+1,)
    const intp_t* edge_var           # (E,)
    const intp_t* edge_stride        # (E,)
    const intp_t* edge_msg_offset    # (E+1,)
    const intp_t* fac_table          # (F,) offset of factor f's table in tables / exp_tables
    const float64_t* tables          # energy tables, each stored once (factors may share one)
    const float64_t* exp_tables      # same shape: exp(-beta (T - table_min)), sum-product only
    const float64_t* table_min       # (F,) finite minimum of factor f's table (0 if none)
    const float64_t* unary           # (S,) folded unary energies + evidence mask
    float64_t* v2f                   # (M,) messages variable -> factor
    float64_t* f2v                   # (M,) messages factor -> variable
    double beta
    bint min_sum


cdef Graph _make_graph(const intp_t[::1] var_state_offset, const intp_t[::1] var_edge_offset,
                       const intp_t[::1] var_edges, const intp_t[::1] fac_edge_offset,
                       const intp_t[::1] edge_var, const intp_t[::1] edge_stride,
                       const intp_t[::1] edge_msg_offset, const intp_t[::1] fac_table,
                       const float64_t[::1] tables, const float64_t[::1] exp_tables,
                       const float64_t[::1] table_min, const float64_t[::1] unary,
                       float64_t[::1] v2f, float64_t[::1] f2v, double beta, bint min_sum):
    # Every array is at least one element long (the caller pads empty ones).
    cdef Graph g
    g.n_vars = var_state_offset.shape[0] - 1
    g.n_facs = fac_edge_offset.shape[0] - 1
    g.var_state_offset = &var_state_offset[0]
    g.var_edge_offset = &var_edge_offset[0]
    g.var_edges = &var_edges[0]
    g.fac_edge_offset = &fac_edge_offset[0]
    g.edge_var = &edge_var[0]
    g.edge_stride = &edge_stride[0]
    g.edge_msg_offset = &edge_msg_offset[0]
    g.fac_table = &fac_table[0]
    g.tables = &tables[0]
    g.exp_tables = &exp_tables[0]
    g.table_min = &table_min[0]
    g.unary = &unary[0]
    g.v2f = &v2f[0]
    g.f2v = &f2v[0]
    g.beta = beta
    g.min_sum = min_sum
    return g


cdef inline intp_t _table_size(Graph* g, intp_t f) noexcept nogil:
    """Number of entries of factor f's table: its first axis' stride times its cardinality."""
    cdef intp_t e0 = g.fac_edge_offset[f]
    cdef intp_t v = g.edge_var[e0]
    return g.edge_stride[e0] * (g.var_state_offset[v + 1] - g.var_state_offset[v])


cdef inline void _normalize(double* m, intp_t n) noexcept nogil:
    """Subtract the minimum (all +inf, an impossible message, is left alone)."""
    cdef intp_t k
    cdef double lo = INFINITY
    for k in range(n):
        lo = m[k] if m[k] < lo else lo
    if lo != INFINITY:
        for k in range(n):
            m[k] -= lo


cdef void _var_to_fac(Graph* g, intp_t e) noexcept nogil:
    """v2f on edge e: the variable's unary energies plus every other incoming f2v."""
    cdef intp_t v = g.edge_var[e]
    cdef intp_t s0 = g.var_state_offset[v]
    cdef intp_t K = g.var_state_offset[v + 1] - s0
    cdef double* out = g.v2f + g.edge_msg_offset[e]
    cdef intp_t k, i, e2
    cdef const double* inc
    for k in range(K):
        out[k] = g.unary[s0 + k]
    for i in range(g.var_edge_offset[v], g.var_edge_offset[v + 1]):
        e2 = g.var_edges[i]
        if e2 == e:
            continue
        inc = g.f2v + g.edge_msg_offset[e2]
        for k in range(K):
            out[k] += inc[k]
    _normalize(out, K)


cdef void _contract_energy(Graph* g, intp_t f, intp_t t, intp_t only, double* out,
                           intp_t* cnt) noexcept nogil:
    """Energy-space (+)-contraction of factor f onto its edge t (the reference path).

    out[k] = (+)_{x: x_t = k} T_f(x) + sum_{e != t} v2f_e(x_e), for every state k
    of the target variable, or only for k == only when only >= 0. (+) is min for
    min-sum and the soft-min for sum-product (two passes: the minimum, then the
    log-sum-exp of the differences, so it is exact at any energy scale).
    cnt: scratch, one counter per edge of f.
    """
    cdef intp_t e0 = g.fac_edge_offset[f]
    cdef intp_t a = g.fac_edge_offset[f + 1] - e0
    cdef intp_t Kt = g.var_state_offset[g.edge_var[e0 + t] + 1] - g.var_state_offset[g.edge_var[e0 + t]]
    cdef const double* T = g.tables + g.fac_table[f]
    cdef intp_t N = _table_size(g, f)
    cdef intp_t n, i, k, K_i
    cdef double x, lo
    cdef int npass, p
    cdef double* acc = out + Kt     # scratch for the soft-min sums (Kt more slots)
    npass = 1 if g.min_sum else 2
    for k in range(Kt):
        out[k] = INFINITY
        acc[k] = 0.0
    for p in range(npass):
        for i in range(a):
            cnt[i] = 0
        for n in range(N):
            k = cnt[t]
            if only < 0 or k == only:
                x = T[n]
                for i in range(a):
                    if i != t:
                        x += g.v2f[g.edge_msg_offset[e0 + i] + cnt[i]]
                if p == 0:
                    out[k] = x if x < out[k] else out[k]
                elif x != INFINITY:
                    acc[k] += exp(-g.beta * (x - out[k]))
            # odometer over the table's multi-index, last axis fastest
            i = a - 1
            while i >= 0:
                cnt[i] += 1
                K_i = g.var_state_offset[g.edge_var[e0 + i] + 1] - g.var_state_offset[g.edge_var[e0 + i]]
                if cnt[i] < K_i:
                    break
                cnt[i] = 0
                i -= 1
    if not g.min_sum:
        for k in range(Kt):
            if (only < 0 or k == only) and out[k] != INFINITY:
                out[k] -= log(acc[k]) / g.beta


cdef inline void _fac_to_var(Graph* g, intp_t f, intp_t t, double* q, double* out,
                      intp_t* cnt, bint have_q, bint finish=True) noexcept nogil:
    """f2v from factor f to its t-th edge, written to out (not yet normalized).

    q: scratch holding exp(-beta v2f_e) for every edge of f (filled here unless
    have_q), laid out edge after edge. out: 3 * K_t scratch slots. Sum-product
    with finish=False stops at the scaled sums (see _flood_block).
    """
    cdef intp_t e0 = g.fac_edge_offset[f]
    cdef intp_t a = g.fac_edge_offset[f + 1] - e0
    cdef intp_t vt = g.edge_var[e0 + t]
    cdef intp_t Kt = g.var_state_offset[vt + 1] - g.var_state_offset[vt]
    cdef intp_t tab = g.fac_table[f]
    cdef const double* T
    cdef const double* m
    cdef double* qi
    cdef double* qt
    cdef intp_t i, j, k, n, N, K0, K1, qoff, Ki
    cdef double w, acc, lo, x, tmin

    if g.min_sum:
        if a == 2:
            # pairwise fast path: min-plus, inner loop over contiguous table rows
            T = g.tables + tab
            K0 = g.var_state_offset[g.edge_var[e0] + 1] - g.var_state_offset[g.edge_var[e0]]
            K1 = g.var_state_offset[g.edge_var[e0 + 1] + 1] - g.var_state_offset[g.edge_var[e0 + 1]]
            if t == 1:
                m = g.v2f + g.edge_msg_offset[e0]
                for j in range(K1):
                    out[j] = INFINITY
                for i in range(K0):
                    w = m[i]
                    if w == INFINITY:
                        continue
                    for j in range(K1):
                        x = T[i * K1 + j] + w
                        out[j] = x if x < out[j] else out[j]
            else:
                m = g.v2f + g.edge_msg_offset[e0 + 1]
                for i in range(K0):
                    lo = INFINITY
                    for j in range(K1):
                        x = T[i * K1 + j] + m[j]
                        lo = x if x < lo else lo
                    out[i] = lo
        else:
            _contract_energy(g, f, t, -1, out, cnt)
        return

    # sum-product: scaled probability space
    if not have_q:
        qoff = 0
        for i in range(a):
            Ki = g.var_state_offset[g.edge_var[e0 + i] + 1] - g.var_state_offset[g.edge_var[e0 + i]]
            m = g.v2f + g.edge_msg_offset[e0 + i]
            for k in range(Ki):
                q[qoff + k] = exp(-g.beta * m[k])
            qoff += Ki
    T = g.exp_tables + tab
    for k in range(Kt):
        out[k] = 0.0
    if a == 2:
        K0 = g.var_state_offset[g.edge_var[e0] + 1] - g.var_state_offset[g.edge_var[e0]]
        K1 = g.var_state_offset[g.edge_var[e0 + 1] + 1] - g.var_state_offset[g.edge_var[e0 + 1]]
        if t == 1:
            for i in range(K0):
                w = q[i]
                if w == 0.0:
                    continue
                for j in range(K1):
                    out[j] += w * T[i * K1 + j]
        else:
            qi = q + K0
            for i in range(K0):
                acc = 0.0
                for j in range(K1):
                    acc += T[i * K1 + j] * qi[j]
                out[i] = acc
    else:
        # higher arity: one pass over the table with an odometer; the product of
        # the other edges' q is rebuilt per entry (arity is small)
        N = _table_size(g, f)
        for i in range(a):
            cnt[i] = 0
        # cnt[a + i] holds the q offset of edge i
        qoff = 0
        for i in range(a):
            cnt[a + i] = qoff
            qoff += g.var_state_offset[g.edge_var[e0 + i] + 1] - g.var_state_offset[g.edge_var[e0 + i]]
        for n in range(N):
            w = T[n]
            if w != 0.0:
                for i in range(a):
                    if i != t:
                        w *= q[cnt[a + i] + cnt[i]]
                out[cnt[t]] += w
            i = a - 1
            while i >= 0:
                cnt[i] += 1
                Ki = g.var_state_offset[g.edge_var[e0 + i] + 1] - g.var_state_offset[g.edge_var[e0 + i]]
                if cnt[i] < Ki:
                    break
                cnt[i] = 0
                i -= 1
    if not finish:
        return
    tmin = g.table_min[f]
    for k in range(Kt):
        if out[k] >= _TINY:
            out[k] = tmin - log(out[k]) / g.beta
        else:
            # lost to underflow: the exact energy-space soft-min of this state
            _contract_energy(g, f, t, k, out + Kt, cnt)
            out[k] = out[Kt + k]


cdef inline double _store_f2v(Graph* g, intp_t e, double* new, intp_t K, double damping) noexcept nogil:
    """Damp new against the stored f2v of edge e, normalize, store; return the change.

    Damping mixes energies (a geometric mixture of the probability messages).
    The mixture is normalized once, after mixing (new's own offset cancels), and
    no branch is needed for +inf: with 0 < damping < 1 a state +inf in either
    message stays +inf and, the minimum being finite, no inf - inf arises.
    """
    cdef double* old = g.f2v + g.edge_msg_offset[e]
    cdef intp_t k
    cdef double d, x, lo = INFINITY, delta = 0.0
    cdef double keep = 1.0 - damping
    if damping > 0.0:
        for k in range(K):
            x = keep * new[k] + damping * old[k]
            new[k] = x
            lo = x if x < lo else lo
    else:
        for k in range(K):
            lo = new[k] if new[k] < lo else lo
    if lo == INFINITY:
        lo = 0.0                       # impossible message: all +inf, stored as is
    for k in range(K):
        x = new[k] - lo
        d = 0.0 if x == old[k] else fabs(x - old[k])
        delta = d if d > delta else delta
        old[k] = x
    return delta


cdef inline void _var_update_flood(Graph* g, intp_t v, double* tot) noexcept nogil:
    """All v2f messages of variable v at once (flooding).

    tot = U_v + every incoming f2v; then v2f_e = tot - f2v_e, which is d times
    cheaper than d exclusive sums. Where f2v_e is +inf the difference is
    undefined, so that state's exclusive sum is recomputed directly.
    """
    cdef intp_t s0 = g.var_state_offset[v]
    cdef intp_t K = g.var_state_offset[v + 1] - s0
    cdef intp_t i0 = g.var_edge_offset[v], i1 = g.var_edge_offset[v + 1]
    cdef intp_t i, i2, k, e
    cdef const double* inc
    cdef double* out
    cdef double x, lo
    for k in range(K):
        tot[k] = g.unary[s0 + k]
    for i in range(i0, i1):
        inc = g.f2v + g.edge_msg_offset[g.var_edges[i]]
        for k in range(K):
            tot[k] += inc[k]
    for i in range(i0, i1):
        e = g.var_edges[i]
        inc = g.f2v + g.edge_msg_offset[e]
        out = g.v2f + g.edge_msg_offset[e]
        lo = INFINITY
        for k in range(K):
            if inc[k] != INFINITY:
                x = tot[k] - inc[k]
            else:
                x = g.unary[s0 + k]
                for i2 in range(i0, i1):
                    if i2 != i:
                        x += g.f2v[g.edge_msg_offset[g.var_edges[i2]] + k]
            out[k] = x
            lo = x if x < lo else lo
        if lo != INFINITY:
            for k in range(K):
                out[k] -= lo



cdef inline void _var_total(Graph* g, intp_t v, double* tot, double* n_inf,
                            bint track_inf) noexcept nogil:
    """tot (S,) and n_inf (S,) at v's states: U_v + every incoming f2v.

    With track_inf the +inf terms are counted in n_inf instead of added, so
    that a factor can take its own f2v back out of the total exactly (v2f_e =
    tot - f2v_e is undefined where f2v_e is +inf). Without it (no table and no
    unary energy is +inf, hence no message ever is) n_inf is not touched.
    """
    cdef intp_t s0 = g.var_state_offset[v]
    cdef intp_t K = g.var_state_offset[v + 1] - s0
    cdef intp_t i, k
    cdef const double* inc
    cdef double* t = tot + s0
    cdef double* c = n_inf + s0
    cdef double x
    if not track_inf:
        for k in range(K):
            t[k] = g.unary[s0 + k]
        for i in range(g.var_edge_offset[v], g.var_edge_offset[v + 1]):
            inc = g.f2v + g.edge_msg_offset[g.var_edges[i]]
            for k in range(K):
                t[k] += inc[k]
        return
    for k in range(K):
        x = g.unary[s0 + k]
        t[k] = x if x != INFINITY else 0.0
        c[k] = 0.0 if x != INFINITY else 1.0
    for i in range(g.var_edge_offset[v], g.var_edge_offset[v + 1]):
        inc = g.f2v + g.edge_msg_offset[g.var_edges[i]]
        for k in range(K):
            x = inc[k]
            if x != INFINITY:
                t[k] += x
            else:
                c[k] += 1.0


cdef double _flood_block(Graph* g, intp_t f_lo, intp_t f_hi, const double* tot,
                         const double* n_inf, bint track_inf, double* m, double* q,
                         double* acc, double* fb, double* scratch, intp_t* cnt,
                         double damping) noexcept nogil:
    """One flooding update of every f2v of the factors [f_lo, f_hi); returns the largest change.

    The factors' message slots are contiguous ([base, base + n)), so the
    block works on small local buffers that stay in cache: m = v2f (from the
    variables' totals, normalized), q = exp(-beta m) (sum-product, batched),
    acc = the new f2v (sum-product: scaled sums, then -log(.)/beta batched),
    fb = exact energy-space values where a scaled sum underflowed (see the
    module comment). Then damping, normalization and the store into f2v.
    scratch: 3 * max_card + 1 doubles; cnt: 2 * max_arity + 1.
    """
    cdef intp_t e_lo = g.fac_edge_offset[f_lo], e_hi = g.fac_edge_offset[f_hi]
    cdef intp_t base = g.edge_msg_offset[e_lo]
    cdef intp_t n = g.edge_msg_offset[e_hi] - base
    cdef intp_t e, f, v, s0, o, K, k, i, j, t, a, e0, o0, K0, K1
    cdef const double* old
    cdef const double* tv
    cdef const double* cv
    cdef const double* T
    cdef const double* x0
    cdef const double* x1
    cdef double* mm
    cdef double* y0
    cdef double* y1
    cdef double* fo
    cdef double x, y, lo, w, s, d, delta = 0.0
    cdef double keep = 1.0 - damping
    cdef bint min_sum = g.min_sum, copied

    # v2f_e = (U_v + sum of v's incoming f2v) - f2v_e, normalized to minimum 0
    for e in range(e_lo, e_hi):
        v = g.edge_var[e]
        s0 = g.var_state_offset[v]
        o = g.edge_msg_offset[e]
        K = g.edge_msg_offset[e + 1] - o
        old = g.f2v + o
        tv = tot + s0
        mm = m + (o - base)
        lo = INFINITY
        if track_inf:
            cv = n_inf + s0
            for k in range(K):
                x = old[k]
                d = cv[k]
                if x == INFINITY:
                    d -= 1.0
                    x = 0.0
                y = tv[k] - x if d == 0.0 else INFINITY
                mm[k] = y
                lo = y if y < lo else lo
        else:
            for k in range(K):
                y = tv[k] - old[k]
                mm[k] = y
                lo = y if y < lo else lo
        if lo != INFINITY:
            for k in range(K):
                mm[k] -= lo

    if not min_sum:
        bp_exp_neg(m, q, n, g.beta)

    # factor -> variable: min-plus on m (min-sum) or multiply-add on q (sum-product)
    for f in range(f_lo, f_hi):
        e0 = g.fac_edge_offset[f]
        a = g.fac_edge_offset[f + 1] - e0
        o0 = g.edge_msg_offset[e0] - base
        copied = False
        if a == 2:
            # pairwise: both directions in one sweep over the (shared) table
            K0 = g.edge_msg_offset[e0 + 1] - g.edge_msg_offset[e0]
            K1 = g.edge_msg_offset[e0 + 2] - g.edge_msg_offset[e0 + 1]
            y0 = acc + o0
            y1 = y0 + K0
            if min_sum:
                T = g.tables + g.fac_table[f]
                x0 = m + o0
                x1 = x0 + K0
                for j in range(K1):
                    y1[j] = INFINITY
                for i in range(K0):
                    w = x0[i]
                    lo = INFINITY
                    for j in range(K1):
                        x = T[j] + w
                        y1[j] = x if x < y1[j] else y1[j]
                        x = T[j] + x1[j]
                        lo = x if x < lo else lo
                    y0[i] = lo
                    T += K1
            else:
                T = g.exp_tables + g.fac_table[f]
                x0 = q + o0
                x1 = x0 + K0
                for j in range(K1):
                    y1[j] = 0.0
                for i in range(K0):
                    w = x0[i]
                    s = 0.0
                    for j in range(K1):
                        y1[j] += w * T[j]
                        s += T[j] * x1[j]
                    y0[i] = s
                    T += K1
        else:
            # higher arity: the reference paths read v2f from the graph's slots
            # (owned by this factor during the sweep)
            o = g.edge_msg_offset[g.fac_edge_offset[f + 1]] - base
            for k in range(o0, o):
                g.v2f[base + k] = m[k]
            copied = True
            for t in range(a):
                o = g.edge_msg_offset[e0 + t]
                K = g.edge_msg_offset[e0 + t + 1] - o
                if min_sum:
                    _contract_energy(g, f, t, -1, scratch, cnt)
                    for k in range(K):
                        acc[o - base + k] = scratch[k]
                else:
                    _fac_to_var(g, f, t, q + o0, acc + (o - base), cnt, True, False)
        if not min_sum:
            # a scaled sum below _TINY lost its precision: exact value, minus the
            # table minimum (the scaled path's offset), into fb; flag the sum
            for t in range(a):
                o = g.edge_msg_offset[e0 + t] - base
                K = g.edge_msg_offset[e0 + t + 1] - base - o
                for k in range(K):
                    if acc[o + k] < _TINY:
                        if not copied:
                            for i in range(o0, g.edge_msg_offset[g.fac_edge_offset[f + 1]] - base):
                                g.v2f[base + i] = m[i]
                            copied = True
                        _contract_energy(g, f, t, k, scratch, cnt)
                        fb[o + k] = scratch[k] - g.table_min[f]
                        acc[o + k] = -1.0

    if not min_sum:
        # into q, free after the contraction (bp_neg_log's input and output are distinct)
        bp_neg_log(acc, q, n, g.beta, _TINY)
        acc = q

    # damp against the stored f2v (energies mix: a geometric mixture of the
    # probability messages), normalize, store; no branch is needed for +inf:
    # with 0 < damping < 1 a state +inf in either message stays +inf
    for e in range(e_lo, e_hi):
        o = g.edge_msg_offset[e]
        K = g.edge_msg_offset[e + 1] - o
        fo = g.f2v + o
        y0 = acc + (o - base)
        lo = INFINITY
        for k in range(K):
            y = y0[k]
            if y != y:
                y = fb[o - base + k]
            if damping > 0.0:
                y = keep * y + damping * fo[k]
            y0[k] = y
            lo = y if y < lo else lo
        if lo == INFINITY:
            lo = 0.0                   # impossible message: all +inf, stored as is
        for k in range(K):
            x = y0[k] - lo
            d = 0.0 if x == fo[k] else fabs(x - fo[k])
            delta = d if d > delta else delta
            fo[k] = x
    return delta


def run(const intp_t[::1] var_state_offset, const intp_t[::1] var_edge_offset,
        const intp_t[::1] var_edges, const intp_t[::1] fac_edge_offset,
        const intp_t[::1] edge_var, const intp_t[::1] edge_stride,
        const intp_t[::1] edge_msg_offset, const intp_t[::1] fac_table,
        const float64_t[::1] tables, const float64_t[::1] exp_tables,
        const float64_t[::1] table_min, const float64_t[::1] unary,
        const intp_t[::1] schedule, float64_t[::1] v2f, float64_t[::1] f2v,
        double beta, bint min_sum, intp_t max_iter, double damping, double tol,
        int n_threads, intp_t q_size, intp_t max_card, bint track_inf,
        float64_t[::1] block_delta, float64_t[::1] work):
    """Run belief propagation in place on the messages v2f and f2v.

    With a non-empty ``schedule`` (the exact two-pass sweep of a forest) each step
    ``s`` updates one message: edge ``s // 2``, v2f when ``s % 2 == 0`` else f2v.
    With an empty schedule (length-1 array holding -1), flooding: all f2v from
    the v2f implied by the current f2v (damped), until the largest f2v change
    is <= tol or max_iter sweeps; v2f is then set from the final f2v.

    Parameters
    ----------
    fac_table : int64 (F,)
        Offset of factor f's table in ``tables`` and ``exp_tables`` (factors
        with identical tables share one copy).
    tables, exp_tables : float64 (T,)
        Energy tables and exp(-beta (T - table_min)) (sum-product; min-sum
        passes the energies again).
    table_min : float64 (F,)
        The finite minimum of factor f's table (0 if none).
    q_size : int
        The largest sum of cardinalities over a factor's scope (scratch for q).
    max_card : int
        The largest cardinality of a variable in some factor's scope.
    track_inf : bool
        Some unary energy or table entry is +inf (flooding counts +inf terms).
    block_delta : float64 (F,)
        Scratch: the largest message change of each block of factors.
    work : float64 (2 S,)
        Scratch for flooding: each variable state's total incoming energy and
        its number of +inf terms (S = len(unary)).

    Returns
    -------
    (iterations, delta) : (int, float)
    """
    cdef Graph g = _make_graph(var_state_offset, var_edge_offset, var_edges, fac_edge_offset,
                               edge_var, edge_stride, edge_msg_offset, fac_table, tables,
                               exp_tables, table_min, unary, v2f, f2v, beta, min_sum)
    cdef intp_t n_steps = schedule.shape[0]
    cdef intp_t it = 0, s, e, f, v, i, t, a, K, e0, b
    cdef double delta = INFINITY, dmax
    cdef double* q
    cdef double* out
    cdef double* buf
    cdef intp_t* cnt
    cdef intp_t n_facs = g.n_facs
    cdef intp_t n_vars = g.n_vars
    cdef intp_t max_arity = 0

    for f in range(n_facs):
        if fac_edge_offset[f + 1] - fac_edge_offset[f] > max_arity:
            max_arity = fac_edge_offset[f + 1] - fac_edge_offset[f]
    if n_facs == 0:
        return 0, 0.0

    if n_steps > 0 and schedule[0] >= 0:
        with nogil:
            q = <double*> malloc((q_size + 3 * max_card + 1) * sizeof(double))
            cnt = <intp_t*> malloc((2 * max_arity + 1) * sizeof(intp_t))
            out = q + q_size
            for s in range(n_steps):
                e = schedule[s] // 2
                if schedule[s] % 2 == 0:
                    _var_to_fac(&g, e)
                else:
                    f = _edge_factor(&g, e)
                    e0 = fac_edge_offset[f]
                    v = edge_var[e]
                    K = var_state_offset[v + 1] - var_state_offset[v]
                    _fac_to_var(&g, f, e - e0, q, out, cnt, False)
                    _store_f2v(&g, e, out, K, 0.0)
            free(cnt)
            free(q)
        return 1, 0.0

    # Flooding. Blocks of consecutive factors with about _BLOCK message slots
    # each: the unit of work of one thread, small enough for its buffers to
    # stay in cache.
    cdef intp_t S = var_state_offset[n_vars]
    cdef double* tot = &work[0]
    cdef double* n_inf = &work[S] if work.shape[0] > S else &work[0]
    # A block is a run of pairwise factors with equal scope cardinalities (kind
    # 1, or 2 when they also share one table) or of other factors (kind 0).
    cdef intp_t* block_start = <intp_t*> malloc((2 * n_facs + 1) * sizeof(intp_t))
    cdef intp_t* block_kind = block_start + n_facs + 1
    cdef intp_t n_blocks = 0, slots = 0, max_slots = 0, k0, k1, c0 = -1, c1 = -1
    if block_start == NULL:
        raise MemoryError()
    block_start[0] = 0
    for f in range(n_facs):
        e0 = fac_edge_offset[f]
        k0 = k1 = -1
        if fac_edge_offset[f + 1] - e0 == 2:
            k0 = edge_msg_offset[e0 + 1] - edge_msg_offset[e0]
            k1 = edge_msg_offset[e0 + 2] - edge_msg_offset[e0 + 1]
        if f > block_start[n_blocks] and (k0 != c0 or k1 != c1):
            # another kind of factor: close the block before f
            block_kind[n_blocks] = 1 if c0 >= 0 else 0
            n_blocks += 1
            block_start[n_blocks] = f
            max_slots = slots if slots > max_slots else max_slots
            slots = 0
        if f == block_start[n_blocks]:
            c0 = k0
            c1 = k1
        slots += edge_msg_offset[fac_edge_offset[f + 1]] - edge_msg_offset[e0]
        if slots >= _BLOCK or f == n_facs - 1:
            block_kind[n_blocks] = 1 if c0 >= 0 else 0
            n_blocks += 1
            block_start[n_blocks] = f + 1
            max_slots = slots if slots > max_slots else max_slots
            slots = 0
    for b in range(n_blocks):
        if block_kind[b] == 1:
            block_kind[b] = 2
            for f in range(block_start[b] + 1, block_start[b + 1]):
                if fac_table[f] != fac_table[block_start[b]]:
                    block_kind[b] = 1
                    break
    # Per-thread scratch, allocated here where a failure can raise, each thread's on its own
    # cache lines; zeroed: bp_damp reads the fallback slots (fb) whether set or not.
    cdef intp_t buf_len = (6 * max_slots + 3 * max_card + 8) // 8 * 8
    cdef intp_t cnt_len = (2 * max_arity + 8) // 8 * 8
    cdef double* bufs = <double*> calloc(n_threads * buf_len, sizeof(double))
    cdef intp_t* cnts = <intp_t*> calloc(n_threads * cnt_len, sizeof(intp_t))
    if bufs == NULL or cnts == NULL:
        free(bufs)
        free(cnts)
        free(block_start)
        raise MemoryError()
    try:
        with nogil:
            for v in prange(n_vars, num_threads=n_threads, schedule="static"):
                _var_total(&g, v, tot, n_inf, track_inf)
            while it < max_iter:
                with parallel(num_threads=n_threads):
                    buf = bufs + threadid() * buf_len
                    cnt = cnts + threadid() * cnt_len
                    # re-zeroing brings the scratch back into cache at streaming speed: the
                    # variables' pass in between evicted it (7% of a min-sum iteration else)
                    memset(buf, 0, buf_len * sizeof(double))
                    for b in prange(n_blocks, schedule="static"):
                        if block_kind[b] == 0:
                            block_delta[b] = _flood_block(
                                &g, block_start[b], block_start[b + 1], tot, n_inf, track_inf,
                                buf, buf + max_slots, buf + 2 * max_slots, buf + 3 * max_slots,
                                buf + 5 * max_slots, cnt, damping)
                        else:
                            block_delta[b] = _flood_pairwise_block(
                                &g, block_start[b], block_start[b + 1], block_kind[b] == 2,
                                tot, n_inf, track_inf, buf, buf + max_slots, buf + 2 * max_slots,
                                buf + 3 * max_slots, buf + 4 * max_slots, buf + 5 * max_slots,
                                cnt, damping)
                for v in prange(n_vars, num_threads=n_threads, schedule="static"):
                    _var_total(&g, v, tot, n_inf, track_inf)
                dmax = 0.0
                for b in range(n_blocks):
                    dmax = block_delta[b] if block_delta[b] > dmax else dmax
                it += 1
                delta = dmax
                if delta <= tol:
                    break
            # the caller reads v2f (beliefs, decoding): set it from the final f2v
            with parallel(num_threads=n_threads):
                q = bufs + threadid() * buf_len         # max_card + 1 <= buf_len doubles
                for v in prange(n_vars, schedule="static"):
                    _var_update_flood(&g, v, q)
    finally:
        free(block_start)
        free(bufs)
        free(cnts)
    return it, delta


cdef double _flood_pairwise_block(Graph* g, intp_t f_lo, intp_t f_hi, bint shared,
                                  const double* tot, const double* n_inf, bint track_inf,
                                  double* m, double* q, double* acc, double* fb, double* old,
                                  double* scratch, intp_t* cnt, double damping) noexcept nogil:
    """_flood_block for a run of pairwise factors whose scopes have the same cardinalities.

    The same steps, with the block's messages transposed into buffers indexed
    [state][factor] (first edges' states, then second edges'), so that every
    step except the load and the store is a flat loop over the block's factors
    that the compiler vectorizes. shared: every factor of the block uses the
    same table (the contraction then broadcasts its entries).
    """
    cdef intp_t nf = f_hi - f_lo
    cdef intp_t e_lo = g.fac_edge_offset[f_lo]
    cdef intp_t base = g.edge_msg_offset[e_lo]
    cdef intp_t K0 = g.edge_msg_offset[e_lo + 1] - base
    cdef intp_t K1 = g.edge_msg_offset[e_lo + 2] - base - K0
    cdef intp_t W = K0 + K1                 # slots per factor
    cdef intp_t n = nf * W
    cdef intp_t f, k, i, j, s0, s1, o, idx, t, r
    cdef const double* tv0
    cdef const double* tv1
    cdef const double* cv0
    cdef const double* cv1
    cdef const double* fo
    cdef const double* T
    cdef const double* xa
    cdef const double* xb
    cdef double* ya
    cdef double* yb
    cdef double* lo = scratch              # nf doubles
    cdef double* f2v
    cdef double x, y, c, w, delta
    cdef bint min_sum = g.min_sum

    # load: old f2v and v2f = total - f2v, transposed
    for f in range(nf):
        o = base + f * W
        s0 = g.var_state_offset[g.edge_var[e_lo + 2 * f]]
        s1 = g.var_state_offset[g.edge_var[e_lo + 2 * f + 1]]
        fo = g.f2v + o
        tv0 = tot + s0
        tv1 = tot + s1
        if track_inf:
            cv0 = n_inf + s0
            cv1 = n_inf + s1
            for k in range(W):
                x = fo[k]
                old[k * nf + f] = x
                c = cv0[k] if k < K0 else cv1[k - K0]
                if x == INFINITY:
                    c -= 1.0
                    x = 0.0
                y = tv0[k] if k < K0 else tv1[k - K0]
                m[k * nf + f] = y - x if c == 0.0 else INFINITY
        else:
            for k in range(K0):
                x = fo[k]
                old[k * nf + f] = x
                m[k * nf + f] = tv0[k] - x
            for k in range(K1):
                x = fo[K0 + k]
                old[(K0 + k) * nf + f] = x
                m[(K0 + k) * nf + f] = tv1[k] - x

    # normalize each v2f to minimum 0 (an all +inf message is left alone)
    bp_shift_columns(m, nf, 0, K0, lo)
    bp_shift_columns(m, nf, K0, W, lo)

    # contraction: acc rows 0..K0-1 are the messages to the first variables
    if min_sum:
        xa = m
        xb = m + K0 * nf
    else:
        bp_exp_neg(m, q, n, g.beta)
        xa = q
        xb = q + K0 * nf
    ya = acc
    yb = acc + K0 * nf
    if shared:
        T = (g.tables if min_sum else g.exp_tables) + g.fac_table[f_lo]
        bp_pair_shared(xa, xb, ya, yb, T, nf, K0, K1, min_sum)
    else:
        for f in range(nf):
            T = (g.tables if min_sum else g.exp_tables) + g.fac_table[f_lo + f]
            for idx in range(W):
                acc[idx * nf + f] = INFINITY if min_sum else 0.0
            for i in range(K0):
                for j in range(K1):
                    w = T[i * K1 + j]
                    if min_sum:
                        x = xa[i * nf + f] + w
                        yb[j * nf + f] = x if x < yb[j * nf + f] else yb[j * nf + f]
                        x = xb[j * nf + f] + w
                        ya[i * nf + f] = x if x < ya[i * nf + f] else ya[i * nf + f]
                    else:
                        yb[j * nf + f] += xa[i * nf + f] * w
                        ya[i * nf + f] += xb[j * nf + f] * w

    if not min_sum:
        # a scaled sum below _TINY lost its precision: the exact soft-min (see
        # _flood_block); the reference path reads v2f from the graph's slots
        for idx in range(n if bp_any_below(acc, n, _TINY) else 0):
            if acc[idx] < _TINY:
                r = idx // nf
                f = idx - r * nf
                o = base + f * W
                for k in range(W):
                    g.v2f[o + k] = m[k * nf + f]
                t = 0 if r < K0 else 1
                _contract_energy(g, f_lo + f, t, r - t * K0, scratch + nf, cnt)
                fb[idx] = scratch[nf + r - t * K0] - g.table_min[f_lo + f]
                acc[idx] = -1.0
        # into q, free after the contraction (bp_neg_log's input and output are distinct)
        bp_neg_log(acc, q, n, g.beta, _TINY)
        acc = q

    # damp against the old f2v, normalize, measure the change
    bp_damp(acc, old, fb, n, damping)
    bp_shift_columns(acc, nf, 0, K0, lo)
    bp_shift_columns(acc, nf, K0, W, lo)
    delta = bp_max_change(acc, old, n)

    # store, transposed back
    for f in range(nf):
        f2v = g.f2v + base + f * W
        for k in range(W):
            f2v[k] = acc[k * nf + f]
    return delta


cdef intp_t _edge_factor(Graph* g, intp_t e) noexcept nogil:
    """The factor owning edge e (binary search in fac_edge_offset)."""
    cdef intp_t lo = 0, hi = g.n_facs, mid
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if g.fac_edge_offset[mid] <= e:
            lo = mid
        else:
            hi = mid
    return lo



def beliefs(const intp_t[::1] var_state_offset, const intp_t[::1] var_edge_offset,
            const intp_t[::1] var_edges, const intp_t[::1] fac_edge_offset,
            const intp_t[::1] edge_var, const intp_t[::1] edge_stride,
            const intp_t[::1] edge_msg_offset, const intp_t[::1] fac_table_offset,
            const float64_t[::1] tables, const float64_t[::1] unary,
            const float64_t[::1] v2f, const float64_t[::1] f2v,
            float64_t[::1] var_out, float64_t[::1] fac_out, bint factors=True):
    """Unnormalized beliefs in energy space (lower is more probable).

    var_out (S,): U_v(k) + sum of the incoming f2v at every global state.
    fac_out (table size,): T_f(x) + sum_e v2f_e(x_e) at every table entry
    (left untouched when ``factors`` is False).
    """
    cdef intp_t n_vars = var_state_offset.shape[0] - 1
    cdef intp_t n_facs = fac_edge_offset.shape[0] - 1
    cdef intp_t v, k, i, e, s0, K, f, n, a, e0, N, idx, st
    with nogil:
        for v in range(n_vars):
            s0 = var_state_offset[v]
            K = var_state_offset[v + 1] - s0
            for k in range(K):
                var_out[s0 + k] = unary[s0 + k]
            for i in range(var_edge_offset[v], var_edge_offset[v + 1]):
                e = var_edges[i]
                for k in range(K):
                    var_out[s0 + k] += f2v[edge_msg_offset[e] + k]
        if not factors:
            n_facs = 0
        for f in range(n_facs):
            e0 = fac_edge_offset[f]
            a = fac_edge_offset[f + 1] - e0
            N = fac_table_offset[f + 1] - fac_table_offset[f]
            if a == 2:
                # pairwise: entry (k, l) is k * K1 + l, no division per entry
                K = var_state_offset[edge_var[e0] + 1] - var_state_offset[edge_var[e0]]
                st = var_state_offset[edge_var[e0 + 1] + 1] - var_state_offset[edge_var[e0 + 1]]
                for k in range(K):
                    for n in range(st):
                        idx = fac_table_offset[f] + k * st + n
                        fac_out[idx] = (tables[idx] + v2f[edge_msg_offset[e0] + k]
                                        + v2f[edge_msg_offset[e0 + 1] + n])
                continue
            for n in range(N):
                fac_out[fac_table_offset[f] + n] = tables[fac_table_offset[f] + n]
            # add each edge's message along its stride: entry n has state (n // stride) % K
            for i in range(a):
                e = e0 + i
                st = edge_stride[e]
                K = var_state_offset[edge_var[e] + 1] - var_state_offset[edge_var[e]]
                for n in range(N):
                    idx = (n // st) % K
                    fac_out[fac_table_offset[f] + n] += v2f[edge_msg_offset[e] + idx]


def decode(const intp_t[::1] var_state_offset, const intp_t[::1] var_edge_offset,
           const intp_t[::1] var_edges, const intp_t[::1] fac_edge_offset,
           const intp_t[::1] edge_var, const intp_t[::1] edge_stride,
           const intp_t[::1] edge_msg_offset, const intp_t[::1] fac_table,
           const float64_t[::1] tables, const float64_t[::1] table_min,
           const float64_t[::1] unary, const intp_t[::1] order,
           float64_t[::1] v2f, float64_t[::1] f2v, intp_t max_card,
           intp_t[::1] states_out):
    """Consistent MAP decoding: fix the variables one by one, in ``order``.

    Each variable takes the argmin (lowest state on ties) of its min-marginal
    conditioned on the variables fixed before it: its incoming f2v messages are
    recomputed (min-plus) with the fixed neighbours' v2f replaced by indicator
    messages (0 at the chosen state, +inf elsewhere). On a forest with ``order``
    a breadth-first order this is exact sequential conditioning; on a loopy graph
    it keeps every choice consistent with its already-decoded neighbours.
    Overwrites v2f and f2v. states_out (V,): filled for the variables in order.
    """
    cdef Graph g = _make_graph(var_state_offset, var_edge_offset, var_edges, fac_edge_offset,
                               edge_var, edge_stride, edge_msg_offset, fac_table, tables,
                               tables, table_min, unary, v2f, f2v, 1.0, True)
    cdef intp_t n = order.shape[0]
    cdef intp_t s, v, i, e, f, k, K, s0, best, max_arity = 0
    cdef double lo, x
    cdef double* out
    cdef double* bel
    cdef intp_t* cnt
    for f in range(g.n_facs):
        if fac_edge_offset[f + 1] - fac_edge_offset[f] > max_arity:
            max_arity = fac_edge_offset[f + 1] - fac_edge_offset[f]
    with nogil:
        out = <double*> malloc((3 * max_card + 1) * sizeof(double))
        cnt = <intp_t*> malloc((2 * max_arity + 1) * sizeof(intp_t))
        bel = <double*> malloc((max_card + 1) * sizeof(double))
        for s in range(n):
            v = order[s]
            if v < 0:
                continue
            s0 = var_state_offset[v]
            K = var_state_offset[v + 1] - s0
            for k in range(K):
                bel[k] = unary[s0 + k]
            for i in range(var_edge_offset[v], var_edge_offset[v + 1]):
                e = var_edges[i]
                f = _edge_factor(&g, e)
                _fac_to_var(&g, f, e - fac_edge_offset[f], out, out, cnt, True)
                for k in range(K):
                    bel[k] += out[k]
            best = 0
            lo = INFINITY
            for k in range(K):
                if bel[k] < lo:
                    lo = bel[k]
                    best = k
            states_out[v] = best
            for i in range(var_edge_offset[v], var_edge_offset[v + 1]):
                e = var_edges[i]
                for k in range(K):
                    v2f[edge_msg_offset[e] + k] = 0.0 if k == best else INFINITY
        free(bel)
        free(cnt)
        free(out)


def gibbs(const intp_t[::1] offsets, const float64_t[::1] b, const float64_t[::1] energy,
          double beta, float64_t[::1] p_out, float64_t[::1] mean_out, float64_t[::1] ent_out,
          int n_threads=1):
    """Per-segment Gibbs distribution of energy-space beliefs, with its mean energy and entropy.

    For each segment j = [offsets[j], offsets[j+1]) of b (a variable's states or
    a factor's table entries): p_out = exp(-beta (b - min b)) / sum (0 on +inf
    entries); mean_out[j] = sum of p * energy over the entries with p > 0 (so +inf
    energies of impossible entries do not give NaN); ent_out[j] = -sum p log p
    (0 log 0 = 0). Every segment must have a finite minimum (the caller checks).
    Uses libm exp and log: these terms enter results compared to 1e-9.
    """
    cdef intp_t n_seg = offsets.shape[0] - 1
    cdef intp_t j, i, lo, hi
    cdef double bmin, s, z, p, logs, mean, ent
    for j in prange(n_seg, nogil=True, num_threads=n_threads, schedule="static"):
        lo = offsets[j]
        hi = offsets[j + 1]
        bmin = INFINITY
        for i in range(lo, hi):
            if b[i] < bmin:
                bmin = b[i]
        s = 0.0
        for i in range(lo, hi):
            if b[i] == INFINITY:
                p_out[i] = 0.0
            else:
                p_out[i] = exp(-beta * (b[i] - bmin))
            s = s + p_out[i]
        logs = log(s)
        mean = 0.0
        ent = 0.0
        for i in range(lo, hi):
            p = p_out[i] / s
            p_out[i] = p
            if p > 0.0:
                z = -beta * (b[i] - bmin)
                mean = mean + p * energy[i]
                ent = ent - p * (z - logs)
        mean_out[j] = mean
        ent_out[j] = ent


def factor_gibbs(const intp_t[::1] var_state_offset, const intp_t[::1] fac_edge_offset,
                 const intp_t[::1] edge_var, const intp_t[::1] edge_stride,
                 const intp_t[::1] edge_msg_offset, const intp_t[::1] fac_table_offset,
                 const intp_t[::1] fac_table, const float64_t[::1] unique_tables,
                 const float64_t[::1] v2f, double beta, float64_t[::1] p_out,
                 float64_t[::1] mean_out, float64_t[::1] ent_out, float64_t[::1] bmin_out,
                 int n_threads=1):
    """Factor beliefs as probabilities, with their mean energies and entropies, in one pass.

    For each non-unary factor f, with b(x) = T_f(x) + sum_e v2f_e(x_e) its
    energy-space belief (T_f read from the shared ``unique_tables`` at
    ``fac_table[f]``): p_out[fac_table_offset[f] + x] = exp(-beta (b - min b)) / sum;
    mean_out[f] = <T_f> and ent_out[f] = -sum p log p (entries with p = 0
    skipped); bmin_out[f] = min b (+inf when every entry is forbidden: the other
    outputs of f are then meaningless and the caller raises).
    """
    cdef intp_t n_facs = fac_edge_offset.shape[0] - 1
    cdef intp_t f, n, N, o, t, e, e0, a, i, j, K0, K1, st, K, m0, m1
    cdef double bmin, s, z, pu, spe, spz
    for f in prange(n_facs, nogil=True, num_threads=n_threads, schedule="static"):
        o = fac_table_offset[f]
        N = fac_table_offset[f + 1] - o
        t = fac_table[f]
        e0 = fac_edge_offset[f]
        a = fac_edge_offset[f + 1] - e0
        if a == 2:
            # pairwise: entry (i, j) is i * K1 + j, no division
            K0 = var_state_offset[edge_var[e0] + 1] - var_state_offset[edge_var[e0]]
            K1 = var_state_offset[edge_var[e0 + 1] + 1] - var_state_offset[edge_var[e0 + 1]]
            m0 = edge_msg_offset[e0]
            m1 = edge_msg_offset[e0 + 1]
            for i in range(K0):
                for j in range(K1):
                    p_out[o + i * K1 + j] = unique_tables[t + i * K1 + j] + v2f[m0 + i] + v2f[m1 + j]
        else:
            for n in range(N):
                p_out[o + n] = unique_tables[t + n]
            for i in range(a):
                e = e0 + i
                st = edge_stride[e]
                K = var_state_offset[edge_var[e] + 1] - var_state_offset[edge_var[e]]
                for n in range(N):
                    p_out[o + n] += v2f[edge_msg_offset[e] + (n // st) % K]
        bmin = INFINITY
        for n in range(N):
            if p_out[o + n] < bmin:
                bmin = p_out[o + n]
        bmin_out[f] = bmin
        if bmin == INFINITY:
            mean_out[f] = 0.0
            ent_out[f] = 0.0
            continue
        s = 0.0
        spe = 0.0
        spz = 0.0
        for n in range(N):
            if p_out[o + n] == INFINITY:
                p_out[o + n] = 0.0
            else:
                z = -beta * (p_out[o + n] - bmin)
                pu = exp(z)
                p_out[o + n] = pu
                if pu > 0.0:
                    s = s + pu
                    spe = spe + pu * unique_tables[t + n]
                    spz = spz + pu * z
        for n in range(N):
            p_out[o + n] = p_out[o + n] / s
        mean_out[f] = spe / s
        ent_out[f] = log(s) - spz / s
