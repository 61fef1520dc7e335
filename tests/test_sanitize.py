"""Memory safety in CI (issue 7): tools/sanitize.sh's bounds-check and AddressSanitizer stages on a
reduced suite (the API table and the determinism tests: every cell, both dtypes, 1-3 threads, ragged
lengths, dropout, both step-GEMM paths). The full runs (and valgrind, and the self-test that shows
each tool catches a deliberate out-of-bounds read) are `tools/sanitize.sh` and
`tools/sanitize.sh selftest`; see tools/README.md.

Each stage builds a throwaway copy of the tree, so this takes a minute or two."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("gcc") is None,
                    reason="the sanitizer builds need Linux and gcc")
def test_no_memory_errors_under_bounds_checks_and_asan(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, RNNCORE_SANITIZE_LOGS=str(tmp_path),
               RNNCORE_SANITIZE_SUITE="tests/test_api.py tests/test_determinism.py",
               RNNCORE_SANITIZE_K="not fresh_process")
    proc = subprocess.run(["bash", str(ROOT / "tools" / "sanitize.sh"), "boundscheck", "asan"],
                          capture_output=True, text=True, env=env, timeout=1500)
    out = proc.stdout + proc.stderr
    summary = out[out.rfind("== summary"):]
    assert proc.returncode == 0, out[-4000:]
    assert "boundscheck: 0 out-of-bounds index errors" in summary, summary
    assert "asan: 0 AddressSanitizer reports" in summary, summary
    for stage in ("boundscheck", "asan"):   # the suite really ran, and passed, in each build
        line = next(l for l in summary.splitlines() if l.strip().startswith(stage + ":"))
        assert " passed" in line and "failed" not in line, line
