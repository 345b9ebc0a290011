//! `resources.yatai.ai/v1alpha1`: a [`BentoRequest`] asks for a bento's image (built if the
//! registry lacks it); the [`Bento`] it produces names that image.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, PodStatus, ResourceRequirements, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "resources.yatai.ai";

/// Condition types of a BentoRequest (Yatai's names).
pub mod conditions {
    /// The registry was asked whether the image exists; `message` is the image name.
    pub const IMAGE_EXISTS_CHECKED: &str = "ImageExistsChecked";
    /// The image is in the registry (found, or built and pushed).
    pub const IMAGE_EXISTS: &str = "ImageExists";
    /// True while a build runs; False when it succeeded, failed or timed out.
    pub const IMAGE_BUILDING: &str = "ImageBuilding";
    /// The Bento CR is written.
    pub const BENTO_AVAILABLE: &str = "BentoAvailable";
}

/// Annotations on a BentoRequest that change what the operator does.
pub mod annotations {
    /// `"true"`: build and push even when the registry has the tag.
    pub const FORCE_BUILD_IMAGE: &str = "yatai.ai/force-build-image";
    /// `"true"`: the registry speaks plain HTTP.
    pub const DOCKER_REGISTRY_INSECURE: &str = "yatai.ai/docker-registry-insecure";
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "resources.yatai.ai",
    version = "v1alpha1",
    kind = "BentoRequest",
    plural = "bentorequests",
    namespaced,
    status = "BentoRequestStatus",
    printcolumn = r#"{"name":"Bento-Tag","type":"string","jsonPath":".spec.bentoTag","description":"Bento Tag"}"#,
    printcolumn = r#"{"name":"Download-Url","type":"string","jsonPath":".spec.downloadUrl","description":"Download URL"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image","description":"Image"}"#,
    printcolumn = r#"{"name":"Image-Exists","type":"string","jsonPath":".status.conditions[?(@.type=='ImageExists')].status","description":"Image Exists"}"#,
    printcolumn = r#"{"name":"Bento-Available","type":"string","jsonPath":".status.conditions[?(@.type=='BentoAvailable')].status","description":"Bento Available"}"#,
    printcolumn = r#"{"name":"Image-Builder-Pod-Phase","type":"string","jsonPath":".status.imageBuilderPodStatus.phase","description":"Image Builder Pod Phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BentoRequestSpec {
    /// `repository:version`.
    pub bento_tag: String,
    /// Where to download the bento archive; empty means from yatai's API.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub download_url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<BentoContext>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runners: Vec<BentoRunner>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<BentoModel>,
    /// The image to produce; overrides the naming rule.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Nanoseconds (Go's `time.Duration`), as Yatai encodes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_build_timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_builder_extra_pod_metadata: Option<BuilderPodMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_builder_extra_pod_spec: Option<BuilderPodSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_builder_extra_container_env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_builder_container_resources: Option<ResourceRequirements>,
    /// A `kubernetes.io/dockerconfigjson` Secret to push and pull with, instead of the
    /// operator's own registry credentials.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub docker_config_json_secret_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_registry_insecure: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub downloader_container_env_from: Vec<EnvFromSource>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BentoRequestStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Yatai showed its build Job's pod here; builds run in the operator, so this stays empty
    /// unless set by a Yatai operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_builder_pod_status: Option<PodStatus>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuilderPodMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuilderPodSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub priority_class_name: String,
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
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BentoContext {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bentoml_version: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BentoModel {
    pub tag: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub download_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BentoRunner {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runnable_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_tags: Vec<String>,
}

/// Where the image's server answers health checks, when it is not BentoML's default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BentoManifest {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_ports: Vec<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub livez_endpoint: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub readyz_endpoint: String,
}

/// A bento's image, ready to deploy: written by the BentoRequest controller (owned by the
/// BentoRequest), or by hand to deploy an image built elsewhere.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "resources.yatai.ai",
    version = "v1alpha1",
    kind = "Bento",
    plural = "bentoes",
    namespaced,
    status = "BentoStatus",
    printcolumn = r#"{"name":"Tag","type":"string","jsonPath":".spec.tag","description":"Tag"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image","description":"Image"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BentoSpec {
    /// `repository:version`.
    pub tag: String,
    /// The full image reference.
    pub image: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<BentoContext>,
    /// One runner Deployment each (legacy bentos).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runners: Vec<BentoRunner>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<BentoModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<BentoManifest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct BentoStatus {
    #[serde(default)]
    pub ready: bool,
}
