/* rnncore's small GEMM for the per-step recurrent product.
 *
 *   C[M x N] (+)= A[M x K] . B[K x N]      row-major, leading dimensions lda, ldb, ldc
 *
 * Inside the time loop each thread multiplies its few batch rows (M = B / threads) by a recurrent
 * weight matrix (K = H, N = gates * H). BLAS is slow there: with OPENBLAS_CORETYPE=Haswell its
 * small-matrix path is off and a 1x128x512 sgemm costs ~23 us of overhead. This kernel has none:
 * B is the weight matrix laid out K rows of N (the caller transposes W_hh once per call), and a
 * 4 x (2 vectors) tile of C stays in registers while k runs, so each loaded row of B feeds 4 FMAs per
 * element. Vectors are GCC/Clang vector extensions: 256-bit (AVX2: 8 named accumulators fit the 16
 * registers), 512-bit when compiled for AVX-512; without AVX the compiler splits them into SSE halves.
 *
 * Every element C[i][j] is summed in the same order (k = 0 .. K-1, one multiply-add each) whether it
 * lies in a full tile, an edge row or an edge column, so results do not depend on how rows are split
 * between threads.
 */
#ifndef RNNCORE_RC_GEMM_H
#define RNNCORE_RC_GEMM_H
#include <stddef.h>
#include <string.h>

#if defined(__AVX512F__)
#define RC_VEC_BYTES 64
#else
#define RC_VEC_BYTES 32
#endif

typedef float rc_vf __attribute__((vector_size(RC_VEC_BYTES)));
typedef double rc_vd __attribute__((vector_size(RC_VEC_BYTES)));

#define RC_DEFINE_GEMM(NAME, T, V)                                                               \
static inline V NAME##_load(const T *p) { V v; memcpy(&v, p, sizeof v); return v; }             \
static inline void NAME##_store(T *p, V v) { memcpy(p, &v, sizeof v); }                          \
static void NAME(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const T *A, ptrdiff_t lda,               \
                 const T *B, ptrdiff_t ldb, int accumulate, T *C, ptrdiff_t ldc)                 \
{                                                                                                \
    const ptrdiff_t W = (ptrdiff_t)(sizeof(V) / sizeof(T)), NR = 2 * W;                          \
    const V zero = {0};                                                                          \
    ptrdiff_t i, j0, k, jj;                                                                      \
    for (j0 = 0; j0 + NR <= N; j0 += NR) {                                                       \
        for (i = 0; i + 4 <= M; i += 4) {                                                        \
            T *c = C + i * ldc + j0;                                                             \
            const T *a = A + i * lda;                                                            \
            V c00 = zero, c01 = zero, c10 = zero, c11 = zero;                                    \
            V c20 = zero, c21 = zero, c30 = zero, c31 = zero;                                    \
            if (accumulate) {                                                                    \
                c00 = NAME##_load(c);           c01 = NAME##_load(c + W);                        \
                c10 = NAME##_load(c + ldc);     c11 = NAME##_load(c + ldc + W);                  \
                c20 = NAME##_load(c + 2 * ldc); c21 = NAME##_load(c + 2 * ldc + W);              \
                c30 = NAME##_load(c + 3 * ldc); c31 = NAME##_load(c + 3 * ldc + W);              \
            }                                                                                    \
            for (k = 0; k < K; k++) {                                                            \
                const V b0 = NAME##_load(B + k * ldb + j0), b1 = NAME##_load(B + k * ldb + j0 + W); \
                const T a0 = a[k], a1 = a[lda + k], a2 = a[2 * lda + k], a3 = a[3 * lda + k];    \
                c00 += a0 * b0; c01 += a0 * b1;                                                  \
                c10 += a1 * b0; c11 += a1 * b1;                                                  \
                c20 += a2 * b0; c21 += a2 * b1;                                                  \
                c30 += a3 * b0; c31 += a3 * b1;                                                  \
            }                                                                                    \
            NAME##_store(c, c00);           NAME##_store(c + W, c01);                            \
            NAME##_store(c + ldc, c10);     NAME##_store(c + ldc + W, c11);                      \
            NAME##_store(c + 2 * ldc, c20); NAME##_store(c + 2 * ldc + W, c21);                  \
            NAME##_store(c + 3 * ldc, c30); NAME##_store(c + 3 * ldc + W, c31);                  \
        }                                                                                        \
        for (; i < M; i++) { /* leftover rows, one at a time */                                  \
            T *c = C + i * ldc + j0;                                                             \
            V c00 = accumulate ? NAME##_load(c) : zero, c01 = accumulate ? NAME##_load(c + W) : zero; \
            for (k = 0; k < K; k++) {                                                            \
                const T a0 = A[i * lda + k];                                                     \
                c00 += a0 * NAME##_load(B + k * ldb + j0);                                       \
                c01 += a0 * NAME##_load(B + k * ldb + j0 + W);                                   \
            }                                                                                    \
            NAME##_store(c, c00); NAME##_store(c + W, c01);                                      \
        }                                                                                        \
    }                                                                                            \
    if (j0 < N) { /* leftover columns */                                                         \
        for (i = 0; i < M; i++) {                                                                \
            for (jj = j0; jj < N; jj++) {                                                        \
                T s = accumulate ? C[i * ldc + jj] : (T)0;                                       \
                for (k = 0; k < K; k++) s += A[i * lda + k] * B[k * ldb + jj];                   \
                C[i * ldc + jj] = s;                                                             \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
}

RC_DEFINE_GEMM(rc_sgemm_nn, float, rc_vf)
RC_DEFINE_GEMM(rc_dgemm_nn, double, rc_vd)

#endif
