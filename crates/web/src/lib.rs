//! The dashboard: server-rendered pages served by `yatai serve` at `/`, with
//! live parts (deployment status, logs, charts) over server-sent events and
//! a little vanilla JavaScript. No front-end build step; the stylesheet and
//! the script are compiled into the binary.
//!
//! Every page needs a session ([`session::Session`]) and shows only the
//! session's organization; every form carries a CSRF token
//! ([`session::Post`]). Actions go through the same use cases as the API
//! (`yatai_app`), so a change made here is the change the API would make;
//! an invalid input comes back naming its form field.

pub mod assets;
pub mod limiter;
pub mod pages;
pub mod password;
pub mod session;
pub mod ui;

use std::sync::Arc;

use axum::http::HeaderValue;
use axum::http::header::{CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use yatai_app::AppState;

/// What the dashboard keeps in memory.
#[derive(Default)]
pub struct Web {
    pub limiter: limiter::Limiter,
}

/// The dashboard's routes, to mount next to the API
/// (`yatai_api::app_with(state, yatai_web::router(), hosts)`).
pub fn router() -> Router<AppState> {
    use pages::*;
    Router::new()
        .route("/static/app.css", get(assets::css))
        .route("/static/app.js", get(assets::js))
        .route("/static/icon.svg", get(assets::icon))
        .route("/favicon.ico", get(assets::icon))
        .route("/setup", get(auth::setup_page).post(auth::setup_submit))
        .route("/login", get(auth::login_page).post(auth::login_submit))
        .route("/logout", post(auth::logout))
        .route("/account", get(auth::account_page))
        .route("/account/password", post(auth::change_password))
        .route("/account/organization", post(auth::switch_org))
        .route("/account/invitations/{uid}/accept", post(invitations::accept_listed))
        .route("/account/invitations/{uid}/decline", post(invitations::decline_listed))
        .route("/invitations/{token}", get(invitations::page).post(invitations::accept))
        .route("/invitations/{token}/decline", post(invitations::decline))
        .route("/invitations/{token}/signup", post(invitations::signup))
        .route("/invitations/{token}/signin", post(invitations::signin))
        .route("/", get(home::home))
        .route("/models", get(registry::models))
        .route("/models/{repo}", get(registry::model_repo))
        .route("/models/{repo}/{version}", get(registry::model_version))
        .route("/models/{repo}/{version}/download", get(registry::download_model))
        .route("/models/{repo}/{version}/delete", post(registry::delete_model))
        .route("/bentos", get(registry::bentos))
        .route("/bentos/{repo}", get(registry::bento_repo))
        .route("/bentos/{repo}/{version}", get(registry::bento_version))
        .route("/bentos/{repo}/{version}/download", get(registry::download_bento))
        .route("/bentos/{repo}/{version}/delete", post(registry::delete_bento))
        .route("/deployments", get(deployments::list))
        .route("/deployments/new", get(deployment_form::new_page).post(deployment_form::create))
        .route("/deployments/new/versions", get(deployment_form::versions_fragment))
        .route("/deployments/{name}", get(deployment_page::detail))
        .route("/deployments/{name}/edit", get(deployment_form::edit_page).post(deployment_form::update))
        .route("/deployments/{name}/live", get(deployment_page::live))
        .route("/deployments/{name}/logs", get(deployment_page::logs))
        .route("/deployments/{name}/terminate", post(deployments::terminate))
        .route("/deployments/{name}/restore", post(deployments::restore))
        .route("/deployments/{name}/rollback", post(deployments::rollback))
        .route("/deployments/{name}/delete", post(deployments::delete))
        .route("/settings", get(admin::settings).post(admin::save_settings))
        .route("/settings/tokens", get(tokens::tokens).post(tokens::create_token))
        .route("/settings/tokens/{uid}/revoke", post(tokens::revoke_token))
        .route("/settings/members", get(members::members).post(members::add_member))
        .route("/settings/members/{uid}/role", post(members::change_role))
        .route("/settings/members/{uid}/remove", post(members::remove_member))
        .route("/settings/members/invitations/{uid}/revoke", post(members::revoke_invitation))
        .route("/events", get(admin::events))
        .route("/clusters", get(clusters::list))
        .route("/clusters/new", get(clusters::new_page).post(clusters::create))
        .route("/clusters/{name}", get(clusters::detail))
        .route("/clusters/{name}/edit", get(clusters::edit_page).post(clusters::update))
        .route("/clusters/{name}/remove", post(clusters::remove))
        .route("/secrets", get(secrets::list))
        .route("/secrets/new", get(secrets::new_page).post(secrets::create))
        .route("/secrets/{name}", get(secrets::detail))
        .route("/secrets/{name}/replace", post(secrets::replace))
        .route("/secrets/{name}/delete", post(secrets::delete))
        .layer(Extension(Arc::new(Web::default())))
        .layer(axum::middleware::map_response(security_headers))
}

/// Wraps the whole application so that a browser asking for a page that
/// does not exist gets a page saying so, not the API's JSON 404.
pub fn html_not_found(app: Router) -> Router {
    app.layer(axum::middleware::from_fn(html_404))
}

async fn html_404(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let wants_page = req.method() == axum::http::Method::GET
        && !["/api/", "/transfer/", "/healthz", "/metrics"].iter().any(|p| req.uri().path().starts_with(p))
        && req
            .headers()
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if wants_page && json && resp.status() == axum::http::StatusCode::NOT_FOUND {
        return ui::error_response(ui::WebError::not_found(format!("There is no page at {path}.")));
    }
    resp
}

/// Everything the pages load comes from this server: scripts, styles and
/// connections are limited to it, and no other site may frame a page.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
        ),
    );
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    resp
}
