"""The condition-aware networks, style augmentations, drawing families and fine-tuning."""

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from colorjob import augment, synth
from colorjob.batch import BatchConfig, execute
from colorjob.export import ModelError, load_generator, read_model_info
from colorjob.imaging import to_uint8, to_unit
from colorjob.inference import colorize
from colorjob.models import (
    FiLMGenerator,
    Generator,
    ProjectionDiscriminator,
    build_generator,
    count_parameters,
)
from colorjob.train import initial_weights, train


def run(cfg):
    return execute(cfg).read_manifest()


def test_film_generator_shapes_and_size():
    g = build_generator("film", 10, 256, 64)
    assert isinstance(g, FiLMGenerator) and g.in_channels == 3
    seed = Generator(in_channels=13)
    # No condition planes at the input (-10 x 64 x 16 first-layer weights), affine-free BatchNorm
    # in the decoder (-2 x its channels), and a FiLM layer per decoder block (11 x 2 x channels).
    decoder = [up.block[2].num_features for up in g.ups[:-1]]
    assert count_parameters(g) == count_parameters(seed) - 10 * 64 * 16 - 2 * sum(
        decoder
    ) + 11 * 2 * sum(decoder)
    assert count_parameters(g) / count_parameters(seed) < 1.01
    x, c = torch.rand(2, 3, 64, 64), torch.zeros(2, 10)
    c[:, [1, 7]] = 1
    assert build_generator("film", 10, 64, 8)(x, c).shape == (2, 3, 64, 64)
    d = ProjectionDiscriminator(10, 8, 3)
    assert d(torch.rand(2, 6, 64, 64), c).shape == (2, 1, 6, 6)


def test_the_condition_changes_a_film_generators_output_only_through_the_decoder():
    torch.manual_seed(0)
    g = build_generator("film", 10, 32, 8).eval()
    for m in g.modules():  # FiLM starts as the identity: make it do something
        if hasattr(m, "to_scale_shift"):
            torch.nn.init.normal_(m.to_scale_shift.weight, 0, 0.5)
    x = torch.rand(1, 3, 32, 32)
    a, b = torch.zeros(1, 10), torch.zeros(1, 10)
    a[0, [0, 5]], b[0, [4, 9]] = 1, 1
    with torch.no_grad():
        assert all(
            torch.equal(f1, f2) for f1, f2 in zip(g.encode(x, a), g.encode(x, b), strict=True)
        )
        assert not torch.equal(g(x, a), g(x, b))


def test_shared_encoder_inference_equals_a_forward_per_pair():
    vocab = synth.vocabulary()
    torch.manual_seed(1)
    g = build_generator("film", 10, 32, 8).eval()
    for m in g.modules():
        if hasattr(m, "to_scale_shift"):
            torch.nn.init.normal_(m.to_scale_shift.weight, 0, 0.3)
    sketches = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    conds = torch.tensor([[h, s] for h in range(5) for s in range(5)] * 3)
    index = torch.arange(3).repeat_interleave(25)
    with torch.no_grad():
        each = to_uint8(g(to_unit(sketches[index]), vocab.vectors(conds)))
    shuffled = torch.randperm(75)  # pairs of a sketch need not follow each other
    for batch in (1, 7, 25, 80):
        for order in (torch.arange(75), shuffled):
            shared = colorize(g, sketches, conds[order], vocab, index[order], batch, output="raw")
            per_pair = colorize(g, sketches, conds[order], vocab, index[order], batch, share_encoder=False, output="raw")  # fmt: skip
            assert torch.equal(shared, per_pair), batch  # bit for bit
    # and both are the generator's own forward (a wrong sketch or condition differs everywhere)
    assert (
        colorize(g, sketches, conds, vocab, index, 75, output="raw").int() - each.int()
    ).abs().max() <= 1


@pytest.fixture(scope="module")
def film_run(tiny_cfg):
    cfg = tiny_cfg(
        conditioning="film", d_conditioning="projection", epochs=1, batch_size=1, augment=0.5
    )
    return cfg, train(cfg)


def test_film_trains_with_batch_size_1_exports_and_batch_colours_with_it(film_run, tmp_path, chars):
    cfg, summary = film_run
    best = Path(cfg.out) / "best"
    info = read_model_info(best)
    assert info["conditioning"] == "film" and info["in_channels"] == 3
    g, vocab, _ = load_generator(best)
    assert isinstance(g, FiLMGenerator)
    (tmp_path / "in").mkdir()
    for i in range(2):
        (tmp_path / "in" / f"s{i}.png").write_bytes(
            (chars / "sketches" / f"char_000{i}.png").read_bytes()
        )
    grid = tmp_path / "grid.csv"
    grid.write_text("hair,shirt\nblack,red\nblue,navy\n")
    m = run(BatchConfig(input=str(tmp_path / "in"), conditions=str(grid), model=str(best), output=str(tmp_path / "out"), executor="local"))  # fmt: skip
    assert len(m) == 4 and (m["status"] == "ok").all()
    for r in m.itertuples():  # the file is the generator's own colouring
        sk = torch.from_numpy(__import__("numpy").asarray(Image.open(tmp_path / "in" / r.input).convert("RGB")).copy()).permute(2, 0, 1)  # fmt: skip
        want = colorize(
            g, sk[None], torch.tensor([vocab.encode({"hair": r.hair, "shirt": r.shirt})]), vocab
        )[0]
        got = torch.from_numpy(__import__("numpy").asarray(Image.open(tmp_path / "out" / r.output).convert("RGB")).copy()).permute(2, 0, 1)  # fmt: skip
        assert torch.equal(got, want)


def test_init_from_an_exported_model_or_a_checkpoint_and_refuses_other_conditions(
    film_run, tiny_cfg, tmp_path
):
    cfg, _ = film_run
    best = Path(cfg.out) / "best"
    from colorjob.conditions import ConditionVocab

    vocab = ConditionVocab.from_dict(read_model_info(best)["conditions"])
    g_state, d_state = initial_weights(str(best), cfg, vocab)
    assert d_state is None and torch.equal(g_state["ups.1.film.to_scale_shift.weight"], load_generator(best)[0].state_dict()["ups.1.film.to_scale_shift.weight"])  # fmt: skip
    g_state, d_state = initial_weights(cfg.out, cfg, vocab)  # a run folder: G and D
    assert d_state is not None and "embed.weight" in d_state
    tuned = train(
        dataclasses.replace(cfg, out=str(tmp_path / "tuned"), init_from=str(best), epochs=1)
    )
    assert tuned["epochs"] == 1
    with pytest.raises(ModelError, match="networks differ.*conditioning 'film' vs 'concat'"):
        initial_weights(
            str(best),
            dataclasses.replace(cfg, conditioning="concat", d_conditioning="concat"),
            vocab,
        )
    other = ConditionVocab.from_dict({"hair": ["black", "pink"], "shirt": list(synth.SHIRT_COLORS)})
    with pytest.raises(ModelError, match=r"other conditions.*hair values .*only here: \['brown'"):
        initial_weights(str(best), cfg, other)


def test_the_geometric_jitter_moves_sketch_and_target_alike():
    torch.manual_seed(3)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    a, b = augment.jitter(x, x.clone(), p=1.0)
    assert torch.equal(a, b) and not torch.equal(a, x)
    torch.manual_seed(3)
    s, t = augment.style(x, x.clone(), p=1.0)  # sketch-only changes differ; the warp is shared
    torch.manual_seed(3)
    warped, _ = augment.jitter(x, x.clone(), p=1.0)
    assert torch.equal(t, warped.clamp(-1, 1)) and not torch.equal(s, t)
    assert s.min() >= -1 and s.max() <= 1


def test_drawing_families_classic_unchanged_and_a_held_out_family_stays_out(tmp_path):
    train_fams = ("classic", "bold", "fine", "minimal", "busy")
    d = synth.generate(tmp_path / "train", 12, seed=5, size=32, workers=1, families=train_fams)
    fams = pd.read_csv(d / "families.csv")
    assert set(fams["family"]) <= set(train_fams) and "chibi" not in set(fams["family"])
    assert list(fams["input"]) == sorted(pd.read_csv(d / "metadata.csv")["input"].unique())
    held = synth.generate(tmp_path / "held", 3, seed=6, size=32, workers=1, families=("chibi",))
    assert set(pd.read_csv(held / "families.csv")["family"]) == {"chibi"}
    plain = synth.generate(tmp_path / "plain", 2, seed=5, size=32, workers=1)
    assert not (plain / "families.csv").exists()
    for i in range(2):  # a classic character is the same drawing whatever else is asked for
        same = fams.loc[fams["input"] == f"sketches/char_{i:04d}.png", "family"].item() == "classic"
        if same:
            assert (plain / f"sketches/char_{i:04d}.png").read_bytes() == (
                d / f"sketches/char_{i:04d}.png"
            ).read_bytes()


def test_the_held_out_dataset_is_scored_every_epoch(film_run, tiny_cfg, tmp_path):
    held = synth.generate(tmp_path / "chibi", 2, seed=9, size=32, workers=1, families=("chibi",))
    s = train(tiny_cfg(out=tmp_path / "h", holdout_data=str(held), epochs=1))
    row = s["history"][0]
    assert 0 < row["holdout_l1"] < 2 and 0 <= row["holdout_fidelity"] <= 1
    m = pd.read_csv(tmp_path / "h" / "metrics.csv")
    assert m[["holdout_l1", "holdout_fidelity"]].notna().all().all()
