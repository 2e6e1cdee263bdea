"""Batched linear-chain kernels: min-plus (Viterbi, min-marginals, k-best) and
scaled sum-product (forward-backward) over a ragged batch of sequences.

A batch is ``unary`` (N, S) plus ``offsets`` (n+1,); sequence i is rows
``offsets[i]:offsets[i+1]``. Every kernel processes the whole batch in one call
with the GIL released; sequences are independent, so blocks of sequences are
spread over threads with OpenMP ``prange`` (a plain loop when the build has no
OpenMP). Each thread owns a workspace sized by the longest sequence.

The Python wrappers in ``factorebm/chain.py`` validate every input; these
kernels never raise and never allocate results.

Conventions shared by all kernels
---------------------------------
* ``ueff`` (T, S): the effective unary energies of one sequence: unary, +inf
  where the mask forbids a state, minus the per-token loss on states whose
  label differs from gold (loss-augmented decoding), ``start`` added to row 0
  and ``end`` added to row T-1. With start/end folded in, every dynamic program
  is the same recursion for every position.
* Min-plus forward ``alpha[t, j] = ueff[t, j] + min_i (alpha[t-1, i] + trans[i, j])``;
  backward ``beta[t-1, i] = min_j (trans[i, j] + ueff[t, j] + beta[t, j])``;
  min-marginal ``alpha[t, j] + beta[t, j]`` (Rabiner 1989, in energy space).
* Forward-backward runs in scaled probability space: ``w[t, j] =
  exp(-beta (ueff[t, j] - min_j ueff[t, j]))`` once per token and ``M =
  exp(-beta (trans - min trans))`` once per call, so the inner loops are
  multiply-adds; forward messages are normalized to sum 1 at every position and
  the log of each normalizer is kept, which gives log Z without underflow on
  arbitrarily long chains. The per-token exponentials use a branch-free
  polynomial (``_exp_nonpos``) that vectorizes, where a libm call per state
  cost a third of the time.
* Scaled probabilities have a fixed dynamic range: at energy differences
  beyond ~670 / beta a factor or a forward value becomes subnormal (and loses
  relative precision: the path it carries may dominate later) or underflows.
  An energy range beyond LOG_LOW / beta within a row or over the transitions,
  a forward value in (0, LOW), a normalizer below TINY or a marginal row that
  does not sum to 1 sends the sequence to an exact energy-space recursion
  (``_fb_energy``: soft-min messages shifted per position), correct at any
  beta and energy scale; typical energies at beta ~ 1 never need it.
* Pairwise marginals are summed per fixed block of sequences, then over blocks
  in order, so every result is bit-identical whatever the number of threads.
* Inner loops run over the destination state with the source row contiguous
  (``trans`` rows forward, ``trans.T`` rows backward) and use
  ``a if a < b else b``, which compilers turn into vector min instructions.
"""
from cython.parallel cimport prange, threadid
from libc.math cimport log, INFINITY
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from _typedefs cimport float64_t, intp_t, bool_t

import numpy as np

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fe_chain_max_threads(void) { return omp_get_max_threads(); }
    static int fe_chain_has_openmp(void) { return 1; }
    #else
    static int fe_chain_max_threads(void) { return 1; }
    static int fe_chain_has_openmp(void) { return 0; }
    #endif
    """
    int fe_chain_max_threads() noexcept nogil
    int fe_chain_has_openmp() noexcept nogil

cdef float64_t INF = INFINITY
# A forward normalizer below this means the scaled recursion lost (almost) all
# of its mass to underflow; the exact energy-space recursion takes over.
cdef float64_t TINY = 1e-250
# Smallest nonzero value the scaled recursion trusts. Doubles below 2.2e-308
# are subnormal and keep fewer significant bits (a value of 1e-318 is off by
# ~1e-6 relative), and the per-position normalization divides by up to S, so
# a margin is kept: a forward value in (0, LOW), or an energy more than
# LOG_LOW / beta above its row's minimum (its factor exp(-beta (e - min))
# would be below LOW), sends the sequence to the exact energy-space recursion.
cdef float64_t LOW = 1e-292
cdef float64_t LOG_LOW = 672.0          # exp(-672) = 3.3e-292, just above LOW
# below this many tokens the default thread count is 1
cdef intp_t SMALL_BATCH = 2048
# bit pattern of 1.5 * 2^52, the round-to-nearest shift of _exp_nonpos
cdef int64_t SHIFT_BITS = 0x4338000000000000


def max_threads():
    """Number of threads OpenMP would use by default (1 without OpenMP)."""
    return fe_chain_max_threads()


def has_openmp():
    """True when the kernels were compiled with OpenMP."""
    return bool(fe_chain_has_openmp())


cdef int _n_threads(int n_threads, intp_t n_blocks, intp_t n_tokens):
    cdef int nt = n_threads if n_threads > 0 else fe_chain_max_threads()
    if nt < 1:
        nt = 1
    if n_blocks >= 1 and nt > n_blocks:
        nt = <int>n_blocks
    # a small batch costs less than waking and joining a thread team
    if n_threads <= 0 and n_tokens < SMALL_BATCH:
        nt = 1
    return nt


cdef intp_t _n_blocks(intp_t n):
    # Fixed-size blocks of sequences, independent of the thread count, so that
    # per-block partial sums (pairwise marginals) add up in the same order
    # whatever the number of threads; 256 blocks balance load dynamically.
    return n if n < 256 else 256


cdef intp_t _max_len(const intp_t[::1] offsets):
    cdef intp_t i, m = 0
    for i in range(offsets.shape[0] - 1):
        if offsets[i + 1] - offsets[i] > m:
            m = offsets[i + 1] - offsets[i]
    return m


# ---------------------------------------------------------------------------
# per-sequence building blocks (raw pointers, no Python objects)
# ---------------------------------------------------------------------------

cdef void _prepare(const float64_t* U, intp_t T, intp_t S,
                   const float64_t* start, const float64_t* end,
                   const bool_t* mask, const intp_t* state_label,
                   const intp_t* gold, const float64_t* loss,
                   float64_t* ueff) noexcept nogil:
    """Fill ueff (T, S) with the effective unary energies (see module doc)."""
    cdef intp_t t, s
    cdef float64_t x
    memcpy(ueff, U, T * S * sizeof(float64_t))
    if mask != NULL:
        for t in range(T * S):
            if mask[t] == 0:
                ueff[t] = INF
    if gold != NULL:
        for t in range(T):
            x = loss[t]
            for s in range(S):
                if state_label[s] != gold[t]:
                    ueff[t * S + s] -= x
    if T > 0:
        for s in range(S):
            ueff[s] += start[s]
            ueff[(T - 1) * S + s] += end[s]


cdef void _minplus_rows(float64_t* cur, const float64_t* src, const float64_t* rows,
                        intp_t S) noexcept nogil:
    """cur[j] = min(cur[j], min_i src[i] + rows[i, j]) for rows (S, S) row-major.

    Four source rows per pass over the destination row: the destination stays
    in registers four times longer, and the loop over j (contiguous in every
    row) vectorizes into add + min instructions.
    """
    cdef intp_t i = 0, j
    cdef float64_t p0, p1, p2, p3, c0, c1, c2, c3
    cdef const float64_t* r0
    cdef const float64_t* r1
    cdef const float64_t* r2
    cdef const float64_t* r3
    while i + 4 <= S:
        p0 = src[i]
        p1 = src[i + 1]
        p2 = src[i + 2]
        p3 = src[i + 3]
        r0 = rows + i * S
        r1 = r0 + S
        r2 = r1 + S
        r3 = r2 + S
        if not (p0 == INF and p1 == INF and p2 == INF and p3 == INF):
            for j in range(S):
                c0 = p0 + r0[j]
                c1 = p1 + r1[j]
                c2 = p2 + r2[j]
                c3 = p3 + r3[j]
                c0 = c0 if c0 < c1 else c1
                c2 = c2 if c2 < c3 else c3
                c0 = c0 if c0 < c2 else c2
                cur[j] = c0 if c0 < cur[j] else cur[j]
        i += 4
    while i < S:
        p0 = src[i]
        r0 = rows + i * S
        if p0 != INF:
            for j in range(S):
                c0 = p0 + r0[j]
                cur[j] = c0 if c0 < cur[j] else cur[j]
        i += 1


cdef void _minplus_forward(const float64_t* ueff, const float64_t* trans,
                           intp_t T, intp_t S, float64_t* alpha) noexcept nogil:
    """alpha (T, S): min energy of prefixes ending in state j at t (ueff[t] included)."""
    cdef intp_t t, j
    cdef float64_t* cur
    cdef const float64_t* u
    memcpy(alpha, ueff, S * sizeof(float64_t))
    for t in range(1, T):
        cur = alpha + t * S
        u = ueff + t * S
        for j in range(S):
            cur[j] = INF
        _minplus_rows(cur, cur - S, trans, S)
        for j in range(S):
            cur[j] = cur[j] + u[j]


cdef void _minplus_backward(const float64_t* ueff, const float64_t* transT,
                            intp_t T, intp_t S, float64_t* beta,
                            float64_t* tmp) noexcept nogil:
    """beta (T, S): min energy of suffixes after state i at t (ueff[t] excluded)."""
    cdef intp_t t, j
    cdef float64_t* cur
    cdef const float64_t* nxt
    cdef const float64_t* u
    for j in range(S):
        beta[(T - 1) * S + j] = 0.0
    for t in range(T - 1, 0, -1):
        nxt = beta + t * S
        cur = beta + (t - 1) * S
        u = ueff + t * S
        for j in range(S):
            tmp[j] = u[j] + nxt[j]
            cur[j] = INF
        _minplus_rows(cur, tmp, transT, S)


cdef intp_t _argmin_plus(const float64_t* a, const float64_t* b, intp_t S,
                         float64_t* best) noexcept nogil:
    """Smallest index of the minimum of a[i] + b[i]; -1 when all are +inf."""
    cdef intp_t i, arg = -1
    cdef float64_t c, m = INF
    cdef bint better
    for i in range(S):
        # selects, not a branch: which state wins is data-dependent and a
        # mispredicted branch per state cost more than the whole comparison
        c = a[i] + b[i]
        better = c < m
        arg = i if better else arg
        m = c if better else m
    best[0] = m
    return arg


cdef float64_t _viterbi_decode(const float64_t* alpha, const float64_t* transT,
                               const float64_t* zeros, intp_t T, intp_t S,
                               intp_t* path) noexcept nogil:
    """Backtrack the lowest-energy path from alpha; returns its energy.

    Back-pointers are recomputed (an O(S) argmin per token) instead of stored,
    which keeps the forward loop a pure vector min.
    """
    cdef intp_t t, y
    cdef float64_t best, dummy
    y = _argmin_plus(alpha + (T - 1) * S, zeros, S, &best)
    if y < 0:
        for t in range(T):
            path[t] = -1
        return INF
    path[T - 1] = y
    for t in range(T - 1, 0, -1):
        y = _argmin_plus(alpha + (t - 1) * S, transT + y * S, S, &dummy)
        path[t - 1] = y
    return best


cdef float64_t _path_energy(const float64_t* U, const float64_t* trans,
                            const float64_t* start, const float64_t* end,
                            intp_t T, intp_t S, const intp_t* path) noexcept nogil:
    """E(y) = sum_t U[t, y_t] + sum_t trans[y_{t-1}, y_t] + start[y_0] + end[y_last]."""
    cdef intp_t t
    cdef float64_t e
    if T == 0:
        return 0.0
    e = start[path[0]] + end[path[T - 1]]
    for t in range(T):
        e += U[t * S + path[t]]
    for t in range(1, T):
        e += trans[path[t - 1] * S + path[t]]
    return e


# ---------------------------------------------------------------------------
# Viterbi / loss-augmented Viterbi
# ---------------------------------------------------------------------------

def viterbi(const float64_t[:, ::1] unary, const float64_t[:, ::1] transition,
            const intp_t[::1] offsets, const float64_t[::1] start,
            const float64_t[::1] end, const bool_t[:, ::1] mask,
            const intp_t[::1] state_label, const intp_t[::1] gold,
            const float64_t[::1] loss, intp_t[::1] states_out,
            float64_t[::1] energies_out, int n_threads):
    """Lowest-energy state path of every sequence.

    With ``gold`` (N,) non-empty, decodes ``argmin E(y) - loss_t [label(y_t) != gold_t]``
    and reports the true energy E(y) of the decoded path. ``mask`` of shape
    (0, 0) means no mask. Sequences with no finite-energy path get energy +inf
    and states -1.
    """
    cdef intp_t n = offsets.shape[0] - 1
    cdef intp_t S = transition.shape[0]
    cdef intp_t Tmax = _max_len(offsets)
    cdef intp_t nb = _n_blocks(n)
    cdef int nt = _n_threads(n_threads, nb, unary.shape[0])
    cdef float64_t[:, ::1] ws = np.empty((nt, 2 * Tmax * S + S), dtype=np.float64)
    cdef float64_t[:, ::1] transT_arr = np.ascontiguousarray(np.asarray(transition).T)
    cdef float64_t[::1] zeros_arr = np.zeros(S, dtype=np.float64)
    cdef bint has_mask = mask.shape[0] > 0
    cdef bint has_gold = gold.shape[0] > 0
    cdef intp_t b, i, o, T, tid
    cdef float64_t* ueff
    cdef float64_t* alpha
    cdef float64_t e
    cdef const float64_t* U = &unary[0, 0] if unary.shape[0] > 0 else NULL
    cdef const float64_t* trans = &transition[0, 0]
    cdef const float64_t* transT = &transT_arr[0, 0]
    cdef const float64_t* zeros = &zeros_arr[0]
    cdef const bool_t* M = &mask[0, 0] if has_mask else NULL
    cdef const intp_t* G = &gold[0] if has_gold else NULL
    cdef const float64_t* L = &loss[0] if has_gold else NULL
    if n == 0:
        return
    with nogil:
        for b in prange(nb, num_threads=nt, schedule="dynamic"):
            tid = threadid()
            ueff = &ws[tid, 0]
            alpha = ueff + Tmax * S
            for i in range(b * n // nb, (b + 1) * n // nb):
                o = offsets[i]
                T = offsets[i + 1] - o
                if T == 0:
                    energies_out[i] = 0.0
                    continue
                _prepare(U + o * S, T, S, &start[0], &end[0],
                         M + o * S if has_mask else NULL, &state_label[0],
                         G + o if has_gold else NULL, L + o if has_gold else NULL,
                         ueff)
                _minplus_forward(ueff, trans, T, S, alpha)
                e = _viterbi_decode(alpha, transT, zeros, T, S, &states_out[o])
                if has_gold and e < INF:
                    # the decoded energy is the augmented one; report the true E(y)
                    e = _path_energy(U + o * S, trans, &start[0], &end[0], T, S,
                                     &states_out[o])
                energies_out[i] = e


# ---------------------------------------------------------------------------
# min-marginals and most-offending
# ---------------------------------------------------------------------------

def min_marginals(const float64_t[:, ::1] unary, const float64_t[:, ::1] transition,
                  const intp_t[::1] offsets, const float64_t[::1] start,
                  const float64_t[::1] end, const bool_t[:, ::1] mask,
                  float64_t[:, ::1] mm_out, float64_t[::1] energies_out, int n_threads):
    """mm_out[t, s] = min energy over sequences with y_t = s; energies_out = min energy."""
    cdef intp_t n = offsets.shape[0] - 1
    cdef intp_t S = transition.shape[0]
    cdef intp_t Tmax = _max_len(offsets)
    cdef intp_t nb = _n_blocks(n)
    cdef int nt = _n_threads(n_threads, nb, unary.shape[0])
    cdef float64_t[:, ::1] ws = np.empty((nt, 3 * Tmax * S + S), dtype=np.float64)
    cdef float64_t[:, ::1] transT_arr = np.ascontiguousarray(np.asarray(transition).T)
    cdef bint has_mask = mask.shape[0] > 0
    cdef intp_t b, i, o, T, tid, t, s
    cdef float64_t* ueff
    cdef float64_t* alpha
    cdef float64_t* beta
    cdef float64_t* tmp
    cdef float64_t e, c
    cdef const float64_t* U = &unary[0, 0] if unary.shape[0] > 0 else NULL
    cdef const float64_t* trans = &transition[0, 0]
    cdef const float64_t* transT = &transT_arr[0, 0]
    cdef const bool_t* M = &mask[0, 0] if has_mask else NULL
    if n == 0:
        return
    with nogil:
        for b in prange(nb, num_threads=nt, schedule="dynamic"):
            tid = threadid()
            ueff = &ws[tid, 0]
            alpha = ueff + Tmax * S
            beta = alpha + Tmax * S
            tmp = beta + Tmax * S
            for i in range(b * n // nb, (b + 1) * n // nb):
                o = offsets[i]
                T = offsets[i + 1] - o
                if T == 0:
                    energies_out[i] = 0.0
                    continue
                _prepare(U + o * S, T, S, &start[0], &end[0],
                         M + o * S if has_mask else NULL, NULL, NULL, NULL, ueff)
                _minplus_forward(ueff, trans, T, S, alpha)
                _minplus_backward(ueff, transT, T, S, beta, tmp)
                e = INF
                for t in range(T):
                    for s in range(S):
                        c = alpha[t * S + s] + beta[t * S + s]
                        mm_out[o + t, s] = c
                        if t == 0 and c < e:
                            e = c
                energies_out[i] = e


def most_offending(const float64_t[:, ::1] unary, const float64_t[:, ::1] transition,
                   const intp_t[::1] offsets, const float64_t[::1] start,
                   const float64_t[::1] end, const bool_t[:, ::1] mask,
                   const intp_t[::1] state_label, const intp_t[::1] gold,
                   intp_t[::1] states_out, float64_t[::1] energies_out, int n_threads):
    """Lowest-energy state path whose label sequence differs from gold somewhere.

    The minimum over (t, state s with label(s) != gold_t) of the min-marginal at
    (t, s) is that energy (LeCun et al. 2006, most offending incorrect answer);
    the path is decoded through the minimizing (t, s): backward with alpha,
    forward with beta. Energy +inf and states -1 where no such path exists.
    """
    cdef intp_t n = offsets.shape[0] - 1
    cdef intp_t S = transition.shape[0]
    cdef intp_t Tmax = _max_len(offsets)
    cdef intp_t nb = _n_blocks(n)
    cdef int nt = _n_threads(n_threads, nb, unary.shape[0])
    cdef float64_t[:, ::1] ws = np.empty((nt, 3 * Tmax * S + 2 * S), dtype=np.float64)
    cdef float64_t[:, ::1] transT_arr = np.ascontiguousarray(np.asarray(transition).T)
    cdef bint has_mask = mask.shape[0] > 0
    cdef intp_t b, i, o, T, tid, t, s, bt, bs, y
    cdef float64_t* ueff
    cdef float64_t* alpha
    cdef float64_t* beta
    cdef float64_t* tmp
    cdef float64_t* tmp2
    cdef float64_t e, c, dummy
    cdef const float64_t* U = &unary[0, 0] if unary.shape[0] > 0 else NULL
    cdef const float64_t* trans = &transition[0, 0]
    cdef const float64_t* transT = &transT_arr[0, 0]
    cdef const bool_t* M = &mask[0, 0] if has_mask else NULL
    if n == 0:
        return
    with nogil:
        for b in prange(nb, num_threads=nt, schedule="dynamic"):
            tid = threadid()
            ueff = &ws[tid, 0]
            alpha = ueff + Tmax * S
            beta = alpha + Tmax * S
            tmp = beta + Tmax * S
            tmp2 = tmp + S
            for i in range(b * n // nb, (b + 1) * n // nb):
                o = offsets[i]
                T = offsets[i + 1] - o
                if T == 0:
                    energies_out[i] = INF
                    continue
                _prepare(U + o * S, T, S, &start[0], &end[0],
                         M + o * S if has_mask else NULL, NULL, NULL, NULL, ueff)
                _minplus_forward(ueff, trans, T, S, alpha)
                _minplus_backward(ueff, transT, T, S, beta, tmp)
                e = INF
                bt = -1
                bs = -1
                for t in range(T):
                    for s in range(S):
                        if state_label[s] != gold[o + t]:
                            c = alpha[t * S + s] + beta[t * S + s]
                            if c < e:
                                e = c
                                bt = t
                                bs = s
                energies_out[i] = e
                if bt < 0:
                    for t in range(T):
                        states_out[o + t] = -1
                    continue
                states_out[o + bt] = bs
                y = bs
                for t in range(bt, 0, -1):
                    y = _argmin_plus(alpha + (t - 1) * S, transT + y * S, S, &dummy)
                    states_out[o + t - 1] = y
                y = bs
                for t in range(bt + 1, T):
                    for s in range(S):
                        tmp2[s] = ueff[t * S + s] + beta[t * S + s]
                    y = _argmin_plus(trans + y * S, tmp2, S, &dummy)
                    states_out[o + t] = y


# ---------------------------------------------------------------------------
# forward-backward
# ---------------------------------------------------------------------------


cdef inline float64_t _exp_nonpos(float64_t x) noexcept nogil:
    """exp(x) for -1000 <= x <= 0, branch-free so that loops over it vectorize.

    libm's exp is a scalar call and was a third of the forward-backward time.
    Cody-Waite reduction x = k ln2 + r with |r| <= ln2/2 (k by the round-to-
    nearest shift trick), degree-12 Taylor polynomial for exp(r) (truncation
    error below 2e-16 relative), then 2^k as two factors 2^k1 2^k2 assembled in
    the exponent bits, so that results below the double range underflow to 0
    naturally (callers avoid that: see _exp_neg). The clamp is a separate
    max loop: a select next to the arithmetic keeps the compiler from
    vectorizing without -fno-trapping-math.
    """
    cdef float64_t xc = x
    cdef float64_t kd = xc * 1.4426950408889634 + 6755399441055744.0   # 1.5 * 2^52
    cdef float64_t k = kd - 6755399441055744.0
    cdef float64_t r = (xc - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10
    cdef float64_t k1d = k * 0.5 + 6755399441055744.0
    cdef float64_t k2d = (k - (k1d - 6755399441055744.0)) + 6755399441055744.0
    cdef float64_t p = 1.0 / 479001600.0
    cdef int64_t bits1, bits2
    cdef float64_t scale1, scale2
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    # the low bits of k1d, k2d hold k1 and k2 = k - k1 (each >= -722): bits = bits(1.5 * 2^52) + k_i
    memcpy(&bits1, &k1d, sizeof(float64_t))
    memcpy(&bits2, &k2d, sizeof(float64_t))
    bits1 = (bits1 - SHIFT_BITS + 1023) << 52
    bits2 = (bits2 - SHIFT_BITS + 1023) << 52
    memcpy(&scale1, &bits1, sizeof(float64_t))
    memcpy(&scale2, &bits2, sizeof(float64_t))
    return (p * scale1) * scale2


cdef void _sumprod_rows(float64_t* cur, const float64_t* src, const float64_t* rows,
                        intp_t S) noexcept nogil:
    """cur[j] += sum_i src[i] * rows[i, j] for rows (S, S) row-major (four rows per pass)."""
    cdef intp_t i = 0, j
    cdef float64_t p0, p1, p2, p3
    cdef const float64_t* r0
    cdef const float64_t* r1
    cdef const float64_t* r2
    cdef const float64_t* r3
    while i + 4 <= S:
        p0 = src[i]
        p1 = src[i + 1]
        p2 = src[i + 2]
        p3 = src[i + 3]
        r0 = rows + i * S
        r1 = r0 + S
        r2 = r1 + S
        r3 = r2 + S
        for j in range(S):
            cur[j] += (p0 * r0[j] + p1 * r1[j]) + (p2 * r2[j] + p3 * r3[j])
        i += 4
    while i < S:
        p0 = src[i]
        r0 = rows + i * S
        for j in range(S):
            cur[j] += p0 * r0[j]
        i += 1


cdef void _exp_neg(const float64_t* d, float64_t beta, intp_t S,
                   float64_t* out) noexcept nogil:
    """out[i] = exp(-beta d[i]) for d[i] >= 0; 0 where the exponent is below -700
    (d = +inf or NaN included). out may be d.

    The exponent is clamped at -700 and the result zeroed afterwards, so that no
    multiplication underflows: a subnormal or underflowing result costs a
    microcode assist of ~100 cycles, which made exp-heavy loops 5x slower at
    large beta. Clamp, exponential and zeroing are separate loops so that each
    vectorizes.
    """
    cdef intp_t i
    cdef float64_t v
    for i in range(S):
        v = -beta * d[i]
        out[i] = v if v > -700.0 else -700.0
    for i in range(S):
        out[i] = _exp_nonpos(out[i])
    for i in range(S):
        # exp(-700) = 9.9e-305: the clamped entries, and nothing else
        out[i] = out[i] if out[i] > 1e-304 else 0.0


cdef bint _fb_scaled(float64_t* w, const float64_t* Mf, const float64_t* MT,
                     float64_t beta, float64_t tmin, intp_t T, intp_t S,
                     float64_t* ah, float64_t* bh, float64_t* c, float64_t* tmp,
                     float64_t* marg, intp_t marg_stride,
                     float64_t* pair, float64_t* free_energy) noexcept nogil:
    """Scaled forward-backward of one sequence; False when it must be redone exactly.

    On entry w (T, S) holds ueff; it is overwritten with exp(-beta (ueff - row min)).
    ah, bh (T, S): scaled forward / backward messages; c (T,): forward normalizers.
    marg (T, S) with row stride marg_stride receives the state marginals, pair
    (S, S) (may be NULL) accumulates sum_t P(y_{t-1} = i, y_t = j).

    Returns False (before touching pair) when a value the result depends on may
    have lost precision:
    * a finite energy lies more than LOG_LOW / beta above its row minimum
      (its factor would be below LOW, or 0), or a forward value lies in
      (0, LOW): subnormal numbers keep too few bits, and the forward pass is
      where a path that is negligible now but dominant later is carried along
      as a tiny number;
    * a forward normalizer is below TINY (almost all mass underflowed);
    * a marginal row does not sum to 1 (overflow, NaN). A forward value that
      underflowed to exactly 0 carries mass only if its backward value exceeds
      ~1e300, which overflows and lands here. Backward values in (0, LOW) are
      harmless: every path through them has mass below LOW.
    """
    cdef intp_t t, i, j, n_low
    cdef float64_t m, mx, shift = 0.0, logc = 0.0, a, v, tot, ct
    cdef float64_t* row
    cdef float64_t* cur
    cdef const float64_t* prev
    cdef const float64_t* mrow
    for t in range(T):
        row = w + t * S
        m = INF
        mx = -INF
        for j in range(S):
            m = row[j] if row[j] < m else m
            v = row[j] if row[j] < INF else -INF
            mx = v if v > mx else mx
        if m == INF:
            # some token has every state forbidden: no finite-energy path
            free_energy[0] = INF
            for t in range(T):
                for j in range(S):
                    marg[t * marg_stride + j] = 0.0
            return True
        if beta * (mx - m) > LOG_LOW:
            return False     # some finite state's exp(-beta (ueff - m)) would be < LOW
        shift += m
        for j in range(S):
            row[j] -= m
        _exp_neg(row, beta, S, row)
    # forward: ah[t] = w[t] * (ah[t-1] @ Mf) / c[t]
    tot = 0.0
    for j in range(S):
        tot += w[j]
    c[0] = tot
    for j in range(S):
        ah[j] = w[j] / tot
    logc = log(tot)
    for t in range(1, T):
        prev = ah + (t - 1) * S
        cur = ah + t * S
        for j in range(S):
            cur[j] = 0.0
        _sumprod_rows(cur, prev, Mf, S)
        row = w + t * S
        tot = 0.0
        n_low = 0
        for j in range(S):
            cur[j] *= row[j]
            tot += cur[j]
            n_low += (cur[j] > 0.0) & (cur[j] < LOW)
        if n_low or not (tot > TINY):
            return False
        c[t] = tot
        logc += log(tot)
        ct = 1.0 / tot
        for j in range(S):
            cur[j] *= ct
    # backward: bh[t-1] = Mf @ (w[t] * bh[t]) / c[t], with Mf.T rows contiguous
    for j in range(S):
        bh[(T - 1) * S + j] = 1.0
    for t in range(T - 1, 0, -1):
        row = w + t * S
        prev = bh + t * S
        cur = bh + (t - 1) * S
        ct = 1.0 / c[t]
        for j in range(S):
            tmp[j] = row[j] * prev[j] * ct
            cur[j] = 0.0
        _sumprod_rows(cur, tmp, MT, S)
    # marginals; a row that does not sum to 1 means overflow or severe underflow
    for t in range(T):
        tot = 0.0
        for j in range(S):
            v = ah[t * S + j] * bh[t * S + j]
            marg[t * marg_stride + j] = v
            tot += v
        if not (tot > 0.999999 and tot < 1.000001):
            return False
    if pair != NULL:
        for t in range(1, T):
            row = w + t * S
            prev = bh + t * S
            ct = 1.0 / c[t]
            for j in range(S):
                tmp[j] = row[j] * prev[j] * ct
            for i in range(S):
                a = ah[(t - 1) * S + i]
                if a == 0.0:
                    continue
                mrow = Mf + i * S
                cur = pair + i * S
                for j in range(S):
                    cur[j] += a * mrow[j] * tmp[j]
    free_energy[0] = -(logc / beta) + shift + (T - 1) * tmin
    return True


cdef void _softmin_rows(float64_t* cur, const float64_t* src, const float64_t* rows,
                        intp_t S, float64_t beta, float64_t* acc,
                        float64_t* x) noexcept nogil:
    """cur[j] = -(1/beta) log sum_i exp(-beta (src[i] + rows[i, j])) for rows (S, S)
    row-major: the soft-min counterpart of _minplus_rows.

    Computed as m_j - (1/beta) log sum_i exp(-beta (src[i] + rows[i, j] - m_j)) with
    m_j the min-plus minimum, so every exponent is <= 0 and every sum lies in [1, S]:
    nothing overflows or loses precision whatever beta and the scale of the energies
    (terms below exp(-700) relative to the largest are dropped). +inf where every
    term is +inf. The destination j is innermost, as in the scaled recursion.
    acc, x (S,): scratch.
    """
    cdef intp_t i, j
    cdef float64_t p
    cdef const float64_t* r
    for j in range(S):
        cur[j] = INF
        acc[j] = 0.0
    _minplus_rows(cur, src, rows, S)
    for i in range(S):
        p = src[i]
        if p == INF:
            continue
        r = rows + i * S
        for j in range(S):
            # the same sum as in _minplus_rows: exactly 0 at the minimum; where
            # cur[j] = +inf every term is +inf and inf - inf = NaN gives 0
            x[j] = (p + r[j]) - cur[j]
        _exp_neg(x, beta, S, x)
        for j in range(S):
            acc[j] += x[j]
    for j in range(S):
        cur[j] = cur[j] - log(acc[j]) / beta


cdef void _fb_energy(const float64_t* ueff, const float64_t* trans, const float64_t* transT,
                     float64_t beta, intp_t T, intp_t S, float64_t* fa, float64_t* fb,
                     float64_t* x, float64_t* y, float64_t* acc, float64_t* buf,
                     float64_t* marg, intp_t marg_stride, float64_t* pair,
                     float64_t* free_energy) noexcept nogil:
    """Exact forward-backward in energy space: the slow path, for any beta and energy range.

    The min-plus recursions with min replaced by the soft-min (_softmin_rows):
    fa (T, S) the soft-min energy of the prefixes ending in state j at t (ueff[t]
    included) minus the row minimum (the sum of those minima is kept, so fa stays
    within one token's energy range); fb (T, S) the soft-min energy of the suffixes
    after state i at t, minus its row minimum. Marginals exp(-beta (fa + fb)) and
    pairwise marginals exp(-beta (fa[t-1, i] + trans[i, j] + ueff[t, j] + fb[t, j]))
    are normalized per position, relative to their exact minimum, so rounding never
    accumulates into them along the chain and even at beta ~ 1e9 the most likely
    entry is exact. x, y, acc (S,), buf (S, S): scratch.
    """
    cdef intp_t t, i, j
    cdef float64_t total = 0.0, m, s, ai
    cdef float64_t* row
    cdef float64_t* cur
    cdef const float64_t* prev
    cdef const float64_t* nxt
    cdef const float64_t* trow
    for t in range(T):
        row = fa + t * S
        if t == 0:
            memcpy(row, ueff, S * sizeof(float64_t))
        else:
            _softmin_rows(row, row - S, trans, S, beta, acc, x)
            for j in range(S):
                row[j] += ueff[t * S + j]
        m = INF
        for j in range(S):
            m = row[j] if row[j] < m else m
        if m == INF:
            free_energy[0] = INF
            for t in range(T):
                for j in range(S):
                    marg[t * marg_stride + j] = 0.0
            return
        for j in range(S):
            row[j] -= m
        total += m
    for j in range(S):
        fb[(T - 1) * S + j] = 0.0
    for t in range(T - 1, 0, -1):
        nxt = fb + t * S
        cur = fb + (t - 1) * S
        for j in range(S):
            y[j] = ueff[t * S + j] + nxt[j]
        # cur[i] = softmin_j (trans[i, j] + y[j]), with trans.T rows contiguous
        _softmin_rows(cur, y, transT, S, beta, acc, x)
        m = INF
        for i in range(S):
            m = cur[i] if cur[i] < m else m
        if m < INF:
            for i in range(S):
                cur[i] -= m
    for t in range(T):
        row = fa + t * S
        nxt = fb + t * S
        m = INF
        for j in range(S):
            x[j] = row[j] + nxt[j]
            m = x[j] if x[j] < m else m
        for j in range(S):
            x[j] -= m
        _exp_neg(x, beta, S, x)
        s = 0.0
        for j in range(S):
            s += x[j]
        for j in range(S):
            marg[t * marg_stride + j] = x[j] / s
        if t == T - 1:
            # fb[T-1] = 0: s is the soft-min normalizer of the last forward row
            free_energy[0] = (total + m) - log(s) / beta
        if pair == NULL or t == 0:
            continue
        # buf[i, j] = fa[t-1, i] + trans[i, j] + ueff[t, j] + fb[t, j], relative to its
        # minimum, exponentiated and normalized to sum 1
        for j in range(S):
            y[j] = ueff[t * S + j] + nxt[j]
            acc[j] = INF
        prev = row - S
        for i in range(S):
            ai = prev[i]
            trow = trans + i * S
            cur = buf + i * S
            for j in range(S):
                cur[j] = ai + trow[j] + y[j]
                acc[j] = cur[j] if cur[j] < acc[j] else acc[j]
        m = INF
        for j in range(S):
            m = acc[j] if acc[j] < m else m
        for i in range(S * S):
            buf[i] -= m
        _exp_neg(buf, beta, S * S, buf)
        for j in range(S):
            acc[j] = 0.0
        for i in range(S):
            cur = buf + i * S
            for j in range(S):
                acc[j] += cur[j]
        s = 0.0
        for j in range(S):
            s += acc[j]
        s = 1.0 / s
        for i in range(S * S):
            pair[i] += buf[i] * s


cdef void _fb_sequence(const float64_t* U, intp_t T, intp_t S, const float64_t* start,
                       const float64_t* end, const bool_t* mask, const float64_t* Mf,
                       const float64_t* MT, const float64_t* trans, const float64_t* transT,
                       float64_t beta, float64_t tmin, bint lossy_trans, float64_t* w,
                       float64_t* ah, float64_t* bh, float64_t* cc, float64_t* tmp,
                       float64_t* marg, float64_t* pair,
                       float64_t* free_energy) noexcept nogil:
    """Forward-backward of one sequence of T >= 1 tokens (unary U (T, S), mask (T, S) or
    NULL): the scaled recursion, or the exact one where it would lose precision. Workspace:
    w, ah, bh (T, S), cc (T,), tmp (3 S + S * S); marg (T, S) receives the state marginals,
    pair (S, S) or NULL accumulates the pairwise ones."""
    _prepare(U, T, S, start, end, mask, NULL, NULL, NULL, w)
    if (lossy_trans and T > 1) or not _fb_scaled(w, Mf, MT, beta, tmin, T, S, ah, bh, cc,
                                                  tmp, marg, S, pair, free_energy):
        _prepare(U, T, S, start, end, mask, NULL, NULL, NULL, w)
        _fb_energy(w, trans, transT, beta, T, S, ah, bh, tmp + S, tmp + 2 * S, tmp,
                   tmp + 3 * S, marg, S, pair, free_energy)


def _scaled_transitions(tr, float64_t beta):
    """What the scaled recursion needs of M transition matrices ``tr`` (M, S, S): ``(Mf, MT,
    transT, tmin, lossy)``, with Mf[m] = exp(-beta (tr[m] - tmin[m])) (tmin[m] the finite
    minimum of tr[m], 0 if none), MT and transT the transposes of Mf and tr (C-contiguous),
    and lossy[m] (uint8) whether tr[m]'s finite entries span more than LOG_LOW / beta, so that
    the scaled recursion would lose some of them (sequences of two or more tokens then take
    the exact one)."""
    M = tr.shape[0]
    Mf = np.empty(tr.shape)
    tmin = np.zeros(M)
    lossy = np.zeros(M, dtype=np.uint8)
    for m in range(M):
        finite = tr[m][np.isfinite(tr[m])]
        tmin[m] = finite.min() if finite.size else 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            Mf[m] = np.exp(-beta * (tr[m] - tmin[m]))
            lossy[m] = (beta * (finite - tmin[m]) > LOG_LOW).any()
    return (Mf, np.ascontiguousarray(Mf.transpose(0, 2, 1)),
            np.ascontiguousarray(tr.transpose(0, 2, 1)), tmin, lossy)


def forward_backward(const float64_t[:, ::1] unary, const float64_t[:, ::1] transition,
                     const intp_t[::1] offsets, float64_t beta,
                     const float64_t[::1] start, const float64_t[::1] end,
                     const bool_t[:, ::1] mask, float64_t[:, ::1] marg_out,
                     float64_t[::1] free_out, float64_t[:, ::1] pair_out,
                     int n_threads):
    """State marginals (N, S), free energies (n,) and, when pair_out is (S, S),
    pairwise marginals summed over the batch (pair_out of shape (0, 0): skipped).

    Every sequence runs the scaled recursion first and the exact energy-space one
    when the scaled one reports a loss of precision; when finite transitions span
    more than LOG_LOW / beta (exp(-beta (transition - min)) would have entries
    below LOW), sequences of two or more tokens go to the exact recursion directly.
    """
    cdef intp_t n = offsets.shape[0] - 1
    cdef intp_t S = transition.shape[0]
    cdef intp_t Tmax = _max_len(offsets)
    cdef intp_t nb = _n_blocks(n)
    cdef int nt = _n_threads(n_threads, nb, unary.shape[0])
    cdef bint want_pair = pair_out.shape[0] > 0
    cdef bint has_mask = mask.shape[0] > 0
    # per thread: w, ah, bh (Tmax, S); cc (Tmax,); tmp, x, y (S,); buf (S, S)
    cdef float64_t[:, ::1] ws = np.empty((nt, 3 * Tmax * S + Tmax + 3 * S + S * S),
                                         dtype=np.float64)
    cdef float64_t[:, :, ::1] pair_blocks
    cdef float64_t[:, ::1] Mf_arr, MT_arr, transT_arr
    cdef float64_t tmin
    cdef bint lossy_trans = False
    cdef intp_t b, i, o, T, tid, s, j
    cdef float64_t* w
    cdef float64_t* ah
    cdef float64_t* bh
    cdef float64_t* cc
    cdef float64_t* tmp
    cdef float64_t* pb
    cdef const float64_t* U = &unary[0, 0] if unary.shape[0] > 0 else NULL
    cdef const float64_t* trans = &transition[0, 0]
    cdef const bool_t* M = &mask[0, 0] if has_mask else NULL
    if n == 0:
        return
    Mf_np, MT_np, transT_np, tmin_np, lossy_np = _scaled_transitions(
        np.asarray(transition)[None], beta)
    Mf_arr, MT_arr, transT_arr = Mf_np[0], MT_np[0], transT_np[0]
    tmin, lossy_trans = tmin_np[0], lossy_np[0]
    pair_blocks = np.zeros((nb if want_pair else 1, S, S), dtype=np.float64)
    cdef const float64_t* Mf = &Mf_arr[0, 0]
    cdef const float64_t* MT = &MT_arr[0, 0]
    cdef const float64_t* transT = &transT_arr[0, 0]
    with nogil:
        for b in prange(nb, num_threads=nt, schedule="dynamic"):
            tid = threadid()
            w = &ws[tid, 0]
            ah = w + Tmax * S
            bh = ah + Tmax * S
            cc = bh + Tmax * S
            tmp = cc + Tmax
            pb = &pair_blocks[b, 0, 0] if want_pair else NULL
            for i in range(b * n // nb, (b + 1) * n // nb):
                o = offsets[i]
                T = offsets[i + 1] - o
                if T == 0:
                    free_out[i] = 0.0
                    continue
                _fb_sequence(U + o * S, T, S, &start[0], &end[0],
                             M + o * S if has_mask else NULL, Mf, MT, trans, transT, beta,
                             tmin, lossy_trans, w, ah, bh, cc, tmp, &marg_out[o, 0], pb,
                             &free_out[i])
    if want_pair:
        # fixed block order: the same sum whatever the number of threads
        for b in range(nb):
            for s in range(S):
                for j in range(S):
                    pair_out[s, j] += pair_blocks[b, s, j]


def ensemble_marginals(const float64_t[:, :, ::1] unary,
                       const float64_t[:, :, ::1] transition,
                       const intp_t[::1] offsets, float64_t beta,
                       const float64_t[:, ::1] start, const float64_t[:, ::1] end,
                       const bool_t[:, ::1] mask, const intp_t[::1] state_label,
                       float64_t[:, ::1] out, float64_t[:, ::1] free_out, int n_threads):
    """The label marginals of an ensemble, averaged over its M members, in one pass.

    ``unary`` (M, N, S), ``transition`` (M, S, S), ``start``, ``end`` (M, S): member m's
    chain energies; ``mask`` (N, S) or (0, 0); ``state_label`` (S,) the label of each state,
    in ``[0, L)``; ``out`` (N, L) receives ``(1/M) sum_m P_m(label_t = l)`` (the members
    added in order, then divided by M), ``free_out`` (M, n) each member's free energies.
    Each member's state marginals are :func:`forward_backward`'s (the same recursions and
    their exact fallback); a thread runs every member on its block of sequences while the
    block is in cache. The caller validated the arrays (as for :func:`forward_backward`).
    """
    cdef intp_t M = unary.shape[0]
    cdef intp_t N = unary.shape[1]
    cdef intp_t S = unary.shape[2]
    cdef intp_t L = out.shape[1]
    cdef intp_t n = offsets.shape[0] - 1
    cdef intp_t Tmax = _max_len(offsets)
    cdef intp_t nb = _n_blocks(n)
    cdef int nt = _n_threads(n_threads, nb, N)
    cdef bint has_mask = mask.shape[0] > 0
    cdef intp_t b, i, o, T, m, t, s
    cdef intp_t ws_len = 4 * Tmax * S + Tmax + 3 * S + S * S
    cdef float64_t inv_m
    cdef float64_t* w
    cdef float64_t* mg
    cdef float64_t* orow
    cdef const bool_t* Mk
    if (transition.shape[0] != M or transition.shape[1] != S or transition.shape[2] != S
            or start.shape[0] != M or start.shape[1] != S or end.shape[0] != M
            or end.shape[1] != S or state_label.shape[0] != S or out.shape[0] != N
            or free_out.shape[0] != M or free_out.shape[1] != n
            or (has_mask and (mask.shape[0] != N or mask.shape[1] != S))):
        raise ValueError("ensemble_marginals: array shapes do not agree")
    if n == 0 or M == 0:
        return
    if offsets[n] != N:
        raise ValueError("ensemble_marginals: offsets[-1] is not the number of tokens")
    for s in range(S):
        if state_label[s] < 0 or state_label[s] >= L:
            raise ValueError(f"ensemble_marginals: state {s} has label {state_label[s]}, "
                             f"outside [0, {L})")
    Mf_np, MT_np, transT_np, tmin_np, lossy_np = _scaled_transitions(
        np.asarray(transition), beta)
    cdef float64_t[:, :, ::1] Mf_arr = Mf_np
    cdef float64_t[:, :, ::1] MT_arr = MT_np
    cdef float64_t[:, :, ::1] transT_arr = transT_np
    cdef float64_t[::1] tmin = tmin_np
    cdef bool_t[::1] lossy = lossy_np
    cdef float64_t[:, ::1] ws = np.empty((nt, ws_len), dtype=np.float64)
    inv_m = 1.0 / M
    Mk = &mask[0, 0] if has_mask else NULL
    with nogil:
        for b in prange(nb, num_threads=nt, schedule="dynamic"):
            # this thread's workspace: w, ah, bh, marginals (Tmax, S), cc (Tmax), tmp
            w = &ws[threadid(), 0]
            mg = w + 3 * Tmax * S
            for i in range(b * n // nb, (b + 1) * n // nb):
                o = offsets[i]
                T = offsets[i + 1] - o
                for t in range(o, o + T):
                    for s in range(L):
                        out[t, s] = 0.0
                for m in range(M):
                    if T == 0:
                        free_out[m, i] = 0.0
                        continue
                    _fb_sequence(&unary[m, o, 0], T, S, &start[m, 0], &end[m, 0],
                                 Mk + o * S if has_mask else NULL, &Mf_arr[m, 0, 0],
                                 &MT_arr[m, 0, 0], &transition[m, 0, 0], &transT_arr[m, 0, 0],
                                 beta, tmin[m], lossy[m], w, w + Tmax * S, w + 2 * Tmax * S,
                                 mg + Tmax * S, mg + Tmax * S + Tmax, mg, NULL,
                                 &free_out[m, i])
                    for t in range(T):
                        orow = &out[o + t, 0]
                        for s in range(S):
                            orow[state_label[s]] += mg[t * S + s]
                for t in range(o, o + T):
                    for s in range(L):
                        out[t, s] *= inv_m


# ---------------------------------------------------------------------------
# exact k-best Viterbi (over state paths, or over label sequences with substates)
# ---------------------------------------------------------------------------

cdef void _kbest_merge(const float64_t* E, const float64_t* add, intp_t S, intp_t K,
                       float64_t u, intp_t* heads, float64_t* out_e, intp_t* out_bp,
                       const intp_t* lab, const intp_t* pid, intp_t HK, bool_t* seen,
                       intp_t* out_key) noexcept nogil:
    """The K smallest of {E[i, r] + add[i]} (each E[i, :] sorted ascending),
    plus u, best first, with back-pointers i * K + r; +inf and -1 past the end.

    With ``lab`` (not NULL), candidates are label prefixes: candidate (i, r) is the
    prefix ``pid[i * K + r]`` of label ``lab[i]``, identified by the key
    ``lab[i] * HK + pid[i * K + r]``; only the first (lowest) candidate of a key is
    kept, and the kept keys go to ``out_key``. ``seen`` (all 0) flags the keys
    taken and is all 0 again on return.
    """
    cdef intp_t i, r, bi, rk, key, n_out
    cdef float64_t best, v
    for i in range(S):
        heads[i] = 0
    r = 0
    while r < K:
        best = INF
        bi = -1
        if u < INF:
            for i in range(S):
                if heads[i] < K:
                    v = E[i * K + heads[i]] + add[i]
                    if v < best:
                        best = v
                        bi = i
        if bi < 0:
            break
        rk = heads[bi]
        heads[bi] += 1
        if lab != NULL:
            # every list holds distinct prefixes, so a key repeats only across the
            # substates of one label: at most H pops per answer
            key = lab[bi] * HK + pid[bi * K + rk]
            if seen[key]:
                continue
            seen[key] = 1
            out_key[r] = key
        out_e[r] = best + u
        out_bp[r] = bi * K + rk
        r += 1
    n_out = r
    for r in range(n_out, K):
        out_e[r] = INF
        out_bp[r] = -1
    if lab != NULL:
        for r in range(n_out):
            seen[out_key[r]] = 0
        for r in range(n_out, K):
            out_key[r] = -1


cdef void _kbest_number_prefixes(const float64_t* E, intp_t* pid, intp_t S, intp_t K,
                                 intp_t L, const intp_t* label_ptr,
                                 const intp_t* label_states, intp_t* remap,
                                 intp_t* touched) noexcept nogil:
    """Replace the keys of one position's lists (``pid``, (S, K)) by prefix ids: the
    lists of label l's states share one numbering, 0, 1, ..., of their distinct keys.
    ``remap`` (all -1) is all -1 again on return."""
    cdef intp_t l, q, j, r, key, cnt, c, at
    for l in range(L):
        cnt = 0
        for q in range(label_ptr[l], label_ptr[l + 1]):
            j = label_states[q]
            for r in range(K):
                at = j * K + r
                if E[at] == INF:
                    break
                key = pid[at]
                if remap[key] < 0:
                    remap[key] = cnt
                    touched[cnt] = key
                    cnt += 1
                pid[at] = remap[key]
        for c in range(cnt):
            remap[touched[c]] = -1


def kbest(const float64_t[:, ::1] unary, const float64_t[:, ::1] transition,
          const intp_t[::1] offsets, intp_t K, const float64_t[::1] start,
          const float64_t[::1] end, const bool_t[:, ::1] mask,
          const intp_t[::1] state_label, const intp_t[::1] label_ptr,
          const intp_t[::1] label_states, intp_t[:, ::1] paths_out,
          float64_t[:, ::1] energies_out, int n_threads):
    """The K lowest-energy state paths of every sequence, best first (``mask`` of
    shape (0, 0): no mask), or with ``state_label`` (S,) (length 0: none) the K
    lowest-energy LABEL sequences, each by its best state path (latent substates
    minimized). ``label_ptr`` (L+1,) and ``label_states`` (S,) list the states of
    each label (label l: ``label_states[label_ptr[l]:label_ptr[l+1]]``).

    Keeps, for every (t, state), the K best prefixes ending there with
    back-pointers (state, rank); merging the S sorted candidate lists per
    destination gives the K best extensions exactly. With labels the prefixes are
    distinct label sequences: K best distinct ones per (t, state) suffice (any
    label sequence whose best path's prefix is not kept at some (t, state) has K
    distinct rivals at least as good), and a prefix is known by its id among the
    distinct prefixes of its last label at t, so that the copies of one prefix
    reaching a state through several substates of that label are merged, the
    best kept. Missing rows: +inf, -1 (paths of states; Python maps them to labels).
    """
    cdef intp_t n = offsets.shape[0] - 1
    cdef intp_t S = transition.shape[0]
    cdef intp_t N = unary.shape[0]
    cdef intp_t Tmax = _max_len(offsets)
    cdef intp_t nb = _n_blocks(n)
    cdef int nt = _n_threads(n_threads, nb, unary.shape[0])
    cdef bint has_labels = state_label.shape[0] > 0
    cdef intp_t L = label_ptr.shape[0] - 1 if has_labels else 0
    cdef intp_t Hmax = 0
    cdef intp_t l
    for l in range(L):
        if label_ptr[l + 1] - label_ptr[l] > Hmax:
            Hmax = label_ptr[l + 1] - label_ptr[l]
    # prefix ids of label l at t lie below (its states) * K <= HK; keys below L * HK
    cdef intp_t HK = Hmax * K
    cdef intp_t n_keys = L * HK
    cdef float64_t[:, ::1] ws = np.empty((nt, Tmax * S + Tmax * S * K + S + K),
                                         dtype=np.float64)
    # bp [T][S][K], heads [S], fin_bp [K]; with labels pid [T][S][K] (element [t][j][r]:
    # the id of the prefix ranked r at (t, j)), remap [L*HK], touched [HK], fin_key [K]
    cdef intp_t n_int = Tmax * S * K + S + K
    if has_labels:
        n_int += Tmax * S * K + n_keys + HK + K
    cdef intp_t[:, ::1] wsi = np.empty((nt, n_int), dtype=np.int64)
    cdef bool_t[:, ::1] seen_arr = np.zeros((nt, max(n_keys, 1)), dtype=np.uint8)
    cdef float64_t[:, ::1] transT_arr = np.ascontiguousarray(np.asarray(transition).T)
    cdef float64_t[::1] zeros_arr = np.zeros(S, dtype=np.float64)
    cdef intp_t b, i, o, T, tid, t, j, r, code, y, rk, q
    cdef float64_t* ueff
    cdef float64_t* E
    cdef float64_t* fin_e
    cdef intp_t* bp
    cdef intp_t* heads
    cdef intp_t* fin_bp
    cdef intp_t* pid = NULL
    cdef intp_t* remap = NULL
    cdef intp_t* touched = NULL
    cdef intp_t* fin_key = NULL
    cdef bool_t* seen = NULL
    cdef const intp_t* lab = &state_label[0] if has_labels else NULL
    cdef const intp_t* lptr = &label_ptr[0] if has_labels else NULL
    cdef const intp_t* lstates = &label_states[0] if has_labels else NULL
    cdef bint has_mask = mask.shape[0] > 0
    cdef const float64_t* U = &unary[0, 0] if N > 0 else NULL
    cdef const float64_t* transT = &transT_arr[0, 0]
    cdef const float64_t* zeros = &zeros_arr[0]
    cdef const bool_t* M = &mask[0, 0] if has_mask else NULL
    if n == 0:
        return
    with nogil:
        for b in prange(nb, num_threads=nt, schedule="dynamic"):
            tid = threadid()
            ueff = &ws[tid, 0]
            E = ueff + Tmax * S
            fin_e = E + Tmax * S * K
            bp = &wsi[tid, 0]
            heads = bp + Tmax * S * K
            fin_bp = heads + S
            if has_labels:
                pid = fin_bp + K
                remap = pid + Tmax * S * K
                touched = remap + n_keys
                fin_key = touched + HK
                seen = &seen_arr[tid, 0]
                for q in range(n_keys):
                    remap[q] = -1
            else:
                pid = NULL
                remap = NULL
                touched = NULL
                fin_key = NULL
                seen = NULL
            for i in range(b * n // nb, (b + 1) * n // nb):
                o = offsets[i]
                T = offsets[i + 1] - o
                if T == 0:
                    energies_out[0, i] = 0.0
                    for r in range(1, K):
                        energies_out[r, i] = INF
                    continue
                _prepare(U + o * S, T, S, &start[0], &end[0],
                         M + o * S if has_mask else NULL, NULL, NULL, NULL, ueff)
                for j in range(S):
                    E[j * K] = ueff[j]
                    bp[j * K] = -1
                    for r in range(1, K):
                        E[j * K + r] = INF
                        bp[j * K + r] = -1
                    if has_labels:
                        # one prefix per label at t = 0: id 0
                        for r in range(K):
                            pid[j * K + r] = 0
                for t in range(1, T):
                    for j in range(S):
                        _kbest_merge(E + (t - 1) * S * K, transT + j * S, S, K,
                                     ueff[t * S + j], heads,
                                     E + (t * S + j) * K, bp + (t * S + j) * K,
                                     lab, pid + (t - 1) * S * K if has_labels else NULL,
                                     HK, seen,
                                     pid + (t * S + j) * K if has_labels else NULL)
                    if has_labels:
                        _kbest_number_prefixes(E + t * S * K, pid + t * S * K, S, K, L,
                                               lptr, lstates, remap, touched)
                _kbest_merge(E + (T - 1) * S * K, zeros, S, K, 0.0, heads, fin_e, fin_bp,
                             lab, pid + (T - 1) * S * K if has_labels else NULL, HK, seen,
                             fin_key)
                for r in range(K):
                    energies_out[r, i] = fin_e[r]
                    if fin_bp[r] < 0:
                        for t in range(T):
                            paths_out[r, o + t] = -1
                        continue
                    y = fin_bp[r] // K
                    rk = fin_bp[r] % K
                    paths_out[r, o + T - 1] = y
                    for t in range(T - 1, 0, -1):
                        code = bp[(t * S + y) * K + rk]
                        y = code // K
                        rk = code % K
                        paths_out[r, o + t - 1] = y


# ---------------------------------------------------------------------------
# energy of given paths
# ---------------------------------------------------------------------------

def sequence_energy(const float64_t[:, ::1] unary, const float64_t[:, ::1] transition,
                    const intp_t[::1] offsets, const intp_t[::1] states,
                    const float64_t[::1] start, const float64_t[::1] end,
                    float64_t[::1] energies_out):
    """energies_out[i] = E(states of sequence i)."""
    cdef intp_t n = offsets.shape[0] - 1
    cdef intp_t S = transition.shape[0]
    cdef intp_t i, o
    cdef const float64_t* U = &unary[0, 0] if unary.shape[0] > 0 else NULL
    with nogil:
        for i in range(n):
            o = offsets[i]
            energies_out[i] = _path_energy(U + o * S, &transition[0, 0], &start[0],
                                           &end[0], offsets[i + 1] - o, S,
                                           &states[o] if offsets[i + 1] > o else NULL)
