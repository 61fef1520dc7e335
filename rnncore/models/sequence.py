"""A thin model API over the recurrent layers: input -> recurrent stack -> linear head.

Every piece has the layers' shape of forward pass: ``Y, backprop = piece.forward(X, ...)``, where
backprop is a closure over what the forward pass kept; ``dX = backprop(dY)`` returns the gradient
for the input and adds (+=) the parameter gradients into ``piece.grads`` (zero them with
``zero_grad()``). Nothing about the last input is stored on the objects.

    x_t   input at step t: a token id (Embedding or OneHot turns it into a vector) or a float vector
    h_t   the recurrent stack's output at step t (rnncore.RNN / LSTM / GRU)
    o_t   head output, o = h W^T + b:  logits at every step ("many_to_many"), real values at every
          step ("regression"), or logits from one vector per sequence ("many_to_one"): the states
          read out by a Pooling ("last" valid step, "mean", "max" or "attention" over the valid steps)

SequenceModel owns ``params`` and ``grads``: dicts of the live arrays by dotted name
("embedding.weight", "rnn.weight_ih_l0", ..., ["pool.weight", "pool.bias", "pool.query",]
"head.weight", "head.bias"); an optimizer updates
params in place from grads.
"""
import numpy as np

from rnncore import _kernels as K
from rnncore.engine import threads as _threads
from rnncore.engine.validation import check_choice, check_ids
from rnncore.training.data import tbptt_chunks
from rnncore.layers.feedback import FeedbackRNN
from rnncore.layers.recurrent import GRU, LSTM, RNN, mark_modified
from rnncore.training.losses import mse, softmax, softmax_backward, softmax_cross_entropy

__all__ = ["Embedding", "OneHot", "Linear", "Pooling", "SequenceModel", "HEADS", "CELLS", "FEEDBACK_CELLS",
           "POOLINGS", "pool_states", "generate", "select_state"]

HEADS = ("many_to_many", "many_to_one", "regression")
POOLINGS = ("last", "mean", "max", "attention")
CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
# SequenceModel's recurrent part may also be a gated-feedback stack (rnncore.FeedbackRNN) of these cells
FEEDBACK_CELLS = {"gf-tanh": "tanh", "gf-gru": "gru", "gf-lstm": "lstm"}


class _Backprop:
    """Callable backward pass; also carries what the forward pass returned besides Y (``h_n``)."""

    def __init__(self, fn, h_n=None):
        self._fn = fn
        self.h_n = h_n

    def __call__(self, dY):
        if self._fn is None:
            raise RuntimeError("this forward pass ran with is_train=False: it has no backward pass")
        return self._fn(dY)


class Embedding:
    """Token id -> learned vector. weight (num_embeddings, dim), initialised N(0, 1) as torch.nn."""

    def __init__(self, num_embeddings, dim, dtype=np.float32, rng=None):
        rng = np.random.default_rng(rng)
        self.num_embeddings, self.dim = num_embeddings, dim
        self.params = {"weight": rng.standard_normal((num_embeddings, dim)).astype(dtype)}
        self.grads = {"weight": np.zeros_like(self.params["weight"])}

    def forward(self, ids, is_train=True):
        # ids (...,) -> E (..., dim)
        ids = check_ids(ids, self.num_embeddings, "X")
        W = self.params["weight"]
        E = W[ids]

        def backprop(dE):
            # dW[ids[n]] += dE[n]   (a token seen twice gets both contributions, in order of n)
            K.embedding_backward(self.grads["weight"], np.ascontiguousarray(ids).reshape(-1),
                                 np.ascontiguousarray(dE, dtype=W.dtype).reshape(-1, self.dim),
                                 _threads.get_num_threads())
            return None

        return E, backprop

    def zero_grad(self):
        self.grads["weight"].fill(0)


class OneHot:
    """Token id -> one-hot vector (num_classes,). No parameters (min-char-rnn's input)."""

    def __init__(self, num_classes, dtype=np.float32):
        self.num_classes, self.dim, self.dtype = num_classes, num_classes, np.dtype(dtype)
        self.params, self.grads = {}, {}

    def forward(self, ids, is_train=True):
        ids = check_ids(ids, self.num_classes, "X")
        E = np.zeros(ids.shape + (self.num_classes,), self.dtype)
        np.put_along_axis(E, ids[..., None], 1, axis=-1)
        return E, lambda dE: None

    def zero_grad(self):
        pass


class Linear:
    """Y = X W^T + b over the last axis. weight (out, in), bias (out,), torch.nn.Linear's init."""

    def __init__(self, in_features, out_features, dtype=np.float32, rng=None):
        rng = np.random.default_rng(rng)
        k = 1.0 / np.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.params = {"weight": rng.uniform(-k, k, (out_features, in_features)).astype(dtype),
                       "bias": rng.uniform(-k, k, (out_features,)).astype(dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, X, is_train=True):
        # X (..., in) -> Y (..., out). The products whose rows are X's rows (Y, dX) run on rnncore's
        # own GEMM, so a row's bits do not depend on the other rows; all of them on rnncore's team.
        W, b = self.params["weight"], self.params["bias"]
        if X.ndim < 1 or X.shape[-1] != self.in_features:
            raise ValueError(f"Linear: expected input (..., {self.in_features}), got shape {X.shape}")
        X2 = np.ascontiguousarray(X.reshape(-1, self.in_features), dtype=W.dtype)
        M, N, Kin = X2.shape[0], self.out_features, self.in_features
        nt = _threads.threads_for(2 * M * N * Kin)
        # Y = b + X W^T
        Y = np.empty((M, N), W.dtype)
        Y[...] = b
        K.packed_rows_add(Y, X2, K.pack_t(W), nt)

        def backprop(dY):
            dY2 = np.ascontiguousarray(dY.reshape(-1, N), dtype=W.dtype)
            # dW += dY^T X on rnncore's own GEMM for sums over rows (rnncore/_rc_sums.h: the rows
            # read where they lie, one multiply-add chain per element in row order);  db += Σ_rows dY
            K.step_sums_add(self.grads["weight"], dY2[None], X2[None], False, nt)
            K.colsum_add(self.grads["bias"], dY2, nt)
            # dX = dY W
            dX = np.zeros((M, Kin), W.dtype)
            K.packed_rows_add(dX, dY2, K.pack_n(W), nt)
            return dX.reshape(X.shape)

        return Y.reshape(X.shape[:-1] + (self.out_features,)), backprop

    def zero_grad(self):
        for g in self.grads.values():
            g.fill(0)


def pool_states(kind, H, lengths=None, num_directions=1, params=None):
    """The many-to-one readout: one vector per sequence from the recurrent stack's outputs.

    H (T, B, D) time-major outputs, lengths (B,) or None (every sequence has T steps). Only the valid
    steps t < L_b of sequence b are read: padding never reaches p_b or gets a gradient.

        last       p_b = h_{L_b - 1, b}; a bidirectional stack's reverse half (the last D / 2
                   features) is read at t = 0, where that direction ends
        mean       p_b = (1 / L_b) Σ_{t < L_b} h_{t, b}
        max        p_{b, j} = max_{t < L_b} h_{t, b, j}    (the gradient goes to the first step that
                   holds the max, as numpy's argmax picks it)
        attention  a learned query over the states (Yang et al. 2016's attention for classification;
                   the additive score of Bahdanau et al. with a fixed, learned query q):
                   u_t = tanh(W h_t + b),  e_t = q · u_t,  α = softmax over t < L_b of e,
                   p_b = Σ_{t < L_b} α_t h_t         params: weight W (D, D), bias b (D,), query q (D,)

    Returns (P (B, D) in H's dtype, backprop) with ``dH, dparams = backprop(dP)``: dH (T, B, D),
    zero at padding; dparams the gradients of params by name (empty unless attention).
    """
    T, B, D = H.shape
    L = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    valid = np.arange(T)[:, None] < L[None, :]                     # (T, B)
    if kind == "last":
        last, cols = L - 1, np.arange(B)
        F = D // num_directions                                    # features of the forward half
        P = H[last, cols].copy()
        if num_directions == 2:
            P[:, F:] = H[0, :, F:]

        def backprop(dP):
            dH = np.zeros_like(H)
            dH[last, cols, :F] = dP[:, :F]
            if num_directions == 2:
                dH[0, :, F:] += dP[:, F:]
            return dH, {}
    elif kind == "mean":
        inv_L = (1.0 / L).astype(H.dtype)[:, None]
        # p = Σ_t valid_t h_t / L
        P = np.where(valid[..., None], H, 0).sum(axis=0) * inv_L

        def backprop(dP):
            # dh_t = dp / L at the valid steps
            return np.where(valid[..., None], (dP * inv_L)[None], 0).astype(H.dtype, copy=False), {}
    elif kind == "max":
        at = np.where(valid[..., None], H, -np.inf).argmax(axis=0)  # (B, D): the step of each max
        P = np.take_along_axis(H, at[None], axis=0)[0]

        def backprop(dP):
            dH = np.zeros_like(H)
            np.put_along_axis(dH, at[None], dP[None], axis=0)
            return dH, {}
    elif kind == "attention":
        W, b, q = params["weight"], params["bias"], params["query"]
        # u_t = tanh(W h_t + b);  e_t = q · u_t;  α = softmax over the valid t;  p = Σ_t α_t h_t
        U = np.tanh(H @ W.T + b)                                   # (T, B, D)
        alpha = softmax(U @ q, axis=0, mask=valid)                 # (T, B), 0 at padding
        P = np.einsum("tb,tbd->bd", alpha, H)

        def backprop(dP):
            # dα_t = dp · h_t;  de = J_softmax^T dα (0 at padding);  dq = Σ de_t u_t
            de = softmax_backward(alpha, np.einsum("bd,tbd->tb", dP, H), axis=0)
            dq = np.einsum("tb,tbd->d", de, U)
            # dz_t = de_t q (1 - u_t²);  dW = Σ dz_t^T h_t;  db = Σ dz_t;  dh_t = α_t dp + dz_t W
            dZ = de[..., None] * q * (1 - U * U)
            dW = dZ.reshape(-1, D).T @ H.reshape(-1, D)
            dH = alpha[..., None] * dP[None] + dZ @ W
            return dH, {"weight": dW, "bias": dZ.sum(axis=(0, 1)), "query": dq}
    else:
        check_choice(kind, "pooling", POOLINGS)
    return P, backprop


class Pooling:
    """The readout of a many-to-one head: ``P, backprop = pool.forward(H, lengths)`` (pool_states's
    equations), ``dH = backprop(dP)`` adding (+=) into pool.grads. Parameters only for "attention":
    weight (D, D), bias (D,) and query (D,), initialised U(-1/√D, 1/√D) as torch.nn.Linear."""

    def __init__(self, kind, size, num_directions=1, dtype=np.float32, rng=None):
        check_choice(kind, "pooling", POOLINGS)
        self.kind, self.size, self.num_directions = kind, size, num_directions
        self.params = {}
        if kind == "attention":
            rng = np.random.default_rng(rng)
            k = 1.0 / np.sqrt(size)
            self.params = {name: rng.uniform(-k, k, shape).astype(dtype)
                           for name, shape in (("weight", (size, size)), ("bias", (size,)), ("query", (size,)))}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, H, lengths=None, is_train=True):
        P, pool_backprop = pool_states(self.kind, H, lengths, self.num_directions, self.params)

        def backprop(dP):
            dH, dparams = pool_backprop(dP)
            for name, g in dparams.items():
                self.grads[name] += g
            return dH

        return P, backprop

    def zero_grad(self):
        for g in self.grads.values():
            g.fill(0)


class _ParamDicts:
    """Parameter bookkeeping shared by SequenceModel and the protocol models
    (rnncore.models.architectures.ProtocolModel): ``params``/``grads`` dicts by dotted name, zero_grad,
    strict state dicts, configs.

    ``self._init_params()`` starts the dicts; ``self._add(prefix, part)`` adds the live arrays of a
    part owning ``params``/``grads`` dicts (an Embedding, a Linear, a compiled layer) as
    "prefix.name" (``self._add_parts((prefix, part), ...)``: several, skipping parts that are None).
    A subclass defines ``config`` (the keyword arguments of its constructor).
    """

    def _init_params(self):
        self.params, self.grads = {}, {}

    def _add(self, prefix, part):
        for name in part.params:
            self.params[f"{prefix}.{name}"] = part.params[name]
            self.grads[f"{prefix}.{name}"] = part.grads[name]

    def _add_parts(self, *named_parts):
        """``_add(prefix, part)`` for each (prefix, part) pair, in order; a part None is skipped."""
        for prefix, part in named_parts:
            if part is not None:
                self._add(prefix, part)

    def _model_noun(self):
        """How load_state_dict's errors name this model ("this model: ...")."""
        return "model"

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @property
    def dropout_rng(self):
        """The generator the recurrent stack draws its dropout masks from (a checkpoint saves its
        state, for an exact resume), or None."""
        return getattr(getattr(self, "rnn", None), "_rng", None)

    @property
    def num_params(self):
        return sum(p.size for p in self.params.values())

    def zero_grad(self):
        for g in self.grads.values():
            g.fill(0)

    def state_dict(self):
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state):
        """Strict: the same names and shapes as this model's parameters, or ValueError (nothing changed)."""
        missing = sorted(set(self.params) - set(state))
        extra = sorted(set(state) - set(self.params))
        if missing or extra:
            raise ValueError(f"parameters do not match this {self._model_noun()}: missing {missing}, "
                             f"unexpected {extra}")
        for k, p in self.params.items():
            if np.shape(state[k]) != p.shape:
                raise ValueError(f"parameter {k!r}: expected shape {p.shape}, got {np.shape(state[k])}")
        for k, p in self.params.items():
            p[...] = state[k]
        mark_modified(self.params.values())   # a backprop taken before now is refused (as torch's)


class SequenceModel(_ParamDicts):
    """Input (embedding, one-hot or dense) -> rnncore recurrent stack -> linear head.

    Token input: give vocab_size (ids (T, B)); embedding_dim=None uses one-hot vectors.
    Dense input: give input_size (floats (T, B, input_size)).
    head: "many_to_many" (logits at every step, (T, B, output_size)), "many_to_one" (logits from one
        vector per sequence, (B, output_size), read out by `pooling`), "regression" (real values at
        every step, (T, B, output_size)).
    pooling: how "many_to_one" reads a sequence's states (pool_states): "last" (the last valid step;
        a bidirectional stack's reverse half where it ends, at t = 0), "mean" or "max" over the valid
        steps, or "attention" (a learned query over the valid steps; parameters pool.weight,
        pool.bias, pool.query). Pooled models read every step in one pass: no truncated BPTT.
    output_size: defaults to vocab_size (a language model).
    cell: "rnn", "lstm" or "gru"; rnn_options: further arguments of that layer (nonlinearity,
        proj_size, peephole, reset_after, init, forget_bias). Or "gf-tanh", "gf-gru", "gf-lstm": a
        gated-feedback stack (rnncore.FeedbackRNN, every layer reading every layer's state at t-1;
        rnn_options: gated, bias).
    seed: one seed for every initialisation (embedding, recurrent stack, head).
    All arrays are time-major, as the layers' default.

    It follows rnncore.training.trainer's model protocol, with both optional parts: it carries its state
    across truncated-BPTT chunks (chunk_loss) and is scored by the Trainer's loss (loss_fn).
    """

    uses_trainer_loss = True    # batch_loss / chunk_loss take the Trainer's loss as loss_fn

    def __init__(self, cell="lstm", hidden_size=128, num_layers=1, vocab_size=None, embedding_dim=None,
                 input_size=None, output_size=None, head="many_to_many", dropout=0.0, bidirectional=False,
                 dtype=np.float32, seed=None, rnn_options=None, pooling="last"):
        check_choice(cell, "cell", {**CELLS, **FEEDBACK_CELLS})
        check_choice(head, "head", HEADS)
        check_choice(pooling, "pooling", POOLINGS)
        if pooling != "last" and head != "many_to_one":
            raise ValueError(f"pooling={pooling!r} reads one vector per sequence: expected "
                             f"head='many_to_one', got head={head!r}")
        if (vocab_size is None) == (input_size is None):
            raise ValueError("expected exactly one of vocab_size (token ids in) or input_size (vectors in)")
        if output_size is None:
            if vocab_size is None:
                raise ValueError("output_size: required when the input is not token ids")
            output_size = vocab_size
        self.dtype = np.dtype(dtype)
        self.cell, self.head_kind = cell, head
        self.vocab_size, self.embedding_dim, self.input_size = vocab_size, embedding_dim, input_size
        self.hidden_size, self.num_layers, self.output_size = hidden_size, num_layers, output_size
        self.dropout, self.bidirectional, self.seed = dropout, bidirectional, seed
        self.pooling = pooling
        self.rnn_options = dict(rnn_options or {})

        # one seed -> independent streams for each part
        seeds = np.random.SeedSequence(seed).spawn(4)   # the first three as before pooling existed
        if vocab_size is None:
            self.embedding, rnn_in = None, input_size
        elif embedding_dim is None:
            self.embedding, rnn_in = OneHot(vocab_size, self.dtype), vocab_size
        else:
            self.embedding = Embedding(vocab_size, embedding_dim, self.dtype, np.random.default_rng(seeds[0]))
            rnn_in = embedding_dim
        kind = {"cell": FEEDBACK_CELLS[cell]} if cell in FEEDBACK_CELLS else {}
        self.rnn = CELLS.get(cell, FeedbackRNN)(rnn_in, hidden_size, num_layers=num_layers, dropout=dropout,
                                                bidirectional=bidirectional, dtype=self.dtype,
                                                seed=int(seeds[1].generate_state(1)[0]), **kind,
                                                **self.rnn_options)
        self.head = Linear(self.rnn.output_size, output_size, self.dtype, np.random.default_rng(seeds[2]))
        self.pool = (Pooling(pooling, self.rnn.output_size, self.rnn.num_directions, self.dtype,
                             np.random.default_rng(seeds[3])) if head == "many_to_one" else None)

        self._init_params()
        self._add_parts(("embedding", self.embedding), ("rnn", self.rnn), ("pool", self.pool),
                        ("head", self.head))

    # ------------------------------------------------------------------------------ config
    @property
    def config(self):
        """Everything needed to rebuild this model (JSON-serializable)."""
        return {"cell": self.cell, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim,
                "input_size": self.input_size, "output_size": self.output_size, "head": self.head_kind,
                "dropout": self.dropout, "bidirectional": self.bidirectional, "dtype": self.dtype.name,
                "seed": self.seed, "rnn_options": dict(self.rnn_options),
                # only when not the default: configs (and checkpoints) of models without pooling
                # stay as they were written before it existed
                **({"pooling": self.pooling} if self.pooling != "last" else {})}

    def __repr__(self):
        inp = (f"vocab_size={self.vocab_size}, embedding_dim={self.embedding_dim}"
               if self.vocab_size is not None else f"input_size={self.input_size}")
        pooling = f", pooling={self.pooling!r}" if self.pooling != "last" else ""
        return (f"SequenceModel({self.cell}, {inp}, hidden_size={self.hidden_size}, "
                f"num_layers={self.num_layers}, head={self.head_kind!r}{pooling}, output_size={self.output_size})")

    # ------------------------------------------------------------------------------ parameters
    # zero_grad, state_dict, load_state_dict (strict), from_config, num_params: from _ParamDicts

    # ------------------------------------------------------------------------------ forward
    def forward(self, X, lengths=None, hx=None, is_train=True):
        """``Y, backprop = model.forward(X, lengths, hx, is_train)``.

        X: (T, B) token ids or (T, B, input_size) floats. lengths: (B,) or None. hx: initial state
        (for an LSTM a tuple (h0, c0)), e.g. ``backprop.h_n`` of the previous chunk.
        Y: (T, B, output_size), or (B, output_size) for "many_to_one".
        backprop.h_n: the final state, at each sequence's last valid step.
        ``dX = backprop(dY)`` adds parameter gradients into model.grads; dX is None for token input.
        With is_train=False there is no backward pass and no dropout.
        """
        if self.embedding is not None:
            E, emb_backprop = self.embedding.forward(X, is_train)
        else:
            E, emb_backprop = np.asarray(X, dtype=self.dtype), None
        if is_train:
            H, h_n, rnn_backprop = self.rnn.forward_train(E, hx=hx, lengths=lengths)
        else:
            H, h_n = self.rnn(E, hx=hx, lengths=lengths)

        if self.head_kind == "many_to_one":
            # one vector per sequence: the last valid step, or pooled over the valid steps
            Hpool, pool_backprop = self.pool.forward(H, lengths, is_train)
            Y, head_backprop = self.head.forward(Hpool, is_train)
        else:
            Y, head_backprop = self.head.forward(H, is_train)

        if not is_train:
            return Y, _Backprop(None, h_n)

        def backprop(dY):
            dH_head = head_backprop(dY)
            if self.head_kind == "many_to_one":
                dH = pool_backprop(dH_head)
            else:
                dH = dH_head
            dE, _ = rnn_backprop(dH)
            if emb_backprop is not None:
                return emb_backprop(dE)
            return dE

        return Y, _Backprop(backprop, h_n)

    # ------------------------------------------------------------------------------ trainer protocol
    @property
    def carries_state(self):
        """True: truncated BPTT (chunk_loss), the state carried from chunk to chunk. False for a pooled
        readout ("mean", "max", "attention"): it reads every step of a sequence in one pass, so the
        Trainer takes whole batches (and refuses tbptt)."""
        return self.pooling == "last"

    @property
    def targets_per_step(self):
        """True: a target at every step (cut into chunks with X); False: one per sequence."""
        return self.head_kind != "many_to_one"

    def _default_loss(self):
        return mse if self.head_kind == "regression" else softmax_cross_entropy

    def batch_loss(self, batch, reduction="mean", is_train=True, loss_fn=None):
        """Loss of one Batch(X, Y, lengths): (loss, count, backward); backward() adds the gradients
        (None if not is_train). loss_fn: ``loss, dY = loss_fn(Y_hat, Y, lengths=, mask=, reduction=)``
        (None: mean squared error for head="regression", softmax cross-entropy otherwise)."""
        chunk, = tbptt_chunks(batch, None, self.targets_per_step)
        return self.chunk_loss(chunk, None, reduction, is_train, loss_fn)[:3]

    def chunk_loss(self, chunk, state=None, reduction="mean", is_train=True, loss_fn=None):
        """Loss of one truncated-BPTT chunk (rnncore.training.data.Chunk), starting from `state`, the final
        state of the previous chunk of the same batch (None: zeros): (loss, count, backward, state).

        state out: this chunk's final state (``backprop.h_n``), to hand to the next chunk; no
        gradient flows back across the boundary. A many_to_one target is scored in the chunk where
        its sequence ends; a chunk with nothing to score runs without dropout and returns count 0
        and backward None (no step to take). count: the targets (for mse, the values) the mean is
        over."""
        loss_fn = self._default_loss() if loss_fn is None else loss_fn
        if not self.carries_state and (chunk.start != 0 or not chunk.last):
            raise ValueError(f"pooling={self.pooling!r} reads every step of a sequence in one pass: expected "
                             f"a chunk holding whole sequences (tbptt=None), got steps [{chunk.start}, "
                             f"{chunk.end}) of a longer batch")
        X, Y, lens = chunk.batch
        hx = None if state is None or chunk.keep is None else select_state(state, chunk.keep)
        if self.targets_per_step:
            mask = None
            n = int(lens.sum()) if lens is not None else X.shape[0] * X.shape[1]
        else:
            mask, n = chunk.ends, int(chunk.ends.sum())
        if n == 0:
            _, bp = self.forward(X, lengths=lens, hx=hx, is_train=False)
            return 0.0, 0, None, bp.h_n
        Yhat, bp = self.forward(X, lengths=lens, hx=hx, is_train=is_train)
        loss, dY = loss_fn(Yhat, Y, lengths=lens if self.targets_per_step else None, mask=mask,
                           reduction=reduction)
        if loss_fn is mse:
            n *= Yhat.shape[-1]
        return loss, n, ((lambda: bp(dY)) if is_train else None), bp.h_n

    def predict(self, X, lengths=None, hx=None):
        """Inference output only (no backward pass, no dropout)."""
        return self.forward(X, lengths=lengths, hx=hx, is_train=False)[0]


def select_state(h, cols):
    """The state of some sequences only: h[:, cols] (for an LSTM, of both h and c)."""
    if h is None:
        return None
    if isinstance(h, tuple):
        return tuple(x[:, cols] for x in h)
    return h[:, cols]


def generate(model, prime_ids, length, temperature=1.0, rng=None):
    """Sample `length` token ids from a language model, after reading prime_ids (at least one id).

    Each step feeds the last token and the carried state, and draws the next token from
    softmax(logits / temperature). Returns an int64 array of the generated ids (prime excluded).
    """
    if model.vocab_size is None or model.head_kind != "many_to_many":
        raise ValueError("generate: expected a language model (token input, many_to_many head)")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    rng = np.random.default_rng(rng)
    prime_ids = np.asarray(prime_ids, dtype=np.int64)
    if prime_ids.ndim != 1 or len(prime_ids) == 0:
        raise ValueError("prime_ids: expected a non-empty 1-D sequence of token ids")
    logits, bp = model.forward(prime_ids[:, None], is_train=False)
    state, last = bp.h_n, logits[-1, 0]
    out = np.empty(length, dtype=np.int64)
    for i in range(length):
        z = last.astype(np.float64)
        if not np.isfinite(z).all():
            raise FloatingPointError(f"generate: the model's logits are not finite at sampled character "
                                     f"{i + 1}: its weights have diverged")
        with np.errstate(over="ignore", under="ignore"):
            # shift before dividing: a tiny temperature then sends the others to -inf (greedy), not NaN
            p = softmax((z - z.max()) / temperature)
        out[i] = rng.choice(len(p), p=p)
        logits, bp = model.forward(out[i:i + 1, None], hx=state, is_train=False)
        state, last = bp.h_n, logits[0, 0]
    return out
