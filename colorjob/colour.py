"""Colour science, from a maintained implementation: scikit-image's sRGB -> CIELAB (D65) and
CIEDE2000 (``skimage.color.rgb2lab``, ``deltaE_ciede2000``; the formula has corner cases that
published test data pins down, tests/test_colour.py checks them). Everything that compares
colours (condition fidelity, pixel accuracy, the ΔE metrics) and the colour embedding a
generator is conditioned on go through here."""

from __future__ import annotations

import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab


def rgb_to_lab(rgb) -> np.ndarray:
    """``(..., 3)`` sRGB in [0, 255] -> CIELAB (D65, 2°) as float64."""
    a = np.asarray(rgb, dtype=np.float64) / 255.0
    return rgb2lab(a.reshape(-1, 1, 3)).reshape(a.shape)


def delta_e(lab1, lab2) -> np.ndarray:
    """CIEDE2000 between CIELAB colours (broadcast over ``(..., 3)``)."""
    return deltaE_ciede2000(np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64))


def delta_e_rgb(rgb1, rgb2) -> np.ndarray:
    """CIEDE2000 between sRGB colours in [0, 255]."""
    return delta_e(rgb_to_lab(rgb1), rgb_to_lab(rgb2))


def embedding(rgb) -> np.ndarray:
    """``(N, 3)`` sRGB in [0, 255] -> ``(N, 6)`` float32: L*/100, a*/128, b*/128, R, G, B in [0, 1]
    (what a colour condition is to the networks)."""
    rgb = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    lab = rgb_to_lab(rgb) / np.array([100.0, 128.0, 128.0])
    return np.concatenate([lab, rgb / 255.0], 1).astype(np.float32)
