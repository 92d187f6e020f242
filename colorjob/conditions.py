"""Condition vocabulary: which attributes a model is conditioned on and which values each may take.

A vocabulary is an ordered list of attributes (seed: ``hair``, ``shirt``); each attribute is an
ordered list of named values (seed: five colour names each), and each value may carry the RGB colour
it stands for (needed to measure condition fidelity; unknown colours are ``None``).

The networks see a condition as one-hot planes: one constant ``H x W`` plane per value of every
attribute, 1 where that value is requested and 0 elsewhere, so the seed's 5 hair + 5 shirt colours
give 10 planes (+ 3 sketch channels = the generator's 13 input channels).

A vocabulary is built from a dataset (``metadata.csv`` plus an optional ``conditions.json`` that
records the colours), or from a plain dict (config / ``model.json``), and saved with every model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import ImageColor

from colorjob.errors import ColorjobError

#: Columns of metadata.csv that are not condition attributes.
FILE_COLUMNS = ("input", "output")
#: Optional sidecar next to metadata.csv that records value order and colours.
SIDECAR = "conditions.json"

RGB = tuple[int, int, int]


class ConditionError(ColorjobError, ValueError):
    """A condition value or attribute the vocabulary does not know."""


@dataclass(frozen=True)
class Attribute:
    """One conditioned attribute, e.g. ``hair`` with values ``black, brown, ...``."""

    name: str
    values: tuple[str, ...]
    colors: tuple[RGB | None, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ConditionError(f"attribute {self.name!r} has no values")
        if len(set(self.values)) != len(self.values):
            raise ConditionError(
                f"attribute {self.name!r} lists a value twice: {list(self.values)}"
            )
        if len(self.colors) != len(self.values):
            raise ConditionError(
                f"attribute {self.name!r}: {len(self.values)} values but {len(self.colors)} colours"
            )

    def index(self, value: str) -> int:
        try:
            return self.values.index(str(value))
        except ValueError:
            raise ConditionError(
                f"unknown {self.name} value {value!r}; known {self.name} values: "
                f"{', '.join(self.values)}"
            ) from None


def _parse_color(value: str, color: object = None) -> RGB | None:
    """An explicit ``[r, g, b]`` / ``#rrggbb`` colour, else the value's name if it names a colour."""
    if color is not None:
        if isinstance(color, str):
            return ImageColor.getrgb(color)[:3]
        r, g, b = (int(c) for c in color)  # type: ignore[union-attr]
        return (r, g, b)
    try:  # CSS names and hex strings ("red", "#aa3300") are colours by themselves.
        return ImageColor.getrgb(value)[:3]
    except ValueError:
        return None


class ConditionVocab:
    """Ordered attributes and values; turns requested values into indices and one-hot planes."""

    def __init__(self, attributes: Sequence[Attribute]):
        if not attributes:
            raise ConditionError("a condition vocabulary needs at least one attribute")
        names = [a.name for a in attributes]
        if len(set(names)) != len(names):
            raise ConditionError(f"attribute names repeat: {names}")
        self.attributes: tuple[Attribute, ...] = tuple(attributes)
        self.offsets: tuple[int, ...] = tuple(
            sum(len(a.values) for a in self.attributes[:i]) for i in range(len(self.attributes))
        )

    # ---- shape -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @property
    def num_channels(self) -> int:
        """How many one-hot planes a condition takes (seed: 10)."""
        return sum(len(a.values) for a in self.attributes)

    def __getitem__(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise ConditionError(
            f"unknown attribute {name!r}; known attributes: {', '.join(self.names)}"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConditionVocab) and self.attributes == other.attributes

    def differences(self, other: ConditionVocab) -> list[str]:
        """What differs from ``other`` (attributes, their values and order), for error messages."""
        out = []
        if self.names != other.names:
            out.append(f"attributes {self.names} vs {other.names}")
        for a in self.attributes:
            if a.name in other.names and a.values != other[a.name].values:
                b = other[a.name].values
                extra, missing = (
                    [v for v in a.values if v not in b],
                    [v for v in b if v not in a.values],
                )
                detail = ", ".join(x for x in (f"only here: {extra}" if extra else "", f"only there: {missing}" if missing else "") if x)  # fmt: skip
                out.append(f"{a.name} values {list(a.values)} vs {list(b)}" + (f" ({detail})" if detail else " (another order)"))  # fmt: skip
        return out

    def __repr__(self) -> str:
        parts = ", ".join(f"{a.name}[{'|'.join(a.values)}]" for a in self.attributes)
        return f"ConditionVocab({parts})"

    # ---- values <-> indices <-> planes -------------------------------------------------------
    def encode(self, row: Mapping[str, object]) -> list[int]:
        """``{"hair": "black", "shirt": "red"}`` -> one value index per attribute."""
        missing = [n for n in self.names if n not in row]
        if missing:
            raise ConditionError(
                f"condition is missing attribute(s) {', '.join(missing)}; "
                f"expected {', '.join(self.names)}"
            )
        return [a.index(str(row[a.name])) for a in self.attributes]

    def decode(self, indices: Sequence[int]) -> dict[str, str]:
        return {a.name: a.values[int(i)] for a, i in zip(self.attributes, indices, strict=True)}

    def multi_hot(self, indices: torch.Tensor) -> torch.Tensor:
        """``(B, A)`` value indices -> ``(B, C)`` condition vectors: one-hot per attribute,
        concatenated (so one 1 per attribute). What the networks take as their condition."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        if indices.dim() == 1:
            indices = indices.unsqueeze(0)
        offsets = torch.tensor(self.offsets, device=indices.device)
        out = torch.zeros(indices.shape[0], self.num_channels, device=indices.device)
        return out.scatter_(1, indices + offsets, 1.0)

    def planes(
        self, indices: torch.Tensor, height: int, width: int | None = None, dtype=torch.float32
    ) -> torch.Tensor:
        """``(B, A)`` value indices -> ``(B, C, H, W)`` constant one-hot planes for the networks."""
        vec = self.multi_hot(indices).to(dtype)
        return vec[:, :, None, None].expand(-1, -1, height, width or height)

    def from_planes(self, planes: torch.Tensor) -> list[dict[str, str]]:
        """Inverse of :meth:`planes` (reads the plane means), for checks and debugging."""
        vec = planes.float().mean(dim=(-2, -1)) if planes.dim() == 4 else planes.float()
        rows = []
        for v in vec:
            idx = [
                int(v[o : o + len(a.values)].argmax())
                for a, o in zip(self.attributes, self.offsets, strict=True)
            ]
            rows.append(self.decode(idx))
        return rows

    def color(self, attribute: str, value: str) -> RGB | None:
        a = self[attribute]
        return a.colors[a.index(value)]

    # ---- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "attributes": [
                {
                    "name": a.name,
                    "values": [
                        {"name": v, "rgb": list(c) if c is not None else None}
                        for v, c in zip(a.values, a.colors, strict=True)
                    ],
                }
                for a in self.attributes
            ]
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ConditionVocab:
        """From :meth:`to_dict` output, or the short config form ``{hair: [black, brown], ...}``."""
        if (
            "attributes" not in d
        ):  # short form: {attribute: [value, ...]} or {attribute: {value: rgb}}
            d = {
                "attributes": [
                    {
                        "name": name,
                        "values": (
                            [{"name": v, "rgb": c} for v, c in vals.items()]
                            if isinstance(vals, Mapping)
                            else [{"name": v} for v in vals]
                        ),
                    }
                    for name, vals in d.items()
                ]
            }
        attrs = []
        for a in d["attributes"]:
            values = [v if isinstance(v, Mapping) else {"name": v} for v in a["values"]]
            attrs.append(
                Attribute(
                    name=str(a["name"]),
                    values=tuple(str(v["name"]) for v in values),
                    colors=tuple(_parse_color(str(v["name"]), v.get("rgb")) for v in values),
                )
            )
        return cls(attrs)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ConditionVocab:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_metadata(cls, metadata, root: str | Path | None = None) -> ConditionVocab:
        """Build from a metadata table (a pandas DataFrame, as :func:`colorjob.data.read_metadata`
        gives) of the dataset folder ``root``.

        Every column but ``input`` and ``output`` is an attribute. If ``conditions.json`` lies
        in ``root`` its value order and colours are used (and every value in the table must be in
        it); otherwise values are sorted by name and colour names are looked up.
        """
        attr_names = [c for c in metadata.columns if c not in FILE_COLUMNS]
        if not attr_names:
            raise ConditionError(
                "metadata has no condition columns: expected input, output and at least one "
                "attribute column such as hair, shirt"
            )
        sidecar = Path(root) / SIDECAR if root is not None else None
        if sidecar is not None and sidecar.is_file():
            try:
                vocab = cls.load(sidecar)
            except ConditionError as e:
                raise ConditionError(f"{sidecar}: {e}") from None
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise ConditionError(
                    f"{sidecar} is not a valid condition vocabulary ({type(e).__name__}: {e}); "
                    "fix or delete it (without it, values are sorted by name)"
                ) from None
            if vocab.names != attr_names:
                raise ConditionError(
                    f"{sidecar} lists attributes {vocab.names} but metadata.csv has {attr_names}"
                )
            for a in vocab.attributes:
                unknown = sorted(set(metadata[a.name].astype(str)) - set(a.values))
                if unknown:
                    raise ConditionError(
                        f"metadata.csv uses {a.name} value(s) {unknown} that {sidecar} does not "
                        f"list; known {a.name} values: {', '.join(a.values)}"
                    )
            return vocab
        attrs = []
        for name in attr_names:
            values = sorted(set(metadata[name].astype(str)))
            attrs.append(Attribute(name, tuple(values), tuple(_parse_color(v) for v in values)))
        return cls(attrs)
