"""A full disk in each writing stage, on a real size-limited filesystem (tmpfs), through real `lggseg` processes:
exit 1, one line naming the path and the space, no staging or temporary file left, earlier outputs byte-identical,
and for training an MLflow run that ends FAILED with the reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, cli_args, mlflow_client, start_lggseg, tiny_config
from filesystems import fill, small_filesystem
from lggseg import pipeline
from lggseg.core.paths import Paths
from lggseg.data.synthetic import write_kaggle_zip

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="tmpfs mounts are Linux")

SMALL_DATA_SET = ("data.source=synthetic", "data.synthetic.patients=1", "data.synthetic.slices_min=4",
                  "data.synthetic.slices_max=4", "data.synthetic.seed=5")


def _run(stage: str, root: Path, *settings: str, arch: str | None = None, timeout: float = 300) -> tuple[int, str]:
    process = start_lggseg(cli_args(stage, root, *settings, arch=arch), cwd=root)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"lggseg {stage} did not finish in {timeout} s:\n{stderr[-3000:]}")
    return process.returncode, stderr


def _the_error_line(stage: str, rc: int, stderr: str) -> str:
    """The run failed the way a full disk must fail it: exit 1, one error line, no traceback."""
    assert rc == 1, f"exit code {rc}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr and len(stderr) < 3000, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith(f"lggseg {stage}: error:")]
    assert len(errors) == 1, stderr
    assert "No space left on device" in errors[0] or "not enough space" in errors[0], errors[0]
    return errors[0]


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(folder: Path) -> list[str]:
    """Staging folders and temporary files of atomic writers under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".staging." in p.name or
                  p.name.endswith(".tmp") or ".old." in p.name)


@pytest.fixture(scope="module")
def data_sources(tmp_path_factory, synthetic_tree) -> dict[str, tuple[str, ...]]:
    """The three ways `download` gets a data set, each too large for an 8 MB filesystem (~45 MB unpacked)."""
    archive = write_kaggle_zip(synthetic_tree, tmp_path_factory.mktemp("zip") / "lgg-mri-segmentation.zip")
    return {
        "synthetic": ("data.source=synthetic", "data.synthetic.patients=12", "data.synthetic.seed=7"),
        "zip": ("data.source=local", f"data.local_path={archive}"),
        "folder": ("data.source=local", f"data.local_path={synthetic_tree.parent}"),
    }


@pytest.mark.parametrize("source", ["synthetic", "zip", "folder"])
def test_download_onto_a_full_disk_is_one_line_and_keeps_the_old_data_set(tmp_path, data_sources, source):
    with small_filesystem(tmp_path / "small", "8m") as root:
        paths = Paths.at(root)
        pipeline.download(tiny_config(*SMALL_DATA_SET), paths)  # the earlier good output: 1 patient, ~1 MB
        before = _tree_bytes(paths.dataset)

        rc, stderr = _run("download", root, *data_sources[source])

        line = _the_error_line("download", rc, stderr)
        assert str(paths.dataset) in line or str(paths.raw) in line
        assert " free" in line  # how much space there was
        assert _tree_bytes(paths.dataset) == before
        assert _leftovers(root) == []


@pytest.fixture
def project_on_small_disk(tmp_path, prepared_project):
    """A project whose data/ folder is on an 8 MB tmpfs: raw/ links to the prepared project's data set,
    interim/ is a copy (splits and slice table), processed/ is a first, good 32x32 preprocess."""
    with small_filesystem(tmp_path / "small", "8m") as root:
        data = root / "data"
        data.mkdir()
        (data / "raw").symlink_to(prepared_project.raw)
        shutil.copytree(prepared_project.interim, data / "interim")
        paths = Paths.at(root)
        pipeline.preprocess(tiny_config("preprocess.size=32"), paths)
        yield paths


def test_preprocess_onto_a_full_disk_is_one_line_not_sigbus(project_on_small_disk):
    paths = project_on_small_disk
    before = _tree_bytes(paths.processed)

    rc, stderr = _run("preprocess", paths.root, *TINY, "preprocess.size=128")  # ~16 MB of arrays

    assert rc != -7 and rc != 135, "killed by SIGBUS"
    line = _the_error_line("preprocess", rc, stderr)
    assert str(paths.processed) in line and " free" in line
    assert _tree_bytes(paths.processed) == before
    assert _leftovers(paths.root) == []


def test_preprocess_arrays_reserve_their_space_so_a_full_disk_is_an_error_not_sigbus(tmp_path):
    """Even when the disk fills after the free-space check: the memory-mapped arrays are allocated up front."""
    with small_filesystem(tmp_path / "small", "2m") as small:
        script = ("import sys; from pathlib import Path; from lggseg.data.preprocess import _reserved_array\n"
                  "try:\n"
                  f"    array = _reserved_array(Path({str(small)!r}) / 'images.npy', (16, 256, 256, 3))\n"
                  "    array[:] = 1; array.flush()\n"
                  "except OSError as exc:\n"
                  "    print(exc.errno, exc.strerror); sys.exit(1)\n")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, f"exit {done.returncode}: {done.stderr[-2000:]}"
        assert done.stdout.strip() == "28 No space left on device"


@pytest.mark.parametrize("store", ["beside", "on_the_full_disk"])
def test_a_full_disk_at_a_checkpoint_fails_the_run_with_the_reason(tmp_path, prepared_project, store):
    """models/ on a small filesystem (best.pt fits, last.pt does not); the MLflow store on a roomy one beside
    it, or on the same small one: the failed writer's temporary file is removed at once, so the store can
    take the FAILED status and the reason."""
    root = tmp_path / "project"
    small = root / "models" if store == "beside" else root
    root.mkdir()
    with small_filesystem(small, "160m"):
        (root / "data").symlink_to(prepared_project.root / "data")
        paths = Paths.at(root)
        fill(small, leave_bytes=90 << 20)  # U-Net/ResNet-18: best.pt ~57 MB, last.pt ~170 MB

        rc, stderr = _run("train", root, *TINY, "train.epochs=1", arch="unet", timeout=600)

        line = _the_error_line("train", rc, stderr)
        assert f"writing {paths.model_dir('unet') / 'last.pt'}" in line and " free" in line, line
        assert _leftovers(root / "models") == []
        assert not (paths.model_dir("unet") / "last.pt").exists()
        client = mlflow_client(paths)
        [run] = client.search_runs([client.get_experiment_by_name("lggseg-tests").experiment_id])
        assert run.info.status == "FAILED"
        assert "No space left on device" in run.data.tags["failure_reason"]


def test_index_onto_a_full_disk_keeps_the_earlier_table(tmp_path, synthetic_tree):
    """Single-file outputs (atomic_path: slices.csv here, JSON and CSV reports elsewhere) fail the same way."""
    with small_filesystem(tmp_path / "small", "4m") as root:
        (root / "data" / "raw").mkdir(parents=True)
        (root / "data" / "raw" / "kaggle_3m").symlink_to(synthetic_tree)
        paths = Paths.at(root)
        pipeline.index(tiny_config(), paths)
        before = _tree_bytes(paths.interim)
        fill(root, leave_bytes=0)

        rc, stderr = _run("index", root, *TINY)

        line = _the_error_line("index", rc, stderr)
        assert f"writing {paths.slices_csv}" in line and " free" in line, line
        assert _tree_bytes(paths.interim) == before
        assert _leftovers(root) == []


def test_a_full_disk_outside_the_stage_writers_is_still_one_line(tmp_path):
    """`lggseg synth` writes its folder directly: the CLI's last resort names the file and the space left."""
    with small_filesystem(tmp_path / "small", "2m") as out:
        process = start_lggseg(["synth", str(out), "--patients", "4"])
        _, stderr = process.communicate(timeout=120)
        line = _the_error_line("synth", process.returncode, stderr)
        assert f"No space left on device writing under {out}" in line and "free on its filesystem now" in line
