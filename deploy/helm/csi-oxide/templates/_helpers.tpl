{{/* Labels on every object's metadata: Helm's recommended set. */}}
{{- define "csi-oxide.labels" -}}
app.kubernetes.io/name: csi-oxide
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The Secret with the Oxide credentials: the user's, or the one this chart makes. */}}
{{- define "csi-oxide.secretName" -}}
{{- .Values.credentials.existingSecret | default .Values.credentials.secretName -}}
{{- end }}

{{/* image: and, when set, imagePullPolicy: of a container. Argument: (list image root). */}}
{{- define "csi-oxide.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
image: {{ printf "%s:%s" $image.repository ($image.tag | default $root.Chart.AppVersion) | quote }}
{{- with $image.pullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
{{- end }}

{{/* The kubelet's root folder, without a trailing slash. */}}
{{- define "csi-oxide.kubeletDir" -}}
{{- .Values.kubeletDir | trimSuffix "/" -}}
{{- end }}

{{/* What every sidecar container has: its securityContext. */}}
{{- define "csi-oxide.sidecarSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
{{- end }}

{{/* KUBERNETES_SERVICE_HOST/PORT entries when apiServer is set (list items). */}}
{{- define "csi-oxide.apiServerEnv" -}}
{{- if .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.apiServer.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.apiServer.port | toString | required "apiServer.port is required with apiServer.host" | quote }}
{{- end }}
{{- end }}

{{/* The metrics/healthz address flag of a component. Argument: (list componentValues). */}}
{{- define "csi-oxide.metricsAddress" -}}
{{- $m := index . 0 -}}
--metrics-address={{ $m.address }}:{{ $m.port }}
{{- end }}

{{/* Refuse values that would render a broken install, with a message saying what to change. */}}
{{- define "csi-oxide.validate" -}}
{{- if not (has .Values.registration.mode (list "builtin" "official")) }}
{{- fail (printf "registration.mode must be builtin or official, not %q" .Values.registration.mode) }}
{{- end }}
{{- if not (hasPrefix "/" .Values.kubeletDir) }}
{{- fail (printf "kubeletDir must be an absolute path, not %q" .Values.kubeletDir) }}
{{- end }}
{{- end }}
