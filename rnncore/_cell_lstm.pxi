# --------------------------------------------------------------------------------------------------
# LSTM (PyTorch's, gate order i, f, g, o), optional peepholes and projection: its step, forward and
# backward (included by _kernels.pyx; the scan, _scan.pxi, runs it). Equations numbered as
# rnncore/layers/reference.py's lstm_step / lstm_step_backward:
#   (1) a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh                (the scan's product, into G[t])
#   (2) i = σ(a_i + w_ci ⊙ c_{t-1})   f = σ(a_f + w_cf ⊙ c_{t-1})   g = tanh(a_g)
#       c_t = f ⊙ c_{t-1} + i ⊙ g     o = σ(a_o + w_co ⊙ c_t)       m_t = o ⊙ tanh(c_t)
#   (3) h_t = m_t (or m_t W_hr^T with proj_size > 0; then h has P = proj_size units)
# Peephole terms only with peepholes (w_c* non-NULL). G[t] keeps the gate activations i, f, g, o.
# Backward, from dL/dh_t (carried + output) and the carried dL/dc_t:
#   (3) dL/dm_t = dL/dh_t (or dL/dh_t W_hr)
#   (2) dao = dm tanh(c_t) o(1-o)             dc' = dc + dm o (1 - tanh²c_t) [+ dao w_co]
#       dai = dc' g i(1-i)   daf = dc' c_{t-1} f(1-f)   dag = dc' i (1-g²)
#       dL/dc_{t-1} = dc' f [+ dai w_ci + daf w_cf]
#   (1) dL/dh_{t-1} = dL/da_t W_hh                                      (the scan's product)
#   dw_ci = Σ dai ⊙ c_{t-1}, dw_cf = Σ daf ⊙ c_{t-1}, dw_co = Σ dao ⊙ c_t  (step_dot_add,
#                                                                        _wgrad.pxi, after the loop)
# --------------------------------------------------------------------------------------------------

cdef extern from *:
    """
    /* (2) backward for one row of n units (every pointer at the row's first unit): from dm, the
     * carried dc (replaced by dL/dc_{t-1}), the gates g = [i, f, g, o] (n apart), c_{t-1} (cp) and
     * tanh(c_t) (tc), writes da = [dai, daf, dag, dao]. The arrays never overlap (restrict), so GCC
     * vectorises it. */
    #define RC_LSTM_ROW_BACKWARD(NAME, T)                                                          \
    static inline void NAME(ptrdiff_t n, const T *restrict g4, const T *restrict cp,               \
                            const T *restrict tc, const T *restrict dm, T *restrict dc,            \
                            T *restrict da, const T *restrict wci, const T *restrict wcf,          \
                            const T *restrict wco)                                                 \
    {                                                                                              \
        const T *restrict gi = g4, *restrict gf = g4 + n, *restrict gg = g4 + 2 * n,               \
                *restrict go = g4 + 3 * n;                                                         \
        T *restrict dai = da, *restrict daf = da + n, *restrict dag = da + 2 * n,                  \
          *restrict dao = da + 3 * n;                                                              \
        if (wci) {                                                                                 \
            for (ptrdiff_t j = 0; j < n; j++) {                                                    \
                T o = go[j], t = tc[j], i = gi[j], f = gf[j], g = gg[j];                           \
                T ao = dm[j] * t * o * (1 - o);                                                    \
                T d = dc[j] + dm[j] * o * (1 - t * t) + ao * wco[j];                                \
                T ai = d * g * i * (1 - i), af = d * cp[j] * f * (1 - f);                          \
                dai[j] = ai; daf[j] = af; dag[j] = d * i * (1 - g * g); dao[j] = ao;               \
                dc[j] = d * f + ai * wci[j] + af * wcf[j];                                         \
            }                                                                                      \
        } else {                                                                                   \
            for (ptrdiff_t j = 0; j < n; j++) {                                                    \
                T o = go[j], t = tc[j], i = gi[j], f = gf[j], g = gg[j];                           \
                T d = dc[j] + dm[j] * o * (1 - t * t);                                             \
                dai[j] = d * g * i * (1 - i); daf[j] = d * cp[j] * f * (1 - f);                    \
                dag[j] = d * i * (1 - g * g); dao[j] = dm[j] * t * o * (1 - o);                    \
                dc[j] = d * f;                                                                     \
            }                                                                                      \
        }                                                                                          \
    }
    RC_LSTM_ROW_BACKWARD(rc_lstm_row_backward_f, float)
    RC_LSTM_ROW_BACKWARD(rc_lstm_row_backward_d, double)
    """
    void rc_lstm_row_backward_f(Py_ssize_t n, const float* g4, const float* cp, const float* tc,
                                const float* dm, float* dc, float* da, const float* wci,
                                const float* wcf, const float* wco) nogil
    void rc_lstm_row_backward_d(Py_ssize_t n, const double* g4, const double* cp, const double* tc,
                                const double* dm, double* dc, double* da, const double* wci,
                                const double* wcf, const double* wco) nogil


cdef inline void _lstm_step_forward(const rc_cell* c, const _Step* st, floating* g) noexcept nogil:
    # g: G[t] rows (4H, st.sg apart) holding a_t; cp, cw, m: workspace rows (H, st.sw rows apart);
    # out rows st.so apart; buf: (nb, P) for the projection
    cdef Py_ssize_t b, j, H = c.H, P = c.P, sH = st.sw * H
    cdef bint proj = c.w_hr != NULL
    cdef const floating* w_ci = <const floating*> c.w_ci
    cdef const floating* w_cf = <const floating*> c.w_cf
    cdef const floating* w_co = <const floating*> c.w_co
    cdef floating* gb
    cdef floating* cpb
    cdef floating* cwb
    cdef floating* m
    for b in range(st.nb):
        gb = g + b * st.sg
        cpb = <floating*> st.cp + b * sH
        cwb = <floating*> st.cw + b * sH
        # (2) gates, c_t and m_t; the gate activations replace a_t in G[t]
        if w_ci != NULL:
            for j in range(H):
                gb[j] = gb[j] + w_ci[j] * cpb[j]
                gb[H + j] = gb[H + j] + w_cf[j] * cpb[j]
        _sigmoid_span(gb, 2 * H)                    # i, f
        _tanh_span(gb + 2 * H, H)                   # g
        for j in range(H):                          # c_t = f ⊙ c_{t-1} + i ⊙ g
            cwb[j] = gb[H + j] * cpb[j] + gb[j] * gb[2 * H + j]
        if w_ci != NULL:
            for j in range(H):
                gb[3 * H + j] = gb[3 * H + j] + w_co[j] * cwb[j]
        _sigmoid_span(gb + 3 * H, H)                # o
        m = (<floating*> st.m + b * sH) if proj else (<floating*> st.o + b * st.so)
        memcpy(m, cwb, H * sizeof(floating))
        _tanh_span(m, H)
        for j in range(H):                          # m_t = o ⊙ tanh(c_t)
            m[j] = gb[3 * H + j] * m[j]
    if proj:
        # (3) h_t = m_t W_hr^T                      # buf = M[t] @ W_hr.T
        mm_packed(st.nb, P, H, <floating*> st.m, sH, True, <const floating*> c.w_hr, H,
                  <const floating*> c.w_hr_t, H, 0, False, <floating*> st.buf, P)
        for b in range(st.nb):
            memcpy(<floating*> st.o + b * st.so, <floating*> st.buf + b * P, P * sizeof(floating))


cdef inline void _lstm_step_backward(const rc_cell* c, const _Step* st, floating* dg) noexcept nogil:
    # dg: dG[t] rows (4H, st.sg apart) out; G[t] gate activations; cp, cw: c_{t-1}, c_t rows; dh (nb,
    # P), dc (nb, H) carried; dhh: dH[t] rows (P, projection only); buf: tanh(c_t) (nb, H), buf2: dm
    cdef Py_ssize_t b, k, H = c.H, P = c.P, sH = st.sw * H, sP = st.sw * P
    cdef bint proj = c.w_hr != NULL
    cdef const floating* gb
    cdef const floating* dout
    cdef floating* dhb
    cdef floating* tcb
    cdef floating* dm
    cdef floating* dgb
    # (3) dL/dh_t = carried + output gradient, for active rows
    for b in range(st.nb):
        if _active(st, b):
            dhb = <floating*> st.dh + b * P
            dout = <const floating*> st.dout + b * st.so
            for k in range(P):
                dhb[k] = dhb[k] + dout[k]
            if proj:
                memcpy(<floating*> st.dhh + b * sP, dhb, P * sizeof(floating))
    if proj:
        # dL/dm_t = dL/dh_t W_hr                    # buf2 = dH[t] @ W_hr
        mm_packed(st.nb, H, P, <floating*> st.dhh, sP, False, <const floating*> c.w_hr, H,
                  <const floating*> c.w_hr_n, P, 0, False, <floating*> st.buf2, H)
    # (2) through m_t = o ⊙ tanh(c_t), c_t = f ⊙ c_{t-1} + i ⊙ g, and the gates
    for b in range(st.nb):
        if not _active(st, b):
            continue
        gb = <const floating*> st.g + b * st.sg
        dgb = dg + b * st.sg
        dm = (<floating*> st.buf2 + b * H) if proj else (<floating*> st.dh + b * P)
        tcb = <floating*> st.buf + b * H
        memcpy(tcb, <floating*> st.cw + b * sH, H * sizeof(floating))
        _tanh_span(tcb, H)
        # dL/da of the gates from dL/dm_t and dL/dc_t; dc becomes dL/dc_{t-1}
        if floating is float:
            rc_lstm_row_backward_f(H, gb, <float*> st.cp + b * sH, tcb, dm, <float*> st.dc + b * H,
                                   dgb, <const float*> c.w_ci, <const float*> c.w_cf,
                                   <const float*> c.w_co)
        else:
            rc_lstm_row_backward_d(H, gb, <double*> st.cp + b * sH, tcb, dm, <double*> st.dc + b * H,
                                   dgb, <const double*> c.w_ci, <const double*> c.w_cf,
                                   <const double*> c.w_co)
        memset(<floating*> st.dh + b * P, 0, P * sizeof(floating))
