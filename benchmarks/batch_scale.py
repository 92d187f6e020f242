"""Batch at any size: what the driver holds and how long deciding takes, as jobs grow.

    python benchmarks/batch_scale.py                   # 10^5, 10^6 and 10^7 planned outputs
    python benchmarks/batch_scale.py --sizes 100000    # one size
    python benchmarks/batch_scale.py --quick           # 10^4 (a check that it runs)

For each size (25 variants per sketch: 4,000 / 40,000 / 400,000 tiny sketches), in a fresh
process each time, ``colorjob batch --dry-run`` (it lists, deals the shards, reads every ledger
part and decides exactly as a real run would, and writes no output):

- **fresh**: an empty output folder (every output to make);
- **rerun**: the same folder after a run that made everything. Making 10^7 images is not what is
  measured, so the folder is filled directly: a shards-layout job whose tars (empty) and ledger
  parts say every output is done, as a finished run leaves them. Deciding then reads each
  shard's input list and ledger part and checks each tar and each sketch's size and time.

Printed per case: the driver's peak RSS (VmHWM), the seconds of the whole dry run and of its
deciding step, and the growth of the peak from the smallest size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = 25
PROBE = """
import json, sys, time, logging
from colorjob.batch import BatchConfig, execute
from colorjob.batch import executors
real = executors.decide_local
spent = {}
def timed(*a, **k):
    t = time.perf_counter(); out = real(*a, **k); spent["decide"] = time.perf_counter() - t; return out
import colorjob.batch as b
b.decide_local = timed
t = time.perf_counter()
r = execute(BatchConfig(input=sys.argv[1], conditions=sys.argv[2], model=sys.argv[3], output=sys.argv[4],
                        executor="local", layout="shards", contact_sheet=False), dry_run=True)
whole = time.perf_counter() - t
peak = next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:')) * 1024
print(json.dumps({"peak": peak, "whole": whole, "decide": spent.get("decide"), "todo": r.counts["todo"],
                  "skipped": r.counts["skipped"], "shards": r.shards}))
"""


def tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), 255).save(buf, format="PNG")
    return buf.getvalue()


def make_inputs(folder: Path, n: int) -> None:
    """``n`` tiny sketches in folders of 1,000 (what a big job's input looks like)."""
    data = tiny_png()
    for i in range(n):
        d = folder / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"s{i:07d}.png").write_bytes(data)


def tiny_model(tmp: Path) -> str:
    import torch

    from colorjob import synth
    from colorjob.export import export_generator
    from colorjob.models import Generator

    torch.manual_seed(0)
    return str(export_generator(Generator(13, 3, 32, 8), synth.vocabulary(), tmp / "model"))


def fill_as_done(inp: Path, out: Path, model: str, grid: str) -> None:
    """Write the state a finished shards-layout run leaves (empty tars, every ledger part),
    shard by shard, through colorjob's own listing and naming."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from colorjob.batch import ledger, listing, shard
    from colorjob.batch.grid import read_grid
    from colorjob.batch.names import output_rel, sketch_key
    from colorjob.conditions import ConditionVocab
    from colorjob.export import read_model_info

    meta = read_model_info(model)
    g = read_grid(grid, ConditionVocab.from_dict(meta["conditions"]))
    src = listing.source(str(inp), str(out))
    with tempfile.TemporaryDirectory() as tmp:
        dealt = listing.deal(src, "png", len(g), None, Path(tmp))
        ledger.write_state(str(out), {"version": ledger.STATE_VERSION, "shards": dealt.shards, "layout": "shards"})  # fmt: skip
        for s in dealt.busy:
            t = dealt.inputs(s)
            paths, sizes, mtimes = (t[c].to_pylist() for c in ("path", "size", "mtime_ns"))
            tar = out / shard.container_of(s)
            tar.parent.mkdir(parents=True, exist_ok=True)
            tar.write_bytes(b"\0" * 1024)
            info = tar.stat()
            rows = {k: [] for k in ledger.RECORD.names}
            outs = []
            for rel, size, mtime in zip(paths, sizes, mtimes, strict=True):
                key = sketch_key(rel, "png")
                for v, (name, values) in enumerate(zip(g["variant"], g["values"], strict=True)):
                    o = output_rel(key, name, "png")
                    outs.append(o)
                    for k, val in (("output", o), ("input", rel), ("input_size", size), ("input_mtime_ns", mtime),
                                   ("input_sha256", ""), ("variant", v), ("values", values), ("model_id", meta["model_id"]),
                                   ("width", 16), ("height", 16), ("size", 100), ("mtime_ns", 0), ("sha256", ""),
                                   ("done_at", 0.0), ("container", shard.container_of(s))):  # fmt: skip
                        rows[k].append(val)
            spec = type("S", (), {"layout": "shards", "model_id": meta["model_id"], "values": tuple(g["values"]), "fmt": "png", "output": "raw"})  # fmt: skip
            part_meta = {"manifest_hash": shard._planned_hash(spec, outs), "layout": "shards", "container": [shard.container_of(s), info.st_size, info.st_mtime_ns]}  # fmt: skip
            table = pa.table({f.name: pa.array(rows[f.name], type=f.type) for f in ledger.RECORD}, schema=ledger.RECORD)  # fmt: skip
            table = table.replace_schema_metadata({k: json.dumps(v) for k, v in part_meta.items()})
            d = out / ledger.LEDGER / listing.shard_name(s)
            d.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, d / "part.parquet")
            m = out / ledger.MANIFEST / listing.shard_name(s)
            m.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"output": outs}), m / "part.parquet")


def measure(inp: Path, out: Path, model: str, grid: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-c", PROBE, str(inp), grid, model, str(out)],
                       capture_output=True, text=True, env=env)  # fmt: skip
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6, 10**7])
    p.add_argument("--quick", action="store_true", help="10^4 outputs only")
    p.add_argument("--tmp", default=None, help="where the inputs go (default: a temporary folder)")
    a = p.parse_args()
    sizes = [10**4] if a.quick else a.sizes
    tmp = Path(a.tmp or tempfile.mkdtemp(prefix="colorjob-batch-scale-"))
    model = tiny_model(tmp)
    grid = str(ROOT / "configs" / "grid.csv")
    rows = []
    for outputs in sizes:
        inp = tmp / f"in{outputs}"
        t0 = time.perf_counter()
        make_inputs(inp, outputs // VARIANTS)
        made = time.perf_counter() - t0
        fresh = measure(inp, tmp / f"fresh{outputs}", model, grid)
        assert fresh["todo"] == outputs, fresh
        done = tmp / f"done{outputs}"
        fill_as_done(inp, done, model, grid)
        rerun = measure(inp, done, model, grid)
        assert rerun["skipped"] == outputs and rerun["todo"] == 0, rerun
        for case, r in (("fresh", fresh), ("rerun", rerun)):
            rows.append({"outputs": outputs, "case": case, "shards": r["shards"], "driver peak RSS (MB)": r["peak"] / 1e6,
                         "dry run (s)": r["whole"], "decide (s)": r["decide"], "inputs made (s)": made})  # fmt: skip
    import pandas as pd

    df = pd.DataFrame(rows)
    base = df[df["outputs"] == df["outputs"].min()].set_index("case")["driver peak RSS (MB)"]
    df["growth vs smallest (MB)"] = df["driver peak RSS (MB)"] - df["case"].map(base)
    with pd.option_context("display.width", 200):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
