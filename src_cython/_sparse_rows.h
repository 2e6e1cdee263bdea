/* Rows of CSR x dense products: out = sum_p val[p] * dense[idx[p], :], and its binary form.
 *
 * Kept in C so that GCC can compile them twice (function multiversioning): an AVX2/FMA clone
 * chosen at load time on CPUs that have it, and a portable default. The build flags stay
 * portable (no -march); only these K-long multiply-add loops are specialized. Plain IEEE
 * arithmetic: no fast-math, so +inf and NaN propagate as usual.
 */
#ifndef FACTOREBM_SPARSE_ROWS_H
#define FACTOREBM_SPARSE_ROWS_H
#include <stdint.h>

#include "_clones.h"

/* The stored value of nonzero p: val[p], or 1 for a binary matrix (the compiler folds the
   multiplications by 1.0 away: x * 1.0 == x exactly). */
#define FEBM_VAL(p) val[p]
#define FEBM_ONE(p) 1.0

/* out = (ZERO ? 0 : out) + sum_p V(p) * dense[idx[p], :], dense's entries of type DT (float
   ones are widened: the sums are double) */
#define FEBM_ROW_BODY_INIT(V, ZERO, DT)                                                   \
    int64_t p = 0, k;                                                                     \
    if (ZERO) for (k = 0; k < K; k++) out[k] = 0.0;                                       \
    /* four nonzeros per pass: out is loaded/stored a quarter as often */                 \
    for (; p + 4 <= nnz; p += 4) {                                                        \
        const double v0 = V(p), v1 = V(p + 1), v2 = V(p + 2), v3 = V(p + 3);              \
        const DT *d0 = dense + (int64_t)idx[p] * K, *d1 = dense + (int64_t)idx[p + 1] * K; \
        const DT *d2 = dense + (int64_t)idx[p + 2] * K, *d3 = dense + (int64_t)idx[p + 3] * K; \
        for (k = 0; k < K; k++)                                                           \
            out[k] += (v0 * d0[k] + v1 * d1[k]) + (v2 * d2[k] + v3 * d3[k]);              \
    }                                                                                     \
    for (; p < nnz; p++) {                                                                \
        const double v = V(p);                                                            \
        const DT *d = dense + (int64_t)idx[p] * K;                                        \
        for (k = 0; k < K; k++) out[k] += v * d[k];                                       \
    }
#define FEBM_ROW_BODY(V) FEBM_ROW_BODY_INIT(V, 1, double)
#define FEBM_ROW_BODY_ACC(V) FEBM_ROW_BODY_INIT(V, 0, double)

FEBM_CLONES
static void febm_csr_row_i32(const int32_t *idx, const double *val, int64_t nnz,
                             const double *dense, int64_t K, double *out) { FEBM_ROW_BODY(FEBM_VAL) }

FEBM_CLONES
static void febm_csr_row_i64(const int64_t *idx, const double *val, int64_t nnz,
                             const double *dense, int64_t K, double *out) { FEBM_ROW_BODY(FEBM_VAL) }

/* out = sum_p dense[idx[p], :]: a row of an indicator (all-ones) CSR matrix times dense. */
FEBM_CLONES
static void febm_sum_rows_i32(const int32_t *idx, int64_t nnz, const double *dense, int64_t K,
                              double *out) { FEBM_ROW_BODY(FEBM_ONE) }

FEBM_CLONES
static void febm_sum_rows_i64(const int64_t *idx, int64_t nnz, const double *dense, int64_t K,
                              double *out) { FEBM_ROW_BODY(FEBM_ONE) }

/* The same four, adding into out instead of overwriting it (gradients accumulate). */
FEBM_CLONES
static void febm_csr_row_acc_i32(const int32_t *idx, const double *val, int64_t nnz,
                                 const double *dense, int64_t K, double *out) { FEBM_ROW_BODY_ACC(FEBM_VAL) }

FEBM_CLONES
static void febm_csr_row_acc_i64(const int64_t *idx, const double *val, int64_t nnz,
                                 const double *dense, int64_t K, double *out) { FEBM_ROW_BODY_ACC(FEBM_VAL) }

FEBM_CLONES
static void febm_sum_rows_acc_i32(const int32_t *idx, int64_t nnz, const double *dense, int64_t K,
                                  double *out) { FEBM_ROW_BODY_ACC(FEBM_ONE) }

FEBM_CLONES
static void febm_sum_rows_acc_i64(const int64_t *idx, int64_t nnz, const double *dense, int64_t K,
                                  double *out) { FEBM_ROW_BODY_ACC(FEBM_ONE) }

/* out = sum_g rows[g][:]: n rows of length K, each given by a pointer, added in row order
   from 0.0 (the same bits as adding them one row at a time into a zeroed out). Eight columns
   at a time are held in registers across the rows and stored once: out is not reloaded and
   stored again per row, which the compiler must do when it cannot rule out that out
   overlaps a row. */
FEBM_CLONES
static void febm_add_rows(const double *const *rows, int64_t n, int64_t K, double *out) {
    int64_t g, k = 0, j;
    for (; k + 8 <= K; k += 8) {
        double acc[8];
        for (j = 0; j < 8; j++) acc[j] = 0.0;
        for (g = 0; g < n; g++) {
            const double *r = rows[g] + k;
            for (j = 0; j < 8; j++) acc[j] += r[j];
        }
        for (j = 0; j < 8; j++) out[k + j] = acc[j];
    }
    for (; k < K; k++) {
        double acc = 0.0;
        for (g = 0; g < n; g++) acc += rows[g][k];
        out[k] = acc;
    }
}

/* out = sum_p dense[idx[p], :] for a float32 dense matrix, summed in double (the stored
   weights of an ensemble's members are float32; the sums are not): febm_sum_rows_i32's
   additions in its order, so float32 weights give the sums of the weights widened. */
FEBM_CLONES
static void febm_sum_rows_f32_i32(const int32_t *idx, int64_t nnz, const float *dense, int64_t K,
                                  double *out) { FEBM_ROW_BODY_INIT(FEBM_ONE, 1, float) }

#endif
