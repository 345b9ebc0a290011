//! `yatai operator`: the Kubernetes side of yatai.
//!
//! - [`bento_request`]: a BentoRequest becomes an image in the registry (found, or built
//!   in-process by the daemonless builder) and a Bento naming it.
//! - [`bento_deployment`]: a BentoDeployment becomes a Deployment, a Service, an HPA and an
//!   Ingress for the bento's entry service, with a status that means serving.
//! - [`webhook`]: the v1alpha3 ⇄ v2alpha1 conversion webhook, with its own CA.
//! - [`leader`]: one active operator per cluster, through a Lease.
//!
//! [`run`] starts them all from [`OperatorArgs`].

pub mod args;
pub mod bento_deployment;
pub mod bento_request;
pub mod context;
pub mod crds;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod network;
pub mod webhook;

pub use args::OperatorArgs;
pub use context::{Context, Namespaces, Settings};

use anyhow::Context as _;

/// Runs the operator until SIGINT/SIGTERM: the webhook at once (conversion must work on every
/// replica), the controllers once this replica holds the lease.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let metrics = std::sync::Arc::new(metrics::Metrics::default());
    let client = args.client(metrics.clone()).await?;
    let ctx = Context::with_metrics(client, settings, metrics);
    let health = http::Health::default();
    if args.metrics_listen != "off" {
        let listen = args.metrics_listen.parse().context("--metrics-listen: expected HOST:PORT or off")?;
        let bound = http::serve(listen, ctx.metrics.clone(), health.clone()).await?;
        tracing::info!("metrics and health on http://{bound}");
    }

    let mut webhook = tokio::spawn(webhook::run(ctx.clone()));
    health.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    let lease = tokio::select! {
        lease = leader::acquire(&ctx) => lease.context("leader election")?,
        ended = &mut webhook => return webhook_ended(ended),
        _ = &mut shutdown => { webhook.abort(); return Ok(()); }
    };
    tracing::info!(identity = %lease.identity(), "leading; starting the controllers");
    health.leading.store(true, std::sync::atomic::Ordering::Relaxed);

    let controllers = futures::future::join(bento_deployment::run(ctx.clone()), bento_request::run(ctx.clone()));
    let outcome = tokio::select! {
        _ = controllers => Err(anyhow::anyhow!("the controllers stopped")),
        // Exiting lets the pod restart as a stand-by; a replica that lost the lease must not
        // keep reconciling beside the new leader.
        lost = lease.lost() => Err(anyhow::anyhow!("lost the leader lease: {lost}")),
        ended = &mut webhook => webhook_ended(ended),
        _ = &mut shutdown => { tracing::info!("shutting down"); Ok(()) }
    };
    webhook.abort();
    lease.release().await;
    outcome
}

fn webhook_ended(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match ended {
        Ok(Ok(())) => Err(anyhow::anyhow!("the conversion webhook stopped")),
        Ok(Err(e)) => Err(e.context("the conversion webhook")),
        Err(e) => Err(anyhow::anyhow!("the conversion webhook panicked: {e}")),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
