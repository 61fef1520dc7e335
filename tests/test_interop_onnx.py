"""rnncore.onnx: export to the standard ONNX RNN / GRU / LSTM operators, checked by ONNX Runtime, and load
back (rnncore's own files and torch.onnx.export's).

Oracles: ONNX Runtime running the exported file (outputs and final states within 1e-5 of rnncore's,
float32, over cells x hidden sizes x layers x directions x layouts x lengths x nonzero hx, and for
SequenceModels every head), and torch.nn running the module that torch.onnx.export wrote (the loaded
layer must compute what the module computes). A file loaded back gives the same object: the same
configuration, bit-identical parameters and outputs.
"""
import itertools
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import rnncore
import rnncore.onnx as ro

CELLS = {"rnn_tanh": (rnncore.RNN, {}), "rnn_relu": (rnncore.RNN, {"nonlinearity": "relu"}),
         "lstm": (rnncore.LSTM, {}), "lstm_peephole": (rnncore.LSTM, {"peephole": True}),
         "gru": (rnncore.GRU, {}), "gru_reset_before": (rnncore.GRU, {"reset_after": False})}
HIDDEN = [5, 16, 17, 32, 33]
I, T, B = 4, 5, 3
LENGTHS = np.array([3, 5, 1], np.int32)
TOL = 1e-5
WORST = {"ort": 0.0, "torch files": 0.0}    # largest absolute difference seen (for the notes)


def ort_run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def states(state):
    return list(state) if isinstance(state, tuple) else [state]


def check_close(got, want, label, key="ort", tol=TOL):
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (label, i, a.shape, b.shape)
        err = float(np.max(np.abs(a - b)))
        WORST[key] = max(WORST[key], err)
        assert err <= tol, f"{label}: output {i} differs by {err:.2e} (> {tol:g})"


def layer_inputs(layer, rng, lengths, with_hx, batch=B, steps=T):
    x = rng.standard_normal((batch, steps, I) if layer.batch_first else (steps, batch, I)).astype(np.float32)
    hx, feeds = None, {"input": x}
    if lengths is not None:
        feeds["sequence_lens"] = lengths
    if with_hx:
        shape = (layer.num_layers * layer.num_directions, batch, layer.hidden_size)
        h0 = rng.uniform(-0.8, 0.8, shape).astype(np.float32)
        feeds["h_0"], hx = h0, h0
        if layer.mode == "LSTM":
            c0 = rng.uniform(-1.5, 1.5, shape).astype(np.float32)
            feeds["c_0"], hx = c0, (h0, c0)
    return x, hx, feeds


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("num_layers,bidirectional", list(itertools.product([1, 2], [False, True])))
def test_onnx_runtime_computes_what_rnncore_computes(tmp_path, cell, num_layers, bidirectional):
    """Every layout x lengths x hx, each on one of the hidden sizes in turn (all five appear); then the
    file loaded back is the same layer, bit for bit."""
    cls, extra = CELLS[cell]
    rng = np.random.default_rng(num_layers + 2 * bidirectional)
    for i, (bf, lengths, with_hx) in enumerate(itertools.product([False, True], [None, LENGTHS], [False, True])):
        hidden = HIDDEN[(i + num_layers + 2 * bidirectional) % len(HIDDEN)]
        label = f"{cell} H{hidden} L{num_layers} bi={bidirectional} bf={bf} lengths={lengths} hx={with_hx}"
        layer = cls(I, hidden, num_layers=num_layers, bidirectional=bidirectional, batch_first=bf,
                    seed=hidden, **extra)
        path = tmp_path / f"{i}.onnx"
        ro.export(layer, path, lengths=lengths is not None, hx=with_hx)
        x, hx, feeds = layer_inputs(layer, rng, lengths, with_hx)
        out, state = layer(x, hx, lengths)
        check_close(ort_run(path, feeds), [out] + states(state), label)
        back = ro.load(path)
        assert type(back) is cls and back.config == layer.config, label
        for name, value in layer.params.items():
            np.testing.assert_array_equal(back.params[name], value, err_msg=f"{label}: {name}")
        out2, state2 = back(x, hx, lengths)
        for a, b in zip([out2] + states(state2), [out] + states(state)):
            np.testing.assert_array_equal(a, b, err_msg=label)


def test_float64_layers_round_trip(tmp_path):
    """ONNX Runtime runs the recurrent operators in float32 only; a float64 layer's file is checked by
    onnx's checker and loads back as the same float64 layer."""
    for cls, extra in CELLS.values():
        layer = cls(I, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=1, **extra)
        path = tmp_path / "f64.onnx"
        model = ro.export(layer, path, lengths=True, hx=True)
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
        back = ro.load(path)
        assert back.dtype == np.float64 and back.config == layer.config
        for name, value in layer.params.items():
            np.testing.assert_array_equal(back.params[name], value, err_msg=name)


def test_batch_and_time_axes_are_dynamic(tmp_path):
    layer = rnncore.GRU(I, 6, num_layers=2, bidirectional=True, seed=0)
    path = tmp_path / "gru.onnx"
    ro.export(layer, path, lengths=True)
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in onnx.load(path).graph.input]
    assert dims == [["time", "batch", I], ["batch"]]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for steps, batch in ((1, 1), (9, 2), (4, 7)):
        x = rng.standard_normal((steps, batch, I)).astype(np.float32)
        lengths = rng.integers(1, steps + 1, batch).astype(np.int32)
        out, h_n = layer(x, lengths=lengths)
        check_close(session.run(None, {"input": x, "sequence_lens": lengths}), [out, h_n], f"T{steps} B{batch}")


MODELS = [
    ("tokens-many_to_many", dict(cell="lstm", vocab_size=11, embedding_dim=6, head="many_to_many")),
    ("onehot-many_to_one-bi", dict(cell="gru", vocab_size=9, head="many_to_one", bidirectional=True,
                                   num_layers=2, output_size=3)),
    ("dense-regression", dict(cell="rnn", input_size=I, output_size=2, head="regression", num_layers=2,
                              rnn_options={"nonlinearity": "relu"})),
    ("dense-many_to_one-peephole", dict(cell="lstm", input_size=I, output_size=4, head="many_to_one",
                                        bidirectional=True, rnn_options={"peephole": True})),
    ("tokens-gru-reset-before", dict(cell="gru", vocab_size=8, embedding_dim=5, num_layers=2,
                                     rnn_options={"reset_after": False})),
]


@pytest.mark.parametrize("name,config", MODELS, ids=[m[0] for m in MODELS])
def test_sequence_models_export_with_embedding_and_head(tmp_path, name, config):
    model = rnncore.SequenceModel(hidden_size=7, seed=3, **config)
    rng = np.random.default_rng(1)
    if model.vocab_size is not None:
        X = rng.integers(0, model.vocab_size, (T, B))
    else:
        X = rng.standard_normal((T, B, I)).astype(np.float32)
    LD = model.num_layers * model.rnn.num_directions
    h0 = rng.uniform(-0.5, 0.5, (LD, B, 7)).astype(np.float32)
    hx = (h0, -h0) if config["cell"] == "lstm" else h0
    Y, bp = model.forward(X, lengths=LENGTHS, hx=hx, is_train=False)
    path = tmp_path / "model.onnx"
    ro.export(model, path, lengths=True, hx=True)
    feeds = {"input": X, "sequence_lens": LENGTHS, "h_0": h0}
    if config["cell"] == "lstm":
        feeds["c_0"] = -h0
    check_close(ort_run(path, feeds), [Y] + states(bp.h_n), name)
    back = ro.load(path)
    assert isinstance(back, rnncore.SequenceModel) and back.config == model.config
    for k, v in model.params.items():
        np.testing.assert_array_equal(back.params[k], v, err_msg=k)
    np.testing.assert_array_equal(back.predict(X, lengths=LENGTHS, hx=hx), Y)


TORCH_MODULES = [
    ("rnn_tanh", torch.nn.RNN, {}), ("rnn_relu", torch.nn.RNN, {"nonlinearity": "relu"}),
    ("lstm", torch.nn.LSTM, {}), ("gru", torch.nn.GRU, {}), ("lstm_nobias", torch.nn.LSTM, {"bias": False}),
]


def torch_export(module, x, path, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=dynamo, input_names=["input"],
                          **({} if dynamo else {"dynamic_axes": {"input": {0: "d0", 1: "d1"}}}))


@pytest.mark.parametrize("name,cls,extra", TORCH_MODULES, ids=[m[0] for m in TORCH_MODULES])
def test_loads_what_torch_onnx_export_writes(tmp_path, name, cls, extra):
    """torch.onnx.export (the TorchScript exporter, dynamo=False) of two-layer bidirectional modules,
    both layouts: the loaded layer computes what the module computes (float32), on a batch and length
    other than the traced ones."""
    for bf in (False, True):
        torch.manual_seed(0)
        module = cls(I, 6, num_layers=2, bidirectional=True, batch_first=bf, **extra)
        path = tmp_path / f"{name}-{bf}.onnx"
        torch_export(module, torch.randn(2, 3, I), path, dynamo=False)
        layer = ro.load(path)
        assert layer.batch_first == bf and layer.bias == extra.get("bias", True)
        x = torch.randn(5, 4, I)
        with torch.no_grad():
            want, want_state = module(x)
        out, state = layer(x.numpy())
        check_close([out] + states(state), [want.numpy()] + [s.numpy() for s in states(want_state)],
                    f"{name} bf={bf}", key="torch files")


def test_loads_what_the_dynamo_exporter_writes(tmp_path):
    """torch.onnx.export's default (dynamo) exporter writes LSTM / GRU nodes too (it unrolls nn.RNN,
    which load then refuses: no recurrent node)."""
    torch.manual_seed(0)
    module = torch.nn.GRU(I, 6, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(2, 3, I)
    torch_export(module, x, tmp_path / "gru.onnx", dynamo=True)
    layer = ro.load(tmp_path / "gru.onnx")
    assert layer.mode == "GRU" and layer.batch_first and layer.num_layers == 2 and layer.bidirectional
    with torch.no_grad():
        want, want_h = module(x)
    out, h_n = layer(x.numpy())
    check_close([out, h_n], [want.numpy(), want_h.numpy()], "dynamo GRU", key="torch files")


def edited(path, tmp_path, edit):
    """The exported file with its first recurrent node changed by edit(node, graph)."""
    model = onnx.load(path)
    node = next(n for n in model.graph.node if n.op_type in ("RNN", "GRU", "LSTM"))
    edit(node, model.graph)
    out = tmp_path / "edited.onnx"
    onnx.save(model, out)
    return out


def test_refusals_say_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="proj_size=2 cannot be exported"):
        ro.export(rnncore.LSTM(3, 4, proj_size=2), tmp_path / "p.onnx")
    with pytest.raises(TypeError, match="RNN, LSTM, GRU or SequenceModel, got dict"):
        ro.export({}, tmp_path / "p.onnx")
    with pytest.raises(TypeError, match="lengths must be True or False"):
        ro.export(rnncore.GRU(3, 4), tmp_path / "p.onnx", lengths=1)
    path = tmp_path / "lstm.onnx"
    ro.export(rnncore.LSTM(3, 4, num_layers=2), path)
    set_attr = onnx.helper.make_attribute
    with pytest.raises(ValueError, match="clip=.*no rnncore equivalent"):
        ro.load(edited(path, tmp_path, lambda n, g: n.attribute.append(set_attr("clip", 3.0))))
    with pytest.raises(ValueError, match="activations .* are not rnncore's"):
        ro.load(edited(path, tmp_path, lambda n, g: n.attribute.append(
            set_attr("activations", ["Sigmoid", "Relu", "Tanh"]))))
    with pytest.raises(ValueError, match="direction='reverse'"):
        ro.load(edited(path, tmp_path, lambda n, g: n.attribute.append(set_attr("direction", "reverse"))))

    def second_reads_input(node, graph):
        rec = [n for n in graph.node if n.op_type == "LSTM"]
        rec[1].input[0] = "input"
    with pytest.raises(ValueError, match="one chain"):
        ro.load(edited(path, tmp_path, second_reads_input))

    def weights_from_input(node, graph):
        graph.input.append(onnx.helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [1, 16, 3]))
        node.input[1] = "W"
    with pytest.raises(ValueError, match="not a constant"):
        ro.load(edited(path, tmp_path, weights_from_input))
    nothing = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])]))
    onnx.save(nothing, tmp_path / "relu.onnx")
    with pytest.raises(ValueError, match=r"no RNN, GRU or LSTM node \(its operators: \['Relu'\]\)"):
        ro.load(tmp_path / "relu.onnx")
