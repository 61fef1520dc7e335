"""Batch invariance: a sequence's outputs, final state and input gradients (dx, dh0, dc0) are
bit-identical whatever else is in its batch: the batch's size, the sequence's position in it, the
other sequences' lengths; for every cell and variant, dtype, layout and thread count (on rnncore's own
step GEMM, the default path). Parameter gradients, summed over the batch, are exempt.

The other sequences are fresh random ones each time, and the subset's sizes cross the kernels' paths:
one row (the matrix-vector form), fewer rows than a register tile, uneven thread blocks, and batches
of 16 or more (the input projection inside the time loop instead of before it)."""
import numpy as np
import pytest

import rnncore
from conftest import VARIANTS, variant_batch

T = 6


def batch(layer, B, rng, dtype):
    return variant_batch(layer, B, T, rng, dtype)


def run(layer, x, hx, lengths, d_out, d_h):
    """Output, final state and every input gradient of one forward_train/backprop, per sequence."""
    layer.zero_grad()
    out, h_n, bp = layer.forward_train(x, hx, lengths=lengths)
    dx, dhx = bp(d_out, d_h)
    bf = layer.batch_first
    per_seq = lambda a: a if bf else a.swapaxes(0, 1)             # (B, T, .) either way
    states = lambda s: s if isinstance(s, tuple) else (s,)
    return {"out": per_seq(out), "dx": per_seq(dx),
            **{f"h_n{i}": s.swapaxes(0, 1) for i, s in enumerate(states(h_n))},
            **{f"dhx{i}": s.swapaxes(0, 1) for i, s in enumerate(states(dhx))}}


def place(full, part, idx, bf):
    """full (batch) arrays with the subset's sequences put at positions idx."""
    x, hx, lengths, d_out, d_h = full
    sx, shx, slen, sd_out, sd_h = part
    x, d_out = x.copy(), d_out.copy()
    if bf:
        x[idx], d_out[idx] = sx, sd_out
    else:
        x[:, idx], d_out[:, idx] = sx, sd_out
    def st(a, b):
        if isinstance(a, tuple):
            return tuple(st(u, v) for u, v in zip(a, b))
        a = a.copy()
        a[:, idx] = b
        return a
    lengths = lengths.copy()
    lengths[idx] = slen
    return x, st(hx, shx), lengths, d_out, st(d_h, sd_h)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("stack", [(1, False), (2, True)], ids=["1-layer", "2-layer-bi"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_sequence_gets_the_same_bits_in_any_batch(variant, dtype, batch_first, stack, threads):
    rng = np.random.default_rng(7)
    layer = VARIANTS[variant](num_layers=stack[0], bidirectional=stack[1], batch_first=batch_first,
                              dtype=dtype, seed=2)
    part = batch(layer, 3, rng, dtype)          # the 3 sequences whose results are compared
    with rnncore.threads(threads), rnncore.config_context(small_work_flops=0):
        want = run(layer, *part)
        for B, idx in [(3, [2, 0, 1]), (4, [3, 1, 0]), (7, [0, 6, 3]), (20, [19, 4, 11]),
                       (37, [5, 36, 17])]:
            full = place(batch(layer, B, rng, dtype), part, idx, batch_first)
            got = run(layer, *full)
            for name, w in want.items():
                np.testing.assert_array_equal(got[name][idx], w, err_msg=f"{name}, batch {B} at {idx}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("head", ["many_to_one", "many_to_many"])
def test_a_models_prediction_does_not_depend_on_its_batch(head, dtype):
    """The head's product too (a BLAS GEMM rounded one row alone differently from the same row among
    others: scikit-learn's check_methods_subset_invariance caught it on predict_proba)."""
    model = rnncore.SequenceModel("gru", hidden_size=33, input_size=5, output_size=7, head=head,
                                  dtype=dtype, seed=0)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((9, 40, 5)).astype(dtype)
    full = model.predict(X)
    for idx in ([0], [39], [3, 17, 5], list(range(1, 40, 2))):
        part = model.predict(X[:, idx])
        np.testing.assert_array_equal(part, full[idx] if head == "many_to_one" else full[:, idx])
