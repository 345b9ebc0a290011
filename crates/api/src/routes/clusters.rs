//! Registering, changing and removing Kubernetes clusters (Yatai v1
//! bodies). Registered with the v1 cluster routes; what they do is
//! `yatai_app::clusters`. The kubeconfig goes in and never comes out.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use yatai_app::AppState;
use yatai_app::clusters::{self as app, ClusterChange, ClusterSettings, NewClusterInput};

use super::Auth;
use yatai_store::OrgRow;

use super::deployments::{InstanceType, instance_type_schema};
use crate::deployments::{ClusterSchema, cluster_schema};
use crate::error::ApiResult;
use crate::extract::{Json as JsonBody, Path};
use crate::schemas::OrganizationSchema;

/// Yatai's cluster `config`, with what a Kubernetes cluster needs here.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct V1ClusterConfig {
    /// The namespace deployments go to (Yatai's name; `namespace` also works).
    #[serde(default, alias = "namespace")]
    pub default_deployment_kube_namespace: Option<String>,
    #[serde(default)]
    pub context: Option<String>,
    /// Use the server's own service account instead of a kubeconfig.
    #[serde(default)]
    pub in_cluster: Option<bool>,
    #[serde(default)]
    pub image_registry: Option<String>,
    #[serde(default)]
    pub domain_suffix: Option<String>,
    /// The operator's namespace (its Lease and `network` ConfigMap); default: found.
    #[serde(default)]
    pub operator_namespace: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct V1CreateCluster {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The kubeconfig's text (stored encrypted, never returned).
    #[serde(default)]
    pub kube_config: Option<String>,
    #[serde(default)]
    pub config: Option<V1ClusterConfig>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct V1UpdateCluster {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub kube_config: Option<String>,
    #[serde(default)]
    pub config: Option<V1ClusterConfig>,
}

/// A cluster with its settings that are not secret and its health, in the shape of the
/// client's `ClusterFullSchema`. `kube_config` is always empty: credentials are write-only.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterDetail {
    #[serde(flatten)]
    pub cluster: ClusterSchema,
    pub organization: OrganizationSchema,
    /// Always empty: the kubeconfig is never returned.
    pub kube_config: &'static str,
    pub config: ClusterConfigOut,
    pub grafana_root_path: &'static str,
    /// The instance types deployments may name (`bentoml deployment list-instance-types`).
    pub resource_instances: Vec<InstanceType>,
    #[schema(value_type = Option<Object>)]
    pub health: Option<yatai_core::deploy::ClusterHealth>,
}

/// A cluster's settings: Yatai's `default_deployment_kube_namespace`, and a Kubernetes
/// cluster's settings that are not secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterConfigOut {
    pub default_deployment_kube_namespace: String,
    #[serde(flatten)]
    pub settings: Option<ClusterSettings>,
}

pub(crate) fn detail(state: &AppState, v: app::ClusterView, org: &OrgRow) -> ClusterDetail {
    let resource_instances = match state.targets.for_cluster(&v.row) {
        Ok(target) => target.instance_types().into_iter().map(|t| instance_type_schema(&v.row, t)).collect(),
        Err(_) => Vec::new(),
    };
    ClusterDetail {
        cluster: cluster_schema(&v.row, &org.name, false),
        organization: org.into(),
        kube_config: "",
        config: ClusterConfigOut {
            default_deployment_kube_namespace: yatai_app::deployments::default_namespace(&v.row),
            settings: v.settings,
        },
        grafana_root_path: "",
        resource_instances,
        health: v.health,
    }
}

pub async fn create(
    State(state): State<AppState>,
    caller: Auth,
    JsonBody(body): JsonBody<V1CreateCluster>,
) -> ApiResult<Json<ClusterDetail>> {
    let c = body.config.unwrap_or_default();
    let input = NewClusterInput {
        name: body.name,
        description: body.description.unwrap_or_default(),
        kubeconfig: body.kube_config,
        in_cluster: c.in_cluster.unwrap_or(false),
        context: c.context,
        namespace: c.default_deployment_kube_namespace,
        image_registry: c.image_registry,
        domain_suffix: c.domain_suffix,
        operator_namespace: c.operator_namespace,
    };
    let v = app::add(&state, &caller, input).await?;
    Ok(Json(detail(&state, v, &caller.org)))
}

pub async fn update(
    State(state): State<AppState>,
    caller: Auth,
    Path(cluster): Path<String>,
    JsonBody(body): JsonBody<V1UpdateCluster>,
) -> ApiResult<Json<ClusterDetail>> {
    let c = body.config.unwrap_or_default();
    let change = ClusterChange {
        description: body.description,
        kubeconfig: body.kube_config,
        in_cluster: c.in_cluster,
        context: c.context,
        namespace: c.default_deployment_kube_namespace,
        image_registry: c.image_registry,
        domain_suffix: c.domain_suffix,
        operator_namespace: c.operator_namespace,
    };
    let v = app::update(&state, &caller, &cluster, change).await?;
    Ok(Json(detail(&state, v, &caller.org)))
}

pub async fn remove(
    State(state): State<AppState>,
    caller: Auth,
    Path(cluster): Path<String>,
) -> ApiResult<Json<ClusterDetail>> {
    let v = app::get(&state, &caller, &cluster).await?;
    app::remove(&state, &caller, &cluster).await?;
    Ok(Json(ClusterDetail { health: None, ..detail(&state, v, &caller.org) }))
}
