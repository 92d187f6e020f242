"""Release tooling: re-export a trained generator in fp16 with a model card (``MODEL_CARD.md``),
e.g. to ship it as colorjob's default model (``colorjob/assets/default``).

    colorjob export --from runs/default/best --device "CPU (2 cores)" --command "..."
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from colorjob.export import (
    META,
    WEIGHTS,
    ModelError,
    export_generator,
    is_model_folder,
    load_generator,
    read_model_info,
)


def check_destination(dest: Path) -> None:
    """``dest`` may be replaced only when it is new, empty, or an exported model: never a
    folder of other files, never a file."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ModelError(f"--to {dest} is a file: give a folder (new, empty, or an exported model to replace)")  # fmt: skip
    if dest.is_dir() and any(dest.iterdir()) and not is_model_folder(dest):
        others = sorted(p.name for p in dest.iterdir())
        shown = ", ".join(others[:8]) + (f" and {len(others) - 8} more" if len(others) > 8 else "")
        raise ModelError(
            f"--to {dest} holds files that are not an exported model ({shown}); replacing it "
            f"would delete them: choose a new or empty folder (an exported model folder holds "
            f"only {WEIGHTS}, {META}, MODEL_CARD.md, samples.png)"
        )


CARD = """# colorjob default generator

A small conditional sketch-colorization generator shipped with colorjob, so that batch colorization
works out of the box:

    colorjob batch --input examples/sketches --conditions configs/grid.csv --output out/

| | |
|---|---|
| model id | `{model_id}` |
| architecture | pix2pix U-Net, {image_size} px, ngf {ngf}, conditioning `{conditioning}` ({params:,} parameters), weights in {dtype} ({size_mb:.1f} MB) |
| conditions | {conditions} |
| training data | synthetic characters (`colorjob.synth`), {sketches} characters x 25 colourings{families}; style augmentation {augment} |
| validation | whole characters held out (split by sketch) |
| best epoch | {epoch} of {epochs} |
| validation L1 | {val_l1:.4f} (on [-1, 1], the scale of the seed's 0.01685) |
| validation PSNR | {val_psnr:.2f} dB |
| condition fidelity | {fidelity} on held-out characters |
| held-out drawing style | {holdout} |
| trained on | {device} |

How it was made:

    {commands}

`samples.png`: held-out characters (first column) in five conditions at the exported epoch.

Limits: it has only seen colorjob's synthetic characters (bust portraits, black line art on white,
five hair and five shirt colours); sketches of other kinds get plausible but unreliable colours.
"""


def ship(model_dir: str | Path, dest: str | Path, device: str, commands: list[str]) -> Path:
    """Re-export ``model_dir`` in fp16 to ``dest`` with a model card (``MODEL_CARD.md``).
    ``dest`` must be new, empty or an exported model (:func:`check_destination`)."""
    from PIL import Image

    check_destination(Path(dest))

    g, vocab, meta = load_generator(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(model_dir) / "samples.png"
        preview = None
        if samples.is_file():  # a light preview: the package stays small
            preview = Path(tmp) / "samples.png"
            img = Image.open(samples).convert("RGB")
            img.thumbnail((780, 780))
            img.save(preview, optimize=True)
        out = export_generator(
            g, vocab, dest, metrics=meta["metrics"], config=meta["train_config"],
            dtype=torch.float16, samples=preview, schedule=meta.get("schedule"),
        )  # fmt: skip
    info = read_model_info(out)
    m, cfg = info["metrics"], info["train_config"]
    sketches, families = "?", ""
    if (Path(cfg.get("data", "")) / "metadata.csv").is_file():
        from colorjob.data import read_metadata

        sketches = read_metadata(cfg["data"])["input"].nunique()
        if (Path(cfg["data"]) / "families.csv").is_file():
            import pandas as pd

            names = sorted(pd.read_csv(Path(cfg["data"]) / "families.csv")["family"].unique())
            families = f" in the drawing styles {', '.join(names)}"
    fid = m.get("val_fidelity")
    holdout = "n/a"
    if m.get("holdout_fidelity") is not None:
        held = Path(cfg.get("holdout_data") or "")
        style = "a style never trained on"
        if (held / "families.csv").is_file():
            import pandas as pd

            style = (
                ", ".join(sorted(pd.read_csv(held / "families.csv")["family"].unique()))
                + " (never trained on)"
            )
        holdout = f"{style}: L1 {m['holdout_l1']:.4f}, fidelity {m['holdout_fidelity']:.1%}"
    (out / "MODEL_CARD.md").write_text(
        CARD.format(
            model_id=info["model_id"],
            image_size=info["image_size"],
            ngf=info["ngf"],
            conditioning=info["conditioning"],
            families=families,
            holdout=holdout,
            augment=f"p = {cfg['augment']}" if cfg.get("augment") else "off",
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
