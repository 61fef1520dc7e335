"""rnncore layers and SequenceModels as standard ONNX graphs (RNN / GRU / LSTM operators) and back:
``export(layer_or_model, path)``, ``load(path)`` (also reads torch.onnx.export's files of
torch.nn.RNN / LSTM / GRU). Needs onnx (``pip install rnncore[onnx]``, which brings onnxruntime to run
the files). See rnncore/interop/onnx_io.py."""
from rnncore.interop.onnx_io import export, load

__all__ = ["export", "load"]
