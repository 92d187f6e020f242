"""Colour every sketch in a folder in every variant of a conditions grid, at any size.

    colorjob batch --input sketches/ --conditions configs/grid.csv --model runs/cpu/best --output out/

Files -> tensors -> model -> tensors -> files, in rooms:

- :mod:`.config`, :mod:`.grid` and :mod:`.names`: the settings, the grid's variants and every
  output's name (a pure function of the sketch's own path and the variant; clashes refused);
- :mod:`.plan` and :mod:`.listing`: checks before any work, the input listed once and dealt into
  shards by a stable hash (the driver holds one shard's list at a time, never the job);
- :mod:`.shard`: per shard, decide what is done, make the rest in blocks, finish it;
- :mod:`.stages` and :mod:`.executors`: decode -> colorize -> encode and write, in this process
  or on Ray (fused tasks on CPU clusters, CPU decode/encode around GPU actors otherwise);
- :mod:`.ledger` and :mod:`.lock`: provenance per shard as work completes, the manifest per
  shard, one run per output folder at a time.

Layouts (``layout``): ``mirror`` (the default) writes ``OUTPUT/<sketch's dir>/<name>__<variant>.<ext>``
at the sketch's own size, each file atomically; ``shards`` writes one WebDataset-style tar per
shard (``OUTPUT/shards/<xx>/shard-NNNNN.tar``: ``<key>.<ext>`` + ``<key>.json`` per output).
Both write ``OUTPUT/manifest/`` (one Parquet part per shard: input, output, status
ok|skipped|failed, error, one column per attribute, variant, model_id, width, height, run_id),
``OUTPUT/contact_sheet.png`` and ``OUTPUT/.colorjob/`` (the ledger, the lock, the resolved
``config.yaml``). A rerun skips only outputs that the same model made for the same values from
the same sketch and that are unchanged since; ``dry_run`` says what a run would do, doing none.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from colorjob import config as cfgmod
from colorjob import storage
from colorjob.batch import ledger, listing
from colorjob.batch.config import BatchConfig
from colorjob.batch.executors import (
    choose_executor,
    cpu_count,
    decide_local,
    decide_ray,
    run_local,
    run_ray,
)
from colorjob.batch.grid import BatchError, read_grid
from colorjob.batch.lock import OutputLock
from colorjob.batch.names import safe_name
from colorjob.batch.plan import Plan, check_names, clean_temporaries, preflight
from colorjob.batch.shard import REASONS
from colorjob.batch.stages import OutputStorageError, Spec
from colorjob.imaging import letterbox, load_rgb

__all__ = ["MANIFEST", "BatchConfig", "BatchError", "Result", "execute", "read_grid", "safe_name"]

log = logging.getLogger(__name__)
MANIFEST = ledger.MANIFEST


@dataclass
class Result:
    """What a batch run did (or, dry, would do): counts by status, where the manifest is."""

    counts: dict = field(default_factory=dict)
    manifest: str = ""
    seconds: float = 0.0
    executor: str = ""
    shards: int = 0
    reasons: dict = field(default_factory=dict)  # dry run: outputs to make, by reason
    dry_run: bool = False

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    def read_manifest(self) -> pd.DataFrame:
        """The manifest as one frame, sorted by sketch then grid row (small jobs and tests; big
        ones: ``pyarrow.dataset`` or :func:`colorjob.batch.ledger.iter_manifest`)."""
        output = self.manifest.rsplit("/", 1)[0]
        frames = list(ledger.iter_manifest(output))
        if not frames:
            return pd.DataFrame()
        df = pd.concat(frames, ignore_index=True)  # each part sorted by sketch, then grid row
        return df.sort_values("input", kind="stable").reset_index(drop=True)


def spec_for(cfg: BatchConfig, plan: Plan, run_id: str, work_root: str) -> Spec:
    grid, vocab = plan.grid, plan.vocab
    return Spec(
        input_root=plan.source.root, output_root=cfg.output, work_root=work_root, fmt=cfg.format,
        size=plan.meta["image_size"], max_pixels=cfg.max_pixels, min_side=cfg.min_side,
        batch_size=cfg.batch_size, precision=cfg.precision, run_id=run_id,
        model_id=plan.meta["model_id"], conditions=tuple(tuple(i) for i in grid["index"]),
        values=tuple(grid["values"]), variants=tuple(grid["variant"]), attrs=tuple(vocab.names),
        attr_values=tuple(tuple(str(r[a]) for a in vocab.names) for r in grid.to_dict("records")),
        layout=cfg.layout, output=plan.output, overwrite=cfg.overwrite,
        estimated_layer=plan.meta.get("out_channels", 3) != 4,
    )  # fmt: skip


def execute(cfg: BatchConfig, dry_run: bool = False) -> Result:
    """Colour everything (or, ``dry_run``, plan and decide exactly as a run would and say what
    it would do, writing nothing); returns the counts."""
    t0 = time.perf_counter()
    plan = preflight(cfg)  # everything checkable, before any work or Ray
    run_id = ledger.new_run_id()
    executor = "none"
    with contextlib.ExitStack() as stack:
        if not dry_run:
            stack.enter_context(OutputLock(cfg.output, run_id))
            clean_temporaries(cfg.output)
            own_tmp = ledger.tmp_dir(cfg.output, run_id)
            if own_tmp is not None:  # emptied by the renames of everything this run wrote
                stack.callback(shutil.rmtree, own_tmp, True)
        listing_dir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="colorjob-plan-"))
        )
        state = ledger.read_state(cfg.output)
        dealt = listing.deal(plan.source, cfg.format, len(plan.grid), (state or {}).get("shards") or cfg.shards or None, listing_dir)  # fmt: skip
        dealt.skipped.report()
        check_names(dealt, cfg.format)
        executor = choose_executor(cfg.executor)
        if executor == "ray":
            from colorjob.cluster import connect

            connect()
        if not dry_run and state is None:
            ledger.migrate_v1(cfg.output, lambda rel: listing.shard_of(listing.key_hash(rel, cfg.format), dealt.shards))  # fmt: skip
            ledger.write_state(cfg.output, {"version": ledger.STATE_VERSION, "shards": dealt.shards, "layout": cfg.layout})  # fmt: skip
        work_root = _work_root(cfg, run_id, executor, dry_run, stack)
        spec = spec_for(cfg, plan, run_id, work_root)
        decide = decide_ray if executor == "ray" else lambda s, d, w: decide_local(s, d, w, cfg.workers or cpu_count())  # fmt: skip
        decisions = decide(spec, dealt, work_root)
        todo = sum(d.todo for d in decisions.values())
        skipped = sum(d.skipped for d in decisions.values())
        reasons = sum((d.reasons for d in decisions.values()), Counter())
        total = dealt.sketches * len(plan.grid)
        log.info(
            f"colorjob batch{' (dry run)' if dry_run else ''}: {dealt.sketches} sketches x "
            f"{len(plan.grid)} variants = {total} images in {dealt.shards} shard(s) "
            f"({sum(1 for d in decisions.values() if d.todo)} with work), layout {cfg.layout}; "
            f"{skipped} already done, {todo} to make; model {plan.meta['model_id']} "
            f"({plan.meta['image_size']}px); executor {executor if todo else 'none'}"
        )
        for reason, n in reasons.most_common():
            log.info(f"  {n} to make: {REASONS.get(reason, reason)}")
        if dry_run:
            return Result({"ok": 0, "skipped": skipped, "failed": 0, "todo": todo}, storage.join(str(cfg.output), MANIFEST), time.perf_counter() - t0, executor, dealt.shards, dict(reasons), dry_run=True)  # fmt: skip
        counts = _make(cfg, plan, spec, decisions, work_root, executor, todo)
        _drop_stale_manifest(cfg.output, set(dealt.busy), run_id)
        fs, root = storage.resolve(cfg.output)
        storage.write_atomic(fs, storage.join(root, ledger.STATE, "config.yaml"), cfgmod.dump(cfg).encode())  # fmt: skip
        if cfg.contact_sheet:
            contact_sheet(cfg, plan)
    result = Result(counts, storage.join(str(cfg.output), MANIFEST), time.perf_counter() - t0, executor, dealt.shards)  # fmt: skip
    log.info(
        f"done in {result.seconds:.1f}s: {counts.get('ok', 0)} ok, {counts.get('skipped', 0)} "
        f"skipped, {counts.get('failed', 0)} failed"
    )
    if result.failed:
        _report_failures(cfg)
    log.info(f"manifest: {result.manifest}/ (pd.read_parquet reads it whole)")
    if cfg.layout == "shards":
        log.info(how_to_read(cfg.output))
    return result


def _work_root(cfg: BatchConfig, run_id: str, executor: str, dry_run: bool, stack) -> str:
    """Where this run's decisions, tar pieces and results go: a local temporary folder when
    everything runs here, the output folder's state when Ray workers elsewhere need them."""
    if executor == "ray" and not dry_run:
        fs, root = storage.resolve(cfg.output)
        folder = storage.join(root, ledger.RUNS, run_id)
        stack.callback(lambda: storage.is_dir(fs, folder) and fs.delete_dir(folder))
        return (
            f"{cfg.output.split('://', 1)[0]}://{folder}" if storage.is_uri(cfg.output) else folder
        )
    return stack.enter_context(tempfile.TemporaryDirectory(prefix="colorjob-work-"))


def _make(cfg: BatchConfig, plan: Plan, spec: Spec, decisions: dict, work_root: str, executor: str, todo: int) -> dict:  # fmt: skip
    bar = tqdm(
        total=todo, unit="img", desc="colouring", disable=not sys.stderr.isatty() or not todo
    )

    def progress(ok: int, failed: int) -> None:
        bar.update(ok + failed)

    model = (plan.meta, plan.weights)
    try:
        if executor == "ray":
            counts, placement = run_ray(spec, model, decisions, work_root, cfg, progress)
            log.debug(f"ray placement: {placement}")
        else:
            counts = run_local(spec, model, decisions, work_root, cfg.workers, progress)
    except OutputStorageError:
        raise
    except Exception as e:  # noqa: BLE001 - a full disk inside a Ray task: say it in one line
        cause = _cause(e, OutputStorageError)
        if cause is not None:
            raise cause from None
        raise
    finally:
        bar.close()
    return counts


def _cause(err: BaseException | None, kind: type) -> BaseException | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        nxt = getattr(err, "cause", None)  # Ray's RayTaskError
        err = nxt if isinstance(nxt, BaseException) else (err.__cause__ or err.__context__)
    return None


def _drop_stale_manifest(output: str, busy: set[int], run_id: str) -> None:
    """Manifest parts of shards that have no sketches any more (they were removed)."""
    for s in ledger.manifest_shards(output):
        if s not in busy:
            ledger.remove_manifest(output, s)


def how_to_read(output: str) -> str:
    return (
        "read the shards back (WebDataset tars: <key>.<ext> + <key>.json per output):\n"
        f"  ray.data.read_webdataset('{output.rstrip('/')}/shards')                 # Ray Data\n"
        f"  import tarfile, glob; [tarfile.open(p) for p in glob.glob('{output.rstrip('/')}/shards/*/*.tar')]"
    )


def _report_failures(cfg: BatchConfig, shown: int = 10) -> None:
    failed: dict[str, str] = {}
    for df in ledger.iter_manifest(cfg.output, ["input", "status", "error"]):
        for r in df[df["status"] == "failed"].itertuples():
            failed.setdefault(r.input, r.error)
        if len(failed) > 10 * shown:
            break
    for name, error in list(failed.items())[:shown]:
        log.warning(f"failed: {name}: {error}")
    if len(failed) > shown:
        log.warning("... and more inputs failed (see the manifest: status failed)")


def _image_of(cfg: BatchConfig, output: str) -> Image.Image:
    """An output's picture: a file (mirror), or a member of a shard's tar (shards)."""
    import tarfile

    fs, root = storage.resolve(cfg.output)
    if "#" in output:
        tar_path, member = output.split("#", 1)
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(fs, storage.join(root, tar_path)))) as tar:  # fmt: skip
            return load_rgb(tar.extractfile(member).read())
    return load_rgb(storage.read_bytes(fs, storage.join(root, output)))


def contact_sheet(cfg: BatchConfig, plan: Plan, rows: int = 8, cols: int = 8, thumb: int = 96) -> None:  # fmt: skip
    """A look at the job: the first sketches of the first shards down the side, their first
    variants across."""
    picked: dict[str, dict[str, str]] = {}
    for df in ledger.iter_manifest(cfg.output, ["input", "output", "status", "variant"]):
        good = df[df["status"] != "failed"]
        for r in good.itertuples():
            if r.input in picked or len(picked) < rows:
                picked.setdefault(r.input, {})[r.variant] = r.output
        if len(picked) >= rows:
            break
    if not picked:
        return
    variants = list(dict.fromkeys(v for outs in picked.values() for v in outs))[:cols]
    fs_in, in_root = storage.resolve(plan.source.root)
    fs_out, out_root = storage.resolve(cfg.output)
    sheet = Image.new("RGB", ((len(variants) + 1) * thumb, len(picked) * thumb), "white")

    def tile(img: Image.Image) -> Image.Image:
        return Image.fromarray(letterbox(img, thumb)[0])

    for r, (sketch, outs) in enumerate(sorted(picked.items())):
        sheet.paste(tile(load_rgb(storage.read_bytes(fs_in, storage.join(in_root, sketch)))), (0, r * thumb))  # fmt: skip
        for c, v in enumerate(variants):
            if v in outs:
                sheet.paste(tile(_image_of(cfg, outs[v])), ((c + 1) * thumb, r * thumb))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    storage.write_atomic(fs_out, storage.join(out_root, "contact_sheet.png"), buf.getvalue())
