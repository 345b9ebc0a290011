//! The schema as data, for `yatai backup` and `yatai restore`: every table in
//! an order where a row's references come before it, the columns a table has
//! here, and the migration the database is at.

use crate::{Dialect, Result, Store, built};

/// Every table of the schema, each after the tables its rows refer to. A
/// restore inserts them in this order; the test below keeps it complete.
pub const TABLES: &[&str] = &[
    "settings",
    "organizations",
    "users",
    "organization_members",
    "api_tokens",
    "repositories",
    "blobs",
    "versions",
    "bento_model_refs",
    "uploads",
    "upload_parts",
    "events",
    "clusters",
    "deployments",
    "deployment_revisions",
    "deployment_targets",
    "image_builds",
    "web_sessions",
    "organization_invitations",
    "secrets",
];

/// A column and whether it holds integers (`BIGINT`/`INTEGER`); every other
/// column of the schema holds text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub integer: bool,
}

impl Store {
    pub fn is_postgres(&self) -> bool {
        self.dialect() == Dialect::Postgres
    }

    /// The newest migration this binary knows.
    pub fn latest_known_migration(&self) -> i64 {
        let migrator = match self.dialect() {
            Dialect::Sqlite => &crate::SQLITE_MIGRATIONS,
            Dialect::Postgres => &crate::POSTGRES_MIGRATIONS,
        };
        migrator.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// The tables the database holds (not sqlx's bookkeeping, not SQLite's).
    pub async fn table_names(&self) -> Result<Vec<String>> {
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
                 AND name <> '_sqlx_migrations' ORDER BY name"
            }
            Dialect::Postgres => {
                "SELECT table_name::TEXT FROM information_schema.tables WHERE table_schema = current_schema() \
                 AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations' ORDER BY table_name"
            }
        };
        Ok(sqlx::query_scalar(sql).fetch_all(self.pool()).await?)
    }

    /// The columns of `table` (one of [`TABLES`]) in this database.
    pub async fn columns(&self, table: &str) -> Result<Vec<Column>> {
        let table = known(table)?;
        let rows: Vec<(String, String)> = match self.dialect() {
            Dialect::Sqlite => {
                sqlx::query_as(built(format!("SELECT name, type FROM pragma_table_info('{table}') ORDER BY cid")))
                    .fetch_all(self.pool())
                    .await?
            }
            Dialect::Postgres => {
                sqlx::query_as(
                    "SELECT column_name::TEXT, data_type::TEXT FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(self.pool())
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(name, ty)| {
                let ty = ty.to_ascii_lowercase();
                Column { name, integer: ty.contains("int") }
            })
            .collect())
    }
}

/// `table` if it is one of [`TABLES`] (names are spliced into SQL, so only
/// this crate's own constants may be).
pub fn known(table: &str) -> Result<&'static str> {
    TABLES
        .iter()
        .find(|t| **t == table)
        .copied()
        .ok_or_else(|| crate::StoreError::Invalid(format!("no table {table:?} in this version's schema")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A migration that adds a table must add it to TABLES too, or backups
    /// would silently leave it out.
    #[tokio::test]
    async fn every_table_of_the_schema_is_listed_for_backups() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("db").display())).await.unwrap();
        let mut listed: Vec<&str> = TABLES.to_vec();
        listed.sort();
        assert_eq!(store.table_names().await.unwrap(), listed);
        let cols = store.columns("versions").await.unwrap();
        assert!(cols.contains(&Column { name: "seq".into(), integer: true }), "{cols:?}");
        assert!(cols.contains(&Column { name: "manifest".into(), integer: false }), "{cols:?}");
        assert!(store.latest_known_migration() >= 10);
        assert!(known("sqlite_master").is_err());
    }
}
