# rnncore's one BLAS wrapper: every matrix product in the kernels goes through here.
#
# Shaped like scikit-learn's sklearn/utils/_cython_blas.pxd: functions over the fused type
# `floating` (float picks sgemm, double dgemm, at compile time), `noexcept nogil`, row-major
# handled once by swapping operands (row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T).
# BLAS is called on one thread inside rnncore (the caller limits it, see rnncore/engine/threads.py):
# parallelism comes from rnncore's own OpenMP team, so two thread pools never fight.

from scipy.linalg.cython_blas cimport sgemm, dgemm

ctypedef fused floating:
    float
    double


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C, all row-major; C is (m, n), op(A) (m, k), op(B) (k, n)."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda, &beta, c, &ldc)


cdef extern from "_rc_gemm.h" nogil:
    const Py_ssize_t RC_NR_F
    const Py_ssize_t RC_NR_D
    void rc_sgemm_packed(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                         const float* Bp, Py_ssize_t pstride, const float* Ci, Py_ssize_t ldci,
                         float* C, Py_ssize_t ldc)
    void rc_dgemm_packed(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const double* A, Py_ssize_t lda,
                         const double* Bp, Py_ssize_t pstride, const double* Ci, Py_ssize_t ldci,
                         double* C, Py_ssize_t ldc)
    void rc_sgemm_packed2(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                          const float* Bp, Py_ssize_t pstride, Py_ssize_t K2, const float* A2,
                          Py_ssize_t lda2, const float* Bp2, Py_ssize_t pstride2, const float* Ci,
                          Py_ssize_t ldci, float* C, Py_ssize_t ldc)
    void rc_dgemm_packed2(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const double* A, Py_ssize_t lda,
                          const double* Bp, Py_ssize_t pstride, Py_ssize_t K2, const double* A2,
                          Py_ssize_t lda2, const double* Bp2, Py_ssize_t pstride2, const double* Ci,
                          Py_ssize_t ldci, double* C, Py_ssize_t ldc)


cdef inline Py_ssize_t panel_width(const floating* x) noexcept nogil:
    """Columns per panel of a packed matrix (rnncore/_rc_gemm.h) of this dtype; x only picks it."""
    if floating is float:
        return RC_NR_F
    return RC_NR_D


cdef inline void packed_gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                             Py_ssize_t lda, const floating* bp, Py_ssize_t pstride,
                             const floating* ci, Py_ssize_t ldci, floating* c,
                             Py_ssize_t ldc) noexcept nogil:
    """C := Ci + A @ B with rnncore's own small GEMM, B packed (rnncore/_rc_gemm.h)."""
    if floating is float:
        rc_sgemm_packed(m, n, k, a, lda, bp, pstride, ci, ldci, c, ldc)
    else:
        rc_dgemm_packed(m, n, k, a, lda, bp, pstride, ci, ldci, c, ldc)


cdef inline void mm_packed(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a, Py_ssize_t lda,
                           bint trans_w, const floating* w, Py_ssize_t ldw,
                           const floating* wp, Py_ssize_t kp, Py_ssize_t k0,
                           bint accumulate, floating* c, Py_ssize_t ldc) noexcept nogil:
    """C (+)= A @ B for the per-step recurrent products, B = W^T (trans_w, W is (n, k)) or W (W is
    (k, n)), W row-major with leading dimension ldw.

    With wp (B packed into panels of kp rows, rnncore/_rc_gemm.h; this product uses rows
    [k0, k0 + k) of it) rnncore's own small GEMM runs; with wp == NULL, BLAS does on W (the
    reference path; the caller has already offset w to the rows or columns it wants)."""
    cdef Py_ssize_t nr = panel_width(a)
    if wp == NULL:
        gemm(False, trans_w, <int> m, <int> n, <int> k, 1, a, <int> lda, w, <int> ldw,
             1 if accumulate else 0, c, <int> ldc)
    else:
        packed_gemm(m, n, k, a, lda, wp + k0 * nr, kp * nr, c if accumulate else NULL, ldc, c, ldc)


cdef inline void mm_packed_bias(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                                Py_ssize_t lda, const floating* wp, const floating* bias,
                                floating* c, Py_ssize_t ldc) noexcept nogil:
    """C := bias + A @ B with rnncore's own small GEMM: B packed (wp, k rows per panel), bias one
    row of n added to every row of C (NULL: none)."""
    packed_gemm(m, n, k, a, lda, wp, k * panel_width(a), bias, 0, c, ldc)


cdef inline void mm_packed2_bias(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                                 Py_ssize_t lda, const floating* wp, Py_ssize_t k2,
                                 const floating* a2, Py_ssize_t lda2, const floating* wp2,
                                 const floating* bias, floating* c, Py_ssize_t ldc) noexcept nogil:
    """C := bias + A @ B + A2 @ B2 in one pass of rnncore's own small GEMM: B, B2 packed (wp with k
    rows per panel, wp2 with k2), bias one row of n added to every row of C (NULL: none). The same
    sums in the same order as mm_packed_bias followed by an accumulating mm_packed."""
    cdef Py_ssize_t nr = panel_width(a)
    if floating is float:
        rc_sgemm_packed2(m, n, k, a, lda, wp, k * nr, k2, a2, lda2, wp2, k2 * nr, bias, 0, c, ldc)
    else:
        rc_dgemm_packed2(m, n, k, a, lda, wp, k * nr, k2, a2, lda2, wp2, k2 * nr, bias, 0, c, ldc)
