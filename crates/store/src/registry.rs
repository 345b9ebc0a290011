//! Model and bento repositories and their versions.
//!
//! Both kinds live in the same two tables, told apart by `kind`: the upload
//! pipeline, listing, labels and deletion are the same for both. What differs
//! is references: a bento names models, and a model named by a bento cannot be
//! deleted.

use sqlx::FromRow;
use yatai_core::{Tag, UploadStatus};

use crate::{Kind, Result, Store, StoreError, Timestamp, built, is_unique_violation, new_uid, placeholders};

#[derive(Debug, Clone, FromRow)]
pub struct RepositoryRow {
    pub uid: String,
    pub org_uid: String,
    pub kind: String,
    pub name: String,
    pub description: String,
    pub labels: String,
    pub creator_uid: Option<String>,
    pub creator_name: Option<String>,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    /// How many versions the repository holds.
    pub version_count: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct VersionRow {
    pub seq: i64,
    pub uid: String,
    pub repository_uid: String,
    pub repository_name: String,
    pub org_uid: String,
    pub kind: String,
    pub version: String,
    pub description: String,
    pub manifest: String,
    pub labels: String,
    pub build_at: Option<i64>,
    pub upload_status: String,
    pub upload_finished_reason: String,
    pub upload_started_at: Option<i64>,
    pub upload_finished_at: Option<i64>,
    pub upload_id: Option<String>,
    pub replace_requested_at: Option<i64>,
    pub blob_digest: Option<String>,
    /// Size of the stored archive, once uploaded.
    pub archive_size: Option<i64>,
    pub image_build_status: String,
    pub creator_uid: Option<String>,
    pub creator_name: Option<String>,
    pub created_at: i64,
    pub updated_at: Option<i64>,
}

impl VersionRow {
    pub fn kind(&self) -> Kind {
        Kind::parse(&self.kind).unwrap_or(Kind::Model)
    }

    pub fn tag(&self) -> String {
        format!("{}:{}", self.repository_name, self.version)
    }

    pub fn is_uploaded(&self) -> bool {
        self.upload_status == UploadStatus::Success && self.blob_digest.is_some()
    }
}

pub struct NewVersion<'a> {
    pub version: &'a str,
    pub description: &'a str,
    pub manifest: &'a str,
    pub labels: &'a str,
    pub build_at: Option<Timestamp>,
    pub creator_uid: &'a str,
    /// For bentos: the models its manifest names.
    pub model_refs: &'a [Tag],
}

#[derive(Default)]
pub struct VersionPatch<'a> {
    pub description: Option<&'a str>,
    pub manifest: Option<&'a str>,
    pub labels: Option<&'a str>,
    /// For bentos, when the manifest changes.
    pub model_refs: Option<&'a [Tag]>,
}

/// Pagination and filters for lists, newest first.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub start: i64,
    pub count: i64,
    /// Free text matched against names and versions.
    pub search: Option<String>,
    /// `label:key=value` (value `None` means "has the key").
    pub labels: Vec<(String, Option<String>)>,
}

/// A select of [`RepositoryRow`]s whose `version_count` is `$count`: the
/// selects differ only in how much counting versions may cost.
macro_rules! repo_select {
    ($count:literal) => {
        concat!(
            "SELECT r.uid, r.org_uid, r.kind, r.name, r.description, r.labels, r.creator_uid, \
             cu.name AS creator_name, r.created_at, r.updated_at, ",
            $count,
            " AS version_count FROM repositories r LEFT JOIN users cu ON cu.uid = r.creator_uid"
        )
    };
}

const REPO_SELECT: &str = repo_select!("(SELECT COUNT(*) FROM versions vc WHERE vc.repository_uid = r.uid)");

/// [`REPO_SELECT`] without the version count, which scans the repository's
/// versions (8 ms with 100,000 of them in SQLite) and is needed only by
/// responses that show it.
const REPO_SELECT_UNCOUNTED: &str = repo_select!("-1");

/// The repositories of one organization and kind whose name contains the
/// (escaped) pattern `$3`, if one is given: the API's list and the
/// dashboard's page filter alike.
const REPO_LIST_FILTER: &str = "WHERE r.org_uid = $1 AND r.kind = $2 AND ($3 IS NULL OR r.name LIKE $3 ESCAPE '\\')";

pub(crate) const VERSION_SELECT: &str = "SELECT v.seq, v.uid, v.repository_uid, r.name AS repository_name, r.org_uid, r.kind, \
     v.version, v.description, v.manifest, v.labels, v.build_at, v.upload_status, v.upload_finished_reason, \
     v.upload_started_at, v.upload_finished_at, v.upload_id, v.replace_requested_at, v.blob_digest, \
     b.size_bytes AS archive_size, v.image_build_status, v.creator_uid, cu.name AS creator_name, \
     v.created_at, v.updated_at \
     FROM versions v JOIN repositories r ON r.uid = v.repository_uid \
     LEFT JOIN blobs b ON b.digest = v.blob_digest LEFT JOIN users cu ON cu.uid = v.creator_uid";

/// Repositories with their version counts capped at [`COUNT_CAP`] + 1: an
/// exact count reads every version (8 ms for 100,000 in SQLite), and a list
/// of 25 large repositories would pay that 25 times.
const REPO_PAGE_SELECT: &str = repo_select!(
    "(SELECT COUNT(*) FROM (SELECT 1 FROM versions vc WHERE vc.repository_uid = r.uid LIMIT 1001) capped)"
);

/// Repository lists count versions up to this many ("1000+").
pub const COUNT_CAP: i64 = 1000;

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Builds the `WHERE` tail shared by version lists and their counts.
/// Parameters `$1..$3` are the org, kind and (optional) repository name.
fn version_filter(q: &ListQuery, one_repo: bool, binds: &mut Vec<String>) -> String {
    // With `r.name = $3` alone the repository is one row, and both databases
    // walk its versions newest first through `versions_newest` and stop at
    // the page; `($3 IS NULL OR r.name = $3)` made SQLite read and sort every
    // version (800 ms for a page of one with 100,000 versions).
    let mut sql = String::from(if one_repo {
        " WHERE r.org_uid = $1 AND r.kind = $2 AND r.name = $3"
    } else {
        " WHERE r.org_uid = $1 AND r.kind = $2 AND CAST($3 AS TEXT) IS NULL"
    });
    if let Some(s) = q.search.as_deref().filter(|s| !s.is_empty()) {
        binds.push(format!("%{}%", like_escape(s)));
        let n = binds.len() + 3;
        sql.push_str(&format!(" AND (v.version LIKE ${n} ESCAPE '\\' OR r.name LIKE ${n} ESCAPE '\\')"));
    }
    for (key, value) in &q.labels {
        let key_json = serde_json::to_string(key).expect("string");
        let pattern = match value {
            Some(v) => format!("{{\"key\":{key_json},\"value\":{}}}", serde_json::to_string(v).expect("string")),
            None => format!("{{\"key\":{key_json},"),
        };
        binds.push(format!("%{}%", like_escape(&pattern)));
        let n = binds.len() + 3;
        sql.push_str(&format!(" AND v.labels LIKE ${n} ESCAPE '\\'"));
    }
    sql
}

impl Store {
    /// How many repositories of `kind` match [`REPO_LIST_FILTER`] with `search`.
    async fn count_repositories(&self, org_uid: &str, kind: Kind, search: &Option<String>) -> Result<i64> {
        Ok(sqlx::query_scalar(built(format!("SELECT COUNT(*) FROM repositories r {REPO_LIST_FILTER}")))
            .bind(org_uid)
            .bind(kind.as_str())
            .bind(search)
            .fetch_one(self.pool())
            .await?)
    }

    pub async fn get_repository(&self, org_uid: &str, kind: Kind, name: &str) -> Result<Option<RepositoryRow>> {
        let sql = format!("{REPO_SELECT} WHERE r.org_uid = $1 AND r.kind = $2 AND r.name = $3");
        Ok(sqlx::query_as(built(sql)).bind(org_uid).bind(kind.as_str()).bind(name).fetch_optional(self.pool()).await?)
    }

    /// Like [`Store::get_repository`], without counting the versions
    /// (`version_count` is -1): for callers that need only the repository
    /// itself, such as creating or looking up a version.
    pub async fn get_repository_uncounted(
        &self,
        org_uid: &str,
        kind: Kind,
        name: &str,
    ) -> Result<Option<RepositoryRow>> {
        let sql = format!("{REPO_SELECT_UNCOUNTED} WHERE r.org_uid = $1 AND r.kind = $2 AND r.name = $3");
        Ok(sqlx::query_as(built(sql)).bind(org_uid).bind(kind.as_str()).bind(name).fetch_optional(self.pool()).await?)
    }

    pub async fn get_repositories_by_uid(&self, uids: &[&str]) -> Result<Vec<RepositoryRow>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("{REPO_SELECT} WHERE r.uid IN ({})", placeholders(uids.len()));
        let mut q = sqlx::query_as(built(sql));
        for uid in uids {
            q = q.bind(*uid);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    /// Creates a repository, or returns the existing one of that name: two
    /// clients racing to create the same repository both succeed.
    pub async fn create_repository(
        &self,
        org_uid: &str,
        kind: Kind,
        name: &str,
        description: &str,
        creator_uid: &str,
    ) -> Result<(RepositoryRow, bool)> {
        let inserted = sqlx::query(
            "INSERT INTO repositories (uid, org_uid, kind, name, description, creator_uid, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (org_uid, kind, name) DO NOTHING",
        )
        .bind(new_uid())
        .bind(org_uid)
        .bind(kind.as_str())
        .bind(name)
        .bind(description)
        .bind(creator_uid)
        .bind(Timestamp::now().0)
        .execute(self.pool())
        .await?
        .rows_affected()
            > 0;
        let row = self
            .get_repository(org_uid, kind, name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("{kind} repository {name:?} vanished")))?;
        Ok((row, inserted))
    }

    pub async fn list_repositories(
        &self,
        org_uid: &str,
        kind: Kind,
        q: &ListQuery,
    ) -> Result<(Vec<RepositoryRow>, i64)> {
        let search = q.search.as_deref().filter(|s| !s.is_empty()).map(|s| format!("%{}%", like_escape(s)));
        let filter = REPO_LIST_FILTER;
        let total = self.count_repositories(org_uid, kind, &search).await?;
        let sql = format!("{REPO_SELECT} {filter} ORDER BY r.created_at DESC, r.uid LIMIT $4 OFFSET $5");
        let rows = sqlx::query_as(built(sql))
            .bind(org_uid)
            .bind(kind.as_str())
            .bind(&search)
            .bind(q.count)
            .bind(q.start)
            .fetch_all(self.pool())
            .await?;
        Ok((rows, total))
    }

    pub async fn update_repository(
        &self,
        org_uid: &str,
        kind: Kind,
        name: &str,
        description: Option<&str>,
        labels: Option<&str>,
    ) -> Result<Option<RepositoryRow>> {
        sqlx::query(
            "UPDATE repositories SET description = COALESCE($1, description), labels = COALESCE($2, labels), \
             updated_at = $3 WHERE org_uid = $4 AND kind = $5 AND name = $6",
        )
        .bind(description)
        .bind(labels)
        .bind(Timestamp::now().0)
        .bind(org_uid)
        .bind(kind.as_str())
        .bind(name)
        .execute(self.pool())
        .await?;
        self.get_repository(org_uid, kind, name).await
    }

    pub async fn get_version(
        &self,
        org_uid: &str,
        kind: Kind,
        repo: &str,
        version: &str,
    ) -> Result<Option<VersionRow>> {
        let sql = format!("{VERSION_SELECT} WHERE r.org_uid = $1 AND r.kind = $2 AND r.name = $3 AND v.version = $4");
        Ok(sqlx::query_as(built(sql))
            .bind(org_uid)
            .bind(kind.as_str())
            .bind(repo)
            .bind(version)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn get_version_by_uid(&self, uid: &str) -> Result<Option<VersionRow>> {
        let sql = format!("{VERSION_SELECT} WHERE v.uid = $1");
        Ok(sqlx::query_as(built(sql)).bind(uid).fetch_optional(self.pool()).await?)
    }

    /// The newest version of a repository; with `uploaded_only`, the newest
    /// whose upload completed (what `latest` means to someone pulling).
    pub async fn latest_version(
        &self,
        org_uid: &str,
        kind: Kind,
        repo: &str,
        uploaded_only: bool,
    ) -> Result<Option<VersionRow>> {
        let sql = format!(
            "{VERSION_SELECT} WHERE r.org_uid = $1 AND r.kind = $2 AND r.name = $3 \
             AND ($4 = 0 OR v.upload_status = $5) ORDER BY v.seq DESC LIMIT 1"
        );
        Ok(sqlx::query_as(built(sql))
            .bind(org_uid)
            .bind(kind.as_str())
            .bind(repo)
            .bind(uploaded_only as i64)
            .bind(UploadStatus::Success.as_str())
            .fetch_optional(self.pool())
            .await?)
    }

    /// Newest versions first. `repo` limits the list to one repository.
    pub async fn list_versions(
        &self,
        org_uid: &str,
        kind: Kind,
        repo: Option<&str>,
        q: &ListQuery,
    ) -> Result<(Vec<VersionRow>, i64)> {
        let mut binds = Vec::new();
        let filter = version_filter(q, repo.is_some(), &mut binds);
        let count_sql =
            format!("SELECT COUNT(*) FROM versions v JOIN repositories r ON r.uid = v.repository_uid{filter}");
        let mut count = sqlx::query_scalar(built(count_sql)).bind(org_uid).bind(kind.as_str()).bind(repo);
        for b in &binds {
            count = count.bind(b);
        }
        let total: i64 = count.fetch_one(self.pool()).await?;
        let n = binds.len() + 4;
        let sql = format!("{VERSION_SELECT}{filter} ORDER BY v.seq DESC LIMIT ${n} OFFSET ${}", n + 1);
        let mut rows = sqlx::query_as(built(sql)).bind(org_uid).bind(kind.as_str()).bind(repo);
        for b in &binds {
            rows = rows.bind(b);
        }
        let rows = rows.bind(q.count).bind(q.start).fetch_all(self.pool()).await?;
        Ok((rows, total))
    }

    /// Creates a version, or returns the existing one with that name (and
    /// `false`): concurrent creators of the same version all succeed.
    pub async fn create_version(&self, repo: &RepositoryRow, new: NewVersion<'_>) -> Result<(VersionRow, bool)> {
        let uid = new_uid();
        let now = Timestamp::now().0;
        let mut tx = self.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO versions (uid, repository_uid, version, description, manifest, labels, build_at, \
             creator_uid, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (repository_uid, version) DO NOTHING",
        )
        .bind(&uid)
        .bind(&repo.uid)
        .bind(new.version)
        .bind(new.description)
        .bind(new.manifest)
        .bind(new.labels)
        .bind(new.build_at.map(|t| t.0))
        .bind(new.creator_uid)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if inserted {
            insert_model_refs(&mut tx, &uid, &repo.org_uid, new.model_refs).await?;
        }
        tx.commit().await?;
        let row = self
            .get_version(&repo.org_uid, Kind::parse(&repo.kind).unwrap_or(Kind::Model), &repo.name, new.version)
            .await?
            .ok_or_else(|| StoreError::NotFound("version vanished after insert".into()))?;
        Ok((row, inserted))
    }

    pub async fn patch_version(&self, row: &VersionRow, patch: VersionPatch<'_>) -> Result<VersionRow> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE versions SET description = COALESCE($1, description), manifest = COALESCE($2, manifest), \
             labels = COALESCE($3, labels), updated_at = $4 WHERE uid = $5",
        )
        .bind(patch.description)
        .bind(patch.manifest)
        .bind(patch.labels)
        .bind(Timestamp::now().0)
        .bind(&row.uid)
        .execute(&mut *tx)
        .await?;
        if let Some(refs) = patch.model_refs {
            sqlx::query("DELETE FROM bento_model_refs WHERE bento_uid = $1").bind(&row.uid).execute(&mut *tx).await?;
            insert_model_refs(&mut tx, &row.uid, &row.org_uid, refs).await?;
        }
        tx.commit().await?;
        self.get_version_by_uid(&row.uid)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("{} {} was deleted meanwhile", row.kind, row.tag())))
    }

    /// Bento tags (`name:version`) whose manifests name this model version.
    pub async fn model_referrers(&self, org_uid: &str, model: &str, version: &str) -> Result<Vec<String>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT r.name, v.version FROM bento_model_refs m JOIN versions v ON v.uid = m.bento_uid \
             JOIN repositories r ON r.uid = v.repository_uid \
             WHERE m.org_uid = $1 AND m.model_name = $2 AND m.model_version = $3 ORDER BY r.name, v.version",
        )
        .bind(org_uid)
        .bind(model)
        .bind(version)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(n, v)| format!("{n}:{v}")).collect())
    }

    /// The model tags a bento names, each with the stored model version if
    /// there is one.
    pub async fn bento_models(&self, bento: &VersionRow) -> Result<Vec<(String, String, Option<VersionRow>)>> {
        let refs: Vec<(String, String)> = sqlx::query_as(
            "SELECT model_name, model_version FROM bento_model_refs WHERE bento_uid = $1 ORDER BY model_name, model_version",
        )
        .bind(&bento.uid)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(refs.len());
        for (name, version) in refs {
            let found = self.get_version(&bento.org_uid, Kind::Model, &name, &version).await?;
            out.push((name, version, found));
        }
        Ok(out)
    }

    /// Deletes a version unless something refers to it. Returns the blob it
    /// pointed at, for garbage collection.
    pub async fn delete_version(&self, row: &VersionRow) -> Result<Option<String>> {
        self.check_deletable(row).await?;
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM bento_model_refs WHERE bento_uid = $1").bind(&row.uid).execute(&mut *tx).await?;
        let deleted = sqlx::query("DELETE FROM versions WHERE uid = $1").bind(&row.uid).execute(&mut *tx).await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("{} {} does not exist", row.kind, row.tag())));
        }
        tx.commit().await?;
        Ok(row.blob_digest.clone())
    }

    /// Deletes a repository and all its versions, unless any version is
    /// referred to. Returns the blobs the versions pointed at.
    pub async fn delete_repository(&self, repo: &RepositoryRow) -> Result<Vec<String>> {
        let kind = Kind::parse(&repo.kind).unwrap_or(Kind::Model);
        let all = ListQuery { start: 0, count: i64::MAX, ..Default::default() };
        let (versions, _) = self.list_versions(&repo.org_uid, kind, Some(&repo.name), &all).await?;
        let mut blocked = Vec::new();
        for v in &versions {
            if let Err(StoreError::Conflict(msg)) = self.check_deletable(v).await {
                blocked.push(msg);
            }
        }
        if !blocked.is_empty() {
            return Err(StoreError::Conflict(format!(
                "{} repository {:?} cannot be deleted: {}",
                repo.kind,
                repo.name,
                blocked.join("; ")
            )));
        }
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "DELETE FROM bento_model_refs WHERE bento_uid IN (SELECT uid FROM versions WHERE repository_uid = $1)",
        )
        .bind(&repo.uid)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM versions WHERE repository_uid = $1").bind(&repo.uid).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM repositories WHERE uid = $1").bind(&repo.uid).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(versions.into_iter().filter_map(|v| v.blob_digest).collect())
    }

    async fn check_deletable(&self, row: &VersionRow) -> Result<()> {
        if row.kind() == Kind::Bento {
            let users = self.deployments_using_bento(&row.uid).await?;
            if !users.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "bento {} is used by deployment{} {}; update or delete {} first",
                    row.tag(),
                    if users.len() == 1 { "" } else { "s" },
                    users.join(", "),
                    if users.len() == 1 { "it" } else { "them" },
                )));
            }
        }
        if row.kind() == Kind::Model {
            let bentos = self.model_referrers(&row.org_uid, &row.repository_name, &row.version).await?;
            if !bentos.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "model {} is used by bento{} {}; delete {} first",
                    row.tag(),
                    if bentos.len() == 1 { "" } else { "s" },
                    bentos.join(", "),
                    if bentos.len() == 1 { "it" } else { "them" },
                )));
            }
        }
        Ok(())
    }
}

async fn insert_model_refs(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    bento_uid: &str,
    org_uid: &str,
    refs: &[Tag],
) -> Result<()> {
    for tag in refs {
        let Some(version) = tag.version.as_deref() else {
            continue;
        };
        sqlx::query(
            "INSERT INTO bento_model_refs (bento_uid, org_uid, model_name, model_version) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(bento_uid)
        .bind(org_uid)
        .bind(&tag.name)
        .bind(version)
        .execute(&mut **tx)
        .await
        .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict(e.to_string()) } else { e.into() })?;
    }
    Ok(())
}

/// How a repository list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RepoSort {
    /// Most recently pushed to first.
    #[default]
    Updated,
    Newest,
    Oldest,
    Name,
}

impl RepoSort {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "updated" => Some(RepoSort::Updated),
            "newest" => Some(RepoSort::Newest),
            "oldest" => Some(RepoSort::Oldest),
            "name" => Some(RepoSort::Name),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RepoSort::Updated => "updated",
            RepoSort::Newest => "newest",
            RepoSort::Oldest => "oldest",
            RepoSort::Name => "name",
        }
    }
}

/// How a repository's versions are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VersionSort {
    #[default]
    Newest,
    Oldest,
    Version,
}

impl VersionSort {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "newest" => Some(VersionSort::Newest),
            "oldest" => Some(VersionSort::Oldest),
            "version" => Some(VersionSort::Version),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            VersionSort::Newest => "newest",
            VersionSort::Oldest => "oldest",
            VersionSort::Version => "version",
        }
    }
}

/// One page of a repository list, each with its newest version.
pub struct RepositoryPage {
    pub items: Vec<(RepositoryRow, Option<crate::VersionRow>)>,
    pub total: i64,
}

impl Store {
    /// A page of an organization's repositories with the newest version of
    /// each. Every ordering is served by an index; version counts and newest
    /// versions are looked up per row of the page only.
    pub async fn repository_page(
        &self,
        org_uid: &str,
        kind: Kind,
        search: Option<&str>,
        sort: RepoSort,
        start: i64,
        count: i64,
    ) -> Result<RepositoryPage> {
        let search = search.map(str::trim).filter(|s| !s.is_empty()).map(|s| format!("%{}%", like_escape(s)));
        let filter = REPO_LIST_FILTER;
        let total = self.count_repositories(org_uid, kind, &search).await?;
        let order = match sort {
            RepoSort::Updated => {
                "COALESCE((SELECT MAX(lv.seq) FROM versions lv WHERE lv.repository_uid = r.uid), 0) DESC, r.uid"
            }
            RepoSort::Newest => "r.created_at DESC, r.uid",
            RepoSort::Oldest => "r.created_at ASC, r.uid",
            RepoSort::Name => "r.name ASC",
        };
        let rows: Vec<RepositoryRow> =
            sqlx::query_as(built(format!("{REPO_PAGE_SELECT} {filter} ORDER BY {order} LIMIT $4 OFFSET $5")))
                .bind(org_uid)
                .bind(kind.as_str())
                .bind(&search)
                .bind(count)
                .bind(start)
                .fetch_all(self.pool())
                .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let latest: Option<crate::VersionRow> = sqlx::query_as(built(format!(
                "{VERSION_SELECT} WHERE v.repository_uid = $1 ORDER BY v.seq DESC LIMIT 1"
            )))
            .bind(&r.uid)
            .fetch_optional(self.pool())
            .await?;
            items.push((r, latest));
        }
        Ok(RepositoryPage { items, total })
    }

    /// A page of one repository's versions, newest or oldest first, after a
    /// cursor (the `seq` of the last row of the previous page), optionally
    /// only those whose version starts with `prefix` (in version order, one
    /// page: a search is refined, not paged). Keyset paging on the
    /// (repository, seq) index: page 5,000 of 100,000 versions costs what
    /// page 1 costs, and nothing counts every version; the prefix is a range
    /// on the (repository, version) index. Returns one row more than asked
    /// when there is a next page.
    pub async fn version_page(
        &self,
        repository_uid: &str,
        prefix: Option<&str>,
        sort: VersionSort,
        after_seq: Option<i64>,
        count: i64,
    ) -> Result<Vec<crate::VersionRow>> {
        let prefix = prefix.map(str::trim).filter(|s| !s.is_empty());
        // The SQL holds only the conditions in use: `($n IS NULL OR …)`
        // would keep SQLite from planning an index range.
        let rows = match prefix {
            // A search is answered in version order, which the range walks in
            // index order and stops at the page (a prefix of 11 versions among
            // 100,000 would otherwise scan them all in `seq` order).
            Some(p) => {
                let like = format!("{}%", like_escape(p));
                let range = match self.dialect() {
                    // Every string that starts with the prefix sorts between
                    // it and the prefix followed by the highest character.
                    crate::Dialect::Sqlite => "AND v.version >= $3 AND v.version < $4",
                    // Collations other than C may order some prefixes apart:
                    // LIKE alone is right there.
                    crate::Dialect::Postgres => "AND CAST($3 AS TEXT) IS NOT NULL AND CAST($4 AS TEXT) IS NOT NULL",
                };
                let sql = format!(
                    "{VERSION_SELECT} WHERE v.repository_uid = $1 AND v.version LIKE $2 ESCAPE '\\' {range} \
                     ORDER BY v.version ASC LIMIT $5"
                );
                sqlx::query_as(built(sql))
                    .bind(repository_uid)
                    .bind(like)
                    .bind(p)
                    .bind(format!("{p}\u{10FFFF}"))
                    .bind(count + 1)
                    .fetch_all(self.pool())
                    .await?
            }
            None => {
                let (cmp, order) = match sort {
                    VersionSort::Oldest => (">", "ASC"),
                    _ => ("<", "DESC"),
                };
                let after = if after_seq.is_some() {
                    format!("AND v.seq {cmp} $3")
                } else {
                    "AND CAST($3 AS BIGINT) IS NULL".into()
                };
                let sql =
                    format!("{VERSION_SELECT} WHERE v.repository_uid = $1 {after} ORDER BY v.seq {order} LIMIT $2");
                sqlx::query_as(built(sql))
                    .bind(repository_uid)
                    .bind(count + 1)
                    .bind(after_seq)
                    .fetch_all(self.pool())
                    .await?
            }
        };
        Ok(rows)
    }

    pub async fn repository_counts(&self, org_uid: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as("SELECT kind, COUNT(*) FROM repositories WHERE org_uid = $1 GROUP BY kind")
            .bind(org_uid)
            .fetch_all(self.pool())
            .await?)
    }
}
