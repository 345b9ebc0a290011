//! Memberships: who belongs to which organization, with which role.

use serde::Serialize;
use sqlx::FromRow;

use crate::{OrgRow, Result, Store, StoreError, Timestamp, built};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Guest,
    Developer,
    Admin,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Guest => "guest",
            MemberRole::Developer => "developer",
            MemberRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "guest" => Some(MemberRole::Guest),
            "developer" => Some(MemberRole::Developer),
            "admin" => Some(MemberRole::Admin),
            _ => None,
        }
    }
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

impl Store {
    /// Adds `user` to `org` with `role`, or changes the role if already a
    /// member. Demoting the last admin is refused (see [`Store::keep_an_admin`]).
    pub async fn set_member(&self, org_uid: &str, user_uid: &str, role: MemberRole) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if role != MemberRole::Admin {
            self.keep_an_admin(&mut tx, org_uid, user_uid).await?;
        }
        sqlx::query(
            "INSERT INTO organization_members (org_uid, user_uid, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (org_uid, user_uid) DO UPDATE SET role = excluded.role",
        )
        .bind(org_uid)
        .bind(user_uid)
        .bind(role.as_str())
        .bind(Timestamp::now().0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Refuses, inside the caller's transaction, to take `user_uid` out of
    /// the organization's admins when they are the last one. The
    /// organization's row is locked first (SQLite's write transaction holds
    /// the whole database), so two admins demoting or removing each other at
    /// once are serialized and the second one counts what the first left.
    async fn keep_an_admin(&self, tx: &mut sqlx::AnyConnection, org_uid: &str, user_uid: &str) -> Result<()> {
        sqlx::query(built(format!("SELECT uid FROM organizations WHERE uid = $1{}", self.for_update())))
            .bind(org_uid)
            .fetch_optional(&mut *tx)
            .await?;
        let admins: Vec<String> =
            sqlx::query_scalar("SELECT user_uid FROM organization_members WHERE org_uid = $1 AND role = $2")
                .bind(org_uid)
                .bind(MemberRole::Admin.as_str())
                .fetch_all(&mut *tx)
                .await?;
        if admins.len() <= 1 && admins.iter().any(|a| a == user_uid) {
            return Err(StoreError::Conflict(
                "an organization needs at least one admin: make someone else admin first".into(),
            ));
        }
        Ok(())
    }

    pub async fn member_role(&self, org_uid: &str, user_uid: &str) -> Result<Option<MemberRole>> {
        let role: Option<String> =
            sqlx::query_scalar("SELECT role FROM organization_members WHERE org_uid = $1 AND user_uid = $2")
                .bind(org_uid)
                .bind(user_uid)
                .fetch_optional(self.pool())
                .await?;
        Ok(role.as_deref().and_then(MemberRole::parse))
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
    /// Removing the last admin is refused.
    pub async fn remove_member(&self, org_uid: &str, user_uid: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        self.keep_an_admin(&mut tx, org_uid, user_uid).await?;
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
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM organization_members WHERE org_uid = $1 AND role = $2")
            .bind(org_uid)
            .bind(MemberRole::Admin.as_str())
            .fetch_one(self.pool())
            .await?)
    }
}
