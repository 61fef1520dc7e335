"""Encoder-decoder (sequence to sequence) with attention: teacher forcing, greedy and beam search.

    x_1 .. x_S     source ids;  y_0 = bos, y_1 .. y_T target ids (y_T = eos)
    encoder        h_s = Enc(E_src[x_s])  (s = 1 .. S_b; rnncore.RNN / LSTM / GRU, any depth, optionally
                   bidirectional; h_s is the top layer's output, size D)
    bridge         s_0 = tanh(W_b z + b_b), z = the encoder's final top-layer state (both directions
                   concatenated); an LSTM decoder gets c_0 from a second block of the same map
    decoder        one layer of hidden size K; s_t is its output (h for an LSTM), from s_{t-1} and:

    attention="none"       s_t = cell(E_tgt[y_{t-1}], s_{t-1});     o_t = W_o s_t + b_o
    attention="bahdanau"   (additive; Bahdanau, Cho, Bengio 2015)
                           e_{t,s} = v^T tanh(W_q s_{t-1} + W_k h_s + b_a)
                           α_t = softmax over the valid s of e_t,     c_t = Σ_s α_{t,s} h_s
                           s_t = cell([E_tgt[y_{t-1}]; c_t], s_{t-1});   o_t = W_o [s_t; c_t] + b_o
    attention="luong_general" / "luong_dot"   (multiplicative; Luong, Pham, Manning 2015, no input feeding)
                           s_t = cell(E_tgt[y_{t-1}], s_{t-1})
                           e_{t,s} = s_t^T W_a h_s  (general)   or   s_t^T h_s  (dot: needs D = K)
                           α_t = softmax over the valid s of e_t,     c_t = Σ_s α_{t,s} h_s
                           s̃_t = tanh(W_c [c_t; s_t] + b_c);          o_t = W_o s̃_t + b_o
    p(y_t | y_<t, x) = softmax(o_t);  loss: cross-entropy of y_1 .. y_T under teacher forcing.

How the decoder runs. Under teacher forcing the decoder's inputs are known in advance for "none" and
Luong attention (attention reads s_t, it does not feed the recurrence), so the decoder is one call of
the compiled layer over all T steps and the attention is computed for all steps at once. Bahdanau's
context c_t enters the recurrence and depends on s_{t-1}, so its decoder is a loop over t: each step
is rnncore.layers.reference's numpy step (forward and exact backward) on the compiled decoder layer's own
parameter arrays. At these sizes that step is faster than a T = 1 call of the compiled layer (which
validates its arguments and allocates a workspace per call), and it keeps a cache per step for the
backward pass. Greedy and beam-search decoding use the same numpy steps for every attention kind.

The backward pass is exact through everything, including the encoder via the attention (α and c_t
depend on every h_s) and via the bridge.
"""
from collections import namedtuple

import numpy as np

from rnncore.layers import reference
from rnncore.engine.validation import check_choice, check_float_dtype, check_ids, check_int, check_reduction
from rnncore.models.architectures import ProtocolModel, _as_lengths, _rng_from, _stop_at_eos, _uniform, _unpack
from rnncore.training.losses import length_mask, log_softmax, softmax, softmax_backward, softmax_cross_entropy
from rnncore.models.sequence import CELLS, Embedding, Linear

__all__ = ["Seq2Seq", "Decoded", "ATTENTIONS", "make_batches"]

ATTENTIONS = ("none", "bahdanau", "luong_general", "luong_dot")

# ids (T, B) padded with eos past each length, lengths (B,) including eos, attention (T, B, S) (None
# without attention), scores (B,) the summed log-probabilities of the chosen tokens
Decoded = namedtuple("Decoded", ["ids", "lengths", "attention", "scores"])


class Seq2Seq(ProtocolModel):
    """Encoder-decoder with optional attention (see the module docstring for the equations).

    src_vocab, tgt_vocab: vocabulary sizes; hidden_size: K (encoder and decoder); embedding_dim: of
    both embeddings; cell: "rnn", "lstm" or "gru" (encoder and decoder); encoder_layers,
    bidirectional: the encoder's stack; attention: one of ATTENTIONS; attention_size: A of the
    additive attention (default hidden_size); bos, eos: target ids that start and end a sequence.

    batch: (src (S, B) ids, src_lengths (B,) or None, tgt (T+1, B) ids with tgt[0] = bos,
    tgt_lengths (B,) or None): the targets of sequence b are tgt[1 : tgt_lengths[b]+1].
    """

    def __init__(self, src_vocab, tgt_vocab, hidden_size=64, embedding_dim=32, cell="gru",
                 attention="bahdanau", attention_size=None, encoder_layers=1, bidirectional=False,
                 bos=0, eos=1, dtype=np.float32, seed=None):
        check_choice(cell, "cell", CELLS)
        check_choice(attention, "attention", ATTENTIONS)
        self.src_vocab = check_int(src_vocab, "src_vocab", 1)
        self.tgt_vocab = check_int(tgt_vocab, "tgt_vocab", 1)
        self.hidden_size = K = check_int(hidden_size, "hidden_size", 1)
        self.embedding_dim = Em = check_int(embedding_dim, "embedding_dim", 1)
        self.encoder_layers = check_int(encoder_layers, "encoder_layers", 1)
        self.bidirectional = bool(bidirectional)
        self.attention_size = A = check_int(attention_size if attention_size is not None else K,
                                            "attention_size", 1)
        self.bos = check_int(bos, "bos", 0, tgt_vocab - 1)
        self.eos = None if eos is None else check_int(eos, "eos", 0, tgt_vocab - 1)
        self.cell, self.attention, self.seed = cell, attention, seed
        self._attention_size_arg = attention_size
        self.dtype = check_float_dtype(dtype)
        self._lstm = cell == "lstm"
        D = K * (2 if self.bidirectional else 1)
        self.context_size = D
        if attention == "luong_dot" and D != K:
            raise ValueError(f"attention='luong_dot' scores s_t^T h_s, so the encoder's output size must "
                             f"equal hidden_size: expected {K}, got {D} (bidirectional encoder); use "
                             f"'luong_general'")

        r = _rng_from(seed, 8)
        self._init_params()
        self.src_embedding = Embedding(self.src_vocab, Em, self.dtype, r[0])
        self.tgt_embedding = Embedding(self.tgt_vocab, Em, self.dtype, r[1])
        self.encoder = CELLS[cell](Em, K, num_layers=self.encoder_layers, bidirectional=self.bidirectional,
                                   dtype=self.dtype, seed=int(r[2].integers(2 ** 31)))
        self.decoder = CELLS[cell](Em + (D if attention == "bahdanau" else 0), K, dtype=self.dtype,
                                   seed=int(r[3].integers(2 ** 31)))
        self.bridge = Linear(D, (2 if self._lstm else 1) * K, self.dtype, r[4])
        self.combine = Linear(D + K, K, self.dtype, r[5]) if attention.startswith("luong") else None
        self.head = Linear(K + D if attention == "bahdanau" else K, self.tgt_vocab, self.dtype, r[6])
        self._add_parts(("src_embedding", self.src_embedding), ("tgt_embedding", self.tgt_embedding),
                        ("encoder", self.encoder), ("decoder", self.decoder), ("bridge", self.bridge),
                        ("combine", self.combine), ("head", self.head))
        if attention == "bahdanau":
            self._own("attention.W_q", _uniform(r[7], (A, K), K, self.dtype))
            self._own("attention.W_k", _uniform(r[7], (A, D), D, self.dtype))
            self._own("attention.b", _uniform(r[7], (A,), D, self.dtype))
            self._own("attention.v", _uniform(r[7], (A,), A, self.dtype))
        elif attention == "luong_general":
            self._own("attention.W_a", _uniform(r[7], (K, D), D, self.dtype))
        # the decoder's parameters under the reference step's short names (live views)
        cfg = self.decoder.config
        self._p, names = reference._cell_params(cfg, self.decoder.params, 0, 0)
        self._dp = {short: self.decoder.grads[name] for short, name in names.items()}
        self._step_forward, self._step_backward = reference._step_fns(cfg)

    @property
    def config(self):
        return {"src_vocab": self.src_vocab, "tgt_vocab": self.tgt_vocab, "hidden_size": self.hidden_size,
                "embedding_dim": self.embedding_dim, "cell": self.cell, "attention": self.attention,
                "attention_size": self._attention_size_arg, "encoder_layers": self.encoder_layers,
                "bidirectional": self.bidirectional, "bos": self.bos, "eos": self.eos,
                "dtype": self.dtype.name, "seed": self.seed}

    # ------------------------------------------------------------------------------ encoder
    def encode(self, src, src_lengths=None, is_train=True):
        """Encoder, bridge and the attention's precomputed keys.

        Returns (enc, backprop): enc a dict with H (S, B, D), valid (B, S), the decoder's initial
        state s0 (and c0), and keys (the part of the score that depends on h_s only); ``backprop(dH,
        ds0, dc0, dkeys)`` adds the gradients of the encoder, bridge and key parameters."""
        S, B = src.shape
        K, D = self.hidden_size, self.context_size
        E, emb_bp = self.src_embedding.forward(src)
        if is_train:
            H, h_n, enc_bp = self.encoder.forward_train(E, lengths=src_lengths)
        else:
            H, h_n = self.encoder(E, lengths=src_lengths)
        hn = h_n[0] if self._lstm else h_n
        ndir = 2 if self.bidirectional else 1
        # z = the top layer's final state, [forward; reverse]
        z = np.concatenate(list(hn[-ndir:]), axis=1)                              # (B, D)
        A, bridge_bp = self.bridge.forward(z)
        Z = np.tanh(A)
        s0 = np.ascontiguousarray(Z[:, :K])
        c0 = np.ascontiguousarray(Z[:, K:]) if self._lstm else None
        valid = length_mask(src_lengths, S, B).T                                  # (B, S)
        keys = None
        if self.attention == "bahdanau":
            # W_k h_s + b_a, for every s at once                                  (S, B, A)
            keys = H @ self.params["attention.W_k"].T + self.params["attention.b"]
        elif self.attention == "luong_general":
            # W_a h_s                                                              (S, B, K)
            keys = H @ self.params["attention.W_a"].T
        elif self.attention == "luong_dot":
            keys = H
        enc = {"H": H, "valid": valid, "s0": s0, "c0": c0, "keys": keys}
        if not is_train:
            return enc, None
        g = self.grads

        def backprop(dH, ds0, dc0, dkeys):
            dH = dH.copy()
            if self.attention == "bahdanau":
                dk2 = dkeys.reshape(S * B, -1)
                g["attention.W_k"] += dk2.T @ H.reshape(S * B, D)
                g["attention.b"] += dk2.sum(axis=0)
                dH += dkeys @ self.params["attention.W_k"]
            elif self.attention == "luong_general":
                g["attention.W_a"] += dkeys.reshape(S * B, -1).T @ H.reshape(S * B, D)
                dH += dkeys @ self.params["attention.W_a"]
            elif self.attention == "luong_dot":
                dH += dkeys
            # s0 (, c0) = tanh(bridge(z)): dA = dZ (1 - Z²)
            dZ = np.concatenate([ds0, dc0], axis=1) if self._lstm else ds0
            dz = bridge_bp(dZ * (1 - Z * Z))
            dh_n = np.zeros_like(hn)
            dh_n[-ndir:] = dz.reshape(B, ndir, K).transpose(1, 0, 2)
            dE, _ = enc_bp(dH, (dh_n, None) if self._lstm else dh_n)
            emb_bp(dE)

        return enc, backprop

    # ------------------------------------------------------------------------------ attention
    def _additive_scores(self, enc, s_prev):
        """Bahdanau: e_s = v^T tanh(W_q s_{t-1} + keys_s). Returns e (B, S) and the tanh (S, B, A)."""
        q = s_prev @ self.params["attention.W_q"].T                              # (B, A)
        Zt = np.tanh(enc["keys"] + q)                                            # (S, B, A)
        return (Zt @ self.params["attention.v"]).T, Zt

    def _additive_scores_backward(self, s_prev, Zt, de, dkeys):
        """de (B, S) -> adds into W_q, v grads and dkeys; returns ds_{t-1} (B, K)."""
        g = self.grads
        # e = Zt v:  dv += Σ de Zt,  dZt = de v
        g["attention.v"] += np.einsum("bs,sba->a", de, Zt)
        dPre = de.T[:, :, None] * self.params["attention.v"] * (1 - Zt * Zt)      # (S, B, A)
        dkeys += dPre
        dq = dPre.sum(axis=0)                                                    # (B, A)
        g["attention.W_q"] += dq.T @ s_prev
        return dq @ self.params["attention.W_q"]

    # ------------------------------------------------------------------------------ teacher forcing
    def forward(self, src, tgt_in, src_lengths=None, is_train=True):
        """Teacher forcing: src (S, B) ids, tgt_in (T, B) = y_0 .. y_{T-1}.

        Returns (logits (T, B, tgt_vocab), attention weights (T, B, S) or None, backprop);
        ``backprop(d_logits)`` adds every parameter's gradient into grads (None if not is_train)."""
        enc, enc_bp = self.encode(src, src_lengths, is_train)
        Ey, tgt_emb_bp = self.tgt_embedding.forward(tgt_in)
        if self.attention == "bahdanau":
            return self._forward_additive(enc, enc_bp, Ey, tgt_emb_bp, is_train)
        return self._forward_parallel(enc, enc_bp, Ey, tgt_emb_bp, is_train)

    def _forward_parallel(self, enc, enc_bp, Ey, tgt_emb_bp, is_train):
        """"none" and Luong: the decoder is one compiled call over all T; attention over all t at once."""
        H, valid, keys = enc["H"], enc["valid"], enc["keys"]
        hx = (enc["s0"][None], enc["c0"][None]) if self._lstm else enc["s0"][None]
        if is_train:
            Sd, _, dec_bp = self.decoder.forward_train(Ey, hx=hx)
        else:
            Sd, _ = self.decoder(Ey, hx=hx)
        alpha = None
        if self.attention == "none":
            logits, head_bp = self.head.forward(Sd)
        else:
            # e_{t,s} = s_t · keys_s;  α = softmax_s;  c_t = Σ_s α_{t,s} h_s
            scores = np.einsum("tbk,sbk->tbs", Sd, keys)
            alpha = softmax(scores, mask=valid[None])
            C = np.einsum("tbs,sbd->tbd", alpha, H)
            # s̃_t = tanh(W_c [c_t; s_t] + b_c);  o_t = W_o s̃_t + b_o
            pre, comb_bp = self.combine.forward(np.concatenate([C, Sd], axis=2))
            St = np.tanh(pre)
            logits, head_bp = self.head.forward(St)
        if not is_train:
            return logits, alpha, None
        D = self.context_size

        def backprop(d_logits):
            d_logits = np.asarray(d_logits, dtype=self.dtype)
            dkeys = None if keys is None else np.zeros_like(keys)
            if self.attention == "none":
                dSd, dH = head_bp(d_logits), np.zeros_like(H)
            else:
                dSt = head_bp(d_logits)
                dCS = comb_bp(dSt * (1 - St * St))
                dC, dSd = dCS[:, :, :D], dCS[:, :, D:].copy()
                # c = Σ α h:  dα = dc · h,  dh_s += Σ_t α_{t,s} dc_t
                d_alpha = np.einsum("tbd,sbd->tbs", dC, H)
                dH = np.einsum("tbs,tbd->sbd", alpha, dC)
                de = softmax_backward(alpha, d_alpha)
                # e = s · keys
                dSd += np.einsum("tbs,sbk->tbk", de, keys)
                dkeys += np.einsum("tbs,tbk->sbk", de, Sd)
            dEy, dhx = dec_bp(dSd)
            tgt_emb_bp(dEy)
            ds0, dc0 = (dhx[0][0], dhx[1][0]) if self._lstm else (dhx[0], None)
            enc_bp(dH, ds0, dc0, dkeys)

        return logits, alpha, backprop

    def _forward_additive(self, enc, enc_bp, Ey, tgt_emb_bp, is_train):
        """Bahdanau: a loop over t, each step the reference numpy cell on the decoder's parameters."""
        H, valid = enc["H"], enc["valid"]
        T, B, Em = Ey.shape
        K, D = self.hidden_size, self.context_size
        s, c = enc["s0"], enc["c0"]
        out = np.empty((T, B, K + D), self.dtype)                    # [s_t; c_t], read by the head
        alpha = np.empty((T, B, H.shape[0]), self.dtype)
        caches = []
        for t in range(T):
            e, Zt = self._additive_scores(enc, s)
            alpha[t] = softmax(e, mask=valid)
            ctx = np.einsum("bs,sbd->bd", alpha[t], H)
            s_prev = s
            s, c, cache = self._step_forward(self._p, np.concatenate([Ey[t], ctx], axis=1), s, c)
            out[t, :, :K], out[t, :, K:] = s, ctx
            caches.append((s_prev, Zt, cache))
        logits, head_bp = self.head.forward(out)
        if not is_train:
            return logits, alpha, None

        def backprop(d_logits):
            d_logits = np.asarray(d_logits, dtype=self.dtype)
            dout = head_bp(d_logits)
            dEy = np.empty_like(Ey)
            dH = np.zeros_like(H)
            dkeys = np.zeros_like(enc["keys"])
            ds = np.zeros((B, K), self.dtype)                        # ∂L/∂s_t from step t + 1
            dc = np.zeros((B, K), self.dtype) if self._lstm else None
            for t in reversed(range(T)):
                s_prev, Zt, cache = caches[t]
                dx, ds_prev, dc = self._step_backward(self._p, self._dp, cache, dout[t, :, :K] + ds, dc)
                dEy[t] = dx[:, :Em]
                dctx = dout[t, :, K:] + dx[:, Em:]
                # c_t = Σ_s α_{t,s} h_s
                d_alpha = np.einsum("bd,sbd->bs", dctx, H)
                dH += alpha[t].T[:, :, None] * dctx
                de = softmax_backward(alpha[t], d_alpha)
                ds = ds_prev + self._additive_scores_backward(s_prev, Zt, de, dkeys)
            tgt_emb_bp(dEy)
            enc_bp(dH, ds, dc, dkeys)

        return logits, alpha, backprop

    # ------------------------------------------------------------------------------ protocol
    def _check_batch(self, batch):
        src, src_lengths, tgt, tgt_lengths = _unpack(batch, ("src", "src_lengths", "tgt", "tgt_lengths"), 3)
        src = check_ids(src, self.src_vocab, "src", ndim=2, doc="(S, batch)")
        tgt = check_ids(tgt, self.tgt_vocab, "tgt", ndim=2, doc="(T+1, batch), tgt[0] = bos")
        S, B = src.shape
        if tgt.shape[1] != B or tgt.shape[0] < 2:
            raise ValueError(f"tgt: expected (T+1, {B}) with T >= 1 (bos, then the targets), got shape "
                             f"{tgt.shape}")
        return (src, _as_lengths(src_lengths, S, B, "src_lengths"), tgt,
                _as_lengths(tgt_lengths, tgt.shape[0] - 1, B, "tgt_lengths"))

    def batch_loss(self, batch, reduction="mean", is_train=True):
        """Cross-entropy of tgt[1:] under teacher forcing: (loss, count, backward)."""
        check_reduction(reduction)
        src, src_lengths, tgt, tgt_lengths = self._check_batch(batch)
        logits, _, bp = self.forward(src, tgt[:-1], src_lengths, is_train)
        loss, d_logits = softmax_cross_entropy(logits, tgt[1:], lengths=tgt_lengths, reduction=reduction)
        count = int(tgt_lengths.sum()) if tgt_lengths is not None else tgt[1:].size
        return loss, count, ((lambda: bp(d_logits)) if is_train else None)

    # ------------------------------------------------------------------------------ decoding
    def _check_src(self, src, src_lengths):
        src = check_ids(src, self.src_vocab, "src", ndim=2, doc="(S, batch)")
        return src, _as_lengths(src_lengths, src.shape[0], src.shape[1], "src_lengths")

    def _step(self, enc, y_prev, s, c):
        """One decoding step for N hypotheses: returns (log-probs (N, V), s, c, α (N, S) or None)."""
        Ey, _ = self.tgt_embedding.forward(y_prev, is_train=False)
        H, valid = enc["H"], enc["valid"]
        alpha = None
        if self.attention == "bahdanau":
            e, _ = self._additive_scores(enc, s)
            alpha = softmax(e, mask=valid)
            ctx = np.einsum("bs,sbd->bd", alpha, H)
            s, c, _ = self._step_forward(self._p, np.concatenate([Ey, ctx], axis=1), s, c)
            logits, _ = self.head.forward(np.concatenate([s, ctx], axis=1), is_train=False)
        else:
            s, c, _ = self._step_forward(self._p, Ey, s, c)
            if self.attention == "none":
                logits, _ = self.head.forward(s, is_train=False)
            else:
                alpha = softmax(np.einsum("bk,sbk->bs", s, enc["keys"]), mask=valid)
                ctx = np.einsum("bs,sbd->bd", alpha, H)
                pre, _ = self.combine.forward(np.concatenate([ctx, s], axis=1), is_train=False)
                logits, _ = self.head.forward(np.tanh(pre), is_train=False)
        return log_softmax(logits.astype(np.float64)), s, c, alpha

    def greedy(self, src, src_lengths=None, max_length=50):
        """Greedy decoding: at each step the most likely token. Returns Decoded."""
        src, src_lengths = self._check_src(src, src_lengths)
        max_length = check_int(max_length, "max_length", 1)
        S, B = src.shape
        enc, _ = self.encode(src, src_lengths, is_train=False)
        s, c = enc["s0"], enc["c0"]
        y = np.full(B, self.bos, dtype=np.int64)
        ids = np.zeros((max_length, B), dtype=np.int64)
        attn = np.zeros((max_length, B, S), self.dtype) if self.attention != "none" else None
        lengths = np.full(B, max_length, dtype=np.int64)
        scores = np.zeros(B)
        done = np.zeros(B, dtype=bool)
        T = max_length
        for t in range(max_length):
            logp, s, c, alpha = self._step(enc, y, s, c)
            y = logp.argmax(axis=1)
            scores += np.where(done, 0.0, logp[np.arange(B), y])
            if attn is not None:
                attn[t] = np.where(done[:, None], 0, alpha)
            y = _stop_at_eos(y, self.eos, done, lengths, t)
            ids[t] = y
            if done.all():
                T = t + 1
                break
        return Decoded(ids[:T], lengths, None if attn is None else attn[:T], scores)

    def beam_search(self, src, src_lengths=None, beam_size=4, max_length=50, length_penalty=0.0):
        """Beam search, each source on its own: keep the beam_size best partial hypotheses by summed
        log-probability; a hypothesis that emits eos is finished and leaves the beam (which shrinks
        by one), so beam_size=1 is greedy decoding exactly. The best finished hypothesis (score /
        length^length_penalty) wins; at max_length the unfinished ones compete too. Returns Decoded."""
        src, src_lengths = self._check_src(src, src_lengths)
        beam_size = check_int(beam_size, "beam_size", 1)
        max_length = check_int(max_length, "max_length", 1)
        S, B = src.shape
        enc_all, _ = self.encode(src, src_lengths, is_train=False)
        results = []
        for b in range(B):
            enc = {"H": enc_all["H"][:, b:b + 1], "valid": enc_all["valid"][b:b + 1],
                   "keys": None if enc_all["keys"] is None else enc_all["keys"][:, b:b + 1]}
            results.append(self._beam_one(enc, enc_all["s0"][b:b + 1],
                                          None if enc_all["c0"] is None else enc_all["c0"][b:b + 1],
                                          beam_size, max_length, length_penalty, S))
        T = max(len(r[0]) for r in results)
        ids = np.full((T, B), self.eos if self.eos is not None else 0, dtype=np.int64)
        attn = np.zeros((T, B, S), self.dtype) if self.attention != "none" else None
        lengths, scores = np.zeros(B, dtype=np.int64), np.zeros(B)
        for b, (toks, al, score) in enumerate(results):
            ids[:len(toks), b] = toks
            lengths[b], scores[b] = len(toks), score
            if attn is not None:
                attn[:len(toks), b] = al
        return Decoded(ids, lengths, attn, scores)

    def _beam_one(self, enc, s, c, beam_size, max_length, length_penalty, S):
        """Beam search for one source. Returns (tokens, attention (len, S) or None, score)."""
        V = self.tgt_vocab
        toks = np.zeros((1, 0), dtype=np.int64)              # alive hypotheses' tokens (N, t)
        attns = np.zeros((1, 0, S), self.dtype)
        score = np.zeros(1)
        y = np.array([self.bos])
        finished = []                                         # (normalised score, tokens, attn, score)
        width = beam_size
        for t in range(max_length):
            N = len(y)
            encN = {k: (None if v is None else (np.repeat(v, N, axis=0) if k == "valid" else
                                                np.repeat(v, N, axis=1))) for k, v in enc.items()}
            logp, s, c, alpha = self._step(encN, y, s, c)
            cand = (score[:, None] + logp).reshape(-1)
            top = np.argsort(-cand, kind="stable")[:width]
            parent, tok = top // V, top % V
            a = alpha[parent][:, None] if alpha is not None else np.zeros((len(top), 1, S), self.dtype)
            toks = np.concatenate([toks[parent], tok[:, None]], axis=1)
            attns = np.concatenate([attns[parent], a], axis=1)
            score = cand[top]
            s = s[parent]
            c = None if c is None else c[parent]
            y = tok
            if self.eos is not None:
                ended = tok == self.eos
                for i in np.flatnonzero(ended):
                    L = t + 1
                    finished.append((score[i] / L ** length_penalty, toks[i], attns[i], score[i]))
                keep = ~ended
                width -= int(ended.sum())
                toks, attns, score, s, y = toks[keep], attns[keep], score[keep], s[keep], y[keep]
                c = None if c is None else c[keep]
            if width == 0 or len(y) == 0:
                break
        else:
            for i in range(len(y)):
                finished.append((score[i] / max_length ** length_penalty, toks[i], attns[i], score[i]))
        best = max(finished, key=lambda f: f[0])
        return best[1], (best[2] if self.attention != "none" else None), best[3]


def make_batches(pairs, batch_size, bos, eos, rng=None):
    """Pad (source ids, target ids) pairs into Seq2Seq batches (src, src_lengths, tgt, tgt_lengths).

    tgt = [bos, target..., eos] padded with eos; tgt_lengths counts the target and eos. Pairs are
    grouped in the given order (shuffled by rng when given) into batches of batch_size."""
    batch_size = check_int(batch_size, "batch_size", 1)
    order = np.arange(len(pairs)) if rng is None else np.random.default_rng(rng).permutation(len(pairs))
    batches = []
    for i in range(0, len(pairs), batch_size):
        chunk = [pairs[j] for j in order[i:i + batch_size]]
        srcs = [np.asarray(p[0], dtype=np.int64) for p in chunk]
        tgts = [np.asarray(p[1], dtype=np.int64) for p in chunk]
        if any(len(x) == 0 for x in srcs):
            raise ValueError("pairs: expected non-empty source sequences, got an empty one")
        S, T = max(len(x) for x in srcs), max(len(y) for y in tgts) + 1
        src = np.zeros((S, len(chunk)), dtype=np.int64)
        tgt = np.full((T + 1, len(chunk)), eos, dtype=np.int64)
        tgt[0] = bos
        for b, (x, y) in enumerate(zip(srcs, tgts)):
            src[:len(x), b] = x
            tgt[1:len(y) + 1, b] = y
        batches.append((src, np.array([len(x) for x in srcs]), tgt, np.array([len(y) + 1 for y in tgts])))
    return batches
