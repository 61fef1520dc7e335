"""Build promises: without OpenMP the kernels still build (with a warning) and give the same answers."""
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np

import rnncore

ROOT = pathlib.Path(__file__).resolve().parents[1]

PROBE = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
import rnncore
assert rnncore.__file__.startswith(sys.argv[1]), rnncore.__file__
layer = rnncore.GRU(3, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
x = np.linspace(-1, 1, 7 * 4 * 3).reshape(7, 4, 3)
out, h, bp = layer.forward_train(x, lengths=[7, 2, 5, 1])
dx, dh = bp(np.ones_like(out))
np.save(sys.argv[2], np.concatenate([out.ravel(), dx.ravel(), layer.grads["weight_hh_l1"].ravel()]))
print("openmp", rnncore.openmp_enabled())
"""


def test_builds_and_runs_without_openmp(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "rnncore", src / "rnncore",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    shutil.copy(ROOT / "setup.py", src)
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    env = dict(os.environ, RNNCORE_NO_OPENMP="1")
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, env=env,
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "does not support OpenMP" in build.stderr
    run = subprocess.run([sys.executable, "-c", PROBE, str(src), str(tmp_path / "serial.npy")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "openmp False" in run.stdout
    run = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), str(tmp_path / "omp.npy")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"openmp {rnncore.openmp_enabled()}" in run.stdout
    np.testing.assert_allclose(np.load(tmp_path / "serial.npy"), np.load(tmp_path / "omp.npy"),
                               rtol=1e-12, atol=1e-13)


ISA_PROBE = """
import hashlib, sys, numpy as np
sys.path.insert(0, sys.argv[1])
import rnncore
assert rnncore.__file__.startswith(sys.argv[1]), rnncore.__file__
h = hashlib.sha256()
rng = np.random.default_rng(0)
for make in (lambda dt: rnncore.LSTM(6, 37, num_layers=2, bidirectional=True, proj_size=5, peephole=True,
                                     dtype=dt, seed=1),
             lambda dt: rnncore.GRU(6, 33, batch_first=True, dtype=dt, seed=1),
             lambda dt: rnncore.GRU(6, 16, reset_after=False, dtype=dt, seed=1),
             lambda dt: rnncore.RNN(6, 64, nonlinearity="relu", dtype=dt, seed=1)):
    for dt in (np.float32, np.float64):
        for B in (1, 5, 19):                 # matrix-vector rows, partial tiles, in-loop projection
            layer = make(dt)
            x = rng.standard_normal((B, 7, 6) if layer.batch_first else (7, B, 6)).astype(dt)
            out, hn, bp = layer.forward_train(x, lengths=rng.integers(1, 8, B))
            dx, dhx = bp(rng.standard_normal(out.shape).astype(dt))
            for a in [out, dx, *(hn if isinstance(hn, tuple) else (hn,))] + [layer.grads[k] for k in sorted(layer.grads)]:
                h.update(np.ascontiguousarray(a).tobytes())
print("vector_bytes", rnncore._kernels.vector_bytes(), "digest", h.hexdigest())
"""


def test_every_instruction_set_path_gives_the_same_bits(tmp_path):
    """The build takes -march=native, or with RNNCORE_PORTABLE=1 AVX2 and FMA (x86-64-v3): on a machine
    with AVX-512 these are two kernel paths (512- and 256-bit vectors, panels of 32 and 16 floats), and
    they must agree bit for bit (every sum in the same order, fused multiply-adds on both). On an AVX2
    machine both builds take the AVX2 path, and must agree all the same."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "rnncore", src / "rnncore",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    for f in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src,
                           env=dict(os.environ, RNNCORE_PORTABLE="1"), capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    got = {}
    for name, tree in (("portable", src), ("native", ROOT)):
        run = subprocess.run([sys.executable, "-c", ISA_PROBE, str(tree)], capture_output=True, text=True,
                             cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        _, width, _, digest = run.stdout.split()
        got[name] = (int(width), digest)
    assert got["portable"][0] == 32                                # AVX2: 256-bit vectors
    assert got["native"][0] == rnncore._kernels.vector_bytes()
    assert got["portable"][1] == got["native"][1], f"the ISA paths differ: {got}"
