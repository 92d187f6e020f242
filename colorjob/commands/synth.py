"""``colorjob synth``: draw a synthetic dataset in the seed's format."""

from __future__ import annotations

import logging
import time

from colorjob import cli, synth

log = logging.getLogger("colorjob.synth")


def build_parser(prog: str = "colorjob synth"):
    p = cli.parser(
        prog,
        "Generate a synthetic sketch-colorization dataset in the seed's format: N character "
        "sketches x 25 colourings (5 hair x 5 shirt colours, or any colours with --colours), "
        "with hair/shirt (and background) masks and metadata.csv (input, output, hair, shirt).",
        config=False,
    )
    p.add_argument("--out", required=True, help="folder to write the dataset into (created if missing)")  # fmt: skip
    p.add_argument("--sketches", type=int, default=10, help="number of characters (default 10, as the seed)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> same bytes (default 0)")  # fmt: skip
    p.add_argument("--size", type=int, default=256, help="image side in pixels, a power of two >= 32 (default 256)")  # fmt: skip
    p.add_argument("--workers", type=int, default=0, help="processes to draw with (default: one per CPU, up to 8)")  # fmt: skip
    p.add_argument("--colours", "--colors", default="named", choices=list(synth.COLOURS), help="named: the 25 hair x shirt palette pairs (the seed's); random: colours drawn over the whole gamut (#rrggbb); mixed: either, at even odds")  # fmt: skip
    p.add_argument("--colourings", type=int, default=25, help="colourings per sketch with --colours random or mixed (default 25)")  # fmt: skip
    p.add_argument(
        "--families", default="classic",
        help=f"drawing families, comma-separated, one chosen per character ({', '.join(synth.FAMILIES)}; default classic)",
    )  # fmt: skip
    return p


def command(a) -> int:
    t0 = time.perf_counter()
    families = tuple(f.strip() for f in a.families.split(",") if f.strip())
    out = synth.generate(a.out, a.sketches, seed=a.seed, size=a.size, workers=a.workers, families=families, colours=a.colours, colourings_per_sketch=a.colourings)  # fmt: skip
    per = 25 if a.colours == "named" else a.colourings
    log.info(f"wrote {a.sketches} sketches x {per} colourings = {a.sketches * per} pairs in {time.perf_counter() - t0:.1f}s")  # fmt: skip
    log.info(f"dataset:       {out / 'metadata.csv'}")
    log.info(f"contact sheet: {out / 'contact_sheet.png'}")
    return 0
