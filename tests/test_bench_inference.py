"""benchmarks/bench_inference.py --quick writes valid JSON (speed targets live in the benchmark, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_inference_benchmark_writes_valid_json(tmp_path):
    out = tmp_path / "inference.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_inference.py"), "--quick", "--threads",
                           "1", "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["cpu"]["model_name"] and result["threads"] == 1 and result["quick"] is True
    [model] = result["models"].values()
    engines = {r["engine"] for r in model["rows"]}
    assert {"torch-fp32", "onnxruntime-fp32", "onnxruntime-int8"} <= engines
    assert all(r["images_per_sec"] > 0 and r["ratio_to_torch_fp32"] is not None for r in model["rows"])
    assert "| model | engine |" in done.stdout
