"""The MLflow model registry: versions registered from logged models, their aliases (@candidate, @champion),
what a version really holds (its artifact's weights SHA-256 and inference settings, checked against its tags)
and the read-only lookups `lggseg predict` loads models through."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from lggseg.core.redaction import redact
from lggseg.tracking.store import WEIGHTS_TAG, MlflowStore, weights_sha256

log = logging.getLogger(__name__)


class ModelRegistry:
    """The registry of one MLflow store (lggseg.tracking.store)."""

    def __init__(self, store: MlflowStore):
        self.store = store
        self.client = store.client

    def register(self, model_uri: str, name: str, alias: str, tags: Mapping[str, str]) -> str:
        """A new version of registered model `name` for `model_uri`, with `alias` moved to it."""
        with self.store.fluent():
            version = self.store.mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
        self.client.set_registered_model_alias(name, alias, version.version)
        return version.version

    def move_alias(self, name: str, alias: str, version: str, tags: Mapping[str, str]) -> None:
        """Point `alias` of registered model `name` at an existing `version`, updating its `tags`."""
        with self.store.guard("update"):
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, str(value))
            self.client.set_registered_model_alias(name, alias, version)

    def versions_holding(self, name: str, checkpoint_sha256: str, **tags: str) -> list:
        """READY versions of registered model `name` tagged with these weights (and `tags`), newest first; by
        tag only: check what they really hold with `registered_files`."""
        query = f"name='{name}' and tags.{WEIGHTS_TAG}='{checkpoint_sha256}'"
        query += "".join(f" and tags.{key}='{value}'" for key, value in tags.items())
        with self.store.guard("read"):
            found = self.client.search_model_versions(query)
        return sorted((v for v in found if v.status == "READY"), key=lambda v: int(v.version), reverse=True)

    def registered_files(self, version) -> tuple[str, dict]:
        """(SHA-256 of the best.pt, inference settings) a registered version's logged model really holds:
        read from its artifact's bytes, because a tag alone can lie."""
        with tempfile.TemporaryDirectory(prefix="lggseg-registered-") as tmp:
            folder = self.download_model_files(version, Path(tmp), f"models:/{version.name}/{version.version}")
            return weights_sha256(folder / "best.pt"), json.loads((folder / "inference.json").read_text())

    def reusable_version(self, name: str, weights: str, run_id: str, settings: dict):
        """The newest version of `name` that this run registered from these weights (`best.pt`'s SHA-256) with these
        inference settings, its artifact checked byte for byte; None when there is none to reuse."""
        settings = json.loads(json.dumps(settings))  # as inference.json holds them (lists, not tuples)
        for version in self.versions_holding(name, weights, run_id=run_id):
            try:
                held, held_settings = self.registered_files(version)
            except ValueError as exc:  # its artifact is incomplete: register anew rather than reuse it
                log.warning("%s version %s is not reused: %s", name, version.version, exc)
                continue
            if held == weights and held_settings == settings:
                return version
            if held != weights:
                log.warning("%s version %s is tagged %s=%s but its best.pt has sha256 %s: not reused",
                            name, version.version, WEIGHTS_TAG, weights, held)
        return None

    def check_holds(self, version, checkpoint: Path, what: str, todo: str) -> str:
        """The SHA-256 `version`'s artifact holds, which must be `checkpoint`'s and its own tag's; else ValueError
        naming both hashes and `todo`."""
        evaluated = weights_sha256(checkpoint)
        held, _ = self.registered_files(version)
        where = f"{version.name} version {version.version} ({what})"
        if held != evaluated:
            raise ValueError(f"{checkpoint} has weights sha256 {evaluated}, but {where} holds weights sha256 {held}: "
                             f"not the evaluated model; {todo}")
        tagged = version.tags.get(WEIGHTS_TAG)
        if tagged != held:
            said = f"is tagged {WEIGHTS_TAG}={tagged}" if tagged else f"has no {WEIGHTS_TAG} tag (an older lggseg registered it)"
            raise ValueError(f"{where} {said} but holds weights sha256 {held} ({checkpoint}'s): its tags cannot be "
                             f"trusted; {todo}")
        return held

    def load_model(self, model_uri: str, device: str = "cpu"):
        """Load a logged or registered model (`models:/lgg-segmentation@champion`, `models:/lgg-unet/1`) as
        MLflow users do: a torch.export module (already in inference mode: do not call .eval())."""
        with self.store.fluent():
            return self.store.mlflow.pytorch.load_model(model_uri, map_location=device)

    def resolve_registered(self, model_uri: str):
        """The ModelVersion behind `models:/<name>@<alias>` or `models:/<name>/<version>`; a URI that names
        nothing fails with what the registry does hold."""
        from mlflow.exceptions import MlflowException

        match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
        if not match:
            raise ValueError(f"model {model_uri!r}: expected models:/<name>@<alias>, models:/<name>/<version> "
                             "or a local models/<arch>/ folder")
        name, alias, version = match.groups()
        with self.store.guard("read"):
            try:
                if alias is not None:
                    return self.client.get_model_version_by_alias(name, alias)
                return self.client.get_model_version(name, version)
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise
        raise ValueError(f"model {model_uri!r} is not in the registry at {redact(self.store.uri)}. {self.listing()}")

    def listing(self) -> str:
        """`Registered: lgg-unet (versions 1, 2; @candidate=2), ...`, or that there are none."""
        with self.store.guard("read"):
            models = self.client.search_registered_models()
            parts = []
            for model in sorted(models, key=lambda m: m.name):
                versions = sorted(int(v.version) for v in self.client.search_model_versions(f"name='{model.name}'"))
                aliases = "; ".join(f"@{a}={v}" for a, v in sorted(model.aliases.items()))
                parts.append(f"{model.name} (versions {', '.join(map(str, versions))}{'; ' + aliases if aliases else ''})")
        if not parts:
            return "The registry holds no models yet (run the pipeline: dvc repro)."
        return "Registered: " + ", ".join(parts) + "."

    def download_model_files(self, version, dst: Path, model_uri: str) -> Path:
        """Download the `extra_files/` of a registered model version (the weights-only checkpoint and the
        inference settings) into dst."""
        from mlflow.exceptions import MlflowException

        stale = (f"{model_uri} (version {version.version} of {version.name}) has no lggseg checkpoint and inference "
                 "settings: it was logged by an older lggseg. Re-run the evaluate stage to log it again")
        # registry versions made by mlflow.register_model point at their logged model by `source`
        match = re.fullmatch(r"models:/(m-[0-9a-f]+)", version.source or "")
        model_id = getattr(version, "model_id", None) or (match.group(1) if match else None)
        if not model_id:
            raise ValueError(stale)
        with self.store.guard("read"), self.store.fluent():
            location = self.client.get_logged_model(model_id).artifact_location
            try:
                folder = Path(self.store.mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/extra_files",
                                                                             dst_path=str(dst)))
            except (MlflowException, OSError):
                folder = None
        if folder is None or not (folder / "best.pt").is_file() or not (folder / "inference.json").is_file():
            raise ValueError(stale)
        return folder
