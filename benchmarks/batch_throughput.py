"""Batch colorization, files in -> files out, measured side by side on one machine.

    python benchmarks/batch_throughput.py                        # the full table (~20 min on 2 cores)
    python benchmarks/batch_throughput.py --quick                # a smoke run of every path (CI)
    python benchmarks/batch_throughput.py --images 3000 --models default

For each model (``default`` = the shipped generator, 256 px ngf 12; ``64`` = 64 px ngf 32;
``seed`` = 256 px ngf 64, for GPUs) and each job size, every way runs in a **fresh process**
(imports, model loading and start-up included) on the same 256 px synthetic sketches x the
25-row grid, writing PNG (compress level 1) at each sketch's own size:

1. ``colorjob batch`` as shipped (``executor: auto`` = in this process on one machine);
2. ``colorjob batch --set executor=ray`` (a private local Ray: fused tasks, or split on GPUs);
3. the *good plain loop* a PyTorch user would write: decode each sketch once, all 25 variants in
   one forward, save each (the fair baseline);
4. the *naive loop* (decode per variant, batch-1 forward), timed on a few sketches.

Then the ceilings: the model alone on in-memory tensors, and PNG encoding on every core; and the
fixed cost: a 100-image job end to end. Ratios are against the good plain loop.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = [[h, s] for h in range(5) for s in range(5)]


def good_loop(model_dir: str, sketches: list[Path], out: Path) -> int:
    """Decode each sketch once, colour all its variants in one forward, save each output."""
    import torch

    from colorjob.export import load_generator
    from colorjob.imaging import letterbox, load_rgb, to_uint8, to_unit, unletterbox

    g, vocab, meta = load_generator(model_dir)
    size, cond = meta["image_size"], vocab.multi_hot(torch.tensor(GRID))
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with torch.inference_mode():
        for p in sketches:
            img = load_rgb(p)
            arr, box = letterbox(img, size)
            x = to_unit(torch.from_numpy(arr.copy()).permute(2, 0, 1))[None].expand(
                len(GRID), -1, -1, -1
            )
            for v, y in enumerate(to_uint8(g(x, cond)).permute(0, 2, 3, 1).numpy()):
                unletterbox(y, box, *img.size).save(out / f"{p.stem}__{v}.png", compress_level=1)
                n += 1
    return n


def naive_loop(model_dir: str, sketches: list[Path], out: Path) -> int:
    """For every (sketch, variant): decode, a batch-1 forward, save."""
    import torch

    from colorjob.export import load_generator
    from colorjob.imaging import letterbox, load_rgb, to_uint8, to_unit, unletterbox

    g, vocab, meta = load_generator(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with torch.inference_mode():
        for p in sketches:
            for v, c in enumerate(GRID):
                img = load_rgb(p)
                arr, box = letterbox(img, meta["image_size"])
                x = to_unit(torch.from_numpy(arr.copy()).permute(2, 0, 1))[None]
                y = to_uint8(g(x, vocab.multi_hot(torch.tensor([c]))))[0].permute(1, 2, 0).numpy()
                unletterbox(y, box, *img.size).save(out / f"{p.stem}__{v}.png", compress_level=1)
                n += 1
    return n


def model_alone(model_dir: str, seconds: float = 5.0) -> float:
    """Images/s of the generator on in-memory tensors through the inference path, run the way
    batch runs it: on CPUs one single-threaded stream per core at batch 8, on a GPU one stream at
    batch 128 (the ceiling of the model stage)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from colorjob.batch.executors import AUTO_BATCH, cpu_count
    from colorjob.export import load_generator
    from colorjob.inference import colorize, prepare

    g, vocab, meta = load_generator(model_dir)
    cuda = torch.cuda.is_available()
    g = prepare(g, "cuda" if cuda else "cpu")
    batch, streams = (AUTO_BATCH["gpu"], 1) if cuda else (AUTO_BATCH["cpu"], cpu_count())
    if not cuda:
        torch.set_num_threads(1)
    s = meta["image_size"]
    sketches = torch.randint(0, 255, (1, 3, s, s), dtype=torch.uint8)
    conds = torch.tensor(GRID * (batch // 25 + 1))[:batch]
    index = torch.zeros(batch, dtype=torch.long)
    colorize(g, sketches, conds, vocab, index, batch)  # warm-up
    t0 = time.perf_counter()

    def stream(_) -> int:
        n = 0
        while time.perf_counter() - t0 < seconds:
            colorize(g, sketches, conds, vocab, index, batch).cpu()
            n += batch
        return n

    with ThreadPoolExecutor(streams) as pool:
        n = sum(pool.map(stream, range(streams)))
    return n / (time.perf_counter() - t0)


def encode_ceiling(images: int = 100) -> float:
    """Images/s of PNG encoding (256 px, compress level 1) on every core: one core x cores."""
    import io

    import numpy as np
    from PIL import Image

    from colorjob.batch.executors import cpu_count

    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) // 32 * 32) for _ in range(8)]  # fmt: skip
    t0 = time.perf_counter()
    for i in range(images):
        pics[i % 8].save(io.BytesIO(), format="PNG", compress_level=1)
    return images / (time.perf_counter() - t0) * cpu_count()


def fresh(cmd: list[str]) -> float:
    """Seconds a command takes as a fresh process (it must succeed)."""
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def make_model(kind: str, tmp: Path) -> str:
    if kind == "default":
        from colorjob.export import DEFAULT_MODEL

        return str(DEFAULT_MODEL)
    import torch

    from colorjob import synth
    from colorjob.export import export_generator
    from colorjob.models import Generator

    size, ngf = {"64": (64, 32), "seed": (256, 64), "tiny": (32, 8)}[kind]
    torch.manual_seed(0)  # throughput does not depend on the weights
    return str(
        export_generator(Generator(13, 3, size, ngf), synth.vocabulary(), tmp / f"model-{kind}")
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", default="1000,3000", help="job sizes (images; 25 per sketch)")
    p.add_argument("--models", default="default,64", help="default, 64, seed (GPU), tiny")
    p.add_argument("--naive-sketches", type=int, default=4, help="sketches for the slow naive loop")
    p.add_argument("--quick", action="store_true", help="a smoke run of every path, tiny sizes")
    p.add_argument("--loop", choices=["good", "naive"], help=argparse.SUPPRESS)  # internal
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.loop:  # one loop as a fresh process
        sketches = sorted(Path(a.input).glob("*.png"))
        (good_loop if a.loop == "good" else naive_loop)(a.model, sketches, Path(a.out))
        return
    import torch

    if a.quick:
        a.images, a.models, a.naive_sketches = "50", "tiny", 1
    sizes = [int(x) for x in a.images.split(",")]
    from colorjob import synth

    tmp = Path(tempfile.mkdtemp(prefix="colorjob-batch-bench-"))
    n_sketches = max(max(sizes), 100) // 25
    data = synth.generate(tmp / "data", n_sketches, seed=0, size=256)
    all_sketches = sorted((data / "sketches").glob("*.png"))
    grid = str(ROOT / "configs" / "grid.csv")
    py = sys.executable
    rows = []
    for kind in a.models.split(","):
        model = make_model(kind, tmp)
        for images in [100, *sizes] if not a.quick else sizes:
            k = images // 25
            inp = tmp / f"in-{k}"
            if not inp.exists():
                inp.mkdir()
                for s in all_sketches[:k]:
                    (inp / s.name).symlink_to(s)
            run = tmp / f"run-{kind}-{images}"
            batch = [py, "-m", "colorjob.batch", "--input", str(inp), "--conditions", grid,
                     "--model", model, "--set", "contact_sheet=false", "-q"]  # fmt: skip
            t_auto = fresh([*batch, "--output", str(run / "auto")])
            t_ray = fresh([*batch, "--output", str(run / "ray"), "--set", "executor=ray"])
            if images == 100 and not a.quick:
                rows.append({"model": kind, "images": images, "way": "fixed cost: colorjob batch (auto)", "s": t_auto})  # fmt: skip
                rows.append({"model": kind, "images": images, "way": "fixed cost: colorjob batch (ray)", "s": t_ray})  # fmt: skip
                continue
            t_good = fresh([py, __file__, "--loop", "good", "--model", model, "--input", str(inp), "--out", str(run / "good")])  # fmt: skip
            for way, t in (("colorjob batch (auto)", t_auto), ("colorjob batch (ray)", t_ray), ("good plain loop", t_good)):  # fmt: skip
                rows.append({"model": kind, "images": images, "way": way, "s": t, "img/s": images / t, "vs good loop": t_good / t})  # fmt: skip
        naive_in = tmp / f"in-{a.naive_sketches}-naive"
        naive_in.mkdir(exist_ok=True)
        for s in all_sketches[: a.naive_sketches]:
            if not (naive_in / s.name).exists():
                (naive_in / s.name).symlink_to(s)
        n = a.naive_sketches * 25
        t_naive = fresh([py, __file__, "--loop", "naive", "--model", model, "--input", str(naive_in), "--out", str(tmp / f"naive-{kind}")])  # fmt: skip
        good_rate = next((r["img/s"] for r in reversed(rows) if r["model"] == kind and r["way"] == "good plain loop"), None)  # fmt: skip
        rows.append({"model": kind, "images": n, "way": "naive loop (labelled: not a fair baseline)", "s": t_naive, "img/s": n / t_naive,
                     "vs good loop": (n / t_naive) / good_rate if good_rate else None})  # fmt: skip
        alone = model_alone(model, seconds=2 if a.quick else 5)
        rows.append({"model": kind, "way": "model alone, in memory (ceiling)", "img/s": alone})
    rows.append(
        {
            "way": "PNG encode on every core (ceiling)",
            "img/s": encode_ceiling(20 if a.quick else 200),
        }
    )
    import pandas as pd

    from colorjob.batch.executors import cpu_count

    device = (
        torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {cpu_count()} cores"
    )
    print(f"\nbatch throughput: 256 px sketches x 25 variants, PNG out, fresh processes; {device}")
    with pd.option_context("display.width", 200, "display.max_columns", 10):
        print(
            pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="")
        )


if __name__ == "__main__":
    main()
