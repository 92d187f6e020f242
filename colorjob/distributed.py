"""Training on several workers with Ray Train: one run, or one Tune trial bigger than a device.

    colorjob train --config configs/train.yaml --workers 2              # on the Ray that is there
    colorjob tune --config configs/tune.yaml --set resources.workers=2    # each trial: 2 workers

A Ray Train ``TorchTrainer`` starts ``workers`` processes (``ScalingConfig``: CPUs and GPUs per
worker), sets up their process group (gloo on CPUs, NCCL on GPUs), and each runs the same
:func:`colorjob.train.train` loop: Accelerate picks the process group up, shards the data and
averages the gradients. Rank 0 writes the run folder and reports a checkpoint (``last.pt``,
``best/``, ``metrics.csv``...) to Ray Train, which keeps it in ``storage_path``; a worker that
fails (its node lost) is restarted by Ray Train from the latest checkpoint (``FailureConfig``).

Under Tune the trial is a small driver that launches this trainer (Ray's documented Tune + Train
pattern, ``TuneReportCallback``): ASHA sees the same per-epoch metrics as for single-worker trials
and stopping the trial stops its workers.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from colorjob import config as cfgmod
from colorjob import storage
from colorjob.checkpoint import LAST, pack_run, unpack_best

log = logging.getLogger(__name__)
#: What rank 0 puts into each checkpoint besides last.pt: enough to make the run folder again.
RUN_FILES = ("best", "metrics.csv", "config.yaml", "loss.png")


def worker_loop(config: dict) -> None:
    """One Ray Train worker: the training loop, reporting every epoch it validates."""
    import ray.train
    import torch

    context = ray.train.get_context()
    threads = max(1, int(config.get("threads", 1)))
    torch.set_num_threads(threads)
    # Ray Train has set up the process group; these tell Accelerate it is one of several
    # processes (it reads them, and leaves an initialised group as it is).
    os.environ.update(
        RANK=str(context.get_world_rank()), WORLD_SIZE=str(context.get_world_size()),
        LOCAL_RANK=str(context.get_local_rank()), LOCAL_WORLD_SIZE=str(context.get_local_world_size()),
        OMP_NUM_THREADS=str(threads),
    )  # fmt: skip
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # unused: the group already exists
    if not torch.cuda.is_available():  # Accelerate takes a CPU group only when told it is on CPUs
        os.environ["ACCELERATE_USE_CPU"] = "true"
    # This process's own folder (concurrent runs and restarts never share one), gone at the end:
    # what outlives the process is in Ray Train's checkpoints.
    scratch = Path(tempfile.mkdtemp(prefix="colorjob-train-"))
    try:
        _train(config, scratch, context.get_world_rank())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train(config: dict, scratch: Path, rank: int) -> None:
    import ray.train

    from colorjob.train import NonFiniteLossError, TrainConfig, train
    from colorjob.tune import folder_bytes, score

    cfg = cfgmod.from_dict(TrainConfig, config["train"] | {"out": str(scratch / "run")})
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restart after a failure: from the latest checkpoint
        restored = Path(checkpoint.to_directory(str(scratch / "restored")))
        resume = restored / "last.pt"
        if rank == 0:  # the run folder as it was then (best/ included)
            unpack_run(restored, Path(cfg.out))

    weight = config.get("fidelity_weight")

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        metrics = {k: v for k, v in metrics.items() if v is not None} | {"reported_at": time.time()}
        if weight is not None:  # the Tune search's "score"
            metrics["score"] = score(metrics, weight)
        if checkpoint_dir is None:  # every rank reports; only rank 0 has a checkpoint
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            pack_run(Path(cfg.out), checkpoint_dir / "last.pt", Path(tmp), metrics["epoch"], RUN_FILES)  # fmt: skip
            metrics["checkpoint_bytes"] = folder_bytes(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    try:
        train(cfg, resume=resume or False, report=report, overwrite=resume is None)
    except NonFiniteLossError as e:
        raise RuntimeError(f"training stopped: {e}") from None


def unpack_run(folder: Path, out: Path) -> None:
    """A run folder from one of its Ray Train checkpoints: ``last.pt`` into ``checkpoints/``,
    ``best/`` made whole, the rest as it is; each file replaced atomically."""
    for f in folder.rglob("*"):
        if f.is_file() and f.relative_to(folder).parts[0] != "best":
            target = out / ("checkpoints" if f.name == LAST else "") / f.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            with storage.replacing(target) as tmp:
                shutil.copyfile(f, tmp)
    if (folder / "best").is_dir():
        unpack_best(folder, out / "best")


def trainer(train_cfg: dict, name: str, storage_path: str, workers: int, cpus: float, gpus: float,
            max_failures: int = 1, tune_report: bool = False, fidelity_weight: float | None = None):  # fmt: skip
    """A ``TorchTrainer`` running :func:`worker_loop` on ``workers`` processes."""
    import ray.train
    from ray.train.torch import TorchTrainer

    callbacks = []
    if tune_report:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    fs, root = storage.resolve(storage_path)
    resources = {"CPU": cpus} | ({"GPU": gpus} if gpus else {})
    return TorchTrainer(
        worker_loop,
        train_loop_config={"train": train_cfg, "threads": max(1, int(cpus)), "fidelity_weight": fidelity_weight},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources),  # fmt: skip
        run_config=ray.train.RunConfig(
            name=name, storage_path=root, storage_filesystem=fs, callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )  # fmt: skip


def train_on_ray(cfg, workers: int, cpus: float = 1.0, gpus: float = 0.0, resume: bool = False, overwrite: bool = False) -> dict:  # fmt: skip
    """``colorjob train --workers N``: one run on ``workers`` Ray Train workers; its run folder
    (metrics, best/, last.pt) is brought back to ``cfg.out`` from the last checkpoint. Ray Train
    keeps the run's state in ``OUT/.ray-train``: ``resume`` continues from it."""
    from colorjob.cluster import connect
    from colorjob.train import RunFolderError

    out = Path(cfg.out).absolute()
    storage_path = str(out / ".ray-train")
    if out.is_dir() and any(out.iterdir()) and not resume:
        if not overwrite:
            raise RunFolderError(f"{out} already holds a run: add --resume to continue it, --overwrite to start over, or choose another --out")  # fmt: skip
        shutil.rmtree(out)
        log.warning(f"starting over in {out}: the earlier run removed")
    connect()
    result = trainer(
        cfgmod.to_dict(cfg), "run", storage_path, workers, cpus, gpus, max_failures=2
    ).fit()
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            unpack_run(Path(d), out)
    log.info(f"trained on {workers} Ray Train workers; run folder: {out}")
    return result.metrics or {}
