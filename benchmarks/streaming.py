"""Streaming cost: microseconds per timestep at batch 1, one step at a time, against PyTorch's cells.

    python benchmarks/streaming.py [--cells LSTM,GRU] [--layers 1] [--hidden 128] [--input 64]
                                   [--steps 200] [--threads 1] [--repeats 11] [--quick]

For each cell (float32, batch 1, by default H = 128, I = 64, one thread) it times, per step:

- rnncore step by step: ``state = layer.initial_state(1)`` then ``y_t, state = layer.step(x_t, state)``
  for every t (only when the layer has ``step``; a note says so otherwise);
- ``torch.nn.LSTMCell`` / ``GRUCell`` step by step (one cell per layer), on the same weights;
- rnncore's whole-sequence call ``layer(x)``, divided by T, the floor a step-by-step loop could reach;
- ``torch.nn.LSTM`` / ``GRU`` on the whole sequence, divided by T, for scale.

Every implementation is checked against torch on the same weights before it is timed (outputs of all
T steps), then all are timed in one interleaved series (medians). A markdown table is printed.
"""
import argparse
import sys

import numpy as np

import rnncore
from rnncore.benchmark import Comparison, TOLERANCE, import_torch, parse_list, threads, time_interleaved

CELLS = ("LSTM", "GRU")


def build(cell, layers, I, H, seed):
    """(torch module, torch cells per layer, rnncore layer), all on the module's weights."""
    torch = import_torch()
    torch.manual_seed(seed)
    module = getattr(torch.nn, cell)(I, H, num_layers=layers, batch_first=True).float()
    cells = []
    for k in range(layers):
        c = getattr(torch.nn, cell + "Cell")(I if k == 0 else H, H).float()
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(c, name).copy_(getattr(module, "%s_l%d" % (name, k)))
        cells.append(c)
    layer = getattr(rnncore, cell)(I, H, num_layers=layers, batch_first=True, dtype=np.float32)
    layer.load_state_dict({k: v.detach().numpy().copy() for k, v in module.state_dict().items()})
    return module, cells, layer


def cell_loop(cells, xs_torch, lstm):
    """The torch cells stepped over the sequence, layer by layer within each step: the outputs."""
    torch = import_torch()
    H = cells[0].hidden_size
    state = [(torch.zeros(1, H), torch.zeros(1, H)) if lstm else torch.zeros(1, H) for _ in cells]
    ys = []
    with torch.inference_mode():
        for x_t in xs_torch:
            for k, c in enumerate(cells):
                state[k] = c(x_t, state[k])
                x_t = state[k][0] if lstm else state[k]
            ys.append(x_t)
    return ys


def step_loop(layer, xs):
    """rnncore's step API over the sequence: the outputs."""
    state = layer.initial_state(1)
    ys = []
    for x_t in xs:
        y_t, state = layer.step(x_t, state)
        ys.append(y_t)
    return ys


def bench(cell, opts, seed=0):
    """Rows {'impl', 'us_per_step', ...} for one cell, after the check; the note when step is missing."""
    torch = import_torch()
    T, I, H = opts.steps, opts.input, opts.hidden
    module, cells, layer = build(cell, opts.layers, I, H, seed)
    x = np.random.default_rng(seed).standard_normal((1, T, I)).astype(np.float32)
    xs = [np.ascontiguousarray(x[:, t]) for t in range(T)]     # split before timing, as a stream arrives
    xs_torch = [torch.from_numpy(x_t) for x_t in xs]
    xt = torch.from_numpy(x)
    lstm = cell == "LSTM"

    def torch_sequence():
        with torch.inference_mode():
            return module(xt)[0]

    fns, note = {"rnncore step, step by step": lambda: step_loop(layer, xs)}, None
    fns["torch.nn.%sCell, step by step" % cell] = lambda: cell_loop(cells, xs_torch, lstm)
    fns["rnncore layer(x) / T"] = lambda: layer(x)[0]
    fns["torch.nn.%s(x) / T" % cell] = torch_sequence

    # the check: every implementation's outputs over all T steps against torch's whole-sequence module
    want = torch_sequence().numpy()[0]
    checks = {}
    for name, fn in fns.items():
        got = fn()
        got = np.concatenate([np.asarray(y).reshape(1, -1) for y in got]) if isinstance(got, list) else \
            np.asarray(got).reshape(T, -1)
        comparison = Comparison("float32")
        comparison.add("output", got.astype(np.float32), want)
        checks[name] = comparison.result(TOLERANCE["float32"], "torch")
    timed = {name: fn for name, fn in fns.items() if checks[name]["status"] == "ok"}
    with threads(opts.threads):
        times = time_interleaved(timed, opts.repeats, opts.warmup, opts.min_time)
    rows = []
    for name in fns:
        t = times.get(name)
        rows.append({"cell": cell, "layers": opts.layers, "impl": name, "check": checks[name],
                     "us_per_step": 1e3 * t["median_ms"] / T if t else None})
    return rows, note


def render(rows, opts):
    lines = ["Streaming, batch 1, I = %d, H = %d, T = %d, float32, %d thread%s; medians of %d interleaved samples"
             % (opts.input, opts.hidden, opts.steps, opts.threads, "" if opts.threads == 1 else "s", opts.repeats),
             "", "| cell | layers | implementation | check | µs per step |", "|---|---:|---|---|---:|"]
    for r in rows:
        c = r["check"]
        lines.append("| %s | %d | %s | %s | %s |" % (
            r["cell"], r["layers"], r["impl"], "ok %.0e" % c["max_err"] if c["status"] == "ok"
            else "**FAIL** %.1e" % c["max_err"], "%.1f" % r["us_per_step"] if r["us_per_step"] else "–"))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Per-step cost at batch 1: rnncore's step API against torch's cells")
    p.add_argument("--cells", type=lambda s: parse_list(s, list(CELLS), "cell"), default=list(CELLS))
    p.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--input", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="timesteps T of the stream (default 200)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None, help="samples (default 11, --quick 3)")
    p.add_argument("--quick", action="store_true")
    opts = p.parse_args(argv)
    if import_torch() is None:
        raise SystemExit("benchmarks/streaming.py needs PyTorch (its cells are the peer)")
    opts.repeats = opts.repeats or (3 if opts.quick else 11)
    opts.warmup, opts.min_time = (1, 0.01) if opts.quick else (2, 0.05)
    rows, notes = [], []
    for cell in opts.cells:
        cell_rows, note = bench(cell, opts)
        rows += cell_rows
        notes += [note] if note else []
    print(render(rows, opts))
    if notes:
        print("\n" + "\n".join("- note: %s" % note for note in notes))
    return 0 if all(r["check"]["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
