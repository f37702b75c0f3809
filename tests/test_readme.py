"""The README stays true to the code: CI runs its test command, and its parameter tables list
every parameter of the scripts."""
import os

import pytest

from roilib.cli import read_block

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    ci_command = [line for line in read(".ci/run").splitlines() if "pytest" in line and not line.startswith("#")]
    assert len(ci_command) == 1
    setup = read("README.md").split("## Set-up", 1)[1].split("##", 1)[0]
    assert ci_command[0].strip() in setup


@pytest.mark.parametrize("script", ["Train.py", "EvaluateAccuracy.py", "RunPrediction.py", "Export.py", "LabelMasks.py"])
def test_readme_lists_every_parameter(script):
    readme = read("README.md")
    for name, _ in read_block(os.path.join(ROOT, script)):
        assert f"`{name}`" in readme, f"{script}: {name} missing from the README's parameter table"
