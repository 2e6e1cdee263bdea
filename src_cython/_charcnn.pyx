# Character convolution with max-pooling over each word (factorebm.charcnn.CharCNN).
#
# A word type u is a sequence of L character ids c_0..c_{L-1}. A convolution of width k over
# character embeddings E (n_chars, e) with kernel K_j (e, F) per tap j = 0..k-1, "same"
# padding (lo = (k - 1) // 2 positions before, zero embeddings outside the word), is
#
#   z[p, f] = sum_j (E[c_{p+j-lo}] @ K_j)[f] = sum_j P[c_{p+j-lo}, j, f],   P = E @ [K_0 .. K_{k-1}]
#
# so the Python side computes the per-character tap projections P (n_chars, k*F) with one
# small matrix product per batch, and a position costs k*F additions here instead of k*e*F
# multiply-adds (a batch holds far more character positions than the alphabet has characters).
# The word's vector is the maximum over positions, m[f] = max_p z[p, f], and its argmax is
# kept for the backward pass, where the gradient of m reaches P at the argmax positions only.
#
# The loop over one word's positions is C (_charcnn.h), compiled with an AVX2 clone.
#
# Several widths run side by side: block b has width[b] taps of n_filters[b] columns each, its
# taps at columns tap_start[b] + j * n_filters[b] of P and its maxima at columns
# out_start[b] .. out_start[b] + n_filters[b] - 1 of the output.
#
# The Python side validates every array (ids in range, offsets increasing, shapes): the loops
# here run without bounds checks.
from cython.parallel cimport prange, threadid
from _typedefs cimport float64_t, intp_t
from libc.stdint cimport int32_t, int64_t


cdef extern from "_charcnn.h" nogil:
    void febm_conv_max_word(const float64_t* P, int64_t T, const int32_t* chars, int64_t L,
                            const int64_t* width, const int64_t* n_filters,
                            const int64_t* tap_start, const int64_t* out_start, int64_t B,
                            float64_t* acc, float64_t* out, int64_t* argmax)
    void febm_matmul_rows(const float64_t* A, const float64_t* B, float64_t* C, int64_t i0,
                          int64_t i1, int64_t K, int64_t N, int accumulate)
    void febm_matmul_tn_rows(const float64_t* A, const float64_t* B, float64_t* C, int64_t k0,
                             int64_t k1, int64_t M, int64_t K, int64_t N, int accumulate)

# Below this many multiply-adds a product runs on one thread: an OpenMP team costs more.
cdef intp_t _MIN_PARALLEL_WORK = 1 << 20


def conv_max(const float64_t[:, ::1] P, const int32_t[::1] chars,
             const intp_t[::1] char_offsets, const intp_t[::1] types,
             const intp_t[::1] width, const intp_t[::1] n_filters,
             const intp_t[::1] tap_start, const intp_t[::1] out_start,
             float64_t[:, ::1] work, float64_t[:, ::1] out, intp_t[:, ::1] argmax,
             int n_threads):
    """Max over positions of the convolution of each type in ``types``.

    Parameters
    ----------
    P : (n_chars, T) float64, tap projections (see the module comment)
    chars : (C,) int32, character ids (< n_chars) of every type, end to end
    char_offsets : (n_types + 1,) int64, type t is chars[char_offsets[t]:char_offsets[t+1]]
    types : (U,) int64, the types to compute (< n_types)
    width, n_filters, tap_start, out_start : (B,) int64, the width blocks
    work : (n_threads, max n_filters) float64 scratch
    out : (U, F_out) float64, out[u, out_start[b] + f] = max_p z[p, f] of block b
    argmax : (U, F_out) int64, the maximizing position (the first one on ties); -1 and out 0
        for a type without characters
    n_threads : int >= 1
    """
    cdef intp_t U = types.shape[0], B = width.shape[0], T = P.shape[1]
    cdef intp_t u, t, a
    cdef const int32_t* no_chars = NULL
    if U == 0:
        return
    for u in prange(U, nogil=True, num_threads=n_threads if U >= 64 else 1,
                    schedule="static"):
        t = types[u]
        a = char_offsets[t]
        febm_conv_max_word(&P[0, 0], T, &chars[a] if a < chars.shape[0] else no_chars,
                           char_offsets[t + 1] - a, &width[0], &n_filters[0], &tap_start[0],
                           &out_start[0], B, &work[threadid(), 0], &out[u, 0],
                           &argmax[u, 0])


def conv_max_backward(const float64_t[:, ::1] G, const intp_t[:, ::1] argmax,
                      const int32_t[::1] chars, const intp_t[::1] char_offsets,
                      const intp_t[::1] types, const intp_t[::1] width,
                      const intp_t[::1] n_filters, const intp_t[::1] tap_start,
                      const intp_t[::1] out_start, float64_t[:, ::1] dP):
    """dP += the gradient with respect to P of sum(G * out) for :func:`conv_max`'s ``out``.

    G and argmax are (U, F_out); dP is (n_chars, T), accumulated into. One thread: a type
    sends F_out * width entries only (its argmax positions), and characters repeat across
    types, so the rows of dP would be shared between threads.
    """
    cdef intp_t U = types.shape[0], B = width.shape[0]
    cdef intp_t u, b, t, a, L, k, F, lo, c0, o0, p, j, q, f
    cdef float64_t g
    with nogil:
        for u in range(U):
            t = types[u]
            a = char_offsets[t]
            L = char_offsets[t + 1] - a
            for b in range(B):
                k = width[b]
                F = n_filters[b]
                lo = (k - 1) // 2
                c0 = tap_start[b]
                o0 = out_start[b]
                for f in range(F):
                    p = argmax[u, o0 + f]
                    g = G[u, o0 + f]
                    if p < 0 or g == 0.0:
                        continue
                    for j in range(k):
                        q = p + j - lo
                        if q < 0 or q >= L:
                            continue
                        dP[chars[a + q], c0 + j * F + f] += g


def scatter_add_rows(const float64_t[:, ::1] src, const intp_t[::1] index,
                     float64_t[:, ::1] out):
    """out[index[r], :] += src[r, :] for every row r (index validated: < out.shape[0]).

    The backward pass of a row gather (np.take): many tokens share a word type."""
    cdef intp_t R = src.shape[0], D = src.shape[1], r, d
    cdef const float64_t* s
    cdef float64_t* o
    with nogil:
        for r in range(R):
            s = &src[r, 0]
            o = &out[index[r], 0]
            for d in range(D):
                o[d] += s[d]


cdef int _team(int n_threads, intp_t work, intp_t rows) noexcept nogil:
    if work < _MIN_PARALLEL_WORK or rows < 2:
        return 1
    return n_threads if n_threads < rows else <int>rows


def matmul(const float64_t[:, ::1] A, const float64_t[:, ::1] B, float64_t[:, ::1] C,
           bint transpose_a, bint accumulate, int n_threads):
    """C = op(A) @ B, or C += op(A) @ B with ``accumulate``; op(A) = A, or A.T with
    ``transpose_a``. op(A) (M, K), B (K, N), C (M, N), all C-contiguous (shapes checked by
    the caller). Rows of C are split over the threads."""
    cdef intp_t M = A.shape[1] if transpose_a else A.shape[0]
    cdef intp_t K = B.shape[0], N = B.shape[1]
    cdef int nt = _team(n_threads, M * K * N, M)
    cdef intp_t part, lo, hi, chunk = (M + nt - 1) // nt
    if M == 0 or N == 0:
        return
    if K == 0:
        if not accumulate:
            C[:, :] = 0.0
        return
    for part in prange(nt, nogil=True, num_threads=nt, schedule="static"):
        lo = part * chunk
        hi = min(M, lo + chunk)
        if lo >= hi:
            continue
        if transpose_a:
            febm_matmul_tn_rows(&A[0, 0], &B[0, 0], &C[0, 0], lo, hi, K, M, N, accumulate)
        else:
            febm_matmul_rows(&A[0, 0], &B[0, 0], &C[0, 0], lo, hi, K, N, accumulate)
