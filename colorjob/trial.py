"""One body for a search trial and for a Ray Train worker's part of a run.

    trial.run(train_cfg, restored=None, publish=report_to_ray, fidelity_weight=0.1)

A trial trains in its own folder (``train_cfg.out``). Given a checkpoint folder (``restored``: a
retried trial, a resumed experiment, a PBT exploit, a restarted Ray Train worker group) it first
makes its run folder from it (:func:`colorjob.runfolder.write`: ``best/``, ``metrics.csv`` ...
all come from the one ``last.pt``), then continues. Every validated epoch it publishes its
metrics (without empty values, with ``score``, ``reported_at`` and ``checkpoint_bytes``) and, on
epochs that saved one, a checkpoint folder holding just ``last.pt``: what a trial reports can
never disagree with itself. A non-finite loss stops the trial with its message.

The caller passes the Ray call that reports (``ray.tune.report`` for a trial, ``ray.train.report``
for a worker): this module imports no Ray (:mod:`colorjob.tune` and :mod:`colorjob.distributed`
are the edges).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from colorjob import runfolder
from colorjob.checkpoint import LAST
from colorjob.train import NonFiniteLossError, TrainConfig, train

#: ``publish(metrics, checkpoint folder or None)``: hands a report to Ray (Tune or Train).
Publish = Callable[[dict, Path | None], None]
DEFAULT_FIDELITY_WEIGHT = 0.1


def score(metrics: dict, fidelity_weight: float = DEFAULT_FIDELITY_WEIGHT) -> float:
    """The search's ``score``: val L1 plus ``fidelity_weight`` x the share of wrong colours (a
    run that cannot measure fidelity counts every colour as wrong)."""
    fid = metrics.get("val_fidelity")
    return metrics["val_l1"] + fidelity_weight * (1.0 - (fid if fid is not None else 0.0))


def report_fn(out: Path, publish: Publish, fidelity_weight: float) -> Callable[[dict, Path | None], None]:  # fmt: skip
    """The ``report`` callback :func:`colorjob.train.train` calls after each validated epoch."""

    def report(metrics: dict, saved: Path | None) -> None:
        metrics = {k: v for k, v in metrics.items() if v is not None}
        metrics["score"] = score(metrics, fidelity_weight)
        metrics["reported_at"] = time.time()  # orders reports across trials (benchmarks)
        metrics["checkpoint_bytes"] = 0
        if saved is None:
            publish(metrics, None)
            return
        with tempfile.TemporaryDirectory(dir=out, prefix=".report-") as tmp:
            runfolder.link_or_copy(saved / LAST, Path(tmp) / LAST)  # a snapshot: last.pt only
            metrics["checkpoint_bytes"] = runfolder.folder_bytes(Path(tmp))
            publish(metrics, Path(tmp))

    return report


def run(
    cfg: TrainConfig,
    restored: Path | None,
    publish: Publish,
    fidelity_weight: float = DEFAULT_FIDELITY_WEIGHT,
    whole_folder: bool = True,
) -> dict:
    """Train ``cfg`` in ``cfg.out``, continuing from checkpoint folder ``restored`` if given.

    ``whole_folder``: make the whole run folder from the checkpoint (the process that writes
    the run's files); other Ray Train workers only need ``last.pt``. Returns train's summary.
    """
    out = Path(cfg.out)
    if restored is not None:
        runfolder.write(Path(restored) / LAST, out, full=whole_folder)
    try:
        # The trial's folder is its own: a retry without a checkpoint starts over in it.
        return train(
            cfg, resume=restored is not None, report=report_fn(out, publish, fidelity_weight),
            overwrite=restored is None,
        )  # fmt: skip
    except NonFiniteLossError as e:
        raise RuntimeError(f"trial stopped: {e}") from None
