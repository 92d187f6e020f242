"""What every batch worker is told about the job (:class:`Spec`), and where an output's colour
layer goes: used by the stages (:mod:`colorjob.batch.stages`, which call the shards) and by the
shards (:mod:`colorjob.batch.shard`), which take them from here so they need not import the
stages."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    """Everything a worker needs besides the model and its block (small, picklable)."""

    input_root: str  # a path or URI every worker can resolve
    output_root: str
    work_root: str  # where decisions, tar pieces and results of this run go
    fmt: str
    size: int  # the model's square side
    max_pixels: int
    min_side: int
    batch_size: int
    precision: str
    run_id: str
    model_id: str
    conditions: tuple[tuple[int, ...], ...]  # per variant: the condition codes
    values: tuple[str, ...]  # per variant: the values as canonical JSON
    variants: tuple[str, ...] = ()  # per variant: its name (in file names)
    attrs: tuple[str, ...] = ()  # the attributes, in the vocabulary's order
    attr_values: tuple[tuple[str, ...], ...] = ()  # per variant: the values as the grid wrote them
    layout: str = "mirror"
    output: str = "raw"
    overwrite: bool = False
    estimated_layer: bool = False  # the model has no coverage head (its layers are estimated)


def layer_path(out: str) -> str:
    """Where an output's colour layer goes: ``a/cat__v.png`` -> ``a/cat__v.layer.png`` (variant
    names never end in ``.layer``, so no output is another's layer)."""
    return out.rsplit(".", 1)[0] + ".layer.png"
