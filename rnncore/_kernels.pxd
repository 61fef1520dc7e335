# rnncore's compiled core, as other Cython code sees it: the public, nogil API for embedding.
#
# An outside Cython extension runs rnncore's cells on its own buffers, without the GIL:
#
#     from rnncore._kernels cimport Cell, rc_step_f, rc_step_workspace
#     cdef Cell cell = rnncore.LSTM(8, 32).cell()        # packed weights, held alive by `cell`
#     cdef float[::1] work = np.empty(rc_step_workspace(&cell.c, B), np.float32)
#     with nogil:
#         for t in range(T):
#             rc_step_f(&cell.c, B, &x[t, 0, 0], &h[0, 0], &c[0, 0], &h[0, 0], &c[0, 0], &work[0])
#
# Build it with `include_dirs=[rnncore.get_include()]` (the C headers the declarations refer to).
# Everything here is reached through these declarations and the `rnncore._kernels` module's C-API
# table, so an outside caller runs the very code rnncore.LSTM/GRU/RNN run: the same bits.
#
# Notation (one layer, one direction): T steps, B sequences, I inputs, H hidden units, P = H (or an
# LSTM's proj_size), GH = gates * H (RNN 1 gate; LSTM 4: i, f, g, o; GRU 3: r, z, n). Arrays are
# row-major; a "(T*B)-row array" has row (t, b) at t * ts + b * rs (see rc_seq).

cdef enum:
    RC_RNN_TANH = 0
    RC_RNN_RELU = 1
    RC_LSTM = 2
    RC_GRU = 3                  # reset after (PyTorch, cuDNN)
    RC_GRU_RESET_BEFORE = 4     # reset before (Cho et al. 2014, the seeds)


# One layer-direction's cell: its kind, sizes and weights. Pointers are to float or double, as the
# function called (the _f or _d one); NULL where the cell has no such weight.
ctypedef struct rc_cell:
    int kind
    bint in_loop           # project x_t inside the time loop (w_ih_t), else every step before it
    Py_ssize_t n_in, H, P, GH
    const void* w_ih       # (GH, I)  W_ih (the projection before the loop, with BLAS)
    const void* w_hh       # (GH, P)  W_hh
    const void* w_hh_t     # W_hh^T packed (rnncore's own step GEMM), or NULL: BLAS on w_hh
    const void* w_hh_n     # W_hh packed (the backward product), or NULL: BLAS
    const void* w_ih_t     # W_ih^T packed (rnncore's own GEMM for the projection), or NULL: BLAS
    const void* bias       # (GH,) the in-loop projection's bias (b_ih + b_hh, GRU's n part b_ih only)
    const void* b_hn       # (H,) GRU: b_hn, inside r ⊙ (...)
    const void* w_hr       # (P, H) LSTM projection
    const void* w_hr_t     # W_hr^T packed, or NULL: BLAS
    const void* w_hr_n     # W_hr packed, or NULL: BLAS
    const void* w_ci       # (H,) LSTM peepholes
    const void* w_cf
    const void* w_co


# A batch of sequences in one direction, and the layout of its rows.
ctypedef struct rc_seq:
    Py_ssize_t T, B
    Py_ssize_t ts, rs      # row (t, b) of a (T*B)-row array at t * ts + b * rs
    const int* lengths     # (B,) valid steps per sequence, or NULL: all T
    bint reverse           # run t = T-1 .. 0 (a sequence's first step is t = lengths[b] - 1)
    bint keep              # the workspace keeps every step (for backward), else two slots


# The arrays of one pass. Inputs are const in spirit; NULL where the cell or pass does not use them.
ctypedef struct rc_arrays:
    const void* x          # (T*B, I) rows, read by the in-loop projection (w_ih_t)
    Py_ssize_t ldx
    const void* h0         # (B, P) initial state; c0 (B, H)
    const void* c0
    void* out              # (T*B rows, ldo apart) the direction's first column: h_t, 0 past the end
    Py_ssize_t ldo
    void* h_n              # (B, P) final state; c_n (B, H)
    void* c_n
    # workspace, of the layout of rc_seq (every step or two slots; G keeps every step when the
    # projection runs before the loop)
    void* G                # (., GH) gate pre-activations, then activations (what backward reads)
    void* hprev            # (., P) the state entering each step
    void* cprev            # (., H) LSTM c_{t-1}
    void* cnew             # (., H) LSTM c_t
    void* M                # (., H) LSTM with projection: m_t = o ⊙ tanh(c_t)
    void* HN               # (., H) GRU: h W_hn^T + b_hn (reset after) or r ⊙ h (reset before)
    void* buf              # (B, .) per-step scratch: LSTM (B, P) + (B, H) + (B, H); GRU (B, 3H)
    # backward
    const void* dout       # (T*B rows, ldo apart) dL/d(out)
    void* dG               # (T*B, GH) dL/da (GRU: dL/d of the input-side pre-activations)
    void* dGh              # (T*B, H) GRU reset after: dL/d(h W_hn^T + b_hn)
    void* dH               # (T*B, P) LSTM with projection: dL/dh_t
    void* dh               # (B, P) dL/dh_n in, dL/dh0 out
    void* dc               # (B, H) dL/dc_n in, dL/dc0 out


# Packed weights and everything a cell needs, from Python: rnncore.RNN/LSTM/GRU.cell(layer, direction).
cdef class Cell:
    cdef rc_cell c
    cdef readonly object arrays    # the arrays c points into (kept alive here)
    cdef readonly object dtype


# The scans: one layer-direction over T steps, rows split into num_threads contiguous blocks.
cdef void rc_forward_f(const rc_cell* cell, const rc_seq* seq, rc_arrays* a, int num_threads) noexcept nogil
cdef void rc_forward_d(const rc_cell* cell, const rc_seq* seq, rc_arrays* a, int num_threads) noexcept nogil
cdef void rc_backward_f(const rc_cell* cell, const rc_seq* seq, rc_arrays* a, int num_threads) noexcept nogil
cdef void rc_backward_d(const rc_cell* cell, const rc_seq* seq, rc_arrays* a, int num_threads) noexcept nogil

# One step of B sequences (inference), on the caller's thread: h_out, c_out := the cell at x (B, I),
# h (B, P), c (B, H; NULL unless LSTM). h_out may be h and c_out c. work: rc_step_workspace values.
cdef Py_ssize_t rc_step_workspace(const rc_cell* cell, Py_ssize_t B) noexcept nogil
cdef void rc_step_f(const rc_cell* cell, Py_ssize_t B, const float* x, const float* h, const float* c,
                    float* h_out, float* c_out, float* work) noexcept nogil
cdef void rc_step_d(const rc_cell* cell, Py_ssize_t B, const double* x, const double* h,
                    const double* c, double* h_out, double* c_out, double* work) noexcept nogil
