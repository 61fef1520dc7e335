"""Property-based fuzzing (hypothesis) of every cell and of the stack driver against rnncore.layers.reference.

Each example draws a whole problem: the cell and its variant (RNN tanh/relu, LSTM with or without
proj_size and peepholes, GRU with reset_after True or False), sizes B, T, I, H (each may be 1),
num_layers 1-3, bidirectional, bias, batch_first or an unbatched 2-D input, dropout between layers,
lengths (none, ragged and unsorted, all equal, some equal to 1), zero or nonzero h0/c0 (for the LSTM
also only one of them), the layer's dtype, how the arrays are handed over (C order, Fortran order,
strided views, negative strides, nested lists, the other float dtype), which upstream gradients are
given, and rnncore's thread count (with the small-problem cut-off lifted, so the batch really is split).

It then checks, against rnncore.layers.reference run in float64 on the very values the layer received (so
for a float32 layer only the layer's own float32 rounding is left): the output and final states,
outputs past a length being exactly 0, dx, dh0 (dc0) and every parameter gradient in layer.grads
(with dropout, the reference gets the masks the layer used); every result has the layer's dtype and
the documented shape. The inference call must give the same output and states as forward_train.

Profiles (environment variable RNNCORE_HYPOTHESIS_PROFILE):
  ci (default)  60 examples per test, derandomized (the same examples on every run), no database
  dev           500 examples per test, random, failures remembered in .hypothesis/
The number of examples that ran is printed at the end of the module (pytest -s, or in the summary).
"""
import collections
import contextlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnncore
from conftest import assert_close, make_config, make_layer, random_params, sizes
from rnncore.engine import threads as _threads
from rnncore.layers import reference

settings.register_profile(
    "rnncore-ci", max_examples=60, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "rnncore-dev", max_examples=500, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = "rnncore-" + os.environ.get("RNNCORE_HYPOTHESIS_PROFILE", "ci")
FUZZ = settings(settings.get_profile(PROFILE))

# (rtol, atol): test_layers_oracles.py's, with float32's rtol doubled for the deeper, longer stacks
# drawn here. 4,000 random examples (the dev profile) pass with float32's rtol at 1e-5 too.
TOL = {np.dtype(np.float32): (2e-5, 1e-5), np.dtype(np.float64): (1e-10, 1e-11)}

VARIANTS = {
    "rnn_tanh": dict(mode="RNN_TANH"),
    "rnn_relu": dict(mode="RNN_RELU"),
    "lstm": dict(mode="LSTM"),
    "lstm_proj": dict(mode="LSTM", proj_size=True),       # proj_size drawn in [1, H-1]
    "lstm_peephole": dict(mode="LSTM", peephole=True),    # with or without a projection
    "gru": dict(mode="GRU", reset_after=True),
    "gru_reset_before": dict(mode="GRU", reset_after=False),
}
MEMORY = ["C", "fortran", "strided", "negative_strides", "nested_list", "other_dtype"]

EXAMPLES_RUN = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_examples(request):
    yield
    total = sum(EXAMPLES_RUN.values())
    line = (f"test_fuzz ({PROFILE}): {total} examples ran: "
            + ", ".join(f"{k} {v}" for k, v in sorted(EXAMPLES_RUN.items())))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + line)


# ------------------------------------------------------------------------------------------------
# Drawing a problem
# ------------------------------------------------------------------------------------------------

@st.composite
def problems(draw, variant):
    v = VARIANTS[variant]
    mode = v["mode"]
    T = draw(st.integers(1, 6))
    B = draw(st.integers(1, 5))
    I = draw(st.integers(1, 5))
    H = draw(st.integers(2 if v.get("proj_size") else 1, 6))
    proj_size = 0
    if v.get("proj_size") or (v.get("peephole") and H > 1 and draw(st.booleans())):
        proj_size = draw(st.integers(1, H - 1))
    config = make_config(mode=mode, input_size=I, hidden_size=H, num_layers=draw(st.integers(1, 3)),
                         bias=draw(st.booleans()), batch_first=draw(st.booleans()),
                         bidirectional=draw(st.booleans()), proj_size=proj_size,
                         peephole=v.get("peephole", False), reset_after=v.get("reset_after", True))
    unbatched = B == 1 and draw(st.booleans())
    if unbatched:
        lengths = None
    else:
        lengths = draw(st.one_of(
            st.none(),
            st.lists(st.integers(1, T), min_size=B, max_size=B),      # ragged, unsorted, 1s likely
            st.integers(1, T).map(lambda n: [n] * B)))                 # all equal (maybe all T)
    hx_kind = draw(st.sampled_from(["none", "both", "h_only", "c_only"] if mode == "LSTM"
                                   else ["none", "both"]))
    upstream = draw(st.sampled_from(["all", "output_only", "state_only", "h_n_only", "c_n_only"]
                                    if mode == "LSTM" else ["all", "output_only", "state_only"]))
    return dict(
        variant=variant, config=config, T=T, B=B, unbatched=unbatched, lengths=lengths,
        hx_kind=hx_kind, upstream=upstream,
        dtype=np.dtype(draw(st.sampled_from([np.float32, np.float64]))),
        dropout=draw(st.sampled_from([0.0, 0.5])) if config["num_layers"] > 1 else 0.0,
        memory=draw(st.sampled_from(MEMORY)),
        threads=draw(st.sampled_from([1, 2, 3])),
        seed=draw(st.integers(0, 2 ** 32 - 1)),
    )


def handed_over(a, how, dtype):
    """The array a (of the layer's dtype) as the user hands it over: same values, other memory."""
    if how == "C":
        return np.ascontiguousarray(a)
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "strided":
        big = np.zeros(tuple(2 * n for n in a.shape), a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if how == "negative_strides":
        rev = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])
        return rev[(slice(None, None, -1),) * a.ndim]
    if how == "nested_list":
        return a.tolist()
    if how == "other_dtype":   # float64 into a float32 layer is rounded by the layer, float32 is exact
        return a.astype(np.float32 if dtype == np.float64 else np.float64)
    raise ValueError(how)


def as_received(a, dtype):
    """What the layer computes with: the handed-over values converted to its dtype, widened to float64."""
    return np.asarray(a).astype(dtype).astype(np.float64)


@contextlib.contextmanager
def kernel_threads(n):
    """rnncore on n threads, even for these tiny problems (the single-thread cut-off lifted)."""
    with rnncore.config_context(small_work_flops=0), rnncore.threads(n):
        yield


# ------------------------------------------------------------------------------------------------
# The check
# ------------------------------------------------------------------------------------------------

def check_problem(pb):
    config, dtype, T, B = pb["config"], pb["dtype"], pb["T"], pb["B"]
    is_lstm = config["mode"] == "LSTM"
    D, P, out_size = sizes(config)
    H, L = config["hidden_size"], config["num_layers"]
    LD = L * D
    unbatched, bf, lengths = pb["unbatched"], config["batch_first"], pb["lengths"]
    rng = np.random.default_rng(pb["seed"])
    rtol, atol = TOL[dtype]

    params = {k: v.astype(dtype) for k, v in random_params(config, rng).items()}
    layer = make_layer(config, dtype, pb["dropout"], seed=pb["seed"] % 1000)
    layer.load_state_dict(params)
    layer.zero_grad()

    # the numbers, in the layer's dtype: sequences time-major (T, B, .), states (LD, B, .)
    x_tm = rng.standard_normal((T, B, config["input_size"])).astype(dtype)
    h0 = rng.uniform(-0.8, 0.8, (LD, B, P)).astype(dtype)
    c0 = rng.uniform(-1.5, 1.5, (LD, B, H)).astype(dtype)        # other range than h0: no swap passes
    dout_tm = rng.standard_normal((T, B, out_size)).astype(dtype)
    dh_n = rng.standard_normal((LD, B, P)).astype(dtype)
    dc_n = rng.standard_normal((LD, B, H)).astype(dtype)

    def user_seq(a):            # (T, B, F) -> the user's layout: (B, T, F), or (T, F) unbatched
        return a[:, 0] if unbatched else (a.transpose(1, 0, 2) if bf else a)

    def user_state(s):          # (LD, B, F) -> (LD, F) unbatched
        return s[:, 0] if unbatched else s

    def hand(a):                # in the drawn memory layout / container / dtype
        return handed_over(a, pb["memory"], dtype)

    hx_kind, up = pb["hx_kind"], pb["upstream"]
    h0_arg = hand(user_state(h0)) if hx_kind in ("both", "h_only") else None
    c0_arg = hand(user_state(c0)) if hx_kind in ("both", "c_only") else None
    hx = (None if hx_kind == "none" else (h0_arg, c0_arg)) if is_lstm else h0_arg
    d_output = hand(user_seq(dout_tm)) if up in ("all", "output_only") else None
    dh_arg = hand(user_state(dh_n)) if up in ("all", "state_only", "h_n_only") else None
    dc_arg = hand(user_state(dc_n)) if is_lstm and up in ("all", "state_only", "c_n_only") else None
    if is_lstm:
        d_h_n = None if dh_arg is None and dc_arg is None else (dh_arg, dc_arg)
    else:
        d_h_n = dh_arg

    x = hand(user_seq(x_tm))
    with kernel_threads(pb["threads"]):
        output, h_n, backprop = layer.forward_train(x, hx, lengths)
        dx, dhx = backprop(d_output, d_h_n)
        inf_output, inf_h_n = layer(x, hx, lengths)
    masks = backprop.masks
    assert len(masks) == (L - 1 if pb["dropout"] else 0), f"{len(masks)} dropout masks for {L} layers"

    # the reference, in float64, on exactly what the layer received, batched and time-major
    def seq64(a, shape):
        if a is None:
            return np.zeros(shape)
        a = as_received(a, dtype)
        return a[:, None] if unbatched else (a.swapaxes(0, 1) if bf else a)

    def state64(a, shape):
        if a is None:
            return np.zeros(shape)
        a = as_received(a, dtype)
        return a[:, None] if unbatched else a

    cfg_tm = dict(config, batch_first=False)
    x64 = seq64(x, None)
    h064, c064 = state64(h0_arg, (LD, B, P)), state64(c0_arg, (LD, B, H))
    hx64 = (h064, c064) if is_lstm else h064
    dout64 = seq64(d_output, (T, B, out_size))
    dh64, dc64 = state64(dh_arg, (LD, B, P)), state64(dc_arg, (LD, B, H))
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    m64 = [m.astype(np.float64) for m in masks] or None
    want_out, want_h, cache = reference.forward(cfg_tm, p64, x64, hx64, lengths, m64)
    want_dx, want_dhx, want_grads = reference.backward(cfg_tm, p64, cache, dout64,
                                                        (dh64, dc64) if is_lstm else dh64)
    plain_out, plain_h, _ = reference.forward(cfg_tm, p64, x64, hx64, lengths)   # no dropout

    def states(what, got, want):      # [(name, got, want)] for h or (h, c), in the user's layout
        if is_lstm:
            return [(what[0], got[0], user_state(want[0])), (what[1], got[1], user_state(want[1]))]
        return [(what[0], got, user_state(want))]

    checks = [("output", output, user_seq(want_out)), ("dx", dx, user_seq(want_dx))]
    checks += states(("h_n", "c_n"), h_n, want_h) + states(("dh0", "dc0"), dhx, want_dhx)
    assert set(layer.grads) == set(want_grads)
    checks += [(f"grad {k}", layer.grads[k], w) for k, w in want_grads.items()]
    # inference: no dropout, so the reference without masks
    checks += [("inference output", inf_output, user_seq(plain_out))]
    checks += states(("inference h_n", "inference c_n"), inf_h_n, plain_h)
    for what, got, want in checks:
        assert isinstance(got, np.ndarray) and got.dtype == dtype, \
            f"{what}: {type(got).__name__} of {getattr(got, 'dtype', '?')}, expected an array of {dtype}"
        assert_close(got, want, rtol, atol, what)

    if lengths is not None:           # outputs past a sequence's length are exactly 0
        out_tm = output.transpose(1, 0, 2) if bf else output
        for b, n in enumerate(lengths):
            assert not np.any(out_tm[n:, b]), f"output past lengths[{b}]={n} is not 0"
    if not masks:                     # without dropout, inference and forward_train agree to the bit
        for what, got, want in [("output", inf_output, output)] + \
                (list(zip(("h_n", "c_n"), inf_h_n, h_n)) if is_lstm else [("h_n", inf_h_n, h_n)]):
            np.testing.assert_array_equal(got, want, err_msg=f"inference vs forward_train: {what}")
    EXAMPLES_RUN[pb["variant"]] += 1


@pytest.mark.parametrize("variant", list(VARIANTS))
@FUZZ
@given(data=st.data())
def test_fuzz_layer_against_reference(variant, data):
    check_problem(data.draw(problems(variant), label="problem"))


@FUZZ
@given(pb=st.sampled_from(list(VARIANTS)).flatmap(problems))
def test_fuzz_deep_bidirectional_stack(pb):
    """The stack driver with every cell mixed in one test: the examples that make it deep (3 layers),
    bidirectional and dropped out are the interesting ones, so those are forced here."""
    config = dict(pb["config"], num_layers=3, bidirectional=True)
    check_problem(dict(pb, config=config, dropout=0.5, variant="stack (3 layers, bidirectional, dropout)"))
