"""Planning a batch job: everything checked before work, and the output folder tidied.

:func:`preflight` checks what can be wrong before any work or Ray starts (model, grid, input and
output locations, the layout against the folder's own). Under the folder's lock the input is
listed and dealt into shards (:mod:`.listing`) and :func:`check_names` reads the shards one at a
time for sketches whose outputs would be one file: all of that before anything is made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from colorjob import storage
from colorjob.batch import ledger, listing
from colorjob.batch.config import BatchConfig
from colorjob.batch.grid import BatchError, read_grid
from colorjob.batch.names import clashes, fold, sketch_key
from colorjob.conditions import ConditionVocab
from colorjob.export import read_model

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A checked job: the model, the grid and where the sketches are."""

    meta: dict
    weights: bytes
    vocab: ConditionVocab
    grid: pd.DataFrame
    source: listing.Source
    state: dict | None  # the output folder's state (shard count, layout), None on a first run
    output: str = "composite"  # what outputs are (output_mode)


def preflight(cfg: BatchConfig) -> Plan:
    """Everything checked that can be checked before work starts; raises BatchError & co."""
    meta, weights = read_model(cfg.model)  # every field, the shapes and the model_id
    vocab = ConditionVocab.from_dict(meta["conditions"])
    grid = read_grid(cfg.conditions, vocab)
    storage.check(cfg.input)
    storage.check(cfg.output, writable=True)  # a wrong bucket or missing credentials: here
    src = listing.source(cfg.input, cfg.output, cfg.follow_links)
    state = ledger.read_state(cfg.output)
    if state is not None and state.get("layout", "mirror") != cfg.layout:
        raise BatchError(
            f"{cfg.output} holds a job in the {state.get('layout')!r} layout; a {cfg.layout!r} "
            "job needs another --output (or --set layout=" + str(state.get("layout")) + ")"
        )
    return Plan(meta, weights, vocab, grid, src, state, output_mode(cfg, meta))


def output_mode(cfg: BatchConfig, meta: dict) -> str:
    """What outputs are: as asked, or (auto) the model's own mode (composite unless it was
    trained and validated on its raw pictures)."""
    if cfg.mode != "auto":
        if cfg.mode == "raw" and meta.get("out_channels") == 4:
            raise BatchError(f"{cfg.model} paints colour layers: it has no raw picture; use --mode composite or --mode layers")  # fmt: skip
        return cfg.mode
    return "raw" if meta.get("train_config", {}).get("output") == "raw" else "composite"


def check_names(dealt: listing.Dealt, fmt: str, shown: int = 20) -> None:
    """Refuse sketches whose outputs would overwrite each other (also when they differ only in
    letter case, as on macOS and Windows): they always share a shard, so a shard at a time."""
    found = []
    for s in dealt.busy:
        paths = dealt.inputs(s)["path"].to_pylist()
        keys = {rel: sketch_key(rel, fmt) for rel in paths}
        for a, b in clashes((rel, key) for rel, key in keys.items()):
            found.append((a, b, keys[b]))
    if found:
        lines = "\n  ".join(f"{a}  and  {b}  ->  {k}__<variant>.{fmt}" for a, b, k in found[:shown])
        more = f"\n  ... and {len(found) - shown} more" if len(found) > shown else ""
        raise BatchError(
            f"{len(found)} pair(s) of sketches would write the same output files (names that "
            f"differ only in letter case are one file on macOS and Windows):\n  {lines}{more}\n"
            "rename one of each pair"
        )


def clean_temporaries(output_uri: str) -> int:
    """Delete what killed batch runs left: their temporary folder (``.colorjob/tmp/<run>``: every
    file a batch run writes in a local output folder is written there first, then renamed into
    place) and work folders (the caller holds the folder's lock, so no live run owns them), and
    temporary files of dead processes beside the folder's own small files. Never anything else:
    another program's (or a training run's) temporary files under the output folder stay."""
    fs, root = storage.resolve(output_uri)
    n = 0
    for folder in (ledger.TMP, ledger.RUNS):  # temporary files and work folders of killed runs
        path = storage.join(root, folder)
        if storage.is_dir(fs, path):
            n += len(storage.list_files(fs, path))
            fs.delete_dir(path)
    if not storage.is_uri(output_uri):  # small files written beside their place by a dead process
        n += storage.remove_stale_temporaries(root, storage.join(root, ledger.STATE))
    return n


def folded_key(rel: str, fmt: str) -> str:
    return fold(sketch_key(rel, fmt))
