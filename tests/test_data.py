import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from colorjob import data
from colorjob.data import DatasetError, PairDataset, load_splits, split_indices


def test_synthetic_folder_loads(chars):
    ds = PairDataset(chars, image_size=32)
    assert len(ds) == 100
    item = ds[0]
    assert item["sketch"].shape == item["target"].shape == (3, 32, 32)
    assert item["sketch"].dtype == torch.float32
    assert item["target"].min() >= -1 and item["target"].max() <= 1
    assert item["condition"].tolist() == ds.vocab.encode(ds.metadata.iloc[0])
    assert ds.has_masks()
    assert ds.mask(ds.metadata["input"][0], "hair").dtype == torch.bool


def test_resized_to_model_size(chars):
    ds = PairDataset(chars, image_size=64)
    assert ds[3]["target"].shape == (3, 64, 64)


def _hand_made(root):
    """Mixed modes and sizes, the way a studio's folder looks."""
    root.mkdir()
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent: must become white
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    pal.info["transparency"] = 0
    images = {
        "s1.png": Image.new("1", (50, 70), 1),
        "s2.png": Image.new("L", (64, 64), 200),
        "s3.png": Image.new("LA", (16, 16), (0, 0)),
        "t1.png": rgba,
        "t2.png": pal,
        "t3.png": Image.fromarray(np.full((12, 12), 65535, np.uint16)),  # I;16 white
        "t4.jpg": Image.new("RGB", (33, 21), (0, 128, 0)),
    }
    for name, im in images.items():
        im.save(root / name)
    assert Image.open(root / "t3.png").mode.startswith("I")
    pd.DataFrame(
        {
            "input": ["s1.png", "s1.png", "s2.png", "s3.png", "s3.png"],
            "output": ["t1.png", "t2.png", "t3.png", "t4.jpg", "t1.png"],
            "eyes": ["blue", "green", "blue", "brown", "green"],
        }
    ).to_csv(root / "metadata.csv", index=False)
    return root


def test_hand_made_folder_with_mixed_modes_and_sizes(tmp_path):
    ds = PairDataset(_hand_made(tmp_path / "hand"), image_size=32)
    assert ds.vocab.names == ["eyes"] and ds.vocab["eyes"].values == ("blue", "brown", "green")
    items = [ds[i] for i in range(len(ds))]
    for it in items:
        assert it["sketch"].shape == it["target"].shape == (3, 32, 32)
    assert torch.allclose(items[0]["target"][:, 16, 16], torch.ones(3))  # RGBA on white
    assert torch.allclose(items[1]["target"][:, 5, 5], torch.ones(3))  # transparent palette index
    assert torch.allclose(items[2]["target"], torch.ones(3, 32, 32))  # 16-bit white stays white
    assert torch.allclose(
        items[3]["sketch"], torch.ones(3, 32, 32)
    )  # LA transparent black -> white
    assert items[3]["target"][1].mean() > items[3]["target"][0].mean()  # jpeg green
    assert torch.allclose(items[0]["sketch"], torch.ones(3, 32, 32))  # mode "1" white
    assert not ds.has_masks()


def test_each_file_decoded_once_per_run(chars, monkeypatch):
    calls = []
    real = data.load_rgb
    monkeypatch.setattr(data, "load_rgb", lambda p: calls.append(p) or real(p))
    train, val = load_splits(chars, 32, val_fraction=0.25, seed=0)
    for _ in range(2):  # two epochs
        for ds in (train, val):
            for i in range(len(ds)):
                ds[i]
    assert len(calls) == len(set(calls)) == 4 + 100


def test_split_by_sketch_holds_out_whole_characters(chars):
    df = data.read_metadata(chars)
    tr, va = split_indices(df, 0.25, seed=3, by="sketch")
    assert len(tr) + len(va) == len(df) and len(va) == 25
    assert not set(df["input"].iloc[tr]) & set(df["input"].iloc[va])
    tr2, va2 = split_indices(df, 0.25, seed=3, by="sketch")
    assert np.array_equal(va, va2)  # seeded
    held_out = {
        tuple(df["input"].iloc[split_indices(df, 0.25, seed=s)[1]].unique()) for s in range(10)
    }
    assert len(held_out) > 1  # the seed picks which characters
    ptr, pva = split_indices(df, 0.2, seed=3, by="pair")
    assert len(pva) == 20 and set(df["input"].iloc[pva]) & set(df["input"].iloc[ptr])


def test_tensors_for_keeping_the_set_on_device(chars):
    train, val = load_splits(chars, 32, val_fraction=0.25)
    t = val.tensors()
    assert t["sketches"].shape == (1, 3, 32, 32) and t["targets"].shape == (25, 3, 32, 32)
    assert t["targets"].dtype == torch.uint8
    assert torch.equal(data.to_unit(t["targets"][4]), val[4]["target"])
    assert torch.equal(data.to_unit(t["sketches"][t["sketch_index"][4]]), val[4]["sketch"])


def test_bad_folders_give_their_documented_errors(tmp_path, chars):
    with pytest.raises(DatasetError, match="does not exist"):
        PairDataset(tmp_path / "nowhere")
    (tmp_path / "nometa").mkdir()
    with pytest.raises(DatasetError, match="metadata.csv not found"):
        PairDataset(tmp_path / "nometa")

    def folder(name, text):
        d = tmp_path / name
        d.mkdir()
        (d / "metadata.csv").write_text(text)
        return d

    with pytest.raises(DatasetError, match="lacks column.*output"):
        PairDataset(folder("nocol", "input,hair\na.png,red\n"))
    with pytest.raises(DatasetError, match="no condition columns"):
        PairDataset(folder("noattr", "input,output\na.png,b.png\n"))
    with pytest.raises(DatasetError, match="no rows.*empty"):
        PairDataset(folder("empty", "input,output,hair\n"))
    with pytest.raises(DatasetError, match="is empty"):
        PairDataset(folder("zero", ""))
    d = folder("missing", "input,output,hair\na.png,b.png,red\na.png,c.png,red\n")
    Image.new("RGB", (8, 8)).save(d / "a.png")
    with pytest.raises(DatasetError, match=r"2 image file\(s\).*missing.*b\.png, c\.png"):
        PairDataset(d)
    with pytest.raises(DatasetError, match="cannot read image"):
        (d / "b.png").write_bytes(b"not a png")
        (d / "c.png").write_bytes(b"")
        PairDataset(d)[0]
