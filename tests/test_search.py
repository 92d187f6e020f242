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


@pytest.mark.parametrize("kept", [True, False])
def test_a_restarted_trial_keeps_the_reports_storage_has_not_caught_up_with(tmp_path, kept):
    """Ray 2.60's result writers copy storage's result.json over the driver's on a restart from
    a checkpoint; storage lags, so reports were lost. colorjob's writers keep the driver's copy
    (the control: Ray's own loses the rows since the last sync)."""
    from types import SimpleNamespace

    import pyarrow.fs
    from ray.tune.logger import JsonLoggerCallback

    from colorjob.tune import kept_result_files

    local, remote = tmp_path / "driver", tmp_path / "storage"
    for folder, epochs in ((local, 4), (remote, 2)):
        folder.mkdir()
        rows = [json.dumps({"epoch": e}) for e in range(1, epochs + 1)]
        (folder / "result.json").write_text("\n".join(rows) + "\n")

    class Trial(
        SimpleNamespace
    ):  # what the writers read of a Tune trial restarted from a checkpoint
        __hash__ = object.__hash__

    fake = Trial(
        config={}, local_path=str(local), checkpoint=object(), init_local_path=lambda: None,
        storage=SimpleNamespace(trial_fs_path=str(remote), storage_filesystem=pyarrow.fs.LocalFileSystem()),
    )  # fmt: skip
    writer = kept_result_files()[0] if kept else JsonLoggerCallback()
    assert isinstance(writer, JsonLoggerCallback)
    writer.log_trial_start(fake)
    writer.log_trial_result(5, fake, {"epoch": 5})
    writer.log_trial_end(fake)
    epochs = [json.loads(x)["epoch"] for x in (local / "result.json").read_text().splitlines()]
    assert (epochs == [1, 2, 3, 4, 5]) is kept, epochs


@pytest.fixture(scope="module")
def pbt_every_epoch(local_ray, tmp_path_factory, chars):
    """One PBT search shared by the tests below: 2 members, 10 epochs, a perturbation every
    epoch (the weaker member takes over the other's checkpoint), the background writer on."""
    tmp = tmp_path_factory.mktemp("pbt")
    spec = pbt_spec(tmp, chars, num_samples=2, max_concurrent_trials=2,
                    scheduler={"pbt": {"perturbation_interval": 1, "quantile_fraction": 0.5, "resample_probability": 0.5}},
                    train={"epochs": 10, "checkpoint_every": 1})  # fmt: skip
    best = run(cfgmod.from_dict(TuneConfig, spec))
    return tmp, tmp / "results" / "pbt", best


@pytest.mark.slow
def test_pbt_exploits_from_checkpoints_and_the_best_model_records_its_schedule(pbt_every_epoch):
    _, exp, best = pbt_every_epoch
    reports = _reports(exp)
    exploited = reports[reports["parent"].fillna("") != ""]
    assert len(exploited) >= 5, "no trial copied another's checkpoint, or hardly"
    scratch = reports[reports["epoch"] == 1]["g_l1"].mean()
    compared = 0
    for r in exploited.itertuples():  # it continues from the donor's state, not from scratch
        donor = reports[(reports["trial_id"] == r.parent) & (reports["epoch"] == r.epoch - 1)]
        assert r.epoch > 1 and len(donor) == 1
        assert abs(r.g_l1 - donor["g_l1"].item()) < abs(r.g_l1 - scratch)
        compared += 1
    assert compared == len(exploited)
    for tid, rows in reports.groupby("trial_id"):  # every report kept, each once
        assert sorted(rows["epoch"]) == list(range(1, 11)), tid
    table = pd.read_csv(exp / "trials.csv")
    assert (
        len(table) == 2 and (table["status"] == "completed").all() and (table["epochs"] == 10).all()
    )
    info = read_model_info(best)
    schedule = info["schedule"]
    assert [s["epoch"] for s in schedule] == list(range(1, info["metrics"]["epoch"] + 1))
    assert all(s["tag"] in set(table["trial_id"]) for s in schedule)
    assert {"lr_g", "lambda_l1"} <= set(schedule[0])
    assert (exp / "trials.png").stat().st_size > 0


@pytest.mark.slow
def test_an_interrupted_pbt_search_resumes(tmp_path, chars):
    spec = pbt_spec(tmp_path, chars, num_samples=2, train={"epochs": 4})
    path = tmp_path / "pbt.yaml"
    path.write_text(yaml.safe_dump(spec))
    exp = tmp_path / "results" / "pbt"
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, str(ROOT / "jobs" / "tune.py"), "--config", str(path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not list(exp.glob("*/checkpoint_*")):  # fmt: skip
            time.sleep(0.2)
        assert proc.poll() is None, "the search ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)  # once a trial has a checkpoint
        proc.wait(timeout=120)
    finally:
        proc.kill()
    saved = {d.parent.name for d in exp.glob("*/checkpoint_*")}  # trials that can continue
    assert saved
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = pd.read_csv(exp / "trials.csv")
    assert len(table) == 2 and (table["epochs"] == 4).all()
    # resumed from their checkpoints: a trial that had one did not train its first epoch again
    # (a restart from scratch would)
    reports = _reports(exp)
    for trial_dir in saved:
        tid = next(t for t in reports["trial_id"].unique() if t in trial_dir)
        assert (reports[(reports["trial_id"] == tid)]["epoch"] == 1).sum() == 1, tid


@pytest.mark.slow
def test_pbt_exploiting_every_epoch_leaves_checkpoints_that_all_restore(pbt_every_epoch):
    """Every checkpoint the experiment kept makes its run folder again, and its best/ is the
    best generator it names."""
    from colorjob import checkpoint, runfolder
    from colorjob.export import model_id, read_model, weights_file

    tmp_path, exp, _ = pbt_every_epoch
    kept = sorted(exp.glob("*/checkpoint_*/last.pt"))
    assert len(kept) >= 4  # Tune keeps a PBT trial's last 4
    for last in kept:
        state = checkpoint.load(last)
        out = tmp_path / "again" / last.parent.parent.name / last.parent.name
        runfolder.write(last, out)
        best = checkpoint.best_generator(state)
        if best is not None:
            meta, _ = read_model(out / "best")
            assert meta["model_id"] == model_id(weights_file(best))
            assert meta["metrics"]["epoch"] == state["best"]["epoch"] <= state["epoch"]


@pytest.mark.slow
def test_a_pbt_member_that_fails_for_good_does_not_stall_the_population(local_ray, tmp_path, chars):
    """A member's process is killed (no retries left): the synchronous population goes on
    without it, the search finishes, trials.csv says which trial failed and why."""
    import threading

    from ray._private.state import actors

    spec = pbt_spec(tmp_path, chars, train={"epochs": 6})
    exp = tmp_path / "results" / "pbt"
    killed = []

    def kill_one():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:  # a member that has reported, caught alive
            reports = _reports(exp) if exp.exists() else pd.DataFrame()
            if len(reports) and (reports["epoch"] >= 2).any():
                live = [a["Pid"] for a in actors().values() if a["State"] == "ALIVE" and "ImplicitFunc" in a["ActorClassName"]]  # fmt: skip
                if live:
                    os.kill(live[0], signal.SIGKILL)
                    killed.append(live[0])
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_one, daemon=True)
    watcher.start()
    best = run(cfgmod.from_dict(TuneConfig, spec))
    watcher.join(timeout=5)
    assert killed, "no trial was running to kill"
    table = pd.read_csv(exp / "trials.csv")
    failed = table[table["status"] == "failed"]
    assert len(failed) == 1 and failed["error"].str.len().iloc[0] > 0
    assert failed[["lr_g", "lambda_l1"]].notna().all().all()  # its settings, reported or not
    assert ((table["status"] == "completed") & (table["epochs"] == 6)).sum() == 3
    reports = _reports(exp)
    for tid in table.loc[table["status"] == "completed", "trial_id"]:
        assert sorted(reports[reports["trial_id"] == tid]["epoch"]) == list(range(1, 7)), tid
    assert best is not None
