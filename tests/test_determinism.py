"""Determinism: the same seed gives bit-identical outputs, final states, gradients and parameters after
a short training loop, whatever rnncore's thread count (1, 2, 3) and from run to run, in this process
and in a fresh one.

What it rests on (rnncore/_kernels.pyx): the batch is cut into contiguous blocks of rows, one per
thread, and rnncore's own step GEMM sums every element over k in one fixed order whatever rows a
thread has; the large GEMMs (rnncore._kernels.matmul) are cut into a fixed grid of row or column
blocks of C (one per usable CPU, whatever the thread count), each block one BLAS call, so one
thread makes the very same BLAS calls as a team; test_matmul_bit_identical_whatever_the_thread_count
checks that part alone. The BLAS step path (config_context(step_gemm="blas"), the reference) splits each step
by the thread's rows, and BLAS rounds by block size: it is checked run to run and to rounding across
thread counts. A difference of one ulp fails, and the message names the step and the first quantity
that differs.

The problem is sized so that rnncore really uses the requested threads (a guard checks that
rnncore.engine.threads.threads_for gives the thread count asked for, rather than falling back to one thread
for a small call), with a batch (13) that no thread count divides, ragged lengths, dropout between
layers (masks drawn from the layer's seeded generator) and both step-GEMM paths (rnncore's own, with
the input projection before the time loop or inside it, and the BLAS reference path).

Run as a script (``python tests/test_determinism.py``) it prints one digest per configuration;
test_fresh_process_gives_the_same_bits compares those with the digests of this process.
"""
import hashlib
import os
import subprocess
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # as tests/conftest.py, for the script mode

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnncore  # noqa: E402
from rnncore import _kernels as K  # noqa: E402
from rnncore.engine import threads as _threads  # noqa: E402

# cell id -> (layer class, extra constructor arguments)
CELLS = {
    "rnn_tanh": (rnncore.RNN, dict(nonlinearity="tanh")),
    "rnn_relu": (rnncore.RNN, dict(nonlinearity="relu")),
    "lstm": (rnncore.LSTM, {}),
    "lstm_proj": (rnncore.LSTM, dict(proj_size=20)),
    "lstm_peephole": (rnncore.LSTM, dict(peephole=True)),
    "gru": (rnncore.GRU, {}),
    "gru_reset_before": (rnncore.GRU, dict(reset_after=False)),
}
DTYPES = {"f32": np.float32, "f64": np.float64}
# "own": rnncore's own step GEMM (B = 13 is below the configuration's step_projection_min_rows, so the input
# projection is one GEMM before the time loop); "own-step-projection": the same with the projection
# inside the time loop (forced for this batch); "blas": the BLAS reference path
STEP_GEMMS = ["own", "own-step-projection", "blas"]

# T*B*(work per row) is above rnncore's single-thread cut-off (the configuration's small_work_flops)
# for every cell, and B = 13 leaves uneven blocks for 2 and 3 threads.
T, B, I, H, NUM_LAYERS = 20, 13, 16, 32, 2
LENGTHS = [20, 7, 1, 20, 13, 2, 19, 20, 5, 11, 1, 16, 9]
DROPOUT = 0.25
STEPS = 3
LR = 0.1
THREAD_COUNTS = (1, 2, 3)


def make_layer(cell, dtype):
    cls, extra = CELLS[cell]
    return cls(I, H, num_layers=NUM_LAYERS, bidirectional=True, dropout=DROPOUT, dtype=dtype, seed=1234,
               **extra)


def problem(layer):
    """x, hx and the regression targets of output and h_n for the layer, from a fixed seed."""
    rng = np.random.default_rng(99)
    LD, P = layer.num_layers * layer.num_directions, layer.proj_size or layer.hidden_size
    x = rng.standard_normal((T, B, I)).astype(layer.dtype)
    h0 = rng.uniform(-0.5, 0.5, (LD, B, P)).astype(layer.dtype)
    y = rng.uniform(-0.5, 0.5, (T, B, layer.output_size)).astype(layer.dtype)
    y_h = rng.uniform(-0.5, 0.5, (LD, B, P)).astype(layer.dtype)
    if layer.mode == "LSTM":
        c0 = rng.uniform(-1.0, 1.0, (LD, B, H)).astype(layer.dtype)
        return x, (h0, c0), y, y_h
    return x, h0, y, y_h


def _flat(prefix, value):
    """[(name, array)] for an array or a tuple of arrays (LSTM states)."""
    if isinstance(value, tuple):
        return [(f"{prefix}[{i}]", v) for i, v in enumerate(value)]
    return [(prefix, value)]


def train_trace(cell, dtype, num_threads, step_gemm="own"):
    """Plain SGD for STEPS steps; returns the list of (quantity name, array copy) in the order they
    were produced: per step the output, h_n, dropout masks, dx, dhx, every grad, every param after
    the update."""
    path = {"step_gemm": "blas" if step_gemm == "blas" else "own"}
    if step_gemm == "own-step-projection":
        path["step_projection_min_rows"] = 1
    with rnncore.config_context(**path):
        layer = make_layer(cell, dtype)
        x, hx, y, y_h = problem(layer)
        trace = []
        with rnncore.threads(num_threads):
            # guard: the problem is big enough that rnncore really runs on num_threads threads
            assert _threads.threads_for(layer._flops(T, B)) == num_threads
            for step in range(STEPS):
                layer.zero_grad()
                output, h_n, backprop = layer.forward_train(x, hx, LENGTHS)
                # loss = (|output - y|^2 + |h_n - y_h|^2) / (2 B): its gradients, in the layer's dtype
                d_output = (output - y) / layer.dtype.type(B)
                h = h_n[0] if isinstance(h_n, tuple) else h_n
                d_h = (h - y_h) / layer.dtype.type(B)
                dx, dhx = backprop(d_output, (d_h, None) if isinstance(h_n, tuple) else d_h)
                trace += _flat(f"step {step}: output", output)
                trace += _flat(f"step {step}: h_n", h_n)
                trace += [(f"step {step}: dropout mask {k}", m) for k, m in enumerate(backprop.masks)]
                trace += _flat(f"step {step}: dx", dx)
                trace += _flat(f"step {step}: dhx", dhx)
                trace += [(f"step {step}: grad {k}", g) for k, g in sorted(layer.grads.items())]
                for k in sorted(layer.params):
                    layer.params[k] -= layer.dtype.type(LR) * layer.grads[k]   # SGD, in place
                trace += [(f"step {step}: param {k} after SGD", p) for k, p in sorted(layer.params.items())]
            output, _ = layer(x, hx, LENGTHS)
            trace.append(("inference output after training", output))
        for name, a in trace:   # a diverged run (inf, NaN everywhere) would prove little
            assert np.all(np.isfinite(a)), f"{cell}: {name} is not finite; the training loop diverged"
        return [(name, np.array(a, copy=True)) for name, a in trace]


def digest(trace):
    h = hashlib.sha256()
    for name, a in trace:
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def first_difference(got, want):
    """None when the traces are bit-identical, else a message naming the first quantity that differs."""
    assert [n for n, _ in got] == [n for n, _ in want], "the two runs produced different quantities"
    for (name, a), (_, b) in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{name}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        # compare the bits: NaNs with equal payloads are equal, -0.0 differs from 0.0
        same = a.view(np.uint8) == b.view(np.uint8)
        if not np.all(same):
            ne = a != b
            worst = np.unravel_index(np.argmax(np.where(ne, np.abs(a.astype(np.float64) - b), 0)), a.shape)
            return (f"{name} is the first quantity that differs: {int(ne.sum())}/{a.size} elements, "
                    f"max abs diff {np.max(np.abs(a.astype(np.float64) - b)):.3e} at {tuple(map(int, worst))} "
                    f"({float(a[worst])!r} vs {float(b[worst])!r})")
    return None


def _configs():
    return [(c, d, g) for c in CELLS for d in DTYPES for g in STEP_GEMMS]


@pytest.fixture(scope="module", autouse=True)
def _needs_openmp():
    if not rnncore.openmp_enabled():
        pytest.skip("rnncore was built without OpenMP: the thread count has no effect")


# (m, n, k, trans_a, trans_b) of the large GEMMs a layer of the size above makes: input projections
# (T*B, G*H, I_k), weight gradients dW = dG^T @ x (G*H, I_k, T*B), input gradients dx = dG @ W
@pytest.mark.parametrize("shape", [
    (T * B, 4 * H, I, False, True), (T * B, H, 2 * H, False, True), (4 * H, 2 * H, T * B, True, False),
    (3 * H, I, T * B, True, False), (T * B, 2 * H, 4 * H, False, False)],
    ids=lambda s: "x".join(map(str, s[:3])) + ("-tA" if s[3] else "") + ("-tB" if s[4] else ""))
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_matmul_bit_identical_whatever_the_thread_count(shape, dtype):
    """rnncore._kernels.matmul, which every large GEMM of the layers goes through, on its own."""
    m, n, k, ta, tb = shape
    dt = DTYPES[dtype]
    rng = np.random.default_rng(5)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
    c0 = rng.standard_normal((m, n)).astype(dt)
    results = {}
    for nt in THREAD_COUNTS:
        c = c0.copy()
        K.matmul(c, a, b, trans_a=ta, trans_b=tb, beta=1.0, num_threads=nt)
        results[nt] = [("C", c)]
    problems = [f"{nt} threads vs 1: {first_difference(results[nt], results[1])}"
                for nt in THREAD_COUNTS[1:] if first_difference(results[nt], results[1])]
    assert not problems, "\n".join(problems)


# a tall C (row blocks), a wide one (column blocks), and one too small to split
@pytest.mark.parametrize("shape", [(T * B, 4 * H, I), (8, T * B, 4 * H), (3, 5, 4)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_matmul_with_bias(shape, dtype):
    """matmul(..., bias=b), the input projection before the time loop: C := b + A @ B^T, each thread
    setting its own block to b before its BLAS call. The same bits as setting C to b, then
    accumulating (beta = 1), on any thread count; numpy's value to rounding; a bias of the wrong
    length is refused."""
    m, n, k = shape
    dt = DTYPES[dtype]
    rng = np.random.default_rng(6)
    a, w = rng.standard_normal((m, k)).astype(dt), rng.standard_normal((n, k)).astype(dt)
    bias = rng.standard_normal(n).astype(dt)
    filled = np.empty((m, n), dt)
    filled[...] = bias
    K.matmul(filled, a, w, trans_b=True, beta=1.0, num_threads=1)
    for nt in THREAD_COUNTS:
        c = np.full((m, n), np.nan, dt)       # whatever C held before does not matter
        K.matmul(c, a, w, trans_b=True, num_threads=nt, bias=bias)
        assert first_difference([("C", c)], [("C", filled)]) is None, f"{nt} threads"
    tol = 1e-5 if dt == np.float32 else 1e-12
    np.testing.assert_allclose(filled, bias + a.astype(np.float64) @ w.T.astype(np.float64),
                               rtol=tol, atol=tol * k)
    with pytest.raises(ValueError, match="bias must have one value per column of C"):
        K.matmul(np.empty((m, n), dt), a, w, trans_b=True, bias=bias[:-1])


@pytest.mark.parametrize("step_gemm", STEP_GEMMS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("cell", list(CELLS))
def test_bit_identical_whatever_the_thread_count_and_run(cell, dtype, step_gemm):
    runs = {n: train_trace(cell, DTYPES[dtype], n, step_gemm) for n in THREAD_COUNTS}
    again = train_trace(cell, DTYPES[dtype], THREAD_COUNTS[-1], step_gemm)
    problems = []
    diff = first_difference(again, runs[THREAD_COUNTS[-1]])
    if diff:
        problems.append(f"run to run on {THREAD_COUNTS[-1]} threads: {diff}")
    for n in THREAD_COUNTS[1:]:
        if step_gemm == "blas":
            # The BLAS reference path computes each thread's block of rows with one BLAS call per
            # step, and BLAS may round a row differently depending on the block's size (OpenBLAS
            # does in float32): bit-identity across thread counts is promised for the default path
            # only; the BLAS path must agree to rounding and be identical run to run (above).
            tol = 1e-3 if dtype == "f32" else 1e-10
            for (name, a), (_, b) in zip(runs[n], runs[1]):
                scale = max(1.0, float(np.abs(b).max()))
                assert np.abs(a - b).max() <= tol * scale, f"{n} threads vs 1: {name}"
            continue
        diff = first_difference(runs[n], runs[1])
        if diff:
            problems.append(f"{n} threads vs 1 thread: {diff}")
    assert not problems, f"{cell} {dtype} step_gemm={step_gemm}:\n  " + "\n  ".join(problems)


def test_training_changes_the_parameters():
    """The loop above must really train: otherwise identical bits would prove little."""
    trace = dict(train_trace("lstm", np.float64, 1))
    layer = make_layer("lstm", np.float64)
    moved = [k for k in layer.params
             if not np.array_equal(trace[f"step {STEPS - 1}: param {k} after SGD"], layer.params[k])]
    assert sorted(moved) == sorted(layer.params)
    assert not np.array_equal(trace["step 0: output"], trace[f"step {STEPS - 1}: output"])


def test_fresh_process_gives_the_same_bits():
    """Another interpreter (other addresses, other heap layout) computes the same bits."""
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    theirs = dict(line.rsplit(" ", 1) for line in proc.stdout.splitlines() if line.strip())
    mismatched = []
    for cell, dtype, gemm in _SCRIPT_CONFIGS:
        key = f"{cell}/{dtype}/{gemm}/{THREAD_COUNTS[-1]}"
        mine = digest(train_trace(cell, DTYPES[dtype], THREAD_COUNTS[-1], gemm))
        if theirs.get(key) != mine:
            mismatched.append(key)
    assert not mismatched, f"a fresh process computed different bits for {mismatched}"


# the configurations the script prints (a subset keeps the subprocess short)
_SCRIPT_CONFIGS = [(c, d, "own") for c in CELLS for d in DTYPES]

if __name__ == "__main__":
    for cell, dtype, gemm in _SCRIPT_CONFIGS:
        n = THREAD_COUNTS[-1]
        print(f"{cell}/{dtype}/{gemm}/{n} {digest(train_trace(cell, DTYPES[dtype], n, gemm))}")
