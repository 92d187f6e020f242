"""Line art kept exactly: colours painted *under* the sketch's own lines, as an artist does.

A sketch's lines become a line layer: per pixel an alpha from its darkness relative to the
sketch's own paper and ink (``alpha = (L_paper - L) / (L_paper - L_ink)``, clipped to [0, 1];
``L_paper`` and ``L_ink`` are the 99th and 0.05th percentiles of its luminance) and the ink colour
(the mean of its darkest pixels). A *colour layer* is RGB plus a coverage (where paint goes; the
paper shows elsewhere). The composite a user gets is

    base = coverage * colour + (1 - coverage) * sketch        (the paper, textures included)
    out  = alpha * ink + (1 - alpha) * base                   (the lines over the colours)

so the stroke's inner pixels (alpha near 1) are the sketch's ink whatever the model did, and a
colour layer is what a painter puts under the line art. For black ink on white paper this is
exactly a multiply layer. The same functions run on batches at the model's size (training,
validation, sample grids) and on one image at its own size (batch, in strips of rows).

Generators without a coverage head (the seed's) paint the whole square: their coverage is 1 and
their colour layer for ``output: layers`` is estimated (:func:`layer_from_rgb`: the lines filled
in from their surroundings, coverage where the picture differs from the paper).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PAPER_Q, INK_Q = 0.99, 0.0005  # luminance percentiles of paper and ink
MIN_CONTRAST = 48.0  # below this (in 0..255) a sketch has no lines worth keeping
PAINT_TOL = 24.0  # a pixel differs from the paper by more than this (max channel): it is painted
CORE = 0.9  # alpha of a stroke's inner pixels (where the composite is the sketch's ink)


def luminance(x255: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` in [0, 255] -> ``(N, 1, H, W)`` (Rec. 601)."""
    w = torch.tensor([0.299, 0.587, 0.114], device=x255.device, dtype=torch.float32).view(1, 3, 1, 1)  # fmt: skip
    return (x255.float() * w).sum(1, keepdim=True)


def _percentiles(lum: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Per image: luminance percentiles from a 256-bin histogram (any image size)."""
    n = lum.shape[0]
    q = lum.reshape(n, -1).round().clamp(0, 255).long()
    hist = torch.zeros(n, 256, device=lum.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))  # fmt: skip
    cdf = hist.cumsum(1) / q.shape[1]
    return torch.stack([(cdf < p).sum(1).float() for p in qs], 1)  # (N, len(qs))


def line_stats(sketch255: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image ``(paper, ink)`` luminance levels, ``(N, 1, 1, 1)`` each (paper - ink >= the
    contrast floor, or the sketch is taken as having no lines)."""
    pct = _percentiles(luminance(sketch255), (PAPER_Q, INK_Q))
    paper, ink = pct[:, 0], pct[:, 1]
    ink = torch.where(paper - ink < MIN_CONTRAST, paper - 1e6, ink)  # no lines: alpha 0
    return paper.view(-1, 1, 1, 1), ink.view(-1, 1, 1, 1)


def line_alpha(sketch255: torch.Tensor, stats=None) -> torch.Tensor:
    """``(N, 1, H, W)`` alpha of the sketch's lines (see the module's text)."""
    paper, ink = stats if stats is not None else line_stats(sketch255)
    return ((paper - luminance(sketch255)) / (paper - ink).clamp_min(1.0)).clamp(0, 1)


def ink_colour(sketch255: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 1, 1)``: the mean colour of each sketch's stroke cores (black if it has none)."""
    core = (alpha >= CORE).float()
    total = core.sum((2, 3), keepdim=True)
    mean = (sketch255.float() * core).sum((2, 3), keepdim=True) / total.clamp_min(1.0)
    return torch.where(total > 0, mean, torch.zeros_like(mean))


def composite(colour255: torch.Tensor, coverage: torch.Tensor | None, sketch255: torch.Tensor, stats=None) -> torch.Tensor:  # fmt: skip
    """The lines of ``sketch255`` over the colour layer; floats in [0, 255], ``(N, 3, H, W)``.

    ``coverage``: ``(N, 1, H, W)`` in [0, 1], or None (the whole square is painted)."""
    sketch255 = sketch255.float()
    alpha = line_alpha(sketch255, stats)
    ink = ink_colour(sketch255, alpha)
    base = colour255 if coverage is None else coverage * colour255 + (1 - coverage) * sketch255
    return alpha * ink + (1 - alpha) * base


def fill_lines(image: torch.Tensor, lines: torch.Tensor, steps: int = 12) -> torch.Tensor:
    """``image`` with the pixels under ``lines`` (a ``(N, 1, H, W)`` bool mask) filled in from
    their surroundings (repeated masked 3x3 means): the colours under the strokes."""
    known = (~lines).float()
    img = image.float() * known
    for _ in range(steps):
        s = F.avg_pool2d(img, 3, 1, 1, count_include_pad=False)
        k = F.avg_pool2d(known, 3, 1, 1, count_include_pad=False)
        grow = (known == 0) & (k > 0)
        img = torch.where(grow, s / k.clamp_min(1e-6), img)
        known = torch.where(grow, torch.ones_like(known), known)
        if bool(known.min() > 0):
            break
    return img


def layer_targets(sketch255: torch.Tensor, target255: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """What a layered generator learns from a (sketch, coloured) pair: the flat colours (the
    target with the lines filled in) and the coverage (where the target differs from the
    paper, under the lines from the surroundings)."""
    lines = line_alpha(sketch255) >= 0.5
    painted = ((target255.float() - sketch255.float()).abs().amax(1, keepdim=True) > PAINT_TOL).float()  # fmt: skip
    flat = fill_lines(target255, lines)
    coverage = fill_lines(painted, lines).clamp(0, 1)
    return flat, coverage


def layer_from_rgb(rgb255: torch.Tensor, sketch255: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A colour layer estimated from a generator's full picture (no coverage head)."""
    return layer_targets(sketch255, rgb255)


# ---- one image at its own size ------------------------------------------------------------------
def _strips(h: int, rows: int):
    return [(y, min(h, y + rows)) for y in range(0, h, rows)]


def _tensor(a: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` uint8 -> ``(1, C, H, W)``, sharing memory where it may (PIL's arrays are
    read-only: those are copied)."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy()).permute(2, 0, 1)[None]


def composite_image(layer: np.ndarray, sketch: np.ndarray, rows: int = 512) -> np.ndarray:
    """``layer``: ``(H, W, 3 or 4)`` uint8 (RGB, coverage), ``sketch``: ``(H, W, 3)`` uint8 ->
    the composite ``(H, W, 3)`` uint8: the same arithmetic as :func:`composite`, a strip of
    ``rows`` rows at a time (memory bounded whatever the image's size)."""
    s = _tensor(sketch)
    strips = _strips(sketch.shape[0], rows)
    hist = torch.zeros(1, 256)
    for y0, y1 in strips:
        q = luminance(s[:, :, y0:y1]).reshape(1, -1).round().clamp(0, 255).long()
        hist.scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    cdf = hist.cumsum(1) / hist.sum()
    paper, ink_l = (cdf < PAPER_Q).sum().float(), (cdf < INK_Q).sum().float()
    if paper - ink_l < MIN_CONTRAST:
        ink_l = paper - 1e6
    stats = (paper.view(1, 1, 1, 1), ink_l.view(1, 1, 1, 1))
    acc, count = torch.zeros(1, 3, 1, 1), 0.0
    for y0, y1 in strips:
        st = s[:, :, y0:y1].float()
        core = (line_alpha(st, stats) >= CORE).float()
        acc += (st * core).sum((2, 3), keepdim=True)
        count += float(core.sum())
    ink = acc / count if count else torch.zeros(1, 3, 1, 1)
    out = np.empty(sketch.shape, np.uint8)
    for y0, y1 in strips:
        st = s[:, :, y0:y1].float()
        lay = _tensor(layer[y0:y1]).float()
        cov = lay[:, 3:4] / 255.0 if lay.shape[1] == 4 else None
        a = line_alpha(st, stats)
        base = lay[:, :3] if cov is None else cov * lay[:, :3] + (1 - cov) * st
        comp = a * ink + (1 - a) * base
        out[y0:y1] = comp[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
    return out
