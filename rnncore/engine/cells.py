"""Cell adapters: what the Python side of each cell adds around the compiled scan.

The compiled core (rnncore/_kernels.pyx) holds every cell's step and the one scan that runs them.
An adapter here says which workspace arrays its cell keeps for backward, and runs the weight
gradients of all timesteps after the backward scan as one GEMM each. The layer/stack driver
(rnncore/layers/recurrent.py) is the same for every cell.

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
            inference: those arrays hold only the current and the next step (rnncore/_scan.pxi,
            "Workspace rows"), unless G holds every step's projection (the GEMM before the loop)
The path (own step GEMM or BLAS, projection inside or before the loop) comes from rnncore's
configuration (rnncore/engine/config.py). All large products go through rnncore._kernels.matmul.
"""
import numpy as np

from rnncore import _kernels as K
from rnncore.engine.config import get_config


class _Cell:
    """The shared part: build the compiled Cell, size the workspace, run the scan."""
    kind = None
    gates = 1
    has_cell_state = False

    def forward(self, p, x, h0, c0, lengths, reverse, out, col0, h_n, c_n, T, B, nt, ws, bf, keep):
        cfg = get_config()
        own = cfg["step_gemm"] == "own"
        in_loop = own and _step_projection(p, x, B, cfg)
        cell = K.Cell(self.kind, p, own_gemm=own, in_loop=in_loop, num_threads=nt)
        I, H, P, GH = cell.sizes
        rows, dt = _rows(T, B, bf, keep), x.dtype
        saved = {"G": ws("G", (rows if in_loop else _rows(T, B, bf)) + (GH,), dt),
                 "hprev": ws("hprev", rows + (P,), dt)}
        self._workspace(saved, ws, rows, B, H, P, dt, "w_hr" in p)
        K.forward(cell, x=x, out=out, col0=col0, h0=h0, c0=c0, h_n=h_n, c_n=c_n, lengths=lengths,
                  reverse=reverse, batch_first=bf, keep=keep, ws=saved, num_threads=nt)
        return {"x": x, "saved": saved, "lengths": lengths, "reverse": reverse, "bf": bf}

    def backward(self, p, g, cache, dout, col0, dh, dc, dx, nt, ws):
        cell = K.Cell(self.kind, p, own_gemm=get_config()["step_gemm"] == "own", backward=True,
                      num_threads=nt)
        saved = cache["saved"]
        G = saved["G"]
        tmp = {"dG": ws("dG", G.shape, G.dtype)}
        self._backward_workspace(tmp, ws, G, dh.shape[0], p)
        K.backward(cell, dout=dout, col0=col0, dh=dh, dc=dc, saved=saved, lengths=cache["lengths"],
                   reverse=cache["reverse"], batch_first=cache["bf"], ws=tmp, num_threads=nt)
        self._weight_grads(p, g, saved, tmp, cache["x"], dx, nt, cell.arrays.get("w_ih_n"))
        return dh, dc

    def _workspace(self, saved, ws, rows, B, H, P, dt, proj):
        pass

    def _backward_workspace(self, tmp, ws, G, B, p):
        pass


class RNNCell(_Cell):
    """h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), f = tanh or relu."""

    def __init__(self, relu=False):
        self.relu = relu
        self.kind = "rnn_relu" if relu else "rnn_tanh"

    def _weight_grads(self, p, g, saved, tmp, x, dx, nt, w_ih_n):
        H = p["w_hh"].shape[0]
        dG = tmp["dG"].reshape(-1, H)
        # dW_hh += dG^T @ hprev
        K.matmul(g["w_hh"], dG, saved["hprev"].reshape(-1, H), trans_a=True, beta=1.0,
                 num_threads=nt)
        _input_side_grads(p, g, dG, x, dx, nt, w_ih_n, hh_cols=H)


class LSTMCell(_Cell):
    """LSTM with PyTorch's gate order i, f, g, o; optional projection (proj_size) and peepholes."""
    kind = "lstm"
    gates = 4
    has_cell_state = True

    def _workspace(self, saved, ws, rows, B, H, P, dt, proj):
        saved["cprev"] = ws("cprev", rows + (H,), dt)
        saved["cnew"] = ws("cnew", rows + (H,), dt)
        if proj:
            saved["M"] = ws("M", rows + (H,), dt)
            saved["buf"] = ws("hbuf", (B, P), dt)

    def _backward_workspace(self, tmp, ws, G, B, p):
        H = G.shape[2] // 4
        tmp["buf"] = ws("tcbuf", (2, B, H), G.dtype)
        if "w_hr" in p:
            tmp["dH"] = ws("dH", G.shape[:2] + (p["w_hr"].shape[0],), G.dtype)

    def _weight_grads(self, p, g, saved, tmp, x, dx, nt, w_ih_n):
        H4, P = p["w_hh"].shape
        H = H4 // 4
        dG = tmp["dG"].reshape(-1, H4)
        if "w_ci" in p:
            # dw_c* += Σ over t, b of dL/da_gate ⊙ (the cell state that gate saw)
            K.lstm_peephole_grads(g["w_ci"], g["w_cf"], g["w_co"], dG,
                                  saved["cprev"].reshape(-1, H), saved["cnew"].reshape(-1, H))
        if "w_hr" in p:
            # dW_hr += dH^T @ M
            K.matmul(g["w_hr"], tmp["dH"].reshape(-1, P), saved["M"].reshape(-1, H), trans_a=True,
                     beta=1.0, num_threads=nt)
        # dW_hh += dG^T @ hprev
        K.matmul(g["w_hh"], dG, saved["hprev"].reshape(-1, P), trans_a=True, beta=1.0,
                 num_threads=nt)
        _input_side_grads(p, g, dG, x, dx, nt, w_ih_n, hh_cols=H4)


class GRUCell(_Cell):
    """GRU with PyTorch's gate order r, z, n.

    reset_after=True (PyTorch, cuDNN):  n = tanh(x W_in^T + b_in + r ⊙ (h W_hn^T + b_hn))
    reset_after=False (Cho et al. 2014, the seeds, Keras' reset_after=False):
                                        n = tanh(x W_in^T + b_in + (r ⊙ h) W_hn^T + b_hn)
    """
    gates = 3

    def __init__(self, reset_after=True):
        self.reset_after = reset_after
        self.kind = "gru" if reset_after else "gru_reset_before"

    def _workspace(self, saved, ws, rows, B, H, P, dt, proj):
        saved["HN"] = ws("HN", rows + (H,), dt)
        saved["buf"] = ws("gh", (B, 3 * H), dt)

    def _backward_workspace(self, tmp, ws, G, B, p):
        H = G.shape[2] // 3
        if self.reset_after:
            tmp["dGh"] = ws("dGhn", G.shape[:2] + (H,), G.dtype)
        else:
            tmp["buf"] = ws("drh", (B, H), G.dtype)

    def _weight_grads(self, p, g, saved, tmp, x, dx, nt, w_ih_n):
        H3, H = p["w_hh"].shape
        dGx, hprev = tmp["dG"].reshape(-1, H3), saved["hprev"].reshape(-1, H)
        # dW_h{r,z} += dG_{r,z}^T @ hprev
        K.matmul(g["w_hh"][:2 * H], dGx[:, :2 * H], hprev, trans_a=True, beta=1.0, num_threads=nt)
        if self.reset_after:
            # dW_hn += dGhn^T @ hprev ; db_hn += sum(dGhn), dGhn = dL/d(h W_hn^T + b_hn)
            dGhn = tmp["dGh"].reshape(-1, H)
            K.matmul(g["w_hh"][2 * H:], dGhn, hprev, trans_a=True, beta=1.0, num_threads=nt)
            if "b_hh" in g:
                K.colsum_add(g["b_hh"][2 * H:], dGhn, nt)
            _input_side_grads(p, g, dGx, x, dx, nt, w_ih_n, hh_cols=2 * H)   # db_h{r,z} too
        else:
            # dW_hn += dG_n^T @ (r ⊙ hprev)
            K.matmul(g["w_hh"][2 * H:], dGx[:, 2 * H:], saved["HN"].reshape(-1, H), trans_a=True,
                     beta=1.0, num_threads=nt)
            _input_side_grads(p, g, dGx, x, dx, nt, w_ih_n, hh_cols=H3)       # db_hh = db_ih


def _rows(T, B, bf, keep=True):
    """The leading shape of a layer's per-row workspace arrays: (B, T) batch_first, else (T, B); or,
    when they are not kept for backward, (2, B): the current step and the next."""
    if not keep:
        return (min(T, 2), B)
    return (B, T) if bf else (T, B)


def _step_projection(p, x, B, cfg):
    """Whether the input projection runs inside the time loop (see rnncore/engine/config.py)."""
    w_ih, w_hh = p["w_ih"], p["w_hh"]
    return (cfg["step_projection"] and x.shape[1] > 0 and B >= cfg["step_projection_min_rows"]
            and (w_ih.size + w_hh.size) * w_ih.itemsize <= cfg["step_projection_max_bytes"])


def _input_side_grads(p, g, dG, x, dx, nt, w_ih_n, hh_cols):
    """dW_ih += dG^T @ x ; db_ih += sum(dG), and db_hh[:hh_cols] too (the columns where b_hh sees
    the same gradient as b_ih); dx += dG @ W_ih, on rnncore's own GEMM (w_ih_n = W_ih packed) so
    that a sequence's input gradient does not depend on its batch, or on BLAS (w_ih_n None)."""
    K.matmul(g["w_ih"], dG, x, trans_a=True, beta=1.0, num_threads=nt)
    if "b_ih" in g:
        s = np.zeros(dG.shape[1], dG.dtype)
        K.colsum_add(s, dG, nt)        # dG.sum(axis=0), on the team
        g["b_ih"] += s
        g["b_hh"][:hh_cols] += s[:hh_cols]
    if w_ih_n is not None:
        K.packed_rows_add(dx, dG, w_ih_n, nt)
    else:
        K.matmul(dx, dG, p["w_ih"], beta=1.0, num_threads=nt)
