"""Training, tuning and exports never lose work or run on a bad setting (real runs, real files)."""

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from colorjob import config as cfgmod
from colorjob import storage, synth
from colorjob.batch import BatchConfig
from colorjob.cli import main as colorjob_main
from colorjob.data import DatasetError, PairDataset, read_metadata
from colorjob.export import export_generator, load_generator, read_model
from colorjob.models import Generator
from colorjob.train import TrainConfig, load_checkpoint
from colorjob.tune import TuneConfig


def main(argv):
    return colorjob_main(["train", *argv])


def test_a_second_run_into_the_same_folder_is_refused_unless_resumed_or_overwritten(
    tiny_cfg, tmp_path, capsys
):
    cfg = tiny_cfg(out=tmp_path / "run", epochs=1)
    args = ["--data", cfg.data, "--out", cfg.out, "--image-size", "32", "--epochs", "1",
            "--set", "ngf=8", "--set", "ndf=8", "--set", "val_fraction=0.25"]  # fmt: skip
    assert main(args) == 0
    first = (tmp_path / "run" / "metrics.csv").read_text()
    saved = cfgmod.load(TrainConfig, tmp_path / "run" / "config.yaml")
    assert saved == cfgmod.from_dict(TrainConfig, cfgmod.to_dict(cfg) | {"out": cfg.out})
    capsys.readouterr()
    assert main(args) == 2  # the same command again: refused, nothing touched
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (tmp_path / "run" / "metrics.csv").read_text() == first
    # --resume continues (epoch 2, with the run's own config: no --config or flags needed)
    assert main(["--out", cfg.out, "--resume", "--epochs", "2"]) == 0
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert cfgmod.load(TrainConfig, tmp_path / "run" / "config.yaml").epochs == 2
    # --overwrite starts over: one epoch again, the old checkpoint and best/ replaced
    assert main([*args, "--overwrite"]) == 0
    assert "starting over" in capsys.readouterr().err
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"].tolist() == [1]
    assert load_checkpoint(tmp_path / "run" / "checkpoints")["epoch"] == 1


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("epochs=.inf", "epochs must be an integer"),
        ("epochs=0", "epochs must be a finite number in [1, inf)"),
        ("checkpoint_every=0", "checkpoint_every must be a finite number in [1, inf)"),
        ("eval_batch_size=0", "eval_batch_size must be"),
        ("batch_size=-3", "batch_size must be"),
        ("image_size=100", "image_size: the image size must be a power of two"),
        ("image_size=16", "power of two >= 32"),
        ("lr_g=.nan", "lr_g must be a finite number in (0, 1]"),
        ("lr_d=0", "lr_d must be a finite number in (0, 1]"),
        ("beta1=1.5", "beta1 must be"),
        ("dropout=1", "dropout must be"),
        ("val_fraction=1", "val_fraction must be"),
        ("lambda_l1=-1", "lambda_l1 must be in [0, inf)"),
        ("data=null", "data must be a string"),
        ("d_layers=9", "d_layers must be"),
    ],
)
def test_bad_training_settings_are_config_errors_naming_the_key(tmp_path, capsys, setting, message):
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("cls", "setting", "message"),
    [
        (BatchConfig, {"gpus_per_actor": 0}, "gpus_per_actor must be a finite number in (0, 64]"),
        (BatchConfig, {"max_pixels": -1}, "max_pixels must be"),
        (BatchConfig, {"min_side": -5}, "min_side must be"),
        (BatchConfig, {"batch_size": -1}, "batch_size must be"),
        (BatchConfig, {"workers": -1}, "workers must be"),
        (TuneConfig, {"num_samples": 0}, "num_samples must be"),
        (TuneConfig, {"resources": {"cpu": 0}}, "resources.cpu must be"),
        (TuneConfig, {"scheduler": {"reduction_factor": 1}}, "scheduler.reduction_factor must be"),
        (TuneConfig, {"train": {"lr_g": -1}}, "train.lr_g must be"),
        (TuneConfig, {"name": "a/b"}, "name must be a folder name"),
        (TuneConfig, {"generate_data": {"size": 48}}, "generate_data.size"),
    ],
)
def test_bad_batch_and_tune_settings_are_config_errors(cls, setting, message):
    with pytest.raises(cfgmod.ConfigError) as e:
        cfgmod.from_dict(cls, setting)
    assert message in str(e.value)


def _model(tmp_path: Path, seed: int) -> tuple:
    torch.manual_seed(seed)
    return Generator(13, 3, 32, 8).eval(), synth.vocabulary()


@pytest.mark.parametrize("fail_at", ["exchange", "second_rename", "cleanup"])
def test_a_crash_while_replacing_best_leaves_a_complete_best(tmp_path, monkeypatch, fail_at):
    best = tmp_path / "best"
    g1, vocab = _model(tmp_path, 1)
    export_generator(g1, vocab, best)
    old_id = read_model(best)[0]["model_id"]
    g2, _ = _model(tmp_path, 2)

    class Crash(RuntimeError):
        pass

    if fail_at == "exchange":  # the atomic swap itself fails
        monkeypatch.setattr(storage, "_exchange", lambda a, b: (_ for _ in ()).throw(Crash()))
    elif fail_at == "second_rename":  # no atomic swap here, and the move of the new one fails
        monkeypatch.setattr(storage, "_exchange", lambda a, b: False)
        real, calls = os.rename, []

        def rename(a, b):
            calls.append(a)
            if len(calls) == 2:
                raise Crash()
            return real(a, b)

        monkeypatch.setattr(os, "rename", rename)
    else:  # removing the old one fails after the swap
        monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        export_generator(g2, vocab, best)
    monkeypatch.undo()
    meta, _ = read_model(best)  # complete: the model_id matches its weights
    new_id = read_model(export_generator(g2, vocab, tmp_path / "fresh"))[0]["model_id"]
    assert meta["model_id"] == (new_id if fail_at == "cleanup" else old_id)
    load_generator(best)


def test_a_model_folder_with_mismatched_files_says_so(tmp_path):
    g1, vocab = _model(tmp_path, 1)
    g2, _ = _model(tmp_path, 2)
    a, b = export_generator(g1, vocab, tmp_path / "a"), export_generator(g2, vocab, tmp_path / "b")
    shutil.copyfile(b / "generator.safetensors", a / "generator.safetensors")
    from colorjob.export import ModelError

    with pytest.raises(ModelError, match="the weights do not belong to this model.json"):
        load_generator(a)


def _dataset(root: Path, rows: list[tuple[str, str]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel in {r for pair in rows for r in pair}:
        if not rel.startswith("/") and ".." not in rel:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), "white").save(root / rel)
    pd.DataFrame([(i, o, "red") for i, o in rows], columns=["input", "output", "hair"]).to_csv(
        root / "metadata.csv", index=False
    )
    return root


def test_metadata_paths_must_stay_inside_the_dataset(tmp_path):
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (32, 32)).save(outside)
    d = _dataset(tmp_path / "d", [("s.png", "t.png"), (str(outside), "t.png"), ("s.png", "../elsewhere.png")])  # fmt: skip
    with pytest.raises(DatasetError) as e:
        read_metadata(d)
    msg = str(e.value)
    assert (
        "stay inside it" in msg and f"row 3: {outside}" in msg and "row 4: ../elsewhere.png" in msg
    )


def test_sketches_with_the_same_stem_in_different_folders_have_their_own_masks(tmp_path):
    d = _dataset(tmp_path / "d", [("a/x.png", "a/t.png"), ("b/x.png", "b/t.png")])
    for folder, filled in (("a", True), ("b", False)):
        (d / "masks" / folder).mkdir(parents=True)
        Image.new("1", (32, 32), int(filled)).save(d / "masks" / folder / "x_hair.png")
    Image.new("1", (32, 32), 1).save(d / "masks" / "x_hair.png")  # flat: ambiguous, not used
    ds = PairDataset(d, 32)
    assert ds.mask("a/x.png", "hair").all() and not ds.mask("b/x.png", "hair").any()
    (d / "masks" / "b" / "x_hair.png").unlink()
    assert PairDataset(d, 32).mask("b/x.png", "hair") is None  # the stem is shared: no guessing


def test_a_float_sketch_in_0_1_is_not_black(tmp_path):
    from colorjob.imaging import load_rgb

    a = np.ones((20, 30), np.float32)
    a[5:15, 10:20] = 0.0  # a black square on white paper
    Image.fromarray(a, "F").save(tmp_path / "f.tiff")
    rgb = np.asarray(load_rgb(tmp_path / "f.tiff"))
    assert (rgb[0, 0] == 255).all() and (rgb[10, 15] == 0).all()


@pytest.mark.parametrize(("umask", "file_mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_files_are_written_with_the_process_umask(tmp_path, umask, file_mode):
    g, vocab = _model(tmp_path, 1)
    old = os.umask(umask)
    try:
        best = export_generator(g, vocab, tmp_path / "best")
        fs, root = storage.resolve(tmp_path / "o")
        storage.write_atomic(fs, storage.join(root, "x.bin"), b"x")
    finally:
        os.umask(old)
    for f in (best / "generator.safetensors", best / "model.json", tmp_path / "o" / "x.bin"):
        assert stat.S_IMODE(f.stat().st_mode) == file_mode, f
    assert stat.S_IMODE(best.stat().st_mode) == 0o777 & ~umask


def test_the_remote_data_cache_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("COLORJOB_CACHE", raising=False)
    root = storage.cache_root()
    assert root == tmp_path / "cache" / "colorjob" / "data"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
