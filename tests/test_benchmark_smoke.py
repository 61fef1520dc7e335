"""The benchmark runs end to end and its correctness check catches a wrong kernel.

Not a timing test: nothing here depends on how fast anything runs, only on the rows being there and
every rnncore layer agreeing with torch.nn on the same weights before it is timed.
"""
import json
import os

import pytest

import rnncore
from rnncore import benchmark

CELLS = ("RNN", "GRU", "LSTM")


def run_quick(tmp_path, *extra):
    path = tmp_path / "bench.json"
    status = benchmark.main(["--quick", "--shapes", "S", "--repeats", "1", "--json", str(path), *extra])
    return status, json.loads(path.read_text())


def test_quick_run_has_every_row_and_every_check_passes(tmp_path):
    status, result = run_quick(tmp_path)

    rows = result["rows"]
    assert sorted((r["cell"], r["shape"], r["pass"]) for r in rows) == sorted(
        (cell, "S", p) for cell in CELLS for p in ("fwd", "train"))
    B, T, I, H = benchmark.SHAPES["S"]
    for r in rows:
        where = f"{r['cell']} {r['shape']} {r['pass']}"
        check = r["check"]
        assert check["status"] == "ok", f"{where}: {check}"
        assert check["oracle"] == "torch", where
        assert check["max_err"] <= check["tol"], where
        assert check["full_shape_err"] <= benchmark.FULL_TOLERANCE["float32"], where
        assert r["rnncore"]["median_ms"] > 0 and r["torch"]["median_ms"] > 0, where
        assert r["reference"] and r["reference"].get("median_ms", 0) > 0, f"{where}: {r['reference']}"
        assert r["ratio"] > 0, where
        G = {"RNN": 1, "GRU": 3, "LSTM": 4}[r["cell"]]
        fwd_flops = 2 * T * B * G * H * (I + H)
        assert r["flops"] == (fwd_flops if r["pass"] == "fwd" else 3 * fwd_flops), where
    assert result["all_checks_passed"] is True
    assert status == 0
    assert result["environment"]["versions"]["rnncore"] == rnncore.__version__


def test_a_wrong_kernel_is_marked_fail_and_not_timed(tmp_path, monkeypatch):
    class SkewedGRU(rnncore.GRU):
        """GRU whose inference output is 1% off: the benchmark must refuse to time it."""

        def __call__(self, x, hx=None, lengths=None):
            output, h_n = super().__call__(x, hx, lengths)
            return output * 1.01, h_n

    monkeypatch.setattr(rnncore, "GRU", SkewedGRU)
    status, result = run_quick(tmp_path, "--cells", "GRU", "--no-reference")

    rows = {r["pass"]: r for r in result["rows"]}
    assert rows["fwd"]["check"]["status"] == "FAIL"
    assert rows["fwd"]["check"]["worst"] == "output"
    assert rows["fwd"]["rnncore"] is None and rows["fwd"]["ratio"] is None
    assert rows["train"]["check"]["status"] == "ok"      # forward_train was left alone
    assert result["all_checks_passed"] is False
    assert status == 1


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_memory_of_a_training_step_is_measured_in_a_subprocess():
    m = benchmark.measure_memory("rnncore", "LSTM", (4, 6, 8, 16), "float32", 1)
    assert "error" not in m, m
    assert m["peak_mb"] >= 0 and m["peak_mb"] >= m["retained_mb"] - 1.0
