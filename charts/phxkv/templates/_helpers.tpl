{{/*
Names and labels shared by the templates.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "phxkv.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The base name for the release's own objects: the release name when it
already contains the chart name (so `helm install phxkv` gives "phxkv"),
else "<release>-<chart>".
*/}}
{{- define "phxkv.fullname" -}}
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

{{/* The operator's Deployment, Service and RBAC objects. */}}
{{- define "phxkv.operatorName" -}}
{{- printf "%s-operator" (include "phxkv.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The operator's leader Lease, in the release namespace. */}}
{{- define "phxkv.operatorLeaseName" -}}
{{- default (include "phxkv.operatorName" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "phxkv.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "phxkv.operatorName" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The release's PaxosKV: named after the release, so its client Service is
https://<release>.<namespace>.svc:8080 (with TLS, the default). Object names derived from it
(<name>-peers, <name>-token, <name>-0 ...) must stay DNS labels.
*/}}
{{- define "phxkv.clusterName" -}}
{{- .Release.Name }}
{{- end }}

{{/* image.tag, or the chart's appVersion. */}}
{{- define "phxkv.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "phxkv.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object the chart renders. */}}
{{- define "phxkv.labels" -}}
helm.sh/chart: {{ include "phxkv.chart" . }}
app.kubernetes.io/part-of: phxkv
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of the operator's pod. */}}
{{- define "phxkv.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "phxkv.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "phxkv.operatorLabels" -}}
{{ include "phxkv.labels" . }}
{{ include "phxkv.operatorSelectorLabels" . }}
{{- end }}

{{/*
Labels the operator puts on the objects of a PaxosKV (its contract); the
ServiceMonitor selects the release's client Service with them.
*/}}
{{- define "phxkv.clusterSelectorLabels" -}}
app.kubernetes.io/name: phxkv
app.kubernetes.io/instance: {{ include "phxkv.clusterName" . }}
{{- end }}
