"""The public layer API: constructor and input checks, odd-but-valid inputs, state dicts, initialisation
schemes, threads, and process-wide side effects. Numerical agreement with the oracles is in
test_layers_oracles.py."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info

import rnncore

CELLS = [rnncore.RNN, rnncore.LSTM, rnncore.GRU]


def _hx(layer, B, rng):
    LD = layer.num_layers * layer.num_directions
    h = rng.standard_normal((LD, B, layer.proj_size or layer.hidden_size))
    if layer.mode == "LSTM":
        return h, rng.standard_normal((LD, B, layer.hidden_size))
    return h


# ------------------------------------------------------------------------------ constructor checks
@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(input_size=0, hidden_size=4), ValueError, "input_size must be >= 1, got 0"),
    (dict(input_size=3, hidden_size=-1), ValueError, "hidden_size must be >= 1, got -1"),
    (dict(input_size=3.0, hidden_size=4), TypeError, "input_size must be an integer, got float"),
    (dict(input_size=3, hidden_size=True), TypeError, "hidden_size must be an integer, got bool"),
    (dict(input_size=3, hidden_size=4, num_layers=0), ValueError, "num_layers must be >= 1"),
    (dict(input_size=3, hidden_size=4, dropout=1.0), ValueError, "dropout must be in [0, 1), got 1.0"),
    (dict(input_size=3, hidden_size=4, dropout="0.1"), TypeError, "dropout must be a number"),
    (dict(input_size=3, hidden_size=4, dtype=np.int32), TypeError, "numpy.float32 or numpy.float64, got int32"),
    (dict(input_size=3, hidden_size=4, bidirectional=1), TypeError, "bidirectional must be True or False"),
    (dict(input_size=3, hidden_size=4, seed=-3), ValueError, "seed must be >= 0"),
    (dict(input_size=3, hidden_size=4, init="xavier"), ValueError, "init must be one of"),
])
def test_constructor_rejects_bad_arguments(cls, kwargs, exc, words):
    with pytest.raises(exc) as info:
        cls(**kwargs)
    assert words in str(info.value)


def test_cell_specific_constructor_checks():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        rnncore.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="proj_size must be smaller than hidden_size=4, got 4"):
        rnncore.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="forget_bias needs bias=True"):
        rnncore.LSTM(3, 4, bias=False, forget_bias=1.0)
    with pytest.raises(ValueError, match="IRNN"):
        rnncore.LSTM(3, 4, init="identity")
    with pytest.raises(TypeError, match="reset_after must be True or False"):
        rnncore.GRU(3, 4, reset_after="yes")


# ------------------------------------------------------------------------------ input checks
@pytest.mark.parametrize("cls", CELLS)
def test_bad_inputs_get_clear_errors(cls):
    layer = cls(3, 4, num_layers=2, seed=0)
    x = np.zeros((5, 2, 3), np.float32)
    cases = [
        (lambda: layer(np.zeros((5, 2, 4))), ValueError, "input_size=3 features in its last axis, got 4"),
        (lambda: layer(np.zeros((5, 2, 3, 1))), ValueError, "x must be a 3-D array (time, batch, input_size)"),
        (lambda: layer(np.zeros((0, 2, 3))), ValueError, "at least one sequence of at least one step"),
        (lambda: layer(np.array([["a", "b", "c"]])), TypeError, "x must hold real numbers"),
        (lambda: layer(np.zeros((5, 2, 3), complex)), TypeError, "got dtype complex128"),
        (lambda: layer([[[1, 2, 3]], [[1, 2]]]), ValueError, "x must be"),
        (lambda: layer(x, lengths=[5, 6]), ValueError, "lengths must be between 1 and T=5, got values from 5 to 6"),
        (lambda: layer(x, lengths=[0, 5]), ValueError, "lengths must be between 1 and T=5"),
        (lambda: layer(x, lengths=[5]), ValueError, "lengths must have shape (2,), one length per sequence, got shape (1,)"),
        (lambda: layer(x, lengths=[2.5, 3]), TypeError, "lengths must hold integers, got dtype float64"),
    ]
    if cls is rnncore.LSTM:
        cases += [
            (lambda: layer(x, np.zeros((2, 2, 4))), TypeError, "must be a tuple (h0, c0), got ndarray"),
            (lambda: layer(x, (np.zeros((2, 2, 4)), np.zeros((1, 2, 4)))), ValueError,
             "c0 must have shape (2, 2, 4) (num_layers * num_directions, batch, cell size), got shape (1, 2, 4)"),
        ]
    else:
        cases += [
            (lambda: layer(x, np.zeros((2, 3, 4))), ValueError,
             "h0 must have shape (2, 2, 4) (num_layers * num_directions, batch, hidden size), got shape (2, 3, 4)"),
            (lambda: layer(x, (np.zeros((2, 2, 4)), np.zeros((2, 2, 4)))), TypeError, "got a tuple (h0, c0)"),
        ]
    for call, exc, words in cases:
        with pytest.raises(exc) as info:
            call()
        assert words in str(info.value), (words, str(info.value))


@pytest.mark.parametrize("cls", CELLS)
def test_bad_backprop_arguments(cls):
    layer = cls(3, 4, batch_first=True, seed=0)
    out, _, backprop = layer.forward_train(np.ones((2, 5, 3)))
    with pytest.raises(ValueError, match=r"d_output must have shape \(2, 5, 4\) \(batch, time"):
        backprop(np.ones((5, 2, 4)))
    with pytest.raises(ValueError, match=r"d_h_n must have shape \(1, 2, 4\)"):
        backprop(np.ones_like(out), (np.ones((1, 3, 4)), None) if cls is rnncore.LSTM else np.ones((1, 3, 4)))
    if cls is rnncore.LSTM:
        with pytest.raises(TypeError, match="d_h_n for an LSTM must be None or a tuple"):
            backprop(np.ones_like(out), np.ones((1, 2, 4)))
    with pytest.raises(TypeError, match="d_output must hold real numbers"):
        backprop(np.full(out.shape, "x"))


def test_state_dict_is_strict_and_atomic():
    layer = rnncore.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    sd = layer.state_dict()
    assert list(sd) == [f"{w}_l{k}{s}" for k in range(2) for s in ("", "_reverse")
                        for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert sd["weight_ih_l1"].shape == (16, 8) and sd["weight_hh_l0_reverse"].shape == (16, 4)
    before = layer.state_dict()
    bad = dict(sd)
    del bad["bias_hh_l1"]
    bad["weight_ih_l2"] = np.zeros((16, 8))
    with pytest.raises(ValueError) as info:
        layer.load_state_dict(bad)
    assert "missing keys ['bias_hh_l1']" in str(info.value) and "unexpected keys ['weight_ih_l2']" in str(info.value)
    bad = {k: v + 1 for k, v in sd.items()}
    bad["weight_hh_l1_reverse"] = np.zeros((16, 5))
    with pytest.raises(ValueError, match=r"state_dict\['weight_hh_l1_reverse'\] must have shape \(16, 4\), got \(16, 5\)"):
        layer.load_state_dict(bad)
    for k, v in layer.state_dict().items():  # nothing was half-loaded
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        layer.load_state_dict([1, 2])
    # state_dict returns copies; params are live
    sd["weight_ih_l0"][...] = 7
    assert not np.any(layer.params["weight_ih_l0"] == 7)


def test_parameter_names_match_pytorch():
    import torch  # a test dependency: CI installs it, and this test must not be skipped
    for ours, theirs in [
        (rnncore.RNN(3, 4, num_layers=2, bidirectional=True, bias=False), torch.nn.RNN(3, 4, 2, bias=False, bidirectional=True)),
        (rnncore.LSTM(3, 5, num_layers=2, proj_size=2, bidirectional=True), torch.nn.LSTM(3, 5, 2, proj_size=2, bidirectional=True)),
        (rnncore.GRU(3, 4, num_layers=3), torch.nn.GRU(3, 4, 3)),
    ]:
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
               {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        assert list(ours.state_dict()) == list(theirs.state_dict())
        ours.load_state_dict(theirs.state_dict())  # torch tensors load directly


# ------------------------------------------------------------------------------ odd but valid input
@pytest.mark.parametrize("cls", CELLS)
def test_odd_but_valid_inputs_give_the_same_answer(cls):
    rng = np.random.default_rng(1)
    layer = cls(3, 4, bidirectional=True, seed=2)
    x = rng.standard_normal((6, 2, 3))
    hx = _hx(layer, 2, rng)
    ref, ref_h = layer(x.astype(np.float32), hx)
    variants = [
        np.asfortranarray(x),                           # Fortran order, float64 into a float32 layer
        np.repeat(x, 2, axis=2)[:, :, ::2],             # strided
        x.tolist(),                                     # nested lists
        x.astype(np.float32).astype(np.float64),
    ]
    for v in variants:
        out, h = layer(v, hx)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    xi = np.arange(6 * 2 * 3).reshape(6, 2, 3) % 5 - 2
    np.testing.assert_allclose(layer(xi)[0], layer(xi.astype(np.float32))[0], rtol=0, atol=0)


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_dtype_is_layer_dtype(cls, dtype):
    layer = cls(3, 4, dtype=dtype, seed=0)
    out, h, bp = layer.forward_train(np.ones((4, 2, 3), np.float64 if dtype == np.float32 else np.float32))
    dx, dh = bp(np.ones(out.shape))
    for a in [out, dx] + list(np.atleast_1d(h) if cls is not rnncore.LSTM else h) + \
             (list(dh) if cls is rnncore.LSTM else [dh]) + list(layer.grads.values()):
        assert a.dtype == dtype


@pytest.mark.parametrize("cls", CELLS)
def test_unbatched_input_equals_batch_of_one(cls):
    rng = np.random.default_rng(3)
    layer = cls(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x = rng.standard_normal((5, 3))
    hx = _hx(layer, 1, rng)
    out1, h1, bp1 = layer.forward_train(x[:, None], hx)
    hx_ub = tuple(h[:, 0] for h in hx) if cls is rnncore.LSTM else hx[:, 0]
    out0, h0, bp0 = layer.forward_train(x, hx_ub)
    assert out0.shape == (5, 8)
    np.testing.assert_array_equal(out0, out1[:, 0])
    d = rng.standard_normal(out0.shape)
    dx1, _ = bp1(d[:, None])
    dx0, _ = bp0(d)
    np.testing.assert_array_equal(dx0, dx1[:, 0])


def test_gradients_accumulate_and_zero_grad_clears():
    layer = rnncore.GRU(3, 4, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    out, _, bp = layer.forward_train(x)
    bp(np.ones_like(out))
    once = {k: v.copy() for k, v in layer.grads.items()}
    out, _, bp2 = layer.forward_train(x)
    bp2(np.ones_like(out))
    for k in once:
        np.testing.assert_allclose(layer.grads[k], 2 * once[k], rtol=1e-12)
    layer.zero_grad()
    assert all(not v.any() for v in layer.grads.values())


def test_two_forward_passes_in_flight_do_not_interfere():
    layer = rnncore.LSTM(3, 4, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal((5, 2, 3)), rng.standard_normal((7, 3, 3))
    oa, _, bpa = layer.forward_train(xa)
    ob, _, bpb = layer.forward_train(xb)
    dxa, _ = bpa(np.ones_like(oa))
    layer2 = rnncore.LSTM(3, 4, dtype=np.float64, seed=0)
    oa2, _, bpa2 = layer2.forward_train(xa)
    np.testing.assert_array_equal(bpa2(np.ones_like(oa2))[0], dxa)


# ------------------------------------------------------------------------------ initialisation
def test_default_init_is_pytorch_uniform_and_seeded():
    a, b, c = rnncore.LSTM(5, 16, seed=7), rnncore.LSTM(5, 16, seed=7), rnncore.LSTM(5, 16, seed=8)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
        assert not np.array_equal(a.params[k], c.params[k])
        assert np.abs(a.params[k]).max() <= 0.25 + 1e-7  # 1/sqrt(16)
    assert np.abs(a.params["weight_hh_l0"]).max() > 0.2  # spread over the whole range


def test_orthogonal_identity_and_forget_bias_inits():
    lstm = rnncore.LSTM(3, 6, init="orthogonal", forget_bias=1.0, dtype=np.float64, seed=0)
    w = lstm.params["weight_hh_l0"]
    for gate in range(4):
        block = w[gate * 6:(gate + 1) * 6]
        np.testing.assert_allclose(block @ block.T, np.eye(6), atol=1e-12)
    np.testing.assert_array_equal(lstm.params["bias_ih_l0"][6:12], 1.0)
    np.testing.assert_array_equal(lstm.params["bias_hh_l0"][6:12], 0.0)
    proj = rnncore.LSTM(3, 6, proj_size=2, init="orthogonal", dtype=np.float64, seed=0)
    blk = proj.params["weight_hh_l0"][:6]  # (6, 2): orthonormal columns
    np.testing.assert_allclose(blk.T @ blk, np.eye(2), atol=1e-12)
    irnn = rnncore.RNN(3, 5, nonlinearity="relu", init="identity", seed=0)
    np.testing.assert_array_equal(irnn.params["weight_hh_l0"], np.eye(5))
    assert not irnn.params["bias_ih_l0"].any() and not irnn.params["bias_hh_l0"].any()


# ------------------------------------------------------------------------------ threads, side effects
def test_thread_settings():
    old = rnncore.get_num_threads()
    with rnncore.threads(1):
        assert rnncore.get_num_threads() == 1
    assert rnncore.get_num_threads() == old
    with pytest.raises(ValueError, match="number of threads must be >= 1, got 0"):
        rnncore.set_num_threads(0)
    with pytest.raises(TypeError, match="number of threads must be an integer"):
        rnncore.set_num_threads(1.5)


@pytest.mark.parametrize("cls", CELLS)
def test_thread_count_does_not_change_results(cls, monkeypatch):
    # small problems normally run on one thread (the configuration's small_work_flops); force the split
    monkeypatch.setitem(rnncore.engine.config._defaults, "small_work_flops", 0)
    rng = np.random.default_rng(0)
    layer = cls(7, 9, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x = rng.standard_normal((6, 5, 7))
    lengths = [6, 3, 1, 5, 6]
    results = []
    for n in (1, 2, 3):
        with rnncore.threads(n):
            layer.zero_grad()
            out, h, bp = layer.forward_train(x, lengths=lengths)
            dx, _ = bp(np.ones_like(out))
            results.append((out, dx, {k: v.copy() for k, v in layer.grads.items()}))
    for out, dx, grads in results[1:]:
        np.testing.assert_allclose(out, results[0][0], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(dx, results[0][1], rtol=1e-13, atol=1e-14)
        for k in grads:
            np.testing.assert_allclose(grads[k], results[0][2][k], rtol=1e-12, atol=1e-13)


def test_blas_thread_limit_is_restored_after_a_call():
    before = [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
    layer = rnncore.LSTM(3, 4, seed=0)
    out, _, bp = layer.forward_train(np.ones((5, 2, 3)))
    bp(np.ones_like(out))
    after = [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
    assert before == after


def test_importing_rnncore_leaves_denormals_alone():
    # -ffast-math at link time would set flush-to-zero for the whole process
    tiny32 = np.array([1e-41], np.float32)
    assert tiny32[0] != 0 and (tiny32 * np.float32(1.0))[0] != 0
    assert np.array([1e-310])[0] * 1.0 != 0
    layer = rnncore.RNN(1, 1, dtype=np.float32, seed=0)
    layer(np.ones((2, 1, 1)))
    assert (tiny32 * np.float32(1.0))[0] != 0


def test_small_problems_run_on_one_thread():
    assert rnncore.engine.threads.threads_for(1e3) == 1
    with rnncore.threads(2):
        assert rnncore.engine.threads.threads_for(1e9) == 2


def test_openmp_reported():
    assert isinstance(rnncore.openmp_enabled(), bool)


@pytest.mark.parametrize("old, new", [("optim", "training.optim"), ("losses", "training.losses"),
                                      ("data", "training.data"), ("trainer", "training.trainer"),
                                      ("checkpoint", "training.checkpoint"), ("reference", "layers.reference"),
                                      ("architectures", "models.architectures"), ("seq2seq", "models.seq2seq"),
                                      ("estimators", "models.estimators"), ("diagnostics", "models.diagnostics")])
def test_the_first_layouts_module_names_still_import(old, new):
    """rnncore's modules moved into subpackages; code (and checkpoints, pickles) naming the old modules
    keeps working: the old name is the very module of the new one."""
    import importlib
    mod = importlib.import_module(f"rnncore.{old}")
    assert mod is importlib.import_module(f"rnncore.{new}")
    assert getattr(rnncore, old) is mod
    exec(f"from rnncore.{old} import *", {})


def test_layers_and_models_packages_export_their_classes():
    from rnncore.layers import GRU, LSTM, RNN, StreamState   # noqa: F401
    from rnncore.models import SequenceModel, generate       # noqa: F401
    assert rnncore.LSTM is LSTM and rnncore.SequenceModel is SequenceModel
