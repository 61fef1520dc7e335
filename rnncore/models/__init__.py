"""Models built from the layers, each trainable with the Trainer through its one protocol.

    models/sequence.py       SequenceModel (embedding or features -> recurrent stack -> head), generate
    models/architectures.py  the lecture notes' shapes: OneToMany, OutputFeedbackRNN, AutonomousRNN,
                             forecasting (also rnncore.architectures)
    models/seq2seq.py        encoder-decoder with attention (also rnncore.seq2seq)
    models/estimators.py     scikit-learn's RNNClassifier / RNNRegressor (also rnncore.estimators)
    models/diagnostics.py    gradient flow, first non-finite, gate saturation (also rnncore.diagnostics)
"""
from rnncore.models.sequence import (CELLS, HEADS, Embedding, Linear, OneHot, SequenceModel, generate,
                                     select_state)

__all__ = ["Embedding", "OneHot", "Linear", "SequenceModel", "HEADS", "CELLS", "generate", "select_state"]
