"""Checkpoints: a .npz of named arrays plus JSON metadata, loadable without executing code.

Layout of the file (a plain numpy .npz, read with ``np.load(path, allow_pickle=False)``):

    "__meta__"     0-d unicode array: JSON object, {"format": "rnncore-checkpoint", "version": 1,
                   "checksum": "sha256:...", ...caller's metadata}
    <any name>     the caller's arrays (numeric dtypes only; object arrays are refused)

The checksum is a SHA-256 over every array (name, dtype, shape, bytes, in sorted name order) and over
the metadata itself (canonical JSON without the checksum), so a file whose bytes were damaged, or
whose arrays or metadata were edited, is refused with CheckpointError.

Writes are atomic: the file is written to a temporary file in the same directory, flushed and
fsync'ed, then moved over the destination with os.replace. An interrupted or failed save leaves the
previous checkpoint untouched.
"""
import hashlib
import json
import os
import tempfile

import numpy as np

__all__ = ["CheckpointError", "save", "load", "checksum", "FORMAT", "VERSION"]

FORMAT = "rnncore-checkpoint"
VERSION = 1
META_KEY = "__meta__"


class CheckpointError(ValueError):
    """The file is not a readable rnncore checkpoint (missing, corrupted, wrong format)."""


def checksum(arrays, metadata):
    """'sha256:<hex>' over the arrays (sorted by name) and the canonical JSON of metadata."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    h.update(json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode())
    return "sha256:" + h.hexdigest()


def save(path, arrays, metadata=None):
    """Write arrays (dict name -> array) and metadata (JSON-serializable dict) to path, atomically."""
    path = os.fspath(path)
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    for name, a in arrays.items():
        if name == META_KEY:
            raise ValueError(f"array name {META_KEY!r} is reserved")
        if a.dtype.hasobject:
            raise TypeError(f"array {name!r}: expected a numeric dtype, got {a.dtype}")
    meta = {"format": FORMAT, "version": VERSION, **(metadata or {})}
    meta.pop("checksum", None)
    meta["checksum"] = checksum(arrays, meta)
    meta_json = json.dumps(meta, sort_keys=True)  # fails here, before any file is touched

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{META_KEY: np.array(meta_json)}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    return path


def _fsync_dir(directory):
    """Make the rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path):
    """Read a checkpoint; returns (arrays dict, metadata dict). Raises CheckpointError if unusable."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint is a directory, not a file: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
        if not hasattr(npz, "files"):
            raise CheckpointError(f"{path}: not an rnncore checkpoint (a bare .npy array, not a .npz)")
        with npz:
            names = list(npz.files)
            if META_KEY not in names:
                raise CheckpointError(f"{path}: not an rnncore checkpoint (no metadata)")
            meta_json = str(npz[META_KEY][()])
            arrays = {name: npz[name] for name in names if name != META_KEY}
    except CheckpointError:
        raise
    except Exception:  # a damaged zip can raise nearly anything (BadZipFile, NotImplementedError, zlib.error, ...)
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupted, or not a .npz file)") from None
    try:
        meta = json.loads(meta_json)
    except ValueError:
        raise CheckpointError(f"{path}: corrupted checkpoint (metadata is not valid JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an rnncore checkpoint (format {meta.get('format')!r})"
                              if isinstance(meta, dict) else f"{path}: not an rnncore checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')!r}, this rnncore reads {VERSION}")
    stored = meta.pop("checksum", None)
    if stored != checksum(arrays, meta):
        raise CheckpointError(f"{path}: corrupted checkpoint (checksum mismatch)")
    return arrays, meta
