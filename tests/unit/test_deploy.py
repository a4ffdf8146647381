"""Static checks of deploy/ (Dockerfile, compose, Kubernetes, systemd): no Docker, no cluster, no network.

Besides reading the files, it runs the offline tools this machine has: ``kubectl kustomize`` on deploy/k8s,
kubernetes-validate (dev extra) on what it builds, and ``systemd-analyze verify`` on the units; a test skips,
saying why, only when its tool is not installed. The image build and the compose run are
deploy/check.sh (``make deploy-check``).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchq.config import Settings
from batchq.local.serve import REDIS_STOP_MIN_S
from batchq.observability import metrics
from batchq.storage import keys
from tests.unit.test_observability import StandInRedis

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"

PREFIX = "BATCHQ_"
SETTINGS = {PREFIX + name.upper(): name for name in Settings.model_fields}
SECRETS = {"BATCHQ_API_KEYS", "BATCHQ_UPSTREAM_API_KEY", "BATCHQ_WEBHOOK_SECRET"}
MAYBE_SECRET = {"BATCHQ_UPSTREAMS"}  # routes usually carry api keys
# .env.example values that are deployment choices, not the code defaults.
DEPLOYMENT_VALUES = {"BATCHQ_REDIS_URL", "BATCHQ_DATA_DIR", "BATCHQ_API_KEYS", "BATCHQ_UPSTREAM_URL"}
# Set by each deployment file itself; commented out in .env.example, which the systemd units read.
SET_BY_EACH_DEPLOYMENT = {"BATCHQ_REDIS_URL", "BATCHQ_DATA_DIR"}
NAME = re.compile(r"(?<![A-Za-z0-9_])BATCHQ_[A-Z][A-Z0-9_]*[A-Z0-9]")
ENV_LINE = re.compile(r"^(#\s*)?(BATCHQ_[A-Z0-9_]+)=(.*)$")

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
K8S_FILES = sorted(K8S.glob("*.yaml"))
UNIT_FILES = sorted(SYSTEMD.glob("*.service"))
ALL_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file())
DEPLOYED_ROLES = ("api", "worker", "scheduler")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


@cache
def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for path in K8S_FILES for doc in docs(path)}


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return loaded


def env_example() -> list[tuple[bool, str, str]]:
    """(commented, name, value) for every ``BATCHQ_X=`` line of .env.example."""
    lines = (DEPLOY / ".env.example").read_text(encoding="utf-8").splitlines()
    return [(bool(m[1]), m[2], m[3]) for m in map(ENV_LINE.match, lines) if m]


def settings_from(values: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings from exactly these BATCHQ_* strings, parsed as the environment delivers them."""
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def default_of(name: str) -> Any:
    return Settings.model_fields[SETTINGS[name]].get_default(call_default_factory=True)


def test_the_deploy_tree_is_there() -> None:
    expected = {
        "Dockerfile", "compose.yaml", ".env.example", "README.md", "systemd/README.md",
        "systemd/batchq-api.service", "systemd/batchq-worker@.service", "systemd/batchq-scheduler.service",
        "k8s/kustomization.yaml", "k8s/namespace.yaml", "k8s/configmap.yaml", "k8s/secret.example.yaml",
        "k8s/pvc.yaml", "k8s/redis.yaml", "k8s/api.yaml", "k8s/worker.yaml", "k8s/worker-keda.yaml",
        "k8s/scheduler.yaml", "k8s/flower.yaml",
    }  # fmt: skip
    assert expected <= {str(p.relative_to(DEPLOY)) for p in ALL_FILES}


# --- YAML and Kubernetes ------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_parses(path: Path) -> None:
    assert docs(path), f"{rel(path)} has no YAML document"


@pytest.mark.parametrize("path", K8S_FILES, ids=rel)
def test_k8s_documents_are_named_objects(path: Path) -> None:
    for doc in docs(path):
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind"), f"{rel(path)}: apiVersion/kind missing"
        assert doc.get("metadata", {}).get("name"), f"{rel(path)}: metadata.name missing in a {doc['kind']}"
        if doc["kind"] not in ("Namespace", "Kustomization"):
            assert doc["metadata"].get("namespace") == "batchq", f"{rel(path)}: {doc['kind']} outside batchq"


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    (kustomization,) = docs(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert "secret.example.yaml" not in listed
    assert listed == {p.name for p in K8S_FILES} - {"kustomization.yaml", "secret.example.yaml"}


def pod_spec(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = k8s_objects()[(kind, name)]["spec"]["template"]["spec"]
    return spec


def test_k8s_config_and_secret_hold_valid_settings_in_the_right_place(monkeypatch: pytest.MonkeyPatch) -> None:
    config = k8s_objects()[("ConfigMap", "batchq-config")]["data"]
    secret = k8s_objects()[("Secret", "batchq-secrets")]["stringData"]
    assert all(isinstance(v, str) for v in [*config.values(), *secret.values()])
    assert not (SECRETS | MAYBE_SECRET) & set(config), "secrets belong in the Secret, not the ConfigMap"
    assert SECRETS <= set(secret) <= SECRETS | MAYBE_SECRET
    settings_from(config | secret, monkeypatch)


def test_k8s_roles_share_one_rwx_volume_at_the_data_dir() -> None:
    data_dir = k8s_objects()[("ConfigMap", "batchq-config")]["data"]["BATCHQ_DATA_DIR"]
    pvc = k8s_objects()[("PersistentVolumeClaim", "batchq-data")]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for role in DEPLOYED_ROLES:
        spec = pod_spec("Deployment", f"batchq-{role}")
        volumes = {v["name"]: v for v in spec["volumes"]}
        (container,) = spec["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts[data_dir]]["persistentVolumeClaim"]["claimName"] == "batchq-data", role
        assert container["args"][0] == role
        assert {"configMapRef": {"name": "batchq-config"}} in container["envFrom"]
        assert {"secretRef": {"name": "batchq-secrets"}} in container["envFrom"]


def test_k8s_api_probes_health() -> None:
    (container,) = pod_spec("Deployment", "batchq-api")["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"  # a Redis outage restarts no API pod
    assert container["args"][:5] == ["api", "--host", "0.0.0.0", "--port", "8000"]


def test_k8s_worker_concurrency_follows_the_setting_and_drains() -> None:
    spec = pod_spec("Deployment", "batchq-worker")
    (container,) = spec["containers"]
    args = container["args"]
    assert args[args.index("--concurrency") + 1] == "$(BATCHQ_WORKER_CONCURRENCY)"
    assert "BATCHQ_WORKER_CONCURRENCY" in k8s_objects()[("ConfigMap", "batchq-config")]["data"]
    assert spec["terminationGracePeriodSeconds"] > default_of("BATCHQ_UPSTREAM_TIMEOUT_S")
    assert "replicas" not in k8s_objects()[("Deployment", "batchq-worker")]["spec"], "leave replicas to KEDA"


def test_k8s_keda_scales_workers_on_the_waiting_lines() -> None:
    scaled = k8s_objects()[("ScaledObject", "batchq-worker")]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "batchq-worker"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 20)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == "max(batchq_lines_waiting)"  # the API's gauge, the same on every replica
    exposed = metrics.render_api_metrics(metrics.api_registry(StandInRedis()))[0].decode()
    assert "\nbatchq_lines_waiting " in exposed


def test_every_worker_consumes_the_control_and_the_line_queue() -> None:
    from workers.celery_app import celery_config

    config = celery_config(Settings(_env_file=None))  # type: ignore[call-arg]
    assert [q.name for q in config["task_queues"]] == [keys.CONTROL_QUEUE, keys.LINE_QUEUE]
    assert config["task_routes"]["batchq.finalize"] == {"queue": keys.CONTROL_QUEUE}
    assert config["task_default_queue"] == keys.LINE_QUEUE


def test_k8s_scheduler_is_single_and_redis_persists() -> None:
    assert k8s_objects()[("Deployment", "batchq-scheduler")]["spec"]["replicas"] == 1
    redis = k8s_objects()[("StatefulSet", "redis")]
    assert redis["spec"]["replicas"] == 1
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert "--appendonly" in container["args"]
    assert container["args"][container["args"].index("--appendonly") + 1] == "yes"


# --- Settings named anywhere in deploy/ ---------------------------------------------------------


@pytest.mark.parametrize("path", ALL_FILES, ids=rel)
def test_every_batchq_name_is_a_setting(path: Path) -> None:
    unknown = set(NAME.findall(path.read_text(encoding="utf-8"))) - set(SETTINGS)
    assert not unknown, f"{rel(path)} names settings that batchq.config.Settings does not have: {sorted(unknown)}"


def test_env_example_lists_every_setting_once() -> None:
    names = [name for _, name, _ in env_example()]
    assert len(names) == len(set(names)), "a setting is listed twice"
    assert set(names) == set(SETTINGS)


def test_env_example_comments_out_exactly_the_optional_and_the_per_deployment_settings() -> None:
    for commented, name, value in env_example():
        if name in SET_BY_EACH_DEPLOYMENT:
            # As the systemd EnvironmentFile, an uncommented line would override the units' own value.
            assert commented, f"{name}: each deployment sets it; leave it commented in .env.example"
            assert value in (str(default_of(name)), f"./{default_of(name)}"), f"{name}: show the code default"
            continue
        assert commented == (default_of(name) is None), name
        if commented:
            assert value == "", f"{name}: an optional setting is shown without a value"


def test_env_example_values_validate_and_match_the_code_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {name: value for commented, name, value in env_example() if not commented}
    settings = settings_from(values, monkeypatch)
    for name in set(values) - DEPLOYMENT_VALUES:
        assert getattr(settings, SETTINGS[name]) == default_of(name), f"{name} differs from the code default"


def test_the_wheel_carries_every_file_the_package_reads() -> None:
    """The image and systemd install batchq with pip (no checkout): non-Python files must be package data."""
    tracked = subprocess.run(["git", "ls-files", "batchq"], cwd=ROOT, capture_output=True, text=True, check=True)
    data_files = [Path(f) for f in tracked.stdout.split() if not f.endswith(".py")]
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["batchq"]
    missing = [str(f) for f in data_files if not any(f.relative_to("batchq").match(p) for p in patterns)]
    assert not missing, f"pyproject.toml [tool.setuptools.package-data] leaves out {missing}"


# --- Compose and the Dockerfile -----------------------------------------------------------------


def test_compose_has_every_service_and_healthchecks() -> None:
    services = compose()["services"]
    assert {"redis", "api", "worker", "scheduler", "flower"} <= set(services)
    assert services["api"]["healthcheck"]["test"]
    assert "/health" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])


def test_compose_roles_share_the_data_volume_and_wait_for_redis() -> None:
    services = compose()["services"]
    assert "data" in compose()["volumes"]
    for role in DEPLOYED_ROLES:
        service = services[role]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", role
        assert service["command"][0] == role
        env = service["environment"]
        assert f"data:{env['BATCHQ_DATA_DIR']}" in service["volumes"], role
        for required in ("BATCHQ_API_KEYS", "BATCHQ_UPSTREAM_URL"):
            assert env[required].startswith("${" + required + ":?"), f"{role}: {required} must be required"


def test_compose_worker_concurrency_matches_the_setting() -> None:
    worker = compose()["services"]["worker"]
    command = worker["command"]
    assert command[command.index("--concurrency") + 1] == worker["environment"]["BATCHQ_WORKER_CONCURRENCY"]
    assert "deploy" not in worker and "container_name" not in worker, "must stay scalable with --scale"


def test_compose_flower_runs_celery_flower() -> None:
    flower = compose()["services"]["flower"]
    assert flower["entrypoint"] == ["celery"]
    assert flower["command"][:3] == ["-A", "workers", "flower"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_runs_batchq_as_non_root() -> None:
    instructions = dockerfile_instructions()
    last = {op: arg for op, arg in instructions}  # the final stage's values win
    assert json.loads(last["ENTRYPOINT"]) == ["batchq"]
    assert json.loads(last["CMD"]) == ["api", "--host", "0.0.0.0", "--port", "8000"]
    assert last["USER"].split(":")[0] not in ("root", "0")
    assert "8000" in last["EXPOSE"].split()
    assert "VOLUME" not in last, "an image VOLUME gives Flower and every one-off run an anonymous volume"
    assert "BATCHQ_DATA_DIR=/data" in last["ENV"].split()
    assert "/health" in last["HEALTHCHECK"] and "CMD" in last["HEALTHCHECK"].split()
    assert instructions[0] == ("ARG", "PYTHON_VERSION=3.11")
    assert all(arg.startswith("python:${PYTHON_VERSION}-slim") for op, arg in instructions if op == "FROM")
    assert any(op == "RUN" and "flower" in arg for op, arg in instructions)


def test_dockerfile_copies_only_what_exists() -> None:
    for op, arg in dockerfile_instructions():
        if op == "COPY" and not arg.startswith("--from"):
            *sources, _ = arg.split()
            for source in sources:
                assert list(ROOT.glob(source.rstrip("/"))) or "*" in source, f"COPY {source}: missing"


# --- systemd --------------------------------------------------------------------------------------


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(path.read_text(encoding="utf-8"))
    return parser


@pytest.mark.parametrize("path", UNIT_FILES, ids=rel)
def test_systemd_unit_runs_batchq(path: Path) -> None:
    parsed = unit(path)
    assert {"Unit", "Service", "Install"} <= set(parsed.sections())
    service = parsed["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "batchq" and argv[1] in ("api", "worker", "scheduler", "serve"), argv
    assert service["User"] == "batchq"
    assert service["EnvironmentFile"] == "/etc/batchq/batchq.env"
    assert service["Restart"] in ("on-failure", "always")
    assert parsed["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("path", UNIT_FILES, ids=rel)
def test_systemd_every_variable_of_execstart_has_a_default(path: Path) -> None:
    """An EnvironmentFile without the variable must not leave ExecStart an empty argument (a restart loop)."""
    text = path.read_text(encoding="utf-8")
    defaults = set(re.findall(r"^Environment=(\w+)=\S", text, re.M))
    used = set(re.findall(r"\$\{(\w+)\}", unit(path)["Service"]["ExecStart"]))
    assert used <= defaults, f"no Environment= default for {sorted(used - defaults)}"


def test_systemd_serve_stops_in_order_and_lets_lines_finish() -> None:
    parsed = unit(SYSTEMD / "batchq-serve.service")
    service = parsed["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[1] == "serve" and argv[argv.index("--concurrency") + 1] == "${BATCHQ_WORKER_CONCURRENCY}"
    assert service["KillMode"] == "mixed", "SIGTERM to the supervisor alone: it stops its children in order"
    stop_timeout = float(argv[argv.index("--stop-timeout") + 1])
    assert default_of("BATCHQ_UPSTREAM_TIMEOUT_S") <= stop_timeout
    assert stop_timeout + REDIS_STOP_MIN_S < int(service["TimeoutStopSec"]), "Redis's own share is never cut"


def test_systemd_worker_is_templated_and_drains() -> None:
    parsed = unit(SYSTEMD / "batchq-worker@.service")
    argv = shlex.split(parsed["Service"]["ExecStart"])
    assert argv[1] == "worker"
    assert argv[argv.index("--concurrency") + 1] == "${BATCHQ_WORKER_CONCURRENCY}"
    assert "%i" in argv[argv.index("--hostname") + 1], "instances on one host need distinct node names"
    assert int(parsed["Service"]["TimeoutStopSec"]) > default_of("BATCHQ_UPSTREAM_TIMEOUT_S")


def test_dockerfile_builds_offline_and_as_a_regular_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert not re.search(r"^#\s*syntax\s*=", text, re.M), "a syntax directive makes BuildKit fetch a frontend image"
    for op, arg in dockerfile_instructions():
        if op == "RUN" and "useradd" in arg:
            assert "--system" not in arg, "useradd --system warns for uid 10001 (above SYS_UID_MAX)"
    assert (DEPLOY / "Dockerfile.dockerignore").is_file()


# --- Compose, as `compose config` would read it -------------------------------------------------

SERVICE_KEYS = {
    "image", "build", "command", "entrypoint", "environment", "env_file", "ports", "volumes", "depends_on",
    "healthcheck", "restart", "init", "read_only", "tmpfs", "profiles", "stop_grace_period", "pull_policy",
}  # fmt: skip
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "disable"}
DURATION = re.compile(r"^(\d+(h|m|s|ms))+$")
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}; $$ stays for the container's shell."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match[1], match[2], match[3]
        if op == ":?" and not env.get(name):
            raise LookupError(f"{name}: {arg}")
        if op == ":-" and not env.get(name):
            return str(arg)
        return env.get(name, "")

    return VARIABLE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def test_compose_config_resolves_and_uses_known_keys() -> None:
    env = {"BATCHQ_API_KEYS": "sk-test", "BATCHQ_UPSTREAM_URL": "http://mock-upstream:9000"}
    services = interpolate(compose(), env)["services"]
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, f"{name}: unknown keys {set(service) - SERVICE_KEYS}"
        check = service["healthcheck"]  # every service: deploy/check.sh waits for each
        assert set(check) <= HEALTHCHECK_KEYS, f"{name}: {set(check) - HEALTHCHECK_KEYS} (podman 4.3 lacks them)"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert all(DURATION.match(check[k]) for k in ("interval", "timeout", "start_period")), name
    for required in env:
        with pytest.raises(LookupError, match=required):
            interpolate(compose(), {k: v for k, v in env.items() if k != required})


def test_compose_builds_the_image_once_and_runs_it_read_only() -> None:
    services = compose()["services"]
    built = {name for name, service in services.items() if "build" in service}
    assert built == {"api"}, "one build of batchq:latest, not one per service"
    assert services["api"]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY / ".." / "deploy/Dockerfile").is_file()
    redis_set = {"redis"} | SENTINEL_PROFILE
    for name, service in services.items():
        if name in redis_set:
            assert service["image"] == "redis:7", name
        else:
            assert service["image"] == "batchq:latest", name
            assert service["read_only"] is True and service["tmpfs"] == ["/tmp"], name


SENTINEL_PROFILE = {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}


def test_compose_sentinel_profile_is_a_replica_and_three_sentinels_on_redis() -> None:
    services = compose()["services"]
    profiled = {name for name, service in services.items() if "sentinel" in service.get("profiles", [])}
    assert profiled == SENTINEL_PROFILE, "the Sentinel services run only with --profile sentinel"
    replica = services["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1 :][:2] == ["redis", "6379"]
    assert replica[replica.index("--appendonly") + 1] == "yes"
    for n in (1, 2, 3):
        sentinel = services[f"sentinel-{n}"]
        script = sentinel["command"][-1]
        assert "sentinel monitor batchq redis 6379 2" in script and script.endswith("--sentinel")
        assert sentinel["environment"]["SENTINEL_NAME"] == f"sentinel-{n}"
        assert sentinel["volumes"] == [f"sentinel-{n}:/data"], "Sentinel rewrites its config: one volume each"
    url = "sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/batchq"
    assert url in (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    assert Settings(_env_file=None, redis_url=url).redis_url == url  # type: ignore[call-arg]


def test_compose_worker_healthcheck_names_the_node_by_hostname() -> None:
    (test,) = compose()["services"]["worker"]["healthcheck"]["test"][1:]
    assert "celery@$$(hostname)" in test, "podman sets no HOSTNAME: ask hostname(1)"
    assert "HOSTNAME" not in test


# --- The offline tools: kustomize, kubernetes-validate, systemd-analyze -------------------------

SCALED_OBJECT_SPEC = {  # the fields of KEDA's ScaledObject (keda.sh/v1alpha1) that worker-keda.yaml may use
    "type": "object",
    "required": ["scaleTargetRef", "triggers"],
    "additionalProperties": False,
    "properties": {
        "scaleTargetRef": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {k: {"type": "string"} for k in ("apiVersion", "kind", "name", "envSourceContainerName")},
        },
        **{
            k: {"type": "integer", "minimum": 0}
            for k in ("minReplicaCount", "maxReplicaCount", "idleReplicaCount", "pollingInterval", "cooldownPeriod")
        },
        "advanced": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "restoreToOriginalReplicaCount": {"type": "boolean"},
                "horizontalPodAutoscalerConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                },
            },
        },
        "triggers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type", "metadata"],
                "additionalProperties": False,
                "properties": {
                    "type": {"type": "string"},
                    "name": {"type": "string"},
                    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    "authenticationRef": {"type": "object", "required": ["name"]},
                },
            },
        },
    },
}


def tool(name: str) -> str:
    """A tool on PATH or in the venv; skips, saying why, when the machine has none."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip(f"{name} is not installed (kubectl comes with this machine kind; systemd-analyze: apt systemd)")
    return found


@cache
def kustomized() -> list[dict[str, Any]]:
    built = subprocess.run([tool("kubectl"), "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def test_kustomize_builds_every_listed_manifest() -> None:
    built = {(doc["kind"], doc["metadata"]["name"]) for doc in kustomized()}
    assert built == set(k8s_objects()) - {("Kustomization", "batchq"), ("Secret", "batchq-secrets")}
    assert all(doc["metadata"].get("namespace") == "batchq" for doc in kustomized() if doc["kind"] != "Namespace")


@pytest.mark.parametrize("version", ["1.28.0", "1.37.0"])
def test_k8s_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]'")
    from jsonschema import validate

    (secret,) = docs(K8S / "secret.example.yaml")
    for doc in [*kustomized(), secret]:
        if doc["apiVersion"] == "keda.sh/v1alpha1":  # a CRD: no schema ships with kubernetes-validate
            assert doc["kind"] == "ScaledObject"
            validate(doc["spec"], SCALED_OBJECT_SPEC)
            behavior = doc["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
            hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"}}
            hpa["spec"] = {
                "scaleTargetRef": {"kind": "Deployment", "name": "x"},
                "maxReplicas": 1,
                "behavior": behavior,
            }
            kubernetes_validate.validate(hpa, version, strict=True)
        else:
            kubernetes_validate.validate(doc, version, strict=True)


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    """The units as installed, but ExecStart's /opt/batchq/bin/batchq (absent here) is a stand-in."""
    analyze = tool("systemd-analyze")
    (tmp_path / "bin").mkdir()
    stand_in = tmp_path / "bin" / "batchq"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    units = []
    for path in UNIT_FILES:
        units.append(tmp_path / path.name)
        units[-1].write_text(path.read_text(encoding="utf-8").replace("/opt/batchq/bin/", f"{tmp_path}/bin/"))
    verified = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr


def test_make_deploy_check_runs_the_check_script() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^deploy-check:.*\n\tbash deploy/check\.sh$", makefile, re.M)
    syntax = subprocess.run(["bash", "-n", str(DEPLOY / "check.sh")], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    smoke = subprocess.run([sys.executable, str(DEPLOY / "smoke.py"), "--help"], capture_output=True, text=True)
    assert smoke.returncode == 0 and "--flower" in smoke.stdout, smoke.stderr
