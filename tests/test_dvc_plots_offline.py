"""`dvc plots show` renders a page that works offline: the project's .dvc/config points DVC at
.dvc/plots_template.html, which inlines vega, vega-lite and vega-embed instead of loading them
from cdn.jsdelivr.net (built by scripts/build_plots_template.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from dvc_render.vega import VegaRenderer

REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")

# version markers of the minified builds (see LIBRARIES in scripts/build_plots_template.py)
INLINED = ('.vega={}', 'var e="5.20.2"', '.vegaLite={}', 'var n="5.2.0"', '.vegaEmbed=', 's="6.18.2"')


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def _html_template_setting() -> str:
    """plots.html_template as the repository's committed .dvc/config sets it (relative to .dvc/)."""
    return _run([DVC, "config", "--project", "plots.html_template"], REPO).stdout.strip()


def test_config_points_at_the_offline_template():
    setting = _html_template_setting()
    assert setting and not os.path.isabs(setting)
    template = REPO / ".dvc" / setting
    assert template.is_file()
    page = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{refresh_tag}" in page and "{scripts}" not in page
    assert (REPO / ".dvc" / "plots_template.LICENSES.txt").is_file()


def test_template_inlines_the_versions_dvc_pins():
    """If dvc_render moves its CDN pins, rebuild the template with scripts/build_plots_template.py."""
    pins = re.findall(r"cdn\.jsdelivr\.net/npm/([a-z-]+@[\d.]+)", VegaRenderer.SCRIPTS)
    assert len(pins) == 3
    page = (REPO / ".dvc" / _html_template_setting()).read_text(encoding="utf-8")
    for pin in pins:
        assert f"/* {pin} (BSD-3-Clause) */" in page, pin


def test_plots_show_writes_a_self_contained_page(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    _run(["git", "config", "user.name", "lggseg tests"], repo)
    _run(["git", "config", "user.email", "tests@lggseg.invalid"], repo)
    _run([DVC, "init", "-q"], repo)
    setting = _html_template_setting()
    shutil.copy(REPO / ".dvc" / setting, repo / ".dvc" / setting)
    _run([DVC, "config", "plots.html_template", setting], repo)
    (repo / "history.csv").write_text("epoch,val_dice_patient\n0,0.41\n1,0.58\n2,0.66\n")
    (repo / "dvc.yaml").write_text("plots:\n  - history.csv:\n      x: epoch\n      y: val_dice_patient\n")

    _run([DVC, "plots", "show"], repo)

    index = repo / "dvc_plots" / "index.html"
    assert index.is_file()
    page = index.read_text(encoding="utf-8")
    assert "<title>lggseg plots</title>" in page
    assert "vegaEmbed(" in page and "val_dice_patient" in page
    for marker in INLINED:
        assert marker in page, marker
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)
    assert not re.search(r"""src\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)
    assert "cdn.jsdelivr" not in page
    assert not re.search(r"\{(plot_divs|scripts|refresh_tag)\}", page)


def _layers(spec: dict) -> list[dict]:
    return [spec, *(layer for child in spec.get("layer", []) for layer in _layers(child))]


def test_plots_name_their_architecture_and_roc_stays_off_the_frame(tmp_path):
    """The repository's dvc.yaml rendered by `dvc plots show` for two architectures: each plot's title names its
    architecture (`dvc plots diff` shows one plot per architecture, the legend only names revisions), and the ROC
    template (.dvc/plots/roc.json) pads its axes, draws the chance line and prints the AUC."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    _run([DVC, "init", "-q"], repo)
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    (repo / ".dvc" / "plots").mkdir()
    shutil.copy(REPO / ".dvc" / "plots" / "roc.json", repo / ".dvc" / "plots" / "roc.json")
    (repo / "params.yaml").write_text("model:\n  architectures: [unet, fpn]\n")
    for arch in ("unet", "fpn"):
        folder = repo / "reports" / "arch" / arch
        folder.mkdir(parents=True)
        (folder / "train_history.csv").write_text("epoch,val_dice_patient\n1,0.41\n2,0.58\n")
        (folder / "per_patient.csv").write_text("patient_id,dice\nTCGA_A,0.81\nTCGA_B,0.62\n")
        (folder / "roc.csv").write_text("fpr,tpr,threshold\n0.0,0.0,1.0\n0.0,1.0,0.5\n1.0,1.0,0.0\n")  # perfect

    plots = json.loads(_run([DVC, "plots", "show", "--json"], repo).stdout)["data"]

    titles = {path: plots[path][0]["content"]["title"]["text"] for path in plots if path.endswith(".csv")}
    assert len(titles) == 6 and len(set(titles.values())) == 6
    for path, title in titles.items():
        arch = path.split("/")[2]
        assert title.startswith(f"{arch}: "), (path, title)
    roc = plots["reports/arch/unet/roc.csv"][0]["content"]
    layers = _layers(roc)
    domains = [layer["encoding"][axis]["scale"]["domain"] for layer in layers if "encoding" in layer
               for axis in ("x", "y") if "scale" in layer["encoding"].get(axis, {})]
    assert domains and all(low < 0 and high > 1 for low, high in domains)
    assert any(layer.get("data", {}).get("values") == [{"chance": 0}, {"chance": 1}] for layer in layers)
    curve = next(layer for layer in layers if isinstance(layer.get("mark"), dict) and layer["mark"].get("point"))
    assert curve["mark"]["type"] == "line"
    auc = next(layer for layer in layers if isinstance(layer.get("mark"), dict) and layer["mark"]["type"] == "text")
    assert "AUC = " in json.dumps(auc["transform"]) and "<DVC_METRIC" not in json.dumps(roc)
