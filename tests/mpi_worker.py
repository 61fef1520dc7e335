"""What tests/test_distributed.py runs on every rank under `mpiexec -n N python tests/mpi_worker.py CASE OUT [...]`.

The runs are built by functions that the tests import too, so the one-process oracle is the same
model, data and optimizer trained by the plain Trainer in the test's own process. Each rank writes
OUT/rank<r>.json (losses as exact float hex, digests, what it raised).
"""
import json
import os
import signal
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402

import rnncore  # noqa: E402
from rnncore.models.sequence import SequenceModel  # noqa: E402
from rnncore.training.data import SequenceDataset  # noqa: E402
from rnncore.training.optim import Adam  # noqa: E402
from rnncore.training.trainer import Trainer  # noqa: E402

STEPS = 50
VOCAB = 7


def data(seed=1, n=23, batch_size=5):
    """Token sequences of lengths 2..12 with a target per step; batches of 5 (the last of 3): on 2
    ranks shards of 3 and 2 columns (2 and 1 in the last), ragged, so that truncated-BPTT chunks
    leave a rank without rows while the other still has some."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 13, size=n)
    xs = [rng.integers(0, VOCAB, size=L) for L in lengths]
    ys = [np.roll(x, -1) for x in xs]
    return SequenceDataset(xs, ys, batch_size=batch_size)


def val_data():
    return data(seed=2, n=9, batch_size=4)


def build(dtype="float32", **trainer_kw):
    """(trainer, train, val) of the equivalence run: an LSTM language model ((h, c) carried across
    truncated-BPTT chunks of 4 steps), Adam with the global norm clipped to 0.5 (clipping active),
    validation every 10 steps with early stopping."""
    model = SequenceModel("lstm", hidden_size=8, vocab_size=VOCAB, embedding_dim=4, seed=3,
                          dtype=np.dtype(dtype))
    opt = Adam(model.params, model.grads, lr=0.02, clip_norm=0.5)
    kw = dict(tbptt=4, seed=5, eval_every=10, patience=100)
    kw.update(trainer_kw)
    return Trainer(model, opt, **kw), data(), val_data()


def record(trainer, **extra):
    h = trainer.history
    return {"loss": [float(x).hex() for x in h["loss"]], "val_loss": [float(x).hex() for x in h["val_loss"]],
            "val_step": h["val_step"], "step": trainer.step, "params": digest(trainer.model.params), **extra}


def digest(params):
    import hashlib
    m = hashlib.sha256()
    for k in sorted(params):
        m.update(k.encode() + np.ascontiguousarray(params[k]).tobytes())
    return m.hexdigest()


def case_train(out, dtype, steps=STEPS, checkpoint=None, resume=None, patience=None, min_delta=0.0):
    """Train to `steps` steps (a checkpoint at the end if given; from a checkpoint if resume, with
    early stopping if patience), replicas compared at the end of every epoch and at the end."""
    kw = dict(check_replicas=True, checkpoint_path=checkpoint, distributed=True)
    if resume:
        trainer = Trainer.from_checkpoint(resume, eval_every=10, patience=patience, min_delta=min_delta, **kw)
    else:
        trainer = build(dtype, **kw)[0]
    _, train, val = build(dtype)
    trainer.fit(train, val, max_steps=steps)
    return record(trainer, replicas=trainer.check_replicas())


def case_checks(out, dtype):
    """The two consistency checks below, one after the other."""
    result = case_nonfinite(out, dtype)
    result["replicas"] = case_replicas_differ(out, dtype)["raised"]
    return result


def case_nonfinite(out, dtype):
    """Rank 1's shard alone gets an infinite loss at step 8: every rank raises NonFiniteError there."""
    trainer, train, _ = build(dtype, distributed=True)
    model = trainer.model
    orig = model.chunk_loss

    def chunk_loss(chunk, state, **kw):
        loss, n, backward, st = orig(chunk, state, **kw)
        if trainer.rank == 1 and trainer.step == 7 and n:
            return float("inf"), n, backward, st
        return loss, n, backward, st
    model.chunk_loss = chunk_loss
    try:
        trainer.fit(train, max_steps=STEPS)
    except rnncore.NonFiniteError as e:
        return record(trainer, nonfinite=f"NonFiniteError: {e}")
    return record(trainer, nonfinite=None)


def case_replicas_differ(out, dtype):
    """One rank's parameter nudged by one ulp: check_replicas raises on every rank."""
    from rnncore.distributed import DistributedError
    trainer = build(dtype, distributed=True)[0]
    if trainer.rank == 1:
        p = next(iter(trainer.model.params.values()))
        p.flat[0] = np.nextafter(p.flat[0], np.inf)
    try:
        trainer.check_replicas()
    except DistributedError as e:
        return {"raised": str(e)}
    return {"raised": None}


def case_fail(out, dtype, how, checkpoint, rank=1):
    """Rank `rank` raises (or dies) at step 7; a checkpoint every 2 steps."""
    trainer, train, val = build(dtype, distributed=True, checkpoint_path=checkpoint, checkpoint_every=2)
    orig = trainer._after_step

    def after_step(loss, throughput, v):
        orig(loss, throughput, v)
        if trainer.rank == rank and trainer.step == 7:
            if how == "raise":
                raise RuntimeError("boom on purpose")
            os.kill(os.getpid(), signal.SIGKILL)
    trainer._after_step = after_step
    trainer.fit(train, val, max_steps=STEPS)
    return record(trainer)


def main(argv):
    case, out, *args = argv
    fn = globals()[f"case_{case}"]
    kw = dict(a.split("=", 1) for a in args)
    for k, convert in (("steps", int), ("patience", int), ("min_delta", float), ("rank", int)):
        if k in kw:
            kw[k] = convert(kw[k])
    kw.setdefault("dtype", "float32")
    with rnncore.threads(1):
        result = fn(out, **kw)
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    result["size"] = MPI.COMM_WORLD.Get_size()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
