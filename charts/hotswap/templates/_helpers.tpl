{{- define "hotswap.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hotswap.labels" -}}
app.kubernetes.io/name: hotswap-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "hotswap.selectorLabels" -}}
app.kubernetes.io/name: hotswap-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hotswap.leaseName" -}}
{{- printf "%s-leader" (include "hotswap.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hotswap.serviceAccountName" -}}
{{- default (include "hotswap.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "hotswap.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Runtime pod defaults, handed to the operator as HOTSWAP_RUNTIME_DEFAULTS. */}}
{{- define "hotswap.runtimeDefaults" -}}
{{- $rt := .Values.runtime -}}
{{- $image := include "hotswap.image" (dict "image" $rt.image "chart" .Chart) -}}
{{- $limits := $rt.gpu.limits | default dict -}}
{{- $slices := list -}}
{{- range $name, $_ := $limits }}{{ if hasPrefix "nvidia.com/mig-" $name }}{{ $slices = append $slices $name }}{{ end }}{{ end -}}
{{- if and $slices (hasKey $limits "nvidia.com/gpu") -}}
{{- fail (printf "runtime.gpu.limits asks for nvidia.com/gpu and %s at once: Helm merges the limits you set into the chart's {nvidia.com/gpu: 1}; for a MIG slice also set nvidia.com/gpu: null" (join ", " $slices)) -}}
{{- end -}}
{{- $defaults := dict "image" $image "imagePullPolicy" $rt.image.pullPolicy "resources" $rt.resources "gpu" $rt.gpu "policy" .Values.policy "distribution" .Values.distribution -}}
{{- with $rt.modelVolume }}{{ $_ := set $defaults "modelVolume" . }}{{ end -}}
{{- range $key := list "imagePullSecrets" "priorityClassName" "affinity" "podMetadata" "serviceAccount" "podDisruptionBudget" }}
{{- with index $rt $key }}{{ $_ := set $defaults $key . }}{{ end -}}
{{- end -}}
{{- if hasKey $rt "topologySpreadConstraints" }}{{ $_ := set $defaults "topologySpreadConstraints" ($rt.topologySpreadConstraints | default list) }}{{ end -}}
{{- $defaults | toJson -}}
{{- end -}}

{{/* Labels the operator puts on every runtime pod (hotswap_operator.resources.labels). */}}
{{- define "hotswap.runtimeSelectorLabels" -}}
app.kubernetes.io/name: hotswap-runtime
app.kubernetes.io/managed-by: hotswap-operator
{{- end -}}
