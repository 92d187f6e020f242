import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import free_port
from PIL import Image

from colorjob import config as cfgmod
from colorjob.cli import main as colorjob_main
from colorjob.data import PairDataset, load_splits, to_unit
from colorjob.export import ModelError, load_generator, read_model_info
from colorjob.metrics import fidelity, fidelity_hits
from colorjob.train import (
    METRIC_COLUMNS,
    NonFiniteLossError,
    TrainConfig,
    load_checkpoint,
    train,
)


def main(argv):
    return colorjob_main(["train", *argv])


def test_a_run_writes_metrics_samples_plot_checkpoints_and_best(trained):
    cfg, summary = trained
    out = Path(cfg.out)
    m = pd.read_csv(out / "metrics.csv")
    extras = list(m.columns[len(METRIC_COLUMNS) - 3 : -3])
    assert list(m.columns) == METRIC_COLUMNS[:-3] + extras + METRIC_COLUMNS[-3:]
    # per attribute and the line art (classic has no background masks: no leak); at 32 px a
    # hair region can be too small to measure in an epoch
    assert {"val_acc_shirt", "val_de_shirt_median", "val_de_shirt_p95", "val_lines"} <= set(extras)
    assert set(extras) <= {f"val_{k}_{a}" for k in ("acc",) for a in ("hair", "shirt")} | {f"val_de_{a}_{q}" for a in ("hair", "shirt") for q in ("median", "p95")} | {"val_lines"}  # fmt: skip
    assert m["epoch"].tolist() == [1, 2] and m["val_lines"].notna().all()
    assert (
        m[["g_adv", "g_l1", "d_real", "d_fake", "val_l1", "val_psnr", "val_fidelity"]]
        .notna()
        .all()
        .all()
    )
    assert (m["val_fidelity"].between(0, 1)).all()
    for e in (1, 2):
        grid = Image.open(out / "samples" / f"epoch_{e:03d}.png")
        assert grid.size == (
            6 * 32 + 7 * 2,
            1 * 32 + 2 * 2,
        )  # 1 val sketch x (sketch + 5 conditions)
    assert Image.open(out / "loss.png").size[0] > 600
    assert (out / "checkpoints" / "last.pt").is_file() and (
        out / "checkpoints" / "best.pt"
    ).is_file()
    state = load_checkpoint(out / "checkpoints")  # weights_only=True inside
    assert state["epoch"] == 2 and state["config"]["image_size"] == 32
    assert {
        "generator",
        "discriminator",
        "opt_g",
        "opt_d",
        "sched_g",
        "sched_d",
        "rng",
        "conditions",
    } <= set(state)
    info = read_model_info(out / "best")
    assert info["image_size"] == 32 and info["ngf"] == 8
    assert info["metrics"]["epoch"] == summary["best_epoch"]
    assert info["metrics"]["val_l1"] == pytest.approx(summary["best_val_l1"])
    assert info["train_config"]["lambda_l1"] == 100.0
    assert [a["name"] for a in info["conditions"]["attributes"]] == ["hair", "shirt"]


def test_first_sample_column_is_the_input_sketch(trained, chars):
    cfg, _ = trained
    _, val = load_splits(chars, 32, cfg.val_fraction, cfg.seed)
    grid = torch.from_numpy(np.array(Image.open(Path(cfg.out) / "samples/epoch_001.png")))
    first = grid[2:34, 2:34].permute(2, 0, 1)
    assert torch.equal(first, val.tensors()["sketches"][0])


def test_export_load_gives_the_trained_generators_outputs(trained, chars):
    cfg, _ = trained
    state = load_checkpoint(Path(cfg.out) / "checkpoints" / "best.pt")
    g, vocab, meta = load_generator(Path(cfg.out) / "best")
    from colorjob.models import Generator

    ref = Generator(13, 3, 32, 8).eval()
    ref.load_state_dict(state["generator"])
    ds = PairDataset(chars, 32)
    x = torch.cat(
        [torch.stack([ds[i]["sketch"] for i in range(6)]), vocab.planes(ds.conditions[:6], 32)], 1
    )
    with torch.no_grad():
        assert torch.equal(g(x), ref(x))
    assert not g.training


def test_loader_rejects_mismatches(trained, tmp_path):
    cfg, _ = trained
    best = Path(cfg.out) / "best"
    from colorjob.conditions import ConditionVocab

    with pytest.raises(ModelError, match="vocabulary mismatch"):
        load_generator(best, vocab=ConditionVocab.from_dict({"hair": ["black"], "shirt": ["red"]}))
    with pytest.raises(ModelError, match="does not exist"):
        load_generator(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text(
        (best / "model.json").read_text().replace('"ngf": 8', '"ngf": 16')
    )
    (bad / "generator.safetensors").write_bytes((best / "generator.safetensors").read_bytes())
    with pytest.raises(ModelError, match="does not match the shape"):
        load_generator(bad)


def test_resume_after_epoch_1_matches_an_uninterrupted_run(tiny_cfg, tmp_path, trained):
    full_cfg, full = trained
    cfg = tiny_cfg(out=tmp_path / "r", epochs=1)
    train(cfg)
    resumed = train(dataclass_replace(cfg, epochs=2), resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a = load_checkpoint(Path(full_cfg.out) / "checkpoints")
    b = load_checkpoint(tmp_path / "r" / "checkpoints")
    # Same seed, same data order, dropout and flips per epoch, same optimizer moments: on the CPU
    # the resumed run is bit-identical to the uninterrupted one.
    for k in a["generator"]:
        assert torch.equal(a["generator"][k], b["generator"][k]), k
    for k in a["discriminator"]:
        assert torch.equal(a["discriminator"][k], b["discriminator"][k]), k
    assert a["history"][1]["val_l1"] == b["history"][1]["val_l1"]
    assert pd.read_csv(tmp_path / "r" / "metrics.csv")["epoch"].tolist() == [1, 2]


def dataclass_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_cli_resume_extends_a_finished_run(tiny_cfg, tmp_path, chars):
    cfg = tiny_cfg(out=tmp_path / "cli", epochs=1)
    yaml_path = tmp_path / "tiny.yaml"
    yaml_path.write_text(yaml.safe_dump(cfgmod.to_dict(cfg)))
    assert main(["--config", str(yaml_path)]) == 0
    first = (tmp_path / "cli" / "metrics.csv").read_text().splitlines()
    after_1 = load_checkpoint(tmp_path / "cli" / "checkpoints")
    sample_1 = (tmp_path / "cli" / "samples" / "epoch_001.png").stat().st_mtime_ns
    assert main(["--out", str(tmp_path / "cli"), "--resume", "--epochs", "2"]) == 0
    m = pd.read_csv(tmp_path / "cli" / "metrics.csv")
    assert m["epoch"].tolist() == [1, 2]
    # epoch 1 was not run again: its row (with its own timings) and its samples are untouched
    assert (tmp_path / "cli" / "metrics.csv").read_text().splitlines()[:2] == first
    assert (tmp_path / "cli" / "samples" / "epoch_001.png").stat().st_mtime_ns == sample_1
    # and epoch 2 started from epoch 1's weights: its history carries epoch 1 as saved then
    after_2 = load_checkpoint(tmp_path / "cli" / "checkpoints")
    assert after_2["history"][0] == after_1["history"][0] and after_2["epoch"] == 2
    assert (
        load_checkpoint(tmp_path / "cli" / "checkpoints")["config"]["ngf"] == 8
    )  # the run's own config


def test_non_finite_loss_stops_with_a_clear_error(tiny_cfg, tmp_path):
    cfg = tiny_cfg(out=tmp_path / "nan", lambda_l1=float("nan"))
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss at epoch 1, step 1: .*g_total=nan"
    ):
        train(cfg)


def test_fidelity_of_the_ground_truth_is_at_least_99_percent(chars, tmp_path):
    from colorjob import synth

    for root, size in (
        (chars, 32),
        (synth.generate(tmp_path / "d64", 6, seed=11, size=64, workers=1), 64),
    ):
        ds = PairDataset(root, size)
        t = ds.tensors()
        masks = [{a: ds.mask(s, a) for a in ds.vocab.names} for s in ds.metadata["input"]]
        sk = t["sketches"][t["sketch_index"]]
        hits, judged = fidelity_hits(t["targets"], t["conditions"], masks, ds.vocab, sk, with_judged=True)  # fmt: skip
        assert judged.float().mean() >= 0.5 and hits[judged].float().mean() >= 0.99
        wrong = (t["conditions"] + 1) % 5  # every requested colour is off by one palette entry
        assert fidelity(t["targets"], wrong, masks, ds.vocab, sk) <= 0.01


def test_fidelity_is_missing_not_zero_without_masks(tiny_cfg, tmp_path, chars):
    import shutil

    data = tmp_path / "nomask"
    shutil.copytree(chars, data)
    shutil.rmtree(data / "masks")
    summary = train(tiny_cfg(out=tmp_path / "nm", data=str(data), epochs=1))
    assert summary["history"][0]["val_fidelity"] is None
    assert pd.read_csv(tmp_path / "nm" / "metrics.csv")["val_fidelity"].isna().all()


def test_cli_help_and_config_errors(tmp_path, capsys):
    """In-process (the module forms run as subprocesses in test_nothing_lost)."""
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--data", "--epochs", "--resume", "--mixed-precision", "--set"):
        assert flag in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) epochz" in err and "Traceback" not in err
    assert main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "colorjob.synth" in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_seed_config_files_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    seed = cfgmod.load(TrainConfig, root / "train.yaml")
    assert (seed.image_size, seed.ngf, seed.epochs, seed.lr_g, seed.lambda_l1, seed.gan_mode) == (
        256,
        64,
        50,
        2e-4,
        100.0,
        "vanilla",
    )
    cpu = cfgmod.load(TrainConfig, root / "cpu.yaml", ["epochs=3", "gan_mode=lsgan"])
    assert (cpu.image_size, cpu.epochs, cpu.gan_mode) == (64, 3, "lsgan")
    with pytest.raises(cfgmod.ConfigError, match="gan_mode must be one of vanilla, lsgan"):
        cfgmod.load(TrainConfig, root / "cpu.yaml", ["gan_mode=wgan"])
    with pytest.raises(cfgmod.ConfigError, match="epochs must be an integer"):
        cfgmod.load(TrainConfig, None, ["epochs=many"])


def test_lsgan_and_lr_decay_run(tiny_cfg, tmp_path):
    s = train(tiny_cfg(out=tmp_path / "ls", gan_mode="lsgan", epochs=2, lr_decay_start=0))
    lrs = [h["lr_g"] for h in s["history"]]
    assert lrs[0] < 2e-4 and lrs[1] < lrs[0]


def test_tensorboard_curves_when_asked(tiny_cfg, tmp_path):
    train(tiny_cfg(out=tmp_path / "tb", epochs=1, log_with="tensorboard"))
    events = list((tmp_path / "tb" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_unit_range_helpers():
    x = torch.tensor([0, 255], dtype=torch.uint8)
    assert to_unit(x).tolist() == [-1.0, 1.0]


@pytest.mark.slow
def test_the_same_loop_runs_distributed_on_two_cpu_processes(tiny_cfg, tmp_path):
    """DDP over gloo (what `accelerate launch` does on several GPUs): no_sync, reduce, one writer."""
    cfg = tiny_cfg(out=tmp_path / "ddp")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        "-m", "colorjob.train", "--data", cfg.data, "--out", cfg.out, "--image-size", "32", "--epochs", "2",
        "--set", "ngf=8", "--set", "ndf=8", "--set", "val_fraction=0.25",
    ]  # fmt: skip
    env = os.environ | {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "device cpu:0 x2" in r.stdout
    assert r.stdout.count("best epoch") == 1  # one summary, not one per process
    assert pd.read_csv(tmp_path / "ddp" / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert load_checkpoint(tmp_path / "ddp" / "checkpoints")["epoch"] == 2


def test_one_last_pt_makes_the_whole_run_folder_again(trained, tmp_path):
    """A checkpoint is one file: best/ (byte for byte), metrics.csv and config.yaml come back
    from it. It carries the best generator only when that is not its own generator."""
    from colorjob import checkpoint, runfolder
    from colorjob.export import WEIGHTS, read_model, weights_file

    cfg, summary = trained
    run = Path(cfg.out)
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert summary["best_epoch"] == state["best"]["epoch"]
    own = state["best"]["epoch"] == state["epoch"]
    assert (state["best_generator"] is None) == own
    again = tmp_path / "again"
    runfolder.write(run / "checkpoints" / "last.pt", again)
    assert (again / "best" / WEIGHTS).read_bytes() == (run / "best" / WEIGHTS).read_bytes()
    assert read_model(again / "best")[0]["metrics"]["epoch"] == summary["best_epoch"]
    assert pd.read_csv(again / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert (again / "best" / "samples.png").read_bytes() == (
        run / "best" / "samples.png"
    ).read_bytes()
    # a checkpoint whose best epoch came before it carries that generator, and best/ is it
    earlier = dict(state, best={"epoch": 1, "val_l1": state["history"][0]["val_l1"]})
    name = next(k for k, v in state["generator"].items() if v.is_floating_point())
    older = {k: v.clone() for k, v in state["generator"].items()}
    older[name] += 1
    earlier["best_generator"] = older
    checkpoint.save(earlier, tmp_path / "earlier.pt")
    other = tmp_path / "other"
    runfolder.write(tmp_path / "earlier.pt", other)
    assert (other / "best" / WEIGHTS).read_bytes() == weights_file(older)
    assert read_model(other / "best")[0]["metrics"]["epoch"] == 1
