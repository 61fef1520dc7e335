# --------------------------------------------------------------------------------------------------
# Weight gradients: the sums over every step of a layer-direction, in the backward scan's order
# (included by _kernels.pyx; the adapters in rnncore/engine/cells.py call them after the scan).
#
#   C += Σ_s Σ_b A[t_s, b, :]^T B[t_s, b, :]    dW_ih += dG^T x, dW_hh += dG^T hprev   (step_sums_add)
#   c += Σ_s Σ_b A[t_s, b, :]                   db += Σ dG                            (step_colsum_add)
#   c += Σ_s Σ_b A[t_s, b, :] ⊙ B[t_s, b, :]    dw_c* += Σ da ⊙ c (LSTM peepholes)    (step_dot_add)
#
# s runs over the steps in the order the backward scan visits them (t_s = T-1-s for a forward
# direction, t_s = s for a reverse one), b over the batch within a step. Each element of C is ONE chain
# of multiply-adds over (s, b) in that order, starting from C's value (rnncore's own GEMM,
# _rc_gemm.h, with the rows as its K); each element of c adds one step's sum (taken in double) at a
# time, in that order. So sums that stop, store C and go on from it in another call give the bits of
# one call: the gradients of a sequence cut into segments (checkpointed BPTT) are those of the whole
# sequence. The rows' layout (time-major or batch_first) and the thread count (threads split C's
# rows or columns) change no bit either.
#
# C (m x n) += A^T B reads both operands along their rows (T*B of them) through row pointers,
# SUM_ROWS rows at a time: rnncore/_rc_sums.h keeps a tile of C in registers, broadcasting A's
# values against vectors of B's (nothing is packed or transposed; a band of A's values is copied
# per block). Only when B is narrower than two vectors (and A wider) does C^T (n x m) += B^T A run.
# --------------------------------------------------------------------------------------------------

cdef enum:
    SUM_ROWS = 256      # rows per block: C is loaded and stored once a block (64 was slower)


cdef struct _Rows:
    # a (T, B, width) operand: row (t, b) at base + t * st + b * sb values, unit-stride within a row
    const void* base
    Py_ssize_t st, sb, width


cdef inline const floating* _row_at(const _Rows* r, Py_ssize_t v, Py_ssize_t T, Py_ssize_t B,
                                    bint descending, const floating* dtype) noexcept nogil:
    # the v-th row in the backward scan's order
    cdef Py_ssize_t s = v // B, b = v - s * B
    return <const floating*> r.base + (T - 1 - s if descending else s) * r.st + b * r.sb


from libc.stdlib cimport malloc, free

cdef extern from "_rc_sums.h" nogil:
    void rc_step_colsum_f(Py_ssize_t n, Py_ssize_t nb, const float* a, Py_ssize_t sa, const float* x,
                          Py_ssize_t sx, double* acc, float* c, float* c2, Py_ssize_t n2)
    void rc_step_colsum_d(Py_ssize_t n, Py_ssize_t nb, const double* a, Py_ssize_t sa,
                          const double* x, Py_ssize_t sx, double* acc, double* c, double* c2,
                          Py_ssize_t n2)
    const int RC_SUMS_BAND
    void rc_ssums(Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t N, Py_ssize_t K, const float* const* s,
                  const float* const* l, Py_ssize_t v0, Py_ssize_t v1, float* C, Py_ssize_t ldc,
                  const float** lpad, float* buf, float* band, const float** bandp)
    void rc_dsums(Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t N, Py_ssize_t K, const double* const* s,
                  const double* const* l, Py_ssize_t v0, Py_ssize_t v1, double* C, Py_ssize_t ldc,
                  const double** lpad, double* buf, double* band, const double** bandp)


cdef int _sums_part(floating* C, Py_ssize_t ldc, const _Rows* S, const _Rows* L, Py_ssize_t T,
                    Py_ssize_t B, bint descending, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t v0,
                    Py_ssize_t v1) noexcept nogil:
    # C[i0:i1, the columns of vectors [v0, v1) of L's width] += S^T L over all T*B rows, SUM_ROWS
    # rows at a time: their row pointers in the backward scan's order, then rnncore/_rc_sums.h.
    # Returns -1 if out of memory for the band (malloc'd: 96 KB would crowd a small thread stack).
    cdef const floating* sp[SUM_ROWS]
    cdef const floating* lp[SUM_ROWS]
    cdef const floating* lpad[SUM_ROWS]
    cdef const floating* bandp[SUM_ROWS]
    cdef double buf[(SUM_ROWS + 6) * 8]         # (SUM_ROWS + 6) vectors of up to 64 bytes
    cdef double* band = <double*> malloc(SUM_ROWS * RC_SUMS_BAND * sizeof(double))
    cdef Py_ssize_t R = T * B, v, kk, k
    if band == NULL:
        return -1
    v = 0
    while v < R:
        kk = R - v if R - v < SUM_ROWS else SUM_ROWS
        for k in range(kk):
            sp[k] = _row_at(S, v + k, T, B, descending, C)
            lp[k] = _row_at(L, v + k, T, B, descending, C)
        if floating is float:
            rc_ssums(i0, i1, L.width, kk, sp, lp, v0, v1, C, ldc, lpad, <float*> buf,
                     <float*> band, bandp)
        else:
            rc_dsums(i0, i1, L.width, kk, sp, lp, v0, v1, C, ldc, lpad, buf, band, bandp)
        v += kk
    free(band)
    return 0


cdef _Rows _rows_of(const floating[:, :, :] A, str name) except *:
    cdef _Rows r
    if A.strides[2] != sizeof(floating) and A.shape[2] > 1:
        raise ValueError(f"{name}: each row must be unit-stride")
    r.base = &A[0, 0, 0]
    r.st = A.strides[0] // sizeof(floating)
    r.sb = A.strides[1] // sizeof(floating)
    r.width = A.shape[2]
    return r


def step_sums_add(C, const floating[:, :, :] A, const floating[:, :, :] B, bint descending,
                  int num_threads=1):
    """C (m, n) += Σ over steps (in the backward scan's order: descending t for a forward direction)
    and sequences of A[t, b]^T @ B[t, b]; A (T, batch, m), B (T, batch, n): views of time-major or
    (transposed) batch_first rows, each row unit-stride. See the top of rnncore/_wgrad.pxi."""
    cdef Py_ssize_t T = A.shape[0], nb = A.shape[1], m = A.shape[2], n = B.shape[2]
    cdef Py_ssize_t isz = sizeof(floating)
    if (B.shape[0] != T or B.shape[1] != nb or C.shape != (m, n)
            or C.dtype != np.dtype(np.float32 if isz == 4 else np.float64)):
        raise ValueError(f"step_sums_add: want C (m, n), A (T, B, m), B (T, B, n) of one dtype, got "
                         f"C {C.shape}, A {tuple(A.shape)[:3]}, B {tuple(B.shape)[:3]}")
    if T == 0 or nb == 0 or m == 0 or n == 0:
        return
    cdef _Rows ra = _rows_of(A, "A"), rb = _rows_of(B, "B")
    # B's rows give the vectors of a tile of C, A's the values broadcast against them; only when B
    # is narrower than two vectors (and A wider) does C^T += B^T A run instead: transposing C both
    # ways costs more than a narrower tile
    cdef bint flip = n * isz < 2 * RC_VEC_BYTES and n < m
    Cw = np.ascontiguousarray(C.T) if flip else C
    if not flip and not C.flags.c_contiguous:
        raise ValueError("step_sums_add: C must be C-contiguous")
    cdef floating[:, ::1] cw = Cw
    cdef _Rows* S = &rb if flip else &ra
    cdef _Rows* L = &ra if flip else &rb
    # threads split C's longer side: rows (S's columns, in whole tiles of 6) or vectors of columns
    cdef Py_ssize_t nvec = (L.width * isz + RC_VEC_BYTES - 1) // RC_VEC_BYTES, ci, nt
    cdef Py_ssize_t ms = S.width, tiles = (S.width + 5) // 6
    cdef bint by_rows = ms >= L.width
    num_threads = _clamp_threads(num_threads)
    nt = min(tiles if by_rows else nvec, num_threads)
    if m * n * T * nb < 1000000:     # below ~2 MFLOP (~20 us on one core) one thread is as fast
        nt = 1
    cdef int failed = 0
    with nogil:
        if nt == 1:
            failed = _sums_part(&cw[0, 0], cw.shape[1], S, L, T, nb, descending, 0, ms, 0, nvec)
        elif by_rows:
            for ci in prange(nt, num_threads=nt, schedule="static"):
                failed += _sums_part(&cw[0, 0], cw.shape[1], S, L, T, nb, descending,
                                     min(ms, ci * tiles // nt * 6),
                                     min(ms, (ci + 1) * tiles // nt * 6), 0, nvec)
        else:
            for ci in prange(nt, num_threads=nt, schedule="static"):
                failed += _sums_part(&cw[0, 0], cw.shape[1], S, L, T, nb, descending, 0, ms,
                                     ci * nvec // nt, (ci + 1) * nvec // nt)
    if failed:
        raise MemoryError("step_sums_add: out of memory for its band of rows")
    if flip:
        C[...] = Cw.T


cdef void _step_sums_cols(floating* c, floating* c2, Py_ssize_t n2, const _Rows* A, const _Rows* Bm,
                          Py_ssize_t T, Py_ssize_t B, bint descending, Py_ssize_t j0, Py_ssize_t j1,
                          double* acc) noexcept nogil:
    # c[j] for j in [j0, j1) (and c2[j] for j < n2) += each step's Σ_b A[t, b, j] (* Bm[t, b, j]),
    # step by step (rnncore/_rc_sums.h)
    cdef Py_ssize_t s, m2 = (n2 if n2 < j1 else j1) - j0 if c2 != NULL else 0
    cdef const floating* a
    cdef const floating* x = NULL
    cdef floating* d2 = c2 + j0 if c2 != NULL and m2 > 0 else NULL
    for s in range(T):
        a = _row_at(A, s * B, T, B, descending, c) + j0
        if Bm != NULL:
            x = _row_at(Bm, s * B, T, B, descending, c) + j0
        if floating is float:
            rc_step_colsum_f(j1 - j0, B, a, A.sb, x, Bm.sb if Bm != NULL else 0, acc, c + j0, d2, m2)
        else:
            rc_step_colsum_d(j1 - j0, B, a, A.sb, x, Bm.sb if Bm != NULL else 0, acc, c + j0, d2, m2)


cdef _step_sums_vec(floating[::1] c, const floating[:, :, :] A, B, bint descending,
                    int num_threads, c2=None):
    cdef Py_ssize_t T = A.shape[0], nb = A.shape[1], n = A.shape[2], ci, nt, n2 = 0
    if (c.shape[0] != n or (B is not None and tuple(B.shape)[:3] != tuple(A.shape)[:3])
            or (c2 is not None and c2.shape[0] > n)):
        raise ValueError(f"want c ({n},), c2 (at most {n},) and B of A's shape "
                         f"{tuple(A.shape)[:3]}, got c ({c.shape[0]},), c2 "
                         f"{None if c2 is None else c2.shape}, B "
                         f"{None if B is None else tuple(B.shape)[:3]}")
    if T == 0 or nb == 0 or n == 0:
        return
    cdef _Rows ra = _rows_of(A, "A"), rb
    cdef _Rows* pb = NULL
    cdef const floating[:, :, :] Bv
    cdef floating[::1] cv2
    cdef floating* p2 = NULL
    if B is not None:
        Bv = B
        rb = _rows_of(Bv, "B")
        pb = &rb
    if c2 is not None and c2.shape[0] > 0:
        cv2 = c2
        p2, n2 = &cv2[0], cv2.shape[0]
    nt = _clamp_threads(num_threads)
    if n * T * nb < 262144 or n < 64:
        nt = 1
    acc = np.empty(n, np.float64)
    cdef double[::1] ac = acc
    with nogil:
        if nt == 1:
            _step_sums_cols(&c[0], p2, n2, &ra, pb, T, nb, descending, 0, n, &ac[0])
        else:
            for ci in prange(nt, num_threads=nt, schedule="static"):
                _step_sums_cols(&c[0], p2, n2, &ra, pb, T, nb, descending, ci * n // nt,
                                (ci + 1) * n // nt, &ac[ci * n // nt])


def step_colsum_add(floating[::1] c, const floating[:, :, :] A, bint descending, int num_threads=1,
                    c2=None):
    """c += Σ over steps (backward's order) of each step's Σ_b A[t, b] (in double), rounded once a
    step: the bias gradients. A (T, batch, n), rows unit-stride. c2 (m <= n values, optional) gets
    the same step sums of A's first m columns, rounded on its own (b_hh's columns that share
    b_ih's gradient), in the same pass."""
    _step_sums_vec(c, A, None, descending, num_threads, c2)


def step_dot_add(floating[::1] c, const floating[:, :, :] A, B, bint descending,
                 int num_threads=1):
    """c += Σ over steps (backward's order) of each step's Σ_b A[t, b] ⊙ B[t, b] (in double), rounded
    once a step: the LSTM peephole gradients. A, B (T, batch, n), rows unit-stride."""
    _step_sums_vec(c, A, B, descending, num_threads)
