"""What a model does with the colours it is asked for, on characters it never saw.

    python benchmarks/colours.py                       # the shipped default model
    python benchmarks/colours.py --model runs/default/best --sketches 24

New characters (seeds no training set used) in the default model's training styles and in the
held-out style (doodle), each asked for (a) colours drawn at random over the gamut (``#rrggbb``,
none of the palette's names) and (b) the 25 named hair x shirt combinations. For each: L1,
condition fidelity, pixel accuracy and ΔE2000 (median, 95th percentile) per attribute,
background leak and line preservation, measured by validation (``colorjob.evaluate.validate``)
on the pixels batch writes (the composite).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from colorjob import synth
from colorjob.data import DeviceSet, PairDataset
from colorjob.evaluate import region_masks, validate
from colorjob.export import DEFAULT_MODEL, load_generator

TRAINED_ON = ("bold", "fine", "minimal", "busy", "chibi", "icon", "sticker")
GOALS = "goals (issues 23, 24): random colours ΔE2000 median <= 4, p95 <= 10; named fidelity >= 99 %; pixel accuracy >= 95 %; leak <= 3 %; lines >= 98 %"  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--sketches", type=int, default=16, help="new characters per style group")
    p.add_argument("--seed", type=int, default=9001)
    a = p.parse_args()
    g, vocab, meta = load_generator(a.model)
    size = meta["image_size"]
    tmp = Path(tempfile.mkdtemp(prefix="colorjob-colours-"))
    rows = []
    for style, families in (("training styles", TRAINED_ON), ("doodle (held out)", ("doodle",))):
        for ask, colours, per in (("random #rrggbb", "random", 8), ("25 named", "named", 25)):
            data = synth.generate(tmp / f"{style[:6]}-{colours}", a.sketches, seed=a.seed, size=size, families=families, colours=colours, colourings_per_sketch=per)  # fmt: skip
            ds = PairDataset(data, size, vocab)
            m = validate(g, DeviceSet(ds, "cpu"), region_masks(ds), 32)
            rows.append({"characters": style, "colours asked": ask, "pairs": len(ds)} | {k.removeprefix("val_"): v for k, v in m.items() if k != "val_psnr"})  # fmt: skip
    table = pd.DataFrame(rows)
    print(f"\n{a.model}: {a.sketches} new characters per style group (seed {a.seed}), {size} px")
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(GOALS)


if __name__ == "__main__":
    main()
