"""Searches that learn from early-stopped trials honestly, and Population Based Training."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from colorjob import config as cfgmod
from colorjob.export import read_model_info
from colorjob.tune import TuneConfig, honest_optuna_search
from colorjob.tune import search as run

ROOT = Path(__file__).resolve().parents[1]


def test_trials_stopped_early_reach_optuna_as_pruned_and_finished_ones_as_complete():
    from ray import tune

    searcher = honest_optuna_search(
        10, metric="val_l1", mode="min", space={"lr_g": tune.loguniform(1e-5, 1e-3)}, seed=0
    )
    for tid, epochs in (("a", 10), ("b", 2), ("c", 4)):
        searcher.suggest(tid)
        for epoch in range(1, epochs + 1):
            result = {"val_l1": 1.0 / epoch, "training_iteration": epoch}
            searcher.on_trial_result(tid, result)
        searcher.on_trial_complete(tid, result)
    trials = searcher._ot_study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert trials[0].value == pytest.approx(0.1)
    # Optuna keeps a pruned trial's last intermediate value; TPE ranks it below complete trials
    assert trials[1].value == pytest.approx(0.5) and trials[1].last_step == 2
    assert trials[2].intermediate_values == {e: 1.0 / e for e in range(1, 5)}  # what TPE ranks
    searcher.suggest("d")
    searcher.on_trial_complete("d", None, error=True)
    assert searcher._ot_study.trials[3].state == TrialState.FAIL


def pbt_spec(tmp_path: Path, chars: Path, **kw) -> dict:
    base = {
        "name": "pbt", "storage_path": str(tmp_path / "results"), "num_samples": 4,
        "max_concurrent_trials": 2, "resources": {"cpu": 1}, "searcher": "random", "seed": 3,
        "scheduler": {"pbt": {"perturbation_interval": 2, "quantile_fraction": 0.5, "resample_probability": 0.5}},
        "search": {"lr_g": {"loguniform": [2e-5, 2e-3]}, "lambda_l1": {"loguniform": [5.0, 300.0]}},
        "max_failures": 0,
        "train": {"data": str(chars), "image_size": 32, "ngf": 8, "ndf": 8, "epochs": 4, "batch_size": 8,
                  "val_fraction": 0.25, "checkpoint_every": 2},
    }  # fmt: skip
    return cfgmod.merge(base, kw)


def _reports(exp: Path) -> pd.DataFrame:
    rows = []
    for result in exp.glob("*/result.json"):
        rows += [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
    return pd.DataFrame(rows)


def test_pbt_exploits_from_checkpoints_and_the_best_model_records_its_schedule(
    local_ray, tmp_path, chars
):
    best = run(cfgmod.from_dict(TuneConfig, pbt_spec(tmp_path, chars)))
    exp = tmp_path / "results" / "pbt"
    reports = _reports(exp)
    exploited = reports[reports["parent"].fillna("") != ""]
    assert len(exploited) >= 1, "no trial copied another's checkpoint"
    scratch = reports[reports["epoch"] == 1]["g_l1"].mean()
    for r in exploited.itertuples():  # it continues from the donor's state, not from scratch
        donor = reports[(reports["trial_id"] == r.parent) & (reports["epoch"] == r.epoch - 1)]
        assert r.epoch > 1 and len(donor) == 1
        assert abs(r.g_l1 - donor["g_l1"].item()) < abs(r.g_l1 - scratch)
    table = pd.read_csv(exp / "trials.csv")
    assert len(table) == 4 and (table["epochs"] == 4).all()
    info = read_model_info(best)
    schedule = info["schedule"]
    assert [s["epoch"] for s in schedule] == list(range(1, info["metrics"]["epoch"] + 1))
    assert all(s["tag"] in set(table["trial_id"]) for s in schedule)
    assert {"lr_g", "lambda_l1"} <= set(schedule[0])
    assert (exp / "trials.png").stat().st_size > 0


def test_an_interrupted_pbt_search_resumes(tmp_path, chars):
    spec = pbt_spec(tmp_path, chars, train={"epochs": 4})
    path = tmp_path / "pbt.yaml"
    path.write_text(yaml.safe_dump(spec))
    exp = tmp_path / "results" / "pbt"
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, str(ROOT / "jobs" / "tune.py"), "--config", str(path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = _reports(exp) if exp.exists() else pd.DataFrame()
        if len(done) >= 4:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the search ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = pd.read_csv(exp / "trials.csv")
    assert len(table) == 4 and (table["epochs"] == 4).all()
