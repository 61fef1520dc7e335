"""Input checks for rnncore's public entry points: every message says what was expected and what was got.

Checks live here, at the Python boundary; the compiled kernels below trust their arguments.
"""
import numbers
import sys

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_int(value, name, minimum=None, maximum=None):
    """An integer (not a bool) in [minimum, maximum]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_float_dtype(dtype, name="dtype"):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be numpy.float32 or numpy.float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be numpy.float32 or numpy.float64, got {dt}")
    return dt


def _to_numpy(value):
    # torch tensors (and other array-likes with .detach()) convert without importing torch
    if hasattr(value, "detach") and hasattr(value, "cpu") and callable(value.detach):
        value = value.detach().cpu().numpy()
    return value


def check_cpu_float_tensor(t, name):
    """A torch tensor on the CPU of dtype float32 or float64 (for rnncore.torch; torch is not imported:
    a tensor implies it is loaded)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"rnncore runs on the CPU: {name} is on {t.device}; move it with .cpu() "
                         f"(or keep torch.nn's module for {t.device})")
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"rnncore computes in float32 or float64: {name} has dtype {t.dtype}")
    return t


def as_float_array(value, name, dtype, shape_doc):
    """Convert array-likes (nested lists, strided, Fortran-ordered, other float or int dtypes) to a
    C-contiguous array of `dtype`; refuse non-numeric data with a TypeError."""
    value = _to_numpy(value)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} must be an array {shape_doc}; could not convert it: {exc}") from None
    if arr.dtype == object:
        raise ValueError(f"{name} must be a rectangular array {shape_doc} of numbers, got ragged or "
                         f"non-numeric data")
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
        raise TypeError(f"{name} must hold real numbers {shape_doc}, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def check_shape(arr, name, expected, doc):
    """`expected` is a tuple of ints (or None for any)."""
    ok = arr.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, arr.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {want} {doc}, got shape {tuple(arr.shape)}")
    return arr


def check_lengths(lengths, T, B, name="lengths", minimum=1, dtype=np.int32):
    """lengths: B integers in [minimum, T], any order -> C-contiguous array of dtype (int32 for the
    kernels). minimum=0 allows empty sequences (a mask over padding)."""
    lengths = _to_numpy(lengths)
    try:
        arr = np.asarray(lengths)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} must be a 1-D array of {B} integers, could not convert: {exc}") from None
    if arr.dtype == object or arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"{name} must have shape ({B},), one length per sequence, got shape {arr.shape}")
    if B and (arr.min() < minimum or arr.max() > T):
        raise ValueError(f"{name} must be between {minimum} and T={T}, got values from {arr.min()} "
                         f"to {arr.max()}")
    return np.ascontiguousarray(arr, dtype=dtype)


def check_checkpoint(checkpoint, name="checkpoint"):
    """A BPTT checkpoint setting: None (keep every step), "sqrt", or an int k >= 1 (keep the state
    every k steps). Returned as given (resolved against T by checkpoint_steps)."""
    if checkpoint is None or (isinstance(checkpoint, str) and checkpoint == "sqrt"):
        return checkpoint
    if isinstance(checkpoint, (bool, np.bool_)) or not isinstance(checkpoint, (int, np.integer)):
        raise TypeError(f"{name} must be None, 'sqrt' or an int >= 1 (steps between kept states), got "
                        f"{checkpoint!r}")
    if checkpoint < 1:
        raise ValueError(f"{name} must be None, 'sqrt' or an int >= 1, got {checkpoint}")
    return int(checkpoint)


def checkpoint_steps(checkpoint, T):
    """The segment length for T steps: None when every step is kept (no checkpoint, or k >= T)."""
    if checkpoint is None:
        return None
    k = max(1, int(np.ceil(np.sqrt(T)))) if checkpoint == "sqrt" else checkpoint
    return k if k < T else None


def check_ids(ids, num_classes, name, what="token ids", ndim=None, doc="", where=None):
    """Integer ids in [0, num_classes) -> int64 array. ndim: the number of dims expected (None: any);
    doc: the expected layout, for messages; where: a boolean mask of the ids that must be in range
    (padding may hold anything)."""
    arr = np.asarray(_to_numpy(ids))
    layout = f" {doc}" if doc else ""
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer {what}{layout}, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dims{layout}, got shape {arr.shape}")
    checked = arr if where is None else arr[where]
    if checked.size and (checked.min() < 0 or checked.max() >= num_classes):
        raise ValueError(f"{name}: expected {what} in [0, {num_classes}), got min {checked.min()}, "
                         f"max {checked.max()}")
    return arr.astype(np.int64, copy=False)


def check_choice(value, name, choices):
    """ValueError unless value is one of choices (a tuple, or a dict's keys: listed sorted)."""
    if value not in choices:
        shown = sorted(choices) if isinstance(choices, dict) else choices
        raise ValueError(f"{name}: expected one of {shown}, got {value!r}")
    return value

REDUCTIONS = ("mean", "sum")


def check_reduction(reduction):
    """How a loss sums over its targets: "mean" (divided by their count) or "sum"."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    return reduction
