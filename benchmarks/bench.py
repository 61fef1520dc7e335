"""The full benchmark harness: rnncore against PyTorch and the numpy reference, with the machine measured.

    python benchmarks/bench.py [--cells RNN,GRU,LSTM] [--shapes S,M,L,B1] [--threads 1,2] [--quick]
                               [--dtype float32,float64] [--peak measure|GFLOPS] [--json PATH]
                               [--plot PATH.png] [--sweep [--sweep-plot PATH.png]] [--memory]
                               [--coretype-unset] [--wait-idle SECONDS]

What ``rnncore bench`` (rnncore/benchmark.py) does, the check before timing and the interleaved
series included, and around it what measures this machine rather than rnncore (see README.md here):

- the FP32 peak at each thread count (peak.py: a vector-FMA loop compiled at run time) for a
  percent-of-peak column, measured again before every cell and shape, the best kept;
- a control in every series: numpy's float32 GEMM of two CONTROL_SIZE^2 matrices, which says how fast
  the machine ran a well-tuned GEMM at the very moments each row was timed;
- the CPU time other processes took meanwhile (/proc), and with --wait-idle a wait for idle CPUs;
- the numpy reference's time, tables of thread speed-ups and float64/float32 ratios, the targets of
  issue 6, a scaling sweep around M (--sweep), plots (--plot, --sweep-plot; matplotlib), the peak memory
  of one training step (--memory, a fresh process per number) and a second run without
  OPENBLAS_CORETYPE (--coretype-unset).

``main`` returns 0 when every check passed and 1 otherwise.
"""
import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import rnncore
from rnncore.benchmark import (GATES, PASSES, SHAPES, build_parser as _package_parser, check_text, error_text,
                               failures, finish_options, flops, import_torch, ms_text, parse_list, seed_of,
                               threads, write_json)
from rnncore import benchmark as package


def _load_beside(name):
    """benchmarks/<name>.py, imported by path: this folder is not a package, and putting it on sys.path
    would shadow the standard library's `profile` (cProfile imports it) with profile.py here."""
    spec = importlib.util.spec_from_file_location(
        "rnncore_benchmarks_" + name, os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peak_probe = _load_beside("peak")

PEAK_SECONDS = 0.2          # length of one FMA peak measurement (peak.fma_peak_gflops)
SCHEMA = "rnncore-benchmark/3"
BUSY = 0.2                  # cores used by other processes above which a time is flagged unreliable
RETRIES = 3                 # with --wait-idle, times a cell is timed again after others interfered
CORETYPE = "OPENBLAS_CORETYPE"
CONTROL_SIZE = 1024         # the control: numpy's float32 GEMM of two CONTROL_SIZE^2 matrices
# The scaling sweep (--sweep): one variable at a time varies around SWEEP_BASE (B, T, I, H); the base
# value of each variable is among its points, and the base shape is timed once for all three.
SWEEP_BASE = SHAPES["M"]
SWEEP = {"T": (25, 50, 100, 200), "B": (1, 8, 32, 64, 128), "H": (64, 128, 256, 512)}
SHAPE_INDEX = {"B": 0, "T": 1, "I": 2, "H": 3}
# Targets of issue 6, summarised after the tables.
TARGET_RATIO = 1.0          # every torch / rnncore time ratio (float32, 2 threads)
TARGET_TRAIN_RATIO = 1.5    # RNN and GRU training at every shape
TARGET_PCT_PEAK = 70.0      # forward at M and L, % of the measured FP32 peak
TARGET_THREAD_SPEEDUP = 1.7  # 2 threads over 1 thread at M and L
TARGET_F64_RATIO = 2.5      # float64 time / float32 time

# ---------------------------------------------------------------------------------------------------
# Environment

def _cpu_info():
    info = {"model": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["usable_cpus"] = os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key and key not in fields:
            fields[key] = value.strip()
    info["model"] = fields.get("model name", info["model"])
    info["family_model"] = "family %s model %s" % (fields.get("cpu family", "?"), fields.get("model", "?"))
    flags = set(fields.get("flags", "").split())
    info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512vl", "avx512_bf16", "amx_tile") if f in flags]
    return info


def _version(module_name):
    try:
        module = __import__(module_name)
    except Exception:
        return None
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version
            version = dist_version(module_name)
        except Exception:
            version = "?"
    return str(version)


def _torch_build():
    torch = import_torch()
    if torch is None:
        return None
    out = {"cpu_capability": None, "libraries": []}
    try:
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:
        pass
    try:
        for line in torch.__config__.show().splitlines():
            line = line.strip(" -\t")
            if "Math Kernel Library" in line or "MKL-DNN" in line or "oneDNN" in line:
                if line not in out["libraries"]:
                    out["libraries"].append(line)
    except Exception:
        pass
    return out


def _threadpools():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer",
            "num_threads", "filepath")
    return [{k: d.get(k) for k in keys if k in d} for d in threadpool_info()]


def environment():
    """What the numbers depend on: CPU, library versions, BLAS kernels, OPENBLAS_CORETYPE."""
    import scipy.linalg  # noqa: F401  (loaded so threadpoolctl sees scipy's OpenBLAS, which rnncore calls)
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_info(),
        "versions": {
            "rnncore": rnncore.__version__,
            "numpy": np.__version__,
            "scipy": _version("scipy"),
            "torch": _version("torch") if import_torch() is not None else None,
            "threadpoolctl": _version("threadpoolctl"),
        },
        "rnncore_path": os.path.dirname(rnncore.__file__),
        "openblas_coretype": os.environ.get(CORETYPE),
        "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                        "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
                        if os.environ.get(k) is not None},
        "torch_build": _torch_build(),
        "threadpools": _threadpools(),
    }
    return env


def measure_peak(threads, seconds=PEAK_SECONDS):
    """FP32 GFLOP/s of independent vector FMAs on `threads` OpenMP threads (peak.py)."""
    return peak_probe.fma_peak_gflops(threads, seconds=seconds)


def _peaks(opts):
    """{'source', 'fp32_gflops': {threads: GFLOP/s}, ...}: --peak N for every thread count, or measured
    at each thread count of the run (after --wait-idle, before any timing). A measured peak is measured
    again before every cell and shape (`_remeasure_peaks`); the one used is the best of all."""
    if opts.peak != "measure":
        return {"source": "given", "fp32_gflops": {str(n): opts.peak for n in opts.threads}}
    out = {"source": "measured", "seconds": PEAK_SECONDS, "fp32_gflops": {}, "samples": {},
           "method": "benchmarks/peak.py: independent vector FMAs, best of 5, measured "
                     "before the timing and again before every cell and shape; the best of all is used"}
    for n in opts.threads:
        if opts.wait_idle > 0:
            wait_for_idle(opts.wait_idle)
        _remeasure_peaks(out, [n])
    return out


def _remeasure_peaks(peaks, threads):
    """Measure the FP32 peak again on each thread count; keep every sample and the best. One short
    measurement can land while the host slows this VM down (a 2-thread peak of 96 or 151 GFLOP/s where
    182 is usual was seen), which would inflate every % of peak taken of it."""
    if peaks.get("source") != "measured" or peaks.get("error"):
        return
    for n in threads:
        try:
            value = measure_peak(n)
        except Exception as exc:
            peaks["error"] = error_text(exc)
            peaks["fp32_gflops"][str(n)] = None
            return
        peaks["samples"].setdefault(str(n), []).append(value)
        peaks["fp32_gflops"][str(n)] = max(peaks["samples"][str(n)])


def _apply_peaks(rows, peaks):
    """Each row's peak (its thread count's best measured FP32 peak, halved for float64) and % of it."""
    for row in rows:
        row["peak_gflops"] = peak = _row_peak(peaks, row["threads"], row["dtype"])
        if row["rnncore"]:
            row["rnncore"]["pct_peak"] = 100.0 * row["rnncore"]["gflops"] / peak if peak else None
        if row.get("control"):    # a float32 GEMM: % of the FP32 peak, whatever the row's dtype
            fp32 = _row_peak(peaks, row["threads"], "float32")
            row["control"]["pct_peak"] = 100.0 * row["control"]["gflops"] / fp32 if fp32 else None


def _row_peak(peaks, threads, dtype):
    """The peak a row's % is taken of: the FP32 peak at its thread count, halved for float64."""
    fp32 = peaks["fp32_gflops"].get(str(threads))
    if not fp32:
        return None
    return fp32 / 2.0 if dtype == "float64" else fp32


def _peak_text(peaks):
    by_threads = peaks["fp32_gflops"]
    if peaks.get("error"):
        return "FP32 peak not measured (%s)" % peaks["error"]
    samples = peaks.get("samples") or {}
    text = ", ".join("%.0f GFLOP/s on %s thread%s%s" % (
        v, n, "" if str(n) == "1" else "s",
        " (best of %d measurements, lowest %.0f)" % (len(samples[str(n)]), min(samples[str(n)]))
        if len(samples.get(str(n), [])) > 1 else "") for n, v in by_threads.items() if v)
    return "FP32 peak %s (%s; FP64 is half)" % (
        text, "measured: independent vector FMAs" if peaks["source"] == "measured" else "--peak")


def _warnings(env, peaks, dtypes):
    notes = []
    if peaks.get("error"):
        notes.append("the FMA peak could not be measured (%s): %% peak is not reported; pass --peak"
                     % peaks["error"])
    if "float64" in dtypes:
        notes.append("%% peak of float64 rows is against the FP64 peak, half the FP32 one (%s)"
                     % ("measured" if peaks["source"] == "measured" else "--peak"))
    pools = env.get("threadpools") or []
    openmp = {p.get("filepath") for p in pools if p.get("user_api") == "openmp"}
    blas = {p.get("filepath") for p in pools if p.get("user_api") == "blas"}
    if len(openmp) > 1:
        notes.append("%d OpenMP runtimes are loaded: their thread pools can compete for the cores" % len(openmp))
    if len(blas) > 1:
        notes.append("%d BLAS libraries are loaded (rnncore calls scipy's; the numpy reference numpy's)"
                     % len(blas))
    return notes


class CpuLoad:
    """CPU time used by other processes (in cores) between start() and stop(), from /proc.

    The machine's busy time (/proc/stat, steal excluded) minus this process's own (/proc/self/stat).
    Other work on a 2-core machine makes OpenMP teams wait for descheduled threads: the times of a
    run with a high figure here are not to be trusted. None where /proc is missing.
    """

    def __init__(self):
        self.start()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            with open("/proc/self/stat") as f:
                own = f.read()
            own = own[own.rindex(")") + 2:].split()
            return sum(v) - v[3] - v[4] - v[7], v[7], int(own[11]) + int(own[12]), time.monotonic()
        except (OSError, ValueError, IndexError):
            return None

    def start(self):
        self._t0 = self._read()
        return self

    def stop(self):
        """{'others': cores used by other processes, 'steal': cores taken by the hypervisor}."""
        t1 = self._read()
        if self._t0 is None or t1 is None or t1[3] <= self._t0[3]:
            return None
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        seconds = t1[3] - self._t0[3]
        busy, steal, own = (t1[i] - self._t0[i] for i in range(3))
        return {"others": max(0.0, (busy - own) / hz / seconds), "steal": steal / hz / seconds,
                "seconds": seconds}


def idle_check(seconds=0.5):
    """Cores used by other processes while this one sleeps for `seconds`."""
    load = CpuLoad()
    time.sleep(seconds)
    return load.stop()


def wait_for_idle(timeout):
    """Sleep until other processes use less than BUSY cores (over 0.5 s), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        load = idle_check(0.5)
        if load is None or load["others"] < BUSY:
            return True
        if time.monotonic() >= deadline:
            print("  other processes still use %.2f cores; going on" % load["others"], file=sys.stderr, flush=True)
            return False
        if not said:
            print("  waiting for idle CPUs (other processes use %.2f cores) ..." % load["others"],
                  file=sys.stderr, flush=True)
            said = True
        time.sleep(2.0)


def _control_fn():
    """The control of a series: numpy's float32 GEMM, CONTROL_SIZE^2 by CONTROL_SIZE^2 (BLAS, on the
    thread count its setup sets)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((CONTROL_SIZE, CONTROL_SIZE)).astype(np.float32) for _ in range(2))
    c = np.empty_like(a)

    def run():
        np.matmul(a, b, out=c)
    return run


#REFERENCE
def time_reference(cell, shape, dtype, seed, pass_, repeats):
    """Median of a few calls of the numpy reference (rnncore.layers.reference), slow by design: no warm-up."""
    from rnncore.layers import reference
    B, T, I, H = shape
    try:
        layer = package.rnncore_layer(cell, shape, dtype, seed)
        config, params = layer.config, layer.state_dict()
        rng = np.random.default_rng(seed)
        x, d_out = (rng.standard_normal((B, T, n)).astype(dtype) for n in (I, H))
        samples = []
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            output, h_n, cache = reference.forward(config, params, x, None, None)
            if pass_ == "train":
                reference.backward(config, params, cache, d_out, None)
            samples.append(time.perf_counter() - t)
    except Exception as exc:
        return {"error": error_text(exc)}
    median = statistics.median(samples)
    return {"median_ms": 1e3 * median, "samples_ms": [1e3 * v for v in samples],
            "gflops": flops(cell, shape, pass_) / (median * 1e9)}


def bench_cell(cell, shape_name, shape, opts, seed, combos):
    """rnncore.benchmark.bench_cell with the control GEMM in its series (unless --no-control), each row's
    control GFLOP/s and % of peak, and the numpy reference's time (unless --no-reference)."""
    control = _control_fn() if opts.control else None
    rows = package.bench_cell(cell, shape_name, shape, combos, opts, seed,
                              extras=(lambda n: {"control": control}) if control else None)
    for row in rows:
        t = row.get("control")
        row["control"] = None if t is None else dict(
            t, gflops=2.0 * CONTROL_SIZE ** 3 / (t["median_ms"] * 1e6),
            what="numpy float32 matmul %d^3, in this row's series" % CONTROL_SIZE)
        row["reference"] = None
        if opts.reference and shape_name in opts.reference_shapes:
            with threads(row["threads"]):
                row["reference"] = time_reference(cell, shape, row["dtype"], seed, row["pass"],
                                                  min(opts.repeats, opts.reference_repeats))
    _apply_peaks(rows, opts.peaks)
    return rows


# ---------------------------------------------------------------------------------------------------
# Peak memory of one training step (a fresh process per measurement)

def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s in /proc/self/status" % field)


def _memory_child(spec):
    """In a fresh process: peak RSS growth (VmHWM after a /proc/self/clear_refs reset) of one step."""
    impl, cell, B, T, I, H, dtype, n = spec.split(",")
    B, T, I, H, n = int(B), int(T), int(I), int(H), int(n)
    shape = (B, T, I, H)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    d_out = rng.standard_normal((B, T, H)).astype(dtype)
    xs = np.ascontiguousarray(x[:, :2])
    ds = np.ascontiguousarray(d_out[:, :2])
    with threads(n):
        if impl == "rnncore":
            layer = getattr(rnncore, cell)(I, H, batch_first=True, dtype=np.dtype(dtype), seed=0)

            def step(xa, da):
                out, h, backprop = layer.forward_train(xa)
                backprop(da, None)
        else:
            torch = import_torch()
            module = package.torch_module(cell, shape, dtype, 0)

            def step(xa, da):
                xt = torch.from_numpy(xa.copy()).requires_grad_()
                out, h = module(xt)
                out.backward(torch.from_numpy(da))
        step(xs, ds)            # load code paths and start thread pools on a 2-step input
        gc.collect()
        base = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")        # resets VmHWM to the current RSS
        step(x, d_out)
        peak = _status_kb("VmHWM")
        after = _status_kb("VmRSS")
    print(json.dumps({"peak_mb": (peak - base) / 1024.0, "retained_mb": (after - base) / 1024.0}))


def measure_memory(impl, cell, shape, dtype, threads):
    spec = ",".join(map(str, (impl, cell) + tuple(shape) + (dtype, threads)))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", spec],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# Output

def _shape_label(row):
    return "%s (%d,%d,%d,%d)" % (row["shape"], row["B"], row["T"], row["I"], row["H"])


def render_table(rows):
    lines = ["| cell | shape (B,T,I,H) | pass | check | rnncore ms | torch ms | ratio | rnncore GFLOP/s "
             "| % peak | BLAS GEMM % peak | numpy ref ms |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        r, t, ref, ctl = row["rnncore"], row["torch"], row["reference"], row.get("control")
        status = row["check"]["status"]
        rn = ms_text(r["median_ms"]) if r else ("FAIL" if status == "FAIL" else
                                            "ERROR" if status == "ERROR" else "–")
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            row["cell"], _shape_label(row), row["pass"], check_text(row["check"]), rn,
            ms_text(t["median_ms"]) if t else "–",
            "%.2f" % row["ratio"] if row["ratio"] else "–",
            "%.1f" % r["gflops"] if r else "–",
            "%.0f%%" % r["pct_peak"] if r and r.get("pct_peak") is not None else "–",
            "%.0f%%" % ctl["pct_peak"] if ctl and ctl.get("pct_peak") is not None else "–",
            ms_text(ref["median_ms"]) if ref and "median_ms" in ref else ("error" if ref else "–")))
    return "\n".join(lines)


def render_header(result):
    env, settings = result["environment"], result["settings"]
    v = env["versions"]
    cpu = env["cpu"]
    lines = [
        "- versions: rnncore %s, numpy %s, scipy %s, torch %s, Python %s" % (
            v.get("rnncore"), v.get("numpy"), v.get("scipy"), v.get("torch"), env["python"]),
        "- CPU: %s (%s), %s usable CPUs, SIMD: %s" % (
            cpu.get("model"), cpu.get("family_model", "?"), cpu.get("usable_cpus"),
            " ".join(cpu.get("simd", [])) or "?"),
        "- threads: %s (torch.set_num_threads and rnncore.set_num_threads; numpy BLAS limited alike)" % (
            ", ".join(map(str, settings["threads"]))),
        "- OPENBLAS_CORETYPE: %s" % (env["openblas_coretype"] if env["openblas_coretype"] is not None
                                     else "unset"),
        "- dtype %s, batch_first=True; %d repeats (medians), %d warm-up calls, >= %g ms per sample; "
        "check on the first %d timesteps" % (
            ", ".join(settings["dtypes"]), settings["repeats"], settings["warmup"], 1e3 * settings["min_time"],
            settings["check_steps"]),
        "- %s" % _peak_text(result["peak"]),
    ]
    before, during = env.get("other_load_before"), env.get("other_load_during")
    if before or during:
        lines.append("- CPU used by other processes: %s cores just before, %s on average during the run "
                     "(steal %s)" % ("%.2f" % before["others"] if before else "?",
                                     "%.2f" % during["others"] if during else "?",
                                     "%.2f" % during["steal"] if during else "?"))
    tb = env.get("torch_build")
    if tb:
        lines.append("- torch CPU capability %s; %s" % (tb.get("cpu_capability"), "; ".join(tb["libraries"])))
    if env.get("env_threads"):
        lines.append("- thread variables: %s" % ", ".join("%s=%s" % kv for kv in env["env_threads"].items()))
    for note in result.get("notes", []):
        lines.append("- note: %s" % note)
    pools = env.get("threadpools")
    if pools:
        lines += ["", "| library | internal_api | architecture | num_threads | version | filepath |",
                  "|---|---|---|---:|---|---|"]
        for p in pools:
            lines.append("| %s | %s | %s | %s | %s | %s |" % (
                p.get("user_api"), p.get("internal_api"), p.get("architecture", "–"), p.get("num_threads"),
                p.get("version"), p.get("filepath")))
    elif pools is None:
        lines.append("- BLAS libraries: threadpoolctl is not installed")
    return "\n".join(lines)


def render_memory(memory):
    lines = ["| cell | shape | rnncore peak MB | rnncore retained MB | torch peak MB | torch retained MB |",
             "|---|---|---:|---:|---:|---:|"]

    def cell_text(m, key):
        if m is None:
            return "–"
        return "error" if "error" in m else "%.1f" % m[key]
    for m in memory:
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            m["cell"], m["shape"], cell_text(m.get("rnncore"), "peak_mb"),
            cell_text(m.get("rnncore"), "retained_mb"), cell_text(m.get("torch"), "peak_mb"),
            cell_text(m.get("torch"), "retained_mb")))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Comparisons between runs of the same cell, shape and pass: thread counts, dtypes; the targets

ROW_KEY = ("cell", "shape", "pass", "threads", "dtype")


def compare_rows(rows, attr, base):
    """Pair each row whose `attr` ('threads' or 'dtype') is not `base` with the row that has `base` and
    is otherwise the same (cell, shape, pass, threads, dtype). For rnncore and torch: the median times
    and time_ratio = time / base time (None when either was not timed)."""
    def key(r):
        return tuple(r[k] for k in ROW_KEY if k != attr)
    index = {key(r): r for r in rows if r[attr] == base}
    out = []
    for r in rows:
        b = index.get(key(r)) if r[attr] != base else None
        if b is None:
            continue
        entry = {k: r[k] for k in ROW_KEY}
        entry["base"] = base
        # the control GEMM is float32 whatever the row's dtype: it compares across thread counts only
        for impl in ("rnncore", "torch") + (("control",) if attr == "threads" else ()):
            t0, t1 = b.get(impl), r.get(impl)
            entry[impl] = None if not (t0 and t1) else {
                "base_ms": t0["median_ms"], "ms": t1["median_ms"], "time_ratio": t1["median_ms"] / t0["median_ms"]}
        out.append(entry)
    return out


def thread_scaling(rows):
    """Speed-up of each thread count over the smallest one (median time there / median time here)."""
    counts = sorted({r["threads"] for r in rows})
    if len(counts) < 2:
        return []
    out = compare_rows(rows, "threads", counts[0])
    for e in out:
        for impl in ("rnncore", "torch", "control"):
            if e[impl]:
                e[impl]["speedup"] = 1.0 / e[impl]["time_ratio"]
    return out


def dtype_ratio(rows):
    """float64 median time / float32 median time, per cell, shape, pass and thread count."""
    dtypes = {r["dtype"] for r in rows}
    return compare_rows(rows, "dtype", "float32") if {"float32", "float64"} <= dtypes else []


def render_comparison(entries, label, value_key, title):
    """A table of compare_rows entries: the two times and `value_key` for rnncore and torch (and the
    control GEMM's `value_key`, when the entries have it)."""
    control = any(e.get("control") for e in entries)
    lines = ["| cell | shape | pass | %s | rnncore ms | rnncore %s | torch ms | torch %s |%s" % (
                 label, title, title, " BLAS GEMM %s |" % title if control else ""),
             "|---|---|---|---|---:|---:|---:|---:|%s" % ("---:|" if control else "")]

    def cells(t):
        if not t:
            return "–", "–"
        return "%s → %s" % (ms_text(t["base_ms"]), ms_text(t["ms"])), "%.2f" % t[value_key]
    for e in entries:
        compared = ("%s vs %s, %s" % (e["threads"], e["base"], e["dtype"]) if label == "threads" else
                    "%s vs %s, %s thr" % (e["dtype"], e["base"], e["threads"]))
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            (e["cell"], e["shape"], e["pass"], compared) + cells(e["rnncore"]) + cells(e["torch"]))
            + (" %s |" % cells(e.get("control"))[1] if control else ""))
    return "\n".join(lines)


def _target(name, values, ok, worst_of, control=None, control_unit=None):
    """A target's values (row name -> value), worst value and verdict; with `control`, the same measure
    of the control GEMM in each row's series (row name -> value, in `control_unit`: "%" of peak or "x"
    speed-up), where the target has one."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return None
    worst = worst_of(values.values())
    out = {"target": name, "values": values, "worst": worst, "met": ok(worst)}
    control = {k: v for k, v in (control or {}).items() if v is not None and k in values}
    if control:
        out["control"], out["control_unit"] = control, control_unit
    return out


def targets(rows, scaling, f64, memory=()):
    """The targets of issue 6, from what this run measured (None where it did not measure them).

    As the issue states them: float32 at 2 threads (or the run's largest thread count) unless the
    target itself compares thread counts (float32, 2 vs 1) or dtypes (at that thread count)."""
    large = ("M", "L")
    counts = sorted({r["threads"] for r in rows}) or [1]
    tt = 2 if 2 in counts else counts[-1]
    main = [r for r in rows if r["dtype"] == "float32" and r["threads"] == tt and r["rnncore"]]

    def name(r):
        return "%s %s %s" % (r["cell"], r["shape"], r["pass"])

    def ratio(r):
        return r["torch"]["median_ms"] / r["rnncore"]["median_ms"] if r.get("torch") else None
    speedups = [e for e in scaling if e["shape"] in large and e["base"] == 1 and e["threads"] == 2
                and e["dtype"] == "float32"]
    out = [
        _target("every speed ratio torch/rnncore >= %g (float32, %d thr)" % (TARGET_RATIO, tt),
                {name(r): ratio(r) for r in main}, lambda w: w >= TARGET_RATIO, min),
        _target("RNN and GRU training ratio >= %g at every shape (float32, %d thr)" % (TARGET_TRAIN_RATIO, tt),
                {name(r): ratio(r) for r in main if r["cell"] in ("RNN", "GRU") and r["pass"] == "train"},
                lambda w: w >= TARGET_TRAIN_RATIO, min),
        _target("forward at M and L >= %g%% of the measured FP32 peak (float32, %d thr)" % (TARGET_PCT_PEAK, tt),
                {name(r): r["rnncore"].get("pct_peak") for r in main if r["pass"] == "fwd" and r["shape"] in large},
                lambda w: w >= TARGET_PCT_PEAK, min,
                control={name(r): (r.get("control") or {}).get("pct_peak") for r in main
                         if r["pass"] == "fwd" and r["shape"] in large}, control_unit="%"),
        _target("2 threads >= %gx faster than 1 thread at M and L (rnncore, float32)" % TARGET_THREAD_SPEEDUP,
                {name(e): e["rnncore"]["speedup"] for e in speedups if e["rnncore"]},
                lambda w: w >= TARGET_THREAD_SPEEDUP, min,
                control={name(e): (e.get("control") or {}).get("speedup") for e in speedups},
                control_unit="x"),
        _target("peak memory of a training step at L <= torch's (rnncore MB / torch MB)",
                {"%s L" % m["cell"]: m["rnncore"]["peak_mb"] / m["torch"]["peak_mb"] for m in memory
                 if m["shape"] == "L" and "peak_mb" in (m.get("rnncore") or {})
                 and "peak_mb" in (m.get("torch") or {})},
                lambda w: w <= 1.0, max),
        _target("float64 time <= %gx float32 time (rnncore, %d thr)" % (TARGET_F64_RATIO, tt),
                {"%s %s %s" % (e["cell"], e["shape"], e["pass"]): e["rnncore"]["time_ratio"]
                 for e in f64 if e["rnncore"] and e["threads"] == tt}, lambda w: w <= TARGET_F64_RATIO, max),
    ]
    return [t for t in out if t]


def render_targets(items):
    lines = ["| target | rows | worst | met | the control GEMM, same series |", "|---|---:|---|---|---|"]
    for t in items:
        key = [k for k, v in t["values"].items() if v == t["worst"]][0]
        control, fmt = t.get("control"), {"%": "%.0f%%", "x": "%.2fx"}.get(t.get("control_unit"), "%.2f")
        lines.append("| %s | %d | %.2f (%s) | %s | %s |" % (
            t["target"], len(t["values"]), t["worst"], key, "yes" if t["met"] else "**no**",
            ("%s–%s (%s: %s)" % (fmt % min(control.values()), fmt % max(control.values()), key,
                                 fmt % control[key])) if control and key in control else "–"))
    return "\n".join(lines)


def render(result, title="rnncore benchmark"):
    parts = ["## %s" % title, "", render_header(result), ""]
    groups = {}
    for row in result["rows"]:
        groups.setdefault((row["dtype"], row["threads"]), []).append(row)
    for (dtype, n), rows in groups.items():
        if len(groups) > 1:
            parts += ["### %s, %d thread%s" % (dtype, n, "" if n == 1 else "s"), ""]
        parts += [render_table(rows), ""]
    if result.get("thread_scaling"):
        base = result["thread_scaling"][0]["base"]
        parts += ["Speed-up of N threads over %d thread%s (median time on %d / median time on N):"
                  % (base, "" if base == 1 else "s", base), "",
                  render_comparison(result["thread_scaling"], "threads", "speedup", "speed-up"), ""]
    if result.get("dtype_ratio"):
        parts += ["float64 time / float32 time (medians):", "",
                  render_comparison(result["dtype_ratio"], "dtypes", "time_ratio", "f64/f32"), ""]
    if result.get("targets"):
        parts += ["Targets (issue 6):", "", render_targets(result["targets"]), ""]
    if result.get("sweep"):
        parts += [render_sweep(result["sweep"]), ""]
    lines = failures(result["rows"] + (result.get("sweep") or {}).get("rows", []))
    if lines:
        parts += lines + [""]
    if result.get("memory"):
        parts += ["Peak memory of one training step (forward_train + backprop; torch forward + backward), "
                  "above the resident size before the step:", "", render_memory(result["memory"]), ""]
    return "\n".join(parts)


def render_coretype_comparison(with_var, without_var):
    value = with_var["environment"]["openblas_coretype"]
    lines = ["| cell | shape | pass | rnncore ms (%s=%s) | rnncore ms (unset) | torch ms (%s) | torch ms (unset) |"
             % (CORETYPE, value, value), "|---|---|---|---:|---:|---:|---:|"]
    index = {tuple(r.get(k) for k in ROW_KEY): r for r in without_var["rows"]}
    for a in with_var["rows"]:
        b = index.get(tuple(a.get(k) for k in ROW_KEY))
        if b is None:
            continue

        def ms(row, impl):
            return ms_text(row[impl]["median_ms"]) if row[impl] else "–"
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            a["cell"], a["shape"], a["pass"], ms(a, "rnncore"), ms(b, "rnncore"), ms(a, "torch"), ms(b, "torch")))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The scaling sweep: one of T, B, H varies around SWEEP_BASE

def sweep_shapes(base=None, sweep=None):
    """[(name, (B, T, I, H), [variables whose series it is in])], the base shape once, named 'base'."""
    base = tuple(base or SWEEP_BASE)
    sweep = sweep or SWEEP
    shapes = {}
    for var, values in sweep.items():
        for v in values:
            shape = list(base)
            shape[SHAPE_INDEX[var]] = int(v)
            shapes.setdefault(tuple(shape), []).append(var)
    return [("base" if shape == base else "%s=%d" % (vary[0], shape[SHAPE_INDEX[vary[0]]]), shape, vary)
            for shape, vary in shapes.items()]


def sweep_series(sweep_rows, cell, var, pass_):
    """The rows of one series, ordered by the variable."""
    rows = [r for r in sweep_rows if r["cell"] == cell and var in r["vary"] and r["pass"] == pass_]
    return sorted(rows, key=lambda r: r[var])


def _exponent(rows, var, impl):
    """k in time ~ var**k: least squares over all points, and between the last two (None if < 2 points)."""
    pts = [(r[var], r[impl]["median_ms"]) for r in rows if r.get(impl)]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return {"fit": float(np.polyfit(x, y, 1)[0]), "last_two": float((y[-1] - y[-2]) / (x[-1] - x[-2]))}


def sweep_exponents(sweep):
    out = []
    for cell in sweep["cells"]:
        for pass_ in PASSES:
            for impl in ("rnncore", "torch"):
                entry = {"cell": cell, "pass": pass_, "impl": impl}
                for var in sweep["values"]:
                    entry[var] = _exponent(sweep_series(sweep["rows"], cell, var, pass_), var, impl)
                out.append(entry)
    return out


def render_sweep(sweep):
    B, T, I, H = sweep["base"]
    lines = ["Scaling sweep around (B,T,I,H) = (%d,%d,%d,%d), %s, %d thread%s; one variable varies at a time:"
             % (B, T, I, H, sweep["dtype"], sweep["threads"], "" if sweep["threads"] == 1 else "s"), "",
             "| cell | vary | B | T | I | H | pass | rnncore ms | torch ms | ratio | rnncore GFLOP/s | torch GFLOP/s |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]

    def col(t, key, fmt):
        return fmt(t[key]) if t else "–"
    for cell in sweep["cells"]:
        for var in sweep["values"]:
            for pass_ in PASSES:
                for r in sweep_series(sweep["rows"], cell, var, pass_):
                    r_, t_ = r["rnncore"], r["torch"]
                    lines.append("| %s | %s | %d | %d | %d | %d | %s | %s | %s | %s | %s | %s |" % (
                        cell, var, r["B"], r["T"], r["I"], r["H"], pass_,
                        col(r_, "median_ms", ms_text) if r_ else r["check"]["status"], col(t_, "median_ms", ms_text),
                        "%.2f" % r["ratio"] if r["ratio"] else "–", col(r_, "gflops", "%.1f".__mod__),
                        col(t_, "gflops", "%.1f".__mod__)))
    lines += ["", "Growth exponent k in time ~ x^k (least squares over the points; between the two largest "
                  "points in brackets):", "",
              "| cell | pass | impl | %s |" % " | ".join(sweep["values"]),
              "|---|---|---|%s" % ("---|" * len(sweep["values"]))]
    for e in sweep["exponents"]:
        lines.append("| %s | %s | %s | %s |" % (e["cell"], e["pass"], e["impl"], " | ".join(
            "%.2f (%.2f)" % (e[v]["fit"], e[v]["last_two"]) if e[v] else "–" for v in sweep["values"])))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Plots (matplotlib, imported only when a plot is asked for)

PLOT_DPI = 100
CELL_COLORS = {"RNN": "tab:blue", "GRU": "tab:orange", "LSTM": "tab:green"}


def _figure(width, height):
    """A matplotlib Figure drawn by the Agg backend (pyplot and the global backend are left alone)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as exc:
        raise SystemExit("--plot and --sweep-plot need matplotlib (pip install matplotlib): %s" % exc)
    fig = Figure(figsize=(width, height), dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    fig.savefig(path, dpi=PLOT_DPI)
    width, height = fig.get_size_inches() * PLOT_DPI
    return {"path": os.path.abspath(path), "width_px": int(round(width)), "height_px": int(round(height))}


def _machine(result):
    cpu = result["environment"]["cpu"]
    return "%s, %s CPUs" % (cpu.get("model"), cpu.get("usable_cpus"))


def plot_ratios(result, path):
    """Bars of torch time / rnncore time, forward and training, per cell x shape, from 1.0 up (rnncore
    faster) or down (slower) on a log scale; a panel per dtype and thread count.
    Returns {'path', 'width_px', 'height_px'}."""
    from matplotlib import ticker
    groups = {}
    for row in result["rows"]:
        groups.setdefault((row["dtype"], row["threads"]), []).append(row)
    if not groups:
        raise ValueError("no rows to plot")
    labels = list(dict.fromkeys((r["cell"], r["shape"]) for r in result["rows"]))
    fig = _figure(max(6.0, 0.7 * len(labels) + 2), 0.4 + 3.2 * len(groups))
    x = np.arange(len(labels))
    for i, ((dtype, n), rows) in enumerate(groups.items()):
        ax = fig.add_subplot(len(groups), 1, i + 1)
        index = {(r["cell"], r["shape"], r["pass"]): r["ratio"] for r in rows}
        for pass_, dx, color in (("fwd", -0.2, "tab:blue"), ("train", 0.2, "tab:orange")):
            ratios = [index.get(label + (pass_,)) for label in labels]
            bars = ax.bar(x + dx, [v - 1.0 if v else 0.0 for v in ratios], 0.4, bottom=1.0, color=color,
                          label="forward" if pass_ == "fwd" else "training (forward + backward)")
            ax.bar_label(bars, labels=["%.2f" % v if v else "–" for v in ratios], fontsize=7)
        values = [v for v in index.values() if v] or [1.0]
        ax.set_yscale("log", base=2)
        ax.set_ylim(min(0.5, min(values) / 1.4), max(2.0, max(values) * 2.0))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: "%g" % v))
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
        ax.set_xticks(x)
        ax.set_xticklabels(["%s %s" % label for label in labels], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("torch time / rnncore time\n(> 1: rnncore faster)")
        ax.set_title("rnncore vs PyTorch: %s, %d thread%s" % (dtype, n, "" if n == 1 else "s"),
                     fontsize=10)
        ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.suptitle(_machine(result), fontsize=9)
    return _save(fig, path)


def _log_log(ax, xticks):
    """Log axes labelled in plain numbers: x at the sweep's points, y at 1, 2, 5 x 10^k."""
    from matplotlib import ticker
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(xticks))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: "%g" % v))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: "%g" % v))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def plot_sweep(result, path):
    """Time against T, B and H (log-log, a panel each; forward and training in two rows): rnncore solid,
    torch dashed, a colour per cell. Returns {'path', 'width_px', 'height_px'}."""
    sweep = result["sweep"]
    variables = list(sweep["values"])
    fig = _figure(4.0 * len(variables), 7.0)
    for row_i, pass_ in enumerate(PASSES):
        for col_i, var in enumerate(variables):
            ax = fig.add_subplot(len(PASSES), len(variables), row_i * len(variables) + col_i + 1)
            for cell in sweep["cells"]:
                series = sweep_series(sweep["rows"], cell, var, pass_)
                for impl, style in (("rnncore", "-o"), ("torch", "--x")):
                    pts = [(r[var], r[impl]["median_ms"]) for r in series if r.get(impl)]
                    if pts:
                        ax.plot(*zip(*pts), style, color=CELL_COLORS.get(cell), label="%s %s" % (cell, impl))
            _log_log(ax, sweep["values"][var])
            ax.set_xlabel(var)
            ax.set_ylabel("%s ms" % ("forward" if pass_ == "fwd" else "training"))
            ax.grid(True, which="both", alpha=0.3)
            if row_i == 0 and col_i == 0:
                ax.legend(fontsize=7)
    B, T, I, H = sweep["base"]
    fig.suptitle("Scaling around B=%d, T=%d, I=%d, H=%d; %s, %d thread%s; %s" % (
        B, T, I, H, sweep["dtype"], sweep["threads"], "" if sweep["threads"] == 1 else "s", _machine(result)),
        fontsize=9)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# Command line

def build_parser():
    """`rnncore bench`'s options, and those of the harness."""
    p = _package_parser(prog="python benchmarks/bench.py")
    p.description = ("Time rnncore's RNN/GRU/LSTM layers against PyTorch and the numpy reference, after "
                     "checking them against PyTorch on the same weights, with the machine measured around "
                     "them. Exit status 1 if a check fails.")
    p.add_argument("--peak", type=_peak_arg, default="measure",
                   help="FP32 peak GFLOP/s for the percent-of-peak column, or 'measure' (default): independent "
                        "vector FMAs (peak.py) on each thread count of the run, %g s each, before timing; FP64 "
                        "is taken as half" % PEAK_SECONDS)
    p.add_argument("--no-reference", action="store_true", help="do not time the numpy reference")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="do not time the control (numpy's float32 GEMM of two %d^2 matrices, sampled in every "
                        "series to show how fast the machine ran BLAS while each row was timed)" % CONTROL_SIZE)
    p.add_argument("--reference-shapes", type=lambda s: parse_list(s, list(SHAPES), "shape"), default=None,
                   help="time the numpy reference only at these shapes (e.g. S,B1 to skip the large ones)")
    p.add_argument("--reference-repeats", type=int, default=3, help="repeats of the numpy reference (default 3)")
    p.add_argument("--memory", action="store_true",
                   help="also measure the peak memory of one training step (a fresh process per number)")
    p.add_argument("--coretype-unset", action="store_true",
                   help="then run the same benchmark again in a subprocess without %s and report both" % CORETYPE)
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="before each cell and shape, wait up to SECONDS for other processes to leave the CPUs "
                        "idle (shared machines)")
    p.add_argument("--plot", metavar="PATH.png",
                   help="bar chart of torch time / rnncore time per cell and shape, forward and training "
                        "(needs matplotlib)")
    p.add_argument("--sweep", action="store_true",
                   help="time the cells (forward and training, rnncore and torch) while one of T %s, B %s, H %s "
                        "varies around B=%d,T=%d,I=%d,H=%d (the M shape), at the first dtype and the most "
                        "threads; the --shapes table runs too only when --shapes is given" % (
                            (",".join(map(str, SWEEP["T"])), ",".join(map(str, SWEEP["B"])),
                             ",".join(map(str, SWEEP["H"]))) + tuple(SWEEP_BASE)))
    p.add_argument("--sweep-plot", metavar="PATH.png",
                   help="with --sweep: time against T, B and H, log-log (needs matplotlib)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    return p


def _peak_arg(text):
    if text.strip().lower() == "measure":
        return "measure"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected 'measure' or GFLOP/s, got %r" % text)
    if not value > 0:
        raise argparse.ArgumentTypeError("the peak must be positive")
    return value


def _bench_cell_quietly(cell, shape_name, shape, opts, seed, combos):
    """bench_cell, with each row's `other_load`; with --wait-idle, started on idle CPUs and timed
    again (up to RETRIES times) when other processes took more than BUSY cores meanwhile."""
    best = None
    for attempt in range(1 + (RETRIES if opts.wait_idle > 0 else 0)):
        if opts.wait_idle > 0:
            wait_for_idle(opts.wait_idle)
        load = CpuLoad()
        rows = bench_cell(cell, shape_name, shape, opts, seed, combos)
        others = load.stop()
        for row in rows:
            row["other_load"] = others
            row["attempts"] = attempt + 1
        busy = others["others"] if others else 0.0
        if best is None or busy < best[0]:
            best = (busy, rows)
        if busy <= BUSY:
            break
        if attempt < RETRIES and opts.wait_idle > 0:
            print("  other processes took %.2f cores meanwhile: timing again" % busy, file=sys.stderr, flush=True)
    return best[1]


def _time_grid(opts, combos, jobs):
    """Rows of every job (shape name, shape, cell, seed) at every (dtype, threads) in combos, ordered by
    combo, then job, then pass. Each job times all its combos in one interleaved series (bench_cell)."""
    rows = []
    for done, (shape_name, shape, cell, seed) in enumerate(jobs, 1):
        if done > 1:
            _remeasure_peaks(opts.peaks, sorted({n for _, n in combos}))
        print("[%d/%d] %s %s, %s ..." % (done, len(jobs), cell, shape_name, ", ".join(
            "%s %d thread%s" % (d, n, "" if n == 1 else "s") for d, n in combos)), file=sys.stderr, flush=True)
        rows += [(done, r) for r in _bench_cell_quietly(cell, shape_name, shape, opts, seed, combos)]
    rank = {c: i for i, c in enumerate(combos)}
    rows.sort(key=lambda jr: (rank[(jr[1]["dtype"], jr[1]["threads"])], jr[0], PASSES.index(jr[1]["pass"])))
    return [r for _, r in rows]


def _sweep_seed(opts, point, cell):
    """Seeds of the sweep's shapes, apart from those of the --shapes table (seed_of)."""
    return opts.seed + 1000 * (100 + point) + list(GATES).index(cell)


def run_sweep(opts):
    """The scaling sweep (--sweep) at the first dtype and the most threads: rows, exponents."""
    shapes = sweep_shapes()
    jobs = [(name, shape, cell, _sweep_seed(opts, i, cell))
            for i, (name, shape, _) in enumerate(shapes) for cell in opts.cells]
    combo = (opts.dtypes[0], max(opts.threads))
    rows = _time_grid(opts, [combo], jobs)
    vary = {name: v for name, _, v in shapes}
    for row in rows:
        row["vary"] = vary[row["shape"]]
    sweep = {"base": list(SWEEP_BASE), "values": {k: list(v) for k, v in SWEEP.items()}, "cells": opts.cells,
             "dtype": combo[0], "threads": combo[1], "rows": rows}
    sweep["exponents"] = sweep_exponents(sweep)
    return sweep


def run(opts):
    """Run the benchmark described by parsed options; return the result dictionary."""
    env = environment()
    env["other_load_before"] = idle_check()
    opts.peaks = _peaks(opts)
    run_load = CpuLoad()
    jobs = [(name, SHAPES[name], cell, seed_of(opts, name, cell))
            for name in opts.shapes for cell in opts.cells]
    rows = _time_grid(opts, [(d, n) for d in opts.dtypes for n in opts.threads], jobs)
    sweep = run_sweep(opts) if opts.sweep else None
    _apply_peaks(rows + (sweep["rows"] if sweep else []), opts.peaks)    # the best peak of the run
    env["other_load_during"] = run_load.stop()
    memory = []
    if opts.memory:
        for shape_name in opts.shapes:
            for cell in opts.cells:
                entry = {"cell": cell, "shape": shape_name, "threads": opts.threads[0], "dtype": opts.dtypes[0]}
                for impl in ("rnncore", "torch"):
                    if impl == "torch" and (opts.no_torch or import_torch() is None):
                        continue
                    entry[impl] = measure_memory(impl, cell, SHAPES[shape_name], opts.dtypes[0], opts.threads[0])
                memory.append(entry)
    settings = {k: getattr(opts, k) for k in ("cells", "shapes", "threads", "dtypes", "repeats", "warmup",
                                               "min_time", "peak", "check_steps", "seed", "quick", "sweep")}
    settings.update(dtype=opts.dtypes[0], torch=not opts.no_torch and import_torch() is not None,
                    reference=opts.reference, reference_shapes=opts.reference_shapes,
                    reference_repeats=opts.reference_repeats,
                    tolerance={d: package.TOLERANCE[d] for d in opts.dtypes},
                    full_tolerance={d: package.FULL_TOLERANCE[d] for d in opts.dtypes},
                    flops="forward 2*T*B*G*H*(I+H), training 3x forward; G = 1 RNN, 3 GRU, 4 LSTM")
    scaling, f64 = thread_scaling(rows), dtype_ratio(rows)
    result = {"schema": SCHEMA, "environment": env, "settings": settings, "peak": opts.peaks, "rows": rows,
              "thread_scaling": scaling, "dtype_ratio": f64, "targets": targets(rows, scaling, f64, memory),
              "sweep": sweep, "memory": memory, "notes": _warnings(env, opts.peaks, opts.dtypes)}
    if opts.no_torch or import_torch() is None:
        result["notes"].append("PyTorch not timed" + ("" if opts.no_torch else " (not importable)"))
    all_rows = rows + (sweep["rows"] if sweep else [])
    busy = [r for r in all_rows if (r.get("other_load") or {}).get("others", 0) > BUSY]
    if busy:
        result["notes"].append("other processes used more than %.2g cores while timing %s: those times are "
                               "not reliable" % (BUSY, ", ".join(sorted({"%s %s" % (r["cell"], r["shape"])
                                                                       for r in busy}))))
    result["all_checks_passed"] = all(r["check"]["status"] == "ok" for r in all_rows)
    return result


def _run_without_coretype(argv):
    """The same benchmark in a subprocess with OPENBLAS_CORETYPE removed from the environment."""
    child_argv, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--coretype-unset", "--memory"):
            continue
        if a in ("--json", "--plot", "--sweep-plot"):
            skip = True
            continue
        if a.startswith(("--json=", "--plot=", "--sweep-plot=")):
            continue
        child_argv.append(a)
    env = {k: v for k, v in os.environ.items() if k != CORETYPE}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "unset.json")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__)] + child_argv + ["--json", path],
                              env=env, stdout=subprocess.DEVNULL)
        if not os.path.exists(path):
            return {"error": "the subprocess exited with status %d and wrote no results" % proc.returncode}
        with open(path) as f:
            return json.load(f)


def main(argv=None):
    """Entry point of benchmarks/bench.py. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = build_parser().parse_args(argv)
    if opts.memory_child:
        _memory_child(opts.memory_child)
        return 0
    if opts.shapes is None and opts.sweep:
        opts.shapes = []        # --sweep alone: no shape table
    finish_options(opts)
    opts.reference = not opts.no_reference
    opts.reference_shapes = opts.reference_shapes or list(opts.shapes)
    if opts.sweep_plot and not opts.sweep:
        raise SystemExit("--sweep-plot needs --sweep")
    if opts.plot and not opts.shapes:
        raise SystemExit("--plot needs the shape table: pass --shapes with --sweep")
    if opts.plot or opts.sweep_plot:
        _figure(1, 1)           # fail now, not after the run, when matplotlib is missing

    result = run(opts)
    print(render(result))
    status = 0 if _checks_passed(result) else 1
    result["plots"] = {}
    for name, path, plot in (("ratio", opts.plot, plot_ratios), ("sweep", opts.sweep_plot, plot_sweep)):
        if path:
            result["plots"][name] = plot(result, path)
            print("Wrote %s (%d x %d px)\n" % (path, result["plots"][name]["width_px"],
                                               result["plots"][name]["height_px"]))

    if opts.coretype_unset:
        if os.environ.get(CORETYPE) is None:
            result["coretype_unset"] = {"skipped": "%s is not set in this environment: the run above is "
                                                   "already the unset case" % CORETYPE}
            print("%s is not set: no second run needed.\n" % CORETYPE)
        else:
            print("Running again with %s unset ...\n" % CORETYPE, file=sys.stderr, flush=True)
            other = _run_without_coretype(argv)
            result["coretype_unset"] = other
            if "rows" in other:
                print(render(other, "Same benchmark with %s unset" % CORETYPE))
                print(render_coretype_comparison(result, other))
                print()
                if not _checks_passed(other):
                    status = 1
            else:
                print("The run without %s failed: %s\n" % (CORETYPE, other["error"]))
                status = 1

    if opts.json:
        write_json(opts.json, result)
    return status


def _checks_passed(result):
    """No row (of the table or the sweep) FAILed or raised an ERROR."""
    rows = result["rows"] + ((result.get("sweep") or {}).get("rows") or [])
    return all(r["check"]["status"] == "ok" for r in rows)




if __name__ == "__main__":
    sys.exit(main())
