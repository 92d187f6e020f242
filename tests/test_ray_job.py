"""End to end on a real Ray cluster: `ray start --head` on loopback, `ray job submit`, then only
that cluster's processes are stopped (its process group), never other Rays on the machine."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster whose jobs run this venv's python; stopped afterwards."""
    env = os.environ | {
        "RAY_AUTH_MODE": "disabled",  # the same for start and submit
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `python`
    }
    dash = free_port()
    start = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={free_port()}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}", "--num-cpus=2", "--disable-usage-stats",
        # ports of its own: the tests' in-process Ray may hold Ray's default agent ports, and a
        # job agent that cannot bind never registers ("No available agent to submit job")
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]  # fmt: skip
    # --block keeps `ray start` in the foreground; in a session of its own, its process group
    # holds this cluster's processes and nothing else.
    head = subprocess.Popen(
        start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        for _ in range(60):  # the job server comes up a little after `ray start` returns
            ok = subprocess.run(
                [str(BIN / "ray"), "job", "list", f"--address={address}"],
                env=env,
                capture_output=True,
            )
            if ok.returncode == 0:
                break
            time.sleep(1)
        yield env, address
    finally:
        stop_group(head)


def stop_group(proc: subprocess.Popen) -> None:
    """Kill a process and everything in its process group (this cluster's Ray processes;
    `ray start --block` does not stop promptly on SIGTERM or SIGINT)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait(timeout=30)


def submit(env: dict, address: str, entrypoint: list[str]) -> None:
    """`ray job submit --working-dir .` and wait; the job must end SUCCEEDED."""
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        f"--address={address}",
        "--working-dir",
        str(ROOT),
        "--",
    ]
    for _ in range(15):  # the job agent on the node registers a little after the job server
        r = subprocess.run([*cmd, *entrypoint], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        out = r.stdout + r.stderr
        if "No available agent to submit job" not in out:
            break
        time.sleep(2)
    assert r.returncode == 0 and "succeeded" in out.lower(), out[-4000:]


@pytest.mark.slow
def test_ray_job_submit_runs_the_search(cluster, tmp_path, chars):
    env, address = cluster
    spec = {
        "name": "job",
        "storage_path": str(tmp_path / "results"),
        "num_samples": 2,
        "resources": {"cpu": 1},
        "scheduler": {"asha": False},
        "train": {
            "data": str(chars),
            "image_size": 32,
            "ngf": 8,
            "ndf": 8,
            "epochs": 1,
            "batch_size": 8,
            "val_fraction": 0.25,
        },
    }
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    submit(env, address, ["python", "jobs/tune.py", "--config", str(cfg)])
    assert (tmp_path / "results" / "job" / "best" / "generator.safetensors").is_file()
    assert (tmp_path / "results" / "job" / "trials.csv").is_file()


@pytest.mark.slow
def test_ray_job_submit_colorizes(cluster, tmp_path, chars, trained):
    env, address = cluster
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for i, rel in enumerate(["a.png", "sub/b.png"]):
        (tmp_path / "in" / rel).write_bytes((chars / "sketches" / f"char_000{i}.png").read_bytes())
    job = ["python", "jobs/colorize.py", "--input", str(tmp_path / "in"), "--conditions", "configs/grid.csv",
           "--model", str(Path(trained[0].out) / "best"), "--output", str(tmp_path / "out")]  # fmt: skip
    submit(env, address, job)
    assert len(list((tmp_path / "out").rglob("*__*.png"))) == 2 * 25
    assert (tmp_path / "out" / "sub" / "b__blue_purple.png").is_file()
    assert list((tmp_path / "out" / "manifest").rglob("*.parquet"))
