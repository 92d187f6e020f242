"""Where a batch job's work runs: in this process, or on Ray Data across a cluster.

``executor: auto`` (the default) runs on Ray when there is a cluster to use (``RAY_ADDRESS`` is
set, as ``ray job submit`` does, or this process already joined a Ray) and in this process
otherwise: on one machine, threads running decode -> model -> encode keep every core busy
(PyTorch and Pillow release the GIL) without Ray's ~10 s of start-up.

On Ray the placement follows the cluster's resources (``placement: auto``):

- **fused** (no GPUs): tasks that each decode, colour and encode a block of sketches, holding
  ``threads_per_worker`` CPUs and running torch on that many threads (tasks x threads = the
  CPUs); pixels never cross the object store. The generator is built once per worker process.
  Tasks, not actors: a task lost with its node is retried on any node with a free CPU, while a
  lost actor would have to be restarted, and its work would wait for room to do so.
- **split** (GPUs): decode tasks on the CPUs -> one generator actor per GPU -> encode tasks
  spread over every CPU of the cluster (PNG encoding is what bounds a GPU node).

Decode work reserves Ray ``memory`` for the largest image it may decode (``max_pixels``), so a
node never runs more decoders than fit in its memory.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from colorjob.batch.stages import ColorizeStage, Fused, Spec, decode_stage, encode_stage
from colorjob.imaging import DECODE_BYTES_PER_PIXEL

Progress = Callable[[int, int], None]  # (ok, failed) of a finished block


def choose_executor(kind: str) -> str:
    if kind != "auto":
        return kind
    if os.environ.get("RAY_ADDRESS"):
        return "ray"
    ray = sys.modules.get("ray")
    return "ray" if ray is not None and ray.is_initialized() else "local"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def blocks(jobs: list[dict], per_block: int) -> list[dict]:
    """Job rows grouped into batches (dicts of columns) of ``per_block`` sketches."""
    out = []
    for i in range(0, len(jobs), per_block):
        part = jobs[i : i + per_block]
        out.append({k: [j[k] for j in part] for k in ("path", "todo", "outs")})
    return out


BLOCK_IMAGES = 64  # images per block of work (and per provenance part)
AUTO_BATCH = {
    "cpu": 8,
    "gpu": 128,
}  # generator batch: small is faster on CPUs (docs/performance.md)


def sketches_per_block(variants: int) -> int:
    return max(1, BLOCK_IMAGES // max(1, variants))


def with_batch_size(spec: Spec, gpu: bool) -> Spec:
    """``spec`` with ``batch_size: 0`` (auto) resolved for the device that colours."""
    if spec.batch_size:
        return spec
    return dataclasses.replace(spec, batch_size=AUTO_BATCH["gpu" if gpu else "cpu"])


# ---- in this process ----------------------------------------------------------------------------
def run_local(
    spec: Spec, model: tuple[dict, bytes], jobs: list[dict], workers: int, progress: Progress
) -> None:
    """``workers`` threads (0: one per CPU), each running the fused stage on its blocks."""
    import torch

    workers = workers or cpu_count()
    cuda = torch.cuda.is_available()
    threads = torch.get_num_threads()  # a process-wide setting: given back afterwards
    try:
        fused = Fused(model, with_batch_size(spec, cuda), threads=1 if workers > 1 and not cuda else 0)  # fmt: skip
        work = blocks(jobs, sketches_per_block(len(spec.conditions)))
        with ThreadPoolExecutor(max(1, min(workers, len(work)))) as pool:
            for counts in pool.map(fused, work):
                progress(int(counts["ok"][0]), int(counts["failed"][0]))
    finally:
        torch.set_num_threads(threads)


# ---- on Ray -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    kind: str  # "fused" | "split"
    workers: int  # fused: concurrent tasks; split: generator actors
    cpus: float  # per task / actor
    gpus: float  # per actor (split)
    threads: int  # torch threads per task / actor


def choose_placement(cfg, resources: dict) -> Placement:
    """The plan that fits the cluster (see the module's text); ``cfg`` may force either."""
    cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    kind = cfg.placement
    if kind == "auto":
        kind = "split" if gpus >= cfg.gpus_per_actor else "fused"
    if kind == "split":
        actors = cfg.actors or max(1, int(gpus / cfg.gpus_per_actor))
        return Placement("split", actors, 1.0, cfg.gpus_per_actor if gpus else 0.0, 1)
    threads = cfg.threads_per_worker
    return Placement("fused", max(1, int(cpus // threads)), float(threads), 0.0, threads)


_CACHE: dict = {}


def fused_task(batch: dict, model, spec: Spec, threads: int) -> dict:
    """The fused stage as a stateless Ray task (the CPU plan): the generator is built once per
    worker process and kept, so a task lost with its node is simply run again elsewhere.
    ``model``: ``[object reference]`` of ``(model.json, weights)``, fetched on the worker."""
    import ray

    key = (spec, threads)
    if key not in _CACHE:
        _CACHE.clear()  # one job's model at a time
        _CACHE[key] = Fused(ray.get(model[0]), spec, threads)
    return _CACHE[key](batch)


class RayColorizeStage(ColorizeStage):
    """The generator stage as a Ray Data actor: fetches the model from the object store (also
    when Ray restarts the actor)."""

    def __init__(self, model, spec: Spec, threads: int = 0):
        import ray

        super().__init__(ray.get(model[0]), spec, threads)


def run_ray(
    spec: Spec, model: tuple[dict, bytes], jobs: list[dict], cfg, progress: Progress
) -> Placement:
    import ray
    from ray.data import ActorPoolStrategy

    from colorjob.cluster import connect

    connect()
    placement = choose_placement(cfg, ray.cluster_resources())
    spec = with_batch_size(spec, placement.gpus > 0)
    model_ref = [ray.put(model)]  # nested: each actor fetches it, also after a restart
    per_block = sketches_per_block(len(spec.conditions))
    n_blocks = max(1, min(len(jobs), 10_000, -(-len(jobs) // per_block)))
    ds = ray.data.from_items(jobs, override_num_blocks=n_blocks)
    decode_memory = cfg.max_pixels * DECODE_BYTES_PER_PIXEL
    model_memory = 4 * len(model[1]) + spec.batch_size * spec.size**2 * 3 * 16
    work = {"model": model_ref, "spec": spec, "threads": placement.threads}
    # Ray Data retries a task lost with its node without limit by default (max_retries -1).
    if placement.kind == "fused":
        ds = ds.map_batches(
            fused_task, fn_kwargs=work, batch_size=per_block, batch_format="numpy",
            num_cpus=placement.cpus, memory=decode_memory + model_memory,
        )  # fmt: skip
    else:
        ds = ds.map_batches(
            decode_stage, fn_kwargs={"spec": spec}, batch_size=8, batch_format="numpy",
            num_cpus=1, memory=decode_memory,
        )  # fmt: skip
        ds = ds.map_batches(
            RayColorizeStage, fn_constructor_kwargs=work, batch_size=per_block, batch_format="numpy",
            compute=ActorPoolStrategy(min_size=1, max_size=placement.workers),
            num_gpus=placement.gpus, num_cpus=placement.cpus, memory=model_memory,
        )  # fmt: skip
        ds = ds.map_batches(
            encode_stage, fn_kwargs={"spec": spec}, batch_size=spec.batch_size,
            batch_format="numpy", num_cpus=1,
        )  # fmt: skip
    for counts in ds.iter_batches(batch_size=None, batch_format="numpy"):
        progress(int(counts["ok"].sum()), int(counts["failed"].sum()))
    return placement
