//! API tokens of a user in an organization: create (the secret is shown
//! once, only its hash is kept), find, revoke. The API and the dashboard
//! both come here, so the same rules hold for both.

use serde_json::json;
use yatai_core::{Scope, Timestamp, limits};
use yatai_store::{NewToken, TokenRow};

use crate::auth::{Caller, KNOWN_SCOPES, Permission, generate_token};
use crate::error::{AppError, AppResult};
use crate::registry::record;
use crate::state::AppState;

/// A token to create, as the user asked for it.
#[derive(Debug, Default)]
pub struct TokenRequest<'a> {
    pub name: &'a str,
    pub description: &'a str,
    /// Empty: `api` (everything the user's role allows).
    pub scopes: Vec<String>,
    pub expires_at: Option<Timestamp>,
}

/// Creates a token for the caller; returns it and its secret (shown once).
pub async fn create(state: &AppState, caller: &Caller, req: TokenRequest<'_>) -> AppResult<(TokenRow, String)> {
    let name = req.name.trim();
    check_name(name)?;
    limits::check_description("description", req.description)
        .map_err(|e| AppError::invalid_field("description", e.to_string()))?;
    if req.scopes.len() > KNOWN_SCOPES.len() {
        return Err(AppError::invalid_field("scopes", format!("at most {} scopes can be given", KNOWN_SCOPES.len())));
    }
    let scopes = if req.scopes.is_empty() { vec![Scope::Api.as_str().to_owned()] } else { req.scopes };
    if let Some(bad) = scopes.iter().find(|s| !KNOWN_SCOPES.contains(&s.as_str())) {
        return Err(AppError::invalid_field(
            "scopes",
            format!("unknown scope {bad:?}; known scopes: {}", KNOWN_SCOPES.join(", ")),
        ));
    }
    if req.expires_at.is_some_and(|t| t <= Timestamp::now()) {
        return Err(AppError::invalid_field("expires_at", "the expiry is in the past"));
    }
    let secret = generate_token();
    let row = state
        .store
        .create_token(NewToken {
            org_uid: &caller.org.uid,
            user_uid: &caller.user.uid,
            name,
            description: req.description,
            token_hash: &secret.hash,
            token_hint: &secret.hint,
            scopes: &scopes,
            expires_at: req.expires_at,
        })
        .await
        .map_err(|e| match AppError::from(e) {
            // The store refuses a second token of the same name: the name's problem.
            AppError::Conflict(m) => AppError::invalid_field("name", m),
            other => other,
        })?;
    record(state, caller, "created", "api_token", name, json!({"scopes": scopes})).await;
    Ok((row, secret.secret))
}

/// A token's name: 1 to `MAX_TOKEN_NAME` characters (a form checks it
/// beside its other fields before asking to create).
pub fn check_name(name: &str) -> AppResult<()> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > limits::MAX_TOKEN_NAME {
        return Err(AppError::invalid_field(
            "name",
            format!("a token name must be 1 to {} characters", limits::MAX_TOKEN_NAME),
        ));
    }
    Ok(())
}

/// A token of the organization the caller may see: their own, or any with
/// admin rights. Others' tokens are not found, rather than forbidden.
pub async fn find(state: &AppState, caller: &Caller, uid: &str) -> AppResult<TokenRow> {
    let not_found = || AppError::not_found(format!("API token {uid:?} not found"));
    let row = state.store.get_token(&caller.org.uid, uid).await?.ok_or_else(not_found)?;
    if row.user_uid != caller.user.uid && !caller.allows(Permission::Admin) {
        return Err(not_found());
    }
    Ok(row)
}

/// Revokes a token: it stops working at once on this server.
pub async fn revoke(state: &AppState, caller: &Caller, token: &TokenRow) -> AppResult<()> {
    state.store.delete_token(&caller.org.uid, &token.uid).await?;
    state.auth.invalidate();
    record(state, caller, "revoked", "api_token", &token.name, json!({"owner": token.user_name})).await;
    Ok(())
}
