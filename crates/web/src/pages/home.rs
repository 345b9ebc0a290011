//! The home page: deployments at a glance and the latest events.

use axum::extract::State;
use axum::http::HeaderMap;
use maud::html;
use yatai_app::AppState;
use yatai_core::Kind;
use yatai_store::{DeploymentFilter, EventFilter};

use super::deployments::short_info;
use super::registry::{endpoint, version_href};
use crate::session::Session;
use crate::ui::{self, WebResult};

pub async fn home(State(state): State<AppState>, s: Session, headers: HeaderMap) -> WebResult {
    let org = s.org_uid();
    let counts = state.store.deployment_status_counts(org).await?;
    let repos = state.store.repository_counts(org).await?;
    let filter = DeploymentFilter { count: 10, ..Default::default() };
    let (deployments, total) = state.store.list_deployments(org, &filter).await?;
    let uids: Vec<&str> = deployments.iter().map(|d| d.uid.as_str()).collect();
    let bentos = state.store.active_bentos(&uids).await?;
    let events = state.store.event_page(org, &EventFilter::default(), 15).await?;
    let repo_count = |k: &str| repos.iter().find(|(kind, _)| kind == k).map(|(_, n)| *n).unwrap_or(0);
    let empty = total == 0 && repo_count("model") == 0 && repo_count("bento") == 0;
    let body = html! {
        h1 { "Home" }
        @if empty {
            section.card aria-labelledby="start" {
                h2 id="start" { "Get started" }
                ol {
                    li { a href="/settings/tokens" { "Create an API token" } ", then log the bentoml CLI in:" (ui::copyable("cmd-login", &format!("bentoml cloud login --endpoint {} --api-token TOKEN", endpoint(&state, &headers)))) }
                    li { "Push a bento you built with " code { "bentoml build" } ":" (ui::copyable("cmd-push", "bentoml push iris_classifier:latest")) }
                    li { a href="/deployments/new" { "Deploy it" } " and watch it start here." }
                }
            }
        }
        h2 { "Deployments" }
        ul.counts aria-label="Deployments by status" {
            li { strong { (total) } a href="/deployments" { "total" } }
            @for (status, n) in &counts {
                li data-status=(status) { strong { (n) } a href=(format!("/deployments?status={status}")) { (status) } }
            }
            li { strong { (repo_count("bento")) } a href="/bentos" { "bento repositories" } }
            li { strong { (repo_count("model")) } a href="/models" { "model repositories" } }
        }
        div.grid {
            section aria-labelledby="recent-deployments" {
                h2 id="recent-deployments" { "Recent deployments" }
                @if deployments.is_empty() {
                    div.empty { p { "Nothing deployed yet. " a href="/deployments/new" { "Create a deployment" } } }
                } @else {
                    table {
                        thead { tr { th { "Name" } th { "Status" } th { "Bento" } } }
                        tbody {
                            @for d in &deployments {
                                tr data-testid="row" data-name=(d.name) {
                                    td { a href=(format!("/deployments/{}", ui::enc(&d.name))) { (d.name) } }
                                    td { (ui::status_badge(&d.status)) }
                                    td { @if let Some((_, r, v)) = bentos.iter().find(|(u, _, _)| *u == d.uid) { a href=(version_href(Kind::Bento, r, v)) { (r) ":" (v) } } }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="latest-events" {
                h2 id="latest-events" { "Latest events" }
                @if events.is_empty() { div.empty { p { "No activity yet." } } }
                @else {
                    ul data-testid="events" {
                        @for e in events.iter().take(15) {
                            li { (ui::time(e.created_at)) " · " @if !e.actor_name.is_empty() { (e.actor_name) " " } strong { (e.operation) } " " (e.resource_type) " " code { (e.resource_name) } " " span.muted { (short_info(&e.info)) } }
                        }
                    }
                    p { a href="/events" { "All events" } }
                }
            }
        }
    };
    Ok(ui::page(&s, "home", "Home", body))
}
