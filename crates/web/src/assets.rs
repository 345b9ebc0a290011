//! The stylesheet and script, compiled into the binary and served with long
//! cache lifetimes under a content-versioned URL.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

pub const CSS: &str = include_str!("assets/app.css");
pub const JS: &str = include_str!("assets/app.js");
/// Changing either file changes these URLs (the crate version plus a hash
/// of the contents), so browsers never keep a stale copy.
pub const CSS_URL: &str = concat!("/static/app.css?v=", env!("CARGO_PKG_VERSION"), "-", env!("YATAI_WEB_ASSETS_HASH"));
pub const JS_URL: &str = concat!("/static/app.js?v=", env!("CARGO_PKG_VERSION"), "-", env!("YATAI_WEB_ASSETS_HASH"));

const CACHE: &str = "public, max-age=31536000, immutable";

pub async fn css() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/css; charset=utf-8"), (CACHE_CONTROL, CACHE)], CSS)
}

pub async fn js() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/javascript; charset=utf-8"), (CACHE_CONTROL, CACHE)], JS)
}
