//! Sign-in sessions of the dashboard: a browser's cookie stands for a user
//! acting in one organization until the session expires or is deleted.
//!
//! Only the SHA-256 of the cookie's secret is stored (`id_hash`), as for API
//! tokens: a copy of the database signs nobody in.

use sqlx::FromRow;

use crate::identity::USER_COLUMNS;
use crate::{MemberRole, OrgRow, Result, Store, Timestamp, UserRow, built};

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

impl Store {
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
}
