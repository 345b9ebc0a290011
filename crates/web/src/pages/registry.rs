//! Models and bentos: repository lists, a repository's versions, a
//! version's manifest, and delete.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use yatai_app::AppError;
use yatai_app::AppState;
use yatai_app::auth::Permission;
use yatai_app::registry::{find_version, record};
use yatai_core::Kind;
use yatai_store::{RepoSort, RepositoryRow, VersionRow, VersionSort};

use crate::session::{Post, Session};
use crate::ui::{self, WebError, WebResult};

const PAGE: i64 = 25;

fn base(kind: Kind) -> &'static str {
    match kind {
        Kind::Model => "/models",
        Kind::Bento => "/bentos",
    }
}

fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Model => "Models",
        Kind::Bento => "Bentos",
    }
}

pub fn version_href(kind: Kind, repo: &str, version: &str) -> String {
    format!("{}/{}/{}", base(kind), ui::enc(repo), ui::enc(version))
}

pub fn repo_href(kind: Kind, repo: &str) -> String {
    format!("{}/{}", base(kind), ui::enc(repo))
}

/// The server's URL as the browser sees it, for CLI commands.
pub fn endpoint(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(u) = &state.config.external_url {
        return u.as_str().trim_end_matches('/').to_owned();
    }
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1:3000");
    let scheme = if crate::session::is_https(state, headers) { "https" } else { "http" };
    format!("{scheme}://{host}")
}

// ---- repository lists --------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct ListParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    start: Option<i64>,
    #[serde(default)]
    notice: Option<String>,
}

pub async fn models(state: State<AppState>, s: Session, q: Query<ListParams>) -> WebResult {
    repositories(Kind::Model, state, s, q).await
}

pub async fn bentos(state: State<AppState>, s: Session, q: Query<ListParams>) -> WebResult {
    repositories(Kind::Bento, state, s, q).await
}

fn empty_registry(kind: Kind, searching: bool) -> Markup {
    html! {
        div.empty {
            @if searching {
                p { "Nothing matches this search. " a href=(base(kind)) { "Show all" } }
            } @else if kind == Kind::Model {
                p { strong { "No models yet." } " Save one with BentoML, then push it:" }
                (ui::copyable("empty-cmd", "bentoml models push iris_clf:latest"))
                p.hint { "First log in with an API token: " a href="/settings/tokens" { "create a token" } "." }
            } @else {
                p { strong { "No bentos yet." } " Build one with " code { "bentoml build" } ", then push it:" }
                (ui::copyable("empty-cmd", "bentoml push iris_classifier:latest"))
                p.hint { "First log in with an API token: " a href="/settings/tokens" { "create a token" } "." }
            }
        }
    }
}

async fn repositories(kind: Kind, State(state): State<AppState>, s: Session, Query(p): Query<ListParams>) -> WebResult {
    let sort = RepoSort::parse(&p.sort).unwrap_or_default();
    let start = p.start.unwrap_or(0).max(0);
    let search = Some(p.q.trim()).filter(|q| !q.is_empty());
    let page = state.store.repository_page(s.org_uid(), kind, search, sort, start, PAGE).await?;
    let link = |start: i64| {
        format!("{}{}", base(kind), ui::qs(&[("q", &p.q), ("sort", &p.sort), ("start", &start.to_string())]))
    };
    let title = plural(kind);
    let page_id = match kind {
        Kind::Model => "models",
        Kind::Bento => "bentos",
    };
    let body = html! {
        h1 { (title) }
        (ui::notice(p.notice.as_deref()))
        form.toolbar method="get" role="search" {
            div { label for="q" { "Search by name" } input id="q" name="q" type="search" value=(p.q); }
            div {
                label for="sort" { "Sort" }
                select id="sort" name="sort" {
                    @for (v, l) in [("updated", "Recently pushed"), ("newest", "Newest repository"), ("oldest", "Oldest repository"), ("name", "Name")] {
                        option value=(v) selected[sort.as_str() == v] { (l) }
                    }
                }
            }
            button type="submit" { "Apply" }
        }
        @if page.items.is_empty() {
            (empty_registry(kind, search.is_some()))
        } @else {
            p.muted { (page.total) " repositor" (if page.total == 1 { "y" } else { "ies" }) }
            div.table-wrap {
                table {
                    thead { tr { th { "Name" } th { "Latest version" } th.num { "Versions" } th.hide-narrow { "Size" } th.hide-narrow { "Pushed" } th.hide-narrow { "Creator" } } }
                    tbody {
                        @for (r, latest) in &page.items {
                            tr data-testid="row" data-name=(r.name) {
                                td { a href=(repo_href(kind, &r.name)) { (r.name) } }
                                td {
                                    @if let Some(v) = latest {
                                        a href=(version_href(kind, &r.name, &v.version)) { code { (v.version) } }
                                        " " (ui::upload_badge(&v.upload_status))
                                    } @else { span.muted { "none" } }
                                }
                                td.num { @if r.version_count > yatai_store::COUNT_CAP { (yatai_store::COUNT_CAP) "+" } @else { (r.version_count) } }
                                td.hide-narrow { (ui::size(latest.as_ref().and_then(|v| v.archive_size))) }
                                td.hide-narrow { @if let Some(v) = latest { (ui::time(v.created_at)) } }
                                td.hide-narrow { (r.creator_name.as_deref().unwrap_or("—")) }
                            }
                        }
                    }
                }
            }
            (ui::pager(
                (start > 0).then(|| link(0)),
                (start + PAGE < page.total).then(|| link(start + PAGE)),
            ))
        }
    };
    Ok(ui::page(&s, page_id, title, body))
}

// ---- one repository ------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct VersionParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    notice: Option<String>,
}

async fn find_repo(state: &AppState, s: &Session, kind: Kind, name: &str) -> WebResult<RepositoryRow> {
    state
        .store
        .get_repository_uncounted(s.org_uid(), kind, name)
        .await?
        .ok_or_else(|| WebError::not_found(format!("There is no {kind} repository {name:?} in {}.", s.caller.org.name)))
}

pub async fn model_repo(state: State<AppState>, s: Session, name: Path<String>, q: Query<VersionParams>) -> WebResult {
    repository(Kind::Model, state, s, name, q).await
}

pub async fn bento_repo(state: State<AppState>, s: Session, name: Path<String>, q: Query<VersionParams>) -> WebResult {
    repository(Kind::Bento, state, s, name, q).await
}

async fn repository(
    kind: Kind,
    State(state): State<AppState>,
    s: Session,
    Path(name): Path<String>,
    Query(p): Query<VersionParams>,
) -> WebResult {
    let repo = find_repo(&state, &s, kind, &name).await?;
    let sort = VersionSort::parse(&p.sort).unwrap_or_default();
    let search = Some(p.q.trim()).filter(|q| !q.is_empty());
    let mut rows = state.store.version_page(&repo.uid, search, sort, p.after, PAGE).await?;
    let more = rows.len() as i64 > PAGE;
    rows.truncate(PAGE as usize);
    let uses = if kind == Kind::Bento { state.store.deployment_uses(&repo.uid, None).await? } else { Vec::new() };
    let here = repo_href(kind, &repo.name);
    let older = more.then(|| {
        let last = rows.last().map(|r| r.seq.to_string()).unwrap_or_default();
        format!("{here}{}", ui::qs(&[("q", &p.q), ("sort", &p.sort), ("after", &last)]))
    });
    let first = p.after.is_some().then(|| format!("{here}{}", ui::qs(&[("q", &p.q), ("sort", &p.sort)])));
    let page_id = match kind {
        Kind::Model => "model-repo",
        Kind::Bento => "bento-repo",
    };
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" { a href=(base(kind)) { (plural(kind)) } " / " }
        h1 { (repo.name) }
        (ui::notice(p.notice.as_deref()))
        @if !repo.description.is_empty() { p { (repo.description) } }
        dl.facts {
            dt { "Created" } dd { (ui::time(repo.created_at)) }
            dt { "Creator" } dd { (repo.creator_name.as_deref().unwrap_or("—")) }
        }
        @if kind == Kind::Bento {
            h2 { "Deployments using this repository" }
            @if uses.is_empty() {
                p.muted { "None. " a href=(format!("/deployments/new?bento_repository={}", ui::enc(&repo.name))) { "Deploy a version" } }
            } @else {
                ul { @for u in &uses { li { a href=(format!("/deployments/{}", ui::enc(&u.name))) { (u.name) } " " (ui::status_badge(&u.status)) " runs " code { (u.version) } } } }
            }
        }
        h2 { "Versions" }
        form.toolbar method="get" role="search" {
            div { label for="q" { "Versions starting with" } input id="q" name="q" type="search" value=(p.q); }
            div {
                label for="sort" { "Order" }
                select id="sort" name="sort" {
                    option value="newest" selected[sort != VersionSort::Oldest] { "Newest first" }
                    option value="oldest" selected[sort == VersionSort::Oldest] { "Oldest first" }
                }
            }
            button type="submit" { "Apply" }
        }
        @if rows.is_empty() {
            div.empty { p { @if search.is_some() { "No version matches this search." } @else { "This repository has no versions yet." } } }
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th { "Version" } th { "Upload" } th.hide-narrow { "Size" } th.hide-narrow { "Creator" } th { "Created" } } }
                    tbody {
                        @for v in &rows {
                            tr data-testid="row" data-name=(v.version) {
                                td { a href=(version_href(kind, &repo.name, &v.version)) { code { (v.version) } } }
                                td { (ui::upload_badge(&v.upload_status)) }
                                td.hide-narrow { (ui::size(v.archive_size)) }
                                td.hide-narrow { (v.creator_name.as_deref().unwrap_or("—")) }
                                td { (ui::time(v.created_at)) }
                            }
                        }
                    }
                }
            }
            @if search.is_some() {
                @if more { p.hint { "The first " (PAGE) " matches, in version order: type more of the version to narrow them." } }
            } @else {
                (ui::pager(first, older))
            }
        }
    };
    Ok(ui::page(&s, page_id, &repo.name, body))
}

// ---- one version ----------------------------------------------------------------

pub async fn model_version(
    state: State<AppState>,
    s: Session,
    headers: HeaderMap,
    p: Path<(String, String)>,
    q: Query<VersionParams>,
) -> WebResult {
    version_page(Kind::Model, state, s, headers, p, q).await
}

pub async fn bento_version(
    state: State<AppState>,
    s: Session,
    headers: HeaderMap,
    p: Path<(String, String)>,
    q: Query<VersionParams>,
) -> WebResult {
    version_page(Kind::Bento, state, s, headers, p, q).await
}

async fn load_version(state: &AppState, s: &Session, kind: Kind, repo: &str, version: &str) -> WebResult<VersionRow> {
    find_version(state, &s.caller, kind, repo, version).await.map_err(|e| match e {
        AppError::Invalid { .. } | AppError::NotFound(_) => {
            WebError::not_found(format!("There is no {kind} {repo}:{version} in {}.", s.caller.org.name))
        }
        other => other.into(),
    })
}

fn json_block(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Services and their APIs, from a bento's manifest: the 1.2+ `schema`
/// (with JSON schemas of inputs and outputs), else the older `apis` map.
fn services(manifest: &Value) -> Markup {
    let routes = manifest.pointer("/schema/routes").and_then(Value::as_array);
    let apis = manifest.get("apis").and_then(Value::as_object);
    let services = manifest.get("services").and_then(Value::as_array);
    html! {
        @if let Some(services) = services.filter(|s| !s.is_empty()) {
            ul {
                @for svc in services {
                    li {
                        strong { (str_at(svc, "/name")) }
                        " " code { (str_at(svc, "/service")) }
                        @if let Some(r) = svc.pointer("/config/resources").filter(|r| !r.is_null()) { " · resources " code { (r.to_string()) } }
                    }
                }
            }
        }
        @if let Some(routes) = routes.filter(|r| !r.is_empty()) {
            @for r in routes {
                details.api data-testid="api" {
                    summary { strong { (str_at(r, "/name")) } " " code { "POST " (str_at(r, "/route")) } @if r.get("batchable").and_then(Value::as_bool) == Some(true) { " · batchable" } }
                    @if let Some(doc) = r.get("doc").and_then(Value::as_str).filter(|d| !d.is_empty()) { p { (doc) } }
                    h4 { "Input" }
                    pre { code { (json_block(r.get("input").unwrap_or(&Value::Null))) } }
                    h4 { "Output" }
                    pre { code { (json_block(r.get("output").unwrap_or(&Value::Null))) } }
                }
            }
        } @else if let Some(apis) = apis.filter(|a| !a.is_empty()) {
            table {
                thead { tr { th { "API" } th { "Route" } th { "Input" } th { "Output" } } }
                tbody {
                    @for (name, a) in apis {
                        tr data-testid="api" { td { (name) } td { code { (str_at(a, "/route")) } } td { (str_at(a, "/input")) } td { (str_at(a, "/output")) } }
                    }
                }
            }
        } @else {
            p.muted { "The manifest lists no APIs." }
        }
    }
}

fn labels(labels_json: &str) -> Markup {
    let labels: Vec<Value> = serde_json::from_str(labels_json).unwrap_or_default();
    html! {
        @if labels.is_empty() { span.muted { "none" } }
        @for l in &labels { span.badge { (str_at(l, "/key")) "=" (str_at(l, "/value")) } " " }
    }
}

async fn version_page(
    kind: Kind,
    State(state): State<AppState>,
    s: Session,
    headers: HeaderMap,
    Path((repo, version)): Path<(String, String)>,
    Query(p): Query<VersionParams>,
) -> WebResult {
    let v = load_version(&state, &s, kind, &repo, &version).await?;
    let manifest: Value = serde_json::from_str(&v.manifest).unwrap_or(Value::Null);
    let tag = v.tag();
    let endpoint = endpoint(&state, &headers);
    let (models, uses, referrers) = match kind {
        Kind::Bento => (
            state.store.bento_models(&v).await?,
            state.store.deployment_uses(&v.repository_uid, Some(&v.uid)).await?,
            Vec::new(),
        ),
        Kind::Model => {
            (Vec::new(), Vec::new(), state.store.model_referrers(s.org_uid(), &v.repository_name, &v.version).await?)
        }
    };
    let blocked = match kind {
        Kind::Bento if !uses.is_empty() => Some(format!(
            "Used by deployment{} {}: update or delete {} first.",
            if uses.len() == 1 { "" } else { "s" },
            uses.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(", "),
            if uses.len() == 1 { "it" } else { "them" }
        )),
        Kind::Model if !referrers.is_empty() => Some(format!(
            "Used by bento{} {}: delete {} first.",
            if referrers.len() == 1 { "" } else { "s" },
            referrers.join(", "),
            if referrers.len() == 1 { "it" } else { "them" }
        )),
        _ => None,
    };
    let login = format!("bentoml cloud login --endpoint {endpoint} --api-token YOUR_TOKEN");
    let pull = match kind {
        Kind::Model => format!("bentoml models pull {tag}"),
        Kind::Bento => format!("bentoml pull {tag} --with-models"),
    };
    let deploy_cmd = format!("bentoml deployment create {tag} --name {}", v.repository_name.replace(['_', '.'], "-"));
    let page_id = match kind {
        Kind::Model => "model-version",
        Kind::Bento => "bento-version",
    };
    let size = manifest.get("size_bytes").and_then(Value::as_i64).or(v.archive_size);
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" { a href=(base(kind)) { (plural(kind)) } " / " a href=(repo_href(kind, &v.repository_name)) { (v.repository_name) } " /" }
        h1 { (v.repository_name) ":" code data-testid="version" { (v.version) } }
        (ui::notice(p.notice.as_deref()))
        @if v.description.len() > 200 || v.description.contains('\n') {
            details { summary { "Description" } pre.readme { (v.description) } }
        } @else if !v.description.is_empty() { p { (v.description) } }
        dl.facts {
            dt { "Upload" } dd data-testid="upload-status" { (ui::upload_badge(&v.upload_status)) @if !v.upload_finished_reason.is_empty() { " " span.muted { (v.upload_finished_reason) } } }
            dt { "Size" } dd { (ui::size(size)) @if v.archive_size.is_some() && size != v.archive_size { span.muted { " (archive " (ui::size(v.archive_size)) ")" } } }
            dt { "Creator" } dd data-testid="creator" { (v.creator_name.as_deref().unwrap_or("—")) }
            dt { "Created" } dd { (ui::time(v.created_at)) }
            @if let Some(b) = v.build_at { dt { "Built" } dd { (ui::time(b)) } }
            dt { "BentoML" } dd { (str_at(&manifest, "/bentoml_version")) }
            @if kind == Kind::Model {
                dt { "Framework" } dd { code { (str_at(&manifest, "/module")) } }
            } @else {
                dt { "Service" } dd { code { (str_at(&manifest, "/service")) } }
            }
            dt { "Labels" } dd { (labels(&v.labels)) }
        }
        h2 { "Use it" }
        (ui::copyable("cmd-login", &login))
        (ui::copyable("cmd-pull", &pull))
        @if kind == Kind::Bento {
            (ui::copyable("cmd-deploy", &deploy_cmd))
            p { a.button href=(format!("/deployments/new?bento_repository={}&bento_version={}", ui::enc(&v.repository_name), ui::enc(&v.version))) { "Deploy this bento" } }
        }
        @if v.is_uploaded() {
            p { a href=(format!("{}/{}/download", repo_href(kind, &v.repository_name), ui::enc(&v.version))) download { "Download the archive" } " (" (ui::size(v.archive_size)) ")" }
        }
        @if kind == Kind::Bento {
            h2 { "Services and APIs" }
            (services(&manifest))
            h2 { "Models" }
            @if models.is_empty() { p.muted { "This bento uses no models." } }
            @else {
                ul data-testid="models" {
                    @for (name, ver, found) in &models {
                        li {
                            @if found.is_some() {
                                a href=(version_href(Kind::Model, name, ver)) { (name) ":" (ver) }
                            } @else {
                                (name) ":" (ver) " " span.field-error { "not in the registry — push it with " code { "bentoml models push " (name) ":" (ver) } }
                            }
                        }
                    }
                }
            }
            h2 { "Python" }
            dl.facts {
                dt { "Version" } dd { (str_at(&manifest, "/image/python_version")) }
                @let base_image = str_at(&manifest, "/image/base_image");
                @if !base_image.is_empty() { dt { "Base image" } dd { code { (base_image) } } }
            }
            @let reqs = str_at(&manifest, "/image/python_requirements");
            @if reqs.trim().is_empty() { p.muted { "No Python requirements recorded in the manifest." } }
            @else { pre data-testid="requirements" { code { (reqs) } } }
            @let envs = manifest.get("envs").and_then(Value::as_array).cloned().unwrap_or_default();
            @if !envs.is_empty() {
                h2 { "Environment variables" }
                ul { @for e in &envs { li { code { (str_at(e, "/name")) } @if str_at(e, "/value").is_empty() { " " span.badge { "required" } } } } }
            }
            h2 { "Deployments using this version" }
            @if uses.is_empty() { p.muted { "None." } }
            @else { ul data-testid="deployments" { @for u in &uses { li { a href=(format!("/deployments/{}", ui::enc(&u.name))) { (u.name) } " " (ui::status_badge(&u.status)) } } } }
        } @else {
            h2 { "Bentos using this model" }
            @if referrers.is_empty() { p.muted { "None." } }
            @else { ul { @for t in &referrers { @if let Some((r, ver)) = t.split_once(':') { li { a href=(version_href(Kind::Bento, r, ver)) { (t) } } } } } }
            @if let Some(meta) = manifest.get("metadata").filter(|m| m.as_object().is_some_and(|o| !o.is_empty())) {
                h2 { "Metadata" }
                pre { code { (json_block(meta)) } }
            }
        }
        @if s.can(Permission::WriteRegistry) {
            h2 { "Delete" }
            @if let Some(reason) = &blocked {
                p data-testid="delete-blocked" { "This version cannot be deleted. " (reason) }
            }
            button.danger type="button" data-dialog="confirm-delete" disabled[blocked.is_some()] { "Delete " (tag) }
            dialog id="confirm-delete" aria-labelledby="confirm-delete-title" {
                h3 id="confirm-delete-title" { "Delete " (tag) "?" }
                p { "The archive is removed from storage. This cannot be undone." }
                form data-form="delete" method="post" action=(format!("{}/{}/delete", repo_href(kind, &v.repository_name), ui::enc(&v.version))) {
                    (ui::csrf(&s))
                    div.actions {
                        button.danger type="submit" data-action="confirm" { "Delete" }
                        button.secondary type="button" data-close { "Cancel" }
                    }
                }
            }
        }
        h2 { "Manifest" }
        details { summary { "Raw manifest (JSON)" } pre { code { (json_block(&manifest)) } } }
    };
    Ok(ui::page(&s, page_id, &tag, body))
}

// ---- delete and download -------------------------------------------------------

pub async fn delete_model(state: State<AppState>, p: Path<(String, String)>, post: Post) -> WebResult {
    delete_version(Kind::Model, state, p, post).await
}

pub async fn delete_bento(state: State<AppState>, p: Path<(String, String)>, post: Post) -> WebResult {
    delete_version(Kind::Bento, state, p, post).await
}

async fn delete_version(
    kind: Kind,
    State(state): State<AppState>,
    Path((repo, version)): Path<(String, String)>,
    post: Post,
) -> WebResult {
    let s = &post.session;
    let v = load_version(&state, s, kind, &repo, &version).await?;
    ui::require(s, Permission::WriteRegistry)?;
    match yatai_app::registry::delete_version(&state, &s.caller, &v).await {
        Ok(()) => Ok(ui::back(&repo_href(kind, &v.repository_name), &format!("Deleted {}.", v.tag()))),
        Err(AppError::Conflict(m)) => {
            Ok(ui::back(&version_href(kind, &v.repository_name, &v.version), &format!("Not deleted: {m}")))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn download_model(state: State<AppState>, s: Session, p: Path<(String, String)>) -> WebResult {
    download(Kind::Model, state, s, p).await
}

pub async fn download_bento(state: State<AppState>, s: Session, p: Path<(String, String)>) -> WebResult {
    download(Kind::Bento, state, s, p).await
}

/// Streams the archive through yatai, as the API's download does.
async fn download(
    kind: Kind,
    State(state): State<AppState>,
    s: Session,
    Path((repo, version)): Path<(String, String)>,
) -> WebResult<Response> {
    let v = load_version(&state, &s, kind, &repo, &version).await?;
    ui::require(&s, Permission::ReadRegistry)?;
    let resp = yatai_api::stream_archive(&state, &v).await?;
    record(&state, &s.caller, "pulled", kind.as_str(), &v.tag(), serde_json::json!({"mode": "dashboard"})).await;
    Ok(resp)
}
