# rnncore's one BLAS wrapper: every matrix product in the kernels goes through here.
#
# Shaped like scikit-learn's sklearn/utils/_cython_blas.pxd: functions over the fused type
# `floating` (float picks sgemm, double dgemm, at compile time), `noexcept nogil`, row-major
# handled once by swapping operands (row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T).
# BLAS is called on one thread inside rnncore (the caller limits it, see rnncore/_threads.py):
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
    void rc_sgemm_nn(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                     const float* B, Py_ssize_t ldb, int accumulate, float* C, Py_ssize_t ldc)
    void rc_dgemm_nn(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const double* A, Py_ssize_t lda,
                     const double* B, Py_ssize_t ldb, int accumulate, double* C, Py_ssize_t ldc)


cdef inline void mm_nt(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a, Py_ssize_t lda,
                       const floating* w, Py_ssize_t ldw, const floating* w_t, Py_ssize_t ldw_t,
                       bint accumulate, floating* c, Py_ssize_t ldc) noexcept nogil:
    """C (+)= A @ W^T for the per-step recurrent product; W is (n, k) with leading dimension ldw.

    With w_t (W^T laid out (k, n), leading dimension ldw_t) rnncore's own small GEMM runs
    (_rc_gemm.h); with w_t == NULL, BLAS does (the reference path)."""
    if w_t == NULL:
        gemm(False, True, <int> m, <int> n, <int> k, 1, a, <int> lda, w, <int> ldw,
             1 if accumulate else 0, c, <int> ldc)
    elif floating is float:
        rc_sgemm_nn(m, n, k, a, lda, w_t, ldw_t, accumulate, c, ldc)
    else:
        rc_dgemm_nn(m, n, k, a, lda, w_t, ldw_t, accumulate, c, ldc)


cdef inline void mm_nn(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a, Py_ssize_t lda,
                       const floating* w, Py_ssize_t ldw, bint own,
                       bint accumulate, floating* c, Py_ssize_t ldc) noexcept nogil:
    """C (+)= A @ W for the per-step backward product; W is (k, n) with leading dimension ldw.
    own: rnncore's small GEMM, else BLAS."""
    if not own:
        gemm(False, False, <int> m, <int> n, <int> k, 1, a, <int> lda, w, <int> ldw,
             1 if accumulate else 0, c, <int> ldc)
    elif floating is float:
        rc_sgemm_nn(m, n, k, a, lda, w, ldw, accumulate, c, ldc)
    else:
        rc_dgemm_nn(m, n, k, a, lda, w, ldw, accumulate, c, ldc)
