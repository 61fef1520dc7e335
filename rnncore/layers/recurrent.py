"""rnncore's recurrent layers: RNN, LSTM, GRU with torch.nn's arguments, names, shapes and defaults.

One stack driver serves every cell (rnncore/engine/cells.py): depth, bidirectional (outputs concatenated),
dropout between layers (training only), variable lengths (pack_padded_sequence semantics), batch_first.

    out, h_n = layer(x, hx=None, lengths=None)                      # inference
    out, h_n, backprop = layer.forward_train(x, hx=None, lengths=None)
    dx, dhx = backprop(d_out, d_h_n=None)                           # adds into layer.grads

The forward pass returns a `backprop` closure over what it kept (as thinc does): a layer holds no
hidden "last input", so two forward_train calls in flight never interfere.

torch.nn habits that fit a numpy layer: ``layer.to(np.float64)`` / ``.double()`` / ``.float()`` (in
place, returning the layer; a torch dtype works too), ``parameters()`` / ``named_parameters()`` (the
live arrays), ``layer.weight_ih_l0`` (reads ``params``), ``forward`` (``layer(x)``), ``train()`` /
``eval()`` (layers start in eval mode: ``layer(x)`` applies dropout only after ``train()``, while
``forward_train`` always does), ``type(layer)(**layer.config)`` (the same architecture, new weights).
Left out on purpose: autograd (``requires_grad``, ``.grad``, ``backward()``: gradients come from
``backprop`` into ``grads``), devices (CPU only: ``to("cpu")`` is accepted, nothing else), hooks and
submodules, and assigning a parameter (``layer.weight_ih_l0 = w`` is refused: write into it,
``layer.weight_ih_l0[...] = w``, or use ``load_state_dict``, which check shapes).
"""
import contextlib
import contextvars
import sys
import threading
import warnings
import weakref

import numpy as np

from rnncore.engine import cells as _cells
from rnncore import _kernels
from rnncore.engine import threads as _threads
from rnncore.engine.config import get_config
from rnncore.engine.validation import (as_float_array, check_bool, check_checkpoint,
                                       checkpoint_steps, check_float_dtype, check_int,
                                       check_lengths, check_shape)

__all__ = ["RNN", "LSTM", "GRU", "StreamState", "mark_modified"]

_INITS = ("default", "orthogonal", "identity")


class _RecurrentStack:
    """Stack driver shared by RNN, LSTM and GRU. Not instantiated directly."""

    def __init__(self, mode, cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                 bidirectional, proj_size, dtype, seed, init, peephole=False, reset_after=True,
                 forget_bias=None):
        self.mode = mode
        self._cell = cell
        _check_layer_args(self, input_size, hidden_size, num_layers, bias, batch_first, dtype, seed)
        self.bidirectional = check_bool(bidirectional, "bidirectional")
        self.proj_size = check_int(proj_size, "proj_size", 0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size={self.hidden_size}, "
                             f"got {self.proj_size}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)):
            raise TypeError(f"dropout must be a number in [0, 1), got {type(dropout).__name__}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"dropout={self.dropout:g} applies between recurrent layers, and num_layers=1 has "
                          f"none: it has no effect (as torch.nn warns)", UserWarning, stacklevel=3)
        self.peephole = peephole
        self.reset_after = reset_after
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        self.init = init
        self.forget_bias = forget_bias
        self.num_directions = 2 if self.bidirectional else 1
        self._P = self.proj_size or self.hidden_size
        self.output_size = self.num_directions * self._P
        self._rng = np.random.default_rng(seed)
        _check_budget(self._num_params(), type(self).__name__)
        self.params = {}
        self._layout = []  # per (layer, direction): {short name: full name}
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else self.output_size
            for direction in range(self.num_directions):
                self._layout.append(self._add_params(layer, direction, in_size))
        self._initialise()
        self._guard_params({k: np.zeros_like(v) for k, v in self.params.items()})

    # ----------------------------------------------------------------------------- parameters
    def _num_params(self):
        """How many values the parameters take (computed before allocating them)."""
        GH, H, P, D = self._cell.gates * self.hidden_size, self.hidden_size, self._P, self.num_directions
        per = (GH * P + (2 * GH if self.bias else 0) + (P * H if self.proj_size else 0)
               + (3 * H if self.peephole else 0))
        inputs = self.input_size + (self.num_layers - 1) * self.output_size
        return D * (GH * inputs + self.num_layers * per)

    def _guard_params(self, grads):
        """`params` and `grads` become _ParamDicts (the kernels read them: a replacement of another
        shape, dtype or layout is refused), registered for mark_modified; the version starts at 0."""
        self.params, self.grads = _ParamDict(self.params, self), _ParamDict(grads)
        self._version = 0
        for a in self.params.values():
            _owners[id(a)] = self

    def _add_params(self, layer, direction, in_size):
        GH, H, P = self._cell.gates * self.hidden_size, self.hidden_size, self._P
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        shapes = [("w_ih", "weight_ih", (GH, in_size)), ("w_hh", "weight_hh", (GH, P))]
        if self.bias:
            shapes += [("b_ih", "bias_ih", (GH,)), ("b_hh", "bias_hh", (GH,))]
        if self.proj_size:
            shapes.append(("w_hr", "weight_hr", (P, H)))
        if self.peephole:
            shapes += [("w_ci", "weight_ci", (H,)), ("w_cf", "weight_cf", (H,)), ("w_co", "weight_co", (H,))]
        names = {}
        for short, stem, shape in shapes:
            names[short] = stem + sfx
            self.params[stem + sfx] = np.zeros(shape, self.dtype)
        return names

    def _initialise(self):
        """PyTorch's default, U(-1/sqrt(H), 1/sqrt(H)) for every parameter, then the chosen scheme."""
        k = 1.0 / np.sqrt(self.hidden_size)
        for name, arr in self.params.items():
            arr[...] = self._rng.uniform(-k, k, size=arr.shape)
        H, G = self.hidden_size, self._cell.gates
        for names in self._layout:
            w_hh = self.params[names["w_hh"]]
            if self.init == "orthogonal":
                # each gate's (H, P) block of W_hh orthogonal (Saxe et al. 2014)
                for gate in range(G):
                    w_hh[gate * H:(gate + 1) * H] = _orthogonal(self._rng, H, self._P)
            elif self.init == "identity":
                # IRNN (Le, Jaitly, Hinton 2015): W_hh = I, biases 0, for ReLU RNNs
                w_hh[...] = np.eye(H, dtype=self.dtype)
                for short in ("b_ih", "b_hh"):
                    if short in names:
                        self.params[names[short]][...] = 0
            if self.forget_bias is not None and "b_ih" in names:
                # forget-gate bias (Jozefowicz et al. 2015): b_ih_f + b_hh_f = forget_bias
                self.params[names["b_ih"]][H:2 * H] = self.forget_bias
                self.params[names["b_hh"]][H:2 * H] = 0

    def state_dict(self):
        """Parameters by PyTorch's names, as copies."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict):
        """Load parameters by PyTorch's names (numpy arrays, array-likes or torch tensors).

        Strict: a missing, unexpected or mis-shaped entry raises ValueError and nothing is changed.
        The values are copied into the live arrays; a backprop of an earlier forward_train then
        raises (as torch's backward after an in-place change of a saved tensor)."""
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"state_dict must be a mapping of parameter names to arrays, "
                            f"got {type(state_dict).__name__}")
        missing = [k for k in self.params if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in self.params]
        if missing or unexpected:
            raise ValueError(f"state_dict does not match this {type(self).__name__}: "
                             f"missing keys {missing}, unexpected keys {unexpected}")
        new = {}
        for k, cur in self.params.items():
            v = as_float_array(state_dict[k], f"state_dict[{k!r}]", self.dtype, str(cur.shape))
            if v.shape != cur.shape:
                raise ValueError(f"state_dict[{k!r}] must have shape {cur.shape}, got {v.shape}")
            new[k] = v
        for k, v in new.items():
            self.params[k][...] = v
        self._version += 1

    def zero_grad(self):
        """Set every accumulated gradient in `grads` to zero."""
        for g in self.grads.values():
            g[...] = 0

    @property
    def config(self):
        return {"mode": self.mode, "input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "bias": self.bias, "batch_first": self.batch_first,
                "bidirectional": self.bidirectional, "proj_size": self.proj_size,
                "peephole": self.peephole, "reset_after": self.reset_after,
                "nonlinearity": "relu" if self.mode == "RNN_RELU" else "tanh",
                "dropout": self.dropout, "dtype": self.dtype.name}

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in (
            ("num_layers", self.num_layers), ("batch_first", self.batch_first),
            ("dropout", self.dropout), ("bidirectional", self.bidirectional),
            ("proj_size", self.proj_size)) if v)
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra}, "
                f"dtype={self.dtype.name})")

    # ------------------------------------------------------------------------------ torch.nn habits
    training = False  # eval mode until train(): layer(x) stays the deterministic inference pass

    @classmethod
    def from_config(cls, config):
        """The layer a ``config`` describes (its ``mode`` picks RNN, LSTM or GRU), with new weights."""
        kinds = {"RNN_TANH": RNN, "RNN_RELU": RNN, "LSTM": LSTM, "GRU": GRU}
        if config.get("mode") not in kinds:
            raise ValueError(f"config['mode'] must be one of {sorted(kinds)}, got {config.get('mode')!r}")
        return kinds[config["mode"]](**config)

    def _config_keys(self, given, **fixed):
        """Accept the keys of ``config`` that this class fixes (mode, ...) when they agree with it,
        so that ``type(layer)(**layer.config)`` rebuilds the layer."""
        for key, value in given.items():
            if key not in fixed:
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {key!r}")
            if value != fixed[key]:
                raise ValueError(f"{key}={value!r} does not fit {type(self).__name__} (expected "
                                 f"{fixed[key]!r}); {type(self).__name__}.from_config picks the class")

    def to(self, dtype):
        """Convert parameters and gradients to ``dtype`` (numpy.float32/float64, their names, or a
        torch dtype), in place; returns the layer, as torch's ``Module.to``. Optimizers built on the
        old ``params`` must be built again, and pending ``backprop`` closures are spent."""
        if str(dtype) == "cpu":   # torch's device argument (a string or torch.device): rnncore is CPU-only
            return self
        dtype = check_float_dtype(_numpy_dtype(dtype))
        if dtype == self.dtype:
            return self
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # the dropout warning was given once already
            new = type(self)(**dict(self.config, dtype=dtype))
        new.load_state_dict(self.params)
        for name, g in self.grads.items():
            new.grads[name][...] = g
        new.seed, new.init, new.forget_bias = self.seed, self.init, self.forget_bias
        new._rng, new.training = self._rng, self.training
        version = self.__dict__.get("_version", 0)
        self.__dict__.clear()
        self.__dict__.update(new.__dict__)
        # the arrays are this layer's now (mark_modified finds it), and a version past the old one's
        # refuses a backprop taken before the conversion
        self._guard_params(self.grads)
        self._version = version + 1
        return self

    def double(self):
        """``to(numpy.float64)``."""
        return self.to(np.float64)

    def float(self):
        """``to(numpy.float32)``."""
        return self.to(np.float32)

    def parameters(self):
        """The parameters' live arrays, in torch's order (update them in place)."""
        return iter(list(self.params.values()))

    def named_parameters(self):
        """(name, live array) of each parameter, by torch's names and in torch's order."""
        return iter(list(self.params.items()))

    def train(self, mode=True):
        """Train mode: ``layer(x)`` applies dropout between layers (as torch in training mode; still
        no gradients: use ``forward_train``). Returns the layer."""
        self.training = check_bool(mode, "mode")
        return self

    def eval(self):
        """Eval mode (the default): ``layer(x)`` applies no dropout. Returns the layer."""
        return self.train(False)

    def forward(self, x, hx=None, lengths=None):
        """``layer(x, hx, lengths)``, by torch's name."""
        return self(x, hx, lengths)

    def __getattr__(self, name):
        # torch's attribute access to a parameter, layer.weight_ih_l0: the live array in params
        if not name.startswith("_") and name != "params":
            try:
                params = object.__getattribute__(self, "params")
            except AttributeError:
                params = {}
            if name in params:
                return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        try:
            is_param = name in object.__getattribute__(self, "params")
        except (AttributeError, TypeError):
            is_param = False
        if is_param:
            raise AttributeError(f"{name} is a parameter: write into it (layer.{name}[...] = value) or use "
                                 f"load_state_dict, which check its shape and dtype")
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------------------ forward
    def __call__(self, x, hx=None, lengths=None):
        """Inference: ``output, h_n = layer(x, hx=None, lengths=None)`` (no dropout, unless the layer
        is in train mode: ``layer.train()``)."""
        if self.training and self.dropout > 0 and self.num_layers > 1:
            out, h_n, _ = self.forward_train(x, hx, lengths)
            return out, h_n
        out, h_n, _ = self._forward(x, hx, lengths, train=False)
        return out, h_n

    def forward_train(self, x, hx=None, lengths=None, checkpoint=None):
        """Training forward: ``output, h_n, backprop``; ``dx, dhx = backprop(d_output, d_h_n=None)``
        returns the gradients for x and hx and adds the parameter gradients into ``self.grads``.

        checkpoint: BPTT within a memory budget. None keeps every step for backward (unless
        ``rnncore.config_context(bptt_checkpoint=...)`` says otherwise); an int k keeps each layer's
        state only every k steps, "sqrt" every ceil(sqrt(T)), and backward recomputes each segment
        (Chen et al. 2016, Gruslys et al. 2016). The gradients are bit-identical to full BPTT; memory
        for backward goes from ~T steps to ~T/k + k, for about one more forward pass of time."""
        if checkpoint is None:
            checkpoint = get_config()["bptt_checkpoint"]
        return self._forward(x, hx, lengths, train=True, checkpoint=check_checkpoint(checkpoint))

    def _check_input(self, x):
        order = "(batch, time, input_size)" if self.batch_first else "(time, batch, input_size)"
        x = as_float_array(x, "x", self.dtype, order)
        if x.ndim == 2:
            # unbatched input (time, input_size), as torch.nn accepts
            x, unbatched = x[:, None, :], True
        elif x.ndim == 3:
            unbatched = False
        else:
            raise ValueError(f"x must be a 3-D array {order} (or 2-D (time, input_size) for one "
                             f"sequence), got shape {x.shape}")
        T, B, I = x.shape
        if self.batch_first and not unbatched:
            B, T = T, B
        if I != self.input_size:
            raise ValueError(f"x must have input_size={self.input_size} features in its last axis, "
                             f"got {I} (shape {x.shape if not unbatched else x[:, 0].shape})")
        if T == 0 or B == 0:
            raise ValueError(f"x must hold at least one sequence of at least one step, got shape "
                             f"{x.shape if not unbatched else x[:, 0].shape}")
        return x, unbatched

    def _check_state(self, h, name, B, size, unbatched):
        LD = self.num_layers * self.num_directions
        if h is None:
            return np.zeros((LD, B, size), self.dtype)
        doc = f"(num_layers * num_directions, {'' if unbatched else 'batch, '}{'cell' if name.startswith('c') else 'hidden'} size)"
        h = as_float_array(h, name, self.dtype, doc)
        if unbatched:
            check_shape(h, name, (LD, size), doc)
            return np.ascontiguousarray(h[:, None, :])
        return check_shape(h, name, (LD, B, size), doc)

    def _check_hx(self, hx, B, unbatched):
        if self._cell.has_cell_state:
            if hx is None:
                hx = (None, None)
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx for an LSTM must be a tuple (h0, c0), got {type(hx).__name__}")
            return (self._check_state(hx[0], "h0", B, self._P, unbatched),
                    self._check_state(hx[1], "c0", B, self.hidden_size, unbatched))
        if isinstance(hx, (tuple, list)) and len(hx) == 2 and np.ndim(hx[0]) == 3 and np.ndim(hx[1]) == 3:
            raise TypeError(f"hx for an {type(self).__name__} is one array h0, got a tuple (h0, c0)")
        return self._check_state(hx, "h0", B, self._P, unbatched), None

    def _forward(self, x, hx, lengths, train, checkpoint=None):
        x, unbatched = self._check_input(x)
        # batch_first input stays as it is: the kernels read and write rows in either order (for one
        # unbatched sequence both orders are the same)
        bf = self.batch_first and not unbatched
        B, T = x.shape[:2] if bf else x.shape[1::-1]
        if lengths is None:
            lens = np.full(B, T, np.int32)
        elif unbatched:
            raise ValueError("lengths cannot be given for an unbatched (2-D) input")
        else:
            lens = check_lengths(lengths, T, B)
        h0, c0 = self._check_hx(hx, B, unbatched)
        k = checkpoint_steps(checkpoint, T) if train else None
        D, P, H, LD = self.num_directions, self._P, self.hidden_size, self.num_layers * self.num_directions
        has_c = self._cell.has_cell_state
        h_n = np.empty((LD, B, P), self.dtype)
        c_n = np.empty((LD, B, H), self.dtype) if has_c else None
        nt = _threads.threads_for(self._flops(T, B))
        caches, masks = [], []
        layer_in = x.reshape(T * B, self.input_size)
        # workspaces: inference reuses one per thread; training takes one from the layer's pool and
        # its backprop gives it back (what forward keeps for backward lives there, not in new arrays)
        scratch = self._train_workspace() if train else self._scratch()
        with _threads.blas_single_thread_if_used():
            for layer in range(self.num_layers):
                if layer > 0 and train and self.dropout > 0:
                    kept = self._rng.random((T, B, self.output_size)) >= self.dropout
                    mask = kept.astype(self.dtype) / self.dtype.type(1.0 - self.dropout)
                    masks.append(mask)  # (T, B, F) whatever the layout, as rnncore.layers.reference takes them
                    layer_in = layer_in * _rows_of(mask, bf)
                last = layer == self.num_layers - 1
                if last:  # the caller's: always a new array
                    out = np.empty((T * B, D * P), self.dtype)
                else:  # an inner layer's output, read by the next layer (and kept for its backward)
                    out = scratch(f"out{layer if train else layer % 2}", (T * B, D * P), self.dtype)
                for d in range(D):
                    idx = layer * D + d
                    p = self._short(self.params, idx)
                    ws = scratch.view(f"{layer}.{d}" if train else d)
                    caches.append(self._cell.forward(
                        p, layer_in, h0[idx], c0[idx] if has_c else None, lens, bool(d), out, d * P,
                        h_n[idx], c_n[idx] if has_c else None, T, B, nt, ws, bf, keep=train,
                        checkpoint=k))
                layer_in = out
        output = out.reshape((B, T, D * P) if bf else (T, B, D * P))
        if unbatched:
            output, h_n = output[:, 0], h_n[:, 0]
            c_n = c_n[:, 0] if has_c else None
        state = (h_n, c_n) if has_c else h_n
        if not train:
            return output, state, None
        backprop = _Backprop(self, caches, masks, T, B, unbatched, bf, scratch)
        return output, state, backprop

    # ------------------------------------------------------------------------------ streaming
    def cell(self, layer=0, direction=0):
        """The compiled cell of one layer and direction (rnncore._kernels.Cell) with the current
        weights, packed for stepping: what `step` runs, and what an outside Cython extension passes
        to rnncore._kernels.rc_step_f/_d (see the README's "Embedding rnncore in Cython code").
        It holds copies (the packed weights): take a new one after changing the weights."""
        layer = check_int(layer, "layer", 0)
        direction = check_int(direction, "direction", 0)
        if layer >= self.num_layers or direction >= self.num_directions:
            raise ValueError(f"this {type(self).__name__} has {self.num_layers} layer(s) and "
                             f"{self.num_directions} direction(s), got layer={layer}, "
                             f"direction={direction}")
        own = get_config()["step_gemm"] == "own"
        p = self._short(self.params, layer * self.num_directions + direction)
        return _kernels.Cell(self._cell.kind, p, own_gemm=own, in_loop=own)

    def initial_state(self, batch_size=1, hx=None):
        """Start streaming: ``state = layer.initial_state(batch_size)``, then
        ``y_t, state = layer.step(x_t, state)`` one step at a time (inference).

        hx: the initial state as in ``layer(x, hx)`` (default zeros). The returned StreamState holds
        ``h`` (num_layers, batch, P) (and ``c`` for an LSTM) and the layer's weights packed once for
        the stream: after changing the weights, start a new stream. A bidirectional layer cannot
        stream (its reverse direction starts at the end of the sequence)."""
        if self.bidirectional:
            raise ValueError(f"a bidirectional {type(self).__name__} cannot stream step by step: its "
                             f"reverse direction starts from the end of the sequence; call it on "
                             f"the whole sequence instead")
        B = check_int(batch_size, "batch_size", 1)
        h0, c0 = self._check_hx(hx, B, False)
        cells = [self.cell(layer) for layer in range(self.num_layers)]
        work = [np.empty(cell.workspace_size(B), self.dtype) for cell in cells]
        return StreamState(np.array(h0, copy=True), None if c0 is None else np.array(c0, copy=True),
                           cells, work)

    def step(self, x_t, state):
        """One step of a stream: ``y_t, state = layer.step(x_t, state)``, x_t (batch, input_size)
        (or (input_size,) for a stream of one sequence), y_t (batch, hidden_size or proj_size).

        Bit for bit what ``layer(x)`` computes at that step from the same state (on rnncore's own
        step GEMM, the default path). The state passed in is left as it was (a new one comes back),
        so a stream can branch."""
        if not isinstance(state, StreamState):
            raise TypeError(f"state must be the StreamState that initial_state() or step() returned, "
                            f"got {type(state).__name__}")
        h, c = state.h, state.c
        B = h.shape[1]
        x = _step_input(x_t, B, self.input_size, self.dtype)
        h_new = np.empty_like(h)
        c_new = None if c is None else np.empty_like(c)
        _kernels.step_stack(state._cells, x, h, c, h_new, c_new, state._work)
        y = h_new[-1].copy()
        if x is not x_t and np.ndim(x_t) == 1:
            y = y[0]
        return y, StreamState(h_new, c_new, state._cells, state._work)

    def _flops(self, T, B):
        """Multiply-adds x 2 of the forward pass's matrix products (gate math not counted)."""
        GH = self._cell.gates * self.hidden_size
        per_step = sum(2 * B * GH * (self.params[names["w_ih"]].shape[1] + self._P)
                       for names in self._layout)
        return T * per_step

    def _short(self, arrays, idx):
        return {short: arrays[full] for short, full in self._layout[idx].items()}

    def _scratch(self):
        local = self.__dict__.setdefault("_local", threading.local())
        if not hasattr(local, "scratch"):
            local.scratch = _Scratch()
        return local.scratch

    def _train_workspace(self):
        """A training workspace: one a finished backward pass gave back (its arrays are already of
        this shape in a training loop, so no step allocates them again), or a new one."""
        try:
            return self.__dict__.setdefault("_pool", []).pop()   # list.pop is atomic: thread-safe
        except IndexError:
            return _Scratch()

    def _give_back(self, workspace):
        pool = self.__dict__.setdefault("_pool", [])
        if len(pool) < _POOL_SIZE:
            pool.append(workspace)

    def __getstate__(self):  # picklable: scratch, workspaces and the grads guard are not state
        state = dict(self.__dict__)
        for key in ("_local", "_grads_lock", "_pool"):
            state.pop(key, None)
        state["params"], state["grads"] = dict(self.params), dict(self.grads)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._guard_params(self.grads)


class _ParamDict(dict):
    """A layer's ``params`` (or ``grads``): the dict of its live arrays, which the compiled kernels
    read and write. Its keys are fixed; ``d[k] = value`` copies value into the live array (which the
    optimizer and a model's own dicts hold too) when it has the same shape and a float dtype, and
    raises ValueError/TypeError otherwise, so the kernels never see an array of another size, dtype
    or layout. Writing params this way counts as a change (see mark_modified)."""

    def __init__(self, arrays, layer=None):
        super().__init__(arrays)
        self._layer = None if layer is None else weakref.ref(layer)

    def __setitem__(self, key, value):
        if key not in self:
            raise KeyError(f"{key!r} is not a parameter of this layer (its names: {list(self)})")
        cur = dict.__getitem__(self, key)
        if value is cur:
            return
        v = as_float_array(value, f"params[{key!r}]", cur.dtype, str(cur.shape))
        if v.shape != cur.shape:
            raise ValueError(f"params[{key!r}] must have shape {cur.shape}, got {v.shape} "
                             f"(the value is copied into the live array)")
        cur[...] = v
        layer = self._layer and self._layer()
        if layer is not None:
            layer._version += 1

    def _fixed(self, *args, **kwargs):
        raise TypeError("a layer's parameters are fixed: assign d[name] = array of the same shape "
                        "(copied into the live array); names cannot be added or removed")

    __delitem__ = pop = popitem = clear = setdefault = _fixed

    def update(self, *args, **kwargs):
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def __reduce__(self):
        return dict, (dict(self),)


# id(live parameter array) -> its layer, for mark_modified (weakly: a dead layer's ids go away)
_owners = weakref.WeakValueDictionary()


def mark_modified(arrays):
    """Say that these parameter arrays were changed in place (an optimizer's step does): the layers
    that own them count a new version, and a backprop of a forward_train from before raises
    RuntimeError, as torch's backward does after an in-place change. Arrays of no layer are ignored."""
    seen = set()
    for a in arrays:
        layer = _owners.get(id(a))
        if layer is not None and id(layer) not in seen and any(p is a for p in layer.params.values()):
            seen.add(id(layer))
            layer._version += 1


# The most parameter values a layer may be built with (None: no limit), set by checkpoint loaders
# (rnncore.training.trainer) so that a forged configuration is refused before anything is allocated.
_param_budget = contextvars.ContextVar("rnncore_param_budget", default=None)


@contextlib.contextmanager
def param_budget(n):
    """Within the block, building a layer of more than n parameter values raises ValueError."""
    token = _param_budget.set(n)
    try:
        yield
    finally:
        _param_budget.reset(token)


def _check_budget(n, what):
    budget = _param_budget.get()
    if budget is not None and n > budget:
        raise ValueError(f"this {what} would have {n} parameter values, more than the {budget} "
                         f"allowed here")


# Training workspaces a layer keeps for reuse (two: a forward_train may start before the previous
# backprop has given its workspace back, e.g. when gradients of two batches are taken together).
_POOL_SIZE = 2


class StreamState:
    """A stream's state (layer.initial_state / layer.step): ``h`` (num_layers, batch, P) and, for an
    LSTM, ``c`` (num_layers, batch, hidden_size); ``hx`` gives them as ``layer(x, hx)`` takes them.
    It also carries the stream's packed weights and work buffers (shared by the states of one
    stream, which therefore run one step at a time: use one stream per Python thread)."""
    __slots__ = ("h", "c", "_cells", "_work")

    def __init__(self, h, c, cells, work):
        self.h, self.c, self._cells, self._work = h, c, cells, work

    @property
    def hx(self):
        return self.h if self.c is None else (self.h, self.c)

    def __repr__(self):
        return f"StreamState(batch={self.h.shape[1]}, layers={self.h.shape[0]})"


class _Scratch:
    """Workspace for inference, reused across calls (no page faults for multi-MB arrays on every
    call). One per layer object and Python thread, so concurrent inference stays safe."""

    def __init__(self):
        self._arrays = {}

    def __call__(self, name, shape, dtype):
        a = self._arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = self._arrays[name] = _kernels.empty_aligned(shape, dtype)
        return a

    def view(self, direction):
        return lambda name, shape, dtype: self(f"{name}{direction}", shape, dtype)


class _Backprop:
    """The backward pass of one forward_train call: ``dx, dhx = backprop(d_output, d_h_n=None)``."""

    def __init__(self, layer, caches, masks, T, B, unbatched, bf, workspace):
        self._layer, self._caches, self.masks = layer, caches, masks
        self._T, self._B, self._unbatched, self._bf = T, B, unbatched, bf
        self._ws = workspace
        self._version = layer._version

    def __call__(self, d_output, d_h_n=None):
        """Runs once (as torch's backward without retain_graph): the forward pass's saved arrays go
        back to the layer for the next forward_train to reuse."""
        if self._ws is None:
            raise RuntimeError("this backprop has already run: the forward pass's saved arrays were given "
                               "back for reuse; call forward_train again for another backward pass")
        lay = self._layer
        if lay._version != self._version:
            raise RuntimeError(f"{type(lay).__name__}: its parameters were changed (load_state_dict, "
                               f"params[...] = ..., or an optimizer step) after this forward_train: "
                               f"its backprop would be of neither the old nor the new weights; run "
                               f"forward_train again")
        T, B, D, P, H = self._T, self._B, lay.num_directions, lay._P, lay.hidden_size
        LD = lay.num_layers * D
        has_c = lay._cell.has_cell_state
        ub = self._unbatched
        if ub:
            shape, doc = (T, D * P), "(time, num_directions * hidden_size), the output's shape"
        elif lay.batch_first:
            shape, doc = (B, T, D * P), "(batch, time, num_directions * hidden_size), the output's shape"
        else:
            shape, doc = (T, B, D * P), "(time, batch, num_directions * hidden_size), the output's shape"
        if d_output is None:
            dout = np.zeros((T * B, D * P), lay.dtype)
        else:
            dout = check_shape(as_float_array(d_output, "d_output", lay.dtype, doc), "d_output", shape, doc)
        if has_c:
            if d_h_n is None:
                d_h_n = (None, None)
            if not isinstance(d_h_n, (tuple, list)) or len(d_h_n) != 2:
                raise TypeError(f"d_h_n for an LSTM must be None or a tuple (d_h_n, d_c_n), "
                                f"got {type(d_h_n).__name__}")
            dh_all = lay._check_state(d_h_n[0], "d_h_n", B, P, ub).copy()
            dc_all = lay._check_state(d_h_n[1], "d_c_n", B, H, ub).copy()
        else:
            dh_all = lay._check_state(d_h_n, "d_h_n", B, P, ub).copy()
            dc_all = None
        nt = _threads.threads_for(2 * lay._flops(T, B))
        dlayer = dout.reshape(T * B, D * P)
        # Backward passes add into the layer's one set of grads outside the GIL: two at once would
        # lose updates, so a second one, from another thread, is refused rather than left to race.
        guard = lay.__dict__.setdefault("_grads_lock", threading.Lock())
        if not guard.acquire(blocking=False):
            raise RuntimeError(f"{type(lay).__name__}: another thread is running a backward pass of this "
                               f"layer (both would add into layer.grads); run backward passes of one layer "
                               f"one after the other, or train a separate layer per thread")
        ws = self._ws
        with _threads.blas_single_thread_if_used(), _released(guard):
            for layer in reversed(range(lay.num_layers)):
                in_size = lay.input_size if layer == 0 else lay.output_size
                if layer == 0:  # the caller's
                    dx = np.zeros((T * B, in_size), lay.dtype)
                else:  # dL/d(input of an inner layer), read by the layer below
                    dx = ws(f"dx{layer % 2}", (T * B, in_size), lay.dtype)
                    dx.fill(0)
                for d in range(D):
                    idx = layer * D + d
                    p, g = lay._short(lay.params, idx), lay._short(lay.grads, idx)
                    dh = np.ascontiguousarray(dh_all[idx])
                    dc = np.ascontiguousarray(dc_all[idx]) if has_c else None
                    dh, dc = lay._cell.backward(p, g, self._caches[idx], dlayer, d * P, dh, dc, dx, nt,
                                                ws.view("bwd"))
                    dh_all[idx] = dh
                    if has_c:
                        dc_all[idx] = dc
                if layer > 0 and self.masks:
                    dx *= _rows_of(self.masks[layer - 1], self._bf)
                dlayer = dx
        self._ws = self._caches = None
        lay._give_back(ws)
        dx = dlayer.reshape((B, T, lay.input_size) if self._bf else (T, B, lay.input_size))
        if ub:
            dx, dh_all = dx[:, 0], dh_all[:, 0]
            dc_all = dc_all[:, 0] if has_c else None
        return dx, ((dh_all, dc_all) if has_c else dh_all)


def _rows_of(a, bf):
    """A (T, B, F) array as (T*B, F) rows in the layer's row order (batch-major when bf)."""
    return (a.transpose(1, 0, 2) if bf else a).reshape(-1, a.shape[2])


@contextlib.contextmanager
def _released(lock):
    """Release an already-acquired lock on leaving the block."""
    try:
        yield
    finally:
        lock.release()


def _step_input(x_t, B, input_size, dtype):
    """A stream step's input as a C-contiguous (B, input_size) array of dtype (x_t itself when it
    already is one); (input_size,) is taken as a batch of one."""
    if (isinstance(x_t, np.ndarray) and x_t.dtype == dtype and x_t.flags.c_contiguous
            and x_t.shape == (B, input_size)):
        return x_t
    x = as_float_array(x_t, "x_t", dtype, f"(batch={B}, input_size={input_size})")
    if x.ndim == 1 and B == 1:
        x = x[None]
    check_shape(x, "x_t", (B, input_size), f"(batch={B}, input_size={input_size})")
    return np.ascontiguousarray(x)


def _check_layer_args(layer, input_size, hidden_size, num_layers, bias, batch_first, dtype, seed):
    """The constructor arguments every recurrent layer (RNN, LSTM, GRU, FeedbackRNN) shares, checked
    and set on the layer."""
    layer.input_size = check_int(input_size, "input_size", 1)
    layer.hidden_size = check_int(hidden_size, "hidden_size", 1)
    layer.num_layers = check_int(num_layers, "num_layers", 1)
    layer.bias = check_bool(bias, "bias")
    layer.batch_first = check_bool(batch_first, "batch_first")
    layer.dtype = check_float_dtype(_numpy_dtype(dtype))
    if seed is not None:
        check_int(seed, "seed", 0)
    layer.seed = seed


def _numpy_dtype(dtype):
    """A torch dtype as numpy's (without importing torch: a torch dtype implies torch is loaded)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(dtype, torch.dtype):
        return {torch.float32: np.float32, torch.float64: np.float64}.get(dtype, dtype)
    return dtype


def _orthogonal(rng, rows, cols):
    """A (rows, cols) matrix with orthonormal rows or columns (QR of a Gaussian, sign-corrected)."""
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return q if rows >= cols else q.T


class RNN(_RecurrentStack):
    """Elman RNN, as torch.nn.RNN: ``h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``,
    f = tanh or relu (``nonlinearity``).

    Extra arguments: ``dtype`` (numpy.float32 or float64), ``seed`` (initialisation and dropout),
    ``init``: "default" (PyTorch's U(-1/sqrt(H), 1/sqrt(H))), "orthogonal" (W_hh orthogonal), or
    "identity" (IRNN: W_hh = I and zero biases, for ReLU RNNs).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32, seed=None,
                 init="default", **config):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self._config_keys(config, mode="RNN_RELU" if nonlinearity == "relu" else "RNN_TANH", proj_size=0,
                          peephole=False, reset_after=True)
        self.nonlinearity = nonlinearity
        super().__init__("RNN_RELU" if nonlinearity == "relu" else "RNN_TANH",
                         _cells.RNNCell(relu=nonlinearity == "relu"), input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, dtype, seed, init)


class LSTM(_RecurrentStack):
    """LSTM, as torch.nn.LSTM (gate order i, f, g, o; ``proj_size`` as PyTorch).

    ``hx`` and ``h_n`` are tuples ``(h, c)``; ``backprop(d_output, (d_h_n, d_c_n))`` returns
    ``dx, (dh0, dc0)`` (either of d_h_n, d_c_n may be None).

    Extra arguments: ``dtype``, ``seed``, ``init`` ("default" or "orthogonal");
    ``forget_bias``: if given, the forget gate's b_ih is set to it and its b_hh to 0 (e.g. 1.0);
    ``peephole=True``: the seeds' LSTM with peephole connections (Gers & Schmidhuber 2000), adding per
    layer and direction the diagonal weights ``weight_ci_l{k}``, ``weight_cf_l{k}`` (input and forget
    gates see c_{t-1}) and ``weight_co_l{k}`` (output gate sees c_t), each (hidden_size,):
    ``i = σ(a_i + w_ci ⊙ c_{t-1})``, ``f = σ(a_f + w_cf ⊙ c_{t-1})``, ``o = σ(a_o + w_co ⊙ c_t)``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, dtype=np.float32, seed=None,
                 peephole=False, init="default", forget_bias=None, **config):
        self._config_keys(config, mode="LSTM", nonlinearity="tanh", reset_after=True)
        peephole = check_bool(peephole, "peephole")
        if init == "identity":
            raise ValueError("init='identity' (IRNN) is for ReLU RNNs; use 'default' or 'orthogonal' for an LSTM")
        if forget_bias is not None:
            if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float, np.number)):
                raise TypeError(f"forget_bias must be a number or None, got {type(forget_bias).__name__}")
            if not bias:
                raise ValueError("forget_bias needs bias=True")
            forget_bias = float(forget_bias)
        super().__init__("LSTM", _cells.LSTMCell(), input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, proj_size, dtype, seed, init,
                         peephole=peephole, forget_bias=forget_bias)


class GRU(_RecurrentStack):
    """GRU, as torch.nn.GRU (gate order r, z, n).

    ``reset_after=True`` (default) is PyTorch's and cuDNN's form:
        ``n = tanh(x W_in^T + b_in + r ⊙ (h W_hn^T + b_hn))``
    ``reset_after=False`` is the original one (Cho et al. 2014, the seeds; Keras' reset_after=False),
    where the reset gate scales h before the matrix product:
        ``n = tanh(x W_in^T + b_in + (r ⊙ h) W_hn^T + b_hn)``
    Both keep PyTorch's parameter names and shapes; ``h' = (1 - z) ⊙ n + z ⊙ h`` in both.
    Extra arguments: ``dtype``, ``seed``, ``init`` ("default" or "orthogonal").
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, seed=None, reset_after=True,
                 init="default", **config):
        self._config_keys(config, mode="GRU", nonlinearity="tanh", proj_size=0, peephole=False)
        reset_after = check_bool(reset_after, "reset_after")
        if init == "identity":
            raise ValueError("init='identity' (IRNN) is for ReLU RNNs; use 'default' or 'orthogonal' for a GRU")
        super().__init__("GRU", _cells.GRUCell(reset_after), input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, 0, dtype, seed, init,
                         reset_after=reset_after)
