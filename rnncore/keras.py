"""Keras 3 recurrent weights in and out: ``from_keras(layer_or_model)`` (SimpleRNN, LSTM, GRU, both
reset_after forms, Bidirectional, models made of them), ``to_keras(layer)``, ``save(layer, path)`` and
``load(path)`` for .keras / .weights.h5 files. Needs Keras 3 on any backend (``pip install
rnncore[keras]``; KERAS_BACKEND=torch needs no TensorFlow). See rnncore/interop/keras_io.py."""
from rnncore.interop.keras_io import from_keras, load, save, to_keras

__all__ = ["from_keras", "to_keras", "save", "load"]
