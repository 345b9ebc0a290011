//! Clusters: the list with each Kubernetes cluster's reachability, a
//! cluster's page (settings, health, deployments), and for admins the forms
//! that register, change and remove one — through `yatai_app::clusters`, as
//! the API and `yatai cluster` do.
//!
//! A kubeconfig goes in and never comes out: no page shows it, and a
//! refused form comes back with every field but the kubeconfig (as a
//! password field would), so the text is never sent back to the browser.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use yatai_app::AppError;
use yatai_app::AppState;
use yatai_app::auth::Permission;
use yatai_app::clusters::{self as app, ClusterChange, ClusterSettings, ClusterView, NewClusterInput};
use yatai_core::deploy::{ClusterHealth, DEFAULT_NAMESPACE};
use yatai_store::DeploymentFilter;

use super::auth::NoticeParam;
use super::deployments::href as deployment_href;
use crate::session::{FormData, Post, Session};
use crate::ui::{self, WebError, WebResult, field_error};

type Errors = Vec<(String, String)>;

/// How long the list waits for each cluster's health (all are probed at
/// once): the page stays fast when a cluster does not answer, which its
/// badge then says.
const LIST_PROBE: Duration = Duration::from_secs(2);
/// How long a cluster's page waits for its health.
const PAGE_PROBE: Duration = Duration::from_secs(10);
/// Deployments listed on a cluster's page (the deployments list has all).
const SHOWN_DEPLOYMENTS: i64 = 20;

pub(crate) fn href(name: &str) -> String {
    format!("/clusters/{}", ui::enc(name))
}

/// Whether the cluster can run deployments now, as a badge.
fn health_badge(h: &ClusterHealth) -> Markup {
    let ok = h.reachable && h.crds_installed && h.operator_running && h.problems.is_empty();
    let (class, text) = match (h.reachable, ok) {
        (false, _) => ("s-failed", "unreachable"),
        (true, false) => ("s-deploying", "needs attention"),
        (true, true) => ("s-running", "ready"),
    };
    let title = h.problems.first().map(String::as_str).unwrap_or("reachable, CRDs installed, operator running");
    html! { span.badge class=(class) data-testid="health" title=(title) { (text) } }
}

fn not_found(s: &Session, name: &str) -> WebError {
    WebError::not_found(format!("There is no cluster {name:?} in {}.", s.caller.org.name))
}

fn found(s: &Session, name: &str, e: AppError) -> WebError {
    match e {
        AppError::NotFound(_) => not_found(s, name),
        other => other.into(),
    }
}

// ---- list -----------------------------------------------------------------------

pub async fn list(State(state): State<AppState>, s: Session, Query(q): Query<NoticeParam>) -> WebResult {
    let clusters = app::list_within(&state, &s.caller, Some(LIST_PROBE)).await?;
    let counts = state.store.cluster_deployment_counts(s.org_uid()).await?;
    let admin = s.can(Permission::Admin);
    let body = html! {
        div.actions { h1 { "Clusters" } @if admin { a.button href="/clusters/new" data-action="add-cluster" { "Add cluster" } } }
        (ui::notice(q.notice.as_deref()))
        p { "Where deployments run. " code { "local" } " is this machine: replicas are processes supervised by yatai. A Kubernetes cluster runs them through the yatai operator." }
        @if clusters.is_empty() {
            div.empty {
                p { "No cluster has been used yet. The " code { "local" } " cluster appears with the first deployment." }
                a.button href="/deployments/new" { "Create a deployment" }
            }
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th { "Name" } th { "Kind" } th { "Health" } th.num { "Deployments" } th.hide-narrow { "Description" } th.hide-narrow { "Created" } } }
                    tbody {
                        @for c in &clusters {
                            tr data-testid="row" data-name=(c.row.name) {
                                td { a href=(href(&c.row.name)) { (c.row.name) } }
                                td { (c.row.kind) }
                                td { @match &c.health { Some(h) => (health_badge(h)), None => span.muted { "this machine" } } }
                                td.num {
                                    a href=(format!("/deployments?cluster={}", ui::enc(&c.row.name))) {
                                        (counts.iter().find(|(u, _)| *u == c.row.uid).map(|(_, n)| *n).unwrap_or(0))
                                        span.visually-hidden { " deployments on " (c.row.name) }
                                    }
                                }
                                td.hide-narrow { (c.row.description) }
                                td.hide-narrow { (ui::time(c.row.created_at)) }
                            }
                        }
                    }
                }
            }
            p.hint { "Health is checked when the page loads, for " (LIST_PROBE.as_secs()) " s at most; a cluster's page checks again, and says what to do." }
        }
    };
    Ok(ui::page(&s, "clusters", "Clusters", body))
}

// ---- one cluster ----------------------------------------------------------------

pub async fn detail(
    State(state): State<AppState>,
    s: Session,
    Path(name): Path<String>,
    Query(q): Query<NoticeParam>,
) -> WebResult {
    let v = app::get_within(&state, &s.caller, &name, PAGE_PROBE).await.map_err(|e| found(&s, &name, e))?;
    let filter =
        DeploymentFilter { cluster_uid: Some(v.row.uid.clone()), count: SHOWN_DEPLOYMENTS, ..Default::default() };
    let (deployments, total) = state.store.list_deployments(s.org_uid(), &filter).await?;
    let admin = s.can(Permission::Admin);
    let c = &v.row;
    let all_deployments = format!("/deployments?cluster={}", ui::enc(&c.name));
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/clusters" { "Clusters" } " /" }
        h1 { (c.name) " " @if let Some(h) = &v.health { (health_badge(h)) } }
        (ui::notice(q.notice.as_deref()))
        dl.facts data-testid="settings" {
            dt { "Kind" } dd data-testid="kind" { (c.kind) }
            @if !c.description.is_empty() { dt { "Description" } dd { (c.description) } }
            @if let Some(st) = &v.settings { (settings_facts(st)) }
            dt { "Created" } dd { (ui::time(c.created_at)) @if let Some(by) = &c.creator_name { " by " (by) } }
        }
        @if admin {
            div.actions {
                a.button.secondary href=(format!("{}/edit", href(&c.name))) data-action="edit" { "Edit" }
                @if v.settings.is_some() { button.danger type="button" data-dialog="confirm-remove" { "Remove" } }
            }
            @if v.settings.is_some() {
                dialog id="confirm-remove" aria-labelledby="confirm-remove-title" {
                    h3 id="confirm-remove-title" { "Remove " (c.name) "?" }
                    p { "yatai forgets the cluster and its stored credentials. Nothing in the cluster changes. A cluster that still has deployments is not removed: delete them first." }
                    form data-form="cluster-remove" method="post" action=(format!("{}/remove", href(&c.name))) {
                        (ui::csrf(&s))
                        div.actions {
                            button.danger type="submit" data-action="confirm" { "Remove" }
                            button.secondary type="button" data-close { "Cancel" }
                        }
                    }
                }
            }
        }
        @if let Some(h) = &v.health {
            h2 { "Health" }
            dl.facts data-testid="health-facts" {
                dt { "Reachable" } dd data-testid="health-reachable" { @if h.reachable { "yes" } @else { "no" } }
                dt { "Kubernetes version" } dd data-testid="health-version" { (h.version.as_deref().unwrap_or("—")) }
                dt { "yatai's CRDs" } dd data-testid="health-crds" { @if h.crds_installed { "installed" } @else { "missing" } }
                dt { "Operator" } dd data-testid="health-operator" { @if h.operator_running { "running" } @else { "not running" } }
                dt { "Domain suffix" } dd data-testid="health-domain" {
                    (h.domain_suffix.as_deref().or(v.settings.as_ref().and_then(|st| st.domain_suffix.as_deref())).unwrap_or("—"))
                }
            }
            @if h.problems.is_empty() {
                p.muted data-testid="no-problems" { "Nothing to fix: deployments can run here." }
            } @else {
                h3 { "What to fix" }
                ul data-testid="problems" { @for p in &h.problems { li { (p) } } }
            }
            p.hint { "Checked just now (for " (PAGE_PROBE.as_secs()) " s at most)." }
        }
        h2 { "Deployments" }
        @if deployments.is_empty() {
            p.muted data-testid="no-deployments" { "None yet. " @if s.can(Permission::WriteCluster) { a href="/deployments/new" { "Create one" } " and choose this cluster." } }
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th { "Name" } th { "Status" } th.hide-narrow { "Namespace" } th.hide-narrow { "Created" } } }
                    tbody {
                        @for d in &deployments {
                            tr data-testid="deployment" data-name=(d.name) {
                                td { a href=(deployment_href(&d.name)) { (d.name) } }
                                td { (ui::status_badge(&d.status)) }
                                td.hide-narrow { (d.namespace) }
                                td.hide-narrow { (ui::time(d.created_at)) }
                            }
                        }
                    }
                }
            }
            p { a href=(all_deployments) data-testid="all-deployments" { "All " (total) " deployments on " (c.name) } }
        }
    };
    Ok(ui::page(&s, "cluster", &c.name, body))
}

fn settings_facts(st: &ClusterSettings) -> Markup {
    let or_default = |v: &Option<String>, default: &str| -> Markup {
        match v {
            Some(v) => html! { (v) },
            None => html! { span.muted { (default) } },
        }
    };
    html! {
        dt { "Connection" } dd data-testid="connection" {
            @if st.in_cluster { "in-cluster (the server's service account)" } @else { "kubeconfig (stored encrypted, never shown)" }
        }
        @if !st.in_cluster { dt { "Context" } dd { (or_default(&st.context, "the kubeconfig's current context")) } }
        dt { "Namespace" } dd data-testid="namespace" { (st.namespace) }
        dt { "Operator namespace" } dd { (or_default(&st.operator_namespace, "found by its Lease")) }
        dt { "Image registry" } dd { (or_default(&st.image_registry, "the operator's")) }
        dt { "Domain suffix" } dd { (or_default(&st.domain_suffix, "the operator's")) }
    }
}

// ---- the form -------------------------------------------------------------------

/// What the form holds: from a request, or from a cluster's settings. Never
/// a kubeconfig.
#[derive(Default)]
struct FormValues {
    name: String,
    description: String,
    in_cluster: bool,
    context: String,
    namespace: String,
    image_registry: String,
    domain_suffix: String,
    operator_namespace: String,
}

impl FormValues {
    fn from_form(f: &FormData) -> Self {
        FormValues {
            name: f.get("name").to_owned(),
            description: f.get("description").to_owned(),
            in_cluster: !f.get("in_cluster").is_empty(),
            context: f.get("context").to_owned(),
            namespace: f.get("namespace").to_owned(),
            image_registry: f.get("image_registry").to_owned(),
            domain_suffix: f.get("domain_suffix").to_owned(),
            operator_namespace: f.get("operator_namespace").to_owned(),
        }
    }

    fn of(v: &ClusterView) -> Self {
        let st = v.settings.clone().unwrap_or_default();
        FormValues {
            name: v.row.name.clone(),
            description: v.row.description.clone(),
            in_cluster: st.in_cluster,
            context: st.context.unwrap_or_default(),
            namespace: st.namespace,
            image_registry: st.image_registry.unwrap_or_default(),
            domain_suffix: st.domain_suffix.unwrap_or_default(),
            operator_namespace: st.operator_namespace.unwrap_or_default(),
        }
    }
}

/// The form field an error from the use case belongs beside.
fn place(e: &AppError) -> Option<&'static str> {
    match e {
        AppError::Invalid { field: Some(f), .. } => Some(*f),
        AppError::Invalid { field: None, .. } => Some("form"),
        AppError::Conflict(_) => Some("name"),
        AppError::TooLarge(_) => Some("kube_config"),
        _ => None,
    }
}

fn form_page(
    s: &Session,
    editing: Option<&ClusterView>,
    v: &FormValues,
    kubeconfig_sent: bool,
    errors: &Errors,
) -> Response {
    let kubernetes = editing.is_none_or(|c| c.settings.is_some());
    let (page_id, title, action) = match editing {
        Some(c) => ("cluster-edit", format!("Edit {}", c.row.name), format!("{}/edit", href(&c.row.name))),
        None => ("cluster-new", "Add a Kubernetes cluster".to_owned(), "/clusters/new".to_owned()),
    };
    let described = |f: &str| format!("{f}-error");
    let body = html! {
        @if let Some(c) = editing { nav.crumbs aria-label="Breadcrumb" { a href="/clusters" { "Clusters" } " / " a href=(href(&c.row.name)) { (c.row.name) } " /" } }
        @else { nav.crumbs aria-label="Breadcrumb" { a href="/clusters" { "Clusters" } " /" } }
        h1 { (title) }
        @if editing.is_none() {
            p { "yatai checks the cluster before it keeps it: reachable, yatai's CRDs installed, the credentials allowed what yatai does in the namespace, and an operator running. A cluster that fails a check is refused, saying what to do." }
        }
        form.card.stack data-form="cluster" method="post" action=(action) novalidate {
            (ui::csrf(s))
            (field_error("form", errors))
            label for="name" { "Name" }
            @if editing.is_some() {
                input id="name" name="name" type="text" value=(v.name) readonly;
            } @else {
                input id="name" name="name" type="text" value=(v.name) required maxlength="63" pattern="[a-z]([a-z0-9\\-]*[a-z0-9])?" placeholder="prod" autocomplete="off" aria-describedby=(described("name"));
                p.hint { "Lowercase letters, digits and '-'; what deployments and " code { "bentoml --cluster" } " name it by." }
            }
            (field_error("name", errors))
            label for="description" { "Description (optional)" }
            input id="description" name="description" type="text" maxlength="2000" value=(v.description) aria-describedby=(described("description"));
            (field_error("description", errors))
            @if kubernetes {
                fieldset {
                    legend { "How yatai reaches the cluster" }
                    div.checks {
                        label for="in_cluster" {
                            input id="in_cluster" name="in_cluster" type="checkbox" value="on" checked[v.in_cluster];
                            span { "In-cluster: the server's own service account (yatai runs in that cluster)" }
                        }
                    }
                    label for="kube_config" { "Kubeconfig" @if editing.is_some() { " (leave empty to keep the stored one)" } }
                    div data-kubeconfig-file hidden {
                        label for="kubeconfig_file" { "Read it from a file" }
                        input id="kubeconfig_file" type="file" accept=".yaml,.yml,.conf,.config,.kubeconfig,text/plain,application/yaml";
                        p.hint data-kubeconfig-status role="status" {}
                    }
                    textarea id="kube_config" name="kube_config" rows="8" autocomplete="off" spellcheck="false" placeholder="apiVersion: v1\nkind: Config\n…" aria-describedby=(format!("kube_config-hint {}", described("kube_config"))) {}
                    p.hint id="kube_config-hint" {
                        "The file's text: " code { "kubectl config view --minify --flatten" } " prints the current context with its certificates. It is stored encrypted and is never shown again"
                        @if kubeconfig_sent { strong { " — nor sent back: paste or choose it again" } }
                        "."
                    }
                    (field_error("kube_config", errors))
                    label for="context" { "Context (optional)" }
                    input id="context" name="context" type="text" value=(v.context) placeholder="the kubeconfig's current context" aria-describedby=(described("context"));
                    (field_error("context", errors))
                }
                div.grid {
                    div {
                        label for="namespace" { "Namespace" }
                        input id="namespace" name="namespace" type="text" value=(v.namespace) placeholder=(DEFAULT_NAMESPACE) aria-describedby=(described("namespace"));
                        p.hint { "Where deployments go; it must exist." }
                        (field_error("namespace", errors))
                    }
                    div {
                        label for="operator_namespace" { "Operator namespace (optional)" }
                        input id="operator_namespace" name="operator_namespace" type="text" value=(v.operator_namespace) placeholder="found by its Lease" aria-describedby=(described("operator_namespace"));
                        (field_error("operator_namespace", errors))
                    }
                }
                div.grid {
                    div {
                        label for="image_registry" { "Image registry (optional)" }
                        input id="image_registry" name="image_registry" type="text" value=(v.image_registry) placeholder="registry.example.com/bentos" aria-describedby=(described("image_registry"));
                        (field_error("image_registry", errors))
                    }
                    div {
                        label for="domain_suffix" { "Domain suffix (optional)" }
                        input id="domain_suffix" name="domain_suffix" type="text" value=(v.domain_suffix) placeholder="the operator's" aria-describedby=(described("domain_suffix"));
                        p.hint { "Deployments' hosts end with it: NAME-NAMESPACE.SUFFIX." }
                        (field_error("domain_suffix", errors))
                    }
                }
            }
            button type="submit" { @if editing.is_some() { "Save" } @else { "Add cluster" } }
            @if kubernetes { p.hint { "Saving a connection setting checks the cluster again; it may take a few seconds." } }
        }
    };
    let mut resp = ui::page(s, page_id, &title, body);
    if !errors.is_empty() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    // The form takes credentials: nothing of it is kept by the browser.
    resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    resp
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned()).filter(|s| !s.is_empty())
}

pub async fn new_page(s: Session) -> WebResult {
    ui::require(&s, Permission::Admin)?;
    let v = FormValues { namespace: DEFAULT_NAMESPACE.into(), ..Default::default() };
    Ok(form_page(&s, None, &v, false, &Vec::new()))
}

pub async fn create(State(state): State<AppState>, post: Post) -> WebResult {
    let (s, f) = (&post.session, &post.form);
    ui::require(s, Permission::Admin)?;
    let v = FormValues::from_form(f);
    let kubeconfig = f.raw("kube_config").replace("\r\n", "\n");
    let sent = !kubeconfig.trim().is_empty();
    let input = NewClusterInput {
        name: v.name.clone(),
        description: v.description.clone(),
        kubeconfig: sent.then_some(kubeconfig),
        in_cluster: v.in_cluster,
        context: some(&v.context),
        namespace: some(&v.namespace),
        image_registry: some(&v.image_registry),
        domain_suffix: some(&v.domain_suffix),
        operator_namespace: some(&v.operator_namespace),
    };
    match app::add(&state, &s.caller, input).await {
        Ok(c) => Ok(ui::back(&href(&c.row.name), &format!("Added cluster {}.", c.row.name))),
        Err(e) => match place(&e) {
            Some(field) => Ok(form_page(s, None, &v, sent, &vec![(field.into(), e.message().to_owned())])),
            None => Err(e.into()),
        },
    }
}

pub async fn edit_page(State(state): State<AppState>, s: Session, Path(name): Path<String>) -> WebResult {
    // Without the probe: the form needs only the stored settings.
    let c = app::list_within(&state, &s.caller, None)
        .await?
        .into_iter()
        .find(|c| c.row.name == name)
        .ok_or_else(|| not_found(&s, &name))?;
    ui::require(&s, Permission::Admin)?;
    Ok(form_page(&s, Some(&c), &FormValues::of(&c), false, &Vec::new()))
}

/// The change a submitted edit form asks for: only what differs from the
/// stored settings, so that a new description does not probe the cluster.
fn change_of(old: &FormValues, new: &FormValues, kubeconfig: Option<String>) -> ClusterChange {
    let differs = |a: &String, b: &String| (a != b).then(|| b.clone());
    ClusterChange {
        description: differs(&old.description, &new.description),
        kubeconfig,
        in_cluster: (old.in_cluster != new.in_cluster).then_some(new.in_cluster),
        context: differs(&old.context, &new.context),
        namespace: differs(&old.namespace, &new.namespace)
            .map(|n| if n.is_empty() { DEFAULT_NAMESPACE.into() } else { n }),
        image_registry: differs(&old.image_registry, &new.image_registry),
        domain_suffix: differs(&old.domain_suffix, &new.domain_suffix),
        operator_namespace: differs(&old.operator_namespace, &new.operator_namespace),
    }
}

pub async fn update(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let (s, f) = (&post.session, &post.form);
    let c = app::list_within(&state, &s.caller, None)
        .await?
        .into_iter()
        .find(|c| c.row.name == name)
        .ok_or_else(|| not_found(s, &name))?;
    ui::require(s, Permission::Admin)?;
    let old = FormValues::of(&c);
    let mut v = FormValues::from_form(f);
    v.name = c.row.name.clone();
    let change = if c.settings.is_some() {
        let kubeconfig = Some(f.raw("kube_config").replace("\r\n", "\n")).filter(|k| !k.trim().is_empty());
        change_of(&old, &v, kubeconfig)
    } else {
        // This machine: only its description.
        ClusterChange { description: Some(v.description.clone()), ..Default::default() }
    };
    let sent = change.kubeconfig.is_some();
    match app::update(&state, &s.caller, &name, change).await {
        Ok(c) => Ok(ui::back(&href(&c.row.name), "Saved.")),
        Err(e) => match place(&e) {
            Some(field) => Ok(form_page(s, Some(&c), &v, sent, &vec![(field.into(), e.message().to_owned())])),
            None => Err(found(s, &name, e)),
        },
    }
}

pub async fn remove(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let s = &post.session;
    match app::remove(&state, &s.caller, &name).await {
        Ok(()) => Ok(ui::back("/clusters", &format!("Removed cluster {name}."))),
        Err(e @ (AppError::Conflict(_) | AppError::Invalid { .. })) => {
            Ok(ui::back(&href(&name), &format!("Not removed: {}", e.message())))
        }
        Err(e) => Err(found(s, &name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> FormValues {
        FormValues {
            name: "prod".into(),
            description: "d".into(),
            namespace: "yatai".into(),
            domain_suffix: "apps.example.com".into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_edit_changes_only_what_differs() {
        let old = values();
        let change = change_of(&old, &FormValues { description: "new".into(), ..values() }, None);
        assert_eq!(change.description.as_deref(), Some("new"));
        assert!(change.namespace.is_none() && change.domain_suffix.is_none() && change.in_cluster.is_none());
        let change =
            change_of(&old, &FormValues { domain_suffix: String::new(), namespace: String::new(), ..values() }, None);
        assert_eq!(change.domain_suffix.as_deref(), Some(""), "an emptied setting is cleared");
        assert_eq!(change.namespace.as_deref(), Some(DEFAULT_NAMESPACE), "an emptied namespace is the default");
        let change = change_of(&old, &FormValues { in_cluster: true, ..values() }, None);
        assert_eq!(change.in_cluster, Some(true));
    }

    #[test]
    fn errors_from_the_use_case_land_beside_their_field() {
        assert_eq!(place(&AppError::invalid_field("kube_config", "unreachable")), Some("kube_config"));
        assert_eq!(place(&AppError::conflict("exists")), Some("name"));
        assert_eq!(place(&AppError::too_large("big")), Some("kube_config"));
        assert_eq!(place(&AppError::invalid("x")), Some("form"));
        assert_eq!(place(&AppError::Forbidden("no".into())), None);
    }
}
