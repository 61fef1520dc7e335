"""Training loop: epochs over batches, truncated BPTT, validation, early stopping, checkpoints.

The model protocol. The Trainer imports no model class: every model (rnncore.models.sequence.SequenceModel,
rnncore.models.architectures, rnncore.models.seq2seq, your own) trains through the same small protocol:

    model.params, model.grads            dicts name -> array (backward passes add into grads, +=)
    model.zero_grad()
    loss, count, backward = model.batch_loss(batch, reduction="mean", is_train=True)
                                         # forward + loss on one batch; count: the targets the mean is
                                         # over; backward() adds the gradient of loss into grads
                                         # (backward is None when is_train=False or count == 0)
    model.config, type(model).from_config(config)         (checkpoints)
    model.state_dict(), model.load_state_dict(d)           (strict)

and two optional parts, each announced by a class attribute:

    uses_trainer_loss = True   batch_loss and chunk_loss also take loss_fn=, the Trainer's `loss`
                               (``loss, dY = loss_fn(Y_hat, target, lengths=, mask=, reduction=)``);
                               other models score themselves and the Trainer's `loss` is not used.
    carries_state = True       truncated BPTT: the model also has
                                   loss, count, backward, state = model.chunk_loss(chunk, state,
                                                                   reduction=, is_train=, loss_fn=)
                               chunk: an rnncore.training.data.Chunk (tbptt_chunks); state: the final state the
                               previous chunk of the same batch returned (None at a batch's start),
                               of which the model keeps the rows chunk.keep; state out: an array or a
                               tuple of two arrays (h, c), carried to the next chunk (and saved in
                               checkpoints). targets_per_step says how tbptt_chunks cuts the targets.

A model that draws random numbers while training (dropout) exposes that generator as
``model.dropout_rng``: checkpoints save and restore its state.

One optimizer step per chunk:

    model.zero_grad()
    loss, count, backward[, state] = model.batch_loss(batch) / model.chunk_loss(chunk, state)
    backward()                                                         # grads += ...
    optimizer.step()                                                   # clip, then update in place

A model without carried state takes one step per batch (its batch is one chunk; tbptt must be None).
Truncated BPTT (``tbptt=k``, carries_state models): rnncore.training.data.tbptt_chunks cuts each batch's time
axis into chunks of k steps. The state at the end of a chunk is the initial state of the next chunk,
as plain numbers: no gradient flows back across a chunk boundary. The state is reset at the start of
every batch, since batches hold independent sequences. With k >= T (or tbptt=None) this is full BPTT.
Sequences that end before a chunk drop out of it (the layers need lengths >= 1); a sequence's
one-per-sequence target ("many_to_one") is scored in the chunk where the sequence ends. A chunk with
nothing to score (count 0) carries the state forward without a step.

Evaluation sums batch_loss(batch, reduction="sum", is_train=False) over the data (for carries_state
models, chunk_loss over chunks of eval_chunk steps with the state carried: the same numbers as one
pass, in bounded memory) and divides by the summed counts.

Everything random comes from one seed: the model's initialisation (its own seed) and the order of
the data (the trainer's generator). A checkpoint holds the parameters, the optimizer's buffers and
step, the position in the epoch (batch, chunk, carried state), the generator's state at the start of
the epoch, and the early-stopping state, so a resumed run computes the same losses as an
uninterrupted one.

Crash safety. A step whose loss or gradient is not finite raises NonFiniteError naming the step
(on_nonfinite="raise", the default) or is skipped without touching the parameters
(on_nonfinite="skip"; the count is in trainer.skipped_steps). A checkpoint is only written
between steps and only when every parameter is finite, so a good checkpoint is never replaced by a
bad one; Ctrl-C (KeyboardInterrupt) leaves the last checkpoint as it was and re-raises.

Stopping cleanly. ``trainer.request_stop()`` (safe from a signal handler or another thread) makes fit
return after the step in progress, with ``trainer.interrupted`` True, having saved the checkpoint as
at the end of fit: ``rnncore train`` calls it on the first Ctrl-C (a second one aborts at once).
With ``best_checkpoint_path``, every evaluation that improves on the best validation loss so far
also saves the whole state there (``trainer.best_step`` says which step it holds), so the best
weights survive a run that later overfits.

Data parallel (rnncore.distributed, over MPI). With ``comm=`` (an mpi4py communicator) or
``distributed=True`` (MPI.COMM_WORLD), every rank runs the same script: rank 0's parameters are
broadcast, each rank trains on its columns of every global batch, and the gradients, losses and
counts are summed over the ranks in rank order (Replicas.reduce_step, between backward and
optimizer.step, so clipping sees the global gradient) — the replicas stay bit-identical. Validation
is summed over the ranks' shards, the progress bar and messages are rank 0's, checkpoints are
written by rank 0 (with the carried state of the whole batch, so any number of ranks resumes them).
check_replicas=True compares a digest of every rank's parameters and optimizer state at the end of
each epoch (trainer.check_replicas() on request). A rank whose training raises stops the job
(rnncore.distributed: rank 0 reports it); NonFiniteError is raised by every rank at the same step.
"""
import contextlib
import importlib
import math
import time

import numpy as np

from rnncore import distributed as dist
from rnncore.training import checkpoint as ckpt
from rnncore.engine import threads as _threads
from rnncore.engine.config import config_context
from rnncore.engine.validation import check_checkpoint, check_choice, check_reduction
from rnncore.layers.recurrent import mark_modified, param_budget
from rnncore.training.data import Chunk, tbptt_chunks
from rnncore.training.losses import mse, softmax_cross_entropy
from rnncore.training.optim import make_optimizer

__all__ = ["Trainer", "NonFiniteError", "load_model", "LOSSES"]

LOSSES = {"cross_entropy": softmax_cross_entropy, "mse": mse}


class NonFiniteError(FloatingPointError):
    """A training step produced a loss or gradient that is NaN or infinite."""


# a checkpoint without a model class comes from the time when SequenceModel was the only model
_DEFAULT_MODEL_CLASS = "rnncore.models.sequence:SequenceModel"


class Trainer:
    """Train a model (the protocol in this module's docstring, e.g. a SequenceModel) with an optimizer
    from rnncore.training.optim.

    loss: "cross_entropy" or "mse" (or a callable ``loss, dY = f(Y, target, lengths=, mask=,
        reduction=)``); reduction: "mean" (per valid target; the default) or "sum".
    tbptt: chunk length k for truncated BPTT (None: whole sequences).
    bptt: "full" keeps every step of a chunk for backward; an int k or "sqrt" keeps the recurrent
        layers' states every k (ceil(sqrt(T))) steps and recomputes the rest during backward: the
        same gradients, bit for bit, in memory ~ T/k + k steps instead of T, for about one more
        forward pass of time (so a sequence of 100,000 steps trains without truncating it). Combines
        with tbptt (each chunk is then checkpointed).
    seed: seeds the generator that orders the data (shuffling, text offsets).
    eval_every: evaluate on the validation data every this many steps (None: at the end of each epoch).
    patience: stop after this many evaluations without an improvement of at least min_delta.
    checkpoint_path, checkpoint_every: save a checkpoint every this many steps and at the end of fit.
    best_checkpoint_path: also save a checkpoint there at each new best validation loss.
    metadata: extra JSON-serializable data stored in every checkpoint (e.g. a vocabulary).
    progress: show a tqdm bar with loss and throughput (None: only on a terminal). loss_in_bits: show losses in bits
        (loss / ln 2), e.g. bits per character for a language model.
    on_eval: called as on_eval(trainer, val_loss) after each evaluation.
    eval_chunk: steps per forward pass when evaluating (memory bound; results do not depend on it).
    blas_threads: numpy's BLAS threads during fit and evaluate (None: leave as is). The head's and
        the optimizer's small products run fastest on one thread; rnncore's kernels have their own.
    on_nonfinite: "raise" (NonFiniteError naming the step) or "skip" (drop that step's update).
    comm, distributed: train data-parallel over the ranks of an mpi4py communicator (distributed=True:
        MPI.COMM_WORLD); see the module docstring. check_replicas: compare the ranks' digests at the
        end of every epoch (DistributedError if they differ).
    """

    def __init__(self, model, optimizer, loss="cross_entropy", reduction="mean", tbptt=None, seed=0,
                 eval_every=None, patience=None, min_delta=0.0, checkpoint_path=None,
                 checkpoint_every=None, metadata=None, progress=False, loss_in_bits=False,
                 on_eval=None, eval_chunk=256, blas_threads=1, on_nonfinite="raise",
                 best_checkpoint_path=None, bptt="full", comm=None, distributed=False,
                 check_replicas=False):
        for name in ("params", "grads", "zero_grad", "batch_loss"):
            if not hasattr(model, name):
                raise TypeError(f"model: expected a SequenceModel or an object with params, grads, zero_grad() "
                                f"and batch_loss(); got {type(model).__name__} without {name!r}")
        check_choice(on_nonfinite, "on_nonfinite", ("raise", "skip"))
        self._carries_state = bool(getattr(model, "carries_state", False))
        if not self._carries_state and tbptt is not None:
            raise ValueError(f"tbptt: {type(model).__name__} trains on whole batches (no carried state, "
                             f"chunk_loss); expected tbptt=None, got {tbptt!r}")
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"loss: expected one of {sorted(LOSSES)} or a callable, got {loss!r}")
            self.loss_name, self.loss_fn = loss, LOSSES[loss]
        else:
            self.loss_name, self.loss_fn = getattr(loss, "__name__", "custom"), loss
        check_reduction(reduction)
        self.bptt = bptt
        self._bptt_checkpoint = None if bptt == "full" else check_checkpoint(bptt, "bptt")
        for name, v in (("tbptt", tbptt), ("eval_every", eval_every), ("patience", patience),
                        ("checkpoint_every", checkpoint_every), ("eval_chunk", eval_chunk)):
            if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
                raise ValueError(f"{name}: expected a positive integer or None, got {v!r}")
        self.model, self.optimizer = model, optimizer
        self.reduction = reduction
        self.tbptt = tbptt
        self.seed = seed
        self.eval_every, self.patience, self.min_delta = eval_every, patience, float(min_delta)
        self.checkpoint_path, self.checkpoint_every = checkpoint_path, checkpoint_every
        self.metadata = dict(metadata or {})
        self.progress, self.loss_in_bits, self.on_eval = progress, loss_in_bits, on_eval
        self.eval_chunk = eval_chunk
        self.blas_threads = None if blas_threads is None else _threads.check_num_threads(blas_threads)
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0
        self.best_checkpoint_path = best_checkpoint_path
        self.best_step = None         # the step of the best validation loss (None: no evaluation yet)
        self.saved = {}               # path -> step, of every checkpoint this trainer wrote
        self.interrupted = False      # fit returned early on request_stop()
        self._stop_requested = False

        comm = dist.get_comm(comm, distributed)
        self._dist = None if comm is None else dist.Replicas(comm)
        self.rank = 0 if comm is None else self._dist.rank
        self.world_size = 1 if comm is None else self._dist.size
        self.check_replicas_every_epoch = bool(check_replicas)
        self._columns = (0, 0)        # this rank's columns [lo, hi) of the current global batch
        if self._dist is not None:
            self._dist.broadcast_params(model.params)
            mark_modified(model.params.values())
            if self.rank != 0:
                self.progress = False

        self.rng = np.random.default_rng(seed)
        self.step = 0                 # optimizer steps done
        self.epoch = 0                # current epoch (0-based)
        self.batch_index = 0          # next batch of the current epoch
        self.chunk_start = 0          # next time step of the current batch
        self.carry = None             # (rows, state) carried into the next chunk
        self.epoch_rng_state = None   # generator state at the start of the current epoch (None: not begun)
        self.best_val = math.inf
        self.bad_evals = 0
        self.stopped = False          # by early stopping
        self.history = {"step": [], "loss": [], "val_step": [], "val_loss": []}
        self._bar = None
        self._interrupted = False

    # ------------------------------------------------------------------------------ training
    def request_stop(self):
        """Make fit return after the step in progress (saving the checkpoint as at its end), with
        ``self.interrupted`` True. Only sets a flag: safe from a signal handler or another thread."""
        self._stop_requested = True

    def fit(self, train, val=None, epochs=None, max_steps=None):
        """Train until `epochs` epochs (counted from 0) or `max_steps` optimizer steps in total
        (counted from step 0, so a resumed trainer continues to the same end), or early stopping.

        train, val: data sources with ``batches(rng)`` (rnncore.training.data), or lists of Batch.
        Returns self.history: the training loss of every step this trainer ran, and the
        validation losses with their steps.
        """
        with self._blas_limit():
            return self._fit(train, val, epochs, max_steps)

    def _blas_limit(self):
        if self.blas_threads is None:
            return contextlib.nullcontext()
        return _threads.blas_threads(self.blas_threads)

    def _fit(self, train, val, epochs, max_steps):
        if epochs is None and max_steps is None:
            raise ValueError("fit: expected epochs or max_steps")
        train = self._shard(train)
        val = None if val is None else self._shard(val)
        from tqdm.auto import tqdm
        total = max_steps if max_steps is not None else None
        self._bar = tqdm(total=total, initial=self.step, unit="step",
                         disable=None if self.progress is None else not self.progress,
                         dynamic_ncols=True, leave=True)
        tokens, t0 = 0, time.perf_counter()
        self.interrupted = False
        try:
            while not self.stopped and (epochs is None or self.epoch < epochs):
                if max_steps is not None and self.step >= max_steps:
                    return self.history
                if self.epoch_rng_state is None:
                    self.epoch_rng_state = self.rng.bit_generator.state
                else:  # continuing an epoch begun earlier (or in a checkpoint): replay its data order
                    self.rng.bit_generator.state = self.epoch_rng_state
                for bi, batch in enumerate(train.batches(self.rng)):
                    if bi < self.batch_index:
                        continue
                    if self._dist is not None:   # a resumed checkpoint's carried state: this rank's part
                        self._columns = train.columns
                        self.carry = self._dist.local_carry(self.carry, *self._columns)
                    for chunk in self._chunks(batch, self.tbptt, self.chunk_start, self._carried_rows()):
                        if max_steps is not None and self.step >= max_steps:
                            return self.history
                        if self._stop_requested:  # between two steps: the state is whole
                            self.interrupted = True
                            return self.history
                        loss, n = self._train_chunk(chunk)
                        if chunk.last:
                            self.batch_index, self.chunk_start, self.carry = bi + 1, 0, None
                        else:
                            self.chunk_start = chunk.end
                        if loss is None:
                            continue
                        tokens += n
                        self._after_step(loss, tokens / max(time.perf_counter() - t0, 1e-9), val)
                        if self.stopped:
                            return self.history
                    self.batch_index, self.chunk_start, self.carry = bi + 1, 0, None
                self.epoch += 1
                self.batch_index, self.epoch_rng_state = 0, None
                if self.check_replicas_every_epoch:
                    self.check_replicas()
                if val is not None and self.eval_every is None:
                    self._evaluate_and_stop(val)
            return self.history
        except BaseException as e:
            if self._dist is not None and not isinstance(e, (NonFiniteError, dist.DistributedError)):
                self._dist.fail(e)  # one rank only: rank 0 reports it and stops the job (no return)
            if isinstance(e, KeyboardInterrupt):
                # the last checkpoint stays as it was: the interrupted step may have half-updated the model
                self._interrupted = True
            raise
        finally:
            if self.checkpoint_path is not None and self.step > 0 and not self._interrupted:
                self._save_if_finite(self.checkpoint_path)
            self._interrupted = self._stop_requested = False
            self._bar.close()
            self._bar = None

    def _chunks(self, batch, k, start=0, prev_rows=None):
        """The chunks one batch is trained or evaluated in: tbptt_chunks for a model that carries its
        state, else the whole batch as one chunk. A rank's shard takes the chunks of the whole batch
        (its padded length), so that every rank takes part in every step."""
        if self._carries_state:
            stop = None if self._dist is None else np.shape(batch.X)[0]
            return tbptt_chunks(batch, k, self.model.targets_per_step, start, prev_rows, stop)
        return [Chunk(0, None, None, None, batch, None, True)] if start == 0 else []

    def _chunk_loss(self, chunk, state, reduction, is_train):
        """(loss, count, backward, state out) of one chunk, through the model's protocol."""
        if self._dist is not None and np.shape(chunk.batch[0])[1] == 0:  # a shard without sequences here
            return 0.0, 0, None, None
        kw = {"loss_fn": self.loss_fn} if getattr(self.model, "uses_trainer_loss", False) else {}
        if self._carries_state:
            return self.model.chunk_loss(chunk, state, reduction=reduction, is_train=is_train, **kw)
        return self.model.batch_loss(chunk.batch, reduction=reduction, is_train=is_train, **kw) + (None,)

    def _train_chunk(self, chunk):
        """One optimizer step on one chunk. Returns (loss, count) or (None, 0) when no step was taken."""
        self.model.zero_grad()
        state = self.carry[1] if self.carry is not None and self.chunk_start > 0 else None
        local = self.reduction if self._dist is None else "sum"
        with config_context(bptt_checkpoint=self._bptt_checkpoint) if self._bptt_checkpoint \
                else contextlib.nullcontext():
            loss, n, backward, state = self._chunk_loss(chunk, state, local, is_train=True)
        if self._carries_state:
            self.carry = (chunk.rows, state)
        if self._dist is not None:
            # the gradients (and loss, count) of the global batch on every rank, before clipping
            loss, n, self._stop_requested = self._dist.reduce_step(
                self.model.grads, loss, n, backward, self.reduction, self._stop_requested)
        elif n:
            backward()
        if n == 0:
            return None, 0
        if not self._finite_step(loss):
            return None, 0
        self.optimizer.step()
        self.step += 1
        return float(loss), n

    def _finite_step(self, loss):
        """True when the loss and every gradient are finite; otherwise raise or count a skipped step."""
        bad = None
        if not math.isfinite(loss):
            bad = f"loss is {loss}"
        else:
            for name, g in self.model.grads.items():
                if not np.isfinite(g).all():
                    bad = f"gradient of {name} is not finite"
                    break
        if bad is None:
            return True
        if self.on_nonfinite == "raise":
            raise NonFiniteError(f"step {self.step + 1} (epoch {self.epoch}, batch {self.batch_index}): {bad}; "
                                 f"parameters left as after step {self.step}. Lower the learning rate, clip "
                                 f"gradients (clip_norm), or pass on_nonfinite='skip'")
        self.skipped_steps += 1
        self.model.zero_grad()
        self.write(f"step {self.step + 1}: {bad}; skipped ({self.skipped_steps} skipped so far)")
        return False

    def _shard(self, data):
        """The data source, as this rank's shard of it when distributed."""
        data = _as_source(data)
        if self._dist is None or isinstance(data, dist.ShardedSource):
            return data
        return dist.ShardedSource(data, self.rank, self.world_size)

    def check_replicas(self):
        """Distributed: DistributedError on every rank unless every rank holds the same parameters
        and optimizer state (SHA-256 digests compared); returns the digest (None in one process)."""
        if self._dist is None:
            return None
        opt = self.optimizer.state_dict()
        arrays = {**{f"model/{k}": v for k, v in self.model.params.items()},
                  **{f"optim/{k}": v for k, v in opt["buffers"].items()},
                  "optim/step": np.array([opt["step_count"], self.step])}
        return self._dist.check_replicas(arrays)

    def _carried_rows(self):
        """The rows of the chunk whose state is carried into the next one (None at a batch's start)."""
        return self.carry[0] if self.carry is not None and self.chunk_start > 0 else None

    def _after_step(self, loss, throughput, val):
        self.history["step"].append(self.step)
        self.history["loss"].append(loss)
        shown = loss / math.log(2) if self.loss_in_bits else loss
        self._bar.update(1)
        self._bar.set_postfix_str(f"loss {shown:.3f}{' bits' if self.loss_in_bits else ''}, "
                                  f"{throughput:,.0f} tok/s", refresh=False)
        if val is not None and self.eval_every is not None and self.step % self.eval_every == 0:
            self._evaluate_and_stop(val)
        if self.checkpoint_path is not None and self.checkpoint_every is not None \
                and self.step % self.checkpoint_every == 0:
            self._save_if_finite(self.checkpoint_path)

    def _evaluate_and_stop(self, val):
        v = self.evaluate(val)
        self.history["val_step"].append(self.step)
        self.history["val_loss"].append(v)
        if v < self.best_val - self.min_delta:
            self.best_val, self.bad_evals, self.best_step = v, 0, self.step
            if self.best_checkpoint_path is not None:
                self._save_if_finite(self.best_checkpoint_path)
        else:
            self.bad_evals += 1
            if self.patience is not None and self.bad_evals >= self.patience:
                self.stopped = True
        if self.on_eval is not None:
            self.on_eval(self, v)
        if self.stopped:
            self.write(f"early stopping at step {self.step}: no improvement in {self.bad_evals} evaluations")

    def write(self, msg):
        """Print a line without breaking the progress bar (rank 0's only)."""
        if self.rank != 0:
            return
        if self._bar is not None and not self._bar.disable:
            self._bar.write(msg)
        else:
            print(msg, flush=True)

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, data):
        with self._blas_limit():
            try:
                return self._evaluate(data)
            except BaseException as e:
                if self._dist is not None:
                    self._dist.fail(e)
                raise

    def _evaluate(self, data):
        """Loss over a whole data source (mean per valid target, or the sum), no gradients.

        Long batches are run in chunks of eval_chunk steps with the state carried, which gives the
        same numbers as one pass over the whole sequence."""
        data = self._shard(data)
        total, count = 0.0, 0
        for batch in data.batches(None):
            state = None
            for chunk in self._chunks(batch, self.eval_chunk):
                loss, n, _, state = self._chunk_loss(chunk, state, "sum", is_train=False)
                total, count = total + float(loss), count + n
        if self._dist is not None:   # every rank's shard, summed in rank order
            total, count = self._dist.sum_scalars(total, count)
        if self.reduction == "sum":
            return total
        return total / max(count, 1)

    # ------------------------------------------------------------------------------ checkpoints
    def state(self):
        """(arrays, metadata) of a checkpoint of the whole training state."""
        arrays = {f"model/{k}": v for k, v in self.model.params.items()}
        opt = self.optimizer.state_dict()
        arrays.update({f"optim/{k}": v for k, v in opt["buffers"].items()})
        carry_kind = None
        carry = self.carry if self.chunk_start > 0 else None
        if self._dist is not None:   # every rank's rows: the carried state of the whole batch
            carry = self._dist.gather_carry(carry, self._columns[0])
        if carry is not None:
            cols, h = carry
            arrays["carry/cols"] = np.asarray(cols, dtype=np.int64)
            if isinstance(h, tuple) and len(h) == 2:
                arrays["carry/h"], arrays["carry/c"] = h
                carry_kind = "hc"
            elif isinstance(h, np.ndarray):
                arrays["carry/h"] = h
                carry_kind = "h"
            else:
                raise TypeError(f"carried state: expected an array or a tuple of two arrays (h, c) from "
                                f"{type(self.model).__name__}.chunk_loss, got {type(h).__name__}")
        layer_rng = _layer_rng(self.model)  # dropout masks are drawn from it
        meta = {
            **self.metadata,
            "model": self.model.config,
            "model_class": _class_path(self.model),
            "optimizer": self.optimizer.config(),
            "trainer": {
                "step": self.step, "epoch": self.epoch, "batch_index": self.batch_index,
                "chunk_start": self.chunk_start, "carry": carry_kind,
                "epoch_rng_state": _jsonable_rng_state(self.epoch_rng_state),
                "rng_state": _jsonable_rng_state(self.rng.bit_generator.state),
                "layer_rng_state": _jsonable_rng_state(layer_rng.bit_generator.state) if layer_rng else None,
                "optimizer_step": opt["step_count"], "best_val": _json_float(self.best_val),
                "bad_evals": self.bad_evals, "best_step": self.best_step, "stopped": self.stopped, "seed": self.seed,
                "tbptt": self.tbptt, "bptt": self.bptt, "loss": self.loss_name, "reduction": self.reduction,
            },
        }
        return arrays, meta

    def save_checkpoint(self, path):
        """Write the training state to path (atomically). Distributed: every rank calls it (the
        carried state is gathered), rank 0 writes."""
        arrays, meta = self.state()
        if self.rank != 0:
            return None
        return ckpt.save(path, arrays, meta)

    def _save_if_finite(self, path):
        bad = [k for k, p in self.model.params.items() if not np.isfinite(p).all()]
        if bad:
            self.write(f"not saving a checkpoint at step {self.step}: parameters {bad} are not finite "
                       f"(the previous checkpoint at {path} is kept)")
            return None
        written = self.save_checkpoint(path)
        self.saved[path] = self.step
        return written

    def load_checkpoint(self, path):
        """Restore the training state saved by save_checkpoint into this trainer, model and optimizer.

        The checkpoint must come from a model with the same configuration (CheckpointError if not)."""
        arrays, meta = ckpt.load(path)
        if not all(isinstance(meta.get(k), dict) for k in ("model", "trainer", "optimizer")):
            raise ckpt.CheckpointError(f"{path}: not a training checkpoint (no model/optimizer/trainer state)")
        _check_same_model(path, meta["model"], self.model.config)
        try:
            # everything is checked before anything changes: a bad file leaves this trainer as it was
            weights = _model_arrays(path, arrays, self.model)
            tr, carry = meta["trainer"], None
            rngs = [_checked_rng_state(tr[k]) for k in ("rng_state", "layer_rng_state", "epoch_rng_state")]
            fields = {k: tr[k] for k in ("step", "epoch", "batch_index", "chunk_start", "bad_evals",
                                         "optimizer_step")}
            if not all(type(v) is int and v >= 0 for v in fields.values()):
                raise ValueError(f"counters must be integers >= 0, got {fields}")
            if tr["carry"] == "hc":
                carry = (_int_array(arrays["carry/cols"]), (arrays["carry/h"], arrays["carry/c"]))
            elif tr["carry"] == "h":
                carry = (_int_array(arrays["carry/cols"]), arrays["carry/h"])
            elif tr["carry"] is not None:
                raise ValueError(f"carry {tr['carry']!r}")
            best_val, stopped, seed = tr["best_val"], tr["stopped"], tr["seed"]
            if not (best_val is None or type(best_val) in (int, float)) or type(stopped) is not bool:
                raise ValueError("best_val or stopped")
            self.optimizer.load_state_dict({
                "step_count": tr["optimizer_step"],
                "buffers": {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}})
        except ckpt.CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise ckpt.CheckpointError(f"{path}: training state does not fit this trainer "
                                       f"({type(e).__name__}: {e})") from None
        self.model.load_state_dict(weights)
        mark_modified(self.model.params.values())
        self.step, self.epoch = fields["step"], fields["epoch"]
        self.batch_index, self.chunk_start = fields["batch_index"], fields["chunk_start"]
        self.carry = carry if carry is None or self._dist is None else dist.GlobalCarry(carry)
        self.epoch_rng_state = tr["epoch_rng_state"]
        self.rng.bit_generator.state = rngs[0]
        layer_rng = _layer_rng(self.model)
        if layer_rng is not None and rngs[1]:
            layer_rng.bit_generator.state = rngs[1]
        self.best_val = math.inf if best_val is None else best_val
        self.bad_evals, self.stopped = fields["bad_evals"], stopped
        best_step = tr.get("best_step")      # informational: which step the best checkpoint holds
        self.best_step = (best_step if isinstance(best_step, int) and not isinstance(best_step, bool)
                          and best_step >= 0 else None)
        self.seed = seed
        return meta

    @classmethod
    def from_checkpoint(cls, path, **kwargs):
        """Rebuild model, optimizer and trainer from a checkpoint, ready to continue training.

        kwargs go to Trainer (e.g. checkpoint_path, progress, eval_every); tbptt, loss and reduction
        default to the checkpoint's."""
        arrays, meta = ckpt.load(path)
        if "trainer" not in meta or "optimizer" not in meta:
            raise ckpt.CheckpointError(f"{path}: not a training checkpoint (no optimizer/trainer state)")
        model = _model_from_meta(path, meta, arrays)
        try:
            optimizer = make_optimizer(model.params, model.grads, meta["optimizer"])
            tr = meta["trainer"]
            kwargs.setdefault("tbptt", tr["tbptt"])
            kwargs.setdefault("bptt", tr.get("bptt", "full"))
            kwargs.setdefault("loss", tr["loss"])
            kwargs.setdefault("reduction", tr["reduction"])
            kwargs.setdefault("seed", tr["seed"])
            kwargs.setdefault("metadata", {k: v for k, v in meta.items()
                                           if k not in ("model", "optimizer", "trainer", "format", "version")})
            trainer = cls(model, optimizer, **kwargs)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ckpt.CheckpointError(f"{path}: bad optimizer or trainer configuration ({e})") from None
        trainer.load_checkpoint(path)
        return trainer


def load_model(path):
    """(model, metadata) from a checkpoint: the model rebuilt from its configuration, with its weights."""
    arrays, meta = ckpt.load(path)
    model = _model_from_meta(path, meta, arrays)
    model.load_state_dict(_model_arrays(path, arrays, model))
    return model, meta


def _model_arrays(path, arrays, model):
    """The checkpoint's model/* arrays, checked to be exactly the model's names, shapes and dtype."""
    weights = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    if set(weights) != set(model.params):
        raise ckpt.CheckpointError(f"{path}: weights do not fit the model it describes (missing "
                                   f"{sorted(set(model.params) - set(weights))}, unexpected "
                                   f"{sorted(set(weights) - set(model.params))})")
    for k, p in model.params.items():
        if weights[k].shape != p.shape or weights[k].dtype != p.dtype:
            raise ckpt.CheckpointError(f"{path}: weights do not fit the model it describes ({k!r}: "
                                       f"expected {p.dtype} {p.shape}, got {weights[k].dtype} "
                                       f"{weights[k].shape})")
    return weights


def _checked_rng_state(state):
    """A generator state from a checkpoint, tried on a scratch generator first (ValueError/TypeError
    if numpy refuses it), so that a bad one changes nothing."""
    if state is not None:
        np.random.PCG64().state = state
    return state


def _int_array(a):
    if a.dtype.kind != "i" or a.ndim != 1:
        raise ValueError(f"carry/cols must be a 1-D integer array, got {a.dtype} {a.shape}")
    return a


def _check_config_sizes(path, config, arrays):
    """Refuse a configuration that asks for more than the stored arrays hold, before building it:
    every integer in it (but seeds) must be at most the largest dimension of the stored model
    arrays or their number, and the recurrent layers built from it may not have more parameter
    values than are stored (rnncore.layers.recurrent.param_budget, checked before allocating)."""
    shapes = [a.shape for k, a in arrays.items() if k.startswith("model/")]
    bound = max([len(shapes)] + [n for s in shapes for n in s])

    def walk(value, key):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, int) and not isinstance(value, bool) and key != "seed" and value > bound:
            raise ckpt.CheckpointError(f"{path}: bad model configuration ({key}={value}, but the "
                                       f"stored weights have no dimension above {bound})")
    walk(config, None)
    return param_budget(sum(math.prod(s) for s in shapes))


def _layer_rng(model):
    return getattr(model, "dropout_rng", None)


def _class_path(model):
    cls = type(model)
    return f"{cls.__module__}:{cls.__qualname__}"


def _model_from_meta(path, meta, arrays):
    if not isinstance(meta.get("model"), dict):
        raise ckpt.CheckpointError(f"{path}: no model configuration in this checkpoint")
    cls = _model_class(path, meta.get("model_class"))
    try:
        with _check_config_sizes(path, meta["model"], arrays):
            return cls.from_config(meta["model"])
    except ckpt.CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, OverflowError, MemoryError) as e:
        raise ckpt.CheckpointError(f"{path}: bad model configuration ({e})") from None


def _model_class(path, name):
    """The model class a checkpoint names: only classes defined in rnncore's own modules are loaded,
    so a checkpoint cannot make this import arbitrary code."""
    if name is None:
        name = _DEFAULT_MODEL_CLASS
    module, _, qualname = str(name).partition(":")
    if not (module == "rnncore" or module.startswith("rnncore.")) or not qualname.isidentifier():
        raise ckpt.CheckpointError(f"{path}: model class {name!r} is not an rnncore model; "
                                   f"expected 'rnncore.<module>:<Class>'")
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        raise ckpt.CheckpointError(f"{path}: unknown model class {name!r}") from None
    if not hasattr(cls, "from_config"):
        raise ckpt.CheckpointError(f"{path}: model class {name!r} cannot be rebuilt (no from_config)")
    return cls


def _check_same_model(path, saved, current):
    ignore = {"seed"}
    diffs = [f"{k} {saved.get(k)!r} in the checkpoint, {current.get(k)!r} here"
             for k in sorted(set(saved) | set(current)) if k not in ignore and saved.get(k) != current.get(k)]
    if diffs:
        raise ckpt.CheckpointError(f"{path}: checkpoint is from another model ({'; '.join(diffs)})")


def _jsonable_rng_state(state):
    return None if state is None else dict(state)


def _json_float(x):
    return None if not math.isfinite(x) else float(x)


class _ListSource:
    def __init__(self, batches):
        self._batches = list(batches)

    def __len__(self):
        return len(self._batches)

    def batches(self, rng=None):
        return iter(self._batches)


def _as_source(data):
    return data if hasattr(data, "batches") else _ListSource(data)
