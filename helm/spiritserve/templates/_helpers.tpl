{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "spiritserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, prefixed with the chart name unless it already contains it. */}}
{{- define "spiritserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "spiritserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "spiritserve.labels" -}}
helm.sh/chart: {{ include "spiritserve.chart" . }}
{{ include "spiritserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "spiritserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spiritserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "spiritserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spiritserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}: by digest when one is given (the tag stays as a label for
humans), else by tag. Call with (dict "image" <values> "defaultTag" <tag>). */}}
{{- define "spiritserve.imageRef" -}}
{{- $tag := .image.tag | default .defaultTag }}
{{- if .image.digest }}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{- define "spiritserve.image" -}}
{{- include "spiritserve.imageRef" (dict "image" .Values.image "defaultTag" .Chart.AppVersion) }}
{{- end }}

{{/* A size in whole Gi, as an integer: (list "<value name>" <value>). Sums of sizes need one unit. */}}
{{- define "spiritserve.gi" -}}
{{- $name := index . 0 }}
{{- $value := toString (index . 1) }}
{{- if not (regexMatch "^[0-9]+Gi$" $value) }}
{{- fail (printf "%s must be whole Gi (e.g. 64Gi), not %q: the chart adds it to other sizes" $name $value) }}
{{- end }}
{{- trimSuffix "Gi" $value }}
{{- end }}

{{/* Does the checkpoint download land in an emptyDir (counted in the pod's ephemeral storage)? "true" or "". */}}
{{- define "spiritserve.downloadToEmptyDir" -}}
{{- if and (eq .Values.checkpoints.source "download") (not .Values.checkpoints.download.claimName) }}true{{ end }}
{{- end }}

{{/* requests = limits (Guaranteed QoS) unless the values' requests override an entry. (dict "limits" "requests") */}}
{{- define "spiritserve.resources" -}}
{{- $requests := merge (deepCopy (.requests | default dict)) .limits -}}
limits:
  {{- toYaml .limits | nindent 2 }}
requests:
  {{- toYaml $requests | nindent 2 }}
{{- end }}

{{/* A checkpoint-reading container's resources: its limits plus what the pod's volumes take (see values.yaml,
resources), and `gpus` x nvidia.com/gpu when given (0: none). (dict "root" $ "prefix" "<values prefix, empty for
the gateway's>" "resources" <limits/requests> "sharedMemorySize" <size> ["gpus" <count>]) */}}
{{- define "spiritserve.podResources" -}}
{{- $limits := deepCopy .resources.limits }}
{{- $memory := add (include "spiritserve.gi" (list (printf "%sresources.limits.memory" .prefix) $limits.memory)) (include "spiritserve.gi" (list (printf "%ssharedMemorySize" .prefix) .sharedMemorySize)) }}
{{- $storage := int (include "spiritserve.gi" (list (printf "%sresources.limits.ephemeral-storage" .prefix) (index $limits "ephemeral-storage"))) }}
{{- if include "spiritserve.downloadToEmptyDir" .root }}
{{- $storage = add $storage (include "spiritserve.gi" (list "checkpoints.download.sizeLimit" .root.Values.checkpoints.download.sizeLimit)) }}
{{- end }}
{{- $_ := set $limits "memory" (printf "%dGi" $memory) }}
{{- $_ = set $limits "ephemeral-storage" (printf "%dGi" $storage) }}
{{- if hasKey . "gpus" }}
{{- $_ = unset $limits "nvidia.com/gpu" }}
{{- if gt (int .gpus) 0 }}
{{- $_ = set $limits "nvidia.com/gpu" (int .gpus) }}
{{- end }}
{{- end }}
{{- include "spiritserve.resources" (dict "limits" $limits "requests" .resources.requests) }}
{{- end }}

{{/* The gateway (server) container's resources. In remote engine mode its GPUs are gateway.gpus (0: none). */}}
{{- define "spiritserve.serverResources" -}}
{{- $arguments := dict "root" . "prefix" "" "resources" .Values.resources "sharedMemorySize" .Values.sharedMemorySize }}
{{- if include "spiritserve.remote" . }}
{{- $_ := set $arguments "gpus" .Values.gateway.gpus }}
{{- end }}
{{- include "spiritserve.podResources" $arguments }}
{{- end }}

{{/* The longest a request may run once admitted: its body upload, then the longer of the generation limit and the
speech budget. The drain must cover it. */}}
{{- define "spiritserve.longestRequestSeconds" -}}
{{- $config := .Values.config }}
{{- add (ceil $config.bodyReadTimeoutSeconds) (max (ceil $config.generationTimeoutSeconds) (ceil $config.maxSpeechSeconds)) }}
{{- end }}

{{- define "spiritserve.terminationGracePeriodSeconds" -}}
{{- add (int .Values.preStopSleepSeconds) (ceil .Values.config.drainTimeoutSeconds) (int .Values.shutdownMarginSeconds) }}
{{- end }}

{{/* How long one new pod may take to become ready: image pull, checkpoint download, the startup probe's window.
(dict "root" $ "startup" <startup probe values>) */}}
{{- define "spiritserve.readyDeadlineSeconds" -}}
{{- $values := .root.Values }}
{{- $startup := mul .startup.periodSeconds .startup.failureThreshold }}
{{- $download := ternary $values.checkpoints.download.timeoutSeconds 0 (eq $values.checkpoints.source "download") }}
{{- add $values.imagePullSeconds $download $startup }}
{{- end }}

{{- define "spiritserve.progressDeadlineSeconds" -}}
{{- include "spiritserve.readyDeadlineSeconds" (dict "root" . "startup" .Values.probes.startup) }}
{{- end }}

{{/* Largest request body the server accepts (Settings.max_body_bytes in spiritserve/settings.py: upload x 4/3 for base64 + 1 MiB). */}}
{{- define "spiritserve.maxBodyBytes" -}}
{{- add (div (mul (int64 .Values.config.maxUploadBytes) 4) 3) 1048576 }}
{{- end }}

{{/* Prometheus scrapes the pods through annotations only without a ServiceMonitor (no double scraping). */}}
{{- define "spiritserve.scrapeAnnotations" -}}
{{- if and .Values.metrics.scrapeAnnotations (not .Values.metrics.serviceMonitor.enabled) }}true{{ end }}
{{- end }}

{{- define "spiritserve.scraped" -}}
{{- if or (include "spiritserve.scrapeAnnotations" .) .Values.metrics.serviceMonitor.enabled }}true{{ end }}
{{- end }}

{{/* PromQL label matchers for this release's pods: namespace and pod, the labels both the ServiceMonitor and the
usual annotation scrape job attach (a `service` label exists only with the ServiceMonitor). Pod names are
<deployment>-<template hash>-<id>, so another release whose name extends this one does not match. */}}
{{- define "spiritserve.podMatchers" -}}
{{- include "spiritserve.deploymentPodMatchers" (list . (include "spiritserve.fullname" .)) }}
{{- end }}

{{/* The same for the pods of another Deployment of this release: (list $ "<deployment name>"). */}}
{{- define "spiritserve.deploymentPodMatchers" -}}
{{- printf "namespace=%q, pod=~%q" (index . 0).Release.Namespace (printf "%s-[a-z0-9]+-[a-z0-9]+" (index . 1)) }}
{{- end }}

{{/* The autoscaling query KEDA uses: the operator's, else the sum of the metric over this release's pods. */}}
{{- define "spiritserve.kedaQuery" -}}
{{- .Values.autoscaling.keda.query | default (printf "sum(%s{%s})" .Values.autoscaling.metric (include "spiritserve.podMatchers" .)) }}
{{- end }}

{{/* The Secret holding the API keys: the operator's own, else the one this chart writes. */}}
{{- define "spiritserve.apiKeysSecretName" -}}
{{- if .Values.apiKeys.existingSecret }}
{{- .Values.apiKeys.existingSecret }}
{{- else }}
{{- printf "%s-api-keys" (include "spiritserve.fullname" .) }}
{{- end }}
{{- end }}

{{/* Refuse values an operator would only discover in production. */}}
{{- define "spiritserve.validate" -}}
{{- $values := .Values }}
{{- /* Values this chart used to take: silently ignoring them would undo what the operator asked for. */}}
{{- if hasKey $values "terminationGracePeriodSeconds" }}
{{- fail "terminationGracePeriodSeconds is computed (preStopSleepSeconds + config.drainTimeoutSeconds + shutdownMarginSeconds): raise shutdownMarginSeconds instead" }}
{{- end }}
{{- if hasKey $values.metrics.serviceMonitor "labels" }}
{{- fail "metrics.serviceMonitor.labels moved to metrics.labels (they select the PrometheusRule too)" }}
{{- end }}
{{- range $values.ingress.hosts }}
{{- if not (kindIs "string" .) }}
{{- fail "ingress.hosts lists host names: the chart sets the paths (ingress.browserPages), so /metrics is never routed" }}
{{- end }}
{{- end }}

{{- $longest := int (include "spiritserve.longestRequestSeconds" .) }}
{{- if lt (float64 $values.config.drainTimeoutSeconds) (float64 $longest) }}
{{- fail (printf "config.drainTimeoutSeconds (%v) must cover the longest request, %d s (config.bodyReadTimeoutSeconds + the larger of config.generationTimeoutSeconds and config.maxSpeechSeconds): a rollout would cut answers off" $values.config.drainTimeoutSeconds $longest) }}
{{- end }}
{{- if lt (int $values.shutdownMarginSeconds) 1 }}
{{- fail "shutdownMarginSeconds must be at least 1: uvicorn and the vLLM engine need time to exit after the drain" }}
{{- end }}

{{- range $name, $image := dict "image" $values.image "checkpoints.download.image" $values.checkpoints.download.image }}
{{- $host := first (splitList "/" $image.repository) }}
{{- if not (and (contains "/" $image.repository) (or (contains "." $host) (contains ":" $host) (eq $host "localhost"))) }}
{{- fail (printf "%s.repository (%q) must start with a registry host (e.g. ghcr.io/you/spiritserve): a bare name resolves to Docker Hub" $name $image.repository) }}
{{- end }}
{{- if and $image.digest (not (regexMatch "^sha256:[0-9a-f]{64}$" $image.digest)) }}
{{- fail (printf "%s.digest must be sha256:<64 hex digits>, not %q" $name $image.digest) }}
{{- end }}
{{- end }}

{{- if not (has $values.checkpoints.source (list "pvc" "download")) }}
{{- fail (printf "checkpoints.source must be pvc or download, not %q" $values.checkpoints.source) }}
{{- end }}
{{- if and (eq $values.checkpoints.source "pvc") (not $values.checkpoints.pvc.claimName) }}
{{- fail "checkpoints.pvc.claimName is required when checkpoints.source is pvc" }}
{{- end }}
{{- if and (eq $values.checkpoints.source "download") (not $values.checkpoints.download.source) }}
{{- fail "checkpoints.download.source (rclone remote:path) is required when checkpoints.source is download" }}
{{- end }}

{{- include "spiritserve.validateStrategy" (list "strategy" $values.strategy) }}
{{- include "spiritserve.validateDisruptionBudget" (list "podDisruptionBudget" $values.podDisruptionBudget) }}

{{- $scaling := $values.autoscaling }}
{{- if or $scaling.enabled (and (include "spiritserve.remote" .) $values.engine.autoscaling.enabled) }}
{{- if not (has $scaling.engine (list "hpa" "keda")) }}
{{- fail (printf "autoscaling.engine must be hpa or keda, not %q" $scaling.engine) }}
{{- end }}
{{- end }}
{{- if $scaling.enabled }}
{{- if not (kindIs "invalid" $scaling.queueDepthTarget) }}
{{- if not (and (or (kindIs "float64" $scaling.queueDepthTarget) (kindIs "int64" $scaling.queueDepthTarget)) (gt (float64 $scaling.queueDepthTarget) 0.0)) }}
{{- fail (printf "autoscaling.queueDepthTarget must be a number above 0 (or null: off), not %v" $scaling.queueDepthTarget) }}
{{- end }}
{{- if eq $scaling.metric "spiritserve_queue_depth" }}
{{- fail "autoscaling.queueDepthTarget adds spiritserve_queue_depth as a second metric: autoscaling.metric is that already" }}
{{- end }}
{{- end }}
{{- if and (eq $scaling.metric "spiritserve_load") (ge (mulf $scaling.targetPerReplica 1.1) (float64 $values.config.realtimeMaxSessions)) }}
{{- fail (printf "autoscaling.targetPerReplica (%v) must stay below config.realtimeMaxSessions (%v) / 1.1: a pod full of voice-chat sessions would never exceed the target and the HPA would never add a pod" $scaling.targetPerReplica $values.config.realtimeMaxSessions) }}
{{- end }}
{{- $minReplicas := int $scaling.minReplicas }}
{{- if and (eq $minReplicas 0) (eq $scaling.engine "hpa") }}
{{- fail "autoscaling.minReplicas 0 needs engine keda (the HPA cannot scale to zero without an alpha feature gate)" }}
{{- end }}
{{- if eq $scaling.engine "keda" }}
{{- if and (not $scaling.keda.query) (not (include "spiritserve.scraped" .)) }}
{{- fail "autoscaling.keda.query is empty and nothing scrapes the pods (metrics.scrapeAnnotations and metrics.serviceMonitor.enabled are off): the default query would return nothing and KEDA would never scale" }}
{{- end }}
{{- if and (eq $minReplicas 0) (not $scaling.keda.query) }}
{{- fail "autoscaling.minReplicas 0 needs autoscaling.keda.query on a metric that exists without pods (e.g. the ingress controller's request rate): with no pod there is no spiritserve load to wake the deployment" }}
{{- end }}
{{- if and (gt $minReplicas 0) (not (kindIs "invalid" $scaling.keda.cooldownPeriod)) }}
{{- fail "autoscaling.keda.cooldownPeriod only applies when scaling to zero (minReplicas 0); with minReplicas >= 1 scale-in pace is autoscaling.hpa.behavior.scaleDown" }}
{{- end }}
{{- end }}
{{- end }}

{{- if $values.ingress.enabled }}
{{- if and (not $values.apiKeys.enabled) (not $values.ingress.allowWithoutKeys) }}
{{- fail "ingress.enabled with apiKeys.enabled false would let anyone who reaches the Ingress generate on your GPUs: enable apiKeys, or set ingress.allowWithoutKeys if something in front authenticates" }}
{{- end }}
{{- if hasKey ($values.ingress.annotations | default dict) "nginx.ingress.kubernetes.io/proxy-body-size" }}
{{- fail "nginx.ingress.kubernetes.io/proxy-body-size is computed from config.maxUploadBytes (the server's own limit): set that instead" }}
{{- end }}
{{- end }}

{{- if not (has $values.config.logFormat (list "text" "json")) }}
{{- fail (printf "config.logFormat must be text or json, not %q" (toString $values.config.logFormat)) }}
{{- end }}
{{- $metricsPort := $values.metrics.port }}
{{- $isNumber := or (kindIs "float64" $metricsPort) (kindIs "int64" $metricsPort) (kindIs "int" $metricsPort) }}
{{- if not (and $isNumber (eq (float64 (int $metricsPort)) (float64 $metricsPort)) (ge (int $metricsPort) 1) (le (int $metricsPort) 65535)) }}
{{- fail (printf "metrics.port must be a port number (1-65535), not %v (%s): /metrics is served only there (SPIRITSERVE_METRICS_PORT)" $metricsPort (kindOf $metricsPort)) }}
{{- end }}
{{- if eq (int $metricsPort) (int $values.config.port) }}
{{- fail (printf "metrics.port (%v) must differ from config.port: the keyless /metrics gets a port of its own" $metricsPort) }}
{{- end }}
{{- if eq (int $metricsPort) (int $values.service.port) }}
{{- fail (printf "metrics.port (%v) must differ from service.port: the Service carries both (http and metrics)" $metricsPort) }}
{{- end }}
{{- if and (ne $values.service.type "ClusterIP") (not $values.networkPolicy.enabled) }}
{{- fail (printf "service.type %s publishes the keyless metrics port outside the cluster along with the API: keep ClusterIP (and use the Ingress), or enable networkPolicy (it admits only networkPolicy.monitoringNamespaces to the metrics port)" $values.service.type) }}
{{- end }}

{{- if and $values.gpuProducts ($values.affinity | default dict).nodeAffinity }}
{{- fail "gpuProducts adds a required node affinity: with your own affinity.nodeAffinity, put the nvidia.com/gpu.product term there instead" }}
{{- end }}

{{- if and $values.apiKeys.enabled $values.config.publicPaths }}
{{- $public := splitList "," ($values.config.publicPaths | replace " " "") }}
{{- range $probe := list $values.probes.startup.path $values.probes.readiness.path $values.probes.liveness.path }}
{{- if not (has $probe $public) }}
{{- fail (printf "config.publicPaths must list the probe path %s when apiKeys.enabled: the kubelet sends no API key" $probe) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $values.apiKeys.enabled (not $values.apiKeys.existingSecret) (not $values.apiKeys.keys) }}
{{- fail "apiKeys.enabled needs apiKeys.existingSecret or at least one entry in apiKeys.keys" }}
{{- end }}

{{- if not (has $values.engine.mode (list "inprocess" "remote")) }}
{{- fail (printf "engine.mode must be inprocess or remote, not %q" (toString $values.engine.mode)) }}
{{- end }}
{{- if include "spiritserve.remote" . }}
{{- include "spiritserve.validateRemote" . }}
{{- end }}
{{- end }}

{{/* Remote engine mode: the engine tier, the router and what the gateway takes from them. */}}
{{- define "spiritserve.validateRemote" -}}
{{- $values := .Values }}
{{- $engine := $values.engine }}
{{- if not (has $values.config.variant (list "base" "expressive")) }}
{{- fail (printf "engine.mode remote needs config.variant base or expressive, not %q: the engines load that variant's LM folder and the gateway must serve the same one (it cannot look which folders the engines have)" (toString $values.config.variant)) }}
{{- end }}
{{- if not (include "spiritserve.isCount" (list $engine.tensorParallelSize 1)) }}
{{- fail (printf "engine.tensorParallelSize must be a whole number of GPUs, at least 1, not %v" $engine.tensorParallelSize) }}
{{- end }}
{{- if ne (mod 32 (int $engine.tensorParallelSize)) 0 }}
{{- fail (printf "engine.tensorParallelSize (%v) must divide the 7B model's 32 attention heads (1, 2, 4, 8, ...): vLLM refuses to start otherwise" $engine.tensorParallelSize) }}
{{- end }}
{{- if not (include "spiritserve.isCount" (list $engine.maxModelLen 1)) }}
{{- fail (printf "engine.maxModelLen must be a whole number of tokens, not %v" $engine.maxModelLen) }}
{{- end }}
{{- if not (include "spiritserve.isCount" (list $engine.maxNumSeqs 1)) }}
{{- fail (printf "engine.maxNumSeqs must be a whole number, at least 1, not %v" $engine.maxNumSeqs) }}
{{- end }}
{{- $utilization := $engine.gpuMemoryUtilization }}
{{- if not (and (or (kindIs "float64" $utilization) (kindIs "int64" $utilization)) (gt (float64 $utilization) 0.0) (le (float64 $utilization) 1.0)) }}
{{- fail (printf "engine.gpuMemoryUtilization must be a fraction in (0, 1], not %v" $utilization) }}
{{- end }}
{{- if hasKey ($engine.resources.limits | default dict) "nvidia.com/gpu" }}
{{- fail "engine.resources.limits must not set nvidia.com/gpu: an engine pod gets engine.tensorParallelSize GPUs (vLLM's --tensor-parallel-size), one value for both" }}
{{- end }}
{{- if not (include "spiritserve.isCount" (list $engine.replicas 0)) }}
{{- fail (printf "engine.replicas must be a whole number, not %v" $engine.replicas) }}
{{- end }}
{{- $engineFlags := include "spiritserve.engineFlags" . | fromJsonArray }}
{{- range $engine.extraArgs }}
{{- if has (first (splitList "=" (toString .))) $engineFlags }}
{{- fail (printf "engine.extraArgs must not repeat %s: the chart sets it from values (engine.*, config.variant, config.generationTimeoutSeconds)" (first (splitList "=" (toString .)))) }}
{{- end }}
{{- end }}
{{- include "spiritserve.validateStrategy" (list "engine.strategy" $engine.strategy) }}
{{- include "spiritserve.validateDisruptionBudget" (list "engine.podDisruptionBudget" $engine.podDisruptionBudget) }}
{{- include "spiritserve.validateDisruptionBudget" (list "router.podDisruptionBudget" $values.router.podDisruptionBudget) }}
{{- if and $engine.gpuProducts ($engine.affinity | default dict).nodeAffinity }}
{{- fail "engine.gpuProducts adds a required node affinity: with your own engine.affinity.nodeAffinity, put the nvidia.com/gpu.product term there instead" }}
{{- end }}

{{- $scaling := $engine.autoscaling }}
{{- if $scaling.enabled }}
{{- if not (include "spiritserve.isCount" (list $scaling.minReplicas 1)) }}
{{- fail (printf "engine.autoscaling.minReplicas must be at least 1, not %v: with no engine there is no queue to wake the pool, and every request gets 503 meanwhile" $scaling.minReplicas) }}
{{- end }}
{{- if not (and (include "spiritserve.isCount" (list $scaling.maxReplicas 1)) (ge (int $scaling.maxReplicas) (int $scaling.minReplicas))) }}
{{- fail (printf "engine.autoscaling.maxReplicas (%v) must be a whole number no smaller than minReplicas (%v)" $scaling.maxReplicas $scaling.minReplicas) }}
{{- end }}
{{- if not (and (or (kindIs "float64" $scaling.targetPerReplica) (kindIs "int64" $scaling.targetPerReplica)) (gt (float64 $scaling.targetPerReplica) 0.0)) }}
{{- fail (printf "engine.autoscaling.targetPerReplica must be a number above 0, not %v" $scaling.targetPerReplica) }}
{{- end }}
{{- if and (eq $values.autoscaling.engine "keda") (not $scaling.query) (not (include "spiritserve.scraped" .)) }}
{{- fail "engine.autoscaling.query is empty and nothing scrapes the engine pods (metrics.scrapeAnnotations and metrics.serviceMonitor.enabled are off): the default query would return nothing and KEDA would never scale" }}
{{- end }}
{{- end }}

{{- $router := $values.router }}
{{- $policies := list "random" "round_robin" "cache_aware" "kv_aware" "power_of_two" "consistent_hash" "sticky_least_loaded" }}
{{- if not (has $router.policy $policies) }}
{{- fail (printf "router.policy must be one of vllm-router's (%s), not %q" (join ", " $policies) (toString $router.policy)) }}
{{- end }}
{{- if not (include "spiritserve.isCount" (list $router.replicas 1)) }}
{{- fail (printf "router.replicas must be at least 1, not %v: the gateway reaches the engines only through it" $router.replicas) }}
{{- end }}
{{- range $name := list "intervalSeconds" "failureThreshold" "timeoutSeconds" }}
{{- if not (include "spiritserve.isCount" (list (index $router.healthCheck $name) 1)) }}
{{- fail (printf "router.healthCheck.%s must be a whole number, at least 1, not %v" $name (index $router.healthCheck $name)) }}
{{- end }}
{{- end }}
{{- $routerFlags := include "spiritserve.routerFlags" . | fromJsonArray }}
{{- range $router.extraArgs }}
{{- if has (first (splitList "=" (toString .))) $routerFlags }}
{{- fail (printf "router.extraArgs must not repeat %s: the chart sets it (router.*, the engine pods' labels and port)" (first (splitList "=" (toString .)))) }}
{{- end }}
{{- end }}

{{- $gateway := $values.gateway }}
{{- if not (include "spiritserve.isCount" (list $gateway.gpus 0)) }}
{{- fail (printf "gateway.gpus must be a whole number of GPUs (0: speech stages on CPU), not %v" $gateway.gpus) }}
{{- end }}
{{- if and (eq (int $gateway.gpus) 0) $values.gpuProducts }}
{{- fail "gpuProducts pins the gateway to GPU nodes, but gateway.gpus is 0 (speech stages on CPU): empty gpuProducts (engine.gpuProducts places the engines)" }}
{{- end }}
{{- if and (gt (int $gateway.gpus) 0) (eq $values.config.device "cpu") }}
{{- fail (printf "gateway.gpus is %v but config.device is cpu: the speech stages would leave the gateway's GPUs idle; set gateway.gpus 0 for a CPU gateway" $gateway.gpus) }}
{{- end }}
{{- $computed := list "SPIRITSERVE_ENGINE_URL" "SPIRITSERVE_ENGINE_MAX_MODEL_LEN" "SPIRITSERVE_ENGINE_WAIT_S" "SPIRITSERVE_ENGINE_FAILOVER_S" "SPIRITSERVE_VARIANT" "SPIRITSERVE_DEVICE" }}
{{- range $values.extraEnv }}
{{- if has .name $computed }}
{{- fail (printf "extraEnv must not set %s in remote engine mode: the chart sets it (engine.maxModelLen, the router's Service, router.healthCheck, the startup probe, config.variant, gateway.gpus)" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ pieces every checkpoint-reading pod shares */}}

{{/* The download init container (checkpoints.source download): an item of initContainers. */}}
{{- define "spiritserve.checkpointsInitContainer" -}}
{{- $checkpoints := .Values.checkpoints -}}
- name: fetch-checkpoints
  image: {{ include "spiritserve.imageRef" (dict "image" $checkpoints.download.image) | quote }}
  imagePullPolicy: {{ $checkpoints.download.image.pullPolicy }}
  # One time limit over the copy and the check; then the manifest's hashes (and the manifest's own, when
  # pinned) must match, else the init container fails and the kubelet retries it.
  command:
    - timeout
    - {{ $checkpoints.download.timeoutSeconds | quote }}
    - /bin/sh
    - -ec
    - |
      rclone copy "$@"
      if [ -n "$MANIFEST" ]; then
        cd "$CHECKPOINTS"
        if [ -n "$MANIFEST_SHA256" ]; then echo "$MANIFEST_SHA256  $MANIFEST" | sha256sum -c -; fi
        sha256sum -c "$MANIFEST"
      fi
    - fetch-checkpoints
  args:
    - {{ $checkpoints.download.source | quote }}
    - {{ $checkpoints.mountPath | quote }}
    {{- range $checkpoints.download.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: HOME
      value: /tmp
    - name: RCLONE_CONFIG
      value: /tmp/rclone.conf
    - name: CHECKPOINTS
      value: {{ $checkpoints.mountPath | quote }}
    - name: MANIFEST
      value: {{ $checkpoints.download.sha256Manifest | quote }}
    - name: MANIFEST_SHA256
      value: {{ $checkpoints.download.manifestSha256 | trimPrefix "sha256:" | quote }}
    {{- with $checkpoints.download.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $checkpoints.download.envFromSecret }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- include "spiritserve.resources" $checkpoints.download.resources | nindent 4 }}
  volumeMounts:
    - name: checkpoints
      mountPath: {{ $checkpoints.mountPath }}
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/* The read-only checkpoint mount: an item of a container's volumeMounts. */}}
{{- define "spiritserve.checkpointsMount" -}}
{{- $checkpoints := .Values.checkpoints -}}
- name: checkpoints
  mountPath: {{ $checkpoints.mountPath }}
  readOnly: true
  {{- if and (eq $checkpoints.source "pvc") $checkpoints.pvc.subPath }}
  subPath: {{ $checkpoints.pvc.subPath }}
  {{- end }}
{{- end }}

{{/* The checkpoint volume (the claim, or the download's claim or emptyDir): an item of volumes. */}}
{{- define "spiritserve.checkpointsVolume" -}}
{{- $checkpoints := .Values.checkpoints -}}
- name: checkpoints
  {{- if eq $checkpoints.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ $checkpoints.pvc.claimName }}
    readOnly: true
  {{- else if $checkpoints.download.claimName }}
  persistentVolumeClaim:
    claimName: {{ $checkpoints.download.claimName }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ $checkpoints.download.sizeLimit }}
  {{- end }}
{{- end }}

{{/* An HTTP probe's body: (dict "path" <path> "port" <port name> "probe" <values with periodSeconds, ...>). */}}
{{- define "spiritserve.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* A pod's affinity: the values' own plus, with gpuProducts, a required nvidia.com/gpu.product node affinity.
(dict "affinity" <values> "gpuProducts" <list>); renders nothing when both are empty. */}}
{{- define "spiritserve.affinity" -}}
{{- if or .affinity .gpuProducts -}}
affinity:
  {{- with .affinity }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- with .gpuProducts }}
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: nvidia.com/gpu.product
              operator: In
              values:
                {{- toYaml . | nindent 16 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* A PodDisruptionBudget's spec, as written: (dict "budget" <values> "selector" <matchLabels text>). */}}
{{- define "spiritserve.disruptionBudgetSpec" -}}
{{- /* As written: a `default` here would turn maxUnavailable 0 (no voluntary eviction) into 1. */}}
{{- with .budget -}}
{{- if kindIs "invalid" .minAvailable -}}
maxUnavailable: {{ .maxUnavailable }}
{{- else -}}
minAvailable: {{ .minAvailable }}
{{- end }}
{{- end }}
selector:
  matchLabels:
    {{- .selector | nindent 4 }}
{{- end }}

{{/* ------------------------------------------------------------------ remote engine mode (engine.mode remote) */}}

{{/* The LM runs in an engine tier of its own, behind a router: "true" or "". */}}
{{- define "spiritserve.remote" -}}
{{- if eq .Values.engine.mode "remote" }}true{{ end }}
{{- end }}

{{/* A tier's object name, <fullname>-<tier>, within the 63 characters a Service name allows: (list $ "engine"). */}}
{{- define "spiritserve.tierName" -}}
{{- $tier := index . 1 }}
{{- printf "%s-%s" (include "spiritserve.fullname" (index . 0) | trunc (int (sub 62 (len $tier))) | trimSuffix "-") $tier }}
{{- end }}

{{- define "spiritserve.engineName" -}}
{{- include "spiritserve.tierName" (list . "engine") }}
{{- end }}

{{- define "spiritserve.routerName" -}}
{{- include "spiritserve.tierName" (list . "router") }}
{{- end }}

{{/* A tier's selector labels: (list $ "engine"). Its app.kubernetes.io/name is <name>-<tier>, so the gateway's
selector (name, instance; unchanged from in-process mode, a Deployment's selector being immutable) never matches
an engine or router pod; app.kubernetes.io/component tells the tiers apart. */}}
{{- define "spiritserve.tierSelectorLabels" -}}
{{- $root := index . 0 }}
{{- $tier := index . 1 -}}
app.kubernetes.io/name: {{ printf "%s-%s" (include "spiritserve.name" $root | trunc (int (sub 62 (len $tier))) | trimSuffix "-") $tier }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ $tier }}
{{- end }}

{{- define "spiritserve.tierLabels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "spiritserve.chart" $root }}
{{ include "spiritserve.tierSelectorLabels" . }}
app.kubernetes.io/part-of: {{ include "spiritserve.name" $root }}
app.kubernetes.io/version: {{ $root.Values.image.tag | default $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- end }}

{{/* Ports of the engine tier (vLLM's API, /health and /metrics on one port) and of the router. */}}
{{- define "spiritserve.enginePort" -}}8000{{- end }}
{{- define "spiritserve.routerPort" -}}8000{{- end }}
{{- define "spiritserve.routerMetricsPort" -}}29000{{- end }}

{{/* The LM folder the engines serve: config.variant's, under <checkpoints>/spiritlm_model/. */}}
{{- define "spiritserve.engineModel" -}}
{{- printf "spirit-lm-%s-7b" .Values.config.variant }}
{{- end }}

{{/* vLLM's drain on SIGTERM (--shutdown-timeout): a running generation ends within config.generationTimeoutSeconds
(the gateway's wall-clock limit), so the engine lets its requests finish that long. */}}
{{- define "spiritserve.engineDrainSeconds" -}}
{{- ceil .Values.config.generationTimeoutSeconds }}
{{- end }}

{{- define "spiritserve.engineTerminationGracePeriodSeconds" -}}
{{- add (int .Values.preStopSleepSeconds) (include "spiritserve.engineDrainSeconds" . | int) (int .Values.shutdownMarginSeconds) }}
{{- end }}

{{/* The gateway's start-up wait for the engine (SPIRITSERVE_ENGINE_WAIT_S): as long as its startup probe lets it
start, so a gateway that came up before the engines (a 7B loads for minutes) waits instead of crash-looping. */}}
{{- define "spiritserve.engineWaitSeconds" -}}
{{- mul .Values.probes.startup.periodSeconds .Values.probes.startup.failureThreshold }}
{{- end }}

{{/* The gateway's retry window for a request that got no token yet (SPIRITSERVE_ENGINE_FAILOVER_S): how long the
router may keep sending to a dead engine before its health check takes it out (interval x failures + timeout). */}}
{{- define "spiritserve.engineFailoverSeconds" -}}
{{- $check := .Values.router.healthCheck }}
{{- add (mul $check.intervalSeconds $check.failureThreshold) $check.timeoutSeconds }}
{{- end }}

{{/* The gateway's GPUs: resources.limits' nvidia.com/gpu in-process, gateway.gpus in remote mode. */}}
{{- define "spiritserve.gatewayHasGpu" -}}
{{- if or (not (include "spiritserve.remote" .)) (gt (int .Values.gateway.gpus) 0) }}true{{ end }}
{{- end }}

{{/* The gateway's tolerations: as written, less the nvidia.com/gpu ones when it has no GPU (a CPU gateway would
otherwise be free to take a GPU node's CPU and memory). */}}
{{- define "spiritserve.gatewayTolerations" -}}
{{- $tolerations := list }}
{{- range .Values.tolerations }}
{{- if or (include "spiritserve.gatewayHasGpu" $) (ne (toString .key) "nvidia.com/gpu") }}
{{- $tolerations = append $tolerations . }}
{{- end }}
{{- end }}
{{- with $tolerations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* The KEDA query for the engines: the operator's, else the sum of the metric over this release's engine pods. */}}
{{- define "spiritserve.engineKedaQuery" -}}
{{- $scaling := .Values.engine.autoscaling }}
{{- $scaling.query | default (printf "sum(%s{%s})" $scaling.metric (include "spiritserve.deploymentPodMatchers" (list . (include "spiritserve.engineName" .)))) }}
{{- end }}

{{/* The name the custom metrics API serves a Prometheus series under: prometheus-adapter cannot serve a name with
':' (vLLM's namespace separator), so deploy/prometheus-adapter-values.yaml serves vllm:X as vllm_X. */}}
{{- define "spiritserve.adapterMetricName" -}}
{{- replace ":" "_" . }}
{{- end }}

{{/* Flags the chart sets on the engines and the router from values: repeating one in extraArgs is refused. */}}
{{- define "spiritserve.engineFlags" -}}
{{- list "--model" "--served-model-name" "--skip-tokenizer-init" "--host" "--port" "--max-model-len" "--dtype" "--gpu-memory-utilization" "--device-memory-utilization" "--max-num-seqs" "--tensor-parallel-size" "-tp" "--enable-prefix-caching" "--no-enable-prefix-caching" "--shutdown-timeout" | toJson }}
{{- end }}

{{- define "spiritserve.routerFlags" -}}
{{- list "--host" "--port" "--policy" "--service-discovery" "--selector" "--service-discovery-port" "--service-discovery-namespace" "--worker-urls" "--health-check-interval-secs" "--health-failure-threshold" "--health-check-timeout-secs" "--health-check-endpoint" "--prometheus-host" "--prometheus-port" | toJson }}
{{- end }}

{{/* Refuse a Deployment strategy that could not roll out: (list "<values name>" <strategy values>). */}}
{{- define "spiritserve.validateStrategy" -}}
{{- $name := index . 0 }}
{{- $strategy := index . 1 }}
{{- if not (has $strategy.type (list "RollingUpdate" "Recreate")) }}
{{- fail (printf "%s.type must be RollingUpdate or Recreate, not %q" $name $strategy.type) }}
{{- end }}
{{- if eq $strategy.type "RollingUpdate" }}
{{- $zero := list "0" "0%" }}
{{- if and (has (toString $strategy.rollingUpdate.maxSurge) $zero) (has (toString $strategy.rollingUpdate.maxUnavailable) $zero) }}
{{- fail (printf "%s.rollingUpdate: maxSurge and maxUnavailable cannot both be 0: the rollout could never start" $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Refuse a disruption budget with both or neither bound: (list "<values name>" <budget values>). */}}
{{- define "spiritserve.validateDisruptionBudget" -}}
{{- $budget := index . 1 }}
{{- if and $budget.enabled (eq (kindIs "invalid" $budget.maxUnavailable) (kindIs "invalid" $budget.minAvailable)) }}
{{- fail (printf "%s: set exactly one of maxUnavailable and minAvailable (the other null)" (index . 0)) }}
{{- end }}
{{- end }}

{{/* Is a value a whole number of at least `min`? (list <value> <min>): "true" or "". */}}
{{- define "spiritserve.isCount" -}}
{{- $value := index . 0 }}
{{- if and (or (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value)) (eq (float64 (int $value)) (float64 $value)) (ge (int $value) (int (index . 1))) }}true{{ end }}
{{- end }}
