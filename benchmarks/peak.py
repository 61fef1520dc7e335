"""The FP32 peak of this machine: GFLOP/s of independent vector FMAs (fma_peak.c) on n threads.

fma_peak.c is compiled on first use with the system C compiler (`cc`, or $CC) at -O2 -march=native,
with -fopenmp when the compiler accepts it, into a shared library cached under the temporary
directory (keyed by the source's and the flags' hash), and called through ctypes. This is a probe of
the machine for benchmarks/, not part of rnncore.

    python benchmarks/peak.py [--threads 1,2] [--seconds 0.2]
"""
import argparse
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fma_peak.c")
FLAGS = ["-O2", "-march=native", "-shared", "-fPIC"]
_LIB = {}


def _compile(cc, flags, out):
    proc = subprocess.run([cc] + flags + [SOURCE, "-o", out], capture_output=True, text=True)
    return proc.returncode == 0, proc.stderr


def load():
    """The compiled probe (ctypes.CDLL), built once per source and flags; RuntimeError without a compiler."""
    if "lib" in _LIB:
        return _LIB["lib"]
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc) to build %s" % SOURCE)
    with open(SOURCE, "rb") as f:
        key = hashlib.sha256(f.read() + " ".join([cc] + FLAGS).encode()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), "rnncore-bench-%d" % os.getuid() if hasattr(os, "getuid")
                         else "rnncore-bench")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, "fma_peak-%s.so" % key)
    if not os.path.exists(path):
        tmp = path + ".%d.tmp" % os.getpid()       # renamed into place: concurrent runs never load half a file
        ok, err = _compile(cc, FLAGS + ["-fopenmp"], tmp)
        if not ok:                                  # e.g. Apple clang: no OpenMP, one thread only
            ok, err = _compile(cc, FLAGS, tmp)
        if not ok:
            raise RuntimeError("could not compile %s: %s" % (SOURCE, err.strip().splitlines()[-1:] or err))
        os.replace(tmp, path)
    lib = ctypes.CDLL(path)
    lib.fma_run.argtypes, lib.fma_run.restype = [ctypes.c_long, ctypes.c_int], ctypes.c_double
    lib.fma_width.restype = lib.fma_openmp.restype = ctypes.c_int
    _LIB["lib"] = lib
    return lib


def info():
    """{'vector_floats', 'openmp'} of the compiled probe."""
    lib = load()
    return {"vector_floats": lib.fma_width(), "openmp": bool(lib.fma_openmp())}


def fma_peak_gflops(threads=1, seconds=0.2):
    """FP32 GFLOP/s of independent vector FMAs on `threads` threads: the best of 5 runs of about
    seconds / 5 each (the best, because a run only ever loses time, to other processes or the host)."""
    lib = load()
    if threads > 1 and not lib.fma_openmp():
        raise RuntimeError("the probe was built without OpenMP: it runs on one thread only")
    iters = 100000
    t = time.perf_counter()
    lib.fma_run(iters, 1)
    t = time.perf_counter() - t
    iters = max(1000, int(iters * seconds / 5 / max(t, 1e-6)))
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        done = lib.fma_run(iters, threads)          # ctypes releases the GIL around the call
        best = max(best, done / (time.perf_counter() - t) / 1e9)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description="FP32 peak: GFLOP/s of independent vector FMAs")
    p.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    p.add_argument("--seconds", type=float, default=0.2)
    opts = p.parse_args(argv)
    print("vector of %(vector_floats)d floats, OpenMP %(openmp)s" % info())
    for n in (int(v) for v in opts.threads.split(",")):
        print("%d thread%s: %.1f GFLOP/s" % (n, "" if n == 1 else "s", fma_peak_gflops(n, opts.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
