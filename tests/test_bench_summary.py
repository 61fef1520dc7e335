"""`rnncore bench --quick` as a user meets it: a short run that ends by saying, in sentences, what was
compared, whether every kernel was checked, and how much faster rnncore was."""
import json

import pytest

from rnncore import benchmark


@pytest.fixture
def tiny_s(monkeypatch):
    monkeypatch.setitem(benchmark.SHAPES, "S", (4, 6, 8, 16))


def test_quick_means_two_shapes_and_three_samples():
    opts = benchmark.finish_options(benchmark.build_parser().parse_args(["--quick"]))
    assert opts.shapes == benchmark.QUICK_SHAPES == ["S", "M"] and opts.repeats == 3
    full = benchmark.finish_options(benchmark.build_parser().parse_args([]))
    assert full.shapes == list(benchmark.SHAPES) and full.repeats == 11


def test_the_summary_speaks_to_a_user(tmp_path, capsys, tiny_s):
    path = tmp_path / "b.json"
    status = benchmark.main(["--quick", "--shapes", "S", "--repeats", "1", "--threads", "1",
                             "--json", str(path)])
    out = capsys.readouterr().out
    assert status == 0
    rows = json.loads(path.read_text())["rows"]
    summary = out.split("\n\n")[-1]
    assert summary.startswith("Compared: rnncore's RNN, GRU, LSTM layers against PyTorch ")
    assert "S (batch 4, 6 steps, 8 inputs, 16 hidden)" in summary
    assert "Checked before timing: all 6 layer runs agreed with torch.nn on the same weights" in summary
    fwd = sorted(r["ratio"] for r in rows if r["pass"] == "fwd")
    assert f"Inference (layer(x)): rnncore was faster in {sum(v > 1 for v in fwd)} of 3 cases" in summary
    assert "Training (forward and backward)" in summary and "Took " in summary
    for internal in ("issue", "Targets", "met:"):
        assert internal not in out


def test_a_failed_check_is_said_plainly(capsys, tiny_s, monkeypatch):
    monkeypatch.setitem(benchmark.TOLERANCE, "float32", -1.0)   # no layer can pass
    status = benchmark.main(["--quick", "--shapes", "S", "--repeats", "1", "--threads", "1", "--cells", "RNN"])
    assert status == 1
    assert "2 of 2 layer runs did NOT agree with torch.nn" in capsys.readouterr().out
