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

from colorjob.batch import BatchConfig, run

ROOT = Path(__file__).resolve().parents[1]


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
    workers = [c.add_node(num_cpus=1), c.add_node(num_cpus=1)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()


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


def test_batch_survives_losing_a_worker_node(cluster, tmp_path, chars, trained):
    c, workers = cluster
    src = Image.open(chars / "sketches" / "char_0003.png")
    (tmp_path / "in").mkdir()
    for i in range(24):
        src.rotate(i * 15, fillcolor="white").save(tmp_path / "in" / f"s{i:02d}.png")
    out = tmp_path / "out"

    def images() -> list[Path]:
        return [p for p in out.rglob("*__*.png") if ".colorjob" not in p.parts]

    killed = []
    watcher = kill_when(
        lambda: len(images()) >= 60,
        lambda: killed.append(len(images())) or c.remove_node(workers[1], allow_graceful=False),
    )
    m = run(
        BatchConfig(
            input=str(tmp_path / "in"), conditions=str(ROOT / "configs" / "grid.csv"),
            model=str(Path(trained[0].out) / "best"), output=str(out), executor="ray",
        )
    )  # fmt: skip
    watcher.join(timeout=5)
    assert killed and killed[0] < 24 * 25, "the node was not killed while the job ran"
    assert len(m) == 24 * 25 and (m["status"] == "ok").all()
    assert m["output"].is_unique and len(m[["input", "variant"]].drop_duplicates()) == 24 * 25
    files = images()
    assert sorted(str(p.relative_to(out)) for p in files) == sorted(m["output"])
    for r in m.itertuples():  # every file whole, and the manifest agrees with it
        img = Image.open(out / r.output)
        img.load()
        assert img.size == (r.width, r.height)
    ledger = pd.read_parquet(out / ".colorjob" / "ledger.parquet")
    assert sorted(ledger["output"]) == sorted(m["output"]) and not list(
        out.rglob("*.colorjob-tmp-*")
    )
