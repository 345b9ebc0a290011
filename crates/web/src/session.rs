//! Sign-in sessions, CSRF tokens, and the extractors every page uses.
//!
//! The session cookie holds 256 random bits; the database keeps only their
//! SHA-256, so a copy of it lets nobody sign in. The CSRF token of a session
//! is derived from the same secret (a hash with another prefix): it needs no
//! storage, and only a page served to the cookie's holder can know it.
//! Forms shown before sign-in (setup, login) use a double-submit cookie.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use rand::Rng;
use sha2::{Digest, Sha256};
use yatai_app::AppState;
use yatai_app::auth::{Caller, Permission};
use yatai_core::Timestamp;

use crate::ui;

pub const SESSION_COOKIE: &str = "yatai_session";
/// The double-submit cookie of forms shown before sign-in.
pub const PRE_COOKIE: &str = "yatai_presession";
pub const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// A session's expiry slides forward at most this often (one write per
/// interval, not per request).
const TOUCH_EVERY: Duration = Duration::from_secs(600);

pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub fn csrf_for(secret: &str) -> String {
    hex::encode(Sha256::digest(format!("yatai-csrf\0{secret}").as_bytes()))
}

/// Compares without stopping at the first difference.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Whether the browser reached us over https (directly or through a proxy
/// that says so), which decides the cookies' `Secure` flag.
pub fn is_https(state: &AppState, headers: &HeaderMap) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().eq_ignore_ascii_case("https"));
    forwarded.unwrap_or_else(|| state.config.external_url.as_ref().is_some_and(|u| u.scheme() == "https"))
}

pub fn set_cookie(name: &str, value: &str, max_age: Option<Duration>, secure: bool) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("cookie is ASCII")
}

pub fn clear_cookie(name: &str, secure: bool) -> HeaderValue {
    set_cookie(name, "", Some(Duration::ZERO), secure)
}

pub fn client_addr(parts: &Parts) -> String {
    parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string()).unwrap_or_default()
}

/// Where to send the browser after sign-in (or any other redirect whose
/// target came from input): `next` if it is a path on this site, else `/`.
///
/// Browsers are lenient in ways a prefix check misses: they drop tabs and
/// newlines inside URLs (`/\t/evil.example` becomes `//evil.example`, another
/// host), read `\` as `/`, and a CR/LF would split the Location header. So
/// the target is refused if it, or its percent-decoded form, holds any
/// control character or backslash or starts with `//`; it must then resolve
/// against a dummy origin to that same origin. What is returned is the
/// parsed URL's path, query and fragment, re-serialised (ASCII, encoded), so
/// it is always a valid header value.
pub fn safe_next(next: &str) -> String {
    const ORIGIN: &str = "http://next.invalid";
    fn suspicious(s: &str) -> bool {
        !s.starts_with('/') || s.starts_with("//") || s.chars().any(|c| c.is_control() || c == '\\')
    }
    let decoded = percent_decode(next);
    if suspicious(next) || suspicious(&decoded) {
        return "/".to_owned();
    }
    let base = url::Url::parse(ORIGIN).expect("a valid URL");
    match base.join(next) {
        Ok(u) if u.origin() == base.origin() && u.username().is_empty() && u.password().is_none() => {
            u[url::Position::BeforePath..].to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// `%XX` sequences decoded (invalid ones kept), lossily as UTF-8.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A signed-in user, acting in the session's organization.
pub struct Session {
    pub caller: Arc<Caller>,
    pub csrf: String,
    pub id_hash: String,
    pub secure: bool,
}

impl Session {
    pub fn can(&self, p: Permission) -> bool {
        self.caller.allows(p)
    }
    pub fn org_uid(&self) -> &str {
        &self.caller.org.uid
    }
}

fn to_login(parts: &Parts) -> Response {
    let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let next: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
    Redirect::to(&format!("/login?next={next}")).into_response()
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login(parts));
        };
        let id_hash = hash_secret(secret);
        let now = Timestamp::now();
        let found = state.store.find_session(&id_hash, now).await.map_err(|e| ui::error_response(e.into()))?;
        let Some(id) = found else {
            return Err(to_login(parts));
        };
        if now.0 - id.last_seen_at > TOUCH_EVERY.as_micros() as i64 {
            let expires = Timestamp(now.0 + SESSION_TTL.as_micros() as i64);
            if let Err(e) = state.store.touch_session(&id_hash, now, expires).await {
                tracing::warn!(error = %e, "could not extend a session");
            }
        }
        Ok(Session {
            csrf: csrf_for(secret),
            id_hash,
            secure: is_https(state, &parts.headers),
            caller: Arc::new(Caller::for_session(id.user, id.org, id.role)),
        })
    }
}

/// A submitted form, parsed; repeated fields (checkboxes) keep every value.
#[derive(Debug, Default)]
pub struct FormData(pub Vec<(String, String)>);

impl FormData {
    pub fn parse(body: &[u8]) -> FormData {
        FormData(url::form_urlencoded::parse(body).into_owned().collect())
    }
    /// The first value of a field, trimmed; empty when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).unwrap_or("")
    }
    /// The value exactly as sent (passwords).
    pub fn raw(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

async fn read_form(body: axum::body::Body) -> Result<FormData, Response> {
    let bytes = axum::body::to_bytes(body, 1 << 20).await.map_err(|_| {
        ui::error_response(ui::WebError::new(StatusCode::PAYLOAD_TOO_LARGE, "The form is larger than 1 MiB."))
    })?;
    Ok(FormData::parse(&bytes))
}

fn csrf_refused() -> Response {
    ui::error_response(ui::WebError::new(
        StatusCode::FORBIDDEN,
        "This form could not be accepted: its security token is missing or out of date (the page may be old, or \
         the form came from another site). Go back, reload the page and submit it again.",
    ))
}

/// A form posted by a signed-in user, with a valid CSRF token.
pub struct Post {
    pub session: Session,
    pub form: FormData,
}

impl FromRequest<AppState> for Post {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let form = read_form(body).await?;
        if !same(form.get("csrf"), &session.csrf) {
            return Err(csrf_refused());
        }
        Ok(Post { session, form })
    }
}

/// A form posted before sign-in (setup, login): its `csrf` field must match
/// the pre-session cookie the page set.
pub struct PrePost {
    pub form: FormData,
    pub client: String,
    pub secure: bool,
}

impl FromRequest<AppState> for PrePost {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        let expected = cookie(&parts.headers, PRE_COOKIE).map(str::to_owned);
        let form = read_form(body).await?;
        match expected {
            Some(e) if same(form.get("csrf"), &e) => {}
            _ => return Err(csrf_refused()),
        }
        Ok(PrePost { form, client: client_addr(&parts), secure: is_https(state, &parts.headers) })
    }
}

/// The pre-session token of a page shown before sign-in: the browser's
/// existing one, or a new one to set.
pub fn pre_token(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, PRE_COOKIE) {
        Some(v) if v.len() >= 32 && v.len() <= 64 => (v.to_owned(), false),
        _ => (new_secret(), true),
    }
}

pub fn with_cookie(mut resp: Response, value: HeaderValue) -> Response {
    resp.headers_mut().append(SET_COOKIE, value);
    resp
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_is_followed_only_within_the_site() {
        assert_eq!(safe_next("/"), "/");
        for ok in ["/models", "/models/iris?sort=name&q=a b", "/deployments/x#logs", "/a/./b/../c"] {
            assert!(safe_next(ok).starts_with('/'), "{ok}");
            assert_ne!(safe_next(ok), "/", "{ok} is kept");
        }
        assert_eq!(safe_next("/models?q=a%20b"), "/models?q=a%20b");
        assert_eq!(safe_next("/a/./b/../c"), "/a/c");
        for bad in [
            "",
            "models",
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/%09/evil.example",
            "/\r\nSet-Cookie: x=1",
            "%0d%0aSet-Cookie:x",
            "/%0d%0aSet-Cookie:x",
            "/%2F/evil.example",
            "/%5Cevil.example",
            "https://evil.example",
            "http://next.invalid/x",
            "javascript:alert(1)",
            " /models",
            "/\u{7f}x",
            "/\u{85}x",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
        // Whatever comes back is a valid header value.
        assert_eq!(safe_next("/caf\u{e9}"), "/caf%C3%A9");
    }
}
