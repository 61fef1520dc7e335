"""Thread control: one number for rnncore's OpenMP team, and BLAS kept on one thread inside kernels.

rnncore parallelises with its own OpenMP team (over the batch, or over blocks of a large GEMM) and
calls BLAS on one thread inside it. If BLAS's own pool ran too, the two pools would spin-wait for
the same cores (measured: an LSTM forward taking 1 s instead of 30 ms). `blas_single_thread()`
limits BLAS to one thread for the duration of an rnncore call and restores the user's setting after.
"""
import contextlib
import os
import threading

from threadpoolctl import ThreadpoolController

from rnncore.engine.config import get_config

__all__ = ["set_num_threads", "get_num_threads", "threads"]


def _usable_cpus():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# The most threads a kernel runs: asking for more runs this many. Threads beyond the CPUs only
# time-share them (no speed-up), but a few times more stay useful for testing that results do not
# depend on the thread count, hence 4 x the CPUs and at least 64. Far above it OpenMP fails to start
# its team (libgomp aborts near 50,000 threads and 100,000 segfaulted). The compiled kernels clamp
# to the same number (rnncore._kernels.max_threads()).
MAX_THREADS = max(64, 4 * _usable_cpus())


def _default_num_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), MAX_THREADS)
    return _usable_cpus()


_state = {"num_threads": _default_num_threads()}


def check_num_threads(n):
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"number of threads must be an integer, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    return min(n, MAX_THREADS)


# `with threads(n):` overrides the process-wide number for the calling Python thread only, so
# blocks in different Python threads never undo each other's setting.
_local = threading.local()


def set_num_threads(n):
    """Set the process-wide number of threads rnncore's kernels use (OpenMP team; BLAS stays on one
    thread inside them). The default honours OMP_NUM_THREADS, else the CPUs this process may run on.
    A ``with rnncore.threads(n):`` block of the calling thread takes precedence while it runs.

    Any n >= 1 is accepted. More threads than CPUs time-share them (no faster; results stay the
    same bits); n above MAX_THREADS (4 x the CPUs this process may use, at least 64) runs
    MAX_THREADS, and get_num_threads() says so."""
    _state["num_threads"] = check_num_threads(n)


def get_num_threads():
    """The number of threads rnncore's kernels use when called from this Python thread."""
    n = getattr(_local, "num_threads", None)
    return _state["num_threads"] if n is None else n


def threads_for(flops):
    """The thread count for a call of about `flops` operations: one below the configuration's
    small_work_flops (rnncore/engine/config.py)."""
    return 1 if flops < get_config()["small_work_flops"] else get_num_threads()


@contextlib.contextmanager
def threads(n):
    """``with rnncore.threads(n):`` runs rnncore's kernels on n threads inside the block, for calls
    made from this Python thread (other threads keep their own setting). Blocks nest. n is clamped
    to MAX_THREADS as in set_num_threads."""
    n = check_num_threads(n)
    old = getattr(_local, "num_threads", None)
    _local.num_threads = n
    try:
        yield n
    finally:
        _local.num_threads = old


# The BLAS controllers are found once (scanning the loaded libraries costs ~1 ms); scipy's BLAS is
# loaded by then because rnncore._kernels cimports scipy.linalg.cython_blas. Setting their thread
# count directly costs a few microseconds, where threadpoolctl's limit() costs ~20 per call.
_blas_libs = None
_lock = threading.Lock()
_active = [0, []]  # callers inside rnncore; (library, its thread count before) to restore


def _get_blas_libs():
    global _blas_libs
    if _blas_libs is None:
        _blas_libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas_libs


def _set_blas_threads(lib, n):
    # threadpoolctl (>= 3.6) lets only the first Python thread that set a limit change OpenBLAS's
    # process-wide count and silently ignores the others; rnncore's limit must hold whichever Python
    # thread calls it (its own reference count and lock serialise the changes), so it calls the
    # library's setter directly when threadpoolctl exposes it.
    real = getattr(lib, "_real_set_num_threads", None)
    (real or lib.set_num_threads)(n)


def _set_all_blas_threads(n):
    """Every BLAS library on n threads; returns [(library, its count before)] for the ones changed,
    for _restore_blas_threads. The caller holds _lock."""
    saved = []
    for lib in _get_blas_libs():
        old = lib.get_num_threads()
        if old != n:
            _set_blas_threads(lib, n)
            saved.append((lib, old))
    return saved


def _restore_blas_threads(saved):
    for lib, old in saved:
        _set_blas_threads(lib, old)


@contextlib.contextmanager
def blas_single_thread():
    """Keep every BLAS library on one thread while rnncore computes; restore it afterwards.

    Reference-counted so that concurrent rnncore calls from several Python threads share one limit
    and the user's setting comes back when the last one leaves."""
    with _lock:
        if _active[0] == 0:
            _active[1] = _set_all_blas_threads(1)
        _active[0] += 1
    try:
        yield
    finally:
        with _lock:
            _active[0] -= 1
            if _active[0] == 0:
                _restore_blas_threads(_active[1])
                _active[1] = []


@contextlib.contextmanager
def blas_threads(n):
    """Every BLAS library on n threads inside the block, the previous counts restored after (the
    Trainer's blas_threads). Uses the libraries found once, as blas_single_thread does: a
    threadpoolctl.threadpool_limits block scans the process's libraries each time it is entered
    (about 40 ms, measured: 40% of a small estimator's fit)."""
    n = check_num_threads(n)
    with _lock:
        saved = _set_all_blas_threads(n)
    try:
        yield
    finally:
        with _lock:
            _restore_blas_threads(saved)


def blas_single_thread_if_used():
    """blas_single_thread() when a layer's kernels call BLAS, that is on the configuration's "blas"
    path (step_gemm); on rnncore's own GEMM (the default) every product of a layer's forward and
    backward is rnncore's, and reading, setting and restoring the BLAS libraries' thread counts
    (about 5 us a call, 2% of a small layer call) is skipped."""
    return blas_single_thread() if get_config()["step_gemm"] == "blas" else contextlib.nullcontext()

