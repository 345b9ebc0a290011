//! Accepting an invitation: with the link (signed in, or by creating an
//! account), or from the account page, where a user finds the invitations
//! addressed to their name or email. Nobody joins an organization without
//! doing one of these.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use yatai_app::AppState;
use yatai_core::Timestamp;
use yatai_store::{Accepted, InvitationRow, StoreError, UserRow};

use super::auth::{authenticate, start_session, valid_email, valid_user_name};
use crate::Web;
use crate::limiter::PER_ADDRESS;
use crate::password;
use crate::session::{FormData, PRE_COOKIE, Post, PrePost, Session, hash_secret, pre_token, set_cookie, with_cookie};
use crate::ui::{self, WebError, WebResult, field_error};

type Errors = Vec<(String, String)>;

const GONE: &str = "This invitation was used, revoked or has expired. Ask an administrator of the organization \
                    for a new one.";

fn href(token: &str) -> String {
    format!("/invitations/{}", ui::enc(token))
}

async fn find(state: &AppState, token: &str) -> WebResult<InvitationRow> {
    state.store.find_invitation(&hash_secret(token), Timestamp::now()).await?.ok_or_else(|| WebError::not_found(GONE))
}

fn what(inv: &InvitationRow) -> Markup {
    html! {
        p data-testid="invitation" {
            @if let Some(by) = &inv.inviter_name { (by) " invites you" } @else { "You are invited" }
            " to join " strong { (inv.org_name) } " as " strong { (inv.role) } "."
        }
    }
}

fn no_store(mut resp: Response) -> Response {
    // The page's URL holds the invitation's secret.
    resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    resp
}

fn signup_form(token: &str, csrf: &str, inv: &InvitationRow, f: Option<&FormData>, errors: &Errors) -> Markup {
    let email = f
        .map(|f| f.get("email").to_owned())
        .unwrap_or_else(|| if inv.invitee.contains('@') { inv.invitee.clone() } else { String::new() });
    let name = f.map(|f| f.get("name").to_owned()).unwrap_or_default();
    html! {
        h1 { "Join " (inv.org_name) }
        (what(inv))
        h2 { "Have an account? Sign in to accept" }
        form.card data-form="invitation-signin" method="post" action=(format!("{}/signin", href(token))) {
            input type="hidden" name="csrf" value=(csrf);
            (field_error("signin", errors))
            label for="login" { "Name or email" }
            input id="login" name="login" type="text" required value=(f.map(|f| f.get("login")).unwrap_or("")) autocomplete="username" aria-describedby="signin-error";
            label for="current" { "Password" }
            input id="current" name="current" type="password" required autocomplete="current-password";
            button type="submit" { "Sign in and accept" }
        }
        h2 { "New to yatai? Create your account" }
        form.card data-form="invitation-signup" method="post" action=(format!("{}/signup", href(token))) {
            input type="hidden" name="csrf" value=(csrf);
            (field_error("form", errors))
            label for="name" { "Name" }
            input id="name" name="name" type="text" required value=(name) autocomplete="username" aria-describedby="name-error";
            (field_error("name", errors))
            label for="email" { "Email" }
            input id="email" name="email" type="email" required value=(email) autocomplete="email" aria-describedby="email-error";
            (field_error("email", errors))
            label for="password" { "Password" }
            input id="password" name="password" type="password" required minlength="8" autocomplete="new-password" aria-describedby="password-error";
            (field_error("password", errors))
            button type="submit" { "Create account and join" }
        }
    }
}

fn signup_page(status: StatusCode, headers: &HeaderMap, secure: bool, body: impl FnOnce(&str) -> Markup) -> Response {
    let (csrf, fresh) = pre_token(headers);
    let resp = (status, Html(ui::bare("invitation", "Invitation", body(&csrf)).into_string())).into_response();
    let resp = no_store(resp);
    if fresh { with_cookie(resp, set_cookie(PRE_COOKIE, &csrf, None, secure)) } else { resp }
}

/// `GET /invitations/{token}`: accept (signed in) or create an account.
pub async fn page(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    session: Result<Session, Response>,
) -> WebResult {
    let inv = find(&state, &token).await?;
    let Ok(s) = session else {
        let secure = crate::session::is_https(&state, &headers);
        return Ok(signup_page(StatusCode::OK, &headers, secure, |csrf| {
            signup_form(&token, csrf, &inv, None, &Vec::new())
        }));
    };
    let body = html! {
        h1 { "Join " (inv.org_name) }
        (what(&inv))
        p.hint { "You are signed in as " strong { (s.caller.user.name) } ". Not you? Sign out first, then open the link again." }
        form.card.stack data-form="invitation-accept" method="post" action=(href(&token)) {
            (ui::csrf(&s))
            button type="submit" { "Accept" }
        }
        form.stack data-form="invitation-decline" method="post" action=(format!("{}/decline", href(&token))) {
            (ui::csrf(&s))
            button.link type="submit" { "Decline" }
        }
    };
    Ok(no_store(ui::page(&s, "invitation", "Invitation", body)))
}

/// Joins the signed-in user to the invitation's organization and works in
/// it from now on.
async fn join(state: &AppState, s: &Session, inv: &InvitationRow) -> WebResult {
    let user = &s.caller.user;
    let outcome = state.store.accept_invitation(inv, &user.uid, Timestamp::now()).await.map_err(|e| match e {
        StoreError::NotFound(_) => WebError::not_found(GONE),
        e => e.into(),
    })?;
    state.auth.invalidate();
    state.store.set_session_org(&s.id_hash, &inv.org_uid).await?;
    record(state, inv, user, "accepted invitation").await;
    let notice = match outcome {
        Accepted::Joined => format!("You joined {} as {}.", inv.org_name, inv.role),
        Accepted::AlreadyMember => format!("You were a member of {} already; your role is unchanged.", inv.org_name),
    };
    Ok(ui::back("/", &notice))
}

async fn record(state: &AppState, inv: &InvitationRow, user: &UserRow, op: &str) {
    let info = serde_json::json!({"role": inv.role}).to_string();
    let r = state
        .store
        .record_event(yatai_store::NewEvent {
            org_uid: &inv.org_uid,
            actor_uid: Some(&user.uid),
            actor_name: &user.name,
            api_token_name: "",
            operation: op,
            resource_type: "member",
            resource_name: &user.name,
            status: "success",
            info: &info,
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not record an event");
    }
}

/// `POST /invitations/{token}`: the signed-in user accepts.
pub async fn accept(State(state): State<AppState>, Path(token): Path<String>, post: Post) -> WebResult {
    let inv = find(&state, &token).await?;
    join(&state, &post.session, &inv).await
}

/// `POST /invitations/{token}/decline`.
pub async fn decline(State(state): State<AppState>, Path(token): Path<String>, post: Post) -> WebResult {
    let inv = find(&state, &token).await?;
    state.store.delete_invitation(&inv.org_uid, &inv.uid).await?;
    record(&state, &inv, &post.session.caller.user, "declined invitation").await;
    Ok(ui::back("/account", &format!("Declined the invitation to {}.", inv.org_name)))
}

/// `POST /invitations/{token}/signup`: a new user, made with the link.
pub async fn signup(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    post: PrePost,
) -> WebResult {
    // Wrong links cost a guess like wrong passwords do (the secret has 256
    // bits; this only keeps the log quiet).
    let addr_key = format!("addr:{}", post.client);
    if let Some(wait) = web.limiter.blocked(&[(&addr_key, PER_ADDRESS)]) {
        return Err(WebError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many failed attempts; try again in {} s.", wait.as_secs().max(1)),
        ));
    }
    let inv = match find(&state, &token).await {
        Ok(inv) => inv,
        Err(e) => {
            web.limiter.failed(&[&addr_key]);
            return Err(e);
        }
    };
    let f = &post.form;
    let (name, email) = (f.get("name"), f.get("email"));
    let mut errors = Errors::new();
    if !valid_user_name(name) {
        errors.push(("name".into(), "Use 1 to 64 letters, digits, '_', '-' or '.'.".into()));
    }
    if !valid_email(email) {
        errors.push(("email".into(), "Enter an email address such as ada@example.com.".into()));
    } else if state.store.email_taken(email, None).await? {
        // Only someone holding a valid invitation learns this, and they need
        // it: the address already has an account, which should accept.
        errors.push((
            "email".into(),
            "An account with this email address exists: sign in to it and accept the invitation.".into(),
        ));
    }
    if let Some(m) = password::check_new(f.raw("password")) {
        errors.push(("password".into(), m));
    }
    if errors.is_empty() {
        let hash =
            password::hash(f.raw("password")).await.map_err(|e| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        match state.store.accept_invitation_as_new_user(&inv, name, email, &hash, Timestamp::now()).await {
            Ok(user) => {
                state.auth.invalidate();
                record(&state, &inv, &user, "accepted invitation").await;
                return start_session(&state, &user, &headers, &post.client, post.secure, "/", Some(&inv.org_uid))
                    .await;
            }
            Err(StoreError::Conflict(m)) => errors.push(("name".into(), m)),
            Err(StoreError::NotFound(_)) => return Err(WebError::not_found(GONE)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(signup_page(StatusCode::UNPROCESSABLE_ENTITY, &headers, post.secure, |csrf| {
        signup_form(&token, csrf, &inv, Some(f), &errors)
    }))
}

/// `POST /invitations/{token}/signin`: an existing user, not signed in
/// (perhaps a member of no organization yet, who could not sign in
/// otherwise), accepts with their name and password. Same limits as the
/// sign-in page.
pub async fn signin(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    post: PrePost,
) -> WebResult {
    let inv = find(&state, &token).await?;
    let f = &post.form;
    match authenticate(&state, &web, &post.client, f.get("login"), f.raw("current")).await? {
        Ok(user) => {
            let outcome =
                state.store.accept_invitation(&inv, &user.uid, Timestamp::now()).await.map_err(|e| match e {
                    StoreError::NotFound(_) => WebError::not_found(GONE),
                    e => e.into(),
                })?;
            state.auth.invalidate();
            record(&state, &inv, &user, "accepted invitation").await;
            let to = match outcome {
                Accepted::Joined => {
                    format!("/?notice={}", ui::enc(&format!("You joined {} as {}.", inv.org_name, inv.role)))
                }
                Accepted::AlreadyMember => "/".to_owned(),
            };
            start_session(&state, &user, &headers, &post.client, post.secure, &to, Some(&inv.org_uid)).await
        }
        Err(refused) => {
            let errors = vec![("signin".to_owned(), refused.message.clone())];
            let resp = signup_page(refused.status(), &headers, post.secure, |csrf| {
                signup_form(&token, csrf, &inv, Some(f), &errors)
            });
            Ok(refused.retry_after(resp))
        }
    }
}

/// The invitations addressed to the signed-in user (account page).
pub async fn for_user(state: &AppState, s: &Session) -> WebResult<Vec<InvitationRow>> {
    Ok(state.store.invitations_for(&s.caller.user, Timestamp::now()).await?)
}

async fn addressed(state: &AppState, s: &Session, uid: &str) -> WebResult<InvitationRow> {
    for_user(state, s).await?.into_iter().find(|i| i.uid == uid).ok_or_else(|| WebError::not_found(GONE))
}

/// `POST /account/invitations/{uid}/accept`.
pub async fn accept_listed(State(state): State<AppState>, Path(uid): Path<String>, post: Post) -> WebResult {
    let inv = addressed(&state, &post.session, &uid).await?;
    join(&state, &post.session, &inv).await
}

/// `POST /account/invitations/{uid}/decline`.
pub async fn decline_listed(State(state): State<AppState>, Path(uid): Path<String>, post: Post) -> WebResult {
    let inv = addressed(&state, &post.session, &uid).await?;
    state.store.delete_invitation(&inv.org_uid, &inv.uid).await?;
    record(&state, &inv, &post.session.caller.user, "declined invitation").await;
    Ok(ui::back("/account", &format!("Declined the invitation to {}.", inv.org_name)))
}
