//! Every HTTP route, grouped by what it serves. [`api`] assembles them.

pub mod artifacts;
pub mod clusters;
pub mod deployments;
pub mod deployments_v1;
pub mod events;
pub mod health;
pub mod identity;
pub mod images;
pub mod registry;
pub mod secrets;
pub mod transfer;

use std::sync::Arc;

use axum::Extension;
use yatai_core::Kind;

use crate::auth::Caller;
use crate::openapi::Api;
use yatai_app::AppState;

/// The caller of an authenticated route.
pub type Auth = Extension<Arc<Caller>>;

/// Model or bento, as a type parameter, so one handler serves both kinds.
pub trait KindParam: Send + Sync + 'static {
    const KIND: Kind;
    /// Path segment of the repository collection: `model_repositories`.
    const REPOS: &'static str;
    /// Path segment of the version collection: `models`.
    const VERSIONS: &'static str;
    /// OpenAPI tag.
    const TAG: &'static str;
}

pub struct ModelKind;
pub struct BentoKind;

impl KindParam for ModelKind {
    const KIND: Kind = Kind::Model;
    const REPOS: &'static str = "model_repositories";
    const VERSIONS: &'static str = "models";
    const TAG: &'static str = "models";
}

impl KindParam for BentoKind {
    const KIND: Kind = Kind::Bento;
    const REPOS: &'static str = "bento_repositories";
    const VERSIONS: &'static str = "bentos";
    const TAG: &'static str = "bentos";
}

/// Routes that need a token.
pub fn authenticated(state: AppState) -> Api {
    Api::new(state.clone())
        .merge(identity::routes(state.clone()))
        .merge(registry::routes::<ModelKind>(state.clone()))
        .merge(registry::routes::<BentoKind>(state.clone()))
        .merge(transfer::routes::<ModelKind>(state.clone()))
        .merge(transfer::routes::<BentoKind>(state.clone()))
        .merge(deployments::routes(state.clone()))
        .merge(deployments_v1::routes(state.clone()))
        .merge(images::routes(state.clone()))
        .merge(secrets::routes(state.clone()))
        .merge(events::routes(state))
}

/// Routes open to anyone: health, and transfer URLs that carry their own
/// signature.
pub fn public(state: AppState) -> Api {
    Api::new(state.clone()).merge(health::routes(state.clone())).merge(transfer::signed_routes(state))
}
