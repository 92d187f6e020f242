"""Batch you can trust: names that never collide, provenance decides "done", full preflight,
one run per output folder, durable writes, bounded decode memory (real files, real runs)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import read_manifest
from PIL import Image

from colorjob import storage, synth
from colorjob.batch import BatchConfig, BatchError, execute
from colorjob.batch.lock import LOCK
from colorjob.cli import main as colorjob_main
from colorjob.export import export_generator, read_model_info
from colorjob.imaging import DECODE_BYTES_PER_PIXEL
from colorjob.models import Generator


def main(argv):
    return colorjob_main(["batch", *argv])


def run(cfg):
    return execute(cfg).read_manifest()


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(trained):
    return str(Path(trained[0].out) / "best")


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """Another generator with the same vocabulary and size: a different model_id."""
    torch.manual_seed(123)
    return str(export_generator(Generator(13, 3, 32, 8), synth.vocabulary(), tmp_path_factory.mktemp("m2") / "best"))  # fmt: skip


def grid_file(
    tmp_path: Path, text: str = "hair,shirt,name\nblack,red,a__b\nblonde,green,b\n"
) -> str:
    p = tmp_path / "grid.csv"
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


def sketch(path: Path, size: tuple[int, int], chars: Path, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(chars / "sketches" / "char_0002.png").convert("RGB").resize(size)
    img.save(path, format=fmt or ("PNG" if path.suffix.lower() != ".jpg" else "JPEG"))


def outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*__*") if ".colorjob" not in p.parts and p.is_file())


def cfg(tmp_path: Path, model: str, grid: str, **kw) -> BatchConfig:
    base = dict(input=str(tmp_path / "in"), conditions=grid, model=model, output=str(tmp_path / "out"), executor="local")  # fmt: skip
    return BatchConfig(**(base | kw))


COLLISION_SETS = [
    "猫.png", "犬.png",  # all-Unicode names
    "a b.png", "a_b.png",  # a space vs an underscore
    "a.png", "a.png.png", "a.jpg", "._a.png",  # extensions and a leading dot
    "dir a/x.png", "dir_a/x.png",  # folders
    "x.png", "x__a.png",  # the separator
]  # fmt: skip


def test_the_collision_sets_give_one_distinct_file_per_sketch_and_variant(tmp_path, chars, model):
    sizes = {}
    for i, rel in enumerate(COLLISION_SETS):
        sizes[rel] = (33 + i, 40 + 2 * i)  # each sketch its own size: outputs say whose they are
        sketch(tmp_path / "in" / rel, sizes[rel], chars)
    m = run(cfg(tmp_path, model, grid_file(tmp_path)))
    out = tmp_path / "out"
    assert len(m) == len(COLLISION_SETS) * 2 and (m["status"] == "ok").all()
    assert m["output"].is_unique and len(outputs(out)) == len(m)
    for r in m.itertuples():
        assert Image.open(out / r.output).size == sizes[r.input] == (r.width, r.height), r
    made = {r.output for r in m.itertuples()}
    assert {"猫__a_b.png", "犬__b.png", "a b__b.png", "a_b__b.png", "a__b.png", "a.png.png__b.png",
            "a.jpg__b.png", "._a__b.png", "dir a/x__b.png", "dir_a/x__b.png", "x__a_b.png",
            "x__a__b.png"} <= made  # fmt: skip


def test_names_depend_only_on_the_sketchs_own_path(tmp_path, chars, model):
    sketch(tmp_path / "in" / "a.png", (32, 32), chars)
    grid = grid_file(tmp_path)
    threads = torch.get_num_threads()
    first = run(cfg(tmp_path, model, grid))
    assert torch.get_num_threads() == threads  # running in this process changes nothing global
    before = {p.name: p.stat().st_mtime_ns for p in outputs(tmp_path / "out")}
    sketch(tmp_path / "in" / "a.jpg", (32, 32), chars)  # a neighbour appears
    second = run(cfg(tmp_path, model, grid))
    assert set(first["output"]) == {"a__a_b.png", "a__b.png"}
    assert second.set_index("input")["status"].to_dict() == {"a.png": "skipped", "a.jpg": "ok"}
    assert set(second["output"]) == set(first["output"]) | {"a.jpg__a_b.png", "a.jpg__b.png"}
    after = {p.name: p.stat().st_mtime_ns for p in outputs(tmp_path / "out")}
    assert {k: after[k] for k in before} == before  # nothing recomputed, nothing orphaned


def test_outputs_never_become_inputs(tmp_path, chars, model, capsys):
    sketch(tmp_path / "in" / "s.png", (32, 32), chars)
    grid = grid_file(tmp_path)
    args = ["--input", str(tmp_path / "in"), "--conditions", grid, "--model", model, "--set", "executor=local"]  # fmt: skip
    assert main([*args, "--output", str(tmp_path / "in")]) == 2
    assert "is the input folder" in capsys.readouterr().err
    assert main([*args, "--output", str(tmp_path / "in" / ".." / "in")]) == 2
    inside = str(tmp_path / "in" / ".." / "in" / "out")  # written inside the input, twice
    for _ in range(2):
        assert main([*args, "--output", inside]) == 0
        m = read_manifest(tmp_path / "in" / "out")
        assert list(m["input"]) == ["s.png", "s.png"]  # the outputs and the sheet are not sketches
    assert len(outputs(tmp_path / "in" / "out")) == 2


def test_only_complete_outputs_of_this_model_and_these_values_count_as_done(
    tmp_path, chars, model, other_model
):
    for i in range(3):
        sketch(tmp_path / "in" / f"s{i}.png", (32, 32), chars)
    grid = grid_file(tmp_path, "hair,shirt,name\nblack,red,v1\nblonde,green,v2\n")
    run(cfg(tmp_path, model, grid))
    out = tmp_path / "out"
    (out / "s0__v1.png").write_bytes(b"")  # a 0-byte leftover
    corrupt = out / "s1__v1.png"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)  # same size, other bytes
    corrupt.write_bytes(bytes(data))
    touched = out / "s2__v1.png"
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))  # same bytes, other time
    m = run(cfg(tmp_path, model, grid)).set_index("output")
    assert m.loc["s0__v1.png", "status"] == "ok" and m.loc["s1__v1.png", "status"] == "ok"
    assert m.loc["s2__v1.png", "status"] == "skipped"
    assert (m["status"] == "skipped").sum() == 4
    for p in outputs(out):
        Image.open(p).load()

    # another model: everything is made again, and the manifest says by which model
    m2 = run(cfg(tmp_path, other_model, grid))
    assert (m2["status"] == "ok").all() and len(m2) == 6
    assert set(m2["model_id"]) == {read_model_info(other_model)["model_id"]}
    # the same variant name with other values: that variant is made again, the other is not
    changed = grid_file(tmp_path, "hair,shirt,name\nblue,navy,v1\nblonde,green,v2\n")
    m3 = run(cfg(tmp_path, other_model, changed)).set_index("output")
    assert set(m3.loc[m3.index.str.contains("__v1"), "status"]) == {"ok"}
    assert set(m3.loc[m3.index.str.contains("__v2"), "status"]) == {"skipped"}
    assert set(m3["hair"]) == {"blue", "blonde"}


def test_a_finished_rerun_is_a_quiet_exit_0_with_a_complete_manifest(
    tmp_path, chars, model, capsys
):
    for i in range(2):
        sketch(tmp_path / "in" / f"s{i}.png", (32, 32), chars)
    args = ["--input", str(tmp_path / "in"), "--conditions", grid_file(tmp_path), "--model", model,
            "--output", str(tmp_path / "out"), "--set", "executor=local"]  # fmt: skip
    assert main(args) == 0
    first = read_manifest(tmp_path / "out")
    (tmp_path / "out" / "contact_sheet.png").unlink()
    capsys.readouterr()
    parts = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.parquet")}
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no warning, no traceback
    assert (
        "4 already done, 0 to make" in captured.out and "0 ok, 4 skipped, 0 failed" in captured.out
    )
    # nothing changed: no shard was touched, the manifest is the run's that made the files
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.parquet")} == parts
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "out"), first)
    assert (tmp_path / "out" / "contact_sheet.png").is_file()


def _tamper(src: Path, dst: Path, change) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "model.json").read_text())
    change(meta, dst)
    (dst / "model.json").write_text(json.dumps(meta))
    return dst


def _truncate(meta: dict, d: Path) -> None:
    w = d / "generator.safetensors"
    w.write_bytes(w.read_bytes()[:-100])


def _swap_weights(other: str):
    def change(meta: dict, d: Path) -> None:
        shutil.copyfile(Path(other) / "generator.safetensors", d / "generator.safetensors")

    return change


TAMPERED = {
    "ngf": (lambda m, d: m.update(ngf=16), "does not match the shape"),
    "image_size": (lambda m, d: m.update(image_size=64), "does not match the shape"),
    "image_size_100": (lambda m, d: m.update(image_size=100), "power of two"),
    "out_channels": (lambda m, d: m.update(out_channels=2), "out_channels must be 3"),
    "out_channels_layers": (lambda m, d: m.update(out_channels=4), "does not match the shape"),
    "in_channels": (lambda m, d: m.update(in_channels=12), "does not fit its vocabulary"),
    "truncated": (_truncate, "truncated"),
    "missing_key": (lambda m, d: m.pop("conditions"), "lacks 'conditions'"),
    "string_version": (lambda m, d: m.update(format_version="1"), "format_version must be int"),
    "dtype": (lambda m, d: m.update(dtype="float64"), "dtype must be one of"),
}


@pytest.mark.parametrize("case", [*TAMPERED, "model_id"])
def test_a_tampered_model_stops_before_any_work(tmp_path, chars, model, other_model, capsys, case):
    change, text = TAMPERED.get(
        case, (_swap_weights(other_model), "do not belong to this model.json")
    )
    bad = _tamper(Path(model), tmp_path / "bad", change)
    sketch(tmp_path / "in" / "s.png", (32, 32), chars)
    rc = main(["--input", str(tmp_path / "in"), "--conditions", grid_file(tmp_path), "--model", str(bad),
               "--output", str(tmp_path / "out"), "--set", "executor=ray"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and text in err, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing was written, no pipeline started


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hair,shirt\nblack,red\nblonde,green,red\n", "line 3: 3 fields, but the header has 2"),
        ("hair,shirt\nblack,r\xe9d\n".encode("latin-1"), "line 2 is not UTF-8 text (byte 0xe9)"),
        (
            "hair,shirt,name\nblack,red,Red\nblonde,green,red\n",
            "row 3: variant name 'red' differs from row 2's 'Red' only in letter case",
        ),  # fmt: skip
        ("hair,shirt\n", "the grid has no rows"),
    ],
)
def test_grid_errors_name_the_line_and_exit_2(tmp_path, chars, model, capsys, text, message):
    sketch(tmp_path / "in" / "s.png", (32, 32), chars)
    rc = main(["--input", str(tmp_path / "in"), "--conditions", grid_file(tmp_path, text), "--model", model,
               "--output", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err


def test_sketches_whose_outputs_clash_only_in_case_are_refused(tmp_path, chars, model):
    sketch(tmp_path / "in" / "Cat.png", (32, 32), chars)
    sketch(tmp_path / "in" / "cat.png", (32, 32), chars)
    with pytest.raises(BatchError, match=r"(?s)1 pair\(s\) of sketches.*Cat.png  and  cat.png"):
        execute(cfg(tmp_path, model, grid_file(tmp_path)))
    assert not outputs(tmp_path / "out")


def test_a_second_run_on_the_same_output_is_refused_and_the_first_finishes(tmp_path, chars, model):
    """The first run is stopped (SIGSTOP) once its lock exists, so the second surely meets it
    (no guess at how slow the machine is); continued, the first finishes every output."""
    import signal

    for i in range(6):
        sketch(tmp_path / "in" / f"s{i:02d}.png", (128, 128), chars)
    cmd = [sys.executable, "-m", "colorjob.batch", "--input", str(tmp_path / "in"), "--conditions",
           str(ROOT / "configs" / "grid.csv"), "--model", model, "--output", str(tmp_path / "out"),
           "--set", "executor=local", "--set", "workers=1"]  # fmt: skip
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "out" / LOCK).exists() and time.time() < deadline and first.poll() is None:  # fmt: skip
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, "the first run ended before its lock was seen"
        second = cfg(tmp_path, model, str(ROOT / "configs" / "grid.csv"))
        with pytest.raises(
            BatchError, match=f"another colorjob batch run is writing to .*pid {first.pid}"
        ):
            execute(second)
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err
    m = read_manifest(tmp_path / "out")
    assert len(m) == 6 * 25 and (m["status"] == "ok").all()
    assert len(outputs(tmp_path / "out")) == 6 * 25
    assert not list((tmp_path / "out").rglob("*.colorjob-tmp-*"))
    assert not (tmp_path / "out" / LOCK).exists()


def test_a_stale_lock_of_a_dead_run_is_taken_over(tmp_path, chars, model):
    sketch(tmp_path / "in" / "s.png", (32, 32), chars)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "out" / LOCK
    lock.parent.mkdir(parents=True)
    import socket

    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "process_started": time.time() - 5,
                                "started": time.time() - 5, "heartbeat": time.time(), "run_id": "dead"}))  # fmt: skip
    torn = tmp_path / "out" / ".colorjob" / "tmp" / "20260101-000000-deadbeef" / ".colorjob-tmp-20260101-000000-deadbeef-0123456789ab-s__b.png"  # fmt: skip
    torn.parent.mkdir(parents=True)
    torn.write_bytes(b"torn")
    m = run(cfg(tmp_path, model, grid_file(tmp_path)))
    assert (m["status"] == "ok").all() and not lock.exists() and not torn.exists()
    assert not list((tmp_path / "out").rglob("*.colorjob-tmp-*"))


def test_local_writes_sync_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))  # fmt: skip
    fs, root = storage.resolve(tmp_path / "o")
    storage.write_atomic(fs, storage.join(root, "x.png"), b"data")
    assert (tmp_path / "o" / "x.png").read_bytes() == b"data"
    assert any(".colorjob-tmp-" in p for p in synced)  # the data, before the rename
    assert str(tmp_path / "o") in synced  # the rename itself


def test_decoding_stays_within_the_documented_memory_per_pixel(tmp_path):
    big = tmp_path / "big16.png"
    a = np.random.default_rng(0).integers(0, 65535, (2500, 3200), dtype=np.uint16)
    Image.fromarray(a).save(big, compress_level=1)
    probe = (  # Linux: writing 5 to clear_refs resets the peak (VmHWM) to the current RSS
        "import sys\n"
        "from colorjob.batch.stages import decode_sketch\n"
        "def kb(key):\n"
        "    return next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith(key))\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = kb('VmRSS:')\n"
        "decode_sketch(data, 256, 10**9, 8)\n"
        "print((kb('VmHWM:') - base) * 1024)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe, str(big)], capture_output=True, text=True, check=True
    )
    peak = int(r.stdout.strip())
    assert 0 < peak <= DECODE_BYTES_PER_PIXEL * a.size, (peak, peak / a.size)
