"""The conditions grid: one CSV row per colour variant, checked against the model's vocabulary.

    hair,shirt[,name]
    black,red
    blonde,navy,sunny

Every problem of every row is reported at once, with its line number, before any work starts:
text that is not UTF-8, a row with more or fewer fields than the header, unknown, missing or
repeated columns, unknown values, malformed colours (a colour attribute takes ``#rrggbb`` or one
of its named colours), repeated rows, and variant names that clash (also when they differ only
in letter case, which would overwrite each other on macOS and Windows).
"""

from __future__ import annotations

import csv
import io
import json

import pandas as pd

from colorjob import storage
from colorjob.batch.names import clashes, safe_name
from colorjob.conditions import ConditionError, ConditionVocab
from colorjob.errors import ColorjobError


class BatchError(ColorjobError, ValueError):
    """A problem found before any work starts (grid, model, input, output folder)."""


def _text(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BatchError(
            f"{path}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x}); save the grid "
            "as UTF-8 (most editors offer it under 'Save as' / encoding)"
        ) from None


def _rows(
    text: str, path: str, vocab: ConditionVocab
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line, fields)`` rows; a row of the wrong width is an error naming its line."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [c.strip() for c in next(reader)]
    except StopIteration:
        raise BatchError(
            f"{path} is empty: it needs a header ({', '.join(vocab.names)}[, name]) and rows"
        ) from None
    except csv.Error as e:
        raise BatchError(f"{path}: line 1 is not valid CSV ({e})") from None
    rows, problems = [], []
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue  # blank lines
            if len(fields) != len(header):
                problems.append(
                    f"line {reader.line_num}: {len(fields)} fields, but the header has "
                    f"{len(header)} ({', '.join(header)}); quote values that contain commas"
                )
            rows.append((reader.line_num, [f.strip() for f in fields]))
    except csv.Error as e:
        problems.append(f"line {reader.line_num}: not valid CSV ({e})")
    if problems:
        raise BatchError(f"{path} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return header, rows


def read_grid(path: str, vocab: ConditionVocab) -> pd.DataFrame:
    """The conditions grid, checked against the model: every problem of every row in one error.

    Returns one row per variant: the attribute columns, ``variant`` (its file-name-safe name),
    ``index`` (the condition codes in the vocabulary's attribute order: value indices, or
    colours as 0xRRGGBB) and ``values`` (the attribute values as canonical JSON: a named value,
    or a colour as lowercase ``#rrggbb``; what provenance compares).
    """
    fs, p = storage.resolve(path)
    if not storage.exists(fs, p):
        raise BatchError(f"conditions grid {path} not found")
    header, rows = _rows(_text(storage.read_bytes(fs, p), path), path, vocab)
    problems = []
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise BatchError(f"{path}: the header names column(s) {', '.join(repeated)} more than once; keep one of each")  # fmt: skip
    missing = [n for n in vocab.names if n not in header]
    if missing:
        problems.append(
            f"missing column(s) {', '.join(missing)} (the model's attributes: {', '.join(vocab.names)})"
        )
    extra = [c for c in header if c not in vocab.names and c != "name"]
    if extra:
        problems.append(
            f"unknown column(s) {', '.join(extra)} (allowed: {', '.join(vocab.names)}, name)"
        )
    if not rows:
        problems.append("the grid has no rows")
    if problems:
        raise BatchError(f"{path}: " + "; ".join(problems))
    col = {c: i for i, c in enumerate(header)}
    names, values_seen, names_seen, indices, all_values = [], {}, {}, [], []
    for line, fields in rows:
        given = tuple(fields[col[n]] for n in vocab.names)
        idx = []
        for a, value in zip(vocab.attributes, given, strict=True):
            try:
                idx.append(a.code(value))
            except ConditionError as e:
                known = f"known: {', '.join(a.values)}" if not a.is_colour else f"#rrggbb or {', '.join(a.values)}"  # fmt: skip
                problems.append(f"row {line}: {a.name} {value!r}: {e}" if a.is_colour else f"row {line}: unknown {a.name} {value!r} ({known})" + ("; hex colours need a model trained on colours (colorjob synth --colours random), this one knows only its names" if value.startswith("#") else ""))  # fmt: skip
        # the canonical values (a named colour, else lowercase #rrggbb): what provenance compares
        values = tuple(a.value(c) for a, c in zip(vocab.attributes, idx, strict=True)) if len(idx) == len(given) else given  # fmt: skip
        duplicate = values in values_seen
        if duplicate:
            problems.append(
                f"row {line}: duplicates row {values_seen[values]} ({', '.join(values)})"
            )
        values_seen.setdefault(values, line)
        named = fields[col["name"]] if "name" in col else ""
        name = safe_name(named or "_".join(v.lstrip("#") for v in values))
        if name in names_seen and not duplicate:
            problems.append(
                f"row {line}: variant name {name!r} is already used by row {names_seen[name]}"
            )
        names_seen.setdefault(name, line)
        names.append(name)
        indices.append(idx)
        all_values.append(values)
    for i, j in clashes(enumerate(names)):
        if names[i] != names[j]:  # equal names were reported above
            problems.append(
                f"row {rows[j][0]}: variant name {names[j]!r} differs from row {rows[i][0]}'s "
                f"{names[i]!r} only in letter case: on macOS and Windows they are one file; "
                "rename one (name column)"
            )
    if problems:
        raise BatchError(f"{path} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    grid = pd.DataFrame(all_values, columns=vocab.names)
    grid["variant"] = names
    grid["index"] = indices
    grid["values"] = [
        json.dumps(dict(zip(vocab.names, v, strict=True)), ensure_ascii=False) for v in all_values
    ]
    return grid
