"""Batch colorization on real Ray Data with a tiny model trained in a fixture."""

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import read_manifest
from PIL import Image

from colorjob.batch import BatchConfig, BatchError, execute, read_grid, safe_name
from colorjob.conditions import ConditionVocab
from colorjob.export import load_generator, read_model_info

ROOT = Path(__file__).resolve().parents[1]


def run(cfg):
    return execute(cfg).read_manifest()


@pytest.fixture(scope="module")
def model(trained):
    return str(Path(trained[0].out) / "best")


@pytest.fixture
def grid(tmp_path):
    p = tmp_path / "grid.csv"
    p.write_text("hair,shirt\nblack,red\nblonde,green\nblue,navy\n")
    return p


def make_sketches(root: Path, chars: Path) -> dict[str, tuple[int, int]]:
    """Good sketches of mixed sizes, modes and folders -> their (width, height)."""
    src = Image.open(chars / "sketches" / "char_0000.png").convert("RGB")
    (root / "sub" / "deeper").mkdir(parents=True)
    images = {
        "a.png": src,
        "wide.png": src.resize((90, 40)).convert("RGBA"),
        "sub/tall.jpg": src.resize((30, 70)),
        "sub/gray.png": src.convert("L").resize((50, 50)),
        "sub/deeper/pal.png": src.convert("P"),
        "sub/deeper/deep16.png": Image.fromarray(
            np.asarray(src.convert("L")).astype(np.uint16) * 257
        ),
        "photo.webp": src.resize((64, 48)),
    }
    for rel, im in images.items():
        im.save(root / rel)
    return {rel: im.size for rel, im in images.items()}


def test_mixed_sketches_times_grid_every_output_at_its_own_size(
    local_ray, tmp_path, chars, model, grid
):
    sizes = make_sketches(tmp_path / "in", chars)
    (tmp_path / "in" / "notes.txt").write_text("not a sketch")  # ignored: not an image name
    manifest = run(
        BatchConfig(
            input=str(tmp_path / "in"),
            conditions=str(grid),
            model=model,
            output=str(tmp_path / "out"),
        )
    )
    out = tmp_path / "out"
    assert len(manifest) == len(sizes) * 3 and (manifest["status"] == "ok").all()
    assert set(manifest.columns) >= {
        "input",
        "output",
        "status",
        "error",
        "hair",
        "shirt",
        "variant",
        "model_id",
        "width",
        "height",
    }
    assert manifest["model_id"].eq(read_model_info(model)["model_id"]).all()
    for r in manifest.itertuples():
        img = Image.open(out / r.output)
        assert img.size == sizes[r.input] == (r.width, r.height), r.output
        assert img.mode == "RGB"
    assert (out / "sub" / "deeper" / "pal__blonde_green.png").is_file()
    assert (out / "wide__black_red.png").is_file()
    pd.testing.assert_frame_equal(read_manifest(out), manifest, check_dtype=False)
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size == (4 * 96, 7 * 96)


def test_bad_files_fail_alone_and_reruns_skip_and_restore(local_ray, tmp_path, chars, model, grid):
    make_sketches(tmp_path / "in", chars)
    bad = tmp_path / "in" / "bad"
    bad.mkdir()
    (bad / "zero.png").write_bytes(b"")
    (bad / "text.png").write_text("hello, not a png")
    good = (tmp_path / "in" / "a.png").read_bytes()
    (bad / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("L", (3000, 1000), 255).save(bad / "bomb.png")  # > 2 x max_pixels: PIL's own guard
    Image.new("L", (1500, 1000), 255).save(bad / "huge.png")  # > max_pixels: colorjob's guard
    Image.new("RGB", (1, 1), "white").save(bad / "dot.png")
    cfg = BatchConfig(
        input=str(tmp_path / "in"),
        conditions=str(grid),
        model=model,
        output=str(tmp_path / "out"),
        max_pixels=1_000_000,
    )
    m = run(cfg)
    failed = m[m["status"] == "failed"]
    assert set(failed["input"]) == {
        f"bad/{n}"
        for n in ("zero.png", "text.png", "truncated.png", "bomb.png", "huge.png", "dot.png")
    }
    assert (failed.groupby("input").size() == 3).all()
    reasons = failed.drop_duplicates("input").set_index("input")["error"]
    assert "0 bytes" in reasons["bad/zero.png"]
    assert "not an image" in reasons["bad/text.png"]
    assert "truncated" in reasons["bad/truncated.png"].lower()
    assert "decompression bomb" in reasons["bad/bomb.png"]
    assert "over the 1 MP limit" in reasons["bad/huge.png"]
    assert "too small" in reasons["bad/dot.png"]
    assert (m["status"] == "ok").sum() == 7 * 3
    out = tmp_path / "out"
    assert not list(out.rglob("bad/*"))  # nothing half-written for bad inputs

    # a rerun skips everything that is done (and tries the bad files again)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*__*.*")}
    m2 = run(cfg)
    assert (m2["status"] == "skipped").sum() == 21 and (m2["status"] == "ok").sum() == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*__*.*")} == mtimes
    sizes = m[m["status"] == "ok"].set_index("output")[["width", "height"]]
    skipped = m2[m2["status"] == "skipped"].set_index("output")[["width", "height"]]
    pd.testing.assert_frame_equal(skipped.sort_index(), sizes.sort_index())  # exact, not just > 0

    # delete half the outputs and leave a torn temp file: only the missing ones are made again
    done = sorted(out.rglob("*__*.png"))
    gone = done[::2]
    for p in gone:
        p.unlink()
    killed = out / ".colorjob" / "tmp" / "20260101-000000-deadbeef"  # a killed run's temporaries
    killed.mkdir(parents=True)
    (killed / ".colorjob-tmp-20260101-000000-deadbeef-0123456789ab-a__black_red.png").write_bytes(b"torn")  # fmt: skip
    foreign = out / "notes" / ".colorjob-tmp-p1@abcdef-0123456789ab-last.pt"  # not batch's: kept
    foreign.parent.mkdir()
    foreign.write_bytes(b"someone else's")
    m3 = run(cfg)
    assert (m3["status"] == "ok").sum() == len(gone)
    assert set(m3.loc[m3["status"] == "ok", "output"]) == {str(p.relative_to(out)) for p in gone}
    assert (m3["status"] == "skipped").sum() == 21 - len(gone)
    assert not killed.exists() and foreign.read_bytes() == b"someone else's"
    foreign.unlink()
    assert not [p for p in out.rglob(".colorjob-tmp-*") if ".colorjob/" not in str(p)]
    assert (
        len(m3) == len(m3[["input", "variant"]].drop_duplicates()) == 13 * 3
    )  # every output exactly once

    # --overwrite redoes everything: every good output written again, the bad ones failed again
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*__*.png")}
    m4 = run(BatchConfig(**{**cfg.__dict__, "overwrite": True}))
    assert (m4["status"] == "ok").sum() == 21 and (m4["status"] == "failed").sum() == 6 * 3
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*__*.png")}
    assert set(after) == set(before) and all(after[p] > before[p] for p in before)


def test_grid_errors_come_before_any_work(tmp_path, model, capsys):
    vocab = ConditionVocab.from_dict(read_model_info(model)["conditions"])
    bad = tmp_path / "bad.csv"
    bad.write_text("hair,shirt\nblack,red\npink,red\nblack,red\nblue,teal\n")
    with pytest.raises(BatchError) as e:
        read_grid(str(bad), vocab)
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert (
        "row 3: unknown hair 'pink'" in msg
        and "row 4: duplicates row 2" in msg
        and "row 5: unknown shirt 'teal'" in msg
    )
    (tmp_path / "cols.csv").write_text("hair,shrt\nblack,red\n")
    with pytest.raises(BatchError, match=r"missing column\(s\) shirt.*unknown column\(s\) shrt"):
        read_grid(str(tmp_path / "cols.csv"), vocab)
    (tmp_path / "empty.csv").write_text("hair,shirt\n")
    with pytest.raises(BatchError, match="no rows"):
        read_grid(str(tmp_path / "empty.csv"), vocab)
    # through the command (in-process; its module form runs in test_nothing_lost): nothing is
    # written, Ray is not needed
    from colorjob.cli import main

    (tmp_path / "in").mkdir()
    Image.new("RGB", (32, 32), "white").save(tmp_path / "in" / "a.png")
    rc = main(["batch", "--input", str(tmp_path / "in"), "--conditions", str(bad), "--model", model, "--output", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "unknown hair 'pink'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    for args, text in (
        (["--model", str(tmp_path / "nomodel")], "does not exist"),
        (["--input", str(tmp_path / "nothing")], "does not exist"),
        (["--input", str(tmp_path / "o2")], "does not exist"),
    ):
        base = {
            "--input": str(tmp_path / "in"),
            "--conditions": str(ROOT / "configs" / "grid.csv"),
            "--model": model,
            "--output": str(tmp_path / "o"),
        }
        base[args[0]] = args[1]
        rc = main(["batch", *sum(base.items(), ())])
        err = capsys.readouterr().err
        assert rc == 2 and text in err, err
    (tmp_path / "emptyin").mkdir()
    with pytest.raises(BatchError, match="no images under"):
        run(
            BatchConfig(
                input=str(tmp_path / "emptyin"),
                conditions=str(ROOT / "configs" / "grid.csv"),
                model=model,
                output=str(tmp_path / "o"),
            )
        )


def test_names_are_neutralised(local_ray, tmp_path, model):
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("/abs/path") == "abs_path"
    assert safe_name("..") == "variant"
    grid = tmp_path / "g.csv"
    grid.write_text("hair,shirt,name\nblack,red,../../escape\nblonde,green,/etc/abs\n")
    (tmp_path / "in").mkdir()
    Image.new("RGB", (40, 40), "white").save(tmp_path / "in" / "x.png")
    m = run(
        BatchConfig(
            input=str(tmp_path / "in"),
            conditions=str(grid),
            model=model,
            output=str(tmp_path / "out"),
        )
    )
    assert sorted(m["output"]) == ["x__escape.png", "x__etc_abs.png"]
    assert all((tmp_path / "out" / o).is_file() for o in m["output"])
    assert not (tmp_path / "escape.png").exists() and not list(tmp_path.glob("x__*"))


def test_shipped_grid_has_all_25_seed_combinations(model):
    vocab = ConditionVocab.from_dict(read_model_info(model)["conditions"])
    g = read_grid(str(ROOT / "configs" / "grid.csv"), vocab)
    assert len(g) == 25 and len(g[["hair", "shirt"]].drop_duplicates()) == 25


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started (Ray puts its workers in process groups of
    their own, so killing the group alone leaves them writing), then wait until all are gone."""
    import signal

    import psutil

    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(tree, timeout=60)
    proc.wait()


def recorded(out: Path) -> set[str]:
    """Outputs that the provenance parts left by a (killed) run say were finished."""
    parts = list((out / ".colorjob" / "ledger").rglob("*.parquet"))
    parts = [p for p in parts if ".colorjob-tmp-" not in p.name]
    if not parts:
        return set()
    rows = pd.concat([pd.read_parquet(p) for p in parts])
    return (
        set(rows.loc[rows["status"] == "ok", "output"]) if "status" in rows else set(rows["output"])
    )


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_job_killed_midway_and_rerun_ends_with_every_output_once(
    local_ray, tmp_path, chars, model, executor
):
    import time

    src = Image.open(chars / "sketches" / "char_0001.png")
    (tmp_path / "in").mkdir()
    for i in range(24):
        src.rotate(i * 15, fillcolor="white").save(tmp_path / "in" / f"s{i:02d}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "colorjob.batch", "--input", str(tmp_path / "in"), "--conditions",
           str(ROOT / "configs" / "grid.csv"), "--model", model, "--output", str(out),
           "--set", f"executor={executor}"]  # fmt: skip
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and len(recorded(out)) < 40:
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed"
    finally:
        kill_tree(proc)  # the driver, its Ray (if any) and the workers: no clean-up
    done = recorded(out)  # what the killed job recorded as finished
    images = {str(p.relative_to(out)) for p in out.rglob("*__*.png") if ".colorjob" not in p.parts}
    assert 40 <= len(done) < 24 * 25 and done <= images
    assert not (out / "manifest").exists()
    bytes_before = {o: (out / o).read_bytes() for o in done}
    m = run(
        BatchConfig(
            input=str(tmp_path / "in"),
            conditions=str(ROOT / "configs" / "grid.csv"),
            model=model,
            output=str(out),
        )
    )
    assert len(m) == 24 * 25 and set(m["status"]) <= {"ok", "skipped"}
    assert set(m.loc[m["status"] == "skipped", "output"]) == done  # exactly what it had finished
    assert (m["status"] == "ok").sum() == 24 * 25 - len(done)
    assert len(m[["input", "variant"]].drop_duplicates()) == 24 * 25
    files = sorted(p for p in out.rglob("*__*.png") if ".colorjob" not in p.parts)
    assert len(files) == 24 * 25 and not list(out.rglob("*.colorjob-tmp-*"))
    for f in files:  # no torn image survived the kill
        Image.open(f).load()
    assert {o: (out / o).read_bytes() for o in done} == bytes_before  # finished work untouched


def test_every_output_is_the_generators_own_colouring_of_its_sketch_and_condition(
    local_ray, tmp_path, chars, model
):
    """Through the one inference path: a permutation of sketches, variants, conditions or file
    names anywhere in the pipeline changes some pixel here."""
    from colorjob.inference import colorize

    (tmp_path / "in").mkdir()
    for i in range(3):  # at the model's size and square: no resizing, no letterbox
        shutil.copyfile(chars / "sketches" / f"char_000{i}.png", tmp_path / "in" / f"k{i}.png")
    grid = tmp_path / "grid.csv"
    grid.write_text("hair,shirt\nblack,red\nblonde,green\nblue,navy\nginger,purple\n")
    for executor in ("ray", "local"):
        out = tmp_path / f"out-{executor}"
        m = run(BatchConfig(input=str(tmp_path / "in"), conditions=str(grid), model=model, output=str(out), executor=executor))  # fmt: skip
        g, vocab, _ = load_generator(model)
        for r in m.itertuples():
            sk = torch.from_numpy(
                np.asarray(Image.open(tmp_path / "in" / r.input).convert("RGB")).copy()
            )
            cond = torch.tensor([vocab.encode({"hair": r.hair, "shirt": r.shirt})])
            expected = colorize(g, sk.permute(2, 0, 1)[None], cond, vocab)[0].permute(1, 2, 0)
            got = np.asarray(Image.open(out / r.output).convert("RGB"))
            assert np.array_equal(got, expected.numpy()), r


def test_validation_metrics_equal_those_of_the_images_batch_writes(
    local_ray, tmp_path, trained, chars
):
    """The score a search selects on is computed from exactly the pixels batch writes."""
    from colorjob.data import load_splits
    from colorjob.imaging import to_unit
    from colorjob.metrics import fidelity, l1, psnr

    cfg, _ = trained
    meta = read_model_info(Path(cfg.out) / "best")
    _, val = load_splits(chars, 32, cfg.val_fraction, cfg.seed, cfg.split)
    (tmp_path / "in").mkdir()
    for rel in val.metadata["input"].unique():
        shutil.copyfile(chars / rel, tmp_path / "in" / Path(rel).name)
    m = run(BatchConfig(input=str(tmp_path / "in"), conditions=str(ROOT / "configs" / "grid.csv"), model=str(Path(cfg.out) / "best"), output=str(tmp_path / "out")))  # fmt: skip
    made = m.set_index(["input", "hair", "shirt"])["output"]
    fakes = torch.stack([
        torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / made[(Path(r.input).name, r.hair, r.shirt)]).convert("RGB")).copy()).permute(2, 0, 1)
        for r in val.metadata.itertuples()
    ])  # fmt: skip
    t = val.tensors()
    assert l1(to_unit(fakes), to_unit(t["targets"])).mean().item() == pytest.approx(meta["metrics"]["val_l1"], rel=1e-6)  # fmt: skip
    assert psnr(to_unit(fakes), to_unit(t["targets"])).mean().item() == pytest.approx(meta["metrics"]["val_psnr"], rel=1e-6)  # fmt: skip
    masks = [{a: val.mask(s, a) for a in val.vocab.names} for s in val.metadata["input"]]
    fid = fidelity(fakes, t["conditions"], masks, val.vocab, t["sketches"][t["sketch_index"]])
    assert fid == pytest.approx(meta["metrics"]["val_fidelity"])


def test_placement_fits_the_cluster_it_finds(monkeypatch):
    from colorjob.batch.executors import choose_executor, choose_placement

    cfg = BatchConfig()
    cpu = choose_placement(cfg, {"CPU": 2.0, "memory": 1e10})
    assert (cpu.kind, cpu.workers, cpu.cpus, cpu.threads, cpu.gpus) == ("fused", 2, 1.0, 1, 0.0)
    wide = choose_placement(BatchConfig(threads_per_worker=4), {"CPU": 16.0})
    assert (wide.kind, wide.workers, wide.threads) == ("fused", 4, 4)  # tasks x threads = CPUs
    gpu = choose_placement(cfg, {"CPU": 16.0, "GPU": 2.0})
    assert (gpu.kind, gpu.workers, gpu.gpus, gpu.cpus) == ("split", 2, 1.0, 1.0)
    shared = choose_placement(BatchConfig(gpus_per_actor=0.5), {"CPU": 8.0, "GPU": 1.0})
    assert (shared.kind, shared.workers, shared.gpus) == ("split", 2, 0.5)
    forced = choose_placement(BatchConfig(placement="split"), {"CPU": 2.0})
    assert (forced.kind, forced.gpus) == ("split", 0.0)  # runs on CPUs when asked to
    assert (
        choose_placement(BatchConfig(placement="fused"), {"CPU": 4.0, "GPU": 1.0}).kind == "fused"
    )
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert choose_executor("auto") == "ray" and choose_executor("local") == "local"


def test_every_plan_writes_the_same_bytes(local_ray, tmp_path, chars, model):
    """In this process, fused Ray tasks, and the split plan (decode tasks -> generator actor ->
    encode tasks): the same outputs, byte for byte, for the same model and sketches."""
    make_sketches(tmp_path / "in", chars)
    grid = tmp_path / "grid.csv"
    grid.write_text("hair,shirt\nblack,red\nblonde,green\nblue,navy\n")
    made = {}
    for name, kw in {"local": {"executor": "local"}, "fused": {"executor": "ray", "placement": "fused"},
                     "split": {"executor": "ray", "placement": "split"}}.items():  # fmt: skip
        out = tmp_path / name
        m = run(BatchConfig(input=str(tmp_path / "in"), conditions=str(grid), model=model, output=str(out), **kw))  # fmt: skip
        assert (m["status"] == "ok").all() and len(m) == 7 * 3
        made[name] = {o: (out / o).read_bytes() for o in m["output"]}
    assert made["local"] == made["fused"] == made["split"]
