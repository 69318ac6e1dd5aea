"""deploy/ works as committed: every file is checked by the tool its consumer uses, offline.

- the Dockerfile by the official Dockerfile parser (the ``dockerfile`` package wraps BuildKit's), and for the
  properties ops rely on: small base, non-root, one image whose command is any Procfile line;
- docker-compose.yml against the Compose Specification schema (check-jsonschema's vendored copy);
- the Kubernetes manifests against the Kubernetes OpenAPI schemas (kubernetes-validate, bundled, strict);
- the Prometheus configuration, alert rules and their unit tests by ``promtool``;
- the Grafana dashboard and its provisioning for what Grafana needs to load them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dockerfile
import kubernetes_validate
import pytest
import yaml
from ops_support import promtool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"
KUBERNETES_VERSION = "1.30.0"


def procfile() -> dict[str, list[str]]:
    """Procfile process -> argv, with ``${PORT:-8080}`` as the port the deployments use."""
    found = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if command.strip():
            found[name.strip()] = command.replace("${PORT:-8080}", "8080").split()
    return found


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# -- Dockerfile -------------------------------------------------------------------------------------------------

def test_the_dockerfile_parses_and_builds_a_small_non_root_image_for_every_process() -> None:
    commands = dockerfile.parse_file(str(DEPLOY / "Dockerfile"))
    stages = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    assert len(stages) == 2, "a build stage for wheels and a runtime stage without build tools or sources"
    runtime = commands[stages[-1]:]
    assert all(c.value[0].endswith("-slim") for c in commands if c.cmd == "FROM")
    users = [c.value[0] for c in runtime if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as a non-root user"
    assert not any(c.cmd == "ENTRYPOINT" for c in runtime), "the command is the Procfile line, whatever it is"
    cmd = next(c for c in reversed(runtime) if c.cmd == "CMD")
    assert cmd.json and list(cmd.value[:2]) == ["sendq", "web"]
    assert not any(c.cmd == "COPY" and "--from" not in " ".join(c.flags) for c in runtime), \
        "the runtime stage takes only the built wheels, never the source tree"
    env = " ".join(" ".join(c.value) for c in commands if c.cmd in ("ENV", "ARG"))
    assert "TELNYX_API_KEY" not in env and "DATABASE_URL" not in env, "no secret is baked into the image"
    copied = {c.value[0] for c in commands if c.cmd == "COPY"}
    packages = re.findall(r'include = \[(.*?)\]', (ROOT / "pyproject.toml").read_text())[0]
    for package in re.findall(r'"(\w+)\*"', packages):
        assert package in copied, f"the build stage copies {package}/"


def test_the_build_context_is_only_what_the_image_needs() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*", "everything is excluded by default"
    assert {"!pyproject.toml", "!README.md", "!worker/", "!producers/"} <= set(ignore)


# -- docker compose ---------------------------------------------------------------------------------------------

def test_compose_file_is_valid_against_the_compose_specification() -> None:
    found = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                            str(DEPLOY / "docker-compose.yml")], capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stdout + found.stderr


def test_compose_runs_every_procfile_process_and_what_they_need() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "prometheus", "grafana", "simulator"} <= services.keys()
    for name, argv in procfile().items():
        assert services[name]["command"] == argv, f"{name} runs its Procfile line"
        assert services[name]["image"] == services["web"]["image"], "one image for every process"
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://redis:")
        assert "healthcheck" in services[name]
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert services["simulator"]["profiles"] == ["simulator"]
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (DEPLOY / source).exists(), f"compose mounts {source}, which is missing"


# -- Kubernetes -------------------------------------------------------------------------------------------------

def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found = {}
    for name in kustomization["resources"]:
        for doc in yaml_documents(K8S / name):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_every_manifest_is_valid_kubernetes() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}, "kustomization lists every file"
    for (kind, name), doc in manifests().items():
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}/{name}: {exc.message} at {'.'.join(map(str, exc.path))}")


def test_one_deployment_per_process_with_probes_resources_and_secret_references() -> None:
    found = manifests()
    assert ("ConfigMap", "sendq-config") in found
    assert ("Service", "sendq-web") in found
    for name, argv in procfile().items():
        deployment = found[("Deployment", f"sendq-{name}")]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == argv, f"{name} runs its Procfile line"
        # Liveness asks the process alone: a restart cannot bring back a database. web takes webhooks while Redis
        # or the store answers, so it stays in its Service through an outage of one.
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez", f"{name}: liveness on /livez"
        ready = "/livez" if name == "web" else "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == ready, f"{name}: readiness on {ready}"
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        secrets = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert {"TELNYX_API_KEY", "TELNYX_PUBLIC_KEY", "DATABASE_URL", "REDIS_URL"} <= secrets
        assert pod["securityContext"]["runAsNonRoot"] is True
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        port = ports[container["livenessProbe"]["httpGet"]["port"]]
        assert annotations["prometheus.io/port"] == str(port), f"{name}: Prometheus scrapes the port that serves it"
        assert pod["terminationGracePeriodSeconds"] >= 30, "SIGTERM gives in-flight sends time to finish"
    budgets = [doc for (kind, _), doc in found.items() if kind == "PodDisruptionBudget"]
    assert {b["metadata"]["name"] for b in budgets} >= {"sendq-web", "sendq-worker", "sendq-urgent"}
    assert not any(kind == "Secret" for kind, _ in found), "secrets are referenced, never committed"


def test_kustomize_renders_valid_kubernetes() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH; each manifest is validated on its own above")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert len(docs) == len(manifests())
    for doc in docs:
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "sendq"
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# -- Prometheus -------------------------------------------------------------------------------------------------

def test_prometheus_configuration_and_rules_are_valid() -> None:
    tool = promtool()
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        found = subprocess.run([tool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
        assert found.returncode == 0, found.stdout + found.stderr


def test_every_alert_rule_passes_its_unit_tests() -> None:
    found = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS, capture_output=True,
                           text=True, timeout=120)
    assert found.returncode == 0, found.stdout + found.stderr


def test_every_alert_has_a_firing_test_and_a_readme_entry() -> None:
    alerts = {r["alert"] for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    firing = {check["alertname"] for test in tests for check in test["alert_rule_test"] if check["exp_alerts"]}
    assert alerts == firing, f"alerts without a test that makes them fire: {sorted(alerts - firing)}"
    readme = (ROOT / "README.md").read_text()
    for alert in alerts:
        assert f"`{alert}`" in readme, f"README's Operations section says what to do about {alert}"


# -- Grafana ----------------------------------------------------------------------------------------------------

def test_the_dashboard_and_its_provisioning_load_in_grafana() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "sendq.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} fits the grid"
        for target in panel.get("targets", []):
            assert target["expr"].strip() and target["refId"]
    datasources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert variable["current"]["value"] == datasources["datasources"][0]["uid"]
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "sendq.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounted = {v.split(":")[1] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./")}
    assert provider["providers"][0]["options"]["path"] in mounted
