"""Typed configs: dataclasses loaded from YAML and overridden from the command line.

    cfg = load(TrainConfig, "configs/train.yaml", ["epochs=10", "lambda_l1=50"])

Unknown keys and values of the wrong type are errors that name the key, the file and what is
allowed, so a typo in a YAML file never silently falls back to a default. Nested dataclasses are
written as nested mappings in YAML and as dotted keys on the command line (``train.epochs=3``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from colorjob.errors import ColorjobError

T = TypeVar("T")


class ConfigError(ColorjobError, ValueError):
    """A config file or override that does not fit the config's fields."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and ("no" if not value else "yes") in allowed:
            value = "yes" if value else "no"  # YAML 1.1 reads a bare no/yes as a boolean
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return origin(_coerce(v, item, key) for v in value)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where=key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "yes",
            "1",
            "on",
            "false",
            "no",
            "0",
            "off",
        ):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            if tp is int:
                f = float(value)
                if f != int(f):
                    raise ValueError
                return int(f)
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(
                f"{key} must be {'an integer' if tp is int else 'a number'}, got {value!r}"
            ) from None
    if tp is str:
        if value is None or isinstance(value, dict | list):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict | None, where: str = "config") -> T:
    """Build ``cls`` from a mapping; unknown keys and wrong types are :class:`ConfigError`."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        prefix = "" if where == "config" else f"{where}: "
        raise ConfigError(
            f"{prefix}unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(names)}"
        )
    kwargs = {
        k: _coerce(v, hints[k], f"{where}.{k}" if where != "config" else k) for k, v in data.items()
    }
    try:
        return cls(**kwargs)  # the dataclass's own range checks
    except ConfigError as e:
        raise ConfigError(f"{where}.{e}" if where != "config" else str(e)) from None


def check_range(
    key: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> None:
    """Raise :class:`ConfigError` naming ``key``, ``value`` and the allowed range when ``value``
    lies outside ``[low, high]`` (``(``/``)`` where open). None (an unset optional) passes;
    with ``finite=False`` so do NaN and an infinity on an open side."""
    if value is None:
        return
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above or (finite and not math.isfinite(value)):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        span = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ConfigError(
            f"{key} must be {'a finite number ' if finite else ''}in {span}, got {value!r}"
        )


def to_dict(cfg: Any) -> dict:
    """A config as plain data (for YAML, JSON, checkpoints)."""
    return dataclasses.asdict(cfg)


def dump(cfg: Any) -> str:
    """A config as YAML text that :func:`load` reads back to an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def parse_overrides(items: list[str] | None) -> dict:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}`` (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. lambda_l1=50)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def cli_overrides(flags: dict, sets: list[str] | None) -> dict:
    """Overrides from a command line: the flags that were given (None = not given, nested dicts
    for nested configs) and then the ``--set key=value`` items, which win."""

    def given(d: dict) -> dict:
        out = {}
        for k, v in d.items():
            v = given(v) if isinstance(v, dict) else v
            if v is not None and v != {}:
                out[k] = v
        return out

    return merge(given(flags), parse_overrides(sets))


def merge(base: dict, extra: dict) -> dict:
    """Deep merge of plain dicts; ``extra`` wins."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | dict | None = None
) -> T:
    """Defaults <- YAML file <- overrides (``key=value`` strings or a dict)."""
    data: dict = {}
    where = "config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise ConfigError(
                f"{path}: line {line} is not UTF-8 text (byte 0x{raw[e.start]:02x}); save the "
                "config as UTF-8"
            ) from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must be a mapping of keys to values")
        where = str(path)
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    try:
        return from_dict(cls, merge(data, extra), where="config")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where != "config" else str(e)) from None
