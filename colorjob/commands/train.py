"""``colorjob train``: one training run (one process, ``accelerate launch``, or Ray Train workers)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from colorjob import cli
from colorjob.train import NonFiniteLossError, TrainConfig, config_for_resume, train

log = logging.getLogger("colorjob.train")


def build_parser(prog: str = "colorjob train"):
    p = cli.parser(
        prog,
        "Train the conditional sketch-colorization GAN (pix2pix U-Net + PatchGAN) on a dataset "
        "folder in the seed's format. Writes metrics.csv, samples/, loss.png, checkpoints/, "
        "config.yaml and the exported best generator (best/) to --out.",
        "Config: a YAML file of TrainConfig keys (configs/train.yaml = the seed's settings, "
        "configs/cpu.yaml = a small profile for a laptop CPU); flags and --set override it. "
        "Example: colorjob train --config configs/cpu.yaml --data data/chars-64 --out runs/cpu",
    )
    cli.flag(p, "--data", "data", help="dataset folder with metadata.csv (make one: colorjob synth)")  # fmt: skip
    cli.flag(p, "--out", "out", help="output folder for this run")
    cli.flag(p, "--epochs", "epochs", type=int, help="total epochs; with --resume, a larger value extends a finished run")  # fmt: skip
    cli.flag(p, "--image-size", "image_size", type=int, help="square image side, a power of two >= 32 (seed: 256)")  # fmt: skip
    cli.flag(p, "--batch-size", "batch_size", type=int, help="samples per step")
    cli.flag(p, "--seed", "seed", type=int, help="seed for the split, initialisation, shuffling and dropout")  # fmt: skip
    cli.flag(p, "--mixed-precision", "mixed_precision", choices=["no", "bf16", "fp16"], help="bf16 on recent GPUs is fastest")  # fmt: skip
    cli.flag(p, "--init-from", "init_from", help="start from an exported model (G) or a training checkpoint / run folder (G and D): fine-tuning")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="train on this many Ray Train workers (data parallel; on the Ray cluster there is, or a local one)")  # fmt: skip
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="with --workers: CPUs (torch threads) per worker")  # fmt: skip
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="with --workers: GPUs per worker")  # fmt: skip
    what = p.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint, with the run's own config (OUT/config.yaml) and what this command line changes")  # fmt: skip
    what.add_argument("--overwrite", action="store_true", help="start over in a folder that holds an earlier run: only what a run writes there is removed (config.yaml, metrics.csv, loss.png, samples/, checkpoints/, best/, tensorboard/, .ray-train/), after every check has passed; other files stay")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="check the install: 1 epoch on a tiny generated dataset, then exit")  # fmt: skip
    return p


def command(args) -> int:
    if args.dry_run:
        return dry_run()
    if args.workers < 1:
        raise cli.cfgmod.ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.resume:
        cfg = config_for_resume(cli.overrides(args), args.config)
    else:
        cfg = cli.load(TrainConfig, args)
    if args.workers > 1:
        from colorjob.distributed import train_on_ray

        train_on_ray(cfg, args.workers, args.cpus_per_worker, args.gpus_per_worker, args.resume, args.overwrite)  # fmt: skip
        return 0
    try:
        summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except NonFiniteLossError as e:
        log.error(str(e))
        return 1
    from accelerate import PartialState

    if not PartialState().is_main_process:  # one summary, not one per process
        return 0
    if summary["best"]:
        b = summary["best"]
        fid = "n/a" if b["val_fidelity"] is None else f"{b['val_fidelity']:.3f}"
        log.info(f"best epoch {summary['best_epoch']}: val L1 {b['val_l1']:.4f}, fidelity {fid}")
    log.info(f"exported generator: {Path(cfg.out) / 'best'}")
    return 0


def dry_run() -> int:
    """One epoch on a tiny generated dataset: the install works end to end."""
    from colorjob import synth

    with tempfile.TemporaryDirectory() as tmp:
        data = synth.generate(Path(tmp) / "data", sketches=3, seed=0, size=32, workers=1)
        cfg = TrainConfig(
            data=str(data), out=str(Path(tmp) / "run"), image_size=32, ngf=8, ndf=8, epochs=1,
            batch_size=4, val_fraction=0.34,
        )  # fmt: skip
        s = train(cfg)
        log.info(f"dry run ok: 1 epoch, val L1 {s['best_val_l1']:.4f}")
    return 0
