"""Helpers of the script-level tests (not fixtures: plain functions and constants)."""
import csv
import os
import runpy
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny, fast training configuration (CPU, no workers).
TINY = ["--ARCH=resnet18", "--MIN_SIZE=64", "--MAX_SIZE=96", "--MAX_BATCH=6", "--MAX_PIXELS=40000",
        "--WORKERS=0", "--LOG_EVERY=2", "--WARMUP_STEPS=2"]


def run_script(script, *args, check=True, env=None):
    """Run a top-level script with arguments; fails the test with its output if it fails."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True,
                            text=True, cwd=ROOT, timeout=600, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_in_process(script, args, capsys, monkeypatch):
    """(exit code, captured output) of a script run in this process: quick, since the checks
    under test come before any work."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr()
