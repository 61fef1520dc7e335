"""`rnncore train` as a newcomer meets it: Ctrl-C saves and says how to resume, a checkpoint
remembers its corpus, the best checkpoint is kept beside the last, and the mistakes of issue 17
(a one-character corpus, extreme temperatures, a diverging run, an unwritable --out) end with one
line, never a traceback."""
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rnncore import cli
from rnncore.training import checkpoint

from test_cli import SMALL, TEXT, assert_one_line_error, run, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _python_m(command):
    """A printed `rnncore train ...` command as `python -m rnncore train ...`."""
    words = shlex.split(command)
    assert words[:2] == ["rnncore", "train"], command
    return words[1:]


def test_ctrl_c_saves_and_the_printed_command_resumes(tmp_path, text_file):
    ckpt = tmp_path / "runs" / "x.npz"           # runs/ does not exist yet: created
    args = ["train", "--data", str(text_file), "--out", str(ckpt), *SMALL]
    args[args.index("--steps") + 1] = "100000"   # only Ctrl-C ends it
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "rnncore", *args], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in p.stdout:      # wait until training runs (an evaluation line has been printed)
            lines.append(line)
            if line.startswith("step"):
                break
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    out = "".join(lines) + out
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err and "Ctrl-C again to abort" in err
    saved = [line for line in out.splitlines() if line.startswith("interrupted at step")]
    assert saved and saved[0].endswith(f"saved {ckpt}"), out
    step = checkpoint.load(ckpt)[1]["trainer"]["step"]
    assert saved[0].startswith(f"interrupted at step {step}/100000")
    command = [line for line in out.splitlines() if line.startswith("resume with: ")][0][len("resume with: "):]
    resume = _python_m(command)
    assert "--data" not in resume and resume[resume.index("--resume") + 1] == str(ckpt)

    # the printed command, with a nearer end: the corpus comes from the checkpoint, the same file
    # goes on being written
    resume[resume.index("--steps") + 1] = str(step + 3)
    r = run(resume, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"resuming from {ckpt} at step {step}" in r.stdout and f"corpus: {text_file}" in r.stdout
    assert checkpoint.load(ckpt)[1]["trainer"]["step"] == step + 3
    best = tmp_path / "runs" / "x.best.npz"
    assert f"best: {best}, step " in r.stdout and f"checkpoint: {ckpt}, the last state" in r.stdout
    assert checkpoint.load(best)[1]["trainer"]["best_step"] <= step + 3


def test_second_ctrl_c_aborts_at_once():
    class Trainer:
        asked = 0

        def request_stop(self):
            self.asked += 1
    trainer = Trainer()
    before = signal.getsignal(signal.SIGINT)   # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(KeyboardInterrupt):
        with cli._StopOnCtrlC(trainer):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)        # the first: a request to stop, no exception
            assert trainer.asked == 1
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)          # the second raises here
    assert signal.getsignal(signal.SIGINT) is before       # the handler it found, restored


def test_resume_remembers_the_corpus_and_refuses_another(tmp_path, text_file, capsys):
    ckpt = tmp_path / "m.npz"
    code, out, err = run_main(["train", "--data", str(text_file), "--out", str(ckpt), *SMALL], capsys)
    assert code == 0, err
    meta = checkpoint.load(ckpt)[1]
    assert meta["corpus"]["path"] == str(text_file) and len(meta["corpus"]["sha256"]) == 64
    # no --data, no --out: the same corpus, and the checkpoint resumed is the one written
    code, out, err = run_main(["train", "--resume", str(ckpt), "--steps", "8", "--no-progress",
                               "--threads", "1"], capsys)
    assert code == 0, err
    assert checkpoint.load(ckpt)[1]["trainer"]["step"] == 8
    assert not (tmp_path / "runs").exists() and not os.path.exists("runs/rnncore-char.npz")
    other = tmp_path / "other.txt"
    other.write_text(TEXT.replace("add", "sub"))
    code, out, err = run_main(["train", "--resume", str(ckpt), "--data", str(other), "--steps", "10"], capsys)
    assert_one_line_error(code, err, "was trained on another text")
    text_file.write_text(TEXT + "# edited\n")
    code, out, err = run_main(["train", "--resume", str(ckpt), "--steps", "10"], capsys)
    assert_one_line_error(code, err, "was trained on another text")


def test_default_checkpoint_goes_into_runs(tmp_path, text_file, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["train", "--data", str(text_file), *SMALL], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "runs")) == ["rnncore-char.best.npz", "rnncore-char.npz"]
    assert "runs/rnncore-char.npz (the last state), runs/rnncore-char.best.npz (the best" in out
    gitignore = open(os.path.join(ROOT, ".gitignore")).read().split()
    assert "/runs/" in gitignore


def test_help_prints_every_default_once(capsys):
    code, out, _ = run_main(["train", "--help"], capsys)
    assert code == 0
    entries, current = [], None
    for line in out.split("options:")[1].splitlines():
        if line.startswith("  -"):
            current = [line]
            entries.append(current)
        elif current is not None:
            current.append(line)
    assert len(entries) > 20
    for entry in entries:
        text = " ".join(" ".join(entry).split())
        if text.startswith("-h"):
            continue
        assert text.count("(default") == 1 or ("default:" in text and text.count("default") == 1), text


def test_one_character_corpus_trains_to_the_end(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("a" * 5000)
    code, out, err = run_main(["train", "--data", str(f), "--out", str(tmp_path / "a.npz"), *SMALL], capsys)
    assert code == 0, err
    assert "one repeated character" in out and "Traceback" not in err


@pytest.mark.parametrize("command", ["train", "sample"])
def test_tiny_temperature_samples_greedily(tmp_path, text_file, capsys, command):
    ckpt = tmp_path / "m.npz"
    args = ["train", "--data", str(text_file), "--out", str(ckpt), *SMALL, "--temperature", "1e-320"]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    if command == "sample":
        code, out, err = run_main(["sample", str(ckpt), "--temperature", "1e-320", "--length", "30"], capsys)
        assert code == 0, err
        again = run_main(["sample", str(ckpt), "--temperature", "1e-320", "--length", "30"], capsys)
        assert again[1] == out   # greedy: the same whatever the seed
    assert err == ""


def test_diverging_run_ends_with_one_line(tmp_path, text_file, capsys):
    r = run(["train", "--data", str(text_file), "--out", str(tmp_path / "d.npz"), *SMALL,
             "--lr", "1e30", "--optimizer", "sgd"], tmp_path)
    assert "Traceback" not in r.stderr
    assert r.returncode == 0 or (r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1), r.stderr

    # logits that overflow (weights finite, products not) reach a clear message, not numpy's NaN error
    from rnncore.training.trainer import Trainer
    ckpt = tmp_path / "m.npz"
    code, out, err = run_main(["train", "--data", str(text_file), "--out", str(ckpt), *SMALL], capsys)
    assert code == 0, err
    trainer = Trainer.from_checkpoint(ckpt)
    for name, p in trainer.model.params.items():
        if name.startswith("head"):
            p[...] = np.where(np.arange(p.size).reshape(p.shape) % 2, 3e38, -3e38)
    trainer.save_checkpoint(ckpt)
    code, out, err = run_main(["sample", str(ckpt), "--length", "5"], capsys)
    assert_one_line_error(code, err, "logits are not finite")
    # training on from there: the loss is not finite, and the trainer's guard says so
    r = run(["train", "--resume", str(ckpt), "--steps", "12", "--no-progress", "--threads", "1"], tmp_path)
    assert_one_line_error(r.returncode, r.stderr, "the run diverged: step 7 (epoch")
    assert "loss is nan" in r.stderr or "loss is inf" in r.stderr


@pytest.mark.parametrize("where", ["proc", "under_a_file"])
def test_unwritable_out_is_refused_before_training(tmp_path, text_file, capsys, where):
    (tmp_path / "f").write_text("x")
    out = "/proc/rnncore-test.npz" if where == "proc" else str(tmp_path / "f" / "c.npz")
    t0 = time.perf_counter()
    code, stdout, err = run_main(["train", "--data", str(text_file), "--out", out, *SMALL], capsys)
    assert_one_line_error(code, err, f"--out {out}: cannot write in")
    assert ".tmp" not in err and "corpus:" not in stdout   # found before reading the data
    assert time.perf_counter() - t0 < 5


def test_a_save_that_fails_during_training_names_the_users_file(tmp_path, text_file, capsys, monkeypatch):
    from rnncore.training import trainer as trainer_module

    def full_disk(path, arrays, meta):
        tmp = os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path) + ".x1y2.tmp")
        raise OSError(28, "No space left on device", tmp)
    monkeypatch.setattr(trainer_module.ckpt, "save", full_disk)
    out = tmp_path / "m.npz"
    code, stdout, err = run_main(["train", "--data", str(text_file), "--out", str(out), *SMALL], capsys)
    assert_one_line_error(code, err, f"cannot write the checkpoint {out}: No space left on device")
    assert ".tmp" not in err
