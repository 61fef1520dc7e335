"""rnncore: a Cython-compiled CPU engine for recurrent neural networks.

Layers with torch.nn's arguments, parameter names, shapes and defaults, numpy in and numpy out:

    >>> import numpy as np, rnncore
    >>> lstm = rnncore.LSTM(input_size=8, hidden_size=16, num_layers=2, batch_first=True, seed=0)
    >>> out, (h_n, c_n), backprop = lstm.forward_train(np.ones((4, 10, 8), np.float32))
    >>> dx, (dh0, dc0) = backprop(np.ones_like(out))      # parameter gradients land in lstm.grads
"""
import importlib
import importlib.abc
import importlib.util
import os
import sys

try:
    from rnncore import _kernels
except ImportError:
    _here = os.path.dirname(os.path.abspath(__file__))
    if any(f.startswith("_kernels.") and f.endswith((".so", ".pyd")) for f in os.listdir(_here)):
        raise  # the compiled core is there but does not load: its own message says why
    raise ImportError(
        f"rnncore is being imported from its source folder ({_here}), which holds no compiled core "
        f"(rnncore._kernels was never built there). If you installed rnncore with `pip install .`, run "
        f"Python from another directory than the clone's root, so that the installed rnncore is imported "
        f"instead of this folder. To work on the source itself, build it in place: `pip install -e .` "
        f"(or `python setup.py build_ext --inplace`).") from None
from rnncore.engine.config import config_context, get_config, set_config
from rnncore.engine.threads import get_num_threads, set_num_threads, threads
from rnncore.layers.feedback import FeedbackRNN
from rnncore.layers.recurrent import GRU, LSTM, RNN
from rnncore.models.sequence import SequenceModel
from rnncore.training.trainer import NonFiniteError, Trainer, load_model

__version__ = "0.1.0"

openmp_enabled = _kernels.openmp_enabled


# The modules of rnncore's first, flat layout keep their names: `import rnncore.optim` (and pickles
# and checkpoints that name such a module) gets the module where it now lives, loaded on first use.
# The bridges' public names are served the same way: rnncore.torch, rnncore.onnx and rnncore.keras
# are their implementations in rnncore/interop. No file of the package is named torch.py, onnx.py or
# keras.py: a script run from inside the package folder would import it in place of the real one.
_RENAMED = {f"rnncore.{old}": f"rnncore.{new}" for old, new in {
    "reference": "layers.reference", "trainer": "training.trainer", "optim": "training.optim",
    "losses": "training.losses", "checkpoint": "training.checkpoint", "data": "training.data",
    "architectures": "models.architectures", "seq2seq": "models.seq2seq",
    "estimators": "models.estimators", "diagnostics": "models.diagnostics",
    "torch": "interop.torch_modules", "onnx": "interop.onnx_io", "keras": "interop.keras_io"}.items()}


class _RenamedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in _RENAMED else None

    def create_module(self, spec):
        return importlib.import_module(_RENAMED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _RenamedModules) for f in sys.meta_path):
    sys.meta_path.append(_RenamedModules())


def get_include():
    """The folder that holds the rnncore package's .pxd files, for an outside Cython extension that
    cimports rnncore._kernels: ``cythonize(ext, include_path=[rnncore.get_include()])`` (needed when
    rnncore is installed in editable mode; a regular install is also found on sys.path). See the
    README's "Embedding rnncore in Cython code"."""
    import os
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


__all__ = ["RNN", "LSTM", "GRU", "FeedbackRNN", "SequenceModel", "Trainer", "NonFiniteError", "load_model",
           "set_num_threads", "get_num_threads", "threads", "openmp_enabled", "config_context",
           "get_config", "set_config", "get_include", "__version__"]
