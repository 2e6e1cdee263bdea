# Per-mini-batch kernels of the stochastic chain optimizers (issue [learn], factorebm.optimize).
#
# A chain mini-batch touches only the emission-weight rows of the features that occur in it.
# Done with numpy, every batch built a sorted copy of its feature ids (np.unique), a renumbered
# CSR matrix, and half a dozen (n_cols, K) temporaries for the lazy proximal catch-up, the
# AdaGrad rates and the step -- several times the cost of the batch's gradient itself. Here:
#
# * batch_csr        -- the batch's token features with columns renumbered to local ids, in one
#                       pass over its nonzeros, through a reusable (n_features,) map;
# * catch_up_rows    -- the proximal steps a row still owes since it was last used, in closed
#                       form, and the copy of the caught-up rows the gradient is evaluated at;
# * adagrad_step, sgd_step, perceptron_step
#                    -- one fused pass per touched row: accumulator, step, proximal step (or
#                       the perceptron update and its averaging sum), writing W in place;
# * catch_up_all     -- the end-of-epoch catch-up of every row.
#
# All state (W, accumulators, the last step of each row, scratch buffers) is allocated and
# validated by the Python side (``_ChainStochastic``); the kernels never raise and hold no
# Python objects. Plain IEEE arithmetic: the build has no fast-math.
#
# The proximal step of rate lr is the soft-threshold by lr * l1 followed by the scaling
# 1 / (1 + lr * l2) (composite mirror descent). k such steps have the closed form
#     |w| -> max(0, c^k |w| - lr * l1 * (c + c^2 + ... + c^k)),   c = 1 / (1 + lr * l2),
# because the map is monotone in |w| and stays at 0 once it gets there.
from cython.parallel cimport parallel, prange
from _typedefs cimport float32_t, float64_t, intp_t
from libc.math cimport copysign, fabs, sqrt
from libc.stdlib cimport free, malloc
from libc.stdint cimport int32_t, int64_t

cdef extern from *:
    """
    /* Prefetch row r of a (n_rows, K) table of `size`-byte entries, a cache line at a
       time. */
    static inline void febm_prefetch_entries(const void* table, Py_ssize_t r, Py_ssize_t K,
                                             Py_ssize_t size) {
    #if defined(__GNUC__)
        const char* p = (const char*)table + r * K * size;
        for (Py_ssize_t b = 0; b < K * size; b += 64)
            __builtin_prefetch(p + b);
    #endif
    }
    #define febm_prefetch_row(table, r, K) febm_prefetch_entries((table), (r), (K), sizeof(double))
    """
    void febm_prefetch_row(const float64_t* table, intp_t r, intp_t K) nogil
    void febm_prefetch_entries(const void* table, intp_t r, intp_t K, intp_t size) nogil

# How many rows ahead the row kernels prefetch: the touched rows of W and of AdaGrad's
# accumulators are scattered over tables far larger than the cache, so without it every row
# waits on memory in turn.
cdef intp_t _AHEAD = 8

# Below this many weights touched, a row kernel runs on one thread: waking a team costs more.
cdef intp_t _MIN_PARALLEL_WEIGHTS = 16384


cdef inline int _team(int n_threads, intp_t n_weights) noexcept nogil:
    return n_threads if n_threads > 1 and n_weights >= _MIN_PARALLEL_WEIGHTS else 1


ctypedef fused index_t:          # the index dtype of the corpus' CSR matrix
    int32_t
    int64_t

ctypedef fused out_index_t:      # the index dtype of the batch's CSR matrix
    int32_t
    int64_t

# The dtype of the per-coordinate accumulators (AdaGrad's sums of squared gradients, Adam's
# second moments): AdaGrad keeps float32 sums, half the memory of a table as large as W
# (28 MB on EWT with 3 substates), and only the rate's square root is taken of them.
ctypedef fused acc_t:
    float32_t
    float64_t


# ---------------------------------------------------------------------------------------------
# Scalar helpers
# ---------------------------------------------------------------------------------------------
cdef inline void _power_and_sum(float64_t c, intp_t k, float64_t* ck,
                                float64_t* geo) noexcept nogil:
    # ck = c^k and geo = c + c^2 + ... + c^k by binary powering: O(log k) products and sums
    # of positive terms only, so no cancellation when c is close to 1 (lr * l2 tiny, where
    # (1 - c^k) / (lr * l2) would lose every digit), and no exp/log per coordinate.
    # Invariant: p = c^m, s = c + ... + c^m for the bits of k consumed so far (m of them
    # summed), bp = c^(2^i), bs = c + ... + c^(2^i); appending: s_(m+n) = s_m + c^m s_n.
    cdef float64_t p = 1.0, s = 0.0, bp = c, bs = c
    while k > 0:
        if k & 1:
            s = s + p * bs
            p = p * bp
        k >>= 1
        if k:
            bs = bs + bp * bs
            bp = bp * bp
    ck[0] = p
    geo[0] = s


cdef inline void _power_and_sum_rows(float64_t* bp, float64_t* bs, float64_t* p, float64_t* s,
                                     intp_t k, intp_t K) noexcept nogil:
    # _power_and_sum for K values c = bp[:K] sharing one k, the loops over j innermost so
    # that they vectorize: p = c^k, s = c + ... + c^k (bp and bs are consumed).
    cdef intp_t j
    for j in range(K):
        p[j] = 1.0
        s[j] = 0.0
        bs[j] = bp[j]
    while k > 0:
        if k & 1:
            for j in range(K):
                s[j] = s[j] + p[j] * bs[j]
                p[j] = p[j] * bp[j]
        k >>= 1
        if k:
            for j in range(K):
                bs[j] = bs[j] + bp[j] * bs[j]
                bp[j] = bp[j] * bp[j]


cdef inline float64_t _prox_closed_form(float64_t w, float64_t ck, float64_t geo,
                                        float64_t thr) noexcept nogil:
    # k proximal steps given ck = c^k, geo = c + ... + c^k and the per-step soft-threshold
    # thr = lr * l1 (see the header).
    cdef float64_t a
    if thr > 0:
        a = ck * fabs(w) - thr * geo
        if not a > 0:
            return 0.0
        return a if w > 0 else -a
    return w * ck


cdef inline float64_t _prox_one(float64_t w, float64_t lr, float64_t l1,
                                float64_t l2) noexcept nogil:
    # One proximal step, written as its definition: soft-threshold, then scale.
    cdef float64_t a
    if l1 > 0:
        a = fabs(w) - lr * l1
        if not a > 0:
            return 0.0
        w = a if w > 0 else -a
    if l2 > 0:
        w = w / (1.0 + lr * l2)
    return w


cdef inline void _catch_up_row(float64_t* w, const acc_t* acc, intp_t K, intp_t k,
                               bint adagrad, float64_t rate, float64_t eps, float64_t l1,
                               float64_t l2, float64_t* scratch) noexcept nogil:
    # Apply k >= 1 owed proximal steps to the K weights of one row.
    # SGD: every coordinate at the scalar rate ``rate``: one power and sum for the row.
    # AdaGrad: coordinate j at its own rate lr = rate / d, d = eps + sqrt(acc[j]) (acc has not
    # changed since the row was last used, so all the owed steps had that rate; lr = 0, i.e.
    # the identity c = 1, thr = 0, while acc[j] = 0). Written with d, c = 1 / (1 + lr * l2) =
    # d / (d + rate * l2) costs one division instead of two. The coordinates share k, so the
    # powering runs over the whole row at once, branch-free (scratch: 5 K doubles).
    cdef intp_t j
    cdef float64_t a, d, ck = 1.0, geo = <float64_t>k
    cdef float64_t* p = scratch
    cdef float64_t* s = scratch + K
    cdef float64_t* bp = scratch + 2 * K
    cdef float64_t* bs = scratch + 3 * K
    cdef float64_t* thr = scratch + 4 * K
    if adagrad:
        for j in range(K):
            a = acc[j]
            d = eps + sqrt(a)
            bp[j] = d / (d + rate * l2) if a > 0 else 1.0
            thr[j] = rate * l1 / d if a > 0 else 0.0
        _power_and_sum_rows(bp, bs, p, s, k, K)
        for j in range(K):
            # _prox_closed_form without branches: thr = 0 gives w * c^k exactly
            d = p[j] * fabs(w[j]) - thr[j] * s[j]
            w[j] = copysign(d if d > 0 else 0.0, w[j])
    elif rate > 0:
        if l2 > 0:
            _power_and_sum(1.0 / (1.0 + rate * l2), k, &ck, &geo)
        for j in range(K):
            w[j] = _prox_closed_form(w[j], ck, geo, rate * l1)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------
cdef inline intp_t _local_column(intp_t f, intp_t* local_of, intp_t* cols,
                                 intp_t* n_cols) noexcept nogil:
    # The batch's local id of feature f, the next one (and f recorded in cols) on its first
    # occurrence: the column numbering both batch gathers share.
    cdef intp_t loc = local_of[f]
    if loc < 0:
        loc = n_cols[0]
        local_of[f] = loc
        cols[loc] = f
        n_cols[0] += 1
    return loc


def batch_csr(const index_t[::1] indptr, const index_t[::1] indices,
              const float64_t[::1] data, const intp_t[::1] offsets, const intp_t[::1] y,
              const intp_t[::1] seqs, intp_t[::1] local_of, out_index_t[::1] b_indptr,
              out_index_t[::1] b_indices, float64_t[::1] b_data, intp_t[::1] b_y,
              intp_t[::1] b_offsets, intp_t[::1] cols):
    """Gather a mini-batch of sequences with its feature columns renumbered 0, 1, 2, ...

    Local ids are given in order of first occurrence, so the batch's CSR matrix indexes the
    rows ``W[cols]``; per local row the nonzeros keep the corpus order, so sums over tokens
    come out as with any other numbering.

    Parameters
    ----------
    indptr, indices, data : the corpus' CSR matrix X (N, n_features), int32 or int64 indices
        ``data`` of length 0 means binary features: every stored value is 1.0 (a corpus of
        indicator features then needs no (nnz,) array of ones).
    offsets : (n+1,) int64
        Sequence i is tokens ``offsets[i]:offsets[i+1]`` of X.
    y : (N,) int64
        Gold labels.
    seqs : (n_b,) int64
        The batch's sequence ids, in batch order.
    local_of : (n_features,) int64 scratch
        Must be all -1 on entry; it is all -1 again on return (only the batch's entries are
        touched, so a batch costs its own size, not n_features).
    b_indptr : (>= N_b + 1,) int32 or int64, b_indices : (>= nnz_b,) same dtype,
    b_data : (>= nnz_b,) float64
        Out: the batch's CSR matrix (N_b, n_cols) with local column ids.
    b_y : (>= N_b,) int64, b_offsets : (>= n_b + 1,) int64
        Out: the batch's labels and sequence offsets (from 0).
    cols : (>= n_cols,) int64
        Out: ``cols[l]`` is the feature of local column l.

    The caller sizes the outputs for the batch (N_b tokens, nnz_b nonzeros, n_cols <=
    min(nnz_b, n_features) distinct features) and checks the ids.

    Returns
    -------
    (N_b, nnz_b, n_cols) : tuple of int
    """
    cdef intp_t n_b = seqs.shape[0]
    cdef intp_t i, s, t, loc
    cdef intp_t n_tok = 0, nnz = 0, n_cols = 0
    cdef index_t p
    cdef bint ones = data.shape[0] == 0
    with nogil:
        b_indptr[0] = 0
        b_offsets[0] = 0
        for i in range(n_b):
            s = seqs[i]
            for t in range(offsets[s], offsets[s + 1]):
                b_y[n_tok] = y[t]
                for p in range(indptr[t], indptr[t + 1]):
                    loc = _local_column(indices[p], &local_of[0], &cols[0], &n_cols)
                    b_indices[nnz] = <out_index_t>loc
                    b_data[nnz] = 1.0 if ones else data[p]
                    nnz += 1
                n_tok += 1
                b_indptr[n_tok] = <out_index_t>nnz
            b_offsets[i + 1] = n_tok
        for i in range(n_cols):
            local_of[cols[i]] = -1
    return n_tok, nnz, n_cols


def batch_csr_factored(const int64_t[::1] s_indptr, const int32_t[::1] s_indices,
                       const int64_t[::1] phi_indptr, const int32_t[::1] phi_indices,
                       const intp_t[::1] offsets, const intp_t[::1] y, const intp_t[::1] seqs,
                       intp_t[::1] local_of, out_index_t[::1] b_indptr,
                       out_index_t[::1] b_indices, float64_t[::1] b_data, intp_t[::1] b_y,
                       intp_t[::1] b_offsets, intp_t[::1] cols):
    """:func:`batch_csr` for a corpus kept factored, ``X = S @ Phi`` (binary).

    Token t's row of X is the concatenation of the rows of Phi of its slots, S's row t (for
    tagging features one slot per template group, groups in order, which is exactly the
    sorted row :func:`batch_csr` reads from X itself: the batch comes out identical, without
    X ever being stored).

    ``s_indptr`` (N + 1,) int64, ``s_indices`` int32: S's CSR arrays; ``phi_indptr``
    (n_slots + 1,) int64, ``phi_indices`` int32: Phi's; the other arguments and the result as
    :func:`batch_csr` (``b_data`` is all ones).
    """
    cdef intp_t n_b = seqs.shape[0]
    cdef intp_t i, s, t, loc, slot
    cdef intp_t n_tok = 0, nnz = 0, n_cols = 0
    cdef int64_t p, q
    with nogil:
        b_indptr[0] = 0
        b_offsets[0] = 0
        for i in range(n_b):
            s = seqs[i]
            for t in range(offsets[s], offsets[s + 1]):
                b_y[n_tok] = y[t]
                for q in range(s_indptr[t], s_indptr[t + 1]):
                    slot = s_indices[q]
                    for p in range(phi_indptr[slot], phi_indptr[slot + 1]):
                        loc = _local_column(phi_indices[p], &local_of[0], &cols[0], &n_cols)
                        b_indices[nnz] = <out_index_t>loc
                        b_data[nnz] = 1.0
                        nnz += 1
                n_tok += 1
                b_indptr[n_tok] = <out_index_t>nnz
            b_offsets[i + 1] = n_tok
        for i in range(n_cols):
            local_of[cols[i]] = -1
    return n_tok, nnz, n_cols


def catch_up_rows(float64_t[:, ::1] W, const intp_t[::1] cols, intp_t[::1] last, intp_t upto,
                  const acc_t[:, ::1] acc, bint adagrad, float64_t rate, float64_t eps,
                  float64_t l1, float64_t l2, float64_t[:, ::1] out_rows, int n_threads=1):
    """Bring the rows ``cols`` of W up to date as of step ``upto`` (and copy them out).

    Row r was last updated at step ``last[r]``; the ``upto - last[r]`` proximal steps it has
    missed since (steps whose gradient did not involve it) are applied in closed form, in
    place, and ``last[r]`` becomes ``upto``. Nothing is owed without regularization
    (l1 = l2 = 0).

    Parameters
    ----------
    W : (n_rows, K) float64, updated in place
    cols : (R,) int64
        Distinct row ids.
    last : (n_rows,) int64, updated in place
    upto : int
        The last step already taken (the current step - 1).
    acc : (n_rows, K) float32 or float64
        AdaGrad's sums of squared gradients (read only when ``adagrad``; any (0, K) array
        otherwise). Adam passes its second moments with ``rate`` and ``eps`` scaled by
        ``sqrt(1 - beta2^t)``, which gives its per-coordinate rate.
    adagrad : bool
        Per-coordinate rates ``rate / (eps + sqrt(acc))`` (0 where acc = 0) instead of the
        scalar rate ``rate``.
    rate, eps, l1, l2 : float
    out_rows : (>= R, K) or (0, K) float64
        Out: the caught-up rows, ``out_rows[i] = W[cols[i]]``; not written when it has no rows.
    n_threads : int
        Rows are split over this many threads when there are enough of them (distinct rows:
        no two threads write the same memory).
    """
    cdef intp_t R = cols.shape[0]
    cdef intp_t K = W.shape[1]
    cdef intp_t i, j, r, k
    cdef bint regularized = l1 > 0 or l2 > 0
    cdef bint copy = out_rows.shape[0] > 0
    cdef float64_t* scratch
    cdef int nt = _team(n_threads, R * K)
    if R == 0:
        return
    with nogil, parallel(num_threads=nt):
        scratch = <float64_t*>malloc((5 * K + 1) * sizeof(float64_t))
        # every thread of the team must meet the work-sharing loop, scratch or not
        for i in prange(R, schedule="static"):
            if scratch == NULL:
                continue
            if i + _AHEAD < R:
                febm_prefetch_row(&W[0, 0], cols[i + _AHEAD], K)
                if adagrad:
                    febm_prefetch_entries(&acc[0, 0], cols[i + _AHEAD], K, sizeof(acc_t))
            r = cols[i]
            k = upto - last[r]
            if regularized and k > 0:
                _catch_up_row(&W[r, 0], &acc[r, 0] if adagrad else NULL, K, k, adagrad,
                              rate, eps, l1, l2, scratch)
            last[r] = upto
            if copy:
                for j in range(K):
                    out_rows[i, j] = W[r, j]
        free(scratch)
    # a failed malloc of 5K doubles leaves rows un-caught-up; it cannot pass silently
    for i in range(R):
        if last[cols[i]] != upto:
            raise MemoryError()


def catch_up_all(float64_t[:, ::1] W, intp_t[::1] last, intp_t upto,
                 const acc_t[:, ::1] acc, bint adagrad, float64_t rate, float64_t eps,
                 float64_t l1, float64_t l2):
    """Bring every row of W up to date as of step ``upto`` (end of an epoch).

    As :func:`catch_up_rows` over all rows, without the copy: afterwards W is the true
    iterate and ``last[:] == upto``. ``W`` (n_rows, K), ``last`` (n_rows,), ``acc``
    (n_rows, K) float32 or float64, or (0, K) when not ``adagrad``.
    """
    cdef intp_t n_rows = W.shape[0]
    cdef intp_t K = W.shape[1]
    cdef intp_t r, k
    cdef bint regularized = l1 > 0 or l2 > 0
    cdef float64_t* scratch = <float64_t*>malloc((5 * K + 1) * sizeof(float64_t))
    if scratch == NULL:
        raise MemoryError()
    with nogil:
        for r in range(n_rows):
            k = upto - last[r]
            if regularized and k > 0:
                _catch_up_row(&W[r, 0], &acc[r, 0] if adagrad else NULL, K, k, adagrad,
                              rate, eps, l1, l2, scratch)
            last[r] = upto
    free(scratch)


def adagrad_step(float64_t[:, ::1] W, acc_t[:, ::1] acc, const float64_t[:, ::1] G,
                 const intp_t[::1] cols, intp_t[::1] last, intp_t step, float64_t eta,
                 float64_t eps, float64_t n_b, float64_t l1, float64_t l2, int n_threads=1):
    """One AdaGrad step with a proximal step on the rows ``cols``, in one pass.

    Per coordinate of row r = cols[i]: g = G[i] / n_b (the batch mean), acc[r] += g^2,
    lr = eta / (eps + sqrt(acc[r])) (0 where acc[r] = 0), W[r] -= lr * g, then the proximal
    step of rate lr. ``last[r]`` becomes ``step``.

    Parameters
    ----------
    W : (n_rows, K) float64, updated in place
    acc : (n_rows, K) float32 or float64, updated in place (each sum rounded to its dtype
        before the step's rate is taken of it, as catch_up_rows later reads it)
    G : (>= R, K) float64
        Gradient of the batch's summed loss with respect to the rows ``W[cols]``.
    cols : (R,) int64, distinct row ids
    last : (n_rows,) int64, updated in place
    step : int
    eta, eps, n_b, l1, l2 : float
        Base rate, AdaGrad's epsilon, the number of sequences in the batch, regularization.
    n_threads : int
        Rows split over threads when there are enough of them.
    """
    cdef intp_t R = cols.shape[0]
    cdef intp_t K = W.shape[1]
    cdef intp_t i, j, r
    cdef float64_t g, a, d, v, t
    cdef float64_t* w
    cdef acc_t* ac
    with nogil:
        for i in prange(R, num_threads=_team(n_threads, R * K), schedule="static"):
            if i + _AHEAD < R:
                febm_prefetch_row(&W[0, 0], cols[i + _AHEAD], K)
                febm_prefetch_entries(&acc[0, 0], cols[i + _AHEAD], K, sizeof(acc_t))
            r = cols[i]
            w = &W[r, 0]
            ac = &acc[r, 0]
            for j in range(K):
                g = G[i, j] / n_b
                ac[j] = <acc_t>(ac[j] + g * g)
                a = ac[j]
                # With d = eps + sqrt(acc) the rate is lr = eta / d, and the step, the
                # soft-threshold by lr * l1 and the scaling 1 / (1 + lr * l2) multiply out to
                # (soft(w d - eta g, eta l1)) / (d + eta l2): one division per coordinate.
                # Branch-free so that the row vectorizes: the soft-threshold by 0 is the
                # identity, and where acc = 0 (rate 0, g = 0) w keeps its value.
                d = eps + sqrt(a)
                v = w[j] * d - eta * g
                t = fabs(v) - eta * l1
                v = copysign(t if t > 0 else 0.0, v) / (d + eta * l2)
                w[j] = v if a > 0 else w[j]
            last[r] = step


def adam_step(float64_t[:, ::1] W, float64_t[:, ::1] M, float64_t[:, ::1] V,
              const float64_t[:, ::1] G, const intp_t[::1] cols, intp_t[::1] last,
              intp_t step, float64_t eta, float64_t beta1, float64_t beta2, float64_t eps,
              intp_t t_adam, float64_t n_b, float64_t l1, float64_t l2, int n_threads=1):
    """One Adam step (Kingma and Ba 2015) with a proximal step on the rows ``cols``.

    Per coordinate of row r = cols[i]: g = G[i] / n_b, m = beta1 m + (1 - beta1) g,
    v = beta2 v + (1 - beta2) g^2, and with the bias-corrected m^ = m / (1 - beta1^t),
    v^ = v / (1 - beta2^t) and the rate lr = eta / (eps + sqrt(v^)): W[r] = prox_lr(W[r] -
    lr m^) (soft-threshold by lr * l1, then scale by 1 / (1 + lr * l2)). Rows not in the
    batch keep their moments (lazy Adam: only the rows a batch touches move).

    Parameters
    ----------
    W, M, V : (n_rows, K) float64, updated in place
    G : (>= R, K) float64, gradient of the batch's summed loss at ``W[cols]``
    cols : (R,) int64 distinct rows; last : (n_rows,) int64, updated; step : int
    eta, beta1, beta2, eps : float
    t_adam : int
        The 1-based Adam step (for the bias corrections).
    n_b, l1, l2 : float
    n_threads : int
    """
    cdef intp_t R = cols.shape[0]
    cdef intp_t K = W.shape[1]
    cdef intp_t i, j, r
    cdef float64_t g, m, v, d, u, t
    cdef float64_t bc1 = 1.0 - beta1 ** t_adam
    cdef float64_t bc2 = 1.0 - beta2 ** t_adam
    cdef float64_t* w
    with nogil:
        for i in prange(R, num_threads=_team(n_threads, R * K), schedule="static"):
            r = cols[i]
            w = &W[r, 0]
            for j in range(K):
                g = G[i, j] / n_b
                m = beta1 * M[r, j] + (1.0 - beta1) * g
                v = beta2 * V[r, j] + (1.0 - beta2) * g * g
                M[r, j] = m
                V[r, j] = v
                # as in adagrad_step: (soft(w d - eta m^, eta l1)) / (d + eta l2)
                d = eps + sqrt(v / bc2)
                u = w[j] * d - eta * (m / bc1)
                t = fabs(u) - eta * l1
                w[j] = copysign(t if t > 0 else 0.0, u) / (d + eta * l2)
            last[r] = step


def sgd_step(float64_t[:, ::1] W, const float64_t[:, ::1] G, const intp_t[::1] cols,
             intp_t[::1] last, intp_t step, float64_t lr, float64_t n_b, float64_t l1,
             float64_t l2, int n_threads=1):
    """One SGD step of rate ``lr`` with a proximal step on the rows ``cols``, in one pass.

    ``W[r] = prox(W[r] - lr * G[i] / n_b)`` for r = cols[i]; ``last[r]`` becomes ``step``.
    Shapes as in :func:`adagrad_step`.
    """
    cdef intp_t R = cols.shape[0]
    cdef intp_t K = W.shape[1]
    cdef intp_t i, j, r
    cdef float64_t* w
    with nogil:
        for i in prange(R, num_threads=_team(n_threads, R * K), schedule="static"):
            r = cols[i]
            w = &W[r, 0]
            for j in range(K):
                w[j] = _prox_one(w[j] - lr * (G[i, j] / n_b), lr, l1, l2)
            last[r] = step


def perceptron_step(float64_t[:, ::1] W, float64_t[:, ::1] U, const float64_t[:, ::1] G,
                    const intp_t[::1] cols, float64_t lr, float64_t weight, int n_threads=1):
    """The averaged perceptron's step on the rows ``cols``, with its averaging sum.

    ``d = -lr * G[i]``, ``W[r] += d`` and ``U[r] += weight * d`` for r = cols[i], where
    ``weight = t - 1`` for step t (1-based; the number of steps before this one). After T
    steps from w_0, ``W - U / T`` is the average ``(w_1 + ... + w_T) / T`` of the weights after
    each step (Collins 2002; w_0 is not counted), since ``sum_t w_t = T w_T - sum_t (t - 1)
    d_t`` (the lazy averaging trick): untouched rows cost nothing.

    Parameters
    ----------
    W, U : (n_rows, K) float64, updated in place
    G : (>= R, K) float64
        Gradient of the batch's summed loss with respect to ``W[cols]``.
    cols : (R,) int64, distinct row ids
    lr, weight : float
    """
    cdef intp_t R = cols.shape[0]
    cdef intp_t K = W.shape[1]
    cdef intp_t i, j, r
    cdef float64_t d
    cdef float64_t neg_lr = -lr
    with nogil:
        for i in prange(R, num_threads=_team(n_threads, R * K), schedule="static"):
            r = cols[i]
            for j in range(K):
                d = neg_lr * G[i, j]
                W[r, j] += d
                U[r, j] += weight * d
