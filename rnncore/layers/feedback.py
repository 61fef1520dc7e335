"""rnncore.FeedbackRNN: the gated-feedback RNN of Chung, Gulcehre, Cho and Bengio (2015, "Gated Feedback
Recurrent Neural Networks", arXiv:1502.02367), seed 001's "what if layer 3 looped back to layer 2?".

Every layer j at step t reads the states of ALL layers at step t-1, each through a global reset gate
(one scalar per pair of layers and sequence), so information flows top-down as well as bottom-up and
the unrolled graph is no longer a grid. The equations, numbered, are in
rnncore/layers/reference_feedback.py (the numpy reference); the compiled core runs the whole stack in one
time loop (rnncore/_feedback.pxi).

    gf = rnncore.FeedbackRNN(input_size, hidden_size, num_layers=3, cell="gru", gated=True)
    out, h_n = gf(x, hx=None, lengths=None)                   # out: the top layer's states
    out, h_n, backprop = gf.forward_train(x, hx, lengths)
    dx, dhx = backprop(d_out, d_h_n=None)                     # adds into gf.grads

Conventions are the other layers' (rnncore/layers/recurrent.py): numpy in and out, time-major unless
batch_first, hx and h_n (num_layers, batch, hidden_size) (the LSTM's a pair (h, c)), lengths with
pack_padded_sequence semantics, ``params``/``grads`` by name, ``state_dict``/``load_state_dict``
(strict), ``zero_grad``, ``parameters()``, ``to(dtype)``, ``seed``, and a backprop refused after the
parameters changed. Not offered: dropout between layers, bidirectional, streaming step by step.
"""
import threading

import numpy as np

from rnncore import _kernels
from rnncore.engine import threads as _threads
from rnncore.engine.validation import (as_float_array, check_bool, check_choice, check_int,
                                      check_lengths, check_shape)
from rnncore.layers import reference_feedback as _ref
from rnncore.layers.recurrent import (StreamState, _check_budget, _check_layer_args, _owners,
                                      _RecurrentStack, _released, _ParamDict, _step_input)

__all__ = ["FeedbackRNN"]

_S = _RecurrentStack   # the parameter and torch.nn habits every layer shares


class FeedbackRNN:
    """Gated-feedback RNN (Chung et al. 2015): a stack of ``num_layers`` layers of ``hidden_size``
    units where every layer at step t reads every layer's state at t-1.

    cell: "tanh", "gru" (gate order r, z, n) or "lstm" (i, f, g, o). gated: global reset gates
    g^{i->j} = σ(w_g^{i->j} h^{j-1}_t + u_g^{i->j} h*_{t-1}) on the connections from t-1 (False: every
    g = 1, ungated top-down connections). Per layer k (in_k = input_size for k = 0, else hidden_size,
    G = 1, 3 or 4 gate blocks, L = num_layers, H = hidden_size):

        weight_ih_l{k}  (G*H, in_k)    W^{k-1->k}, every gate
        weight_hh_l{k}  (G*H, L*H)     [U^{0->k} ... U^{L-1->k}]: columns i*H:(i+1)*H read layer i
        bias_ih_l{k}, bias_hh_l{k}  (G*H,)     (bias=True; the GRU's b_hn inside r ⊙ (...) as PyTorch's)
        weight_gx_l{k}  (L, in_k)      rows w_g^{i->k}    (gated=True)
        weight_gh_l{k}  (L, L*H)       rows u_g^{i->k}    (gated=True)

    With num_layers=1 and gated=False it is torch.nn.RNN / GRU / LSTM with the same weights.
    Extra arguments: dtype (numpy.float32 or float64), seed (initialisation: PyTorch's
    U(-1/sqrt(H), 1/sqrt(H)) for every parameter). ``dropout`` and ``bidirectional`` are accepted
    at 0 / False only (SequenceModel passes them).
    """

    training = False

    def __init__(self, input_size, hidden_size, num_layers=1, cell="tanh", gated=True, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32, seed=None,
                 **config):
        self._config_keys(config, mode="FEEDBACK")
        self.cell = check_choice(cell, "cell", _ref.GATES)
        _check_layer_args(self, input_size, hidden_size, num_layers, bias, batch_first, dtype, seed)
        self.gated = check_bool(gated, "gated")
        if check_bool(bidirectional, "bidirectional"):
            raise ValueError("a FeedbackRNN has one direction: every layer reads the states of step t-1")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or dropout != 0:
            raise ValueError(f"a FeedbackRNN has no dropout between layers, got dropout={dropout!r}")
        self.init, self.forget_bias = "default", None
        self.mode, self.dropout, self.bidirectional, self.num_directions = "FEEDBACK", 0.0, False, 1
        self.output_size = self.hidden_size
        self._rng = np.random.default_rng(seed)
        config = self.config
        shapes = {}
        L, H, GH = self.num_layers, self.hidden_size, _ref.GATES[self.cell] * self.hidden_size
        for k in range(L):
            n_in = self.input_size if k == 0 else H
            full = {f"weight_ih_l{k}": (GH, n_in), f"weight_hh_l{k}": (GH, L * H),
                    f"bias_ih_l{k}": (GH,), f"bias_hh_l{k}": (GH,),
                    f"weight_gx_l{k}": (L, n_in), f"weight_gh_l{k}": (L, L * H)}
            shapes.update((name, full[name.rsplit("_l", 1)[0] + f"_l{k}"]) for name in _ref.param_names(config, k))
        _check_budget(sum(int(np.prod(s)) for s in shapes.values()), type(self).__name__)
        bound = 1.0 / np.sqrt(H)
        self.params = {name: self._rng.uniform(-bound, bound, size=s).astype(self.dtype)
                       for name, s in shapes.items()}
        self._guard_params({k: np.zeros_like(v) for k, v in self.params.items()})

    # the habits shared with RNN/LSTM/GRU, by the same code
    _guard_params = _S._guard_params
    _config_keys = _S._config_keys
    state_dict = _S.state_dict
    load_state_dict = _S.load_state_dict
    zero_grad = _S.zero_grad
    to, double, float = _S.to, _S.double, _S.float
    parameters, named_parameters = _S.parameters, _S.named_parameters
    train, eval = _S.train, _S.eval
    forward = _S.forward
    __getattr__, __setattr__ = _S.__getattr__, _S.__setattr__
    _check_input, _check_state = _S._check_input, _S._check_state

    @property
    def config(self):
        return {"mode": "FEEDBACK", "cell": self.cell, "input_size": self.input_size,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers, "gated": self.gated,
                "bias": self.bias, "batch_first": self.batch_first, "dtype": self.dtype.name}

    def __repr__(self):
        return (f"FeedbackRNN({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"cell={self.cell!r}, gated={self.gated}{', batch_first=True' * self.batch_first}, "
                f"dtype={self.dtype.name})")

    # ------------------------------------------------------------------------------ forward
    def __call__(self, x, hx=None, lengths=None):
        """Inference: ``output, h_n = layer(x, hx=None, lengths=None)``."""
        out, h_n, _ = self._forward(x, hx, lengths, train=False)
        return out, h_n

    def forward_train(self, x, hx=None, lengths=None):
        """Training forward: ``output, h_n, backprop``; ``dx, dhx = backprop(d_output, d_h_n=None)``
        returns the gradients for x and hx and adds the parameter gradients into ``self.grads``."""
        return self._forward(x, hx, lengths, train=True)

    def initial_state(self, batch_size=1, hx=None):
        """Start streaming, as for RNN/LSTM/GRU: ``state = layer.initial_state(batch_size)``, then
        ``y_t, state = layer.step(x_t, state)``. hx as in ``layer(x, hx)`` (default zeros). The
        weights are packed once for the stream: after changing them, start a new stream."""
        B = check_int(batch_size, "batch_size", 1)
        h0, c0 = self._check_hx(hx, B, False)
        net = _kernels.FeedbackNet(self.cell, self._layers(self.params),
                                   num_threads=_threads.threads_for(self._flops(1, B)))
        return StreamState(np.array(h0, copy=True), None if c0 is None else np.array(c0, copy=True),
                           net, None)

    def step(self, x_t, state):
        """One step of a stream: ``y_t, state = layer.step(x_t, state)``, x_t (batch, input_size) (or
        (input_size,) for a stream of one sequence), y_t (batch, hidden_size): bit for bit what
        ``layer(x)`` computes at that step from the same states. The state passed in is left as it
        was (a new one comes back)."""
        if not isinstance(state, StreamState) or not isinstance(state._cells, _kernels.FeedbackNet):
            raise TypeError(f"state must be the StreamState that this FeedbackRNN's initial_state() "
                            f"or step() returned, got {type(state).__name__}")
        B = state.h.shape[1]
        x = _step_input(x_t, B, self.input_size, self.dtype)
        out, hx, _ = self._forward(x[:, None] if self.batch_first else x[None], state.hx, None,
                                   train=False, net=state._cells)
        y = out[:, 0] if self.batch_first else out[0]
        if np.ndim(x_t) == 1:
            y = y[0]
        h, c = hx if self.cell == "lstm" else (hx, None)
        return y, StreamState(h, c, state._cells, None)

    def _check_hx(self, hx, B, unbatched):
        H = self.hidden_size
        if self.cell == "lstm":
            if hx is None:
                hx = (None, None)
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx for a FeedbackRNN(cell='lstm') must be a tuple (h0, c0), "
                                f"got {type(hx).__name__}")
            return (self._check_state(hx[0], "h0", B, H, unbatched),
                    self._check_state(hx[1], "c0", B, H, unbatched))
        if isinstance(hx, (tuple, list)):
            raise TypeError(f"hx for a FeedbackRNN(cell={self.cell!r}) is one array h0, got a "
                            f"{type(hx).__name__}")
        return self._check_state(hx, "h0", B, H, unbatched), None

    def _layers(self, which):
        """The kernels' per-layer dicts of `which` (params or grads) by short name."""
        short = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh",
                 "weight_gx": "w_gx", "weight_gh": "w_gh"}
        return [{short[n.rsplit("_l", 1)[0]]: which[n] for n in _ref.param_names(self.config, k)}
                for k in range(self.num_layers)]

    def _sizes(self):
        L, H = self.num_layers, self.hidden_size
        GH = _ref.GATES[self.cell] * H
        NG = L if self.gated else 0
        return L, H, NG, GH, NG + GH

    def _flops(self, T, B):
        L, H, NG, GH, W = self._sizes()
        return 2 * T * B * L * (W * H + (W - H) * L * H + H * L * H)

    def _forward(self, x, hx, lengths, train, net=None):
        x, unbatched = self._check_input(x)
        bf = self.batch_first and not unbatched
        if bf:   # the core runs time-major: one transposing copy here, and one of the output
            x = x.transpose(1, 0, 2)
        T, B, I = x.shape
        lens = (np.full(B, T, np.int32) if lengths is None else
                _no_lengths_unbatched(unbatched) or check_lengths(lengths, T, B))
        h0, c0 = self._check_hx(hx, B, unbatched)
        L, H, NG, GH, W = self._sizes()
        LH, lstm, dt = L * H, self.cell == "lstm", self.dtype
        x2 = np.ascontiguousarray(x).reshape(T * B, I)
        saved = {"Hs": np.empty(((T + 1) * B, LH), dt), "A": np.empty((T * B, L * W), dt)}
        saved["Hs"][:B] = _rows(h0)
        if lstm:
            saved["Cs"] = np.empty(((T + 1) * B, LH), dt)
            saved["Cs"][:B] = _rows(c0)
        if self.cell == "gru":
            saved["HN"] = np.empty((T * B, LH), dt)
        out = np.empty((T * B, H), dt)
        ws = {"PX": np.empty((B, W), dt), "PH": np.empty((B, W - H), dt), "HG": np.empty((B, LH), dt),
              "PC": np.empty((B, H), dt)}
        nt = _threads.threads_for(self._flops(T, B))
        with _threads.blas_single_thread():
            if net is None:
                net = _kernels.FeedbackNet(self.cell, self._layers(self.params), num_threads=nt)
            _kernels.feedback_forward(net, x=x2, out=out, ws=ws, lengths=lens, num_threads=nt, **saved)
        h_n = _states(saved["Hs"][T * B:], L)
        c_n = _states(saved["Cs"][T * B:], L) if lstm else None
        output = out.reshape(T, B, H)
        if bf:
            output = np.ascontiguousarray(output.transpose(1, 0, 2))
        if unbatched:
            output, h_n = output[:, 0], h_n[:, 0]
            c_n = c_n[:, 0] if lstm else None
        state = (h_n, c_n) if lstm else h_n
        if not train:
            return output, state, None
        return output, state, _Backprop(self, x2, saved, lens, T, B, unbatched, bf)


def _no_lengths_unbatched(unbatched):
    if unbatched:
        raise ValueError("lengths cannot be given for an unbatched (2-D) input")


def _rows(h):
    """(L, B, H) states -> (B, L*H) rows h* (layer after layer)."""
    return h.transpose(1, 0, 2).reshape(h.shape[1], -1)


def _states(rows, L):
    """(B, L*H) rows h* -> (L, B, H) states (a new array)."""
    B = rows.shape[0]
    return np.ascontiguousarray(rows.reshape(B, L, -1).transpose(1, 0, 2))


class _Backprop:
    """The backward pass of one forward_train call: ``dx, dhx = backprop(d_output, d_h_n=None)``."""

    def __init__(self, layer, x2, saved, lens, T, B, unbatched, bf):
        self._layer, self._x2, self._saved, self._lens = layer, x2, saved, lens
        self._T, self._B, self._unbatched, self._bf = T, B, unbatched, bf
        self._version = layer._version

    def __call__(self, d_output, d_h_n=None):
        """Runs once (as torch's backward without retain_graph)."""
        lay = self._layer
        if self._saved is None:
            raise RuntimeError("this backprop has already run; call forward_train again for another "
                               "backward pass")
        if lay._version != self._version:
            raise RuntimeError(f"{type(lay).__name__}: its parameters were changed (load_state_dict, "
                               f"params[...] = ..., or an optimizer step) after this forward_train: run "
                               f"forward_train again")
        T, B, ub, bf = self._T, self._B, self._unbatched, self._bf
        L, H, NG, GH, W = lay._sizes()
        LH, dt, lstm = L * H, lay.dtype, lay.cell == "lstm"
        I = lay.input_size
        shape = (T, H) if ub else ((B, T, H) if bf else (T, B, H))
        doc = f"{shape}, the output's shape"
        if d_output is None:
            dout = np.zeros((T * B, H), dt)
        else:
            dout = check_shape(as_float_array(d_output, "d_output", dt, doc), "d_output", shape, doc)
            if bf:
                dout = dout.transpose(1, 0, 2)
            dout = np.ascontiguousarray(dout).reshape(T * B, H)
        if lstm:
            d_h_n = (None, None) if d_h_n is None else d_h_n
            if not isinstance(d_h_n, (tuple, list)) or len(d_h_n) != 2:
                raise TypeError(f"d_h_n for an LSTM must be None or a tuple (d_h_n, d_c_n), "
                                f"got {type(d_h_n).__name__}")
            dH = np.ascontiguousarray(_rows(lay._check_state(d_h_n[0], "d_h_n", B, H, ub)))
            dC = np.ascontiguousarray(_rows(lay._check_state(d_h_n[1], "d_c_n", B, H, ub)))
        else:
            dH = np.ascontiguousarray(_rows(lay._check_state(d_h_n, "d_h_n", B, H, ub)))
            dC = None
        saved, x2 = self._saved, self._x2
        D, dQ, dx = np.empty((T * B, L * W), dt), np.empty((T * B, LH), dt), np.empty((T * B, I), dt)
        nt = _threads.threads_for(2 * lay._flops(T, B))
        guard = lay.__dict__.setdefault("_grads_lock", threading.Lock())
        if not guard.acquire(blocking=False):
            raise RuntimeError(f"{type(lay).__name__}: another thread is running a backward pass of this "
                               f"layer (both would add into layer.grads)")
        with _threads.blas_single_thread(), _released(guard):
            net = _kernels.FeedbackNet(lay.cell, lay._layers(lay.params), backward=True, num_threads=nt)
            _kernels.feedback_backward(net, dout=dout, dx=dx, dH=dH, dC=dC, saved=saved, D=D, dQ=dQ,
                                       ws={"dH2": np.empty((B, LH), dt), "HG": np.empty((B, LH), dt)},
                                       lengths=self._lens, num_threads=nt)
            self._weight_grads(lay, net.perm, D, dQ, x2, saved, T, B, nt)
        self._saved = self._x2 = None
        dx = dx.reshape(T, B, I)
        if bf:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        dh0 = _states(dH, L)
        dc0 = _states(dC, L) if lstm else None
        if ub:
            dx, dh0 = dx[:, 0], dh0[:, 0]
            dc0 = dc0[:, 0] if lstm else None
        return dx, ((dh0, dc0) if lstm else dh0)

    @staticmethod
    def _weight_grads(lay, perm, D, dQ, x2, saved, T, B, nt):
        """Every weight's gradient, one GEMM over all T*B rows each (rnncore's grid GEMM: the same
        bits on any number of threads), then into grads in PyTorch's gate order."""
        L, H, NG, GH, W = lay._sizes()
        LH, dt, TB = L * H, lay.dtype, T * B
        HS = saved["Hs"][:TB]                         # h*_{t-1} of every step
        gate, cand = perm[:GH - H], perm[GH - H:]     # PyTorch rows of the packed blocks
        for j, (p, g) in enumerate(zip(lay._layers(lay.params), lay._layers(lay.grads))):
            Dj = D[:, j * W:(j + 1) * W]
            dQj = dQ[:, j * H:(j + 1) * H]
            xin = x2 if j == 0 else saved["Hs"][B:, (j - 1) * H:j * H]
            # [dW_gx; dW_ih] += D^T h^{j-1}
            dWx = np.empty((W, xin.shape[1]), dt)
            _kernels.matmul(dWx, Dj, xin, trans_a=True, num_threads=nt)
            g["w_ih"][perm] += dWx[NG:]
            # [dW_gh; dW_hh gates] += D[:, :NG+GHp]^T h*_{t-1}
            if W - H > 0:
                dUh = np.empty((W - H, LH), dt)
                _kernels.matmul(dUh, Dj[:, :W - H], HS, trans_a=True, num_threads=nt)
                g["w_hh"][gate] += dUh[NG:]
            # dW_hh cand += dQ^T HG, HG = h*_{t-1} scaled by the gates block by block
            if NG:
                g["w_gx"] += dWx[:NG]
                g["w_gh"] += dUh[:NG]
                HG = (HS.reshape(TB, L, H) * saved["A"][:, j * W:j * W + NG, None]).reshape(TB, LH)
            else:
                HG = HS
            dUc = np.empty((H, LH), dt)
            _kernels.matmul(dUc, dQj, HG, trans_a=True, num_threads=nt)
            g["w_hh"][cand] += dUc
            if "b_ih" in g:
                db, dbc = np.zeros(W, dt), np.zeros(H, dt)
                _kernels.colsum_add(db, Dj, nt)
                _kernels.colsum_add(dbc, dQj, nt)
                g["b_ih"][perm] += db[NG:]
                g["b_hh"][gate] += db[NG:W - H]
                g["b_hh"][cand] += dbc
