//! Image builds: which bento, where it went, how it ended, and its log.

use sqlx::FromRow;

use crate::{Result, Store, StoreError, Timestamp, built, new_uid};

#[derive(Debug, Clone, FromRow)]
pub struct ImageBuildRow {
    pub uid: String,
    pub org_uid: String,
    pub bento_uid: String,
    pub status: String,
    pub registry: String,
    pub reference: String,
    pub digest: String,
    pub error: String,
    pub log: String,
    pub report: String,
    pub force: i64,
    pub creator_uid: Option<String>,
    pub creator_name: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

const SELECT: &str = "SELECT b.uid, b.org_uid, b.bento_uid, b.status, b.registry, b.reference, b.digest, b.error, b.log, \
     b.report, b.force, b.creator_uid, u.name AS creator_name, b.created_at, b.started_at, b.finished_at \
     FROM image_builds b LEFT JOIN users u ON u.uid = b.creator_uid";

impl Store {
    pub async fn create_image_build(
        &self,
        org_uid: &str,
        bento_uid: &str,
        registry: &str,
        force: bool,
        creator_uid: &str,
    ) -> Result<ImageBuildRow> {
        let uid = new_uid();
        sqlx::query(
            "INSERT INTO image_builds (uid, org_uid, bento_uid, status, registry, force, creator_uid, created_at) \
             VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7)",
        )
        .bind(&uid)
        .bind(org_uid)
        .bind(bento_uid)
        .bind(registry)
        .bind(force as i64)
        .bind(creator_uid)
        .bind(Timestamp::now().0)
        .execute(self.pool())
        .await?;
        sqlx::query("UPDATE versions SET image_build_status = 'pending' WHERE uid = $1")
            .bind(bento_uid)
            .execute(self.pool())
            .await?;
        self.get_image_build(org_uid, &uid).await?.ok_or_else(|| StoreError::NotFound("image build vanished".into()))
    }

    pub async fn get_image_build(&self, org_uid: &str, uid: &str) -> Result<Option<ImageBuildRow>> {
        Ok(sqlx::query_as(built(format!("{SELECT} WHERE b.org_uid = $1 AND b.uid = $2")))
            .bind(org_uid)
            .bind(uid)
            .fetch_optional(self.pool())
            .await?)
    }

    /// A bento's builds, newest first.
    pub async fn list_image_builds(&self, bento_uid: &str) -> Result<Vec<ImageBuildRow>> {
        Ok(sqlx::query_as(built(format!("{SELECT} WHERE b.bento_uid = $1 ORDER BY b.created_at DESC")))
            .bind(bento_uid)
            .fetch_all(self.pool())
            .await?)
    }

    /// Builds that were running when the server stopped.
    pub async fn unfinished_image_builds(&self) -> Result<Vec<ImageBuildRow>> {
        Ok(sqlx::query_as(built(format!("{SELECT} WHERE b.status IN ('pending', 'building') ORDER BY b.created_at")))
            .fetch_all(self.pool())
            .await?)
    }

    pub async fn start_image_build(&self, uid: &str, bento_uid: &str) -> Result<()> {
        let now = Timestamp::now().0;
        sqlx::query("UPDATE image_builds SET status = 'building', started_at = $1 WHERE uid = $2")
            .bind(now)
            .bind(uid)
            .execute(self.pool())
            .await?;
        sqlx::query("UPDATE versions SET image_build_status = 'building' WHERE uid = $1")
            .bind(bento_uid)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn set_image_build_log(&self, uid: &str, log: &str) -> Result<()> {
        sqlx::query("UPDATE image_builds SET log = $1 WHERE uid = $2").bind(log).bind(uid).execute(self.pool()).await?;
        Ok(())
    }

    /// Records how a build ended (`success` or `failed`), on the build and on its bento.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_image_build(
        &self,
        uid: &str,
        bento_uid: &str,
        status: &str,
        reference: &str,
        digest: &str,
        error: &str,
        log: &str,
        report: &str,
    ) -> Result<()> {
        let now = Timestamp::now().0;
        sqlx::query(
            "UPDATE image_builds SET status = $1, reference = $2, digest = $3, error = $4, log = $5, report = $6, finished_at = $7 \
             WHERE uid = $8",
        )
        .bind(status)
        .bind(reference)
        .bind(digest)
        .bind(error)
        .bind(log)
        .bind(report)
        .bind(now)
        .bind(uid)
        .execute(self.pool())
        .await?;
        sqlx::query("UPDATE versions SET image_build_status = $1 WHERE uid = $2")
            .bind(status)
            .bind(bento_uid)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
