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
pub mod leader;
pub mod network;
pub mod webhook;

pub use args::OperatorArgs;
pub use context::{Context, Namespaces, Settings};

use anyhow::Context as _;

/// Runs the operator until SIGINT/SIGTERM: the webhook at once (conversion must work on every
/// replica), the controllers once this replica holds the lease.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let client = args.client().await?;
    let settings = args.settings()?;
    let ctx = Context::new(client.clone(), settings);

    let webhook = tokio::spawn(webhook::run(ctx.clone()));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    let lease = tokio::select! {
        lease = leader::acquire(&ctx) => lease.context("leader election")?,
        _ = &mut shutdown => { webhook.abort(); return Ok(()); }
    };
    tracing::info!(identity = %lease.identity(), "leading; starting the controllers");

    let controllers = futures::future::join(bento_deployment::run(ctx.clone()), bento_request::run(ctx.clone()));
    tokio::select! {
        _ = controllers => tracing::warn!("the controllers stopped"),
        lost = lease.lost() => tracing::error!("lost the lease: {lost}; stopping so another replica leads"),
        _ = &mut shutdown => tracing::info!("shutting down"),
    }
    webhook.abort();
    lease.release().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
