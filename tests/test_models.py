"""SequenceModel: gradients by float64 central differences for every cell and head, padding, the
many-to-one readout, parameters by name, configs and generation."""
import numpy as np
import pytest

from rnncore.training.losses import mse, softmax_cross_entropy
from rnncore.models.sequence import Embedding, Linear, OneHot, SequenceModel, generate

T, B, V = 5, 3, 6
LENGTHS = np.array([5, 2, 4])


def loss_of(model, X, Y, lengths, kind):
    Yhat, _ = model.forward(X, lengths=lengths, is_train=False)
    if kind == "mse":
        return mse(Yhat, Y, lengths=lengths)[0]
    return softmax_cross_entropy(Yhat, Y, lengths=lengths if Yhat.ndim == 3 else None)[0]


def check_gradients(model, X, Y, lengths, kind, rng, per_param=6, eps=1e-6):
    """Analytic model.grads against central differences of the loss, on a random subset of entries
    of every parameter (all entries of small ones)."""
    model.zero_grad()
    Yhat, backprop = model.forward(X, lengths=lengths)
    if kind == "mse":
        _, dY = mse(Yhat, Y, lengths=lengths)
    else:
        _, dY = softmax_cross_entropy(Yhat, Y, lengths=lengths if Yhat.ndim == 3 else None)
    dX = backprop(dY)
    for name, p in model.params.items():
        flat = p.reshape(-1)
        g = model.grads[name].reshape(-1)
        picks = rng.choice(flat.size, size=min(per_param, flat.size), replace=False)
        for i in picks:
            old = flat[i]
            flat[i] = old + eps
            lp = loss_of(model, X, Y, lengths, kind)
            flat[i] = old - eps
            lm = loss_of(model, X, Y, lengths, kind)
            flat[i] = old
            num = (lp - lm) / (2 * eps)
            assert abs(num - g[i]) <= 1e-7 + 1e-5 * abs(num), f"{name}[{i}]: analytic {g[i]}, numeric {num}"
    return dX


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("embedding_dim", [None, 4])
def test_many_to_many_gradients(rng, cell, embedding_dim):
    model = SequenceModel(cell, hidden_size=4, num_layers=2, vocab_size=V, embedding_dim=embedding_dim,
                          dtype=np.float64, seed=1)
    X, Y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    assert check_gradients(model, X, Y, LENGTHS, "ce", rng) is None  # no gradient for token ids


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_many_to_one_gradients(rng, cell, bidirectional):
    model = SequenceModel(cell, hidden_size=3, vocab_size=V, embedding_dim=3, head="many_to_one",
                          output_size=2, bidirectional=bidirectional, dtype=np.float64, seed=2)
    X, Y = rng.integers(0, V, (T, B)), rng.integers(0, 2, B)
    check_gradients(model, X, Y, LENGTHS, "ce", rng)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_regression_gradients_including_the_input(rng, cell):
    model = SequenceModel(cell, hidden_size=4, input_size=3, output_size=2, head="regression",
                          dtype=np.float64, seed=3)
    X, Y = rng.standard_normal((T, B, 3)), rng.standard_normal((T, B, 2))
    dX = check_gradients(model, X, Y, LENGTHS, "mse", rng)
    eps = 1e-6
    for idx in [(0, 0, 0), (1, 1, 2), (3, 2, 1), (4, 1, 0)]:  # (4, 1, 0) is padding: no gradient
        old = X[idx]
        X[idx] = old + eps
        lp = loss_of(model, X, Y, LENGTHS, "mse")
        X[idx] = old - eps
        lm = loss_of(model, X, Y, LENGTHS, "mse")
        X[idx] = old
        assert dX[idx] == pytest.approx((lp - lm) / (2 * eps), rel=1e-5, abs=1e-9)
    assert dX[4, 1, 0] == 0


def test_many_to_one_reads_the_last_valid_step(rng):
    model = SequenceModel("gru", hidden_size=4, vocab_size=V, embedding_dim=3, head="many_to_one",
                          output_size=2, dtype=np.float64, seed=0)
    X = rng.integers(0, V, (T, B))
    Y = model.predict(X, lengths=LENGTHS)
    assert Y.shape == (B, 2)
    for b, n in enumerate(LENGTHS):
        alone = model.predict(X[:n, b:b + 1])  # the sequence on its own, no padding
        np.testing.assert_allclose(Y[b], alone[0], rtol=1e-12)


def test_bidirectional_many_to_one_matches_the_final_states(rng):
    model = SequenceModel("lstm", hidden_size=3, vocab_size=V, embedding_dim=3, head="many_to_one",
                          output_size=2, bidirectional=True, dtype=np.float64, seed=0)
    X = rng.integers(0, V, (T, B))
    E, _ = model.embedding.forward(X)
    _, (h_n, _) = model.rnn(E, lengths=LENGTHS)
    features = np.concatenate([h_n[0], h_n[1]], axis=1)  # forward and reverse final states
    expected = features @ model.params["head.weight"].T + model.params["head.bias"]
    np.testing.assert_allclose(model.predict(X, lengths=LENGTHS), expected, rtol=1e-12)


def test_padding_does_not_change_outputs_or_gradients(rng):
    model = SequenceModel("lstm", hidden_size=4, vocab_size=V, embedding_dim=3, dtype=np.float64, seed=0)
    X, Y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    X2, Y2 = X.copy(), Y.copy()
    for b, n in enumerate(LENGTHS):
        X2[n:, b] = rng.integers(0, V, T - n)
        Y2[n:, b] = rng.integers(0, V, T - n)
    grads = []
    for x, y in ((X, Y), (X2, Y2)):
        model.zero_grad()
        Yhat, bp = model.forward(x, lengths=LENGTHS)
        bp(softmax_cross_entropy(Yhat, y, lengths=LENGTHS)[1])
        grads.append({k: g.copy() for k, g in model.grads.items()})
    for k in grads[0]:
        np.testing.assert_array_equal(grads[0][k], grads[1][k], err_msg=k)


def test_params_and_grads_are_live_arrays_by_name():
    model = SequenceModel("lstm", hidden_size=4, num_layers=2, vocab_size=V, embedding_dim=3, seed=0)
    assert list(model.params) == list(model.grads)
    assert "embedding.weight" in model.params and "head.weight" in model.params and "head.bias" in model.params
    assert {k for k in model.params if k.startswith("rnn.")} == {f"rnn.{k}" for k in model.rnn.params}
    assert model.params["rnn.weight_ih_l1"] is model.rnn.params["weight_ih_l1"]
    assert model.grads["rnn.weight_hh_l0"] is model.rnn.grads["weight_hh_l0"]
    assert model.params["head.weight"].shape == (V, 4)
    model.params["head.bias"][:] = 7  # an in-place edit changes the model
    assert (model.head.params["bias"] == 7).all()
    assert model.num_params == sum(p.size for p in model.params.values())


def test_one_hot_model_has_no_embedding_parameters():
    model = SequenceModel("rnn", hidden_size=4, vocab_size=V, seed=0)
    assert isinstance(model.embedding, OneHot)
    assert not any(k.startswith("embedding.") for k in model.params)
    assert model.params["rnn.weight_ih_l0"].shape == (4, V)


def test_state_dict_and_config_round_trip(rng):
    model = SequenceModel("gru", hidden_size=5, num_layers=2, vocab_size=V, embedding_dim=3, seed=0,
                          rnn_options={"reset_after": False})
    clone = SequenceModel.from_config(model.config)
    assert clone.config == model.config
    for k in model.params:  # one seed: the same initialisation
        np.testing.assert_array_equal(clone.params[k], model.params[k])
    other = SequenceModel.from_config({**model.config, "seed": 1})
    assert not np.array_equal(other.params["head.weight"], model.params["head.weight"])
    other.load_state_dict(model.state_dict())
    X = rng.integers(0, V, (T, B))
    np.testing.assert_array_equal(other.predict(X), model.predict(X))
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({k: v for k, v in model.state_dict().items() if k != "head.bias"})
    bad = model.state_dict()
    bad["head.weight"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="expected shape"):
        other.load_state_dict(bad)


def test_float32_model_keeps_float32(rng):
    model = SequenceModel("lstm", hidden_size=4, vocab_size=V, embedding_dim=3, seed=0)
    Yhat, bp = model.forward(rng.integers(0, V, (T, B)))
    assert Yhat.dtype == np.float32
    bp(np.ones_like(Yhat))
    assert all(g.dtype == np.float32 for g in model.grads.values())


def test_embedding_and_linear_accumulate(rng):
    emb = Embedding(4, 2, dtype=np.float64, rng=0)
    ids = np.array([[1, 1], [3, 1]])
    _, bp = emb.forward(ids)
    bp(np.ones((2, 2, 2)))
    bp(np.ones((2, 2, 2)))  # a second backprop adds
    np.testing.assert_array_equal(emb.grads["weight"], [[0, 0], [6, 6], [0, 0], [2, 2]])
    lin = Linear(3, 2, dtype=np.float64, rng=0)
    X = rng.standard_normal((4, 3))
    Y, bp = lin.forward(X)
    np.testing.assert_allclose(Y, X @ lin.params["weight"].T + lin.params["bias"])
    dY = rng.standard_normal((4, 2))
    dX = bp(dY)
    np.testing.assert_allclose(dX, dY @ lin.params["weight"])
    np.testing.assert_allclose(lin.grads["weight"], dY.T @ X)
    np.testing.assert_allclose(lin.grads["bias"], dY.sum(0))


def test_generate_is_reproducible_and_in_range():
    model = SequenceModel("lstm", hidden_size=8, vocab_size=V, embedding_dim=4, seed=0)
    a = generate(model, [1, 2], 30, temperature=0.7, rng=5)
    b = generate(model, [1, 2], 30, temperature=0.7, rng=5)
    assert a.shape == (30,) and a.min() >= 0 and a.max() < V
    np.testing.assert_array_equal(a, b)
    # a very low temperature is greedy: the most likely token at each step
    greedy = generate(model, [1], 5, temperature=1e-4, rng=0)
    state, ids = None, [1]
    for _ in range(5):
        logits, bp = model.forward(np.array([[ids[-1]]]), hx=state, is_train=False)
        state = bp.h_n
        ids.append(int(np.argmax(logits[0, 0])))
    assert greedy.tolist() == ids[1:]


@pytest.mark.parametrize("kwargs, words", [
    (dict(cell="tcn", vocab_size=4), "cell"),
    (dict(vocab_size=4, head="seq2seq"), "head"),
    (dict(vocab_size=4, input_size=3), "exactly one of"),
    (dict(input_size=3), "output_size"),
])
def test_bad_model_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SequenceModel(**kwargs)


def test_token_ids_out_of_range_are_refused():
    model = SequenceModel("rnn", hidden_size=4, vocab_size=V, embedding_dim=3, seed=0)
    with pytest.raises(ValueError, match=r"token ids in \[0, 6\)"):
        model.forward(np.array([[0], [6]]))
    with pytest.raises(TypeError, match="integer token ids"):
        model.forward(np.zeros((2, 1)))


# ------------------------------------------------------------------------------ the compiled embedding gradient, the head
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_embedding_gradient_is_np_add_at_bit_for_bit_on_any_thread_count(rng, dtype):
    import rnncore
    emb = Embedding(50, 130, dtype=dtype, rng=0)           # 130 columns: blocks of 64, 64 and 2
    ids = rng.integers(0, 50, (80, 50))                    # 4000 ids, each id about 80 times
    dE = rng.standard_normal((80, 50, 130)).astype(dtype)
    start = rng.standard_normal((50, 130)).astype(dtype)   # the gradient accumulates (+=)
    want = start.copy()
    np.add.at(want, ids.reshape(-1), dE.reshape(-1, 130))
    for n in (1, 2, 3):
        emb.grads["weight"][...] = start
        _, bp = emb.forward(ids)
        with rnncore.threads(n):
            bp(dE)
        np.testing.assert_array_equal(emb.grads["weight"], want, err_msg=f"{n} threads")


def test_embedding_gradient_kernel_refuses_ids_out_of_range():
    from rnncore import _kernels as K
    with pytest.raises(ValueError, match="id 4 at 1 is not in"):
        K.embedding_backward(np.zeros((4, 2)), np.array([0, 4]), np.ones((2, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_linear_matches_torch(rng, dtype):
    import torch
    lin = Linear(33, 17, dtype=dtype, rng=0)
    mod = torch.nn.Linear(33, 17, dtype=torch.float32 if dtype == np.float32 else torch.float64)
    with torch.no_grad():
        mod.weight.copy_(torch.from_numpy(lin.params["weight"]))
        mod.bias.copy_(torch.from_numpy(lin.params["bias"]))
    X = rng.standard_normal((9, 7, 33)).astype(dtype)
    dY = rng.standard_normal((9, 7, 17)).astype(dtype)
    Xt = torch.tensor(X, requires_grad=True)
    Yt = mod(Xt)
    Yt.backward(torch.from_numpy(dY))
    Y, bp = lin.forward(X)
    dX = bp(dY)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for got, want in ((Y, Yt), (dX, Xt.grad), (lin.grads["weight"], mod.weight.grad),
                      (lin.grads["bias"], mod.bias.grad)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want.detach().numpy(), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_linear_rows_depend_neither_on_the_batch_nor_on_threads(rng, dtype):
    import rnncore
    lin = Linear(64, 99, dtype=dtype, rng=0)
    X = rng.standard_normal((300, 64)).astype(dtype)       # 3.8 MFLOP: the team runs
    dY = rng.standard_normal((300, 99)).astype(dtype)
    runs = []
    for n in (1, 2, 3):
        lin.zero_grad()
        with rnncore.threads(n):
            Y, bp = lin.forward(X)
            dX = bp(dY)
        runs.append((Y, dX, lin.grads["weight"].copy(), lin.grads["bias"].copy()))
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            np.testing.assert_array_equal(a, b)
    rows = [0, 5, 299]                                      # a row's Y and dX, alone or in any batch
    for sub in (rows, rows[:1]):
        Y, bp = lin.forward(X[sub])
        np.testing.assert_array_equal(Y, runs[0][0][sub])
        np.testing.assert_array_equal(bp(dY[sub]), runs[0][1][sub])
