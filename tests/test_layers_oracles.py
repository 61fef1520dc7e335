"""The compiled layers rnncore.RNN / LSTM / GRU against the oracles: rnncore.layers.reference (float64),
PyTorch (float64, same weights), and float64 central differences through the layer itself.

Every comparison loads the same weights into the layer (load_state_dict), uses nonzero, distinct h0
and c0 (so an (h0, c0) swap cannot pass), and checks the output, the final state and every gradient
(dx, dh0, dc0, each parameter read from layer.grads after zero_grad()).

The float32 layer is given float32 values; the oracles get exactly those values widened to float64,
so the only difference left is the layer's float32 rounding.
"""
import itertools
import re

import numpy as np
import pytest

import rnncore
from conftest import (CELLS, GRID, RAGGED_LENGTHS, assert_close, central_diff, grid_config, grid_id,
                      make_config, make_layer, param_shapes,
                      random_grads, random_inputs, random_params, sizes, torch_run,
                      zero_past_lengths)
from rnncore.layers import reference

TOL = {np.float32: (1e-5, 1e-5), np.float64: (1e-10, 1e-11)}     # (rtol, atol)
DTYPES = [np.float32, np.float64]

def cast(tree, dtype):
    """Cast arrays, tuples of arrays (LSTM states) and dicts of arrays; None stays None."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {k: cast(v, dtype) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(cast(v, dtype) for v in tree)
    return np.asarray(tree).astype(dtype)


def layer_run(layer, params, x, hx, lengths, d_output, d_h_n):
    """Load params, zero grads, forward_train + backprop. Returns a dict like torch_run's."""
    layer.load_state_dict(params)
    layer.zero_grad()
    output, h_n, backprop = layer.forward_train(x, hx, lengths)
    dx, dhx = backprop(d_output, d_h_n)
    return {"output": output, "h_n": h_n, "dx": dx, "dhx": dhx,
            "grads": {k: v.copy() for k, v in layer.grads.items()}, "backprop": backprop}


def reference_run(config, params, x, hx, lengths, d_output, d_h_n, masks=None):
    output, h_n, cache = reference.forward(config, params, x, hx, lengths, masks)
    dx, dhx, grads = reference.backward(config, params, cache, d_output, d_h_n)
    return {"output": output, "h_n": h_n, "dx": dx, "dhx": dhx, "grads": grads}


def check_dtypes(got, dtype, is_lstm):
    dtype = np.dtype(dtype)
    arrays = {"output": got["output"], "dx": got["dx"]}
    if is_lstm:
        arrays.update(h_n=got["h_n"][0], c_n=got["h_n"][1], dh0=got["dhx"][0], dc0=got["dhx"][1])
    else:
        arrays.update(h_n=got["h_n"], dh0=got["dhx"])
    arrays.update({"grad " + k: v for k, v in got["grads"].items()})
    for what, a in arrays.items():
        assert a.dtype == dtype, f"{what}: dtype {a.dtype}, layer dtype {dtype}"


def compare(got, want, is_lstm, rtol, atol, oracle, check_dhx=True):
    """Every quantity of got against want; failures name the oracle and the quantity."""
    assert_close(got["output"], want["output"], rtol, atol, f"[vs {oracle}] output")
    if is_lstm:
        assert_close(got["h_n"][0], want["h_n"][0], rtol, atol, f"[vs {oracle}] h_n")
        assert_close(got["h_n"][1], want["h_n"][1], rtol, atol, f"[vs {oracle}] c_n")
    else:
        assert_close(got["h_n"], want["h_n"], rtol, atol, f"[vs {oracle}] h_n")
    assert_close(got["dx"], want["dx"], rtol, atol, f"[vs {oracle}] dx")
    if check_dhx:
        if is_lstm:
            assert_close(got["dhx"][0], want["dhx"][0], rtol, atol, f"[vs {oracle}] dh0")
            assert_close(got["dhx"][1], want["dhx"][1], rtol, atol, f"[vs {oracle}] dc0")
        else:
            assert_close(got["dhx"], want["dhx"], rtol, atol, f"[vs {oracle}] dh0")
    assert set(got["grads"]) == set(want["grads"]), (sorted(got["grads"]), sorted(want["grads"]))
    for name in want["grads"]:
        assert_close(got["grads"][name], want["grads"][name], rtol, atol, f"[vs {oracle}] grad {name}")


def zeros_hx(config, B):
    D, P, _ = sizes(config)
    n = config["num_layers"] * D
    h0 = np.zeros((n, B, P))
    return (h0, np.zeros((n, B, config["hidden_size"]))) if config["mode"] == "LSTM" else h0


def problem(config, rng, dtype, with_hx=True, seq_len=5, batch=3):
    """params, x, hx, d_output, d_h_n in dtype, and the same values widened to float64."""
    params = cast(random_params(config, rng), dtype)
    x, hx = random_inputs(config, rng, with_hx=with_hx, seq_len=seq_len, batch=batch)
    d_output, d_h_n = random_grads(config, rng, seq_len=seq_len, batch=batch)
    low = [params, cast(x, dtype), cast(hx, dtype), cast(d_output, dtype), cast(d_h_n, dtype)]
    return low, [cast(a, np.float64) for a in low]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_layer_matches_reference_and_torch(case, dtype, rng):
    cell, L, bidir, bf, lengths, with_hx = case
    config = grid_config(cell, num_layers=L, bidirectional=bidir, batch_first=bf)
    is_lstm = config["mode"] == "LSTM"
    rtol, atol = TOL[dtype]
    (params, x, hx, d_output, d_h_n), wide = problem(config, rng, dtype, with_hx)
    layer = make_layer(config, dtype)
    assert {k: v.shape for k, v in layer.params.items()} == param_shapes(config)

    got = layer_run(layer, params, x, hx, lengths, d_output, d_h_n)
    check_dtypes(got, dtype, is_lstm)

    want_ref = reference_run(config, *wide[:3], lengths, *wide[3:])
    compare(got, want_ref, is_lstm, rtol, atol, "reference")

    p64, x64, hx64, dout64, dhn64 = wide
    want_torch = torch_run(config, p64, x64, hx64 if with_hx else zeros_hx(config, x.shape[0 if bf else 1]),
                           lengths, zero_past_lengths(config, dout64, lengths), dhn64)
    compare(got, want_torch, is_lstm, rtol, atol, "torch")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", [c[0] for c in CELLS])
def test_layer_bias_false_matches_torch(cell, dtype, rng):
    config = grid_config(cell, num_layers=2, bidirectional=True, bias=False)
    (params, x, hx, d_output, d_h_n), (p64, x64, hx64, dout64, dhn64) = problem(config, rng, dtype)
    lengths = [4, 2, 5]
    layer = make_layer(config, dtype)
    assert not any(k.startswith("bias") for k in layer.params)
    got = layer_run(layer, params, x, hx, lengths, d_output, d_h_n)
    want = torch_run(config, p64, x64, hx64, lengths, zero_past_lengths(config, dout64, lengths), dhn64)
    compare(got, want, config["mode"] == "LSTM", *TOL[dtype], "torch")


@pytest.mark.parametrize("which", ["output_only", "h_only", "c_only", "no_upstream"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_partial_upstream_gradients(cell, which, rng):
    """d_h_n None or with None members (and d_output zero) means those parts count as zero."""
    config = grid_config(cell, num_layers=2, bidirectional=True)
    is_lstm = config["mode"] == "LSTM"
    (params, x, hx, d_output, d_h_n), wide = problem(config, rng, np.float64)
    if which == "output_only":
        d_h_n = None
    elif which == "h_only":
        d_output = np.zeros_like(d_output)
        d_h_n = (d_h_n[0], None) if is_lstm else d_h_n
    elif which == "c_only":
        d_output = np.zeros_like(d_output)
        d_h_n = (None, d_h_n[1]) if is_lstm else None
    else:
        d_output, d_h_n = np.zeros_like(d_output), None
    layer = make_layer(config, np.float64)
    got = layer_run(layer, params, x, hx, None, d_output, d_h_n)
    want = reference_run(config, params, x, hx, None, d_output, d_h_n)
    compare(got, want, is_lstm, *TOL[np.float64], "reference")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm_proj", "gru"])
def test_layer_inference_call_matches_forward_train(cell, dtype, rng):
    config = grid_config(cell, num_layers=2, bidirectional=True, batch_first=True)
    (params, x, hx, d_output, d_h_n), wide = problem(config, rng, dtype)
    layer = make_layer(config, dtype, dropout=0.3)
    layer.load_state_dict(params)
    out, h_n = layer(x, hx, RAGGED_LENGTHS)
    assert out.dtype == np.dtype(dtype)
    want, want_h, _ = reference.forward(config, *wide[:3], RAGGED_LENGTHS)
    assert_close(out, want, *TOL[dtype], "inference output (no dropout at inference)")
    if config["mode"] == "LSTM":
        assert_close(h_n[0], want_h[0], *TOL[dtype], "h_n")
        assert_close(h_n[1], want_h[1], *TOL[dtype], "c_n")
    else:
        assert_close(h_n, want_h, *TOL[dtype], "h_n")


# ------------------------------------------------------------------------------------------------
# Gradient accumulation, zero_grad.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["rnn_relu", "lstm", "lstm_proj", "gru"])
def test_layer_gradients_accumulate(cell, dtype, rng):
    config = grid_config(cell, num_layers=2, bidirectional=True)
    (params, x1, hx1, dout1, dhn1), wide1 = problem(config, rng, dtype)
    (_, x2, hx2, dout2, dhn2), wide2 = problem(config, rng, dtype)
    layer = make_layer(config, dtype)
    layer.load_state_dict(params)
    layer.zero_grad()
    _, _, bp1 = layer.forward_train(x1, hx1, RAGGED_LENGTHS)
    _, _, bp2 = layer.forward_train(x2, hx2, None)
    bp1(dout1, dhn1)
    bp2(dout2, dhn2)
    p64 = wide1[0]
    g1 = reference_run(config, p64, *wide1[1:3], RAGGED_LENGTHS, *wide1[3:])["grads"]
    g2 = reference_run(config, p64, *wide2[1:3], None, *wide2[3:])["grads"]
    rtol, atol = TOL[dtype]
    for name in params:
        assert layer.grads[name].dtype == np.dtype(dtype)
        assert_close(layer.grads[name], g1[name] + g2[name], rtol, 2 * atol, "accumulated grad " + name)
    layer.zero_grad()
    for name, g in layer.grads.items():
        assert np.all(g == 0), f"zero_grad left {name} nonzero"


# ------------------------------------------------------------------------------------------------
# Dropout: the masks the layer used, fed to the reference, give the same numbers.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bf", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "lstm_proj", "gru"])
def test_layer_dropout_masks_match_reference(cell, bf, dtype, rng):
    config = grid_config(cell, num_layers=3, bidirectional=True, batch_first=bf)
    is_lstm = config["mode"] == "LSTM"
    _, _, out_size = sizes(config)
    (params, x, hx, d_output, d_h_n), (p64, x64, hx64, dout64, dhn64) = problem(config, rng, dtype)
    p = 0.5
    layer = make_layer(config, dtype, dropout=p, seed=1)
    got = layer_run(layer, params, x, hx, RAGGED_LENGTHS, d_output, d_h_n)
    masks = got["backprop"].masks
    assert len(masks) == 2, f"expected 2 masks (layers 1 and 2), got {len(masks)}"
    for m in masks:
        assert m.shape == (5, 3, out_size), f"mask shape {m.shape}, expected (T, B, output_size)"
        values = set(np.unique(m).tolist())
        assert values <= {0.0, np.float64(np.asarray(1 / (1 - p), dtype))}, values
        assert 0.0 in values and len(values) == 2, "a p=0.5 mask should drop some units and keep some"
    assert not np.array_equal(masks[0], masks[1]), "each layer needs its own mask"
    want = reference_run(config, p64, x64, hx64, RAGGED_LENGTHS, dout64, dhn64,
                         masks=[m.astype(np.float64) for m in masks])
    compare(got, want, is_lstm, *TOL[dtype], "reference with the layer's masks")
    no_drop = reference_run(config, p64, x64, hx64, RAGGED_LENGTHS, dout64, dhn64)
    assert not np.allclose(got["output"], no_drop["output"]), "dropout had no effect on the output"


def test_layer_no_masks_without_dropout_or_depth(rng):
    config = grid_config("gru", num_layers=1)
    (params, x, hx, d_output, d_h_n), _ = problem(config, rng, np.float32)
    with pytest.warns(UserWarning, match="num_layers=1 has none"):   # as torch.nn warns
        layer = make_layer(config, np.float32, dropout=0.5)
    assert layer_run(layer, params, x, hx, None, d_output, d_h_n)["backprop"].masks == []
    config = grid_config("gru", num_layers=2)
    (params, x, hx, d_output, d_h_n), _ = problem(config, rng, np.float32)
    layer = make_layer(config, np.float32, dropout=0.0)
    assert layer_run(layer, params, x, hx, None, d_output, d_h_n)["backprop"].masks == []


# ------------------------------------------------------------------------------------------------
# Variants torch lacks: peephole LSTM, GRU reset_after=False, against the reference and against
# central differences through the layer itself.
# ------------------------------------------------------------------------------------------------

VARIANTS = [
    ("lstm_peephole", dict(mode="LSTM", peephole=True)),
    ("lstm_peephole_proj", dict(mode="LSTM", peephole=True, proj_size=2)),
    ("gru_reset_before", dict(mode="GRU", reset_after=False)),
]
VARIANT_GRID = list(itertools.product(
    [v[0] for v in VARIANTS], [1, 2], [False, True], [False, True], [None, RAGGED_LENGTHS]))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", VARIANT_GRID, ids=[
    f"{v}-L{L}-{'bi' if bi else 'uni'}-{'bf' if bf else 'tm'}-{'ragged' if ln else 'full'}"
    for v, L, bi, bf, ln in VARIANT_GRID])
def test_layer_variants_match_reference(case, dtype, rng):
    variant, L, bidir, bf, lengths = case
    config = make_config(num_layers=L, bidirectional=bidir, batch_first=bf, **dict(VARIANTS)[variant])
    (params, x, hx, d_output, d_h_n), wide = problem(config, rng, dtype)
    layer = make_layer(config, dtype)
    assert {k: v.shape for k, v in layer.params.items()} == param_shapes(config)
    got = layer_run(layer, params, x, hx, lengths, d_output, d_h_n)
    check_dtypes(got, dtype, config["mode"] == "LSTM")
    want = reference_run(config, *wide[:3], lengths, *wide[3:])
    compare(got, want, config["mode"] == "LSTM", *TOL[dtype], "reference")


FD_CASES = VARIANTS + [("rnn_relu", dict(mode="RNN_RELU")), ("lstm_proj", dict(mode="LSTM", proj_size=2)),
                       ("gru", dict(mode="GRU"))]


@pytest.mark.parametrize("final_state_only", [False, True], ids=["all", "h_n_only"])
@pytest.mark.parametrize("variant", FD_CASES, ids=[v[0] for v in FD_CASES])
def test_layer_central_differences(variant, final_state_only, rng):
    """Gradients of the float64 layer vs central differences of the layer's own inference call,
    perturbing x, h0, c0 and the live arrays of layer.params in place."""
    config = make_config(input_size=3, num_layers=2, bidirectional=True, **variant[1])
    is_lstm = config["mode"] == "LSTM"
    (params, x, hx, d_output, d_h_n), _ = problem(config, rng, np.float64, seq_len=4)
    if final_state_only:
        d_output = np.zeros_like(d_output)
    lengths = [4, 1, 3]
    layer = make_layer(config, np.float64)
    got = layer_run(layer, params, x, hx, lengths, d_output, d_h_n)

    def loss():
        output, h_n = layer(x, hx, lengths)
        total = np.sum(output * d_output)
        if is_lstm:
            return total + np.sum(h_n[0] * d_h_n[0]) + np.sum(h_n[1] * d_h_n[1])
        return total + np.sum(h_n * d_h_n)

    names = sorted(layer.params)
    hx_arrays = list(hx) if is_lstm else [hx]
    numeric = central_diff(loss, [x] + hx_arrays + [layer.params[n] for n in names], eps=1e-6)
    analytic = [got["dx"]] + (list(got["dhx"]) if is_lstm else [got["dhx"]]) + \
        [got["grads"][n] for n in names]
    labels = ["dx"] + (["dh0", "dc0"] if is_lstm else ["dh0"]) + ["grad " + n for n in names]
    for a, n, label in zip(analytic, numeric, labels):
        assert_close(a, n, 1e-6, 1e-8, "[vs central differences] " + label)


# ------------------------------------------------------------------------------------------------
# Threads: the batch split across threads must not change the numbers.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm_proj", "lstm_peephole", "gru", "gru_reset_before"])
def test_layer_same_result_on_one_and_two_threads(cell, dtype, rng, monkeypatch):
    # small problems normally run on one thread (the configuration's small_work_flops); force the split
    monkeypatch.setitem(rnncore.engine.config._defaults, "small_work_flops", 0)
    overrides = dict(CELLS + VARIANTS)[cell]
    config = make_config(num_layers=2, bidirectional=True, **overrides)
    lengths = [5, 1, 3, 4, 2, 5, 3, 1, 4]
    (params, x, hx, d_output, d_h_n), wide = problem(config, rng, dtype, batch=len(lengths))
    runs = []
    for n in (1, 2):
        with rnncore.threads(n):
            assert rnncore.get_num_threads() == n
            runs.append(layer_run(make_layer(config, dtype), params, x, hx, lengths, d_output, d_h_n))
    is_lstm = config["mode"] == "LSTM"
    compare(runs[1], runs[0], is_lstm, *TOL[dtype], "the same layer on 1 thread")
    want = reference_run(config, *wide[:3], lengths, *wide[3:])
    compare(runs[1], want, is_lstm, *TOL[dtype], "reference")


# Both step-GEMM paths (rnncore's own kernel, with the input projection inside the time loop and
# before it, and the BLAS reference path, config_context(step_gemm="blas")),
# both row layouts (time-major, and batch_first, which the kernels read and write in place without
# transposing) and 1 or 3 threads (so that a thread's block of rows starts inside the batch), on a
# problem big enough for rnncore to use those threads, against the float64 reference.
PATH_VARIANTS = CELLS + [("lstm_peephole", dict(mode="LSTM", peephole=True)),
                         ("gru_reset_before", dict(mode="GRU", reset_after=False))]
PATH_SIZES = dict(seq_len=20, batch=13)
PATH_TOL = {np.float32: (2e-4, 2e-4), np.float64: (1e-10, 1e-11)}   # float32 rounds over 20 steps, 2 layers


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", [c[0] for c in PATH_VARIANTS])
def test_step_paths_layouts_and_thread_blocks_match_reference(cell, dtype, rng):
    from rnncore.engine import threads as _threads
    lengths = [20, 7, 1, 20, 13, 2, 19, 20, 5, 11, 1, 16, 9]
    results = {}
    base = make_config(**dict(dict(PATH_VARIANTS)[cell], input_size=16, hidden_size=32, num_layers=2,
                              bidirectional=True, proj_size=8 if cell == "lstm_proj" else 0))
    problem_tm, wide_tm = problem(base, rng, dtype, True, **PATH_SIZES)
    if cell == "rnn_relu":  # keep 20 ReLU steps from growing without bound (x 1/4 is exact)
        for low_or_wide in (problem_tm, wide_tm):
            low_or_wide[0] = {k: v / 4 for k, v in low_or_wide[0].items()}
    for bf in (False, True):
        config = dict(base, batch_first=bf)
        is_lstm = config["mode"] == "LSTM"
        # the same numbers in either layout: x and d_output transposed to (batch, time, .)
        swap = (lambda a: np.ascontiguousarray(a.transpose(1, 0, 2))) if bf else (lambda a: a)
        params, x, hx, d_output, d_h_n = problem_tm
        x, d_output = swap(x), swap(d_output)
        wide = [wide_tm[0], swap(wide_tm[1]), wide_tm[2], swap(wide_tm[3]), wide_tm[4]]
        want = reference_run(config, *wide[:3], lengths, *wide[3:])
        layer = make_layer(config, dtype)
        if True:
            # rnncore's own step GEMM with the input projection inside the time loop (forced on for
            # any batch) and before it; the BLAS path (always before it)
            for path, step_gemm, step_projection in (("own", "own", True),
                                                     ("own, projection before the loop", "own", False),
                                                     ("blas", "blas", True)):
                for nt in (1, 3):
                    with rnncore.threads(nt), rnncore.config_context(
                            step_gemm=step_gemm, step_projection=step_projection,
                            step_projection_min_rows=1):
                        assert _threads.threads_for(layer._flops(20, 13)) == nt  # really nt threads
                        got = layer_run(layer, params, x, hx, lengths, d_output, d_h_n)
                        # inference keeps only the current and next step of its workspace arrays:
                        # the same arithmetic, so the same bits as forward_train
                        inf_out, inf_h = layer(x, hx, lengths)
                    compare(got, want, is_lstm, *PATH_TOL[dtype], f"reference ({path}, bf={bf}, {nt} thr)")
                    pairs = [("output", inf_out, got["output"])]
                    if is_lstm:
                        pairs += [("h_n", inf_h[0], got["h_n"][0]), ("c_n", inf_h[1], got["h_n"][1])]
                    else:
                        pairs += [("h_n", inf_h, got["h_n"])]
                    for name, a, b in pairs:
                        assert np.array_equal(a, b), \
                            f"inference {name} differs from forward_train's ({path}, bf={bf}, {nt} thr)"
                    results[bf, path, nt] = got
    # batch_first results are the time-major ones transposed, to rounding (BLAS may round a row of the
    # input projection differently by its place in a block), and both paths agree to rounding
    tight = 1e-4 if dtype == np.float32 else 1e-12
    for key, got in results.items():
        tm = results[False, "own", 1]
        for what in ("output", "dx"):
            a = got[what].transpose(1, 0, 2) if key[0] else got[what]
            assert_close(a, tm[what], tight, tight, f"{what} {key} vs time-major own 1 thread")


def test_scan_inputs_that_do_not_fit_are_refused():
    """The compiled scan reads x rows, the state and every workspace row through raw pointers: arrays
    that do not fit the cell are a ValueError/TypeError naming what was expected, never an
    out-of-bounds read."""
    from rnncore import _kernels as K
    T_, B_, I_, H_ = 4, 3, 5, 6
    f = np.float32
    rng = np.random.default_rng(0)
    p = {"w_ih": np.ones((H_, I_), f), "w_hh": np.zeros((H_, H_), f),
         "b_ih": np.full(H_, 0.25, f), "b_hh": np.full(H_, 0.25, f)}
    cell = K.Cell("rnn_tanh", p, own_gemm=True, in_loop=True)
    x = np.ones((T_ * B_, I_), f)

    def call(**kw):
        args = dict(x=x, out=np.zeros((T_ * B_, H_), f), col0=0, h0=np.zeros((B_, H_), f),
                    h_n=np.zeros((B_, H_), f), lengths=np.full(B_, T_, np.int32),
                    ws={"G": np.zeros((T_, B_, H_), f), "hprev": np.zeros((T_, B_, H_), f)})
        args.update(kw)
        K.forward(cell, **args)
        return args

    got = call()
    np.testing.assert_allclose(got["ws"]["G"][0], np.tanh(I_ + 0.5), rtol=1e-6)  # the projection ran
    for kw, err, words in [
            (dict(x=x[:-1]), ValueError, "x must have shape (12, 5), got (11, 5)"),
            (dict(x=None), ValueError, "x must be an array of shape (12, 5), got None"),
            (dict(x=x.astype(np.float64)), TypeError, "x must be float32, got float64"),
            (dict(x=np.ones((I_, T_ * B_), f).T), ValueError, "x must be C-contiguous"),
            (dict(h0=np.zeros((B_, H_ + 1), f)), ValueError, "h0 must have shape (3, 6)"),
            (dict(out=np.zeros((T_ * B_, H_), f), col0=1), ValueError, "out must be (12, >= 7)"),
            (dict(lengths=np.full(B_, T_, np.int64)), TypeError, "lengths must be int32"),
            (dict(ws={"G": np.zeros((T_, B_, H_ + 1), f), "hprev": np.zeros((T_, B_, H_), f)}),
             ValueError, "G must have shape (4, 3, 6)"),
            (dict(ws={"G": np.zeros((T_, B_, H_), f)}), KeyError, "hprev")]:
        with pytest.raises(err, match=re.escape(words)):
            call(**kw)
    with pytest.raises(ValueError, match="in_loop needs own_gemm"):
        K.Cell("rnn_tanh", p, own_gemm=False, in_loop=True)
    with pytest.raises(ValueError, match="kind must be one of"):
        K.Cell("lstn", p)
    with pytest.raises(ValueError, match=re.escape("params['b_ih'] must have shape (6,)")):
        K.Cell("rnn_tanh", dict(p, b_ih=np.zeros(7, f)))
