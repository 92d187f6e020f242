"""Validation metrics and sample grids of a generator, through the one inference path.

:func:`validate` colours every held-out (sketch, condition) pair with
:func:`colorjob.inference.colorize` (uint8 out, exactly as batch colorization writes them) and
measures L1 and PSNR against the targets and, where the dataset has region masks and colours,
condition fidelity. :func:`save_samples` draws a fixed grid of held-out sketches x conditions.
"""

from __future__ import annotations

from pathlib import Path

import torch

from colorjob.data import DeviceSet, PairDataset
from colorjob.imaging import to_unit
from colorjob.inference import Precision, colorize
from colorjob.metrics import fidelity_hits, l1, psnr
from colorjob.plots import save_grid


def region_masks(ds: PairDataset) -> list[dict] | None:
    """Per row: attribute -> region mask; None when any mask or colour is missing."""
    if any(c is None for a in ds.vocab.attributes for c in a.colors) or not ds.has_masks():
        return None
    return [{a: ds.mask(s, a) for a in ds.vocab.names} for s in ds.metadata["input"]]


def validate(
    g, val: DeviceSet, masks: list[dict] | None, batch_size: int, precision: Precision = "auto"
) -> dict:
    """``val_l1``, ``val_psnr`` (on the uint8 outputs, read back on [-1, 1]) and
    ``val_fidelity`` (None without masks) of ``g`` on a validation split."""
    fake = colorize(
        g, val.sketches, val.conditions, val.vocab, val.sketch_index, batch_size, precision
    )
    fidelity = None
    if masks is not None:
        hits = fidelity_hits(fake.cpu(), val.conditions.cpu(), masks, val.vocab)
        fidelity = hits.float().mean().item()
    fake, target = to_unit(fake), to_unit(val.targets)
    return {
        "val_l1": l1(fake, target).mean().item(),
        "val_psnr": psnr(fake, target).mean().item(),
        "val_fidelity": fidelity,
    }


def sample_grid(val: DeviceSet, n_sketches: int, n_conditions: int) -> dict:
    """Fixed (sketch, condition) pairs for the per-epoch picture: sketches down, conditions
    across (spread evenly over the validation split's distinct conditions)."""
    n_sk = min(n_sketches, val.sketches.shape[0])
    conds = torch.unique(val.conditions, dim=0)
    k = min(n_conditions, conds.shape[0])
    conds = conds[torch.linspace(0, conds.shape[0] - 1, k).round().long()]
    return {
        "sketches": val.sketches[:n_sk],
        "conditions": conds.repeat(n_sk, 1),
        "sketch_index": torch.arange(n_sk, device=conds.device).repeat_interleave(k),
        "ncol": k + 1,
    }


def save_samples(
    g, grid: dict, vocab, path: Path, batch_size: int, precision: Precision = "auto"
) -> Path:
    """One PNG: each sketch, then its colourings in the grid's conditions."""
    fake = colorize(
        g, grid["sketches"], grid["conditions"], vocab, grid["sketch_index"], batch_size, precision
    )
    k = grid["ncol"] - 1
    rows = [
        torch.cat([grid["sketches"][i : i + 1].to(fake.device), fake[i * k : (i + 1) * k]])
        for i in range(grid["sketches"].shape[0])
    ]
    return save_grid(torch.cat(rows), path, ncol=grid["ncol"])


def fidelity_of_files(
    dataset: Path, sketches_prefix: str, rows, folder: Path, image_size: int
) -> float | None:
    """Condition fidelity of image files made from a dataset's sketches (e.g. batch outputs).

    ``rows``: ``(sketch, output, {attribute: value})`` with ``sketch`` relative to the folder the
    job read (``sketches_prefix`` inside ``dataset``) and ``output`` relative to ``folder``. Uses
    the dataset's masks at ``image_size``; None when it has none (or colours are unknown).
    """
    from colorjob.imaging import image_to_tensor, load_rgb

    ds = PairDataset(dataset, image_size)
    if any(c is None for a in ds.vocab.attributes for c in a.colors):
        return None
    images, conditions, masks = [], [], []
    for sketch, output, values in rows:
        mask = {a: ds.mask(sketches_prefix + sketch, a) for a in ds.vocab.names}
        if any(m is None for m in mask.values()):
            return None
        images.append(image_to_tensor(load_rgb(folder / output), image_size))
        conditions.append(ds.vocab.encode(values))
        masks.append(mask)
    if not images:
        return None
    hits = fidelity_hits(torch.stack(images), torch.tensor(conditions), masks, ds.vocab)
    return hits.float().mean().item()


def validate_streamed(
    g, ds: PairDataset, batch_size: int, chunk: int = 16, precision: Precision = "auto"
) -> dict:
    """:func:`validate` for a split too large to hold decoded: ``chunk`` sketches (with all their
    pairs) are decoded at a time; the means are weighted by pairs, so they equal validate's."""
    import numpy as np
    import pandas as pd

    device = next(g.parameters()).device
    sketches = pd.unique(ds.metadata["input"])
    sums, n, fid_hits, fid_n = {"val_l1": 0.0, "val_psnr": 0.0}, 0, 0.0, 0
    with_masks = True
    for i in range(0, len(sketches), chunk):
        rows = np.flatnonzero(ds.metadata["input"].isin(sketches[i : i + chunk]).to_numpy())
        part = PairDataset(ds.root, ds.image_size, ds.vocab, rows=rows, metadata=ds.metadata)
        masks = region_masks(part) if with_masks else None
        with_masks = masks is not None
        r = validate(g, DeviceSet(part, device), masks, batch_size, precision)
        sums = {k: v + r[k] * len(rows) for k, v in sums.items()}
        n += len(rows)
        if with_masks:
            fid_hits, fid_n = fid_hits + r["val_fidelity"] * len(rows), fid_n + len(rows)
    return {k: v / max(1, n) for k, v in sums.items()} | {"val_fidelity": fid_hits / fid_n if with_masks and fid_n else None}  # fmt: skip
