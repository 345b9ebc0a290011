//! Members of the organization and their roles: invite (by name or email;
//! the person joins only by accepting), change role, remove — never the
//! last admin.
//!
//! Inviting never looks the invitee up: the answer is the same whether or
//! not such a user exists, and nothing about users outside the organization
//! (their email above all) is shown.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use maud::html;
use serde_json::json;
use yatai_app::AppState;
use yatai_app::auth::Permission;
use yatai_app::registry::record;
use yatai_core::Timestamp;
use yatai_store::{MemberRole, NewInvitation, StoreError};

use super::auth::{NoticeParam, valid_email, valid_user_name};
use super::registry::endpoint;
use crate::session::{Post, Session, hash_secret, new_secret};
use crate::ui::{self, WebError, WebResult, field_error};

type Errors = Vec<(String, String)>;

/// How long an invitation link works.
pub const INVITATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The answer to every accepted invitation form, whoever the invitee is.
pub const INVITED: &str = "Invitation created; it is shown on the pending list.";

/// A new invitation's link, shown once to the admin who made it.
struct NewLink {
    invitee: String,
    url: String,
}

async fn members_page(
    state: &AppState,
    s: &Session,
    notice: Option<&str>,
    errors: &Errors,
    form: Option<&crate::session::FormData>,
    link: Option<NewLink>,
) -> WebResult {
    let members = state.store.list_members(s.org_uid()).await?;
    let admin = s.can(Permission::Admin);
    let invitations =
        if admin { state.store.list_invitations(s.org_uid(), Timestamp::now()).await? } else { Vec::new() };
    let roles = ["guest", "developer", "admin"];
    let v = |k: &str| form.map(|f| f.get(k).to_owned()).unwrap_or_default();
    let body = html! {
        h1 { "Members of " (s.caller.org.name) }
        (ui::notice(notice))
        @if let Some(l) = &link {
            section.card.new-token {
                p { "Send this link to " strong { (l.invitee) } ". It works once, for " (INVITATION_TTL.as_secs() / 86400) " days: signed in, they accept it; new to yatai, they create their account with it. It is not shown again." }
                (ui::copyable("invite-link", &l.url))
            }
        }
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
            h2 { "Pending invitations" }
            @if invitations.is_empty() {
                p.muted data-testid="no-invitations" { "None." }
            } @else {
                div.table-wrap {
                    table {
                        thead { tr { th { "Invited" } th { "Role" } th.hide-narrow { "By" } th.hide-narrow { "Expires" } th { span.visually-hidden { "Actions" } } } }
                        tbody {
                            @for i in &invitations {
                                tr data-testid="invitation" data-invitee=(i.invitee) {
                                    td { (i.invitee) }
                                    td { (i.role) }
                                    td.hide-narrow { (i.inviter_name.as_deref().unwrap_or("—")) }
                                    td.hide-narrow { (ui::time(i.expires_at)) }
                                    td.row-actions {
                                        form method="post" action=(format!("/settings/members/invitations/{}/revoke", i.uid)) data-form="invitation-revoke" {
                                            (ui::csrf(s))
                                            button.small.danger type="submit" data-action="revoke" aria-label=(format!("Revoke the invitation of {}", i.invitee)) { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Invite a member" }
            form.card.stack data-form="member-invite" method="post" action="/settings/members" {
                (ui::csrf(s))
                p.hint { "Invite someone by their user name or email address. They join only when they accept: signed in, from their account page or the link; new to yatai, by creating their account with the link." }
                label for="m-invitee" { "Name or email" }
                input id="m-invitee" name="invitee" type="text" required value=(v("invitee")) autocomplete="off" aria-describedby="invitee-error";
                (field_error("invitee", errors))
                label for="m-role" { "Role" }
                select id="m-role" name="role" {
                    @for r in roles { option value=(r) selected[v("role") == r || (v("role").is_empty() && r == "developer")] { (r) } }
                }
                (field_error("role", errors))
                button type="submit" { "Invite" }
            }
        }
    };
    let mut resp = ui::page(s, "members", "Members", body);
    if !errors.is_empty() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    if link.is_some() {
        // The page with a new link must never be cached or replayed.
        resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    }
    Ok(resp)
}

pub async fn members(State(state): State<AppState>, s: Session, Query(q): Query<NoticeParam>) -> WebResult {
    members_page(&state, &s, q.notice.as_deref(), &Vec::new(), None, None).await
}

/// Invites someone to the organization. The invitee is not looked up among
/// users: the same answer comes whether or not the name or address exists,
/// and nobody is added until they accept.
pub async fn add_member(State(state): State<AppState>, headers: HeaderMap, post: Post) -> WebResult {
    let (s, f) = (&post.session, &post.form);
    ui::require(s, Permission::Admin)?;
    let mut errors = Errors::new();
    let invitee = f.get("invitee");
    let role = MemberRole::parse(f.get("role"));
    if role.is_none() {
        errors.push(("role".into(), "Choose guest, developer or admin.".into()));
    }
    if !(valid_user_name(invitee) || valid_email(invitee)) {
        errors.push((
            "invitee".into(),
            "Enter a user name (letters, digits, '_', '-' or '.') or an email address.".into(),
        ));
    } else {
        // Only this organization's members are compared: the admin sees
        // their names and addresses on this page already.
        let members = state.store.list_members(s.org_uid()).await?;
        if let Some(m) =
            members.iter().find(|m| m.name == invitee || (!m.email.is_empty() && m.email.eq_ignore_ascii_case(invitee)))
        {
            errors.push(("invitee".into(), format!("{} is already a member.", m.name)));
        }
    }
    if !errors.is_empty() {
        return members_page(&state, s, None, &errors, Some(f), None).await;
    }
    let role = role.expect("checked");
    let now = Timestamp::now();
    if let Err(e) = state.store.purge_expired_invitations(now).await {
        tracing::warn!(error = %e, "could not purge expired invitations");
    }
    let secret = new_secret();
    state
        .store
        .create_invitation(NewInvitation {
            org_uid: s.org_uid(),
            invitee,
            role,
            token_hash: &hash_secret(&secret),
            inviter_uid: &s.caller.user.uid,
            expires_at: Timestamp(now.0 + INVITATION_TTL.as_micros() as i64),
        })
        .await?;
    record(&state, &s.caller, "invited", "member", invitee, json!({"role": role.as_str()})).await;
    let link =
        NewLink { invitee: invitee.to_owned(), url: format!("{}/invitations/{secret}", endpoint(&state, &headers)) };
    members_page(&state, s, Some(INVITED), &Vec::new(), None, Some(link)).await
}

pub async fn revoke_invitation(State(state): State<AppState>, Path(uid): Path<String>, post: Post) -> WebResult {
    let s = &post.session;
    ui::require(s, Permission::Admin)?;
    let Some(inv) = state.store.get_invitation(s.org_uid(), &uid).await? else {
        return Err(WebError::not_found("There is no such invitation."));
    };
    state.store.delete_invitation(s.org_uid(), &inv.uid).await?;
    record(&state, &s.caller, "revoked invitation", "member", &inv.invitee, json!({})).await;
    Ok(ui::back("/settings/members", &format!("Revoked the invitation of {}.", inv.invitee)))
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
    // The check above gives the usual message; the store itself refuses a
    // demotion that raced another admin's.
    match state.store.set_member(s.org_uid(), &m.uid, role).await {
        Err(StoreError::Conflict(msg)) => {
            return Ok(ui::back("/settings/members", &format!("{} is still {}: {msg}.", m.name, m.role().as_str())));
        }
        other => other?,
    }
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
    match state.store.remove_member(s.org_uid(), &m.uid).await {
        Err(StoreError::Conflict(msg)) => {
            return Ok(ui::back("/settings/members", &format!("{} was not removed: {msg}.", m.name)));
        }
        other => other?,
    };
    state.auth.invalidate();
    record(&state, &s.caller, "removed", "member", &m.name, json!({})).await;
    Ok(ui::back("/settings/members", &format!("Removed {} and their tokens.", m.name)))
}
