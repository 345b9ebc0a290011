//! Who the caller is (`bentoml cloud login` reads these), and API tokens.

use axum::Json;
use axum::extract::State;
use axum::routing::{delete, get, post};
use serde::Deserialize;
use yatai_core::Timestamp;

use super::Auth;
use crate::auth::{KNOWN_SCOPES, Permission};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json as JsonBody, Path, Query, lenient};
use crate::openapi::{Api, Op};
use crate::schemas::{CreateTokenRequest, OrganizationSchema, TokenList, TokenSchema, UserSchema};
use yatai_app::AppState;
use yatai_app::tokens;

pub fn routes(state: AppState) -> Api {
    Api::new(state)
        .route(
            Op::get("/api/v1/auth/current", "The user the token belongs to")
                .tag("identity")
                .perm(Permission::ReadRegistry)
                .ok::<UserSchema>(),
            get(current_user),
        )
        .route(
            Op::get("/api/v1/current_org", "The organization the token belongs to")
                .tag("identity")
                .perm(Permission::ReadRegistry)
                .ok::<OrganizationSchema>(),
            get(current_org),
        )
        .route(
            Op::get("/api/v1/api_tokens", "List API tokens (yours; an admin may add all=true)")
                .tag("api tokens")
                .perm(Permission::ManageOwnTokens)
                .query("search", "text in the token name")
                .query("all", "admins: every member's tokens")
                .ok::<TokenList>(),
            get(list_tokens),
        )
        .route(
            Op::post("/api/v1/api_tokens", "Create an API token; the secret is in this response only")
                .tag("api tokens")
                .perm(Permission::ManageOwnTokens)
                .body::<CreateTokenRequest>()
                .ok::<TokenSchema>()
                .errors(&[409]),
            post(create_token),
        )
        .route(
            Op::get("/api/v1/api_tokens/{uid}", "Get an API token")
                .tag("api tokens")
                .perm(Permission::ManageOwnTokens)
                .ok::<TokenSchema>()
                .errors(&[404]),
            get(get_token),
        )
        .route(
            Op::delete("/api/v1/api_tokens/{uid}", "Revoke an API token")
                .tag("api tokens")
                .perm(Permission::ManageOwnTokens)
                .ok::<TokenSchema>()
                .errors(&[404]),
            delete(delete_token),
        )
}

async fn current_user(caller: Auth) -> Json<UserSchema> {
    Json(UserSchema::from(&caller.user))
}

async fn current_org(caller: Auth) -> Json<OrganizationSchema> {
    Json(OrganizationSchema::from(&caller.org))
}

#[derive(Deserialize)]
struct TokenListParams {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    search: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    all: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    start: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    count: Option<i64>,
}

fn schema_for(caller: &crate::auth::Caller, t: &yatai_store::TokenRow, secret: Option<String>) -> TokenSchema {
    // Tokens listed here belong to the caller's organization; the user block
    // names the owner.
    let mut user = UserSchema::from(&caller.user);
    if t.user_uid != caller.user.uid {
        user.uid = t.user_uid.clone();
        user.name = t.user_name.clone();
        user.email = String::new();
        user.is_admin = false;
    }
    TokenSchema::from_row(t, user, OrganizationSchema::from(&caller.org), secret)
}

async fn list_tokens(
    State(state): State<AppState>,
    caller: Auth,
    Query(p): Query<TokenListParams>,
) -> ApiResult<Json<TokenList>> {
    let all = p.all.unwrap_or(false);
    if all {
        caller.require(Permission::Admin)?;
    }
    let user = if all { None } else { Some(caller.user.uid.as_str()) };
    let rows = state.store.list_tokens(&caller.org.uid, user, p.search.as_deref()).await?;
    let total = rows.len() as i64;
    let start = p.start.unwrap_or(0).max(0);
    let count = p.count.unwrap_or(100).clamp(0, 1000);
    let items: Vec<_> =
        rows.iter().skip(start as usize).take(count as usize).map(|t| schema_for(&caller, t, None)).collect();
    Ok(Json(TokenList { start, count: items.len() as i64, total, items }))
}

async fn create_token(
    State(state): State<AppState>,
    caller: Auth,
    JsonBody(body): JsonBody<CreateTokenRequest>,
) -> ApiResult<Json<TokenSchema>> {
    if body.scopes.as_ref().is_some_and(|s| s.len() > KNOWN_SCOPES.len()) {
        return Err(ApiError::bad_request(format!("at most {} scopes can be given", KNOWN_SCOPES.len())));
    }
    let expires_at = match body.expired_at.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            Timestamp::parse_client(s)
                .ok_or_else(|| ApiError::bad_request(format!("expired_at {s:?} is not a timestamp")))?,
        ),
    };
    let request = tokens::TokenRequest {
        name: &body.name,
        description: body.description.as_deref().unwrap_or(""),
        scopes: body.scopes.unwrap_or_default(),
        expires_at,
    };
    let (row, secret) = tokens::create(&state, &caller, request).await?;
    Ok(Json(schema_for(&caller, &row, Some(secret))))
}

async fn get_token(
    State(state): State<AppState>,
    caller: Auth,
    Path(uid): Path<String>,
) -> ApiResult<Json<TokenSchema>> {
    let row = tokens::find(&state, &caller, &uid).await?;
    Ok(Json(schema_for(&caller, &row, None)))
}

async fn delete_token(
    State(state): State<AppState>,
    caller: Auth,
    Path(uid): Path<String>,
) -> ApiResult<Json<TokenSchema>> {
    let row = tokens::find(&state, &caller, &uid).await?;
    tokens::revoke(&state, &caller, &row).await?;
    Ok(Json(schema_for(&caller, &row, None)))
}
