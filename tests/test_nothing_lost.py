"""Nothing a user has is lost, whatever path a command takes, and bad input is one line, exit 2.

Each case here failed on the landed v0.2 main (issue 21): real commands on real files.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from colorjob import checkpoint, storage
from colorjob.cli import main as colorjob
from colorjob.export import META, WEIGHTS, read_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "32", "--set", "ngf=8", "--set", "ndf=8", "--set", "val_fraction=0.25"]


def train_args(data, out, *extra) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY, *extra]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def users_files(folder: Path) -> dict[str, bytes]:
    (folder / "mywork").mkdir(parents=True, exist_ok=True)
    (folder / "mywork" / "thesis.txt").write_text("three years of work")
    (folder / "notes.md").write_text("# notes")
    return {"mywork/thesis.txt": b"three years of work", "notes.md": b"# notes"}


def still_there(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data, rel


# ---- one rule for a run folder, on every path -----------------------------------------------------
def test_overwrite_removes_only_what_a_run_writes(chars, tmp_path, capsys):
    out = tmp_path / "run"
    mine = users_files(out)
    assert (
        colorjob(train_args(chars, out)) == 2
    )  # a folder of other files: refused without --overwrite
    assert "not a colorjob run" in one_error_line(capsys)
    assert colorjob(train_args(chars, out, "--overwrite")) == 0
    assert (out / "metrics.csv").is_file()
    still_there(out, mine)
    assert colorjob(train_args(chars, out, "--overwrite")) == 0  # again over a run and the files
    err = capsys.readouterr().err
    assert "kept other files: mywork, notes.md" in err
    still_there(out, mine)


@pytest.mark.slow
def test_overwrite_on_ray_train_workers_keeps_the_users_files(chars, tmp_path, capsys):
    out = tmp_path / "run"
    mine = users_files(out)
    assert colorjob(train_args(chars, out)) == 2
    capsys.readouterr()
    assert colorjob(train_args(chars, out, "--overwrite", "--workers", "2")) == 0
    still_there(out, mine)
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1]
    assert read_model(out / "best")


@pytest.mark.parametrize("bad", ["init-from", "data"])
def test_a_failed_check_with_overwrite_removes_nothing(chars, tmp_path, capsys, bad):
    out = tmp_path / "R2"
    assert colorjob(train_args(chars, out)) == 0
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    extra = (
        ["--overwrite", "--init-from", str(out / "bset")] if bad == "init-from" else ["--overwrite"]
    )
    data = chars if bad == "init-from" else tmp_path / "no-such-data"
    assert colorjob(train_args(data, out, *extra)) == 2
    line = one_error_line(capsys)
    assert ("bset" in line) if bad == "init-from" else ("does not exist" in line)
    after = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing removed, nothing touched
    # the run's own best/ can seed a new run in the same folder: it is read before anything goes
    assert colorjob(train_args(chars, out, "--overwrite", "--init-from", str(out / "best"))) == 0


def no_ray(monkeypatch) -> None:
    """Make starting or joining a Ray an error: what a test runs must fail before it."""

    def refuse(*a, **k):
        raise AssertionError("Ray was started before the checks")

    monkeypatch.setattr("colorjob.cluster.connect", refuse)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_path_runs_the_same_preflight_before_ray(tmp_path, capsys, monkeypatch, workers):
    no_ray(monkeypatch)
    args = train_args(tmp_path / "missing", tmp_path / "out", "--workers", workers)
    assert colorjob(args) == 2
    line = one_error_line(capsys)
    assert "dataset folder" in line and "does not exist" in line
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_or_cannot_be_written_is_one_line(chars, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert colorjob(train_args(chars, tmp_path / "afile")) == 2
    assert "is a file" in one_error_line(capsys)
    assert (tmp_path / "afile").read_text() == "x"


def test_out_on_a_read_only_mount_is_one_line(chars, tmp_path):
    """A read-only file system (a tmpfs mounted read-only in a user namespace); /sys where no
    namespace can be made (not writable either)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    cmd = [sys.executable, "-m", "colorjob", *train_args(chars, ro / "run")]
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which("unshare") else None  # fmt: skip
    if probe is not None and probe.returncode == 0:
        script = f"mount -t tmpfs -o ro none {ro} && exec " + " ".join(map(repr, cmd))
        r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert "Read-only file system" in r.stderr, r.stderr
    else:
        cmd = [sys.executable, "-m", "colorjob", *train_args(chars, "/sys/colorjob-test-run")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "cannot write the run folder" in r.stderr


# ---- every documented form of every command works --------------------------------------------------
def _tune_config(tmp_path: Path, chars: Path, name: str) -> Path:
    cfg = {
        "name": name, "storage_path": str(tmp_path / "results"), "num_samples": 1,
        "max_concurrent_trials": 1, "resources": {"cpu": 1}, "max_failures": 0,
        "scheduler": {"asha": False},
        "train": {"data": str(chars), "image_size": 32, "ngf": 8, "ndf": 8, "epochs": 1,
                  "batch_size": 8, "val_fraction": 0.25},
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.slow
def test_a_one_trial_search_runs_through_every_form_of_the_command(chars, tmp_path):
    """Each form runs its code as a different ``__main__`` (what Ray's pickling trips on): all
    four join one cluster of this test's (the private-Ray start is every other search test's)."""
    from ray.cluster_utils import Cluster

    exe = Path(sys.executable).parent
    forms = {
        "colorjob": [str(exe / "colorjob"), "tune"],
        "python-m-colorjob": [sys.executable, "-m", "colorjob", "tune"],
        "python-m-colorjob-tune": [sys.executable, "-m", "colorjob.tune"],
        "jobs-tune": [sys.executable, str(ROOT / "jobs" / "tune.py")],
    }
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    procs = {}
    try:  # the cluster and every started search go, whatever fails
        for name, cmd in forms.items():
            procs[name] = subprocess.Popen(
                [*cmd, "--config", str(_tune_config(tmp_path, chars, name))],
                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        outs = {name: p.communicate(timeout=400)[0] for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
        cluster.shutdown()
    for name, p in procs.items():
        assert p.returncode == 0, (name, outs[name][-3000:])
        trials = pd.read_csv(tmp_path / "results" / name / "trials.csv")
        assert list(trials["status"]) == ["completed"], (name, trials)
        assert read_model(tmp_path / "results" / name / "best")


@pytest.mark.slow
def test_train_synth_and_batch_run_as_python_m_modules(tmp_path):
    r = subprocess.run([sys.executable, "-m", "colorjob.train", "--dry-run"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and "dry run ok" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "colorjob.synth", "--out", str(tmp_path / "d"), "--sketches", "1", "--size", "32"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and (tmp_path / "d" / "metadata.csv").is_file(), r.stderr
    r = subprocess.run([sys.executable, "-m", "colorjob.batch", "--help"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and "--conditions" in r.stdout


# ---- tune: a bad search is refused before Ray starts, and nothing is written ---------------------------
@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"lr_g": {"loguniform": [1e-3, 5e-5]}}, "low (0.001) must be below high (5e-05)"),
        ({"batch_size": {"randint": [8, 2]}}, "low (8) must be below high (2)"),
        ({"lr_g": {"uniform": [-1e-3, 1e-3]}}, "lr_g must be a finite number in (0, 1]"),
        ({"lr_g": {"loguniform": [0, 1e-3]}}, "loguniform needs low > 0"),
        ({"beta1": {"choice": []}}, "choice needs a non-empty list"),
        ({"lambda_l1": {"uniform": [1, 2, 3]}}, "uniform needs 2 numbers"),
    ],
)
def test_a_bad_search_space_is_refused_before_ray_and_writes_nothing(chars, tmp_path, capsys, monkeypatch, search, message):  # fmt: skip
    no_ray(monkeypatch)
    cfg = json.loads(_tune_config(tmp_path, chars, "bad").read_text()) | {"search": search}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(cfg))
    assert colorjob(["tune", "--config", str(path)]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "results").exists()  # no experiment: the fixed config just runs


def test_a_trial_that_can_never_fit_this_machine_is_refused(chars, tmp_path, capsys, monkeypatch):
    no_ray(monkeypatch)
    path = _tune_config(tmp_path, chars, "big")
    assert colorjob(["tune", "--config", str(path), "--set", "resources.cpu=64"]) == 2
    assert "64 CPUs" in one_error_line(capsys)
    assert colorjob(["tune", "--config", str(path), "--set", "resources.workers=8"]) == 2
    assert "8 CPUs" in one_error_line(capsys)
    assert not (tmp_path / "results").exists()


def test_resume_with_nothing_to_resume_writes_nothing(chars, tmp_path, capsys, monkeypatch):
    no_ray(monkeypatch)
    path = _tune_config(tmp_path, chars, "never")
    assert colorjob(["tune", "--config", str(path), "--resume"]) == 2
    assert "nothing to resume" in one_error_line(capsys)
    assert not (tmp_path / "results" / "never").exists()


@pytest.mark.slow
def test_on_a_cluster_a_trial_that_fits_no_node_stops_the_search_after_the_timeout(chars, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        cmd = [sys.executable, "-m", "colorjob", "tune", "--config", str(_tune_config(tmp_path, chars, "wait")),
               "--set", "resources.cpu=4", "--set", "pending_timeout_s=5"]  # fmt: skip
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    finally:
        cluster.shutdown()
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    assert "waiting for the autoscaler" in r.stderr and "none could start" in r.stderr
    assert "Traceback" not in r.stderr.split("error:")[-1]


# ---- bad training data: one line naming the file, on every path ---------------------------------------
def _broken(chars: Path, tmp_path: Path, how: str) -> Path:
    data = tmp_path / "data"
    shutil.copytree(chars, data)
    meta = data / "metadata.csv"
    text = meta.read_text()
    if how == "dropped column":
        meta.write_text(
            "\n".join(",".join(line.split(",")[:3]) for line in text.splitlines()) + "\n"
        )
    elif how == "blank value":
        lines = text.splitlines()
        lines[3] = ",".join(lines[3].split(",")[:3] + [""])
        meta.write_text("\n".join(lines) + "\n")
    elif how == "duplicated column":
        meta.write_text(
            "\n".join(f"{line},{line.split(',')[2]}" for line in text.splitlines()) + "\n"
        )
    elif how == "broken conditions.json":
        (data / "conditions.json").write_text('{"attributes": [{"name": "hair", "values": [1')
    elif how == "latin-1":
        lines = text.splitlines()
        lines[2] = lines[2].replace("black", "bl\u00e9ck")
        meta.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    elif how == "extra field":
        lines = text.splitlines()
        lines[5] += ",surprise"
        meta.write_text("\n".join(lines) + "\n")
    return data


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("dropped column", "conditions.json lists attributes"),
        ("blank value", "row 4"),
        ("duplicated column", "more than once"),
        ("broken conditions.json", "not a valid condition vocabulary"),
        ("latin-1", "line 3 is not UTF-8"),
        ("extra field", "line 6"),
    ],
)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_training_data_is_one_line_on_every_path(
    chars, tmp_path, capsys, how, message, workers
):
    data = _broken(chars, tmp_path, how)
    assert colorjob(train_args(data, tmp_path / "out", "--workers", workers)) == 2
    line = one_error_line(capsys)
    assert message in line, line
    assert not (tmp_path / "out").exists()


# ---- resuming: best/ always agrees with metrics.csv; no temporary file outlives its writer ---------
class Stop(KeyboardInterrupt):
    pass


def test_resume_after_an_interrupt_between_checkpoints_keeps_best_consistent(tiny_cfg, tmp_path):
    from colorjob.train import train

    cfg = tiny_cfg(out=tmp_path / "run", epochs=10, checkpoint_every=5, lr_g=1e-3)

    def stop_at_8(metrics, saved):
        if metrics["epoch"] == 8:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, report=stop_at_8)
    out = Path(cfg.out)
    assert not list((out / "checkpoints").glob(f"{storage.TMP_MARK}*"))  # writer finished
    state = checkpoint.load(out / "checkpoints")
    assert state["epoch"] == 5
    resumed = train(tiny_cfg(out=out, epochs=10, checkpoint_every=5, lr_g=3e-4), resume=True)
    history = pd.read_csv(out / "metrics.csv")
    assert history["epoch"].tolist() == list(range(1, 11))
    best_epoch = int(history.loc[history["val_l1"].idxmin(), "epoch"])
    meta, _ = read_model(out / "best")
    assert meta["metrics"]["epoch"] == best_epoch == resumed["best_epoch"]
    assert meta["metrics"]["val_l1"] == pytest.approx(history["val_l1"].min())


def test_best_from_discarded_epochs_is_replaced_on_resume(tiny_cfg, tmp_path):
    """best/ exported at epoch 8 of a run interrupted there (the checkpoint is epoch 5's) is
    made again from the checkpoint's own best as soon as the run resumes."""
    from colorjob import runfolder
    from colorjob.export import model_id, weights_file
    from colorjob.train import train

    out = tmp_path / "run"
    train(tiny_cfg(out=out, epochs=5, checkpoint_every=5))
    state = checkpoint.load(out / "checkpoints")
    meta = json.loads((out / "best" / META).read_text())
    meta["metrics"]["epoch"] = 8  # as if a later, discarded epoch had exported it
    g = {k: v + 1 if v.is_floating_point() else v for k, v in checkpoint.best_generator(state).items()}  # fmt: skip
    (out / "best" / WEIGHTS).write_bytes(weights_file(g))
    meta["model_id"] = model_id(weights_file(g))
    (out / "best" / META).write_text(json.dumps(meta))
    runfolder.ensure_best(state, out)
    again, _ = read_model(out / "best")
    assert again["metrics"]["epoch"] == state["best"]["epoch"] <= 5
    assert again["model_id"] == model_id(weights_file(checkpoint.best_generator(state)))


def test_a_dead_writers_temporary_files_are_removed_and_a_live_ones_kept(tiny_cfg, tmp_path):
    from colorjob.train import train

    out = tmp_path / "run"
    train(tiny_cfg(out=out, epochs=1))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = storage.process_tag().split("@")[1]
    stale = out / "checkpoints" / f"{storage.TMP_MARK}p{dead.pid}@{tag}-0123456789ab-best.pt"
    live = out / "checkpoints" / storage.temp_name("last.pt")  # this process: alive
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"y")
    train(tiny_cfg(out=out, epochs=2), resume=True)
    assert not stale.exists() and live.exists()


# ---- damaged models and checkpoints: one line, every command -------------------------------------------
def _damaged_model(trained, tmp_path: Path, how: str) -> Path:
    cfg, _ = trained
    bad = tmp_path / "bad-model"
    shutil.copytree(Path(cfg.out) / "best", bad)
    if how == "header not a table":
        body = b'{"w": {"dtype": "F32"}}'
        (bad / WEIGHTS).write_bytes(len(body).to_bytes(8, "little") + body)
    elif how == "header a list":
        body = b"[1, 2, 3]"
        (bad / WEIGHTS).write_bytes(len(body).to_bytes(8, "little") + body)
    elif how == "huge ngf":
        meta = json.loads((bad / META).read_text())
        meta["ngf"] = 10**12
        (bad / META).write_text(json.dumps(meta))
    return bad


@pytest.mark.parametrize("how", ["header not a table", "header a list", "huge ngf"])
def test_a_damaged_model_is_one_line_for_batch_export_and_init_from(trained, chars, tmp_path, capsys, how):  # fmt: skip
    bad = _damaged_model(trained, tmp_path, how)
    grid = tmp_path / "grid.csv"
    grid.write_text("hair,shirt\nblack,red\n")
    sketch = tmp_path / "in"
    sketch.mkdir()
    shutil.copy(chars / "sketches" / "char_0000.png", sketch)
    commands = [
        ["batch", "--input", str(sketch), "--conditions", str(grid), "--model", str(bad), "--output", str(tmp_path / "o")],
        ["export", "--from", str(bad), "--to", str(tmp_path / "shipped")],
        train_args(chars, tmp_path / "ft", "--init-from", str(bad)),
    ]  # fmt: skip
    for cmd in commands:
        assert colorjob(cmd) == 2, cmd
        assert "bad-model" in one_error_line(capsys), cmd


@pytest.mark.parametrize(
    "how", ["no opt_g", "no history", "a generator tensor gone", "random bytes"]
)
def test_a_damaged_checkpoint_is_one_line_on_resume(trained, chars, tmp_path, capsys, how):
    cfg, _ = trained
    out = tmp_path / "run"
    shutil.copytree(cfg.out, out)
    last = out / "checkpoints" / "last.pt"
    (out / "config.yaml").write_text((out / "config.yaml").read_text().replace(cfg.out, str(out)))
    if how == "random bytes":
        last.write_bytes(os.urandom(5000))
    else:
        state = torch.load(last, weights_only=True)
        if how == "no opt_g":
            del state["opt_g"]
        elif how == "no history":
            del state["history"]
        else:
            del state["generator"][next(iter(state["generator"]))]
        torch.save(state, last)
    assert colorjob(["train", "--out", str(out), "--resume", "--epochs", "3"]) == 2
    line = one_error_line(capsys)
    assert "last.pt" in line or "checkpoint" in line
    assert "weights_only" not in line


# ---- configs and outputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "tune", "batch"])
def test_a_utf16_config_file_is_one_line(tmp_path, capsys, command):
    path = tmp_path / "config.yaml"
    path.write_bytes("epochs: 3\n".encode("utf-16"))
    assert colorjob([command, "--config", str(path)]) == 2
    assert "line 1 is not UTF-8" in one_error_line(capsys)


def test_export_never_replaces_a_folder_of_other_files_or_a_file(trained, tmp_path, capsys):
    cfg, _ = trained
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "metadata.csv").write_text("input,output,hair\n")
    (data / "notes.md").write_text("mine")
    assert colorjob(["export", "--from", str(Path(cfg.out) / "best"), "--to", str(data)]) == 2
    assert "not an exported model" in one_error_line(capsys)
    assert sorted(p.name for p in data.iterdir()) == ["metadata.csv", "notes.md"]
    afile = tmp_path / "afile.txt"
    afile.write_text("keep")
    assert colorjob(["export", "--from", str(Path(cfg.out) / "best"), "--to", str(afile)]) == 2
    assert "is a file" in one_error_line(capsys)
    assert afile.read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if storage.TMP_MARK in p.name]
    shipped = tmp_path / "shipped"  # new, then replaced: an exported model may be
    for _ in range(2):
        assert (
            colorjob(["export", "--from", str(Path(cfg.out) / "best"), "--to", str(shipped)]) == 0
        )
    assert read_model(shipped)
