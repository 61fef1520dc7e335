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
