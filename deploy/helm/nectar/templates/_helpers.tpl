{{/*
Names, labels, the stage catalog, the merged values of one stage and the TOML renderer.
The per-stage resources themselves are in _stage.tpl; stages.yaml ranges over the stages.
*/}}

{{- define "nectar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name. Truncated to 40 characters so that "<fullname>-<stage>-metrics"
(the longest stage is elasticsearch) stays within the 63 of a Service name.
*/}}
{{- define "nectar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "nectar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "nectar.labels" -}}
helm.sh/chart: {{ include "nectar.chart" . }}
app.kubernetes.io/name: {{ include "nectar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nectar
{{- end -}}

{{/* Selector labels of one stage. Context: dict "root" $ "stage" $stage. */}}
{{- define "nectar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nectar.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .stage.name }}
{{- end -}}

{{/* Labels of one stage's objects. Context: dict "root" $ "stage" $stage. */}}
{{- define "nectar.stageLabels" -}}
{{ include "nectar.labels" .root }}
app.kubernetes.io/component: {{ .stage.name }}
{{- end -}}

{{- define "nectar.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The image of the topics Job: apache/kafka, pinned by tag or digest. */}}
{{- define "nectar.topics.image" -}}
{{- $image := .Values.topics.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (toString $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* A topic config's value as kafka-topics.sh --config takes it (YAML's 2 is a float to Helm). */}}
{{- define "nectar.topics.configValue" -}}
{{- if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (floor .) (float64 .) -}}{{ int64 . }}{{- else -}}{{ toString . }}{{- end -}}
{{- else if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{- define "nectar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nectar.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
What the chart knows about each stage: its kind, its binary and, for consumers, where its
input topics are configured (section, key, default) — the ScaledObjects follow the stage's
config when it overrides them. Processors' groups are processor.group_id (nectar-<name>),
sinks' sink.group_id (nectar-sink-<name>) reading sink.topic (nectar.deliver.<name>).
*/}}
{{- define "nectar.catalog" -}}
ingest: {kind: ingest, binary: nectar-ingest}
normalize:
  kind: processor
  binary: nectar-normalize
  inputs: [[topics, forms, nectar.raw.forms], [topics, webhooks, nectar.raw.webhooks], [topics, apps, nectar.raw.apps]]
enrich: {kind: processor, binary: nectar-enrich, inputs: [[topics, input, nectar.events]]}
score: {kind: processor, binary: nectar-score, inputs: [[topics, input, nectar.leads.enriched]]}
route: {kind: processor, binary: nectar-route, inputs: [[topics, input, nectar.leads.scored]]}
slack: {kind: sink, binary: nectar-sink-slack}
hubspot: {kind: sink, binary: nectar-sink-hubspot}
bigquery: {kind: sink, binary: nectar-sink-bigquery}
elasticsearch: {kind: sink, binary: nectar-sink-elasticsearch}
postgres: {kind: sink, binary: nectar-sink-postgres}
{{- end -}}

{{/*
Configuration keys that hold credentials: they must come from a Secret, never a ConfigMap
or a literal env value. Matched against the last key of a config path and, upper-cased, the
end of an environment variable's name.
*/}}
{{- define "nectar.secretKeys" -}}
[password, sasl_password, token, bearer_token, access_token, client_secret, refresh_token, api_key, credentials_json, private_key, webhook_url, secrets]
{{- end -}}

{{/*
Fails the render when a stage's config holds a credential. Context: dict "path" "" "value"
$config "stage" "<name>" "keys" $secretKeys.
*/}}
{{- define "nectar.refuseSecrets" -}}
{{- $ctx := . -}}
{{- if kindIs "map" .value -}}
{{- range $k, $v := .value -}}
{{- $path := ternary $k (printf "%s.%s" $ctx.path $k) (eq $ctx.path "") -}}
{{- if and (has $k $ctx.keys) (not (kindIs "invalid" $v)) -}}
{{- fail (printf "stages.%s.config.%s is a credential: put it in a Secret and reference it with stages.%s.secretEnv or existingSecret (NECTAR_%s)" $ctx.stage $path $ctx.stage (upper ($path | replace "." "__"))) -}}
{{- end -}}
{{- include "nectar.refuseSecrets" (dict "path" $path "value" $v "stage" $ctx.stage "keys" $ctx.keys) -}}
{{- end -}}
{{- else if and (kindIs "string" .value) (regexMatch "^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]+:[^/@]+@" .value) -}}
{{- fail (printf "stages.%s.config.%s is a URL with a password: put it in a Secret and reference it with stages.%s.secretEnv or existingSecret (NECTAR_%s)" $ctx.stage $ctx.path $ctx.stage (upper ($ctx.path | replace "." "__"))) -}}
{{- else if kindIs "slice" .value -}}
{{- range $i, $v := .value -}}
{{- include "nectar.refuseSecrets" (dict "path" (printf "%s[%d]" $ctx.path $i) "value" $v "stage" $ctx.stage "keys" $ctx.keys) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The values of one stage: stageDefaults overridden by stages.<name> (maps merged key by key,
lists replaced; existingSecret, extraVolumes and extraVolumeMounts of both apply), plus what
the chart derives: name, kind, binary, workload kind, resource name, consumer group, input
topics, the capped maxReplicaCount and the rendered TOML. Context: dict "root" $ "name" "<stage>".
Returns YAML (include ... | fromYaml).
*/}}
{{- define "nectar.stage" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $catalog := include "nectar.catalog" $root | fromYaml -}}
{{- $info := get $catalog $name -}}
{{- if not $info -}}
{{- fail (printf "stages.%s: unknown stage (known: %s)" $name (keys $catalog | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $defaults := deepCopy $root.Values.stageDefaults -}}
{{- $own := deepCopy (get $root.Values.stages $name) -}}
{{- $stage := mustMergeOverwrite $defaults $own -}}
{{- $_ := set $stage "name" $name -}}
{{- $_ := set $stage "kind" $info.kind -}}
{{- $_ := set $stage "binary" $info.binary -}}
{{- $workload := $stage.workload | default "Deployment" -}}
{{- if not (has $workload (list "Deployment" "StatefulSet")) -}}
{{- fail (printf "stages.%s.workload: %s is neither Deployment nor StatefulSet" $name $workload) -}}
{{- end -}}
{{- if and (ne $workload "Deployment") (ne $info.kind "processor") -}}
{{- fail (printf "stages.%s.workload: only processors (normalize, enrich, score, route) may be a StatefulSet" $name) -}}
{{- end -}}
{{- $_ := set $stage "workload" $workload -}}
{{- $_ := set $stage "resourceName" (printf "%s-%s" (include "nectar.fullname" $root) $name) -}}
{{- $_ := set $stage "existingSecrets" (list $root.Values.stageDefaults.existingSecret (get $own "existingSecret") | compact | uniq) -}}
{{- $_ := set $stage "extraVolumes" (concat ($root.Values.stageDefaults.extraVolumes | default list) ((get $own "extraVolumes") | default list)) -}}
{{- $_ := set $stage "extraVolumeMounts" (concat ($root.Values.stageDefaults.extraVolumeMounts | default list) ((get $own "extraVolumeMounts") | default list)) -}}
{{- $config := $stage.config | default dict -}}
{{- $secretKeys := include "nectar.secretKeys" $root | fromYamlArray -}}
{{- include "nectar.refuseSecrets" (dict "path" "" "value" $config "stage" $name "keys" $secretKeys) -}}
{{- range $env, $value := $stage.env -}}
{{- if or (has ($env | splitList "__" | last | lower) $secretKeys) (regexMatch "^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]+:[^/@]+@" (toString $value)) -}}
{{- fail (printf "stages.%s.env.%s looks like a credential: reference a Secret with stages.%s.secretEnv instead" $name $env $name) -}}
{{- end -}}
{{- end -}}
{{- range $env, $ref := $stage.secretEnv -}}
{{- if not (and (kindIs "map" $ref) $ref.name $ref.key) -}}
{{- fail (printf "stages.%s.secretEnv.%s: needs {name: <secret>, key: <key>}" $name $env) -}}
{{- end -}}
{{- end -}}
{{- if eq $info.kind "processor" -}}
{{- $_ := set $stage "consumerGroup" (dig "processor" "group_id" (printf "nectar-%s" $name) $config) -}}
{{- $topics := list -}}
{{- range $info.inputs -}}
{{- $topics = append $topics (dig (index . 0) (index . 1) (index . 2) $config) -}}
{{- end -}}
{{- $_ := set $stage "topics" $topics -}}
{{- else if eq $info.kind "sink" -}}
{{- $_ := set $stage "consumerGroup" (dig "sink" "group_id" (printf "nectar-sink-%s" $name) $config) -}}
{{- $_ := set $stage "topics" (list (dig "sink" "topic" (printf "nectar.deliver.%s" $name) $config)) -}}
{{- end -}}
{{- if ne $info.kind "ingest" -}}
{{- $partitions := int ($stage.partitions | default 3) -}}
{{- $max := int ($stage.autoscaling.maxReplicaCount | default $partitions) -}}
{{- $_ := set $stage.autoscaling "maxReplicaCount" (min $max $partitions) -}}
{{- end -}}
{{- $_ := set $stage "toml" (include "nectar.stageToml" (dict "root" $root "stage" $stage)) -}}
{{- toYaml $stage -}}
{{- end -}}

{{/*
A stage's TOML: the global kafka, schema_registry and log settings, then the stage's own
`config` over them, then the listen addresses from the ports the chart declares.
Context: dict "root" $ "stage" $stage.
*/}}
{{- define "nectar.stageToml" -}}
{{- $v := .root.Values -}}
{{- $kafka := dict "bootstrap_servers" $v.kafka.bootstrapServers "security_protocol" $v.kafka.securityProtocol -}}
{{- with $v.kafka.sasl.mechanism }}{{ $_ := set $kafka "sasl_mechanism" . }}{{ end -}}
{{- with $v.kafka.sasl.username }}{{ $_ := set $kafka "sasl_username" . }}{{ end -}}
{{- with $v.kafka.sslCaLocation }}{{ $_ := set $kafka "ssl_ca_location" . }}{{ end -}}
{{- with $v.kafka.properties }}{{ $_ := set $kafka "properties" (deepCopy .) }}{{ end -}}
{{- $registry := dict "url" $v.schemaRegistry.url -}}
{{- with $v.schemaRegistry.username }}{{ $_ := set $registry "username" . }}{{ end -}}
{{- $doc := dict "kafka" $kafka "schema_registry" $registry "log" (dict "format" $v.log.format "filter" $v.log.filter) -}}
{{- $doc = mustMergeOverwrite $doc (deepCopy (.stage.config | default dict)) -}}
{{- $_ := set $doc "admin" (mustMergeOverwrite (get $doc "admin" | default dict) (dict "listen" (printf "0.0.0.0:%d" (int .stage.adminPort)))) -}}
{{- if eq .stage.kind "ingest" -}}
{{- $_ := set $doc "ingest" (mustMergeOverwrite (get $doc "ingest" | default dict) (dict "listen" (printf "0.0.0.0:%d" (int .stage.httpPort)))) -}}
{{- end -}}
# {{ .stage.binary }}: overrides of its embedded default.toml (rendered by the Helm chart).
{{ include "nectar.toml.table" (dict "path" "" "table" $doc) | trim }}
{{- end -}}

{{/*
TOML rendering. Helm reads YAML numbers as floats and its toToml would write 1000 as
1000.0, which the services' integer keys refuse, so the chart renders TOML itself: whole
numbers as integers (integer keys need them; float keys accept them), strings as basic
strings (JSON escapes are TOML escapes), maps as [tables], lists of maps as [[arrays of
tables]], nulls left out. Context of nectar.toml.table: dict "path" "a.b" "table" $map.
*/}}
{{- define "nectar.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toRawJson . }}{{- end -}}
{{- end -}}

{{- define "nectar.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}
{{- $all := true -}}
{{- range . }}{{ if not (kindIs "map" .) }}{{ $all = false }}{{ end }}{{ end -}}
{{- if $all }}true{{ end -}}
{{- end -}}
{{- end -}}

{{- define "nectar.toml.value" -}}
{{- if kindIs "string" . -}}
{{- toRawJson . -}}
{{- else if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (floor .) (float64 .) -}}{{ int64 . }}{{- else -}}{{ toString . }}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "int32" .) (kindIs "uint64" .) -}}
{{- toString . -}}
{{- else if kindIs "slice" . -}}
{{- $items := list -}}
{{- range . }}{{ if not (kindIs "invalid" .) }}{{ $items = append $items (include "nectar.toml.value" .) }}{{ end }}{{ end -}}
[{{ join ", " $items }}]
{{- else if kindIs "map" . -}}
{{- $items := list -}}
{{- range $k, $v := . }}{{ if not (kindIs "invalid" $v) }}{{ $items = append $items (printf "%s = %s" (include "nectar.toml.key" $k) (include "nectar.toml.value" $v)) }}{{ end }}{{ end -}}
{{ "{" }}{{ if $items }} {{ join ", " $items }} {{ end }}{{ "}" }}
{{- else -}}
{{- fail (printf "cannot render %v (%s) as TOML" . (kindOf .)) -}}
{{- end -}}
{{- end -}}

{{- define "nectar.toml.table" -}}
{{- $path := .path -}}
{{- $table := .table -}}
{{- range $k, $v := $table -}}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (include "nectar.toml.isTableArray" $v)) }}
{{ include "nectar.toml.key" $k }} = {{ include "nectar.toml.value" $v }}
{{- end -}}
{{- end -}}
{{- range $k, $v := $table -}}
{{- $sub := ternary (include "nectar.toml.key" $k) (printf "%s.%s" $path (include "nectar.toml.key" $k)) (eq $path "") -}}
{{- if kindIs "map" $v }}

[{{ $sub }}]
{{- include "nectar.toml.table" (dict "path" $sub "table" $v) -}}
{{- else if include "nectar.toml.isTableArray" $v -}}
{{- range $v }}

[[{{ $sub }}]]
{{- include "nectar.toml.table" (dict "path" $sub "table" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
