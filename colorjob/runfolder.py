"""A training run's folder: what a run writes there, the one rule for reusing a folder, and the
folder made again from a checkpoint.

    OUT/config.yaml  metrics.csv  loss.png  samples/  checkpoints/{last,best}.pt  best/
    OUT/tensorboard/ (when asked)  OUT/.ray-train/ (a run on several Ray Train workers)

Every way of training (one process, ``--workers N`` on Ray Train, a search trial) goes through
:func:`claim` before anything is written or removed, and the same rule holds for all of them:

- a new run needs a folder that is missing or empty;
- ``--resume`` continues the run there;
- ``--overwrite`` removes what a run writes there (:data:`RUN_FILES`) and nothing else: other
  files in the folder (a user's notes, another tool's output) stay, and the warning lists them.

:func:`write` makes the run folder from one ``last.pt`` (its ``best/``, ``metrics.csv``,
``config.yaml`` and ``loss.png`` are all in the checkpoint): a search trial or a Ray Train worker
that continues from a reported checkpoint, and a multi-worker run's folder brought back, use it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from colorjob import checkpoint, storage
from colorjob.conditions import ConditionVocab
from colorjob.errors import ColorjobError

log = logging.getLogger(__name__)

#: What a run writes into its folder: all that ``--overwrite`` may remove.
RUN_FILES = ("config.yaml", "metrics.csv", "loss.png", "checkpoints", "best", "samples", "tensorboard", ".ray-train")  # fmt: skip
METRIC_COLUMNS = [
    "epoch", "g_adv", "g_l1", "d_real", "d_fake", "val_l1", "val_psnr", "val_fidelity",
    "holdout_l1", "holdout_fidelity", "lr_g", "lr_d", "lambda_l1", "lambda_adv", "tag", "parent",
    "samples_per_s", "train_seconds", "seconds",
]  # fmt: skip
#: The per-epoch settings an exported model's ``schedule`` records (PBT changes them over time).
SCHEDULE_KEYS = ("epoch", "lr_g", "lr_d", "lambda_l1", "lambda_adv", "tag")
LOSS_PANELS = [("generator", ["g_adv", "g_l1"]), ("discriminator", ["d_real", "d_fake"]), ("validation L1", ["val_l1"])]  # fmt: skip


class RunFolderError(ColorjobError, ValueError):
    """A run folder that cannot be used as asked (taken, a file, not writable)."""


@dataclass
class Claim:
    """What starting a run in ``out`` means: the run files ``--overwrite`` removes, and the
    other entries it leaves alone."""

    out: Path
    remove: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)


def _shown(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_location(out: Path) -> None:
    """``out`` is a folder (or can become one) that this process can write to."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder: choose a folder for the run")
    ancestor = out
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunFolderError(f"--out {out}: {ancestor} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=ancestor, prefix=storage.TMP_MARK + "probe-"):
            pass
    except OSError as e:
        raise RunFolderError(
            f"cannot write the run folder {out}: {e.strerror or e} ({ancestor}); choose a "
            "writable --out"
        ) from None


def claim(out: str | Path, resume: bool = False, overwrite: bool = False) -> Claim:
    """Check that a run may start (or continue) in ``out``; removes nothing (see :func:`clear`)."""
    out = Path(out)
    check_location(out)
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    entries = [e for e in entries if not e.startswith(storage.TMP_MARK)]
    if resume or not entries:
        return Claim(out)
    ours = [e for e in entries if e in RUN_FILES]
    other = [e for e in entries if e not in RUN_FILES]
    if not overwrite:
        what = f"a run ({_shown(ours)})" if ours else "files that are not a colorjob run"
        extra = f"; other files there: {_shown(other)}" if ours and other else (f": {_shown(other)}" if not ours else "")  # fmt: skip
        raise RunFolderError(
            f"{out} already holds {what}{extra}. Add --resume to continue the run, --overwrite "
            f"to start over (removes only what a run writes: {', '.join(RUN_FILES)}; other "
            "files stay), or choose another --out"
        )
    return Claim(out, remove=ours, keep=other)


def clear(c: Claim) -> None:
    """Remove the run files of a checked :class:`Claim` (``--overwrite``), say what stays."""
    for name in c.remove:
        path = c.out / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if c.remove or c.keep:
        kept = f"; kept other files: {_shown(c.keep)}" if c.keep else ""
        log.warning(f"starting over in {c.out}: removed the earlier run's {', '.join(c.remove) or 'nothing'}{kept}")  # fmt: skip


def remove_stale_temporaries(out: Path) -> None:
    """Temporary files that a killed writer of this run folder left (never a live one's)."""
    storage.remove_stale_temporaries(out, out / "checkpoints", out / "samples")


# ---- the files a run shows ----------------------------------------------------------------------
def metric_columns(history: list[dict]) -> list[str]:
    """:data:`METRIC_COLUMNS`, then the per-attribute and colouring metrics the rows have
    (``val_acc_hair``, ``val_leak``, ``holdout_de_shirt_p95`` ...), in the order they came."""
    extra = dict.fromkeys(k for h in history for k in h if k not in METRIC_COLUMNS)
    return METRIC_COLUMNS[:-3] + list(extra) + METRIC_COLUMNS[-3:]


def write_metrics(history: list[dict], path: Path) -> None:
    columns = metric_columns(history)
    with storage.replacing(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for h in history:
            w.writerow({k: ("" if h.get(k) is None else h[k]) for k in columns})


def plot_loss(history: list[dict], path: Path) -> None:
    from colorjob.plots import plot_curves

    plot_curves(history, path, LOSS_PANELS)


def schedule(history: list[dict], upto: int) -> list[dict]:
    return [{k: h.get(k) for k in SCHEDULE_KEYS} for h in history if h["epoch"] <= upto]


def export_best(
    dest: Path,
    generator_state: dict,
    config: dict,
    vocab: ConditionVocab,
    row: dict,
    history: list[dict],
    samples: bytes | None,
) -> Path:
    """Write ``best/`` for the best epoch: its generator, its metrics ``row``, the config and the
    schedule of every epoch up to it, and its sample grid (``samples``: PNG bytes)."""
    from colorjob.export import export_generator
    from colorjob.models import generator_for

    with tempfile.TemporaryDirectory() as tmp:
        png = None
        if samples is not None:
            png = Path(tmp) / "samples.png"
            png.write_bytes(samples)
        g = generator_for(
            vocab, config.get("conditioning", "concat"), config["image_size"], config["ngf"],
            config.get("dropout", 0.5), layers=config.get("layers", False),
        )  # fmt: skip
        g.load_state_dict(generator_state)
        return export_generator(
            g, vocab, dest, metrics=row, config=config, samples=png,
            schedule=schedule(history, row["epoch"]),
        )  # fmt: skip


def best_row(state: dict) -> dict | None:
    epoch = int(state["best"].get("epoch", 0) or 0)
    return next((h for h in state["history"] if h["epoch"] == epoch), None)


def ensure_best(state: dict, out: Path) -> None:
    """Make ``out/best`` the best generator of ``state`` (a checkpoint being resumed): a
    ``best/`` written by epochs after the checkpoint (a run interrupted between checkpoints)
    is replaced by the checkpoint's own best, so ``best/`` and ``metrics.csv`` agree."""
    from colorjob.export import META, model_id, weights_file

    gen, row, best = checkpoint.best_generator(state), best_row(state), out / "best"
    if gen is None or row is None:
        if best.is_dir():
            epoch = json.loads((best / META).read_text()).get("metrics", {}).get("epoch", 0) if (best / META).is_file() else 0  # fmt: skip
            if not isinstance(epoch, int) or epoch > state["epoch"]:
                shutil.rmtree(best)
                log.warning(f"{best} came from epochs after the checkpoint (epoch {state['epoch']}); removed until the next best epoch")  # fmt: skip
        return
    want = model_id(weights_file(gen))
    if (best / META).is_file():
        try:
            if json.loads((best / META).read_text()).get("model_id") == want:
                return
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            pass
    export_best(
        best, gen, state["config"], ConditionVocab.from_dict(state["conditions"]), row,
        state["history"], checkpoint.best_samples(state),
    )  # fmt: skip


def write(last: Path, out: Path, full: bool = True) -> dict:
    """Make the run folder ``out`` from checkpoint file ``last``: ``checkpoints/last.pt`` and,
    with ``full``, ``best/``, ``metrics.csv``, ``config.yaml`` and ``loss.png`` too, each
    replaced as a unit. Returns the checkpoint."""
    state = checkpoint.load(last)
    target = out / "checkpoints" / checkpoint.LAST
    target.parent.mkdir(parents=True, exist_ok=True)
    if Path(last).resolve() != target.resolve():
        with storage.replacing(target) as tmp:
            shutil.copyfile(last, tmp)
    if not full:
        return state
    history = [h for h in state["history"] if h["epoch"] <= state["epoch"]]
    with storage.replacing(out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(state["config"], sort_keys=False, allow_unicode=True))
    write_metrics(history, out / "metrics.csv")
    if history:
        plot_loss(history, out / "loss.png")
    ensure_best(state, out)
    return state


def newest(*candidates: Path | None) -> Path | None:
    """The checkpoint file of the latest epoch among ``candidates`` (missing ones ignored)."""
    best, epoch = None, -1
    for c in candidates:
        if c is None or not Path(c).is_file():
            continue
        try:
            e = int(checkpoint.load(c)["epoch"])
        except checkpoint.CheckpointError:
            continue
        if e > epoch:
            best, epoch = Path(c), e
    return best


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (a checkpoint about to be reported)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
