"""Streaming inference: ``state = layer.initial_state(B)``, then ``y_t, state = layer.step(x_t, state)``
gives, bit for bit, what the whole-sequence call gives at every step, for every cell and variant,
dtype, depth and batch (including batches where the whole-sequence call projects the inputs before
its time loop, and ones where it projects them inside it)."""
import numpy as np
import pytest

import rnncore
from conftest import VARIANTS   # every cell variant, at hidden sizes across the panel widths


def random_hx(layer, B, rng):
    h = rng.standard_normal((layer.num_layers, B, layer._P)).astype(layer.dtype) * 0.5
    if isinstance(layer, rnncore.LSTM):
        return h, rng.standard_normal((layer.num_layers, B, layer.hidden_size)).astype(layer.dtype)
    return h


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("B", [1, 3, 17])   # 17: the whole sequence projects inside its loop
@pytest.mark.parametrize("variant", VARIANTS)
def test_step_by_step_equals_the_whole_sequence(variant, B, num_layers, dtype):
    rng = np.random.default_rng(B * 10 + num_layers)
    layer = VARIANTS[variant](num_layers=num_layers, dtype=dtype, seed=1)
    T = 6
    x = rng.standard_normal((T, B, 5)).astype(dtype)
    hx = random_hx(layer, B, rng)
    want_out, want_h = layer(x, hx)
    state = layer.initial_state(B, hx)
    for t in range(T):
        y, state = layer.step(x[t], state)
        assert y.dtype == dtype and y.shape == want_out[t].shape
        np.testing.assert_array_equal(y, want_out[t], err_msg=f"{variant}: step {t}")
    got_h = state.hx
    for got, want in zip(got_h if isinstance(got_h, tuple) else (got_h,),
                         want_h if isinstance(want_h, tuple) else (want_h,)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("step_gemm", ["own", "blas"])
def test_streaming_matches_on_either_path_and_batch_first(step_gemm):
    rng = np.random.default_rng(0)
    with rnncore.config_context(step_gemm=step_gemm):
        layer = rnncore.GRU(4, 8, num_layers=2, batch_first=True, seed=0)
        x = rng.standard_normal((2, 5, 4)).astype(np.float32)    # (batch, time, features)
        want, _ = layer(x)
        state = layer.initial_state(2)
        got = []
        for t in range(5):
            y, state = layer.step(x[:, t], state)
            got.append(y)
    got = np.stack(got, axis=1)
    if step_gemm == "own":
        np.testing.assert_array_equal(got, want)
    else:   # BLAS is not batch-invariant: the reference path agrees to rounding
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_state_can_branch_and_an_unbatched_stream_works():
    rng = np.random.default_rng(1)
    layer = rnncore.LSTM(3, 8, seed=0, dtype=np.float64)
    x = rng.standard_normal((4, 3))
    s0 = layer.initial_state(1)
    y1, s1 = layer.step(x[0], s0)                  # (input_size,) -> (hidden,)
    assert y1.shape == (8,)
    ya, _ = layer.step(x[1], s1)
    yb, _ = layer.step(x[1], s1)                   # the same state again: the same step
    np.testing.assert_array_equal(ya, yb)
    assert np.all(s0.h == 0) and np.all(s0.c == 0)  # steps never write into a state passed in
    want, _ = layer(x)                              # 2-D: one unbatched sequence
    np.testing.assert_array_equal(ya, want[1])


def test_streaming_refusals():
    layer = rnncore.GRU(3, 4, seed=0)
    with pytest.raises(ValueError, match="bidirectional GRU cannot stream"):
        rnncore.GRU(3, 4, bidirectional=True).initial_state(2)
    state = layer.initial_state(2)
    with pytest.raises(ValueError, match=r"x_t must have shape \(2, 3\)"):
        layer.step(np.zeros((3, 3), np.float32), state)
    with pytest.raises(TypeError, match="state must be the StreamState"):
        layer.step(np.zeros((2, 3), np.float32), np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="batch_size must be"):
        layer.initial_state(0)
    with pytest.raises(ValueError, match="has 1 layer"):
        layer.cell(layer=1)


def test_streaming_converts_input_like_the_layer_call():
    layer = rnncore.RNN(2, 3, seed=0)
    state = layer.initial_state(1)
    y, _ = layer.step([[0.5, -1.0]], state)        # nested list, float64 -> float32
    want, _ = layer(np.array([[[0.5, -1.0]]], np.float32))
    np.testing.assert_array_equal(y, want[0])
