"""The Kubernetes manifests of deploy/kubernetes/, read as the tests of tests/deploy need them."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from support.models import REPO

DEPLOY = REPO / "deploy" / "kubernetes"
KUSTOMIZATION = "kustomization.yaml"
# A Secret to copy, never applied: the real one is created from literals (its comment says how).
EXAMPLE_SECRET = DEPLOY / "server" / "secret.example.yaml"


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object and the file it was read from."""

    path: Path
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}: {self.kind}/{self.name}"


def read_yaml(path: Path) -> list[Any]:
    """Every document of a YAML file (a file may hold several, separated by `---`)."""
    with path.open(encoding="utf-8") as handle:
        return [document for document in yaml.safe_load_all(handle) if document is not None]


def kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob(KUSTOMIZATION))


def kustomization(folder: Path) -> dict[str, Any]:
    (body,) = read_yaml(folder / KUSTOMIZATION)
    return dict(body)


def patch_files() -> set[Path]:
    """The files kustomizations use as patches: parts of an object, not objects."""
    found: set[Path] = set()
    for path in kustomizations():
        for patch in kustomization(path.parent).get("patches", []):
            found.add((path.parent / patch["path"]).resolve())
    return found


def manifests() -> list[Manifest]:
    """Every whole object under deploy/kubernetes (a strategic-merge patch that is a whole
    object by itself, such as a ConfigMap's data, counts; JSON patches do not)."""
    found: list[Manifest] = []
    json_patches = {path for path in patch_files() if isinstance(read_yaml(path)[0], list)}
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == KUSTOMIZATION or path.resolve() in json_patches:
            continue
        found.extend(Manifest(path, body) for body in read_yaml(path))
    return found


def find(kind: str, name: str, folder: str) -> Manifest:
    """The one object of this kind and name under deploy/kubernetes/<folder>."""
    matches = [
        item
        for item in manifests()
        if item.kind == kind and item.name == name and item.path.parent == DEPLOY / folder
    ]
    assert len(matches) == 1, f"{kind}/{name} in {folder}: {[str(m) for m in matches]}"
    return matches[0]


def kustomize_build(folder: Path) -> list[dict[str, Any]] | None:
    """The objects `kubectl kustomize` makes of a folder (offline), or None without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    built = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, f"kubectl kustomize {folder}: {built.stderr}"
    return [document for document in yaml.safe_load_all(built.stdout) if document is not None]
