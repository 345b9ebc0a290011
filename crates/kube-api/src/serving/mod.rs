//! `serving.yatai.ai`: the BentoDeployment, in the storage version [`v2alpha1`] and the older
//! [`v1alpha3`] that Yatai's api-server and many manifests still write.

pub mod conversion;
pub mod v1alpha3;
pub mod v2alpha1;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "serving.yatai.ai";

/// Condition types of a BentoDeployment (Yatai's three).
pub mod conditions {
    /// True when the Deployment's ready replicas reach the minimum for the current generation
    /// (Yatai set it once the objects were applied; here it means serving).
    pub const AVAILABLE: &str = "Available";
    /// Whether the Bento named by `spec.bento` exists.
    pub const BENTO_FOUND: &str = "BentoFound";
    /// Set while the Bento is missing: whether a BentoRequest of that name exists.
    pub const BENTO_REQUEST_FOUND: &str = "BentoRequestFound";
}

/// CPU, memory, GPU and custom resources, as strings in Kubernetes quantity syntax.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourceItem {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memory: String,
    /// Becomes the limit `nvidia.com/gpu`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gpu: String,
    /// Any other resource name (e.g. `amd.com/gpu`) and its quantity.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceItem>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Ingress {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<IngressTls>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ExtraPodMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}
