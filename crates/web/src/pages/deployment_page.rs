//! A deployment's page: URL, live status and replicas, traffic charts,
//! logs, revisions with their diff, events; and the event streams that keep
//! it live.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use yatai_api::deployments::request_host;
use yatai_api::sse::log_stream;
use yatai_app::AppState;
use yatai_app::auth::Permission;
use yatai_app::deployments as svc;
use yatai_core::Kind;
use yatai_core::deploy::{DeployTarget, Desired, RevisionStatus};
use yatai_store::EventFilter;

use super::deployments::{find, href, short_info};
use super::registry::version_href;
use crate::session::Session;
use crate::ui::{self, WebResult};

#[derive(Deserialize, Default)]
pub struct DetailParams {
    #[serde(default)]
    notice: Option<String>,
    /// Revisions to compare (numbers, 1 = first).
    #[serde(default)]
    a: Option<usize>,
    #[serde(default)]
    b: Option<usize>,
}

fn charts(target: Option<&dyn DeployTarget>, uid: &str) -> Vec<(String, Markup)> {
    let samples = target.and_then(|t| t.metrics(uid)).map(|m| m.samples).unwrap_or_default();
    let recent = &samples[samples.len().saturating_sub(120)..];
    let rps: Vec<f64> = recent.iter().map(|s| s.requests_per_second).collect();
    let err: Vec<f64> = recent
        .iter()
        .map(|s| if s.requests_per_second > 0.0 { s.errors_per_second / s.requests_per_second * 100.0 } else { 0.0 })
        .collect();
    let p50: Vec<f64> = recent.iter().map(|s| s.p50_ms.unwrap_or(0) as f64).collect();
    let p99: Vec<f64> = recent.iter().map(|s| s.p99_ms.unwrap_or(0) as f64).collect();
    vec![
        ("chart-rps".into(), ui::chart("chart-rps", "Request rate", "req/s", &rps)),
        ("chart-errors".into(), ui::chart("chart-errors", "Error rate", "% 5xx", &err)),
        ("chart-p50".into(), ui::chart("chart-p50", "Latency p50", "ms", &p50)),
        ("chart-p99".into(), ui::chart("chart-p99", "Latency p99", "ms", &p99)),
    ]
}

/// A line diff of two texts (longest common subsequence; revisions are a
/// few dozen lines).
fn diff(a: &str, b: &str) -> Markup {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut out: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(('+', b[j]));
            j += 1;
        } else {
            out.push(('-', a[i]));
            i += 1;
        }
    }
    html! {
        pre.diff data-testid="diff" {
            code {
                @for (c, l) in &out {
                    @match c {
                        '+' => { span.add { "+ " (l) } "\n" }
                        '-' => { span.del { "- " (l) } "\n" }
                        _ => { "  " (l) "\n" }
                    }
                }
            }
        }
    }
}

fn revision_text(bento: &str, config: &str) -> String {
    let config: Value = serde_json::from_str(config).unwrap_or(Value::Null);
    format!("bento: {bento}\n{}", serde_json::to_string_pretty(&config).unwrap_or_default())
}

pub async fn detail(
    State(state): State<AppState>,
    s: Session,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(p): Query<DetailParams>,
) -> WebResult {
    let d = find(&state, &s, &name).await?;
    let url = svc::deployment_url(&state, request_host(&headers), &d);
    let target = svc::target_for(&state, &d).await.ok();
    let snapshot = target.as_ref().and_then(|t| t.status(&d.uid));
    let revisions = state.store.list_revisions(&d.uid).await?;
    let total = revisions.len();
    // (number, row, targets, bento tag)
    let mut revs = Vec::with_capacity(total);
    for (i, (r, t)) in revisions.iter().enumerate() {
        let bento = match t.first() {
            Some(t) => state.store.get_version_by_uid(&t.bento_uid).await?.map(|b| (b.repository_name, b.version)),
            None => None,
        };
        revs.push((total - i, r, t, bento));
    }
    let active = revs.iter().find(|(_, r, _, _)| r.status == RevisionStatus::Active);
    let events = state
        .store
        .event_page(
            s.org_uid(),
            &EventFilter {
                resource_type: Some("deployment".into()),
                resource_name: Some(format!("{}/{}", d.namespace, d.name)),
                ..Default::default()
            },
            30,
        )
        .await?;
    let logs = target.as_ref().and_then(|t| t.logs(&d.uid)).map(|b| b.tail(200)).unwrap_or_default();
    // A deployment made outside yatai is changed where it comes from, never here.
    let external = d.is_external();
    let can_write = s.can(Permission::WriteCluster) && !external;
    let (ca, cb) = (p.a.unwrap_or(total.saturating_sub(1).max(1)), p.b.unwrap_or(total));
    let text_of = |n: usize| {
        revs.iter().find(|(k, ..)| *k == n).map(|(_, _, t, b)| {
            let bento = b.as_ref().map(|(r, v)| format!("{r}:{v}")).unwrap_or_else(|| "(deleted)".into());
            revision_text(&bento, t.first().map(|t| t.config.as_str()).unwrap_or("null"))
        })
    };
    let terminated = d.desired == Desired::Terminated;
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/deployments" { "Deployments" } " /" }
        div data-live=(format!("{}/live", href(&d.name))) {
            h1 {
                (d.name) " " span.badge class=(format!("s-{}", d.status)) data-testid="status" data-live-status { (d.status) }
                @if external { " " span.badge data-testid="external" { "managed outside yatai (kubectl/GitOps)" } }
            }
            p.muted data-live-reason { (d.status_reason) }
        }
        (ui::notice(p.notice.as_deref()))
        @if external {
            p.hint data-testid="external-hint" {
                "This is the BentoDeployment " code { (d.name) } " in namespace " code { (d.namespace) } " of cluster "
                (d.cluster_name) ", made with kubectl or by a GitOps tool. Yatai shows it and follows its status, and never "
                "changes it: change or delete it where it comes from (the GitOps repository, or "
                code { "kubectl edit bentodeployment " (d.name) " -n " (d.namespace) } ")."
            }
        }
        dl.facts {
            dt { "URL" } dd data-live-url=(url.as_deref().unwrap_or_default()) { @match &url {
                None => span.muted data-testid="url" { "not published yet" },
                Some(url) if terminated => span.muted { (url) " (stopped)" },
                Some(url) => a href=(url) data-testid="url" { (url) },
            } }
            dt { "Bento" } dd {
                @if let Some((_, _, _, Some((r, v)))) = active { a href=(version_href(Kind::Bento, r, v)) { (r) ":" (v) } }
                @else if let Some(b) = &d.external_bento { (b) span.muted { " (not in the registry)" } }
                @else { span.muted { "—" } }
            }
            dt { "Cluster" } dd { (d.cluster_name) " · namespace " (d.namespace) }
            @if external { dt { "Created" } dd { (ui::time(d.created_at)) " (found on the cluster)" } }
            @else { dt { "Created" } dd { (ui::time(d.created_at)) " by " (d.creator_name.as_deref().unwrap_or("—")) } }
            @if !d.description.is_empty() { dt { "Description" } dd { (d.description) } }
        }
        @if can_write {
            div.actions {
                a.button.secondary href=(format!("{}/edit", href(&d.name))) { "Update" }
                @if terminated {
                    form method="post" action=(format!("{}/restore", href(&d.name))) data-form="restore" {
                        (ui::csrf(&s)) button type="submit" data-action="restore" { "Restore" }
                    }
                } @else {
                    form method="post" action=(format!("{}/terminate", href(&d.name))) data-form="terminate" {
                        (ui::csrf(&s)) button.secondary type="submit" data-action="terminate" { "Terminate" }
                    }
                }
                button.danger type="button" data-dialog="confirm-delete" { "Delete" }
            }
            dialog id="confirm-delete" aria-labelledby="confirm-delete-title" {
                h3 id="confirm-delete-title" { "Delete " (d.name) "?" }
                p { "Its replicas stop, and the deployment, its revisions and its URL are removed." }
                form data-form="delete" method="post" action=(format!("{}/delete", href(&d.name))) {
                    (ui::csrf(&s))
                    div.actions {
                        button.danger type="submit" data-action="confirm" { "Delete" }
                        button.secondary type="button" data-close { "Cancel" }
                    }
                }
            }
        }
        h2 { "Replicas" }
        div.table-wrap {
            table {
                thead { tr { th { "Replica" } th { "State" } th.num { "Restarts" } th.num { "In flight" } th.num { "PID" } } }
                tbody data-live-replicas {
                    @if let Some(snap) = &snapshot {
                        @for r in &snap.replicas {
                            tr data-testid="replica" { td { (r.id) } td { (r.state) } td.num { (r.restarts) } td.num { (r.inflight) } td.num { (r.pid.map(|p| p.to_string()).unwrap_or_default()) } }
                        }
                    }
                }
            }
        }
        p.muted data-live-noreplicas hidden[snapshot.as_ref().is_some_and(|s| !s.replicas.is_empty())] { "No replica is running." }
        h2 { "Traffic" }
        div.grid { @for (_, c) in charts(target.as_deref(), &d.uid) { (c) } }
        h2 { "Logs" }
        pre.logs data-testid="logs" data-logs-url=(format!("{}/logs", href(&d.name))) tabindex="0" aria-label="Replica logs" {
            code { @for l in &logs { (l) "\n" } }
        }
        @if logs.is_empty() { p.hint { "Replica output appears here as it is written." } }
        h2 { "Revisions" }
        div.table-wrap {
            table {
                thead { tr { th { "#" } th { "Status" } th { "Bento" } th.hide-narrow { "By" } th { "Created" } th { span.visually-hidden { "Actions" } } } }
                tbody {
                    @for (n, r, _, b) in &revs {
                        tr data-testid="revision" data-revision=(n) data-status=(r.status) {
                            td { "r" (n) @if let Some(of) = &r.rollback_of { @if let Some((k, ..)) = revs.iter().find(|(_, x, ..)| &x.uid == of) { span.muted { " (rollback to r" (k) ")" } } } }
                            td { span.badge class=(if r.status == RevisionStatus::Active { "s-running" } else { "" }) { (r.status) } }
                            td { @if let Some((rn, v)) = b { a href=(version_href(Kind::Bento, rn, v)) { (rn) ":" (v) } } @else { span.muted { "deleted" } } }
                            td.hide-narrow { (r.creator_name.as_deref().unwrap_or("—")) }
                            td { (ui::time(r.created_at)) }
                            td.row-actions {
                                @if can_write && r.status != RevisionStatus::Active && b.is_some() {
                                    form method="post" action=(format!("{}/rollback", href(&d.name))) data-form="rollback" {
                                        (ui::csrf(&s))
                                        input type="hidden" name="revision_uid" value=(r.uid);
                                        button.small type="submit" data-action="rollback" aria-label=(format!("Roll back to r{n}")) { "Roll back" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if total > 1 {
            form.toolbar method="get" action=(href(&d.name)) {
                div { label for="a" { "Compare" } select id="a" name="a" { @for (n, ..) in &revs { option value=(n) selected[*n == ca] { "r" (n) } } } }
                div { label for="b" { "with" } select id="b" name="b" { @for (n, ..) in &revs { option value=(n) selected[*n == cb] { "r" (n) } } } }
                button type="submit" { "Show changes" }
            }
            @if let (Some(ta), Some(tb)) = (text_of(ca), text_of(cb)) { (diff(&ta, &tb)) }
        }
        h2 { "Events" }
        @if events.is_empty() { p.muted { "No events yet." } }
        @else {
            ul data-testid="events" {
                @for e in events.iter().take(30) {
                    li { (ui::time(e.created_at)) " · " strong { (e.operation) } @if !e.actor_name.is_empty() { " by " (e.actor_name) } " " span.muted { (short_info(&e.info)) } }
                }
            }
        }
    };
    Ok(ui::page(&s, "deployment", &d.name, body))
}

// ---- live parts ------------------------------------------------------------------

/// Status, replicas and charts, pushed whenever they change.
pub async fn live(
    State(state): State<AppState>,
    s: Session,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> WebResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let d = find(&state, &s, &name).await?;
    let host = request_host(&headers).map(str::to_owned);
    let stream = futures_util::stream::unfold((state, d.uid, String::new(), 0u32), move |(state, uid, last, n)| {
        let host = host.clone();
        async move {
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
            let mut last = last;
            let mut n = n;
            loop {
                let Ok(Some(d)) = state.store.get_deployment_by_uid(&uid).await else {
                    return Some((Ok(Event::default().event("gone").data("{}")), (state, uid, last, u32::MAX)))
                        .filter(|_| n != u32::MAX);
                };
                let target = svc::target_for(&state, &d).await.ok();
                let snap = target.as_ref().and_then(|t| t.status(&uid));
                let replicas: Vec<Value> = snap
                .map(|s| {
                    s.replicas
                        .iter()
                        .map(|r| json!({"id": r.id, "state": r.state, "restarts": r.restarts, "inflight": r.inflight, "pid": r.pid}))
                        .collect()
                })
                .unwrap_or_default();
                // The URL appears once a cluster publishes it (a Kubernetes Ingress).
                let url = svc::deployment_url(&state, host.as_deref(), &d);
                let mut msg = json!({"status": d.status, "reason": d.status_reason, "replicas": replicas, "url": url});
                let key = msg.to_string();
                // Charts change every 5 s (a sample); send them every 5th tick.
                if n % 5 == 0 {
                    let c: Map<String, Value> = charts(target.as_deref(), &uid)
                        .into_iter()
                        .map(|(id, m)| (id, Value::String(m.into_string())))
                        .collect();
                    msg["charts"] = Value::Object(c);
                }
                n = n.wrapping_add(1);
                if key != last || msg.get("charts").is_some() {
                    return Some((Ok(Event::default().event("state").data(msg.to_string())), (state, uid, key, n)));
                }
                last = key;
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
        }
    });
    let stream = stream.take_until(Box::pin(yatai_api::shutdown::stopping()));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

pub async fn logs(
    State(state): State<AppState>,
    s: Session,
    Path(name): Path<String>,
) -> WebResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let d = find(&state, &s, &name).await?;
    let target = svc::target_for(&state, &d).await?;
    // A deployment that has not written a line yet gets a stream that waits
    // for its log to appear (an error here would make the browser retry
    // noisily).
    let uid = d.uid.clone();
    let book = async move {
        loop {
            if let Some(book) = target.logs(&uid) {
                return book;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let stream = futures_util::stream::once(book)
        .flat_map(|book| log_stream(book, 200, true))
        .take_until(Box::pin(yatai_api::shutdown::stopping()));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_added_and_removed_lines() {
        let html = diff("a\nb\nc", "a\nc\nd").into_string();
        assert!(html.contains("- b"));
        assert!(html.contains("+ d"));
    }
}
