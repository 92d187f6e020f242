"""The batch job's settings: one typed dataclass, read from YAML and ``--set``, range-checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from colorjob import config as cfgmod
from colorjob.export import DEFAULT_MODEL

Mode = Literal["auto", "composite", "layers", "raw"]
MODES = get_args(Mode)


@dataclass
class BatchConfig:
    input: str = "sketches"  # folder or URI of sketches (searched recursively), or one image
    conditions: str = "configs/grid.csv"  # the grid: one row per variant
    model: str = str(DEFAULT_MODEL)  # exported generator folder or URI (default: the shipped one)
    output: str = "out"  # folder or URI for images, manifest and contact sheet
    batch_size: int = (
        0  # images per generator call; 0 = auto: 8 on CPUs (faster there), 128 on GPUs
    )
    format: Literal["png", "webp", "jpg"] = "png"
    overwrite: bool = False  # redo outputs that are already done
    fail_on_error: bool = False  # exit 1 when any input failed
    max_pixels: int = 40_000_000  # larger images fail (decompression bombs); bounds decode memory
    min_side: int = 8  # smaller images fail: nothing to colour
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPUs
    executor: Literal["auto", "local", "ray"] = "auto"  # auto: Ray when on a cluster, else here
    workers: int = 0  # local executor threads; 0 = one per CPU
    placement: Literal["auto", "fused", "split"] = "auto"  # Ray: fused on CPUs, split with GPUs
    actors: int = 0  # Ray GPU generator actors (split); 0 = one per gpus_per_actor GPUs
    gpus_per_actor: float = 1.0
    threads_per_worker: int = 1  # torch threads of a fused CPU task (the CPUs it holds)
    contact_sheet: bool = True
    layout: Literal["mirror", "shards"] = "mirror"  # files beside each other, or a tar per shard
    # composite: the sketch's own lines over the colours (auto: unless the model says raw);
    # layers: the composite and the colour layer beside it (<name>.layer.png, RGBA, no lines);
    # raw: the generator's own picture
    mode: Mode = "auto"
    shards: int = 0  # 0 = from the job's size at the folder's first run (kept in its state)
    follow_links: bool = False  # follow file links that leave the input folder (never folder links)

    def __post_init__(self) -> None:
        r = cfgmod.check_range
        for key in ("input", "conditions", "model", "output"):
            if not getattr(self, key).strip():
                raise cfgmod.ConfigError(f"{key} must be a non-empty path or URI")
        if self.output.strip() in MODES:
            raise cfgmod.ConfigError(
                f"output is the folder for the images, not what they hold: did you mean "
                f"mode={self.output.strip()} (--mode {self.output.strip()})? For a folder of that "
                f"name, write ./{self.output.strip()}"
            )
        for key in ("max_pixels", "min_side", "threads_per_worker"):
            r(key, getattr(self, key), 1)
        r("batch_size", self.batch_size, 0)
        r("workers", self.workers, 0)
        r("actors", self.actors, 0)
        r("gpus_per_actor", self.gpus_per_actor, 0, 64, low_open=True)
        r("shards", self.shards, 0, 65536)
        if self.shards & (self.shards - 1):
            raise cfgmod.ConfigError(
                f"shards must be 0 (auto) or a power of two, got {self.shards}"
            )
