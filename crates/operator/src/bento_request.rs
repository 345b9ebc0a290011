//! BentoRequest → image (found in the registry, or built) → Bento.

use crate::context::Context;

/// Reconciles BentoRequests in the watched namespaces until the process stops.
pub async fn run(_ctx: Context) {
    futures::future::pending::<()>().await
}
