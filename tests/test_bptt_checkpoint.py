"""BPTT within a memory budget: ``forward_train(x, checkpoint=k)`` keeps each layer's state every k
steps and recomputes the segments during backward. Its outputs, final states, input gradients and
parameter gradients are bit-identical to full BPTT for every cell and variant, dtype, direction,
layout, lengths, segment length and thread count (the grid below); and it matches the three oracles
(PyTorch, the numpy reference and central differences) through that identity and directly.

The weight-gradient sums behind the identity (rnncore/_wgrad.pxi) are checked on their own too:
against float64 sums, and for the same bits whatever the segments, layout or thread count."""
import tracemalloc

import numpy as np
import pytest

import rnncore
from conftest import (VARIANTS, central_diff, grid_config, make_layer, random_grads, random_inputs,
                      torch_run, variant_batch, zero_past_lengths)
from rnncore import _kernels as K

T = 13


def run(layer, x, hx, lengths, d_out, d_h, checkpoint):
    layer.zero_grad()
    out, h_n, bp = layer.forward_train(x, hx, lengths=lengths, checkpoint=checkpoint)
    dx, dhx = bp(d_out, d_h)
    flat = lambda s: list(s) if isinstance(s, tuple) else [s]
    return ([("out", out), ("dx", dx)] + [("h_n", a) for a in flat(h_n)]
            + [("dhx", a) for a in flat(dhx)] + [(k, v.copy()) for k, v in layer.grads.items()])


def inputs(layer, B, rng, dtype):
    data = variant_batch(layer, B, T, rng, dtype)
    data[2][0] = T                     # one sequence runs through every segment
    return data


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("stack", [(1, False), (2, True)], ids=["1-layer", "2-layer-bi"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpointed_bptt_is_bit_identical_to_full_bptt(variant, dtype, batch_first, stack, threads):
    rng = np.random.default_rng(3)
    layer = VARIANTS[variant](num_layers=stack[0], bidirectional=stack[1], batch_first=batch_first,
                              dtype=dtype, seed=1)
    B = 17 if threads == 3 else 5       # 17: the input projection inside the loop, uneven blocks
    data = inputs(layer, B, rng, dtype)
    with rnncore.threads(threads), rnncore.config_context(small_work_flops=0):
        want = run(layer, *data, checkpoint=None)
        # segments of 1 step, uneven (13 = 3 * 4 + 1), sqrt (4), one short of the whole, and the
        # whole sequence (k >= T: no segments)
        for k in (1, 4, "sqrt", 5, T - 1, T):
            got = run(layer, *data, checkpoint=k)
            for (name, w), (_, g) in zip(want, got):
                np.testing.assert_array_equal(g, w, err_msg=f"{name}, checkpoint={k}")


def test_checkpointed_bptt_is_bit_identical_whatever_the_thread_count():
    rng = np.random.default_rng(4)
    layer = rnncore.LSTM(5, 33, num_layers=2, bidirectional=True, peephole=True, seed=0)
    data = inputs(layer, 19, rng, np.float32)
    with rnncore.config_context(small_work_flops=0):
        with rnncore.threads(1):
            want = run(layer, *data, checkpoint=None)
        for n in (2, 3):
            with rnncore.threads(n):
                got = run(layer, *data, checkpoint=3)
            for (name, w), (_, g) in zip(want, got):
                np.testing.assert_array_equal(g, w, err_msg=f"{name}, {n} threads")


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "lstm_proj", "gru"])
@pytest.mark.parametrize("bf", [False, True])
def test_checkpointed_bptt_matches_pytorch(cell, bf):
    """float64, two layers, bidirectional, ragged lengths, nonzero initial states, segments of 2."""
    config = grid_config(cell, num_layers=2, bidirectional=True, batch_first=bf)
    rng = np.random.default_rng(5)
    layer = make_layer(config, np.float64)
    params = {k: v.copy() for k, v in layer.state_dict().items()}
    x, hx = random_inputs(config, rng)
    d_out, d_h = random_grads(config, rng)
    lengths = [3, 5, 1]
    d_out = zero_past_lengths(config, d_out, lengths)
    out, h_n, bp = layer.forward_train(x, hx, lengths=lengths, checkpoint=2)
    dx, dhx = bp(d_out, d_h)
    ref = torch_run(config, params, x, hx, lengths, d_out, d_h)
    np.testing.assert_allclose(out, ref["output"], rtol=1e-10, atol=1e-12)
    for a, b in zip(h_n if isinstance(h_n, tuple) else (h_n,),
                    ref["h_n"] if isinstance(h_n, tuple) else (ref["h_n"],)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, ref["dx"], rtol=1e-9, atol=1e-11)
    for a, b in zip(dhx if isinstance(dhx, tuple) else (dhx,),
                    ref["dhx"] if isinstance(dhx, tuple) else (ref["dhx"],)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    for name, g in layer.grads.items():
        np.testing.assert_allclose(g, ref["grads"][name], rtol=1e-9, atol=1e-11, err_msg=name)


SMALL = {
    "lstm_proj_peephole": lambda **kw: rnncore.LSTM(5, 3, proj_size=2, peephole=True, **kw),
    "gru_reset_before": lambda **kw: rnncore.GRU(5, 3, reset_after=False, **kw),
    "rnn_relu": lambda **kw: rnncore.RNN(5, 3, nonlinearity="relu", **kw),
}


@pytest.mark.parametrize("variant", SMALL)
def test_checkpointed_bptt_matches_central_differences_and_the_reference(variant):
    """float64 gradients of L = Σ out ⊙ w + Σ h_n ⊙ v against central differences of the numpy
    reference's forward (rnncore.layers.reference), with a 3-step checkpoint and ragged lengths."""
    from rnncore.layers import reference
    rng = np.random.default_rng(6)
    layer = SMALL[variant](num_layers=2, dtype=np.float64, seed=3)
    Tn, B = 7, 3
    x = rng.standard_normal((Tn, B, 5))
    lengths = np.array([7, 2, 5])
    out, h_n, bp = layer.forward_train(x, lengths=lengths, checkpoint=3)
    w = rng.standard_normal(out.shape) * (np.arange(Tn)[:, None] < lengths[None, :])[..., None]
    v = [rng.standard_normal(s.shape) for s in (h_n if isinstance(h_n, tuple) else (h_n,))]
    dx, _ = bp(w, tuple(v) if isinstance(h_n, tuple) else v[0])
    params = layer.state_dict()

    def loss():
        o, hn, _ = reference.forward(layer.config, params, x, lengths=lengths)
        hn = hn if isinstance(hn, tuple) else (hn,)
        return float((o * w).sum() + sum((a * b).sum() for a, b in zip(hn, v)))

    o_ref, _, _ = reference.forward(layer.config, params, x, lengths=lengths)
    np.testing.assert_allclose(out, o_ref, rtol=1e-12, atol=1e-13)
    names = sorted(params)
    numeric = central_diff(loss, [x] + [params[n] for n in names])
    np.testing.assert_allclose(dx, numeric[0], rtol=1e-6, atol=1e-8)
    for n, g in zip(names, numeric[1:]):
        np.testing.assert_allclose(layer.grads[n], g, rtol=1e-6, atol=1e-8, err_msg=n)


def test_checkpointing_keeps_memory_for_backward_near_sqrt_t():
    """The arrays alive between forward_train and backprop: every step's gates and states in full
    BPTT, the states every k steps (plus one segment's output) with checkpoint="sqrt"."""
    x = np.random.default_rng(0).standard_normal((900, 4, 8)).astype(np.float32)
    peaks = {}
    for k in (None, "sqrt"):
        layer = rnncore.LSTM(8, 64, seed=0)                      # an empty workspace pool
        tracemalloc.start()
        out, _, bp = layer.forward_train(x, checkpoint=k)
        kept = tracemalloc.get_traced_memory()[0] - out.nbytes
        tracemalloc.stop()
        bp(None)
        peaks[k] = kept
    row = 4 * 64 * 4                                             # one step of (B, H) float32
    assert peaks[None] > 900 * 6 * row                           # G (4H), hprev, cprev, cnew ...
    assert peaks["sqrt"] < 4 * 30 * 6 * row + 31 * 2 * row       # segments of 30, 31 kept states


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_configuration_and_the_trainer_turn_checkpointing_on(cell):
    from rnncore.models.sequence import SequenceModel
    from rnncore.training.data import Batch
    from rnncore.training.optim import Adam
    from rnncore.training.trainer import Trainer
    rng = np.random.default_rng(8)
    batches = [Batch(rng.integers(0, 11, (30, 6)), rng.integers(0, 11, (30, 6)),
                     rng.integers(1, 31, 6)) for _ in range(3)]

    def train(**kw):
        model = SequenceModel(cell, hidden_size=16, num_layers=2, vocab_size=11, embedding_dim=4,
                              seed=0)
        tr = Trainer(model, Adam(model.params, model.grads, lr=1e-2), seed=0, **kw)
        tr.fit(batches, epochs=2)
        return tr.history["loss"], {k: v.copy() for k, v in model.params.items()}

    h_full, p_full = train()
    h_ck, p_ck = train(bptt=4)
    h_tb, p_tb = train(bptt="sqrt", tbptt=12)
    h_tbf, p_tbf = train(tbptt=12)
    assert h_full == h_ck and h_tb == h_tbf and len(h_full) == 6
    for k in p_full:
        np.testing.assert_array_equal(p_ck[k], p_full[k], err_msg=k)
        np.testing.assert_array_equal(p_tb[k], p_tbf[k], err_msg=k)
    layer = rnncore.GRU(3, 5)
    with rnncore.config_context(bptt_checkpoint="sqrt"):
        _, _, bp = layer.forward_train(np.ones((9, 2, 3), np.float32))
    assert bp._caches[0]["segments"] == [(0, 3), (3, 6), (6, 9)]


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                      (True, TypeError), ("half", TypeError)])
def test_bad_checkpoint_settings_are_refused(bad, err):
    layer = rnncore.RNN(3, 4)
    with pytest.raises(err, match="checkpoint"):
        layer.forward_train(np.ones((5, 2, 3), np.float32), checkpoint=bad)
    with pytest.raises(err, match="checkpoint"):
        rnncore.set_config(bptt_checkpoint=bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_sums_are_exact_and_the_same_in_any_cut(dtype):
    """step_sums_add / step_colsum_add / step_dot_add against float64 sums, and the same bits whatever
    the segments (in backward's order), the rows' layout and the thread count; both orientations
    (m < n: A transposed, m > n: B), sizes across the panel widths (16, 32 floats)."""
    rng = np.random.default_rng(9)
    for Tn, B, m, n in ((7, 3, 5, 9), (5, 4, 33, 17), (9, 2, 64, 16), (3, 1, 40, 1), (4, 5, 1, 31)):
        A = rng.standard_normal((Tn, B, m)).astype(dtype)
        X = rng.standard_normal((Tn, B, n)).astype(dtype)
        C0 = rng.standard_normal((m, n)).astype(dtype)
        c0 = rng.standard_normal(m).astype(dtype)
        exact = C0 + np.einsum("tbm,tbn->mn", A.astype(np.float64), X.astype(np.float64))
        tol = (1e-5 if dtype == np.float32 else 1e-13) * (1 + np.abs(exact))
        for desc in (True, False):
            C = C0.copy()
            K.step_sums_add(C, A, X, desc, 1)
            assert np.all(np.abs(C - exact) <= tol)
            cuts = sorted({0, Tn, *rng.integers(1, Tn, 2)})
            segs = list(zip(cuts[:-1], cuts[1:]))
            for nt in (2, 3):
                Cs = C0.copy()
                for a, b in (reversed(segs) if desc else segs):
                    K.step_sums_add(Cs, A[a:b], X[a:b], desc, nt)
                np.testing.assert_array_equal(Cs, C)
            Abf = np.ascontiguousarray(A.transpose(1, 0, 2)).transpose(1, 0, 2)
            Xbf = np.ascontiguousarray(X.transpose(1, 0, 2)).transpose(1, 0, 2)
            Cb = C0.copy()
            K.step_sums_add(Cb, Abf, Xbf, desc, 2)
            np.testing.assert_array_equal(Cb, C)
            c, cs, d, ds = c0.copy(), c0.copy(), c0[:m].copy(), c0[:m].copy()
            K.step_colsum_add(c, A, desc, 1)
            K.step_dot_add(d, A, A[..., ::-1].copy(), desc, 1)
            for a, b in (reversed(segs) if desc else segs):
                K.step_colsum_add(cs, A[a:b], desc, 2)
                K.step_dot_add(ds, A[a:b], A[a:b, :, ::-1].copy(), desc, 3)
            np.testing.assert_array_equal(cs, c)
            np.testing.assert_array_equal(ds, d)
            np.testing.assert_allclose(c, c0 + A.astype(np.float64).sum((0, 1)), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(d, c0 + (A.astype(np.float64) * A[..., ::-1]).sum((0, 1)),
                                       rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="want C"):
        K.step_sums_add(np.zeros((3, 3), dtype), A, X, True)


def _fma_chain_sums(C0, A, X, desc):
    """C0 + Σ_rows A[row]^T X[row] as one float32 multiply-add chain per element, over the rows in
    backward's order (steps descending or ascending, the batch ascending): float32 products are exact
    in float64, so float32(float64(c) + a * x) is a fused multiply-add (barring a double rounding
    once in ~2^29 operations)."""
    C = C0.astype(np.float32)
    for t in (reversed(range(A.shape[0])) if desc else range(A.shape[0])):
        for b in range(A.shape[1]):
            C = (C.astype(np.float64) + np.outer(A[t, b].astype(np.float64), X[t, b])).astype(np.float32)
    return C


def _step_colsums(c0, A, desc):
    """c0 + each step's Σ_b A[t, b] in float64 (b ascending), rounded to c0's dtype once a step."""
    c = c0.copy()
    for t in (reversed(range(A.shape[0])) if desc else range(A.shape[0])):
        acc = np.zeros(A.shape[2])
        for b in range(A.shape[1]):
            acc = acc + A[t, b]
        c = (c.astype(np.float64) + acc).astype(c0.dtype)
    return c


@pytest.mark.parametrize("n", [1, 7, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 80, 96, 128, 130])
def test_weight_gradient_sums_are_one_fused_chain_per_element_on_every_tile(n):
    """Every element of step_sums_add's C is ONE fused multiply-add chain over the rows in the
    backward scan's order, starting from C, whatever tile, strip (4, 2, 1 vectors), column edge or
    orientation it falls in: widths across the 8-, 16- and 32-float vectors and tiles, tile heights
    6, 4, 2, 1 (m = 1 .. 13), narrow B (C^T computed) and narrow A. And step_colsum_add's step sums,
    with the second gradient (b_hh's shared columns) fed from the same pass."""
    rng = np.random.default_rng(n)
    for m in (1, 2, 3, 5, 6, 7, 13, 40, 53, 97):     # 53, 97: bands of 48 rows of C and a part
        T, B = 3, 4
        A = rng.standard_normal((T, B, m)).astype(np.float32)
        X = rng.standard_normal((T, B, n)).astype(np.float32)
        C0 = rng.standard_normal((m, n)).astype(np.float32)
        for desc in (True, False):
            for nt in (1, 2):
                C = C0.copy()
                K.step_sums_add(C, A, X, desc, nt)
                np.testing.assert_array_equal(C, _fma_chain_sums(C0, A, X, desc))
                Ct = C0.T.copy()
                K.step_sums_add(Ct, X, A, desc, nt)
                np.testing.assert_array_equal(Ct, C.T)
    # large enough for two threads: each its own columns (C wider than tall), or rows
    for mm, nn in ((40, n + 800), (n + 200, 40)):
        A = rng.standard_normal((200, 5, mm)).astype(np.float32)
        X = rng.standard_normal((200, 5, nn)).astype(np.float32)
        C0 = rng.standard_normal((mm, nn)).astype(np.float32)
        C = C0.copy()
        K.step_sums_add(C, A, X, True, 2)
        np.testing.assert_array_equal(C, _fma_chain_sums(C0, A, X, True))
    c0, c2 = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n // 2).astype(np.float32)
    for B in (3, 1):                        # 1: one row a step (its own one-pass path)
        A = rng.standard_normal((5, B, n)).astype(np.float32)
        X = rng.standard_normal((5, B, n)).astype(np.float32)
        c, d, e = c0.copy(), c2.copy(), c0.copy()
        K.step_colsum_add(c, A, True, 2, d)
        np.testing.assert_array_equal(c, _step_colsums(c0, A, True))
        np.testing.assert_array_equal(d, _step_colsums(c2, A[..., :n // 2], True))
        K.step_dot_add(e, A, X, False, 2)
        np.testing.assert_array_equal(e, _step_colsums(c0, (A.astype(np.float64) * X)[::-1], True))
