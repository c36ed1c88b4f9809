{{/*
The node section as each node-plugin DaemonSet sees it, by DaemonSet name, set into OUT (a dict
the caller passes: a template cannot return a map, but it can fill one). Argument:
(dict "root" $ "out" OUT). node.yaml renders a DaemonSet from each; templates/tests/ a doctor pod.
csi-oxide-node sees node.* with the top-level kubeletDir, metrics.node (address, port) and
registration ports. csi-oxide-node-KEY, for each node.additionalDaemonSets entry, sees that with
the entry's values over it: each value given replaces the main one's; hostPaths, metrics and
registration are taken key by key; selectorLabels is never inherited (two DaemonSets must not
select each other's pods): csi.oxide.computer/node-group: KEY unless given. Refuses a key that
cannot end a name, a relative kubeletDir and two DaemonSets with one selector.
*/}}
{{- define "csi-oxide.nodeViews" -}}
{{- $root := .root }}
{{- $out := .out }}
{{- $main := omit (deepCopy $root.Values.node) "additionalDaemonSets" }}
{{- $_ := set $main "kubeletDir" $root.Values.kubeletDir }}
{{- $_ = set $main "metrics" (deepCopy $root.Values.metrics.node) }}
{{- $_ = set $main "registration" (pick $root.Values.registration "livenessProbePort" "registrarHealthPort") }}
{{- $_ = set $out "csi-oxide-node" $main }}
{{- $selectors := dict (toJson (default dict $main.selectorLabels)) "csi-oxide-node" }}
{{- range $key, $overrides := $root.Values.node.additionalDaemonSets }}
{{- $name := printf "csi-oxide-node-%s" $key }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$" $key) }}
{{- fail (printf "node.additionalDaemonSets: %q must be lower-case letters, digits and '-' (at most 40), as it ends a DaemonSet's name" $key) }}
{{- end }}
{{- $node := deepCopy $main }}
{{- $_ := set $node "selectorLabels" (dict "csi.oxide.computer/node-group" $key) }}
{{- range $field, $value := $overrides }}
{{- if and (has $field (list "hostPaths" "metrics" "registration")) (kindIs "map" $value) }}
{{- $_ := set $node $field (merge (deepCopy $value) (get $node $field)) }}
{{- else }}
{{- $_ := set $node $field $value }}
{{- end }}
{{- end }}
{{- if not (hasPrefix "/" (toString $node.kubeletDir)) }}
{{- fail (printf "node.additionalDaemonSets.%s.kubeletDir must be an absolute path, not %q" $key (toString $node.kubeletDir)) }}
{{- end }}
{{- $selector := toJson $node.selectorLabels }}
{{- with get $selectors $selector }}
{{- fail (printf "node.additionalDaemonSets.%s: its selectorLabels are those of %s; each DaemonSet needs its own" $key .) }}
{{- end }}
{{- $_ := set $selectors $selector $name }}
{{- $_ := set $out $name $node }}
{{- end }}
{{- end }}

{{/* The selector labels of a node-plugin DaemonSet's pods. Argument: the node section it sees. */}}
{{- define "csi-oxide.nodeSelectorLabels" -}}
{{- toYaml (merge (dict "app.kubernetes.io/name" "csi-oxide" "app.kubernetes.io/component" "node") (default dict .selectorLabels)) }}
{{- end }}

{{/*
One node-plugin DaemonSet. Argument: (dict "root" $ "name" NAME "node" VALUES), where VALUES is
the node section as this DaemonSet sees it (csi-oxide.nodeViews makes it): node.* with
kubeletDir, metrics (address, port), registration (livenessProbePort, registrarHealthPort) and
selectorLabels of its own, so the main DaemonSet and every node.additionalDaemonSets entry render
from the one text.
*/}}
{{- define "csi-oxide.nodeDaemonSet" -}}
{{- $root := .root }}
{{- $n := .node }}
{{- $kubelet := $n.kubeletDir | trimSuffix "/" }}
{{- $socket := printf "%s/plugins/csi.oxide.computer/csi.sock" $kubelet }}
{{- $official := eq $root.Values.registration.mode "official" }}
{{- $metrics := $root.Values.metrics.enabled }}
{{- $paths := $n.hostPaths }}
{{- $taint := $root.Values.startupTaint.enabled }}
{{- $selector := include "csi-oxide.nodeSelectorLabels" $n | fromYaml }}
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "csi-oxide.labels" $root | nindent 4 }}
    app.kubernetes.io/component: node
spec:
  selector:
    matchLabels:
      {{- toYaml $selector | nindent 6 }}
  {{- with $n.updateStrategy }}
  updateStrategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "csi-oxide.podLabels" (list $selector $n.podLabels (printf "%s: podLabels" .name)) | nindent 8 }}
      {{- with $n.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: csi-oxide-node
      # A token only to lift the startup taint (startupTaint.enabled); else none at all.
      automountServiceAccountToken: {{ $taint }}
      {{- with $n.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- if $root.Values.hostNetwork }}
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      {{- end }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $n.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $n.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $n.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $n.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- include "csi-oxide.topologySpread" (list $selector .) | nindent 8 }}
      {{- end }}
      containers:
        - name: csi-oxide
          {{- include "csi-oxide.image" (list $root.Values.image $root) | nindent 10 }}
          args:
            - serve
            - --mode=node
            - --endpoint=unix:///csi/csi.sock
            - --log-format={{ $root.Values.logFormat }}
            {{- with $root.Values.logLevel }}
            - --log-level={{ . }}
            {{- end }}
            {{- if $metrics }}
            - {{ include "csi-oxide.metricsAddress" (list $n.metrics) }}
            {{- end }}
            # The records of what the plugin mounted and formatted (its only proof before it
            # unmounts, deletes or formats): on the host, to outlive the container and reboots.
            - --state-dir=/var/lib/csi-oxide/node
            {{- if not $official }}
            # Registers with the kubelet itself (its plugin registration API, in place of
            # node-driver-registrar); the kubelet dials the CSI socket at this host path.
            - --registration-dir=/registration
            - --kubelet-registration-path={{ $socket }}
            {{- end }}
            {{- if $taint }}
            - --startup-taint
            {{- end }}
          {{- if or $taint $n.extraEnv }}
          env:
            {{- if $taint }}
            - name: NODE_NAME
              valueFrom:
                fieldRef: {fieldPath: spec.nodeName}
            {{- include "csi-oxide.apiServerEnv" $root | nindent 12 }}
            {{- end }}
            {{- with $n.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          securityContext:
            privileged: true
            runAsUser: 0
          {{- if or $metrics $official }}
          ports:
            {{- if $metrics }}
            - {name: metrics, containerPort: {{ $n.metrics.port }}}
            {{- end }}
            {{- if $official }}
            - {name: healthz, containerPort: {{ $n.registration.livenessProbePort }}}
            {{- end }}
          # Built in: fails when the CSI socket stops answering or the kubelet refused us.
          # Official: the livenessprobe sidecar turns /healthz into a CSI Probe.
          livenessProbe:
            httpGet:
              path: /healthz
              port: {{ ternary "healthz" "metrics" $official }}
              {{- with $root.Values.probeHost }}
              host: {{ . | quote }}
              {{- end }}
            initialDelaySeconds: 10
            periodSeconds: 20
            timeoutSeconds: 10
            failureThreshold: 5
          {{- end }}
          {{- with $n.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - {name: plugin-dir, mountPath: /csi}
            {{- if not $official }}
            - {name: registration-dir, mountPath: /registration}
            {{- end }}
            - {name: kubelet-dir, mountPath: {{ $kubelet | quote }}, mountPropagation: Bidirectional}
            - {name: device-dir, mountPath: /dev}
            - {name: sys-dir, mountPath: /sys}
            - {name: udev-dir, mountPath: /run/udev, readOnly: true}
            - {name: state-dir, mountPath: /var/lib/csi-oxide/node}
            {{- with $n.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
        {{- if $official }}
        - name: node-driver-registrar
          {{- include "csi-oxide.image" (list $root.Values.sidecars.nodeDriverRegistrar $root) | nindent 10 }}
          args:
            {{- $flags := list "--csi-address=/csi/csi.sock" (printf "--kubelet-registration-path=%s" $socket) (printf "--http-endpoint=%s:%v" $root.Values.probeHost $n.registration.registrarHealthPort) }}
            {{- include "csi-oxide.sidecarArgs" (list $flags $root.Values.sidecars.nodeDriverRegistrar "nodeDriverRegistrar") | nindent 12 }}
          ports:
            - {name: healthz-reg, containerPort: {{ $n.registration.registrarHealthPort }}}
          livenessProbe:
            httpGet:
              path: /healthz
              port: healthz-reg
              {{- with $root.Values.probeHost }}
              host: {{ . | quote }}
              {{- end }}
            initialDelaySeconds: 5
            timeoutSeconds: 5
          {{- include "csi-oxide.sidecarSecurityContext" $root | nindent 10 }}
          {{- with $n.sidecarResources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - {name: plugin-dir, mountPath: /csi}
            - {name: registration-dir, mountPath: /registration}
        - name: liveness-probe
          {{- include "csi-oxide.image" (list $root.Values.sidecars.livenessProbe $root) | nindent 10 }}
          args:
            {{- $flags := list "--csi-address=/csi/csi.sock" (printf "--http-endpoint=%s:%v" $root.Values.probeHost $n.registration.livenessProbePort) (printf "--probe-timeout=%s" $root.Values.sidecars.livenessProbe.probeTimeout) }}
            {{- include "csi-oxide.sidecarArgs" (list $flags $root.Values.sidecars.livenessProbe "livenessProbe") | nindent 12 }}
          {{- include "csi-oxide.sidecarSecurityContext" $root | nindent 10 }}
          {{- with $n.sidecarResources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - {name: plugin-dir, mountPath: /csi}
        {{- end }}
      volumes:
        - name: plugin-dir
          hostPath: {path: {{ printf "%s/plugins/csi.oxide.computer/" $kubelet | quote }}, type: DirectoryOrCreate}
        - name: registration-dir
          hostPath: {path: {{ printf "%s/plugins_registry/" $kubelet | quote }}, type: Directory}
        - name: kubelet-dir
          hostPath: {path: {{ $kubelet | quote }}, type: Directory}
        - name: device-dir
          hostPath: {path: {{ $paths.dev | quote }}, type: Directory}
        - name: sys-dir
          hostPath: {path: {{ $paths.sys | quote }}, type: Directory}
        - name: udev-dir
          hostPath: {path: {{ $paths.udev | quote }}, type: DirectoryOrCreate}
        - name: state-dir
          hostPath: {path: {{ $paths.state | quote }}, type: DirectoryOrCreate}
        {{- with $n.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end }}
