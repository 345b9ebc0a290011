//! The upload lifecycle and content-addressed blobs.
//!
//! Invariant: every object in the blob store is recorded either in `blobs`
//! (it holds a finished archive) or in `uploads` (it is being written, or is
//! waiting to be deleted), so a crash at any point leaves a row from which the
//! janitor can clean up. A version is `success` only once its archive's size
//! and sha256 are recorded in `blobs` and the version points at that row.

use sqlx::FromRow;

use yatai_core::{UploadMode, UploadState, UploadStatus};

use crate::{Dialect, Result, Store, StoreError, Timestamp, VersionRow, built, new_uid};

#[derive(Debug, Clone, FromRow)]
pub struct UploadRow {
    pub uid: String,
    pub version_uid: String,
    /// An [`UploadMode`].
    pub mode: String,
    /// An [`UploadState`]: `open` while bytes may arrive, `receiving` while
    /// the one writer that claimed it streams bytes (or assembles parts),
    /// `received` once they are verified, `discard` when the object is to be
    /// deleted.
    pub state: String,
    pub storage_key: String,
    pub backend_upload_id: Option<String>,
    pub digest: Option<String>,
    pub size_bytes: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What finishing an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalizeOutcome {
    /// The archive was new and is now the version's content.
    Stored { replaced: Option<String> },
    /// The same bytes were already stored (for this or another version): the
    /// version points at the existing blob; the new copy is to be deleted.
    Deduplicated { replaced: Option<String> },
    /// The version already held exactly these bytes: nothing changed.
    Unchanged,
    /// The upload was already finished (or cancelled) by a concurrent
    /// request: nothing changed, and its object, which may now be a blob,
    /// must not be deleted.
    AlreadyFinished,
}

const UPLOAD_COLUMNS: &str = "uid, version_uid, mode, state, storage_key, backend_upload_id, digest, size_bytes, \
     created_at, expires_at";

/// Marks an upload's object for deletion by the janitor (binds: the upload's
/// uid, then [`UploadState::Discard`], see [`discard`]).
const DISCARD_UPLOAD: &str = "UPDATE uploads SET state = $2 WHERE uid = $1";

/// The query that marks upload `uid` for deletion.
fn discard(uid: &str) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(DISCARD_UPLOAD).bind(uid).bind(UploadState::Discard.as_str())
}

impl Store {
    /// Begins a transaction that will write. On SQLite it takes the write
    /// lock up front: a deferred transaction that reads and then writes can
    /// fail with SQLITE_BUSY when another writer got in between.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.dialect() {
            Dialect::Sqlite => self.pool().begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool().begin().await?,
        })
    }

    pub(crate) fn for_update(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// `start_upload`: the client is about to send bytes. A version that is
    /// already uploaded keeps its content (and its `success`) until the new
    /// bytes are verified; the call records that a replacement was asked for,
    /// which only `bentoml push --force` does.
    pub async fn mark_upload_started(&self, version: &VersionRow) -> Result<()> {
        let now = Timestamp::now().0;
        sqlx::query(
            "UPDATE versions SET upload_started_at = $1, updated_at = $1, \
             replace_requested_at = CASE WHEN upload_status = $3 THEN $1 ELSE replace_requested_at END, \
             upload_status = CASE WHEN upload_status = $3 THEN upload_status ELSE $4 END, \
             upload_finished_reason = CASE WHEN upload_status = $3 THEN upload_finished_reason ELSE '' END \
             WHERE uid = $2",
        )
        .bind(now)
        .bind(&version.uid)
        .bind(UploadStatus::Success.as_str())
        .bind(UploadStatus::Uploading.as_str())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records an upload before any byte is written to `storage_key`.
    pub async fn create_upload(
        &self,
        version_uid: &str,
        mode: UploadMode,
        storage_key: &str,
        backend_upload_id: Option<&str>,
        expires_at: Timestamp,
    ) -> Result<UploadRow> {
        let row = UploadRow {
            uid: new_uid(),
            version_uid: version_uid.to_owned(),
            mode: mode.as_str().to_owned(),
            state: UploadState::Open.as_str().to_owned(),
            storage_key: storage_key.to_owned(),
            backend_upload_id: backend_upload_id.map(str::to_owned),
            digest: None,
            size_bytes: None,
            created_at: Timestamp::now().0,
            expires_at: expires_at.0,
        };
        sqlx::query(built(format!(
            "INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7, $8)"
        )))
        .bind(&row.uid)
        .bind(&row.version_uid)
        .bind(&row.mode)
        .bind(&row.state)
        .bind(&row.storage_key)
        .bind(&row.backend_upload_id)
        .bind(row.created_at)
        .bind(row.expires_at)
        .execute(self.pool())
        .await?;
        if mode == UploadMode::Multipart {
            sqlx::query("UPDATE versions SET upload_id = $1 WHERE uid = $2")
                .bind(&row.uid)
                .bind(version_uid)
                .execute(self.pool())
                .await?;
        }
        Ok(row)
    }

    pub async fn get_upload(&self, uid: &str) -> Result<Option<UploadRow>> {
        Ok(sqlx::query_as(built(format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE uid = $1")))
            .bind(uid)
            .fetch_optional(self.pool())
            .await?)
    }

    /// The newest upload of a version that is still open or received, of one
    /// of the given modes.
    pub async fn current_upload(&self, version_uid: &str, modes: &[UploadMode]) -> Result<Option<UploadRow>> {
        let [a, b, c] = UploadState::LIVE else { unreachable!("three live states") };
        let rows: Vec<UploadRow> = sqlx::query_as(built(format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE version_uid = $1 AND state IN ($2, $3, $4) \
             ORDER BY created_at DESC"
        )))
        .bind(version_uid)
        .bind(a.as_str())
        .bind(b.as_str())
        .bind(c.as_str())
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().find(|u| modes.iter().any(|m| u.mode == *m)))
    }

    /// Claims an open upload for one writer: `open` → `receiving`. False when
    /// it is not open (another writer holds it, or it is finished or gone),
    /// so of concurrent writers exactly one proceeds.
    pub async fn claim_upload(&self, uid: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE uploads SET state = $2 WHERE uid = $1 AND state = $3")
            .bind(uid)
            .bind(UploadState::Receiving.as_str())
            .bind(UploadState::Open.as_str())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives a claimed upload back after its writer failed, so the client can
    /// try again: `receiving` → `open`.
    pub async fn release_upload(&self, uid: &str) -> Result<()> {
        sqlx::query("UPDATE uploads SET state = $2 WHERE uid = $1 AND state = $3")
            .bind(uid)
            .bind(UploadState::Open.as_str())
            .bind(UploadState::Receiving.as_str())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The bytes of a claimed upload are complete and hashed: `receiving` →
    /// `received`. False when the upload was cancelled or discarded while
    /// they arrived; the caller then deletes what it wrote. A backend
    /// multipart upload is complete by then, so it is forgotten: discarding
    /// the upload later only deletes its object (aborting a completed
    /// multipart upload fails, and the object was never deleted).
    pub async fn mark_upload_received(&self, uid: &str, digest: &str, size: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE uploads SET state = $4, digest = $1, size_bytes = $2, backend_upload_id = NULL \
             WHERE uid = $3 AND state = $5",
        )
        .bind(digest)
        .bind(size)
        .bind(uid)
        .bind(UploadState::Received.as_str())
        .bind(UploadState::Receiving.as_str())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Points a blob at another object holding the same bytes, when the one
    /// it pointed at turned out not to hold them (lost or altered in
    /// storage). Only if it still points at `old_key`.
    pub async fn repoint_blob(&self, digest: &str, old_key: &str, new_key: &str, size: i64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE blobs SET storage_key = $1, size_bytes = $2 WHERE digest = $3 AND storage_key = $4")
                .bind(new_key)
                .bind(size)
                .bind(digest)
                .bind(old_key)
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks an upload's object for deletion (the janitor or the caller
    /// deletes it, then the row).
    pub async fn discard_upload(&self, uid: &str) -> Result<()> {
        discard(uid).execute(self.pool()).await?;
        Ok(())
    }

    pub async fn delete_upload_row(&self, uid: &str) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE uid = $1").bind(uid).execute(self.pool()).await?;
        Ok(())
    }

    /// Uploads whose objects should go: discarded ones, and open ones past
    /// their expiry (a client that went away, or a server that crashed).
    pub async fn stale_uploads(&self, now: Timestamp) -> Result<Vec<UploadRow>> {
        Ok(sqlx::query_as(built(format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE state = $2 OR expires_at < $1 ORDER BY created_at"
        )))
        .bind(now.0)
        .bind(UploadState::Discard.as_str())
        .fetch_all(self.pool())
        .await?)
    }

    /// Whether a storage key is recorded anywhere (for the orphan sweep).
    pub async fn storage_key_is_tracked(&self, key: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM blobs WHERE storage_key = $1) + (SELECT COUNT(*) FROM uploads WHERE storage_key = $1)",
        )
        .bind(key)
        .fetch_one(self.pool())
        .await?;
        Ok(n > 0)
    }

    /// Makes a verified archive the content of a version, atomically.
    ///
    /// If the version already holds other bytes, they are replaced only when
    /// `start_upload` asked for a replacement (`push --force`); otherwise the
    /// upload is refused with a conflict and the stored content is untouched.
    /// The upload row is deleted when its object became the blob, or marked
    /// `discard` when the object is a duplicate to delete.
    pub async fn finalize_upload(
        &self,
        version_uid: &str,
        upload: &UploadRow,
        digest: &str,
        size: i64,
    ) -> Result<FinalizeOutcome> {
        let now = Timestamp::now().0;
        let mut tx = self.begin_write().await?;
        // One finisher per upload: a second concurrent finish finds the row
        // gone (its object became the blob) or discarded.
        let upload_state: Option<String> =
            sqlx::query_scalar(built(format!("SELECT state FROM uploads WHERE uid = $1{}", self.for_update())))
                .bind(&upload.uid)
                .fetch_optional(&mut *tx)
                .await?;
        if upload_state.is_none_or(|s| s == UploadState::Discard) {
            return Ok(FinalizeOutcome::AlreadyFinished);
        }
        let current: Option<(String, Option<String>, Option<i64>)> = sqlx::query_as(built(format!(
            "SELECT upload_status, blob_digest, replace_requested_at FROM versions WHERE uid = $1{}",
            self.for_update()
        )))
        .bind(version_uid)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status, old_digest, replace_requested_at)) = current else {
            discard(&upload.uid).execute(&mut *tx).await?;
            tx.commit().await?;
            return Err(StoreError::NotFound("the version was deleted while its upload was in progress".into()));
        };
        let already_uploaded = status == UploadStatus::Success && old_digest.is_some();
        if already_uploaded && old_digest.as_deref() == Some(digest) {
            discard(&upload.uid).execute(&mut *tx).await?;
            sqlx::query("UPDATE versions SET replace_requested_at = NULL, upload_id = NULL WHERE uid = $1")
                .bind(version_uid)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(FinalizeOutcome::Unchanged);
        }
        if already_uploaded && replace_requested_at.is_none() {
            discard(&upload.uid).execute(&mut *tx).await?;
            tx.commit().await?;
            return Err(StoreError::Conflict(
                "this version was already uploaded with different content; push with --force to replace it".into(),
            ));
        }
        // Take (or create) the blob row; on PostgreSQL the no-op update locks
        // it against a concurrent garbage collection.
        let stored_key: String = sqlx::query_scalar(
            "INSERT INTO blobs (digest, storage_key, size_bytes, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (digest) DO UPDATE SET size_bytes = excluded.size_bytes RETURNING storage_key",
        )
        .bind(digest)
        .bind(&upload.storage_key)
        .bind(size)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let deduplicated = stored_key != upload.storage_key;
        if deduplicated {
            discard(&upload.uid).execute(&mut *tx).await?;
        } else {
            sqlx::query("DELETE FROM uploads WHERE uid = $1").bind(&upload.uid).execute(&mut *tx).await?;
        }
        sqlx::query(
            "UPDATE versions SET upload_status = $4, upload_finished_reason = '', blob_digest = $1, \
             upload_finished_at = $2, updated_at = $2, replace_requested_at = NULL, upload_id = NULL WHERE uid = $3",
        )
        .bind(digest)
        .bind(now)
        .bind(version_uid)
        .bind(UploadStatus::Success.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let replaced = old_digest.filter(|d| d != digest);
        Ok(if deduplicated { FinalizeOutcome::Deduplicated { replaced } } else { FinalizeOutcome::Stored { replaced } })
    }

    /// Records a failed or abandoned upload. Content that was already stored
    /// stays as it was; a version that had none becomes `failed`.
    pub async fn fail_upload(&self, version_uid: &str, upload_uid: Option<&str>, reason: &str) -> Result<()> {
        let now = Timestamp::now().0;
        let mut tx = self.begin_write().await?;
        if let Some(uid) = upload_uid {
            discard(uid).execute(&mut *tx).await?;
        }
        sqlx::query(
            "UPDATE versions SET upload_status = CASE WHEN upload_status = $4 THEN upload_status ELSE $5 END, \
             upload_finished_reason = CASE WHEN upload_status = $4 THEN upload_finished_reason ELSE $1 END, \
             upload_finished_at = CASE WHEN upload_status = $4 THEN upload_finished_at ELSE $2 END, \
             replace_requested_at = NULL, upload_id = NULL, updated_at = $2 WHERE uid = $3",
        )
        .bind(reason)
        .bind(now)
        .bind(version_uid)
        .bind(UploadStatus::Success.as_str())
        .bind(UploadStatus::Failed.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The storage key of a blob.
    pub async fn blob_key(&self, digest: &str) -> Result<Option<(String, i64)>> {
        Ok(sqlx::query_as("SELECT storage_key, size_bytes FROM blobs WHERE digest = $1")
            .bind(digest)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Blobs no version points at.
    pub async fn unreferenced_blobs(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT b.digest FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM versions v WHERE v.blob_digest = b.digest)",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Deletes a blob's row if no version points at it, and returns the
    /// storage key whose object the caller must now delete.
    pub async fn delete_blob_if_unreferenced(&self, digest: &str) -> Result<Option<String>> {
        let mut tx = self.begin_write().await?;
        let key: Option<String> =
            sqlx::query_scalar(built(format!("SELECT storage_key FROM blobs WHERE digest = $1{}", self.for_update())))
                .bind(digest)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(key) = key else { return Ok(None) };
        let refs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM versions WHERE blob_digest = $1")
            .bind(digest)
            .fetch_one(&mut *tx)
            .await?;
        if refs > 0 {
            return Ok(None);
        }
        sqlx::query("DELETE FROM blobs WHERE digest = $1").bind(digest).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(key))
    }
}

impl Store {
    /// Records (or replaces, on a retry) one received part.
    pub async fn record_part(&self, upload_uid: &str, part: i64, etag: &str, size: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO upload_parts (upload_uid, part_number, etag, size_bytes) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (upload_uid, part_number) DO UPDATE SET etag = excluded.etag, size_bytes = excluded.size_bytes",
        )
        .bind(upload_uid)
        .bind(part)
        .bind(etag)
        .bind(size)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Received parts of an upload: `(part_number, etag, size)` in order.
    pub async fn list_parts(&self, upload_uid: &str) -> Result<Vec<(i64, String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT part_number, etag, size_bytes FROM upload_parts WHERE upload_uid = $1 ORDER BY part_number",
        )
        .bind(upload_uid)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn delete_parts(&self, upload_uid: &str) -> Result<()> {
        sqlx::query("DELETE FROM upload_parts WHERE upload_uid = $1").bind(upload_uid).execute(self.pool()).await?;
        Ok(())
    }
}
