"""The shipped default generator: small, documented, any colour, lines kept, and as good as its
card says on characters it never saw (new seeds, in its training styles and in the held-out one)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import read_manifest
from PIL import Image
from safetensors import safe_open

from colorjob import synth
from colorjob.data import DeviceSet, PairDataset
from colorjob.evaluate import region_masks, validate
from colorjob.export import DEFAULT_MODEL, WEIGHTS, load_generator, read_model_info

ROOT = Path(__file__).resolve().parents[1]
META = read_model_info(DEFAULT_MODEL)
TRAINED_ON = ("bold", "fine", "minimal", "busy", "chibi", "icon", "sticker")


def measured(data: Path) -> dict:
    """What validation measures (``val_*``) of the shipped model on every pair of ``data``."""
    g, vocab, _ = load_generator(DEFAULT_MODEL)
    ds = PairDataset(data, g.image_size, vocab)
    return validate(g, DeviceSet(ds, "cpu"), region_masks(ds), 32)


@pytest.fixture(scope="module")
def new_characters(tmp_path_factory):
    """Characters it never saw, drawn as its training ones were (other seeds)."""
    out = tmp_path_factory.mktemp("new")
    data = synth.generate(out / "d", 16, seed=777, size=META["image_size"], workers=1, families=TRAINED_ON, colours="mixed", colourings_per_sketch=4)  # fmt: skip
    return data, measured(data)


def test_shipped_model_is_small_fp16_any_colour_layers_and_has_a_card():
    weights = DEFAULT_MODEL / WEIGHTS
    assert weights.stat().st_size <= 6 * 1024 * 1024  # small enough to ship inside the package
    with safe_open(str(weights), "pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118 - safe_open is not a dict
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.float16}
    meta = json.loads((DEFAULT_MODEL / "model.json").read_text())
    assert meta["out_channels"] == 4 and meta["conditioning"] == "film"
    assert {a["kind"] for a in meta["conditions"]["attributes"]} == {"colour"}
    card = (DEFAULT_MODEL / "MODEL_CARD.md").read_text()
    assert f"{meta['metrics']['val_l1']:.4f}" in card and meta["model_id"] in card
    assert f"{meta['metrics']['holdout_leak']:.2%}" in card
    assert "configs/default_model.yaml" in card


def test_new_characters_in_its_styles_are_no_worse_than_the_card(new_characters):
    """Margins for a sample of 16 characters: across samples the shirt figures vary most (dense
    dot patterns at 128 px; 90-97 % pixel accuracy, docs/performance.md)."""
    _, got = new_characters
    card = META["metrics"]
    assert got["val_fidelity"] >= card["val_fidelity"] - 0.06, (got, card)
    for a in ("hair", "shirt"):
        assert got[f"val_acc_{a}"] >= card[f"val_acc_{a}"] - 0.07, (a, got, card)
        assert got[f"val_de_{a}_median"] <= card[f"val_de_{a}_median"] + 3, (a, got, card)
    assert got["val_leak"] <= card["val_leak"] + 0.02, (got, card)
    assert got["val_lines"] >= 0.98, got  # the sketch's own lines over the colours


def test_a_drawing_style_it_never_saw_is_no_worse_than_the_card(tmp_path):
    """New characters in the held-out style (doodle: lines drawn by hand), other seeds than the
    card's held-out set."""
    card = META["metrics"]
    assert card["holdout_fidelity"] >= 0.95  # the card's figure meets the goal
    data = synth.generate(tmp_path / "doodle", 8, seed=4242, size=META["image_size"], workers=1, families=("doodle",), colours="mixed", colourings_per_sketch=8)  # fmt: skip
    assert set(pd.read_csv(data / "families.csv")["family"]) == {"doodle"}
    got = measured(data)
    assert got["val_fidelity"] >= card["holdout_fidelity"] - 0.05, (got, card)
    assert got["val_leak"] <= card["holdout_leak"] + 0.02, (got, card)
    assert got["val_lines"] >= 0.98, got


def test_colours_nobody_named_land_near_what_was_asked(tmp_path):
    """Only random colours (none of the palette's names): the region's median colour is within
    a visible but small ΔE2000 of the asked one for most images."""
    data = synth.generate(tmp_path / "any", 8, seed=99, size=META["image_size"], workers=1, families=TRAINED_ON, colours="random", colourings_per_sketch=4)  # fmt: skip
    got = measured(data)
    for a in ("hair", "shirt"):
        assert got[f"val_de_{a}_median"] <= 10, (a, got)
    assert got["val_fidelity"] >= 0.9, got


def test_batch_paints_the_hex_colours_asked_for_in_layers_transparent_on_the_background(new_characters, tmp_path):  # fmt: skip
    """``hair=#1e90ff, shirt=#ff8c00`` (and a named + hex row) through ``colorjob batch --set
    mode=layers``: the outputs have those colours (ΔE2000 of each region's median, lines kept),
    and the colour layers beside them leave the paper transparent."""
    from colorjob.evaluate import metrics_of_files

    data, _ = new_characters
    grid = tmp_path / "grid.csv"
    grid.write_text("name,hair,shirt\nv1,#1e90ff,#ff8c00\nv2,blonde,#20b2aa\n", encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "colorjob", "batch", "--input", str(data / "sketches"), "--conditions", str(grid),
         "--output", str(tmp_path / "out"), "--set", "mode=layers", "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = read_manifest(tmp_path / "out")
    assert len(m) == 16 * 2 and (m["status"] == "ok").all()
    transparent, painted = [], []
    for row in m.itertuples():
        stem = Path(row.input).stem
        layer = np.asarray(Image.open(tmp_path / "out" / row.output.replace(".png", ".layer.png")))
        assert layer.shape[2] == 4
        bg = np.asarray(Image.open(data / "masks" / f"{stem}_background.png").convert("L")) > 127  # fmt: skip
        hair = np.asarray(Image.open(data / "masks" / f"{stem}_hair.png").convert("L")) > 127  # fmt: skip
        transparent.append((layer[..., 3][bg] < 64).mean())
        painted.append((layer[..., 3][hair] > 191).mean())
    assert np.mean(transparent) >= 0.97, transparent  # the colour layer leaves the paper alone
    assert np.mean(painted) >= 0.9, painted  # and covers what it paints
    rows = [(r["input"], r["output"], {"hair": r["hair"], "shirt": r["shirt"]}) for r in m.to_dict("records")]  # fmt: skip
    got = metrics_of_files(data, "sketches/", rows, tmp_path / "out", META["image_size"])
    card = META["metrics"]
    for a in ("hair", "shirt"):
        assert got[f"de_{a}_median"] <= max(6.0, card[f"val_de_{a}_median"] + 3), (a, got)
    assert got["lines"] >= 0.98 and got["leak"] <= 0.03, got


def test_batch_works_out_of_the_box_on_the_examples(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "colorjob.batch", "--input", "examples/sketches", "--conditions", "configs/grid.csv", "--output", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = read_manifest(tmp_path / "out")
    examples = sorted(p.name for p in (ROOT / "examples" / "sketches").iterdir())
    assert len(m) == len(examples) * 25 and (m["status"] == "ok").all()
    for r in m.drop_duplicates("input").itertuples():
        assert (
            Image.open(tmp_path / "out" / r.output).size
            == Image.open(ROOT / "examples" / "sketches" / r.input).size
        )
