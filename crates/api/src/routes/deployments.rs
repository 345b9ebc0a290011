//! `/api/v2/deployments`: what `bentoml deployment create/get/list/update/
//! apply/terminate/delete` calls, plus revisions, rollback, restore, logs and
//! metrics for the dashboard.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post, put};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use yatai_app::deployments as app;
use yatai_core::deploy::Phase;

use crate::sse::log_stream;
use yatai_store::{DeploymentFilter, DeploymentRow};

use super::Auth;
use crate::auth::{Caller, Permission};
use crate::deployments::{
    self as dep, CreateDeploymentRequest, DeploymentList, DeploymentSchema, RevisionSchema, UpdateDeploymentRequest,
};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json as JsonBody, Path, Query, lenient};
use crate::openapi::{Api, Op};
use yatai_app::AppState;

pub fn routes(state: AppState) -> Api {
    let base = "/api/v2/deployments";
    let one = "/api/v2/deployments/{name}";
    let op = |o: Op| o.tag("deployments").query("cluster", "cluster name (empty: the default cluster)");
    Api::new(state)
        .route(
            op(Op::post(base, "Create a deployment and start it")
                .perm(Permission::WriteCluster)
                .body::<CreateDeploymentRequest>()
                .ok::<DeploymentSchema>()
                .errors(&[404, 409])),
            post(create),
        )
        .route(
            op(Op::get(base, "List deployments, newest first")
                .perm(Permission::ReadCluster)
                .query("start", "offset")
                .query("count", "page size")
                .query("search", "text in the name")
                .query("q", "filters (status:running)")
                .query("all", "ignored: all deployments of the organization are listed")
                .ok::<DeploymentList>()),
            get(list),
        )
        .route(
            op(Op::get(one, "Get a deployment").perm(Permission::ReadCluster).ok::<DeploymentSchema>().errors(&[404])),
            get(get_one),
        )
        .route(
            op(Op::put(one, "Update a deployment: a new revision, rolled out without dropping requests")
                .perm(Permission::WriteCluster)
                .body::<UpdateDeploymentRequest>()
                .ok::<DeploymentSchema>()
                .errors(&[404, 409])),
            put(update),
        )
        .route(
            op(Op::delete(one, "Delete a deployment (stopping it first); returns it")
                .perm(Permission::WriteCluster)
                .ok::<DeploymentSchema>()
                .errors(&[404, 409])),
            axum::routing::delete(delete),
        )
        .route(
            op(Op::post(format!("{one}/terminate"), "Stop every replica; the deployment and its URL stay")
                .perm(Permission::WriteCluster)
                .ok::<DeploymentSchema>()
                .errors(&[404, 409])),
            post(terminate),
        )
        .route(
            op(Op::post(format!("{one}/restore"), "Start a terminated deployment again with its active revision")
                .perm(Permission::WriteCluster)
                .ok::<DeploymentSchema>()
                .errors(&[404, 409])),
            post(restore),
        )
        .route(
            op(Op::put(format!("{one}/void_update"), "No-op update (codespaces); returns the deployment")
                .perm(Permission::WriteCluster)
                .ok::<DeploymentSchema>()
                .errors(&[404])),
            put(void_update),
        )
        .route(
            op(Op::get(format!("{one}/revisions"), "Revisions, newest first")
                .perm(Permission::ReadCluster)
                .ok::<RevisionList>()
                .errors(&[404])),
            get(revisions),
        )
        .route(
            op(Op::post(format!("{one}/rollback"), "Roll back to an earlier revision (as a new revision)")
                .perm(Permission::WriteCluster)
                .body::<RollbackRequest>()
                .ok::<DeploymentSchema>()
                .errors(&[404, 409])),
            post(rollback),
        )
        .route(
            op(Op::get(format!("{one}/logs"), "Replica output as server-sent events")
                .perm(Permission::ReadCluster)
                .query("tail", "how many past lines (default 100)")
                .query("follow", "keep the stream open for new lines")
                .errors(&[404])),
            get(logs),
        )
        .route(
            op(Op::get(format!("{one}/metrics"), "Request rate, error rate and latency over the last hour")
                .perm(Permission::ReadCluster)
                .ok::<MetricsSchema>()
                .errors(&[404])),
            get(metrics),
        )
        .route(
            Op::get("/api/v1/instance_types", "Instance types (a bare list, as the client expects)")
                .tag("deployments")
                .perm(Permission::ReadCluster)
                .query("cluster", "cluster name")
                .ok::<Vec<InstanceType>>()
                .errors(&[404]),
            get(instance_types),
        )
}

#[derive(Deserialize)]
pub struct ClusterParam {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub cluster: Option<String>,
}

/// Finds a deployment by name (see `yatai_app::deployments::find`).
async fn find(state: &AppState, caller: &Caller, cluster: Option<&str>, name: &str) -> ApiResult<DeploymentRow> {
    Ok(app::find(state, caller, cluster, name).await?)
}

async fn create(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Query(p): Query<ClusterParam>,
    JsonBody(body): JsonBody<CreateDeploymentRequest>,
) -> ApiResult<Json<DeploymentSchema>> {
    let request = app::DeploymentRequest {
        cluster: p.cluster.as_deref(),
        namespace: None,
        name: body.name.as_deref(),
        bento: &body.bento,
        config: &body.config,
        description: body.description.as_deref().unwrap_or(""),
    };
    let d = app::create(&state, &caller, request).await?;
    let d = app::reload(&state, &d).await?;
    Ok(Json(dep::deployment_schema(&state, &caller, &headers, &d).await?))
}

#[derive(Deserialize)]
struct ListParams {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    cluster: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    start: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    count: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    search: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    q: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<DeploymentList>> {
    let cluster_uid = match p.cluster.as_deref() {
        Some(c) => Some(app::resolve_cluster(&state, &caller, Some(c)).await?.uid),
        None => None,
    };
    let mut status = None;
    let mut words = p.search.clone().into_iter().collect::<Vec<_>>();
    for token in p.q.as_deref().unwrap_or("").split_whitespace() {
        if let Some(s) = token.strip_prefix("status:") {
            status = Some(s.to_owned());
        } else if !token.contains(':') {
            words.push(token.to_owned());
        }
    }
    let start = p.start.unwrap_or(0).max(0);
    let count = p.count.unwrap_or(20).clamp(0, 10_000);
    let filter = DeploymentFilter {
        cluster_uid,
        search: if words.is_empty() { None } else { Some(words.join(" ")) },
        status,
        start,
        count,
    };
    app::connect_clusters(&state, &caller.org.uid).await?;
    let (rows, total) = state.store.list_deployments(&caller.org.uid, &filter).await?;
    let mut items = Vec::with_capacity(rows.len());
    for d in &rows {
        items.push(dep::deployment_schema(&state, &caller, &headers, d).await?);
    }
    Ok(Json(DeploymentList { start, count: items.len() as i64, total, items }))
}

async fn get_one(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(p): Query<ClusterParam>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = find(&state, &caller, p.cluster.as_deref(), &name).await?;
    Ok(Json(dep::deployment_schema(&state, &caller, &headers, &d).await?))
}

async fn update(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(p): Query<ClusterParam>,
    JsonBody(body): JsonBody<UpdateDeploymentRequest>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = find(&state, &caller, p.cluster.as_deref(), &name).await?;
    let d = app::update(&state, &caller, &d, &body.bento, &body.config).await?;
    Ok(Json(dep::deployment_schema(&state, &caller, &headers, &d).await?))
}

async fn terminate(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(p): Query<ClusterParam>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = find(&state, &caller, p.cluster.as_deref(), &name).await?;
    let d = app::terminate(&state, &caller, &d).await?;
    Ok(Json(dep::deployment_schema(&state, &caller, &headers, &d).await?))
}

async fn restore(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(p): Query<ClusterParam>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = find(&state, &caller, p.cluster.as_deref(), &name).await?;
    let d = app::restore(&state, &caller, &d).await?;
    Ok(Json(dep::deployment_schema(&state, &caller, &headers, &d).await?))
}

async fn void_update(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(p): Query<ClusterParam>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = find(&state, &caller, p.cluster.as_deref(), &name).await?;
    Ok(Json(dep::deployment_schema(&state, &caller, &headers, &d).await?))
}

async fn delete(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(p): Query<ClusterParam>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = find(&state, &caller, p.cluster.as_deref(), &name).await?;
    let mut out = dep::deployment_schema(&state, &caller, &headers, &d).await?;
    app::delete(&state, &caller, &d).await?;
    out.status = Phase::Terminated.as_str().into();
    out.replicas.clear();
    Ok(Json(out))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevisionList {
    pub start: i64,
    pub count: i64,
    pub total: i64,
    pub items: Vec<RevisionSchema>,
}

pub async fn revision_list(state: &AppState, d: &DeploymentRow) -> ApiResult<RevisionList> {
    let revs = state.store.list_revisions(&d.uid).await?;
    let total = revs.len() as i64;
    let mut items = Vec::with_capacity(revs.len());
    for (i, (r, t)) in revs.iter().enumerate() {
        items.push(dep::revision_schema(state, r, t, total - i as i64).await?);
    }
    Ok(RevisionList { start: 0, count: total, total, items })
}

async fn revisions(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Query(p): Query<ClusterParam>,
) -> ApiResult<Json<RevisionList>> {
    let d = find(&state, &caller, p.cluster.as_deref(), &name).await?;
    Ok(Json(revision_list(&state, &d).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RollbackRequest {
    pub revision_uid: String,
}

async fn rollback(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(p): Query<ClusterParam>,
    JsonBody(body): JsonBody<RollbackRequest>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = find(&state, &caller, p.cluster.as_deref(), &name).await?;
    let d = app::rollback(&state, &caller, &d, &body.revision_uid).await?;
    Ok(Json(dep::deployment_schema(&state, &caller, &headers, &d).await?))
}

#[derive(Deserialize)]
struct LogParams {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    cluster: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    tail: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    follow: Option<bool>,
}

async fn logs(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Query(p): Query<LogParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let d = find(&state, &caller, p.cluster.as_deref(), &name).await?;
    let book = app::target_for(&state, &d)
        .await
        .ok()
        .and_then(|t| t.logs(&d.uid))
        .ok_or_else(|| ApiError::not_found(format!("deployment {:?} has no logs yet", d.name)))?;
    let tail = p.tail.unwrap_or(100).clamp(0, 10_000) as usize;
    Ok(Sse::new(log_stream(book, tail, p.follow.unwrap_or(false)))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsSchema {
    pub requests_per_second: f64,
    pub errors_per_second: f64,
    /// Share of requests answered with a 5xx status over the last minute.
    pub error_rate: f64,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub inflight: usize,
    /// Every 5 seconds over the last hour.
    #[schema(value_type = Vec<Object>)]
    pub samples: Vec<yatai_core::deploy::Sample>,
    /// Request totals each replica reports on its own /metrics.
    #[schema(value_type = Object)]
    pub replica_requests_total: serde_json::Map<String, Value>,
}

async fn metrics(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Query(p): Query<ClusterParam>,
) -> ApiResult<Json<MetricsSchema>> {
    let d = find(&state, &caller, p.cluster.as_deref(), &name).await?;
    let metrics = app::target_for(&state, &d).await.ok().and_then(|t| t.metrics(&d.uid)).unwrap_or_default();
    let samples = metrics.samples;
    let recent = &samples[samples.len().saturating_sub(12)..];
    let (req, err) = recent.iter().fold((0.0, 0.0), |(r, e), s| (r + s.requests_per_second, e + s.errors_per_second));
    let last = samples.last();
    let replica_requests_total = metrics.replica_requests.iter().map(|(id, n)| (id.clone(), json!(n))).collect();
    Ok(Json(MetricsSchema {
        requests_per_second: last.map(|s| s.requests_per_second).unwrap_or(0.0),
        errors_per_second: last.map(|s| s.errors_per_second).unwrap_or(0.0),
        error_rate: if req > 0.0 { err / req } else { 0.0 },
        p50_ms: last.and_then(|s| s.p50_ms),
        p99_ms: last.and_then(|s| s.p99_ms),
        inflight: metrics.inflight,
        samples,
        replica_requests_total,
    }))
}

/// A size of machine to run replicas on (the client's ResourceInstanceSchema).
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceType {
    pub uid: String,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub resource_type: &'static str,
    pub labels: Vec<crate::schemas::Label>,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
    #[schema(value_type = Object)]
    pub config: Value,
}

/// The sizes of replica the cluster offers (`?cluster=`; none: the default cluster).
async fn instance_types(
    State(state): State<AppState>,
    caller: Auth,
    Query(p): Query<ClusterParam>,
) -> ApiResult<Json<Vec<InstanceType>>> {
    let cluster = app::resolve_cluster(&state, &caller, p.cluster.as_deref()).await?;
    let target = app::target_of(&state, &cluster).await?;
    Ok(Json(target.instance_types().into_iter().map(|t| instance_type_schema(&cluster, t)).collect()))
}

/// An instance type as the client decodes it (`ResourceInstanceSchema`).
pub(crate) fn instance_type_schema(
    cluster: &yatai_store::ClusterRow,
    t: yatai_core::deploy::InstanceType,
) -> InstanceType {
    InstanceType {
        uid: format!("{}/{}", cluster.name, t.name),
        display_name: t.name.clone(),
        name: t.name,
        description: t.description,
        resource_type: "instance_type",
        labels: Vec::new(),
        created_at: crate::schemas::ts(cluster.created_at),
        updated_at: None,
        deleted_at: None,
        config: json!({
            "group": "cpu",
            "price": "",
            "resources": {"requests": {"cpu": t.cpu, "memory": t.memory, "gpu": 0}, "limits": {}},
        }),
    }
}
