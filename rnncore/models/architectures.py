"""The recurrent architectures of the lecture notes (../shared/seeds 001, 003, 004), each trainable with
rnncore.training.trainer.Trainer.

    sequence -> one      SequenceModel(head="many_to_one") (rnncore.models.sequence): logits from the last valid
                         step of each sequence; bidirectional: the forward half at t = L_b - 1, the
                         reverse half where the reverse scan ends, at t = 0 (tests/test_architectures.py)
    one -> sequence      OneToMany: one vector v (e.g. image features) conditions the initial state
                         and/or every input; teacher forcing to train, sampling or greedy to generate
    output -> hidden     OutputFeedbackRNN (seed 003, structure 2): the only recurrence is from the
                         output at t-1 to the hidden units at t
    no input             AutonomousRNN (seed 001): h_t = f(h_{t-1}; θ), a trajectory from h_0
    pre-activation       PreActivationRNN (seed 001, form (ii)): s_t = W[u_t; σ(s_{t-1})] + b, a
                         layer with rnncore.RNN's parameters (not a protocol model)
    time delay           delay_windows / window_batches / forecast (seed 004): predict y_{t+d} from
                         x_{<=t} with SequenceModel(head="regression"), forecast recursively
    encoder -> decoder   rnncore.models.seq2seq.Seq2Seq (attention: additive / multiplicative)

Every model here (and SequenceModel) follows the trainer's model protocol (rnncore/training/trainer.py):

    model.params, model.grads      dicts name -> array (same keys, shapes); backward passes add (+=)
    model.zero_grad()
    loss, count, backward = model.batch_loss(batch, reduction="mean", is_train=True)
    backward()                     adds the gradient of `loss` into model.grads (None if not is_train)
    model.config, Model.from_config(config), model.state_dict(), model.load_state_dict(d) (strict)

Arrays are time-major, as the layers: (T, B, ...). Arithmetic is in the model's dtype (float32 or
float64); inputs are converted to it.
"""
import numpy as np

from rnncore.engine.validation import (check_choice, check_float_dtype, check_ids, check_int, check_lengths,
                               check_reduction)
from rnncore.training.data import Batch
from rnncore.training.losses import mse, softmax, softmax_backward, softmax_cross_entropy
from rnncore.models.sequence import CELLS, Embedding, Linear, SequenceModel, _ParamDicts

__all__ = ["ProtocolModel", "OneToMany", "OutputFeedbackRNN", "AutonomousRNN", "PreActivationRNN",
           "delay_windows", "window_batches", "forecast", "softmax", "sample_logits"]


# ---------------------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------------------

class ProtocolModel(_ParamDicts):
    """Base of the protocol models: parameter bookkeeping, state dicts, configs (rnncore.models.sequence'
    _ParamDicts, shared with SequenceModel).

    A subclass calls ``self._init_params()``, then ``self._add_parts((prefix, part), ...)`` for the parts
    owning ``params``/``grads`` dicts (an Embedding, a Linear, a compiled layer) and
    ``self._own(name, array)`` for its own arrays, and defines ``config`` (the keyword arguments of its
    constructor).
    """

    def _own(self, name, array):
        self.params[name] = np.ascontiguousarray(array, dtype=self.dtype)
        self.grads[name] = np.zeros_like(self.params[name])
        return self.params[name]

    def _model_noun(self):
        return type(self).__name__

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


def sample_logits(logits, temperature=1.0, greedy=False, rng=None):
    """One id per row of logits (B, V): argmax (greedy) or a draw from softmax(logits / temperature)."""
    if greedy:
        return logits.argmax(axis=-1)
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    p = softmax(logits.astype(np.float64) / temperature)
    u = rng.random((p.shape[0], 1))
    # inverse CDF: the first class whose cumulative probability exceeds u
    return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), p.shape[-1] - 1)


def _rng_from(seed, k):
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(k)]


def _uniform(rng, shape, fan_in, dtype):
    # torch.nn.Linear / RNN initialisation: U(-1/√fan_in, 1/√fan_in)
    k = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-k, k, shape).astype(dtype)


def _as_array(x, name, kinds, what, ndim, doc):
    """np.asarray(x), or TypeError unless its dtype kind is in kinds, ValueError unless it has ndim dims."""
    arr = np.asarray(x)
    if arr.dtype.kind not in kinds:
        raise TypeError(f"{name}: expected {what} {doc}, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dims {doc}, got shape {arr.shape}")
    return arr


def _as_floats(x, name, dtype, ndim, doc):
    return np.ascontiguousarray(_as_array(x, name, "fiu", "real numbers", ndim, doc), dtype=dtype)


def _as_lengths(lengths, T, B, name="lengths"):
    """None, or lengths in [1, T] as int64 (rnncore.engine.validation.check_lengths)."""
    return None if lengths is None else check_lengths(lengths, T, B, name, dtype=np.int64)


def _unpack(batch, names, required):
    """A batch tuple -> its fields, (required, then optional ones as None)."""
    if not isinstance(batch, (tuple, list)):
        raise TypeError(f"batch: expected a tuple {tuple(names)}, got {type(batch).__name__}")
    if not required <= len(batch) <= len(names):
        raise ValueError(f"batch: expected a tuple {tuple(names)} of {required} to {len(names)} "
                         f"arrays, got {len(batch)}")
    return tuple(batch) + (None,) * (len(names) - len(batch))


def _stop_at_eos(y, eos, done, lengths, t):
    """Decoding step t's ids y (B,) with eos (None: no eos, y unchanged): a finished sequence keeps
    emitting eos; one that emits eos now is done, with length t + 1 (done and lengths updated in
    place). Returns the ids."""
    if eos is None:
        return y
    y = np.where(done, eos, y)
    ended = (y == eos) & ~done
    lengths[ended] = t + 1
    done |= ended
    return y


# ---------------------------------------------------------------------------------------------------
# one -> many
# ---------------------------------------------------------------------------------------------------

class OneToMany(ProtocolModel):
    """One input vector -> a token sequence (the seeds' image-captioning shape).

        v          (B, F)   the conditioning vector (image features)
        y_0 = bos, y_1 .. y_T the tokens; y_1 .. y_T are the targets
        condition "init" or "both":   h_0 = tanh(W_h v + b_h)   (LSTM: c_0 = tanh(W_c v + b_c)),
                                      one block per layer, from the linear map ``init``
                  "input":            h_0 = 0
        x_t = E[y_{t-1}]                      ("init")
        x_t = [E[y_{t-1}]; v]                 ("input", "both": v fed at every step)
        h_t = cell(x_t, h_{t-1})              (rnncore.RNN / LSTM / GRU)
        o_t = W_o h_t + b_o,   p(y_t | y_<t, v) = softmax(o_t)

    Training is by teacher forcing: the true y_{t-1} is fed, so the whole sequence is one call of
    the compiled layer. Generation feeds the model's own choice (sampled or greedy), one step at a time.

    batch: (features (B, F), tokens (T+1, B) int with tokens[0] = bos, lengths (B,) or None): the
    targets of sequence b are tokens[1 : lengths[b]+1].
    """

    CONDITIONS = ("init", "input", "both")

    def __init__(self, feature_size, vocab_size, hidden_size=64, embedding_dim=32, cell="lstm",
                 num_layers=1, condition="init", bos=0, eos=None, dtype=np.float32, seed=None):
        check_choice(cell, "cell", CELLS)
        check_choice(condition, "condition", self.CONDITIONS)
        self.feature_size = check_int(feature_size, "feature_size", 1)
        self.vocab_size = check_int(vocab_size, "vocab_size", 1)
        self.hidden_size = check_int(hidden_size, "hidden_size", 1)
        self.embedding_dim = check_int(embedding_dim, "embedding_dim", 1)
        self.num_layers = check_int(num_layers, "num_layers", 1)
        self.bos = check_int(bos, "bos", 0, vocab_size - 1)
        self.eos = None if eos is None else check_int(eos, "eos", 0, vocab_size - 1)
        self.cell, self.condition, self.seed = cell, condition, seed
        self.dtype = check_float_dtype(dtype)
        self._lstm = cell == "lstm"
        self._feed = condition in ("input", "both")
        self._init = condition in ("init", "both")

        r = _rng_from(seed, 4)
        self._init_params()
        self.embedding = Embedding(vocab_size, embedding_dim, self.dtype, r[0])
        self.rnn = CELLS[cell](embedding_dim + (feature_size if self._feed else 0), hidden_size,
                               num_layers=num_layers, dtype=self.dtype,
                               seed=int(r[1].integers(2 ** 31)))
        self.head = Linear(hidden_size, vocab_size, self.dtype, r[2])
        self.init = None
        if self._init:
            S = 2 if self._lstm else 1
            self.init = Linear(feature_size, S * num_layers * hidden_size, self.dtype, r[3])
        self._add_parts(("embedding", self.embedding), ("rnn", self.rnn), ("head", self.head),
                        ("init", self.init))

    @property
    def config(self):
        return {"feature_size": self.feature_size, "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size, "embedding_dim": self.embedding_dim, "cell": self.cell,
                "num_layers": self.num_layers, "condition": self.condition, "bos": self.bos,
                "eos": self.eos, "dtype": self.dtype.name, "seed": self.seed}

    def _initial_state(self, V, is_train):
        """V (B, F) -> (hx for the layer, backprop(dhx) -> dV) ; hx None when not conditioned."""
        B = V.shape[0]
        if not self._init:
            return None, (lambda dhx: np.zeros_like(V))
        S, L, H = (2 if self._lstm else 1), self.num_layers, self.hidden_size
        A, init_bp = self.init.forward(V, is_train)
        Z = np.tanh(A)                                               # (B, S*L*H)
        Zs = np.ascontiguousarray(Z.reshape(B, S, L, H).transpose(1, 2, 0, 3))   # (S, L, B, H)
        hx = (Zs[0], Zs[1]) if self._lstm else Zs[0]

        def backprop(dhx):
            dZs = np.stack(dhx) if self._lstm else dhx[None]
            dZ = dZs.transpose(2, 0, 1, 3).reshape(B, S * L * H)
            # through tanh: dA = dZ (1 - Z²)
            return init_bp(dZ * (1 - Z * Z))

        return hx, backprop

    def _inputs(self, ids, V):
        """ids (T, B) -> the layer's input (T, B, E [+ F]) and its backprop (-> dV part)."""
        E, emb_bp = self.embedding.forward(ids)
        if not self._feed:
            return E, lambda dX: (emb_bp(dX), None)[1]
        T = E.shape[0]
        X = np.concatenate([E, np.broadcast_to(V, (T,) + V.shape)], axis=2)
        D = self.embedding_dim

        def backprop(dX):
            emb_bp(dX[:, :, :D])
            return dX[:, :, D:].sum(axis=0)                         # v is fed at every step

        return X, backprop

    def _check(self, features, tokens, lengths=None):
        V = _as_floats(features, "features", self.dtype, 2, "(batch, feature_size)")
        if V.shape[1] != self.feature_size:
            raise ValueError(f"features: expected (batch, {self.feature_size}), got shape {V.shape}")
        ids = check_ids(tokens, self.vocab_size, "tokens", ndim=2, doc="(T+1, batch), tokens[0] = bos")
        if ids.shape[1] != V.shape[0] or ids.shape[0] < 2:
            raise ValueError(f"tokens: expected (T+1, {V.shape[0]}) with T >= 1 (bos then the targets), "
                             f"got shape {ids.shape}")
        return V, ids, _as_lengths(lengths, ids.shape[0] - 1, V.shape[0])

    def forward(self, features, tokens_in, lengths=None, is_train=True):
        """Teacher forcing. features (B, F), tokens_in (T, B) = y_0 .. y_{T-1}; lengths (B,) or None.

        Returns (logits (T, B, vocab_size), backprop); ``dV = backprop(d_logits)`` adds the
        parameter gradients into grads and returns the gradient of the features."""
        V = np.asarray(features, dtype=self.dtype)
        hx, init_bp = self._initial_state(V, is_train)
        X, in_bp = self._inputs(tokens_in, V)
        if is_train:
            Hs, _, rnn_bp = self.rnn.forward_train(X, hx=hx, lengths=lengths)
        else:
            Hs, _ = self.rnn(X, hx=hx, lengths=lengths)
        logits, head_bp = self.head.forward(Hs)
        if not is_train:
            return logits, None

        def backprop(d_logits):
            dX, dhx = rnn_bp(head_bp(d_logits))
            dV = init_bp(dhx) if self._init else np.zeros_like(V)
            dVin = in_bp(dX)
            return dV if dVin is None else dV + dVin

        return logits, backprop

    def batch_loss(self, batch, reduction="mean", is_train=True):
        """Cross-entropy of the targets tokens[1:] under teacher forcing: (loss, count, backward)."""
        check_reduction(reduction)
        features, tokens, lengths = _unpack(batch, ("features", "tokens", "lengths"), 2)
        V, ids, lengths = self._check(features, tokens, lengths)
        logits, bp = self.forward(V, ids[:-1], lengths, is_train)
        loss, d_logits = softmax_cross_entropy(logits, ids[1:], lengths=lengths, reduction=reduction)
        count = int(lengths.sum()) if lengths is not None else ids[1:].size
        return loss, count, ((lambda: bp(d_logits)) if is_train else None)

    def generate(self, features, max_length, temperature=1.0, greedy=False, rng=None):
        """Tokens for each feature vector, feeding back the model's own choice at every step.

        greedy: the most likely token; otherwise a draw from softmax(o_t / temperature).
        Stops a sequence after eos (when the model has one). Returns (ids (max_length, B) int64,
        lengths (B,): tokens up to and including eos; positions after it hold eos)."""
        V = _as_floats(features, "features", self.dtype, 2, "(batch, feature_size)")
        if V.shape[1] != self.feature_size:
            raise ValueError(f"features: expected (batch, {self.feature_size}), got shape {V.shape}")
        max_length = check_int(max_length, "max_length", 1)
        rng = np.random.default_rng(rng)
        B = V.shape[0]
        state, _ = self._initial_state(V, False)
        y = np.full(B, self.bos, dtype=np.int64)
        out = np.zeros((max_length, B), dtype=np.int64)
        lengths = np.full(B, max_length, dtype=np.int64)
        done = np.zeros(B, dtype=bool)
        for t in range(max_length):
            X, _ = self._inputs(y[None], V)
            Hs, state = self.rnn(X, hx=state)
            logits, _ = self.head.forward(Hs[0], is_train=False)
            y = _stop_at_eos(sample_logits(logits, temperature, greedy, rng), self.eos, done, lengths, t)
            out[t] = y
            if done.all():
                out[t + 1:] = self.eos
                break
        return out, lengths


# ---------------------------------------------------------------------------------------------------
# output -> hidden recurrence (seed 003, structure 2)
# ---------------------------------------------------------------------------------------------------

class OutputFeedbackRNN(ProtocolModel):
    """An RNN whose only recurrence is from the output at t-1 to the hidden units at t (seed 003,
    structure 2; Goodfellow et al. fig. 10.4):

        a_t = b + W f_{t-1} + U x_t,   h_t = tanh(a_t),   o_t = c + V h_t
        f_{t-1}, what is fed back:
          teacher forcing   the previous target: y_{t-1} (regression) or onehot(y_{t-1}) (classification)
          free running      the previous output: o_{t-1} (regression) or ŷ_{t-1} = softmax(o_{t-1})
        f_{-1} = y0 (an input, zero by default)

    With teacher forcing the steps do not depend on each other: all T are computed at once (one GEMM
    per weight). Free running is a loop; its backward pass goes through the feedback path exactly:
    ∂L/∂o_t = ∂L^(t)/∂o_t + J_g(o_t)^T W^T ∂L/∂a_{t+1}, with g the identity or the softmax.

    output: "regression" (loss: mean squared error) or "classification" (softmax cross-entropy; the
    targets are ids). mode: "teacher_forcing" or "free_running" (what batch_loss trains with).
    batch: (X (T, B, input_size), Y (T, B, output_size) floats or (T, B) ids, lengths (B,) or None,
    y0 (B, output_size) or None).
    """

    OUTPUTS = ("regression", "classification")
    MODES = ("teacher_forcing", "free_running")

    def __init__(self, input_size, hidden_size, output_size, output="regression",
                 mode="teacher_forcing", dtype=np.float32, seed=None):
        check_choice(output, "output", self.OUTPUTS)
        check_choice(mode, "mode", self.MODES)
        self.input_size = check_int(input_size, "input_size", 1)
        self.hidden_size = check_int(hidden_size, "hidden_size", 1)
        self.output_size = check_int(output_size, "output_size", 1)
        self.output, self.mode, self.seed = output, mode, seed
        self.dtype = check_float_dtype(dtype)
        I, H, O = input_size, hidden_size, output_size
        rng = np.random.default_rng(seed)
        self._init_params()
        self._own("U", _uniform(rng, (H, I), H, self.dtype))
        self._own("W", _uniform(rng, (H, O), H, self.dtype))
        self._own("b", _uniform(rng, (H,), H, self.dtype))
        self._own("V", _uniform(rng, (O, H), H, self.dtype))
        self._own("c", _uniform(rng, (O,), H, self.dtype))

    @property
    def config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "output_size": self.output_size, "output": self.output, "mode": self.mode,
                "dtype": self.dtype.name, "seed": self.seed}

    def _feedback(self, O):
        """f = g(o): o itself (regression) or softmax(o) (classification)."""
        return softmax(O) if self.output == "classification" else O

    def _feedback_backward(self, F, dF):
        """dO = J_g(o)^T dF: dF itself, or for the softmax p * (dF - Σ p dF)."""
        if self.output == "classification":
            return softmax_backward(F, dF)
        return dF

    def _targets_fed(self, Y):
        if self.output == "classification":
            F = np.zeros(Y.shape + (self.output_size,), self.dtype)
            np.put_along_axis(F, Y[..., None], 1, axis=-1)
            return F
        return Y

    def _check(self, X, Y=None, lengths=None, y0=None):
        X = _as_floats(X, "X", self.dtype, 3, "(T, batch, input_size)")
        T, B, I = X.shape
        if I != self.input_size or T < 1:
            raise ValueError(f"X: expected (T >= 1, batch, {self.input_size}), got shape {X.shape}")
        if Y is not None:
            if self.output == "classification":
                Y = check_ids(Y, self.output_size, "Y", what="class ids", ndim=2, doc="(T, batch)")
                want = (T, B)
            else:
                Y = _as_floats(Y, "Y", self.dtype, 3, "(T, batch, output_size)")
                want = (T, B, self.output_size)
            if Y.shape != want:
                raise ValueError(f"Y: expected shape {want}, got {Y.shape}")
        if y0 is not None:
            y0 = _as_floats(y0, "y0", self.dtype, 2, "(batch, output_size)")
            if y0.shape != (B, self.output_size):
                raise ValueError(f"y0: expected shape {(B, self.output_size)}, got {y0.shape}")
        return X, Y, _as_lengths(lengths, T, B), y0

    def forward(self, X, Y=None, y0=None, mode=None, is_train=True):
        """O, backprop = forward(X, Y, y0, mode). X (T, B, I); Y the targets (needed for teacher
        forcing); y0 (B, O) the value fed at t = 0 (zeros if None); mode defaults to self.mode.

        Returns the outputs O (T, B, O) (logits for classification) and ``backprop(dO) -> (dX, dy0)``
        (None if not is_train), which adds the parameter gradients into grads."""
        mode = self.mode if mode is None else mode
        check_choice(mode, "mode", self.MODES)
        X, Y, _, y0 = self._check(X, Y, None, y0)
        if mode == "teacher_forcing" and Y is None:
            raise ValueError("teacher forcing feeds the previous target: expected Y, got None")
        T, B, _ = X.shape
        p = self.params
        U, W, b, V, c = p["U"], p["W"], p["b"], p["V"], p["c"]
        if y0 is None:
            y0 = np.zeros((B, self.output_size), self.dtype)
        # the input part of every step at once: X U^T + b          (T, B, H)
        AX = X @ U.T + b
        if mode == "teacher_forcing":
            # f_{t-1} = y_{t-1}: known in advance, so the steps are independent
            Fin = np.concatenate([y0[None], self._targets_fed(Y)[:-1]], axis=0)    # (T, B, O)
            Hs = np.tanh(AX + Fin @ W.T)
            O = Hs @ V.T + c
        else:
            Fin = np.empty((T, B, self.output_size), self.dtype)
            Hs = np.empty((T, B, self.hidden_size), self.dtype)
            O = np.empty((T, B, self.output_size), self.dtype)
            Fout = np.empty_like(O)                 # g(o_t), fed at t + 1
            f = y0
            for t in range(T):
                Fin[t] = f
                Hs[t] = np.tanh(AX[t] + f @ W.T)
                O[t] = Hs[t] @ V.T + c
                Fout[t] = f = self._feedback(O[t])
        if not is_train:
            return O, None
        g = self.grads

        def backprop(dO):
            dO = np.asarray(dO, dtype=self.dtype)
            if mode == "teacher_forcing":
                dOt = dO
                dA = (dOt @ V) * (1 - Hs * Hs)                       # (T, B, H)
            else:
                dOt = np.empty_like(dO)
                dA = np.empty_like(Hs)
                df = np.zeros((B, self.output_size), self.dtype)     # ∂L/∂f_t, from step t + 1
                for t in reversed(range(T)):
                    # o_t feeds the loss at t and, through f_t = g(o_t), the step t + 1
                    dOt[t] = dO[t] + self._feedback_backward(Fout[t], df)
                    dA[t] = (dOt[t] @ V) * (1 - Hs[t] * Hs[t])
                    df = dA[t] @ W                                   # into f_{t-1}
            dA2, dO2 = dA.reshape(T * B, -1), dOt.reshape(T * B, -1)
            # o = c + V h:  dV += Σ dO h^T,  dc += Σ dO
            g["V"] += dO2.T @ Hs.reshape(T * B, -1)
            g["c"] += dO2.sum(axis=0)
            # a = b + W f + U x:  dW += Σ dA f^T,  dU += Σ dA x^T,  db += Σ dA
            g["W"] += dA2.T @ Fin.reshape(T * B, -1)
            g["U"] += dA2.T @ X.reshape(T * B, -1)
            g["b"] += dA2.sum(axis=0)
            dX = dA @ U
            dy0 = dA[0] @ W
            return dX, dy0

        return O, backprop

    def _loss(self, O, Y, lengths, reduction):
        if self.output == "classification":
            return softmax_cross_entropy(O, Y, lengths=lengths, reduction=reduction)
        return mse(O, Y, lengths=lengths, reduction=reduction)

    def batch_loss(self, batch, reduction="mean", is_train=True, mode=None):
        """Loss of the outputs against Y in `mode` (default self.mode): (loss, count, backward)."""
        check_reduction(reduction)
        X, Y, lengths, y0 = _unpack(batch, ("X", "Y", "lengths", "y0"), 2)
        X, Y, lengths, y0 = self._check(X, Y, lengths, y0)
        O, bp = self.forward(X, Y, y0, mode, is_train)
        loss, dO = self._loss(O, Y, lengths, reduction)
        steps = int(lengths.sum()) if lengths is not None else X.shape[0] * X.shape[1]
        count = steps * (self.output_size if self.output == "regression" else 1)
        return loss, count, ((lambda: bp(dO)) if is_train else None)

    def generate(self, X, y0=None):
        """Free running: the outputs O (T, B, O) when the model's own outputs are fed back."""
        return self.forward(X, None, y0, "free_running", is_train=False)[0]


# ---------------------------------------------------------------------------------------------------
# autonomous recurrence (seed 001: no input)
# ---------------------------------------------------------------------------------------------------

class AutonomousRNN(ProtocolModel):
    """A recurrence with no input (seed 001, "h_t = f_θ(h_{t-1})": a Markov chain's shape), read out:

        h_t = φ(W h_{t-1} + b),   φ = tanh or relu,   t = 1 .. T
        y_t = V h_t + c

    h_0 is a learned parameter ("h0", shape (H,), the same for every sequence) or given per sequence.
    Trained to reproduce target trajectories y_1 .. y_T (mean squared error).

    batch: (Y (T, B, output_size), h0 (B, H) or None).
    """

    def __init__(self, hidden_size, output_size, nonlinearity="tanh", dtype=np.float32, seed=None):
        check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
        self.hidden_size = check_int(hidden_size, "hidden_size", 1)
        self.output_size = check_int(output_size, "output_size", 1)
        self.nonlinearity, self.seed = nonlinearity, seed
        self.dtype = check_float_dtype(dtype)
        H, O = hidden_size, output_size
        rng = np.random.default_rng(seed)
        self._init_params()
        self._own("W", _uniform(rng, (H, H), H, self.dtype))
        self._own("b", _uniform(rng, (H,), H, self.dtype))
        self._own("V", _uniform(rng, (O, H), H, self.dtype))
        self._own("c", _uniform(rng, (O,), H, self.dtype))
        self._own("h0", rng.uniform(-1, 1, (H,)).astype(self.dtype))

    @property
    def config(self):
        return {"hidden_size": self.hidden_size, "output_size": self.output_size,
                "nonlinearity": self.nonlinearity, "dtype": self.dtype.name, "seed": self.seed}

    def _check_h0(self, h0, B):
        h0 = _as_floats(h0, "h0", self.dtype, 2, "(batch, hidden_size)")
        if h0.shape[1] != self.hidden_size or (B is not None and h0.shape[0] != B):
            raise ValueError(f"h0: expected shape ({'batch' if B is None else B}, {self.hidden_size}), "
                             f"got {h0.shape}")
        return h0

    def forward(self, steps, batch_size=1, h0=None, is_train=True):
        """Run `steps` steps from h0 (B, H) (None: the learned h0 for batch_size sequences).

        Returns (Y (T, B, O), Hs (T, B, H), backprop); ``dh0 = backprop(dY)`` adds the parameter
        gradients into grads (into grads["h0"] too when the learned h0 was used)."""
        T = check_int(steps, "steps", 1)
        learned = h0 is None
        h0 = np.broadcast_to(self.params["h0"], (batch_size, self.hidden_size)) if learned \
            else self._check_h0(h0, None)
        B = h0.shape[0]
        W, b, V, c = (self.params[k] for k in ("W", "b", "V", "c"))
        relu = self.nonlinearity == "relu"
        Hs = np.empty((T + 1, B, self.hidden_size), self.dtype)     # Hs[0] = h_0
        Hs[0] = h0
        for t in range(1, T + 1):
            a = Hs[t - 1] @ W.T + b
            Hs[t] = np.maximum(a, 0) if relu else np.tanh(a)
        Y = Hs[1:] @ V.T + c
        if not is_train:
            return Y, Hs[1:], None
        g = self.grads

        def backprop(dY):
            dY = np.asarray(dY, dtype=self.dtype)
            # y = c + V h:  dV += Σ dY h^T,  dc += Σ dY,  ∂L/∂h_t (from the readout) = dY_t V
            g["V"] += dY.reshape(T * B, -1).T @ Hs[1:].reshape(T * B, -1)
            g["c"] += dY.reshape(T * B, -1).sum(axis=0)
            dHout = dY @ V
            dA = np.empty((T, B, self.hidden_size), self.dtype)
            dh = np.zeros((B, self.hidden_size), self.dtype)        # ∂L/∂h_t from step t + 1
            for t in range(T, 0, -1):
                dh = dh + dHout[t - 1]
                # through φ: tanh' = 1 - h², relu' = [h > 0]
                dA[t - 1] = dh * (Hs[t] > 0) if relu else dh * (1 - Hs[t] * Hs[t])
                dh = dA[t - 1] @ W                                  # into h_{t-1}
            dA2 = dA.reshape(T * B, -1)
            # a_t = W h_{t-1} + b:  dW += Σ dA h_{t-1}^T,  db += Σ dA
            g["W"] += dA2.T @ Hs[:-1].reshape(T * B, -1)
            g["b"] += dA2.sum(axis=0)
            if learned:
                g["h0"] += dh.sum(axis=0)
            return dh

        return Y, Hs[1:], backprop

    def batch_loss(self, batch, reduction="mean", is_train=True):
        """Mean squared error of the trajectory against Y: (loss, count, backward)."""
        check_reduction(reduction)
        Y, h0 = _unpack(batch, ("Y", "h0"), 1)
        Y = _as_floats(Y, "Y", self.dtype, 3, "(T, batch, output_size)")
        if Y.shape[2] != self.output_size or Y.shape[0] < 1:
            raise ValueError(f"Y: expected (T >= 1, batch, {self.output_size}), got shape {Y.shape}")
        if h0 is not None:
            h0 = self._check_h0(h0, Y.shape[1])
        Yhat, _, bp = self.forward(Y.shape[0], Y.shape[1], h0, is_train)
        loss, dY = mse(Yhat, Y, reduction=reduction)
        return loss, Y.size, ((lambda: bp(dY)) if is_train else None)

    def generate(self, steps, h0=None, batch_size=1):
        """(Y (T, B, O), Hs (T, B, H)): the trajectory from h0 (None: the learned h0)."""
        Y, Hs, _ = self.forward(steps, batch_size, h0, is_train=False)
        return Y, Hs


# ---------------------------------------------------------------------------------------------------
# the vanilla RNN's second form (seed 001, (ii)): the state is the pre-activation
# ---------------------------------------------------------------------------------------------------

class PreActivationRNN(ProtocolModel):
    """Seed 001's form (ii) of the vanilla RNN, a layer with rnncore.RNN's interface and parameters:

        (i)   h_t = σ(W [h^{l-1}_t; h_{t-1}] + b)       rnncore.RNN: σ at the end of a layer
        (ii)  s_t = W [u^l_t; σ(s_{t-1})] + b          this class: σ at the start of a layer

    with W = [W_ih, W_hh], b = b_ih + b_hh (PyTorch's names, weight_ih_l{k} ... bias_hh_l{k}, so one
    state_dict loads into both) and σ = tanh or relu. The layer's input is u^0_t = x_t (the data, no
    σ) and u^l_t = σ(s^{l-1}_t) above it: σ is applied to every state before a weight multiplies it.
    The state s, the output (the top layer's s_t at every step, (T, B, H)) and s_n are pre-activations.

    The two forms are the same network (tests/test_preactivation.py): with the same weights and
    s_{-1} such that σ(s_{-1}) = h_{-1} (zeros for zeros), s^l_t = a^l_t, form (i)'s pre-activation,
    and σ(s^l_t) = h^l_t at every step and layer; gradients agree through ∂L/∂s = ∂L/∂h ⊙ σ'(s).
    What differs is where a network's σ sits: form (ii) reads x without σ and emits s, so a head on
    it sees a_t where form (i)'s sees σ(a_t) (add σ to that head to get form (i)'s function back), and
    an initial state h_{-1} of form (i) is s_{-1} = σ⁻¹(h_{-1}) in form (ii) (tanh: |h| < 1 only).

    ``out, s_n = layer(x, s0=None)``; ``out, s_n, backprop = layer.forward_train(x, s0)``;
    ``dx, ds0 = backprop(d_out, d_s_n=None)`` adds the parameter gradients into ``grads``. Time-major,
    numpy (the recurrence is a Python loop over steps, a GEMM each); no lengths.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 dtype=np.float32, seed=None):
        check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
        self.input_size = check_int(input_size, "input_size", 1)
        self.hidden_size = check_int(hidden_size, "hidden_size", 1)
        self.num_layers = check_int(num_layers, "num_layers", 1)
        self.nonlinearity, self.bias, self.seed = nonlinearity, bool(bias), seed
        self.dtype = check_float_dtype(dtype)
        H = hidden_size
        rng = np.random.default_rng(seed)
        self._init_params()
        for k in range(self.num_layers):
            self._own(f"weight_ih_l{k}", _uniform(rng, (H, input_size if k == 0 else H), H, self.dtype))
            self._own(f"weight_hh_l{k}", _uniform(rng, (H, H), H, self.dtype))
            if self.bias:
                self._own(f"bias_ih_l{k}", _uniform(rng, (H,), H, self.dtype))
                self._own(f"bias_hh_l{k}", _uniform(rng, (H,), H, self.dtype))

    @property
    def config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "nonlinearity": self.nonlinearity, "bias": self.bias,
                "dtype": self.dtype.name, "seed": self.seed}

    def _sigma(self, s):
        return np.maximum(s, 0) if self.nonlinearity == "relu" else np.tanh(s)

    def _dsigma(self, s, sig):
        """σ'(s), from s and σ(s): relu [s > 0], tanh 1 - σ(s)²."""
        return (s > 0).astype(s.dtype) if self.nonlinearity == "relu" else 1 - sig * sig

    def __call__(self, x, s0=None):
        out, s_n, _ = self.forward_train(x, s0)
        return out, s_n

    def forward_train(self, x, s0=None):
        x = _as_floats(x, "x", self.dtype, 3, "(time, batch, input_size)")
        T, B, I = x.shape
        L, H = self.num_layers, self.hidden_size
        if I != self.input_size or T < 1 or B < 1:
            raise ValueError(f"x: expected (T >= 1, batch >= 1, {self.input_size}), got shape {x.shape}")
        s0 = np.zeros((L, B, H), self.dtype) if s0 is None else _as_floats(s0, "s0", self.dtype, 3,
                                                                            "(num_layers, batch, hidden)")
        if s0.shape != (L, B, H):
            raise ValueError(f"s0: expected shape {(L, B, H)}, got {s0.shape}")
        p = self.params
        cache = []                       # per layer: (u, S (T+1, B, H) with S[0] = s0, σ(S))
        u = x
        for k in range(L):
            S = np.empty((T + 1, B, H), self.dtype)
            S[0] = s0[k]
            sig = np.empty_like(S)
            sig[0] = self._sigma(s0[k])
            # the input part of every step at once: u W_ih^T + b_ih + b_hh
            AX = u @ p[f"weight_ih_l{k}"].T
            if self.bias:
                AX += p[f"bias_ih_l{k}"] + p[f"bias_hh_l{k}"]
            for t in range(T):
                # (ii) s_t = W_ih u_t + b + W_hh σ(s_{t-1})
                S[t + 1] = AX[t] + sig[t] @ p[f"weight_hh_l{k}"].T
                sig[t + 1] = self._sigma(S[t + 1])
            cache.append((u, S, sig))
            u = sig[1:]                  # the next layer reads σ(s)
        out = cache[-1][1][1:].copy()
        s_n = np.stack([c[1][-1] for c in cache])
        g = self.grads

        def backprop(d_out, d_s_n=None):
            dS_above = _as_floats(d_out, "d_out", self.dtype, 3, "(time, batch, hidden)")
            ds_n = np.zeros((L, B, H), self.dtype) if d_s_n is None else _as_floats(
                d_s_n, "d_s_n", self.dtype, 3, "(num_layers, batch, hidden)")
            ds0 = np.empty((L, B, H), self.dtype)
            for k in reversed(range(L)):
                uk, S, sig = cache[k]
                W_hh = p[f"weight_hh_l{k}"]
                dS = np.empty((T, B, H), self.dtype)
                ds = ds_n[k]                                    # ∂L/∂s_t from step t + 1
                for t in reversed(range(T)):
                    dS[t] = ds + dS_above[t]
                    # s_t = ... + W_hh σ(s_{t-1}):  ∂L/∂s_{t-1} += (∂L/∂s_t W_hh) ⊙ σ'(s_{t-1})
                    ds = (dS[t] @ W_hh) * self._dsigma(S[t], sig[t])
                ds0[k] = ds
                dS2 = dS.reshape(T * B, H)
                # dW_ih += Σ ∂L/∂s u^T;  dW_hh += Σ ∂L/∂s σ(s_{t-1})^T;  db_ih, db_hh += Σ ∂L/∂s
                g[f"weight_ih_l{k}"] += dS2.T @ uk.reshape(T * B, -1)
                g[f"weight_hh_l{k}"] += dS2.T @ sig[:-1].reshape(T * B, H)
                if self.bias:
                    g[f"bias_ih_l{k}"] += dS2.sum(axis=0)
                    g[f"bias_hh_l{k}"] += dS2.sum(axis=0)
                du = dS @ p[f"weight_ih_l{k}"]
                if k > 0:                                       # u = σ(s of the layer below)
                    dS_above = du * self._dsigma(cache[k - 1][1][1:], uk)
            return du, ds0

        return out, s_n, backprop


# ---------------------------------------------------------------------------------------------------
# time-delay forecasting (seed 004)
# ---------------------------------------------------------------------------------------------------

def delay_windows(series, window, delay=1, stride=1):
    """(input, target) windows for predicting s_{t+d} from s_{<=t} (seed 004's time delay).

    series (N,) or (N, F). Window m starts at i = m * stride:
        X[:, m] = s[i : i + window],   Y[:, m] = s[i + d : i + d + window]
    so that the target at step t of a window is the value `delay` steps after the input at t.
    Returns X, Y time-major, each (window, M, F) (F = 1 for a 1-D series)."""
    s = np.asarray(series)
    if s.dtype.kind not in "fiu":
        raise TypeError(f"series: expected real numbers, got dtype {s.dtype}")
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2:
        raise ValueError(f"series: expected shape (N,) or (N, F), got {np.shape(series)}")
    window = check_int(window, "window", 1)
    delay = check_int(delay, "delay", 1)
    stride = check_int(stride, "stride", 1)
    N = s.shape[0]
    if N < window + delay:
        raise ValueError(f"series: expected at least window + delay = {window + delay} values, got {N}")
    starts = np.arange(0, N - window - delay + 1, stride)
    idx = starts[None, :] + np.arange(window)[:, None]            # (window, M)
    return s[idx], s[idx + delay]


def window_batches(X, Y, batch_size, rng=None):
    """Cut windows (T, M, F) into a list of rnncore.training.data.Batch(X, Y, None) of batch_size windows
    (the order shuffled by rng when given), for the Trainer with SequenceModel(head="regression")."""
    batch_size = check_int(batch_size, "batch_size", 1)
    M = X.shape[1]
    if Y.shape[:2] != X.shape[:2]:
        raise ValueError(f"Y: expected windows of X's shape {X.shape[:2]}, got {Y.shape[:2]}")
    order = np.arange(M) if rng is None else np.random.default_rng(rng).permutation(M)
    return [Batch(X[:, order[i:i + batch_size]], Y[:, order[i:i + batch_size]], None)
            for i in range(0, M, batch_size)]


def forecast(model, history, steps, delay=1):
    """Recursive multi-step forecast with a time-delay regression model.

    model: SequenceModel(head="regression") trained on delay_windows(series, W, delay): its output
    at t predicts s_{t+delay}; its input and output size must be equal (the predictions are fed back).
    history: (N,), (N, F) or (N, B, F), N >= delay. After reading the history, the last `delay`
    outputs are the forecasts of s_N .. s_{N+delay-1}; each forecast value is then fed as the next
    input, whose output forecasts the value `delay` steps further.
    Returns `steps` forecasts, shaped as history without its first axis: (steps,), (steps, F) or
    (steps, B, F)."""
    if not isinstance(model, SequenceModel) or model.head_kind != "regression":
        raise TypeError(f"model: expected a SequenceModel with head='regression', got {model!r}")
    if model.input_size != model.output_size:
        raise ValueError(f"model: recursive forecasting feeds outputs back as inputs, so input_size must "
                         f"equal output_size, got {model.input_size} and {model.output_size}")
    steps = check_int(steps, "steps", 1)
    delay = check_int(delay, "delay", 1)
    h = np.asarray(history)
    if h.dtype.kind not in "fiu":
        raise TypeError(f"history: expected real numbers, got dtype {h.dtype}")
    shape_in = h.shape
    if h.ndim == 1:
        h = h[:, None, None]
    elif h.ndim == 2:
        h = h[:, None, :]
    if h.ndim != 3 or h.shape[2] != model.input_size or h.shape[0] < delay:
        raise ValueError(f"history: expected (N >= {delay},), (N, {model.input_size}) or "
                         f"(N, batch, {model.input_size}), got shape {shape_in}")
    Yhat, bp = model.forward(h.astype(model.dtype), is_train=False)
    state = bp.h_n
    pending = list(Yhat[-delay:])            # forecasts of s_N .. s_{N+delay-1}, each (B, F)
    out = []
    for _ in range(steps):
        nxt = pending.pop(0)
        out.append(nxt)
        Yhat, bp = model.forward(nxt[None], hx=state, is_train=False)
        state = bp.h_n
        pending.append(Yhat[0])
    out = np.stack(out)                      # (steps, B, F)
    if len(shape_in) == 1:
        return out[:, 0, 0]
    if len(shape_in) == 2:
        return out[:, 0, :]
    return out
