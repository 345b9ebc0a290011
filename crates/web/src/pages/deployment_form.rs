//! The create and update form of a deployment: its fields, their checks
//! (errors beside each field), and the bento version picker.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use yatai_app::AppError;
use yatai_app::AppState;
use yatai_app::auth::Permission;
use yatai_app::deployments::{self as svc, DeploymentConfig, EnvItem};
use yatai_core::Kind;
use yatai_core::deploy::check_deployment_name;
use yatai_store::{DeploymentRow, RepoSort};

use super::deployments::{find, href};
use crate::session::{FormData, Post, Session};
use crate::ui::{self, WebResult, field_error};

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
    /// Secrets of the organization attached to the deployment, by name.
    secrets: Vec<String>,
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
            secrets: f.all("secrets").into_iter().filter(|n| !n.is_empty()).map(str::to_owned).collect(),
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
        DeploymentConfig {
            envs: Some(envs),
            services: Some(services),
            secrets: Some(v.secrets.clone()),
            ..Default::default()
        },
    ))
}

/// The form field an error from the use case belongs beside: an invalid
/// input names its field; a clash is about the name; a missing bento about
/// the version picked.
fn place(e: &AppError) -> &'static str {
    match e {
        AppError::Invalid { field: Some("bento"), .. } | AppError::NotFound(_) => "bento_version",
        AppError::Invalid { field: Some(f), .. } => f,
        AppError::Conflict(_) => "name",
        _ => "form",
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
    let (secrets, _) = state.store.list_secrets(s.org_uid(), None, 0, 500).await?;
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
                input id="name" name="name" type="text" value=(v.name) placeholder="iris" pattern="[a-z]([a-z0-9\\-]*[a-z0-9])?" maxlength="50" aria-describedby=(described("name"));
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
                // This machine is always there, even before its first deployment.
                @if !clusters.iter().any(|c| c.name == svc::LOCAL_CLUSTER) { option value=(svc::LOCAL_CLUSTER) { (svc::LOCAL_CLUSTER) } }
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
            fieldset data-testid="secrets" {
                legend { "Secrets (optional)" }
                @if secrets.is_empty() && v.secrets.is_empty() {
                    p.hint { "The organization has no secrets. " a href="/secrets" { "Secrets" } " keep credentials out of the deployment's configuration." }
                } @else {
                    @for sec in &secrets {
                        label.check {
                            input type="checkbox" name="secrets" value=(sec.name) checked[v.secrets.contains(&sec.name)];
                            " " code { (sec.name) } " " span.muted { (sec.kind) ", " (sec.stage) }
                        }
                    }
                    // Attached but gone (deleted since): shown so that saving does not drop it silently.
                    @for name in v.secrets.iter().filter(|n| !secrets.iter().any(|sec| &sec.name == *n)) {
                        label.check { input type="checkbox" name="secrets" value=(name) checked; " " code { (name) } " " span.muted { "(not found)" } }
                    }
                    p.hint { "Their values reach the replicas as environment variables or files; they never show in the deployment's configuration." }
                }
                (field_error("secrets", errors))
            }
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
        cluster: svc::LOCAL_CLUSTER.into(),
        min_replicas: "1".into(),
        max_replicas: "1".into(),
        ..Default::default()
    };
    form_page(&state, &s, None, &v, &Vec::new()).await
}

async fn entry_of(state: &AppState, s: &Session, v: &FormValues) -> String {
    let version = if v.bento_version.is_empty() { "latest" } else { &v.bento_version };
    match yatai_app::registry::find_version(state, &s.caller, Kind::Bento, &v.bento_repository, version).await {
        Ok(b) => svc::entry_service(&serde_json::from_str(&b.manifest).unwrap_or(Value::Null)),
        Err(_) => "apiserver".into(),
    }
}

pub async fn create(State(state): State<AppState>, post: Post) -> WebResult {
    let s = &post.session;
    ui::require(s, Permission::WriteCluster)?;
    let v = FormValues::from_form(&post.form);
    let entry = entry_of(&state, s, &v).await;
    // Every field's error at once: the name's beside the others'.
    let mut errors = Errors::new();
    if !v.name.is_empty()
        && let Err(e) = check_deployment_name(&v.name)
    {
        errors.push(("name".into(), e));
    }
    let (tag, config) = match parse(&v, &entry) {
        Ok(x) if errors.is_empty() => x,
        Ok(_) => return form_page(&state, s, None, &v, &errors).await,
        Err(more) => {
            errors.extend(more);
            return form_page(&state, s, None, &v, &errors).await;
        }
    };
    let cluster = Some(v.cluster.as_str()).filter(|c| !c.is_empty());
    let request = svc::DeploymentRequest {
        cluster,
        namespace: None,
        name: Some(&v.name),
        bento: &tag,
        config: &config,
        description: &v.description,
    };
    match svc::create(&state, &s.caller, request).await {
        Ok(d) => Ok(Redirect::to(&href(&d.name)).into_response()),
        Err(e @ (AppError::Internal(_) | AppError::Unavailable(_) | AppError::StorageFull(_))) => {
            // The deployment may exist (stored, then failed to start): show it.
            if let Ok(d) = svc::find(&state, &s.caller, cluster, &v.name).await {
                return Ok(ui::back(&href(&d.name), &format!("Created, but it did not start: {}", e.message())));
            }
            Err(e.into())
        }
        Err(e) => form_page(&state, s, None, &v, &vec![(place(&e).into(), e.message().to_owned())]).await,
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
        v.secrets = config.secrets.unwrap_or_default();
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
    match svc::update(&state, &s.caller, &d, &tag, &config).await {
        Ok(d) => Ok(ui::back(&href(&d.name), "Updated: rolling out a new revision.")),
        Err(e @ (AppError::Internal(_) | AppError::Unavailable(_) | AppError::StorageFull(_))) => Err(e.into()),
        Err(e) => form_page(&state, s, Some(&d), &v, &vec![(place(&e).into(), e.message().to_owned())]).await,
    }
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
    fn errors_from_the_use_case_land_beside_their_field() {
        assert_eq!(place(&AppError::invalid_field("max_replicas", "too many")), "max_replicas");
        assert_eq!(place(&AppError::invalid_field("bento", "not uploaded")), "bento_version");
        assert_eq!(place(&AppError::conflict("deployment \"iris\" already exists")), "name");
        assert_eq!(place(&AppError::invalid("something else")), "form");
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
}
