{{/*
The objects of one stage, each a named template with context dict "root" $ "stage" $stage
(the merged values from "nectar.stage"). stages.yaml renders them for every enabled stage.
*/}}

{{- define "nectar.stage.configmap" -}}
{{- $stage := .stage -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $stage.resourceName }}
  labels:
    {{- include "nectar.stageLabels" . | nindent 4 }}
data:
  {{ $stage.name }}.toml: |
    {{- $stage.toml | nindent 4 }}
{{- end -}}

{{/* Environment variables: the config path, the instance id, the credentials, the rest. */}}
{{- define "nectar.stage.env" -}}
{{- $root := .root -}}
{{- $stage := .stage -}}
- name: NECTAR_CONFIG
  value: /etc/nectar/{{ $stage.name }}.toml
{{- if eq $stage.kind "processor" }}
# The transactional id is <group_id>-<instance_id>: unique per pod.
- name: NECTAR_PROCESSOR__INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- with $root.Values.kafka.sasl.existingSecret }}
- name: NECTAR_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $root.Values.kafka.sasl.passwordKey }}
{{- end }}
{{- with $root.Values.schemaRegistry.existingSecret }}
- name: NECTAR_SCHEMA_REGISTRY__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $root.Values.schemaRegistry.passwordKey }}
{{- end }}
{{- range $env, $ref := $stage.secretEnv }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
      {{- if hasKey $ref "optional" }}
      optional: {{ $ref.optional }}
      {{- end }}
{{- end }}
{{- range $env, $value := $stage.env }}
- name: {{ $env }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end -}}

{{/*
The stage's workload: a Deployment, or for a processor with `workload: StatefulSet` a
StatefulSet with the same pod template. A StatefulSet's pods keep their names (<name>-0,
-1, ...), so a replaced processor pod has its predecessor's transactional id and fences its
open transaction when it starts. Its pods start and stop in parallel (they share nothing but
the consumer group) and its governing Service is the stage's headless metrics Service.
*/}}
{{- define "nectar.stage.workload" -}}
{{- $root := .root -}}
{{- $stage := .stage -}}
{{- $autoscaled := or (and (ne $stage.kind "ingest") $root.Values.autoscaling.enabled) (and (eq $stage.kind "ingest") $stage.hpa $stage.hpa.enabled) -}}
apiVersion: apps/v1
kind: {{ $stage.workload }}
metadata:
  name: {{ $stage.resourceName }}
  labels:
    {{- include "nectar.stageLabels" . | nindent 4 }}
spec:
  {{- if not $autoscaled }}
  replicas: {{ $stage.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- if eq $stage.workload "StatefulSet" }}
  serviceName: {{ $stage.resourceName }}-metrics
  podManagementPolicy: Parallel
  # One pod at a time, highest ordinal first: each stops (committing its transaction) before
  # its replacement, with the same name, starts.
  updateStrategy:
    type: RollingUpdate
  {{- else }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  {{- end }}
  selector:
    matchLabels:
      {{- include "nectar.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "nectar.selectorLabels" . | nindent 8 }}
        app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
        app.kubernetes.io/part-of: nectar
        {{- with $stage.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Roll the pods when their configuration changes.
        checksum/config: {{ $stage.toml | sha256sum }}
        {{- if not $root.Values.serviceMonitor.enabled }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $stage.adminPort | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $stage.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "nectar.serviceAccountName" $root }}
      # The services never call the Kubernetes API.
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $stage.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ $stage.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $stage.podSecurityContext | nindent 8 }}
      affinity:
        {{- if $stage.affinity }}
        {{- toYaml $stage.affinity | nindent 8 }}
        {{- else }}
        # Spread a stage's instances over nodes when there are enough.
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    {{- include "nectar.selectorLabels" . | nindent 20 }}
        {{- end }}
      {{- with $stage.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $stage.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $stage.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $stage.name }}
          image: {{ include "nectar.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["/usr/local/bin/{{ $stage.binary }}"]
          {{- with $stage.args }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          env:
            {{- include "nectar.stage.env" . | nindent 12 }}
          {{- with $stage.existingSecrets }}
          envFrom:
            {{- range . }}
            - secretRef:
                name: {{ . }}
            {{- end }}
          {{- end }}
          ports:
            - name: admin
              containerPort: {{ $stage.adminPort }}
              protocol: TCP
            {{- if eq $stage.kind "ingest" }}
            - name: http
              containerPort: {{ $stage.httpPort }}
              protocol: TCP
            {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: admin
            periodSeconds: {{ $stage.probes.startup.periodSeconds }}
            failureThreshold: {{ $stage.probes.startup.failureThreshold }}
            timeoutSeconds: {{ $stage.probes.startup.timeoutSeconds }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: admin
            periodSeconds: {{ $stage.probes.liveness.periodSeconds }}
            failureThreshold: {{ $stage.probes.liveness.failureThreshold }}
            timeoutSeconds: {{ $stage.probes.liveness.timeoutSeconds }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: admin
            periodSeconds: {{ $stage.probes.readiness.periodSeconds }}
            failureThreshold: {{ $stage.probes.readiness.failureThreshold }}
            timeoutSeconds: {{ $stage.probes.readiness.timeoutSeconds }}
          resources:
            {{- toYaml $stage.resources | nindent 12 }}
          securityContext:
            {{- toYaml $stage.securityContext | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/nectar/{{ $stage.name }}.toml
              subPath: {{ $stage.name }}.toml
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- with $stage.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ $stage.resourceName }}
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- with $stage.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}

{{- define "nectar.stage.pdb" -}}
{{- $stage := .stage -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $stage.resourceName }}
  labels:
    {{- include "nectar.stageLabels" . | nindent 4 }}
spec:
  maxUnavailable: {{ $stage.podDisruptionBudget.maxUnavailable }}
  # A pod that is not ready (e.g. Kafka unreachable) may still be evicted: draining a node
  # must not wait for the broker.
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "nectar.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* A headless Service exposing the admin port, for the ServiceMonitor and for people. */}}
{{- define "nectar.stage.metricsService" -}}
{{- $stage := .stage -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ $stage.resourceName }}-metrics
  labels:
    {{- include "nectar.stageLabels" . | nindent 4 }}
    nectar-pipeline.io/metrics: "true"
spec:
  clusterIP: None
  selector:
    {{- include "nectar.selectorLabels" . | nindent 4 }}
  ports:
    - name: admin
      port: {{ $stage.adminPort }}
      targetPort: admin
      protocol: TCP
{{- end -}}

{{/*
KEDA scales a consumer stage on its group's lag, one kafka trigger per input topic, never
beyond the partitions (an idle consumer gets none).
*/}}
{{- define "nectar.stage.scaledObject" -}}
{{- $root := .root -}}
{{- $stage := .stage -}}
{{- $as := $stage.autoscaling -}}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ $stage.resourceName }}
  labels:
    {{- include "nectar.stageLabels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ $stage.workload }}
    name: {{ $stage.resourceName }}
  pollingInterval: {{ $root.Values.autoscaling.pollingInterval }}
  cooldownPeriod: {{ $root.Values.autoscaling.cooldownPeriod }}
  minReplicaCount: {{ $as.minReplicaCount }}
  maxReplicaCount: {{ $as.maxReplicaCount }}
  {{- with $root.Values.autoscaling.behavior }}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        {{- toYaml . | nindent 8 }}
  {{- end }}
  triggers:
    {{- range $stage.topics }}
    - type: kafka
      metadata:
        bootstrapServers: {{ $root.Values.kafka.bootstrapServers | quote }}
        consumerGroup: {{ $stage.consumerGroup | quote }}
        topic: {{ . | quote }}
        lagThreshold: {{ $as.lagThreshold | toString | quote }}
        activationLagThreshold: {{ $as.activationLagThreshold | toString | quote }}
        offsetResetPolicy: earliest
        allowIdleConsumers: "false"
      {{- with $root.Values.autoscaling.authenticationRef.name }}
      authenticationRef:
        name: {{ . }}
        kind: {{ $root.Values.autoscaling.authenticationRef.kind }}
      {{- end }}
    {{- end }}
{{- end -}}
