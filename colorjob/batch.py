"""Colour every sketch in a folder in every variant of a conditions grid, with Ray Data.

    python -m colorjob.batch --input sketches/ --conditions configs/grid.csv --model runs/cpu/best --output out/

Pipeline (files -> tensors -> model -> tensors -> files):

1. *Plan* (driver): list the input images (recursively; png, jpg, webp, bmp, tiff, gif), check the
   grid against the model's vocabulary, and skip every (sketch, variant) whose output already
   exists (unless ``--overwrite``). Bad grids, a bad model directory or an empty input stop here,
   before Ray does any work.
2. *Decode* (CPU tasks): each sketch is read and decoded once (any mode, EXIF orientation,
   transparency on white), letterboxed onto a white square (aspect kept) and resized to the model's
   size. A file that cannot be decoded becomes ``failed`` rows with the reason; the rest go on.
3. *Generate* (an actor pool: one actor per GPU, or one on the CPU): each sketch is crossed with
   its grid rows on the device (the decoded sketch is shared by all its variants) and run through
   the generator in batches (bf16 + channels_last + inference mode on CUDA).
4. *Encode and write* (CPU tasks, spread over every CPU of the cluster): the letterbox is cropped
   off, the image is resized back to the sketch's own size, encoded and written atomically to
   ``OUTPUT/<sketch's dir>/<stem>__<variant>.<ext>``.

Then ``OUTPUT/manifest.parquet`` (one row per sketch x variant: input, output, status
ok|skipped|failed, error, one column per attribute, variant, model_id, width, height) and
``OUTPUT/contact_sheet.png``. Input and output may be local folders or URIs (s3://...).
"""

from __future__ import annotations

import io
import re
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image

from colorjob import cli, storage
from colorjob.conditions import ConditionVocab
from colorjob.errors import ColorjobError
from colorjob.export import DEFAULT_MODEL, read_model, read_model_info
from colorjob.imaging import letterbox, load_rgb

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
FORMATS = {
    "png": ("PNG", {"compress_level": 1}),
    "webp": ("WEBP", {"quality": 90}),
    "jpg": ("JPEG", {"quality": 92}),
}
MANIFEST = "manifest.parquet"
PAPER = (255, 255, 255)


@dataclass
class BatchConfig:
    input: str = "sketches"  # folder or URI of sketches (searched recursively)
    conditions: str = "configs/grid.csv"  # the grid: one row per variant
    model: str = str(DEFAULT_MODEL)  # exported generator folder or URI (default: the shipped one)
    output: str = "out"  # folder or URI for images, manifest and contact sheet
    batch_size: int = 64  # images per generator call
    format: Literal["png", "webp", "jpg"] = "png"
    overwrite: bool = False  # redo outputs that already exist
    fail_on_error: bool = False  # exit non-zero when any input failed
    max_pixels: int = 64_000_000  # larger images fail (decompression bombs)
    min_side: int = 8  # smaller images fail: nothing to colour
    actors: int = 0  # generator actors; 0 = one per GPU, or 1 without GPUs
    gpus_per_actor: float = 1.0
    contact_sheet: bool = True


class BatchError(ColorjobError, ValueError):
    """A problem found before any work starts (grid, model, input)."""


# ---- names ---------------------------------------------------------------------------------------
def safe_name(text: str, fallback: str = "variant") -> str:
    """A file-name-safe token: no separators, no '..', no leading dots; letters, digits, . _ -."""
    text = unicodedata.normalize("NFKC", str(text))
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    text = re.sub(r"\.{2,}", ".", text).strip("._-")
    return text[:100] or fallback


# ---- the grid ------------------------------------------------------------------------------------
def read_grid(path: str, vocab: ConditionVocab) -> pd.DataFrame:
    """The conditions grid, checked against the model: every problem of every row in one error.

    Returns the grid with a ``variant`` column (file-name-safe names) and ``value index`` columns.
    """
    fs, p = storage.resolve(path)
    if not storage.exists(fs, p):
        raise BatchError(f"conditions grid {path} not found")
    try:
        grid = pd.read_csv(io.BytesIO(storage.read_bytes(fs, p)), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise BatchError(
            f"{path} is empty: it needs a header ({', '.join(vocab.names)}[, name]) and rows"
        ) from None
    grid.columns = [c.strip() for c in grid.columns]
    problems = []
    missing = [n for n in vocab.names if n not in grid.columns]
    if missing:
        problems.append(
            f"missing column(s) {', '.join(missing)} (the model's attributes: {', '.join(vocab.names)})"
        )
    extra = [c for c in grid.columns if c not in vocab.names and c != "name"]
    if extra:
        problems.append(
            f"unknown column(s) {', '.join(extra)} (allowed: {', '.join(vocab.names)}, name)"
        )
    if grid.empty:
        problems.append("the grid has no rows")
    if problems:
        raise BatchError(f"{path}: " + "; ".join(problems))
    names, seen_values, seen_names, indices = [], {}, {}, []
    for i, row in enumerate(grid.to_dict("records")):
        line = i + 2
        idx = []
        for a in vocab.attributes:
            value = row[a.name].strip()
            if value not in a.values:
                problems.append(
                    f"row {line}: unknown {a.name} {value!r} (known: {', '.join(a.values)})"
                )
            else:
                idx.append(a.index(value))
        values = tuple(row[n].strip() for n in vocab.names)
        duplicate = values in seen_values
        if duplicate:
            problems.append(
                f"row {line}: duplicates row {seen_values[values]} ({', '.join(values)})"
            )
        seen_values.setdefault(values, line)
        name = safe_name(row.get("name", "").strip() or "_".join(values))
        if name in seen_names and not duplicate:
            problems.append(
                f"row {line}: variant name {name!r} is already used by row {seen_names[name]}"
            )
        seen_names.setdefault(name, line)
        names.append(name)
        indices.append(idx)
    if problems:
        raise BatchError(f"{path} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    grid = grid[vocab.names].apply(lambda c: c.str.strip())
    grid["variant"] = names
    grid["index"] = indices
    return grid


# ---- planning ------------------------------------------------------------------------------------
def output_rel(sketch_rel: str, variant: str, ext: str, stems: dict[str, str]) -> str:
    p = PurePosixPath(sketch_rel)
    parts = [safe_name(x, "_") for x in p.parent.parts if x not in ("", ".", "/")]
    return "/".join([*parts, f"{stems[sketch_rel]}__{variant}.{ext}"])


def unique_stems(sketches: list[str]) -> dict[str, str]:
    """Stem per sketch; ``a.png`` and ``a.jpg`` in one folder become ``a.png`` / ``a.jpg`` stems."""
    stems, count = {}, {}
    for rel in sketches:
        p = PurePosixPath(rel)
        count[(str(p.parent), safe_name(p.stem, "sketch"))] = (
            count.get((str(p.parent), safe_name(p.stem, "sketch")), 0) + 1
        )
    for rel in sketches:
        p = PurePosixPath(rel)
        s = safe_name(p.stem, "sketch")
        stems[rel] = s if count[(str(p.parent), s)] == 1 else safe_name(p.name, "sketch")
    return stems


def list_sketches(cfg: BatchConfig) -> tuple[str, list[str]]:
    """``(input root, relative paths)`` of the images to colour; the output folder is left out."""
    fs, root = storage.resolve(cfg.input)
    if storage.exists(fs, root):  # a single file
        root, name = root.rsplit("/", 1)
        return root, [name]
    if not storage.is_dir(fs, root):
        raise BatchError(f"input {cfg.input} does not exist")
    ofs, oroot = storage.resolve(cfg.output)
    inside = (
        oroot[len(root) + 1 :] + "/"
        if oroot.startswith(root + "/") and type(ofs) is type(fs)
        else None
    )
    files = [
        f for f in storage.list_files(fs, root)
        if f.lower().endswith(IMAGE_EXTS) and storage.TMP_MARK not in f and not (inside and f.startswith(inside))
    ]  # fmt: skip
    if not files:
        raise BatchError(
            f"no images under {cfg.input} (looked for {', '.join(IMAGE_EXTS)}, recursively)"
        )
    return root, files


# ---- pipeline stages (run in Ray workers) --------------------------------------------------------
def decode_sketch(
    data: bytes, size: int, max_pixels: int, min_side: int
) -> tuple[np.ndarray, tuple, int, int]:
    """Bytes -> (letterboxed ``size`` x ``size`` RGB, content box, width, height); raises on bad input."""
    img = load_rgb(data, max_pixels)
    w, h = img.size
    if min(w, h) < min_side:
        raise ValueError(f"image is {w}x{h}: too small to colour (min_side={min_side})")
    arr, box = letterbox(img, size)
    return arr, box, w, h


def _reason(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, Image.DecompressionBombError):
        return f"decompression bomb: {msg}"
    if type(e).__name__ == "UnidentifiedImageError":
        return "not an image PIL can read (corrupt or not an image file)"
    return msg if isinstance(e, ValueError) else f"{type(e).__name__}: {msg}"


def decode_batch(batch: dict, input_root: str, size: int, max_pixels: int, min_side: int) -> dict:
    fs, root = storage.resolve(input_root)
    n = len(batch["path"])
    sketches = np.full((n, size, size, 3), 255, np.uint8)
    boxes = np.zeros((n, 4), np.int32)
    wh = np.zeros((n, 2), np.int32)
    errors = []
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL refuses far larger ones before decoding
    for i, rel in enumerate(batch["path"]):
        try:
            sketches[i], boxes[i], wh[i, 0], wh[i, 1] = decode_sketch(
                storage.read_bytes(fs, storage.join(root, rel)), size, max_pixels, min_side
            )
            errors.append("")
        except Exception as e:  # noqa: BLE001 - any bad file becomes a failed row, not a failed job
            errors.append(_reason(e))
    return {
        "path": batch["path"], "todo": batch["todo"], "outs": batch["outs"], "sketch": sketches, "box": boxes,
        "width": wh[:, 0], "height": wh[:, 1], "error": np.array(errors, dtype=object),
    }  # fmt: skip


class Colorizer:
    """Generator actor: crosses each sketch with its variants on the device and runs the model."""

    def __init__(self, model_ref, conditions: list[list[int]], batch_size: int):
        import ray
        import torch

        from colorjob.export import build_generator
        from colorjob.inference import prepare

        meta, weights = ray.get(model_ref[0])  # a nested ref: fetched here, not a restart-fragile argument
        self.torch = torch
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        g, self.vocab = build_generator(meta, weights)
        self.g, self.batch_size, self.size = prepare(g, device), batch_size, meta["image_size"]
        self.conditions = torch.tensor(conditions, dtype=torch.long)  # (V, A)

    def __call__(self, batch: dict) -> dict:
        from colorjob.inference import colorize

        torch = self.torch
        todo = [[int(v) for v in t.split(",")] if t else [] for t in batch["todo"]]
        out_paths = [o.split("\n") for o in batch["outs"]]
        ok = [i for i, e in enumerate(batch["error"]) if not e]
        pairs = [(i, v) for i in range(len(todo)) for v in todo[i]]
        images = np.full((len(pairs), self.size, self.size, 3), 255, np.uint8)
        errors = [batch["error"][i] for i, _ in pairs]
        todo_pairs = [k for k, (i, _) in enumerate(pairs) if not batch["error"][i]]
        if ok and todo_pairs:
            pos = {i: j for j, i in enumerate(ok)}
            sketches = torch.from_numpy(np.ascontiguousarray(batch["sketch"][ok])).permute(0, 3, 1, 2)
            s_idx = torch.tensor([pos[pairs[k][0]] for k in todo_pairs])
            conds = self.conditions[torch.tensor([pairs[k][1] for k in todo_pairs])]
            out = colorize(self.g, sketches, conds, self.vocab, s_idx, self.batch_size)
            images[todo_pairs] = out.permute(0, 2, 3, 1).cpu().numpy()
        src = [i for i, _ in pairs]
        return {
            "path": np.array([batch["path"][i] for i in src], dtype=object),
            "variant": np.array([v for _, v in pairs], dtype=np.int32),
            "output": np.array([out_paths[i][todo[i].index(v)] for i, v in pairs], dtype=object),
            "image": images, "box": batch["box"][src] if pairs else np.zeros((0, 4), np.int32),
            "width": batch["width"][src], "height": batch["height"][src],
            "error": np.array(errors, dtype=object),
        }  # fmt: skip


def encode_batch(batch: dict, output_root: str, fmt: str) -> dict:
    fs, root = storage.resolve(output_root)
    pil_format, options = FORMATS[fmt]
    status, errors, out_rel, widths, heights = [], [], [], [], []
    for k in range(len(batch["path"])):
        rel = batch["output"][k]
        out_rel.append(rel)
        err = batch["error"][k]
        w, h = int(batch["width"][k]), int(batch["height"][k])
        if not err:
            try:
                x0, y0, x1, y1 = (int(v) for v in batch["box"][k])
                img = Image.fromarray(batch["image"][k]).crop((x0, y0, x1, y1))
                if img.size != (w, h):
                    img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
                buf = io.BytesIO()
                img.save(buf, format=pil_format, **options)
                storage.write_atomic(fs, storage.join(root, rel), buf.getvalue())
            except Exception as e:  # noqa: BLE001 - a failed write is a failed row
                err = f"could not write {rel}: {type(e).__name__}: {e}"
        status.append("failed" if err else "ok")
        errors.append(err)
        widths.append(w if not err else 0)
        heights.append(h if not err else 0)
    return {
        "input": np.array(batch["path"], dtype=object), "output": np.array(out_rel, dtype=object),
        "variant": batch["variant"], "status": np.array(status, dtype=object), "error": np.array(errors, dtype=object),
        "width": np.array(widths, np.int32), "height": np.array(heights, np.int32),
    }  # fmt: skip


# ---- the job -------------------------------------------------------------------------------------
def plan(cfg: BatchConfig):
    """Everything checked and decided before Ray starts: model, grid, inputs, what to skip."""
    meta = read_model_info(cfg.model)
    vocab = ConditionVocab.from_dict(meta["conditions"])
    grid = read_grid(cfg.conditions, vocab)
    if cfg.batch_size < 1:
        raise BatchError("batch_size must be at least 1")
    storage.check(cfg.input)
    storage.check(cfg.output, writable=True)  # a wrong bucket or missing credentials: here, clearly
    input_root, sketches = list_sketches(cfg)
    stems = unique_stems(sketches)
    ofs, oroot = storage.resolve(cfg.output)
    existing = set(storage.list_files(ofs, oroot)) if storage.is_dir(ofs, oroot) else set()
    for stray in [f for f in existing if storage.TMP_MARK in f]:  # torn writes of a killed run
        ofs.delete_file(storage.join(oroot, stray))
    jobs, skipped = [], []
    for rel in sketches:
        todo, outs = [], []
        for v, variant in enumerate(grid["variant"]):
            out = output_rel(rel, variant, cfg.format, stems)
            if out in existing and not cfg.overwrite:
                skipped.append(
                    {"input": rel, "output": out, "variant": v, "status": "skipped", "error": ""}
                )
            else:
                todo.append(str(v))
                outs.append(out)
        if todo:  # variant indices and their output paths travel with the sketch
            jobs.append({"path": rel, "todo": ",".join(todo), "outs": "\n".join(outs)})
    return meta, vocab, grid, input_root, sketches, jobs, skipped


def run(cfg: BatchConfig) -> pd.DataFrame:
    """Colour everything; returns the manifest (also written to OUTPUT/manifest.parquet)."""
    meta, vocab, grid, input_root, sketches, jobs, skipped = plan(cfg)
    t0 = time.perf_counter()
    total = len(sketches) * len(grid)
    print(
        f"colorjob.batch: {len(sketches)} sketches x {len(grid)} variants = {total} images; "
        f"{len(skipped)} already done, {total - len(skipped)} to make; model {meta['model_id']} ({meta['image_size']}px)"
    )
    rows = [pd.DataFrame(skipped)] if skipped else []
    if jobs:
        rows.append(_pipeline(cfg, meta, grid, input_root, jobs))
    manifest = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    manifest = _finish_manifest(manifest, cfg, grid, meta)
    ok, sk, failed = (int((manifest["status"] == s).sum()) for s in ("ok", "skipped", "failed"))
    print(f"done in {time.perf_counter() - t0:.1f}s: {ok} ok, {sk} skipped, {failed} failed")
    if failed:
        bad = manifest[manifest["status"] == "failed"].drop_duplicates("input")
        for r in bad.head(10).itertuples():
            print(f"  failed: {r.input}: {r.error}")
        if len(bad) > 10:
            print(f"  ... and {len(bad) - 10} more inputs (see the manifest)")
    if cfg.contact_sheet:
        _contact_sheet(cfg, input_root, manifest)
    print(f"manifest: {storage.join(str(cfg.output), MANIFEST)}")
    return manifest


def _pipeline(cfg, meta, grid, input_root, jobs) -> pd.DataFrame:
    import ray
    from ray.data import ActorPoolStrategy

    if not ray.is_initialized():
        ray.init(configure_logging=True, logging_level="warning", log_to_driver=True)
    cpus = ray.cluster_resources().get("CPU", 1)
    gpus = ray.cluster_resources().get("GPU", 0)
    model_ref = [ray.put(read_model(cfg.model))]
    conditions = list(grid["index"])
    ds = ray.data.from_items(jobs, override_num_blocks=max(1, min(len(jobs), int(cpus) * 4)))
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"input_root": _uri(cfg.input, input_root), "size": meta["image_size"], "max_pixels": cfg.max_pixels, "min_side": cfg.min_side},
        batch_size=8, batch_format="numpy", num_cpus=0.5,  # != the actor's: keeps decoding out of it
    )  # fmt: skip
    if gpus >= 1:
        n = cfg.actors or int(gpus / cfg.gpus_per_actor)
        compute, resources = (
            ActorPoolStrategy(min_size=1, max_size=n),
            {"num_gpus": cfg.gpus_per_actor, "num_cpus": 1},
        )
    else:
        # One CPU actor; it must leave CPUs for the decode and encode tasks, or the pool waits
        # forever for read tasks that cannot be scheduled.
        compute, resources = (
            ActorPoolStrategy(size=cfg.actors or 1),
            {"num_cpus": max(0.5, min(cpus - 1, cpus / 2))},
        )
    per_call = max(1, cfg.batch_size // max(1, len(grid)))
    ds = ds.map_batches(
        Colorizer, fn_constructor_kwargs={"model_ref": model_ref, "conditions": conditions, "batch_size": cfg.batch_size},
        batch_size=per_call, batch_format="numpy", compute=compute, **resources,
    )  # fmt: skip
    ds = ds.map_batches(
        encode_batch, fn_kwargs={"output_root": cfg.output, "fmt": cfg.format},
        batch_size=32, batch_format="numpy", num_cpus=1,
    )  # fmt: skip
    parts = [pd.DataFrame(b) for b in ds.iter_batches(batch_format="pandas", batch_size=None)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _uri(original: str, resolved_root: str) -> str:
    """The input root as a path or URI that workers can resolve again."""
    if not storage.is_uri(original):
        return resolved_root
    scheme = original.split("://", 1)[0]
    return f"{scheme}://{resolved_root}"


def _finish_manifest(
    manifest: pd.DataFrame, cfg: BatchConfig, grid: pd.DataFrame, meta: dict
) -> pd.DataFrame:
    names = list(grid.columns.drop(["variant", "index"]))
    if manifest.empty:
        return manifest
    manifest = manifest.sort_values(
        ["input", "variant"], key=lambda c: c.astype(int) if c.name == "variant" else c
    )
    manifest = manifest.reset_index(drop=True)  # sketches in name order, variants in grid order
    v = manifest["variant"].astype(int).to_numpy()
    for n in names:
        manifest[n] = grid[n].to_numpy()[v]
    manifest["variant"] = grid["variant"].to_numpy()[v]
    manifest["model_id"] = meta["model_id"]
    manifest = _fill_sizes(manifest, cfg)
    cols = ["input", "output", "status", "error", *names, "variant", "model_id", "width", "height"]
    manifest = manifest[cols]
    manifest["width"] = manifest["width"].astype("int32")
    manifest["height"] = manifest["height"].astype("int32")
    buf = io.BytesIO()
    manifest.to_parquet(buf, index=False)
    fs, root = storage.resolve(cfg.output)
    storage.write_atomic(fs, storage.join(root, MANIFEST), buf.getvalue())
    return manifest


def _fill_sizes(manifest: pd.DataFrame, cfg: BatchConfig) -> pd.DataFrame:
    """Width/height of skipped outputs: from the previous manifest, else from the file's header."""
    skipped = manifest["status"] == "skipped"
    if not skipped.any():
        return manifest
    fs, root = storage.resolve(cfg.output)
    known = {}
    try:
        old = pd.read_parquet(io.BytesIO(storage.read_bytes(fs, storage.join(root, MANIFEST))))
        known = {
            o: (w, h)
            for o, w, h in zip(old["output"], old["width"], old["height"], strict=True)
            if w > 0
        }
    except Exception:  # noqa: BLE001 - no or unreadable previous manifest: read headers instead
        pass
    widths, heights = manifest["width"].to_numpy(copy=True), manifest["height"].to_numpy(copy=True)
    widths = np.where(pd.isna(widths), 0, widths).astype(np.int64)
    heights = np.where(pd.isna(heights), 0, heights).astype(np.int64)
    for k in np.flatnonzero(skipped.to_numpy()):
        out = manifest["output"].iat[k]
        if out not in known:
            with fs.open_input_file(storage.join(root, out)) as f:
                known[out] = Image.open(f).size
        widths[k], heights[k] = known[out]
    manifest["width"], manifest["height"] = widths, heights
    return manifest


def _contact_sheet(
    cfg: BatchConfig,
    input_root: str,
    manifest: pd.DataFrame,
    rows: int = 8,
    cols: int = 8,
    thumb: int = 96,
) -> None:
    good = manifest[manifest["status"] != "failed"]
    if good.empty:
        return
    fs_in, _ = storage.resolve(_uri(cfg.input, input_root))
    fs_out, out_root = storage.resolve(cfg.output)
    sketches = sorted(good["input"].unique())[:rows]
    variants = list(dict.fromkeys(good["variant"]))[:cols]
    sheet = Image.new("RGB", ((len(variants) + 1) * thumb, len(sketches) * thumb), "white")

    def tile(fs, path):
        return Image.fromarray(letterbox(load_rgb(storage.read_bytes(fs, path)), thumb)[0])

    for r, sk in enumerate(sketches):
        sheet.paste(tile(fs_in, storage.join(input_root, sk)), (0, r * thumb))
        outs = good[good["input"] == sk].set_index("variant")["output"]
        for c, v in enumerate(variants):
            if v in outs:
                sheet.paste(
                    tile(fs_out, storage.join(out_root, outs[v])), ((c + 1) * thumb, r * thumb)
                )
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    storage.write_atomic(fs_out, storage.join(out_root, "contact_sheet.png"), buf.getvalue())


# ---- command line --------------------------------------------------------------------------------
def build_parser(prog: str = "python -m colorjob.batch"):
    p = cli.parser(
        prog,
        "Colour every sketch under --input in every variant of the --conditions grid with a trained "
        "generator, on Ray Data (local Ray, or the cluster you are on). Writes one image per "
        "(sketch, variant), manifest.parquet and contact_sheet.png to --output. Rerunning skips "
        "what is already done.",
        "grid.csv: one column per condition attribute of the model (e.g. hair,shirt) and an "
        "optional name column for the output file names; configs/grid.csv has all 25 seed combinations.",
    )
    cli.flag(p, "--input", "input", help="folder (or URI) of sketches, searched recursively; or one image")  # fmt: skip
    cli.flag(p, "--conditions", "conditions", help="grid CSV: one row per colour variant")
    cli.flag(p, "--model", "model", help="exported generator folder (train's OUT/best, tune's best/); default: the shipped model")  # fmt: skip
    cli.flag(p, "--output", "output", help="folder (or URI) for the images, manifest and contact sheet")  # fmt: skip
    cli.flag(p, "--batch-size", "batch_size", type=int, help="images per generator call (default 64)")  # fmt: skip
    cli.flag(p, "--format", "format", choices=list(FORMATS), help="output image format (default png)")  # fmt: skip
    cli.flag(p, "--overwrite", "overwrite", action="store_true", default=None, help="redo outputs that already exist")  # fmt: skip
    cli.flag(p, "--fail-on-error", "fail_on_error", action="store_true", default=None, help="exit 1 if any input failed")  # fmt: skip
    return p


def command(args) -> int:
    cfg = cli.load(BatchConfig, args)
    manifest = run(cfg)
    failed = int((manifest["status"] == "failed").sum()) if len(manifest) else 0
    return 1 if failed and cfg.fail_on_error else 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    return cli.run(build_parser(prog or "python -m colorjob.batch"), command, argv)


if __name__ == "__main__":
    sys.exit(main())
