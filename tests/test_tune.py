"""The search on a real local Ray (2 CPUs), tiny trials (32 px, narrow nets, 3 epochs)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from colorjob import config as cfgmod
from colorjob.data import PairDataset
from colorjob.export import load_generator
from colorjob.tune import TuneConfig, search_space
from colorjob.tune import search as run

ROOT = Path(__file__).resolve().parents[1]


def tiny(tmp_path, chars, **kw) -> dict:
    base = {
        "name": "tiny",
        "storage_path": str(tmp_path / "results"),
        "num_samples": 4,
        "max_concurrent_trials": 2,
        "resources": {"cpu": 1, "gpu": 0},
        "scheduler": {"asha": True, "grace_period": 1, "reduction_factor": 2},
        "max_failures": 0,
        "train": {
            "data": str(chars),
            "image_size": 32,
            "ngf": 8,
            "ndf": 8,
            "epochs": 3,
            "batch_size": 8,
            "val_fraction": 0.25,
        },
    }
    return cfgmod.merge(base, kw)


@pytest.mark.slow
def test_search_finishes_params_differ_asha_stops_and_best_colours(local_ray, tmp_path, chars):
    cfg = cfgmod.from_dict(TuneConfig, tiny(tmp_path, chars))
    best = run(cfg)
    exp = tmp_path / "results" / "tiny"
    table = pd.read_csv(exp / "trials.csv")
    assert len(table) == 4 and set(table["status"]) <= {"completed", "stopped early"}
    assert {
        "trial_id",
        "lr_g",
        "lr_d",
        "lambda_l1",
        "lambda_adv",
        "val_l1",
        "val_fidelity",
        "epochs",
        "status",
    } <= set(table.columns)
    assert (
        table[["lr_g", "lr_d", "lambda_l1"]].drop_duplicates().shape[0] == 4
    )  # every trial its own point
    assert (
        (table["lr_g"] == 2e-4) & (table["lambda_l1"] == 100.0)
    ).any()  # the seed's defaults first
    assert (table["status"] == "stopped early").sum() >= 1 and (table["epochs"] < 3).any()
    assert (exp / "trials.png").stat().st_size > 0
    assert best == exp / "best"
    g, vocab, meta = load_generator(best)
    assert meta["metrics"]["val_l1"] == pytest.approx(table["val_l1"].min(), rel=1e-6)
    ds = PairDataset(chars, 32)
    x = torch.cat([ds[0]["sketch"][None], vocab.planes(ds.conditions[:1], 32)], 1)
    with torch.no_grad():
        y = g(x)
    assert y.shape == (1, 3, 32, 32) and torch.isfinite(y).all()


@pytest.mark.slow
def test_a_failing_trial_leaves_the_experiment_successful(local_ray, tmp_path, chars):
    # The first point evaluated is train's own values: lambda_l1 = inf makes that trial fail.
    spec = tiny(tmp_path, chars, num_samples=4, train={"lambda_l1": float("inf"), "epochs": 2})
    spec["search"] = {
        "lambda_l1": {"choice": [float("inf"), 100.0]},
        "lr_g": {"loguniform": [1e-4, 1e-3]},
    }
    best = run(cfgmod.from_dict(TuneConfig, spec))
    table = pd.read_csv(tmp_path / "results" / "tiny" / "trials.csv")
    failed = table[table["status"] == "failed"]
    assert (
        len(failed) >= 1
        and failed["error"].str.contains("non-finite loss at epoch 1, step 1").all()
    )
    assert (table["lambda_l1"] == float("inf")).sum() == len(failed)
    assert (table["status"] != "failed").sum() >= 1
    assert best is not None and (best / "generator.safetensors").is_file()


def test_search_space_errors_are_clear():
    with pytest.raises(cfgmod.ConfigError, match="search.lr_x: not a training config key"):
        search_space(cfgmod.from_dict(TuneConfig, {"search": {"lr_x": {"uniform": [0, 1]}}}))
    with pytest.raises(cfgmod.ConfigError, match="search.lr_g must be one of"):
        search_space(cfgmod.from_dict(TuneConfig, {"search": {"lr_g": {"gaussian": [0, 1]}}}))
    cfg = cfgmod.load(TuneConfig, ROOT / "configs" / "tune.yaml")
    assert set(search_space(cfg)) == {"lr_g", "lr_d", "lambda_l1", "lambda_adv"}
    assert cfg.train.image_size == 64 and cfg.scheduler.asha


def _finished_trials(exp: Path, epochs: int) -> int:
    n = 0
    for result in exp.glob("*/result.json"):
        lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        n += len(lines) >= epochs
    return n


@pytest.mark.slow
def test_interrupt_and_resume_runs_only_what_was_left(tmp_path, chars):
    spec = tiny(
        tmp_path,
        chars,
        num_samples=3,
        max_concurrent_trials=1,
        scheduler={"asha": False},
        train={"epochs": 2},
    )
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(spec))
    exp = tmp_path / "results" / "tiny"
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, str(ROOT / "jobs" / "tune.py"), "--config", str(path)]
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while _finished_trials(exp, 2) < 1 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "the search ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)  # Ctrl-C, once a trial has finished
        proc.wait(timeout=120)
    finally:
        proc.kill()
    done_before = {
        p.parent.name: p.read_text()
        for p in exp.glob("*/result.json")
        if _finished_trials(p.parent.parent, 2)
    }
    finished = {k: v for k, v in done_before.items() if len(v.splitlines()) >= 2}
    assert 1 <= len(finished) < 3
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = pd.read_csv(exp / "trials.csv")
    assert len(table) == 3 and (table["status"] == "completed").all()
    for name, text in finished.items():  # finished trials were not run again
        assert (exp / name / "result.json").read_text() == text
    assert "best generator:" in r.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_resume_refuses_another_search_unless_forced(local_ray, tmp_path, chars):
    spec = tiny(tmp_path, chars, num_samples=1, scheduler={"asha": False}, train={"epochs": 1})
    run(cfgmod.from_dict(TuneConfig, spec))
    exp = tmp_path / "results" / "tiny"
    assert cfgmod.load(TuneConfig, exp / "config.yaml").num_samples == 1
    with pytest.raises(cfgmod.ConfigError, match="already exists at .*add --resume"):
        run(cfgmod.from_dict(TuneConfig, spec))  # a new search over a finished one: refused
    changed = cfgmod.merge(spec, {"search": {"lr_g": {"loguniform": [1e-5, 1e-4]}}, "train": {"lambda_l1": 50}})  # fmt: skip
    with pytest.raises(cfgmod.ConfigError) as e:
        run(cfgmod.from_dict(TuneConfig, changed), resume=True)
    msg = str(e.value)
    assert (
        "search.lr_g" in msg
        and "train.lambda_l1: experiment 100.0, now 50" in msg
        and "--force" in msg
    )
    best = run(cfgmod.from_dict(TuneConfig, changed), resume=True, force=True)
    assert best == exp / "best"
    assert cfgmod.load(TuneConfig, exp / "config.yaml").train.lambda_l1 == 50
