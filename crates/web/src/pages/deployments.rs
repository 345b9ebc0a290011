//! Deployments: the list, the create and edit form, the detail page with
//! live status, logs and charts, revisions, and the actions on one.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures_util::Stream;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use yatai_api::AppState;
use yatai_api::auth::Permission;
use yatai_api::deployments::{self as dep, DEFAULT_NAMESPACE, DeploymentConfig, EnvItem};
use yatai_api::routes::deployments as svc;
use yatai_core::Kind;
use yatai_runtime::DeployTarget;
use yatai_store::{DeploymentFilter, DeploymentRow, EventFilter, RepoSort};

use super::registry::{repo_href, version_href};
use crate::session::{FormData, Post, Session};
use crate::ui::{self, WebError, WebResult, field_error};

const STATUSES: &[&str] = &["deploying", "running", "unhealthy", "failed", "terminating", "terminated"];
const PAGE: i64 = 50;

async fn find(state: &AppState, s: &Session, name: &str) -> WebResult<DeploymentRow> {
    svc::find(state, &s.caller, None, name).await.map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            WebError::not_found(format!("There is no deployment {name:?} in {}.", s.caller.org.name))
        } else {
            e.into()
        }
    })
}

fn href(name: &str) -> String {
    format!("/deployments/{}", ui::enc(name))
}

fn request_rates(state: &AppState, uid: &str, n: usize) -> Vec<f64> {
    let samples = state.runtime.as_ref().and_then(|r| r.metrics(uid)).map(|h| h.samples()).unwrap_or_default();
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
        status: Some(p.status.clone()).filter(|s| STATUSES.contains(&s.as_str())),
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
                    @for st in STATUSES { option value=(st) selected[p.status == *st] { (st) } }
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
                            @let rates = request_rates(&state, &d.uid, 60);
                            tr data-testid="row" data-name=(d.name) {
                                td { a href=(href(&d.name)) { (d.name) } }
                                td { (ui::status_badge(&d.status)) }
                                td { @if let Some((_, r, v)) = bento { a href=(version_href(Kind::Bento, r, v)) { (r) ":" (v) } } @else { span.muted { "—" } } }
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

// ---- the form -------------------------------------------------------------------

/// What the form holds, from a request or from a deployment's revision.
#[derive(Default, Clone)]
struct FormValues {
    name: String,
    bento_repository: String,
    bento_version: String,
    cluster: String,
    min_replicas: String,
    max_replicas: String,
    envs: String,
    cpu: String,
    memory: String,
    description: String,
}

impl FormValues {
    fn from_form(f: &FormData) -> Self {
        FormValues {
            name: f.get("name").to_owned(),
            bento_repository: f.get("bento_repository").to_owned(),
            bento_version: f.get("bento_version").to_owned(),
            cluster: f.get("cluster").to_owned(),
            min_replicas: f.get("min_replicas").to_owned(),
            max_replicas: f.get("max_replicas").to_owned(),
            envs: f.raw("envs").replace("\r\n", "\n"),
            cpu: f.get("cpu").to_owned(),
            memory: f.get("memory").to_owned(),
            description: f.get("description").to_owned(),
        }
    }
}

type Errors = Vec<(String, String)>;

/// Checks the form and builds the bento tag and configuration, or the
/// errors to show beside each field.
fn parse(v: &FormValues, entry: &str) -> Result<(String, DeploymentConfig), Errors> {
    let mut errors = Errors::new();
    let mut e = |f: &str, m: String| errors.push((f.to_owned(), m));
    if v.bento_repository.is_empty() {
        e("bento_repository", "Choose the bento to deploy.".into());
    }
    let int = |s: &str, default: i64| if s.is_empty() { Ok(default) } else { s.parse::<i64>() };
    let min = int(&v.min_replicas, 1);
    let max = int(&v.max_replicas, *min.as_ref().unwrap_or(&1));
    match (&min, &max) {
        (Err(_), _) => e("min_replicas", "Enter a whole number.".into()),
        (Ok(m), _) if *m < 0 => e("min_replicas", "Must not be negative.".into()),
        _ => {}
    }
    match (&min, &max) {
        (_, Err(_)) => e("max_replicas", "Enter a whole number.".into()),
        (_, Ok(m)) if *m < 1 => e("max_replicas", "Must be at least 1.".into()),
        (_, Ok(m)) if *m > 64 => e("max_replicas", "At most 64 on this server.".into()),
        (Ok(a), Ok(b)) if a > b => e("max_replicas", format!("Must be at least the minimum ({a}).")),
        _ => {}
    }
    let mut envs = Vec::new();
    for (i, line) in v.envs.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, val))
                if !k.trim().is_empty()
                    && !k.trim().starts_with(|c: char| c.is_ascii_digit())
                    && k.trim().chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                envs.push(EnvItem { name: k.trim().to_owned(), value: val.to_owned() })
            }
            _ => e(
                "envs",
                format!("Line {}: write KEY=VALUE, with a name of letters, digits and '_' (got {line:?}).", i + 1),
            ),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut service = Map::new();
    service.insert("scaling".into(), json!({"min_replicas": min.unwrap_or(1), "max_replicas": max.unwrap_or(1)}));
    let mut requests = Map::new();
    if !v.cpu.is_empty() {
        requests.insert("cpu".into(), json!(v.cpu));
    }
    if !v.memory.is_empty() {
        requests.insert("memory".into(), json!(v.memory));
    }
    if !requests.is_empty() {
        service.insert("resources".into(), json!({"requests": requests}));
    }
    let mut services = Map::new();
    services.insert(entry.to_owned(), Value::Object(service));
    let version = if v.bento_version.is_empty() { "latest" } else { &v.bento_version };
    Ok((
        format!("{}:{version}", v.bento_repository),
        DeploymentConfig { envs: Some(envs), services: Some(services), ..Default::default() },
    ))
}

/// Puts an error from the service layer beside the field it is about.
fn place(message: &str) -> &'static str {
    let m = message.to_lowercase();
    if m.contains("deployment name") || m.contains("already exists") {
        "name"
    } else if m.contains("environment variable") || m.contains("--env") {
        "envs"
    } else if m.contains("min_replicas") {
        "min_replicas"
    } else if m.contains("max_replicas") || m.contains("scaling") {
        "max_replicas"
    } else if m.contains("repository") && m.contains("not found") {
        "bento_repository"
    } else if m.contains("bento") {
        "bento_version"
    } else if m.contains("cluster") {
        "cluster"
    } else {
        "form"
    }
}

async fn form_page(
    state: &AppState,
    s: &Session,
    editing: Option<&DeploymentRow>,
    v: &FormValues,
    errors: &Errors,
) -> WebResult<Response> {
    let repos = state.store.repository_page(s.org_uid(), Kind::Bento, None, RepoSort::Name, 0, 1000).await?;
    let versions = match repos.items.iter().find(|(r, _)| r.name == v.bento_repository) {
        Some((r, _)) => state.store.version_page(&r.uid, None, Default::default(), None, 100).await?,
        None => Vec::new(),
    };
    let clusters = state.store.list_clusters(s.org_uid()).await?;
    let (page_id, title, action) = match editing {
        Some(d) => ("deployment-edit", format!("Update {}", d.name), format!("{}/edit", href(&d.name))),
        None => ("deployment-new", "New deployment".to_owned(), "/deployments/new".to_owned()),
    };
    let described = |f: &str| format!("{f}-error");
    let body = html! {
        @if let Some(d) = editing { nav.crumbs { a href="/deployments" { "Deployments" } " / " a href=(href(&d.name)) { (d.name) } " /" } }
        @else { nav.crumbs { a href="/deployments" { "Deployments" } " /" } }
        h1 { (title) }
        @if repos.items.is_empty() {
            div.empty { p { strong { "There is no bento to deploy yet." } " Push one first:" } (ui::copyable("empty-cmd", "bentoml push iris_classifier:latest")) }
        }
        form.card.stack data-form="deployment" method="post" action=(action) novalidate {
            (ui::csrf(s))
            (field_error("form", errors))
            label for="name" { "Name" }
            @if editing.is_some() {
                input id="name" name="name" type="text" value=(v.name) readonly;
            } @else {
                input id="name" name="name" type="text" value=(v.name) placeholder="iris" pattern="[a-z]([-a-z0-9]*[a-z0-9])?" maxlength="50" aria-describedby=(described("name"));
                p.hint { "Lowercase letters, digits and '-'; becomes part of the URL. Leave empty to have one chosen." }
            }
            (field_error("name", errors))
            label for="bento_repository" { "Bento repository" }
            select id="bento_repository" name="bento_repository" aria-describedby=(described("bento_repository")) data-versions-url="/deployments/new/versions" {
                option value="" { "Choose a bento…" }
                @for (r, _) in &repos.items { option value=(r.name) selected[r.name == v.bento_repository] { (r.name) } }
            }
            (field_error("bento_repository", errors))
            label for="bento_version" { "Bento version" }
            (version_picker(&versions, &v.bento_version, errors))
            label for="cluster" { "Cluster" }
            select id="cluster" name="cluster" disabled[editing.is_some()] aria-describedby=(described("cluster")) {
                @if clusters.is_empty() { option value="local" { "local" } }
                @for c in &clusters { option value=(c.name) selected[c.name == v.cluster] { (c.name) } }
            }
            (field_error("cluster", errors))
            div.grid {
                div {
                    label for="min_replicas" { "Minimum replicas" }
                    input id="min_replicas" name="min_replicas" type="number" min="0" max="64" value=(v.min_replicas) aria-describedby=(described("min_replicas"));
                    (field_error("min_replicas", errors))
                }
                div {
                    label for="max_replicas" { "Maximum replicas" }
                    input id="max_replicas" name="max_replicas" type="number" min="1" max="64" value=(v.max_replicas) aria-describedby=(described("max_replicas"));
                    (field_error("max_replicas", errors))
                }
            }
            label for="envs" { "Environment variables" }
            textarea id="envs" name="envs" rows="4" placeholder="KEY=VALUE" aria-describedby=(described("envs")) { (v.envs) }
            p.hint { "One KEY=VALUE per line." }
            (field_error("envs", errors))
            fieldset {
                legend { "Resources (optional)" }
                div.grid {
                    div { label for="cpu" { "CPU request" } input id="cpu" name="cpu" type="text" value=(v.cpu) placeholder="500m"; }
                    div { label for="memory" { "Memory request" } input id="memory" name="memory" type="text" value=(v.memory) placeholder="1Gi"; }
                }
                p.hint { "Recorded with the revision; the local runtime does not limit processes." }
            }
            @if editing.is_none() {
                label for="description" { "Description (optional)" }
                input id="description" name="description" type="text" value=(v.description);
            }
            button type="submit" { @if editing.is_some() { "Update deployment" } @else { "Create deployment" } }
        }
    };
    let mut resp = ui::page(s, page_id, &title, body);
    if !errors.is_empty() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(resp)
}

fn version_picker(versions: &[yatai_store::VersionRow], selected: &str, errors: &Errors) -> Markup {
    let described = "bento_version-error";
    let uploaded: Vec<_> = versions.iter().filter(|x| x.is_uploaded()).collect();
    html! {
        div id="version-picker" {
            @if uploaded.is_empty() {
                input id="bento_version" name="bento_version" type="text" value=(selected) placeholder="latest" aria-describedby=(described);
                p.hint { "Leave empty for the newest uploaded version." }
            } @else {
                select id="bento_version" name="bento_version" aria-describedby=(described) {
                    option value="" selected[selected.is_empty()] { "latest (newest uploaded)" }
                    @for ver in &uploaded {
                        option value=(ver.version) selected[ver.version == selected] { (ver.version) " — " (ui::ago(ver.created_at)) }
                    }
                }
            }
            (field_error("bento_version", errors))
        }
    }
}

/// The version picker for a repository, which the form's script swaps in
/// when the repository changes.
pub async fn versions_fragment(State(state): State<AppState>, s: Session, Query(p): Query<NewParams>) -> WebResult {
    let versions = match state.store.get_repository_uncounted(s.org_uid(), Kind::Bento, &p.bento_repository).await? {
        Some(r) => state.store.version_page(&r.uid, None, Default::default(), None, 100).await?,
        None => Vec::new(),
    };
    Ok(axum::response::Html(version_picker(&versions, "", &Vec::new()).into_string()).into_response())
}

#[derive(Deserialize, Default)]
pub struct NewParams {
    #[serde(default)]
    bento_repository: String,
    #[serde(default)]
    bento_version: String,
}

pub async fn new_page(State(state): State<AppState>, s: Session, Query(p): Query<NewParams>) -> WebResult {
    ui::require(&s, Permission::WriteCluster)?;
    let v = FormValues {
        bento_repository: p.bento_repository,
        bento_version: p.bento_version,
        cluster: dep::LOCAL_CLUSTER.into(),
        min_replicas: "1".into(),
        max_replicas: "1".into(),
        ..Default::default()
    };
    form_page(&state, &s, None, &v, &Vec::new()).await
}

async fn entry_of(state: &AppState, s: &Session, v: &FormValues) -> String {
    let version = if v.bento_version.is_empty() { "latest" } else { &v.bento_version };
    match yatai_api::routes::artifacts::find_version(state, &s.caller, Kind::Bento, &v.bento_repository, version).await
    {
        Ok(b) => dep::entry_service(&serde_json::from_str(&b.manifest).unwrap_or(Value::Null)),
        Err(_) => "apiserver".into(),
    }
}

pub async fn create(State(state): State<AppState>, post: Post) -> WebResult {
    let s = &post.session;
    ui::require(s, Permission::WriteCluster)?;
    let v = FormValues::from_form(&post.form);
    let entry = entry_of(&state, s, &v).await;
    let (tag, config) = match parse(&v, &entry) {
        Ok(x) => x,
        Err(errors) => return form_page(&state, s, None, &v, &errors).await,
    };
    if !v.name.is_empty()
        && let Err(e) = dep::check_deployment_name(&v.name)
    {
        return form_page(&state, s, None, &v, &vec![("name".into(), e.message)]).await;
    }
    let cluster = Some(v.cluster.as_str()).filter(|c| !c.is_empty());
    match svc::create_deployment(
        &state,
        &s.caller,
        cluster,
        DEFAULT_NAMESPACE,
        Some(&v.name),
        &tag,
        &config,
        &v.description,
    )
    .await
    {
        Ok(d) => Ok(Redirect::to(&href(&d.name)).into_response()),
        Err(e) if e.status.is_client_error() => {
            let field = place(&e.message);
            form_page(&state, s, None, &v, &vec![(field.into(), e.message)]).await
        }
        Err(e) => {
            // The deployment may exist (stored, then failed to start): show it.
            if let Ok(d) = svc::find(&state, &s.caller, cluster, &v.name).await {
                return Ok(ui::back(&href(&d.name), &format!("Created, but it did not start: {}", e.message)));
            }
            Err(e.into())
        }
    }
}

/// The form's values for a deployment's active revision.
async fn current_values(state: &AppState, d: &DeploymentRow) -> WebResult<FormValues> {
    let mut v = FormValues { name: d.name.clone(), cluster: d.cluster_name.clone(), ..Default::default() };
    if let Some((_, targets)) = state.store.active_revision(&d.uid).await?
        && let Some(t) = targets.first()
    {
        if let Some(b) = state.store.get_version_by_uid(&t.bento_uid).await? {
            v.bento_repository = b.repository_name;
            v.bento_version = b.version;
        }
        let config: DeploymentConfig = serde_json::from_str(&t.config).unwrap_or_default();
        v.envs = config.envs.unwrap_or_default().iter().map(|e| format!("{}={}\n", e.name, e.value)).collect();
        if let Some(svc) = config.services.as_ref().and_then(|s| s.values().next()) {
            let num = |p: &str| svc.pointer(p).and_then(Value::as_i64).map(|n| n.to_string()).unwrap_or_default();
            v.min_replicas = num("/scaling/min_replicas");
            v.max_replicas = num("/scaling/max_replicas");
            let text = |p: &str| svc.pointer(p).and_then(Value::as_str).unwrap_or("").to_owned();
            v.cpu = text("/resources/requests/cpu");
            v.memory = text("/resources/requests/memory");
        }
    }
    Ok(v)
}

pub async fn edit_page(State(state): State<AppState>, s: Session, Path(name): Path<String>) -> WebResult {
    let d = find(&state, &s, &name).await?;
    ui::require(&s, Permission::WriteCluster)?;
    let v = current_values(&state, &d).await?;
    form_page(&state, &s, Some(&d), &v, &Vec::new()).await
}

pub async fn update(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let s = &post.session;
    let d = find(&state, s, &name).await?;
    ui::require(s, Permission::WriteCluster)?;
    let mut v = FormValues::from_form(&post.form);
    v.name = d.name.clone();
    v.cluster = d.cluster_name.clone();
    let entry = entry_of(&state, s, &v).await;
    let (tag, config) = match parse(&v, &entry) {
        Ok(x) => x,
        Err(errors) => return form_page(&state, s, Some(&d), &v, &errors).await,
    };
    match svc::update_deployment(&state, &s.caller, &d, &tag, &config).await {
        Ok(d) => Ok(ui::back(&href(&d.name), "Updated: rolling out a new revision.")),
        Err(e) if e.status.is_client_error() => {
            let field = place(&e.message);
            form_page(&state, s, Some(&d), &v, &vec![(field.into(), e.message)]).await
        }
        Err(e) => Err(e.into()),
    }
}

// ---- the detail page -------------------------------------------------------------

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

fn charts(state: &AppState, uid: &str) -> Vec<(String, Markup)> {
    let samples = state.runtime.as_ref().and_then(|r| r.metrics(uid)).map(|h| h.samples()).unwrap_or_default();
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
    let url = dep::deployment_url(&state, &headers, &d);
    let snapshot = state.runtime.as_ref().and_then(|r| r.snapshot(&d.uid));
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
    let active = revs.iter().find(|(_, r, _, _)| r.status == "active");
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
    let logs = state.runtime.as_ref().and_then(|r| r.open_logs(&d.uid)).map(|b| b.tail(200)).unwrap_or_default();
    let can_write = s.can(Permission::WriteCluster);
    let (ca, cb) = (p.a.unwrap_or(total.saturating_sub(1).max(1)), p.b.unwrap_or(total));
    let text_of = |n: usize| {
        revs.iter().find(|(k, ..)| *k == n).map(|(_, _, t, b)| {
            let bento = b.as_ref().map(|(r, v)| format!("{r}:{v}")).unwrap_or_else(|| "(deleted)".into());
            revision_text(&bento, t.first().map(|t| t.config.as_str()).unwrap_or("null"))
        })
    };
    let terminated = d.desired == "terminated";
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/deployments" { "Deployments" } " /" }
        div data-live=(format!("{}/live", href(&d.name))) {
            h1 { (d.name) " " span.badge class=(format!("s-{}", d.status)) data-testid="status" data-live-status { (d.status) } }
            p.muted data-live-reason { (d.status_reason) }
        }
        (ui::notice(p.notice.as_deref()))
        dl.facts {
            dt { "URL" } dd { @if terminated { span.muted { (url) " (stopped)" } } @else { a href=(url) data-testid="url" { (url) } } }
            dt { "Bento" } dd { @if let Some((_, _, _, Some((r, v)))) = active { a href=(version_href(Kind::Bento, r, v)) { (r) ":" (v) } } @else { span.muted { "—" } } }
            dt { "Cluster" } dd { (d.cluster_name) " · namespace " (d.namespace) }
            dt { "Created" } dd { (ui::time(d.created_at)) " by " (d.creator_name.as_deref().unwrap_or("—")) }
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
        div.grid { @for (_, c) in charts(&state, &d.uid) { (c) } }
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
                            td { span.badge class=(if r.status == "active" { "s-running" } else { "" }) { (r.status) } }
                            td { @if let Some((rn, v)) = b { a href=(version_href(Kind::Bento, rn, v)) { (rn) ":" (v) } } @else { span.muted { "deleted" } } }
                            td.hide-narrow { (r.creator_name.as_deref().unwrap_or("—")) }
                            td { (ui::time(r.created_at)) }
                            td.row-actions {
                                @if can_write && r.status != "active" && b.is_some() {
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
    let _ = repo_href;
    Ok(ui::page(&s, "deployment", &d.name, body))
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

// ---- live parts ------------------------------------------------------------------

/// Status, replicas and charts, pushed whenever they change.
pub async fn live(
    State(state): State<AppState>,
    s: Session,
    Path(name): Path<String>,
) -> WebResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let d = find(&state, &s, &name).await?;
    let stream = futures_util::stream::unfold(
        (state, d.uid, String::new(), 0u32),
        |(state, uid, last, n)| async move {
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
                let snap = state.runtime.as_ref().and_then(|r| r.snapshot(&uid));
                let replicas: Vec<Value> = snap
                .map(|s| {
                    s.replicas
                        .iter()
                        .map(|r| json!({"id": r.id, "state": r.state, "restarts": r.restarts, "inflight": r.inflight, "pid": r.pid}))
                        .collect()
                })
                .unwrap_or_default();
                // Charts change every 5 s (a sample); send them every 5th tick.
                let mut msg = json!({"status": d.status, "reason": d.status_reason, "replicas": replicas});
                let key = msg.to_string();
                if n % 5 == 0 {
                    let c: Map<String, Value> =
                        charts(&state, &uid).into_iter().map(|(id, m)| (id, Value::String(m.into_string()))).collect();
                    msg["charts"] = Value::Object(c);
                }
                n = n.wrapping_add(1);
                if key != last || msg.get("charts").is_some() {
                    return Some((Ok(Event::default().event("state").data(msg.to_string())), (state, uid, key, n)));
                }
                last = key;
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

pub async fn logs(
    State(state): State<AppState>,
    s: Session,
    Path(name): Path<String>,
) -> WebResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    use futures_util::StreamExt;
    let d = find(&state, &s, &name).await?;
    let runtime = state.runtime.clone().ok_or_else(|| WebError::not_found("This server runs no deployments."))?;
    // A deployment that has not written a line yet gets a stream that waits
    // for its log to appear (an error here would make the browser retry
    // noisily).
    let uid = d.uid.clone();
    let book = async move {
        loop {
            if let Some(book) = runtime.open_logs(&uid) {
                return book;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let stream = futures_util::stream::once(book).flat_map(|book| svc::log_stream(book, 200, true));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

// ---- actions --------------------------------------------------------------------

async fn act(state: &AppState, name: &str, post: &Post) -> WebResult<DeploymentRow> {
    let d = find(state, &post.session, name).await?;
    ui::require(&post.session, Permission::WriteCluster)?;
    Ok(d)
}

fn outcome(d: &DeploymentRow, r: Result<DeploymentRow, yatai_api::error::ApiError>, done: &str) -> WebResult {
    match r {
        Ok(d) => Ok(ui::back(&href(&d.name), done)),
        Err(e) if e.status.is_client_error() => Ok(ui::back(&href(&d.name), &format!("Not done: {}", e.message))),
        Err(e) => Err(e.into()),
    }
}

pub async fn terminate(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let d = act(&state, &name, &post).await?;
    let r = svc::terminate_deployment(&state, &post.session.caller, &d).await;
    outcome(&d, r, "Terminated: its replicas are stopping.")
}

pub async fn restore(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let d = act(&state, &name, &post).await?;
    let r = svc::restore_deployment(&state, &post.session.caller, &d).await;
    outcome(&d, r, "Restored: starting its replicas.")
}

pub async fn rollback(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let d = act(&state, &name, &post).await?;
    let r = svc::rollback_deployment(&state, &post.session.caller, &d, post.form.get("revision_uid")).await;
    outcome(&d, r, "Rolling back: a new revision runs the earlier configuration.")
}

pub async fn delete(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let d = act(&state, &name, &post).await?;
    svc::delete_deployment(&state, &post.session.caller, &d).await?;
    Ok(ui::back("/deployments", &format!("Deleted deployment {}.", d.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_errors_name_their_fields() {
        let v = FormValues {
            bento_repository: "iris".into(),
            min_replicas: "3".into(),
            max_replicas: "2".into(),
            envs: "GOOD=1\nnot an env\n".into(),
            ..Default::default()
        };
        let errors = parse(&v, "svc").unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["max_replicas", "envs"]);
    }

    #[test]
    fn a_valid_form_becomes_a_config() {
        let v = FormValues {
            bento_repository: "iris".into(),
            min_replicas: "1".into(),
            max_replicas: "2".into(),
            envs: "A=1\nB=x=y\n".into(),
            cpu: "500m".into(),
            ..Default::default()
        };
        let (tag, config) = parse(&v, "IrisClassifier").unwrap();
        assert_eq!(tag, "iris:latest");
        let envs = config.envs.unwrap();
        assert_eq!(envs[1].value, "x=y");
        let svc = &config.services.unwrap()["IrisClassifier"];
        assert_eq!(svc["scaling"]["max_replicas"], 2);
        assert_eq!(svc["resources"]["requests"]["cpu"], "500m");
    }

    #[test]
    fn diff_marks_added_and_removed_lines() {
        let html = diff("a\nb\nc", "a\nc\nd").into_string();
        assert!(html.contains("- b"));
        assert!(html.contains("+ d"));
    }
}
