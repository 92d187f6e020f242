"""``colorjob export``: re-export a trained generator in fp16 with a model card."""

from __future__ import annotations

import logging

from colorjob import cli
from colorjob.card import ship
from colorjob.export import DEFAULT_MODEL, WEIGHTS

log = logging.getLogger("colorjob.export")


def build_parser(prog: str = "colorjob export"):
    p = cli.parser(
        prog,
        "Re-export a trained generator (OUT/best) in fp16 with a model card, e.g. to ship it as "
        "colorjob's default model (colorjob/assets/default). --to must be a new or empty folder, "
        "or an exported model to replace.",
        config=False,
    )
    p.add_argument("--from", dest="src", required=True, help="an exported model folder (train's OUT/best)")  # fmt: skip
    p.add_argument("--to", default=str(DEFAULT_MODEL), help="destination folder (default: the shipped default)")  # fmt: skip
    p.add_argument("--device", default="CPU", help="what it was trained on, for the card")
    p.add_argument("--command", action="append", default=[], help="a command that made it, for the card (repeatable)")  # fmt: skip
    return p


def command(args) -> int:
    out = ship(args.src, args.to, args.device, args.command or ["(not recorded)"])
    log.info(f"shipped: {out} ({(out / WEIGHTS).stat().st_size / 1e6:.1f} MB)")
    return 0
