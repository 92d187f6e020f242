"""The work of a batch job, stage by stage, with no Ray in it: files -> tensors -> model -> files
(:mod:`colorjob.batch.executors` runs these stages in threads here or as Ray Data stages).

- :func:`decode`: sketch files -> letterboxed uint8 squares at the model's size (any mode, EXIF
  orientation, transparency on white); a file that cannot be decoded becomes an error string.
- :class:`Colorizer`: the generator; crosses decoded sketches with their variants through the one
  inference path (:func:`colorjob.inference.colorize_chunks`), at most ``batch_size`` images at a
  time whatever the grid size.
- :func:`encode_and_write`: crops the letterbox, resizes back to the sketch's own size, encodes,
  writes each file atomically (temp + fsync + rename) and records it in a provenance part.
- :class:`Fused`: all three for a block of sketches in one process, so pixels never leave it (the
  CPU plan, and the local executor). The GPU plan runs them as separate Ray Data stages.

A *job* row is one sketch: ``path`` (relative to the input root), ``todo`` (comma-separated
variant indices) and ``outs`` (their output paths, newline-separated).
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, PngImagePlugin

from colorjob import storage
from colorjob.batch import ledger
from colorjob.imaging import letterbox, load_rgb, unletterbox

FORMATS = {
    "png": ("PNG", {"compress_level": 1}),
    "webp": ("WEBP", {"quality": 90}),
    "jpg": ("JPEG", {"quality": 92}),
}


@dataclass(frozen=True)
class Spec:
    """Everything a worker needs besides the model and its block of jobs (small, picklable)."""

    input_root: str  # a path or URI every worker can resolve
    output_root: str
    fmt: str
    size: int  # the model's square side
    max_pixels: int
    min_side: int
    batch_size: int
    precision: str
    run_id: str
    model_id: str
    conditions: tuple[tuple[int, ...], ...]  # per variant: value indices
    values: tuple[str, ...]  # per variant: the values as canonical JSON


def parse_jobs(batch: dict) -> list[tuple[str, list[int], list[str]]]:
    """``(path, variant indices, output paths)`` of each job row of a batch."""
    return [
        (str(p), [int(v) for v in str(t).split(",")] if t else [], str(o).split("\n") if o else [])
        for p, t, o in zip(batch["path"], batch["todo"], batch["outs"], strict=True)
    ]


# ---- decode -------------------------------------------------------------------------------------
def _reason(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, Image.DecompressionBombError):
        return f"decompression bomb: {msg}"
    if type(e).__name__ == "UnidentifiedImageError":
        return "not an image PIL can read (corrupt or not an image file)"
    return msg if isinstance(e, ValueError) else f"{type(e).__name__}: {msg}"


def decode_sketch(data: bytes, size: int, max_pixels: int, min_side: int):
    """Bytes -> (letterboxed ``size`` x ``size`` RGB, content box, width, height); raises on bad input."""
    img = load_rgb(data, max_pixels)
    w, h = img.size
    if min(w, h) < min_side:
        raise ValueError(f"image is {w}x{h}: too small to colour (min_side={min_side})")
    arr, box = letterbox(img, size)
    return arr, box, w, h


def decode(spec: Spec, paths: list[str]) -> dict:
    """Decode each sketch once: ``sketch`` (n, S, S, 3), ``box``, ``width``, ``height``, ``error``."""
    fs, root = storage.resolve(spec.input_root)
    n = len(paths)
    out = {
        "sketch": np.full((n, spec.size, spec.size, 3), 255, np.uint8),
        "box": np.zeros((n, 4), np.int32), "width": np.zeros(n, np.int32),
        "height": np.zeros(n, np.int32), "error": np.array([""] * n, dtype=object),
    }  # fmt: skip
    Image.MAX_IMAGE_PIXELS = spec.max_pixels  # PIL refuses far larger ones before decoding
    for i, rel in enumerate(paths):
        try:
            data = storage.read_bytes(fs, storage.join(root, rel))
            arr, box, w, h = decode_sketch(data, spec.size, spec.max_pixels, spec.min_side)
            out["sketch"][i], out["box"][i], out["width"][i], out["height"][i] = arr, box, w, h
        except Exception as e:  # noqa: BLE001 - any bad file becomes failed rows, not a failed job
            out["error"][i] = _reason(e)
    return out


# ---- colorize -----------------------------------------------------------------------------------
class Colorizer:
    """The generator on this worker's device, shared by every block it colours."""

    def __init__(self, model: tuple[dict, bytes], spec: Spec, threads: int = 0):
        import torch

        from colorjob.export import build_generator
        from colorjob.inference import prepare

        if threads:
            torch.set_num_threads(threads)
        meta, weights = model
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        g, self.vocab = build_generator(meta, weights)
        self.g = prepare(g, device)
        self.spec = spec
        self.conditions = torch.tensor(spec.conditions, dtype=torch.long)

    def chunks(self, sketches: np.ndarray, pairs: list[tuple[int, int]]):
        """Yield ``(start, images)``: uint8 NHWC outputs of ``pairs[start:start + n]``, where a pair
        is (row of ``sketches``, variant index). Each sketch is moved to the device once."""
        import torch

        from colorjob.inference import colorize_chunks

        if not pairs:
            return
        x = torch.from_numpy(np.ascontiguousarray(sketches)).permute(0, 3, 1, 2)
        index = torch.tensor([i for i, _ in pairs])
        conds = self.conditions[torch.tensor([v for _, v in pairs])]
        spec = self.spec
        for start, y in colorize_chunks(self.g, x, conds, self.vocab, index, spec.batch_size, spec.precision):  # fmt: skip
            yield start, y.permute(0, 2, 3, 1).cpu().numpy()


# ---- encode and write ---------------------------------------------------------------------------
def _encode(pixels: np.ndarray, box, width: int, height: int, spec: Spec, values: str) -> bytes:
    img = unletterbox(pixels, box, width, height)
    pil_format, options = FORMATS[spec.fmt]
    if spec.fmt == "png":  # provenance travels with the file too
        info = PngImagePlugin.PngInfo()
        info.add_text("colorjob", f'{{"model_id": "{spec.model_id}", "values": {values}}}')
        options = {**options, "pnginfo": info}
    buf = io.BytesIO()
    img.save(buf, format=pil_format, **options)
    return buf.getvalue()


def new_record() -> dict:
    return {k: [] for k in ledger.SCHEMA.names}


def encode_and_write(spec: Spec, rows: dict, rec: dict | None = None) -> dict:
    """Write one output per row and record them; returns status counts.

    ``rows``: ``input``, ``output``, ``variant``, ``image`` (NHWC, ignored where ``error``),
    ``box``, ``width``, ``height``, ``error``. The records go to ``rec`` (to be written as one
    part with others, after these files), or without one straight into a provenance part.
    """
    fs, root = storage.resolve(spec.output_root)
    n = len(rows["output"])
    own = rec is None
    rec = new_record() if own else rec
    first = len(rec["output"])
    for k in range(n):
        out, err = str(rows["output"][k]), str(rows["error"][k])
        v, w, h = int(rows["variant"][k]), int(rows["width"][k]), int(rows["height"][k])
        size = mtime = 0
        sha = ""
        if not err:
            try:
                data = _encode(rows["image"][k], rows["box"][k], w, h, spec, spec.values[v])
                path = storage.join(root, out)
                storage.write_atomic(fs, path, data, run=spec.run_id)
                info = fs.get_file_info(path)
                size, mtime, sha = info.size, info.mtime_ns or 0, hashlib.sha256(data).hexdigest()
            except Exception as e:  # noqa: BLE001 - a failed write is a failed row
                err = f"could not write {out}: {type(e).__name__}: {e}"
        for key, value in (
            ("input", str(rows["input"][k])), ("output", out), ("status", "failed" if err else "ok"),
            ("error", err), ("variant", v), ("values", spec.values[v]), ("model_id", spec.model_id),
            ("width", 0 if err else w), ("height", 0 if err else h), ("size", size),
            ("mtime_ns", mtime), ("sha256", sha), ("done_at", time.time()),
        ):  # fmt: skip
            rec[key].append(value)
    if own:
        ledger.write_part(spec.output_root, spec.run_id, rec)
    failed = sum(1 for s in rec["status"][first:] if s == "failed")
    return {"ok": n - failed, "failed": failed}


def cross(jobs, decoded: dict) -> tuple[list[tuple[int, int]], dict]:
    """The (sketch, variant) pairs of decoded jobs: pairs to colour and the rows they become."""
    pairs, rows = [], {k: [] for k in ("input", "output", "variant", "src", "error")}
    for i, (path, todo, outs) in enumerate(jobs):
        for v, out in zip(todo, outs, strict=True):
            rows["input"].append(path)
            rows["output"].append(out)
            rows["variant"].append(v)
            rows["src"].append(i)
            rows["error"].append(decoded["error"][i])
            if not decoded["error"][i]:
                pairs.append((i, v))
    return pairs, rows


def _slice_rows(rows: dict, decoded: dict, keep: list[int], images: np.ndarray | None) -> dict:
    src = [rows["src"][k] for k in keep]
    out = {k: [rows[k][j] for j in keep] for k in ("input", "output", "variant", "error")}
    out["box"], out["width"], out["height"] = decoded["box"][src], decoded["width"][src], decoded["height"][src]  # fmt: skip
    out["image"] = images
    return out


class Fused:
    """Decode -> colorize -> encode and write, for one block of jobs, in this process."""

    def __init__(self, model: tuple[dict, bytes], spec: Spec, threads: int = 0):
        self.spec = spec
        self.colorizer = Colorizer(model, spec, threads)

    def __call__(self, batch: dict) -> dict:
        """One block: its files, then one provenance part recording them."""
        jobs = parse_jobs(batch)
        decoded = decode(self.spec, [p for p, _, _ in jobs])
        pairs, rows = cross(jobs, decoded)
        rec, counts = new_record(), {"ok": 0, "failed": 0}
        failed = [k for k, e in enumerate(rows["error"]) if e]
        if failed:  # undecodable sketches: their rows are recorded as failed, nothing is written
            part = encode_and_write(self.spec, _slice_rows(rows, decoded, failed, None), rec)
            counts = {k: counts[k] + part[k] for k in counts}
        good = [k for k, e in enumerate(rows["error"]) if not e]
        for start, images in self.colorizer.chunks(decoded["sketch"], pairs):
            keep = good[start : start + len(images)]
            part = encode_and_write(self.spec, _slice_rows(rows, decoded, keep, images), rec)
            counts = {k: counts[k] + part[k] for k in counts}
        ledger.write_part(self.spec.output_root, self.spec.run_id, rec)
        return {"ok": np.array([counts["ok"]]), "failed": np.array([counts["failed"]])}


# ---- the same work as separate stages (the GPU plan: CPUs decode and encode, GPUs colour) --------
def decode_stage(batch: dict, spec: Spec) -> dict:
    """Ray Data stage 1: job rows -> job rows with their decoded sketches."""
    decoded = decode(spec, [str(p) for p in batch["path"]])
    return {k: batch[k] for k in ("path", "todo", "outs")} | decoded


def _as_batch(rows: dict, images: np.ndarray) -> dict:
    return {
        "input": np.array(rows["input"], dtype=object), "output": np.array(rows["output"], dtype=object),
        "variant": np.array(rows["variant"], dtype=np.int32), "error": np.array(rows["error"], dtype=object),
        "box": rows["box"], "width": rows["width"], "height": rows["height"], "image": images,
    }  # fmt: skip


class ColorizeStage:
    """Ray Data stage 2 (an actor per GPU): decoded jobs -> blocks of at most ``batch_size``
    coloured images, yielded one by one so a block never grows with the grid."""

    def __init__(self, model: tuple[dict, bytes], spec: Spec, threads: int = 0):
        self.spec = spec
        self.colorizer = Colorizer(model, spec, threads)

    def __call__(self, batch: dict):
        jobs = parse_jobs(batch)
        decoded = {k: batch[k] for k in ("box", "width", "height", "error")}
        pairs, rows = cross(jobs, decoded)
        s = self.spec.size
        failed = [k for k, e in enumerate(rows["error"]) if e]
        if failed:
            empty = np.zeros((len(failed), s, s, 3), np.uint8)
            yield _as_batch(_slice_rows(rows, decoded, failed, None), empty)
        good = [k for k, e in enumerate(rows["error"]) if not e]
        for start, images in self.colorizer.chunks(batch["sketch"], pairs):
            keep = good[start : start + len(images)]
            yield _as_batch(_slice_rows(rows, decoded, keep, None), images)


def encode_stage(batch: dict, spec: Spec) -> dict:
    """Ray Data stage 3: coloured images -> files and a provenance part; returns the counts."""
    counts = encode_and_write(spec, batch)
    return {"ok": np.array([counts["ok"]]), "failed": np.array([counts["failed"]])}
