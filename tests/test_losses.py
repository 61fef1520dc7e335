"""Losses: values against the formulas of the lecture notes, padding, stability, and gradients by
float64 central differences."""
import math

import numpy as np
import pytest
import torch

from rnncore.training.losses import length_mask, mse, softmax_cross_entropy


def test_cross_entropy_one_step_by_hand():
    # logits (1, 1, 3) = [1, 2, 3], target 2:  L = -log(e^3 / (e^1 + e^2 + e^3))
    logits = np.array([[[1.0, 2.0, 3.0]]])
    loss, d = softmax_cross_entropy(logits, np.array([[2]]))
    Z = math.exp(1) + math.exp(2) + math.exp(3)
    assert loss == pytest.approx(-math.log(math.exp(3) / Z), rel=1e-12)
    # ∂L/∂o = ŷ - onehot(y)
    expected = np.array([math.exp(1) / Z, math.exp(2) / Z, math.exp(3) / Z - 1])
    np.testing.assert_allclose(d[0, 0], expected, rtol=1e-12)


def test_cross_entropy_is_summed_over_time_and_mean_divides_by_count(rng):
    T, B, V = 4, 3, 5
    logits = rng.standard_normal((T, B, V))
    y = rng.integers(0, V, (T, B))
    per_step = [[-math.log(np.exp(logits[t, b, y[t, b]]) / np.exp(logits[t, b]).sum()) for b in range(B)]
                for t in range(T)]
    total, d_sum = softmax_cross_entropy(logits, y, reduction="sum")
    assert total == pytest.approx(np.sum(per_step), rel=1e-12)            # L = Σ_t L^(t)
    mean, d_mean = softmax_cross_entropy(logits, y, reduction="mean")
    assert mean == pytest.approx(np.sum(per_step) / (T * B), rel=1e-12)
    np.testing.assert_allclose(d_mean, d_sum / (T * B), rtol=1e-12)


def test_cross_entropy_matches_torch(rng):
    logits = rng.standard_normal((6, 4, 7))
    y = rng.integers(0, 7, (6, 4))
    lt = torch.tensor(logits.reshape(-1, 7), requires_grad=True)
    ref = torch.nn.functional.cross_entropy(lt, torch.tensor(y.reshape(-1)), reduction="sum")
    ref.backward()
    loss, d = softmax_cross_entropy(logits, y)
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(d.reshape(-1, 7), lt.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_padding_contributes_nothing(rng):
    T, B, V = 5, 3, 4
    lengths = np.array([5, 2, 3])
    logits = rng.standard_normal((T, B, V))
    y = rng.integers(0, V, (T, B))
    loss, d = softmax_cross_entropy(logits, y, lengths=lengths)
    mask = length_mask(lengths, T, B)
    # change everything past the lengths, including ids out of range: nothing changes
    logits2, y2 = logits.copy(), y.copy()
    logits2[~mask] = 1e3 * rng.standard_normal((int((~mask).sum()), V))
    y2[~mask] = 99
    loss2, d2 = softmax_cross_entropy(logits2, y2, lengths=lengths)
    assert loss2 == loss
    np.testing.assert_array_equal(d2[mask], d[mask])
    assert not d[~mask].any() and not d2[~mask].any()
    # the sum is over the valid positions only; the mean divides by their number
    valid_sum = sum(softmax_cross_entropy(logits[:n, b:b + 1], y[:n, b:b + 1])[0] for b, n in enumerate(lengths))
    assert loss == pytest.approx(valid_sum, rel=1e-12)
    mean, _ = softmax_cross_entropy(logits, y, lengths=lengths, reduction="mean")
    assert mean == pytest.approx(valid_sum / lengths.sum(), rel=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-5e4, 5e4, 0.0]], dtype=np.float32)
    loss, d = softmax_cross_entropy(logits, np.array([0, 0]))
    assert np.isfinite(loss) and np.isfinite(d).all()
    assert loss == pytest.approx(1e5, rel=1e-6)  # second row: -log softmax = 5e4 - (-5e4)
    assert d.dtype == np.float32


def test_many_to_one_with_mask(rng):
    logits = rng.standard_normal((4, 3))
    y = np.array([0, 2, 1, 1])
    mask = np.array([True, False, True, False])
    loss, d = softmax_cross_entropy(logits, y, mask=mask)
    full = [softmax_cross_entropy(logits[i:i + 1], y[i:i + 1])[0] for i in range(4)]
    assert loss == pytest.approx(full[0] + full[2], rel=1e-12)
    assert not d[1].any() and not d[3].any()


def _central(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        fp = f()
        x[idx] = old - eps
        fm = f()
        x[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_cross_entropy_gradient_central_differences(rng, reduction):
    logits = rng.standard_normal((4, 3, 5))
    y = rng.integers(0, 5, (4, 3))
    lengths = np.array([4, 1, 3])
    _, d = softmax_cross_entropy(logits, y, lengths=lengths, reduction=reduction)
    num = _central(lambda: softmax_cross_entropy(logits, y, lengths=lengths, reduction=reduction)[0], logits)
    np.testing.assert_allclose(d, num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mse_gradient_central_differences(rng, reduction):
    pred = rng.standard_normal((5, 2, 3))
    target = rng.standard_normal((5, 2, 3))
    lengths = np.array([2, 5])
    _, d = mse(pred, target, lengths=lengths, reduction=reduction)
    num = _central(lambda: mse(pred, target, lengths=lengths, reduction=reduction)[0], pred)
    np.testing.assert_allclose(d, num, rtol=1e-6, atol=1e-9)


def test_mse_by_hand():
    pred = np.array([[1.0, 2.0], [3.0, 5.0]])
    target = np.array([[0.0, 2.0], [3.0, 1.0]])
    # squared errors 1, 0, 0, 16
    loss, d = mse(pred, target, reduction="sum")
    assert loss == 17.0
    np.testing.assert_array_equal(d, [[2.0, 0.0], [0.0, 8.0]])
    loss, d = mse(pred, target)  # mean over the 4 elements, as torch.nn.MSELoss
    assert loss == 17.0 / 4
    np.testing.assert_array_equal(d, [[0.5, 0.0], [0.0, 2.0]])
    # padding: with lengths the second step of the second sequence is ignored (time-major (T=2, B=1, O=2))
    loss, _ = mse(pred[:, None, :], target[:, None, :], lengths=np.array([1]), reduction="sum")
    assert loss == 1.0


@pytest.mark.parametrize("call, exc, words", [
    (lambda: softmax_cross_entropy(np.zeros((2, 3, 4)), np.zeros((2, 2), int)), ValueError, "expected shape (2, 3)"),
    (lambda: softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 4])), ValueError, "class ids in [0, 4)"),
    (lambda: softmax_cross_entropy(np.zeros((2, 4)), np.array([0.0, 1.0])), TypeError, "integer class ids"),
    (lambda: softmax_cross_entropy(np.zeros((2, 1, 4)), np.zeros((2, 1), int), lengths=[3]), ValueError,
     "lengths must be between 0 and T=2, got values from 3 to 3"),
    (lambda: softmax_cross_entropy(np.zeros((2, 4)), np.zeros(2, int), reduction="avg"), ValueError, "reduction"),
    (lambda: mse(np.zeros((2, 3)), np.zeros((3, 2))), ValueError, "expected shape (2, 3)"),
])
def test_bad_arguments_say_what_was_expected(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    assert words in str(e.value)


# ------------------------------------------------------------------------------ the compiled cross-entropy
# rnncore._kernels.cross_entropy: one pass per row (rnncore/_model.pxi), rows over the team.
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cross_entropy_with_padding_matches_torch(rng, dtype, reduction):
    T, B, V = 7, 9, 99                     # V = 99: 16-value lanes and a tail of 3
    logits = (rng.standard_normal((T, B, V)) * 4).astype(dtype)
    y = rng.integers(0, V, (T, B))
    lengths = rng.integers(1, T + 1, B)
    valid = length_mask(lengths, T, B)
    lt = torch.tensor(logits[valid], requires_grad=True)
    ref = torch.nn.functional.cross_entropy(lt, torch.tensor(y[valid]), reduction=reduction)
    ref.backward()
    loss, d = softmax_cross_entropy(logits, y, lengths=lengths, reduction=reduction)
    assert d.dtype == dtype and d.shape == logits.shape
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert loss == pytest.approx(ref.item(), rel=tol)
    np.testing.assert_allclose(d[valid], lt.grad.numpy(), rtol=10 * tol, atol=tol / V)
    assert not d[~valid].any()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cross_entropy_bits_depend_neither_on_threads_nor_on_other_rows(rng, dtype):
    import rnncore
    T, B, V = 40, 21, 99                   # 840 rows x 99: above the size where the team runs
    logits = (rng.standard_normal((T, B, V)) * 3).astype(dtype)
    y = rng.integers(0, V, (T, B))
    runs = []
    for n in (1, 2, 3):
        with rnncore.threads(n):
            runs.append(softmax_cross_entropy(logits, y, reduction="sum"))
    for loss, d in runs[1:]:
        assert loss == runs[0][0]
        np.testing.assert_array_equal(d, runs[0][1])
    # a few sequences alone: their rows' gradients have the same bits
    cols = [3, 4, 17]
    _, d_sub = softmax_cross_entropy(np.ascontiguousarray(logits[:, cols]), y[:, cols], reduction="sum")
    np.testing.assert_array_equal(d_sub, runs[0][1][:, cols])


def test_cross_entropy_of_nan_or_infinite_logits():
    z = np.zeros((2, 20), np.float32)
    z[0, 7] = np.nan                        # not the first value: the max skips it, exp does not
    z[1, 3] = -np.inf                       # a class ruled out: probability 0
    loss, d = softmax_cross_entropy(z[:1], np.array([0]))
    assert math.isnan(loss) and np.isnan(d).all()
    loss, d = softmax_cross_entropy(z[1:], np.array([0]))
    assert loss == pytest.approx(math.log(19), rel=1e-6)
    assert 0 <= d[0, 3] < 1e-30
