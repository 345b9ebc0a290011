//! `/metrics`, `/healthz` and `/readyz` for Prometheus and the kubelet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

/// Whether this replica is ready: it serves the webhook and either leads or stands by.
#[derive(Clone, Default)]
pub struct Health {
    pub ready: Arc<AtomicBool>,
    pub leading: Arc<AtomicBool>,
}

/// Binds at once (so a taken port is an error at start), then serves in the background.
pub async fn serve(listen: SocketAddr, metrics: Arc<Metrics>, health: Health) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics address {listen} (--metrics-listen)"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state((metrics, health));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics server stopped: {e}");
        }
    });
    Ok(bound)
}

async fn render(State((metrics, health)): State<(Arc<Metrics>, Health)>) -> String {
    let mut text = metrics.render();
    let leading = u8::from(health.leading.load(Ordering::Relaxed));
    text.push_str(&format!(
        "# HELP yatai_operator_leader Whether this replica runs the controllers.\n# TYPE yatai_operator_leader gauge\nyatai_operator_leader {leading}\n"
    ));
    text
}

async fn ready(State((_, health)): State<(Arc<Metrics>, Health)>) -> (StatusCode, &'static str) {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}
