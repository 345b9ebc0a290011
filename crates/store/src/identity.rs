//! Organizations, users, memberships and API tokens.
//!
//! Tokens are stored as the SHA-256 of the secret (the secret is 256 random
//! bits, so a fast hash is the right tool: there is nothing to brute-force),
//! plus a short hint so a person can tell tokens apart in a list.

use sqlx::FromRow;

use crate::{MemberRole, Result, Store, StoreError, Timestamp, built, is_unique_violation, new_uid};

#[derive(Debug, Clone, FromRow)]
pub struct OrgRow {
    pub uid: String,
    pub name: String,
    pub description: String,
    pub created_at: i64,
    pub updated_at: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub uid: String,
    pub name: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub password_hash: Option<String>,
    pub is_admin: i64,
    pub created_at: i64,
    pub updated_at: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    pub uid: String,
    pub org_uid: String,
    pub user_uid: String,
    pub user_name: String,
    pub name: String,
    pub description: String,
    pub token_hint: String,
    pub scopes: String,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub created_at: i64,
}

impl TokenRow {
    pub fn scope_list(&self) -> Vec<String> {
        serde_json::from_str(&self.scopes).unwrap_or_default()
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|e| e <= now.0)
    }
}

/// Who a request acts as, resolved from its token.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    pub token: TokenRow,
    pub user: UserRow,
    pub org: OrgRow,
    pub role: MemberRole,
}

pub struct NewToken<'a> {
    pub org_uid: &'a str,
    pub user_uid: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub token_hash: &'a str,
    pub token_hint: &'a str,
    pub scopes: &'a [String],
    pub expires_at: Option<Timestamp>,
}

const ORG_SELECT: &str = "SELECT uid, name, description, created_at, updated_at FROM organizations";

pub(crate) const USER_COLUMNS: &str =
    "u.uid, u.name, u.email, u.first_name, u.last_name, u.password_hash, u.is_admin, u.created_at, u.updated_at";

/// Users with a password: first-run setup is done once there is one.
const SETUP_DONE: &str = "SELECT COUNT(*) FROM users WHERE password_hash IS NOT NULL";

const TOKEN_COLUMNS: &str = "t.uid, t.org_uid, t.user_uid, u.name AS user_name, t.name, t.description, \
     t.token_hint, t.scopes, t.expires_at, t.last_used_at, t.created_at";

impl Store {
    pub async fn create_org(&self, name: &str, description: &str) -> Result<OrgRow> {
        let row = OrgRow {
            uid: new_uid(),
            name: name.to_owned(),
            description: description.to_owned(),
            created_at: Timestamp::now().0,
            updated_at: None,
        };
        sqlx::query("INSERT INTO organizations (uid, name, description, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&row.uid)
            .bind(&row.name)
            .bind(&row.description)
            .bind(row.created_at)
            .execute(self.pool())
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("organization {name:?} already exists"))
                } else {
                    e.into()
                }
            })?;
        Ok(row)
    }

    pub async fn get_org_by_name(&self, name: &str) -> Result<Option<OrgRow>> {
        Ok(sqlx::query_as(built(format!("{ORG_SELECT} WHERE name = $1")))
            .bind(name)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn list_orgs(&self) -> Result<Vec<OrgRow>> {
        Ok(sqlx::query_as(built(format!("{ORG_SELECT} ORDER BY name"))).fetch_all(self.pool()).await?)
    }

    pub async fn create_user(
        &self,
        name: &str,
        email: &str,
        password_hash: Option<&str>,
        is_admin: bool,
    ) -> Result<UserRow> {
        let row = UserRow {
            uid: new_uid(),
            name: name.to_owned(),
            email: email.to_owned(),
            first_name: String::new(),
            last_name: String::new(),
            password_hash: password_hash.map(str::to_owned),
            is_admin: is_admin as i64,
            created_at: Timestamp::now().0,
            updated_at: None,
        };
        sqlx::query(
            "INSERT INTO users (uid, name, email, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&row.uid)
        .bind(&row.name)
        .bind(&row.email)
        .bind(&row.password_hash)
        .bind(row.is_admin)
        .bind(row.created_at)
        .execute(self.pool())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("user {name:?} already exists"))
            } else {
                e.into()
            }
        })?;
        Ok(row)
    }

    pub async fn get_user_by_name(&self, name: &str) -> Result<Option<UserRow>> {
        Ok(sqlx::query_as(built(format!("SELECT {USER_COLUMNS} FROM users u WHERE u.name = $1")))
            .bind(name)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn create_token(&self, t: NewToken<'_>) -> Result<TokenRow> {
        let uid = new_uid();
        let now = Timestamp::now().0;
        let scopes = serde_json::to_string(t.scopes).expect("strings serialise");
        sqlx::query(
            "INSERT INTO api_tokens (uid, org_uid, user_uid, name, description, token_hash, token_hint, scopes, \
             expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&uid)
        .bind(t.org_uid)
        .bind(t.user_uid)
        .bind(t.name)
        .bind(t.description)
        .bind(t.token_hash)
        .bind(t.token_hint)
        .bind(&scopes)
        .bind(t.expires_at.map(|e| e.0))
        .bind(now)
        .execute(self.pool())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("an API token named {:?} already exists for this user", t.name))
            } else {
                e.into()
            }
        })?;
        self.get_token(t.org_uid, &uid).await?.ok_or_else(|| StoreError::NotFound("token vanished after insert".into()))
    }

    /// Resolves a token hash to the identity it grants. Expiry is the
    /// caller's to check, so that it can say "expired" rather than "unknown".
    pub async fn find_token_identity(&self, token_hash: &str) -> Result<Option<TokenIdentity>> {
        #[derive(FromRow)]
        struct Joined {
            #[sqlx(flatten)]
            token: TokenRow,
            u_uid: String,
            u_email: String,
            u_first_name: String,
            u_last_name: String,
            u_password_hash: Option<String>,
            u_is_admin: i64,
            u_created_at: i64,
            u_updated_at: Option<i64>,
            o_name: String,
            o_description: String,
            o_created_at: i64,
            o_updated_at: Option<i64>,
            role: Option<String>,
        }
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, u.uid AS u_uid, u.email AS u_email, u.first_name AS u_first_name, \
             u.last_name AS u_last_name, u.password_hash AS u_password_hash, u.is_admin AS u_is_admin, \
             u.created_at AS u_created_at, u.updated_at AS u_updated_at, o.name AS o_name, \
             o.description AS o_description, o.created_at AS o_created_at, o.updated_at AS o_updated_at, m.role \
             FROM api_tokens t JOIN users u ON u.uid = t.user_uid JOIN organizations o ON o.uid = t.org_uid \
             LEFT JOIN organization_members m ON m.org_uid = t.org_uid AND m.user_uid = t.user_uid \
             WHERE t.token_hash = $1"
        );
        let Some(j) = sqlx::query_as::<_, Joined>(built(sql)).bind(token_hash).fetch_optional(self.pool()).await?
        else {
            return Ok(None);
        };
        // A token outlives its user's membership only as a dead token.
        let Some(role) = j.role.as_deref().and_then(MemberRole::parse) else {
            return Ok(None);
        };
        let user = UserRow {
            uid: j.u_uid,
            name: j.token.user_name.clone(),
            email: j.u_email,
            first_name: j.u_first_name,
            last_name: j.u_last_name,
            password_hash: j.u_password_hash,
            is_admin: j.u_is_admin,
            created_at: j.u_created_at,
            updated_at: j.u_updated_at,
        };
        let org = OrgRow {
            uid: j.token.org_uid.clone(),
            name: j.o_name,
            description: j.o_description,
            created_at: j.o_created_at,
            updated_at: j.o_updated_at,
        };
        Ok(Some(TokenIdentity { token: j.token, user, org, role }))
    }

    /// Tokens of an organization, optionally only one user's, newest first.
    pub async fn list_tokens(
        &self,
        org_uid: &str,
        user_uid: Option<&str>,
        search: Option<&str>,
    ) -> Result<Vec<TokenRow>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens t JOIN users u ON u.uid = t.user_uid \
             WHERE t.org_uid = $1 AND ($2 IS NULL OR t.user_uid = $2) AND ($3 IS NULL OR t.name LIKE $3 ESCAPE '\\') \
             ORDER BY t.created_at DESC"
        );
        Ok(sqlx::query_as(built(sql))
            .bind(org_uid)
            .bind(user_uid)
            .bind(search.map(|s| format!("%{}%", crate::registry::like_escape(s))))
            .fetch_all(self.pool())
            .await?)
    }

    pub async fn get_token(&self, org_uid: &str, uid: &str) -> Result<Option<TokenRow>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens t JOIN users u ON u.uid = t.user_uid \
             WHERE t.org_uid = $1 AND t.uid = $2"
        );
        Ok(sqlx::query_as(built(sql)).bind(org_uid).bind(uid).fetch_optional(self.pool()).await?)
    }

    /// Deletes a token; returns it, or `None` if the organization has no such token.
    pub async fn delete_token(&self, org_uid: &str, uid: &str) -> Result<Option<TokenRow>> {
        let Some(row) = self.get_token(org_uid, uid).await? else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM api_tokens WHERE org_uid = $1 AND uid = $2")
            .bind(org_uid)
            .bind(uid)
            .execute(self.pool())
            .await?;
        Ok(Some(row))
    }

    /// Records when tokens were last used. Called in batches by the server,
    /// never once per request.
    pub async fn touch_tokens(&self, uses: &[(String, Timestamp)]) -> Result<()> {
        for (uid, at) in uses {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE uid = $2 AND (last_used_at IS NULL OR last_used_at < $1)")
                .bind(at.0)
                .bind(uid)
                .execute(self.pool())
                .await?;
        }
        Ok(())
    }

    /// First start: creates the organization, its admin user and a token with
    /// full scope, all or nothing. Returns `None` when an admin already exists,
    /// which makes bootstrapping idempotent across restarts.
    pub async fn bootstrap_admin(
        &self,
        org_name: &str,
        user_name: &str,
        email: &str,
        token_name: &str,
        token_hash: &str,
        token_hint: &str,
    ) -> Result<Option<(OrgRow, UserRow)>> {
        let mut tx = self.pool().begin().await?;
        let admins: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE is_admin = 1").fetch_one(&mut *tx).await?;
        if admins > 0 {
            return Ok(None);
        }
        let now = Timestamp::now().0;
        let org_uid: String = match sqlx::query_scalar::<_, String>("SELECT uid FROM organizations WHERE name = $1")
            .bind(org_name)
            .fetch_optional(&mut *tx)
            .await?
        {
            Some(uid) => uid,
            None => {
                let uid = new_uid();
                sqlx::query("INSERT INTO organizations (uid, name, description, created_at) VALUES ($1, $2, '', $3)")
                    .bind(&uid)
                    .bind(org_name)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                uid
            }
        };
        let user_uid = new_uid();
        sqlx::query("INSERT INTO users (uid, name, email, is_admin, created_at) VALUES ($1, $2, $3, 1, $4)")
            .bind(&user_uid)
            .bind(user_name)
            .bind(email)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("user {user_name:?} exists but is not an admin"))
                } else {
                    e.into()
                }
            })?;
        sqlx::query("INSERT INTO organization_members (org_uid, user_uid, role, created_at) VALUES ($1, $2, $4, $3)")
            .bind(&org_uid)
            .bind(&user_uid)
            .bind(now)
            .bind(crate::MemberRole::Admin.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO api_tokens (uid, org_uid, user_uid, name, description, token_hash, token_hint, scopes, created_at) \
             VALUES ($1, $2, $3, $4, 'created when the server first started', $5, $6, '[\"api\"]', $7)",
        )
        .bind(new_uid())
        .bind(&org_uid)
        .bind(&user_uid)
        .bind(token_name)
        .bind(token_hash)
        .bind(token_hint)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let org = self.get_org_by_name(org_name).await?.expect("just created");
        let user = self.get_user_by_name(user_name).await?.expect("just created");
        Ok(Some((org, user)))
    }
}

impl Store {
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
        let n: i64 = sqlx::query_scalar(SETUP_DONE).fetch_one(self.pool()).await?;
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
        let done: i64 = sqlx::query_scalar(SETUP_DONE).fetch_one(&mut *tx).await?;
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

    pub async fn get_org(&self, uid: &str) -> Result<Option<OrgRow>> {
        Ok(sqlx::query_as(built(format!("{ORG_SELECT} WHERE uid = $1"))).bind(uid).fetch_optional(self.pool()).await?)
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
}
