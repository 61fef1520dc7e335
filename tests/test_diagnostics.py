"""rnncore.models.diagnostics against independent computations: ∂L/∂h_t from torch autograd on a network
unrolled step by step with torch's own cells (h_t.retain_grad()), gate saturation from the gate
formulas evaluated by hand, and NaN/Inf localisation with values injected at known places."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rnncore
from rnncore.models.diagnostics import diagnose, first_nonfinite, gate_saturation, gradient_norms, plot_gradient_flow
from rnncore.models.estimators import RNNClassifier
from rnncore.models.sequence import SequenceModel

TORCH_CELLS = {"RNN_TANH": torch.nn.RNNCell, "LSTM": torch.nn.LSTMCell, "GRU": torch.nn.GRUCell}


def torch_unrolled(config, params, x, lengths, head=None):
    """Run the stack step by step with torch cells on the given weights (float64).

    Returns (hs, out, h_n): hs[(layer, direction)][t] is the cell's new hidden state at step t (a leaf
    of the graph whose .grad will be ∂L/∂h_t), out the top layer's output (T, B, D*H), h_n the final
    states of the top layer [per direction]. Past a sequence's length the state is carried and the
    output is 0 (pack_padded_sequence semantics)."""
    mode, H, L = config["mode"], config["hidden_size"], config["num_layers"]
    D = 2 if config["bidirectional"] else 1
    T, B = x.shape[:2]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    valid = torch.tensor((np.arange(T)[:, None] < lengths[None, :]).astype(np.float64))[:, :, None]
    inp = torch.tensor(x, dtype=torch.float64)
    hs = {}
    for k in range(L):
        outs, h_n = [], []
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            kw = {"nonlinearity": "tanh"} if mode == "RNN_TANH" else {}
            cell = TORCH_CELLS[mode](inp.shape[2], H, dtype=torch.float64, **kw)
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(torch.tensor(params[name + sfx]))
            h = torch.zeros(B, H, dtype=torch.float64)
            c = torch.zeros(B, H, dtype=torch.float64)
            ys = [None] * T
            hs[(k, d)] = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                if mode == "LSTM":
                    h_new, c_new = cell(inp[t], (h, c))
                    c = valid[t] * c_new + (1 - valid[t]) * c
                else:
                    h_new = cell(inp[t], h)
                h_new.retain_grad()
                hs[(k, d)][t] = h_new
                h = valid[t] * h_new + (1 - valid[t]) * h
                ys[t] = valid[t] * h_new
            outs.append(torch.stack(ys))
            h_n.append(h)
        inp = torch.cat(outs, dim=2)
    return hs, inp, h_n


def sequence_model_loss(model, out, lengths, y, loss):
    """The SequenceModel's head and loss on torch's stack output (as models.py / Trainer define them)."""
    W = torch.tensor(model.head.params["weight"], dtype=torch.float64)
    b = torch.tensor(model.head.params["bias"], dtype=torch.float64)
    T, B = out.shape[:2]
    D = model.rnn.num_directions
    P = out.shape[2] // D
    if model.head_kind == "many_to_one":
        lens = np.full(B, T) if lengths is None else np.asarray(lengths)
        valid = torch.tensor(np.arange(T)[:, None] < lens[None, :])
        if model.pooling == "last":
            Hlast = out[torch.tensor(lens - 1), torch.arange(B)]
            if D == 2:
                Hlast = torch.cat([Hlast[:, :P], out[0, :, P:]], dim=1)
        elif model.pooling == "max":
            Hlast = out.masked_fill(~valid[..., None], -torch.inf).max(dim=0).values
        else:   # attention: u_t = tanh(W h_t + b), α = softmax over the valid t of q · u_t
            pw, pb, pq = (torch.tensor(model.pool.params[k]) for k in ("weight", "bias", "query"))
            e = (torch.tanh(out @ pw.T + pb) @ pq).masked_fill(~valid, -torch.inf)
            Hlast = (torch.softmax(e, dim=0)[..., None] * out).sum(0)
        Y = Hlast @ W.T + b
        if loss == "mse":
            return ((Y - torch.tensor(y)) ** 2).mean()
        return F.cross_entropy(Y, torch.tensor(y))
    Y = out @ W.T + b
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    mask = torch.tensor(np.arange(T)[:, None] < lengths[None, :])
    if loss == "mse":
        return ((Y - torch.tensor(y)) ** 2)[mask].mean()
    return F.cross_entropy(Y[mask], torch.tensor(y)[mask])


CASES = [
    ("lstm_2layers_many_to_one", dict(cell="lstm", num_layers=2), "many_to_one", [9, 4, 1, 7]),
    ("gru_bidirectional", dict(cell="gru", bidirectional=True), "many_to_one", [9, 3, 6, 9]),
    ("rnn_tanh_2layers_regression", dict(cell="rnn", num_layers=2), "regression", [5, 9, 2, 8]),
    ("lstm_bidir_2layers_equal_lengths", dict(cell="lstm", num_layers=2, bidirectional=True), "many_to_one", None),
    ("gru_attention_pooling", dict(cell="gru", pooling="attention"), "many_to_one", [9, 3, 6, 9]),
    ("lstm_bidir_max_pooling", dict(cell="lstm", bidirectional=True, pooling="max"), "many_to_one", [2, 9, 5, 7]),
]


@pytest.mark.parametrize("name, kw, head, lengths", CASES, ids=[c[0] for c in CASES])
def test_dh_matches_torch_autograd_on_unrolled_cells(name, kw, head, lengths):
    rng = np.random.default_rng(0)
    T, B, I, O = 9, 4, 3, 3
    model = SequenceModel(hidden_size=5, input_size=I, output_size=O, head=head, seed=1,
                          dtype=np.float64, **kw)
    X = rng.standard_normal((T, B, I))
    if head == "regression":
        y, loss = rng.standard_normal((T, B, O)), "mse"
    else:
        y, loss = rng.integers(0, O, B), "cross_entropy"
    report = diagnose(model, X, y, lengths=lengths)

    hs, out, _ = torch_unrolled(model.rnn.config, model.rnn.params, X, lengths)
    L = sequence_model_loss(model, out, lengths, y, loss)
    L.backward()
    assert report.loss == pytest.approx(L.item(), rel=1e-12)
    D = model.rnn.num_directions
    for k in range(model.num_layers):
        for d in range(D):
            expected = np.stack([h.grad.numpy() if h.grad is not None else np.zeros((B, 5))
                                 for h in hs[(k, d)]])
            np.testing.assert_allclose(report.dh[(k, d)], expected, rtol=1e-9, atol=1e-13)
            np.testing.assert_allclose(report.dh_norm[k, d], np.sqrt((expected ** 2).sum((1, 2))),
                                       rtol=1e-9, atol=1e-13)
            np.testing.assert_allclose(report.dh_norm_per_sequence[k, d], np.sqrt((expected ** 2).sum(2)),
                                       rtol=1e-9, atol=1e-13)
    # the gradient really reaches the early steps through later ones (not just the output at t)
    assert (report.dh_norm[0, 0, :3] > 0).all()


def test_token_input_language_model_matches_torch():
    # embedding -> GRU -> logits at every step, cross-entropy over the valid positions
    rng = np.random.default_rng(11)
    T, B, V = 7, 3, 6
    model = SequenceModel("gru", hidden_size=5, vocab_size=V, embedding_dim=4, seed=2, dtype=np.float64)
    ids = rng.integers(0, V, (T, B))
    y = rng.integers(0, V, (T, B))
    lengths = [7, 2, 5]
    report = diagnose(model, ids, y, lengths=lengths)
    E = model.params["embedding.weight"][ids]
    hs, out, _ = torch_unrolled(model.rnn.config, model.rnn.params, E, lengths)
    L = sequence_model_loss(model, out, lengths, y, "cross_entropy")
    L.backward()
    assert report.loss == pytest.approx(L.item(), rel=1e-12)
    np.testing.assert_allclose(report.dh[(0, 0)], np.stack([h.grad.numpy() for h in hs[(0, 0)]]),
                               rtol=1e-9, atol=1e-13)


def test_bare_layer_default_loss_is_sum_of_top_final_state():
    rng = np.random.default_rng(1)
    layer = rnncore.LSTM(3, 4, num_layers=2, seed=0)
    X = rng.standard_normal((7, 2, 3)).astype(np.float32)
    lengths = [7, 4]
    report = diagnose(layer, X, lengths=lengths)
    hs, _, h_n = torch_unrolled(layer.config, layer.params, X.astype(np.float64), lengths)
    sum(h.sum() for h in h_n).backward()
    for k in range(2):
        expected = np.stack([h.grad.numpy() for h in hs[(k, 0)]])
        np.testing.assert_allclose(report.dh[(k, 0)], expected, rtol=1e-9, atol=1e-13)
    assert gradient_norms(layer, X, lengths=lengths).shape == (2, 1, 7)
    # an explicit d_output of the layer's shape: L = Σ_t <d_output_t, h_t>
    dout = rng.standard_normal((7, 2, 4))
    r2 = diagnose(layer, X, d_output=dout)
    hs, out, _ = torch_unrolled(layer.config, layer.params, X.astype(np.float64), None)
    (out * torch.tensor(dout)).sum().backward()
    np.testing.assert_allclose(r2.dh[(1, 0)], np.stack([h.grad.numpy() for h in hs[(1, 0)]]), rtol=1e-9)
    with pytest.raises(ValueError, match=r"d_output: expected the shape of the layer's output \(7, 2, 4\), got"):
        diagnose(layer, X, d_output=np.ones((7, 2, 3)))


def test_vanishing_gradient_of_a_contracting_tanh_rnn():
    # with ‖W_hh‖ = 0.5 and |tanh'| <= 1, ‖∂L/∂h_1‖ <= 0.5^(T-1) ‖∂L/∂h_T‖ (seeds: |W_R|^T |g'|^T)
    layer = rnncore.RNN(2, 6, seed=0, dtype=np.float64)
    Q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((6, 6)))
    layer.params["weight_hh_l0"][...] = 0.5 * Q
    X = np.random.default_rng(3).standard_normal((30, 3, 2))
    r = diagnose(layer, X)
    assert r.ratio() <= 0.5 ** 29 * (1 + 1e-9)
    assert r.ratio() > 0


def test_saturation_matches_hand_computation():
    # one LSTM layer with W_hh = 0: each gate depends on x_t only, σ(W x + b) by hand
    rng = np.random.default_rng(4)
    T, B, I, H = 6, 5, 2, 3
    layer = rnncore.LSTM(I, H, seed=0, dtype=np.float64)
    layer.params["weight_hh_l0"][...] = 0
    layer.params["weight_ih_l0"][...] = rng.normal(0, 3, (4 * H, I))
    X = rng.normal(0, 2, (T, B, I))
    lengths = np.array([6, 2, 4, 1, 5])
    X[np.arange(T)[:, None] >= lengths[None, :]] = 1e3      # padding that would saturate everything
    sig = lambda a: 0.5 * (1 + np.tanh(a / 2))                # σ, without overflow  # noqa: E731
    a = X @ layer.params["weight_ih_l0"].T + layer.params["bias_ih_l0"] + layer.params["bias_hh_l0"]
    i, f, g, o = sig(a[..., :H]), sig(a[..., H:2 * H]), np.tanh(a[..., 2 * H:3 * H]), sig(a[..., 3 * H:])
    c = np.zeros((B, H))
    tanh_c = np.zeros((T, B, H))
    for t in range(T):
        c = f[t] * c + i[t] * g[t]
        tanh_c[t] = np.tanh(c)
    valid = np.arange(T)[:, None] < lengths[None, :]
    for thr in (0.05, 0.2):
        sat = gate_saturation(layer, X, lengths=lengths, threshold=thr)[(0, 0)]
        for name, v, lo in (("i", i, 0), ("f", f, 0), ("o", o, 0), ("g", g, -1), ("tanh_c", tanh_c, -1)):
            vv = v[valid]
            assert sat[name]["low"] == pytest.approx(np.mean(vv < lo + thr), abs=1e-12), (name, thr)
            assert sat[name]["high"] == pytest.approx(np.mean(vv > 1 - thr), abs=1e-12), (name, thr)
            assert sat[name]["saturated"] == pytest.approx(np.mean((vv < lo + thr) | (vv > 1 - thr)))
        assert set(sat) == {"i", "f", "g", "o", "tanh_c"}
    # a sanity check that the test can fail: these weights do saturate some gates, not all
    assert 0 < sat["i"]["saturated"] < 1


def test_saturation_of_a_tanh_rnn_and_threshold_validation():
    layer = rnncore.RNN(1, 2, seed=0, dtype=np.float64)
    layer.params["weight_hh_l0"][...] = 0
    layer.params["weight_ih_l0"][...] = [[1.0], [10.0]]
    layer.params["bias_ih_l0"][...] = 0
    layer.params["bias_hh_l0"][...] = 0
    X = np.array([-2.0, -0.1, 0.1, 0.5]).reshape(4, 1, 1)
    # unit 0: tanh(-2) = -0.964 (low), others not; unit 1: tanh(±1) = ±0.76, tanh(-20), tanh(5): 2 of 4
    sat = gate_saturation(layer, X, threshold=0.05)[(0, 0)]["h"]
    assert sat["low"] == pytest.approx(2 / 8) and sat["high"] == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match=r"threshold: expected a number in \(0, 0.5\), got 0.7"):
        gate_saturation(layer, X, threshold=0.7)


def test_nan_in_input_is_located():
    model = SequenceModel("lstm", hidden_size=4, num_layers=2, input_size=3, output_size=2,
                          head="many_to_one", seed=0)
    X = np.random.default_rng(5).standard_normal((10, 3, 3))
    X[6, 1, 2] = np.nan
    nf = first_nonfinite(model, X, np.array([0, 1, 0]))
    assert (nf.pass_, nf.where, nf.step) == ("forward", "input", 6)


def test_nan_in_a_gate_is_located_at_layer_step_and_gate():
    # layer 1's forget-gate bias is NaN: f (and what depends on it) is NaN from step 0 of layer 1,
    # while i, g, o at step 0 read h_{-1} = 0 and stay finite; layer 0 is clean
    model = SequenceModel("lstm", hidden_size=4, num_layers=2, input_size=3, output_size=2,
                          head="many_to_one", seed=0)
    H = 4
    model.params["rnn.bias_ih_l1"][H + 2] = np.nan
    X = np.random.default_rng(6).standard_normal((8, 2, 3))
    r = diagnose(model, X, np.array([0, 1]))
    nf = r.first_nonfinite
    assert (nf.pass_, nf.where, nf.layer, nf.direction, nf.step) == ("forward", "rnn", 1, 0, 0)
    assert "f" in nf.names and not {"i", "g", "o"} & set(nf.names)


def test_nan_made_at_a_known_step_by_inf_times_zero():
    # weight_ih's g-gate column of feature 0 is +inf: a_g = ±inf (g = ±1, finite) while x_0 != 0,
    # and inf * 0 = NaN at the one step where x_0 = 0
    layer = rnncore.LSTM(2, 3, seed=0, dtype=np.float64)
    layer.params["weight_ih_l0"][2 * 3:3 * 3, 0] = np.inf
    X = np.random.default_rng(7).uniform(0.5, 1.0, (9, 2, 2))
    X[5, :, 0] = 0.0
    nf = diagnose(layer, X).first_nonfinite_forward
    assert (nf.where, nf.layer, nf.step) == ("rnn", 0, 5)
    assert "g" in nf.names and not {"i", "f", "o"} & set(nf.names)


def test_nonfinite_gradient_from_the_output_is_located():
    layer = rnncore.GRU(3, 4, num_layers=2, seed=0, dtype=np.float64)
    X = np.random.default_rng(8).standard_normal((10, 2, 3))
    dout = np.zeros((10, 2, 4))
    dout[3, 0, 1] = np.inf
    r = diagnose(layer, X, d_output=dout)
    assert r.first_nonfinite_forward is None
    nf = r.first_nonfinite_backward
    assert (nf.pass_, nf.where, nf.direction, nf.step) == ("backward", "d_output", 0, 3)


def test_backward_only_nan_names_the_gate():
    # GRU with b_hn = +inf: n = tanh(a + r * inf) = 1 exactly, so the forward pass is finite, but in
    # backward dr = da_n * (W_hn h + b_hn) = 0 * inf = NaN: the reset gate's gradient, at the first
    # step the backward pass reaches (t = T-1); z and n gradients are finite there
    T = 6
    layer = rnncore.GRU(2, 3, seed=0, dtype=np.float64)
    layer.params["bias_hh_l0"][2 * 3] = np.inf
    X = np.random.default_rng(9).standard_normal((T, 2, 2))
    r = diagnose(layer, X)
    assert r.first_nonfinite_forward is None
    nf = r.first_nonfinite_backward
    assert (nf.pass_, nf.where, nf.layer, nf.step, nf.names) == ("backward", "rnn", 0, T - 1, ("r",))
    assert r.first_nonfinite == nf
    assert np.isnan(r.dh[(0, 0)][T - 2]).any()       # from there on the state gradient is NaN


def test_clean_model_has_no_nonfinite_and_estimator_input(tmp_path):
    rng = np.random.default_rng(10)
    X = [rng.standard_normal((int(n), 2)) for n in rng.integers(3, 9, 60)]
    y = np.array(["a", "b"] * 30)
    clf = RNNClassifier(cell="gru", hidden_size=6, max_iter=2, random_state=0).fit(X, y)
    r = diagnose(clf, X, y)
    assert r.first_nonfinite is None
    assert r.dh_norm.shape == (1, 1, 8)
    # the loss the diagnostics compute is the classifier's cross-entropy on these sequences
    p = clf.predict_proba(X)
    expected = -np.mean(np.log(p[np.arange(60), np.searchsorted(clf.classes_, y)]))
    assert r.loss == pytest.approx(expected, rel=1e-4)
    sat = gate_saturation(clf, X)
    assert set(sat[(0, 0)]) == {"r", "z", "n"}
    with pytest.raises(ValueError, match="expected labels among classes_"):
        diagnose(clf, X, np.array(["c"] * 60))
    with pytest.raises(TypeError, match="model: expected a SequenceModel"):
        diagnose(object(), X, y)
    pytest.importorskip("matplotlib")
    path = plot_gradient_flow({"GRU": r}, tmp_path / "flow.png")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install(monkeypatch, tmp_path):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    layer = rnncore.RNN(1, 2, seed=0)
    r = diagnose(layer, np.ones((3, 1, 1), np.float32))
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_gradient_flow(r, tmp_path / "x.png")
