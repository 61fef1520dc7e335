"""Crash-safe training (issue 7): non-finite steps stop (naming the step) or are skipped, a bad model
never overwrites a good checkpoint, Ctrl-C leaves the last checkpoint valid and resumable, damaged
checkpoints are refused (every cut and flipped byte tried), loading never runs code, clipping contains
exploding gradients, and T = 100,000 trains with truncated BPTT in bounded memory."""
import json
import math

import numpy as np
import pytest

from rnncore.training import checkpoint
from rnncore.training.checkpoint import CheckpointError
from rnncore.training.data import Batch
from rnncore.models.sequence import SequenceModel
from rnncore.training.optim import SGD, Adam
from rnncore.training.trainer import NonFiniteError, Trainer, load_model


def _regression_batches(rng, n=6, T=12, B=4, I=3, dtype=np.float32):
    return [Batch(rng.standard_normal((T, B, I)).astype(dtype), rng.standard_normal((T, B, 2)).astype(dtype), None)
            for _ in range(n)]


def _model(cell="gru", seed=0):
    return SequenceModel(cell, hidden_size=8, input_size=3, output_size=2, head="regression", seed=seed)


def _trainer(model, path=None, **kw):
    return Trainer(model, Adam(model.params, model.grads, lr=0.01), loss="mse", seed=0,
                   checkpoint_path=path, **kw)


def _poison(batches, index):
    bad = [Batch(b.X.copy(), b.Y, b.lengths) for b in batches]
    bad[index].X[3, 1, 0] = np.nan
    return bad


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_nonfinite_loss_stops_with_the_step_and_keeps_the_good_checkpoint(tmp_path, rng, cell):
    path = tmp_path / "run.npz"
    batches = _poison(_regression_batches(rng), 4)
    model = _model(cell)
    trainer = _trainer(model, path, checkpoint_every=2)
    with pytest.raises(NonFiniteError, match=r"step 5 \(epoch 0, batch 4\)"):
        trainer.fit(batches, epochs=1)
    assert trainer.step == 4
    for p in model.params.values():                      # the bad step did not touch the parameters
        assert np.isfinite(p).all()
    saved, _ = load_model(path)                          # the step-4 checkpoint is intact
    for k, p in model.params.items():
        np.testing.assert_array_equal(saved.params[k], p)


def test_skip_option_drops_the_bad_step_and_goes_on(rng):
    clean = _regression_batches(rng)
    batches = _poison(clean, 2)
    model = _model()
    trainer = _trainer(model, on_nonfinite="skip")
    hist = trainer.fit(batches, epochs=1)
    assert trainer.skipped_steps == 1 and trainer.step == len(batches) - 1
    assert all(math.isfinite(v) for v in hist["loss"])
    # equals a run on the clean batches without the bad one
    ref = _model()
    _trainer(ref).fit(clean[:2] + clean[3:], epochs=1)
    for k in ref.params:
        np.testing.assert_array_equal(model.params[k], ref.params[k])


def test_nonfinite_gradient_with_finite_loss_is_caught(rng):
    model = _model("lstm")

    def loss_with_bad_grad(Y, T, lengths=None, mask=None, reduction="mean"):
        dY = np.zeros_like(Y)
        dY[0, 0, 0] = np.inf
        return 1.0, dY

    trainer = Trainer(model, SGD(model.params, model.grads, lr=0.1), loss=loss_with_bad_grad)
    with pytest.raises(NonFiniteError, match="step 1 .*gradient of .* is not finite"):
        trainer.fit(_regression_batches(rng, n=1), epochs=1)


def test_diverged_parameters_are_never_checkpointed(tmp_path, rng):
    path = tmp_path / "run.npz"
    model = _model()
    trainer = _trainer(model, path, checkpoint_every=1)
    trainer.fit(_regression_batches(rng, n=2), epochs=1)
    good = path.read_bytes()
    model.params["head.bias"][0] = np.inf          # e.g. an overflow in the update itself
    trainer.on_nonfinite = "skip"
    trainer.fit(_regression_batches(rng, n=2), epochs=2)   # (the compiled head and loss warn of nothing)
    assert trainer.skipped_steps == 2
    assert path.read_bytes() == good               # neither the periodic nor the final save replaced it


class _Interrupt:
    """A loss that raises KeyboardInterrupt on its n-th call, as Ctrl-C would mid-step."""

    def __init__(self, n):
        self.n, self.calls = n, 0
        self.__name__ = "mse"

    def __call__(self, *a, **kw):
        from rnncore.training.losses import mse
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return mse(*a, **kw)


def test_ctrl_c_leaves_the_last_checkpoint_valid_and_resumable(tmp_path, rng):
    batches = _regression_batches(rng, n=10)
    straight = _model()
    full = _trainer(straight).fit(batches, epochs=2)["loss"]

    path = tmp_path / "run.npz"
    model = _model()
    trainer = Trainer(model, Adam(model.params, model.grads, lr=0.01), loss=_Interrupt(14), seed=0,
                      checkpoint_path=path, checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(batches, epochs=2)
    assert trainer.step == 13
    _, meta = checkpoint.load(path)
    assert meta["trainer"]["step"] == 12          # the last periodic checkpoint, not a half step

    resumed = Trainer.from_checkpoint(path, loss="mse")
    rest = resumed.fit(batches, epochs=2)["loss"]
    assert rest == full[12:]
    for k in straight.params:
        np.testing.assert_array_equal(resumed.model.params[k], straight.params[k])


def test_every_cut_and_flipped_byte_is_refused_or_harmless(tmp_path, rng):
    """Cut the file at 40 lengths and flip a byte at 200 positions: every load either raises
    CheckpointError or returns exactly the saved arrays (a flip in zip padding or a timestamp);
    nothing is ever loaded half or changed."""
    path = tmp_path / "c.npz"
    model = _model("lstm")
    trainer = _trainer(model, path)
    trainer.fit(_regression_batches(rng, n=2), epochs=1)
    original = path.read_bytes()
    arrays0, meta0 = checkpoint.load(path)
    refused = harmless = 0
    cases = [("cut", n) for n in np.linspace(0, len(original) - 1, 40).astype(int)]
    cases += [("flip", i) for i in np.linspace(0, len(original) - 1, 200).astype(int)]
    for kind, i in cases:
        data = bytearray(original)
        if kind == "cut":
            data = data[:i]
        else:
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))
        try:
            arrays, meta = checkpoint.load(path)
        except CheckpointError:
            refused += 1
            continue
        harmless += 1
        assert meta == meta0 and arrays.keys() == arrays0.keys()
        for k in arrays0:
            np.testing.assert_array_equal(arrays[k], arrays0[k])
    print(f"\ncheckpoint corruption: {refused} of {len(cases)} refused, {harmless} loaded the exact saved arrays")
    assert refused >= 200, (refused, harmless)   # all cuts and nearly all flips are refused


def test_loading_never_executes_code(tmp_path, rng):
    # a pickled object array is refused (np.load with allow_pickle=False) ...
    path = tmp_path / "evil.npz"
    np.savez(path, __meta__=np.array(json.dumps({"format": "rnncore-checkpoint", "version": 1})),
             payload=np.array([print], dtype=object))
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    # ... and a checkpoint naming a class outside rnncore is refused before anything is imported
    good = tmp_path / "good.npz"
    trainer = _trainer(_model(), good)
    trainer.fit(_regression_batches(rng, n=1), epochs=1)
    arrays, meta = checkpoint.load(good)
    for name in ("os:system", "subprocess:Popen", "rnncore.models.sequence:os.system", "builtins:eval"):
        meta["model_class"] = name
        checkpoint.save(good, arrays, meta)
        with pytest.raises(CheckpointError, match="not an rnncore model"):
            load_model(good)


def test_clipping_contains_exploding_gradients(rng):
    """A ReLU RNN whose recurrent matrix is 1.05 I on T = 400 (spectral radius > 1, the seeds'
    exploding case): the raw gradient norm explodes; with clip_norm the SGD update has norm exactly
    lr * clip_norm and the parameters stay finite."""
    T, B, H = 400, 2, 16
    model = SequenceModel("rnn", hidden_size=H, input_size=3, output_size=1, head="regression", seed=0,
                          dtype=np.float64, rnn_options={"init": "identity", "nonlinearity": "relu"})
    model.params["rnn.weight_hh_l0"] *= 1.05
    X = np.abs(rng.standard_normal((T, B, 3)))
    Y, bp = model.forward(X)
    dY = np.ones_like(Y)
    model.zero_grad()
    bp(dY)
    from rnncore.training.optim import global_norm
    raw = global_norm(model.grads)
    assert raw > 1e3, raw

    before = {k: p.copy() for k, p in model.params.items()}
    lr, clip = 0.1, 1.0
    SGD(model.params, model.grads, lr=lr, clip_norm=clip).step()
    step = math.sqrt(sum(float(((model.params[k] - before[k]) ** 2).sum()) for k in before))
    assert step == pytest.approx(lr * clip, rel=1e-9)
    assert all(np.isfinite(p).all() for p in model.params.values())


def test_a_100000_step_sequence_trains_with_truncated_bptt(rng):
    """T = 100,000, H = 8: truncated BPTT (k = 500) keeps the working set at one chunk; the loss
    falls on a learnable signal and every parameter stays finite."""
    import resource
    T = 100_000
    t = np.arange(T + 1)
    signal = np.sin(2 * np.pi * t / 50.0).astype(np.float32)
    X, Y = signal[:-1].reshape(T, 1, 1), signal[1:].reshape(T, 1, 1)
    model = SequenceModel("gru", hidden_size=8, input_size=1, output_size=1, head="regression", seed=0)
    trainer = Trainer(model, Adam(model.params, model.grads, lr=0.01, clip_norm=1.0), loss="mse", tbptt=500)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hist = trainer.fit([Batch(X, Y, None)], epochs=1)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert len(hist["loss"]) == T // 500
    assert np.mean(hist["loss"][-20:]) < 0.1 * np.mean(hist["loss"][:5])
    assert all(np.isfinite(p).all() for p in model.params.values())
    assert grown_mb < 50, grown_mb   # full BPTT would keep 100,000 steps of activations
