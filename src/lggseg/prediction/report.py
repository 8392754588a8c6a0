"""The per-patient report.html and the predictions' index.html, rendered as strings.

Both pages are self-contained so they open offline and survive being emailed: images are PNG data URIs, the
area chart is inline SVG, styles are inline, and nothing refers to a server, a font or a script. Every string
that comes from the report (case names and paths from the user's disk) is HTML-escaped. The caller writes the
strings to disk atomically; nothing here touches files.

Colours match the figures of ``lggseg.evaluation.figures``: ground truth green, prediction magenta.
"""

from __future__ import annotations

import base64
import html
import math
import urllib.parse
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import pandas as pd

from lggseg.evaluation.figures import PRED_COLOR, TRUTH_COLOR

DISCLAIMER = (
    "Research tool, not a diagnostic device: lggseg's masks and numbers are not validated for clinical use "
    "and must not guide diagnosis or treatment."
)
TILE_PX = 256  # long side of a montage tile: Kaggle LGG slices are 256 x 256, smaller inputs are upscaled
MAX_TILES = 40  # beyond this the page gets heavy; the omitted slices are still in the table
MIDDLE_SLICES = 3  # shown when no slice has tumour, so the reader still sees what the model saw
TRUTH_THICKNESS = 5  # drawn first and wider, so a perfect prediction on top still leaves a green rim each side
PRED_THICKNESS = 2
SUMMARY_COLUMNS = ("case", "slices", "tumor_positive_slices", "volume_voxels", "volume_mm3",
                   "largest_tumor_slice", "max_tumor_probability", "dice", "report")
NA = "n/a"

_CSS = """
:root { --ink: #1f2328; --muted: #5b636e; --line: #d8dde3; --paper: #ffffff; --bg: #f4f5f7;
        --pred: %(pred)s; --truth: %(truth)s; --warn-bg: #fff6e0; --warn-line: #e3b341; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); line-height: 1.45;
       font: 15px/1.45 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             "Noto Sans", "Liberation Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 20px 40px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 1.15rem; margin: 0 0 12px; }
section { background: var(--paper); border: 1px solid var(--line); border-radius: 10px; padding: 18px 20px;
          margin: 16px 0; }
.sub { color: var(--muted); margin: 0; }
p.sub + .tiles, p.sub + .table-wrap { margin-top: 12px; }
.tag { display: inline-block; font-size: .78rem; font-weight: 600; letter-spacing: .02em; color: #8a5a00;
       background: var(--warn-bg); border: 1px solid var(--warn-line); border-radius: 999px; padding: 1px 10px;
       margin-top: 8px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: #fafbfc; }
.card .label { font-size: .8rem; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 1.45rem; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .detail { font-size: .85rem; color: var(--muted); }
.facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 4px 32px;
         margin-top: 16px; }
.facts h3 { font-size: .85rem; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
            margin: 8px 0 4px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; font-size: .9rem; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
code { font: .85em ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; }
ul.notes { margin: 4px 0 0; padding-left: 20px; font-size: .9rem; }
.banner { background: var(--warn-bg); border: 1px solid var(--warn-line); border-radius: 8px; padding: 8px 12px;
          margin: 0 0 12px; font-weight: 600; }
.legend { display: flex; flex-wrap: wrap; gap: 18px; font-size: .9rem; margin: 0 0 12px; color: var(--muted); }
.swatch { display: inline-block; width: 22px; height: 0; border-top: 3px solid; vertical-align: middle;
          margin-right: 6px; }
.swatch.pred { border-color: var(--pred); }
.swatch.truth { border-color: var(--truth); border-top-width: 4px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 12px; }
figure.tile { margin: 0; background: #111; border-radius: 8px; overflow: hidden; break-inside: avoid; }
figure.tile img { display: block; width: 100%%; height: auto; }
figure.tile figcaption { background: var(--paper); border: 1px solid var(--line); border-top: 0;
                         border-radius: 0 0 8px 8px; padding: 6px 10px; font-size: .82rem;
                         font-variant-numeric: tabular-nums; }
figcaption b { font-size: .9rem; }
figcaption .flag { float: right; font-weight: 600; font-size: .75rem; border-radius: 4px; padding: 0 6px; }
.flag.miss { background: #e6f9ee; color: #00652b; }
.flag.extra { background: #fde8f8; color: #8f0f79; }
.omitted { color: var(--muted); font-size: .9rem; margin: 12px 0 0; }
svg.chart { width: 100%%; height: auto; display: block; }
svg.chart text { font-size: 12px; fill: var(--muted); font-family: inherit; }
svg.chart .axis { stroke: #9aa3ad; stroke-width: 1; }
svg.chart .grid { stroke: #e7eaee; stroke-width: 1; }
svg.chart .bar { fill: var(--pred); opacity: .85; }
svg.chart .truth { fill: none; stroke: var(--truth); stroke-width: 2.5; }
svg.chart .truth-dot { fill: var(--truth); }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%%; font-size: .85rem; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eceff2; text-align: right; white-space: nowrap; }
th { position: sticky; top: 0; background: #f0f2f5; font-weight: 600; color: #39414a; }
th.text, td.text { text-align: left; }
tr.positive td { background: #fdf1fb; }
tr.positive td:first-child { box-shadow: inset 3px 0 0 var(--pred); }
tr.missed td:first-child { box-shadow: inset 3px 0 0 var(--truth); }
td.file { font: .8rem ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; color: var(--muted); }
a { color: #0b5cad; }
.disclaimer { background: var(--warn-bg); border-color: var(--warn-line); font-weight: 600; }
.disclaimer p { margin: 0; }
@media print { body { background: #fff; } section { break-inside: avoid; } th { position: static; } }
""" % {"pred": PRED_COLOR, "truth": TRUTH_COLOR}


# -------------------------------------------------------------------------------------------- formatting


def _is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA: a value the report does not have."""
    if value is None:
        return True
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def _text(value: Any) -> str:
    """Any report value as escaped text, 'n/a' when missing."""
    return NA if _is_missing(value) else html.escape(str(value))


def _count(value: Any) -> str:
    """An integer count with thousands separators."""
    return NA if _is_missing(value) else f"{int(value):,}"


def _decimal(value: Any, digits: int = 3) -> str:
    """A fraction such as a probability or a Dice score with `digits` decimals."""
    return NA if _is_missing(value) else f"{float(value):.{digits}f}"


def _whole(value: Any) -> str:
    """A measurement rounded to a whole number, with thousands separators."""
    return NA if _is_missing(value) else f"{float(value):,.0f}"


def _on_off(value: Any) -> str:
    return NA if _is_missing(value) else ("on" if value else "off")


def _volume_mm3(value: Any) -> str:
    """'3,086 mm³ (3.09 mL)', or 'n/a' when the spacing is unknown."""
    if _is_missing(value):
        return NA
    return f"{float(value):,.0f} mm³ ({float(value) / 1000:.2f} mL)"


def _spacing(value: Any) -> str:
    """Voxel spacing in mm, from a number or a list of numbers."""
    if _is_missing(value):
        return "unknown"
    if isinstance(value, (list, tuple)):
        return " × ".join(f"{float(v):g}" for v in value) + " mm"
    return f"{float(value):g} mm"


def _image_size(value: Any) -> str:
    if _is_missing(value):
        return NA
    if isinstance(value, (list, tuple)):
        return " × ".join(html.escape(str(v)) for v in value) + " px"
    return html.escape(str(value))


def _page(title: str, body: str) -> str:
    """A complete HTML document around `body`; `title` is escaped here."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _definitions(rows: Sequence[tuple[str, str]]) -> str:
    """A <dl> of (label, already-escaped value) pairs."""
    items = "".join(f"<dt>{html.escape(label)}</dt><dd>{value}</dd>" for label, value in rows)
    return f"<dl>{items}</dl>"


def _disclaimer_section(text: str) -> str:
    return f'<section class="disclaimer" role="note"><p>{html.escape(text)}</p></section>'


# ------------------------------------------------------------------------------------------------ arrays


def _binary(name: str, mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`mask` as bool after checking its shape and that it holds only 0 and 1."""
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {mask.shape}, flair has {shape}")
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise ValueError(f"{name} must be binary (0/1), found values {np.unique(mask)[:5].tolist()}")
    return mask.astype(bool)


def _check_arrays(
    report: dict, flair: np.ndarray, pred: np.ndarray, truth: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(flair uint8, pred bool, truth bool or None), checked against each other and report['slices']."""
    flair = np.asarray(flair)
    if flair.ndim != 3 or flair.dtype != np.uint8:
        raise ValueError(f"flair must be (N, H, W) uint8, got shape {flair.shape} dtype {flair.dtype}")
    slices = report.get("slices")
    if not isinstance(slices, list) or len(slices) != flair.shape[0]:
        count = len(slices) if isinstance(slices, list) else slices
        raise ValueError(f"report['slices'] has {count} entries but flair has {flair.shape[0]} slices")
    pred = _binary("pred", pred, flair.shape)
    truth = None if truth is None else _binary("truth", truth, flair.shape)
    return flair, pred, truth


def montage_positions(pred: np.ndarray, truth: np.ndarray | None, limit: int = MAX_TILES) -> tuple[np.ndarray, int]:
    """Positions of the tumour-positive slices (prediction or truth) to show, in slice order, and how many
    more were left out; beyond `limit` the slices with the smallest tumour area are left out."""
    tumor = pred if truth is None else np.logical_or(pred, truth)
    area = tumor.reshape(tumor.shape[0], -1).sum(axis=1)
    positive = np.flatnonzero(area)
    if len(positive) <= limit:
        return positive, 0
    largest = positive[np.argsort(-area[positive], kind="stable")[:limit]]
    return np.sort(largest), len(positive) - limit


def middle_positions(n_slices: int, count: int = MIDDLE_SLICES) -> np.ndarray:
    """`count` consecutive positions around the middle of a stack of `n_slices`."""
    count = min(count, n_slices)
    start = max(0, (n_slices - count) // 2)
    return np.arange(start, start + count)


def _rgb(hex_color: str) -> tuple[int, int, int]:
    hex_color = hex_color.lstrip("#")
    return tuple(int(hex_color[i : i + 2], 16) for i in (0, 2, 4))


def _tile_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(width, height) of a tile whose long side is `long_side`, keeping the slice's aspect ratio."""
    scale = long_side / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _draw_outline(rgb: np.ndarray, mask: np.ndarray, color: str, thickness: int) -> None:
    """Draw the outline of `mask`, resampled to the tile, onto `rgb` in place."""
    size = (rgb.shape[1], rgb.shape[0])
    # Linear resampling then a 0.5 threshold: smooth outlines instead of the input's pixel staircase.
    smooth = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) >= 0.5
    contours, _ = cv2.findContours(smooth.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, _rgb(color), thickness, lineType=cv2.LINE_AA)


def overlay_tile(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None, long_side: int = TILE_PX) -> np.ndarray:
    """(h, w, 3) RGB uint8: the FLAIR slice in grey, resampled to `long_side`, with the truth outline (green)
    under the predicted outline (magenta)."""
    size = _tile_size(*image.shape, long_side)
    shrinking = size[0] < image.shape[1]
    grey = cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    if truth is not None and truth.any():
        _draw_outline(rgb, truth, TRUTH_COLOR, TRUTH_THICKNESS)
    if pred.any():
        _draw_outline(rgb, pred, PRED_COLOR, PRED_THICKNESS)
    return rgb


def png_data_uri(rgb: np.ndarray) -> str:
    """An RGB (or grey) uint8 image as a ``data:image/png;base64,...`` URI."""
    pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {rgb.shape}")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


# ---------------------------------------------------------------------------------------------- sections


def _header(report: dict, n_slices: int) -> str:
    case = report.get("case")
    version = report.get("lggseg_version")
    return (
        f"<header><h1>{_text(case)}</h1>"
        f'<p class="sub">lggseg tumour segmentation report (FLAIR abnormality, lower-grade glioma)'
        f" &middot; {n_slices} slices &middot; created {_text(report.get('created'))}"
        f" &middot; lggseg {_text(version)}</p>"
        '<span class="tag">Research tool, not a diagnostic device</span></header>'
    )


def _card(label: str, value: str, detail: str = "") -> str:
    detail_html = f'<div class="detail">{detail}</div>' if detail else ""
    return (f'<div class="card"><div class="label">{html.escape(label)}</div>'
            f'<div class="value">{value}</div>{detail_html}</div>')


def _dice_card(patient: dict, has_truth: bool) -> str:
    if not _is_missing(patient.get("dice")):
        true_slices = patient.get("true_tumor_positive_slices")
        return _card("Dice vs ground truth", _decimal(patient["dice"]),
                     f"ground truth: {_count(true_slices)} tumour slices")
    note = patient.get("dice_note")
    reason = _text(note) if not _is_missing(note) else ("not computed" if has_truth else "no ground-truth masks")
    return _card("Dice vs ground truth", NA, reason)


def _key_numbers(report: dict, n_slices: int, has_truth: bool) -> str:
    patient = report.get("patient") or {}
    largest = patient.get("largest_tumor_slice")
    cards = [
        _card("Tumour-positive slices", f"{_count(patient.get('tumor_positive_slices'))} of {n_slices}",
              "slices with predicted tumour"),
        _card("Estimated volume", f"{_count(patient.get('volume_voxels'))} voxels",
              _volume_mm3(patient.get("volume_mm3")) if not _is_missing(patient.get("volume_mm3"))
              else "mm³ n/a: voxel spacing unknown"),
        _card("Largest tumour", "none" if _is_missing(largest) else f"slice {_text(largest)}",
              f"{_count(patient.get('largest_tumor_pixels'))} px" if not _is_missing(largest) else ""),
        _card("Max tumour probability", _decimal(patient.get("max_tumor_probability")), "over all slices"),
        _dice_card(patient, has_truth),
    ]
    return f'<div class="cards">{"".join(cards)}</div>'


def _model_facts(model: dict) -> str:
    registered = model.get("registered_model")
    if _is_missing(registered):
        source = f"local checkpoint <code>{_text(model.get('uri'))}</code>"
    else:
        source = (f"{_text(registered)} version {_text(model.get('version'))} "
                  f"(<code>{_text(model.get('uri'))}</code>)")
    rows = [
        ("model", source),
        ("architecture", f"{_text(model.get('architecture'))} / {_text(model.get('encoder'))} encoder"),
        ("trained on", f"{_text(model.get('size'))} px, channels: {_text(model.get('channels'))}"),
        ("threshold", _decimal(model.get("threshold"), 2)),
        ("largest component only", _on_off(model.get("largest_component"))),
        ("mirror averaging (TTA)", _on_off(model.get("tta"))),
    ]
    if not _is_missing(model.get("run_id")):
        rows.append(("MLflow run", f"<code>{_text(model['run_id'])}</code>"))
    return f"<div><h3>Model</h3>{_definitions(rows)}</div>"


def _input_facts(report: dict) -> str:
    source, runtime = report.get("input") or {}, report.get("runtime") or {}
    seconds = runtime.get("seconds")
    rows = [
        ("input folder", f"<code>{_text(source.get('path'))}</code>"),
        ("slices", _count(source.get("slices"))),
        ("image size", _image_size(source.get("image_size"))),
        ("channels read", "grayscale (read as FLAIR)" if source.get("grayscale")
         else "RGB (pre-contrast, FLAIR, post-contrast)"),
        ("voxel spacing", _spacing(source.get("spacing_mm"))),
        ("runtime", f"{_text(runtime.get('device'))}, {_text(runtime.get('precision'))}, "
                    f"{NA if _is_missing(seconds) else f'{float(seconds):.1f} s'}"),
    ]
    return f"<div><h3>Input and run</h3>{_definitions(rows)}</div>"


def _notes(report: dict) -> str:
    notes = [note for note in report.get("notes") or [] if not _is_missing(note)]
    dice_note = (report.get("patient") or {}).get("dice_note")
    if not _is_missing(dice_note) and dice_note not in notes:
        notes.append(dice_note)
    if not notes:
        return ""
    items = "".join(f"<li>{_text(note)}</li>" for note in notes)
    return f'<div><h3>Notes</h3><ul class="notes">{items}</ul></div>'


def _summary_section(report: dict, n_slices: int, has_truth: bool) -> str:
    facts = _model_facts(report.get("model") or {}) + _input_facts(report) + _notes(report)
    numbers = _key_numbers(report, n_slices, has_truth)
    return f'<section aria-label="summary">{numbers}<div class="facts">{facts}</div></section>'


def _legend(has_truth: bool) -> str:
    items = ['<span><span class="swatch pred"></span>prediction (model)</span>']
    if has_truth:
        items.append('<span><span class="swatch truth"></span>ground truth (given masks)</span>')
    items.append("<span>grey: FLAIR slice</span>")
    return f'<div class="legend">{"".join(items)}</div>'


def _tile_flag(pred: np.ndarray, truth: np.ndarray | None) -> str:
    """A badge for slices where prediction and truth disagree on whether there is tumour at all."""
    if truth is None or pred.any() == truth.any():
        return ""
    if truth.any():
        return '<span class="flag miss">missed</span>'
    return '<span class="flag extra">not in truth</span>'


def _tile(entry: dict, image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> str:
    rgb = overlay_tile(image, pred, truth)
    number = _text(entry.get("slice"))
    lines = [f"<b>slice {number}</b>{_tile_flag(pred, truth)}",
             f"predicted {_count(entry.get('predicted_pixels'))} px &middot; "
             f"prob. {_decimal(entry.get('tumor_probability'))}"]
    if truth is not None:
        lines.append(f"true {_count(entry.get('true_pixels'))} px &middot; Dice {_decimal(entry.get('dice'))}")
    return (f'<figure class="tile"><img src="{png_data_uri(rgb)}" width="{rgb.shape[1]}" height="{rgb.shape[0]}" '
            f'alt="slice {number}: FLAIR with tumour outlines" title="{_text(entry.get("image"))}">'
            f'<figcaption>{"<br>".join(lines)}</figcaption></figure>')


def _montage_section(report: dict, flair: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> str:
    positions, omitted = montage_positions(pred, truth)
    parts = ["<h2>Tumour-positive slices</h2>", _legend(truth is not None)]
    if not pred.any():
        parts.append('<p class="banner">No tumour predicted on any slice.</p>')
    if len(positions) == 0:
        positions = middle_positions(flair.shape[0])
        parts.append(f'<p class="sub">No slice has tumour; {len(positions)} slices from the middle of the '
                     "volume are shown for orientation.</p>")
    tiles = "".join(_tile(report["slices"][i], flair[i], pred[i], None if truth is None else truth[i])
                    for i in positions)
    parts.append(f'<div class="tiles">{tiles}</div>')
    if omitted:
        parts.append(f'<p class="omitted">{omitted} more tumour-positive slices are not shown (those with the '
                     f"smallest tumour area, beyond the first {MAX_TILES}); every slice is in the table below.</p>")
    return f'<section aria-label="montage">{"".join(parts)}</section>'


# ----------------------------------------------------------------------------------------------- chart


def _nice_step(span: float, ticks: int = 5) -> float:
    """A 1-2-5 step that cuts [0, span] into about `ticks` intervals."""
    raw = max(span, 1.0) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def _pixels(entries: Sequence[dict], key: str) -> list[float | None]:
    return [None if _is_missing(entry.get(key)) else float(entry[key]) for entry in entries]


def area_chart_svg(slice_numbers: Sequence[Any], predicted: Sequence[float | None],
                   true: Sequence[float | None] | None = None) -> str:
    """Inline SVG: predicted tumour area per slice as bars, the true area as a line when given."""
    width, height, left, right, top, bottom = 960, 260, 64, 16, 14, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for v in [*predicted, *(true or [])] if v is not None]
    step = _nice_step(max(values, default=0.0))
    y_max = step * max(1, math.ceil(max(values, default=0.0) / step))
    n = max(len(slice_numbers), 1)
    band = plot_w / n

    def x_mid(i: int) -> float:
        return left + band * (i + 0.5)

    def y_at(v: float) -> float:
        return top + plot_h * (1 - v / y_max)

    parts = []
    for k in range(int(round(y_max / step)) + 1):
        y = y_at(k * step)
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{k * step:,.0f}</text>')
    label_every = max(1, math.ceil(n / 24))
    for i, (number, value) in enumerate(zip(slice_numbers, predicted, strict=True)):
        if value:
            bar_h = plot_h * value / y_max
            parts.append(f'<rect class="bar" x="{x_mid(i) - band * 0.35:.1f}" y="{y_at(value):.1f}" '
                         f'width="{band * 0.7:.1f}" height="{bar_h:.1f}"><title>slice {_text(number)}: '
                         f"predicted {value:,.0f} px</title></rect>")
        if i % label_every == 0:
            parts.append(f'<text x="{x_mid(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                         f"{_text(number)}</text>")
    if true is not None:
        points = [(x_mid(i), y_at(v), number, v) for i, (number, v) in enumerate(zip(slice_numbers, true, strict=True))
                  if v is not None]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        parts.append(f'<polyline class="truth" points="{path}"/>')
        parts.extend(f'<circle class="truth-dot" cx="{x:.1f}" cy="{y:.1f}" r="2.5"><title>slice {_text(number)}: '
                     f"true {v:,.0f} px</title></circle>" for x, y, number, v in points)
    parts.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}"/>'
                 f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}"/>'
                 f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">slice number</text>'
                 f'<text transform="translate(16 {top + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle">'
                 "tumour area (pixels)</text>")
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="tumour area per slice">{"".join(parts)}</svg>')


def _chart_section(report: dict, has_truth: bool) -> str:
    entries = report["slices"]
    numbers = [entry.get("slice") for entry in entries]
    true = _pixels(entries, "true_pixels") if has_truth else None
    legend = ('<div class="legend"><span><span class="swatch pred"></span>predicted area (bars)</span>'
              + ('<span><span class="swatch truth"></span>true area (line)</span>' if has_truth else "") + "</div>")
    svg = area_chart_svg(numbers, _pixels(entries, "predicted_pixels"), true)
    return f'<section aria-label="area per slice"><h2>Tumour area per slice</h2>{legend}{svg}</section>'


# ----------------------------------------------------------------------------------------------- table


def _slice_row(entry: dict, has_truth: bool) -> str:
    predicted, true = entry.get("predicted_pixels"), entry.get("true_pixels")
    positive = not _is_missing(predicted) and predicted > 0
    missed = has_truth and not positive and not _is_missing(true) and true > 0
    cells = [f"<td>{_text(entry.get('slice'))}</td>", f'<td class="text file">{_text(entry.get("image"))}</td>',
             f"<td>{_decimal(entry.get('tumor_probability'))}</td>", f"<td>{_count(predicted)}</td>"]
    if has_truth:
        cells += [f"<td>{_count(true)}</td>", f"<td>{_decimal(entry.get('dice'))}</td>"]
    row_class = " class=positive" if positive else " class=missed" if missed else ""
    return f'<tr{row_class}>{"".join(cells)}</tr>'


def _table_section(report: dict, has_truth: bool) -> str:
    headers = ["slice", "image", "tumour probability", "predicted px"] + (["true px", "Dice"] if has_truth else [])
    head = "".join(f'<th{" class=text" if name == "image" else ""}>{name}</th>' for name in headers)
    rows = "".join(_slice_row(entry, has_truth) for entry in report["slices"])
    note = "" if has_truth else '<p class="sub">No ground-truth masks: true area and Dice are not available.</p>'
    return (f'<section aria-label="slices"><h2>All slices</h2>{note}<div class="table-wrap"><table>'
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div></section>")


# ----------------------------------------------------------------------------------------------- pages


def report_html(report: dict, flair: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> str:
    """The self-contained report.html of one patient.

    flair (N, H, W) uint8 at input resolution, pred and truth (N, H, W) binary (truth None without masks),
    both in the order of report['slices']; report is the dict written to report.json.
    """
    flair, pred, truth = _check_arrays(report, flair, pred, truth)
    n_slices, has_truth = flair.shape[0], truth is not None
    body = "\n".join([
        _header(report, n_slices),
        _summary_section(report, n_slices, has_truth),
        _montage_section(report, flair, pred, truth),
        _chart_section(report, has_truth),
        _table_section(report, has_truth),
        _disclaimer_section(report.get("disclaimer") or DISCLAIMER),
    ])
    return _page(f"lggseg report: {report.get('case')}", body)


def _relative_link(link: Any, case: Any) -> str:
    """A row's report link, percent-encoded (a ':' in a case name then reads as a path, not a URL scheme);
    an absolute URL or path would break the page offline or once the folder moves."""
    text = str(link)
    if "://" in text or text.startswith(("/", "\\")):
        raise ValueError(f"report link of case {case!r} must be a relative path, got {text!r}")
    return urllib.parse.quote(text, safe="/")


def _index_row(row: pd.Series) -> str:
    href = html.escape(_relative_link(row["report"], row["case"]))
    largest = row["largest_tumor_slice"]
    cells = [
        f'<td class="text"><a href="{href}">{_text(row["case"])}</a></td>',
        f"<td>{_count(row['slices'])}</td>",
        f"<td>{_count(row['tumor_positive_slices'])}</td>",
        f"<td>{_count(row['volume_voxels'])}</td>",
        f"<td>{_whole(row['volume_mm3'])}</td>",
        f"<td>{NA if _is_missing(largest) else _count(largest)}</td>",
        f"<td>{_decimal(row['max_tumor_probability'])}</td>",
        f"<td>{_decimal(row['dice'])}</td>",
    ]
    return f"<tr>{''.join(cells)}</tr>"


def _mean_dice_text(dice: pd.Series, n_patients: int) -> str:
    scored = pd.to_numeric(dice, errors="coerce").dropna()
    if scored.empty:
        return "Mean Dice: n/a (no patient has ground-truth masks)."
    return f"Mean Dice: <b>{scored.mean():.3f}</b> over the {len(scored)} of {n_patients} patients with ground truth."


def index_html(summary: pd.DataFrame, title: str = "lggseg predictions") -> str:
    """The self-contained index.html: one row per patient, linking to its report.html, and the mean Dice."""
    missing = [column for column in SUMMARY_COLUMNS if column not in summary.columns]
    if missing:
        raise KeyError(f"summary is missing column(s) {missing}; it has {list(summary.columns)}")
    ordered = summary.sort_values("case", kind="stable", key=lambda cases: cases.astype(str))
    # a static page (no scripts): the table is sorted by case and says nothing that suggests clicking
    headers = [("case", "text"), ("slices", "num"), ("tumour-positive slices", "num"),
               ("volume (voxels)", "num"), ("volume (mm³)", "num"), ("largest tumour slice", "num"),
               ("max tumour probability", "num"), ("Dice", "num")]
    head = "".join(f'<th class="{css}" scope="col">{html.escape(name)}</th>' for name, css in headers)
    rows = "".join(_index_row(row) for _, row in ordered.iterrows())
    if not rows:
        rows = f'<tr><td class="text" colspan="{len(headers)}">No patients.</td></tr>'
    body = "\n".join([
        f'<header><h1>{html.escape(title)}</h1><p class="sub">{len(ordered)} patients &middot; '
        f'{_mean_dice_text(ordered["dice"], len(ordered))}</p>'
        '<span class="tag">Research tool, not a diagnostic device</span></header>',
        f'<section aria-label="patients"><div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div></section>",
        _disclaimer_section(DISCLAIMER),
    ])
    return _page(title, body)
