"""rnncore.torch: torch.nn.RNN / LSTM / GRU running rnncore's kernels, against torch.nn itself.

Oracles: torch.nn's own module with the same parameters (outputs, final states, dx, dh0, dc0 and
every parameter gradient, over the grid of cells x hidden sizes x layers x directions x layouts x
PackedSequence lengths x nonzero hx), torch.autograd.gradcheck (float64 central differences through
the module, for the input, the initial states and every weight), and a torch training loop (Adam)
whose losses and weights must follow the stock model's step for step.
"""
import copy
import itertools
import pickle

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnncore.torch as rt

CELLS = {"rnn_tanh": (torch.nn.RNN, {}), "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
         "lstm": (torch.nn.LSTM, {}), "lstm_proj": (torch.nn.LSTM, {"proj_size": 3}),
         "gru": (torch.nn.GRU, {})}
HIDDEN = [5, 16, 17, 32, 33]
I, T, B = 4, 5, 3
LENGTHS = [3, 5, 1]          # unsorted, one full, one of length 1


def make_pair(cell, hidden, dtype=torch.float64, **kw):
    """A torch.nn module with non-default weights and its converted copy (same values)."""
    cls, extra = CELLS[cell]
    torch.manual_seed(hidden)
    stock = cls(I, hidden, dtype=dtype, **extra, **kw)
    with torch.no_grad():
        for p in stock.parameters():
            p.uniform_(-0.6, 0.6)
    ours = rt.convert(stock)
    assert type(ours) is not type(stock) and isinstance(ours, cls)
    return stock, ours


def inputs(module, lengths, with_hx, dtype, gen):
    L, D = module.num_layers, 2 if module.bidirectional else 1
    P = module.proj_size or module.hidden_size
    shape = (B, T, I) if module.batch_first else (T, B, I)
    x = torch.randn(shape, dtype=dtype, generator=gen)
    hx = None
    if with_hx:
        h0 = torch.rand((L * D, B, P), dtype=dtype, generator=gen) * 1.6 - 0.8
        hx = h0
        if isinstance(module, torch.nn.LSTM):
            hx = (h0, torch.rand((L * D, B, module.hidden_size), dtype=dtype, generator=gen) * 3 - 1.5)
    return x, hx


def run(module, x, hx, lengths, gen_seed):
    """Forward + backward with random output and state gradients; everything as numpy."""
    module.zero_grad()
    x = x.clone().requires_grad_()
    hx_in = None if hx is None else (tuple(h.clone().requires_grad_() for h in hx) if isinstance(hx, tuple)
                                      else hx.clone().requires_grad_())
    inp = x if lengths is None else pack_padded_sequence(x, torch.tensor(lengths),
                                                         batch_first=module.batch_first,
                                                         enforce_sorted=False)
    out, state = module(inp, hx_in)
    states = state if isinstance(state, tuple) else (state,)
    gen = torch.Generator().manual_seed(gen_seed)
    if isinstance(out, PackedSequence):
        out_data = out.data
    else:
        out_data = out
    loss = (out_data * torch.randn(out_data.shape, dtype=x.dtype, generator=gen)).sum()
    for s in states:
        loss = loss + (s * torch.randn(s.shape, dtype=x.dtype, generator=gen)).sum()
    loss.backward()
    got = {"out": out_data, "batch_sizes": getattr(out, "batch_sizes", None)}
    got.update({f"state{i}": s for i, s in enumerate(states)})
    got["dx"] = x.grad
    if hx_in is not None:
        for i, h in enumerate(hx_in if isinstance(hx_in, tuple) else (hx_in,)):
            got[f"dh{i}"] = h.grad
    got.update({f"grad {n}": p.grad for n, p in module.named_parameters()})
    return {k: None if v is None else v.detach().numpy().copy() for k, v in got.items()}


def compare(got, want, rtol, atol, label, scaled=False):
    """Every quantity of got against want; scaled: atol times the quantity's largest magnitude (float32,
    where ReLU RNNs' gradients reach tens). Returns the largest difference (divided by that magnitude
    when scaled)."""
    assert got.keys() == want.keys(), label
    worst = 0.0
    for k in want:
        if want[k] is None:
            assert got[k] is None, (label, k)
            continue
        assert got[k].shape == want[k].shape, (label, k, got[k].shape, want[k].shape)
        scale = max(1.0, float(np.max(np.abs(want[k]), initial=0.0))) if scaled else 1.0
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol * scale, err_msg=f"{label}: {k}")
        worst = max(worst, float(np.max(np.abs(got[k] - want[k]), initial=0.0)) / scale)
    return worst


# largest difference seen (for the notes): float64 absolute, float32 relative to each array's largest value
WORST = {"float64": 0.0, "float32": 0.0}
STRUCTURE = list(itertools.product([1, 2], [False, True]))       # num_layers x bidirectional


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("num_layers,bidirectional", STRUCTURE)
def test_matches_torch_nn_over_the_grid(cell, num_layers, bidirectional):
    """float64: every layout x lengths x hx, each with one of the hidden sizes in turn (all five
    appear), to 1e-10; float32 on every hidden size to 1e-5 of each quantity's largest magnitude
    (rounding of two float32 implementations)."""
    gen = torch.Generator().manual_seed(7)
    combos = itertools.product([False, True], [None, LENGTHS], [False, True])
    for i, (bf, lengths, with_hx) in enumerate(combos):
        hidden = HIDDEN[(i + num_layers + 2 * bidirectional) % len(HIDDEN)]
        label = f"{cell} H{hidden} L{num_layers} bi={bidirectional} bf={bf} lengths={lengths} hx={with_hx}"
        stock, ours = make_pair(cell, hidden, num_layers=num_layers, bidirectional=bidirectional,
                                batch_first=bf)
        x, hx = inputs(stock, lengths, with_hx, torch.float64, gen)
        want = run(stock, x, hx, lengths, 1)
        got = run(ours, x, hx, lengths, 1)
        WORST["float64"] = max(WORST["float64"], compare(got, want, 1e-10, 1e-11, label))
    for hidden in HIDDEN:
        stock, ours = make_pair(cell, hidden, dtype=torch.float32, num_layers=num_layers,
                                bidirectional=bidirectional)
        x, hx = inputs(stock, LENGTHS, True, torch.float32, gen)
        worst = compare(run(ours, x, hx, LENGTHS, 2), run(stock, x, hx, LENGTHS, 2), 1e-4, 1e-5,
                        f"float32 {cell} H{hidden}", scaled=True)
        WORST["float32"] = max(WORST["float32"], worst)


def test_a_sorted_packed_sequence_comes_back_as_torch_packs_it():
    """enforce_sorted=True input (no sorted_indices): the output PackedSequence is torch.nn's."""
    stock, ours = make_pair("lstm", 6, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([5, 3, 2]))
    assert packed.sorted_indices is None
    (a, sa), (b, sb) = stock(packed), ours(packed)
    assert b.sorted_indices is None and torch.equal(b.batch_sizes, a.batch_sizes)
    np.testing.assert_allclose(b.data.detach().numpy(), a.data.detach().numpy(), rtol=1e-10, atol=1e-11)
    for s, t in zip(sb, sa):
        np.testing.assert_allclose(s.detach().numpy(), t.detach().numpy(), rtol=1e-10, atol=1e-11)


def test_no_grad_inference_and_unbatched_input_match_torch_nn():
    gen = torch.Generator().manual_seed(3)
    for cell in CELLS:
        stock, ours = make_pair(cell, 17, num_layers=2, bidirectional=True, batch_first=True)
        x, hx = inputs(stock, None, True, torch.float64, gen)
        with torch.no_grad():
            (a, sa), (b, sb) = stock(x, hx), ours(x, hx)
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-11)
        for s, t in zip(sb if isinstance(sb, tuple) else (sb,), sa if isinstance(sa, tuple) else (sa,)):
            np.testing.assert_allclose(s.numpy(), t.numpy(), rtol=1e-10, atol=1e-11)
        x1 = x[0]                                   # one sequence (time, input_size)
        h1 = None if hx is None else (tuple(h[:, 0] for h in hx) if isinstance(hx, tuple) else hx[:, 0])
        a1, _ = stock(x1, h1)
        b1, _ = ours(x1, h1)
        np.testing.assert_allclose(b1.detach().numpy(), a1.detach().numpy(), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradcheck_float64(cell):
    """Central differences through the module, for x, h0 (c0) and every parameter at once, with a
    two-layer bidirectional stack and packed ragged input."""
    cls, extra = CELLS[cell]
    torch.manual_seed(0)
    extra = dict(extra, proj_size=1) if "proj_size" in extra else extra
    module = rt.__dict__[cls.__name__](2, 2, num_layers=2, bidirectional=True, dtype=torch.float64, **extra)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    P = module.proj_size or 2
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = (torch.rand(4, 2, P, dtype=torch.float64) - 0.5).requires_grad_()
    c0 = (torch.rand(4, 2, 2, dtype=torch.float64) - 0.5).requires_grad_()
    lengths = torch.tensor([2, 3])

    def f(x, h0, c0, *weights):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        hx = (h0, c0) if cls is torch.nn.LSTM else h0
        out, state = torch.func.functional_call(module, dict(zip(names, weights)), (packed, hx))
        return (out.data,) + (state if isinstance(state, tuple) else (state,))

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_training_loop_follows_stock_torch_and_sees_each_optimizer_step():
    """Embedding -> LSTM (2 layers, bidirectional, dropout off) -> Linear, cross-entropy, Adam: the
    optimizer is built before convert(inplace=True) (on the same nn.Parameters); every step's loss and
    the final weights equal the stock model's, and after each step the kernels read the new weights."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(11, 6)
            self.rnn = torch.nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True)
            self.head = torch.nn.Linear(16, 11)

        def forward(self, ids):
            out, _ = self.rnn(self.emb(ids))
            return self.head(out)

    torch.manual_seed(0)
    stock = Net().double()
    ours = copy.deepcopy(stock)
    opt_stock = torch.optim.Adam(stock.parameters(), lr=0.05)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=0.05)
    assert rt.convert(ours, inplace=True) is ours and isinstance(ours.rnn, rt.LSTM)
    gen = torch.Generator().manual_seed(1)
    losses = []
    ids = torch.randint(0, 11, (5, 7), generator=gen)
    target = torch.randint(0, 11, (5, 7), generator=gen)
    for step in range(6):
        pair = []
        for model, opt in ((stock, opt_stock), (ours, opt_ours)):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(ids).reshape(-1, 11), target.reshape(-1))
            loss.backward()
            opt.step()
            pair.append(loss.item())
        losses.append(pair)
        with torch.no_grad():                      # the weights the kernels see are the new ones
            np.testing.assert_allclose(ours(ids).numpy(), stock(ids).numpy(), rtol=1e-9, atol=1e-10)
    losses = np.array(losses)
    np.testing.assert_allclose(losses[:, 1], losses[:, 0], rtol=1e-9)
    assert losses[-1, 0] < losses[0, 0] - 0.1       # it trained
    for (n, a), (_, b) in zip(stock.named_parameters(), ours.named_parameters()):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-8, atol=1e-10, err_msg=n)


def test_weights_are_shared_not_copied_and_rebound_after_to():
    torch.manual_seed(0)
    m = rt.GRU(4, 5, num_layers=2)
    x = torch.randn(3, 2, 4)
    m(x)
    layer = m._rnncore[1]
    for name, p in m.named_parameters():
        assert layer.params[name].__array_interface__["data"][0] == p.data_ptr(), name
    with torch.no_grad():
        m.weight_hh_l1.mul_(0.5)                  # in place: seen with no rebinding
    stock = torch.nn.GRU(4, 5, num_layers=2)
    stock.load_state_dict(m.state_dict())
    np.testing.assert_allclose(m(x)[0].detach().numpy(), stock(x)[0].detach().numpy(), rtol=1e-6, atol=1e-7)
    m.double()                                     # new tensors of another dtype: a new float64 layer
    out, _ = m(x.double())
    assert out.dtype == torch.float64 and m._rnncore[1].dtype == np.float64
    np.testing.assert_allclose(out.detach().numpy(), stock.double()(x.double())[0].detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    m.weight_ih_l0 = torch.nn.Parameter(torch.zeros(15, 4, dtype=torch.float64))   # a new Parameter
    stock.weight_ih_l0 = torch.nn.Parameter(torch.zeros(15, 4, dtype=torch.float64))
    np.testing.assert_allclose(m(x.double())[0].detach().numpy(),
                               stock(x.double())[0].detach().numpy(), rtol=1e-10, atol=1e-12)


def test_a_non_contiguous_parameter_is_read_by_value():
    """A parameter that is a strided view (here every other column of a larger tensor) is copied for
    the kernels, never written to; outputs and its gradient are torch.nn's."""
    torch.manual_seed(0)
    stock = torch.nn.LSTM(4, 5, dtype=torch.float64)
    ours = rt.convert(stock)
    big = torch.randn(20, 10, dtype=torch.float64)
    for m in (stock, ours):
        m.weight_hh_l0 = torch.nn.Parameter(big[:, ::2])
        assert not m.weight_hh_l0.is_contiguous()
    before = big.clone()
    x, hx = inputs(stock, None, True, torch.float64, torch.Generator().manual_seed(0))
    compare(run(ours, x, hx, None, 3), run(stock, x, hx, None, 3), 1e-10, 1e-11, "strided weight_hh_l0")
    assert torch.equal(big, before)


def test_module_habits_survive():
    """state_dict keys, repr, deepcopy and pickle (the rnncore layer is rebuilt, not pickled)."""
    torch.manual_seed(0)
    m = rt.LSTM(4, 6, proj_size=2, batch_first=True)
    stock = torch.nn.LSTM(4, 6, proj_size=2, batch_first=True)
    assert list(m.state_dict()) == list(stock.state_dict())
    assert repr(m) == repr(stock)
    x = torch.randn(2, 3, 4)
    want = m(x)[0].detach().numpy()
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert type(clone) is rt.LSTM
        np.testing.assert_array_equal(clone(x)[0].detach().numpy(), want)


def test_dropout_follows_train_and_eval_and_torch_seed():
    torch.manual_seed(0)
    m = rt.GRU(4, 6, num_layers=3, dropout=0.5)
    stock = torch.nn.GRU(4, 6, num_layers=3, dropout=0.5)
    stock.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 4)
    m.eval(), stock.eval()
    np.testing.assert_allclose(m(x)[0].detach().numpy(), stock(x)[0].detach().numpy(), rtol=1e-6, atol=1e-7)
    m.train()
    torch.manual_seed(1)
    a = m(x)[0].detach().numpy()
    torch.manual_seed(1)
    b = m(x)[0].detach().numpy()
    c = m(x)[0].detach().numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, m.eval()(x)[0].detach().numpy())


def test_gradcheck_with_dropout_in_train_mode():
    """Dropout between layers (train mode): with torch's seed reset before each call the masks repeat,
    and central differences check the gradient through them (x, h0 and the weights)."""
    torch.manual_seed(0)
    module = rt.GRU(2, 3, num_layers=3, dropout=0.4, dtype=torch.float64).train()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = (torch.rand(3, 2, 3, dtype=torch.float64) - 0.5).requires_grad_()

    def f(x, h0, *weights):
        torch.manual_seed(5)
        return torch.func.functional_call(module, dict(zip(names, weights)), (x, h0))

    assert torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-7, rtol=1e-6)
    torch.manual_seed(5)
    a = f(x, h0, *params)[0]
    module.eval()
    assert not torch.allclose(a, f(x, h0, *params)[0])      # the masks did something


def test_refusals_say_what_was_expected():
    with pytest.raises(ValueError, match="CPU.*meta"):
        rt.convert(torch.nn.LSTM(3, 4, device="meta"))
    with pytest.raises(TypeError, match="float32 or float64.*float16"):
        rt.convert(torch.nn.GRU(3, 4).half())
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        rt.convert(np.zeros(3))

    class Mine(torch.nn.LSTM):
        pass
    with pytest.raises(ValueError, match="subclass of torch.nn.LSTM"):
        rt.convert(torch.nn.Sequential(Mine(3, 4)))
    param = torch.nn.utils.parametrize.register_parametrization
    with pytest.raises(ValueError, match="parametrized"):
        rt.convert(param(torch.nn.RNN(3, 4), "weight_hh_l0", torch.nn.Identity()))

    m = rt.LSTM(3, 4)
    with pytest.raises(ValueError, match="CPU.*meta"):
        m(torch.zeros(2, 1, 3, device="meta"))
    with pytest.raises(TypeError, match="parameters' dtype torch.float32, got torch.float64"):
        m(torch.zeros(2, 1, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32 or float64.*int64"):
        m(torch.zeros(2, 1, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="tuple"):
        m(torch.zeros(2, 1, 3), torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="h0 must have shape"):
        m(torch.zeros(2, 1, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 1, 4)))

    x = torch.randn(2, 1, 3, requires_grad=True)
    out, _ = m(x)
    with torch.no_grad():
        m.weight_hh_l0.add_(1.0)                   # in place between forward and backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    out, _ = m(x)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)
    # a refused convert changes nothing
    model = torch.nn.Sequential(torch.nn.GRU(3, 4), torch.nn.LSTM(4, 4).half())
    with pytest.raises(TypeError):
        rt.convert(model, inplace=True)
    assert type(model[0]) is torch.nn.GRU


TINY_TRAINING = {"batch": 3, "steps": 4, "vocab": 7, "embedding": 5, "hidden": 6}


def test_bench_prints_the_training_loop_row(tmp_path, capsys, monkeypatch):
    from rnncore import benchmark
    monkeypatch.setitem(benchmark.SHAPES, "S", (3, 4, 5, 6))     # the training row's shape too
    monkeypatch.setattr(benchmark, "TRAINING_VOCAB", 7)
    path = tmp_path / "b.json"
    status = benchmark.main(["--quick", "--shapes", "S", "--cells", "GRU", "--repeats", "1", "--threads", "1",
                             "--json", str(path)])
    out = capsys.readouterr().out
    row = __import__("json").loads(path.read_text())["training_loop"]
    assert status == 0 and row["check"]["status"] == "ok" and row["check"]["max_err"] <= 5e-5
    assert row["ratio"] == pytest.approx(row["torch"]["median_ms"] / row["rnncore"]["median_ms"])
    line = "| embedding -> GRU -> linear, cross-entropy, Adam | 3, 4, 7, 5, 6 | 1 | ok "
    assert line in out and "| %.2fx |" % row["ratio"] in out
    assert out.index(line) < out.index("Compared: ")            # the summary stays last


def test_bench_refuses_to_time_a_conversion_that_disagrees(capsys, monkeypatch):
    from rnncore import benchmark
    monkeypatch.setitem(benchmark.TOLERANCE, "float32", -1.0)
    opts = benchmark.finish_options(benchmark.build_parser().parse_args(["--quick", "--threads", "1"]))
    row = benchmark.training_loop_row(opts, 0, TINY_TRAINING)
    assert row["check"]["status"] == "FAIL" and row["torch"] is None and row["ratio"] is None


def test_bridge_names_do_not_shadow_the_real_packages():
    """rnncore.torch / .onnx / .keras are aliases of rnncore/interop's modules, not files named after
    the packages: a script run from inside rnncore/ (sys.path[0] = that folder) imports the real
    torch, onnx and keras, and the aliases are the implementation modules."""
    import importlib
    import pathlib
    import subprocess
    import sys
    folder = pathlib.Path(rt.__file__).resolve().parents[1]
    for name, impl in (("torch", "torch_modules"), ("onnx", "onnx_io"), ("keras", "keras_io")):
        assert not (folder / f"{name}.py").exists() and not (folder / name).exists()
        assert importlib.import_module(f"rnncore.{name}") is importlib.import_module(f"rnncore.interop.{impl}")
    code = "import torch, onnx; print(torch.__file__); print(onnx.__file__)"
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(folder)!r}); {code}"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert len(out) == 2 and all(str(folder) not in path for path in out), out
