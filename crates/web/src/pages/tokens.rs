//! API tokens: create (the value shown once, with the login command),
//! list with last use, revoke.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use maud::html;
use std::time::Duration;
use yatai_app::AppState;

use yatai_app::auth::Permission;
use yatai_app::{AppError, tokens};
use yatai_core::{Scope, Timestamp};
use yatai_store::TokenRow;

use super::auth::NoticeParam;
use super::registry::endpoint;
use crate::session::{Post, Session};
use crate::ui::{self, WebError, WebResult, field_error};

type Errors = Vec<(String, String)>;

const SCOPE_TEXT: &[(Scope, &str)] = &[
    (Scope::Api, "Everything your role allows (what the bentoml CLI needs)"),
    (Scope::ReadOrganization, "Read models and bentos"),
    (Scope::WriteOrganization, "Push and delete models and bentos"),
    (Scope::ReadCluster, "Read deployments"),
    (Scope::WriteCluster, "Create and change deployments"),
];

struct NewTokenShown {
    secret: String,
    name: String,
}

async fn tokens_page(
    state: &AppState,
    s: &Session,
    headers: &HeaderMap,
    notice: Option<&str>,
    created: Option<NewTokenShown>,
    errors: &Errors,
    form: Option<&crate::session::FormData>,
) -> WebResult {
    let admin = s.can(Permission::Admin);
    let user = if admin { None } else { Some(s.caller.user.uid.as_str()) };
    let tokens = state.store.list_tokens(s.org_uid(), user, None).await?;
    let now = Timestamp::now();
    let endpoint = endpoint(state, headers);
    let checked: Vec<&str> = form.map(|f| f.all("scopes")).unwrap_or_else(|| vec![Scope::Api.as_str()]);
    let body = html! {
        h1 { "API tokens" }
        p { "Tokens let the bentoml CLI and scripts act as you. Only a token's hash is stored: its value is shown once, when it is created." }
        (ui::notice(notice))
        @if let Some(c) = &created {
            section.card.notice aria-labelledby="new-token-title" {
                h2 id="new-token-title" { "Token " (c.name) " created" }
                p { strong { "Copy it now: it will not be shown again." } }
                div.copy { pre id="new-token" data-testid="new-token" { code { (c.secret) } } button.small type="button" data-copy="new-token" aria-label="Copy the token" { "Copy" } }
                p { "Log the bentoml CLI in with it:" }
                (ui::copyable("login-cmd", &format!("bentoml cloud login --api-token {} --endpoint {endpoint}", c.secret)))
            }
        }
        h2 { "Create a token" }
        form.card.stack data-form="token-create" method="post" action="/settings/tokens" {
            (ui::csrf(s))
            label for="token-name" { "Name" }
            input id="token-name" name="name" type="text" required maxlength="128" placeholder="laptop" value=(form.map(|f| f.get("name")).unwrap_or("")) aria-describedby="name-error";
            (field_error("name", errors))
            fieldset.checks {
                legend { "Scopes" }
                @for (scope, text) in SCOPE_TEXT {
                    label for=(format!("scope-{scope}")) {
                        input id=(format!("scope-{scope}")) type="checkbox" name="scopes" value=(scope) checked[checked.contains(&scope.as_str())];
                        span { code { (scope) } " — " (text) }
                    }
                }
            }
            (field_error("scopes", errors))
            label for="expires_in_days" { "Expires after (days)" }
            input id="expires_in_days" name="expires_in_days" type="number" min="1" max="3650" placeholder="never" value=(form.map(|f| f.get("expires_in_days")).unwrap_or("")) aria-describedby="expires_in_days-error";
            p.hint { "Leave empty for a token that never expires." }
            (field_error("expires_in_days", errors))
            button type="submit" { "Create token" }
        }
        h2 { @if admin { "Tokens of the organization" } @else { "Your tokens" } }
        @if tokens.is_empty() {
            div.empty { p { "No tokens yet. Create one above to log the bentoml CLI in." } }
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th { "Name" } @if admin { th { "Owner" } } th { "Scopes" } th.hide-narrow { "Starts with" } th { "Last used" } th { "Expires" } th { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for t in &tokens {
                            tr data-testid="row" data-name=(t.name) {
                                td { (t.name) }
                                @if admin { td { (t.user_name) } }
                                td { (t.scope_list().join(", ")) }
                                td.hide-narrow { code { (t.token_hint) "…" } }
                                td { (ui::opt_time(t.last_used_at)) }
                                td { @if t.is_expired(now) { span.badge.s-failed { "expired" } } @else { @match t.expires_at { Some(e) => (ui::time(e)), None => span.muted { "never" } } } }
                                td.row-actions {
                                    form method="post" action=(format!("/settings/tokens/{}/revoke", t.uid)) data-form="token-revoke" {
                                        (ui::csrf(s))
                                        button.small.danger type="submit" data-action="revoke" aria-label=(format!("Revoke {}", t.name)) { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let mut resp = ui::page(s, "tokens", "API tokens", body);
    if !errors.is_empty() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    // The page with a new secret must never be cached or replayed.
    resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    Ok(resp)
}

pub async fn tokens(
    State(state): State<AppState>,
    s: Session,
    headers: HeaderMap,
    Query(q): Query<NoticeParam>,
) -> WebResult {
    tokens_page(&state, &s, &headers, q.notice.as_deref(), None, &Vec::new(), None).await
}

pub async fn create_token(State(state): State<AppState>, headers: HeaderMap, post: Post) -> WebResult {
    let (s, f) = (&post.session, &post.form);
    ui::require(s, Permission::ManageOwnTokens)?;
    let mut errors = Errors::new();
    // Every field's error at once: the name's beside the expiry's.
    if let Err(e) = tokens::check_name(f.get("name")) {
        errors.push(("name".into(), e.message().to_owned()));
    }
    let expires_at = match f.get("expires_in_days") {
        "" => None,
        d => match d.parse::<u64>() {
            Ok(n) if (1..=3650).contains(&n) => Some(Timestamp::now().after(Duration::from_secs(n * 86_400))),
            _ => {
                errors.push((
                    "expires_in_days".into(),
                    "Enter a number of days from 1 to 3650, or leave it empty.".into(),
                ));
                None
            }
        },
    };
    if errors.is_empty() {
        let name = f.get("name");
        let request = tokens::TokenRequest {
            name,
            description: "created in the dashboard",
            scopes: f.all("scopes").iter().map(|s| s.to_string()).collect(),
            expires_at,
        };
        match tokens::create(&state, &s.caller, request).await {
            Ok((_, secret)) => {
                let shown = NewTokenShown { secret, name: name.trim().to_owned() };
                return tokens_page(&state, s, &headers, None, Some(shown), &Vec::new(), None).await;
            }
            Err(AppError::Invalid { field, message }) => errors.push((field.unwrap_or("name").into(), message)),
            Err(e) => return Err(e.into()),
        }
    }
    tokens_page(&state, s, &headers, None, None, &errors, Some(f)).await
}

async fn own_token(state: &AppState, s: &Session, uid: &str) -> WebResult<TokenRow> {
    let t = state.store.get_token(s.org_uid(), uid).await?;
    t.filter(|t| t.user_uid == s.caller.user.uid || s.can(Permission::Admin))
        .ok_or_else(|| WebError::not_found("There is no such API token."))
}

pub async fn revoke_token(State(state): State<AppState>, Path(uid): Path<String>, post: Post) -> WebResult {
    let s = &post.session;
    let t = own_token(&state, s, &uid).await?;
    tokens::revoke(&state, &s.caller, &t).await?;
    Ok(ui::back("/settings/tokens", &format!("Revoked token {}.", t.name)))
}
