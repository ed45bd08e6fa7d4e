{{/* Names ---------------------------------------------------------------------------------- */}}

{{- define "imagemap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* `<release>-<chart>`, or the release name when it already contains the chart name. */}}
{{- define "imagemap.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "imagemap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imagemap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imagemap.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "imagemap.controllerName" -}}
{{- printf "%s-controller" (include "imagemap.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imagemap.controllerServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imagemap.controllerName" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- required "controller.serviceAccount.name is required when serviceAccount.create is false" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The user name the API server gives the controller's requests (the ValidatingAdmissionPolicies match it). */}}
{{- define "imagemap.controllerUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "imagemap.controllerServiceAccountName" .) }}
{{- end }}

{{/* The Secret holding tls.crt and tls.key (and ca.crt, except maybe in existingSecret mode). */}}
{{- define "imagemap.tlsSecretName" -}}
{{- if eq .Values.certs.mode "existingSecret" }}
{{- required "certs.mode=existingSecret needs certs.existingSecret.name (a Secret in the release namespace with tls.crt and tls.key) and certs.existingSecret.caBundle (the PEM of the CA that signed tls.crt)" .Values.certs.existingSecret.name }}
{{- else }}
{{- printf "%s-tls" (include "imagemap.fullname" .) }}
{{- end }}
{{- end }}

{{- define "imagemap.webhookConfigurationName" -}}
{{- default (include "imagemap.fullname" .) .Values.webhook.configurationName }}
{{- end }}

{{- define "imagemap.configMapName" -}}
{{- default (printf "%s-imagemaps" (include "imagemap.fullname" .)) .Values.imagemapsFile.existingConfigMap }}
{{- end }}

{{/* Labels ---------------------------------------------------------------------------------- */}}

{{- define "imagemap.instanceLabels" -}}
app.kubernetes.io/name: {{ include "imagemap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "imagemap.selectorLabels" -}}
{{ include "imagemap.instanceLabels" . }}
app.kubernetes.io/component: webhook
{{- end }}

{{/* The labels of every resource, without app.kubernetes.io/component. */}}
{{- define "imagemap.baseLabels" -}}
helm.sh/chart: {{ include "imagemap.chart" . }}
{{ include "imagemap.instanceLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: imagemap
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "imagemap.labels" -}}
{{ include "imagemap.baseLabels" . }}
app.kubernetes.io/component: webhook
{{- end }}

{{/* The controller's labels: another component, so the webhook's Service never selects it. */}}
{{- define "imagemap.controllerSelectorLabels" -}}
{{ include "imagemap.instanceLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "imagemap.controllerLabels" -}}
{{ include "imagemap.baseLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{/*
`annotations:` (the common annotations plus the dict `extra`) as a metadata field: a newline and
the field indented by 2, or nothing when both are empty. Use right after `labels`.
*/}}
{{- define "imagemap.annotations" -}}
{{- $all := merge (deepCopy (default dict .extra)) (deepCopy (default dict .root.Values.commonAnnotations)) }}
{{- with $all }}
{{ printf "annotations:\n%s" (toYaml . | indent 2) | indent 2 }}
{{- end }}
{{- end }}

{{/* Image ----------------------------------------------------------------------------------- */}}

{{- define "imagemap.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Certificates ---------------------------------------------------------------------------- */}}

{{/* The host of webhook.url without port or IPv6 brackets; empty when no URL is set. */}}
{{- define "imagemap.urlHost" -}}
{{- with .Values.webhook.url }}
{{- $host := (urlParse .).host }}
{{- if hasPrefix "[" $host }}
{{- regexReplaceAll "^\\[([^\\]]*)\\].*$" $host "${1}" }}
{{- else }}
{{- regexReplaceAll ":[0-9]*$" $host "" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The names the serving certificate must cover, as JSON: {"dns": [...], "ips": [...]}.
The Service DNS names, plus the host of webhook.url (an IP SAN for an IP address, a DNS SAN
otherwise).
*/}}
{{- define "imagemap.certHosts" -}}
{{- $svc := include "imagemap.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $dns := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) }}
{{- $ips := list }}
{{- $host := include "imagemap.urlHost" . }}
{{- if $host }}
{{- if or (regexMatch "^[0-9]{1,3}(\\.[0-9]{1,3}){3}$" $host) (contains ":" $host) }}
{{- $ips = append $ips $host }}
{{- else if not (has $host $dns) }}
{{- $dns = append $dns $host }}
{{- end }}
{{- end }}
{{- dict "dns" $dns "ips" $ips | toJson }}
{{- end }}

{{/*
The caBundle (base64 of PEM) for the webhook configuration in existingSecret mode: accepts PEM
text or its base64.
*/}}
{{- define "imagemap.existingCaBundle" -}}
{{- $_ := required "certs.mode=existingSecret needs certs.existingSecret.name (a Secret in the release namespace with tls.crt and tls.key) and certs.existingSecret.caBundle (the PEM of the CA that signed tls.crt)" .Values.certs.existingSecret.name }}
{{- $ca := required "certs.mode=existingSecret needs certs.existingSecret.name (a Secret in the release namespace with tls.crt and tls.key) and certs.existingSecret.caBundle (the PEM of the CA that signed tls.crt)" .Values.certs.existingSecret.caBundle }}
{{- if contains "-----BEGIN" $ca }}
{{- $ca | b64enc }}
{{- else }}
{{- $ca | nospace }}
{{- end }}
{{- end }}

{{- /* The leader-elected controller runs when any of its features is on. */ -}}
{{- define "imagemap.controllerOn" -}}
{{- if or .Values.controller.gateUnbuilt .Values.controller.restartOnRebuild (include "imagemap.scopeWebhook" .) (eq .Values.mode "policy") }}true{{ end }}
{{- end }}

{{- /* The controller scopes the webhook configuration: only in webhook mode. */ -}}
{{- define "imagemap.scopeWebhook" -}}
{{- if and .Values.controller.scopeWebhook (ne .Values.mode "policy") }}true{{ end }}
{{- end }}

{{- /* Settings that cannot go with policy mode fail the render with the reason. */ -}}
{{- define "imagemap.checkMode" -}}
{{- if eq .Values.mode "policy" }}
{{- if not (semverCompare ">=1.36.0-0" .Capabilities.KubeVersion.Version) }}{{ fail (printf "mode: policy needs Kubernetes 1.36 or later (MutatingAdmissionPolicy admissionregistration.k8s.io/v1); this cluster is %s. Use mode: webhook" .Capabilities.KubeVersion.Version) }}{{ end }}
{{- if .Values.controller.gateUnbuilt }}{{ fail "mode: policy cannot be used with controller.gateUnbuilt: a policy cannot hold Pods until their image is built" }}{{ end }}
{{- if .Values.imagemapsFile.enabled }}{{ fail "mode: policy cannot be used with imagemapsFile: policies are compiled from the cluster's ImageMaps only" }}{{ end }}
{{- end }}
{{- end }}

{{- /*
The admin guards (docs/security.md), as flags of both processes, one per line: the allowed
target registries, which maps may override command/args, and the protected namespaces (the
release namespace and webhook.excludeNamespaces; kube-system, kube-public and kube-node-lease are
always protected by the binary).
*/ -}}
{{- define "imagemap.guardArgs" -}}
{{- range .Values.allowedRegistries }}
- --allowed-registry={{ . }}
{{- end }}
- --allow-overrides={{ .Values.allowOverrides }}
{{- range concat (list .Release.Namespace) .Values.webhook.excludeNamespaces | uniq }}
- --protected-namespace={{ . }}
{{- end }}
{{- end }}

{{- /* The allowed registry prefixes as the guard compares them: a bare host `H` means `H/`. JSON list. */ -}}
{{- define "imagemap.registryPrefixes" -}}
{{- $out := list }}
{{- range .Values.allowedRegistries }}
{{- $out = append $out (ternary . (printf "%s/" .) (contains "/" .)) }}
{{- end }}
{{- $out | toJson }}
{{- end }}

{{- /* An alert's labels (metrics.prometheusRule): its severity and alertLabels. Args: root, severity. */ -}}
{{- define "imagemap.alertLabels" -}}
labels:
  severity: {{ .severity }}
  {{- with .root.Values.metrics.prometheusRule.alertLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
