"""How the conditions enter the networks: the seed's input planes vs a FiLM-modulated decoder.

    python benchmarks/conditioning.py                    # 64 and 128 px, 3 seeds (~20 min, 2 cores)
    python benchmarks/conditioning.py --sizes 64 --seeds 1 --epochs 2 --sketches 4   # a smoke run

Arms, at equal epochs, widths and data:

- ``concat``: the seed's networks (condition planes at the input of G and D);
- ``film``: the condition modulates the normalisation of every decoder block (D as the seed's);
- ``film+proj``: ``film`` and a projection discriminator.

Data: synthetic characters in five drawing families (classic, bold, fine, minimal, busy), split by
sketch; and a sixth family (chibi: other proportions) never trained on. For each run, at its best
validation epoch: val L1, condition fidelity on held-out characters, and L1 / fidelity on the
held-out family.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from colorjob import synth
from colorjob.train import TrainConfig, train

ARMS = {
    "concat": ("concat", "concat"),
    "film": ("film", "concat"),
    "film+proj": ("film", "projection"),
}
TRAIN_FAMILIES = ("classic", "bold", "fine", "minimal", "busy")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="64,128")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--sketches", type=int, default=12)
    p.add_argument("--ngf", type=int, default=0, help="width (default: 32 at 64 px, 16 at 128 px)")
    p.add_argument("--arms", default=",".join(ARMS))
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="colorjob-cond-"))
    rows = []
    for size in (int(s) for s in a.sizes.split(",")):
        data = synth.generate(
            tmp / f"data-{size}", a.sketches, seed=100, size=size, families=TRAIN_FAMILIES
        )
        held = synth.generate(tmp / f"chibi-{size}", max(2, a.sketches // 3), seed=200, size=size, families=("chibi",))  # fmt: skip
        ngf = a.ngf or (32 if size <= 64 else 16)
        for seed in range(a.seeds):
            for arm in a.arms.split(","):
                g, d = ARMS[arm]
                cfg = TrainConfig(
                    data=str(data), out=str(tmp / f"run-{size}-{arm}-{seed}"), image_size=size, ngf=ngf,
                    ndf=ngf, epochs=a.epochs, batch_size=8, seed=seed, conditioning=g, d_conditioning=d,
                    holdout_data=str(held), checkpoint_every=a.epochs,
                )  # fmt: skip
                best = train(cfg)["best"]
                rows.append({
                    "size": size, "arm": arm, "seed": seed, "val_l1": best["val_l1"],
                    "fidelity": best["val_fidelity"], "holdout_l1": best["holdout_l1"],
                    "holdout_fidelity": best["holdout_fidelity"], "best_epoch": best["epoch"],
                })  # fmt: skip
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    fmt = {"float_format": lambda v: f"{v:.4f}"}
    print(f"\n{a.epochs} epochs, {a.sketches} characters in families {', '.join(TRAIN_FAMILIES)}; held-out family: chibi")  # fmt: skip
    print(table.to_string(index=False, **fmt))
    print("\nmean over seeds:")
    print(table.groupby(["size", "arm"])[["val_l1", "fidelity", "holdout_l1", "holdout_fidelity"]].mean().to_string(**fmt))  # fmt: skip
    for size, t in table.groupby("size"):
        base = t[t["arm"] == "concat"].set_index("seed")
        for arm in t["arm"].unique():
            if arm == "concat":
                continue
            other = t[t["arm"] == arm].set_index("seed")
            wins = (other["fidelity"] > base["fidelity"]).sum()
            ties = (other["fidelity"] == base["fidelity"]).sum()
            l1 = (other["val_l1"] <= base["val_l1"] * 1.02).sum()  # "without losing L1": within 2 %
            print(f"{size}px {arm} vs concat: fidelity higher on {wins}/{len(base)} seeds (equal on {ties}), "
                  f"val L1 no worse (within 2 %) on {l1}/{len(base)}")  # fmt: skip


if __name__ == "__main__":
    main()
