//! The audit feed.

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Auth;
use crate::auth::Permission;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Query, lenient};
use crate::openapi::{Api, Op};
use crate::schemas::{CreatorSchema, EventList, EventSchema, ts};
use yatai_app::AppState;

pub fn routes(state: AppState) -> Api {
    let op = |path: &str| {
        Op::get(path, "The organization's events, newest first")
            .tag("events")
            .perm(Permission::ReadRegistry)
            .query("start", "offset (default 0)")
            .query("count", "page size (default 20, at most 1000)")
            .query("operation_name", "created, pushed, pulled, deleted, updated, revoked")
            .query("resource_type", "model, bento, model_repository, bento_repository, api_token")
            .query("resource_name", "e.g. iris_clf:abc123")
            .query("creator_name", "user who acted")
            .ok::<EventList>()
    };
    Api::new(state)
        .route(op("/api/v1/events"), get(list_events))
        .route(op("/api/v1/current_org/events"), get(list_events))
}

#[derive(Deserialize)]
struct EventParams {
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    start: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    count: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    operation_name: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    resource_type: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    resource_name: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    creator_name: Option<String>,
}

async fn list_events(
    State(state): State<AppState>,
    caller: Auth,
    Query(p): Query<EventParams>,
) -> ApiResult<Json<EventList>> {
    let start = p.start.unwrap_or(0);
    let count = p.count.unwrap_or(20);
    if start < 0 || count < 0 {
        return Err(ApiError::bad_request("start and count must not be negative"));
    }
    let filter = yatai_store::EventFilter {
        operation: p.operation_name,
        resource_type: p.resource_type,
        resource_name: p.resource_name,
        actor_name: p.creator_name,
        before_seq: None,
        start,
        count: count.min(1000),
    };
    let (rows, total) = state.store.list_events(&caller.org.uid, &filter).await?;
    let items: Vec<_> = rows
        .into_iter()
        .map(|e| EventSchema {
            uid: e.uid,
            created_at: ts(e.created_at),
            operation_name: e.operation,
            resource_type: e.resource_type,
            resource_name: e.resource_name,
            status: e.status,
            creator: if e.actor_name.is_empty() { None } else { Some(CreatorSchema { name: e.actor_name }) },
            api_token_name: e.api_token_name,
            info: RawValue::from_string(e.info).unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("valid")),
        })
        .collect();
    Ok(Json(EventList { start, count: items.len() as i64, total, items }))
}
