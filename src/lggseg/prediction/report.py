"""The per-patient report.html and the predictions' index.html, rendered from the Jinja2 templates in
``prediction/templates`` (report.html.j2, index.html.j2, both on base.html.j2; styles in report.css).

This module prepares what the templates show (montage tiles, the area chart, the index rows) and owns the
formatting filters (``count``, ``decimal``, ... : 'n/a' for a missing value); the templates own the markup and the
wording. Both pages are self-contained so they open offline and survive being emailed: images (the tiles and
the area chart) are PNG data URIs, report.css is inlined, and nothing refers to a server, a font or a script.
Autoescaping is on for every template and no value is marked safe, so every string from the report (case
names and paths from the user's disk) is HTML-escaped; StrictUndefined makes a value the template names but is
not given an error instead of a blank. The caller writes the strings to disk atomically; nothing here touches
files.

Colours match the figures of ``lggseg.evaluation.figures``: ground truth green, prediction magenta.
"""

from __future__ import annotations

import base64
import math
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import jinja2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from lggseg.data.layout import is_synthetic_case
from lggseg.data.provenance import FINGERPRINT_CHARS, SYNTHETIC
from lggseg.evaluation.figures.canvas import PRED_COLOR, TRUTH_COLOR, new_figure, render_png

DISCLAIMER = (
    "Research tool, not a diagnostic device: lggseg's masks and numbers are not validated for clinical use "
    "and must not guide diagnosis or treatment."
)
TILE_PX = 256  # long side of a montage tile: Kaggle LGG slices are 256 x 256, smaller inputs are upscaled
MAX_TILES = 40  # beyond this the page gets heavy; the omitted slices are still in the table
MIDDLE_SLICES = 3  # shown when no slice has tumour, so the reader still sees what the model saw
# Outlines are drawn outside their mask only, so a lesion's own pixels stay visible however small it is; the
# truth's is wider and drawn first, so a perfect prediction's outline on top still leaves a green rim outside.
TRUTH_OUTLINE_PX = 3
PRED_OUTLINE_PX = 1
ZOOM_PX = 768  # a tile opened at full size (a click on it) is shown up to this wide: 3x a 256-px slice
CHART_INCHES = (9.6, 2.8)  # the page is about 1,100 px wide; at the figures' DPI the chart fills it unscaled
CHART_INK, CHART_AXIS, CHART_GRID = "#5b636e", "#9aa3ad", "#e7eaee"  # report.css's muted text and rules
CHART_MAX_LABELS = 24  # slice numbers on the x axis; beyond this every k-th is labelled
SUMMARY_COLUMNS = ("case", "slices", "tumor_positive_slices", "volume_voxels", "volume_mm3",
                   "largest_tumor_slice", "max_tumor_probability", "dice", "report")
NA = "n/a"


# -------------------------------------------------------------------------------------------- formatting


def _is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA: a value the report does not have."""
    if value is None:
        return True
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def _text(value: Any) -> str:
    """Any report value as text, 'n/a' when missing."""
    return NA if _is_missing(value) else str(value)


def _count(value: Any) -> str:
    """An integer count with thousands separators."""
    return NA if _is_missing(value) else f"{int(value):,}"


def _decimal(value: Any, digits: int = 3) -> str:
    """A fraction such as a probability or a Dice score with `digits` decimals."""
    return NA if _is_missing(value) else f"{float(value):.{digits}f}"


def _whole(value: Any) -> str:
    """A measurement rounded to a whole number, with thousands separators."""
    return NA if _is_missing(value) else f"{float(value):,.0f}"


def _seconds(value: Any) -> str:
    return NA if _is_missing(value) else f"{float(value):.1f} s"


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
        return " × ".join(str(v) for v in value) + " px"
    return str(value)


def _is_empty_slice(entry: Any) -> bool:
    """A slice (or a patient) with no tumour in the truth and none predicted: its Dice is 0/0, which the metric
    code scores 1.0; the pages mark it instead of showing a perfect score nobody earned."""
    if not isinstance(entry, dict):
        return False
    predicted = entry.get("predicted_pixels", entry.get("volume_voxels"))
    true = entry.get("true_pixels", entry.get("true_tumor_positive_slices"))
    return not _is_missing(predicted) and not _is_missing(true) and predicted == 0 and true == 0


def is_synthetic_report(report: dict) -> bool:
    """A case of `lggseg synth` (named `SYNTH_...`, or recorded as synthetic input): not a patient."""
    source = (report.get("input") or {}).get("data_source")
    return is_synthetic_case(_text(report.get("case"))) or source == SYNTHETIC


def _fingerprint(value: Any) -> str:
    """The data fingerprint's first characters: enough to tell two data sets apart at a glance."""
    return NA if _is_missing(value) else str(value)[:FINGERPRINT_CHARS]


def _environment() -> jinja2.Environment:
    """The templates of both pages, with the formatting filters and the overlay colours."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("lggseg.prediction", "templates"),
        autoescape=True,  # every template, whatever its name: nothing from the report reaches the page unescaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(text=_text, count=_count, decimal=_decimal, whole=_whole, seconds=_seconds,
                               on_off=_on_off, volume_mm3=_volume_mm3, spacing=_spacing, image_size=_image_size,
                               fingerprint=_fingerprint)
    environment.tests.update(missing=_is_missing, empty_slice=_is_empty_slice)
    environment.globals.update(NA=NA, pred_color=PRED_COLOR, truth_color=TRUTH_COLOR, zoom_px=ZOOM_PX)
    return environment


TEMPLATES = _environment()


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


def _draw_outline(rgb: np.ndarray, mask: np.ndarray, color: str, width: int) -> None:
    """Draw a `width`-pixel outline of `mask`, resampled to the tile, onto `rgb` in place, outside the mask:
    an outline centred on the edge would paint over a lesion a few pixels across."""
    size = (rgb.shape[1], rgb.shape[0])
    # Linear resampling then a 0.5 threshold: smooth outlines instead of the input's pixel staircase.
    smooth = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) >= 0.5
    contours, _ = cv2.findContours(smooth.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    ink = np.zeros(smooth.shape, np.uint8)  # coverage 0..255: anti-aliased, then cut away inside the mask
    cv2.drawContours(ink, contours, -1, 255, 2 * width + 1, lineType=cv2.LINE_AA)
    ink[smooth] = 0
    alpha = ink[..., None].astype(np.float32) / 255
    rgb[:] = np.rint(rgb * (1 - alpha) + np.array(_rgb(color), np.float32) * alpha).astype(np.uint8)


def overlay_tile(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None, long_side: int = TILE_PX) -> np.ndarray:
    """(h, w, 3) RGB uint8: the FLAIR slice in grey, resampled to `long_side`, with the truth outline (green)
    under the predicted outline (magenta)."""
    size = _tile_size(*image.shape, long_side)
    shrinking = size[0] < image.shape[1]
    grey = cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    if truth is not None and truth.any():
        _draw_outline(rgb, truth, TRUTH_COLOR, TRUTH_OUTLINE_PX)
    if pred.any():
        _draw_outline(rgb, pred, PRED_COLOR, PRED_OUTLINE_PX)
    return rgb


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_data_uri(rgb: np.ndarray) -> str:
    """An RGB (or grey) uint8 image as a ``data:image/png;base64,...`` URI."""
    pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {rgb.shape}")
    return _png_data_uri(encoded.tobytes())


# ------------------------------------------------------------------------------------------------ montage


@dataclass(frozen=True)
class Tile:
    """One montage tile: the slice's report entry, its overlay as a data URI, and whether prediction and
    truth disagree on whether the slice has tumour at all ('missed', 'extra' or None)."""

    entry: dict
    uri: str
    width: int
    height: int
    flag: str | None


def _tile_flag(pred: np.ndarray, truth: np.ndarray | None) -> str | None:
    if truth is None or pred.any() == truth.any():
        return None
    return "missed" if truth.any() else "extra"


def _tile(entry: dict, image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> Tile:
    rgb = overlay_tile(image, pred, truth)
    return Tile(entry, png_data_uri(rgb), rgb.shape[1], rgb.shape[0], _tile_flag(pred, truth))


# -------------------------------------------------------------------------------------------------- chart


def _pixels(entries: Sequence[dict], key: str) -> list[float | None]:
    return [None if _is_missing(entry.get(key)) else float(entry[key]) for entry in entries]


def area_chart_figure(slice_numbers: Sequence[Any], predicted: Sequence[float | None],
                      true: Sequence[float | None] | None = None) -> Figure:
    """Predicted tumour area per slice as bars (slices with none get no bar), the true area as a line when
    given; x is the slice's position, labelled with its number."""
    figure = new_figure(*CHART_INCHES)
    axes = figure.add_subplot()
    bars = [(position, value) for position, value in enumerate(predicted) if value]
    axes.bar([p for p, _ in bars], [v for _, v in bars], width=0.7, color=PRED_COLOR, alpha=0.85)
    legend = [Patch(color=PRED_COLOR, alpha=0.85, label="predicted area (bars)")]
    if true is not None:
        points = [(position, value) for position, value in enumerate(true) if value is not None]
        line, = axes.plot([p for p, _ in points], [v for _, v in points], color=TRUTH_COLOR, linewidth=2.5,
                          marker="o", markersize=3.5, label="true area (line)")
        legend.append(line)
    values = [v for v in [*predicted, *(true or [])] if v is not None]
    n = len(slice_numbers)
    every = max(1, math.ceil(n / CHART_MAX_LABELS))
    axes.set_xticks(range(0, n, every), [_text(number) for number in slice_numbers[::every]])
    axes.set(xlim=(-0.6, max(n, 1) - 0.4), ylim=(0, max(1.0, max(values, default=0.0) * 1.08)),
             xlabel="slice number", ylabel="tumour area (pixels)")
    axes.xaxis.label.set_color(CHART_INK)
    axes.yaxis.label.set_color(CHART_INK)
    axes.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10], integer=True))
    axes.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axes.tick_params(colors=CHART_AXIS, labelcolor=CHART_INK, labelsize=9)
    axes.grid(axis="y", color=CHART_GRID)
    axes.set_axisbelow(True)
    axes.spines[["top", "right"]].set_visible(False)
    axes.spines[["left", "bottom"]].set_color(CHART_AXIS)
    axes.legend(handles=legend, loc="lower left", bbox_to_anchor=(0, 1), ncols=len(legend), frameon=False,
                labelcolor=CHART_INK)
    return figure


def _area_chart_uri(entries: Sequence[dict], has_truth: bool) -> str:
    figure = area_chart_figure([entry.get("slice") for entry in entries], _pixels(entries, "predicted_pixels"),
                               _pixels(entries, "true_pixels") if has_truth else None)
    return _png_data_uri(render_png(figure))


# -------------------------------------------------------------------------------------------------- pages


def _notes(report: dict) -> list[Any]:
    """The report's notes, then the Dice note unless it is one of them."""
    notes = [note for note in report.get("notes") or [] if not _is_missing(note)]
    dice_note = (report.get("patient") or {}).get("dice_note")
    if not _is_missing(dice_note) and dice_note not in notes:
        notes.append(dice_note)
    return notes


def _warnings(warnings: Any) -> list[Any]:
    """The warnings to show first on a page (none when the report has none: older reports)."""
    return [warning for warning in warnings or [] if not _is_missing(warning)]


def report_html(report: dict, flair: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> str:
    """The self-contained report.html of one patient.

    flair (N, H, W) uint8 at input resolution, pred and truth (N, H, W) binary (truth None without masks),
    both in the order of report['slices']; report is the dict written to report.json.
    """
    flair, pred, truth = _check_arrays(report, flair, pred, truth)
    positions, omitted = montage_positions(pred, truth)
    orientation = len(positions) == 0
    if orientation:
        positions = middle_positions(flair.shape[0])
    tiles = [_tile(report["slices"][i], flair[i], pred[i], None if truth is None else truth[i]) for i in positions]
    synthetic = is_synthetic_report(report)
    return TEMPLATES.get_template("report.html.j2").render(
        title=f"lggseg report: {report.get('case')}" + (" (synthetic case)" if synthetic else ""),
        disclaimer=report.get("disclaimer") or DISCLAIMER,
        report=report, patient=report.get("patient") or {}, model=report.get("model") or {},
        source=report.get("input") or {}, runtime=report.get("runtime") or {}, notes=_notes(report),
        warnings=_warnings(report.get("warnings")), synthetic=synthetic,
        n_slices=flair.shape[0], has_truth=truth is not None,
        tiles=tiles, no_prediction=not pred.any(), orientation=orientation, omitted=omitted, max_tiles=MAX_TILES,
        chart_uri=_area_chart_uri(report["slices"], truth is not None),
    )


def _relative_link(link: Any, case: Any) -> str:
    """A row's report link, percent-encoded (a ':' in a case name then reads as a path, not a URL scheme);
    an absolute URL or path would break the page offline or once the folder moves."""
    text = str(link)
    if "://" in text or text.startswith(("/", "\\")):
        raise ValueError(f"report link of case {case!r} must be a relative path, got {text!r}")
    return urllib.parse.quote(text, safe="/")


def index_html(summary: pd.DataFrame, model: dict, warnings: Sequence[str], title: str = "lggseg predictions") -> str:
    """The self-contained index.html: the warnings, the model and what it was trained on, one row per patient
    linking to its report.html, and the mean volume Dice.

    model is report.json's "model" (the same for every patient), warnings its "warnings"."""
    missing = [column for column in SUMMARY_COLUMNS if column not in summary.columns]
    if missing:
        raise KeyError(f"summary is missing column(s) {missing}; it has {list(summary.columns)}")
    ordered = summary.sort_values("case", kind="stable", key=lambda cases: cases.astype(str))
    rows = [{**row, "href": _relative_link(row["report"], row["case"]), "synthetic": is_synthetic_case(_text(row["case"]))}
            for row in ordered.to_dict("records")]
    scored = pd.to_numeric(ordered["dice"], errors="coerce").dropna()
    return TEMPLATES.get_template("index.html.j2").render(
        title=title, disclaimer=DISCLAIMER, rows=rows, model=model or {}, warnings=_warnings(warnings),
        synthetic=sum(row["synthetic"] for row in rows), scored=len(scored),
        mean_dice=scored.mean() if len(scored) else None,
    )
