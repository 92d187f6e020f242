"""Hyper-parameter search with Ray Tune: each trial is one :func:`colorjob.train.train` run.

    colorjob tune --config configs/tune.yaml                            # a private local Ray
    ray job submit --working-dir . -- python jobs/tune.py --config configs/tune.yaml   # a cluster

Search: OptunaSearch (TPE, seeded) over the config's ``search`` space, starting from the seed's
defaults; ASHA stops weak trials early (one report per epoch). Every epoch a trial reports its
metrics and, every ``train.checkpoint_every`` epochs, a checkpoint (``last.pt`` to resume from and
``best/``, the trial's best generator so far). An interrupted experiment continues with
``--resume`` (finished trials are not rerun; the searcher's state comes back). At the end:
``<storage>/<name>/trials.csv`` and ``trials.png`` and the best trial's generator in
``<storage>/<name>/best/``.

Everything that can be wrong (the search space against :class:`colorjob.train.TrainConfig`'s
ranges, the dataset, the model to start from, what a trial asks of a fixed-size private Ray, a
``--resume`` with nothing to resume) is refused before Ray starts and before anything is written.
The trial body is :mod:`colorjob.trial`, shared with multi-worker runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from colorjob import config as cfgmod
from colorjob import runfolder, storage, trial
from colorjob.checkpoint import LAST
from colorjob.models import num_downs_for
from colorjob.train import TrainConfig, check_inputs

log = logging.getLogger(__name__)

DISTRIBUTIONS = ("loguniform", "uniform", "quniform", "randint", "choice")


@dataclass
class Resources:
    """What a trial gets: ``workers`` training processes (Ray Train when more than one), each
    with ``cpu`` CPUs (its torch threads) and ``gpu`` GPUs. ``cpu_per_worker`` / ``gpu_per_worker``
    are the same settings under the names Ray Train uses."""

    workers: int = 1
    cpu: float = 1.0
    gpu: float = 0.0  # fractions (0.25) let small single-worker trials share a card
    cpu_per_worker: float | None = None
    gpu_per_worker: float | None = None

    def __post_init__(self) -> None:
        if self.cpu_per_worker is not None:
            self.cpu = self.cpu_per_worker
        if self.gpu_per_worker is not None:
            self.gpu = self.gpu_per_worker
        self.cpu_per_worker = self.gpu_per_worker = None  # one name from here on
        cfgmod.check_range("workers", self.workers, 1, 1024)
        cfgmod.check_range("cpu", self.cpu, 0, 1024, low_open=True)
        cfgmod.check_range("gpu", self.gpu, 0, 64)


@dataclass
class PBT:
    """Population Based Training: every ``perturbation_interval`` epochs the weakest trials copy
    a strong trial's checkpoint (G, D, optimisers) and continue with perturbed settings."""

    perturbation_interval: int = 2  # epochs; checkpoints are written at least as often
    quantile_fraction: float = 0.25  # the bottom quarter copies the top quarter
    resample_probability: float = 0.25  # explore: draw a setting anew instead of x0.8 / x1.2
    # synch: every trial waits at each perturbation point until all have reached it, so the
    # whole population is ranked at once (small populations: without it, trials ranked against
    # others' older scores may never land in the bottom quantile)
    synch: bool = True

    def __post_init__(self) -> None:
        cfgmod.check_range("perturbation_interval", self.perturbation_interval, 1)
        cfgmod.check_range("quantile_fraction", self.quantile_fraction, 0, 0.5, low_open=True)
        cfgmod.check_range("resample_probability", self.resample_probability, 0, 1)


@dataclass
class Scheduler:
    asha: bool = True  # False: every trial runs all its epochs (FIFO)
    # epoch-1 scores rank trials as their final ones do (Spearman 0.95, benchmarks/tune_search.py),
    # so ASHA may cut early and hard: 1 / 3 reached random search's best in 0.48x its trial-epochs,
    # 3 / 2 in 0.72x (mean of 3 seeds, docs/performance.md)
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: float = 3.0  # keep the best 1/reduction_factor at each rung
    pbt: PBT | None = None  # Population Based Training instead of ASHA (random initial points)

    def __post_init__(self) -> None:
        cfgmod.check_range("grace_period", self.grace_period, 1)
        cfgmod.check_range("reduction_factor", self.reduction_factor, 1, 100, low_open=True)


@dataclass
class GenerateData:
    sketches: int = 10
    size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        cfgmod.check_range("sketches", self.sketches, 1)
        try:
            num_downs_for(self.size)
        except ValueError as e:
            raise cfgmod.ConfigError(f"size: {e}") from None


@dataclass
class TuneConfig:
    """A search: the base training config, the space around it, and how to run it."""

    name: str = "colorjob-tune"
    storage_path: str = "runs/tune"  # local folder or s3:// URI: results, checkpoints, best/
    train: TrainConfig = field(default_factory=TrainConfig)  # every trial starts from this
    # parameter -> {distribution: [args]}, distribution one of DISTRIBUTIONS
    search: dict = field(
        default_factory=lambda: {
            "lr_g": {"loguniform": [5e-5, 1e-3]},
            "lr_d": {"loguniform": [5e-5, 1e-3]},
            "lambda_l1": {"loguniform": [10.0, 300.0]},
            "lambda_adv": {"uniform": [0.5, 2.0]},
        }
    )
    num_samples: int = 8  # trials
    max_concurrent_trials: int = 2
    resources: Resources = field(default_factory=Resources)
    metric: Literal["val_l1", "score"] = (
        "val_l1"  # score = val_l1 + fidelity_weight * (1 - fidelity)
    )
    fidelity_weight: float = 0.1
    searcher: Literal["optuna", "random"] = "optuna"
    start_from_defaults: bool = True  # evaluate the base config's values first
    seed: int = 0
    scheduler: Scheduler = field(default_factory=Scheduler)
    max_failures: int = 1  # retries of a crashed trial (from its last checkpoint)
    generate_data: GenerateData | None = None  # make a synthetic dataset if train.data is missing
    # On a cluster that may grow (RAY_ADDRESS): stop the search when no trial could start for
    # this long (a trial asking more than any node has would otherwise wait forever).
    pending_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if not self.name.strip() or "/" in self.name or self.name in (".", ".."):
            raise cfgmod.ConfigError(f"name must be a folder name (no '/'), got {self.name!r}")
        if not self.storage_path.strip():
            raise cfgmod.ConfigError("storage_path must be a folder or URI")
        cfgmod.check_range("num_samples", self.num_samples, 1)
        cfgmod.check_range("max_concurrent_trials", self.max_concurrent_trials, 1)
        cfgmod.check_range("fidelity_weight", self.fidelity_weight, 0)
        cfgmod.check_range("max_failures", self.max_failures, -1)
        cfgmod.check_range("pending_timeout_s", self.pending_timeout_s, 0, low_open=True)


# ---- the search space --------------------------------------------------------------------------
def _bounds(key: str, kind: str, args) -> list:
    """The values a distribution can take at its ends (what must be valid settings of ``key``)."""
    where = f"search.{key}: {kind} {args!r}"
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise cfgmod.ConfigError(f"{where}: choice needs a non-empty list of values")
        return list(args)
    n = {"loguniform": 2, "uniform": 2, "randint": 2, "quniform": 3}[kind]
    if isinstance(args, list):  # YAML reads 5e-5 (no dot) as a string: take it as the number
        args[:] = [_number(a) for a in args]
    if not isinstance(args, list) or len(args) != n or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):  # fmt: skip
        shape = "[low, high, q]" if n == 3 else "[low, high]"
        raise cfgmod.ConfigError(f"{where}: {kind} needs {n} numbers {shape}")
    low, high = args[0], args[1]
    if not low < high:
        raise cfgmod.ConfigError(f"{where}: low ({low:g}) must be below high ({high:g})")
    if kind == "loguniform" and low <= 0:
        raise cfgmod.ConfigError(f"{where}: loguniform needs low > 0")
    if kind == "quniform" and args[2] <= 0:
        raise cfgmod.ConfigError(f"{where}: quniform needs q > 0")
    if kind == "randint":
        if not all(float(a).is_integer() for a in args):
            raise cfgmod.ConfigError(f"{where}: randint needs integers")
        return [int(low), int(high) - 1]  # high is exclusive
    return [low, high]


def _number(value):
    if isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return value
        return int(f) if f.is_integer() and "." not in value and "e" not in value.lower() else f
    return value


def check_search(cfg: TuneConfig) -> None:
    """The ``search`` space, without Ray: every key a training setting, every distribution well
    formed (low < high, ...) and every value it can take a valid setting of its key (e.g. a
    learning rate in (0, 1]). Raises :class:`colorjob.config.ConfigError` naming the key."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if not cfg.search:
        raise cfgmod.ConfigError("search is empty: name at least one training key to search over")
    base = cfgmod.to_dict(cfg.train)
    for key, spec in cfg.search.items():
        if key not in fields:
            raise cfgmod.ConfigError(
                f"search.{key}: not a training config key; valid: {', '.join(sorted(fields))}"
            )
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise cfgmod.ConfigError(
                f"search.{key} must be one of {{loguniform: [low, high]}}, {{uniform: [low, high]}}, "
                f"{{quniform: [low, high, q]}}, {{randint: [low, high]}}, {{choice: [a, b, ...]}}; got {spec!r}"
            )
        ((kind, args),) = spec.items()
        for value in _bounds(key, kind, args):
            try:
                cfgmod.from_dict(TrainConfig, base | {key: value})
            except cfgmod.ConfigError as e:
                raise cfgmod.ConfigError(
                    f"search.{key}: {kind} {args!r} reaches {value!r}, which is not a valid "
                    f"setting ({e})"
                ) from None


def search_space(cfg: TuneConfig) -> dict:
    """The config's ``search`` mapping as Ray Tune domains (checked by :func:`check_search`)."""
    from ray import tune

    check_search(cfg)
    space = {}
    for key, spec in cfg.search.items():
        ((kind, args),) = spec.items()
        space[key] = tune.choice(list(args)) if kind == "choice" else getattr(tune, kind)(*args)
    return space


# ---- one trial (runs in a Ray worker) ----------------------------------------------------------
def train_gan(params: dict, base: dict, fidelity_weight: float, threads: int) -> None:
    """Tune's function trainable: the training run with ``params`` over ``base``
    (:func:`colorjob.trial.run` in the trial's own working directory)."""
    import torch
    from ray import tune

    # Tune reuses this process for the next trial: it stops this one's thread first and fails the
    # trial if that takes over TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s); a trial paused inside a
    # report has nothing left to write, but a slow disk should not turn a pause into an error.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "120")
    here = Path(os.getcwd())  # the trial's own working directory on this node
    tag = tune.get_context().get_trial_id() or ""
    cfg = cfgmod.from_dict(TrainConfig, cfgmod.merge(base, params) | {"out": str(here / "run"), "tag": tag})  # fmt: skip
    torch.set_num_threads(threads)
    restored = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry, a resumed experiment, or a PBT exploit: continue from it
        shutil.rmtree(here / "restored", ignore_errors=True)
        restored = Path(checkpoint.to_directory(str(here / "restored")))

    def publish(metrics: dict, folder: Path | None) -> None:
        ckpt = None if folder is None else tune.Checkpoint.from_directory(str(folder))
        tune.report(metrics, checkpoint=ckpt)

    trial.run(cfg, restored, publish, fidelity_weight)


def train_gan_workers(params: dict, base: dict, fidelity_weight: float, name: str, storage_path: str, resources: dict, max_failures: int) -> None:  # fmt: skip
    """Tune's function trainable for trials of several workers: a driver launching a Ray Train
    ``TorchTrainer`` (:mod:`colorjob.distributed`) whose workers report to Tune. A retried or
    resumed trial continues from Ray Train's latest checkpoint of the same run."""
    from ray import tune

    from colorjob.distributed import trainer

    trial_id = tune.get_context().get_trial_id() or "trial"
    train_cfg = cfgmod.merge(base, params) | {"tag": trial_id}
    r = Resources(**resources)
    trainer(
        train_cfg, f"{name}-{trial_id}", f"{storage_path}/workers", r.workers, r.cpu, r.gpu,
        max_failures=max(0, max_failures), tune_report=True, fidelity_weight=fidelity_weight,
    ).fit()  # fmt: skip


# ---- the experiment ----------------------------------------------------------------------------
def experiment_path(cfg: TuneConfig) -> str:
    root = cfg.storage_path if "://" in cfg.storage_path else str(Path(cfg.storage_path).absolute())
    return f"{root.rstrip('/')}/{cfg.name}"


def honest_optuna_search(max_t: int, **kwargs):
    """Ray's OptunaSearch, telling Optuna the truth about early-stopped trials.

    Ray reports a trial that a scheduler (ASHA) stopped at epoch 2 as COMPLETE with its epoch-2
    score, next to 12-epoch scores: TPE then models "looks good after 2 epochs" and penalises
    slow starters. Here such a trial is PRUNED (its per-epoch scores are already Optuna's
    intermediate values), which TPE ranks below every trial that ran to the end.
    """
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class HonestOptunaSearch(OptunaSearch):
        def on_trial_complete(self, trial_id, result=None, error=False):
            epoch = (result or {}).get("epoch", (result or {}).get("training_iteration", max_t))
            stopped = result and not error and epoch < max_t
            if not stopped or trial_id in self._completed_trials:
                return super().on_trial_complete(trial_id, result, error)
            try:
                self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            except Exception as exc:  # noqa: BLE001 - as Ray's own: a bad value is a warning
                log.warning(f"optuna: {exc}")
            self._completed_trials.add(trial_id)

    return HonestOptunaSearch(**kwargs)


def _searcher(cfg: TuneConfig, space: dict):
    start = [{k: getattr(cfg.train, k) for k in space}] if cfg.start_from_defaults else None
    if cfg.searcher == "optuna" and cfg.scheduler.pbt is None:
        import optuna

        return honest_optuna_search(
            cfg.train.epochs, metric=cfg.metric, mode="min", points_to_evaluate=start,
            sampler=optuna.samplers.TPESampler(
                seed=cfg.seed,
                # Optuna's default waits for 10 random trials before TPE models anything: with
                # the small budgets of a search like this, start modelling after a third of them.
                n_startup_trials=max(2, min(10, cfg.num_samples // 3)),
                multivariate=True,  # learning rates and loss weights interact
            ),
        )  # fmt: skip
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Random search; also PBT's first population (PBT changes settings as it goes, which a model
    # of "settings -> score" like TPE cannot follow).
    return BasicVariantGenerator(random_state=cfg.seed, points_to_evaluate=start)


def _scheduler(cfg: TuneConfig, space: dict):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = cfg.scheduler
    if s.pbt is not None:
        random.seed(cfg.seed)  # PBT draws its exploits and perturbations from Python's random
        return resilient_pbt(
            time_attr="epoch", perturbation_interval=s.pbt.perturbation_interval,
            hyperparam_mutations=space, quantile_fraction=s.pbt.quantile_fraction,
            resample_probability=s.pbt.resample_probability, synch=s.pbt.synch,
        )  # fmt: skip
    if not s.asha:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",  # epochs, not reports: with eval_every > 1 they differ
        max_t=cfg.train.epochs,
        grace_period=min(s.grace_period, cfg.train.epochs),  # --epochs 2 still runs
        reduction_factor=s.reduction_factor,
    )


def resilient_pbt(**kwargs):
    """Ray's Population Based Training, where a member that fails for good (its retries spent)
    cannot stall a synchronous population.

    Ray's synchronous PBT perturbs when the last live member reports at the perturbation point;
    a member that dies before it reports never does, and the paused others would wait forever
    (``3 PAUSED | 1 ERROR``, nothing running). Here, when nothing runs, nothing is left to start
    and every live member waits at the point while one has failed, the population is perturbed
    without it and goes on (the failure stays in the results, and ``trials.csv`` says why).
    """
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import PopulationBasedTraining

    class ResilientPBT(PopulationBasedTraining):
        def on_trial_result(self, tune_controller, trial, result):
            if self._synch:
                self._count_failed_as_arrived(tune_controller)
            return super().on_trial_result(tune_controller, trial, result)

        def choose_trial_to_run(self, tune_controller):
            trial = super().choose_trial_to_run(tune_controller)
            if trial is None and self._synch and self._stalled(tune_controller):
                log.warning("a member of the population failed for good; it goes on without it")
                waiting = [t for t in tune_controller.get_trials() if t.status == Trial.PAUSED]
                self.on_trial_result(tune_controller, waiting[0], self._trial_state[waiting[0]].last_result)  # fmt: skip
                trial = super().choose_trial_to_run(tune_controller)
            return trial

        def _count_failed_as_arrived(self, tune_controller) -> None:
            """A failed member stays among Ray's live trials and never reaches the point the
            population waits at: count it as there (it is never in a quantile: it is finished)."""
            for t in tune_controller.get_trials():
                if t.status == Trial.ERROR and t in self._trial_state:
                    state = self._trial_state[t]
                    state.last_train_time = max(state.last_train_time, self._next_perturbation_sync)

        def _stalled(self, tune_controller) -> bool:
            """Nothing runs or waits to start, every member still alive is paused at the point,
            and a member failed: the report the population waits for will never come."""
            trials = tune_controller.get_trials()
            members = [t for t in trials if t in self._trial_state and t.status not in (Trial.ERROR, Trial.TERMINATED)]  # fmt: skip
            return (
                any(t.status == Trial.ERROR for t in trials)
                and bool(members)
                and all(t.status == Trial.PAUSED and self._trial_state[t].last_result is not None for t in members)
            )  # fmt: skip

    return ResilientPBT(**kwargs)


def milestones(cfg: TuneConfig) -> list[int]:
    """The epochs at which a trial writes a full checkpoint besides ``checkpoint_every`` and its
    last epoch: where the scheduler decides (ASHA's rungs, every PBT perturbation), so a resumed
    or exploiting trial continues from the point that mattered, and no more bytes are written."""
    s, epochs = cfg.scheduler, cfg.train.epochs
    if s.pbt is not None:
        return list(range(s.pbt.perturbation_interval, epochs + 1, s.pbt.perturbation_interval))
    if not s.asha:
        return []
    rungs, t = [], min(s.grace_period, epochs)
    while t < epochs:
        rungs.append(int(t))
        t = max(t + 1, int(round(t * s.reduction_factor)))
    return rungs


def build_tuner(cfg: TuneConfig, resume: bool = False):
    from ray import tune

    base = cfgmod.to_dict(cfg.train) | {"checkpoint_at": milestones(cfg)}
    space = search_space(cfg)
    if cfg.resources.workers > 1:  # the trial only drives its Ray Train workers
        if cfg.scheduler.pbt is not None:
            raise cfgmod.ConfigError("scheduler.pbt needs single-worker trials (resources.workers: 1): PBT exploits Tune checkpoints")  # fmt: skip
        fn = tune.with_parameters(
            train_gan_workers, base=base, fidelity_weight=cfg.fidelity_weight, name=cfg.name,
            storage_path=experiment_path(cfg), resources=cfgmod.to_dict(cfg.resources),
            max_failures=cfg.max_failures,
        )  # fmt: skip
        # no CPU (its workers hold those); Tune needs one resource in the trial's bundle
        trainable = tune.with_resources(fn, {"cpu": 0, "memory": 64 * 2**20})
    else:
        fn = tune.with_parameters(
            train_gan, base=base, fidelity_weight=cfg.fidelity_weight,
            threads=max(1, int(cfg.resources.cpu)),
        )  # fmt: skip
        trainable = tune.with_resources(fn, {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
    path = experiment_path(cfg)
    fs, inner = storage.resolve(path)
    if resume:
        if not tune.Tuner.can_restore(inner, storage_filesystem=fs):
            raise cfgmod.ConfigError(
                f"nothing to resume at {path}: no experiment was started there"
            )
        return tune.Tuner.restore(
            inner, trainable=trainable, resume_unfinished=True, resume_errored=False,
            storage_filesystem=fs,
        )  # fmt: skip
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=cfg.metric,
            mode="min",
            search_alg=_searcher(cfg, space),
            scheduler=_scheduler(cfg, space),
            num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent_trials,
            # A single-worker trial's process serves the next trial (and a PBT member its own
            # next interval) instead of a new Python + torch per start; see train_gan.
            reuse_actors=cfg.resources.workers == 1,
        ),  # fmt: skip
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=inner.rsplit("/", 1)[0],
            storage_filesystem=fs,  # endpoint and credentials resolved the colorjob way
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            callbacks=[PendingTimeout(cfg.pending_timeout_s), *kept_result_files()],
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1 if cfg.scheduler.pbt is None else 4
            ),
            verbose=1,
        ),
    )


def _params_of(trial_path: str) -> dict:
    """The settings a trial was started with, from its folder's ``params.json`` (Ray gives a
    trial that died before its first report no config); {} where it cannot be read."""
    import json

    try:
        return json.loads((Path(trial_path) / "params.json").read_text())
    except (OSError, ValueError):
        return {}


def summarize(results, cfg: TuneConfig) -> pd.DataFrame:
    """One row per trial: id, searched params, its best metric and the fidelity there, the
    epochs it ran, status (completed, stopped early, failed) and the error of a failed one.

    Built from ``ResultGrid.get_dataframe`` (each trial's best report by the search metric, and
    its last report for the epochs it ran); a trial that never reported gets a row of its own,
    named by its folder.
    """
    best = results.get_dataframe(filter_metric=cfg.metric, filter_mode="min")
    last = results.get_dataframe()
    params = list(cfg.search)
    columns = {
        "trial_id": "trial_id", **{f"config/{k}": k for k in params}, "val_l1": "val_l1",
        "val_fidelity": "val_fidelity", "epoch": "best_epoch", cfg.metric: cfg.metric,
    }  # fmt: skip
    table = best.reindex(columns=list(columns)).rename(columns=columns)
    table = table.loc[:, ~table.columns.duplicated()]
    epochs = dict(zip(last.get("trial_id", []), last.get("epoch", []), strict=True))
    table["epochs"] = table["trial_id"].map(epochs)
    errors, silent = {}, []
    for r in results:
        tid = (r.metrics or {}).get("trial_id") or Path(r.path).name
        if tid not in epochs:  # never reported: in no table yet
            given = r.config or _params_of(r.path)
            silent.append({"trial_id": tid, **{k: given.get(k) for k in params}, "epochs": 0})
        errors[tid] = r.error
    if silent:
        table = pd.concat([table, pd.DataFrame(silent)], ignore_index=True)
    table["epochs"] = table["epochs"].fillna(0).astype(int)
    table["best_epoch"] = table["best_epoch"].astype("Int64")
    table["status"] = "completed"
    table.loc[table["epochs"] < cfg.train.epochs, "status"] = "stopped early"
    table.loc[table["trial_id"].map(lambda t: errors.get(t) is not None), "status"] = "failed"
    table["error"] = table["trial_id"].map(lambda t: _short_error(errors.get(t)))
    return table.sort_values(cfg.metric, na_position="last", kind="stable")


def _short_error(err) -> str:
    if err is None:
        return ""
    text = str(err).strip().splitlines()
    msg = next((line for line in reversed(text) if line.strip()), "")
    return msg[:300]


def finish(results, cfg: TuneConfig) -> Path | str | None:
    """Write trials.csv and trials.png, export the best trial's generator; returns best/ path."""
    from colorjob.export import publish
    from colorjob.plots import plot_trials

    exp = experiment_path(cfg)
    fs, root = storage.resolve(exp)
    table = summarize(results, cfg)
    storage.write_atomic(fs, storage.join(root, "trials.csv"), table.to_csv(index=False).encode())
    frames = [r.metrics_dataframe for r in results if r.metrics_dataframe is not None]
    curves = {df["trial_id"].iloc[0]: df for df in frames if len(df) and "val_l1" in df}
    if curves:
        with tempfile.TemporaryDirectory() as tmp:
            plot_trials(curves, Path(tmp) / "trials.png", metric="val_l1")
            png = (Path(tmp) / "trials.png").read_bytes()
            storage.write_atomic(fs, storage.join(root, "trials.png"), png)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        shown = table.drop(columns=["error"]).to_string(
            index=False, float_format=lambda v: f"{v:.4g}"
        )
        log.info(shown)
    for row in table[table["status"] == "failed"].itertuples():
        log.warning(f"trial {row.trial_id} failed: {row.error}")
    if not any(r.error is None and r.metrics_dataframe is not None and len(r.metrics_dataframe) for r in results):  # fmt: skip
        log.warning("no trial finished an epoch: nothing to export")
        return None
    best = results.get_best_result(
        metric=cfg.metric, mode="min", scope="all", filter_nan_and_inf=True
    )
    ckpt = best.checkpoint or _worker_checkpoint(best)
    if ckpt is None:
        log.warning("the best trial saved no checkpoint: nothing to export")
        return None
    dest = storage.join(exp, "best")
    with ckpt.as_directory() as d, tempfile.TemporaryDirectory() as tmp:
        state = runfolder.write(Path(d) / LAST, Path(tmp))  # best/ made from the one last.pt
        if not (Path(tmp) / "best").is_dir():
            log.warning(f"the best trial's checkpoint (epoch {state['epoch']}) holds no validated generator: nothing to export")  # fmt: skip
            return None
        publish(Path(tmp) / "best", dest)  # as a unit: it never vanishes
    return Path(dest) if not storage.is_uri(dest) else dest


def _worker_checkpoint(result):
    """The latest checkpoint of a multi-worker trial (Ray Train keeps it; Tune has its path)."""
    df = result.metrics_dataframe
    if df is None or "checkpoint_path" not in df or df["checkpoint_path"].isna().all():
        return None
    from ray.train import Checkpoint

    fs, _ = storage.resolve(result.path)
    return Checkpoint(df["checkpoint_path"].dropna().iloc[-1], filesystem=fs)


def prepare_data(cfg: TuneConfig) -> TuneConfig:
    """Absolute data and storage paths (trials run in folders of their own: a relative path there
    is another place); generate a synthetic set if asked and missing."""
    data = (
        cfg.train.data if storage.is_uri(cfg.train.data) else str(Path(cfg.train.data).absolute())
    )
    if not storage.is_uri(cfg.storage_path):
        cfg = dataclasses.replace(cfg, storage_path=str(Path(cfg.storage_path).absolute()))
    fs, root = storage.resolve(data)
    missing = not storage.exists(fs, storage.join(root, "metadata.csv"))
    if missing and cfg.generate_data is not None:
        from colorjob import synth

        g = cfg.generate_data
        log.info(f"generating a synthetic dataset ({g.sketches} sketches, {g.size}px) in {data}")
        if storage.is_uri(data):
            with tempfile.TemporaryDirectory() as tmp:
                storage.upload_dir(synth.generate(tmp, g.sketches, seed=g.seed, size=g.size), data)
        else:
            synth.generate(data, g.sketches, seed=g.seed, size=g.size)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, data=data))


#: What makes two searches the same experiment: --resume refuses a change to any of these.
FINGERPRINTED = ("search", "train", "metric", "fidelity_weight", "searcher", "start_from_defaults", "seed", "scheduler", "num_samples")  # fmt: skip


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v}
    return out


def claim_experiment(cfg: TuneConfig, resume: bool, force: bool = False) -> None:
    """A new search needs a new experiment; a resumed one must be the same search.

    The experiment keeps its resolved config in ``<experiment>/config.yaml``; resuming with a
    different search space, base training config, metric, searcher or scheduler is refused
    with the differences listed, unless ``force``.
    """
    import yaml
    from ray import tune

    path = experiment_path(cfg)
    fs, root = storage.resolve(path)
    saved = storage.join(root, "config.yaml")
    started = tune.Tuner.can_restore(root, storage_filesystem=fs)
    if not resume and started:
        raise cfgmod.ConfigError(
            f"an experiment named {cfg.name!r} already exists at {path}: add --resume to continue "
            "it, or give the new search another --name (or --storage-path)"
        )
    now = cfgmod.to_dict(cfg)
    if resume and storage.exists(fs, saved):
        before = yaml.safe_load(storage.read_bytes(fs, saved)) or {}
        old, new = (_flat({k: d.get(k) for k in FINGERPRINTED}) for d in (before, now))
        diff = [f"{k}: experiment {old.get(k)!r}, now {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]  # fmt: skip
        if diff and not force:
            raise cfgmod.ConfigError(
                f"the experiment at {path} was started with another search; its trials would mix "
                "settings:\n  " + "\n  ".join(diff) + "\nresume with the experiment's own config "
                f"({path}/config.yaml), or add --force to continue with these changes"
            )
        if diff:
            log.warning(f"resuming {path} with changes (--force): {'; '.join(diff)}")
        elif not force:
            return
    storage.write_atomic(fs, saved, cfgmod.dump(cfg).encode())


def fit_concurrency(cfg: TuneConfig) -> TuneConfig:
    """On a private local Ray (no cluster to grow), run only as many multi-worker trials at once
    as their workers fit: Ray Train starts a trial's workers after Tune has started the trial,
    so trials that do not fit wait on each other's worker groups instead of queueing in Tune."""
    import ray

    if cfg.resources.workers == 1 or on_cluster():
        return cfg
    cpus = ray.cluster_resources().get("CPU", 0)
    fit = max(1, int(cpus // (cfg.resources.workers * cfg.resources.cpu)))
    if fit < cfg.max_concurrent_trials:
        log.info(f"{fit} trial(s) of {cfg.resources.workers} workers fit this machine's {cpus:g} CPUs: max_concurrent_trials {cfg.max_concurrent_trials} -> {fit}")  # fmt: skip
        cfg = dataclasses.replace(cfg, max_concurrent_trials=fit)
    return cfg


def on_cluster() -> bool:
    """Whether the search joins a cluster (``RAY_ADDRESS``) rather than a private local Ray."""
    from colorjob.cluster import joins_cluster

    return joins_cluster()


def trial_needs(cfg: TuneConfig) -> dict[str, float]:
    """What one trial holds while it runs: its workers' CPUs and GPUs together."""
    r = cfg.resources
    return {"CPU": r.cpu * r.workers, "GPU": r.gpu * r.workers}


def check_resources(cfg: TuneConfig, available: dict) -> None:
    """A trial must fit the Ray it runs on. On a private local Ray (a fixed size) a trial that
    cannot ever start is refused; on a cluster, which may grow, it is said once (and the search
    stops after ``pending_timeout_s`` without any trial able to start)."""
    need = trial_needs(cfg)
    short = [
        f"{need[k]:g} {k}s (has {available.get(k, 0):g})"
        for k in ("CPU", "GPU")
        if need[k] > available.get(k, 0) + 1e-9
    ]
    if not short:
        return
    if not on_cluster():
        raise cfgmod.ConfigError(
            f"a trial asks for {' and '.join(short)} but this machine's Ray has no more: it would "
            "wait forever. Lower resources.cpu / resources.gpu / resources.workers, or run the "
            "search on a cluster (RAY_ADDRESS)"
        )
    log.warning(
        f"a trial asks for {' and '.join(short)}, more than the cluster has now: waiting for "
        f"the autoscaler; the search stops if no trial can start within {cfg.pending_timeout_s:g} s "
        "(pending_timeout_s)"
    )


def kept_result_files() -> list:
    """Tune's result.json and progress.csv writers (what ``ResultGrid`` and trials.csv read),
    without Ray 2.60's loss of reports: when a trial starts again from a checkpoint (a PBT member
    after its pause or exploit, a retry), Ray's logger copies the file back from storage over the
    driver's own copy, and storage lags by up to a sync period, so the reports in between were
    gone (a PBT member that ran 6 epochs showed 4 in trials.csv). The driver's copy is never
    older than storage's; only a driver that has none yet (a resumed experiment) fetches it."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    def keep_local(base):
        class KeepLocal(base):
            def _restore_from_remote(self, file_name, trial) -> None:
                if not Path(trial.local_path, file_name).exists():
                    super()._restore_from_remote(file_name, trial)

        KeepLocal.__name__ = KeepLocal.__qualname__ = f"Kept{base.__name__}"
        return KeepLocal()

    return [keep_local(JsonLoggerCallback), keep_local(CSVLoggerCallback)]


class PendingTimeout:
    """A Tune callback: stop the search with a clear error when trials have waited
    ``seconds`` with none running (nothing the cluster has can start them)."""

    def __new__(cls, seconds: float):
        from ray.tune import Callback

        class _PendingTimeout(Callback):
            def __init__(self):
                self.since: float | None = None

            def on_step_end(self, iteration, trials, **info):
                waiting = [t for t in trials if t.status == "PENDING"]
                if not waiting or any(t.status == "RUNNING" for t in trials):
                    self.since = None
                    return
                now = time.monotonic()
                self.since = self.since or now
                if now - self.since > seconds:
                    raise SearchStalled(
                        f"{len(waiting)} trial(s) waited {seconds:g} s and none could start: the "
                        "cluster has no node with the resources a trial asks for "
                        "(resources.cpu / gpu / workers); lower them or add such nodes"
                    )

        return _PendingTimeout()


class SearchStalled(cfgmod.ConfigError):
    """No trial of the search could start for ``pending_timeout_s``."""


def preflight(cfg: TuneConfig, resume: bool = False) -> TuneConfig:
    """Everything checked before Ray starts or anything is written; returns the config with
    absolute paths (and a generated dataset, if asked and missing)."""
    from ray import tune

    check_search(cfg)
    cfg = prepare_data(cfg)
    if storage.is_uri(cfg.train.data):
        storage.check(cfg.train.data)
    check_inputs(cfg.train)  # the dataset, its conditions, the model to start from
    path = experiment_path(cfg)
    storage.check(path, writable=True)  # a wrong bucket fails here, clearly
    fs, root = storage.resolve(path)
    if resume and not tune.Tuner.can_restore(root, storage_filesystem=fs):
        raise cfgmod.ConfigError(f"nothing to resume at {path}: no experiment was started there (run it without --resume)")  # fmt: skip
    if not on_cluster():  # the private Ray will have this machine's CPUs and GPUs
        check_resources(cfg, local_resources())
    return cfg


def local_resources() -> dict[str, float]:
    """What a private local Ray started here has: this process's CPUs and the visible GPUs."""
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}


def search(cfg: TuneConfig, resume: bool = False, force: bool = False) -> Path | str | None:
    """Start (or resume) the search on the Ray that is there (or a private local one); returns
    the best generator's folder (None when no trial finished an epoch)."""
    from colorjob.cluster import connect

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    cfg = preflight(cfg, resume)
    claim_experiment(cfg, resume, force)
    # Tune ends a multi-worker trial (ASHA's stop, PBT's exploit, the last epoch) by killing its
    # actor, and with it the trial's Ray Train controller; the controller's worker placement group
    # outlives it until Ray Train's PlacementGroupCleaner sees the controller dead through Ray's
    # State API, which the dashboard serves (ray-project/ray#54305). Without it the next trial's
    # workers wait forever for CPUs held by nobody. A cluster's `ray start` has the dashboard.
    connect(include_dashboard=cfg.resources.workers > 1)
    import ray

    if on_cluster():
        check_resources(cfg, ray.cluster_resources())  # may grow: said once, then the timeout
    cfg = fit_concurrency(cfg)
    tuner = build_tuner(cfg, resume=resume)
    try:
        results = tuner.fit()
    except Exception as e:  # noqa: BLE001 - Tune wraps our callback's error
        stalled = _cause(e, SearchStalled)
        if stalled is not None:
            raise stalled from None
        raise
    best = finish(results, cfg)
    if best is not None:
        log.info(f"best generator: {best}")
    return best


def _cause(err: BaseException | None, kind: type) -> BaseException | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":  # python -m colorjob.tune: the command, run from the real module
    from colorjob.cli import main

    sys.exit(main(["tune", *sys.argv[1:]]))
