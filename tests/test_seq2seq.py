"""Seq2Seq (rnncore.models.seq2seq): every parameter's gradient by float64 central differences (encoder
parameters through the attention and the bridge included), the whole model re-implemented in PyTorch
autograd on the same weights, greedy = beam search of width 1, beam search = exhaustive search when
the beam holds every hypothesis, training with the Trainer and checkpoints, and bad input."""
import itertools

import numpy as np
import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import assert_close, check_all_params, check_checkpoint, fit
from rnncore.models.seq2seq import ATTENTIONS, Seq2Seq, make_batches

S, T, B, SV, TV = 5, 4, 3, 7, 5
SRC_LENGTHS = np.array([5, 2, 4])
TGT_LENGTHS = np.array([4, 1, 3])


def random_batch(rng, bos=0):
    src = rng.integers(0, SV, (S, B))
    tgt = rng.integers(0, TV, (T + 1, B))
    tgt[0] = bos
    return src, SRC_LENGTHS, tgt, TGT_LENGTHS


def configs():
    for attention in ATTENTIONS:
        for cell in ("gru", "lstm", "rnn"):
            for bidirectional in (False, True):
                if attention == "luong_dot" and bidirectional:
                    continue
                yield attention, cell, bidirectional


def make_model(attention, cell, bidirectional, seed=1, **kw):
    return Seq2Seq(SV, TV, hidden_size=3, embedding_dim=2, cell=cell, attention=attention,
                   bidirectional=bidirectional, encoder_layers=2 if bidirectional else 1,
                   dtype=kw.pop("dtype", np.float64), seed=seed, **kw)


@pytest.mark.parametrize("attention,cell,bidirectional", list(configs()))
def test_every_parameter_by_central_differences(rng, attention, cell, bidirectional):
    check_all_params(make_model(attention, cell, bidirectional), random_batch(rng))


# ---------------------------------------------------------------------------------------------------
# PyTorch autograd on the same weights: the whole model
# ---------------------------------------------------------------------------------------------------

def torch_forward(model, src, src_lengths, tgt, tgt_lengths):
    """Returns (loss, logits, attention or None, leaf tensors by our parameter names)."""
    P = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    K, D, Em = model.hidden_size, model.context_size, model.embedding_dim
    lstm = model.cell == "lstm"
    Rnn = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM, "rnn": torch.nn.RNN}[model.cell]
    Cell = {"gru": torch.nn.GRUCell, "lstm": torch.nn.LSTMCell, "rnn": torch.nn.RNNCell}[model.cell]
    enc = Rnn(Em, K, num_layers=model.encoder_layers, bidirectional=model.bidirectional, dtype=torch.float64)
    enc_p = {n: P[f"encoder.{n}"] for n, _ in enc.named_parameters()}
    Es = P["src_embedding.weight"][torch.as_tensor(src)]
    packed = pack_padded_sequence(Es, torch.as_tensor(src_lengths), enforce_sorted=False)
    out, state = functional_call(enc, enc_p, (packed,))
    H, _ = pad_packed_sequence(out, total_length=src.shape[0])
    h_n = state[0] if lstm else state
    z = torch.cat([h_n[-2], h_n[-1]], dim=1) if model.bidirectional else h_n[-1]
    Z = torch.tanh(z @ P["bridge.weight"].T + P["bridge.bias"])
    s = Z[:, :K]
    c = Z[:, K:] if lstm else None
    dec_in = Em + (D if model.attention == "bahdanau" else 0)
    dec = Cell(dec_in, K, dtype=torch.float64)
    dec_p = {n: P[f"decoder.{n}_l0"] for n, _ in dec.named_parameters()}
    valid = torch.as_tensor(np.arange(src.shape[0])[None, :] < src_lengths[:, None])
    Ey = P["tgt_embedding.weight"][torch.as_tensor(tgt[:-1])]

    def attend(e):
        alpha = torch.softmax(e.masked_fill(~valid, -torch.inf), dim=1)
        return alpha, torch.einsum("bs,sbd->bd", alpha, H)

    logits, alphas = [], []
    for t in range(Ey.shape[0]):
        if model.attention == "bahdanau":
            e = (torch.tanh(s @ P["attention.W_q"].T + H @ P["attention.W_k"].T + P["attention.b"])
                 @ P["attention.v"]).T
            alpha, ctx = attend(e)
            x = torch.cat([Ey[t], ctx], dim=1)
            if lstm:
                s, c = functional_call(dec, dec_p, (x, (s, c)))
            else:
                s = functional_call(dec, dec_p, (x, s))
            o = torch.cat([s, ctx], dim=1) @ P["head.weight"].T + P["head.bias"]
        else:
            if lstm:
                s, c = functional_call(dec, dec_p, (Ey[t], (s, c)))
            else:
                s = functional_call(dec, dec_p, (Ey[t], s))
            if model.attention == "none":
                alpha, o = None, s @ P["head.weight"].T + P["head.bias"]
            else:
                keys = H @ P["attention.W_a"].T if model.attention == "luong_general" else H
                alpha, ctx = attend(torch.einsum("bk,sbk->bs", s, keys))
                st = torch.tanh(torch.cat([ctx, s], dim=1) @ P["combine.weight"].T + P["combine.bias"])
                o = st @ P["head.weight"].T + P["head.bias"]
        logits.append(o)
        alphas.append(alpha)
    logits = torch.stack(logits)
    mask = torch.as_tensor(np.arange(Ey.shape[0])[:, None] < tgt_lengths[None, :])
    loss = torch.nn.functional.cross_entropy(logits[mask], torch.as_tensor(tgt[1:])[mask], reduction="sum")
    return loss, logits, (None if alphas[0] is None else torch.stack(alphas)), P


@pytest.mark.parametrize("attention,cell,bidirectional",
                         [c for c in configs() if c[1] in ("gru", "lstm")])
def test_whole_model_matches_torch_autograd(rng, attention, cell, bidirectional):
    model = make_model(attention, cell, bidirectional, seed=3)
    src, sl, tgt, tl = random_batch(rng)
    logits, alpha, _ = model.forward(src, tgt[:-1], sl, is_train=False)
    model.zero_grad()
    loss, n, backward = model.batch_loss((src, sl, tgt, tl), reduction="sum")
    backward()
    t_loss, t_logits, t_alpha, P = torch_forward(model, src, sl, tgt, tl)
    t_loss.backward()
    assert n == int(tl.sum())
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    assert_close(logits, t_logits.detach().numpy(), 1e-10, 1e-12, "logits")
    if attention == "none":
        assert alpha is None
    else:
        assert_close(alpha, t_alpha.detach().numpy(), 1e-10, 1e-12, "attention")
        assert np.all(alpha[:, 1, 2:] == 0), "attention on padding"
        assert_close(alpha.sum(-1), np.ones((T, B)), 1e-12, 0, "attention sums")
    for k, p in P.items():
        assert_close(model.grads[k], p.grad.numpy(), 1e-9, 1e-12, k)


# ---------------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------------

def sequence_log_prob(model, src, src_len, seq):
    """Σ log p(seq | src) by the teacher-forced forward pass (bos prepended)."""
    tgt = np.array([model.bos] + list(seq))[:, None]
    return -model.batch_loss((src[:, None], np.array([src_len]), tgt, None), reduction="sum",
                             is_train=False)[0]


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_beam_of_one_is_greedy_and_greedy_agrees_with_teacher_forcing(rng, attention, cell):
    model = make_model(attention, cell, attention != "luong_dot", seed=5, eos=1)
    model.params["head.bias"][1] += 1.0                        # eos likely enough to end some sequences
    src = rng.integers(0, SV, (S, B))
    g = model.greedy(src, SRC_LENGTHS, max_length=6)
    b1 = model.beam_search(src, SRC_LENGTHS, beam_size=1, max_length=6)
    assert np.array_equal(g.ids, b1.ids) and np.array_equal(g.lengths, b1.lengths)
    assert_close(b1.scores, g.scores, 1e-12, 1e-12, "scores")
    if attention != "none":
        assert_close(b1.attention, g.attention, 1e-12, 0, "attention")
    for b in range(B):
        seq = g.ids[:g.lengths[b], b]
        expected = sequence_log_prob(model, src[:, b], SRC_LENGTHS[b], seq)
        assert g.scores[b] == pytest.approx(expected, rel=1e-10)
        if attention != "none":
            tgt = np.array([model.bos] + list(seq))[:, None]
            _, alpha, _ = model.forward(src[:, b:b + 1], tgt[:-1], SRC_LENGTHS[b:b + 1], is_train=False)
            assert_close(g.attention[:g.lengths[b], b, :SRC_LENGTHS[b]], alpha[:, 0, :SRC_LENGTHS[b]], 1e-10,
                         1e-12, "greedy attention")


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general"])
def test_a_beam_holding_every_hypothesis_finds_the_exhaustive_best(rng, attention):
    tv, L, n_src = 4, 3, 6
    model = Seq2Seq(SV, tv, hidden_size=4, embedding_dim=3, attention=attention, bos=0, eos=1,
                    dtype=np.float64, seed=1)
    src, lens = rng.integers(0, SV, (S, n_src)), rng.integers(1, S + 1, n_src)
    found = model.beam_search(src, lens, beam_size=tv ** L, max_length=L)
    for b in range(n_src):
        cands = [seq for k in range(1, L + 1) for seq in itertools.product(range(tv), repeat=k)
                 if (1 not in seq[:-1]) and (seq[-1] == 1 or k == L)]
        scores = [sequence_log_prob(model, src[:, b], lens[b], seq) for seq in cands]
        best = int(np.argmax(scores))
        assert list(found.ids[:found.lengths[b], b]) == list(cands[best])
        assert found.scores[b] == pytest.approx(scores[best], rel=1e-10)
    # the search matters here: greedy misses the best somewhere; narrower beams never beat it
    narrow = [model.beam_search(src, lens, beam_size=k, max_length=L).scores for k in (1, 2, 3)]
    assert np.any(narrow[0] < found.scores - 1e-9)
    assert np.all(np.stack(narrow) <= found.scores + 1e-12)


# ---------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------

def reversal_pairs(rng, n):
    """Sources of 3-6 symbols from 2..7; the target is the source reversed (bos 0, eos 1)."""
    pairs = []
    for _ in range(n):
        x = rng.integers(2, 8, rng.integers(3, 7))
        pairs.append((x, x[::-1]))
    return pairs


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general"])
def test_trains_with_the_trainer_and_checkpoints(rng, tmp_path, attention):
    batches = make_batches(reversal_pairs(rng, 128), 32, bos=0, eos=1, rng=0)
    model = Seq2Seq(8, 8, hidden_size=24, embedding_dim=12, attention=attention, bos=0, eos=1, seed=0)
    path = tmp_path / "s2s.ckpt"
    before, after, _ = fit(model, batches, 120, 0.02, checkpoint_path=str(path))
    assert after < 0.5 * before, (before, after)
    loaded = check_checkpoint(path, model, batches, after)
    src, sl, _, _ = batches[0]
    assert np.array_equal(loaded.greedy(src, sl, 8).ids, model.greedy(src, sl, 8).ids)


def test_make_batches_pads_and_counts_eos():
    src, sl, tgt, tl = make_batches([([3, 4, 5], [6]), ([7], [2, 3])], 2, bos=0, eos=1)[0]
    assert src.T.tolist() == [[3, 4, 5], [7, 0, 0]] and sl.tolist() == [3, 1]
    assert tgt.T.tolist() == [[0, 6, 1, 1], [0, 2, 3, 1]] and tl.tolist() == [2, 3]


def test_float32_model(rng):
    model = make_model("bahdanau", "lstm", True, dtype=np.float32)
    batch = random_batch(rng)
    model.zero_grad()
    loss, _, bw = model.batch_loss(batch)
    bw()
    assert isinstance(loss, float)
    assert all(g.dtype == np.float32 and np.all(np.isfinite(g)) for g in model.grads.values())
    logits, alpha, _ = model.forward(batch[0], batch[2][:-1], batch[1], is_train=False)
    assert logits.dtype == np.float32 and alpha.dtype == np.float32


def test_bad_input_says_what_was_expected(rng):
    model = make_model("bahdanau", "gru", False)
    src, sl, tgt, tl = random_batch(rng)
    with pytest.raises(TypeError, match="src: expected integer token ids.*got dtype float64"):
        model.batch_loss((src.astype(float), sl, tgt, tl))
    with pytest.raises(ValueError, match=r"src: expected token ids in \[0, 7\), got min .*, max 9"):
        model.batch_loss((np.where(src == src.max(), 9, src), sl, tgt, tl))
    with pytest.raises(ValueError, match=r"tgt: expected \(T\+1, 3\) with T >= 1"):
        model.batch_loss((src, sl, tgt[:, :2], None))
    with pytest.raises(ValueError, match=r"src_lengths must be between 1 and T=5, got values from 2 to 6"):
        model.batch_loss((src, np.array([6, 2, 4]), tgt, tl))
    with pytest.raises(ValueError, match=r"tgt_lengths must have shape \(3,\), one length per sequence, got shape \(2,\)"):
        model.batch_loss((src, sl, tgt, np.array([1, 2])))
    with pytest.raises(ValueError, match=r"batch: expected a tuple \('src', 'src_lengths', 'tgt', "
                                         r"'tgt_lengths'\) of 3 to 4 arrays, got 2"):
        model.batch_loss((src, sl))
    with pytest.raises(ValueError, match="attention: expected one of"):
        Seq2Seq(5, 5, attention="transformer")
    with pytest.raises(ValueError, match="encoder's output size must equal hidden_size: expected 8, got 16"):
        Seq2Seq(5, 5, hidden_size=8, attention="luong_dot", bidirectional=True)
    with pytest.raises(ValueError, match="beam_size must be >= 1, got 0"):
        model.beam_search(src, sl, beam_size=0)
    with pytest.raises(ValueError, match="eos must be <= 4, got 5"):
        Seq2Seq(5, 5, eos=5)
