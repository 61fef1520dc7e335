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
