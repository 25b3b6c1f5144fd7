"""The Kubernetes manifests, validated offline: the built-in kinds against the API
schemas (kubernetes-validate, strict), KEDA's objects and the PodMonitor against their
documented fields, and every manifest against recallq itself (settings that exist,
queue names the topology declares, probes the worker serves, thresholds from the batch
size)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from worker.settings import WorkerSettings

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = ROOT / "deploy" / "k8s"
BUILT_IN = {"Namespace", "ConfigMap", "Secret", "Job", "Deployment", "Service"}
VERSIONS = ["1.30.0", "1.37.0"]  # an old supported minor and the newest known here
# KEDA 2.x, keda.sh/docs: ScaledObject spec, the rabbitmq scaler, TriggerAuthentication.
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}  # fmt: skip
TRIGGER = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
RABBITMQ_METADATA = {
    "host", "hostFromEnv", "protocol", "mode", "value", "activationValue", "queueName",
    "vhostName", "useRegex", "excludeUnacknowledged", "pageSize", "operation", "timeout",
    "unsafeSsl", "usernameFromEnv", "passwordFromEnv",
}  # fmt: skip
TRIGGER_AUTH_SPEC = {
    "secretTargetRef", "env", "configMapTargetRef", "podIdentity", "hashiCorpVault",
    "azureKeyVault", "awsSecretManager", "gcpSecretManager",
}  # fmt: skip


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def every_document() -> list[dict[str, Any]]:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    return [d for name in [*listed, "secret.example.yaml"] for d in documents(name)]


def of_kind(kind: str) -> dict[str, Any]:
    [found] = [d for d in every_document() if d["kind"] == kind]
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_built_in_kinds_pass_the_api_schemas_strictly(version: str) -> None:
    checked = [d for d in every_document() if d["kind"] in BUILT_IN]
    assert {d["kind"] for d in checked} == BUILT_IN
    for document in checked:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_rejects_a_broken_deployment() -> None:
    broken = of_kind("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_keda_objects_use_only_documented_fields() -> None:
    scaled = of_kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert set(scaled["spec"]) <= SCALED_OBJECT_SPEC
    for trigger in scaled["spec"]["triggers"]:
        assert set(trigger) <= TRIGGER and trigger["type"] == "rabbitmq"
        assert set(trigger["metadata"]) <= RABBITMQ_METADATA
        assert trigger["metadata"]["mode"] in {"QueueLength", "MessageRate"}
        assert all(isinstance(v, str) for v in trigger["metadata"].values())  # KEDA: strings
    auth = of_kind("TriggerAuthentication")
    assert set(auth["spec"]) <= TRIGGER_AUTH_SPEC
    names = {t["authenticationRef"]["name"] for t in scaled["spec"]["triggers"]}
    assert names == {auth["metadata"]["name"]}


def test_manifests_agree_with_recallq() -> None:
    settings_map, secret = of_kind("ConfigMap")["data"], of_kind("Secret")["stringData"]
    recallq_env = {k: v for k, v in {**settings_map, **secret}.items() if k.startswith("RECALLQ_")}
    known = {f"RECALLQ_{name.upper()}" for name in WorkerSettings.model_fields}
    assert set(recallq_env) <= known, set(recallq_env) - known
    settings = WorkerSettings(
        **{k.removeprefix("RECALLQ_").lower(): v for k, v in recallq_env.items()}
    )
    topology = settings.topology
    deployment, scaled = of_kind("Deployment"), of_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    queues = {t["name"]: t["metadata"]["queueName"] for t in scaled["spec"]["triggers"]}
    assert queues == {"interactive-backlog": topology.requests.name,
                      "bulk-backlog": topology.bulk.name}  # fmt: skip
    values = {t["name"]: int(t["metadata"]["value"]) for t in scaled["spec"]["triggers"]}
    assert values == {"interactive-backlog": settings.max_batch,
                      "bulk-backlog": 10 * settings.max_batch}  # fmt: skip
    auth = of_kind("TriggerAuthentication")["spec"]["secretTargetRef"][0]
    assert auth["name"] == of_kind("Secret")["metadata"]["name"] and auth["key"] in secret
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {
        of_kind("ConfigMap")["metadata"]["name"],
        of_kind("Secret")["metadata"]["name"],
    }
    [port] = container["ports"]
    assert port["containerPort"] == settings.metrics_port
    probes = {k: container[k]["httpGet"]["path"] for k in ("livenessProbe", "readinessProbe")}
    assert probes == {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.shutdown_grace_s  # the drain finishes before SIGKILL
    monitor = of_kind("PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == port["name"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        monitor["spec"]["selector"]["matchLabels"],
        of_kind("Service")["spec"]["selector"],
    ):
        assert selector.items() <= labels.items()
