//! Deployments: one model behind two APIs (the v2 routes `bentoml
//! deployment …` uses, and Yatai's v1 routes). This module holds what both
//! share: the wire types, validation, turning a revision into a runtime spec,
//! and recording status changes.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use yatai_core::{Kind, Tag, Timestamp};
use yatai_runtime::{ArtifactRef, DeployTarget, DeploymentSpec, Phase, Scaling, StatusSink};
use yatai_store::{ClusterRow, DeploymentRow, NewEvent, RevisionRow, Store, TargetRow, VersionRow};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::artifacts::{artifact, repository};
use crate::schemas::{ArtifactSchema, Label, labels_from_json, opt_ts, ts};
use crate::state::AppState;

/// The namespace deployments get when the API does not say (the v2 API has none).
pub const DEFAULT_NAMESPACE: &str = "yatai";
/// This machine, as a cluster.
pub const LOCAL_CLUSTER: &str = "local";

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct EnvItem {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

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

/// What a revision runs with, as the client sends it; stored and echoed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeploymentConfig {
    #[serde(default)]
    pub access_authorization: Option<bool>,
    #[serde(default)]
    pub envs: Option<Vec<EnvItem>>,
    #[serde(default)]
    pub labels: Option<Vec<Label>>,
    #[serde(default)]
    pub secrets: Option<Vec<String>>,
    /// `{<service name>: {instance_type, scaling: {min_replicas, max_replicas, policy}, envs, …}}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub services: Option<Map<String, Value>>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub canary: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentUserSchema {
    pub name: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
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
    pub creator: DeploymentUserSchema,
    pub cluster: ClusterSchema,
    pub latest_revision: Option<RevisionSchema>,
    #[schema(value_type = Object)]
    pub manifest: Value,
    /// Exactly one URL while the deployment exists.
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

/// The cluster a request names (`cluster=` empty means the default one).
pub async fn resolve_cluster(state: &AppState, caller: &Caller, name: Option<&str>) -> ApiResult<ClusterRow> {
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    match name {
        None | Some(LOCAL_CLUSTER) => Ok(state
            .store
            .ensure_cluster(&caller.org.uid, LOCAL_CLUSTER, "local", "This machine: replicas run as local processes")
            .await?),
        Some(n) => state.store.get_cluster(&caller.org.uid, n).await?.ok_or_else(|| {
            ApiError::not_found(format!("cluster {n:?} not found (this server has the cluster {LOCAL_CLUSTER:?})"))
        }),
    }
}

/// Deployment names become host names (`<name>-<namespace>.<domain>`), so
/// they follow DNS label rules.
pub fn check_deployment_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "deployment name {:?} is not valid: use 1 to 50 lowercase letters, digits and '-', starting with a letter \
             and not ending with '-'",
            name.chars().take(60).collect::<String>()
        )))
    }
}

pub fn check_namespace(ns: &str) -> ApiResult<()> {
    check_deployment_name(ns).map_err(|_| ApiError::bad_request(format!("namespace {ns:?} is not a valid DNS label")))
}

/// The parts of a service's configuration the local runtime uses.
struct ServiceSettings {
    scaling: Scaling,
    envs: Vec<(String, String)>,
    cold_start: Option<Duration>,
}

fn service_settings(
    config: &DeploymentConfig,
    entry: &str,
    default_cold_start: Duration,
) -> ApiResult<ServiceSettings> {
    let services = config.services.clone().unwrap_or_default();
    let svc = services
        .get(entry)
        .or_else(|| if services.len() == 1 { services.values().next() } else { None })
        .cloned()
        .unwrap_or(Value::Null);
    let scaling = svc.get("scaling").cloned().unwrap_or(Value::Null);
    let int = |v: &Value, key: &str| -> ApiResult<Option<i64>> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_i64()
                .map(Some)
                .ok_or_else(|| ApiError::bad_request(format!("scaling.{key} must be a whole number"))),
        }
    };
    let min = int(&scaling, "min_replicas")?.unwrap_or(1);
    let max = int(&scaling, "max_replicas")?.unwrap_or(min.max(1));
    if min < 0 {
        return Err(ApiError::bad_request("scaling.min_replicas must not be negative"));
    }
    if max < 1 {
        return Err(ApiError::bad_request("scaling.max_replicas must be at least 1"));
    }
    if min > max {
        return Err(ApiError::bad_request(format!(
            "scaling.min_replicas ({min}) is larger than scaling.max_replicas ({max})"
        )));
    }
    if max > 64 {
        return Err(ApiError::bad_request("scaling.max_replicas is at most 64 on the local runtime"));
    }
    let policy = scaling.get("policy").cloned().unwrap_or(Value::Null);
    let mut target = 1.0;
    for m in policy.get("metrics").and_then(Value::as_array).into_iter().flatten() {
        if matches!(m.get("type").and_then(Value::as_str), Some("concurrency" | "inflight"))
            && let Some(v) = m.get("value").and_then(Value::as_f64).filter(|v| *v > 0.0)
        {
            target = v;
        }
    }
    let window = policy.get("scale_down_stabilization_window").and_then(Value::as_u64).unwrap_or(60);
    let mut envs = Vec::new();
    for e in config.envs.iter().flatten() {
        envs.push((e.name.clone(), e.value.clone()));
    }
    for e in svc.get("envs").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(n), v) =
            (e.get("name").and_then(Value::as_str), e.get("value").and_then(Value::as_str).unwrap_or(""))
        {
            envs.retain(|(k, _)| k != n);
            envs.push((n.to_owned(), v.to_owned()));
        }
    }
    for (k, _) in &envs {
        let valid = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ApiError::bad_request(format!("environment variable name {k:?} is not valid")));
        }
    }
    let cold_start =
        svc.get("cold_start_timeout").and_then(Value::as_u64).map(Duration::from_secs).or(Some(default_cold_start));
    Ok(ServiceSettings {
        scaling: Scaling {
            min: min as u32,
            max: max as u32,
            target_inflight: target,
            scale_down_window: Duration::from_secs(window),
        },
        envs,
        cold_start,
    })
}

fn manifest_of(bento: &VersionRow) -> Value {
    serde_json::from_str(&bento.manifest).unwrap_or(Value::Null)
}

pub fn entry_service(manifest: &Value) -> String {
    manifest.get("entry_service").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("apiserver").to_owned()
}

/// Checks a configuration against a bento before it is stored: scaling,
/// env names, required envs, unsupported features.
pub fn validate_config(state: &AppState, bento: &VersionRow, config: &DeploymentConfig) -> ApiResult<()> {
    let manifest = manifest_of(bento);
    let settings = service_settings(config, &entry_service(&manifest), state.config.cold_start_timeout)?;
    if config.secrets.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request("secrets are not supported by this server yet; pass values with --env"));
    }
    let provided: Vec<&str> = settings.envs.iter().map(|(k, _)| k.as_str()).collect();
    let missing: Vec<String> = manifest
        .get("envs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("stage").and_then(Value::as_str) != Some("build"))
        .filter(|e| e.get("value").and_then(Value::as_str).unwrap_or("").is_empty())
        .filter_map(|e| e.get("name").and_then(Value::as_str))
        .filter(|n| !provided.contains(n))
        .map(str::to_owned)
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!(
            "bento {} requires environment variable{} {} with no default; pass {}",
            bento.tag(),
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            missing.iter().map(|m| format!("--env {m}=…")).collect::<Vec<_>>().join(" ")
        )));
    }
    Ok(())
}

/// Finds the bento a request names; it must be uploaded.
pub async fn resolve_bento(state: &AppState, caller: &Caller, tag: &str) -> ApiResult<VersionRow> {
    let tag = Tag::parse(tag).map_err(|e| ApiError::bad_request(format!("bento {tag:?}: {e}")))?;
    let version = tag.version.as_deref().unwrap_or("latest");
    let row = crate::routes::artifacts::find_version(state, caller, Kind::Bento, &tag.name, version).await?;
    if !row.is_uploaded() {
        return Err(ApiError::bad_request(format!(
            "bento {} is not uploaded yet (status {}); push it first",
            row.tag(),
            row.upload_status
        )));
    }
    Ok(row)
}

/// What the runtime needs to run a deployment's active revision.
pub async fn runtime_spec(state: &AppState, d: &DeploymentRow) -> ApiResult<DeploymentSpec> {
    let (rev, targets) = state
        .store
        .active_revision(&d.uid)
        .await?
        .ok_or_else(|| ApiError::internal(format!("deployment {} has no active revision", d.name)))?;
    let target = targets.first().ok_or_else(|| ApiError::internal("revision without targets"))?;
    let bento = state.store.get_version_by_uid(&target.bento_uid).await?.ok_or_else(|| {
        ApiError::conflict("the bento of this revision was deleted; update the deployment to another bento")
    })?;
    let bento_ref = artifact_ref(state, &bento).await?;
    let mut models = Vec::new();
    for (name, version, found) in state.store.bento_models(&bento).await? {
        let Some(m) = found.filter(|m| m.is_uploaded()) else {
            return Err(ApiError::bad_request(format!(
                "bento {} needs model {name}:{version}, which is not in the registry; push it with `bentoml models push {name}:{version}`",
                bento.tag()
            )));
        };
        models.push(artifact_ref(state, &m).await?);
    }
    let config: DeploymentConfig = serde_json::from_str(&target.config).unwrap_or_default();
    let manifest = manifest_of(&bento);
    let settings = service_settings(&config, &entry_service(&manifest), state.config.cold_start_timeout)?;
    let python_version = manifest
        .pointer("/image/python_version")
        .or_else(|| manifest.pointer("/docker/python_version"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(DeploymentSpec {
        uid: d.uid.clone(),
        org_uid: d.org_uid.clone(),
        name: d.name.clone(),
        namespace: d.namespace.clone(),
        host: d.host.clone(),
        access_authorization: config.access_authorization.unwrap_or(false),
        revision_uid: rev.uid,
        bento: bento_ref,
        models,
        python_version,
        envs: settings.envs,
        scaling: settings.scaling,
        port: d.endpoint_port.unwrap_or(0) as u16,
        cold_start_timeout: settings.cold_start.unwrap_or(state.config.cold_start_timeout),
    })
}

pub async fn artifact_ref(state: &AppState, v: &VersionRow) -> ApiResult<ArtifactRef> {
    let digest = v
        .blob_digest
        .clone()
        .ok_or_else(|| ApiError::bad_request(format!("{} {} is not uploaded", v.kind, v.tag())))?;
    let (key, _) = state
        .store
        .blob_key(&digest)
        .await?
        .ok_or_else(|| ApiError::internal(format!("blob of {} missing", v.tag())))?;
    Ok(ArtifactRef { name: v.repository_name.clone(), version: v.version.clone(), digest, storage_key: key })
}

/// Checks, before anything is stored or started, that a bento can run: its
/// models are all in the registry and its archive is safe to extract.
pub async fn preflight(state: &AppState, bento: &VersionRow) -> ApiResult<()> {
    for (name, version, found) in state.store.bento_models(bento).await? {
        if !found.is_some_and(|m| m.is_uploaded()) {
            return Err(ApiError::bad_request(format!(
                "bento {} needs model {name}:{version}, which is not in the registry; push it with `bentoml models push {name}:{version}`",
                bento.tag()
            )));
        }
    }
    if let Some(runtime) = &state.runtime {
        let r = artifact_ref(state, bento).await?;
        runtime.check_bento(&r).await.map_err(|e| match e {
            yatai_runtime::RuntimeError::BadArchive(m) => ApiError::bad_request(format!("refused {m}")),
            other => ApiError::unavailable(other.to_string()),
        })?;
    }
    Ok(())
}

/// Sends the deployment's active revision to the runtime.
pub async fn apply(state: &AppState, d: &DeploymentRow) -> ApiResult<()> {
    let runtime = state.runtime.as_ref().ok_or_else(|| ApiError::unavailable("this server runs no deployments"))?;
    let spec = runtime_spec(state, d).await?;
    runtime.apply(spec).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(())
}

/// The URL a deployment is reached at.
pub fn deployment_url(state: &AppState, headers: &axum::http::HeaderMap, d: &DeploymentRow) -> String {
    let base = match &state.config.external_url {
        Some(u) => u.clone(),
        None => {
            let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
            url::Url::parse(&format!("http://{host}"))
                .unwrap_or_else(|_| url::Url::parse("http://127.0.0.1").expect("valid"))
        }
    };
    let host = base.host_str().unwrap_or("127.0.0.1").to_owned();
    match (&state.config.deployment_domain, &d.host) {
        (Some(domain), Some(label)) => {
            let port = base.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{label}.{domain}{port}", base.scheme())
        }
        // No domain, or a deployment whose host another one held first (see
        // migration 0007): its own port.
        _ => format!("http://{host}:{}", d.endpoint_port.unwrap_or(0)),
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
    let latest = match revisions.iter().enumerate().find(|(_, (r, _))| r.status == "active") {
        Some((i, (r, t))) => Some(revision_schema(state, r, t, total - i as i64).await?),
        None => None,
    };
    let snapshot = state.runtime.as_ref().and_then(|r| r.snapshot(&d.uid));
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
        creator: user_schema(d.creator_name.as_deref()),
        cluster: cluster_schema(&cluster, &caller.org.name, is_first),
        latest_revision: latest,
        manifest: json!({"dev": false, "routing": null}),
        urls: vec![deployment_url(state, headers, d)],
        replicas,
    })
}

/// Writes the runtime's status changes to the database and the event feed.
pub struct DbStatusSink {
    pub store: Store,
}

impl StatusSink for DbStatusSink {
    fn status(&self, deployment_uid: &str, name: &str, phase: Phase, reason: &str) {
        let store = self.store.clone();
        let (uid, name, reason) = (deployment_uid.to_owned(), name.to_owned(), reason.to_owned());
        tokio::spawn(async move {
            let Ok(Some(d)) = store.get_deployment_by_uid(&uid).await else { return };
            // A deployment the user terminated stays terminated, whatever a
            // late report from its replicas says.
            if d.desired == "terminated" && !matches!(phase, Phase::Terminating | Phase::Terminated) {
                return;
            }
            match store.set_status(&uid, phase.as_str(), &reason).await {
                Ok(true) => {
                    if d.status == phase.as_str() {
                        return; // only the reason changed
                    }
                    tracing::info!(deployment = %name, status = phase.as_str(), %reason, "deployment status");
                    let info = json!({"status": phase.as_str(), "previous": d.status, "reason": reason}).to_string();
                    let _ = store
                        .record_event(NewEvent {
                            org_uid: &d.org_uid,
                            actor_uid: None,
                            actor_name: "",
                            api_token_name: "",
                            operation: "status",
                            resource_type: "deployment",
                            resource_name: &format!("{}/{}", d.namespace, d.name),
                            status: if matches!(phase, Phase::Failed | Phase::Unhealthy) {
                                "failed"
                            } else {
                                "success"
                            },
                            info: &info,
                        })
                        .await;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not record a deployment status"),
            }
        });
    }

    fn port_changed(&self, deployment_uid: &str, port: u16) {
        let store = self.store.clone();
        let uid = deployment_uid.to_owned();
        tokio::spawn(async move {
            if let Err(e) = store.set_endpoint_port(&uid, port).await {
                tracing::warn!(error = %e, "could not record a moved endpoint port");
            }
        });
    }
}

/// Checks the tokens of requests to deployments with access authorization:
/// an API token of the deployment's organization that may read its
/// deployments (scope `api`, `read_cluster` or `write_cluster`), as the
/// dashboard and API require to see them.
pub struct ApiTokenAccess {
    pub state: AppState,
}

#[async_trait::async_trait]
impl yatai_runtime::AccessVerifier for ApiTokenAccess {
    async fn verify(&self, org_uid: &str, token: Option<&str>) -> Result<(), yatai_runtime::AccessDenied> {
        let denied = |status: u16, message: String| yatai_runtime::AccessDenied { status, message };
        let Some(token) = token else {
            return Err(denied(
                401,
                "this deployment requires an API token of its organization: send `Authorization: Bearer <token>` \
                 (bentoml.SyncHTTPClient(url, token=…) does this)"
                    .into(),
            ));
        };
        let caller = self.state.auth.authenticate(Some(token)).await.map_err(|e| denied(401, e.message))?;
        if caller.org.uid != org_uid {
            return Err(denied(403, "the API token belongs to another organization than this deployment".into()));
        }
        caller.require(crate::auth::Permission::ReadCluster).map_err(|e| denied(403, e.message))
    }
}

/// At server start, before it answers: stops replicas a crashed server left
/// behind, and marks every deployment that should run as `deploying`, so
/// that nobody reads a stale `running`. Returns those deployments, for
/// [`restore_all`].
pub async fn prepare_restore(state: &AppState) -> Vec<DeploymentRow> {
    let Some(runtime) = state.runtime.clone() else { return Vec::new() };
    let orphans = runtime.stop_orphans().await;
    if orphans > 0 {
        tracing::warn!(orphans, "stopped replicas left running by a previous server");
    }
    let deployments = match state.store.all_deployments().await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot list deployments to restore");
            return Vec::new();
        }
    };
    let mut to_run = Vec::new();
    for d in deployments {
        if d.desired == "running" {
            let _ = state.store.set_status(&d.uid, "deploying", "restoring after a server restart").await;
            to_run.push(d);
        } else {
            let _ = state.store.set_status(&d.uid, "terminated", "").await;
        }
    }
    to_run
}

/// Brings back the deployments [`prepare_restore`] returned.
pub async fn restore_all(state: &AppState, deployments: Vec<DeploymentRow>) {
    for d in deployments {
        if let Err(e) = apply(state, &d).await {
            tracing::warn!(deployment = %d.name, error = %e.message, "cannot restore a deployment");
            let _ = state.store.set_status(&d.uid, "failed", &e.message).await;
        }
    }
}

/// Records a user's action on a deployment in the event feed.
pub async fn record(state: &AppState, caller: &Caller, operation: &str, d: &DeploymentRow, info: Value) {
    crate::routes::artifacts::record(
        state,
        caller,
        operation,
        "deployment",
        &format!("{}/{}", d.namespace, d.name),
        info,
    )
    .await;
}

/// Drops everything the runtime holds for a deployment (used by delete).
pub async fn forget(state: &AppState, d: &DeploymentRow) {
    if let Some(rt) = &state.runtime {
        rt.remove(&d.uid).await;
    }
}

/// A random suffix for server-chosen names.
pub fn name_suffix() -> String {
    let n = Timestamp::now().0 as u64 ^ (std::process::id() as u64).rotate_left(32);
    format!("{:06x}", n & 0xff_ffff)
}

pub type SharedRuntime = Arc<yatai_runtime::LocalRuntime>;
