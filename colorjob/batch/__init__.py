"""Colour every sketch in a folder in every variant of a conditions grid.

    colorjob batch --input sketches/ --conditions configs/grid.csv --model runs/cpu/best --output out/

Files -> tensors -> model -> tensors -> files, in four rooms:

- :mod:`.grid` and :mod:`.names`: the grid's variants and every output's name (a pure function
  of the sketch's own path and the variant; clashes refused before work);
- :mod:`.plan`: checks before any work (model, grid, locations, inputs), then what is done;
- :mod:`.stages` and :mod:`.executors`: decode -> colorize -> encode and write, in this process
  or on Ray Data (fused actors on CPU clusters, CPU decode/encode around GPU actors otherwise);
- :mod:`.ledger` and :mod:`.lock`: provenance recorded as work completes, the manifest, one run
  per output folder at a time.

Writes ``OUTPUT/<sketch's dir>/<name>__<variant>.<ext>`` at the sketch's own size, each file
atomically; ``OUTPUT/manifest.parquet`` (one row per sketch x variant: input, output, status
ok|skipped|failed, error, one column per attribute, variant, model_id, width, height);
``OUTPUT/contact_sheet.png``; and ``OUTPUT/.colorjob/`` (the ledger, the lock, the resolved
``config.yaml``). A rerun skips only outputs that the same model made for the same values and
that are unchanged since. Input and output may be local folders or URIs (s3://...).
"""

from __future__ import annotations

import io
import logging
import sys
import time
from dataclasses import dataclass, field

import pandas as pd
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from colorjob import config as cfgmod
from colorjob import storage
from colorjob.batch import ledger
from colorjob.batch.config import BatchConfig
from colorjob.batch.executors import choose_executor, run_local, run_ray
from colorjob.batch.grid import BatchError, read_grid
from colorjob.batch.lock import OutputLock
from colorjob.batch.names import safe_name
from colorjob.batch.plan import Plan, clean_temporaries, decide, preflight
from colorjob.batch.stages import Spec
from colorjob.imaging import letterbox, load_rgb

__all__ = ["MANIFEST", "BatchConfig", "BatchError", "Result", "execute", "read_grid", "safe_name"]

log = logging.getLogger(__name__)
MANIFEST = ledger.MANIFEST


@dataclass
class Result:
    """What a batch run did: counts by status, where the manifest is, how long it took."""

    counts: dict = field(default_factory=dict)
    manifest: str = ""
    seconds: float = 0.0
    executor: str = ""

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    def read_manifest(self) -> pd.DataFrame:
        """The run's manifest as one frame (for small jobs and tests; big ones: read its parts)."""
        fs, path = storage.resolve(self.manifest)
        return pd.read_parquet(io.BytesIO(storage.read_bytes(fs, path)))


def execute(cfg: BatchConfig) -> Result:
    """Colour everything; returns the counts (the manifest stays in storage)."""
    t0 = time.perf_counter()
    plan = preflight(cfg)  # everything checkable, before any work or Ray
    run_id = ledger.new_run_id()
    with OutputLock(cfg.output, run_id):
        clean_temporaries(cfg.output)
        decide(plan, cfg, run_id)
        executor = choose_executor(cfg.executor) if plan.jobs else "none"
        log.info(
            f"colorjob batch: {len(plan.sketches)} sketches x {len(plan.grid)} variants = "
            f"{plan.total} images; {plan.skipped} already done, {plan.todo} to make; model "
            f"{plan.meta['model_id']} ({plan.meta['image_size']}px); executor {executor}"
        )
        if plan.jobs:
            _make(plan, cfg, run_id, executor)
        counts = ledger.finish(
            cfg.output, run_id, plan.grid, {s: i for i, s in enumerate(plan.sketches)},
            plan.old_parts,
        )  # fmt: skip
        fs, root = storage.resolve(cfg.output)
        storage.write_atomic(
            fs, storage.join(root, ledger.STATE, "config.yaml"), cfgmod.dump(cfg).encode()
        )
        if cfg.contact_sheet:
            contact_sheet(cfg, plan)
    result = Result(
        counts, storage.join(str(cfg.output), MANIFEST), time.perf_counter() - t0, executor
    )
    log.info(
        f"done in {result.seconds:.1f}s: {counts.get('ok', 0)} ok, {counts.get('skipped', 0)} "
        f"skipped, {counts.get('failed', 0)} failed"
    )
    if result.failed:
        _report_failures(cfg)
    log.info(f"manifest: {result.manifest}")
    return result


def _make(plan: Plan, cfg: BatchConfig, run_id: str, executor: str) -> None:
    spec = Spec(
        input_root=plan.input_root, output_root=cfg.output, fmt=cfg.format,
        size=plan.meta["image_size"], max_pixels=cfg.max_pixels, min_side=cfg.min_side,
        batch_size=cfg.batch_size, precision=cfg.precision, run_id=run_id,
        model_id=plan.meta["model_id"], conditions=tuple(tuple(i) for i in plan.grid["index"]),
        values=tuple(plan.grid["values"]),
    )  # fmt: skip
    bar = tqdm(total=plan.todo, unit="img", desc="colouring", disable=not sys.stderr.isatty())

    def progress(ok: int, failed: int) -> None:
        bar.update(ok + failed)

    model = (plan.meta, plan.weights)
    if executor == "ray":
        placement = run_ray(spec, model, plan.jobs, cfg, progress)
        log.debug(f"ray placement: {placement}")
    else:
        run_local(spec, model, plan.jobs, cfg.workers, progress)
    bar.close()


def _manifest_rows(cfg: BatchConfig, columns: list[str]):
    """The manifest in record batches (it is never loaded whole)."""
    fs, root = storage.resolve(cfg.output)
    with fs.open_input_file(storage.join(root, MANIFEST)) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=65_536, columns=columns):
            yield batch.to_pandas()


def _report_failures(cfg: BatchConfig, shown: int = 10) -> None:
    failed: dict[str, str] = {}
    for df in _manifest_rows(cfg, ["input", "status", "error"]):
        for r in df[df["status"] == "failed"].itertuples():
            failed.setdefault(r.input, r.error)
    for name, error in list(failed.items())[:shown]:
        log.warning(f"failed: {name}: {error}")
    if len(failed) > shown:
        log.warning(f"... and {len(failed) - shown} more inputs (see the manifest)")


def contact_sheet(
    cfg: BatchConfig, plan: Plan, rows: int = 8, cols: int = 8, thumb: int = 96
) -> None:
    """A look at the job: the first sketches down the side, their first variants across."""
    picked: dict[str, dict[str, str]] = {}
    for df in _manifest_rows(cfg, ["input", "output", "status", "variant"]):  # sorted by sketch
        good = df[df["status"] != "failed"]
        new = [s for s in dict.fromkeys(good["input"]) if s not in picked][: rows - len(picked)]
        for r in good[good["input"].isin(set(new) | set(picked))].itertuples():
            picked.setdefault(r.input, {})[r.variant] = r.output
        if len(picked) >= rows and df["input"].iloc[-1] not in picked:
            break
    if not picked:
        return
    variants = list(dict.fromkeys(v for outs in picked.values() for v in outs))[:cols]
    fs_in, in_root = storage.resolve(plan.input_root)
    fs_out, out_root = storage.resolve(cfg.output)
    sheet = Image.new("RGB", ((len(variants) + 1) * thumb, len(picked) * thumb), "white")

    def tile(fs, path):
        return Image.fromarray(letterbox(load_rgb(storage.read_bytes(fs, path)), thumb)[0])

    for r, (sketch, outs) in enumerate(sorted(picked.items())):
        sheet.paste(tile(fs_in, storage.join(in_root, sketch)), (0, r * thumb))
        for c, v in enumerate(variants):
            if v in outs:
                sheet.paste(
                    tile(fs_out, storage.join(out_root, outs[v])), ((c + 1) * thumb, r * thumb)
                )
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    storage.write_atomic(fs_out, storage.join(out_root, "contact_sheet.png"), buf.getvalue())
