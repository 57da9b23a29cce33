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

{{/* connscope.rangeSize checks a FIRST-LAST (or single N) value as the
controller's --label-bits and --nflog-groups read it, within lo-hi, and
prints how many numbers it holds. It fails with the value's name, so that
helm refuses what would make the controller exit at start.
Call: include "connscope.rangeSize" (dict "name" "controller.labelBits"
"value" .Values.controller.labelBits "lo" 0 "hi" 127 "example" "16-31"
"why" "...") */}}
{{- define "connscope.rangeSize" -}}
{{- $s := toString .value -}}
{{- $want := printf "%s %q must be FIRST-LAST within %d-%d with FIRST <= LAST, such as %s (%s)" .name $s (int .lo) (int .hi) .example .why -}}
{{- if not (regexMatch "^[0-9]{1,5}(-[0-9]{1,5})?$" $s) -}}
{{- fail $want -}}
{{- end -}}
{{- $parts := splitList "-" $s -}}
{{- /* leading zeros would read as octal */ -}}
{{- $first := regexReplaceAll "^0+([0-9])" (first $parts) "${1}" | atoi -}}
{{- $last := regexReplaceAll "^0+([0-9])" (last $parts) "${1}" | atoi -}}
{{- if or (gt $first $last) (lt $first (int .lo)) (gt $last (int .hi)) -}}
{{- fail $want -}}
{{- end -}}
{{- add (sub $last $first) 1 -}}
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
