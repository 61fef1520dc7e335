/* rnncore's small GEMM for the per-step recurrent product.
 *
 *   C[M x N] (+)= A[M x K] . B[K x N]      row-major, leading dimensions lda, ldb, ldc
 *
 * Inside the time loop each thread multiplies its few batch rows (M = B / threads) by a recurrent
 * weight matrix (K = H, N = gates * H). BLAS is slow there: with OPENBLAS_CORETYPE=Haswell its
 * small-matrix path is off and a 1x128x512 sgemm costs ~23 us of overhead. This kernel has none:
 * B is the weight matrix laid out K rows of N (the caller transposes W_hh once per call), and a
 * 4 x RC_NR tile of C stays in registers while k runs, so each loaded row of B feeds 4 FMAs per
 * element. The fixed-size inner loops are written for GCC's vectoriser (-O3, -march=native).
 *
 * Every element C[i][j] is summed in the same order (k = 0 .. K-1, one fused multiply-add each)
 * whether it lies in a full tile or an edge, so results do not depend on how rows are split
 * between threads.
 */
#ifndef RNNCORE_RC_GEMM_H
#define RNNCORE_RC_GEMM_H
#include <stddef.h>

#define RC_MR 4

#define RC_DEFINE_GEMM(NAME, T, NR)                                                              \
static void NAME(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const T *A, ptrdiff_t lda,               \
                 const T *B, ptrdiff_t ldb, int accumulate, T *C, ptrdiff_t ldc)                 \
{                                                                                                \
    ptrdiff_t i0, j0, k, jj, ii;                                                                 \
    for (j0 = 0; j0 + NR <= N; j0 += NR) {                                                       \
        for (i0 = 0; i0 + RC_MR <= M; i0 += RC_MR) {                                             \
            T acc0[NR], acc1[NR], acc2[NR], acc3[NR];                                            \
            T *c0 = C + i0 * ldc + j0;                                                           \
            for (jj = 0; jj < NR; jj++) {                                                        \
                acc0[jj] = accumulate ? c0[jj] : (T)0;                                           \
                acc1[jj] = accumulate ? c0[ldc + jj] : (T)0;                                     \
                acc2[jj] = accumulate ? c0[2 * ldc + jj] : (T)0;                                 \
                acc3[jj] = accumulate ? c0[3 * ldc + jj] : (T)0;                                 \
            }                                                                                    \
            const T *a = A + i0 * lda;                                                           \
            for (k = 0; k < K; k++) {                                                            \
                const T *b = B + k * ldb + j0;                                                   \
                const T a0 = a[k], a1 = a[lda + k], a2 = a[2 * lda + k], a3 = a[3 * lda + k];    \
                for (jj = 0; jj < NR; jj++) {                                                    \
                    acc0[jj] += a0 * b[jj];                                                      \
                    acc1[jj] += a1 * b[jj];                                                      \
                    acc2[jj] += a2 * b[jj];                                                      \
                    acc3[jj] += a3 * b[jj];                                                      \
                }                                                                                \
            }                                                                                    \
            for (jj = 0; jj < NR; jj++) {                                                        \
                c0[jj] = acc0[jj];                                                               \
                c0[ldc + jj] = acc1[jj];                                                         \
                c0[2 * ldc + jj] = acc2[jj];                                                     \
                c0[3 * ldc + jj] = acc3[jj];                                                     \
            }                                                                                    \
        }                                                                                        \
        for (ii = i0; ii < M; ii++) { /* leftover rows, one at a time */                         \
            T acc[NR];                                                                           \
            T *c = C + ii * ldc + j0;                                                            \
            for (jj = 0; jj < NR; jj++) acc[jj] = accumulate ? c[jj] : (T)0;                     \
            for (k = 0; k < K; k++) {                                                            \
                const T *b = B + k * ldb + j0;                                                   \
                const T av = A[ii * lda + k];                                                    \
                for (jj = 0; jj < NR; jj++) acc[jj] += av * b[jj];                               \
            }                                                                                    \
            for (jj = 0; jj < NR; jj++) c[jj] = acc[jj];                                         \
        }                                                                                        \
    }                                                                                            \
    if (j0 < N) { /* leftover columns */                                                         \
        for (ii = 0; ii < M; ii++) {                                                             \
            for (jj = j0; jj < N; jj++) {                                                        \
                T s = accumulate ? C[ii * ldc + jj] : (T)0;                                      \
                for (k = 0; k < K; k++) s += A[ii * lda + k] * B[k * ldb + jj];                  \
                C[ii * ldc + jj] = s;                                                            \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
}

RC_DEFINE_GEMM(rc_sgemm_nn, float, 32)
RC_DEFINE_GEMM(rc_dgemm_nn, double, 16)

#endif
