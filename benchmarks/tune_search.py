"""TPE + ASHA vs random search vs the seed's default config, at an equal budget of trial-epochs.

    python benchmarks/tune_search.py [--trials 8] [--epochs 10] [--image-size 32] [--ngf 16]

1. The seed's defaults (lr 2e-4 / 2e-4, lambda_l1 100, lambda_adv 1) trained for --epochs: its best
   val_l1 is the target.
2. Random search: --trials trials of --epochs each, no early stopping.
3. Optuna TPE (seeded, starting from the defaults) + ASHA: the same number of trials.
For each search: best val_l1, trial-epochs spent, and trial-epochs spent (in report order across
trials) until a trial first reached the target. Runs on a local Ray on the CPU profile's data.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import ray

from colorjob import config as cfgmod
from colorjob import synth
from colorjob.train import TrainConfig, train
from colorjob.tune import TuneConfig, build_tuner, prepare_data


def search(cfg: TuneConfig) -> pd.DataFrame:
    results = build_tuner(prepare_data(cfg)).fit()
    frames = [
        r.metrics_dataframe.assign(trial=i)
        for i, r in enumerate(results)
        if r.metrics_dataframe is not None
    ]
    return pd.concat(frames).sort_values("reported_at").reset_index(drop=True)


def to_target(reports: pd.DataFrame, target: float) -> int | None:
    hit = (reports["val_l1"] <= target).to_numpy().nonzero()[0]
    return int(hit[0]) + 1 if len(hit) else None


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--sketches", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="data seed and first search seed")
    p.add_argument("--repeats", type=int, default=3, help="search seeds to average over")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="colorjob-bench-"))
    data = synth.generate(tmp / "data", a.sketches, seed=a.seed, size=a.image_size)
    base = TrainConfig(
        data=str(data), out=str(tmp / "default"), image_size=a.image_size, ngf=a.ngf, ndf=a.ngf,
        epochs=a.epochs, batch_size=8, checkpoint_every=a.epochs, seed=a.seed,
    )  # fmt: skip
    default = train(base)
    target = default["best_val_l1"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    for rep in range(a.repeats):
        seed = a.seed + rep
        for name, searcher, asha in (
            ("random search", "random", False),
            ("TPE + ASHA", "optuna", True),
        ):
            cfg = cfgmod.from_dict(
                TuneConfig,
                {
                    "name": f"{searcher}-{seed}", "storage_path": str(tmp / "results"),
                    "num_samples": a.trials, "max_concurrent_trials": 2, "resources": {"cpu": 1},
                    "searcher": searcher, "seed": seed,
                    "scheduler": {"asha": asha, "grace_period": 2, "reduction_factor": 2},
                    "train": cfgmod.to_dict(base) | {"checkpoint_every": a.epochs},
                },
            )  # fmt: skip
            reports = search(cfg)
            rows.append(
                {
                    "method": name, "search seed": seed, "trial_epochs": len(reports),
                    "best_val_l1": reports["val_l1"].min(), "epochs_to_default": to_target(reports, target),
                }
            )  # fmt: skip
    ray.shutdown()
    table = pd.DataFrame(rows)
    print(
        f"\n{a.trials} trials x up to {a.epochs} epochs, {a.image_size}px, ngf {a.ngf}, {a.sketches} sketches"
    )
    print(f"seed defaults alone: best val_l1 {target:.4f} after {a.epochs} epochs (the target)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    mean = table.groupby("method")[["trial_epochs", "best_val_l1", "epochs_to_default"]].mean()
    print(
        "\nmean over search seeds (epochs_to_default: trial-epochs, in report order, until a trial"
    )
    print("first matched the defaults' best val_l1):")
    print(mean.to_string(float_format=lambda v: f"{v:.4f}"))
    if mean["epochs_to_default"].notna().all():
        r = (
            mean.loc["TPE + ASHA", "epochs_to_default"]
            / mean.loc["random search", "epochs_to_default"]
        )
        print(
            f"TPE+ASHA / random search trial-epochs to the defaults' val_l1: {r:.2f}x (goal <= 0.5x)"
        )


if __name__ == "__main__":
    main()
