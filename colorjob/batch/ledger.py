"""What is done in an output folder, and by whom: provenance parts, the ledger and the manifest.

Every output a job writes is recorded as it completes, in a small Parquet *part* written right
after its image files (``OUTPUT/.colorjob/parts/<run id>/<hash>.parquet``): which sketch and
variant, the ``model_id`` and condition values that made it, its size, modification time and
SHA-256. A killed job therefore leaves a record of everything it finished.

At the end of a run the parts are folded into ``OUTPUT/.colorjob/ledger.parquet`` (one row per
output ever made there, the latest wins) and ``OUTPUT/manifest.parquet`` (this run's view: one row
per planned output, ``ok`` / ``skipped`` / ``failed``). Both are merged in buckets of sketches, so
the driver never holds more than one bucket of rows, whatever the size of the job.

A rerun skips an output only when the ledger says the same model made it for the same values and
the file is still the one recorded (same size, and the same modification time or SHA-256).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

from colorjob import storage

STATE = ".colorjob"
LEDGER = f"{STATE}/ledger.parquet"
PARTS = f"{STATE}/parts"
MANIFEST = "manifest.parquet"
BUCKET_ROWS = 250_000  # rows merged in memory at a time

SCHEMA = pa.schema(
    [
        ("input", pa.string()), ("output", pa.string()), ("status", pa.string()),
        ("error", pa.string()), ("variant", pa.int32()), ("values", pa.string()),
        ("model_id", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
        ("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string()),
        ("done_at", pa.float64()),
    ]
)  # fmt: skip
LEDGER_COLUMNS = ["output", "input", "values", "model_id", "width", "height", "size", "mtime_ns", "sha256", "done_at"]  # fmt: skip
LEDGER_SCHEMA = pa.schema([SCHEMA.field(c) for c in LEDGER_COLUMNS])


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def part_name(outputs: Iterable[str]) -> str:
    """A part's file name from the outputs it records: a retried task rewrites the same part."""
    return hashlib.sha1("\n".join(outputs).encode()).hexdigest()[:20] + ".parquet"


def write_part(output_root: str, run_id: str, rows: dict, name: str | None = None) -> None:
    """Record finished rows (columns of :data:`SCHEMA`) durably, as one Parquet part."""
    if not len(rows["output"]):
        return
    table = pa.table({f.name: pa.array(rows[f.name], type=f.type) for f in SCHEMA}, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    fs, root = storage.resolve(output_root)
    name = name or part_name(rows["output"])
    storage.write_atomic(fs, storage.join(root, PARTS, run_id, name), buf.getvalue(), run=run_id)


# ---- reading what is recorded -------------------------------------------------------------------
def _part_files(fs, root: str) -> list[str]:
    parts = storage.join(root, PARTS)
    return [
        storage.join(parts, f)
        for f in storage.list_files(fs, parts)
        if f.endswith(".parquet") and storage.TMP_MARK not in f
    ]


def _read(fs, path: str, columns: list[str] | None = None) -> pa.Table | None:
    try:
        return pq.read_table(io.BytesIO(storage.read_bytes(fs, path)), columns=columns)
    except (OSError, pa.ArrowInvalid):
        return None  # a torn part of a killed run: its outputs are simply redone


@dataclass
class Record:
    """What the ledger knows of one output file."""

    input: str
    values: str
    model_id: str
    width: int
    height: int
    size: int
    mtime_ns: int
    sha256: str


def read_ledger(output_root: str) -> tuple[dict[str, Record], list[str]]:
    """Every output recorded in the folder (the ledger plus parts that killed runs left):
    ``({output: Record}, the part files read)``; the latest record of an output wins."""
    fs, root = storage.resolve(output_root)
    tables = []
    ledger_path = storage.join(root, LEDGER)
    if storage.exists(fs, ledger_path):
        t = _read(fs, ledger_path)
        if t is not None:
            tables.append(t.select(LEDGER_COLUMNS))
    parts = _part_files(fs, root)
    for path in parts:
        t = _read(fs, path)
        if t is not None:
            t = t.filter(pa.compute.equal(t["status"], "ok"))
            tables.append(t.select(LEDGER_COLUMNS))
    records: dict[str, Record] = {}
    if tables:
        df = pa.concat_tables(tables).to_pandas().sort_values("done_at", kind="stable")
        for r in df.drop_duplicates("output", keep="last").itertuples(index=False):
            records[r.output] = Record(
                r.input, r.values, r.model_id, int(r.width), int(r.height), int(r.size),
                int(r.mtime_ns), r.sha256,
            )  # fmt: skip
    return records, parts


def still_valid(record: Record, info: tuple[int, int] | None, read) -> bool:
    """Is the file on disk (``info`` = its size and mtime_ns, None if absent) the one recorded?

    Same size and modification time: yes. Same size, other time (copied, touched): yes if its
    SHA-256 is the recorded one (``read()`` gives its bytes). Anything else: no.
    """
    if info is None or info[0] != record.size or record.size == 0:
        return False
    if info[1] == record.mtime_ns:
        return True
    return hashlib.sha256(read()).hexdigest() == record.sha256


# ---- merging at the end -------------------------------------------------------------------------
def _buckets(tables: Iterable[pa.Table], bucket_of, n: int, spill: Path) -> Iterator[pd.DataFrame]:
    """Stream ``tables`` into ``n`` buckets on local disk; yield each bucket as one frame."""
    if n == 1:
        frames = [t.to_pandas() for t in tables]
        if frames:
            yield pd.concat(frames, ignore_index=True)
        return
    writers: dict[int, pq.ParquetWriter] = {}
    for t in tables:
        df = t.to_pandas()
        for b, part in df.groupby(bucket_of(df), sort=False):
            if b not in writers:
                writers[b] = pq.ParquetWriter(spill / f"{b}.parquet", t.schema)
            writers[b].write_table(
                pa.Table.from_pandas(part, schema=t.schema, preserve_index=False)
            )
    for w in writers.values():
        w.close()
    for b in sorted(writers):
        yield pq.read_table(spill / f"{b}.parquet").to_pandas()


def _write_parquet(fs, path: str, frames: Iterable[pd.DataFrame], schema: pa.Schema) -> int:
    """Write frames one after another into one Parquet file (atomically); returns the rows."""
    rows = 0
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "out.parquet"
        with pq.ParquetWriter(local, schema) as w:
            for df in frames:
                w.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False))
                rows += len(df)
        storage.write_atomic(fs, path, local.read_bytes())
    return rows


def finish(
    output_root: str,
    run_id: str,
    grid: pd.DataFrame,
    sketch_rank: dict[str, int],
    old_parts: list[str],
) -> dict[str, int]:
    """Fold this run's parts into ``manifest.parquet`` and the ledger; returns status counts.

    ``sketch_rank``: the position of each planned sketch in name order (buckets are ranges of
    it, so the manifest comes out sorted by sketch, then variant). ``old_parts``: parts of killed
    runs read at planning time, folded into the ledger and then removed.
    """
    fs, root = storage.resolve(output_root)
    run_parts = [p for p in _part_files(fs, root) if f"/{PARTS}/{run_id}/" in p]
    attrs = [c for c in grid.columns if c not in ("variant", "index", "values")]
    n_rows = len(sketch_rank) * len(grid)
    n = max(1, math.ceil(n_rows / BUCKET_ROWS))
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    fields = [pa.field(c, pa.string()) for c in ("input", "output", "status", "error")]
    fields += [pa.field(a, pa.string()) for a in attrs]
    fields += [pa.field("variant", pa.string()), pa.field("model_id", pa.string())]
    fields += [pa.field("width", pa.int32()), pa.field("height", pa.int32())]
    manifest_schema = pa.schema(fields)

    def bucket_of(df: pd.DataFrame) -> pd.Series:
        return df["input"].map(sketch_rank).fillna(0).astype(int) * n // max(1, len(sketch_rank))

    def manifest_frames(spill: Path) -> Iterator[pd.DataFrame]:
        tables = (t for t in (_read(fs, p) for p in run_parts) if t is not None)
        for df in _buckets(tables, bucket_of, n, spill):
            df = df.sort_values("done_at", kind="stable").drop_duplicates("output", keep="last")
            df = df.sort_values(["input", "variant"], kind="stable")
            v = df["variant"].to_numpy()
            for a in attrs:
                df[a] = grid[a].to_numpy()[v]
            df["variant"] = grid["variant"].to_numpy()[v]
            for status, k in df["status"].value_counts().items():
                counts[status] = counts.get(status, 0) + int(k)
            yield df[manifest_schema.names]

    with tempfile.TemporaryDirectory() as spill:
        _write_parquet(
            fs, storage.join(root, MANIFEST), manifest_frames(Path(spill)), manifest_schema
        )
    _compact_ledger(fs, root, run_parts + old_parts)
    for p in run_parts + old_parts:
        fs.delete_file(p)
    return counts


def _rows(fs, path: str) -> int:
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def _compact_ledger(fs, root: str, parts: list[str]) -> None:
    """The ledger again: its rows plus the ok rows of ``parts``, one row per output (latest)."""
    ledger_path = storage.join(root, LEDGER)
    sources = ([ledger_path] if storage.exists(fs, ledger_path) else []) + parts
    total = 0
    for p in sources:
        with contextlib.suppress(OSError, pa.ArrowInvalid):  # torn: _read skips it too
            total += _rows(fs, p)
    n = max(1, math.ceil(total / BUCKET_ROWS))

    def tables() -> Iterator[pa.Table]:
        for p in sources:
            t = _read(fs, p)
            if t is None:
                continue
            if "status" in t.column_names:
                t = t.filter(pa.compute.equal(t["status"], "ok"))
            yield t.select(LEDGER_COLUMNS).cast(LEDGER_SCHEMA)

    def bucket_of(df: pd.DataFrame) -> pd.Series:
        return pd.util.hash_pandas_object(df["output"], index=False) % n

    def frames(spill: Path) -> Iterator[pd.DataFrame]:
        for df in _buckets(tables(), bucket_of, n, spill):
            df = df.sort_values("done_at", kind="stable").drop_duplicates("output", keep="last")
            yield df.sort_values("output", kind="stable")

    with tempfile.TemporaryDirectory() as spill:
        _write_parquet(fs, ledger_path, frames(Path(spill)), LEDGER_SCHEMA)
