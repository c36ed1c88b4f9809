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

{{/*
A pod template's labels: its selector labels and the podLabels value. Argument:
(list SELECTOR PODLABELS WHERE). A podLabels key that is a selector label with another value is
refused (the controller would no longer own its pods); WHERE names the value in that message.
*/}}
{{- define "csi-oxide.podLabels" -}}
{{- $selector := index . 0 }}
{{- $extra := default dict (index . 1) }}
{{- range $k, $v := $extra }}
{{- if and (hasKey $selector $k) (ne (toString $v) (toString (get $selector $k))) }}
{{- fail (printf "%s: %s is a selector label (%s), it cannot be changed" (index $ 2) $k (get $selector $k)) }}
{{- end }}
{{- end }}
{{- toYaml (merge (deepCopy $selector) $extra) }}
{{- end }}

{{/*
topologySpreadConstraints as given, a constraint without a labelSelector getting the pods' own
selector labels (what a spread of these pods means). Argument: (list SELECTOR CONSTRAINTS).
*/}}
{{- define "csi-oxide.topologySpread" -}}
{{- $selector := index . 0 }}
{{- $out := list }}
{{- range index . 1 }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* Whether an address is a loopback one (127.0.0.0/8, ::1, localhost): no Service reaches it. */}}
{{- define "csi-oxide.loopback" -}}
{{- if or (hasPrefix "127." .) (eq . "::1") (eq . "localhost") }}true{{ end }}
{{- end }}

{{/* The leader-election timing flags of the controller's sidecars, as a JSON list. */}}
{{- define "csi-oxide.leaderElectionFlags" -}}
{{- $out := list }}
{{- with .Values.controller.leaderElection }}
{{- with .leaseDuration }}{{ $out = append $out (printf "--leader-election-lease-duration=%s" .) }}{{ end }}
{{- with .renewDeadline }}{{ $out = append $out (printf "--leader-election-renew-deadline=%s" .) }}{{ end }}
{{- with .retryPeriod }}{{ $out = append $out (printf "--leader-election-retry-period=%s" .) }}{{ end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
A sidecar's args (list items): the chart's flags, its --v when logLevel is set, and its
extraArgs. An extra flag the chart sets already is refused: it has a value of its own. Argument:
(list FLAGS SIDECARVALUES KEY), KEY naming it under sidecars.
*/}}
{{- define "csi-oxide.sidecarArgs" -}}
{{- $v := index . 1 }}
{{- $key := index . 2 }}
{{- $args := index . 0 }}
{{- if not (kindIs "invalid" $v.logLevel) }}
{{- $args = append $args (printf "--v=%v" $v.logLevel) }}
{{- end }}
{{- $names := list }}
{{- range $args }}
{{- $names = append $names (regexReplaceAll "^-+([^=]*).*$" . "${1}") }}
{{- end }}
{{- range $v.extraArgs }}
{{- if has (regexReplaceAll "^-+([^=]*).*$" . "${1}") $names }}
{{- fail (printf "sidecars.%s.extraArgs: the chart sets %s already; change it through its value (timeout, logLevel, controller.leaderElection, ...)" $key .) }}
{{- end }}
{{- end }}
{{- range $args }}
- {{ . }}
{{- end }}
{{- range $v.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
