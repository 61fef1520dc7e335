"""Seed 001's claim, in numbers: the vanilla RNN's two forms are one network.

    (i)   h_t = σ(W [h^{l-1}_t; h_{t-1}] + b)     rnncore.RNN (the compiled core)
    (ii)  s_t = W [u_t; σ(s_{t-1})] + b          rnncore.models.architectures.PreActivationRNN (numpy)

With the same weights and σ(s_{-1}) = h_{-1}: form (ii)'s states are form (i)'s pre-activations
a_t = W [u_t; h_{t-1}] + b (computed here from form (i)'s own states), σ of them are form (i)'s states,
at every step of every layer; and the gradients agree through ∂L/∂s = ∂L/∂h ⊙ σ'(s). Form (ii)'s own
BPTT is also checked against float64 central differences and a PyTorch autograd version."""
import numpy as np
import pytest
import torch

import rnncore
from conftest import assert_close, central_diff
from rnncore.models.architectures import PreActivationRNN

I = 4
CASES = [("tanh", 5, 1), ("tanh", 16, 2), ("tanh", 17, 3), ("relu", 5, 2), ("relu", 17, 3)]


def sigma(name, s):
    return np.maximum(s, 0) if name == "relu" else np.tanh(s)


def dsigma(name, s):
    return (s > 0).astype(s.dtype) if name == "relu" else 1 - np.tanh(s) ** 2


def pair(name, H, L, seed=0):
    """Form (i) (rnncore.RNN) and form (ii) with the same weights, float64."""
    rnn = rnncore.RNN(I, H, L, nonlinearity=name, dtype=np.float64, seed=seed)
    pre = PreActivationRNN(I, H, L, nonlinearity=name, dtype=np.float64)
    pre.load_state_dict(rnn.state_dict())
    return rnn, pre


def layer_params(rnn, k):
    return {n.replace(f"_l{k}", "_l0"): v for n, v in rnn.params.items() if n.endswith(f"_l{k}")}


def demonstration(name, H, L, rng, T=7, B=3):
    """Per layer: max |s - a| and max |σ(s) - h| over every step and sequence; both stacks' outputs."""
    rnn, pre = pair(name, H, L)
    x = rng.standard_normal((T, B, I))
    s0 = rng.uniform(-1.5, 1.5, (L, B, H))
    h0 = sigma(name, s0)                                   # σ(s_{-1}) = h_{-1}
    errs = []
    u_i, u_ii = x, x
    for k in range(L):
        p = layer_params(rnn, k)
        one_i = rnncore.RNN(u_i.shape[2], H, nonlinearity=name, dtype=np.float64)
        one_i.load_state_dict(p)
        h, _ = one_i(u_i, h0[k:k + 1])                     # form (i)'s states of layer k
        hprev = np.concatenate([h0[k][None], h[:-1]])
        # form (i)'s pre-activations, from its own states: a_t = W_ih u_t + b_ih + W_hh h_{t-1} + b_hh
        a = u_i @ p["weight_ih_l0"].T + p["bias_ih_l0"] + hprev @ p["weight_hh_l0"].T + p["bias_hh_l0"]
        one_ii = PreActivationRNN(u_ii.shape[2], H, nonlinearity=name, dtype=np.float64)
        one_ii.load_state_dict(p)
        s, _ = one_ii(u_ii, s0[k:k + 1])                  # form (ii)'s states of layer k
        errs.append((float(np.abs(s - a).max()), float(np.abs(sigma(name, s) - h).max())))
        u_i, u_ii = h, sigma(name, s)
    out_i, hn_i = rnn(x, h0)
    out_ii, sn_ii = pre(x, s0)
    return errs, (x, s0, h0), (out_i, hn_i, out_ii, sn_ii), (u_i, s)


@pytest.mark.parametrize("name,H,L", CASES)
def test_form_ii_states_are_form_i_pre_activations(name, H, L, rng):
    errs, _, (out_i, hn_i, out_ii, sn_ii), (h_top, s_top) = demonstration(name, H, L, rng)
    for k, (e_s, e_h) in enumerate(errs):
        assert e_s < 1e-12, f"layer {k}: s differs from form (i)'s pre-activation by {e_s:.2e}"
        assert e_h < 1e-12, f"layer {k}: σ(s) differs from form (i)'s state by {e_h:.2e}"
    # the stacks: (ii)'s output is the top layer's s, (i)'s is σ of it
    assert_close(out_ii, s_top, 1e-12, 1e-12, "form (ii) stack output = top layer's s")
    assert_close(out_i, h_top, 1e-12, 1e-12, "form (i) stack output = top layer's h")
    assert_close(sigma(name, out_ii), out_i, 1e-12, 1e-12, "σ(form (ii) output) = form (i) output")
    assert_close(sigma(name, sn_ii), hn_i, 1e-12, 1e-12, "σ(s_n) = h_n")
    # and they are not the same numbers: form (ii) emits pre-activations
    assert np.abs(out_ii - out_i).max() > 1e-3


@pytest.mark.parametrize("name,H,L", CASES)
def test_gradients_agree(name, H, L, rng):
    """One loss L(h) of form (i); form (ii) gets ∂L/∂s = ∂L/∂h ⊙ σ'(s): every parameter gradient and
    dx agree, and ds0 = dh0 ⊙ σ'(s0)."""
    rnn, pre = pair(name, H, L)
    x = rng.standard_normal((6, 3, I))
    s0 = rng.uniform(-1.5, 1.5, (L, 3, H))
    g_out, g_n = rng.standard_normal((6, 3, H)), rng.standard_normal((L, 3, H))
    out_i, hn_i, bp_i = rnn.forward_train(x, sigma(name, s0))
    dx_i, dh0 = bp_i(g_out, g_n)
    out_ii, sn_ii, bp_ii = pre.forward_train(x, s0)
    dx_ii, ds0 = bp_ii(g_out * dsigma(name, out_ii), g_n * dsigma(name, sn_ii))
    assert_close(dx_ii, dx_i, 1e-10, 1e-12, "dx")
    assert_close(ds0, dh0 * dsigma(name, s0), 1e-10, 1e-12, "ds0 = dh0 σ'(s0)")
    for k, g in rnn.grads.items():
        assert_close(pre.grads[k], g, 1e-10, 1e-12, f"grad {k}")


@pytest.mark.parametrize("name", ["tanh", "relu"])
def test_form_ii_gradients_central_differences_and_torch(name, rng):
    pre = PreActivationRNN(3, 4, 2, nonlinearity=name, dtype=np.float64, seed=1)
    x = rng.standard_normal((5, 3, 3))
    s0 = rng.uniform(-1, 1, (2, 3, 4))
    d_out, d_sn = rng.standard_normal((5, 3, 4)), rng.standard_normal((2, 3, 4))
    out, sn, bp = pre.forward_train(x, s0)
    dx, ds0 = bp(d_out, d_sn)
    names = list(pre.params)

    def loss():
        o, s = pre(x, s0)
        return float((o * d_out).sum() + (s * d_sn).sum())

    numeric = central_diff(loss, [x, s0] + [pre.params[n] for n in names], eps=1e-6)
    for label, a, n in zip(["dx", "ds0"] + names, [dx, ds0] + [pre.grads[n] for n in names], numeric):
        assert_close(a, n, 1e-6, 1e-8, f"[vs central differences] {label}")
    # PyTorch autograd on (ii) written again: s_t = W_ih u_t + b + W_hh σ(s_{t-1}), u above = σ(s below)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in pre.params.items()}
    tx, ts0 = torch.tensor(x, requires_grad=True), torch.tensor(s0, requires_grad=True)
    f = torch.relu if name == "relu" else torch.tanh
    u, finals = tx, []
    for k in range(2):
        s, outs = ts0[k], []
        for t in range(5):
            s = (u[t] @ tp[f"weight_ih_l{k}"].T + tp[f"bias_ih_l{k}"] + f(s) @ tp[f"weight_hh_l{k}"].T
                 + tp[f"bias_hh_l{k}"])
            outs.append(s)
        finals.append(s)
        u = f(torch.stack(outs))
    (torch.stack(outs) * torch.tensor(d_out)).sum().add((torch.stack(finals) * torch.tensor(d_sn)).sum()).backward()
    assert_close(out, torch.stack(outs).detach().numpy(), 1e-12, 1e-12, "[vs PyTorch] output")
    assert_close(dx, tx.grad.numpy(), 1e-10, 1e-12, "[vs PyTorch] dx")
    assert_close(ds0, ts0.grad.numpy(), 1e-10, 1e-12, "[vs PyTorch] ds0")
    for k in names:
        assert_close(pre.grads[k], tp[k].grad.numpy(), 1e-10, 1e-12, f"[vs PyTorch] grad {k}")


def test_form_ii_keeps_its_dtype_and_checks_input(rng):
    pre = PreActivationRNN(3, 4, dtype=np.float32)
    out, sn, bp = pre.forward_train(rng.standard_normal((5, 2, 3)))
    dx, ds0 = bp(np.ones((5, 2, 4)))
    assert out.dtype == sn.dtype == dx.dtype == ds0.dtype == pre.grads["weight_hh_l0"].dtype == np.float32
    with pytest.raises(ValueError, match="expected"):
        pre(rng.standard_normal((5, 2, 2)))
    with pytest.raises(ValueError, match="s0: expected shape"):
        pre(rng.standard_normal((5, 2, 3)), np.zeros((1, 3, 4)))
