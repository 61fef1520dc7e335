"""The torch.nn habits a PyTorch user reaches for on rnncore's layers, and what rnncore deliberately
does not offer (documented in rnncore/layers/recurrent.py and the README)."""
import pickle
import warnings

import numpy as np
import pytest
import torch

import rnncore

LAYERS = [
    lambda **kw: rnncore.RNN(3, 5, num_layers=2, nonlinearity="relu", bidirectional=True, **kw),
    lambda **kw: rnncore.LSTM(3, 5, num_layers=2, proj_size=2, **kw),
    lambda **kw: rnncore.LSTM(3, 5, peephole=True, **kw),
    lambda **kw: rnncore.GRU(3, 5, num_layers=2, reset_after=False, batch_first=True, **kw),
]
X = np.random.default_rng(0).standard_normal((6, 2, 3))


@pytest.mark.parametrize("make", LAYERS)
def test_config_rebuilds_the_layer(make):
    layer = make(seed=0)
    again = type(layer)(**layer.config)
    assert again.config == layer.config and type(again) is type(layer)
    assert {k: v.shape for k, v in again.params.items()} == {k: v.shape for k, v in layer.params.items()}
    assert type(layer).from_config(layer.config).config == layer.config
    assert rnncore.GRU.from_config(layer.config).config == layer.config   # the mode picks the class


def test_config_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="mode='GRU' does not fit LSTM"):
        rnncore.LSTM(**rnncore.GRU(3, 5).config)
    with pytest.raises(TypeError, match="unexpected keyword argument 'frobnicate'"):
        rnncore.GRU(3, 5, frobnicate=1)


@pytest.mark.parametrize("make", LAYERS)
def test_to_double_float_convert_in_place(make):
    layer = make(seed=1)
    out32, _ = layer(X)
    layer.grads[next(iter(layer.grads))][...] = 1.0
    assert layer.double() is layer and layer.dtype == np.float64
    assert all(p.dtype == np.float64 for p in layer.parameters())
    assert all(g.dtype == np.float64 for g in layer.grads.values())
    assert next(iter(layer.grads.values())).max() == 1.0
    out64, _ = layer(X)
    assert out64.dtype == np.float64 and np.allclose(out64, out32, atol=1e-5)
    assert layer.to(torch.float32) is layer and layer.dtype == np.float32
    assert layer.float().to("cpu").to(torch.device("cpu")) is layer
    assert np.array_equal(layer(X)[0], out32)     # float32 -> float64 -> float32 is exact
    with pytest.raises(TypeError):
        layer.to("cuda")
    with pytest.raises(TypeError):
        layer.to(torch.float16)


def test_torch_dtype_at_construction():
    assert rnncore.LSTM(3, 4, dtype=torch.float64).dtype == np.float64
    assert rnncore.GRU(3, 4, dtype=torch.float32).dtype == np.float32


def test_parameters_in_torch_order_and_attribute_access():
    layer = rnncore.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, seed=0)
    t = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert all(a is b for a, b in zip(layer.parameters(), layer.params.values()))
    assert layer.weight_hr_l1_reverse is layer.params["weight_hr_l1_reverse"]   # the live array
    layer.weight_ih_l0[...] = 0.5
    assert (layer.params["weight_ih_l0"] == 0.5).all()
    with pytest.raises(AttributeError, match=r"write into it \(layer.weight_ih_l0\[...\] = value\)"):
        layer.weight_ih_l0 = np.zeros((20, 3), np.float32)
    with pytest.raises(AttributeError, match="no attribute 'weight_ih_l9'"):
        layer.weight_ih_l9
    pickle.loads(pickle.dumps(layer))


def test_train_eval_and_forward():
    layer = rnncore.GRU(3, 8, num_layers=3, dropout=0.5, seed=0)
    assert layer.training is False                              # eval mode until train()
    ref, _ = layer(X)
    assert np.array_equal(layer.forward(X)[0], ref)
    assert layer.train() is layer and layer.training
    a, b = layer(X)[0], layer(X)[0]
    assert not np.array_equal(a, ref) and not np.array_equal(a, b)   # dropout between layers
    assert layer.eval() is layer and not layer.training
    assert np.array_equal(layer(X)[0], ref)
    one = rnncore.GRU(3, 8).train()                                 # no dropout: no change
    assert np.array_equal(one(X)[0], one.eval()(X)[0])


def test_dropout_with_one_layer_warns_as_torch_does():
    with pytest.warns(UserWarning, match="num_layers=1 has none"):
        rnncore.LSTM(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnncore.LSTM(3, 4, num_layers=2, dropout=0.5)
        rnncore.LSTM(3, 4, dropout=0.0)


def test_what_is_deliberately_not_offered():
    layer = rnncore.LSTM(3, 4)
    for name in ("cuda", "backward", "requires_grad", "register_forward_hook", "children", "half"):
        assert not hasattr(layer, name), name


def test_a_backprop_from_before_to_is_refused_and_the_new_arrays_are_guarded():
    layer = rnncore.GRU(3, 4, seed=0)
    out, _, bp = layer.forward_train(np.ones((2, 1, 3), np.float32))
    layer.to(np.float64)
    with pytest.raises(RuntimeError, match="changed"):
        bp(np.ones_like(out))
    with pytest.raises(ValueError):
        layer.params["weight_hh_l0"] = np.zeros((5, 5))          # the converted arrays keep their guard
    out, _, bp = layer.forward_train(np.ones((2, 1, 3)))
    layer.load_state_dict(layer.state_dict())                      # a change through the API
    with pytest.raises(RuntimeError, match="changed"):
        bp(np.ones_like(out))
