"""Issue 17, parts 2 and 3: no public call crashes the interpreter; checkpoints refuse hostile files
cheaply, always with CheckpointError."""
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

import rnncore
from rnncore import _kernels
from rnncore.engine import threads as _threads
from rnncore.layers.recurrent import GRU, LSTM, RNN
from rnncore.models.sequence import SequenceModel
from rnncore.training import checkpoint
from rnncore.training.checkpoint import CheckpointError
from rnncore.training.data import Batch
from rnncore.training.optim import SGD, Adam
from rnncore.training.trainer import Trainer, load_model


def _run(code):
    """Run code in a fresh interpreter; a crash shows as a negative return code."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


# ------------------------------------------------------------------------------------ threads
def test_huge_thread_counts_are_clamped_and_do_not_crash():
    r = _run("""
        import numpy as np, rnncore
        from rnncore import _kernels
        from rnncore.engine.threads import MAX_THREADS
        x = np.random.default_rng(0).standard_normal((256, 4, 64)).astype(np.float32)
        layer = rnncore.GRU(64, 64)
        rnncore.set_num_threads(100000)
        assert rnncore.get_num_threads() == MAX_THREADS == _kernels.max_threads()
        layer(x)
        out, h, backprop = layer.forward_train(x)
        backprop(np.ones_like(out))
        rnncore.set_num_threads(2**31)
        with rnncore.threads(10**12):
            layer(x)
        a = np.ones((512, 512), np.float32)
        _kernels.matmul(np.empty_like(a), a, a, num_threads=100000)
        _kernels.colsum_add(np.zeros(512, np.float32), a, 100000)
        _kernels.pack_t(a, 100000)
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


def test_thread_count_cap_is_documented_and_sane():
    assert _threads.MAX_THREADS >= 64 and _threads.MAX_THREADS >= 4 * (os.cpu_count() or 1) // 4
    with rnncore.threads(10**9) as n:
        assert n == _threads.MAX_THREADS == rnncore.get_num_threads()
    for bad in (0, -1):
        with pytest.raises(ValueError):
            rnncore.set_num_threads(bad)


# ------------------------------------------------------------------------------------ params
BAD_ASSIGNMENTS = [
    (lambda: LSTM(3, 4, peephole=True), "weight_ci_l0", lambda a: np.zeros(1, a.dtype)),
    (lambda: GRU(3, 4), "bias_hh_l0", lambda a: np.zeros(8, a.dtype)),
    (lambda: LSTM(3, 4, proj_size=2), "weight_hr_l0", lambda a: np.zeros((4, 2), a.dtype)),
    (lambda: RNN(3, 4), "weight_hh_l0", lambda a: np.zeros((4, 3), a.dtype)),
    (lambda: GRU(3, 4), "weight_ih_l0", lambda a: np.zeros((12, 3), np.complex64)),
    (lambda: GRU(3, 4), "weight_ih_l0", lambda a: np.array(["x"] * 36).reshape(12, 3)),
]


@pytest.mark.parametrize("make, name, bad", BAD_ASSIGNMENTS)
def test_params_refuse_a_replacement_the_kernels_could_not_read(make, name, bad):
    layer = make()
    live = layer.params[name]
    before = live.copy()
    with pytest.raises((ValueError, TypeError)):
        layer.params[name] = bad(live)
    with pytest.raises((ValueError, TypeError)):
        layer.params.update({name: bad(live)})
    with pytest.raises((ValueError, TypeError)):
        layer.grads[name] = bad(live)
    assert layer.params[name] is live and np.array_equal(live, before)


@pytest.mark.parametrize("make, name, bad", BAD_ASSIGNMENTS[:4])
def test_kernels_check_what_they_read_even_if_the_mapping_is_bypassed(make, name, bad):
    layer = make()
    dict.__setitem__(layer.params, name, bad(layer.params[name]))
    x = np.ones((5, 2, 3), layer.dtype)
    with pytest.raises((ValueError, TypeError)):
        layer(x)
    with pytest.raises((ValueError, TypeError)):
        layer.forward_train(x)


def test_params_keys_are_fixed_and_a_good_assignment_copies_in():
    layer = GRU(3, 4)
    live = layer.params["bias_hh_l0"]
    layer.params["bias_hh_l0"] = np.arange(12.0)      # float64 into float32: copied and cast
    assert layer.params["bias_hh_l0"] is live and live[5] == 5
    with pytest.raises(KeyError):
        layer.params["weight_xx_l0"] = np.zeros(3)
    with pytest.raises(TypeError):
        del layer.params["bias_hh_l0"]
    with pytest.raises(TypeError):
        layer.params.pop("bias_hh_l0")
    model = SequenceModel("gru", hidden_size=4, input_size=3, output_size=2, head="regression")
    assert model.params["rnn.bias_hh_l0"] is model.rnn.params["bias_hh_l0"]


# ------------------------------------------------------------------------------------ versions
def _changes(layer):
    other = {k: v + 1 for k, v in layer.params.items()}
    return {
        "load_state_dict": lambda: layer.load_state_dict(other),
        "params[k] = v": lambda: layer.params.__setitem__("weight_hh_l0", other["weight_hh_l0"]),
        "SGD.step": lambda: SGD(layer.params, layer.grads, lr=0.1).step(),
        "Adam.step": lambda: Adam(layer.params, layer.grads, lr=0.1).step(),
    }


@pytest.mark.parametrize("change", ["load_state_dict", "params[k] = v", "SGD.step", "Adam.step"])
@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_backprop_after_the_weights_changed_raises(cls, change):
    layer = cls(3, 4, seed=0)
    x = np.ones((5, 2, 3), np.float32)
    out, _, backprop = layer.forward_train(x)
    _changes(layer)[change]()
    with pytest.raises(RuntimeError, match="changed"):
        backprop(np.ones_like(out))
    out, _, backprop = layer.forward_train(x)     # a new forward pass runs backward again
    backprop(np.ones_like(out))


def test_backprop_without_a_change_still_runs_and_torch_raises_too():
    layer = GRU(3, 4, seed=0)
    out, _, backprop = layer.forward_train(np.ones((5, 2, 3), np.float32))
    layer.state_dict()
    layer.zero_grad()
    backprop(np.ones_like(out))
    lin = torch.nn.GRU(3, 4)
    y, _ = lin(torch.ones(5, 2, 3))
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    y.sum().backward(retain_graph=True)
    opt.step()
    with pytest.raises(RuntimeError):
        y.sum().backward()


# ------------------------------------------------------------------------------------ ReLU NaN
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_rnn_propagates_nan_like_torch(dtype):
    layer = RNN(3, 5, nonlinearity="relu", num_layers=2, seed=1, dtype=dtype)
    x = np.random.default_rng(0).standard_normal((6, 3, 3)).astype(dtype)
    x[2, 1, 0] = np.nan
    ref = torch.nn.RNN(3, 5, num_layers=2, nonlinearity="relu").to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        for k, p in ref.named_parameters():
            p.copy_(torch.from_numpy(layer.params[k]))
    xt = torch.from_numpy(x).requires_grad_()
    yt, _ = ref(xt)
    yt.sum().backward()
    out, _, backprop = layer.forward_train(x)
    dx, _ = backprop(np.ones_like(out))
    np.testing.assert_array_equal(np.isnan(out), torch.isnan(yt).detach().numpy())
    assert np.isnan(out[2:, 1]).all() and not np.isnan(out[:, [0, 2]]).any()
    np.testing.assert_allclose(out, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.isnan(dx), torch.isnan(xt.grad).numpy())
    for k, p in ref.named_parameters():
        np.testing.assert_array_equal(np.isnan(layer.grads[k]), torch.isnan(p.grad).numpy(), err_msg=k)
    assert np.isnan(layer.grads["weight_hh_l0"]).any()


# ------------------------------------------------------------------------------------ checkpoints
def _model(cell="gru", **kw):
    return SequenceModel(cell, hidden_size=8, input_size=3, output_size=2, head="regression", seed=0, **kw)


def _trained_checkpoint(path):
    rng = np.random.default_rng(0)
    model = _model()
    trainer = Trainer(model, Adam(model.params, model.grads, lr=0.01), loss="mse", seed=0)
    batches = [Batch(rng.standard_normal((5, 2, 3)).astype(np.float32),
                     rng.standard_normal((5, 2, 2)).astype(np.float32), None) for _ in range(2)]
    trainer.fit(batches, epochs=1)
    trainer.save_checkpoint(path)
    return path


def _rewrite(path, arrays, meta):
    """Write a file as save would, but without its checks (what a hand-made file can hold)."""
    meta = dict(meta)
    meta.pop("checksum", None)
    meta["checksum"] = checkpoint.checksum(arrays, meta)
    np.savez(path, __meta__=np.array(json.dumps(meta)), **arrays)


def _zip_bomb(path, declared_bytes):
    """A checkpoint with one deflated member of declared_bytes zeros, small on disk (zlib streams)."""
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f8", "fortran_order": False,
                                               "shape": (declared_bytes // 8,)})
    meta = io.BytesIO()
    np.save(meta, np.array(json.dumps({"format": checkpoint.FORMAT, "version": checkpoint.VERSION,
                                       "checksum": "sha256:" + "0" * 64})))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("__meta__.npy", meta.getvalue())
        info = zipfile.ZipInfo("w.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            f.write(hdr.getvalue())
            zeros = bytes(1 << 22)
            for _ in range(declared_bytes // len(zeros)):
                f.write(zeros)
    return path


def _refused_cheaply(fn, seconds=2.0, peak_bytes=32 << 20):
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(CheckpointError) as e:
            fn()
        took = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert took < seconds and peak < peak_bytes, (took, peak)
    return e.value


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    path = _zip_bomb(tmp_path / "bomb.npz", 256 << 20)
    assert os.path.getsize(path) < 1 << 20
    err = _refused_cheaply(lambda: checkpoint.load(path), seconds=0.5, peak_bytes=8 << 20)
    assert "compressed" in str(err)
    _refused_cheaply(lambda: load_model(path), seconds=0.5, peak_bytes=8 << 20)
    _refused_cheaply(lambda: Trainer.from_checkpoint(path), seconds=0.5, peak_bytes=8 << 20)


def test_declared_sizes_must_agree_with_the_data(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.ones(100)}, {})
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f8", "fortran_order": False, "shape": (900,)})
    members["w.npy"] = hdr.getvalue() + np.ones(100).tobytes()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    assert "declares" in str(_refused_cheaply(lambda: checkpoint.load(path)))


@pytest.mark.parametrize("field, value", [("hidden_size", 12000), ("num_layers", 10**7),
                                          ("input_size", 10**9)])
def test_forged_configuration_is_refused_before_building(tmp_path, field, value):
    path = _trained_checkpoint(tmp_path / "c.npz")
    arrays, meta = checkpoint.load(path)
    meta["model"][field] = value
    _rewrite(path, arrays, meta)
    for load in (load_model, Trainer.from_checkpoint):
        err = _refused_cheaply(lambda: load(path), seconds=2.0, peak_bytes=16 << 20)
        assert field in str(err)


def test_forged_configuration_within_the_dimensions_is_refused_by_the_budget(tmp_path):
    path = _trained_checkpoint(tmp_path / "c.npz")
    arrays, meta = checkpoint.load(path)
    arrays["model/pad"] = np.zeros(3000, np.float32)       # one large dimension to hide behind
    meta["model"]["hidden_size"] = 3000
    _rewrite(path, arrays, meta)
    err = _refused_cheaply(lambda: load_model(path), seconds=2.0, peak_bytes=16 << 20)
    assert "parameter values" in str(err)


BAD_ARRAYS = {
    "complex": np.zeros(3, np.complex128), "bool": np.zeros(3, bool), "string": np.array(["ab", "c"]),
    "datetime": np.array(["2020-01-01"], "datetime64[D]"), "structured": np.zeros(2, "f4,i4"),
    "float16": np.zeros(3, np.float16), "uint8": np.zeros(3, np.uint8),
}


@pytest.mark.parametrize("kind", sorted(BAD_ARRAYS))
def test_only_real_float_and_int_arrays_load(tmp_path, kind):
    path = tmp_path / "c.npz"
    _rewrite(path, {"w": BAD_ARRAYS[kind]}, {"format": checkpoint.FORMAT, "version": checkpoint.VERSION})
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    with pytest.raises(TypeError):
        checkpoint.save(tmp_path / "d.npz", {"w": BAD_ARRAYS[kind]})


def test_big_endian_arrays_are_saved_little_endian_and_refused_as_found(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.arange(3, dtype=">f8")}, {})
    w = checkpoint.load(path)[0]["w"]
    assert w.dtype == np.dtype("<f8") and w.tolist() == [0, 1, 2]
    _rewrite(path, {"w": np.arange(3, dtype=">f8")}, {"format": checkpoint.FORMAT, "version": 1})
    with pytest.raises(CheckpointError, match=">f8"):
        checkpoint.load(path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_weights_are_refused(tmp_path, value):
    path = _trained_checkpoint(tmp_path / "c.npz")
    arrays, meta = checkpoint.load(path)
    arrays["model/rnn.weight_hh_l0"][0, 0] = value
    _rewrite(path, arrays, meta)
    for load in (checkpoint.load, load_model, Trainer.from_checkpoint):
        with pytest.raises(CheckpointError, match="NaN or infinite"):
            load(path)
    with pytest.raises(ValueError, match="NaN or infinite"):
        checkpoint.save(tmp_path / "d.npz", arrays, meta)


def test_deep_or_large_metadata_is_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    deep = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION}
    text = json.dumps(deep)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    np.savez(path, __meta__=np.array(text))
    assert "nested" in str(_refused_cheaply(lambda: checkpoint.load(path)))
    checkpoint.save(path, {"w": np.ones(3)}, {"words": ["[" * 70 + "{"]})   # brackets in strings
    checkpoint.load(path)
    monkeypatch.setattr(checkpoint, "MAX_META_BYTES", 1000)
    checkpoint.save(path, {"w": np.ones(3)}, {"pad": "x" * 1000})
    assert "metadata of" in str(_refused_cheaply(lambda: checkpoint.load(path)))


def _edit_trainer(path, **changes):
    arrays, meta = checkpoint.load(path)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if value is KeyError:
            del meta[section][field]
        else:
            meta[section][field] = value
    _rewrite(path, arrays, meta)


@pytest.mark.parametrize("changes", [
    {"trainer__rng_state": {"bit_generator": "MT19937", "state": {}}},
    {"trainer__layer_rng_state": {"bit_generator": "PCG64", "state": 3}},
    {"trainer__step": KeyError}, {"trainer__step": "x"}, {"trainer__batch_index": -4},
    {"trainer__carry": "hc"}, {"trainer__carry": "zz"}, {"trainer__best_val": "low"},
    {"optimizer__name": "nope"}, {"optimizer__schedule": KeyError}, {"trainer__loss": "nope"},
    {"trainer__tbptt": -3}, {"model__cell": "transformer"}, {"model__dtype": "float64"},
])
def test_every_bad_training_state_raises_checkpoint_error(tmp_path, changes):
    path = _trained_checkpoint(tmp_path / "c.npz")
    _edit_trainer(path, **changes)
    with pytest.raises(CheckpointError):
        Trainer.from_checkpoint(path)


def test_bad_training_state_leaves_the_trainer_as_it_was(tmp_path):
    path = _trained_checkpoint(tmp_path / "c.npz")
    trainer = Trainer.from_checkpoint(path)
    before = {k: v.copy() for k, v in trainer.model.params.items()}
    step = trainer.step
    _edit_trainer(path, trainer__rng_state={"bit_generator": "MT19937", "state": {}})
    with pytest.raises(CheckpointError):
        trainer.load_checkpoint(path)
    assert trainer.step == step
    assert all(np.array_equal(v, trainer.model.params[k]) for k, v in before.items())


def test_model_arrays_must_have_the_model_dtype(tmp_path):
    path = _trained_checkpoint(tmp_path / "c.npz")
    arrays, meta = checkpoint.load(path)
    arrays = {k: v.astype(np.float64) if k.startswith("model/") else v for k, v in arrays.items()}
    _rewrite(path, arrays, meta)
    for load in (load_model, Trainer.from_checkpoint):
        with pytest.raises(CheckpointError, match="float32"):
            load(path)


def test_stale_temporaries_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "ck.npz"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = [tmp_path / f".ck.npz.{dead}.abcd1234.tmp", tmp_path / ".ck.npz.k2j4h5g6.tmp"]
    alive = tmp_path / ".ck.npz.1.abcd1234.tmp"            # pid 1 runs: its writer may be saving
    others = [tmp_path / ".ck.npz2.1234.abcd1234.tmp", tmp_path / "ck.npz.abcd1234.tmp"]
    for p in stale + [alive] + others:
        p.write_bytes(b"x" * 100)
    checkpoint.save(path, {"w": np.ones(3)}, {})
    assert not any(p.exists() for p in stale)
    assert alive.exists() and all(p.exists() for p in others)
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in [path, alive] + others)


def test_sigterm_during_a_save_removes_the_temporary(tmp_path):
    r = _run(f"""
        import os, signal, numpy as np
        from rnncore.training import checkpoint
        path = {str(tmp_path / "ck.npz")!r}
        checkpoint.save(path, {{"w": np.ones(3)}}, {{"step": 1}})
        real = np.savez
        def savez(f, **arrays):
            f.write(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)
            real(f, **arrays)
        np.savez = savez
        checkpoint.save(path, {{"w": np.zeros(3)}}, {{"step": 2}})
        print("not terminated")
    """)
    assert r.returncode == -signal.SIGTERM, (r.returncode, r.stdout, r.stderr[-2000:])
    assert os.listdir(tmp_path) == ["ck.npz"]
    assert checkpoint.load(tmp_path / "ck.npz")[1]["step"] == 1


@pytest.mark.parametrize("length", [254, 255])
def test_long_checkpoint_names_work(tmp_path, length):
    path = tmp_path / ("é" + "c" * (length - 6) + ".npz")     # é: two bytes in UTF-8
    assert len(os.fsencode(path.name)) == length
    checkpoint.save(path, {"w": np.ones(3)}, {"step": 1})
    checkpoint.save(path, {"w": np.ones(3)}, {"step": 2})
    assert checkpoint.load(path)[1]["step"] == 2
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        checkpoint.save(tmp_path / "ck.npz", {"w": np.ones(3)}, {})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "ck.npz").st_mode & 0o777 == mode


def test_checksum_is_documented_as_damage_detection_only():
    assert "detects damage, not tampering" in " ".join(checkpoint.__doc__.split())


def test_kernels_clamp_is_the_engines():
    assert _kernels.max_threads() == _threads.MAX_THREADS


def test_a_model_backprop_after_its_load_state_dict_is_refused():
    model = rnncore.SequenceModel("gru", hidden_size=8, vocab_size=5, seed=0)
    layer = model.rnn
    out, _, bp = layer.forward_train(np.ones((3, 2, layer.input_size), np.float32))
    model.load_state_dict(model.state_dict())
    with pytest.raises(RuntimeError, match="changed"):
        bp(np.ones_like(out))
