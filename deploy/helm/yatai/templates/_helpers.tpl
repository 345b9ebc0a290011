{{/* Names and labels shared by every template. */}}
{{- define "yatai.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "yatai.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "yatai.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "yatai.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The URL the server is reached at: externalUrl, else the Ingress host, else the Service. */}}
{{- define "yatai.serverUrl" -}}
{{- if .Values.server.externalUrl -}}
{{ .Values.server.externalUrl }}
{{- else if and .Values.server.ingress.enabled .Values.server.ingress.host -}}
{{ if .Values.server.ingress.tlsSecret }}https{{ else }}http{{ end }}://{{ .Values.server.ingress.host }}
{{- else -}}
http://{{ include "yatai.fullname" . }}-server.{{ .Release.Namespace }}.svc:{{ .Values.server.service.port }}
{{- end -}}
{{- end -}}

{{/* The operator's namespaces as a list (empty for all). */}}
{{- define "yatai.operatorNamespaces" -}}
{{- if ne (trim .Values.operator.namespaces) "all" -}}
{{- range (splitList "," .Values.operator.namespaces) }}
- {{ trim . }}
{{- end -}}
{{- end -}}
{{- end -}}
