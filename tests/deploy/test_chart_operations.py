"""The chart read by someone who runs GPU inference on Kubernetes (issue #13): each case rendered by Helm's engine
and asserted on what the cluster would do with it; values that would misbehave are refused at render time
(`helm template` fails with the message asserted here).

Rendered objects of the built-in kinds are also validated against the newest Kubernetes schema, strict."""

import copy
import json
import re
from functools import cache

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.deploy.test_deploy import (
    CUSTOM_KINDS,
    DASHBOARD,
    EVERYTHING,
    KUBE_STATE_METRICS,
    METRICS,
    NAMESPACE,
    REPO,
    env_of,
    promql_metrics,
    render,
    server_container,
)

LATEST = kubernetes_validate.utils.latest_version()
KEYS = {"apiKeys": {"enabled": True, "keys": ["k"]}}
MONITORED = {"metrics": {"serviceMonitor": {"enabled": True}}}


def objects(values: dict | None = None) -> dict[str, dict]:
    """Rendered objects by kind (one of each here), built-in kinds validated against the newest schema."""
    return copy.deepcopy(_objects(json.dumps(values, sort_keys=True)))


@cache
def _objects(values: str) -> dict[str, dict]:
    found = {}
    for path, text in render(json.loads(values)).items():
        if path.endswith("NOTES.txt"):
            continue
        for document in filter(None, yaml.safe_load_all(text)):
            if (document["apiVersion"], document["kind"]) not in CUSTOM_KINDS:
                kubernetes_validate.validate(document, LATEST, strict=True)
            assert document["kind"] not in found, document["kind"]
            found[document["kind"]] = document
    return found


def pod_spec(values: dict | None = None) -> dict:
    return objects(values)["Deployment"]["spec"]["template"]["spec"]


def refused(values: dict, message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def merged(*parts: dict) -> dict:
    result: dict = {}
    for part in parts:
        stack = [(result, copy.deepcopy(part))]
        while stack:
            target, source = stack.pop()
            for key, value in source.items():
                if isinstance(value, dict) and isinstance(target.get(key), dict):
                    stack.append((target[key], value))
                else:
                    target[key] = value
    return result


def gi(quantity: str) -> int:
    assert quantity.endswith("Gi"), quantity
    return int(quantity.removesuffix("Gi"))


# --------------------------------------------------------------------------------------------- rollout timing


def test_progress_deadline_covers_image_pull_download_and_startup_window():
    """A cold start must not be reported as a failed rollout: the deadline outlasts everything one new pod may
    take before it is ready."""
    for values, download_s in ((None, 0), ({"checkpoints": {"source": "download"}}, 3600)):
        deployment = objects(values)["Deployment"]
        container = server_container(deployment)
        startup = container["startupProbe"]
        window = startup["periodSeconds"] * startup["failureThreshold"]
        assert deployment["spec"]["progressDeadlineSeconds"] == 900 + download_s + window  # imagePullSeconds 900
        if download_s:
            (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
            assert init["command"][:2] == ["timeout", str(download_s)]  # the download is bounded by the same value
    longer = {"probes": {"startup": {"failureThreshold": 360}}}
    assert objects(longer)["Deployment"]["spec"]["progressDeadlineSeconds"] == 900 + 3600


# --------------------------------------------------------------------------------------------- shutdown


def longest_request_s(env: dict[str, str]) -> float:
    generation = max(float(env["SPIRITSERVE_GENERATION_TIMEOUT_S"]), float(env["SPIRITSERVE_MAX_SPEECH_SECONDS"]))
    return float(env["SPIRITSERVE_BODY_READ_TIMEOUT_S"]) + generation


def test_default_drain_covers_the_longest_request_and_grace_leaves_a_margin():
    pod = pod_spec()
    container = server_container(objects()["Deployment"])
    env = env_of(container)
    drain = float(env["SPIRITSERVE_DRAIN_TIMEOUT_S"])
    assert drain >= longest_request_s(env) >= 120 + 30
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] - (pre_stop + drain) >= 30  # uvicorn's and the engine's exit


def test_grace_follows_drain_and_the_chart_refuses_a_drain_shorter_than_a_request():
    values = {"config": {"generationTimeoutSeconds": 300, "drainTimeoutSeconds": 330}, "shutdownMarginSeconds": 45}
    assert pod_spec(values)["terminationGracePeriodSeconds"] == 10 + 330 + 45
    refused(
        {"config": {"drainTimeoutSeconds": 60}}, r"drainTimeoutSeconds \(60\) must cover the longest request, 150 s"
    )
    refused({"config": {"generationTimeoutSeconds": 300}}, "must cover the longest request, 330 s")
    refused({"config": {"maxSpeechSeconds": 200}}, "must cover the longest request, 230 s")
    refused({"shutdownMarginSeconds": 0}, "shutdownMarginSeconds must be at least 1")
    # The old explicit value would silently lose against the computed one: refused with where to go instead.
    refused({"terminationGracePeriodSeconds": 600}, "terminationGracePeriodSeconds is computed")


# --------------------------------------------------------------------------------------------- liveness, API keys


def test_liveness_restarts_a_pod_whose_engine_died():
    """/healthz answers 503 once the LM engine has failed (it never recovers): the liveness probe must use it, and
    restart the container within minutes, yet not on one slow answer."""
    routes = (REPO / "spiritserve" / "server" / "routes.py").read_text()
    assert '"/healthz"' in routes and "status_code=503" in routes[routes.index('"/healthz"') :]
    liveness = server_container(objects()["Deployment"])["livenessProbe"]
    assert liveness["httpGet"] == {"path": "/healthz", "port": "http"}
    assert liveness["failureThreshold"] >= 2 and liveness["timeoutSeconds"] < liveness["periodSeconds"]
    assert 30 <= liveness["periodSeconds"] * liveness["failureThreshold"] <= 300


def test_api_keys_rotate_without_a_restart():
    """The server re-reads SPIRITSERVE_API_KEYS_FILE when it changes; the kubelet swaps a Secret volume's files on
    update (not through subPath). So new keys change the Secret only, never the pod template: no rollout."""
    admission = (REPO / "spiritserve" / "server" / "admission.py").read_text()
    assert "def _refresh(self)" in admission  # ApiKeys: re-read when the file changes, at most once a second
    before, after = (
        objects(merged(KEYS, {"apiKeys": {"keys": ["a"]}})),
        objects(merged(KEYS, {"apiKeys": {"keys": ["b"]}})),
    )
    assert before["Secret"]["data"] != after["Secret"]["data"]
    assert before["Deployment"]["spec"]["template"] == after["Deployment"]["spec"]["template"]
    annotations = before["Deployment"]["spec"]["template"]["metadata"].get("annotations") or {}
    assert not any(key.startswith("checksum/") for key in annotations)
    container = server_container(before["Deployment"])
    keys_file = env_of(container)["SPIRITSERVE_API_KEYS_FILE"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "api-keys"]
    assert keys_file == f"{mount['mountPath']}/api-keys" and "subPath" not in mount


# --------------------------------------------------------------------------------------------- strategy, PDB


def test_default_rollout_needs_no_spare_gpu():
    strategy = objects()["Deployment"]["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def test_strategy_is_rendered_as_written():
    assert objects({"strategy": {"type": "Recreate"}})["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}
    spare = {"strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}
    assert objects(spare)["Deployment"]["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    refused({"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}}, "cannot both be 0")
    refused({"strategy": {"type": "Rolling"}}, "strategy.type must be RollingUpdate or Recreate")


def test_disruption_budget_is_rendered_as_written():
    assert objects()["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    blocked = objects({"podDisruptionBudget": {"maxUnavailable": 0}})["PodDisruptionBudget"]["spec"]
    assert blocked["maxUnavailable"] == 0 and "minAvailable" not in blocked
    floor = objects({"podDisruptionBudget": {"maxUnavailable": None, "minAvailable": "50%"}})["PodDisruptionBudget"]
    assert floor["spec"]["minAvailable"] == "50%" and "maxUnavailable" not in floor["spec"]
    refused({"podDisruptionBudget": {"minAvailable": 1}}, "exactly one of maxUnavailable and minAvailable")
    refused({"podDisruptionBudget": {"maxUnavailable": None}}, "exactly one of maxUnavailable and minAvailable")


# --------------------------------------------------------------------------------------------- autoscaling

KEDA = {"autoscaling": {"enabled": True, "engine": "keda"}}
HPA = {"autoscaling": {"enabled": True, "engine": "hpa"}}


def test_keda_default_query_sums_the_load_of_this_releases_pods_with_default_scraping():
    """Default scraping is the pods' prometheus.io annotations: the query may only use labels that scrape job
    attaches (namespace, pod), not the ServiceMonitor's `service`, and must count realtime sessions."""
    (trigger,) = objects(KEDA)["ScaledObject"]["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    assert promql_metrics(query) == {"spiritserve_load"} and "service=" not in query
    matchers = dict(re.findall(r'(\w+)=~?"([^"]*)"', query))
    assert matchers["namespace"] == NAMESPACE
    pods = re.compile(matchers["pod"])
    deployment = objects(KEDA)["Deployment"]["metadata"]["name"]
    assert pods.fullmatch(f"{deployment}-7d9f8b6c5d-x2k4q")  # <deployment>-<template hash>-<id>
    assert not pods.fullmatch(f"{deployment}-canary-7d9f8b6c5d-x2k4q")  # another release named after this one
    # The same query with the ServiceMonitor (which carries namespace and pod too), and no annotation double-scrape.
    (monitored,) = objects(merged(KEDA, MONITORED))["ScaledObject"]["spec"]["triggers"]
    assert monitored["metadata"]["query"] == query


def test_keda_refuses_what_could_never_scale():
    unscraped = merged(KEDA, {"metrics": {"scrapeAnnotations": False}})
    refused(unscraped, "nothing scrapes the pods")
    own_query = merged(
        unscraped, {"autoscaling": {"keda": {"query": "sum(rate(nginx_ingress_controller_requests[2m]))"}}}
    )
    assert objects(own_query)["ScaledObject"]  # the operator's own query: the chart cannot judge it
    refused(merged(KEDA, {"autoscaling": {"minReplicas": 0}}), "minReplicas 0 needs autoscaling.keda.query")
    refused(merged(HPA, {"autoscaling": {"minReplicas": 0}}), "minReplicas 0 needs engine keda")


def test_keda_cooldown_only_where_it_means_something():
    assert "cooldownPeriod" not in objects(KEDA)["ScaledObject"]["spec"]  # minReplicas 1: KEDA never scales to 0
    refused(
        merged(KEDA, {"autoscaling": {"keda": {"cooldownPeriod": 600}}}),
        "cooldownPeriod only applies when scaling to zero",
    )
    to_zero = merged(
        KEDA, {"autoscaling": {"minReplicas": 0, "keda": {"cooldownPeriod": 900, "query": "sum(x_requests)"}}}
    )
    scaled = objects(to_zero)["ScaledObject"]["spec"]
    assert scaled["minReplicaCount"] == 0 and scaled["cooldownPeriod"] == 900


def test_a_pod_full_of_voice_chat_sessions_scales_up():
    """HPA and KEDA scale on spiritserve_load; at config.realtimeMaxSessions per pod the average must exceed the
    target by more than the HPA's 10 % tolerance."""
    for values in (HPA, KEDA):
        found = objects(values)
        sessions = float(env_of(server_container(found["Deployment"]))["SPIRITSERVE_REALTIME_MAX_SESSIONS"])
        if "HorizontalPodAutoscaler" in found:
            (metric,) = found["HorizontalPodAutoscaler"]["spec"]["metrics"]
            assert metric["pods"]["metric"]["name"] == "spiritserve_load"
            target = float(metric["pods"]["target"]["averageValue"])
        else:
            (trigger,) = found["ScaledObject"]["spec"]["triggers"]
            target = float(trigger["metadata"]["threshold"])
        assert sessions / target > 1.1
    refused(merged(HPA, {"autoscaling": {"targetPerReplica": 16}}), r"targetPerReplica \(16\) must stay below")
    refused(merged(KEDA, {"config": {"realtimeMaxSessions": 8}}), "realtimeMaxSessions")


# --------------------------------------------------------------------------------------------- exposure

INGRESS = merged(KEYS, {"ingress": {"enabled": True}})


def routed(ingress: dict, path: str) -> bool:
    """Would the Ingress send `path` to the service (Exact, or Prefix by path elements)?"""
    for rule in ingress["spec"]["rules"]:
        for entry in rule["http"]["paths"]:
            prefix = entry["path"]
            assert entry["pathType"] in ("Exact", "Prefix")  # ImplementationSpecific: could match anything
            if path == prefix or (entry["pathType"] == "Prefix" and path.startswith(prefix.rstrip("/") + "/")):
                return True
    return False


def test_ingress_refused_without_api_keys_unless_explicitly_allowed():
    refused({"ingress": {"enabled": True}}, "apiKeys.enabled false would let anyone")
    allowed = objects({"ingress": {"enabled": True, "allowWithoutKeys": True}})
    assert "Ingress" in allowed and "SPIRITSERVE_API_KEYS_FILE" not in env_of(server_container(allowed["Deployment"]))


def test_ingress_routes_what_clients_use_and_never_metrics():
    ingress = objects(INGRESS)["Ingress"]
    for path in ("/v1/chat/completions", "/v1/realtime", "/v1/speech/continue", "/", "/static/app.js", "/docs"):
        assert routed(ingress, path), path
    for path in ("/metrics", "/healthz", "/readyz", "/metrics/"):
        assert not routed(ingress, path), path
    api_only = objects(merged(INGRESS, {"ingress": {"browserPages": False}}))["Ingress"]
    assert routed(api_only, "/v1/realtime") and not routed(api_only, "/") and not routed(api_only, "/static/a.js")
    refused(
        merged(INGRESS, {"ingress": {"hosts": [{"host": "a.example.com", "paths": [{"path": "/"}]}]}}),
        "ingress.hosts lists host names",
    )


def test_network_policy_admits_only_configured_peers():
    """Clients (the ingress controller, this namespace, extraFrom) reach only the API port; Prometheus' namespaces
    reach only the keyless metrics port."""
    policy = objects()["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]  # egress open: downloads reach object storage
    assert policy["podSelector"]["matchLabels"] == objects()["Deployment"]["spec"]["selector"]["matchLabels"]

    def peers(values) -> dict[str, tuple[set[str], bool]]:
        """port name -> (namespaces admitted, same-namespace pods admitted), one rule per port."""
        found = {}
        for rule in objects(values)["NetworkPolicy"]["spec"]["ingress"]:
            ((port,),) = [[entry["port"] for entry in rule["ports"]]]
            assert rule["ports"] == [{"port": port, "protocol": "TCP"}] and port not in found
            names = [
                p["namespaceSelector"]["matchExpressions"][0]["values"]
                for p in rule["from"]
                if "namespaceSelector" in p
            ]
            found[port] = (set(names[0] if names else []), {"podSelector": {}} in rule["from"])
        return found

    # Annotation scraping on: Prometheus to metrics only; same-namespace clients to http only.
    assert peers(None) == {"http": (set(), True), "metrics": ({"monitoring"}, False)}
    assert peers(INGRESS) == {"http": ({"ingress-nginx"}, True), "metrics": ({"monitoring"}, False)}
    assert peers(MONITORED) == {"http": (set(), True), "metrics": ({"monitoring"}, False)}
    unscraped = merged(INGRESS, {"metrics": {"scrapeAnnotations": False}})
    assert peers(unscraped) == {"http": ({"ingress-nginx"}, True)}  # nothing scrapes: the metrics port stays shut
    ports = {p["name"] for p in server_container(objects()["Deployment"])["ports"]}
    assert ports == {"http", "metrics"}  # the policy's port names exist on the container
    quiet = {
        "metrics": {"scrapeAnnotations": False},
        "networkPolicy": {"allowSameNamespace": False, "extraFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
    }
    (rule,) = objects(quiet)["NetworkPolicy"]["spec"]["ingress"]
    assert rule["from"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}] and rule["ports"][0]["port"] == "http"
    closed = merged(quiet, {"networkPolicy": {"extraFrom": []}})
    assert objects(closed)["NetworkPolicy"]["spec"]["ingress"] == []
    only_prometheus = {"networkPolicy": {"allowSameNamespace": False}}
    assert peers(only_prometheus) == {"metrics": ({"monitoring"}, False)}
    assert "NetworkPolicy" not in objects({"networkPolicy": {"enabled": False}})


def test_metrics_port_is_keyless_and_never_published():
    """SPIRITSERVE_METRICS_PORT moves /metrics off the API port (which then answers 404 for it): a container port
    and a Service port of its own, which the Ingress never routes and a public Service type cannot expose without
    the NetworkPolicy."""
    settings = (REPO / "spiritserve" / "settings.py").read_text()
    assert (
        "metrics_port: int | None" in settings
        and "if settings.metrics_port is None:" in (REPO / "spiritserve" / "server" / "app.py").read_text()
    )  # the API port serves /metrics only without a metrics port
    found = objects(merged(INGRESS, {"metrics": {"port": 9400}}))
    container = server_container(found["Deployment"])
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in container["ports"]
    assert env_of(container)["SPIRITSERVE_METRICS_PORT"] == "9400"
    service_ports = {p["name"]: p for p in found["Service"]["spec"]["ports"]}
    assert service_ports["metrics"] == {"name": "metrics", "port": 9400, "targetPort": "metrics", "protocol": "TCP"}
    rules = found["Ingress"]["spec"]["rules"]
    backends = [path["backend"]["service"]["port"] for rule in rules for path in rule["http"]["paths"]]
    assert backends and all(port == {"name": "http"} for port in backends)
    assert "/metrics" not in env_of(container)["SPIRITSERVE_PUBLIC_PATHS"].split(",")  # not needed any more
    refused({"metrics": {"port": 8000}}, r"metrics.port \(8000\) must differ from config.port")
    refused({"service": {"port": 9090}}, r"metrics.port \(9090\) must differ from service.port")
    refused({"metrics": {"port": 70000}}, "metrics.port must be a port number")
    refused({"metrics": {"port": "9090"}}, "metrics.port must be a port number")
    refused({"metrics": {"port": None}}, "metrics.port must be a port number")
    public = {"service": {"type": "LoadBalancer"}}
    assert objects(public)["Service"]["spec"]["type"] == "LoadBalancer"  # the policy admits no one to metrics
    refused(merged(public, {"networkPolicy": {"enabled": False}}), "publishes the keyless metrics port")


def test_logs_are_json_lines_by_default():
    """config.logFormat -> SPIRITSERVE_LOG_FORMAT, one of the server's own choices."""
    settings = (REPO / "spiritserve" / "settings.py").read_text()
    choices = re.search(r"log_format: Literal\[([^\]]*)\]", settings).group(1)
    assert {choice.strip().strip('"') for choice in choices.split(",")} == {"text", "json"}
    assert env_of(server_container(objects()["Deployment"]))["SPIRITSERVE_LOG_FORMAT"] == "json"
    text = {"config": {"logFormat": "text"}}
    assert env_of(server_container(objects(text)["Deployment"]))["SPIRITSERVE_LOG_FORMAT"] == "text"
    refused({"config": {"logFormat": "logfmt"}}, "config.logFormat must be text or json")


BODY_SIZE = "nginx.ingress.kubernetes.io/proxy-body-size"


def test_ingress_body_limit_is_the_servers_own():
    """nginx must not answer 413 (as HTML) below the server's limit: upload x 4/3 (base64 in JSON) + 1 MiB, the
    formula of Settings.max_body_bytes (which spiritserve/server/app.py gives the body limit), from the same value
    the chart passes as SPIRITSERVE_MAX_UPLOAD_BYTES."""
    settings = (REPO / "spiritserve" / "settings.py").read_text()
    assert "return self.max_upload_bytes * 4 // 3 + 2**20" in settings
    assert "max_body_bytes=settings.max_body_bytes" in (REPO / "spiritserve" / "server" / "app.py").read_text()
    limits = []
    for upload in (None, 16 * 2**20):
        found = objects(merged(INGRESS, {"config": {"maxUploadBytes": upload}} if upload else {}))
        env = env_of(server_container(found["Deployment"]))
        limits.append(int(found["Ingress"]["metadata"]["annotations"][BODY_SIZE]))
        assert limits[-1] == int(env["SPIRITSERVE_MAX_UPLOAD_BYTES"]) * 4 // 3 + 2**20
    assert limits[1] < 64 * 2**20 < limits[0]  # the old fixed 64m was below the default's base64 body
    refused(merged(INGRESS, {"ingress": {"annotations": {BODY_SIZE: "64m"}}}), "computed from config.maxUploadBytes")


# --------------------------------------------------------------------------------------------- checkpoints, images

DOWNLOAD = {"checkpoints": {"source": "download"}}


def test_download_emptydir_is_requested_as_ephemeral_storage():
    scratch = gi(server_container(objects()["Deployment"])["resources"]["limits"]["ephemeral-storage"])
    deployment = objects(DOWNLOAD)["Deployment"]
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "checkpoints"]
    resources = server_container(deployment)["resources"]
    for side in ("requests", "limits"):  # scheduled onto a node with the room, never evicted for using it
        assert gi(resources[side]["ephemeral-storage"]) == gi(volume["emptyDir"]["sizeLimit"]) + scratch


def test_download_is_time_limited_and_checked_against_a_sha256_manifest():
    pinned = merged(DOWNLOAD, {"checkpoints": {"download": {"manifestSha256": "sha256:" + "ab" * 32}}})
    (init,) = pod_spec(pinned)["initContainers"]
    assert init["command"][:4] == ["timeout", "3600", "/bin/sh", "-ec"]  # the copy and the check under one limit
    script, env = init["command"][4], env_of(init)
    assert script.index('rclone copy "$@"') < script.index('sha256sum -c "$MANIFEST"')
    assert "sha256sum -c -" in script  # the manifest's own hash, when pinned
    assert env["MANIFEST"] == "SHA256SUMS" and env["MANIFEST_SHA256"] == "ab" * 32
    assert env["CHECKPOINTS"] == "/checkpoints"


def test_download_to_a_persistent_claim_is_not_repeated_per_pod():
    pod = pod_spec(merged(DOWNLOAD, {"checkpoints": {"download": {"claimName": "spiritlm-cache"}}}))
    (volume,) = [v for v in pod["volumes"] if v["name"] == "checkpoints"]
    assert volume == {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "spiritlm-cache"}}
    (init,) = pod["initContainers"]
    assert {"name": "checkpoints", "mountPath": "/checkpoints"} in init["volumeMounts"]  # writable for rclone
    container = server_container({"spec": {"template": {"spec": pod}}})
    assert gi(container["resources"]["requests"]["ephemeral-storage"]) == 20  # not counted as node-local scratch


def test_images_carry_a_registry_and_optionally_a_digest():
    assert server_container(objects()["Deployment"])["image"].startswith("registry.example.com/")
    (init,) = pod_spec(DOWNLOAD)["initContainers"]
    assert init["image"] == "docker.io/rclone/rclone:1.71.1"
    digest = "sha256:" + "0123456789abcdef" * 4
    pinned = merged(DOWNLOAD, {"image": {"digest": digest}, "checkpoints": {"download": {"image": {"digest": digest}}}})
    pod = pod_spec(pinned)
    assert pod["containers"][0]["image"] == f"registry.example.com/spiritserve:0.1.0@{digest}"
    assert pod["initContainers"][0]["image"].endswith(f"@{digest}")
    refused({"image": {"repository": "spiritserve"}}, "must start with a registry host")
    refused({"image": {"repository": "library/spiritserve"}}, "must start with a registry host")
    assert objects({"image": {"repository": "localhost:5000/spiritserve"}})
    refused({"image": {"digest": "sha256:abc"}}, "digest must be sha256:<64 hex digits>")


# --------------------------------------------------------------------------------------------- resources, placement


def test_guaranteed_qos_by_default_with_shared_memory_accounted():
    """Every container's cpu and memory requests equal its limits (the pod's QoS class is Guaranteed), and the
    memory-backed /dev/shm, charged to the container, is added on top of the server's own memory."""
    pod = pod_spec(DOWNLOAD)
    for container in pod["containers"] + pod["initContainers"]:
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            assert resources["requests"][resource] == resources["limits"][resource], (container["name"], resource)
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    memory = gi(pod["containers"][0]["resources"]["limits"]["memory"])
    assert memory == 64 + gi(shm["emptyDir"]["sizeLimit"])
    burstable = server_container(objects({"resources": {"requests": {"cpu": "4"}}})["Deployment"])["resources"]
    assert burstable["requests"]["cpu"] == "4" and burstable["limits"]["cpu"] == "8"  # as written
    refused({"sharedMemorySize": "8192Mi"}, "sharedMemorySize must be whole Gi")


def test_gpu_model_selection_and_persistent_compile_cache():
    pod = pod_spec({"gpuProducts": ["NVIDIA-H100-80GB-HBM3"], "compileCache": {"claimName": "compile-cache"}})
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}
    ]
    container = pod["containers"][0]
    cache = env_of(container)["VLLM_CACHE_ROOT"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cache]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": "compile-cache"}
    plain = pod_spec()
    assert "affinity" not in plain and "VLLM_CACHE_ROOT" not in env_of(plain["containers"][0])
    own = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    refused({"gpuProducts": ["NVIDIA-H200"], "affinity": own}, "gpuProducts adds a required node affinity")


# --------------------------------------------------------------------------------------------- observability

ALERTS = {
    "SpiritserveEngineDown": "spiritserve_engine_healthy",
    "SpiritservePodsNotReady": "kube_deployment_status_replicas_available",
    "SpiritserveNoPodReady": "kube_deployment_status_replicas_available",
    "SpiritserveQueueWaitHigh": "spiritserve_queue_wait_seconds",
    "SpiritserveErrorRate": "spiritserve_requests_total",
    "SpiritserveTimeToFirstAudioHigh": "spiritserve_time_to_first_audio_seconds",
}


def test_prometheus_rule_alerts_what_an_on_call_needs():
    found = objects(merged(MONITORED, {"metrics": {"labels": {"release": "kube-prometheus-stack"}}}))
    rule = found["PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # the operator's ruleSelector
    (group,) = rule["spec"]["groups"]
    rules = {r["alert"]: r for r in group["rules"]}
    assert set(rules) == set(ALERTS)
    scaled_query = objects(KEDA)["ScaledObject"]["spec"]["triggers"][0]["metadata"]["query"]
    pod_matchers = re.search(r"\{(.*)\}", scaled_query).group(1)
    deadline = found["Deployment"]["spec"]["progressDeadlineSeconds"]
    for name, alert in rules.items():
        assert ALERTS[name] in promql_metrics(alert["expr"], METRICS | KUBE_STATE_METRICS), name
        assert alert["labels"]["severity"] in ("critical", "warning")
        assert len(alert["annotations"]["description"]) > 150 and alert["annotations"]["summary"], name  # a runbook
        if ALERTS[name].startswith("spiritserve_"):
            assert pod_matchers in alert["expr"], name  # this release's pods, as scraped by either job
    assert re.search(r"spiritserve_engine_healthy\{.*\}\) == 0", rules["SpiritserveEngineDown"]["expr"])
    assert rules["SpiritserveEngineDown"]["labels"]["severity"] == "critical"
    assert 'status=~"5.."' in rules["SpiritserveErrorRate"]["expr"]
    for name in ("SpiritservePodsNotReady", "SpiritserveNoPodReady"):  # a cold start does not page
        assert rules[name]["for"] == f"{deadline}s"
    assert "histogram_quantile(0.9," in rules["SpiritserveQueueWaitHigh"]["expr"]
    assert "histogram_quantile(0.9," in rules["SpiritserveTimeToFirstAudioHigh"]["expr"]
    assert "PrometheusRule" not in objects(merged(MONITORED, {"metrics": {"prometheusRule": {"enabled": False}}}))


def test_dashboard_configmap_for_grafanas_sidecar_is_the_one_dashboard():
    config_map = objects()["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map["data"].values()
    assert json.loads(text) == json.loads(DASHBOARD.read_text())
    assert not (REPO / "deploy" / "grafana" / "dashboards").exists()  # no second copy to drift
    assert "ConfigMap" not in objects({"metrics": {"grafanaDashboard": {"enabled": False}}})


def test_annotation_scraping_is_off_while_the_service_monitor_scrapes():
    def annotations(values):
        return objects(values)["Deployment"]["spec"]["template"]["metadata"].get("annotations") or {}

    assert annotations(None)["prometheus.io/scrape"] == "true"
    ports = {p["name"]: p["containerPort"] for p in server_container(objects()["Deployment"])["ports"]}
    assert annotations(None)["prometheus.io/port"] == str(ports["metrics"]) and ports["metrics"] != ports["http"]
    assert annotations(None)["prometheus.io/path"] == "/metrics"
    assert annotations({"metrics": {"port": 9400}})["prometheus.io/port"] == "9400"
    (endpoint,) = objects(MONITORED)["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert not any(key.startswith("prometheus.io/") for key in annotations(MONITORED))  # no double counting
    assert objects(MONITORED)["ServiceMonitor"]


def test_everything_at_once_still_renders():
    found = objects(merged(EVERYTHING, KEDA))
    assert {"ScaledObject", "PrometheusRule", "NetworkPolicy", "Ingress", "ConfigMap"} <= set(found)
    refused({"metrics": {"serviceMonitor": {"labels": {"release": "x"}}}}, "moved to metrics.labels")
