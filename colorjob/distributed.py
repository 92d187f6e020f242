"""Training on several workers with Ray Train: one run, or one Tune trial bigger than a device.

    colorjob train --config configs/train.yaml --workers 2              # on the Ray that is there
    colorjob tune --config configs/tune.yaml --set resources.workers=2    # each trial: 2 workers

A Ray Train ``TorchTrainer`` starts ``workers`` processes (``ScalingConfig``: CPUs and GPUs per
worker), sets up their process group (gloo on CPUs, NCCL on GPUs), and each runs the same trial
body as a single-worker search trial (:func:`colorjob.trial.run`, hence the same
:func:`colorjob.train.train` loop): Accelerate picks the process group up, shards the data and
averages the gradients. Rank 0 writes the run folder and reports a checkpoint (the one
``last.pt``) to Ray Train, which keeps it in ``storage_path``; a worker that fails (its node lost)
is restarted by Ray Train from the latest checkpoint (``FailureConfig``) and every worker makes
its folder again from it.

``colorjob train --workers N`` runs :func:`train_on_ray`: the same preflight and run-folder rule
as one process (:mod:`colorjob.runfolder`), before Ray starts; the run folder is brought back to
``--out`` from the last checkpoint. Under Tune the trial is a small driver that launches the
trainer (Ray's documented Tune + Train pattern, ``TuneReportCallback``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from colorjob import config as cfgmod
from colorjob import runfolder, storage, trial
from colorjob.checkpoint import LAST

log = logging.getLogger(__name__)
RAY_TRAIN = ".ray-train"  # Ray Train's own state inside the run folder (a run file)
RUN_NAME = "run"
# Ray Train's controller takes a worker's report (and only then lets it train on: one report is
# queued) when it polls the group, every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default: an
# epoch took 2 s however short (the seed's 225 pairs: 0.1 s on an H100). Ray passes the variable
# from the process that calls fit() to the controller; a slow poll is awaited, not an error.
POLL_ENV, POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"


def worker_loop(config: dict) -> None:
    """One Ray Train worker: the trial body, reporting every epoch it validates."""
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
    import ray
    import ray.train

    from colorjob.train import TrainConfig

    cfg = cfgmod.from_dict(TrainConfig, config["train"] | {"out": str(scratch / "run")})
    restored = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restart after a failure: from the latest checkpoint
        restored = Path(checkpoint.to_directory(str(scratch / "restored")))
    elif config.get("start_from") is not None:  # --resume from the run folder's own last.pt
        restored = scratch / "restored"
        restored.mkdir()
        (restored / LAST).write_bytes(ray.get(config["start_from"][0]))
    if restored is not None and cfg.shard_log:  # where each restarted process began (tests)
        log_dir = Path(cfg.shard_log)
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"restored-rank{rank}-{os.getpid()}.json").write_text("{}")

    def publish(metrics: dict, folder: Path | None) -> None:
        ckpt = None if folder is None else ray.train.Checkpoint.from_directory(str(folder))
        ray.train.report(metrics, checkpoint=ckpt)  # every rank reports; rank 0 has checkpoints

    trial.run(cfg, restored, publish, config.get("fidelity_weight", trial.DEFAULT_FIDELITY_WEIGHT), whole_folder=rank == 0)  # fmt: skip


def trainer(
    train_cfg: dict,
    name: str,
    storage_path: str,
    workers: int,
    cpus: float,
    gpus: float,
    max_failures: int = 1,
    tune_report: bool = False,
    fidelity_weight: float = trial.DEFAULT_FIDELITY_WEIGHT,
    start_from=None,
):
    """A ``TorchTrainer`` running :func:`worker_loop` on ``workers`` processes; ``start_from``:
    a Ray object holding a ``last.pt`` to begin from when Ray Train has no checkpoint of its own."""
    import ray.train
    from ray.train.torch import TorchTrainer

    callbacks = []
    if tune_report:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    os.environ.setdefault(POLL_ENV, POLL_S)  # a user's own setting stays
    fs, root = storage.resolve(storage_path)
    resources = {"CPU": cpus} | ({"GPU": gpus} if gpus else {})
    config = {"train": train_cfg, "threads": max(1, int(cpus)), "fidelity_weight": fidelity_weight}
    if start_from is not None:
        config["start_from"] = [start_from]  # nested: passed as a reference, fetched by workers
    return TorchTrainer(
        worker_loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources),  # fmt: skip
        run_config=ray.train.RunConfig(
            name=name, storage_path=root, storage_filesystem=fs, callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )  # fmt: skip


def latest_ray_checkpoint(run_dir: Path) -> Path | None:
    """The ``last.pt`` of the newest checkpoint Ray Train kept in ``run_dir``."""
    found = sorted(run_dir.glob("checkpoint_*/" + LAST)) if run_dir.is_dir() else []
    return runfolder.newest(*found)


def train_on_ray(cfg, workers: int, cpus: float = 1.0, gpus: float = 0.0, resume: bool = False, overwrite: bool = False) -> dict:  # fmt: skip
    """``colorjob train --workers N``: one run on ``workers`` Ray Train workers. The preflight
    and the run-folder rule are those of one process (before Ray starts); ``--resume`` continues
    from the newest of the run folder's ``last.pt`` and Ray Train's own checkpoints; at the end
    the run folder (metrics, best/, last.pt) is made from the last checkpoint."""
    from colorjob.cluster import connect
    from colorjob.train import preflight

    out = Path(cfg.out).absolute()
    cfg = cfgmod.from_dict(type(cfg), cfgmod.to_dict(cfg) | {"out": str(out)})
    checked = preflight(cfg, resume, overwrite)  # everything, before anything is removed
    del checked.inputs
    runfolder.clear(checked.claim)
    run_dir = out / RAY_TRAIN / RUN_NAME
    start_file = None
    if resume:
        own, theirs = out / "checkpoints" / LAST, latest_ray_checkpoint(run_dir)
        start_file = runfolder.newest(own, theirs)
        if start_file == own and theirs is not None:  # Ray Train's checkpoints are older
            shutil.rmtree(run_dir)
        elif start_file == theirs:
            start_file = None  # Ray Train restores its own latest checkpoint itself
    connect()
    import ray

    start_from = ray.put(start_file.read_bytes()) if start_file is not None else None
    result = trainer(
        cfgmod.to_dict(cfg), RUN_NAME, str(out / RAY_TRAIN), workers, cpus, gpus, max_failures=2,
        start_from=start_from,
    ).fit()  # fmt: skip
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            runfolder.write(Path(d) / LAST, out)
    log.info(f"trained on {workers} Ray Train workers; run folder: {out}")
    return result.metrics or {}
