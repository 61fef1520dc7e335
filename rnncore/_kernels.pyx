# cython: language_level=3
"""rnncore._kernels: the compiled core.

What lives here, for each cell type (vanilla RNN, LSTM, GRU), side by side:

    <cell>_forward(...)   the time loop of one layer in one direction
    <cell>_backward(...)  backpropagation through time over the same loop

plus `matmul` (every large GEMM: the input projection of all timesteps when it runs before the loop,
the weight and input gradients of all timesteps after it). The Python layer driver
(rnncore/layers.py) calls them; it validates everything first, so nothing here checks shapes or
touches a Python object while computing. All kernels release the GIL.

Notation (one layer, one direction; arrays are row-major; shown time-major, but every (T, B, .) or
(T*B, .) array may instead be batch-major, (B, T, .), when the layer is batch_first: see "Row layout"):
    T steps, B sequences, I input features, H hidden units, P = H (or proj_size for LSTM),
    G = number of gates (RNN 1, LSTM 4 in order i,f,g,o, GRU 3 in order r,z,n).
    x_t     (B, I)     input at step t
    h_t     (B, P)     hidden state after step t (h_{-1} = h0)
    c_t     (B, H)     LSTM cell state after step t
    a_t     (B, G*H)   gate pre-activations x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh
    G[t]    (B, G*H)   x_t W_ih^T + biases (computed by `matmul` before the loop, or by the loop
                       itself step by step: "The input projection, step by step"), then
                       on exit the gate activations of step t (what backward needs)
    hprev   (T, B, P)  the state *entering* step t (h_{t-1} forward, h_{t+1} for the reverse direction)
    out     (T*B, ldo) layer output; a direction writes columns [col0, col0 + P)
    lengths (B,)       valid steps per sequence; step t of sequence b is active iff t < lengths[b].
                       An inactive step leaves the state unchanged and outputs 0, so the reverse
                       direction starts at step lengths[b]-1 from h0, as pack_padded_sequence.
    dG[t]   (B, G*H)   dL/da_t, written by backward for the weight-gradient GEMMs after the loop.
    dh      (B, P)     on entry dL/dh_n, on exit dL/dh0 (likewise dc for LSTM).

Parallelism: the batch is cut into one contiguous block of rows per thread; each thread runs the whole
time loop for its rows (rows are independent), calling BLAS on one thread for its block, so no barrier
is needed inside the loop. The caller limits BLAS to one thread around every kernel call
(rnncore/_threads.py), so OpenMP and BLAS thread pools never run at the same time.
"""

from cython.parallel cimport prange
import numpy as np
from libc.string cimport memcpy, memset

from rnncore._blas cimport (RC_NR_F, floating, gemm, mm_packed, mm_packed_bias, mm_packed2_bias,
                            panel_width)

cdef extern from "_rc_math.h" nogil:
    void rc_sigmoidf_span(float* x, Py_ssize_t n)
    void rc_tanhf_span(float* x, Py_ssize_t n)
    void rc_sigmoid_span(double* x, Py_ssize_t n)
    void rc_tanh_span(double* x, Py_ssize_t n)
    void rc_lstm_cell_backward_f(Py_ssize_t n, const float* gi, const float* gf, const float* gg,
                                 const float* go, const float* cp, const float* tc, const float* dm,
                                 float* dc, float* dai, float* daf, float* dag, float* dao,
                                 const float* wci, const float* wcf, const float* wco)
    void rc_lstm_cell_backward_d(Py_ssize_t n, const double* gi, const double* gf,
                                 const double* gg, const double* go, const double* cp,
                                 const double* tc, const double* dm, double* dc, double* dai,
                                 double* daf, double* dag, double* dao, const double* wci,
                                 const double* wcf, const double* wco)
    void rc_gru_cell_backward_f(Py_ssize_t n, const float* dout, const float* gr, const float* gz,
                                const float* gn, const float* hp, const float* hn, float* dh,
                                float* dar, float* daz, float* dan, float* dq)
    void rc_gru_cell_backward_d(Py_ssize_t n, const double* dout, const double* gr,
                                const double* gz, const double* gn, const double* hp,
                                const double* hn, double* dh, double* dar, double* daz, double* dan,
                                double* dq)
    void rc_rnn_cell_backward_f(Py_ssize_t n, const float* dout, const float* h, float* dh,
                                float* da, int relu)
    void rc_rnn_cell_backward_d(Py_ssize_t n, const double* dout, const double* h, double* dh,
                                double* da, int relu)
    int rc_openmp_enabled()


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


cdef inline void _rnn_cell_backward(Py_ssize_t n, const floating* dout, const floating* h,
                                    floating* dh, floating* da, bint relu) noexcept nogil:
    """rc_rnn_cell_backward (rnncore/_rc_math.h) for this dtype."""
    if floating is float:
        rc_rnn_cell_backward_f(n, dout, h, dh, da, relu)
    else:
        rc_rnn_cell_backward_d(n, dout, h, dh, da, relu)


cdef inline void _lstm_cell_backward(Py_ssize_t H, const floating* g, const floating* cp,
                                     const floating* tc, const floating* dm, floating* dc,
                                     floating* da, const floating* wci, const floating* wcf,
                                     const floating* wco) noexcept nogil:
    """rc_lstm_cell_backward (rnncore/_rc_math.h) for this dtype, over one row of H units; g and da
    hold the row's four gates, H apart."""
    if floating is float:
        rc_lstm_cell_backward_f(H, g, g + H, g + 2 * H, g + 3 * H, cp, tc, dm, dc,
                                da, da + H, da + 2 * H, da + 3 * H, wci, wcf, wco)
    else:
        rc_lstm_cell_backward_d(H, g, g + H, g + 2 * H, g + 3 * H, cp, tc, dm, dc,
                                da, da + H, da + 2 * H, da + 3 * H, wci, wcf, wco)


cdef inline void _gru_cell_backward(Py_ssize_t H, const floating* dout, const floating* g,
                                    const floating* hp, const floating* hn, floating* dh,
                                    floating* dx, floating* dq) noexcept nogil:
    """rc_gru_cell_backward (rnncore/_rc_math.h) for this dtype, over one row of H units; g and dx
    hold the row's three gates, H apart; hn and dq NULL (and dL/da_r not written) with reset
    before."""
    cdef floating* dar = dx if hn != NULL else NULL
    if floating is float:
        rc_gru_cell_backward_f(H, dout, g, g + H, g + 2 * H, hp, hn, dh, dar, dx + H, dx + 2 * H,
                               dq)
    else:
        rc_gru_cell_backward_d(H, dout, g, g + H, g + 2 * H, hp, hn, dh, dar, dx + H, dx + 2 * H,
                               dq)


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


cdef inline Py_ssize_t _nchunks(Py_ssize_t B, int num_threads) noexcept nogil:
    if num_threads < 1:
        return 1
    return B if B < num_threads else num_threads


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


cdef extern from "_rc_gemm.h" nogil:
    double rc_fma_peak_f32(long iters)


def fma_peak_gflops(int num_threads=1, double seconds=0.2):
    """The machine's FP32 peak as this build sees it: GFLOP/s of independent vector FMAs (the GEMM's
    vector type) on num_threads OpenMP threads, best of 5 runs of about seconds / 5 each."""
    import time
    cdef long iters = 1000000
    cdef int p
    cdef double flops = 0, best = 0, t
    t = time.perf_counter()
    with nogil:
        rc_fma_peak_f32(iters)
    t = time.perf_counter() - t
    iters = max(1000, <long> (iters * seconds / 5 / max(t, 1e-6)))
    for _ in range(5):
        t = time.perf_counter()
        with nogil:
            for p in prange(num_threads, num_threads=num_threads, schedule="static"):
                rc_fma_peak_f32(iters)
        t = time.perf_counter() - t
        best = max(best, 2.0 * 12.0 * (RC_NR_F // 2) * iters * num_threads / t / 1e9)
    return best


cdef inline Py_ssize_t _npanels(Py_ssize_t n, Py_ssize_t nr) noexcept nogil:
    return (n + nr - 1) // nr


ALIGN = 64   # bytes: a cache line, and a whole AVX-512 vector


def empty_aligned(shape, dtype):
    """np.empty(shape, dtype) whose data starts on a 64-byte boundary.

    numpy's large arrays start 16 bytes past one (malloc's header), so half of the 32-byte vector
    loads of a packed panel, or of a workspace row of 8 floats, would straddle two cache lines
    (measured: the step GEMM about 3% slower on a panel 16 bytes off). Rows whose length is a multiple
    of 64 bytes (H a multiple of 16 in float32) are then all aligned too."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    buf = np.empty(nbytes + ALIGN, np.uint8)
    off = -buf.ctypes.data % ALIGN
    return buf[off:off + nbytes].view(dtype).reshape(shape)


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


def _pack(const floating[:, ::1] W, bint trans, int num_threads=1):
    """B = W^T (trans; W is (N, K)) or B = W (W is (K, N)) packed into panels (rnncore/_rc_gemm.h):
    an array (panels * K, panel width) of W's dtype. Panels are split over num_threads threads (a
    copy: the same result on any number)."""
    cdef Py_ssize_t ld = W.shape[1], nr = panel_width(&W[0, 0])
    cdef Py_ssize_t N = W.shape[0] if trans else W.shape[1], K = W.shape[1] if trans else W.shape[0]
    cdef Py_ssize_t npan = _npanels(N, nr), p
    out = empty_aligned((npan * K, nr), np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] o = out
    if num_threads < 1 or N * K < 65536:   # below ~64K values a fork/join costs more than it saves
        num_threads = 1
    with nogil:
        if num_threads == 1:
            _pack_panels(&W[0, 0], ld, N, K, trans, &o[0, 0], 0, npan)
        else:
            for p in prange(npan, num_threads=num_threads, schedule="static"):
                _pack_panels(&W[0, 0], ld, N, K, trans, &o[0, 0], p, p + 1)
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


def _usable_cpus():
    import os
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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
    if num_threads < 1:
        num_threads = 1
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
    if num_threads < 1 or m * n < 65536:
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


# --------------------------------------------------------------------------------------------------
# Row layout. Every (T*B)-row array of a layer (G, hprev, cprev, cnew, M, HN, dG, dH, out, dout) has
# the layer's row order: row (t, b) is at t * ts + b * rs, with (ts, rs) = (B, 1) time-major or
# (1, T) batch_first, so batch_first input and output need no transposing copies. Within one step,
# a thread's rows are rs rows apart: the step GEMMs read and write them with that leading dimension.
# Per-step buffers (h0, h_n, c_n, dh, dc, gh, hbuf, dmbuf, tcbuf) are (B, .) and contiguous.
# --------------------------------------------------------------------------------------------------

cdef inline void _row_strides(bint batch_first, Py_ssize_t T, Py_ssize_t B,
                              Py_ssize_t* ts, Py_ssize_t* rs) noexcept nogil:
    if batch_first:
        ts[0] = 1
        rs[0] = T
    else:
        ts[0] = B
        rs[0] = 1


# Workspace rows. Training keeps what backward needs for every step: G, hprev, cprev, cnew, M and HN
# have the layer's row layout (row (t, b) at t * ts + b * rs). Inference (keep False) needs only the
# current step and the next: those arrays are (2, B, .) (time-major: ts = B, rs = 1), step s uses
# slot s % 2 and writes the next step's state into slot (s+1) % 2, so the time loop works on a few
# hundred KB that stay in cache instead of writing tens of MB. G has its own layout: it is kept whole
# whenever it arrives holding the projection of every step (W_ih_t NULL: the GEMM before the loop),
# even without keep.

cdef struct _Layout:
    bint keep           # every step has its own rows; else two slots, step s in slot s % 2
    Py_ssize_t ts, rs   # row (time index, b) at index * ts + b * rs


cdef inline Py_ssize_t _row(_Layout L, Py_ssize_t s, Py_ssize_t t, Py_ssize_t b) noexcept nogil:
    # the row of sequence b at step s (time t) in an array of layout L
    return (t if L.keep else s % 2) * L.ts + b * L.rs


cdef int _layout(str name, a, Py_ssize_t T, Py_ssize_t B, bint batch_first, bint keep,
                 _Layout* L) except -1:
    """L := the layout of a (every step kept, or two slots), after checking a's leading shape."""
    want = ((B, T) if batch_first else (T, B)) if keep else (min(T, 2), B)
    if tuple(a.shape[:2]) != want:
        raise ValueError(f"{name} must be {want} + (.,) "
                         f"({'every step' if keep else 'the current and next step'}), "
                         f"got {tuple(a.shape[:2])} + (.,)")
    L.keep = keep
    if keep and batch_first:
        L.ts, L.rs = 1, T
    else:
        L.ts, L.rs = B, 1
    return 0


# --------------------------------------------------------------------------------------------------
# The input projection, step by step. With rnncore's own step GEMM (W_ih_t = W_ih^T packed) each step
# starts its gate pre-activations from x_t W_ih^T + biases inside the time loop, just before the
# recurrent product adds to them: G[t] is written while in cache and read back at once, instead of one
# (T*B, gates*H) GEMM before the loop (a pass over an array of tens of MB, then a cache miss on every
# row of G in the loop). With W_ih_t NULL (the BLAS path) G holds the projection on entry, computed
# by `matmul` before the loop, and nothing happens here.
# --------------------------------------------------------------------------------------------------

cdef inline void _project_step(floating* g, Py_ssize_t sG, const floating* x, Py_ssize_t ldx,
                               Py_ssize_t row0, Py_ssize_t rs, Py_ssize_t nb, Py_ssize_t I,
                               Py_ssize_t GH, const floating* W_ih_t,
                               const floating* bias) noexcept nogil:
    # g (nb rows, sG apart) := bias + x_t W_ih^T for the rows from (t, b0) = row0, rs rows apart
    if W_ih_t != NULL:
        mm_packed_bias(nb, GH, I, x + row0 * ldx, rs * ldx, W_ih_t, bias, g, sG)


cdef inline void _step_products(floating* g, Py_ssize_t sG, const floating* x, Py_ssize_t ldx,
                                Py_ssize_t row0, Py_ssize_t rs, Py_ssize_t nb, Py_ssize_t I,
                                Py_ssize_t GH, const floating* W_ih_t, const floating* bias,
                                const floating* hp, Py_ssize_t sP, Py_ssize_t P,
                                const floating* W_hh, const floating* W_t) noexcept nogil:
    # a_t = G[t] + h_{t-1} W_hh^T into g, G[t] being bias + x_t W_ih^T (the step projection) or G on
    # entry. With both products on rnncore's own GEMM they run as one pass (C stored once).
    if W_ih_t != NULL and W_t != NULL:
        mm_packed2_bias(nb, GH, I, x + row0 * ldx, rs * ldx, W_ih_t, P, hp, sP, W_t, bias, g, sG)
    else:
        _project_step(g, sG, x, ldx, row0, rs, nb, I, GH, W_ih_t, bias)
        mm_packed(nb, GH, P, hp, sP, True, W_hh, P, W_t, P, 0, True, g, sG)


def _step_projection_inputs(const floating[:, :, ::1] G, Py_ssize_t rows, const floating[:, ::1] x,
                            const floating[:, ::1] W_ih_t, const floating[::1] bias):
    """I, the input width of a step-by-step projection (0 without one), after checking that x, the
    packed W_ih^T and the bias fit G (a mismatch would read out of bounds)."""
    if W_ih_t is None:
        return 0
    cdef Py_ssize_t GH = G.shape[2]
    if x is None or x.shape[0] != rows:
        raise ValueError(f"step projection: x must have {rows} rows, got "
                         f"{None if x is None else x.shape[0]}")
    cdef Py_ssize_t I = x.shape[1], nr = panel_width(&G[0, 0, 0])
    if I == 0:
        raise ValueError("step projection: x has no columns (nothing to project)")
    if W_ih_t.shape[0] != _npanels(GH, nr) * I or W_ih_t.shape[1] != nr:
        raise ValueError(f"step projection: W_ih_t must be pack_t of a ({GH}, {I}) matrix, got "
                         f"shape {tuple(W_ih_t.shape)}")
    if bias is not None and bias.shape[0] != GH:
        raise ValueError(f"step projection: bias must have {GH} values, got {bias.shape[0]}")
    return I


# --------------------------------------------------------------------------------------------------
# Vanilla (Elman) RNN:  h_t = f(a_t),  a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh,  f = tanh | relu
# --------------------------------------------------------------------------------------------------

cdef void _rnn_forward_rows(floating* G, floating* hprev, floating* out, floating* h_n,
                            const floating* h0, const floating* W_hh, const floating* W_t,
                            const int* lengths, const floating* x, Py_ssize_t ldx, Py_ssize_t I,
                            const floating* W_ih_t, const floating* bias,
                            Py_ssize_t T, Py_ssize_t ts, Py_ssize_t rs, _Layout WL, _Layout GL,
                            Py_ssize_t H, Py_ssize_t ldo,
                            bint relu, bint reverse, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    # G, hprev: workspace rows of H; out: rows of ldo at its column offset; h_n, h0 (B,H); W_hh (H,H)
    # W_t = W_hh^T packed (pack_t) for rnncore's own step GEMM, or NULL for BLAS
    cdef Py_ssize_t nb = b1 - b0, s, t, b, j, sH = WL.rs * H, sd, wnext
    cdef Py_ssize_t sG = GL.rs * H
    cdef floating* g
    cdef floating* gb
    cdef floating* hp
    cdef floating* dst
    cdef floating* o
    hp = hprev + _row(WL, 0, T - 1 if reverse else 0, b0) * H
    for b in range(nb):
        memcpy(hp + b * sH, h0 + (b0 + b) * H, H * sizeof(floating))
    for s in range(T):
        t = T - 1 - s if reverse else s
        g = G + _row(GL, s, t, b0) * H
        hp = hprev + _row(WL, s, t, b0) * H
        # (1) a_t = G[t] + h_{t-1} W_hh^T          # g += hp @ W_hh.T (G[t] = bias + x_t W_ih^T)
        _step_products(g, sG, x, ldx, t * ts + b0 * rs, rs, nb, I, H, W_ih_t, bias, hp, sH, H, W_hh, W_t)
        # where h_t goes: the next step's hprev, or h_n after the last step
        if s == T - 1:
            dst, sd = h_n + b0 * H, H
        else:
            wnext = _row(WL, s + 1, t - 1 if reverse else t + 1, b0)
            dst, sd = hprev + wnext * H, sH
        for b in range(nb):
            gb = g + b * sG
            # (2) h_t = f(a_t), kept in G[t] for backward
            if relu:
                for j in range(H):
                    gb[j] = gb[j] if gb[j] > 0 else 0
            else:
                _tanh_span(gb, H)
            o = out + (t * ts + (b0 + b) * rs) * ldo
            if t < lengths[b0 + b]:
                memcpy(dst + b * sd, gb, H * sizeof(floating))
                memcpy(o, gb, H * sizeof(floating))
            else:  # past the sequence's end: state carried, output 0
                memset(gb, 0, H * sizeof(floating))
                memcpy(dst + b * sd, hp + b * sH, H * sizeof(floating))
                memset(o, 0, H * sizeof(floating))


cdef void _rnn_backward_rows(floating* dG, floating* dh, const floating* dout, const floating* G,
                             const floating* W_hh, const int* lengths,
                             Py_ssize_t T, Py_ssize_t ts, Py_ssize_t rs, Py_ssize_t H, Py_ssize_t ldo,
                             const floating* W_p,
                             bint relu, bint reverse, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    # dG rows of H out; dh (B,H) in dL/dh_n, out dL/dh0; dout rows of ldo; G rows of H = h_t
    # W_p = W_hh packed (pack_n) for rnncore's own step GEMM, or NULL for BLAS
    cdef Py_ssize_t nb = b1 - b0, s, t, b, sH = rs * H
    cdef floating* dg
    cdef const floating* g
    cdef const floating* do
    for s in range(T):
        t = s if reverse else T - 1 - s
        dg = dG + (t * ts + b0 * rs) * H
        g = G + (t * ts + b0 * rs) * H
        for b in range(nb):
            if t < lengths[b0 + b]:
                do = dout + (t * ts + (b0 + b) * rs) * ldo
                # (2) dL/da_t = (dL/dh_t) * f'(a_t), dh := 0; the recurrent part of dh is added in
                # (1). The elementwise loop is rc_rnn_cell_backward in rnncore/_rc_math.h.
                _rnn_cell_backward(H, do, g + b * sH, dh + (b0 + b) * H, dg + b * sH, relu)
            else:
                memset(dg + b * sH, 0, H * sizeof(floating))
        # (1) dL/dh_{t-1} = dL/da_t W_hh              # dh += dg @ W_hh
        mm_packed(nb, H, H, dg, sH, False, W_hh, H, W_p, H, 0, True, dh + b0 * H, H)


def rnn_forward(floating[:, :, ::1] G, floating[:, :, ::1] hprev, floating[:, ::1] out,
                floating[:, ::1] h_n,
                const floating[:, ::1] h0, const floating[:, ::1] W_hh, const floating[:, ::1] W_t,
                const int[::1] lengths, Py_ssize_t col0, bint relu, bint reverse,
                bint batch_first, int num_threads, const floating[:, ::1] x=None,
                const floating[:, ::1] W_ih_t=None, const floating[::1] bias=None, bint keep=True):
    """Vanilla RNN layer, one direction. keep: G and hprev are kept for backward (see "Workspace rows";
    without keep they are (2, B, .)). G (T,B,H) (batch_first: (B,T,H)) holds
    x W_ih^T + b_ih + b_hh on entry, or, given x (T*B, I) and W_ih_t = pack_t(W_ih) (and bias =
    b_ih + b_hh or None), is computed step by step. W_t = pack_t(W_hh) selects rnncore's own step
    GEMM; None BLAS."""
    cdef Py_ssize_t B = lengths.shape[0], T = out.shape[0] // max(B, 1)
    cdef _Layout WL, GL
    _layout("hprev", hprev, T, B, batch_first, keep, &WL)
    _layout("G", G, T, B, batch_first, keep or W_ih_t is None, &GL)
    cdef Py_ssize_t H = G.shape[2], ldo = out.shape[1], ts, rs
    cdef Py_ssize_t nc = _nchunks(B, num_threads), ci
    cdef const floating* pW_t = &W_t[0, 0] if W_t is not None else NULL
    cdef Py_ssize_t I = _step_projection_inputs(G, T * B, x, W_ih_t, bias), ldx = I
    cdef const floating* px = &x[0, 0] if I > 0 else NULL
    cdef const floating* pW_ih_t = &W_ih_t[0, 0] if I > 0 else NULL
    cdef const floating* pbias = &bias[0] if I > 0 and bias is not None else NULL
    _row_strides(batch_first, T, B, &ts, &rs)
    with nogil:
        for ci in prange(nc, num_threads=nc, schedule="static"):
            _rnn_forward_rows(&G[0, 0, 0], &hprev[0, 0, 0], &out[0, col0], &h_n[0, 0], &h0[0, 0],
                              &W_hh[0, 0], pW_t, &lengths[0], px, ldx, I, pW_ih_t, pbias,
                              T, ts, rs, WL, GL, H, ldo, relu, reverse,
                              ci * B // nc, (ci + 1) * B // nc)


def rnn_backward(floating[:, :, ::1] dG, floating[:, ::1] dh,
                 const floating[:, ::1] dout, const floating[:, :, ::1] G,
                 const floating[:, ::1] W_hh, const int[::1] lengths,
                 const floating[:, ::1] W_p,
                 Py_ssize_t col0, bint relu, bint reverse, bint batch_first, int num_threads):
    """BPTT through `rnn_forward`: writes dG = dL/da (G's layout); dh goes from dL/dh_n to dL/dh0.
    W_p = pack_n(W_hh) selects rnncore's step GEMM; None selects BLAS."""
    cdef Py_ssize_t T = G.shape[1 if batch_first else 0], B = G.shape[0 if batch_first else 1]
    cdef Py_ssize_t H = G.shape[2], ldo = dout.shape[1], ts, rs
    cdef Py_ssize_t nc = _nchunks(B, num_threads), ci
    cdef const floating* pW_p = &W_p[0, 0] if W_p is not None else NULL
    _row_strides(batch_first, T, B, &ts, &rs)
    with nogil:
        for ci in prange(nc, num_threads=nc, schedule="static"):
            _rnn_backward_rows(&dG[0, 0, 0], &dh[0, 0], &dout[0, col0], &G[0, 0, 0], &W_hh[0, 0],
                               &lengths[0], T, ts, rs, H, ldo, pW_p, relu, reverse,
                               ci * B // nc, (ci + 1) * B // nc)


# --------------------------------------------------------------------------------------------------
# LSTM (PyTorch's, gate order i, f, g, o), optional peepholes and projection:
#   i = σ(a_i + w_ci ⊙ c_{t-1})   f = σ(a_f + w_cf ⊙ c_{t-1})   g = tanh(a_g)
#   c_t = f ⊙ c_{t-1} + i ⊙ g     o = σ(a_o + w_co ⊙ c_t)       m_t = o ⊙ tanh(c_t)
#   h_t = m_t (or m_t W_hr^T with proj_size > 0; then h has P = proj_size units)
# Peephole terms are present only with peepholes (w_c* pointers non-NULL).
# --------------------------------------------------------------------------------------------------

cdef void _lstm_forward_rows(floating* G, floating* hprev, floating* cprev, floating* cnew,
                             floating* M, floating* hbuf, floating* out, floating* h_n, floating* c_n,
                             const floating* h0, const floating* c0, const floating* W_hh,
                             const floating* W_hr, const floating* W_t, const floating* W_hr_t,
                             const floating* w_ci, const floating* w_cf,
                             const floating* w_co, const int* lengths,
                             const floating* x, Py_ssize_t ldx, Py_ssize_t I,
                             const floating* W_ih_t, const floating* bias,
                             Py_ssize_t T, Py_ssize_t ts, Py_ssize_t rs, _Layout WL, _Layout GL,
                             Py_ssize_t H, Py_ssize_t P,
                             Py_ssize_t ldo, bint reverse, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    # workspace rows of: G 4H; hprev P; cprev, cnew, M H (M only with projection); out: rows of ldo
    # at its column offset; hbuf (B,P) work; h_n (B,P); c_n (B,H); W_hh (4H,P); W_hr (P,H)
    cdef Py_ssize_t nb = b1 - b0, s, t, b, j, H4 = 4 * H, tfirst, wnext, row, w0
    cdef Py_ssize_t sH = WL.rs * H, sP = WL.rs * P, shd, scd
    cdef Py_ssize_t sG = GL.rs * H4
    cdef bint proj = W_hr != NULL
    cdef bint peep = w_ci != NULL
    cdef floating* g
    cdef floating* hp
    cdef floating* cp
    cdef floating* cw
    cdef floating* hdst
    cdef floating* cdst
    cdef floating* o
    cdef floating* m
    cdef floating* gb
    cdef floating* cpb
    cdef floating* cwb
    tfirst = T - 1 if reverse else 0
    for b in range(nb):
        row = _row(WL, 0, tfirst, b0 + b)
        memcpy(hprev + row * P, h0 + (b0 + b) * P, P * sizeof(floating))
        memcpy(cprev + row * H, c0 + (b0 + b) * H, H * sizeof(floating))
    for s in range(T):
        t = T - 1 - s if reverse else s
        w0 = _row(WL, s, t, b0)       # this thread's first workspace row of step t
        g = G + _row(GL, s, t, b0) * H4
        hp = hprev + w0 * P
        cp = cprev + w0 * H
        cw = cnew + w0 * H
        # (1) a_t = G[t] + h_{t-1} W_hh^T             # g += hp @ W_hh.T (G[t] = bias + x_t W_ih^T)
        _step_products(g, sG, x, ldx, t * ts + b0 * rs, rs, nb, I, H4, W_ih_t, bias, hp, sP, P, W_hh,
                       W_t)
        if s == T - 1:
            hdst, shd = h_n + b0 * P, P
            cdst, scd = c_n + b0 * H, H
        else:
            wnext = _row(WL, s + 1, t - 1 if reverse else t + 1, b0)
            hdst, shd = hprev + wnext * P, sP
            cdst, scd = cprev + wnext * H, sH
        # (2) gates, cell state and m_t; gate activations replace a_t in G[t]
        for b in range(nb):
            gb = g + b * sG
            cpb = cp + b * sH
            cwb = cw + b * sH
            if peep:
                for j in range(H):
                    gb[j] = gb[j] + w_ci[j] * cpb[j]
                    gb[H + j] = gb[H + j] + w_cf[j] * cpb[j]
            _sigmoid_span(gb, 2 * H)                    # i, f
            _tanh_span(gb + 2 * H, H)                   # g
            for j in range(H):                          # c_t = f ⊙ c_{t-1} + i ⊙ g
                cwb[j] = gb[H + j] * cpb[j] + gb[j] * gb[2 * H + j]
            if peep:
                for j in range(H):
                    gb[3 * H + j] = gb[3 * H + j] + w_co[j] * cwb[j]
            _sigmoid_span(gb + 3 * H, H)                # o
            m = (M + (w0 + b * WL.rs) * H) if proj else (out + (t * ts + (b0 + b) * rs) * ldo)
            memcpy(m, cwb, H * sizeof(floating))
            _tanh_span(m, H)
            for j in range(H):                          # m_t = o ⊙ tanh(c_t)
                m[j] = gb[3 * H + j] * m[j]
        for b in range(nb):
            row = t * ts + (b0 + b) * rs
            o = out + row * ldo
            if t < lengths[b0 + b]:
                memcpy(cdst + b * scd, cw + b * sH, H * sizeof(floating))
                if not proj:
                    memcpy(hdst + b * shd, o, P * sizeof(floating))
            else:  # past the sequence's end: state carried, output 0
                memset(g + b * sG, 0, H4 * sizeof(floating))
                memcpy(cw + b * sH, cp + b * sH, H * sizeof(floating))
                memcpy(cdst + b * scd, cp + b * sH, H * sizeof(floating))
                memcpy(hdst + b * shd, hp + b * sP, P * sizeof(floating))
                memset(o, 0, P * sizeof(floating))
                if proj:
                    memset(M + (w0 + b * WL.rs) * H, 0, H * sizeof(floating))
        if proj:
            # (3) h_t = m_t W_hr^T                    # hbuf = M[t] @ W_hr.T
            mm_packed(nb, P, H, M + w0 * H, sH, True, W_hr, H, W_hr_t, H, 0, False,
                      hbuf + b0 * P, P)
            for b in range(nb):
                if t < lengths[b0 + b]:
                    memcpy(hdst + b * shd, hbuf + (b0 + b) * P, P * sizeof(floating))
                    memcpy(out + (t * ts + (b0 + b) * rs) * ldo, hbuf + (b0 + b) * P,
                           P * sizeof(floating))


cdef void _lstm_backward_rows(floating* dG, floating* dh, floating* dc, floating* dH, floating* dmbuf,
                              floating* tcbuf,
                              const floating* dout, const floating* G, const floating* cprev,
                              const floating* cnew, const floating* W_hh, const floating* W_hr,
                              const floating* w_ci, const floating* w_cf, const floating* w_co,
                              const int* lengths,
                              Py_ssize_t T, Py_ssize_t ts, Py_ssize_t rs, Py_ssize_t H, Py_ssize_t P,
                              Py_ssize_t ldo, const floating* W_p, const floating* W_hr_p,
                              bint reverse, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    # W_p = W_hh packed, W_hr_p = W_hr packed (pack_n) for rnncore's own step GEMM, or NULL for BLAS
    # rows of: dG 4H out; dH P out (total dL/dh_t, projection only); dout ldo; G 4H gate activations;
    # cprev, cnew H. dh (B,P), dc (B,H) carried; dmbuf (B,H) work (projection only); tcbuf (B,H) work
    cdef Py_ssize_t nb = b1 - b0, s, t, b, k, H4 = 4 * H, row, sG = rs * H4, sP = rs * P
    cdef bint proj = W_hr != NULL
    cdef floating* dg
    cdef floating* dgb
    cdef const floating* g
    cdef const floating* gb
    cdef const floating* do
    cdef const floating* dm
    cdef const floating* cpb
    cdef floating* dhb
    cdef floating* dcb
    cdef floating* tcb
    for s in range(T):
        t = s if reverse else T - 1 - s
        dg = dG + (t * ts + b0 * rs) * H4
        g = G + (t * ts + b0 * rs) * H4
        # (3) dL/dh_t = carried + output gradient, for active rows
        for b in range(nb):
            dhb = dh + (b0 + b) * P
            row = t * ts + (b0 + b) * rs
            if t < lengths[b0 + b]:
                do = dout + row * ldo
                for k in range(P):
                    dhb[k] = dhb[k] + do[k]
                if proj:
                    memcpy(dH + row * P, dhb, P * sizeof(floating))
            elif proj:
                memset(dH + row * P, 0, P * sizeof(floating))
        if proj:
            # dL/dm_t = dL/dh_t W_hr                     # dmbuf = dH[t] @ W_hr
            mm_packed(nb, H, P, dH + (t * ts + b0 * rs) * P, sP, False, W_hr, H, W_hr_p, P, 0, False,
                      dmbuf + b0 * H, H)
        # (2) through m_t = o ⊙ tanh(c_t), c_t = f ⊙ c_{t-1} + i ⊙ g, and the gates
        for b in range(nb):
            dgb = dg + b * sG
            if t < lengths[b0 + b]:
                row = t * ts + (b0 + b) * rs
                gb = g + b * sG
                cpb = cprev + row * H
                dcb = dc + (b0 + b) * H
                dm = (dmbuf + (b0 + b) * H) if proj else (dh + (b0 + b) * P)
                tcb = tcbuf + (b0 + b) * H
                memcpy(tcb, cnew + row * H, H * sizeof(floating))
                _tanh_span(tcb, H)
                # dL/da of the gates from dL/dm_t and dL/dc_t; dc becomes dL/dc_{t-1}
                # (the elementwise loop: rc_lstm_cell_backward in rnncore/_rc_math.h)
                _lstm_cell_backward(H, gb, cpb, tcb, dm, dcb, dgb, w_ci, w_cf, w_co)
                memset(dh + (b0 + b) * P, 0, P * sizeof(floating))
            else:
                memset(dgb, 0, H4 * sizeof(floating))
        # (1) dL/dh_{t-1} = dL/da_t W_hh                # dh += dg @ W_hh
        mm_packed(nb, P, H4, dg, sG, False, W_hh, P, W_p, H4, 0, True, dh + b0 * P, P)


def lstm_forward(floating[:, :, ::1] G, floating[:, :, ::1] hprev, floating[:, :, ::1] cprev,
                 floating[:, :, ::1] cnew, floating[:, :, ::1] M, floating[:, ::1] hbuf,
                 floating[:, ::1] out, floating[:, ::1] h_n, floating[:, ::1] c_n,
                 const floating[:, ::1] h0, const floating[:, ::1] c0, const floating[:, ::1] W_hh,
                 const floating[:, ::1] W_hr, const floating[:, ::1] W_t,
                 const floating[:, ::1] W_hr_t, const floating[::1] w_ci, const floating[::1] w_cf,
                 const floating[::1] w_co, const int[::1] lengths,
                 Py_ssize_t col0, bint reverse, bint batch_first, int num_threads,
                 const floating[:, ::1] x=None, const floating[:, ::1] W_ih_t=None,
                 const floating[::1] bias=None, bint keep=True):
    """LSTM layer, one direction. keep: G, hprev, cprev, cnew and M are kept for backward (see
    "Workspace rows"; without keep they are (2, B, .)). M, hbuf, W_hr are None without projection;
    w_c* None without peepholes. G (T,B,4H) (batch_first: (B,T,4H)) holds x W_ih^T + b_ih + b_hh on entry, or, given
    x (T*B, I) and W_ih_t = pack_t(W_ih) (and bias = b_ih + b_hh or None), is computed step by step.
    W_t = pack_t(W_hh) and W_hr_t = pack_t(W_hr) select rnncore's own step GEMM; None selects BLAS."""
    cdef Py_ssize_t B = lengths.shape[0], T = out.shape[0] // max(B, 1)
    cdef _Layout WL, GL
    _layout("hprev", hprev, T, B, batch_first, keep, &WL)
    _layout("G", G, T, B, batch_first, keep or W_ih_t is None, &GL)
    cdef Py_ssize_t H = cnew.shape[2], P = hprev.shape[2], ts, rs
    cdef Py_ssize_t ldo = out.shape[1], nc = _nchunks(B, num_threads), ci
    cdef floating* pM = &M[0, 0, 0] if M is not None else NULL
    cdef floating* phbuf = &hbuf[0, 0] if hbuf is not None else NULL
    cdef const floating* pW_hr = &W_hr[0, 0] if W_hr is not None else NULL
    cdef const floating* pW_t = &W_t[0, 0] if W_t is not None else NULL
    cdef const floating* pW_hr_t = &W_hr_t[0, 0] if W_hr_t is not None else NULL
    cdef const floating* pci = &w_ci[0] if w_ci is not None else NULL
    cdef const floating* pcf = &w_cf[0] if w_cf is not None else NULL
    cdef const floating* pco = &w_co[0] if w_co is not None else NULL
    cdef Py_ssize_t I = _step_projection_inputs(G, T * B, x, W_ih_t, bias), ldx = I
    cdef const floating* px = &x[0, 0] if I > 0 else NULL
    cdef const floating* pW_ih_t = &W_ih_t[0, 0] if I > 0 else NULL
    cdef const floating* pbias = &bias[0] if I > 0 and bias is not None else NULL
    _row_strides(batch_first, T, B, &ts, &rs)
    with nogil:
        for ci in prange(nc, num_threads=nc, schedule="static"):
            _lstm_forward_rows(&G[0, 0, 0], &hprev[0, 0, 0], &cprev[0, 0, 0], &cnew[0, 0, 0], pM,
                               phbuf, &out[0, col0], &h_n[0, 0], &c_n[0, 0], &h0[0, 0], &c0[0, 0],
                               &W_hh[0, 0], pW_hr, pW_t, pW_hr_t, pci, pcf, pco, &lengths[0],
                               px, ldx, I, pW_ih_t, pbias, T, ts, rs, WL, GL, H, P, ldo,
                               reverse, ci * B // nc, (ci + 1) * B // nc)


def lstm_backward(floating[:, :, ::1] dG, floating[:, ::1] dh, floating[:, ::1] dc,
                  floating[:, :, ::1] dH, floating[:, ::1] dmbuf, floating[:, ::1] tcbuf,
                  const floating[:, ::1] dout, const floating[:, :, ::1] G,
                  const floating[:, :, ::1] cprev, const floating[:, :, ::1] cnew,
                  const floating[:, ::1] W_hh, const floating[:, ::1] W_hr,
                  const floating[::1] w_ci, const floating[::1] w_cf, const floating[::1] w_co,
                  const floating[:, ::1] W_p, const floating[:, ::1] W_hr_p,
                  const int[::1] lengths, Py_ssize_t col0, bint reverse, bint batch_first,
                  int num_threads):
    """BPTT through `lstm_forward`: writes dG = dL/da (G's layout) (and dH = dL/dh_t with
    projection); dh, dc go from dL/dh_n, dL/dc_n to dL/dh0, dL/dc0."""
    cdef Py_ssize_t T = G.shape[1 if batch_first else 0], B = G.shape[0 if batch_first else 1]
    cdef Py_ssize_t H = cnew.shape[2], P = dh.shape[1], ts, rs
    cdef Py_ssize_t ldo = dout.shape[1], nc = _nchunks(B, num_threads), ci
    cdef floating* pdH = &dH[0, 0, 0] if dH is not None else NULL
    cdef floating* pdm = &dmbuf[0, 0] if dmbuf is not None else NULL
    cdef const floating* pW_hr = &W_hr[0, 0] if W_hr is not None else NULL
    cdef const floating* pci = &w_ci[0] if w_ci is not None else NULL
    cdef const floating* pcf = &w_cf[0] if w_cf is not None else NULL
    cdef const floating* pco = &w_co[0] if w_co is not None else NULL
    _row_strides(batch_first, T, B, &ts, &rs)
    with nogil:
        for ci in prange(nc, num_threads=nc, schedule="static"):
            _lstm_backward_rows(&dG[0, 0, 0], &dh[0, 0], &dc[0, 0], pdH, pdm, &tcbuf[0, 0],
                                &dout[0, col0],
                                &G[0, 0, 0], &cprev[0, 0, 0], &cnew[0, 0, 0], &W_hh[0, 0], pW_hr,
                                pci, pcf, pco, &lengths[0], T, ts, rs, H, P, ldo,
                                &W_p[0, 0] if W_p is not None else NULL,
                                &W_hr_p[0, 0] if W_hr_p is not None else NULL, reverse,
                                ci * B // nc, (ci + 1) * B // nc)


# --------------------------------------------------------------------------------------------------
# GRU, gate order r, z, n:
#   r = σ(a_r)   z = σ(a_z)   h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
#   reset_after (PyTorch):  n = tanh(x W_in^T + b_in + r ⊙ (h_{t-1} W_hn^T + b_hn))
#   reset before (Cho et al., Keras reset_after=False):  n = tanh(x W_in^T + b_in + (r ⊙ h_{t-1}) W_hn^T + b_hn)
# G[t] holds x W_ih^T + b_ih + [b_hr, b_hz, 0] on entry; b_hn is added here.
# HN keeps h_{t-1} W_hn^T + b_hn (reset_after) or r ⊙ h_{t-1} (reset before) for backward.
# --------------------------------------------------------------------------------------------------

cdef void _gru_forward_rows(floating* G, floating* hprev, floating* HN, floating* gh,
                            floating* out, floating* h_n,
                            const floating* h0, const floating* W_hh, const floating* W_t,
                            const floating* b_hn, const int* lengths,
                            const floating* x, Py_ssize_t ldx, Py_ssize_t I,
                            const floating* W_ih_t, const floating* bias,
                            Py_ssize_t T, Py_ssize_t ts, Py_ssize_t rs, _Layout WL, _Layout GL,
                            Py_ssize_t H, Py_ssize_t ldo,
                            bint reset_after, bint reverse, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    # workspace rows of: G 3H; hprev, HN H; out: rows of ldo at its column offset. gh (B,3H) work
    cdef Py_ssize_t nb = b1 - b0, s, t, b, j, H3 = 3 * H, sH = WL.rs * H, sd, w0, wnext
    cdef Py_ssize_t sG = GL.rs * H3
    cdef floating* g
    cdef floating* gb
    cdef floating* hp
    cdef floating* hn
    cdef floating* q
    cdef floating* dst
    cdef floating* o
    cdef floating z, hv
    hp = hprev + _row(WL, 0, T - 1 if reverse else 0, b0) * H
    for b in range(nb):
        memcpy(hp + b * sH, h0 + (b0 + b) * H, H * sizeof(floating))
    for s in range(T):
        t = T - 1 - s if reverse else s
        w0 = _row(WL, s, t, b0)       # this thread's first workspace row of step t
        g = G + _row(GL, s, t, b0) * H3
        hp = hprev + w0 * H
        hn = HN + w0 * H
        q = gh + b0 * H3
        _project_step(g, sG, x, ldx, t * ts + b0 * rs, rs, nb, I, H3, W_ih_t, bias)
        if s == T - 1:
            dst, sd = h_n + b0 * H, H
        else:
            wnext = _row(WL, s + 1, t - 1 if reverse else t + 1, b0)
            dst, sd = hprev + wnext * H, sH
        # (1) q_rz = h_{t-1} W_h{r,z}^T (and q_n = h_{t-1} W_hn^T when reset_after)
        mm_packed(nb, H3 if reset_after else 2 * H, H, hp, sH, True, W_hh, H, W_t, H, 0, False, q, H3)
        # (2) r = σ(a_r), z = σ(a_z)
        for b in range(nb):
            gb = g + b * sG
            for j in range(2 * H):
                gb[j] = gb[j] + q[b * H3 + j]
            _sigmoid_span(gb, 2 * H)
        if reset_after:
            # (3) HN = h_{t-1} W_hn^T + b_hn;  a_n = G_n + r ⊙ HN
            for b in range(nb):
                gb = g + b * sG
                for j in range(H):
                    hv = q[b * H3 + 2 * H + j] + (b_hn[j] if b_hn != NULL else 0)
                    hn[b * sH + j] = hv
                    gb[2 * H + j] = gb[2 * H + j] + gb[j] * hv
        else:
            # (3) HN = r ⊙ h_{t-1};  a_n = G_n + HN W_hn^T + b_hn
            for b in range(nb):
                for j in range(H):
                    hn[b * sH + j] = g[b * sG + j] * hp[b * sH + j]
            # W_t packs W_hr,z^T and W_hn^T separately (pack_gru_t): the n-part starts after the
            # r,z-part's panels
            mm_packed(nb, H, H, hn, sH, True, W_hh + 2 * H * H, H,
                      (W_t + _npanels(2 * H, panel_width(W_t)) * H * panel_width(W_t)) if W_t != NULL else NULL,
                      H, 0, False, q + 2 * H, H3)
            for b in range(nb):
                gb = g + b * sG
                for j in range(H):
                    gb[2 * H + j] = (gb[2 * H + j] + q[b * H3 + 2 * H + j]
                                     + (b_hn[j] if b_hn != NULL else 0))
        # (4) n = tanh(a_n);  h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
        for b in range(nb):
            _tanh_span(g + b * sG + 2 * H, H)
        for b in range(nb):
            gb = g + b * sG
            o = out + (t * ts + (b0 + b) * rs) * ldo
            if t < lengths[b0 + b]:
                for j in range(H):
                    z = gb[H + j]
                    hv = (1 - z) * gb[2 * H + j] + z * hp[b * sH + j]
                    dst[b * sd + j] = hv
                    o[j] = hv
            else:  # past the sequence's end: state carried, output 0
                memset(gb, 0, H3 * sizeof(floating))
                memset(hn + b * sH, 0, H * sizeof(floating))
                memcpy(dst + b * sd, hp + b * sH, H * sizeof(floating))
                memset(o, 0, H * sizeof(floating))


cdef void _gru_backward_rows(floating* dGx, floating* dGh, floating* dh, floating* drh,
                             const floating* dout, const floating* G, const floating* hprev,
                             const floating* HN, const floating* W_hh, const int* lengths,
                             Py_ssize_t T, Py_ssize_t ts, Py_ssize_t rs, Py_ssize_t H, Py_ssize_t ldo,
                             const floating* W_p, bint reset_after, bint reverse,
                             Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    # W_p = W_hh packed (pack_n) for rnncore's own step GEMM, or NULL for BLAS
    # rows of: dGx 3H out: dL/d(input-side pre-activations); dGh H out (reset_after only):
    # dL/d(h W_hn^T + b_hn) (its r and z parts, dL/d(h W_h{r,z}^T + b_h{r,z}), are dGx's);
    # G 3H; hprev, HN H. dh (B,H) carried; drh (B,H) work (reset before only)
    cdef Py_ssize_t nb = b1 - b0, s, t, b, j, H3 = 3 * H, sG = rs * 3 * H, sH = rs * H
    cdef floating* dx
    cdef floating* dq
    cdef floating* dxb
    cdef floating* dqb
    cdef floating* dhb
    cdef const floating* g
    cdef const floating* gb
    cdef const floating* hp
    cdef const floating* hn
    cdef const floating* do
    cdef floating r
    for s in range(T):
        t = s if reverse else T - 1 - s
        dx = dGx + (t * ts + b0 * rs) * H3
        dq = (dGh + (t * ts + b0 * rs) * H) if reset_after else dx
        g = G + (t * ts + b0 * rs) * H3
        hp = hprev + (t * ts + b0 * rs) * H
        hn = HN + (t * ts + b0 * rs) * H
        # (2) through h_t = (1 - z) ⊙ n + z ⊙ h_{t-1} and n, z (and r when reset_after)
        for b in range(nb):
            dhb = dh + (b0 + b) * H
            dxb = dx + b * sG
            dqb = dq + b * sH
            if t < lengths[b0 + b]:
                do = dout + (t * ts + (b0 + b) * rs) * ldo
                gb = g + b * sG
                # dL/da_{z,n} (and dL/da_r, dL/dq_n with reset_after; without, r's gradient needs
                # the product (2') first); dh := d z. The loop: rc_gru_cell_backward, rnncore/_rc_math.h
                _gru_cell_backward(H, do, gb, hp + b * sH, (hn + b * sH) if reset_after else NULL,
                                   dhb, dxb, dqb if reset_after else NULL)
            else:
                memset(dxb, 0, H3 * sizeof(floating))
                if reset_after:
                    memset(dqb, 0, H * sizeof(floating))
        if reset_after:
            # (1) dL/dh_{t-1} += dL/da_{r,z} W_h{r,z} + dL/dq_n W_hn
            #                                             # dh += dx[:, :2H] @ W_hh[:2H] + dq @ W_hh[2H:]
            mm_packed(nb, H, 2 * H, dx, sG, False, W_hh, H, W_p, H3, 0, True, dh + b0 * H, H)
            mm_packed(nb, H, H, dq, sH, False, W_hh + 2 * H * H, H, W_p, H3, 2 * H, True, dh + b0 * H, H)
        else:
            # (2') dL/d(r ⊙ h_{t-1}) = dL/da_n W_hn        # drh = dx[:, 2H:] @ W_hh[2H:]
            mm_packed(nb, H, H, dx + 2 * H, sG, False, W_hh + 2 * H * H, H, W_p, H3, 2 * H, False,
                      drh + b0 * H, H)
            for b in range(nb):
                if t < lengths[b0 + b]:
                    for j in range(H):
                        r = g[b * sG + j]
                        dx[b * sG + j] = drh[(b0 + b) * H + j] * hp[b * sH + j] * r * (1 - r)
                        dh[(b0 + b) * H + j] += drh[(b0 + b) * H + j] * r
            # (1) dL/dh_{t-1} += dL/da_{r,z} W_h{r,z}      # dh += dx[:, :2H] @ W_hh[:2H]
            mm_packed(nb, H, 2 * H, dx, sG, False, W_hh, H, W_p, H3, 0, True, dh + b0 * H, H)


def gru_forward(floating[:, :, ::1] G, floating[:, :, ::1] hprev, floating[:, :, ::1] HN,
                floating[:, ::1] gh, floating[:, ::1] out, floating[:, ::1] h_n,
                const floating[:, ::1] h0, const floating[:, ::1] W_hh, const floating[:, ::1] W_t,
                const floating[::1] b_hn, const int[::1] lengths, Py_ssize_t col0, bint reset_after,
                bint reverse, bint batch_first, int num_threads, const floating[:, ::1] x=None,
                const floating[:, ::1] W_ih_t=None, const floating[::1] bias=None, bint keep=True):
    """GRU layer, one direction. keep: G, hprev and HN are kept for backward (see "Workspace rows";
    without keep they are (2, B, .)). G (T,B,3H) (batch_first: (B,T,3H)) holds
    x W_ih^T + b_ih + [b_hr, b_hz, 0] on entry, or, given x (T*B, I) and W_ih_t = pack_t(W_ih) (and
    bias = b_ih + [b_hr, b_hz, 0] or None), is computed step by step; b_hn is None without bias.
    W_t = pack_gru_t(W_hh, reset_after) selects rnncore's own step GEMM; None selects BLAS."""
    cdef Py_ssize_t B = lengths.shape[0], T = out.shape[0] // max(B, 1)
    cdef _Layout WL, GL
    _layout("hprev", hprev, T, B, batch_first, keep, &WL)
    _layout("G", G, T, B, batch_first, keep or W_ih_t is None, &GL)
    cdef Py_ssize_t H = hprev.shape[2], ldo = out.shape[1], ts, rs
    cdef Py_ssize_t nc = _nchunks(B, num_threads), ci
    cdef const floating* pb = &b_hn[0] if b_hn is not None else NULL
    cdef const floating* pW_t = &W_t[0, 0] if W_t is not None else NULL
    cdef Py_ssize_t I = _step_projection_inputs(G, T * B, x, W_ih_t, bias), ldx = I
    cdef const floating* px = &x[0, 0] if I > 0 else NULL
    cdef const floating* pW_ih_t = &W_ih_t[0, 0] if I > 0 else NULL
    cdef const floating* pbias = &bias[0] if I > 0 and bias is not None else NULL
    _row_strides(batch_first, T, B, &ts, &rs)
    with nogil:
        for ci in prange(nc, num_threads=nc, schedule="static"):
            _gru_forward_rows(&G[0, 0, 0], &hprev[0, 0, 0], &HN[0, 0, 0], &gh[0, 0], &out[0, col0],
                              &h_n[0, 0], &h0[0, 0], &W_hh[0, 0], pW_t, pb, &lengths[0],
                              px, ldx, I, pW_ih_t, pbias, T, ts, rs, WL, GL, H, ldo,
                              reset_after, reverse, ci * B // nc, (ci + 1) * B // nc)


def gru_backward(floating[:, :, ::1] dGx, floating[:, :, ::1] dGh, floating[:, ::1] dh,
                 floating[:, ::1] drh, const floating[:, ::1] dout, const floating[:, :, ::1] G,
                 const floating[:, :, ::1] hprev, const floating[:, :, ::1] HN,
                 const floating[:, ::1] W_hh, const int[::1] lengths,
                 const floating[:, ::1] W_p,
                 Py_ssize_t col0, bint reset_after, bint reverse, bint batch_first, int num_threads):
    """BPTT through `gru_forward`. dGh (T,B,H) (batch_first (B,T,H)), dL/d(h W_hn^T + b_hn), is used
    (and required) only with reset_after; drh only without."""
    cdef Py_ssize_t T = G.shape[1 if batch_first else 0], B = G.shape[0 if batch_first else 1]
    cdef Py_ssize_t H = hprev.shape[2], ldo = dout.shape[1], ts, rs
    cdef Py_ssize_t nc = _nchunks(B, num_threads), ci
    cdef floating* pdGh = &dGh[0, 0, 0] if dGh is not None else NULL
    cdef floating* pdrh = &drh[0, 0] if drh is not None else NULL
    _row_strides(batch_first, T, B, &ts, &rs)
    with nogil:
        for ci in prange(nc, num_threads=nc, schedule="static"):
            _gru_backward_rows(&dGx[0, 0, 0], pdGh, &dh[0, 0], pdrh, &dout[0, col0], &G[0, 0, 0],
                               &hprev[0, 0, 0], &HN[0, 0, 0], &W_hh[0, 0], &lengths[0],
                               T, ts, rs, H, ldo, &W_p[0, 0] if W_p is not None else NULL,
                               reset_after, reverse, ci * B // nc, (ci + 1) * B // nc)
