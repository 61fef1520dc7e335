"""rnncore's kernels inside PyTorch code (the public entry point is ``rnncore.torch``).

``RNN``, ``LSTM`` and ``GRU`` here *are* ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` (subclasses): the same
constructor, parameters (``nn.Parameter``, same names, torch's initialisation), ``state_dict``,
``.to()``/``.double()``, repr, hooks. Only ``forward`` differs: it runs rnncore's compiled stack.

How a call reaches the kernels, and what is (not) copied:
    weights   each call binds the rnncore layer's parameter dict to numpy views of the module's
              parameters (no copy: the arrays *are* the tensors' memory, so an optimizer's in-place
              step is what the next call sees); a parameter that is not contiguous is copied
    x, hx     numpy views of the tensors when they are contiguous and of the weights' dtype
    output    torch.from_numpy of the arrays the layer returns (no copy)
    grads     backward hands fresh arrays to the kernels (which add into them) and returns them as
              tensors (no copy, no zeroing pass)
Autograd: one torch.autograd.Function runs ``forward_train`` and its ``backprop`` closure; it saves
the input and the weights, so an in-place change between forward and backward is refused by torch
itself, as for torch.nn's modules. Without grad (``torch.no_grad()``, or nothing requiring grad) the
inference path runs instead (no workspace kept for backward).

What it refuses (ValueError/TypeError naming what it got): tensors not on the CPU, dtypes other than
float32/float64 (and an input whose dtype is not the weights'), double backward.
"""
import copy
import warnings

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnncore.engine.validation import check_bool, check_cpu_float_tensor
from rnncore.layers import recurrent as _recurrent

__all__ = ["RNN", "LSTM", "GRU", "convert"]

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _as_numpy(t):
    """A numpy view of a CPU tensor (no copy when it is contiguous; rnncore copies otherwise)."""
    return t.detach().numpy() if t.is_contiguous() else t.detach().contiguous().numpy()


def _bind(layer, names, weights):
    """Point the rnncore layer's parameter arrays at the weight tensors' memory (no copy when a tensor
    is contiguous, as torch's own parameters are; a contiguous copy otherwise). The layer's params dict
    refuses replacement by design (it guards numpy users' live arrays); here the tensors own the
    memory, so the entries are rebound below that guard."""
    params = layer.params
    for name, w in zip(names, weights):
        if not w.is_contiguous():
            dict.__setitem__(params, name, np.ascontiguousarray(w.detach().numpy()))
            continue
        cur = dict.__getitem__(params, name)
        if cur.__array_interface__["data"][0] != w.data_ptr() or cur.shape != tuple(w.shape):
            dict.__setitem__(params, name, w.detach().numpy())


def _fresh_grads(layer):
    """New zero arrays for the kernels to add the parameter gradients into (handed over to torch)."""
    for name, g in list(layer.grads.items()):
        dict.__setitem__(layer.grads, name, np.zeros_like(g))


class _StackFunction(torch.autograd.Function):
    """forward: rnncore's forward_train; backward: its backprop closure. Inputs: the layer, the
    parameter names, the lengths (numpy or None), the dropout seed (or None), x, h0, c0 (None when
    not given), the weights."""

    @staticmethod
    def forward(ctx, layer, names, lengths, seed, x, h0, c0, *weights):
        ctx.layer, ctx.names, ctx.lengths, ctx.seed = layer, names, lengths, seed
        ctx.dropout = layer.dropout
        out, state, ctx.backprop = _forward_train(layer, lengths, seed, x, h0, c0)
        ctx.save_for_backward(x, h0, c0, *weights)  # torch refuses a backward after an in-place change
        if layer.mode == "LSTM":
            return torch.from_numpy(out), torch.from_numpy(state[0]), torch.from_numpy(state[1])
        return torch.from_numpy(out), torch.from_numpy(state)

    @staticmethod
    def backward(ctx, d_out, d_h, d_c=None):
        if torch.is_grad_enabled():
            raise RuntimeError("rnncore's backward pass cannot be differentiated again (create_graph=True, "
                               "double backward): use torch.nn's module for higher-order gradients")
        x, h0, c0, *weights = ctx.saved_tensors    # raises if one was changed in place since forward
        layer = ctx.layer
        _bind(layer, ctx.names, weights)            # the forward pass's weights (the module may have
        backprop, ctx.backprop = ctx.backprop, None   # been given others since)
        if backprop is None:
            # a second backward through a retained graph (retain_graph=True, as gradcheck does):
            # rnncore's backprop runs once, so the forward pass runs again on the saved inputs
            layer.dropout = ctx.dropout
            backprop = _forward_train(layer, ctx.lengths, ctx.seed, x, h0, c0)[2]
        _fresh_grads(layer)
        d_state = (_as_numpy(d_h), _as_numpy(d_c)) if layer.mode == "LSTM" else _as_numpy(d_h)
        dx, dhx = backprop(_as_numpy(d_out), d_state)
        dh0, dc0 = dhx if layer.mode == "LSTM" else (dhx, None)
        grads = [torch.from_numpy(layer.grads[name]) for name in ctx.names]
        return (None, None, None, None, torch.from_numpy(dx),
                None if h0 is None else torch.from_numpy(dh0),
                None if c0 is None else torch.from_numpy(dc0), *grads)


def _forward_train(layer, lengths, seed, x, h0, c0):
    """rnncore's forward_train on tensors; seed: the dropout masks' (None without dropout)."""
    if seed is not None:
        layer._rng = np.random.default_rng(seed)
    hx = None if h0 is None else _as_numpy(h0)
    if layer.mode == "LSTM" and (h0 is not None or c0 is not None):
        hx = (hx, None if c0 is None else _as_numpy(c0))
    return layer.forward_train(_as_numpy(x), hx, lengths)


class _Rnncore:
    """The forward pass shared by the three modules (mixed in before torch's class)."""

    def _rnncore_layer(self, dtype):
        """The rnncore layer for the module's current configuration and dtype (built once, rebuilt
        when either changes)."""
        key = (self.mode, self.input_size, self.hidden_size, self.num_layers, self.bias,
               self.batch_first, self.bidirectional, self.proj_size, dtype)
        cached = self.__dict__.get("_rnncore")
        if cached is not None and cached[0] == key:
            return cached[1]
        config = dict(mode=self.mode, input_size=self.input_size, hidden_size=self.hidden_size,
                      num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                      bidirectional=self.bidirectional, proj_size=self.proj_size,
                      dtype=_NUMPY_DTYPES[dtype], seed=0)
        if self.mode.startswith("RNN"):
            config["nonlinearity"] = self.nonlinearity
        layer = _recurrent._RecurrentStack.from_config(config)   # dropout is set per call (train/eval)
        object.__setattr__(self, "_rnncore", (key, layer))
        return layer

    def _checked_weights(self):
        weights = [check_cpu_float_tensor(getattr(self, name), f"{type(self).__name__}.{name}")
                   for name in self._flat_weights_names]
        dtypes = {w.dtype for w in weights}
        if len(dtypes) > 1:
            raise TypeError(f"{type(self).__name__}: the parameters must share one dtype, got "
                            f"{sorted(map(str, dtypes))}")
        return weights

    def _split_hx(self, hx):
        """(h0, c0) tensors or None, checked for device and dtype (shapes are the layer's to check)."""
        if hx is None:
            return None, None
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx for an LSTM must be a tuple (h_0, c_0), got {type(hx).__name__}")
            return check_cpu_float_tensor(hx[0], "h_0"), check_cpu_float_tensor(hx[1], "c_0")
        return check_cpu_float_tensor(hx, "hx"), None

    def forward(self, input, hx=None):
        weights = self._checked_weights()
        dtype = weights[0].dtype
        packed = isinstance(input, PackedSequence)
        if packed:
            # padded in the caller's batch order (hx and h_n are in that order too, as torch.nn's)
            x, lengths = pad_packed_sequence(input, batch_first=self.batch_first)
            lengths = lengths.numpy()
        else:
            x, lengths = input, None
        check_cpu_float_tensor(x, "input")
        if x.dtype != dtype:
            raise TypeError(f"input must have the parameters' dtype {dtype}, got {x.dtype}")
        h0, c0 = self._split_hx(hx)
        for name, h in (("hx", h0), ("c_0", c0)):
            if h is not None and h.dtype != dtype:
                raise TypeError(f"{name} must have the parameters' dtype {dtype}, got {h.dtype}")
        layer = self._rnncore_layer(dtype)
        _bind(layer, self._flat_weights_names, weights)
        layer.dropout = self.dropout if self.training else 0.0
        layer.training = self.training
        seed = None
        if layer.dropout > 0 and self.num_layers > 1:     # masks seeded from torch's generator
            seed = int(torch.randint(0, 2 ** 62, ()).item())
            layer._rng = np.random.default_rng(seed)
        tracked = [t for t in (x, h0, c0, *weights) if t is not None]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tracked):
            outs = _StackFunction.apply(layer, tuple(self._flat_weights_names), lengths, seed, x, h0,
                                        c0, *weights)
            out, state = outs[0], (outs[1], outs[2]) if self.mode == "LSTM" else outs[1]
        else:
            np_hx = None if h0 is None else _as_numpy(h0)
            if self.mode == "LSTM" and hx is not None:
                np_hx = (np_hx, _as_numpy(c0))
            out, state = layer(_as_numpy(x), np_hx, lengths)
            out = torch.from_numpy(out)
            state = (tuple(torch.from_numpy(s) for s in state) if self.mode == "LSTM"
                     else torch.from_numpy(state))
        if packed:
            out = _repack(out, input, lengths, self.batch_first)
        return out, state

    def __getstate__(self):
        state = dict(super().__getstate__())        # torch.nn.RNNBase's (it drops its weakrefs)
        state.pop("_rnncore", None)                 # rebuilt on the next call
        return state


def _repack(out, packed_input, lengths, batch_first):
    """The padded output as a PackedSequence laid out as torch.nn's output for that input (the same
    sorted_indices / unsorted_indices)."""
    sorted_indices = packed_input.sorted_indices
    lengths = torch.from_numpy(lengths)
    if sorted_indices is not None:
        out = out.index_select(0 if batch_first else 1, sorted_indices)
        lengths = lengths[sorted_indices]
    data, batch_sizes, _, _ = pack_padded_sequence(out, lengths, batch_first=batch_first)
    return PackedSequence(data, batch_sizes, sorted_indices, packed_input.unsorted_indices)


class RNN(_Rnncore, torch.nn.RNN):
    """torch.nn.RNN running rnncore's kernels (same arguments, parameters and forward)."""


class LSTM(_Rnncore, torch.nn.LSTM):
    """torch.nn.LSTM running rnncore's kernels (same arguments, parameters, proj_size and forward)."""


class GRU(_Rnncore, torch.nn.GRU):
    """torch.nn.GRU running rnncore's kernels (same arguments, parameters and forward)."""


_SWAP = {torch.nn.RNN: RNN, torch.nn.LSTM: LSTM, torch.nn.GRU: GRU}


def convert(module, inplace=False):
    """Swap every ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` inside ``module`` (or ``module`` itself) for
    rnncore's, keeping its parameters (the same ``nn.Parameter`` objects when ``inplace=True``, so an
    optimizer already built on the model keeps working; a deep copy otherwise). Returns the model.

    Refused before anything is changed: a recurrent module whose parameters are not on the CPU or not
    float32/float64, a subclass of torch's (its forward may differ) and a parametrized one."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    inplace = check_bool(inplace, "inplace")
    found = []
    for name, sub in module.named_modules():
        where = f"{name or 'the module'} ({type(sub).__name__})"
        if isinstance(sub, _Rnncore):
            continue
        if isinstance(sub, torch.nn.RNNBase) and torch.nn.utils.parametrize.is_parametrized(sub):
            raise ValueError(f"{where} is parametrized (torch.nn.utils.parametrize): convert swaps "
                             f"plain recurrent modules only; remove the parametrization first")
        if type(sub) in _SWAP:
            for pname in sub._flat_weights_names:
                check_cpu_float_tensor(getattr(sub, pname), f"{where}.{pname}")
            found.append(name)
        elif isinstance(sub, torch.nn.RNNBase):
            raise ValueError(f"{where} is a subclass of torch.nn.{type(sub).__mro__[1].__name__}: its "
                             f"forward may differ from torch's, so convert does not swap it")
    target = module if inplace else copy.deepcopy(module)
    subs = dict(target.named_modules())
    for name in found:
        sub = subs[name]
        sub.__class__ = _SWAP[type(sub)]
    return target
