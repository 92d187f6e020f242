"""The exported generator: ``generator.safetensors`` + ``model.json``. One loader for everyone.

``model.json`` holds what is needed to rebuild and use the generator with no training config file
around: the format version, the ``model_id`` (a hash of the weights file), image size, widths,
the condition vocabulary (with colours), the metrics of the exported epoch and the training
config. Batch colorization, the tuning export and the tests all go through :func:`read_model` /
:func:`load_generator`, which check every field, the weights' tensor shapes against the declared
architecture and the ``model_id`` against the weights, and say what is wrong in one line.

An export is written into a fresh folder beside the destination and swapped in as a unit, so a
reader (or a crash) never sees new weights with an old ``model.json``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save

from colorjob import storage
from colorjob.conditions import ConditionVocab
from colorjob.errors import ColorjobError
from colorjob.models import CONDITIONINGS, Generator, generator_for, num_downs_for

FORMAT = "colorjob.generator"
FORMAT_VERSION = 2  # 2: colour attributes, colour-layer generators
WEIGHTS, META = "generator.safetensors", "model.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64"}


class ModelError(ColorjobError, ValueError):
    """A model directory that cannot be loaded or does not fit what it is asked to do."""


def model_id(weights: bytes) -> str:
    """The identity of a generator: the first 16 hex digits of its weights file's SHA-256."""
    return hashlib.sha256(weights).hexdigest()[:16]


def weights_file(state_dict: dict, dtype: torch.dtype = torch.float32) -> bytes:
    """The bytes of ``generator.safetensors`` for a generator's state dict (floats as ``dtype``).
    The same state gives the same bytes, hence the same ``model_id``."""
    state = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in state_dict.items()
    }
    return save(state)


def export_generator(
    generator: Generator,
    vocab: ConditionVocab,
    out_dir: str | Path,
    metrics: dict | None = None,
    config: dict | None = None,
    dtype: torch.dtype = torch.float32,
    samples: str | Path | None = None,
    schedule: list[dict] | None = None,
) -> Path:
    """Write ``out_dir/generator.safetensors`` and ``out_dir/model.json``, as one unit.

    ``samples``: a picture of what the generator makes, kept beside it as ``samples.png``.
    ``schedule``: the hyper-parameters of every epoch that made it (``epoch``, ``lr_g``, ``lr_d``,
    ``lambda_l1``, ``lambda_adv``, ``tag``: under PBT they change, and the tag says which trial
    trained that epoch).
    """
    weights = weights_file(generator.state_dict(), dtype)
    v2 = generator.out_channels == 4 or vocab.has_colours  # what colorjob 0.2 cannot read
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if v2 else 1,
        "model_id": model_id(weights),
        "image_size": generator.image_size,
        "in_channels": generator.in_channels,
        "out_channels": generator.out_channels,
        "ngf": generator.ngf,
        "conditioning": generator.conditioning,
        "dtype": str(dtype).removeprefix("torch."),
        "conditions": vocab.to_dict(),
        "metrics": metrics or {},
        "train_config": config or {},
        "schedule": schedule or [],
    }
    with storage.replacing_dir(Path(out_dir)) as tmp:
        (tmp / WEIGHTS).write_bytes(weights)
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if samples is not None:
            shutil.copyfile(samples, tmp / "samples.png")
    return Path(out_dir)


def publish(src: str | Path, dest: str | Path) -> None:
    """Copy an exported model folder to ``dest`` (a folder or URI), replacing what is there.

    A local ``dest`` is swapped in as a unit. Object stores have no rename: the other files go
    first and ``model.json`` (which names the weights' hash) last, and a reader that meets the
    new weights with the old ``model.json`` is told so by the ``model_id`` check.
    """
    src = Path(src)
    if not storage.is_uri(dest):
        with storage.replacing_dir(Path(dest)) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        return
    fs, root = storage.resolve(dest)
    files = sorted((f for f in src.rglob("*") if f.is_file()), key=lambda f: f.name == META)
    for f in files:
        storage.write_atomic(fs, storage.join(root, f.relative_to(src).as_posix()), f.read_bytes())


# ---- checks --------------------------------------------------------------------------------------
def _need(meta: dict, key: str, kind, where: str):
    if key not in meta:
        raise ModelError(f"{where} lacks {key!r}: not a complete colorjob model.json")
    value = meta[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        name = getattr(kind, "__name__", None) or " or ".join(k.__name__ for k in kind)
        raise ModelError(f"{where}: {key} must be {name}, got {value!r}")
    return value


def check_meta(meta: object, where: str) -> ConditionVocab:
    """Every field of a ``model.json``: types, ranges and channel counts; returns its vocabulary."""
    if not isinstance(meta, dict):
        raise ModelError(f"{where} must hold a JSON object")
    if meta.get("format") != FORMAT:
        raise ModelError(f"{where} is not a colorjob generator (format {meta.get('format')!r})")
    version = _need(meta, "format_version", int, where)
    if not 1 <= version <= FORMAT_VERSION:
        raise ModelError(
            f"{where} has format version {version}; this colorjob reads 1 to {FORMAT_VERSION}"
            + (": upgrade colorjob" if version > FORMAT_VERSION else "")
        )
    mid = _need(meta, "model_id", str, where)
    if len(mid) != 16 or any(c not in "0123456789abcdef" for c in mid):
        raise ModelError(f"{where}: model_id must be 16 hex digits, got {mid!r}")
    try:
        num_downs_for(_need(meta, "image_size", int, where))
    except ValueError as e:
        raise ModelError(f"{where}: {e}") from None
    for key, high in (("ngf", 1024), ("in_channels", 4096), ("out_channels", 4)):
        if not 1 <= _need(meta, key, int, where) <= high:
            raise ModelError(f"{where}: {key} must be in [1, {high}], got {meta[key]}")
    if meta["image_size"] > 8192:
        raise ModelError(f"{where}: image_size must be at most 8192, got {meta['image_size']}")
    if meta["out_channels"] not in (3, 4):
        raise ModelError(f"{where}: out_channels must be 3 (RGB) or 4 (a colour layer: RGB + coverage), got {meta['out_channels']}")  # fmt: skip
    if _need(meta, "dtype", str, where) not in DTYPES:
        raise ModelError(
            f"{where}: dtype must be one of {', '.join(DTYPES)}, got {meta['dtype']!r}"
        )
    try:
        vocab = ConditionVocab.from_dict(_need(meta, "conditions", dict, where))
    except (ColorjobError, KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{where}: conditions are not a valid vocabulary ({e})") from None
    conditioning = meta.setdefault("conditioning", "concat")  # models before 0.2 are all concat
    if conditioning not in CONDITIONINGS:
        raise ModelError(f"{where}: conditioning must be one of {', '.join(CONDITIONINGS)}, got {conditioning!r}")  # fmt: skip
    expected = 3 + vocab.num_channels if conditioning == "concat" else 3
    if meta["in_channels"] != expected:
        raise ModelError(
            f"{where}: in_channels {meta['in_channels']} does not fit its vocabulary "
            f"({'3 + ' + str(vocab.num_channels) + ' condition planes' if conditioning == 'concat' else 'the sketch only, with film'} = {expected})"
        )
    return vocab


def _network(meta: dict) -> Generator:
    vocab = ConditionVocab.from_dict(meta["conditions"])
    return generator_for(vocab, meta.get("conditioning", "concat"), meta["image_size"], meta["ngf"], layers=meta.get("out_channels") == 4)  # fmt: skip


def _expected_shapes(meta: dict) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        g = _network(meta)
    return {k: tuple(v.shape) for k, v in g.state_dict().items()}


def safetensors_header(head: bytes, total_size: int, where: str) -> dict:
    """The tensor table of a safetensors file from its first bytes (no tensor data is read)."""
    if len(head) < 8:
        raise ModelError(f"{where} is truncated ({total_size} bytes): re-export the model")
    (n,) = struct.unpack("<Q", head[:8])
    if n > 100_000_000 or len(head) < 8 + n:
        raise ModelError(f"{where} has a broken header: not a safetensors file, or truncated")
    try:
        table = json.loads(head[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"{where} has a broken header: not a safetensors file") from None
    if not isinstance(table, dict):
        raise ModelError(f"{where} has a broken header: not a tensor table")
    table.pop("__metadata__", None)
    for name, t in table.items():
        ok = (
            isinstance(t, dict) and isinstance(t.get("dtype"), str)
            and isinstance(t.get("shape"), list) and all(isinstance(d, int) and d >= 0 for d in t["shape"])
            and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2
            and all(isinstance(o, int) and o >= 0 for o in t["data_offsets"])
        )  # fmt: skip
        if not ok:
            raise ModelError(
                f"{where} has a broken header: entry {str(name)[:60]!r} is not a tensor "
                "(dtype, shape, data_offsets); re-export the model"
            )
    end = max((t["data_offsets"][1] for t in table.values()), default=0)
    if total_size != 8 + n + end:
        raise ModelError(
            f"{where} is {total_size} bytes but its header describes {8 + n + end}: "
            "the file is truncated or was changed; re-export the model"
        )
    return table


def check_weights_table(meta: dict, table: dict, where: str) -> None:
    """The tensors a safetensors header lists against the architecture ``model.json`` declares."""
    expected = _expected_shapes(meta)
    problems = [f"missing {k}" for k in expected if k not in table]
    problems += [f"unexpected {k}" for k in table if k not in expected]
    for k, shape in expected.items():
        if k in table and tuple(table[k]["shape"]) != shape:
            problems.append(f"{k} is {tuple(table[k]['shape'])}, expected {shape}")
        dtype = _SAFETENSORS_DTYPES.get(table.get(k, {}).get("dtype"))
        if k in table and dtype not in (meta["dtype"], "int64"):
            problems.append(f"{k} is {table[k]['dtype']}, model.json says {meta['dtype']}")
    if problems:
        shown = "; ".join(problems[:4]) + (
            f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
        )
        raise ModelError(f"{where} does not match the shape model.json describes: {shown}")


# ---- reading -------------------------------------------------------------------------------------
def _locate(model_dir: str | Path):
    fs, root = storage.resolve(model_dir)
    try:
        found = storage.is_dir(fs, root)
    except OSError as e:
        raise ModelError(str(storage.explain(str(model_dir), e))) from None
    if not found:
        raise ModelError(
            f"model directory {model_dir} does not exist (train one: colorjob train ...)"
        )
    missing = [n for n in (WEIGHTS, META) if not storage.exists(fs, storage.join(root, n))]
    if missing:
        raise ModelError(
            f"{model_dir} is not an exported colorjob model: missing {', '.join(missing)}"
        )
    return fs, root


def _read_meta(fs, root: str, model_dir) -> tuple[dict, str]:
    where = f"{str(model_dir).rstrip('/')}/{META}"
    try:
        meta = json.loads(storage.read_bytes(fs, storage.join(root, META)))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{where} is not valid JSON: {e}") from None
    check_meta(meta, where)
    return meta, where


def read_model_info(model_dir: str | Path) -> dict:
    """``model.json`` of a model directory (a folder or a URI), every field checked, and the
    weights file's header checked against it (its tensors are not read)."""
    fs, root = _locate(model_dir)
    meta, _ = _read_meta(fs, root, model_dir)
    path = storage.join(root, WEIGHTS)
    where = f"{str(model_dir).rstrip('/')}/{WEIGHTS}"
    with fs.open_input_file(path) as f:
        size = f.size()
        head = f.read_at(min(size, 8), 0)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if len(head) == 8 and n <= 100_000_000:
            head += f.read_at(min(n, size - 8), 8)
    check_weights_table(meta, safetensors_header(head, size, where), where)
    return meta


def read_model(model_dir: str | Path) -> tuple[dict, bytes]:
    """``(model.json, generator.safetensors bytes)``, all checked, the ``model_id`` against the
    weights' hash too: what a remote worker needs to rebuild the generator."""
    fs, root = _locate(model_dir)
    meta, where = _read_meta(fs, root, model_dir)
    weights = storage.read_bytes(fs, storage.join(root, WEIGHTS))
    wpath = f"{str(model_dir).rstrip('/')}/{WEIGHTS}"
    check_weights_table(meta, safetensors_header(weights, len(weights), wpath), wpath)
    if model_id(weights) != meta["model_id"]:
        raise ModelError(
            f"{model_dir}: the weights do not belong to this model.json (model_id "
            f"{meta['model_id']}, weights hash {model_id(weights)}): a half-copied or mixed "
            "model folder; copy or export it again"
        )
    return meta, weights


def generator_from_weights(
    meta: dict,
    weights: bytes,
    device: str | torch.device = "cpu",
    vocab: ConditionVocab | None = None,
) -> tuple[Generator, ConditionVocab]:
    """A generator in eval mode from :func:`read_model`'s output."""
    model_vocab = ConditionVocab.from_dict(meta["conditions"])
    if vocab is not None and vocab != model_vocab:
        raise ModelError(
            f"condition vocabulary mismatch: the model knows {model_vocab}, asked for {vocab}"
        )
    g = _network(meta)
    state = safetensors_load(weights)
    try:
        g.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        raise ModelError(f"{WEIGHTS} does not match the shape model.json describes: {e}") from None
    return g.to(device).eval(), model_vocab


def load_generator(
    model_dir: str | Path, device: str | torch.device = "cpu", vocab: ConditionVocab | None = None
) -> tuple[Generator, ConditionVocab, dict]:
    """Rebuild the exported generator in eval mode; returns ``(generator, vocab, model.json)``.

    ``vocab``, when given, must equal the model's (same attributes, values and order).
    """
    meta, weights = read_model(model_dir)
    try:
        g, model_vocab = generator_from_weights(meta, weights, device, vocab)
    except ModelError as e:
        raise ModelError(f"{model_dir}: {e}") from None
    return g, model_vocab, meta


DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default"
#: The files of an exported model folder (what ``colorjob export --to`` may replace).
MODEL_FILES = (WEIGHTS, META, "MODEL_CARD.md", "samples.png")


def is_model_folder(path: Path) -> bool:
    """Whether ``path`` holds an exported model and nothing else (so replacing it loses nothing)."""
    path = Path(path)
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    if not names or not names <= set(MODEL_FILES) or META not in names:
        return False
    try:
        return json.loads((path / META).read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
