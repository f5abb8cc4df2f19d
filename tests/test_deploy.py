"""The Kubernetes manifests in deploy/ and the Dockerfile: every service has a Deployment and a
Service, probes name the services the generated descriptors define, every variable set is one the
README documents, and SIGTERM has time to drain before the kubelet kills the container."""

from __future__ import annotations

import importlib
import os
import pathlib
import re
import signal
import subprocess
from typing import Any

import httpx
import pytest
import yaml

from services.platform.settings import Settings
from services.registry import SERVICES
from tests.embedded import BIN, free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
GATEWAY_SHUTDOWN_SECONDS = 5  # gateway/server.py: uvicorn's timeout_graceful_shutdown


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append({**doc, "_file": path.name})
    return docs


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return _documents()


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return _find(docs, "ConfigMap", "agentmesh-config")["data"]


def _full_name(service: str) -> str:
    """The gRPC service's full name, from the generated descriptor (not from a string in a test)."""
    module = importlib.import_module(f"agentmesh.{service}.v1.{service}_service_pb2")
    (descriptor,) = module.DESCRIPTOR.services_by_name.values()
    return descriptor.full_name


def _readme_variables() -> set[str]:
    names: set[str] = set()
    in_table = False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("## "):
            in_table = line.strip() == "## Configuration"
        elif in_table and line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_every_manifest_parses_and_kustomization_lists_them_all(docs: list[dict[str, Any]]) -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    for doc in docs:
        if doc["_file"] != "kustomization.yaml":
            assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc["_file"]


@pytest.mark.parametrize("name", [*SERVICES, "gateway"])
def test_deployment_and_service_per_service(docs: list[dict[str, Any]], name: str) -> None:
    deployment = _find(docs, "Deployment", name)
    service = _find(docs, "Service", name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container = _container(deployment)
    assert container["image"] == "agentmesh"
    assert container["args"] == ["serve", name]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports, f"{name}: Service targets unknown port {port['targetPort']}"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("name", list(SERVICES))
def test_grpc_probes_name_the_service_from_its_descriptor(docs: list[dict[str, Any]], name: str) -> None:
    container = _container(_find(docs, "Deployment", name))
    grpc_port = int(_config(docs)["AGENTMESH_GRPC_PORT"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"] == grpc_port
    readiness, liveness = container["readinessProbe"]["grpc"], container["livenessProbe"]["grpc"]
    assert readiness == {"port": grpc_port, "service": _full_name(name)}
    assert liveness == {"port": grpc_port, "service": ""}
    service_port = next(p for p in _find(docs, "Service", name)["spec"]["ports"] if p["name"] == "grpc")
    assert service_port["appProtocol"] == "grpc"
    # Peers reach each other through the Service on its port.
    assert _config(docs)[f"AGENTMESH_{name.upper()}_ADDR"] == f"{name}:{service_port['port']}"


def test_gateway_probes_are_readyz_and_healthz(docs: list[dict[str, Any]]) -> None:
    container = _container(_find(docs, "Deployment", "gateway"))
    http_port = int(_config(docs)["AGENTMESH_HTTP_PORT"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == http_port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # The gateway holds no database credentials or secrets: of the secret only REDIS_URL (its
    # users' WebSocket counts).
    assert all("secretRef" not in source for source in container["envFrom"])
    from_secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert from_secrets == {"REDIS_URL": {"name": "agentmesh-secrets", "key": "REDIS_URL"}}


def _pre_stop_seconds(container: dict[str, Any]) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return float(command[1])


@pytest.mark.parametrize("name", [*SERVICES, "gateway"])
def test_termination_grace_exceeds_drain(docs: list[dict[str, Any]], name: str) -> None:
    deployment = _find(docs, "Deployment", name)
    container = _container(deployment)
    drain = (
        GATEWAY_SHUTDOWN_SECONDS
        if name == "gateway"
        else float(_config(docs)["AGENTMESH_SHUTDOWN_GRACE_SECONDS"])
    )
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > _pre_stop_seconds(container) + drain


def test_every_variable_set_is_documented_in_the_readme(docs: list[dict[str, Any]]) -> None:
    documented = _readme_variables()
    assert "AGENTMESH_SHUTDOWN_GRACE_SECONDS" in documented  # the parser found the table
    used: dict[str, str] = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            used.update(dict.fromkeys(doc["data"], doc["_file"]))
        if doc["kind"] == "Secret" and doc["metadata"]["name"] == "agentmesh-secrets":
            used.update(dict.fromkeys(doc["stringData"], doc["_file"]))
        if doc["kind"] in ("Deployment", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                used.update(dict.fromkeys((e["name"] for e in container.get("env", [])), doc["_file"]))
    missing = {name: file for name, file in used.items() if name not in documented}
    assert not missing, f"not in the README configuration table: {missing}"


def test_references_resolve_and_secrets_are_placeholders(docs: list[dict[str, Any]]) -> None:
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    for secret in secrets.values():
        for key, value in secret["stringData"].items():
            assert "CHANGE_ME" in value, f"{secret['metadata']['name']}.{key} is not a marked placeholder"
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets


def test_identity_signing_key_file_is_mounted(docs: list[dict[str, Any]]) -> None:
    deployment = _find(docs, "Deployment", "identity")
    container = _container(deployment)
    env = {e["name"]: e["value"] for e in container["env"]}
    key_file = pathlib.PurePosixPath(env["AGENTMESH_SIGNING_KEY_FILE"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (volume,) = [n for n, path in mounts.items() if key_file.parent == pathlib.PurePosixPath(path)]
    secret = _find(docs, "Secret", volumes[volume]["secret"]["secretName"])
    assert key_file.name in secret["stringData"]
    # Only identity signs: no other pod mounts the private key.
    for name in [*SERVICES, "gateway"]:
        if name != "identity":
            pod = _find(docs, "Deployment", name)["spec"]["template"]["spec"]
            assert all("secret" not in v for v in pod.get("volumes", []))


def test_migration_job_and_external_dependencies(docs: list[dict[str, Any]]) -> None:
    job = _find(docs, "Job", "agentmesh-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    secret = _find(docs, "Secret", "agentmesh-secrets")["stringData"]
    for variable, service, scheme in (
        ("DATABASE_URL", "postgres", "postgresql+psycopg://"),
        ("REDIS_URL", "redis", "redis://"),
    ):
        external = _find(docs, "Service", service)
        assert external["spec"]["type"] == "ExternalName"
        port = external["spec"]["ports"][0]["port"]
        assert secret[variable].startswith(scheme)
        assert f"@{service}:{port}/" in secret[variable]


def test_dockerfile_runs_agentmesh_as_the_manifests_user(docs: list[dict[str, Any]]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["agentmesh"\]$', dockerfile, re.M)
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            context = doc["spec"]["template"]["spec"]["securityContext"]
            assert (str(context["runAsUser"]), str(context["runAsGroup"])) == user


def test_metrics_listen_where_grpc_does(settings: Settings, tmp_path: pathlib.Path) -> None:
    """In a pod AGENTMESH_GRPC_HOST is 0.0.0.0 and Prometheus scrapes from another pod: the metrics
    port must not stay on 127.0.0.1. 127.0.0.2 (loopback, but not 127.0.0.1) tells the two apart."""
    grpc_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        AGENTMESH_GRPC_HOST="0.0.0.0",
        AGENTMESH_GRPC_PORT=str(grpc_port),
        AGENTMESH_METRICS_PORT=str(metrics_port),
        AGENTMESH_PAGE_TOKEN_SECRET="deploy-test",
        AGENTMESH_SERVICE_SECRET="deploy-test",
        # Not called here, but agents refuses to start without it.
        AGENTMESH_IDENTITY_ADDR=f"127.0.0.1:{free_port()}",
    )
    with (tmp_path / "stderr").open("w") as err:
        proc = subprocess.Popen(
            [str(BIN / "agentmesh"), "serve", "agents"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert f"serving gRPC on 0.0.0.0:{grpc_port}" in line, (tmp_path / "stderr").read_text()[-3000:]
            reply = httpx.get(f"http://127.0.0.2:{metrics_port}/metrics", timeout=10)
            assert reply.status_code == 200
            assert "agentmesh_rpc_active" in reply.text
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            if proc.stdout is not None:
                proc.stdout.close()
