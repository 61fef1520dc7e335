/* rnncore's small GEMM for the per-step recurrent products.
 *
 *   C[M x N] := Ci + A[M x K] . B[K x N]   A, C, Ci row-major (lda, ldc, ldci); B packed into panels
 *
 * Ci is where the sums start: NULL (zero), C itself (accumulate, ldci = ldc), or one row broadcast to
 * every row of C (a bias: ldci = 0). The two-product form NAME2 computes C := Ci + A . B + A2 . B2 in
 * one pass (the step's input projection and recurrent product: C is stored once, not stored after
 * the first product and loaded again for the second), with the same sums in the same order.
 *
 * Inside the time loop each thread multiplies its few batch rows (M = B / threads) by a recurrent
 * weight matrix (K = H, N = gates * H) every step. BLAS is slow there (a 1x128x512 sgemm costs ~23 us
 * of overhead with OPENBLAS_CORETYPE=Haswell), and reading the weights straight from their row-major
 * layout is slow too: a 16-column strip of a matrix whose rows are 4 or 8 KB apart maps every row to
 * the same few cache sets, so the strip never stays in L1 or L2 (measured: 35 GFLOP/s on one core).
 *
 * So B is packed once per call into panels of NR columns, each panel K rows of NR contiguous values
 * (zero-padded past N), panel p starting at Bp + p * pstride:
 *
 *     Bp[p * pstride + k * NR + c] = B[k][p * NR + c]
 *
 * and an MR x NR tile of C (MR = 6 rows, NR = 2 vectors: 12 accumulators + 2 loads + 1 broadcast
 * fit AVX2's 16 registers) stays in registers while k runs over a contiguous panel (measured: about
 * 90 GFLOP/s on one Zen 3 core). A K-subrange [k0, k0 + k) of a packed matrix is Bp + k0 * NR with
 * the same pstride. Vectors are GCC/Clang vector extensions: 256-bit (AVX2), 512-bit when compiled
 * for AVX-512; without AVX the compiler splits them into SSE halves.
 *
 * Every element C[i][j] is summed in the same order (k = 0 .. K-1, one multiply-add each) whatever
 * tile height or edge it falls in, so results do not depend on how rows are split between threads.
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

/* panel widths (columns): two vectors */
#define RC_NR_F ((ptrdiff_t)(2 * RC_VEC_BYTES / sizeof(float)))
#define RC_NR_D ((ptrdiff_t)(2 * RC_VEC_BYTES / sizeof(double)))

/* The k loop of one product in a tile: c0, c1 (MR rows, two vectors each) += A[r][k] * B[k][:] for
 * k < KK, A rows LDA apart, B one packed panel (uses W and k of the enclosing tile). */
#define RC_TILE_SUM(NAME, T, V, MR, KK, A, LDA, BP)                                              \
    for (k = 0; k < (KK); k++) {                                                                 \
        const V b0 = NAME##_load((BP) + k * 2 * W), b1 = NAME##_load((BP) + k * 2 * W + W);      \
        _Pragma("GCC unroll 8") for (int r = 0; r < MR; r++) {                                   \
            const T av = (A)[r * (LDA) + k];                                                     \
            c0[r] += av * b0;                                                                    \
            c1[r] += av * b1;                                                                    \
        }                                                                                        \
    }

/* The k loop of one product for one row against 4 consecutive panels (PSTRIDE apart): acc[8] +=
 * A[k] * B[k][:] for k < KK (uses W and k of the enclosing function). */
#define RC_ROW4_SUM(NAME, T, KK, A, BP, PSTRIDE)                                                 \
    for (k = 0; k < (KK); k++) {                                                                 \
        const T av = (A)[k];                                                                     \
        _Pragma("GCC unroll 8") for (int q = 0; q < 8; q++)                                      \
            acc[q] += av * NAME##_load((BP) + (q / 2) * (PSTRIDE) + k * 2 * W + (q % 2) * W);    \
    }

/* One MR x NR tile: the sums start from ci (or zero), run over k < K of (a, bp), then over k < K2 of
 * (a2, bp2): C = Ci + A . B + A2 . B2 without storing C in between (K2 = 0: one product). */
#define RC_TILE(NAME, T, V, MR)                                                                  \
static inline void NAME##_tile##MR(ptrdiff_t K, const T *a, ptrdiff_t lda, const T *bp,          \
                                   ptrdiff_t K2, const T *a2, ptrdiff_t lda2, const T *bp2,      \
                                   const T *ci, ptrdiff_t ldci, T *c, ptrdiff_t ldc)            \
{                                                                                                \
    const ptrdiff_t W = (ptrdiff_t)(sizeof(V) / sizeof(T));                                      \
    V c0[MR], c1[MR];                                                                            \
    ptrdiff_t k;                                                                                 \
    _Pragma("GCC unroll 8") for (int r = 0; r < MR; r++) {                                       \
        if (ci) { c0[r] = NAME##_load(ci + r * ldci); c1[r] = NAME##_load(ci + r * ldci + W); }  \
        else { c0[r] = (V){0}; c1[r] = (V){0}; }                                                 \
    }                                                                                            \
    RC_TILE_SUM(NAME, T, V, MR, K, a, lda, bp)                                                   \
    RC_TILE_SUM(NAME, T, V, MR, K2, a2, lda2, bp2)                                               \
    _Pragma("GCC unroll 8") for (int r = 0; r < MR; r++) {                                       \
        NAME##_store(c + r * ldc, c0[r]); NAME##_store(c + r * ldc + W, c1[r]);                  \
    }                                                                                            \
}

#define RC_DEFINE_GEMM(NAME, T, V, NR, TRANSPOSE8)                                               \
static inline V NAME##_load(const T *p) { V v; memcpy(&v, p, sizeof v); return v; }             \
static inline void NAME##_store(T *p, V v) { memcpy(p, &v, sizeof v); }                          \
RC_TILE(NAME, T, V, 6)                                                                           \
RC_TILE(NAME, T, V, 4)                                                                           \
RC_TILE(NAME, T, V, 2)                                                                           \
RC_TILE(NAME, T, V, 1)                                                                           \
/* rows [0, M) of one panel (and of the second product's panel) into C (ldc), NR columns */       \
static inline void NAME##_panel(ptrdiff_t M, ptrdiff_t K, const T *A, ptrdiff_t lda,            \
                                const T *bp, ptrdiff_t K2, const T *A2, ptrdiff_t lda2,          \
                                const T *bp2, const T *ci, ptrdiff_t ldci, T *c, ptrdiff_t ldc) \
{                                                                                                \
    ptrdiff_t i = 0;                                                                             \
    for (; i + 6 <= M; i += 6)                                                                   \
        NAME##_tile6(K, A + i * lda, lda, bp, K2, A2 + i * lda2, lda2, bp2,                       \
                     ci ? ci + i * ldci : ci, ldci, c + i * ldc, ldc);                           \
    for (; i + 4 <= M; i += 4)                                                                   \
        NAME##_tile4(K, A + i * lda, lda, bp, K2, A2 + i * lda2, lda2, bp2,                       \
                     ci ? ci + i * ldci : ci, ldci, c + i * ldc, ldc);                           \
    for (; i + 2 <= M; i += 2)                                                                   \
        NAME##_tile2(K, A + i * lda, lda, bp, K2, A2 + i * lda2, lda2, bp2,                       \
                     ci ? ci + i * ldci : ci, ldci, c + i * ldc, ldc);                           \
    for (; i < M; i++)                                                                           \
        NAME##_tile1(K, A + i * lda, lda, bp, K2, A2 + i * lda2, lda2, bp2,                       \
                     ci ? ci + i * ldci : ci, ldci, c + i * ldc, ldc);                           \
}                                                                                                \
/* one row against 4 consecutive panels: 8 independent accumulators for the matrix-vector case   \
   (a single row against one panel would leave the FMA units waiting on 2 dependency chains) */   \
static inline void NAME##_row4(ptrdiff_t K, const T *a, const T *bp, ptrdiff_t pstride,          \
                               ptrdiff_t K2, const T *a2, const T *bp2, ptrdiff_t pstride2,      \
                               const T *ci, T *c)                                                \
{                                                                                                \
    const ptrdiff_t W = (ptrdiff_t)(sizeof(V) / sizeof(T));                                      \
    V acc[8];                                                                                    \
    ptrdiff_t k;                                                                                 \
    _Pragma("GCC unroll 8") for (int q = 0; q < 8; q++)                                          \
        acc[q] = ci ? NAME##_load(ci + q * W) : (V){0};                                          \
    RC_ROW4_SUM(NAME, T, K, a, bp, pstride)                                                      \
    RC_ROW4_SUM(NAME, T, K2, a2, bp2, pstride2)                                                  \
    _Pragma("GCC unroll 8") for (int q = 0; q < 8; q++) NAME##_store(c + q * W, acc[q]);         \
}                                                                                                \
/* C := Ci + A . B + A2 . B2 (K2 = 0: no second product; A2, Bp2 unused). Each element sums its    \
   products in the same order (k < K of the first, then k < K2 of the second) in every code path. */ \
static void NAME##2(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const T *A, ptrdiff_t lda,            \
                    const T *Bp, ptrdiff_t pstride, ptrdiff_t K2, const T *A2, ptrdiff_t lda2,   \
                    const T *Bp2, ptrdiff_t pstride2, const T *Ci, ptrdiff_t ldci, T *C,         \
                    ptrdiff_t ldc)                                                               \
{                                                                                                \
    ptrdiff_t j0, i, r, w;                                                                       \
    if (K2 <= 0) { K2 = 0; A2 = A; lda2 = 0; Bp2 = Bp; pstride2 = pstride; }                     \
    /* an odd last row goes 4 panels at a time (same summation order per element) */             \
    const ptrdiff_t Mp = M % 2 ? M - 1 : M;                                                      \
    for (j0 = 0; j0 + NR <= N; j0 += NR)                                                         \
        NAME##_panel(Mp, K, A, lda, Bp + (j0 / NR) * pstride, K2, A2, lda2,                      \
                     Bp2 + (j0 / NR) * pstride2, Ci ? Ci + j0 : Ci, ldci, C + j0, ldc);          \
    if (Mp < M) {                                                                                \
        const T *a = A + Mp * lda, *a2 = A2 + Mp * lda2, *ci = Ci ? Ci + Mp * ldci : Ci;         \
        T *c = C + Mp * ldc;                                                                     \
        for (j0 = 0; j0 + 4 * NR <= N; j0 += 4 * NR)                                             \
            NAME##_row4(K, a, Bp + (j0 / NR) * pstride, pstride, K2, a2,                         \
                        Bp2 + (j0 / NR) * pstride2, pstride2, ci ? ci + j0 : ci, c + j0);        \
        for (; j0 + NR <= N; j0 += NR)                                                           \
            NAME##_tile1(K, a, lda, Bp + (j0 / NR) * pstride, K2, a2, lda2,                      \
                         Bp2 + (j0 / NR) * pstride2, ci ? ci + j0 : ci, 0, c + j0, ldc);          \
    }                                                                                            \
    if (j0 < N) { /* the last, partial panel: through a small buffer, 6 rows at a time */         \
        T buf[6 * NR];                                                                           \
        w = N - j0;                                                                              \
        for (i = 0; i < M; i += 6) {                                                             \
            ptrdiff_t m = M - i < 6 ? M - i : 6;                                                 \
            for (r = 0; r < m; r++) {                                                            \
                if (Ci) memcpy(buf + r * NR, Ci + (i + r) * ldci + j0, (size_t)w * sizeof(T));   \
                memset(buf + r * NR + w, 0, (size_t)(NR - w) * sizeof(T));                       \
            }                                                                                    \
            NAME##_panel(m, K, A + i * lda, lda, Bp + (j0 / NR) * pstride, K2, A2 + i * lda2,    \
                         lda2, Bp2 + (j0 / NR) * pstride2, Ci ? buf : Ci, NR, buf, NR);          \
            for (r = 0; r < m; r++) memcpy(C + (i + r) * ldc + j0, buf + r * NR, (size_t)w * sizeof(T)); \
        }                                                                                        \
    }                                                                                            \
}                                                                                                \
static void NAME(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const T *A, ptrdiff_t lda,               \
                 const T *Bp, ptrdiff_t pstride, const T *Ci, ptrdiff_t ldci, T *C, ptrdiff_t ldc) \
{                                                                                                \
    NAME##2(M, N, K, A, lda, Bp, pstride, 0, A, 0, Bp, pstride, Ci, ldci, C, ldc);                \
}                                                                                                \
/* pack B = W^T, W (N x K) row-major (ldw): the forward product A . W^T; panels [p0, p1) only, so  \
   that threads can pack disjoint panels. 8 x 8 blocks are transposed in registers (TRANSPOSE8);  \
   the rest of a panel's columns and rows go one value at a time. */                              \
static void NAME##_pack_t_panels(ptrdiff_t N, ptrdiff_t K, const T *W, ptrdiff_t ldw, T *Bp,     \
                                 ptrdiff_t p0, ptrdiff_t p1)                                     \
{                                                                                                \
    ptrdiff_t p, k, c, c0, k0;                                                                   \
    for (p = p0; p < p1; p++) {                                                                  \
        T *dst = Bp + p * K * NR;                                                                \
        const ptrdiff_t w = N - p * NR < NR ? N - p * NR : NR;                                   \
        const T *src = W + p * NR * ldw;                                                         \
        for (c0 = 0; c0 + 8 <= w; c0 += 8) {                                                     \
            for (k0 = 0; k0 + 8 <= K; k0 += 8)                                                   \
                TRANSPOSE8(src + c0 * ldw + k0, ldw, dst + k0 * NR + c0, NR);                    \
            for (k = k0; k < K; k++)                                                             \
                for (c = c0; c < c0 + 8; c++) dst[k * NR + c] = src[c * ldw + k];                \
        }                                                                                        \
        for (c = c0; c < w; c++)                                                                 \
            for (k = 0; k < K; k++) dst[k * NR + c] = src[c * ldw + k];                          \
        for (c = w; c < NR; c++)                                                                 \
            for (k = 0; k < K; k++) dst[k * NR + c] = (T)0;                                      \
    }                                                                                            \
}                                                                                                \
/* pack B = W, W (K x N) row-major (ldw): the backward product A . W; panels [p0, p1) only */     \
static void NAME##_pack_n_panels(ptrdiff_t K, ptrdiff_t N, const T *W, ptrdiff_t ldw, T *Bp,     \
                                 ptrdiff_t p0, ptrdiff_t p1)                                     \
{                                                                                                \
    ptrdiff_t p, k, c;                                                                           \
    for (p = p0; p < p1; p++) {                                                                  \
        T *dst = Bp + p * K * NR;                                                                \
        const ptrdiff_t w = N - p * NR < NR ? N - p * NR : NR;                                   \
        for (k = 0; k < K; k++) {                                                                \
            memcpy(dst + k * NR, W + k * ldw + p * NR, (size_t)w * sizeof(T));                  \
            for (c = w; c < NR; c++) dst[k * NR + c] = (T)0;                                     \
        }                                                                                        \
    }                                                                                            \
}

/* dst[j * ldd + i] = src[i * lds + j] for i, j < 8: a block of a transposition. float: in registers
 * (8 rows of 8 values, three rounds of shuffles); double: one value at a time. */
typedef float rc_v8f __attribute__((vector_size(32)));
typedef int rc_v8i __attribute__((vector_size(32)));
#if defined(__clang__)
#define RC_SHUF8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) __builtin_shufflevector(a, b, i0, i1, i2, i3, i4, i5, i6, i7)
#else
#define RC_SHUF8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) __builtin_shuffle(a, b, (rc_v8i){i0, i1, i2, i3, i4, i5, i6, i7})
#endif
static inline void rc_transpose8_f(const float *src, ptrdiff_t lds, float *dst, ptrdiff_t ldd)
{
    rc_v8f r[8], t[8], u[8];
    int i, j;
    for (i = 0; i < 8; i++) memcpy(&r[i], src + i * lds, sizeof r[i]);
    for (i = 0; i < 8; i += 2) {       /* rows a, b: a0 b0 a1 b1 a4 b4 a5 b5 | a2 b2 a3 b3 a6 b6 a7 b7 */
        t[i] = RC_SHUF8(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = RC_SHUF8(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (i = 0; i < 8; i += 4)         /* a b c d of columns 0|4, 2|6, 1|5, 3|7 */
        for (j = 0; j < 2; j++) {
            u[i + j] = RC_SHUF8(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
            u[i + j + 2] = RC_SHUF8(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        }
    for (j = 0; j < 4; j++) {          /* columns 0, 2, 1, 3 and 4, 6, 5, 7 */
        static const int col[4] = {0, 2, 1, 3};
        rc_v8f lo = RC_SHUF8(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        rc_v8f hi = RC_SHUF8(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
        memcpy(dst + col[j] * ldd, &lo, sizeof lo);
        memcpy(dst + (col[j] + 4) * ldd, &hi, sizeof hi);
    }
}
static inline void rc_transpose8_d(const double *src, ptrdiff_t lds, double *dst, ptrdiff_t ldd)
{
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) dst[j * ldd + i] = src[i * lds + j];
}

RC_DEFINE_GEMM(rc_sgemm_packed, float, rc_vf, RC_NR_F, rc_transpose8_f)
RC_DEFINE_GEMM(rc_dgemm_packed, double, rc_vd, RC_NR_D, rc_transpose8_d)

#endif
