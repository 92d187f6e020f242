"""Train the conditional GAN: one function, one config, one checkpoint dict.

    colorjob train --config configs/cpu.yaml --data data/chars-64 --out runs/cpu
    colorjob train --config configs/cpu.yaml --out runs/cpu --resume --epochs 30

:func:`train` runs a whole training run from a :class:`TrainConfig`. The command line
(:mod:`colorjob.commands.train`), a search trial (:mod:`colorjob.trial`: it passes a ``report``
callback) and the tests all call it; this module imports no Ray. Accelerate runs the same loop on
a CPU, one GPU, or several GPUs under ``accelerate launch -m colorjob.train ...``.

Before anything is written or removed, :func:`preflight` checks everything that can be checked
(the run folder, the dataset and its conditions, the checkpoint to resume, the model to start
from): every path (one process, Ray Train workers, a trial) runs it, so a typo never costs an
earlier run.

Objective (pix2pix): D sees (image, sketch, condition) and learns real vs fake; G minimises
``lambda_adv * adversarial + lambda_l1 * L1``. The decoded dataset is small (the seed: 250 pairs),
so it is kept on the device as uint8 and batches are gathered there (:class:`colorjob.data.DeviceSet`):
a GPU never waits on PNG decoding.

Every epoch writes ``OUT/metrics.csv`` (losses and validation L1 / PSNR / condition fidelity on
held-out sketches, see :mod:`colorjob.evaluate`), ``OUT/samples/epoch_NNN.png``, ``OUT/loss.png``,
``OUT/checkpoints/last.pt`` (and ``best.pt`` by validation L1, see :mod:`colorjob.checkpoint`), and
exports the best generator to ``OUT/best/`` (see :mod:`colorjob.export`). ``OUT/config.yaml`` is
the resolved configuration the run was started with. :mod:`colorjob.runfolder` says what a run
folder holds and when one may be reused.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from colorjob import checkpoint, runfolder, storage
from colorjob import config as cfgmod
from colorjob.checkpoint import load as load_checkpoint
from colorjob.composite import composite, layer_targets
from colorjob.conditions import ConditionVocab
from colorjob.data import (
    DatasetError,
    DeviceSet,
    EpochSampler,
    PairDataset,
    StreamedPairs,
    epoch_seed,
    load_splits,
    training_batch,
)
from colorjob.evaluate import region_masks, sample_grid, save_samples, validate, validate_streamed
from colorjob.export import ModelError, export_generator
from colorjob.models import (
    GANLoss,
    build_discriminator,
    generator_for,
    num_downs_for,
    set_requires_grad,
)
from colorjob.runfolder import METRIC_COLUMNS, RunFolderError

__all__ = [
    "METRIC_COLUMNS",
    "NonFiniteLossError",
    "RunFolderError",
    "TrainConfig",
    "config_for_resume",
    "load_checkpoint",
    "preflight",
    "train",
]

log = logging.getLogger(__name__)
LOSS_NAMES = ["g_adv", "g_l1", "d_real", "d_fake", "g_total"]


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults are the seed's settings."""

    data: str = "data/chars"  # dataset folder (metadata.csv + images), see colorjob.data
    out: str = "runs/train"  # where metrics, samples, checkpoints and best/ go
    # networks
    image_size: int = 256  # square side, a power of two >= 32; the U-Net depth follows (256 -> 8)
    ngf: int = 64  # generator base width
    ndf: int = 64  # discriminator base width
    d_layers: int = 3  # PatchGAN layers (3 = 70x70 receptive field)
    dropout: float = 0.5  # in the generator's middle decoder blocks
    conditioning: Literal["concat", "film"] = (
        "concat"  # planes at G's input (seed), or FiLM-modulated decoder
    )
    layers: bool = False  # G paints a colour layer (RGB + coverage) under the sketch's lines
    output: Literal["composite", "raw"] = (
        "composite"  # what validation and samples measure: the sketch's lines over G's colours
    )
    d_conditioning: Literal["concat", "projection"] = (
        "concat"  # planes at D's input (seed), or projection
    )
    # objective
    gan_mode: Literal["vanilla", "lsgan"] = "vanilla"
    lambda_adv: float = 1.0
    lambda_l1: float = 100.0
    # optimisation
    epochs: int = 50  # total; --resume with a larger value extends a finished run
    batch_size: int = 8
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_start: int | None = None  # epoch after which the LR decays linearly to 0 (pix2pix)
    # data
    val_fraction: float = 0.2
    split: Literal["sketch", "pair"] = "sketch"  # hold out whole characters, or random pairs
    flip: bool = True  # random horizontal flips of (sketch, target) while training
    augment: float = 0.0  # > 0: style augmentations (colorjob.augment), each with this probability
    holdout_data: str | None = None  # a dataset of another drawing style, scored every epoch
    init_from: str | None = None  # start G (and D, from a checkpoint) from an exported model
    seed: int = 0
    # machinery
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    channels_last: bool = True  # on CUDA
    checkpoint_every: int = 1  # epochs between full checkpoints (the last epoch always saves)
    checkpoint_at: list[int] = field(
        default_factory=list
    )  # more epochs to save at (Tune's milestones)
    eval_every: int = 1  # epochs between validations (and reports to Tune); the last always
    sample_every: int = 1  # epochs between sample grids and loss.png; the last and best always
    sample_sketches: int = 4  # rows of the per-epoch sample grid
    sample_conditions: int = 5  # generated columns of the sample grid
    eval_batch_size: int = 64
    data_mode: Literal["auto", "memory", "stream"] = "auto"  # auto: stream past memory_limit_gb
    memory_limit_gb: float = 2.0  # decoded size (uint8) above which auto streams from files
    loader_workers: int = 2  # DataLoader worker processes decoding when streaming
    stream_window: int = 8  # sketches whose pairs are shuffled together (each decoded once)
    log_with: Literal["none", "tensorboard"] = "none"  # tensorboard: curves in OUT/tensorboard
    tag: str = ""  # a label written into every metrics row (a Tune trial's id): lineage under PBT
    shard_log: str | None = (
        None  # a folder where each process lists the rows it trained on, per epoch
    )

    def __post_init__(self) -> None:
        r = cfgmod.check_range
        if not self.data.strip() or not self.out.strip():
            raise cfgmod.ConfigError("data and out must be non-empty paths or URIs")
        try:
            num_downs_for(self.image_size)
        except ValueError as e:
            raise cfgmod.ConfigError(f"image_size: {e}") from None
        for key in ("ngf", "ndf", "d_layers", "epochs", "batch_size", "checkpoint_every"):
            r(key, getattr(self, key), 1)
        for key in ("sample_sketches", "sample_conditions", "eval_batch_size", "eval_every", "sample_every"):  # fmt: skip
            r(key, getattr(self, key), 1)
        r("d_layers", self.d_layers, 1, num_downs_for(self.image_size) - 2)
        r("dropout", self.dropout, 0, 1, high_open=True)
        for key in ("lambda_adv", "lambda_l1"):  # NaN/inf pass: step 1 stops with a clear error
            r(key, getattr(self, key), 0, finite=False)
        r("lr_g", self.lr_g, 0, 1, low_open=True)
        r("lr_d", self.lr_d, 0, 1, low_open=True)
        r("beta1", self.beta1, 0, 1, high_open=True)
        r("beta2", self.beta2, 0, 1, high_open=True)
        r("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        r("augment", self.augment, 0, 1)
        r("memory_limit_gb", self.memory_limit_gb, 0)
        r("loader_workers", self.loader_workers, 0, 64)
        r("stream_window", self.stream_window, 1)
        r("lr_decay_start", self.lr_decay_start, 0, self.epochs, high_open=True)
        if self.layers and self.output == "raw":
            raise cfgmod.ConfigError("output=raw: a colour-layer generator (layers: true) has no raw picture; use output=composite")  # fmt: skip


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stops (the last checkpoint is intact)."""


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """pix2pix 'linear' policy: constant, then linear decay to 0 over the remaining epochs."""

    def f(epochs_done: int) -> float:
        if cfg.lr_decay_start is None:
            return 1.0
        return 1.0 - max(0, epochs_done - cfg.lr_decay_start) / float(
            cfg.epochs - cfg.lr_decay_start + 1
        )

    return f


# ---- networks and one optimisation step ----------------------------------------------------------
def build_networks(cfg: TrainConfig, vocab: ConditionVocab, cuda: bool, init: tuple | None = None):
    """Generator, discriminator and their Adam optimisers for a condition vocabulary.

    ``init``: ``(generator state, discriminator state or None)`` to start from (``--init-from``).
    """
    G = generator_for(vocab, cfg.conditioning, cfg.image_size, cfg.ngf, cfg.dropout, cfg.layers)
    D = build_discriminator(cfg.d_conditioning, vocab.num_channels, cfg.ndf, cfg.d_layers)
    if init is not None:
        G.load_state_dict(init[0])
        if init[1] is not None:
            D.load_state_dict(init[1])
    if cuda and cfg.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    adam = {"betas": (cfg.beta1, cfg.beta2)} | ({"fused": True} if cuda else {})
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, **adam)
    return G, D, opt_g, opt_d


def make_step(accelerator: Accelerator, G, D, opt_g, opt_d, cfg: TrainConfig):
    """The pix2pix update on prepared networks: ``step(sketch, target, cond)`` -> loss vector.

    Returns the detached losses (``LOSS_NAMES``) without a device sync.
    """
    d_raw = accelerator.unwrap_model(D)
    gan = GANLoss(cfg.gan_mode).to(accelerator.device)

    def painted(sketch: torch.Tensor, target: torch.Tensor, cond: torch.Tensor):
        """G's picture (the composite, for a colour-layer G) and the layer's own L1 terms."""
        y = G(sketch, cond)
        if not cfg.layers:
            return y, 0.0
        s255, t255 = (sketch.float() + 1) * 127.5, (target.float() + 1) * 127.5
        colour, coverage = (y[:, :3].float() + 1) * 127.5, (y[:, 3:4].float() + 1) / 2
        fake = composite(colour, coverage, s255) / 127.5 - 1  # what a user gets
        with torch.no_grad():  # the colours under the lines, and where paint goes
            flat, cov_t = layer_targets(s255, t255)
        under = F.l1_loss(y[:, :3].float() * cov_t, (flat / 127.5 - 1) * cov_t)
        return fake, under + F.l1_loss(coverage, cov_t)

    def step(sketch: torch.Tensor, target: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        with accelerator.autocast():
            fake, layer_l1 = painted(sketch, target, cond)
            # D: real -> 1, fake -> 0; two passes as pix2pix (own BatchNorm statistics each),
            # gradients accumulated locally and synchronised once.
            set_requires_grad(d_raw, True)
            opt_d.zero_grad(set_to_none=True)
            with accelerator.no_sync(D):
                d_fake = gan(D(torch.cat([fake.detach(), sketch], 1), cond), False)
                accelerator.backward(0.5 * d_fake)
            d_real = gan(D(torch.cat([target, sketch], 1), cond), True)
            accelerator.backward(0.5 * d_real)
            opt_d.step()
            # G: fool D (through the unwrapped D: no gradient sync, D frozen) + stay close in L1
            set_requires_grad(d_raw, False)
            opt_g.zero_grad(set_to_none=True)
            g_adv = gan(d_raw(torch.cat([fake, sketch], 1), cond), True)
            g_l1 = F.l1_loss(fake.float(), target) + layer_l1
            g_total = cfg.lambda_adv * g_adv + cfg.lambda_l1 * g_l1
            accelerator.backward(g_total)
            opt_g.step()
        return torch.stack([g_adv, g_l1, d_real, d_fake, g_total]).detach().float()

    return step


# ---- everything checked before anything is written ---------------------------------------------
@dataclass
class Inputs:
    """A run's checked inputs: its splits, the held-out-style set and the weights to start from."""

    train_ds: PairDataset
    val_ds: PairDataset
    holdout_ds: PairDataset | None
    init: tuple | None  # (generator state, discriminator state or None) for --init-from


@dataclass
class Checked:
    """What :func:`preflight` found: the folder claim, the checkpoint to resume and the inputs."""

    claim: runfolder.Claim
    state: dict | None
    inputs: Inputs


def check_inputs(cfg: TrainConfig, resume_state: dict | None = None) -> Inputs:
    """The dataset (metadata, files, conditions), the held-out-style dataset and the model to
    start from, checked against each other; raises a :class:`colorjob.errors.ColorjobError`."""
    data_dir = storage.local_copy(cfg.data)  # a URI (s3://...) is fetched once per node
    train_ds, val_ds = load_splits(data_dir, cfg.image_size, cfg.val_fraction, cfg.seed, cfg.split)
    if val_ds is None:
        raise DatasetError(
            f"{cfg.data}: no validation split (val_fraction={cfg.val_fraction}, "
            f"{train_ds.metadata['input'].nunique()} sketch(es)); use val_fraction > 0 and at least "
            "2 sketches, or split=pair"
        )
    vocab = train_ds.vocab
    holdout = None
    if cfg.holdout_data:
        holdout = PairDataset(storage.local_copy(cfg.holdout_data), cfg.image_size, vocab)
    if resume_state is not None:
        theirs = ConditionVocab.from_dict(resume_state["conditions"])
        if theirs != vocab:
            raise ModelError(
                f"the checkpoint was trained on other conditions than {cfg.data} has: "
                + "; ".join(theirs.differences(vocab))
            )
    init = None
    if cfg.init_from and resume_state is None:
        init = initial_weights(cfg.init_from, cfg, vocab)
    return Inputs(train_ds, val_ds, holdout, init)


def preflight(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> Checked:
    """Everything a run needs, checked before anything is written or removed: the run folder
    (:func:`colorjob.runfolder.claim`), the checkpoint to resume (readable, complete, the same
    networks), the dataset and the model to start from. Removes nothing."""
    out = Path(cfg.out)
    claim = runfolder.claim(out, resume, overwrite)
    state = None
    if resume:
        state = checkpoint.load(out / "checkpoints")
        checkpoint.check_compatible(cfgmod.to_dict(cfg), state)
    return Checked(claim, state, check_inputs(cfg, state))


def config_for_resume(overrides: dict, config_path: str | None = None) -> TrainConfig:
    """The config a resumed run continues with: the run's own (``OUT/config.yaml``, or its
    checkpoint's) with only ``overrides`` changed; ``OUT`` from the overrides or the config
    file."""
    out = Path(overrides.get("out") or cfgmod.load(TrainConfig, config_path).out)
    if (out / "config.yaml").is_file():
        return cfgmod.load(TrainConfig, out / "config.yaml", overrides | {"out": str(out)})
    state = checkpoint.load(out / "checkpoints")
    return cfgmod.from_dict(
        TrainConfig, cfgmod.merge(state["config"], overrides | {"out": str(out)})
    )


def initial_weights(source: str, cfg: TrainConfig, vocab: ConditionVocab) -> tuple:
    """``(generator state, discriminator state or None)`` to start a run from (``--init-from``):
    an exported model folder (G), or a training checkpoint / run folder (G and D). Its conditions
    and the networks' shapes must be this run's; the error says what differs."""
    src = Path(source)
    if (src / "model.json").is_file() or storage.is_uri(source):
        from colorjob.export import generator_from_weights, read_model

        meta, weights = read_model(source)
        theirs, arch = ConditionVocab.from_dict(meta["conditions"]), {k: meta.get(k) for k in ("image_size", "ngf", "conditioning")} | {"layers": meta.get("out_channels") == 4}  # fmt: skip
        g_state, d_state = generator_from_weights(meta, weights)[0].state_dict(), None
    else:
        if not src.exists():
            raise ModelError(f"--init-from {source} does not exist: give an exported model folder (OUT/best) or a run folder / checkpoint")  # fmt: skip
        state = checkpoint.load(src / "checkpoints" if (src / "checkpoints").is_dir() else src)
        theirs, arch = ConditionVocab.from_dict(state["conditions"]), dict(state["config"])
        g_state, d_state = state["generator"], state["discriminator"]
    if theirs != vocab:
        raise ModelError(
            f"--init-from {source}: it was trained on other conditions than {cfg.data} has: "
            + "; ".join(theirs.differences(vocab))
        )
    keys = ("image_size", "ngf", "conditioning", "layers") + (("ndf", "d_layers", "d_conditioning") if d_state is not None else ())  # fmt: skip
    old = {"conditioning": "concat", "d_conditioning": "concat", "layers": False} | arch
    diff = [
        f"{k} {old.get(k)!r} vs {getattr(cfg, k)!r}" for k in keys if old.get(k) != getattr(cfg, k)
    ]
    if diff:
        raise ModelError(
            f"--init-from {source}: its networks differ from this run's ({'; '.join(diff)})"
        )
    return g_state, d_state


# ---- one run -------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Everything a training run holds between epochs."""

    cfg: TrainConfig
    accelerator: Accelerator
    vocab: ConditionVocab
    train_set: DeviceSet | None  # None when streaming: batches come from the loader
    val_set: DeviceSet | None  # None when streaming: validated a chunk of sketches at a time
    val_ds: PairDataset
    val_masks: list | None
    grid: dict
    nets: dict  # generator, discriminator (unwrapped), opt_g, opt_d, sched_g, sched_d
    loader: torch.utils.data.DataLoader
    sampler: EpochSampler
    step: Callable
    writer: checkpoint.Writer = field(default_factory=checkpoint.Writer)
    start: int = 1
    parent: str = ""  # the tag of the run whose checkpoint this one continues (PBT), until logged
    holdout_set: DeviceSet | None = None
    holdout_ds: PairDataset | None = None
    holdout_masks: list | None = None
    samples_per_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_l1": math.inf, "epoch": 0})
    best_state: dict | None = None  # the best epoch's generator (a CPU snapshot, main process)
    best_samples: bytes | None = None  # its sample grid (PNG)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def streams(cfg: TrainConfig, *splits: PairDataset) -> bool:
    """Whether to stream from files: as asked, or (auto) when the decoded images would take more
    than ``memory_limit_gb``."""
    if cfg.data_mode != "auto":
        return cfg.data_mode == "stream"
    files = set()
    for ds in splits:
        files |= set(ds.metadata["input"]) | set(ds.metadata["output"])
    return len(files) * cfg.image_size**2 * 3 > cfg.memory_limit_gb * 1e9


def training_source(cfg: TrainConfig, ds: PairDataset, accelerator: Accelerator, stream: bool):
    """``(device set or None, loader, sampler or None, samples per epoch per process)``.

    In memory: the split on the device, batches of indices from a seeded sampler, sharded by
    Accelerate. Streamed: :class:`colorjob.data.StreamedPairs` decoding in DataLoader workers,
    sharded by process itself.
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    if stream:
        pairs = StreamedPairs(ds, cfg.batch_size, cfg.seed, cfg.stream_window, rank, world)
        loader = torch.utils.data.DataLoader(
            pairs, batch_size=None, num_workers=cfg.loader_workers,
            persistent_workers=False, prefetch_factor=4 if cfg.loader_workers else None,
        )  # fmt: skip
        return None, loader, pairs, pairs.pairs_per_epoch()
    sampler = EpochSampler(len(ds), cfg.seed)
    # Several processes: only full batches, so the shards are disjoint (Accelerate would repeat
    # samples to even out the last batch) and every process takes the same number of steps.
    loader = torch.utils.data.DataLoader(
        list(range(len(ds))), batch_size=cfg.batch_size, sampler=sampler, drop_last=world > 1
    )
    loader = accelerator.prepare(loader)
    per_epoch = len(ds) if world == 1 else len(loader) * cfg.batch_size
    return DeviceSet(ds, accelerator.device), loader, sampler, per_epoch


def _first_sketches(ds: PairDataset, n: int) -> PairDataset:
    """The rows of a split's first ``n`` sketches (what the sample grid shows when streaming)."""
    keep = pd.unique(ds.metadata["input"])[:n]
    rows = np.flatnonzero(ds.metadata["input"].isin(keep).to_numpy())
    return PairDataset(ds.root, ds.image_size, ds.vocab, rows=rows, metadata=ds.metadata)


def setup(cfg: TrainConfig, accelerator: Accelerator, checked: Checked) -> TrainState:
    """Data, networks, optimisers and (when resuming) their restored state."""
    state, inputs = checked.state, checked.inputs
    if state is not None and accelerator.is_main_process:
        changed = _changes(state["config"], cfgmod.to_dict(cfg))
        if changed:
            log.info(f"resuming with changes: {'; '.join(changed)}")
    set_seed(cfg.seed)
    train_ds, val_ds, holdout_ds = inputs.train_ds, inputs.val_ds, inputs.holdout_ds
    vocab = train_ds.vocab
    cuda = accelerator.device.type == "cuda"
    G, D, opt_g, opt_d = build_networks(cfg, vocab, cuda, inputs.init)
    stream = streams(cfg, train_ds, val_ds)
    G, D, opt_g, opt_d = accelerator.prepare(G, D, opt_g, opt_d)
    train_set, loader, sampler, per_epoch = training_source(cfg, train_ds, accelerator, stream)
    nets = {
        "generator": accelerator.unwrap_model(G), "discriminator": accelerator.unwrap_model(D),
        "opt_g": opt_g, "opt_d": opt_d,
        "sched_g": torch.optim.lr_scheduler.LambdaLR(opt_g, lr_factor(cfg)),
        "sched_d": torch.optim.lr_scheduler.LambdaLR(opt_d, lr_factor(cfg)),
    }  # fmt: skip
    device = accelerator.device
    val_set = None if stream else DeviceSet(val_ds, device)
    shown = val_set if val_set is not None else DeviceSet(_first_sketches(val_ds, cfg.sample_sketches), device)  # fmt: skip
    run = TrainState(
        cfg, accelerator, vocab, train_set, val_set, val_ds, None if stream else region_masks(val_ds),
        sample_grid(shown, cfg.sample_sketches, cfg.sample_conditions), nets, loader, sampler,
        make_step(accelerator, G, D, opt_g, opt_d, cfg), samples_per_epoch=per_epoch,
    )  # fmt: skip
    if holdout_ds is not None:
        run.holdout_ds = holdout_ds
        if not stream:
            run.holdout_set, run.holdout_masks = (
                DeviceSet(holdout_ds, device),
                region_masks(holdout_ds),
            )
    if state is not None:
        run.start, run.history, run.best = checkpoint.restore(state, nets)
        set_learning_rates(run)
        if run.history and run.history[-1].get("tag", "") not in ("", cfg.tag):
            run.parent = run.history[-1]["tag"]
        if run.is_main:
            run.best_state = checkpoint.best_generator(state)
            run.best_samples = checkpoint.best_samples(state)
            runfolder.ensure_best(state, run.out)  # best/ as the checkpoint knows it
    if run.is_main:
        (run.out / "samples").mkdir(parents=True, exist_ok=True)
        (run.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        with storage.replacing(run.out / "config.yaml") as tmp:
            tmp.write_text(cfgmod.dump(cfg))
        n = accelerator.num_processes
        log.info(
            f"colorjob.train: {len(train_ds)} train / {len(val_ds)} val pairs "
            f"({train_ds.metadata['input'].nunique()} / {val_ds.metadata['input'].nunique()} sketches, "
            f"split by {cfg.split}), {cfg.image_size}px, {'streamed from files' if stream else 'held decoded'}, "
            f"conditions {vocab}, device {device}"
            f"{f' x{n}' if n > 1 else ''}, precision {cfg.mixed_precision}, "
            f"epochs {run.start}..{cfg.epochs}"
        )
    if cfg.log_with != "none":
        hparams = {k: v for k, v in cfgmod.to_dict(cfg).items() if isinstance(v, int | float | str)}
        accelerator.init_trackers("tensorboard", config=hparams)
    return run


def set_learning_rates(run: TrainState) -> None:
    """This config's learning rates, not the checkpoint's: a resumed run keeps its own, and a PBT
    trial that took over another's checkpoint continues with its newly chosen rates."""
    cfg, factor = run.cfg, lr_factor(run.cfg)
    for opt, sched, lr in (("opt_g", "sched_g", cfg.lr_g), ("opt_d", "sched_d", cfg.lr_d)):
        run.nets[sched].base_lrs = [lr]
        for group in run.nets[opt].param_groups:
            group["lr"] = lr * factor(run.nets[sched].last_epoch)


def train_epoch(run: TrainState, epoch: int) -> tuple[list[float], float]:
    """One pass over the training split; returns the mean losses and the seconds it took."""
    cfg, t0 = run.cfg, time.perf_counter()
    set_seed(epoch_seed(cfg.seed, epoch), device_specific=True)  # dropout and flips replay
    if hasattr(run.loader, "set_epoch"):  # Accelerate's loader counts epochs itself: align it
        run.loader.set_epoch(epoch)
    run.sampler.set_epoch(epoch)  # the index sampler, or the streamed pairs' epoch
    for net in (run.nets["generator"], run.nets["discriminator"]):
        net.train()
    channels_last = run.accelerator.device.type == "cuda" and cfg.channels_last
    losses: list[torch.Tensor] = []
    checked = 0
    bar = tqdm(
        run.loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
        disable=not (run.is_main and sys.stderr.isatty()),
    )  # fmt: skip
    seen = []
    for item in bar:
        if run.train_set is not None:  # indices into the split on the device
            batch = run.train_set.batch(item, cfg.flip, channels_last, cfg.augment)
            seen.append(item)
        else:  # decoded uint8 batches streamed from files
            sketch, target, conds, rows = (
                t.to(run.accelerator.device, non_blocking=True) for t in item
            )
            batch = (*training_batch(sketch, target, cfg.flip, channels_last, cfg.augment), run.vocab.vectors(conds).to(sketch.device))  # fmt: skip
            seen.append(rows)
        losses.append(run.step(*batch))
        if len(losses) - checked >= 25:
            checked = _check_finite(losses, checked, epoch, cfg, bar)
    _check_finite(losses, checked, epoch, cfg, bar)
    if cfg.shard_log:
        rows = torch.cat(seen).tolist() if seen else []
        path = Path(cfg.shard_log) / f"epoch{epoch:03d}-rank{run.accelerator.process_index}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows))
    run.nets["sched_g"].step(), run.nets["sched_d"].step()
    mean = run.accelerator.reduce(torch.stack(losses).mean(0), reduction="mean")  # one sync
    return mean.tolist(), time.perf_counter() - t0


def evaluate_split(run: TrainState, held: DeviceSet | None, ds: PairDataset, masks) -> dict:
    """Validation metrics of a split: from the device, or streamed a chunk at a time."""
    g, bs, out = run.nets["generator"], run.cfg.eval_batch_size, run.cfg.output
    if held is not None:
        return validate(g, held, masks, bs, output=out)
    return validate_streamed(g, ds, bs, output=out)


def due(every: int, epoch: int, last: int) -> bool:
    return epoch % every == 0 or epoch == last


def end_epoch(run: TrainState, epoch: int, row: dict, t0: float) -> Path | None:
    """Samples, best export, checkpoint, metrics.csv and loss.png of one epoch (main process).

    A new best exports the generator (``best/``) and is kept as a snapshot, so every later
    checkpoint carries it; the full state (G, D, optimisers: what resume needs) is written only
    every ``checkpoint_every`` epochs, at ``checkpoint_at`` and at the end, by a background
    thread. Returns the checkpoint folder when this epoch saved one.
    """
    cfg, out, g = run.cfg, run.out, run.nets["generator"]
    is_best = row["val_l1"] is not None and row["val_l1"] < run.best["val_l1"]
    if is_best:
        run.best = {"val_l1": row["val_l1"], "epoch": epoch}
    drawn = due(cfg.sample_every, epoch, cfg.epochs)
    saved = None
    if run.is_main:
        sample_png = None
        if drawn or is_best:
            sample_png = save_samples(g, run.grid, run.vocab, out / "samples" / f"epoch_{epoch:03d}.png", cfg.eval_batch_size, output=cfg.output)  # fmt: skip
        if is_best:
            run.best_state = checkpoint.snapshot(g.state_dict())
            run.best_samples = Path(sample_png).read_bytes()
            export_generator(
                g, run.vocab, out / "best", metrics=row, config=cfgmod.to_dict(cfg),
                samples=sample_png, schedule=runfolder.schedule([*run.history, row], epoch),
            )  # fmt: skip
        row["seconds"] = time.perf_counter() - t0  # final: the checkpoint's row is the same
        if due(cfg.checkpoint_every, epoch, cfg.epochs) or epoch in cfg.checkpoint_at:
            state = checkpoint.capture(
                epoch, run.nets, cfgmod.to_dict(cfg), run.vocab.to_dict(), run.history + [row],
                run.best, run.best_state, run.best_samples,
            )  # fmt: skip
            best = out / "checkpoints" / checkpoint.BEST if run.best["epoch"] == epoch else None
            run.writer.submit(state, out / "checkpoints" / checkpoint.LAST, also=best)
            saved = out / "checkpoints"
    row.setdefault("seconds", time.perf_counter() - t0)
    run.history.append(row)
    if run.is_main:
        runfolder.write_metrics(run.history, out / "metrics.csv")
        if drawn:
            runfolder.plot_loss(run.history, out / "loss.png")
        log.info(_summary(row, cfg.epochs, is_best))
    if cfg.log_with != "none":
        run.accelerator.log(
            {k: v for k, v in row.items() if isinstance(v, int | float)}, step=epoch
        )
    return saved


def _summary(row: dict, epochs: int, is_best: bool) -> str:
    val = ""
    if row["val_l1"] is not None:
        fid = "n/a" if row["val_fidelity"] is None else f"{row['val_fidelity']:.3f}"
        val = f"  |  val L1 {row['val_l1']:.4f} PSNR {row['val_psnr']:.2f} fidelity {fid}"
    return (
        f"epoch {row['epoch']:3d}/{epochs}  G adv {row['g_adv']:.3f} L1 {row['g_l1']:.4f}  "
        f"D real {row['d_real']:.3f} fake {row['d_fake']:.3f}{val}  |  "
        f"{row['samples_per_s']:.0f} samples/s {row['seconds']:.1f}s{'  *best' if is_best else ''}"
    )


def train(
    cfg: TrainConfig,
    resume: bool = False,
    report: Callable[[dict, Path | None], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Run (or resume) a training run; returns a summary dict (best epoch, its metrics, paths).

    ``resume``: continue from ``OUT/checkpoints/last.pt``. Without it the run folder must be
    empty or new, unless ``overwrite`` (start over: only the run's own files are removed, and
    only once every check has passed). ``report(metrics, checkpoint_dir)`` is called after every
    validated epoch (a search trial passes one; ``checkpoint_dir`` is None on epochs that saved
    no checkpoint).
    """
    kwargs = {"log_with": "tensorboard", "project_dir": cfg.out} if cfg.log_with != "none" else {}
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, **kwargs)
    checked = preflight(cfg, resume, overwrite)  # on every process, before anything is removed
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        runfolder.clear(checked.claim)
        runfolder.remove_stale_temporaries(Path(cfg.out))
    accelerator.wait_for_everyone()
    run = setup(cfg, accelerator, checked)
    del checked  # the checkpoint's tensors are in the networks now
    if run.start > cfg.epochs:
        log.info(f"already trained {run.start - 1} epochs (>= epochs={cfg.epochs}): nothing to do")
    try:
        for epoch in range(run.start, cfg.epochs + 1):
            run_epoch(run, epoch, report)
    finally:
        run.writer.wait()  # even when interrupted: no half-written checkpoint is left behind
    run.accelerator.wait_for_everyone()
    if cfg.log_with != "none":
        run.accelerator.end_training()
    best_row = next((h for h in run.history if h["epoch"] == run.best["epoch"]), None)
    return {
        "out": str(run.out), "best_epoch": run.best["epoch"], "best_val_l1": run.best["val_l1"],
        "best": best_row, "epochs": run.history[-1]["epoch"] if run.history else 0,
        "history": run.history,
    }  # fmt: skip


def run_epoch(run: TrainState, epoch: int, report) -> None:
    """Train, validate, record and report one epoch."""
    cfg, t0 = run.cfg, time.perf_counter()
    losses, train_seconds = train_epoch(run, epoch)
    evaluated = due(cfg.eval_every, epoch, cfg.epochs)
    val = dict.fromkeys(("val_l1", "val_psnr", "val_fidelity"))
    if evaluated:
        val = evaluate_split(run, run.val_set, run.val_ds, run.val_masks)
        if run.holdout_ds is not None:
            held = evaluate_split(run, run.holdout_set, run.holdout_ds, run.holdout_masks)
            val |= {
                "holdout_" + k.removeprefix("val_"): v for k, v in held.items() if k != "val_psnr"
            }
    opt_g, opt_d = run.nets["opt_g"], run.nets["opt_d"]
    row = {
        "epoch": epoch, **dict(zip(("g_adv", "g_l1", "d_real", "d_fake"), losses[:4], strict=True)),
        **val, "lr_g": opt_g.param_groups[0]["lr"], "lr_d": opt_d.param_groups[0]["lr"],
        "lambda_l1": cfg.lambda_l1, "lambda_adv": cfg.lambda_adv, "tag": cfg.tag, "parent": run.parent,
        "samples_per_s": run.samples_per_epoch / train_seconds, "train_seconds": train_seconds,
    }  # fmt: skip
    run.parent = ""
    saved = end_epoch(run, epoch, row, t0)
    if report is not None and evaluated:
        if saved is not None:
            run.writer.wait()  # the reported checkpoint must be on disk
        report(dict(row), saved)


def _check_finite(losses: list[torch.Tensor], start: int, epoch: int, cfg: TrainConfig, bar) -> int:
    """Look at the step losses since ``start`` (one device sync); raise on the first non-finite."""
    if start >= len(losses):
        return start
    recent = torch.stack(losses[start:])
    ok = torch.isfinite(recent).all(dim=1).cpu()
    if not ok.all():
        step = start + int((~ok).nonzero()[0]) + 1
        vals = dict(zip(LOSS_NAMES, recent[step - start - 1].tolist(), strict=True))
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch}, step {step}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in vals.items())
            + f" (lr_g={cfg.lr_g}, lr_d={cfg.lr_d}, lambda_l1={cfg.lambda_l1}, lambda_adv={cfg.lambda_adv}); "
            "lower the learning rates or use mixed_precision=no; the last checkpoint is unchanged"
        )
    last = recent.mean(0).tolist()
    bar.set_postfix(g_l1=f"{last[1]:.4f}", d=f"{(last[2] + last[3]) / 2:.3f}")
    return len(losses)


def _changes(old: dict, new: dict) -> list[str]:
    return [f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]


if __name__ == "__main__":  # python -m colorjob.train: the command, run from the real module
    from colorjob.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
