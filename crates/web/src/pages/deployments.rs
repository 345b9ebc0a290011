//! Deployments: the list and the actions on one (terminate, restore,
//! rollback, delete). The form is in `deployment_form`, the detail page and
//! its live parts in `deployment_page`.

use axum::extract::{Path, Query, State};
use maud::html;
use serde::Deserialize;
use serde_json::Value;
use yatai_app::AppError;
use yatai_app::AppState;
use yatai_app::auth::Permission;
use yatai_app::deployments as svc;
use yatai_core::Kind;
use yatai_core::deploy::Phase;
use yatai_store::{ClusterRow, DeploymentFilter, DeploymentRow};

use super::registry::version_href;
use crate::session::{Post, Session};
use crate::ui::{self, WebError, WebResult};

const PAGE: i64 = 50;

pub(crate) async fn find(state: &AppState, s: &Session, name: &str) -> WebResult<DeploymentRow> {
    svc::find(state, &s.caller, None, name).await.map_err(|e| match e {
        AppError::NotFound(_) => {
            WebError::not_found(format!("There is no deployment {name:?} in {}.", s.caller.org.name))
        }
        other => other.into(),
    })
}

pub(crate) fn href(name: &str) -> String {
    format!("/deployments/{}", ui::enc(name))
}

/// The last `n` request rates of `d`, from the target that runs it.
fn request_rates(state: &AppState, clusters: &[ClusterRow], d: &DeploymentRow, n: usize) -> Vec<f64> {
    let target = clusters.iter().find(|c| c.uid == d.cluster_uid).and_then(|c| state.targets.for_cluster(c).ok());
    let samples = target.and_then(|t| t.metrics(&d.uid)).map(|m| m.samples).unwrap_or_default();
    samples[samples.len().saturating_sub(n)..].iter().map(|s| s.requests_per_second).collect()
}

// ---- list ---------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct ListParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    start: Option<i64>,
    #[serde(default)]
    notice: Option<String>,
}

pub async fn list(State(state): State<AppState>, s: Session, Query(p): Query<ListParams>) -> WebResult {
    svc::connect_clusters(&state, s.org_uid()).await?;
    let clusters = state.store.list_clusters(s.org_uid()).await?;
    let cluster_uid = if p.cluster.is_empty() {
        None
    } else {
        Some(clusters.iter().find(|c| c.name == p.cluster).map(|c| c.uid.clone()).unwrap_or_else(|| "-".into()))
    };
    let start = p.start.unwrap_or(0).max(0);
    let filter = DeploymentFilter {
        cluster_uid,
        search: Some(p.q.trim().to_owned()).filter(|q| !q.is_empty()),
        status: Some(p.status.clone()).filter(|s| s.parse::<Phase>().is_ok()),
        start,
        count: PAGE,
    };
    let (rows, total) = state.store.list_deployments(s.org_uid(), &filter).await?;
    let uids: Vec<&str> = rows.iter().map(|d| d.uid.as_str()).collect();
    let bentos = state.store.active_bentos(&uids).await?;
    let link = |start: i64| {
        format!(
            "/deployments{}",
            ui::qs(&[("q", &p.q), ("status", &p.status), ("cluster", &p.cluster), ("start", &start.to_string())])
        )
    };
    let filtering = filter.search.is_some() || filter.status.is_some() || filter.cluster_uid.is_some();
    let body = html! {
        div.actions { h1 { "Deployments" } @if s.can(Permission::WriteCluster) { a.button href="/deployments/new" { "New deployment" } } }
        (ui::notice(p.notice.as_deref()))
        form.toolbar method="get" role="search" {
            div { label for="q" { "Search by name" } input id="q" name="q" type="search" value=(p.q); }
            div {
                label for="status" { "Status" }
                select id="status" name="status" {
                    option value="" { "Any" }
                    @for (_, st) in Phase::ALL { option value=(st) selected[p.status == *st] { (st) } }
                }
            }
            div {
                label for="cluster" { "Cluster" }
                select id="cluster" name="cluster" {
                    option value="" { "Any" }
                    @for c in &clusters { option value=(c.name) selected[p.cluster == c.name] { (c.name) } }
                }
            }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            div.empty {
                @if filtering { p { "No deployment matches these filters. " a href="/deployments" { "Show all" } } }
                @else {
                    p { strong { "No deployments yet." } " Push a bento, then " a href="/deployments/new" { "deploy it from the form" } ", or from the command line:" }
                    (ui::copyable("empty-cmd", "bentoml deployment create iris_classifier:latest --name iris"))
                }
            }
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th { "Name" } th { "Status" } th { "Bento" } th.hide-narrow { "Cluster" } th { "Requests/s (5 min)" } th.hide-narrow { "Created" } } }
                    tbody {
                        @for d in &rows {
                            @let bento = bentos.iter().find(|(u, _, _)| *u == d.uid);
                            @let rates = request_rates(&state, &clusters, d, 60);
                            tr data-testid="row" data-name=(d.name) {
                                td {
                                    a href=(href(&d.name)) { (d.name) }
                                    @if d.is_external() { " " span.badge data-testid="external" title="made with kubectl or by a GitOps tool; yatai never changes it" { "managed outside yatai (kubectl/GitOps)" } }
                                }
                                td { (ui::status_badge(&d.status)) }
                                td {
                                    @if let Some((_, r, v)) = bento { a href=(version_href(Kind::Bento, r, v)) { (r) ":" (v) } }
                                    @else if let Some(b) = &d.external_bento { (b) }
                                    @else { span.muted { "—" } }
                                }
                                td.hide-narrow { (d.cluster_name) }
                                td { (ui::sparkline(&rates, 120, 24, &format!("request rate of {}", d.name))) " " span.muted { (format!("{:.1}", rates.last().copied().unwrap_or(0.0))) } }
                                td.hide-narrow { (ui::time(d.created_at)) }
                            }
                        }
                    }
                }
            }
            (ui::pager((start > 0).then(|| link(0)), (start + PAGE < total).then(|| link(start + PAGE))))
        }
    };
    Ok(ui::page(&s, "deployments", "Deployments", body))
}

/// An event's details in a line: empty values left out, long ones (digests)
/// shortened.
pub fn short_info(info: &str) -> String {
    match serde_json::from_str::<Value>(info) {
        Ok(Value::Object(m)) if !m.is_empty() => m
            .iter()
            .filter_map(|(k, v)| {
                let text = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
                if text.is_empty() || text == "null" {
                    return None;
                }
                let text = if text.chars().count() > 40 {
                    format!("{}…", text.chars().take(16).collect::<String>())
                } else {
                    text
                };
                Some(format!("{k}: {text}"))
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

// ---- actions --------------------------------------------------------------------

async fn act(state: &AppState, name: &str, post: &Post) -> WebResult<DeploymentRow> {
    let d = find(state, &post.session, name).await?;
    ui::require(&post.session, Permission::WriteCluster)?;
    Ok(d)
}

fn outcome(d: &DeploymentRow, r: Result<DeploymentRow, AppError>, done: &str) -> WebResult {
    match r {
        Ok(d) => Ok(ui::back(&href(&d.name), done)),
        Err(e @ (AppError::Internal(_) | AppError::Unavailable(_) | AppError::StorageFull(_))) => Err(e.into()),
        Err(e) => Ok(ui::back(&href(&d.name), &format!("Not done: {}", e.message()))),
    }
}

pub async fn terminate(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let d = act(&state, &name, &post).await?;
    let r = svc::terminate(&state, &post.session.caller, &d).await;
    outcome(&d, r, "Terminated: its replicas are stopping.")
}

pub async fn restore(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let d = act(&state, &name, &post).await?;
    let r = svc::restore(&state, &post.session.caller, &d).await;
    outcome(&d, r, "Restored: starting its replicas.")
}

pub async fn rollback(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let d = act(&state, &name, &post).await?;
    let r = svc::rollback(&state, &post.session.caller, &d, post.form.get("revision_uid")).await;
    outcome(&d, r, "Rolling back: a new revision runs the earlier configuration.")
}

pub async fn delete(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let d = act(&state, &name, &post).await?;
    match svc::delete(&state, &post.session.caller, &d).await {
        Ok(()) => Ok(ui::back("/deployments", &format!("Deleted deployment {}.", d.name))),
        Err(e) => outcome(&d, Err(e), ""),
    }
}
