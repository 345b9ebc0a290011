//! Yatai's v1 routes for clusters and deployments
//! (`/api/v1/clusters/{cluster}/namespaces/{namespace}/deployments/{name}`),
//! acting on the same deployments as the v2 API.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use yatai_store::{DeploymentFilter, DeploymentRow};

use super::Auth;
use super::deployments::{RevisionList, revision_list};
use crate::auth::{Caller, Permission};
use crate::deployments::{
    self as dep, ClusterSchema, DeploymentConfig, DeploymentList, DeploymentSchema, EnvItem, RevisionSchema,
};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json as JsonBody, Path, Query, lenient};
use crate::openapi::{Api, Op};
use crate::schemas::Label;
use crate::sse::log_stream;
use yatai_app::AppState;
use yatai_app::deployments as app;

const D: &str = "/api/v1/clusters/{cluster}/namespaces/{namespace}/deployments/{name}";

pub fn routes(state: AppState) -> Api {
    let op = |o: Op| o.tag("deployments (Yatai v1)");
    Api::new(state)
        .route(
            op(Op::get("/api/v1/clusters", "List clusters").perm(Permission::ReadCluster).ok::<ClusterList>()),
            get(list_clusters),
        )
        .route(
            op(Op::get("/api/v1/clusters/{cluster}", "Get a cluster, with its settings and what it has now")
                .perm(Permission::ReadCluster)
                .ok::<super::clusters::ClusterDetail>()
                .errors(&[404])),
            get(get_cluster),
        )
        .route(
            op(Op::post("/api/v1/clusters", "Register a Kubernetes cluster (admins; checked against the cluster)")
                .perm(Permission::Admin)
                .body::<super::clusters::V1CreateCluster>()
                .ok::<super::clusters::ClusterDetail>()
                .errors(&[400, 409, 413])),
            post(super::clusters::create),
        )
        .route(
            op(Op::patch("/api/v1/clusters/{cluster}", "Change a cluster (admins)")
                .perm(Permission::Admin)
                .body::<super::clusters::V1UpdateCluster>()
                .ok::<super::clusters::ClusterDetail>()
                .errors(&[400, 404, 413])),
            axum::routing::patch(super::clusters::update),
        )
        .route(
            op(Op::delete("/api/v1/clusters/{cluster}", "Remove a cluster with no deployments (admins)")
                .perm(Permission::Admin)
                .ok::<super::clusters::ClusterDetail>()
                .errors(&[400, 404, 409])),
            axum::routing::delete(super::clusters::remove),
        )
        .route(
            op(Op::get("/api/v1/deployments", "List the organization's deployments")
                .perm(Permission::ReadCluster)
                .ok::<DeploymentList>()),
            get(list_all),
        )
        .route(
            op(Op::get("/api/v1/clusters/{cluster}/deployments", "List a cluster's deployments")
                .perm(Permission::ReadCluster)
                .ok::<DeploymentList>()
                .errors(&[404])),
            get(list_in_cluster),
        )
        .route(
            op(Op::post("/api/v1/clusters/{cluster}/deployments", "Create a deployment (Yatai v1 body)")
                .perm(Permission::WriteCluster)
                .body::<V1CreateDeployment>()
                .ok::<DeploymentSchema>()
                .errors(&[404, 409])),
            post(create),
        )
        .route(
            op(Op::get(D, "Get a deployment").perm(Permission::ReadCluster).ok::<DeploymentSchema>().errors(&[404])),
            get(get_one),
        )
        .route(
            op(Op::patch(D, "Update a deployment (Yatai v1 body): a new revision")
                .perm(Permission::WriteCluster)
                .body::<V1UpdateDeployment>()
                .ok::<DeploymentSchema>()
                .errors(&[404, 409])),
            axum::routing::patch(update),
        )
        .route(
            op(Op::delete(D, "Delete a deployment")
                .perm(Permission::WriteCluster)
                .ok::<DeploymentSchema>()
                .errors(&[404, 409])),
            axum::routing::delete(delete),
        )
        .route(
            op(Op::post(format!("{D}/terminate"), "Terminate a deployment")
                .perm(Permission::WriteCluster)
                .ok::<DeploymentSchema>()
                .errors(&[404, 409])),
            post(terminate),
        )
        .route(
            op(Op::get(format!("{D}/revisions"), "A deployment's revisions, newest first")
                .perm(Permission::ReadCluster)
                .ok::<RevisionList>()
                .errors(&[404])),
            get(revisions),
        )
        .route(
            op(Op::get(format!("{D}/revisions/{{revision}}"), "One revision")
                .perm(Permission::ReadCluster)
                .ok::<RevisionSchema>()
                .errors(&[404])),
            get(revision),
        )
        .route(
            op(Op::post(
                format!("{D}/revisions/{{revision}}/rollback"),
                "Make an earlier revision active again (as a new revision)",
            )
            .perm(Permission::WriteCluster)
            .ok::<DeploymentSchema>()
            .errors(&[404, 409])),
            post(rollback),
        )
        .route(
            op(Op::get(format!("{D}/logs"), "Replica output as server-sent events")
                .perm(Permission::ReadCluster)
                .query("tail", "how many past lines (default 100)")
                .query("follow", "keep the stream open")
                .errors(&[404])),
            get(logs),
        )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterList {
    pub start: i64,
    pub count: i64,
    pub total: i64,
    pub items: Vec<ClusterSchema>,
}

async fn list_clusters(State(state): State<AppState>, caller: Auth) -> ApiResult<Json<ClusterList>> {
    app::resolve_cluster(&state, &caller, None).await?;
    let rows = state.store.list_clusters(&caller.org.uid).await?;
    let items: Vec<_> =
        rows.iter().enumerate().map(|(i, c)| dep::cluster_schema(c, &caller.org.name, i == 0)).collect();
    let n = items.len() as i64;
    Ok(Json(ClusterList { start: 0, count: n, total: n, items }))
}

/// A Kubernetes cluster's health is probed for the answer (reachable, version, CRDs, the
/// operator, the domain suffix): what its page shows.
async fn get_cluster(
    State(state): State<AppState>,
    caller: Auth,
    Path(cluster): Path<String>,
) -> ApiResult<Json<super::clusters::ClusterDetail>> {
    let v = yatai_app::clusters::get(&state, &caller, &cluster).await?;
    let first = state.store.list_clusters(&caller.org.uid).await?.first().is_some_and(|f| f.uid == v.row.uid);
    let mut detail = super::clusters::detail(&state, v, &caller.org);
    detail.cluster.is_first = first;
    Ok(Json(detail))
}

#[derive(Deserialize)]
struct Page {
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    start: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    count: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    search: Option<String>,
}

async fn list_filtered(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    cluster_uid: Option<String>,
    p: Page,
) -> ApiResult<DeploymentList> {
    let start = p.start.unwrap_or(0).max(0);
    let filter = DeploymentFilter {
        cluster_uid,
        search: p.search,
        status: None,
        start,
        count: p.count.unwrap_or(20).clamp(0, 10_000),
    };
    app::connect_clusters(state, &caller.org.uid).await?;
    let (rows, total) = state.store.list_deployments(&caller.org.uid, &filter).await?;
    let mut items = Vec::with_capacity(rows.len());
    for d in &rows {
        items.push(dep::deployment_schema(state, caller, headers, d).await?);
    }
    Ok(DeploymentList { start, count: items.len() as i64, total, items })
}

async fn list_all(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Query(p): Query<Page>,
) -> ApiResult<Json<DeploymentList>> {
    Ok(Json(list_filtered(&state, &caller, &headers, None, p).await?))
}

async fn list_in_cluster(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path(cluster): Path<String>,
    Query(p): Query<Page>,
) -> ApiResult<Json<DeploymentList>> {
    let c = app::resolve_cluster(&state, &caller, Some(&cluster)).await?;
    Ok(Json(list_filtered(&state, &caller, &headers, Some(c.uid), p).await?))
}

/// Yatai's `DeploymentTargetConfig`, as far as the local runtime uses it.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct V1TargetConfig {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub hpa_conf: Option<Value>,
    #[serde(default)]
    pub envs: Option<Vec<V1Env>>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub resources: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct V1Env {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct V1Target {
    /// `stable` (canary targets are not supported).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub bento_repository: String,
    pub bento: String,
    #[serde(default)]
    pub config: Option<V1TargetConfig>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct V1CreateDeployment {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub kube_namespace: Option<String>,
    #[serde(default)]
    pub labels: Option<Vec<Label>>,
    pub targets: Vec<V1Target>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct V1UpdateDeployment {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: Option<Vec<Label>>,
    pub targets: Vec<V1Target>,
}

/// Turns a Yatai v1 target into a bento tag and a v2 configuration.
fn from_v1(targets: &[V1Target], labels: Option<Vec<Label>>) -> ApiResult<(String, DeploymentConfig)> {
    let [t] = targets else {
        return Err(ApiError::bad_request("exactly one target is supported (canary targets are not)"));
    };
    if t.kind.as_deref().is_some_and(|k| k != "stable") {
        return Err(ApiError::bad_request("only `stable` targets are supported"));
    }
    let config = t.config.as_ref();
    let mut service = Map::new();
    if let Some(hpa) = config.and_then(|c| c.hpa_conf.as_ref()) {
        service.insert(
            "scaling".into(),
            json!({"min_replicas": hpa.get("min_replicas"), "max_replicas": hpa.get("max_replicas")}),
        );
    }
    let envs = config
        .and_then(|c| c.envs.as_ref())
        .map(|e| e.iter().map(|e| EnvItem { name: e.key.clone(), value: e.value.clone() }).collect());
    let mut services = Map::new();
    // The entry service's name is filled in against the bento by
    // service_settings, which also accepts a single unnamed service.
    services.insert("*".into(), Value::Object(service));
    Ok((
        format!("{}:{}", t.bento_repository, t.bento),
        DeploymentConfig { envs, labels, services: Some(services), ..Default::default() },
    ))
}

async fn create(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path(cluster): Path<String>,
    JsonBody(body): JsonBody<V1CreateDeployment>,
) -> ApiResult<Json<DeploymentSchema>> {
    app::resolve_cluster(&state, &caller, Some(&cluster)).await?;
    let (bento, config) = from_v1(&body.targets, body.labels)?;
    let request = app::DeploymentRequest {
        cluster: Some(&cluster),
        namespace: body.kube_namespace.as_deref(),
        name: Some(&body.name),
        bento: &bento,
        config: &config,
        description: body.description.as_deref().unwrap_or(""),
    };
    let d = app::create(&state, &caller, request).await?;
    let d = app::reload(&state, &d).await?;
    Ok(Json(dep::deployment_schema(&state, &caller, &headers, &d).await?))
}

async fn find(
    state: &AppState,
    caller: &Caller,
    cluster: &str,
    namespace: &str,
    name: &str,
) -> ApiResult<DeploymentRow> {
    let c = app::resolve_cluster(state, caller, Some(cluster)).await?;
    state
        .store
        .get_deployment(&caller.org.uid, &c.uid, namespace, name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("deployment {namespace}/{name} not found in cluster {cluster:?}")))
}

async fn get_one(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path((cluster, ns, name)): Path<(String, String, String)>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = find(&state, &caller, &cluster, &ns, &name).await?;
    Ok(Json(dep::deployment_schema(&state, &caller, &headers, &d).await?))
}

async fn update(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path((cluster, ns, name)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<V1UpdateDeployment>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = find(&state, &caller, &cluster, &ns, &name).await?;
    let (bento, config) = from_v1(&body.targets, body.labels)?;
    let d = app::update(&state, &caller, &d, &bento, &config).await?;
    Ok(Json(dep::deployment_schema(&state, &caller, &headers, &d).await?))
}

async fn delete(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path((cluster, ns, name)): Path<(String, String, String)>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = find(&state, &caller, &cluster, &ns, &name).await?;
    let mut out = dep::deployment_schema(&state, &caller, &headers, &d).await?;
    app::delete(&state, &caller, &d).await?;
    out.status = yatai_core::deploy::Phase::Terminated.as_str().into();
    Ok(Json(out))
}

async fn terminate(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path((cluster, ns, name)): Path<(String, String, String)>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = find(&state, &caller, &cluster, &ns, &name).await?;
    let d = app::terminate(&state, &caller, &d).await?;
    Ok(Json(dep::deployment_schema(&state, &caller, &headers, &d).await?))
}

async fn revisions(
    State(state): State<AppState>,
    caller: Auth,
    Path((cluster, ns, name)): Path<(String, String, String)>,
) -> ApiResult<Json<RevisionList>> {
    let d = find(&state, &caller, &cluster, &ns, &name).await?;
    Ok(Json(revision_list(&state, &d).await?))
}

async fn revision(
    State(state): State<AppState>,
    caller: Auth,
    Path((cluster, ns, name, revision)): Path<(String, String, String, String)>,
) -> ApiResult<Json<RevisionSchema>> {
    let d = find(&state, &caller, &cluster, &ns, &name).await?;
    let list = revision_list(&state, &d).await?;
    list.items
        .into_iter()
        .find(|r| r.uid == revision)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("revision {revision:?} not found")))
}

async fn rollback(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path((cluster, ns, name, revision)): Path<(String, String, String, String)>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = find(&state, &caller, &cluster, &ns, &name).await?;
    let d = app::rollback(&state, &caller, &d, &revision).await?;
    Ok(Json(dep::deployment_schema(&state, &caller, &headers, &d).await?))
}

#[derive(Deserialize)]
struct LogParams {
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    tail: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    follow: Option<bool>,
}

async fn logs(
    State(state): State<AppState>,
    caller: Auth,
    Path((cluster, ns, name)): Path<(String, String, String)>,
    Query(p): Query<LogParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let d = find(&state, &caller, &cluster, &ns, &name).await?;
    let book = app::target_for(&state, &d)
        .await
        .ok()
        .and_then(|t| t.logs(&d.uid))
        .ok_or_else(|| ApiError::not_found(format!("deployment {:?} has no logs yet", d.name)))?;
    let tail = p.tail.unwrap_or(100).clamp(0, 10_000) as usize;
    Ok(Sse::new(log_stream(book, tail, p.follow.unwrap_or(false))).keep_alive(KeepAlive::default()))
}
