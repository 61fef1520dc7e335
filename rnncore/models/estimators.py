"""scikit-learn estimators over rnncore's recurrent stack: RNNClassifier and RNNRegressor.

Both read each sample as a sequence and predict one label / value(s) per sequence:

    x_1 .. x_L  ->  [stride k: k steps as one vector]  ->  recurrent stack (rnncore.RNN / LSTM / GRU)
                ->  pooling of h_1 .. h_L' (last valid step, mean, max or attention)  ->  linear head
    classifier:  logits o, p = softmax(o), trained with softmax cross-entropy (mean over the batch)
    regressor:   o = ŷ (n_outputs values), trained with mean squared error

Inputs X, in any of three forms (n = number of samples):

    3-D array (n, T, n_features)      n sequences of T steps with n_features each
    2-D array (n, T)                  a table: n univariate sequences of T steps (the columns are the steps;
                                      as for any scikit-learn estimator, predict needs the same columns)
    list of n sequences               each (T_i, n_features) or (T_i,): any lengths >= 1; they are padded
                                      internally and the lengths passed to the layers, so padding never
                                      reaches the model

``n_features_in_`` is scikit-learn's count of input columns: T for a 2-D table, the features per step
for 3-D arrays and lists. ``n_step_features_`` is always the features per step. A model fitted on
sequences accepts sequences of any lengths at predict time. One input is never read two ways: a
model fitted on sequences of F features refuses a 2-D array of shape (T, F) at predict time (one
sequence of T steps, or T sequences of one step?) and says how to pass either.

Scaling (``scaling``): "global" (the default) standardises each input feature with the mean and
standard deviation over every valid step of the training data, so that differences of level and
amplitude between sequences are kept; "per_series" z-normalises each sequence on its own (each
feature by that sequence's mean and standard deviation), the UCR archive's habit when only the
shape matters and each series comes with an arbitrary offset or gain, but it erases amplitude,
which separates the classes of e.g. motion data; None feeds the data as it is. The regressor's
targets are standardised too (``scale_targets``): the network is trained on (y - mean) / std and its
predictions are mapped back. tanh and sigmoid units saturate on unscaled data, and a loss on targets
of size 1e4 needs another learning rate than one on targets of size 1.

Reading long series (``stride``, ``pooling``). stride=k feeds k consecutive steps as one input
vector of k * n_features values (x_1..x_k, then x_{k+1}..x_{2k}, ...; a sequence's last window is
completed with zeros, i.e. the training mean after global scaling): a series of 400 steps becomes 40
steps, which the recurrent stack learns from far more easily. pooling="last" reads the state at the
last valid step; "mean", "max" and "attention" (a learned query over the states) read every valid
step (rnncore.models.sequence.pool_states), which keeps the early steps of a long series close to
the loss. Both are hyperparameters for GridSearchCV.

Training: rnncore.training.trainer.Trainer with full BPTT, ``max_iter`` epochs over shuffled
mini-batches of ``batch_size`` sequences, optimizer "adam" | "rmsprop" | "sgd" with learning rate
``lr``, global gradient-norm clipping at ``clip`` (None: no clipping) and ``weight_decay``.
Everything random (initialisation, data order, dropout, the validation split) derives from
random_state. ``loss_curve_`` has one entry per epoch: the mean of that epoch's step losses.

Truncated BPTT (``tbptt=k``, pooling="last" only: a pooled readout needs every step in one pass),
counted in the steps the recurrent stack sees (after ``stride``). The state is carried through a
sequence chunk by chunk, without gradient across a chunk boundary; the cuts are counted back from
the end of the batch's longest sequence (rnncore.training.data.tbptt_chunks), and each sequence's
loss is scored in the chunk where it ends. So the gradient of a sequence as long as the batch's
longest reaches its last k steps, that of a shorter one its last 1 to k steps, and an epoch has one
optimizer step per chunk in which some sequence ends.

Stopping (as scikit-learn's MLPClassifier). After each epoch: with early_stopping=False, training
stops when the epoch's loss has not gone below ``best_loss_ - tol`` for ``n_iter_no_change``
epochs in a row; with early_stopping=True, a stratified (classifier) ``validation_fraction`` of the
training data is held out, the score on it (accuracy, or R² for the regressor) is recorded in
``validation_scores_`` after each epoch, training stops when it has not exceeded
``best_validation_score_ + tol`` for ``n_iter_no_change`` epochs, and the weights of the best
epoch are restored. Set n_iter_no_change=max_iter to always run max_iter epochs.
"""
import numbers

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data

from rnncore.engine.validation import check_choice
from rnncore.training.data import Batch
from rnncore.training.losses import length_mask, softmax
from rnncore.models.sequence import CELLS, POOLINGS, SequenceModel
from rnncore.training.optim import OPTIMIZERS
from rnncore.training.trainer import Trainer

__all__ = ["RNNClassifier", "RNNRegressor"]

_DTYPES = ("float32", "float64")
SCALINGS = ("global", "per_series", None)
_PREDICT_BATCH = 1024


# ---------------------------------------------------------------------------------------------
# input conversion


def _is_ragged_list(X):
    """True for a list/tuple of sequences that do not all have the same shape (so no 2-D/3-D array)."""
    if not isinstance(X, (list, tuple)) or len(X) == 0:
        return False
    shapes = set()
    for s in X:
        if sparse.issparse(s):
            return False
        shapes.add(np.shape(s))
        if len(shapes) > 1:
            return True
    return False


def _ragged_sequences(X, dtype):
    """List of (T_i, F) arrays from a list of (T_i,) / (T_i, F) sequences, validated."""
    seqs, ndim, n_feat = [], None, None
    for i, s in enumerate(X):
        a = np.asarray(s)
        if a.ndim not in (1, 2):
            raise ValueError(f"X[{i}]: expected a sequence of shape (T_i,) or (T_i, n_features), "
                             f"got an array of shape {a.shape}")
        if ndim is None:
            ndim = a.ndim
        elif a.ndim != ndim:
            raise ValueError(f"X[{i}]: expected a {ndim}-D sequence like X[0], got shape {a.shape}")
        a = a.reshape(-1, 1) if a.ndim == 1 else a
        if a.shape[0] < 1:
            raise ValueError(f"X[{i}]: expected a sequence with at least one step, got shape {a.shape}")
        a = check_array(a, dtype=dtype, ensure_all_finite=True, input_name=f"X[{i}]")
        if n_feat is None:
            n_feat = a.shape[1]
        elif a.shape[1] != n_feat:
            raise ValueError(f"X[{i}]: expected {n_feat} features per step like X[0], got {a.shape[1]}")
        seqs.append(a)
    return seqs


def _pad(seqs, dtype):
    """Time-major (T, n, F) zero-padded array and lengths (n,) from a list of (T_i, F) arrays."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    out = np.zeros((int(lengths.max()), len(seqs), seqs[0].shape[1]), dtype=dtype)
    for b, s in enumerate(seqs):
        out[:len(s), b] = s
    return out, lengths


def _stride(Xp, lengths, k):
    """k consecutive steps as one input vector: padded (T, n, F) -> (ceil(T / k), n, k * F), window
    j holding x_{jk} .. x_{jk+k-1} in that order, and lengths ceil(L / k). Xp must be 0 past each
    length (as _pad and _BaseRNN._scale leave it), so a sequence's last window ends in zeros."""
    if k == 1:
        return Xp, lengths
    T, n, F = Xp.shape
    Tk = -(-T // k)
    out = np.zeros((Tk * k, n, F), dtype=Xp.dtype)
    out[:T] = Xp
    # (Tk, k, n, F) -> (Tk, n, k, F) -> (Tk, n, k * F)
    out = out.reshape(Tk, k, n, F).transpose(0, 2, 1, 3).reshape(Tk, n, k * F)
    return np.ascontiguousarray(out), -(-lengths // k)


class _PaddedSource:
    """Mini-batches of a padded time-major dataset: each epoch in an order drawn from the rng."""

    def __init__(self, X, lengths, Y, batch_size):
        self.X, self.lengths, self.Y, self.batch_size = X, lengths, Y, batch_size

    def __len__(self):
        return -(-self.X.shape[1] // self.batch_size)

    def batches(self, rng=None):
        n = self.X.shape[1]
        order = rng.permutation(n) if rng is not None else np.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            lens = self.lengths[idx]
            T = int(lens.max())
            yield Batch(self.X[:T, idx], self.Y[idx], None if (lens == T).all() else lens)


# ---------------------------------------------------------------------------------------------
# shared base


class _BaseRNN(BaseEstimator):
    """Hyperparameters, input handling, training and the forward pass shared by both estimators."""

    def __init__(self, cell="lstm", hidden_size=32, num_layers=1, bidirectional=False, dropout=0.0,
                 pooling="last", stride=1, max_iter=50, batch_size=32, lr=0.01, optimizer="adam", clip=1.0,
                 weight_decay=0.0, tbptt=None, scaling="global", early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, random_state=None,
                 dtype="float32", rnn_options=None, verbose=False):
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.pooling = pooling
        self.stride = stride
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.clip = clip
        self.weight_decay = weight_decay
        self.tbptt = tbptt
        self.scaling = scaling
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.dtype = dtype
        self.rnn_options = rnn_options
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags

    # -------------------------------------------------------------------------- validation
    def _check_hyperparameters(self):
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")

        check_choice(self.cell, "cell", CELLS)
        for name in ("hidden_size", "num_layers", "max_iter", "batch_size", "stride", "n_iter_no_change"):
            positive_int(name)
        check_choice(self.pooling, "pooling", POOLINGS)
        check_choice(self.scaling, "scaling", SCALINGS)
        if self.tbptt is not None:
            positive_int("tbptt")
            if self.pooling != "last":
                raise ValueError(f"tbptt: pooling={self.pooling!r} reads every step of a sequence in one "
                                 f"pass; expected tbptt=None (or pooling='last'), got tbptt={self.tbptt!r}")
        if not isinstance(self.early_stopping, (bool, np.bool_)):
            raise ValueError(f"early_stopping: expected True or False, got {self.early_stopping!r}")
        if not (isinstance(self.validation_fraction, numbers.Real) and 0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction: expected a number in (0, 1), got {self.validation_fraction!r}")
        if not (isinstance(self.tol, numbers.Real) and self.tol >= 0):
            raise ValueError(f"tol: expected a number >= 0, got {self.tol!r}")
        check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        if not (isinstance(self.lr, numbers.Real) and self.lr > 0):
            raise ValueError(f"lr: expected a positive number, got {self.lr!r}")
        if self.clip is not None and not (isinstance(self.clip, numbers.Real) and self.clip > 0):
            raise ValueError(f"clip: expected a positive number or None, got {self.clip!r}")
        if not (isinstance(self.dropout, numbers.Real) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        if np.dtype(self.dtype).name not in _DTYPES:
            raise ValueError(f"dtype: expected one of {_DTYPES}, got {self.dtype!r}")

    def _sequences(self, X, fitting):
        """X in any accepted form -> (time-major padded (T, n, F) array of the model dtype, lengths (n,)).

        Sets n_features_in_, n_step_features_ and input_kind_ when fitting; checks them otherwise.
        """
        dtype = np.dtype(self.dtype) if fitting else self._dtype
        if _is_ragged_list(X):
            seqs = _ragged_sequences(X, dtype)
            kind, n_step = "sequences", seqs[0].shape[1]
            Xp, lengths = _pad(seqs, dtype)
        else:
            if isinstance(X, (list, tuple)) and len(X) == 0:
                raise ValueError("X: expected at least one sequence, got an empty list")
            if sparse.issparse(X):
                raise TypeError(f"X: expected a dense array or a list of sequences, got a sparse "
                                f"{type(X).__name__}; convert it with X.toarray()")
            if not hasattr(X, "ndim"):   # lists of equal-shape sequences, other array-likes
                X = np.asarray(X)
            ndim = X.ndim
            if ndim == 2 and not fitting and self.input_kind_ == "sequences" \
                    and X.shape[1] == self.n_step_features_:
                T, F = X.shape
                raise ValueError(
                    f"X: a 2-D array of shape {X.shape} can be read two ways: one sequence of {T} steps "
                    f"with {F} feature{'s' if F > 1 else ''} each, or a table of {T} univariate sequences "
                    f"of {F} step{'s' if F > 1 else ''}; {type(self).__name__} was fitted on sequences with "
                    f"{self.n_step_features_} feature{'s' if F > 1 else ''} per step and will not guess. "
                    f"Pass one sequence as X[None] (shape (1, {T}, {F})) or as a list [X]; "
                    f"pass univariate sequences as X[:, :, None] (shape ({T}, {F}, 1))")
            if ndim == 2:
                kind = "table"
                if fitting or self.input_kind_ == "table":
                    A = validate_data(self, X, reset=fitting, dtype=dtype, ensure_all_finite=True)
                else:
                    A = check_array(X, dtype=dtype, ensure_all_finite=True)
                Xp = np.ascontiguousarray(A.T[:, :, None])
                n_step = 1
            elif ndim == 3:
                kind = "sequences"
                A = check_array(X, dtype=dtype, allow_nd=True, ensure_all_finite=True)
                if A.shape[1] < 1 or A.shape[2] < 1:
                    raise ValueError(f"X: expected (n_samples, T, n_features) with T >= 1 and "
                                     f"n_features >= 1, got shape {A.shape}")
                Xp = np.ascontiguousarray(A.transpose(1, 0, 2))
                n_step = A.shape[2]
            else:
                raise ValueError(
                    f"X: expected a 2-D array (n_samples, T) of univariate sequences, a 3-D array "
                    f"(n_samples, T, n_features) or a list of sequences, got a {ndim}-D input of shape "
                    f"{tuple(X.shape)}. Reshape your data: X.reshape(1, -1) for a single univariate "
                    f"sequence, X.reshape(-1, 1) for sequences of one step")
            lengths = np.full(Xp.shape[1], Xp.shape[0], dtype=np.int64)
        if fitting:
            self.input_kind_, self.n_step_features_ = kind, n_step
            if kind != "table":
                self.n_features_in_ = n_step
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
        elif n_step != self.n_step_features_:
            got = "a 2-D array (univariate sequences, 1 feature per step)" if kind == "table" \
                else f"sequences with {n_step} features per step"
            raise ValueError(f"X has {n_step} features per step, but {type(self).__name__} is expecting "
                             f"{self.n_step_features_} features per step as input (got {got})")
        return Xp, lengths

    def _check_y_length(self, y, n):
        if len(y) != n:
            raise ValueError(f"y: expected {n} targets (one per sequence in X), got {len(y)}")

    # -------------------------------------------------------------------------- training
    def _fit(self, X, y, n_outputs, loss, Y):
        """Build the model and train it on padded X with targets Y (already encoded / scaled): one
        Trainer epoch at a time, with the stopping rule of the module docstring."""
        Xp, lengths = X
        self._dtype = np.dtype(self.dtype)
        rs = check_random_state(self.random_state)
        model_seed, data_seed = (int(s) for s in rs.randint(0, 2**31 - 1, size=2))
        if self.early_stopping:
            train, val = self._validation_split(y, rs)
            Xv, Lv = Xp[:, val], lengths[val]
            Xp, lengths, Yv, Y = Xp[:, train], lengths[train], Y[val], Y[train]
        self._fit_scaling(Xp, lengths)
        Xp, lengths = self._prepare(Xp, lengths)
        if self.early_stopping:
            Xv, Lv = self._prepare(Xv, Lv)

        self.model_ = SequenceModel(
            cell=self.cell, hidden_size=self.hidden_size, num_layers=self.num_layers,
            input_size=self.n_step_features_ * self.stride, output_size=n_outputs, head="many_to_one",
            dropout=self.dropout, bidirectional=self.bidirectional, dtype=self._dtype, seed=model_seed,
            rnn_options=self.rnn_options, pooling=self.pooling)
        opt = OPTIMIZERS[self.optimizer](self.model_.params, self.model_.grads, lr=self.lr,
                                         clip_norm=self.clip, weight_decay=self.weight_decay)
        trainer = Trainer(self.model_, opt, loss=loss, reduction="mean", tbptt=self.tbptt,
                          seed=data_seed, progress=False)
        source = _PaddedSource(Xp, lengths, Y, min(self.batch_size, Xp.shape[1]))

        self.loss_curve_ = []
        self.best_loss_ = np.inf
        self.validation_scores_ = [] if self.early_stopping else None
        self.best_validation_score_ = -np.inf if self.early_stopping else None
        best_state, no_improvement = None, 0
        for epoch in range(self.max_iter):
            first = len(trainer.history["loss"])
            trainer.fit(source, epochs=epoch + 1)
            # the mean training loss of this epoch's optimizer steps (with tbptt, one per chunk in
            # which some sequence ends: their number varies, so the epoch is counted, not the steps)
            self.loss_curve_.append(float(np.mean(trainer.history["loss"][first:])))
            if self.early_stopping:
                score = self._validation_score(self._predict_prepared(Xv, Lv), Yv)
                self.validation_scores_.append(score)
                no_improvement = no_improvement + 1 if score < self.best_validation_score_ + self.tol else 0
                if score > self.best_validation_score_ or best_state is None:
                    self.best_validation_score_, best_state = score, self.model_.state_dict()
            else:
                no_improvement = no_improvement + 1 if self.loss_curve_[-1] > self.best_loss_ - self.tol else 0
                self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])
            if self.verbose:
                shown = f", validation score = {score:.6f}" if self.early_stopping else ""
                print(f"Iteration {epoch + 1}, loss = {self.loss_curve_[-1]:.8f}{shown}", flush=True)
            if no_improvement >= self.n_iter_no_change:
                if self.verbose:
                    what = "Validation score" if self.early_stopping else "Training loss"
                    print(f"{what} did not improve more than tol={self.tol} for {self.n_iter_no_change} "
                          f"consecutive epochs. Stopping.", flush=True)
                break
        self.n_iter_ = epoch + 1
        if self.early_stopping:
            self.model_.load_state_dict(best_state)     # the weights of the best validation score
            self.best_loss_ = None
        return self

    def _validation_split(self, y, rs):
        """(train, validation) indices: validation_fraction of the samples, stratified by class for
        the classifier, drawn from random_state."""
        from sklearn.model_selection import train_test_split
        idx = np.arange(len(y))
        stratify = y if isinstance(self, ClassifierMixin) else None
        try:
            train, val = train_test_split(idx, test_size=self.validation_fraction, stratify=stratify,
                                          random_state=rs.randint(0, 2**31 - 1))
        except ValueError as e:
            raise ValueError(f"early_stopping: cannot hold out validation_fraction="
                             f"{self.validation_fraction} of {len(y)} samples ({e})") from None
        return np.sort(train), np.sort(val)

    def _fit_scaling(self, Xp, lengths):
        """input_mean_ and input_scale_: per feature over every valid training step ("global"), or
        0 and 1 (no global scaling)."""
        if self.scaling == "global":
            valid = length_mask(lengths, *Xp.shape[:2])
            v = Xp[valid].astype(np.float64)
            mean, std = v.mean(axis=0), v.std(axis=0)
            std[std < 1e-12] = 1.0
            self.input_mean_, self.input_scale_ = mean, std
        else:
            self.input_mean_ = np.zeros(self.n_step_features_)
            self.input_scale_ = np.ones(self.n_step_features_)

    def _scale(self, Xp, lengths):
        """(X - mean) / scale at valid steps, with the training data's statistics ("global") or each
        sequence's own ("per_series"); padding stays 0."""
        if self.scaling is None:
            return Xp
        valid = length_mask(lengths, *Xp.shape[:2])[..., None]
        if self.scaling == "global":
            mean, scale = self.input_mean_, self.input_scale_
        else:
            # per sequence b and feature j: mean and standard deviation over t < L_b
            n = lengths[:, None].astype(np.float64)
            mean = np.where(valid, Xp, 0).sum(axis=0, dtype=np.float64) / n
            scale = np.sqrt(np.where(valid, (Xp - mean) ** 2, 0).sum(axis=0) / n)
            scale[scale < 1e-12] = 1.0
        out = (Xp - mean) / scale
        return np.where(valid, out, 0).astype(self._dtype)

    def _prepare(self, Xp, lengths):
        """Padded sequences -> the model's input: scaled, then `stride` steps to a vector."""
        return _stride(self._scale(Xp, lengths), lengths, self.stride)

    def _model_inputs(self, X):
        """Any accepted X -> (the model's time-major input, lengths), as fit prepared its data."""
        check_is_fitted(self, "model_")
        return self._prepare(*self._sequences(X, fitting=False))

    def _predict_prepared(self, Xm, lengths):
        """Head outputs (n, n_outputs) as float64 for prepared input (inference: no dropout)."""
        out = []
        for s in range(0, Xm.shape[1], _PREDICT_BATCH):
            lens = lengths[s:s + _PREDICT_BATCH]
            T = int(lens.max())
            out.append(self.model_.predict(Xm[:T, s:s + _PREDICT_BATCH],
                                           lengths=None if (lens == T).all() else lens))
        return np.concatenate(out).astype(np.float64)

    def _forward(self, X):
        """Head outputs (n, n_outputs) as float64 for any accepted X."""
        return self._predict_prepared(*self._model_inputs(X))


# ---------------------------------------------------------------------------------------------
# estimators


class RNNClassifier(ClassifierMixin, _BaseRNN):
    """Sequence classifier: a recurrent stack reads each sequence, a softmax head on its pooled states.

    Parameters
    ----------
    cell : "lstm", "gru" or "rnn" (Elman, tanh; rnn_options={"nonlinearity": "relu"} for ReLU).
    hidden_size, num_layers, bidirectional, dropout : the recurrent stack (dropout between layers).
    pooling : "last" (the state at the last valid step), "mean", "max" or "attention" (a learned
        query) over the valid steps: what the head reads.
    stride : read this many consecutive steps as one input vector (a series of T steps becomes
        ceil(T / stride) steps of stride * n_features values).
    max_iter : the most epochs.
    batch_size : sequences per mini-batch.
    lr : learning rate; optimizer : "adam", "rmsprop" or "sgd".
    clip : clip the global gradient norm to this value before each step (None: no clipping).
    weight_decay : L2 penalty added to the gradients.
    tbptt : truncated BPTT chunk length, in the steps after `stride` (None: full BPTT; only with
        pooling="last"; the module docstring says where the gradient reaches).
    scaling : "global" (each feature standardised with the training data's mean and std), "per_series"
        (each sequence z-normalised on its own: keeps the shape, erases level and amplitude) or None.
    early_stopping : hold out validation_fraction of the training data (stratified), stop when its
        accuracy has not improved by tol for n_iter_no_change epochs, restore the best weights.
        False: stop when the training loss has not improved by tol for n_iter_no_change epochs.
    validation_fraction, n_iter_no_change, tol : as in scikit-learn's MLPClassifier.
    random_state : None, an int or a RandomState; seeds initialisation, data order, dropout and the
        validation split.
    dtype : "float32" or "float64", the arithmetic of the recurrent stack.
    rnn_options : further arguments of the layer (nonlinearity, proj_size, peephole, reset_after,
        init, forget_bias).
    verbose : print the loss (and validation score) of each epoch.

    Attributes
    ----------
    classes_, n_features_in_, n_step_features_, input_kind_ ("table" or "sequences"),
    model_ (rnncore.models.sequence.SequenceModel), loss_curve_ (mean training loss of each epoch),
    n_iter_ (epochs run), best_loss_ (the lowest of loss_curve_; None with early_stopping),
    validation_scores_ and best_validation_score_ (accuracy on the held-out part after each epoch,
    and the best; None without early_stopping), input_mean_, input_scale_ (global scaling's
    statistics; 0 and 1 otherwise).
    """

    def _validation_score(self, out, ids):
        """Accuracy of the head outputs `out` on the encoded labels `ids`."""
        return float(np.mean(out.argmax(axis=1) == ids))

    def fit(self, X, y):
        """Train on sequences X and one class label per sequence y. Returns self."""
        self._check_hyperparameters()
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        Xs = self._sequences(X, fitting=True)
        y = column_or_1d(np.asarray(y) if not hasattr(y, "shape") else y, warn=True)
        self._check_y_length(y, Xs[0].shape[1])
        check_classification_targets(y)
        enc = LabelEncoder()
        ids = enc.fit_transform(y)
        self.classes_ = enc.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"y: expected at least 2 classes, got 1 class ({self.classes_[0]!r})")
        return self._fit(Xs, y, len(self.classes_), "cross_entropy", ids.astype(np.int64))

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns in the order of classes_."""
        return softmax(self._forward(X), axis=1)

    def predict(self, X):
        """The most probable class of each sequence (n_samples,)."""
        scores = self._forward(X)
        return self.classes_[np.argmax(scores, axis=1)]


class RNNRegressor(RegressorMixin, _BaseRNN):
    """Sequence regressor: a recurrent stack reads each sequence, a linear head on its pooled states
    predicts one value (y of shape (n,)) or n_outputs values (y of shape (n, n_outputs)), trained
    with mean squared error.

    Parameters: as RNNClassifier (early stopping scores R² on the held-out part, not stratified), plus
    scale_targets : train on standardised targets (y - mean) / std (per output) and map the
        predictions back; predictions are always in the units of y.

    Attributes: as RNNClassifier (no classes_; validation scores are R²), plus n_outputs_,
    target_mean_, target_scale_.
    """

    def __init__(self, cell="lstm", hidden_size=32, num_layers=1, bidirectional=False, dropout=0.0,
                 pooling="last", stride=1, max_iter=50, batch_size=32, lr=0.01, optimizer="adam", clip=1.0,
                 weight_decay=0.0, tbptt=None, scaling="global", scale_targets=True, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, random_state=None,
                 dtype="float32", rnn_options=None, verbose=False):
        super().__init__(cell=cell, hidden_size=hidden_size, num_layers=num_layers,
                         bidirectional=bidirectional, dropout=dropout, pooling=pooling, stride=stride,
                         max_iter=max_iter, batch_size=batch_size, lr=lr, optimizer=optimizer, clip=clip,
                         weight_decay=weight_decay, tbptt=tbptt, scaling=scaling,
                         early_stopping=early_stopping, validation_fraction=validation_fraction,
                         n_iter_no_change=n_iter_no_change, tol=tol, random_state=random_state,
                         dtype=dtype, rnn_options=rnn_options, verbose=verbose)
        self.scale_targets = scale_targets

    def _validation_score(self, out, Y):
        """R² (averaged over the outputs) of the head outputs on the standardised targets: the same
        number as in the units of y, R² being unchanged by a per-output affine map of both."""
        from sklearn.metrics import r2_score
        return float(r2_score(Y, out))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y):
        """Train on sequences X and targets y, (n,) or (n, n_outputs). Returns self."""
        self._check_hyperparameters()
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        Xs = self._sequences(X, fitting=True)
        y = check_array(y, ensure_2d=False, allow_nd=True, dtype=np.float64, ensure_all_finite=True,
                        input_name="y")
        if y.ndim not in (1, 2):
            raise ValueError(f"y: expected shape (n_samples,) or (n_samples, n_outputs), got {y.shape}")
        self._check_y_length(y, Xs[0].shape[1])
        self._y_ndim = y.ndim
        Y = y.reshape(len(y), -1)
        self.n_outputs_ = Y.shape[1]
        if self.scale_targets:
            mean, std = Y.mean(axis=0), Y.std(axis=0)
            std[std < 1e-12] = 1.0
        else:
            mean, std = np.zeros(self.n_outputs_), np.ones(self.n_outputs_)
        self.target_mean_, self.target_scale_ = mean, std
        Yn = ((Y - mean) / std).astype(np.dtype(self.dtype))
        return self._fit(Xs, y, self.n_outputs_, "mse", Yn)

    def predict(self, X):
        """Predicted targets: (n_samples,) if y was 1-D in fit, else (n_samples, n_outputs); float64."""
        out = self._forward(X) * self.target_scale_ + self.target_mean_
        return out[:, 0] if self._y_ndim == 1 else out
