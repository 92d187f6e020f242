"""Output names: a pure function of a sketch's own relative path and the variant's name.

    sketches/cat.png      + variant black_red -> sketches/cat__black_red.png      (format png)
    sketches/cat.jpg      + variant black_red -> sketches/cat.jpg__black_red.png
    猫 1.png              + variant black_red -> 猫 1__black_red.png

Rules (documented in the README):

- Letters of any script, spaces and punctuation stay. Only what a file system cannot hold, or
  Windows and SMB refuse (control characters, ``\\ : * ? " < > |``), is percent-encoded, and ``%``
  itself too, so the encoding is reversible and two names never meet.
- The sketch's extension is dropped only when it is exactly the output format's (``a.png`` for PNG
  output) and what remains does not itself end in an image extension; otherwise the full file
  name is kept (``a.jpg`` -> ``a.jpg__v.png``). So ``a.png``, ``a.jpg`` and ``a.png.png`` keep
  three different names, whatever else lies in the folder.
- Variant names never contain ``__`` and never start with ``_``: the last ``__`` of an output
  name separates the sketch from the variant, so ``x.png`` + ``a__b`` and ``x__a.png`` + ``b``
  cannot meet.
- A component longer than the file system allows is shortened, with a hash of the full name.

Two outputs that differ only in letter case (or Unicode normalisation) would overwrite each
other on macOS and Windows: :func:`clashes` finds them so the job can refuse them before work.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
SEPARATOR = "__"
MAX_COMPONENT = 255  # bytes, ext4/APFS/NTFS and S3 key segments alike
MAX_VARIANT = 64  # bytes of a variant name
MAX_STEM = MAX_COMPONENT - len(SEPARATOR) - MAX_VARIANT - len(".jpeg")
_UNSAFE = re.compile(r'[\x00-\x1f\x7f\\:*?"<>|%]')


def escape(component: str) -> str:
    """Percent-encode the characters a file name cannot hold (and ``%``); keep everything else."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), component)


def _fit(component: str, limit: int) -> str:
    """``component`` if it fits in ``limit`` UTF-8 bytes, else a prefix + ``~`` + a hash of it."""
    raw = component.encode()
    if len(raw) <= limit:
        return component
    digest = hashlib.sha1(raw).hexdigest()[:10]
    head = raw[: limit - len(digest) - 1].decode(errors="ignore")  # whole characters only
    return f"{head}~{digest}"


def safe_name(text: str, fallback: str = "variant") -> str:
    """A variant name: letters and digits of any script, ``.``, ``-`` and single ``_``; no
    path separators, no ``..``, no leading dots or underscores, at most 64 bytes."""
    text = unicodedata.normalize("NFKC", str(text))
    text = re.sub(r"[^\w.-]+", "_", text)
    text = re.sub(r"\.{2,}", ".", text)
    text = re.sub(r"_{2,}", "_", text).strip("._-")
    text = _fit(text, MAX_VARIANT).strip("._-") or fallback
    if text.lower().endswith(".layer"):  # colour layers are <output>.layer.png: never a variant
        text = text[: -len(".layer")] + "_layer"
    return text


def sketch_key(rel: str, fmt: str) -> str:
    """The output path of a sketch without its variant: its folders and its (escaped) name."""
    *dirs, name = rel.split("/")
    ext = f".{fmt}"
    stem = name[: -len(ext)] if name.endswith(ext) else name
    if stem == name or stem.lower().endswith(IMAGE_EXTS) or not stem:
        stem = name  # keep the full name: "a.jpg" and "a.png.png" stay apart from "a.png"
    parts = [_fit(escape(d), MAX_COMPONENT) for d in dirs if d not in ("", ".")]
    return "/".join([*parts, _fit(escape(stem), MAX_STEM)])


def output_rel(key: str, variant: str, fmt: str) -> str:
    """``<sketch key>__<variant>.<fmt>``: one output's path relative to the output folder."""
    return f"{key}{SEPARATOR}{variant}.{fmt}"


def fold(name: str) -> str:
    """How a case-insensitive, normalising file system (macOS, Windows) compares names."""
    return unicodedata.normalize("NFC", name).casefold()


def clashes(items: Iterable[tuple[object, str]]) -> list[tuple[object, object]]:
    """Pairs of ``(label, name)`` items whose names are equal once case-folded: ``[(a, b), ...]``
    with ``a`` the first item's label and ``b`` the later one's."""
    seen: dict[str, object] = {}
    found = []
    for label, name in items:
        key = fold(name)
        if key in seen:
            found.append((seen[key], label))
        else:
            seen[key] = label
    return found
