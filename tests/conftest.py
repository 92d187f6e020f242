import os
import shutil
import tempfile

import pytest

# The tests never see the user's environment: no exported cluster to join, no shared dataset
# cache, and a Ray temp folder of this test run's own (Ray's "latest cluster on this machine"
# file lives there; its socket paths must stay short, hence /tmp).
for _var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "COLORJOB_CACHE"):
    os.environ.pop(_var, None)
_RAY_TMP = tempfile.mkdtemp(prefix="cjray-", dir="/tmp")
_CACHE = tempfile.mkdtemp(prefix="colorjob-test-cache-")
os.environ["RAY_TMPDIR"] = _RAY_TMP
os.environ["COLORJOB_CACHE"] = _CACHE
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

from colorjob import synth  # noqa: E402
from colorjob.cluster import free_port  # noqa: E402, F401 - the tests' free port, too


@pytest.fixture(scope="session")
def chars(tmp_path_factory):
    """A small synthetic dataset: 4 characters x 25 colourings at 32 px."""
    return synth.generate(tmp_path_factory.mktemp("chars"), sketches=4, seed=7, size=32, workers=1)


@pytest.fixture(scope="session")
def tiny_cfg(chars, tmp_path_factory):
    """A 32 px, narrow-network training config over the session's synthetic data."""
    from colorjob.train import TrainConfig

    def make(out=None, **kw):
        out = out or tmp_path_factory.mktemp("run")
        base = dict(
            data=str(chars),
            out=str(out),
            image_size=32,
            ngf=8,
            ndf=8,
            epochs=2,
            batch_size=8,
            val_fraction=0.25,
        )
        return TrainConfig(**(base | kw))

    return make


@pytest.fixture(scope="session")
def trained(tiny_cfg):
    """One finished tiny training run: (config, summary)."""
    from colorjob.train import train

    cfg = tiny_cfg()
    return cfg, train(cfg)


def ensure_local_ray() -> None:
    """This test process's own local Ray (2 CPUs), started once and shared by the modules that
    need one; never some other Ray that may be running on the machine."""
    import ray

    if not ray.is_initialized():
        from colorjob.cluster import loopback_only

        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        loopback_only()  # reachable from this machine only, as colorjob's own private Ray
        ray.init(
            address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
            log_to_driver=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray with this machine's 2 CPUs (shared across modules; see ensure_local_ray)."""
    ensure_local_ray()
    yield


@pytest.fixture(scope="session", autouse=True)
def _stop_our_ray():
    """Stop the Ray this test process started, once, at the end; remove this run's temp."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
    shutil.rmtree(_CACHE, ignore_errors=True)
    shutil.rmtree(_RAY_TMP, ignore_errors=True)


def read_manifest(output):
    """A batch output folder's manifest (a Parquet dataset of one part per shard) as one frame,
    sorted by sketch then grid row, without the partition column."""
    import pandas as pd

    df = pd.read_parquet(output / "manifest")
    df = df.drop(columns=[c for c in ("shard",) if c in df])
    df["_order"] = range(len(df))
    return (
        df.sort_values(["input", "_order"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Which colorjob modules this test process imported (what a tier reaches in-process; the
    command-line tests reach the rest in subprocesses)."""
    import sys
    from pathlib import Path

    import colorjob

    root = Path(colorjob.__file__).parent
    names = {
        ".".join(("colorjob", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for p in root.rglob("*.py")
    }
    missing = sorted(n for n in names if n not in sys.modules)
    line = (
        f"colorjob modules imported by this test process: {len(names) - len(missing)}/{len(names)}"
    )
    terminalreporter.write_line(line + (f" (not: {', '.join(missing)})" if missing else ""))
