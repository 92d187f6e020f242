"""The training checkpoint: one dict in one file, saved atomically, loaded without unpickling code.

    {"format": "colorjob.checkpoint", "version": 2, "epoch": 12,
     "generator", "discriminator", "opt_g", "opt_d", "sched_g", "sched_d": state dicts,
     "rng": {"torch": ..., "cuda": [...]}, "config": TrainConfig as a dict,
     "conditions": the vocabulary as a dict, "history": [metrics row per epoch],
     "best": {"val_l1", "epoch"}, "best_generator": the best epoch's generator state (None when
     that is this checkpoint's own generator, or no epoch was validated yet),
     "best_samples": the best epoch's sample grid (PNG bytes as a uint8 tensor, or None)}

:func:`capture` builds it from a running training, :func:`restore` puts it back, so that resuming
at epoch k continues bit for bit where epoch k-1 ended (on the CPU; GPUs add kernel
nondeterminism). Everything a run folder shows (``best/``, ``metrics.csv``, ``config.yaml``,
``loss.png``) can be made again from ``last.pt`` alone (:mod:`colorjob.runfolder`): a search or a
Ray Train worker reports that one file, so what it reports can never disagree with itself.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import torch

from colorjob import storage
from colorjob.errors import ColorjobError

FORMAT = "colorjob.checkpoint"
VERSION = 2
LAST, BEST = "last.pt", "best.pt"
# Config keys that shape the networks: a checkpoint only resumes under the same ones.
ARCHITECTURE_KEYS = (
    "image_size",
    "ngf",
    "ndf",
    "d_layers",
    "conditioning",
    "d_conditioning",
    "layers",
)
#: What every checkpoint holds (version 1 checkpoints lack only the best generator and samples).
REQUIRED = ("epoch", "generator", "discriminator", "opt_g", "opt_d", "sched_g", "sched_d", "rng", "config", "conditions", "history", "best")  # fmt: skip


class CheckpointError(ColorjobError, ValueError):
    """A checkpoint that is missing, not colorjob's, too new, or does not fit the run."""


def save(state: dict, path: str | Path) -> None:
    """Write atomically: a reader (or a resume after a crash) sees the old file or the new one."""
    with storage.replacing(Path(path)) as tmp:
        torch.save(state, tmp)


class Writer:
    """Writes checkpoints in a background thread, one at a time, so the next epoch's training
    overlaps the write. :meth:`wait` before anything reads the file (and before the process
    ends: :func:`colorjob.train.train` waits even when interrupted, so no half-written
    temporary file is left behind)."""

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
    """A training checkpoint (``path`` a file, or a folder holding ``last.pt``), every required
    part present; a damaged or foreign file is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torn or foreign files: say which file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unpickler" in str(e):
            first = "it holds objects other than tensors and plain data"
        raise CheckpointError(
            f"{path} is not a readable colorjob checkpoint ({first[:200]}): the file is damaged "
            "or another program's; resume from another checkpoint or start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a colorjob training checkpoint")
    try:
        version = int(state.get("version", 0))
    except (TypeError, ValueError):
        version = -1
    if version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state['version']}; this colorjob reads up to "
            f"{VERSION}: upgrade colorjob"
        )
    missing = [k for k in REQUIRED if k not in state]
    if missing or version < 1:
        raise CheckpointError(
            f"{path} is incomplete (no {', '.join(missing) or 'version'}): the file is damaged; "
            "resume from another checkpoint or start over"
        )
    state.setdefault("best_generator", None)
    state.setdefault("best_samples", None)
    return state


def best_generator(state: dict) -> dict | None:
    """The state dict of the best epoch's generator a checkpoint knows (None before any
    validation): its own generator when the best epoch is its epoch."""
    best_epoch = int(state["best"].get("epoch", 0) or 0)
    if best_epoch == 0:
        return None
    if state.get("best_generator") is not None:
        return state["best_generator"]
    if best_epoch == state["epoch"]:
        return state["generator"]
    return None  # a version 1 checkpoint whose best epoch came before it: not recorded


def best_samples(state: dict) -> bytes | None:
    samples = state.get("best_samples")
    return None if samples is None else bytes(samples.numpy().tobytes())


def check_compatible(config: dict, state: dict) -> None:
    """Refuse to resume networks of another shape than the checkpoint's."""
    old = {"conditioning": "concat", "d_conditioning": "concat", "layers": False} | state[
        "config"
    ]  # older runs
    diff = [
        f"{k}: checkpoint {old.get(k)} vs now {config.get(k)}"
        for k in ARCHITECTURE_KEYS
        if old.get(k) != config.get(k)
    ]
    if diff:
        raise CheckpointError(
            "cannot resume: the networks differ from the checkpoint's (" + "; ".join(diff) + ")"
        )


def snapshot(obj):
    """A copy of a state dict's tensors (on the CPU) that training can no longer change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def capture(
    epoch: int,
    nets: dict,
    config: dict,
    conditions: dict,
    history,
    best: dict,
    best_state: dict | None = None,
    samples: bytes | None = None,
) -> dict:
    """The checkpoint dict of a training at the end of ``epoch`` (a snapshot: safe to write while
    training goes on).

    ``nets``: ``generator``, ``discriminator`` (unwrapped modules), ``opt_g``, ``opt_d``,
    ``sched_g``, ``sched_d``. ``best_state``: the best epoch's generator (a snapshot), stored
    only when that epoch is not this one; ``samples``: its sample grid (PNG bytes).
    """
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    own = best.get("epoch") == epoch
    return {
        "format": FORMAT, "version": VERSION, "epoch": epoch,
        **{name: snapshot(obj.state_dict()) for name, obj in nets.items()},
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []},
        "config": config, "conditions": conditions, "history": [dict(h) for h in history], "best": dict(best),
        "best_generator": None if own or best_state is None else best_state,
        "best_samples": None if samples is None else torch.frombuffer(bytearray(samples), dtype=torch.uint8),
    }  # fmt: skip


def restore(state: dict, nets: dict) -> tuple[int, list[dict], dict]:
    """Load a checkpoint into ``nets`` (as in :func:`capture`) and the RNGs.

    Returns ``(first epoch to run, history, best)``. A checkpoint whose tensors do not fit the
    networks is a :class:`CheckpointError`.
    """
    for name, obj in nets.items():
        try:
            obj.load_state_dict(state[name])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0][:300]
            raise CheckpointError(
                f"the checkpoint's {name} does not fit this run's networks ({first}): the file "
                "is damaged or from another architecture"
            ) from None
    try:
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        history = [h for h in state["history"] if h["epoch"] <= state["epoch"]]
        best = dict(state["best"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(
            f"the checkpoint's random state or history is damaged ({e})"
        ) from None
    return state["epoch"] + 1, history, best
