"""From nothing to coloured characters and a report, on a laptop CPU, in one command.

    python -m colorjob.quickstart [--out runs/quickstart]

1. draws a synthetic dataset at the default model's size, in its drawing styles (figures
   placed anywhere, cut open or closed), half its colourings in named colours, half in any colour,
2. fine-tunes the shipped default generator on it with a small search on a local Ray
   (Optuna TPE + ASHA: learning rates and loss weights, a few epochs per trial),
3. exports the best generator,
4. colours new, never-seen characters (256 px) in every variant of the conditions grid, their
   own lines over the colours, and measures what a person would check, from their masks:
   condition fidelity, the share of hair and shirt pixels in the asked colour, ΔE2000, how much
   of the background changed, how many line pixels were kept,
5. writes ``OUT/report.html``.

About a minute on two CPU cores; ``--tiny`` is a smoke run (32 px, from
scratch: it shows the steps work, not what the default model does).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from colorjob import config as cfgmod
from colorjob import synth

log = logging.getLogger(__name__)

GRID = Path(__file__).resolve().parents[1] / "configs" / "grid.csv"


def _step(n: int, total: int, text: str) -> float:
    log.info(f"\n[{n}/{total}] {text}")
    return time.perf_counter()


def grid_csv(out: Path) -> Path:
    """configs/grid.csv when colorjob runs from its source tree, else the same 25 rows written out."""
    if GRID.is_file():
        return GRID
    path = out / "grid.csv"
    rows = ["hair,shirt"] + [f"{h},{s}" for h in synth.HAIR_COLORS for s in synth.SHIRT_COLORS]
    path.write_text("\n".join(rows) + "\n")
    return path


PRODUCTS = ("data", "search", "new", "colored", "report.html", "report_files")
#: The shipped default's training families (its card); the tiny run draws the classic one.
FAMILIES = ("bold", "fine", "minimal", "busy", "chibi", "icon", "sticker")
#: Fine-tuning a trained model: smaller learning rates than training from scratch.
SEARCH = {
    "lr_g": {"loguniform": [2e-5, 2e-4]},
    "lr_d": {"loguniform": [2e-5, 2e-4]},
    "lambda_l1": {"loguniform": [50.0, 200.0]},
    "lambda_adv": {"uniform": [0.5, 2.0]},
}


def _default_network() -> dict:
    """Training settings that fit the shipped default generator, to start from it."""
    from colorjob.export import DEFAULT_MODEL, read_model_info

    meta = read_model_info(DEFAULT_MODEL)
    made = meta["train_config"]
    keys = ("ndf", "d_layers", "d_conditioning", "dropout", "layers", "output", "lr_g", "lr_d", "lambda_l1", "lambda_adv")  # fmt: skip
    return {k: made[k] for k in keys if k in made} | {
        "image_size": meta["image_size"], "ngf": meta["ngf"], "conditioning": meta["conditioning"],
        "init_from": str(DEFAULT_MODEL), "val_fraction": 0.25,
    }  # fmt: skip


def _tiny_network() -> dict:
    return {"image_size": 32, "ngf": 8, "ndf": 8}


def _data_colours(network: dict) -> str:
    """The colourings to draw: those of the model the search starts from (a model of any colour
    is fine-tuned on named and any-colour colourings, as it was trained)."""
    if "init_from" not in network:
        return "named"
    from colorjob.conditions import ConditionVocab
    from colorjob.export import read_model_info

    vocab = ConditionVocab.from_dict(read_model_info(network["init_from"])["conditions"])
    return "mixed" if any(a.is_colour for a in vocab.attributes) else "named"


def quickstart(out: str | Path, sketches: int = 12, trials: int = 4, epochs: int = 2, tiny: bool = False) -> Path | None:  # fmt: skip
    """The main job, from nothing to a report (see the module's text); returns the report's
    path, or None when no trial finished. ``tiny``: the one-minute smoke run."""
    out = Path(out).absolute()
    earlier = [name for name in PRODUCTS if (out / name).exists()]
    if earlier:  # a quickstart's folder is its own: a second quickstart starts over, and says so
        import shutil

        for name in earlier:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
        log.warning(
            f"starting over in {out}: the earlier quickstart's {', '.join(earlier)} removed"
        )
    out.mkdir(parents=True, exist_ok=True)
    if tiny:
        sketches, trials, epochs = 4, 2, 2
    base = _tiny_network() if tiny else _default_network()
    size, colours = base["image_size"], _data_colours(base)
    families = ("classic",) if tiny else FAMILIES
    t_all = time.perf_counter()

    per = 16 if colours == "mixed" else 25
    t = _step(1, 5, f"drawing {sketches} synthetic characters x {per} colourings ({size} px, {colours} colours)")  # fmt: skip
    data = synth.generate(out / "data", sketches, seed=0, size=size, families=families, colours=colours, colourings_per_sketch=per)  # fmt: skip
    log.info(f"      {data} ({time.perf_counter() - t:.0f}s)")

    how = "from scratch" if tiny else "fine-tuning the shipped default generator"
    t = _step(2, 5, f"searching learning rates and loss weights, {how}: {trials} trials x up to {epochs} epochs on a local Ray")  # fmt: skip
    from colorjob import tune
    from colorjob.cluster import connect

    connect(log_to_driver=False)
    cfg = cfgmod.from_dict(
        tune.TuneConfig,
        {
            "name": "search", "storage_path": str(out), "num_samples": trials, "max_concurrent_trials": 2,
            "resources": {"cpu": 1}, "scheduler": {"asha": True, "grace_period": max(1, epochs // 2), "reduction_factor": 2},
            "search": SEARCH if not tiny else tune.TuneConfig().search,
            "train": base | {"data": str(data), "epochs": epochs, "batch_size": 8, "checkpoint_every": epochs},
        },
    )  # fmt: skip
    best = tune.search(cfg)
    if best is None:
        log.error("no trial finished; see the log above")
        return None
    log.info(f"      best generator: {best} ({time.perf_counter() - t:.0f}s)")

    t = _step(3, 5, "drawing 4 new characters the model has never seen (256 px)")
    new = synth.generate(out / "new", 4, seed=1234, size=256, families=families, colours=colours, colourings_per_sketch=4)  # fmt: skip

    t = _step(4, 5, "colouring them in every variant of the grid (colorjob batch)")
    from colorjob import batch
    from colorjob.evaluate import metrics_of_files

    manifest = batch.execute(
        batch.BatchConfig(
            input=str(new / "sketches"), conditions=str(grid_csv(out)), model=str(best),
            output=str(out / "colored"),
        )
    ).read_manifest()  # fmt: skip
    attrs = [c for c in ("hair", "shirt") if c in manifest]
    done = manifest[manifest["status"] != "failed"]
    rows = [(r["input"], r["output"], {k: r[k] for k in attrs}) for r in done.to_dict("records")]
    measured = metrics_of_files(new, "sketches/", rows, out / "colored", 256)
    log.info(f"      {summary(measured)} ({time.perf_counter() - t:.0f}s)")

    _step(5, 5, "writing the report")
    from colorjob.report import write_report

    report = write_report(
        out, title="colorjob quickstart", dataset=data, trials_csv=out / "search" / "trials.csv",
        trials_png=out / "search" / "trials.png", model_dir=Path(best), batch_dir=out / "colored",
        batch_metrics=measured,
        notes=[
            f"{sketches} synthetic characters at {size} px ({', '.join(families)} drawing styles, {colours} colours); validation holds out whole characters.",
            f"{trials} trials of up to {epochs} epochs, {how} (Optuna TPE, ASHA early stopping).",
            f"Total time {time.perf_counter() - t_all:.0f} s on {os.cpu_count()} CPU cores.",
        ],
    )  # fmt: skip
    log.info(f"\ndone in {time.perf_counter() - t_all:.0f}s. Report: {report}")
    return report


def summary(measured: dict | None) -> str:
    """One line of what was measured on the new characters' outputs."""
    if not measured:
        return "condition fidelity on the new characters: n/a (no masks)"
    parts = [f"condition fidelity on the new characters: {measured['fidelity']:.1%}"]
    parts += [f"{k[4:]} pixels in the asked colour {v:.1%}" for k, v in measured.items() if k.startswith("acc_") and v is not None]  # fmt: skip
    if measured.get("leak") is not None:
        parts.append(f"background changed {measured['leak']:.1%}")
    if measured.get("lines") is not None:
        parts.append(f"line pixels kept {measured['lines']:.1%}")
    return "; ".join(parts)


if __name__ == "__main__":  # python -m colorjob.quickstart: the command, run from the real module
    from colorjob.cli import main

    sys.exit(main(["quickstart", *sys.argv[1:]]))
