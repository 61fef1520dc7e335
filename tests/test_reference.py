"""rnncore.layers.reference against PyTorch (float64, every output, state and gradient) and against float64
central differences (for the variants PyTorch lacks, and a few standard ones as a third opinion)."""
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import (CELLS, GRID, RAGGED_LENGTHS, assert_close, central_diff, grid_config, grid_id,
                      make_config, random_grads,
                      random_inputs, random_params, sizes, to_torch_module, torch_run,
                      zero_past_lengths)
from rnncore.layers import reference

RTOL, ATOL = 1e-10, 1e-12

def zeros_hx(config, x):
    """The explicit zero state that hx=None stands for."""
    D, P, _ = sizes(config)
    B = x.shape[0] if config["batch_first"] else x.shape[1]
    n = config["num_layers"] * D
    h0 = np.zeros((n, B, P))
    return (h0, np.zeros((n, B, config["hidden_size"]))) if config["mode"] == "LSTM" else h0


def compare_states(actual, expected, is_lstm, rtol, atol, what):
    if is_lstm:
        assert_close(actual[0], expected[0], rtol, atol, what + " h")
        assert_close(actual[1], expected[1], rtol, atol, what + " c")
    else:
        assert_close(actual, expected, rtol, atol, what)


@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_reference_matches_torch(case, rng):
    cell, L, bidir, bf, lengths, with_hx = case
    config = grid_config(cell, num_layers=L, bidirectional=bidir, batch_first=bf)
    is_lstm = config["mode"] == "LSTM"
    params = random_params(config, rng)
    x, hx = random_inputs(config, rng, with_hx=with_hx)
    d_output, d_h_n = random_grads(config, rng)

    output, h_n, cache = reference.forward(config, params, x, hx, lengths)
    dx, dhx, grads = reference.backward(config, params, cache, d_output, d_h_n)

    # torch ignores d_output past the lengths (those outputs are constant 0); ours must too,
    # so d_output is passed to torch zeroed there but to the reference as is.
    want = torch_run(config, params, x, hx if with_hx else zeros_hx(config, x), lengths,
                     zero_past_lengths(config, d_output, lengths), d_h_n)

    assert_close(output, want["output"], RTOL, ATOL, "output")
    compare_states(h_n, want["h_n"], is_lstm, RTOL, ATOL, "h_n")
    assert_close(dx, want["dx"], RTOL, ATOL, "dx")
    compare_states(dhx, want["dhx"], is_lstm, RTOL, ATOL, "dhx")
    assert set(grads) == set(params)
    for name in params:
        assert grads[name].shape == params[name].shape, name
        assert_close(grads[name], want["grads"][name], RTOL, ATOL, "grad " + name)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("cell", [c[0] for c in CELLS])
def test_reference_bias_false_matches_torch(cell, bias, rng):
    config = grid_config(cell, num_layers=2, bidirectional=True, bias=bias)
    params = random_params(config, rng)
    assert any(k.startswith("bias") for k in params) == bias
    x, hx = random_inputs(config, rng)
    d_output, d_h_n = random_grads(config, rng)
    lengths = [4, 2, 5]
    output, h_n, cache = reference.forward(config, params, x, hx, lengths)
    dx, dhx, grads = reference.backward(config, params, cache, d_output, d_h_n)
    want = torch_run(config, params, x, hx, lengths, zero_past_lengths(config, d_output, lengths), d_h_n)
    assert_close(output, want["output"], RTOL, ATOL, "output")
    compare_states(h_n, want["h_n"], config["mode"] == "LSTM", RTOL, ATOL, "h_n")
    assert_close(dx, want["dx"], RTOL, ATOL, "dx")
    compare_states(dhx, want["dhx"], config["mode"] == "LSTM", RTOL, ATOL, "dhx")
    for name in params:
        assert_close(grads[name], want["grads"][name], RTOL, ATOL, "grad " + name)


@pytest.mark.parametrize("which", ["output_only", "h_only", "c_only", "states_only"])
@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru"])
def test_reference_partial_upstream_gradients(cell, which, rng):
    """d_h_n None, or an LSTM (dh, None) / (None, dc): the missing parts count as zero."""
    config = grid_config(cell, num_layers=2, bidirectional=True)
    is_lstm = config["mode"] == "LSTM"
    if which == "c_only" and not is_lstm:
        which = "states_only"
    params = random_params(config, rng)
    x, hx = random_inputs(config, rng)
    d_output, d_h_n = random_grads(config, rng)
    if which == "output_only":
        d_h_n = None
    elif which == "h_only":
        d_output = np.zeros_like(d_output)
        d_h_n = (d_h_n[0], None) if is_lstm else d_h_n
    elif which == "c_only":
        d_output = np.zeros_like(d_output)
        d_h_n = (None, d_h_n[1])
    else:
        d_output = np.zeros_like(d_output)
    _, _, cache = reference.forward(config, params, x, hx)
    dx, dhx, grads = reference.backward(config, params, cache, d_output, d_h_n)
    want = torch_run(config, params, x, hx, None, d_output, d_h_n)
    assert_close(dx, want["dx"], RTOL, ATOL, "dx")
    compare_states(dhx, want["dhx"], is_lstm, RTOL, ATOL, "dhx")
    for name in params:
        assert_close(grads[name], want["grads"][name], RTOL, ATOL, "grad " + name)


def test_reference_ignores_d_output_past_lengths(rng):
    config = grid_config("lstm", num_layers=2, bidirectional=True, batch_first=True)
    params = random_params(config, rng)
    x, hx = random_inputs(config, rng)
    d_output, d_h_n = random_grads(config, rng)
    lengths = [2, 5, 3]
    output, _, cache = reference.forward(config, params, x, hx, lengths)
    for b, n in enumerate(lengths):
        assert np.all(output[b, n:] == 0)
    a = reference.backward(config, params, cache, d_output, d_h_n)
    b_ = reference.backward(config, params, cache, zero_past_lengths(config, d_output, lengths), d_h_n)
    assert_close(a[0], b_[0], 0, 0, "dx")
    for name in params:
        assert_close(a[2][name], b_[2][name], 0, 0, "grad " + name)
    for b, n in enumerate(lengths):
        assert np.all(a[0][b, n:] == 0), "dx past a length must be 0"


def test_reference_keeps_float32(rng):
    config = grid_config("gru", num_layers=2, bidirectional=True)
    params = random_params(config, rng, np.float32)
    x, hx = random_inputs(config, rng, np.float32)
    d_output, d_h_n = random_grads(config, rng, np.float32)
    output, h_n, cache = reference.forward(config, params, x, hx, [5, 2, 3])
    dx, dhx, grads = reference.backward(config, params, cache, d_output, d_h_n)
    assert output.dtype == h_n.dtype == dx.dtype == dhx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())


# ------------------------------------------------------------------------------------------------
# Dropout masks: a 2-layer stack with masks equals two 1-layer torch stacks with the mask between.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "lstm_proj", "gru"])
def test_reference_masks_match_torch_layer_by_layer(cell, rng):
    config = grid_config(cell, num_layers=2, bidirectional=True)
    is_lstm = config["mode"] == "LSTM"
    D, P, out = sizes(config)
    params = random_params(config, rng)
    x, hx = random_inputs(config, rng)
    d_output, d_h_n = random_grads(config, rng)
    lengths = [4, 5, 2]
    p = 0.4
    mask = (rng.random((x.shape[0], x.shape[1], out)) >= p) / (1 - p)
    output, h_n, cache = reference.forward(config, params, x, hx, lengths, masks=[mask])
    dx, dhx, grads = reference.backward(config, params, cache, d_output, d_h_n)

    # Same computation in torch: layer 0, times the mask, layer 1; autograd through both.
    cfg1 = dict(config, num_layers=1)
    mods = []
    for k in range(2):
        names = {n: n.replace(f"_l{k}", "_l0") for n in params if f"_l{k}" in n}
        cfg_k = dict(cfg1, input_size=config["input_size"] if k == 0 else out)
        mods.append(to_torch_module(cfg_k, {names[n]: params[n] for n in names}))
    xt = torch.tensor(x, requires_grad=True)
    if is_lstm:
        hxt = [torch.tensor(a, requires_grad=True) for a in hx]
    else:
        hxt = torch.tensor(hx, requires_grad=True)
    inp, states = xt, []
    for k in range(2):
        h_k = (hxt[0][2 * k:2 * k + 2], hxt[1][2 * k:2 * k + 2]) if is_lstm else hxt[2 * k:2 * k + 2]
        if k == 1:
            inp = inp * torch.tensor(mask)
        packed = pack_padded_sequence(inp, torch.tensor(lengths), enforce_sorted=False)
        o, s = mods[k](packed, h_k)
        inp, _ = pad_packed_sequence(o, total_length=x.shape[0])
        states.append(s)
    loss = (inp * torch.tensor(zero_past_lengths(config, d_output, lengths))).sum()
    if is_lstm:
        hn = torch.cat([s[0] for s in states])
        cn = torch.cat([s[1] for s in states])
        loss = loss + (hn * torch.tensor(d_h_n[0])).sum() + (cn * torch.tensor(d_h_n[1])).sum()
        compare_states(h_n, (hn.detach().numpy(), cn.detach().numpy()), True, RTOL, ATOL, "h_n")
    else:
        hn = torch.cat(states)
        loss = loss + (hn * torch.tensor(d_h_n)).sum()
        compare_states(h_n, hn.detach().numpy(), False, RTOL, ATOL, "h_n")
    loss.backward()
    assert_close(output, inp.detach().numpy(), RTOL, ATOL, "output")
    assert_close(dx, xt.grad.numpy(), RTOL, ATOL, "dx")
    if is_lstm:
        compare_states(dhx, (hxt[0].grad.numpy(), hxt[1].grad.numpy()), True, RTOL, ATOL, "dhx")
    else:
        compare_states(dhx, hxt.grad.numpy(), False, RTOL, ATOL, "dhx")
    for k in range(2):
        for name, prm in mods[k].named_parameters():
            ours = name.replace("_l0", f"_l{k}")
            assert_close(grads[ours], prm.grad.numpy(), RTOL, ATOL, "grad " + ours)


# ------------------------------------------------------------------------------------------------
# Central differences (float64): the variants torch lacks, and standard cells as a third oracle.
# ------------------------------------------------------------------------------------------------

FD_CASES = [
    ("lstm_peephole", dict(mode="LSTM", peephole=True)),
    ("lstm_peephole_proj", dict(mode="LSTM", peephole=True, proj_size=2)),
    ("gru_reset_before", dict(mode="GRU", reset_after=False)),
    ("rnn_tanh", dict(mode="RNN_TANH")),
    ("lstm_proj", dict(mode="LSTM", proj_size=2)),
    ("gru", dict(mode="GRU")),
]
FD_LAYOUTS = [
    dict(num_layers=2, bidirectional=True, batch_first=False, lengths=[3, 1, 4]),
    dict(num_layers=1, bidirectional=False, batch_first=True, lengths=None),
]


def fd_check(config, params, x, hx, lengths, d_output, d_h_n, masks=None):
    """Reference gradients vs central differences of
    loss = sum(output * d_output) + sum(h_n * dh_n) [+ sum(c_n * dc_n)]."""
    is_lstm = config["mode"] == "LSTM"

    def loss():
        output, h_n, _ = reference.forward(config, params, x, hx, lengths, masks)
        total = np.sum(output * d_output)
        if is_lstm:
            total += np.sum(h_n[0] * d_h_n[0]) + np.sum(h_n[1] * d_h_n[1])
        else:
            total += np.sum(h_n * d_h_n)
        return total

    _, _, cache = reference.forward(config, params, x, hx, lengths, masks)
    dx, dhx, grads = reference.backward(config, params, cache, d_output, d_h_n)
    names = sorted(params)
    hx_arrays = list(hx) if is_lstm else [hx]
    dhx_arrays = list(dhx) if is_lstm else [dhx]
    numeric = central_diff(loss, [x] + hx_arrays + [params[n] for n in names], eps=1e-6)
    analytic = [dx] + dhx_arrays + [grads[n] for n in names]
    labels = ["dx"] + (["dh0", "dc0"] if is_lstm else ["dh0"]) + ["grad " + n for n in names]
    for a, n, label in zip(analytic, numeric, labels):
        assert_close(a, n, 1e-6, 1e-8, label)


@pytest.mark.parametrize("layout", FD_LAYOUTS, ids=["L2-bi-ragged", "L1-uni-bf"])
@pytest.mark.parametrize("variant", FD_CASES, ids=[c[0] for c in FD_CASES])
def test_reference_central_differences(variant, layout, rng):
    layout = dict(layout)
    lengths = layout.pop("lengths")
    config = make_config(input_size=3, **dict(variant[1], **layout))
    params = random_params(config, rng)
    x, hx = random_inputs(config, rng, seq_len=4)
    d_output, d_h_n = random_grads(config, rng, seq_len=4)
    fd_check(config, params, x, hx, lengths, d_output, d_h_n)


@pytest.mark.parametrize("cell", ["lstm_peephole", "gru_reset_before"])
def test_reference_central_differences_loss_on_final_state_only(cell, rng):
    """A loss that reads only h_n (and c_n): gradient flows back through every step from the end."""
    config = make_config(input_size=3, num_layers=2, bidirectional=True, **dict(FD_CASES)[cell])
    params = random_params(config, rng)
    x, hx = random_inputs(config, rng, seq_len=4)
    d_output, d_h_n = random_grads(config, rng, seq_len=4)
    fd_check(config, params, x, hx, [4, 2, 3], np.zeros_like(d_output), d_h_n)


def test_reference_central_differences_with_masks(rng):
    config = make_config(mode="LSTM", peephole=True, input_size=3, num_layers=3)
    params = random_params(config, rng)
    x, hx = random_inputs(config, rng, seq_len=3, batch=2)
    d_output, d_h_n = random_grads(config, rng, seq_len=3, batch=2)
    masks = [(rng.random((3, 2, 3)) > 0.3) / 0.7 for _ in range(2)]
    fd_check(config, params, x, hx, None, d_output, d_h_n, masks)


# ------------------------------------------------------------------------------------------------
# The checks above can fail: perturbations a wrong implementation would make are detected.
# ------------------------------------------------------------------------------------------------

def test_oracle_detects_h0_c0_swap_and_tiny_weight_errors(rng):
    config = grid_config("lstm", num_layers=2, bidirectional=True)
    params = random_params(config, rng)
    x, (h0, c0) = random_inputs(config, rng)
    d_output, d_h_n = random_grads(config, rng)
    swapped_c = np.resize(h0, c0.shape)
    out_a, _, _ = reference.forward(config, params, x, (h0, c0))
    out_b, _, _ = reference.forward(config, params, x, (np.resize(c0, h0.shape), swapped_c))
    with pytest.raises(AssertionError):
        assert_close(out_b, out_a, RTOL, ATOL, "swapped state")
    bad = dict(params, weight_hh_l1_reverse=params["weight_hh_l1_reverse"] + 1e-7)
    _, _, cache = reference.forward(config, bad, x, (h0, c0))
    dx, _, _ = reference.backward(config, bad, cache, d_output, d_h_n)
    want = torch_run(config, params, x, (h0, c0), None, d_output, d_h_n)
    with pytest.raises(AssertionError):
        assert_close(dx, want["dx"], RTOL, ATOL, "dx with perturbed weight")
