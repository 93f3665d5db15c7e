{{/* Release-scoped name of every object, cut to 63 characters (a DNS label). */}}
{{- define "aro.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aro.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aro.labels" -}}
{{ include "aro.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: stigmer
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "aro.serviceAccountName" -}}
{{- default (include "aro.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/*
"true" when leader election is on: always with more than one replica (two operators without a
Lease would fight), else when leaderElection.enabled is true.
*/}}
{{- define "aro.leaderElection" -}}
{{- if or (eq .Values.leaderElection.enabled true) (gt (int .Values.replicas) 1) -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{- define "aro.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The operator's permissions on the AgentRunners' namespaces. Each rule mirrors one row of
operator/src/rbac.rs (RULES); the chart test fails when they differ. Leases are granted
separately, in the release namespace only.
*/}}
{{- define "aro.rules" -}}
- apiGroups: ["agentic.stigmer.ai"]
  resources: ["agentrunners"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["agentic.stigmer.ai"]
  resources: ["agentrunners/status"]
  verbs: ["get", "patch"]
# blockOwnerDeletion on the owned objects' owner references needs this under the
# OwnerReferencesPermissionEnforcement admission plugin.
- apiGroups: ["agentic.stigmer.ai"]
  resources: ["agentrunners/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps", "services", "persistentvolumeclaims"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
