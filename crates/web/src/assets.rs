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

pub const ICON_URL: &str = "/static/icon.svg";
const ICON: &str = "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'><rect width='32' height='32' rx='6' \
    fill='#14213d'/><path d='M8 8l8 9 8-9M16 17v8' stroke='#fff' stroke-width='3' fill='none'/></svg>";

const CACHE: &str = "public, max-age=31536000, immutable";

pub async fn css() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/css; charset=utf-8"), (CACHE_CONTROL, CACHE)], CSS)
}

pub async fn js() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/javascript; charset=utf-8"), (CACHE_CONTROL, CACHE)], JS)
}

/// The icon, also at `/favicon.ico` (browsers ask for it whatever the page says).
pub async fn icon() -> impl IntoResponse {
    ([(CONTENT_TYPE, "image/svg+xml"), (CACHE_CONTROL, "public, max-age=86400")], ICON)
}
