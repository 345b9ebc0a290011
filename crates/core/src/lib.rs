//! Domain types of yatai-rs: names and tags, artifact kinds, manifests,
//! timestamps, and deployments independent of where they run (with the
//! [`deploy::DeployTarget`] seam). Nothing here does IO, so every rule can
//! be unit-tested alone.

mod text_enum;

pub mod deploy;
pub mod kind;
pub mod limits;
pub mod manifest;
pub mod requirements;
pub mod scope;
pub mod secret;
pub mod tag;
pub mod time;
pub mod upload;

pub use kind::Kind;
pub use scope::Scope;
pub use tag::{Tag, TagError, validate_name_part, validate_new_version};
pub use time::Timestamp;
pub use upload::{UploadMode, UploadState, UploadStatus};
