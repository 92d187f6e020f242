"""Train the conditional GAN: one function, one config, one checkpoint dict.

    python -m colorjob.train --config configs/cpu.yaml --data data/chars-64 --out runs/cpu
    python -m colorjob.train --config configs/cpu.yaml --out runs/cpu --resume --epochs 30

:func:`train` runs a whole training run from a :class:`TrainConfig`. The command line, a Ray Tune
trial (``colorjob.tune``: it passes a ``report`` callback) and the tests all call it; nothing here
knows about Ray. Accelerate runs the same loop on a CPU, one GPU, or several GPUs under
``accelerate launch -m colorjob.train ...``.

Objective (pix2pix): D sees (image, sketch, condition planes) and learns real vs fake; G minimises
``lambda_adv * adversarial + lambda_l1 * L1``. The decoded dataset is small (the seed: 250 pairs),
so it is kept on the device as uint8 and batches are gathered there: a GPU never waits on PNG
decoding.

Every epoch writes ``OUT/metrics.csv`` (losses and validation L1 / PSNR / condition fidelity on
held-out sketches), ``OUT/samples/epoch_NNN.png`` (validation sketches x conditions),
``OUT/loss.png``, ``OUT/checkpoints/last.pt`` (and ``best.pt`` by validation L1), and exports the
best generator to ``OUT/best/`` (see :mod:`colorjob.export`).
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from colorjob import config as cfgmod
from colorjob import storage
from colorjob.conditions import ConditionVocab
from colorjob.data import DatasetError, PairDataset, load_splits, to_uint8, to_unit
from colorjob.export import ModelError, export_generator
from colorjob.metrics import fidelity_hits, l1, psnr
from colorjob.models import Discriminator, GANLoss, Generator, set_requires_grad
from colorjob.plots import plot_curves, save_grid

CHECKPOINT_FORMAT = "colorjob.checkpoint"
METRIC_COLUMNS = [
    "epoch", "g_adv", "g_l1", "d_real", "d_fake", "val_l1", "val_psnr", "val_fidelity",
    "lr_g", "lr_d", "samples_per_s", "seconds",
]  # fmt: skip
# Config keys that shape the networks or the data: a checkpoint only resumes under the same ones.
ARCHITECTURE_KEYS = ("image_size", "ngf", "ndf", "d_layers")


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults are the seed's settings."""

    data: str = "data/chars"  # dataset folder (metadata.csv + images), see colorjob.data
    out: str = "runs/train"  # where metrics, samples, checkpoints and best/ go
    # networks
    image_size: int = 256  # square side; the U-Net depth follows (256 -> 8 blocks)
    ngf: int = 64  # generator base width
    ndf: int = 64  # discriminator base width
    d_layers: int = 3  # PatchGAN layers (3 = 70x70 receptive field)
    dropout: float = 0.5  # in the generator's middle decoder blocks
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
    seed: int = 0
    # machinery
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    channels_last: bool = True  # on CUDA
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always saves)
    sample_sketches: int = 4  # rows of the per-epoch sample grid
    sample_conditions: int = 5  # generated columns of the sample grid
    eval_batch_size: int = 64


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stops (the last checkpoint is intact)."""


# ---- schedule and sampling ---------------------------------------------------------------------
def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """pix2pix 'linear' policy: constant, then linear decay to 0 over the remaining epochs."""

    def f(epochs_done: int) -> float:
        if cfg.lr_decay_start is None:
            return 1.0
        return 1.0 - max(0, epochs_done - cfg.lr_decay_start) / float(
            cfg.epochs - cfg.lr_decay_start + 1
        )

    return f


class EpochSampler(torch.utils.data.Sampler):
    """A permutation that depends only on (seed, epoch): resuming at epoch k replays epoch k."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class DeviceSet:
    """A split's decoded images as uint8 tensors on the device; batches are gathered by index."""

    def __init__(self, ds: PairDataset, device: torch.device):
        t = ds.tensors()
        self.sketches = t["sketches"].to(device)
        self.sketch_index = t["sketch_index"].to(device)
        self.targets = t["targets"].to(device)
        self.conditions = t["conditions"].to(device)
        self.onehot = ds.vocab.one_hot(self.conditions)  # (N, C) once, not per step
        self.vocab, self.size = ds.vocab, ds.image_size

    def __len__(self) -> int:
        return self.targets.shape[0]

    def batch(self, idx: torch.Tensor, flip: bool = False, channels_last: bool = False):
        sketch = to_unit(self.sketches[self.sketch_index[idx]])
        target = to_unit(self.targets[idx])
        if flip:
            f = (torch.rand(idx.shape[0], device=idx.device) < 0.5)[:, None, None, None]
            sketch, target = (
                torch.where(f, sketch.flip(-1), sketch),
                torch.where(f, target.flip(-1), target),
            )
        planes = self.onehot[idx][:, :, None, None].expand(-1, -1, self.size, self.size)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return sketch.contiguous(memory_format=fmt), target.contiguous(memory_format=fmt), planes


# ---- checkpoints -------------------------------------------------------------------------------
def _save_atomic(obj: dict, path: Path) -> None:
    with storage.replacing(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, loaded without unpickling arbitrary objects."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: nothing to resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a colorjob training checkpoint")
    return state


# ---- one optimisation step ----------------------------------------------------------------------
LOSS_NAMES = ["g_adv", "g_l1", "d_real", "d_fake", "g_total"]


def make_step(accelerator: Accelerator, G, D, opt_g, opt_d, cfg: TrainConfig):
    """The pix2pix update on prepared networks: ``step(sketch, target, planes)`` -> loss vector.

    Returns the detached losses (``LOSS_NAMES``) without a device sync.
    """
    d_raw = accelerator.unwrap_model(D)
    gan = GANLoss(cfg.gan_mode).to(accelerator.device)

    def step(sketch: torch.Tensor, target: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
        with accelerator.autocast():
            fake = G(torch.cat([sketch, planes], 1))
            # D: real -> 1, fake -> 0; two passes as pix2pix (own BatchNorm statistics each),
            # gradients accumulated locally and synchronised once.
            set_requires_grad(d_raw, True)
            opt_d.zero_grad(set_to_none=True)
            with accelerator.no_sync(D):
                d_fake = gan(D(torch.cat([fake.detach(), sketch, planes], 1)), False)
                accelerator.backward(0.5 * d_fake)
            d_real = gan(D(torch.cat([target, sketch, planes], 1)), True)
            accelerator.backward(0.5 * d_real)
            opt_d.step()
            # G: fool D (through the unwrapped D: no gradient sync, D frozen) + stay close in L1
            set_requires_grad(d_raw, False)
            opt_g.zero_grad(set_to_none=True)
            g_adv = gan(d_raw(torch.cat([fake, sketch, planes], 1)), True)
            g_l1 = F.l1_loss(fake.float(), target)
            g_total = cfg.lambda_adv * g_adv + cfg.lambda_l1 * g_l1
            accelerator.backward(g_total)
            opt_g.step()
        return torch.stack([g_adv, g_l1, d_real, d_fake, g_total]).detach().float()

    return step


def build_networks(cfg: TrainConfig, n_conditions: int, cuda: bool):
    """Generator, discriminator and their Adam optimisers for ``n_conditions`` one-hot planes."""
    G = Generator(3 + n_conditions, 3, cfg.image_size, cfg.ngf, cfg.dropout)
    D = Discriminator(6 + n_conditions, cfg.ndf, cfg.d_layers)
    if cuda and cfg.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    adam = {"betas": (cfg.beta1, cfg.beta2)} | ({"fused": True} if cuda else {})
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, **adam)
    return G, D, opt_g, opt_d


# ---- one run -----------------------------------------------------------------------------------
def train(
    cfg: TrainConfig,
    resume: bool | str | Path = False,
    report: Callable[[dict, Path | None], None] | None = None,
) -> dict:
    """Run (or resume) a training run; returns a summary dict (best epoch, its metrics, paths).

    ``resume``: True resumes from ``OUT/checkpoints/last.pt``; a path resumes from that file (or
    directory). ``report(metrics, checkpoint_dir)`` is called after every epoch (Ray Tune passes
    one; ``checkpoint_dir`` is None on epochs that saved no checkpoint).
    """
    _check(cfg)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    device = accelerator.device
    cuda = device.type == "cuda"
    main = accelerator.is_main_process
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"

    state = None
    if resume:
        state = load_checkpoint(ckpt_dir if resume is True else resume)
        _check_compatible(cfg, state)
    set_seed(cfg.seed)
    data_dir = storage.local_copy(cfg.data)  # a URI (s3://...) is fetched once per node
    train_ds, val_ds = load_splits(data_dir, cfg.image_size, cfg.val_fraction, cfg.seed, cfg.split)
    if val_ds is None:
        raise DatasetError(
            f"{cfg.data}: no validation split (val_fraction={cfg.val_fraction}, "
            f"{train_ds.metadata['input'].nunique()} sketch(es)); use val_fraction > 0 and at least "
            "2 sketches, or split=pair"
        )
    vocab = train_ds.vocab
    if state is not None and ConditionVocab.from_dict(state["conditions"]) != vocab:
        raise ModelError(
            f"the checkpoint was trained on conditions {ConditionVocab.from_dict(state['conditions'])} "
            f"but {cfg.data} has {vocab}"
        )

    G, D, opt_g, opt_d = build_networks(cfg, vocab.num_channels, cuda)
    if state is not None:
        G.load_state_dict(state["generator"])
        D.load_state_dict(state["discriminator"])
    sampler = EpochSampler(len(train_ds), cfg.seed)
    loader = torch.utils.data.DataLoader(
        list(range(len(train_ds))), batch_size=cfg.batch_size, sampler=sampler
    )
    G, D, opt_g, opt_d, loader = accelerator.prepare(G, D, opt_g, opt_d, loader)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lr_factor(cfg))
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, lr_factor(cfg))
    history: list[dict] = []
    best = {"val_l1": math.inf, "epoch": 0}
    start = 1
    if state is not None:
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        sched_g.load_state_dict(state["sched_g"])
        sched_d.load_state_dict(state["sched_d"])
        torch.set_rng_state(state["rng"]["torch"])
        if cuda and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        history = [h for h in state["history"] if h["epoch"] <= state["epoch"]]
        best = dict(state["best"])
        start = state["epoch"] + 1
    g_raw, d_raw = accelerator.unwrap_model(G), accelerator.unwrap_model(D)
    step = make_step(accelerator, G, D, opt_g, opt_d, cfg)
    train_set, val_set = DeviceSet(train_ds, device), DeviceSet(val_ds, device)
    val_masks = _masks(val_ds)
    grid = _sample_grid(val_set, cfg)
    cl = cuda and cfg.channels_last

    if main:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        accelerator.print(
            f"colorjob.train: {len(train_ds)} train / {len(val_ds)} val pairs "
            f"({train_ds.metadata['input'].nunique()} / {val_ds.metadata['input'].nunique()} sketches, "
            f"split by {cfg.split}), {cfg.image_size}px, conditions {vocab}, device {device}"
            f"{f' x{accelerator.num_processes}' if accelerator.num_processes > 1 else ''}, "
            f"precision {cfg.mixed_precision}, epochs {start}..{cfg.epochs}"
        )
    if start > cfg.epochs:
        accelerator.print(
            f"already trained {start - 1} epochs (>= epochs={cfg.epochs}): nothing to do"
        )

    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        set_seed(
            cfg.seed * 1000 + epoch, device_specific=True
        )  # dropout and flips replay on resume
        if hasattr(loader, "set_epoch"):  # Accelerate's loader counts epochs itself: align it
            loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        G.train(), D.train()
        losses: list[torch.Tensor] = []
        checked = 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=not (main and sys.stderr.isatty()),
        )
        for idx in bar:
            sketch, target, planes = train_set.batch(idx, flip=cfg.flip, channels_last=cl)
            losses.append(step(sketch, target, planes))
            if len(losses) - checked >= 25:
                checked = _check_finite(losses, checked, epoch, cfg, bar)
        _check_finite(losses, checked, epoch, cfg, bar)
        sched_g.step(), sched_d.step()
        train_seconds = time.perf_counter() - t0

        mean = accelerator.reduce(
            torch.stack(losses).mean(0), reduction="mean"
        ).tolist()  # one sync
        val = _validate(g_raw, val_set, val_masks, cfg, cl)
        row = {
            "epoch": epoch, "g_adv": mean[0], "g_l1": mean[1], "d_real": mean[2], "d_fake": mean[3], **val,
            "lr_g": opt_g.param_groups[0]["lr"], "lr_d": opt_d.param_groups[0]["lr"],
            "samples_per_s": len(train_ds) / train_seconds,
        }  # fmt: skip
        is_best = val["val_l1"] < best["val_l1"]
        if is_best:
            best = {"val_l1": val["val_l1"], "epoch": epoch}
        saved = None
        if main:
            sample_png = out / "samples" / f"epoch_{epoch:03d}.png"
            _samples(g_raw, grid, cfg, cl, sample_png)
            if is_best:
                export_generator(
                    g_raw,
                    vocab,
                    out / "best",
                    metrics=row,
                    config=cfgmod.to_dict(cfg),
                    samples=sample_png,
                )
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs or is_best:
                row["seconds"] = time.perf_counter() - t0
                history_now = history + [row]
                _save_atomic(
                    {
                        "format": CHECKPOINT_FORMAT, "version": 1, "epoch": epoch,
                        "generator": g_raw.state_dict(), "discriminator": d_raw.state_dict(),
                        "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                        "sched_g": sched_g.state_dict(), "sched_d": sched_d.state_dict(),
                        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []},
                        "config": cfgmod.to_dict(cfg), "conditions": vocab.to_dict(),
                        "history": history_now, "best": best,
                    },
                    ckpt_dir / "last.pt",
                )  # fmt: skip
                if is_best:
                    with storage.replacing(ckpt_dir / "best.pt") as tmp:
                        shutil.copyfile(ckpt_dir / "last.pt", tmp)
                saved = ckpt_dir
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if main:
            _write_metrics(history, out / "metrics.csv")
            plot_curves(
                history, out / "loss.png",
                [("generator", ["g_adv", "g_l1"]), ("discriminator", ["d_real", "d_fake"]), ("validation L1", ["val_l1"])],
            )  # fmt: skip
            fid = "n/a" if row["val_fidelity"] is None else f"{row['val_fidelity']:.3f}"
            accelerator.print(
                f"epoch {epoch:3d}/{cfg.epochs}  G adv {row['g_adv']:.3f} L1 {row['g_l1']:.4f}  "
                f"D real {row['d_real']:.3f} fake {row['d_fake']:.3f}  |  val L1 {row['val_l1']:.4f} "
                f"PSNR {row['val_psnr']:.2f} fidelity {fid}  |  {row['samples_per_s']:.0f} samples/s "
                f"{row['seconds']:.1f}s{'  *best' if is_best else ''}"
            )
        if report is not None:
            report(dict(row), saved)
    accelerator.wait_for_everyone()
    best_row = next((h for h in history if h["epoch"] == best["epoch"]), None)
    return {
        "out": str(out), "best_epoch": best["epoch"], "best_val_l1": best["val_l1"], "best": best_row,
        "epochs": history[-1]["epoch"] if history else 0, "history": history,
    }  # fmt: skip


# ---- pieces of the loop ------------------------------------------------------------------------
def _check(cfg: TrainConfig) -> None:
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise cfgmod.ConfigError("epochs and batch_size must be at least 1")
    if cfg.lr_decay_start is not None and not 0 <= cfg.lr_decay_start < cfg.epochs:
        raise cfgmod.ConfigError(
            f"lr_decay_start must be in [0, epochs={cfg.epochs}), got {cfg.lr_decay_start}"
        )
    if not 0 < cfg.val_fraction < 1:
        raise cfgmod.ConfigError(f"val_fraction must be in (0, 1), got {cfg.val_fraction}")


def _check_compatible(cfg: TrainConfig, state: dict) -> None:
    old = state["config"]
    diff = [
        f"{k}: checkpoint {old.get(k)} vs now {getattr(cfg, k)}"
        for k in ARCHITECTURE_KEYS
        if old.get(k) != getattr(cfg, k)
    ]
    if diff:
        raise ModelError(
            "cannot resume: the networks differ from the checkpoint's (" + "; ".join(diff) + ")"
        )


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


def _masks(ds: PairDataset) -> list[dict] | None:
    """Per validation row: attribute -> region mask; None when any mask or colour is missing."""
    if any(c is None for a in ds.vocab.attributes for c in a.colors) or not ds.has_masks():
        return None
    return [{a: ds.mask(s, a) for a in ds.vocab.names} for s in ds.metadata["input"]]


@torch.inference_mode()
def _generate(g: Generator, sketch, planes, cfg: TrainConfig, cl: bool) -> torch.Tensor:
    was = g.training
    g.eval()
    outs = []
    for i in range(0, sketch.shape[0], cfg.eval_batch_size):
        x = torch.cat([sketch[i : i + cfg.eval_batch_size], planes[i : i + cfg.eval_batch_size]], 1)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            x.device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"
        ):
            outs.append(g(x).float())
    g.train(was)
    return torch.cat(outs)


def _validate(g, val: DeviceSet, masks, cfg: TrainConfig, cl: bool) -> dict:
    idx = torch.arange(len(val), device=val.targets.device)
    sketch, target, planes = val.batch(idx)
    fake = _generate(g, sketch, planes, cfg, cl)
    fidelity = None
    if masks is not None:
        hits = fidelity_hits(to_uint8(fake).cpu(), val.conditions.cpu(), masks, val.vocab)
        fidelity = hits.float().mean().item()
    return {
        "val_l1": l1(fake, target).mean().item(),
        "val_psnr": psnr(fake, target).mean().item(),
        "val_fidelity": fidelity,
    }


def _sample_grid(val: DeviceSet, cfg: TrainConfig) -> dict:
    """Fixed (sketch, condition) pairs for the per-epoch picture: sketches down, conditions across."""
    n_sk = min(cfg.sample_sketches, val.sketches.shape[0])
    conds = torch.unique(val.conditions, dim=0)
    pick = (
        torch.linspace(0, conds.shape[0] - 1, min(cfg.sample_conditions, conds.shape[0]))
        .round()
        .long()
    )
    conds = conds[pick]
    sk = val.sketches[:n_sk].repeat_interleave(conds.shape[0], 0)
    planes = val.vocab.planes(conds.repeat(n_sk, 1), val.size)
    return {
        "sketches": val.sketches[:n_sk],
        "sketch": to_unit(sk),
        "planes": planes,
        "ncol": conds.shape[0] + 1,
    }


def _samples(g, grid: dict, cfg: TrainConfig, cl: bool, path: Path) -> None:
    fake = to_uint8(_generate(g, grid["sketch"], grid["planes"], cfg, cl))
    k = grid["ncol"] - 1
    rows = [
        torch.cat([grid["sketches"][i : i + 1].to(fake.device), fake[i * k : (i + 1) * k]])
        for i in range(grid["sketches"].shape[0])
    ]
    save_grid(torch.cat(rows), path, ncol=grid["ncol"])


def _write_metrics(history: list[dict], path: Path) -> None:
    with storage.replacing(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        w.writeheader()
        for h in history:
            w.writerow({k: ("" if h.get(k) is None else h[k]) for k in METRIC_COLUMNS})


# ---- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m colorjob.train",
        description="Train the conditional sketch-colorization GAN (pix2pix U-Net + PatchGAN) on a "
        "dataset folder in the seed's format. Writes metrics.csv, samples/, loss.png, checkpoints/ "
        "and the exported best generator (best/) to --out.",
        epilog="Config: a YAML file of TrainConfig keys (configs/train.yaml = the seed's settings, "
        "configs/cpu.yaml = a small profile for a laptop CPU); flags and --set override it. "
        "Example: python -m colorjob.train --config configs/cpu.yaml --data data/chars-64 --out runs/cpu",
    )
    p.add_argument("--config", help="YAML config file (default: built-in seed settings)")
    p.add_argument(
        "--data", help="dataset folder with metadata.csv (make one: python -m colorjob.synth)"
    )
    p.add_argument("--out", help="output folder for this run")
    p.add_argument(
        "--epochs",
        type=int,
        help="total epochs; with --resume, a larger value extends a finished run",
    )
    p.add_argument(
        "--image-size", type=int, help="square image side, a power of two >= 32 (seed: 256)"
    )
    p.add_argument("--batch-size", type=int, help="samples per step")
    p.add_argument(
        "--seed", type=int, help="seed for the split, initialisation, shuffling and dropout"
    )
    p.add_argument(
        "--mixed-precision", choices=["no", "bf16", "fp16"], help="bf16 on recent GPUs is fastest"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoints/last.pt with the run's own config",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set lambda_l1=50 --set gan_mode=lsgan (repeatable)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the install: 1 epoch on a tiny generated dataset, then exit",
    )
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    flags = {
        "data": args.data, "out": args.out, "epochs": args.epochs, "image_size": args.image_size,
        "batch_size": args.batch_size, "seed": args.seed, "mixed_precision": args.mixed_precision,
    }  # fmt: skip
    overrides = cfgmod.cli_overrides(flags, args.set)
    if args.resume:
        # Resume with the run's own config; only what is given on this command line changes.
        out = overrides.get("out") or cfgmod.load(TrainConfig, args.config).out
        state = load_checkpoint(Path(out) / "checkpoints")
        return cfgmod.from_dict(TrainConfig, cfgmod.merge(state["config"], overrides))
    return cfgmod.load(TrainConfig, args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.dry_run:
            return _dry_run(args)
        cfg = config_from_args(args)
        summary = train(cfg, resume=args.resume)
    except (
        cfgmod.ConfigError,
        DatasetError,
        ModelError,
        NonFiniteLossError,
        FileNotFoundError,
        storage.StorageError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, NonFiniteLossError) else 1
    from accelerate import PartialState

    if not PartialState().is_main_process:  # one summary, not one per process
        return 0
    if summary["best"]:
        b = summary["best"]
        fid = "n/a" if b["val_fidelity"] is None else f"{b['val_fidelity']:.3f}"
        print(f"best epoch {summary['best_epoch']}: val L1 {b['val_l1']:.4f}, fidelity {fid}")
    print(f"exported generator: {Path(cfg.out) / 'best'}")
    return 0


def _dry_run(args) -> int:
    from colorjob import synth

    with tempfile.TemporaryDirectory() as tmp:
        data = synth.generate(Path(tmp) / "data", sketches=3, seed=0, size=32, workers=1)
        cfg = TrainConfig(
            data=str(data),
            out=str(Path(tmp) / "run"),
            image_size=32,
            ngf=8,
            ndf=8,
            epochs=1,
            batch_size=4,
            val_fraction=0.34,
        )
        s = train(cfg)
        print(f"dry run ok: 1 epoch, val L1 {s['best_val_l1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
