"""Image metrics: L1 and PSNR, condition fidelity, and what a studio looks at in a colouring.

All colour comparisons go through :mod:`colorjob.colour` (scikit-image's CIELAB and CIEDE2000).

- **Condition fidelity**: did the generator paint each attribute in the colour that was
  requested? For every (image, attribute) pair: the attribute's region (the dataset's mask,
  eroded by one pixel so that line art at the border does not count), its *dominant* colour (the
  densest cell of a coarse colour histogram, smoothed over neighbouring cells, then the median of
  the pixels near it: robust to line art, strands and shirt patterns that cover less than the
  main colour). A named value is a hit when the nearest of its attribute's palette colours
  (CIEDE2000) is the one asked for; a colour value (``#rrggbb``) when the dominant colour is
  within ΔE2000 :data:`FIDELITY_DE` of it.
- **Pixel accuracy** per attribute: the share of the region's pixels (eroded, lines excluded)
  whose nearest colour among the attribute's palette and the requested colour (CIELAB distance)
  is the requested one.
- **ΔE2000** per attribute: between the requested colour and the median colour the output gives
  the region (lines excluded); reported as the median and the 95th percentile over images.
- **Background leak**: the share of background pixels (the ``background`` mask, eroded, lines
  excluded) that the output changes: more than :data:`LEAK_TOL` on some channel from the sketch.
- **Line preservation**: the share of the sketch's stroke cores (line alpha >= 0.9, see
  :mod:`colorjob.composite`) that the output keeps within :data:`LINE_TOL` on every channel.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from colorjob.colour import delta_e, rgb_to_lab
from colorjob.composite import CORE, line_alpha
from colorjob.conditions import ConditionVocab
from colorjob.imaging import erode

BINS = 16  # histogram cells per RGB channel
FIDELITY_DE = 10.0  # a colour request is met when the region's colour is this close (ΔE2000)
LEAK_TOL = 24  # a background pixel changed by more than this (0..255, any channel) has leaked
LINE_TOL = 32  # a stroke pixel within this (0..255, every channel) of the sketch is kept
BACKGROUND = "background"  # the mask name of the background region
MIN_REGION = 16  # pixels a region keeps once eroded (lines out) to be judged at all


def l1(fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean |fake - target| on [-1, 1] tensors (the scale of the pix2pix L1 loss)."""
    return (fake.float() - target.float()).abs().flatten(1).mean(1)


def psnr(fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB with images read on [0, 1] (inputs on [-1, 1])."""
    mse = ((fake.float() - target.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def dominant_color(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """Dominant RGB colour (float, 0..255) of ``image`` (``(3, H, W)`` uint8) inside ``mask``."""
    inner = erode(mask)
    if inner.sum() < 4:  # tiny regions: keep the border pixels rather than nothing
        inner = mask
    px = image.permute(1, 2, 0)[inner].long()  # (N, 3)
    if px.shape[0] == 0:
        return None
    q = px * BINS // 256
    counts = torch.bincount((q[:, 0] * BINS + q[:, 1]) * BINS + q[:, 2], minlength=BINS**3).float()
    smooth = F.avg_pool3d(counts.view(1, 1, BINS, BINS, BINS), 3, 1, 1).flatten()
    peak = int(smooth.argmax())
    center = torch.tensor(
        [peak // (BINS * BINS), (peak // BINS) % BINS, peak % BINS], device=q.device
    )
    near = (q - center).abs().max(dim=1).values <= 1
    return px[near].float().median(dim=0).values


def _palette(vocab: ConditionVocab) -> list[np.ndarray | None]:
    """Per attribute: the Lab of its named colours (None where a value has no colour)."""
    out = []
    for a in vocab.attributes:
        if any(c is None for c in a.colors):
            out.append(None)
        else:
            out.append(rgb_to_lab(np.array(a.colors, dtype=np.float64)) if a.colors else np.zeros((0, 3)))  # fmt: skip
    return out


def fidelity_hits(
    images: torch.Tensor,
    conditions: torch.Tensor,
    masks: list[dict[str, torch.Tensor]],
    vocab: ConditionVocab,
    sketches: torch.Tensor | None = None,
    with_judged: bool = False,
) -> torch.Tensor:
    """``(N, A)`` bool: was attribute ``a`` of image ``n`` painted in the requested colour?
    (``with_judged``: also which pairs had a region large enough to judge.)

    ``images``: ``(N, 3, H, W)`` uint8; ``conditions``: ``(N, A)`` codes; ``masks[n]``: attribute
    name -> ``(H, W)`` bool region; ``sketches`` (uint8, like ``images``): their lines are left
    out of the regions. Attributes without colours cannot be judged (an error).
    """
    palettes = _palette(vocab)
    for a, p in zip(vocab.attributes, palettes, strict=True):
        if p is None:
            raise ValueError(f"attribute {a.name!r} has values without a colour; fidelity needs all of them")  # fmt: skip
    off_line = None if sketches is None else line_alpha(sketches.cpu().float())[:, 0] < 0.5
    hits = torch.zeros(conditions.shape, dtype=torch.bool)
    judged = torch.zeros(conditions.shape, dtype=torch.bool)
    for n in range(images.shape[0]):
        for j, a in enumerate(vocab.attributes):
            region = masks[n][a.name].cpu()
            if off_line is not None:
                region = region & off_line[n]
            if erode(region).sum() < MIN_REGION:
                continue  # a region too small to have a colour of its own (a cropped shirt)
            color = dominant_color(images[n].cpu(), region)
            if color is None:
                continue
            judged[n, j] = True
            lab = rgb_to_lab(color.numpy()[None])
            code = int(conditions[n, j])
            if a.is_colour:
                want = rgb_to_lab(np.array(a.rgb(code), dtype=np.float64)[None])
                hits[n, j] = bool(delta_e(lab, want)[0] <= FIDELITY_DE)
            else:
                hits[n, j] = int(np.argmin(delta_e(np.repeat(lab, len(palettes[j]), 0), palettes[j]))) == code  # fmt: skip
    return (hits, judged) if with_judged else hits


def fidelity(images, conditions, masks, vocab, sketches=None) -> float | None:
    """The share of judged (image, attribute) pairs painted as asked (None: nothing judged)."""
    hits, judged = fidelity_hits(images, conditions, masks, vocab, sketches, with_judged=True)
    return float(hits[judged].float().mean()) if judged.any() else None


def colouring_stats(
    images: torch.Tensor,
    sketches: torch.Tensor,
    conditions: torch.Tensor,
    masks: list[dict[str, torch.Tensor]],
    vocab: ConditionVocab,
) -> dict[str, float]:
    """Pixel accuracy and ΔE2000 per attribute, background leak and line preservation (see the
    module's text) of uint8 ``images`` coloured from uint8 ``sketches`` (both ``(N, 3, H, W)``,
    pair ``n`` with codes ``conditions[n]``); ``masks[n]``: attribute name (and
    ``background`` where known) -> ``(H, W)`` bool region. Keys: ``acc_<attr>``,
    ``de_<attr>_median``, ``de_<attr>_p95``, ``leak``, ``lines`` (absent when not measurable)."""
    images, sketches = images.cpu(), sketches.cpu()
    palettes = _palette(vocab)
    alpha = line_alpha(sketches.float())[:, 0]
    acc: dict[str, list[float]] = {a.name: [] for a in vocab.attributes}
    de: dict[str, list[float]] = {a.name: [] for a in vocab.attributes}
    leak, lines = [], []
    for n in range(images.shape[0]):
        img = images[n].permute(1, 2, 0)  # (H, W, 3)
        sk = sketches[n].permute(1, 2, 0)
        off_line = alpha[n] < 0.5
        for j, a in enumerate(vocab.attributes):
            m = masks[n].get(a.name)
            if m is None or palettes[j] is None:
                continue
            region = erode(m.cpu()) & off_line
            if region.sum() < MIN_REGION:
                continue
            px = img[region].numpy().astype(np.float64)
            code = int(conditions[n, j])
            want_rgb = np.array(a.rgb(code), dtype=np.float64)
            want = rgb_to_lab(want_rgb[None])[0]
            cands = palettes[j]
            if a.is_colour:  # the palette's other colours (a named request is one of them) + it
                others = cands[((cands - want) ** 2).sum(-1) > 1.0]
                cands = np.concatenate([others, want[None]])
                k_want = len(cands) - 1
            else:
                k_want = code
            lab = rgb_to_lab(px)
            d = ((lab[:, None, :] - cands[None, :, :]) ** 2).sum(-1)
            acc[a.name].append(float((d.argmin(1) == k_want).mean()))
            median = np.median(px, 0)
            de[a.name].append(float(delta_e(rgb_to_lab(median[None]), want[None])[0]))
        bg = masks[n].get(BACKGROUND)
        if bg is not None:
            region = erode(bg.cpu()) & off_line
            if region.sum() > 0:
                changed = (img[region].int() - sk[region].int()).abs().amax(1) > LEAK_TOL
                leak.append(float(changed.float().mean()))
        core = alpha[n] >= CORE
        if core.sum() > 0:
            kept = (img[core].int() - sk[core].int()).abs().amax(1) <= LINE_TOL
            lines.append(float(kept.float().mean()))
    out: dict[str, float] = {}
    for a in vocab.attributes:
        if acc[a.name]:
            out[f"acc_{a.name}"] = float(np.mean(acc[a.name]))
            out[f"de_{a.name}_median"] = float(np.median(de[a.name]))
            out[f"de_{a.name}_p95"] = float(np.percentile(de[a.name], 95))
    if leak:
        out["leak"] = float(np.mean(leak))
    if lines:
        out["lines"] = float(np.mean(lines))
    return out
