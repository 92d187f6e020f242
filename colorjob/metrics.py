"""Image metrics: L1 and PSNR on [-1, 1] tensors, and condition fidelity.

Condition fidelity asks: did the generator paint each attribute in the colour that was requested?
For every (image, attribute) pair it takes the attribute's region (the dataset's mask, eroded by
one pixel so that line art at the border does not count), finds the region's *dominant* colour (the
densest cell of a coarse colour histogram, smoothed over neighbouring cells, then the median of the
pixels near it: robust to line art, strands and shirt patterns that cover less than the main
colour), and checks that, among that attribute's palette colours, the nearest in CIE Lab is the
one that was asked for. Fidelity is the share of pairs where it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from colorjob.conditions import ConditionVocab
from colorjob.imaging import erode

BINS = 16  # histogram cells per RGB channel


def l1(fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean |fake - target| on [-1, 1] tensors (the scale of the pix2pix L1 loss)."""
    return (fake.float() - target.float()).abs().flatten(1).mean(1)


def psnr(fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB with images read on [0, 1] (inputs on [-1, 1])."""
    mse = ((fake.float() - target.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` sRGB in [0, 255] -> CIE Lab (D65)."""
    c = rgb.float() / 255.0
    c = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = torch.tensor(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ],
        device=c.device,
    )
    xyz = c @ m.T / torch.tensor([0.95047, 1.0, 1.08883], device=c.device)
    f = torch.where(
        xyz > (6 / 29) ** 3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29
    )
    return torch.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )


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


def fidelity_hits(
    images: torch.Tensor,
    conditions: torch.Tensor,
    masks: list[dict[str, torch.Tensor]],
    vocab: ConditionVocab,
) -> torch.Tensor:
    """``(N, A)`` bool: was attribute ``a`` of image ``n`` painted in the requested colour?

    ``images``: ``(N, 3, H, W)`` uint8; ``conditions``: ``(N, A)`` value indices; ``masks[n]``:
    attribute name -> ``(H, W)`` bool region. Attributes without colours cannot be judged.
    """
    palettes = []
    for a in vocab.attributes:
        if any(c is None for c in a.colors):
            raise ValueError(
                f"attribute {a.name!r} has values without a colour; fidelity needs all of them"
            )
        palettes.append(rgb_to_lab(torch.tensor(a.colors, dtype=torch.float32)))
    hits = torch.zeros(conditions.shape, dtype=torch.bool)
    for n in range(images.shape[0]):
        for j, a in enumerate(vocab.attributes):
            color = dominant_color(images[n].cpu(), masks[n][a.name].cpu())
            if color is None:
                continue
            nearest = int((palettes[j] - rgb_to_lab(color)).norm(dim=1).argmin())
            hits[n, j] = nearest == int(conditions[n, j])
    return hits
