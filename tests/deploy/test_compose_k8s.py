"""Offline validation of the Compose stack, the worker Dockerfile and the Kubernetes manifests.

* Compose: validated against the Compose Specification JSON schema, vendored
  in ``tests/deploy/data/compose-spec.json`` (Apache-2.0, with its licence),
  plus structural checks tying it to the Prometheus,
  Alertmanager and Grafana files.
* Kubernetes: validated against the official OpenAPI-derived schemas shipped
  by ``kubernetes-validate`` (strict: unknown fields fail), plus a small
  built-in schema and consistency checks (probes, volumes, env, selectors).

Schema validation is skipped, with the reason, only when the package that
ships the schema is absent; the other checks always run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml

from alerts.policy import load_policy_text

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
K8S_VERSION = "1.30"

#: Every configuration variable the worker reads (streams/cli.py, streams/config.py).
WORKER_ENV = {
    "RISKWATCH_BROKER",
    "RISKWATCH_METRICS_ADDR",
    "RISKWATCH_DATA_DIR",
    "RISKWATCH_POLICY_FILE",
    "RISKWATCH_KAFKA_SECURITY_PROTOCOL",
    "RISKWATCH_KAFKA_SASL_MECHANISM",
    "RISKWATCH_KAFKA_SASL_USERNAME",
    "RISKWATCH_KAFKA_SASL_PASSWORD_FILE",
}
METRICS_PORT = 9464


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None


#: The Compose Specification schema (Apache-2.0, compose-spec/compose-spec), vendored as test
#: data: the package that ships it (check-jsonschema) needs click>=8.5, Faust needs click<8.4.
COMPOSE_SCHEMA: Path | None = Path(__file__).parent / "data" / "compose-spec.json"
HAS_KUBERNETES_VALIDATE = importlib.util.find_spec("kubernetes_validate") is not None


# --- Compose -------------------------------------------------------------------


def _compose() -> dict:
    return _yaml(COMPOSE)


def _services() -> dict[str, dict]:
    return _compose()["services"]


def test_compose_matches_the_compose_specification() -> None:
    assert COMPOSE_SCHEMA is not None
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors, "\n".join(errors)
    # The schema really constrains services (a typo is caught).
    broken = _compose()
    broken["services"]["worker"]["healthcheck"]["intervall"] = "5s"
    assert list(validator.iter_errors(broken))


def test_compose_services() -> None:
    services = _services()
    assert {"kafka", "worker", "prometheus", "alertmanager", "grafana"} <= set(services)
    for name, service in services.items():
        image = service.get("image", "")
        assert "build" in service or re.fullmatch(r"[\w./-]+:[\w.-]+", image), name
        assert not image.endswith(":latest"), f"{name}: pin the image"


def test_kafka_is_single_node_kraft() -> None:
    kafka = _services()["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert "INTERNAL://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert not any("ZOOKEEPER" in key for key in env)
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert "healthcheck" in kafka


def test_worker_service() -> None:
    worker = _services()["worker"]
    assert worker["command"] == ["riskwatch", "worker", "--broker", "kafka://kafka:9092"]
    env = worker["environment"]
    assert env["RISKWATCH_METRICS_ADDR"] == f"0.0.0.0:{METRICS_PORT}"
    assert set(env) <= WORKER_ENV
    assert str(METRICS_PORT) in worker["expose"]
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    build = worker["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    # Table state: an anonymous volume per replica, never a shared named volume.
    data = [
        v
        for v in worker["volumes"]
        if isinstance(v, dict) and v["target"] == env["RISKWATCH_DATA_DIR"]
    ]
    assert data and data[0]["type"] == "volume" and "source" not in data[0]
    policy_mount = next(v for v in worker["volumes"] if v["target"] == env["RISKWATCH_POLICY_FILE"])
    load_policy_text((COMPOSE_DIR / policy_mount["source"]).read_text(encoding="utf-8"))


def test_compose_bind_mounts_and_secrets_exist() -> None:
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and volume["type"] == "bind":
                assert (COMPOSE_DIR / volume["source"]).exists(), (name, volume["source"])
    for name, secret in _compose()["secrets"].items():
        assert (COMPOSE_DIR / secret["file"]).is_file(), name


def test_compose_wiring_matches_prometheus_alertmanager_grafana() -> None:
    services = _services()
    prometheus_cfg = _yaml(PROM / "prometheus.yml")
    # Prometheus discovers the worker replicas by the compose service name.
    job = next(j for j in prometheus_cfg["scrape_configs"] if j["job_name"] == "riskwatch")
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == METRICS_PORT
    targets = prometheus_cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert [t.split(":")[0] for t in targets] == ["alertmanager"]
    prom_mount = next(v for v in services["prometheus"]["volumes"] if isinstance(v, dict))
    assert (COMPOSE_DIR / prom_mount["source"]).resolve() == PROM
    assert prom_mount["target"] == "/etc/prometheus"
    # Alertmanager: the PagerDuty key files are the mounted secrets.
    am_cfg = _yaml(PROM / "alertmanager.yml")
    key_files = {
        pd["routing_key_file"] for r in am_cfg["receivers"] for pd in r.get("pagerduty_configs", [])
    }
    mounted = {s["target"] for s in services["alertmanager"]["secrets"]}
    assert key_files == mounted
    # Webhooks go to the alert-sink service, whose inline server is valid Python.
    hosts = {
        re.match(r"https?://([^:/]+)", w["url"]).group(1)  # type: ignore[union-attr]
        for r in am_cfg["receivers"]
        for w in r.get("webhook_configs", [])
    }
    assert hosts <= set(services)
    sink = services["alert-sink"]["command"]
    compile(sink[sink.index("-c") + 1], "alert-sink", "exec")
    # Grafana: provisioning and dashboards where the provisioning files say.
    grafana = services["grafana"]
    mounts = {v["target"]: v["source"] for v in grafana["volumes"] if isinstance(v, dict)}
    assert (COMPOSE_DIR / mounts["/etc/grafana/provisioning"]).resolve() == (
        DEPLOY / "grafana" / "provisioning"
    )
    providers = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "riskwatch.yml")
    path = providers["providers"][0]["options"]["path"]
    assert (COMPOSE_DIR / mounts[path]).resolve() == DEPLOY / "grafana" / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / PurePosixPath(home).name).is_file()
    # The datasource URLs name compose services.
    datasources = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "riskwatch.yml")
    for ds in datasources["datasources"]:
        host = re.match(r"https?://([^:/]+)", ds["url"]).group(1)  # type: ignore[union-attr]
        assert host in services, ds["name"]


# --- Dockerfile ----------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for ins, rest in instructions if ins == "FROM"]
    assert froms and all(re.match(r"python:3\.11[\w.-]*", f) for f in froms)
    for ins, rest in instructions:
        if ins == "COPY" and "--from=" not in rest:
            *sources, _dest = shlex.split(rest)
            for source in sources:
                matches = list(ROOT.glob(source))
                assert matches or source.endswith("*"), f"COPY source {source} missing"
    packaged = re.findall(r"include = \[([^\]]*)\]", (ROOT / "pyproject.toml").read_text())
    for package in re.findall(r'"(\w+)\*"', packaged[0]):
        assert ("COPY", f"{package} ./{package}") in instructions, f"{package} not copied"
    users = [rest for ins, rest in instructions if ins == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "must not run as root"
    assert ("EXPOSE", str(METRICS_PORT)) in instructions
    cmd = json.loads(next(rest for ins, rest in instructions if ins == "CMD"))
    assert cmd == ["riskwatch", "worker"]


# --- Kubernetes ----------------------------------------------------------------

#: kind -> apiVersion, for every kind the manifests may use.
K8S_KINDS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "StatefulSet": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
}
#: A small schema every manifest must meet (independent of kubernetes-validate).
MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"enum": sorted(K8S_KINDS)},
        "metadata": {
            "type": "object",
            "required": ["name", "labels"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"const": "riskwatch"},
                "labels": {
                    "type": "object",
                    "required": ["app.kubernetes.io/name"],
                    "additionalProperties": {"type": "string"},
                },
            },
        },
    },
}


def _manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((path.name, doc))
    return docs


def _one(kind: str, name: str | None = None) -> dict:
    (doc,) = [
        d for _, d in _manifests() if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    return doc


@pytest.mark.parametrize(
    "doc", [d for _, d in _manifests()], ids=[f"{f}:{d['kind']}" for f, d in _manifests()]
)
def test_manifest_basic_schema(doc: dict) -> None:
    jsonschema.validate(doc, MANIFEST_SCHEMA)
    assert doc["apiVersion"] == K8S_KINDS[doc["kind"]]
    if doc["kind"] != "Namespace":
        assert doc["metadata"]["namespace"] == "riskwatch"


@pytest.mark.skipif(not HAS_KUBERNETES_VALIDATE, reason="kubernetes-validate not installed")
@pytest.mark.parametrize(
    "doc", [d for _, d in _manifests()], ids=[f"{f}:{d['kind']}" for f, d in _manifests()]
)
def test_manifest_kubernetes_schema(doc: dict) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")


def test_kustomization() -> None:
    kustomization = _yaml(K8S / "kustomization.yaml")
    assert kustomization["namespace"] == "riskwatch"
    resources = kustomization["resources"]
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    # The Secret is created out of band; an apply must never overwrite it.
    assert "secret.example.yaml" not in resources
    listed = {f for f, _ in _manifests()} - {"secret.example.yaml"}
    assert listed == set(resources)
    image = _one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[0] == kustomization["images"][0]["name"]


def test_statefulset() -> None:
    sts = _one("StatefulSet")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()

    # Config from the ConfigMap: every worker variable, nothing else.
    config = _one("ConfigMap", "riskwatch-config")["data"]
    assert set(config) == WORKER_ENV
    assert config["RISKWATCH_METRICS_ADDR"] == f"0.0.0.0:{METRICS_PORT}"
    assert config["RISKWATCH_BROKER"].startswith("kafka://")
    assert {"configMapRef": {"name": "riskwatch-config"}} in container["envFrom"]
    assert not any("PASSWORD" in e["name"] and "value" in e for e in container.get("env", []))

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # Table state on the per-pod volume claim.
    (claim,) = spec["volumeClaimTemplates"]
    assert mounts[config["RISKWATCH_DATA_DIR"]]["name"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # The SASL password is a file from the Secret.
    password = PurePosixPath(config["RISKWATCH_KAFKA_SASL_PASSWORD_FILE"])
    secret_mount = mounts[str(password.parent)]
    assert secret_mount["readOnly"] is True
    secret_volume = volumes[secret_mount["name"]]["secret"]
    secret = _one("Secret")
    assert secret_volume["secretName"] == secret["metadata"]["name"]
    assert {"key": "password", "path": password.name} in secret_volume["items"]
    assert "password" in secret["stringData"]
    # The policy file is a ConfigMap key, and a valid policy.
    policy_path = PurePosixPath(config["RISKWATCH_POLICY_FILE"])
    policy_volume = volumes[mounts[str(policy_path.parent)]["name"]]["configMap"]
    policy_map = _one("ConfigMap", policy_volume["name"])["data"]
    load_policy_text(policy_map[policy_path.name])

    # Probes on the metrics port: liveness /healthz, readiness /readyz, and a
    # generous startup probe (at least 5 minutes).
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_worker_accepts_the_configmaps_environment(tmp_path: Path, monkeypatch) -> None:
    # The worker reads the ConfigMap as its environment: it must start with it (a SASL
    # user without a SASL protocol was refused, and the pod restarted in a loop).
    from streams.config import Settings

    config = _one("ConfigMap", "riskwatch-config")["data"]
    password = tmp_path / "password"
    password.write_text("s3cret")
    for name in list(os.environ):
        if name.startswith("RISKWATCH_"):
            monkeypatch.delenv(name)
    for name, value in config.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RISKWATCH_KAFKA_SASL_PASSWORD_FILE", str(password))
    settings = Settings.from_env()
    assert settings.security_protocol == "SASL_SSL"
    assert settings.sasl_mechanism == "SCRAM-SHA-512" and settings.sasl_username == "riskwatch"


def test_headless_service_matches_statefulset_and_prometheus() -> None:
    sts = _one("StatefulSet")
    service = _one("Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["name"] == sts["spec"]["serviceName"]
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == METRICS_PORT and port["targetPort"] == "metrics"
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # Prometheus discovers the pods by the Service's SRV records.
    cfg = _yaml(PROM / "prometheus-k8s.yml")
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "riskwatch")
    (sd,) = job["dns_sd_configs"]
    namespace = service["metadata"]["namespace"]
    assert sd["names"] == [
        f"_{port['name']}._tcp.{service['metadata']['name']}.{namespace}.svc.cluster.local"
    ]
    assert sd["type"] == "SRV"
