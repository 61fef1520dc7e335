"""The many-to-one readouts of SequenceModel (pooling="last" | "mean" | "max" | "attention") against
three oracles: a numpy reference written here from the equations (one sequence at a time, on top of
rnncore.layers.reference), PyTorch on the same weights (torch.nn.RNN/LSTM/GRU on packed sequences
and the pooling written in torch), and float64 central differences. Outputs, final states, the input
gradient and every parameter gradient, with nonzero initial states and ragged lengths."""
import itertools

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import assert_close, central_diff, to_torch_module
from rnncore.layers import reference
from rnncore.models.sequence import POOLINGS, SequenceModel
from rnncore.training.data import Batch
from rnncore.training.optim import Adam
from rnncore.training.trainer import Trainer, load_model

CELLS = ("rnn", "lstm", "gru")
I, O = 4, 3


def make_model(cell, pooling, hidden, num_layers, bidirectional, dtype, seed=0):
    return SequenceModel(cell, hidden_size=hidden, num_layers=num_layers, input_size=I, output_size=O,
                         head="many_to_one", pooling=pooling, bidirectional=bidirectional, dtype=dtype,
                         seed=seed)


def randomize(model, rng, scale=0.5):
    """Weights drawn from [-scale, scale] (away from the init's linear regime, so that mistakes show)."""
    for p in model.params.values():
        p[...] = rng.uniform(-scale, scale, p.shape)


def problem(model, rng, T, B, dtype):
    """X (T, B, I), ragged lengths (one full, one of length 1 when B > 2), nonzero hx, upstream G."""
    L, D = model.num_layers, model.rnn.num_directions
    H = model.hidden_size
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    if B > 2:
        lengths[1] = 1
    X = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.uniform(-0.8, 0.8, (L * D, B, H)).astype(dtype)
    hx = (h0, rng.uniform(-1.5, 1.5, (L * D, B, H)).astype(dtype)) if model.cell == "lstm" else h0
    G = rng.standard_normal((B, O)).astype(dtype)          # the loss is Σ Y * G: dY = G
    return X, lengths, hx, G


# ------------------------------------------------------------------------------------------------
# oracle 1: numpy, from the equations, one sequence at a time


def reference_pool(kind, H, lengths, D_dir, params):
    """(P, backward) of the readout of H (T, B, D): p_b from h_0 .. h_{L_b - 1} of sequence b only."""
    T, B, D = H.shape
    F = D // D_dir
    P = np.zeros((B, D))
    saved = []
    for b in range(B):
        Hb = H[:lengths[b], b]                               # the valid steps of sequence b
        if kind == "last":
            p = Hb[-1].copy()
            if D_dir == 2:
                p[F:] = H[0, b, F:]                          # the reverse direction ends at t = 0
            saved.append(None)
        elif kind == "mean":
            p = Hb.sum(axis=0) / lengths[b]
            saved.append(None)
        elif kind == "max":
            p = Hb.max(axis=0)
            saved.append(None)
        else:                                                # attention
            u = np.tanh(Hb @ params["pool.weight"].T + params["pool.bias"])
            e = u @ params["pool.query"]
            a = np.exp(e - e.max())
            a /= a.sum()
            p = a @ Hb
            saved.append((u, a))
        P[b] = p

    def backward(dP):
        dH = np.zeros_like(H)
        grads = {k: np.zeros_like(v) for k, v in params.items() if k.startswith("pool.")}
        for b in range(B):
            n, dp, Hb = lengths[b], dP[b], H[:lengths[b], b]
            if kind == "last":
                dH[n - 1, b, :F] += dp[:F]
                if D_dir == 2:
                    dH[0, b, F:] += dp[F:]
                else:
                    dH[n - 1, b, F:] += dp[F:]
            elif kind == "mean":
                dH[:n, b] += dp / n
            elif kind == "max":
                for j in range(D):
                    dH[int(np.argmax(Hb[:, j])), b, j] += dp[j]
            else:
                u, a = saved[b]
                da = Hb @ dp                                 # ∂L/∂α_t = dp · h_t
                de = a * (da - a @ da)                       # through the softmax
                grads["pool.query"] += de @ u
                dz = de[:, None] * params["pool.query"] * (1 - u ** 2)
                grads["pool.weight"] += dz.T @ Hb
                grads["pool.bias"] += dz.sum(axis=0)
                dH[:n, b] += a[:, None] * dp + dz @ params["pool.weight"]
        return dH, grads

    return P, backward


def reference_model(model, X, lengths, hx, G):
    """Y, h_n, dX and every gradient by name, in float64, from rnncore.layers.reference and the above."""
    params = {k: v.astype(np.float64) for k, v in model.params.items()}
    rnn_params = {k[len("rnn."):]: v for k, v in params.items() if k.startswith("rnn.")}
    cfg = model.rnn.config
    hx64 = tuple(a.astype(np.float64) for a in hx) if isinstance(hx, tuple) else hx.astype(np.float64)
    H, h_n, cache = reference.forward(cfg, rnn_params, X.astype(np.float64), hx64, lengths)
    P, pool_backward = reference_pool(model.pooling, H, lengths, model.rnn.num_directions, params)
    W, c = params["head.weight"], params["head.bias"]
    Y = P @ W.T + c
    G = G.astype(np.float64)
    # L = Σ Y * G:  dY = G;  dW = G^T P;  dc = Σ_b G;  dP = G W
    grads = {"head.weight": G.T @ P, "head.bias": G.sum(axis=0)}
    dH, pool_grads = pool_backward(G @ W)
    grads.update(pool_grads)
    dX, _, rnn_grads = reference.backward(cfg, rnn_params, cache, dH, None)
    grads.update({f"rnn.{k}": v for k, v in rnn_grads.items()})
    return Y, h_n, dX, grads


# ------------------------------------------------------------------------------------------------
# oracle 2: PyTorch on the same weights


def torch_model(model, X, lengths, hx, G, tdtype):
    """The same model in torch: packed sequences through torch.nn.<cell>, the readout in torch."""
    params = {k: v.astype(np.float64) for k, v in model.params.items()}
    rnn_params = {k[len("rnn."):]: v for k, v in params.items() if k.startswith("rnn.")}
    module = to_torch_module(model.rnn.config, rnn_params, tdtype)
    t = lambda a, grad=False: torch.tensor(np.asarray(a), dtype=tdtype, requires_grad=grad)  # noqa: E731
    xt = t(X, True)
    hxt = tuple(t(a) for a in hx) if isinstance(hx, tuple) else t(hx)
    extra = {k: t(v, True) for k, v in params.items() if k.startswith(("pool.", "head."))}
    T, B = X.shape[:2]
    packed = pack_padded_sequence(xt, torch.as_tensor(lengths), enforce_sorted=False)
    out, state = module(packed, hxt)
    H, _ = pad_packed_sequence(out, total_length=T)
    valid = torch.arange(T)[:, None] < torch.as_tensor(lengths)[None, :]
    kind = model.pooling
    if kind == "last":
        F = H.shape[2] // model.rnn.num_directions
        P = H[torch.as_tensor(lengths) - 1, torch.arange(B)]
        if model.rnn.num_directions == 2:
            P = torch.cat([P[:, :F], H[0, :, F:]], dim=1)
    elif kind == "mean":
        P = (H * valid[..., None]).sum(0) / torch.as_tensor(lengths, dtype=tdtype)[:, None]
    elif kind == "max":
        P = H.masked_fill(~valid[..., None], -torch.inf).max(dim=0).values
    else:
        U = torch.tanh(H @ extra["pool.weight"].T + extra["pool.bias"])
        e = (U @ extra["pool.query"]).masked_fill(~valid, -torch.inf)
        P = (torch.softmax(e, dim=0)[..., None] * H).sum(0)
    Y = P @ extra["head.weight"].T + extra["head.bias"]
    (Y * t(G)).sum().backward()
    grads = {f"rnn.{k}": p.grad.numpy() for k, p in module.named_parameters()}
    grads.update({k: v.grad.numpy() for k, v in extra.items()})
    h_n = tuple(s.detach().numpy() for s in state) if isinstance(state, tuple) else state.detach().numpy()
    return Y.detach().numpy(), h_n, xt.grad.numpy(), grads


# ------------------------------------------------------------------------------------------------
# the grid: cell x pooling x direction, hidden sizes 5, 16, 17, 32, 33 and odd batches in turn


GRID = list(itertools.product(CELLS, POOLINGS, [False, True]))
SIZES = [(5, 3, 1), (16, 5, 2), (17, 1, 1), (32, 7, 1), (33, 3, 2)]      # (hidden, batch, layers)


def grid_id(case):
    cell, pooling, bidir = case
    return f"{cell}-{pooling}-{'bi' if bidir else 'uni'}"


def model_run(model, X, lengths, hx, G):
    model.zero_grad()
    Y, bp = model.forward(X, lengths=lengths, hx=hx)
    dX = bp(G)
    return Y, bp.h_n, dX, {k: g.copy() for k, g in model.grads.items()}


def compare(got, want, rtol, atol, oracle):
    Y, h_n, dX, grads = got
    Yw, h_nw, dXw, gradsw = want
    assert_close(Y, Yw, rtol, atol, f"{oracle}: output")
    for a, b in zip(h_n if isinstance(h_n, tuple) else (h_n,), h_nw if isinstance(h_nw, tuple) else (h_nw,)):
        assert_close(a, b, rtol, atol, f"{oracle}: h_n")
    assert_close(dX, dXw, rtol, atol, f"{oracle}: dX")
    assert set(grads) == set(gradsw), (sorted(grads), sorted(gradsw))
    for k in grads:
        assert_close(grads[k], gradsw[k], rtol, atol, f"{oracle}: grad {k}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_pooling_matches_reference_and_torch(case, dtype, rng):
    cell, pooling, bidir = case
    hidden, B, layers = SIZES[GRID.index(case) % len(SIZES)]
    model = make_model(cell, pooling, hidden, layers, bidir, dtype)
    randomize(model, rng)
    X, lengths, hx, G = problem(model, rng, T=6, B=B, dtype=dtype)
    got = model_run(model, X, lengths, hx, G)
    assert got[0].dtype == dtype and got[2].dtype == dtype
    assert all(g.dtype == dtype for g in got[3].values())
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    compare(got, reference_model(model, X, lengths, hx, G), oracle="numpy reference", **tol)
    compare(got, torch_model(model, X, lengths, hx, G, torch.float64), oracle="torch", **tol)
    if pooling == "attention":
        assert {"pool.weight", "pool.bias", "pool.query"} <= set(got[3])
        assert all(np.any(got[3][k] != 0) for k in ("pool.weight", "pool.bias", "pool.query"))
    else:
        assert not any(k.startswith("pool.") for k in model.params)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("cell", CELLS)
def test_pooling_central_differences(cell, pooling, rng):
    """Every entry of every parameter and of X, in float64."""
    model = make_model(cell, pooling, hidden=3, num_layers=1, bidirectional=(cell != "rnn"),
                       dtype=np.float64)
    randomize(model, rng)
    X, lengths, hx, G = problem(model, rng, T=5, B=3, dtype=np.float64)
    _, _, dX, grads = model_run(model, X, lengths, hx, G)
    loss = lambda: float((model.predict(X, lengths=lengths, hx=hx) * G).sum())  # noqa: E731
    names = list(model.params)
    numeric = central_diff(loss, [model.params[k] for k in names] + [X])
    for k, num in zip(names, numeric):
        assert_close(grads[k], num, 1e-6, 1e-8, f"central differences: grad {k}")
        assert np.any(num != 0), f"{k}: the loss does not depend on it"
    assert_close(dX, numeric[-1], 1e-6, 1e-8, "central differences: dX")
    # padding gets no gradient: a step past a sequence's length does not reach the loss
    for b, n in enumerate(lengths):
        assert not dX[n:, b].any() and not numeric[-1][n:, b].any()


# ------------------------------------------------------------------------------------------------
# lengths, configs, the Trainer


@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_is_never_pooled(pooling, rng):
    model = make_model("gru", pooling, 6, 1, True, np.float64)
    randomize(model, rng)
    X, lengths, hx, G = problem(model, rng, T=7, B=5, dtype=np.float64)
    garbage = X.copy()
    for b, n in enumerate(lengths):
        garbage[n:, b] = 1e3 * rng.standard_normal((7 - n, I))          # large values in the padding
    a, b_ = model_run(model, X, lengths, hx, G), model_run(model, garbage, lengths, hx, G)
    compare(a, b_, 0, 0, "padding")
    # each sequence alone, without padding, gives the same output as in the padded batch
    Y = model.predict(X, lengths=lengths)
    for j, n in enumerate(lengths):
        np.testing.assert_allclose(model.predict(X[:n, j:j + 1])[0], Y[j], rtol=1e-12, atol=1e-14)


def test_pooling_is_checked_and_kept_in_the_config(tmp_path, rng):
    with pytest.raises(ValueError, match=r"pooling: expected one of .*got 'sum'"):
        make_model("gru", "sum", 4, 1, False, np.float64)
    with pytest.raises(ValueError, match=r"pooling='mean' reads one vector per sequence: expected "
                                         r"head='many_to_one', got head='regression'"):
        SequenceModel("gru", hidden_size=4, input_size=2, output_size=1, head="regression", pooling="mean")
    model = make_model("lstm", "attention", 4, 1, False, np.float32, seed=3)
    assert model.config["pooling"] == "attention" and "pooling='attention'" in repr(model)
    twin = SequenceModel.from_config(model.config)
    for k in model.params:
        np.testing.assert_array_equal(twin.params[k], model.params[k])
    # the default readout leaves the config (and the other parameters' initialisation) as before
    last = make_model("lstm", "last", 4, 1, False, np.float32, seed=3)
    assert "pooling" not in last.config
    for k in last.params:
        np.testing.assert_array_equal(last.params[k], model.params[k])
    # a pooled model trains with the Trainer on whole batches, and its checkpoint rebuilds it
    X, lengths, _, _ = problem(model, rng, T=6, B=8, dtype=np.float32)
    batch = Batch(X, rng.integers(0, O, 8), lengths)
    path = tmp_path / "pooled.ckpt"
    trainer = Trainer(model, Adam(model.params, model.grads, lr=0.05), seed=0, checkpoint_path=str(path))
    before = trainer.evaluate([batch])
    trainer.fit([batch], max_steps=30)
    after = trainer.evaluate([batch])
    assert after < 0.5 * before
    loaded, _ = load_model(str(path))
    assert loaded.pooling == "attention"
    np.testing.assert_array_equal(loaded.predict(X, lengths=lengths), model.predict(X, lengths=lengths))


def test_pooled_models_refuse_truncated_bptt(rng):
    model = make_model("gru", "mean", 4, 1, False, np.float64)
    assert model.carries_state is False and make_model("gru", "last", 4, 1, False, np.float64).carries_state
    with pytest.raises(ValueError, match=r"tbptt: SequenceModel trains on whole batches"):
        Trainer(model, Adam(model.params, model.grads), tbptt=3)
    from rnncore.training.data import tbptt_chunks
    X, lengths, _, _ = problem(model, rng, T=6, B=3, dtype=np.float64)
    first = next(iter(tbptt_chunks(Batch(X, np.zeros(3, int), lengths), 3, per_step=False)))
    with pytest.raises(ValueError, match=r"pooling='mean' reads every step of a sequence in one pass"):
        model.chunk_loss(first)
