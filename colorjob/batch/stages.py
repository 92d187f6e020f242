"""The work of a batch job, stage by stage, with no Ray in it: files -> tensors -> model -> files
(:mod:`colorjob.batch.executors` runs these stages in threads here or as Ray Data stages).

- :func:`decode`: sketch files -> letterboxed uint8 squares at the model's size (any mode, EXIF
  orientation, transparency on white), and each sketch's SHA-256 (what provenance records); a
  file that cannot be decoded becomes an error string.
- :class:`Colorizer`: the generator; crosses decoded sketches with their variants through the one
  inference path (:func:`colorjob.inference.colorize_chunks`), at most ``batch_size`` images at a
  time whatever the grid size.
- :func:`record`: crops the letterbox, resizes back to the sketch's own size, encodes, and
  writes: mirror layout, each file atomically (temp + fsync + rename) and then a ledger progress
  part recording them; shards layout, a piece of the shard's tar and its result rows.
- :class:`Fused`: all three for a block of one shard in one process, so pixels never leave it
  (the CPU plan, and the local executor). The GPU plan runs them as separate Ray Data stages.

A *block* is a dict of lists, one entry per sketch of one shard: ``path``, ``size``,
``mtime_ns`` (the sketch as listed), ``todo`` (comma-separated variant indices), ``outs`` (their
output paths, newline-separated), ``shard`` and ``block`` (its id).

A write that fails because the disk is full, over quota or read-only stops the job (every other
output would fail the same way); any other bad file is a ``failed`` row while the rest is made.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import time

import numpy as np
from PIL import Image, PngImagePlugin

from colorjob import storage
from colorjob.batch.spec import Spec, layer_path
from colorjob.errors import ColorjobError
from colorjob.imaging import letterbox, load_rgb, unletterbox

FORMATS = {
    "png": ("PNG", {"compress_level": 1}),
    "webp": ("WEBP", {"quality": 90}),
    "jpg": ("JPEG", {"quality": 92}),
}
#: Write errors that no other output would escape: the job stops, what finished is kept.
FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class OutputStorageError(ColorjobError, OSError):
    """The output location cannot take more (full, over quota, read-only)."""


def parse_block(batch: dict) -> list[tuple[str, int, int, list[int], list[str]]]:
    """``(path, size, mtime_ns, variant indices, output paths)`` of each sketch of a block."""
    return [
        (
            str(p),
            int(s),
            int(m),
            [int(v) for v in str(t).split(",")] if t else [],
            str(o).split("\n") if o else [],
        )  # fmt: skip
        for p, s, m, t, o in zip(
            batch["path"],
            batch["size"],
            batch["mtime_ns"],
            batch["todo"],
            batch["outs"],
            strict=True,
        )  # fmt: skip
    ]


def block_of(row: dict) -> dict:
    """A Ray Data row (one block, list columns) as a block dict."""
    n = len(row["path"])
    shard, block = row["shard"], row["block"]
    out = {k: list(row[k]) for k in ("path", "size", "mtime_ns", "todo", "outs")}
    out["shard"] = [int(shard)] * n if np.ndim(shard) == 0 else [int(x) for x in shard]
    out["block"] = [str(block)] * n if np.ndim(block) == 0 else [str(x) for x in block]
    return out


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


def decode(spec: Spec, paths: list[str], keep_native: bool = False) -> dict:
    """Decode each sketch once: ``sketch`` (n, S, S, 3), ``box``, ``width``, ``height``,
    ``sha256``, ``error``; with ``keep_native``, ``native``: each sketch at its own size (for
    compositing its lines over the colours there)."""
    fs, root = storage.resolve(spec.input_root)
    n = len(paths)
    out = {
        "sketch": np.full((n, spec.size, spec.size, 3), 255, np.uint8),
        "box": np.zeros((n, 4), np.int32), "width": np.zeros(n, np.int32),
        "height": np.zeros(n, np.int32), "error": np.array([""] * n, dtype=object),
        "sha256": np.array([""] * n, dtype=object),
    }  # fmt: skip
    natives = [None] * n
    Image.MAX_IMAGE_PIXELS = spec.max_pixels  # PIL refuses far larger ones before decoding
    for i, rel in enumerate(paths):
        try:
            data = storage.read_bytes(fs, storage.join(root, rel))
            out["sha256"][i] = hashlib.sha256(data).hexdigest()
            img = load_rgb(data, spec.max_pixels)
            w, h = img.size
            if min(w, h) < spec.min_side:
                raise ValueError(f"image is {w}x{h}: too small to colour (min_side={spec.min_side})")  # fmt: skip
            arr, box = letterbox(img, spec.size)
            out["sketch"][i], out["box"][i], out["width"][i], out["height"][i] = arr, box, w, h
            if keep_native:
                natives[i] = np.asarray(img)
        except Exception as e:  # noqa: BLE001 - any bad file becomes failed rows, not a failed job
            out["error"][i] = _reason(e)
    if keep_native:
        out["native"] = natives
    return out


def natives_of(spec: Spec, rows: dict) -> dict[str, np.ndarray]:
    """The sketches of ``rows`` at their own size, decoded again (the split plan's encode stage:
    sketches do not travel through the object store twice)."""
    fs, root = storage.resolve(spec.input_root)
    out = {}
    for rel, err in zip(rows["input"], rows["error"], strict=True):
        if not err and str(rel) not in out:
            out[str(rel)] = np.asarray(load_rgb(storage.read_bytes(fs, storage.join(root, str(rel))), spec.max_pixels))  # fmt: skip
    return out


# ---- colorize -----------------------------------------------------------------------------------
class Colorizer:
    """The generator on this worker's device, shared by every block it colours."""

    def __init__(self, model: tuple[dict, bytes], spec: Spec, threads: int = 0):
        import torch

        from colorjob.export import generator_from_weights
        from colorjob.inference import prepare

        if threads:
            torch.set_num_threads(threads)
        meta, weights = model
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        g, self.vocab = generator_from_weights(meta, weights)
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
        mode = "raw" if spec.output == "raw" else "parts"  # composited at the sketch's own size
        for start, y in colorize_chunks(self.g, x, conds, self.vocab, index, spec.batch_size, spec.precision, output=mode):  # fmt: skip
            yield start, y.permute(0, 2, 3, 1).cpu().numpy()


# ---- encode and record --------------------------------------------------------------------------
def _save(img: Image.Image, fmt: str, spec: Spec, values: str, kind: str) -> bytes:
    pil_format, options = FORMATS[fmt]
    if fmt == "png":  # provenance travels with the file too
        info = PngImagePlugin.PngInfo()
        info.add_text("colorjob", f'{{"model_id": "{spec.model_id}", "values": {values}, "output": "{kind}"}}')  # fmt: skip
        options = {**options, "pnginfo": info}
    buf = io.BytesIO()
    img.save(buf, format=pil_format, **options)
    return buf.getvalue()


def encode(pixels: np.ndarray, box, width: int, height: int, spec: Spec, values: str, native: np.ndarray | None = None) -> tuple[bytes, bytes | None]:  # fmt: skip
    """One output at the sketch's own size, in the job's format (PNGs carry their provenance in
    a text chunk): ``(image, colour layer or None)``. ``pixels``: the model's square (RGB for
    ``raw``, the RGBA colour layer otherwise); ``native``: the sketch at its own size, whose
    lines are put over the colours there (:func:`colorjob.composite.composite_image`)."""
    from colorjob.composite import composite_image

    img = unletterbox(pixels, box, width, height)
    if spec.output == "raw":
        return _save(img.convert("RGB"), spec.fmt, spec, values, "raw"), None
    parts = np.asarray(img)
    comp = Image.fromarray(composite_image(parts, native))
    picture = _save(comp, spec.fmt, spec, values, "composite")
    if spec.output != "layers":
        return picture, None
    if spec.estimated_layer:  # a generator without a coverage head: the layer estimated
        parts = estimated_layer(parts[..., :3], native)
    return picture, _save(Image.fromarray(parts, "RGBA"), "png", spec, values, "layer")


def estimated_layer(rgb: np.ndarray, sketch: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` uint8: the colour layer of a full picture (:func:`colorjob.composite.layer_from_rgb`)."""
    import torch

    from colorjob.composite import layer_from_rgb

    colour, coverage = layer_from_rgb(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float(), torch.from_numpy(np.ascontiguousarray(sketch)).permute(2, 0, 1)[None].float())  # fmt: skip
    out = torch.cat([colour, coverage * 255], 1)[0].permute(1, 2, 0)
    return out.round().clamp(0, 255).byte().numpy()


def _fatal(e: BaseException, what: str) -> None:
    if isinstance(e, OSError) and e.errno in FATAL_ERRNOS:
        raise OutputStorageError(
            f"cannot write {what}: {e.strerror or e}; free space (or make it writable) and "
            "run again: the outputs already finished are recorded and kept"
        ) from None


def new_rows() -> dict:
    from colorjob.batch.shard import RESULT

    return {k: [] for k in RESULT.names}


def _sidecar(spec: Spec, rows: dict, k: int, v: int) -> bytes:
    return json.dumps(
        {"sketch": rows["input"][k], "variant": spec.variants[v] if spec.variants else v,
         "conditions": json.loads(spec.values[v]), "model_id": spec.model_id,
         "width": int(rows["width"][k]), "height": int(rows["height"][k])},
        ensure_ascii=False, sort_keys=True,
    ).encode()  # fmt: skip


def record(spec: Spec, rows: dict, natives: dict | None = None) -> dict:
    """Encode and write one image per row, then record them; returns status counts.

    ``rows``: ``shard``, ``block``, ``input``, ``input_size``, ``input_mtime_ns``, ``sha_in``,
    ``output``, ``variant``, ``image`` (NHWC, ignored where ``error``), ``box``, ``width``,
    ``height``, ``error`` (lists or arrays of one length). ``natives``: sketch path -> the
    sketch at its own size (composites; decoded again when not given).
    """
    if natives is None and spec.output != "raw":
        natives = natives_of(spec, rows)
    from colorjob.batch import ledger, shard

    fs, root = storage.resolve(spec.output_root)
    n = len(rows["output"])
    out_rows = new_rows()
    members = []
    for k in range(n):
        out, err = str(rows["output"][k]), str(rows["error"][k])
        v, w, h = int(rows["variant"][k]), int(rows["width"][k]), int(rows["height"][k])
        size = mtime = layer_size = 0
        sha = ""
        if not err:
            try:
                native = natives.get(str(rows["input"][k])) if natives is not None else None
                data, layer = encode(rows["image"][k], rows["box"][k], w, h, spec, spec.values[v], native)  # fmt: skip
                sha, size = hashlib.sha256(data).hexdigest(), len(data)
                layer_size = len(layer) if layer is not None else 0
                if spec.layout == "mirror":
                    if layer is not None:  # first, so a recorded output always has its layer
                        ledger.write_bytes(spec.output_root, storage.join(root, layer_path(out)), layer, spec.run_id)  # fmt: skip
                    path = storage.join(root, out)
                    ledger.write_bytes(spec.output_root, path, data, spec.run_id)
                    info = fs.get_file_info(path)
                    size, mtime = info.size, info.mtime_ns or 0
                else:
                    members.append((shard.member_name(out, spec.fmt), data))
                    if layer is not None:
                        members.append((shard.member_name(out, "layer.png"), layer))
                    members.append((shard.member_name(out, "json"), _sidecar(spec, rows, k, v)))
            except Exception as e:  # noqa: BLE001 - a failed write is a failed row
                _fatal(e, out)
                err = f"could not write {out}: {type(e).__name__}: {e}"
        for key, value in (
            ("output", out), ("input", str(rows["input"][k])), ("input_size", int(rows["input_size"][k])),
            ("input_mtime_ns", int(rows["input_mtime_ns"][k])), ("input_sha256", str(rows["sha_in"][k])),
            ("variant", v), ("values", spec.values[v]), ("model_id", spec.model_id),
            ("width", 0 if err else w), ("height", 0 if err else h), ("size", size), ("mtime_ns", mtime),
            ("sha256", sha), ("done_at", time.time()), ("container", ""),
            ("mode", spec.output), ("layer_size", layer_size),
            ("status", "failed" if err else "ok"), ("error", err),
        ):  # fmt: skip
            out_rows[key].append(value)
    if not n:
        return {"ok": 0, "failed": 0}
    shard_id, block = int(rows["shard"][0]), str(rows["block"][0])
    tag = hashlib.sha1("\n".join(out_rows["output"]).encode()).hexdigest()[:12]
    try:
        if spec.layout == "mirror":
            ledger.write_progress(spec.output_root, shard_id, spec.run_id, out_rows)
        else:
            shard.write_piece(spec, spec.work_root, shard_id, f"{block}-{tag}", members)
            shard.write_results(spec, spec.work_root, shard_id, f"{block}-{tag}", out_rows)
    except Exception as e:  # noqa: BLE001 - a full disk stops the job; others propagate as they are
        _fatal(e, f"the records of shard {shard_id}")
        raise
    failed = sum(1 for s in out_rows["status"] if s == "failed")
    return {"ok": n - failed, "failed": failed}


def cross(jobs, decoded: dict) -> tuple[list[tuple[int, int]], dict]:
    """The (sketch, variant) pairs of a decoded block: pairs to colour and the rows they become."""
    keys = ("input", "input_size", "input_mtime_ns", "sha_in", "output", "variant", "src", "error")
    pairs, rows = [], {k: [] for k in keys}
    for i, (path, size, mtime, todo, outs) in enumerate(jobs):
        for v, out in zip(todo, outs, strict=True):
            for k, val in zip(keys, (path, size, mtime, decoded["sha256"][i], out, v, i, decoded["error"][i]), strict=True):  # fmt: skip
                rows[k].append(val)
            if not decoded["error"][i]:
                pairs.append((i, v))
    return pairs, rows


def _slice_rows(rows: dict, decoded: dict, keep: list[int], images, shard: int, block: str) -> dict:
    src = [rows["src"][k] for k in keep]
    out = {k: [rows[k][j] for j in keep] for k in rows if k != "src"}
    out["box"], out["width"], out["height"] = decoded["box"][src], decoded["width"][src], decoded["height"][src]  # fmt: skip
    out["image"] = images
    out["shard"], out["block"] = [shard] * len(keep), [block] * len(keep)
    return out


class Fused:
    """Decode -> colorize -> encode and record, for one block, in this process."""

    def __init__(self, model: tuple[dict, bytes], spec: Spec, threads: int = 0):
        self.spec = spec
        self.colorizer = Colorizer(model, spec, threads)

    def __call__(self, batch: dict) -> dict:
        """One block: its outputs, then their records; returns the shard and the counts."""
        jobs = parse_block(batch)
        shard, block = int(batch["shard"][0]), str(batch["block"][0])
        decoded = decode(self.spec, [p for p, *_ in jobs], keep_native=self.spec.output != "raw")
        natives = {p: decoded["native"][i] for i, (p, *_) in enumerate(jobs) if decoded.get("native") is not None and decoded["native"][i] is not None}  # fmt: skip
        pairs, rows = cross(jobs, decoded)
        counts = {"ok": 0, "failed": 0}
        failed = [k for k, e in enumerate(rows["error"]) if e]
        images, keeps = [], []
        if failed:  # undecodable sketches: their rows are recorded as failed, nothing is written
            images.append(None)
            keeps.append(failed)
        good = [k for k, e in enumerate(rows["error"]) if not e]
        parts = [_slice_rows(rows, decoded, f, None, shard, block) for f in keeps]
        for start, imgs in self.colorizer.chunks(decoded["sketch"], pairs):
            parts.append(_slice_rows(rows, decoded, good[start : start + len(imgs)], imgs, shard, block))  # fmt: skip
        merged = _merge(parts)
        got = record(self.spec, merged, natives)
        counts = {k: counts[k] + got[k] for k in counts}
        return {"shard": np.array([shard]), "ok": np.array([counts["ok"]]), "failed": np.array([counts["failed"]])}  # fmt: skip


def _merge(parts: list[dict]) -> dict:
    """Row dicts of one block concatenated (images stacked where present)."""
    if len(parts) == 1:
        return parts[0]
    out: dict = {}
    for k in parts[0]:
        if k in ("box",):
            out[k] = np.concatenate([p[k] for p in parts])
        elif k in ("width", "height"):
            out[k] = np.concatenate([np.asarray(p[k]) for p in parts])
        elif k == "image":
            size = next((p[k].shape[1:] for p in parts if p[k] is not None), (1, 1, 3))
            out[k] = np.concatenate([p[k] if p[k] is not None else np.zeros((len(p["output"]), *size), np.uint8) for p in parts])  # fmt: skip
        else:
            out[k] = [x for p in parts for x in p[k]]
    return out


# ---- the same work as separate stages (the GPU plan: CPUs decode and encode, GPUs colour) --------
def decode_stage(row: dict, spec: Spec) -> dict:
    """Ray Data stage 1: one block row -> the block with its decoded sketches."""
    block = block_of({k: v[0] for k, v in row.items()})
    decoded = decode(spec, block["path"])
    return {k: np.array([v], dtype=object) for k, v in block.items()} | {k: v[None] for k, v in decoded.items()}  # fmt: skip


def _as_batch(rows: dict, images: np.ndarray) -> dict:
    out = {
        k: np.array(rows[k], dtype=object) for k in ("input", "output", "error", "sha_in", "block")
    }
    for k in ("input_size", "input_mtime_ns"):
        out[k] = np.array(rows[k], dtype=np.int64)
    out["variant"] = np.array(rows["variant"], dtype=np.int32)
    out["shard"] = np.array(rows["shard"], dtype=np.int64)
    out["box"], out["width"], out["height"], out["image"] = rows["box"], rows["width"], rows["height"], images  # fmt: skip
    return out


class ColorizeStage:
    """Ray Data stage 2 (an actor per GPU): a decoded block -> batches of at most ``batch_size``
    coloured images, yielded one by one so a batch never grows with the grid."""

    def __init__(self, model: tuple[dict, bytes], spec: Spec, threads: int = 0):
        self.spec = spec
        self.colorizer = Colorizer(model, spec, threads)

    def __call__(self, batch: dict):
        row = {k: v[0] for k, v in batch.items()}
        block = block_of(row)
        jobs = parse_block(block)
        shard, bid = block["shard"][0], block["block"][0]
        decoded = {k: row[k] for k in ("box", "width", "height", "error", "sha256")}
        pairs, rows = cross(jobs, decoded)
        s = self.spec.size
        failed = [k for k, e in enumerate(rows["error"]) if e]
        if failed:
            empty = np.zeros((len(failed), s, s, 3), np.uint8)
            yield _as_batch(_slice_rows(rows, decoded, failed, None, shard, bid), empty)
        good = [k for k, e in enumerate(rows["error"]) if not e]
        for start, images in self.colorizer.chunks(row["sketch"], pairs):
            keep = good[start : start + len(images)]
            yield _as_batch(_slice_rows(rows, decoded, keep, None, shard, bid), images)


def encode_stage(batch: dict, spec: Spec) -> dict:
    """Ray Data stage 3: coloured images -> files (or a tar piece) and their records."""
    counts = record(spec, batch)
    return {"shard": np.array([int(batch["shard"][0])]), "ok": np.array([counts["ok"]]), "failed": np.array([counts["failed"]])}  # fmt: skip
