"""Procedural character icons in the seed's dataset format.

    python -m colorjob.synth --out data/chars --sketches 10

Each character is a bust portrait: a head with a face (eyes, brows, nose, mouth, sometimes glasses),
ears, hair in one of several styles (short, bob, long, ponytail, bun, spiky, curly, pigtails, buzz)
with one of several fringes, a neck and a shirt with one of several cuts (tee, v-neck, tank top,
collared shirt, hoodie, turtleneck) and patterns (plain, stripes, thin stripes, dots, band, logo).

How it is drawn: every shape is painted, back to front, into a *label map* at 4x the output size
(background, skin, hair, shirt, pattern, ...). Line art is where neighbouring labels differ (plus
strokes such as brows, hair strands, seams), dilated to a pen width. The map is then averaged down
to the output size once per character, giving each pixel its coverage of every label; a sketch or a
coloured version is that coverage times a colour table, so all 25 colourings of one character share
exactly the same anti-aliased line art, and the hair/shirt masks come from the same coverage.

Output (the seed's format, readable by :mod:`colorjob.data`)::

    DIR/metadata.csv       input, output, hair, shirt   (paths relative to DIR, colour names)
    DIR/sketches/char_0000.png                black line art on white
    DIR/colored/char_0000_black_red.png       one per hair x shirt colour (25 per sketch)
    DIR/masks/char_0000_hair.png              1-bit region masks per attribute
    DIR/masks/char_0000_shirt.png
    DIR/conditions.json    value order and RGB of every palette colour
    DIR/contact_sheet.png  a look at the first characters

Same ``--seed``, same bytes: character ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from colorjob.conditions import Attribute, ConditionVocab, to_hex
from colorjob.errors import ColorjobError
from colorjob.imaging import dilate
from colorjob.models import num_downs_for

log = logging.getLogger(__name__)


class SynthError(ColorjobError, ValueError):
    """A synthetic dataset that cannot be drawn as asked."""


# ---- palettes ------------------------------------------------------------------------------
HAIR_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (38, 34, 40),
    "brown": (124, 74, 40),
    "blonde": (240, 206, 108),
    "ginger": (206, 92, 36),
    "blue": (64, 118, 222),
}
SHIRT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 46, 58),
    "green": (54, 160, 86),
    "navy": (38, 62, 150),
    "yellow": (246, 210, 48),
    "purple": (142, 74, 182),
}
BACKGROUND = (236, 242, 250)
SKIN = (248, 210, 180)
EYE_WHITE = (255, 255, 255)
DARK = (44, 34, 40)
MOUTH = (206, 92, 98)
INK = (0, 0, 0)
PAPER = (255, 255, 255)

HAIR_STYLES = ("short", "bob", "long", "ponytail", "bun", "spiky", "curly", "pigtails", "buzz")
FRINGES = ("straight", "side", "parted", "none")
SHIRT_CUTS = ("tee", "vneck", "tank", "collar", "hoodie", "turtleneck")
PATTERNS = ("plain", "stripes", "thin_stripes", "dots", "band", "logo")


# ---- labels of the map ---------------------------------------------------------------------
class Label(IntEnum):
    """What a pixel of the label map shows (painted back to front; LINE is added last)."""

    BG = 0
    FACE = 1
    SKIN2 = 2  # neck and ears
    HAIR = 3
    HAIR2 = 4  # hair behind the head
    SHIRT = 5
    PATTERN = 6
    SHIRT2 = 7  # hood, collar, turtleneck
    EYE = 8
    PUPIL = 9
    LIPS = 10
    LINE = 11


L = Label
N_LABELS = len(Label)
HAIR_LABELS = (L.HAIR, L.HAIR2)
SHIRT_LABELS = (L.SHIRT, L.PATTERN, L.SHIRT2)
SUPERSAMPLE = 4


def vocabulary() -> ConditionVocab:
    """The synthetic data's condition vocabulary: 5 hair x 5 shirt colours."""
    return ConditionVocab(
        [
            Attribute("hair", tuple(HAIR_COLORS), tuple(HAIR_COLORS.values())),
            Attribute("shirt", tuple(SHIRT_COLORS), tuple(SHIRT_COLORS.values())),
        ]
    )


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b, strict=True))


class _Canvas:
    """A label map at supersampled resolution plus a stroke layer (lines that are not edges)."""

    def __init__(self, size: int, pen: float):
        self.n = size * SUPERSAMPLE
        self.lab = np.zeros((self.n, self.n), np.uint8)
        self.no_ink = np.zeros(
            (self.n, self.n), bool
        )  # where region edges are not inked (open cuts)
        self.strokes: list[tuple[np.ndarray, tuple[int, ...] | None]] = []
        self.pen = pen  # line width in supersampled pixels

    def _raster(self, fn: Callable[[ImageDraw.ImageDraw, float], None]) -> np.ndarray:
        img = Image.new("L", (self.n, self.n), 0)
        fn(ImageDraw.Draw(img), self.n)
        return np.asarray(img) > 0

    def paint(self, label: int, fn, only: tuple[int, ...] | None = None) -> np.ndarray:
        """Rasterise a shape (``fn(draw, n)`` in pixel units) and paint it with ``label``."""
        m = self._raster(fn)
        if only is not None:
            m &= np.isin(self.lab, only)
        self.lab[m] = label
        return m

    def ellipse(self, label, cx, cy, rx, ry, only=None):
        return self.paint(
            label,
            lambda d, n: d.ellipse(
                [(cx - rx) * n, (cy - ry) * n, (cx + rx) * n, (cy + ry) * n], fill=255
            ),
            only,
        )

    def polygon(self, label, pts, only=None):
        return self.paint(
            label, lambda d, n: d.polygon([(x * n, y * n) for x, y in pts], fill=255), only
        )

    def rect(self, label, x0, y0, x1, y1, radius=0.0, only=None):
        return self.paint(
            label,
            lambda d, n: d.rounded_rectangle(
                [x0 * n, y0 * n, x1 * n, y1 * n], radius=radius * n, fill=255
            ),
            only,
        )

    def stroke(self, fn, width: float = 1.0, only: tuple[int, ...] | None = None):
        """A line that is drawn, not an edge: ``fn(draw, n, w)``; ``only`` clips it to labels."""
        w = max(1, int(round(self.pen * width)))
        self.strokes.append((self._raster(lambda d, n: fn(d, n, w)), only))

    def line(self, pts, width=1.0, only=None):
        self.stroke(
            lambda d, n, w: d.line(
                [(x * n, y * n) for x, y in pts], fill=255, width=w, joint="curve"
            ),
            width,
            only,
        )

    def arc(self, cx, cy, rx, ry, start, end, width=1.0, only=None):
        self.stroke(
            lambda d, n, w: d.arc(
                [(cx - rx) * n, (cy - ry) * n, (cx + rx) * n, (cy + ry) * n],
                start,
                end,
                fill=255,
                width=w,
            ),
            width,
            only,
        )

    def place(self, scale: float, ox: float, oy: float) -> None:
        """Shrink the figure drawn so far to ``scale`` of the canvas, its top-left corner at
        ``(ox, oy)`` (fractions of the side); the rest of the canvas is background."""
        n = self.n
        m = max(8, int(round(n * scale)))
        x0, y0 = int(round(ox * n)), int(round(oy * n))

        def moved(a: np.ndarray) -> np.ndarray:
            small = np.asarray(Image.fromarray(a).resize((m, m), Image.Resampling.NEAREST))
            out = np.zeros_like(a)
            ys, xs = slice(max(0, y0), min(n, y0 + m)), slice(max(0, x0), min(n, x0 + m))
            out[ys, xs] = small[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
            return out

        self.lab = moved(self.lab)
        self.no_ink = moved(self.no_ink.astype(np.uint8) * 255) > 0
        self.strokes = [(moved(st.astype(np.uint8) * 255) > 0, only) for st, only in self.strokes]

    def cut(self, y: float, open_: bool) -> None:
        """Everything below ``y`` (a fraction of the side) is background: the figure ends there.
        ``open_``: the cut itself is not inked (an open outline)."""
        row = int(round(y * self.n))
        self.lab[row:] = L.BG
        for st, _ in self.strokes:
            st[row:] = False
        if open_:
            w = max(2, int(round(self.pen * 1.5)))
            self.no_ink[max(0, row - w) : row + w] = True

    def ink(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """Final label map: edges between labels and strokes become LINE.

        Pattern outlines (stripes, dots) are drawn with half the pen, like the finer lines an
        artist uses for detail, so a patterned shirt still reads as its colour. ``rng`` (sketchy
        families): lines by hand, of varying width with gaps, slightly off the region edges.
        """
        lab = self.lab
        if rng is not None:
            return self._sketchy_ink(rng)
        edge = np.zeros_like(lab, dtype=bool)
        fine = np.zeros_like(lab, dtype=bool)
        for a, b, e in (
            (lab[:-1, :], lab[1:, :], (slice(None, -1), slice(None))),
            (lab[:, :-1], lab[:, 1:], (slice(None), slice(None, -1))),
        ):
            differ = a != b
            detail = (
                differ
                & ((a == L.PATTERN) | (b == L.PATTERN))
                & np.isin(a, SHIRT_LABELS)
                & np.isin(b, SHIRT_LABELS)
            )
            edge[e] |= differ & ~detail
            fine[e] |= detail
        edge = dilate(edge, max(1, int(round(self.pen))))
        edge |= dilate(fine, max(1, int(round(self.pen / 2))))
        for m, only in self.strokes:
            edge |= m if only is None else (m & np.isin(lab, only))
        edge &= ~self.no_ink
        out = lab.copy()
        out[edge] = L.LINE
        return out

    def _edges(self, lab: np.ndarray) -> np.ndarray:
        edge = np.zeros_like(lab, dtype=bool)
        edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        return edge

    def _sketchy_ink(self, rng: np.random.Generator) -> np.ndarray:
        """Lines of another construction: the region edges of a slightly displaced copy of the
        map (so lines wander off the colour boundaries), drawn with a width that varies along
        them and broken by gaps."""
        n, lab = self.n, self.lab
        yy, xx = np.mgrid[0:n, 0:n]
        k = 4  # a smooth displacement field of a few pixels
        field = [np.asarray(Image.fromarray(rng.uniform(-1, 1, (k, k)).astype(np.float32), "F").resize((n, n), Image.Resampling.BICUBIC)) for _ in range(2)]  # fmt: skip
        amp = self.pen * 1.2
        sy = np.clip((yy + field[0] * amp).round().astype(int), 0, n - 1)
        sx = np.clip((xx + field[1] * amp).round().astype(int), 0, n - 1)
        edge = self._edges(lab[sy, sx])
        gaps = np.asarray(Image.fromarray(rng.uniform(0, 1, (24, 24)).astype(np.float32), "F").resize((n, n), Image.Resampling.BICUBIC))  # fmt: skip
        edge &= gaps > 0.18  # about one stretch in eight left undrawn
        width = np.asarray(Image.fromarray(rng.uniform(0, 1, (12, 12)).astype(np.float32), "F").resize((n, n), Image.Resampling.BICUBIC))  # fmt: skip
        thin, thick = dilate(edge, max(1, int(round(self.pen * 0.6)))), dilate(edge, max(1, int(round(self.pen * 1.5))))  # fmt: skip
        line = np.where(width > 0.5, thick, thin)
        for m, only in self.strokes:
            line |= m if only is None else (m & np.isin(lab, only))
        line &= ~self.no_ink
        out = lab.copy()
        out[line] = L.LINE
        return out


# ---- drawing families ----------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """How a character is drawn, not what it shows: proportions, line weight, amount of detail,
    and how the figure sits on the canvas.

    A model trained on some families and validated on another measures how well it colours a
    drawing style it has never seen (users' sketches are not drawn by this module).
    """

    head: float = 1.0  # head size
    shoulders: float = 1.0  # shoulder width
    pen: float = 1.0  # line width
    patterns: bool = True  # False: plain shirts only
    face: str = "normal"  # "simple": dot eyes, no brows or nose; "busy": glasses, freckles, strands
    round_head: bool = False  # a round head (icon proportions) rather than an oval one
    # How the figure sits on the canvas (classic: the figure fills it, the body runs off the
    # bottom edge, the background is tinted in the colourings). Otherwise the figure is scaled
    # and placed, cut as one of ``crops`` (the cut's outline left open with ``open_cut``), on
    # paper that the colourings leave as it is (plain or lightly textured), with a background mask.
    placed: bool = False
    scale: tuple[float, float] = (1.0, 1.0)  # the figure's size on the canvas
    crops: tuple[str, ...] = ("shoulders",)  # "head", "shoulders", "half", "edge" (runs off)
    open_cut: float = 0.5  # probability that the cut across the body is not inked
    textured: float = 0.4  # probability of a lightly textured paper
    sketchy: bool = False  # lines drawn by hand: wobbly, of varying width, with gaps


FAMILIES = {
    "classic": Family(),
    "chibi": Family(
        head=1.3, shoulders=0.75, placed=True, scale=(0.7, 1.0), crops=("shoulders", "half", "edge")
    ),  # fmt: skip
    "bold": Family(
        pen=1.9, placed=True, scale=(0.65, 1.0), crops=("shoulders", "half", "edge")
    ),  # fmt: skip
    "fine": Family(
        pen=0.55, placed=True, scale=(0.65, 1.0), crops=("head", "shoulders", "edge")
    ),  # fmt: skip
    "minimal": Family(
        patterns=False, face="simple", placed=True, scale=(0.6, 1.0), crops=("shoulders", "half")
    ),  # fmt: skip
    "busy": Family(face="busy", placed=True, scale=(0.7, 1.0), crops=("shoulders", "edge")),
    # an icon set: thick uniform strokes, round heads, head and shoulders ending above the edge
    "icon": Family(
        pen=2.6,
        head=1.15,
        shoulders=0.9,
        patterns=False,
        face="simple",
        round_head=True,
        placed=True,
        scale=(0.55, 0.95),
        crops=("shoulders", "head", "shoulders"),
        open_cut=0.6,
    ),  # fmt: skip
    "sticker": Family(
        pen=1.5,
        head=1.1,
        round_head=True,
        placed=True,
        scale=(0.5, 0.85),
        crops=("half", "shoulders", "head"),
        textured=0.7,
    ),  # fmt: skip
    # held out by the default model: lines of another construction (by hand: wobbly, of varying
    # width, broken), so no training family shares how its outlines are made
    "doodle": Family(
        pen=1.2,
        patterns=False,
        placed=True,
        scale=(0.6, 0.95),
        crops=("shoulders", "half", "edge"),
        sketchy=True,
    ),  # fmt: skip
}


# ---- the character -------------------------------------------------------------------------
@dataclass
class Figure:
    """Where a character's parts go (fractions of the image side), filled in as it is drawn."""

    cx: float  # head centre
    cy: float
    rx: float  # head radii
    ry: float
    chin: float
    shoulder_y: float
    sw: float = 0.0  # half-width of the shoulders
    neck_w: float = 0.0
    ear_y: float = 0.0
    hairline: float = 0.0
    top: float = 0.0  # top of the hair
    ey: float = 0.0  # eye line
    family: Family = Family()


def draw_character(
    size: int, rng: np.random.Generator, family: str = "classic"
) -> tuple[np.ndarray, dict]:
    """Draw one random character; returns its final label map (supersampled) and its traits.

    Parts are painted back to front: hair behind the head, torso, shirt pattern, neckline, head,
    hair in front, face. Every random draw happens in this order, so ``(seed, i)`` fixes a
    character; ``family`` (see :data:`FAMILIES`) changes how it is drawn.
    """
    fam = FAMILIES[family]
    u = rng.uniform
    c = _Canvas(size, max(1.0, 0.0085 * size * fam.pen) * SUPERSAMPLE)
    t = {
        "hair_style": HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        "fringe": FRINGES[rng.integers(len(FRINGES))],
        "cut": SHIRT_CUTS[rng.integers(len(SHIRT_CUTS))],
        "pattern": PATTERNS[rng.integers(len(PATTERNS))],
        "glasses": bool(u() < 0.2),
        "family": family,
    }
    if not fam.patterns:
        t["pattern"] = "plain"
    if fam.face != "normal":
        t["glasses"] = fam.face == "busy"
    cx, rx = 0.5 + u(-0.03, 0.03), u(0.15, 0.185) * fam.head
    ry, cy = rx * u(1.08, 1.25), u(0.36, 0.4)
    if fam.round_head:  # the same draw, nearly a circle
        ry = rx * (1 + (ry / rx - 1) * 0.25)
    f = Figure(
        cx, cy, rx, ry, chin=cy + ry, shoulder_y=min(0.8, cy + ry + u(0.09, 0.14)), family=fam
    )
    _back_hair(c, f, t["hair_style"], rng)
    _torso(c, f, t["cut"], rng)
    _pattern(c, f, t, rng, size)
    _neckline(c, f, t["cut"], rng)
    _head(c, f, rng)
    _hair_cap(c, f, t["hair_style"], rng)
    _fringe(c, f, t, rng)
    _hair_details(c, f, t["hair_style"], rng)
    _eyes(c, f, t, rng)
    _nose_and_mouth(c, f, t, rng)
    if fam.placed:  # after every draw of the figure itself: classic's stream is unchanged
        _place(c, f, t, rng, fam)
    return c.ink(rng if fam.sketchy else None), t


def _place(c: _Canvas, f: Figure, t: dict, rng: np.random.Generator, fam: Family) -> None:
    """Cut the figure as one of the family's crops, scale it and put it somewhere on the
    canvas; the cut is inked (closed) or not (open). ``t`` records what was done."""
    u = rng.uniform
    crop = fam.crops[int(rng.integers(len(fam.crops)))]
    cut = {
        "head": f.chin + 0.02 + u(0, 0.03),
        "shoulders": f.shoulder_y + u(0.08, 0.2),
        "half": min(1.0, f.shoulder_y + u(0.25, 0.4)),
        "edge": 1.0,
    }[crop]
    open_ = bool(u() < fam.open_cut)
    scale = u(*fam.scale)
    top = min(f.top, f.cy - f.ry * 1.2)  # the figure's top (hair, bun)
    height = (cut - top) * scale
    ox = u(0, 1 - scale) if scale < 1 else 0.0
    # an "edge" crop sits on the bottom edge (the body runs off it); the others anywhere
    oy = 1.0 - scale if crop == "edge" else u(0.02, max(0.03, 1 - height - 0.02)) - top * scale
    if cut < 1.0:
        c.cut(cut, open_)
    c.place(scale, ox, oy)
    t.update(crop=crop, open_cut=open_ and cut < 1.0, scale=round(scale, 3), texture=bool(u() < fam.textured))  # fmt: skip


def _back_hair(c: _Canvas, f: Figure, style: str, rng: np.random.Generator) -> None:
    """Hair that lies behind the head (long, bob, ponytail, pigtails, curls, bun)."""
    u, cx, cy, rx, ry = rng.uniform, f.cx, f.cy, f.rx, f.ry
    if style == "long":
        c.rect(L.HAIR2, cx - rx * 1.2, cy - ry * 0.6, cx + rx * 1.2, f.chin + ry * u(0.5, 0.9), radius=rx * 0.5)  # fmt: skip
    elif style == "bob":
        c.rect(L.HAIR2, cx - rx * 1.25, cy - ry * 0.8, cx + rx * 1.25, cy + ry * u(0.55, 0.85), radius=rx * 0.6)  # fmt: skip
    elif style == "ponytail":
        side = rng.choice([-1, 1])
        c.ellipse(L.HAIR2, cx + side * rx * 1.15, cy - ry * 0.1, rx * 0.35, ry * 0.75)
    elif style == "pigtails":
        for side in (-1, 1):
            c.ellipse(L.HAIR2, cx + side * rx * 1.3, cy + ry * 0.35, rx * 0.32, ry * 0.55)
    elif style == "curly":
        n = 11
        for k in range(n):
            a = math.pi * (0.95 + 1.1 * k / (n - 1))
            c.ellipse(L.HAIR2, cx + math.cos(a) * rx * 1.15, cy - ry * 0.1 + math.sin(a) * ry * 1.05, rx * 0.38, rx * 0.38)  # fmt: skip
    elif style == "bun":
        c.ellipse(L.HAIR2, cx + u(-0.3, 0.3) * rx, cy - ry * 1.08, rx * 0.42, rx * 0.38)


def _torso(c: _Canvas, f: Figure, cut: str, rng: np.random.Generator) -> None:
    """Neck, shoulders and the shirt's body (sleeve seams; a tank top's straps)."""
    u, cx, sy = rng.uniform, f.cx, f.shoulder_y
    f.sw = f.rx * u(2.3, 2.9) * f.family.shoulders / f.family.head
    f.neck_w = nw = f.rx * u(0.36, 0.46) / f.family.head
    c.rect(L.SKIN2, cx - nw, f.cy + f.ry * 0.5, cx + nw, sy + 0.05)
    if cut == "hoodie":
        c.ellipse(L.SHIRT2, cx, sy - 0.01, nw * 2.6, 0.07)
    body = (cx, sy + 0.28, f.sw, 0.3)
    if cut == "tank":
        c.ellipse(L.SKIN2, *body)
        strap = nw * 1.9
        c.polygon(
            L.SHIRT,
            [
                (cx - strap, sy - 0.005), (cx - strap + 0.035, sy - 0.005), (cx, sy + 0.07),
                (cx + strap - 0.035, sy - 0.005), (cx + strap, sy - 0.005),
                (cx + f.sw * 0.72, 1.02), (cx - f.sw * 0.72, 1.02),
            ],
            only=(L.SKIN2,),
        )  # fmt: skip
        return
    c.ellipse(L.SHIRT, *body)
    for side in (-1, 1):  # sleeve seams
        start, end = (250, 340) if side < 0 else (200, 290)
        c.arc(cx + side * f.sw * 0.8, sy + 0.2, f.sw * 0.25, 0.2, start, end, 0.7, only=(L.SHIRT,))


def _pattern(c: _Canvas, f: Figure, t: dict, rng: np.random.Generator, size: int) -> None:
    """Stripes, dots, a band or a logo on the shirt body."""
    u, cx, sy, pattern = rng.uniform, f.cx, f.shoulder_y, t["pattern"]
    # pattern ink: a tint of the shirt colour (light, so the shirt still reads as its colour
    # when a model works at a lower resolution than the data and the pattern blurs into it)
    t["pattern_tint"] = float(u(0.4, 0.6))
    if pattern in ("stripes", "thin_stripes"):
        period = u(0.05, 0.07) if pattern == "stripes" else u(0.035, 0.045)
        period = max(period, 8 / size)  # small images: fewer, wider stripes instead of solid ink
        frac = 0.38 if pattern == "stripes" else 0.3
        y = sy + u(0, period)
        while y < 1.0:
            c.rect(L.PATTERN, 0, y, 1, y + period * frac, only=(L.SHIRT,))
            y += period
    elif pattern == "dots":
        r = max(u(0.009, 0.014), 1.5 / size)
        step = r * u(4.0, 5.0)
        for j, y in enumerate(np.arange(sy + step / 2, 1.0, step)):
            for x in np.arange(cx - f.sw - (j % 2) * step / 2, cx + f.sw, step):
                c.ellipse(L.PATTERN, x, y, r, r, only=(L.SHIRT,))
    elif pattern == "band":
        y = sy + u(0.07, 0.1)
        c.rect(L.PATTERN, 0, y, 1, y + u(0.035, 0.05), only=(L.SHIRT,))
    elif pattern == "logo":
        lx, ly, lr = cx + u(-0.3, 0.3) * f.sw, sy + u(0.09, 0.12), u(0.025, 0.035)
        if rng.random() < 0.5:  # a star
            radii = [lr if k % 2 == 0 else lr * 0.45 for k in range(10)]
            pts = [(lx + r * math.sin(k * math.pi / 5), ly - r * math.cos(k * math.pi / 5)) for k, r in enumerate(radii)]  # fmt: skip
            c.polygon(L.PATTERN, pts, only=(L.SHIRT,))
        else:
            c.ellipse(L.PATTERN, lx, ly, lr, lr, only=(L.SHIRT,))


def _neckline(c: _Canvas, f: Figure, cut: str, rng: np.random.Generator) -> None:
    """The cut's neckline and details: round, V, collar with buttons, turtleneck, hood."""
    u, cx, sy, nw = rng.uniform, f.cx, f.shoulder_y, f.neck_w
    body = (L.SHIRT, L.PATTERN)
    if cut in ("tee", "hoodie"):
        w, low = (1.3, 0.04) if cut == "tee" else (1.2, 0.05)
        box = [(cx - nw * w), (sy - 0.04), (cx + nw * w), (sy + low)]
        c.paint(L.SKIN2, lambda d, n: d.chord([v * n for v in box], 0, 180, fill=255), only=body)
    if cut == "hoodie":
        for side in (-1, 1):
            x = cx + side * nw * 0.8
            c.line([(x, sy + 0.03), (x + side * 0.005, sy + 0.12)], 0.8, only=SHIRT_LABELS)
    elif cut in ("vneck", "collar"):
        depth = u(0.06, 0.1)
        c.polygon(L.SKIN2, [(cx - nw * 1.15, sy - 0.01), (cx + nw * 1.15, sy - 0.01), (cx, sy + depth)], only=body)  # fmt: skip
        if cut == "collar":
            for side in (-1, 1):
                c.polygon(
                    L.SHIRT2,
                    [(cx + side * nw * 1.25, sy - 0.025), (cx + side * nw * 0.15, sy + depth * 0.95), (cx + side * nw * 2.3, sy + 0.035)],
                )  # fmt: skip
            c.line([(cx, sy + depth), (cx, 1.0)], 0.8, only=SHIRT_LABELS)
            for k in range(3):
                c.ellipse(L.PUPIL, cx + 0.012, sy + depth + 0.04 + k * 0.05, 0.006, 0.006, only=SHIRT_LABELS)  # fmt: skip
    elif cut == "turtleneck":
        c.rect(L.SHIRT2, cx - nw * 1.08, sy - 0.07, cx + nw * 1.08, sy + 0.015, radius=0.01)
        for k in range(1, 3):
            y = sy - 0.07 + k * 0.027
            c.line([(cx - nw * 1.05, y), (cx + nw * 1.05, y)], 0.6, only=(L.SHIRT2,))


def _head(c: _Canvas, f: Figure, rng: np.random.Generator) -> None:
    """Ears and the face shape (an ellipse, or a softer jaw with a rounded chin)."""
    cx, cy, rx, ry = f.cx, f.cy, f.rx, f.ry
    f.ear_y = cy + ry * rng.uniform(0.0, 0.12)
    for side in (-1, 1):
        c.ellipse(L.SKIN2, cx + side * rx * 0.97, f.ear_y, rx * 0.17, ry * 0.2)
    if rng.random() < 0.5:
        c.ellipse(L.FACE, cx, cy, rx, ry)
        return
    c.ellipse(L.FACE, cx, cy - ry * 0.1, rx, ry * 0.9)
    jaw = [(cx - rx * 0.985, cy - ry * 0.05), (cx + rx * 0.985, cy - ry * 0.05),
           (cx + rx * 0.45, f.chin - ry * 0.04), (cx - rx * 0.45, f.chin - ry * 0.04)]  # fmt: skip
    c.polygon(L.FACE, jaw)
    c.ellipse(L.FACE, cx, f.chin - ry * 0.12, rx * 0.47, ry * 0.09)


def _hair_cap(c: _Canvas, f: Figure, style: str, rng: np.random.Generator) -> None:
    """The hair over the head: a buzz cut, or a cap with sideburns down to the ears."""
    u, cx, cy, rx, ry = rng.uniform, f.cx, f.cy, f.rx, f.ry
    f.hairline = hairline = cy - ry * u(0.3, 0.45)
    f.top = top = cy - ry * u(1.05, 1.15)
    if style == "buzz":
        box = [(cx - rx * 1.02), (top + 0.01), (cx + rx * 1.02), (cy + ry * 0.2)]
        c.paint(L.HAIR, lambda d, n: d.chord([v * n for v in box], 180, 360, fill=255), only=(L.FACE, L.BG, L.HAIR2))  # fmt: skip
        return
    box = [(cx - rx * 1.1), top, (cx + rx * 1.1), (2 * hairline - top)]
    c.paint(L.HAIR, lambda d, n: d.chord([v * n for v in box], 180, 360, fill=255))
    for side in (-1, 1):  # sideburns down to the ears
        c.polygon(
            L.HAIR,
            [(cx + side * rx * 1.1, hairline - 0.005), (cx + side * rx * 0.78, hairline),
             (cx + side * rx * 0.9, f.ear_y - ry * 0.12), (cx + side * rx * 1.06, f.ear_y - ry * 0.1)],
        )  # fmt: skip


def _fringe(c: _Canvas, f: Figure, t: dict, rng: np.random.Generator) -> None:
    """A straight, side or parted fringe (none on a buzz cut)."""
    cx, cy, rx, ry, hairline = f.cx, f.cy, f.rx, f.ry, f.hairline
    fringe = t["fringe"] if t["hair_style"] != "buzz" else "none"
    fy = cy - ry * rng.uniform(0.12, 0.22)  # lowest point of the fringe
    if fringe == "straight":
        c.rect(L.HAIR, cx - rx * 0.95, hairline - 0.01, cx + rx * 0.95, fy, radius=0.01, only=(L.FACE, L.HAIR))  # fmt: skip
        for k in range(1, 4):
            x = cx - rx * 0.95 + k * rx * 0.475
            c.line([(x, hairline), (x + rx * 0.03, fy - 0.004)], 0.6, only=(L.HAIR,))
    elif fringe == "side":
        s = rng.choice([-1, 1])
        c.polygon(
            L.HAIR,
            [(cx - s * rx * 1.05, hairline - 0.02), (cx + s * rx * 1.05, hairline - 0.02),
             (cx + s * rx * 1.0, fy + 0.01), (cx - s * rx * 0.3, hairline + 0.005)],
            only=(L.FACE, L.HAIR, L.BG),
        )  # fmt: skip
        c.line([(cx - s * rx * 0.5, hairline - 0.005), (cx + s * rx * 0.6, fy - 0.01)], 0.6, only=(L.HAIR,))  # fmt: skip
    elif fringe == "parted":
        for side in (-1, 1):
            c.polygon(
                L.HAIR,
                [(cx, hairline - 0.03), (cx + side * rx * 1.05, hairline - 0.01),
                 (cx + side * rx * 0.98, fy + 0.02), (cx + side * rx * 0.45, hairline + 0.01)],
                only=(L.FACE, L.HAIR, L.BG),
            )  # fmt: skip
        c.line([(cx, f.top + 0.015), (cx, hairline - 0.02)], 0.6, only=(L.HAIR,))


def _hair_details(c: _Canvas, f: Figure, style: str, rng: np.random.Generator) -> None:
    """Spikes, front curls, strands and hair ties."""
    u, cx, cy, rx, ry, hairline, top = rng.uniform, f.cx, f.cy, f.rx, f.ry, f.hairline, f.top
    if style == "spiky":
        n = int(rng.integers(5, 8))
        for k in range(n):
            x0 = cx - rx * 1.05 + 2.1 * rx * k / n
            x1 = cx - rx * 1.05 + 2.1 * rx * (k + 1) / n
            base = top + (hairline - top) * 0.35 * abs((x0 + x1) / 2 - cx) / rx
            tip = ((x0 + x1) / 2 + u(-0.01, 0.01), base - u(0.05, 0.09))
            c.polygon(L.HAIR, [(x0, base + 0.03), tip, (x1, base + 0.03)])
    elif style == "curly":
        for k in range(7):
            x = cx - rx * 0.9 + 1.8 * rx * k / 6
            c.ellipse(L.HAIR, x, hairline - 0.005, rx * 0.2, rx * 0.17, only=(L.FACE, L.HAIR, L.BG, L.HAIR2))  # fmt: skip
    if style in ("short", "long", "bob", "bun", "ponytail", "pigtails"):  # a few strands
        for _ in range(2 if f.family.face != "busy" else 5):
            x = cx + u(-0.6, 0.6) * rx
            c.arc(x, hairline, rx * 0.35, (hairline - top) * 0.8, 200, 300, 0.6, only=(L.HAIR,))
    if style == "pigtails":  # hair ties
        for side in (-1, 1):
            c.line([(cx + side * rx * 1.05, cy + ry * 0.0), (cx + side * rx * 1.2, cy - ry * 0.05)], 1.2)  # fmt: skip


def _eyes(c: _Canvas, f: Figure, t: dict, rng: np.random.Generator) -> None:
    """Eyes (dot, oval, big, closed), brows and sometimes glasses."""
    u, cx, rx = rng.uniform, f.cx, f.rx
    f.ey = ey = f.cy + f.ry * u(0.02, 0.16)
    ex = rx * u(0.36, 0.48)
    eye = t["eyes"] = ("dot", "oval", "big", "closed")[rng.integers(4)]
    if f.family.face == "simple":
        eye = t["eyes"] = "dot"
    for side in (-1, 1):
        x = cx + side * ex
        if eye == "dot":
            c.ellipse(L.PUPIL, x, ey, rx * 0.075, rx * 0.09, only=(L.FACE,))
        elif eye == "oval":
            c.ellipse(L.EYE, x, ey, rx * 0.16, rx * 0.1, only=(L.FACE,))
            c.ellipse(L.PUPIL, x + u(-0.02, 0.02) * rx, ey, rx * 0.07, rx * 0.07, only=(L.EYE,))
        elif eye == "big":
            c.ellipse(L.EYE, x, ey, rx * 0.15, rx * 0.2, only=(L.FACE,))
            c.ellipse(L.PUPIL, x, ey + rx * 0.03, rx * 0.1, rx * 0.14, only=(L.EYE,))
            c.ellipse(L.EYE, x + rx * 0.04, ey - rx * 0.02, rx * 0.035, rx * 0.035, only=(L.PUPIL,))  # fmt: skip
        else:
            c.arc(x, ey + rx * 0.04, rx * 0.13, rx * 0.09, 200, 340, 1.0, only=(L.FACE,))
        if f.family.face == "simple":
            continue  # no brows
        by = ey - rx * u(0.24, 0.32)  # the brow
        tilt = u(-0.04, 0.04) * rx * side
        c.line([(x - rx * 0.15, by + tilt), (x + rx * 0.15, by - tilt)], u(0.9, 1.6), only=(L.FACE, L.HAIR))  # fmt: skip
    if not t["glasses"]:
        return
    square = rng.random() < 0.5
    for side in (-1, 1):
        x, r = cx + side * ex, rx * 0.24
        if square:
            box = [(x - r), (ey - r * 0.75), (x + r), (ey + r * 0.75)]
            c.stroke(lambda d, n, w, box=box, r=r: d.rounded_rectangle([v * n for v in box], radius=r * 0.3 * n, outline=255, width=w), 0.8)  # fmt: skip
        else:
            box = [(x - r), (ey - r * 0.85), (x + r), (ey + r * 0.85)]
            c.stroke(lambda d, n, w, box=box: d.ellipse([v * n for v in box], outline=255, width=w), 0.8)  # fmt: skip
    c.line([(cx - ex + rx * 0.24, ey), (cx + ex - rx * 0.24, ey)], 0.8)


def _nose_and_mouth(c: _Canvas, f: Figure, t: dict, rng: np.random.Generator) -> None:
    """A nose (line, arc or dot) and a mouth (smile, flat, open, o)."""
    u, cx, rx, ey, chin = rng.uniform, f.cx, f.rx, f.ey, f.chin
    ny = ey + (chin - ey) * u(0.3, 0.42)
    nose = rng.integers(3) if f.family.face != "simple" else -1
    if f.family.face == "busy":  # freckles on both cheeks
        for side in (-1, 1):
            for k in range(3):
                c.ellipse(L.PUPIL, cx + side * rx * (0.45 + 0.1 * k), ny - rx * 0.05 * (k % 2), rx * 0.02, rx * 0.02, only=(L.FACE,))  # fmt: skip
    if nose == 0:
        c.line([(cx, ny - rx * 0.1), (cx - rx * 0.05, ny), (cx + rx * 0.02, ny + rx * 0.02)], 0.7, only=(L.FACE,))  # fmt: skip
    elif nose == 1:
        c.arc(cx, ny, rx * 0.07, rx * 0.05, 20, 160, 0.7, only=(L.FACE,))
    elif nose == 2:
        c.ellipse(L.PUPIL, cx, ny, rx * 0.025, rx * 0.02, only=(L.FACE,))
    my = ey + (chin - ey) * u(0.62, 0.72)
    mw = rx * u(0.18, 0.32)
    mouth = t["mouth"] = ("smile", "flat", "open", "o")[rng.integers(4)]
    if mouth == "smile":
        c.arc(cx, my - mw * 0.5, mw, mw * 0.6, 20, 160, 0.9, only=(L.FACE,))
    elif mouth == "flat":
        c.line([(cx - mw * 0.7, my), (cx + mw * 0.7, my + u(-0.004, 0.004))], 0.9, only=(L.FACE,))
    elif mouth == "open":
        box = [(cx - mw), (my - mw * 0.6), (cx + mw), (my + mw * 0.6)]
        c.paint(L.LIPS, lambda d, n: d.chord([v * n for v in box], 0, 180, fill=255), only=(L.FACE,))  # fmt: skip
    else:
        c.ellipse(L.LIPS, cx, my, mw * 0.35, mw * 0.42, only=(L.FACE,))


def coverage(labels: np.ndarray, size: int) -> np.ndarray:
    """Supersampled label map -> ``(N_LABELS, size, size)`` share of each output pixel per label."""
    s = labels.shape[0] // size
    counts = np.zeros((N_LABELS, size, size), np.float64)
    blocks = labels.reshape(size, s, size, s)
    for k in range(N_LABELS):
        counts[k] = (blocks == k).sum(axis=(1, 3))
    return counts / (s * s)


def color_table(hair, shirt, pattern_tint: float = 0.5, background=BACKGROUND) -> np.ndarray:
    table = np.zeros((N_LABELS, 3), np.float64)
    table[L.BG], table[L.FACE], table[L.SKIN2] = background, SKIN, SKIN
    table[L.HAIR] = table[L.HAIR2] = hair
    table[L.SHIRT] = table[L.SHIRT2] = shirt
    table[L.PATTERN] = _mix(shirt, PAPER, pattern_tint)
    table[L.EYE], table[L.PUPIL], table[L.LIPS], table[L.LINE] = EYE_WHITE, DARK, MOUTH, INK
    return table


def render(cov: np.ndarray, table: np.ndarray, texture: np.ndarray | None = None) -> Image.Image:
    """Coverage times colours; ``texture`` (``(H, W)``, added to the paper where it shows)."""
    rgb = np.einsum("khw,kc->hwc", cov, table)
    if texture is not None:
        rgb += (cov[L.BG] * texture)[..., None]
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def sketch_table() -> np.ndarray:
    table = np.full((N_LABELS, 3), 255.0)
    table[L.LINE] = INK
    return table


def paper_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A light paper grain (a few levels darker in places), the same for a character's sketch
    and its colourings."""
    k = max(4, size // 16)
    grain = np.asarray(Image.fromarray(rng.uniform(0, 1, (k, k)).astype(np.float32), "F").resize((size, size), Image.Resampling.BICUBIC))  # fmt: skip
    speck = rng.uniform(0, 1, (size, size)) < 0.004
    return -(np.clip(grain, 0, 1) * rng.uniform(4, 12)) - speck * rng.uniform(20, 40)


def family_of(seed: int, index: int, families: tuple[str, ...]) -> str:
    """Character ``index``'s family: its own random stream, so its drawing stays the same."""
    if len(families) == 1:
        return families[0]
    return families[int(np.random.default_rng([seed, index, 7]).integers(len(families)))]


COLOURS = ("named", "random", "mixed")


def colourings(seed: int, index: int, colours: str, n: int) -> list[tuple[str, tuple, str, tuple]]:
    """Character ``index``'s colourings: ``(hair value, hair rgb, shirt value, shirt rgb)``.

    ``named``: the 25 palette combinations. ``random``: ``n`` colourings whose colours are drawn
    uniformly over the sRGB gamut (written ``#rrggbb``). ``mixed``: ``n``, each a palette pair or
    a random one with even odds. Their own random stream: the drawing does not change with them.
    """
    named = [(h, hr, sh, sr) for h, hr in HAIR_COLORS.items() for sh, sr in SHIRT_COLORS.items()]
    if colours == "named":
        return named
    rng = np.random.default_rng([seed, index, 11])
    out = []
    for _ in range(n):
        if colours == "mixed" and rng.uniform() < 0.5:
            out.append(named[int(rng.integers(len(named)))])
            continue
        hair, shirt = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2))
        out.append((to_hex(hair), hair, to_hex(shirt), shirt))
    return out


def _make_one(args: tuple) -> list[dict]:
    out, seed, index, size, families, colours, n_colourings = args
    rng = np.random.default_rng([seed, index])
    family = family_of(seed, index, families)
    fam = FAMILIES[family]
    labels, traits = draw_character(size, rng, family)
    cov = coverage(labels, size)
    stem = f"char_{index:04d}"
    texture = None
    if fam.placed and traits.get("texture"):
        texture = paper_texture(size, np.random.default_rng([seed, index, 13]))
    render(cov, sketch_table(), texture).save(out / "sketches" / f"{stem}.png", optimize=False)
    regions = [("hair", HAIR_LABELS), ("shirt", SHIRT_LABELS)]
    if fam.placed:  # where the paper shows (classic colourings tint it: no background mask),
        # and the shirt where its own colour is (a pattern's tint is not what was asked for)
        regions = [("hair", HAIR_LABELS), ("shirt", (L.SHIRT, L.SHIRT2)), ("background", (L.BG,))]
    for attr, labs in regions:
        mask = cov[list(labs)].sum(axis=0) >= 0.75  # mostly this region, little line
        Image.fromarray(mask).save(out / "masks" / f"{stem}_{attr}.png")
    background = PAPER if fam.placed else BACKGROUND
    rows = []
    for k, (hname, hrgb, sname, srgb) in enumerate(colourings(seed, index, colours, n_colourings)):
        name = f"colored/{stem}_{hname}_{sname}.png" if colours == "named" else f"colored/{stem}_c{k:03d}.png"  # fmt: skip
        render(cov, color_table(hrgb, srgb, traits["pattern_tint"], background), texture).save(out / name)  # fmt: skip
        rows.append(
            {"input": f"sketches/{stem}.png", "output": name, "hair": hname, "shirt": sname}
        )
    return rows


def contact_sheet(
    root: Path, rows: pd.DataFrame, max_sketches: int = 8, thumb: int = 128
) -> Image.Image:
    """Sketches down the side; the sketch, then five of its colourings (a diagonal of the
    palette for named colours), then its masks."""
    stems = list(dict.fromkeys(rows["input"]))[:max_sketches]
    has_bg = any((root / f"masks/{Path(sk).stem}_background.png").is_file() for sk in stems)
    cols = 1 + 5 + 2 + has_bg
    sheet = Image.new("RGB", (cols * thumb, len(stems) * thumb), "white")
    diagonal = [(h, s) for h, s in zip(HAIR_COLORS, SHIRT_COLORS, strict=True)]
    for r, sk in enumerate(stems):
        stem = Path(sk).stem
        outs = list(rows.loc[rows["input"] == sk, "output"])
        named = [f"colored/{stem}_{h}_{s}.png" for h, s in diagonal]
        picks = named if all(o in outs for o in named) else outs[:: max(1, len(outs) // 5)][:5]
        tiles = [root / sk] + [root / o for o in picks]
        tiles += [p for p in (root / f"masks/{stem}_{a}.png" for a in ("hair", "shirt", "background")) if p.is_file()]  # fmt: skip
        for col, p in enumerate(tiles):
            im = Image.open(p).convert("RGB").resize((thumb, thumb), Image.Resampling.LANCZOS)
            sheet.paste(im, (col * thumb, r * thumb))
    return sheet


def vocabulary_for(colours: str) -> ConditionVocab:
    """``named``: the categorical 5 x 5 palette (the seed's); otherwise hair and shirt are colour
    attributes whose named colours are that palette."""
    v = vocabulary()
    if colours == "named":
        return v
    return ConditionVocab(
        [Attribute(a.name, a.values, a.colors, kind="colour") for a in v.attributes]
    )


def generate(
    out: str | Path,
    sketches: int,
    seed: int = 0,
    size: int = 256,
    workers: int = 0,
    families: tuple[str, ...] = ("classic",),
    colours: str = "named",
    colourings_per_sketch: int = 25,
) -> Path:
    """Write a synthetic dataset of ``sketches`` characters to ``out``.

    ``families``: the drawing families (:data:`FAMILIES`) characters are drawn in, one chosen
    per character; with more than the classic one, ``families.csv`` says which (input, family).
    ``colours``: ``named`` (the 25 hair x shirt palette pairs, the seed's), ``random`` or
    ``mixed`` (``colourings_per_sketch`` colourings in any colour, see :func:`colourings`; the
    attributes are then colour attributes in ``conditions.json``).
    """
    if sketches < 1:
        raise SynthError(f"--sketches must be at least 1, got {sketches}")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise SynthError(f"unknown drawing family {', '.join(unknown) or '(none given)'}; known: {', '.join(FAMILIES)}")  # fmt: skip
    if colours not in COLOURS:
        raise SynthError(f"--colours must be one of {', '.join(COLOURS)}, got {colours!r}")
    if colourings_per_sketch < 1:
        raise SynthError(f"--colourings must be at least 1, got {colourings_per_sketch}")
    families = tuple(families)
    try:
        num_downs_for(size)  # the networks' rule: a power of two >= 32
    except ValueError as e:
        raise SynthError(f"--size: {e}") from None
    out = Path(out)
    for sub in ("sketches", "colored", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(out, seed, i, size, families, colours, colourings_per_sketch) for i in range(sketches)]
    workers = workers or min(8, sketches, len(os.sched_getaffinity(0)))
    if workers > 1 and sketches > 2:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_make_one, jobs))
    else:
        results = [_make_one(j) for j in jobs]
    rows = pd.DataFrame(
        [r for rs in results for r in rs], columns=["input", "output", "hair", "shirt"]
    )
    rows.to_csv(out / "metadata.csv", index=False)
    if families != ("classic",):
        pd.DataFrame(
            [(f"sketches/char_{i:04d}.png", family_of(seed, i, families)) for i in range(sketches)],
            columns=["input", "family"],
        ).to_csv(out / "families.csv", index=False)
    vocabulary_for(colours).save(out / "conditions.json")
    contact_sheet(out, rows).save(out / "contact_sheet.png")
    return out


if __name__ == "__main__":  # python -m colorjob.synth: the command, run from the real module
    from colorjob.cli import main

    sys.exit(main(["synth", *sys.argv[1:]]))
