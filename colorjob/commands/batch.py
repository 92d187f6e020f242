"""``colorjob batch``: colour a folder of sketches in every variant of a grid."""

from __future__ import annotations

from colorjob import cli
from colorjob.batch import execute
from colorjob.batch.config import MODES, BatchConfig
from colorjob.batch.stages import FORMATS


def build_parser(prog: str = "colorjob batch"):
    p = cli.parser(
        prog,
        "Colour every sketch under --input in every variant of the --conditions grid with a trained "
        "generator: in this process on one machine, on Ray Data on a cluster. Writes one image per "
        "(sketch, variant) at the sketch's own size, its lines kept over the colours (or one tar "
        "per shard with --layout shards), manifest/ (Parquet) and contact_sheet.png to --output. "
        "Rerunning skips what the same model already made for the same values from the same sketch.",
        "grid.csv: one column per condition attribute of the model (e.g. hair,shirt) and an "
        "optional name column for the output file names; a colour model takes #rrggbb values and "
        "its colour names (v1,#7f3fbf,red); configs/grid.csv has the 25 named combinations. More "
        "keys (--set): shards, executor, workers, placement, actors, precision, max_pixels, min_side, follow_links.",
    )
    cli.flag(p, "--input", "input", help="folder (or URI) of sketches, searched recursively; or one image")  # fmt: skip
    cli.flag(p, "--conditions", "conditions", help="grid CSV: one row per colour variant")
    cli.flag(p, "--model", "model", help="exported generator folder (train's OUT/best, tune's best/); default: the shipped model")  # fmt: skip
    cli.flag(p, "--output", "output", help="folder (or URI) for the images, manifest and contact sheet")  # fmt: skip
    cli.flag(p, "--batch-size", "batch_size", type=int, help="images per generator call (default: 8 on CPUs, 128 on GPUs)")  # fmt: skip
    cli.flag(p, "--format", "format", choices=list(FORMATS), help="output image format (default png)")  # fmt: skip
    cli.flag(p, "--overwrite", "overwrite", action="store_true", default=None, help="redo outputs that are already done")  # fmt: skip
    cli.flag(p, "--fail-on-error", "fail_on_error", action="store_true", default=None, help="exit 1 if any input failed")  # fmt: skip
    cli.flag(p, "--mode", "mode", choices=list(MODES), help="composite: the sketch's own lines over the colours; layers: also <name>.layer.png, the colours alone as RGBA; raw: the generator's own picture; auto (default): composite unless the model was trained on its raw pictures")  # fmt: skip
    cli.flag(p, "--layout", "layout", choices=["mirror", "shards"], help="mirror: one file per output beside the sketch's path (default); shards: one WebDataset tar per shard")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="list, plan and decide exactly as a run would, say what it would make and why, and write nothing")  # fmt: skip
    return p


def command(args) -> int:
    cfg = cli.load(BatchConfig, args)
    result = execute(cfg, dry_run=args.dry_run)
    return 1 if result.failed and cfg.fail_on_error else 0
