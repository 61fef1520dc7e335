# cython: language_level=3
"""rnncore._kernels: the compiled core.

    _scan.pxi          the scan: one forward and one backward time loop for every cell (direction,
                       lengths and the carry past the end, row layout, workspace slots, the threads'
                       row blocks, the input projection, the per-step recurrent product)
    _cell_rnn.pxi      each cell's step, forward and backward side by side, equations numbered as in
    _cell_lstm.pxi     rnncore/layers/reference.py
    _cell_gru.pxi
    _feedback.pxi      the gated-feedback RNN (rnncore.FeedbackRNN): a whole stack in one time loop,
                       forward and backward
    _kernels.pxd       the public nogil API (rc_cell, rc_seq, rc_arrays, rc_forward_*, rc_backward_*,
                       rc_step_*, Cell) that outside Cython extensions cimport
    this file          Cell (a layer-direction's weights, packed), `forward` / `backward` / `step`
                       (the Python entries, which check every array before the nogil code runs),
                       `matmul` (BLAS GEMMs on a fixed grid: the input gradient on the BLAS path, the
                       feedback stack's and the head's weight gradients), `colsum_add`, packing
    _wgrad.pxi         the layers' weight gradients: sums over every step in the backward scan's order
                       (the same bits in one call or in segments: checkpointed BPTT)
    _optim.pxi         the optimizers' fused passes over all parameters (norm, clip, update)
    _model.pxi         the models' softmax cross-entropy and embedding gradient

The Python adapters (rnncore/engine/cells.py) call these; nothing below the Python entries checks shapes or
touches a Python object while computing. All kernels release the GIL.

Notation (one layer, one direction; row-major; shown time-major, but every (T, B, .) or (T*B, .)
array may instead be batch-major, (B, T, .), when the layer is batch_first: see _scan.pxi):
    T steps, B sequences, I input features, H hidden units, P = H (or proj_size for LSTM),
    G = number of gates (RNN 1, LSTM 4 in order i,f,g,o, GRU 3 in order r,z,n), GH = G * H.
    x_t     (B, I)     input at step t
    h_t     (B, P)     hidden state after step t (h_{-1} = h0)
    c_t     (B, H)     LSTM cell state after step t
    a_t     (B, GH)    gate pre-activations x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh
    G[t]    (B, GH)    a_t, then on exit the gate activations of step t (what backward needs)
    hprev   (T, B, P)  the state *entering* step t (h_{t-1} forward, h_{t+1} for the reverse direction)
    out     (T*B, ldo) layer output; a direction writes columns [col0, col0 + P)
    lengths (B,)       valid steps per sequence; step t of sequence b is active iff t < lengths[b].
                       An inactive step leaves the state unchanged and outputs 0, so the reverse
                       direction starts at step lengths[b]-1 from h0, as pack_padded_sequence.
    dG[t]   (B, GH)    dL/da_t, written by backward for the weight-gradient GEMMs after the loop.
    dh      (B, P)     on entry dL/dh_n, on exit dL/dh0 (likewise dc for LSTM).
"""

from cython.parallel cimport prange
import numpy as np
cimport numpy as cnp
from cpython.ref cimport Py_INCREF
from libc.string cimport memcpy, memset

from rnncore._blas cimport (floating, gemm, mm_packed, mm_packed_bias, mm_packed2_bias,
                            packed_gemm, panel_width)

cnp.import_array()

cdef extern from "_rc_gemm.h" nogil:
    const int RC_VEC_BYTES

cdef extern from "_rc_math.h" nogil:
    void rc_sigmoidf_span(float* x, Py_ssize_t n)
    void rc_tanhf_span(float* x, Py_ssize_t n)
    void rc_sigmoid_span(double* x, Py_ssize_t n)
    void rc_tanh_span(double* x, Py_ssize_t n)
    int rc_openmp_enabled()

def vector_bytes():
    """Bytes of the vectors the kernels were compiled for: 64 (AVX-512) or 32 (AVX2, or narrower
    hardware, whose compiler splits them). Every width gives the same bits (tests/test_build.py)."""
    return RC_VEC_BYTES


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(rc_openmp_enabled())


cdef inline void _sigmoid_span(floating* x, Py_ssize_t n) noexcept nogil:
    """x := sigmoid(x) over n contiguous values, in place (vectorised for float)."""
    if floating is float:
        rc_sigmoidf_span(x, n)
    else:
        rc_sigmoid_span(x, n)


cdef inline void _tanh_span(floating* x, Py_ssize_t n) noexcept nogil:
    """x := tanh(x) over n contiguous values, in place (vectorised for float)."""
    if floating is float:
        rc_tanhf_span(x, n)
    else:
        rc_tanh_span(x, n)




def activation(floating[::1] x, str name):
    """x := sigmoid(x) or tanh(x) in place, with the gate kernels' own functions (for tests)."""
    if name not in ("sigmoid", "tanh"):
        raise ValueError(f"activation must be 'sigmoid' or 'tanh', got {name!r}")
    if x.shape[0] == 0:
        return
    if name == "sigmoid":
        _sigmoid_span(&x[0], x.shape[0])
    else:
        _tanh_span(&x[0], x.shape[0])




# --------------------------------------------------------------------------------------------------
# Weights packed for rnncore's own step GEMM (rnncore/_rc_gemm.h): once per call, outside the loop.
# --------------------------------------------------------------------------------------------------

cdef extern from "_rc_gemm.h" nogil:
    void rc_sgemm_packed_pack_t_panels(Py_ssize_t N, Py_ssize_t K, const float* W, Py_ssize_t ldw,
                                       float* Bp, Py_ssize_t p0, Py_ssize_t p1)
    void rc_dgemm_packed_pack_t_panels(Py_ssize_t N, Py_ssize_t K, const double* W, Py_ssize_t ldw,
                                       double* Bp, Py_ssize_t p0, Py_ssize_t p1)
    void rc_sgemm_packed_pack_n_panels(Py_ssize_t K, Py_ssize_t N, const float* W, Py_ssize_t ldw,
                                       float* Bp, Py_ssize_t p0, Py_ssize_t p1)
    void rc_dgemm_packed_pack_n_panels(Py_ssize_t K, Py_ssize_t N, const double* W, Py_ssize_t ldw,
                                       double* Bp, Py_ssize_t p0, Py_ssize_t p1)


cdef inline Py_ssize_t _npanels(Py_ssize_t n, Py_ssize_t nr) noexcept nogil:
    return (n + nr - 1) // nr


cdef enum:
    _ALIGN = 64  # bytes: a cache line, and a whole AVX-512 vector
ALIGN = _ALIGN

cdef extern from "numpy/arrayobject.h":
    # (not in Cython's numpy declarations) steals a reference to descr
    object PyArray_NewFromDescr(type subtype, cnp.dtype descr, int nd, cnp.npy_intp* dims,
                                cnp.npy_intp* strides, void* data, int flags, object obj)


def empty_aligned(shape, dtype):
    """np.empty(shape, dtype) whose data starts on a 64-byte boundary.

    numpy's large arrays start 16 bytes past one (malloc's header), so half of the 32-byte vector
    loads of a packed panel, or of a workspace row of 8 floats, would straddle two cache lines
    (measured: the step GEMM about 3% slower on a panel 16 bytes off). Rows whose length is a multiple
    of 64 bytes (H a multiple of 16 in float32) are then all aligned too."""
    cdef cnp.dtype dt = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return _empty_aligned(shape, dt)


cdef cnp.ndarray _empty_aligned(tuple shape, cnp.dtype dtype):
    # the array is a view, made with numpy's C API, into a byte buffer that it keeps alive (numpy's
    # slice, view and reshape cost 2 us a call, a sixth of packing a Cell at H = 64)
    cdef int nd = len(shape), i
    cdef cnp.npy_intp dims[32]
    cdef Py_ssize_t nbytes = dtype.itemsize
    if nd > 32:
        raise ValueError(f"empty_aligned: at most 32 dimensions, got {nd}")
    for i in range(nd):
        dims[i] = shape[i]
        if dims[i] < 0:
            raise ValueError(f"empty_aligned: negative dimensions are not allowed, got {shape}")
        nbytes *= dims[i]
    cdef cnp.ndarray buf = np.empty(nbytes + _ALIGN, np.uint8)
    cdef char* data = <char*> cnp.PyArray_DATA(buf)
    data += (_ALIGN - <size_t> data % _ALIGN) % _ALIGN
    Py_INCREF(dtype)        # PyArray_NewFromDescr steals a reference to the descriptor
    cdef cnp.ndarray out = PyArray_NewFromDescr(np.ndarray, dtype, nd, dims, NULL, data,
                                                cnp.NPY_ARRAY_CARRAY, None)
    cnp.set_array_base(out, buf)
    return out


def _usable_cpus():
    import os
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# Every team is clamped to this many threads (what rnncore.engine.threads.MAX_THREADS says: 4 x the
# usable CPUs, at least 64): far above it OpenMP cannot start the team (libgomp aborts, or the
# process segfaults), whatever number a caller passes.
cdef int _max_threads = max(64, 4 * _usable_cpus())


def max_threads():
    """The most threads any kernel runs (a larger num_threads runs this many)."""
    return _max_threads


cdef inline int _clamp_threads(int n) noexcept nogil:
    if n < 1:
        return 1
    return _max_threads if n > _max_threads else n


cdef inline void _pack_panels(const floating* W, Py_ssize_t ld, Py_ssize_t N, Py_ssize_t K, bint trans,
                              floating* o, Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    if floating is float:
        if trans:
            rc_sgemm_packed_pack_t_panels(N, K, W, ld, o, p0, p1)
        else:
            rc_sgemm_packed_pack_n_panels(K, N, W, ld, o, p0, p1)
    elif trans:
        rc_dgemm_packed_pack_t_panels(N, K, W, ld, o, p0, p1)
    else:
        rc_dgemm_packed_pack_n_panels(K, N, W, ld, o, p0, p1)


def _pack(W, bint trans, int num_threads=1):
    """B = W^T (trans; W is (N, K)) or B = W (W is (K, N)) packed into panels (rnncore/_rc_gemm.h):
    an array (panels * K, panel width) of W's dtype. Panels are split over num_threads threads (a
    copy: the same result on any number)."""
    if not cnp.PyArray_Check(W) or cnp.PyArray_NDIM(<cnp.ndarray> W) != 2 \
            or cnp.PyArray_TYPE(<cnp.ndarray> W) not in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64):
        raise TypeError(f"pack: expected a 2-D float32 or float64 array, got {W!r:.80}")
    cdef cnp.ndarray w = <cnp.ndarray> W
    if not cnp.PyArray_IS_C_CONTIGUOUS(w):
        raise ValueError("pack: the array must be C-contiguous")
    cdef bint f32 = cnp.PyArray_TYPE(w) == cnp.NPY_FLOAT32
    cdef Py_ssize_t ld = cnp.PyArray_DIMS(w)[1]
    cdef Py_ssize_t nr = panel_width(<float*> NULL) if f32 else panel_width(<double*> NULL)
    cdef Py_ssize_t N = cnp.PyArray_DIMS(w)[0] if trans else ld, K = ld if trans else cnp.PyArray_DIMS(w)[0]
    cdef Py_ssize_t npan = _npanels(N, nr), p
    cdef cnp.ndarray out = _empty_aligned((npan * K, nr), <cnp.dtype> w.dtype)
    cdef void* src = cnp.PyArray_DATA(w)
    cdef void* dst = cnp.PyArray_DATA(out)
    if N == 0 or K == 0:
        return out
    num_threads = _clamp_threads(num_threads)
    if N * K < 65536:   # below ~64K values a fork/join costs more than it saves
        num_threads = 1
    with nogil:
        if num_threads == 1:
            if f32:
                _pack_panels(<const float*> src, ld, N, K, trans, <float*> dst, 0, npan)
            else:
                _pack_panels(<const double*> src, ld, N, K, trans, <double*> dst, 0, npan)
        else:
            for p in prange(npan, num_threads=num_threads, schedule="static"):
                if f32:
                    _pack_panels(<const float*> src, ld, N, K, trans, <float*> dst, p, p + 1)
                else:
                    _pack_panels(<const double*> src, ld, N, K, trans, <double*> dst, p, p + 1)
    return out


def pack_t(W, num_threads=1):
    """W (N, K) -> W^T packed, for C (+)= A @ W^T per step (the forward products)."""
    return _pack(W, True, num_threads)


def pack_n(W, num_threads=1):
    """W (K, N) -> W packed, for C (+)= A @ W per step (the backward products)."""
    return _pack(W, False, num_threads)


def pack_gru_t(W_hh, bint reset_after, num_threads=1):
    """The GRU's forward step weights: pack_t(W_hh) when the whole 3H-column product runs at once
    (reset_after), else W_h{r,z}^T and W_hn^T packed one after the other (two separate products)."""
    if reset_after:
        return pack_t(W_hh, num_threads)
    H = W_hh.shape[1]
    rz, n = pack_t(W_hh[:2 * H], num_threads), pack_t(W_hh[2 * H:], num_threads)
    out = empty_aligned((rz.shape[0] + n.shape[0], rz.shape[1]), rz.dtype)
    out[:rz.shape[0]], out[rz.shape[0]:] = rz, n
    return out


def packed_matmul(floating[:, ::1] C, const floating[:, ::1] A, const floating[:, ::1] Wp,
                  const floating[::1] bias=None, const floating[:, ::1] A2=None,
                  const floating[:, ::1] W2p=None, bint two_pass=False):
    """C := bias + A @ W^T (+ A2 @ W2^T) with rnncore's own small GEMM (the per-step products), Wp =
    pack_t(W) and W2p = pack_t(W2). The two products run in one pass, or with two_pass the first
    into C and the second accumulated onto it (as the loops did before the one-pass form): the
    results must have the same bits. For tests; the kernels call the C functions directly."""
    cdef Py_ssize_t M = C.shape[0], N = C.shape[1], K = A.shape[1], nr = panel_width(&C[0, 0])
    cdef Py_ssize_t K2 = 0 if A2 is None else A2.shape[1]
    if A.shape[0] != M or Wp.shape[0] != _npanels(N, nr) * K or Wp.shape[1] != nr:
        raise ValueError(f"packed_matmul: A must be ({M}, K) and Wp pack_t of a ({N}, K) matrix, got "
                         f"A {tuple(A.shape)}, Wp {tuple(Wp.shape)}")
    if (A2 is None) != (W2p is None) or A2 is not None and (
            A2.shape[0] != M or W2p.shape[0] != _npanels(N, nr) * K2 or W2p.shape[1] != nr):
        raise ValueError("packed_matmul: A2 and W2p go together, A2 with C's rows and W2p = pack_t of "
                         f"a ({N}, {K2}) matrix")
    if bias is not None and bias.shape[0] != N:
        raise ValueError(f"packed_matmul: bias must have {N} values, got {bias.shape[0]}")
    if M == 0 or N == 0 or K == 0:
        raise ValueError("packed_matmul: empty operands")
    cdef const floating* pb = &bias[0] if bias is not None else NULL
    cdef const floating* a2 = &A2[0, 0] if K2 > 0 else NULL
    cdef const floating* w2 = &W2p[0, 0] if K2 > 0 else NULL
    with nogil:
        if K2 > 0 and not two_pass:
            mm_packed2_bias(M, N, K, &A[0, 0], K, &Wp[0, 0], K2, a2, K2, w2, pb, &C[0, 0], N)
        else:
            mm_packed_bias(M, N, K, &A[0, 0], K, &Wp[0, 0], pb, &C[0, 0], N)
            if K2 > 0:
                mm_packed(M, N, K2, a2, K2, True, NULL, 0, w2, K2, 0, True, &C[0, 0], N)


# --------------------------------------------------------------------------------------------------
# Large GEMMs, split across the OpenMP team (each thread calls single-threaded BLAS on a block).
# --------------------------------------------------------------------------------------------------

# The split of a large GEMM is a fixed grid of blocks that does not depend on the thread count:
# BLAS may round an element differently depending on the size of the block it falls in (OpenBLAS
# does, in float32), so one thread runs the very same block calls as a team would, and results are
# bit-identical whatever rnncore's thread setting. The grid has one block per CPU this process may
# use (read once, at import), so a team of that size is balanced and no BLAS call is cut smaller
# than it needs to be (each block re-reads the shared operand); blocks are at least GRID_MIN rows
# (or columns).
cdef enum:
    GRID_MIN = 32


cdef Py_ssize_t _grid_blocks = _usable_cpus()


def gemm_grid_blocks():
    """Blocks a large GEMM is cut into (at most): the CPUs this process could use at import."""
    return _grid_blocks


cdef inline Py_ssize_t _grid_parts(Py_ssize_t dim) noexcept nogil:
    cdef Py_ssize_t parts = dim // GRID_MIN
    if parts < 1:
        return 1
    return _grid_blocks if parts > _grid_blocks else parts


cdef inline void _fill_rows(floating* c, Py_ssize_t m, Py_ssize_t n, Py_ssize_t ldc,
                            const floating* row) noexcept nogil:
    # every one of the m rows of c (n columns, ldc apart) := row
    cdef Py_ssize_t i
    for i in range(m):
        memcpy(c + i * ldc, row, n * sizeof(floating))


cdef void _par_gemm(bint ta, bint tb, int m, int n, int k, floating alpha,
                    const floating* a, int lda, const floating* b, int ldb,
                    floating beta, floating* c, int ldc, const floating* bias,
                    int num_threads) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C, as a fixed grid of row (or column) blocks of C, one
    single-threaded BLAS call each, spread over the OpenMP team. With bias (n values), C's rows are
    set to it first and beta is 1: C := bias + alpha * op(A) @ op(B); each thread fills its own
    block just before its BLAS call.

    The grid depends on (m, n, k) only, so the bits do not depend on the thread count."""
    cdef Py_ssize_t p, parts, s0, s1
    cdef double work = <double> m * n * k
    if bias != NULL:
        beta = 1
    if work < 262144.0:
        if bias != NULL:
            _fill_rows(c, m, n, ldc, bias)
        gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    num_threads = _clamp_threads(num_threads)
    if m >= n:
        parts = _grid_parts(m)
        for p in prange(parts, num_threads=num_threads, schedule="static"):
            s0 = m * p // parts
            s1 = m * (p + 1) // parts
            if bias != NULL:
                _fill_rows(c + s0 * ldc, s1 - s0, n, ldc, bias)
            gemm(ta, tb, <int> (s1 - s0), n, k, alpha,
                 a + (s0 if ta else s0 * lda), lda, b, ldb, beta, c + s0 * ldc, ldc)
    else:
        parts = _grid_parts(n)
        for p in prange(parts, num_threads=num_threads, schedule="static"):
            s0 = n * p // parts
            s1 = n * (p + 1) // parts
            if bias != NULL:
                _fill_rows(c + s0, m, s1 - s0, ldc, bias + s0)
            gemm(ta, tb, m, <int> (s1 - s0), k, alpha,
                 a, lda, b + (s0 * ldb if tb else s0), ldb, beta, c + s0, ldc)


cdef enum:
    COLSUM_ROWS = 256    # rows per block of the bias-gradient sums (a fixed grid: any thread count)


cdef void _colsum_rows(double* acc, const floating* a, Py_ssize_t lda, Py_ssize_t i0, Py_ssize_t i1,
                       Py_ssize_t n) noexcept nogil:
    # acc[j] = sum over rows i in [i0, i1) of a[i, j], in row order, in double
    cdef Py_ssize_t i, j
    cdef const floating* row
    for j in range(n):
        acc[j] = 0
    for i in range(i0, i1):
        row = a + i * lda
        for j in range(n):
            acc[j] += row[j]


def colsum_add(floating[::1] out, const floating[:, :] A, int num_threads=1):
    """out += A.sum(axis=0), the bias gradients (A = dL/da over all T*B rows), on the team: blocks of
    COLSUM_ROWS rows are summed in double (each block by one thread, rows in order), then the
    blocks in order, and rounded once. The grid does not depend on the thread count, so neither
    do the bits (and the sum is closer than numpy's float32 one, which adds row after row in float32)."""
    cdef Py_ssize_t m = A.shape[0], n = A.shape[1], nblk, blk, j, lda
    if out.shape[0] != n:
        raise ValueError(f"colsum_add: out must have {n} values (A's columns), got {out.shape[0]}")
    if m == 0 or n == 0:
        return
    if A.strides[1] != sizeof(floating):
        raise ValueError("colsum_add: A's rows must be unit-stride")
    lda = A.strides[0] // sizeof(floating)
    nblk = (m + COLSUM_ROWS - 1) // COLSUM_ROWS
    partial = np.empty((nblk, n), np.float64)
    cdef double[:, ::1] P = partial
    cdef double* tot
    num_threads = _clamp_threads(num_threads)
    if m * n < 65536:
        num_threads = 1
    with nogil:
        for blk in prange(nblk, num_threads=num_threads, schedule="static"):
            _colsum_rows(&P[blk, 0], &A[0, 0], lda, blk * COLSUM_ROWS, min(m, (blk + 1) * COLSUM_ROWS), n)
        tot = &P[0, 0]
        for blk in range(1, nblk):
            for j in range(n):
                tot[j] += P[blk, j]
        for j in range(n):
            out[j] += <floating> tot[j]


def packed_rows_add(floating[:, ::1] C, const floating[:, ::1] A, const floating[:, ::1] Wp,
                    int num_threads=1):
    """C += A @ W with rnncore's own GEMM, Wp = pack_n(W) (W is (K, N), A (M, K), C (M, N)), rows in
    blocks over the team (_row_block). Every row of C is summed in one order whatever the number of
    rows, so a sequence's input gradient does not depend on the batch around it (BLAS's would)."""
    cdef Py_ssize_t M = C.shape[0], N = C.shape[1], K = A.shape[1], nr = panel_width(&Wp[0, 0])
    cdef Py_ssize_t mr = _row_block(M, num_threads), nblk = (M + mr - 1) // mr, blk, r0, r1
    if A.shape[0] != M or Wp.shape[0] != _npanels(N, nr) * K or Wp.shape[1] != nr:
        raise ValueError(f"packed_rows_add: want A ({M}, K) and Wp = pack_n of a (K, {N}) matrix, got "
                         f"A {tuple(A.shape)}, Wp {tuple(Wp.shape)}")
    if M == 0 or N == 0 or K == 0:
        return
    if num_threads < 1 or nblk < 2:
        num_threads = 1
    with nogil:
        for blk in prange(nblk, num_threads=num_threads, schedule="static"):
            r0 = blk * mr
            r1 = M if r0 + mr > M else r0 + mr
            mm_packed(r1 - r0, N, K, &A[r0, 0], K, False, NULL, 0, &Wp[0, 0], K, 0, True,
                      &C[r0, 0], N)


def matmul(floating[:, :] C, const floating[:, :] A, const floating[:, :] B,
           bint trans_a=False, bint trans_b=False, double alpha=1.0, double beta=0.0,
           int num_threads=1, const floating[::1] bias=None):
    """C := alpha * op(A) @ op(B) + beta * C on row-major 2-D views whose rows are unit-stride; given
    bias (one value per column of C), C := bias + alpha * op(A) @ op(B) instead (beta unused).

    Views may be column blocks of a larger array (their row stride is their leading dimension).
    """
    cdef Py_ssize_t isz = sizeof(floating)
    cdef int m = C.shape[0], n = C.shape[1]
    cdef int k = A.shape[0] if trans_a else A.shape[1]
    cdef int am = A.shape[1] if trans_a else A.shape[0]
    cdef int bk = B.shape[1] if trans_b else B.shape[0]
    cdef int bn = B.shape[0] if trans_b else B.shape[1]
    if am != m or bn != n or bk != k:
        raise ValueError(f"matmul: shapes do not agree: C {m}x{n}, op(A) {am}x{k}, op(B) {bk}x{bn}")
    if bias is not None and bias.shape[0] != n:
        raise ValueError(f"matmul: bias must have one value per column of C ({n}), got {bias.shape[0]}")
    if m == 0 or n == 0:
        return
    cdef const floating* pbias = &bias[0] if bias is not None else NULL
    if C.strides[1] != isz or A.strides[1] != isz or B.strides[1] != isz:
        raise ValueError("matmul: every view must have unit-stride rows")
    cdef int ldc = C.strides[0] // isz
    cdef int lda = A.strides[0] // isz
    cdef int ldb = B.strides[0] // isz
    ldc = ldc if ldc >= n and ldc > 0 else n
    lda = lda if lda >= A.shape[1] and lda > 0 else A.shape[1]
    ldb = ldb if ldb >= B.shape[1] and ldb > 0 else B.shape[1]
    if k == 0:
        # BLAS would reject lda for an empty operand; op(A) @ op(B) is all zeros.
        with nogil:
            if pbias != NULL:
                _fill_rows(&C[0, 0], m, n, ldc, pbias)
            else:
                _scale_rows(&C[0, 0], m, n, ldc, <floating> beta)
        return
    with nogil:
        _par_gemm(trans_a, trans_b, m, n, k, <floating> alpha, &A[0, 0], lda, &B[0, 0], ldb,
                  <floating> beta, &C[0, 0], ldc, pbias, num_threads)


cdef void _scale_rows(floating* c, Py_ssize_t m, Py_ssize_t n, Py_ssize_t ldc,
                      floating beta) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(m):
        for j in range(n):
            c[i * ldc + j] = 0 if beta == 0 else beta * c[i * ldc + j]




include "_scan.pxi"
include "_cell_rnn.pxi"
include "_cell_lstm.pxi"
include "_cell_gru.pxi"
include "_wgrad.pxi"
include "_optim.pxi"
include "_model.pxi"


# --------------------------------------------------------------------------------------------------
# Cell: a layer-direction's weights as the scan reads them, and the Python entries into the scan.
# --------------------------------------------------------------------------------------------------

KINDS = {"rnn_tanh": RC_RNN_TANH, "rnn_relu": RC_RNN_RELU, "lstm": RC_LSTM, "gru": RC_GRU,
         "gru_reset_before": RC_GRU_RESET_BEFORE}
_INT32 = np.dtype(np.int32)
_GATES = {RC_RNN_TANH: 1, RC_RNN_RELU: 1, RC_LSTM: 4, RC_GRU: 3, RC_GRU_RESET_BEFORE: 3}


cdef void* _data(object a, str name, cnp.dtype dtype, tuple shape, bint optional=False) except? NULL:
    """The data pointer of a, after checking that it is a C-contiguous array of dtype and shape (a
    None shape entry takes any size); NULL for a None when optional."""
    # (written with numpy's C API: the checks cost well under a microsecond a call, which matters to
    # layer.step at batch 1)
    cdef int i, nd = len(shape)
    cdef cnp.ndarray arr
    if a is None and optional:
        return NULL
    if a is None:
        raise ValueError(f"{name} must be an array of shape "
                         f"{tuple('.' if w is None else w for w in shape)}, got None")
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    arr = <cnp.ndarray> a
    if cnp.PyArray_TYPE(arr) != dtype.type_num:
        raise TypeError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    bad = cnp.PyArray_NDIM(arr) != nd
    for i in range(nd if not bad else 0):
        w = shape[i]
        if w is not None and <Py_ssize_t> w != cnp.PyArray_DIMS(arr)[i]:
            bad = True
    if bad:
        raise ValueError(f"{name} must have shape {tuple('.' if w is None else w for w in shape)}, "
                         f"got {a.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name} must be C-contiguous")
    return cnp.PyArray_DATA(arr)


cdef class Cell:
    """One layer-direction's cell as the compiled core reads it: its kind, sizes and weights, with
    the copies the chosen path needs (W^T packed into panels for rnncore's own step GEMM, the summed
    biases). Packing happens here, once, outside the time loop.

    Cell(kind, params, *, own_gemm=True, in_loop=False, backward=False, num_threads=1)
        kind      "rnn_tanh", "rnn_relu", "lstm", "gru" (reset after) or "gru_reset_before"
        params    {"w_ih", "w_hh", ["b_ih", "b_hh"], ["w_hr"], ["w_ci", "w_cf", "w_co"]}: arrays of
                  one float dtype, PyTorch's shapes
        own_gemm  the per-step products on rnncore's own small GEMM (else BLAS)
        in_loop   the input projection inside the time loop (needs own_gemm), else before it
        backward  pack what the backward pass reads instead of what the forward pass reads

    The Cell keeps its arrays alive (`arrays`); `c` is the rc_cell that outside Cython code passes
    to rc_step_* / rc_forward_* (rnncore/_kernels.pxd).
    """

    def __init__(self, str kind, dict params, *, bint own_gemm=True, bint in_loop=False,
                 bint backward=False, int num_threads=1):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        cdef int k = KINDS[kind]
        w_ih, w_hh = params.get("w_ih"), params.get("w_hh")
        if not isinstance(w_hh, np.ndarray) or w_hh.dtype not in (np.float32, np.float64) \
                or w_hh.ndim != 2:
            raise TypeError("params['w_hh'] must be a 2-D float32 or float64 array")
        dtype = w_hh.dtype
        gates = _GATES[k]
        GH, P = w_hh.shape
        H = GH // gates
        if GH % gates or H < 1 or P < 1 or (k != RC_LSTM or "w_hr" not in params) and P != H:
            raise ValueError(f"params['w_hh'] must be ({gates} * hidden, hidden), got {w_hh.shape}")
        if not isinstance(w_ih, np.ndarray) or w_ih.ndim != 2:
            raise TypeError("params['w_ih'] must be a 2-D array")
        I = w_ih.shape[1]
        if in_loop and (not own_gemm or I == 0):
            raise ValueError("in_loop needs own_gemm and at least one input")
        arrays = {"w_ih": w_ih, "w_hh": w_hh}
        if "b_ih" in params:    # checked for either pass: the kernels read them through the summed bias
            _data(params["b_ih"], "params['b_ih']", dtype, (GH,))
            _data(params["b_hh"], "params['b_hh']", dtype, (GH,))
        if "b_ih" in params and not backward:
            b_ih, b_hh = params["b_ih"], params["b_hh"]
            if gates == 3:
                # b_hr and b_hz fold into the projection; b_hn stays inside r ⊙ (...)
                bias = b_ih.copy()
                bias[:2 * H] += b_hh[:2 * H]
                arrays["b_hn"] = np.ascontiguousarray(b_hh[2 * H:])
            else:
                bias = b_ih + b_hh
            arrays["bias"] = bias
        if k == RC_LSTM:
            for name in ("w_hr", "w_ci", "w_cf", "w_co"):
                if name in params:
                    arrays[name] = params[name]
        if own_gemm:
            if backward:
                arrays["w_hh_n"] = pack_n(w_hh, num_threads)
                if I > 0:    # the input gradient dx += dG W_ih
                    arrays["w_ih_n"] = pack_n(w_ih, num_threads)
                if "w_hr" in arrays:
                    arrays["w_hr_n"] = pack_n(arrays["w_hr"], num_threads)
            else:
                arrays["w_hh_t"] = (pack_gru_t(w_hh, k == RC_GRU, num_threads) if gates == 3
                                    else pack_t(w_hh, num_threads))
                if "w_hr" in arrays:
                    arrays["w_hr_t"] = pack_t(arrays["w_hr"], num_threads)
                if I > 0:    # the projection, inside the loop or before it
                    arrays["w_ih_t"] = pack_t(w_ih, num_threads)
        self.c.in_loop = in_loop
        self.c.kind, self.c.n_in, self.c.H, self.c.P, self.c.GH = k, I, H, P, GH
        self.c.w_ih = _data(w_ih, "params['w_ih']", dtype, (GH, I))
        self.c.w_hh = _data(w_hh, "params['w_hh']", dtype, (GH, P))
        self.c.w_hh_t = _data(arrays.get("w_hh_t"), "w_hh_t", dtype, (None, None), True)
        self.c.w_hh_n = _data(arrays.get("w_hh_n"), "w_hh_n", dtype, (None, None), True)
        self.c.w_ih_t = _data(arrays.get("w_ih_t"), "w_ih_t", dtype, (None, None), True)
        self.c.bias = _data(arrays.get("bias"), "bias", dtype, (GH,), True)
        self.c.b_hn = _data(arrays.get("b_hn"), "b_hn", dtype, (H,), True)
        self.c.w_hr = _data(arrays.get("w_hr"), "params['w_hr']", dtype, (P, H), True)
        self.c.w_hr_t = _data(arrays.get("w_hr_t"), "w_hr_t", dtype, (None, None), True)
        self.c.w_hr_n = _data(arrays.get("w_hr_n"), "w_hr_n", dtype, (None, None), True)
        self.c.w_ci = _data(arrays.get("w_ci"), "params['w_ci']", dtype, (H,), True)
        self.c.w_cf = _data(arrays.get("w_cf"), "params['w_cf']", dtype, (H,), True)
        self.c.w_co = _data(arrays.get("w_co"), "params['w_co']", dtype, (H,), True)
        if (self.c.w_ci == NULL) != (self.c.w_cf == NULL) or (self.c.w_ci == NULL) != (self.c.w_co == NULL):
            raise ValueError("peepholes need all of w_ci, w_cf and w_co")
        self.arrays, self.dtype = arrays, np.dtype(dtype)

    @property
    def kind(self):
        return next(name for name, k in KINDS.items() if k == self.c.kind)

    @property
    def in_loop(self):
        """Whether the input projection runs inside the time loop (else before it, into G)."""
        return bool(self.c.in_loop)

    @property
    def sizes(self):
        """(I, H, P, GH): inputs, hidden units, state width, gate columns."""
        return self.c.n_in, self.c.H, self.c.P, self.c.GH

    def workspace_size(self, Py_ssize_t batch):
        """Values of the cell's dtype that one step (rc_step_*, step_stack) needs as work for `batch`
        rows."""
        return rc_step_workspace(&self.c, batch)

def step_stack(list cells, x, h, c, h_out, c_out, list work):
    """One step of a stack of cells (streaming, layer.step): layer l reads layer l-1's new state (layer
    0 reads x (B, I)); h, h_out (L, B, P) and, for an LSTM, c, c_out (L, B, H) (else None); work[l]:
    cells[l].workspace_size(B) values. Checked once, then every layer runs in one nogil call."""
    cdef Py_ssize_t L = len(cells), B, l, P, H
    cdef Cell cell
    if L < 1 or len(work) != L:
        raise ValueError(f"step_stack: want one work buffer per cell, got {L} cells, {len(work)} buffers")
    cell = cells[0]
    P, H = cell.c.P, cell.c.H
    B = h.shape[1] if isinstance(h, np.ndarray) and h.ndim == 3 else -1
    cdef bint lstm = cell.c.kind == RC_LSTM
    cdef char* px = <char*> _data(x, "x_t", cell.dtype, (B, cell.c.n_in))
    cdef char* ph = <char*> _data(h, "h", cell.dtype, (L, B, P))
    cdef char* pho = <char*> _data(h_out, "h_out", cell.dtype, (L, B, P))
    cdef char* pc = NULL
    cdef char* pco = NULL
    if lstm:
        pc = <char*> _data(c, "c", cell.dtype, (L, B, H))
        pco = <char*> _data(c_out, "c_out", cell.dtype, (L, B, H))
    cdef Py_ssize_t itemsize = cell.dtype.itemsize
    cdef bint f32 = cell.dtype == np.float32
    ptrs = np.empty(2 * L, np.intp)                 # each layer's rc_cell and work buffer
    cdef Py_ssize_t[::1] pv = ptrs
    for l in range(L):
        cell = cells[l]
        if cell.dtype != cells[0].dtype or cell.c.P != P or cell.c.H != H or cell.c.kind != (<Cell> cells[0]).c.kind \
                or l > 0 and cell.c.n_in != P:
            raise ValueError(f"step_stack: cell {l} does not stack on the ones before it")
        pv[2 * l] = <Py_ssize_t> &cell.c
        pv[2 * l + 1] = <Py_ssize_t> _data(work[l], "work", cell.dtype, (rc_step_workspace(&cell.c, B),))
    cdef char* xin
    cdef char* cin
    cdef char* cout
    cdef Py_ssize_t hs = B * P * itemsize, cs = B * H * itemsize
    with nogil:
        for l in range(L):
            xin = px if l == 0 else pho + (l - 1) * hs
            cin = pc + l * cs if lstm else NULL
            cout = pco + l * cs if lstm else NULL
            if f32:
                rc_step_f(<const rc_cell*> pv[2 * l], B, <const float*> xin, <const float*> (ph + l * hs),
                          <const float*> cin, <float*> (pho + l * hs), <float*> cout, <float*> pv[2 * l + 1])
            else:
                rc_step_d(<const rc_cell*> pv[2 * l], B, <const double*> xin, <const double*> (ph + l * hs),
                          <const double*> cin, <double*> (pho + l * hs), <double*> cout,
                          <double*> pv[2 * l + 1])


cdef int _sequence(rc_seq* q, Cell cell, object lengths, Py_ssize_t rows, bint reverse,
                   bint batch_first, bint keep) except -1:
    q.B = lengths.shape[0] if isinstance(lengths, np.ndarray) else -1
    if q.B < 1 or rows % q.B:
        raise ValueError(f"lengths must be an int32 array of the batch's sequences, got "
                         f"{getattr(lengths, 'shape', lengths)} for {rows} rows")
    q.lengths = <const int*> _data(lengths, "lengths", _INT32, (q.B,))
    q.T = rows // q.B
    q.reverse, q.keep = reverse, keep
    if batch_first:
        q.ts, q.rs = 1, q.T
    else:
        q.ts, q.rs = q.B, 1
    return 0


cdef void* _rows(object a, str name, Cell cell, const rc_seq* q, bint keep,
                 Py_ssize_t width) except? NULL:
    # a workspace array: every step in the layer's order, or the two slots (2, B, width)
    cdef Py_ssize_t T = q.T, B = q.B
    want = ((B, T) if q.ts == 1 and q.rs == T else (T, B)) if keep else (min(T, 2), B)
    return _data(a, name, cell.dtype, want + (width,))


cdef void* _cols(object a, str name, Cell cell, const rc_seq* q, Py_ssize_t col0,
                 Py_ssize_t width, Py_ssize_t* ld) except? NULL:
    # a (T*B, ld) array of which this direction uses columns [col0, col0 + width)
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[0] != q.T * q.B \
            or col0 < 0 or col0 + width > a.shape[1]:
        raise ValueError(f"{name} must be ({q.T * q.B}, >= {col0 + width}), got "
                         f"{getattr(a, 'shape', type(a).__name__)}")
    ld[0] = a.shape[1]
    cdef char* p = <char*> _data(a, name, cell.dtype, (None, None))
    return p + col0 * <Py_ssize_t> cell.dtype.itemsize


def forward(Cell cell, *, x, out, Py_ssize_t col0, h0, c0=None, h_n, c_n=None, lengths,
            bint reverse=False, bint batch_first=False, bint keep=True, dict ws, int num_threads=1):
    """One layer-direction through every step (the scan, _scan.pxi).

    x (T*B, I) and out (T*B, ldo; this direction writes columns [col0, col0 + P)) in the layer's row
    order (batch-major when batch_first); h0, h_n (B, P); c0, c_n (B, H) for an LSTM; lengths (B,)
    int32. ws: the workspace, {"G", "hprev", and per cell "cprev", "cnew", "M" (LSTM with
    projection), "HN" (GRU), "buf"} with every step's rows when keep (what backward reads), else two
    slots (2, B, .); G always has every step's rows unless the cell projects inside the loop."""
    cdef rc_seq q
    cdef rc_arrays a
    memset(&q, 0, sizeof(q))
    memset(&a, 0, sizeof(a))
    cdef Py_ssize_t I = cell.c.n_in, H = cell.c.H, P = cell.c.P, GH = cell.c.GH
    cdef bint lstm = cell.c.kind == RC_LSTM, gru = _GATES[cell.c.kind] == 3
    _sequence(&q, cell, lengths, out.shape[0] if isinstance(out, np.ndarray) else -1, reverse,
              batch_first, keep)
    a.x = _data(x, "x", cell.dtype, (q.T * q.B, I))
    a.ldx = I
    a.out = _cols(out, "out", cell, &q, col0, P, &a.ldo)
    a.h0 = _data(h0, "h0", cell.dtype, (q.B, P))
    a.h_n = _data(h_n, "h_n", cell.dtype, (q.B, P))
    if lstm:
        a.c0 = _data(c0, "c0", cell.dtype, (q.B, H))
        a.c_n = _data(c_n, "c_n", cell.dtype, (q.B, H))
        a.cprev = _rows(ws["cprev"], "cprev", cell, &q, keep, H)
        a.cnew = _rows(ws["cnew"], "cnew", cell, &q, keep, H)
        if cell.c.w_hr != NULL:
            a.M = _rows(ws["M"], "M", cell, &q, keep, H)
            a.buf = _data(ws["buf"], "buf", cell.dtype, (q.B, P))
    if gru:
        a.HN = _rows(ws["HN"], "HN", cell, &q, keep, H)
        a.buf = _data(ws["buf"], "buf", cell.dtype, (q.B, GH))
    a.G = _rows(ws["G"], "G", cell, &q, keep or not cell.c.in_loop, GH)
    a.hprev = _rows(ws["hprev"], "hprev", cell, &q, keep, P)
    cdef bint f32 = cell.dtype == np.float32
    num_threads = _clamp_threads(num_threads)
    with nogil:
        if f32:
            rc_forward_f(&cell.c, &q, &a, num_threads)
        else:
            rc_forward_d(&cell.c, &q, &a, num_threads)


def backward(Cell cell, *, dout, Py_ssize_t col0, dh, dc=None, saved, lengths,
             bint reverse=False, bint batch_first=False, dict ws, int num_threads=1):
    """Backpropagation through time over `forward` (which ran with keep=True): writes ws["dG"] =
    dL/da in G's layout (GRU: of the input-side pre-activations, and with reset after ws["dGh"] =
    dL/d(h W_hn^T + b_hn); an LSTM with projection also ws["dH"] = dL/dh_t); dh (B, P) and dc (B, H)
    go from dL/dh_n, dL/dc_n to dL/dh0, dL/dc0. saved: forward's workspace. ws["buf"]: an LSTM's
    (2, B, H), a GRU's with reset before (B, H)."""
    cdef rc_seq q
    cdef rc_arrays a
    memset(&q, 0, sizeof(q))
    memset(&a, 0, sizeof(a))
    cdef Py_ssize_t H = cell.c.H, P = cell.c.P, GH = cell.c.GH
    cdef bint lstm = cell.c.kind == RC_LSTM
    _sequence(&q, cell, lengths, dout.shape[0] if isinstance(dout, np.ndarray) else -1, reverse,
              batch_first, True)
    a.dout = _cols(dout, "dout", cell, &q, col0, P, &a.ldo)
    a.dh = _data(dh, "dh", cell.dtype, (q.B, P))
    a.G = _rows(saved["G"], "G", cell, &q, True, GH)
    a.hprev = _rows(saved["hprev"], "hprev", cell, &q, True, P)
    a.dG = _rows(ws["dG"], "dG", cell, &q, True, GH)
    if lstm:
        a.dc = _data(dc, "dc", cell.dtype, (q.B, H))
        a.cprev = _rows(saved["cprev"], "cprev", cell, &q, True, H)
        a.cnew = _rows(saved["cnew"], "cnew", cell, &q, True, H)
        a.buf = _data(ws["buf"], "buf", cell.dtype, (2, q.B, H))
        if cell.c.w_hr != NULL:
            a.dH = _rows(ws["dH"], "dH", cell, &q, True, P)
    elif cell.c.kind == RC_GRU:
        a.HN = _rows(saved["HN"], "HN", cell, &q, True, H)
        a.dGh = _rows(ws["dGh"], "dGh", cell, &q, True, H)
    elif cell.c.kind == RC_GRU_RESET_BEFORE:
        a.HN = _rows(saved["HN"], "HN", cell, &q, True, H)
        a.buf = _data(ws["buf"], "buf", cell.dtype, (q.B, H))
    cdef bint f32 = cell.dtype == np.float32
    num_threads = _clamp_threads(num_threads)
    with nogil:
        if f32:
            rc_backward_f(&cell.c, &q, &a, num_threads)
        else:
            rc_backward_d(&cell.c, &q, &a, num_threads)


include "_feedback.pxi"
