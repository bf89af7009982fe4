"""The deployment files hold what docs/deploy.md promises: parsed (PyYAML), not just present.

``deploy/compose.yaml``: three cloudsession replicas behind a proxy that publishes a port,
MinIO and Redis, health checks, a non-root user, and no secret written into the file (only
``${VAR}`` references). ``deploy/kubernetes/*.yaml``: a Deployment whose container declares its
port, probes ``/healthz`` (liveness) and ``/readyz`` (readiness) on it, runs as non-root without
privilege escalation, and takes ``SESSIONS_SHARED_SECRET`` from a Secret, never from a literal
value or a ConfigMap; a Service that targets the container's port.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SECRET_NAMES = ("SESSIONS_SHARED_SECRET", "SESSIONS_RPC_SHARED_KEY", "AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD", "REDIS_PASSWORD")
PORT = 8787


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def image_of(service: dict[str, Any]) -> str:
    return str(service.get("image", ""))


def is_cloudsession(name: str, service: dict[str, Any]) -> bool:
    return "build" in service or "cloudsession" in image_of(service) or name.startswith("cloudsession")


def dockerfile() -> str:
    path = DEPLOY / "Dockerfile"
    return path.read_text(encoding="utf-8") if path.exists() else ""


# --------------------------------------------------------------------------- compose


def test_compose_runs_three_replicas_behind_a_proxy_with_minio_and_redis() -> None:
    services = load_compose()["services"]
    replicas = {n: s for n, s in services.items() if is_cloudsession(n, s) and "nginx" not in image_of(s) and "caddy" not in image_of(s)}
    count = sum(int((s.get("deploy") or {}).get("replicas", 1)) for s in replicas.values())
    assert count >= 3, f"cloudsession replicas: {sorted(replicas)}"
    proxies = [s for s in services.values() if any(p in image_of(s) for p in ("nginx", "caddy"))]
    assert proxies and all(s.get("ports") for s in proxies), "the proxy must publish a port"
    assert any("minio/minio" in image_of(s) or image_of(s).startswith("minio") for s in services.values())
    assert any("redis" in image_of(s) for s in services.values())
    for name, service in replicas.items():
        env = environment(service)
        assert env.get("CLOUDSESSION_STORE", "").startswith("s3://"), name
        assert env.get("REDIS_URL") or env.get("CLOUDSESSION_REDIS_URL"), name


def test_compose_replicas_have_health_checks_and_run_as_non_root() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        if not is_cloudsession(name, service) or any(p in image_of(service) for p in ("nginx", "caddy")):
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") or "HEALTHCHECK" in dockerfile(), f"{name}: no health check"
        assert "healthz" in str(check.get("test", "")) + dockerfile(), name
        user = str(service.get("user", ""))
        users = re.findall(r"^USER\s+(\S+)", dockerfile(), re.MULTILINE)
        effective = user or (users[-1] if users else "")
        assert effective and effective.split(":")[0] not in ("root", "0"), f"{name}: runs as root"


def test_compose_inlines_no_secret() -> None:
    for name, service in load_compose()["services"].items():
        for key, value in environment(service).items():
            if key in SECRET_NAMES or re.search(r"(SECRET|PASSWORD|TOKEN)", key):
                assert value == "" or value.startswith("${"), f"{name}: {key} holds a literal value; reference ${{{key}}} instead"


# --------------------------------------------------------------------------- kubernetes


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if isinstance(d, dict)]
    assert docs, "no manifests in deploy/kubernetes"
    return docs


def the_deployment() -> dict[str, Any]:
    deployments = [d for d in k8s_documents() if d.get("kind") == "Deployment"]
    assert len(deployments) == 1
    return deployments[0]


def container() -> dict[str, Any]:
    containers = the_deployment()["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if "cloudsession" in c.get("name", "") or "cloudsession" in c.get("image", ""))


def port_number(port: Any, declared: list[dict[str, Any]]) -> int:
    if isinstance(port, int):
        return port
    return next(int(p["containerPort"]) for p in declared if p.get("name") == port)


def test_deployment_declares_its_port_and_probes_it() -> None:
    c = container()
    ports = c.get("ports") or []
    numbers = {int(p["containerPort"]) for p in ports}
    assert numbers, "the container declares no port"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http_get = (c.get(probe) or {}).get("httpGet") or {}
        assert http_get.get("path") == path, probe
        assert port_number(http_get.get("port"), ports) in numbers, probe
    assert int(the_deployment()["spec"].get("replicas", 1)) >= 2  # replicas on one bucket


def test_deployment_runs_as_non_root_without_escalation() -> None:
    pod = the_deployment()["spec"]["template"]["spec"]
    c = container()
    pod_ctx, ctx = pod.get("securityContext") or {}, c.get("securityContext") or {}
    assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True
    assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 1)) != 0
    assert ctx.get("allowPrivilegeEscalation") is False


def test_secrets_come_from_a_secret_never_inlined() -> None:
    c = container()
    env = {e["name"]: e for e in c.get("env") or []}
    from_secret = any("secretRef" in source for source in c.get("envFrom") or [])
    for name in ("SESSIONS_SHARED_SECRET",):
        entry = env.get(name)
        assert (entry and "secretKeyRef" in (entry.get("valueFrom") or {})) or (entry is None and from_secret), name
    for name, entry in env.items():
        if name in SECRET_NAMES:
            assert "value" not in entry, f"{name} is inlined in the Deployment"
    for doc in k8s_documents():
        if doc.get("kind") == "ConfigMap":
            assert not set(doc.get("data") or {}) & set(SECRET_NAMES), "a secret in the ConfigMap"


def test_service_targets_the_container_port() -> None:
    c = container()
    numbers = {int(p["containerPort"]) for p in c.get("ports") or []}
    names = {p.get("name") for p in c.get("ports") or []}
    services = [d for d in k8s_documents() if d.get("kind") == "Service"]
    assert services
    for service in services:
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port.get("port"))
            assert target in numbers or target in names, port
