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
use crate::images::{self, ImageBuildSchema};
use crate::openapi::{Api, Op};
use crate::state::AppState;

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
    Ok(Json(images::schema(&row, &bento.tag(), false)))
}

async fn list(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ImageBuildList>> {
    let bento = find_version(&state, &caller, Kind::Bento, &name, &version).await?;
    let rows = state.store.list_image_builds(&bento.uid).await?;
    let items: Vec<_> = rows.iter().map(|r| images::schema(r, &bento.tag(), false)).collect();
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
    Ok(Json(images::schema(&row, &tag, true)))
}
