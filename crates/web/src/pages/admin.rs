//! Administration: the events feed and the organization's settings.
//! Tokens, members and clusters have modules of their own.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use serde_json::json;
use yatai_app::AppState;
use yatai_app::auth::Permission;
use yatai_app::registry::record;
use yatai_store::EventFilter;

use super::auth::NoticeParam;
use super::deployments::short_info;
use super::registry::endpoint;
use crate::session::{Post, Session};
use crate::ui::{self, WebResult};

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
    let types = [
        "model",
        "model_repository",
        "bento",
        "bento_repository",
        "deployment",
        "api_token",
        "member",
        "user",
        "organization",
        "cluster",
    ];
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

// ---- settings -------------------------------------------------------------------

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
