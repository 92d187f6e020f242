"""Bigger than one device or memory: Ray Train workers per trial, and data streamed from files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from colorjob import synth
from colorjob.export import read_model_info
from colorjob.train import METRIC_COLUMNS, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def shards(folder: Path) -> dict:
    """``{(epoch, rank): set of rows}`` from a run's shard log."""
    out = {}
    for f in folder.glob("epoch*-rank*.json"):
        epoch, rank = (int(x) for x in f.stem.removeprefix("epoch").split("-rank"))
        out[(epoch, rank)] = set(json.loads(f.read_text()))
    return out


@pytest.mark.slow
def test_a_search_of_two_worker_trials_runs_from_the_command_line_with_asha(tmp_path, chars):
    """The issue's done-when command on a tiny dataset: its own private Ray with 2 CPUs, so the
    two-worker trials run one at a time. ASHA ends every trial by killing its actor (and with it
    the trial's Ray Train controller): the next trial's workers must still get the CPUs."""
    import yaml

    log = tmp_path / "shards"
    spec = {
        "name": "workers", "storage_path": "results", "num_samples": 2,  # relative: to the cwd
        "max_concurrent_trials": 2, "resources": {"workers": 2, "cpu_per_worker": 1},
        "scheduler": {"asha": True, "grace_period": 1, "reduction_factor": 2}, "max_failures": 0,
        "search": {"lr_g": {"choice": [2e-4, 5e-4]}},
        "train": {"data": str(chars), "image_size": 32, "ngf": 8, "ndf": 8, "epochs": 2, "batch_size": 8,
                  "val_fraction": 0.25, "shard_log": str(log)},
    }  # fmt: skip
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private Ray
    cmd = [sys.executable, str(ROOT / "jobs" / "tune.py"), "--config", str(tmp_path / "tune.yaml"), "--set", "resources.workers=2"]  # fmt: skip
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "max_concurrent_trials 2 -> 1" in r.stdout + r.stderr  # two workers fill 2 CPUs
    exp = tmp_path / "results" / "workers"
    table = pd.read_csv(exp / "trials.csv")
    assert len(table) == 2 and table["status"].isin(["completed", "stopped early"]).all()
    assert set(table["epochs"]) <= {1, 2} and 2 in set(table["epochs"])
    info = read_model_info(exp / "best")
    assert info["metrics"]["val_l1"] == pytest.approx(table["val_l1"].min(), rel=1e-6)
    for result in exp.glob("*/result.json"):  # the same per-epoch metrics as a one-worker trial
        rows = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
        assert set(METRIC_COLUMNS) - {"seconds", "holdout_l1", "holdout_fidelity"} <= set(rows[-1])
    # Ray Train's checkpoints of every trial in the experiment, not in a trial's working folder
    assert len(list((exp / "workers").glob("workers-*/checkpoint_*"))) >= 2
    seen = shards(log)
    assert {rank for _, rank in seen} == {0, 1}
    for epoch in (1, 2):  # two processes, disjoint halves of the epoch
        a, b = seen[(epoch, 0)], seen[(epoch, 1)]
        assert a and b and not a & b and len(a) == len(b)


@pytest.mark.slow
def test_a_killed_worker_restarts_the_group_from_its_checkpoint_with_the_run_folder(
    local_ray, tiny_cfg, tmp_path
):
    """One of two Ray Train workers is killed once a checkpoint is registered (Ray Train's
    controller records reported checkpoints every few seconds, in its snapshot file): the group
    restarts from it (epochs 1-2 are not trained again), the run folder comes back whole, and a
    second run over it is refused."""
    import os
    import signal
    import threading
    import time

    from ray._private.state import actors

    from colorjob.distributed import train_on_ray
    from colorjob.export import read_model
    from colorjob.train import RunFolderError

    out, log = tmp_path / "run", tmp_path / "shards"
    cfg = tiny_cfg(out=out, shard_log=str(log), epochs=10, checkpoint_every=2)
    killed = []

    def kill_a_worker():
        deadline = time.time() + 300
        registered = out / ".ray-train" / "run" / "checkpoint_manager_snapshot.json"
        while time.time() < deadline and not registered.exists():
            time.sleep(0.05)
        workers = [a["Pid"] for a in actors().values() if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"]  # fmt: skip
        if workers:
            os.kill(workers[-1], signal.SIGKILL)  # a worker of this test's own Ray
            killed.append((time.time(), workers[-1]))

    watcher = threading.Thread(target=kill_a_worker, daemon=True)
    watcher.start()
    metrics = train_on_ray(cfg, workers=2)
    watcher.join(timeout=5)
    assert killed, "no Ray Train worker was found to kill"
    ((at, pid),) = killed
    assert metrics["epoch"] == 10
    history = pd.read_csv(out / "metrics.csv")
    assert list(history["epoch"]) == list(range(1, 11))
    # the group restarted: both ranks began again in new processes, from a checkpoint
    restarts = {f.name.split("-")[1]: int(f.stem.split("-")[2]) for f in log.glob("restored-rank*.json")}  # fmt: skip
    assert set(restarts) == {"rank0", "rank1"} and pid not in restarts.values(), restarts
    assert all(f.stat().st_mtime > at for f in log.glob("restored-rank*.json"))
    when = {e: (log / f"epoch{e:03d}-rank0.json").stat().st_mtime for e in range(1, 11)}
    assert when[1] < at and when[2] < at < when[10], (at, when)  # not from epoch 1
    meta, _ = read_model(out / "best")  # whole: weights made again where packed, id checked
    assert meta["metrics"]["val_l1"] == pytest.approx(history["val_l1"].min(), rel=1e-6)
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "config.yaml").is_file()
    with pytest.raises(RunFolderError, match="--resume"):  # never over finished work
        train_on_ray(cfg, workers=2)


@pytest.mark.parametrize("users", [None, "3"])
def test_ray_trains_controller_takes_reports_four_times_a_second_unless_the_user_says(tmp_path, monkeypatch, users):  # fmt: skip
    """Ray Train's controller takes a worker's report when it polls (2 s by default: an epoch
    took at least that). colorjob sets the poll where Ray passes it on from the process that
    calls fit() to the controller (its list of variables to propagate); a user's own value stays."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from colorjob.distributed import POLL_ENV, trainer

    monkeypatch.delenv(POLL_ENV, raising=False)
    if users:
        monkeypatch.setenv(POLL_ENV, users)
    assert get_env_vars_to_propagate().get(POLL_ENV) == users  # before: Ray's default or theirs
    trainer({"data": str(tmp_path)}, "run", str(tmp_path / "storage"), workers=2, cpus=1, gpus=0)
    assert get_env_vars_to_propagate()[POLL_ENV] == (users or "0.25")


def test_one_epoch_streamed_visits_the_same_pairs_as_one_in_memory(tiny_cfg, tmp_path):
    visited = {}
    for mode in ("memory", "stream"):
        cfg = tiny_cfg(out=tmp_path / mode, epochs=1, data_mode=mode, loader_workers=2, shard_log=str(tmp_path / f"log-{mode}"))  # fmt: skip
        summary = train(cfg)
        visited[mode] = shards(tmp_path / f"log-{mode}")[(1, 0)]
        assert summary["history"][0]["val_l1"] > 0
    assert visited["memory"] == visited["stream"] and len(visited["memory"]) == 75


PROBE = """
import functools, sys, threading, time
import psutil
import colorjob.train as T

me, base, peak, done = psutil.Process(), [None], [0], threading.Event()

def pss() -> int:  # this process and its DataLoader workers: their own memory (anonymous and
    # shared-memory pages, shared ones split between sharers); not the libraries' file pages,
    # whose share moves with how many other processes (a Ray's workers) map torch
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                own = [int(line.split()[1]) for line in f if line.startswith(("Pss_Anon:", "Pss_Shmem:"))]
            total += 1024 * sum(own) if len(own) == 2 else p.memory_full_info().pss  # old kernels
        except (OSError, psutil.Error):
            pass
    return total

checked = T.preflight
def preflight(*a, **k):  # the dataset's index (metadata.csv in pandas) is read by now
    r = checked(*a, **k)
    base[0] = peak[0] = pss()
    return r
T.preflight = preflight

def watch():
    while not done.is_set():
        if base[0] is not None:
            peak[0] = max(peak[0], pss())
        time.sleep(0.01)

# validation decodes a chunk of sketches at a time: the same chunk for both sizes of dataset
T.validate_streamed = functools.partial(T.validate_streamed, chunk=4)
threading.Thread(target=watch, daemon=True).start()
T.train(T.TrainConfig(data=sys.argv[1], out=sys.argv[2], image_size=32, ngf=8, ndf=8, epochs=1,
        batch_size=32, data_mode=sys.argv[3], loader_workers=1, eval_batch_size=256))
done.set()
print(max(peak[0], pss()) - base[0])
"""


def _peak_memory(data: Path, out: Path, mode: str) -> int:
    """Peak memory (bytes, the process's and its loader workers' own PSS, sampled every 10 ms) that
    a fresh process training one epoch on ``data`` with ``data_mode=mode`` adds to what it holds
    once the dataset is checked (its metadata read: pandas and Arrow keep ~2 KB a row, measured,
    the index every mode needs)."""
    r = subprocess.run([sys.executable, "-c", PROBE, str(data), str(out), mode], capture_output=True, text=True, timeout=500)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return int(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_streamed_training_memory_does_not_grow_with_the_dataset(tmp_path):
    """Five times the pairs, streamed: training and validating (with the loader workers) take
    less than 25 MB more. Positive control: holding the same data decoded (memory mode) grows
    past that bound (the 4,000 more decoded 32 px pairs, held as tensors)."""
    small = synth.generate(tmp_path / "1k", 40, seed=1, size=32)  # 1,000 pairs
    large = synth.generate(tmp_path / "5k", 200, seed=1, size=32)  # 5,000 pairs
    bound = 25 * 2**20
    growth = {
        mode: _peak_memory(large, tmp_path / f"{mode}-l", mode) - _peak_memory(small, tmp_path / f"{mode}-s", mode)
        for mode in ("stream", "memory")
    }  # fmt: skip
    assert growth["stream"] < bound, growth
    assert growth["memory"] > bound, growth  # the measurement can see data held in memory


def test_memory_mode_is_chosen_for_small_data_and_streaming_past_the_limit(chars, tmp_path):
    from colorjob.data import load_splits
    from colorjob.train import streams

    tr, va = load_splits(chars, 32, 0.25)
    assert not streams(TrainConfig(), tr, va)
    assert streams(TrainConfig(memory_limit_gb=1e-6), tr, va)  # 104 files x 32 x 32 x 3 > 1 kB
    assert not streams(TrainConfig(memory_limit_gb=1e-6, data_mode="memory"), tr, va)
