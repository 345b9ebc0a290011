//! Members of the organization and their roles: add (a new user with a
//! password, or an existing one), change role, remove — never the last admin.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use maud::html;
use serde_json::json;
use yatai_api::AppState;
use yatai_api::auth::Permission;
use yatai_api::routes::artifacts::record;
use yatai_store::MemberRole;

use super::auth::{NoticeParam, valid_email, valid_user_name};
use crate::password;
use crate::session::{Post, Session};
use crate::ui::{self, WebError, WebResult, field_error};

type Errors = Vec<(String, String)>;

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
