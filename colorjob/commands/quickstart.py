"""``colorjob quickstart``: the main job, from nothing to coloured characters and a report."""

from __future__ import annotations

from colorjob import cli
from colorjob import quickstart as qs


def build_parser(prog: str = "colorjob quickstart"):
    p = cli.parser(prog, qs.__doc__, config=False, raw=True)
    p.add_argument("--out", default="runs/quickstart", help="folder for everything (default runs/quickstart)")  # fmt: skip
    p.add_argument("--sketches", type=int, default=12, help="characters in the training set (default 12)")  # fmt: skip
    p.add_argument("--trials", type=int, default=4, help="search trials (default 4)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial at most (default 2)")
    p.add_argument("--tiny", action="store_true", help="a smoke run from scratch (32 px, 4 characters, 2 trials, 2 epochs): the steps, not the model")  # fmt: skip
    return p


def command(a) -> int:
    for name in ("sketches", "trials", "epochs"):
        if getattr(a, name) < 1:
            raise cli.cfgmod.ConfigError(f"--{name} must be at least 1, got {getattr(a, name)}")
    report = qs.quickstart(a.out, a.sketches, a.trials, a.epochs, a.tiny)
    return 0 if report is not None else 1
