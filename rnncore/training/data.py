"""Data for the trainer: a corpus and its character vocabulary, and batches of sequences.

A batch is time-major, as the layers: ``Batch(X, Y, lengths)`` with

    X        (T, B) integer ids, or (T, B, I) floats
    Y        (T, B) ids / (T, B, O) floats for a target at every step, or (B,) / (B, O) for one per sequence
    lengths  (B,) valid steps per sequence, or None when every sequence has T steps

Two sources, both with ``batches(rng)`` (one epoch, in an order drawn from rng; rng=None: fixed order):

    SequenceDataset   independent sequences of any lengths, shuffled and padded per batch
    TextStreams       one long text cut into batch_size parallel streams (each a long sequence:
                      the trainer's truncated BPTT carries the hidden state along it, chunk by chunk)

Truncated BPTT cuts a batch's time axis into chunks: ``tbptt_chunks(batch, k)`` yields them, each a
``Chunk`` (its time range, the sequences still running, the chunk's own Batch), for any model that
carries its state from one chunk to the next (rnncore.training.trainer's protocol).
"""
import copy
import math
import os
import sysconfig
from collections import namedtuple

import numpy as np

from rnncore.engine.validation import check_lengths

__all__ = ["Batch", "CharVocab", "DataError", "read_text", "stdlib_corpus", "split_text",
           "unigram_entropy", "SequenceDataset", "TextStreams", "pad_sequences", "Chunk", "tbptt_chunks"]

Batch = namedtuple("Batch", ["X", "Y", "lengths"])

# One truncated-BPTT chunk of a Batch, time steps [start, end):
#   rows   (R,) int64, sorted: the batch's sequences still running at `start` (finished ones drop out,
#          since the layers need lengths >= 1)
#   keep   (R,) int64: where each of `rows` sits in the previous chunk's rows, i.e. which part of the
#          state carried out of the previous chunk continues here; None at the start of a batch
#          (the state is reset: batches hold independent sequences)
#   batch  Batch(X[start:end, rows], Y[start:end, rows] (per-step targets) or Y[rows] (one per
#          sequence), lengths within the chunk or None when the batch has none)
#   ends   (R,) bool: the sequence's last valid step is in this chunk (where a one-per-sequence
#          target is scored)
#   last   True for the batch's last chunk
Chunk = namedtuple("Chunk", ["start", "end", "rows", "keep", "batch", "ends", "last"])


class DataError(ValueError):
    """The data cannot be used (missing, empty, binary, characters outside the vocabulary...)."""


# ---------------------------------------------------------------------------------------------
# text


def read_text(path):
    """Read a UTF-8 text file; DataError if it is missing, a directory, empty or binary."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"no such file: {path}")
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, expected a text file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if not raw.strip():
        raise DataError(f"{path} is empty, expected some text")
    if b"\x00" in raw:
        raise DataError(f"{path} looks binary (it contains NUL bytes), expected a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {e.start}), "
                        f"expected a UTF-8 text file") from None
    return text.replace("\r\n", "\n")


def stdlib_corpus(max_chars=2_000_000, max_file_chars=100_000):
    """Python source from the standard library, the same on every run of the same Python.

    The public top-level modules (``<stdlib>/*.py`` not starting with "_", at most max_file_chars
    long so that no single module dominates), in name order, every k-th of them with k chosen so that
    the selection spans the whole alphabet and holds about max_chars characters; then cut to
    max_chars. Returns (text, list of the file names used).
    """
    stdlib = sysconfig.get_paths()["stdlib"]
    try:
        names = sorted(n for n in os.listdir(stdlib) if n.endswith(".py") and not n.startswith("_"))
    except OSError:
        names = []
    sources = []
    for name in names:
        try:
            with open(os.path.join(stdlib, name), encoding="utf-8") as f:
                src = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        if src.strip() and len(src) <= max_file_chars and "\x00" not in src:
            src = src.replace("\r\n", "\n")
            sources.append((name, src if src.endswith("\n") else src + "\n"))
    if not sources:
        raise DataError(f"no Python source found in the standard library at {stdlib}; use --data FILE")
    total = sum(len(src) for _, src in sources)
    stride = max(1, math.ceil(total / max_chars))
    picked = sources[::stride]
    text = "".join(src for _, src in picked)[:max_chars]
    used, n = [], 0
    for name, src in picked:
        if n >= len(text):
            break
        used.append(name)
        n += len(src)
    return text, used


def split_text(text, val_fraction=0.1, max_val_chars=None):
    """(train, val): the last val_fraction of the text (at most max_val_chars) is held out."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: expected a number in [0, 1), got {val_fraction!r}")
    n_val = int(len(text) * val_fraction)
    if max_val_chars is not None:
        n_val = min(n_val, max_val_chars)
    if n_val == 0:
        return text, ""
    return text[:-n_val], text[-n_val:]


def unigram_entropy(ids, vocab_size):
    """Entropy in bits per symbol of the symbol frequencies: what a model that ignores context gets."""
    counts = np.bincount(np.asarray(ids), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


class CharVocab:
    """Characters <-> integer ids, ids in sorted character order."""

    def __init__(self, chars):
        chars = list(chars)
        if len(set(chars)) != len(chars) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise ValueError("chars: expected distinct single characters")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        try:
            return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as e:
            raise DataError(f"character {e.args[0]!r} is not in the model's vocabulary "
                            f"({len(self.chars)} characters)") from None

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)


# ---------------------------------------------------------------------------------------------
# batching


def pad_sequences(seqs, pad_value=0, dtype=None):
    """Stack sequences of shape (L_i, ...) into a time-major (T, B, ...) array; returns (array, lengths)."""
    seqs = [np.asarray(s) if dtype is None else np.asarray(s, dtype=dtype) for s in seqs]
    if not seqs:
        raise ValueError("pad_sequences: expected at least one sequence, got 0")
    lengths = check_lengths([len(s) for s in seqs], max(len(s) for s in seqs), len(seqs), "sequence lengths",
                            dtype=np.int64)
    tail = seqs[0].shape[1:]
    out = np.full((int(lengths.max()), len(seqs)) + tail, pad_value, dtype=seqs[0].dtype)
    for b, s in enumerate(seqs):
        if s.shape[1:] != tail:
            raise ValueError(f"sequence {b}: expected steps of shape {tail}, got {s.shape[1:]}")
        out[: len(s), b] = s
    return out, lengths


class SequenceDataset:
    """Independent sequences (variable lengths) with a target per step or per sequence.

    inputs:  list of (L_i,) id arrays or (L_i, I) float arrays
    targets: list of (L_i,) / (L_i, O) per-step targets, or one id / (O,) array per sequence
    Each epoch shuffles (if shuffle) and yields padded batches with their lengths.
    """

    def __init__(self, inputs, targets, batch_size, shuffle=True):
        if len(inputs) != len(targets):
            raise ValueError(f"targets: expected {len(inputs)} (one per input), got {len(targets)}")
        if not inputs:
            raise ValueError("inputs: expected at least one sequence")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.inputs = [np.asarray(x) for x in inputs]
        self.targets = [np.asarray(y) for y in targets]
        # a target with as many dims as its input has one value per step: (L,) ids or (L, O) floats
        self.per_step = self.targets[0].ndim == self.inputs[0].ndim
        for i, (x, y) in enumerate(zip(self.inputs, self.targets)):
            expected = (len(x),) + self.targets[0].shape[1:] if self.per_step else self.targets[0].shape
            if y.shape != expected:
                raise ValueError(f"targets[{i}]: expected shape {expected}, got {y.shape}")
        self.batch_size = int(batch_size)
        self.shuffle = shuffle

    def __len__(self):
        return math.ceil(len(self.inputs) / self.batch_size)

    def batches(self, rng=None):
        order = rng.permutation(len(self.inputs)) if (self.shuffle and rng is not None) \
            else np.arange(len(self.inputs))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            X, lengths = pad_sequences([self.inputs[i] for i in idx])
            ys = [self.targets[i] for i in idx]
            Y = pad_sequences(ys)[0] if self.per_step else np.stack(ys)
            yield Batch(X, Y, lengths)


class TextStreams:
    """A long id sequence cut into batch_size parallel streams, for a language model.

    Stream b reads ids[offset + b*L : offset + (b+1)*L] (inputs) and the same shifted by one
    (targets, the next character). Each epoch is one batch of shape (L, batch_size): a long sequence
    per stream, which the trainer cuts into truncated-BPTT chunks, carrying the hidden state. With
    random_offset, each epoch first rotates the text by an offset drawn from the epoch's rng, so the
    streams and chunk boundaries move from epoch to epoch.
    """

    def __init__(self, ids, batch_size, random_offset=True):
        ids = np.asarray(ids, dtype=np.int64)
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.stream_len = (len(ids) - 1) // batch_size
        if self.stream_len < 2:
            raise DataError(f"text too short: {len(ids)} characters for {batch_size} streams; "
                            f"use a longer text or a smaller batch size")
        self.ids = ids
        self.batch_size = int(batch_size)
        self.random_offset = random_offset
        self._streams = (0, self.batch_size)    # the streams batches() builds (shard)

    def __len__(self):
        return 1

    def batches(self, rng=None):
        L = self.stream_len
        lo, hi = self._streams
        offset = 0
        if self.random_offset and rng is not None:
            # rotate the text: the streams (and chunk boundaries) start elsewhere each epoch
            offset = int(rng.integers(0, len(self.ids)))
        # streams lo..hi-1 of the rotated text: window[j] = ids[(offset + lo*L + j) % len(ids)]
        window = np.take(self.ids, np.arange(offset + lo * L, offset + hi * L + 1), mode="wrap")
        # X[t, b] = window[b*L + t],  Y[t, b] = window[b*L + t + 1]
        X = np.ascontiguousarray(window[:-1].reshape(hi - lo, L).T)
        Y = np.ascontiguousarray(window[1:].reshape(hi - lo, L).T)
        yield Batch(X, Y, None)

    def shard(self, lo, hi):
        """The same source reduced to streams [lo, hi) (columns lo..hi-1 of every batch): it reads
        only those streams' text, and draws from the generator as the whole source does."""
        if not 0 <= lo <= hi <= self.batch_size:
            raise ValueError(f"streams: expected 0 <= lo <= hi <= {self.batch_size}, got [{lo}, {hi})")
        part = copy.copy(self)
        part._streams = (int(lo), int(hi))
        return part


def tbptt_chunks(batch, k=None, per_step=True, start=0, prev_rows=None, stop=None):
    """The truncated-BPTT chunks of a Batch(X, Y, lengths): Chunk after Chunk of k time steps.

    k: steps per chunk (None: the whole batch in one chunk). per_step: Y holds a target per step
    (T, B, ...) and is cut with X; otherwise one per sequence (B, ...). start, prev_rows: resume in
    the middle of a batch, at time step `start`, after a chunk whose rows were prev_rows (None: the
    first chunk yielded starts a fresh state). Chunks stop at the last valid step of the longest
    sequence, so every valid (t, b) is in exactly one chunk and padding past every length in none;
    stop: run the chunks to this time step instead (a shard of a batch, rnncore.distributed, takes
    the chunks of the whole batch: past its own sequences' ends they hold no rows).

    Where the cuts fall. Targets per step: at k, 2k, ... from t = 0. One target per sequence
    (per_step=False): at stop - k, stop - 2k, ... counted back from the end of the longest sequence
    (stop), so that the first chunk is the short one and the last holds k steps. A one-per-sequence
    target is scored in the chunk where its sequence ends and the gradient stops at that chunk's
    start: cut from the end, a sequence as long as the batch's longest gets its gradient through its
    last k steps (truncated BPTT's k steps back from the loss), a shorter one through its last 1 to
    k steps; cut from t = 0, a sequence of k + 1 steps would get it through one step only.
    """
    X, Y, lengths = batch
    T, B = X.shape[:2]
    k = T if k is None else k
    if lengths is not None:
        lengths = np.asarray(lengths)
    ends_at = np.full(B, T) if lengths is None else lengths
    if stop is None:
        stop = int(ends_at.max()) if B else 0
    s = start
    while s < stop:
        # per step: the next multiple of k; per sequence: the next stop - j k
        e = min(T, s + k) if per_step else s + (stop - s - 1) % k + 1
        if lengths is None:
            rows, lens = np.arange(B), None
        else:
            rows = np.flatnonzero(lengths > s)
            lens = np.minimum(lengths[rows] - s, e - s)
        keep = None if prev_rows is None else np.searchsorted(prev_rows, rows)
        Yc = Y[s:e, rows] if per_step else Y[rows]
        yield Chunk(s, e, rows, keep, Batch(X[s:e, rows], Yc, lens), ends_at[rows] <= e, e >= stop)
        prev_rows, s = rows, e
