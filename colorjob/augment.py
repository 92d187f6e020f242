"""Training-time augmentations that change how a sketch is drawn, not what it shows.

Users' sketches are not drawn by :mod:`colorjob.synth`: other line weights, softer or greyer lines,
JPEG compression, slightly different framing. :func:`style` applies, each with probability ``p``
and per image:

- a small affine jitter (rotation, scale, shift) to the sketch **and** its target alike, so
  they stay aligned;
- to the sketch only: thicker or thinner lines, a slight blur, grey or tinted lines, JPEG
  artefacts.

On float batches in [-1, 1] on any device (JPEG round-trips through the CPU). Random draws come
from torch's generator, which training seeds per epoch, so a resumed run replays them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _chosen(n: int, p: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) < p


def jitter(
    sketch: torch.Tensor, target: torch.Tensor, p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same small rotation (±6°), scale (±6 %) and shift (±4 %) for a sketch and its target."""
    n, device = sketch.shape[0], sketch.device
    pick = _chosen(n, p, device)
    if not pick.any():
        return sketch, target
    angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(6)
    scale = 1 + (torch.rand(n, device=device) * 2 - 1) * 0.06
    shift = (torch.rand(n, 2, device=device) * 2 - 1) * 0.08  # grid units: 2 = the whole image
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # fmt: skip
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], device=device).expand(n, 2, 3)
    theta = torch.where(pick[:, None, None], theta, identity)
    grid = F.affine_grid(theta, list(sketch.shape), align_corners=False)

    def warp(x: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)  # fmt: skip

    return warp(sketch), warp(target)


def line_weight(sketch: torch.Tensor, p: float) -> torch.Tensor:
    """Thicker (dark pixels spread) or thinner (light pixels spread) lines."""
    pick = _chosen(sketch.shape[0], p, sketch.device)
    if not pick.any():
        return sketch
    thicker = -F.max_pool2d(-sketch, 3, 1, 1)  # a min filter: ink grows by a pixel
    thinner = (sketch + F.max_pool2d(sketch, 3, 1, 1)) / 2  # paper half-covers the line's edges
    which = torch.rand(sketch.shape[0], device=sketch.device) < 0.5
    changed = torch.where(which[:, None, None, None], thicker, thinner)
    return torch.where(pick[:, None, None, None], changed, sketch)


def blur(sketch: torch.Tensor, p: float) -> torch.Tensor:
    """A slight Gaussian blur (sigma 0.4 to 1.0 pixels)."""
    n, device = sketch.shape[0], sketch.device
    pick = _chosen(n, p, device)
    if not pick.any():
        return sketch
    sigma = 0.4 + torch.rand(n, device=device) * 0.6
    x = torch.arange(-2, 3, device=device, dtype=torch.float32)
    k1 = torch.exp(-(x[None] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)  # (n, 5)
    kernel = (k1[:, :, None] * k1[:, None, :])[:, None]  # (n, 1, 5, 5)
    c = sketch.shape[1]
    x = sketch.float().reshape(1, n * c, *sketch.shape[2:])
    out = F.conv2d(
        F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel.repeat_interleave(c, 0), groups=n * c
    )
    out = out.reshape(sketch.shape).to(sketch.dtype)
    return torch.where(pick[:, None, None, None], out, sketch)


def line_colour(sketch: torch.Tensor, p: float) -> torch.Tensor:
    """Grey or tinted lines: ink moves part of the way towards paper, or towards a colour."""
    n, device = sketch.shape[0], sketch.device
    pick = _chosen(n, p, device)
    if not pick.any():
        return sketch
    ink = (1 - sketch) / 2  # 0 on paper, 1 on black ink (per channel)
    strength = 0.55 + torch.rand(n, 1, 1, 1, device=device) * 0.45  # how dark the lines stay
    tint = (
        torch.rand(n, 3, 1, 1, device=device) * 0.5 * (torch.rand(n, 1, 1, 1, device=device) < 0.5)
    )
    out = 1 - 2 * ink * strength * (1 - tint)
    return torch.where(pick[:, None, None, None], out.to(sketch.dtype), sketch)


def jpeg(sketch: torch.Tensor, p: float) -> torch.Tensor:
    """JPEG artefacts (quality 30 to 80), encoded and decoded with Pillow on the CPU."""
    import io

    import numpy as np
    from PIL import Image

    from colorjob.imaging import to_uint8, to_unit

    n = sketch.shape[0]
    pick = _chosen(n, p, sketch.device).cpu()
    if not pick.any():
        return sketch
    quality = torch.randint(30, 81, (n,))
    out = sketch.clone()
    images = to_uint8(sketch).permute(0, 2, 3, 1).cpu().numpy()
    for i in torch.nonzero(pick).flatten().tolist():
        buf = io.BytesIO()
        Image.fromarray(images[i]).save(buf, format="JPEG", quality=int(quality[i]))
        decoded = np.asarray(Image.open(buf).convert("RGB"))
        out[i] = to_unit(torch.from_numpy(decoded.copy()).permute(2, 0, 1)).to(
            sketch.device, sketch.dtype
        )
    return out


def style(
    sketch: torch.Tensor, target: torch.Tensor, p: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """All of the above, each with probability ``p``: ``(sketch, target)`` in [-1, 1]."""
    sketch, target = jitter(sketch, target, p)
    sketch = line_weight(sketch, p)
    sketch = blur(sketch, p)
    sketch = line_colour(sketch, p)
    sketch = jpeg(sketch, p)
    return sketch.clamp(-1, 1), target.clamp(-1, 1)
