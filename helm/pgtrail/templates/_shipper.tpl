{{/*
The shipper container, for the pod that holds the PostgreSQL logs.

  {{ include "pgtrail.shipper.container" (dict "ctx" $ "server" "orders" "logVolume" "pgdata" "logDir" "/var/lib/postgresql/data/log" "logs" (list "postgresql-*") "stateVolume" "pgtrail-state") }}

renders one container (for a pod's `containers` or a chart's `sidecars` list); the pod also
needs the volumes of `pgtrail.shipper.volumes` (the config and the secrets) and a small volume
for the state directory (`stateVolume`: an emptyDir re-ships the files still on disk after a
pod is re-created; the processor drops the copies, so nothing is written twice; a PVC avoids
the re-reading). The README's "Deploy" section has complete examples for the Bitnami
PostgreSQL chart, the Zalando operator and CloudNativePG.
*/}}
{{- define "pgtrail.shipper.container" -}}
{{- $ctx := .ctx -}}
{{- $logMount := .logMountPath | default .logDir -}}
name: pgtrail-shipper
image: {{ include "pgtrail.image" $ctx }}
imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
command: ["pgtrail-shipper"]
args:
  - --log-format=json
  - --config=/etc/pgtrail/pgtrail-shipper.toml
  - --server={{ required "the shipper's server name" .server }}
  {{- range .logs }}
  - --logs={{ $logMount }}/{{ . }}
  {{- end }}
ports:
  - name: metrics
    containerPort: {{ $ctx.Values.shipper.metricsPort }}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 30
securityContext:
  {{- include "pgtrail.containerSecurityContext" $ctx | nindent 2 }}
resources:
  {{- toYaml $ctx.Values.shipper.resources | nindent 2 }}
volumeMounts:
  - name: {{ .logVolume }}
    mountPath: {{ $logMount }}
    readOnly: true
  - name: {{ .stateVolume | default "pgtrail-state" }}
    mountPath: /var/lib/pgtrail-shipper
  - name: pgtrail-shipper-config
    mountPath: /etc/pgtrail/pgtrail-shipper.toml
    subPath: pgtrail-shipper.toml
    readOnly: true
  {{- include "pgtrail.secretMounts" (dict "Values" $ctx.Values "lake" false) | nindent 2 }}
{{- end -}}

{{/* Volumes the shipper container needs besides the logs and the state: (dict "ctx" $). */}}
{{- define "pgtrail.shipper.volumes" -}}
- name: pgtrail-shipper-config
  configMap:
    name: {{ include "pgtrail.fullname" .ctx }}
{{- include "pgtrail.secretVolumes" (dict "Values" .ctx.Values "lake" false) }}
{{- end -}}
