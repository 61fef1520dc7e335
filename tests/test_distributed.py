"""Data-parallel training under `mpiexec -n N` (rnncore.distributed) against the one-process Trainer,
and hyperparameter search on a Dask LocalCluster against the same search run serially.

The MPI runs are tests/mpi_worker.py launched with the venv's mpiexec (the mpich wheel). The oracle
is the plain one-process Trainer on the same model, data and optimizer (mpi_worker.build), which
the rest of the suite tests against PyTorch and the numpy reference. Every rank writes its losses
(exact hex floats) and a digest of its parameters.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import rnncore
from rnncore import distributed as dist
from rnncore.training.checkpoint import load
from rnncore.training.data import Batch, SequenceDataset, TextStreams
from rnncore.training.trainer import Trainer, load_model

sys.path.insert(0, os.path.dirname(__file__))
import mpi_worker as w  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
if not os.path.exists(MPIEXEC):        # an interpreter outside a venv: the mpich wheel's on PATH
    MPIEXEC = shutil.which("mpiexec") or MPIEXEC
TIMEOUT = 120


def mpirun(n, *args, cwd=None, module=None, expect_ok=True):
    """Run the worker (or `python -m module`) on n ranks; returns (CompletedProcess, wall seconds)."""
    target = ["-m", module] if module else [os.path.join(HERE, "mpi_worker.py")]
    env = dict(os.environ, OMP_WAIT_POLICY="passive", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    p = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *target, *map(str, args)], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=TIMEOUT)
    wall = time.perf_counter() - t0
    if expect_ok:
        assert p.returncode == 0, p.stdout + p.stderr
    return p, wall


def ranks(out, n):
    results = []
    for r in range(n):
        with open(os.path.join(out, f"rank{r}.json")) as f:
            results.append(json.load(f))
    return results


def losses(result, key="loss"):
    return np.array([float.fromhex(x) for x in result[key]])


def one_process(dtype, steps=w.STEPS, resume=None, **kw):
    with rnncore.threads(1):
        if resume:
            trainer = Trainer.from_checkpoint(resume, eval_every=10, **kw)
        else:
            trainer = w.build(dtype, **kw)[0]
        _, train, val = w.build(dtype)
        trainer.fit(train, val, max_steps=steps)
    return trainer


def assert_same_run(result, trainer, rtol, first_step=0):
    """The N-rank run's training and validation losses are the one-process run's (from first_step)."""
    got, want = losses(result), np.array(trainer.history["loss"][first_step:])
    assert len(got) == len(want) > 0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0)
    assert result["val_step"] == trainer.history["val_step"]
    np.testing.assert_allclose(losses(result, "val_loss"), trainer.history["val_loss"], rtol=rtol, atol=0)
    return float(np.max(np.abs(got - want) / np.abs(want)))


# ---------------------------------------------------------------------------------------------
# equivalence: 2 ranks == 1 process over 50 steps; identical ranks; reproducible


FIGURES = {}


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-6)])
def test_two_ranks_equal_one_process_over_50_steps(tmp_path, dtype, rtol):
    mpirun(2, "train", tmp_path, f"dtype={dtype}")
    r0, r1 = ranks(tmp_path, 2)
    # the replicas are bit-identical: same losses, same parameter bits (and check_replicas passed
    # at the end of every epoch: it raises otherwise)
    assert r0 == r1
    assert r0["step"] == w.STEPS and r0["size"] == 2
    trainer = one_process(dtype)
    FIGURES[dtype] = assert_same_run(r0, trainer, rtol)
    if dtype == "float32":
        # two runs with the same number of ranks give the same bits
        again = tmp_path / "again"
        again.mkdir()
        mpirun(2, "train", again, f"dtype={dtype}")
        assert ranks(again, 2)[0] == r0
        # and the 2-rank run is not the one-process run bit for bit (the sums are grouped otherwise):
        # what is compared above is rounding, not a copy of the same computation
        assert not np.array_equal(losses(r0), trainer.history["loss"])


def test_checkpoint_from_two_ranks_resumes_on_one_and_on_three(tmp_path):
    """A 2-rank checkpoint taken in the middle of a batch (the LSTM's (h, c) carried between
    truncated-BPTT chunks, gathered from both ranks) resumes in one process and on 3 ranks (shards
    of 2, 2 and 1 sequences) to the losses of the uninterrupted one-process run; on 3 ranks with
    early stopping, all ranks stop where one process stops."""
    ckpt = tmp_path / "c.npz"
    mpirun(2, "train", tmp_path, "dtype=float64", "steps=23", f"checkpoint={ckpt}")
    arrays, meta = load(ckpt)
    assert meta["trainer"]["step"] == 23 and meta["trainer"]["chunk_start"] > 0
    assert meta["trainer"]["carry"] == "hc" and arrays["carry/h"].shape[1] == len(arrays["carry/cols"]) > 2

    whole = one_process("float64")
    resumed = one_process("float64", resume=ckpt)
    np.testing.assert_allclose(resumed.history["loss"], whole.history["loss"][23:], rtol=1e-12, atol=0)

    three = tmp_path / "three"
    three.mkdir()
    mpirun(3, "train", three, f"resume={ckpt}", "patience=1", "min_delta=0.02")
    r = ranks(three, 3)
    assert r[0] == r[1] == r[2] and r[0]["size"] == 3
    stopped = one_process("float64", resume=ckpt, patience=1, min_delta=0.02)
    assert stopped.stopped and stopped.step < w.STEPS    # early stopping did stop it
    assert r[0]["step"] == stopped.step
    assert_same_run(r[0], stopped, 1e-12)


def test_nonfinite_on_one_rank_raises_on_every_rank_and_differing_replicas_are_caught(tmp_path):
    mpirun(2, "checks", tmp_path)
    r0, r1 = ranks(tmp_path, 2)
    for r in (r0, r1):
        assert r["nonfinite"].startswith("NonFiniteError: step 8 ") and "loss is inf" in r["nonfinite"]
        assert r["step"] == 7
        assert "ranks [1] hold other parameters" in r["replicas"]
    assert r0["params"] == r1["params"]


# ---------------------------------------------------------------------------------------------
# failures: the job ends within seconds, rank 0 says why, the last checkpoint loads


@pytest.mark.parametrize("how, rank", [("raise", 1), ("raise", 0), ("die", 1)])
def test_a_failing_rank_stops_the_job_and_the_checkpoint_stays_loadable(tmp_path, how, rank):
    ckpt = tmp_path / "c.npz"
    p, wall = mpirun(2, "fail", tmp_path, f"how={how}", f"checkpoint={ckpt}", f"rank={rank}", expect_ok=False)
    assert p.returncode != 0
    assert wall < 30, wall            # never a hang (a failing rank waits at most ABORT_GRACE seconds)
    if how == "raise":                # said once, by rank 0
        said = f"rnncore: error: rank {rank} of 2 failed: RuntimeError: boom on purpose"
        assert p.stderr.count(said) == 1, p.stderr
    else:                               # killed: mpiexec names it and stops the other rank
        said = p.stdout + p.stderr
        assert "BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES" in said and "signal 9" in said, said
    assert not os.path.exists(tmp_path / "rank0.json")          # rank 0 did not run to the end
    model, meta = load_model(ckpt)
    assert meta["trainer"]["step"] == 6                         # the last one, at step 6 of 7
    # it resumes: in one process, to the losses of the uninterrupted one-process run
    whole = one_process("float32", steps=10)
    resumed = one_process("float32", steps=10, resume=ckpt)
    np.testing.assert_allclose(resumed.history["loss"], whole.history["loss"][6:], rtol=2e-6, atol=0)


# ---------------------------------------------------------------------------------------------
# the command line under mpiexec


def test_cli_under_mpiexec_trains_like_one_process(tmp_path):
    text = ("def f(x):\n    return x * 2\n\nclass A:\n    pass\n" * 80)
    (tmp_path / "t.txt").write_text(text)
    args = ["train", "--data", "t.txt", "--steps", "12", "--hidden-size", "16", "--embedding-dim", "8",
            "--batch-size", "5", "--tbptt", "16", "--threads", "1", "--no-progress", "--sample-length", "0"]
    p2, _ = mpirun(2, *args, "--out", "two.npz", cwd=tmp_path, module="rnncore")
    p1 = subprocess.run([sys.executable, "-m", "rnncore", *args, "--out", "one.npz"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=TIMEOUT)
    assert p1.returncode == 0, p1.stderr
    # progress and results are printed by rank 0 only, once
    assert p2.stdout.count("model: ") == 1 and p2.stdout.count("done: ") == 1, p2.stdout
    assert "2 ranks x 1 thread" in p2.stdout
    assert p2.stdout.count("step    12/12") == 1
    one, _ = load_model(tmp_path / "one.npz")
    two, meta = load_model(tmp_path / "two.npz")
    assert meta["trainer"]["step"] == 12
    for k, v in one.params.items():
        np.testing.assert_allclose(two.params[k], v, rtol=1e-4, atol=1e-5)
    # and the 2-rank checkpoint resumes in one process
    p3 = subprocess.run([sys.executable, "-m", "rnncore", "train", "--resume", "two.npz", "--steps", "14",
                         "--threads", "1", "--no-progress", "--sample-length", "0"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=TIMEOUT)
    assert p3.returncode == 0, p3.stderr
    assert "resuming from two.npz at step 12" in p3.stdout


# ---------------------------------------------------------------------------------------------
# sharding (in this process)


def test_shard_range_splits_every_column_once_in_rank_order():
    for n in (0, 1, 4, 5, 7, 32):
        for size in (1, 2, 3, 5):
            parts = [dist.shard_range(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            widths = [hi - lo for lo, hi in parts]
            assert max(widths) - min(widths) <= 1


@pytest.mark.parametrize("random_offset", [True, False])
def test_text_stream_shards_are_the_columns_of_the_whole_batch(random_offset):
    ids = np.arange(1000) % 37
    whole = TextStreams(ids, 7, random_offset=random_offset)
    for size in (2, 3):
        rngs = [np.random.default_rng(4) for _ in range(size + 1)]
        (full,) = whole.batches(rngs[-1])
        for r in range(size):
            shard = dist.ShardedSource(whole, r, size)
            (part,) = shard.batches(rngs[r])
            lo, hi = shard.columns
            np.testing.assert_array_equal(part.X, full.X[:, lo:hi])
            np.testing.assert_array_equal(part.Y, full.Y[:, lo:hi])
            # the generator is drawn from as by the whole source
            assert rngs[r].bit_generator.state == rngs[-1].bit_generator.state


def test_sharded_sequence_batches_keep_the_whole_length_and_cut_per_sequence_targets():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((L, 2)) for L in (3, 5, 2, 4, 1)]
    data = SequenceDataset(xs, list(np.arange(5)), batch_size=5, shuffle=False)
    (full,) = data.batches(None)
    (part,) = dist.ShardedSource(data, 1, 2).batches(None)     # columns 3 and 4
    assert part.X.shape == (5, 2, 2)
    np.testing.assert_array_equal(part.Y, [3, 4])
    np.testing.assert_array_equal(part.lengths, [4, 1])
    with pytest.raises(TypeError, match="time-major X"):
        dist.shard_batch((np.ones(3), np.ones(3)), 0, 1)
    assert isinstance(dist.shard_batch(full, 0, 0), Batch)


def test_bad_communicator_is_refused():
    model = w.build()[0].model
    with pytest.raises(TypeError, match="mpi4py communicator"):
        Trainer(model, w.build()[0].optimizer, comm=object())
    with pytest.raises(TypeError, match="distributed: expected True or False"):
        Trainer(model, w.build()[0].optimizer, distributed="yes")


# ---------------------------------------------------------------------------------------------
# hyperparameter search on a Dask cluster


def test_search_on_a_dask_cluster_equals_the_serial_search():
    import dask
    from dask.distributed import Client, LocalCluster, get_task_stream
    from joblib import parallel_backend
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    from rnncore.models.estimators import RNNClassifier, RNNRegressor

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6, 2))
    y_cls = (X[:, :3, 0].sum(1) > X[:, 3:, 0].sum(1)).astype(int)
    y_reg = X[:, :, 1].cumsum(1)[:, -1]
    searches = [
        lambda **kw: GridSearchCV(RNNClassifier(max_iter=4, batch_size=8, random_state=0),
                                  {"hidden_size": [4, 8], "lr": [0.01, 0.03]}, cv=2, **kw).fit(X, y_cls),
        lambda **kw: RandomizedSearchCV(RNNRegressor(max_iter=4, batch_size=8, random_state=0),
                                        {"hidden_size": [3, 5, 7], "cell": ["gru", "lstm"], "lr": [0.01, 0.02]},
                                        n_iter=3, cv=2, random_state=1, **kw).fit(X, y_reg),
    ]
    serial = [search() for search in searches]
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        with get_task_stream(client) as tasks, parallel_backend("dask"):
            on_cluster = [search(n_jobs=-1) for search in searches]
        workers = {t["worker"] for t in tasks.data}
    assert len(workers) == 2            # the fits ran in both worker processes
    for a, b in zip(serial, on_cluster):
        assert a.best_params_ == b.best_params_
        for key in ("params", "mean_test_score", "split0_test_score", "split1_test_score", "rank_test_score"):
            assert list(a.cv_results_[key]) == list(b.cv_results_[key]), key
        np.testing.assert_array_equal(a.predict(X), b.predict(X))
