# Sparse-times-dense kernels for the learning objective (issue [learn]).
#
# The chain architecture's emission energies are U = X @ W (X: tokens x features, CSR; W:
# features x labels, dense) and the gradient is X^T @ G. Both are one kernel, "CSR times
# dense": X^T @ G is computed as (X^T in CSR) @ G, with the transpose built once by the caller
# (scipy's tocsc()/transpose), so every output row belongs to exactly one thread and no atomics
# or per-thread copies of the (features x labels) output are needed.
#
# Index dtype: indptr and indices are int32 or int64 (one fused type, as scipy keeps both in
# the same dtype); values and dense operands are float64, C-contiguous.
from cython.parallel cimport prange
from _typedefs cimport float64_t, intp_t
from libc.stdint cimport int32_t, int64_t

ctypedef fused index_t:
    int32_t
    int64_t


cdef extern from "_sparse_rows.h" nogil:
    void febm_csr_row_i32(const int32_t* idx, const float64_t* val, int64_t nnz,
                          const float64_t* dense, int64_t K, float64_t* out)
    void febm_csr_row_i64(const int64_t* idx, const float64_t* val, int64_t nnz,
                          const float64_t* dense, int64_t K, float64_t* out)
    void febm_sum_rows_i32(const int32_t* idx, int64_t nnz, const float64_t* dense, int64_t K,
                           float64_t* out)
    void febm_sum_rows_i64(const int64_t* idx, int64_t nnz, const float64_t* dense, int64_t K,
                           float64_t* out)
    void febm_csr_row_acc_i32(const int32_t* idx, const float64_t* val, int64_t nnz,
                              const float64_t* dense, int64_t K, float64_t* out)
    void febm_csr_row_acc_i64(const int64_t* idx, const float64_t* val, int64_t nnz,
                              const float64_t* dense, int64_t K, float64_t* out)
    void febm_sum_rows_acc_i32(const int32_t* idx, int64_t nnz, const float64_t* dense,
                               int64_t K, float64_t* out)
    void febm_sum_rows_acc_i64(const int64_t* idx, int64_t nnz, const float64_t* dense,
                               int64_t K, float64_t* out)


# Below this many (row x column) outputs a parallel region costs more than it saves.
cdef intp_t _MIN_PARALLEL_WORK = 16384


cdef int _team(int n_threads, intp_t work) noexcept nogil:
    return n_threads if work >= _MIN_PARALLEL_WORK else 1


def csr_dense_matmul(const index_t[::1] indptr, const index_t[::1] indices,
                     const float64_t[::1] data, const float64_t[:, ::1] dense,
                     float64_t[:, ::1] out, int n_threads, bint accumulate=False):
    """out = A @ dense (or out += A @ dense with ``accumulate``) for A in CSR (n_rows x n_cols),
    dense (n_cols, K), out (n_rows, K).

    Rows of ``out`` are split over ``n_threads`` OpenMP threads (dynamic chunks, since row
    lengths can be very unequal, e.g. the rows of a transposed Zipf-distributed feature
    matrix). The caller has checked shapes and that every column index is in [0, n_cols). An
    empty ``data`` means every stored value is 1 (a binary matrix kept without its array of
    ones). The per-row loop is C (``_sparse_rows.h``), compiled with an AVX2 clone where the
    compiler supports function multiversioning.
    """
    cdef intp_t n_rows = out.shape[0]
    cdef intp_t K = out.shape[1]
    cdef intp_t i
    cdef index_t p0
    cdef bint binary = data.shape[0] == 0
    if n_rows == 0 or K == 0:
        return
    if dense.shape[0] == 0 or indptr[n_rows] == 0:
        if not accumulate:
            out[:, :] = 0.0
        return
    with nogil:
        for i in prange(n_rows, num_threads=_team(n_threads, n_rows * K), schedule="dynamic",
                        chunksize=64):
            p0 = indptr[i]
            if index_t is int32_t:
                if binary:
                    if accumulate:
                        febm_sum_rows_acc_i32(&indices[0] + p0, indptr[i + 1] - p0,
                                              &dense[0, 0], K, &out[i, 0])
                    else:
                        febm_sum_rows_i32(&indices[0] + p0, indptr[i + 1] - p0, &dense[0, 0],
                                          K, &out[i, 0])
                elif accumulate:
                    febm_csr_row_acc_i32(&indices[0] + p0, &data[0] + p0, indptr[i + 1] - p0,
                                         &dense[0, 0], K, &out[i, 0])
                else:
                    febm_csr_row_i32(&indices[0] + p0, &data[0] + p0, indptr[i + 1] - p0,
                                     &dense[0, 0], K, &out[i, 0])
            else:
                if binary:
                    if accumulate:
                        febm_sum_rows_acc_i64(&indices[0] + p0, indptr[i + 1] - p0,
                                              &dense[0, 0], K, &out[i, 0])
                    else:
                        febm_sum_rows_i64(&indices[0] + p0, indptr[i + 1] - p0, &dense[0, 0],
                                          K, &out[i, 0])
                elif accumulate:
                    febm_csr_row_acc_i64(&indices[0] + p0, &data[0] + p0, indptr[i + 1] - p0,
                                         &dense[0, 0], K, &out[i, 0])
                else:
                    febm_csr_row_i64(&indices[0] + p0, &data[0] + p0, indptr[i + 1] - p0,
                                     &dense[0, 0], K, &out[i, 0])


def csr_t_dense_scatter(const index_t[::1] indptr, const index_t[::1] indices,
                        const float64_t[::1] data, const float64_t[:, ::1] dense,
                        float64_t[:, ::1] out, int n_threads=1):
    """out += A^T @ dense for A in CSR (n_rows x n_cols), dense (n_rows, K), out (n_cols, K).

    A scatter, no transpose needed: meant for mini-batches, where building the transpose
    would cost more than the product. ``out`` is accumulated into, not overwritten. With
    several threads each owns a range of the K columns, so no two write the same entry
    (and the sums come out the same, bit for bit, for any number of threads). An empty
    ``data`` means every stored value is 1.
    """
    cdef intp_t n_rows = dense.shape[0]
    cdef intp_t K = dense.shape[1]
    cdef intp_t i, k, part, k0, k1, n_parts
    cdef index_t p
    cdef float64_t v
    cdef float64_t* orow
    cdef const float64_t* drow
    cdef bint binary = data.shape[0] == 0
    if n_rows == 0 or K == 0:
        return
    n_parts = _team(n_threads, indptr[n_rows] * K)
    if n_parts > K:
        n_parts = K
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            k0 = part * K // n_parts
            k1 = (part + 1) * K // n_parts
            for i in range(n_rows):
                drow = &dense[i, 0]
                for p in range(indptr[i], indptr[i + 1]):
                    v = 1.0 if binary else data[p]
                    orow = &out[indices[p], 0]
                    for k in range(k0, k1):
                        orow[k] += v * drow[k]


def csr_t_label_scatter(const index_t[::1] indptr, const index_t[::1] indices,
                        const float64_t[::1] data, const intp_t[:, ::1] labels,
                        const float64_t[:, ::1] weights, float64_t[:, ::1] out,
                        int n_threads, bint accumulate=False):
    """out = A @ G (or out += A @ G with ``accumulate``) where G (n_cols, K) is sparse with C
    entries per row, given as labels.

    ``A`` is CSR (n_rows x n_cols) -- in practice the transpose X^T of a token-feature matrix
    -- and row t of G is ``sum_c weights[t, c] * onehot(labels[t, c])``: the gradient of a
    margin loss with respect to the emission energies has one entry at the gold label and one
    at the most offending label, so the product costs C instead of K operations per nonzero.
    ``labels`` (n_cols, C) int64 in [0, K), ``weights`` (n_cols, C) float64, ``out``
    (n_rows, K); rows are split over threads. An empty ``data`` means all ones, as in
    :func:`csr_dense_matmul`.
    """
    cdef intp_t n_rows = out.shape[0]
    cdef intp_t K = out.shape[1]
    cdef intp_t C = labels.shape[1]
    cdef intp_t i, k, c, t
    cdef index_t p, p_end
    cdef float64_t v = 1.0
    cdef float64_t* orow
    cdef bint binary = data.shape[0] == 0
    if n_rows == 0 or K == 0:
        return
    with nogil:
        for i in prange(n_rows, num_threads=_team(n_threads, n_rows * K), schedule="dynamic",
                        chunksize=64):
            orow = &out[i, 0]
            if not accumulate:
                for k in range(K):
                    orow[k] = 0.0
            p_end = indptr[i + 1]
            for p in range(indptr[i], p_end):
                v = 1.0 if binary else data[p]
                t = indices[p]
                for c in range(C):
                    orow[labels[t, c]] += v * weights[t, c]


def csr_label_scatter_t(const index_t[::1] indptr, const index_t[::1] indices,
                        const float64_t[::1] data, const intp_t[:, ::1] labels,
                        const float64_t[:, ::1] weights, float64_t[:, ::1] out,
                        int n_threads=1):
    """out += A^T @ G with G given by labels/weights as in :func:`csr_t_label_scatter`.

    No transpose: ``A`` (n_rows x n_cols) CSR, ``labels``/``weights`` (n_rows, C),
    ``out`` (n_cols, K) accumulated into. For mini-batches. With several threads each owns a
    range of the K labels (so no two write the same entry, and the sums are the same for any
    number of threads). An empty ``data`` means every stored value is 1.
    """
    cdef intp_t n_rows = labels.shape[0]
    cdef intp_t C = labels.shape[1]
    cdef intp_t K = out.shape[1]
    cdef intp_t i, c, lab, part, k0, k1, n_parts
    cdef index_t p
    cdef float64_t v
    cdef bint binary = data.shape[0] == 0
    if n_rows == 0 or K == 0:
        return
    n_parts = _team(n_threads, indptr[n_rows] * C * 8)
    if n_parts > K:
        n_parts = K
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            k0 = part * K // n_parts
            k1 = (part + 1) * K // n_parts
            for i in range(n_rows):
                for c in range(C):
                    lab = labels[i, c]
                    if lab < k0 or lab >= k1:
                        continue
                    for p in range(indptr[i], indptr[i + 1]):
                        v = 1.0 if binary else data[p]
                        out[indices[p], lab] += v * weights[i, c]


def scale_add(float64_t[::1] y, float64_t a, const float64_t[::1] x, float64_t b,
              int n_threads):
    """y = a * y + b * x in one parallel pass (the objective's 1/n scaling and its L2 term).

    ``x`` and ``y`` have the same length (checked by the caller).
    """
    cdef intp_t n = y.shape[0]
    cdef intp_t i
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            y[i] = a * y[i] + b * x[i]


# ---------------------------------------------------------------------------------------------
# Dense vector kernels for L-BFGS over millions of weights: each fuses an update with the dot
# product the two-loop recursion needs next, so one pass over memory does both.
# ---------------------------------------------------------------------------------------------
def vec_dot(const float64_t[::1] x, const float64_t[::1] y, int n_threads):
    """x . y (same length, checked by the caller)."""
    cdef intp_t n = x.shape[0]
    cdef intp_t i
    cdef float64_t total = 0.0
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            total += x[i] * y[i]
    return total


def vec_axpy_dot(float64_t[::1] y, float64_t a, const float64_t[::1] x,
                 const float64_t[::1] z, int n_threads):
    """y += a * x, then return z . y (the updated y), in one pass."""
    cdef intp_t n = y.shape[0]
    cdef intp_t i
    cdef float64_t v
    cdef float64_t total = 0.0
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            v = y[i] + a * x[i]
            y[i] = v
            total += z[i] * v
    return total


def vec_scale_dot(float64_t[::1] y, float64_t a, const float64_t[::1] z, int n_threads):
    """y *= a, then return z . y, in one pass."""
    cdef intp_t n = y.shape[0]
    cdef intp_t i
    cdef float64_t v
    cdef float64_t total = 0.0
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            v = a * y[i]
            y[i] = v
            total += z[i] * v
    return total


def vec_lincomb(float64_t[::1] out, const float64_t[::1] x, float64_t a,
                const float64_t[::1] d, int n_threads):
    """out = x + a * d."""
    cdef intp_t n = out.shape[0]
    cdef intp_t i
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            out[i] = x[i] + a * d[i]


def vec_sub_dots(float64_t[::1] out, const float64_t[::1] a, const float64_t[::1] b,
                 const float64_t[::1] s, int n_threads):
    """out = a - b; return (s . out, out . out), in one pass."""
    cdef intp_t n = out.shape[0]
    cdef intp_t i
    cdef float64_t v
    cdef float64_t t1 = 0.0
    cdef float64_t t2 = 0.0
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            v = a[i] - b[i]
            out[i] = v
            t1 += s[i] * v
            t2 += v * v
    return t1, t2
