"""Three searches on the same data and budget: random, TPE + ASHA, Population Based Training.

    python benchmarks/tune_search.py                     # 3 search seeds (~30 min on 2 cores)
    python benchmarks/tune_search.py --repeats 1 --trials 4 --epochs 2    # a smoke run

- random search: ``--trials`` trials of ``--epochs`` epochs, no early stopping;
- TPE + ASHA (as shipped in configs/tune.yaml): the same number of trials, ASHA stopping the weak
  ones, early-stopped trials told to Optuna as pruned;
- PBT: a population of ``--trials / 2`` trials trained twice as long (the same trial-epochs),
  exploiting and exploring every 2 epochs.

2 concurrent trials on 2 CPUs. For each search seed, random search's final best val L1 is the
target; reported: (a) trial-epochs (in report order across trials) until any trial of a method
reached it, (b) each method's best val L1 once it has spent as many trial-epochs as the method
that spent the fewest, and at its end, (c) the condition fidelity of each method's best model.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from colorjob import config as cfgmod
from colorjob import synth
from colorjob.cluster import connect
from colorjob.tune import TuneConfig, build_tuner, prepare_data


def search(cfg: TuneConfig) -> pd.DataFrame:
    results = build_tuner(prepare_data(cfg)).fit()
    frames = [r.metrics_dataframe for r in results if r.metrics_dataframe is not None]
    reports = pd.concat(frames).sort_values("reported_at").reset_index(drop=True)
    reports["spent"] = range(1, len(reports) + 1)  # trial-epochs so far
    reports["best_so_far"] = reports["val_l1"].cummin()
    return reports


def methods(a) -> dict:
    half = max(2, a.trials // 2)
    return {
        "random search": {
            "searcher": "random",
            "num_samples": a.trials,
            "scheduler": {"asha": False},
            "epochs": a.epochs,
        },  # fmt: skip
        "TPE + ASHA": {
            "searcher": "optuna",
            "num_samples": a.trials,
            "scheduler": {"asha": True, "grace_period": 2, "reduction_factor": 2},
            "epochs": a.epochs,
        },  # fmt: skip
        "PBT": {
            "searcher": "random",
            "num_samples": half,
            "scheduler": {"pbt": {"perturbation_interval": 2, "quantile_fraction": 0.5}},
            "epochs": a.epochs * a.trials // half,
        },  # fmt: skip
    }


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
    p.add_argument("--repeats", type=int, default=3, help="search seeds")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="colorjob-search-"))
    data = synth.generate(tmp / "data", a.sketches, seed=a.seed, size=a.image_size)
    connect(log_to_driver=False, num_cpus=2)
    rows, curves = [], {}
    for rep in range(a.repeats):
        seed = a.seed + rep
        for name, m in methods(a).items():
            cfg = cfgmod.from_dict(
                TuneConfig,
                {
                    "name": f"{name.split()[0].lower()}-{seed}", "storage_path": str(tmp / "results"),
                    "num_samples": m["num_samples"], "max_concurrent_trials": 2, "resources": {"cpu": 1},
                    "searcher": m["searcher"], "seed": seed, "scheduler": m["scheduler"], "max_failures": 0,
                    "train": {"data": str(data), "image_size": a.image_size, "ngf": a.ngf, "ndf": a.ngf,
                              "epochs": m["epochs"], "batch_size": 8, "checkpoint_every": 2, "seed": a.seed},
                },
            )  # fmt: skip
            curves[(name, seed)] = search(cfg)
        target = curves[("random search", seed)]["val_l1"].min()
        budget = min(len(curves[(n, seed)]) for n in methods(a))
        for name in methods(a):
            r = curves[(name, seed)]
            hit = r.index[r["val_l1"] <= target]
            best = r.loc[r["val_l1"].idxmin()]
            rows.append({
                "method": name, "search seed": seed, "trial-epochs": len(r),
                "to random's best": int(r.loc[hit[0], "spent"]) if len(hit) else None,
                f"best at {budget} trial-epochs": r.loc[budget - 1, "best_so_far"],
                "best val L1": best["val_l1"], "its fidelity": best.get("val_fidelity"),
            })  # fmt: skip
    table = pd.DataFrame(rows)
    budget_col = [c for c in table.columns if c.startswith("best at")]
    table["best at equal trial-epochs"] = table[budget_col].bfill(axis=1).iloc[:, 0]
    table = table.drop(columns=budget_col)
    print(f"\n{a.sketches} characters at {a.image_size} px, ngf {a.ngf}; {a.trials} trials x {a.epochs} epochs "
          f"(PBT: {max(2, a.trials // 2)} x {a.epochs * a.trials // max(2, a.trials // 2)}); 2 concurrent trials")  # fmt: skip
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    mean = table.groupby("method", sort=False)[["trial-epochs", "to random's best", "best at equal trial-epochs", "best val L1", "its fidelity"]].mean()  # fmt: skip
    print("\nmean over search seeds:")
    print(mean.to_string(float_format=lambda v: f"{v:.4f}"))
    base = mean.loc["random search", "to random's best"]
    for name in ("TPE + ASHA", "PBT"):
        ratio = mean.loc[name, "to random's best"] / base
        wins = sum(
            table[(table["method"] == name) & (table["search seed"] == s)]["best at equal trial-epochs"].item()
            < table[(table["method"] == "random search") & (table["search seed"] == s)]["best at equal trial-epochs"].item()
            for s in table["search seed"].unique()
        )  # fmt: skip
        print(f"{name}: {ratio:.2f}x random search's trial-epochs to its final best (goal <= 0.5x); "
              f"lower best at equal trial-epochs on {wins}/{table['search seed'].nunique()} seeds")  # fmt: skip


if __name__ == "__main__":
    main()
