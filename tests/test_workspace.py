"""The training workspace (issue 6, memory): forward_train takes the arrays it keeps for backward from
a per-layer pool, and backprop gives them back, so a training loop allocates them once per shape.

What must hold besides speed: nothing the caller holds is ever overwritten by a later step, a
backprop still outstanding when another forward_train starts keeps its own arrays, and a backprop
runs once (its arrays may already serve the next step).
"""
import gc
import pickle

import numpy as np
import pytest

import rnncore

LAYERS = {
    "rnn": lambda **kw: rnncore.RNN(6, 8, **kw),
    "lstm_proj": lambda **kw: rnncore.LSTM(6, 8, proj_size=5, **kw),
    "gru": lambda **kw: rnncore.GRU(6, 8, **kw),
}


def make(cell, **kw):
    return LAYERS[cell](num_layers=2, bidirectional=True, seed=3, dtype=np.float64, **kw)


def batch(seed, T=7, B=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, 6)), rng.standard_normal((T, B, 16))  # d: widest output


def grads_of(layer, x, d_out):
    layer.zero_grad()
    out, _, bp = layer.forward_train(x)
    dx, _ = bp(d_out[..., :out.shape[-1]])
    return out.copy(), dx.copy(), {k: v.copy() for k, v in layer.grads.items()}


def _buffer(a):
    """The array that owns a's memory (workspace arrays are aligned views of a byte buffer)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def saved_arrays(bp, x):
    """The buffers a backprop keeps that are its own: those under its saved arrays, except the caller's
    input x and the layer's parameters."""
    theirs = {id(_buffer(v)) for v in list(bp._layer.params.values()) + [x]}
    out = {}
    for cache in bp._caches:
        for a in cache.values():
            if isinstance(a, np.ndarray):
                b = _buffer(a)
                if id(b) not in theirs:
                    out[id(b)] = b
    return list(out.values())


@pytest.mark.parametrize("cell", list(LAYERS))
def test_a_training_loop_reuses_the_saved_arrays(cell):
    layer = make(cell)
    x, d = batch(0)
    _, _, bp = layer.forward_train(x)
    first = {id(a) for a in saved_arrays(bp, x) if a.nbytes > 400}
    bp(d[..., :layer.output_size])
    _, _, bp2 = layer.forward_train(x)
    second = {id(a) for a in saved_arrays(bp2, x) if a.nbytes > 400}
    assert first and first == second, "the second step allocated new arrays instead of reusing the first's"


@pytest.mark.parametrize("cell", list(LAYERS))
def test_interleaved_steps_keep_their_own_arrays_and_results(cell):
    layer = make(cell)
    (x1, d1), (x2, d2) = batch(1), batch(2)
    want1, want2 = grads_of(layer, x1, d1), grads_of(layer, x2, d2)
    layer.zero_grad()
    out1, _, bp1 = layer.forward_train(x1)
    out1_copy = out1.copy()
    out2, _, bp2 = layer.forward_train(x2)      # bp1 still outstanding
    mine1, mine2 = saved_arrays(bp1, x1), saved_arrays(bp2, x2)
    assert mine1 and mine2
    assert not any(np.shares_memory(a, b) for a in mine1 for b in mine2)
    dx2, _ = bp2(d2[..., :out2.shape[-1]])
    grads2 = {k: v.copy() for k, v in layer.grads.items()}
    layer.zero_grad()
    out3, _, bp3 = layer.forward_train(x2)      # may take bp2's arrays back; bp1's are still its own
    dx1, _ = bp1(d1[..., :out1.shape[-1]])
    np.testing.assert_array_equal(out1, out1_copy)      # the caller's output was not overwritten
    np.testing.assert_array_equal(out1, want1[0])
    np.testing.assert_array_equal(dx1, want1[1])
    for k in want1[2]:
        np.testing.assert_array_equal(layer.grads[k], want1[2][k], err_msg=k)
        np.testing.assert_array_equal(grads2[k], want2[2][k], err_msg=k)
    np.testing.assert_array_equal(dx2, want2[1])


def test_outputs_and_input_gradients_belong_to_the_caller():
    layer = make("lstm_proj", batch_first=True)
    x, d = batch(4, T=5, B=3)
    x = np.ascontiguousarray(x.transpose(1, 0, 2))
    d = np.ascontiguousarray(d.transpose(1, 0, 2))[..., :layer.output_size]
    out, (h, c), bp = layer.forward_train(x)
    dx, (dh, dc) = bp(d)
    kept = [a.copy() for a in (out, h, c, dx, dh, dc)]
    for _ in range(3):
        o, _, b = layer.forward_train(x * 2)
        b(d * 3)
    for before, now in zip(kept, (out, h, c, dx, dh, dc)):
        np.testing.assert_array_equal(before, now)


def test_backprop_runs_once():
    layer = make("gru")
    x, d = batch(5)
    _, _, bp = layer.forward_train(x)
    with pytest.raises(ValueError):     # a refused call does not use it up
        bp(np.zeros((1, 2, 3)))
    bp(d[..., :layer.output_size])
    with pytest.raises(RuntimeError, match="already run.*forward_train again"):
        bp(d[..., :layer.output_size])


def test_pickled_layer_has_no_workspaces_and_trains():
    layer = make("lstm_proj")
    x, d = batch(6)
    _, _, bp = layer.forward_train(x)
    bp(d[..., :layer.output_size])
    assert layer._pool
    clone = pickle.loads(pickle.dumps(layer))
    assert not getattr(clone, "_pool", None)
    a, b = grads_of(layer, x, d), grads_of(clone, x, d)
    for k in a[2]:
        np.testing.assert_array_equal(a[2][k], b[2][k])


@pytest.mark.parametrize("cell", list(LAYERS))
def test_workspace_arrays_and_packed_weights_start_on_a_cache_line(cell):
    """Workspaces and packed weights start on 64-byte boundaries (a numpy array of a few MB starts
    16 bytes past one, and half of the kernels' 32-byte vector loads would then straddle two lines)."""
    from rnncore import _kernels
    layer = make(cell)
    x, d = batch(0)
    layer(x)                                                  # the inference scratch
    _, _, bp = layer.forward_train(x)
    bp(d[..., :layer.output_size])                            # gives the training workspace back
    for ws in (layer._local.scratch, layer._pool[-1]):
        assert ws._arrays
        for name, a in ws._arrays.items():
            assert a.ctypes.data % 64 == 0, name
    for w in (np.ones((300, 70), np.float32), np.ones((130, 90), np.float64)):
        assert _kernels.pack_t(w).ctypes.data % 64 == 0 and _kernels.pack_n(w).ctypes.data % 64 == 0
    for shape in ((3, 5), (1000, 33), (7,), (2, 0, 4)):
        for dtype in (np.float32, np.float64):
            a = _kernels.empty_aligned(shape, dtype)
            assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
            assert a.size == 0 or a.ctypes.data % 64 == 0
            a[...] = 7                       # the whole extent is the array's own (a view that keeps
            gc.collect()                     # its buffer alive)
            assert (a == 7).all() and (a.copy() == 7).all()
    with pytest.raises(ValueError, match="C-contiguous"):
        _kernels.pack_t(np.ones((8, 6), np.float32)[:, ::2])
    with pytest.raises(TypeError, match="float32 or float64"):
        _kernels.pack_n(np.ones((8, 6), np.int64))
