/* The hot loop of the character convolution (_charcnn.pyx): one word's maxima over positions.
 *
 * Kept in C so that it can be compiled twice (FEBM_CLONES, _clones.h) and so that `restrict`
 * tells the compiler that the running sums, the maxima and the projections never overlap:
 * both F-long loops then vectorize, the maximum and its argmax as branch-free selects.
 */
#ifndef FACTOREBM_CHARCNN_H
#define FACTOREBM_CHARCNN_H
#include <math.h>
#include <stdint.h>

#include "_clones.h"

/* For each width block b: out[o0 + f] = max_p sum_j P[chars[p + j - lo], c0 + j F + f] over
 * the L positions p of the word (j < k, lo = (k - 1) / 2, characters outside the word left
 * out), argmax[o0 + f] the first maximizing p; a word without characters gets 0 and -1.
 *   P: (n_chars, T) row-major, T columns;  acc: scratch of max(n_filters) doubles. */
FEBM_CLONES
static void febm_conv_max_word(const double *restrict P, int64_t T,
                               const int32_t *restrict chars, int64_t L,
                               const int64_t *width, const int64_t *n_filters,
                               const int64_t *tap_start, const int64_t *out_start, int64_t B,
                               double *restrict acc, double *restrict out,
                               int64_t *restrict argmax)
{
    for (int64_t b = 0; b < B; b++) {
        const int64_t k = width[b], F = n_filters[b], lo = (k - 1) / 2, c0 = tap_start[b];
        double *restrict best = out + out_start[b];
        int64_t *restrict arg = argmax + out_start[b];
        if (L == 0) {
            for (int64_t f = 0; f < F; f++) { best[f] = 0.0; arg[f] = -1; }
            continue;
        }
        for (int64_t f = 0; f < F; f++) { best[f] = -INFINITY; arg[f] = 0; }
        for (int64_t p = 0; p < L; p++) {
            for (int64_t f = 0; f < F; f++) acc[f] = 0.0;
            for (int64_t j = 0; j < k; j++) {
                const int64_t q = p + j - lo;
                if (q < 0 || q >= L) continue;
                const double *restrict row = P + (int64_t)chars[q] * T + c0 + j * F;
                for (int64_t f = 0; f < F; f++) acc[f] += row[f];
            }
            for (int64_t f = 0; f < F; f++) {
                const int64_t up = acc[f] > best[f];
                best[f] = up ? acc[f] : best[f];
                arg[f] = up ? p : arg[f];
            }
        }
    }
}

/* Dense products for the small layers around the convolution (a few hundred rows by tens of
 * columns): OpenBLAS would spread each one over threads that then spin, contending with the
 * OpenMP threads of the other kernels; these run on the caller's threads. Four terms per pass
 * over an output row, which stays in cache. */

/* C[i, :] (+)= sum_k A[i, k] B[k, :] for rows i0 <= i < i1;  A (M, K), B (K, N), C (M, N). */
FEBM_CLONES
static void febm_matmul_rows(const double *restrict A, const double *restrict B,
                             double *restrict C, int64_t i0, int64_t i1, int64_t K, int64_t N,
                             int accumulate)
{
    for (int64_t i = i0; i < i1; i++) {
        double *restrict c = C + i * N;
        const double *restrict a = A + i * K;
        int64_t k = 0;
        if (!accumulate) for (int64_t n = 0; n < N; n++) c[n] = 0.0;
        for (; k + 4 <= K; k += 4) {
            const double a0 = a[k], a1 = a[k + 1], a2 = a[k + 2], a3 = a[k + 3];
            const double *restrict b0 = B + k * N, *restrict b1 = b0 + N;
            const double *restrict b2 = b1 + N, *restrict b3 = b2 + N;
            for (int64_t n = 0; n < N; n++)
                c[n] += (a0 * b0[n] + a1 * b1[n]) + (a2 * b2[n] + a3 * b3[n]);
        }
        for (; k < K; k++) {
            const double a0 = a[k];
            const double *restrict b0 = B + k * N;
            for (int64_t n = 0; n < N; n++) c[n] += a0 * b0[n];
        }
    }
}

/* C[k, :] (+)= sum_i A[i, k] B[i, :] for rows k0 <= k < k1;  A (M, K), B (M, N), C (K, N). */
FEBM_CLONES
static void febm_matmul_tn_rows(const double *restrict A, const double *restrict B,
                                double *restrict C, int64_t k0, int64_t k1, int64_t M,
                                int64_t K, int64_t N, int accumulate)
{
    for (int64_t k = k0; k < k1; k++) {
        double *restrict c = C + k * N;
        int64_t i = 0;
        if (!accumulate) for (int64_t n = 0; n < N; n++) c[n] = 0.0;
        for (; i + 4 <= M; i += 4) {
            const double a0 = A[i * K + k], a1 = A[(i + 1) * K + k];
            const double a2 = A[(i + 2) * K + k], a3 = A[(i + 3) * K + k];
            const double *restrict b0 = B + i * N, *restrict b1 = b0 + N;
            const double *restrict b2 = b1 + N, *restrict b3 = b2 + N;
            for (int64_t n = 0; n < N; n++)
                c[n] += (a0 * b0[n] + a1 * b1[n]) + (a2 * b2[n] + a3 * b3[n]);
        }
        for (; i < M; i++) {
            const double a0 = A[i * K + k];
            const double *restrict b0 = B + i * N;
            for (int64_t n = 0; n < N; n++) c[n] += a0 * b0[n];
        }
    }
}

#endif
