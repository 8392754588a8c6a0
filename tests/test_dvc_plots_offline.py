"""`dvc plots show` renders a page that works offline: the project's .dvc/config points DVC at
.dvc/plots_template.html, which inlines vega, vega-lite and vega-embed instead of loading them
from cdn.jsdelivr.net (built by scripts/build_plots_template.py)."""

from __future__ import annotations

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
