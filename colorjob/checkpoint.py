"""The training checkpoint: one dict, saved atomically, loaded without unpickling code.

    {"format": "colorjob.checkpoint", "version": 1, "epoch": 12,
     "generator", "discriminator", "opt_g", "opt_d", "sched_g", "sched_d": state dicts,
     "rng": {"torch": ..., "cuda": [...]}, "config": TrainConfig as a dict,
     "conditions": the vocabulary as a dict, "history": [metrics row per epoch], "best": {...}}

:func:`capture` builds it from a running training, :func:`restore` puts it back, so that resuming
at epoch k continues bit for bit where epoch k-1 ended (on the CPU; GPUs add kernel
nondeterminism).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import torch

from colorjob import storage
from colorjob.errors import ColorjobError

FORMAT = "colorjob.checkpoint"
VERSION = 1
LAST, BEST = "last.pt", "best.pt"
# Config keys that shape the networks: a checkpoint only resumes under the same ones.
ARCHITECTURE_KEYS = ("image_size", "ngf", "ndf", "d_layers", "conditioning", "d_conditioning")


class CheckpointError(ColorjobError, ValueError):
    """A checkpoint that is missing, not colorjob's, too new, or does not fit the run."""


def save(state: dict, path: str | Path) -> None:
    """Write atomically: a reader (or a resume after a crash) sees the old file or the new one."""
    with storage.replacing(Path(path)) as tmp:
        torch.save(state, tmp)


class Writer:
    """Writes checkpoints in a background thread, one at a time, so the next epoch's training
    overlaps the write. :meth:`wait` before anything reads the file."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, state: dict, path: Path, also: Path | None = None) -> None:
        """Write ``state`` to ``path`` (and the same file to ``also``, e.g. best.pt)."""
        self.wait()

        def write():
            try:
                save(state, path)
                if also is not None:
                    with storage.replacing(also) as tmp:
                        shutil.copyfile(path, tmp)
            except BaseException as e:  # noqa: BLE001 - raised in the training thread by wait()
                self._error = e

        self._thread = threading.Thread(target=write, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def load(path: str | Path) -> dict:
    """A training checkpoint (``path`` a file, or a folder holding ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torn or foreign files: say which file
        raise CheckpointError(f"{path} is not a readable checkpoint: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a colorjob training checkpoint")
    if int(state.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state['version']}; this colorjob reads up to "
            f"{VERSION}: upgrade colorjob"
        )
    return state


# ---- the best generator inside a search's checkpoints -------------------------------------------
#: In a checkpoint's ``best/`` in place of the weights when they are the checkpoint's own generator.
BEST_IN_LAST = "generator.in-last.pt"


def pack_best(best: Path, dest: Path, epoch: int) -> None:
    """Copy the exported best generator ``best`` into a checkpoint folder as ``dest``. When it is
    the checkpoint's own generator (the best epoch is this checkpoint's ``epoch``) its weights are
    left out: :func:`unpack_best` makes them again from ``last.pt``, byte for byte."""
    from colorjob.export import META, WEIGHTS

    meta = json.loads((best / META).read_text())
    own = meta.get("metrics", {}).get("epoch") == epoch
    shutil.copytree(best, dest, ignore=shutil.ignore_patterns(WEIGHTS) if own else None)
    if own:
        (dest / BEST_IN_LAST).write_text(meta["model_id"] + "\n")


def pack_run(run: Path, last: Path, dest: Path, epoch: int, files: tuple[str, ...] = ("best",)) -> None:  # fmt: skip
    """Fill ``dest``, the checkpoint folder a search reports at ``epoch``: ``last.pt`` (a hard
    link to ``last`` where the file system allows) and those of ``files`` the run folder ``run``
    has, ``best/`` packed by :func:`pack_best`, the others copied."""
    try:
        os.link(last, dest / LAST)
    except OSError:
        shutil.copyfile(last, dest / LAST)
    for name in files:
        if name == "best" and (run / name).is_dir():  # its weights only when not last.pt's
            pack_best(run / name, dest / name, epoch)
        elif (run / name).is_file():
            shutil.copyfile(run / name, dest / name)


def unpack_best(folder: Path, dest: Path) -> Path:
    """Write the whole ``best/`` of checkpoint folder ``folder`` (made by :func:`pack_best`) to
    ``dest``, as a unit; the ``model_id`` proves weights made again from ``last.pt``."""
    from colorjob.export import META, WEIGHTS, model_id, weights_file

    src = folder / "best"
    with storage.replacing_dir(Path(dest)) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(BEST_IN_LAST))
        if (src / BEST_IN_LAST).is_file():
            meta = json.loads((src / META).read_text())
            dtype = getattr(torch, meta.get("dtype", "float32"))
            weights = weights_file(load(folder / LAST)["generator"], dtype)
            if model_id(weights) != meta["model_id"]:
                raise CheckpointError(
                    f"{folder}: its best/ is the generator of last.pt (model_id "
                    f"{meta['model_id']}), but last.pt's generator hashes to {model_id(weights)}: "
                    "the checkpoint is damaged or mixed; resume from another one"
                )
            (tmp / WEIGHTS).write_bytes(weights)
    return Path(dest)


def check_compatible(config: dict, state: dict) -> None:
    """Refuse to resume networks of another shape than the checkpoint's."""
    old = {"conditioning": "concat", "d_conditioning": "concat"} | state["config"]  # before 0.2
    diff = [
        f"{k}: checkpoint {old.get(k)} vs now {config.get(k)}"
        for k in ARCHITECTURE_KEYS
        if old.get(k) != config.get(k)
    ]
    if diff:
        raise CheckpointError(
            "cannot resume: the networks differ from the checkpoint's (" + "; ".join(diff) + ")"
        )


def _snapshot(obj):
    """A copy of a state dict's tensors (on the CPU) that training can no longer change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


def capture(epoch: int, nets: dict, config: dict, conditions: dict, history, best) -> dict:
    """The checkpoint dict of a training at the end of ``epoch`` (a snapshot: safe to write while
    training goes on).

    ``nets``: ``generator``, ``discriminator`` (unwrapped modules), ``opt_g``, ``opt_d``,
    ``sched_g``, ``sched_d``.
    """
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "format": FORMAT, "version": VERSION, "epoch": epoch,
        **{name: _snapshot(obj.state_dict()) for name, obj in nets.items()},
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []},
        "config": config, "conditions": conditions, "history": list(history), "best": dict(best),
    }  # fmt: skip


def restore(state: dict, nets: dict) -> tuple[int, list[dict], dict]:
    """Load a checkpoint into ``nets`` (as in :func:`capture`) and the RNGs.

    Returns ``(first epoch to run, history, best)``.
    """
    for name, obj in nets.items():
        obj.load_state_dict(state[name])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    history = [h for h in state["history"] if h["epoch"] <= state["epoch"]]
    return state["epoch"] + 1, history, dict(state["best"])
