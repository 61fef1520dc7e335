"""Bridges between rnncore and other frameworks, each behind its own optional dependency:

    rnncore.torch   torch.nn.RNN / LSTM / GRU running rnncore's kernels, and convert()  (extra: torch)
    rnncore.onnx    export to and load from the standard ONNX RNN / GRU / LSTM operators (extra: onnx)
    rnncore.keras   Keras 3 SimpleRNN / LSTM / GRU / Bidirectional weights in and out  (extra: keras)

The implementations live here (rnncore.interop.torch_modules, .onnx_io, .keras_io); the public modules
above are thin entry points. Nothing here is imported by ``import rnncore``.
"""
