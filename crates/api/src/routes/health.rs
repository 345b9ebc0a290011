//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::routing::get;

use crate::error::{ApiError, ApiResult};
use crate::openapi::{Api, Op};
use crate::schemas::{HealthSchema, VersionInfoSchema};
use yatai_app::AppState;

pub fn routes(state: AppState) -> Api {
    Api::new(state)
        .route(
            Op::get("/healthz", "Ready: the database answers")
                .tag("health")
                .ok::<HealthSchema>()
                .public()
                .errors(&[503]),
            get(ready),
        )
        .route(
            Op::get("/api/v1/health", "Ready: the database answers")
                .tag("health")
                .ok::<HealthSchema>()
                .public()
                .errors(&[503]),
            get(ready),
        )
        .route(
            Op::get("/livez", "Alive: the process serves requests").tag("health").ok::<HealthSchema>().public(),
            get(live),
        )
        .route(
            Op::get("/api/v1/version", "Server version").tag("health").ok::<VersionInfoSchema>().public(),
            get(version),
        )
}

async fn ready(State(state): State<AppState>) -> ApiResult<Json<HealthSchema>> {
    state.store.ping().await.map_err(|e| ApiError::unavailable(format!("database not reachable: {e}")))?;
    Ok(Json(HealthSchema { status: "ok", version: env!("CARGO_PKG_VERSION") }))
}

async fn live() -> Json<HealthSchema> {
    Json(HealthSchema { status: "ok", version: env!("CARGO_PKG_VERSION") })
}

async fn version() -> Json<VersionInfoSchema> {
    Json(VersionInfoSchema {
        version: env!("CARGO_PKG_VERSION"),
        git_commit: option_env!("YATAI_GIT_COMMIT").unwrap_or(""),
    })
}
