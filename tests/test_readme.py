"""The README and docs/ stay true to the code: CI runs the README's test command, the parameter
tables in docs/parameters.md are what the scripts' blocks generate, and every relative link
points at a file that exists."""
import glob
import os
import re
import sys

import pytest

from roilib.cli import read_block

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["Train.py", "EvaluateAccuracy.py", "RunPrediction.py", "App.py", "Export.py", "LabelMasks.py",
           "Ablation.py", "Benchmark.py"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def readme_params():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import readme_params as module
    finally:
        sys.path.pop(0)
    return module


def test_ci_runs_the_readme_test_commands():
    """CI runs the README's test command, then the slow tests it leaves out, both verbatim."""
    ci_commands = [line.strip() for line in read(".ci/run").splitlines()
                   if "pytest" in line and not line.startswith("#")]
    assert ci_commands == ["python3 -m pytest -q", "python3 -m pytest -q -m slow"]
    setup = read("README.md").split("## Set-up", 1)[1].split("##", 1)[0]
    tests = read("README.md").split("## Tests", 1)[1].split("##", 1)[0]
    assert ci_commands[0] in setup and all(command in tests for command in ci_commands)


@pytest.mark.parametrize("script", SCRIPTS)
def test_parameters_doc_lists_every_parameter(script):
    doc = read("docs/parameters.md").split(f"## {script}\n", 1)
    assert len(doc) == 2, f"docs/parameters.md has no '## {script}' section"
    section = doc[1].split("\n## ", 1)[0]
    for name, _ in read_block(os.path.join(ROOT, script)):
        assert f"| `{name}` |" in section, f"{script}: {name} missing from docs/parameters.md"


def test_parameters_doc_is_what_the_tool_generates():
    text = read(readme_params().PARAMETERS_DOC)
    assert readme_params().regenerate(text) == text, "run python tools/readme_params.py"


def test_regenerate_replaces_a_stale_table():
    stale = "# P\n\n## Export.py\n\n| parameter | default | meaning |\n|---|---|---|\n| `OLD` | `1` | x |\n\nend\n"
    fresh = readme_params().regenerate(stale)
    assert "`OLD`" not in fresh and "| `OPSET` | `18` |" in fresh and fresh.endswith("\nend\n")


def test_readme_fits_and_links_resolve():
    assert len(read("README.md").splitlines()) <= 300
    pages = ["README.md"] + [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))]
    assert len(pages) >= 5
    for page in pages:
        for target in LINK.findall(read(page)):
            if "://" in target:
                continue
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))
            assert os.path.exists(path), f"{page}: link to {target} points at nothing"


ONNX_NAME = re.compile(r"[\w<>/-]+\.onnx\b")


def test_docs_name_the_onnx_file_as_export_writes_it():
    """Every .onnx file the README and docs name is Export's default for a checkpoint they
    name (best.pt -> best.onnx), or the rule itself, `<checkpoint>.onnx`."""
    from Export import default_out
    pages = ["README.md"] + [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))]
    named = 0
    for page in pages:
        text = read(page)
        for name in set(ONNX_NAME.findall(text)) - {"<checkpoint>.onnx"}:
            checkpoint = name[:-len(".onnx")] + ".pt"
            assert default_out(checkpoint, "onnx") == name, f"{page}: {name}"
            assert os.path.basename(checkpoint) in text, f"{page}: {name}, but no {checkpoint} named"
            named += 1
    assert named >= 2
