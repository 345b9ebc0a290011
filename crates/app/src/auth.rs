//! API tokens: how they are made, and how a request's token becomes the
//! caller it acts as.
//!
//! A token is `yatai_` followed by 43 base64url characters (256 random
//! bits). Only its SHA-256 is stored. Resolved identities are cached for a
//! few seconds so that the hot read paths do not touch the database for
//! authentication, and last-used times are written in batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::Rng;
use sha2::{Digest, Sha256};
use yatai_core::{Scope, Timestamp};
use yatai_store::{MemberRole, OrgRow, Store, UserRow};

use crate::error::AppError;

/// How long a resolved identity is trusted before it is read again; bounds
/// how long a token revoked on another server keeps working.
const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 10_000;
/// Last-used times are recorded at this granularity.
const TOUCH_EVERY_MICROS: i64 = 30_000_000;

/// A new secret, the hash to store, and a hint to show.
pub struct NewSecret {
    pub secret: String,
    pub hash: String,
    pub hint: String,
}

pub fn generate_token() -> NewSecret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("yatai_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    from_secret(secret)
}

/// Hash and hint for a secret chosen by an operator (`YATAI_INITIAL_API_TOKEN`).
pub fn from_secret(secret: String) -> NewSecret {
    let hash = hash_token(&secret);
    let hint: String = secret.chars().take(10).collect();
    NewSecret { secret, hash, hint }
}

pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// What a request may do. Each route requires one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read models, bentos, events.
    ReadRegistry,
    /// Push, update and delete models and bentos.
    WriteRegistry,
    ReadCluster,
    WriteCluster,
    /// Manage one's own tokens: needs a full-scope token.
    ManageOwnTokens,
    /// Organization administration.
    Admin,
}

impl Permission {
    fn min_role(self) -> MemberRole {
        match self {
            Permission::ReadRegistry | Permission::ReadCluster | Permission::ManageOwnTokens => MemberRole::Guest,
            Permission::WriteRegistry | Permission::WriteCluster => MemberRole::Developer,
            Permission::Admin => MemberRole::Admin,
        }
    }

    /// Scopes, besides `api`, that grant this permission.
    fn granting_scopes(self) -> &'static [Scope] {
        match self {
            Permission::ReadRegistry => &[Scope::ReadOrganization, Scope::WriteOrganization],
            Permission::WriteRegistry => &[Scope::WriteOrganization],
            Permission::ReadCluster => &[Scope::ReadCluster, Scope::WriteCluster],
            Permission::WriteCluster => &[Scope::WriteCluster],
            Permission::ManageOwnTokens | Permission::Admin => &[],
        }
    }

    /// The permission's name in the OpenAPI document (`x-yatai-permission`).
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ReadRegistry => "read_registry",
            Permission::WriteRegistry => "write_registry",
            Permission::ReadCluster => "read_cluster",
            Permission::WriteCluster => "write_cluster",
            Permission::ManageOwnTokens => "manage_own_tokens",
            Permission::Admin => "admin",
        }
    }

    /// What the OpenAPI document says a route needs: the least role, and the token scopes
    /// that grant it (`api` always does, within the role).
    pub fn requirement(self) -> (MemberRole, Vec<&'static str>) {
        let mut scopes = vec![Scope::Api.as_str()];
        scopes.extend(self.granting_scopes().iter().map(|s| s.as_str()));
        (self.min_role(), scopes)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Permission::ReadRegistry => "read the registry",
            Permission::WriteRegistry => "push or delete models and bentos",
            Permission::ReadCluster => "read deployments",
            Permission::WriteCluster => "change deployments",
            Permission::ManageOwnTokens => "manage API tokens",
            Permission::Admin => "administer the organization",
        }
    }
}

/// The text of every [`Scope`], as clients send it.
pub const KNOWN_SCOPES: &[&str] = Scope::NAMES;

/// The identity a request acts as.
#[derive(Debug)]
pub struct Caller {
    pub user: UserRow,
    pub org: OrgRow,
    pub role: MemberRole,
    pub token_uid: String,
    pub token_name: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
    last_touch: AtomicI64,
}

impl Caller {
    /// A user signed in to the dashboard: they act with everything their role
    /// allows, as a full-scope token would.
    pub fn for_session(user: UserRow, org: OrgRow, role: MemberRole) -> Caller {
        Caller {
            user,
            org,
            role,
            token_uid: String::new(),
            token_name: String::new(),
            scopes: vec![Scope::Api.as_str().to_owned()],
            expires_at: None,
            last_touch: AtomicI64::new(0),
        }
    }

    pub fn full_scope(&self) -> bool {
        self.scopes.iter().any(|s| *s == Scope::Api)
    }

    pub fn allows(&self, p: Permission) -> bool {
        let role_ok = self.role >= p.min_role() || self.user.is_admin != 0;
        let scope_ok = self.full_scope() || self.scopes.iter().any(|s| p.granting_scopes().iter().any(|g| *s == *g));
        role_ok && scope_ok
    }

    pub fn require(&self, p: Permission) -> Result<(), AppError> {
        if self.allows(p) {
            return Ok(());
        }
        Err(AppError::forbidden(format!(
            "token {:?} of user {} (role {}, scopes {}) may not {}",
            self.token_name,
            self.user.name,
            self.role.as_str(),
            self.scopes.join(","),
            p.describe()
        )))
    }
}

pub struct Authenticator {
    store: Store,
    cache: RwLock<HashMap<String, (Arc<Caller>, Instant)>>,
    touched: Mutex<HashMap<String, Timestamp>>,
}

impl Authenticator {
    pub fn new(store: Store) -> Self {
        Authenticator { store, cache: RwLock::new(HashMap::new()), touched: Mutex::new(HashMap::new()) }
    }

    pub async fn authenticate(&self, header: Option<&str>) -> Result<Arc<Caller>, AppError> {
        let Some(secret) = header.map(str::trim).filter(|s| !s.is_empty()) else {
            return Err(AppError::unauthorized(
                "missing API token: send it in the X-YATAI-API-TOKEN header \
                 (bentoml cloud login --endpoint URL --api-token TOKEN does this)",
            ));
        };
        let hash = hash_token(secret);
        let cached = self
            .cache
            .read()
            .expect("lock")
            .get(&hash)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(c, _)| c.clone());
        let caller = match cached {
            Some(c) => c,
            None => {
                let Some(id) = self.store.find_token_identity(&hash).await? else {
                    return Err(AppError::unauthorized(
                        "the API token is not valid: it may be mistyped, revoked, or from another server",
                    ));
                };
                let caller = Arc::new(Caller {
                    scopes: id.token.scope_list(),
                    expires_at: id.token.expires_at,
                    token_uid: id.token.uid.clone(),
                    token_name: id.token.name.clone(),
                    last_touch: AtomicI64::new(id.token.last_used_at.unwrap_or(0)),
                    user: id.user,
                    org: id.org,
                    role: id.role,
                });
                let mut cache = self.cache.write().expect("lock");
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(hash, (caller.clone(), Instant::now()));
                caller
            }
        };
        let now = Timestamp::now();
        if let Some(exp) = caller.expires_at
            && exp <= now.0
        {
            return Err(AppError::unauthorized(format!(
                "the API token {:?} expired at {}; create a new one",
                caller.token_name,
                Timestamp(exp).to_rfc3339()
            )));
        }
        let last = caller.last_touch.load(Ordering::Relaxed);
        if now.0 - last > TOUCH_EVERY_MICROS
            && caller.last_touch.compare_exchange(last, now.0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.touched.lock().expect("lock").insert(caller.token_uid.clone(), now);
        }
        Ok(caller)
    }

    /// Forgets every cached identity (after a token is revoked or a
    /// membership changes).
    pub fn invalidate(&self) {
        self.cache.write().expect("lock").clear();
    }

    /// Writes pending last-used times.
    pub async fn flush_last_used(&self) {
        let batch: Vec<_> = self.touched.lock().expect("lock").drain().collect();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.touch_tokens(&batch).await {
            tracing::warn!(error = %e, "could not record token last-used times");
        }
    }
}
