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
use yatai_runtime::DeployTarget;
use yatai_store::{DeploymentFilter, DeploymentRow, NewDeployment, NewTarget};

use super::Auth;
use crate::auth::{Caller, Permission};
use crate::deployments::{
    self as dep, CreateDeploymentRequest, DEFAULT_NAMESPACE, DeploymentConfig, DeploymentList, DeploymentSchema,
    RevisionSchema, UpdateDeploymentRequest,
};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json as JsonBody, Path, Query, lenient};
use crate::openapi::{Api, Op};
use crate::schemas::labels_to_json;
use crate::state::AppState;

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
                .errors(&[404])),
            axum::routing::delete(delete),
        )
        .route(
            op(Op::post(format!("{one}/terminate"), "Stop every replica; the deployment and its URL stay")
                .perm(Permission::WriteCluster)
                .ok::<DeploymentSchema>()
                .errors(&[404])),
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
                .ok::<Vec<InstanceType>>(),
            get(instance_types),
        )
}

#[derive(Deserialize)]
pub struct ClusterParam {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub cluster: Option<String>,
}

/// Finds a deployment by name: in the named cluster's default namespace, or
/// anywhere in the organization when no cluster is given.
pub async fn find(state: &AppState, caller: &Caller, cluster: Option<&str>, name: &str) -> ApiResult<DeploymentRow> {
    let not_found = || ApiError::not_found(format!("deployment {name:?} not found"));
    if name.is_empty() || name.len() > 100 {
        return Err(not_found());
    }
    match cluster.filter(|c| !c.is_empty()) {
        Some(c) => {
            let cluster = dep::resolve_cluster(state, caller, Some(c)).await?;
            let found = state.store.get_deployment(&caller.org.uid, &cluster.uid, DEFAULT_NAMESPACE, name).await?;
            match found {
                Some(d) => Ok(d),
                None => state
                    .store
                    .find_deployments_by_name(&caller.org.uid, name)
                    .await?
                    .into_iter()
                    .find(|d| d.cluster_uid == cluster.uid)
                    .ok_or_else(not_found),
            }
        }
        None => {
            let mut all = state.store.find_deployments_by_name(&caller.org.uid, name).await?;
            all.sort_by_key(|d| d.namespace != DEFAULT_NAMESPACE);
            all.into_iter().next().ok_or_else(not_found)
        }
    }
}

fn config_json(config: &DeploymentConfig) -> String {
    let mut c = config.clone();
    c.envs.get_or_insert_with(Vec::new);
    c.access_authorization.get_or_insert(false);
    c.services.get_or_insert_with(Default::default);
    serde_json::to_string(&c).expect("config serialises")
}

/// Creates a deployment (shared by the v1 and v2 routes).
pub async fn create_deployment(
    state: &AppState,
    caller: &Caller,
    cluster: Option<&str>,
    namespace: &str,
    name: Option<&str>,
    bento_tag: &str,
    config: &DeploymentConfig,
    description: &str,
) -> ApiResult<DeploymentRow> {
    let runtime = state.runtime.clone().ok_or_else(|| ApiError::unavailable("this server runs no deployments"))?;
    let cluster = dep::resolve_cluster(state, caller, cluster).await?;
    if cluster.kind != "local" {
        return Err(ApiError::bad_request(format!(
            "cluster {:?} is not served by this server's runtime yet",
            cluster.name
        )));
    }
    dep::check_namespace(namespace)?;
    let bento = dep::resolve_bento(state, caller, bento_tag).await?;
    let name = match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => n.to_owned(),
        None => {
            let base: String = bento.repository_name.replace(['_', '.'], "-").chars().take(40).collect();
            format!("{}-{}", base.trim_matches('-'), dep::name_suffix())
        }
    };
    dep::check_deployment_name(&name)?;
    crate::routes::artifacts::check_fields(Some(description), config.labels.as_deref())?;
    dep::validate_config(state, &bento, config)?;
    dep::preflight(state, &bento).await?;
    let taken = state.store.used_endpoint_ports().await?;
    let port = runtime.allocate_port(&taken).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let cfg = config_json(config);
    let labels = labels_to_json(config.labels.as_deref().unwrap_or(&[]));
    let host = yatai_runtime::LocalRuntime::host_key(&name, namespace);
    let d = state
        .store
        .create_deployment(NewDeployment {
            org_uid: &caller.org.uid,
            cluster_uid: &cluster.uid,
            namespace,
            name: &name,
            description,
            labels: &labels,
            creator_uid: &caller.user.uid,
            endpoint_port: Some(port),
            host: &host,
            targets: &[NewTarget { name: "main", bento_uid: &bento.uid, config: &cfg }],
        })
        .await?;
    dep::record(state, caller, "created", &d, json!({"bento": bento.tag()})).await;
    if let Err(e) = dep::apply(state, &d).await {
        let _ = state.store.set_status(&d.uid, "failed", &e.message).await;
        return Err(e);
    }
    Ok(d)
}

/// Adds a revision running `bento_tag` with `config`, and rolls out to it.
pub async fn update_deployment(
    state: &AppState,
    caller: &Caller,
    d: &DeploymentRow,
    bento_tag: &str,
    config: &DeploymentConfig,
) -> ApiResult<DeploymentRow> {
    let bento = dep::resolve_bento(state, caller, bento_tag).await?;
    dep::validate_config(state, &bento, config)?;
    dep::preflight(state, &bento).await?;
    let cfg = config_json(config);
    state
        .store
        .add_revision(
            &d.uid,
            &caller.user.uid,
            None,
            &[NewTarget { name: "main", bento_uid: &bento.uid, config: &cfg }],
        )
        .await?;
    state.store.set_desired(&d.uid, "running").await?;
    let _ = state.store.set_status(&d.uid, "deploying", "rolling out a new revision").await;
    let d = reload(state, d).await?;
    dep::record(state, caller, "updated", &d, json!({"bento": bento.tag()})).await;
    dep::apply(state, &d).await?;
    Ok(d)
}

pub async fn reload(state: &AppState, d: &DeploymentRow) -> ApiResult<DeploymentRow> {
    state
        .store
        .get_deployment_by_uid(&d.uid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("deployment {:?} was deleted", d.name)))
}

pub async fn terminate_deployment(state: &AppState, caller: &Caller, d: &DeploymentRow) -> ApiResult<DeploymentRow> {
    state.store.set_desired(&d.uid, "terminated").await?;
    let stopping = state.runtime.as_ref().and_then(|r| r.snapshot(&d.uid)).is_some_and(|s| !s.replicas.is_empty());
    let _ = state.store.set_status(&d.uid, if stopping { "terminating" } else { "terminated" }, "").await;
    if let Some(rt) = &state.runtime {
        rt.terminate(&d.uid).await;
    }
    dep::record(state, caller, "terminated", d, Value::Null).await;
    reload(state, d).await
}

/// Starts a terminated deployment again with its active revision.
pub async fn restore_deployment(state: &AppState, caller: &Caller, d: &DeploymentRow) -> ApiResult<DeploymentRow> {
    if d.desired == "running" {
        return Err(ApiError::conflict(format!("deployment {:?} is not terminated", d.name)));
    }
    state.store.set_desired(&d.uid, "running").await?;
    let _ = state.store.set_status(&d.uid, "deploying", "restoring").await;
    let d = reload(state, d).await?;
    dep::record(state, caller, "restored", &d, Value::Null).await;
    dep::apply(state, &d).await?;
    Ok(d)
}

pub async fn delete_deployment(state: &AppState, caller: &Caller, d: &DeploymentRow) -> ApiResult<()> {
    dep::forget(state, d).await;
    state.store.delete_deployment(&d.uid).await?;
    dep::record(state, caller, "deleted", d, Value::Null).await;
    Ok(())
}

pub async fn rollback_deployment(
    state: &AppState,
    caller: &Caller,
    d: &DeploymentRow,
    revision_uid: &str,
) -> ApiResult<DeploymentRow> {
    let (rev, targets) = state
        .store
        .get_revision(&d.uid, revision_uid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("deployment {:?} has no revision {revision_uid:?}", d.name)))?;
    if rev.status == "active" {
        return Err(ApiError::conflict("that revision is already the active one"));
    }
    for t in &targets {
        let bento = state.store.get_version_by_uid(&t.bento_uid).await?;
        if !bento.as_ref().is_some_and(|b| b.is_uploaded()) {
            return Err(ApiError::conflict("the bento of that revision was deleted; it cannot be restored"));
        }
    }
    let copies: Vec<NewTarget> =
        targets.iter().map(|t| NewTarget { name: &t.name, bento_uid: &t.bento_uid, config: &t.config }).collect();
    state.store.add_revision(&d.uid, &caller.user.uid, Some(&rev.uid), &copies).await?;
    state.store.set_desired(&d.uid, "running").await?;
    let _ = state.store.set_status(&d.uid, "deploying", "rolling back").await;
    let d = reload(state, d).await?;
    dep::record(state, caller, "rolled back", &d, json!({"to_revision": rev.uid})).await;
    dep::apply(state, &d).await?;
    Ok(d)
}

async fn create(
    State(state): State<AppState>,
    caller: Auth,
    headers: HeaderMap,
    Query(p): Query<ClusterParam>,
    JsonBody(body): JsonBody<CreateDeploymentRequest>,
) -> ApiResult<Json<DeploymentSchema>> {
    let d = create_deployment(
        &state,
        &caller,
        p.cluster.as_deref(),
        DEFAULT_NAMESPACE,
        body.name.as_deref(),
        &body.bento,
        &body.config,
        body.description.as_deref().unwrap_or(""),
    )
    .await?;
    let d = reload(&state, &d).await?;
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
        Some(c) => Some(dep::resolve_cluster(&state, &caller, Some(c)).await?.uid),
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
    let d = update_deployment(&state, &caller, &d, &body.bento, &body.config).await?;
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
    let d = terminate_deployment(&state, &caller, &d).await?;
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
    let d = restore_deployment(&state, &caller, &d).await?;
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
    delete_deployment(&state, &caller, &d).await?;
    out.status = "terminated".into();
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
    let d = rollback_deployment(&state, &caller, &d, &body.revision_uid).await?;
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

pub fn log_stream(
    book: std::sync::Arc<yatai_runtime::logs::LogBook>,
    tail: usize,
    follow: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    use futures_util::StreamExt;
    let live = follow.then(|| book.subscribe());
    let past = book.tail(tail);
    async_stream(past, live).take_until(Box::pin(crate::shutdown::stopping()))
}

fn async_stream(
    past: Vec<String>,
    live: Option<tokio::sync::broadcast::Receiver<std::sync::Arc<str>>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    use futures_util::StreamExt;
    let past = futures_util::stream::iter(past.into_iter().map(|l| Ok(Event::default().data(l))));
    let live = futures_util::stream::unfold(live, |rx| async move {
        let mut rx = rx?;
        let event = match rx.recv().await {
            Ok(line) => Event::default().data(line.as_ref()),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                Event::default().comment(format!("{n} lines skipped (the reader was too slow)"))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), Some(rx)))
    });
    past.chain(live)
}

async fn logs(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Query(p): Query<LogParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let d = find(&state, &caller, p.cluster.as_deref(), &name).await?;
    let book = state
        .runtime
        .as_ref()
        .and_then(|r| r.open_logs(&d.uid))
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
    pub samples: Vec<yatai_runtime::metrics::Sample>,
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
    let history = state.runtime.as_ref().and_then(|r| r.metrics(&d.uid));
    let samples = history.as_ref().map(|h| h.samples()).unwrap_or_default();
    let recent = &samples[samples.len().saturating_sub(12)..];
    let (req, err) = recent.iter().fold((0.0, 0.0), |(r, e), s| (r + s.requests_per_second, e + s.errors_per_second));
    let last = samples.last();
    let replica_requests_total = history
        .map(|h| h.replica_requests.lock().expect("lock").iter().map(|(id, n)| (id.clone(), json!(n))).collect())
        .unwrap_or_default();
    Ok(Json(MetricsSchema {
        requests_per_second: last.map(|s| s.requests_per_second).unwrap_or(0.0),
        errors_per_second: last.map(|s| s.errors_per_second).unwrap_or(0.0),
        error_rate: if req > 0.0 { err / req } else { 0.0 },
        p50_ms: last.and_then(|s| s.p50_ms),
        p99_ms: last.and_then(|s| s.p99_ms),
        inflight: state.runtime.as_ref().and_then(|r| r.endpoint(&d.uid)).map(|e| e.inflight()).unwrap_or(0),
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

async fn instance_types(caller: Auth) -> Json<Vec<InstanceType>> {
    let created = crate::schemas::ts(caller.org.created_at);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Json(vec![InstanceType {
        uid: "local".into(),
        name: "local".into(),
        display_name: "This machine".into(),
        description: "Replicas run as processes on the yatai server's machine".into(),
        resource_type: "instance_type",
        labels: Vec::new(),
        created_at: created,
        updated_at: None,
        deleted_at: None,
        config: json!({"group": "cpu", "price": "", "resources": {"requests": {"cpu": cpus.to_string(), "memory": "", "gpu": 0}, "limits": {}}}),
    }])
}
