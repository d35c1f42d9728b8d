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

{{- define "spiritserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
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
{{- $grace := int .Values.terminationGracePeriodSeconds }}
{{- $needed := add (int .Values.config.drainTimeoutSeconds) (int .Values.preStopSleepSeconds) }}
{{- if le $grace $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + config.drainTimeoutSeconds (%d): the kubelet would kill requests that are still draining" $grace $needed) }}
{{- end }}
{{- if not (has .Values.checkpoints.source (list "pvc" "download")) }}
{{- fail (printf "checkpoints.source must be pvc or download, not %q" .Values.checkpoints.source) }}
{{- end }}
{{- if and (eq .Values.checkpoints.source "pvc") (not .Values.checkpoints.pvc.claimName) }}
{{- fail "checkpoints.pvc.claimName is required when checkpoints.source is pvc" }}
{{- end }}
{{- if and (eq .Values.checkpoints.source "download") (not .Values.checkpoints.download.source) }}
{{- fail "checkpoints.download.source (rclone remote:path) is required when checkpoints.source is download" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (has .Values.autoscaling.engine (list "hpa" "keda"))) }}
{{- fail (printf "autoscaling.engine must be hpa or keda, not %q" .Values.autoscaling.engine) }}
{{- end }}
{{- if and .Values.apiKeys.enabled .Values.config.publicPaths }}
{{- $public := splitList "," (.Values.config.publicPaths | replace " " "") }}
{{- range $probe := list .Values.probes.startup.path .Values.probes.readiness.path .Values.probes.liveness.path }}
{{- if not (has $probe $public) }}
{{- fail (printf "config.publicPaths must list the probe path %s when apiKeys.enabled: the kubelet sends no API key" $probe) }}
{{- end }}
{{- end }}
{{- if and (or .Values.metrics.serviceMonitor.enabled .Values.metrics.scrapeAnnotations) (not (has "/metrics" $public)) }}
{{- fail "config.publicPaths must list /metrics when apiKeys.enabled and Prometheus scrapes the pods (it sends no API key)" }}
{{- end }}
{{- end }}
{{- if and .Values.apiKeys.enabled (not .Values.apiKeys.existingSecret) (not .Values.apiKeys.keys) }}
{{- fail "apiKeys.enabled needs apiKeys.existingSecret or at least one entry in apiKeys.keys" }}
{{- end }}
{{- end }}
