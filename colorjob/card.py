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
| architecture | pix2pix U-Net, {image_size} px, ngf {ngf}, conditioning `{conditioning}`{head} ({params:,} parameters), weights in {dtype} ({size_mb:.1f} MB) |
| conditions | {conditions} |
| output | {output} |
| training data | synthetic characters (`colorjob.synth`), {sketches} characters x {colourings} colourings{families}{colours}; style augmentation {augment} |
| validation | whole characters held out (split by sketch) |
| best epoch | {epoch} of {epochs} |
| trained on | {device} |

What it does on characters it never saw:

| | held-out characters | {holdout_name} |
|---|---|---|
{table}

L1 is on [-1, 1] (the scale of the seed's 0.01685); *fidelity*: the share of (image, attribute)
pairs whose region has the colour asked for (a named value: the nearest palette colour; a
colour: within ΔE2000 10); *pixel accuracy*: the share of a region's pixels whose nearest colour
is the one asked for; *ΔE2000*: between the colour asked for and the region's median colour
(median and 95th percentile over images; colours drawn over the gamut and named ones); *leak*:
the share of background pixels changed; *lines*: the share of the sketch's stroke pixels kept.
All measured on the pixels a user gets (colorjob.metrics).

How it was made:

    {commands}

`samples.png`: held-out characters (first column) in five conditions at the exported epoch.

Limits: it has only seen colorjob's synthetic characters (heads and busts, hair and shirt, black
or tinted line art on plain or lightly textured paper); the colours it paints are flat (no
shading); other subjects (hands, animals, props) get plausible but unreliable colours. It paints
at {image_size} px: colour boundaries finer than {image_size} px across the sketch are not resolved
(the lines themselves are the sketch's own, at its own size).
"""

ROWS = [
    ("L1", "l1", "{:.4f}"), ("condition fidelity", "fidelity", "{:.1%}"),
    ("hair pixel accuracy", "acc_hair", "{:.1%}"), ("shirt pixel accuracy", "acc_shirt", "{:.1%}"),
    ("hair ΔE2000 median / p95", ("de_hair_median", "de_hair_p95"), "{:.2f} / {:.2f}"),
    ("shirt ΔE2000 median / p95", ("de_shirt_median", "de_shirt_p95"), "{:.2f} / {:.2f}"),
    ("background leak", "leak", "{:.2%}"), ("line preservation", "lines", "{:.1%}"),
]  # fmt: skip


def _cell(m: dict, prefix: str, key, fmt: str) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    values = [m.get(f"{prefix}_{k}") for k in keys]
    return "n/a" if any(v is None for v in values) else fmt.format(*values)


def metrics_table(m: dict) -> str:
    """The card's rows: each figure on held-out characters (``val_``) and the held-out style."""
    return "\n".join(f"| {name} | {_cell(m, 'val', key, fmt)} | {_cell(m, 'holdout', key, fmt)} |" for name, key, fmt in ROWS)  # fmt: skip


def _families(folder: Path) -> list[str]:
    import pandas as pd

    f = folder / "families.csv"
    return sorted(pd.read_csv(f)["family"].unique()) if f.is_file() else []


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
    sketches, colourings, families, colours = "?", "?", "", ""
    data = Path(cfg.get("data", ""))
    if (data / "metadata.csv").is_file():
        from colorjob.data import read_metadata

        meta_df = read_metadata(data)
        sketches = meta_df["input"].nunique()
        colourings = len(meta_df) // max(1, sketches)
        names = _families(data)
        families = f" in the drawing styles {', '.join(names)}" if names else ""
        if vocab.has_colours:
            named = meta_df[vocab.names[0]].isin(vocab.attributes[0].values).mean()
            colours = f"; {1 - named:.0%} of the colourings in colours drawn over the gamut"
    held = Path(cfg.get("holdout_data") or "")
    holdout_name = ", ".join(_families(held)) + " (a drawing style never trained on)" if _families(held) else "held-out style"  # fmt: skip
    conditions = "; ".join(
        f"{a.name}: any colour (#rrggbb) or a named one ({', '.join(a.values)})" if a.is_colour else f"{a.name}: {', '.join(a.values)}"
        for a in vocab.attributes
    )  # fmt: skip
    layered = info["out_channels"] == 4
    (out / "MODEL_CARD.md").write_text(
        CARD.format(
            model_id=info["model_id"],
            image_size=info["image_size"],
            ngf=info["ngf"],
            conditioning=info["conditioning"],
            head=", a colour-layer head (colours and coverage)" if layered else "",
            params=sum(p.numel() for p in g.parameters()),
            dtype="fp16",
            size_mb=(out / WEIGHTS).stat().st_size / 1e6,
            conditions=conditions,
            output="the sketch's own lines over the painted colours (composite; `--set mode=layers` adds the RGBA colour layer)"
            if layered or cfg.get("output") == "composite"
            else "the generator's own picture (raw)",  # fmt: skip
            sketches=sketches,
            colourings=colourings,
            families=families,
            colours=colours,
            augment=f"p = {cfg['augment']}" if cfg.get("augment") else "off",
            epoch=m.get("epoch"),
            epochs=cfg.get("epochs"),
            device=device,
            holdout_name=holdout_name,
            table=metrics_table({"val_l1": m.get("val_l1"), **m}),
            commands="\n    ".join(commands),
        )  # fmt: skip
    )
    return out
