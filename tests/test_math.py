"""The gate kernels' own vectorised sigmoid and tanh (rnncore/_rc_math.h) against numpy's, in float32
and float64, over the whole range and at the edges: 0, -0, tiny and subnormal inputs, the points where
exp would overflow, +-inf and NaN (which must propagate)."""
import numpy as np
import pytest

from rnncore import _kernels as K

# max relative error (and absolute error allowed where the true value underflows)
BOUNDS = {np.float32: (4e-7, 1e-37), np.float64: (2e-15, 1e-300)}


def inputs(dtype):
    dense = np.linspace(-60, 60, 200_001)
    near0 = np.geomspace(1e-30, 1, 2001)
    edges = [0.0, 0.624999, 0.625, 0.625001, 87.5, 88.0, 88.8, 89.0, 700.0, 708.0, 709.0, 709.8, 710.0,
             800.0, 1e300, np.finfo(dtype).max]
    tiny = [np.finfo(dtype).tiny, np.finfo(dtype).tiny / 8, np.finfo(dtype).smallest_subnormal]
    x = np.concatenate([dense, near0, -near0, edges, np.negative(edges), tiny, np.negative(tiny)])
    with np.errstate(over="ignore"):   # 1e300 and float64's max become inf in float32
        return x.astype(dtype)


def want(name, x):
    x = x.astype(np.longdouble)
    with np.errstate(over="ignore"):
        return np.tanh(x) if name == "tanh" else 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_activation_accuracy(name, dtype):
    x = inputs(dtype)
    got = x.copy()
    K.activation(got, name)
    exact = want(name, x)
    rel, tiny = BOUNDS[dtype]
    err = np.abs(got.astype(np.longdouble) - exact)
    bad = err > np.maximum(rel * np.abs(exact), tiny)
    assert not bad.any(), (f"{name} {np.dtype(dtype).name}: {bad.sum()} values out of bounds, e.g. "
                           f"x={x[bad][:3]} got {got[bad][:3]} want {exact[bad][:3].astype(np.float64)}")
    assert np.all(np.abs(got) <= 1)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_activation_infinities_and_nan(name, dtype):
    x = np.array([np.inf, -np.inf, np.nan, -np.nan, 1.0, np.nan], dtype)
    K.activation(x, name)
    lo = -1 if name == "tanh" else 0
    assert x[0] == 1 and abs(x[1] - lo) <= BOUNDS[dtype][1]
    assert np.isnan(x[2]) and np.isnan(x[3]) and np.isnan(x[5]) and np.isfinite(x[4])


def test_activation_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="sigmoid' or 'tanh', got 'relu'"):
        K.activation(np.zeros(3), "relu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_gemm_one_pass_of_two_products_has_the_bits_of_two_passes(dtype):
    """rnncore's own step GEMM computes bias + x W_ih^T + h W_hh^T in one pass (C stored once); it must
    sum in the same order as the projection followed by an accumulating recurrent product: same bits,
    for every tile height (6, 4, 2, 1 rows, an odd last row), partial last panels and a bias or none.
    And both agree with numpy."""
    from rnncore import _kernels as K
    rng = np.random.default_rng(5)
    nr = K.pack_t(np.zeros((1, 1), dtype)).shape[1]
    tol = 2e-5 if dtype == np.float32 else 1e-13
    for M in (1, 2, 3, 5, 6, 7, 11, 13, 32):
        for N in (nr, 3 * nr + 5, 4 * nr, 9 * nr - 1):
            for K1, K2 in ((7, 13), (16, 1), (1, 30)):
                A, A2 = rng.standard_normal((M, K1)).astype(dtype), rng.standard_normal((M, K2)).astype(dtype)
                W, W2 = rng.standard_normal((N, K1)).astype(dtype), rng.standard_normal((N, K2)).astype(dtype)
                bias = rng.standard_normal(N).astype(dtype)
                for b in (bias, None):
                    one, two = np.full((M, N), np.nan, dtype), np.full((M, N), np.nan, dtype)
                    K.packed_matmul(one, A, K.pack_t(W), b, A2, K.pack_t(W2))
                    K.packed_matmul(two, A, K.pack_t(W), b, A2, K.pack_t(W2), two_pass=True)
                    where = f"M={M} N={N} K={K1}+{K2} bias={b is not None} {np.dtype(dtype).name}"
                    assert np.array_equal(one, two), where
                    want = A.astype(np.float64) @ W.T.astype(np.float64) + A2.astype(np.float64) @ W2.T
                    if b is not None:
                        want = want + b
                    np.testing.assert_allclose(one, want, rtol=tol, atol=tol * np.abs(want).max(), err_msg=where)


def test_small_gemm_rejects_operands_that_do_not_fit():
    from rnncore import _kernels as K
    f = np.float32
    C, A, Wp = np.zeros((3, 20), f), np.ones((3, 4), f), K.pack_t(np.ones((20, 4), f))
    with pytest.raises(ValueError, match="Wp pack_t of a"):
        K.packed_matmul(C, A, K.pack_t(np.ones((20, 5), f)))
    with pytest.raises(ValueError, match="A2 and W2p go together"):
        K.packed_matmul(C, A, Wp, None, np.ones((3, 2), f))
    with pytest.raises(ValueError, match="bias must have 20"):
        K.packed_matmul(C, A, Wp, np.ones(19, f))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_gradient_sums_are_exact_to_rounding_and_the_same_on_any_thread_count(dtype):
    """colsum_add (the bias gradients: dL/da summed over all T*B rows) sums in double, so in float32 it
    is within a rounding of the exact sum (numpy's float32 sum along axis 0 adds row after row in
    float32 and is not), and gives the same bits on 1, 2 and 3 threads; a strided view of rows works."""
    from rnncore import _kernels as K
    rng = np.random.default_rng(11)
    for m, n in ((1, 1), (7, 5), (255, 3), (257, 130), (6400, 96)):
        A = rng.standard_normal((m, n + 4)).astype(dtype)[:, 2:n + 2]      # rows 4 values apart
        start = rng.standard_normal(n).astype(dtype)
        exact = start.astype(np.float64) + A.astype(np.float64).sum(axis=0)
        outs = []
        for nt in (1, 2, 3):
            out = start.copy()
            K.colsum_add(out, A, nt)
            outs.append(out)
        assert all(np.array_equal(outs[0], o) for o in outs[1:]), (m, n)
        # float32: the double sum (exact to ~1e-16) rounded once, then added to start (one more
        # rounding); float64: a double sum in blocks of 256 rows, far inside 4 eps * sum|a|
        sums, eps = A.astype(np.float64).sum(axis=0), np.finfo(dtype).eps
        slack = (4 if dtype == np.float64 else 1e-3) * eps * np.abs(A.astype(np.float64)).sum(axis=0)
        bound = 2 * eps * (np.abs(sums) + np.abs(start)) + slack
        assert np.all(np.abs(outs[0] - exact) <= bound), (m, n)


def test_bias_gradient_sums_reject_a_wrong_output_or_strided_columns():
    from rnncore import _kernels as K
    A = np.ones((10, 6), np.float32)
    with pytest.raises(ValueError, match="out must have 6 values"):
        K.colsum_add(np.zeros(5, np.float32), A)
    with pytest.raises(ValueError, match="unit-stride"):
        K.colsum_add(np.zeros(3, np.float32), A[:, ::2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packing_on_several_threads_gives_the_same_panels(dtype):
    from rnncore import _kernels as K
    rng = np.random.default_rng(2)
    nr = K.pack_t(np.zeros((1, 1), dtype)).shape[1]
    # 8 x 8 blocks (transposed in registers) and the columns and rows past them
    for N, Kd in ((3, 2), (8, 8), (13, 9), (nr + 9, 15), (nr, 300), (5 * nr + 3, 257), (40 * nr, 64)):
        W = rng.standard_normal((N, Kd)).astype(dtype)
        one = K.pack_t(W, 1)
        # panel p, row k holds W[p*nr + c, k] for c < nr, zero past N
        padded = np.zeros((-(-N // nr) * nr, Kd), dtype)
        padded[:N] = W
        want = padded.reshape(-1, nr, Kd).transpose(0, 2, 1).reshape(-1, nr)
        assert np.array_equal(one, want), (N, Kd)
        for nt in (2, 3):
            assert np.array_equal(K.pack_t(W, nt), one) and np.array_equal(K.pack_n(W.T.copy(), nt), one)
