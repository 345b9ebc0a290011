//! The metadata store: organizations, users and API tokens; model and bento
//! repositories and versions; blobs, uploads and the audit feed.
//!
//! One set of queries serves SQLite (the embedded default) and PostgreSQL
//! through sqlx's `Any` driver. Both accept `$N` placeholders; where their SQL
//! differs, `Dialect` picks the variant. Each backend has its own migration
//! directory because their DDL differs in small ways (auto-increment keys).

mod clusters;
mod deployments;
mod events;
mod identity;
mod image_builds;
mod invitations;
mod members;
mod registry;
pub mod schema;
mod secrets;
mod sessions;
mod settings;
mod totals;
mod uploads;

pub use clusters::{ClusterPatch, NewCluster, StoredCluster};
pub use deployments::{
    ClusterRow, DeploymentFilter, DeploymentRow, DeploymentUse, ExternalDeployment, Imported, MANAGED_EXTERNALLY,
    NewDeployment, NewTarget, RevisionRow, TargetRow,
};
pub use events::{EventFilter, EventRow, NewEvent};
pub use identity::{NewToken, OrgRow, TokenIdentity, TokenRow, UserRow};
pub use image_builds::ImageBuildRow;
pub use invitations::{Accepted, InvitationRow, NewInvitation};
pub use members::{MemberRole, MemberRow};
pub use registry::{
    COUNT_CAP, ListQuery, NewVersion, RepoSort, RepositoryPage, RepositoryRow, VersionPatch, VersionRow, VersionSort,
};
pub use secrets::{NewSecret, SecretChange, SecretRow};
pub use sessions::{NewSession, SessionIdentity};
pub use totals::Totals;
pub use uploads::{FinalizeOutcome, UploadRow};

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

pub use yatai_core::{Kind, Timestamp};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// Handle to the metadata database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Store {
    /// Connects to `url` (`sqlite://path` or `postgres://…`), creating a
    /// SQLite file if needed, and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Invalid(format!(
                "unsupported database URL {url:?}: use sqlite://PATH or postgres://USER@HOST/DB"
            )));
        };
        let pool = match dialect {
            Dialect::Sqlite => {
                let url = if url.contains('?') { url.to_owned() } else { format!("{url}?mode=rwc") };
                let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
                AnyPoolOptions::new()
                    // Readers run in parallel under WAL; writers queue on the
                    // busy timeout rather than failing.
                    .max_connections(8)
                    // A local file cannot "go away" between queries: the
                    // ping before each checkout only costs two thread hops.
                    .test_before_acquire(false)
                    .min_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Dialect::Postgres => {
                let options = AnyConnectOptions::from_str(url)?
                    .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
                AnyPoolOptions::new()
                    .max_connections(16)
                    // sqlx pings a connection when it goes back to the pool
                    // already; a second ping at checkout is one more round
                    // trip per query (a third of them on a single-query
                    // request). A connection the server dropped meanwhile
                    // fails its query once and is then discarded.
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?
            }
        };
        let migrator = match dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await?;
        Ok(Store { pool, dialect })
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A fresh 32-character identifier.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether an error is a unique-constraint violation, on either backend.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation)
                // The Any driver may not map the kind; fall back to the codes.
                || db.code().is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
        }
        _ => false,
    }
}

/// `$1, $2, …, $n`, for an `IN (…)` list of `n` bound values.
pub(crate) fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Marks SQL text assembled at run time. Every such string in this crate is
/// built only from constants of this crate and placeholder numbers; values
/// from users are always bound as parameters, never spliced in.
pub(crate) fn built(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}
