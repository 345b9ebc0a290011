//! The Kubernetes deploy target: a yatai deployment on a cluster is a `BentoDeployment`
//! (v2alpha1) and the `Bento` (image built by the server) or `BentoRequest` (built by the
//! operator) it points at; the operator does the rest.
//!
//! - [`KubeConnector`]: the server's [`ClusterConnector`](yatai_core::deploy::ClusterConnector):
//!   [`probe`](probe::probe) a cluster's configuration, and connect to it.
//! - [`KubeTarget`]: the [`DeployTarget`](yatai_core::deploy::DeployTarget) of one cluster:
//!   server-side apply as field manager `yatai`, status from watches, logs from the pods.
//! - [`objects`]: what a [`DeploymentSpec`](yatai_core::deploy::DeploymentSpec) becomes (pure).
//! - [`phase`]: what the CRs and pods say, as a phase and a reason (pure).

mod client;
pub mod logs;
pub mod metrics;
pub mod objects;
pub mod phase;
pub mod probe;
mod target;

pub use target::{KubeConnector, KubeTarget, ObservedDeployment};
