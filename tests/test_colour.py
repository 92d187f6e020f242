"""Any colour a studio asks for (#rrggbb beside the named palette) and clean colourings (the
sketch's own lines kept, colour layers, the metrics that judge them): real code, small data."""

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from colorjob import synth
from colorjob.batch import BatchConfig, BatchError, execute, read_grid
from colorjob.colour import delta_e, delta_e_rgb, rgb_to_lab
from colorjob.composite import CORE, composite, composite_image, layer_targets, line_alpha
from colorjob.conditions import ConditionError, ConditionVocab, parse_hex
from colorjob.export import export_generator, load_generator, read_model
from colorjob.imaging import dilate
from colorjob.inference import colorize
from colorjob.metrics import colouring_stats, fidelity_hits
from colorjob.models import generator_for

# Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes,
# supplementary test data": pairs 1, 7, 13, 17, 19, 25, 31, 34 of the 34 published.
SHARMA = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def test_ciede2000_matches_the_published_test_data():
    for a, b, want in SHARMA:
        assert delta_e(np.array(a), np.array(b)) == pytest.approx(want, abs=1e-4)
    assert delta_e_rgb([10, 20, 30], [10, 20, 30]) == 0


# ---- colour values --------------------------------------------------------------------------------
def colour_vocab() -> ConditionVocab:
    return synth.vocabulary_for("random")


@pytest.mark.parametrize(
    ("value", "message"),
    [("#12345", "six hex digits"), ("#ggg000", "six hex digits"), ("#abc", "three-digit forms"),
     ("7f3fbf", "unknown hair colour"), ("dodgerblue", "unknown hair colour"), ("#7f3fbf ", None)],
)  # fmt: skip
def test_hex_values_parse_and_malformed_ones_are_refused(value, message):
    hair = colour_vocab()["hair"]
    if message is None:
        assert hair.code(value) == 0x7F3FBF and hair.value(hair.code(value)) == "#7f3fbf"
        return
    with pytest.raises(ConditionError, match=message):
        hair.code(value)
    assert parse_hex("#7F3FBF") == (127, 63, 191)


def test_a_grid_may_mix_named_and_hex_values_and_says_which_line_is_wrong(tmp_path):
    vocab = colour_vocab()
    grid = tmp_path / "grid.csv"
    grid.write_text("name,hair,shirt\nv1,#7F3FBF,red\nv2,black,#1e90ff\n,#1e90ff,#ff8c00\n")
    g = read_grid(str(grid), vocab)
    assert list(g["variant"]) == ["v1", "v2", "1e90ff_ff8c00"]
    assert json.loads(g["values"][0]) == {"hair": "#7f3fbf", "shirt": "red"}  # canonical: lowercase
    assert g["index"][1] == [vocab["hair"].code("black"), 0x1E90FF]
    bad = tmp_path / "bad.csv"
    bad.write_text("hair,shirt\n#7f3fbf,red\n#7f3,red\nblack,#zzzzzz\n")
    with pytest.raises(BatchError) as e:
        read_grid(str(bad), vocab)
    assert "row 3: hair '#7f3'" in str(e.value) and "row 4: shirt '#zzzzzz'" in str(e.value)


def test_a_model_of_named_colours_refuses_hex_values_clearly(tmp_path):
    grid = tmp_path / "grid.csv"
    grid.write_text("hair,shirt\n#1e90ff,red\n")
    with pytest.raises(BatchError, match="hex colours need a model trained on colours"):
        read_grid(str(grid), synth.vocabulary())


def test_a_dataset_with_hex_values_is_a_colour_dataset(tmp_path):
    from colorjob.data import PairDataset

    d = synth.generate(tmp_path / "d", 2, seed=3, size=32, workers=1, families=("icon",), colours="mixed", colourings_per_sketch=6)  # fmt: skip
    meta = pd.read_csv(d / "metadata.csv")
    assert meta["hair"].str.startswith("#").any() and (meta["hair"].isin(synth.HAIR_COLORS)).any()
    ds = PairDataset(d, 32)
    assert all(a.is_colour for a in ds.vocab.attributes)
    codes = ds.conditions.numpy()
    for (h, _), row in zip(codes, meta.itertuples(), strict=True):
        assert ds.vocab["hair"].rgb(h) == ds.vocab.color("hair", row.hair)
    r = synth.generate(tmp_path / "r", 1, seed=3, size=32, workers=1, families=("icon",), colours="random", colourings_per_sketch=4)  # fmt: skip
    (r / "conditions.json").unlink()  # without the sidecar: hex values make it a colour attribute
    assert PairDataset(r, 32).vocab["hair"].is_colour
    (d / "conditions.json").unlink()  # names that are no colours beside hex values: say what to do
    with pytest.raises(ConditionError, match="give them RGB in conditions.json"):
        PairDataset(d, 32)


def test_nearby_colours_are_nearby_conditions():
    vocab = colour_vocab()
    v = vocab.vectors(torch.tensor([[0x7F3FBF, 0xFF0000], [0x803FBF, 0xFF0000], [0x00FF00, 0xFF0000]]))  # fmt: skip
    assert (v[0] - v[1]).norm() < 0.02 < (v[0] - v[2]).norm()
    assert vocab.num_channels == 12 and vocab.rgb_slots() == [3, 4, 5, 9, 10, 11]


def test_a_colour_model_exports_and_reloads_with_its_colours(tmp_path):
    vocab = colour_vocab()
    torch.manual_seed(0)
    g = generator_for(vocab, "film", 32, 8, layers=True).eval()
    export_generator(g, vocab, tmp_path / "m")
    meta, _ = read_model(tmp_path / "m")
    assert meta["format_version"] == 2 and meta["out_channels"] == 4
    assert [a.get("kind") for a in meta["conditions"]["attributes"]] == ["colour", "colour"]
    g2, vocab2, _ = load_generator(tmp_path / "m")
    assert vocab2 == vocab and g2.planes == g.planes
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    codes = torch.tensor([[0x1E90FF, 0xFF8C00], [vocab["hair"].code("black"), 0x123456]])
    assert torch.equal(colorize(g, x, codes, vocab), colorize(g2, x, codes, vocab))


# ---- lines kept, layers ------------------------------------------------------------------------------
def sketch_of(size: int = 48) -> torch.Tensor:
    """Black strokes (some anti-aliased) on white paper, uint8 (1, 3, S, S)."""
    img = np.full((size, size, 3), 255, np.uint8)
    img[10:14, 4:40] = 0
    img[20:40, 30:33] = 0
    img[14, 4:40] = 128  # an anti-aliased edge
    return torch.from_numpy(img).permute(2, 0, 1)[None]


def test_the_composite_keeps_the_sketchs_line_art_whatever_the_colours():
    sk = sketch_of()
    colour = torch.rand(1, 3, 48, 48) * 255
    for coverage in (None, torch.rand(1, 1, 48, 48)):
        out = composite(colour, coverage, sk.float())
        core = line_alpha(sk.float()) >= CORE
        assert core.sum() > 100 and torch.equal(out[core.expand_as(out)].round(), sk.float()[core.expand_as(out)])  # fmt: skip
    # the same arithmetic at a sketch's own size, a strip of rows at a time
    layer = torch.cat([colour, torch.rand(1, 1, 48, 48) * 255], 1).round().byte()
    whole = composite(layer[:, :3].float(), layer[:, 3:].float() / 255, sk.float()).round().byte()
    strips = composite_image(layer[0].permute(1, 2, 0).numpy(), sk[0].permute(1, 2, 0).numpy(), rows=7)  # fmt: skip
    assert np.array_equal(strips, whole[0].permute(1, 2, 0).numpy())


def test_the_colour_layer_is_transparent_on_the_background_of_a_true_colouring(tmp_path):
    d = synth.generate(tmp_path / "d", 3, seed=4, size=64, workers=1, families=("icon", "sticker"))
    for i in range(3):
        sk = torch.from_numpy(np.asarray(Image.open(d / f"sketches/char_{i:04d}.png"))).permute(2, 0, 1)[None].float()  # fmt: skip
        tgt = torch.from_numpy(np.asarray(Image.open(d / f"colored/char_{i:04d}_blonde_red.png"))).permute(2, 0, 1)[None].float()  # fmt: skip
        bg = torch.from_numpy(np.asarray(Image.open(d / f"masks/char_{i:04d}_background.png")) > 0)
        hair = torch.from_numpy(np.asarray(Image.open(d / f"masks/char_{i:04d}_hair.png")) > 0)
        flat, cov = layer_targets(sk, tgt)
        assert float(cov[0, 0][bg].mean()) < 0.01 and float(cov[0, 0][hair].mean()) > 0.99
        blonde = torch.tensor(synth.HAIR_COLORS["blonde"], dtype=torch.float32)
        under = flat[0].permute(1, 2, 0)[hair]  # the colours under the lines too
        assert (under.median(0).values - blonde).abs().max() <= 1


def _constant_layer_model(vocab, colour: tuple, coverage: float, tmp: Path) -> str:
    """A real layered FiLM generator whose output layer is fixed: every pixel ``colour`` with
    ``coverage`` (the last convolution's weights zero, its bias set)."""
    torch.manual_seed(0)
    g = generator_for(vocab, "film", 32, 8, layers=True).eval()
    last = g.ups[-1].block[1]
    with torch.no_grad():
        last.weight.zero_()
        want = torch.tensor([c / 127.5 - 1 for c in colour] + [coverage * 2 - 1]).clamp(-0.999, 0.999)  # fmt: skip
        last.bias.copy_(torch.atanh(want))
    return str(export_generator(g, vocab, tmp / "const"))


@pytest.mark.parametrize("layout", ["mirror", "shards"])
def test_batch_writes_composites_and_colour_layers_a_painter_can_use(tmp_path, layout):
    import tarfile

    vocab = synth.vocabulary()
    model = _constant_layer_model(vocab, (200, 40, 40), 1.0, tmp_path)
    (tmp_path / "in").mkdir()
    sk = np.full((90, 70, 3), 255, np.uint8)  # its own size, not the model's square
    sk[20:24, 5:60] = 0
    sk[30:80, 40:43] = 0
    Image.fromarray(sk).save(tmp_path / "in" / "cat.png")
    grid = tmp_path / "grid.csv"
    grid.write_text("hair,shirt\nblack,red\n")
    execute(BatchConfig(input=str(tmp_path / "in"), conditions=str(grid), model=model, output=str(tmp_path / "out"),
                        mode="layers", layout=layout, executor="local"))  # fmt: skip
    if layout == "mirror":
        comp = np.asarray(Image.open(tmp_path / "out" / "cat__black_red.png"))
        layer = Image.open(tmp_path / "out" / "cat__black_red.layer.png")
    else:
        tar = next((tmp_path / "out" / "shards").rglob("*.tar"))
        with tarfile.open(tar) as t:
            assert sorted(t.getnames()) == [
                "cat__black_red.json",
                "cat__black_red.layer.png",
                "cat__black_red.png",
            ]
            comp = np.asarray(Image.open(t.extractfile("cat__black_red.png")))
            layer = Image.open(t.extractfile("cat__black_red.layer.png"))
            layer.load()
    assert comp.shape == (90, 70, 3) and layer.mode == "RGBA" and layer.size == (70, 90)
    lines = sk[..., 0] == 0
    assert (comp[lines] == 0).all()  # the sketch's strokes, exactly
    assert np.abs(comp[~lines].astype(int) - [200, 40, 40]).max() <= 2  # the colour everywhere else
    a = np.asarray(layer)
    assert (a[..., 3] == 255).all() and np.abs(
        a[..., :3].astype(int) - [200, 40, 40]
    ).max() <= 2  # no lines in it
    # and a model that paints nothing: the paper shows, the layer is transparent
    empty = _constant_layer_model(vocab, (200, 40, 40), 0.0, tmp_path / "e")
    execute(BatchConfig(input=str(tmp_path / "in"), conditions=str(grid), model=empty, output=str(tmp_path / "out2"), mode="layers", executor="local"))  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out2" / "cat__black_red.png")), sk)
    assert (
        np.asarray(Image.open(tmp_path / "out2" / "cat__black_red.layer.png"))[..., 3] == 0
    ).all()


def test_batch_with_a_hex_grid_end_to_end(tmp_path):
    vocab = colour_vocab()
    model = _constant_layer_model(vocab, (30, 144, 255), 1.0, tmp_path)
    (tmp_path / "in").mkdir()
    Image.open(Path(__file__).resolve().parents[1] / "examples" / "sketches" / "character_1.png").save(tmp_path / "in" / "a.png")  # fmt: skip
    grid = tmp_path / "grid.csv"
    grid.write_text("hair,shirt\n#1e90ff,#ff8c00\nblonde,#FF8C00\n")
    m = execute(BatchConfig(input=str(tmp_path / "in"), conditions=str(grid), model=model, output=str(tmp_path / "out"), executor="local")).read_manifest()  # fmt: skip
    assert list(m["hair"]) == ["#1e90ff", "blonde"] and list(m["shirt"]) == ["#ff8c00", "#ff8c00"]
    assert list(m["variant"]) == ["1e90ff_ff8c00", "blonde_ff8c00"] and (m["status"] == "ok").all()
    meta = json.loads(Image.open(tmp_path / "out" / m["output"][0]).text["colorjob"])
    assert meta["values"] == {"hair": "#1e90ff", "shirt": "#ff8c00"}


# ---- the metrics on hand-made images with known answers ----------------------------------------------
def test_the_colouring_metrics_give_the_known_numbers():
    vocab = synth.vocabulary()
    s = 40
    sketch = np.full((s, s, 3), 255, np.uint8)
    sketch[0:2, :] = 0  # a stroke along the top: its core is 2 x 40 = 80 pixels
    hair = np.zeros((s, s), bool)
    hair[10:20, 5:35] = True  # eroded by one pixel: 8 x 28 = 224 judged pixels
    bg = np.zeros((s, s), bool)
    bg[25:40, 0:40] = True  # eroded (the picture's edge is no border): rows 26..39 -> 14 x 40 = 560
    shirt = np.zeros((s, s), bool)
    shirt[22:24, 10:12] = True  # too small to judge once eroded
    out = sketch.copy()
    blonde, brown = synth.HAIR_COLORS["blonde"], synth.HAIR_COLORS["brown"]
    out[10:20, 5:35] = blonde
    out[11:15, 6:13] = brown  # 4 x 7 = 28 of the 224 judged pixels in the wrong colour
    out[26:39, 1:20] = (255, 255, 200)  # 13 x 19 = 247 of 560 background pixels changed by 55 ...
    out[26:39, 1:5] = (255, 255, 240)  # ... but 13 x 4 = 52 of them only by 15 (within tolerance)
    out[0:1, 0:10] = 200  # 10 of the 80 stroke pixels lightened
    images = torch.from_numpy(out).permute(2, 0, 1)[None]
    codes = torch.tensor([[vocab["hair"].index("blonde"), vocab["shirt"].index("red")]])
    masks = [{"hair": torch.from_numpy(hair), "shirt": torch.from_numpy(shirt), "background": torch.from_numpy(bg)}]  # fmt: skip
    stats = colouring_stats(
        images, torch.from_numpy(sketch).permute(2, 0, 1)[None], codes, masks, vocab
    )
    assert stats["acc_hair"] == pytest.approx(1 - 28 / 224)
    assert stats["leak"] == pytest.approx((247 - 52) / 560)
    assert stats["lines"] == pytest.approx(70 / 80)
    assert stats["de_hair_median"] == pytest.approx(0, abs=1e-6)  # the median pixel is blonde
    assert "acc_shirt" not in stats
    hits = fidelity_hits(images, codes, [{"hair": masks[0]["hair"], "shirt": torch.from_numpy(hair)}], vocab)  # fmt: skip
    assert hits.tolist() == [[True, False]]  # the "shirt" region there is blonde, not red
    # a colour request: ΔE2000 of the region's median from the requested colour
    cv = colour_vocab()
    asked = (70, 130, 180)
    got = np.array(asked) + (8, 0, 0)
    out2 = sketch.copy()
    out2[10:20, 5:35] = got
    stats = colouring_stats(torch.from_numpy(out2).permute(2, 0, 1)[None], torch.from_numpy(sketch).permute(2, 0, 1)[None], torch.tensor([[0x4682B4, 0]]), masks, cv)  # fmt: skip
    assert stats["de_hair_median"] == pytest.approx(float(delta_e(rgb_to_lab(got[None]), rgb_to_lab(np.array(asked)[None]))[0]), rel=1e-6)  # fmt: skip


# ---- the synthetic families ------------------------------------------------------------------------
def test_classic_is_byte_for_byte_the_seeds():
    """The pixels (and every other file) of a classic dataset are those colorjob 0.2 drew
    (the hash of ``colorjob synth --sketches 3 --seed 0 --size 64`` made by the landed 0.2)."""
    out = Path(tempfile.mkdtemp())
    synth.generate(out, 3, seed=0, size=64, workers=1)
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(out).as_posix().encode())
            h.update(np.asarray(Image.open(p)).tobytes() if p.suffix == ".png" else p.read_bytes())
    assert h.hexdigest() == "9f076a6d96078533a4c5a8420df978641a34d7eb04123d0f3ce93edb7afea2e2"


def test_placed_figures_end_above_the_edge_and_their_masks_cover_the_picture(tmp_path):
    fams = ("icon", "sticker", "bold", "fine", "doodle")
    d = synth.generate(tmp_path / "d", 30, seed=8, size=64, workers=1, families=fams)
    meta = pd.read_csv(d / "metadata.csv")
    above = 0
    for stem in sorted({Path(p).stem for p in meta["input"]}):
        sk = np.asarray(Image.open(d / f"sketches/{stem}.png").convert("L"))
        masks = {a: np.asarray(Image.open(d / f"masks/{stem}_{a}.png")) > 0 for a in ("hair", "shirt", "background")}  # fmt: skip
        above += bool((sk[-3:] > 200).all())  # no ink in the last rows: the figure ends above
        assert not (masks["hair"] & masks["shirt"]).any() and not (masks["background"] & (masks["hair"] | masks["shirt"])).any()  # fmt: skip
        coloured = np.asarray(Image.open(d / f"colored/{stem}_ginger_navy.png"))
        bg = masks["background"]
        assert bg.mean() > 0.2  # the figure does not fill the canvas
        inner = ~dilate(~bg, 3)  # away from the figure's anti-aliased edge
        assert (np.abs(coloured[inner].astype(int) - np.asarray(Image.open(d / f"sketches/{stem}.png"))[inner]).max(1) <= 2).all()  # background stays background  # fmt: skip
        if masks["hair"].sum() > 8:  # mostly hair: its colour (edge pixels share some line)
            assert (np.abs(np.median(coloured[masks["hair"]], 0) - synth.HAIR_COLORS["ginger"]) <= 1).all()  # fmt: skip
    assert above >= 10  # a good share of the figures end above the canvas edge


def test_the_command_takes_mode_as_a_flag_and_refuses_a_mode_given_as_the_output(tmp_path, capsys):
    """`colorjob batch --mode layers` writes the layers; `--set output=layers` (the output
    folder named like a mode) stops with the flag it meant, before any work."""
    from colorjob.cli import main

    model = _constant_layer_model(synth.vocabulary(), (30, 90, 200), 1.0, tmp_path)
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(tmp_path / "in" / "cat.png")
    grid = tmp_path / "grid.csv"
    grid.write_text("hair,shirt\nblack,red\n")
    common = ["batch", "--input", str(tmp_path / "in"), "--conditions", str(grid), "--model", model, "-q"]  # fmt: skip
    assert main([*common, "--output", str(tmp_path / "out"), "--mode", "layers"]) == 0
    assert (tmp_path / "out" / "cat__black_red.layer.png").is_file()
    rc = main([*common, "--output", str(tmp_path / "o2"), "--set", "output=layers"])
    err = capsys.readouterr().err
    assert rc == 2 and "did you mean mode=layers (--mode layers)" in err, err
    assert not (tmp_path / "o2").exists()  # refused before any work
