"""An HTML report of a run, for a person: one page, its images in a folder beside it.

``write_report(out, ...)`` copies the pictures into ``out/report_files/`` and writes
``out/report.html``: the dataset's contact sheet, the trials table and curves, the best model's
metrics and samples, the batch contact sheet, manifest summary and what was measured on
its outputs. Open it in any browser; no
network, no scripts from elsewhere. A few lines of inline script record (in ``data-*`` attributes
of ``<body>``) whether every image loaded, so a headless browser can check the page.
"""

from __future__ import annotations

import html
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2330;padding:0 1rem;line-height:1.45}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #dde3ea;padding-bottom:.3rem}
.muted{color:#66707d}img{max-width:100%;border:1px solid #dde3ea;border-radius:6px;image-rendering:auto}
table{border-collapse:collapse;font-size:.9rem;margin:.6rem 0}th,td{padding:.3rem .6rem;border-bottom:1px solid #e8ecf1;
text-align:right}th{background:#f3f6f9}td:first-child,th:first-child{text-align:left}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{background:#f6f8fb;border-radius:8px;padding:.7rem 1rem;min-width:9rem}
.card b{display:block;font-size:1.4rem}.ok{color:#1c7c3c}.bad{color:#b3261e}
"""

CHECK = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-broken', broken.map(function (i) { return i.getAttribute('src'); }).join(' '));
  document.body.setAttribute('data-loaded', 'yes');
});
</script>
"""


def _table(df: pd.DataFrame) -> str:
    return df.to_html(
        index=False, border=0, na_rep="–", float_format=lambda v: f"{v:.4g}", escape=True
    )


def _img(files: Path, src: Path | None, name: str, alt: str, min_width: int = 0) -> str:
    """Copy a picture beside the page and show it; small grids are scaled up, pixel-sharp."""
    if src is None or not Path(src).is_file():
        return f'<p class="muted">({html.escape(alt)}: not available)</p>'
    shutil.copyfile(src, files / name)
    style = ""
    if min_width:
        from PIL import Image

        w = Image.open(src).size[0]
        if w < min_width:
            style = f' style="width:{min_width}px;image-rendering:pixelated"'
    return f'<img src="{files.name}/{name}" alt="{html.escape(alt)}"{style}>'


def _cards(items: list[tuple[str, str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><b class="{cls}">{html.escape(v)}</b>{html.escape(k)}</div>'
            for k, v, cls in items
        )
        + "</div>"
    )


def _values(column: pd.Series, shown: int = 12) -> str:
    """An attribute's values, named ones listed, ``#rrggbb`` colours counted."""
    values = sorted(column.astype(str).unique())
    hexes = [v for v in values if v.startswith("#")]
    names = [v for v in values if not v.startswith("#")]
    listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")  # fmt: skip
    if hexes:
        listed += (" and " if listed else "") + f"{len(hexes)} #rrggbb colours"
    return listed


def dataset_section(files: Path, dataset: Path) -> list[str]:
    from colorjob.data import read_metadata

    meta = read_metadata(dataset)
    attrs = [c for c in meta.columns if c not in ("input", "output")]
    sketches = meta["input"].nunique()
    values = "; ".join(f"{a} ({_values(meta[a])})" for a in attrs)
    return [
        "<h2>Dataset</h2>",
        f"<p>{sketches} sketches × {len(meta) // max(1, sketches)} colourings = {len(meta)} pairs; "
        f'conditions: {html.escape(values)}. <span class="muted">{html.escape(str(dataset))}</span></p>',
        "<p class='muted'>Each row: the sketch, five colourings, the hair and shirt masks.</p>",
        _img(files, dataset / "contact_sheet.png", "dataset.png", "dataset contact sheet"),
    ]


def search_section(files: Path, trials_csv: Path, trials_png: Path | None) -> list[str]:
    trials = pd.read_csv(trials_csv)
    counts = trials["status"].value_counts()
    statuses = ("completed", "stopped early", "failed")
    return [
        "<h2>Search</h2>",
        _cards(
            [(k, str(int(counts.get(k, 0))), "ok" if k != "failed" else "bad") for k in statuses]
        ),
        _table(trials.drop(columns=[c for c in ("error",) if c in trials])),
        "<p class='muted'>Validation L1 per epoch for every trial (ASHA stops the weak ones early).</p>",
        _img(files, trials_png, "trials.png", "validation L1 per trial"),
    ]


def model_section(files: Path, model_dir: Path) -> list[str]:
    meta = json.loads((model_dir / "model.json").read_text())
    m, cfg = meta.get("metrics", {}), meta.get("train_config", {})
    fid = m.get("val_fidelity")
    cards = [
        ("validation L1", f"{m.get('val_l1', float('nan')):.4f}", "ok"),
        ("PSNR (dB)", f"{m.get('val_psnr', float('nan')):.2f}", "ok"),
        ("condition fidelity", "n/a" if fid is None else f"{fid:.0%}", "ok"),
        ("epoch", str(m.get("epoch", "?")), "ok"),
    ] + colouring_cards(m, "val_")
    return [
        "<h2>Best model</h2>",
        _cards(cards),
        f"<p>{meta['image_size']} px, ngf {meta['ngf']}; lr_g {cfg.get('lr_g', 0):.3g}, lr_d {cfg.get('lr_d', 0):.3g}, "
        f"λ_L1 {cfg.get('lambda_l1', 0):.3g}, λ_adv {cfg.get('lambda_adv', 0):.3g}; model id <code>{meta['model_id']}</code>. "
        f'<span class="muted">{html.escape(str(model_dir))}</span></p>',
        "<p class='muted'>Held-out sketches (first column) in five conditions, at the best epoch.</p>",
        _img(files, model_dir / "samples.png", "samples.png", "best epoch samples", min_width=720),
    ]


def colouring_cards(m: dict, prefix: str = "") -> list[tuple[str, str, str]]:
    """Cards for the colouring metrics present in ``m`` (keys as :mod:`colorjob.metrics` names
    them, after ``prefix``): pixel accuracy and ΔE per attribute, background leak, lines kept."""
    cards = []
    for key, v in m.items():
        if v is None or not key.startswith(prefix):
            continue
        k = key.removeprefix(prefix)
        if k.startswith("acc_"):
            cards.append((f"{k[4:]} pixels in the asked colour", f"{v:.1%}", "ok" if v >= 0.9 else "bad"))  # fmt: skip
        elif k.startswith("de_") and k.endswith("_median"):
            p95 = m.get(f"{prefix}{k.removesuffix('_median')}_p95")
            shown = f"{v:.1f}" + ("" if p95 is None else f" / {p95:.1f}")
            cards.append((f"{k[3:-7]} ΔE2000 median / p95", shown, "ok" if v <= 10 else "bad"))
    if m.get(f"{prefix}leak") is not None:
        v = m[f"{prefix}leak"]
        cards.append(("background changed (leak)", f"{v:.1%}", "ok" if v <= 0.02 else "bad"))
    if m.get(f"{prefix}lines") is not None:
        v = m[f"{prefix}lines"]
        cards.append(("line pixels kept", f"{v:.1%}", "ok" if v >= 0.98 else "bad"))
    return cards


def batch_section(files: Path, batch_dir: Path, measured: dict | None = None) -> list[str]:
    """``measured``: :func:`colorjob.evaluate.metrics_of_files` of the outputs, when the
    sketches' masks are known."""
    manifest = pd.read_parquet(batch_dir / "manifest")
    counts = manifest["status"].value_counts()
    summary = (
        manifest.groupby("status")
        .agg(images=("output", "size"), sketches=("input", "nunique"))
        .reset_index()
    )
    failed = manifest[manifest["status"] == "failed"].drop_duplicates("input")[["input", "error"]]
    statuses = ("ok", "skipped", "failed")
    cards = [(k, str(int(counts.get(k, 0))), "bad" if k == "failed" else "ok") for k in statuses]
    if measured:  # measured on the outputs, from the new characters' masks
        fidelity = measured["fidelity"]
        cards.append(("condition fidelity on these characters", f"{fidelity:.1%}", "ok" if fidelity >= 0.95 else "bad"))  # fmt: skip
        cards += colouring_cards(measured)
    return [
        "<h2>Batch colorization</h2>",
        _cards(cards),
        f"<p>{manifest['input'].nunique()} sketches × {manifest['variant'].nunique()} variants. "
        f'<span class="muted">{html.escape(str(batch_dir))}</span></p>',
        _table(summary),
        (_table(failed) if len(failed) else ""),
        "<p class='muted'>New sketches down the side, variants across.</p>",
        _img(files, batch_dir / "contact_sheet.png", "batch.png", "batch contact sheet"),
    ]


def write_report(
    out: str | Path,
    *,
    title: str = "colorjob run",
    dataset: Path | None = None,
    trials_csv: Path | None = None,
    trials_png: Path | None = None,
    model_dir: Path | None = None,
    batch_dir: Path | None = None,
    batch_metrics: dict | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write ``out/report.html`` (and ``out/report_files/``); returns the page's path.

    Each section is shown when its input exists: the dataset, the search (trials.csv), the
    best model (model.json) and the batch run (its ``manifest/``); ``batch_metrics``: what
    :func:`colorjob.evaluate.metrics_of_files` measured on the batch's outputs.
    """
    out = Path(out)
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by colorjob</p>',
    ]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if dataset is not None:
        parts += dataset_section(files, Path(dataset))
    if trials_csv is not None and Path(trials_csv).is_file():
        parts += search_section(files, Path(trials_csv), trials_png)
    if model_dir is not None and (Path(model_dir) / "model.json").is_file():
        parts += model_section(files, Path(model_dir))
    if batch_dir is not None and (Path(batch_dir) / "manifest").is_dir():
        parts += batch_section(files, Path(batch_dir), batch_metrics)
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(parts)
        + CHECK
        + "</body></html>\n"
    )
    path = out / "report.html"
    path.write_text(page)
    return path
