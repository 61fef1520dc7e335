"""README promises that CI checks: the test command in README.md is exactly the one .ci/run runs."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _code_lines(text):
    return [m.strip() for block in re.findall(r"```\n(.*?)```", text, re.S) for m in block.splitlines()]


def test_ci_runs_the_readme_test_command():
    readme = _code_lines((ROOT / "README.md").read_text())
    test_cmd = [line for line in readme if "pytest" in line]
    assert len(test_cmd) == 1, test_cmd
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd[0] in [line.strip() for line in ci if not line.strip().startswith("#")]


def test_readme_install_command_runs_the_main_job():
    readme = _code_lines((ROOT / "README.md").read_text())
    assert "pip install . && rnncore train" in readme


def _python_blocks():
    """(the paragraph just above, the code) of every ```python block of the README."""
    text = (ROOT / "README.md").read_text()
    return [(text[:m.start()].rstrip().split("\n\n")[-1], m.group(1))
            for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


# what a snippet imports -> the extra it needs (pyproject.toml); CI's test extra installs them all,
# so every snippet runs there: none is skipped for a missing package
EXTRAS = {"torch": "rnncore[torch]", "rnncore.estimators": "rnncore[sklearn]", "sklearn": "rnncore[sklearn]",
          "matplotlib": "rnncore[plot]", "mpi4py": "rnncore[mpi]", "dask.distributed": "rnncore[dask]",
          "rnncore.torch": "rnncore[torch]", "rnncore.onnx": "rnncore[onnx]", "onnxruntime": "rnncore[onnx]",
          "rnncore.keras": "rnncore[keras]", "keras": "rnncore[keras]"}


def test_readme_has_python_examples():
    assert len(_python_blocks()) >= 5


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_examples_run(index):
    _, block = _python_blocks()[index]
    exec(compile(block, "README.md", "exec"), {})


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_each_snippet_says_which_extra_it_needs(index):
    above, block = _python_blocks()[index]
    imported = set(re.findall(r"^\s*(?:import|from)\s+([\w.]+)", block, re.M))
    needs = {extra for module, extra in EXTRAS.items() if module in imported}
    for extra in needs:
        assert f"`{extra}`" in above, (extra, above)
    if not needs:
        assert "Needs nothing beyond `pip install .`" in " ".join(above.split()), above
