"""Bridges between rnncore and other frameworks, each behind its own optional dependency:

    rnncore.torch   torch.nn.RNN / LSTM / GRU running rnncore's kernels, and convert()  (extra: torch)
    rnncore.onnx    export to and load from the standard ONNX RNN / GRU / LSTM operators (extra: onnx)
    rnncore.keras   Keras 3 SimpleRNN / LSTM / GRU / Bidirectional weights in and out  (extra: keras)

The implementations live here (rnncore.interop.torch_modules, .onnx_io, .keras_io); the public names
above are aliases of them (rnncore/__init__.py), not files: a file rnncore/torch.py would be imported
as ``torch`` itself by a script run from inside the package folder. Nothing here is imported by
``import rnncore``.
"""
