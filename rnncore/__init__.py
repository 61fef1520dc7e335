"""rnncore: a Cython-compiled CPU engine for recurrent neural networks.

Layers with torch.nn's arguments, parameter names, shapes and defaults, numpy in and numpy out:

    >>> import numpy as np, rnncore
    >>> lstm = rnncore.LSTM(input_size=8, hidden_size=16, num_layers=2, batch_first=True, seed=0)
    >>> out, (h_n, c_n), backprop = lstm.forward_train(np.ones((4, 10, 8), np.float32))
    >>> dx, (dh0, dc0) = backprop(np.ones_like(out))      # parameter gradients land in lstm.grads
"""
from rnncore import _kernels
from rnncore._threads import get_num_threads, set_num_threads, threads
from rnncore.layers import GRU, LSTM, RNN
from rnncore.models import SequenceModel
from rnncore.trainer import NonFiniteError, Trainer, load_model

__version__ = "0.1.0"

openmp_enabled = _kernels.openmp_enabled

__all__ = ["RNN", "LSTM", "GRU", "SequenceModel", "Trainer", "NonFiniteError", "load_model",
           "set_num_threads", "get_num_threads", "threads", "openmp_enabled", "__version__"]
