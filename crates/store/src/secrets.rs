//! An organization's secrets. The values arrive sealed (the application
//! seals them; the store never sees them in clear) and are read only by
//! [`Store::secret_sealed`], never with a [`SecretRow`], so that nothing that
//! lists or shows secrets can carry them by accident.

use sqlx::FromRow;

use crate::{Result, Store, StoreError, Timestamp, built, is_unique_violation};

#[derive(Debug, Clone, FromRow)]
pub struct SecretRow {
    pub uid: String,
    pub org_uid: String,
    pub name: String,
    pub description: String,
    /// `env` or `mountfile`.
    pub kind: String,
    /// `build`, `runtime` or `all`.
    pub stage: String,
    pub path: Option<String>,
    /// JSON: `[{"key", "sub_path"}]`, the items without their values.
    pub items: String,
    pub creator_uid: Option<String>,
    pub creator_name: Option<String>,
    pub created_at: i64,
    pub updated_at: Option<i64>,
}

/// A secret to store. The uid is chosen by the caller, because the sealed
/// values are bound to it.
pub struct NewSecret<'a> {
    pub uid: &'a str,
    pub org_uid: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub kind: &'a str,
    pub stage: &'a str,
    pub path: Option<&'a str>,
    pub items: &'a str,
    pub sealed: &'a str,
    pub creator_uid: Option<&'a str>,
}

/// A secret's new content; the description is kept when `None`.
pub struct SecretChange<'a> {
    pub description: Option<&'a str>,
    pub kind: &'a str,
    pub stage: &'a str,
    pub path: Option<&'a str>,
    pub items: &'a str,
    pub sealed: &'a str,
    /// Only if the secret is still as it was read (its `updated_at`, `None` if never updated):
    /// a replacement that keeps stored values must not keep those of an older version.
    pub if_updated_at: Option<Option<i64>>,
}

const SECRET_SELECT: &str = "SELECT s.uid, s.org_uid, s.name, s.description, s.kind, s.stage, s.path, s.items, \
     s.creator_uid, u.name AS creator_name, s.created_at, s.updated_at FROM secrets s \
     LEFT JOIN users u ON u.uid = s.creator_uid";

impl Store {
    pub async fn create_secret(&self, s: NewSecret<'_>) -> Result<SecretRow> {
        let inserted = sqlx::query(
            "INSERT INTO secrets (uid, org_uid, name, description, kind, stage, path, items, sealed, creator_uid, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(s.uid)
        .bind(s.org_uid)
        .bind(s.name)
        .bind(s.description)
        .bind(s.kind)
        .bind(s.stage)
        .bind(s.path)
        .bind(s.items)
        .bind(s.sealed)
        .bind(s.creator_uid)
        .bind(Timestamp::now().0)
        .execute(self.pool())
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "a secret named {:?} already exists in this organization; change it with `bentoml secret apply`",
                    s.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.get_secret(s.org_uid, s.name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("secret {:?} vanished", s.name)))
    }

    pub async fn get_secret(&self, org_uid: &str, name: &str) -> Result<Option<SecretRow>> {
        Ok(sqlx::query_as(built(format!("{SECRET_SELECT} WHERE s.org_uid = $1 AND s.name = $2")))
            .bind(org_uid)
            .bind(name)
            .fetch_optional(self.pool())
            .await?)
    }

    /// A page of the organization's secrets by name, with the total; `search`
    /// matches a part of the name.
    pub async fn list_secrets(
        &self,
        org_uid: &str,
        search: Option<&str>,
        start: i64,
        count: i64,
    ) -> Result<(Vec<SecretRow>, i64)> {
        let pattern = search.filter(|s| !s.is_empty()).map(|s| {
            let escaped = s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            format!("%{escaped}%")
        });
        let filter = "s.org_uid = $1 AND ($2 IS NULL OR s.name LIKE $2 ESCAPE '\\')";
        let rows = sqlx::query_as(built(format!("{SECRET_SELECT} WHERE {filter} ORDER BY s.name LIMIT $3 OFFSET $4")))
            .bind(org_uid)
            .bind(pattern.as_deref())
            .bind(count)
            .bind(start)
            .fetch_all(self.pool())
            .await?;
        let (total,): (i64,) = sqlx::query_as(built(format!("SELECT COUNT(*) FROM secrets s WHERE {filter}")))
            .bind(org_uid)
            .bind(pattern.as_deref())
            .fetch_one(self.pool())
            .await?;
        Ok((rows, total))
    }

    /// The sealed values of a secret (none: it was deleted).
    pub async fn secret_sealed(&self, uid: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT sealed FROM secrets WHERE uid = $1").bind(uid).fetch_optional(self.pool()).await?;
        Ok(row.map(|(s,)| s))
    }

    pub async fn update_secret(&self, org_uid: &str, uid: &str, c: SecretChange<'_>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE secrets SET description = COALESCE($1, description), kind = $2, stage = $3, path = $4, \
             items = $5, sealed = $6, updated_at = $7 WHERE org_uid = $8 AND uid = $9 \
             AND ($10 = 0 OR COALESCE(updated_at, -1) = $11)",
        )
        .bind(c.description)
        .bind(c.kind)
        .bind(c.stage)
        .bind(c.path)
        .bind(c.items)
        .bind(c.sealed)
        .bind(Timestamp::now().0)
        .bind(org_uid)
        .bind(uid)
        .bind(i64::from(c.if_updated_at.is_some()))
        .bind(c.if_updated_at.flatten().unwrap_or(-1))
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            let exists: Option<String> = sqlx::query_scalar("SELECT uid FROM secrets WHERE org_uid = $1 AND uid = $2")
                .bind(org_uid)
                .bind(uid)
                .fetch_optional(self.pool())
                .await?;
            return Err(match exists {
                Some(_) => StoreError::Conflict(
                    "the secret was replaced by someone else meanwhile; reload it and enter the values again".into(),
                ),
                None => StoreError::NotFound("the secret was deleted meanwhile".into()),
            });
        }
        Ok(())
    }

    /// Deployments of the organization whose active revision names the
    /// secret, whether running or terminated (a terminated one may be
    /// restored): `(uid, namespace/name)`.
    pub async fn deployments_using_secret(&self, org_uid: &str, name: &str) -> Result<Vec<(String, String)>> {
        let mut tx = self.pool().begin().await?;
        let used = using_secret(&mut tx, org_uid, name).await?;
        tx.commit().await?;
        Ok(used)
    }

    /// Deletes a secret no deployment names; with deployments, a conflict
    /// naming them.
    pub async fn delete_secret(&self, org_uid: &str, uid: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let name: Option<(String,)> = sqlx::query_as(built(format!(
            "SELECT name FROM secrets WHERE org_uid = $1 AND uid = $2{}",
            self.for_update()
        )))
        .bind(org_uid)
        .bind(uid)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((name,)) = name else {
            return Err(StoreError::NotFound("secret not found".into()));
        };
        let used = using_secret(&mut tx, org_uid, &name).await?;
        if !used.is_empty() {
            let shown: Vec<&str> = used.iter().take(20).map(|(_, n)| n.as_str()).collect();
            let more = if used.len() > 20 { format!(" and {} more", used.len() - 20) } else { String::new() };
            return Err(StoreError::Conflict(format!(
                "secret {name:?} is used by {} deployment(s): {}{more}; update them without it (or delete them) first",
                used.len(),
                shown.join(", ")
            )));
        }
        sqlx::query("DELETE FROM secrets WHERE uid = $1").bind(uid).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Deployments whose active revision's targets name `name` in their
/// configuration's `secrets` (the configuration is JSON, read here rather
/// than in SQL, which SQLite and PostgreSQL query differently).
async fn using_secret(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    org_uid: &str,
    name: &str,
) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = active_configs(&mut **tx, org_uid)
        .await?
        .into_iter()
        .filter(|(_, _, config)| names_secret(config, name))
        .map(|(uid, shown, _)| (uid, shown))
        .collect();
    out.dedup();
    Ok(out)
}

/// The active targets' configurations of the organization's deployments:
/// `(uid, namespace/name, config)`, by namespace and name.
async fn active_configs<'e, E>(db: E, org_uid: &str) -> Result<Vec<(String, String, serde_json::Value)>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(built(format!(
        "SELECT d.uid, d.namespace, d.name, t.config FROM {} JOIN deployments d ON d.uid = t.deployment_uid \
         WHERE d.org_uid = $1 ORDER BY d.namespace, d.name",
        crate::deployments::active_targets()
    )))
    .bind(org_uid)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(uid, ns, n, config)| serde_json::from_str(&config).ok().map(|c| (uid, format!("{ns}/{n}"), c)))
        .collect())
}

impl Store {
    /// Every secret of the organization that a deployment's active revision
    /// names, with those deployments (`namespace/name`, sorted, each once):
    /// one read for a whole list of secrets.
    pub async fn secrets_usage(&self, org_uid: &str) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
        let mut usage: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (_, shown, config) in active_configs(self.pool(), org_uid).await? {
            for name in secret_names(&config) {
                let users = usage.entry(name).or_default();
                if users.last() != Some(&shown) {
                    users.push(shown.clone());
                }
            }
        }
        Ok(usage)
    }
}

/// The secrets a deployment configuration names, on the deployment and its canary versions.
fn secret_names(config: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let names = |v: Option<&serde_json::Value>| -> Vec<String> {
        v.and_then(serde_json::Value::as_array)
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let mut out: std::collections::BTreeSet<String> = names(config.get("secrets")).into_iter().collect();
    if let Some(versions) = config.pointer("/canary/versions").and_then(serde_json::Value::as_object) {
        for v in versions.values() {
            out.extend(names(v.get("secrets")));
        }
    }
    out
}

/// Whether a deployment configuration names the secret, on the deployment or a canary version.
fn names_secret(config: &serde_json::Value, name: &str) -> bool {
    secret_names(config).contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        (dir, store)
    }

    fn new<'a>(uid: &'a str, org: &'a str, name: &'a str) -> NewSecret<'a> {
        NewSecret {
            uid,
            org_uid: org,
            name,
            description: "",
            kind: "env",
            stage: "runtime",
            path: None,
            items: r#"[{"key":"A","sub_path":null}]"#,
            sealed: "sealed-1",
            creator_uid: None,
        }
    }

    #[tokio::test]
    async fn secrets_are_scoped_to_their_organization_and_read_without_values() {
        let (_dir, store) = store().await;
        let a = store.create_org("a", "").await.unwrap();
        let b = store.create_org("b", "").await.unwrap();
        let row = store.create_secret(new("s1", &a.uid, "db")).await.unwrap();
        assert_eq!((row.kind.as_str(), row.items.contains("\"A\"")), ("env", true));
        let clash = store.create_secret(new("s2", &a.uid, "db")).await.unwrap_err();
        assert!(matches!(clash, StoreError::Conflict(ref m) if m.contains("\"db\"")), "{clash}");
        store.create_secret(new("s3", &b.uid, "db")).await.unwrap();
        assert!(store.get_secret(&b.uid, "db").await.unwrap().is_some_and(|s| s.uid == "s3"));
        let (page, total) = store.list_secrets(&a.uid, Some("d"), 0, 10).await.unwrap();
        assert_eq!((page.len(), total), (1, 1));
        assert_eq!(store.list_secrets(&a.uid, Some("%"), 0, 10).await.unwrap().1, 0);
        assert_eq!(store.secret_sealed("s1").await.unwrap().as_deref(), Some("sealed-1"));
        let change = SecretChange {
            description: Some("new"),
            kind: "mountfile",
            stage: "all",
            path: Some("$BENTOML_HOME"),
            items: "[]",
            sealed: "sealed-2",
            if_updated_at: None,
        };
        // Another organization's uid does not reach the row.
        assert!(store.update_secret(&b.uid, "s1", change).await.is_err());
        let read = store.get_secret(&a.uid, "db").await.unwrap().unwrap().updated_at;
        let change = |sealed| SecretChange {
            description: None,
            kind: "env",
            stage: "all",
            path: None,
            items: "[]",
            sealed,
            if_updated_at: Some(read),
        };
        store.update_secret(&a.uid, "s1", change("sealed-2")).await.unwrap();
        assert_eq!(store.secret_sealed("s1").await.unwrap().as_deref(), Some("sealed-2"));
        // A second change based on the same read finds the secret changed: refused, kept.
        let stale = store.update_secret(&a.uid, "s1", change("sealed-3")).await.unwrap_err();
        assert!(matches!(stale, StoreError::Conflict(ref m) if m.contains("meanwhile")), "{stale}");
        assert_eq!(store.secret_sealed("s1").await.unwrap().as_deref(), Some("sealed-2"));
        assert!(store.delete_secret(&b.uid, "s1").await.is_err());
        store.delete_secret(&a.uid, "s1").await.unwrap();
        assert!(store.get_secret(&a.uid, "db").await.unwrap().is_none());
    }

    #[test]
    fn configurations_name_secrets_on_the_deployment_or_a_canary() {
        let c = serde_json::json!({"secrets": ["db"], "canary": {"versions": {"v2": {"secrets": ["api"]}}}});
        assert!(names_secret(&c, "db") && names_secret(&c, "api") && !names_secret(&c, "d"));
        assert!(!names_secret(&serde_json::json!({"secrets": null}), "db"));
        let names: Vec<String> = secret_names(&c).into_iter().collect();
        assert_eq!(names, ["api", "db"]);
        assert!(secret_names(&serde_json::json!({"secrets": null})).is_empty());
    }
}
