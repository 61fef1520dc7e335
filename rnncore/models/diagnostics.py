"""Gradient-flow diagnostics: how the gradient of the loss reaches each hidden state, where a NaN/Inf
first appears, and how saturated the gates are (the vanishing / exploding gradient slides of
../shared/seeds).

Through time, BPTT multiplies the gradient by one Jacobian per step (seeds, 002):

    ∂L/∂h_t = (∂h_{t+1}/∂h_t)^T ∂L/∂h_{t+1} + (∂o_t/∂h_t)^T ∂L/∂o_t
            = W_hh^T diag(1 - h_{t+1}²) ∂L/∂h_{t+1} + V^T ∂L/∂o_t          (tanh RNN)

so ‖∂L/∂h_t‖ shrinks or grows roughly like ‖W_hh‖^(T-t) |f'|^(T-t) (seeds, 004): the early steps get
almost no gradient (vanishing) or an overwhelming one (exploding). An LSTM's cell path
c_t = f * c_{t-1} + i * g carries it with the forget gate f instead. Saturated gates (σ near 0 or 1,
tanh near ±1) have derivatives near 0 and stop the gradient.

Everything is computed with the float64 numpy reference (rnncore.layers.reference) on a float64 copy of the
model's parameters, without dropout: the numbers describe the model, not the compiled kernels'
rounding.

    report = diagnose(model, X, y)              # model: SequenceModel, RNN/LSTM/GRU layer, or a
                                                # fitted RNNClassifier / RNNRegressor
    report.dh_norm          (num_layers, num_directions, T)   ‖∂L/∂h_t‖ over the batch
    report.dh_norm_per_sequence   (num_layers, num_directions, T, B)
    report.ratio()          ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ (top layer, forward direction)
    report.first_nonfinite  the first NaN/Inf, forward pass first, then backward (None if none)
    report.saturation(threshold=0.05)   share of saturated gate activations per layer and gate
    plot_gradient_flow({"tanh RNN": r1, "LSTM": r2}, "flow.png")

Total gradient: ∂L/∂h_t is the gradient with respect to the hidden state h_t itself, through its
output at t and through every later step (the reverse direction's "later" steps are the earlier t),
as torch would give for h_t.retain_grad() on a step-by-step unrolled network. It is 0 at padded steps.
"""
from collections import namedtuple

import numpy as np

from rnncore.layers import reference
from rnncore.engine.validation import check_ids, check_lengths
from rnncore.models.sequence import pool_states
from rnncore.training.losses import mse, softmax_cross_entropy

__all__ = ["diagnose", "Diagnostics", "NonFinite", "gradient_norms", "first_nonfinite", "gate_saturation",
           "plot_gradient_flow", "GATE_KINDS"]

# which squashing function produced each activation that step_gates returns (None: not saturating)
GATE_KINDS = {
    "RNN_TANH": {"h": "tanh"},
    "RNN_RELU": {"h": None},
    "LSTM": {"i": "sigmoid", "f": "sigmoid", "g": "tanh", "o": "sigmoid", "tanh_c": "tanh",
             "c": None, "m": None},
    "GRU": {"r": "sigmoid", "z": "sigmoid", "n": "tanh", "h": None},
}
# the gate blocks of weight_ih / bias_ih, in order (for locating a bad gradient)
GATE_BLOCKS = {"RNN_TANH": ("h",), "RNN_RELU": ("h",), "LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n")}

NonFinite = namedtuple("NonFinite", ["pass_", "where", "layer", "direction", "step", "names"])
NonFinite.__doc__ = """Where a NaN/Inf first appears.

pass_: "forward" or "backward". where: "input" (X), "rnn" (the recurrent stack), "head" (its output),
"loss", or in backward "d_output" (the head's gradient into the stack). layer, direction: the stack's
layer and direction (None outside the stack). step: the time step (in backward: the first one the
pass reaches, i.e. the latest for the forward direction). names: the activations (forward: e.g.
"i", "f", "c"; see reference.step_gates) or gate gradients (backward: "i", "f", "g", "o" / "r", "z",
"n" / "h") that are not finite at that step."""


def _is_estimator(model):
    return hasattr(model, "model_") and hasattr(model, "_sequences")


def _unpack(model):
    """(layer, SequenceModel or None) from a SequenceModel, a layer or a fitted estimator."""
    if _is_estimator(model):
        model = model.model_
    if hasattr(model, "rnn") and hasattr(model, "head_kind"):
        return model.rnn, model
    if hasattr(model, "config") and isinstance(getattr(model, "config", None), dict) \
            and "mode" in model.config and hasattr(model, "params"):
        return model, None
    raise TypeError(f"model: expected a SequenceModel, an rnncore RNN/LSTM/GRU layer or a fitted "
                    f"RNNClassifier/RNNRegressor, got {type(model).__name__}")


def _f64(h):
    if h is None:
        return None
    if isinstance(h, tuple):
        return tuple(np.asarray(a, dtype=np.float64) for a in h)
    return np.asarray(h, dtype=np.float64)


class Diagnostics:
    """Result of diagnose(): gradient norms per step, the first NaN/Inf, the forward caches.

    Attributes: loss (float, or None for a bare layer with a given gradient), config (the layer's),
    lengths ((B,) or None), dh ({(layer, direction): (T, B, P) ∂L/∂h_t}), dc (LSTM: the gradient
    reaching c_t from step t+1, same keys, else None), dh_norm, dh_norm_per_sequence, dc_norm,
    first_nonfinite_forward, first_nonfinite_backward (NonFinite or None).
    """

    def __init__(self, config, params, cache, record, loss, lengths, X, Y, dY):
        self.config, self.loss, self.lengths = config, loss, lengths
        self._params, self._cache = params, cache
        L, D = config["num_layers"], 2 if config["bidirectional"] else 1
        self.num_layers, self.num_directions = L, D
        self.dh = {k: r["dh"] for k, r in record.items()}
        self.dc = {k: r["dc"] for k, r in record.items()} if config["mode"] == "LSTM" else None
        with np.errstate(all="ignore"):
            # ‖∂L/∂h_t‖ per sequence: sqrt(Σ_units dh²); over the batch: sqrt(Σ_b Σ_units dh²)
            self.dh_norm_per_sequence = np.stack([np.stack([np.sqrt((self.dh[(k, d)] ** 2).sum(-1))
                                                            for d in range(D)]) for k in range(L)])
            self.dh_norm = np.sqrt((self.dh_norm_per_sequence ** 2).sum(-1))
            self.dc_norm = None if self.dc is None else np.stack(
                [np.stack([np.sqrt((self.dc[(k, d)] ** 2).sum((-1, -2))) for d in range(D)]) for k in range(L)])
        self._X, self._Y, self._dY = X, Y, dY

    @property
    def first_nonfinite_forward(self):
        """The first NaN/Inf of the forward pass (NonFinite), in the order it computes, or None."""
        with np.errstate(all="ignore"):
            return _first_nonfinite_forward(self.config, self._cache, self._X, self._Y, self.loss)

    @property
    def first_nonfinite_backward(self):
        """The first NaN/Inf of the backward pass (NonFinite), in the order it computes, or None."""
        with np.errstate(all="ignore"):
            return _first_nonfinite_backward(self.config, self._params, self._cache, self.dh, self.dc,
                                             self._dY)

    @property
    def first_nonfinite(self):
        """The first NaN/Inf of the forward pass, else of the backward pass, else None."""
        return self.first_nonfinite_forward or self.first_nonfinite_backward

    def ratio(self, layer=-1, direction=0):
        """‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ over the batch for one layer and direction: << 1 when the gradient
        vanishes on its way back to the first step, >> 1 when it explodes. (For the reverse direction:
        ‖∂L/∂h_T‖ / ‖∂L/∂h_1‖, the same "last reached / first reached" order.)"""
        n = self.dh_norm[layer, direction]
        first, last = (n[0], n[-1]) if direction == 0 else (n[-1], n[0])
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(first / last)

    def saturation(self, threshold=0.05):
        """Share of saturated gate activations at valid steps, per (layer, direction) and gate.

        A sigmoid gate (LSTM i, f, o; GRU r, z) is saturated when σ < threshold ("low") or
        σ > 1 - threshold ("high"); a tanh activation (RNN h, LSTM g and tanh(c), GRU n) when
        tanh < -1 + threshold ("low") or tanh > 1 - threshold ("high"). ReLU units have no
        saturation and are not listed.
        Returns {(layer, direction): {gate: {"kind", "low", "high", "saturated"}}}, shares in [0, 1].
        """
        return _saturation(self.config, self._cache, threshold)


# ---------------------------------------------------------------------------------------------
# the forward and backward passes


def diagnose(model, X, y=None, lengths=None, hx=None, loss=None, d_output=None, d_h_n=None):
    """Run the float64 reference forward and backward on one batch and collect the diagnostics.

    model: a SequenceModel (X as its forward takes it: (T, B) ids or (T, B, input_size) floats,
        time-major; y the targets its head is trained on), a fitted RNNClassifier / RNNRegressor
        (X and y as their fit takes them), or a bare RNN / LSTM / GRU layer (X as the layer takes it;
        then give d_output and/or d_h_n, the gradients of some loss with respect to the layer's
        output and final state; with neither, L = Σ h_n of the top layer, i.e. d_h_n = 1 there).
    loss: for a SequenceModel, "cross_entropy" or "mse" (default: mse for the "regression" head,
        cross-entropy otherwise), mean-reduced as the Trainer does.
    lengths: (B,) valid steps per sequence (SequenceModel / layer).
    Returns a Diagnostics.
    """
    # NaN / Inf are what this looks for: no warnings while computing with them
    with np.errstate(all="ignore"):
        return _diagnose(model, X, y, lengths, hx, loss, d_output, d_h_n)


def _diagnose(model, X, y, lengths, hx, loss, d_output, d_h_n):
    layer, seq_model = _unpack(model)
    if _is_estimator(model):
        X, y, lengths, loss = _estimator_batch(model, X, y)
    cfg = dict(layer.config)
    params = {k: np.asarray(v, dtype=np.float64) for k, v in layer.params.items()}
    hx = _f64(hx)
    is_lstm = cfg["mode"] == "LSTM"

    if seq_model is None:
        x = np.asarray(X, dtype=np.float64)
        if cfg.get("batch_first"):
            x = x.swapaxes(0, 1)
        cfg["batch_first"] = False
        lengths = _checked_lengths(lengths, x)
        out, h_n, cache = reference.forward(cfg, params, x, hx, lengths)
        if d_output is None:
            dY = np.zeros_like(out)
        else:
            dY = np.asarray(d_output, dtype=np.float64)
            if layer.config.get("batch_first"):
                dY = dY.swapaxes(0, 1)
            if dY.shape != out.shape:
                raise ValueError(f"d_output: expected the shape of the layer's output {out.shape}, got {dY.shape}")
        if d_output is None and d_h_n is None:
            h = h_n[0] if is_lstm else h_n
            dhn = np.zeros_like(h)
            D = 2 if cfg["bidirectional"] else 1
            dhn[-D:] = 1.0                      # L = Σ h_n of the top layer
            d_h_n = (dhn, None) if is_lstm else dhn
        else:
            d_h_n = _f64(d_h_n)
        record = {}
        reference.backward(cfg, params, cache, dY, d_h_n, record=record)
        return Diagnostics(cfg, params, cache, record, None, lengths, x, out, dY)

    if y is None:
        raise ValueError("y: expected the targets of the model's head, got None")
    # input: embedding / one-hot / dense, in float64
    if seq_model.embedding is None:
        E = np.asarray(X, dtype=np.float64)
    elif "weight" in seq_model.embedding.params:
        E = seq_model.embedding.params["weight"].astype(np.float64)[check_ids(X, seq_model.vocab_size, "X")]
    else:
        E = np.eye(seq_model.embedding.num_classes)[check_ids(X, seq_model.vocab_size, "X")]
    lengths = _checked_lengths(lengths, E)
    Hs, _, cache = reference.forward(cfg, params, E, hx, lengths)
    W = seq_model.head.params["weight"].astype(np.float64)
    b = seq_model.head.params["bias"].astype(np.float64)
    D = 2 if cfg["bidirectional"] else 1
    if seq_model.head_kind == "many_to_one":
        # the head reads the pooled states (the model's own readout, on float64 copies of its weights)
        pool_params = {k: v.astype(np.float64) for k, v in seq_model.pool.params.items()}
        Hpool, pool_backprop = pool_states(seq_model.pooling, Hs, lengths, D, pool_params)
        Y = Hpool @ W.T + b
    else:
        Y = Hs @ W.T + b
    if loss is None:
        loss = "mse" if seq_model.head_kind == "regression" else "cross_entropy"
    if loss not in ("mse", "cross_entropy"):
        raise ValueError(f"loss: expected 'mse' or 'cross_entropy', got {loss!r}")
    per_step_lengths = None if seq_model.head_kind == "many_to_one" else lengths
    with np.errstate(all="ignore"):
        if loss == "mse":
            value, dO = mse(Y, np.asarray(y, dtype=np.float64), lengths=per_step_lengths, reduction="mean")
        else:
            value, dO = softmax_cross_entropy(Y, np.asarray(y), lengths=per_step_lengths, reduction="mean")
        # back through the head: dH = dO W
        dHead = dO @ W
    if seq_model.head_kind == "many_to_one":
        dY = pool_backprop(dHead)[0]
    else:
        dY = dHead
    record = {}
    with np.errstate(all="ignore"):
        reference.backward(cfg, params, cache, dY, None, record=record)
    return Diagnostics(cfg, params, cache, record, value, lengths, E, Y, dY)


def _checked_lengths(lengths, X):
    """None, or the lengths of the sequences of time-major X, checked (rnncore.engine.validation)."""
    return None if lengths is None else check_lengths(lengths, X.shape[0], X.shape[1], dtype=np.int64)


def _estimator_batch(est, X, y):
    """A fitted estimator's X, y -> (scaled time-major X, encoded / scaled targets, lengths, loss)."""
    Xp, lengths = est._model_inputs(X)
    if y is None:
        raise ValueError("y: expected the targets of the sequences, got None")
    if hasattr(est, "classes_"):
        y = np.asarray(y)
        ids = np.searchsorted(est.classes_, y)
        if (ids >= len(est.classes_)).any() or (est.classes_[np.minimum(ids, len(est.classes_) - 1)] != y).any():
            raise ValueError(f"y: expected labels among classes_ {est.classes_.tolist()}")
        targets, loss = ids.astype(np.int64), "cross_entropy"
    else:
        Yr = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        targets, loss = (Yr - est.target_mean_) / est.target_scale_, "mse"
    return Xp, targets, None if (lengths == Xp.shape[0]).all() else lengths, loss


# ---------------------------------------------------------------------------------------------
# NaN / Inf


def _bad(a):
    return a is not None and not np.isfinite(a).all()


def _steps(cache_layer_dir):
    steps, caches = cache_layer_dir
    return list(steps), caches


def _first_nonfinite_forward(config, cache, X, Y, loss):
    mode = config["mode"]
    # the input of the stack, step by step
    bad_t = np.flatnonzero(~np.isfinite(X).reshape(X.shape[0], -1).all(axis=1))
    if len(bad_t):
        return NonFinite("forward", "input", None, None, int(bad_t[0]), ())
    D = 2 if config["bidirectional"] else 1
    for k, (_, dir_caches) in enumerate(cache["layers"]):
        for d in range(D):
            steps, caches = _steps(dir_caches[d])
            for t in steps:
                names = tuple(n for n, a in reference.step_gates(mode, caches[t]).items() if _bad(a))
                if names:
                    return NonFinite("forward", "rnn", k, d, int(t), names)
    if _bad(Y):
        bad_t = np.flatnonzero(~np.isfinite(Y).reshape(Y.shape[0], -1).all(axis=1)) if Y.ndim == 3 else [None]
        return NonFinite("forward", "head", None, None, None if bad_t[0] is None else int(bad_t[0]), ())
    if loss is not None and not np.isfinite(loss):
        return NonFinite("forward", "loss", None, None, None, ())
    return None


def _gate_gradient_blocks(config, params, k, d, step_cache, dh, dc):
    """Names of the gate blocks whose gradient is not finite when one step's backward runs on dh, dc."""
    _, step_backward = reference._step_fns(config)
    p, names = reference._cell_params(config, params, k, d)
    dp = {short: np.zeros_like(params[name]) for short, name in names.items()}
    with np.errstate(all="ignore"):
        step_backward(p, dp, step_cache, dh, dc)
    # the bias gradient of a gate is Σ_batch of its pre-activation gradient; without biases use W_ih
    g = dp["b_ih"][:, None] if "b_ih" in dp else dp["W_ih"]
    blocks = GATE_BLOCKS[config["mode"]]
    H = g.shape[0] // len(blocks)
    return tuple(n for j, n in enumerate(blocks) if _bad(g[j * H:(j + 1) * H]))


def _first_nonfinite_backward(config, params, cache, dh, dc, dY):
    D = 2 if config["bidirectional"] else 1
    L = config["num_layers"]
    P = dY.shape[2] // D
    for d in range(D):
        # the head's gradient into the top layer: the first step the backward pass reaches
        sl = dY[:, :, d * P:(d + 1) * P]
        bad_t = np.flatnonzero(~np.isfinite(sl).reshape(sl.shape[0], -1).all(axis=1))
        if len(bad_t):
            return NonFinite("backward", "d_output", None, d, int(bad_t[-1] if d == 0 else bad_t[0]), ())
    for k in reversed(range(L)):
        for d in range(D):
            steps, caches = _steps(cache["layers"][k][1][d])
            dhk, dck = dh[(k, d)], (None if dc is None else dc[(k, d)])
            # the steps in the order the backward pass runs them: the first step whose gate gradients
            # are not finite (from finite or, if it arrived bad from above, non-finite dh_t / dc_t)
            for t in reversed(steps):
                dct = None if dck is None else dck[t]
                names = _gate_gradient_blocks(config, params, k, d, caches[t], dhk[t], dct)
                if names or _bad(dhk[t]) or _bad(dct):
                    return NonFinite("backward", "rnn", k, d, int(t), names)
    return None


# ---------------------------------------------------------------------------------------------
# saturation


def _saturation(config, cache, threshold):
    if not (isinstance(threshold, (int, float)) and 0 < threshold < 0.5):
        raise ValueError(f"threshold: expected a number in (0, 0.5), got {threshold!r}")
    mode = config["mode"]
    kinds = GATE_KINDS[mode]
    valid = cache["valid"][:, :, 0] > 0          # (T, B)
    D = 2 if config["bidirectional"] else 1
    out = {}
    for k, (_, dir_caches) in enumerate(cache["layers"]):
        for d in range(D):
            steps, caches = _steps(dir_caches[d])
            acts = {}
            for t in steps:
                for name, a in reference.step_gates(mode, caches[t]).items():
                    if kinds.get(name) is not None:
                        acts.setdefault(name, []).append(a[valid[t]])
            res = {}
            for name, chunks in acts.items():
                a = np.concatenate(chunks).ravel()
                lo_edge = 0.0 if kinds[name] == "sigmoid" else -1.0
                low = float(np.mean(a < lo_edge + threshold)) if a.size else 0.0
                high = float(np.mean(a > 1.0 - threshold)) if a.size else 0.0
                res[name] = {"kind": kinds[name], "low": low, "high": high, "saturated": low + high}
            out[(k, d)] = res
    return out


# ---------------------------------------------------------------------------------------------
# shortcuts and plot


def gradient_norms(model, X, y=None, lengths=None, **kw):
    """‖∂L/∂h_t‖ over the batch, (num_layers, num_directions, T); see diagnose for the arguments."""
    return diagnose(model, X, y, lengths, **kw).dh_norm


def first_nonfinite(model, X, y=None, lengths=None, **kw):
    """The first NaN/Inf of the forward, else the backward pass (NonFinite), or None; see diagnose."""
    return diagnose(model, X, y, lengths, **kw).first_nonfinite


def gate_saturation(model, X, lengths=None, hx=None, threshold=0.05):
    """Share of saturated gate activations (see Diagnostics.saturation) from a forward pass only.

    model: a SequenceModel, a layer or a fitted estimator; X as for diagnose."""
    layer, seq_model = _unpack(model)
    if _is_estimator(model):
        X, lengths = model._model_inputs(X)
        lengths = None if (lengths == X.shape[0]).all() else lengths
    cfg = dict(layer.config)
    params = {k: np.asarray(v, dtype=np.float64) for k, v in layer.params.items()}
    if seq_model is not None and seq_model.embedding is not None:
        if "weight" in seq_model.embedding.params:
            x = seq_model.embedding.params["weight"].astype(np.float64)[np.asarray(X)]
        else:
            x = np.eye(seq_model.embedding.num_classes)[np.asarray(X)]
    else:
        x = np.asarray(X, dtype=np.float64)
    with np.errstate(all="ignore"):
        _, _, cache = reference.forward(cfg, params, x, _f64(hx), lengths)
    return _saturation(cfg, cache, threshold)


def plot_gradient_flow(reports, path, layer=-1, direction=0, title=None):
    """Plot ‖∂L/∂h_t‖ against t (log scale) for one or more Diagnostics; write a PNG; return path.

    reports: a Diagnostics, or a dict label -> Diagnostics (one line each).
    Needs matplotlib (pip install matplotlib, or rnncore's "plot" extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot_gradient_flow needs matplotlib: pip install matplotlib "
                          "(or pip install 'rnncore[plot]')") from None
    if isinstance(reports, Diagnostics):
        reports = {"": reports}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, r in reports.items():
        n = r.dh_norm[layer, direction]
        ax.semilogy(np.arange(1, len(n) + 1), np.where(n > 0, n, np.nan), label=label or None)
    ax.set_xlabel("time step t")
    ax.set_ylabel(r"$\|\partial L / \partial h_t\|$")
    ax.set_title(title or "gradient of the loss with respect to each hidden state")
    ax.grid(True, which="both", alpha=0.3)
    if any(reports):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
