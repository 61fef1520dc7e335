/* rnncore's GEMM for the weight-gradient sums over rows (rnncore/_wgrad.pxi):
 *
 *   C[M x N] += Σ_k S_k^T L_k      k < K, S_k = row k of the operand whose values are broadcast
 *                                  (M values at s[k]), L_k = row k of the operand read as vectors
 *                                  (N values at l[k])
 *
 * The operands are given as row pointers (s[k], l[k]): the rows of a (T, B, width) array in the
 * backward scan's order, wherever the layout puts them. Nothing is packed or transposed: an MR x
 * NV-vector tile of C stays in registers while k runs, taking MR values of S_k (broadcast) and NV
 * vectors of L_k (read where they lie) per row. AVX-512 (32 registers): 6 x 4 vectors (24
 * accumulators); AVX2 (16): 6 x 2. C goes in bands of RC_SUMS_BAND rows, each band's values of the
 * K rows of S copied first into a small buffer (rows of S 4 KB apart would otherwise share L1's
 * sets and come from L2 again for every tile). Columns past the last whole vector go through a
 * small zero-padded copy.
 *
 * Every element C[i][j] is ONE chain of multiply-adds over k = 0 .. K-1 starting from its stored
 * value, whatever tile, strip, edge or thread it falls in (the tile shape changes which elements
 * are computed together, never an element's order of sums), and rnncore's other GEMM (_rc_gemm.h)
 * computes the same chain. So every instruction-set path gives the same bits.
 */
#ifndef RNNCORE_RC_SUMS_H
#define RNNCORE_RC_SUMS_H
#include "_rc_gemm.h"

#define RC_SUMS_BAND 48      /* rows of C per band: 8 tiles of 6 */

/* One MR x NV-vector tile: c (C's row i0, column j0; rows ldc apart) += Σ_k s[k][i0 + r] l[k][j0 ..] */
#define RC_SUMS_TILE(NAME, T, V, MR, NV)                                                         \
static inline void NAME##_tile_##MR##_##NV(ptrdiff_t K, const T *const *s, ptrdiff_t i0,         \
                                           const T *const *l, ptrdiff_t j0, T *c, ptrdiff_t ldc) \
{                                                                                                \
    const ptrdiff_t W = (ptrdiff_t)(sizeof(V) / sizeof(T));                                      \
    V acc[MR][NV];                                                                               \
    _Pragma("GCC unroll 8") for (int r = 0; r < MR; r++)                                         \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                     \
            acc[r][v] = NAME##_load(c + r * ldc + v * W);                                        \
    for (ptrdiff_t k = 0; k < K; k++) {                                                          \
        const T *sr = s[k] + i0, *lr = l[k] + j0;                                                \
        V b[NV];                                                                                 \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) b[v] = NAME##_load(lr + v * W);     \
        _Pragma("GCC unroll 8") for (int r = 0; r < MR; r++) {                                   \
            const T av = sr[r];                                                                  \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[r][v] += av * b[v];         \
        }                                                                                        \
    }                                                                                            \
    _Pragma("GCC unroll 8") for (int r = 0; r < MR; r++)                                         \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                     \
            NAME##_store(c + r * ldc + v * W, acc[r][v]);                                        \
}

/* rows [i0, i0 + M) of C (c at row i0, column j0) in tiles of 6, 4, 2, 1 rows, NV vectors wide */
#define RC_SUMS_STRIP(NAME, T, V, NV)                                                            \
RC_SUMS_TILE(NAME, T, V, 6, NV)                                                                  \
RC_SUMS_TILE(NAME, T, V, 4, NV)                                                                  \
RC_SUMS_TILE(NAME, T, V, 2, NV)                                                                  \
RC_SUMS_TILE(NAME, T, V, 1, NV)                                                                  \
static inline void NAME##_strip_##NV(ptrdiff_t i0, ptrdiff_t M, ptrdiff_t K, const T *const *s, \
                                     const T *const *l, ptrdiff_t j0, T *c, ptrdiff_t ldc)       \
{                                                                                                \
    ptrdiff_t i = 0;                                                                             \
    for (; i + 6 <= M; i += 6) NAME##_tile_6_##NV(K, s, i0 + i, l, j0, c + i * ldc, ldc);        \
    for (; i + 4 <= M; i += 4) NAME##_tile_4_##NV(K, s, i0 + i, l, j0, c + i * ldc, ldc);        \
    for (; i + 2 <= M; i += 2) NAME##_tile_2_##NV(K, s, i0 + i, l, j0, c + i * ldc, ldc);        \
    for (; i < M; i++) NAME##_tile_1_##NV(K, s, i0 + i, l, j0, c + i * ldc, ldc);                \
}

#if RC_VEC_BYTES == 64
#define RC_SUMS_WIDE(NAME) for (; v + 4 <= vend; v += 4) NAME##_strip_4(0, M, K, s, l, v * W, C + v * W, ldc);
#define RC_SUMS_STRIP4(NAME, T, V) RC_SUMS_STRIP(NAME, T, V, 4)
#else
#define RC_SUMS_WIDE(NAME)
#define RC_SUMS_STRIP4(NAME, T, V)
#endif

/* C[:, the columns of vectors [v0, v1)] += Σ_k S_k^T L_k, vector v = columns [v W, min(N, (v+1) W)).
 * lpad: room for K row pointers; buf: (K + 6) * W values (the last, partial vector's copy). */
#define RC_DEFINE_SUMS(NAME, T, V)                                                               \
static inline V NAME##_load(const T *p) { V v; memcpy(&v, p, sizeof v); return v; }             \
static inline void NAME##_store(T *p, V v) { memcpy(p, &v, sizeof v); }                          \
RC_SUMS_STRIP4(NAME, T, V)                                                                       \
RC_SUMS_STRIP(NAME, T, V, 2)                                                                     \
RC_SUMS_STRIP(NAME, T, V, 1)                                                                     \
static void NAME##_cols(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const T *const *s,               \
                        const T *const *l, ptrdiff_t v0, ptrdiff_t v1, T *C, ptrdiff_t ldc,      \
                        const T **lpad, T *buf)                                                  \
{                                                                                                \
    const ptrdiff_t W = (ptrdiff_t)(sizeof(V) / sizeof(T)), nfull = N / W;                       \
    const ptrdiff_t vend = v1 < nfull ? v1 : nfull;                                              \
    ptrdiff_t v = v0, k, i, r;                                                                   \
    RC_SUMS_WIDE(NAME)                                                                           \
    for (; v + 2 <= vend; v += 2) NAME##_strip_2(0, M, K, s, l, v * W, C + v * W, ldc);          \
    for (; v < vend; v++) NAME##_strip_1(0, M, K, s, l, v * W, C + v * W, ldc);                  \
    if (v1 > nfull && N > nfull * W) {                                                           \
        const ptrdiff_t j0 = nfull * W, w = N - j0;                                              \
        T *lb = buf, *cb = buf + K * W;                                                          \
        for (k = 0; k < K; k++) {                                                                \
            memcpy(lb + k * W, l[k] + j0, (size_t)w * sizeof(T));                                \
            memset(lb + k * W + w, 0, (size_t)(W - w) * sizeof(T));                             \
            lpad[k] = lb + k * W;                                                                \
        }                                                                                        \
        for (i = 0; i < M; i += 6) {                                                             \
            const ptrdiff_t m = M - i < 6 ? M - i : 6;                                           \
            for (r = 0; r < m; r++) {                                                            \
                memcpy(cb + r * W, C + (i + r) * ldc + j0, (size_t)w * sizeof(T));               \
                memset(cb + r * W + w, 0, (size_t)(W - w) * sizeof(T));                          \
            }                                                                                    \
            NAME##_strip_1(i, m, K, s, lpad, 0, cb, W);                                          \
            for (r = 0; r < m; r++)                                                              \
                memcpy(C + (i + r) * ldc + j0, cb + r * W, (size_t)w * sizeof(T));               \
        }                                                                                        \
    }                                                                                            \
}                                                                                                \
/* Rows [i0, i1) of C (all rows: 0, M), RC_SUMS_BAND rows at a time: the band's values of the K   \
   rows of S are copied first into `band` (K x RC_SUMS_BAND, in L1 with the L strip the band's     \
   tiles share), so that rows of S whose addresses fall into the same cache sets (4 KB apart, say)  \
   are not read again from L2 by every tile. band: K * RC_SUMS_BAND values; bandp: room for K       \
   pointers. */                                                                                  \
static void NAME(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t N, ptrdiff_t K, const T *const *s,        \
                 const T *const *l, ptrdiff_t v0, ptrdiff_t v1, T *C, ptrdiff_t ldc,             \
                 const T **lpad, T *buf, T *band, const T **bandp)                               \
{                                                                                                \
    ptrdiff_t i, k;                                                                              \
    for (k = 0; k < K; k++) bandp[k] = band + k * RC_SUMS_BAND;                                  \
    for (i = i0; i < i1; i += RC_SUMS_BAND) {                                                    \
        const ptrdiff_t mb = i1 - i < RC_SUMS_BAND ? i1 - i : RC_SUMS_BAND;                      \
        for (k = 0; k < K; k++) memcpy(band + k * RC_SUMS_BAND, s[k] + i, (size_t)mb * sizeof(T)); \
        NAME##_cols(mb, N, K, bandp, l, v0, v1, C + i * ldc, ldc, lpad, buf);                     \
    }                                                                                            \
}

/* One step's column sums, in double: acc[j] = Σ_b a_b[j] (or Σ_b a_b[j] x_b[j]: a float product is
 * exact in double), b < nb in order, row b at a + b * sa (x + b * sx); then c[j] = (T)(c[j] + acc[j])
 * for j < n, and c2[j] = (T)(c2[j] + acc[j]) for j < n2 (the same step sums into a second
 * gradient with its own rounding: b_hh's columns that see b_ih's gradient). acc: n doubles. */
#define RC_DEFINE_STEP_COLSUM(NAME, T)                                                           \
static void NAME(ptrdiff_t n, ptrdiff_t nb, const T *a, ptrdiff_t sa, const T *x, ptrdiff_t sx,  \
                 double *restrict acc, T *restrict c, T *restrict c2, ptrdiff_t n2)              \
{                                                                                                \
    ptrdiff_t b, j;                                                                              \
    if (nb == 1) {  /* one row: the same sums (0.0 + a value) in one pass */                      \
        for (j = 0; j < n; j++) acc[j] = 0.0 + (x ? (double)a[j] * (double)x[j] : (double)a[j]); \
        for (j = 0; j < n; j++) c[j] = (T)(c[j] + acc[j]);                                       \
        if (c2) for (j = 0; j < n2; j++) c2[j] = (T)(c2[j] + acc[j]);                            \
        return;                                                                                  \
    }                                                                                            \
    for (j = 0; j < n; j++) acc[j] = 0;                                                          \
    for (b = 0; b < nb; b++) {                                                                   \
        const T *restrict ab = a + b * sa;                                                       \
        if (x) {                                                                                 \
            const T *restrict xb = x + b * sx;                                                   \
            for (j = 0; j < n; j++) acc[j] += (double)ab[j] * (double)xb[j];                     \
        } else {                                                                                 \
            for (j = 0; j < n; j++) acc[j] += (double)ab[j];                                     \
        }                                                                                        \
    }                                                                                            \
    for (j = 0; j < n; j++) c[j] = (T)(c[j] + acc[j]);                                           \
    if (c2) for (j = 0; j < n2; j++) c2[j] = (T)(c2[j] + acc[j]);                                \
}

RC_DEFINE_SUMS(rc_ssums, float, rc_vf)
RC_DEFINE_SUMS(rc_dsums, double, rc_vd)
RC_DEFINE_STEP_COLSUM(rc_step_colsum_f, float)
RC_DEFINE_STEP_COLSUM(rc_step_colsum_d, double)

#endif
