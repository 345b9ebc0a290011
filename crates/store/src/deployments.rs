//! Clusters, deployments, their revisions and targets.
//!
//! A deployment's configuration lives in its revisions: every create or
//! update adds one and makes it the only `active` revision, so any earlier
//! one can be restored. The deployment row itself holds only identity, what
//! the user wants (`desired`) and what is observed (`status`).

use sqlx::FromRow;
use yatai_core::deploy::{Desired, Phase, RevisionStatus};

use crate::{Result, Store, StoreError, Timestamp, built, is_unique_violation, new_uid, placeholders};

#[derive(Debug, Clone, FromRow)]
pub struct ClusterRow {
    pub uid: String,
    pub org_uid: String,
    pub name: String,
    pub description: String,
    /// `local` or `kubernetes`.
    pub kind: String,
    pub config: String,
    pub creator_uid: Option<String>,
    pub creator_name: Option<String>,
    pub created_at: i64,
    pub updated_at: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct DeploymentRow {
    pub uid: String,
    pub org_uid: String,
    pub cluster_uid: String,
    pub cluster_name: String,
    pub namespace: String,
    pub name: String,
    pub description: String,
    pub labels: String,
    pub desired: String,
    pub status: String,
    pub status_reason: String,
    pub status_updated_at: Option<i64>,
    pub endpoint_port: Option<i64>,
    /// The host label under `--deployment-domain`, unique on the server
    /// (none for a deployment that lost a collision before hosts were unique).
    pub host: Option<String>,
    pub creator_uid: Option<String>,
    pub creator_name: Option<String>,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    /// `yatai`, or [`MANAGED_EXTERNALLY`].
    pub managed_by: String,
    /// An external deployment's bento as the cluster names it.
    pub external_bento: Option<String>,
}

/// `managed_by` of a deployment made outside yatai (a BentoDeployment applied with kubectl
/// or by GitOps): shown, followed, never changed.
pub const MANAGED_EXTERNALLY: &str = "external";

impl DeploymentRow {
    /// Made outside yatai: yatai must not change it.
    pub fn is_external(&self) -> bool {
        self.managed_by == MANAGED_EXTERNALLY
    }
}

/// A deployment found on a cluster that yatai did not make, as it is imported.
pub struct ExternalDeployment<'a> {
    /// The cluster's organization.
    pub org_uid: &'a str,
    pub cluster_uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// The registry's bento version, when it has the one the cluster runs.
    pub bento_uid: Option<&'a str>,
    /// The bento as the cluster names it.
    pub bento: &'a str,
    /// JSON (the client's DeploymentConfigSchema) of what the cluster runs it with.
    pub config: &'a str,
}

/// What [`Store::import_external_deployment`] did.
#[derive(Debug)]
pub enum Imported {
    /// A new deployment row.
    New(DeploymentRow),
    /// What the cluster runs changed: a new revision.
    Revised(DeploymentRow),
    Unchanged(DeploymentRow),
    /// A yatai deployment has that name in that namespace of the cluster.
    Taken,
}

#[derive(Debug, Clone, FromRow)]
pub struct RevisionRow {
    pub seq: i64,
    pub uid: String,
    pub deployment_uid: String,
    pub status: String,
    pub rollback_of: Option<String>,
    pub creator_uid: Option<String>,
    pub creator_name: Option<String>,
    pub created_at: i64,
    pub updated_at: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct TargetRow {
    pub uid: String,
    pub revision_uid: String,
    pub deployment_uid: String,
    pub name: String,
    pub bento_uid: String,
    pub config: String,
    pub creator_uid: Option<String>,
    pub created_at: i64,
}

pub struct NewTarget<'a> {
    pub name: &'a str,
    pub bento_uid: &'a str,
    /// JSON (the client's DeploymentConfigSchema).
    pub config: &'a str,
}

pub struct NewDeployment<'a> {
    pub org_uid: &'a str,
    pub cluster_uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub labels: &'a str,
    pub creator_uid: &'a str,
    pub endpoint_port: Option<u16>,
    /// Host label (`<name>-<namespace>`); unique across organizations.
    pub host: &'a str,
    pub targets: &'a [NewTarget<'a>],
}

/// Filters for deployment lists.
#[derive(Debug, Clone, Default)]
pub struct DeploymentFilter {
    pub cluster_uid: Option<String>,
    pub search: Option<String>,
    pub status: Option<String>,
    pub start: i64,
    pub count: i64,
}

pub(crate) const CLUSTER_SELECT: &str = "SELECT c.uid, c.org_uid, c.name, c.description, c.kind, c.config, c.creator_uid, \
     u.name AS creator_name, c.created_at, c.updated_at FROM clusters c LEFT JOIN users u ON u.uid = c.creator_uid";

const DEPLOYMENT_SELECT: &str = "SELECT d.uid, d.org_uid, d.cluster_uid, c.name AS cluster_name, d.namespace, d.name, \
     d.description, d.labels, d.desired, d.status, d.status_reason, d.status_updated_at, d.endpoint_port, \
     d.host, d.creator_uid, u.name AS creator_name, d.created_at, d.updated_at, d.managed_by, d.external_bento \
     FROM deployments d JOIN clusters c ON c.uid = d.cluster_uid LEFT JOIN users u ON u.uid = d.creator_uid";

const REVISION_SELECT: &str = "SELECT r.seq, r.uid, r.deployment_uid, r.status, r.rollback_of, r.creator_uid, \
     u.name AS creator_name, r.created_at, r.updated_at \
     FROM deployment_revisions r LEFT JOIN users u ON u.uid = r.creator_uid";

/// The targets of deployments' active revisions (`t`, revision `rv`): what
/// is running, as opposed to what was.
pub(crate) fn active_targets() -> String {
    format!(
        "deployment_targets t JOIN deployment_revisions rv ON rv.uid = t.revision_uid AND rv.status = '{}'",
        RevisionStatus::Active
    )
}

const TARGET_COLUMNS: &str = "uid, revision_uid, deployment_uid, name, bento_uid, config, creator_uid, created_at";

impl Store {
    /// Returns the organization's cluster of that name, creating it (of
    /// `kind`) if it does not exist.
    pub async fn ensure_cluster(&self, org_uid: &str, name: &str, kind: &str, description: &str) -> Result<ClusterRow> {
        sqlx::query(
            "INSERT INTO clusters (uid, org_uid, name, description, kind, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (org_uid, name) DO NOTHING",
        )
        .bind(new_uid())
        .bind(org_uid)
        .bind(name)
        .bind(description)
        .bind(kind)
        .bind(Timestamp::now().0)
        .execute(self.pool())
        .await?;
        self.get_cluster(org_uid, name).await?.ok_or_else(|| StoreError::NotFound(format!("cluster {name:?} vanished")))
    }

    pub async fn get_cluster(&self, org_uid: &str, name: &str) -> Result<Option<ClusterRow>> {
        Ok(sqlx::query_as(built(format!("{CLUSTER_SELECT} WHERE c.org_uid = $1 AND c.name = $2")))
            .bind(org_uid)
            .bind(name)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn list_clusters(&self, org_uid: &str) -> Result<Vec<ClusterRow>> {
        Ok(sqlx::query_as(built(format!("{CLUSTER_SELECT} WHERE c.org_uid = $1 ORDER BY c.created_at")))
            .bind(org_uid)
            .fetch_all(self.pool())
            .await?)
    }

    /// Creates a deployment with its first (active) revision.
    pub async fn create_deployment(&self, d: NewDeployment<'_>) -> Result<DeploymentRow> {
        let uid = new_uid();
        let now = Timestamp::now().0;
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO deployments (uid, org_uid, cluster_uid, namespace, name, description, labels, desired, status, \
             status_updated_at, endpoint_port, creator_uid, created_at, host) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $12, $13, $8, $9, $10, $8, $11)",
        )
        .bind(&uid)
        .bind(d.org_uid)
        .bind(d.cluster_uid)
        .bind(d.namespace)
        .bind(d.name)
        .bind(d.description)
        .bind(d.labels)
        .bind(now)
        .bind(d.endpoint_port.map(i64::from))
        .bind(d.creator_uid)
        .bind(d.host)
        .bind(Desired::Running.as_str())
        .bind(Phase::Deploying.as_str())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                // Which constraint fired depends on the engine's order of
                // checks; the user's own name clash is the one to report.
                let own = self.get_deployment(d.org_uid, d.cluster_uid, d.namespace, d.name).await?;
                return Err(StoreError::Conflict(if own.is_some() {
                    format!(
                        "a deployment named {:?} already exists in namespace {:?}; pick another name or update it",
                        d.name, d.namespace
                    )
                } else {
                    format!(
                        "another deployment, possibly of another organization, already answers at host {:?} \
                         (`<name>-<namespace>` is unique on this server); pick another name",
                        d.host
                    )
                }));
            }
            Err(e) => return Err(e.into()),
        }
        insert_revision(&mut tx, &uid, Some(d.creator_uid), None, d.targets).await?;
        tx.commit().await?;
        self.get_deployment_by_uid(&uid).await?.ok_or_else(|| StoreError::NotFound("deployment vanished".into()))
    }

    pub async fn get_deployment(
        &self,
        org_uid: &str,
        cluster_uid: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<DeploymentRow>> {
        Ok(sqlx::query_as(built(format!(
            "{DEPLOYMENT_SELECT} WHERE d.org_uid = $1 AND d.cluster_uid = $2 AND d.namespace = $3 AND d.name = $4"
        )))
        .bind(org_uid)
        .bind(cluster_uid)
        .bind(namespace)
        .bind(name)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn get_deployment_by_uid(&self, uid: &str) -> Result<Option<DeploymentRow>> {
        Ok(sqlx::query_as(built(format!("{DEPLOYMENT_SELECT} WHERE d.uid = $1")))
            .bind(uid)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Deployments of an organization named `name`, in any cluster.
    pub async fn find_deployments_by_name(&self, org_uid: &str, name: &str) -> Result<Vec<DeploymentRow>> {
        Ok(sqlx::query_as(built(format!(
            "{DEPLOYMENT_SELECT} WHERE d.org_uid = $1 AND d.name = $2 ORDER BY d.created_at"
        )))
        .bind(org_uid)
        .bind(name)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn list_deployments(&self, org_uid: &str, f: &DeploymentFilter) -> Result<(Vec<DeploymentRow>, i64)> {
        let search =
            f.search.as_deref().filter(|s| !s.is_empty()).map(|s| format!("%{}%", crate::registry::like_escape(s)));
        let filter = "WHERE d.org_uid = $1 AND ($2 IS NULL OR d.cluster_uid = $2) \
                      AND ($3 IS NULL OR d.name LIKE $3 ESCAPE '\\') AND ($4 IS NULL OR d.status = $4)";
        let total: i64 = sqlx::query_scalar(built(format!("SELECT COUNT(*) FROM deployments d {filter}")))
            .bind(org_uid)
            .bind(&f.cluster_uid)
            .bind(&search)
            .bind(&f.status)
            .fetch_one(self.pool())
            .await?;
        let rows = sqlx::query_as(built(format!(
            "{DEPLOYMENT_SELECT} {filter} ORDER BY d.created_at DESC, d.uid LIMIT $5 OFFSET $6"
        )))
        .bind(org_uid)
        .bind(&f.cluster_uid)
        .bind(&search)
        .bind(&f.status)
        .bind(f.count)
        .bind(f.start)
        .fetch_all(self.pool())
        .await?;
        Ok((rows, total))
    }

    /// Every deployment of every organization (for the runtime at start).
    pub async fn all_deployments(&self) -> Result<Vec<DeploymentRow>> {
        Ok(sqlx::query_as(built(format!("{DEPLOYMENT_SELECT} ORDER BY d.created_at"))).fetch_all(self.pool()).await?)
    }

    /// Adds a revision and makes it the only active one.
    pub async fn add_revision(
        &self,
        deployment_uid: &str,
        creator_uid: &str,
        rollback_of: Option<&str>,
        targets: &[NewTarget<'_>],
    ) -> Result<RevisionRow> {
        let mut tx = self.begin_write().await?;
        let uid = insert_revision(&mut tx, deployment_uid, Some(creator_uid), rollback_of, targets).await?;
        sqlx::query("UPDATE deployments SET updated_at = $1 WHERE uid = $2")
            .bind(Timestamp::now().0)
            .bind(deployment_uid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_revision(deployment_uid, &uid)
            .await?
            .map(|(r, _)| r)
            .ok_or_else(|| StoreError::NotFound("revision vanished".into()))
    }

    pub async fn active_revision(&self, deployment_uid: &str) -> Result<Option<(RevisionRow, Vec<TargetRow>)>> {
        let rev: Option<RevisionRow> = sqlx::query_as(built(format!(
            "{REVISION_SELECT} WHERE r.deployment_uid = $1 AND r.status = $2 ORDER BY r.seq DESC LIMIT 1"
        )))
        .bind(deployment_uid)
        .bind(RevisionStatus::Active.as_str())
        .fetch_optional(self.pool())
        .await?;
        match rev {
            None => Ok(None),
            Some(r) => {
                let targets = self.revision_targets(&r.uid).await?;
                Ok(Some((r, targets)))
            }
        }
    }

    pub async fn get_revision(&self, deployment_uid: &str, uid: &str) -> Result<Option<(RevisionRow, Vec<TargetRow>)>> {
        let rev: Option<RevisionRow> =
            sqlx::query_as(built(format!("{REVISION_SELECT} WHERE r.deployment_uid = $1 AND r.uid = $2")))
                .bind(deployment_uid)
                .bind(uid)
                .fetch_optional(self.pool())
                .await?;
        match rev {
            None => Ok(None),
            Some(r) => {
                let targets = self.revision_targets(&r.uid).await?;
                Ok(Some((r, targets)))
            }
        }
    }

    async fn revision_targets(&self, revision_uid: &str) -> Result<Vec<TargetRow>> {
        Ok(sqlx::query_as(built(format!(
            "SELECT {TARGET_COLUMNS} FROM deployment_targets WHERE revision_uid = $1 ORDER BY name = 'main' DESC, name"
        )))
        .bind(revision_uid)
        .fetch_all(self.pool())
        .await?)
    }

    /// Revisions, newest first, with their targets.
    pub async fn list_revisions(&self, deployment_uid: &str) -> Result<Vec<(RevisionRow, Vec<TargetRow>)>> {
        let revs: Vec<RevisionRow> =
            sqlx::query_as(built(format!("{REVISION_SELECT} WHERE r.deployment_uid = $1 ORDER BY r.seq DESC")))
                .bind(deployment_uid)
                .fetch_all(self.pool())
                .await?;
        let mut out = Vec::with_capacity(revs.len());
        for r in revs {
            let t = self.revision_targets(&r.uid).await?;
            out.push((r, t));
        }
        Ok(out)
    }

    pub async fn set_desired(&self, deployment_uid: &str, desired: &str) -> Result<()> {
        sqlx::query("UPDATE deployments SET desired = $1, updated_at = $2 WHERE uid = $3")
            .bind(desired)
            .bind(Timestamp::now().0)
            .bind(deployment_uid)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records an observed status; returns whether it changed.
    pub async fn set_status(&self, deployment_uid: &str, status: &str, reason: &str) -> Result<bool> {
        let changed = sqlx::query(
            "UPDATE deployments SET status = $1, status_reason = $2, status_updated_at = $3 \
             WHERE uid = $4 AND (status <> $1 OR status_reason <> $2)",
        )
        .bind(status)
        .bind(reason)
        .bind(Timestamp::now().0)
        .bind(deployment_uid)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    pub async fn set_endpoint_port(&self, deployment_uid: &str, port: u16) -> Result<()> {
        sqlx::query("UPDATE deployments SET endpoint_port = $1 WHERE uid = $2")
            .bind(i64::from(port))
            .bind(deployment_uid)
            .execute(self.pool())
            .await
            .map_err(|e| {
                if is_unique_violation(&e) { StoreError::Conflict(format!("port {port} is taken")) } else { e.into() }
            })?;
        Ok(())
    }

    pub async fn used_endpoint_ports(&self) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar("SELECT endpoint_port FROM deployments WHERE endpoint_port IS NOT NULL")
            .fetch_all(self.pool())
            .await?)
    }

    pub async fn delete_deployment(&self, deployment_uid: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM deployment_targets WHERE deployment_uid = $1")
            .bind(deployment_uid)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM deployment_revisions WHERE deployment_uid = $1")
            .bind(deployment_uid)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM deployments WHERE uid = $1").bind(deployment_uid).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The external deployments of a cluster (every organization's, though a cluster has one).
    pub async fn external_deployments(&self, cluster_uid: &str) -> Result<Vec<DeploymentRow>> {
        Ok(sqlx::query_as(built(format!(
            "{DEPLOYMENT_SELECT} WHERE d.cluster_uid = $1 AND d.managed_by = $2 ORDER BY d.namespace, d.name"
        )))
        .bind(cluster_uid)
        .bind(MANAGED_EXTERNALLY)
        .fetch_all(self.pool())
        .await?)
    }

    /// Records a deployment found on a cluster that yatai did not make: a new row owned by the
    /// cluster's organization (no creator, no host: the cluster publishes it), or a new
    /// revision when what it runs changed. A yatai deployment of that name is left alone.
    pub async fn import_external_deployment(&self, e: ExternalDeployment<'_>) -> Result<Imported> {
        let existing: Option<DeploymentRow> = sqlx::query_as(built(format!(
            "{DEPLOYMENT_SELECT} WHERE d.cluster_uid = $1 AND d.namespace = $2 AND d.name = $3"
        )))
        .bind(e.cluster_uid)
        .bind(e.namespace)
        .bind(e.name)
        .fetch_optional(self.pool())
        .await?;
        let targets = [NewTarget { name: "main", bento_uid: e.bento_uid.unwrap_or(""), config: e.config }];
        let now = Timestamp::now().0;
        let uid = match existing {
            Some(d) if !d.is_external() => return Ok(Imported::Taken),
            Some(d) => {
                let active = self.active_revision(&d.uid).await?.map(|(_, t)| t).unwrap_or_default();
                let same = d.external_bento.as_deref() == Some(e.bento)
                    && matches!(active.as_slice(), [t] if t.bento_uid == targets[0].bento_uid && t.config == e.config);
                if same {
                    return Ok(Imported::Unchanged(d));
                }
                let mut tx = self.begin_write().await?;
                insert_revision(&mut tx, &d.uid, None, None, &targets).await?;
                sqlx::query("UPDATE deployments SET external_bento = $1, updated_at = $2 WHERE uid = $3")
                    .bind(e.bento)
                    .bind(now)
                    .bind(&d.uid)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                let d = self.get_deployment_by_uid(&d.uid).await?;
                return Ok(d.map(Imported::Revised).unwrap_or(Imported::Taken));
            }
            None => new_uid(),
        };
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO deployments (uid, org_uid, cluster_uid, namespace, name, desired, status, status_reason, \
             status_updated_at, created_at, managed_by, external_bento) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)",
        )
        .bind(&uid)
        .bind(e.org_uid)
        .bind(e.cluster_uid)
        .bind(e.namespace)
        .bind(e.name)
        .bind(Desired::Running.as_str())
        .bind(Phase::Deploying.as_str())
        .bind("found on the cluster; waiting for its status")
        .bind(now)
        .bind(MANAGED_EXTERNALLY)
        .bind(e.bento)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            // A yatai deployment took the name meanwhile.
            Err(err) if is_unique_violation(&err) => return Ok(Imported::Taken),
            Err(err) => return Err(err.into()),
        }
        insert_revision(&mut tx, &uid, None, None, &targets).await?;
        tx.commit().await?;
        let d = self.get_deployment_by_uid(&uid).await?;
        Ok(d.map(Imported::New).unwrap_or(Imported::Taken))
    }

    /// Names (`namespace/name`) of deployments whose active revision runs
    /// this bento version.
    pub(crate) async fn deployments_using_bento(&self, bento_uid: &str) -> Result<Vec<String>> {
        let rows: Vec<(String, String)> = sqlx::query_as(built(format!(
            "SELECT d.namespace, d.name FROM {active_targets} \
             JOIN deployments d ON d.uid = t.deployment_uid WHERE t.bento_uid = $1 ORDER BY d.name",
            active_targets = active_targets()
        )))
        .bind(bento_uid)
        .fetch_all(self.pool())
        .await?;
        let mut names: Vec<String> = rows.into_iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
        names.dedup();
        Ok(names)
    }
}

async fn insert_revision(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    deployment_uid: &str,
    creator_uid: Option<&str>,
    rollback_of: Option<&str>,
    targets: &[NewTarget<'_>],
) -> Result<String> {
    let now = Timestamp::now().0;
    sqlx::query(
        "UPDATE deployment_revisions SET status = $3, updated_at = $1 WHERE deployment_uid = $2 AND status = $4",
    )
    .bind(now)
    .bind(deployment_uid)
    .bind(RevisionStatus::Inactive.as_str())
    .bind(RevisionStatus::Active.as_str())
    .execute(&mut **tx)
    .await?;
    let uid = new_uid();
    sqlx::query(
        "INSERT INTO deployment_revisions (uid, deployment_uid, status, rollback_of, creator_uid, created_at) \
         VALUES ($1, $2, $6, $3, $4, $5)",
    )
    .bind(&uid)
    .bind(deployment_uid)
    .bind(rollback_of)
    .bind(creator_uid)
    .bind(now)
    .bind(RevisionStatus::Active.as_str())
    .execute(&mut **tx)
    .await?;
    for t in targets {
        sqlx::query(
            "INSERT INTO deployment_targets (uid, revision_uid, deployment_uid, name, bento_uid, config, creator_uid, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(new_uid())
        .bind(&uid)
        .bind(deployment_uid)
        .bind(t.name)
        .bind(t.bento_uid)
        .bind(t.config)
        .bind(creator_uid)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(uid)
}

/// A deployment whose active revision runs a bento, as version and
/// repository pages list them.
#[derive(Debug, Clone, FromRow)]
pub struct DeploymentUse {
    pub deployment_uid: String,
    pub namespace: String,
    pub name: String,
    pub status: String,
    pub cluster_name: String,
    pub repository: String,
    pub version: String,
}

impl Store {
    /// Deployments whose active revision runs a version of this repository
    /// (or, with `version_uid`, that one version).
    pub async fn deployment_uses(&self, repository_uid: &str, version_uid: Option<&str>) -> Result<Vec<DeploymentUse>> {
        Ok(sqlx::query_as(built(format!(
            "SELECT DISTINCT d.uid AS deployment_uid, d.namespace, d.name, d.status, c.name AS cluster_name, \
             r.name AS repository, v.version FROM {active_targets} \
             JOIN deployments d ON d.uid = t.deployment_uid JOIN clusters c ON c.uid = d.cluster_uid \
             JOIN versions v ON v.uid = t.bento_uid JOIN repositories r ON r.uid = v.repository_uid \
             WHERE v.repository_uid = $1 AND ($2 IS NULL OR v.uid = $2) ORDER BY d.name",
            active_targets = active_targets()
        )))
        .bind(repository_uid)
        .bind(version_uid)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn deployment_status_counts(&self, org_uid: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT status, COUNT(*) FROM deployments WHERE org_uid = $1 GROUP BY status ORDER BY status",
        )
        .bind(org_uid)
        .fetch_all(self.pool())
        .await?)
    }

    /// The bento each of these deployments' active revision runs (`main`
    /// target first): `(deployment uid, repository, version)`.
    pub async fn active_bentos(&self, deployment_uids: &[&str]) -> Result<Vec<(String, String, String)>> {
        if deployment_uids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT t.deployment_uid, r.name, v.version FROM {active_targets} \
             JOIN versions v ON v.uid = t.bento_uid JOIN repositories r ON r.uid = v.repository_uid \
             WHERE t.deployment_uid IN ({}) ORDER BY t.name = 'main' DESC",
            placeholders(deployment_uids.len()),
            active_targets = active_targets()
        );
        let mut q = sqlx::query_as(built(sql));
        for uid in deployment_uids {
            q = q.bind(*uid);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    pub async fn cluster_deployment_counts(&self, org_uid: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as("SELECT cluster_uid, COUNT(*) FROM deployments WHERE org_uid = $1 GROUP BY cluster_uid")
            .bind(org_uid)
            .fetch_all(self.pool())
            .await?)
    }
}
