"""Batch colorization throughput, files in -> files out, three ways side by side on one machine.

    python benchmarks/batch_throughput.py [--sketches 40] [--image-size 64] [--ngf 32]

1. ``colorjob.batch`` (Ray Data: decode tasks -> generator actor pool -> encode/write tasks),
   on a Ray that is already up (as on a cluster), with the manifest but no contact sheet.
2. A plain per-image PyTorch loop: for every (sketch, variant): PIL load, batch-1 forward, PIL save.
3. The model alone on in-memory tensors (batch --batch-size): the ceiling.

The same exported generator (random weights of the given size; throughput does not depend on the
weights) and the same sketches are used for all three. Prints img/s and the ratios.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ray
import torch
from PIL import Image

from colorjob import synth
from colorjob.batch import BatchConfig, letterbox, run
from colorjob.data import load_rgb
from colorjob.export import export_generator, load_generator
from colorjob.models import Generator


def plain_loop(model_dir: Path, sketches: list[Path], grid: list[list[int]], out: Path) -> int:
    g, vocab, meta = load_generator(model_dir)
    size, n = meta["image_size"], 0
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for p in sketches:
            for v, cond in enumerate(grid):
                img = load_rgb(p)
                arr, (x0, y0, x1, y1) = letterbox(img, size)
                x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
                x = torch.cat([x, vocab.planes(torch.tensor([cond]), size)], 1)
                y = ((g(x)[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
                res = (
                    Image.fromarray(y)
                    .crop((x0, y0, x1, y1))
                    .resize(img.size, Image.Resampling.BICUBIC)
                )
                res.save(out / f"{p.stem}__{v}.png", compress_level=1)
                n += 1
    return n


def model_alone(model_dir: Path, batch: int, seconds: float = 5.0) -> float:
    g, vocab, meta = load_generator(model_dir)
    cuda = torch.cuda.is_available()
    g = g.to("cuda").to(memory_format=torch.channels_last) if cuda else g
    x = torch.rand(
        batch,
        3 + vocab.num_channels,
        meta["image_size"],
        meta["image_size"],
        device="cuda" if cuda else "cpu",
    )
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cuda):
        while time.perf_counter() - t0 < seconds:
            g(x).float().sum().item()
            n += batch
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sketches", type=int, default=120, help="3,000 images: enough to amortise start-up"
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--plain-sketches", type=int, default=8, help="sketches for the slow plain loop")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="colorjob-batch-bench-"))
    data = synth.generate(tmp / "data", a.sketches, seed=0, size=256)
    model = tmp / "model"
    torch.manual_seed(0)
    export_generator(Generator(13, 3, a.image_size, a.ngf), synth.vocabulary(), model)
    grid_csv = Path(__file__).resolve().parents[1] / "configs" / "grid.csv"
    vocab = synth.vocabulary()
    grid = [[h, s] for h in range(5) for s in range(5)]
    sketches = sorted((data / "sketches").glob("*.png"))

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    cfg = BatchConfig(input=str(data / "sketches"), conditions=str(grid_csv), model=str(model), output=str(tmp / "out"),
                      batch_size=a.batch_size, contact_sheet=False)  # fmt: skip
    t0 = time.perf_counter()
    m = run(cfg)
    pipe = int((m["status"] == "ok").sum()) / (time.perf_counter() - t0)
    ray.shutdown()

    t0 = time.perf_counter()
    n = plain_loop(model, sketches[: a.plain_sketches], grid, tmp / "plain")
    plain = n / (time.perf_counter() - t0)
    alone = model_alone(model, a.batch_size)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {os.cpu_count()} cores"
    )
    print(
        f"\n{len(sketches)} sketches (256px) x {len(grid)} variants, model {a.image_size}px ngf {a.ngf}, {device}, vocab {vocab.num_channels} planes"
    )
    print(f"{'':28}{'img/s':>10}{'vs plain loop':>15}")
    for name, rate in (
        ("colorjob.batch (Ray Data)", pipe),
        ("plain per-image loop", plain),
        ("model alone (in memory)", alone),
    ):
        print(f"{name:28}{rate:>10.1f}{rate / plain:>14.2f}x")


if __name__ == "__main__":
    main()
