"""Memory: resident memory stays flat over 1,000 training steps (forward_train, backprop, an SGD
update) and 1,000 inference calls of a small LSTM and GRU.

A step allocates and frees a few hundred kB (the forward pass's caches, the gradients' temporaries);
a leak of one such array per step would add hundreds of MB over 1,000 steps, and even a leaked
4 kB page per step would add 4 MB, the bound used here. Resident memory is read from /proc/self/statm
after a warm-up (the allocator's arenas, OpenMP's thread stacks and rnncore's per-thread inference
scratch are set up once, in the first calls). The figures are printed (pytest -s, or in the summary).
"""
import contextlib
import gc
import os

import numpy as np
import pytest

import rnncore

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")

STEPS = 1000
WARMUP = 100
MAX_GROWTH_MB = 4.0
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb():
    """Resident set size of this process, in MB (second field of /proc/self/statm, in pages)."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2 ** 20


def report(request, line):
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + line)


# (layer class, dtype): an LSTM in float32 and a GRU in float64, 2 layers, bidirectional, dropout
LAYERS = {"lstm": (rnncore.LSTM, np.float32), "gru": (rnncore.GRU, np.float64)}
T, B, I, H = 20, 8, 16, 32
LENGTHS = [20, 3, 17, 1, 20, 9, 12, 20]


def setup(cell):
    cls, dtype = LAYERS[cell]
    layer = cls(I, H, num_layers=2, bidirectional=True, dropout=0.2, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    y = rng.uniform(-0.5, 0.5, (T, B, layer.output_size)).astype(dtype)
    return layer, x, y


def train_step(layer, x, y):
    layer.zero_grad()
    out, _, backprop = layer.forward_train(x, lengths=LENGTHS)
    backprop((out - y) / layer.dtype.type(B))
    for k, p in layer.params.items():
        p -= layer.dtype.type(0.01) * layer.grads[k]


@pytest.mark.parametrize("cell", list(LAYERS))
def test_rss_is_flat_over_1000_training_steps(cell, request):
    layer, x, y = setup(cell)
    for _ in range(WARMUP):
        train_step(layer, x, y)
    before = rss_mb()
    for i in range(STEPS):
        train_step(layer, x, y)
        if i == STEPS // 2 - 1:
            middle = rss_mb()
    after = rss_mb()
    report(request, f"test_memory {cell} ({layer.dtype}): RSS {before:.1f} MB after {WARMUP} warm-up "
                    f"steps, {middle:.1f} MB after {STEPS // 2} more, {after:.1f} MB after {STEPS} "
                    f"(growth {after - before:+.2f} MB)")
    assert np.all(np.isfinite(layer(x)[0])), "training diverged"
    assert after - before < MAX_GROWTH_MB, (
        f"RSS grew by {after - before:.2f} MB over {STEPS} training steps ({before:.1f} -> {after:.1f} MB)")


@pytest.mark.parametrize("cell", list(LAYERS))
def test_rss_is_flat_over_1000_inference_calls(cell, request):
    layer, x, _ = setup(cell)
    h0 = np.zeros((4, B, H), layer.dtype)
    hx = (h0, h0) if cell == "lstm" else h0
    for _ in range(WARMUP):
        layer(x, hx, LENGTHS)
    before = rss_mb()
    for _ in range(STEPS):
        layer(x, hx, LENGTHS)
    after = rss_mb()
    report(request, f"test_memory {cell} inference: RSS {before:.1f} MB -> {after:.1f} MB over {STEPS} "
                    f"calls (growth {after - before:+.2f} MB)")
    assert after - before < MAX_GROWTH_MB, (
        f"RSS grew by {after - before:.2f} MB over {STEPS} inference calls ({before:.1f} -> {after:.1f} MB)")
