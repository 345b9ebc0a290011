//! The registry's shared steps: resolving repositories and versions by name
//! within the caller's organization, checking the free-text fields every
//! create and update carries, and recording audit events.

use yatai_core::{Kind, validate_name_part};
use yatai_store::{NewEvent, RepositoryRow, VersionRow};

use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::labels::Label;
use crate::state::AppState;

pub fn check_repo_name(kind: Kind, name: &str) -> AppResult<()> {
    validate_name_part(kind.name_label(), name).map_err(AppError::from)
}

pub fn check_version_name(kind: Kind, version: &str) -> AppResult<()> {
    validate_name_part(kind.version_label(), version).map_err(AppError::from)
}

pub async fn find_repository(state: &AppState, caller: &Caller, kind: Kind, name: &str) -> AppResult<RepositoryRow> {
    check_repo_name(kind, name)?;
    state
        .store
        .get_repository(&caller.org.uid, kind, name)
        .await?
        .ok_or_else(|| AppError::not_found(format!("{kind} repository {name:?} not found")))
}

/// Like [`find_repository`] without counting its versions (`version_count`
/// is -1), for callers that do not show the repository.
pub async fn find_repository_uncounted(
    state: &AppState,
    caller: &Caller,
    kind: Kind,
    name: &str,
) -> AppResult<RepositoryRow> {
    check_repo_name(kind, name)?;
    state
        .store
        .get_repository_uncounted(&caller.org.uid, kind, name)
        .await?
        .ok_or_else(|| AppError::not_found(format!("{kind} repository {name:?} not found")))
}

/// Finds a version; `latest` (when no version is literally named so) means
/// the newest uploaded one.
pub async fn find_version(
    state: &AppState,
    caller: &Caller,
    kind: Kind,
    repo: &str,
    version: &str,
) -> AppResult<VersionRow> {
    check_repo_name(kind, repo)?;
    check_version_name(kind, version)?;
    let org = &caller.org.uid;
    if let Some(row) = state.store.get_version(org, kind, repo, version).await? {
        return Ok(row);
    }
    if version == "latest"
        && let Some(row) = state.store.latest_version(org, kind, repo, true).await?
    {
        return Ok(row);
    }
    if state.store.get_repository_uncounted(org, kind, repo).await?.is_none() {
        return Err(AppError::not_found(format!("{kind} repository {repo:?} not found")));
    }
    Err(AppError::not_found(format!("{kind} {repo}:{version} not found")))
}

pub fn check_labels(labels: &[Label]) -> AppResult<()> {
    yatai_core::limits::check_labels(labels.iter().map(|l| (l.key.as_str(), l.value.as_str())))
        .map_err(|m| AppError::invalid_field("labels", m))
}

/// Checks the free-text fields every create and update body carries
/// against `yatai_core::limits`.
pub fn check_fields(description: Option<&str>, labels: Option<&[Label]>) -> AppResult<()> {
    if let Some(d) = description {
        yatai_core::limits::check_description("description", d)
            .map_err(|e| AppError::invalid_field("description", e.to_string()))?;
    }
    if let Some(labels) = labels {
        check_labels(labels)?;
    }
    Ok(())
}

/// Records an audit event; a failure to record is logged, not returned.
pub async fn record(
    state: &AppState,
    caller: &Caller,
    operation: &str,
    resource_type: &str,
    resource_name: &str,
    info: serde_json::Value,
) {
    let info = info.to_string();
    let result = state
        .store
        .record_event(NewEvent {
            org_uid: &caller.org.uid,
            actor_uid: Some(&caller.user.uid),
            actor_name: &caller.user.name,
            api_token_name: &caller.token_name,
            operation,
            resource_type,
            resource_name,
            status: "success",
            info: &info,
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, operation, resource_name, "could not record an event");
    }
}

/// Deletes a version (refused while a deployment runs it), frees its
/// archive when no other version shares it, and records the deletion.
pub async fn delete_version(state: &AppState, caller: &Caller, v: &VersionRow) -> AppResult<()> {
    let digest = state.store.delete_version(v).await?;
    crate::janitor::collect_blobs(state, digest.as_slice()).await;
    record(state, caller, "deleted", v.kind.as_str(), &v.tag(), serde_json::Value::Null).await;
    Ok(())
}
