"""Trainer.request_stop (what `rnncore train` calls on Ctrl-C): fit ends between two steps, saves a
checkpoint that resumes exactly; best_checkpoint_path keeps the best state by validation."""
import numpy as np

from rnncore.training import checkpoint
from rnncore.training.trainer import Trainer

from test_trainer import _lm_trainer, streams


def test_a_requested_stop_saves_a_state_that_resumes_exactly(tmp_path):
    N, data, val = 20, streams(), streams(2)
    full = _lm_trainer().fit(data, val, max_steps=N)

    path = tmp_path / "stopped.npz"
    first = _lm_trainer(path)
    first.on_eval = lambda tr, v: tr.step == 6 and tr.request_stop()   # e.g. a signal handler
    first.fit(data, val, max_steps=N)
    assert first.interrupted and first.step == 6 and first.saved[path] == 6
    assert checkpoint.load(path)[1]["trainer"]["step"] == 6

    again = Trainer.from_checkpoint(path)
    rest = again.fit(data, val, max_steps=N)
    assert not again.interrupted
    assert first.history["loss"] + rest["loss"] == full["loss"]


def test_the_best_checkpoint_holds_the_best_evaluation(tmp_path):
    last, best = tmp_path / "last.npz", tmp_path / "best.npz"
    trainer = _lm_trainer(last)
    trainer.best_checkpoint_path = best
    trainer.fit(streams(), streams(2), max_steps=12)
    hist = trainer.history
    i = int(np.argmin(hist["val_loss"]))
    assert trainer.best_step == hist["val_step"][i] and trainer.saved[best] == trainer.best_step
    meta = checkpoint.load(best)[1]["trainer"]
    assert meta["step"] == meta["best_step"] == trainer.best_step
    assert meta["best_val"] == hist["val_loss"][i]
    assert checkpoint.load(last)[1]["trainer"]["step"] == 12
