"""The ``colorjob`` command: one entry point, one subcommand per job, one way to handle errors.

    colorjob train --config configs/cpu.yaml --data data/chars-64 --out runs/cpu
    colorjob tune --config configs/tune.yaml
    colorjob batch --input sketches/ --conditions configs/grid.csv --output out/
    colorjob synth | export | quickstart ...

The command floor: this module (dispatch and what every subcommand shares) and
:mod:`colorjob.commands` (one module per subcommand: its parser, its dispatch, its dry run). The
library below (configs and logic) imports none of it. ``python -m colorjob ...`` is the same
command; ``python -m colorjob.train`` (and the other library modules) and ``jobs/*.py`` are thin
shims that call :func:`main` with the subcommand's name, so they run the real modules (code run
as ``__main__`` and shipped to Ray workers would lose its module).

Each subcommand is a thin parser over its config dataclass: flags whose ``dest`` is ``cfg:<key>``
(dotted for nested configs) become overrides, then ``--set key=value`` wins. Errors a user can
fix (:class:`colorjob.errors.ColorjobError`) print one line and exit 2; nothing else is caught,
so a bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from colorjob import __version__
from colorjob import config as cfgmod
from colorjob.errors import ColorjobError

COMMANDS = {
    "train": "train the colorization GAN on a dataset folder (Accelerate; Ray Train with --workers)",
    "tune": "search learning rates and loss weights (Ray Tune + Optuna)",
    "batch": "colour a folder of sketches in every variant of a grid (here, or on Ray Data)",
    "synth": "draw a synthetic dataset of character sketches x colourings",
    "export": "re-export a trained generator in fp16 with a model card",
    "quickstart": "from nothing to coloured characters and a report",
}
PREFIX = "cfg:"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return (
        "usage: colorjob <command> [options]   (colorjob <command> --help for its options)\n\n"
        "Conditional sketch colorization: train, tune and batch-render on Ray.\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\nStart with: colorjob quickstart"
    )


def main(argv: list[str] | None = None) -> int:
    """``colorjob <command> ...``: run one subcommand; returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"colorjob {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"colorjob: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"colorjob.commands.{name}")
    return run(module.build_parser(f"colorjob {name}"), module.command, rest)


# ---- what every subcommand shares -------------------------------------------------------------
def parser(
    prog: str, description: str, epilog: str | None = None, config: bool = True, raw: bool = False
):
    """An argument parser with the shared options: ``--config``/``--set`` (when the command has a
    config) and ``--quiet``/``--verbose``. ``raw``: print the description as written."""
    fmt = argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter
    p = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=fmt
    )
    if config:
        p.add_argument("--config", help="YAML config file (its keys are the config's fields)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override any config key, e.g. --set lambda_l1=50 (repeatable; wins over flags)",
        )
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    noise.add_argument("-v", "--verbose", action="store_true", help="debug output too")
    return p


def flag(p: argparse.ArgumentParser, name: str, key: str, **kw) -> None:
    """A convenience flag that overrides config key ``key`` (``train.epochs`` for nested)."""
    if kw.get("action") is None and "choices" not in kw:
        kw.setdefault("metavar", key.rsplit(".", 1)[-1].upper())
    p.add_argument(name, dest=PREFIX + key, **kw)


def overrides(args: argparse.Namespace) -> dict:
    """The config overrides of a command line: the flags that were given, then ``--set``."""
    flags: dict = {}
    for dest, value in vars(args).items():
        if dest.startswith(PREFIX) and value is not None:
            node = flags
            *parents, last = dest[len(PREFIX) :].split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
    return cfgmod.cli_overrides(flags, getattr(args, "set", None))


def load(cls, args: argparse.Namespace):
    """The command's config: defaults <- ``--config`` file <- flags <- ``--set``."""
    return cfgmod.load(cls, args.config, overrides(args))


class _Levels(logging.Filter):
    def __init__(self, below: int):
        super().__init__()
        self.below = below

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.below


class _Prefixed(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def setup_logging(quiet: bool = False, verbose: bool = False) -> Callable[[], None]:
    """colorjob's loggers: progress to stdout, warnings and errors to stderr (``error: ...``).

    ``__main__`` is included: ``python -m colorjob.train`` runs that module under that name.
    Returns a function that puts the loggers back as they were (for commands run in-process).
    """
    saved = [
        (lg, lg.handlers[:], lg.level, lg.propagate)
        for lg in map(logging.getLogger, ("colorjob", "__main__"))
    ]
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_Levels(logging.WARNING))
    out.setFormatter(logging.Formatter("%(message)s"))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(_Prefixed("%(message)s"))
    for name in ("colorjob", "__main__"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [out, err]
        logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
        logger.propagate = False

    def restore() -> None:
        for lg, handlers, level, propagate in saved:
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate

    return restore


def run(
    p: argparse.ArgumentParser, command: Callable[[argparse.Namespace], int | None], argv=None
) -> int:
    """Parse, set up logging, run ``command(args)``; a :class:`ColorjobError` exits 2."""
    args = p.parse_args(argv)
    restore = setup_logging(args.quiet, args.verbose)
    try:
        return int(command(args) or 0)
    except ColorjobError as e:
        logging.getLogger("colorjob").error(str(e))
        return 2
    except KeyboardInterrupt:
        logging.getLogger("colorjob").error("interrupted")
        return 130
    finally:
        restore()
