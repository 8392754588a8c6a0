"""The CI workflow and the README describe the same commands: the workflow pulls, checks nothing is
stale, tests and smoke-tests the champion with make targets the README documents and the Makefile has."""

import re

import yaml

from conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "pipeline.yml"


def workflow_commands(job: str) -> list[str]:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    return [line.strip() for step in jobs[job]["steps"] for line in step.get("run", "").splitlines() if line.strip()]


def make_targets(commands: list[str]) -> list[str]:
    return [target for command in commands for target in re.findall(r"\bmake (\w[\w-]*)", command)]


def test_ci_pulls_checks_nothing_is_stale_tests_and_checks_the_champion():
    commands = workflow_commands("pull-and-test")
    order = [next(i for i, c in enumerate(commands) if needle in c)
             for needle in ("make install", "dvc remote add --local", "make pull", "dvc status --quiet",
                            "dvc metrics diff main", "make test", "lggseg check-champion")]
    assert order == sorted(order)
    assert not any("dvc repro" in c or "make repro" in c for c in commands)  # CI never retrains


def test_the_gpu_job_retrains_and_pushes_only_when_asked():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert "workflow_dispatch" in workflow[True]  # PyYAML reads the key `on` as True
    assert "workflow_dispatch" in workflow["jobs"]["retrain"]["if"]
    assert make_targets(workflow_commands("retrain")) == ["install", "pull", "repro", "push"]


def test_workflow_make_targets_are_in_the_makefile_and_the_readme():
    targets = set(make_targets(workflow_commands("pull-and-test") + workflow_commands("retrain")))
    makefile = (REPO / "Makefile").read_text()
    readme = (REPO / "README.md").read_text()
    for target in targets:
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no target {target}"
        assert f"make {target}" in readme, f"README does not document make {target}"


def test_no_secret_is_written_into_the_workflow():
    text = WORKFLOW.read_text()
    assert "dvc remote add --local" in text and "${{ secrets.DVC_REMOTE_URL }}" in text
    assert not re.search(r"(AKIA[0-9A-Z]{16}|s3://[a-z])", text)
