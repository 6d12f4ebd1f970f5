{{- define "floe.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "floe.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "gateway") */}}
{{- define "floe.selector" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "floe.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "floe.storeSecret" -}}
{{- .Values.store.existingSecret | default (printf "%s-store" (include "floe.fullname" .)) -}}
{{- end -}}

{{- define "floe.adminSecret" -}}
{{- .Values.adminToken.existingSecret | default (printf "%s-admin" (include "floe.fullname" .)) -}}
{{- end -}}

{{/* A container's environment: (dict "ctx" $ "admin" true) adds the admin token. */}}
{{- define "floe.env" -}}
env:
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
envFrom:
- configMapRef:
    name: {{ include "floe.fullname" .ctx }}
{{- if or .ctx.Values.store.existingSecret .ctx.Values.store.credentials.accessKeyId }}
- secretRef:
    name: {{ include "floe.storeSecret" .ctx }}
{{- end }}
{{- if .admin }}
- secretRef:
    name: {{ include "floe.adminSecret" .ctx }}
{{- end }}
{{- end -}}

{{- define "floe.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "floe.podAnnotations" -}}
checksum/config: {{ include (print .ctx.Template.BasePath "/config.yaml") .ctx | sha256sum }}
{{- if .ctx.Values.prometheusAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}
