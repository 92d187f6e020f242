"""Batch colorization, files in -> files out, measured side by side on one machine.

    python benchmarks/batch_throughput.py                        # the full table (~15 min on 2 cores)
    python benchmarks/batch_throughput.py --quick                # a smoke run of every path (CI)
    python benchmarks/batch_throughput.py --images 3000 --models default

For each model (``default`` = the shipped generator; ``64`` = 64 px ngf 32; ``seed`` = 256 px
ngf 64, for GPUs) and each job size, every way runs in a **fresh process** (imports, model
loading and start-up included) on the same 256 px synthetic sketches x the 25-row grid, writing
PNG (compress level 1) at each sketch's own size, the sketch's lines over the colours:

1. ``colorjob batch`` as shipped (``executor: auto`` = in this process on one machine), in the
   ``mirror`` layout (one file per output) and the ``shards`` layout (one tar per shard);
2. ``colorjob batch --set executor=ray`` (a private local Ray: fused tasks, or split on GPUs);
3. the *good plain loop* a PyTorch user would write: decode each sketch once, all 25 variants in
   one forward, composite, save each (the fair baseline);
4. the *naive loop* (decode per variant, batch-1 forward), timed on a few sketches.

Then the ceilings: the model stage alone on in-memory tensors, each sketch encoded once for all
its variants (as batch does) and a full forward per pair; PNG encoding on every core; the fixed
cost: a 100-image job end to end; and the shard file formats: a shard's outputs as a
WebDataset tar vs a Parquet file of image bytes (write, read back, size). Ratios are against the
good plain loop.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID_CSV = ROOT / "configs" / "grid.csv"


def _grid_vectors(vocab):
    """The condition vectors of configs/grid.csv's 25 rows, in the model's vocabulary."""
    import pandas as pd
    import torch

    rows = pd.read_csv(GRID_CSV, dtype=str).to_dict("records")
    return vocab.vectors(torch.tensor([vocab.encode(r) for r in rows])), len(rows)


def _picture(y, native, box, width: int, height: int, layered: bool):
    """One generator output (``[-1, 1]``, model size) -> the picture at the sketch's own size,
    its lines over the colours (what ``colorjob batch`` writes by default)."""
    import numpy as np
    import torch

    from colorjob.composite import composite_image
    from colorjob.imaging import unletterbox

    colour = ((y[:3].clamp(-1, 1) + 1) * 127.5).round()
    cov = ((y[3:4].clamp(-1, 1) + 1) * 127.5).round() if layered else torch.full_like(colour[:1], 255)  # fmt: skip
    parts = torch.cat([colour, cov]).permute(1, 2, 0).to(torch.uint8).numpy()
    return composite_image(np.asarray(unletterbox(parts, box, width, height)), native)


def good_loop(model_dir: str, sketches: list[Path], out: Path) -> int:
    """The loop a PyTorch user would write: decode each sketch once, colour all its variants in
    one forward, put its lines over the colours at its own size, save each output."""
    import numpy as np
    import torch
    from PIL import Image

    from colorjob.export import load_generator
    from colorjob.imaging import letterbox, load_rgb, to_unit

    g, vocab, meta = load_generator(model_dir)
    g.eval()
    size, layered = meta["image_size"], meta.get("out_channels", 3) == 4
    vectors, variants = _grid_vectors(vocab)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with torch.inference_mode():
        for p in sketches:
            img = load_rgb(p)
            native = np.asarray(img)
            arr, box = letterbox(img, size)
            x = to_unit(torch.from_numpy(arr.copy()).permute(2, 0, 1))[None].expand(variants, -1, -1, -1)  # fmt: skip
            for v, y in enumerate(g(x, vectors)):
                pic = _picture(y, native, box, *img.size, layered)
                Image.fromarray(pic).save(out / f"{p.stem}__{v}.png", compress_level=1)
                n += 1
    return n


def naive_loop(model_dir: str, sketches: list[Path], out: Path) -> int:
    """Decode the sketch again for every variant, one image per forward."""
    import numpy as np
    import torch
    from PIL import Image

    from colorjob.export import load_generator
    from colorjob.imaging import letterbox, load_rgb, to_unit

    g, vocab, meta = load_generator(model_dir)
    g.eval()
    size, layered = meta["image_size"], meta.get("out_channels", 3) == 4
    vectors, variants = _grid_vectors(vocab)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with torch.inference_mode():
        for p in sketches:
            for v in range(variants):
                img = load_rgb(p)
                arr, box = letterbox(img, size)
                x = to_unit(torch.from_numpy(arr.copy()).permute(2, 0, 1))[None]
                pic = _picture(
                    g(x, vectors[v : v + 1])[0], np.asarray(img), box, *img.size, layered
                )
                Image.fromarray(pic).save(out / f"{p.stem}__{v}.png", compress_level=1)
                n += 1
    return n


def model_alone(model_dir: str, seconds: float = 5.0, share_encoder: bool | None = None) -> float:
    """Images/s of the model stage alone (``colorjob.inference.colorize``) on in-memory tensors,
    25 variants per sketch, with batch's batch size and streams (the ceiling of the model
    stage); ``share_encoder=False``: a full forward per pair."""
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
    codes = torch.tensor([vocab.encode(r) for r in __import__("pandas").read_csv(GRID_CSV, dtype=str).to_dict("records")])  # fmt: skip
    per = max(1, batch // len(codes) + 1)
    sketches = torch.randint(0, 255, (per, 3, s, s), dtype=torch.uint8)
    conds = codes.repeat(per, 1)
    index = torch.arange(per).repeat_interleave(len(codes))
    colorize(g, sketches, conds, vocab, index, batch, share_encoder=share_encoder)  # warm-up
    t0 = time.perf_counter()

    def stream(_) -> int:
        n = 0
        while time.perf_counter() - t0 < seconds:
            colorize(g, sketches, conds, vocab, index, batch, share_encoder=share_encoder).cpu()
            n += len(conds)
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
        export_generator(Generator(in_channels=13, out_channels=3, image_size=size, ngf=ngf), synth.vocabulary(), tmp / f"model-{kind}")
    )  # fmt: skip


def files_in(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and ".colorjob" not in p.parts)


def shard_formats(folder: Path, members: int = 2048) -> list[dict]:
    """One shard's outputs (PNG bytes from a mirror run) as a WebDataset tar and as a Parquet file
    with an image-bytes column: seconds to write, to read every image back, bytes."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    pngs = sorted(p for p in folder.rglob("*.png") if ".colorjob" not in p.parts)
    blobs = [(p.name, p.read_bytes()) for p in (pngs * (members // max(1, len(pngs)) + 1))[:members]]  # fmt: skip
    rows = []
    tar_path, pq_path = folder.parent / "shard.tar", folder.parent / "shard.parquet"
    t = time.perf_counter()
    with tarfile.open(tar_path, "w") as tar:
        for i, (_, data) in enumerate(blobs):
            for suffix, payload in (
                (".png", data),
                (".json", b'{"hair": "black", "shirt": "red"}'),
            ):
                info = tarfile.TarInfo(f"{i:06d}{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    t_write = time.perf_counter() - t
    t = time.perf_counter()
    with tarfile.open(tar_path) as tar:
        n = sum(len(tar.extractfile(m).read()) for m in tar if m.name.endswith(".png"))
    rows.append({"format": "WebDataset tar", "write s": t_write, "read s": time.perf_counter() - t, "MB": tar_path.stat().st_size / 1e6, "images": len(blobs), "bytes ok": n == sum(len(b) for _, b in blobs)})  # fmt: skip
    t = time.perf_counter()
    table = pa.table({"key": [f"{i:06d}" for i in range(len(blobs))], "png": [b for _, b in blobs], "meta": ['{"hair": "black", "shirt": "red"}'] * len(blobs)})  # fmt: skip
    pq.write_table(table, pq_path, compression="none")
    t_write = time.perf_counter() - t
    t = time.perf_counter()
    n = sum(len(b) for b in pq.read_table(pq_path, columns=["png"]).column("png").to_pylist())
    rows.append({"format": "Parquet (image bytes)", "write s": t_write, "read s": time.perf_counter() - t, "MB": pq_path.stat().st_size / 1e6, "images": len(blobs), "bytes ok": n == sum(len(b) for _, b in blobs)})  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", default="3000", help="job sizes (images; 25 per sketch)")
    p.add_argument("--models", default="default", help="default, 64, seed (GPU), tiny")
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
    data = synth.generate(tmp / "data", n_sketches, seed=0, size=256, families=("classic", "bold", "icon", "sticker"))  # fmt: skip
    all_sketches = sorted((data / "sketches").glob("*.png"))
    py = sys.executable
    rows, formats = [], []
    for kind in a.models.split(","):
        model = make_model(kind, tmp)
        for images in [100, *sizes] if not a.quick else sizes:
            k = images // 25
            inp = tmp / f"in-{k}"
            if not inp.exists():
                inp.mkdir()
                for s in all_sketches[:k]:  # copies: batch follows no link out of its input
                    shutil.copyfile(s, inp / s.name)
            run = tmp / f"run-{kind}-{images}"
            batch = [py, "-m", "colorjob.batch", "--input", str(inp), "--conditions", str(GRID_CSV),
                     "--model", model, "--set", "contact_sheet=false", "-q"]  # fmt: skip
            t_auto = fresh([*batch, "--output", str(run / "auto")])
            if images == 100 and not a.quick:
                rows.append({"model": kind, "images": images, "way": "fixed cost: colorjob batch (auto)", "s": t_auto})  # fmt: skip
                continue
            t_shards = fresh([*batch, "--output", str(run / "shards"), "--layout", "shards"])
            t_ray = fresh([*batch, "--output", str(run / "ray"), "--set", "executor=ray"])
            t_good = fresh([py, __file__, "--loop", "good", "--model", model, "--input", str(inp), "--out", str(run / "good")])  # fmt: skip
            ways = (
                ("colorjob batch (auto, mirror)", t_auto, run / "auto"),
                ("colorjob batch (auto, shards)", t_shards, run / "shards"),
                ("colorjob batch (ray, mirror)", t_ray, run / "ray"),
                ("good plain loop", t_good, run / "good"),
            )  # fmt: skip
            for way, t, folder in ways:
                rows.append({"model": kind, "images": images, "way": way, "s": t, "img/s": images / t, "vs good loop": t_good / t, "files": files_in(folder)})  # fmt: skip
            if not formats:
                formats = shard_formats(run / "auto", 200 if a.quick else 2048)
        naive_in = tmp / f"in-{a.naive_sketches}-naive"
        naive_in.mkdir(exist_ok=True)
        for s in all_sketches[: a.naive_sketches]:
            if not (naive_in / s.name).exists():
                shutil.copyfile(s, naive_in / s.name)
        n = a.naive_sketches * 25
        t_naive = fresh([py, __file__, "--loop", "naive", "--model", model, "--input", str(naive_in), "--out", str(tmp / f"naive-{kind}")])  # fmt: skip
        good_rate = next((r["img/s"] for r in reversed(rows) if r["model"] == kind and r["way"] == "good plain loop"), None)  # fmt: skip
        rows.append({"model": kind, "images": n, "way": "naive loop (labelled: not a fair baseline)", "s": t_naive, "img/s": n / t_naive,
                     "vs good loop": (n / t_naive) / good_rate if good_rate else None})  # fmt: skip
        seconds = 2 if a.quick else 8
        shared = model_alone(model, seconds=seconds)
        per_pair = model_alone(model, seconds=seconds, share_encoder=False)
        rows.append({"model": kind, "way": "model alone, in memory (ceiling)", "img/s": shared})
        rows.append({"model": kind, "way": "model alone, a full forward per pair", "img/s": per_pair, "vs good loop": None})  # fmt: skip
        rows.append({"model": kind, "way": "  shared encoder vs per pair (goal >= 1.6x)", "img/s": shared / per_pair})  # fmt: skip
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
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep=""))  # fmt: skip
        print("\none shard's outputs in two file formats:")
        print(pd.DataFrame(formats).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
