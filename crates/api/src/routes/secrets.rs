//! `bentoml secret …`: `/api/v1/org_secrets[/{name}]`. What the routes do
//! is `yatai_app::secrets`. Values go in and never come out: every item is
//! returned with its key and `value: null`.

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use yatai_app::AppState;
use yatai_app::secrets::{self as app, ContentInput, SecretView};
use yatai_core::secret::SecretItem;

use super::Auth;
use crate::auth::{Caller, Permission};
use crate::deployments::{ClusterSchema, DeploymentUserSchema, cluster_schema};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json as JsonBody, Path, Query, lenient};
use crate::openapi::{Api, Op};
use crate::schemas::{Label, opt_ts, ts};

pub fn routes(state: AppState) -> Api {
    use axum::routing::{delete as delete_route, patch, post};
    let op = |o: Op| o.tag("secrets");
    const ALL: &str = "/api/v1/org_secrets";
    const ONE: &str = "/api/v1/org_secrets/{name}";
    let cluster =
        "the cluster shown with the secret (secrets belong to the organization; default: the default cluster)";
    Api::new(state)
        .route(
            op(Op::get(ALL, "The organization's secrets by name: keys, never values")
                .perm(Permission::ReadCluster)
                .query("start", "offset (default 0)")
                .query("count", "page size (default 10, at most 1000)")
                .query("search", "part of the name")
                .query("cluster", cluster)
                .ok::<SecretList>()),
            get(list),
        )
        .route(
            op(Op::post(ALL, "Create a secret (admins); the values are stored sealed and never returned")
                .perm(Permission::Admin)
                .query("cluster", cluster)
                .body::<CreateSecretRequest>()
                .ok::<SecretSchema>()
                .errors(&[409])),
            post(create),
        )
        .route(
            op(Op::get(ONE, "A secret: its keys, type, stage and path, never its values")
                .perm(Permission::ReadCluster)
                .query("cluster", cluster)
                .ok::<SecretSchema>()),
            get(get_one),
        )
        .route(
            op(Op::patch(ONE, "Replace a secret's content and values (admins); deployments using it roll")
                .perm(Permission::Admin)
                .query("cluster", cluster)
                .body::<UpdateSecretRequest>()
                .ok::<SecretSchema>()),
            patch(replace),
        )
        .route(
            op(Op::delete(ONE, "Delete a secret no deployment uses (admins)")
                .perm(Permission::Admin)
                .query("cluster", cluster)
                .ok::<SecretSchema>()
                .errors(&[409])),
            delete_route(delete),
        )
}

/// One value of a secret as the client sends it.
// Its `Debug` (below) leaves the value out.
#[derive(Deserialize, ToSchema)]
pub struct SecretItemIn {
    pub key: String,
    /// `mountfile`: the file below `path` (default: the key).
    #[serde(default)]
    pub sub_path: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

impl std::fmt::Debug for SecretItemIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretItemIn")
            .field("key", &self.key)
            .field("sub_path", &self.sub_path)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A secret's content (the client's `SecretContentSchema`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct SecretContentIn {
    /// `env` or `mountfile`.
    #[serde(rename = "type")]
    pub kind: String,
    pub items: Vec<SecretItemIn>,
    /// `mountfile`: `$BENTOML_HOME` or a directory below it (the default).
    #[serde(default)]
    pub path: Option<String>,
    /// `build`, `runtime` (default) or `all`.
    #[serde(default)]
    pub stage: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateSecretRequest {
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63)]
    pub name: String,
    pub content: SecretContentIn,
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateSecretRequest {
    pub content: SecretContentIn,
    /// Kept when absent.
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub description: Option<String>,
}

/// An item as returned: `value` is always null.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretItemOut {
    pub key: String,
    pub sub_path: Option<String>,
    /// Always null: values are write-only.
    pub value: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretContentOut {
    #[serde(rename = "type")]
    pub kind: String,
    pub items: Vec<SecretItemOut>,
    pub path: Option<String>,
    pub stage: String,
}

/// The client's `SecretSchema`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretSchema {
    pub uid: String,
    pub name: String,
    pub resource_type: &'static str,
    pub labels: Vec<Label>,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
    pub description: String,
    pub creator: DeploymentUserSchema,
    pub content: SecretContentOut,
    /// Secrets belong to the organization; this is the cluster the request named, else the default one.
    pub cluster: ClusterSchema,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretList {
    pub start: i64,
    pub count: i64,
    pub total: i64,
    pub items: Vec<SecretSchema>,
}

#[derive(Deserialize)]
struct ListParams {
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    start: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    count: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    search: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    cluster: Option<String>,
}

#[derive(Deserialize)]
struct ClusterParam {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    cluster: Option<String>,
}

async fn shown_cluster(state: &AppState, caller: &Caller, name: Option<&str>) -> ApiResult<ClusterSchema> {
    let c = yatai_app::deployments::resolve_cluster(state, caller, name).await.map_err(|e| match e {
        yatai_app::AppError::NotFound(m) => yatai_app::AppError::invalid_field("cluster", m),
        other => other,
    })?;
    Ok(cluster_schema(&c, &caller.org.name, false))
}

fn schema(v: SecretView, cluster: ClusterSchema) -> SecretSchema {
    let r = v.row;
    SecretSchema {
        uid: r.uid,
        name: r.name,
        resource_type: "secret",
        labels: Vec::new(),
        created_at: ts(r.created_at),
        updated_at: opt_ts(r.updated_at),
        deleted_at: None,
        description: r.description,
        creator: DeploymentUserSchema {
            name: r.creator_name.unwrap_or_else(|| "unknown".into()),
            email: String::new(),
            first_name: String::new(),
            last_name: String::new(),
        },
        content: SecretContentOut {
            kind: r.kind,
            items: v
                .items
                .into_iter()
                .map(|i| SecretItemOut { key: i.key, sub_path: i.sub_path, value: None })
                .collect(),
            path: r.path,
            stage: r.stage,
        },
        cluster,
    }
}

fn content_input(c: SecretContentIn) -> ApiResult<ContentInput> {
    let mut items = Vec::with_capacity(c.items.len());
    for i in c.items {
        let Some(value) = i.value else {
            return Err(ApiError::bad_request(format!(
                "item {:?} has no value: every item needs one (values are never read back, so send them all)",
                i.key.chars().take(60).collect::<String>()
            )));
        };
        items.push(SecretItem { key: i.key, sub_path: i.sub_path, value });
    }
    Ok(ContentInput { kind: c.kind, stage: c.stage, path: c.path, items })
}

async fn list(State(state): State<AppState>, caller: Auth, Query(p): Query<ListParams>) -> ApiResult<Json<SecretList>> {
    let start = p.start.unwrap_or(0);
    let count = p.count.unwrap_or(10);
    if start < 0 || count < 0 {
        return Err(ApiError::bad_request("start and count must not be negative"));
    }
    let (views, total) = app::list(&state, &caller, p.search.as_deref(), start, count.min(1000)).await?;
    let cluster = shown_cluster(&state, &caller, p.cluster.as_deref()).await?;
    let items: Vec<SecretSchema> = views.into_iter().map(|v| schema(v, cluster.clone())).collect();
    Ok(Json(SecretList { start, count: items.len() as i64, total, items }))
}

async fn create(
    State(state): State<AppState>,
    caller: Auth,
    Query(p): Query<ClusterParam>,
    JsonBody(body): JsonBody<CreateSecretRequest>,
) -> ApiResult<Json<SecretSchema>> {
    let cluster = shown_cluster(&state, &caller, p.cluster.as_deref()).await?;
    let input = content_input(body.content)?;
    let v = app::create(&state, &caller, &body.name, body.description.as_deref(), input).await?;
    Ok(Json(schema(v, cluster)))
}

async fn get_one(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Query(p): Query<ClusterParam>,
) -> ApiResult<Json<SecretSchema>> {
    let v = app::get(&state, &caller, &name).await?;
    let cluster = shown_cluster(&state, &caller, p.cluster.as_deref()).await?;
    Ok(Json(schema(v, cluster)))
}

async fn replace(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Query(p): Query<ClusterParam>,
    JsonBody(body): JsonBody<UpdateSecretRequest>,
) -> ApiResult<Json<SecretSchema>> {
    let cluster = shown_cluster(&state, &caller, p.cluster.as_deref()).await?;
    let input = content_input(body.content)?;
    let v = app::replace(&state, &caller, &name, body.description.as_deref(), input).await?;
    Ok(Json(schema(v, cluster)))
}

async fn delete(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Query(p): Query<ClusterParam>,
) -> ApiResult<Json<SecretSchema>> {
    let cluster = shown_cluster(&state, &caller, p.cluster.as_deref()).await?;
    let v = app::delete(&state, &caller, &name).await?;
    Ok(Json(schema(v, cluster)))
}
