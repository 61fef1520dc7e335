"""Bad input everywhere (issue 7): the table of cases tried, one row per case.

Each row: (public object, what is wrong, call, expected exception, words the message must contain).
The message must say what was expected and what was got, so the words name both where they can.
Layers' own shape/dtype/length cases are in tests/test_api.py; this table covers them once more in
short and every other public entry point: models, losses, optimizers and schedules, the trainer, data
sources, the checkpoint loader, the estimators and the command line.
"""
import json

import numpy as np
import pytest

import rnncore
from rnncore.training import checkpoint
from rnncore.training.checkpoint import CheckpointError
from rnncore.training.data import Batch, SequenceDataset, pad_sequences
from rnncore.training.losses import mse, softmax_cross_entropy
from rnncore.models.sequence import Embedding, Linear, SequenceModel
from rnncore.training.optim import SGD, Adam, Cosine, RMSprop, StepDecay
from rnncore.training.trainer import Trainer, load_model

f32 = np.float32


def _lstm():
    return rnncore.LSTM(3, 4, seed=0)


def _model(**kw):
    args = dict(cell="gru", hidden_size=4, input_size=3, output_size=2, head="regression", seed=0)
    args.update(kw)
    return SequenceModel(**args)


def _adam(m, **kw):
    return Adam(m.params, m.grads, **kw)


def _fit(model, data, **kw):
    return Trainer(model, _adam(model), loss="mse", **kw).fit(data, epochs=1)


def _ok_batch(T=4, B=2):
    return Batch(np.zeros((T, B, 3), f32), np.zeros((T, B, 2), f32), None)


def _saved(tmp_path):
    path = tmp_path / "ok.npz"
    m = _model()
    Trainer(m, _adam(m), loss="mse", checkpoint_path=path).fit([_ok_batch()], epochs=1)
    return path


def _edit_checkpoint(tmp_path, edit):
    path = _saved(tmp_path)
    arrays, meta = checkpoint.load(path)
    edit(arrays, meta)
    checkpoint.save(path, arrays, meta)
    return path


def _wrong_model_weights(arrays, meta):
    arrays["model/head.weight"] = np.zeros((7, 7), f32)


def _wrong_config(arrays, meta):
    meta["model"]["cell"] = "transformer"


def _raw_file(tmp_path, data):
    path = tmp_path / "raw.npz"
    path.write_bytes(data)
    return path


NaN = float("nan")
Inf = float("inf")

# (id, call, exception, words). `call` takes tmp_path.
CASES = [
    # --- layers
    ("layer: input_size 0", lambda p: rnncore.GRU(0, 4), ValueError, ["input_size", "got 0"]),
    ("layer: hidden_size float", lambda p: rnncore.RNN(3, 4.5), TypeError, ["hidden_size", "4.5"]),
    ("layer: dropout nan", lambda p: rnncore.LSTM(3, 4, dropout=NaN), ValueError, ["dropout", "nan"]),
    ("layer: dtype int", lambda p: rnncore.LSTM(3, 4, dtype=np.int32), TypeError, ["float32", "int32"]),
    ("layer: 4-D input", lambda p: _lstm()(np.zeros((2, 2, 2, 3))), ValueError, ["3-D", "(2, 2, 2, 3)"]),
    ("layer: wrong feature size", lambda p: _lstm()(np.zeros((2, 2, 5))), ValueError, ["3", "5"]),
    ("layer: string input", lambda p: _lstm()("abc"), TypeError, ["real numbers", "<U3"]),
    ("layer: lengths too long", lambda p: _lstm()(np.zeros((2, 2, 3)), lengths=[3, 1]), ValueError,
     ["lengths", "3"]),
    ("layer: lengths 0", lambda p: _lstm()(np.zeros((2, 2, 3)), lengths=[0, 1]), ValueError, ["lengths", "0"]),
    ("layer: h0 wrong shape", lambda p: _lstm()(np.zeros((2, 2, 3)), (np.zeros((1, 3, 4)), None)), ValueError,
     ["(1, 2, 4)", "(1, 3, 4)"]),
    ("layer: LSTM hx not a tuple", lambda p: _lstm()(np.zeros((2, 2, 3)), np.zeros((1, 2, 4))), TypeError,
     ["tuple", "ndarray"]),
    ("layer: state dict missing key", lambda p: _lstm().load_state_dict({}), ValueError, ["missing", "weight_ih_l0"]),
    ("layer: state dict wrong shape",
     lambda p: _lstm().load_state_dict({**_lstm().state_dict(), "bias_hh_l0": np.zeros(3)}), ValueError,
     ["bias_hh_l0", "(16,)", "(3,)"]),
    ("layer: backprop d_output wrong shape",
     lambda p: _lstm().forward_train(np.zeros((2, 2, 3)))[2](np.zeros((2, 2, 5))), ValueError, ["(2, 2, 4)", "(2, 2, 5)"]),
    # --- models
    ("model: unknown cell", lambda p: _model(cell="transformer"), ValueError, ["cell", "transformer"]),
    ("model: unknown head", lambda p: _model(head="many"), ValueError, ["head", "many"]),
    ("model: both vocab and input size", lambda p: _model(vocab_size=5), ValueError, ["exactly one", "vocab_size"]),
    ("model: float ids into an embedding", lambda p: Embedding(5, 2).forward(np.zeros((2, 2))), TypeError,
     ["integer", "float64"]),
    ("model: id out of range", lambda p: Embedding(5, 2).forward(np.array([[7]])), ValueError, ["[0, 5)", "7"]),
    ("model: linear wrong features", lambda p: Linear(3, 2).forward(np.zeros((2, 4))), ValueError, ["3", "4"]),
    ("model: dense input wrong features", lambda p: _model().forward(np.zeros((2, 2, 5), f32)), ValueError, ["3", "5"]),
    # --- losses
    ("loss: targets wrong shape", lambda p: softmax_cross_entropy(np.zeros((2, 3, 4)), np.zeros((2, 2), int)),
     ValueError, ["(2, 3)", "(2, 2)"]),
    ("loss: float class targets", lambda p: softmax_cross_entropy(np.zeros((2, 4)), np.zeros(2)), TypeError,
     ["integer", "float64"]),
    ("loss: class out of range", lambda p: softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 9])), ValueError,
     ["[0, 4)", "9"]),
    ("loss: unknown reduction", lambda p: mse(np.zeros((2, 2)), np.zeros((2, 2)), reduction="avg"), ValueError,
     ["reduction", "avg"]),
    ("loss: mse shape", lambda p: mse(np.zeros((2, 2)), np.zeros((2, 3))), ValueError, ["(2, 2)", "(2, 3)"]),
    ("loss: NaN regression target", lambda p: mse(np.zeros((2, 2)), np.full((2, 2), NaN)), ValueError,
     ["finite", "nan"]),
    ("loss: lengths wrong size", lambda p: mse(np.zeros((3, 2, 1)), np.zeros((3, 2, 1)), lengths=[1, 2, 3]),
     ValueError, ["(2,)", "(3,)"]),
    # --- optimizers and schedules
    ("optimizer: lr 0", lambda p: SGD(*_pg(), lr=0), ValueError, ["lr", "positive", "0"]),
    ("optimizer: lr nan", lambda p: Adam(*_pg(), lr=NaN), ValueError, ["lr", "nan"]),
    ("optimizer: clip_norm inf", lambda p: RMSprop(*_pg(), clip_norm=Inf), ValueError, ["clip_norm", "inf"]),
    ("optimizer: momentum 1.5", lambda p: SGD(*_pg(), momentum=1.5), ValueError, ["momentum", "1.5"]),
    ("optimizer: betas out of range", lambda p: Adam(*_pg(), betas=(0.9, 1.0)), ValueError, ["betas", "1.0"]),
    ("optimizer: params/grads mismatch", lambda p: SGD({"a": np.zeros(2)}, {"b": np.zeros(2)}), ValueError,
     ["same names", "'a'"]),
    ("optimizer: grads wrong shape", lambda p: SGD({"a": np.zeros(2)}, {"a": np.zeros(3)}), ValueError,
     ["(2,)", "(3,)"]),
    ("optimizer: weight_decay -1", lambda p: SGD(*_pg(), weight_decay=-1), ValueError, ["weight_decay", "-1"]),
    ("schedule: cosine 0 steps", lambda p: Cosine(0.1, 0), ValueError, ["total_steps", "0"]),
    ("schedule: step gamma 0", lambda p: StepDecay(0.1, 5, gamma=0), ValueError, ["gamma", "0"]),
    ("optimizer: bad state dict", lambda p: SGD(*_pg(), momentum=0.5).load_state_dict(
        {"step_count": 0, "buffers": {}}), ValueError, ["missing", "momentum"]),
    # --- trainer and data
    ("trainer: not a model", lambda p: Trainer(object(), None), TypeError, ["SequenceModel", "object"]),
    ("trainer: unknown loss", lambda p: Trainer(_model(), _adam(_model()), loss="hinge"), ValueError,
     ["loss", "hinge"]),
    ("trainer: tbptt 0", lambda p: Trainer(_model(), _adam(_model()), tbptt=0), ValueError, ["tbptt", "0"]),
    ("trainer: on_nonfinite", lambda p: Trainer(_model(), _adam(_model()), on_nonfinite="ignore"), ValueError,
     ["on_nonfinite", "ignore"]),
    ("trainer: fit without a stop", lambda p: Trainer(_model(), _adam(_model())).fit([_ok_batch()]), ValueError,
     ["epochs", "max_steps"]),
    ("trainer: batch input wrong features",
     lambda p: _fit(_model(), [Batch(np.zeros((4, 2, 5), f32), np.zeros((4, 2, 2), f32), None)]), ValueError,
     ["3", "5"]),
    ("trainer: batch targets wrong shape",
     lambda p: _fit(_model(), [Batch(np.zeros((4, 2, 3), f32), np.zeros((4, 2, 7), f32), None)]), ValueError,
     ["(4, 2, 2)", "(4, 2, 7)"]),
    ("trainer: NaN in the inputs stops at step 1",
     lambda p: _fit(_model(), [Batch(np.full((4, 2, 3), NaN, f32), np.zeros((4, 2, 2), f32), None)]),
     FloatingPointError, ["step 1", "nan"]),
    ("data: targets count", lambda p: SequenceDataset([np.zeros(3, int)], [], 2), ValueError, ["1", "got 0"]),
    ("data: batch size 0", lambda p: SequenceDataset([np.zeros(3, int)], [np.zeros(3, int)], 0), ValueError,
     ["batch_size", "0"]),
    ("data: per-step target length", lambda p: SequenceDataset([np.zeros(3, int)], [np.zeros(2, int)], 1),
     ValueError, ["(3,)", "(2,)"]),
    ("data: pad nothing", lambda p: pad_sequences([]), ValueError, ["at least one", "0"]),
    # --- checkpoint loader
    ("checkpoint: missing file", lambda p: checkpoint.load(p / "nope.npz"), CheckpointError, ["not found", "nope"]),
    ("checkpoint: a directory", lambda p: checkpoint.load(p), CheckpointError, ["directory"]),
    ("checkpoint: text file", lambda p: checkpoint.load(_raw_file(p, b"hello\n" * 50)), CheckpointError,
     ["not a readable checkpoint"]),
    ("checkpoint: plain npz without metadata",
     lambda p: (np.savez(p / "x.npz", a=np.zeros(2)), checkpoint.load(p / "x.npz")), CheckpointError,
     ["no metadata"]),
    ("checkpoint: other format", lambda p: (np.savez(p / "y.npz", __meta__=np.array(json.dumps({"format": "x"}))),
                                             checkpoint.load(p / "y.npz")), CheckpointError, ["format", "'x'"]),
    ("checkpoint: future version",
     lambda p: (np.savez(p / "v.npz", __meta__=np.array(json.dumps({"format": "rnncore-checkpoint", "version": 9}))),
                checkpoint.load(p / "v.npz")), CheckpointError, ["version 9", "reads 1"]),
    ("checkpoint: weights of another shape",
     lambda p: load_model(_edit_checkpoint(p, _wrong_model_weights)), CheckpointError, ["do not fit", "head.weight"]),
    ("checkpoint: bad model config",
     lambda p: load_model(_edit_checkpoint(p, _wrong_config)), CheckpointError, ["model configuration", "transformer"]),
    ("checkpoint: object arrays refused on save",
     lambda p: checkpoint.save(p / "o.npz", {"a": np.array([None], dtype=object)}), TypeError, ["numeric", "object"]),
    ("checkpoint: resume into another model",
     lambda p: Trainer(_model(hidden_size=5), _adam(_model(hidden_size=5)), loss="mse").load_checkpoint(_saved(p)),
     CheckpointError, ["another model", "hidden_size"]),
]


def _pg():
    return {"w": np.zeros(3)}, {"w": np.zeros(3)}


@pytest.mark.parametrize("call, exc, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_clear_message(tmp_path, call, exc, words):
    with pytest.raises(exc) as info:
        call(tmp_path)
    msg = str(info.value)
    missing = [w for w in words if w.lower() not in msg.lower()]
    assert not missing, f"message {msg!r} lacks {missing}"


# (argv, exit code: 2 for a usage error found by the parser, 1 for a failure found while running, words)
CLI_CASES = [
    (["train", "--steps", "0"], 2, ["steps", "0"]),
    (["train", "--cell", "transformer"], 2, ["cell", "transformer"]),
    (["train", "--hidden-size", "-3"], 2, ["hidden-size", "-3"]),
    (["train", "--lr", "nan"], 2, ["lr", "nan"]),
    (["train", "--data", "/no/such/file.txt"], 1, ["/no/such/file.txt"]),
    (["sample", "/no/such.npz"], 1, ["not found", "/no/such.npz"]),
    (["bench", "--shapes", "XL"], 2, ["XL"]),
]


@pytest.mark.parametrize("argv, code, words", CLI_CASES, ids=[" ".join(a) for a, _, _ in CLI_CASES])
def test_cli_refuses_bad_arguments_with_an_exit_code_and_a_message(capsys, argv, code, words):
    from rnncore.cli import main
    try:
        got = main(argv)
    except SystemExit as e:
        got = e.code
    err = capsys.readouterr().err
    assert got == code, err
    missing = [w for w in words if w.lower() not in err.lower()]
    assert not missing, f"stderr {err!r} lacks {missing}"
    assert "Traceback" not in err
