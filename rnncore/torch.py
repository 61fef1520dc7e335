"""rnncore's kernels inside PyTorch code: ``RNN``, ``LSTM``, ``GRU`` are torch.nn's modules (same
arguments, parameters and forward, PackedSequence included) whose forward and backward run rnncore's
compiled stack; ``convert(model)`` swaps those of a model. Needs torch (``pip install rnncore[torch]``).
See rnncore/interop/torch_modules.py."""
from rnncore.interop.torch_modules import GRU, LSTM, RNN, convert

__all__ = ["RNN", "LSTM", "GRU", "convert"]
