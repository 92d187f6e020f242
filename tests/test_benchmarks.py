"""The benchmarks run (quick mode: every path, tiny sizes); they print figures, assert none."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_batch_throughput_quick_runs_every_way():
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "batch_throughput.py"), "--quick"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for way in ("colorjob batch (auto, mirror)", "colorjob batch (auto, shards)", "colorjob batch (ray, mirror)", "good plain loop", "naive loop", "model alone", "a full forward per pair", "PNG encode", "WebDataset tar", "Parquet (image bytes)"):  # fmt: skip
        assert way in r.stdout, r.stdout
