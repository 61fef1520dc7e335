"""The recurrent layers (RNN, LSTM, GRU: cell / layer / stack, numpy in and out, torch.nn's names) and
the pure-numpy reference they are tested against.

    layers/recurrent.py    RNN, LSTM, GRU and their stack driver; streaming (initial_state, step)
    layers/reference.py    the equations in numpy, the first oracle (also rnncore.reference)
    layers/feedback.py     FeedbackRNN, the gated-feedback RNN (Chung et al. 2015): every layer reads
                           every layer's state at t-1
    layers/reference_feedback.py   its equations in numpy
"""
from rnncore.layers.feedback import FeedbackRNN
from rnncore.layers.recurrent import GRU, LSTM, RNN, StreamState

__all__ = ["RNN", "LSTM", "GRU", "FeedbackRNN", "StreamState"]
