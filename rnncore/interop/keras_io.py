"""Keras 3 recurrent weights in and out (public entry: ``rnncore.keras``).

    from_keras(layer_or_model)   an rnncore layer computing what the Keras layers compute
    to_keras(layer)              a keras.Sequential (Input, then one Keras layer per rnncore layer)
    save(layer, path)            to_keras(layer) saved as .keras (architecture and weights) or .weights.h5
    load(path, model=None)       from_keras of a .keras file, or of ``model`` with a .weights.h5 loaded

How the weights map (Keras keeps W^T, PyTorch and rnncore W; Keras' layers are batch-major, so the
rnncore layer is built with batch_first=True):
    SimpleRNN  kernel (I, H), recurrent_kernel (H, H), bias (H,)    -> weight_ih, weight_hh, bias_ih
    LSTM       gates i, f, c, o: PyTorch's order i, f, g, o; one bias -> bias_ih (bias_hh = 0)
    GRU        gates z, r, h -> PyTorch's r, z, n; reset_after=True: bias (2, 3H) = (bias_ih, bias_hh),
               PyTorch's form; reset_after=False: bias (3H,) -> bias_ih, the original form (rnncore's
               GRU(reset_after=False)). Keras' h = z*h + (1-z)*hh is PyTorch's.
    Bidirectional(merge_mode="concat")  forward_layer, backward_layer -> the _l{k} and _l{k}_reverse
    a model   its recurrent layers, in order, as one stack (each one reads the one before)
On the way out, a bias_hh that Keras has no place for (LSTM, SimpleRNN, GRU reset_after=False) is
added into the one bias Keras keeps: the same function.

Refused (ValueError naming the setting): activations other than tanh (relu too for SimpleRNN) and a
recurrent_activation other than sigmoid, go_backwards outside Bidirectional, merge_mode other than
"concat", layers that are not built, a model with other layers than recurrent ones, a stack whose layers
differ in kind, size or direction; on the way out, proj_size and peephole (Keras' layers have neither).
Dropout is a training setting: it is not carried.
"""
import os

import numpy as np

from rnncore.layers import recurrent as _recurrent

__all__ = ["from_keras", "to_keras", "save", "load"]

_GRU_ORDER = [1, 0, 2]          # Keras' z, r, h <-> PyTorch's r, z, n (its own inverse)
_GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}


def _keras():
    try:
        import keras
    except ImportError:
        raise ImportError("rnncore.keras needs Keras 3: pip install rnncore[keras] (any backend; "
                          "KERAS_BACKEND=torch needs no TensorFlow)") from None
    if int(keras.__version__.split(".")[0]) < 3:
        raise ImportError(f"rnncore.keras needs Keras 3, found keras {keras.__version__}")
    return keras


def _reorder(w, kind, axis=0):
    """Cut axis into gate blocks and swap Keras' and PyTorch's GRU order (other cells keep theirs)."""
    if kind != "GRU":
        return np.asarray(w)
    blocks = np.split(np.asarray(w), 3, axis=axis)
    return np.concatenate([blocks[i] for i in _GRU_ORDER], axis=axis)


def _describe(keras, layer):
    """What one Keras recurrent layer (or Bidirectional of one) is: kind, units, settings, and the
    weights of each direction as (kernel, recurrent_kernel, bias or None)."""
    where = f"Keras layer {layer.name!r} ({type(layer).__name__})"
    kinds = {keras.layers.SimpleRNN: "SimpleRNN", keras.layers.LSTM: "LSTM", keras.layers.GRU: "GRU"}
    if isinstance(layer, keras.layers.Bidirectional):
        if layer.merge_mode != "concat":
            raise ValueError(f"{where}: merge_mode={layer.merge_mode!r}; rnncore's bidirectional layers "
                             f"concatenate the directions (merge_mode='concat')")
        directions = [layer.forward_layer, layer.backward_layer]
        if directions[0].go_backwards or not directions[1].go_backwards:
            raise ValueError(f"{where}: expected a forward layer and a backward (go_backwards) one")
    elif type(layer) in kinds:
        if layer.go_backwards:
            raise ValueError(f"{where}: go_backwards=True outside Bidirectional (it returns the sequence "
                             f"reversed) has no rnncore equivalent")
        directions = [layer]
    else:
        raise ValueError(f"{where}: rnncore reads keras.layers.SimpleRNN, LSTM, GRU and Bidirectional of "
                         f"them (and models made only of these), got {type(layer).__name__}")
    descs = []
    for d in directions:
        if type(d) not in kinds:
            raise ValueError(f"{where}: holds a {type(d).__name__}, expected SimpleRNN, LSTM or GRU")
        if not d.built:
            raise ValueError(f"{where} is not built (it has no weights yet): call it on an input, or "
                             f"build the model with keras.Input")
        kind = kinds[type(d)]
        act = keras.activations.serialize(d.activation)
        act = act if isinstance(act, str) else act.get("config", {}).get("name", act)
        allowed = ("tanh", "relu") if kind == "SimpleRNN" else ("tanh",)
        if act not in allowed:
            raise ValueError(f"{where}: activation={act!r}; rnncore's {kind} has {' or '.join(allowed)}")
        if kind != "SimpleRNN":
            rec = keras.activations.serialize(d.recurrent_activation)
            rec = rec if isinstance(rec, str) else rec.get("config", {}).get("name", rec)
            if rec != "sigmoid":
                raise ValueError(f"{where}: recurrent_activation={rec!r}; rnncore's gates use 'sigmoid'")
        weights = d.get_weights()
        descs.append({"kind": kind, "units": int(d.units), "activation": act, "use_bias": bool(d.use_bias),
                      "reset_after": bool(getattr(d, "reset_after", True)), "input_size": int(weights[0].shape[0]),
                      "weights": (weights[0], weights[1], weights[2] if d.use_bias else None)})
    first = descs[0]
    for other in descs[1:]:
        if {k: v for k, v in other.items() if k != "weights"} != {k: v for k, v in first.items() if k != "weights"}:
            raise ValueError(f"{where}: its forward and backward layers differ in their settings")
    return dict(first, bidirectional=len(descs) == 2, directions=[d["weights"] for d in descs], name=where)


def _recurrent_layers(keras, obj):
    if isinstance(obj, keras.Model):
        layers = [l for l in obj.layers if not isinstance(l, keras.layers.InputLayer)]
        if not layers:
            raise ValueError(f"the Keras model {obj.name!r} has no layers")
        return layers
    if isinstance(obj, keras.layers.Layer):
        return [obj]
    raise TypeError(f"from_keras takes a Keras layer or model, got {type(obj).__name__}")


def from_keras(obj):
    """The rnncore layer (batch_first=True, Keras' layout) of a built Keras SimpleRNN / LSTM / GRU,
    a Bidirectional of one, or a model made of such layers in a chain (one stack)."""
    keras = _keras()
    descs = [_describe(keras, l) for l in _recurrent_layers(keras, obj)]
    first = descs[0]
    D = 2 if first["bidirectional"] else 1
    for k, desc in enumerate(descs[1:], 1):
        same = all(desc[key] == first[key] for key in ("kind", "units", "activation", "use_bias",
                                                        "reset_after", "bidirectional"))
        if not same or desc["input_size"] != D * first["units"]:
            raise ValueError(f"{desc['name']} does not continue the stack that {first['name']} starts: rnncore "
                             f"stacks layers of one kind, size, activation, bias and direction, each reading "
                             f"the previous one's output")
    kind, H = first["kind"], first["units"]
    dtype = np.result_type(first["directions"][0][0].dtype, np.float32)
    config = dict(mode=kind, input_size=first["input_size"], hidden_size=H, num_layers=len(descs),
                  bias=first["use_bias"], batch_first=True, bidirectional=first["bidirectional"], dtype=dtype)
    if kind == "SimpleRNN":
        config.update(mode="RNN_RELU" if first["activation"] == "relu" else "RNN_TANH",
                      nonlinearity=first["activation"])
    elif kind == "GRU":
        config["reset_after"] = first["reset_after"]
    layer = _recurrent._RecurrentStack.from_config(config)
    params = {}
    for k, desc in enumerate(descs):
        for d, (kernel, recurrent, bias) in enumerate(desc["directions"]):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            params["weight_ih" + sfx] = _reorder(kernel.T, kind)
            params["weight_hh" + sfx] = _reorder(recurrent.T, kind)
            if bias is not None:
                two = kind == "GRU" and desc["reset_after"]
                params["bias_ih" + sfx] = _reorder(bias[0] if two else bias, kind)
                params["bias_hh" + sfx] = _reorder(bias[1], kind) if two else np.zeros_like(bias)
    layer.load_state_dict(params)
    return layer


def to_keras(layer):
    """A keras.Sequential computing what ``layer`` computes, on (batch, time, input_size) input (Keras'
    layout, whatever the layer's batch_first): Input, then per rnncore layer a SimpleRNN / LSTM / GRU
    (Bidirectional when the layer is), each with return_sequences=True, in the layer's dtype."""
    keras = _keras()
    if not isinstance(layer, _recurrent._RecurrentStack):
        raise TypeError(f"to_keras takes an rnncore RNN, LSTM or GRU, got {type(layer).__name__}")
    if layer.proj_size or layer.peephole:
        raise ValueError(f"Keras' LSTM has no {'proj_size' if layer.proj_size else 'peepholes'}: this "
                         f"{type(layer).__name__} cannot be written as Keras layers")
    kind = {"RNN_TANH": "SimpleRNN", "RNN_RELU": "SimpleRNN", "LSTM": "LSTM", "GRU": "GRU"}[layer.mode]
    dtype = layer.dtype.name
    D, H = layer.num_directions, layer.hidden_size
    stack = [keras.Input((None, layer.input_size), dtype=dtype)]
    for k in range(layer.num_layers):
        options = dict(units=H, use_bias=layer.bias, return_sequences=True, dtype=dtype)
        if kind == "SimpleRNN":
            options["activation"] = "relu" if layer.mode == "RNN_RELU" else "tanh"
        if kind == "GRU":
            options["reset_after"] = layer.reset_after
        cell = getattr(keras.layers, kind)(**options)
        stack.append(keras.layers.Bidirectional(cell) if D == 2 else cell)
    model = keras.Sequential(stack)
    for k, keras_layer in enumerate(model.layers):
        weights = []
        for d in range(D):
            p = layer._short(layer.params, k * D + d)
            weights += [_reorder(p["w_ih"], kind).T, _reorder(p["w_hh"], kind).T]
            if layer.bias:
                if kind == "GRU" and layer.reset_after:
                    weights.append(np.stack([_reorder(p["b_ih"], kind), _reorder(p["b_hh"], kind)]))
                else:
                    weights.append(_reorder(p["b_ih"] + p["b_hh"], kind))
        keras_layer.set_weights(weights)
    return model


def _kind_of_path(path):
    name = os.fspath(path)
    for suffix in (".weights.h5", ".keras"):
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"expected a path ending in .keras (architecture and weights) or .weights.h5 "
                     f"(weights only), got {name!r}")


def save(layer, path):
    """Write ``to_keras(layer)`` to ``path``: a .keras file (architecture and weights) or .weights.h5."""
    kind = _kind_of_path(path)
    model = to_keras(layer)
    if kind == ".keras":
        model.save(os.fspath(path))
    else:
        model.save_weights(os.fspath(path))
    return model


def load(path, model=None):
    """The rnncore layer of a Keras file: a .keras model (made of recurrent layers), or a .weights.h5
    loaded into ``model`` (the Keras model it was saved from: a weights file holds no architecture)."""
    keras = _keras()
    kind = _kind_of_path(path)
    if kind == ".keras":
        if model is not None:
            raise ValueError("a .keras file holds its own architecture: give no model")
        return from_keras(keras.saving.load_model(os.fspath(path)))
    if model is None:
        raise ValueError(".weights.h5 holds weights only: pass model=, the Keras model they were saved "
                         "from (or save a .keras file, which holds the architecture too)")
    model.load_weights(os.fspath(path))
    return from_keras(model)
