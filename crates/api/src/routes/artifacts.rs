//! Shared pieces of the registry routes: turning rows into wire objects,
//! resolving names, parsing list queries, recording events.

use serde::Deserialize;
use serde_json::value::RawValue;
use yatai_core::{Kind, validate_name_part};
use yatai_store::{ListQuery, NewEvent, RepositoryRow, VersionRow};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::lenient;
use crate::schemas::{ArtifactSchema, CreatorSchema, Label, RepositorySchema, labels_from_json, opt_ts, ts};
use crate::state::{AppState, TransmissionMode};

/// What `transmission_strategy` tells the client for this version (see the
/// protocol notes: `"proxy"` → through yatai; any other string → multipart;
/// null → ask for one presigned URL).
pub fn strategy_for(state: &AppState, row: &VersionRow) -> Option<&'static str> {
    match state.config.transmission {
        TransmissionMode::Proxy => Some("proxy"),
        TransmissionMode::Presigned => None,
        TransmissionMode::Multipart => Some("presigned_url"),
        TransmissionMode::Auto => {
            if !state.blobs.is_s3() {
                return Some("proxy");
            }
            let size = row
                .archive_size
                .or_else(|| {
                    serde_json::from_str::<serde_json::Value>(&row.manifest)
                        .ok()
                        .and_then(|m| yatai_core::manifest::manifest_size_bytes(&m))
                })
                .unwrap_or(0);
            if size as u64 >= state.config.multipart_threshold { Some("presigned_url") } else { None }
        }
    }
}

fn raw_manifest(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap_or_else(|_| RawValue::from_string("{}".to_owned()).expect("valid"))
}

pub fn artifact(state: &AppState, row: &VersionRow) -> ArtifactSchema {
    ArtifactSchema {
        uid: row.uid.clone(),
        name: row.version.clone(),
        version: row.version.clone(),
        resource_type: row.kind().as_str(),
        labels: labels_from_json(&row.labels),
        description: row.description.clone(),
        created_at: ts(row.created_at),
        updated_at: opt_ts(row.updated_at),
        deleted_at: None,
        build_at: opt_ts(row.build_at).or_else(|| Some(ts(row.created_at))),
        upload_status: row.upload_status.clone(),
        upload_finished_reason: row.upload_finished_reason.clone(),
        upload_started_at: opt_ts(row.upload_started_at),
        upload_finished_at: opt_ts(row.upload_finished_at),
        transmission_strategy: strategy_for(state, row),
        upload_id: row.upload_id.clone(),
        presigned_upload_url: String::new(),
        presigned_download_url: String::new(),
        image_build_status: row.image_build_status.clone(),
        manifest: raw_manifest(&row.manifest),
        archive_size_bytes: row.archive_size,
        archive_digest: row.blob_digest.as_ref().map(|d| format!("sha256:{d}")),
        creator: row.creator_name.clone().map(|name| CreatorSchema { name }),
        repository: None,
    }
}

pub fn repository(repo: &RepositoryRow, latest: Option<ArtifactSchema>) -> RepositorySchema {
    let kind = Kind::parse(&repo.kind).unwrap_or(Kind::Model);
    let latest = Some(latest.map(Box::new));
    RepositorySchema {
        uid: repo.uid.clone(),
        name: repo.name.clone(),
        resource_type: kind.repository_resource_type(),
        labels: labels_from_json(&repo.labels),
        description: repo.description.clone(),
        created_at: ts(repo.created_at),
        updated_at: opt_ts(repo.updated_at),
        deleted_at: None,
        creator: repo.creator_name.clone().map(|name| CreatorSchema { name }),
        version_count: repo.version_count,
        latest_model: if kind == Kind::Model { latest.clone() } else { None },
        latest_bento: if kind == Kind::Bento { latest } else { None },
    }
}

/// A repository with its newest version.
pub async fn repository_with_latest(state: &AppState, repo: &RepositoryRow) -> ApiResult<RepositorySchema> {
    let kind = Kind::parse(&repo.kind).unwrap_or(Kind::Model);
    let latest = state.store.latest_version(&repo.org_uid, kind, &repo.name, false).await?;
    Ok(repository(repo, latest.as_ref().map(|v| artifact(state, v))))
}

pub fn check_repo_name(kind: Kind, name: &str) -> ApiResult<()> {
    validate_name_part(kind.name_label(), name).map_err(ApiError::from)
}

pub fn check_version_name(kind: Kind, version: &str) -> ApiResult<()> {
    validate_name_part(kind.version_label(), version).map_err(ApiError::from)
}

pub async fn find_repository(state: &AppState, caller: &Caller, kind: Kind, name: &str) -> ApiResult<RepositoryRow> {
    check_repo_name(kind, name)?;
    state
        .store
        .get_repository(&caller.org.uid, kind, name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{kind} repository {name:?} not found")))
}

/// Like [`find_repository`] without counting its versions (`version_count`
/// is -1), for routes that do not show the repository.
pub async fn find_repository_uncounted(
    state: &AppState,
    caller: &Caller,
    kind: Kind,
    name: &str,
) -> ApiResult<RepositoryRow> {
    check_repo_name(kind, name)?;
    state
        .store
        .get_repository_uncounted(&caller.org.uid, kind, name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{kind} repository {name:?} not found")))
}

/// Finds a version; `latest` (when no version is literally named so) means
/// the newest uploaded one.
pub async fn find_version(
    state: &AppState,
    caller: &Caller,
    kind: Kind,
    repo: &str,
    version: &str,
) -> ApiResult<VersionRow> {
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
        return Err(ApiError::not_found(format!("{kind} repository {repo:?} not found")));
    }
    Err(ApiError::not_found(format!("{kind} {repo}:{version} not found")))
}

/// `?start=&count=&search=&q=` as the client sends them (empty = absent).
#[derive(Debug, Deserialize)]
pub struct ListParams {
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub start: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub count: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub search: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub q: Option<String>,
}

pub const DEFAULT_PAGE: i64 = 20;
pub const MAX_PAGE: i64 = 1000;

impl ListParams {
    /// Parses paging and the `q` mini-language: `label:key=value`,
    /// `label:key`, `sort:…` (ignored: lists are newest first) and free
    /// words, which are searched for in names and versions.
    pub fn to_query(&self) -> ApiResult<ListQuery> {
        let start = self.start.unwrap_or(0);
        let count = self.count.unwrap_or(DEFAULT_PAGE);
        if start < 0 || count < 0 {
            return Err(ApiError::bad_request("start and count must not be negative"));
        }
        let mut words: Vec<String> = self.search.iter().cloned().collect();
        let mut labels = Vec::new();
        for token in self.q.as_deref().unwrap_or("").split_whitespace() {
            if let Some(l) = token.strip_prefix("label:") {
                match l.split_once('=') {
                    Some((k, v)) => labels.push((k.to_owned(), Some(v.to_owned()))),
                    None => labels.push((l.to_owned(), None)),
                }
            } else if token.starts_with("sort:") || token.starts_with("is:") {
                continue;
            } else {
                words.push(token.to_owned());
            }
        }
        Ok(ListQuery {
            start,
            count: count.min(MAX_PAGE),
            search: if words.is_empty() { None } else { Some(words.join(" ")) },
            labels,
        })
    }
}

pub fn check_labels(labels: &[Label]) -> ApiResult<()> {
    yatai_core::limits::check_labels(labels.iter().map(|l| (l.key.as_str(), l.value.as_str())))
        .map_err(ApiError::bad_request)
}

/// Checks the free-text fields every create and update body carries
/// against `yatai_core::limits`.
pub fn check_fields(description: Option<&str>, labels: Option<&[Label]>) -> ApiResult<()> {
    if let Some(d) = description {
        yatai_core::limits::check_description("description", d).map_err(|e| ApiError::bad_request(e.to_string()))?;
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
