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
# per step, leaves to roots then back). Otherwise flooding: every v2f from the
# current f2v (v2f_e = total - f2v_e, the total computed once per variable),
# then every f2v, damped, until the largest f2v change is at most tol. For
# sum-product the factor step runs as flat passes so that exp and log are
# batched and vectorized: q = exp(-beta v2f) over all slots, the scaled sums
# per factor (pairwise factors do both directions in one sweep of the table),
# -log(sums)/beta over all slots, then each variable damps, normalizes and
# stores its incoming f2v and computes its outgoing v2f. (The forest sweep uses
# exact exclusive sums instead of total - f2v_e.) Loops over variables, factors
# and slot chunks run under OpenMP prange (n_threads).
#
# Layout (see factorebm/compiled.py): variables v own the global states
# [var_state_offset[v], var_state_offset[v+1]); non-unary factors f own the edges
# [fac_edge_offset[f], fac_edge_offset[f+1]) in scope order; edge e joins factor
# edge_fac[e] to variable edge_var[e], has row-major stride edge_stride[e] in the
# factor's table, and owns the message slots [edge_msg_offset[e], edge_msg_offset[e+1]).
from cython.parallel cimport prange, parallel
from libc.math cimport exp, log, INFINITY, fabs
from libc.stdlib cimport malloc, free

from _typedefs cimport float64_t, intp_t

cdef double _TINY = 1e-290

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
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
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
        const double ln2hi = 0.6931471805599453, ln2lo = 2.3190468138462996e-17;
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

    /* out[i] = -log(x[i]) / beta for x[i] >= tiny (finite); NaN (a flag) otherwise. */
    BP_CLONES
    static void bp_neg_log(const double* x, double* out, Py_ssize_t n, double beta, double tiny) {
        const double ln2hi = 0.6931471805599453, ln2lo = 2.3190468138462996e-17;
        const double sqrt2 = 1.4142135623730951;
        for (Py_ssize_t i = 0; i < n; i++) {
            double xi = x[i];
            double xs = xi >= tiny ? xi : 1.0;
            uint64_t u = bp_asuint(xs);
            double e = bp_asdouble((u >> 52) | 0x4330000000000000ULL) - 4503599627371519.0; /* 2^52 + 1023 */
            double m = bp_asdouble((u & 0x000FFFFFFFFFFFFFULL) | 0x3FF0000000000000ULL); /* [1, 2) */
            int big = m > sqrt2;
            m = big ? 0.5 * m : m;
            e = big ? e + 1.0 : e;
            double f = m - 1.0;
            double s = f / (2.0 + f);
            double s2 = s * s;
            double p = 1.0 / 19.0;
            p = p * s2 + 1.0 / 17.0;
            p = p * s2 + 1.0 / 15.0;
            p = p * s2 + 1.0 / 13.0;
            p = p * s2 + 1.0 / 11.0;
            p = p * s2 + 1.0 / 9.0;
            p = p * s2 + 1.0 / 7.0;
            p = p * s2 + 1.0 / 5.0;
            p = p * s2 + 1.0 / 3.0;
            double logm = 2.0 * s + 2.0 * s * s2 * p;
            double lg = e * ln2hi + (e * ln2lo + logm);
            out[i] = xi >= tiny ? -lg / beta : NAN;
        }
    }
    """
    void bp_exp_neg(const double* x, double* out, Py_ssize_t n, double beta) noexcept nogil
    void bp_neg_log(const double* x, double* out, Py_ssize_t n, double beta, double tiny) noexcept nogil


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
    const intp_t* fac_table_offset   # (F+1,)
    const float64_t* tables          # (sum of table sizes,) energies
    const float64_t* exp_tables      # same shape: exp(-beta (T - table_min)), sum-product only
    const float64_t* table_min       # (F,) finite minimum of each table (0 if none)
    const float64_t* unary           # (S,) folded unary energies + evidence mask
    float64_t* v2f                   # (M,) messages variable -> factor
    float64_t* f2v                   # (M,) messages factor -> variable
    double beta
    bint min_sum


cdef Graph _make_graph(const intp_t[::1] var_state_offset, const intp_t[::1] var_edge_offset,
                       const intp_t[::1] var_edges, const intp_t[::1] fac_edge_offset,
                       const intp_t[::1] edge_var, const intp_t[::1] edge_stride,
                       const intp_t[::1] edge_msg_offset, const intp_t[::1] fac_table_offset,
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
    g.fac_table_offset = &fac_table_offset[0]
    g.tables = &tables[0]
    g.exp_tables = &exp_tables[0]
    g.table_min = &table_min[0]
    g.unary = &unary[0]
    g.v2f = &v2f[0]
    g.f2v = &f2v[0]
    g.beta = beta
    g.min_sum = min_sum
    return g


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
    cdef const double* T = g.tables + g.fac_table_offset[f]
    cdef intp_t N = g.fac_table_offset[f + 1] - g.fac_table_offset[f]
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
    with finish=False stops at the scaled sums (see _fac_sums).
    """
    cdef intp_t e0 = g.fac_edge_offset[f]
    cdef intp_t a = g.fac_edge_offset[f + 1] - e0
    cdef intp_t vt = g.edge_var[e0 + t]
    cdef intp_t Kt = g.var_state_offset[vt + 1] - g.var_state_offset[vt]
    cdef intp_t tab = g.fac_table_offset[f]
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
        N = g.fac_table_offset[f + 1] - tab
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


cdef inline double _var_store_update(Graph* g, intp_t v, const double* L, const double* fallback,
                                     double* scratch, double damping) noexcept nogil:
    """Flooding sum-product, variable side: store v's incoming f2v, then its v2f.

    L holds -log(scaled sum)/beta for every message state (NaN where the exact
    value is in fallback); the table minimum is a constant per message and
    cancels in the normalization. Returns the largest f2v change.
    scratch: 2 * K doubles.
    """
    cdef intp_t s0 = g.var_state_offset[v]
    cdef intp_t K = g.var_state_offset[v + 1] - s0
    cdef intp_t i, k, off
    cdef double* old
    cdef double x, y, lo, d, delta = 0.0
    cdef double keep = 1.0 - damping
    for i in range(g.var_edge_offset[v], g.var_edge_offset[v + 1]):
        off = g.edge_msg_offset[g.var_edges[i]]
        old = g.f2v + off
        lo = INFINITY
        for k in range(K):
            y = L[off + k]
            if y != y:
                y = fallback[off + k]
            if damping > 0.0:
                y = keep * y + damping * old[k]
            scratch[k] = y
            lo = y if y < lo else lo
        if lo == INFINITY:
            lo = 0.0
        for k in range(K):
            x = scratch[k] - lo
            d = 0.0 if x == old[k] else fabs(x - old[k])
            delta = d if d > delta else delta
            old[k] = x
    _var_update_flood(g, v, scratch)
    return delta


def run(const intp_t[::1] var_state_offset, const intp_t[::1] var_edge_offset,
        const intp_t[::1] var_edges, const intp_t[::1] fac_edge_offset,
        const intp_t[::1] edge_var, const intp_t[::1] edge_stride,
        const intp_t[::1] edge_msg_offset, const intp_t[::1] fac_table_offset,
        const float64_t[::1] tables, const float64_t[::1] exp_tables,
        const float64_t[::1] table_min, const float64_t[::1] unary,
        const intp_t[::1] schedule, float64_t[::1] v2f, float64_t[::1] f2v,
        double beta, bint min_sum, intp_t max_iter, double damping, double tol,
        int n_threads, intp_t q_size, intp_t max_card, float64_t[::1] fac_delta,
        float64_t[::1] work):
    """Run belief propagation in place on the messages v2f and f2v.

    With a non-empty ``schedule`` (the exact two-pass sweep of a forest) each step
    ``s`` updates one message: edge ``s // 2``, v2f when ``s % 2 == 0`` else f2v.
    With an empty schedule (length-1 array holding -1), flooding: all v2f, then
    all f2v (damped), until the largest f2v change is <= tol or max_iter sweeps.

    Parameters
    ----------
    q_size : int
        The largest sum of cardinalities over a factor's scope (scratch for q).
    max_card : int
        The largest cardinality of a variable in some factor's scope.
    fac_delta : float64 (F,)
        Scratch: the largest message change of each factor in the last sweep.
    work : float64 (3 M + V,)
        Scratch for flooding sum-product: q = exp(-beta v2f), the scaled sums and
        the exact fallback values, one slot per message state (M = len(v2f)),
        then the largest change per variable.

    Returns
    -------
    (iterations, delta) : (int, float)
    """
    cdef Graph g = _make_graph(var_state_offset, var_edge_offset, var_edges, fac_edge_offset,
                               edge_var, edge_stride, edge_msg_offset, fac_table_offset, tables,
                               exp_tables, table_min, unary, v2f, f2v, beta, min_sum)
    cdef intp_t n_steps = schedule.shape[0]
    cdef intp_t it = 0, s, e, f, v, i, t, a, K, e0
    cdef double delta = INFINITY, dmax
    cdef double* q
    cdef double* out
    cdef intp_t* cnt
    cdef intp_t n_facs = g.n_facs
    cdef intp_t n_vars = g.n_vars
    cdef intp_t max_arity = 0

    for f in range(n_facs):
        if fac_edge_offset[f + 1] - fac_edge_offset[f] > max_arity:
            max_arity = fac_edge_offset[f + 1] - fac_edge_offset[f]
    if n_facs == 0:
        return 0, 0.0

    cdef intp_t n_msg = v2f.shape[0]
    cdef intp_t chunk = 4096
    cdef intp_t n_chunks = (n_msg + chunk - 1) // chunk
    cdef intp_t c, lo_s, hi_s
    cdef float64_t[::1] qall = work[:n_msg]
    cdef float64_t[::1] acc_all = work[n_msg:2 * n_msg]
    cdef float64_t[::1] fallback = work[2 * n_msg:3 * n_msg]
    cdef float64_t[::1] var_delta = work[3 * n_msg:]

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

    with nogil:
        # variables -> factors from the current f2v (each variable owns the v2f
        # slots of its edges)
        with parallel(num_threads=n_threads):
            q = <double*> malloc((max_card + 1) * sizeof(double))
            for v in prange(n_vars, schedule="static"):
                _var_update_flood(&g, v, q)
            free(q)
        while it < max_iter:
            if min_sum:
                # factors -> variables (each factor owns the f2v slots of its edges)
                with parallel(num_threads=n_threads):
                    q = <double*> malloc((q_size + 3 * max_card + 1) * sizeof(double))
                    cnt = <intp_t*> malloc((2 * max_arity + 1) * sizeof(intp_t))
                    for f in prange(n_facs, schedule="static"):
                        fac_delta[f] = _fac_update(&g, f, q, q + q_size, cnt, damping)
                    free(cnt)
                    free(q)
                with parallel(num_threads=n_threads):
                    q = <double*> malloc((max_card + 1) * sizeof(double))
                    for v in prange(n_vars, schedule="static"):
                        _var_update_flood(&g, v, q)
                    free(q)
                dmax = 0.0
                for f in range(n_facs):
                    dmax = fac_delta[f] if fac_delta[f] > dmax else dmax
            else:
                # sum-product as flat passes so that exp and log run batched:
                # q = exp(-beta v2f); scaled sums per factor; -log(sums)/beta;
                # then each variable damps and stores its incoming f2v and
                # computes its outgoing v2f
                for c in prange(n_chunks, num_threads=n_threads, schedule="static"):
                    lo_s = c * chunk
                    hi_s = lo_s + chunk if lo_s + chunk < n_msg else n_msg
                    bp_exp_neg(&v2f[lo_s], &qall[lo_s], hi_s - lo_s, beta)
                with parallel(num_threads=n_threads):
                    q = <double*> malloc((3 * max_card + 1) * sizeof(double))
                    cnt = <intp_t*> malloc((2 * max_arity + 1) * sizeof(intp_t))
                    for f in prange(n_facs, schedule="static"):
                        _fac_sums(&g, f, &qall[0], &acc_all[0], &fallback[0], q, cnt)
                    free(cnt)
                    free(q)
                for c in prange(n_chunks, num_threads=n_threads, schedule="static"):
                    lo_s = c * chunk
                    hi_s = lo_s + chunk if lo_s + chunk < n_msg else n_msg
                    bp_neg_log(&acc_all[lo_s], &acc_all[lo_s], hi_s - lo_s, beta, _TINY)
                with parallel(num_threads=n_threads):
                    q = <double*> malloc((2 * max_card + 1) * sizeof(double))
                    for v in prange(n_vars, schedule="static"):
                        var_delta[v] = _var_store_update(&g, v, &acc_all[0], &fallback[0], q, damping)
                    free(q)
                dmax = 0.0
                for v in range(n_vars):
                    dmax = var_delta[v] if var_delta[v] > dmax else dmax
            it += 1
            delta = dmax
            if delta <= tol:
                break
    return it, delta


cdef inline void _fac_sums(Graph* g, intp_t f, const double* qall, double* acc_all,
                           double* fallback, double* scratch, intp_t* cnt) noexcept nogil:
    """Scaled sums of every f2v of factor f into its slots of acc_all (q precomputed).

    A sum below _TINY has lost its precision: that state's exact energy-space
    soft-min, minus the table minimum (the offset of the scaled path), goes to
    fallback and the sum is set to -1 so that the batched log flags it (NaN).
    scratch: 3 * max_card doubles.
    """
    cdef intp_t e0 = g.fac_edge_offset[f]
    cdef intp_t a = g.fac_edge_offset[f + 1] - e0
    cdef intp_t t, i, j, K0, K1, k, K, o
    cdef intp_t off0 = g.edge_msg_offset[e0]
    cdef const double* T
    cdef const double* q0
    cdef const double* q1
    cdef double* acc0
    cdef double* acc1
    cdef double w, s
    if a == 2:
        # pairwise: both directions in one sweep over the table
        K0 = g.edge_msg_offset[e0 + 1] - off0
        K1 = g.edge_msg_offset[e0 + 2] - off0 - K0
        T = g.exp_tables + g.fac_table_offset[f]
        q0 = qall + off0
        q1 = q0 + K0
        acc0 = acc_all + off0
        acc1 = acc0 + K0
        for j in range(K1):
            acc1[j] = 0.0
        for i in range(K0):
            w = q0[i]
            s = 0.0
            for j in range(K1):
                acc1[j] += w * T[j]
                s += T[j] * q1[j]
            acc0[i] = s
            T += K1
    else:
        for t in range(a):
            _fac_to_var(g, f, t, <double*> (qall + off0),
                        acc_all + g.edge_msg_offset[e0 + t], cnt, True, False)
    for t in range(a):
        o = g.edge_msg_offset[e0 + t]
        K = g.edge_msg_offset[e0 + t + 1] - o
        for k in range(K):
            if acc_all[o + k] < _TINY:
                _contract_energy(g, f, t, k, scratch, cnt)
                fallback[o + k] = scratch[k] - g.table_min[f]
                acc_all[o + k] = -1.0


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


cdef inline double _fac_update(Graph* g, intp_t f, double* q, double* out, intp_t* cnt,
                        double damping) noexcept nogil:
    """All f2v messages of factor f (q computed once for all targets); returns the change."""
    cdef intp_t e0 = g.fac_edge_offset[f]
    cdef intp_t a = g.fac_edge_offset[f + 1] - e0
    cdef intp_t t, K, v
    cdef double d, delta = 0.0
    for t in range(a):
        v = g.edge_var[e0 + t]
        K = g.var_state_offset[v + 1] - g.var_state_offset[v]
        _fac_to_var(g, f, t, q, out, cnt, t > 0)
        d = _store_f2v(g, e0 + t, out, K, damping)
        if d > delta:
            delta = d
    return delta


def beliefs(const intp_t[::1] var_state_offset, const intp_t[::1] var_edge_offset,
            const intp_t[::1] var_edges, const intp_t[::1] fac_edge_offset,
            const intp_t[::1] edge_var, const intp_t[::1] edge_stride,
            const intp_t[::1] edge_msg_offset, const intp_t[::1] fac_table_offset,
            const float64_t[::1] tables, const float64_t[::1] unary,
            const float64_t[::1] v2f, const float64_t[::1] f2v,
            float64_t[::1] var_out, float64_t[::1] fac_out):
    """Unnormalized beliefs in energy space (lower is more probable).

    var_out (S,): U_v(k) + sum of the incoming f2v at every global state.
    fac_out (table size,): T_f(x) + sum_e v2f_e(x_e) at every table entry.
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
        for f in range(n_facs):
            e0 = fac_edge_offset[f]
            a = fac_edge_offset[f + 1] - e0
            N = fac_table_offset[f + 1] - fac_table_offset[f]
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
           const intp_t[::1] edge_msg_offset, const intp_t[::1] fac_table_offset,
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
                               edge_var, edge_stride, edge_msg_offset, fac_table_offset, tables,
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
