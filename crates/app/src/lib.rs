//! The use cases of yatai-rs, free of HTTP: what the API and the dashboard
//! both do, implemented once.
//!
//! - [`registry`]: resolving repositories and versions, field checks, audit events.
//! - [`deployments`]: create, update, terminate, restore, roll back, delete;
//!   driven through each cluster's [`yatai_core::deploy::DeployTarget`],
//!   chosen by [`targets::Targets`]; status written back by
//!   [`deployments::DbStatusSink`]; restore on boot.
//! - [`gitops`]: deployments made outside yatai (kubectl, GitOps), imported and followed,
//!   never changed.
//! - [`secrets`]: an organization's secrets, sealed at rest, opened only for a deploy target.
//! - [`auth`]: API tokens, callers and their permissions.
//! - [`images`]: image build jobs. [`janitor`]: expired uploads and sessions,
//!   stray blobs.
//!
//! Every use case returns an [`AppError`]: the API maps it to a status, the
//! dashboard puts [`AppError::Invalid`] beside the form field it names.

pub mod auth;
pub mod clusters;
pub mod deployments;
pub mod error;
pub mod gitops;
pub mod images;
pub mod janitor;
pub mod labels;
pub mod registry;
pub mod secrets;
pub mod signing;
pub mod state;
pub mod targets;
pub mod tokens;

pub use error::{AppError, AppResult};
pub use state::{AppConfig, AppState, TransmissionMode};
pub use targets::Targets;
