{{/* Labels of every object the chart makes. */}}
{{- define "connscope.labels" -}}
app.kubernetes.io/name: connscope
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The controller's selector: the same as config/manager's. */}}
{{- define "connscope.controllerSelector" -}}
app.kubernetes.io/name: connscope
app.kubernetes.io/component: controller
{{- end -}}

{{/* The connscope image: the tag, or the chart's appVersion when it is
empty. */}}
{{- define "connscope.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The namespace a generated Role names (config/rbac/role.yaml says
connscope-system or connscope-agents) mapped to the configured one. */}}
{{- define "connscope.mapNamespace" -}}
{{- $ns := .ns -}}
{{- if eq $ns "connscope-system" -}}{{ .root.Values.namespaces.system }}
{{- else if eq $ns "connscope-agents" -}}{{ .root.Values.namespaces.agents }}
{{- else -}}{{ fail (printf "config/rbac/role.yaml names namespace %q, which the chart does not know" $ns) }}
{{- end -}}
{{- end -}}
