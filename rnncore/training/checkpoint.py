"""Checkpoints: a .npz of named arrays plus JSON metadata, loadable without executing code.

Layout of the file (a plain numpy .npz, members stored uncompressed; ``np.load`` reads it too):

    "__meta__"     0-d unicode array: JSON object, {"format": "rnncore-checkpoint", "version": 1,
                   "checksum": "sha256:...", ...caller's metadata}
    <any name>     the caller's arrays: float32/float64 (finite) or int32/int64, little-endian

The checksum is a SHA-256 over every array (name, dtype, shape, bytes, in sorted name order) and over
the metadata itself (canonical JSON without the checksum), so a file whose bytes were damaged, or
whose arrays or metadata were edited by mistake, is refused with CheckpointError. It is not a
signature: anyone can recompute it, so it detects damage, not tampering. The loader is therefore
strict on its own, and refuses cheaply, before reading any array data:
  * any member compressed, or whose declared size disagrees with its array header, or more data
    declared than the file holds (a zip bomb costs nothing: nothing is inflated);
  * metadata larger than MAX_META_BYTES or nested deeper than MAX_META_DEPTH (checked before parsing);
  * arrays of another dtype (complex, bool, strings, dates, structured, big-endian), or floats that
    are NaN or infinite;
and it hashes each array as it streams it into place (no second copy). Every failure of `load`
raises CheckpointError.

Writes are atomic: the file is written to a temporary file ``.NAME.PID.XXXXXXXX.tmp`` in the same
directory (NAME shortened if needed so that the temporary name fits the file-name limit), flushed and
fsync'ed, then moved over the destination with os.replace. An interrupted or failed save leaves the
previous checkpoint untouched; SIGTERM during a save (in the main thread) removes the temporary and
then terminates as SIGTERM would; temporaries left by a killed process are removed by the next save of
the same checkpoint. The file gets the permissions the umask gives a new file (0644 under umask 022).
"""
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import tempfile
import threading
import zipfile

import numpy as np

__all__ = ["CheckpointError", "save", "load", "checksum", "FORMAT", "VERSION"]

FORMAT = "rnncore-checkpoint"
VERSION = 1
META_KEY = "__meta__"
ARRAY_DTYPES = frozenset(np.dtype(t) for t in ("<f4", "<f8", "<i4", "<i8"))
MAX_META_BYTES = 16 << 20     # the metadata member (JSON as UTF-32 in the .npy)
MAX_META_DEPTH = 64           # nesting of JSON objects and lists in the metadata
MAX_ARRAYS = 100_000
_CHUNK = 1 << 20              # bytes read (and hashed) at a time


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
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    for name, a in arrays.items():
        if name == META_KEY:
            raise ValueError(f"array name {META_KEY!r} is reserved")
        if a.dtype.hasobject or a.dtype.newbyteorder("<") not in ARRAY_DTYPES:
            raise TypeError(f"array {name!r}: expected a numeric dtype (float32, float64, int32 or "
                            f"int64), got {a.dtype}")
        arrays[name] = a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"array {name!r}: has NaN or infinite values (a checkpoint holds finite numbers)")
    meta = {"format": FORMAT, "version": VERSION, **(metadata or {})}
    meta.pop("checksum", None)
    meta["checksum"] = checksum(arrays, meta)
    meta_json = json.dumps(meta, sort_keys=True)  # fails here, before any file is touched

    directory = os.path.dirname(os.path.abspath(path))
    stem = _temp_stem(os.path.basename(path))
    _remove_stale_temporaries(directory, stem)
    with _cleanup_on_sigterm() as temporary:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{stem}{os.getpid()}.", suffix=".tmp")
        temporary.append(tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **{META_KEY: np.array(meta_json)}, **arrays)
                f.flush()
                os.fchmod(f.fileno(), 0o666 & ~_umask())
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
    _fsync_dir(directory)
    return path


_NAME_MAX = 255          # bytes in a file name (Linux, macOS, Windows' NTFS)


def _temp_stem(base):
    """'.NAME.' with NAME cut (at a character boundary) so that '.NAME.PID.XXXXXXXX.tmp' fits."""
    room = _NAME_MAX - len(f"..{os.getpid()}.XXXXXXXX.tmp")
    name = os.fsencode(base)[:room].decode(errors="ignore") if len(os.fsencode(base)) > room else base
    return f".{name}."


def _remove_stale_temporaries(directory, stem):
    """Remove this checkpoint's temporaries whose writer is gone (killed during a save): those
    named with a process id that no longer runs here, and those of earlier rnncore (no id)."""
    pattern = re.compile(re.escape(stem) + r"(?:(\d+)\.)?[A-Za-z0-9_]{8}\.tmp")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m and (m.group(1) is None or not _process_alive(int(m.group(1)))):
            _unlink(os.path.join(directory, name))


def _process_alive(pid):
    if pid == os.getpid():
        return True      # this process's own save in another thread
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True      # someone else's process, or cannot tell: leave its file
    return True


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _umask():
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _Terminated(BaseException):
    pass


@contextlib.contextmanager
def _cleanup_on_sigterm():
    """While a save runs in the main thread, SIGTERM raises inside it (so that its temporary is
    removed), then the signal is delivered again to the handler that was there before."""
    temporary = []
    if threading.current_thread() is not threading.main_thread():
        yield temporary
        return

    def _raise(signum, frame):
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except (ValueError, OSError):        # no signals here (e.g. an embedded interpreter)
        yield temporary
        return
    try:
        yield temporary
    except _Terminated:
        for tmp in temporary:
            _unlink(tmp)
        signal.signal(signal.SIGTERM, previous)
        os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt("terminated (SIGTERM) during a checkpoint save") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


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
        with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
            return _read(path, zf, os.fstat(f.fileno()).st_size)
    except CheckpointError:
        raise
    except Exception:  # a damaged zip can raise nearly anything (BadZipFile, NotImplementedError, zlib.error, ...)
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupted, or not a .npz file)") from None


def _read(path, zf, file_size):
    """Members' declared sizes first, then the metadata, then each array streamed and hashed."""
    infos = zf.infolist()
    if len(infos) > MAX_ARRAYS:
        raise CheckpointError(f"{path}: {len(infos)} members, more than the {MAX_ARRAYS} a checkpoint may hold")
    members = {}
    for info in infos:
        name = info.filename[:-4] if info.filename.endswith(".npy") else None
        if name is None or name in members:
            raise CheckpointError(f"{path}: not an rnncore checkpoint (member {info.filename!r})")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise CheckpointError(f"{path}: member {info.filename!r} is compressed (rnncore writes "
                                  f"checkpoints uncompressed); refused before inflating it")
        members[name] = info
    if sum(i.file_size for i in infos) > file_size:
        raise CheckpointError(f"{path}: its members declare more data than the file holds")
    if META_KEY not in members:
        raise CheckpointError(f"{path}: not an rnncore checkpoint (no metadata)")
    meta = _read_meta(path, zf, members.pop(META_KEY))
    stored = meta.pop("checksum", None)
    h = hashlib.sha256()
    arrays = {name: _read_array(path, zf, members[name], name, h) for name in sorted(members)}
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    if stored != "sha256:" + h.hexdigest():
        raise CheckpointError(f"{path}: corrupted checkpoint (checksum mismatch)")
    return arrays, meta


def _read_meta(path, zf, info):
    if info.file_size > MAX_META_BYTES:
        raise CheckpointError(f"{path}: metadata of {info.file_size} bytes, more than the "
                              f"{MAX_META_BYTES} allowed")
    with zf.open(info) as fp:
        a = np.lib.format.read_array(io.BytesIO(fp.read(MAX_META_BYTES + 1)), allow_pickle=False)
    if a.dtype.kind != "U" or a.shape != ():
        raise CheckpointError(f"{path}: not an rnncore checkpoint (metadata is not a string)")
    text = str(a[()])
    if _json_depth(text) > MAX_META_DEPTH:
        raise CheckpointError(f"{path}: metadata nested more than {MAX_META_DEPTH} levels deep")
    try:
        meta = json.loads(text)
    except ValueError:
        raise CheckpointError(f"{path}: corrupted checkpoint (metadata is not valid JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an rnncore checkpoint (format {meta.get('format')!r})"
                              if isinstance(meta, dict) else f"{path}: not an rnncore checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')!r}, this rnncore reads {VERSION}")
    return meta


def _json_depth(text):
    """The deepest nesting of [ and { in a JSON text, strings skipped (numpy: no Python loop)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    step = (np.isin(codes, (ord("["), ord("{"))).astype(np.int64)
            - np.isin(codes, (ord("]"), ord("}"))))
    return int(np.cumsum(step).max(initial=0))


def _read_array(path, zf, info, name, h):
    """One array, read straight into place and hashed (h) as it streams; its header is checked
    against the member's declared size before any data is read."""
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise CheckpointError(f"{path}: array {name!r}: unsupported .npy version {version}")
        shape, fortran, dtype = reader(fp, max_header_size=10000)
        if dtype not in ARRAY_DTYPES:
            raise CheckpointError(f"{path}: array {name!r} is {dtype}; a checkpoint holds only "
                                  f"float32/float64 (and int32/int64) arrays")
        count = 1
        for n in shape:
            count *= n
        nbytes = count * dtype.itemsize
        if nbytes != info.file_size - fp.tell():
            raise CheckpointError(f"{path}: array {name!r}: its header declares {nbytes} bytes, the "
                                  f"file {info.file_size - fp.tell()}")
        a = np.empty(shape[::-1] if fortran else shape, dtype)
        buf = memoryview(a.reshape(-1)).cast("B")
        hashed = not fortran                   # a Fortran-ordered array is hashed in C order after
        if hashed:
            h.update(json.dumps([name, dtype.str, list(shape)]).encode())
        for start in range(0, nbytes, _CHUNK):
            piece = buf[start:start + _CHUNK]
            if fp.readinto(piece) != len(piece):
                raise CheckpointError(f"{path}: array {name!r} is truncated")
            if hashed:
                h.update(piece)
    if fortran:
        a = np.ascontiguousarray(a.T)
        h.update(json.dumps([name, dtype.str, list(shape)]).encode())
        h.update(a.tobytes())
    if dtype.kind == "f" and not np.isfinite(a).all():
        raise CheckpointError(f"{path}: array {name!r} holds NaN or infinite values")
    return a
