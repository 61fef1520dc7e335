"""The rnncore command end to end on a small text file, and the mistakes a person can make: each
gives one line on stderr and a non-zero exit, never a traceback."""
import os
import subprocess
import sys

import numpy as np
import pytest

from rnncore import cli
from rnncore.training import checkpoint

TEXT = ("def add(a, b):\n    return a + b\n\n" * 40 +
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n" * 20)

SMALL = ["--steps", "6", "--hidden-size", "16", "--embedding-dim", "8", "--tbptt", "16", "--batch-size", "4",
         "--threads", "1", "--no-progress", "--sample-length", "40", "--eval-every", "3"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run(args, cwd):
    """`python -m rnncore ARGS` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-m", "rnncore", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


def run_main(args, capsys):
    """cli.main(ARGS) in this process: (exit status, stdout, stderr)."""
    try:
        code = cli.main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, words):
    assert code not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert words in lines[0], lines[0]


def test_train_then_sample_end_to_end(tmp_path, text_file):
    ckpt = tmp_path / "model.npz"
    r = run(["train", "--data", str(text_file), "--out", str(ckpt), *SMALL], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "unigram entropy" in r.stdout and "bits/char" in r.stdout
    assert "validation:" in r.stdout and "sample" in r.stdout
    assert r.stderr == ""
    arrays, meta = checkpoint.load(ckpt)
    assert meta["trainer"]["step"] == 6 and meta["model"]["hidden_size"] == 16
    assert "".join(meta["vocab"]) == "".join(sorted(set(TEXT)))

    r = run(["sample", str(ckpt), "--length", "50", "--prime", "def ", "--seed", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def ") and len(r.stdout) >= 54
    assert set(r.stdout) <= set(TEXT)
    again = run(["sample", str(ckpt), "--length", "50", "--prime", "def ", "--seed", "1"], tmp_path)
    assert again.stdout == r.stdout  # one seed, one sample


def test_train_resume_continues(tmp_path, text_file, capsys):
    ckpt = tmp_path / "m.npz"
    code, out, err = run_main(["train", "--data", str(text_file), "--out", str(ckpt), *SMALL], capsys)
    assert code == 0, err
    more = [a if a != "6" else "9" for a in SMALL]
    code, out, err = run_main(["train", "--data", str(text_file), "--out", str(ckpt), "--resume", str(ckpt),
                               *more], capsys)
    assert code == 0, err
    assert "resuming from" in out and "at step 6" in out
    assert checkpoint.load(ckpt)[1]["trainer"]["step"] == 9


@pytest.mark.parametrize("setup, args, words", [
    (None, ["train", "--data", "{tmp}/missing.txt"], "no such file"),
    ("empty", ["train", "--data", "{tmp}/f"], "is empty"),
    ("binary", ["train", "--data", "{tmp}/f"], "binary"),
    ("latin1", ["train", "--data", "{tmp}/f"], "not UTF-8"),
    (None, ["train", "--data", "{tmp}"], "is a directory"),
    (None, ["train", "--hidden-size", "0"], "--hidden-size: expected a positive integer, got '0'"),
    (None, ["train", "--lr", "-1"], "--lr: expected a positive number"),
    (None, ["train", "--lr", "nan"], "--lr: expected a positive number"),
    (None, ["train", "--cell", "transformer"], "invalid choice"),
    (None, ["train", "--tbptt", "x"], "--tbptt: expected a positive integer"),
    ("empty", ["train", "--out", "{tmp}/f/c.npz"], "cannot write in"),  # a missing folder is created
    (None, ["train", "--frobnicate"], "unrecognized arguments"),
    (None, ["sample", "{tmp}/missing.npz"], "not found"),
    ("garbage", ["sample", "{tmp}/f"], "not a readable checkpoint"),
    ("corrupt", ["sample", "{tmp}/f"], "corrupted"),
    ("foreign", ["sample", "{tmp}/f"], "not an rnncore checkpoint"),
    ("regression", ["sample", "{tmp}/f"], "not a character language model"),
    ("lm", ["sample", "{tmp}/f", "--temperature", "0"], "--temperature: expected a positive number"),
    ("lm", ["sample", "{tmp}/f", "--prime", "\u2603"], "not in the model's vocabulary"),
    ("lm", ["train", "--data", "{tmp}/text.txt", "--resume", "{tmp}/f", "--hidden-size", "32"],
     "from another model"),
    (None, [], "expected a command"),
])
def test_mistakes_give_one_line_and_a_nonzero_exit(tmp_path, capsys, text_file, setup, args, words):
    f = tmp_path / "f"
    if setup == "empty":
        f.write_text("  \n")
    elif setup == "binary":
        f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20)
    elif setup == "latin1":
        f.write_bytes("caf\u00e9 cr\u00e8me ".encode("latin-1") * 20)
    elif setup == "garbage":
        f.write_bytes(b"PK\x03\x04 definitely not a zip file")
    elif setup in ("corrupt", "lm"):
        (tmp_path / "text.txt").write_text(TEXT)
        code, _, err = run_main(["train", "--data", str(text_file), "--out", str(f), *SMALL[:-4],
                                 "--sample-length", "0"], capsys)
        assert code == 0, err
        if setup == "corrupt":
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0x55
            f.write_bytes(bytes(data))
    elif setup == "foreign":
        with open(f, "wb") as fh:
            np.savez(fh, weights=np.zeros(3), __meta__=np.array('{"format": "other"}'))
    elif setup == "regression":
        from rnncore.models.sequence import SequenceModel
        from rnncore.training.optim import SGD
        from rnncore.training.trainer import Trainer
        m = SequenceModel("gru", hidden_size=4, input_size=2, output_size=1, head="regression", seed=0)
        Trainer(m, SGD(m.params, m.grads, lr=0.1)).save_checkpoint(f)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = run_main(args, capsys)
    assert_one_line_error(code, err, words)


def test_errors_in_a_real_process_have_no_traceback(tmp_path):
    (tmp_path / "bin").write_bytes(bytes(range(256)) * 4)
    r = run(["train", "--data", str(tmp_path / "bin")], tmp_path)
    assert r.returncode == 1
    assert_one_line_error(r.returncode, r.stderr, "binary")
    r = run(["sample", str(tmp_path / "nope.npz")], tmp_path)
    assert_one_line_error(r.returncode, r.stderr, "not found")
    r = run(["train", "--steps", "-3"], tmp_path)
    assert r.returncode == 2
    assert_one_line_error(r.returncode, r.stderr, "--steps")


def test_help_lists_the_commands(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for word in ("train", "sample", "bench"):
        assert word in out
    code, out, _ = run_main(["train", "--help"], capsys)
    assert code == 0
    for opt in ("--data", "--cell", "--hidden-size", "--num-layers", "--steps", "--lr", "--tbptt",
                "--batch-size", "--threads", "--seed", "--out"):
        assert opt in out


def test_bench_is_handed_to_the_benchmark_module(monkeypatch):
    import rnncore.benchmark
    seen = []
    monkeypatch.setattr(rnncore.benchmark, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench", "--quick", "--threads", "1"]) == 0
    assert seen == [["--quick", "--threads", "1"]]
