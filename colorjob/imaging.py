"""Pixels: decode any image to RGB, fit it to the model's square, move between uint8 and [-1, 1].

Every reader of images (training data, batch sketches, contact sheets) decodes through
:func:`load_rgb`, and every writer of model outputs goes through :func:`to_uint8`, so one file is
read the same way everywhere. Also the binary morphology (dilate / erode) that both the synthetic
line art and the fidelity metric use.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

#: The colour letterboxed sketches are padded with (sketches are black lines on white paper).
PAPER = (255, 255, 255)
#: Bytes that decoding one pixel may take at its peak (16-bit RGBA source, its RGB copy, the
#: composite); used to bound the memory a decode task reserves. Measured, see docs/cluster.md.
DECODE_BYTES_PER_PIXEL = 24


# ---- decoding any image to RGB ---------------------------------------------------------------
def to_rgb(img: Image.Image, background=PAPER) -> Image.Image:
    """Any PIL image (1, L, LA, P, RGB, RGBA, I;16, I, F, CMYK, ...) -> RGB on ``background``.

    16-bit and 32-bit integer images are scaled from their full range; float (``F``) images are
    read as [0, 1] when their values lie there (as most tools write them), else as [0, 255].
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img)
        if img.mode == "F":
            a = np.nan_to_num(a.astype(np.float32), nan=0.0)
            hi = 1.0 if a.size and float(a.max()) <= 1.0 else 255.0
            a8 = np.clip(a * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)
        else:
            sixteen = img.mode.startswith("I;16") or (a.size and int(a.max()) > 255)
            a32 = a.astype(np.int64) if img.mode == "I" else a.astype(np.uint32)
            a8 = (
                (np.clip(a32, 0, 65535) * 255 + 32767) // 65535 if sixteen else np.clip(a32, 0, 255)
            )
            a8 = a8.astype(np.uint8)
        img = Image.fromarray(a8, "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        img = img.convert("RGBA")
        canvas = Image.new("RGBA", img.size, (*background, 255))
        return Image.alpha_composite(canvas, img).convert("RGB")
    return img.convert("RGB")


def load_rgb(source: str | Path | bytes, max_pixels: int | None = None) -> Image.Image:
    """Open a file or bytes, honour EXIF orientation, return RGB.

    ``max_pixels``: refuse (ValueError) larger images from their header, before decoding them.
    """
    if isinstance(source, bytes | bytearray) and not source:
        raise ValueError("empty file (0 bytes)")
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source)
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ValueError(
            f"image is {w}x{h} = {w * h / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP limit (max_pixels)"
        )
    img.load()
    return to_rgb(ImageOps.exif_transpose(img))


def resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Bicubic resize with antialiasing (the one resampling every stage uses)."""
    if img.size == size:
        return img
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """RGB image -> ``(3, size, size)`` uint8 tensor (stretched to the square)."""
    return torch.from_numpy(np.asarray(resize(img, (size, size)), dtype=np.uint8).copy()).permute(
        2, 0, 1
    )


def letterbox(img: Image.Image, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Fit ``img`` on a white ``size`` square keeping its aspect; returns pixels and content box."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size), PAPER)
    x0, y0 = (size - nw) // 2, (size - nh) // 2
    canvas.paste(resize(img, (nw, nh)), (x0, y0))
    return np.asarray(canvas), (x0, y0, x0 + nw, y0 + nh)


def unletterbox(pixels: np.ndarray, box, width: int, height: int) -> Image.Image:
    """Inverse of :func:`letterbox`: crop the content box and resize to the original size."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return resize(Image.fromarray(pixels).crop((x0, y0, x1, y1)), (int(width), int(height)))


# ---- value ranges ----------------------------------------------------------------------------
def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float ``[-1, 1]``."""
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float ``[-1, 1]`` -> uint8 ``[0, 255]``."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round_().to(torch.uint8)


# ---- binary morphology -----------------------------------------------------------------------
def dilate(mask: torch.Tensor | np.ndarray, width: int) -> torch.Tensor | np.ndarray:
    """Square max filter of ``width`` pixels over a ``(H, W)`` bool mask (nothing wraps around).

    Returns the type it was given. Plain numpy inside: the synthetic data's worker processes
    use it, and torch is not safe to use in a process forked from one that started its threads.
    """
    as_tensor = isinstance(mask, torch.Tensor)
    m = mask.cpu().numpy() if as_tensor else mask
    lo, hi = (width - 1) // 2, width // 2
    for axis in (0, 1):
        n = m.shape[axis]
        p = np.pad(m, [(lo, hi) if a == axis else (0, 0) for a in (0, 1)])
        out = np.zeros_like(m)
        for s in range(width):
            out |= p[s : s + n, :] if axis == 0 else p[:, s : s + n]
        m = out
    return torch.from_numpy(m).to(mask.device) if as_tensor else m


def erode(mask: torch.Tensor, pixels: int = 1) -> torch.Tensor:
    """Binary erosion of a ``(H, W)`` bool mask by a square of ``2 * pixels + 1``."""
    return ~dilate(~mask, 2 * pixels + 1)
