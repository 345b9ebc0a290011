//! What the dashboard needs beyond the API's queries: sign-in sessions,
//! passwords and memberships, and the paged, indexed lists its pages show
//! (they must stay fast with 100,000 versions in a repository).

use sqlx::FromRow;

use crate::registry::{VERSION_SELECT, like_escape};
use crate::{Kind, MemberRole, OrgRow, RepositoryRow, Result, Store, StoreError, Timestamp, UserRow, built};

/// Repositories with their version counts capped at [`COUNT_CAP`] + 1: an
/// exact count reads every version (8 ms for 100,000 in SQLite), and a list
/// of 25 large repositories would pay that 25 times.
const REPO_PAGE_SELECT: &str = "SELECT r.uid, r.org_uid, r.kind, r.name, r.description, r.labels, r.creator_uid, \
     cu.name AS creator_name, r.created_at, r.updated_at, \
     (SELECT COUNT(*) FROM (SELECT 1 FROM versions vc WHERE vc.repository_uid = r.uid LIMIT 1001) capped) AS version_count \
     FROM repositories r LEFT JOIN users cu ON cu.uid = r.creator_uid";

/// Repository lists count versions up to this many ("1000+").
pub const COUNT_CAP: i64 = 1000;

const USER_COLUMNS: &str =
    "u.uid, u.name, u.email, u.first_name, u.last_name, u.password_hash, u.is_admin, u.created_at, u.updated_at";

/// A signed-in browser: who, in which organization, with which role.
#[derive(Debug, Clone)]
pub struct SessionIdentity {
    pub id_hash: String,
    pub user: UserRow,
    pub org: OrgRow,
    pub role: MemberRole,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

pub struct NewSession<'a> {
    pub id_hash: &'a str,
    pub user_uid: &'a str,
    pub org_uid: &'a str,
    pub expires_at: Timestamp,
    pub user_agent: &'a str,
    pub client_addr: &'a str,
}

/// A member of an organization, as the members page lists them.
#[derive(Debug, Clone, FromRow)]
pub struct MemberRow {
    pub uid: String,
    pub name: String,
    pub email: String,
    pub is_admin: i64,
    pub has_password: i64,
    pub role: String,
    pub joined_at: i64,
    pub token_count: i64,
}

impl MemberRow {
    pub fn role(&self) -> MemberRole {
        MemberRole::parse(&self.role).unwrap_or(MemberRole::Guest)
    }
}

/// A pending invitation to an organization.
#[derive(Debug, Clone, FromRow)]
pub struct InvitationRow {
    pub uid: String,
    pub org_uid: String,
    pub org_name: String,
    /// The name or email address the admin typed, as typed.
    pub invitee: String,
    pub role: String,
    pub inviter_name: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

impl InvitationRow {
    pub fn role(&self) -> MemberRole {
        MemberRole::parse(&self.role).unwrap_or(MemberRole::Guest)
    }
}

pub struct NewInvitation<'a> {
    pub org_uid: &'a str,
    pub invitee: &'a str,
    pub role: MemberRole,
    pub token_hash: &'a str,
    pub inviter_uid: &'a str,
    pub expires_at: Timestamp,
}

/// What accepting an invitation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// The user joined with the invitation's role.
    Joined,
    /// The user was a member already; their role is unchanged.
    AlreadyMember,
}

const INVITATION_SELECT: &str = "SELECT i.uid, i.org_uid, o.name AS org_name, i.invitee, i.role, \
     iu.name AS inviter_name, i.created_at, i.expires_at FROM organization_invitations i \
     JOIN organizations o ON o.uid = i.org_uid LEFT JOIN users iu ON iu.uid = i.inviter_uid";

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
    // ---- sessions -------------------------------------------------------

    pub async fn create_session(&self, s: NewSession<'_>) -> Result<()> {
        let now = Timestamp::now().0;
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, user_uid, org_uid, created_at, last_seen_at, expires_at, user_agent, \
             client_addr) VALUES ($1, $2, $3, $4, $4, $5, $6, $7)",
        )
        .bind(s.id_hash)
        .bind(s.user_uid)
        .bind(s.org_uid)
        .bind(now)
        .bind(s.expires_at.0)
        .bind(s.user_agent.chars().take(300).collect::<String>())
        .bind(s.client_addr)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The identity a session cookie grants, if the session exists, has not
    /// expired, and its user is still a member of its organization.
    pub async fn find_session(&self, id_hash: &str, now: Timestamp) -> Result<Option<SessionIdentity>> {
        #[derive(FromRow)]
        struct Joined {
            #[sqlx(flatten)]
            user: UserRow,
            s_created_at: i64,
            s_last_seen_at: i64,
            s_expires_at: i64,
            o_uid: String,
            o_name: String,
            o_description: String,
            o_created_at: i64,
            o_updated_at: Option<i64>,
            role: Option<String>,
        }
        let sql = format!(
            "SELECT {USER_COLUMNS}, s.created_at AS s_created_at, s.last_seen_at AS s_last_seen_at, \
             s.expires_at AS s_expires_at, o.uid AS o_uid, o.name AS o_name, o.description AS o_description, \
             o.created_at AS o_created_at, o.updated_at AS o_updated_at, m.role \
             FROM web_sessions s JOIN users u ON u.uid = s.user_uid JOIN organizations o ON o.uid = s.org_uid \
             LEFT JOIN organization_members m ON m.org_uid = s.org_uid AND m.user_uid = s.user_uid \
             WHERE s.id_hash = $1 AND s.expires_at > $2"
        );
        let Some(j) =
            sqlx::query_as::<_, Joined>(built(sql)).bind(id_hash).bind(now.0).fetch_optional(self.pool()).await?
        else {
            return Ok(None);
        };
        let Some(role) = j.role.as_deref().and_then(MemberRole::parse) else {
            return Ok(None);
        };
        Ok(Some(SessionIdentity {
            id_hash: id_hash.to_owned(),
            user: j.user,
            org: OrgRow {
                uid: j.o_uid,
                name: j.o_name,
                description: j.o_description,
                created_at: j.o_created_at,
                updated_at: j.o_updated_at,
            },
            role,
            created_at: j.s_created_at,
            last_seen_at: j.s_last_seen_at,
            expires_at: j.s_expires_at,
        }))
    }

    /// Slides a session's expiry forward.
    pub async fn touch_session(&self, id_hash: &str, now: Timestamp, expires_at: Timestamp) -> Result<()> {
        sqlx::query("UPDATE web_sessions SET last_seen_at = $1, expires_at = $2 WHERE id_hash = $3")
            .bind(now.0)
            .bind(expires_at.0)
            .bind(id_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn set_session_org(&self, id_hash: &str, org_uid: &str) -> Result<()> {
        sqlx::query("UPDATE web_sessions SET org_uid = $1 WHERE id_hash = $2")
            .bind(org_uid)
            .bind(id_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1").bind(id_hash).execute(self.pool()).await?;
        Ok(())
    }

    /// Signs a user out everywhere, except (optionally) one session.
    pub async fn delete_user_sessions(&self, user_uid: &str, except: Option<&str>) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM web_sessions WHERE user_uid = $1 AND ($2 IS NULL OR id_hash <> $2)")
            .bind(user_uid)
            .bind(except)
            .execute(self.pool())
            .await?
            .rows_affected())
    }

    pub async fn purge_expired_sessions(&self, now: Timestamp) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1")
            .bind(now.0)
            .execute(self.pool())
            .await?
            .rows_affected())
    }

    // ---- users and passwords -------------------------------------------

    pub async fn get_user(&self, uid: &str) -> Result<Option<UserRow>> {
        Ok(sqlx::query_as(built(format!("SELECT {USER_COLUMNS} FROM users u WHERE u.uid = $1")))
            .bind(uid)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Users a sign-in name could mean: the user of that name, else the users
    /// with that email address (compared without case).
    pub async fn find_login_candidates(&self, name_or_email: &str) -> Result<Vec<UserRow>> {
        let by_name: Vec<UserRow> =
            sqlx::query_as(built(format!("SELECT {USER_COLUMNS} FROM users u WHERE u.name = $1")))
                .bind(name_or_email)
                .fetch_all(self.pool())
                .await?;
        if !by_name.is_empty() || !name_or_email.contains('@') {
            return Ok(by_name);
        }
        Ok(sqlx::query_as(built(format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE LOWER(u.email) = LOWER($1) ORDER BY u.created_at LIMIT 2"
        )))
        .bind(name_or_email)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn email_taken(&self, email: &str, except_user: Option<&str>) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM users WHERE LOWER(email) = LOWER($1) AND ($2 IS NULL OR uid <> $2)",
        )
        .bind(email)
        .bind(except_user)
        .fetch_one(self.pool())
        .await?;
        Ok(n > 0)
    }

    pub async fn set_password(&self, user_uid: &str, password_hash: &str) -> Result<()> {
        sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE uid = $3")
            .bind(password_hash)
            .bind(Timestamp::now().0)
            .bind(user_uid)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Whether first-run setup is still to be done: no user has a password.
    pub async fn setup_pending(&self) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE password_hash IS NOT NULL")
            .fetch_one(self.pool())
            .await?;
        Ok(n == 0)
    }

    /// The administrator first-run setup signs in: the oldest admin user.
    pub async fn setup_admin(&self) -> Result<Option<UserRow>> {
        Ok(sqlx::query_as(built(format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.is_admin = 1 ORDER BY u.created_at LIMIT 1"
        )))
        .fetch_optional(self.pool())
        .await?)
    }

    /// Completes first-run setup in one transaction: names the admin, sets
    /// its email and password. Fails if another request completed it first.
    pub async fn complete_setup(&self, user_uid: &str, name: &str, email: &str, password_hash: &str) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE password_hash IS NOT NULL")
            .fetch_one(&mut *tx)
            .await?;
        if done > 0 {
            return Err(StoreError::Conflict("setup was already completed".into()));
        }
        sqlx::query("UPDATE users SET name = $1, email = $2, password_hash = $3, updated_at = $4 WHERE uid = $5")
            .bind(name)
            .bind(email)
            .bind(password_hash)
            .bind(Timestamp::now().0)
            .bind(user_uid)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if crate::is_unique_violation(&e) {
                    StoreError::Conflict(format!("a user named {name:?} already exists"))
                } else {
                    e.into()
                }
            })?;
        sqlx::query("DELETE FROM settings WHERE key = 'setup_token_hash'").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
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

    // ---- organizations and members ---------------------------------------

    pub async fn get_org(&self, uid: &str) -> Result<Option<OrgRow>> {
        Ok(sqlx::query_as("SELECT uid, name, description, created_at, updated_at FROM organizations WHERE uid = $1")
            .bind(uid)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn update_org_description(&self, uid: &str, description: &str) -> Result<()> {
        sqlx::query("UPDATE organizations SET description = $1, updated_at = $2 WHERE uid = $3")
            .bind(description)
            .bind(Timestamp::now().0)
            .bind(uid)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The organizations a user belongs to, with the role in each.
    pub async fn user_orgs(&self, user_uid: &str) -> Result<Vec<(OrgRow, MemberRole)>> {
        #[derive(FromRow)]
        struct Row {
            #[sqlx(flatten)]
            org: OrgRow,
            role: String,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT o.uid, o.name, o.description, o.created_at, o.updated_at, m.role FROM organization_members m \
             JOIN organizations o ON o.uid = m.org_uid WHERE m.user_uid = $1 ORDER BY o.name",
        )
        .bind(user_uid)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().filter_map(|r| MemberRole::parse(&r.role).map(|role| (r.org, role))).collect())
    }

    pub async fn list_members(&self, org_uid: &str) -> Result<Vec<MemberRow>> {
        Ok(sqlx::query_as(
            "SELECT u.uid, u.name, u.email, u.is_admin, \
             CASE WHEN u.password_hash IS NULL THEN 0 ELSE 1 END AS has_password, m.role, m.created_at AS joined_at, \
             (SELECT COUNT(*) FROM api_tokens t WHERE t.org_uid = m.org_uid AND t.user_uid = u.uid) AS token_count \
             FROM organization_members m JOIN users u ON u.uid = m.user_uid WHERE m.org_uid = $1 ORDER BY u.name",
        )
        .bind(org_uid)
        .fetch_all(self.pool())
        .await?)
    }

    /// Removes a member and the API tokens they held in the organization.
    pub async fn remove_member(&self, org_uid: &str, user_uid: &str) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM api_tokens WHERE org_uid = $1 AND user_uid = $2")
            .bind(org_uid)
            .bind(user_uid)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM web_sessions WHERE org_uid = $1 AND user_uid = $2")
            .bind(org_uid)
            .bind(user_uid)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM organization_members WHERE org_uid = $1 AND user_uid = $2")
            .bind(org_uid)
            .bind(user_uid)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    pub async fn count_org_admins(&self, org_uid: &str) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM organization_members WHERE org_uid = $1 AND role = 'admin'")
            .bind(org_uid)
            .fetch_one(self.pool())
            .await?)
    }

    // ---- invitations ------------------------------------------------------

    /// Records an invitation, replacing a pending one to the same invitee in
    /// the same organization (its link stops working).
    pub async fn create_invitation(&self, n: NewInvitation<'_>) -> Result<InvitationRow> {
        let uid = crate::new_uid();
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM organization_invitations WHERE org_uid = $1 AND LOWER(invitee) = LOWER($2)")
            .bind(n.org_uid)
            .bind(n.invitee)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO organization_invitations (uid, org_uid, invitee, role, token_hash, inviter_uid, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&uid)
        .bind(n.org_uid)
        .bind(n.invitee)
        .bind(n.role.as_str())
        .bind(n.token_hash)
        .bind(n.inviter_uid)
        .bind(Timestamp::now().0)
        .bind(n.expires_at.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_invitation(n.org_uid, &uid)
            .await?
            .ok_or_else(|| StoreError::NotFound("invitation vanished after insert".into()))
    }

    pub async fn get_invitation(&self, org_uid: &str, uid: &str) -> Result<Option<InvitationRow>> {
        Ok(sqlx::query_as(built(format!("{INVITATION_SELECT} WHERE i.org_uid = $1 AND i.uid = $2")))
            .bind(org_uid)
            .bind(uid)
            .fetch_optional(self.pool())
            .await?)
    }

    /// An organization's invitations that can still be accepted, newest first.
    pub async fn list_invitations(&self, org_uid: &str, now: Timestamp) -> Result<Vec<InvitationRow>> {
        Ok(sqlx::query_as(built(format!(
            "{INVITATION_SELECT} WHERE i.org_uid = $1 AND i.expires_at > $2 ORDER BY i.created_at DESC"
        )))
        .bind(org_uid)
        .bind(now.0)
        .fetch_all(self.pool())
        .await?)
    }

    /// The invitation a link's secret stands for, unless used or expired.
    pub async fn find_invitation(&self, token_hash: &str, now: Timestamp) -> Result<Option<InvitationRow>> {
        Ok(sqlx::query_as(built(format!("{INVITATION_SELECT} WHERE i.token_hash = $1 AND i.expires_at > $2")))
            .bind(token_hash)
            .bind(now.0)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Pending invitations addressed to a user: by their name, or by their
    /// email address (without case).
    pub async fn invitations_for(&self, user: &UserRow, now: Timestamp) -> Result<Vec<InvitationRow>> {
        Ok(sqlx::query_as(built(format!(
            "{INVITATION_SELECT} WHERE (i.invitee = $1 OR ($2 <> '' AND LOWER(i.invitee) = LOWER($2))) \
             AND i.expires_at > $3 AND NOT EXISTS (SELECT 1 FROM organization_members m \
             WHERE m.org_uid = i.org_uid AND m.user_uid = $4) ORDER BY i.created_at DESC"
        )))
        .bind(&user.name)
        .bind(&user.email)
        .bind(now.0)
        .bind(&user.uid)
        .fetch_all(self.pool())
        .await?)
    }

    /// Deletes an invitation (revoked or declined); whether it existed.
    pub async fn delete_invitation(&self, org_uid: &str, uid: &str) -> Result<bool> {
        Ok(sqlx::query("DELETE FROM organization_invitations WHERE org_uid = $1 AND uid = $2")
            .bind(org_uid)
            .bind(uid)
            .execute(self.pool())
            .await?
            .rows_affected()
            > 0)
    }

    pub async fn purge_expired_invitations(&self, now: Timestamp) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM organization_invitations WHERE expires_at <= $1")
            .bind(now.0)
            .execute(self.pool())
            .await?
            .rows_affected())
    }

    /// Uses an invitation for an existing user, once: the invitation is
    /// consumed in the same transaction that adds the membership, so two
    /// concurrent accepts cannot both succeed. An existing member keeps
    /// their role.
    pub async fn accept_invitation(&self, inv: &InvitationRow, user_uid: &str, now: Timestamp) -> Result<Accepted> {
        let mut tx = self.pool().begin().await?;
        consume_invitation(&mut tx, inv, now).await?;
        let added = sqlx::query(
            "INSERT INTO organization_members (org_uid, user_uid, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (org_uid, user_uid) DO NOTHING",
        )
        .bind(&inv.org_uid)
        .bind(user_uid)
        .bind(inv.role().as_str())
        .bind(now.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(if added > 0 { Accepted::Joined } else { Accepted::AlreadyMember })
    }

    /// Uses an invitation to create a new user with a password, who joins
    /// the organization; all or nothing.
    pub async fn accept_invitation_as_new_user(
        &self,
        inv: &InvitationRow,
        name: &str,
        email: &str,
        password_hash: &str,
        now: Timestamp,
    ) -> Result<UserRow> {
        let mut tx = self.pool().begin().await?;
        consume_invitation(&mut tx, inv, now).await?;
        let uid = crate::new_uid();
        sqlx::query(
            "INSERT INTO users (uid, name, email, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4, 0, $5)",
        )
        .bind(&uid)
        .bind(name)
        .bind(email)
        .bind(password_hash)
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if crate::is_unique_violation(&e) {
                StoreError::Conflict("This name is taken; choose another.".into())
            } else {
                e.into()
            }
        })?;
        sqlx::query("INSERT INTO organization_members (org_uid, user_uid, role, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&inv.org_uid)
            .bind(&uid)
            .bind(inv.role().as_str())
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_user(&uid).await?.ok_or_else(|| StoreError::NotFound("user vanished after insert".into()))
    }

    // ---- registry lists ---------------------------------------------------

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
        let filter = "WHERE r.org_uid = $1 AND r.kind = $2 AND ($3 IS NULL OR r.name LIKE $3 ESCAPE '\\')";
        let total: i64 = sqlx::query_scalar(built(format!("SELECT COUNT(*) FROM repositories r {filter}")))
            .bind(org_uid)
            .bind(kind.as_str())
            .bind(&search)
            .fetch_one(self.pool())
            .await?;
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

    /// The newest versions of an organization of one kind, across
    /// repositories (no total: counting every version is what we avoid).
    pub async fn latest_versions(&self, org_uid: &str, kind: Kind, limit: i64) -> Result<Vec<crate::VersionRow>> {
        Ok(sqlx::query_as(built(format!(
            "{VERSION_SELECT} WHERE r.org_uid = $1 AND r.kind = $2 ORDER BY v.seq DESC LIMIT $3"
        )))
        .bind(org_uid)
        .bind(kind.as_str())
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn repository_counts(&self, org_uid: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as("SELECT kind, COUNT(*) FROM repositories WHERE org_uid = $1 GROUP BY kind")
            .bind(org_uid)
            .fetch_all(self.pool())
            .await?)
    }

    /// Deployments whose active revision runs a version of this repository
    /// (or, with `version_uid`, that one version).
    pub async fn deployment_uses(&self, repository_uid: &str, version_uid: Option<&str>) -> Result<Vec<DeploymentUse>> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT d.uid AS deployment_uid, d.namespace, d.name, d.status, c.name AS cluster_name, \
             r.name AS repository, v.version FROM deployment_targets t \
             JOIN deployment_revisions rv ON rv.uid = t.revision_uid AND rv.status = 'active' \
             JOIN deployments d ON d.uid = t.deployment_uid JOIN clusters c ON c.uid = d.cluster_uid \
             JOIN versions v ON v.uid = t.bento_uid JOIN repositories r ON r.uid = v.repository_uid \
             WHERE v.repository_uid = $1 AND ($2 IS NULL OR v.uid = $2) ORDER BY d.name",
        )
        .bind(repository_uid)
        .bind(version_uid)
        .fetch_all(self.pool())
        .await?)
    }

    // ---- deployments ------------------------------------------------------

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
        let placeholders: Vec<String> = (1..=deployment_uids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT t.deployment_uid, r.name, v.version FROM deployment_targets t \
             JOIN deployment_revisions rv ON rv.uid = t.revision_uid AND rv.status = 'active' \
             JOIN versions v ON v.uid = t.bento_uid JOIN repositories r ON r.uid = v.repository_uid \
             WHERE t.deployment_uid IN ({}) ORDER BY t.name = 'main' DESC",
            placeholders.join(", ")
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

    pub async fn update_cluster_description(&self, org_uid: &str, name: &str, description: &str) -> Result<bool> {
        Ok(sqlx::query("UPDATE clusters SET description = $1, updated_at = $2 WHERE org_uid = $3 AND name = $4")
            .bind(description)
            .bind(Timestamp::now().0)
            .bind(org_uid)
            .bind(name)
            .execute(self.pool())
            .await?
            .rows_affected()
            > 0)
    }

    /// A page of an organization's feed, newest first, older than a cursor
    /// (`seq`), without counting the whole feed. Returns one row more than
    /// asked when there is an older page.
    pub async fn event_page(&self, org_uid: &str, f: &crate::EventFilter, count: i64) -> Result<Vec<crate::EventRow>> {
        Ok(sqlx::query_as(
            "SELECT seq, uid, org_uid, created_at, actor_uid, actor_name, api_token_name, operation, resource_type, \
             resource_name, status, info FROM events WHERE org_uid = $1 AND ($2 IS NULL OR operation = $2) \
             AND ($3 IS NULL OR resource_type = $3) AND ($4 IS NULL OR resource_name = $4) \
             AND ($5 IS NULL OR actor_name = $5) AND ($6 IS NULL OR seq < $6) ORDER BY seq DESC LIMIT $7",
        )
        .bind(org_uid)
        .bind(&f.operation)
        .bind(&f.resource_type)
        .bind(&f.resource_name)
        .bind(&f.actor_name)
        .bind(f.before_seq)
        .bind(count + 1)
        .fetch_all(self.pool())
        .await?)
    }

    /// Operation names seen in an organization's feed, for the filter menu.
    pub async fn event_operations(&self, org_uid: &str) -> Result<Vec<String>> {
        // Bounded: a feed with millions of rows still answers from the
        // newest ten thousand.
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT operation FROM (SELECT operation FROM events WHERE org_uid = $1 ORDER BY seq DESC LIMIT 10000) e \
             ORDER BY operation",
        )
        .bind(org_uid)
        .fetch_all(self.pool())
        .await?)
    }
}

/// Deletes an unexpired invitation inside `tx`: whoever deletes it is the one
/// who uses it, so two concurrent accepts cannot both succeed.
async fn consume_invitation(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    inv: &InvitationRow,
    now: Timestamp,
) -> Result<()> {
    let used = sqlx::query("DELETE FROM organization_invitations WHERE uid = $1 AND expires_at > $2")
        .bind(&inv.uid)
        .bind(now.0)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if used == 0 {
        return Err(StoreError::NotFound("This invitation was used, revoked or has expired.".into()));
    }
    Ok(())
}
