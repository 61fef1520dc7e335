"""Importing rnncore from a source folder that was never built (the clone's root after `pip install .`)
says what happened and what to do, instead of a misleading circular-import error."""
import os
import shutil
import subprocess
import sys

import rnncore

SOURCE = os.path.dirname(os.path.abspath(rnncore.__file__))


def test_unbuilt_source_folder_explains_itself(tmp_path):
    # a copy of the package's source without its compiled core, imported from its parent folder
    shutil.copytree(SOURCE, tmp_path / "rnncore",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.c", "*.html"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # as after `pip install .`: no editable install's finder to supply the compiled core
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            "import rnncore")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: rnncore is being imported from its source folder"), r.stderr
    assert str(tmp_path / "rnncore") in last
    assert "from another directory" in last and "pip install -e ." in last
    assert "circular import" not in r.stderr
