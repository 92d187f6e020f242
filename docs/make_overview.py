"""Re-make docs/images/overview.png: example sketches coloured by the shipped default generator.

    python docs/make_overview.py          # runs colorjob batch on examples/sketches, then tiles

Rows: the first four example sketches; columns: the sketch, then eight of the 25 hair x shirt
variants of configs/grid.csv (the diagonal of the grid and three more), 96 px tiles.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from colorjob import batch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [
    ("black", "red"), ("brown", "green"), ("blonde", "navy"), ("ginger", "yellow"),
    ("blue", "purple"), ("blonde", "red"), ("ginger", "navy"), ("blue", "green"),
]  # fmt: skip
TILE = 96


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="colorjob-overview-"))
    manifest = batch.run(
        batch.BatchConfig(
            input=str(ROOT / "examples" / "sketches"), conditions=str(ROOT / "configs" / "grid.csv"),
            output=str(out), contact_sheet=False,
        )
    )  # fmt: skip
    done = manifest[manifest["status"] != "failed"]
    sketches = sorted(done["input"].unique())[:4]
    sheet = Image.new("RGB", (TILE * (1 + len(VARIANTS)), TILE * len(sketches)), "white")
    for r, sketch in enumerate(sketches):
        tile = Image.open(ROOT / "examples" / "sketches" / sketch).convert("RGB")
        sheet.paste(tile.resize((TILE, TILE), Image.LANCZOS), (0, r * TILE))
        for c, (hair, shirt) in enumerate(VARIANTS, start=1):
            row = done[
                (done["input"] == sketch) & (done["hair"] == hair) & (done["shirt"] == shirt)
            ]
            img = Image.open(out / row["output"].item()).convert("RGB")
            sheet.paste(img.resize((TILE, TILE), Image.LANCZOS), (c * TILE, r * TILE))
    target = ROOT / "docs" / "images" / "overview.png"
    sheet.save(target, optimize=True)
    print(target)


if __name__ == "__main__":
    main()
