"""deploy/kubernetes/: the manifests against the Kubernetes schemas (offline, strict), and what a
schema cannot say: that they fit this server (its probes, port, user, settings and drain time)
and the multi-worker trainer (its flags, the workers' names)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from support.kubernetes import (
    DEPLOY,
    EXAMPLE_SECRET,
    Manifest,
    find,
    kustomization,
    kustomizations,
    kustomize_build,
    manifests,
    patch_files,
    read_yaml,
)
from support.models import REPO

from app.cli import build_parser
from app.settings import ENV_PREFIX, Settings, SettingsError, load_settings
from app.training.config import load_recipe

# The oldest Kubernetes the manifests are for (the preStop `sleep` action is on by default from
# 1.30) and the newest whose schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_passes_the_schemas(version: str) -> None:
    found = manifests()
    assert len(found) >= 15, [str(item) for item in found]
    for item in found:
        # strict: a field the schema does not know (a typo, a misplaced key) is an error.
        kubernetes_validate.validate(item.body, version, strict=True)


@pytest.mark.parametrize("folder", [path.parent for path in kustomizations()], ids=str)
def test_each_kustomization_builds_to_valid_objects(folder: Path) -> None:
    built = kustomize_build(folder)
    if built is None:
        pytest.skip("kubectl not installed: kustomize builds not checked")
    assert built
    for body in built:
        kubernetes_validate.validate(body, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomizations_name_every_manifest_once_but_the_example_secret() -> None:
    listed: list[Path] = []
    for path in kustomizations():
        body = kustomization(path.parent)
        for entry in body.get("resources", []):
            target = (path.parent / entry).resolve()
            assert target.exists(), f"{path}: {entry} does not exist"
            if target.is_file():
                listed.append(target)
        for patch in body.get("patches", []):
            assert (path.parent / patch["path"]).is_file(), f"{path}: {patch} does not exist"
    files = {item.path.resolve() for item in manifests()} - patch_files()
    assert sorted(listed) == sorted(files - {EXAMPLE_SECRET.resolve()})
    # The one at the top serves the image's models; it builds on server/.
    assert kustomization(DEPLOY)["resources"] == ["server"]


def _server() -> dict[str, Any]:
    (container,) = _pod(find("Deployment", "nextword", "server"))["containers"]
    return dict(container)


def _pod(item: Manifest) -> dict[str, Any]:
    return dict(item.body["spec"]["template"]["spec"])


def _serving_stage() -> str:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    return text[text.index("FROM base AS serve") :]


def test_probes_ask_ready_for_traffic_and_health_for_liveness() -> None:
    server = _server()
    assert server["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["port"] in ports


def test_the_container_port_is_the_images() -> None:
    stage = _serving_stage()
    exposed = re.search(r"^EXPOSE (\d+)$", stage, re.MULTILINE)
    listening = re.search(r"NEXTWORD_PORT=(\d+)", stage)
    assert exposed and listening
    (port,) = _server()["ports"]
    assert port["containerPort"] == int(exposed[1]) == int(listening[1])
    # Nothing moves the server off it, and the Service sends to it by name.
    settings = find("ConfigMap", "nextword-settings", "server").body["data"]
    assert "NEXTWORD_PORT" not in settings and "NEXTWORD_HOST" not in settings
    (service_port,) = find("Service", "nextword", "server").body["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]


def test_the_server_runs_unprivileged_on_a_read_only_root() -> None:
    uid = re.search(r"useradd .*--uid (\d+)", (REPO / "Dockerfile").read_text(encoding="utf-8"))
    assert uid
    pod, server = _pod(find("Deployment", "nextword", "server")), _server()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid[1])
    assert pod["automountServiceAccountToken"] is False
    context = server["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]


def test_requests_and_limits_are_set_and_consistent() -> None:
    jobs = find("Job", "nextword-train", "training")
    for container in (_server(), *_pod(jobs)["containers"]):
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request = _quantity(resources["requests"][resource])
            assert 0 < request <= _quantity(resources["limits"][resource]), container["name"]


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number: "500m" -> 0.5, "256Mi" -> 268435456."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi)?", str(value))
    assert match, value
    return float(match[1]) * units.get(match[2] or "", 1)


def test_grace_period_outlasts_the_pause_and_the_drain() -> None:
    pod, server = _pod(find("Deployment", "nextword", "server")), _server()
    pause = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    default = Settings.model_fields["shutdown_timeout_s"].default
    settings = find("ConfigMap", "nextword-settings", "server").body["data"]
    drain = float(settings.get("NEXTWORD_SHUTDOWN_TIMEOUT_S", default))
    assert pod["terminationGracePeriodSeconds"] > pause + max(drain, default)


@pytest.mark.parametrize("folder", ["server", "store-volume"])
def test_configmap_keys_are_settings_the_server_accepts(folder: str) -> None:
    data = find("ConfigMap", "nextword-settings", folder).body["data"]
    given = {}
    for key, value in data.items():
        field = key.removeprefix(ENV_PREFIX).lower()
        assert key.startswith(ENV_PREFIX) and field in Settings.model_fields, key
        given[field] = value
    # The values too, as the server reads them at start-up (the store: the image's, here).
    load_settings(**{**given, "model_store": str(REPO / "model_store")})


def test_the_keys_come_from_the_secret_and_the_example_cannot_serve() -> None:
    secret_keys = {
        variable["name"]: variable["valueFrom"]["secretKeyRef"]
        for variable in _server()["env"]
        if "secretKeyRef" in variable.get("valueFrom", {})
    }
    assert set(secret_keys) == {"NEXTWORD_API_KEY", "NEXTWORD_ADMIN_KEY"}
    (example,) = read_yaml(EXAMPLE_SECRET)
    for variable, reference in secret_keys.items():
        assert reference["name"] == example["metadata"]["name"]
        assert reference["key"] in example["stringData"]
        # A placeholder applied by mistake stops the server instead of serving behind it.
        field = variable.removeprefix(ENV_PREFIX).lower()
        with pytest.raises(SettingsError, match="at least 16 characters"):
            load_settings(**{field: example["stringData"][reference["key"]]})


def test_service_budget_and_autoscaler_point_at_the_server() -> None:
    labels = find("Deployment", "nextword", "server").body["spec"]["template"]["metadata"]
    pod_labels = labels["labels"].items()
    service = find("Service", "nextword", "server").body["spec"]
    budget = find("PodDisruptionBudget", "nextword", "server").body["spec"]
    policy = find("NetworkPolicy", "nextword", "server").body["spec"]
    for selector in (service["selector"], budget["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels
    autoscaler = find("HorizontalPodAutoscaler", "nextword", "server").body["spec"]
    assert autoscaler["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "nextword",
    }
    assert autoscaler["minReplicas"] >= 2  # the budget lets one go while another serves
    (metric,) = autoscaler["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # The autoscaler owns the count: a replicas field would reset it on every apply.
    assert "replicas" not in find("Deployment", "nextword", "server").body["spec"]


def test_the_training_job_names_every_worker_by_its_stable_dns_name() -> None:
    job = find("Job", "nextword-train", "training")
    service = find("Service", "nextword-train", "training").body["spec"]
    spec, pod = job.body["spec"], _pod(job)
    assert spec["completionMode"] == "Indexed"
    assert service["clusterIP"] == "None" and pod["subdomain"] == "nextword-train"
    (trainer,) = pod["containers"]
    args = trainer["args"]
    assert args[args.index("--worker-index") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert "JOB_COMPLETION_INDEX" in {variable["name"] for variable in trainer["env"]}
    workers = args[args.index("--workers") + 1].split(",")
    (port,) = trainer["ports"]
    (service_port,) = service["ports"]
    assert service_port["port"] == port["containerPort"]
    # An Indexed Job's pod i is named <job>-<i>; every worker runs at once.
    assert workers == [
        f"{job.name}-{index}.nextword-train:{port['containerPort']}"
        for index in range(spec["completions"])
    ]
    assert spec["parallelism"] == spec["completions"] >= 2


def test_the_training_job_reads_its_recipe_and_writes_the_shared_store(tmp_path: Path) -> None:
    job = find("Job", "nextword-train", "training")
    pod = _pod(job)
    (trainer,) = pod["containers"]
    args = trainer["args"]
    mounts = {mount["name"]: mount["mountPath"] for mount in trainer["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    store = volumes["model-store"]["persistentVolumeClaim"]["claimName"]
    find("PersistentVolumeClaim", store, "volumes")
    assert args[args.index("--store") + 1] == mounts["model-store"]
    assert trainer["securityContext"]["readOnlyRootFilesystem"] is True
    assert "tmp" in mounts  # Keras' and Matplotlib's caches (the image points them there)
    # The recipe: a mounted ConfigMap key whose settings `nextword train` knows.
    recipe_path = args[args.index("--recipe") + 1]
    assert Path(recipe_path).parent == Path(mounts["recipe"])
    recipe = find("ConfigMap", volumes["recipe"]["configMap"]["name"], "training")
    written = tmp_path / "recipe.toml"
    written.write_text(recipe.body["data"][Path(recipe_path).name], encoding="utf-8")
    settings = load_recipe(written)
    assert Path(settings["train"]).is_relative_to(mounts["corpus"])
    # The served store on a claim is the one the chief writes.
    patch = read_yaml(DEPLOY / "store-volume" / "deployment-store.yaml")[0]
    served = [op["value"] for op in patch if op["path"].endswith("/volumes/-")]
    assert served[0]["persistentVolumeClaim"]["claimName"] == store


def test_the_trainer_accepts_the_jobs_arguments() -> None:
    (trainer,) = _pod(find("Job", "nextword-train", "training"))["containers"]
    assert trainer["command"] == ["nextword", "train"]
    commands = next(
        action for action in build_parser()._actions if action.choices and "train" in action.choices
    )
    known = commands.choices["train"]._option_string_actions  # type: ignore[index]
    if "--workers" not in known and "--worker-index" not in known:
        pytest.skip("nextword train has no multi-worker flags in this tree yet")
    # As the kubelet expands it in worker 1's pod.
    args = ["1" if arg == "$(JOB_COMPLETION_INDEX)" else arg for arg in trainer["args"]]
    build_parser().parse_args(["train", *args])
