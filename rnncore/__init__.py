"""rnncore: a Cython-compiled CPU engine for recurrent neural networks.

Layers with torch.nn's arguments, parameter names, shapes and defaults, numpy in and numpy out:

    >>> import numpy as np, rnncore
    >>> lstm = rnncore.LSTM(input_size=8, hidden_size=16, num_layers=2, batch_first=True, seed=0)
    >>> out, (h_n, c_n), backprop = lstm.forward_train(np.ones((4, 10, 8), np.float32))
    >>> dx, (dh0, dc0) = backprop(np.ones_like(out))      # parameter gradients land in lstm.grads
"""
from rnncore import _kernels
from rnncore._config import config_context, get_config, set_config
from rnncore._threads import get_num_threads, set_num_threads, threads
from rnncore.layers import GRU, LSTM, RNN
from rnncore.models import SequenceModel
from rnncore.trainer import NonFiniteError, Trainer, load_model

__version__ = "0.1.0"

openmp_enabled = _kernels.openmp_enabled



def get_include():
    """The folder that holds the rnncore package's .pxd files, for an outside Cython extension that
    cimports rnncore._kernels: ``cythonize(ext, include_path=[rnncore.get_include()])`` (needed when
    rnncore is installed in editable mode; a regular install is also found on sys.path). See the
    README's "Embedding rnncore in Cython code"."""
    import os
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


__all__ = ["RNN", "LSTM", "GRU", "SequenceModel", "Trainer", "NonFiniteError", "load_model",
           "set_num_threads", "get_num_threads", "threads", "openmp_enabled", "config_context",
           "get_config", "set_config", "get_include", "__version__"]
