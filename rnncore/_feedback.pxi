# --------------------------------------------------------------------------------------------------
# The gated-feedback RNN (Chung, Gulcehre, Cho, Bengio 2015, arXiv:1502.02367): forward and BPTT of a
# whole stack in one time loop (included by _kernels.pyx; rnncore/layers/feedback.py drives it).
# Equations numbered as rnncore/layers/reference_feedback.py, which states them in full.
#
# Notation: T steps, B sequences, L layers of H units, LH = L * H; layer j's input h^{j-1}_t (n_in
# values; h^{-1}_t = x_t); h*_t (B, LH) every layer's state after step t (h*_{-1} = h0).
# NG = L global reset gates per layer when gated, else 0. G = 1 (tanh), 3 (GRU), 4 (LSTM) gate
# blocks of H, GH = G * H; the candidate's block (tanh's only one, GRU's n, LSTM's g) is the one
# the global gates reach. The packed weights put it LAST: the LSTM runs internally in the order
# i, f, o, g (FeedbackNet permutes PyTorch's i, f, g, o once, outside the loop). W = NG + GH,
# GHp = GH - H (the gates that read h*_{t-1} ungated).
#   Wx  (W, n_in)      [W_gx; W_ih]             layer j's input side
#   Uh  (NG+GHp, LH)   [W_gh; W_hh gates]       the full h*_{t-1}
#   Uc  (H, LH)        W_hh candidate           the gated h*_{t-1}
# Per step t and layer j (rows of one thread's block; every product on rnncore's own GEMM, so a
# row's sums never depend on the rows around it):
#   (x)  PX = [0 | b_ih] + h^{j-1}_t Wx^T                  (B, W)
#   (h)  PH = [0 | b_hh gates] + h*_{t-1} Uh^T             (B, NG + GHp)
#   (1)  g = σ(PX[:NG] + PH[:NG])                           (B, NG)      the global reset gates
#   (2)  HG = h*_{t-1} with block i scaled by g_i           (B, LH)      (ungated: h*_{t-1} itself)
#   (c)  PC = b_hh cand + HG Uc^T                           (B, H)       = Σ_i g^{i->j} U^{i->j} h^i
#   (3)  tanh  h = tanh(PX_a + PC)
#        GRU   r, z = σ(PX_{r,z} + PH_{r,z});  HN = PC;  n = tanh(PX_n + r ⊙ HN);  h = (1-z) n + z h_{t-1}
#        LSTM  i, f, o = σ(PX_{i,f,o} + PH_{i,f,o});  g = tanh(PX_g + PC);  c = f c_{t-1} + i g;
#              h = o tanh(c)
# A keeps each layer's (g | gate activations) per step: (T, B, L * W); HN the GRU's PC (T, B, LH);
# Hs and Cs every state, (T + 1, B, LH), slot 0 the initial state. A step past a sequence's end
# carries every layer's state and outputs 0.
# Backward, d = dL/dh^j_t (complete once the layers above at step t are done, so layers run L-1..0):
#   (3)  D_a (the gate pre-activations' gradients, into D[:, NG:]) and dQ = dL/dPC:
#        tanh  da = d (1 - h²);  dQ = da
#        GRU   dan = d (1-z)(1-n²); daz = d (h_{t-1} - n) z(1-z); dar = dan HN r(1-r); dQ = dan r;
#              dL/dh^j_{t-1} += d z
#        LSTM  dc = dc_carried + d o (1 - tanh²c); dai = dc g i(1-i); daf = dc c_{t-1} f(1-f);
#              dao = d tanh(c) o(1-o); dag = dc i (1-g²); dQ = dag; dc_carried := dc f
#   (c)  dHG = dQ Uc                                       (B, LH)
#   (2)  dL/dg_i = Σ_{k in block i} dHG_k h*_k;  dL/dh*_{t-1} += dHG ⊙ g
#   (1)  D[:, :NG] = dL/dg g (1 - g)
#   (h)  dL/dh*_{t-1} += D[:, :NG+GHp] Uh
#   (x)  dL/dh^{j-1}_t += D Wx  (layer 0: dx_t = D Wx)
# D (T, B, L * W) and dQ (T, B, LH) are kept for the weight gradients, which the caller takes after
# the loop with one GEMM per weight (rnncore/layers/feedback.py).
# --------------------------------------------------------------------------------------------------

cdef enum:
    FB_TANH = 0
    FB_GRU = 1
    FB_LSTM = 2

FEEDBACK_CELLS = {"tanh": FB_TANH, "gru": FB_GRU, "lstm": FB_LSTM}
_FB_GATES = {FB_TANH: 1, FB_GRU: 3, FB_LSTM: 4}


# One layer's weights as the loop reads them (NULL: no bias). *_t packs W^T (forward products),
# *_n packs W (backward products); a FeedbackNet carries one of the two sets.
cdef struct fb_layer:
    Py_ssize_t n_in
    const void* wx
    const void* uh
    const void* uc
    const void* bx
    const void* bh
    const void* bc


cdef struct fb_net:
    int kind
    Py_ssize_t L, H, NG, GH, T, B
    const int* lengths     # (B,) valid steps per sequence
    const fb_layer* layers


# The arrays of one pass, every (T*B)-row array time-major (row t * B + b); NULL where unused.
cdef struct fb_arrays:
    const void* x          # (T*B, I)
    void* out              # (T*B, H)       the top layer's states (0 past a sequence's end)
    void* Hs               # ((T+1)*B, LH)  slot 0 = h0, filled by the caller
    void* Cs               # ((T+1)*B, LH)  LSTM: slot 0 = c0
    void* A                # (T*B, L*W)
    void* HN               # (T*B, LH)      GRU
    void* PX               # (B, W)         work rows
    void* PH               # (B, NG+GHp)
    void* HG               # (B, LH)        forward HG, backward dHG
    void* PC               # (B, H)
    const void* dout       # (T*B, H)
    void* dx               # (T*B, I)
    void* D                # (T*B, L*W)
    void* dQ               # (T*B, LH)
    void* dH               # (B, LH)        in: dL/dh*_{T-1}, out: dL/dh0
    void* dH2              # (B, LH)        work
    void* dC               # (B, LH)        LSTM, in: dL/dc*_{T-1}, out: dL/dc0


cdef inline bint _fb_active(const fb_net* n, Py_ssize_t t, Py_ssize_t b) noexcept nogil:
    return t < n.lengths[b]


cdef void _fb_forward_rows(const fb_net* n, const fb_arrays* a, Py_ssize_t b0, Py_ssize_t b1,
                           floating* dtype) noexcept nogil:
    # rows [b0, b1) of the batch through every step and layer (one thread's block)
    cdef Py_ssize_t L = n.L, H = n.H, NG = n.NG, GH = n.GH, B = n.B, T = n.T, LH = L * H
    cdef Py_ssize_t W = NG + GH, WH = NG + GH - H, WA = L * W, nb = b1 - b0
    cdef Py_ssize_t t, j, b, i, k, ldx, row
    cdef const fb_layer* ly
    cdef floating* Hs = <floating*> a.Hs
    cdef floating* Cs = <floating*> a.Cs
    cdef floating* PX = <floating*> a.PX + b0 * W
    cdef floating* PH = <floating*> a.PH + b0 * WH
    cdef floating* HG = <floating*> a.HG + b0 * LH
    cdef floating* PC = <floating*> a.PC + b0 * H
    cdef const floating* xin
    cdef const floating* hg
    cdef floating* hs
    cdef floating* hn
    cdef floating* act
    cdef floating* px
    cdef floating* ph
    cdef floating* pc
    cdef floating* hp
    cdef floating* h
    cdef floating* cp
    cdef floating* c
    cdef floating* o
    cdef floating gi, z
    for t in range(T):
        hs = Hs + (t * B + b0) * LH            # h*_{t-1} of the block's rows
        hn = Hs + ((t + 1) * B + b0) * LH      # h*_t, written layer by layer
        for j in range(L):
            ly = &n.layers[j]
            if j == 0:
                xin, ldx = <const floating*> a.x + (t * B + b0) * ly.n_in, ly.n_in
            else:
                xin, ldx = hn + (j - 1) * H, LH
            # (x) PX = [0 | b_ih] + h^{j-1}_t Wx^T
            mm_packed_bias(nb, W, ly.n_in, xin, ldx, <const floating*> ly.wx,
                           <const floating*> ly.bx, PX, W)
            # (h) PH = [0 | b_hh gates] + h*_{t-1} Uh^T
            if WH > 0:
                mm_packed_bias(nb, WH, LH, hs, LH, <const floating*> ly.uh, <const floating*> ly.bh,
                               PH, WH)
            if NG > 0:
                for b in range(nb):
                    act = <floating*> a.A + (t * B + b0 + b) * WA + j * W
                    # (1) g = σ(PX[:NG] + PH[:NG])
                    for i in range(NG):
                        act[i] = PX[b * W + i] + PH[b * WH + i]
                    _sigmoid_span(act, NG)
                    # (2) HG = block i of h*_{t-1} times g_i
                    for i in range(L):
                        gi = act[i]
                        for k in range(i * H, (i + 1) * H):
                            HG[b * LH + k] = gi * hs[b * LH + k]
                hg = HG
            else:
                hg = hs
            # (c) PC = b_hh cand + HG Uc^T
            mm_packed_bias(nb, H, LH, hg, LH, <const floating*> ly.uc, <const floating*> ly.bc, PC, H)
            # (3) the cell
            for b in range(nb):
                row = t * B + b0 + b
                act = <floating*> a.A + row * WA + j * W + NG
                px = PX + b * W + NG
                ph = PH + b * WH + NG
                pc = PC + b * H
                hp = hs + b * LH + j * H
                h = hn + b * LH + j * H
                if n.kind == FB_TANH:
                    for k in range(H):
                        act[k] = px[k] + pc[k]
                    _tanh_span(act, H)
                    memcpy(h, act, H * sizeof(floating))
                elif n.kind == FB_GRU:
                    for k in range(2 * H):
                        act[k] = px[k] + ph[k]
                    _sigmoid_span(act, 2 * H)
                    memcpy(<floating*> a.HN + row * LH + j * H, pc, H * sizeof(floating))
                    for k in range(H):
                        act[2 * H + k] = px[2 * H + k] + act[k] * pc[k]
                    _tanh_span(act + 2 * H, H)
                    for k in range(H):
                        z = act[H + k]
                        h[k] = (1 - z) * act[2 * H + k] + z * hp[k]
                else:
                    for k in range(3 * H):
                        act[k] = px[k] + ph[k]
                    _sigmoid_span(act, 3 * H)
                    for k in range(H):
                        act[3 * H + k] = px[3 * H + k] + pc[k]
                    _tanh_span(act + 3 * H, H)
                    cp = Cs + row * LH + j * H
                    c = Cs + (row + B) * LH + j * H
                    for k in range(H):
                        c[k] = act[H + k] * cp[k] + act[k] * act[3 * H + k]
                    memcpy(pc, c, H * sizeof(floating))     # tanh(c), in PC's row (used up)
                    _tanh_span(pc, H)
                    for k in range(H):
                        h[k] = act[2 * H + k] * pc[k]
                if not _fb_active(n, t, b0 + b):
                    # past the sequence's end every layer carries its state
                    memcpy(h, hp, H * sizeof(floating))
                    if n.kind == FB_LSTM:
                        memcpy(Cs + (row + B) * LH + j * H, Cs + row * LH + j * H, H * sizeof(floating))
        for b in range(nb):
            o = <floating*> a.out + (t * B + b0 + b) * H
            if _fb_active(n, t, b0 + b):
                memcpy(o, hn + b * LH + (L - 1) * H, H * sizeof(floating))
            else:
                memset(o, 0, H * sizeof(floating))


cdef void _fb_backward_rows(const fb_net* n, const fb_arrays* a, Py_ssize_t b0, Py_ssize_t b1,
                            floating* dtype) noexcept nogil:
    # rows [b0, b1) back through every step and layer (one thread's block)
    cdef Py_ssize_t L = n.L, H = n.H, NG = n.NG, GH = n.GH, B = n.B, T = n.T, LH = L * H
    cdef Py_ssize_t W = NG + GH, WH = NG + GH - H, WA = L * W, nb = b1 - b0
    cdef Py_ssize_t s, t, j, b, i, k, row
    cdef const fb_layer* ly
    cdef const floating* Hs = <const floating*> a.Hs
    cdef const floating* Cs = <const floating*> a.Cs
    cdef floating* dHc = <floating*> a.dH + b0 * LH      # dL/dh*_t
    cdef floating* dHp = <floating*> a.dH2 + b0 * LH     # dL/dh*_{t-1}, accumulated
    cdef floating* dC = <floating*> a.dC + b0 * LH if a.dC != NULL else NULL
    cdef floating* dHG = <floating*> a.HG + b0 * LH
    cdef floating* swap
    cdef floating* Dj
    cdef floating* dQj
    cdef floating* da
    cdef floating* dq
    cdef floating* dh
    cdef floating* dc
    cdef floating* tc
    cdef const floating* hs
    cdef const floating* act
    cdef const floating* hp
    cdef const floating* hn
    cdef const floating* cp
    cdef const floating* dout
    cdef floating d, r, z, v, an, ig, fg, og, gg, dcv, acc, gi
    for s in range(T):
        t = T - 1 - s
        hs = Hs + (t * B + b0) * LH
        for b in range(nb):
            memset(dHp + b * LH, 0, LH * sizeof(floating))
            if _fb_active(n, t, b0 + b):
                dout = <const floating*> a.dout + (t * B + b0 + b) * H
                for k in range(H):
                    dHc[b * LH + (L - 1) * H + k] += dout[k]
        for j in range(L - 1, -1, -1):
            ly = &n.layers[j]
            Dj = <floating*> a.D + (t * B + b0) * WA + j * W
            dQj = <floating*> a.dQ + (t * B + b0) * LH + j * H
            # (3) the cell's backward, into D[:, NG:] and dQ
            for b in range(nb):
                da = Dj + b * WA
                dq = dQj + b * LH
                if not _fb_active(n, t, b0 + b):
                    memset(da, 0, W * sizeof(floating))
                    memset(dq, 0, H * sizeof(floating))
                    continue
                row = t * B + b0 + b
                act = <const floating*> a.A + row * WA + j * W + NG
                dh = dHc + b * LH + j * H
                da = da + NG
                if n.kind == FB_TANH:
                    for k in range(H):
                        da[k] = dh[k] * (1 - act[k] * act[k])
                        dq[k] = da[k]
                elif n.kind == FB_GRU:
                    hp = hs + b * LH + j * H
                    hn = <const floating*> a.HN + row * LH + j * H
                    for k in range(H):
                        d, r, z, v = dh[k], act[k], act[H + k], act[2 * H + k]
                        an = d * (1 - z) * (1 - v * v)
                        da[k] = an * hn[k] * r * (1 - r)
                        da[H + k] = d * (hp[k] - v) * z * (1 - z)
                        da[2 * H + k] = an
                        dq[k] = an * r
                        dHp[b * LH + j * H + k] += d * z
                else:
                    cp = Cs + row * LH + j * H
                    tc = dHG + b * LH                       # tanh(c_t), in dHG's row (not yet used)
                    memcpy(tc, Cs + (row + B) * LH + j * H, H * sizeof(floating))
                    _tanh_span(tc, H)
                    dc = dC + b * LH + j * H
                    for k in range(H):
                        d, ig, fg, og, gg = dh[k], act[k], act[H + k], act[2 * H + k], act[3 * H + k]
                        dcv = dc[k] + d * og * (1 - tc[k] * tc[k])
                        da[k] = dcv * gg * ig * (1 - ig)
                        da[H + k] = dcv * cp[k] * fg * (1 - fg)
                        da[2 * H + k] = d * tc[k] * og * (1 - og)
                        da[3 * H + k] = dcv * ig * (1 - gg * gg)
                        dq[k] = da[3 * H + k]
                        dc[k] = dcv * fg
            # (c) dHG = dQ Uc
            mm_packed(nb, LH, H, dQj, LH, False, NULL, 0, <const floating*> ly.uc, H, 0, False, dHG, LH)
            if NG > 0:
                for b in range(nb):
                    if not _fb_active(n, t, b0 + b):
                        continue
                    act = <const floating*> a.A + (t * B + b0 + b) * WA + j * W
                    for i in range(L):
                        gi = act[i]
                        acc = 0
                        for k in range(i * H, (i + 1) * H):
                            # (2) dL/dg_i and the gated path into h*_{t-1}
                            acc = acc + dHG[b * LH + k] * hs[b * LH + k]
                            dHp[b * LH + k] += dHG[b * LH + k] * gi
                        # (1) D[:, i] = dL/dg_i g_i (1 - g_i)
                        Dj[b * WA + i] = acc * gi * (1 - gi)
            else:
                for b in range(nb):
                    for k in range(LH):
                        dHp[b * LH + k] += dHG[b * LH + k]
            # (h) dL/dh*_{t-1} += D[:, :NG+GHp] Uh          # dHp += Dj[:, :WH] @ Uh
            if WH > 0:
                mm_packed(nb, LH, WH, Dj, WA, False, NULL, 0, <const floating*> ly.uh, WH, 0, True,
                          dHp, LH)
            # (x) dL/dh^{j-1}_t += D Wx, or dx_t = D Wx       # (...) = Dj @ Wx
            if j > 0:
                mm_packed(nb, H, W, Dj, WA, False, NULL, 0, <const floating*> ly.wx, W, 0, True,
                          dHc + (j - 1) * H, LH)
            else:
                mm_packed(nb, ly.n_in, W, Dj, WA, False, NULL, 0, <const floating*> ly.wx, W, 0, False,
                          <floating*> a.dx + (t * B + b0) * ly.n_in, ly.n_in)
        # past a sequence's end the state was carried: its gradient passes through
        for b in range(nb):
            if not _fb_active(n, t, b0 + b):
                for k in range(LH):
                    dHp[b * LH + k] += dHc[b * LH + k]
        swap = dHc
        dHc = dHp
        dHp = swap
    if dHc != <floating*> a.dH + b0 * LH:
        memcpy(<floating*> a.dH + b0 * LH, dHc, nb * LH * sizeof(floating))


cdef void _fb_run(const fb_net* n, const fb_arrays* a, bint backward, int num_threads,
                  floating* dtype) noexcept nogil:
    # the batch cut into one block of rows per thread (rows are independent)
    cdef Py_ssize_t nc = _nchunks(n.B, num_threads), ci, B = n.B
    if nc == 1:
        if backward:
            _fb_backward_rows(n, a, 0, B, dtype)
        else:
            _fb_forward_rows(n, a, 0, B, dtype)
        return
    for ci in prange(nc, num_threads=nc, schedule="static"):
        if backward:
            _fb_backward_rows(n, a, ci * B // nc, (ci + 1) * B // nc, dtype)
        else:
            _fb_forward_rows(n, a, ci * B // nc, (ci + 1) * B // nc, dtype)


def _fb_perm(int kind, Py_ssize_t H):
    """Row order of the packed gate blocks from PyTorch's: the candidate block last (LSTM i, f, g, o
    -> i, f, o, g; tanh and GRU unchanged)."""
    blocks = [0, 1, 3, 2] if kind == FB_LSTM else list(range(_FB_GATES[kind]))
    return np.concatenate([np.arange(k * H, (k + 1) * H) for k in blocks])


cdef class FeedbackNet:
    """A gated-feedback stack's weights as the loop reads them, packed once per call.

    FeedbackNet(cell, layers, *, backward=False, num_threads=1)
        cell     "tanh", "gru" or "lstm"
        layers   one dict per layer: "w_ih" (GH, n_in), "w_hh" (GH, LH), optional "b_ih", "b_hh"
                 (GH,), and when gated "w_gx" (L, n_in), "w_gh" (L, LH); PyTorch's gate order;
                 arrays of one float dtype
        backward pack what the backward pass reads (W) instead of the forward pass (W^T)
    """
    cdef fb_net n
    cdef readonly object arrays, dtype, perm
    cdef object _buf

    def __init__(self, str cell, list layers, *, bint backward=False, int num_threads=1):
        if cell not in FEEDBACK_CELLS:
            raise ValueError(f"cell must be one of {sorted(FEEDBACK_CELLS)}, got {cell!r}")
        cdef int kind = FEEDBACK_CELLS[cell]
        cdef Py_ssize_t L = len(layers), j
        if L < 1:
            raise ValueError("a FeedbackNet needs at least one layer")
        w_hh = layers[0].get("w_hh")
        if not isinstance(w_hh, np.ndarray) or w_hh.ndim != 2 or w_hh.dtype not in (np.float32, np.float64):
            raise TypeError("layers[0]['w_hh'] must be a 2-D float32 or float64 array")
        dtype = w_hh.dtype
        G = _FB_GATES[kind]
        GH, LH = w_hh.shape
        H = GH // G
        if GH % G or LH != L * H or H < 1:
            raise ValueError(f"layers[0]['w_hh'] must be ({G} * hidden, {L} * hidden), got {w_hh.shape}")
        gated = "w_gx" in layers[0]
        NG = L if gated else 0
        perm = _fb_perm(kind, H)
        pack = pack_n if backward else pack_t
        self._buf = np.zeros(L * sizeof(fb_layer), np.uint8)
        cdef fb_layer* ly = <fb_layer*> cnp.PyArray_DATA(self._buf)
        arrays = []
        for j in range(L):
            p = layers[j]
            n_in = p["w_ih"].shape[1] if isinstance(p.get("w_ih"), np.ndarray) else -1
            want = {"w_ih": (GH, n_in), "w_hh": (GH, LH)}
            if gated:
                want.update(w_gx=(L, n_in), w_gh=(L, LH))
            if "b_ih" in layers[0]:
                want.update(b_ih=(GH,), b_hh=(GH,))
            for name, shape in want.items():
                _data(p.get(name), f"layers[{j}][{name!r}]", dtype, shape)
            if n_in < 1 or j > 0 and n_in != H or set(p) != set(want):
                raise ValueError(f"layers[{j}] must hold {sorted(want)} with n_in >= 1 ({H} above "
                                 f"layer 0), got {sorted(p)} with n_in {n_in}")
            w_ih, w_hh = p["w_ih"][perm], p["w_hh"][perm]
            wx = np.concatenate([p["w_gx"], w_ih]) if gated else w_ih
            uh = np.concatenate([p["w_gh"], w_hh[:GH - H]]) if gated else w_hh[:GH - H]
            uc = np.ascontiguousarray(w_hh[GH - H:])
            keep = {"wx": pack(wx, num_threads), "uc": pack(uc, num_threads)}
            if uh.shape[0] > 0:
                keep["uh"] = pack(np.ascontiguousarray(uh), num_threads)
            if "b_ih" in p and not backward:
                zeros = np.zeros(NG, dtype)
                keep["bx"] = np.concatenate([zeros, p["b_ih"][perm]])
                keep["bh"] = np.concatenate([zeros, p["b_hh"][perm][:GH - H]])
                keep["bc"] = np.ascontiguousarray(p["b_hh"][perm][GH - H:])
            ly[j].n_in = n_in
            ly[j].wx = _data(keep["wx"], "wx", dtype, (None, None))
            ly[j].uh = _data(keep.get("uh"), "uh", dtype, (None, None), True)
            ly[j].uc = _data(keep["uc"], "uc", dtype, (None, None))
            ly[j].bx = _data(keep.get("bx"), "bx", dtype, (NG + GH,), True)
            ly[j].bh = _data(keep.get("bh"), "bh", dtype, (NG + GH - H,), True) if NG + GH - H > 0 else NULL
            ly[j].bc = _data(keep.get("bc"), "bc", dtype, (H,), True)
            arrays.append(keep)
        self.n.kind, self.n.L, self.n.H, self.n.NG, self.n.GH = kind, L, H, NG, GH
        self.n.layers = ly
        self.arrays, self.dtype, self.perm = arrays, np.dtype(dtype), perm

    @property
    def sizes(self):
        """(L, H, NG, GH): layers, hidden units, global gates per layer, gate columns."""
        return self.n.L, self.n.H, self.n.NG, self.n.GH


cdef int _fb_shapes(FeedbackNet net, fb_net* n, object lengths, Py_ssize_t rows) except -1:
    n[0] = net.n
    n.B = lengths.shape[0] if isinstance(lengths, np.ndarray) else -1
    if n.B < 1 or rows % n.B or rows == 0:
        raise ValueError(f"lengths must be an int32 array of the batch's sequences, got "
                         f"{getattr(lengths, 'shape', lengths)} for {rows} rows")
    n.lengths = <const int*> _data(lengths, "lengths", _INT32, (n.B,))
    n.T = rows // n.B
    return 0


def feedback_forward(FeedbackNet net, *, x, out, Hs, Cs=None, A, HN=None, dict ws, lengths,
                     int num_threads=1):
    """The stack through every step (time-major rows): x (T*B, I), out (T*B, H); Hs, Cs ((T+1)*B,
    L*H) with slot 0 (the first B rows) holding h0, c0 (Cs: LSTM only); A (T*B, L*W); HN (T*B, L*H)
    (GRU only); ws: work rows {"PX": (B, W), "PH": (B, W - H), "HG": (B, L*H), "PC": (B, H)};
    lengths (B,) int32. A, HN, Hs and Cs are what feedback_backward reads."""
    cdef fb_net n
    cdef fb_arrays a
    memset(&a, 0, sizeof(a))
    _fb_shapes(net, &n, lengths, out.shape[0] if isinstance(out, np.ndarray) else -1)
    cdef Py_ssize_t T = n.T, B = n.B, LH = n.L * n.H, W = n.NG + n.GH, I = n.layers[0].n_in
    dt = net.dtype
    a.x = _data(x, "x", dt, (T * B, I))
    a.out = _data(out, "out", dt, (T * B, n.H))
    a.Hs = _data(Hs, "Hs", dt, ((T + 1) * B, LH))
    a.A = _data(A, "A", dt, (T * B, n.L * W))
    a.Cs = _data(Cs, "Cs", dt, ((T + 1) * B, LH), n.kind != FB_LSTM)
    a.HN = _data(HN, "HN", dt, (T * B, LH), n.kind != FB_GRU)
    a.PX = _data(ws["PX"], "PX", dt, (B, W))
    a.PH = _data(ws["PH"], "PH", dt, (B, W - n.H))
    a.HG = _data(ws["HG"], "HG", dt, (B, LH))
    a.PC = _data(ws["PC"], "PC", dt, (B, n.H))
    num_threads = _clamp_threads(num_threads)
    cdef bint f32 = dt == np.float32
    with nogil:
        if f32:
            _fb_run(&n, &a, False, num_threads, <float*> NULL)
        else:
            _fb_run(&n, &a, False, num_threads, <double*> NULL)


def feedback_backward(FeedbackNet net, *, dout, dx, dH, dC=None, saved, D, dQ, dict ws, lengths,
                      int num_threads=1):
    """BPTT over feedback_forward (net packed with backward=True): dout (T*B, H) -> dx (T*B, I)
    (written), D (T*B, L*W) and dQ (T*B, L*H) (written, for the weight gradients); dH (B, L*H) from
    dL/dh*_{T-1} to dL/dh0, likewise dC (LSTM). saved: forward's {"Hs", "Cs", "A", "HN"}; ws:
    {"dH2": (B, L*H), "HG": (B, L*H)}."""
    cdef fb_net n
    cdef fb_arrays a
    memset(&a, 0, sizeof(a))
    _fb_shapes(net, &n, lengths, dout.shape[0] if isinstance(dout, np.ndarray) else -1)
    cdef Py_ssize_t T = n.T, B = n.B, LH = n.L * n.H, W = n.NG + n.GH, I = n.layers[0].n_in
    dt = net.dtype
    a.dout = _data(dout, "dout", dt, (T * B, n.H))
    a.dx = _data(dx, "dx", dt, (T * B, I))
    a.dH = _data(dH, "dH", dt, (B, LH))
    a.dC = _data(dC, "dC", dt, (B, LH), n.kind != FB_LSTM)
    a.D = _data(D, "D", dt, (T * B, n.L * W))
    a.dQ = _data(dQ, "dQ", dt, (T * B, LH))
    a.Hs = _data(saved["Hs"], "Hs", dt, ((T + 1) * B, LH))
    a.A = _data(saved["A"], "A", dt, (T * B, n.L * W))
    a.Cs = _data(saved.get("Cs"), "Cs", dt, ((T + 1) * B, LH), n.kind != FB_LSTM)
    a.HN = _data(saved.get("HN"), "HN", dt, (T * B, LH), n.kind != FB_GRU)
    a.dH2 = _data(ws["dH2"], "dH2", dt, (B, LH))
    a.HG = _data(ws["HG"], "HG", dt, (B, LH))
    num_threads = _clamp_threads(num_threads)
    cdef bint f32 = dt == np.float32
    with nogil:
        if f32:
            _fb_run(&n, &a, True, num_threads, <float*> NULL)
        else:
            _fb_run(&n, &a, True, num_threads, <double*> NULL)
