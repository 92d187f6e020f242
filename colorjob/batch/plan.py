"""Planning a batch job: where things are, what to make, and what is already done.

:func:`preflight` checks everything that can be wrong before any work or Ray starts (model,
grid, input and output locations, the inputs and their output names) and :func:`decide` then
reads the output folder's state, under its lock, and splits the planned outputs into work and
skips (recording the skips as they are found, so nothing is held for the whole job).
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass, field

import pandas as pd

from colorjob import storage
from colorjob.batch import ledger
from colorjob.batch.grid import BatchError, read_grid
from colorjob.batch.names import IMAGE_EXTS, clashes, output_rel, sketch_key
from colorjob.conditions import ConditionVocab
from colorjob.export import read_model

log = logging.getLogger(__name__)
SKIP_PART_ROWS = 50_000


@dataclass
class Plan:
    """A checked job: the model, the grid, the sketches and their output names."""

    meta: dict
    weights: bytes
    vocab: ConditionVocab
    grid: pd.DataFrame
    input_root: str  # a path or URI workers can resolve
    sketches: list[str]  # relative to input_root, sorted
    keys: dict[str, str]  # sketch -> its output path without the variant
    jobs: list[dict] = field(default_factory=list)  # sketches with work: path, todo, outs
    todo: int = 0
    skipped: int = 0
    old_parts: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.sketches) * len(self.grid)


# ---- before any work ----------------------------------------------------------------------------
def _norm(uri: str) -> tuple[type, str]:
    fs, path = storage.resolve(uri)
    if not storage.is_uri(uri):
        path = os.path.realpath(path)  # '..' and symlinks resolved: in/../in/out is in/out
    return type(fs), posixpath.normpath(path)


def list_sketches(input_uri: str, output_uri: str) -> tuple[str, list[str]]:
    """``(input root as a path or URI, sorted relative paths)`` of the images to colour.

    The output folder is never listed as input: equal folders are refused, and an output folder
    inside the input is left out (with its manifest, contact sheet and state).
    """
    fs, root = storage.resolve(input_uri)
    in_kind, in_path = _norm(input_uri)
    out_kind, out_path = _norm(output_uri)
    same_fs = in_kind is out_kind
    if same_fs and in_path == out_path:
        raise BatchError(
            f"--output {output_uri} is the input folder: outputs would become inputs on the next "
            "run; write them to another folder (e.g. a sibling or a subfolder)"
        )
    if storage.exists(fs, root):  # a single file
        root, name = root.rsplit("/", 1)
        return _as_uri(input_uri, root), [name]
    if not storage.is_dir(fs, root):
        raise BatchError(f"input {input_uri} does not exist")
    inside = same_fs and out_path.startswith(in_path.rstrip("/") + "/")
    skip = out_path[len(in_path.rstrip("/")) + 1 :] + "/" if inside else None
    files = [
        f for f in storage.list_files(fs, root)
        if f.lower().endswith(IMAGE_EXTS) and storage.TMP_MARK not in f
        and not (skip and f.startswith(skip)) and f"/{ledger.STATE}/" not in f"/{f}"
    ]  # fmt: skip
    if not files:
        raise BatchError(
            f"no images under {input_uri} (looked for {', '.join(IMAGE_EXTS)}, recursively)"
        )
    return _as_uri(input_uri, root), files


def _as_uri(original: str, resolved_root: str) -> str:
    """A resolved root as a path or URI that workers can resolve again."""
    if not storage.is_uri(original):
        return resolved_root
    return f"{original.split('://', 1)[0]}://{resolved_root}"


def output_keys(sketches: list[str], fmt: str) -> dict[str, str]:
    """Each sketch's output key; refuses sketches whose outputs would overwrite each other."""
    keys = {rel: sketch_key(rel, fmt) for rel in sketches}
    found = clashes((rel, key) for rel, key in keys.items())
    if found:
        shown = "\n  ".join(f"{a}  and  {b}  ->  {keys[b]}__<variant>.{fmt}" for a, b in found[:20])
        more = f"\n  ... and {len(found) - 20} more" if len(found) > 20 else ""
        raise BatchError(
            f"{len(found)} pair(s) of sketches would write the same output files (names that "
            f"differ only in letter case are one file on macOS and Windows):\n  {shown}{more}\n"
            "rename one of each pair"
        )
    return keys


def preflight(cfg) -> Plan:
    """Everything checked that can be checked before work starts; raises BatchError & co."""
    meta, weights = read_model(cfg.model)  # every field, the shapes and the model_id
    vocab = ConditionVocab.from_dict(meta["conditions"])
    grid = read_grid(cfg.conditions, vocab)
    storage.check(cfg.input)
    storage.check(cfg.output, writable=True)  # a wrong bucket or missing credentials: here
    input_root, sketches = list_sketches(cfg.input, cfg.output)
    keys = output_keys(sketches, cfg.format)
    return Plan(meta, weights, vocab, grid, input_root, sketches, keys)


# ---- under the output folder's lock -------------------------------------------------------------
def clean_temporaries(output_uri: str) -> int:
    """Delete torn temporary files of earlier runs (safe: the caller holds the folder's lock)."""
    fs, root = storage.resolve(output_uri)
    stray = [f for f in storage.list_files(fs, root) if storage.TMP_MARK in f]
    for f in stray:
        fs.delete_file(storage.join(root, f))
    return len(stray)


def _file_infos(output_uri: str) -> dict[str, tuple[int, int]]:
    import pyarrow.fs as pafs

    fs, root = storage.resolve(output_uri)
    prefix = root.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {
        i.path[len(prefix) :]: (i.size, i.mtime_ns or 0)
        for i in infos
        if i.type == pafs.FileType.File and i.path.startswith(prefix)
    }


def decide(plan: Plan, cfg, run_id: str) -> Plan:
    """Split the planned outputs into skips (recorded in this run's parts as they are found)
    and work (``plan.jobs``). An output is skipped only if the ledger says this model made it
    for these values and the file is still the one recorded; ``overwrite`` redoes everything."""
    fs, root = storage.resolve(cfg.output)
    records, plan.old_parts = ledger.read_ledger(cfg.output)
    if cfg.overwrite:
        records = {}
    files = _file_infos(cfg.output)
    model_id = plan.meta["model_id"]
    names, values = list(plan.grid["variant"]), list(plan.grid["values"])
    skipped = {k: [] for k in ledger.SCHEMA.names}
    unrecorded = chunk = 0
    for rel in plan.sketches:
        todo, outs = [], []
        for v, (name, vals) in enumerate(zip(names, values, strict=True)):
            out = output_rel(plan.keys[rel], name, cfg.format)
            rec = records.get(out)
            ok = (
                rec is not None and rec.model_id == model_id and rec.values == vals
                and rec.input == rel
                and ledger.still_valid(rec, files.get(out), lambda o=out: storage.read_bytes(fs, storage.join(root, o)))
            )  # fmt: skip
            if not ok:
                unrecorded += out in files
                todo.append(str(v))
                outs.append(out)
                continue
            for key, value in (
                ("input", rel), ("output", out), ("status", "skipped"), ("error", ""),
                ("variant", v), ("values", vals), ("model_id", rec.model_id), ("width", rec.width),
                ("height", rec.height), ("size", rec.size), ("mtime_ns", rec.mtime_ns),
                ("sha256", rec.sha256), ("done_at", 0.0),
            ):  # fmt: skip
                skipped[key].append(value)
            if len(skipped["output"]) >= SKIP_PART_ROWS:
                ledger.write_part(cfg.output, run_id, skipped, f"skipped-{chunk:05d}.parquet")
                plan.skipped += len(skipped["output"])
                skipped, chunk = {k: [] for k in ledger.SCHEMA.names}, chunk + 1
        if todo:
            plan.jobs.append({"path": rel, "todo": ",".join(todo), "outs": "\n".join(outs)})
            plan.todo += len(todo)
    ledger.write_part(cfg.output, run_id, skipped, f"skipped-{chunk:05d}.parquet")
    plan.skipped += len(skipped["output"])
    if unrecorded and not cfg.overwrite:
        log.info(
            f"{unrecorded} existing output file(s) were made by another model or for other values, "
            "or have no record of who made them: made again"
        )
    return plan
