"""Validation metrics and sample grids of a generator, through the one inference path.

:func:`validate` colours every held-out (sketch, condition) pair with
:func:`colorjob.inference.colorize` (uint8 out, in the output mode the model is used with:
by default the composite, the sketch's own lines over the colours, exactly as batch writes it)
and measures L1 and PSNR against the targets and, where the dataset has region masks and
colours, condition fidelity, per-attribute pixel accuracy and ΔE2000, background leak and line
preservation (:mod:`colorjob.metrics`). :func:`save_samples` draws a fixed grid of held-out
sketches x conditions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from colorjob.data import DeviceSet, PairDataset
from colorjob.imaging import to_unit
from colorjob.inference import Output, Precision, colorize
from colorjob.metrics import BACKGROUND, colouring_stats, fidelity, l1, psnr
from colorjob.plots import save_grid

#: The per-epoch columns every validation gives (more, per attribute, where masks allow).
BASE = ("val_l1", "val_psnr", "val_fidelity")


def region_masks(ds: PairDataset) -> list[dict] | None:
    """Per row: attribute (and ``background``, where the dataset has it) -> region mask; None
    when any attribute's mask or colour is missing."""
    if not ds.vocab.judgeable() or not ds.has_masks():
        return None
    masks = []
    for s in ds.metadata["input"]:
        m = {a: ds.mask(s, a) for a in ds.vocab.names}
        bg = ds.mask(s, BACKGROUND)
        if bg is not None:
            m[BACKGROUND] = bg
        masks.append(m)
    return masks


def validate(
    g,
    val: DeviceSet,
    masks: list[dict] | None,
    batch_size: int,
    precision: Precision = "auto",
    output: Output = "composite",
) -> dict:
    """``val_l1``, ``val_psnr`` (on the uint8 outputs, read back on [-1, 1]), ``val_fidelity``
    (None without masks) and, with masks, ``val_acc_<attr>``, ``val_de_<attr>_median`` /
    ``_p95``, ``val_leak``, ``val_lines`` of ``g`` on a validation split."""
    fake = colorize(
        g, val.sketches, val.conditions, val.vocab, val.sketch_index, batch_size, precision,
        output=output,
    )  # fmt: skip
    out = {"val_fidelity": None}
    if masks is not None:
        sketches = val.sketches[val.sketch_index].cpu()
        out["val_fidelity"] = fidelity(fake.cpu(), val.conditions.cpu(), masks, val.vocab, sketches)
        out |= {f"val_{k}": v for k, v in colouring_stats(fake, sketches, val.conditions, masks, val.vocab).items()}  # fmt: skip
    fake, target = to_unit(fake), to_unit(val.targets)
    return {"val_l1": l1(fake, target).mean().item(), "val_psnr": psnr(fake, target).mean().item()} | out  # fmt: skip


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
    g, grid: dict, vocab, path: Path, batch_size: int, precision: Precision = "auto", output: Output = "composite"
) -> Path:  # fmt: skip
    """One PNG: each sketch, then its colourings in the grid's conditions."""
    fake = colorize(
        g, grid["sketches"], grid["conditions"], vocab, grid["sketch_index"], batch_size, precision,
        output=output,
    )  # fmt: skip
    k = grid["ncol"] - 1
    rows = [
        torch.cat([grid["sketches"][i : i + 1].to(fake.device), fake[i * k : (i + 1) * k]])
        for i in range(grid["sketches"].shape[0])
    ]
    return save_grid(torch.cat(rows), path, ncol=grid["ncol"])


def metrics_of_files(
    dataset: Path, sketches_prefix: str, rows, folder: Path, image_size: int
) -> dict | None:
    """Fidelity and the colouring metrics of image files made from a dataset's sketches (batch
    outputs): ``fidelity``, ``acc_<attr>``, ``de_<attr>_median`` / ``_p95``, ``leak``, ``lines``.

    ``rows``: ``(sketch, output, {attribute: value})`` with ``sketch`` relative to the folder the
    job read (``sketches_prefix`` inside ``dataset``) and ``output`` relative to ``folder``. Uses
    the dataset's masks at ``image_size``; None when it has none (or colours are unknown).
    """
    from colorjob.imaging import image_to_tensor, load_rgb

    ds = PairDataset(dataset, image_size)
    if not ds.vocab.judgeable():
        return None
    images, sketches, conditions, masks = [], [], [], []
    for sketch, output, values in rows:
        mask = {a: ds.mask(sketches_prefix + sketch, a) for a in ds.vocab.names}
        if any(m is None for m in mask.values()):
            return None
        bg = ds.mask(sketches_prefix + sketch, BACKGROUND)
        if bg is not None:
            mask[BACKGROUND] = bg
        images.append(image_to_tensor(load_rgb(folder / output), image_size))
        sketches.append(image_to_tensor(load_rgb(Path(dataset) / (sketches_prefix + sketch)), image_size))  # fmt: skip
        conditions.append(ds.vocab.encode(values))
        masks.append(mask)
    if not images:
        return None
    images, codes, sketches = torch.stack(images), torch.tensor(conditions), torch.stack(sketches)
    out = {"fidelity": fidelity(images, codes, masks, ds.vocab, sketches)}
    return out | colouring_stats(images, sketches, codes, masks, ds.vocab)


def fidelity_of_files(dataset: Path, sketches_prefix: str, rows, folder: Path, image_size: int) -> float | None:  # fmt: skip
    """Condition fidelity alone of image files (see :func:`metrics_of_files`)."""
    m = metrics_of_files(dataset, sketches_prefix, rows, folder, image_size)
    return None if m is None else m["fidelity"]


def validate_streamed(
    g, ds: PairDataset, batch_size: int, chunk: int = 16, precision: Precision = "auto", output: Output = "composite"
) -> dict:  # fmt: skip
    """:func:`validate` for a split too large to hold decoded: ``chunk`` sketches (with all their
    pairs) are decoded at a time; L1, PSNR, fidelity, accuracy, leak and line preservation are
    weighted by pairs, so they equal validate's; ΔE percentiles are those of the chunks' mean."""
    import pandas as pd

    device = next(g.parameters()).device
    sketches = pd.unique(ds.metadata["input"])
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    with_masks = True
    for i in range(0, len(sketches), chunk):
        rows = np.flatnonzero(ds.metadata["input"].isin(sketches[i : i + chunk]).to_numpy())
        part = PairDataset(ds.root, ds.image_size, ds.vocab, rows=rows, metadata=ds.metadata)
        masks = region_masks(part) if with_masks else None
        with_masks = masks is not None
        r = validate(g, DeviceSet(part, device), masks, batch_size, precision, output)
        for k, v in r.items():
            if v is not None:
                sums[k] = sums.get(k, 0.0) + v * len(rows)
                weights[k] = weights.get(k, 0.0) + len(rows)
    out = {k: sums[k] / weights[k] for k in sums}
    return {"val_fidelity": None} | out
