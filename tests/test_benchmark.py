"""Benchmark.py smoke test: every part runs for a few steps and reports sane figures."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_smoke(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "Benchmark.py"), "--ARCH=resnet18", "--CONFIG_ARCH=",
           "--BATCH=2", "--SIZE=64", "--STEPS=2", "--WARMUP=1", "--EVAL_IMAGES=2", "--EVAL_SIZE=64x96",
           "--WORKERS=0", "--DEVICE=cpu", f"--OUT={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "cpu.json").read_text())
    parts = {r["part"] for r in result["rows"]}
    assert parts == {"a", "b", "c", "d", "e"}
    for r in result["rows"]:
        assert r["value"] > 0, r
    ratio = next(r for r in result["rows"] if "time(stem) / time(plain)" in r["what"])["value"]
    assert 0.5 < ratio < 2.0
    assert "| c |" in (tmp_path / "cpu.md").read_text()
