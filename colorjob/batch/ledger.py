"""What is done in an output folder, and by whom: a ledger and a manifest, one part per shard.

    OUTPUT/.colorjob/state.json                        shard count, layout (kept across runs)
    OUTPUT/.colorjob/ledger/shard=00042/part.parquet   every output made there (the latest)
    OUTPUT/.colorjob/ledger/shard=00042/progress-*.parquet   records written as work completes
    OUTPUT/manifest/shard=00042/part.parquet           the last run's view of the shard

Every output is recorded as it completes, in a small *progress* part written right after its
image files: which sketch (and that sketch's size, modification time and SHA-256), which
variant, the ``model_id`` and condition values that made it, the output's size, modification
time and SHA-256. A killed job therefore leaves a record of everything it finished. When a shard
is finished its progress parts are folded into its ``part.parquet`` and its manifest part is
written; nothing outside the shard is read or written. Both folders are Hive-partitioned Parquet
datasets: ``pd.read_parquet(OUTPUT / "manifest")`` reads the whole manifest (with a ``shard``
column), ``pyarrow.dataset`` streams it.

A rerun skips an output only when the shard's ledger says the same model made it for the same
values from the same sketch (same size and time, or same SHA-256) and the file is still the one
recorded (same size, and the same time or SHA-256).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections.abc import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from colorjob import storage
from colorjob.batch.listing import STATE_DIR, shard_name

STATE = STATE_DIR
STATE_FILE = f"{STATE}/state.json"
LEDGER = f"{STATE}/ledger"
RUNS = f"{STATE}/runs"
TMP = f"{STATE}/tmp"
MANIFEST = "manifest"
STATE_VERSION = 2
#: Before 0.3: one ledger file and one manifest file for the whole folder.
V1_LEDGER, V1_PARTS, V1_MANIFEST = f"{STATE}/ledger.parquet", f"{STATE}/parts", "manifest.parquet"

RECORD = pa.schema(
    [
        ("output", pa.string()), ("input", pa.string()), ("input_size", pa.int64()),
        ("input_mtime_ns", pa.int64()), ("input_sha256", pa.string()), ("variant", pa.int32()),
        ("values", pa.string()), ("model_id", pa.string()), ("width", pa.int32()),
        ("height", pa.int32()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
        ("sha256", pa.string()), ("done_at", pa.float64()), ("container", pa.string()),
        ("mode", pa.string()), ("layer_size", pa.int64()),
    ]
)  # fmt: skip
#: Columns older ledgers lack, and what they mean there.
DEFAULTS = {"mode": "raw", "layer_size": 0}


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def empty_rows() -> dict:
    return {k: [] for k in RECORD.names}


def _table(rows: dict) -> pa.Table:
    return pa.table({f.name: pa.array(rows[f.name], type=f.type) for f in RECORD}, schema=RECORD)


def tmp_dir(output_root: str, run_id: str) -> str | None:
    """Where a run's temporary files go in a local output folder (on its file system, so the
    rename is atomic): one folder per run, removed whole if the run is killed. None on S3 &co
    (one PUT, no temporary file)."""
    if storage.is_uri(output_root):
        return None
    _, root = storage.resolve(output_root)
    return storage.join(root, TMP, run_id)


def write_bytes(output_root: str, path: str, data: bytes, run_id: str) -> None:
    """``data`` to ``path`` (absolute inside the output folder's file system), atomically."""
    fs, _ = storage.resolve(output_root)
    storage.write_atomic(fs, path, data, run=run_id, tmp_dir=tmp_dir(output_root, run_id))


def _write_table(output_root: str, path: str, table: pa.Table, run: str, meta: dict | None = None) -> None:  # fmt: skip
    if meta:
        table = table.replace_schema_metadata({k: json.dumps(v) for k, v in meta.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes(output_root, path, buf.getvalue(), run)


def _read(fs, path: str) -> pa.Table | None:
    try:
        return pq.ParquetFile(pa.BufferReader(storage.read_bytes(fs, path))).read()
    except (OSError, pa.ArrowInvalid):
        return None  # a torn part of a killed run: its outputs are simply redone


# ---- the folder's state -------------------------------------------------------------------------
def read_state(output_root: str) -> dict | None:
    fs, root = storage.resolve(output_root)
    path = storage.join(root, STATE_FILE)
    if not storage.exists(fs, path):
        return None
    try:
        return json.loads(storage.read_bytes(fs, path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def write_state(output_root: str, state: dict) -> None:
    fs, root = storage.resolve(output_root)
    storage.write_atomic(fs, storage.join(root, STATE_FILE), json.dumps(state, indent=2).encode())


# ---- one shard's records ------------------------------------------------------------------------
class Records:
    """One shard's records, as columns (``cols[name][i]``) and an index ``output -> i`` (the
    latest record of an output): cheap to build and to look up, for a shard of any size."""

    def __init__(self, table: pa.Table | None):
        self.cols = {n: (table[n].to_pylist() if table is not None else []) for n in RECORD.names}
        self.index = {o: i for i, o in enumerate(self.cols["output"])}  # later rows win

    def __len__(self) -> int:
        return len(self.index)

    def get(self, output: str, name: str):
        return self.cols[name][self.index[output]]


def shard_dir(root: str, shard: int) -> str:
    return storage.join(root, LEDGER, shard_name(shard))


def _parts(fs, root: str, shard: int) -> tuple[str | None, list[str]]:
    folder = shard_dir(root, shard)
    names = storage.list_files(fs, folder)
    part = storage.join(folder, "part.parquet") if "part.parquet" in names else None
    progress = [storage.join(folder, n) for n in names if n.startswith("progress-") and n.endswith(".parquet") and storage.TMP_MARK not in n]  # fmt: skip
    return part, progress


def read_shard(output_root: str, shard: int) -> tuple[Records, dict]:
    """``(Records, the part's metadata)`` of one shard: its ledger part and the progress parts
    killed runs left (ok rows only); the latest record of an output wins."""
    fs, root = storage.resolve(output_root)
    part, progress = _parts(fs, root, shard)
    tables, meta = [], {}
    for path in ([part] if part else []) + progress:
        t = _read(fs, path)
        if t is None:
            continue
        if path == part and t.schema.metadata:
            meta = {k.decode(): json.loads(v) for k, v in t.schema.metadata.items() if not k.startswith(b"ARROW")}  # fmt: skip
        if "status" in t.column_names:  # progress parts record failures too (for the manifest)
            t = t.filter(pc.equal(t["status"], "ok"))
        for name, value in DEFAULTS.items():
            if name not in t.column_names:
                t = t.append_column(name, pa.array([value] * len(t), type=RECORD.field(name).type))
        tables.append(t.select(RECORD.names).cast(RECORD))
    if not tables:
        return Records(None), meta
    t = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if len(tables) > 1:
        t = t.take(pc.sort_indices(t, [("done_at", "ascending")]))
    return Records(t), meta


def write_progress(output_root: str, shard: int, run_id: str, rows: dict) -> None:
    """Record finished outputs of ``shard`` durably, as one progress part (``rows``: the
    record's columns and ``status``, ``error``)."""
    if not len(rows["output"]):
        return
    fs, root = storage.resolve(output_root)
    name = f"progress-{run_id}-" + hashlib.sha1("\n".join(rows["output"]).encode()).hexdigest()[:20] + ".parquet"  # fmt: skip
    schema = pa.schema([*RECORD, ("status", pa.string()), ("error", pa.string())])
    table = pa.table({f.name: pa.array(rows[f.name], type=f.type) for f in schema}, schema=schema)
    _write_table(output_root, storage.join(shard_dir(root, shard), name), table, run_id)


def compact(output_root: str, shard: int, run_id: str, meta: dict) -> None:
    """Fold the shard's progress parts into its ``part.parquet`` (one row per output, the
    latest) with ``meta``, then remove them."""
    fs, root = storage.resolve(output_root)
    _, progress = _parts(fs, root, shard)
    records, _ = read_shard(output_root, shard)
    keep = sorted(records.index.items())
    rows = {n: [records.cols[n][i] for _, i in keep] for n in RECORD.names}
    _write_table(output_root, storage.join(shard_dir(root, shard), "part.parquet"), _table(rows), run_id, meta=meta)  # fmt: skip
    for p in progress:
        fs.delete_file(p)


def still_valid(size: int, mtime_ns: int, sha256: str, info: tuple[int, int] | None, read) -> bool:
    """Is the file on disk (``info`` = its size and mtime_ns, None if absent) the one recorded
    (``size``, ``mtime_ns``, ``sha256``)?

    Same size and modification time: yes. Same size, other time (copied, touched): yes if its
    SHA-256 is the recorded one (``read()`` gives its bytes). Anything else: no.
    """
    if info is None or info[0] != size or size == 0:
        return False
    if info[1] == mtime_ns:
        return True
    return hashlib.sha256(read()).hexdigest() == sha256


# ---- the manifest -------------------------------------------------------------------------------
def manifest_path(root: str, shard: int) -> str:
    return storage.join(root, MANIFEST, shard_name(shard), "part.parquet")


def write_manifest(output_root: str, shard: int, frame: pd.DataFrame, run_id: str) -> None:
    _, root = storage.resolve(output_root)
    _write_table(output_root, manifest_path(root, shard), pa.Table.from_pandas(frame, preserve_index=False), run_id)  # fmt: skip


def remove_manifest(output_root: str, shard: int) -> None:
    """A shard about to change says nothing until it is finished (a killed run leaves no rows
    that disagree with the files)."""
    fs, root = storage.resolve(output_root)
    path = manifest_path(root, shard)
    if storage.exists(fs, path):
        fs.delete_file(path)


def manifest_shards(output_root: str) -> list[int]:
    fs, root = storage.resolve(output_root)
    import pyarrow.fs as pafs

    base = storage.join(root, MANIFEST)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
    out = []
    for i in infos:
        name = i.path.rsplit("/", 1)[-1]
        if i.type == pafs.FileType.Directory and name.startswith("shard="):
            out.append(int(name.split("=", 1)[1]))
    return sorted(out)


def iter_manifest(output_root: str, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """The manifest shard by shard (never loaded whole)."""
    fs, root = storage.resolve(output_root)
    for shard in manifest_shards(output_root):
        path = manifest_path(root, shard)
        if not storage.exists(fs, path):
            continue
        t = _read(fs, path)
        if t is not None:
            df = t.to_pandas()
            yield df[[c for c in columns if c in df]] if columns else df


# ---- before 0.3 ---------------------------------------------------------------------------------
def migrate_v1(output_root: str, shard_of_input, run_id: str = "v1") -> int:
    """Move an output folder's one-file ledger (and the parts killed runs left) into shard
    progress parts, once; remove the one-file manifest. Returns the records moved."""
    fs, root = storage.resolve(output_root)
    sources = []
    if storage.exists(fs, storage.join(root, V1_LEDGER)):
        sources.append(storage.join(root, V1_LEDGER))
    sources += [storage.join(root, V1_PARTS, f) for f in storage.list_files(fs, storage.join(root, V1_PARTS)) if f.endswith(".parquet")]  # fmt: skip
    moved = 0
    for path in sources:
        t = _read(fs, path)
        if t is None:
            continue
        if "status" in t.column_names:
            t = t.filter(pc.equal(t["status"], "ok"))
        df = t.to_pandas()
        by_shard: dict[int, dict] = {}
        for r in df.itertuples(index=False):
            rows = by_shard.setdefault(shard_of_input(r.input), empty_rows())
            for k, v in (("output", r.output), ("input", r.input), ("input_size", -1), ("input_mtime_ns", -1),
                         ("input_sha256", ""), ("variant", 0), ("values", r.values), ("model_id", r.model_id),
                         ("width", int(r.width)), ("height", int(r.height)), ("size", int(r.size)),
                         ("mtime_ns", int(r.mtime_ns)), ("sha256", r.sha256), ("done_at", float(r.done_at)), ("container", ""),
                         ("mode", "raw"), ("layer_size", 0), ("status", "ok"), ("error", "")):  # fmt: skip
                rows.setdefault(k, []).append(v)
        for shard, rows in by_shard.items():
            write_progress(output_root, shard, run_id, rows)
            moved += len(rows["output"])
    for path in sources:
        fs.delete_file(path)
    if storage.exists(fs, storage.join(root, V1_MANIFEST)):
        fs.delete_file(storage.join(root, V1_MANIFEST))
    return moved
