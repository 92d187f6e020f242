"""What batch's guarantees cost: the driver's memory as jobs grow, and the provenance check.

    python benchmarks/batch_scale.py              # ~10 min on 2 cores
    python benchmarks/batch_scale.py --quick

1. Driver memory: peak RSS of the process that plans and merges (``executor: ray``; the work runs
   in Ray's workers) for 1,000 and for 100,000 planned outputs (small sketches, a small model:
   the job's size is what is measured, not the pixels).
2. Rerun of 3,000 finished outputs: the seconds spent deciding what is done (reading the ledger,
   checking each file's size and time) against listing the output folder alone, and the whole
   rerun.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import sys
from colorjob.batch import BatchConfig, execute
execute(BatchConfig(input=sys.argv[1], conditions=sys.argv[2], model=sys.argv[3], output=sys.argv[4],
                    executor="ray", contact_sheet=False))
print(next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:')) * 1024)
"""


def sketches(folder: Path, n: int, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = (
        Image.open(ROOT / "examples" / "sketches" / "character_1.png")
        .convert("RGB")
        .resize((size, size))
    )
    for i in range(n):
        base.rotate(i % 360, fillcolor="white").save(folder / f"s{i:05d}.png")
    return folder


def tiny_model(tmp: Path) -> str:
    import torch

    from colorjob import synth
    from colorjob.export import export_generator
    from colorjob.models import Generator

    torch.manual_seed(0)
    return str(export_generator(Generator(13, 3, 32, 8), synth.vocabulary(), tmp / "model"))


def driver_memory(tmp: Path, model: str, sizes: list[int]) -> list[dict]:
    rows = []
    grid = str(ROOT / "configs" / "grid.csv")
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    for outputs in sizes:
        inp = sketches(tmp / f"in{outputs}", outputs // 25, 16)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", PROBE, str(inp), grid, model, str(tmp / f"out{outputs}")],
                           capture_output=True, text=True, env=env, check=True)  # fmt: skip
        rows.append({"measure": "driver peak RSS (MB)", "outputs": outputs,
                     "value": int(r.stdout.split()[-1]) / 1e6, "seconds": time.perf_counter() - t0})  # fmt: skip
    return rows


def rerun_check(tmp: Path, model: str, outputs: int) -> list[dict]:
    from colorjob.batch import BatchConfig, execute
    from colorjob.batch.ledger import new_run_id
    from colorjob.batch.lock import OutputLock
    from colorjob.batch.plan import _file_infos, decide, preflight

    inp = sketches(tmp / "rerun-in", outputs // 25, 64)
    cfg = BatchConfig(input=str(inp), conditions=str(ROOT / "configs" / "grid.csv"), model=model,
                      output=str(tmp / "rerun-out"), executor="local", contact_sheet=False)  # fmt: skip
    execute(cfg)
    t0 = time.perf_counter()
    _file_infos(cfg.output)
    listing = time.perf_counter() - t0
    plan = preflight(cfg)
    run_id = new_run_id()
    with OutputLock(cfg.output, run_id):
        t0 = time.perf_counter()
        decide(plan, cfg, run_id)
        deciding = time.perf_counter() - t0
    assert plan.skipped == outputs and plan.todo == 0
    t0 = time.perf_counter()
    execute(cfg)
    whole = time.perf_counter() - t0
    return [
        {"measure": "list the output folder (s)", "outputs": outputs, "value": listing},
        {
            "measure": "decide what is done: ledger + each file (s)",
            "outputs": outputs,
            "value": deciding,
        },
        {"measure": "whole rerun, in process (s)", "outputs": outputs, "value": whole},
    ]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="colorjob-batch-scale-"))
    model = tiny_model(tmp)
    rows = driver_memory(tmp, model, [250] if a.quick else [1000, 100_000])
    rows += rerun_check(tmp, model, 250 if a.quick else 3000)
    import pandas as pd

    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep=""))


if __name__ == "__main__":
    main()
