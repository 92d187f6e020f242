"""The one inference path: uint8 sketches x conditions -> uint8 coloured images.

Validation, the per-epoch sample grids, batch colorization's actors, the quickstart and the
benchmarks all colour through :func:`colorize` (or its streaming form :func:`colorize_chunks`), so
the score a search selects on is computed from exactly the pixels the shipped images have. It owns:

- normalisation (uint8 -> [-1, 1] -> uint8, rounded),
- the condition vectors (codes -> one-hot or colour embeddings, via the vocabulary),
- the precision policy (:func:`autocast_dtype`: ``auto`` = bf16 autocast on CUDA, fp32 elsewhere),
- channels_last on CUDA, inference mode, eval mode (restored afterwards), and chunking,
- what comes out (``output``): ``composite`` (the sketch's own lines over the generator's colours,
  :mod:`colorjob.composite`: what a user gets), ``raw`` (the generator's own picture, the seed's
  way), ``layer`` (the colour layer: RGB + coverage as alpha, no lines) or ``parts`` (what the
  composite is made of: the colours and their coverage, 1 where a generator has no coverage
  head; batch composites them at each sketch's own size).

A sketch is stored once and shared by all its variants: pass ``sketch_index`` to cross ``N``
sketches with ``M`` (sketch, condition) pairs. When the conditions enter only the decoder
(``conditioning: film``), each sketch's encoder features are computed once, kept until its last
pair, and reused by all its variants, whatever the chunk size (eval mode: the same bits as a
forward per pair, a test says so). Torch only: no Ray, no files.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from colorjob.composite import composite, layer_from_rgb
from colorjob.conditions import ConditionVocab
from colorjob.imaging import to_uint8, to_unit

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")
Output = Literal["composite", "raw", "layer", "parts"]
OUTPUTS = ("composite", "raw", "layer", "parts")


def autocast_dtype(device: torch.device, precision: Precision = "auto") -> torch.dtype | None:
    """The autocast dtype inference runs in, or None for plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def prepare(generator: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Put a generator on ``device`` for inference (eval mode; channels_last on CUDA)."""
    device = torch.device(device)
    generator = generator.to(device).eval()
    if device.type == "cuda":
        generator = generator.to(memory_format=torch.channels_last)
    return generator


def shares_encoder(generator: nn.Module) -> bool:
    """Whether the generator's encoder sees the sketch alone (``film``): then a sketch's encoder
    features serve every variant of it."""
    return getattr(generator, "conditioning", "concat") == "film"


def paints_layers(generator: nn.Module) -> bool:
    """Whether the generator paints a colour layer (RGB + coverage) rather than a picture."""
    return getattr(generator, "out_channels", 3) == 4


def finish(y: torch.Tensor, sketches_u8: torch.Tensor, output: Output, layered: bool) -> torch.Tensor:  # fmt: skip
    """Generator outputs ``y`` (``[-1, 1]``) of the pairs whose sketches are ``sketches_u8`` ->
    uint8 images as asked (see the module's text)."""
    y = y.float()
    colour = (y[:, :3].clamp(-1, 1) + 1) * 127.5
    coverage = (y[:, 3:4].clamp(-1, 1) + 1) / 2 if layered else None
    if output == "raw":
        if layered:
            raise ValueError("a colour-layer generator has no raw picture: use composite or layer")
        return to_uint8(y)
    sketch = sketches_u8.float()
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    # The layer as 8-bit values first, then the composite from them: the arithmetic batch does
    # at a sketch's own size, so both give the same bits at the model's size.
    colour = colour.round().clamp(0, 255)
    if coverage is not None:
        coverage = (coverage * 255).round() / 255
    if output == "parts":  # what the composite is made of (batch makes it at a sketch's size)
        cov = torch.ones_like(colour[:, :1]) if coverage is None else coverage
        return torch.cat([colour, cov * 255], 1).round_().clamp_(0, 255).to(torch.uint8)
    if output == "composite":
        return composite(colour, coverage, sketch).round_().clamp_(0, 255).to(torch.uint8)
    if coverage is None:  # estimated: the lines filled in, coverage where it is not the paper
        colour, coverage = layer_from_rgb(colour, sketch)
    return torch.cat([colour, coverage * 255], 1).round_().clamp_(0, 255).to(torch.uint8)


@torch.inference_mode()
def colorize_chunks(
    generator: nn.Module,
    sketches: torch.Tensor,
    conditions: torch.Tensor,
    vocab: ConditionVocab,
    sketch_index: torch.Tensor | None = None,
    batch_size: int = 64,
    precision: Precision = "auto",
    share_encoder: bool | None = None,
    output: Output = "composite",
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, images)``: uint8 ``(n, 3, S, S)`` outputs (``(n, 4, S, S)`` RGBA for
    ``output="layer"``) of pairs ``start .. start + n``.

    ``sketches``: uint8 ``(N, 3, S, S)``; ``conditions``: long ``(M, A)`` codes in the
    vocabulary's attribute order; ``sketch_index``: ``(M,)`` which sketch each pair colours
    (default: pair ``i`` colours sketch ``i``). Chunks hold at most ``batch_size`` images and
    stay on the generator's device. ``share_encoder``: encode each sketch once for all its pairs
    (default: when the generator allows it, :func:`shares_encoder`); False runs a full forward
    per pair (the reference the shared path equals bit for bit).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next(generator.parameters()).device
    dtype = autocast_dtype(device, precision)
    channels_last = device.type == "cuda"
    conditions = torch.as_tensor(conditions, dtype=torch.long).to(device)
    vectors = vocab.vectors(conditions).to(device)
    sketches = sketches.to(device, non_blocking=True)
    if sketch_index is None:
        if sketches.shape[0] != conditions.shape[0]:
            raise ValueError(
                f"{sketches.shape[0]} sketches but {conditions.shape[0]} conditions: pass "
                "sketch_index to say which sketch each condition colours"
            )
        sketch_index = torch.arange(conditions.shape[0], device=device)
    sketch_index = torch.as_tensor(sketch_index, dtype=torch.long).to(device)
    was_training = generator.training
    generator.eval()
    shared = shares_encoder(generator) if share_encoder is None else share_encoder and shares_encoder(generator)  # fmt: skip
    layered = paints_layers(generator)
    last_use = {}
    if shared:  # the last pair of each sketch: its features are dropped after it
        for i, k in enumerate(sketch_index.tolist()):
            last_use[k] = i
    cache: dict[int, list[torch.Tensor]] = {}

    def prepared(idx: torch.Tensor) -> torch.Tensor:
        x = to_unit(sketches[idx])
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    try:
        for start in range(0, conditions.shape[0], batch_size):
            part = slice(start, start + batch_size)
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                if not shared:
                    y = generator(prepared(sketch_index[part]), vectors[part])
                else:  # each sketch encoded once, for all its variants
                    ids = sketch_index[part].tolist()
                    new = sorted(set(ids) - set(cache))
                    if new:
                        feats = generator.encode(prepared(torch.tensor(new, device=device)))
                        for j, k in enumerate(new):
                            cache[k] = [f[j : j + 1] for f in feats]
                    rows = [cache[k] for k in ids]
                    feats = [torch.cat([r[level] for r in rows]) for level in range(len(rows[0]))]
                    y = generator.decode(feats, vectors[part])
                    for k in set(ids):
                        if last_use[k] < start + batch_size:
                            del cache[k]
            yield start, finish(y, sketches[sketch_index[part]], output, layered)
    finally:
        generator.train(was_training)


def colorize(
    generator: nn.Module,
    sketches: torch.Tensor,
    conditions: torch.Tensor,
    vocab: ConditionVocab,
    sketch_index: torch.Tensor | None = None,
    batch_size: int = 64,
    precision: Precision = "auto",
    share_encoder: bool | None = None,
    output: Output = "composite",
) -> torch.Tensor:
    """All outputs at once: uint8 ``(M, 3 or 4, S, S)`` on the generator's device (see
    :func:`colorize_chunks` for the arguments)."""
    chunks = colorize_chunks(
        generator, sketches, conditions, vocab, sketch_index, batch_size, precision, share_encoder, output
    )  # fmt: skip
    images = [images for _, images in chunks]
    if not images:
        size = sketches.shape[-1]
        return torch.empty((0, 4 if output == "layer" else 3, size, size), dtype=torch.uint8, device=sketches.device)  # fmt: skip
    return torch.cat(images)
