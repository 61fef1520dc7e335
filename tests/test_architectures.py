"""The seeds' architectures (rnncore.models.architectures): float64 central differences of every parameter and
input, PyTorch autograd on the same computation, training with the Trainer, forecasting helpers, and
the errors bad input gets."""
import numpy as np
import pytest
import torch

from conftest import assert_close, central_diff, check_all_params, check_checkpoint, fit
from rnncore.models.architectures import (AutonomousRNN, OneToMany, OutputFeedbackRNN, delay_windows,
                                   forecast, window_batches)
from rnncore.training.data import Batch
from rnncore.training.losses import softmax_cross_entropy
from rnncore.models.sequence import SequenceModel
from rnncore.training.optim import Adam
from rnncore.training.trainer import Trainer


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# ---------------------------------------------------------------------------------------------------
# sequence -> one: SequenceModel(head="many_to_one")
# ---------------------------------------------------------------------------------------------------

def _model_loss(model, X, Y, lengths, hx):
    logits, _ = model.forward(X, lengths=lengths, hx=hx, is_train=False)
    return softmax_cross_entropy(logits, Y, reduction="sum")[0]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_many_to_one_all_params_and_inputs_central_differences(rng, cell, bidirectional):
    T, B, I = 5, 3, 2
    model = SequenceModel(cell, hidden_size=3, num_layers=2, input_size=I, output_size=3, head="many_to_one",
                          bidirectional=bidirectional, dtype=np.float64, seed=4)
    X, Y, lengths = rng.standard_normal((T, B, I)), rng.integers(0, 3, B), np.array([4, 5, 1])
    D = 2 if bidirectional else 1
    h0 = rng.uniform(-0.8, 0.8, (2 * D, B, 3))
    hx = (h0, rng.uniform(-1.5, 1.5, (2 * D, B, 3))) if cell == "lstm" else h0
    model.zero_grad()
    logits, bp = model.forward(X, lengths=lengths, hx=hx)
    _, dlogits = softmax_cross_entropy(logits, Y, reduction="sum")
    dX = bp(dlogits)
    loss = lambda: _model_loss(model, X, Y, lengths, hx)  # noqa: E731
    for name, p in model.params.items():
        assert_close(model.grads[name], central_diff(loss, [p])[0], 1e-5, 1e-8, name)
    num_dX = central_diff(loss, [X])[0]
    assert_close(dX, num_dX, 1e-5, 1e-8, "dX")
    # past its length a sequence's input cannot change its class
    assert np.all(num_dX[1:, 2] == 0) and np.all(num_dX[4:, 0] == 0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_many_to_one_bidirectional_matches_torch_packed_h_n(rng, cell):
    """torch: pack_padded_sequence, then the head on [h_n forward; h_n reverse] of the top layer."""
    T, B, I, H, C = 6, 4, 3, 4, 3
    model = SequenceModel(cell, hidden_size=H, num_layers=2, input_size=I, output_size=C, head="many_to_one",
                          bidirectional=True, dtype=np.float64, seed=5)
    X, Y, lengths = rng.standard_normal((T, B, I)), rng.integers(0, C, B), np.array([3, 6, 1, 5])
    model.zero_grad()
    logits, bp = model.forward(X, lengths=lengths)
    _, dlogits = softmax_cross_entropy(logits, Y, reduction="sum")
    dX = bp(dlogits)

    Mod = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    rnn = Mod(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            p.copy_(torch.from_numpy(model.params[f"rnn.{name}"]))
    Xt = t64(X, True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(Xt, torch.as_tensor(lengths), enforce_sorted=False)
    _, state = rnn(packed)
    h_n = state[0] if cell == "lstm" else state
    W, b = t64(model.params["head.weight"], True), t64(model.params["head.bias"], True)
    out = torch.cat([h_n[-2], h_n[-1]], dim=1) @ W.T + b
    loss = torch.nn.functional.cross_entropy(out, torch.as_tensor(Y), reduction="sum")
    loss.backward()
    assert_close(logits, out.detach().numpy(), 1e-10, 1e-12, "logits")
    assert_close(dX, Xt.grad.numpy(), 1e-9, 1e-12, "dX")
    assert_close(model.grads["head.weight"], W.grad.numpy(), 1e-9, 1e-12, "head.weight")
    for name, p in rnn.named_parameters():
        assert_close(model.grads[f"rnn.{name}"], p.grad.numpy(), 1e-9, 1e-12, name)


def test_many_to_one_trains_with_the_trainer(rng):
    """Which of two marker values occurs first in a variable-length sequence (needs the whole sequence)."""
    batches = []
    for _ in range(6):
        T, B = 8, 16
        X = rng.standard_normal((T, B, 2)) * 0.1
        lengths = rng.integers(2, T + 1, B)
        Y = rng.integers(0, 2, B)
        for b in range(B):
            t = rng.integers(0, lengths[b])
            X[t, b, Y[b]] += 1.0
        batches.append(Batch(X, Y, lengths))
    model = SequenceModel("gru", hidden_size=8, input_size=2, output_size=2, head="many_to_one",
                          bidirectional=True, dtype=np.float32, seed=0)
    before, after, _ = fit(model, batches, 150, 0.02)
    assert after < 0.5 * before, (before, after)


# ---------------------------------------------------------------------------------------------------
# one -> many
# ---------------------------------------------------------------------------------------------------

def _one_to_many_batch(rng, B=3, T=5, F=3, V=6):
    tokens = rng.integers(0, V, (T + 1, B))
    tokens[0] = 0
    return rng.standard_normal((B, F)), tokens, np.array([5, 2, 4])[:B]


@pytest.mark.parametrize("condition", OneToMany.CONDITIONS)
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_one_to_many_all_params_and_features_central_differences(rng, condition, cell):
    model = OneToMany(3, 6, hidden_size=4, embedding_dim=3, cell=cell, num_layers=2, condition=condition,
                      dtype=np.float64, seed=1)
    V, tokens, lengths = _one_to_many_batch(rng)
    check_all_params(model, (V, tokens, lengths))
    model.zero_grad()
    logits, bp = model.forward(V, tokens[:-1], lengths)
    _, d = softmax_cross_entropy(logits, tokens[1:], lengths=lengths, reduction="sum")
    dV = bp(d)
    loss = lambda: model.batch_loss((V, tokens, lengths), "sum", False)[0]  # noqa: E731
    assert_close(dV, central_diff(loss, [V])[0], 1e-5, 1e-8, "d features")


def test_one_to_many_matches_torch_autograd(rng):
    """h0, c0 = tanh(init(v)) per layer, v fed at every step (condition='both'), torch.nn.LSTM."""
    F, Vocab, H, Em, L = 3, 6, 4, 3, 2
    model = OneToMany(F, Vocab, hidden_size=H, embedding_dim=Em, cell="lstm", num_layers=L, condition="both",
                      dtype=np.float64, seed=2)
    V, tokens, lengths = _one_to_many_batch(rng)
    T, B = tokens.shape[0] - 1, V.shape[0]
    model.zero_grad()
    loss, _, backward = model.batch_loss((V, tokens, lengths), reduction="sum")
    backward()

    P = {k: t64(v, True) for k, v in model.params.items()}
    Vt = t64(V)
    Z = torch.tanh(Vt @ P["init.weight"].T + P["init.bias"]).reshape(B, 2, L, H).permute(1, 2, 0, 3)
    lstm = torch.nn.LSTM(Em + F, H, num_layers=L, dtype=torch.float64)
    names = [n for n, _ in lstm.named_parameters()]
    for n in names:                      # the module's parameters become views of our leaf tensors
        delattr(lstm, n)
        setattr(lstm, n, P[f"rnn.{n}"])
    E = P["embedding.weight"][torch.as_tensor(tokens[:-1])]
    X = torch.cat([E, Vt.expand(T, B, F)], dim=2)
    out, _ = lstm(X, (Z[0].contiguous(), Z[1].contiguous()))
    logits = out @ P["head.weight"].T + P["head.bias"]
    mask = torch.as_tensor(np.arange(T)[:, None] < lengths[None, :])
    tl = torch.nn.functional.cross_entropy(logits[mask], torch.as_tensor(tokens[1:])[mask], reduction="sum")
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-12)
    for k, p in P.items():
        assert_close(model.grads[k], p.grad.numpy(), 1e-9, 1e-12, k)


def test_one_to_many_trains_and_generates(rng, tmp_path):
    """Each feature vector names a class; the target sequence counts up from it (mod V)."""
    F, V, T = 4, 7, 6
    batches = []
    for _ in range(4):
        k = rng.integers(0, F, 24)
        feats = np.eye(F)[k] + 0.05 * rng.standard_normal((24, F))
        toks = np.zeros((T + 1, 24), dtype=np.int64)
        toks[1:] = (k[None, :] + 1 + np.arange(T)[:, None]) % V
        batches.append((feats, toks, None))
    model = OneToMany(F, V, hidden_size=16, embedding_dim=8, cell="gru", condition="init", dtype=np.float32,
                      seed=0)
    path = tmp_path / "one_to_many.ckpt"
    before, after, _ = fit(model, batches, 120, 0.03, checkpoint_path=str(path))
    assert after < 0.2 * before, (before, after)
    feats, toks, _ = batches[0]
    ids, lengths = model.generate(feats, T, greedy=True)
    assert ids.dtype == np.int64 and ids.shape == (T, 24) and np.all(lengths == T)
    assert np.mean(ids == toks[1:]) > 0.9
    sampled, _ = model.generate(feats, T, temperature=0.5, rng=0)
    assert np.mean(sampled == toks[1:]) > 0.7
    # the checkpoint rebuilds the same model
    check_checkpoint(path, model, batches, after)


def test_one_to_many_generation_stops_at_eos():
    model = OneToMany(2, 5, hidden_size=4, embedding_dim=3, eos=3, dtype=np.float64, seed=0)
    model.params["head.bias"][...] = [0, 0, 0, 50, 0]          # eos is certain at every step
    ids, lengths = model.generate(np.ones((3, 2)), 4, greedy=True)
    assert np.all(ids == 3) and np.all(lengths == 1)


# ---------------------------------------------------------------------------------------------------
# output -> hidden recurrence (seed 003, structure 2)
# ---------------------------------------------------------------------------------------------------

def _feedback_batch(rng, output, T=5, B=3, I=2, O=3):
    X = rng.standard_normal((T, B, I))
    Y = rng.standard_normal((T, B, O)) if output == "regression" else rng.integers(0, O, (T, B))
    return X, Y, np.array([5, 2, 4])[:B], rng.standard_normal((B, O))


@pytest.mark.parametrize("output", OutputFeedbackRNN.OUTPUTS)
@pytest.mark.parametrize("mode", OutputFeedbackRNN.MODES)
def test_output_feedback_central_differences_params_and_inputs(rng, output, mode):
    model = OutputFeedbackRNN(2, 4, 3, output=output, mode=mode, dtype=np.float64, seed=0)
    X, Y, lengths, y0 = batch = _feedback_batch(rng, output)
    check_all_params(model, batch)
    # input gradients of L = Σ O * G (every output position weighted)
    G = rng.standard_normal((5, 3, 3))
    O, bp = model.forward(X, Y, y0)
    dX, dy0 = bp(G)
    f = lambda: float(np.sum(model.forward(X, Y, y0, is_train=False)[0] * G))  # noqa: E731
    assert_close(dX, central_diff(f, [X])[0], 1e-6, 1e-9, "dX")
    assert_close(dy0, central_diff(f, [y0])[0], 1e-6, 1e-9, "dy0")


def _torch_feedback(model, X, Y, y0, mode):
    """The same recurrence in torch autograd: h_t = tanh(b + W f_{t-1} + U x_t), o_t = c + V h_t."""
    P = {k: t64(v, True) for k, v in model.params.items()}
    Xt, y0t = t64(X, True), t64(y0, True)
    cls = model.output == "classification"
    f, outs = y0t, []
    for t in range(X.shape[0]):
        h = torch.tanh(P["b"] + f @ P["W"].T + Xt[t] @ P["U"].T)
        o = P["c"] + h @ P["V"].T
        outs.append(o)
        if mode == "teacher_forcing":
            f = torch.nn.functional.one_hot(torch.as_tensor(Y[t]), model.output_size).double() if cls \
                else t64(Y[t])
        else:
            f = torch.softmax(o, dim=1) if cls else o
    return torch.stack(outs), P, Xt, y0t


@pytest.mark.parametrize("output", OutputFeedbackRNN.OUTPUTS)
@pytest.mark.parametrize("mode", OutputFeedbackRNN.MODES)
def test_output_feedback_matches_torch_autograd(rng, output, mode):
    model = OutputFeedbackRNN(2, 5, 3, output=output, mode=mode, dtype=np.float64, seed=1)
    X, Y, lengths, y0 = _feedback_batch(rng, output, T=7)
    G = rng.standard_normal((7, 3, 3))
    model.zero_grad()
    O, bp = model.forward(X, Y, y0)
    dX, dy0 = bp(G)
    Ot, P, Xt, y0t = _torch_feedback(model, X, Y, y0, mode)
    (Ot * torch.as_tensor(G)).sum().backward()
    assert_close(O, Ot.detach().numpy(), 1e-12, 1e-12, "outputs")
    assert_close(dX, Xt.grad.numpy(), 1e-10, 1e-12, "dX")
    assert_close(dy0, y0t.grad.numpy(), 1e-10, 1e-12, "dy0")
    for k, p in P.items():
        assert_close(model.grads[k], p.grad.numpy(), 1e-10, 1e-12, k)


def test_output_feedback_teacher_forcing_steps_are_independent(rng):
    """Under teacher forcing the output at t depends on y_{t-1} and x_t only; free running it depends
    on every earlier input."""
    model = OutputFeedbackRNN(2, 4, 3, dtype=np.float64, seed=0)
    X, Y, _, y0 = _feedback_batch(rng, "regression")
    O = model.forward(X, Y, y0, mode="teacher_forcing", is_train=False)[0]
    F = model.forward(X, Y, y0, mode="free_running", is_train=False)[0]
    X2 = X.copy()
    X2[1] += 1.0
    O2 = model.forward(X2, Y, y0, mode="teacher_forcing", is_train=False)[0]
    F2 = model.forward(X2, Y, y0, mode="free_running", is_train=False)[0]
    assert np.array_equal(np.delete(O, 1, axis=0), np.delete(O2, 1, axis=0))
    assert np.all(np.abs(F2[2:] - F[2:]) > 0)
    assert np.array_equal(model.generate(X, y0), F)


@pytest.mark.parametrize("mode", OutputFeedbackRNN.MODES)
def test_output_feedback_trains_with_the_trainer(rng, mode):
    """A noisy AR(1)-like target driven by the input: y_t = 0.8 y_{t-1} + x_t."""
    batches = []
    for _ in range(4):
        X = rng.standard_normal((12, 16, 1)) * 0.5
        Y = np.zeros((12, 16, 1))
        prev = np.zeros((16, 1))
        for t in range(12):
            prev = Y[t] = 0.8 * prev + X[t]
        batches.append((X, Y))
    model = OutputFeedbackRNN(1, 8, 1, mode=mode, dtype=np.float32, seed=0)
    before, after, _ = fit(model, batches, 200, 0.02)
    assert after < 0.2 * before, (before, after)


# ---------------------------------------------------------------------------------------------------
# autonomous recurrence (seed 001)
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("given_h0", [False, True])
def test_autonomous_central_differences(rng, nonlinearity, given_h0):
    model = AutonomousRNN(4, 2, nonlinearity=nonlinearity, dtype=np.float64, seed=3)
    if nonlinearity == "relu":
        model.params["b"][...] = np.abs(model.params["b"]) + 0.1     # keep units away from the kink
        model.params["h0"][...] = np.abs(model.params["h0"])
    Y = rng.standard_normal((6, 3, 2))
    h0 = rng.uniform(0.1, 1.0, (3, 4)) if given_h0 else None
    batch = (Y, h0) if given_h0 else (Y,)
    model.zero_grad()
    _, _, backward = model.batch_loss(batch, "sum")
    backward()
    loss = lambda: model.batch_loss(batch, "sum", False)[0]  # noqa: E731
    for name, p in model.params.items():
        assert_close(model.grads[name], central_diff(loss, [p])[0], 1e-5, 1e-8, name)
    assert np.any(model.grads["h0"] != 0) != given_h0
    if given_h0:
        _, _, bp = model.forward(6, h0=h0)
        dh0 = bp(2 * (model.generate(6, h0)[0] - Y))
        assert_close(dh0, central_diff(loss, [h0])[0], 1e-5, 1e-8, "dh0")


def test_autonomous_matches_torch_and_learns_a_trajectory(rng):
    teacher = AutonomousRNN(6, 2, dtype=np.float64, seed=10)
    teacher.params["W"][...] *= 3                                   # a livelier target trajectory
    target, _ = teacher.generate(20, batch_size=1)
    model = AutonomousRNN(6, 2, dtype=np.float64, seed=11)
    # torch autograd on the same recurrence
    P = {k: t64(v, True) for k, v in model.params.items()}
    h, outs = P["h0"][None], []
    for _ in range(20):
        h = torch.tanh(h @ P["W"].T + P["b"])
        outs.append(h @ P["V"].T + P["c"])
    tl = ((torch.stack(outs) - torch.as_tensor(target)) ** 2).mean()
    tl.backward()
    model.zero_grad()
    loss, n, backward = model.batch_loss((target,))
    backward()
    assert loss == pytest.approx(tl.item(), rel=1e-12) and n == target.size
    for k, p in P.items():
        assert_close(model.grads[k], p.grad.numpy(), 1e-10, 1e-13, k)
    before, after, _ = fit(model, [(target,)], 300, 0.03)
    assert after < 0.1 * before, (before, after)


# ---------------------------------------------------------------------------------------------------
# time-delay forecasting (seed 004)
# ---------------------------------------------------------------------------------------------------

def test_delay_windows_pair_each_input_with_the_value_delay_steps_later():
    s = np.arange(20.0) ** 2
    X, Y = delay_windows(s, window=5, delay=3, stride=2)
    assert X.shape == Y.shape == (5, 7, 1)                           # starts 0, 2, ..., 12
    for m in range(7):
        for t in range(5):
            i = 2 * m + t
            assert X[t, m, 0] == s[i] and Y[t, m, 0] == s[i + 3]
    batches = window_batches(X, Y, 3, rng=0)
    assert [b.X.shape[1] for b in batches] == [3, 3, 1]
    got = sorted(float(b.X[0, j, 0]) for b in batches for j in range(b.X.shape[1]))
    assert got == sorted(X[0, :, 0].tolist())


@pytest.mark.parametrize("delay", [1, 3])
def test_forecast_equals_rerunning_the_model_on_its_extended_history(rng, delay):
    """Oracle without carried state: forecast k is the model's last output on history ++ forecasts[:k-d+1]."""
    model = SequenceModel("lstm", hidden_size=5, input_size=2, output_size=2, head="regression",
                          dtype=np.float64, seed=0)
    history = rng.standard_normal((9, 2))
    fc = forecast(model, history, 6, delay=delay)
    assert fc.shape == (6, 2)
    for k in range(6):
        z = np.concatenate([history, fc[:max(k - delay + 1, 0)]])
        n = len(history) + k - delay + 1
        assert_close(fc[k], model.predict(z[:n, None])[-1, 0], 1e-12, 1e-12, f"forecast {k}")
    assert forecast(model, history[:, :1].repeat(2, 1)[:, None].repeat(3, 1), 2).shape == (2, 3, 2)


def test_time_delay_model_trains_and_forecasts_better_than_the_last_value(rng):
    t = np.arange(400)
    s = np.sin(2 * np.pi * t / 25) + 0.5 * np.sin(2 * np.pi * t / 9)
    X, Y = delay_windows(s[:300], window=30, delay=1, stride=3)
    batches = window_batches(X, Y, 16, rng=0)
    model = SequenceModel("gru", hidden_size=16, input_size=1, output_size=1, head="regression", seed=0)
    trainer = Trainer(model, Adam(model.params, model.grads, lr=0.01), loss="mse", seed=0)
    before = trainer.evaluate(batches)
    trainer.fit(batches, max_steps=300)
    assert trainer.evaluate(batches) < 0.05 * before
    fc = forecast(model, s[250:300].astype(np.float32), 20, delay=1)
    rmse = np.sqrt(np.mean((fc - s[300:320]) ** 2))
    naive = np.sqrt(np.mean((s[299] - s[300:320]) ** 2))
    assert fc.dtype == np.float32 and rmse < 0.3 * naive, (rmse, naive)


# ---------------------------------------------------------------------------------------------------
# float32, configs, bad input
# ---------------------------------------------------------------------------------------------------

def test_float32_in_float32_out_and_config_round_trip(rng):
    models = [OneToMany(3, 6, hidden_size=4, embedding_dim=3, dtype=np.float32, seed=1),
              OutputFeedbackRNN(2, 4, 3, output="classification", mode="free_running", seed=1),
              AutonomousRNN(4, 2, seed=1)]
    batches = [_one_to_many_batch(rng)[:2], _feedback_batch(rng, "classification")[:2],
               (rng.standard_normal((5, 3, 2)),)]
    for model, batch in zip(models, batches):
        assert all(p.dtype == np.float32 for p in model.params.values())
        model.zero_grad()
        loss, n, bw = model.batch_loss(batch)
        bw()
        assert isinstance(loss, float) and n > 0
        assert all(g.dtype == np.float32 and np.all(np.isfinite(g)) for g in model.grads.values())
        twin = type(model).from_config(model.config)
        twin.load_state_dict(model.state_dict())
        assert twin.batch_loss(batch, is_train=False)[0] == loss
        assert model.batch_loss(batch, is_train=False)[2] is None
    assert OutputFeedbackRNN(2, 4, 3).forward(*_feedback_batch(rng, "regression")[:2])[0].dtype == np.float32


def test_bad_input_says_what_was_expected(rng):
    m = OneToMany(3, 6, hidden_size=4, embedding_dim=3, seed=0)
    V, tokens, lengths = _one_to_many_batch(rng)
    with pytest.raises(ValueError, match=r"features: expected \(batch, 3\), got shape \(3, 4\)"):
        m.batch_loss((np.ones((3, 4)), tokens))
    with pytest.raises(TypeError, match="tokens: expected integer token ids.*got dtype float64"):
        m.batch_loss((V, tokens.astype(float)))
    with pytest.raises(ValueError, match=r"tokens: expected token ids in \[0, 6\), got min 0, max 9"):
        m.batch_loss((V, np.where(tokens == tokens.max(), 9, tokens)))
    with pytest.raises(ValueError, match=r"lengths must be between 1 and T=5, got values from 0"):
        m.batch_loss((V, tokens, np.array([0, 1, 2])))
    with pytest.raises(TypeError, match="batch: expected a tuple"):
        m.batch_loss(V)
    with pytest.raises(ValueError, match="condition: expected one of"):
        OneToMany(3, 6, condition="everywhere")
    f = OutputFeedbackRNN(2, 4, 3)
    X, Y, _, _ = _feedback_batch(rng, "regression")
    with pytest.raises(ValueError, match=r"Y: expected shape \(5, 3, 3\), got \(5, 3, 2\)"):
        f.batch_loss((X, Y[..., :2]))
    with pytest.raises(ValueError, match="teacher forcing feeds the previous target: expected Y"):
        f.forward(X)
    with pytest.raises(ValueError, match=r"X: expected \(T >= 1, batch, 2\), got shape \(5, 3, 4\)"):
        f.batch_loss((np.ones((5, 3, 4)), Y))
    with pytest.raises(ValueError, match="mode: expected one of"):
        OutputFeedbackRNN(2, 4, 3, mode="free")
    with pytest.raises(ValueError, match=r"h0: expected shape \(3, 4\), got \(2, 4\)"):
        AutonomousRNN(4, 2).batch_loss((np.ones((5, 3, 2)), np.ones((2, 4))))
    with pytest.raises(ValueError, match="reduction: expected 'mean' or 'sum', got 'max'"):
        AutonomousRNN(4, 2).batch_loss((np.ones((5, 3, 2)),), reduction="max")
    with pytest.raises(ValueError, match="parameters do not match this AutonomousRNN: missing"):
        AutonomousRNN(4, 2).load_state_dict({})
    with pytest.raises(ValueError, match=r"series: expected at least window \+ delay = 12 values, got 10"):
        delay_windows(np.arange(10.0), 10, 2)
    seq = SequenceModel("gru", hidden_size=3, input_size=2, output_size=1, head="regression", seed=0)
    with pytest.raises(ValueError, match="input_size must equal output_size, got 2 and 1"):
        forecast(seq, np.ones((5, 2)), 3)
    seq = SequenceModel("gru", hidden_size=3, vocab_size=4, head="many_to_many", seed=0)
    with pytest.raises(TypeError, match="model: expected a SequenceModel with head='regression'"):
        forecast(seq, np.ones(5), 3)
