# --------------------------------------------------------------------------------------------------
# Vanilla (Elman) RNN: its step, forward and backward (included by _kernels.pyx; the scan, _scan.pxi,
# runs it). Equations numbered as rnncore/layers/reference.py's rnn_step / rnn_step_backward:
#   (1) a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh      (the scan's product, into G[t])
#   (2) h_t = f(a_t),  f = tanh | relu                        (this step; h_t kept in G[t])
# Backward:
#   (2) dL/da_t = (dL/dh_t) f'(a_t), from h_t: tanh 1 - h^2, relu [not h <= 0] (NaN passes)
#   (1) dL/dh_{t-1} = dL/da_t W_hh                            (the scan's product)
# --------------------------------------------------------------------------------------------------

cdef extern from *:
    """
    /* (2) backward for one row of n units: da = (dh + dout) f'(a), dh := 0 (the scan adds the
     * recurrent part). restrict: GCC vectorises it (in Cython over aliasing pointers it stays scalar). */
    #define RC_RNN_STEP_BACKWARD(NAME, T)                                                          \
    static inline void NAME(ptrdiff_t n, const T *restrict dout, const T *restrict h,              \
                            T *restrict dh, T *restrict da, int relu)                              \
    {                                                                                              \
        if (relu) {                                                                                \
            for (ptrdiff_t j = 0; j < n; j++) {                                                    \
                T d = dh[j] + dout[j];                                                             \
                da[j] = h[j] <= 0 ? 0 : d;  /* NaN h passes d on, as torch's relu backward */     \
                dh[j] = 0;                                                                         \
            }                                                                                      \
        } else {                                                                                   \
            for (ptrdiff_t j = 0; j < n; j++) {                                                    \
                da[j] = (dh[j] + dout[j]) * (1 - h[j] * h[j]);                                     \
                dh[j] = 0;                                                                         \
            }                                                                                      \
        }                                                                                          \
    }
    RC_RNN_STEP_BACKWARD(rc_rnn_row_backward_f, float)
    RC_RNN_STEP_BACKWARD(rc_rnn_row_backward_d, double)
    """
    void rc_rnn_row_backward_f(Py_ssize_t n, const float* dout, const float* h, float* dh,
                               float* da, int relu) nogil
    void rc_rnn_row_backward_d(Py_ssize_t n, const double* dout, const double* h, double* dh,
                               double* da, int relu) nogil


cdef inline void _rnn_step_forward(const rc_cell* c, const _Step* st, floating* g) noexcept nogil:
    # g: the block's G[t] rows (st.sg apart) holding a_t; out rows st.so apart
    cdef Py_ssize_t b, j, H = c.H
    cdef floating* gb
    for b in range(st.nb):
        gb = g + b * st.sg
        # (2) h_t = f(a_t), kept in G[t] for backward
        if c.kind == RC_RNN_RELU:
            for j in range(H):
                # "<= 0", not "> 0": a NaN stays NaN (as torch.relu), every other value as before
                gb[j] = 0 if gb[j] <= 0 else gb[j]
        else:
            _tanh_span(gb, H)
        memcpy(<floating*> st.o + b * st.so, gb, H * sizeof(floating))


cdef inline void _rnn_step_backward(const rc_cell* c, const _Step* st, floating* dg) noexcept nogil:
    # dg: the block's dG[t] rows (dL/da_t out); G[t] holds h_t; dh (nb, H) carried
    cdef Py_ssize_t b, H = c.H
    cdef const floating* g = <const floating*> st.g
    cdef floating* dh = <floating*> st.dh
    for b in range(st.nb):
        if _active(st, b):
            # (2) dL/da_t = (dL/dh_t) f'(a_t); dh := 0 (the product (1) adds the recurrent part)
            if floating is float:
                rc_rnn_row_backward_f(H, <const float*> st.dout + b * st.so, g + b * st.sg,
                                      dh + b * H, dg + b * st.sg, c.kind == RC_RNN_RELU)
            else:
                rc_rnn_row_backward_d(H, <const double*> st.dout + b * st.so, g + b * st.sg,
                                      dh + b * H, dg + b * st.sg, c.kind == RC_RNN_RELU)
