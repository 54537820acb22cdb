{{/* Common names and labels. */}}
{{- define "tandem.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "tandem.sidecarImage" -}}
{{ .Values.injector.sidecarImage | default (include "tandem.image" .) }}
{{- end -}}

{{- define "tandem.labels" -}}
app.kubernetes.io/part-of: tandem
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tandem.injectorName" -}}
{{ .Release.Name }}-sidecar-injector
{{- end -}}

{{- define "tandem.operatorName" -}}
{{ .Release.Name }}-operator
{{- end -}}

{{/* Pod security for Tandem's own pods: non-root, read-only, no capabilities. */}}
{{- define "tandem.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tandem.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
