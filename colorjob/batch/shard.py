"""One shard of a batch job: decide what is done, make the rest in blocks, finish it.

A shard's work touches only the shard: its input list (from :mod:`.listing`), its ledger part
and its own outputs (:mod:`.ledger`), so a shard runs anywhere (a thread here, a Ray task on any
node) and a shard retried after a lost node does the same thing again.

- :func:`decide` reads the shard's ledger, checks each planned output (mirror layout: the file;
  shards layout: the shard's tar) and the sketch it came from, and writes the shard's
  *decision* (every planned output: skip or make, and why) to the run's work folder;
- :func:`make_block` colours one block of the decision's work (decode -> model -> encode) and
  records it: mirror layout, each file written atomically and a ledger progress part after them;
  shards layout, a piece of the shard's tar and its result rows;
- :func:`finish` writes the shard's manifest part and folds the records into its ledger part
  (shards layout: the pieces become ``shards/<xx>/shard-NNNNN.tar`` first, atomically).

A *block* is a few sketches of one shard with the variants they need (at most ``BLOCK_IMAGES``
images), named by a hash of its outputs, so a retried block rewrites the same files.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from colorjob import storage
from colorjob.batch import ledger
from colorjob.batch.listing import shard_name
from colorjob.batch.names import sketch_key
from colorjob.batch.spec import Spec, layer_path

BLOCK_IMAGES = 64  # images per block of work (and per progress part)
DECISION = pa.schema(
    [
        ("input", pa.string()), ("input_size", pa.int64()), ("input_mtime_ns", pa.int64()),
        ("output", pa.string()), ("variant", pa.int32()), ("make", pa.bool_()),
        ("reason", pa.string()), ("model_id", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ]
)  # fmt: skip
REASONS = {
    "new": "not made yet",
    "unrecorded": "a file is there that no record says this job made",
    "model": "made by another model",
    "values": "made for other condition values",
    "other sketch": "made from another sketch",
    "sketch changed": "its sketch changed since",
    "output changed": "the file changed or went missing since",
    "shard": "its shard's tar is redone as a whole",
    "overwrite": "overwrite: redo everything",
    "mode": "made in another output mode (composite, layers, raw)",
    "unknown sketch": "made before sketches were recorded (colorjob 0.2)",
}


def container_of(shard: int) -> str:
    """Where a shard's tar goes (shards layout): 256 prefixes spread the writes (S3 sustains
    about 3,500 PUTs per second per prefix)."""
    prefix = hashlib.sha1(shard_name(shard).encode()).hexdigest()[:2]
    return f"shards/{prefix}/shard-{shard:05d}.tar"


def work_dir(work_root: str, shard: int, kind: str) -> str:
    return storage.join(work_root, kind, shard_name(shard))


# ---- decide ---------------------------------------------------------------------------------------
@dataclass
class Decision:
    """What a shard needs: counts by outcome and reason, and how its work splits into blocks."""

    shard: int
    planned: int = 0
    skipped: int = 0
    todo: int = 0
    blocks: int = 0
    reasons: Counter = field(default_factory=Counter)
    unchanged: bool = False  # nothing to make and the manifest already says so: leave it


def _planned_hash(spec: Spec, outs: list[str]) -> str:
    h = hashlib.sha256(json.dumps([spec.layout, spec.model_id, list(spec.values), spec.fmt, spec.output]).encode())  # fmt: skip
    for o in outs:
        h.update(o.encode() + b"\n")
    return h.hexdigest()[:32]


def _file_infos(fs, root: str, rels: list[str]) -> dict[str, tuple[int, int]]:
    if not rels:
        return {}
    infos = fs.get_file_info([storage.join(root, r) for r in rels])
    return {r: (int(i.size), int(i.mtime_ns or 0)) for r, i in zip(rels, infos, strict=True) if i.type == pafs.FileType.File}  # fmt: skip


def decide(spec: Spec, shard: int, inputs: pa.Table, work_root: str) -> Decision:
    """Decide the shard's planned outputs and write the decision (see the module's text)."""
    in_fs, in_root = storage.resolve(spec.input_root)
    fs, root = storage.resolve(spec.output_root)
    records, meta = ledger.read_shard(spec.output_root, shard)
    paths, sizes, mtimes = (inputs[c].to_pylist() for c in ("path", "size", "mtime_ns"))
    fmt, n_var = spec.fmt, len(spec.variants)
    tails = [f"__{name}.{fmt}" for name in spec.variants]
    keys = [sketch_key(rel, fmt) for rel in paths]
    outs = [k + t for k in keys for t in tails]
    container = container_of(shard)
    layers = spec.output == "layers"
    watched = (outs + ([layer_path(o) for o in outs] if layers else [])) if spec.layout == "mirror" else [container]  # fmt: skip
    files = _file_infos(fs, root, watched)
    tar_ok = spec.layout == "shards" and container in files and meta.get("container") == [container, *files[container]]  # fmt: skip
    index, cols = records.index, records.cols
    r_input, r_values, r_model = cols["input"], cols["values"], cols["model_id"]
    r_isize, r_imtime, r_isha = cols["input_size"], cols["input_mtime_ns"], cols["input_sha256"]
    r_size, r_mtime, r_sha, r_cont = (
        cols["size"],
        cols["mtime_ns"],
        cols["sha256"],
        cols["container"],
    )
    r_width, r_height = cols["width"], cols["height"]
    r_mode, r_layer = cols["mode"], cols["layer_size"]
    input_sha: dict[int, str] = {}

    def sketch_sha(i: int) -> str:
        if i not in input_sha:
            input_sha[i] = hashlib.sha256(storage.read_bytes(in_fs, storage.join(in_root, paths[i]))).hexdigest()  # fmt: skip
        return input_sha[i]

    reason_of, model_of, width_of, height_of = [], [], [], []
    values, model_id, mirror = spec.values, spec.model_id, spec.layout == "mirror"
    for k, out in enumerate(outs):
        i, v = divmod(k, n_var)
        j = index.get(out)
        if spec.overwrite:
            reason = "overwrite"
        elif j is None:
            reason = "unrecorded" if out in files else "new"
        elif r_model[j] != model_id:
            reason = "model"
        elif r_values[j] != values[v]:
            reason = "values"
        elif r_input[j] != paths[i]:
            reason = "other sketch"
        elif r_mode[j] != spec.output:
            reason = "mode"
        elif r_isize[j] < 0:
            reason = "unknown sketch"  # not recorded (a folder made by colorjob 0.2)
        elif (r_isize[j], r_imtime[j]) != (sizes[i], mtimes[i]) and (r_isize[j] != sizes[i] or not r_isha[j] or sketch_sha(i) != r_isha[j]):  # fmt: skip
            reason = "sketch changed"
        elif mirror and not ledger.still_valid(r_size[j], r_mtime[j], r_sha[j], files.get(out), lambda o=out: storage.read_bytes(fs, storage.join(root, o))) or not mirror and (not tar_ok or r_cont[j] != container) or mirror and layers and files.get(layer_path(out), (-1, 0))[0] != r_layer[j]:  # fmt: skip
            reason = "output changed"
        else:
            reason = ""
        reason_of.append(reason)
        model_of.append(r_model[j] if j is not None else "")
        width_of.append(r_width[j] if j is not None else 0)
        height_of.append(r_height[j] if j is not None else 0)
    make = [bool(r) for r in reason_of]
    if not mirror and any(make):  # a tar is made whole: every output of the shard
        reason_of = [r or "shard" for r in reason_of]
        make = [True] * len(make)
    d = Decision(shard, planned=len(outs))
    d.todo = sum(make)
    d.skipped = d.planned - d.todo
    d.reasons = Counter(r for r in reason_of if r)
    wanted = _planned_hash(spec, outs)
    d.unchanged = d.todo == 0 and meta.get("manifest_hash") == wanted and storage.exists(fs, ledger.manifest_path(root, shard))  # fmt: skip
    if not d.unchanged:
        rows = {
            "input": [p for p in paths for _ in range(n_var)],
            "input_size": [x for x in sizes for _ in range(n_var)],
            "input_mtime_ns": [x for x in mtimes for _ in range(n_var)],
            "output": outs, "variant": list(range(n_var)) * len(paths), "make": make,
            "reason": reason_of, "model_id": model_of, "width": width_of, "height": height_of,
        }  # fmt: skip
        d.blocks = len(_blocks(rows))
        table = pa.table({n: pa.array(rows[n], type=DECISION.field(n).type) for n in DECISION.names}, schema=DECISION)  # fmt: skip
        wfs, _ = storage.resolve(work_root)
        buf = io.BytesIO()
        pq.write_table(table.replace_schema_metadata({"manifest_hash": wanted}), buf)
        storage.write_atomic(wfs, storage.join(work_dir(work_root, shard, "decided"), "decision.parquet"), buf.getvalue(), run=spec.run_id)  # fmt: skip
    return d


def read_decision(work_root: str, shard: int) -> pa.Table:
    fs, _ = storage.resolve(work_root)
    path = storage.join(work_dir(work_root, shard, "decided"), "decision.parquet")
    return pq.ParquetFile(pa.BufferReader(storage.read_bytes(fs, path))).read()


def _blocks(rows: dict) -> list[dict]:
    """The decision's work as blocks: whole sketches, at most ``BLOCK_IMAGES`` images each."""
    by_sketch: dict[str, list[int]] = {}
    for k, m in enumerate(rows["make"]):
        if m:
            by_sketch.setdefault(rows["input"][k], []).append(k)
    blocks, current, n = [], [], 0
    for ks in by_sketch.values():
        if current and n + len(ks) > BLOCK_IMAGES:
            blocks.append(current)
            current, n = [], 0
        current.append(ks)
        n += len(ks)
    if current:
        blocks.append(current)
    out = []
    for b in blocks:
        first = [ks[0] for ks in b]
        out.append({
            "path": [rows["input"][k] for k in first],
            "size": [rows["input_size"][k] for k in first],
            "mtime_ns": [rows["input_mtime_ns"][k] for k in first],
            "todo": [",".join(str(rows["variant"][k]) for k in ks) for ks in b],
            "outs": ["\n".join(rows["output"][k] for k in ks) for ks in b],
        })  # fmt: skip
    return out


def blocks(work_root: str, shard: int) -> list[dict]:
    """The shard's blocks of work (each a batch of job rows: path, size, mtime_ns, todo, outs),
    tagged with the shard and a block id."""
    t = read_decision(work_root, shard)
    rows = {n: t[n].to_pylist() for n in DECISION.names}
    out = []
    for b in _blocks(rows):
        b["shard"] = [shard] * len(b["path"])
        b["block"] = [hashlib.sha1("\n".join(b["outs"]).encode()).hexdigest()[:16]] * len(b["path"])
        out.append(b)
    return out


# ---- the shards layout: pieces and the shard's tar --------------------------------------------------
def member_name(out: str, suffix: str) -> str:
    """A tar member for output ``out`` (``a/cat__v.png``): WebDataset keys end at the first dot
    of the file name, so dots of the key are %-escaped: ``a/cat%2Ejpg__v.png``."""
    folder, _, name = out.rpartition("/")
    stem = name.rsplit(".", 1)[0].replace("%", "%25").replace(".", "%2E")
    return f"{folder + '/' if folder else ''}{stem}.{suffix}"


def write_piece(spec: Spec, work_root: str, shard: int, block: str, members: list[tuple[str, bytes]]) -> None:  # fmt: skip
    """One block's encoded images (and sidecars) as a piece of the shard's tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    fs, _ = storage.resolve(work_root)
    storage.write_atomic(fs, storage.join(work_dir(work_root, shard, "pieces"), f"{block}.tar"), buf.getvalue(), run=spec.run_id)  # fmt: skip


def write_results(spec: Spec, work_root: str, shard: int, block: str, rows: dict) -> None:
    """A block's result rows (ok and failed), read back when the shard is finished."""
    fs, _ = storage.resolve(work_root)
    table = pa.table({f.name: pa.array(rows[f.name], type=f.type) for f in RESULT}, schema=RESULT)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_atomic(fs, storage.join(work_dir(work_root, shard, "results"), f"{block}.parquet"), buf.getvalue(), run=spec.run_id)  # fmt: skip


RESULT = pa.schema([*ledger.RECORD, ("status", pa.string()), ("error", pa.string())])


def _read_all(fs, folder: str, suffix: str) -> list[str]:
    return [storage.join(folder, f) for f in storage.list_files(fs, folder) if f.endswith(suffix) and storage.TMP_MARK not in f]  # fmt: skip


def _assemble_tar(spec: Spec, work_root: str, shard: int) -> tuple[str, int, int]:
    """The pieces of a shard in one tar, written atomically; returns (path, size, mtime_ns)."""
    wfs, _ = storage.resolve(work_root)
    fs, root = storage.resolve(spec.output_root)
    pieces = sorted(_read_all(wfs, work_dir(work_root, shard, "pieces"), ".tar"))
    members = []
    for p in pieces:
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(wfs, p))) as tar:
            members += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    members.sort(key=lambda m: m[0])  # the same bytes whatever order the blocks finished in
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    path = container_of(shard)
    ledger.write_bytes(spec.output_root, storage.join(root, path), buf.getvalue(), spec.run_id)
    info = fs.get_file_info(storage.join(root, path))
    return path, int(info.size), int(info.mtime_ns or 0)


# ---- finish ---------------------------------------------------------------------------------------
def finish(spec: Spec, work_root: str, shard: int) -> dict:
    """Write the shard's manifest part and fold its records into its ledger part; returns the
    counts by status. Run once every block of the shard is done (a retry does it again)."""
    table = read_decision(work_root, shard)
    decision, manifest_hash = table.to_pandas(), table.schema.metadata[b"manifest_hash"].decode()
    fs, root = storage.resolve(spec.output_root)
    wfs, _ = storage.resolve(work_root)
    if spec.layout == "mirror":
        folder = ledger.shard_dir(root, shard)
        parts = [p for p in _read_all(fs, folder, ".parquet") if p.rsplit("/", 1)[-1].startswith(f"progress-{spec.run_id}-")]  # fmt: skip
    else:
        parts = _read_all(wfs, work_dir(work_root, shard, "results"), ".parquet")
    made = [pq.ParquetFile(pa.BufferReader(storage.read_bytes(fs if spec.layout == "mirror" else wfs, p))).read().to_pandas() for p in parts]  # fmt: skip
    made = pd.concat(made, ignore_index=True) if made else pd.DataFrame(columns=RESULT.names)
    meta = {"manifest_hash": manifest_hash, "layout": spec.layout}
    if spec.layout == "shards":
        path, size, mtime = _assemble_tar(spec, work_root, shard)
        meta["container"] = [path, size, mtime]
        made["container"] = path
        ok = made[made["status"] == "ok"]
        rows = {c: ok[c].tolist() for c in ledger.RECORD.names}
        # the ledger part of a shard in this layout is its tar's rows: written whole
        _replace_ledger(spec, shard, rows, meta)
    else:
        ledger.compact(spec.output_root, shard, spec.run_id, meta)
    manifest = _manifest(spec, shard, decision, made)
    ledger.write_manifest(spec.output_root, shard, manifest, spec.run_id)
    for kind in ("pieces", "results", "decided"):
        folder = work_dir(work_root, shard, kind)
        for p in storage.list_files(wfs, folder):
            wfs.delete_file(storage.join(folder, p))
        _delete_dir(wfs, folder)
    counts = manifest["status"].value_counts()
    return {k: int(counts.get(k, 0)) for k in ("ok", "skipped", "failed")}


def _delete_dir(fs, folder: str) -> None:
    try:
        if storage.is_dir(fs, folder):
            fs.delete_dir(folder)
    except OSError:
        pass


def _replace_ledger(spec: Spec, shard: int, rows: dict, meta: dict) -> None:
    fs, root = storage.resolve(spec.output_root)
    rows = {k: list(v) for k, v in rows.items()}
    table = pa.table({f.name: pa.array(rows[f.name], type=f.type) for f in ledger.RECORD}, schema=ledger.RECORD)  # fmt: skip
    table = table.replace_schema_metadata({k: json.dumps(v) for k, v in meta.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    folder = ledger.shard_dir(root, shard)
    ledger.write_bytes(
        spec.output_root, storage.join(folder, "part.parquet"), buf.getvalue(), spec.run_id
    )
    for p in _read_all(fs, folder, ".parquet"):
        if p.rsplit("/", 1)[-1].startswith("progress-"):
            fs.delete_file(p)


def _manifest(spec: Spec, shard: int, decision: pd.DataFrame, made: pd.DataFrame) -> pd.DataFrame:
    """The shard's manifest: one row per planned output, sorted by sketch, then grid row."""
    skipped = decision[~decision["make"]].copy()
    skipped["status"], skipped["error"] = "skipped", ""
    done = made.drop_duplicates("output", keep="last")
    todo = decision[decision["make"]][["input", "output", "variant"]].merge(
        done[["output", "status", "error", "model_id", "width", "height"]], on="output", how="left"
    )
    todo["status"] = todo["status"].fillna("failed")
    todo["error"] = todo["error"].fillna("not made (the run stopped before it)")
    todo["model_id"] = todo["model_id"].fillna(spec.model_id)
    todo[["width", "height"]] = todo[["width", "height"]].fillna(0)
    cols = ["input", "output", "status", "error", "variant", "model_id", "width", "height"]
    df = pd.concat([skipped[cols], todo[cols]], ignore_index=True)
    df = df.sort_values(["input", "variant"], kind="stable").reset_index(drop=True)
    v = df["variant"].to_numpy().astype(int)
    for a, values in zip(spec.attrs, zip(*spec.attr_values, strict=True) if spec.attr_values else [], strict=True):  # fmt: skip
        df[a] = np.asarray(values, dtype=object)[v] if len(v) else []
    df["variant"] = np.asarray(spec.variants, dtype=object)[v] if len(v) else []
    if spec.layout == "shards":
        tar = container_of(shard)
        df["output"] = [f"{tar}#{member_name(o, spec.fmt)}" for o in df["output"]]
    df["width"], df["height"] = df["width"].astype("int32"), df["height"].astype("int32")
    df["run_id"] = spec.run_id
    return df[["input", "output", "status", "error", *spec.attrs, "variant", "model_id", "width", "height", "run_id"]]  # fmt: skip
