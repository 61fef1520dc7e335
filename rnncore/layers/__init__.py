"""The recurrent layers (RNN, LSTM, GRU: cell / layer / stack, numpy in and out, torch.nn's names) and
the pure-numpy reference they are tested against.

    layers/recurrent.py    RNN, LSTM, GRU and their stack driver; streaming (initial_state, step)
    layers/reference.py    the equations in numpy, the first oracle (also rnncore.reference)
"""
from rnncore.layers.recurrent import GRU, LSTM, RNN, StreamState

__all__ = ["RNN", "LSTM", "GRU", "StreamState"]
