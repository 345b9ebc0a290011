//! Ending long-lived responses when the server stops. A graceful shutdown
//! waits for every response in flight; an event stream (a followed log, a
//! dashboard tab) never finishes by itself, so each one also ends when
//! [`begin`] is called.

use std::sync::LazyLock;

use tokio::sync::watch;

static STOPPING: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::channel(false).0);

/// Called once the server has decided to stop.
pub fn begin() {
    STOPPING.send_replace(true);
}

/// Completes when the server is stopping.
pub async fn stopping() {
    let mut rx = STOPPING.subscribe();
    let _ = rx.wait_for(|s| *s).await;
}
