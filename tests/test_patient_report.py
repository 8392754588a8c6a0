"""report.html and index.html of `lggseg predict`: self-contained, escaped, one tile per tumour slice.

Small synthetic volumes (6 slices of 64 x 64 with discs as tumours). The browser test opens a report in
headless Chromium and checks that it loads nothing from anywhere and that every image decodes; its
screenshot goes to $LGGSEG_TEST_ARTIFACTS (else the test's tmp_path)."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import cv2
import jinja2
import numpy as np
import pandas as pd
import pytest

from lggseg.evaluation.figures.canvas import PRED_COLOR, TRUTH_COLOR
from lggseg.prediction.report import (
    DISCLAIMER,
    MAX_TILES,
    TEMPLATES,
    area_chart_figure,
    index_html,
    middle_positions,
    montage_positions,
    overlay_tile,
    report_html,
)
from servers import BROWSER_ARGS, chromium_executable, skip_or_fail

SIZE = 64
PRED_SLICES = (1, 2)  # positions with a predicted disc
TRUTH_SLICES = (2, 3)  # positions with a true disc: position 3 is a miss, position 1 a false positive
TILE = re.compile(r'<figure class="tile">')
EXTERNAL = {
    "http": re.compile(r"https?:", re.IGNORECASE),
    "protocol-relative": re.compile(r"""(?:src|href)\s*=\s*["']?//""", re.IGNORECASE),
    "non-data src": re.compile(r"""\bsrc\s*=\s*(?!["']?data:)""", re.IGNORECASE),
    "link": re.compile(r"<link\b", re.IGNORECASE),
    "script src": re.compile(r"<script\b[^>]*\bsrc", re.IGNORECASE),
    "css url/import": re.compile(r"url\(\s*['\"]?(?!data:)|@import", re.IGNORECASE),
}


def disc(radius: float, center: tuple[int, int] = (30, 34)) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).astype(np.uint8)


def volume(positions: tuple[int, ...], n: int = 6, radius: float = 8) -> np.ndarray:
    mask = np.zeros((n, SIZE, SIZE), np.uint8)
    for position in positions:
        mask[position] = disc(radius)
    return mask


def flair_volume(n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (disc(26, (32, 32)) * rng.integers(60, 140, (n, SIZE, SIZE))).astype(np.uint8)


def slice_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum() + truth.sum())
    return 1.0 if total == 0 else 2 * int((pred & truth).sum()) / total


def make_report(pred: np.ndarray, truth: np.ndarray | None, case: str = "TCGA_CS_4941_19960909") -> dict:
    """A report dict shaped like `lggseg predict`'s report.json, numbers consistent with the masks."""
    n = pred.shape[0]
    areas = pred.reshape(n, -1).sum(axis=1)
    slices = [{"slice": i + 1, "image": f"{case}_{i + 1}.tif", "sha256": "0" * 64, "mask": f"{case}_{i + 1}_mask.tif",
               "tumor_probability": 0.9 if areas[i] else 0.02, "predicted_pixels": int(areas[i]),
               "true_pixels": None if truth is None else int(truth[i].sum()),
               "dice": None if truth is None else slice_dice(pred[i], truth[i])} for i in range(n)]
    return {
        "lggseg_version": "0.1.0", "case": case, "created": "2026-11-25T20:30:00+00:00",
        "model": {"uri": "models:/lgg-segmentation@champion", "registered_model": "lgg-segmentation", "version": "3",
                  "architecture": "unet", "encoder": "resnet34", "size": 256, "channels": "all", "threshold": 0.5,
                  "largest_component": True, "run_id": "abc123"},
        "runtime": {"device": "cpu", "precision": "bf16", "seconds": 1.7},
        "input": {"path": f"/data/kaggle_3m/{case}", "slices": n, "image_size": [SIZE, SIZE], "grayscale": False,
                  "spacing_mm": None},
        "patient": {"tumor_positive_slices": int((areas > 0).sum()), "volume_voxels": int(areas.sum()),
                    "volume_mm3": None, "largest_tumor_slice": int(areas.argmax()) + 1 if areas.any() else None,
                    "largest_tumor_pixels": int(areas.max()), "max_tumor_probability": 0.9,
                    "dice": None if truth is None else 0.5,
                    "true_tumor_positive_slices": None if truth is None else int(truth.any(axis=(1, 2)).sum()),
                    "dice_note": None},
        "slices": slices,
        "notes": ["grayscale input read as FLAIR"],
        "disclaimer": DISCLAIMER,
    }


def external_references(document: str) -> dict[str, list[str]]:
    return {name: pattern.findall(document) for name, pattern in EXTERNAL.items() if pattern.search(document)}


def chart_uri(document: str) -> str:
    return re.search(r'<img src="([^"]+)" class="chart"', document).group(1)


def tile_captions(document: str) -> list[str]:
    return re.findall(r"<figcaption><b>(slice \d+)</b>", document)


def decode_data_uri(uri: str) -> np.ndarray:
    payload = uri.split("base64,", 1)[1]
    return cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR)


def color_pixels(bgr: np.ndarray, hex_color: str) -> int:
    rgb = [int(hex_color[i : i + 2], 16) for i in (1, 3, 5)]
    return int((bgr[..., ::-1] == rgb).all(axis=-1).sum())


@pytest.fixture
def with_truth() -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    pred, truth = volume(PRED_SLICES), volume(TRUTH_SLICES)
    return make_report(pred, truth), flair_volume(), pred, truth


# ------------------------------------------------------------------------------------------- report.html


def test_report_is_self_contained(with_truth):
    document = report_html(*with_truth)
    assert external_references(document) == {}
    images = re.findall(r'<img src="([^"]+)"', document)
    assert images and all(uri.startswith("data:image/png;base64,") for uri in images)
    assert "<script" not in document.lower()


def test_report_escapes_strings_from_the_report():
    case = 'a<b>&"c'
    pred = volume(PRED_SLICES)
    report = make_report(pred, None, case=case)
    report["notes"] = ["<script>alert(1)</script>"]
    document = report_html(report, flair_volume(), pred, None)
    assert case not in document and "<script>" not in document
    assert "a&lt;b&gt;&amp;&#34;c" in document
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document


def test_one_tile_per_slice_with_predicted_or_true_tumour(with_truth):
    report, flair, pred, truth = with_truth
    document = report_html(report, flair, pred, truth)
    positive = sorted(set(PRED_SLICES) | set(TRUTH_SLICES))
    assert len(TILE.findall(document)) == len(positive)
    assert tile_captions(document) == [f"slice {p + 1}" for p in positive]
    assert document.count('class="flag miss"') == 1  # truth only: the model missed it
    assert document.count('class="flag extra"') == 1  # prediction only
    assert "ground truth (given masks)" in document
    assert "Dice vs ground truth" in document and "0.500" in document


def test_tiles_draw_both_outlines_in_their_colours(with_truth):
    _, flair, pred, truth = with_truth
    both = overlay_tile(flair[2], pred[2].astype(bool), truth[2].astype(bool))[..., ::-1]  # as BGR
    pred_only = overlay_tile(flair[1], pred[1].astype(bool), None)[..., ::-1]
    assert both.shape == (256, 256, 3)
    assert color_pixels(both, PRED_COLOR) > 50 and color_pixels(both, TRUTH_COLOR) > 50
    assert color_pixels(pred_only, PRED_COLOR) > 50 and color_pixels(pred_only, TRUTH_COLOR) == 0
    uri = re.findall(r'<img src="([^"]+)"', report_html(*with_truth))[1]  # slice 3: both masks
    assert color_pixels(decode_data_uri(uri), TRUTH_COLOR) > 50


def test_no_tumour_shows_middle_slices():
    pred = np.zeros((6, SIZE, SIZE), np.uint8)
    document = report_html(make_report(pred, None), flair_volume(), pred, None)
    assert "No tumour predicted" in document
    assert tile_captions(document) == [f"slice {p + 1}" for p in middle_positions(6)]
    assert len(middle_positions(6)) == 3 and list(middle_positions(2)) == [0, 1]
    assert external_references(document) == {}


def test_without_ground_truth_there_is_no_dice_and_no_truth_legend():
    pred = volume(PRED_SLICES)
    document = report_html(make_report(pred, None), flair_volume(), pred, None)
    assert len(TILE.findall(document)) == len(PRED_SLICES)
    assert "ground truth (given masks)" not in document and "swatch truth" not in document
    assert "<th>Dice</th>" not in document and "<th>true px</th>" not in document
    assert "Dice " not in " ".join(re.findall(r"<figcaption>.*?</figcaption>", document))
    assert "true area (line)" not in document  # no true-area line in the chart
    assert color_pixels(decode_data_uri(chart_uri(document)), TRUTH_COLOR) == 0
    assert "no ground-truth masks" in document


def test_area_chart_has_one_bar_per_predicted_slice_and_a_truth_line(with_truth):
    slices = with_truth[0]["slices"]
    figure = area_chart_figure([s["slice"] for s in slices], [s["predicted_pixels"] for s in slices],
                               [s["true_pixels"] for s in slices])
    axes = figure.axes[0]
    assert len(axes.patches) == len(PRED_SLICES)
    assert [line.get_label() for line in axes.lines] == ["true area (line)"]
    assert axes.get_xlabel() == "slice number" and axes.get_ylabel() == "tumour area (pixels)"
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["predicted area (bars)", "true area (line)"]
    document = report_html(*with_truth)
    assert "predicted area (bars) and true area (line)" in document  # the chart's alt text
    assert color_pixels(decode_data_uri(chart_uri(document)), TRUTH_COLOR) > 0


def test_montage_is_capped_and_says_how_many_are_left_out():
    n = MAX_TILES + 5
    pred = volume(tuple(range(n)), n=n)
    pred[:5] = 0  # the 5 smallest go: make them tiny
    pred[:5, 30, 30] = 1
    positions, omitted = montage_positions(pred.astype(bool), None)
    assert len(positions) == MAX_TILES and omitted == 5 and positions[0] == 5
    document = report_html(make_report(pred, None), flair_volume(n), pred, None)
    assert len(TILE.findall(document)) == MAX_TILES
    assert "5 more tumour-positive slices are not shown" in document


def test_report_shows_null_numbers_as_na(with_truth):
    document = report_html(*with_truth)
    assert "mm³ n/a" in document  # spacing unknown
    assert "unknown" in document


@pytest.mark.parametrize("bad", ["slices", "pred", "truth", "flair"])
def test_report_rejects_arrays_that_do_not_match(with_truth, bad):
    report, flair, pred, truth = with_truth
    if bad == "slices":
        report = {**report, "slices": report["slices"][:-1]}
    elif bad == "pred":
        pred = pred[:, :32]
    elif bad == "truth":
        truth = truth * 2
    else:
        flair = flair.astype(np.float32)
    with pytest.raises(ValueError):
        report_html(report, flair, pred, truth)


def test_every_string_from_the_scan_is_escaped(with_truth):
    report, flair, pred, truth = with_truth
    evil = '<evil x="1">'
    report = {**report, "case": evil, "created": evil, "lggseg_version": evil, "notes": [evil], "disclaimer": evil,
              "model": {**report["model"], **{k: evil for k in ("uri", "registered_model", "version", "architecture",
                                                                 "encoder", "channels", "run_id")}},
              "runtime": {**report["runtime"], "device": evil, "precision": evil},
              "input": {**report["input"], "path": evil, "image_size": [evil, evil]},
              "patient": {**report["patient"], "dice": None, "dice_note": evil + "note"},
              "slices": [{**entry, "image": evil, "slice": evil} for entry in report["slices"]]}
    document = report_html(report, flair, pred, truth)
    assert "<evil" not in document
    assert document.count("&lt;evil x=&#34;1&#34;&gt;") > 30
    index = index_html(summary_frame().assign(case=evil, report="x/report.html"), title=evil)
    assert "<evil" not in index and index.count("&lt;evil") == 5  # title twice, three rows


def test_pages_inline_report_css_and_reference_nothing_outside(with_truth):
    css = TEMPLATES.loader.get_source(TEMPLATES, "report.css")[0]
    for document in (report_html(*with_truth), index_html(summary_frame())):
        assert css in document and f"--pred: {PRED_COLOR}; --truth: {TRUTH_COLOR};" in document
        assert external_references(document) == {}
        assert "<script" not in document.lower()


def test_a_template_value_that_is_not_given_fails_loudly():
    with pytest.raises(jinja2.UndefinedError, match="rows"):
        TEMPLATES.get_template("index.html.j2").render(title="t", disclaimer="d", scored=0, mean_dice=None)


# -------------------------------------------------------------------------------------------- index.html


def summary_frame() -> pd.DataFrame:
    return pd.DataFrame([
        {"case": "TCGA_B", "slices": 23, "tumor_positive_slices": 8, "volume_voxels": 12345, "volume_mm3": np.nan,
         "largest_tumor_slice": 14, "max_tumor_probability": 0.99, "dice": 0.8, "report": "TCGA_B/report.html"},
        {"case": 'a<b>&"c', "slices": 20, "tumor_positive_slices": 0, "volume_voxels": 0, "volume_mm3": 0.0,
         "largest_tumor_slice": np.nan, "max_tumor_probability": 0.02, "dice": np.nan,
         "report": 'a<b>&"c/report.html'},
        {"case": "TCGA_A", "slices": 20, "tumor_positive_slices": 3, "volume_voxels": 400, "volume_mm3": 312.5,
         "largest_tumor_slice": 9, "max_tumor_probability": 0.7, "dice": 0.6, "report": "TCGA_A/report.html"},
    ])


def test_index_links_every_case_to_its_report():
    document = index_html(summary_frame())
    links = re.findall(r'<a href="([^"]+)">([^<]*)</a>', document)
    assert links == [("TCGA_A/report.html", "TCGA_A"), ("TCGA_B/report.html", "TCGA_B"),
                     ("a%3Cb%3E%26%22c/report.html", "a&lt;b&gt;&amp;&#34;c")]  # sorted by case
    assert "0.700" in document and "2 of 3 patients" in document  # mean Dice over those that have one
    assert DISCLAIMER.replace("'", "&#39;") in document
    assert external_references(document) == {}


def test_index_rejects_absolute_links_and_missing_columns():
    summary = summary_frame()
    summary.loc[0, "report"] = "https://example.org/report.html"
    with pytest.raises(ValueError, match="relative"):
        index_html(summary)
    with pytest.raises(KeyError, match="dice"):
        index_html(summary_frame().drop(columns="dice"))


def test_index_link_with_a_colon_stays_a_relative_path():
    summary = summary_frame().assign(case="x:y", report="http:y/report.html")
    document = index_html(summary.head(1))
    assert '<a href="http%3Ay/report.html">' in document and external_references(document) == {}


def test_index_without_any_dice():
    summary = summary_frame().assign(dice=np.nan)
    assert "Mean Dice: n/a" in index_html(summary, title="run <1>")
    assert "<title>run &lt;1&gt;</title>" in index_html(summary, title="run <1>")


# ----------------------------------------------------------------------------------------------- browser


@pytest.mark.slow
def test_report_opens_offline_in_chromium(with_truth, tmp_path):
    """Headless Chromium loads the report: nothing but file: and data: requests, every image decoded."""
    if chromium_executable() is None:
        skip_or_fail("Chromium is not installed (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed: pip install -e '.[dev]'")
    report_path = tmp_path / "report.html"
    report_path.write_text(report_html(*with_truth), encoding="utf-8")
    artifacts = Path(os.environ.get("LGGSEG_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_executable(), args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report_path.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images, i => [i.complete, i.naturalWidth])")
            disclaimer_visible = page.get_by_text("Research tool, not a diagnostic device:").is_visible()
            page.screenshot(path=artifacts / "patient-report.png", full_page=True)
        finally:
            browser.close()
    print(f"screenshot: {artifacts / 'patient-report.png'}")
    assert report_path.as_uri() in requests
    assert [url for url in requests if not url.startswith(("data:", "file:"))] == []
    assert len(images) == len(set(PRED_SLICES) | set(TRUTH_SLICES)) + 1  # the tiles and the area chart
    assert all(complete and width > 0 for complete, width in images), images
    assert disclaimer_visible
