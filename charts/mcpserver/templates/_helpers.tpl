{{/* Names and labels shared by every object of the chart. */}}
{{- define "mcpserver.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mcpserver.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "mcpserver.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "mcpserver.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "mcpserver.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcpserver.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mcpserver.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "mcpserver.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: config-source
app.kubernetes.io/part-of: istio
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mcpserver.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mcpserver.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Every xds port, one "name port" line each: the whole set (grpc-xds, service.grpcPort), then
shard k of each layout N > 1 served (shards, previousShards) at grpcPort + 100*N + k, named
grpc-s<N>-<k>: the rule of mcpserver/xds/shards.py, which `mcpserver mesh-config` prints.
*/}}
{{- define "mcpserver.xdsPorts" -}}
grpc-xds {{ .Values.service.grpcPort }}
{{- $base := int .Values.service.grpcPort }}
{{- $a := int .Values.shards }}
{{- $b := int .Values.previousShards }}
{{- $layouts := ternary (list $a $b) (list $b $a) (lt $a $b) }}
{{- $seen := list 1 }}
{{- range $n := $layouts }}
{{- if not (has $n $seen) }}
{{- $seen = append $seen $n }}
{{- range $k := until $n }}
grpc-s{{ $n }}-{{ $k }} {{ add $base (mul 100 $n) $k }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The configSources istiod needs for `shards` (NOTES.txt, docs/deployment.md "Sharded serving"). */}}
{{- define "mcpserver.configSources" -}}
{{- $host := printf "%s.%s.svc" (include "mcpserver.fullname" .) .Release.Namespace }}
{{- $base := int .Values.service.grpcPort }}
{{- $n := int .Values.shards }}
{{- if le $n 1 }}
- address: xds://{{ $host }}:{{ $base }}
{{- else }}
{{- range $k := until $n }}
- address: xds://{{ $host }}:{{ add $base (mul 100 $n) $k }}
{{- end }}
{{- end }}
- address: k8s://
{{- end }}

{{/* "true" when replicas name each other (peers.enabled, auto: more than one replica). */}}
{{- define "mcpserver.peersEnabled" -}}
{{- if eq (toString .Values.peers.enabled) "auto" }}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- else if .Values.peers.enabled }}true
{{- end }}
{{- end }}

{{/* The headless Service that resolves to every ready replica. */}}
{{- define "mcpserver.peersName" -}}
{{- printf "%s-peers" (include "mcpserver.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* The config file: `config` as given, with `peers` and `state_dir` where it has none. */}}
{{- define "mcpserver.config" -}}
{{- $config := deepCopy .Values.config }}
{{- if and (include "mcpserver.peersEnabled" .) (not (hasKey $config "peers")) }}
{{- $address := printf "%s.%s.svc:%v" (include "mcpserver.peersName" .) .Release.Namespace .Values.service.adminPort }}
{{- $_ := set $config "peers" (dict "addresses" (list $address) "wait" .Values.peers.wait) }}
{{- end }}
{{- if and .Values.stateDir.enabled (not (hasKey $config "state_dir")) }}
{{- $_ := set $config "state_dir" .Values.stateDir.path }}
{{- end }}
{{- if include "mcpserver.sinkEnabled" . }}
{{- $kube := deepCopy (default (dict) $config.kubernetes) }}
{{- if not (hasKey $kube "owner") }}{{- $_ := set $kube "owner" (include "mcpserver.fullname" .) }}{{- end }}
{{- if not (hasKey $kube "lease_namespace") }}{{- $_ := set $kube "lease_namespace" .Release.Namespace }}{{- end }}
{{- $_ := set $config "kubernetes" $kube }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* "true" when config.sink names kubernetes (the sink needs a token and RBAC), else "". */}}
{{- define "mcpserver.sinkEnabled" -}}
{{- $sink := .Values.config.sink | default (list "mcp") }}
{{- if kindIs "string" $sink }}{{- $sink = list $sink }}{{- end }}
{{- if has "kubernetes" $sink }}true{{- end }}
{{- end }}
