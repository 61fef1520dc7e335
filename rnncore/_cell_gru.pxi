# --------------------------------------------------------------------------------------------------
# GRU, gate order r, z, n: its step, forward and backward (included by _kernels.pyx; the scan,
# _scan.pxi, runs it). Equations numbered as rnncore/layers/reference.py's gru_step / gru_step_backward:
#   (1) q_t = h_{t-1} W_hh^T                  (the scan's product, into buf: the r, z columns, and
#                                               with reset_after the n column too)
#   (2) r = σ(x W_ir^T + b_ir + q_r + b_hr)   z = σ(x W_iz^T + b_iz + q_z + b_hz)
#   (3) reset_after (PyTorch):  HN = q_n + b_hn = h_{t-1} W_hn^T + b_hn;  a_n = x W_in^T + b_in + r ⊙ HN
#       reset before (Cho et al. 2014, the seeds, Keras reset_after=False):
#                               HN = r ⊙ h_{t-1};  a_n = x W_in^T + b_in + HN W_hn^T + b_hn
#   (4) n = tanh(a_n);  h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
# G[t] holds x W_ih^T + b_ih + [b_hr, b_hz, 0] on entry and r, z, n on exit; HN is kept for backward.
# Backward, d = dL/dh_t (carried + output):
#   (4) dan = d (1-z)(1-n²)     daz = d (h_{t-1} - n) z(1-z)     dL/dh_{t-1} := d z
#   (3) reset_after:  dar = dan HN r(1-r),  dq_n = dan r  (dL/d(h W_hn^T + b_hn), into dGh)
#       reset before: d(r ⊙ h) = dan W_hn;  dar = d(r ⊙ h) h_{t-1} r(1-r);  dL/dh_{t-1} += d(r ⊙ h) r
#   (1) dL/dh_{t-1} += [dar, daz] W_h{r,z} (+ dq_n W_hn with reset_after)   (the scan's product)
# --------------------------------------------------------------------------------------------------

cdef extern from *:
    """
    /* (4) and, with reset_after, (3) backward for one row of n units, d = dh + dout, from the gates
     * g = [r, z, n] (n apart), into da = [dar, daz, dan]:
     *     dan = d (1-z)(1-n^2)     daz = d (h_{t-1} - n) z(1-z)     dh := d z
     * and with reset_after (hn = HN; hn and dq NULL otherwise, and dar left to the caller)
     *     dar = dan hn r(1-r)      dq = dan r
     * The arrays never overlap (restrict), so GCC vectorises it. */
    #define RC_GRU_ROW_BACKWARD(NAME, T)                                                           \
    static inline void NAME(ptrdiff_t n, const T *restrict dout, const T *restrict g3,             \
                            const T *restrict hp, const T *restrict hn, T *restrict dh,            \
                            T *restrict da, T *restrict dq)                                        \
    {                                                                                              \
        const T *restrict gr = g3, *restrict gz = g3 + n, *restrict gn = g3 + 2 * n;               \
        T *restrict dar = da, *restrict daz = da + n, *restrict dan = da + 2 * n;                  \
        if (hn) {                                                                                  \
            for (ptrdiff_t j = 0; j < n; j++) {                                                    \
                T d = dh[j] + dout[j], r = gr[j], z = gz[j], v = gn[j];                            \
                T an = d * (1 - z) * (1 - v * v);                                                  \
                daz[j] = d * (hp[j] - v) * z * (1 - z);                                            \
                dan[j] = an;                                                                       \
                dar[j] = an * hn[j] * r * (1 - r);                                                 \
                dq[j] = an * r;                                                                    \
                dh[j] = d * z;                                                                     \
            }                                                                                      \
        } else {                                                                                   \
            for (ptrdiff_t j = 0; j < n; j++) {                                                    \
                T d = dh[j] + dout[j], z = gz[j], v = gn[j];                                       \
                daz[j] = d * (hp[j] - v) * z * (1 - z);                                            \
                dan[j] = d * (1 - z) * (1 - v * v);                                                \
                dh[j] = d * z;                                                                     \
            }                                                                                      \
        }                                                                                          \
    }
    RC_GRU_ROW_BACKWARD(rc_gru_row_backward_f, float)
    RC_GRU_ROW_BACKWARD(rc_gru_row_backward_d, double)
    """
    void rc_gru_row_backward_f(Py_ssize_t n, const float* dout, const float* g3, const float* hp,
                               const float* hn, float* dh, float* da, float* dq) nogil
    void rc_gru_row_backward_d(Py_ssize_t n, const double* dout, const double* g3,
                               const double* hp, const double* hn, double* dh, double* da,
                               double* dq) nogil


cdef inline void _gru_step_forward(const rc_cell* c, const _Step* st, floating* g) noexcept nogil:
    # g: G[t] rows (3H, st.sg apart); hp, hn: workspace rows (H, st.sw rows apart); buf: q_t (nb, 3H)
    cdef Py_ssize_t b, j, H = c.H, H3 = 3 * H, sH = st.sw * H, nr
    cdef floating* q = <floating*> st.buf
    cdef floating* hp = <floating*> st.hp
    cdef floating* hn = <floating*> st.hn
    cdef floating* gb
    cdef floating* o
    cdef const floating* b_hn = <const floating*> c.b_hn
    cdef const floating* W_t = <const floating*> c.w_hh_t
    cdef floating z, hv
    # (2) r = σ(a_r), z = σ(a_z)
    for b in range(st.nb):
        gb = g + b * st.sg
        for j in range(2 * H):
            gb[j] = gb[j] + q[b * H3 + j]
        _sigmoid_span(gb, 2 * H)
    if c.kind == RC_GRU:
        # (3) HN = h_{t-1} W_hn^T + b_hn;  a_n = G_n + r ⊙ HN
        for b in range(st.nb):
            gb = g + b * st.sg
            for j in range(H):
                hv = q[b * H3 + 2 * H + j] + (b_hn[j] if b_hn != NULL else 0)
                hn[b * sH + j] = hv
                gb[2 * H + j] = gb[2 * H + j] + gb[j] * hv
    else:
        # (3) HN = r ⊙ h_{t-1};  a_n = G_n + HN W_hn^T + b_hn
        for b in range(st.nb):
            for j in range(H):
                hn[b * sH + j] = g[b * st.sg + j] * hp[b * sH + j]
        # W_t packs W_h{r,z}^T and W_hn^T one after the other (pack_gru_t): the n part starts after
        # the r, z part's panels
        nr = panel_width(g)
        mm_packed(st.nb, H, H, hn, sH, True, <const floating*> c.w_hh + 2 * H * H, H,
                  (W_t + _npanels(2 * H, nr) * H * nr) if W_t != NULL else NULL,
                  H, 0, False, q + 2 * H, H3)
        for b in range(st.nb):
            gb = g + b * st.sg
            for j in range(H):
                gb[2 * H + j] = (gb[2 * H + j] + q[b * H3 + 2 * H + j]
                                 + (b_hn[j] if b_hn != NULL else 0))
    # (4) n = tanh(a_n);  h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
    for b in range(st.nb):
        _tanh_span(g + b * st.sg + 2 * H, H)
    for b in range(st.nb):
        gb = g + b * st.sg
        o = <floating*> st.o + b * st.so
        for j in range(H):
            z = gb[H + j]
            o[j] = (1 - z) * gb[2 * H + j] + z * hp[b * sH + j]


cdef inline void _gru_step_backward(const rc_cell* c, const _Step* st, floating* dx) noexcept nogil:
    # dx: dG[t] rows (3H, st.sg apart) out; dgh: dGh[t] rows (H, st.sw rows apart; reset_after);
    # G[t] r, z, n; hp, hn rows; dh (nb, H) carried; buf: d(r ⊙ h) (nb, H) (reset before)
    cdef Py_ssize_t b, j, H = c.H, sH = st.sw * H
    cdef bint after = c.kind == RC_GRU
    cdef const floating* g = <const floating*> st.g
    cdef const floating* gb
    cdef const floating* hp = <const floating*> st.hp
    cdef const floating* hn = <const floating*> st.hn
    cdef floating* dh = <floating*> st.dh
    cdef floating* dq = <floating*> st.dgh
    cdef floating* drh = <floating*> st.buf
    cdef floating* dxb
    cdef floating r
    # (4), and (3) with reset_after
    for b in range(st.nb):
        if not _active(st, b):
            continue
        gb = g + b * st.sg
        dxb = dx + b * st.sg
        if floating is float:
            rc_gru_row_backward_f(H, <const float*> st.dout + b * st.so, gb, hp + b * sH,
                                  (hn + b * sH) if after else NULL, dh + b * H, dxb,
                                  (dq + b * sH) if after else NULL)
        else:
            rc_gru_row_backward_d(H, <const double*> st.dout + b * st.so, gb, hp + b * sH,
                                  (hn + b * sH) if after else NULL, dh + b * H, dxb,
                                  (dq + b * sH) if after else NULL)
    if not after:
        # (3) d(r ⊙ h_{t-1}) = dL/da_n W_hn          # drh = dx[:, 2H:] @ W_hh[2H:]
        mm_packed(st.nb, H, H, dx + 2 * H, st.sg, False, <const floating*> c.w_hh + 2 * H * H, H,
                  <const floating*> c.w_hh_n, 3 * H, 2 * H, False, drh, H)
        for b in range(st.nb):
            if _active(st, b):
                for j in range(H):
                    r = g[b * st.sg + j]
                    dx[b * st.sg + j] = drh[b * H + j] * hp[b * sH + j] * r * (1 - r)
                    dh[b * H + j] += drh[b * H + j] * r
