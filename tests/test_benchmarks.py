"""The benchmarks run (quick mode: every path, tiny sizes); they print figures, assert none.
What they compute from measurements is checked on made-up measurements."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _reports(finals: dict, epochs: int = 4) -> pd.DataFrame:
    """Reports of trials whose val L1 falls linearly from 1 to ``finals[trial]``."""
    rows = [
        {"trial_id": t, "epoch": e, "val_l1": 1 - (1 - f) * e / epochs, "reported_at": e * 10 + i}
        for i, (t, f) in enumerate(finals.items())
        for e in range(1, epochs + 1)
    ]
    return pd.DataFrame(rows)


def test_the_search_benchmark_counts_trial_epochs_and_rank_correlation():
    from tune_search import in_order, rank_correlation

    finals = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    reports = _reports(finals)
    ordered = in_order([reports[reports["trial_id"] == t] for t in finals])
    assert list(ordered["spent"]) == list(range(1, 17))  # one trial-epoch a report, in time order
    assert list(ordered["best_so_far"]) == sorted(ordered["best_so_far"], reverse=True)
    assert ordered["best_so_far"].iloc[-1] == pytest.approx(0.1)
    assert list(rank_correlation(reports, 4)) == pytest.approx([1.0] * 3)  # early ranks = final
    # positive control: trials that cross (early leaders finish last) rank at -1 early on
    crossing = reports.copy()
    crossing.loc[crossing["epoch"] < 4, "val_l1"] = 1 - crossing["val_l1"]
    assert rank_correlation(crossing, 4).iloc[0] == pytest.approx(-1.0)


@pytest.mark.slow
def test_batch_throughput_quick_runs_every_way():
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "batch_throughput.py"), "--quick"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for way in ("colorjob batch (auto, mirror)", "colorjob batch (auto, shards)", "colorjob batch (ray, mirror)", "good plain loop", "naive loop", "model alone", "a full forward per pair", "PNG encode", "WebDataset tar", "Parquet (image bytes)"):  # fmt: skip
        assert way in r.stdout, r.stdout
