//! What a use case can fail with, in terms a person can act on. The HTTP API
//! maps each kind to a status; the dashboard shows [`AppError::Invalid`]
//! next to the form field it names.

use yatai_blob::BlobError;
use yatai_core::TagError;
use yatai_core::deploy::TargetError;
use yatai_store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// The input is wrong; `field` names the input it is about, when one is.
    #[error("{message}")]
    Invalid { field: Option<&'static str>, message: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// Something the server depends on failed or is busy; retrying may work.
    #[error("{0}")]
    Unavailable(String),
    /// The server's disk (its database's or its archives') is full: nothing was stored;
    /// retrying works once an operator has made room.
    #[error("{0}")]
    StorageFull(String),
    /// A bug or a broken invariant.
    #[error("{0}")]
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn invalid(message: impl Into<String>) -> Self {
        AppError::Invalid { field: None, message: message.into() }
    }
    /// Invalid input in the named field (the dashboard shows it there).
    pub fn invalid_field(field: &'static str, message: impl Into<String>) -> Self {
        AppError::Invalid { field: Some(field), message: message.into() }
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        AppError::Unauthorized(message.into())
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        AppError::Forbidden(message.into())
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        AppError::NotFound(message.into())
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        AppError::Conflict(message.into())
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        AppError::TooLarge(message.into())
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        AppError::Unavailable(message.into())
    }
    pub fn internal(message: impl Into<String>) -> Self {
        AppError::Internal(message.into())
    }

    /// The message, for a person.
    pub fn message(&self) -> &str {
        match self {
            AppError::Invalid { message, .. } => message,
            AppError::Unauthorized(m)
            | AppError::Forbidden(m)
            | AppError::NotFound(m)
            | AppError::Conflict(m)
            | AppError::TooLarge(m)
            | AppError::Unavailable(m)
            | AppError::StorageFull(m)
            | AppError::Internal(m) => m,
        }
    }

    /// The form field an invalid input error is about.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            AppError::Invalid { field, .. } => *field,
            _ => None,
        }
    }

    /// The same error, about `field` (for an invalid input that did not say).
    pub fn in_field(self, field: &'static str) -> Self {
        match self {
            AppError::Invalid { field: None, message } => AppError::Invalid { field: Some(field), message },
            other => other,
        }
    }
}

/// Whether an error's text says a disk is full: ENOSPC (`No space left on device`, what Rust's
/// `StorageFull` prints), SQLite's `SQLITE_FULL`, PostgreSQL's `disk_full` (53100), an exceeded quota.
fn disk_full(text: &str) -> bool {
    [
        "No space left on device",
        "database or disk is full",
        "53100",
        "could not extend file",
        "Disk quota exceeded",
        "storage full",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => AppError::NotFound(m),
            StoreError::Conflict(m) => AppError::Conflict(m),
            StoreError::Invalid(m) => AppError::invalid(m),
            StoreError::Db(e) if disk_full(&e.to_string()) => {
                tracing::error!(error = %e, "the database's disk is full");
                AppError::StorageFull(
                    "the server's database has no space left on its disk: nothing was stored; try again once the \
                     operator has made room"
                        .into(),
                )
            }
            StoreError::Db(e) => {
                tracing::error!(error = %e, "database error");
                AppError::unavailable("the metadata database failed; try again, and tell the operator if it persists")
            }
            StoreError::Migrate(e) => AppError::Internal(e.to_string()),
        }
    }
}

impl From<BlobError> for AppError {
    fn from(e: BlobError) -> Self {
        match &e {
            BlobError::Interrupted { .. } | BlobError::LengthMismatch { .. } => AppError::invalid(e.to_string()),
            BlobError::TooLarge { .. } => AppError::too_large(e.to_string()),
            BlobError::NotFound(_) => AppError::not_found(
                "the stored archive is missing from artifact storage; push this version again with --force",
            ),
            BlobError::Exists(_) => {
                AppError::conflict("this archive was already received; ask the server for a new URL to upload again")
            }
            BlobError::Storage(m) if disk_full(m) => {
                tracing::error!(error = %m, "artifact storage is full");
                AppError::StorageFull(
                    "the server's artifact storage has no space left: nothing was stored; try again once the \
                     operator has made room"
                        .into(),
                )
            }
            BlobError::Storage(m) => {
                tracing::error!(error = %m, "artifact storage error");
                AppError::unavailable("artifact storage failed; try again, and tell the operator if it persists")
            }
        }
    }
}

impl From<TagError> for AppError {
    fn from(e: TagError) -> Self {
        AppError::invalid(e.to_string())
    }
}

impl From<TargetError> for AppError {
    fn from(e: TargetError) -> Self {
        match e {
            TargetError::Refused(m) => AppError::invalid(m),
            TargetError::Unavailable(m) => AppError::unavailable(m),
            TargetError::Conflict(m) => AppError::conflict(m),
        }
    }
}
