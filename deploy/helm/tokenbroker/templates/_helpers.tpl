{{/* Names, labels and the rendered broker configuration. */}}

{{- define "tokenbroker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tokenbroker.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tokenbroker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels shared by every object; the component label tells the broker from the embedded Redis. */}}
{{- define "tokenbroker.commonLabels" -}}
helm.sh/chart: {{ include "tokenbroker.chart" . }}
app.kubernetes.io/name: {{ include "tokenbroker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tokenbroker.labels" -}}
{{ include "tokenbroker.commonLabels" . }}
app.kubernetes.io/component: broker
{{- end -}}

{{- define "tokenbroker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenbroker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: broker
{{- end -}}

{{- define "tokenbroker.redis.fullname" -}}
{{- printf "%s-redis" (include "tokenbroker.fullname" . | trunc 57 | trimSuffix "-") -}}
{{- end -}}

{{- define "tokenbroker.redis.labels" -}}
{{ include "tokenbroker.commonLabels" . }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "tokenbroker.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenbroker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "tokenbroker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tokenbroker.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tokenbroker.configSecretName" -}}
{{- if .Values.configSecret.create -}}
{{- default (printf "%s-config" (include "tokenbroker.fullname" .)) .Values.configSecret.name -}}
{{- else -}}
{{- .Values.configSecret.name -}}
{{- end -}}
{{- end -}}

{{- define "tokenbroker.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* A Go duration of hours, minutes and seconds ("1m30s") in whole seconds. */}}
{{- define "tokenbroker.seconds" -}}
{{- $total := 0 -}}
{{- range $part := regexFindAll "[0-9]+[hms]" (toString .) -1 -}}
{{- $n := atoi (regexFind "[0-9]+" $part) -}}
{{- if hasSuffix "h" $part -}}{{- $n = mul $n 3600 -}}{{- else if hasSuffix "m" $part -}}{{- $n = mul $n 60 -}}{{- end -}}
{{- $total = add $total $n -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/* The probe kind: grpc, http, https or tcp. */}}
{{- define "tokenbroker.probeType" -}}
{{- if ne .Values.probes.type "auto" -}}
{{- .Values.probes.type -}}
{{- else if not .Values.tls.enabled -}}
grpc
{{- else -}}
https
{{- end -}}
{{- end -}}

{{/* The Redis addresses the broker dials. */}}
{{- define "tokenbroker.redisAddrs" -}}
{{- if .Values.redis.embedded.enabled -}}
{{- list (printf "%s:6379" (include "tokenbroker.redis.fullname" .)) | toJson -}}
{{- else -}}
{{- .Values.redis.addrs | toJson -}}
{{- end -}}
{{- end -}}

{{/* Fixed paths of files mounted from Secrets. */}}
{{/*
"true" when the OAuth callback listener is on: callback.enabled true, or "auto" and a
connection of type wax or authorization_code exists (as the broker itself decides).
*/}}
{{- define "tokenbroker.callbackEnabled" -}}
{{- $e := .Values.callback.enabled -}}
{{- if eq (toString $e) "auto" -}}
{{- range .Values.connections -}}
{{- if has .type (list "wax" "authorization_code") }}true{{ end -}}
{{- end -}}
{{- else if eq (toString $e) "true" -}}
true
{{- end -}}
{{- end -}}

{{- define "tokenbroker.paths" -}}
config: /etc/tokenbroker/config
redisPassword: /etc/tokenbroker/redis
redisCA: /etc/tokenbroker/redis-tls
redisClient: /etc/tokenbroker/redis-client
tmp: /tmp
{{- end -}}

{{/*
The broker's config.yaml. Every secret setting names a file mounted from a Secret;
no secret value is ever rendered here.
*/}}
{{- define "tokenbroker.config" -}}
{{- $v := .Values -}}
{{- $paths := include "tokenbroker.paths" . | fromYaml -}}
{{- $c := dict -}}
{{- $callback := ternary (printf ":%d" (int $v.ports.callback)) "off" (eq (include "tokenbroker.callbackEnabled" .) "true") -}}
{{- $_ := set $c "listen" (dict "grpc" (printf ":%d" (int $v.ports.grpc)) "admin" (printf ":%d" (int $v.ports.admin)) "callback" $callback "grpc_stream_workers" (int $v.grpcStreamWorkers)) -}}
{{- $_ = set $c "log" (dict "level" $v.log.level) -}}
{{- if $v.tls.enabled -}}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" $v.tls.mountPath) "key_file" (printf "%s/tls.key" $v.tls.mountPath) -}}
{{- if $v.tls.mtls -}}
{{- $_ = set $tls "client_ca_file" (printf "%s/ca.crt" $v.tls.mountPath) -}}
{{- end -}}
{{- with $v.tls.clientAuth -}}
{{- $_ = set $tls "client_auth" . -}}
{{- end -}}
{{- with $v.tls.minVersion -}}
{{- $_ = set $tls "min_version" . -}}
{{- end -}}
{{- $_ = set $c "tls" $tls -}}
{{- end -}}
{{- $anon := dict "enabled" $v.auth.allowAnonymous.enabled "loopback_only" $v.auth.allowAnonymous.loopbackOnly -}}
{{- if $v.auth.allowAnonymous.policy -}}
{{- $_ = set $anon "policy" $v.auth.allowAnonymous.policy -}}
{{- end -}}
{{- $_ = set $c "auth" (dict "allow_anonymous" $anon "callers" (default list $v.auth.callers)) -}}
{{- if $v.encryption.existingSecret -}}
{{- $keys := list -}}
{{- range $id := $v.encryption.keys -}}
{{- $keys = append $keys (dict "id" $id "secret" (dict "file" (printf "%s/%s" $v.encryption.mountPath $id))) -}}
{{- end -}}
{{- $enc := dict "keys" $keys "insecure_plaintext" false -}}
{{- if $v.encryption.primary -}}
{{- $_ = set $enc "primary" $v.encryption.primary -}}
{{- end -}}
{{- $_ = set $c "encryption" $enc -}}
{{- else if $v.encryption.insecurePlaintext -}}
{{- $_ = set $c "encryption" (dict "insecure_plaintext" true) -}}
{{- end -}}
{{- $cache := dict "type" $v.cache.type -}}
{{- if eq $v.cache.type "memory" -}}
{{- $_ = set $cache "state_file" $v.cache.stateFile -}}
{{- else -}}
{{- $r := $v.redis -}}
{{- $redis := dict "addrs" (include "tokenbroker.redisAddrs" . | fromJsonArray) "master_name" $r.masterName "cluster" $r.cluster "username" $r.username "key_prefix" $r.keyPrefix -}}
{{- if $r.existingSecret -}}
{{- $_ = set $redis "password" (dict "file" (printf "%s/password" $paths.redisPassword)) -}}
{{- if $r.sentinelPasswordKey -}}
{{- $_ = set $redis "sentinel_password" (dict "file" (printf "%s/sentinel-password" $paths.redisPassword)) -}}
{{- end -}}
{{- end -}}
{{- if $r.db -}}
{{- $_ = set $redis "db" (int $r.db) -}}
{{- end -}}
{{- if $r.dialTimeout -}}
{{- $_ = set $redis "dial_timeout" $r.dialTimeout -}}
{{- end -}}
{{- if $r.opTimeout -}}
{{- $_ = set $redis "op_timeout" $r.opTimeout -}}
{{- end -}}
{{- if $r.sentinelUsername -}}
{{- $_ = set $redis "sentinel_username" $r.sentinelUsername -}}
{{- end -}}
{{- $rtls := dict "enabled" $r.tls.enabled -}}
{{- if $r.tls.caSecret -}}
{{- $_ = set $rtls "ca_file" (printf "%s/ca.crt" $paths.redisCA) -}}
{{- end -}}
{{- if $r.tls.serverName -}}
{{- $_ = set $rtls "server_name" $r.tls.serverName -}}
{{- end -}}
{{- if $r.tls.clientCertSecret -}}
{{- $_ = set $rtls "cert_file" (printf "%s/tls.crt" $paths.redisClient) -}}
{{- $_ = set $rtls "key_file" (printf "%s/tls.key" $paths.redisClient) -}}
{{- end -}}
{{- $_ = set $redis "tls" $rtls -}}
{{- $_ = set $cache "redis" $redis -}}
{{- end -}}
{{- $_ = set $c "cache" $cache -}}
{{- $b := $v.broker -}}
{{- $_ = set $c "broker" (dict "lease_ttl" $b.leaseTTL "l1_max_age" $b.l1MaxAge "fetch_timeout" $b.fetchTimeout "refresh_ahead" $b.refreshAhead "remember_rejections" $b.rememberRejections) -}}
{{- with $v.tracing -}}
{{- if .enabled -}}
{{- $_ = set $c "tracing" (dict "enabled" true "otlp_endpoint" .otlpEndpoint "insecure" .insecure "sample_ratio" .sampleRatio) -}}
{{- end -}}
{{- end -}}
{{- if $v.secrets.strictPermissions -}}
{{- $_ = set $c "secrets" (dict "strict_permissions" true) -}}
{{- end -}}
{{- $_ = set $c "connections" (default list $v.connections) -}}
{{- toYaml $c -}}
{{- end -}}

{{/*
A probe's action. kubelet's native gRPC probe speaks plaintext only, so with TLS the
probes use HTTPS on the admin port: kubelet does not verify the certificate, and the
broker never asks for client certificates there, even with mutual TLS on gRPC.
*/}}
{{- define "tokenbroker.probeAction" -}}
{{- $v := .ctx.Values -}}
{{- if eq .type "grpc" -}}
grpc:
  port: {{ $v.ports.grpc }}
  service: {{ .service | quote }}
{{- else if or (eq .type "http") (eq .type "https") -}}
httpGet:
  path: {{ .path }}
  port: admin
  scheme: {{ upper .type }}
{{- else -}}
tcpSocket:
  port: grpc
{{- end -}}
{{- end -}}

{{/*
The broker container's volume mounts, shared by the check-config init container.
*/}}
{{- define "tokenbroker.volumeMounts" -}}
{{- $v := .Values -}}
{{- $paths := include "tokenbroker.paths" . | fromYaml -}}
{{- $memory := eq $v.cache.type "memory" -}}
- name: config
  mountPath: {{ $paths.config }}
  readOnly: true
- name: tmp
  mountPath: {{ $paths.tmp }}
{{- if $memory }}
- name: state
  mountPath: {{ dir $v.cache.stateFile }}
{{- end }}
{{- if $v.tls.enabled }}
- name: tls
  mountPath: {{ $v.tls.mountPath }}
  readOnly: true
{{- end }}
{{- if $v.encryption.existingSecret }}
- name: encryption-keys
  mountPath: {{ $v.encryption.mountPath }}
  readOnly: true
{{- end }}
{{- if and (not $memory) $v.redis.existingSecret }}
- name: redis-password
  mountPath: {{ $paths.redisPassword }}
  readOnly: true
{{- end }}
{{- if and (not $memory) $v.redis.tls.caSecret }}
- name: redis-ca
  mountPath: {{ $paths.redisCA }}
  readOnly: true
{{- end }}
{{- if and (not $memory) $v.redis.tls.clientCertSecret }}
- name: redis-client-cert
  mountPath: {{ $paths.redisClient }}
  readOnly: true
{{- end }}
{{- range $i, $s := $v.connectionSecrets }}
- name: conn-secret-{{ $i }}
  mountPath: {{ $s.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}
