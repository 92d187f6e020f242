"""The input of a batch job, listed once and dealt into shards, without holding it in memory.

Which files are inputs (the rule, also in the README):

- images (``.png .jpg .jpeg .webp .bmp .tif .tiff .gif``) under ``--input``, searched recursively;
- **folder links are never followed** (a link to ``..`` would list the tree forever, a link to
  the output folder would colour the outputs); they are reported and left out;
- **file links** are followed when they point inside the input folder; links that leave it are
  left out and reported, unless ``follow_links: true`` (then any file link is followed, except
  into the output folder);
- the output folder, when it lies inside the input, is never an input, and neither are
  colorjob's own state folders (``.colorjob/``) and temporary files (``.colorjob-tmp-*``):
  those are left out and reported.

Each sketch belongs to a shard by a stable hash of its output key (its relative path as the
output names spell it, case-folded, so two sketches whose outputs would clash always meet in one
shard). The shard count is a power of two chosen from the job's size at the output folder's
first run and kept in its state. :func:`deal` streams the listing into spill files of fixed
buckets of the hash range, then writes each shard's input list (``path, size, mtime_ns``): the
memory it takes is one bucket or one shard, whatever the job's size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from colorjob import storage
from colorjob.batch.grid import BatchError
from colorjob.batch.names import IMAGE_EXTS, fold, sketch_key

log = logging.getLogger(__name__)
STATE_DIR = ".colorjob"
SPILL_BUCKETS = 256  # fixed ranges of the hash space the listing is spilled into
TARGET_SHARD_OUTPUTS = 2048  # outputs per shard the count is chosen for (a ~40 MB tar of PNGs)
MAX_SHARDS = 1 << 16
INPUT_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64())])


@dataclass
class Skipped:
    """What the listing left out, by reason (counts, and the first few paths of each)."""

    counts: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)

    def add(self, reason: str, rel: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 5:
            shown.append(rel)

    def report(self) -> None:
        for reason, n in self.counts.items():
            more = (
                f" and {n - len(self.examples[reason])} more"
                if n > len(self.examples[reason])
                else ""
            )
            log.warning(f"left out {n} {reason}: {', '.join(self.examples[reason])}{more}")


def _norm(uri: str) -> tuple[type, str]:
    fs, path = storage.resolve(uri)
    if not storage.is_uri(uri):
        path = os.path.realpath(path)  # '..' and symlinks resolved: in/../in/out is in/out
    return type(fs), posixpath.normpath(path)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _own_state(rel: str) -> bool:
    parts = rel.split("/")
    return f"/{STATE_DIR}/" in f"/{rel}" or any(p.startswith(storage.TMP_MARK) for p in parts)


def _walk_local(root: str, out_real: str | None, follow_links: bool, skipped: Skipped) -> Iterator[tuple[str, int, int]]:  # fmt: skip
    """``(relative path, size, mtime_ns)`` of the image files under a local ``root``, in a
    deterministic order, never following folder links."""
    root_real = os.path.realpath(root)
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        here = os.path.join(root, rel_dir) if rel_dir else root
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as e:
            raise BatchError(f"cannot list {here}: {e.strerror or e}") from None
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_link = entry.is_symlink()
                if entry.is_dir(follow_symlinks=False):
                    full = os.path.realpath(entry.path)
                    if out_real is not None and _inside(full, out_real):
                        continue  # the output folder inside the input: never an input
                    if entry.name == STATE_DIR:
                        skipped.add("file(s) in colorjob's state folders (.colorjob/)", rel + "/")
                        continue
                    subdirs.append(rel)
                    continue
                if is_link and os.path.isdir(entry.path):
                    skipped.add("folder link(s) (colorjob never follows folder links)", rel)
                    continue
                if not entry.name.lower().endswith(IMAGE_EXTS):
                    continue
                if _own_state(rel):
                    skipped.add("colorjob temporary file(s)", rel)
                    continue
                if is_link:
                    target = os.path.realpath(entry.path)
                    if out_real is not None and _inside(target, out_real):
                        skipped.add("file link(s) into the output folder", rel)
                        continue
                    if not _inside(target, root_real) and not follow_links:
                        skipped.add("file link(s) leaving the input folder (follow_links: true to follow them)", rel)  # fmt: skip
                        continue
                    if not os.path.isfile(target):
                        skipped.add("broken file link(s)", rel)
                        continue
                st = entry.stat(follow_symlinks=True)
            except OSError as e:
                skipped.add(f"unreadable entr(y/ies) ({e.strerror})", rel)
                continue
            yield rel, int(st.st_size), int(st.st_mtime_ns)
        stack.extend(reversed(subdirs))


def _walk_remote(fs, root: str, skip_prefix: str | None, skipped: Skipped) -> Iterator[tuple[str, int, int]]:  # fmt: skip
    import pyarrow.fs as pafs

    prefix = root.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    for i in sorted(infos, key=lambda i: i.path):
        if i.type != pafs.FileType.File or not i.path.startswith(prefix):
            continue
        rel = i.path[len(prefix) :]
        if not rel.lower().endswith(IMAGE_EXTS) or (skip_prefix and rel.startswith(skip_prefix)):
            continue
        if _own_state(rel):
            skipped.add("file(s) in colorjob's state folders or temporaries", rel)
            continue
        yield rel, int(i.size or 0), int(i.mtime_ns or 0)


@dataclass
class Source:
    """Where the sketches are: the root workers resolve, and a way to walk it."""

    root: str  # a path or URI every worker can resolve
    single: str | None = None  # the one file, when --input names a file
    skip_prefix: str | None = None  # the output folder, relative to the input (remote)
    out_real: str | None = None  # the output folder's real path (local)
    follow_links: bool = False

    def walk(self, skipped: Skipped) -> Iterator[tuple[str, int, int]]:
        fs, root = storage.resolve(self.root)
        if self.single is not None:
            info = fs.get_file_info(storage.join(root, self.single))
            yield self.single, int(info.size or 0), int(info.mtime_ns or 0)
            return
        if storage.is_uri(self.root):
            yield from _walk_remote(fs, root, self.skip_prefix, skipped)
        else:
            yield from _walk_local(root, self.out_real, self.follow_links, skipped)


def source(input_uri: str, output_uri: str, follow_links: bool = False) -> Source:
    """The input location, checked: never the output folder itself."""
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
        parent, name = root.rsplit("/", 1)
        return Source(_as_uri(input_uri, parent), single=name)
    if not storage.is_dir(fs, root):
        raise BatchError(f"input {input_uri} does not exist")
    inside = same_fs and _inside(out_path, in_path)
    skip = (
        out_path[len(in_path.rstrip("/")) + 1 :] + "/" if inside and out_path != in_path else None
    )
    local = not storage.is_uri(input_uri)
    return Source(_as_uri(input_uri, root), skip_prefix=skip, out_real=out_path if local and same_fs else None, follow_links=follow_links)  # fmt: skip


def _as_uri(original: str, resolved_root: str) -> str:
    """A resolved root as a path or URI that workers can resolve again."""
    if not storage.is_uri(original):
        return resolved_root
    return f"{original.split('://', 1)[0]}://{resolved_root}"


# ---- shards ----------------------------------------------------------------------------------------
def key_hash(rel: str, fmt: str) -> int:
    """The 64-bit hash that places a sketch: of its case-folded output key."""
    return int.from_bytes(hashlib.blake2b(fold(sketch_key(rel, fmt)).encode(), digest_size=8).digest(), "big")  # fmt: skip


def shard_of(h: int, shards: int) -> int:
    """Range partition of the hash space (``shards`` a power of two)."""
    return h >> (64 - shards.bit_length() + 1) if shards > 1 else 0


def choose_shards(outputs: int, target: int = TARGET_SHARD_OUTPUTS) -> int:
    """The shard count for a job of ``outputs`` outputs: the power of two nearest above
    ``outputs / target`` (at least 1, at most 65,536)."""
    want = max(1, -(-outputs // target))
    return min(MAX_SHARDS, 1 << (want - 1).bit_length())


def shard_name(shard: int) -> str:
    return f"shard={shard:05d}"


@dataclass
class Dealt:
    """The job's input, dealt into shards: counts and where each shard's list is."""

    folder: Path  # local folder holding inputs/<shard_name>.parquet
    shards: int
    sketches: int
    busy: list[int]  # shards that have sketches, ascending
    skipped: Skipped

    def inputs(self, shard: int) -> pa.Table:
        return read_table_bytes(self.path(shard).read_bytes())

    def path(self, shard: int) -> Path:
        return self.folder / f"{shard_name(shard)}.arrow"


def deal(src: Source, fmt: str, variants: int, shards: int | None, folder: Path) -> Dealt:
    """List the input once, into spill files by hash range; choose the shard count (unless the
    output folder has one); write each shard's input list to ``folder``. Memory: one bucket."""
    skipped = Skipped()
    spill_dir = Path(tempfile.mkdtemp(prefix="colorjob-listing-"))
    try:
        files = [open(spill_dir / f"{b:03d}.tsv", "w", encoding="utf-8", newline="\n") for b in range(SPILL_BUCKETS)]  # noqa: SIM115  # fmt: skip
        n = 0
        try:
            for rel, size, mtime in src.walk(skipped):
                if "\t" in rel or "\n" in rel:
                    skipped.add(
                        "file(s) with a tab or newline in the name", rel.replace("\n", "\\n")
                    )
                    continue
                h = key_hash(rel, fmt)
                files[h >> 56].write(f"{h}\t{size}\t{mtime}\t{rel}\n")
                n += 1
        finally:
            for f in files:
                f.close()
        if n == 0:
            raise BatchError(f"no images under {src.root} (looked for {', '.join(IMAGE_EXTS)}, recursively)")  # fmt: skip
        shards = shards or choose_shards(n * variants)
        folder.mkdir(parents=True, exist_ok=True)
        busy: list[int] = []
        per_bucket = max(1, SPILL_BUCKETS // shards)  # buckets one shard spans (shards < 256)
        for first in range(0, SPILL_BUCKETS, per_bucket):
            rows: dict[int, list] = {}
            for b in range(first, first + per_bucket):
                with open(spill_dir / f"{b:03d}.tsv", encoding="utf-8") as f:
                    for line in f:
                        h, size, mtime, rel = line.rstrip("\n").split("\t", 3)
                        rows.setdefault(shard_of(int(h), shards), []).append(
                            (rel, int(size), int(mtime))
                        )
            for shard in sorted(rows):
                part = sorted(rows[shard])
                table = pa.table({"path": [r[0] for r in part], "size": [r[1] for r in part], "mtime_ns": [r[2] for r in part]}, schema=INPUT_SCHEMA)  # fmt: skip
                with pa.OSFile(str(folder / f"{shard_name(shard)}.arrow"), "wb") as f, pa.ipc.new_file(f, INPUT_SCHEMA) as w:  # fmt: skip
                    w.write_table(table)
                busy.append(shard)
        return Dealt(folder, shards, n, sorted(busy), skipped)
    finally:
        import shutil

        shutil.rmtree(spill_dir, ignore_errors=True)


def read_table_bytes(data: bytes) -> pa.Table:
    """A shard's input list (Arrow IPC: read in microseconds, also from bytes a task was sent)."""
    return pa.ipc.open_file(pa.BufferReader(data)).read_all()
