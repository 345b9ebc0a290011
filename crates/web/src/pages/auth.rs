//! First-run setup, sign-in, sign-out and the account page.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use yatai_app::AppState;
use yatai_app::auth::hash_token;
use yatai_core::Timestamp;
use yatai_store::{InvitationRow, MemberRole, NewSession, OrgRow, UserRow};

use crate::Web;
use crate::limiter::{PER_ACCOUNT, PER_ACCOUNT_ADDRESS, PER_ADDRESS};
use crate::password;
use crate::session::{
    PRE_COOKIE, Post, PrePost, SESSION_COOKIE, SESSION_TTL, Session, clear_cookie, hash_secret, new_secret, pre_token,
    safe_next, set_cookie, with_cookie,
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

/// Signs a user in: a new session in their first organization.
pub(crate) async fn start_session(
    state: &AppState,
    user: &UserRow,
    headers: &HeaderMap,
    client: &str,
    secure: bool,
    to: &str,
    prefer_org: Option<&str>,
) -> WebResult {
    let orgs = state.store.user_orgs(&user.uid).await?;
    let preferred = orgs.iter().find(|(o, _)| Some(o.uid.as_str()) == prefer_org);
    let Some((org, _)) = preferred.or(orgs.first()) else {
        return Err(WebError::forbidden(format!(
            "{} is not a member of any organization; ask an administrator to invite you.",
            user.name
        )));
    };
    // Sign-ins are rare: a good moment to forget sessions that expired.
    if let Err(e) = state.store.purge_expired_sessions(Timestamp::now()).await {
        tracing::warn!(error = %e, "could not purge expired sessions");
    }
    let secret = new_secret();
    let expires = Timestamp::now().after(SESSION_TTL);
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
    let resp = Redirect::to(&safe_next(to)).into_response();
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
    if let Some(wait) = web.limiter.blocked(&[(&addr_key, PER_ACCOUNT_ADDRESS)]) {
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
                return start_session(&state, &user, &headers, &post.client, post.secure, "/", None).await;
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
    let next = safe_next(&q.next);
    Ok(pre_page(StatusCode::OK, &headers, secure, "login", "Sign in", |t| login_form(t, "", &next, &Vec::new())))
}

/// The key sign-in failures are counted under: the user a name or email
/// address means, so that both count together; a login that means no user
/// (or an email two users share) is keyed by what was typed, the same way
/// for every such login, so limits tell nothing about who exists.
fn account_key(candidates: &[UserRow], login: &str) -> String {
    match candidates {
        [user] => format!("user:{}", user.uid),
        _ => format!("login:{}", login.to_lowercase()),
    }
}

/// Why a sign-in was refused: the message for the form, and how long to
/// wait when it was the rate limit.
pub(crate) struct Refused {
    pub message: String,
    pub wait: Option<std::time::Duration>,
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        if self.wait.is_some() { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::UNAUTHORIZED }
    }
    /// Sets `Retry-After` on a response showing this refusal.
    pub fn retry_after(&self, mut resp: Response) -> Response {
        if let Some(w) = self.wait {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, w.as_secs().max(1).into());
        }
        resp
    }
}

/// Checks a name (or email) and password, within the sign-in limits (see
/// [`crate::limiter`]): failures count per (account, address), per address
/// and per account.
pub(crate) async fn authenticate(
    state: &AppState,
    web: &Web,
    client: &str,
    login: &str,
    password: &str,
) -> WebResult<Result<UserRow, Refused>> {
    let candidates = if login.is_empty() { Vec::new() } else { state.store.find_login_candidates(login).await? };
    let account = account_key(&candidates, login);
    let pair_key = format!("pair:{account}\0{client}");
    let acct_key = format!("acct:{account}");
    let addr_key = format!("addr:{client}");
    let mut limits = vec![(pair_key.as_str(), PER_ACCOUNT_ADDRESS), (addr_key.as_str(), PER_ADDRESS)];
    // The account-wide limit holds back only addresses that already failed
    // for this account: the owner's address stays open (see `limiter`).
    if web.limiter.count(&pair_key) > 0 {
        limits.push((acct_key.as_str(), PER_ACCOUNT));
    }
    if let Some(wait) = web.limiter.blocked(&limits) {
        let message = format!("Too many failed sign-ins. Try again in {} s.", wait.as_secs().max(1));
        return Ok(Err(Refused { message, wait: Some(wait) }));
    }
    // An email two users share signs in neither: ask for the name instead.
    let user = if candidates.len() == 1 { candidates.into_iter().next() } else { None };
    let ok = password::verify(password, user.as_ref().and_then(|u| u.password_hash.as_deref())).await;
    match user.filter(|_| ok) {
        Some(user) => {
            web.limiter.succeeded(&pair_key);
            Ok(Ok(user))
        }
        None => {
            web.limiter.failed(&[&pair_key, &addr_key, &acct_key]);
            Ok(Err(Refused { message: "Wrong name, email or password.".into(), wait: None }))
        }
    }
}

pub async fn login_submit(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
    post: PrePost,
) -> WebResult {
    let f = &post.form;
    let login = f.get("login");
    let next = safe_next(f.get("next"));
    match authenticate(&state, &web, &post.client, login, f.raw("password")).await? {
        Ok(user) => start_session(&state, &user, &headers, &post.client, post.secure, &next, None).await,
        Err(refused) => {
            let errors = vec![("form".to_owned(), refused.message.clone())];
            let resp = pre_page(refused.status(), &headers, post.secure, "login", "Sign in", |t| {
                login_form(t, login, &next, &errors)
            });
            Ok(refused.retry_after(resp))
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

fn account_body(
    s: &Session,
    orgs: &[(OrgRow, MemberRole)],
    invitations: &[InvitationRow],
    notice: Option<&str>,
    errors: &Errors,
) -> Markup {
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
        @if !invitations.is_empty() {
            h2 { "Invitations" }
            div.table-wrap {
                table {
                    thead { tr { th { "Organization" } th { "Role" } th.hide-narrow { "From" } th { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for i in invitations {
                            tr data-testid="invitation" data-org=(i.org_name) {
                                td { (i.org_name) }
                                td { (i.role) }
                                td.hide-narrow { (i.inviter_name.as_deref().unwrap_or("—")) }
                                td.row-actions {
                                    form method="post" action=(format!("/account/invitations/{}/accept", i.uid)) data-form="invitation-accept" {
                                        (ui::csrf(s))
                                        button.small type="submit" data-action="accept" aria-label=(format!("Join {}", i.org_name)) { "Accept" }
                                    }
                                    " "
                                    form method="post" action=(format!("/account/invitations/{}/decline", i.uid)) data-form="invitation-decline" {
                                        (ui::csrf(s))
                                        button.small type="submit" data-action="decline" aria-label=(format!("Decline {}", i.org_name)) { "Decline" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
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
    let invitations = super::invitations::for_user(&state, &s).await?;
    Ok(ui::page(&s, "account", "Account", account_body(&s, &orgs, &invitations, q.notice.as_deref(), &Vec::new())))
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
        let invitations = super::invitations::for_user(&state, s).await?;
        let mut resp = ui::page(s, "account", "Account", account_body(s, &orgs, &invitations, None, &errors));
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
