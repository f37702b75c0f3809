"""Regenerate the parameter tables of docs/parameters.md from the scripts' parameter blocks.

    python tools/readme_params.py          # rewrites docs/parameters.md in place

Each `## <Script>.py` heading is followed by a table of the script's block: name, default,
comment. tests/test_readme.py checks that the file is what this tool writes.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from roilib.cli import ASSIGNMENT, read_block  # noqa: E402
from roilib.paths import REPO  # noqa: E402

HEADING = re.compile(r"^## (\w+\.py)$")
PARAMETERS_DOC = os.path.join("docs", "parameters.md")


def table(script):
    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    for name, line in read_block(os.path.join(REPO, script)):
        match = ASSIGNMENT.match(line)
        default, comment = match.group(2), (match.group(3) or "").replace("|", "/")
        rows.append(f"| `{name}` | `{default}` | {comment} |")
    return rows


def regenerate(text):
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        out.append(lines[i])
        match = HEADING.match(lines[i])
        i += 1
        if not match:
            continue
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("|")):
            i += 1                                               # the old table and its blank lines
        out += ["", *table(match.group(1)), ""]
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    path = os.path.join(REPO, PARAMETERS_DOC)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(regenerate(text))
    print(f"regenerated the parameter tables in {path}")
