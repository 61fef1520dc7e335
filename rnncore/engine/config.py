"""rnncore's one configuration: which code path the compiled core takes, in one place.

Modelled on scikit-learn's ``get_config`` / ``set_config`` / ``config_context``. Nothing else selects
a path: no module global and no environment variable. Every choice gives results that match the
oracles; the paths differ in speed and (for the per-step products) in the last bits.

    step_gemm                 "own": the per-step products on rnncore's own register-blocked GEMM
                              (default); "blas": on BLAS (the reference path, kept tested)
    step_projection           True: the input projection may run inside the time loop, step by step
                              (on the own GEMM); False: always one GEMM before the loop
    step_projection_min_rows  ... for batches of at least this many sequences (8 rows a thread on 2)
    step_projection_max_bytes ... when W_ih and W_hh together fit in this many bytes (each thread
                              reads both every step). Measured, float32, 2 threads, against the GEMM
                              before the loop: S and M 3-16% faster; RNN at L (2 MB) even; LSTM and
                              GRU at L (6-8 MB) 7-12% slower; batch 1 15-19% slower. The choice does
                              not depend on the thread count, so results stay bit-identical across
                              thread counts.
    bptt_checkpoint           None: training keeps every step for backward (full BPTT); "sqrt" or
                              an int k: a layer's forward_train keeps its state every k steps
                              (sqrt(T) for "sqrt") and backward recomputes each segment (the same
                              gradients, bit for bit; memory ~ T/k + k steps; the Trainer's bptt=)
    small_work_flops          a layer call of fewer flops runs on one thread (a fork/join would cost
                              more than it saves, and a team whose threads wait for a descheduled
                              partner can make a tiny call 100x slower)

``with rnncore.config_context(step_gemm="blas"):`` applies to the calling Python thread (blocks nest
and other threads keep theirs); ``set_config`` changes the defaults of every thread.
"""
import contextlib
import threading

from rnncore.engine.validation import check_checkpoint

__all__ = ["get_config", "set_config", "config_context"]

_defaults = {
    "step_gemm": "own",
    "step_projection": True,
    "step_projection_min_rows": 16,
    "step_projection_max_bytes": 2 << 20,
    "small_work_flops": 2e6,
    "bptt_checkpoint": None,
}

_local = threading.local()


def _check(key, value):
    if key not in _defaults:
        raise TypeError(f"unknown rnncore configuration key {key!r}; the keys are {sorted(_defaults)}")
    if key == "step_gemm":
        if value not in ("own", "blas"):
            raise ValueError(f"step_gemm must be 'own' or 'blas', got {value!r}")
    elif key == "bptt_checkpoint":
        check_checkpoint(value, key)
    elif key == "step_projection":
        if not isinstance(value, bool):
            raise TypeError(f"step_projection must be True or False, got {value!r}")
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{key} must be a number >= 0, got {value!r}")
    return value


def get_config():
    """The configuration in effect for the calling thread, as a new dict."""
    overrides = getattr(_local, "overrides", None)
    return dict(_defaults, **overrides) if overrides else dict(_defaults)


def set_config(**changes):
    """Change the defaults of every thread (see the module docstring for the keys)."""
    for k, v in changes.items():
        _check(k, v)
    _defaults.update(changes)


@contextlib.contextmanager
def config_context(**changes):
    """``with config_context(step_gemm="blas"):`` runs the block with these settings, in this
    thread only; the previous ones come back afterwards (blocks nest)."""
    for k, v in changes.items():
        _check(k, v)
    old = getattr(_local, "overrides", None)
    _local.overrides = dict(old or {}, **changes)
    try:
        yield get_config()
    finally:
        _local.overrides = old
