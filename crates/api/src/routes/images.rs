//! Image builds of bentos, started and watched over the API.

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use yatai_core::Kind;

use super::Auth;
use super::artifacts::{find_version, record};
use crate::auth::Permission;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json as JsonBody, Path};
use crate::openapi::{Api, Op};
use crate::schemas::{CreatorSchema, opt_ts, ts};
use serde_json::Value;
use yatai_app::AppState;
use yatai_app::images;
use yatai_store::ImageBuildRow;

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageBuildSchema {
    pub uid: String,
    /// `name:version` of the bento.
    pub bento: String,
    /// `pending`, `building`, `success` or `failed`.
    pub status: String,
    pub registry: String,
    /// `HOST/REPO:yatai.<name>.<version>@sha256:…` once built.
    pub reference: String,
    pub digest: String,
    pub error: String,
    #[schema(value_type = Object)]
    pub report: Value,
    /// The build's log (only when one build is asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    pub creator: Option<CreatorSchema>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

pub fn schema(row: &ImageBuildRow, bento_tag: &str, with_log: bool) -> ImageBuildSchema {
    ImageBuildSchema {
        uid: row.uid.clone(),
        bento: bento_tag.to_owned(),
        status: row.status.clone(),
        registry: row.registry.clone(),
        reference: row.reference.clone(),
        digest: row.digest.clone(),
        error: row.error.clone(),
        report: serde_json::from_str(&row.report).unwrap_or(Value::Null),
        log: with_log.then(|| row.log.clone()),
        creator: row.creator_name.clone().map(|name| CreatorSchema { name }),
        created_at: ts(row.created_at),
        started_at: opt_ts(row.started_at),
        finished_at: opt_ts(row.finished_at),
    }
}

pub fn routes(state: AppState) -> Api {
    let p = "/api/v1/bento_repositories/{name}/bentos/{version}/image_builds";
    Api::new(state)
        .route(
            Op::post(p, "Build the bento into an OCI image and push it to the server's registry")
                .tag("images")
                .perm(Permission::WriteRegistry)
                .body::<StartBuild>()
                .ok::<ImageBuildSchema>()
                .errors(&[404]),
            axum::routing::post(start),
        )
        .route(
            Op::get(p, "The bento's image builds, newest first")
                .tag("images")
                .perm(Permission::ReadRegistry)
                .ok::<ImageBuildList>()
                .errors(&[404]),
            get(list),
        )
        .route(
            Op::get("/api/v1/image_builds/{uid}", "One image build, with its log")
                .tag("images")
                .perm(Permission::ReadRegistry)
                .ok::<ImageBuildSchema>()
                .errors(&[404]),
            get(get_one),
        )
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StartBuild {
    /// Build and push even if the image's tag already exists.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageBuildList {
    pub start: i64,
    pub count: i64,
    pub total: i64,
    pub items: Vec<ImageBuildSchema>,
}

async fn start(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
    JsonBody(body): JsonBody<StartBuild>,
) -> ApiResult<Json<ImageBuildSchema>> {
    let bento = find_version(&state, &caller, Kind::Bento, &name, &version).await?;
    let row = images::start(&state, &caller, &bento, body.force).await?;
    record(&state, &caller, "image build started", "bento", &bento.tag(), serde_json::json!({"build": row.uid})).await;
    Ok(Json(schema(&row, &bento.tag(), false)))
}

async fn list(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ImageBuildList>> {
    let bento = find_version(&state, &caller, Kind::Bento, &name, &version).await?;
    let rows = state.store.list_image_builds(&bento.uid).await?;
    let items: Vec<_> = rows.iter().map(|r| schema(r, &bento.tag(), false)).collect();
    let n = items.len() as i64;
    Ok(Json(ImageBuildList { start: 0, count: n, total: n, items }))
}

async fn get_one(
    State(state): State<AppState>,
    caller: Auth,
    Path(uid): Path<String>,
) -> ApiResult<Json<ImageBuildSchema>> {
    let row = state
        .store
        .get_image_build(&caller.org.uid, &uid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("image build {uid:?} not found")))?;
    let tag =
        state.store.get_version_by_uid(&row.bento_uid).await?.map(|v| v.tag()).unwrap_or_else(|| "(deleted)".into());
    Ok(Json(schema(&row, &tag, true)))
}
