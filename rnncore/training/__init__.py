"""Training: the Trainer and what it drives.

    training/trainer.py     Trainer (one model protocol, truncated BPTT over data.tbptt_chunks),
                            NonFiniteError, load_model (also rnncore.trainer)
    training/optim.py       SGD, RMSprop, Adam, clipping, schedules (also rnncore.optim)
    training/losses.py      cross-entropy, MSE, the one softmax (also rnncore.losses)
    training/data.py        batches, corpora, the chunk iterator (also rnncore.data)
    training/checkpoint.py  atomic, checksummed, pickle-free checkpoints (also rnncore.checkpoint)
"""
