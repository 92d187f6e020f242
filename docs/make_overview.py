"""Re-make docs/images/overview.png: example sketches coloured by the shipped default generator.

    python docs/make_overview.py          # runs colorjob batch on examples/sketches, then tiles

Rows: four example sketches (two of the seed's style; an icon on textured paper, its figure
ending above the canvas edge; a hand-drawn doodle, a style the model never trained on); columns: the sketch, five of the 25 named hair x shirt
variants of configs/grid.csv (its diagonal), then three colours nobody named (``#rrggbb``: the
default model takes any colour), 96 px tiles.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from colorjob import batch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [
    ("black", "red"), ("brown", "green"), ("blonde", "navy"), ("ginger", "yellow"),
    ("blue", "purple"), ("#2a9d8f", "#f4a261"), ("#e76f51", "#264653"), ("#c8a2c8", "#6b8e23"),
]  # fmt: skip
TILE = 96
SHOWN = ["character_1.png", "character_3.png", "character_7_icon.png", "character_8_doodle.png"]


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="colorjob-overview-"))
    grid = out / "grid.csv"
    grid.write_text("hair,shirt\n" + "".join(f"{h},{s}\n" for h, s in VARIANTS), encoding="utf-8")
    manifest = batch.execute(
        batch.BatchConfig(
            input=str(ROOT / "examples" / "sketches"), conditions=str(grid),
            output=str(out / "colored"), contact_sheet=False,
        )
    ).read_manifest()  # fmt: skip
    out = out / "colored"
    done = manifest[manifest["status"] != "failed"]
    sketches = [s for s in SHOWN if s in set(done["input"])]
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
