"""Train-step throughput of the real pix2pix step (colorjob.train.make_step), side by side.

    python benchmarks/train_step.py                       # seed settings on the GPU, or CPU profile
    python benchmarks/train_step.py --image-size 64 --ngf 32 --batch-sizes 8 --steps 10

For each precision (fp32, then bf16 + channels_last where CUDA is there) and batch size, it runs
warm-up steps and then times ``--steps`` steps on random data on the device; prints samples/s and
the ratio to fp32 at the same batch size.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from accelerate import Accelerator

from colorjob.train import TrainConfig, build_networks, make_step


def measure(cfg: TrainConfig, batch: int, steps: int, warmup: int = 3) -> float:
    acc = Accelerator(mixed_precision=cfg.mixed_precision)
    cuda = acc.device.type == "cuda"
    G, D, og, od = build_networks(cfg, 10, cuda)
    G, D, og, od = acc.prepare(G, D, og, od)
    step = make_step(acc, G, D, og, od, cfg)
    fmt = torch.channels_last if cuda and cfg.channels_last else torch.contiguous_format
    s = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=acc.device).mul(2).sub(1)
    sketch, target = s.contiguous(memory_format=fmt), s.flip(-1).contiguous(memory_format=fmt)
    planes = torch.zeros(batch, 10, cfg.image_size, cfg.image_size, device=acc.device)
    planes[:, [0, 5]] = 1
    for _ in range(warmup):
        step(sketch, target, planes)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        losses = step(sketch, target, planes)
    losses.tolist()  # wait for the device
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--image-size", type=int, default=256 if cuda else 64)
    p.add_argument("--ngf", type=int, default=64 if cuda else 32)
    p.add_argument("--batch-sizes", default="8,64" if cuda else "8")
    p.add_argument("--steps", type=int, default=50 if cuda else 10)
    a = p.parse_args()
    base = TrainConfig(image_size=a.image_size, ngf=a.ngf, ndf=a.ngf)
    modes = [("fp32", dataclasses.replace(base, mixed_precision="no", channels_last=False))]
    if cuda:
        modes.append(
            (
                "bf16+channels_last",
                dataclasses.replace(base, mixed_precision="bf16", channels_last=True),
            )
        )
    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"train step, {a.image_size}px, ngf=ndf={a.ngf}, {device}")
    print(f"{'precision':<20}{'batch':>6}{'samples/s':>12}{'vs fp32':>9}")
    for bs in [int(b) for b in a.batch_sizes.split(",")]:
        ref = None
        for name, cfg in modes:
            rate = measure(cfg, bs, a.steps)
            ref = ref or rate
            print(f"{name:<20}{bs:>6}{rate:>12.1f}{rate / ref:>8.2f}x")


if __name__ == "__main__":
    main()
