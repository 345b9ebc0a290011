//! Waiting on cluster state: poll with a deadline, never sleep for a fixed time.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_millis(200);

/// Call `check` every 200 ms until it returns `Ok(Some(value))`, and return that value.
///
/// `Ok(None)` means "not yet"; an `Err` is remembered (API servers have transient errors) and
/// reported, with `what`, if the deadline passes.
pub async fn poll_until<T, E, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
    E: Debug,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:?}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
