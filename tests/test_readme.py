"""README promises that CI checks: the test command in README.md is exactly the one .ci/run runs."""
import pathlib
import re

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


def test_readme_python_examples_run():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
