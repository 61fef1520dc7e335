"""Optimizers against steps worked out by hand from their formulas, clipping, schedules, state."""
import math

import numpy as np
import pytest
import torch

from rnncore.training.optim import (SGD, Adam, Constant, Cosine, RMSprop, StepDecay, clip_grad_norm, clip_grad_value,
                           global_norm, make_optimizer, make_schedule)


def one_param(value, grad, dtype=np.float64):
    return {"w": np.array([value], dtype=dtype)}, {"w": np.array([grad], dtype=dtype)}


def test_sgd_by_hand():
    # lr 0.1, no momentum: p = 1 - 0.1 * 0.5 = 0.95
    p, g = one_param(1.0, 0.5)
    SGD(p, g, lr=0.1).step()
    assert p["w"][0] == pytest.approx(0.95, abs=1e-15)


def test_sgd_momentum_by_hand():
    # lr 0.1, μ 0.9, g = 0.5 twice:
    #   step 1: v = 0.5;              p = 1 - 0.1 * 0.5  = 0.95
    #   step 2: v = 0.9*0.5 + 0.5 = 0.95;  p = 0.95 - 0.1 * 0.95 = 0.855
    p, g = one_param(1.0, 0.5)
    opt = SGD(p, g, lr=0.1, momentum=0.9)
    opt.step()
    assert p["w"][0] == pytest.approx(0.95, abs=1e-15)
    opt.step()
    assert p["w"][0] == pytest.approx(0.855, abs=1e-15)


def test_sgd_nesterov_by_hand():
    # step 1: v = 0.5; p = 1 - 0.1 * (g + μ v) = 1 - 0.1 * (0.5 + 0.45) = 0.905
    p, g = one_param(1.0, 0.5)
    SGD(p, g, lr=0.1, momentum=0.9, nesterov=True).step()
    assert p["w"][0] == pytest.approx(0.905, abs=1e-15)


def test_weight_decay_by_hand():
    # g = 0, wd 0.1: g' = 0.1 * 1 = 0.1; p = 1 - 0.1 * 0.1 = 0.99
    p, g = one_param(1.0, 0.0)
    SGD(p, g, lr=0.1, weight_decay=0.1).step()
    assert p["w"][0] == pytest.approx(0.99, abs=1e-15)


def test_rmsprop_by_hand():
    # lr 0.01, α 0.99, g = 0.5 twice:
    #   step 1: s = 0.01 * 0.25 = 0.0025;  √s = 0.05;  p = 1 - 0.01 * 0.5 / 0.05 = 0.9
    #   step 2: s = 0.99 * 0.0025 + 0.01 * 0.25 = 0.004975;  p = 0.9 - 0.01 * 0.5 / √0.004975
    p, g = one_param(1.0, 0.5)
    opt = RMSprop(p, g, lr=0.01, alpha=0.99, eps=1e-8)
    opt.step()
    assert p["w"][0] == pytest.approx(0.9, abs=1e-7)  # ε = 1e-8 next to √s = 0.05 moves it by 2e-8
    opt.step()
    assert p["w"][0] == pytest.approx(0.9 - 0.005 / math.sqrt(0.004975), abs=1e-7)
    assert p["w"][0] == pytest.approx(0.829112, abs=1e-6)


def test_adam_by_hand():
    # lr 1e-3, β = (0.9, 0.999).
    # step 1, g = 0.5: m = 0.05, v = 0.00025, m̂ = 0.5, v̂ = 0.25: p = 1 - 1e-3 * 0.5 / 0.5 = 0.999
    #   (Adam's first step is lr * sign(g) whatever |g|)
    # step 2, g = -1: m = 0.045 - 0.1 = -0.055, v = 0.999 * 0.00025 + 0.001 = 0.00124975,
    #   m̂ = -0.055 / (1 - 0.81) = -0.289474, v̂ = 0.00124975 / (1 - 0.998001) = 0.625188,
    #   p = 0.999 + 1e-3 * 0.289474 / 0.790688 = 0.9993661035
    p, g = one_param(1.0, 0.5)
    opt = Adam(p, g, lr=1e-3)
    opt.step()
    assert p["w"][0] == pytest.approx(0.999, abs=1e-10)  # ε = 1e-8 next to √v̂ = 0.5: 2e-11
    g["w"][0] = -1.0
    opt.step()
    m_hat = -0.055 / (1 - 0.9 ** 2)
    v_hat = (0.999 * 0.00025 + 0.001) / (1 - 0.999 ** 2)
    p1 = 1 - 1e-3 * 0.5 / (0.5 + 1e-8)
    assert p["w"][0] == pytest.approx(p1 - 1e-3 * m_hat / (math.sqrt(v_hat) + 1e-8), abs=1e-14)
    assert p["w"][0] == pytest.approx(0.9993661035, abs=1e-9)


@pytest.mark.parametrize("name", ["sgd", "sgd_nesterov", "rmsprop", "adam"])
def test_optimizers_match_torch_over_several_steps(rng, name):
    shapes = {"a": (3, 4), "b": (5,)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    grads = {k: np.zeros(s) for k, s in shapes.items()}
    tparams = [torch.tensor(params[k].copy(), requires_grad=True) for k in shapes]
    ours, theirs = {
        "sgd": (lambda: SGD(params, grads, lr=0.05, momentum=0.9, weight_decay=0.01),
                lambda: torch.optim.SGD(tparams, lr=0.05, momentum=0.9, weight_decay=0.01)),
        "sgd_nesterov": (lambda: SGD(params, grads, lr=0.05, momentum=0.8, nesterov=True),
                         lambda: torch.optim.SGD(tparams, lr=0.05, momentum=0.8, nesterov=True)),
        "rmsprop": (lambda: RMSprop(params, grads, lr=0.01, alpha=0.9, eps=1e-6),
                    lambda: torch.optim.RMSprop(tparams, lr=0.01, alpha=0.9, eps=1e-6)),
        "adam": (lambda: Adam(params, grads, lr=0.01, betas=(0.8, 0.99), eps=1e-7),
                 lambda: torch.optim.Adam(tparams, lr=0.01, betas=(0.8, 0.99), eps=1e-7)),
    }[name]
    opt, topt = ours(), theirs()
    for _ in range(5):
        for k, tp in zip(shapes, tparams):
            grads[k][...] = rng.standard_normal(shapes[k])
            tp.grad = torch.tensor(grads[k].copy())
        opt.step()
        topt.step()
    for k, tp in zip(shapes, tparams):
        np.testing.assert_allclose(params[k], tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_float32_params_stay_float32(rng):
    p, g = one_param(1.0, 0.5, dtype=np.float32)
    for cls in (SGD, RMSprop, Adam):
        cls(p, g, lr=0.1).step()
        assert p["w"].dtype == np.float32


def test_clip_by_global_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert global_norm(grads) == 5.0
    norm = clip_grad_norm(grads, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(grads["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(grads["b"], [[0.8]], rtol=1e-6)
    # under the threshold: untouched
    small = {"a": np.array([0.3, 0.4])}
    assert clip_grad_norm(small, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(small["a"], [0.3, 0.4])


def test_clip_by_value():
    grads = {"a": np.array([3.0, -0.2, -7.0])}
    clip_grad_value(grads, 0.5)
    np.testing.assert_array_equal(grads["a"], [0.5, -0.2, -0.5])


def test_clipping_happens_in_the_optimizer_step():
    # SGD lr 1, gradient (3, 4) of norm 5 clipped to norm 1: the parameters move by (0.6, 0.8)
    params = {"w": np.zeros(2)}
    grads = {"w": np.array([3.0, 4.0])}
    opt = SGD(params, grads, lr=1.0, clip_norm=1.0)
    opt.step()
    np.testing.assert_allclose(params["w"], [-0.6, -0.8], rtol=1e-6)
    assert opt.last_grad_norm == 5.0
    # by value first, then by norm: (3, 4) -> (1, 1) -> norm √2 under 10: step (1, 1)
    params["w"][...] = 0
    grads["w"][...] = [3.0, 4.0]
    SGD(params, grads, lr=1.0, clip_value=1.0, clip_norm=10.0).step()
    np.testing.assert_allclose(params["w"], [-1.0, -1.0])


def test_schedules():
    s = StepDecay(0.1, step_size=10, gamma=0.5)
    assert [s(0), s(9), s(10), s(25)] == [0.1, 0.1, 0.05, 0.025]
    c = Cosine(1.0, total_steps=100, min_lr=0.0)
    assert c(0) == 1.0
    assert c(50) == pytest.approx(0.5)            # (1 + cos(π/2)) / 2
    assert c(100) == pytest.approx(0.0, abs=1e-15)
    assert c(200) == pytest.approx(0.0, abs=1e-15)  # stays at min_lr after the end
    w = Cosine(1.0, total_steps=110, min_lr=0.1, warmup_steps=10)
    assert [w(0), w(4), w(9)] == pytest.approx([0.1, 0.5, 1.0])
    assert w(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert Constant(0.3)(12345) == 0.3
    for sched in (s, c, w, Constant(0.3)):
        assert make_schedule(sched.config()).config() == sched.config()


def test_schedule_drives_the_learning_rate():
    p, g = one_param(0.0, 1.0)
    opt = SGD(p, g, lr=StepDecay(1.0, step_size=1, gamma=0.5))
    for _ in range(3):
        opt.step()
    assert p["w"][0] == pytest.approx(-(1 + 0.5 + 0.25))


@pytest.mark.parametrize("cls, kw", [(SGD, {"momentum": 0.9}), (RMSprop, {}), (Adam, {})])
def test_state_dict_round_trip_continues_identically(rng, cls, kw):
    def run(opt, params, grads, gs):
        for gval in gs:
            grads["w"][...] = gval
            opt.step()

    gs = rng.standard_normal((6, 3))
    p1, g1 = {"w": np.ones(3)}, {"w": np.zeros(3)}
    o1 = cls(p1, g1, lr=0.1, **kw)
    run(o1, p1, g1, gs)
    p2, g2 = {"w": np.ones(3)}, {"w": np.zeros(3)}
    o2 = cls(p2, g2, lr=0.1, **kw)
    run(o2, p2, g2, gs[:3])
    state = o2.state_dict()
    p3, g3 = {"w": p2["w"].copy()}, {"w": np.zeros(3)}
    o3 = make_optimizer(p3, g3, o2.config())
    o3.load_state_dict(state)
    run(o3, p3, g3, gs[3:])
    np.testing.assert_array_equal(p3["w"], p1["w"])


@pytest.mark.parametrize("call, words", [
    (lambda: SGD(*one_param(1.0, 1.0), lr=-1.0), "lr: expected a positive finite number"),
    (lambda: SGD(*one_param(1.0, 1.0), lr=0.1, momentum=1.5), "momentum"),
    (lambda: Adam(*one_param(1.0, 1.0), lr=0.1, betas=(0.9, 1.0)), "betas"),
    (lambda: SGD({"w": np.zeros(2)}, {"w": np.zeros(3)}, lr=0.1), "expected shape (2,)"),
    (lambda: SGD(*one_param(1.0, 1.0), lr=0.1, clip_norm=0), "clip_norm"),
    (lambda: Cosine(0.1, total_steps=0), "total_steps"),
])
def test_bad_hyperparameters(call, words):
    with pytest.raises(ValueError) as e:
        call()
    assert words in str(e.value)


# ------------------------------------------------------------------------------ the fused step
# Optimizer.step runs two compiled passes over all parameters (rnncore/_optim.pxi). Against torch.optim
# (with torch's own clip_grad_value_ / clip_grad_norm_ before it, as a PyTorch loop does), on a
# parameter set that crosses the kernels' paths: arrays of one value, of a few, and of more than one
# chunk (16,384 values), and more than 65,536 values in all (the team runs).
FUSED_SHAPES = {"w_big": (70, 1000), "w": (13, 7), "b": (5,), "one": (1,)}
FUSED_CONFIGS = {
    "sgd": (lambda p, g, **kw: SGD(p, g, lr=0.05, **kw), lambda t, **kw: torch.optim.SGD(t, lr=0.05, **kw)),
    "sgd_momentum": (lambda p, g, **kw: SGD(p, g, lr=0.05, momentum=0.9, **kw),
                     lambda t, **kw: torch.optim.SGD(t, lr=0.05, momentum=0.9, **kw)),
    "sgd_nesterov": (lambda p, g, **kw: SGD(p, g, lr=0.05, momentum=0.8, nesterov=True, **kw),
                     lambda t, **kw: torch.optim.SGD(t, lr=0.05, momentum=0.8, nesterov=True, **kw)),
    "rmsprop": (lambda p, g, **kw: RMSprop(p, g, lr=0.01, alpha=0.9, eps=1e-6, **kw),
                lambda t, **kw: torch.optim.RMSprop(t, lr=0.01, alpha=0.9, eps=1e-6, **kw)),
    "adam": (lambda p, g, **kw: Adam(p, g, lr=0.01, betas=(0.8, 0.99), eps=1e-7, **kw),
             lambda t, **kw: torch.optim.Adam(t, lr=0.01, betas=(0.8, 0.99), eps=1e-7, **kw)),
    "adam_low_beta1": (lambda p, g, **kw: Adam(p, g, lr=0.01, betas=(0.3, 0.9), **kw),   # torch's other lerp form
                       lambda t, **kw: torch.optim.Adam(t, lr=0.01, betas=(0.3, 0.9), **kw)),
}
# The gradients' norm is about 80, 340, 610, 870 over the four steps (up to 510 after clamping at 2):
# the first step is under the threshold, the others above it, one of them less than twice above.
CLIPPING = {"none": {}, "norm": {"clip_norm": 250.0}, "value": {"clip_value": 2.0},
            "value_then_norm": {"clip_value": 2.0, "clip_norm": 250.0}}


def fused_problem(rng, dtype, shapes=FUSED_SHAPES):
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = {k: np.zeros(s, dtype) for k, s in shapes.items()}
    return params, grads


def torch_step(topt, tparams, clip):
    if "clip_value" in clip:
        torch.nn.utils.clip_grad_value_(tparams, clip["clip_value"])
    norm = None
    if "clip_norm" in clip:
        norm = float(torch.nn.utils.clip_grad_norm_(tparams, clip["clip_norm"]))
    topt.step()
    return norm


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("clip", list(CLIPPING))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(FUSED_CONFIGS))
def test_fused_step_matches_torch(rng, name, dtype, clip, weight_decay):
    ours, theirs = FUSED_CONFIGS[name]
    clip = CLIPPING[clip]
    params, grads = fused_problem(rng, dtype)
    # With weight decay, parameters and gradients of one sign: g + λ p then never cancels to near 0,
    # where RMSprop's and Adam's first steps (lr g / |g| roughly) would turn float32 rounding of the
    # norm (torch sums it in float32, rnncore in double) into a visible difference.
    sign = 1.0 if weight_decay else None
    if sign:
        for p in params.values():
            p[...] = np.abs(p) + 0.5
    tparams = [torch.tensor(params[k].copy(), requires_grad=True) for k in params]
    opt = ours(params, grads, weight_decay=weight_decay, **clip)
    topt = theirs(tparams, weight_decay=weight_decay)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for step in range(4):
        for k, tp in zip(params, tparams):
            g = rng.standard_normal(grads[k].shape)
            grads[k][...] = (np.abs(g) if sign else g) * (0.3 + step)     # the clipping bites later
            tp.grad = torch.tensor(grads[k].copy())
        opt.step()
        norm = torch_step(topt, tparams, clip)
        for k, tp in zip(params, tparams):
            assert params[k].dtype == dtype and grads[k].dtype == dtype
            # the gradients are clipped in place, as torch's clipping does
            np.testing.assert_allclose(grads[k], tp.grad.numpy(), **tol, err_msg=f"step {step} grad {k}")
            np.testing.assert_allclose(params[k], tp.detach().numpy(), **tol, err_msg=f"step {step} {k}")
        if norm is not None:
            assert opt.last_grad_norm == pytest.approx(norm, rel=1e-6 if dtype == np.float32 else 1e-12)
    if "clip_norm" in clip:
        assert opt.last_grad_norm > clip["clip_norm"]      # the last steps were clipped


def test_fused_step_with_two_dtypes_matches_torch(rng):
    # float32 and float64 parameters in one optimizer: one norm over both, each dtype its own pass
    params = {"a": rng.standard_normal((40, 30)).astype(np.float32), "b": rng.standard_normal(7)}
    grads = {k: np.zeros_like(p) for k, p in params.items()}
    tparams = [torch.tensor(params[k].copy(), requires_grad=True) for k in params]
    opt = Adam(params, grads, lr=0.01, clip_norm=2.0, weight_decay=0.01)
    topt = torch.optim.Adam(tparams, lr=0.01, weight_decay=0.01)
    for _ in range(3):
        for k, tp in zip(params, tparams):
            grads[k][...] = rng.standard_normal(grads[k].shape)
            tp.grad = torch.tensor(grads[k].copy())
        opt.step()
        torch_step(topt, tparams, {"clip_norm": 2.0})
    for k, tp in zip(params, tparams):
        assert params[k].dtype == grads[k].dtype == tp.detach().numpy().dtype
        np.testing.assert_allclose(params[k], tp.detach().numpy(), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["sgd_nesterov", "rmsprop", "adam"])
def test_fused_step_bit_identical_whatever_the_thread_count(rng, name, dtype):
    import rnncore
    ours = FUSED_CONFIGS[name][0]
    gs = [{k: (rng.standard_normal(s) * 2).astype(dtype) for k, s in FUSED_SHAPES.items()} for _ in range(3)]
    start = fused_problem(np.random.default_rng(1), dtype)[0]
    runs = []
    for n in (1, 2, 3):
        params = {k: v.copy() for k, v in start.items()}
        grads = {k: np.zeros_like(v) for k, v in start.items()}
        opt = ours(params, grads, clip_value=1.5, clip_norm=50.0, weight_decay=0.01)
        norms = []
        with rnncore.threads(n):
            for g in gs:
                for k in grads:
                    grads[k][...] = g[k]
                opt.step()
                norms.append(opt.last_grad_norm)
        runs.append((params, grads, opt.state_dict()["buffers"], norms))
    assert runs[0][3][-1] > 50.0                   # clipped by the norm
    for params, grads, buffers, norms in runs[1:]:
        assert norms == runs[0][3]
        for a, b in ((params, runs[0][0]), (grads, runs[0][1]), (buffers, runs[0][2])):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_global_norm_against_an_exact_sum(rng, dtype):
    import rnncore
    grads = {k: rng.standard_normal(s).astype(dtype) for k, s in FUSED_SHAPES.items()}
    exact = math.sqrt(math.fsum(float(x) ** 2 for g in grads.values() for x in g.ravel()))
    norms = []
    for n in (1, 2):
        with rnncore.threads(n):
            norms.append(global_norm(grads))
    assert norms[0] == norms[1]                     # a fixed order: the same bits on any thread count
    assert norms[0] == pytest.approx(exact, rel=1e-14)   # summed in double, even for float32
    assert math.isnan(global_norm({"a": np.array([1.0, np.nan])}))
    assert global_norm({}) == 0.0


def test_clip_by_value_keeps_nan_and_dtype():
    grads = {"a": np.array([3.0, np.nan, -7.0], np.float32)}
    clip_grad_value(grads, 0.5)
    assert grads["a"].dtype == np.float32
    np.testing.assert_array_equal(grads["a"], np.array([0.5, np.nan, -0.5], np.float32))


def test_state_buffers_are_views_of_one_array_per_dtype(rng):
    params, grads = fused_problem(rng, np.float32)
    opt = Adam(params, grads, lr=0.1)
    for b in ("exp_avg", "exp_avg_sq"):
        views = opt.state[b]
        assert list(views) == list(params)
        assert all(views[k].shape == params[k].shape and views[k].base is views["w_big"].base for k in views)
    for k in grads:
        grads[k][...] = 1.0
    opt.step()
    # Adam's first step: m = (1 - β1) g in every parameter's view
    for k in params:
        np.testing.assert_allclose(opt.state["exp_avg"][k], np.float32(0.1), rtol=1e-6)


@pytest.mark.parametrize("params, grads, exc, words", [
    ({"w": np.zeros(3, int)}, {"w": np.zeros(3, int)}, TypeError, "expected float32 or float64 arrays"),
    ({"w": np.zeros(3, np.float32)}, {"w": np.zeros(3)}, TypeError, "of one dtype, got float32 and float64"),
    ({"w": np.zeros((3, 4))[:, 1]}, {"w": np.zeros(3)}, ValueError, "C-contiguous"),
    ({"w": [0.0, 1.0]}, {"w": np.zeros(2)}, TypeError, "expected numpy arrays"),
])
def test_optimizer_refuses_arrays_it_cannot_update_in_place(params, grads, exc, words):
    with pytest.raises(exc) as e:
        SGD(params, grads, lr=0.1)
    assert words in str(e.value)
