"""Trainer: loss falls, truncated BPTT (== full BPTT when k >= T, state carried across chunks),
variable lengths, early stopping, reproducibility, and resume == uninterrupted run."""
import math

import numpy as np
import pytest

from rnncore.training.checkpoint import CheckpointError
from rnncore.training.data import Batch, CharVocab, SequenceDataset, TextStreams
from rnncore.training.losses import softmax_cross_entropy
from rnncore.models.sequence import SequenceModel
from rnncore.training.optim import SGD, Adam, Cosine
from rnncore.training.trainer import Trainer, load_model

TEXT = ("the quick brown fox jumps over the lazy dog. " * 12 +
        "pack my box with five dozen liquor jugs! " * 12)


def lm(cell="lstm", hidden=16, vocab=None, seed=0, dtype=np.float32):
    vocab = vocab or CharVocab.from_text(TEXT)
    return SequenceModel(cell, hidden_size=hidden, vocab_size=len(vocab), embedding_dim=8, seed=seed, dtype=dtype)


def streams(batch_size=4):
    vocab = CharVocab.from_text(TEXT)
    return TextStreams(vocab.encode(TEXT), batch_size)


def test_a_short_training_run_learns():
    model = lm("gru", hidden=32)
    opt = Adam(model.params, model.grads, lr=0.02, clip_norm=1.0)
    trainer = Trainer(model, opt, tbptt=16, seed=0)
    hist = trainer.fit(streams(), max_steps=60)
    first, last = np.mean(hist["loss"][:5]), np.mean(hist["loss"][-5:])
    assert first > math.log(len(CharVocab.from_text(TEXT))) - 0.5   # starts near uniform guessing
    assert last < 0.5 * first, (first, last)                          # and learns the repeated text


def _random_batches(rng, n, T, B, V, lengths=True):
    out = []
    for _ in range(n):
        L = rng.integers(1, T + 1, B) if lengths else None
        if L is not None:
            L[0] = T
        out.append(Batch(rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B)), L))
    return out


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_tbptt_with_k_at_least_T_is_full_bptt(rng, cell, with_lengths):
    V, T = 7, 9
    batches = _random_batches(rng, 3, T, 4, V, with_lengths)
    runs = []
    for k in (None, T, T + 5):
        model = SequenceModel(cell, hidden_size=6, vocab_size=V, embedding_dim=4, dtype=np.float64, seed=1)
        trainer = Trainer(model, Adam(model.params, model.grads, lr=0.01), tbptt=k, seed=0)
        hist = trainer.fit(batches, epochs=2)
        runs.append((hist["loss"], model.state_dict()))
    for losses, params in runs[1:]:
        assert losses == runs[0][0]
        for name in params:
            np.testing.assert_array_equal(params[name], runs[0][1][name])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_tbptt_carries_the_state_across_chunks(rng, cell):
    """With k < T the chunks see the state the previous chunk ended in: before any update, the
    summed chunk losses equal the loss of one pass over the whole sequence."""
    V, T, B = 7, 12, 3
    lengths = np.array([12, 5, 9])
    X, Y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    model = SequenceModel(cell, hidden_size=5, vocab_size=V, embedding_dim=4, dtype=np.float64, seed=1)
    full, _ = softmax_cross_entropy(model.predict(X, lengths=lengths), Y, lengths=lengths)
    # lr so small that the parameters do not change in float64
    trainer = Trainer(model, SGD(model.params, model.grads, lr=1e-300), reduction="sum", tbptt=4, seed=0)
    hist = trainer.fit([Batch(X, Y, lengths)], epochs=1)
    assert len(hist["loss"]) == 3                      # chunks [0,4) [4,8) [8,12)
    assert sum(hist["loss"]) == pytest.approx(full, rel=1e-12)
    # if the state were reset at each chunk the losses would differ
    reset = sum(softmax_cross_entropy(model.predict(X[s:s + 4], lengths=np.clip(lengths - s, 1, 4)),
                                      Y[s:s + 4], lengths=np.clip(lengths - s, 0, 4))[0] for s in (0, 4, 8))
    assert abs(reset - full) > 1e-3


def test_evaluate_does_not_depend_on_the_chunk_length(rng):
    V = 7
    batches = _random_batches(rng, 2, 10, 3, V)
    model = SequenceModel("lstm", hidden_size=5, vocab_size=V, embedding_dim=4, dtype=np.float64, seed=1)
    opt = Adam(model.params, model.grads, lr=0.01)
    whole = Trainer(model, opt, eval_chunk=1000).evaluate(batches)
    chunked = Trainer(model, opt, eval_chunk=3).evaluate(batches)
    assert chunked == pytest.approx(whole, rel=1e-12)


def test_many_to_one_with_variable_lengths_and_tbptt(rng):
    """Sequence classification: the label is scored in the chunk where each sequence ends."""
    # label = whether the sequence contains more 1s than 0s: needs the whole sequence
    seqs = [rng.integers(0, 2, rng.integers(3, 15)) for _ in range(96)]
    labels = [int(s.sum() * 2 > len(s)) for s in seqs]
    data = SequenceDataset(seqs, labels, batch_size=16)
    model = SequenceModel("gru", hidden_size=16, vocab_size=2, embedding_dim=4, head="many_to_one",
                          output_size=2, seed=0)
    trainer = Trainer(model, Adam(model.params, model.grads, lr=0.02), tbptt=5, seed=0)
    before = trainer.evaluate(data)
    trainer.fit(data, epochs=6)
    after = trainer.evaluate(data)
    assert after < 0.8 * before


def test_regression_with_mse():
    # predict a running sum of the inputs
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((rng.integers(4, 10), 1)) * 0.3 for _ in range(64)]
    ys = [np.cumsum(x, axis=0) for x in xs]
    data = SequenceDataset(xs, ys, batch_size=16)
    model = SequenceModel("lstm", hidden_size=16, input_size=1, output_size=1, head="regression", seed=0)
    trainer = Trainer(model, Adam(model.params, model.grads, lr=0.01), loss="mse", seed=0)
    before = trainer.evaluate(data)
    trainer.fit(data, epochs=15)
    assert trainer.evaluate(data) < 0.3 * before


def test_early_stopping():
    model = lm()
    trainer = Trainer(model, Adam(model.params, model.grads, lr=0.01), tbptt=8, seed=0, eval_every=2,
                      patience=2, min_delta=1e9)  # nothing counts as an improvement after the first
    hist = trainer.fit(streams(), streams(), max_steps=100)
    assert trainer.stopped
    assert hist["val_step"] == [2, 4, 6] and trainer.step == 6


def test_one_seed_reproduces_a_run():
    def run(seed):
        model = lm(seed=seed)
        trainer = Trainer(model, Adam(model.params, model.grads, lr=0.01), tbptt=8, seed=seed)
        return trainer.fit(streams(), max_steps=6)["loss"]
    assert run(3) == run(3)
    assert run(3) != run(4)


def _lm_trainer(path=None, cell="lstm"):
    model = lm(cell)
    opt = Adam(model.params, model.grads, lr=Cosine(0.01, 20, warmup_steps=2), clip_norm=1.0)
    return Trainer(model, opt, tbptt=8, seed=5, eval_every=3, checkpoint_path=path,
                   metadata={"vocab": CharVocab.from_text(TEXT).chars})


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, cell):
    """N steps straight == N/2 steps, save, load in a fresh model and trainer, N/2 more. The text
    streams are one long batch, so the checkpoint falls inside a batch with a carried state."""
    N = 20
    data, val = streams(), streams(2)
    straight = _lm_trainer(cell=cell)
    full = straight.fit(data, val, max_steps=N)

    path = tmp_path / "half.npz"
    first = _lm_trainer(path, cell=cell)
    first.fit(data, val, max_steps=N // 2)           # writes the checkpoint at the end
    assert first.chunk_start > 0 and first.carry is not None

    fresh = _lm_trainer(cell=cell)
    fresh.model.params["head.bias"][:] = 123.0       # a fresh trainer whose state will be replaced
    fresh.load_checkpoint(path)
    second = fresh.fit(data, val, max_steps=N)
    assert full["loss"][:N // 2] == first.history["loss"]
    assert second["loss"] == full["loss"][N // 2:]
    assert second["val_loss"] == [v for s, v in zip(full["val_step"], full["val_loss"]) if s > N // 2]
    for k in straight.model.params:
        np.testing.assert_array_equal(fresh.model.params[k], straight.model.params[k])


def test_resume_inside_a_shuffled_epoch_of_variable_length_batches(tmp_path, rng):
    seqs = [rng.integers(0, 5, rng.integers(2, 12)) for _ in range(40)]
    targets = [rng.integers(0, 5, len(s)) for s in seqs]
    data = SequenceDataset(seqs, targets, batch_size=8)

    def make(path=None):
        model = SequenceModel("lstm", hidden_size=8, vocab_size=5, embedding_dim=3, seed=0)
        return Trainer(model, Adam(model.params, model.grads, lr=0.01), tbptt=4, seed=1, checkpoint_path=path)

    straight = make()
    full = straight.fit(data, epochs=3)["loss"]
    n = len(full)
    for stop in (n // 2, n // 3 + 1):
        path = tmp_path / f"c{stop}.npz"
        make(path).fit(data, epochs=3, max_steps=stop)
        fresh = make()
        fresh.load_checkpoint(path)
        assert fresh.fit(data, epochs=3)["loss"] == full[stop:]


def test_from_checkpoint_rebuilds_everything(tmp_path):
    path = tmp_path / "c.npz"
    t = _lm_trainer(path)
    full = _lm_trainer().fit(streams(), max_steps=8)["loss"]
    t.fit(streams(), max_steps=4)
    resumed = Trainer.from_checkpoint(path)
    assert resumed.tbptt == 8 and resumed.metadata["vocab"] == CharVocab.from_text(TEXT).chars
    assert resumed.fit(streams(), max_steps=8)["loss"] == full[4:]
    model, meta = load_model(path)
    assert model.config == t.model.config
    np.testing.assert_array_equal(model.params["head.weight"], t.model.params["head.weight"])


def test_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    _lm_trainer(path).fit(streams(), max_steps=2)
    model = lm(hidden=24)
    other = Trainer(model, Adam(model.params, model.grads, lr=0.01))
    with pytest.raises(CheckpointError, match="another model.*hidden_size 16 in the checkpoint, 24 here"):
        other.load_checkpoint(path)


# ------------------------------------------------------------------------------ data for the trainer
def test_stdlib_corpus_is_deterministic_and_capped():
    from rnncore.training.data import stdlib_corpus
    a, files_a = stdlib_corpus(max_chars=50_000)
    b, files_b = stdlib_corpus(max_chars=50_000)
    assert a == b and files_a == files_b
    assert 10_000 <= len(a) <= 50_000 and files_a == sorted(files_a) and all(f.endswith(".py") for f in files_a)
    assert "def " in a and "\x00" not in a


def test_text_streams_predict_the_next_character():
    ids = np.arange(41)
    data = TextStreams(ids, batch_size=4, random_offset=False)
    (X, Y, lengths), = list(data.batches(None))
    assert X.shape == (10, 4) and lengths is None
    np.testing.assert_array_equal(X[:, 1], np.arange(10, 20))       # stream b reads ids[b*L : (b+1)*L]
    np.testing.assert_array_equal(Y, X + 1)                          # the target is the next id
    rotated, = list(TextStreams(ids, 4).batches(np.random.default_rng(0)))
    np.testing.assert_array_equal(rotated.Y, (rotated.X + 1) % 41)   # a rotated text, same rule


def test_sequence_dataset_pads_and_gives_lengths(rng):
    seqs = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6])]
    data = SequenceDataset(seqs, [s + 10 for s in seqs], batch_size=2, shuffle=False)
    (X, Y, L), (X2, Y2, L2) = list(data.batches(None))
    np.testing.assert_array_equal(X, [[1, 4], [2, 0], [3, 0]])
    np.testing.assert_array_equal(L, [3, 1])
    np.testing.assert_array_equal(Y[:, 0], [11, 12, 13])
    np.testing.assert_array_equal(X2, [[5], [6]])
    per_seq = SequenceDataset(seqs, [0, 1, 0], batch_size=3)
    (_, Y, _), = list(per_seq.batches(rng))
    assert Y.shape == (3,)
    with pytest.raises(ValueError, match="expected shape"):
        SequenceDataset(seqs, [np.array([1, 2]), np.array([1]), np.array([1, 2])], batch_size=2)


class _LinearRegression:
    """The smallest model of the Trainer's protocol (batch_loss): y = X w, squared error."""

    def __init__(self, n=3):
        self.params = {"w": np.zeros(n)}
        self.grads = {"w": np.zeros(n)}
        self.config = {"n": n}

    def zero_grad(self):
        self.grads["w"].fill(0)

    def state_dict(self):
        return {"w": self.params["w"].copy()}

    def load_state_dict(self, d):
        self.params["w"][...] = d["w"]

    def batch_loss(self, batch, reduction="mean", is_train=True):
        X, y = batch
        r = X @ self.params["w"] - y
        scale = 1.0 / len(y) if reduction == "mean" else 1.0
        loss = float(scale * (r @ r))

        def backward():
            self.grads["w"] += 2 * scale * (X.T @ r)
        return loss, len(y), (backward if is_train else None)


def test_protocol_models_train_evaluate_and_checkpoint(tmp_path, rng):
    w_true = np.array([1.0, -2.0, 0.5])
    batches = []
    for _ in range(8):
        X = rng.standard_normal((16, 3))
        batches.append((X, X @ w_true))
    model = _LinearRegression()
    path = tmp_path / "lin.npz"
    trainer = Trainer(model, SGD(model.params, model.grads, lr=0.05), checkpoint_path=path)
    hist = trainer.fit(batches, epochs=30)
    assert len(hist["loss"]) == 240 and hist["loss"][-1] < 1e-6 * hist["loss"][0]
    np.testing.assert_allclose(model.params["w"], w_true, atol=1e-4)
    # evaluate = mean over every target of every batch
    expect = sum(float(((X @ model.params["w"] - y) ** 2).sum()) for X, y in batches) / (16 * 8)
    assert trainer.evaluate(batches) == pytest.approx(expect, rel=1e-12)
    with pytest.raises(ValueError, match="tbptt=None"):
        Trainer(model, SGD(model.params, model.grads, lr=0.1), tbptt=5)
    # the checkpoint names the class; one outside rnncore is never imported from a file
    with pytest.raises(CheckpointError, match="not an rnncore model"):
        load_model(path)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_training_a_language_model_is_bit_identical_whatever_the_thread_count(dtype):
    """Every part of the step runs on rnncore's team here (the head's products, the cross-entropy's
    rows, the embedding gradient, the optimizer's passes over 99k parameter values), and each splits
    its work on a grid that does not depend on the thread count: the same losses and weights, bit for
    bit, on 1, 2 and 3 threads."""
    import rnncore
    rng = np.random.default_rng(3)
    X = rng.integers(0, 99, (40, 21))
    Y = rng.integers(0, 99, (40, 21))
    runs = []
    for n in (1, 2, 3):
        model = SequenceModel("lstm", hidden_size=128, vocab_size=99, embedding_dim=32, seed=0, dtype=dtype)
        opt = Adam(model.params, model.grads, lr=0.01, clip_norm=0.5, clip_value=0.05, weight_decay=1e-3)
        trainer = Trainer(model, opt, tbptt=20, seed=0)
        with rnncore.threads(n):
            hist = trainer.fit([Batch(X, Y, None)] * 2, max_steps=4)
        runs.append((hist["loss"], opt.last_grad_norm, model.state_dict()))
    assert model.num_params > 65_536 and len(runs[0][0]) == 4      # the optimizer's passes use the team
    for losses, norm, params in runs[1:]:
        assert losses == runs[0][0] and norm == runs[0][1]
        for k, p in params.items():
            np.testing.assert_array_equal(p, runs[0][2][k], err_msg=k)


def test_blas_threads_hold_inside_fit_and_evaluate_and_are_restored(rng):
    """Trainer(blas_threads=n) puts every BLAS library on n threads while fit and evaluate run (on the
    libraries rnncore found once: threadpoolctl's limit scanned the process's libraries on every
    call, 40% of a small estimator's fit) and gives the user's counts back afterwards."""
    from threadpoolctl import threadpool_info

    def counts():
        return [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]

    before = counts()
    assert before, "no BLAS library found: the test would show nothing"
    n = 1 if any(k != 1 for _, k in before) else 2       # a count that differs from the user's
    seen = []
    V = 5
    model = SequenceModel("gru", hidden_size=4, vocab_size=V, embedding_dim=3, seed=0)
    trainer = Trainer(model, Adam(model.params, model.grads, lr=0.01), blas_threads=n, eval_every=1,
                      on_eval=lambda tr, loss: seen.append(counts()))
    batches = _random_batches(rng, 2, 6, 3, V)
    trainer.fit(batches, val=batches, epochs=1)
    assert seen and all(k == n for c in seen for _, k in c), (n, seen)
    assert counts() == before
    trainer.evaluate(batches)
    assert counts() == before
    with pytest.raises(ValueError, match=">= 1"):
        Trainer(model, Adam(model.params, model.grads), blas_threads=0)
    with pytest.raises(TypeError, match="integer"):
        Trainer(model, Adam(model.params, model.grads), blas_threads="2")
