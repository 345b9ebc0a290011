//! Authentication at the HTTP edge: the header the bentoml client sends its
//! token in, and the middleware that turns it into the [`Caller`] a request
//! acts as. Tokens and permissions themselves are `yatai_app::auth`.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
pub use yatai_app::auth::{Caller, KNOWN_SCOPES, Permission, generate_token, hash_token};

use crate::AppState;
use crate::error::ApiError;

/// The header the bentoml client sends its token in.
pub const TOKEN_HEADER: &str = "x-yatai-api-token";

/// Middleware for `/api`: resolves the token into a [`Caller`] extension.
pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let header = req.headers().get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    let caller = state.auth.authenticate(header).await?;
    // Who acts, in the request's log lines (the token's name, never the token).
    tracing::Span::current().record("user", format!("{} (token {})", caller.user.name, caller.token_name));
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}
