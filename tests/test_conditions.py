import pandas as pd
import pytest
import torch

from colorjob import synth
from colorjob.conditions import ConditionError, ConditionVocab
from colorjob.data import read_metadata


def test_vocab_from_synthetic_metadata_keeps_palette_order_and_colours(chars):
    vocab = ConditionVocab.from_metadata(read_metadata(chars), chars)
    assert vocab.names == ["hair", "shirt"]
    assert vocab["hair"].values == tuple(synth.HAIR_COLORS)
    assert vocab["shirt"].colors == tuple(synth.SHIRT_COLORS.values())
    assert vocab.num_channels == 10
    assert vocab == synth.vocabulary()


def test_vocab_from_plain_metadata_sorts_values_and_knows_css_colours():
    df = pd.DataFrame(
        {
            "input": ["a.png"] * 3,
            "output": ["b", "c", "d"],
            "hair": ["red", "black", "mauve-ish"],
            "eyes": ["blue"] * 3,
        }
    )
    vocab = ConditionVocab.from_metadata(df)
    assert vocab.names == ["hair", "eyes"]
    assert vocab["hair"].values == ("black", "mauve-ish", "red")
    assert vocab.color("hair", "red") == (255, 0, 0)
    assert vocab.color("hair", "mauve-ish") is None  # unknown colour name: no colour, not an error


def test_one_hot_planes_round_trip():
    vocab = synth.vocabulary()
    rows = [{"hair": "blonde", "shirt": "navy"}, {"hair": "black", "shirt": "purple"}]
    idx = torch.tensor([vocab.encode(r) for r in rows])
    planes = vocab.planes(idx, 8)
    assert planes.shape == (2, 10, 8, 8)
    assert torch.equal(planes.sum(dim=1), torch.full((2, 8, 8), 2.0))  # one hot value per attribute
    assert planes[0, vocab.offsets[0] + vocab["hair"].index("blonde")].eq(1).all()
    assert vocab.from_planes(planes) == rows
    assert [vocab.decode(i) for i in idx.tolist()] == rows


def test_unknown_value_error_names_value_attribute_and_known_values():
    vocab = synth.vocabulary()
    with pytest.raises(ConditionError) as e:
        vocab.encode({"hair": "green", "shirt": "red"})
    msg = str(e.value)
    assert "'green'" in msg and "hair" in msg
    assert "black, brown, blonde, ginger, blue" in msg
    with pytest.raises(ConditionError, match="missing attribute.*shirt"):
        vocab.encode({"hair": "black"})


def test_dict_round_trip_and_short_config_form(tmp_path):
    vocab = synth.vocabulary()
    vocab.save(tmp_path / "c.json")
    assert ConditionVocab.load(tmp_path / "c.json") == vocab
    short = ConditionVocab.from_dict(
        {"hair": {"black": [0, 0, 0], "pink": "#ff88aa"}, "shirt": ["red", "teal"]}
    )
    assert short["hair"].colors == ((0, 0, 0), (255, 136, 170))
    assert short.color("shirt", "teal") == (0, 128, 128)


def test_sidecar_must_cover_the_metadata_values(chars, tmp_path):
    df = pd.read_csv(chars / "metadata.csv", dtype=str)
    df.loc[3, "hair"] = "silver"
    (tmp_path / "conditions.json").write_text((chars / "conditions.json").read_text())
    with pytest.raises(ConditionError, match="silver"):
        ConditionVocab.from_metadata(df, tmp_path)
