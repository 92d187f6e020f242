"""Training at scale on one machine: streamed vs in-memory data, decoding ways, memory, overhead.

    python benchmarks/scale.py                 # every part (~15 min on 2 cores)
    python benchmarks/scale.py --parts stream  # one part: stream | decode | rss | overhead | bytes | poll

- stream: training samples/s, in memory vs streamed from files (DataLoader workers), at 64 px
  (ngf 32) and 256 px (ngf 12); same data, same epochs.
- decode: pairs/s of decoding a dataset's files with a torch DataLoader (2 workers) and with Ray
  Data (read bytes -> map_batches decode -> iter_torch_batches), nothing else running.
- rss: peak memory of a process training one streamed epoch on 5,000 and on 20,000 pairs.
- overhead: the CPU profile (configs/cpu.yaml, 64 px, 10 epochs): the share of each run's wall
  time spent outside the training steps, with a checkpoint every epoch and with the defaults.
- poll: `colorjob train --workers 2` (32 px, 12 epochs, a tiny network: short epochs) with Ray
  Train's controller polling every 2 s (Ray's default) and every 0.25 s (colorjob's): wall
  seconds per epoch, from when each epoch's shard log was written (start-up excluded).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stream_vs_memory(tmp: Path, epochs: int) -> list[dict]:
    from colorjob import synth
    from colorjob.train import TrainConfig, train

    rows = []
    for size, ngf, sketches in ((64, 32, 20), (256, 12, 8)):
        data = synth.generate(tmp / f"d{size}", sketches, seed=0, size=size)
        for mode in ("memory", "stream"):
            cfg = TrainConfig(
                data=str(data), out=str(tmp / f"s{size}{mode}"), image_size=size, ngf=ngf, ndf=ngf,
                epochs=epochs, batch_size=8, data_mode=mode, loader_workers=1,
                checkpoint_every=epochs, eval_every=epochs, sample_every=epochs,
            )  # fmt: skip
            s = train(cfg)
            rate = sum(h["samples_per_s"] for h in s["history"]) / len(s["history"])
            rows.append({"part": "stream", "size": size, "way": mode, "samples/s": rate})
    return rows


def decoding(tmp: Path) -> list[dict]:
    import numpy as np
    import torch

    from colorjob import synth
    from colorjob.data import PairDataset, StreamedPairs

    data = synth.generate(tmp / "dec", 24, seed=2, size=256)
    ds = PairDataset(data, 256)
    pairs = StreamedPairs(ds, batch_size=32, seed=0)
    t0 = time.perf_counter()
    n = sum(len(b[3]) for b in torch.utils.data.DataLoader(pairs, batch_size=None, num_workers=2))
    rows = [{"part": "decode", "way": "DataLoader, 2 workers", "pairs/s": n / (time.perf_counter() - t0)}]  # fmt: skip

    import ray

    from colorjob.cluster import connect
    from colorjob.imaging import image_to_tensor, load_rgb

    connect(num_cpus=2, log_to_driver=False)
    meta = ds.metadata

    def decode(batch: dict) -> dict:
        def one(rel):
            return image_to_tensor(load_rgb(Path(data) / rel), 256).numpy()

        return {"sketch": np.stack([one(r) for r in batch["input"]]), "target": np.stack([one(r) for r in batch["output"]])}  # fmt: skip

    items = meta[["input", "output"]].to_dict("records")
    t0 = time.perf_counter()
    ds_ray = ray.data.from_items(items).map_batches(decode, batch_size=32, batch_format="numpy")
    n = sum(len(b["sketch"]) for b in ds_ray.iter_torch_batches(batch_size=32))
    rows.append({"part": "decode", "way": "Ray Data, 2 CPUs (incl. start)", "pairs/s": n / (time.perf_counter() - t0)})  # fmt: skip
    t0 = time.perf_counter()
    n = sum(len(b["sketch"]) for b in ds_ray.iter_torch_batches(batch_size=32))
    rows.append({"part": "decode", "way": "Ray Data, 2 CPUs (warm)", "pairs/s": n / (time.perf_counter() - t0)})  # fmt: skip
    ray.shutdown()
    return rows


def peak_rss(tmp: Path) -> list[dict]:
    from colorjob import synth

    probe = (
        "import sys\n"
        "from colorjob.train import TrainConfig, train\n"
        "train(TrainConfig(data=sys.argv[1], out=sys.argv[2], image_size=32, ngf=8, ndf=8, epochs=1,\n"
        "      batch_size=32, data_mode='stream', loader_workers=1, eval_batch_size=256))\n"
        "print(next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:')) * 1024)\n"
    )
    rows = []
    for pairs in (5000, 20000):
        data = synth.generate(tmp / f"rss{pairs}", pairs // 25, seed=1, size=32)
        r = subprocess.run([sys.executable, "-c", probe, str(data), str(tmp / f"rss{pairs}-run")], capture_output=True, text=True, check=True)  # fmt: skip
        rows.append({"part": "rss", "pairs": pairs, "peak MB": int(r.stdout.split()[-1]) / 1e6})
    return rows


def overhead(tmp: Path) -> list[dict]:
    from colorjob import config as cfgmod
    from colorjob import synth
    from colorjob.train import TrainConfig, train

    data = synth.generate(tmp / "cpu", 10, seed=0, size=64)
    base = cfgmod.load(
        TrainConfig, ROOT / "configs" / "cpu.yaml", {"data": str(data), "epochs": 10}
    )
    rows = []
    for name, kw in (("checkpoint every epoch", {"checkpoint_every": 1}), ("configs/cpu.yaml as shipped", {})):  # fmt: skip
        cfg = dataclasses.replace(base, out=str(tmp / f"o-{len(rows)}"), **kw)
        t0 = time.perf_counter()
        s = train(cfg)
        wall = time.perf_counter() - t0
        steps = sum(h["train_seconds"] for h in s["history"])
        per_epoch = [(h["seconds"] - h["train_seconds"]) / h["seconds"] for h in s["history"]]
        rows.append({"part": "overhead", "way": name, "wall s": wall, "steps s": steps,
                     "outside steps, per epoch": sum(per_epoch) / len(per_epoch)})  # fmt: skip
    return rows


def poll_interval(tmp: Path, epochs: int = 12) -> list[dict]:
    import os

    from colorjob import synth
    from colorjob.distributed import POLL_ENV, POLL_S

    data = synth.generate(tmp / "poll", 4, seed=0, size=32)
    rows = []
    for poll in ("2", POLL_S):
        out, log = tmp / f"poll-{poll}", tmp / f"poll-{poll}-shards"
        cmd = [sys.executable, "-m", "colorjob", "train", "--data", str(data), "--out", str(out), "--workers", "2",
               "--image-size", "32", "--epochs", str(epochs), "--set", "ngf=8", "--set", "ndf=8",
               "--set", "val_fraction=0.25", "--set", f"shard_log={log}"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {POLL_ENV: poll}
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        at = [(log / f"epoch{e:03d}-rank0.json").stat().st_mtime for e in range(1, epochs + 1)]
        rows.append({"part": "poll", "way": f"controller polls every {poll} s", "wall s": wall,
                     "s per epoch": (at[-1] - at[0]) / (epochs - 1)})  # fmt: skip
    return rows


def _rungs(grace: int, rf: float, epochs: int) -> list[int]:
    rungs, t = [], grace
    while t < epochs:
        rungs.append(t)
        t = max(t + 1, int(round(t * rf)))
    return rungs


def bytes_written(tmp: Path) -> list[dict]:
    """Bytes a search sends to its storage path, computed from the sizes of its checkpoints (G, D
    and both Adam states in fp32, plus the best generator each Tune checkpoint carries) and the
    epochs at which it writes them. Before: every ``checkpoint_every`` epochs, at the end and at
    every new best (the share of epochs that set one is taken from a real run, runs/default, when
    it is there). After: at ``checkpoint_every``, the ASHA rungs and the end, and the best
    generator only in checkpoints whose epoch set no new best (otherwise it is last.pt's own
    generator: ``checkpoint.pack_best``). ASHA stops all but 1/reduction_factor of the trials at
    each rung, in both."""
    from colorjob.models import build_discriminator, build_generator

    best_share, source = 0.5, "assumed"
    metrics = ROOT / "runs" / "default" / "metrics.csv"
    if metrics.is_file():
        import pandas as pd

        v = pd.read_csv(metrics)["val_l1"]
        best_share, source = (
            float((v < v.cummin().shift(fill_value=float("inf"))).mean()),
            "runs/default",
        )
    rows = []
    searches = (  # name, trials, epochs, grace, rf, checkpoint_every (before, after), ngf, ndf, conditioning
        ("quickstart: 4 trials x 2 epochs, 256 px ngf 12", 4, 2, 1, 2, (2, 2), 12, 16, "film"),
        ("seed size: 16 trials x 50 epochs, ngf 64", 16, 50, 3, 2, (3, 50), 64, 64, "concat"),
    )  # fmt: skip
    for name, trials, epochs, grace, rf, (every_before, every_after), ngf, ndf, cond in searches:
        g = build_generator(cond, 10, 256, ngf)
        d = build_discriminator("concat", 10, ndf, 3)
        g_bytes = sum(p.numel() for p in g.parameters()) * 4
        full = (g_bytes + sum(p.numel() for p in d.parameters()) * 4) * 3  # weights + 2 moments
        rungs = _rungs(grace, rf, epochs)
        plan, left = [], trials
        for r in rungs:
            go_on = max(1, int(left / rf))
            plan.append((r, left - go_on))
            left = go_on
        plan.append((epochs, left))
        before = after = 0.0
        for end, n in plan:
            fixed = {e for e in range(1, end + 1) if e % every_before == 0} | {end}
            saves = len(fixed) + best_share * (end - len(fixed))
            before += n * saves * (full + g_bytes)
            kept = (
                {e for e in range(1, end + 1) if e % every_after == 0}
                | {r for r in rungs if r <= end}
                | {end}
            )
            # the best generator travels only where it is not the checkpoint's own (no new best)
            after += n * len(kept) * (full + (1 - best_share) * g_bytes)
        rows.append({"part": "bytes", "way": name, "before GB": before / 1e9, "after GB": after / 1e9,
                     "before/after": before / after, "new-best share": f"{best_share:.2f} ({source})"})  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--parts", default="stream,decode,rss,overhead,bytes,poll")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run of the stream part")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="colorjob-scale-"))
    rows = []
    parts = {"stream": lambda: stream_vs_memory(tmp, a.epochs), "decode": lambda: decoding(tmp),
             "rss": lambda: peak_rss(tmp), "overhead": lambda: overhead(tmp), "bytes": lambda: bytes_written(tmp),
             "poll": lambda: poll_interval(tmp)}  # fmt: skip
    for part in a.parts.split(","):
        rows += parts[part]()
    import pandas as pd

    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep=""))


if __name__ == "__main__":
    main()
