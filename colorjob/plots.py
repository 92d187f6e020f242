"""Pictures a person looks at: image grids and training curves (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from colorjob.storage import replacing


def tile(images: torch.Tensor, ncol: int, pad: int = 2, fill: int = 255) -> torch.Tensor:
    """``(N, C, H, W)`` -> one ``(C, H', W')`` grid, ``ncol`` images a row (row-major), ``pad``
    pixels of ``fill`` around every image: torchvision's ``make_grid`` layout (which returns a
    single image bare; here it is framed too), without importing torchvision (its import pulls in
    torch._dynamo: 1.3 s in every training process, measured)."""
    n, c, h, w = images.shape
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    grid = images.new_full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), fill)
    for i, image in enumerate(images):
        y, x = pad + (i // ncol) * (h + pad), pad + (i % ncol) * (w + pad)
        grid[:, y : y + h, x : x + w] = image
    return grid


def save_grid(images: torch.Tensor, path: str | Path, ncol: int, pad: int = 2) -> Path:
    """``(N, 3, H, W)`` uint8 images -> one PNG grid with ``ncol`` columns (row-major)."""
    grid = tile(images.cpu(), ncol, pad)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Write a figure atomically (readers never see half a PNG) and free it."""
    fig.tight_layout()
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    _pyplot().close(fig)
    return path


def plot_curves(
    rows: Sequence[dict],
    path: str | Path,
    panels: Sequence[tuple[str, Sequence[str]]],
    x: str = "epoch",
) -> Path:
    """One panel per ``(title, [columns])``, each column a line over ``x``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    xs = [r[x] for r in rows]
    for ax, (title, cols) in zip(axes[0], panels, strict=True):
        for c in cols:
            ys = [r.get(c) for r in rows]
            if any(y is not None for y in ys):
                ax.plot(
                    xs, [float("nan") if y is None else y for y in ys], marker="o", ms=3, label=c
                )
        ax.set_title(title)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_trials(curves: dict, path: str | Path, metric: str = "val_l1", x: str = "epoch") -> Path:
    """One line per trial: ``curves`` maps a trial name to a DataFrame with ``x`` and ``metric``.

    Under Population Based Training a trial may continue from another's checkpoint (its row's
    ``parent`` names that trial): its line breaks there, and a dashed line joins it to the
    point of the trial it copied, so each model's lineage can be followed.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    exploits = 0
    for i, (name, df) in enumerate(curves.items()):
        color = f"C{i % 10}"
        parents = df["parent"].fillna("") if "parent" in df else [""] * len(df)
        starts = [j for j, p in enumerate(parents) if p] + [len(df)]
        begin = 0
        for end in starts:  # one segment per stretch of the trial's own lineage
            part = df.iloc[begin:end]
            ax.plot(part[x], part[metric], marker="o", ms=3, color=color, label=str(name) if begin == 0 else None)  # fmt: skip
            if end < len(df):
                row, donor = df.iloc[end], curves.get(parents[end])
                if donor is not None:
                    prev = donor[donor[x] == row[x] - 1]
                    if len(prev):
                        ax.plot([row[x] - 1, row[x]], [prev[metric].iloc[0], row[metric]], "--", color=color, lw=1)  # fmt: skip
                        exploits += 1
            begin = end
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_yscale("log")
    title = f"{metric} per {x}, every trial"
    ax.set_title(
        title + (f" ({exploits} exploits: dashed, from the trial copied)" if exploits else "")
    )
    ax.grid(alpha=0.3, which="both")
    if len(curves) <= 16:
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)
