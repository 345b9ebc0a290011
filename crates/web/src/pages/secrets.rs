//! Secrets: the list (keys, type, stage, the deployments using each), a
//! secret's page (its keys and where it is used), and for admins the forms
//! that create one, replace its values and delete it — through
//! `yatai_app::secrets`, as the API and `bentoml secret …` do.
//!
//! Values go in and never come out: no page shows one, and a refused form
//! comes back with its keys and settings but without the values typed (as a
//! password field would), saying which ones to type again. In the replace
//! form an empty value keeps the value the key has.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use yatai_app::AppError;
use yatai_app::AppState;
use yatai_app::auth::Permission;
use yatai_app::secrets::{self as app, ContentInput, KeepingInput, KeptItem, SecretView};
use yatai_core::secret::{HOME_VAR, SecretItem};

use super::deployments::href as deployment_href;
use crate::session::{FormData, Post, Session};
use crate::ui::{self, WebError, WebResult, field_error};

type Errors = Vec<(String, String)>;

/// Secrets listed on a page.
const PAGE: i64 = 50;
/// Empty item rows a form offers below the filled ones (the script adds more).
const BLANK_ROWS: usize = 2;

pub(crate) fn href(name: &str) -> String {
    format!("/secrets/{}", ui::enc(name))
}

fn not_found(s: &Session, name: &str) -> WebError {
    WebError::not_found(format!("There is no secret {name:?} in {}.", s.caller.org.name))
}

fn found(s: &Session, name: &str, e: AppError) -> WebError {
    match e {
        AppError::NotFound(_) => not_found(s, name),
        other => other.into(),
    }
}

/// A deployment shown as `namespace/name`, linked to its page.
fn deployment_link(shown: &str) -> Markup {
    let name = shown.rsplit_once('/').map(|(_, n)| n).unwrap_or(shown);
    html! { a href=(deployment_href(name)) data-testid="used-by" data-name=(name) { (shown) } }
}

/// Pages with a secret form are not kept by the browser.
fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    resp
}

// ---- list -----------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct ListParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    start: Option<i64>,
    #[serde(default)]
    notice: Option<String>,
}

pub async fn list(State(state): State<AppState>, s: Session, Query(p): Query<ListParams>) -> WebResult {
    let start = p.start.unwrap_or(0).max(0);
    let search = p.q.trim();
    let (secrets, total) = app::list(&state, &s.caller, Some(search).filter(|q| !q.is_empty()), start, PAGE).await?;
    let usage = app::usage(&state, &s.caller).await?;
    let admin = s.can(Permission::Admin);
    let link = |start: i64| format!("/secrets{}", ui::qs(&[("q", &p.q), ("start", &start.to_string())]));
    let body = html! {
        div.actions { h1 { "Secrets" } @if admin { a.button href="/secrets/new" data-action="new-secret" { "New secret" } } }
        (ui::notice(p.notice.as_deref()))
        p { "Named values deployments receive as environment variables or files (" code { "bentoml deployment create … --secret NAME" } "). Values are stored encrypted and are never shown: only their keys are." }
        form.toolbar method="get" role="search" {
            div { label for="q" { "Search by name" } input id="q" name="q" type="search" value=(p.q); }
            button type="submit" { "Search" }
        }
        @if secrets.is_empty() {
            div.empty {
                @if !search.is_empty() { p { "No secret matches. " a href="/secrets" { "Show all" } } }
                @else {
                    p { strong { "No secrets yet." } @if admin { " " a href="/secrets/new" { "Create one" } ", or" } " from the command line:" }
                    (ui::copyable("empty-cmd", "bentoml secret create api-keys API_KEY=… REGION=eu"))
                }
            }
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th { "Name" } th { "Type" } th { "Stage" } th.num { "Keys" } th.hide-narrow { "Description" } th { "Used by" } th.hide-narrow { "Updated" } } }
                    tbody {
                        @for v in &secrets {
                            @let r = &v.row;
                            tr data-testid="row" data-name=(r.name) {
                                td { a href=(href(&r.name)) { (r.name) } }
                                td data-testid="type" { (r.kind) }
                                td data-testid="stage" { (r.stage) }
                                td.num data-testid="keys" title=(v.items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>().join(", ")) { (v.items.len()) }
                                td.hide-narrow { (r.description) }
                                td {
                                    @match usage.get(&r.name) {
                                        Some(users) => { @for (i, d) in users.iter().enumerate() { @if i > 0 { ", " } (deployment_link(d)) } }
                                        None => span.muted { "—" },
                                    }
                                }
                                td.hide-narrow { (ui::time(r.updated_at.unwrap_or(r.created_at))) }
                            }
                        }
                    }
                }
            }
            (ui::pager((start > 0).then(|| link(0)), (start + PAGE < total).then(|| link(start + PAGE))))
        }
    };
    Ok(no_store(ui::page(&s, "secrets", "Secrets", body)))
}

// ---- the forms' state -----------------------------------------------------------

/// An item row of a form: never a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RowValues {
    key: String,
    sub_path: String,
    /// A value was typed in this row and is not sent back.
    typed: bool,
    /// The key is the secret's now (an empty value keeps its value).
    stored: bool,
}

/// What a form holds: from a request or from a secret, without values.
#[derive(Debug, Default)]
struct FormValues {
    name: String,
    description: String,
    kind: String,
    stage: String,
    path: String,
    rows: Vec<RowValues>,
}

/// A row as submitted: key, sub_path, value (the textarea's line breaks as `\n`).
struct Submitted {
    key: String,
    sub_path: String,
    value: String,
}

/// The item rows of a submitted form, in order; rows with neither key nor value are dropped.
fn submitted_rows(f: &FormData) -> Vec<Submitted> {
    let (keys, subs, values) = (f.all("item_key"), f.all("item_sub_path"), f.all("item_value"));
    let n = keys.len().max(subs.len()).max(values.len());
    (0..n)
        .map(|i| Submitted {
            key: keys.get(i).map(|k| k.trim()).unwrap_or("").to_owned(),
            sub_path: subs.get(i).map(|k| k.trim()).unwrap_or("").to_owned(),
            value: values.get(i).copied().unwrap_or("").replace("\r\n", "\n"),
        })
        .filter(|r| !r.key.is_empty() || !r.value.is_empty())
        .collect()
}

impl FormValues {
    fn from_form(f: &FormData, rows: &[Submitted], stored: &[String]) -> Self {
        FormValues {
            name: f.get("name").to_owned(),
            description: f.get("description").to_owned(),
            kind: f.get("type").to_owned(),
            stage: f.get("stage").to_owned(),
            path: f.get("path").to_owned(),
            rows: rows
                .iter()
                .map(|r| RowValues {
                    key: r.key.clone(),
                    sub_path: r.sub_path.clone(),
                    typed: !r.value.is_empty(),
                    stored: stored.contains(&r.key),
                })
                .collect(),
        }
    }

    fn of(v: &SecretView) -> Self {
        FormValues {
            name: v.row.name.clone(),
            description: v.row.description.clone(),
            kind: v.row.kind.clone(),
            stage: v.row.stage.clone(),
            path: v.row.path.clone().unwrap_or_default(),
            rows: v
                .items
                .iter()
                .map(|i| RowValues {
                    key: i.key.clone(),
                    sub_path: i.sub_path.clone().unwrap_or_default(),
                    typed: false,
                    stored: true,
                })
                .collect(),
        }
    }
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned()).filter(|s| !s.is_empty())
}

/// A refusal of the rows before the use case sees them: a value without a
/// key, or (when creating) a key without a value.
fn check_rows(rows: &[Submitted], creating: bool) -> Result<(), String> {
    if let Some(i) = rows.iter().position(|r| r.key.is_empty()) {
        return Err(format!("Item {} has a value but no key: give it one, or empty the row.", i + 1));
    }
    if creating && let Some(r) = rows.iter().find(|r| r.value.is_empty()) {
        return Err(format!("Key {:?} has no value: type one.", r.key.chars().take(60).collect::<String>()));
    }
    Ok(())
}

/// The form field an error from the use case belongs beside.
fn place(e: &AppError) -> Option<&'static str> {
    match e {
        AppError::Invalid { field: Some(f), .. } => Some(match *f {
            "name" | "description" | "type" | "stage" | "path" | "items" => f,
            _ => "form",
        }),
        AppError::Invalid { field: None, .. } | AppError::TooLarge(_) => Some("form"),
        AppError::Conflict(_) => Some("name"),
        _ => None,
    }
}

// ---- the form's markup ----------------------------------------------------------

/// The fields shared by the new and the replace form: description, type,
/// stage, path and the item rows.
fn content_fields(v: &FormValues, replacing: bool, errors: &Errors) -> Markup {
    let kind = if v.kind.is_empty() { "env" } else { v.kind.as_str() };
    let stage = if v.stage.is_empty() { "runtime" } else { v.stage.as_str() };
    let mut rows = v.rows.clone();
    rows.extend(std::iter::repeat_n(RowValues::default(), BLANK_ROWS));
    let retype = rows.iter().any(|r| r.typed);
    html! {
        label for="description" { "Description (optional)" }
        input id="description" name="description" type="text" maxlength="2000" value=(v.description) aria-describedby="description-error";
        (field_error("description", errors))
        div.grid {
            div {
                label for="type" { "Type" }
                select id="type" name="type" aria-describedby="type-hint type-error" {
                    option value="env" selected[kind == "env"] { "env — environment variables" }
                    option value="mountfile" selected[kind == "mountfile"] { "mountfile — files" }
                }
                p.hint id="type-hint" { "env: each key is a variable's name. mountfile: each item is a file under the path." }
                (field_error("type", errors))
            }
            div {
                label for="stage" { "Stage" }
                select id="stage" name="stage" aria-describedby="stage-error" {
                    option value="runtime" selected[stage == "runtime"] { "runtime — the running replicas" }
                    option value="build" selected[stage == "build"] { "build — the image build only" }
                    option value="all" selected[stage == "all"] { "all — both" }
                }
                (field_error("stage", errors))
            }
        }
        label for="path" { "Mount path (mountfile only)" }
        input id="path" name="path" type="text" value=(v.path) placeholder=(HOME_VAR) autocomplete="off" aria-describedby="path-hint path-error";
        p.hint id="path-hint" { "The directory the files go in: " code { (HOME_VAR) } " (the replica's BentoML home, the default) or a directory below it, e.g. " code { (HOME_VAR) "/credentials" } "." }
        (field_error("path", errors))
        h3 { "Items" }
        @if replacing {
            p.hint { "Leave a value empty to keep the value its key has now; a new key needs a value. Remove a key by emptying its row." }
        }
        @if retype {
            p.field-error data-testid="retype" role="alert" {
                "Values are never sent back to the browser: type again the values marked below"
                @if replacing { " (left empty, a key keeps its stored value)" }
                "."
            }
        }
        div data-items {
            @for (i, r) in rows.iter().enumerate() {
                @let n = i + 1;
                fieldset.item data-item data-key=(r.key) {
                    legend { "Item " (n) }
                    div.grid {
                        div {
                            label for=(format!("item-key-{n}")) { "Key" }
                            input id=(format!("item-key-{n}")) name="item_key" type="text" value=(r.key) maxlength="253" autocomplete="off" spellcheck="false" placeholder="API_KEY";
                        }
                        div {
                            label for=(format!("item-sub-{n}")) { "File below the path (mountfile; default: the key)" }
                            input id=(format!("item-sub-{n}")) name="item_sub_path" type="text" value=(r.sub_path) autocomplete="off" spellcheck="false";
                        }
                    }
                    label for=(format!("item-value-{n}")) { "Value" }
                    textarea id=(format!("item-value-{n}")) name="item_value" rows="2" autocomplete="off" spellcheck="false"
                        placeholder=(if replacing && r.stored { "leave empty to keep the stored value" } else { "" }) {}
                    @if r.typed { p.hint data-retype { strong { "Type this value again" } ": it was not sent back." } }
                }
            }
        }
        button.secondary type="button" data-add-item hidden { "Add an item" }
        (field_error("items", errors))
        p.hint { "Values are stored encrypted and never shown again. Line breaks in a value are sent as \\n." }
    }
}

fn new_form_page(s: &Session, v: &FormValues, errors: &Errors) -> Response {
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/secrets" { "Secrets" } " /" }
        h1 { "New secret" }
        form.card.stack data-form="secret" method="post" action="/secrets/new" novalidate {
            (ui::csrf(s))
            (field_error("form", errors))
            label for="name" { "Name" }
            input id="name" name="name" type="text" value=(v.name) required maxlength="63" pattern="[a-z0-9]([a-z0-9\\-]*[a-z0-9])?" placeholder="api-keys" autocomplete="off" aria-describedby="name-hint name-error";
            p.hint id="name-hint" { "Lowercase letters, digits and '-'; what deployments name it by (" code { "--secret NAME" } ")." }
            (field_error("name", errors))
            (content_fields(v, false, errors))
            button type="submit" { "Create secret" }
        }
    };
    let mut resp = ui::page(s, "secret-new", "New secret", body);
    if !errors.is_empty() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    no_store(resp)
}

pub async fn new_page(s: Session) -> WebResult {
    ui::require(&s, Permission::Admin)?;
    let v = FormValues { rows: vec![RowValues::default()], ..Default::default() };
    Ok(new_form_page(&s, &v, &Vec::new()))
}

pub async fn create(State(state): State<AppState>, post: Post) -> WebResult {
    let (s, f) = (&post.session, &post.form);
    ui::require(s, Permission::Admin)?;
    let rows = submitted_rows(f);
    let v = FormValues::from_form(f, &rows, &[]);
    if let Err(m) = check_rows(&rows, true) {
        return Ok(new_form_page(s, &v, &vec![("items".into(), m)]));
    }
    let input = ContentInput {
        kind: v.kind.clone(),
        stage: some(&v.stage),
        path: some(&v.path),
        items: rows
            .into_iter()
            .map(|r| SecretItem { key: r.key, sub_path: some(&r.sub_path), value: r.value })
            .collect(),
    };
    match app::create(&state, &s.caller, &v.name, Some(&v.description), input).await {
        Ok(created) => Ok(ui::back(&href(&created.row.name), &format!("Created secret {}.", created.row.name))),
        Err(e) => match place(&e) {
            Some(field) => Ok(new_form_page(s, &v, &vec![(field.into(), e.message().to_owned())])),
            None => Err(e.into()),
        },
    }
}

// ---- one secret -----------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct NoticeParam {
    #[serde(default)]
    notice: Option<String>,
}

async fn detail_page(
    state: &AppState,
    s: &Session,
    v: &SecretView,
    notice: Option<&str>,
    form: Option<&FormValues>,
    errors: &Errors,
) -> WebResult {
    let used_by = app::used_by(state, &s.caller, &v.row.name).await?;
    let admin = s.can(Permission::Admin);
    let r = &v.row;
    let mountfile = r.kind == "mountfile";
    let of_secret;
    let form = match form {
        Some(f) => f,
        None => {
            of_secret = FormValues::of(v);
            &of_secret
        }
    };
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/secrets" { "Secrets" } " /" }
        h1 { (r.name) }
        (ui::notice(notice))
        dl.facts data-testid="facts" {
            dt { "Type" } dd data-testid="type" { (r.kind) @if mountfile { span.muted { " (files)" } } @else { span.muted { " (environment variables)" } } }
            dt { "Stage" } dd data-testid="stage" { (r.stage) }
            @if let Some(p) = &r.path { dt { "Mount path" } dd data-testid="path" { code { (p) } } }
            @if !r.description.is_empty() { dt { "Description" } dd data-testid="description" { (r.description) } }
            dt { "Created" } dd { (ui::time(r.created_at)) @if let Some(by) = &r.creator_name { " by " (by) } }
            dt { "Updated" } dd { (ui::opt_time(r.updated_at)) }
        }
        h2 { "Keys" }
        p.hint { "Values are stored encrypted and are never shown." }
        div.table-wrap {
            table data-testid="keys" {
                thead { tr { th { "Key" } @if mountfile { th { "File" } } } }
                tbody {
                    @for i in &v.items {
                        tr data-testid="key" data-key=(i.key) {
                            td { code { (i.key) } }
                            @if mountfile {
                                td { code { (r.path.as_deref().unwrap_or(HOME_VAR).trim_end_matches('/')) "/" (i.sub_path.as_deref().unwrap_or(&i.key)) } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Where it is used" }
        @if used_by.is_empty() {
            p.muted data-testid="unused" { "No deployment uses it." }
        } @else {
            ul data-testid="used-by-list" { @for d in &used_by { li { (deployment_link(d)) } } }
            p.hint { "Replacing its values restarts the running ones with the new values." }
        }
        p { "Use it in a deployment:" }
        (ui::copyable("use-cmd", &format!("bentoml deployment create BENTO --secret {}", r.name)))
        @if admin {
            h2 { "Replace values" }
            form.card.stack data-form="secret-replace" method="post" action=(format!("{}/replace", href(&r.name))) novalidate {
                (ui::csrf(s))
                (field_error("form", errors))
                (content_fields(form, true, errors))
                button type="submit" { "Save" }
            }
            h2 { "Delete" }
            p { "A secret a deployment uses (even a terminated one) is not deleted: update or delete those deployments first." }
            button.danger type="button" data-dialog="confirm-delete" { "Delete secret" }
            dialog id="confirm-delete" aria-labelledby="confirm-delete-title" {
                h3 id="confirm-delete-title" { "Delete " (r.name) "?" }
                p { "Its values are deleted and cannot be recovered." }
                form data-form="secret-delete" method="post" action=(format!("{}/delete", href(&r.name))) {
                    (ui::csrf(s))
                    div.actions {
                        button.danger type="submit" data-action="confirm" { "Delete" }
                        button.secondary type="button" data-close { "Cancel" }
                    }
                }
            }
        } @else {
            p.muted data-testid="read-only" { "Only administrators of " (s.caller.org.name) " create, replace or delete secrets." }
        }
    };
    let mut resp = ui::page(s, "secret", &r.name, body);
    if !errors.is_empty() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(no_store(resp))
}

pub async fn detail(
    State(state): State<AppState>,
    s: Session,
    Path(name): Path<String>,
    Query(q): Query<NoticeParam>,
) -> WebResult {
    let v = app::get(&state, &s.caller, &name).await.map_err(|e| found(&s, &name, e))?;
    detail_page(&state, &s, &v, q.notice.as_deref(), None, &Vec::new()).await
}

pub async fn replace(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let (s, f) = (&post.session, &post.form);
    ui::require(s, Permission::Admin)?;
    let v = app::get(&state, &s.caller, &name).await.map_err(|e| found(s, &name, e))?;
    let rows = submitted_rows(f);
    let stored: Vec<String> = v.items.iter().map(|i| i.key.clone()).collect();
    let mut form = FormValues::from_form(f, &rows, &stored);
    form.name = v.row.name.clone();
    if let Err(m) = check_rows(&rows, false) {
        return detail_page(&state, s, &v, None, Some(&form), &vec![("items".into(), m)]).await;
    }
    let input = KeepingInput {
        kind: form.kind.clone(),
        stage: some(&form.stage),
        path: some(&form.path),
        items: rows
            .into_iter()
            .map(|r| KeptItem { value: some(&r.value), key: r.key, sub_path: some(&r.sub_path) })
            .collect(),
    };
    match app::replace_keeping(&state, &s.caller, &name, Some(&form.description), input).await {
        Ok(saved) => Ok(ui::back(
            &href(&saved.row.name),
            &format!("Saved secret {}: deployments using it receive the new values.", saved.row.name),
        )),
        Err(e) => match place(&e) {
            Some(field) => {
                let errors = vec![(field.into(), e.message().to_owned())];
                detail_page(&state, s, &v, None, Some(&form), &errors).await
            }
            None => Err(found(s, &name, e)),
        },
    }
}

pub async fn delete(State(state): State<AppState>, Path(name): Path<String>, post: Post) -> WebResult {
    let s = &post.session;
    ui::require(s, Permission::Admin)?;
    match app::delete(&state, &s.caller, &name).await {
        Ok(_) => Ok(ui::back("/secrets", &format!("Deleted secret {name}."))),
        Err(e @ AppError::Conflict(_)) => Ok(ui::back(&href(&name), &format!("Not deleted: {}", e.message()))),
        Err(e) => Err(found(s, &name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> FormData {
        FormData(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn rows_are_read_in_order_and_empty_ones_dropped() {
        let f = form(&[
            ("item_key", " A "),
            ("item_sub_path", ""),
            ("item_value", "line 1\r\nline 2"),
            ("item_key", ""),
            ("item_sub_path", ""),
            ("item_value", ""),
            ("item_key", "B"),
            ("item_sub_path", "b.txt"),
            ("item_value", ""),
        ]);
        let rows = submitted_rows(&f);
        let got: Vec<(&str, &str, &str)> =
            rows.iter().map(|r| (r.key.as_str(), r.sub_path.as_str(), r.value.as_str())).collect();
        assert_eq!(got, [("A", "", "line 1\nline 2"), ("B", "b.txt", "")]);
        assert!(check_rows(&rows, false).is_ok(), "an empty value keeps the stored one");
        assert!(check_rows(&rows, true).unwrap_err().contains("\"B\""), "a new secret needs every value");
        let orphan = submitted_rows(&form(&[("item_key", ""), ("item_sub_path", ""), ("item_value", "v")]));
        let e = check_rows(&orphan, false).unwrap_err();
        assert!(e.contains("Item 1"), "{e}");
    }

    #[test]
    fn a_refused_form_keeps_keys_and_settings_but_no_value() {
        let f = form(&[
            ("name", "db"),
            ("type", "env"),
            ("item_key", "USER"),
            ("item_sub_path", ""),
            ("item_value", "the-typed-value"),
            ("item_key", "PASSWORD"),
            ("item_sub_path", ""),
            ("item_value", ""),
        ]);
        let rows = submitted_rows(&f);
        let v = FormValues::from_form(&f, &rows, &["PASSWORD".to_owned()]);
        assert_eq!(v.name, "db");
        assert_eq!(
            v.rows,
            vec![
                RowValues { key: "USER".into(), sub_path: String::new(), typed: true, stored: false },
                RowValues { key: "PASSWORD".into(), sub_path: String::new(), typed: false, stored: true },
            ]
        );
        assert!(!format!("{v:?}").contains("the-typed-value"));
        let html = content_fields(&v, true, &vec![("items".into(), "refused".into())]).into_string();
        assert!(!html.contains("the-typed-value"), "{html}");
        assert!(html.contains("data-retype") && html.contains("refused"), "{html}");
    }

    #[test]
    fn errors_from_the_use_case_land_beside_their_field() {
        assert_eq!(place(&AppError::invalid_field("items", "twice")), Some("items"));
        assert_eq!(place(&AppError::invalid_field("path", "below")), Some("path"));
        assert_eq!(place(&AppError::invalid_field("labels", "x")), Some("form"));
        assert_eq!(place(&AppError::conflict("exists")), Some("name"));
        assert_eq!(place(&AppError::invalid("x")), Some("form"));
        assert_eq!(place(&AppError::Forbidden("no".into())), None);
    }
}
