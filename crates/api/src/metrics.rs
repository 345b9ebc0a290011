//! yatai's own metrics at `GET /metrics`, in the OpenMetrics text format Prometheus scrapes:
//! requests by route, method and status with their latency, requests in flight and the bytes
//! they declared, what the registry stores, deployments by status, the database pool and the
//! janitor. Request figures are counted as requests complete; the rest is read at each scrape.
//!
//! Unauthenticated unless the server was given `--metrics-token`; nothing in it names an
//! organization, a user or an artifact (routes are their templates, `/api/v1/bento_repositories/{name}`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use yatai_app::AppState;

use crate::error::ApiError;

/// The route template a request matched (`(none)`: no route, e.g. a 404 or a deployment's host).
#[derive(Clone, Debug)]
pub struct RouteLabel(pub String);

const UNMATCHED: &str = "(none)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// The metrics one server keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
    request_bytes: Family<RouteLabels, Counter>,
    response_bytes: Family<RouteLabels, Counter>,
    versions: Family<VersionLabels, Gauge>,
    stored_blobs: Gauge,
    stored_bytes: Gauge,
    deployments: Family<StatusLabels, Gauge>,
    uploads_in_progress: Gauge,
    pool_connections: Gauge,
    pool_idle: Gauge,
    janitor_runs: Counter,
    janitor_removed: Counter,
    replica_restarts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("yatai");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        registry.register("http_request_duration_seconds", "Time to the response's head, by route", duration.clone());
        let in_flight = Gauge::default();
        registry.register("http_requests_in_flight", "Requests being answered now", in_flight.clone());
        let request_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_request_body_bytes",
            "Request body bytes declared by Content-Length (uploads), by route",
            request_bytes.clone(),
        );
        let response_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_response_body_bytes",
            "Response body bytes declared by Content-Length (downloads), by route",
            response_bytes.clone(),
        );
        let versions = Family::<VersionLabels, Gauge>::default();
        registry.register("registry_versions", "Model and bento versions, by kind and upload status", versions.clone());
        let stored_blobs = Gauge::default();
        registry.register("registry_stored_archives", "Distinct archives in storage", stored_blobs.clone());
        let stored_bytes = Gauge::default();
        registry.register("registry_stored_bytes", "Bytes of the distinct archives in storage", stored_bytes.clone());
        let deployments = Family::<StatusLabels, Gauge>::default();
        registry.register("deployments", "Deployments, by status", deployments.clone());
        let uploads_in_progress = Gauge::default();
        registry.register("uploads_in_progress", "Proxy uploads being received now", uploads_in_progress.clone());
        let pool_connections = Gauge::default();
        registry.register("db_pool_connections", "Open database connections", pool_connections.clone());
        let pool_idle = Gauge::default();
        registry.register("db_pool_idle_connections", "Idle database connections", pool_idle.clone());
        let janitor_runs = Counter::default();
        registry.register("janitor_runs", "Janitor sweeps run", janitor_runs.clone());
        let janitor_removed = Counter::default();
        registry.register(
            "janitor_removed",
            "Abandoned uploads, unreferenced archives and temporary files the janitor removed",
            janitor_removed.clone(),
        );
        let replica_restarts = Counter::default();
        registry.register(
            "replica_restarts",
            "Replicas of local deployments restarted (exited, crashed or not ready in time)",
            replica_restarts.clone(),
        );
        Metrics {
            replica_restarts,
            registry,
            requests,
            duration,
            in_flight,
            request_bytes,
            response_bytes,
            versions,
            stored_blobs,
            stored_bytes,
            deployments,
            uploads_in_progress,
            pool_connections,
            pool_idle,
            janitor_runs,
            janitor_removed,
        }
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.inc();
        InFlight(self.clone())
    }

    /// Records a completed request.
    pub fn observe(
        &self,
        method: &str,
        route: &str,
        status: u16,
        seconds: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let route = route.to_owned();
        let labels = RouteLabels { method: method.to_owned(), route: route.clone() };
        self.requests.get_or_create(&RequestLabels { method: method.to_owned(), route, status }).inc();
        self.duration.get_or_create(&labels).observe(seconds);
        if request_bytes > 0 {
            self.request_bytes.get_or_create(&labels).inc_by(request_bytes);
        }
        if response_bytes > 0 {
            self.response_bytes.get_or_create(&labels).inc_by(response_bytes);
        }
    }

    /// Reads what is stored and the server's state, then renders everything.
    async fn render(&self, state: &AppState) -> Result<String, ApiError> {
        let totals = state.store.totals().await.map_err(|e| ApiError::unavailable(format!("database: {e}")))?;
        self.versions.clear();
        for (kind, status, n) in totals.versions {
            self.versions.get_or_create(&VersionLabels { kind, status }).set(n);
        }
        self.stored_blobs.set(totals.blobs);
        self.stored_bytes.set(totals.blob_bytes);
        self.deployments.clear();
        for (status, n) in totals.deployments {
            self.deployments.get_or_create(&StatusLabels { status }).set(n);
        }
        self.uploads_in_progress.set(state.uploads_in_progress.lock().map(|u| u.len() as i64).unwrap_or(0));
        let pool = state.store.pool();
        self.pool_connections.set(i64::from(pool.size()));
        self.pool_idle.set(pool.num_idle() as i64);
        let counters = &state.counters;
        self.janitor_runs.inner().store(counters.janitor_runs.load(Ordering::Relaxed), Ordering::Relaxed);
        self.janitor_removed.inner().store(counters.janitor_removed.load(Ordering::Relaxed), Ordering::Relaxed);
        self.replica_restarts.inner().store(state.targets.replica_restarts(), Ordering::Relaxed);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
        Ok(out)
    }
}

/// A request in flight; dropping it counts it out (also when the client went away).
pub struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Route layer: puts the matched route template on the response, for [`Metrics::observe`].
pub async fn mark_route(matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if let Some(m) = matched {
        resp.extensions_mut().insert(RouteLabel(m.as_str().to_owned()));
    }
    resp
}

/// The route label of a response.
pub fn route_of(resp: &Response) -> &str {
    resp.extensions().get::<RouteLabel>().map(|r| r.0.as_str()).unwrap_or(UNMATCHED)
}

/// `Content-Length`, when declared.
pub fn content_length(headers: &HeaderMap) -> u64 {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// `GET /metrics`.
pub async fn serve(State((state, metrics)): State<(AppState, Arc<Metrics>)>, headers: HeaderMap) -> Response {
    if let Some(token) = state.config.metrics_token.as_deref() {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        // Compared as digests: the time taken says nothing about the token.
        let ok = given.is_some_and(|g| yatai_app::auth::hash_token(g) == yatai_app::auth::hash_token(token));
        if !ok {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this server's metrics need `Authorization: Bearer <token>`, the token it was started with \
                 (--metrics-token)",
            )
            .into_response();
        }
    }
    match metrics.render(&state).await {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_template_method_and_status() {
        let m = Arc::new(Metrics::new());
        {
            let _one = m.start();
            assert_eq!(m.in_flight.get(), 1);
        }
        assert_eq!(m.in_flight.get(), 0, "a finished (or abandoned) request is counted out");
        m.observe("GET", "/api/v1/bento_repositories/{name}", 200, 0.012, 0, 340);
        m.observe("GET", "/api/v1/bento_repositories/{name}", 200, 0.020, 0, 0);
        m.observe("PUT", "/api/v1/x", 500, 2.0, 1024, 0);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(
            out.contains(
                r#"yatai_http_requests_total{method="GET",route="/api/v1/bento_repositories/{name}",status="200"} 2"#
            ),
            "{out}"
        );
        assert!(out.contains(r#"yatai_http_request_body_bytes_total{method="PUT",route="/api/v1/x"} 1024"#), "{out}");
        assert!(
            out.contains(
                r#"yatai_http_response_body_bytes_total{method="GET",route="/api/v1/bento_repositories/{name}"} 340"#
            ),
            "{out}"
        );
        assert!(
            out.contains(
                r#"yatai_http_request_duration_seconds_count{method="GET",route="/api/v1/bento_repositories/{name}"} 2"#
            ),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
