"""rnncore.keras: Keras 3 SimpleRNN / LSTM / GRU / Bidirectional weights in and out, checked against
Keras itself, run on its PyTorch backend (no TensorFlow).

Oracle: the Keras layers computing on the same weights (outputs, and final states for single layers
with return_state), both ways: Keras layers with random weights read into rnncore (from_keras), and
rnncore layers written as Keras layers (to_keras); over cells (both GRU forms, SimpleRNN tanh and
relu) x hidden sizes x layers x directions, float32; and .keras / .weights.h5 files.
"""
import itertools
import os

os.environ["KERAS_BACKEND"] = "torch"      # before keras is imported: Keras' PyTorch backend

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnncore  # noqa: E402
import rnncore.keras as rk  # noqa: E402

# Keras' own numpy-2 notices about its variables' __array__, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

KINDS = {"simple_tanh": ("SimpleRNN", {}), "simple_relu": ("SimpleRNN", {"activation": "relu"}),
         "lstm": ("LSTM", {}), "gru": ("GRU", {"reset_after": True}),
         "gru_reset_before": ("GRU", {"reset_after": False})}
HIDDEN = [5, 16, 17, 32, 33]
I, T, B = 4, 5, 3
TOL = 1e-5
WORST = {"from_keras": 0.0, "to_keras": 0.0}    # largest absolute difference seen (for the notes)


def numpy(y):
    return [keras.ops.convert_to_numpy(v) for v in (y if isinstance(y, (list, tuple)) else [y])]


def keras_model(kind, hidden, num_layers, bidirectional, rng, return_state=False):
    name, options = KINDS[kind]
    layers = [keras.Input((None, I))]
    for _ in range(num_layers):
        cell = getattr(keras.layers, name)(hidden, return_sequences=True, return_state=return_state, **options)
        layers.append(keras.layers.Bidirectional(cell) if bidirectional else cell)
    if return_state:      # one layer, functional, to reach the states
        inp = layers[0]
        model = keras.Model(inp, layers[1](inp))
    else:
        model = keras.Sequential(layers)
    for layer in model.layers:    # random weights everywhere (Keras starts biases at 0)
        layer.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    return model


def close(got, want, label, key):
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (label, i, a.shape, b.shape)
        err = float(np.max(np.abs(a - b)))
        WORST[key] = max(WORST[key], err)
        assert err <= TOL, f"{label}: output {i} differs by {err:.2e}"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("num_layers,bidirectional", list(itertools.product([1, 2], [False, True])))
def test_both_ways_against_keras(kind, num_layers, bidirectional):
    hidden = HIDDEN[(list(KINDS).index(kind) + num_layers + 2 * bidirectional) % len(HIDDEN)]
    label = f"{kind} H{hidden} L{num_layers} bi={bidirectional}"
    rng = np.random.default_rng(hidden)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    model = keras_model(kind, hidden, num_layers, bidirectional, rng)
    layer = rk.from_keras(model)
    assert layer.batch_first and layer.num_layers == num_layers and layer.bidirectional == bidirectional
    close([layer(x)[0]], numpy(model(x)), label, "from_keras")

    cls = {"SimpleRNN": rnncore.RNN, "LSTM": rnncore.LSTM, "GRU": rnncore.GRU}[KINDS[kind][0]]
    extra = {"simple_relu": {"nonlinearity": "relu"}, "gru_reset_before": {"reset_after": False}}.get(kind, {})
    ours = cls(I, hidden, num_layers=num_layers, bidirectional=bidirectional, batch_first=True, seed=hidden,
               **extra)
    for p in ours.params.values():       # biases of both kinds nonzero (summed on the way out)
        p[...] = rng.uniform(-0.5, 0.5, p.shape)
    close(numpy(rk.to_keras(ours)(x)), [ours(x)[0]], label, "to_keras")


@pytest.mark.parametrize("kind", list(KINDS))
def test_final_states_against_keras(kind):
    """One bidirectional layer with return_state: Keras' [output, h_fwd, (c_fwd), h_bwd, (c_bwd)]
    against rnncore's output and h_n (c_n)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    model = keras_model(kind, 6, 1, True, rng, return_state=True)
    out, state = rk.from_keras(model)(x)
    got = numpy(model(x))
    if KINDS[kind][0] == "LSTM":
        want = [out, state[0][0], state[1][0], state[0][1], state[1][1]]
    else:
        want = [out, state[0], state[1]]
    close(got, want, kind, "from_keras")


def test_keras_and_weights_files(tmp_path):
    layer = rnncore.GRU(I, 7, num_layers=2, bidirectional=True, batch_first=True, reset_after=False, seed=0)
    x = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
    want = layer(x)[0]
    rk.save(layer, tmp_path / "gru.keras")
    back = rk.load(tmp_path / "gru.keras")
    assert back.config == layer.config
    close([back(x)[0]], [want], ".keras", "from_keras")
    model = rk.save(layer, tmp_path / "gru.weights.h5")
    for w in model.weights:                       # the architecture, with other weights
        w.assign(np.zeros(w.shape, np.float32))
    close([rk.load(tmp_path / "gru.weights.h5", model=model)(x)[0]], [want], ".weights.h5", "from_keras")
    close([keras.ops.convert_to_numpy(keras.saving.load_model(tmp_path / "gru.keras")(x))], [want],
          "Keras reads it", "to_keras")


def test_refusals_say_what_was_expected(tmp_path):
    def built(layer):
        keras.Sequential([keras.Input((None, I)), layer])
        return layer
    with pytest.raises(ValueError, match="merge_mode='sum'"):
        rk.from_keras(built(keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True),
                                                       merge_mode="sum")))
    with pytest.raises(ValueError, match="activation='sigmoid'"):
        rk.from_keras(built(keras.layers.GRU(3, activation="sigmoid")))
    with pytest.raises(ValueError, match="recurrent_activation='hard_sigmoid'"):
        rk.from_keras(built(keras.layers.LSTM(3, recurrent_activation="hard_sigmoid")))
    with pytest.raises(ValueError, match="go_backwards"):
        rk.from_keras(built(keras.layers.SimpleRNN(3, go_backwards=True)))
    with pytest.raises(ValueError, match="not built"):
        rk.from_keras(keras.layers.LSTM(3))
    with pytest.raises(ValueError, match="got Dense"):
        rk.from_keras(keras.Sequential([keras.Input((None, I)), keras.layers.LSTM(3, return_sequences=True),
                                        keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="does not continue the stack"):
        rk.from_keras(keras.Sequential([keras.Input((None, I)), keras.layers.LSTM(3, return_sequences=True),
                                        keras.layers.GRU(3)]))
    with pytest.raises(TypeError, match="Keras layer or model, got ndarray"):
        rk.from_keras(np.zeros(3))
    with pytest.raises(ValueError, match="no proj_size"):
        rk.to_keras(rnncore.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="no peepholes"):
        rk.to_keras(rnncore.LSTM(3, 4, peephole=True))
    with pytest.raises(ValueError, match=r"\.keras .* or \.weights\.h5"):
        rk.save(rnncore.GRU(3, 4), tmp_path / "gru.h5")
    with pytest.raises(ValueError, match="pass model="):
        rk.load(tmp_path / "x.weights.h5")
