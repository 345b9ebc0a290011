//! Shared pieces of the registry routes: turning rows into wire objects and
//! parsing list queries. Resolving names and recording events are
//! `yatai_app::registry`.

use serde::Deserialize;
use serde_json::value::RawValue;
use yatai_core::Kind;
use yatai_store::{ListQuery, RepositoryRow, VersionRow};

use crate::error::{ApiError, ApiResult};
use crate::extract::lenient;
use crate::schemas::{ArtifactSchema, CreatorSchema, RepositorySchema, labels_from_json, opt_ts, ts};
pub use yatai_app::registry::{
    check_fields, check_labels, check_repo_name, check_version_name, find_repository, find_repository_uncounted,
    find_version, record,
};
use yatai_app::{AppState, TransmissionMode};

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
