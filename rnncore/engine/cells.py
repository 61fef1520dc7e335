"""Cell adapters: what the Python side of each cell adds around the compiled scan.

The compiled core (rnncore/_kernels.pyx) holds every cell's step and the one scan that runs them.
An adapter here says which workspace arrays its cell keeps for backward, and sums the weight
gradients of all timesteps after the backward scan in the scan's order (_StepSums, rnncore/_wgrad.pxi).
Checkpointed BPTT (_forward_segments, _backward_segments) runs the same scan over segments of steps. The layer/stack driver
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
configuration (rnncore/engine/config.py). The large products run on rnncore's own GEMM (the weight
gradients, the input gradient), or on BLAS through rnncore._kernels.matmul on the "blas" path.
"""
import numpy as np

from rnncore import _kernels as K
from rnncore.engine.config import get_config


class _Cell:
    """The shared part: build the compiled Cell, size the workspace, run the scan."""
    kind = None
    gates = 1
    has_cell_state = False

    def forward(self, p, x, h0, c0, lengths, reverse, out, col0, h_n, c_n, T, B, nt, ws, bf, keep,
                checkpoint=None, cell=None):
        if keep and checkpoint is not None:
            return self._forward_segments(p, x, h0, c0, lengths, reverse, out, col0, h_n, c_n, T, B,
                                          nt, ws, bf, checkpoint)
        cell = cell or self._cell(p, x, B, nt)
        in_loop = cell.in_loop
        I, H, P, GH = cell.sizes
        rows, dt = _rows(T, B, bf, keep), x.dtype
        saved = {"G": ws("G", (rows if in_loop else _rows(T, B, bf)) + (GH,), dt),
                 "hprev": ws("hprev", rows + (P,), dt)}
        self._workspace(saved, ws, rows, B, H, P, dt, "w_hr" in p)
        K.forward(cell, x=x, out=out, col0=col0, h0=h0, c0=c0, h_n=h_n, c_n=c_n, lengths=lengths,
                  reverse=reverse, batch_first=bf, keep=keep, ws=saved, num_threads=nt)
        return {"x": x, "saved": saved, "lengths": lengths, "reverse": reverse, "bf": bf, "T": T}

    def _cell(self, p, x, B, nt, backward=False):
        """The compiled Cell: the weights packed for the configured path."""
        cfg = get_config()
        own = cfg["step_gemm"] == "own"
        if backward:
            return K.Cell(self.kind, p, own_gemm=own, backward=True, num_threads=nt)
        return K.Cell(self.kind, p, own_gemm=own, in_loop=own and _step_projection(p, x, B, cfg),
                      num_threads=nt)

    def backward(self, p, g, cache, dout, col0, dh, dc, dx, nt, ws, cell=None):
        if "segments" in cache:
            return self._backward_segments(p, g, cache, dout, col0, dh, dc, dx, nt, ws)
        cell = cell or self._cell(p, None, dh.shape[0], nt, backward=True)
        saved = cache["saved"]
        G = saved["G"]
        tmp = {"dG": ws("dG", G.shape, G.dtype)}
        self._backward_workspace(tmp, ws, G, dh.shape[0], p)
        K.backward(cell, dout=dout, col0=col0, dh=dh, dc=dc, saved=saved, lengths=cache["lengths"],
                   reverse=cache["reverse"], batch_first=cache["bf"], ws=tmp, num_threads=nt)
        sums = _StepSums(cache["T"], dh.shape[0], cache["bf"], cache["reverse"], nt)
        self._weight_grads(p, g, saved, tmp, cache["x"], dx, sums, cell.arrays.get("w_ih_n"))
        return dh, dc

    # Checkpointed BPTT (Chen et al. 2016; Gruslys et al. 2016): forward keeps the state entering
    # every segment of k steps only, running the scan segment by segment as inference does; backward
    # takes the segments last to first, runs each one's forward again from its kept state (keeping
    # its steps, in a workspace of k steps) and then its backward. Every step computes what it
    # computes in one whole-sequence call (the scan's rows do not depend on where a call starts or
    # ends) and the weight gradients are summed in backward's order whatever the segments
    # (_StepSums), so the gradients are those of full BPTT, bit for bit.
    def _forward_segments(self, p, x, h0, c0, lengths, reverse, out, col0, h_n, c_n, T, B, nt, ws,
                          bf, k):
        segs = _segments(T, k, reverse)
        hs = np.empty((len(segs) + 1,) + h0.shape, x.dtype)
        cs = np.empty((len(segs) + 1,) + c0.shape, x.dtype) if c0 is not None else None
        hs[0] = h0
        if cs is not None:
            cs[0] = c0
        P = h0.shape[1]
        cell = self._cell(p, x, B, nt)          # packed once for every segment
        for i, (t0, t1) in enumerate(segs):
            seg = _Segment(t0, t1, T, B, bf)
            o, oc = seg.columns(out, col0, P, ws)
            self.forward(p, seg.rows(x), hs[i], None if cs is None else cs[i], seg.lengths(lengths),
                         reverse, o, oc, hs[i + 1], None if cs is None else cs[i + 1], t1 - t0, B, nt,
                         ws, False, keep=False, cell=cell)
            seg.put_columns(out, o, col0, P)
        h_n[...] = hs[-1]
        if cs is not None:
            c_n[...] = cs[-1]
        return {"segments": segs, "hs": hs, "cs": cs, "x": x, "lengths": lengths,
                "reverse": reverse, "bf": bf, "T": T}

    def _backward_segments(self, p, g, cache, dout, col0, dh, dc, dx, nt, ws):
        T, B, bf, x, hs, cs = cache["T"], dh.shape[0], cache["bf"], cache["x"], cache["hs"], cache["cs"]
        P, dt = dh.shape[1], dh.dtype
        h_n = ws("ckpt_h", hs.shape[1:], dt)
        c_n = ws("ckpt_c", cs.shape[1:], dt) if cs is not None else None
        fcell, bcell = self._cell(p, x, B, nt), self._cell(p, x, B, nt, backward=True)
        for i in reversed(range(len(cache["segments"]))):
            t0, t1 = cache["segments"][i]
            seg = _Segment(t0, t1, T, B, bf)
            out = ws("ckpt_out", ((t1 - t0) * B, P), dt)
            seg_cache = self.forward(p, seg.rows(x), hs[i], None if cs is None else cs[i],
                                     seg.lengths(cache["lengths"]), cache["reverse"], out, 0, h_n, c_n,
                                     t1 - t0, B, nt, ws, False, keep=True, cell=fcell)
            d, dcol = seg.columns(dout, col0, P, None)
            dx_s = seg.rows(dx)
            dh, dc = self.backward(p, g, seg_cache, d, dcol, dh, dc, dx_s, nt, ws, cell=bcell)
            seg.put_rows(dx, dx_s)
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

    def _weight_grads(self, p, g, saved, tmp, x, dx, sums, w_ih_n):
        dG = tmp["dG"]
        sums.add(g["w_hh"], dG, saved["hprev"])             # dW_hh += dG^T @ hprev
        _input_side_grads(p, g, dG, x, dx, sums, w_ih_n, hh_cols=dG.shape[-1])


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

    def _weight_grads(self, p, g, saved, tmp, x, dx, sums, w_ih_n):
        dG = tmp["dG"]
        H = dG.shape[-1] // 4
        if "w_ci" in p:
            # dw_c* += Σ over t, b of dL/da_gate ⊙ (the cell state that gate saw)
            sums.dot(g["w_ci"], dG[..., :H], saved["cprev"])
            sums.dot(g["w_cf"], dG[..., H:2 * H], saved["cprev"])
            sums.dot(g["w_co"], dG[..., 3 * H:], saved["cnew"])
        if "w_hr" in p:
            sums.add(g["w_hr"], tmp["dH"], saved["M"])      # dW_hr += dH^T @ M
        sums.add(g["w_hh"], dG, saved["hprev"])             # dW_hh += dG^T @ hprev
        _input_side_grads(p, g, dG, x, dx, sums, w_ih_n, hh_cols=4 * H)


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

    def _weight_grads(self, p, g, saved, tmp, x, dx, sums, w_ih_n):
        dG, hprev = tmp["dG"], saved["hprev"]
        H = dG.shape[-1] // 3
        sums.add(g["w_hh"][:2 * H], dG[..., :2 * H], hprev)  # dW_h{r,z} += dG_{r,z}^T @ hprev
        if self.reset_after:
            # dW_hn += dGhn^T @ hprev ; db_hn += sum(dGhn), dGhn = dL/d(h W_hn^T + b_hn)
            dGhn = tmp["dGh"]
            sums.add(g["w_hh"][2 * H:], dGhn, hprev)
            if "b_hh" in g:
                sums.colsum(g["b_hh"][2 * H:], dGhn)
            _input_side_grads(p, g, dG, x, dx, sums, w_ih_n, hh_cols=2 * H)   # db_h{r,z} too
        else:
            # dW_hn += dG_n^T @ (r ⊙ hprev)
            sums.add(g["w_hh"][2 * H:], dG[..., 2 * H:], saved["HN"])
            _input_side_grads(p, g, dG, x, dx, sums, w_ih_n, hh_cols=3 * H)   # db_hh = db_ih


def _segments(T, k, reverse):
    """[t0, t1) of every segment of k steps, in the order the scan runs them (the last first for a
    reverse direction)."""
    segs = [(t0, min(t0 + k, T)) for t0 in range(0, T, k)]
    return segs[::-1] if reverse else segs


class _Segment:
    """Steps [t0, t1) of a layer's (T*B, .) rows as time-major rows of their own: a view when the
    layer is time-major, a copy (written back by put_*) when it is batch_first."""

    def __init__(self, t0, t1, T, B, bf):
        self.t0, self.t1, self.T, self.B, self.bf = t0, t1, T, B, bf

    def _steps(self, a):
        # the segment's part of a, as (t1 - t0, B, width)
        return a.reshape(self.B, self.T, a.shape[1])[:, self.t0:self.t1].transpose(1, 0, 2)

    def rows(self, a):
        if not self.bf:
            return a[self.t0 * self.B:self.t1 * self.B]
        return np.ascontiguousarray(self._steps(a)).reshape(-1, a.shape[1])

    def put_rows(self, a, rows):
        if self.bf:
            self._steps(a)[...] = rows.reshape(self.t1 - self.t0, self.B, a.shape[1])

    def columns(self, a, col0, P, ws):
        """(rows, col0) for a direction's columns [col0, col0 + P) of a; batch_first: a copy (ws
        None: of a's values) or new rows (from ws) with those columns at 0."""
        if not self.bf:
            return a[self.t0 * self.B:self.t1 * self.B], col0
        if ws is not None:
            return ws("ckpt_cols", ((self.t1 - self.t0) * self.B, P), a.dtype), 0
        return np.ascontiguousarray(self._steps(a)[:, :, col0:col0 + P]).reshape(-1, P), 0

    def put_columns(self, a, rows, col0, P):
        if self.bf:
            self._steps(a)[:, :, col0:col0 + P] = rows.reshape(self.t1 - self.t0, self.B, P)

    def lengths(self, lengths):
        """Each sequence's steps inside the segment (0 once it has ended): step t is active iff
        t < length, in the segment's own numbering as in the whole's."""
        return np.clip(lengths - self.t0, 0, self.t1 - self.t0).astype(np.int32)


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


def _input_side_grads(p, g, dG, x, dx, sums, w_ih_n, hh_cols):
    """dW_ih += dG^T @ x ; db_ih += sum(dG), and db_hh[:hh_cols] too (the columns where b_hh sees
    the same gradient as b_ih); dx += dG @ W_ih, on rnncore's own GEMM (w_ih_n = W_ih packed) so
    that a sequence's input gradient does not depend on its batch, or on BLAS (w_ih_n None)."""
    sums.add(g["w_ih"], dG, x)
    if "b_ih" in g:
        sums.colsum(g["b_ih"], dG, also=g["b_hh"][:hh_cols])
    dG = dG.reshape(-1, dG.shape[-1])
    if w_ih_n is not None:
        K.packed_rows_add(dx, dG, w_ih_n, sums.nt)
    else:
        K.matmul(dx, dG, p["w_ih"], beta=1.0, num_threads=sums.nt)


class _StepSums:
    """The sums over every step of the weight gradients, in the backward scan's order (rnncore/
    _wgrad.pxi): so they are the same whether the steps come in one call or in segments
    (checkpointed BPTT), time-major or batch_first, on any number of threads. Arrays are given in
    the layer's row layout ((T, B, .) or (B, T, .) batch_first, or (T*B, .) rows)."""

    def __init__(self, T, B, bf, reverse, nt):
        self.T, self.B, self.bf, self.nt = T, B, bf, nt
        self.descending = not reverse        # backward visits a forward direction's steps last first

    def steps(self, a):
        """a as (T, B, width): a view, whatever the row layout."""
        if self.bf:
            return a.reshape(self.B, self.T, a.shape[-1]).transpose(1, 0, 2)
        return a.reshape(self.T, self.B, a.shape[-1])

    def add(self, C, A, B):
        """C += Σ over rows of A[row]^T B[row]"""
        K.step_sums_add(C, self.steps(A), self.steps(B), self.descending, self.nt)

    def colsum(self, c, A, also=None):
        """c += Σ over rows of A[row]; also (optional, m values) += the same sums of A's first m
        columns, in the same pass"""
        K.step_colsum_add(c, self.steps(A), self.descending, self.nt, also)

    def dot(self, c, A, B):
        """c += Σ over rows of A[row] ⊙ B[row]"""
        K.step_dot_add(c, self.steps(A), self.steps(B), self.descending, self.nt)
