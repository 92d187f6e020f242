"""Where a batch job's work runs: in this process, or on Ray across a cluster.

``executor: auto`` (the default) runs on Ray when there is a cluster to use (``RAY_ADDRESS`` is
set, as ``ray job submit`` does) and in this process otherwise: on one machine, threads running
decode -> model -> encode keep every core busy (PyTorch and Pillow release the GIL) without
Ray's ~10 s of start-up.

Either way the work has three steps, each per shard (:mod:`colorjob.batch.shard`): *decide*
(what of the shard is done), *make* (its blocks), *finish* (its manifest and ledger parts, once
all its blocks are done). What the driver holds is per shard (counts, and the ids of the blocks
finished in shards still open), never per output.

On Ray the placement follows the cluster's resources (``placement: auto``):

- **fused** (no GPUs): tasks that each decode, colour and encode a block, holding
  ``threads_per_worker`` CPUs and running torch on that many threads (tasks x threads = the
  CPUs); pixels never cross the object store. The generator is built once per worker process.
  Tasks, not actors: a task lost with its node is retried on any node with a free CPU.
- **split** (GPUs): decode tasks on the CPUs -> one generator actor per GPU -> encode tasks
  spread over every CPU of the cluster (PNG encoding is what bounds a GPU node).

Decode work reserves Ray ``memory`` for the largest image it may decode (``max_pixels``), so a
node never runs more decoders than fit in its memory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

from colorjob.batch import ledger
from colorjob.batch import shard as shards
from colorjob.batch.stages import ColorizeStage, Fused, Spec, decode_stage, encode_stage
from colorjob.imaging import DECODE_BYTES_PER_PIXEL

Progress = Callable[[int, int], None]  # (ok, failed) of a finished block
AUTO_BATCH = {
    "cpu": 8,
    "gpu": 128,
}  # generator batch: small is faster on CPUs (docs/performance.md)


def choose_executor(kind: str) -> str:
    """``auto``: Ray on a cluster (``RAY_ADDRESS``), this process otherwise."""
    if kind != "auto":
        return kind
    from colorjob.cluster import joins_cluster

    return "ray" if joins_cluster() else "local"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def with_batch_size(spec: Spec, gpu: bool) -> Spec:
    """``spec`` with ``batch_size: 0`` (auto) resolved for the device that colours."""
    if spec.batch_size:
        return spec
    return dataclasses.replace(spec, batch_size=AUTO_BATCH["gpu" if gpu else "cpu"])


@dataclass
class Open:
    """A shard whose blocks are being made: how many images it needs, the results seen."""

    todo: int
    done: int = 0
    seen: set = dataclasses.field(default_factory=set)


# ---- in this process ----------------------------------------------------------------------------
def decide_local(spec: Spec, dealt, work_root: str, workers: int) -> dict[int, shards.Decision]:
    """Decide every shard with inputs (threads: deciding is file-system bound)."""
    with ThreadPoolExecutor(max(1, min(8, 2 * workers))) as pool:
        futures = {s: pool.submit(shards.decide, spec, s, dealt.inputs(s), work_root) for s in dealt.busy}  # fmt: skip
        return {s: f.result() for s, f in futures.items()}


def run_local(spec: Spec, model: tuple[dict, bytes], decisions: dict, work_root: str, workers: int, progress: Progress) -> dict:  # fmt: skip
    """``workers`` threads (0: one per CPU), each running the fused stage on its blocks; a
    shard is finished as soon as its last block is done. Returns the counts by status."""
    import torch

    workers = workers or cpu_count()
    cuda = torch.cuda.is_available()
    threads = torch.get_num_threads()  # a process-wide setting: given back afterwards
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        fused = Fused(model, with_batch_size(spec, cuda), threads=1 if workers > 1 and not cuda else 0)  # fmt: skip
        pending: dict = {}  # future -> shard
        remaining: dict[int, int] = {}
        finishing = []

        def drain() -> None:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in done:
                s = pending.pop(f)
                got = f.result()
                progress(int(got["ok"][0]), int(got["failed"][0]))
                remaining[s] -= 1
                if remaining[s] == 0:
                    finishing.append(pool.submit(shards.finish, spec, work_root, s))

        for s, d in decisions.items():
            if d.unchanged:
                counts["skipped"] += d.skipped
                continue
            ledger.remove_manifest(spec.output_root, s)  # says nothing until it is finished
            work = shards.blocks(work_root, s) if d.todo else []
            remaining[s] = len(work)
            if not work:
                finishing.append(pool.submit(shards.finish, spec, work_root, s))
                continue
            for b in work:
                while len(pending) >= 2 * max(1, workers):
                    drain()
                pending[pool.submit(fused, b)] = s
        while pending:
            drain()
        for f in finishing:
            got = f.result()
            for k in counts:
                counts[k] += got.get(k, 0)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # an interrupt stops queued blocks at once
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)
    return counts


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

    from colorjob.batch.stages import block_of

    key = (spec, threads)
    if key not in _CACHE:
        _CACHE.clear()  # one job's model at a time
        _CACHE[key] = Fused(ray.get(model[0]), spec, threads)
    got = _CACHE[key](block_of({k: v[0] for k, v in batch.items()}))
    return got | {"id": [str(batch["block"][0])]}


class RayColorizeStage(ColorizeStage):
    """The generator stage as a Ray Data actor: fetches the model from the object store (also
    when Ray restarts the actor)."""

    def __init__(self, model, spec: Spec, threads: int = 0):
        import ray

        super().__init__(ray.get(model[0]), spec, threads)


def _encode_task(batch: dict, spec: Spec) -> dict:
    """Ray Data stage 3, per (shard, block) of the rows it gets (Ray Data may join the batches
    the generator stage yielded): files and records; the counts with an id per group."""
    import hashlib

    import numpy as np

    keys = list(zip(batch["shard"], batch["block"], strict=True))
    out = {"shard": [], "ok": [], "failed": [], "id": []}
    for key in dict.fromkeys(keys):
        idx = np.array([i for i, k in enumerate(keys) if k == key])
        part = {
            k: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx])
            for k, v in batch.items()
        }
        got = encode_stage(part, spec)
        out["shard"].append(int(key[0]))
        out["ok"].append(int(got["ok"][0]))
        out["failed"].append(int(got["failed"][0]))
        out["id"].append(
            hashlib.sha1("\n".join(map(str, part["output"])).encode()).hexdigest()[:16]
        )
    return {k: np.array(v) for k, v in out.items()}


def _shard_blocks(row: dict, work_root: str) -> list[dict]:
    """Ray Data flat_map: a shard id -> its blocks of work, read from its decision."""
    return shards.blocks(work_root, int(row["shard"]))


def decide_ray(spec: Spec, dealt, work_root: str) -> dict[int, shards.Decision]:
    """Decide every shard with inputs as Ray tasks (at most a few in flight per CPU)."""
    import ray

    task = ray.remote(num_cpus=0.25, max_retries=-1)(lambda sp, s, data, wr: shards.decide(sp, s, _table(data), wr))  # fmt: skip
    out, running = {}, {}
    limit = max(4, int(ray.cluster_resources().get("CPU", 1)) * 4)
    for s in dealt.busy:
        if len(running) >= limit:
            ready, _ = ray.wait(list(running), num_returns=1)
            for r in ready:
                out[running.pop(r)] = ray.get(r)
        running[task.remote(spec, s, dealt.path(s).read_bytes(), work_root)] = s
    for r, s in running.items():
        out[s] = ray.get(r)
    return out


def _table(data: bytes):
    from colorjob.batch.listing import read_table_bytes

    return read_table_bytes(data)


def run_ray(spec: Spec, model: tuple[dict, bytes], decisions: dict, work_root: str, cfg, progress: Progress) -> tuple[dict, Placement]:  # fmt: skip
    import ray
    from ray.data import ActorPoolStrategy

    placement = choose_placement(cfg, ray.cluster_resources())
    spec = with_batch_size(spec, placement.gpus > 0)
    finish = ray.remote(num_cpus=0.25, max_retries=-1)(shards.finish)
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    opened: dict[int, Open] = {}
    finishing = []
    for s, d in decisions.items():
        if not d.unchanged:
            ledger.remove_manifest(spec.output_root, s)  # says nothing until it is finished
        if d.unchanged:
            counts["skipped"] += d.skipped
        elif d.todo == 0:
            finishing.append(finish.remote(spec, work_root, s))
        else:
            opened[s] = Open(d.todo)
    if opened:
        model_ref = [ray.put(model)]  # nested: each task/actor fetches it, also after a restart
        decode_memory = cfg.max_pixels * DECODE_BYTES_PER_PIXEL
        model_memory = 4 * len(model[1]) + spec.batch_size * spec.size**2 * 3 * 16
        work = {"model": model_ref, "spec": spec, "threads": placement.threads}
        ds = ray.data.from_items([{"shard": s} for s in sorted(opened)], override_num_blocks=max(1, min(len(opened), 1000)))  # fmt: skip
        ds = ds.flat_map(_shard_blocks, fn_kwargs={"work_root": work_root}, num_cpus=0.25)
        # Ray Data retries a task lost with its node without limit by default (max_retries -1).
        if placement.kind == "fused":
            ds = ds.map_batches(
                fused_task, fn_kwargs=work, batch_size=1, batch_format="numpy",
                num_cpus=placement.cpus, memory=decode_memory + model_memory,
            )  # fmt: skip
        else:
            ds = ds.map_batches(decode_stage, fn_kwargs={"spec": spec}, batch_size=1, batch_format="numpy", num_cpus=1, memory=decode_memory)  # fmt: skip
            ds = ds.map_batches(
                RayColorizeStage, fn_constructor_kwargs=work, batch_size=1, batch_format="numpy",
                compute=ActorPoolStrategy(min_size=1, max_size=placement.workers),
                num_gpus=placement.gpus, num_cpus=placement.cpus, memory=model_memory,
            )  # fmt: skip
            ds = ds.map_batches(_encode_task, fn_kwargs={"spec": spec}, batch_size=None, batch_format="numpy", num_cpus=1)  # fmt: skip
        for got in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for s, ok, failed, rid in zip(got["shard"], got["ok"], got["failed"], got["id"], strict=True):  # fmt: skip
                o = opened.get(int(s))
                if o is None or rid in o.seen:
                    continue  # a retried task's result seen twice: counted once
                o.seen.add(rid)
                o.done += int(ok) + int(failed)
                progress(int(ok), int(failed))
                if o.done >= o.todo:
                    finishing.append(finish.remote(spec, work_root, int(s)))
                    del opened[int(s)]
        for s in list(opened):  # blocks that produced nothing (cannot happen; finish anyway)
            finishing.append(finish.remote(spec, work_root, s))
    for got in ray.get(finishing):
        for k in counts:
            counts[k] += got.get(k, 0)
    return counts, placement
