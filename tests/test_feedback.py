"""rnncore.FeedbackRNN (the gated-feedback RNN of Chung et al. 2015) against three oracles: the numpy
reference written from the paper's equations (rnncore.layers.reference_feedback), a hand-written PyTorch
version of the same equations run by autograd on the same weights, and float64 central differences
through the layer's own inference call. Outputs, final states and every gradient (dx, dh0, dc0, each
parameter) over a grid of cells, gated or not, hidden 5/16/17/33, 1-3 layers, odd batches, ragged
lengths, nonzero initial states, both layouts and both dtypes.

Then: bit-identical results on 1, 2 and 3 threads and for a sequence in any batch; torch.nn's layers
as the 1-layer ungated case; the Trainer, SequenceModel and the CLI with gf-* cells; bad input."""
import itertools

import numpy as np
import pytest
import torch

import rnncore
from conftest import assert_close, central_diff
from rnncore.layers import reference_feedback as ref

TOL = {np.float32: (2e-5, 2e-5), np.float64: (1e-10, 1e-11)}     # (rtol, atol)
I = 4


# ------------------------------------------------------------------------------------------------
# the PyTorch oracle: the paper's equations, written again with torch ops (autograd differentiates)
# ------------------------------------------------------------------------------------------------

def torch_forward(cell, L, H, p, x, h0, c0, lengths):
    """p: torch tensors by parameter name; x (T, B, I); h0, c0 (L, B, H); returns out, h_n, c_n."""
    T, B, _ = x.shape
    G = ref.GATES[cell]
    cand = slice(2 * H, 3 * H) if cell == "lstm" else slice((G - 1) * H, G * H)
    hs = [h0[j] for j in range(L)]
    cs = [c0[j] for j in range(L)] if cell == "lstm" else None
    outs = []
    for t in range(T):
        act = torch.as_tensor(t < lengths)[:, None]
        hstar = torch.cat(hs, dim=1)
        inp, new_h, new_c = x[t], [], []
        for j in range(L):
            W, U = p[f"weight_ih_l{j}"], p[f"weight_hh_l{j}"]
            b_ih = p.get(f"bias_ih_l{j}", torch.zeros(G * H, dtype=x.dtype))
            b_hh = p.get(f"bias_hh_l{j}", torch.zeros(G * H, dtype=x.dtype))
            if f"weight_gx_l{j}" in p:      # g^{i->j} = σ(w_g h^{j-1}_t + u_g h*_{t-1})
                g = torch.sigmoid(inp @ p[f"weight_gx_l{j}"].T + hstar @ p[f"weight_gh_l{j}"].T)
            else:
                g = torch.ones(B, L, dtype=x.dtype)
            # Σ_i g^{i->j} U^{i->j} h^i_{t-1}, layer by layer
            s = sum(g[:, i:i + 1] * (hs[i] @ U[cand, i * H:(i + 1) * H].T) for i in range(L)) + b_hh[cand]
            ax = inp @ W.T + b_ih
            ah = hstar @ U.T + b_hh
            if cell == "tanh":
                h = torch.tanh(ax + s)
            elif cell == "gru":
                r = torch.sigmoid(ax[:, :H] + ah[:, :H])
                z = torch.sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
                n = torch.tanh(ax[:, 2 * H:] + r * s)
                h = (1 - z) * n + z * hs[j]
            else:
                i_, f_ = torch.sigmoid(ax[:, :H] + ah[:, :H]), torch.sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
                o_ = torch.sigmoid(ax[:, 3 * H:] + ah[:, 3 * H:])
                c = f_ * cs[j] + i_ * torch.tanh(ax[:, 2 * H:3 * H] + s)
                h = o_ * torch.tanh(c)
                new_c.append(torch.where(act, c, cs[j]))
            h = torch.where(act, h, hs[j])
            new_h.append(h)
            inp = h
        hs = new_h
        if cell == "lstm":
            cs = new_c
        outs.append(torch.where(act, hs[-1], torch.zeros_like(hs[-1])))
    return torch.stack(outs), torch.stack(hs), (torch.stack(cs) if cell == "lstm" else None)


def torch_run(layer, params, x, hx, lengths, d_out, d_state):
    """Everything the layer returns, from the torch oracle (float64, time-major in and out)."""
    cell, L, H = layer.cell, layer.num_layers, layer.hidden_size
    lstm = cell == "lstm"
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    h0, c0 = (hx if lstm else (hx, np.zeros_like(hx)))
    tx, th0, tc0 = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, h0, c0))
    out, h_n, c_n = torch_forward(cell, L, H, tp, tx, th0, tc0, np.asarray(lengths))
    dh, dc = (d_state if lstm else (d_state, None))
    loss = (out * torch.tensor(d_out)).sum() + (h_n * torch.tensor(dh)).sum()
    if lstm:
        loss = loss + (c_n * torch.tensor(dc)).sum()
    loss.backward()
    res = {"output": out.detach().numpy(), "h_n": h_n.detach().numpy(), "dx": tx.grad.numpy(),
           "dh0": th0.grad.numpy(), "grads": {k: v.grad.numpy() for k, v in tp.items()}}
    if lstm:
        res.update(c_n=c_n.detach().numpy(), dc0=tc0.grad.numpy())
    return res


# ------------------------------------------------------------------------------------------------
# the problem, and the layer and reference runs in the same form
# ------------------------------------------------------------------------------------------------

def problem(layer, rng, T, B, ragged=True):
    """float64 weights, inputs, nonzero distinct h0 / c0, lengths and upstream gradients (time-major)."""
    L, H, lstm = layer.num_layers, layer.hidden_size, layer.cell == "lstm"
    # weights of a scale that keeps units off saturation whatever the fan-in (L*H feedback inputs)
    scale = 2.0 / np.sqrt(L * H + layer.input_size)
    params = {k: rng.uniform(-scale, scale, v.shape) for k, v in layer.params.items()}
    x = rng.standard_normal((T, B, layer.input_size))
    st = lambda: rng.uniform(-0.8, 0.8, (L, B, H))
    hx = (st(), st()) if lstm else st()
    lengths = rng.integers(1, T + 1, B) if ragged else np.full(B, T)
    if ragged:
        lengths[0] = T
    d_out = rng.standard_normal((T, B, H)) * (np.arange(T)[:, None] < lengths)[:, :, None]
    d_state = (st(), st()) if lstm else st()
    return params, x, hx, lengths, d_out, d_state


def widen(tree, dtype):
    """Round to the layer's dtype and back to float64: both oracles see exactly the layer's values."""
    if isinstance(tree, dict):
        return {k: widen(v, dtype) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(widen(v, dtype) for v in tree)
    return np.asarray(tree).astype(dtype).astype(np.float64)


def layer_run(layer, params, x, hx, lengths, d_out, d_state):
    """The layer on time-major problem arrays (transposed for batch_first), results time-major."""
    dt = layer.dtype
    bf = layer.batch_first
    tb = (lambda a: np.ascontiguousarray(a.swapaxes(0, 1))) if bf else (lambda a: a)
    layer.load_state_dict({k: v.astype(dt) for k, v in params.items()})
    layer.zero_grad()
    cast = lambda s: tuple(a.astype(dt) for a in s) if isinstance(s, tuple) else s.astype(dt)
    out, state, bp = layer.forward_train(tb(x.astype(dt)), cast(hx), lengths)
    dx, dhx = bp(tb(d_out.astype(dt)), cast(d_state))
    lstm = layer.cell == "lstm"
    res = {"output": tb(out), "h_n": state[0] if lstm else state, "dx": tb(dx),
           "dh0": dhx[0] if lstm else dhx, "grads": {k: v.copy() for k, v in layer.grads.items()}}
    if lstm:
        res.update(c_n=state[1], dc0=dhx[1])
    return res


def reference_run(layer, params, x, hx, lengths, d_out, d_state):
    out, state, cache = ref.forward(layer.config, params, x, hx, lengths)
    dx, dhx, grads = ref.backward(layer.config, params, cache, d_out, d_state)
    lstm = layer.cell == "lstm"
    res = {"output": out, "h_n": state[0] if lstm else state, "dx": dx,
           "dh0": dhx[0] if lstm else dhx, "grads": grads}
    if lstm:
        res.update(c_n=state[1], dc0=dhx[1])
    return res


def compare(got, want, rtol, atol, oracle):
    """Every quantity; returns the worst absolute error (for the figures)."""
    worst = 0.0
    for key in ("output", "h_n", "c_n", "dx", "dh0", "dc0"):
        if key in want:
            assert_close(got[key], want[key], rtol, atol, f"[vs {oracle}] {key}")
            worst = max(worst, float(np.abs(got[key] - want[key]).max()))
    assert set(got["grads"]) == set(want["grads"])
    for k, w in want["grads"].items():
        assert_close(got["grads"][k], w, rtol, atol, f"[vs {oracle}] grad {k}")
        worst = max(worst, float(np.abs(got["grads"][k] - w).max()))
    return worst


# The grid: every cell, gated and not, with every hidden size and depth, both layouts, odd batches.
GRID = [(cell, gated, H, L, bf, B)
        for (cell, gated), (H, L, bf, B) in itertools.product(
            itertools.product(["tanh", "gru", "lstm"], [True, False]),
            [(5, 3, False, 3), (16, 1, True, 5), (17, 2, False, 1), (33, 2, True, 3)])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", GRID, ids=lambda c: "{}-{}-H{}-L{}-{}-B{}".format(
    c[0], "gated" if c[1] else "ungated", c[2], c[3], "bf" if c[4] else "tm", c[5]))
def test_feedback_matches_reference_and_torch(case, dtype, rng):
    cell, gated, H, L, bf, B = case
    layer = rnncore.FeedbackRNN(I, H, L, cell=cell, gated=gated, batch_first=bf, dtype=dtype, seed=0)
    params, x, hx, lengths, d_out, d_state = problem(layer, rng, T=5, B=B)
    got = layer_run(layer, params, x, hx, lengths, d_out, d_state)
    for key, a in [("output", got["output"]), ("dx", got["dx"]), ("h_n", got["h_n"])] + list(got["grads"].items()):
        assert a.dtype == np.dtype(dtype), f"{key}: {a.dtype}, layer dtype {np.dtype(dtype)}"
    wide = widen((params, x, hx, lengths, d_out, d_state), dtype)
    wide = wide[:3] + (lengths,) + wide[4:]
    want = reference_run(layer, *wide)
    compare(got, want, *TOL[dtype], "numpy reference")
    compare(got, torch_run(layer, *wide), *TOL[dtype], "PyTorch autograd")


@pytest.mark.parametrize("cell,gated", list(itertools.product(["tanh", "gru", "lstm"], [True, False])))
def test_feedback_central_differences(cell, gated, rng):
    """float64 gradients of every parameter, x and hx against central differences of layer(x)."""
    layer = rnncore.FeedbackRNN(3, 3, 2, cell=cell, gated=gated, dtype=np.float64, seed=0)
    params, x, hx, lengths, d_out, d_state = problem(layer, rng, T=4, B=3)
    got = layer_run(layer, params, x, hx, lengths, d_out, d_state)
    lstm = cell == "lstm"
    states = list(hx) if lstm else [hx]
    dstates = list(d_state) if lstm else [d_state]

    def loss():
        out, st = layer(x, tuple(states) if lstm else states[0], lengths)
        st = st if lstm else (st,)
        return float((out * d_out).sum() + sum((s * d).sum() for s, d in zip(st, dstates)))

    names = list(layer.params)
    numeric = central_diff(loss, [x] + states + [layer.params[n] for n in names], eps=1e-6)
    labels = ["dx", "dh0"] + (["dc0"] if lstm else []) + [f"grad {n}" for n in names]
    analytic = [got["dx"], got["dh0"]] + ([got["dc0"]] if lstm else []) + [got["grads"][n] for n in names]
    for label, a, n in zip(labels, analytic, numeric):
        assert_close(a, n, 1e-6, 1e-8, "[vs central differences] " + label)


@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm"])
def test_one_ungated_layer_is_torch_nn(cell, rng):
    """num_layers=1, gated=False: the recurrence is torch.nn.RNN / GRU / LSTM's with the same weights."""
    layer = rnncore.FeedbackRNN(I, 6, 1, cell=cell, gated=False, dtype=np.float64)
    params, x, hx, lengths, d_out, d_state = problem(layer, rng, T=5, B=3, ragged=False)
    got = layer_run(layer, params, x, hx, lengths, d_out, d_state)
    mod = {"tanh": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](I, 6).double()
    with torch.no_grad():
        for k, v in params.items():
            getattr(mod, k).copy_(torch.tensor(v))
    thx = tuple(torch.tensor(a) for a in hx) if cell == "lstm" else torch.tensor(hx)
    out, st = mod(torch.tensor(x), thx)
    assert_close(got["output"], out.detach().numpy(), 1e-12, 1e-12, "torch.nn output")
    assert_close(got["h_n"], (st[0] if cell == "lstm" else st).detach().numpy(), 1e-12, 1e-12, "torch.nn h_n")


# ------------------------------------------------------------------------------------------------
# bits: thread counts and batch composition
# ------------------------------------------------------------------------------------------------

def _per_sequence(res):
    """A sequence's own results, (B, ...) first: everything but the parameter gradients."""
    out = {"output": res["output"].swapaxes(0, 1), "dx": res["dx"].swapaxes(0, 1)}
    for k in ("h_n", "c_n", "dh0", "dc0"):
        if k in res:
            out[k] = res[k].swapaxes(0, 1)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm"])
def test_same_bits_on_any_thread_count_and_in_any_batch(cell, dtype):
    rng = np.random.default_rng(3)
    layer = rnncore.FeedbackRNN(I, 17, 3, cell=cell, dtype=dtype, seed=1)
    runs = []
    with rnncore.config_context(small_work_flops=0):
        params, x, hx, lengths, d_out, d_state = problem(layer, rng, T=6, B=7)
        for n in (1, 2, 3):
            with rnncore.threads(n):
                runs.append(layer_run(layer, params, x, hx, lengths, d_out, d_state))
        for r in runs[1:]:      # everything, the parameter gradients included
            for k in ("output", "h_n", "dx", "dh0"):
                np.testing.assert_array_equal(r[k], runs[0][k], err_msg=k)
            for k, g in runs[0]["grads"].items():
                np.testing.assert_array_equal(r["grads"][k], g, err_msg=k)
        # sequences 0..2 inside bigger batches, at other positions: their own results keep their bits
        want = _per_sequence(layer_run(layer, params, *_subset((x, hx, lengths, d_out, d_state), [0, 1, 2])))
        for B, idx in [(4, [3, 1, 0]), (9, [0, 8, 4]), (20, [19, 2, 11])]:
            _, *big = problem(layer, rng, T=6, B=B)
            big = _place(big, (x, hx, lengths, d_out, d_state), [0, 1, 2], idx)
            with rnncore.threads(2):
                got = _per_sequence(layer_run(layer, params, *big))
            for k, w in want.items():
                np.testing.assert_array_equal(got[k][idx], w, err_msg=f"{k}, batch {B} at {idx}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,gated,L,bf", [("tanh", True, 2, False), ("gru", True, 3, True),
                                             ("lstm", True, 2, False), ("lstm", False, 1, True)])
def test_streaming_gives_the_whole_sequence_bits_at_every_step(cell, gated, L, bf, dtype):
    """``state = layer.initial_state(B, hx)``, ``y_t, state = layer.step(x_t, state)``: every y_t and
    the final states are, bit for bit, what the whole-sequence call gives (nonzero initial states,
    batch 1 and 5, one sequence given as (I,) steps); the state passed in is left as it was."""
    rng = np.random.default_rng(5)
    layer = rnncore.FeedbackRNN(I, 17, L, cell=cell, gated=gated, batch_first=bf, dtype=dtype, seed=2)
    for B in (1, 5):
        x = rng.standard_normal((B, 6, I) if bf else (6, B, I)).astype(dtype)
        h0 = rng.standard_normal((L, B, 17)).astype(dtype)
        hx = (h0, rng.standard_normal((L, B, 17)).astype(dtype)) if cell == "lstm" else h0
        out, h_n = layer(x, hx)
        state = layer.initial_state(B, hx)
        for t in range(6):
            y, state = layer.step(x[:, t] if bf else x[t], state)
            np.testing.assert_array_equal(y, out[:, t] if bf else out[t])
        for got, want in zip(state.hx if cell == "lstm" else (state.hx,),
                             h_n if cell == "lstm" else (h_n,)):
            np.testing.assert_array_equal(got, want)
    x1 = x[0] if bf else x[:, 0]            # one sequence, its steps as (I,) vectors
    one = layer.initial_state(1, tuple(a[:, :1] for a in hx) if cell == "lstm" else hx[:, :1])
    y, one2 = layer.step(x1[0], one)
    assert y.shape == (17,)
    np.testing.assert_array_equal(y, layer(x1[:1][None] if bf else x1[:1, None],
                                           one.hx)[0].reshape(17))
    assert not np.array_equal(one.h, one2.h)            # the state given stays as it was
    with pytest.raises(TypeError, match="StreamState"):
        layer.step(x1[0], one.hx)
    with pytest.raises(ValueError, match="x_t"):
        layer.step(np.zeros(I + 1, dtype), one)


def _subset(arrays, idx):
    x, hx, lengths, d_out, d_state = arrays
    st = lambda s: tuple(a[:, idx] for a in s) if isinstance(s, tuple) else s[:, idx]
    return x[:, idx], st(hx), lengths[idx], d_out[:, idx], st(d_state)


def _place(big, small, src, dst):
    x, hx, lengths, d_out, d_state = (a.copy() if isinstance(a, np.ndarray) else tuple(b.copy() for b in a)
                                      for a in big)
    sx, shx, slen, sd, sds = small

    def put(a, b):
        if isinstance(a, tuple):
            for u, v in zip(a, b):
                u[:, dst] = v[:, src]
        else:
            a[:, dst] = b[:, src]
    put(x, sx), put(hx, shx), put(d_out, sd), put(d_state, sds)
    lengths[dst] = slen[src]
    return x, hx, lengths, d_out, d_state


# ------------------------------------------------------------------------------------------------
# the layer's conventions, training, and bad input
# ------------------------------------------------------------------------------------------------

def test_conventions(rng):
    gf = rnncore.FeedbackRNN(I, 8, 3, cell="lstm", seed=4)
    assert list(gf.params) == [f"{w}_l{k}" for k in range(3) for w in
                               ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_gx", "weight_gh")]
    assert gf.weight_hh_l1.shape == (32, 24) and gf.weight_gh_l2.shape == (3, 24)
    again = type(gf)(**gf.config, seed=4)
    for k, v in gf.state_dict().items():
        np.testing.assert_array_equal(again.params[k], v)
    x = rng.standard_normal((5, 2, I)).astype(np.float32)
    out, (h, c) = gf(x)
    out2, (h2, c2), bp = gf.forward_train(x)
    np.testing.assert_array_equal(out, out2)
    assert out.shape == (5, 2, 8) and h.shape == c.shape == (3, 2, 8)
    np.testing.assert_array_equal(out[-1], h[-1])
    gf.params["weight_ih_l0"] = gf.params["weight_ih_l0"] * 0.5      # a change after the forward pass
    with pytest.raises(RuntimeError, match="changed"):
        bp(np.ones_like(out))
    gf.double()
    assert gf.dtype == np.float64 and gf(x)[0].dtype == np.float64
    unbatched, _ = gf(x[:, 0])
    np.testing.assert_allclose(unbatched, gf(x[:, :1])[0][:, 0], rtol=1e-12)


@pytest.mark.parametrize("bad, err, match", [
    (dict(dropout=0.2), ValueError, "no dropout"),
    (dict(bidirectional=True), ValueError, "one direction"),
    (dict(cell="rnn"), ValueError, "cell"),
    (dict(gated=1), TypeError, "gated"),
    (dict(num_layers=0), ValueError, "num_layers"),
])
def test_bad_arguments(bad, err, match):
    with pytest.raises(err, match=match):
        rnncore.FeedbackRNN(**{"input_size": 3, "hidden_size": 4, "num_layers": 2, **bad})


def test_bad_input(rng):
    gf = rnncore.FeedbackRNN(3, 4, 2, cell="gru")
    x = rng.standard_normal((5, 2, 3))
    with pytest.raises(ValueError, match="input_size=3"):
        gf(x[..., :2])
    with pytest.raises(ValueError, match="lengths must be between"):
        gf(x, lengths=[6, 2])
    with pytest.raises(ValueError, match="h0 must have shape"):
        gf(x, np.zeros((3, 2, 4)))
    with pytest.raises(TypeError, match="one array h0"):
        gf(x, (np.zeros((2, 2, 4)), np.zeros((2, 2, 4))))
    with pytest.raises(TypeError, match="tuple"):
        rnncore.FeedbackRNN(3, 4, 2, cell="lstm")(x, np.zeros((2, 2, 4)))
    _, _, bp = gf.forward_train(x)
    with pytest.raises(ValueError, match="d_output must have shape"):
        bp(np.zeros((5, 2, 3)))
    bp(np.zeros((5, 2, 4)))
    with pytest.raises(RuntimeError, match="already run"):
        bp(np.zeros((5, 2, 4)))


@pytest.mark.parametrize("cell", ["gf-tanh", "gf-gru", "gf-lstm"])
def test_sequence_model_trains_with_feedback(cell, tmp_path):
    """A gf-* SequenceModel learns a copy task with the Trainer, and its checkpoint loads back."""
    from rnncore.training.data import Batch
    from rnncore.training.optim import Adam
    rng = np.random.default_rng(0)
    model = rnncore.SequenceModel(cell, hidden_size=12, num_layers=2, vocab_size=5, embedding_dim=4, seed=0)
    assert isinstance(model.rnn, rnncore.FeedbackRNN) and model.rnn.cell == cell[3:]
    X = rng.integers(0, 5, (8, 6))
    batches = [Batch(X, X.copy(), None)]
    trainer = rnncore.Trainer(model, Adam(model.params, model.grads, lr=0.05), seed=0,
                              checkpoint_path=str(tmp_path / "m.npz"), checkpoint_every=10)
    first = model.batch_loss(batches[0], is_train=False)[0]
    trainer.fit(batches, epochs=30)
    last = model.batch_loss(batches[0], is_train=False)[0]
    assert last < 0.3 * first, (first, last)
    loaded, _ = rnncore.load_model(str(tmp_path / "m.npz"))
    assert isinstance(loaded.rnn, rnncore.FeedbackRNN)
    for k, v in model.params.items():
        np.testing.assert_array_equal(loaded.params[k], v)


def test_cli_trains_and_samples_a_gf_gru(tmp_path, capsys):
    """`rnncore train --cell gf-gru` end to end (in this process), then `rnncore sample` from it."""
    from rnncore import cli
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def add(a, b):\n    return a + b\n\n" * 60, encoding="utf-8")
    ckpt = tmp_path / "gf.npz"
    code = cli.main(["train", "--data", str(corpus), "--out", str(ckpt), "--cell", "gf-gru", "--num-layers",
                     "2", "--steps", "4", "--hidden-size", "8", "--embedding-dim", "4", "--tbptt", "8",
                     "--batch-size", "3", "--threads", "1", "--no-progress", "--sample-length", "10",
                     "--eval-every", "2"])
    out = capsys.readouterr().out
    assert code in (0, None), out
    assert "model: GF-GRU, 2 layers of 8" in out and "validation:" in out
    assert cli.main(["sample", str(ckpt), "--length", "20", "--prime", "def ", "--seed", "1"]) in (0, None)
    assert capsys.readouterr().out.startswith("def ")


def test_example_runs_in_a_tiny_configuration(tmp_path):
    """examples/feedback.py end to end: both models' figures printed, the PNG written."""
    import pathlib
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "examples" / "feedback.py"), "--seconds", "0.5",
                        "--hidden", "24", "--max-chars", "20000", "--eval-every", "50", "--batch-size", "4",
                        "--tbptt", "16", "--val-chars", "1000", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import re
    rows = re.findall(r"^(stacked GRU|GF-GRU) \(3 x \d+\)\s+([\d,]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+) \(best",
                      r.stdout, re.M)
    assert [row[0] for row in rows] == ["stacked GRU", "GF-GRU"], r.stdout
    (_, n_stacked, *_), (_, n_gf, *_) = rows
    n_stacked, n_gf = int(n_stacked.replace(",", "")), int(n_gf.replace(",", ""))
    assert abs(n_stacked - n_gf) < 0.05 * n_stacked, rows          # the same parameter count, near enough
    for _, _, steps, seconds, bits in rows:
        assert int(steps) > 0 and float(seconds) >= 0.5 and 0 < float(bits) < 10, rows
    assert (tmp_path / "feedback.png").is_file()


@pytest.mark.parametrize("cell,torch_cell", [("tanh", "RNN"), ("gru", "GRU"), ("lstm", "LSTM")])
def test_stacked_rnn_is_the_special_case_without_feedback(cell, torch_cell, rng):
    """gated=False and U^{i->j} = 0 for i != j: a FeedbackRNN is rnncore's stacked RNN / GRU / LSTM."""
    L, H = 3, 7
    stacked = getattr(rnncore, torch_cell)(I, H, L, dtype=np.float64, seed=0)
    gf = rnncore.FeedbackRNN(I, H, L, cell=cell, gated=False, dtype=np.float64)
    state = {}
    for k in range(L):
        w_hh = np.zeros((ref.GATES[cell] * H, L * H))
        w_hh[:, k * H:(k + 1) * H] = stacked.params[f"weight_hh_l{k}"]       # only U^{k->k}
        state.update({f"weight_ih_l{k}": stacked.params[f"weight_ih_l{k}"], f"weight_hh_l{k}": w_hh,
                      f"bias_ih_l{k}": stacked.params[f"bias_ih_l{k}"], f"bias_hh_l{k}": stacked.params[f"bias_hh_l{k}"]})
    gf.load_state_dict(state)
    x = rng.standard_normal((6, 5, I))
    lengths = [6, 2, 5, 1, 4]
    want_out, want_state = stacked(x, lengths=lengths)
    out, st = gf(x, lengths=lengths)
    assert_close(out, want_out, 1e-12, 1e-12, "output")
    for a, b in zip(st if cell == "lstm" else [st], want_state if cell == "lstm" else [want_state]):
        assert_close(a, b, 1e-12, 1e-12, "final state")
