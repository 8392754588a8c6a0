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
TILE = re.compile(r'<figure class="tile"')
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


TRAINED_ON = {"data_source": "kaggle", "patients": {"train": 78, "val": 16, "test": 16},
              "slices": {"train": 2735, "val": 568}, "data_fingerprint": "1a2b3c4d5e6f7a8b9c0d", "input_size": 256,
              "channels": "all"}  # report["model"]["trained_on"] as predict writes it


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
                  "largest_component": True, "run_id": "abc123", "trained_on": TRAINED_ON},
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
        "warnings": [],
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
    assert "Volume Dice (3-D) vs truth" in document and "0.500" in document


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
    index = index_html(summary_frame().assign(case=evil, report="x/report.html"), MODEL, [], title=evil)
    assert "<evil" not in index and index.count("&lt;evil") == 5  # title twice, three rows


def test_pages_inline_report_css_and_reference_nothing_outside(with_truth):
    css = TEMPLATES.loader.get_source(TEMPLATES, "report.css")[0]
    for document in (report_html(*with_truth), index_html(summary_frame(), MODEL, [])):
        assert css in document and f"--pred: {PRED_COLOR}; --truth: {TRUTH_COLOR};" in document
        assert external_references(document) == {}
        assert "<script" not in document.lower()


def test_a_template_value_that_is_not_given_fails_loudly():
    with pytest.raises(jinja2.UndefinedError, match="rows"):
        TEMPLATES.get_template("index.html.j2").render(title="t", disclaimer="d", scored=0, mean_dice=None,
                                                       model=MODEL, warnings=[], synthetic=0)


# -------------------------------------------------------------------------------------------- index.html


MODEL = make_report(volume(PRED_SLICES), None)["model"]


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
    document = index_html(summary_frame(), MODEL, [])
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
        index_html(summary, MODEL, [])
    with pytest.raises(KeyError, match="dice"):
        index_html(summary_frame().drop(columns="dice"), MODEL, [])


def test_index_link_with_a_colon_stays_a_relative_path():
    summary = summary_frame().assign(case="x:y", report="http:y/report.html")
    document = index_html(summary.head(1), MODEL, [])
    assert '<a href="http%3Ay/report.html">' in document and external_references(document) == {}


def test_index_without_any_dice():
    summary = summary_frame().assign(dice=np.nan)
    assert "Mean Dice: n/a" in index_html(summary, MODEL, [], title="run <1>")
    assert "<title>run &lt;1&gt;</title>" in index_html(summary, MODEL, [], title="run <1>")


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
            tile = page.locator("figure.tile").first
            width_in_grid = tile.bounding_box()["width"]
            tile.locator("a.zoom").click()  # opens the tile at full size, no script
            width_open = tile.bounding_box()["width"]
            close_visible = tile.locator("a.unzoom").is_visible()
            tile.locator("a.unzoom").click()
            width_closed = tile.bounding_box()["width"]
        finally:
            browser.close()
    print(f"screenshot: {artifacts / 'patient-report.png'}")
    assert report_path.as_uri() in requests
    assert [url for url in requests if not url.startswith(("data:", "file:"))] == []
    assert len(images) == len(set(PRED_SLICES) | set(TRUTH_SLICES)) + 1  # the tiles and the area chart
    assert all(complete and width > 0 for complete, width in images), images
    assert disclaimer_visible
    assert width_in_grid < 400 and width_open > 2 * width_in_grid and close_visible
    assert width_closed == width_in_grid


# ------------------------------------------------------------------------------ what the page explains


def page_body(document: str) -> str:
    """The page without its inlined CSS (whose selectors name every class)."""
    return document.split("</style>", 1)[1]


def caption_texts(document: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", caption) for caption in re.findall(r"<figcaption>(.*?)</figcaption>", document, re.S)]


def test_outlines_leave_a_small_lesion_visible():
    """A 3 x 3 pixel lesion found exactly: both outlines are drawn, around it, and none of its own pixels is painted."""
    lesion = np.zeros((SIZE, SIZE), bool)
    lesion[30:33, 40:43] = True
    image = flair_volume(1)[0]
    tile = overlay_tile(image, lesion, lesion)
    grey = overlay_tile(image, np.zeros_like(lesion), None)
    inside = cv2.resize(lesion.astype(np.float32), tile.shape[1::-1], interpolation=cv2.INTER_LINEAR) >= 0.5
    assert inside.sum() > 50  # 3 px at 4x
    assert np.array_equal(tile[inside], grey[inside])  # the lesion as the scan shows it
    as_bgr = tile[..., ::-1]
    assert color_pixels(as_bgr, PRED_COLOR) > 0 and color_pixels(as_bgr, TRUTH_COLOR) > 0


def test_a_tile_opens_at_full_size(with_truth):
    document = report_html(*with_truth)
    ids = re.findall(r'<figure class="tile" id="(tile-\d+)"><a class="zoom" href="#(tile-\d+)"', document)
    assert len(ids) == len(TILE.findall(document)) and all(own == target for own, target in ids)
    assert len({own for own, _ in ids}) == len(ids)
    assert "figure.tile:target" in document and "--zoom: 768px" in document


def test_peak_output_is_named_and_said_not_to_be_a_probability(with_truth):
    document = report_html(*with_truth)
    assert "prob." not in document and "Max tumour probability" not in document
    assert "Peak network output" in document and "<th>peak output</th>" in document
    assert "highest per-pixel sigmoid output" in document and "not a calibrated probability" in document
    assert not any("0.900" in caption for caption in caption_texts(document))  # no bare number on the tiles


def test_empty_slices_are_marked_not_scored_one(with_truth):
    report, flair, pred, truth = with_truth
    document = report_html(report, flair, pred, truth)
    empty = [i for i in range(6) if not pred[i].any() and not truth[i].any()]
    assert len(empty) == 3 and all(report["slices"][i]["dice"] == 1.0 for i in empty)
    rows = re.findall(r"<tr[^>]*><td>(\d+)</td>.*?</tr>", document, re.S)
    cells = {int(n): row for n, row in zip(rows, re.findall(r"<tr[^>]*><td>\d+</td>.*?</tr>", document, re.S))}
    for i in range(6):
        assert ('class="empty"' in cells[i + 1]) == (i in empty), cells[i + 1]
    assert "1.000" not in "".join(cells[i + 1] for i in empty)
    assert "empty slice (no tumour in truth or" in document  # the legend says what the mark means


def test_empty_tiles_say_so_in_their_caption():
    nothing = np.zeros((6, SIZE, SIZE), np.uint8)
    document = report_html(make_report(nothing, nothing), flair_volume(), nothing, nothing)
    captions = caption_texts(document)
    assert len(captions) == 3 and all("Dice &ndash; (empty)" in caption for caption in captions)
    assert "empty: no tumour in truth or prediction on any slice" in document  # the volume Dice card


def test_volume_dice_says_it_pools_all_slices(with_truth):
    document = report_html(*with_truth)
    assert "Volume Dice (3-D) vs truth" in document and "all 6 slices pooled into one volume" in document
    assert "<th>slice Dice</th>" in document


def test_a_synthetic_case_says_so_in_its_header():
    pred = volume(PRED_SLICES)
    synthetic = report_html(make_report(pred, None, case="SYNTH_CS_0A1B_20000101"), flair_volume(), pred, None)
    header = re.search(r"<header>.*?</header>", synthetic, re.S).group(0)
    assert "Synthetic case: generated by lggseg synth" in header
    assert "<title>lggseg report: SYNTH_CS_0A1B_20000101 (synthetic case)</title>" in synthetic
    recorded = make_report(pred, None, case="case-7")
    recorded["input"]["data_source"] = "synthetic"  # a renamed synthetic scan, recorded as such
    assert "Synthetic case" in report_html(recorded, flair_volume(), pred, None)
    real = report_html(make_report(pred, None), flair_volume(), pred, None)
    assert "Synthetic case" not in real and "(synthetic case)" not in real


def test_model_section_says_what_the_model_was_trained_on(with_truth):
    report, flair, pred, truth = with_truth
    section = re.search(r'<section aria-label="model">.*?</section>', report_html(*with_truth), re.S).group(0)
    for text in ("lgg-segmentation version 3", "unet / resnet34 encoder", "kaggle", "78 train / 16 val / 16 test",
                 "2,735 train / 568 val", "256 px, channels: all", "<code>1a2b3c4d5e6f</code>"):
        assert text in section, text
    assert "1a2b3c4d5e6f7" not in section and "never saw a real MRI" not in section
    synthetic = {**report, "model": {**report["model"], "trained_on": {**TRAINED_ON, "data_source": "synthetic",
                                                                       "patients": {"train": 17, "val": 3, "test": None}}}}
    document = report_html(synthetic, flair, pred, truth)
    assert "the model never saw a real MRI" in document and "17 train / 3 val / n/a test" in document
    older = {**report, "model": {**report["model"], "trained_on": None}}
    assert "not recorded (a model from an older lggseg" in report_html(older, flair, pred, truth)
    local = {**report, "model": {**report["model"], "registered_model": None, "version": None, "uri": "models/unet"}}
    assert "local checkpoint <code>models/unet</code>" in report_html(local, flair, pred, truth)


def test_warnings_come_first_in_a_box(with_truth):
    report, flair, pred, truth = with_truth
    assert 'class="warnings"' not in page_body(report_html(*with_truth))
    warned = {**report, "warnings": ["trained on <SYNTHETIC> data only", "second"]}
    document = report_html(warned, flair, pred, truth)
    box = re.search(r'<section class="warnings" role="alert"[^>]*>(.*?)</section>', document, re.S)
    assert box and document.index(box.group(0)) < document.index("<header>")
    assert re.findall(r"<li>(.*?)</li>", box.group(1)) == ["trained on &lt;SYNTHETIC&gt; data only", "second"]


def test_index_shows_the_model_the_warnings_and_synthetic_cases():
    summary = summary_frame().assign(case=["SYNTH_CS_0A1B_20000101", "SYNTH_DU_0B2C_20000101", "TCGA_A"])
    plain = page_body(index_html(summary_frame(), MODEL, []))
    assert 'class="warnings"' not in plain and "synthetic" not in plain
    document = index_html(summary, MODEL, ["trained on synthetic data only"])
    assert document.index('<section class="warnings"') < document.index("<header>")
    assert "trained on synthetic data only" in document
    model = re.search(r'<section aria-label="model">.*?</section>', document, re.S).group(0)
    assert "lgg-segmentation version 3" in model and "78 train / 16 val / 16 test" in model
    assert document.count('<span class="flag synthetic">synthetic</span>') == 2
    assert "2 of 3 cases synthetic" in document
    assert "<th class=\"num\" scope=\"col\">peak output</th>" in document and "not a calibrated probability" in document
