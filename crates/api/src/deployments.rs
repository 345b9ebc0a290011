//! Deployments on the wire: the objects the v2 routes (`bentoml deployment
//! …`) and Yatai's v1 routes both send and receive. What the routes do with
//! them is `yatai_app::deployments`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use yatai_app::deployments::deployment_url;
pub use yatai_app::deployments::{DeploymentConfig, EnvItem};
use yatai_core::deploy::RevisionStatus;
use yatai_store::{ClusterRow, DeploymentRow, RevisionRow, TargetRow, VersionRow};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::artifacts::{artifact, repository};
use crate::schemas::{ArtifactSchema, Label, labels_from_json, opt_ts, ts};
use yatai_app::AppState;

/// `POST /api/v2/deployments` (the client's CreateDeploymentSchema).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateDeploymentRequest {
    /// Chosen by the server when null: `<bento name>-<random>`.
    #[serde(default)]
    pub name: Option<String>,
    /// `name:version` (`latest` allowed).
    pub bento: String,
    #[serde(flatten)]
    pub config: DeploymentConfig,
    #[serde(default)]
    pub description: Option<String>,
}

/// `PUT /api/v2/deployments/{name}` (the client's UpdateDeploymentSchema).
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateDeploymentRequest {
    pub bento: String,
    #[serde(flatten)]
    pub config: DeploymentConfig,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeploymentUserSchema {
    pub name: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClusterSchema {
    pub uid: String,
    pub name: String,
    pub resource_type: &'static str,
    pub labels: Vec<Label>,
    pub description: String,
    pub organization_name: String,
    pub creator: DeploymentUserSchema,
    pub is_first: bool,
    /// `local` (this machine) or `kubernetes`.
    pub kind: String,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TargetSchema {
    pub uid: String,
    pub name: String,
    pub resource_type: &'static str,
    pub labels: Vec<Label>,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
    pub creator: Option<DeploymentUserSchema>,
    #[schema(value_type = Object)]
    pub config: Value,
    /// The bento, with its repository (null if it was deleted since).
    pub bento: Option<ArtifactSchema>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevisionSchema {
    pub uid: String,
    /// `r<N>`, counting from 1.
    pub name: String,
    pub resource_type: &'static str,
    pub labels: Vec<Label>,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
    pub creator: Option<DeploymentUserSchema>,
    /// `active` or `inactive`.
    pub status: String,
    /// The revision this one restored.
    pub rollback_of: Option<String>,
    pub targets: Vec<TargetSchema>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplicaSchema {
    pub id: String,
    pub revision_uid: String,
    /// `starting`, `ready`, `restarting`, `failed`.
    pub state: String,
    pub restarts: u32,
    pub pid: Option<u32>,
    pub port: u16,
    pub inflight: usize,
    pub started_at: Option<String>,
}

/// A deployment (the client's DeploymentFullSchema), plus what yatai knows
/// about its replicas.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentSchema {
    pub uid: String,
    pub name: String,
    pub resource_type: &'static str,
    pub labels: Vec<Label>,
    pub description: String,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
    /// deploying, running, unhealthy, failed, terminating, terminated.
    pub status: String,
    /// Why the status is what it is (empty when running).
    pub status_message: String,
    pub kube_namespace: String,
    /// `yatai`, or `external`: a BentoDeployment made outside yatai (kubectl, GitOps), shown
    /// and followed; every change through yatai is refused (409).
    pub managed_by: String,
    /// For an external deployment: its bento as the cluster names it (also when the registry
    /// does not have it, and `latest_revision.targets[0].bento` is null).
    pub external_bento: Option<String>,
    pub creator: DeploymentUserSchema,
    pub cluster: ClusterSchema,
    pub latest_revision: Option<RevisionSchema>,
    #[schema(value_type = Object)]
    pub manifest: Value,
    /// Exactly one URL while the deployment exists (none for an external deployment its
    /// cluster does not publish).
    pub urls: Vec<String>,
    pub replicas: Vec<ReplicaSchema>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentList {
    pub start: i64,
    pub count: i64,
    pub total: i64,
    pub items: Vec<DeploymentSchema>,
}

/// Who made an external deployment, as the client shows it (`created_by`).
const EXTERNAL_CREATOR: &str = "outside yatai (kubectl/GitOps)";

fn user_schema(name: Option<&str>) -> DeploymentUserSchema {
    DeploymentUserSchema {
        name: name.unwrap_or("unknown").to_owned(),
        email: String::new(),
        first_name: String::new(),
        last_name: String::new(),
    }
}

pub fn cluster_schema(c: &ClusterRow, org_name: &str, is_first: bool) -> ClusterSchema {
    ClusterSchema {
        uid: c.uid.clone(),
        name: c.name.clone(),
        resource_type: "cluster",
        labels: Vec::new(),
        description: c.description.clone(),
        organization_name: org_name.to_owned(),
        creator: user_schema(c.creator_name.as_deref()),
        is_first,
        kind: c.kind.clone(),
        created_at: ts(c.created_at),
        updated_at: opt_ts(c.updated_at),
        deleted_at: None,
    }
}

fn target_schema(
    state: &AppState,
    t: &TargetRow,
    bento: Option<&VersionRow>,
    repo: Option<&yatai_store::RepositoryRow>,
) -> TargetSchema {
    let config: Value = serde_json::from_str(&t.config).unwrap_or(Value::Null);
    let bento = bento.map(|b| {
        let mut a = artifact(state, b);
        a.repository = repo.map(|r| Box::new(repository(r, None)));
        a
    });
    TargetSchema {
        uid: t.uid.clone(),
        name: t.name.clone(),
        resource_type: "deployment_target",
        labels: Vec::new(),
        created_at: ts(t.created_at),
        updated_at: None,
        deleted_at: None,
        creator: None,
        config,
        bento,
    }
}

pub async fn revision_schema(
    state: &AppState,
    rev: &RevisionRow,
    targets: &[TargetRow],
    number: i64,
) -> ApiResult<RevisionSchema> {
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let bento = state.store.get_version_by_uid(&t.bento_uid).await?;
        let repo = match &bento {
            Some(b) => state.store.get_repositories_by_uid(&[b.repository_uid.as_str()]).await?.into_iter().next(),
            None => None,
        };
        out.push(target_schema(state, t, bento.as_ref(), repo.as_ref()));
    }
    Ok(RevisionSchema {
        uid: rev.uid.clone(),
        name: format!("r{number}"),
        resource_type: "deployment_revision",
        labels: Vec::new(),
        created_at: ts(rev.created_at),
        updated_at: opt_ts(rev.updated_at),
        deleted_at: None,
        creator: rev.creator_name.as_deref().map(|n| user_schema(Some(n))),
        status: rev.status.clone(),
        rollback_of: rev.rollback_of.clone(),
        targets: out,
    })
}

/// The full wire object of a deployment.
pub async fn deployment_schema(
    state: &AppState,
    caller: &Caller,
    headers: &axum::http::HeaderMap,
    d: &DeploymentRow,
) -> ApiResult<DeploymentSchema> {
    let clusters = state.store.list_clusters(&caller.org.uid).await?;
    let cluster = clusters
        .iter()
        .find(|c| c.uid == d.cluster_uid)
        .cloned()
        .ok_or_else(|| ApiError::internal("cluster missing"))?;
    let is_first = clusters.first().is_some_and(|c| c.uid == cluster.uid);
    let revisions = state.store.list_revisions(&d.uid).await?;
    let total = revisions.len() as i64;
    let latest = match revisions.iter().enumerate().find(|(_, (r, _))| r.status == RevisionStatus::Active) {
        Some((i, (r, t))) => Some(revision_schema(state, r, t, total - i as i64).await?),
        None => None,
    };
    let snapshot = yatai_app::deployments::observed(state, d).await;
    let replicas = snapshot
        .map(|s| {
            s.replicas
                .into_iter()
                .map(|r| ReplicaSchema {
                    id: r.id,
                    revision_uid: r.revision_uid,
                    state: r.state.to_owned(),
                    restarts: r.restarts,
                    pid: r.pid,
                    port: r.port,
                    inflight: r.inflight,
                    started_at: (r.started_at > 0).then(|| ts(r.started_at)),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(DeploymentSchema {
        uid: d.uid.clone(),
        name: d.name.clone(),
        resource_type: "deployment",
        labels: labels_from_json(&d.labels),
        description: d.description.clone(),
        created_at: ts(d.created_at),
        updated_at: opt_ts(d.updated_at).or_else(|| Some(ts(d.created_at))),
        deleted_at: None,
        status: d.status.clone(),
        status_message: d.status_reason.clone(),
        kube_namespace: d.namespace.clone(),
        managed_by: d.managed_by.clone(),
        external_bento: d.external_bento.clone(),
        creator: user_schema(match d.is_external() {
            true => Some(EXTERNAL_CREATOR),
            false => d.creator_name.as_deref(),
        }),
        cluster: cluster_schema(&cluster, &caller.org.name, is_first),
        latest_revision: latest,
        manifest: json!({"dev": false, "routing": null}),
        urls: deployment_url(state, request_host(headers), d).into_iter().collect(),
        replicas,
    })
}

/// The Host a request came with.
pub fn request_host(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok())
}
