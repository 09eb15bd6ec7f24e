"""deploy/ (Kubernetes manifests, Prometheus rules and scrape config, Grafana dashboard) agrees with the code.

No cluster runs here: every YAML must parse, every Kubernetes object be well formed, the kustomization list files
that exist, the commands parse with the real CLIs (Celery's worker, nanobot's gateway), the config the ConfigMap
and the environment give be a valid nanobot config with no secret in it, nothing be exposed outside the cluster,
and every metric name in the rules, the dashboard and the autoscalers' queries be one that nanobot exports.
`promtool` (Debian's `prometheus` package, installed by scripts/promtool) checks and unit-tests the rule file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
from prometheus_client.metrics import MetricWrapperBase

from nanobot.cli.commands import app as nanobot_cli
from nanobot.config.loader import _NOT_OVERRIDES, ENV_CONFIG_PATH, ENV_PREFIX, apply_env_overrides, unknown_keys
from nanobot.config.schema import Config

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
RULES = DEPLOY / "prometheus" / "nanobot-rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "nanobot-rules-test.yml"
DASHBOARD = DEPLOY / "grafana" / "nanobot-dashboard.json"
# Files of deploy/kubernetes that kustomization.yaml leaves out on purpose.
NOT_IN_KUSTOMIZATION = {"kustomization.yaml", "secret.example.yaml", "hpa.yaml", "prometheus-adapter-rules.yaml"}
# Helm values, not a Kubernetes object.
NOT_OBJECTS = {"prometheus-adapter-rules.yaml"}
# Series that Prometheus or kube-state-metrics provide, not nanobot.
EXTERNAL_METRICS = {"up", "kube_pod_status_ready"}
PROMQL_FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile", "absent", "vector",
    "by", "without", "on", "ignoring", "and", "or", "unless", "le", "bool",
}


# ---------------------------------------------------------------------------- loading
def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def objects() -> list[dict[str, Any]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name not in NOT_OBJECTS:
            found.extend(documents(path))
    return found


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects() if o.get("kind") == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def literal_env(ctr: dict[str, Any]) -> dict[str, str]:
    """The container's variables with a literal value, `$(VAR)` references replaced by a stand-in."""
    env = {}
    for item in ctr.get("env") or []:
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: f"stand-in-{m.group(1).lower()}", str(item["value"]))
    return env


def configmap_config() -> dict[str, Any]:
    return json.loads(find("ConfigMap", "nanobot-config")["data"]["config.json"])


def config_of(deployment: dict[str, Any]) -> Config:
    """The config a container sees: the ConfigMap's file, then its NANOBOT_* variables over it."""
    raw = configmap_config()
    env = {k: v for k, v in literal_env(container(deployment)).items()
           if k.startswith(ENV_PREFIX) and k not in _NOT_OVERRIDES}
    apply_env_overrides(raw, env)
    assert unknown_keys(Config, raw) == []
    return Config.model_validate(raw)


def port_number(ctr: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in ctr.get("ports") or []}
    assert port in named, f"no container port named {port!r}"
    return int(named[port])


@pytest.fixture(scope="module")
def nanobot_celery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """nanobot_celery imported against an empty config file, never ~/.nanobot."""
    config = tmp_path_factory.mktemp("config") / "config.json"
    config.write_text("{}", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_CONFIG_PATH, str(config))
        import nanobot_celery

        yield nanobot_celery


# ---------------------------------------------------------------------------- parsing
def test_there_are_manifests() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in yaml_files()}
    for needed in ("kubernetes/kustomization.yaml", "kubernetes/keda-scaledobject.yaml", "kubernetes/hpa.yaml",
                   "prometheus/nanobot-rules.yml", "prometheus/prometheus.yml"):
        assert needed in names, needed
    assert DASHBOARD.exists()


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_parses(path: Path) -> None:
    assert documents(path), f"{path} is empty"


def test_every_kubernetes_object_is_well_formed() -> None:
    found = objects()
    assert found
    for obj in found:
        assert isinstance(obj, dict), obj
        assert obj.get("apiVersion") and obj.get("kind"), obj
        assert (obj.get("metadata") or {}).get("name"), obj
        if obj["kind"] != "Namespace" and obj["kind"] != "Kustomization":
            # The kustomization's `namespace:` places them; a hard-coded other namespace would escape it.
            assert obj["metadata"].get("namespace") in (None, "nanobot"), obj["metadata"]


def test_kustomization_lists_files_that_exist() -> None:
    kustomization = documents(K8S / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    for name in resources:
        assert (K8S / name).is_file(), f"kustomization.yaml lists {name}, which does not exist"
    left_out = {p.name for p in K8S.glob("*.yaml")} - set(resources)
    assert left_out <= NOT_IN_KUSTOMIZATION, f"not in kustomization.yaml: {sorted(left_out - NOT_IN_KUSTOMIZATION)}"
    assert "secret.example.yaml" not in resources, "a placeholder password must never be deployed"
    assert not {"hpa.yaml", "keda-scaledobject.yaml"} <= set(resources), "two autoscalers on one Deployment"
    images = {i["name"] for i in kustomization.get("images") or []}
    for obj in objects():
        if obj["kind"] == "Deployment":
            image = container(obj)["image"]
            assert image in images or ":" in image, f"{obj['metadata']['name']}: image {image} neither set nor pinned"


def test_kustomize_builds() -> None:
    """`kubectl kustomize` (kustomize built into kubectl) renders every listed object into the namespace."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    listed = [o for name in documents(K8S / "kustomization.yaml")[0]["resources"] for o in documents(K8S / name)]
    assert len(rendered) == len(listed)
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "nanobot", obj["metadata"]


# ---------------------------------------------------------------------------- config and secrets
def test_configmap_is_a_distributed_config_without_secrets() -> None:
    raw = configmap_config()
    assert unknown_keys(Config, raw) == []
    config = Config.model_validate(raw)
    assert config.bus.backend == "celery" and config.sessions.backend == "redis"
    assert config.bus.run_embedded_worker is False
    assert config.channels.api.enabled and config.channels.api.host == "0.0.0.0"
    assert config.gateway.host == "0.0.0.0"
    assert config.bus.worker.metrics_host == "0.0.0.0" and config.bus.worker.metrics_port
    assert config.workspace_path.is_relative_to("/data")
    assert config.tools.exec.sandbox == "bwrap", "fail closed: exec refuses commands until bwrap can run"
    assert urlsplit(config.bus.redis_url).password is None
    assert not config.channels.api.api_key and not config.channels.api.keys
    for name, provider in config.providers:
        assert not provider.api_key, f"providers.{name}.apiKey in a ConfigMap"


def test_secret_references_name_the_template_keys() -> None:
    template = documents(K8S / "secret.example.yaml")[0]
    assert template["kind"] == "Secret" and template["metadata"]["name"] == "nanobot-secrets"
    keys = set(template["stringData"])
    referenced = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("secretKeyRef") or node.get("secret")
            if isinstance(ref, dict) and ref.get("name", ref.get("secretName")) is not None:
                assert ref.get("name", ref.get("secretName")) == "nanobot-secrets", ref
                referenced.update([ref["key"]] if "key" in ref else [i["key"] for i in ref.get("items", [])])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for obj in objects():
        walk(obj)
    assert referenced and referenced <= keys, sorted(referenced - keys)


@pytest.mark.parametrize("name", ["gateway", "worker", "flower"])
def test_redis_url_comes_from_the_secret(name: str) -> None:
    ctr = container(find("Deployment", name))
    env = ctr["env"]
    names = [item["name"] for item in env]
    url = next(item for item in env if item["name"] == "NANOBOT_BUS__REDIS_URL")
    assert url["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
    password = next(item for item in env if item["name"] == "REDIS_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "nanobot-secrets", "key": "redis-password"}
    assert names.index("REDIS_PASSWORD") < names.index("NANOBOT_BUS__REDIS_URL"), "$(VAR) needs VAR defined first"
    find("Service", "redis")


def test_no_secret_in_a_literal_value() -> None:
    secret = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|BASIC_AUTH", re.IGNORECASE)
    for obj in objects():
        if obj["kind"] != "Deployment":
            continue
        for item in container(obj).get("env") or []:
            if secret.search(item["name"]) and "value" in item:
                assert "$(" in item["value"], f"{obj['metadata']['name']}: {item['name']} has a literal value"


# ---------------------------------------------------------------------------- workloads
def test_gateway(nanobot_celery: ModuleType) -> None:
    deployment = find("Deployment", "gateway")
    ctr = container(deployment)
    argv = ctr["command"]
    assert argv[0] == "nanobot"
    sub = typer.main.get_command(nanobot_cli).commands[argv[1]]
    params = sub.make_context(argv[1], argv[2:]).params
    assert params["bus"] == "celery" and params["embedded_worker"] is False
    config = config_of(deployment)
    assert config.bus.run_embedded_worker is False
    env = {item["name"]: item for item in ctr["env"]}
    assert env["NANOBOT_BUS__GATEWAY_NAME"]["value"] == "$(POD_NAME)"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    ready, live = ctr["readinessProbe"]["httpGet"], ctr["livenessProbe"]["httpGet"]
    assert ready["path"] == "/ready" and live["path"] == "/health"
    assert port_number(ctr, ready["port"]) == port_number(ctr, live["port"]) == config.gateway.port
    assert config.channels.api.port in {p["containerPort"] for p in ctr["ports"]}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.gateway.port)


def test_worker(nanobot_celery: ModuleType) -> None:
    from celery.bin.worker import worker as celery_worker

    import celeryconfig
    from nanobot_celery.routing import all_queues
    from nanobot_celery.worker import worker_argv

    deployment = find("Deployment", "worker")
    ctr = container(deployment)
    argv = ctr["command"]
    assert argv[:4] == ["celery", "-A", "nanobot_celery", "worker"], argv
    assert "--autoscale=10,2" in argv
    params = celery_worker.make_context("worker", argv[4:], obj=SimpleNamespace(app=nanobot_celery.app)).params
    assert params["autoscale"] == (10, 2)
    assert params["pool"].__module__.endswith("prefork"), "--autoscale only works with the prefork pool"
    config = config_of(deployment)
    expected = all_queues(config.bus.shards, config.bus.key_prefix)
    assert params["queues"] and list(params["queues"]) == expected, "every shard queue"
    assert "--hostname=worker@%h" in argv and params["hostname"].startswith("worker@"), "worker@<pod name>"
    # What `nanobot worker` would run, less the interpreter and the pool it picks itself.
    expected = {a for a in worker_argv(config, name="worker@%h") if a.startswith("--") and not a.startswith("--pool")}
    assert expected <= set(argv), sorted(expected - set(argv))

    assert config.bus.worker.metrics_host == "0.0.0.0"
    for probe in ("livenessProbe", "readinessProbe"):
        get = ctr[probe]["httpGet"]
        assert get["path"] == "/health" and port_number(ctr, get["port"]) == config.bus.worker.metrics_port == 9810
    spec = deployment["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > celeryconfig.worker_soft_shutdown_timeout
    resources = ctr["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]


def test_every_pod_is_locked_down() -> None:
    """Non-root, no privilege escalation, no capabilities, read-only root fs, a seccomp profile, no host access."""
    for obj in objects():
        if obj["kind"] != "Deployment":
            continue
        name = obj["metadata"]["name"]
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost"), name
        assert pod.get("automountServiceAccountToken") is False, name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key), f"{name}: {key}"
        for ctr in pod["containers"]:
            sc = ctr["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged"), name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), name
            assert ctr.get("resources", {}).get("limits", {}).get("memory"), f"{name}: no memory limit"


def test_nothing_is_exposed_outside_the_cluster() -> None:
    for obj in objects():
        assert obj["kind"] not in ("Ingress", "Route"), "expose the API with your own Ingress and TLS"
        if obj["kind"] == "Service":
            assert obj["spec"].get("type", "ClusterIP") == "ClusterIP", obj["metadata"]["name"]
            assert not obj["spec"].get("externalIPs"), obj["metadata"]["name"]
        if obj["kind"] == "Deployment":
            for ctr in obj["spec"]["template"]["spec"]["containers"]:
                assert not any("hostPort" in p for p in ctr.get("ports") or []), obj["metadata"]["name"]


def test_flower_is_behind_basic_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    from flower.command import apply_env_options
    from flower.options import options

    service = find("Service", "flower")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    ctr = container(find("Deployment", "flower"))
    argv = ctr["command"]
    assert argv[:4] == ["celery", "-A", "nanobot_celery", "flower"]
    assert not any(a.startswith("--basic-auth") or a.startswith("--auth") for a in argv), "password in `ps`"
    defined = set(options._options)
    for arg in argv[4:]:
        assert arg.startswith("--") and arg[2:].split("=", 1)[0] in defined, f"not a Flower option: {arg}"
    env = {item["name"]: item for item in ctr["env"]}
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]["key"] == "flower-basic-auth"
    # Flower's own start-up code turns the variable into basic auth.
    for name in [n for n in os.environ if n.startswith("FLOWER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "admin:test-password")
    before = options.basic_auth
    try:
        apply_env_options()
        assert options.basic_auth == ["admin:test-password"]
    finally:
        options.basic_auth = before


def test_redis_requires_its_password_and_keeps_its_data() -> None:
    deployment = find("Deployment", "redis")
    ctr = container(deployment)
    script = " ".join(ctr["command"])
    assert "requirepass" in script and "/run/secrets/redis_password" in script
    assert ["--appendonly", "yes"] == ctr["args"][1:3] and "noeviction" in ctr["args"]
    probe = " ".join(ctr["livenessProbe"]["exec"]["command"])
    assert "REDISCLI_AUTH=" in probe and " -a " not in probe
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v)
    find("PersistentVolumeClaim", claim)
    policy = find("NetworkPolicy", "redis")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "redis"}


# ---------------------------------------------------------------------------- metric names
def exported_metric_names() -> set[str]:
    """Every series name the two metric modules can expose, from the prometheus_client objects themselves."""
    from nanobot.metrics import instruments
    from nanobot_celery import metrics

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gauge": ("",), "summary": ("_count", "_sum", "_created")}
    names: set[str] = set()
    for module in (instruments, metrics):
        for value in vars(module).values():
            if not isinstance(value, MetricWrapperBase):
                continue
            for family in value.collect():
                names.add(family.name)
                names.update(sample.name for sample in family.samples)
                names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def metric_names_in(expr: str) -> set[str]:
    """The series names a PromQL expression reads: identifiers followed by `{`, `[`, `)`, a space or an operator,
    other than functions, keywords and label names (inside `{...}` or `by (...)`)."""
    without_labels = re.sub(r"\{[^}]*\}", "{}", expr)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_labels)
    without_strings = re.sub(r'"[^"]*"', "", without_groupings)
    tokens = {
        m.group(0)
        for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", without_strings)
        if not without_strings[m.end():].lstrip().startswith("(")  # a function call
    }
    return tokens - PROMQL_FUNCTIONS


def rule_expressions() -> list[str]:
    rules = documents(RULES)[0]
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def autoscaler_expressions() -> list[str]:
    keda = find("ScaledObject", "worker")
    adapter = documents(K8S / "prometheus-adapter-rules.yaml")[0]
    exprs = [t["metadata"]["query"] for t in keda["spec"]["triggers"] if t["type"] == "prometheus"]
    for rule in adapter["rules"]["external"]:
        exprs += [rule["seriesQuery"], rule["metricsQuery"]]
    return exprs


def test_metric_name_extraction() -> None:
    assert metric_names_in('sum by (state) (max(nanobot_backlog_messages{state=~"a|b"})) > 0') == {
        "nanobot_backlog_messages"
    }
    assert metric_names_in("histogram_quantile(0.95, sum by (le) (rate(x_bucket[$__rate_interval])))") == {
        "x_bucket"
    }
    assert metric_names_in('up{job="a"} == 0 or absent(up{job="a"})') == {"up"}


@pytest.mark.parametrize("where", ["rules", "dashboard", "autoscalers"])
def test_every_metric_name_is_exported(where: str) -> None:
    exprs = {"rules": rule_expressions, "dashboard": dashboard_expressions, "autoscalers": autoscaler_expressions}
    exported = exported_metric_names()
    assert {"nanobot_turns_total", "nanobot_turn_duration_seconds_bucket", "celery_worker_up"} <= exported
    used: set[str] = set()
    for expr in exprs[where]():
        names = metric_names_in(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - exported - EXTERNAL_METRICS
        assert not unknown, f"{where}: {sorted(unknown)} not exported by nanobot (in {expr!r})"
        used |= names
    assert used & exported


def test_every_metric_is_documented() -> None:
    """docs/operations.md lists every metric the two modules define, under the name Prometheus shows."""
    from nanobot.metrics import instruments
    from nanobot_celery import metrics

    runbook = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for module in (instruments, metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                family = next(iter(value.collect()))
                shown = f"{family.name}_total" if family.type == "counter" else family.name
                assert f"`{shown}`" in runbook, f"{shown} is not documented in docs/operations.md"


def test_the_issue_alerts_are_there() -> None:
    exprs = " ".join(rule_expressions())
    for metric in ("nanobot_backlog_oldest_age_seconds", "nanobot_dead_letters", "celery_worker_up",
                   "nanobot_llm_requests_total", "nanobot_outbound_messages_total", 'up{job="nanobot-gateway"}'):
        assert metric in exprs, metric
    for group in documents(RULES)[0]["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_scrape_config_jobs_match_the_rules() -> None:
    scrape = documents(DEPLOY / "prometheus" / "prometheus.yml")[0]
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert jobs == {"nanobot-gateway", "nanobot-worker"}
    assert set(re.findall(r'job="([^"]+)"', " ".join(rule_expressions()))) <= jobs
    assert "nanobot-rules.yml" in scrape["rule_files"]


def test_autoscalers_scale_the_worker_deployment_on_the_backlog() -> None:
    keda = find("ScaledObject", "worker")
    spec = keda["spec"]
    assert spec["scaleTargetRef"]["name"] == "worker"
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0
    trigger = spec["triggers"][0]
    assert trigger["type"] == "prometheus" and "nanobot_backlog_messages" in trigger["metadata"]["query"]
    # One pod runs at most the top of its pool at once: the per-pod target is that number.
    pool_max = int(configmap_config()["bus"]["worker"]["autoscale"].split(",")[0])
    assert float(trigger["metadata"]["threshold"]) <= pool_max

    hpa = documents(K8S / "hpa.yaml")[0]
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"}
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "External"
    adapter = documents(K8S / "prometheus-adapter-rules.yaml")[0]
    assert metric["external"]["metric"]["name"] in {r["name"]["as"] for r in adapter["rules"]["external"]}
    assert float(metric["external"]["target"]["averageValue"]) <= pool_max


# ---------------------------------------------------------------------------- promtool
def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("promtool is missing under CI: scripts/promtool installs Debian's prometheus package")
    pytest.skip("promtool is not installed (bash scripts/promtool installs Debian's prometheus package)")


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_the_rules() -> None:
    """The alerts fire on the series they are written for (deploy/prometheus/nanobot-rules-test.yml)."""
    done = subprocess.run([promtool(), "test", "rules", str(RULES_TEST)], capture_output=True, text=True,
                          timeout=60, cwd=RULES_TEST.parent)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------- Grafana
def test_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["title"] and dashboard["uid"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["title"] and panel["gridPos"]["w"] > 0
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], f"panel {panel['title']!r} has no targets"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
    text = " ".join(dashboard_expressions())
    for needed in ("nanobot_inbound_messages_total", "nanobot_outbound_messages_total", "nanobot_turns_total",
                   "nanobot_turn_duration_seconds_bucket", "nanobot_lock_wait_seconds_bucket",
                   "nanobot_backlog_messages", "nanobot_backlog_oldest_age_seconds", "celery_queue_length",
                   "nanobot_dead_letters", "nanobot_llm_requests_total", "nanobot_llm_request_duration_seconds_bucket",
                   "nanobot_tool_calls_total", "celery_worker_up", "celery_worker_tasks_active",
                   "nanobot_redeliveries_total"):
        assert needed in text, needed
