//! BentoDeployment → Deployment, Service, HPA, Ingress; status from the Deployment.

use crate::context::Context;

/// Reconciles BentoDeployments in the watched namespaces until the process stops.
pub async fn run(_ctx: Context) {
    futures::future::pending::<()>().await
}
