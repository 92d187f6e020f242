"""A dataset folder in the seed's format -> tensors.

A dataset is a folder with ``metadata.csv`` (columns ``input, output`` and one column per condition
attribute, e.g. ``hair, shirt``), the sketches and their coloured versions, file names relative to
the folder and inside it. Masks (optional) mark where each attribute is drawn in a sketch:
``masks/<sketch's path without extension>_<attribute>.png`` (``masks/sketches/a/x_hair.png``), or
``masks/<stem>_<attribute>.png`` when no other sketch has that file stem. ``conditions.json``
(optional) records the value order and colours (see :mod:`colorjob.conditions`).

Images of any mode and size become RGB (transparency composited on white, 16-bit scaled down,
float images read as [0, 1]),
are resized to the model's square size and scaled to [-1, 1]. Each file is decoded once per run:
the decoded uint8 tensors are cached, and a sketch shared by 25 colourings is decoded once.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd
import torch
from PIL import Image

from colorjob.conditions import FILE_COLUMNS, ConditionVocab
from colorjob.errors import ColorjobError
from colorjob.imaging import image_to_tensor, load_rgb, to_uint8, to_unit

__all__ = [
    "DatasetError", "DeviceSet", "EpochSampler", "PairDataset", "StreamedPairs", "epoch_seed",
    "load_splits", "read_metadata", "split_indices", "to_uint8", "to_unit", "training_batch",
]  # fmt: skip


class DatasetError(ColorjobError, ValueError):
    """A dataset folder that cannot be used as it is; the message says what to fix."""


# ---- metadata --------------------------------------------------------------------------------
def read_metadata(root: str | Path) -> pd.DataFrame:
    """Read and check ``root/metadata.csv``; every problem is a :class:`DatasetError`."""
    root = Path(root)
    path = root / "metadata.csv"
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist (make one: python -m colorjob.synth --out {root})"
        )
    if not path.is_file():
        raise DatasetError(
            f"{path} not found: a dataset folder needs metadata.csv with columns input, output and "
            "one column per condition (e.g. hair, shirt)"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}: line {line} is not UTF-8 text (byte 0x{raw[e.start]:02x}); save it as "
            "UTF-8 (most editors and spreadsheets offer it under 'Save as' / encoding)"
        ) from None
    header = next(csv.reader(io.StringIO(text)), None)
    if header is None or not any(h.strip() for h in header):
        raise DatasetError(f"{path} is empty: it needs a header input,output,<attributes...> and rows")  # fmt: skip
    names = [h.strip() for h in header]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetError(f"{path}: the header names column(s) {', '.join(repeated)} more than once; keep one of each")  # fmt: skip
    if any(not n for n in names):
        raise DatasetError(f"{path}: the header has an empty column name ({','.join(header)})")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DatasetError(
            f"{path} is empty: it needs a header input,output,<attributes...> and rows"
        ) from None
    except pd.errors.ParserError as e:
        raise DatasetError(f"{path}: {str(e).strip()}; quote values that contain commas") from None
    df.columns = names
    missing = [c for c in FILE_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{path} lacks column(s) {', '.join(missing)}; it has {', '.join(df.columns)}"
        )
    if len(df.columns) == len(FILE_COLUMNS):
        raise DatasetError(
            f"{path} has no condition columns (e.g. hair, shirt) besides input and output"
        )
    if df.empty:
        raise DatasetError(f"{path} has a header but no rows: the dataset is empty")
    blank = df.index[(df[list(FILE_COLUMNS)] == "").any(axis=1)].tolist()
    if blank:
        raise DatasetError(
            f"{path}: {_rows(blank)} {'has' if len(blank) == 1 else 'have'} an empty input or output"
        )
    attrs = [c for c in df.columns if c not in FILE_COLUMNS]
    empty = df.index[(df[attrs].apply(lambda c: c.str.strip()) == "").any(axis=1)].tolist()
    if empty:
        raise DatasetError(f"{path}: {_rows(empty)} {'has' if len(empty) == 1 else 'have'} an empty condition value ({', '.join(attrs)}); every row needs one of each")  # fmt: skip
    outside = [
        f"row {i + 2}: {f}"
        for i, pair in enumerate(df[list(FILE_COLUMNS)].itertuples(index=False))
        for f in pair
        if _leaves(f)
    ]
    if outside:
        shown = "; ".join(outside[:10]) + (
            f"; and {len(outside) - 10} more" if len(outside) > 10 else ""
        )
        raise DatasetError(
            f"{path}: paths must be relative to the dataset folder and stay inside it (no absolute "
            f"paths, no '..'): {shown}"
        )
    files = pd.unique(pd.concat([df["input"], df["output"]]))
    gone = [f for f in files if not (root / f).is_file()]
    if gone:
        shown = ", ".join(gone[:10]) + (f" and {len(gone) - 10} more" if len(gone) > 10 else "")
        raise DatasetError(
            f"{len(gone)} image file(s) listed in {path} are missing under {root}: {shown}"
        )
    return df


def _leaves(rel: str) -> bool:
    """Whether a path in metadata.csv points outside the dataset folder."""
    posix, windows = PurePosixPath(rel.replace("\\", "/")), PureWindowsPath(rel)
    return posix.is_absolute() or bool(windows.drive) or ".." in posix.parts


def mask_path(root: Path, sketch_rel: str, attribute: str, unique_stem: bool) -> Path | None:
    """Where the mask of ``attribute`` in a sketch is: ``masks/<sketch's path without its
    extension>_<attribute>.png`` (``masks/sketches/a/x_hair.png``), or, for a sketch whose file
    stem no other sketch shares, the flat ``masks/<stem>_<attribute>.png``."""
    rel = PurePosixPath(sketch_rel)
    keyed = root / "masks" / rel.parent / f"{rel.stem}_{attribute}.png"
    if keyed.is_file():
        return keyed
    flat = root / "masks" / f"{rel.stem}_{attribute}.png"
    return flat if unique_stem and flat.is_file() else None


def _rows(idx: list[int]) -> str:
    """``row 4`` / ``rows 4, 7 and 3 more``: lines of metadata.csv (the header is line 1)."""
    lines = [str(i + 2) for i in idx[:10]]  # +2: header line and 1-based numbering
    more = f" and {len(idx) - 10} more" if len(idx) > 10 else ""
    return ("row " if len(idx) == 1 else "rows ") + ", ".join(lines) + more


def split_indices(df: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0, by: str = "sketch"):
    """Train/validation row indices.

    ``by="sketch"`` holds out whole characters (every colouring of a validation sketch is in
    validation), so validation measures generalisation to new drawings. ``by="pair"`` splits rows.
    At least one item goes each way when there are two or more.
    """
    if by not in ("sketch", "pair"):
        raise ValueError(f"split must be 'sketch' or 'pair', got {by!r}")
    rng = np.random.default_rng(seed)
    groups = np.array(sorted(pd.unique(df["input"]))) if by == "sketch" else np.arange(len(df))
    n_val = int(round(len(groups) * val_fraction))
    if len(groups) >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), len(groups) - 1)
    val_groups = set(rng.permutation(groups)[:n_val].tolist())
    keys = df["input"].to_numpy() if by == "sketch" else np.arange(len(df))
    is_val = np.array([k in val_groups for k in keys], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


# ---- the dataset -----------------------------------------------------------------------------
class PairDataset(torch.utils.data.Dataset):
    """(sketch, target, condition) items from a folder in the seed's format.

    Items are dicts ``{"sketch", "target", "condition", "index"}``; sketch and target are float
    ``(3, S, S)`` tensors in [-1, 1], condition is a long ``(A,)`` tensor of value indices in the
    vocabulary's attribute order (turn it into planes with ``vocab.planes``).
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 256,
        vocab: ConditionVocab | None = None,
        rows: np.ndarray | list[int] | None = None,
        metadata: pd.DataFrame | None = None,
        cache: dict | None = None,
    ):
        self.root = Path(root)
        self.image_size = int(image_size)
        full = read_metadata(self.root) if metadata is None else metadata
        self.vocab = vocab or ConditionVocab.from_metadata(full, self.root)
        extra = [n for n in self.vocab.names if n not in full.columns]
        if extra:
            raise DatasetError(
                f"{self.root / 'metadata.csv'} lacks condition column(s) {', '.join(extra)} the model needs"
            )
        self.metadata = (
            full if rows is None else full.iloc[np.asarray(rows, dtype=int)].reset_index(drop=True)
        )
        if self.metadata.empty:
            raise DatasetError(
                f"no rows selected from {self.root / 'metadata.csv'}: the split is empty"
            )
        bad = []
        cond = []
        for i, row in enumerate(self.metadata[self.vocab.names].to_dict("records")):
            try:
                cond.append(self.vocab.encode(row))
            except ValueError as e:
                bad.append(f"row {i + 2}: {e}")
        if bad:
            raise DatasetError(f"{self.root / 'metadata.csv'}: " + "; ".join(bad[:10]))
        self.conditions = torch.tensor(cond, dtype=torch.long)
        self._stems = Counter(PurePosixPath(p).stem for p in pd.unique(full["input"]))
        # Shared between the train and validation splits of one run: each file decoded once.
        self._cache: dict[str, torch.Tensor] = {} if cache is None else cache

    def __len__(self) -> int:
        return len(self.metadata)

    def image(self, rel: str) -> torch.Tensor:
        """Decoded ``(3, S, S)`` uint8 tensor of one file, from the cache after the first time."""
        t = self._cache.get(rel)
        if t is None:
            try:
                t = image_to_tensor(load_rgb(self.root / rel), self.image_size)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise DatasetError(f"cannot read image {self.root / rel}: {e}") from e
            self._cache[rel] = t
        return t

    def mask(self, sketch_rel: str, attribute: str) -> torch.Tensor | None:
        """``(S, S)`` bool region of ``attribute`` in a sketch, or None when there is no mask file
        (see :func:`mask_path` for where it is looked for)."""
        key = f"mask:{sketch_rel}:{attribute}"
        if key not in self._cache:
            path = mask_path(
                self.root, sketch_rel, attribute, self._stems[PurePosixPath(sketch_rel).stem] == 1
            )
            if path is None:
                return None
            m = (
                Image.open(path)
                .convert("L")
                .resize((self.image_size,) * 2, Image.Resampling.NEAREST)
            )
            self._cache[key] = torch.from_numpy(np.asarray(m) > 127)
        return self._cache[key]

    def has_masks(self) -> bool:
        return all(
            self.mask(s, a) is not None
            for s in pd.unique(self.metadata["input"])
            for a in self.vocab.names
        )

    def __getitem__(self, i: int) -> dict:
        row = self.metadata.iloc[i]
        return {
            "sketch": to_unit(self.image(row["input"])),
            "target": to_unit(self.image(row["output"])),
            "condition": self.conditions[i],
            "index": i,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """The whole split as stacked uint8 tensors (to keep a small dataset on the GPU)."""
        sketch_keys = list(pd.unique(self.metadata["input"]))
        sk_index = {k: j for j, k in enumerate(sketch_keys)}
        return {
            "sketches": torch.stack([self.image(k) for k in sketch_keys]),
            "sketch_index": torch.tensor(
                [sk_index[k] for k in self.metadata["input"]], dtype=torch.long
            ),
            "targets": torch.stack([self.image(k) for k in self.metadata["output"]]),
            "conditions": self.conditions.clone(),
        }


def load_splits(
    root: str | Path,
    image_size: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    split: str = "sketch",
    vocab: ConditionVocab | None = None,
) -> tuple[PairDataset, PairDataset]:
    """Train and validation datasets of one folder sharing one decode cache and one vocabulary."""
    df = read_metadata(root)
    vocab = vocab or ConditionVocab.from_metadata(df, root)
    tr, va = split_indices(df, val_fraction, seed, split)
    cache: dict = {}
    train = PairDataset(root, image_size, vocab, tr, metadata=df, cache=cache)
    val = PairDataset(root, image_size, vocab, va, metadata=df, cache=cache) if len(va) else None
    return train, val


# ---- on the device: batches gathered by index ---------------------------------------------------
def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of a run: shuffling, flips and dropout replay exactly on resume."""
    return seed * 100_003 + epoch


class EpochSampler(torch.utils.data.Sampler):
    """A permutation that depends only on (seed, epoch): resuming at epoch k replays epoch k."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def training_batch(
    sketch: torch.Tensor,
    target: torch.Tensor,
    flip: bool = False,
    channels_last: bool = False,
    augment: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 sketches and targets -> floats in [-1, 1] for a training step: random horizontal
    flips with ``flip``, and with ``augment`` > 0 the style augmentations of
    :mod:`colorjob.augment`, each with that probability."""
    sketch, target = to_unit(sketch), to_unit(target)
    if flip:
        f = (torch.rand(sketch.shape[0], device=sketch.device) < 0.5)[:, None, None, None]
        sketch, target = (
            torch.where(f, sketch.flip(-1), sketch),
            torch.where(f, target.flip(-1), target),
        )
    if augment > 0:
        from colorjob.augment import style

        sketch, target = style(sketch, target, augment)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return sketch.contiguous(memory_format=fmt), target.contiguous(memory_format=fmt)


class DeviceSet:
    """A split's decoded images as uint8 tensors on the device; batches are gathered by index.

    ``batch(idx)`` -> ``(sketch, target, condition)``: float sketches and targets in [-1, 1] and
    the ``(B, C)`` condition vectors the networks take.
    """

    def __init__(self, ds: PairDataset, device: torch.device):
        t = ds.tensors()
        self.sketches = t["sketches"].to(device)
        self.sketch_index = t["sketch_index"].to(device)
        self.targets = t["targets"].to(device)
        self.conditions = t["conditions"].to(device)
        self.vectors = ds.vocab.vectors(self.conditions.cpu()).to(
            device
        )  # (N, C) once, not per step
        self.vocab, self.size = ds.vocab, ds.image_size

    def __len__(self) -> int:
        return self.targets.shape[0]

    def batch(
        self,
        idx: torch.Tensor,
        flip: bool = False,
        channels_last: bool = False,
        augment: float = 0.0,
    ):
        """A batch by index (see :func:`training_batch`)."""
        sketch, target = training_batch(
            self.sketches[self.sketch_index[idx]], self.targets[idx], flip, channels_last, augment
        )
        return sketch, target, self.vectors[idx]


# ---- streamed from files ------------------------------------------------------------------------
class StreamedPairs(torch.utils.data.IterableDataset):
    """A split's training batches decoded from its files as training goes, for datasets larger
    than memory: what is held is a few windows of sketches, whatever the dataset's size.

    Every epoch (seeded: :func:`epoch_seed`) the sketches are shuffled and cut into windows of
    ``window`` sketches; a window's pairs are shuffled together, so a sketch is decoded once per
    epoch and shared by all its colourings in that window. The epoch's pairs are then cut into
    ``batch_size`` batches and dealt to the ``world`` processes in turn, each the same number of
    full batches (a data-parallel step needs every process), disjoint; one process alone keeps
    the last, partial batch, as in memory. Within a process, DataLoader workers
    take contiguous runs of its batches. Yields ``(sketch, target, conditions, rows)``: uint8
    images, value indices and the split's row numbers.
    """

    def __init__(self, ds: PairDataset, batch_size: int, seed: int, window: int = 8, rank: int = 0, world: int = 1):  # fmt: skip
        self.root, self.size = ds.root, ds.image_size
        self.inputs = ds.metadata["input"].to_numpy()
        self.outputs = ds.metadata["output"].to_numpy()
        self.conditions = ds.conditions
        self.sketches = list(pd.unique(ds.metadata["input"]))
        rows = pd.Series(np.arange(len(self.inputs)))
        self.by_sketch = rows.groupby(self.inputs).apply(list).to_dict()  # sketch -> its rows
        self.batch_size, self.seed, self.window, self.rank, self.world = batch_size, seed, window, rank, world  # fmt: skip
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self) -> list[np.ndarray]:
        """This process's batches of this epoch, as row indices (the same in every worker)."""
        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch))
        order = rng.permutation(len(self.sketches))
        rows = []
        for w in range(0, len(order), self.window):
            chunk = [
                i for k in order[w : w + self.window] for i in self.by_sketch[self.sketches[k]]
            ]
            rows.extend(rng.permutation(chunk).tolist())
        batches = [rows[b : b + self.batch_size] for b in range(0, len(rows), self.batch_size)]
        if self.world > 1:  # full batches only, the same number for every process
            batches = batches[: len(rows) // self.batch_size // self.world * self.world]
        return [np.asarray(b) for b in batches[self.rank :: self.world]]

    def __len__(self) -> int:
        """Batches per epoch of this process (what the DataLoader yields)."""
        if self.world == 1:
            return -(-len(self.inputs) // self.batch_size)
        return len(self.inputs) // self.batch_size // self.world

    def pairs_per_epoch(self) -> int:
        """Pairs this process trains on per epoch."""
        if self.world == 1:
            return len(self.inputs)
        return len(self) * self.batch_size

    def __iter__(self):
        batches = self.plan()
        info = torch.utils.data.get_worker_info()
        if info is not None:  # a contiguous run of batches per DataLoader worker
            per = -(-len(batches) // info.num_workers)
            batches = batches[info.id * per : (info.id + 1) * per]
        last_use = {s: b for b, rows in enumerate(batches) for s in self.inputs[rows]}
        sketches: dict[str, torch.Tensor] = {}  # decoded once, kept until their last batch
        for b, rows in enumerate(batches):
            for rel in set(self.inputs[rows]) - set(sketches):
                sketches[rel] = self._decode(rel)
            yield (
                torch.stack([sketches[r] for r in self.inputs[rows]]),
                torch.stack([self._decode(r) for r in self.outputs[rows]]),  # each once per epoch
                self.conditions[rows],
                torch.from_numpy(rows),
            )
            for rel in [r for r in sketches if last_use[r] == b]:
                del sketches[rel]

    def _decode(self, rel: str) -> torch.Tensor:
        try:
            return image_to_tensor(load_rgb(self.root / rel), self.size)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DatasetError(f"cannot read image {self.root / rel}: {e}") from e
