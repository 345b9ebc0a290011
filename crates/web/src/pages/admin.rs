//! Administration: API tokens, members, the events feed, clusters and the
//! organization's settings.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use serde_json::json;
use yatai_api::AppState;
use yatai_api::auth::{KNOWN_SCOPES, Permission, generate_token};
use yatai_api::routes::artifacts::record;
use yatai_core::Timestamp;
use yatai_store::{EventFilter, MemberRole, NewToken, TokenRow};

use super::auth::{NoticeParam, valid_email, valid_user_name};
use super::deployments::short_info;
use super::registry::endpoint;
use crate::password;
use crate::session::{Post, Session};
use crate::ui::{self, WebError, WebResult, field_error};

type Errors = Vec<(String, String)>;

const SCOPE_TEXT: &[(&str, &str)] = &[
    ("api", "Everything your role allows (what the bentoml CLI needs)"),
    ("read_organization", "Read models and bentos"),
    ("write_organization", "Push and delete models and bentos"),
    ("read_cluster", "Read deployments"),
    ("write_cluster", "Create and change deployments"),
];

// ---- tokens ---------------------------------------------------------------------

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
    let checked: Vec<&str> = form.map(|f| f.all("scopes")).unwrap_or_else(|| vec!["api"]);
    let body = html! {
        h1 { "API tokens" }
        p { "Tokens let the bentoml CLI and scripts act as you. Only a token's hash is stored: its value is shown once, when it is created." }
        (ui::notice(notice))
        @if let Some(c) = &created {
            section.card.notice aria-labelledby="new-token-title" {
                h2 id="new-token-title" { "Token " (c.name) " created" }
                p { strong { "Copy it now: it will not be shown again." } }
                div.copy { pre id="new-token" data-testid="new-token" { code { (c.secret) } } button.small type="button" data-copy="new-token" { "Copy" } }
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
                        input id=(format!("scope-{scope}")) type="checkbox" name="scopes" value=(scope) checked[checked.contains(scope)];
                        code { (scope) } " — " (text)
                    }
                    br;
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
    let name = f.get("name");
    if name.is_empty() || name.len() > 128 {
        errors.push(("name".into(), "Give the token a name of 1 to 128 characters.".into()));
    }
    let mut scopes: Vec<String> = f.all("scopes").iter().map(|s| s.to_string()).collect();
    if scopes.is_empty() {
        scopes.push("api".into());
    }
    if let Some(bad) = scopes.iter().find(|s| !KNOWN_SCOPES.contains(&s.as_str())) {
        errors.push(("scopes".into(), format!("Unknown scope {bad:?}.")));
    }
    let expires_at = match f.get("expires_in_days") {
        "" => None,
        d => match d.parse::<i64>() {
            Ok(n) if (1..=3650).contains(&n) => Some(Timestamp(Timestamp::now().0 + n * 86_400_000_000)),
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
        let secret = generate_token();
        let created = state
            .store
            .create_token(NewToken {
                org_uid: s.org_uid(),
                user_uid: &s.caller.user.uid,
                name,
                description: "created in the dashboard",
                token_hash: &secret.hash,
                token_hint: &secret.hint,
                scopes: &scopes,
                expires_at,
            })
            .await;
        match created {
            Ok(_) => {
                record(&state, &s.caller, "created", "api_token", name, json!({"scopes": scopes})).await;
                let shown = NewTokenShown { secret: secret.secret, name: name.to_owned() };
                return tokens_page(&state, s, &headers, None, Some(shown), &Vec::new(), None).await;
            }
            Err(yatai_store::StoreError::Conflict(m)) => errors.push(("name".into(), m)),
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
    state.store.delete_token(s.org_uid(), &t.uid).await?;
    state.auth.invalidate();
    record(&state, &s.caller, "revoked", "api_token", &t.name, json!({"owner": t.user_name})).await;
    Ok(ui::back("/settings/tokens", &format!("Revoked token {}.", t.name)))
}

// ---- members --------------------------------------------------------------------

async fn members_page(
    state: &AppState,
    s: &Session,
    notice: Option<&str>,
    errors: &Errors,
    form: Option<&crate::session::FormData>,
) -> WebResult {
    let members = state.store.list_members(s.org_uid()).await?;
    let admin = s.can(Permission::Admin);
    let roles = ["guest", "developer", "admin"];
    let v = |k: &str| form.map(|f| f.get(k).to_owned()).unwrap_or_default();
    let body = html! {
        h1 { "Members of " (s.caller.org.name) }
        (ui::notice(notice))
        p.hint { "Guests read; developers also push and deploy; admins also manage members and the organization." }
        div.table-wrap {
            table {
                thead { tr { th { "Name" } th.hide-narrow { "Email" } th { "Role" } th.hide-narrow { "Tokens" } th.hide-narrow { "Joined" } @if admin { th { span.visually-hidden { "Actions" } } } } }
                tbody {
                    @for m in &members {
                        tr data-testid="row" data-name=(m.name) {
                            td { (m.name) @if m.uid == s.caller.user.uid { " " span.muted { "(you)" } } @if m.has_password == 0 { " " span.badge { "no password" } } }
                            td.hide-narrow { (m.email) }
                            td {
                                @if admin {
                                    form.row-actions method="post" action=(format!("/settings/members/{}/role", m.uid)) data-form="member-role" {
                                        (ui::csrf(s))
                                        label.visually-hidden for=(format!("role-{}", m.uid)) { "Role of " (m.name) }
                                        select id=(format!("role-{}", m.uid)) name="role" {
                                            @for r in roles { option value=(r) selected[m.role == r] { (r) } }
                                        }
                                        " " button.small type="submit" { "Change" }
                                    }
                                } @else { (m.role) }
                            }
                            td.hide-narrow { (m.token_count) }
                            td.hide-narrow { (ui::time(m.joined_at)) }
                            @if admin {
                                td.row-actions {
                                    form method="post" action=(format!("/settings/members/{}/remove", m.uid)) data-form="member-remove" {
                                        (ui::csrf(s))
                                        button.small.danger type="submit" data-action="remove" aria-label=(format!("Remove {}", m.name)) { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if admin {
            h2 { "Add a member" }
            form.card.stack data-form="member-add" method="post" action="/settings/members" {
                (ui::csrf(s))
                p.hint { "Creates the user with a password they can change, or adds an existing user (leave the password empty)." }
                label for="m-name" { "Name" }
                input id="m-name" name="name" type="text" required value=(v("name")) autocomplete="off";
                (field_error("name", errors))
                label for="m-email" { "Email" }
                input id="m-email" name="email" type="email" value=(v("email")) autocomplete="off";
                (field_error("email", errors))
                label for="m-password" { "Password" }
                input id="m-password" name="password" type="password" autocomplete="new-password";
                (field_error("password", errors))
                label for="m-role" { "Role" }
                select id="m-role" name="role" {
                    @for r in roles { option value=(r) selected[v("role") == r || (v("role").is_empty() && r == "developer")] { (r) } }
                }
                (field_error("role", errors))
                button type="submit" { "Add member" }
            }
        }
    };
    let mut resp = ui::page(s, "members", "Members", body);
    if !errors.is_empty() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(resp)
}

pub async fn members(State(state): State<AppState>, s: Session, Query(q): Query<NoticeParam>) -> WebResult {
    members_page(&state, &s, q.notice.as_deref(), &Vec::new(), None).await
}

pub async fn add_member(State(state): State<AppState>, post: Post) -> WebResult {
    let (s, f) = (&post.session, &post.form);
    ui::require(s, Permission::Admin)?;
    let mut errors = Errors::new();
    let (name, email, pw) = (f.get("name"), f.get("email"), f.raw("password"));
    let role = MemberRole::parse(f.get("role"));
    if role.is_none() {
        errors.push(("role".into(), "Choose guest, developer or admin.".into()));
    }
    if !valid_user_name(name) {
        errors.push(("name".into(), "Use 1 to 64 letters, digits, '_', '-' or '.'.".into()));
    }
    let existing = state.store.get_user_by_name(name).await?;
    if existing.is_none() {
        if !valid_email(email) {
            errors.push(("email".into(), "Enter an email address for the new user.".into()));
        } else if state.store.email_taken(email, None).await? {
            errors.push(("email".into(), "Another user has this email address.".into()));
        }
        if let Some(m) = password::check_new(pw) {
            errors.push(("password".into(), m));
        }
    } else if !pw.is_empty() {
        errors.push(("password".into(), "This user exists: leave the password empty to add them as they are.".into()));
    }
    if !errors.is_empty() {
        return members_page(&state, s, None, &errors, Some(f)).await;
    }
    let user = match existing {
        Some(u) => u,
        None => {
            let hash = password::hash(pw).await.map_err(|e| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
            state.store.create_user(name, email, Some(&hash), false).await?
        }
    };
    let role = role.expect("checked");
    state.store.set_member(s.org_uid(), &user.uid, role).await?;
    state.auth.invalidate();
    record(&state, &s.caller, "added", "member", &user.name, json!({"role": role.as_str()})).await;
    Ok(ui::back("/settings/members", &format!("{} is now a member ({}).", user.name, role.as_str())))
}

async fn member_of_org(state: &AppState, s: &Session, uid: &str) -> WebResult<yatai_store::MemberRow> {
    let members = state.store.list_members(s.org_uid()).await?;
    members.into_iter().find(|m| m.uid == uid).ok_or_else(|| WebError::not_found("There is no such member."))
}

pub async fn change_role(State(state): State<AppState>, Path(uid): Path<String>, post: Post) -> WebResult {
    let s = &post.session;
    ui::require(s, Permission::Admin)?;
    let m = member_of_org(&state, s, &uid).await?;
    let Some(role) = MemberRole::parse(post.form.get("role")) else {
        return Ok(ui::back("/settings/members", "Choose guest, developer or admin."));
    };
    if m.role() == MemberRole::Admin
        && role != MemberRole::Admin
        && state.store.count_org_admins(s.org_uid()).await? <= 1
    {
        return Ok(ui::back(
            "/settings/members",
            &format!("{} is the last admin of the organization: make someone else admin first.", m.name),
        ));
    }
    state.store.set_member(s.org_uid(), &m.uid, role).await?;
    state.auth.invalidate();
    record(&state, &s.caller, "changed role", "member", &m.name, json!({"role": role.as_str()})).await;
    Ok(ui::back("/settings/members", &format!("{} is now {}.", m.name, role.as_str())))
}

pub async fn remove_member(State(state): State<AppState>, Path(uid): Path<String>, post: Post) -> WebResult {
    let s = &post.session;
    ui::require(s, Permission::Admin)?;
    let m = member_of_org(&state, s, &uid).await?;
    if m.role() == MemberRole::Admin && state.store.count_org_admins(s.org_uid()).await? <= 1 {
        return Ok(ui::back(
            "/settings/members",
            &format!("{} is the last admin of the organization and cannot be removed.", m.name),
        ));
    }
    state.store.remove_member(s.org_uid(), &m.uid).await?;
    state.auth.invalidate();
    record(&state, &s.caller, "removed", "member", &m.name, json!({})).await;
    Ok(ui::back("/settings/members", &format!("Removed {} and their tokens.", m.name)))
}

// ---- events ---------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct EventParams {
    #[serde(default)]
    operation: String,
    #[serde(default)]
    resource_type: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    before: Option<i64>,
}

pub async fn events(State(state): State<AppState>, s: Session, Query(p): Query<EventParams>) -> WebResult {
    let some = |v: &str| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
    let filter = EventFilter {
        operation: some(&p.operation),
        resource_type: some(&p.resource_type),
        actor_name: some(&p.actor),
        before_seq: p.before,
        ..Default::default()
    };
    let mut rows = state.store.event_page(s.org_uid(), &filter, 50).await?;
    let more = rows.len() > 50;
    rows.truncate(50);
    let operations = state.store.event_operations(s.org_uid()).await?;
    let types = ["model", "model_repository", "bento", "bento_repository", "deployment", "api_token", "member", "user"];
    let link = |before: Option<i64>| {
        let b = before.map(|b| b.to_string()).unwrap_or_default();
        format!(
            "/events{}",
            ui::qs(&[
                ("operation", &p.operation),
                ("resource_type", &p.resource_type),
                ("actor", &p.actor),
                ("before", &b)
            ])
        )
    };
    let body = html! {
        h1 { "Events" }
        form.toolbar method="get" role="search" {
            div {
                label for="operation" { "Operation" }
                select id="operation" name="operation" {
                    option value="" { "Any" }
                    @for o in &operations { option value=(o) selected[*o == p.operation] { (o) } }
                }
            }
            div {
                label for="resource_type" { "Resource" }
                select id="resource_type" name="resource_type" {
                    option value="" { "Any" }
                    @for t in types { option value=(t) selected[t == p.resource_type] { (t) } }
                }
            }
            div { label for="actor" { "User" } input id="actor" name="actor" type="search" value=(p.actor); }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            div.empty { p { "No events" @if filter.operation.is_some() || filter.resource_type.is_some() || filter.actor_name.is_some() { " match these filters" } " yet. Pushes, deployments and administration show up here." } }
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th { "When" } th { "User" } th { "Operation" } th { "Resource" } th.hide-narrow { "Details" } } }
                    tbody {
                        @for e in &rows {
                            tr data-testid="event" {
                                td { (ui::time(e.created_at)) }
                                td { @if e.actor_name.is_empty() { span.muted { "yatai" } } @else { (e.actor_name) } @if !e.api_token_name.is_empty() { span.muted { " (token " (e.api_token_name) ")" } } }
                                td { (e.operation) @if e.status != "success" { " " span.badge.s-failed { (e.status) } } }
                                td { span.muted { (e.resource_type) " " } (e.resource_name) }
                                td.hide-narrow { span.muted { (short_info(&e.info)) } }
                            }
                        }
                    }
                }
            }
            (ui::pager(p.before.is_some().then(|| link(None)), if more { rows.last().map(|e| link(Some(e.seq))) } else { None }))
        }
    };
    Ok(ui::page(&s, "events", "Events", body))
}

// ---- clusters and settings -------------------------------------------------------

pub async fn clusters(State(state): State<AppState>, s: Session) -> WebResult {
    let clusters = state.store.list_clusters(s.org_uid()).await?;
    let counts = state.store.cluster_deployment_counts(s.org_uid()).await?;
    let body = html! {
        h1 { "Clusters" }
        p { "Where deployments run. " code { "local" } " is this machine: replicas are processes supervised by yatai." }
        @if clusters.is_empty() {
            div.empty { p { "No cluster has been used yet. The " code { "local" } " cluster appears with the first deployment." } a.button href="/deployments/new" { "Create a deployment" } }
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th { "Name" } th { "Kind" } th.num { "Deployments" } th.hide-narrow { "Description" } th.hide-narrow { "Created" } } }
                    tbody {
                        @for c in &clusters {
                            tr data-testid="row" data-name=(c.name) {
                                td { a href=(format!("/deployments?cluster={}", ui::enc(&c.name))) { (c.name) } }
                                td { (c.kind) }
                                td.num { (counts.iter().find(|(u, _)| *u == c.uid).map(|(_, n)| *n).unwrap_or(0)) }
                                td.hide-narrow { (c.description) }
                                td.hide-narrow { (ui::time(c.created_at)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(ui::page(&s, "clusters", "Clusters", body))
}

pub async fn settings(
    State(state): State<AppState>,
    s: Session,
    headers: HeaderMap,
    Query(q): Query<NoticeParam>,
) -> WebResult {
    let org = state.store.get_org(s.org_uid()).await?.unwrap_or_else(|| s.caller.org.clone());
    let admin = s.can(Permission::Admin);
    let c = &state.config;
    let body = html! {
        h1 { "Settings" }
        (ui::notice(q.notice.as_deref()))
        h2 { "Organization" }
        dl.facts {
            dt { "Name" } dd { (org.name) }
            dt { "Created" } dd { (ui::time(org.created_at)) }
        }
        form.card.stack data-form="settings" method="post" action="/settings" {
            (ui::csrf(&s))
            label for="description" { "Description" }
            textarea id="description" name="description" rows="3" disabled[!admin] { (org.description) }
            @if admin { button type="submit" { "Save" } } @else { p.hint { "Only admins can change the organization." } }
        }
        h2 { "This server" }
        dl.facts {
            dt { "Endpoint" } dd { code { (endpoint(&state, &headers)) } }
            dt { "Version" } dd { (env!("CARGO_PKG_VERSION")) }
            dt { "Artifacts" } dd { (state.blobs.describe()) }
            dt { "Transfer" } dd { (format!("{:?}", c.transmission).to_lowercase()) }
            dt { "Deployment URLs" } dd { @match &c.deployment_domain { Some(d) => { "NAME-NAMESPACE." (d) }, None => "a port per deployment" } }
            dt { "Image builds" } dd { @if c.image_builds.is_some() { "on" } @else { "off" } }
        }
        p.hint { "Server settings are flags of " code { "yatai serve" } " (see its --help and the README)." }
    };
    Ok(ui::page(&s, "settings", "Settings", body))
}

pub async fn save_settings(State(state): State<AppState>, post: Post) -> WebResult<Response> {
    let s = &post.session;
    ui::require(s, Permission::Admin)?;
    let d = post.form.get("description");
    if d.len() > 2000 {
        return Ok(ui::back("/settings", "The description is longer than 2000 characters."));
    }
    state.store.update_org_description(s.org_uid(), d).await?;
    record(&state, &s.caller, "updated", "organization", &s.caller.org.name, json!({})).await;
    Ok(ui::back("/settings", "Saved.").into_response())
}
