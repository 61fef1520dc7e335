"""Cells: what differs between the vanilla RNN, LSTM and GRU, for one layer in one direction.

Each cell has `forward` (the compiled time loop, with the input projection step by step inside it or
as one GEMM of all timesteps before it: `_input_projection`) and `backward` (the compiled BPTT loop,
then the weight and input gradients of all timesteps as one GEMM each), side by side. The
layer/stack driver (rnncore/layers.py) is the same for every cell.

Conventions, for one layer and direction (T steps, B sequences, I inputs, H hidden, P = H or proj):
    p, g    this direction's parameters / gradients by short name: w_ih, w_hh, b_ih, b_hh,
            w_hr (LSTM projection), w_ci, w_cf, w_co (LSTM peepholes); g is accumulated into (+=)
    x       (T*B, I)   the layer input, rows in the layer's order: time-major, or batch-major when
                       bf (batch_first; then every (T, B, .) array below is (B, T, .) instead)
    out     (T*B, D*P) the layer output; this direction writes columns [col0, col0 + P)
    dout    (T*B, D*P) dL/d(out)
    dx      (T*B, I)   dL/dx, accumulated into (both directions add to it)
    ws      ws(name, shape, dtype) -> array: forward's workspace (what backward needs; a pooled
            training workspace per layer and direction, or reused scratch for inference, see
            layers._Scratch), and backward's temporaries (dG, ...), from the same training workspace
    keep    True for training: forward keeps every step's G, hprev, ... for backward; False for
            inference: those arrays hold only the current and the next step (rnncore/_kernels.pyx,
            "Workspace rows"), unless G arrives holding every step's projection
All large products go through rnncore._kernels.matmul (scipy's BLAS, split over rnncore's threads).
"""
import numpy as np

from rnncore import _kernels as K
from rnncore._threads import own_step_gemm


class RNNCell:
    """h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), f = tanh or relu."""
    gates = 1
    has_cell_state = False

    def __init__(self, relu=False):
        self.relu = relu

    def forward(self, p, x, h0, c0, lengths, reverse, out, col0, h_n, c_n, T, B, nt, ws, bf, keep):
        H = p["w_hh"].shape[0]
        rows = _rows(T, B, bf, keep)
        bias = p["b_ih"] + p["b_hh"] if "b_ih" in p else None
        G, proj = _input_projection(p, x, T, B, bf, keep, H, bias, nt, ws)
        hprev = ws("hprev", rows + (H,), x.dtype)
        K.rnn_forward(G, hprev, out, h_n, h0, p["w_hh"], _packed_t(p["w_hh"], nt), lengths, col0,
                      self.relu, reverse, bf, nt, keep=keep, **proj)
        return {"x": x, "G": G, "hprev": hprev, "lengths": lengths, "reverse": reverse, "bf": bf}

    def backward(self, p, g, cache, dout, col0, dh, dc, dx, nt, ws):
        G, hprev, x = cache["G"], cache["hprev"], cache["x"]
        H = G.shape[2]
        dG = ws("dG", G.shape, G.dtype)
        K.rnn_backward(dG, dh, dout, G, p["w_hh"], cache["lengths"], _packed(p["w_hh"], nt), col0,
                       self.relu, cache["reverse"], cache["bf"], nt)
        dG = dG.reshape(-1, H)
        # dW_hh += dG^T @ hprev
        K.matmul(g["w_hh"], dG, hprev.reshape(-1, H), trans_a=True, beta=1.0, num_threads=nt)
        _input_side_grads(p, g, dG, x, dx, nt, hh_cols=H)
        return dh, None


class LSTMCell:
    """LSTM with PyTorch's gate order i, f, g, o; optional projection (proj_size) and peepholes."""
    gates = 4
    has_cell_state = True

    def forward(self, p, x, h0, c0, lengths, reverse, out, col0, h_n, c_n, T, B, nt, ws, bf, keep):
        dt = x.dtype
        H, P = p["w_hh"].shape[0] // 4, p["w_hh"].shape[1]
        proj = "w_hr" in p
        rows = _rows(T, B, bf, keep)
        bias = p["b_ih"] + p["b_hh"] if "b_ih" in p else None
        G, proj_in = _input_projection(p, x, T, B, bf, keep, 4 * H, bias, nt, ws)
        hprev = ws("hprev", rows + (P,), dt)
        cprev = ws("cprev", rows + (H,), dt)
        cnew = ws("cnew", rows + (H,), dt)
        M = ws("M", rows + (H,), dt) if proj else None
        hbuf = ws("hbuf", (B, P), dt) if proj else None
        K.lstm_forward(G, hprev, cprev, cnew, M, hbuf, out, h_n, c_n, h0, c0, p["w_hh"],
                       p.get("w_hr"), _packed_t(p["w_hh"], nt), _packed_t(p.get("w_hr"), nt),
                       p.get("w_ci"), p.get("w_cf"), p.get("w_co"), lengths, col0, reverse, bf, nt,
                       keep=keep, **proj_in)
        return {"x": x, "G": G, "hprev": hprev, "cprev": cprev, "cnew": cnew, "M": M,
                "lengths": lengths, "reverse": reverse, "bf": bf}

    def backward(self, p, g, cache, dout, col0, dh, dc, dx, nt, ws):
        G, hprev, cprev, cnew, M = (cache[k] for k in ("G", "hprev", "cprev", "cnew", "M"))
        H4, P, B = G.shape[2], hprev.shape[2], dh.shape[0]
        H = H4 // 4
        proj = M is not None
        dG = ws("dG", G.shape, G.dtype)
        dH = ws("dH", G.shape[:2] + (P,), G.dtype) if proj else None
        dmbuf = ws("dmbuf", (B, H), G.dtype) if proj else None
        tcbuf = ws("tcbuf", (B, H), G.dtype)
        K.lstm_backward(dG, dh, dc, dH, dmbuf, tcbuf, dout, G, cprev, cnew, p["w_hh"], p.get("w_hr"),
                        p.get("w_ci"), p.get("w_cf"), p.get("w_co"), _packed(p["w_hh"], nt),
                        _packed(p.get("w_hr"), nt), cache["lengths"], col0, cache["reverse"], cache["bf"], nt)
        if "w_ci" in p:
            # peepholes: dw_c* = sum over t, b of dL/da_gate ⊙ (the cell state that gate saw)
            g["w_ci"] += np.einsum("tbj,tbj->j", dG[:, :, :H], cprev)
            g["w_cf"] += np.einsum("tbj,tbj->j", dG[:, :, H:2 * H], cprev)
            g["w_co"] += np.einsum("tbj,tbj->j", dG[:, :, 3 * H:], cnew)
        dG = dG.reshape(-1, H4)
        if proj:
            # dW_hr += dH^T @ M
            K.matmul(g["w_hr"], dH.reshape(-1, P), M.reshape(-1, H), trans_a=True, beta=1.0,
                     num_threads=nt)
        # dW_hh += dG^T @ hprev
        K.matmul(g["w_hh"], dG, hprev.reshape(-1, P), trans_a=True, beta=1.0, num_threads=nt)
        _input_side_grads(p, g, dG, cache["x"], dx, nt, hh_cols=H4)
        return dh, dc


class GRUCell:
    """GRU with PyTorch's gate order r, z, n.

    reset_after=True (PyTorch, cuDNN):  n = tanh(x W_in^T + b_in + r ⊙ (h W_hn^T + b_hn))
    reset_after=False (Cho et al. 2014, the seeds, Keras' reset_after=False):
                                        n = tanh(x W_in^T + b_in + (r ⊙ h) W_hn^T + b_hn)
    """
    gates = 3
    has_cell_state = False

    def __init__(self, reset_after=True):
        self.reset_after = reset_after

    def forward(self, p, x, h0, c0, lengths, reverse, out, col0, h_n, c_n, T, B, nt, ws, bf, keep):
        dt = x.dtype
        H = p["w_hh"].shape[1]
        bias = None
        b_hn = None
        if "b_ih" in p:
            # b_hr and b_hz fold into the input projection; b_hn stays inside r ⊙ (...)
            bias = p["b_ih"].copy()
            bias[:2 * H] += p["b_hh"][:2 * H]
            b_hn = np.ascontiguousarray(p["b_hh"][2 * H:])
        rows = _rows(T, B, bf, keep)
        G, proj = _input_projection(p, x, T, B, bf, keep, 3 * H, bias, nt, ws)
        hprev = ws("hprev", rows + (H,), dt)
        HN = ws("HN", rows + (H,), dt)
        gh = ws("gh", (B, 3 * H), dt)
        W_t = K.pack_gru_t(p["w_hh"], self.reset_after, nt) if own_step_gemm() else None
        K.gru_forward(G, hprev, HN, gh, out, h_n, h0, p["w_hh"], W_t, b_hn,
                      lengths, col0, self.reset_after, reverse, bf, nt, keep=keep, **proj)
        return {"x": x, "G": G, "hprev": hprev, "HN": HN, "lengths": lengths, "reverse": reverse,
                "bf": bf}

    def backward(self, p, g, cache, dout, col0, dh, dc, dx, nt, ws):
        G, hprev, HN = cache["G"], cache["hprev"], cache["HN"]
        H3, B = G.shape[2], dh.shape[0]
        H = H3 // 3
        dGx = ws("dGx", G.shape, G.dtype)
        if self.reset_after:
            # dL/d(h W_hh^T + b_hh): its r and z columns are dGx's; dGhn holds the n column
            dGhn = ws("dGhn", G.shape[:2] + (H,), G.dtype)
            K.gru_backward(dGx, dGhn, dh, None, dout, G, hprev, HN, p["w_hh"], cache["lengths"],
                           _packed(p["w_hh"], nt), col0, True, cache["reverse"], cache["bf"], nt)
            dGx, dGhn = dGx.reshape(-1, H3), dGhn.reshape(-1, H)
            # dW_h{r,z} += dG_{r,z}^T @ hprev ; dW_hn += dGhn^T @ hprev ; db_hn += sum(dGhn)
            K.matmul(g["w_hh"][:2 * H], dGx[:, :2 * H], hprev.reshape(-1, H), trans_a=True,
                     beta=1.0, num_threads=nt)
            K.matmul(g["w_hh"][2 * H:], dGhn, hprev.reshape(-1, H), trans_a=True, beta=1.0,
                     num_threads=nt)
            if "b_hh" in g:
                K.colsum_add(g["b_hh"][2 * H:], dGhn, nt)
            _input_side_grads(p, g, dGx, cache["x"], dx, nt, hh_cols=2 * H)   # db_h{r,z} too
        else:
            drh = ws("drh", (B, H), G.dtype)
            K.gru_backward(dGx, None, dh, drh, dout, G, hprev, HN, p["w_hh"], cache["lengths"],
                           _packed(p["w_hh"], nt), col0, False, cache["reverse"], cache["bf"], nt)
            dGx = dGx.reshape(-1, H3)
            # dW_h{r,z} += dG_{r,z}^T @ hprev ; dW_hn += dG_n^T @ (r ⊙ hprev)
            K.matmul(g["w_hh"][:2 * H], dGx[:, :2 * H], hprev.reshape(-1, H), trans_a=True,
                     beta=1.0, num_threads=nt)
            K.matmul(g["w_hh"][2 * H:], dGx[:, 2 * H:], HN.reshape(-1, H), trans_a=True,
                     beta=1.0, num_threads=nt)
            _input_side_grads(p, g, dGx, cache["x"], dx, nt, hh_cols=H3)       # db_hh = db_ih
        return dh, None


def _packed_t(w, nt):
    """W^T packed for rnncore's own step GEMM (h @ W^T, rnncore/_rc_gemm.h) on nt threads, or None to
    use BLAS."""
    if w is None or not own_step_gemm():
        return None
    return K.pack_t(w, nt)


def _packed(w, nt):
    """W packed for rnncore's own step GEMM (dG @ W, the backward products) on nt threads, or None to
    use BLAS."""
    if w is None or not own_step_gemm():
        return None
    return K.pack_n(w, nt)


def _rows(T, B, bf, keep=True):
    """The leading shape of a layer's per-row workspace arrays: (B, T) batch_first, else (T, B); or,
    when they are not kept for backward, (2, B): the current step and the next (rnncore/_kernels.pyx,
    "Workspace rows")."""
    if not keep:
        return (min(T, 2), B)
    return (B, T) if bf else (T, B)


# When the input projection runs inside the time loop, step by step (rnncore/_kernels.pyx, "The
# input projection, step by step"): on rnncore's own step GEMM, for a batch of at least
# STEP_PROJECTION_ROWS sequences (8 rows a thread on 2 threads) when both weight matrices, which each
# thread reads every step, fit in STEP_PROJECTION_BYTES. Measured (float32, 2 threads, interleaved
# against one GEMM before the loop): S and M 3-16% faster (M forward 6-13%); RNN at L (2 MB) even;
# LSTM and GRU at L (6-8 MB of weights) 7-12% slower, and B1 (one row) 15-19% slower. The choice
# does not depend on the thread count, so results stay bit-identical across thread counts.
# STEP_PROJECTION = False always uses the GEMM before the loop (for comparisons).
STEP_PROJECTION = True
STEP_PROJECTION_ROWS = 16
STEP_PROJECTION_BYTES = 2 << 20


def _step_projection(p, x, B):
    w_ih, w_hh = p["w_ih"], p["w_hh"]
    return (STEP_PROJECTION and own_step_gemm() and x.shape[1] > 0 and B >= STEP_PROJECTION_ROWS
            and (w_ih.size + w_hh.size) * w_ih.itemsize <= STEP_PROJECTION_BYTES)


def _input_projection(p, x, T, B, bf, keep, GH, bias, nt, ws):
    """G for the time loop, and the keyword arguments that make the loop compute x_t @ W_ih^T + bias
    into it step by step (see `_step_projection`; then G has the rows of `_rows(T, B, bf, keep)`);
    otherwise G holds x @ W_ih^T + bias for all T*B rows, one GEMM, and there are none."""
    if _step_projection(p, x, B):
        G = ws("G", _rows(T, B, bf, keep) + (GH,), x.dtype)
        return G, {"x": x, "W_ih_t": K.pack_t(p["w_ih"], nt), "bias": bias}
    G = ws("G", _rows(T, B, bf) + (GH,), x.dtype)
    # bias + x W_ih^T: each thread sets its block of rows to the bias just before its GEMM
    K.matmul(G.reshape(-1, GH), x, p["w_ih"], trans_b=True, num_threads=nt, bias=bias)
    return G, {}


def _input_side_grads(p, g, dG, x, dx, nt, hh_cols):
    """dW_ih += dG^T @ x ; db_ih += sum(dG), and db_hh[:hh_cols] too (the columns where b_hh sees
    the same gradient as b_ih); dx += dG @ W_ih."""
    K.matmul(g["w_ih"], dG, x, trans_a=True, beta=1.0, num_threads=nt)
    if "b_ih" in g:
        s = np.zeros(dG.shape[1], dG.dtype)
        K.colsum_add(s, dG, nt)        # dG.sum(axis=0), on the team
        g["b_ih"] += s
        g["b_hh"][:hh_cols] += s[:hh_cols]
    K.matmul(dx, dG, p["w_ih"], beta=1.0, num_threads=nt)
