//! Server-wide settings: a key-value table that earlier versions kept
//! server secrets in. Nothing is written there any more; the server reads
//! what an older database holds (the URL signing key) to move it to a file,
//! then deletes it.

use crate::{Result, Store};

impl Store {
    pub async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn delete_setting(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM settings WHERE key = $1").bind(key).execute(self.pool()).await?;
        Ok(())
    }
}
