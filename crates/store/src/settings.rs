//! Server-wide settings: a key-value table for what the server keeps about
//! itself between restarts (such as the first-run setup secret's hash).

use crate::{Result, Store, StoreError};

impl Store {
    pub async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Stores `value` under `key` unless the key is already set, and returns
    /// whatever value the key holds afterwards. Safe under concurrent callers.
    pub async fn get_or_init_setting(&self, key: &str, value: &str) -> Result<String> {
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(self.pool())
            .await?;
        self.get_setting(key).await?.ok_or_else(|| StoreError::NotFound(format!("setting {key} vanished")))
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn delete_setting(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM settings WHERE key = $1").bind(key).execute(self.pool()).await?;
        Ok(())
    }
}
