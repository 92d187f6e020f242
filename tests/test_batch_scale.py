"""Batch at any size, and batch that loses nothing: shards, layouts, reruns, kills, links, names,
full disks, the lock under contention, dry runs (real files, real processes, a real local Ray)."""

import contextlib
import io
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import read_manifest
from PIL import Image

from colorjob.batch import BatchConfig, execute, ledger
from colorjob.batch.listing import choose_shards
from colorjob.cli import main as colorjob
from colorjob.export import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
GRID = "hair,shirt\nblack,red\nblonde,navy\nblue,green\n"


@pytest.fixture(scope="module")
def model(trained):
    cfg, _ = trained
    return str(Path(cfg.out) / "best")


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, trained):
    """The same network with other weights: another model_id."""
    import torch

    from colorjob.export import export_generator, load_generator

    g, vocab, meta = load_generator(Path(trained[0].out) / "best")
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.01)
    return str(export_generator(g, vocab, tmp_path_factory.mktemp("other") / "best"))


def sketches(folder: Path, chars: Path, n: int, names=None) -> list[Path]:
    src = Image.open(chars / "sketches" / "char_0001.png")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / (names[i] if names else f"s{i:03d}.png")
        p.parent.mkdir(parents=True, exist_ok=True)
        src.rotate(i * 7 % 360, fillcolor="white").save(p)
        out.append(p)
    return out


def grid(tmp_path: Path, text: str = GRID) -> str:
    import hashlib

    path = tmp_path / f"grid-{hashlib.sha1(text.encode()).hexdigest()[:8]}.csv"
    path.write_text(text)
    return str(path)


def cfg(tmp_path: Path, model: str, **kw) -> BatchConfig:
    base = {"input": str(tmp_path / "in"), "conditions": grid(tmp_path), "model": model,
            "output": str(tmp_path / "out"), "executor": "local"}  # fmt: skip
    return BatchConfig(**(base | kw))


def files(out: Path) -> dict[str, int]:
    """Output images (mirror) and shard tars, by path: their modification times."""
    return {
        str(p.relative_to(out)): p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file() and ".colorjob" not in p.parts and "manifest" not in p.parts and p.name != "contact_sheet.png"
    }  # fmt: skip


def written(out: Path) -> dict[Path, int]:
    """Everything a run records (outputs, ledger, manifest): not the lock or the last config."""
    skip = {"contact_sheet.png", "config.yaml", "lock", "lock.json"}
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in skip}


def tar_members(out: Path) -> dict[str, bytes]:
    found = {}
    for t in sorted((out / "shards").rglob("*.tar")):
        with tarfile.open(t) as tar:
            for m in tar.getmembers():
                found[f"{t.relative_to(out)}#{m.name}"] = tar.extractfile(m).read()
    return found


def provenance(data: bytes) -> dict:
    return json.loads(Image.open(io.BytesIO(data)).text["colorjob"])


# ---- shards -----------------------------------------------------------------------------------
def test_the_shard_count_follows_the_job_size_and_is_kept():
    assert choose_shards(1) == 1 and choose_shards(2048) == 1 and choose_shards(2049) == 2
    assert choose_shards(10**6) == 512 and choose_shards(10**9) == 65536


@pytest.mark.parametrize("layout", ["mirror", "shards"])
def test_the_manifest_read_as_one_dataset_equals_the_files(tmp_path, chars, model, layout):
    sketches(tmp_path / "in", chars, 12)
    result = execute(cfg(tmp_path, model, layout=layout, shards=4))
    assert result.shards == 4 and result.counts == {"ok": 36, "skipped": 0, "failed": 0}
    m = read_manifest(tmp_path / "out")
    assert len(m) == 36 and (m["status"] == "ok").all()
    assert len({p.name for p in (tmp_path / "out" / "manifest").iterdir()}) > 1  # several shards
    if layout == "mirror":
        made = files(tmp_path / "out")
        assert set(m["output"]) == set(made)
        for r in m.itertuples():
            meta = provenance((tmp_path / "out" / r.output).read_bytes())
            assert meta["model_id"] == r.model_id and meta["values"] == {"hair": r.hair, "shirt": r.shirt}  # fmt: skip
    else:
        members = tar_members(tmp_path / "out")
        assert set(m["output"]) == {k for k in members if k.endswith(".png")}
        for r in m.itertuples():
            side = json.loads(members[r.output[: -len(".png")] + ".json"])
            assert side["sketch"] == r.input and side["conditions"] == {"hair": r.hair, "shirt": r.shirt}  # fmt: skip
            assert provenance(members[r.output])["model_id"] == r.model_id
        assert not list((tmp_path / "out").glob("s0*"))  # no loose files in this layout
    # a rerun does nothing, writes nothing
    before = written(tmp_path / "out")
    again = execute(cfg(tmp_path, model, layout=layout))
    assert again.counts == {"ok": 0, "skipped": 36, "failed": 0}
    assert written(tmp_path / "out") == before


@pytest.mark.parametrize("layout", ["mirror", "shards"])
def test_a_rerun_after_one_shards_outputs_changed_redoes_that_shard_only(tmp_path, chars, model, layout):  # fmt: skip
    sketches(tmp_path / "in", chars, 16)
    execute(cfg(tmp_path, model, layout=layout, shards=4))
    m = read_manifest(tmp_path / "out")
    shard_of = pd.read_parquet(tmp_path / "out" / "manifest")[["input", "shard"]].drop_duplicates()
    victim = int(shard_of["shard"].astype(int).iloc[0])
    ins = set(shard_of.loc[shard_of["shard"].astype(int) == victim, "input"])
    out = tmp_path / "out"
    if layout == "mirror":
        gone = [o for i, o in zip(m["input"], m["output"], strict=True) if i in ins][:2]
        for o in gone:
            (out / o).unlink()
    else:
        tar = next(iter((out / "shards").rglob(f"shard-{victim:05d}.tar")))
        tar.write_bytes(tar.read_bytes()[:-2048])  # damaged
    before = files(out)
    result = execute(cfg(tmp_path, model, layout=layout))
    after = files(out)
    changed = {k for k in after if after[k] != before.get(k)}
    if layout == "mirror":
        assert result.counts["ok"] == 2 and changed == set(gone)
    else:
        assert result.counts["ok"] == 3 * len(ins) and changed == {str(tar.relative_to(out))}


def test_changing_the_model_or_grid_redoes_all_in_shards_and_what_changed_in_mirror(tmp_path, chars, model, other_model):  # fmt: skip
    sketches(tmp_path / "in", chars, 6)
    for layout in ("mirror", "shards"):
        out = tmp_path / layout
        execute(cfg(tmp_path, model, layout=layout, output=str(out)))
        new_grid = grid(
            tmp_path, "hair,shirt\nblack,red\nblonde,navy\nbrown,yellow\n"
        )  # one row changed
        r = execute(cfg(tmp_path, model, layout=layout, output=str(out), conditions=new_grid))
        assert r.counts["ok"] == (6 if layout == "mirror" else 18), layout
        r = execute(cfg(tmp_path, other_model, layout=layout, output=str(out), conditions=new_grid))
        assert r.counts["ok"] == 18 and r.counts["skipped"] == 0, layout


def test_a_redrawn_sketch_with_the_same_name_is_coloured_again(tmp_path, chars, model):
    paths = sketches(tmp_path / "in", chars, 3)
    execute(cfg(tmp_path, model))
    before = files(tmp_path / "out")
    Image.open(chars / "sketches" / "char_0002.png").save(paths[1])  # another drawing, same name
    r = execute(cfg(tmp_path, model))
    assert r.counts == {"ok": 3, "skipped": 6, "failed": 0}
    after = files(tmp_path / "out")
    assert {k for k in after if after[k] != before[k]} == {f"s001__{v}.png" for v in ("black_red", "blonde_navy", "blue_green")}  # fmt: skip
    os.utime(paths[2])  # touched, not changed: its SHA-256 says it is the same drawing
    assert execute(cfg(tmp_path, model)).counts["ok"] == 0


def test_a_dry_run_says_what_a_run_would_do_and_writes_nothing(tmp_path, chars, model, other_model, capsys):  # fmt: skip
    paths = sketches(tmp_path / "in", chars, 8)
    fresh = execute(cfg(tmp_path, model), dry_run=True)
    assert fresh.dry_run and fresh.counts["todo"] == 24 and fresh.reasons == {"new": 24}
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))
    execute(cfg(tmp_path, model))
    Image.open(chars / "sketches" / "char_0002.png").save(paths[0])
    (tmp_path / "out" / "s003__black_red.png").unlink()
    snapshot = {
        p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()
    }  # all
    capsys.readouterr()
    assert colorjob(["batch", "--input", str(tmp_path / "in"), "--conditions", grid(tmp_path), "--model", model,
                     "--output", str(tmp_path / "out"), "--dry-run"]) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert "(dry run)" in said and "20 already done, 4 to make" in said
    assert "3 to make: its sketch changed since" in said and "1 to make: the file changed or went missing since" in said  # fmt: skip
    assert {
        p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()
    } == snapshot
    real = execute(cfg(tmp_path, model))
    assert real.counts["ok"] == 4  # the dry run's figure
    again = execute(cfg(tmp_path, other_model), dry_run=True)
    assert again.reasons == {"model": 24}


# ---- killed and interrupted runs -----------------------------------------------------------------
def kill_tree(proc: subprocess.Popen) -> None:
    import signal

    import psutil

    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(tree, timeout=60)
    proc.wait()


@pytest.mark.slow
def test_a_killed_shards_job_redoes_only_the_shards_it_did_not_finish(tmp_path, chars, model):
    sketches(tmp_path / "in", chars, 48)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "colorjob", "batch", "--input", str(tmp_path / "in"), "--conditions",
           str(ROOT / "configs" / "grid.csv"), "--model", model, "--output", str(out), "--layout", "shards",
           "--set", "shards=8", "--set", "executor=local", "--set", "workers=1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and len(list((out / "manifest").rglob("*.parquet"))) < 2:  # fmt: skip
            time.sleep(0.02)
        assert proc.poll() is None, "the job ended before it could be killed"
    finally:
        kill_tree(proc)
    # finished: a shard whose manifest part is written (its last step: tar, ledger, manifest)
    done = [int(p.parent.name.split("=")[1]) for p in (out / "manifest").rglob("part.parquet")]
    finished = {p.relative_to(out): p.stat().st_mtime_ns for p in (out / "shards").rglob("*.tar") if int(p.stem.split("-")[1]) in done}  # fmt: skip
    assert 2 <= len(finished) < 8
    r = execute(
        cfg(tmp_path, model, conditions=str(ROOT / "configs" / "grid.csv"), layout="shards")
    )
    assert r.counts["failed"] == 0 and r.counts["ok"] + r.counts["skipped"] == 48 * 25
    now = {p.relative_to(out): p.stat().st_mtime_ns for p in (out / "shards").rglob("*.tar")}
    assert len(now) == 8 and all(now[k] == v for k, v in finished.items())  # finished: untouched
    m = read_manifest(out)
    assert len(m) == 48 * 25 == len(set(m["output"])) and set(m["status"]) == {"ok"}
    # the finished shards' rows are the killed run's, untouched; the rest this run's
    by_run = m.groupby("run_id").size()
    assert sorted(by_run) == sorted([r.counts["skipped"], r.counts["ok"]])


@pytest.mark.slow
def test_an_interrupted_rerun_with_another_model_leaves_a_manifest_that_agrees_with_the_files(tmp_path, chars, model, other_model):  # fmt: skip
    import signal

    sketches(tmp_path / "in", chars, 40)
    out = tmp_path / "out"
    execute(cfg(tmp_path, model, conditions=str(ROOT / "configs" / "grid.csv"), shards=4))
    cmd = [sys.executable, "-m", "colorjob", "batch", "--input", str(tmp_path / "in"), "--conditions",
           str(ROOT / "configs" / "grid.csv"), "--model", other_model, "--output", str(out),
           "--set", "executor=local", "--set", "workers=1"]  # fmt: skip
    started = time.time()
    # Ctrl-C as at a terminal: a test run started in the background (`cmd &`) has SIGINT ignored,
    # which the child would inherit (and rightly run on through an interrupt)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip

    def begun() -> bool:  # the other model has recorded outputs: a progress part, or a shard redone
        ledger = out / ".colorjob" / "ledger"
        return bool(list(ledger.rglob("progress-*.parquet"))) or any(
            p.stat().st_mtime > started for p in ledger.rglob("part.parquet")
        )

    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not begun():
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted" in err, (
        proc.returncode,
        "the job ended before the interrupt" if proc.returncode == 0 else err[-2000:],
    )
    m = read_manifest(out)
    for r in m.itertuples():  # every row the manifest has says who made the file there
        assert provenance((out / r.output).read_bytes())["model_id"] == r.model_id
    makers = {provenance((out / o).read_bytes())["model_id"] for o in files(out)}
    assert len(makers) == 2  # interrupted midway: some files by each model
    assert len(m) < 1000  # the shard it was working on says nothing until it is finished
    final = execute(cfg(tmp_path, other_model, conditions=str(ROOT / "configs" / "grid.csv")))
    assert final.counts["failed"] == 0
    m = read_manifest(out)
    assert len(m) == 1000 and all(provenance((out / o).read_bytes())["model_id"] == mid for o, mid in zip(m["output"], m["model_id"], strict=True))  # fmt: skip


# ---- what is an input -------------------------------------------------------------------------------
def test_folder_links_are_never_followed_and_file_links_only_inside_the_input(tmp_path, chars, model, caplog):  # fmt: skip
    sketches(tmp_path / "in", chars, 2, names=["a.png", "sub/b.png"])
    (tmp_path / "in" / "sub" / "loop").symlink_to("..")  # ln -s .. in/sub/loop
    outside = tmp_path / "elsewhere"
    sketches(outside, chars, 1, names=["x.png"])
    (tmp_path / "in" / "away.png").symlink_to(outside / "x.png")  # leaves the input
    (tmp_path / "in" / "inner.png").symlink_to(tmp_path / "in" / "a.png")  # stays inside
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (32, 32), "white").save(out / "old__output.png")
    (tmp_path / "in" / "outs").symlink_to(out)  # a folder link into the output
    (tmp_path / "in" / "one_out.png").symlink_to(out / "old__output.png")  # a file link into it
    with caplog.at_level("WARNING"):
        m = execute(cfg(tmp_path, model)).read_manifest()
    assert sorted(set(m["input"])) == ["a.png", "inner.png", "sub/b.png"]  # each once, no loop
    said = caplog.text
    assert "folder link(s)" in said and "sub/loop" in said and "outs" in said
    assert "leaving the input folder" in said and "away.png" in said
    assert "into the output folder" in said and "one_out.png" in said
    m = execute(cfg(tmp_path, model, follow_links=True, output=str(tmp_path / "out2"))).read_manifest()  # fmt: skip
    # (out/ is not this run's output: a link into it is followed like any other)
    assert sorted(set(m["input"])) == ["a.png", "away.png", "inner.png", "one_out.png", "sub/b.png"]


def test_colorjobs_own_state_and_temporaries_are_not_inputs_and_say_so(tmp_path, chars, model, caplog):  # fmt: skip
    sketches(tmp_path / "in", chars, 1, names=["a.png"])
    (tmp_path / "in" / ".colorjob").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "in" / ".colorjob" / "x.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "in" / ".colorjob-tmp-p1@abcdef-0123456789ab-y.png")
    with caplog.at_level("WARNING"):
        m = execute(cfg(tmp_path, model)).read_manifest()
    assert set(m["input"]) == {"a.png"}
    assert "colorjob's state folders" in caplog.text and "temporary file(s)" in caplog.text


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_long_names_fit_with_their_temporary_files(tmp_path, chars, model, fmt):
    name = "é" * 110 + "_long.png"  # 225 bytes
    assert len(name.encode()) >= 220
    sketches(tmp_path / "in", chars, 1, names=[name])
    long_variant = "hair,shirt,name\nblack,red," + "v" * 60 + "\nblonde,navy,w\n"
    m = execute(cfg(tmp_path, model, conditions=grid(tmp_path, long_variant), format=fmt)).read_manifest()  # fmt: skip
    assert (m["status"] == "ok").all(), m["error"].tolist()
    assert all(len(Path(o).name.encode()) <= 255 and (tmp_path / "out" / o).is_file() for o in m["output"])  # fmt: skip


def test_a_grid_that_repeats_a_column_is_refused(tmp_path, chars, model, capsys):
    sketches(tmp_path / "in", chars, 1)
    assert colorjob(["batch", "--input", str(tmp_path / "in"), "--conditions", grid(tmp_path, "hair,shirt,hair\nblack,red,blue\n"),
                     "--model", model, "--output", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "hair more than once" in capsys.readouterr().err


# ---- full disks and the lock -----------------------------------------------------------------------
def _namespace_ok() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0  # fmt: skip


def test_a_full_disk_is_one_line_and_keeps_what_finished(tmp_path, chars, model):
    """A 1 MB tmpfs (in a user namespace) fills up halfway through the job."""
    if not _namespace_ok():
        pytest.skip("needs unshare -rm (a user namespace) to mount a small tmpfs")
    sketches(tmp_path / "in", chars, 60)
    disk = tmp_path / "disk"
    disk.mkdir()
    args = ["batch", "--input", str(tmp_path / "in"), "--conditions", str(ROOT / "configs" / "grid.csv"),
            "--model", model, "--output", str(disk / "out"), "--set", "executor=local"]  # fmt: skip
    count = tmp_path / "count.py"
    count.write_text(
        "import glob, sys\nimport pandas as pd\n"
        "parts = glob.glob(sys.argv[1] + '/.colorjob/ledger/*/*.parquet')\n"
        "print('RECORDED', sum(int((pd.read_parquet(p)['status'] == 'ok').sum()) for p in parts))\n"
    )
    script = (
        f"mount -t tmpfs -o size=1m none {disk} && {sys.executable} -m colorjob {' '.join(map(repr, args))}; "
        f"rc=$?; {sys.executable} {count} {disk}/out; exit $rc"
    )
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in r.stderr, r.stderr  # fmt: skip
    recorded = int(r.stdout.split("RECORDED")[-1].split()[0])
    assert 0 < recorded < 60 * 25


def _contend(output: str, n: int, log: str, broken: bool = False) -> None:
    from colorjob.batch.grid import BatchError
    from colorjob.batch.lock import OutputLock

    class Careless(OutputLock):  # the positive control: takes the folder whatever is there
        def acquire(self):
            pass

    for i in range(n):
        lock = (Careless if broken else OutputLock)(output, f"{os.getpid()}-{i}")
        try:
            lock.acquire()
        except BatchError:
            time.sleep(0.001)
            continue
        t0 = time.monotonic()
        time.sleep(0.002)
        t1 = time.monotonic()
        lock.release()
        with open(log, "a") as f:
            f.write(f"{t0} {t1}\n")


def _overlaps(tmp_path: Path, broken: bool) -> tuple[int, int]:
    out = tmp_path / f"out-{broken}"
    out.mkdir()
    log = tmp_path / f"held-{broken}.txt"
    procs = [mp.get_context("spawn").Process(target=_contend, args=(str(out), 400, str(log), broken)) for _ in range(3)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    held = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    return len(held), sum(1 for a, b in zip(held, held[1:], strict=False) if b[0] < a[1])


@pytest.mark.slow
def test_the_lock_is_exclusive_under_contention(tmp_path):
    held, overlaps = _overlaps(tmp_path, broken=False)
    assert held >= 100 and overlaps == 0
    held, overlaps = _overlaps(tmp_path, broken=True)  # a lock that is not one: the test sees it
    assert overlaps > 0


def test_the_lock_of_a_killed_run_goes_with_its_process(tmp_path, chars, model):
    """SIGSTOP a run once its lock exists (no timing guess): a second run is refused while it
    lives, and takes the folder as soon as it is killed."""
    import signal

    sketches(tmp_path / "in", chars, 30)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "colorjob", "batch", "--input", str(tmp_path / "in"), "--conditions",
           str(ROOT / "configs" / "grid.csv"), "--model", model, "--output", str(out), "--set", "executor=local"]  # fmt: skip
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while first.poll() is None and not (out / ledger.STATE / "lock.json").exists():
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        with pytest.raises(Exception, match="another colorjob batch run is writing"):
            execute(cfg(tmp_path, model))
        first.kill()
        first.wait()
        r = execute(cfg(tmp_path, model, conditions=str(ROOT / "configs" / "grid.csv")))
        assert r.counts["failed"] == 0
    finally:
        first.kill()


# ---- the driver holds no per-output state --------------------------------------------------------
def test_the_driver_reads_one_shard_at_a_time(tmp_path, chars, model, monkeypatch):
    """Deciding reads each shard's ledger part once, from its own task; nothing reads them all."""
    from colorjob.batch import shard

    sketches(tmp_path / "in", chars, 20)
    execute(cfg(tmp_path, model, shards=8))
    reads = []
    real = ledger.read_shard

    def spy(output, s):
        reads.append(s)
        return real(output, s)

    monkeypatch.setattr(ledger, "read_shard", spy)
    monkeypatch.setattr(shard.ledger, "read_shard", spy)
    r = execute(cfg(tmp_path, model))
    assert r.counts["skipped"] == 60 and sorted(reads) == sorted(set(reads))  # once per shard


def test_the_default_model_batch_works_in_both_layouts_on_the_examples(tmp_path):
    for layout in ("mirror", "shards"):
        r = execute(BatchConfig(input=str(ROOT / "examples" / "sketches"), conditions=grid(tmp_path), model=str(DEFAULT_MODEL),
                                output=str(tmp_path / layout), layout=layout, executor="local"))  # fmt: skip
        assert r.counts["failed"] == 0 and r.counts["ok"] > 0
