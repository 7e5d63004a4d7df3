{{/* Names: <release>-mesh unless the release name holds the chart name; 63 characters at most. */}}
{{- define "mesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mesh.fullname" -}}
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

{{/* A component's object name: <fullname>-<suffix>, kept under 63 characters. */}}
{{- define "mesh.component" -}}
{{- printf "%s-%s" (include "mesh.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix }}
{{- end }}

{{- define "mesh.podsName" -}}{{ include "mesh.fullname" . }}{{- end }}
{{- define "mesh.headlessName" -}}{{ include "mesh.component" (dict "root" . "suffix" "pods") }}{{- end }}
{{- define "mesh.etcdName" -}}{{ include "mesh.component" (dict "root" . "suffix" "etcd") }}{{- end }}
{{- define "mesh.etcdHeadlessName" -}}{{ include "mesh.component" (dict "root" . "suffix" "etcd-peers") }}{{- end }}
{{- define "mesh.controllerName" -}}{{ include "mesh.component" (dict "root" . "suffix" "controller") }}{{- end }}
{{- define "mesh.dashboardName" -}}{{ include "mesh.component" (dict "root" . "suffix" "dashboard") }}{{- end }}

{{/* The Secret (model-serving-etcd format) the pods read: an existing one or the chart's own. */}}
{{- define "mesh.etcdSecretName" -}}
{{- if and (eq .Values.etcd.mode "external") .Values.etcd.external.secretName }}
{{- .Values.etcd.external.secretName }}
{{- else }}
{{- include "mesh.component" (dict "root" . "suffix" "etcd-connection") }}
{{- end }}
{{- end }}

{{/* etcd client URLs written into the chart-made connection Secret. */}}
{{- define "mesh.etcdEndpoints" -}}
{{- if eq .Values.etcd.mode "bundled" }}
{{- $urls := list }}
{{- range $i := until (int .Values.etcd.bundled.replicas) }}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc:2379" (include "mesh.etcdName" $) $i (include "mesh.etcdHeadlessName" $) $.Release.Namespace) }}
{{- end }}
{{- join "," $urls }}
{{- else }}
{{- .Values.etcd.external.endpoints }}
{{- end }}
{{- end }}

{{- define "mesh.registryNamespace" -}}
{{- default (printf "%s-%s" .Release.Namespace (include "mesh.fullname" .)) .Values.pods.registryNamespace }}
{{- end }}

{{- define "mesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "mesh.chartLabel" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass (dict "root" $ "component" "pods"). */}}
{{- define "mesh.labels" -}}
helm.sh/chart: {{ include "mesh.chartLabel" .root }}
{{ include "mesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: mesh
{{- end }}

{{- define "mesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Label matchers of the alerts' series. */}}
{{- define "mesh.alertMatchers" -}}
{{- default (printf "namespace=%q" .Release.Namespace) .Values.monitoring.prometheusRule.matchers }}
{{- end }}

{{/*
Grace for a stopping pod: the preStop wait, the hand-over, in-flight calls, then up to four
registry calls of 5 s each (mark shutting down, cancel loads, revoke the lease) and 10 s to spare.
*/}}
{{- define "mesh.terminationGrace" -}}
{{- add (int .Values.pods.preStopSleepSeconds) (int .Values.pods.handoffTimeoutSeconds) (int .Values.pods.stopGraceSeconds) 30 }}
{{- end }}

{{/*
Values that cannot work. values.schema.json rejects them too; these messages also hold when the
schema is skipped (--skip-schema-validation) and name each value by its path.
*/}}
{{- define "mesh.validate" -}}
{{- $fraction := float64 .Values.pods.capacityFraction }}
{{- if or (le $fraction 0.0) (gt $fraction 1.0) }}
{{- fail (printf "pods.capacityFraction must be above 0 and at most 1 (a fraction of the memory limit), got %v" .Values.pods.capacityFraction) }}
{{- end }}
{{- if not (has (int .Values.etcd.bundled.replicas) (list 1 3)) }}
{{- fail (printf "etcd.bundled.replicas must be 1 or 3, got %v: an etcd cluster of 2 tolerates no failure and splits votes" .Values.etcd.bundled.replicas) }}
{{- end }}
{{- if not (has .Values.etcd.mode (list "bundled" "external")) }}
{{- fail (printf "etcd.mode must be bundled or external, got %q" .Values.etcd.mode) }}
{{- end }}
{{- if and (eq .Values.etcd.mode "bundled") (or .Values.etcd.external.endpoints .Values.etcd.external.secretName) }}
{{- fail "etcd.external.endpoints or etcd.external.secretName is set but etcd.mode is bundled: set etcd.mode=external to use that etcd" }}
{{- end }}
{{- if and (eq .Values.etcd.mode "external") (not .Values.etcd.external.endpoints) (not .Values.etcd.external.secretName) }}
{{- fail "etcd.mode is external but neither etcd.external.endpoints nor etcd.external.secretName is set: give the etcd URLs or the name of a Secret in the model-serving-etcd format" }}
{{- end }}
{{- if and .Values.controller.namespaceSelector (not (regexMatch "^[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*$" .Values.controller.namespaceSelector)) }}
{{- fail (printf "controller.namespaceSelector must be KEY=VALUE, got %q" .Values.controller.namespaceSelector) }}
{{- end }}
{{- if and .Values.controller.namespaces (or .Values.controller.namespaceSelector .Values.controller.allNamespaces) }}
{{- fail "controller.namespaces cannot be combined with controller.namespaceSelector or controller.allNamespaces: give a list of namespaces, a label selector, or all namespaces" }}
{{- end }}
{{- if and .Values.controller.namespaceSelector .Values.controller.allNamespaces }}
{{- fail "controller.namespaceSelector cannot be combined with controller.allNamespaces" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%v) must be at most autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- end }}

{{/* Does the controller need cluster-wide RBAC? */}}
{{- define "mesh.controllerClusterWide" -}}
{{- if or .Values.controller.allNamespaces .Values.controller.namespaceSelector }}true{{ end }}
{{- end }}

{{- define "mesh.controllerNamespaces" -}}
{{- if .Values.controller.namespaces }}{{ join "," .Values.controller.namespaces }}{{ else }}{{ .Release.Namespace }}{{ end }}
{{- end }}

{{/* The controller's rules, the same in a Role and a ClusterRole. */}}
{{- define "mesh.controllerRules" }}
  # The resources the controller turns into registrations.
  - apiGroups: ["serving.kserve.io"]
    resources: ["predictors", "inferenceservices"]
    verbs: ["get", "list", "watch", "patch", "update"]
  - apiGroups: ["serving.kserve.io"]
    resources:
      - predictors/status
      - predictors/finalizers
      - inferenceservices/status
      - inferenceservices/finalizers
    verbs: ["get", "patch", "update"]
  # kopf reports handler progress as core/v1 events.
  - apiGroups: [""]
    resources: ["events"]
    verbs: ["create", "patch"]
{{- end }}
