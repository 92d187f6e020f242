"""A real multi-node Ray cluster on this machine (a 0-CPU head and two 1-CPU worker nodes, Ray's
own ``cluster_utils.Cluster``): a worker node is killed in the middle of a job, and the job still
finishes with every result exactly once. Only this cluster's processes are stopped."""

import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
from PIL import Image
from ray.cluster_utils import Cluster

from colorjob.batch import BatchConfig, execute

ROOT = Path(__file__).resolve().parents[1]


def run(cfg):
    return execute(cfg).read_manifest()


@pytest.fixture(scope="module")
def cluster():
    ray.shutdown()  # this process's own local Ray, if a module before started it
    fast_death = {
        "health_check_period_ms": 500,
        "health_check_failure_threshold": 3,
    }  # ~2 s, not 30
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": fast_death},
    )
    c.add_node(num_cpus=1)
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def two_workers(c: Cluster) -> list:
    """Two live 1-CPU worker nodes (a node is added where an earlier test killed one)."""
    live = [n for n in c.worker_nodes if n.remaining_processes_alive()]
    while len(live) < 2:
        live.append(c.add_node(num_cpus=1))
    c.wait_for_nodes()
    return live[:2]


def kill_when(condition, action, timeout: float = 300) -> threading.Thread:
    """Run ``action`` in the background as soon as ``condition()`` holds."""

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline and not condition():
            time.sleep(0.05)
        action()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["mirror", "shards"])
def test_batch_survives_losing_a_worker_node(cluster, tmp_path, chars, trained, layout):
    import tarfile

    c = cluster
    workers = two_workers(c)
    src = Image.open(chars / "sketches" / "char_0003.png")
    (tmp_path / "in").mkdir()
    for i in range(24):
        src.rotate(i * 15, fillcolor="white").save(tmp_path / "in" / f"s{i:02d}.png")
    out = tmp_path / "out"

    def images() -> list[Path]:
        return [p for p in out.rglob("*__*.png") if ".colorjob" not in p.parts]

    def progress() -> int:  # outputs made so far: files (mirror), tar pieces' results (shards)
        if layout == "mirror":
            return len(images())
        return 25 * len(list(out.rglob(".colorjob/runs/*/results/*/*.parquet")))

    killed = []
    watcher = kill_when(
        lambda: progress() >= 60,
        lambda: killed.append(progress()) or c.remove_node(workers[1], allow_graceful=False),
    )
    m = run(
        BatchConfig(
            input=str(tmp_path / "in"), conditions=str(ROOT / "configs" / "grid.csv"),
            model=str(Path(trained[0].out) / "best"), output=str(out), executor="ray",
            layout=layout, shards=4,
        )
    )  # fmt: skip
    watcher.join(timeout=5)
    assert killed and killed[0] < 24 * 25, "the node was not killed while the job ran"
    assert len(m) == 24 * 25 and (m["status"] == "ok").all()
    assert m["output"].is_unique and len(m[["input", "variant"]].drop_duplicates()) == 24 * 25
    if layout == "mirror":
        files = images()
        assert sorted(str(p.relative_to(out)) for p in files) == sorted(m["output"])
        for r in m.itertuples():  # every file whole, and the manifest agrees with it
            img = Image.open(out / r.output)
            img.load()
            assert img.size == (r.width, r.height)
    else:
        members = set()
        for t in (out / "shards").rglob("*.tar"):
            with tarfile.open(t) as tar:
                members |= {
                    f"{t.relative_to(out)}#{n}" for n in tar.getnames() if n.endswith(".png")
                }
        assert members == set(m["output"])
    ledger = pd.read_parquet(out / ".colorjob" / "ledger")
    assert len(ledger) == 24 * 25 and not list(out.rglob("*.colorjob-tmp-*"))
    assert not (out / ".colorjob" / "runs").exists() or not any(
        (out / ".colorjob" / "runs").iterdir()
    )


@pytest.mark.slow
def test_a_search_survives_losing_a_worker_node(cluster, tmp_path, chars):
    """The first trial's node dies mid-trial: Tune restarts that trial on the other node from its
    last checkpoint (not from epoch 1), and every trial of the search finishes."""
    import json

    from colorjob import config as cfgmod
    from colorjob.tune import TuneConfig
    from colorjob.tune import search as tune_run

    c = cluster
    workers = two_workers(c)
    exp = tmp_path / "results" / "nodeloss"
    spec = {
        "name": "nodeloss", "storage_path": str(tmp_path / "results"), "num_samples": 3,
        "max_concurrent_trials": 2, "resources": {"cpu": 1}, "scheduler": {"asha": False},
        "max_failures": 3, "search": {"lr_g": {"choice": [1e-4, 2e-4, 3e-4]}},
        "train": {"data": str(chars), "image_size": 32, "ngf": 8, "ndf": 8, "epochs": 12, "batch_size": 4,
                  "val_fraction": 0.25, "checkpoint_every": 2},
    }  # fmt: skip

    def reports() -> dict:
        """Per trial, its (epoch, iterations since the trial's process last started) reports."""
        out = {}
        for f in exp.glob("*/result.json"):
            rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
            out[f.parent.name] = [(r["epoch"], r["iterations_since_restore"]) for r in rows]
        return out

    watcher = kill_when(
        lambda: exp.exists() and any(len(v) >= 3 for v in reports().values()),
        lambda: c.remove_node(workers[0], allow_graceful=False),
    )
    tune_run(cfgmod.from_dict(TuneConfig, spec))
    watcher.join(timeout=5)
    table = pd.read_csv(exp / "trials.csv")
    assert (
        len(table) == 3 and (table["status"] == "completed").all() and (table["epochs"] == 12).all()
    )
    runs = reports()
    # A restart shows as the per-process counter going back to 1 (the epoch alone may not repeat:
    # a node that dies just after a checkpoint loses no epoch).
    restarted = {name: seq for name, seq in runs.items() if [s for _, s in seq].count(1) > 1}
    assert restarted, f"no trial was restarted: {runs}"
    for seq in restarted.values():  # from a checkpoint, never from the first epoch
        epochs = [e for e, _ in seq]
        resumed_at = [e for e, s in seq[1:] if s == 1]
        assert epochs.count(1) == 1 and epochs[-1] == 12 and min(resumed_at) > 1, seq
