import numpy as np
import pandas as pd
from PIL import Image

from colorjob import synth


def test_n_sketches_give_n_x_25_rows_in_the_seed_format(chars):
    df = pd.read_csv(chars / "metadata.csv", dtype=str)
    assert list(df.columns) == ["input", "output", "hair", "shirt"]
    assert len(df) == 4 * 25
    assert df["input"].nunique() == 4
    assert df.groupby("input").size().eq(25).all()
    assert set(df["hair"]) == set(synth.HAIR_COLORS) and set(df["shirt"]) == set(synth.SHIRT_COLORS)
    assert not df.duplicated(["input", "hair", "shirt"]).any()
    for rel in pd.concat([df["input"], df["output"]]).unique():
        assert not rel.startswith("/") and (chars / rel).is_file(), rel
        assert Image.open(chars / rel).size == (32, 32)
    assert (chars / "conditions.json").is_file() and (chars / "contact_sheet.png").is_file()


def test_sketch_is_line_art_on_white(chars):
    sk = np.asarray(Image.open(chars / "sketches/char_0000.png").convert("RGB")).astype(int)
    gray = sk.mean(axis=2)
    assert (sk.max(axis=2) - sk.min(axis=2)).max() == 0  # no colour at all
    assert (gray > 250).mean() > 0.5  # mostly paper
    assert (gray < 100).mean() > 0.03  # and real lines


def test_masks_are_non_empty_inside_the_figure_and_carry_their_colour(chars):
    df = pd.read_csv(chars / "metadata.csv", dtype=str)
    for row in df.iloc[::7].itertuples():
        img = np.asarray(Image.open(chars / row.output).convert("RGB")).astype(int)
        stem = row.input.split("/")[-1][:-4]
        for attr, palette in (("hair", synth.HAIR_COLORS), ("shirt", synth.SHIRT_COLORS)):
            mask = np.asarray(Image.open(chars / f"masks/{stem}_{attr}.png")) > 0
            assert mask.sum() > 4, (stem, attr)
            px = img[mask]
            background = np.abs(px - np.array(synth.BACKGROUND)).sum(axis=1) < 12
            assert background.mean() < 0.05  # inside the figure
            # the region's median colour is the requested palette colour, not another one
            names, colours = list(palette), np.array(list(palette.values()))
            nearest = names[np.abs(colours - np.median(px, axis=0)).sum(axis=1).argmin()]
            assert nearest == getattr(row, attr), (row.output, attr)


def test_same_seed_same_bytes_other_seed_other_characters(tmp_path):
    a = synth.generate(tmp_path / "a", sketches=3, seed=1, size=32, workers=1)
    b = synth.generate(tmp_path / "b", sketches=3, seed=1, size=32, workers=2)  # parallel too
    c = synth.generate(tmp_path / "c", sketches=3, seed=2, size=32, workers=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 + 75 + 6 + 3
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    for i in range(3):
        s = f"sketches/char_{i:04d}.png"
        assert (a / s).read_bytes() != (c / s).read_bytes()


def test_characters_vary():
    traits = [synth.draw_character(64, np.random.default_rng([0, i]))[1] for i in range(40)]
    for key, options in (
        ("hair_style", synth.HAIR_STYLES),
        ("cut", synth.SHIRT_CUTS),
        ("pattern", synth.PATTERNS),
    ):
        assert len({t[key] for t in traits}) >= len(options) - 2, key


def test_cli(tmp_path, capsys):
    """In-process (``python -m colorjob.synth`` runs as a subprocess in test_nothing_lost)."""
    from colorjob.cli import main

    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--sketches", "2", "--size", "32"]) == 0
    printed = capsys.readouterr().out
    assert "50 pairs" in printed and str(out / "metadata.csv") in printed
    assert main(["synth", "--out", str(out), "--sketches", "2", "--size", "48"]) == 2
    assert "power of two" in capsys.readouterr().err
