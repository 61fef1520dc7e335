"""rnncore layers and SequenceModels as standard ONNX graphs, and back (public entry: ``rnncore.onnx``).

Export writes ONNX's own recurrent operators, one node per layer (a stack is a chain of nodes, each
layer's output ``Y`` (T, D, B, H) transposed and reshaped to (T, B, D*H) for the next), so any ONNX
runtime runs the file with its own kernels:

    rnncore             ONNX operator (opset 17)
    RNN tanh / relu     RNN, activations ["Tanh"] / ["Relu"] (per direction)
    LSTM                LSTM, gates reordered i,f,g,o -> i,o,f,c; peephole=True -> P = [w_ci, w_co, w_cf]
    GRU                 GRU, gates reordered r,z,n -> z,r,h; linear_before_reset = 1 for reset_after=True
                        (PyTorch's form), 0 for reset_after=False (the original, Keras' reset_after=False)
    bidirectional       direction="bidirectional" (forward and reverse stacked on the D axis)
    lengths             an int32 input ``sequence_lens`` (batch,), fed to every node (export(lengths=True))
    hx                  inputs ``h_0`` (and ``c_0``) (num_layers * D, batch, H), sliced per node (hx=True)
    batch_first         a Transpose before and after the chain (ONNX's layout=0 is time-major)
    SequenceModel       embedding (Gather, or OneHot), the stack, the head (MatMul + Add per step, or for
                        "many_to_one" a Gemm on the last layer's final states, which are the outputs at
                        each sequence's last valid step and, for the reverse half, at t = 0)
Batch and time are dynamic axes ("batch", "time"). The graph has the layer's dtype (ONNX Runtime
runs these operators in float32 only; float64 files are valid ONNX and load back). The rnncore configuration rides along in the
model's metadata (key "rnncore"), so load() rebuilds the same object (batch_first, model head, ...).
Refused: proj_size (no ONNX operator projects the hidden state), dropout has no effect at inference
and is not exported (kept in the metadata).

Load reads any graph whose recurrent operators form one chain (the files above, and those that
torch.onnx.export writes for torch.nn.RNN / LSTM / GRU, either exporter): weights, recurrent biases and
peepholes from the nodes' constant inputs (initializers, Constant nodes, or constant-folded
subgraphs), the rest from the node attributes. Refused, with what was found: recurrent nodes that do
not chain (another kind, size or direction), activations other than the cell's defaults (ONNX allows
per-node choices PyTorch has no name for), ``clip``, ``input_forget``, ``layout`` = 1.
"""
import json

import numpy as np

from rnncore.engine.validation import check_bool
from rnncore.layers import recurrent as _recurrent
from rnncore.models.sequence import Embedding, OneHot, SequenceModel

__all__ = ["export", "load"]

OPSET = 17
IR_VERSION = 8          # what opset 17 needs; older runtimes refuse newer IR versions
_OPS = {"RNN_TANH": "RNN", "RNN_RELU": "RNN", "LSTM": "LSTM", "GRU": "GRU"}
# gate blocks: ONNX's order as indices of PyTorch's (and back)
_TO_ONNX = {"RNN": [0], "LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2]}
_FROM_ONNX = {"RNN": [0], "LSTM": [0, 2, 3, 1], "GRU": [1, 0, 2]}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("rnncore.onnx needs the onnx package: pip install rnncore[onnx] "
                          "(or pip install onnx onnxruntime)") from None
    return onnx


def _gates(w, order):
    """w's first axis cut into len(order) gate blocks, reordered."""
    blocks = np.split(np.asarray(w), len(order), axis=0)
    return np.concatenate([blocks[i] for i in order], axis=0)


# ------------------------------------------------------------------------------------------ export

class _Graph:
    """Nodes and initializers being built, with fresh names."""

    def __init__(self, onnx):
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, stem):
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, stem, value):
        name = self.name(stem)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op, inputs, n_out=1, stem=None, **attrs):
        while inputs and inputs[-1] == "":
            inputs = inputs[:-1]
        outs = [self.name(stem or op.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op, inputs, outs, **attrs))
        return outs if n_out > 1 else outs[0]


def _stack(g, layer, x, h0, c0, lens):
    """The chain of recurrent nodes of ``layer`` on the time-major x (T, B, I): names of the output
    (T, B, D*H) and of h_n (and c_n) (L*D, B, H)."""
    op = _OPS[layer.mode]
    D, H, L = layer.num_directions, layer.hidden_size, layer.num_layers
    dt = layer.dtype
    finals_h, finals_c = [], []
    for k in range(L):
        W, R, Bias, P = [], [], [], []
        for d in range(D):
            p = layer._short(layer.params, k * D + d)
            W.append(_gates(p["w_ih"], _TO_ONNX[op]))
            R.append(_gates(p["w_hh"], _TO_ONNX[op]))
            if layer.bias:
                Bias.append(np.concatenate([_gates(p["b_ih"], _TO_ONNX[op]), _gates(p["b_hh"], _TO_ONNX[op])]))
            if layer.peephole:
                P.append(np.concatenate([p["w_ci"], p["w_co"], p["w_cf"]]))
        inputs = [x, g.const(f"W_l{k}", np.stack(W).astype(dt)), g.const(f"R_l{k}", np.stack(R).astype(dt)),
                  g.const(f"B_l{k}", np.stack(Bias).astype(dt)) if Bias else "", lens or ""]
        layer_states = []
        for state in (h0, c0) if op == "LSTM" else (h0,):
            if state is None:
                layer_states.append("")
                continue
            idx = [g.const("starts", np.array([k * D], np.int64)), g.const("ends", np.array([(k + 1) * D], np.int64)),
                   g.const("axes", np.array([0], np.int64))]
            layer_states.append(state if L == 1 else g.node("Slice", [state] + idx))
        inputs += layer_states
        if op == "LSTM":
            inputs.append(g.const(f"P_l{k}", np.stack(P).astype(dt)) if P else "")
        attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
        if op == "RNN":
            attrs["activations"] = ["Relu" if layer.mode == "RNN_RELU" else "Tanh"] * D
        if op == "GRU":
            attrs["linear_before_reset"] = int(layer.reset_after)
        outs = g.node(op, inputs, 3 if op == "LSTM" else 2, stem=f"{op}_l{k}", **attrs)
        finals_h.append(outs[1])
        if op == "LSTM":
            finals_c.append(outs[2])
        # Y (T, D, B, H) -> (T, B, D, H) -> (T, B, D*H)
        y = g.node("Transpose", [outs[0]], perm=[0, 2, 1, 3])
        x = g.node("Reshape", [y, g.const("shape", np.array([0, 0, D * H], np.int64))])
    h_n = finals_h[0] if L == 1 else g.node("Concat", finals_h, axis=0)
    c_n = None
    if op == "LSTM":
        c_n = finals_c[0] if L == 1 else g.node("Concat", finals_c, axis=0)
    return x, h_n, c_n, finals_h[-1]


def export(obj, path, *, lengths=False, hx=False):
    """Write ``obj`` (an rnncore RNN / LSTM / GRU, or a SequenceModel) to ``path`` as an ONNX model
    (opset 17) of the standard RNN / LSTM / GRU operators; see this module's docstring.

    Graph inputs: ``input`` ((time, batch, features), or (batch, time, features) for a batch_first
    layer; token ids (time, batch) int64 for a SequenceModel on tokens), and when asked
    ``sequence_lens`` (batch,) int32 (``lengths=True``) and ``h_0`` / ``c_0`` (``hx=True``).
    Outputs: ``output``, ``h_n`` (and ``c_n``). Returns the onnx.ModelProto written."""
    onnx = _onnx()
    model = obj if isinstance(obj, SequenceModel) else None
    layer = model.rnn if model is not None else obj
    if not isinstance(layer, _recurrent._RecurrentStack):
        raise TypeError(f"export takes an rnncore RNN, LSTM, GRU or SequenceModel, got {type(obj).__name__}")
    if layer.proj_size:
        raise ValueError(f"proj_size={layer.proj_size} cannot be exported: ONNX's LSTM operator has no "
                         f"projection of the hidden state (export an LSTM without proj_size)")
    lengths, hx = check_bool(lengths, "lengths"), check_bool(hx, "hx")
    helper, TP = onnx.helper, onnx.TensorProto
    ftype = TP.FLOAT if layer.dtype == np.float32 else TP.DOUBLE
    g = _Graph(onnx)
    D, H, LD = layer.num_directions, layer.hidden_size, layer.num_layers * layer.num_directions
    inputs, outputs = [], []
    if model is None:
        dims = ["batch", "time"] if layer.batch_first else ["time", "batch"]
        inputs.append(helper.make_tensor_value_info("input", ftype, dims + [layer.input_size]))
        x = g.node("Transpose", ["input"], perm=[1, 0, 2]) if layer.batch_first else "input"
    elif model.embedding is None:
        inputs.append(helper.make_tensor_value_info("input", ftype, ["time", "batch", model.input_size]))
        x = "input"
    else:
        inputs.append(helper.make_tensor_value_info("input", TP.INT64, ["time", "batch"]))
        if isinstance(model.embedding, OneHot):
            x = g.node("OneHot", ["input", g.const("depth", np.array(model.vocab_size, np.int64)),
                                  g.const("values", np.array([0, 1], layer.dtype))], axis=-1)
        else:
            x = g.node("Gather", [g.const("embedding.weight", model.embedding.params["weight"]), "input"], axis=0)
    lens = h0 = c0 = None
    if lengths:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TP.INT32, ["batch"]))
        lens = "sequence_lens"
    if hx:
        inputs.append(helper.make_tensor_value_info("h_0", ftype, [LD, "batch", H]))
        h0 = "h_0"
        if layer.mode == "LSTM":
            inputs.append(helper.make_tensor_value_info("c_0", ftype, [LD, "batch", H]))
            c0 = "c_0"
    y, h_n, c_n, last_h = _stack(g, layer, x, h0, c0, lens)
    if model is None:
        out_dims = (["batch", "time"] if layer.batch_first else ["time", "batch"]) + [D * H]
        if layer.batch_first:
            y = g.node("Transpose", [y], perm=[1, 0, 2])
    elif model.head_kind == "many_to_one":
        # the last layer's final states are its outputs at each sequence's last valid step (forward)
        # and at t = 0 (reverse): (D, B, H) -> (B, D*H)
        last = g.node("Reshape", [g.node("Transpose", [last_h], perm=[1, 0, 2]),
                                  g.const("shape", np.array([0, D * H], np.int64))])
        y = g.node("Gemm", [last, g.const("head.weight", model.head.params["weight"]),
                            g.const("head.bias", model.head.params["bias"])], transB=1)
        out_dims = ["batch", model.output_size]
    else:
        y = g.node("Add", [g.node("MatMul", [y, g.const("head.weight_t", model.head.params["weight"].T)]),
                           g.const("head.bias", model.head.params["bias"])])
        out_dims = ["time", "batch", model.output_size]
    g.nodes.append(helper.make_node("Identity", [y], ["output"]))
    g.nodes.append(helper.make_node("Identity", [h_n], ["h_n"]))
    outputs.append(helper.make_tensor_value_info("output", ftype, out_dims))
    outputs.append(helper.make_tensor_value_info("h_n", ftype, [LD, "batch", H]))
    if c_n is not None:
        g.nodes.append(helper.make_node("Identity", [c_n], ["c_n"]))
        outputs.append(helper.make_tensor_value_info("c_n", ftype, [LD, "batch", H]))
    graph = helper.make_graph(g.nodes, "rnncore", inputs, outputs, g.inits)
    onnx_model = helper.make_model(graph, producer_name="rnncore",
                                   opset_imports=[helper.make_opsetid("", OPSET)])
    onnx_model.ir_version = IR_VERSION
    meta = ({"kind": "SequenceModel", "config": model.config} if model is not None
            else {"kind": "layer", "config": layer.config})
    helper.set_model_props(onnx_model, {"rnncore": json.dumps(meta)})
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, path)
    return onnx_model


# ------------------------------------------------------------------------------------------ load

class _Constants:
    """Values of the graph's constant tensors: initializers, Constant nodes, and outputs of nodes whose
    inputs are all constant (evaluated with onnx's reference runtime, as a constant folder would)."""

    def __init__(self, onnx, graph):
        self.onnx = onnx
        self.values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        self.producer = {out: n for n in graph.node for out in n.output}
        self.graph_inputs = {i.name for i in graph.input} - set(self.values)

    def __call__(self, name):
        if not name:
            return None
        if name in self.values:
            return self.values[name]
        node = self.producer.get(name)
        if node is None or node.op_type in ("RNN", "GRU", "LSTM"):
            return None
        if node.op_type == "Constant":
            from onnx.reference import ReferenceEvaluator
            value = ReferenceEvaluator(node).run(None, {})[0]
        else:
            args = [self(i) for i in node.input if i]
            if any(a is None for a in args):
                return None
            from onnx.reference import ReferenceEvaluator
            value = ReferenceEvaluator(node).run(None, dict(zip([i for i in node.input if i], args)))[
                list(node.output).index(name)]
        self.values[name] = np.asarray(value)
        return self.values[name]

    def ancestors(self, name):
        """Every tensor name name depends on (through any node)."""
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n in seen or not n:
                continue
            seen.add(n)
            node = self.producer.get(n)
            if node is not None:
                todo.extend(node.input)
        return seen


def _attrs(onnx, node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _read_stack(onnx, graph, consts):
    """(config, params in PyTorch's names, the first node) of the graph's chain of recurrent nodes."""
    nodes = [n for n in graph.node if n.op_type in ("RNN", "GRU", "LSTM")]
    if not nodes:
        raise ValueError(f"the ONNX graph has no RNN, GRU or LSTM node (its operators: "
                         f"{sorted({n.op_type for n in graph.node})}); a graph that unrolls the recurrence "
                         f"into matrix products, as torch.onnx.export's default exporter does for "
                         f"torch.nn.RNN, cannot be read back into a layer: export with dynamo=False")
    op = nodes[0].op_type
    first = _attrs(onnx, nodes[0])
    config = {"mode": op, "hidden_size": int(first["hidden_size"]), "num_layers": len(nodes)}
    params, bias, peephole = {}, None, None
    for k, node in enumerate(nodes):
        a = _attrs(onnx, node)
        where = f"recurrent node {k} ({node.op_type} {node.name or node.output[0]!r})"
        if node.op_type != op or int(a.get("hidden_size", 0)) != config["hidden_size"]:
            raise ValueError(f"{where}: rnncore.onnx.load reads one chain of recurrent nodes of one kind and "
                             f"size, got {op} hidden_size={config['hidden_size']} first, then {node.op_type} "
                             f"hidden_size={a.get('hidden_size')}")
        direction = a.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if direction == "reverse":
            raise ValueError(f"{where}: direction='reverse' alone has no rnncore (or PyTorch) layer; "
                             f"expected 'forward' or 'bidirectional'")
        if k == 0:
            config["bidirectional"] = direction == "bidirectional"
        elif config["bidirectional"] != (direction == "bidirectional"):
            raise ValueError(f"{where}: direction {direction!r} differs from the first node's")
        for attr, ok in (("clip", None), ("input_forget", 0), ("layout", 0), ("activation_alpha", None),
                         ("activation_beta", None)):
            if attr in a and a[attr] != ok and not (ok == 0 and int(a[attr]) == 0):
                raise ValueError(f"{where}: attribute {attr}={a[attr]!r} has no rnncore equivalent")
        D = 2 if config["bidirectional"] else 1
        acts = [s.decode() if isinstance(s, bytes) else s for s in a.get("activations", [])]
        if op == "RNN":
            kinds = {s.lower() for s in acts} or {"tanh"}
            if len(kinds) != 1 or not kinds <= {"tanh", "relu"}:
                raise ValueError(f"{where}: activations {acts} are not rnncore's: expected Tanh or Relu, the "
                                 f"same in both directions")
            mode = "RNN_RELU" if kinds == {"relu"} else "RNN_TANH"
            if k and mode != config["mode"]:
                raise ValueError(f"{where}: activation {acts} differs from the first node's")
            config["mode"] = mode
            config["nonlinearity"] = "relu" if mode == "RNN_RELU" else "tanh"
        elif acts and [s.lower() for s in acts] != [s.lower() for s in _DEFAULT_ACTIVATIONS[op] * D]:
            raise ValueError(f"{where}: activations {acts} are not rnncore's {_DEFAULT_ACTIVATIONS[op]}")
        if op == "GRU":
            lbr = bool(a.get("linear_before_reset", 0))
            if k and lbr != config["reset_after"]:
                raise ValueError(f"{where}: linear_before_reset differs from the first node's")
            config["reset_after"] = lbr
        if k and nodes[k - 1].output[0] not in consts.ancestors(node.input[0]):
            raise ValueError(f"{where} does not read the output of the node before it: rnncore.onnx.load "
                             f"reads one chain of recurrent nodes (a stack)")
        inputs = list(node.input) + [""] * 8
        W, R, B, P = consts(inputs[1]), consts(inputs[2]), consts(inputs[3]), consts(inputs[7]) if op == "LSTM" else None
        for name, value, given in (("W", W, inputs[1]), ("R", R, inputs[2]), ("B", B, inputs[3]),
                                   ("P", P, inputs[7] if op == "LSTM" else "")):
            if given and value is None:
                raise ValueError(f"{where}: its input {name} ({given!r}) is not a constant of the graph "
                                 f"(weights computed at run time cannot be loaded)")
        H, GH = config["hidden_size"], {"RNN": 1, "GRU": 3, "LSTM": 4}[op] * config["hidden_size"]
        if W.shape[:2] != (D, GH) or R.shape != (D, GH, H):
            raise ValueError(f"{where}: W {W.shape} or R {R.shape} do not fit hidden_size={H}, {D} direction(s)")
        if k == 0:
            config["input_size"] = int(W.shape[2])
        elif W.shape[2] != D * H:
            raise ValueError(f"{where}: its input size {W.shape[2]} is not the previous layer's output {D * H}")
        layer_bias = B is not None
        bias = layer_bias if bias is None else bias
        if bias != layer_bias:
            raise ValueError(f"{where}: has {'a' if layer_bias else 'no'} bias B, unlike the first node")
        layer_peep = P is not None and bool(np.any(P))
        peephole = layer_peep if peephole is None else peephole
        if peephole != layer_peep:
            raise ValueError(f"{where}: peepholes P differ from the first node's (some layers only)")
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            params["weight_ih" + sfx] = _gates(W[d], _FROM_ONNX[op])
            params["weight_hh" + sfx] = _gates(R[d], _FROM_ONNX[op])
            if bias:
                params["bias_ih" + sfx] = _gates(B[d][:GH], _FROM_ONNX[op])
                params["bias_hh" + sfx] = _gates(B[d][GH:], _FROM_ONNX[op])
            if peephole:
                params["weight_ci" + sfx], params["weight_co" + sfx], params["weight_cf" + sfx] = \
                    P[d][:H], P[d][H:2 * H], P[d][2 * H:]
    config["bias"] = bias
    if op == "LSTM":
        config["peephole"] = peephole
    config["dtype"] = np.asarray(params["weight_ih_l0"]).dtype
    return config, params, nodes[0]


def _reads_transposed_input(consts, graph, node):
    """Whether the first recurrent node reads a graph input through Transpose(perm=[1, 0, 2]): the
    batch_first form of torch.onnx.export's files."""
    producer = consts.producer.get(node.input[0])
    if producer is None or producer.op_type != "Transpose":
        return False
    perm = [a for a in producer.attribute if a.name == "perm"]
    return bool(perm) and list(perm[0].ints) == [1, 0, 2] and producer.input[0] in consts.graph_inputs


def load(path):
    """The rnncore layer (RNN / LSTM / GRU) or SequenceModel an ONNX file holds.

    A file written by rnncore.onnx.export comes back as the object exported (its configuration is in
    the file's metadata; every weight is read from the graph). Any other graph whose recurrent
    operators form one chain (e.g. torch.onnx.export of a torch.nn.RNN / LSTM / GRU) gives the layer
    they compute: its kind, sizes, directions, bias and peepholes from the nodes, batch_first when the
    graph's input reaches the first node through a (batch, time) -> (time, batch) Transpose.
    What does not map onto a layer is refused with ValueError (see this module's docstring)."""
    onnx = _onnx()
    proto = onnx.load(path)
    graph = proto.graph
    consts = _Constants(onnx, graph)
    config, params, first = _read_stack(onnx, graph, consts)
    meta = {p.key: p.value for p in proto.metadata_props}
    saved = json.loads(meta["rnncore"]) if "rnncore" in meta else None
    if saved is not None and saved.get("kind") == "SequenceModel":
        model = SequenceModel.from_config(saved["config"])
        state = {f"rnn.{k}": v for k, v in params.items()}
        if isinstance(model.embedding, Embedding):
            state["embedding.weight"] = _named_initializer(consts, "embedding.weight")
        if model.head_kind == "many_to_one":
            state["head.weight"] = _named_initializer(consts, "head.weight")
        else:
            state["head.weight"] = _named_initializer(consts, "head.weight_t").T
        state["head.bias"] = _named_initializer(consts, "head.bias")
        model.load_state_dict(state)
        return model
    if saved is not None:
        layer = _recurrent._RecurrentStack.from_config(saved["config"])
    else:
        config["batch_first"] = _reads_transposed_input(consts, graph, first)
        layer = _recurrent._RecurrentStack.from_config(config)
    layer.load_state_dict(params)
    return layer


def _named_initializer(consts, stem):
    """The initializer export named ``stem_<n>``."""
    found = [v for k, v in consts.values.items() if k.rsplit("_", 1)[0] == stem]
    if len(found) != 1:
        raise ValueError(f"the rnncore model's graph has {len(found)} initializers named {stem}_<n>, expected one")
    return found[0]
