"""``colorjob tune``: a hyper-parameter search on Ray Tune (a private local Ray, or a cluster)."""

from __future__ import annotations

from colorjob import cli
from colorjob.tune import TuneConfig, search


def build_parser(prog: str = "colorjob tune"):
    p = cli.parser(
        prog,
        "Search learning rates and loss weights of the colorization GAN with Ray Tune (Optuna TPE "
        "+ ASHA early stopping, or Population Based Training). Each trial is one training run. "
        "Writes <storage>/<name>/trials.csv, trials.png and the best generator to "
        "<storage>/<name>/best/.",
        "Runs on a private local Ray, or on a cluster under: ray job submit --working-dir . -- "
        "python jobs/tune.py --config configs/tune.yaml. Nested keys: --set train.batch_size=16 "
        "--set resources.gpu=0.25",
    )
    cli.flag(p, "--data", "train.data", help="dataset folder or URI (overrides train.data)")
    cli.flag(p, "--storage-path", "storage_path", help="where results go: a folder or s3:// URI")
    cli.flag(p, "--name", "name", help="experiment name (a folder under the storage path)")
    cli.flag(p, "--num-samples", "num_samples", type=int, help="number of trials")
    cli.flag(p, "--epochs", "train.epochs", type=int, help="epochs per trial (ASHA's max_t)")
    cli.flag(p, "--image-size", "train.image_size", type=int, help="training image size")
    p.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted experiment (same --storage-path/--name, same search)",
    )  # fmt: skip
    p.add_argument(
        "--force", action="store_true",
        help="with --resume: continue even though the search differs from the experiment's",
    )  # fmt: skip
    return p


def command(args) -> int:
    best = search(cli.load(TuneConfig, args), resume=args.resume, force=args.force)
    return 0 if best is not None else 1
