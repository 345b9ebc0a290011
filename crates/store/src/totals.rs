//! What the store holds, counted for the server's metrics.

use crate::{Result, Store};

/// Counts across every organization.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// `(kind, upload status, versions)`.
    pub versions: Vec<(String, String, i64)>,
    /// Distinct archives in storage, and their bytes.
    pub blobs: i64,
    pub blob_bytes: i64,
    /// `(status, deployments)`.
    pub deployments: Vec<(String, i64)>,
}

impl Store {
    /// Three grouped counts; cheap enough for a scrape every few seconds.
    pub async fn totals(&self) -> Result<Totals> {
        let versions: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT r.kind, v.upload_status, COUNT(*) FROM versions v \
             JOIN repositories r ON r.uid = v.repository_uid GROUP BY r.kind, v.upload_status ORDER BY 1, 2",
        )
        .fetch_all(self.pool())
        .await?;
        let (blobs, blob_bytes): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM blobs")
                .fetch_one(self.pool())
                .await?;
        let deployments: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM deployments GROUP BY status ORDER BY 1")
                .fetch_all(self.pool())
                .await?;
        Ok(Totals { versions, blobs, blob_bytes, deployments })
    }
}
