"""The shipped default generator: small, documented, and as good as its card says."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
from conftest import read_manifest
from PIL import Image
from safetensors import safe_open

from colorjob import metrics, synth
from colorjob.data import PairDataset
from colorjob.export import DEFAULT_MODEL, WEIGHTS, load_generator
from colorjob.inference import colorize

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_model_is_small_fp16_and_has_a_card():
    weights = DEFAULT_MODEL / WEIGHTS
    assert weights.stat().st_size <= 5 * 1024 * 1024
    with safe_open(str(weights), "pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118 - safe_open is not a dict
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    assert dtypes == {torch.float16}
    meta = json.loads((DEFAULT_MODEL / "model.json").read_text())
    card = (DEFAULT_MODEL / "MODEL_CARD.md").read_text()
    assert f"{meta['metrics']['val_l1']:.4f}" in card and meta["model_id"] in card
    assert "python -m colorjob.train" in card


def fidelity(data: Path, g, vocab) -> float:
    """The share of right colours in ``g``'s outputs for every pair of a synthetic dataset."""
    ds = PairDataset(data, g.image_size)
    t = ds.tensors()
    fakes = colorize(g, t["sketches"], t["conditions"], vocab, t["sketch_index"], 25)
    masks = [{a: ds.mask(s, a) for a in vocab.names} for s in ds.metadata["input"]]
    return metrics.fidelity(fakes, t["conditions"], masks, vocab, t["sketches"][t["sketch_index"]])


def test_fidelity_on_new_characters_is_no_worse_than_the_card(tmp_path):
    g, vocab, meta = load_generator(DEFAULT_MODEL)
    data = synth.generate(tmp_path / "new", 3, seed=777, size=meta["image_size"], workers=1)
    fidelity_new = fidelity(data, g, vocab)
    assert fidelity_new >= meta["metrics"]["val_fidelity"] - 0.1, (
        fidelity_new,
        meta["metrics"]["val_fidelity"],
    )


def test_fidelity_on_a_drawing_style_it_never_saw_is_no_worse_than_the_card(tmp_path):
    """New characters in the held-out style (chibi: other proportions), other seeds than the
    card's held-out set."""
    g, vocab, meta = load_generator(DEFAULT_MODEL)
    size = meta["image_size"]
    assert meta["metrics"]["holdout_fidelity"] >= 0.95  # the card's figure meets the goal
    data = synth.generate(tmp_path / "chibi", 2, seed=4242, size=size, workers=1, families=("chibi",))  # fmt: skip
    assert set(pd.read_csv(data / "families.csv")["family"]) == {"chibi"}
    fidelity_chibi = fidelity(data, g, vocab)
    assert fidelity_chibi >= meta["metrics"]["holdout_fidelity"] - 0.1, fidelity_chibi


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
