"""The newcomer's main job end to end (tiny setting) and its report in a real headless browser."""

import html
import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import read_manifest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI installs Chromium and sets this: there a missing browser is a failure, not a skip.
REQUIRED = os.environ.get("COLORJOB_REQUIRE_BROWSER") == "1"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs")
    r = subprocess.run(
        [sys.executable, "-m", "colorjob.quickstart", "--tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


def test_quickstart_makes_data_search_model_colours_and_report(quickstart):
    out, stdout = quickstart
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("done in") and last.endswith(f"Report: {out / 'report.html'}")
    for step in range(1, 6):
        assert f"[{step}/5]" in stdout
    assert (out / "data" / "metadata.csv").is_file()
    assert len(pd.read_csv(out / "search" / "trials.csv")) == 2
    assert (out / "search" / "best" / "generator.safetensors").is_file()
    assert (out / "search" / "best" / "samples.png").is_file()
    m = read_manifest(out / "colored")
    assert len(m) == 4 * 25 and (m["status"] == "ok").all()
    page = (out / "report.html").read_text()
    for section in ("Dataset", "Search", "Best model", "Batch colorization"):
        assert f"<h2>{section}</h2>" in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 4 and all((out / s).is_file() for s in srcs)


def cards(page: str, section: str) -> dict[str, str]:
    """The figure cards of a report section: label -> value."""
    body = page.split(f"<h2>{section}</h2>", 1)[1].split("<h2>", 1)[0]
    return {html.unescape(k): html.unescape(v) for v, k in re.findall(r'<b class="\w+">([^<]*)</b>([^<]*)</div>', body)}  # fmt: skip


def test_the_reports_figures_are_those_of_the_files(quickstart):
    out, _ = quickstart
    page = (out / "report.html").read_text()
    trials = pd.read_csv(out / "search" / "trials.csv")
    search = cards(page, "Search")
    for status in ("completed", "stopped early", "failed"):
        assert int(search[status]) == int((trials["status"] == status).sum())
    meta = json.loads((out / "search" / "best" / "model.json").read_text())
    model = cards(page, "Best model")
    assert model["validation L1"] == f"{meta['metrics']['val_l1']:.4f}"
    assert model["epoch"] == str(meta["metrics"]["epoch"])
    m = read_manifest(out / "colored")
    made = cards(page, "Batch colorization")
    for status in ("ok", "skipped", "failed"):
        assert int(made[status]) == int((m["status"] == status).sum())
    fidelity = made["condition fidelity on these characters"]  # measured on the new characters
    assert re.fullmatch(r"\d+\.\d%", fidelity) and 0 <= float(fidelity[:-1]) <= 100


@pytest.mark.skipif(
    CHROMIUM is None and not REQUIRED, reason="needs Debian's chromium (.ci/run installs it)"
)
def test_report_loads_in_headless_chromium_with_no_broken_images(quickstart, tmp_path):
    assert CHROMIUM is not None, "CI asked for the browser test, but chromium is not installed"
    out, _ = quickstart
    url = (out / "report.html").as_uri()
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'p1'}", "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-loaded="yes"' in body
    assert 'data-images="4"' in body
    assert 'data-broken=""' in body, body
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'p2'}", "--window-size=1200,3000", f"--screenshot={shot}", url],
        capture_output=True, timeout=120,
    )  # fmt: skip
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert img.size == (1200, 3000)
    import numpy as np

    assert (
        len(np.unique(np.asarray(img.resize((60, 150))))) > 20
    )  # a page with content, not a blank
