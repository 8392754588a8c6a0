"""What every figure shares: the overlay colours, the reference band of Buda et al. 2019, the categorical
palette, a fresh figure, its PNG rendering and atomic save, and the check that an input table has its columns.

Every writer renders in memory first and then replaces its target atomically (temp file in the same folder,
then ``os.replace``), so a failed run never leaves a half-written PNG or table behind for DVC to cache.
Figures are plain ``matplotlib.figure.Figure`` objects on an Agg canvas: no pyplot global state, safe to call
from threads, nothing left open afterwards.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lggseg.core.atomic import write_bytes

TRUTH_COLOR = "#00e05a"  # green: ground truth (radiologist)
PRED_COLOR = "#ff2bd6"  # magenta: model; green/magenta stays distinct for red-green colour blindness
DPI = 120
# 1200 px at DPI: dvc plots' page shows image plots unscaled, and a 1400 px browser window must hold them whole.
MAX_FIGURE_INCHES = 10.0
BUDA_2019_DICE_RANGE = (0.82, 0.84)  # mean per-patient Dice of U-Net in Buda et al. 2019


def new_figure(width: float, height: float) -> Figure:
    """An empty constrained-layout figure on its own Agg canvas (no pyplot), size in inches (the figures of
    reports/ keep ``width`` <= MAX_FIGURE_INCHES)."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def render_png(figure: Figure) -> bytes:
    """The figure as PNG bytes at DPI, rendered in memory."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor=figure.get_facecolor())
    return buffer.getvalue()


def save_figure(figure: Figure, out_path: Path) -> Path:
    """Render the figure, then replace ``out_path`` atomically; returns the path."""
    return write_bytes(out_path, render_png(figure))


def require_columns(frame: pd.DataFrame, required: Sequence[str], what: str) -> None:
    """Raise KeyError naming ``what`` and the missing columns when ``frame`` lacks any of ``required``."""
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise KeyError(f"{what} is missing column(s) {missing}; it has {list(frame.columns)}")


def categorical_colors(count: int) -> list:
    """``count`` distinct colours (tab10, or tab20 beyond ten; cycling beyond twenty)."""
    cmap = colormaps["tab10"] if count <= 10 else colormaps["tab20"]
    return [cmap(index % cmap.N) for index in range(count)]
