{{/*
Names, labels, the TOML renderer and the pieces every pgtrail pod shares (security
contexts, secret volumes). Must not: put a secret's value anywhere but a mounted file.
*/}}

{{- define "pgtrail.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pgtrail.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "pgtrail.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "pgtrail.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pgtrail.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pgtrail.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "processor"). */}}
{{- define "pgtrail.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgtrail.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pgtrail.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pgtrail.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pgtrail.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
TOML rendering. Helm reads every number of the values as a float (toToml writes 100000 as
100000.0 or 1e+05, which the binaries' integer keys refuse), so values are written here:
integral numbers as integers, strings JSON-quoted (TOML basic strings share JSON's escapes),
tables and arrays of tables with their dotted path; null values are left out.
*/}}
{{- define "pgtrail.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "pgtrail.toml.value" -}}
{{- $k := kindOf . -}}
{{- if eq $k "string" -}}{{ toJson . }}
{{- else if eq $k "bool" -}}{{ . }}
{{- else if or (eq $k "float64") (eq $k "int") (eq $k "int64") -}}
{{- if eq (float64 (int64 .)) (float64 .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if eq $k "slice" -}}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "pgtrail.toml.value" $e }}{{ end }}]
{{- else -}}{{ fail (printf "pgtrail: a config value of kind %s cannot be written as TOML" $k) }}
{{- end -}}
{{- end -}}

{{- define "pgtrail.toml.isTableArray" -}}
{{- if and (eq (kindOf .) "slice") (gt (len .) 0) -}}{{- if eq (kindOf (first .)) "map" -}}true{{- end -}}{{- end -}}
{{- end -}}

{{/* (dict "path" "lag" "map" $m): the keys of $m, then its tables. */}}
{{- define "pgtrail.toml.table" -}}
{{- $path := .path -}}
{{- range $k, $v := .map -}}
{{- if and (not (kindIs "invalid" $v)) (ne (kindOf $v) "map") (not (include "pgtrail.toml.isTableArray" $v)) }}
{{ include "pgtrail.toml.key" $k }} = {{ include "pgtrail.toml.value" $v }}
{{- end -}}
{{- end -}}
{{- range $k, $v := .map -}}
{{- $p := include "pgtrail.toml.key" $k -}}
{{- if $path -}}{{- $p = printf "%s.%s" $path $p -}}{{- end -}}
{{- if eq (kindOf $v) "map" }}

[{{ $p }}]
{{- include "pgtrail.toml.table" (dict "path" $p "map" $v) -}}
{{- else if include "pgtrail.toml.isTableArray" $v -}}
{{- range $e := $v }}

[[{{ $p }}]]
{{- include "pgtrail.toml.table" (dict "path" $p "map" $e) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "pgtrail.toml" -}}
{{- include "pgtrail.toml.table" (dict "path" "" "map" .) | trimPrefix "\n" }}
{{ end -}}

{{/* Where secrets are mounted: one directory per secret reference. */}}
{{- define "pgtrail.secretDir" -}}/etc/pgtrail/secrets/{{ . }}{{- end -}}

{{/*
The Kafka, registry and lake settings both binaries share, from the secret references:
every secret as a *_file key naming its mounted file.
*/}}
{{- define "pgtrail.kafkaSecurity" -}}
{{- $sec := dict -}}
{{- with .Values.kafka.tls -}}
{{- if .enabled -}}
{{- $tls := dict "verify_hostname" .verifyHostname -}}
{{- if .existingSecret -}}
{{- if .caKey }}{{ $_ := set $tls "ca_file" (printf "%s/%s" (include "pgtrail.secretDir" "kafka-tls") .caKey) }}{{ end -}}
{{- if .certKey }}{{ $_ := set $tls "cert_file" (printf "%s/%s" (include "pgtrail.secretDir" "kafka-tls") .certKey) }}{{ end -}}
{{- if .keyKey }}{{ $_ := set $tls "key_file" (printf "%s/%s" (include "pgtrail.secretDir" "kafka-tls") .keyKey) }}{{ end -}}
{{- end -}}
{{- $_ := set $sec "tls" $tls -}}
{{- end -}}
{{- end -}}
{{- with .Values.kafka.sasl -}}
{{- if .enabled -}}
{{- $sasl := dict "mechanism" .mechanism -}}
{{- if .username }}{{ $_ := set $sasl "username" .username }}{{ end -}}
{{- if .existingSecret -}}
{{- $_ := set $sasl "password_file" (printf "%s/%s" (include "pgtrail.secretDir" "kafka-sasl") .passwordKey) -}}
{{- end -}}
{{- $_ := set $sec "sasl" $sasl -}}
{{- end -}}
{{- end -}}
{{- toJson $sec -}}
{{- end -}}

{{- define "pgtrail.commonConfig" -}}
{{- $c := dict "brokers" (required "kafka.brokers is required" .Values.kafka.brokers) -}}
{{- $kafka := dict -}}
{{- $sec := include "pgtrail.kafkaSecurity" . | fromJson -}}
{{- if $sec }}{{ $_ := set $kafka "security" $sec }}{{ end -}}
{{- with .Values.kafka.properties }}{{ $kafka = merge $kafka . }}{{ end -}}
{{- if $kafka }}{{ $_ := set $c "kafka" $kafka }}{{ end -}}
{{- with .Values.registry -}}
{{- if .url -}}
{{- $_ := set $c "registry_url" .url -}}
{{- $r := dict -}}
{{- if .username }}{{ $_ := set $r "username" .username }}{{ end -}}
{{- if .existingSecret -}}
{{- if .passwordKey }}{{ $_ := set $r "password_file" (printf "%s/%s" (include "pgtrail.secretDir" "registry") .passwordKey) }}{{ end -}}
{{- if .caKey }}{{ $_ := set $r "ca_file" (printf "%s/%s" (include "pgtrail.secretDir" "registry") .caKey) }}{{ end -}}
{{- end -}}
{{- if $r }}{{ $_ := set $c "registry" $r }}{{ end -}}
{{- end -}}
{{- end -}}
{{- toJson $c -}}
{{- end -}}

{{/* The lake's [storage] table. */}}
{{- define "pgtrail.storage" -}}
{{- $st := dict -}}
{{- with .Values.lake.s3 -}}
{{- $s3 := dict -}}
{{- range $from, $to := dict "region" "region" "endpoint" "endpoint" "accessKeyId" "access_key_id" -}}
{{- with index $.Values.lake.s3 $from }}{{ $_ := set $s3 $to . }}{{ end -}}
{{- end -}}
{{- if .allowHttp }}{{ $_ := set $s3 "allow_http" true }}{{ end -}}
{{- if .commits }}{{ $_ := set $s3 "commits" .commits }}{{ end -}}
{{- if .existingSecret -}}
{{- $_ := set $s3 "secret_access_key_file" (printf "%s/%s" (include "pgtrail.secretDir" "lake-s3") .secretAccessKeyKey) -}}
{{- end -}}
{{- if $s3 }}{{ $_ := set $st "s3" $s3 }}{{ end -}}
{{- end -}}
{{- with .Values.lake.azure -}}
{{- $az := dict -}}
{{- if .account }}{{ $_ := set $az "account" .account }}{{ end -}}
{{- if .endpoint }}{{ $_ := set $az "endpoint" .endpoint }}{{ end -}}
{{- if .allowHttp }}{{ $_ := set $az "allow_http" true }}{{ end -}}
{{- if .existingSecret -}}
{{- $_ := set $az "access_key_file" (printf "%s/%s" (include "pgtrail.secretDir" "lake-azure") .accessKeyKey) -}}
{{- end -}}
{{- if $az }}{{ $_ := set $st "azure" $az }}{{ end -}}
{{- end -}}
{{- with .Values.lake.gcs -}}
{{- if .existingSecret -}}
{{- $_ := set $st "gcs" (dict "service_account_file" (printf "%s/%s" (include "pgtrail.secretDir" "lake-gcs") .serviceAccountKey)) -}}
{{- end -}}
{{- end -}}
{{- with .Values.lake.options }}{{ $_ := set $st "options" . }}{{ end -}}
{{- toJson $st -}}
{{- end -}}

{{/* The processor's (and lag monitor's) whole config file. */}}
{{- define "pgtrail.processorConfig" -}}
{{- $c := include "pgtrail.commonConfig" . | fromJson -}}
{{- $_ := set $c "lake" (required "lake.uri is required" .Values.lake.uri) -}}
{{- $_ := set $c "group" .Values.processor.group -}}
{{- $_ := set $c "topics" .Values.processor.topics -}}
{{- $_ := set $c "metrics_addr" (printf "0.0.0.0:%d" (int .Values.processor.metricsPort)) -}}
{{- $_ := set $c "drain_deadline_ms" (mul (int .Values.processor.drainSeconds) 1000) -}}
{{- $st := include "pgtrail.storage" . | fromJson -}}
{{- if $st }}{{ $_ := set $c "storage" $st }}{{ end -}}
{{- $lag := dict "metrics_addr" (printf "0.0.0.0:%d" (int .Values.lag.metricsPort)) -}}
{{- $_ := set $c "lag" (merge $lag (deepCopy (default dict .Values.lag.config))) -}}
{{- include "pgtrail.toml" (mergeOverwrite $c (deepCopy (default dict .Values.processor.config))) -}}
{{- end -}}

{{/* The shipper's config file, minus `server` and `logs` (given per pod). */}}
{{- define "pgtrail.shipperConfig" -}}
{{- $c := include "pgtrail.commonConfig" . | fromJson -}}
{{- $_ := set $c "state_dir" "/var/lib/pgtrail-shipper" -}}
{{- $_ := set $c "metrics_addr" (printf "0.0.0.0:%d" (int .Values.shipper.metricsPort)) -}}
{{- include "pgtrail.toml" (mergeOverwrite $c (deepCopy (default dict .Values.shipper.config))) -}}
{{- end -}}

{{/* Secret volumes: (list name secretName) for each reference set; with "lake" (the
processor's pods) also the lake's and `extraSecrets`. */}}
{{- define "pgtrail.secretRefs" -}}
{{- $refs := list -}}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.existingSecret }}{{ $refs = append $refs (list "kafka-tls" .Values.kafka.tls.existingSecret) }}{{ end -}}
{{- if and .Values.kafka.sasl.enabled .Values.kafka.sasl.existingSecret }}{{ $refs = append $refs (list "kafka-sasl" .Values.kafka.sasl.existingSecret) }}{{ end -}}
{{- if and .Values.registry.url .Values.registry.existingSecret }}{{ $refs = append $refs (list "registry" .Values.registry.existingSecret) }}{{ end -}}
{{- if .lake -}}
{{- if .Values.lake.s3.existingSecret }}{{ $refs = append $refs (list "lake-s3" .Values.lake.s3.existingSecret) }}{{ end -}}
{{- if .Values.lake.azure.existingSecret }}{{ $refs = append $refs (list "lake-azure" .Values.lake.azure.existingSecret) }}{{ end -}}
{{- if .Values.lake.gcs.existingSecret }}{{ $refs = append $refs (list "lake-gcs" .Values.lake.gcs.existingSecret) }}{{ end -}}
{{- range .Values.extraSecrets }}{{ $refs = append $refs (list (required "extraSecrets[].name" .name) (required "extraSecrets[].secretName" .secretName)) }}{{ end -}}
{{- end -}}
{{- toJson $refs -}}
{{- end -}}

{{/* (dict "Values" .Values "lake" bool): volumes of the secret references. */}}
{{- define "pgtrail.secretVolumes" -}}
{{- range (include "pgtrail.secretRefs" . | fromJsonArray) }}
- name: secret-{{ index . 0 }}
  secret:
    secretName: {{ index . 1 }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "pgtrail.secretMounts" -}}
{{- range (include "pgtrail.secretRefs" . | fromJsonArray) }}
- name: secret-{{ index . 0 }}
  mountPath: {{ include "pgtrail.secretDir" (index . 0) }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "pgtrail.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser | int64 }}
runAsGroup: {{ .Values.securityContext.runAsGroup | int64 }}
fsGroup: {{ .Values.securityContext.fsGroup | int64 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "pgtrail.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser | int64 }}
runAsGroup: {{ .Values.securityContext.runAsGroup | int64 }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
