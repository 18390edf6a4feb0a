"""The eval report: ``report.png``, ``histograms.png`` and a self-contained ``report.html``.

The HTML holds the summary table (ours, and the paper's published numbers with
``--compare``), the convention behind each metric, the metric histograms and the
best/median/worst pairs by SSIM; images are embedded as base64 PNG, so the file
can be mailed or archived alone. Every inserted text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import cv2
import numpy as np

from . import published as pub
from .pairs import Pair, load_pair

__all__ = ["HIST_PANEL", "histograms", "picks", "render_html", "write_reports"]

_THUMB = 160
_HTML_THUMB = 256
_FONT = cv2.FONT_HERSHEY_SIMPLEX
#: One histogram panel (height, width); ``histograms`` puts PSNR, SSIM, CSS side by side.
HIST_PANEL = (240, 360)
_HIST_METRICS = (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("css", "CSS"))


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def _text(canvas, text, x, y, scale=0.5, colour=(0, 0, 0)):
    cv2.putText(canvas, text, (x, y), _FONT, scale, colour, 1, cv2.LINE_AA)


def picks(rows: list[dict]) -> list[tuple[str, int]]:
    """Indices of the best, median and worst rows by SSIM (stable order on ties)."""
    order = np.argsort([r["ssim"] for r in rows], kind="stable")
    return [("best", int(order[-1])), ("median", int(order[len(order) // 2])), ("worst", int(order[0]))]


# ------------------------------------------------------------------------------------------ report.png

def _report_png(path: Path, summary: dict, rows: list[dict], used: list[Pair], chosen) -> None:
    """Metrics table and best/median/worst (by SSIM) triplets: H&E (if any) | fake | real."""
    lines = [f"pairs {summary['pairs']}   rejected {summary['rejected']}",
             f"PSNR {_fmt(summary['psnr_mean'])}   SSIM {_fmt(summary['ssim_mean'])}   CSS {_fmt(summary['css_mean'])}",
             f"FID {_fmt(summary['fid'])}   KID x1000 {_fmt(summary['kid_x1000_mean'])} +- "
             f"{_fmt(summary['kid_x1000_std'])}"]
    phv = summary["phv"]
    lines.append("PHV " + ("n/a (no ResNet-50 weights)" if phv is None else
                           "  ".join(f"{k} {v:.4f}" for k, v in phv.items())))
    lines.append("FID/KID features: " + summary["conventions"]["inception_features"]["extractor"])
    has_he = used[0].he is not None
    cols = 3 if has_he else 2
    longest = max(cv2.getTextSize(line, _FONT, 0.55, 1)[0][0] for line in lines)  # the table never gets cut
    width = max(cols * _THUMB + 150, longest + 24)
    table_h = 22 * len(lines) + 16
    canvas = np.full((table_h + 24 + len(chosen) * (_THUMB + 8), width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        _text(canvas, line, 8, 22 + 22 * i)
    titles = (["H&E"] if has_he else []) + ["fake", "real"]
    for j, title in enumerate(titles):
        _text(canvas, title, 150 + j * _THUMB + 4, table_h + 16)
    for k, (label, idx, images) in enumerate(chosen):
        pair, row = used[idx], rows[idx]
        y = table_h + 24 + k * (_THUMB + 8)
        _text(canvas, label, 8, y + 20)
        _text(canvas, f"SSIM {row['ssim']:.3f}", 8, y + 42, 0.45)
        _text(canvas, pair.name[:16], 8, y + 64, 0.4)
        for j, img in enumerate(images):
            thumb = cv2.resize(img, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA)
            canvas[y:y + _THUMB, 150 + j * _THUMB:150 + (j + 1) * _THUMB] = thumb
    _imwrite(path, canvas)


def _imwrite(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


# ------------------------------------------------------------------------------------------ histograms

def _panel(values: list[float], title: str) -> np.ndarray:
    h, w = HIST_PANEL
    left, right, top, bottom = 44, 14, 30, 36
    canvas = np.full((h, w, 3), 255, np.uint8)
    finite = np.array([v for v in values if isinstance(v, (int, float)) and math.isfinite(v)], np.float64)
    skipped = len(values) - len(finite)
    head = f"{title}  n={len(finite)}" + (f"  (+{skipped} inf, not drawn)" if skipped else "")
    if len(finite):
        head += f"  mean {finite.mean():.3f}"
    _text(canvas, head, 6, 18, 0.42)
    x0, x1, y0, y1 = left, w - right, h - bottom, top
    cv2.line(canvas, (x0, y0), (x1, y0), (0, 0, 0), 1)
    cv2.line(canvas, (x0, y0), (x0, y1), (0, 0, 0), 1)
    if not len(finite):
        _text(canvas, "no finite values", x0 + 10, (y0 + y1) // 2, 0.45, (120, 120, 120))
        return canvas
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-12:  # all equal: one bar in the middle of a unit-wide range
        lo, hi = lo - 0.5, hi + 0.5
    bins = int(min(30, max(5, math.ceil(math.sqrt(len(finite))))))
    counts, edges = np.histogram(finite, bins=bins, range=(lo, hi))
    top_count = int(counts.max())
    bar_w = (x1 - x0) / bins
    for i, c in enumerate(counts):
        if c:
            bx0 = int(round(x0 + i * bar_w)) + 1
            bx1 = max(bx0, int(round(x0 + (i + 1) * bar_w)) - 1)
            by = int(round(y0 - (y0 - y1) * c / top_count))
            cv2.rectangle(canvas, (bx0, by), (bx1, y0 - 1), (70, 130, 180), -1)
    for frac in (0.0, 0.5, 1.0):
        x = int(round(x0 + frac * (x1 - x0)))
        cv2.line(canvas, (x, y0), (x, y0 + 4), (0, 0, 0), 1)
        label = f"{lo + frac * (hi - lo):.3g}"
        tw = cv2.getTextSize(label, _FONT, 0.38, 1)[0][0]
        _text(canvas, label, min(max(x - tw // 2, 0), w - tw), y0 + 18, 0.38)
    _text(canvas, str(top_count), 4, y1 + 10, 0.38)
    _text(canvas, "0", 4, y0, 0.38)
    _text(canvas, "images per bin", 4, h - 4, 0.35, (90, 90, 90))
    return canvas


def histograms(rows: list[dict]) -> np.ndarray:
    """PSNR, SSIM and CSS histograms side by side: an RGB uint8 image of ``(240, 3 * 360, 3)``.

    Infinite PSNRs (identical images) are counted in the panel title, not drawn.
    """
    return np.concatenate([_panel([r[k] for r in rows], title) for k, title in _HIST_METRICS], axis=1)


# ------------------------------------------------------------------------------------------ report.html

def _png_data_uri(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("could not encode a PNG for the report")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _thumb(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = _HTML_THUMB / max(h, w)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _conventions(summary: dict) -> dict[str, str]:
    conv = summary["conventions"]
    phv = conv["phv"]
    phv_text = ("skipped: no ResNet-50 ImageNet weights" if summary["phv"] is None else
                f"{phv['network']}; fraction of channels with |mean difference| > T = {phv['threshold']}, "
                f"normalisation {phv['normalisation']} ({phv['normalisation_note']})")
    feats = conv["inception_features"]
    return {"psnr": conv["psnr_ssim"], "ssim": conv["psnr_ssim"], "css": conv["css"], "phv": phv_text,
            "fid": f"{conv['fid']}; features: {feats['extractor']}",
            "kid_x1000": f"{conv['kid']}; features: {feats['extractor']}"}


def _table(summary: dict) -> str:
    ours = pub.ours_by_metric(summary)
    published = summary.get("published")
    conv = _conventions(summary)
    head = ["Metric", "Ours"]
    if published:
        head += [published["label"], "Best other in the paper (method)"]
    head += ["Better", "Convention (ours)"]
    out = ["<table class='metrics'>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    higher = {"psnr", "ssim", "css"}
    for key, label in pub.METRICS:
        value = _fmt(ours[key])
        if key == "kid_x1000" and ours[key] is not None:
            value = f"{_fmt(ours[key])} ± {_fmt(summary.get('kid_x1000_std'))}"
            label = "KID x1000 (± std over subsets)"
        cells = [label, value]
        if published:
            digits = 1 if key in ("fid", "kid_x1000") else 3
            best = published["best_other"].get(key)
            cells += [_fmt(published["values"].get(key), digits),
                      "n/a" if best is None else f"{_fmt(best['value'], digits)} ({best['method']})"]
        cells += ["higher" if key in higher else "lower", conv["phv"] if key.startswith("phv") else conv[key]]
        out.append(f"<tr id='row-{_e(key)}'>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


_CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #bbb;padding:4px 8px;vertical-align:top}
th{background:#eee;text-align:left}table.metrics td:nth-child(n+2){font-variant-numeric:tabular-nums}
img{display:block}.note{color:#555;font-size:90%}"""


def render_html(summary: dict, rows: list[dict], chosen, hist: np.ndarray, has_he: bool) -> str:
    """The self-contained report: no external assets, no script."""
    inputs = summary.get("inputs", {})
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             "<title>ATST eval report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>ATST eval report</h1>",
             f"<p>{_e(summary['pairs'])} pairs scored, {_e(summary['rejected'])} inputs rejected. "
             f"Fake: <code>{_e(inputs.get('fake', '?'))}</code>, real: <code>{_e(inputs.get('real', '?'))}</code>"
             + (f", H&amp;E: <code>{_e(inputs['he'])}</code>" if inputs.get("he") else "") + ".</p>",
             "<h2>Summary</h2>", _table(summary),
             "<p class='note'>FID/KID feature source: "
             f"{_e(summary['conventions']['inception_features']['extractor'])} "
             f"(input: {_e(summary['conventions']['inception_features']['input'])}).</p>"]
    published = summary.get("published")
    if published:
        parts.append(f"<p class='note'>{_e(published['label'])}: {_e(published['source'])}, "
                     f"{_e(published['where'])}; trained on {_e(published['trained_on'])}, tested on "
                     f"{_e(published['tested_on'])}. {_e(published['note'])}</p>")
    parts += ["<h2>Per-image metrics</h2>",
              f"<img alt='histograms of PSNR, SSIM and CSS' src='{_png_data_uri(hist)}'>",
              "<p class='note'>Per-image values: per_image.csv beside this file.</p>",
              "<h2>Best, median and worst pairs by SSIM</h2>", "<table class='pairs'>",
              "<tr><th>rank</th><th>name and metrics</th>" + ("<th>H&amp;E</th>" if has_he else "")
              + "<th>fake</th><th>real</th></tr>"]
    for label, idx, images in chosen:
        row = rows[idx]
        cells = "".join(f"<td><img alt='{_e(t)}' src='{_png_data_uri(_thumb(img))}'></td>"
                        for t, img in zip((["H&E"] if has_he else []) + ["fake", "real"], images))
        parts.append(f"<tr><td>{_e(label)}</td><td>{_e(row['name'])}<br>PSNR {_e(_fmt(row['psnr'], 3))}<br>"
                     f"SSIM {_e(_fmt(row['ssim'], 4))}<br>CSS {_e(_fmt(row['css'], 4))}</td>{cells}</tr>")
    parts.append("</table>")
    rejected = summary.get("rejected_inputs") or []
    if rejected:
        parts.append("<h2>Rejected inputs</h2><ul>" + "".join(f"<li>{_e(r)}</li>" for r in rejected) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_reports(out: Path, summary: dict, rows: list[dict], used: list[Pair]) -> dict[str, Path]:
    """Write report.png, histograms.png and report.html into ``out``; returns their paths by name."""
    out = Path(out)
    has_he = used[0].he is not None
    chosen = []
    for label, idx in picks(rows):
        fake, real, he = load_pair(used[idx])
        chosen.append((label, idx, ([he] if has_he else []) + [fake, real]))
    paths = {"report.png": out / "report.png", "histograms.png": out / "histograms.png",
             "report.html": out / "report.html"}
    _report_png(paths["report.png"], summary, rows, used, chosen)
    hist = histograms(rows)
    _imwrite(paths["histograms.png"], hist)
    paths["report.html"].write_text(render_html(summary, rows, chosen, hist, has_he), encoding="utf-8")
    return paths
