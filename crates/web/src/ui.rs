//! The page shell and the small pieces every page shares: errors, times,
//! sizes, status badges, pagers and sparklines.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use yatai_api::error::ApiError;
use yatai_app::AppError;
use yatai_app::auth::Permission;
use yatai_core::Timestamp;

use crate::session::Session;

/// A failure shown as a page.
#[derive(Debug)]
pub struct WebError {
    pub status: StatusCode,
    pub message: String,
}

impl WebError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        WebError { status, message: message.into() }
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }
    pub fn forbidden(what: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, what)
    }
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        WebError { status: e.status, message: e.message }
    }
}

impl From<AppError> for WebError {
    fn from(e: AppError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<yatai_store::StoreError> for WebError {
    fn from(e: yatai_store::StoreError) -> Self {
        AppError::from(e).into()
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        error_response(self)
    }
}

pub type WebResult<T = Response> = Result<T, WebError>;

pub fn error_response(e: WebError) -> Response {
    if e.status.is_server_error() {
        tracing::error!(status = %e.status, message = %e.message, "page failed");
    }
    let title = e.status.canonical_reason().unwrap_or("Error");
    let body = bare(
        "error",
        title,
        html! {
            h1 { (e.status.as_u16()) " " (title) }
            p.error-message role="alert" { (e.message) }
            p { a href="/" { "Back to the dashboard" } }
        },
    );
    (e.status, Html(body.into_string())).into_response()
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · yatai" }
            link rel="icon" href=(crate::assets::ICON_URL) type="image/svg+xml";
            link rel="stylesheet" href=(crate::assets::CSS_URL);
            script src=(crate::assets::JS_URL) defer {}
        }
    }
}

/// A page without navigation (sign-in, setup, errors).
pub fn bare(page: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main id="main" data-page=(page) { (body) }
            }
        }
    }
}

/// A page of the dashboard, with its navigation.
pub fn page(s: &Session, page: &str, title: &str, body: Markup) -> Response {
    let nav = [
        ("/", "Home", "home"),
        ("/models", "Models", "models"),
        ("/bentos", "Bentos", "bentos"),
        ("/deployments", "Deployments", "deployments"),
        ("/events", "Events", "events"),
        ("/clusters", "Clusters", "clusters"),
        ("/secrets", "Secrets", "secrets"),
        ("/settings/tokens", "API tokens", "tokens"),
        ("/settings/members", "Members", "members"),
        ("/settings", "Settings", "settings"),
    ];
    let section = page.split('-').next().unwrap_or(page);
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "yatai" }
                    span.org title="Organization" { (s.caller.org.name) }
                    nav aria-label="Main" {
                        ul {
                            @for (href, label, id) in nav {
                                li {
                                    a href=(href) aria-current=[(id == section || (id == "models" && section == "model") || (id == "bentos" && section == "bento") || (id == "deployments" && section == "deployment") || (id == "clusters" && section == "cluster") || (id == "secrets" && section == "secret")).then_some("page")] { (label) }
                                }
                            }
                        }
                    }
                    div.me {
                        a href="/account" title="Account and password" { (s.caller.user.name) }
                        form data-form="logout" method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" data-page=(page) { (body) }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A notice at the top of a page (after an action), from `?notice=`.
pub fn notice(text: Option<&str>) -> Markup {
    html! {
        @if let Some(t) = text.filter(|t| !t.is_empty()) {
            p.notice role="status" { (t) }
        }
    }
}

pub fn field_error(field: &str, errors: &[(String, String)]) -> Markup {
    html! {
        @for (f, m) in errors.iter().filter(|(f, _)| f == field) {
            p.field-error data-error-for=(f) id=(format!("{f}-error")) { (m) }
        }
    }
}

pub fn time(micros: i64) -> Markup {
    let ts = Timestamp(micros).to_rfc3339();
    html! { time datetime=(ts) title=(ts) { (ago(micros)) } }
}

pub fn opt_time(micros: Option<i64>) -> Markup {
    match micros {
        Some(m) => time(m),
        None => html! { span.muted { "never" } },
    }
}

pub fn ago(micros: i64) -> String {
    let secs = (Timestamp::now().0 - micros) / 1_000_000;
    let (n, unit) = match secs.unsigned_abs() {
        s if s < 60 => return if secs < 0 { "in a moment".into() } else { "just now".into() },
        s if s < 3600 => (s / 60, "min"),
        s if s < 86400 => (s / 3600, "h"),
        s => (s / 86400, "d"),
    };
    if secs < 0 { format!("in {n} {unit}") } else { format!("{n} {unit} ago") }
}

pub fn size(bytes: Option<i64>) -> String {
    let Some(b) = bytes else { return "—".into() };
    let b = b as f64;
    match b {
        b if b < 1024.0 => format!("{b} B"),
        b if b < 1024.0 * 1024.0 => format!("{:.1} KiB", b / 1024.0),
        b if b < 1024.0 * 1024.0 * 1024.0 => format!("{:.1} MiB", b / 1048576.0),
        b => format!("{:.2} GiB", b / 1073741824.0),
    }
}

pub fn status_badge(status: &str) -> Markup {
    html! { span.badge class=(format!("s-{status}")) data-testid="status" { (status) } }
}

pub fn upload_badge(status: &str) -> Markup {
    html! { span.badge class=(format!("u-{status}")) { (status) } }
}

/// A button that copies the text of the element `target` (progressive: the
/// text is selectable without JavaScript).
pub fn copyable(id: &str, text: &str) -> Markup {
    html! {
        div.copy {
            pre id=(id) { code { (text) } }
            button.small type="button" data-copy=(id) aria-label=(format!("Copy: {text}")) { "Copy" }
        }
    }
}

/// An inline SVG line of values (request rate), scaled to its maximum.
pub fn sparkline(values: &[f64], w: u32, h: u32, label: &str) -> Markup {
    let max = values.iter().cloned().fold(0.0f64, f64::max);
    let n = values.len().max(2);
    let mut d = String::new();
    for (i, v) in values.iter().enumerate() {
        let x = i as f64 * w as f64 / (n - 1) as f64;
        let y = if max > 0.0 { h as f64 - 1.0 - v / max * (h as f64 - 2.0) } else { h as f64 - 1.0 };
        d.push_str(&format!("{}{x:.1},{y:.1} ", if i == 0 { "M" } else { "L" }));
    }
    html! {
        svg.spark width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(label) {
            title { (label) }
            @if d.is_empty() {
                line x1="0" y1=(h - 1) x2=(w) y2=(h - 1) {}
            } @else {
                path d=(d) {}
            }
        }
    }
}

/// A chart with axes' extremes written out, for the deployment page.
pub fn chart(id: &str, title: &str, unit: &str, values: &[f64]) -> Markup {
    let max = values.iter().cloned().fold(0.0f64, f64::max);
    let last = values.last().copied().unwrap_or(0.0);
    html! {
        figure.chart id=(id) {
            figcaption { (title) ": " strong data-value { (format!("{last:.2}")) } " " (unit) span.muted { " (max " (format!("{max:.2}")) ")" } }
            (sparkline(values, 320, 60, title))
        }
    }
}

/// "Newer / older" links of a keyset-paged list.
pub fn pager(newer: Option<String>, older: Option<String>) -> Markup {
    html! {
        @if newer.is_some() || older.is_some() {
            nav.pager aria-label="Pages" {
                @if let Some(h) = newer { a href=(h) rel="prev" { "← First page" } }
                @if let Some(h) = older { a href=(h) rel="next" { "Next page →" } }
            }
        }
    }
}

pub fn qs(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        s.append_pair(k, v);
    }
    let s = s.finish();
    if s.is_empty() { String::new() } else { format!("?{s}") }
}

pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `/path?notice=…`, where an action sends the browser back to.
pub fn back(path: &str, notice: &str) -> Response {
    let sep = if path.contains('?') { '&' } else { '?' };
    axum::response::Redirect::to(&format!("{path}{sep}notice={}", enc(notice))).into_response()
}

pub fn require(s: &Session, p: Permission) -> WebResult<()> {
    if s.can(p) {
        Ok(())
    } else {
        Err(WebError::forbidden(format!(
            "Your role in {} ({}) may not {}. Ask an administrator of the organization.",
            s.caller.org.name,
            s.caller.role.as_str(),
            p.describe()
        )))
    }
}

pub fn raw(s: &str) -> PreEscaped<&str> {
    PreEscaped(s)
}
