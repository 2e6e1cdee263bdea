# Markov chain Monte Carlo on a compiled factor graph: blocked Gibbs and single-site
# Metropolis-Hastings, over the flat arrays of factorebm/compiled.py.
#
# Target: P(x) = exp(-beta E(x)) / Z with E(x) = sum_v U_v(x_v) + sum_f T_f(x_f) (LeCun et al.
# 2006, section 1.3); +inf energies are forbidden states. The conditional energy of variable v
# in state k, the others fixed, is
#
#     e_v(k) = U_v(k) + sum_{f owning v} T_f(x_f with x_v = k),
#
# one table entry per factor, found through the factor's row-major strides.
#
# Gibbs (Geman and Geman 1984) draws x_v from exp(-beta e_v) / sum: the weights are products of
# precomputed exponentials, exp(-beta (U_v(k) - min U_v)) times one entry per factor of
# exp(-beta (T_f - min T_f)) (tables are exponentiated once per call, as for sum-product
# belief propagation), so a site update takes no exp; one uniform picks the state by inverse
# CDF. When the weights' sum falls below _TINY (the product underflowed, although the
# energies are finite) the site is redone exactly in energy space: exp(-beta (e - min e)).
# +inf entries give weight 0 exactly, so forbidden states are never drawn.
# Metropolis-Hastings proposes one of the K - 1 other states uniformly (a symmetric proposal)
# and accepts with probability min(1, exp(-beta (e_v(y) - e_v(x_v)))).
#
# Blocking. The variables are coloured so that no two variables of one colour share a
# factor; given the other colours, the variables of one colour are independent, so a colour
# is updated in parallel (OpenMP prange), colours in a fixed order (systematic scan). A sweep
# is one pass over the colours. Parallel over the variables of a colour (by_chain=0), or over
# chains (by_chain=1, each thread runs whole sweeps of its chains): both give the same
# numbers, since a site's update reads only other colours.
#
# Random numbers are counter-based: the uniform of (chain c, sweep s, variable v, draw j) is
# SplitMix64's output function (Steele, Lea and Flood 2014) at state
# key_c + (((s V + v) 2 + j) + 1) * golden, where key_c is a 64-bit key per chain.
# No generator state is shared or carried: samples do not depend on the number of threads,
# on the parallel layout, or on how many calls the sweeps were split into (s is global).
#
# Layout: var_state_offset, fac_edge_offset, edge_var, edge_stride, edge_fac, fac_table as in
# compiled.py (fac_table[f]: offset of f's table in the shared tables). The tables passed
# here are compiled.py's shared tables followed by transposed copies (factorebm/sampling.py
# builds them), so that every pairwise table can be read with the updated variable's states
# contiguous: slot j of variable v (pair_slot, CSR by pair_offset) holds (other variable o,
# offset of f's table as a (K_o, K_v) matrix) and reads the entry offset + x_o K_v + k -- the
# shared table itself when v is second in f's scope, a transposed copy when v is first.
# Factors of arity >= 3 are walked through the edges high_edge (CSR by high_offset): the
# other edges' strides give the row.
from cython.parallel cimport prange, parallel, threadid
from libc.math cimport exp, INFINITY
from libc.stdint cimport uint64_t, int32_t

from _typedefs cimport float64_t, intp_t

cdef extern from "_sample_site.h":
    void smp_pair_weights(intp_t K, const double* eu, const int32_t* slot, intp_t n_slots,
                          const double* et, const intp_t* x, double* w) noexcept nogil
    intp_t smp_inverse_cdf(const double* w, intp_t K, double total, double u) noexcept nogil
    intp_t smp_draw_pairwise(intp_t K, const double* eu, const int32_t* slot, intp_t n_slots,
                             const double* et, const intp_t* x, double u,
                             double tiny) noexcept nogil
    double smp_uniform(uint64_t key, uint64_t counter) noexcept nogil
    intp_t smp_sweep_pairwise(intp_t K, const intp_t* order, intp_t lo, intp_t hi,
                              const intp_t* pos_offset, intp_t pos_degree,
                              const int32_t* pos_slot,
                              const double* pos_eu, const double* et, intp_t* x,
                              uint64_t key, uint64_t ctr, double tiny) noexcept nogil

# below this weight sum the product of exponentials may have lost precision (or underflowed
# although the energies are finite): the site is redone in energy space
cdef double _TINY = 1e-250
# variables with at most this many states keep their weights in a local array
DEF _SMALL_K = 16
# sites per unit of parallel work within a colour
cdef intp_t _CHUNK = 1024


cdef struct Model:
    intp_t n_vars
    const intp_t* var_state_offset   # (V+1,)
    const float64_t* unary           # (S,) unary energies
    const float64_t* exp_unary       # (S,) exp(-beta (U_v - min U_v))
    const intp_t* pair_offset        # (V+1,) pairwise slots of v
    const int32_t* pair_slot         # (P, 2) other variable, offset of the oriented table
    const intp_t* high_offset        # (V+1,) slots of v in factors of arity >= 3
    const intp_t* high_edge          # (H,) the edge of v in that factor
    const intp_t* fac_edge_offset    # (F+1,)
    const intp_t* edge_var           # (E,)
    const intp_t* edge_stride        # (E,)
    const intp_t* edge_fac           # (E,)
    const intp_t* fac_table          # (F,) offset of f's table in tables / exp_tables
    const float64_t* tables          # energy tables: the shared ones, then the transposed
                                     # copies that orient pairwise tables
    const float64_t* exp_tables      # exp(-beta (T_f - min T_f)), same layout
    double beta
    intp_t uniform_k                 # K when every variable has K (2..8) states and every
                                     # factor is pairwise (the specialized sweeps), else 0
    const intp_t* pos_offset         # (n_order+1,) the slots of order[i], with uniform_k:
    intp_t pos_degree                # > 0: pos_offset unused, position i has this many slots
    const int32_t* pos_slot          # (P', 2) pair_slot rows in update order
    const float64_t* pos_exp_unary   # (n_order K,) exp_unary rows in update order


cdef inline intp_t _high_row(const Model* m, const intp_t* x, intp_t e) noexcept nogil:
    """Offset of the entry (x_v = 0, the others at x) of the factor of edge e (arity >= 3)."""
    cdef intp_t f = m.edge_fac[e], e2, row = m.fac_table[f]
    for e2 in range(m.fac_edge_offset[f], m.fac_edge_offset[f + 1]):
        if e2 != e:
            row += m.edge_stride[e2] * x[m.edge_var[e2]]
    return row


cdef inline double _cond_energy(const Model* m, const intp_t* x, intp_t v, intp_t k) noexcept nogil:
    """e_v(k): v's unary energy plus one entry of each of its factors, the others at x."""
    cdef intp_t lo = m.var_state_offset[v], K = m.var_state_offset[v + 1] - lo, j
    cdef double e = m.unary[lo + k]
    for j in range(m.pair_offset[v], m.pair_offset[v + 1]):
        e += m.tables[m.pair_slot[2 * j + 1] + x[m.pair_slot[2 * j]] * K + k]
    for j in range(m.high_offset[v], m.high_offset[v + 1]):
        e += m.tables[_high_row(m, x, m.high_edge[j]) + k * m.edge_stride[m.high_edge[j]]]
    return e


cdef double _energy_weights(const Model* m, const intp_t* x, intp_t v, double* w) noexcept nogil:
    """w[k] = exp(-beta (e_v(k) - min e_v)) computed in energy space; returns their sum
    (0 when every state is forbidden)."""
    cdef intp_t lo = m.var_state_offset[v], K = m.var_state_offset[v + 1] - lo, k
    cdef double emin = INFINITY, total = 0.0
    for k in range(K):
        w[k] = _cond_energy(m, x, v, k)
        if w[k] < emin:
            emin = w[k]
    if emin == INFINITY:
        return 0.0
    for k in range(K):
        w[k] = exp(-m.beta * (w[k] - emin)) if w[k] != INFINITY else 0.0
        total += w[k]
    return total


cdef inline double _exp_weights(const Model* m, const intp_t* x, intp_t v, intp_t lo, intp_t K,
                                double* w) noexcept nogil:
    """w[k] = exp(-beta (e_v(k) - shifts)) as a product of precomputed exponentials; their sum."""
    cdef intp_t j, k, row, step
    cdef double total = 0.0
    smp_pair_weights(K, m.exp_unary + lo, m.pair_slot + 2 * m.pair_offset[v],
                     m.pair_offset[v + 1] - m.pair_offset[v], m.exp_tables, x, w)
    for j in range(m.high_offset[v], m.high_offset[v + 1]):
        row = _high_row(m, x, m.high_edge[j])
        step = m.edge_stride[m.high_edge[j]]
        for k in range(K):
            w[k] *= m.exp_tables[row + k * step]
    for k in range(K):
        total += w[k]
    return total


cdef inline void _gibbs_site(const Model* m, intp_t* x, intp_t v, double u,
                             double* scratch) noexcept nogil:
    """Draw x_v from its conditional distribution with the uniform u (inverse CDF)."""
    cdef intp_t lo = m.var_state_offset[v], K = m.var_state_offset[v + 1] - lo, sel = -2
    cdef double total
    # the weights in a local array when K is small: the compiler then knows that no table
    # pointer aliases them
    cdef double local[_SMALL_K]
    if m.high_offset[v] == m.high_offset[v + 1]:
        sel = smp_draw_pairwise(K, m.exp_unary + lo, m.pair_slot + 2 * m.pair_offset[v],
                                m.pair_offset[v + 1] - m.pair_offset[v], m.exp_tables, x, u,
                                _TINY)
        if sel >= 0:
            x[v] = sel
            return
    if sel == -1:
        pass                # the products underflowed: energy space below
    elif K <= _SMALL_K:
        total = _exp_weights(m, x, v, lo, K, local)
        if total >= _TINY:
            x[v] = smp_inverse_cdf(local, K, total, u)
            return
    else:
        total = _exp_weights(m, x, v, lo, K, scratch)
        if total >= _TINY:
            x[v] = smp_inverse_cdf(scratch, K, total, u)
            return
    total = _energy_weights(m, x, v, scratch)
    if total > 0.0:         # else every state is forbidden: x has infinite energy, keep x_v
        x[v] = smp_inverse_cdf(scratch, K, total, u)


cdef inline intp_t _mh_site(const Model* m, intp_t* x, intp_t v, double u_propose,
                            double u_accept) noexcept nogil:
    """One Metropolis-Hastings step at v (uniform proposal over the other states); 1 if accepted."""
    cdef intp_t K = m.var_state_offset[v + 1] - m.var_state_offset[v]
    cdef intp_t cur = x[v], y
    cdef double de
    if K < 2:
        return 0
    y = <intp_t>(u_propose * (K - 1))
    y = K - 2 if y > K - 2 else y
    y = y + 1 if y >= cur else y
    de = _cond_energy(m, x, v, y) - _cond_energy(m, x, v, cur)
    # de = +inf (forbidden proposal) gives exp = 0: rejected; NaN (x itself forbidden and y
    # too) fails both tests: rejected
    if de <= 0.0 or u_accept < exp(-m.beta * de):
        x[v] = y
        return 1
    return 0


cdef intp_t _sweep_range(const Model* m, intp_t* x, const intp_t* order, intp_t lo, intp_t hi,
                        uint64_t key, uint64_t sweep, bint mh, double* w) noexcept nogil:
    """Update the sites order[lo:hi] of chain x at global sweep number ``sweep``; returns the
    accepted Metropolis-Hastings moves (0 for Gibbs)."""
    cdef intp_t i, v, n_acc = 0
    cdef uint64_t ctr = sweep * <uint64_t>m.n_vars
    if mh:
        for i in range(lo, hi):
            v = order[i]
            n_acc += _mh_site(m, x, v, smp_uniform(key, 2 * (ctr + v)),
                              smp_uniform(key, 2 * (ctr + v) + 1))
    elif m.uniform_k:
        i = lo
        while i < hi:
            i = smp_sweep_pairwise(m.uniform_k, order, i, hi, m.pos_offset, m.pos_degree,
                                   m.pos_slot, m.pos_exp_unary, m.exp_tables, x, key, 2 * ctr,
                                   _TINY)
            if i < hi:      # the weights of site i underflowed: redo it exactly
                v = order[i]
                _gibbs_site(m, x, v, smp_uniform(key, 2 * (ctr + v)), w)
                i += 1
    else:
        for i in range(lo, hi):
            v = order[i]
            _gibbs_site(m, x, v, smp_uniform(key, 2 * (ctr + v)), w)
    return n_acc


cdef intp_t _chain_sweeps(const Model* m, intp_t* x, const intp_t* order, intp_t n_order,
                          uint64_t key, uint64_t sweep0, intp_t n_burn, intp_t n_record,
                          intp_t thin, intp_t* out, bint mh, double* w) noexcept nogil:
    """Every sweep of one chain, serially; the visited states of the recorded sweeps go to out
    (n_record, V). Returns the accepted updates."""
    cdef intp_t s, r, v, n_acc = 0, V = m.n_vars
    cdef uint64_t sweep = sweep0
    for s in range(n_burn):
        n_acc += _sweep_range(m, x, order, 0, n_order, key, sweep, mh, w)
        sweep += 1
    for r in range(n_record):
        for s in range(thin):
            n_acc += _sweep_range(m, x, order, 0, n_order, key, sweep, mh, w)
            sweep += 1
        for v in range(V):
            out[r * V + v] = x[v]
    return n_acc


def run(const intp_t[::1] var_state_offset, const float64_t[::1] unary,
        const float64_t[::1] exp_unary, const intp_t[::1] pair_offset,
        const int32_t[:, ::1] pair_slot, const intp_t[::1] high_offset,
        const intp_t[::1] high_edge, const intp_t[::1] fac_edge_offset,
        const intp_t[::1] edge_var, const intp_t[::1] edge_stride, const intp_t[::1] edge_fac,
        const intp_t[::1] fac_table, const float64_t[::1] tables,
        const float64_t[::1] exp_tables, const intp_t[::1] order,
        const intp_t[::1] colour_offset, intp_t[:, ::1] states, const uint64_t[::1] keys,
        uint64_t sweep0, intp_t n_burn, intp_t n_record, intp_t thin, intp_t[:, :, ::1] out,
        double beta, bint mh, intp_t uniform_k, const intp_t[::1] pos_offset,
        intp_t pos_degree, const int32_t[:, ::1] pos_slot, const float64_t[::1] pos_exp_unary, int n_threads,
        bint by_chain, float64_t[:, ::1] scratch, intp_t[:, ::1] accepted):
    """Run ``n_burn + n_record * thin`` sweeps on every chain of ``states`` (in place).

    Parameters
    ----------
    states : int64 (n_chains, V)
        Current state of each chain; the variables not in ``order`` are left as they are.
    keys : uint64 (n_chains,)
        Random stream of each chain.
    sweep0 : int
        Global number of the first sweep (the random counters continue across calls).
    order : int64 (n_free,)
        The variables to update, colour by colour: colour c is
        ``order[colour_offset[c]:colour_offset[c+1]]``.
    out : int64 (n_chains, n_record, V)
        The state after every ``thin``-th sweep past the burn-in (not touched when
        n_record == 0).
    mh : bool
        Metropolis-Hastings instead of Gibbs.
    uniform_k : int
        K when every variable has K states, 2 <= K <= 8, and no factor has arity >= 3 (the
        specialized Gibbs sweeps of _sample_site.h), else 0.
    pos_offset, pos_degree, pos_slot, pos_exp_unary
        With uniform_k: the slots and the unary weights of the variable ``order[i]`` at
        position i (read in update order); else one dummy entry. The slots of position i are
        ``pos_slot[pos_offset[i]:pos_offset[i + 1]]``, or with pos_degree > 0
        ``pos_slot[pos_degree * i:pos_degree * (i + 1)]`` (padded with slots that read ones).
    by_chain : bool
        Parallel over chains instead of over the variables of a colour.
    scratch : float64 (n_threads, >= max cardinality)
    accepted : int64 (n_threads, >= 1)
        Accepted updates are added to column 0 of the running thread's row.

    Every array is validated (and empty ones padded to one element) by the caller.
    """
    cdef Model m
    cdef intp_t n_chains = states.shape[0], V = states.shape[1]
    cdef intp_t n_colours = colour_offset.shape[0] - 1
    cdef intp_t c, s, col, i, v, r, tid, lo, n_chunks, n_sweeps
    cdef uint64_t sweep
    cdef double* w
    cdef intp_t* acc
    m.n_vars = V
    m.var_state_offset = &var_state_offset[0]
    m.unary = &unary[0]
    m.exp_unary = &exp_unary[0]
    m.pair_offset = &pair_offset[0]
    m.pair_slot = &pair_slot[0, 0]
    m.high_offset = &high_offset[0]
    m.high_edge = &high_edge[0]
    m.fac_edge_offset = &fac_edge_offset[0]
    m.edge_var = &edge_var[0]
    m.edge_stride = &edge_stride[0]
    m.edge_fac = &edge_fac[0]
    m.fac_table = &fac_table[0]
    m.tables = &tables[0]
    m.exp_tables = &exp_tables[0]
    m.beta = beta
    m.uniform_k = uniform_k
    m.pos_offset = &pos_offset[0]
    m.pos_degree = pos_degree
    m.pos_slot = &pos_slot[0, 0]
    m.pos_exp_unary = &pos_exp_unary[0]
    if n_chains == 0 or V == 0:
        return
    if by_chain:
        for c in prange(n_chains, nogil=True, num_threads=n_threads, schedule="static"):
            tid = threadid()
            accepted[tid, 0] += _chain_sweeps(
                &m, &states[c, 0], &order[0], colour_offset[n_colours], keys[c], sweep0,
                n_burn, n_record, thin, &out[c, 0, 0], mh, &scratch[tid, 0])
        return
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        w = &scratch[tid, 0]
        acc = &accepted[tid, 0]
        for c in range(n_chains):
            sweep = sweep0
            for r in range(-1, n_record):
                # r = -1: the burn-in sweeps; then thin sweeps before each record
                n_sweeps = n_burn if r < 0 else thin
                for s in range(n_sweeps):
                    for col in range(n_colours):
                        lo = colour_offset[col]
                        n_chunks = (colour_offset[col + 1] - lo + _CHUNK - 1) // _CHUNK
                        for i in prange(n_chunks, schedule="static"):
                            acc[0] += _sweep_range(
                                &m, &states[c, 0], &order[0], lo + i * _CHUNK,
                                min(lo + (i + 1) * _CHUNK, colour_offset[col + 1]), keys[c],
                                sweep, mh, w)
                    sweep = sweep + 1
                if r >= 0:
                    for v in prange(V, schedule="static"):
                        out[c, r, v] = states[c, v]


def energies(const intp_t[::1] var_state_offset, const float64_t[::1] unary,
             const intp_t[::1] fac_edge_offset, const intp_t[::1] edge_var,
             const intp_t[::1] edge_stride, const intp_t[::1] fac_table,
             const float64_t[::1] tables, const intp_t[:, ::1] states, float64_t[::1] out,
             int n_threads):
    """out[i] = E(states[i]): the unary energies plus one entry of every factor's table."""
    cdef intp_t n = states.shape[0], V = states.shape[1], F = fac_edge_offset.shape[0] - 1
    cdef intp_t i, v, f, e, idx
    cdef double total
    for i in prange(n, nogil=True, num_threads=n_threads, schedule="static"):
        total = 0.0
        for v in range(V):
            total = total + unary[var_state_offset[v] + states[i, v]]
        for f in range(F):
            idx = fac_table[f]
            for e in range(fac_edge_offset[f], fac_edge_offset[f + 1]):
                idx = idx + edge_stride[e] * states[i, edge_var[e]]
            total = total + tables[idx]
        out[i] = total


def count_states(const intp_t[::1] var_state_offset, const intp_t[::1] fac_edge_offset,
                 const intp_t[::1] edge_var, const intp_t[::1] edge_stride,
                 const intp_t[::1] fac_table_offset, const intp_t[:, ::1] states, double weight,
                 float64_t[::1] var_out, float64_t[::1] fac_out, bint factors, int n_threads):
    """Add ``weight`` per row of states to the indicator of each variable's state
    (var_out (S,)) and, with ``factors``, of each factor's table entry (fac_out (T,), the
    per-factor layout of compiled ``tables``). Parallel over variables and factors: each
    writes only its own slots."""
    cdef intp_t n = states.shape[0], V = states.shape[1], F = fac_edge_offset.shape[0] - 1
    cdef intp_t i, v, f, e, idx
    for v in prange(V, nogil=True, num_threads=n_threads, schedule="static"):
        for i in range(n):
            var_out[var_state_offset[v] + states[i, v]] += weight
    if not factors:
        return
    for f in prange(F, nogil=True, num_threads=n_threads, schedule="static"):
        for i in range(n):
            idx = fac_table_offset[f]
            for e in range(fac_edge_offset[f], fac_edge_offset[f + 1]):
                idx = idx + edge_stride[e] * states[i, edge_var[e]]
            fac_out[idx] += weight


def greedy_colouring(const intp_t[::1] var_edge_offset, const intp_t[::1] var_edges,
                     const intp_t[::1] edge_fac, const intp_t[::1] fac_edge_offset,
                     const intp_t[::1] edge_var, intp_t[::1] colour_out, intp_t[::1] mark):
    """Greedy colouring of the variable interaction graph (variables sharing a factor are
    neighbours), in variable order: each variable takes the smallest colour none of its
    already coloured neighbours has. colour_out (V,) must hold -1, mark (V + 1,) -1.
    Returns the number of colours."""
    cdef intp_t V = colour_out.shape[0], v, j, e, f, e2, u, c, n_colours = 0
    with nogil:
        for v in range(V):
            for j in range(var_edge_offset[v], var_edge_offset[v + 1]):
                f = edge_fac[var_edges[j]]
                for e2 in range(fac_edge_offset[f], fac_edge_offset[f + 1]):
                    u = edge_var[e2]
                    if u != v and colour_out[u] >= 0:
                        mark[colour_out[u]] = v
            c = 0
            while mark[c] == v:
                c += 1
            colour_out[v] = c
            if c + 1 > n_colours:
                n_colours = c + 1
    return n_colours
