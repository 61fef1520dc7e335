"""The Trainer's one model protocol: a model written against the protocol only (no rnncore model
class) trains, with truncated BPTT and an exact resume; the chunk iterator covers every valid step
once; trainer.py imports no model module; one softmax, one place for each kind of check."""
import ast
import math
import pathlib
import re

import numpy as np
import pytest

import rnncore
from rnncore.engine import validation as _validate
from rnncore.models import architectures
from rnncore.training import losses
from rnncore.training.data import Batch, tbptt_chunks
from rnncore.training.optim import SGD, Adam
from rnncore.training.trainer import Trainer

PACKAGE = pathlib.Path(rnncore.__file__).parent


class _Leaky:
    """The smallest model with a carried state: h_t = a h_{t-1} + x_t, y_t = w h_t (scalars a and w),
    squared error over the valid steps. It uses nothing of rnncore but tbptt_chunks."""

    carries_state = True
    targets_per_step = True

    def __init__(self, a=0.2, w=0.1):
        self.params = {"aw": np.array([a, w])}          # one array: theta = (a, w)
        self.grads = {"aw": np.zeros(2)}
        self.config = {"a": a, "w": w}

    def zero_grad(self):
        self.grads["aw"][:] = 0

    def state_dict(self):
        return {"aw": self.params["aw"].copy()}

    def load_state_dict(self, state):
        self.params["aw"][:] = state["aw"]

    def batch_loss(self, batch, reduction="mean", is_train=True):
        chunk, = tbptt_chunks(batch)
        return self.chunk_loss(chunk, None, reduction, is_train)[:3]

    def chunk_loss(self, chunk, state, reduction="mean", is_train=True):
        X, Y, lens = chunk.batch                        # X, Y (T, B) floats
        T, B = X.shape
        lens = np.full(B, T) if lens is None else lens
        a, w = self.params["aw"]
        H = np.empty((T + 1, B))                        # H[0] = h_0, H[t + 1] = h_t
        H[0] = 0.0 if state is None or chunk.keep is None else state[chunk.keep]
        for t in range(T):
            H[t + 1] = a * H[t] + X[t]
        valid = np.arange(T)[:, None] < lens[None, :]
        r = np.where(valid, w * H[1:] - Y, 0.0)
        n = int(valid.sum())
        scale = 1.0 / n if reduction == "mean" else 1.0
        h_n = H[lens, np.arange(B)]                     # the state after each sequence's last step

        def backward():
            dy = 2 * scale * r
            self.grads["aw"][1] += (dy * H[1:]).sum()
            dh, da = np.zeros(B), 0.0                   # dh: ∂L/∂h_{t+1} from the later steps
            for t in reversed(range(T)):
                dh = dh + w * dy[t]
                da += (dh * H[t]).sum()
                dh = a * dh
            self.grads["aw"][0] += da

        return float(scale * (r * r).sum()), n, (backward if is_train else None), h_n


def _leaky_batches(rng, n=3, T=11, B=4, a=0.7, w=0.5):
    out = []
    for _ in range(n):
        X = rng.standard_normal((T, B))
        H, h = np.empty((T, B)), np.zeros(B)
        for t in range(T):
            H[t] = h = a * h + X[t]
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
        out.append(Batch(X, w * H, lengths))
    return out


def test_a_protocol_model_learns_with_truncated_bptt():
    batches = _leaky_batches(np.random.default_rng(0))
    model = _Leaky()
    hist = Trainer(model, Adam(model.params, model.grads, lr=0.05), tbptt=4).fit(batches, epochs=60)
    assert np.mean(hist["loss"][-6:]) < 1e-6 * np.mean(hist["loss"][:6])
    # the state carried across chunks lets it find the generating recurrence
    np.testing.assert_allclose(model.params["aw"], [0.7, 0.5], atol=1e-3)


def test_a_protocol_model_carries_its_state_across_chunks(rng):
    """Before any update, the chunk losses add up to the loss of one pass over each batch: the state
    went from chunk to chunk (with a reset state, the sums would differ)."""
    batches = _leaky_batches(rng)
    model = _Leaky(a=0.9, w=0.8)
    full = sum(model.batch_loss(b, reduction="sum", is_train=False)[0] for b in batches)
    trainer = Trainer(model, SGD(model.params, model.grads, lr=1e-300), reduction="sum", tbptt=3)
    hist = trainer.fit(batches, epochs=1)
    assert len(hist["loss"]) == 3 * 4                       # 11 steps in chunks of 3, per batch
    assert sum(hist["loss"]) == pytest.approx(full, rel=1e-12)
    reset = sum(model.chunk_loss(c, None, "sum", False)[0] for b in batches for c in tbptt_chunks(b, 3)
                if c.keep is not None)
    assert not math.isclose(reset, full - sum(hist["loss"][0::4]), rel_tol=1e-6)
    # evaluation in chunks carries the state too: the same number for every eval_chunk
    for k in (1, 4, 100):
        assert Trainer(model, None, reduction="sum", eval_chunk=k).evaluate(batches) == pytest.approx(full, rel=1e-12)


def test_a_protocol_model_resumes_exactly_inside_a_batch(tmp_path, rng):
    batches = _leaky_batches(rng, n=4)

    def make(path=None):
        model = _Leaky()
        return Trainer(model, Adam(model.params, model.grads, lr=0.02), tbptt=3, checkpoint_path=path,
                       eval_every=5)

    full = make().fit(batches, batches[:1], epochs=2)
    path = tmp_path / "leaky.npz"
    first = make(path)
    first.fit(batches, batches[:1], epochs=2, max_steps=10)
    assert first.chunk_start > 0 and first.carry is not None     # the checkpoint holds a carried state
    fresh = make()
    fresh.load_checkpoint(path)
    second = fresh.fit(batches, batches[:1], epochs=2)
    assert second["loss"] == full["loss"][10:]
    assert second["val_loss"] == [v for s, v in zip(full["val_step"], full["val_loss"]) if s > 10]


def test_a_model_without_carried_state_refuses_tbptt():
    class Stateless(_Leaky):
        carries_state = False

    model = Stateless()
    with pytest.raises(ValueError, match=r"tbptt: Stateless trains on whole batches.*expected tbptt=None, got 4"):
        Trainer(model, SGD(model.params, model.grads, lr=0.1), tbptt=4)


# ------------------------------------------------------------------------------ the chunk iterator
@pytest.mark.parametrize("k", [1, 3, 7, 8, None])
@pytest.mark.parametrize("with_lengths", [True, False])
def test_chunks_cover_every_valid_step_once_and_drop_finished_sequences(rng, k, with_lengths):
    T, B = 8, 6
    X = rng.integers(0, 100, (T, B))
    lengths = rng.integers(1, T, B) if with_lengths else None       # all shorter than T: padding at the end
    Y_seq = rng.integers(0, 5, B)
    chunks = list(tbptt_chunks(Batch(X, X + 1000, lengths), k))
    per_seq = list(tbptt_chunks(Batch(X, Y_seq, lengths), k, per_step=False))
    L = np.full(B, T) if lengths is None else lengths
    seen = []
    prev_rows = None
    for c, cs in zip(chunks, per_seq):
        Xc, Yc, lens = c.batch
        np.testing.assert_array_equal(c.rows, np.flatnonzero(L > c.start))    # finished ones are gone
        assert (lens is None) == (lengths is None)
        lens = np.full(len(c.rows), c.end - c.start) if lens is None else lens
        assert (lens >= 1).all() and (lens <= c.end - c.start).all()
        np.testing.assert_array_equal(Xc, X[c.start:c.end, c.rows])
        np.testing.assert_array_equal(Yc, Xc + 1000)
        for j, b in enumerate(c.rows):
            seen += [(c.start + t, b) for t in range(lens[j])]
        if prev_rows is None:
            assert c.keep is None
        else:
            np.testing.assert_array_equal(prev_rows[c.keep], c.rows)
        # one target per sequence: Y[rows], scored where the sequence ends
        np.testing.assert_array_equal(cs.batch.Y, Y_seq[cs.rows])
        np.testing.assert_array_equal(cs.ends, (L[cs.rows] > cs.start) & (L[cs.rows] <= cs.end))
        prev_rows = c.rows
    assert sorted(seen) == sorted((t, b) for b in range(B) for t in range(L[b]))
    assert len(seen) == len(set(seen))
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].end >= L.max()
    ends = np.concatenate([c.rows[c.ends] for c in per_seq])
    assert sorted(ends) == list(range(B))                      # each sequence ends in exactly one chunk


def test_chunks_resume_in_the_middle_of_a_batch(rng):
    T, B = 10, 5
    lengths = np.array([10, 2, 7, 4, 9])
    batch = Batch(rng.standard_normal((T, B)), rng.standard_normal((T, B)), lengths)
    whole = list(tbptt_chunks(batch, 3))
    tail = list(tbptt_chunks(batch, 3, start=whole[1].start, prev_rows=whole[0].rows))
    assert len(tail) == len(whole) - 1
    for a, b in zip(whole[1:], tail):
        assert (a.start, a.end, a.last) == (b.start, b.end, b.last)
        for x, y in zip((a.rows, a.keep, *a.batch, a.ends), (b.rows, b.keep, *b.batch, b.ends)):
            np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------------------ one protocol, one place
def _imported_modules(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_trainer_imports_no_model_module():
    imported = _imported_modules(PACKAGE / "training" / "trainer.py")
    assert "rnncore.training.data" in imported                          # the check sees the imports that are there
    for module in ("rnncore.models.sequence", "rnncore.models.architectures", "rnncore.models.seq2seq", "rnncore.models.estimators"):
        assert not any(n == module or n.startswith(module + ".") for n in imported), module
    tree = ast.parse((PACKAGE / "training" / "trainer.py").read_text())
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not used & {"SequenceModel", "select_state", "OneToMany", "Seq2Seq"}


def _package_sources():
    """{path relative to the package, as "training/losses.py": source} for every module of rnncore."""
    return {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_there_is_one_softmax_and_the_models_use_it():
    defs = {name: re.findall(r"^\s*def (\w*softmax\w*)", src, re.M) for name, src in _package_sources().items()}
    assert defs["training/losses.py"] == ["softmax", "softmax_backward", "log_softmax", "softmax_cross_entropy"]
    assert {name: d for name, d in defs.items() if d and name != "training/losses.py"} == {}
    assert architectures.softmax is losses.softmax               # still importable where it was
    for name in ("models/sequence.py", "models/architectures.py", "models/seq2seq.py", "models/estimators.py"):
        src = _package_sources()[name]
        assert "softmax" in src and "np.exp(" not in src, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_matches_a_float64_reference(rng, dtype):
    z = (rng.standard_normal((3, 4, 9)) * 30).astype(dtype)
    z[0, 0, 0] = 700                                              # exp(700) overflows float32 and nearly float64
    ref = np.empty(z.shape)
    for idx in np.ndindex(z.shape[:-1]):
        row = z[idx].astype(np.float64)
        e = [math.exp(v - max(row)) for v in row]
        ref[idx] = [x / math.fsum(e) for x in e]
    p = losses.softmax(z)
    assert p.dtype == dtype and np.isfinite(p).all()
    np.testing.assert_allclose(p, ref, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-30)
    np.testing.assert_allclose(losses.softmax(z, axis=1), np.moveaxis(losses.softmax(np.moveaxis(z, 1, -1)), -1, 1),
                               rtol=1e-6)
    np.testing.assert_allclose(np.exp(losses.log_softmax(z.astype(np.float64))), ref, rtol=1e-12, atol=1e-300)


def test_masked_softmax_is_the_softmax_of_the_unmasked_entries(rng):
    z = rng.standard_normal((4, 6))
    mask = rng.random((4, 6)) < 0.6
    mask[:, 0] = True
    p = losses.softmax(z, mask=mask)
    assert (p[~mask] == 0).all()
    for i in range(4):
        np.testing.assert_allclose(p[i, mask[i]], losses.softmax(z[i, mask[i]]), rtol=1e-15)


def test_softmax_backward_is_the_jacobian_transpose(rng):
    z, dp = rng.standard_normal(5), rng.standard_normal(5)
    p = losses.softmax(z)
    J = np.diag(p) - np.outer(p, p)                              # ∂p_i/∂z_j
    np.testing.assert_allclose(losses.softmax_backward(p, dp), J.T @ dp, rtol=1e-12)


def test_each_kind_of_check_is_written_once():
    """Token ids, lengths and reductions are checked by rnncore.engine.validation only (reference.py, the
    pure-numpy oracle, stays independent of the code it checks)."""
    patterns = {"ids": r"ids in \[0, ", "lengths": r"lengths.*(must be between|expected values in)",
                "reduction": r"reduction: expected"}
    for name, src in _package_sources().items():
        if name in ("engine/validation.py", "layers/reference.py"):
            continue
        for kind, pattern in patterns.items():
            assert not re.search(pattern, src), (name, kind)
    for fn in ("check_ids", "check_lengths", "check_reduction", "check_choice"):
        assert hasattr(_validate, fn)


def test_validation_messages_say_what_was_expected_and_what_was_got():
    with pytest.raises(TypeError, match=r"tokens: expected integer token ids \(T, B\), got dtype float64"):
        _validate.check_ids(np.zeros((2, 2)), 5, "tokens", doc="(T, B)")
    with pytest.raises(ValueError, match=r"tokens: expected 2 dims \(T, B\), got shape \(3,\)"):
        _validate.check_ids(np.zeros(3, int), 5, "tokens", ndim=2, doc="(T, B)")
    with pytest.raises(ValueError, match=r"targets: expected class ids in \[0, 5\), got min -1, max 3"):
        _validate.check_ids(np.array([-1, 3]), 5, "targets", what="class ids")
    ids = _validate.check_ids(np.array([9, 3], np.int32), 5, "y", where=np.array([False, True]))   # 9 is padding
    assert ids.dtype == np.int64
    with pytest.raises(ValueError, match=r"src_lengths must be between 1 and T=4, got values from 0 to 4"):
        _validate.check_lengths([0, 4], 4, 2, "src_lengths")
    assert _validate.check_lengths([0, 4], 4, 2, minimum=0, dtype=np.int64).dtype == np.int64
    with pytest.raises(ValueError, match="reduction: expected 'mean' or 'sum', got 'max'"):
        _validate.check_reduction("max")
    with pytest.raises(ValueError, match=r"cell: expected one of \['gru', 'lstm'\], got 'x'"):
        _validate.check_choice("x", "cell", {"lstm": 1, "gru": 2})


def test_diagnose_checks_lengths_and_ids_now():
    from rnncore.models.diagnostics import diagnose
    from rnncore.models.sequence import SequenceModel
    model = SequenceModel("gru", hidden_size=4, vocab_size=5, embedding_dim=3, seed=0)
    X = np.zeros((3, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="lengths must be between 1 and T=3, got values from 1 to 4"):
        diagnose(model, X, X, lengths=[4, 1])
    with pytest.raises(ValueError, match=r"X: expected token ids in \[0, 5\), got min -1"):
        diagnose(model, X - 1, X)


def test_dropout_generator_is_saved_through_the_protocol(tmp_path, rng):
    """SequenceModel exposes its dropout generator as dropout_rng: a resumed run with dropout draws
    the same masks as an uninterrupted one."""
    from rnncore.training.data import TextStreams
    from rnncore.models.sequence import SequenceModel
    data = TextStreams(rng.integers(0, 9, 400), 4)

    def make(path=None):
        model = SequenceModel("lstm", hidden_size=6, num_layers=2, dropout=0.4, vocab_size=9, embedding_dim=3, seed=0)
        return Trainer(model, Adam(model.params, model.grads, lr=0.01), tbptt=5, seed=2, checkpoint_path=path)

    assert isinstance(make().model.dropout_rng, np.random.Generator)
    full = make().fit(data, max_steps=12)["loss"]
    path = tmp_path / "drop.npz"
    make(path).fit(data, max_steps=6)
    fresh = make()
    fresh.model.dropout_rng.random(7)                # a generator elsewhere than where the checkpoint was
    fresh.load_checkpoint(path)
    assert fresh.fit(data, max_steps=12)["loss"] == full[6:]


def test_a_carried_state_a_checkpoint_cannot_hold_is_refused(tmp_path, rng):
    class ListState(_Leaky):
        def chunk_loss(self, chunk, state, reduction="mean", is_train=True):
            out = super().chunk_loss(chunk, None if state is None else np.asarray(state), reduction, is_train)
            return out[:3] + (list(out[3]),)

    model = ListState()
    trainer = Trainer(model, SGD(model.params, model.grads, lr=0.01), tbptt=3, checkpoint_path=tmp_path / "c.npz",
                      checkpoint_every=1)
    with pytest.raises(TypeError, match=r"carried state: expected an array or a tuple of two arrays \(h, c\) "
                                        r"from ListState.chunk_loss, got list"):
        trainer.fit(_leaky_batches(rng), epochs=1)
