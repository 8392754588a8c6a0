"""The architecture comparison: the table, its markdown and chart, written together as reports/comparison.*."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from lggseg.core.atomic import write_bytes
from lggseg.data.provenance import NOT_RECORDED, SYNTHETIC
from lggseg.evaluation.figures.canvas import (
    BUDA_2019_DICE_RANGE,
    MAX_FIGURE_INCHES,
    categorical_colors,
    new_figure,
    render_png,
    require_columns,
)

COMPARISON_METRICS = (  # the columns of reports/comparison.{md,csv}, related columns together
    "val_dice_patient", "dice_patient_mean", "dice_patient_median", "dice_patient_q1", "dice_patient_q3",
    "dice_patient_iqr", "dice_patient_min", "lcc_dice_patient_mean", "dice_slice_mean", "dice_positive_slices_mean",
    "dice_pooled", "iou_patient_mean", "detection_accuracy", "detection_sensitivity", "detection_specificity",
    "detection_auc", "n_patients",
)
COMPARISON_COLUMNS = ("architecture", *COMPARISON_METRICS)
# comparison.md's first table (column, header): what a reader needs first; every other column follows in the
# DETAIL_GROUPS tables, so no table is wider than a page.
HEADLINE_COLUMNS = (
    ("dice_patient_mean", "test Dice per patient, mean (%) [95% CI]"),
    ("val_dice_patient", "validation Dice per patient, mean (%) [95% CI]"),
    ("n_patients", "test patients"),
)
DETAIL_GROUPS = (
    ("Test Dice per patient: spread, and the largest tumor only",
     ("dice_patient_median", "dice_patient_q1", "dice_patient_q3", "dice_patient_iqr", "dice_patient_min",
      "lcc_dice_patient_mean")),
    ("Test Dice per slice and pooled, IoU",
     ("dice_slice_mean", "dice_positive_slices_mean", "dice_pooled", "iou_patient_mean")),
    ("Test tumor-slice detection",
     ("detection_accuracy", "detection_sensitivity", "detection_specificity", "detection_auc")),
)
# Column-name fragments of metrics that live in [0, 1] and read best as percentages.
_PERCENT_METRIC_MARKERS = ("dice", "iou", "jaccard", "accuracy", "sensitivity", "specificity", "precision", "recall")
METRIC_LABELS = {  # metric key (metrics.json, comparison.csv) -> what it means, for legends and the markdown
    "val_dice_patient": "validation Dice per patient (mean)",
    "dice_patient_mean": "test Dice per patient (mean)",
    "dice_patient_median": "test Dice per patient (median)",
    "dice_patient_q1": "test Dice per patient (1st quartile)",
    "dice_patient_q3": "test Dice per patient (3rd quartile)",
    "dice_patient_iqr": "test Dice per patient (inter-quartile range, Q3 - Q1, percentage points)",
    "dice_patient_min": "test Dice per patient (worst patient)",
    "lcc_dice_patient_mean": "test Dice per patient, largest 3-D tumor component only (mean)",
    "dice_slice_mean": "test Dice per slice (mean)",
    "dice_positive_slices_mean": "test Dice per slice, tumor slices only (mean)",
    "dice_pooled": "test Dice pooled over all pixels",
    "iou_patient_mean": "test IoU per patient (mean)",
    "detection_accuracy": "test tumor-slice detection: accuracy",
    "detection_sensitivity": "test tumor-slice detection: sensitivity",
    "detection_specificity": "test tumor-slice detection: specificity",
    "detection_auc": "test tumor-slice detection: ROC AUC",
    "n_patients": "test patients",
}
# The Dice scores drawn as bars in comparison.png, in legend order. Spreads (IQR) and extremes (min) are not
# Dice scores of a model and are left out; the quartiles become a Q1-Q3 error bar on the median bar.
CHART_DICE_METRICS = (
    "val_dice_patient",
    "dice_patient_mean",
    "dice_patient_median",
    "lcc_dice_patient_mean",
    "dice_slice_mean",
    "dice_positive_slices_mean",
    "dice_pooled",
)


def comparison_table(rows: Sequence[dict]) -> pd.DataFrame:
    """One row per architecture, known metrics first (see COMPARISON_COLUMNS), best validation Dice first."""
    if not rows:
        raise ValueError("comparison_table needs at least one row")
    for index, row in enumerate(rows):
        for key in ("architecture", "val_dice_patient"):
            if key not in row:
                raise KeyError(f"comparison row {index} is missing {key!r}; it has {sorted(row)}")
    table = pd.DataFrame(list(rows))
    duplicated = table["architecture"][table["architecture"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"architecture listed more than once: {duplicated}")
    known = [column for column in COMPARISON_COLUMNS if column in table.columns]
    others = [column for column in table.columns if column not in COMPARISON_COLUMNS]
    table = table[known + others]
    table = table.sort_values("val_dice_patient", ascending=False, na_position="last", kind="mergesort")
    return table.reset_index(drop=True)


def _is_percent_metric(column: str) -> bool:
    lowered = column.lower()
    return "auc" not in lowered and any(marker in lowered for marker in _PERCENT_METRIC_MARKERS)


def _format_cell(column: str, value) -> str:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return "n/a"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if "auc" in column.lower():
        return f"{float(value):.3f}"
    if _is_percent_metric(column):
        return f"{100 * float(value):.1f}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.6g}"


def _column_header(column: str) -> str:
    return f"{column} (%)" if _is_percent_metric(column) else column


def _has_interval(table: pd.DataFrame, column: str) -> bool:
    return {f"{column}_ci_low", f"{column}_ci_high"} <= set(table.columns)


def _column_cells(table: pd.DataFrame, column: str) -> list[str]:
    """The formatted cells of one metric column; with `<key>_ci_low` / `_ci_high` columns in ``table`` each cell
    carries its 95% interval, `68.7 [58.0, 78.1]`."""
    cells = [_format_cell(column, value) for value in table[column].tolist()]
    if not _has_interval(table, column):
        return cells
    low, high = ([_format_cell(column, v) for v in table[f"{column}_ci_{end}"].tolist()] for end in ("low", "high"))
    return [v if lo == "n/a" else f"{v} [{lo}, {hi}]" for v, lo, hi in zip(cells, low, high, strict=True)]


def _markdown_table(table: pd.DataFrame, columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """``architecture`` and then ``columns`` of ``table``, numbers right-aligned, headers the keys (as in
    comparison.csv) unless given."""
    columns = ["architecture", *columns]
    cells = pd.DataFrame({column: _column_cells(table, column) for column in columns})
    cells.columns = list(headers) if headers is not None else [_column_header(column) for column in columns]
    numeric = [pd.api.types.is_numeric_dtype(table[column]) for column in columns]
    # tabulate comes with dvc (a hard dependency); disable_numparse keeps "82.0" from turning into "82".
    return cells.to_markdown(
        index=False,
        disable_numparse=True,
        colalign=["right" if is_numeric else "left" for is_numeric in numeric],
    )


def _headline_table(table: pd.DataFrame, champion: str | None) -> str:
    """The numbers to read first: test and validation per-patient Dice with their intervals, test patients, and
    which architecture is the champion."""
    present = [column for column, _ in HEADLINE_COLUMNS if column in table.columns]
    headers = ["architecture", *(header for column, header in HEADLINE_COLUMNS if column in table.columns)]
    shown = table.copy()
    shown["architecture"] = [f"**{name}**" if name == champion else str(name) for name in table["architecture"]]
    if champion is not None:
        shown["champion"] = ["yes (best validation Dice)" if name == champion else "" for name in table["architecture"]]
        present.append("champion")
        headers.append("champion")
    return _markdown_table(shown, present, headers)


def _detail_tables(table: pd.DataFrame) -> list[str]:
    """Every other column, one small table per group (see DETAIL_GROUPS), unknown columns last."""
    headline = {column for column, _ in HEADLINE_COLUMNS}
    intervals = {f"{c}_ci_{end}" for c in table.columns if _has_interval(table, c) for end in ("low", "high")}
    grouped = {column for _, columns in DETAIL_GROUPS for column in columns}
    others = [c for c in table.columns if c not in headline | intervals | grouped | {"architecture"}]
    lines = []
    for title, columns in (*DETAIL_GROUPS, ("Other columns", tuple(others))):
        present = [column for column in columns if column in table.columns]
        if present:
            lines += [f"### {title}", "", _markdown_table(table, present), ""]
    return lines


def _column_glossary(table: pd.DataFrame) -> list[str]:
    """One markdown bullet per labelled column: the key (as in comparison.csv) and what it measures."""
    return [f"- `{column}`: {METRIC_LABELS[column]}" for column in table.columns if column in METRIC_LABELS]


def describe_data_sources(data_sources: Mapping[str, str]) -> str:
    """`synthetic`, or `unet: kaggle, fpn: synthetic` when the architectures were trained on different data."""
    sources = sorted(set(data_sources.values()))
    if len(sources) == 1:
        return sources[0]
    return ", ".join(f"{arch}: {source}" for arch, source in data_sources.items())


def _is_synthetic(data_sources: Mapping[str, str]) -> bool:
    return SYNTHETIC in set(data_sources.values())


def _data_paragraph(data_sources: Mapping[str, str]) -> str:
    """Which data every number on the page comes from; on synthetic data, that no published number applies."""
    described = describe_data_sources(data_sources)
    sentence = f"Data: **{described}** (the `data_source` each model was trained and tested on)."
    if len(set(data_sources.values())) > 1:
        sentence += " The architectures were trained on different data: their rows are not comparable."
    if _is_synthetic(data_sources):
        sentence += (" Synthetic data is generated (the demo's), not MRI: these numbers check that the pipeline runs "
                     "and say nothing about real gliomas; the Buda et al. 2019 figures below are for real scans.")
    return sentence


def _comparison_markdown(table: pd.DataFrame, champion: str | None, chart_name: str, paired: Sequence[dict] = (),
                         data_sources: Mapping[str, str] | None = None) -> str:
    data_sources = data_sources or {}
    if champion is None:
        champion_sentence = "No champion was selected."
    else:
        champion_sentence = f"Champion: **{champion}** (marked in the table)."
    lines = [
        "# Architecture comparison",
        "",
        _data_paragraph(data_sources) if data_sources else f"Data: **{NOT_RECORDED}**.",
        "",
        _headline_table(table, champion),
        "",
        f"{champion_sentence} The champion is chosen by per-patient Dice on the VALIDATION set "
        "(`val_dice_patient`), never by test metrics; the test columns are reported for information only.",
        "",
        "Brackets: 95% bootstrap confidence intervals over patients (BCa, 2000 resamples of whole patients, "
        "seeded; `<metric>_ci_low` / `_ci_high` in `comparison.csv`); the error bars in the chart are the same "
        "intervals. With few test patients they are wide: a difference inside them is not a finding.",
        "",
        *(["## Is the difference real? (the same test patients, paired)", "",
           *[f"- {p['verdict']}" for p in paired], ""] if paired else []),
        "## All metrics (keys as in `comparison.csv`)",
        "",
        *_detail_tables(table),
        *_column_glossary(table),
        "",
        "Headline metric: per-patient 3-D volume Dice (`dice_patient_mean`): Dice over all slices of a patient, "
        "averaged over patients, as in Buda et al. 2019 (Computers in Biology and Medicine 109:218-225), "
        "who report 82-84% mean with U-Net on the real scans; two expert human readers agree at 84 ± 2%.",
        "",
        "Dice, IoU and detection accuracy/sensitivity/specificity are percentages with one decimal; "
        "AUC is shown with three decimals. Raw values are in `comparison.csv`.",
        "",
        f"![Dice metrics per architecture]({chart_name})",
        "",
    ]
    return "\n".join(lines)


def comparison_chart_series(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(readable label, column) of each Dice score in ``table`` that comparison.png draws as bars, in order."""
    series = [(METRIC_LABELS[column], column) for column in CHART_DICE_METRICS if column in table.columns]
    if not series:
        raise ValueError(
            f"comparison table has none of the Dice columns {list(CHART_DICE_METRICS)} to chart; "
            f"it has {list(table.columns)}"
        )
    return series


CI_LEGEND = "95% bootstrap CI over patients (as in comparison.md)"


def comparison_chart_figure(table: pd.DataFrame, champion: str | None,
                            data_sources: Mapping[str, str] | None = None) -> Figure:
    """Grouped bars: one group per architecture, one bar per Dice score (see comparison_chart_series).

    The validation bar is hatched (it picks the champion); the others are test metrics. A bar whose metric has
    `<key>_ci_low` / `_ci_high` columns carries that 95% bootstrap interval as its error bar (the interval
    comparison.md reports). The title names the data (``data_sources``: architecture -> data source); the
    Buda et al. 2019 band, measured on real MRI, is left off when any model was trained on synthetic data.
    """
    data_sources = data_sources or {}
    series = comparison_chart_series(table)
    architectures = table["architecture"].astype(str).tolist()
    n_bars = len(series)
    group_width = 0.84
    bar_width = group_width / n_bars
    positions = np.arange(len(architectures))
    figure = new_figure(min(MAX_FIGURE_INCHES, max(8.0, 1.6 + len(architectures) * (0.36 * n_bars + 0.5))), 6.4)
    ax = figure.subplots()
    synthetic = _is_synthetic(data_sources)
    if not synthetic:
        low, high = BUDA_2019_DICE_RANGE
        ax.axhspan(
            low, high, color="0.86", zorder=0,
            label=f"Buda et al. 2019, U-Net on real MRI: test Dice per patient {100 * low:.0f}-{100 * high:.0f}%",
        )
    palette = categorical_colors(n_bars)
    ci_label = CI_LEGEND
    for index, (label, column) in enumerate(series):
        offsets = positions - group_width / 2 + (index + 0.5) * bar_width
        values = table[column].astype(float).to_numpy()
        is_validation = column.startswith("val_")
        ax.bar(
            offsets, np.nan_to_num(values, nan=0.0), width=bar_width * 0.92, color=palette[index],
            hatch="///" if is_validation else None, edgecolor="white" if is_validation else None,
            linewidth=0, label=label, zorder=2,
        )
        label_heights = values
        if _has_interval(table, column):
            ci_low = table[f"{column}_ci_low"].astype(float).to_numpy()
            ci_high = table[f"{column}_ci_high"].astype(float).to_numpy()
            known = np.isfinite(values) & np.isfinite(ci_low) & np.isfinite(ci_high)
            if known.any():
                ax.errorbar(
                    offsets[known], values[known], yerr=[values[known] - ci_low[known], ci_high[known] - values[known]],
                    fmt="none", ecolor="black", elinewidth=1.0, capsize=3, zorder=3, label=ci_label,
                )
                ci_label = "_nolegend_"  # one legend entry for all the interval bars
            label_heights = np.where(known, np.fmax(values, ci_high), values)  # the value sits above the whisker
        for offset, value, height in zip(offsets, values, label_heights, strict=True):
            text = "n/a" if np.isnan(value) else f"{100 * value:.1f}"
            ax.text(
                offset, 0.012 if np.isnan(value) else height + 0.012, text, rotation=90, ha="center",
                va="bottom", fontsize=7, color="0.25", zorder=4,
            )
    tick_labels = [f"{name}\n(champion)" if name == champion else name for name in architectures]
    ax.set_xticks(positions, tick_labels)
    for tick_label, name in zip(ax.get_xticklabels(), architectures, strict=True):
        if name == champion:
            tick_label.set_fontweight("bold")
    ax.set_xlim(-0.6, len(architectures) - 0.4)
    ax.set_ylim(0, 1.12)  # headroom above 100% for the value labels
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_ylabel("Dice")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3, zorder=1)
    ax.set_axisbelow(True)
    data = describe_data_sources(data_sources) if data_sources else NOT_RECORDED
    figure.suptitle(f"Dice per architecture, data: {data} (champion chosen on validation Dice)", fontsize=12)
    if synthetic:
        ax.set_title("SYNTHETIC demo data, not MRI: these scores show that the pipeline runs, not how it does\n"
                     "on real gliomas; the published range (Buda et al. 2019, real scans) does not apply",
                     fontsize=9, color="#b00020")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] == CI_LEGEND)  # the interval bars' entry last
    figure.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncols=2,
                  fontsize=8, frameon=False)
    return figure


def write_comparison(table: pd.DataFrame, out_dir: Path, *, champion: str | None, paired: Sequence[dict] = (),
                     data_sources: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write comparison.md, comparison.csv and comparison.png into ``out_dir``; returns their paths.
    ``data_sources`` (architecture -> the data source its model was trained on) is named on the page and chart.

    Everything is rendered before anything is written, so a bad table leaves the previous files untouched.
    """
    require_columns(table, ["architecture", "val_dice_patient"], "comparison table")
    if table.empty:
        raise ValueError("comparison table has no rows")
    if champion is not None and champion not in set(table["architecture"].astype(str)):
        raise ValueError(f"champion {champion!r} is not in the table's architectures {list(table['architecture'])}")
    out_dir = Path(out_dir)
    chart_path = out_dir / "comparison.png"
    chart_png = render_png(comparison_chart_figure(table, champion, data_sources))
    markdown = _comparison_markdown(table, champion, chart_path.name, paired, data_sources)
    csv_text = table.to_csv(index=False)
    return {
        "csv": write_bytes(out_dir / "comparison.csv", csv_text.encode("utf-8")),
        "chart": write_bytes(chart_path, chart_png),
        "markdown": write_bytes(out_dir / "comparison.md", markdown.encode("utf-8")),
    }
