# --------------------------------------------------------------------------------------------------
# The scan: one forward time loop and one backward time loop for every cell (included by
# _kernels.pyx). It owns what cells share: the direction, lengths and the carry past a sequence's
# end, time-major or batch-major rows, the workspace (every step kept, or two slots), the threads'
# row blocks, the input projection (inside the loop or one GEMM before it) and the per-step
# recurrent product. A cell contributes its step (_cell_<name>.pxi): the gate math after the
# product, and its backward.
#
# Parallelism: the batch is cut into one contiguous block of rows per thread; each thread runs the
# whole time loop for its rows (rows are independent), calling its products on one thread, so no
# barrier is needed inside the loop. The caller keeps BLAS on one thread (rnncore/engine/threads.py).
#
# Row layout. Every (T*B)-row array (x, out, dout, dG, ...) has row (t, b) at t * ts + b * rs: (ts,
# rs) = (B, 1) time-major or (1, T) batch_first, so batch_first input and output need no transposing
# copies. Within one step a block's rows are rs rows apart.
#
# Workspace rows. Training (seq.keep) keeps what backward needs for every step: G, hprev, cprev,
# cnew, M and HN have the row layout above. Inference keeps only the current step and the next:
# those arrays are (2, B, .) (ts = B, rs = 1), step s uses slot s % 2 and writes the next step's
# state into slot (s+1) % 2, so the loop works on a few hundred KB that stay in cache. G keeps every
# step when the projection runs before the loop (not cell.in_loop), even without keep.
#
# The input projection. Inside the loop (cell.in_loop) each step starts its pre-activations from
# x_t W_ih^T + bias in the same pass as the recurrent product (G[t] is written while in cache instead
# of by one (T*B, GH) GEMM before the loop, a pass over tens of MB and then a cache miss on every row
# of G in the loop). Otherwise the scan computes it for every step before the loop: on rnncore's own
# GEMM (cell.w_ih_t) in blocks of PROJ_ROWS rows over the team, or on BLAS (_par_gemm). Both of
# rnncore's own forms sum every row in the same order as the other (and as one step alone does), so
# where the projection runs never changes a bit: a sequence's result does not depend on the batch
# around it or on being computed step by step (layer.step).
# --------------------------------------------------------------------------------------------------

cdef struct _Layout:
    bint keep           # every step has its own rows; else two slots, step s in slot s % 2
    Py_ssize_t ts, rs   # row (time index, b) at index * ts + b * rs


cdef inline _Layout _layout_of(const rc_seq* q, bint keep) noexcept nogil:
    cdef _Layout L
    L.keep = keep
    if keep:
        L.ts, L.rs = q.ts, q.rs
    else:
        L.ts, L.rs = q.B, 1
    return L


cdef inline Py_ssize_t _row(_Layout L, Py_ssize_t s, Py_ssize_t t, Py_ssize_t b) noexcept nogil:
    # the row of sequence b at step s (time t) in an array of layout L
    return (t if L.keep else s % 2) * L.ts + b * L.rs


# One step t of a thread's block of nb rows, as a cell step sees it: every pointer at the block's
# first row. G-like rows (g, dg) are sg values apart, workspace rows (hp, cp, cw, m, hn, dhh, dgh)
# sw rows apart (times their width), output rows (o, dout) so values apart; (nb, .) buffers (dh, dc,
# buf, buf2) are contiguous.
cdef struct _Step:
    Py_ssize_t t, nb
    const int* lens     # the block's lengths, or NULL: every row active
    void* g
    Py_ssize_t sg
    void* hp
    void* cp
    void* cw
    void* m
    void* hn
    Py_ssize_t sw
    void* o
    const void* dout
    Py_ssize_t so
    void* dhh
    void* dgh
    void* dh
    void* dc
    void* buf
    void* buf2


cdef inline bint _active(const _Step* st, Py_ssize_t b) noexcept nogil:
    # step t of the block's row b is inside its sequence
    return st.lens == NULL or st.t < st.lens[b]


cdef inline void* _at(void* base, Py_ssize_t offset, floating* dtype) noexcept nogil:
    # base + offset values of the dtype, or NULL for a NULL base
    return NULL if base == NULL else <void*> (<floating*> base + offset)


cdef inline void _step_products(const rc_cell* c, const rc_arrays* a, const _Step* st,
                                Py_ssize_t xrow, Py_ssize_t xs, floating* g) noexcept nogil:
    # (1) the step's products, rows of the block from x's row xrow, xs rows apart:
    #   RNN, LSTM:  g := G[t] + h_{t-1} W_hh^T, G[t] = bias + x_t W_ih^T (in-loop projection) or G
    #               on entry; both on rnncore's own GEMM: one pass, C stored once
    #   GRU:        g := bias + x_t W_ih^T (in-loop projection) or G on entry;
    #               buf := h_{t-1} W_h{r,z}^T (and W_hn^T with reset after)
    cdef Py_ssize_t GH = c.GH, P = c.P, I = c.n_in, sP = st.sw * P
    cdef const floating* x = <const floating*> a.x + xrow * a.ldx if c.in_loop else NULL
    cdef const floating* W_ih_t = <const floating*> c.w_ih_t if c.in_loop else NULL
    cdef const floating* bias = <const floating*> c.bias
    cdef const floating* W_hh = <const floating*> c.w_hh
    cdef const floating* W_t = <const floating*> c.w_hh_t
    cdef floating* hp = <floating*> st.hp
    if c.kind == RC_GRU or c.kind == RC_GRU_RESET_BEFORE:
        if W_ih_t != NULL:
            mm_packed_bias(st.nb, GH, I, x, xs * a.ldx, W_ih_t, bias, g, st.sg)
        mm_packed(st.nb, GH if c.kind == RC_GRU else 2 * c.H, P, hp, sP, True, W_hh, P, W_t, P, 0,
                  False, <floating*> st.buf, GH)
    elif W_ih_t != NULL and W_t != NULL:
        mm_packed2_bias(st.nb, GH, I, x, xs * a.ldx, W_ih_t, P, hp, sP, W_t, bias, g, st.sg)
    else:
        if W_ih_t != NULL:
            mm_packed_bias(st.nb, GH, I, x, xs * a.ldx, W_ih_t, bias, g, st.sg)
        mm_packed(st.nb, GH, P, hp, sP, True, W_hh, P, W_t, P, 0, True, g, st.sg)


cdef void _forward_rows(const rc_cell* c, const rc_seq* q, const rc_arrays* a, floating* G,
                        Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    # rows [b0, b1) of the batch through all T steps (one thread's block)
    cdef _Layout WL = _layout_of(q, q.keep), GL = _layout_of(q, q.keep or not c.in_loop)
    cdef Py_ssize_t T = q.T, H = c.H, P = c.P, GH = c.GH, s, t, b, w0, wn, row
    cdef bint lstm = c.kind == RC_LSTM
    cdef floating* hprev = <floating*> a.hprev
    cdef floating* cprev = <floating*> a.cprev
    cdef floating* cnew = <floating*> a.cnew
    cdef floating* hdst
    cdef floating* cdst
    cdef floating* o
    cdef Py_ssize_t shd, scd
    cdef _Step st
    memset(&st, 0, sizeof(st))
    st.nb = b1 - b0
    st.lens = (q.lengths + b0) if q.lengths != NULL else NULL
    st.sg = GL.rs * GH
    st.sw = WL.rs
    st.so = q.rs * a.ldo
    st.buf = _at(a.buf, b0 * (P if lstm else GH), G)
    # the first step's state: h0 (and c0)
    row = _row(WL, 0, T - 1 if q.reverse else 0, b0)
    for b in range(st.nb):
        memcpy(hprev + (row + b * WL.rs) * P, <const floating*> a.h0 + (b0 + b) * P,
               P * sizeof(floating))
        if lstm:
            memcpy(cprev + (row + b * WL.rs) * H, <const floating*> a.c0 + (b0 + b) * H,
                   H * sizeof(floating))
    for s in range(T):
        t = T - 1 - s if q.reverse else s
        st.t = t
        w0 = _row(WL, s, t, b0)       # the block's first workspace row of step t
        st.g = G + _row(GL, s, t, b0) * GH
        st.hp = hprev + w0 * P
        st.cp = _at(a.cprev, w0 * H, G)
        st.cw = _at(a.cnew, w0 * H, G)
        st.m = _at(a.M, w0 * H, G)
        st.hn = _at(a.HN, w0 * H, G)
        st.o = <floating*> a.out + (t * q.ts + b0 * q.rs) * a.ldo
        # (1) the products, then the cell's step
        _step_products(c, a, &st, t * q.ts + b0 * q.rs, q.rs, <floating*> st.g)
        if c.kind == RC_LSTM:
            _lstm_step_forward(c, &st, <floating*> st.g)
        elif c.kind == RC_GRU or c.kind == RC_GRU_RESET_BEFORE:
            _gru_step_forward(c, &st, <floating*> st.g)
        else:
            _rnn_step_forward(c, &st, <floating*> st.g)
        # where h_t (and c_t) go: the next step's hprev (cprev), or h_n (c_n) after the last step
        if s == T - 1:
            hdst, shd = <floating*> a.h_n + b0 * P, P
            cdst, scd = (<floating*> a.c_n + b0 * H) if lstm else NULL, H
        else:
            wn = _row(WL, s + 1, t - 1 if q.reverse else t + 1, b0)
            hdst, shd = hprev + wn * P, WL.rs * P
            cdst, scd = (cprev + wn * H) if lstm else NULL, WL.rs * H
        for b in range(st.nb):
            o = <floating*> st.o + b * st.so
            if _active(&st, b):
                if hdst + b * shd != o:      # (one step into the caller's h: already there)
                    memcpy(hdst + b * shd, o, P * sizeof(floating))
                if lstm:
                    memcpy(cdst + b * scd, <floating*> st.cw + b * WL.rs * H, H * sizeof(floating))
            else:
                # past the sequence's end: the state is carried, the output is 0, and what backward
                # reads of this step is 0 (c_t = c_{t-1})
                memset(<floating*> st.g + b * st.sg, 0, GH * sizeof(floating))
                memcpy(hdst + b * shd, <floating*> st.hp + b * WL.rs * P, P * sizeof(floating))
                memset(o, 0, P * sizeof(floating))
                if lstm:
                    memcpy(<floating*> st.cw + b * WL.rs * H, <floating*> st.cp + b * WL.rs * H,
                           H * sizeof(floating))
                    memcpy(cdst + b * scd, <floating*> st.cp + b * WL.rs * H, H * sizeof(floating))
                if st.m != NULL:
                    memset(<floating*> st.m + b * WL.rs * H, 0, H * sizeof(floating))
                if st.hn != NULL:
                    memset(<floating*> st.hn + b * WL.rs * H, 0, H * sizeof(floating))


cdef void _backward_rows(const rc_cell* c, const rc_seq* q, const rc_arrays* a, floating* dG,
                         Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    # rows [b0, b1) of the batch back through all T steps (one thread's block); every array has
    # the row layout (training keeps every step)
    cdef Py_ssize_t T = q.T, H = c.H, P = c.P, GH = c.GH, s, t, b, r0, K1
    cdef bint gru = c.kind == RC_GRU or c.kind == RC_GRU_RESET_BEFORE
    cdef const floating* W_hh = <const floating*> c.w_hh
    cdef const floating* W_p = <const floating*> c.w_hh_n
    cdef floating* dh = <floating*> a.dh + b0 * P
    cdef _Step st
    memset(&st, 0, sizeof(st))
    st.nb = b1 - b0
    st.lens = (q.lengths + b0) if q.lengths != NULL else NULL
    st.sg = q.rs * GH
    st.sw = q.rs
    st.so = q.rs * a.ldo
    st.dh = dh
    st.dc = _at(a.dc, b0 * H, dG)
    st.buf = _at(a.buf, b0 * H, dG)
    st.buf2 = _at(a.buf, (q.B + b0) * H, dG)
    # dL/dh_{t-1} += dG_t[:, :K1] W_hh[:K1]: every gate's column but a GRU's n (its part is in dGh
    # with reset after, and in the step's own product before)
    K1 = 2 * H if gru else GH
    for s in range(T):
        t = s if q.reverse else T - 1 - s
        st.t = t
        r0 = t * q.ts + b0 * q.rs
        st.g = <floating*> a.G + r0 * GH
        st.hp = <floating*> a.hprev + r0 * P
        st.cp = _at(a.cprev, r0 * H, dG)
        st.cw = _at(a.cnew, r0 * H, dG)
        st.hn = _at(a.HN, r0 * H, dG)
        st.dhh = _at(a.dH, r0 * P, dG)
        st.dgh = _at(a.dGh, r0 * H, dG)
        st.dout = <const floating*> a.dout + r0 * a.ldo
        # past a sequence's end a step passes dL/dh through unchanged: its gradients are 0
        for b in range(st.nb):
            if not _active(&st, b):
                memset(dG + (r0 + b * q.rs) * GH, 0, GH * sizeof(floating))
                if st.dgh != NULL:
                    memset(<floating*> st.dgh + b * q.rs * H, 0, H * sizeof(floating))
                if st.dhh != NULL:
                    memset(<floating*> st.dhh + b * q.rs * P, 0, P * sizeof(floating))
        if c.kind == RC_LSTM:
            _lstm_step_backward(c, &st, dG + r0 * GH)
        elif gru:
            _gru_step_backward(c, &st, dG + r0 * GH)
        else:
            _rnn_step_backward(c, &st, dG + r0 * GH)
        # (1) dL/dh_{t-1} += dL/da_t W_hh              # dh += dG[t][:, :K1] @ W_hh[:K1]
        mm_packed(st.nb, P, K1, dG + r0 * GH, st.sg, False, W_hh, P, W_p, GH, 0, True, dh, P)
        if st.dgh != NULL:
            #                  + dL/dq_n W_hn           # dh += dGh[t] @ W_hh[2H:]
            mm_packed(st.nb, P, H, <floating*> st.dgh, q.rs * H, False, W_hh + K1 * P, P, W_p, GH,
                      K1, True, dh, P)


cdef inline Py_ssize_t _nchunks(Py_ssize_t B, int num_threads) noexcept nogil:
    if num_threads < 1:
        return 1
    return B if B < num_threads else num_threads


cdef enum:
    PROJ_ROWS = 192     # rows per block of the projection before the loop (its A block stays in L2)
    PROJ_MIN_ROWS = 16


cdef inline Py_ssize_t _row_block(Py_ssize_t rows, int num_threads) noexcept nogil:
    # rows per block of a product split over the team by rows: at most PROJ_ROWS, and small enough
    # that every thread gets a block (200 rows on 2 threads: 2 x 100, not 192 + 8). Every row is summed
    # in one order whatever its block, so the split never changes a bit.
    cdef Py_ssize_t n = (rows + num_threads - 1) // num_threads if num_threads > 1 else rows
    if n > PROJ_ROWS:
        return PROJ_ROWS
    return n if n > PROJ_MIN_ROWS else PROJ_MIN_ROWS


cdef void _project(const rc_cell* c, const rc_seq* q, const rc_arrays* a, int num_threads,
                   floating* G) noexcept nogil:
    # G := bias + x W_ih^T for every step, before the loop
    cdef Py_ssize_t rows = q.T * q.B, nr = _row_block(rows, num_threads)
    cdef Py_ssize_t nblk = (rows + nr - 1) // nr, blk, r0, r1
    cdef const floating* x = <const floating*> a.x
    if c.n_in == 0:
        # no inputs: G := bias (or 0)
        if c.bias != NULL:
            _fill_rows(G, rows, c.GH, c.GH, <const floating*> c.bias)
        else:
            memset(G, 0, rows * c.GH * sizeof(floating))
    elif c.w_ih_t != NULL:
        # rnncore's own GEMM, blocks of rows (each by one thread)
        if num_threads < 1 or nblk < 2:
            num_threads = 1
        for blk in prange(nblk, num_threads=num_threads, schedule="static"):
            r0 = blk * nr
            r1 = rows if r0 + nr > rows else r0 + nr
            mm_packed_bias(r1 - r0, c.GH, c.n_in, x + r0 * a.ldx, a.ldx,
                           <const floating*> c.w_ih_t, <const floating*> c.bias, G + r0 * c.GH, c.GH)
    else:
        # BLAS, a fixed grid of blocks over the team
        _par_gemm(False, True, <int> rows, <int> c.GH, <int> c.n_in, 1, x, <int> a.ldx,
                  <const floating*> c.w_ih, <int> c.n_in, 0, G, <int> c.GH,
                  <const floating*> c.bias, num_threads)


cdef void _forward(const rc_cell* c, const rc_seq* q, rc_arrays* a, int num_threads,
                   floating* G) noexcept nogil:
    cdef Py_ssize_t nc = _nchunks(q.B, num_threads), ci, B = q.B
    if not c.in_loop:
        _project(c, q, a, num_threads, G)
    if nc == 1:
        _forward_rows(c, q, a, G, 0, B)
        return
    for ci in prange(nc, num_threads=nc, schedule="static"):
        _forward_rows(c, q, a, G, ci * B // nc, (ci + 1) * B // nc)


cdef void _backward(const rc_cell* c, const rc_seq* q, rc_arrays* a, int num_threads,
                    floating* dG) noexcept nogil:
    cdef Py_ssize_t nc = _nchunks(q.B, num_threads), ci, B = q.B
    if nc == 1:
        _backward_rows(c, q, a, dG, 0, B)
        return
    for ci in prange(nc, num_threads=nc, schedule="static"):
        _backward_rows(c, q, a, dG, ci * B // nc, (ci + 1) * B // nc)


cdef void rc_forward_f(const rc_cell* cell, const rc_seq* seq, rc_arrays* a,
                       int num_threads) noexcept nogil:
    _forward(cell, seq, a, num_threads, <float*> a.G)


cdef void rc_forward_d(const rc_cell* cell, const rc_seq* seq, rc_arrays* a,
                       int num_threads) noexcept nogil:
    _forward(cell, seq, a, num_threads, <double*> a.G)


cdef void rc_backward_f(const rc_cell* cell, const rc_seq* seq, rc_arrays* a,
                        int num_threads) noexcept nogil:
    _backward(cell, seq, a, num_threads, <float*> a.dG)


cdef void rc_backward_d(const rc_cell* cell, const rc_seq* seq, rc_arrays* a,
                        int num_threads) noexcept nogil:
    _backward(cell, seq, a, num_threads, <double*> a.dG)


# --------------------------------------------------------------------------------------------------
# One step for streaming and embedding: the scan over T = 1 on the caller's thread, the workspace
# carved from one buffer of rc_step_workspace(cell, B) values.
# --------------------------------------------------------------------------------------------------

cdef Py_ssize_t rc_step_workspace(const rc_cell* cell, Py_ssize_t B) noexcept nogil:
    # G (B, GH), hprev (B, P), cprev, cnew, M, HN (B, H) each, buf (B, max(P, GH))
    return B * (cell.GH + cell.P + 4 * cell.H + (cell.P if cell.P > cell.GH else cell.GH))


cdef void _step(const rc_cell* c, Py_ssize_t B, const floating* x, const floating* h,
                const floating* cs, floating* h_out, floating* c_out, floating* work) noexcept nogil:
    cdef rc_seq q
    cdef rc_arrays a
    memset(&q, 0, sizeof(q))
    memset(&a, 0, sizeof(a))
    q.T, q.B, q.ts, q.rs = 1, B, B, 1
    a.x, a.ldx, a.h0, a.c0, a.h_n, a.c_n = x, c.n_in, h, cs, h_out, c_out
    a.G = work
    a.hprev = work + B * c.GH
    if c.kind == RC_LSTM:
        a.cprev = work + B * (c.GH + c.P)
        a.cnew = work + B * (c.GH + c.P + c.H)
        if c.w_hr != NULL:
            a.M = work + B * (c.GH + c.P + 2 * c.H)
    elif c.kind == RC_GRU or c.kind == RC_GRU_RESET_BEFORE:
        a.HN = work + B * (c.GH + c.P + 3 * c.H)
    a.buf = work + B * (c.GH + c.P + 4 * c.H)
    # the output h_t goes to h_out, then the carry copies it onto itself
    a.out, a.ldo = h_out, c.P
    _forward(c, &q, &a, 1, work)


cdef void rc_step_f(const rc_cell* cell, Py_ssize_t B, const float* x, const float* h,
                    const float* c, float* h_out, float* c_out, float* work) noexcept nogil:
    _step(cell, B, x, h, c, h_out, c_out, work)


cdef void rc_step_d(const rc_cell* cell, Py_ssize_t B, const double* x, const double* h,
                    const double* c, double* h_out, double* c_out, double* work) noexcept nogil:
    _step(cell, B, x, h, c, h_out, c_out, work)
