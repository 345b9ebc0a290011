//! Cleaning up: objects of abandoned uploads, blobs no version points at any
//! more, and stray objects a crash left without a record. Runs inline right
//! after deletes and failed uploads, and periodically in the background for
//! what a crash or a vanished client left behind.

use std::time::Duration;

use yatai_core::{Timestamp, UploadState};
use yatai_store::UploadRow;

use crate::state::AppState;

/// Objects older than this with no record are strays.
const STRAY_AGE: Duration = Duration::from_secs(24 * 3600);

/// A temporary file of a write not running in this process is removed once
/// it has not grown for this long (another process, such as a server while
/// `yatai gc` runs, may own it).
const PARTIAL_IDLE: Duration = Duration::from_secs(3600);

/// Expired events deleted per sweep at most.
const EVENT_BATCH: i64 = 10_000;

/// Deletes what an upload wrote (object, parts, backend multipart upload)
/// and then its record. Safe to call twice.
pub async fn discard_upload(state: &AppState, upload: &UploadRow) {
    if let Err(e) = state.store.discard_upload(&upload.uid).await {
        tracing::warn!(error = %e, upload = %upload.uid, "could not mark an upload for deletion");
        return;
    }
    if let Some(id) = &upload.backend_upload_id
        && let Err(e) = state.blobs.abort_multipart(&upload.storage_key, id).await
    {
        tracing::warn!(error = %e, upload = %upload.uid, "could not abort a multipart upload; the janitor retries");
        return;
    }
    if let Err(e) = state.blobs.delete(&upload.storage_key).await {
        tracing::warn!(error = %e, key = %upload.storage_key, "could not delete an abandoned object; the janitor retries");
        return;
    }
    delete_parts(state, &upload.uid).await;
    if let Err(e) = state.store.delete_upload_row(&upload.uid).await {
        tracing::warn!(error = %e, "could not delete an upload record");
    }
}

/// Deletes the parts yatai received for a multipart upload.
pub async fn delete_parts(state: &AppState, upload_uid: &str) {
    let parts = match state.store.list_parts(upload_uid).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "could not list upload parts");
            return;
        }
    };
    for (n, _, _) in parts {
        if let Err(e) = state.blobs.delete(&yatai_blob::BlobStore::part_key(upload_uid, n as u32)).await {
            tracing::warn!(error = %e, "could not delete an upload part");
            return;
        }
    }
    if let Err(e) = state.store.delete_parts(upload_uid).await {
        tracing::warn!(error = %e, "could not delete upload part records");
    }
}

/// Deletes each blob no version refers to any more.
pub async fn collect_blobs(state: &AppState, digests: &[String]) {
    for digest in digests {
        match state.store.delete_blob_if_unreferenced(digest).await {
            Ok(Some(key)) => {
                if let Err(e) = state.blobs.delete(&key).await {
                    tracing::warn!(error = %e, %key, "could not delete an unreferenced blob; the stray sweep retries");
                } else {
                    tracing::info!(%digest, "deleted an unreferenced blob");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, %digest, "could not collect a blob"),
        }
    }
}

/// One pass over everything that may need cleaning; returns what it did.
pub async fn sweep(state: &AppState, sweep_strays: bool) -> SweepReport {
    let mut report = SweepReport::default();
    match state.store.stale_uploads(Timestamp::now()).await {
        Ok(uploads) => {
            for u in &uploads {
                // An upload still streaming into (or being assembled by) this
                // process is alive, however long it takes.
                let busy = {
                    let set = state.uploads_in_progress.lock().expect("lock");
                    set.contains(&u.version_uid) || set.contains(&u.uid)
                };
                if busy {
                    continue;
                }
                if u.state != UploadState::Discard {
                    // Abandoned: the version's upload failed.
                    if let Err(e) =
                        state.store.fail_upload(&u.version_uid, Some(&u.uid), "the upload was abandoned").await
                    {
                        tracing::warn!(error = %e, "could not mark an abandoned upload failed");
                    }
                }
                discard_upload(state, u).await;
                report.uploads += 1;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list stale uploads"),
    }
    match state.store.unreferenced_blobs().await {
        Ok(digests) => {
            report.blobs = digests.len();
            collect_blobs(state, &digests).await;
        }
        Err(e) => tracing::warn!(error = %e, "could not list unreferenced blobs"),
    }
    report.partials += sweep_partials(state, PARTIAL_IDLE).await;
    if let Some(retention) = state.config.event_retention {
        let before = yatai_core::Timestamp(Timestamp::now().0.saturating_sub(retention.as_micros() as i64));
        // In batches, so that a first sweep over years of events does not hold the database.
        match state.store.delete_events_before(before, EVENT_BATCH).await {
            Ok(n) => report.events = n as usize,
            Err(e) => tracing::warn!(error = %e, "could not delete expired events"),
        }
    }
    if sweep_strays {
        for prefix in ["blobs/", "staging/"] {
            let keys = match state.blobs.list(prefix).await {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(error = %e, prefix, "could not list storage");
                    continue;
                }
            };
            for (key, age) in keys {
                if age < STRAY_AGE {
                    continue;
                }
                let tracked = if let Some(rest) = key.strip_prefix("staging/") {
                    let uid = rest.split('/').next().unwrap_or_default();
                    matches!(state.store.get_upload(uid).await, Ok(Some(_)) | Err(_))
                } else {
                    state.store.storage_key_is_tracked(&key).await.unwrap_or(true)
                };
                if !tracked && state.blobs.delete(&key).await.is_ok() {
                    tracing::info!(%key, "deleted a stray object");
                    report.strays += 1;
                }
            }
        }
    }
    report
}

/// Deletes the temporary files of writes that died with a crashed process
/// (`tmp/*.partial` of the local store); writes running in this process keep
/// theirs whatever `min_idle` is.
pub async fn sweep_partials(state: &AppState, min_idle: Duration) -> usize {
    match state.blobs.sweep_partials(min_idle).await {
        Ok(n) => {
            if n > 0 {
                tracing::info!(files = n, "deleted temporary files of interrupted uploads");
            }
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not sweep temporary upload files");
            0
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub uploads: usize,
    pub blobs: usize,
    pub strays: usize,
    /// Temporary files of interrupted uploads.
    pub partials: usize,
    /// Events older than the retention.
    pub events: usize,
}

/// Runs [`sweep`] every `every`, the stray sweep once an hour, and flushes
/// token last-used times, until the task is dropped.
pub async fn run(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    let mut last_strays = std::time::Instant::now() - Duration::from_secs(3600);
    loop {
        tick.tick().await;
        state.auth.flush_last_used().await;
        let strays = last_strays.elapsed() >= Duration::from_secs(3600);
        if strays {
            last_strays = std::time::Instant::now();
        }
        // In the server, the local store knows which temporary files belong
        // to running writes: every other one is left by a crash (at start,
        // all of them), whatever its age.
        let partials = sweep_partials(&state, Duration::ZERO).await;
        let mut r = sweep(&state, strays).await;
        r.partials += partials;
        {
            use std::sync::atomic::Ordering::Relaxed;
            state.counters.janitor_runs.fetch_add(1, Relaxed);
            state
                .counters
                .janitor_removed
                .fetch_add((r.uploads + r.blobs + r.strays + r.partials + r.events) as u64, Relaxed);
        }
        if r != SweepReport::default() {
            tracing::info!(
                uploads = r.uploads,
                blobs = r.blobs,
                strays = r.strays,
                partials = r.partials,
                events = r.events,
                "janitor cleaned up"
            );
        }
    }
}
