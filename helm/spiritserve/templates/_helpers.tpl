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

{{/* The server container's resources: the values' limits plus what the pod's volumes take (see values.yaml). */}}
{{- define "spiritserve.serverResources" -}}
{{- $limits := deepCopy .Values.resources.limits }}
{{- $memory := add (include "spiritserve.gi" (list "resources.limits.memory" $limits.memory)) (include "spiritserve.gi" (list "sharedMemorySize" .Values.sharedMemorySize)) }}
{{- $storage := int (include "spiritserve.gi" (list "resources.limits.ephemeral-storage" (index $limits "ephemeral-storage"))) }}
{{- if include "spiritserve.downloadToEmptyDir" . }}
{{- $storage = add $storage (include "spiritserve.gi" (list "checkpoints.download.sizeLimit" .Values.checkpoints.download.sizeLimit)) }}
{{- end }}
{{- $_ := set $limits "memory" (printf "%dGi" $memory) }}
{{- $_ = set $limits "ephemeral-storage" (printf "%dGi" $storage) }}
{{- include "spiritserve.resources" (dict "limits" $limits "requests" .Values.resources.requests) }}
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

{{/* How long one new pod may take to become ready: image pull, checkpoint download, the startup probe's window. */}}
{{- define "spiritserve.progressDeadlineSeconds" -}}
{{- $startup := mul .Values.probes.startup.periodSeconds .Values.probes.startup.failureThreshold }}
{{- $download := ternary .Values.checkpoints.download.timeoutSeconds 0 (eq .Values.checkpoints.source "download") }}
{{- add .Values.imagePullSeconds $download $startup }}
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
{{- printf "namespace=%q, pod=~%q" .Release.Namespace (printf "%s-[a-z0-9]+-[a-z0-9]+" (include "spiritserve.fullname" .)) }}
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

{{- $strategy := $values.strategy }}
{{- if not (has $strategy.type (list "RollingUpdate" "Recreate")) }}
{{- fail (printf "strategy.type must be RollingUpdate or Recreate, not %q" $strategy.type) }}
{{- end }}
{{- if eq $strategy.type "RollingUpdate" }}
{{- $zero := list "0" "0%" }}
{{- if and (has (toString $strategy.rollingUpdate.maxSurge) $zero) (has (toString $strategy.rollingUpdate.maxUnavailable) $zero) }}
{{- fail "strategy.rollingUpdate: maxSurge and maxUnavailable cannot both be 0: the rollout could never start" }}
{{- end }}
{{- end }}

{{- $budget := $values.podDisruptionBudget }}
{{- if and $budget.enabled (eq (kindIs "invalid" $budget.maxUnavailable) (kindIs "invalid" $budget.minAvailable)) }}
{{- fail "podDisruptionBudget: set exactly one of maxUnavailable and minAvailable (the other null)" }}
{{- end }}

{{- $scaling := $values.autoscaling }}
{{- if $scaling.enabled }}
{{- if not (has $scaling.engine (list "hpa" "keda")) }}
{{- fail (printf "autoscaling.engine must be hpa or keda, not %q" $scaling.engine) }}
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
{{- end }}
