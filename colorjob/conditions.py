"""Condition vocabulary: which attributes a model is conditioned on and which values each may take.

A vocabulary is an ordered list of attributes (seed: ``hair``, ``shirt``). An attribute is one of:

- **categorical** (the seed's design, the default): an ordered list of named values (seed: five
  colour names each), each of which may carry the RGB colour it stands for (needed to measure
  condition fidelity; unknown colours are ``None``). The networks see one one-hot entry per value.
- **colour**: any colour, written ``#rrggbb``; its named values (a *palette*, e.g. ``black``,
  ``blonde``) still work, each standing for its RGB. The networks see a perceptual embedding of
  the colour (:data:`COLOUR_DIMS` numbers: CIELAB normalised, and the sRGB values), so nearby
  colours give nearby results and colours nobody listed interpolate.

A condition is a list of *codes*, one per attribute: the value's index for a categorical
attribute, the colour as a 24-bit integer (``0xRRGGBB``) for a colour attribute. :meth:`vectors`
turns codes into what the networks take (one-hot and embeddings, concatenated); :meth:`planes`
spreads them as constant ``H x W`` planes (the seed's concat generator: 5 + 5 one-hot planes +
3 sketch channels = 13 input channels).

A vocabulary is built from a dataset (``metadata.csv`` plus an optional ``conditions.json`` that
records the order, the colours and which attributes are colours), or from a plain dict (config /
``model.json``), and saved with every model.
"""

from __future__ import annotations

import json
import re
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
KINDS = ("categorical", "colour")
#: Numbers a colour takes in a condition vector: L*/100, a*/128, b*/128, then R, G, B in [0, 1].
COLOUR_DIMS = 6
HEX = re.compile(r"^#[0-9a-fA-F]{6}$")

RGB = tuple[int, int, int]


class ConditionError(ColorjobError, ValueError):
    """A condition value or attribute the vocabulary does not know."""


def parse_hex(value: str) -> RGB:
    """``#rrggbb`` -> (r, g, b); anything else (``#abc``, ``#12345``, ``#ggg000``) refused."""
    value = str(value).strip()
    if not HEX.match(value):
        if re.match(r"^#[0-9a-fA-F]{3}$", value):
            raise ConditionError(f"{value!r}: write colours with six hex digits (#rrggbb, e.g. #{''.join(c * 2 for c in value[1:])}); three-digit forms are not accepted")  # fmt: skip
        raise ConditionError(f"{value!r} is not a colour: write #rrggbb (six hex digits, e.g. #7f3fbf)")  # fmt: skip
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


def to_hex(rgb: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def pack(rgb: RGB) -> int:
    return (int(rgb[0]) << 16) | (int(rgb[1]) << 8) | int(rgb[2])


def unpack(code: int) -> RGB:
    code = int(code)
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


@dataclass(frozen=True)
class Attribute:
    """One conditioned attribute, e.g. ``hair`` with values ``black, brown, ...``."""

    name: str
    values: tuple[str, ...]
    colors: tuple[RGB | None, ...]
    kind: str = "categorical"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConditionError(f"attribute {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")  # fmt: skip
        if self.kind == "categorical" and not self.values:
            raise ConditionError(f"attribute {self.name!r} has no values")
        if len(set(self.values)) != len(self.values):
            raise ConditionError(
                f"attribute {self.name!r} lists a value twice: {list(self.values)}"
            )
        if len(self.colors) != len(self.values):
            raise ConditionError(
                f"attribute {self.name!r}: {len(self.values)} values but {len(self.colors)} colours"
            )
        if self.kind == "colour" and any(c is None for c in self.colors):
            missing = [v for v, c in zip(self.values, self.colors, strict=True) if c is None]
            raise ConditionError(f"colour attribute {self.name!r}: named value(s) {missing} have no RGB")  # fmt: skip

    @property
    def is_colour(self) -> bool:
        return self.kind == "colour"

    @property
    def width(self) -> int:
        """Entries this attribute takes in a condition vector."""
        return COLOUR_DIMS if self.is_colour else len(self.values)

    def index(self, value: str) -> int:
        try:
            return self.values.index(str(value))
        except ValueError:
            raise ConditionError(
                f"unknown {self.name} value {value!r}; known {self.name} values: "
                f"{', '.join(self.values)}"
                + (
                    "; hex colours need a model trained on colours (colorjob synth --colours random)"
                    if str(value).startswith("#")
                    else ""
                )  # fmt: skip
            ) from None

    def code(self, value: str) -> int:
        """The code of a value (see the module's text); an unknown value or a malformed colour
        is a :class:`ConditionError` saying what is accepted."""
        value = str(value).strip()
        if not self.is_colour:
            return self.index(value)
        if value in self.values:
            return pack(self.colors[self.values.index(value)])
        if value.startswith("#"):
            return pack(parse_hex(value))
        raise ConditionError(
            f"unknown {self.name} colour {value!r}: write #rrggbb or one of its named colours "
            f"({', '.join(self.values) or 'none'})"
        )

    def value(self, code: int) -> str:
        """The value a code stands for: the name (categorical, or a named colour), else ``#rrggbb``."""
        if not self.is_colour:
            return self.values[int(code)]
        rgb = unpack(code)
        for v, c in zip(self.values, self.colors, strict=True):
            if c == rgb:
                return v
        return to_hex(rgb)

    def rgb(self, code: int) -> RGB | None:
        """The colour a code asks for (None for a categorical value without one)."""
        return unpack(code) if self.is_colour else self.colors[int(code)]


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


def colour_vectors(codes: torch.Tensor) -> torch.Tensor:
    """``(B,)`` colour codes -> ``(B, COLOUR_DIMS)`` embeddings (:func:`colorjob.colour.embedding`),
    on the codes' device."""
    from colorjob.colour import embedding

    c = codes.detach().cpu().long()
    uniq, inverse = torch.unique(c, return_inverse=True)  # few distinct colours per batch
    rgb = torch.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], -1).numpy()
    table = torch.from_numpy(embedding(rgb))
    return table[inverse].to(codes.device)


class ConditionVocab:
    """Ordered attributes; turns requested values into codes, vectors and planes."""

    def __init__(self, attributes: Sequence[Attribute]):
        if not attributes:
            raise ConditionError("a condition vocabulary needs at least one attribute")
        names = [a.name for a in attributes]
        if len(set(names)) != len(names):
            raise ConditionError(f"attribute names repeat: {names}")
        self.attributes: tuple[Attribute, ...] = tuple(attributes)
        self.offsets: tuple[int, ...] = tuple(
            sum(a.width for a in self.attributes[:i]) for i in range(len(self.attributes))
        )

    # ---- shape -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @property
    def num_channels(self) -> int:
        """Entries of a condition vector: planes of the concat generator (seed: 10)."""
        return sum(a.width for a in self.attributes)

    @property
    def has_colours(self) -> bool:
        return any(a.is_colour for a in self.attributes)

    def rgb_slots(self) -> list[int]:
        """Where the R, G, B entries of each colour attribute are in a condition vector (the
        generator also takes them as constant planes next to its output layer)."""
        return [o + COLOUR_DIMS - 3 + k for a, o in zip(self.attributes, self.offsets, strict=True) if a.is_colour for k in range(3)]  # fmt: skip

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
        """What differs from ``other`` (attributes, their kinds, values and order)."""
        out = []
        if self.names != other.names:
            out.append(f"attributes {self.names} vs {other.names}")
        for a in self.attributes:
            if a.name not in other.names:
                continue
            b = other[a.name]
            if a.kind != b.kind:
                out.append(f"{a.name} is {a.kind} vs {b.kind}")
            if a.values != b.values:
                extra, missing = [v for v in a.values if v not in b.values], [v for v in b.values if v not in a.values]  # fmt: skip
                detail = ", ".join(x for x in (f"only here: {extra}" if extra else "", f"only there: {missing}" if missing else "") if x)  # fmt: skip
                out.append(f"{a.name} values {list(a.values)} vs {list(b.values)}" + (f" ({detail})" if detail else " (another order)"))  # fmt: skip
            elif a.colors != b.colors:
                out.append(f"{a.name}: the named colours' RGB differ")
        return out

    def __repr__(self) -> str:
        parts = ", ".join(f"{a.name}[{'colour: ' if a.is_colour else ''}{'|'.join(a.values)}]" for a in self.attributes)  # fmt: skip
        return f"ConditionVocab({parts})"

    # ---- values <-> codes <-> vectors -----------------------------------------------------------
    def encode(self, row: Mapping[str, object]) -> list[int]:
        """``{"hair": "black", "shirt": "#7f3fbf"}`` -> one code per attribute."""
        missing = [n for n in self.names if n not in row]
        if missing:
            raise ConditionError(
                f"condition is missing attribute(s) {', '.join(missing)}; "
                f"expected {', '.join(self.names)}"
            )
        return [a.code(str(row[a.name])) for a in self.attributes]

    def decode(self, codes: Sequence[int]) -> dict[str, str]:
        return {a.name: a.value(int(c)) for a, c in zip(self.attributes, codes, strict=True)}

    def vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, A)`` codes -> ``(B, C)`` condition vectors: one-hot per categorical attribute,
        the colour embedding per colour attribute, concatenated. What the networks take."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.dim() == 1:
            codes = codes.unsqueeze(0)
        parts = []
        for j, a in enumerate(self.attributes):
            c = codes[:, j]
            if a.is_colour:
                parts.append(colour_vectors(c))
            else:
                parts.append(torch.nn.functional.one_hot(c, len(a.values)).float())
        return torch.cat(parts, 1)

    def planes(
        self, codes: torch.Tensor, height: int, width: int | None = None, dtype=torch.float32
    ) -> torch.Tensor:
        """``(B, A)`` codes -> ``(B, C)`` vectors as constant ``(B, C, H, W)`` planes."""
        vec = self.vectors(codes).to(dtype)
        return vec[:, :, None, None].expand(-1, -1, height, width or height)

    def from_planes(self, planes: torch.Tensor) -> list[dict[str, str]]:
        """Inverse of :meth:`planes` for categorical vocabularies (reads the plane means)."""
        vec = planes.float().mean(dim=(-2, -1)) if planes.dim() == 4 else planes.float()
        rows = []
        for v in vec:
            idx = [int(v[o : o + a.width].argmax()) for a, o in zip(self.attributes, self.offsets, strict=True)]  # fmt: skip
            rows.append(self.decode(idx))
        return rows

    def color(self, attribute: str, value: str) -> RGB | None:
        a = self[attribute]
        return a.rgb(a.code(value))

    def judgeable(self) -> bool:
        """Whether every value has a colour (fidelity and the colour metrics need them)."""
        return all(c is not None for a in self.attributes for c in a.colors)

    # ---- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "attributes": [
                {
                    "name": a.name,
                    **({"kind": "colour"} if a.is_colour else {}),
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
        if "attributes" not in d:
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
                    kind=str(a.get("kind", "categorical")),
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
        in ``root`` its order, colours and kinds are used (and every value in the table must fit
        it: a listed name, or ``#rrggbb`` for a colour attribute). Without it, an attribute with
        a ``#rrggbb`` value is a colour attribute (its other values must be colour names);
        otherwise values are sorted by name and colour names are looked up.
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
                seen = set(metadata[a.name].astype(str))
                unknown = sorted(v for v in seen if v not in a.values and not (a.is_colour and HEX.match(v.strip())))  # fmt: skip
                if unknown:
                    raise ConditionError(
                        f"metadata.csv uses {a.name} value(s) {unknown[:10]} that {sidecar} does not "
                        f"list; known {a.name} values: {', '.join(a.values)}"
                        + ("; or #rrggbb colours" if a.is_colour else "")
                    )
            return vocab
        attrs = []
        for name in attr_names:
            values = sorted(set(metadata[name].astype(str)))
            if any(v.startswith("#") for v in values):
                named = [v for v in values if not v.startswith("#")]
                bad = [v for v in values if v.startswith("#") and not HEX.match(v)]
                if bad:
                    parse_hex(bad[0])  # says what is wrong with it
                colors = tuple(_parse_color(v) for v in named)
                if any(c is None for c in colors):
                    raise ConditionError(f"metadata.csv: attribute {name} mixes #rrggbb colours with names that are not colours ({[v for v, c in zip(named, colors, strict=True) if c is None][:5]}): give them RGB in {SIDECAR}")  # fmt: skip
                attrs.append(Attribute(name, tuple(named), colors, kind="colour"))
            else:
                attrs.append(Attribute(name, tuple(values), tuple(_parse_color(v) for v in values)))
        return cls(attrs)
