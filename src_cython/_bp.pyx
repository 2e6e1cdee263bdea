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
# Two more schedules share the same message functions: residual BP (run_residual)
# and, for min-sum on pairwise graphs, TRW-S with its lower bound (run_trws); see
# their sections below.
#
# Potts tables T(a, b) = d + c [a != b] (flagged per factor by the caller) take
# O(K) messages in both semirings: min(x_k, min_l x_l + c) for min-sum, and
# w sum_l q_l + (1 - w) q_k with w = exp(-beta c) on the scaled probabilities of
# sum-product (bp_potts in _bp_simd.h, where the flat C loops live).
#
# A graph whose every non-unary factor is such a Potts table (finite c, one K) floods in
# each semiring's own domain instead (_flood_potts, bp_potts_block): min-sum on energies,
# sum-product on probabilities exp(-beta energy) with the totals as products and the cavity
# a quotient, so that a message costs no exp and no log (they were most of a sum-product
# sweep); damping 0.5 is then a geometric mean, a square root. The messages keep a
# [state][factor] block layout for the whole run, which also saves min-sum the transposes
# of the general sweep, and a variable's total is retaken right after the block of its last
# factor, while its messages are in cache. Where a probability could come near underflow
# (large beta c or unary spreads), or damping needs a pow, the general log-domain sweep runs.
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
from libc.stdint cimport int32_t

from _typedefs cimport float64_t, intp_t

cdef double _TINY = 1e-290
# message slots per block of factors in a flooding sweep (the per-thread unit of
# work: its seven buffers, 28 KiB, stay in a core's L1 cache)
cdef intp_t _BLOCK = 512
# variables per chunk of the totals' pass (one call into the vectorized loop per chunk)
cdef enum:
    _VAR_CHUNK = 256


def _set_block(intp_t n):
    """Test hook: the message slots per block of a flooding sweep."""
    global _BLOCK
    _BLOCK = n


# Graphs of Potts factors only run in the semirings' own domains (_flood_potts); off, they
# take the general log-domain sweep (a test hook compares the two)
cdef bint _POTTS_DOMAIN = True
# sum-product's probabilities stay above exp(-_PROB_RANGE) (see _potts_domain_ok), far from
# the smallest normal double (exp(-708)), so that every product and quotient keeps its
# relative precision
cdef double _PROB_RANGE = 600.0


def _set_potts_domain(bint on):
    """Test hook: whether Potts-only graphs take the semiring-domain sweep (_flood_potts)."""
    global _POTTS_DOMAIN
    _POTTS_DOMAIN = on

# Batched exp and log for the flooding sum-product sweeps. Every message state
# needs one exp (q = exp(-beta v2f)) and one log (the output energy); libm's
# scalar calls dominate the sweep, so these flat loops use branch-free
# polynomials that the compiler vectorizes, cloned for AVX-512, AVX2 and the
# baseline ISA and dispatched at load time. Accuracy is within a few ulp
# (tested against libm in tests/test_bp_loopy.py); +inf inputs give exactly 0
# (exp) and sums below _TINY are flagged with NaN for the exact fallback.
cdef extern from "_bp_simd.h":
    void bp_exp_neg(const double* x, double* out, Py_ssize_t n, double beta) noexcept nogil
    void bp_log_table_init() noexcept nogil
    int bp_neg_log(const double* x, double* out, Py_ssize_t n, double beta, double tiny) noexcept nogil
    void bp_shift_exp_rows(double* x, double* out, Py_ssize_t nf, Py_ssize_t r0, Py_ssize_t r1,
                           double beta, double* lo) noexcept nogil
    void bp_pair_shared(const double* xa, const double* xb, double* ya, double* yb, const double* T,
                        Py_ssize_t nf, Py_ssize_t K0, Py_ssize_t K1, int min_sum) noexcept nogil
    double bp_finish_rows(double* acc, const double* old, const double* fb, Py_ssize_t nf,
                          Py_ssize_t r0, Py_ssize_t r1, double damping, int use_fb,
                          double* lo) noexcept nogil
    void bp_var_totals(double* tot, const double* unary, const double* f2v,
                       const intp_t* var_edges, const intp_t* edge_msg_offset,
                       const intp_t* var_edge_offset, const intp_t* var_state_offset,
                       Py_ssize_t v_lo, Py_ssize_t v_hi) noexcept nogil
    void bp_load_pair(const double* fo, const double* tot, const intp_t* ev, const intp_t* vso,
                      double* old, double* m, Py_ssize_t nf, Py_ssize_t K0, Py_ssize_t K1) noexcept nogil
    void bp_store_pair(double* fo, const double* acc, Py_ssize_t nf, Py_ssize_t W) noexcept nogil
    void bp_potts(const double* x, double* y, const double* cw, Py_ssize_t nf, Py_ssize_t K,
                  int min_sum, double* agg) noexcept nogil
    void bp_potts_totals(double* tot, const double* u, const double* msg, const int32_t* s0,
                         const int32_t* eo, const int32_t* slots, Py_ssize_t n, Py_ssize_t K,
                         int prob) noexcept nogil
    double bp_potts_block(double* msg, const double* tot, const int32_t* s01, const double* cw,
                          Py_ssize_t nf, Py_ssize_t K, int min_sum, double damping, double beta,
                          double* x, double* acc, double* s) noexcept nogil
    intp_t bp_potts_slot(intp_t e, Py_ssize_t K) noexcept nogil
    enum: BP_NF


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
    const float64_t* potts           # (F,) c when f's table is d + c [a != b] (d = table_min), else -1
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
                       const float64_t[::1] table_min, const float64_t[::1] potts,
                       const float64_t[::1] unary, float64_t[::1] v2f, float64_t[::1] f2v,
                       double beta, bint min_sum):
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
    g.potts = &potts[0]
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


cdef inline void _pair_min_message(Graph* g, intp_t f, intp_t t, const double* x,
                                   double* out) noexcept nogil:
    """Min-sum message of pairwise factor f onto its t-th edge from x, the other edge's input
    (energies): out[k] = min_l T_f(k at position t, l) + x[l]; O(K) when T_f is Potts."""
    cdef intp_t e0 = g.fac_edge_offset[f]
    cdef intp_t K0 = g.edge_msg_offset[e0 + 1] - g.edge_msg_offset[e0]
    cdef intp_t K1 = g.edge_msg_offset[e0 + 2] - g.edge_msg_offset[e0 + 1]
    cdef const double* T
    cdef intp_t i, j
    cdef double c, w, v, lo, agg
    if g.potts[f] >= 0.0:
        # bp_potts for one factor, inline (a call per message would cost more than the loop)
        agg = x[0]
        for i in range(1, K0):
            agg = x[i] if x[i] < agg else agg
        agg += g.potts[f]
        c = g.table_min[f]
        for i in range(K0):
            out[i] = (x[i] if x[i] < agg else agg) + c
        return
    # min-plus, the inner loop over contiguous table rows
    T = g.tables + g.fac_table[f]
    if t == 1:
        for j in range(K1):
            out[j] = INFINITY
        for i in range(K0):
            w = x[i]
            if w == INFINITY:
                continue
            for j in range(K1):
                v = T[i * K1 + j] + w
                out[j] = v if v < out[j] else out[j]
    else:
        for i in range(K0):
            lo = INFINITY
            for j in range(K1):
                v = T[i * K1 + j] + x[j]
                lo = v if v < lo else lo
            out[i] = lo


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
    cdef double w, acc, lo, x, tmin, c

    if g.min_sum:
        if a == 2:
            _pair_min_message(g, f, t, g.v2f + g.edge_msg_offset[e0 + 1 - t], out)
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
    if a == 2 and g.potts[f] >= 0.0:
        # Potts: O(K); w = exp(-beta c) is the exp table's entry (0, 1)
        w = T[1]
        bp_potts(q + (Kt if t == 0 else 0), out, &w, 1, Kt, False, &lo)
    elif a == 2:
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


cdef inline double _largest(const double* block_delta, intp_t n_blocks) noexcept nogil:
    """The largest message change of a sweep, from its blocks' (0 for none)."""
    cdef double dmax = 0.0
    cdef intp_t b
    for b in range(n_blocks):
        dmax = block_delta[b] if block_delta[b] > dmax else dmax
    return dmax


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



cdef inline void _var_total_inf(Graph* g, intp_t v, double* tot, double* n_inf) noexcept nogil:
    """tot (S,) and n_inf (S,) at v's states: U_v + every incoming f2v, the +inf terms
    counted in n_inf instead of added, so that a factor can take its own f2v back out of the
    total exactly (v2f_e = tot - f2v_e is undefined where f2v_e is +inf). Graphs without
    +inf energies take bp_var_totals instead (no message is ever +inf there).
    """
    cdef intp_t s0 = g.var_state_offset[v]
    cdef intp_t K = g.var_state_offset[v + 1] - s0
    cdef intp_t i, k
    cdef const double* inc
    cdef double* t = tot + s0
    cdef double* c = n_inf + s0
    cdef double x
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


cdef inline void _var_totals(Graph* g, intp_t c, double* tot, double* n_inf,
                             bint track_inf) noexcept nogil:
    """The totals of the variables of chunk c (_VAR_CHUNK of them): bp_var_totals, or
    _var_total_inf each where energies may be +inf."""
    cdef intp_t v_lo = c * _VAR_CHUNK, v_hi = v_lo + _VAR_CHUNK, v
    if v_hi > g.n_vars:
        v_hi = g.n_vars
    if not track_inf:
        bp_var_totals(tot, g.unary, g.f2v, g.var_edges, g.edge_msg_offset, g.var_edge_offset,
                      g.var_state_offset, v_lo, v_hi)
        return
    for v in range(v_lo, v_hi):
        _var_total_inf(g, v, tot, n_inf)


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
        const float64_t[::1] table_min, const float64_t[::1] potts, const float64_t[::1] unary,
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
    potts : float64 (F,)
        c where factor f's table is Potts, table_min + c [a != b] (square,
        0 <= c <= inf), else -1: its messages then cost O(K), not O(K^2).
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
                               exp_tables, table_min, potts, unary, v2f, f2v, beta, min_sum)
    cdef intp_t n_steps = schedule.shape[0]
    cdef intp_t it = 0, s, e, f, v, i, t, a, K, e0, b
    cdef double delta = INFINITY
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

    if _POTTS_DOMAIN and _potts_domain_ok(&g, damping):
        return _flood_potts(&g, max_iter, damping, tol, n_threads, &block_delta[0], &work[0])

    # Flooding. Blocks of consecutive factors with about _BLOCK message slots
    # each: the unit of work of one thread, small enough for its buffers to
    # stay in cache.
    cdef intp_t S = var_state_offset[n_vars]
    cdef intp_t c, n_chunks = (n_vars + _VAR_CHUNK - 1) // _VAR_CHUNK
    cdef double* tot = &work[0]
    cdef double* n_inf = &work[S] if work.shape[0] > S else &work[0]
    # A block is a run of pairwise factors with equal scope cardinalities (kind
    # 1, 2 when they also share one table, 3 when every table is Potts) or of
    # other factors (kind 0).
    cdef intp_t* block_start = <intp_t*> malloc((2 * n_facs + 1) * sizeof(intp_t))
    cdef intp_t* block_kind = block_start + n_facs + 1
    cdef intp_t n_blocks = 0, slots = 0, max_slots = 0, k0, k1, kp, c0 = -1, c1 = -1, cp = 0
    if block_start == NULL:
        raise MemoryError()
    block_start[0] = 0
    for f in range(n_facs):
        e0 = fac_edge_offset[f]
        k0 = k1 = -1
        kp = 0
        if fac_edge_offset[f + 1] - e0 == 2:
            k0 = edge_msg_offset[e0 + 1] - edge_msg_offset[e0]
            k1 = edge_msg_offset[e0 + 2] - edge_msg_offset[e0 + 1]
            kp = potts[f] >= 0.0
        if f > block_start[n_blocks] and (k0 != c0 or k1 != c1 or kp != cp):
            # another kind of factor: close the block before f
            block_kind[n_blocks] = (3 if cp else 1) if c0 >= 0 else 0
            n_blocks += 1
            block_start[n_blocks] = f
            max_slots = slots if slots > max_slots else max_slots
            slots = 0
        if f == block_start[n_blocks]:
            c0 = k0
            c1 = k1
            cp = kp
        slots += edge_msg_offset[fac_edge_offset[f + 1]] - edge_msg_offset[e0]
        if slots >= _BLOCK or f == n_facs - 1:
            block_kind[n_blocks] = (3 if cp else 1) if c0 >= 0 else 0
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
    # cache lines; zeroed: bp_finish_rows reads the fallback slots (fb) whether set or not.
    cdef intp_t buf_len = (7 * max_slots + 3 * max_card + 8) // 8 * 8
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
            for c in prange(n_chunks, num_threads=n_threads, schedule="static"):
                _var_totals(&g, c, tot, n_inf, track_inf)
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
                                buf + 6 * max_slots, cnt, damping)
                        else:
                            block_delta[b] = _flood_pairwise_block(
                                &g, block_start[b], block_start[b + 1], block_kind[b] == 2,
                                block_kind[b] == 3, tot, n_inf, track_inf, buf, buf + max_slots,
                                buf + 2 * max_slots, buf + 3 * max_slots, buf + 4 * max_slots,
                                buf + 5 * max_slots, buf + 6 * max_slots, cnt, damping)
                for c in prange(n_chunks, num_threads=n_threads, schedule="static"):
                    _var_totals(&g, c, tot, n_inf, track_inf)
                delta = _largest(&block_delta[0], n_blocks)
                it += 1
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


cdef double _flood_pairwise_block(Graph* g, intp_t f_lo, intp_t f_hi, bint shared, bint potts,
                                  const double* tot, const double* n_inf, bint track_inf,
                                  double* m, double* q, double* acc, double* fb, double* old,
                                  double* pw, double* scratch, intp_t* cnt,
                                  double damping) noexcept nogil:
    """_flood_block for a run of pairwise factors whose scopes have the same cardinalities.

    The same steps, with the block's messages transposed into buffers indexed
    [state][factor] (first edges' states, then second edges'), so that every
    step except the load and the store is a flat loop over the block's factors
    that the compiler vectorizes. shared: every factor of the block uses the
    same table (the contraction then broadcasts its entries). potts: every
    table is Potts (K0 == K1), and the contraction is O(K) per factor. pw:
    2 nf doubles of scratch for it.
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
    cdef bint min_sum = g.min_sum, flagged

    # load: old f2v and v2f = total - f2v, transposed; with +inf terms counted apart, a
    # state whose other terms hold a +inf gets v2f +inf
    if not track_inf:
        bp_load_pair(g.f2v + base, tot, g.edge_var + e_lo, g.var_state_offset, old, m, nf, K0, K1)
    for f in range(nf if track_inf else 0):
        o = base + f * W
        s0 = g.var_state_offset[g.edge_var[e_lo + 2 * f]]
        s1 = g.var_state_offset[g.edge_var[e_lo + 2 * f + 1]]
        fo = g.f2v + o
        tv0 = tot + s0
        tv1 = tot + s1
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

    # normalize each v2f to minimum 0 (an all +inf message is left alone) for the exp of
    # sum-product, fused with it; min-plus commutes with the shift, and its result is
    # normalized below
    if min_sum:
        xa = m
        xb = m + K0 * nf
    else:
        bp_shift_exp_rows(m, q, nf, 0, K0, g.beta, lo)
        bp_shift_exp_rows(m, q, nf, K0, W, g.beta, lo)
        xa = q
        xb = q + K0 * nf

    # contraction: acc rows 0..K0-1 are the messages to the first variables
    ya = acc
    yb = acc + K0 * nf
    if potts:
        # O(K) per factor: c (min-sum) or exp(-beta c), the exp table's entry (0, 1)
        for f in range(nf):
            pw[f] = g.potts[f_lo + f] if min_sum else g.exp_tables[g.fac_table[f_lo + f] + 1]
        bp_potts(xa, yb, pw, nf, K0, min_sum, pw + nf)
        bp_potts(xb, ya, pw, nf, K0, min_sum, pw + nf)
    elif shared:
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

    flagged = False
    if not min_sum:
        # into q, free after the contraction (bp_neg_log's input and output are distinct);
        # a scaled sum below _TINY lost its precision (flagged NaN): the exact soft-min into
        # fb (see _flood_block); the reference path reads v2f from the graph's slots
        flagged = bp_neg_log(acc, q, n, g.beta, _TINY) != 0
        for idx in range(n if flagged else 0):
            if acc[idx] < _TINY:
                r = idx // nf
                f = idx - r * nf
                o = base + f * W
                for k in range(W):
                    g.v2f[o + k] = m[k * nf + f]
                t = 0 if r < K0 else 1
                _contract_energy(g, f_lo + f, t, r - t * K0, scratch + nf, cnt)
                fb[idx] = scratch[nf + r - t * K0] - g.table_min[f_lo + f]
        acc = q

    # damp against the old f2v, normalize, measure the change (each edge's messages apart)
    delta = bp_finish_rows(acc, old, fb, nf, 0, K0, damping, flagged, lo)
    x = bp_finish_rows(acc, old, fb, nf, K0, W, damping, flagged, lo)
    delta = x if x > delta else delta

    # store, transposed back
    bp_store_pair(g.f2v + base, acc, nf, W)
    return delta


cdef bint _potts_domain_ok(Graph* g, double damping) noexcept nogil:
    """Whether flooding can run in the semiring's own domain (_flood_potts): every non-unary
    factor is pairwise Potts with a finite c and K states on both sides (one K for all), and
    every variable in a factor has an allowed state (so no message is ever +inf or, in
    probabilities, 0). Sum-product also needs damping 0 or 0.5 (other values would need a pow
    per message) and its probabilities far from underflow: a variable's total is at least
    exp(-beta (U spread + degree c_max)), and a message's terms at least exp(-2 beta c_max)
    times a neighbour's total; both stay above exp(-_PROB_RANGE). Otherwise the general
    log-domain sweep runs (it is exact at any energy scale)."""
    cdef intp_t f, v, k, s0, K = 0, deg, max_deg = 0
    cdef double c, c_max = 0.0, lo, hi, x, spread = 0.0
    for f in range(g.n_facs):
        if g.fac_edge_offset[f] != 2 * f or g.fac_edge_offset[f + 1] != 2 * f + 2:
            return False
        c = g.potts[f]
        if not (c >= 0.0 and c < INFINITY):
            return False
        if f == 0:
            K = g.edge_msg_offset[1] - g.edge_msg_offset[0]
        if (g.edge_msg_offset[2 * f + 1] - g.edge_msg_offset[2 * f] != K
                or g.edge_msg_offset[2 * f + 2] - g.edge_msg_offset[2 * f + 1] != K):
            return False
        c_max = c if c > c_max else c_max
    for v in range(g.n_vars):
        deg = g.var_edge_offset[v + 1] - g.var_edge_offset[v]
        if deg == 0:
            continue
        max_deg = deg if deg > max_deg else max_deg
        s0 = g.var_state_offset[v]
        lo = INFINITY
        hi = -INFINITY
        for k in range(K):
            x = g.unary[s0 + k]
            if x != x or x == -INFINITY:
                return False
            lo = x if x < lo else lo
            if x != INFINITY:
                hi = x if x > hi else hi
        if lo == INFINITY:
            return False
        spread = hi - lo if hi - lo > spread else spread
    # its 32-bit indices (message slots, states)
    if ((g.n_facs // BP_NF + 1) * 2 * K * BP_NF > 2147483647
            or g.var_state_offset[g.n_vars] > 2147483647):
        return False
    if g.min_sum:
        return True
    if damping != 0.0 and damping != 0.5:
        return False
    return g.beta * (spread + (max_deg + 2) * c_max) <= _PROB_RANGE


cdef tuple _flood_potts(Graph* g, intp_t max_iter, double damping, double tol, int n_threads,
                        double* block_delta, double* work):
    """Flooding on a graph of Potts factors (_potts_domain_ok), each semiring in its own
    domain: min-sum on energies, sum-product on probabilities, so that a message costs no exp
    and no log (bp_potts_block). The messages keep the blocks' layout for the whole run: read
    from f2v at the start, written back to it (as energies) at the end, and v2f set from
    them, as after the general sweep. work: 2 S doubles (the totals, and sum-product's unary
    probabilities).

    The blocks are split into n_threads contiguous runs, one a thread. A variable whose
    factors all lie in one run gets its new total right after that run's block holding its
    last factor: no later factor of the sweep reads its total, and its messages are still in
    cache (a separate pass over the variables read them all from memory again, a quarter of
    a sweep's traffic on a large grid). The totals of the other variables (factors in two
    runs) follow the sweep."""
    cdef intp_t F = g.n_facs, V = g.n_vars
    cdef intp_t K = g.edge_msg_offset[1] - g.edge_msg_offset[0]
    cdef intp_t W = 2 * K
    cdef intp_t n_blocks = (F + BP_NF - 1) // BP_NF
    cdef intp_t S = g.var_state_offset[V]
    cdef intp_t n_runs = n_threads if n_threads > 1 else 1
    cdef intp_t scratch_len = (2 * W + 3) * BP_NF     # a multiple of 8: own cache lines
    cdef intp_t it = 0, b, c, e, f, k, v, i, s0, o, slot, r, f_lo, f_hi, n_local, n_late
    cdef double delta = INFINITY, lo, x
    cdef double neutral = 0.0 if g.min_sum else 1.0
    cdef bint prob = not g.min_sum
    cdef double* tot = work
    cdef const double* u = g.unary
    cdef double* buf
    cdef double* msg = <double*> malloc(n_blocks * W * BP_NF * sizeof(double))
    cdef double* cw = <double*> malloc(n_blocks * BP_NF * sizeof(double))
    cdef double* bufs = <double*> malloc(n_threads * scratch_len * sizeof(double))
    # the variables (with edges) in the order their totals are taken: those finishing in
    # block b at [fin_offset[b], fin_offset[b + 1]), then the late ones (factors in two runs)
    cdef intp_t* fin_offset = <intp_t*> calloc(n_blocks + 2, sizeof(intp_t))
    cdef intp_t* fin_vars = <intp_t*> malloc((V + 1) * sizeof(intp_t))
    cdef intp_t* run_of = <intp_t*> malloc((n_blocks + 1) * sizeof(intp_t))
    cdef intp_t* key = <intp_t*> malloc((V + 1) * sizeof(intp_t))
    # in that order, each variable's first state and its messages' slots (CSR), and per factor
    # its variables' first states: what the sweep reads, in 32 bits (see bp_potts_totals)
    cdef int32_t* fin_s0 = <int32_t*> malloc((V + 1) * sizeof(int32_t))
    cdef int32_t* fin_eo = <int32_t*> malloc((V + 1) * sizeof(int32_t))
    cdef int32_t* fin_slots = <int32_t*> malloc((2 * F + 1) * sizeof(int32_t))
    cdef int32_t* s01 = <int32_t*> malloc((2 * F + 1) * sizeof(int32_t))
    try:
        if (msg == NULL or cw == NULL or bufs == NULL or fin_offset == NULL or fin_vars == NULL
                or run_of == NULL or key == NULL or fin_s0 == NULL or fin_eo == NULL
                or fin_slots == NULL or s01 == NULL):
            raise MemoryError()
        with nogil:
            for r in range(n_runs):
                for b in range(r * n_blocks // n_runs, (r + 1) * n_blocks // n_runs):
                    run_of[b] = r
            for v in range(V):
                key[v] = -1
                if g.var_edge_offset[v + 1] == g.var_edge_offset[v]:
                    continue
                f_lo = F
                f_hi = -1
                for i in range(g.var_edge_offset[v], g.var_edge_offset[v + 1]):
                    f = g.var_edges[i] // 2
                    f_lo = f if f < f_lo else f_lo
                    f_hi = f if f > f_hi else f_hi
                key[v] = (f_hi // BP_NF if run_of[f_lo // BP_NF] == run_of[f_hi // BP_NF]
                          else n_blocks)
                fin_offset[key[v] + 1] += 1
            for b in range(n_blocks + 1):
                fin_offset[b + 1] += fin_offset[b]
            for v in range(V):
                if key[v] >= 0:
                    fin_vars[fin_offset[key[v]]] = v
                    fin_offset[key[v]] += 1
            for b in range(n_blocks, 0, -1):
                fin_offset[b] = fin_offset[b - 1]
            fin_offset[0] = 0
            n_local = fin_offset[n_blocks]
            n_late = fin_offset[n_blocks + 1] - n_local
            fin_eo[0] = 0
            for i in range(n_local + n_late):
                v = fin_vars[i]
                fin_s0[i] = <int32_t> g.var_state_offset[v]
                o = fin_eo[i]
                for k in range(g.var_edge_offset[v], g.var_edge_offset[v + 1]):
                    fin_slots[o] = <int32_t> bp_potts_slot(g.var_edges[k], K)
                    o += 1
                fin_eo[i + 1] = <int32_t> o
            for e in range(2 * F):
                s01[e] = <int32_t> g.var_state_offset[g.edge_var[e]]

            # padding slots: neutral messages, and cw 0 keeps them so (y = x in both semirings)
            for o in range(n_blocks * W * BP_NF):
                msg[o] = neutral
            for f in range(n_blocks * BP_NF):
                cw[f] = 0.0
            for f in range(F):
                # exp(-beta c) is the exp table's entry (0, 1), as in the log-domain sweep
                cw[f] = g.potts[f] if g.min_sum else g.exp_tables[g.fac_table[f] + 1]
            for e in range(2 * F):
                slot = bp_potts_slot(e, K)
                o = g.edge_msg_offset[e]
                for k in range(K):
                    x = g.f2v[o + k]
                    msg[slot + k * BP_NF] = x if g.min_sum else exp(-g.beta * x)
            if not g.min_sum:
                # the unary energies as probabilities, each variable's scaled to maximum 1
                u = work + S
                for v in range(V):
                    s0 = g.var_state_offset[v]
                    lo = INFINITY
                    for k in range(g.var_state_offset[v + 1] - s0):
                        lo = g.unary[s0 + k] if g.unary[s0 + k] < lo else lo
                    for k in range(g.var_state_offset[v + 1] - s0):
                        work[S + s0 + k] = (exp(-g.beta * (g.unary[s0 + k] - lo)) if lo != INFINITY
                                            else 0.0)
            bp_potts_totals(tot, u, msg, fin_s0, fin_eo, fin_slots, n_local + n_late, K, prob)
            while it < max_iter:
                for r in prange(n_runs, num_threads=n_threads, schedule="static", chunksize=1):
                    buf = bufs + threadid() * scratch_len
                    for b in range(r * n_blocks // n_runs, (r + 1) * n_blocks // n_runs):
                        block_delta[b] = bp_potts_block(
                            msg + b * W * BP_NF, tot, s01 + 2 * b * BP_NF, cw + b * BP_NF,
                            min(<intp_t> BP_NF, F - b * BP_NF), K, g.min_sum, damping, g.beta, buf,
                            buf + W * BP_NF, buf + 2 * W * BP_NF)
                        bp_potts_totals(tot, u, msg, fin_s0 + fin_offset[b], fin_eo + fin_offset[b],
                                        fin_slots, fin_offset[b + 1] - fin_offset[b], K, prob)
                for c in prange((n_late + _VAR_CHUNK - 1) // _VAR_CHUNK, num_threads=n_threads,
                                schedule="static"):
                    bp_potts_totals(tot, u, msg, fin_s0 + n_local + c * _VAR_CHUNK,
                                    fin_eo + n_local + c * _VAR_CHUNK, fin_slots,
                                    min(<intp_t> _VAR_CHUNK, n_late - c * _VAR_CHUNK), K, prob)
                delta = _largest(block_delta, n_blocks)
                it += 1
                if delta <= tol:
                    break
            for e in prange(2 * F, num_threads=n_threads, schedule="static"):
                slot = bp_potts_slot(e, K)
                o = g.edge_msg_offset[e]
                for k in range(K):
                    x = msg[slot + k * BP_NF]
                    g.f2v[o + k] = x if g.min_sum else -log(x) / g.beta
            with parallel(num_threads=n_threads):
                buf = bufs + threadid() * scratch_len        # K + 1 <= scratch_len doubles
                for v in prange(V, schedule="static"):
                    _var_update_flood(g, v, buf)
    finally:
        free(msg)
        free(cw)
        free(bufs)
        free(fin_offset)
        free(fin_vars)
        free(run_of)
        free(key)
        free(fin_s0)
        free(fin_eo)
        free(fin_slots)
        free(s01)
    return it, delta


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
            const intp_t[::1] fac_table, const float64_t[::1] tables,
            const float64_t[::1] unary, const float64_t[::1] v2f, const float64_t[::1] f2v,
            float64_t[::1] var_out, float64_t[::1] fac_out, bint factors=True):
    """Unnormalized beliefs in energy space (lower is more probable).

    var_out (S,): U_v(k) + sum of the incoming f2v at every global state.
    fac_out (table size,): T_f(x) + sum_e v2f_e(x_e) at every table entry, laid
    out by fac_table_offset (left untouched when ``factors`` is False); T_f is
    read from the shared tables at fac_table[f].
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
                        idx = k * st + n
                        fac_out[fac_table_offset[f] + idx] = (
                            tables[fac_table[f] + idx] + v2f[edge_msg_offset[e0] + k]
                            + v2f[edge_msg_offset[e0 + 1] + n])
                continue
            for n in range(N):
                fac_out[fac_table_offset[f] + n] = tables[fac_table[f] + n]
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
           const float64_t[::1] potts, const float64_t[::1] unary, const intp_t[::1] order,
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
                               tables, table_min, potts, unary, v2f, f2v, 1.0, True)
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


# ---------------------------------------------------------------------- residual schedule
# Residual belief propagation (Elidan, McGraw and Koller 2006): every f2v message
# has a candidate, computed from the current v2f (damped against the stored
# message and normalized, as a flooding update would be), and a residual, the
# largest change storing it would make. A max-heap of residuals picks the
# message to store next; storing f2v on edge (f, v) changes v's v2f on its other
# edges, so only the candidates of the factors there are recomputed. The same
# contraction serves both semirings (_fac_to_var). It stops when the largest
# residual is at most tol or after max_iter * E stored messages (E edges).

cdef inline void _heap_up(intp_t* heap, intp_t* pos, const double* key, intp_t i) noexcept nogil:
    cdef intp_t e = heap[i], p
    cdef double k = key[e]
    while i > 0:
        p = (i - 1) >> 1
        if key[heap[p]] >= k:
            break
        heap[i] = heap[p]
        pos[heap[i]] = i
        i = p
    heap[i] = e
    pos[e] = i


cdef inline void _heap_down(intp_t* heap, intp_t* pos, const double* key, intp_t n,
                            intp_t i) noexcept nogil:
    cdef intp_t e = heap[i], c
    cdef double k = key[e]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and key[heap[c + 1]] > key[heap[c]]:
            c += 1
        if key[heap[c]] <= k:
            break
        heap[i] = heap[c]
        pos[heap[i]] = i
        i = c
    heap[i] = e
    pos[e] = i


cdef inline void _heap_set(intp_t* heap, intp_t* pos, double* key, intp_t n, intp_t e,
                           double value) noexcept nogil:
    cdef double old = key[e]
    key[e] = value
    if value > old:
        _heap_up(heap, pos, key, pos[e])
    elif value < old:
        _heap_down(heap, pos, key, n, pos[e])


cdef double _candidate(Graph* g, intp_t f, intp_t t, double* q, double* out, intp_t* cnt,
                       double* cand, double damping) noexcept nogil:
    """Factor f's new f2v on its t-th edge from the current v2f, damped against the stored
    f2v and normalized, into cand (the edge's slots); returns the change it would make."""
    cdef intp_t e = g.fac_edge_offset[f] + t
    cdef intp_t o = g.edge_msg_offset[e]
    cdef intp_t K = g.edge_msg_offset[e + 1] - o
    cdef const double* old = g.f2v + o
    cdef double* c = cand + o
    cdef double keep = 1.0 - damping, x, lo = INFINITY, d, delta = 0.0
    cdef intp_t k
    _fac_to_var(g, f, t, q, out, cnt, False)
    for k in range(K):
        x = out[k]
        if damping > 0.0:
            x = keep * x + damping * old[k]
        c[k] = x
        lo = x if x < lo else lo
    if lo == INFINITY:
        lo = 0.0                       # impossible message: all +inf, stored as is
    for k in range(K):
        x = c[k] - lo
        c[k] = x
        d = 0.0 if x == old[k] else fabs(x - old[k])
        delta = d if d > delta else delta
    return delta


def run_residual(const intp_t[::1] var_state_offset, const intp_t[::1] var_edge_offset,
                 const intp_t[::1] var_edges, const intp_t[::1] fac_edge_offset,
                 const intp_t[::1] edge_var, const intp_t[::1] edge_fac,
                 const intp_t[::1] edge_stride, const intp_t[::1] edge_msg_offset,
                 const intp_t[::1] fac_table, const float64_t[::1] tables,
                 const float64_t[::1] exp_tables, const float64_t[::1] table_min,
                 const float64_t[::1] potts, const float64_t[::1] unary,
                 float64_t[::1] v2f, float64_t[::1] f2v, float64_t[::1] cand,
                 float64_t[::1] resid, intp_t[::1] heap, intp_t[::1] pos,
                 double beta, bint min_sum, intp_t max_iter, double damping, double tol,
                 intp_t q_size, float64_t[::1] work, intp_t[::1] iwork):
    """Residual belief propagation in place on v2f and f2v (both consistent on return).

    The arrays are those of :func:`run`; edge_fac (E,) is each edge's factor.
    cand (M,): scratch for the candidate messages; resid (E,), heap (E,), pos (E,):
    the priority queue; work: q_size + 3 max_card + 1 doubles (q_size as in :func:`run`);
    iwork: 2 max_arity + 1.

    Returns
    -------
    (iterations, delta) : (int, float)
        iterations: stored messages / E, rounded up; delta: the largest residual
        left (the run converged when it is <= tol).
    """
    cdef Graph g = _make_graph(var_state_offset, var_edge_offset, var_edges, fac_edge_offset,
                               edge_var, edge_stride, edge_msg_offset, fac_table, tables,
                               exp_tables, table_min, potts, unary, v2f, f2v, beta, min_sum)
    cdef intp_t n_facs = g.n_facs
    cdef intp_t E = fac_edge_offset[n_facs] if n_facs else 0
    cdef intp_t f, t, e, e1, e2, i, k, v, f1, o, K, updates = 0, limit
    cdef double* q = &work[0]
    cdef double* out = q + q_size
    cdef intp_t* cnt = &iwork[0]
    cdef intp_t* hp = &heap[0]
    cdef intp_t* ps = &pos[0]
    cdef double* key = &resid[0]
    cdef double* cd = &cand[0]
    if E == 0:
        return 0, 0.0
    limit = max_iter * E
    with nogil:
        for e in range(E):
            _var_to_fac(&g, e)
        for f in range(n_facs):
            for t in range(fac_edge_offset[f + 1] - fac_edge_offset[f]):
                key[fac_edge_offset[f] + t] = _candidate(&g, f, t, q, out, cnt, cd, damping)
        for e in range(E):
            hp[e] = e
            ps[e] = e
        for i in range(E // 2 - 1, -1, -1):
            _heap_down(hp, ps, key, E, i)
        while updates < limit and key[hp[0]] > tol:
            e = hp[0]
            o = edge_msg_offset[e]
            for k in range(edge_msg_offset[e + 1] - o):
                g.f2v[o + k] = cd[o + k]
            _heap_set(hp, ps, key, E, e, 0.0)
            updates += 1
            # v's other v2f changed: refresh them and their factors' other candidates
            v = edge_var[e]
            for i in range(var_edge_offset[v], var_edge_offset[v + 1]):
                e1 = var_edges[i]
                if e1 == e:
                    continue
                _var_to_fac(&g, e1)
                f1 = edge_fac[e1]
                for e2 in range(fac_edge_offset[f1], fac_edge_offset[f1 + 1]):
                    if e2 != e1:
                        _heap_set(hp, ps, key, E, e2,
                                  _candidate(&g, f1, e2 - fac_edge_offset[f1], q, out, cnt, cd,
                                             damping))
    return max(1, (updates + E - 1) // E), key[hp[0]]


# ---------------------------------------------------------------------- TRW-S
# Sequential tree-reweighted message passing (Kolmogorov 2006) for min-sum on
# pairwise graphs. Variables are visited in index order (forward) and back;
# the monotonic chains of that order cover every factor once, and variable s
# lies on n_s = max(#lower neighbours, #higher neighbours) of them. With
# theta_s = U_s + sum of s's incoming messages, s sends to each later
# (forward pass) or earlier (backward pass) neighbour t through factor f
#
#     M_{s->t}(j) = min_k [ theta_s(k) / n_s - M_{t->s}(k) + T_f(k, j) ]   (- its minimum)
#
# (M_{t->s} is the f2v slot of s's edge of f, M_{s->t} that of t's). A state
# with theta_s = +inf is forbidden for good (every message into it proved it),
# so its term is +inf rather than inf - inf. Lower bound: the energy splits
# into one term per chain (theta_s / n_s of each variable on it, and
# T_f - M_{s->t} - M_{t->s} of each factor), and at the end of a pass each
# chain's minimum is the sum of the minima subtracted from the messages along
# it plus theta_end / n_end at its last variable, so
#
#     bound = sum of the minima subtracted in the pass
#             + sum_s (n_s - #later neighbours of s in the pass) / n_s * min theta_s
#
# which never exceeds min E. Decoding (during each forward pass): s takes the
# argmin of U_s + sum_{t < s} T_f(x_t, .) + sum_{t > s} M_{t->s}; the best
# assignment over the passes is kept.

cdef double _trws_theta(Graph* g, intp_t v, double* theta) noexcept nogil:
    """theta (K_v,) = U_v + every incoming f2v; returns its minimum."""
    cdef intp_t s0 = g.var_state_offset[v]
    cdef intp_t K = g.var_state_offset[v + 1] - s0
    cdef intp_t i, k
    cdef const double* inc
    cdef double lo = INFINITY
    for k in range(K):
        theta[k] = g.unary[s0 + k]
    for i in range(g.var_edge_offset[v], g.var_edge_offset[v + 1]):
        inc = g.f2v + g.edge_msg_offset[g.var_edges[i]]
        for k in range(K):
            theta[k] += inc[k]
    for k in range(K):
        lo = theta[k] if theta[k] < lo else lo
    return lo


cdef double _trws_send(Graph* g, intp_t e, intp_t f, const double* theta, double gamma,
                       double* pre, double* out, double* change) noexcept nogil:
    """TRW-S message from edge e's variable through pairwise factor f into the f2v of f's
    other edge, normalized; returns the minimum subtracted (+inf: every state forbidden)
    and raises *change to the largest change of the stored message."""
    cdef intp_t e0 = g.fac_edge_offset[f]
    cdef intp_t t = e - e0
    cdef intp_t eo = e0 + 1 - t
    cdef intp_t Ks = g.edge_msg_offset[e + 1] - g.edge_msg_offset[e]
    cdef intp_t Ko = g.edge_msg_offset[eo + 1] - g.edge_msg_offset[eo]
    cdef const double* inc = g.f2v + g.edge_msg_offset[e]
    cdef double* dst = g.f2v + g.edge_msg_offset[eo]
    cdef const double* T
    cdef intp_t i, j, k
    cdef double x, lo, c, agg, d
    for k in range(Ks):
        pre[k] = INFINITY if theta[k] == INFINITY else gamma * theta[k] - inc[k]
    _pair_min_message(g, f, 1 - t, pre, out)
    lo = INFINITY
    for k in range(Ko):
        lo = out[k] if out[k] < lo else lo
    for k in range(Ko):
        x = out[k] - lo if lo != INFINITY else INFINITY
        d = 0.0 if x == dst[k] else fabs(x - dst[k])
        change[0] = d if d > change[0] else change[0]
        dst[k] = x
    return lo


cdef double _trws_decode(Graph* g, const intp_t* edge_fac, intp_t s, intp_t* x,
                         double* dec) noexcept nogil:
    """x[s] = argmin_k U_s(k) + sum_{t < s} T_f(x_t, k) + sum_{t > s} M_{t->s}(k) (lowest k
    on ties; the argmin of U_s when every k is +inf)."""
    cdef intp_t s0 = g.var_state_offset[s]
    cdef intp_t K = g.var_state_offset[s + 1] - s0
    cdef intp_t i, e, f, e0, eo, o, k, K1, best = 0
    cdef const double* T
    cdef const double* inc
    cdef double lo = INFINITY
    for k in range(K):
        dec[k] = g.unary[s0 + k]
    for i in range(g.var_edge_offset[s], g.var_edge_offset[s + 1]):
        e = g.var_edges[i]
        f = edge_fac[e]
        e0 = g.fac_edge_offset[f]
        eo = e0 + 1 - (e - e0)
        o = g.edge_var[eo]
        if o > s:
            inc = g.f2v + g.edge_msg_offset[e]
            for k in range(K):
                dec[k] += inc[k]
        else:
            T = g.tables + g.fac_table[f]
            K1 = g.edge_msg_offset[e0 + 2] - g.edge_msg_offset[e0 + 1]
            if e == e0:
                for k in range(K):
                    dec[k] += T[k * K1 + x[o]]
            else:
                for k in range(K):
                    dec[k] += T[x[o] * K1 + k]
    for k in range(K):
        if dec[k] < lo:
            lo = dec[k]
            best = k
    if lo == INFINITY:
        for k in range(K):
            if g.unary[s0 + k] < lo:
                lo = g.unary[s0 + k]
                best = k
    x[s] = best
    return lo


cdef double _pairwise_energy(Graph* g, const intp_t* x) noexcept nogil:
    """E(x) = sum_v U_v(x_v) + sum_f T_f(x_a, x_b) (pairwise graphs)."""
    cdef double total = 0.0
    cdef intp_t v, f, e0, K1
    for v in range(g.n_vars):
        total += g.unary[g.var_state_offset[v] + x[v]]
    for f in range(g.n_facs):
        e0 = g.fac_edge_offset[f]
        K1 = g.edge_msg_offset[e0 + 2] - g.edge_msg_offset[e0 + 1]
        total += g.tables[g.fac_table[f] + x[g.edge_var[e0]] * K1 + x[g.edge_var[e0 + 1]]]
    return total


def run_trws(const intp_t[::1] var_state_offset, const intp_t[::1] var_edge_offset,
             const intp_t[::1] var_edges, const intp_t[::1] fac_edge_offset,
             const intp_t[::1] edge_var, const intp_t[::1] edge_fac,
             const intp_t[::1] edge_stride, const intp_t[::1] edge_msg_offset,
             const intp_t[::1] fac_table, const float64_t[::1] tables,
             const float64_t[::1] table_min, const float64_t[::1] potts,
             const float64_t[::1] unary, float64_t[::1] v2f, float64_t[::1] f2v,
             intp_t max_iter, double tol, intp_t max_card, intp_t[::1] states_out,
             float64_t[::1] trace_energy, float64_t[::1] trace_bound,
             float64_t[::1] work, intp_t[::1] iwork):
    """TRW-S on a pairwise graph (every factor of arity 2), in place on f2v.

    The arrays are those of :func:`run`; edge_fac (E,) is each edge's factor.
    Runs forward + backward passes until the largest message change is <= tol,
    the best energy is within tol (relative) of the bound, or max_iter passes.

    Parameters
    ----------
    states_out : int64 (V,)
        The lowest-energy assignment decoded over the passes.
    trace_energy : float64 (n_trace + 1,)
        Energy of the assignment decoded in each of the first n_trace forward
        passes, and in a last decoding after the final backward pass when the run
        ends within them (entries past the run: +inf). Any n_trace >= 0: the
        caller need not allocate a slot per allowed pass.
    trace_bound : float64 (n_trace,)
        The best lower bound after each of the first n_trace passes (entries past
        the run: -inf).
    work : float64 (3 V + 4 max_card + 4,), iwork : int64 (V,)
        Scratch (max_card: the largest cardinality).

    Returns
    -------
    (iterations, delta, energy, bound) : (int, float, float, float)
        energy of states_out (with the unary energies given, e.g. the evidence
        mask) and the best lower bound on min E; v2f is set from the final f2v.
    """
    cdef Graph g = _make_graph(var_state_offset, var_edge_offset, var_edges, fac_edge_offset,
                               edge_var, edge_stride, edge_msg_offset, fac_table, tables,
                               tables, table_min, potts, unary, v2f, f2v, 1.0, True)
    cdef intp_t V = g.n_vars
    cdef double* gamma = &work[0]
    cdef double* w_fwd = gamma + V
    cdef double* w_bwd = w_fwd + V
    cdef double* theta = w_bwd + V
    cdef double* pre = theta + max_card + 1
    cdef double* out = pre + max_card + 1
    cdef double* dec = out + max_card + 1
    cdef intp_t* x = &iwork[0]
    cdef intp_t* best_x = &states_out[0]
    cdef const intp_t* ef = &edge_fac[0]
    cdef intp_t s, i, j, e, f, e0, o, n_lo, n_hi, n, it = 0, step
    cdef intp_t n_trace = min(trace_bound.shape[0], trace_energy.shape[0] - 1)
    cdef double lo, bsum, change = INFINITY, energy, best = INFINITY, bound = -INFINITY
    with nogil:
        for s in range(V):
            n_lo = 0
            n_hi = 0
            for i in range(var_edge_offset[s], var_edge_offset[s + 1]):
                e = var_edges[i]
                e0 = fac_edge_offset[ef[e]]
                o = edge_var[e0 + 1 - (e - e0)]
                if o < s:
                    n_lo += 1
                else:
                    n_hi += 1
            n = n_lo if n_lo > n_hi else n_hi
            n = n if n > 0 else 1
            gamma[s] = 1.0 / n
            w_fwd[s] = <double> (n - n_hi) / n        # chains ending at s, forward
            w_bwd[s] = <double> (n - n_lo) / n        # and backward
        while it < max_iter:
            change = 0.0
            for step in range(2):
                bsum = 0.0
                for i in range(V):
                    s = i if step == 0 else V - 1 - i
                    lo = _trws_theta(&g, s, theta)
                    if step == 0:
                        _trws_decode(&g, ef, s, x, dec)
                    if (w_fwd[s] if step == 0 else w_bwd[s]) > 0.0:
                        bsum += (w_fwd[s] if step == 0 else w_bwd[s]) * lo
                    for j in range(var_edge_offset[s], var_edge_offset[s + 1]):
                        e = var_edges[j]
                        f = ef[e]
                        e0 = fac_edge_offset[f]
                        o = edge_var[e0 + 1 - (e - e0)]
                        if (o > s) == (step == 0):
                            bsum += _trws_send(&g, e, f, theta, gamma[s], pre, out, &change)
                if step == 0:
                    energy = _pairwise_energy(&g, x)
                    if it < n_trace:
                        trace_energy[it] = energy
                    if energy < best:
                        best = energy
                        for s in range(V):
                            best_x[s] = x[s]
                bound = bsum if bsum > bound else bound
            if it < n_trace:
                trace_bound[it] = bound
            it += 1
            # converged: messages settled, or the best energy is proved (near-)optimal,
            # or the bound proves that no assignment has finite energy
            if change <= tol or bound == INFINITY or best - bound <= tol * max(1.0, fabs(best)):
                break
        # a last decoding with the final backward messages
        for s in range(V):
            _trws_decode(&g, ef, s, x, dec)
        energy = _pairwise_energy(&g, x)
        if it <= n_trace:
            trace_energy[it] = energy
        if energy < best:
            best = energy
            for s in range(V):
                best_x[s] = x[s]
        for s in range(V):
            _var_update_flood(&g, s, theta)
    return it, change, best, bound
