//! Registering, changing and removing clusters. A Kubernetes cluster's
//! credentials are stored sealed (the application seals them; the store
//! never sees them in clear) and read only by [`Store::cluster_credentials`],
//! never with a [`ClusterRow`], so that nothing that lists or shows
//! clusters can carry them by accident.

use crate::deployments::CLUSTER_SELECT;
use crate::{ClusterRow, Result, Store, StoreError, Timestamp, built, is_unique_violation};

/// A cluster to register. The uid is chosen by the caller, because the
/// sealed credentials are bound to it.
pub struct NewCluster<'a> {
    pub uid: &'a str,
    pub org_uid: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub kind: &'a str,
    /// JSON of the settings that are not secret.
    pub config: &'a str,
    /// The sealed credentials.
    pub credentials: Option<&'a str>,
    pub creator_uid: Option<&'a str>,
}

/// What changes in a cluster; `None` keeps the stored value.
#[derive(Default)]
pub struct ClusterPatch<'a> {
    pub description: Option<&'a str>,
    pub config: Option<&'a str>,
    pub credentials: Option<&'a str>,
}

/// A cluster with its sealed credentials, for connecting at server start.
#[derive(Debug, Clone)]
pub struct StoredCluster {
    pub row: ClusterRow,
    pub credentials: Option<String>,
}

impl Store {
    pub async fn create_cluster(&self, c: NewCluster<'_>) -> Result<ClusterRow> {
        let inserted = sqlx::query(
            "INSERT INTO clusters (uid, org_uid, name, description, kind, config, credentials, creator_uid, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(c.uid)
        .bind(c.org_uid)
        .bind(c.name)
        .bind(c.description)
        .bind(c.kind)
        .bind(c.config)
        .bind(c.credentials)
        .bind(c.creator_uid)
        .bind(Timestamp::now().0)
        .execute(self.pool())
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "a cluster named {:?} already exists in this organization; pick another name or update it",
                    c.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.get_cluster(c.org_uid, c.name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("cluster {:?} vanished", c.name)))
    }

    pub async fn update_cluster(&self, org_uid: &str, uid: &str, p: ClusterPatch<'_>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE clusters SET description = COALESCE($1, description), config = COALESCE($2, config), \
             credentials = COALESCE($3, credentials), updated_at = $4 WHERE org_uid = $5 AND uid = $6",
        )
        .bind(p.description)
        .bind(p.config)
        .bind(p.credentials)
        .bind(Timestamp::now().0)
        .bind(org_uid)
        .bind(uid)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("the cluster was removed meanwhile".into()));
        }
        Ok(())
    }

    /// Removes a cluster that has no deployments; with deployments, a
    /// conflict naming them (they must be deleted first).
    pub async fn delete_cluster(&self, org_uid: &str, uid: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // Locks the row, so that no deployment joins the cluster between the
        // check and the delete (PostgreSQL; SQLite's write transaction
        // already excludes other writers).
        let name: Option<(String,)> = sqlx::query_as(built(format!(
            "SELECT name FROM clusters WHERE org_uid = $1 AND uid = $2{}",
            self.for_update()
        )))
        .bind(org_uid)
        .bind(uid)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((name,)) = name else {
            return Err(StoreError::NotFound("cluster not found".into()));
        };
        // Deployments made outside yatai are the cluster's, not yatai's: they go with it.
        for table in ["deployment_targets", "deployment_revisions"] {
            sqlx::query(built(format!(
                "DELETE FROM {table} WHERE deployment_uid IN \
                 (SELECT uid FROM deployments WHERE cluster_uid = $1 AND managed_by = $2)"
            )))
            .bind(uid)
            .bind(crate::MANAGED_EXTERNALLY)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM deployments WHERE cluster_uid = $1 AND managed_by = $2")
            .bind(uid)
            .bind(crate::MANAGED_EXTERNALLY)
            .execute(&mut *tx)
            .await?;
        let deployments: Vec<(String, String)> =
            sqlx::query_as("SELECT namespace, name FROM deployments WHERE cluster_uid = $1 ORDER BY namespace, name")
                .bind(uid)
                .fetch_all(&mut *tx)
                .await?;
        if !deployments.is_empty() {
            let shown: Vec<String> = deployments.iter().take(20).map(|(ns, n)| format!("{ns}/{n}")).collect();
            let more =
                if deployments.len() > 20 { format!(" and {} more", deployments.len() - 20) } else { String::new() };
            return Err(StoreError::Conflict(format!(
                "cluster {name:?} still has {} deployment(s): {}{more}; delete them first",
                deployments.len(),
                shown.join(", ")
            )));
        }
        sqlx::query("DELETE FROM clusters WHERE uid = $1").bind(uid).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The sealed credentials of a cluster (none: it has none).
    pub async fn cluster_credentials(&self, uid: &str) -> Result<Option<String>> {
        let row: Option<(Option<String>,)> = sqlx::query_as("SELECT credentials FROM clusters WHERE uid = $1")
            .bind(uid)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.and_then(|(c,)| c))
    }

    /// Every cluster of `kind`, in every organization, with its sealed
    /// credentials (the server connects them at start).
    pub async fn clusters_of_kind(&self, kind: &str) -> Result<Vec<StoredCluster>> {
        let rows: Vec<ClusterRow> =
            sqlx::query_as(built(format!("{CLUSTER_SELECT} WHERE c.kind = $1 ORDER BY c.created_at")))
                .bind(kind)
                .fetch_all(self.pool())
                .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let credentials = self.cluster_credentials(&row.uid).await?;
            out.push(StoredCluster { row, credentials });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn clusters_are_created_changed_and_removed_only_when_empty() {
        let (_dir, store) = store().await;
        let org = store.create_org("o", "").await.unwrap();
        let new = |uid: &'static str, name: &'static str| NewCluster {
            uid,
            org_uid: &org.uid,
            name,
            description: "",
            kind: "kubernetes",
            config: "{\"namespace\":\"yatai\"}",
            credentials: Some("sealed-1"),
            creator_uid: None,
        };
        let prod = store.create_cluster(new("u1", "prod")).await.unwrap();
        assert_eq!(prod.kind, "kubernetes");
        let clash = store.create_cluster(new("u2", "prod")).await.unwrap_err();
        assert!(matches!(clash, StoreError::Conflict(ref m) if m.contains("\"prod\"")), "{clash}");

        store
            .update_cluster(&org.uid, "u1", ClusterPatch { credentials: Some("sealed-2"), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(store.cluster_credentials("u1").await.unwrap().as_deref(), Some("sealed-2"));
        let row = store.get_cluster(&org.uid, "prod").await.unwrap().unwrap();
        assert_eq!(row.config, "{\"namespace\":\"yatai\"}", "an absent field keeps its value");
        assert_eq!(store.clusters_of_kind("kubernetes").await.unwrap().len(), 1);

        // Another organization's cluster is out of reach.
        let other = store.create_org("p", "").await.unwrap();
        assert!(matches!(store.delete_cluster(&other.uid, "u1").await, Err(StoreError::NotFound(_))));
        assert!(matches!(
            store.update_cluster(&other.uid, "u1", ClusterPatch::default()).await,
            Err(StoreError::NotFound(_))
        ));

        let targets = [crate::NewTarget { name: "main", bento_uid: "b", config: "{}" }];
        let deployment = |name: &'static str| crate::NewDeployment {
            org_uid: &org.uid,
            cluster_uid: "u1",
            namespace: "yatai",
            name,
            description: "",
            labels: "[]",
            creator_uid: "nobody",
            endpoint_port: None,
            host: name,
            targets: &targets,
        };
        let iris = store.create_deployment(deployment("iris")).await.unwrap();
        let summarize = store.create_deployment(deployment("summarize")).await.unwrap();
        let busy = store.delete_cluster(&org.uid, "u1").await.unwrap_err();
        assert!(
            matches!(busy, StoreError::Conflict(ref m) if m.contains("yatai/iris") && m.contains("yatai/summarize")),
            "{busy}"
        );
        assert!(store.get_cluster(&org.uid, "prod").await.unwrap().is_some(), "nothing is removed");
        store.delete_deployment(&iris.uid).await.unwrap();
        store.delete_deployment(&summarize.uid).await.unwrap();
        store.delete_cluster(&org.uid, "u1").await.unwrap();
        assert!(store.get_cluster(&org.uid, "prod").await.unwrap().is_none());
        assert!(store.cluster_credentials("u1").await.unwrap().is_none());
    }
}
