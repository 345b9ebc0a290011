//! The HTTP API of yatai-rs.
//!
//! - `/api/v1/…`: the REST routes the bentoml 1.4 client uses (login, model
//!   and bento repositories and versions, uploads and downloads in all three
//!   transfer modes, API tokens), plus Yatai-compatible extras (deletes,
//!   events). Every route needs an `X-YATAI-API-TOKEN`, except health.
//! - `/transfer/…`: signed, expiring URLs yatai serves itself when artifacts
//!   are on local disk; they carry their own authorisation.
//! - `/api/openapi.json` and `/api/docs`: the OpenAPI document generated from
//!   the route table, and Swagger UI (served from the binary, works offline).

pub mod auth;
pub mod deployments;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod schemas;
pub mod shutdown;
pub mod sse;

pub use routes::transfer::stream_archive;
pub use yatai_app::{AppConfig, AppState, TransmissionMode};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use http_body::Body as _;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;
use utoipa::openapi::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ApiError;

/// Deployments that answer on the server's own port by host name
/// (`<label>.<domain>` with `--deployment-domain`). The local target
/// provides them; a cluster has its own ingress instead.
#[async_trait::async_trait]
pub trait HostRoutes: Send + Sync {
    /// Answers `req` for the deployment at host label `label`, or `None`
    /// when no deployment answers there.
    async fn route(&self, label: &str, req: Request, client: Option<std::net::SocketAddr>) -> Option<Response>;
}

/// The complete application: routes, OpenAPI document and middleware.
pub fn app(state: AppState) -> (Router, OpenApi) {
    app_with(state, Router::new(), None)
}

/// The application with more routes (the dashboard's) mounted next to the
/// API, under the same middleware and before the JSON 404 fallback, and
/// with deployments answering by host name when `hosts` is given.
pub fn app_with(state: AppState, extra: Router<AppState>, hosts: Option<Arc<dyn HostRoutes>>) -> (Router, OpenApi) {
    let authenticated = routes::authenticated(state.clone())
        .layer_all(|r| r.route_layer(from_fn_with_state(state.clone(), auth::require_token)));
    let (router, doc) = authenticated.merge(routes::public(state.clone())).finish();
    let swagger: Router<AppState> = SwaggerUi::new("/api/docs").url("/api/openapi.json", doc.clone()).into();
    let metrics = Arc::new(metrics::Metrics::new());
    let metrics_route: Router<AppState> = Router::new()
        .route("/metrics", axum::routing::get(metrics::serve).with_state((state.clone(), metrics.clone())));
    let router = router
        .merge(swagger)
        .merge(extra)
        .merge(metrics_route)
        .route_layer(from_fn(metrics::mark_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.config.request_timeout, deadline))
        .layer(from_fn(close_if_body_unread))
        .layer(DefaultBodyLimit::max(state.config.max_json_body))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("the server hit a bug handling this request").into_response()
        }))
        .layer(from_fn_with_state((state.clone(), hosts), route_deployment_hosts))
        .layer(from_fn_with_state(metrics, request_context))
        .with_state(state);
    (router, doc)
}

/// Answers 503 when a request takes longer than the server's `--request-timeout` to its
/// response's head, dropping what it waited on. Requests that stream an archive's bytes (`PUT`
/// uploads, transfer URLs) and server-sent events take as long as the bytes do.
async fn deadline(
    axum::extract::State(limit): axum::extract::State<Option<std::time::Duration>>,
    req: Request,
    next: Next,
) -> Response {
    let streams = req.method() == Method::PUT
        || req.uri().path().starts_with("/transfer/")
        || req
            .headers()
            .get(axum::http::header::ACCEPT)
            .is_some_and(|a| a.as_bytes().starts_with(b"text/event-stream"));
    let Some(limit) = limit.filter(|_| !streams) else {
        return next.run(req).await;
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(after_s = limit.as_secs_f64(), "request timed out");
            ApiError::unavailable(format!(
                "the server could not answer within {:?} (its database or storage may be unreachable); try again, \
                 and tell the operator if it persists",
                limit
            ))
            .into_response()
        }
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not accept {method}", uri.path()),
    )
}

/// Host-based routing: with `--deployment-domain D`, a request for
/// `<name>-<namespace>.D` goes to that deployment's replicas instead of the API.
async fn route_deployment_hosts(
    axum::extract::State((state, hosts)): axum::extract::State<(AppState, Option<Arc<dyn HostRoutes>>)>,
    req: Request,
    next: Next,
) -> Response {
    let (Some(domain), Some(hosts)) = (state.config.deployment_domain.as_deref(), hosts) else {
        return next.run(req).await;
    };
    let host = req.headers().get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let host =
        host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map(|(h, _)| h).unwrap_or(host);
    let Some(label) = host.strip_suffix(domain).and_then(|h| h.strip_suffix('.')).filter(|l| !l.contains('.')) else {
        return next.run(req).await;
    };
    let (label, host) = (label.to_owned(), host.to_owned());
    let client = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
    match hosts.route(&label, req, client).await {
        Some(response) => response,
        None => ApiError::not_found(format!("no deployment answers at {host}")).into_response(),
    }
}

/// Adds `Connection: close` to a response sent before the request body was
/// read to its end (a 400 for a bad path, a 401, a 413 over the body limit):
/// the server cannot reuse the connection with unread bytes on it, and
/// without the header a keep-alive client would find it closed under its
/// next request. Deployment traffic does not pass here (it is proxied
/// before), so streaming replicas keep their connections.
async fn close_if_body_unread(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let read = Arc::new(AtomicBool::new(false));
    let body = axum::body::Body::new(ReadToEnd { inner: body, read: read.clone() });
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    if !read.load(Ordering::Acquire) {
        resp.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A request body that records whether it was read to its end.
struct ReadToEnd {
    inner: axum::body::Body,
    read: Arc<AtomicBool>,
}

impl http_body::Body for ReadToEnd {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            std::task::Poll::Ready(None) => true,
            std::task::Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            self.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// Gives each request an id (in `x-request-id`, and in `x-trace-id`, which
/// the bentoml client prints on server errors), a tracing span, and a log
/// line when it completes.
/// The request is counted in yatai's metrics by the route it matched. The span's `user` is
/// filled in once the request is authenticated; the query string (a transfer URL's signature)
/// is never logged.
async fn request_context(
    axum::extract::State(metrics): axum::extract::State<Arc<metrics::Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let id = match req.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(v) if !v.is_empty() && v.len() <= 64 => v.to_owned(),
        _ => format!("{:x}-{:x}", std::process::id(), REQUEST_SEQ.fetch_add(1, Ordering::Relaxed)),
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let request_bytes = metrics::content_length(req.headers());
    let span = tracing::info_span!("request", %id, %method, %path, user = tracing::field::Empty);
    let started = Instant::now();
    let in_flight = metrics.start();
    let mut resp = next.run(req).instrument(span.clone()).await;
    drop(in_flight);
    let status = resp.status();
    let elapsed = started.elapsed().as_secs_f64();
    metrics.observe(
        method.as_str(),
        metrics::route_of(&resp),
        status.as_u16(),
        elapsed,
        request_bytes,
        metrics::content_length(resp.headers()),
    );
    let elapsed_ms = elapsed * 1000.0;
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), elapsed_ms, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), elapsed_ms, "request done");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v.clone());
        resp.headers_mut().insert("x-trace-id", v);
    }
    resp
}
