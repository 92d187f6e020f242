"""The exported generator: ``generator.safetensors`` + ``model.json``. One loader for everyone.

``model.json`` holds what is needed to rebuild and use the generator with no training config file
around: the format version, image size, widths, the condition vocabulary (with colours), the
metrics of the exported epoch and the training config. Batch colorization, the tuning export and
the tests all go through :func:`load_generator`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file

from colorjob import storage
from colorjob.conditions import ConditionVocab
from colorjob.models import Generator

FORMAT = "colorjob.generator"
FORMAT_VERSION = 1
WEIGHTS, META = "generator.safetensors", "model.json"


class ModelError(ValueError):
    """A model directory that cannot be loaded or does not fit what it is asked to do."""


def export_generator(
    generator: Generator,
    vocab: ConditionVocab,
    out_dir: str | Path,
    metrics: dict | None = None,
    config: dict | None = None,
    dtype: torch.dtype = torch.float32,
    samples: str | Path | None = None,
) -> Path:
    """Write ``out_dir/generator.safetensors`` and ``out_dir/model.json`` (atomically, each).

    ``samples``: a picture of what the generator makes, kept beside it as ``samples.png``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if samples is not None:
        with storage.replacing(out / "samples.png") as tmp:
            shutil.copyfile(samples, tmp)
    state = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in generator.state_dict().items()
    }
    with storage.replacing(out / WEIGHTS) as tmp:
        save_file(state, str(tmp))
        os.chmod(tmp, 0o644)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": _file_hash(out / WEIGHTS),
        "image_size": generator.image_size,
        "in_channels": generator.in_channels,
        "out_channels": generator.out_channels,
        "ngf": generator.ngf,
        "dtype": str(dtype).removeprefix("torch."),
        "conditions": vocab.to_dict(),
        "metrics": metrics or {},
        "train_config": config or {},
    }
    with storage.replacing(out / META) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return out


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_model_info(model_dir: str | Path) -> dict:
    """``model.json`` of a model directory (a folder or a URI), checked; no weights are read."""
    fs, root = storage.resolve(model_dir)
    try:
        found = storage.is_dir(fs, root)
    except OSError as e:
        raise ModelError(str(storage.explain(str(model_dir), e))) from None
    if not found:
        raise ModelError(
            f"model directory {model_dir} does not exist (train one: python -m colorjob.train ...)"
        )
    missing = [n for n in (WEIGHTS, META) if not storage.exists(fs, storage.join(root, n))]
    if missing:
        raise ModelError(
            f"{model_dir} is not an exported colorjob model: missing {', '.join(missing)}"
        )
    where = f"{str(model_dir).rstrip('/')}/{META}"
    try:
        meta = json.loads(storage.read_bytes(fs, storage.join(root, META)))
    except json.JSONDecodeError as e:
        raise ModelError(f"{where} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{where} is not a colorjob generator (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(
            f"{where} has format version {meta['format_version']}; this colorjob reads up to "
            f"{FORMAT_VERSION}: upgrade colorjob"
        )
    model_vocab = ConditionVocab.from_dict(meta["conditions"])
    expected = 3 + model_vocab.num_channels
    if meta["in_channels"] != expected:
        raise ModelError(
            f"{where}: in_channels {meta['in_channels']} does not fit its vocabulary "
            f"({model_vocab.num_channels} condition planes + 3 = {expected})"
        )
    return meta


def read_model(model_dir: str | Path) -> tuple[dict, bytes]:
    """``(model.json, generator.safetensors bytes)``: what a remote worker needs to rebuild it."""
    meta = read_model_info(model_dir)
    fs, root = storage.resolve(model_dir)
    return meta, storage.read_bytes(fs, storage.join(root, WEIGHTS))


def build_generator(
    meta: dict,
    weights: bytes,
    device: str | torch.device = "cpu",
    vocab: ConditionVocab | None = None,
) -> tuple[Generator, ConditionVocab]:
    """A generator in eval mode from :func:`read_model`'s output."""
    model_vocab = ConditionVocab.from_dict(meta["conditions"])
    if vocab is not None and vocab != model_vocab:
        raise ModelError(
            f"condition vocabulary mismatch: the model knows {model_vocab}, asked for {vocab}"
        )
    g = Generator(meta["in_channels"], meta["out_channels"], meta["image_size"], meta["ngf"])
    state = safetensors_load(weights)
    try:
        g.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        raise ModelError(f"{WEIGHTS} does not match the shape model.json describes: {e}") from None
    return g.to(device).eval(), model_vocab


def load_generator(
    model_dir: str | Path, device: str | torch.device = "cpu", vocab: ConditionVocab | None = None
) -> tuple[Generator, ConditionVocab, dict]:
    """Rebuild the exported generator in eval mode; returns ``(generator, vocab, model.json)``.

    ``vocab``, when given, must equal the model's (same attributes, values and order).
    """
    meta, weights = read_model(model_dir)
    try:
        g, model_vocab = build_generator(meta, weights, device, vocab)
    except ModelError as e:
        raise ModelError(f"{model_dir}: {e}") from None
    return g, model_vocab, meta


DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default"

CARD = """# colorjob default generator

A small conditional sketch-colorization generator shipped with colorjob, so that batch colorization
works out of the box:

    python -m colorjob.batch --input examples/sketches --conditions configs/grid.csv --output out/

| | |
|---|---|
| model id | `{model_id}` |
| architecture | pix2pix U-Net, {image_size} px, ngf {ngf} ({params:,} parameters), weights in {dtype} ({size_mb:.1f} MB) |
| conditions | {conditions} |
| training data | synthetic characters (`colorjob.synth`), {sketches} characters x 25 colourings |
| validation | whole characters held out (split by sketch) |
| best epoch | {epoch} of {epochs} |
| validation L1 | {val_l1:.4f} (on [-1, 1], the scale of the seed's 0.01685) |
| validation PSNR | {val_psnr:.2f} dB |
| condition fidelity | {fidelity} |
| trained on | {device} |

How it was made:

    {commands}

`samples.png`: held-out characters (first column) in five conditions at the exported epoch.

Limits: it has only seen colorjob's synthetic characters (bust portraits, black line art on white,
five hair and five shirt colours); sketches of other kinds get plausible but unreliable colours.
"""


def ship(model_dir: str | Path, dest: str | Path, device: str, commands: list[str]) -> Path:
    """Re-export ``model_dir`` in fp16 to ``dest`` with a model card (``MODEL_CARD.md``)."""
    g, vocab, meta = load_generator(model_dir)
    samples = Path(model_dir) / "samples.png"
    out = export_generator(
        g, vocab, dest, metrics=meta["metrics"], config=meta["train_config"], dtype=torch.float16,
        samples=samples if samples.is_file() else None,
    )  # fmt: skip
    if (out / "samples.png").is_file():  # a light preview: the package stays small
        from PIL import Image

        preview = Image.open(out / "samples.png").convert("RGB")
        preview.thumbnail((780, 780))
        preview.save(out / "samples.png", optimize=True)
    info = read_model_info(out)
    m, cfg = info["metrics"], info["train_config"]
    data_meta = Path(cfg.get("data", "")) / "metadata.csv"
    sketches = "?"
    if data_meta.is_file():
        import pandas as pd

        sketches = pd.read_csv(data_meta)["input"].nunique()
    fid = m.get("val_fidelity")
    (out / "MODEL_CARD.md").write_text(
        CARD.format(
            model_id=info["model_id"],
            image_size=info["image_size"],
            ngf=info["ngf"],
            params=sum(p.numel() for p in g.parameters()),
            dtype="fp16",
            size_mb=(out / WEIGHTS).stat().st_size / 1e6,
            conditions="; ".join(f"{a.name}: {', '.join(a.values)}" for a in vocab.attributes),
            sketches=sketches,
            epoch=m.get("epoch"),
            epochs=cfg.get("epochs"),
            val_l1=m["val_l1"],
            val_psnr=m["val_psnr"],
            fidelity="n/a" if fid is None else f"{fid:.1%}",
            device=device,
            commands="\n    ".join(commands),
        )  # fmt: skip
    )
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m colorjob.export",
        description="Re-export a trained generator (OUT/best) in fp16 with a model card, e.g. to ship "
        "it as colorjob's default model (colorjob/assets/default).",
    )
    p.add_argument(
        "--from", dest="src", required=True, help="an exported model folder (train's OUT/best)"
    )
    p.add_argument(
        "--to", default=str(DEFAULT_MODEL), help="destination folder (default: the shipped default)"
    )
    p.add_argument("--device", default="CPU", help="what it was trained on, for the card")
    p.add_argument(
        "--command",
        action="append",
        default=[],
        help="a command that made it, for the card (repeatable)",
    )
    a = p.parse_args(argv)
    out = ship(a.src, a.to, a.device, a.command or ["(not recorded)"])
    print(f"shipped: {out} ({(out / WEIGHTS).stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
