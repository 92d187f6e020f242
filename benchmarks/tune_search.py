"""Three searches on the same data and budget: random, TPE + ASHA, Population Based Training;
and how well an early epoch's score ranks trials as their final score does.

    python benchmarks/tune_search.py                      # 24 trials x 12 epochs, 3 search seeds
    python benchmarks/tune_search.py --repeats 1 --trials 4 --epochs 3    # a smoke run

- random search: ``--trials`` trials of ``--epochs`` epochs, no early stopping;
- TPE + ASHA as shipped (``configs/tune.yaml``: its grace period and reduction factor), the same
  number of trials, ASHA stopping the weak ones, early-stopped trials told to Optuna as pruned;
- the same with ``--asha-candidate`` (grace period, reduction factor; default 3,2: the setting
  shipped until this benchmark measured grace 1 / factor 3 beside it), side by side;
- PBT: a population of ``--trials`` trials of ``--epochs`` epochs (the same trial-epochs as
  random), synchronous, exploiting and exploring every ``--pbt-interval`` epochs.

2 concurrent trials on 2 CPUs; each trial may be retried once from its checkpoint. For each
search seed, random search's final best val L1 is the target; reported: (a) trial-epochs (in
report order across trials) until any trial of a method reached it, (b) each method's best val
L1 once it has spent as many trial-epochs as the method that spent the fewest, and at its end,
(c) the condition fidelity of each method's best model, (d) errored trials.

Rank correlation: in each random search (no trial stopped), the Spearman correlation between the
trials' val L1 at epoch e and their final val L1, for every e; ASHA can only stop the right
trials at a rung where it is high. Budget-to-target curves (best val L1 so far against
trial-epochs spent, mean and range over the seeds) are drawn to ``--plot``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from colorjob import config as cfgmod
from colorjob import synth
from colorjob.cluster import connect
from colorjob.tune import TuneConfig, build_tuner, milestones, prepare_data

ROOT = Path(__file__).resolve().parents[1]


def in_order(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Every report of a search in report order, with ``spent`` (trial-epochs so far) and
    ``best_so_far``."""
    reports = pd.concat(frames).sort_values("reported_at").reset_index(drop=True)
    reports["spent"] = range(1, len(reports) + 1)
    reports["best_so_far"] = reports["val_l1"].cummin()
    return reports


def search(cfg: TuneConfig) -> tuple[pd.DataFrame, int]:
    """Run one search: its reports (:func:`in_order`) and how many trials errored."""
    results = build_tuner(prepare_data(cfg)).fit()
    frames = [r.metrics_dataframe for r in results if r.metrics_dataframe is not None]
    return in_order(frames), sum(r.error is not None for r in results)


DONE = "benchmark-done.json"  # written once a search has finished: what a rerun reads back


def finished_search(exp: Path) -> tuple[pd.DataFrame, int] | None:
    """A search this benchmark finished before (``DONE`` in its experiment folder), read back
    from every trial's ``result.json``; None if there is none."""
    import json

    if not (exp / DONE).is_file():
        return None
    frames = []
    for result in exp.glob("*/result.json"):
        rows = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        if rows:
            frames.append(pd.DataFrame(rows))
    return in_order(frames), json.loads((exp / DONE).read_text())["errored"]


def shipped_asha() -> dict:
    import yaml

    s = yaml.safe_load((ROOT / "configs" / "tune.yaml").read_text(encoding="utf-8"))["scheduler"]
    return {"asha": True, "grace_period": s["grace_period"], "reduction_factor": s["reduction_factor"]}  # fmt: skip


def methods(a) -> dict:
    """Method name -> its searcher, scheduler and experiment folder (``slug``-SEED)."""

    def tpe(asha: dict) -> dict:  # the folder names the ASHA settings: a rerun reads back its own
        slug = f"tpe-g{asha['grace_period']}f{asha['reduction_factor']:g}"
        return {"slug": slug, "searcher": "optuna", "scheduler": asha}

    shipped = shipped_asha()
    found = {
        "random search": {"slug": "random", "searcher": "random", "scheduler": {"asha": False}},
        f"TPE + ASHA {shipped['grace_period']}/{shipped['reduction_factor']:g} (shipped)": tpe(
            shipped
        ),
    }
    if a.asha_candidate != "none":
        grace, factor = (float(x) for x in a.asha_candidate.split(","))
        candidate = {"asha": True, "grace_period": int(grace), "reduction_factor": factor}
        if (candidate["grace_period"], factor) != (shipped["grace_period"], float(shipped["reduction_factor"])):  # fmt: skip
            found[f"TPE + ASHA {int(grace)}/{factor:g}"] = tpe(candidate)
    found["PBT"] = {
        "slug": "pbt", "searcher": "random",
        "scheduler": {"pbt": {"perturbation_interval": a.pbt_interval, "quantile_fraction": 0.25}},
    }  # fmt: skip
    return found


def rank_correlation(reports: pd.DataFrame, epochs: int) -> pd.Series:
    """Spearman correlation, over the trials that ran every epoch, between the val L1 at each
    epoch and the final one."""
    by_epoch = reports.pivot_table(index="trial_id", columns="epoch", values="val_l1")
    full = by_epoch.dropna()
    final = full[epochs]
    return pd.Series(
        {e: full[e].corr(final, method="spearman") for e in full.columns if e < epochs},
        name="spearman",
    )


def plot_curves(
    curves: dict, methods_: list[str], seeds: list[int], path: Path, title: str
) -> None:
    """Best val L1 so far against trial-epochs: mean over seeds, the range shaded; random
    search's final best (mean) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    longest = max(len(r) for r in curves.values())
    x = np.arange(1, longest + 1)
    for name in methods_:  # (past a method's last trial-epoch its curve is empty: not drawn)
        ys = []
        for s in seeds:
            b = curves[(name, s)].set_index("spent")["best_so_far"]
            ys.append(b.reindex(x).ffill().where(x <= b.index.max()).to_numpy())
        ys = np.array(ys, dtype=float)
        with warnings.catch_warnings():  # those empty columns, here only
            warnings.filterwarnings("ignore", "Mean of empty slice|All-NaN slice", RuntimeWarning)
            mean, low, high = (f(ys, axis=0) for f in (np.nanmean, np.nanmin, np.nanmax))
        line = ax.plot(x, mean, label=name)[0]
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
    target = np.mean([curves[("random search", s)]["val_l1"].min() for s in seeds])
    ax.axhline(target, ls="--", color="grey", lw=1, label="random search's final best (mean)")
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel("best validation L1 so far")
    ax.set_title(title, fontsize=9)
    lo = min(np.nanmin(r["best_so_far"]) for r in curves.values())
    first = np.median([r["best_so_far"].iloc[min(10, len(r) - 1)] for r in curves.values()])
    ax.set_ylim(lo - 0.1 * (first - lo), first)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--pbt-interval", type=int, default=3, help="PBT: epochs between perturbations")
    p.add_argument(
        "--asha-candidate", default="3,2", metavar="GRACE,FACTOR",
        help="also run TPE + ASHA with this grace period and reduction factor beside the shipped "
        "one (default 3,2: the setting shipped before the rank correlation was measured); "
        "'none' to skip",
    )  # fmt: skip
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--sketches", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="data seed and first search seed")
    p.add_argument("--repeats", type=int, default=3, help="search seeds")
    p.add_argument("--plot", default=str(ROOT / "docs" / "images" / "search_budget.png"))
    p.add_argument(
        "--workdir",
        help="keep data and experiments here; a rerun with the same "
        "arguments reads back the searches that finished and runs only the rest",
    )
    a = p.parse_args()
    tmp = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="colorjob-search-"))
    data = tmp / "data"
    if not (data / "metadata.csv").is_file():
        data = synth.generate(data, a.sketches, seed=a.seed, size=a.image_size)
    connect(log_to_driver=False, num_cpus=2)
    rows, curves, correlations = [], {}, {}
    seeds = [a.seed + rep for rep in range(a.repeats)]
    t0 = time.perf_counter()
    for seed in seeds:
        for name, m in methods(a).items():
            cfg = cfgmod.from_dict(
                TuneConfig,
                {
                    "name": f"{m['slug']}-{seed}", "storage_path": str(tmp / "results"),
                    "num_samples": a.trials, "max_concurrent_trials": 2, "resources": {"cpu": 1},
                    "searcher": m["searcher"], "seed": seed, "scheduler": m["scheduler"], "max_failures": 1,
                    "train": {"data": str(data), "image_size": a.image_size, "ngf": a.ngf, "ndf": a.ngf,
                              "epochs": a.epochs, "batch_size": 8, "checkpoint_every": a.epochs,
                              "sample_every": a.epochs, "seed": a.seed},
                },
            )  # fmt: skip
            t = time.perf_counter()
            done = finished_search(Path(cfg.storage_path) / cfg.name)
            if done is None:
                done = search(cfg)
                (Path(cfg.storage_path) / cfg.name / DONE).write_text(f'{{"errored": {done[1]}}}')
            curves[(name, seed)], errored = done
            r = curves[(name, seed)]
            print(f"[{time.perf_counter() - t0:.0f}s] {name}, seed {seed}: {len(r)} trial-epochs, best {r['val_l1'].min():.4f}, "
                  f"{errored} errored, {time.perf_counter() - t:.0f}s", flush=True)  # fmt: skip
            rows.append({"method": name, "search seed": seed, "errored trials": errored})
        correlations[seed] = rank_correlation(curves[("random search", seed)], a.epochs)
    target_rows = []
    for seed in seeds:
        target = curves[("random search", seed)]["val_l1"].min()
        budget = min(len(curves[(n, seed)]) for n in methods(a))
        for name in methods(a):
            r = curves[(name, seed)]
            hit = r.index[r["val_l1"] <= target]
            best = r.loc[r["val_l1"].idxmin()]
            target_rows.append({
                "method": name, "search seed": seed, "trial-epochs": len(r),
                "to random's best": int(r.loc[hit[0], "spent"]) if len(hit) else None,
                "best at equal trial-epochs": r.loc[budget - 1, "best_so_far"],
                "best val L1": best["val_l1"], "its fidelity": best.get("val_fidelity"),
            })  # fmt: skip
    table = pd.DataFrame(target_rows).merge(pd.DataFrame(rows), on=["method", "search seed"])
    asha = shipped_asha()
    rungs = milestones(cfgmod.from_dict(TuneConfig, {"scheduler": asha, "train": {"epochs": a.epochs}}))  # fmt: skip
    print(f"\n{a.sketches} characters at {a.image_size} px, ngf {a.ngf}; {a.trials} trials x {a.epochs} epochs "
          f"per method; ASHA grace {asha['grace_period']} / factor {asha['reduction_factor']} (rungs at epochs {rungs}); "
          f"PBT every {a.pbt_interval} epochs; 2 concurrent trials; {time.perf_counter() - t0:.0f} s in all")  # fmt: skip
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    mean = table.groupby("method", sort=False)[["trial-epochs", "to random's best", "best at equal trial-epochs", "best val L1", "its fidelity", "errored trials"]].mean()  # fmt: skip
    print("\nmean over search seeds (to random's best: over the seeds that got there):")
    print(mean.to_string(float_format=lambda v: f"{v:.4f}"))
    base = table[table["method"] == "random search"].set_index("search seed")
    for name in [n for n in methods(a) if n != "random search"]:
        mine = table[table["method"] == name].set_index("search seed")
        ratios = (mine["to random's best"] / base["to random's best"]).fillna(float("inf"))
        wins = int((mine["best at equal trial-epochs"] < base["best at equal trial-epochs"]).sum())
        shown = " / ".join("never" if r == float("inf") else f"{r:.2f}x" for r in ratios)
        print(f"{name}: {shown} random search's trial-epochs to its final best (per seed; mean "
              f"{ratios.mean():.2f}x, goal <= 0.5x); lower best at equal trial-epochs on {wins}/{len(seeds)} seeds")  # fmt: skip
    corr = pd.DataFrame(correlations)
    corr["mean"] = corr.mean(axis=1)
    corr.index.name = "epoch"
    print(f"\nSpearman rank correlation of val L1 at an epoch with the final val L1 (random search, trials that ran all {a.epochs} epochs):")  # fmt: skip
    print(corr.T.to_string(float_format=lambda v: f"{v:.2f}"))
    plot_curves(curves, list(methods(a)), seeds, Path(a.plot),
                f"{a.trials} trials x {a.epochs} epochs per method, {a.image_size} px, {len(seeds)} search seeds (mean, range shaded)")  # fmt: skip
    print(f"\ncurves: {a.plot}")


if __name__ == "__main__":
    main()
