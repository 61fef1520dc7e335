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
# columns) change no bit either.
#
# C (m x n) += A^T B reads both operands along their rows (T*B of them): the narrower operand is
# transposed into a block (its width x SUM_ROWS rows), the wider one packed into the GEMM's panels,
# SUM_ROWS rows at a time; when B is the narrower, C^T (n x m) += B^T A is what runs.
# --------------------------------------------------------------------------------------------------

from libc.stdlib cimport malloc, free

cdef enum:
    SUM_ROWS = 256      # rows per block: the narrow block and a thread's panels stay in L2


cdef struct _Rows:
    # a (T, B, width) operand: row (t, b) at base + t * st + b * sb values, unit-stride within a row
    const void* base
    Py_ssize_t st, sb, width


cdef inline const floating* _row_at(const _Rows* r, Py_ssize_t v, Py_ssize_t T, Py_ssize_t B,
                                    bint descending, const floating* dtype) noexcept nogil:
    # the v-th row in the backward scan's order
    cdef Py_ssize_t s = v // B, b = v - s * B
    return <const floating*> r.base + (T - 1 - s if descending else s) * r.st + b * r.sb


cdef int _sums_panels(floating* C, Py_ssize_t ldc, const _Rows* S, const _Rows* L, Py_ssize_t T,
                      Py_ssize_t B, bint descending, Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    # C[:, columns of L's panels [p0, p1)] += S^T L over all T*B rows; returns -1 if out of memory
    cdef Py_ssize_t nr = panel_width(C), ws = S.width, R = T * B, npan = p1 - p0
    cdef Py_ssize_t c0 = p0 * nr, ncol, v0, kk, k, i, p, col, w
    cdef const floating* srow
    cdef const floating* lrow
    cdef floating* At
    cdef floating* Lp
    cdef floating* dst
    ncol = (L.width if p1 * nr > L.width else p1 * nr) - c0
    if ncol <= 0:
        return 0
    At = <floating*> malloc(ws * SUM_ROWS * sizeof(floating))
    Lp = <floating*> malloc(npan * SUM_ROWS * nr * sizeof(floating))
    if At == NULL or Lp == NULL:
        free(At)
        free(Lp)
        return -1
    v0 = 0
    while v0 < R:
        kk = R - v0 if R - v0 < SUM_ROWS else SUM_ROWS
        for k in range(kk):
            srow = _row_at(S, v0 + k, T, B, descending, C)
            for i in range(ws):
                At[i * kk + k] = srow[i]
            lrow = _row_at(L, v0 + k, T, B, descending, C)
            for p in range(npan):
                col = c0 + p * nr
                w = L.width - col if L.width - col < nr else nr
                dst = Lp + p * kk * nr + k * nr
                memcpy(dst, lrow + col, w * sizeof(floating))
                if w < nr:
                    memset(dst + w, 0, (nr - w) * sizeof(floating))
        packed_gemm(ws, ncol, kk, At, kk, Lp, kk * nr, C + c0, ldc, C + c0, ldc)
        v0 += kk
    free(At)
    free(Lp)
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
    cdef bint flip = n < m          # B is the narrower: C^T += B^T A
    Cw = np.ascontiguousarray(C.T) if flip else C
    if not flip and not C.flags.c_contiguous:
        raise ValueError("step_sums_add: C must be C-contiguous")
    cdef floating[:, ::1] cw = Cw
    cdef _Rows* S = &rb if flip else &ra
    cdef _Rows* L = &ra if flip else &rb
    cdef Py_ssize_t npan = _npanels(L.width, panel_width(&cw[0, 0])), ci, nt, failed = 0
    num_threads = _clamp_threads(num_threads)
    nt = npan if npan < num_threads else num_threads
    if m * n * T * nb < 4000000:     # below ~8 MFLOP a fork/join costs more than it saves
        nt = 1
    with nogil:
        if nt == 1:
            failed = _sums_panels(&cw[0, 0], cw.shape[1], S, L, T, nb, descending, 0, npan)
        else:
            for ci in prange(nt, num_threads=nt, schedule="static"):
                failed += _sums_panels(&cw[0, 0], cw.shape[1], S, L, T, nb, descending,
                                       ci * npan // nt, (ci + 1) * npan // nt)
    if failed:
        raise MemoryError("step_sums_add: out of memory for its blocks")
    if flip:
        C[...] = Cw.T


cdef void _step_sums_cols(floating* c, const _Rows* A, const _Rows* Bm, Py_ssize_t T, Py_ssize_t B,
                          bint descending, Py_ssize_t j0, Py_ssize_t j1, double* acc) noexcept nogil:
    # c[j] for j in [j0, j1) += each step's Σ_b A[t, b, j] (* Bm[t, b, j]), step by step
    cdef Py_ssize_t s, b, j
    cdef const floating* a
    cdef const floating* x
    for s in range(T):
        for j in range(j0, j1):
            acc[j - j0] = 0
        for b in range(B):
            a = _row_at(A, s * B + b, T, B, descending, c)
            if Bm == NULL:
                for j in range(j0, j1):
                    acc[j - j0] += a[j]
            else:
                x = _row_at(Bm, s * B + b, T, B, descending, c)
                for j in range(j0, j1):
                    acc[j - j0] += <double> a[j] * x[j]
        for j in range(j0, j1):
            c[j] = <floating> (c[j] + acc[j - j0])


cdef _step_sums_vec(floating[::1] c, const floating[:, :, :] A, B, bint descending,
                    int num_threads):
    cdef Py_ssize_t T = A.shape[0], nb = A.shape[1], n = A.shape[2], ci, nt
    if c.shape[0] != n or (B is not None and tuple(B.shape)[:3] != tuple(A.shape)[:3]):
        raise ValueError(f"want c ({n},) and B of A's shape {tuple(A.shape)[:3]}, got c "
                         f"({c.shape[0]},), B {None if B is None else tuple(B.shape)[:3]}")
    if T == 0 or nb == 0 or n == 0:
        return
    cdef _Rows ra = _rows_of(A, "A"), rb
    cdef _Rows* pb = NULL
    cdef const floating[:, :, :] Bv
    if B is not None:
        Bv = B
        rb = _rows_of(Bv, "B")
        pb = &rb
    nt = _clamp_threads(num_threads)
    if n * T * nb < 262144 or n < 64:
        nt = 1
    acc = np.empty(n, np.float64)
    cdef double[::1] ac = acc
    with nogil:
        if nt == 1:
            _step_sums_cols(&c[0], &ra, pb, T, nb, descending, 0, n, &ac[0])
        else:
            for ci in prange(nt, num_threads=nt, schedule="static"):
                _step_sums_cols(&c[0], &ra, pb, T, nb, descending, ci * n // nt,
                                (ci + 1) * n // nt, &ac[ci * n // nt])


def step_colsum_add(floating[::1] c, const floating[:, :, :] A, bint descending, int num_threads=1):
    """c += Σ over steps (backward's order) of each step's Σ_b A[t, b] (in double), rounded once a
    step: the bias gradients. A (T, batch, n), rows unit-stride."""
    _step_sums_vec(c, A, None, descending, num_threads)


def step_dot_add(floating[::1] c, const floating[:, :, :] A, B, bint descending,
                 int num_threads=1):
    """c += Σ over steps (backward's order) of each step's Σ_b A[t, b] ⊙ B[t, b] (in double), rounded
    once a step: the LSTM peephole gradients. A, B (T, batch, n), rows unit-stride."""
    _step_sums_vec(c, A, B, descending, num_threads)
