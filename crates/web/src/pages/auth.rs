//! First-run setup, sign-in, sign-out and the account page.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use yatai_api::AppState;
use yatai_api::auth::hash_token;
use yatai_core::Timestamp;
use yatai_store::{MemberRole, NewSession, OrgRow, UserRow};

use crate::Web;
use crate::limiter::{PER_ACCOUNT, PER_ADDRESS};
use crate::password;
use crate::session::{
    PRE_COOKIE, Post, PrePost, SESSION_COOKIE, SESSION_TTL, Session, clear_cookie, hash_secret, new_secret, pre_token,
    set_cookie, with_cookie,
};
use crate::ui::{self, WebError, WebResult, field_error};

type Errors = Vec<(String, String)>;

fn err(errors: &mut Errors, field: &str, msg: impl Into<String>) {
    errors.push((field.to_owned(), msg.into()));
}

/// A page shown before sign-in, setting the pre-session cookie if needed.
fn pre_page(
    status: StatusCode,
    headers: &HeaderMap,
    secure: bool,
    page: &str,
    title: &str,
    body: impl FnOnce(&str) -> Markup,
) -> Response {
    let (token, fresh) = pre_token(headers);
    let html = ui::bare(page, title, body(&token));
    let resp = (status, Html(html.into_string())).into_response();
    if fresh { with_cookie(resp, set_cookie(PRE_COOKIE, &token, None, secure)) } else { resp }
}

fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\") { next } else { "/" }
}

/// Signs a user in: a new session in their first organization.
async fn start_session(
    state: &AppState,
    user: &UserRow,
    headers: &HeaderMap,
    client: &str,
    secure: bool,
    to: &str,
) -> WebResult {
    let orgs = state.store.user_orgs(&user.uid).await?;
    let Some((org, _)) = orgs.first() else {
        return Err(WebError::forbidden(format!(
            "{} is not a member of any organization; ask an administrator to add you.",
            user.name
        )));
    };
    // Sign-ins are rare: a good moment to forget sessions that expired.
    if let Err(e) = state.store.purge_expired_sessions(Timestamp::now()).await {
        tracing::warn!(error = %e, "could not purge expired sessions");
    }
    let secret = new_secret();
    let expires = Timestamp(Timestamp::now().0 + SESSION_TTL.as_micros() as i64);
    let agent = headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    state
        .store
        .create_session(NewSession {
            id_hash: &hash_secret(&secret),
            user_uid: &user.uid,
            org_uid: &org.uid,
            expires_at: expires,
            user_agent: agent,
            client_addr: client,
        })
        .await?;
    let resp = Redirect::to(safe_next(to)).into_response();
    let resp = with_cookie(resp, set_cookie(SESSION_COOKIE, &secret, Some(SESSION_TTL), secure));
    Ok(with_cookie(resp, clear_cookie(PRE_COOKIE, secure)))
}

// ---- setup ---------------------------------------------------------------

fn setup_form(token: &str, values: &crate::session::FormData, errors: &Errors) -> Markup {
    html! {
        h1 { "Welcome to yatai" }
        p { "Create the administrator account. The setup token is the API token " code { "yatai serve" } " printed when it first started (or the value of " code { "YATAI_INITIAL_API_TOKEN" } ")." }
        form.card data-form="setup" method="post" action="/setup" {
            input type="hidden" name="csrf" value=(token);
            (field_error("form", errors))
            label for="token" { "Setup token" }
            input id="token" name="token" type="password" required autocomplete="off" aria-describedby="token-error";
            (field_error("token", errors))
            label for="name" { "Administrator name" }
            input id="name" name="name" type="text" required value=(values.get("name")) placeholder="admin" autocomplete="username" aria-describedby="name-error";
            (field_error("name", errors))
            label for="email" { "Email" }
            input id="email" name="email" type="email" required value=(values.get("email")) placeholder="you@example.com" autocomplete="email" aria-describedby="email-error";
            (field_error("email", errors))
            label for="password" { "Password" }
            input id="password" name="password" type="password" required minlength="8" autocomplete="new-password" aria-describedby="password-error";
            (field_error("password", errors))
            button type="submit" { "Create administrator" }
        }
    }
}

pub async fn setup_page(State(state): State<AppState>, headers: HeaderMap) -> WebResult {
    if !state.store.setup_pending().await? {
        return Ok(Redirect::to("/login").into_response());
    }
    let secure = crate::session::is_https(&state, &headers);
    Ok(pre_page(StatusCode::OK, &headers, secure, "setup", "Set up", |t| {
        setup_form(t, &Default::default(), &Vec::new())
    }))
}

pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

pub fn valid_email(email: &str) -> bool {
    email.len() <= 254
        && email.split_once('@').is_some_and(|(a, b)| !a.is_empty() && b.contains('.') && !b.starts_with('.'))
        && !email.contains(char::is_whitespace)
}

pub async fn setup_submit(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
    post: PrePost,
) -> WebResult {
    if !state.store.setup_pending().await? {
        return Ok(Redirect::to("/login").into_response());
    }
    let f = &post.form;
    let addr_key = format!("setup:{}", post.client);
    if let Some(wait) = web.limiter.blocked(&[(&addr_key, PER_ACCOUNT)]) {
        return Err(WebError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many wrong setup tokens; try again in {} s.", wait.as_secs().max(1)),
        ));
    }
    let mut errors = Errors::new();
    let admin = state.store.setup_admin().await?;
    let token_ok = match (&admin, f.raw("token").trim()) {
        (_, "") => false,
        (Some(admin), t) => state
            .store
            .find_token_identity(&hash_token(t))
            .await?
            .is_some_and(|id| id.user.uid == admin.uid && !id.token.is_expired(Timestamp::now())),
        (None, _) => false,
    };
    if !token_ok {
        web.limiter.failed(&[&addr_key]);
        err(
            &mut errors,
            "token",
            "This is not the setup token. Use the API token yatai printed when it first started.",
        );
    }
    if !valid_user_name(f.get("name")) {
        err(&mut errors, "name", "Use 1 to 64 letters, digits, '_', '-' or '.'.");
    }
    if !valid_email(f.get("email")) {
        err(&mut errors, "email", "Enter an email address such as ada@example.com.");
    }
    if let Some(m) = password::check_new(f.raw("password")) {
        err(&mut errors, "password", m);
    }
    if errors.is_empty() {
        let admin = admin.expect("checked with the token");
        let hash =
            password::hash(f.raw("password")).await.map_err(|e| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        match state.store.complete_setup(&admin.uid, f.get("name"), f.get("email"), &hash).await {
            Ok(()) => {
                let user = state.store.get_user(&admin.uid).await?.expect("the admin exists");
                record(&state, &user, "setup").await;
                return start_session(&state, &user, &headers, &post.client, post.secure, "/").await;
            }
            Err(yatai_store::StoreError::Conflict(m)) => err(&mut errors, "name", m),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(pre_page(StatusCode::UNPROCESSABLE_ENTITY, &headers, post.secure, "setup", "Set up", |t| {
        setup_form(t, f, &errors)
    }))
}

async fn record(state: &AppState, user: &UserRow, op: &str) {
    if let Ok(orgs) = state.store.user_orgs(&user.uid).await
        && let Some((org, _)) = orgs.first()
    {
        let _ = state
            .store
            .record_event(yatai_store::NewEvent {
                org_uid: &org.uid,
                actor_uid: Some(&user.uid),
                actor_name: &user.name,
                api_token_name: "",
                operation: op,
                resource_type: "user",
                resource_name: &user.name,
                status: "success",
                info: "{}",
            })
            .await;
    }
}

// ---- login -----------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct NextParam {
    #[serde(default)]
    next: String,
}

fn login_form(token: &str, login: &str, next: &str, errors: &Errors) -> Markup {
    html! {
        h1 { "Sign in to yatai" }
        form.card data-form="login" method="post" action="/login" {
            input type="hidden" name="csrf" value=(token);
            input type="hidden" name="next" value=(next);
            (field_error("form", errors))
            label for="login" { "Name or email" }
            input id="login" name="login" type="text" required value=(login) autocomplete="username" autofocus aria-describedby="login-error";
            (field_error("login", errors))
            label for="password" { "Password" }
            input id="password" name="password" type="password" required autocomplete="current-password" aria-describedby="password-error";
            (field_error("password", errors))
            button type="submit" { "Sign in" }
        }
    }
}

pub async fn login_page(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<NextParam>) -> WebResult {
    if state.store.setup_pending().await? {
        return Ok(Redirect::to("/setup").into_response());
    }
    let secure = crate::session::is_https(&state, &headers);
    Ok(pre_page(StatusCode::OK, &headers, secure, "login", "Sign in", |t| login_form(t, "", &q.next, &Vec::new())))
}

pub async fn login_submit(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
    post: PrePost,
) -> WebResult {
    let f = &post.form;
    let login = f.get("login");
    let acct_key = format!("acct:{}", login.to_lowercase());
    let addr_key = format!("addr:{}", post.client);
    let fail = |status: StatusCode, errors: Errors| {
        pre_page(status, &headers, post.secure, "login", "Sign in", |t| login_form(t, login, f.get("next"), &errors))
    };
    if let Some(wait) = web.limiter.blocked(&[(&acct_key, PER_ACCOUNT), (&addr_key, PER_ADDRESS)]) {
        let msg = format!("Too many failed sign-ins. Try again in {} s.", wait.as_secs().max(1));
        let mut resp = fail(StatusCode::TOO_MANY_REQUESTS, vec![("form".into(), msg)]);
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, wait.as_secs().max(1).into());
        return Ok(resp);
    }
    let candidates = if login.is_empty() { Vec::new() } else { state.store.find_login_candidates(login).await? };
    // An email two users share signs in neither: ask for the name instead.
    let user = if candidates.len() == 1 { candidates.into_iter().next() } else { None };
    let ok = password::verify(f.raw("password"), user.as_ref().and_then(|u| u.password_hash.as_deref())).await;
    match user.filter(|_| ok) {
        Some(user) => {
            web.limiter.succeeded(&acct_key);
            start_session(&state, &user, &headers, &post.client, post.secure, f.get("next")).await
        }
        None => {
            web.limiter.failed(&[&acct_key, &addr_key]);
            Ok(fail(StatusCode::UNAUTHORIZED, vec![("form".into(), "Wrong name, email or password.".into())]))
        }
    }
}

pub async fn logout(State(state): State<AppState>, post: Post) -> WebResult {
    state.store.delete_session(&post.session.id_hash).await?;
    let resp = Redirect::to("/login").into_response();
    Ok(with_cookie(resp, clear_cookie(SESSION_COOKIE, post.session.secure)))
}

// ---- account -------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct NoticeParam {
    #[serde(default)]
    pub notice: Option<String>,
}

fn account_body(s: &Session, orgs: &[(OrgRow, MemberRole)], notice: Option<&str>, errors: &Errors) -> Markup {
    let u = &s.caller.user;
    html! {
        h1 { "Your account" }
        (ui::notice(notice))
        dl.facts {
            dt { "Name" } dd { (u.name) }
            dt { "Email" } dd { (u.email) }
            dt { "Organization" } dd { (s.caller.org.name) }
            dt { "Role" } dd { (s.caller.role.as_str()) @if u.is_admin != 0 { " (server administrator)" } }
        }
        @if orgs.len() > 1 {
            h2 { "Organizations" }
            form.card.stack data-form="organization" method="post" action="/account/organization" {
                (ui::csrf(s))
                label for="org" { "Work in" }
                select id="org" name="org" {
                    @for (o, role) in orgs { option value=(o.name) selected[o.uid == s.caller.org.uid] { (o.name) " (" (role.as_str()) ")" } }
                }
                button type="submit" { "Switch" }
            }
        }
        h2 { "Change password" }
        form.card data-form="password" method="post" action="/account/password" {
            (ui::csrf(s))
            label for="current" { "Current password" }
            input id="current" name="current" type="password" required autocomplete="current-password";
            (field_error("current", errors))
            label for="password" { "New password" }
            input id="password" name="password" type="password" required minlength="8" autocomplete="new-password";
            (field_error("password", errors))
            button type="submit" { "Change password" }
        }
    }
}

pub async fn account_page(State(state): State<AppState>, s: Session, Query(q): Query<NoticeParam>) -> WebResult {
    let orgs = state.store.user_orgs(&s.caller.user.uid).await?;
    Ok(ui::page(&s, "account", "Account", account_body(&s, &orgs, q.notice.as_deref(), &Vec::new())))
}

/// Moves the session to another organization the user belongs to.
pub async fn switch_org(State(state): State<AppState>, post: Post) -> WebResult {
    let s = &post.session;
    let orgs = state.store.user_orgs(&s.caller.user.uid).await?;
    let Some((org, _)) = orgs.iter().find(|(o, _)| o.name == post.form.get("org")) else {
        return Err(WebError::not_found("You are not a member of that organization."));
    };
    state.store.set_session_org(&s.id_hash, &org.uid).await?;
    Ok(ui::back("/", &format!("Now working in {}.", org.name)))
}

pub async fn change_password(State(state): State<AppState>, post: Post) -> WebResult {
    let (s, f) = (&post.session, &post.form);
    let mut errors = Errors::new();
    if !password::verify(f.raw("current"), s.caller.user.password_hash.as_deref()).await {
        err(&mut errors, "current", "This is not your current password.");
    }
    if let Some(m) = password::check_new(f.raw("password")) {
        err(&mut errors, "password", m);
    }
    if !errors.is_empty() {
        let orgs = state.store.user_orgs(&s.caller.user.uid).await?;
        let mut resp = ui::page(s, "account", "Account", account_body(s, &orgs, None, &errors));
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        return Ok(resp);
    }
    let hash =
        password::hash(f.raw("password")).await.map_err(|e| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    state.store.set_password(&s.caller.user.uid, &hash).await?;
    let others = state.store.delete_user_sessions(&s.caller.user.uid, Some(&s.id_hash)).await?;
    Ok(ui::back(
        "/account",
        &format!("Password changed. {others} other session{} signed out.", if others == 1 { " was" } else { "s were" }),
    ))
}
