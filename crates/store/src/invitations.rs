//! Invitations to join an organization: an admin names a user or an email
//! address and a role; the link's secret (stored as its hash) is used once.

use sqlx::FromRow;

use crate::{MemberRole, Result, Store, StoreError, Timestamp, UserRow, built};

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
    pub(crate) fn role(&self) -> MemberRole {
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

impl Store {
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
