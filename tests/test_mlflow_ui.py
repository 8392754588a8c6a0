"""The MLflow UI as a user sees it after two `dvc exp run`s: the runs, their comparison, the registry.

A real `mlflow server` on the repository's store, driven by headless Chromium (Playwright). Steps save
screenshots into $LGGSEG_TEST_ARTIFACTS (else the test's tmp_path) and print their paths."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests

from conftest import TINY
from dvc_project import make_dvc_repo, run
from servers import BROWSER_ARGS, chromium_executable, free_port, mlflow_server, skip_or_fail

pytestmark = pytest.mark.slow

TIMEOUT_MS = 30_000
EXPERIMENTS = {"exp-a": (), "exp-b": ("train.lr=0.001",)}
RUNS = [f"{arch} ({name})" for name in EXPERIMENTS for arch in ("unet", "fpn")]


def require_browser() -> None:
    """Before minutes of DVC experiments: Chromium and Playwright are there (a failure in CI)."""
    if chromium_executable() is None:
        skip_or_fail("Chromium is not installed (Debian: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_or_fail("playwright is not installed: pip install -e '.[dev]'")


def _exp_settings(*extra: str) -> list[str]:
    settings = [s for s in TINY if not s.startswith("data.synthetic.patients")] + [
        "data.synthetic.patients=10", "train.epochs=2", *extra]
    return [arg for s in settings for arg in ("-S", s)]


@pytest.fixture(scope="module")
def ui_repo(tmp_path_factory) -> Path:
    """A git+DVC repository after two experiments (exp-b: train.lr=0.001), its store in mlruns/."""
    require_browser()
    repo = make_dvc_repo(tmp_path_factory.mktemp("ui") / "repo")
    for name, extra in EXPERIMENTS.items():
        run(["dvc", "exp", "run", "-n", name, *_exp_settings(*extra)], repo)
    return repo


@pytest.fixture(scope="module")
def mlflow_ui(ui_repo) -> str:
    """URL of `mlflow server` on `ui_repo`'s store, with the environment `make mlflow-ui` gives it."""
    store = ui_repo / "mlruns"
    with mlflow_server(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts", free_port(),
                       env={"MLFLOW_DISABLE_TELEMETRY": "true"}) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_executable(), args=BROWSER_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A first visit: a fresh browser profile (MLflow keeps its GenAI/Model training switch per browser)."""
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    # first-visit pop-ups a user closes: the assistant panel, the new registry UI announcement
    page.add_locator_handler(page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]'),
                             lambda close: close.click())
    page.add_locator_handler(page.get_by_role("button", name="Try it now"), lambda button: button.click())
    yield page
    context.close()


@pytest.fixture
def screenshot(tmp_path):
    folder = Path(os.environ.get("LGGSEG_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)

    def save(page, step: str) -> Path:
        path = folder / f"mlflow-ui-{step}.png"
        page.screenshot(path=path)
        print(f"screenshot: {path}")
        return path
    return save


def expect_runs_page(page, experiment: str) -> None:
    page.wait_for_url(re.compile(r"#/experiments/\d+/\w+"))  # an experiment's page opens on one of its tabs
    assert re.search(r"#/experiments/\d+/runs", page.url), f"{experiment} opened on {page.url}, not on its runs"


def _links(repo: Path, url: str) -> dict[str, str]:
    """`lggseg mlflow-link` as `make mlflow-ui` runs it: experiment name -> link."""
    out = run(["lggseg", "mlflow-link", "--ui", url, "--root", str(repo), "--params", str(repo / "params.yaml")], repo).stdout
    return dict(re.findall(r"^  (\S+): (http\S+)$", out, flags=re.M))


def test_the_link_make_mlflow_ui_prints_opens_the_runs_sorted_by_test_dice(ui_repo, mlflow_ui, browser, screenshot):
    """A fresh browser (GenAI by default, pop-overs unseen) at 1400 px: the printed link opens the runs of the
    experiment, best test per-patient Dice first, its test and val Dice and the changed params in view; the
    server's UI telemetry is off and the page sends none."""
    from playwright.sync_api import expect

    link = _links(ui_repo, mlflow_ui)["lggseg-tests"]
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    telemetry = []
    context.on("request", lambda r: telemetry.append(r.url) if r.method == "POST" and "telemetry" in r.url else None)
    # the assistant opens by itself once per browser on a server at localhost: a user closes it
    page.add_locator_handler(page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]'),
                             lambda close: close.click())
    page.goto(link)
    expect_runs_page(page, "lggseg-tests")
    dice = page.locator('.ag-cell[col-id="metrics.`test/dice_patient_mean`"]')
    expect(dice).to_have_count(len(RUNS), timeout=TIMEOUT_MS)
    values = [float(text) for text in dice.all_inner_texts()]
    assert values == sorted(values, reverse=True), values  # best first
    expect(page.get_by_text("Sort: test/dice_patient_mean")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text("Detect issues in your traces")).to_have_count(0)  # no GenAI pop-over in the way
    expect(page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')).to_have_count(0, timeout=TIMEOUT_MS)
    for column in ("metrics.`val/best_dice_patient`", "tags.`params_changed`"):
        cell = page.locator(f'.ag-cell[col-id="{column}"]').first
        expect(cell).to_be_visible(timeout=TIMEOUT_MS)
        box = cell.bounding_box()
        assert box and box["x"] + box["width"] <= 1400, (column, box)  # in the window, no sideways scroll
    expect(page.locator('.ag-cell[col-id="tags.`params_changed`"]').filter(has_text="train.lr=0.001")).to_have_count(2)
    screenshot(page, "0-link-of-make-mlflow-ui")
    # the chart view: one section per prefix (test/, train/, val/), not one crowd of charts
    page.locator("input[value=CHART]").locator("xpath=..").click(force=True)
    headers = page.get_by_test_id("experiment-view-compare-runs-section-header")  # `test` over `(12)`
    for section in ("test", "val", "train"):
        expect(headers.filter(has_text=re.compile(rf"^\s*{section}\s*\(\d+\)"))).to_have_count(1, timeout=TIMEOUT_MS)
    screenshot(page, "0b-charts-by-section")
    assert requests.get(f"{mlflow_ui}/ajax-api/3.0/mlflow/ui-telemetry", timeout=10).json()["disable_ui_telemetry"] is True
    assert telemetry == [], telemetry
    context.close()


def test_runs_comparison_and_registry(mlflow_ui, page, screenshot):
    from playwright.sync_api import expect

    # 1. Model training mode (the switch, top left; the browser remembers it), then the experiment's runs:
    # named after the DVC experiments; the columns chosen by hand, as a user does outside the saved view
    page.goto(mlflow_ui)
    page.get_by_text("Model training", exact=True).click()
    page.get_by_role("link", name="Experiments", exact=True).click()
    page.get_by_test_id("experiment-list-item-link").get_by_text("lggseg-tests", exact=True).click()
    expect_runs_page(page, "lggseg-tests")
    for name in RUNS:
        expect(page.get_by_role("row").filter(has_text=name)).to_be_visible(timeout=TIMEOUT_MS)
    page.get_by_role("button", name="Columns", exact=True).click()
    for column in ("test/dice_patient_mean", "params_changed"):
        page.get_by_placeholder("Search columns").fill(column)
        # the search highlights the name inside longer ones too (test/dice_patient_mean_ci_low): the item
        # whose whole label is the column
        matches = page.get_by_test_id("column-selector-tree").get_by_text(column, exact=True)
        expect(matches.first).to_be_visible(timeout=TIMEOUT_MS)
        (item,) = [m for m in matches.all() if m.locator("xpath=..").inner_text().strip() == column]
        item.click()
    page.keyboard.press("Escape")
    dice = page.locator('.ag-cell[col-id="metrics.`test/dice_patient_mean`"]')
    expect(dice).to_have_count(len(RUNS), timeout=TIMEOUT_MS)
    assert all(re.fullmatch(r"\d(\.\d+)?", text.strip()) for text in dice.all_inner_texts()), dice.all_inner_texts()
    changed = page.locator('.ag-cell[col-id="tags.`params_changed`"]')
    expect(changed.filter(has_text="train.lr=0.001")).to_have_count(2, timeout=TIMEOUT_MS)
    screenshot(page, "1-runs")

    # 2. the two U-Nets side by side, then their validation Dice per epoch in one chart
    for name in ("unet (exp-a)", "unet (exp-b)"):
        page.get_by_role("row").filter(has_text=name).get_by_role(
            "checkbox", name=re.compile("toggle row selection")).check()
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.get_by_text("Comparing 2 Runs from 1 Experiment")).to_be_visible(timeout=TIMEOUT_MS)
    for name in ("unet (exp-a)", "unet (exp-b)"):
        expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
    screenshot(page, "2-compare")
    metric = page.get_by_role("link", name="val/dice_patient", exact=True)
    page.get_by_role("grid").last.hover()  # the metric table's values: it renders only the rows in view
    for _ in range(30):
        if metric.count():
            break
        page.mouse.wheel(0, 200)
        page.wait_for_timeout(100)
    metric.focus()  # the table's name and value halves scroll apart: a click can land on a neighbouring row
    page.keyboard.press("Enter")
    expect(page.locator(".js-plotly-plot")).to_be_visible(timeout=TIMEOUT_MS)
    for name in ("unet (exp-a)", "unet (exp-b)"):
        expect(page.get_by_text(f"{name} (val/dice_patient)")).to_be_visible(timeout=TIMEOUT_MS)
    page.mouse.move(0, 0)  # no hover tooltip in the screenshot
    screenshot(page, "3-val-dice-chart")

    # 3. the registry: both candidates and the champion, with its alias
    page.get_by_role("link", name="Model registry", exact=True).click()
    for model in ("lgg-synthetic-unet", "lgg-synthetic-fpn", "lgg-synthetic-segmentation"):
        expect(page.get_by_role("link", name=model, exact=True)).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_role("dialog", name=re.compile("Model Registry UI"))).to_be_hidden(timeout=TIMEOUT_MS)
    expect(page.locator(".du-bois-light-modal-mask")).to_have_count(0, timeout=TIMEOUT_MS)  # faded out
    screenshot(page, "4-models")
    page.get_by_role("link", name="lgg-synthetic-segmentation", exact=True).click()
    expect(page.get_by_role("heading", name="lgg-synthetic-segmentation")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text("@ champion")).to_be_visible(timeout=TIMEOUT_MS)
    screenshot(page, "5-champion")
