"""The examples write their PNGs into the clone's one output folder (runs/, which .gitignore covers),
or where --out says, creating it."""
import argparse
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import _common  # noqa: E402


def test_default_output_folder_is_ignored_by_git():
    ap = argparse.ArgumentParser()
    _common.add_common_arguments(ap)
    out = pathlib.Path(ap.parse_args([]).out)
    assert out == ROOT / "runs" / "examples"
    r = subprocess.run(["git", "check-ignore", "-q", str(out / "forecast_elnino.png")], cwd=ROOT)
    assert r.returncode in (0, 128)   # 128: not a git checkout (an sdist): nothing to check


def test_save_figure_creates_the_folder(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    args = argparse.Namespace(out=str(tmp_path / "new" / "folder"))
    path = _common.save_figure(plt.figure(), args, "x.png")
    assert pathlib.Path(path).is_file()
