//! The Kubernetes API that Yatai defined and yatai-rs keeps: the same groups, versions, kinds,
//! plurals and field names, so Yatai's manifests and GitOps repositories apply unchanged.
//!
//! - [`serving::v2alpha1::BentoDeployment`]: the storage version (camelCase fields);
//!   [`serving::v1alpha3::BentoDeployment`]: served and converted (snake_case fields, Yatai's
//!   flat autoscaling). [`serving::conversion`] maps one to the other.
//! - [`resources::BentoRequest`] (build the image if the registry lacks it) and
//!   [`resources::Bento`] (the built image), `resources.yatai.ai/v1alpha1`.
//! - [`crds`]: the CustomResourceDefinitions generated from these types (`yatai crds`).
//! - [`names`]: Yatai's naming rules, labels and annotations.
//! - [`condition`]: reading and writing `status.conditions`.
//!
//! No client here: this crate is types and pure functions, so the server can depend on it
//! without the controller runtime.

pub mod condition;
pub mod crds;
pub mod names;
pub mod pods;
pub mod resources;
pub mod serving;

pub use resources::{Bento, BentoRequest};
pub use serving::v2alpha1::BentoDeployment;

/// A typed object as a server-side apply body: k8s-openapi's types leave `apiVersion` and
/// `kind` out of their serialization, and an apply without them is refused.
pub fn apply_body<K>(object: &K) -> serde_json::Value
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize,
{
    let mut value = serde_json::to_value(object).expect("a Kubernetes object serializes");
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    value
}
