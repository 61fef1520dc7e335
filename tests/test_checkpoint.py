"""Checkpoint files: round trip, no pickle, corruption refused, atomic writes."""
import json
import os
import zipfile

import numpy as np
import pytest

from rnncore.training import checkpoint
from rnncore.training.checkpoint import CheckpointError


def sample_arrays(rng):
    return {"model/w": rng.standard_normal((3, 4)).astype(np.float32),
            "model/b": rng.standard_normal(4),
            "ids": np.arange(5, dtype=np.int64),
            "scalar": np.array(2.5)}


def test_round_trip(tmp_path, rng):
    arrays = sample_arrays(rng)
    meta = {"model": {"cell": "lstm", "hidden_size": 8}, "step": 7, "vocab": ["a", "\n", "é"],
            "rng": {"state": {"state": 2 ** 100 + 3, "inc": 12345}}, "best": 1.25}
    path = tmp_path / "c.npz"
    checkpoint.save(path, arrays, meta)
    got, got_meta = checkpoint.load(path)
    assert set(got) == set(arrays)
    for k in arrays:
        assert got[k].dtype == arrays[k].dtype
        np.testing.assert_array_equal(got[k], arrays[k])
    for k, v in meta.items():
        assert got_meta[k] == v
    assert got_meta["format"] == checkpoint.FORMAT


def test_file_is_a_plain_npz_without_pickles(tmp_path, rng):
    path = tmp_path / "c.npz"
    checkpoint.save(path, sample_arrays(rng), {"x": 1})
    with np.load(path, allow_pickle=False) as npz:  # loads without executing code
        meta = json.loads(str(npz["__meta__"][()]))
        assert meta["checksum"].startswith("sha256:")
        assert npz["model/w"].shape == (3, 4)
    with pytest.raises(TypeError, match="numeric dtype"):
        checkpoint.save(tmp_path / "o.npz", {"o": np.array([{"a": 1}], dtype=object)})


def _rewrite_member(path, name, data):
    """Copy the zip with one member's bytes replaced (a well-formed zip, wrong content)."""
    tmp = str(path) + ".edit"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, data if item.filename == name else zin.read(item.filename))
    os.replace(tmp, path)


def test_edited_array_is_refused_by_the_checksum(tmp_path, rng):
    path = tmp_path / "c.npz"
    arrays = sample_arrays(rng)
    checkpoint.save(path, arrays, {"x": 1})
    edited = arrays["model/w"].copy()
    edited[0, 0] += 1
    import io
    buf = io.BytesIO()
    np.save(buf, edited)
    _rewrite_member(path, "model/w.npy", buf.getvalue())
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(path)


def test_edited_metadata_is_refused_by_the_checksum(tmp_path, rng):
    path = tmp_path / "c.npz"
    checkpoint.save(path, sample_arrays(rng), {"step": 1})
    with np.load(path) as npz:
        meta = json.loads(str(npz["__meta__"][()]))
    meta["step"] = 2
    import io
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(meta)))
    _rewrite_member(path, "__meta__.npy", buf.getvalue())
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(path)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_damaged_file_is_refused(tmp_path, rng, damage):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": rng.standard_normal(2000)}, {"x": 1})
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"this is not a checkpoint\n" * 10)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        checkpoint.load(path)


def test_other_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "missing.npz")
    with pytest.raises(CheckpointError, match="directory"):
        checkpoint.load(tmp_path)
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="no metadata"):
        checkpoint.load(tmp_path / "plain.npz")
    np.save(tmp_path / "bare.npy", np.zeros(3))
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path / "bare.npy")


class Boom(Exception):
    pass


def test_failed_save_leaves_the_old_checkpoint_intact(tmp_path, rng, monkeypatch):
    path = tmp_path / "c.npz"
    old = {"w": np.arange(10.0)}
    checkpoint.save(path, old, {"step": 1})
    before = path.read_bytes()

    real_savez = np.savez

    def savez_then_fail(f, **arrays):
        real_savez(f, **arrays)   # the temporary file is fully written...
        f.write(b"partial")
        raise Boom("disk full")   # ...and the save fails before the rename

    monkeypatch.setattr(checkpoint.np, "savez", savez_then_fail)
    with pytest.raises(Boom):
        checkpoint.save(path, {"w": np.zeros(10)}, {"step": 2})
    monkeypatch.undo()

    assert path.read_bytes() == before
    arrays, meta = checkpoint.load(path)
    np.testing.assert_array_equal(arrays["w"], old["w"])
    assert meta["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]  # no temporary file left behind


def test_failure_at_fsync_or_rename_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.ones(3)}, {"step": 1})
    before = path.read_bytes()
    for target in ("fsync", "replace"):
        def fail(*a, **k):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(checkpoint.os, target, fail)
        with pytest.raises(OSError):
            checkpoint.save(path, {"w": np.zeros(3)}, {"step": 2})
        monkeypatch.undo()
        assert path.read_bytes() == before
        assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_unserializable_metadata_fails_before_touching_the_file(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.ones(3)}, {"step": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        checkpoint.save(path, {"w": np.ones(3)}, {"step": object()})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]
