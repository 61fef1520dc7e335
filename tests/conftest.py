"""Shared test helpers: configs, random PyTorch-named params, a PyTorch oracle, central differences.

All randomness is seeded (numpy Generators passed in by the tests, torch.manual_seed here).
"""
import itertools
import os

# Set before any OpenMP runtime loads (torch's or rnncore's). With the default spin-waiting, a tiny
# problem on 2 threads of a busy 2-core machine takes 30-250x longer than on 1 thread (each barrier
# spins while the other thread is descheduled); passive waiting keeps the test suite fast there.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import rnncore  # noqa: E402
from rnncore.layers import reference  # noqa: E402
from rnncore.training.optim import Adam  # noqa: E402
from rnncore.training.trainer import Trainer, load_model  # noqa: E402

torch.manual_seed(0)

# The cells of the test grid: (id, config overrides).
CELLS = [
    ("rnn_tanh", dict(mode="RNN_TANH", nonlinearity="tanh")),
    ("rnn_relu", dict(mode="RNN_RELU", nonlinearity="relu")),
    ("lstm", dict(mode="LSTM")),
    ("lstm_proj", dict(mode="LSTM", proj_size=2)),
    ("gru", dict(mode="GRU")),
]

# Small sizes so that the whole grid runs in seconds.
T, B, I, H = 5, 3, 4, 3
RAGGED_LENGTHS = [3, 5, 1]          # unsorted, one full length, one of length 1

# The oracle grid (cell x num_layers x bidirectional x batch_first x lengths x nonzero hx) and the
# rnncore layer of a config, shared by the layer, reference and fuzz tests.
GRID = list(itertools.product(
    [c[0] for c in CELLS],        # cell
    [1, 2],                       # num_layers
    [False, True],                # bidirectional
    [False, True],                # batch_first
    [None, RAGGED_LENGTHS],       # lengths
    [False, True],                # nonzero hx
))


def grid_id(case):
    cell, L, bidir, bf, lengths, with_hx = case
    return (f"{cell}-L{L}-{'bi' if bidir else 'uni'}-{'bf' if bf else 'tm'}-"
            f"{'ragged' if lengths else 'full'}-{'hx' if with_hx else 'nohx'}")


def grid_config(cell, **kw):
    return make_config(**dict(dict(CELLS)[cell], **kw))


# Every cell variant (5 inputs), each at a hidden size that reaches another kernel path: below, at and
# above the register panels' widths (16 and 32 floats), odd sizes, projection with peepholes.
VARIANTS = {
    "rnn_tanh": lambda **kw: rnncore.RNN(5, 16, **kw),
    "rnn_relu": lambda **kw: rnncore.RNN(5, 33, nonlinearity="relu", **kw),
    "lstm": lambda **kw: rnncore.LSTM(5, 32, **kw),
    "lstm_proj_peephole": lambda **kw: rnncore.LSTM(5, 17, proj_size=6, peephole=True, **kw),
    "gru": lambda **kw: rnncore.GRU(5, 7, **kw),
    "gru_reset_before": lambda **kw: rnncore.GRU(5, 16, reset_after=False, **kw),
}


def variant_batch(layer, B, T, rng, dtype):
    """x, nonzero hx, random lengths in [1, T], d_output and d_h_n for a layer of VARIANTS, in its
    layout."""
    x = rng.standard_normal((B, T, 5) if layer.batch_first else (T, B, 5)).astype(dtype)
    L = layer.num_layers * layer.num_directions
    h = lambda n: (rng.standard_normal((L, B, n)) * 0.5).astype(dtype)
    lstm = isinstance(layer, rnncore.LSTM)
    hx = (h(layer._P), h(layer.hidden_size)) if lstm else h(layer._P)
    lengths = rng.integers(1, T + 1, B)
    d_out = rng.standard_normal((B, T, layer.output_size) if layer.batch_first
                                else (T, B, layer.output_size)).astype(dtype)
    d_h = (h(layer._P), h(layer.hidden_size)) if lstm else h(layer._P)
    return x, hx, lengths, d_out, d_h


def make_layer(config, dtype, dropout=0.0, seed=0):
    """The rnncore layer of config (API_CONTRACT.md constructor arguments)."""
    common = dict(input_size=config["input_size"], hidden_size=config["hidden_size"],
                  num_layers=config["num_layers"], bias=config["bias"],
                  batch_first=config["batch_first"], dropout=dropout,
                  bidirectional=config["bidirectional"], dtype=dtype, seed=seed)
    mode = config["mode"]
    if mode in ("RNN_TANH", "RNN_RELU"):
        layer = rnncore.RNN(nonlinearity="relu" if mode == "RNN_RELU" else "tanh", **common)
    elif mode == "LSTM":
        layer = rnncore.LSTM(proj_size=config["proj_size"], peephole=config["peephole"], **common)
    elif mode == "GRU":
        layer = rnncore.GRU(reset_after=config["reset_after"], **common)
    else:
        raise ValueError(mode)
    for key, value in config.items():
        assert layer.config[key] == value, f"layer.config[{key!r}] = {layer.config[key]!r}, want {value!r}"
    assert layer.dtype == np.dtype(dtype)
    return layer



def make_config(mode="LSTM", input_size=I, hidden_size=H, num_layers=1, bias=True, batch_first=False,
                bidirectional=False, proj_size=0, peephole=False, reset_after=True, nonlinearity=None):
    """A config dict as layers expose it (API_CONTRACT.md)."""
    if nonlinearity is None:
        nonlinearity = "relu" if mode == "RNN_RELU" else "tanh"
    return dict(mode=mode, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                bias=bias, batch_first=batch_first, bidirectional=bidirectional, proj_size=proj_size,
                peephole=peephole, reset_after=reset_after, nonlinearity=nonlinearity)


def sizes(config):
    """(D, P, output_size) of a config."""
    D = 2 if config["bidirectional"] else 1
    P = config["proj_size"] or config["hidden_size"]
    return D, P, D * P


def param_shapes(config):
    """name -> shape for every parameter of config, PyTorch names and shapes."""
    G = reference.gate_count(config["mode"])
    H = config["hidden_size"]
    D, P, out = sizes(config)
    shapes = {}
    for k in range(config["num_layers"]):
        I_k = config["input_size"] if k == 0 else out
        for d in range(D):
            for name in reference.param_names(config, k, d):
                kind = name.split("_l")[0]
                shapes[name] = {
                    "weight_ih": (G * H, I_k), "weight_hh": (G * H, P), "bias_ih": (G * H,),
                    "bias_hh": (G * H,), "weight_hr": (P, H), "weight_ci": (H,), "weight_cf": (H,),
                    "weight_co": (H,)}[kind]
    return shapes


def random_params(config, rng, dtype=np.float64, scale=0.6):
    """PyTorch-named params drawn uniformly from [-scale, scale] (larger than torch's default init,
    so that gates are away from their linear regime and mistakes show)."""
    return {name: rng.uniform(-scale, scale, size=shape).astype(dtype)
            for name, shape in param_shapes(config).items()}


def random_inputs(config, rng, dtype=np.float64, with_hx=True, seq_len=T, batch=B):
    """x in the config's layout, and (when with_hx) nonzero, distinct h0 (and c0)."""
    D, P, _ = sizes(config)
    L = config["num_layers"]
    shape = (batch, seq_len, config["input_size"]) if config["batch_first"] else \
        (seq_len, batch, config["input_size"])
    x = rng.standard_normal(shape).astype(dtype)
    hx = None
    if with_hx:
        h0 = rng.uniform(-0.8, 0.8, size=(L * D, batch, P)).astype(dtype)
        if config["mode"] == "LSTM":
            # c0 on a different range from h0, so that an (h0, c0) swap cannot pass
            c0 = rng.uniform(-1.5, 1.5, size=(L * D, batch, config["hidden_size"])).astype(dtype)
            hx = (h0, c0)
        else:
            hx = h0
    return x, hx


def random_grads(config, rng, dtype=np.float64, seq_len=T, batch=B):
    """d_output (config's layout) and d_h_n ((dh, dc) for LSTM), all nonzero."""
    D, P, out = sizes(config)
    L = config["num_layers"]
    shape = (batch, seq_len, out) if config["batch_first"] else (seq_len, batch, out)
    d_output = rng.standard_normal(shape).astype(dtype)
    dh = rng.standard_normal((L * D, batch, P)).astype(dtype)
    if config["mode"] == "LSTM":
        dc = rng.standard_normal((L * D, batch, config["hidden_size"])).astype(dtype)
        return d_output, (dh, dc)
    return d_output, dh


def zero_past_lengths(config, d_output, lengths):
    """d_output with the entries at t >= lengths[b] set to 0 (they carry no gradient anywhere)."""
    if lengths is None:
        return d_output
    d_output = np.array(d_output, copy=True)
    for b, n in enumerate(lengths):
        if config["batch_first"]:
            d_output[b, n:] = 0
        else:
            d_output[n:, b] = 0
    return d_output


def to_torch_module(config, params, dtype=torch.float64):
    """torch.nn.RNN / LSTM / GRU of config, holding copies of params."""
    if config["peephole"] or (config["mode"] == "GRU" and not config["reset_after"]):
        raise ValueError("torch has no peephole LSTM and no reset_after=False GRU")
    common = dict(input_size=config["input_size"], hidden_size=config["hidden_size"],
                  num_layers=config["num_layers"], bias=config["bias"],
                  batch_first=config["batch_first"], bidirectional=config["bidirectional"], dtype=dtype)
    mode = config["mode"]
    if mode in ("RNN_TANH", "RNN_RELU"):
        module = torch.nn.RNN(nonlinearity="relu" if mode == "RNN_RELU" else "tanh", **common)
    elif mode == "LSTM":
        module = torch.nn.LSTM(proj_size=config["proj_size"], **common)
    else:
        module = torch.nn.GRU(**common)
    torch_names = {name for name, _ in module.named_parameters()}
    if torch_names != set(params):
        raise AssertionError(f"param names differ: torch {sorted(torch_names)}, ours {sorted(params)}")
    with torch.no_grad():
        for name, p in module.named_parameters():
            assert tuple(p.shape) == params[name].shape, (name, tuple(p.shape), params[name].shape)
            p.copy_(torch.from_numpy(np.asarray(params[name])))
    return module


def torch_run(config, params, x, hx=None, lengths=None, d_output=None, d_h_n=None,
              dtype=torch.float64):
    """Run torch on the same weights; backprop sum(output * d_output) + sum(h_n * d_h_n).

    Returns dict: output, h_n (tuple for LSTM), dx, dhx (tuple for LSTM; None if hx is None),
    grads (name -> array). With lengths, the sequence goes through
    pack_padded_sequence(enforce_sorted=False) and pad_packed_sequence(total_length=T).
    """
    module = to_torch_module(config, params, dtype)
    is_lstm = config["mode"] == "LSTM"
    xt = torch.tensor(np.asarray(x), dtype=dtype, requires_grad=True)
    T_ = xt.shape[1] if config["batch_first"] else xt.shape[0]
    hxt = None
    if hx is not None:
        if is_lstm:
            hxt = tuple(torch.tensor(np.asarray(a), dtype=dtype, requires_grad=True) for a in hx)
        else:
            hxt = torch.tensor(np.asarray(hx), dtype=dtype, requires_grad=True)
    if lengths is not None:
        packed = pack_padded_sequence(xt, torch.as_tensor(lengths, dtype=torch.int64),
                                      batch_first=config["batch_first"], enforce_sorted=False)
        out_packed, state = module(packed, hxt)
        out, _ = pad_packed_sequence(out_packed, batch_first=config["batch_first"], total_length=T_)
    else:
        out, state = module(xt, hxt)
    loss = out.new_zeros(())
    if d_output is not None:
        loss = loss + (out * torch.tensor(np.asarray(d_output), dtype=dtype)).sum()
    if d_h_n is not None:
        if is_lstm:
            for s, g in zip(state, d_h_n):
                if g is not None:
                    loss = loss + (s * torch.tensor(np.asarray(g), dtype=dtype)).sum()
        else:
            loss = loss + (state * torch.tensor(np.asarray(d_h_n), dtype=dtype)).sum()
    loss.backward()
    res = {
        "output": out.detach().numpy(),
        "h_n": tuple(s.detach().numpy() for s in state) if is_lstm else state.detach().numpy(),
        "dx": xt.grad.numpy(),
        "dhx": None,
        "grads": {name: (p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape)))
                  for name, p in module.named_parameters()},
    }
    if hx is not None:
        res["dhx"] = tuple(a.grad.numpy() for a in hxt) if is_lstm else hxt.grad.numpy()
    return res


def central_diff(f, arrays, eps=1e-6):
    """Central-difference gradient of the scalar f() w.r.t. each array in arrays (perturbed in place
    and restored): [ (f(a + eps e_i) - f(a - eps e_i)) / (2 eps) for every element i ] per array."""
    out = []
    for a in arrays:
        g = np.zeros(a.shape, dtype=np.float64)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            fp = f()
            a[idx] = old - eps
            fm = f()
            a[idx] = old
            g[idx] = (fp - fm) / (2 * eps)
        out.append(g)
    return out


def check_all_params(model, batch, rtol=1e-5, atol=1e-8):
    """A protocol model's grads after one backward() of batch_loss(batch, reduction="sum") against
    central differences of that loss, every entry of every parameter; each parameter's gradient
    must be nonzero somewhere (analytic and numeric), i.e. the loss depends on it."""
    model.zero_grad()
    _, _, backward = model.batch_loss(batch, reduction="sum")
    backward()
    analytic = {k: g.copy() for k, g in model.grads.items()}
    loss = lambda: model.batch_loss(batch, reduction="sum", is_train=False)[0]  # noqa: E731
    for name, p in model.params.items():
        numeric = central_diff(loss, [p])[0]
        assert_close(analytic[name], numeric, rtol, atol, name)
        assert np.any(analytic[name] != 0), f"{name}: gradient is all zero"
        assert np.any(numeric != 0), f"{name}: the loss does not depend on it"


def fit(model, batches, steps, lr, checkpoint_path=None):
    """Train with the Trainer (Adam, seed 0) for `steps` steps. Returns (loss before, loss after, trainer)."""
    trainer = Trainer(model, Adam(model.params, model.grads, lr=lr), seed=0, checkpoint_path=checkpoint_path)
    before = trainer.evaluate(batches)
    trainer.fit(batches, max_steps=steps)
    return before, trainer.evaluate(batches), trainer


def check_checkpoint(path, model, batches, loss):
    """The checkpoint at path rebuilds model: the same class and config, and `loss` on batches.
    Returns the rebuilt model."""
    loaded, _ = load_model(str(path))
    assert isinstance(loaded, type(model)) and loaded.config == model.config
    twin = Trainer(loaded, Adam(loaded.params, loaded.grads, lr=0.1))
    assert twin.evaluate(batches) == pytest.approx(loss)
    return loaded


def assert_close(actual, expected, rtol, atol, what):
    """np.testing.assert_allclose with a message naming the quantity and the worst error."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    tol = atol + rtol * np.abs(expected.astype(np.float64))
    if not np.all(err <= tol):
        worst = tuple(int(i) for i in np.unravel_index(np.argmax(err - tol), err.shape))
        raise AssertionError(
            f"{what}: max abs err {err.max():.3e} (at {worst}: got {float(actual[worst])!r}, "
            f"expected {float(expected[worst])!r}); {int((err > tol).sum())}/{err.size} elements out of "
            f"rtol={rtol}, atol={atol}")


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's id, so every test is reproducible on its own."""
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
