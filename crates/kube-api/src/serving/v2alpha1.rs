//! BentoDeployment `serving.yatai.ai/v2alpha1`: the storage version and the one the operator
//! reconciles. Field names are Yatai's (camelCase).

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscalerBehavior, MetricSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, Toleration, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::{ExtraPodMetadata, Ingress, IngressTls, ResourceItem, Resources};

/// What to serve (`bento`: a Bento, or the BentoRequest that will produce it, in the same
/// namespace) and how: resources, autoscaling, environment, ingress, pod overrides.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "serving.yatai.ai",
    version = "v2alpha1",
    kind = "BentoDeployment",
    plural = "bentodeployments",
    namespaced,
    status = "BentoDeploymentStatus",
    printcolumn = r#"{"name":"Bento","type":"string","jsonPath":".spec.bento","description":"Bento"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.conditions[?(@.type=='Available')].status","description":"Available"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.printerReady","description":"Ready replicas / minimum"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url","description":"Where the deployment answers"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BentoDeploymentSpec {
    /// Not copied to any object: read as feature flags (`yatai.ai/deployment-strategy`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Added to the labels of the Deployment, its pods, the Service and the HPA.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Name of a Bento (or BentoRequest) in this namespace.
    pub bento: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// User values win over the ones the operator injects; `PORT` changes the container port.
    /// A `valueFrom.secretKeyRef` takes the value from a Secret of the namespace (what yatai
    /// writes for a deployment's `env` secrets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envs: Vec<EnvVar>,
    /// Volumes added to the pods (not in Yatai): e.g. the Secrets yatai mounts for a
    /// deployment's `mountfile` secrets. Merged by name under server-side apply, so yatai's
    /// entries and ones set by hand live side by side. `shm` is the operator's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub volumes: Vec<Volume>,
    /// Mounts of those volumes into the main container (not in Yatai), merged by
    /// `mountPath` under server-side apply. `/dev/shm` is the operator's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["mountPath"]))]
    pub volume_mounts: Vec<VolumeMount>,
    /// Per-runner settings, for legacy bentos with runners (matched by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runners: Vec<RunnerSpec>,
    #[serde(default)]
    pub ingress: Ingress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_exporter: Option<MonitorExporter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_pod_metadata: Option<ExtraPodMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_pod_spec: Option<ExtraPodSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// `autoscaling/v2` metrics; none means CPU at 80 % utilization.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envs: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_pod_metadata: Option<ExtraPodMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_pod_spec: Option<ExtraPodSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitorExporter {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub structure_options: Vec<EnvVar>,
}

/// Scheduling overrides and extra sidecars for the pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtraPodSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scheduler_name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Appended to the pod as sidecars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
}

/// Yatai's `conditions` and `podSelector`, plus what says whether the deployment serves:
/// the generation the status describes, replica counts and the URL.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BentoDeploymentStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_selector: BTreeMap<String, String>,
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `ready/minimum`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub printer_ready: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// `http://<name>-<namespace>.<domain suffix>` when the ingress is enabled, else the
    /// in-cluster address of the Service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
}
