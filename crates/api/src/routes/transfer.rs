//! Moving archive bytes: the upload and download actions of a version, in
//! the three modes the bentoml client knows (proxy, single presigned URL,
//! multipart with presigned parts), and the signed URLs yatai serves itself
//! when artifacts live on local disk.
//!
//! Every path ends in [`finish`]: the archive's size and SHA-256 are known,
//! and the store atomically points the version at the (deduplicated) blob.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, put};
use serde::Deserialize;
use serde_json::json;
use yatai_blob::{BlobStore, WriteLimits, Written};
use yatai_core::{Kind, Timestamp, UploadMode, UploadState, UploadStatus};
use yatai_store::{FinalizeOutcome, StoreError, UploadRow, VersionRow};

use super::artifacts::{artifact, find_version, record, strategy_for};
use super::{Auth, KindParam};
use crate::auth::{Caller, Permission};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json as JsonBody, Path, Query};
use crate::openapi::{Api, Op};
use crate::schemas::{ArtifactSchema, CompleteMultipartRequest, FinishUploadRequest, PresignPartRequest};
use yatai_app::AppState;
use yatai_app::janitor;

/// S3's limit, which the bentoml client's 100 MiB parts never approach.
const MAX_PART_NUMBER: i64 = 10_000;

pub fn routes<K: KindParam>(state: AppState) -> Api {
    let v = format!("/api/v1/{}/{{name}}/{}/{{version}}", K::REPOS, K::VERSIONS);
    let kind = K::KIND;
    let op = |o: Op| o.tag(K::TAG).errors(&[404, 409]);
    Api::new(state)
        .route(
            op(Op::patch(format!("{v}/start_upload"), format!("Announce an upload of a {kind} archive"))
                .perm(Permission::WriteRegistry)
                .ok::<ArtifactSchema>()),
            patch(start_upload::<K>),
        )
        .route(
            op(Op::put(format!("{v}/upload"), format!("Upload a {kind} archive through yatai (proxy mode)"))
                .perm(Permission::WriteRegistry)
                .binary_body()
                .ok::<ArtifactSchema>()
                .errors(&[413])),
            put(upload::<K>),
        )
        .route(
            op(Op::patch(format!("{v}/finish_upload"), format!("Finish a presigned or multipart {kind} upload"))
                .perm(Permission::WriteRegistry)
                .body::<FinishUploadRequest>()
                .ok::<ArtifactSchema>()),
            patch(finish_upload::<K>),
        )
        .route(
            op(Op::patch(format!("{v}/presign_upload_url"), "Get one URL to PUT the whole archive to")
                .perm(Permission::WriteRegistry)
                .ok::<ArtifactSchema>()),
            patch(presign_upload_url::<K>),
        )
        .route(
            op(Op::patch(format!("{v}/start_multipart_upload"), "Start a multipart upload (returns upload_id)")
                .perm(Permission::WriteRegistry)
                .ok::<ArtifactSchema>()),
            patch(start_multipart_upload::<K>),
        )
        .route(
            op(Op::patch(format!("{v}/presign_multipart_upload_url"), "Get the URL to PUT one part to")
                .perm(Permission::WriteRegistry)
                .body::<PresignPartRequest>()
                .ok::<ArtifactSchema>()),
            patch(presign_multipart_upload_url::<K>),
        )
        .route(
            op(Op::patch(format!("{v}/complete_multipart_upload"), "Assemble the uploaded parts")
                .perm(Permission::WriteRegistry)
                .body::<CompleteMultipartRequest>()
                .ok::<ArtifactSchema>()),
            patch(complete_multipart_upload::<K>),
        )
        .route(
            op(Op::patch(format!("{v}/presign_download_url"), "Get a URL to download the archive from")
                .perm(Permission::ReadRegistry)
                .ok::<ArtifactSchema>()),
            patch(presign_download_url::<K>),
        )
        .route(
            op(Op::get(format!("{v}/download"), format!("Download a {kind} archive through yatai"))
                .perm(Permission::ReadRegistry)
                .binary_ok()),
            get(download::<K>),
        )
}

pub fn signed_routes(state: AppState) -> Api {
    let signed = |o: Op| {
        o.tag("transfer")
            .public()
            .query("expires", "Unix time the URL expires")
            .query("signature", "HMAC of the request")
            .errors(&[403, 404])
    };
    Api::new(state)
        .route(
            signed(
                Op::put("/transfer/uploads/{upload}", "PUT a whole archive to a URL from presign_upload_url")
                    .binary_body()
                    .errors(&[409, 413]),
            ),
            put(signed_put),
        )
        .route(
            signed(
                Op::put("/transfer/uploads/{upload}/parts/{part}", "PUT one part of a multipart upload")
                    .binary_body()
                    .errors(&[409, 413]),
            ),
            put(signed_put_part),
        )
        .route(
            signed(
                Op::get("/transfer/archives/{version}", "GET an archive from a URL from presign_download_url")
                    .binary_ok(),
            ),
            get(signed_get),
        )
}

/// Finds the exact version an upload action names (never `latest`).
async fn upload_target(
    state: &AppState,
    caller: &Caller,
    kind: Kind,
    name: &str,
    version: &str,
) -> ApiResult<VersionRow> {
    let row = find_version(state, caller, kind, name, version).await?;
    if row.version != version {
        return Err(ApiError::bad_request("uploads must name an exact version, not `latest`"));
    }
    Ok(row)
}

fn response(state: &AppState, row: &VersionRow) -> Json<ArtifactSchema> {
    Json(artifact(state, row))
}

async fn reload(state: &AppState, row: &VersionRow) -> ApiResult<VersionRow> {
    state
        .store
        .get_version_by_uid(&row.uid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{} {} was deleted meanwhile", row.kind, row.tag())))
}

/// The base URL clients reach this server at.
fn base_url(state: &AppState, headers: &HeaderMap) -> ApiResult<String> {
    if let Some(url) = &state.config.external_url {
        return Ok(url.as_str().trim_end_matches('/').to_owned());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("the request has no Host header; set --external-url on the server"))?;
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    Ok(format!("{scheme}://{host}"))
}

fn signed_url(state: &AppState, base: &str, method: &str, path: &str, ttl: Duration) -> String {
    let expires = Timestamp::now().0 / 1_000_000 + ttl.as_secs() as i64;
    format!("{base}{path}?{}", state.signer.sign(method, path, expires))
}

fn content_length(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("Content-Length is not a number")),
    }
}

fn limits(state: &AppState, headers: &HeaderMap) -> ApiResult<WriteLimits> {
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    write_limits(content_length(headers)?, chunked, state.config.max_artifact_size)
}

/// The limits of an upload's body from its announced length (`None`: not announced) and the
/// server's limit (`--max-artifact-size`).
fn write_limits(expected_len: Option<u64>, chunked: bool, max_len: Option<u64>) -> ApiResult<WriteLimits> {
    // No archive is empty; a body-less PUT would otherwise store one as a
    // successful upload that no client can unpack.
    if expected_len == Some(0) || (expected_len.is_none() && !chunked) {
        return Err(ApiError::bad_request("the upload is empty: send the archive as the request body"));
    }
    if let Some(len) = expected_len {
        check_archive_size(len, max_len)?;
    }
    Ok(WriteLimits { expected_len, max_len })
}

/// Refuses an archive over the server's limit: announced, streamed, or assembled from parts
/// (each of which is within the limit) or written to a presigned URL (which cannot enforce it).
fn check_archive_size(len: u64, max: Option<u64>) -> ApiResult<()> {
    match max {
        Some(max) if len > max => {
            Err(ApiError::too_large(format!("the archive is {len} bytes; this server accepts at most {max}")))
        }
        _ => Ok(()),
    }
}

/// A part number as S3 numbers parts, 1 to [`MAX_PART_NUMBER`]; `None` for any other.
fn part_number(n: i64) -> Option<u32> {
    u32::try_from(n).ok().filter(|n| (1..=MAX_PART_NUMBER as u32).contains(n))
}

/// The part numbers a completion lists: at least one, each a valid part number, once each and
/// ascending (S3 assembles the parts in the order listed).
fn check_completed_parts(parts: &[i64]) -> Result<(), String> {
    if parts.is_empty() {
        return Err("no parts to assemble".to_owned());
    }
    if parts.windows(2).any(|w| w[0] >= w[1]) {
        return Err("parts must be listed once each, in ascending part_number order".to_owned());
    }
    if let Some(bad) = parts.iter().find(|n| part_number(**n).is_none()) {
        return Err(format!("part_number must be between 1 and {MAX_PART_NUMBER}, not {bad}"));
    }
    Ok(())
}

/// Marks something as being written by this process: a version receiving a
/// proxy upload, an upload whose one writer streams or assembles its bytes,
/// or one part of a multipart upload. A second concurrent writer is refused
/// instead of racing, and the janitor leaves what is marked alone.
struct InProgress {
    state: AppState,
    key: String,
}

impl InProgress {
    fn acquire(state: &AppState, row: &VersionRow) -> ApiResult<Self> {
        Self::claim(state, &row.uid, || {
            format!("another upload of {} {} is in progress; wait for it to finish", row.kind, row.tag())
        })
    }

    fn claim(state: &AppState, key: &str, busy: impl FnOnce() -> String) -> ApiResult<Self> {
        let mut set = state.uploads_in_progress.lock().expect("lock");
        if !set.insert(key.to_owned()) {
            return Err(ApiError::conflict(busy()));
        }
        Ok(InProgress { state: state.clone(), key: key.to_owned() })
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.state.uploads_in_progress.lock().expect("lock").remove(&self.key);
    }
}

/// The in-progress key of one part of a multipart upload.
fn part_in_progress(upload_uid: &str, part: i64) -> String {
    format!("{upload_uid}/part/{part}")
}

fn parts_in_progress(state: &AppState, upload_uid: &str) -> bool {
    let prefix = format!("{upload_uid}/part/");
    state.uploads_in_progress.lock().expect("lock").iter().any(|k| k.starts_with(&prefix))
}

/// Claims an open upload in the database for this one writer (409 if another
/// writer has it or it is already finished); see [`yatai_store::Store::claim_upload`].
async fn claim(state: &AppState, upload: &UploadRow) -> ApiResult<()> {
    if state.store.claim_upload(&upload.uid).await? {
        return Ok(());
    }
    let now = state.store.get_upload(&upload.uid).await?.map(|u| u.state).unwrap_or_else(|| "gone".into());
    Err(ApiError::conflict(if now == UploadState::Receiving {
        "another transfer of this upload is in progress; wait for it to finish".to_owned()
    } else {
        format!("this upload is already {now}; ask the server for a new URL to upload again")
    }))
}

/// Gives a claimed upload back after a failure so that the client can retry.
async fn release(state: &AppState, upload: &UploadRow) {
    if let Err(e) = state.store.release_upload(&upload.uid).await {
        tracing::warn!(error = %e, upload = %upload.uid, "could not release a failed upload for a retry");
    }
}

/// When an unfinished upload is cleaned up: `ttl` (how long its URLs or
/// stream may run) plus a grace period (the upload TTL, at most an hour).
fn upload_expiry(state: &AppState, ttl: Duration) -> Timestamp {
    let grace = state.config.upload_ttl.min(Duration::from_secs(3600));
    Timestamp::now().after(ttl + grace)
}

/// Makes verified bytes the version's content. Every upload path ends here.
async fn finish(
    state: &AppState,
    caller: &Caller,
    row: &VersionRow,
    upload: &UploadRow,
    w: &Written,
) -> ApiResult<VersionRow> {
    let checked = match check_archive_size(w.size, state.config.max_artifact_size) {
        Ok(()) => check_archive(state, row, upload).await,
        Err(too_large) => Err(too_large),
    };
    if let Err(refused) = checked {
        if refused.status.is_client_error() {
            abandon(state, caller, row, Some(upload), &refused.message).await;
        }
        return Err(refused);
    }
    verify_dedup_target(state, row, upload, w).await?;
    let outcome = match state.store.finalize_upload(&row.uid, upload, &w.sha256, w.size as i64).await {
        Ok(o) => o,
        Err(e) => {
            if matches!(e, StoreError::Conflict(_) | StoreError::NotFound(_)) {
                janitor::discard_upload(state, upload).await;
            }
            return Err(e.into());
        }
    };
    let (replaced, kept) = match &outcome {
        FinalizeOutcome::Stored { replaced } => (replaced.clone(), "stored"),
        FinalizeOutcome::Deduplicated { replaced } => (replaced.clone(), "deduplicated"),
        FinalizeOutcome::Unchanged => (None, "unchanged"),
        FinalizeOutcome::AlreadyFinished => {
            return Err(ApiError::conflict(format!(
                "this upload of {} {} was already finished or cancelled by another request",
                row.kind,
                row.tag()
            )));
        }
    };
    if !matches!(outcome, FinalizeOutcome::Stored { .. }) {
        janitor::discard_upload(state, upload).await;
    }
    if let Some(old) = replaced {
        janitor::collect_blobs(state, &[old]).await;
    }
    record(
        state,
        caller,
        "pushed",
        row.kind().as_str(),
        &row.tag(),
        json!({"size_bytes": w.size, "sha256": w.sha256, "mode": upload.mode, "result": kept}),
    )
    .await;
    reload(state, row).await
}

/// Refuses archives a pull could not use (M1, L3): empty, not a tar (plain or
/// gzip, as the client sends and reads them), or whose manifest names another
/// tag than the one it is uploaded as (the client takes the tag from the
/// manifest on pull, so it would save something else or fail).
async fn check_archive(state: &AppState, row: &VersionRow, upload: &UploadRow) -> ApiResult<()> {
    let manifest = match row.kind() {
        Kind::Bento => "bento.yaml",
        Kind::Model => "model.yaml",
    };
    let info = state.blobs.inspect_archive(&upload.storage_key, manifest).await?.map_err(|problem| {
        ApiError::bad_request(format!(
            "{problem}; {} {} was not changed. Push an archive made by `bentoml push` (a tar of the {})",
            row.kind,
            row.tag(),
            row.kind
        ))
    })?;
    let Some(m) = info.manifest else { return Ok(()) };
    for (what, named, expected) in [("name", &m.name, &row.repository_name), ("version", &m.version, &row.version)] {
        if let Some(named) = named
            && named != expected
        {
            return Err(ApiError::bad_request(format!(
                "the archive's {manifest} names {what} {named:?}, but it was uploaded as {} {}; \
                 push it under the tag its {manifest} names",
                row.kind,
                row.tag()
            )));
        }
    }
    Ok(())
}

/// Before a version is pointed at an already stored blob with the same
/// digest, checks that the stored object really holds those bytes: a
/// recorded digest is trusted only together with the object it describes.
/// If the object is missing or altered, the blob is repaired to point at
/// the new upload's (just verified) bytes and the altered object is deleted.
async fn verify_dedup_target(state: &AppState, row: &VersionRow, upload: &UploadRow, w: &Written) -> ApiResult<()> {
    if row.upload_status == UploadStatus::Success && row.blob_digest.as_deref() == Some(w.sha256.as_str()) {
        return Ok(()); // the version already holds these bytes: nothing is newly trusted
    }
    let Some((key, _)) = state.store.blob_key(&w.sha256).await? else { return Ok(()) };
    if key == upload.storage_key {
        return Ok(());
    }
    let found = match state.blobs.hash(&key).await {
        Ok(found) if found.sha256 == w.sha256 && found.size == w.size => return Ok(()),
        Ok(found) => format!("{} bytes with sha256 {}", found.size, found.sha256),
        Err(yatai_blob::BlobError::NotFound(_)) => "nothing".to_owned(),
        Err(e) => return Err(e.into()),
    };
    tracing::error!(
        digest = %w.sha256, %key, %found,
        "a stored archive does not hold the bytes of its digest; repairing it with a verified upload"
    );
    if state.store.repoint_blob(&w.sha256, &key, &upload.storage_key, w.size as i64).await?
        && let Err(e) = state.blobs.delete(&key).await
    {
        tracing::warn!(error = %e, %key, "could not delete an altered archive; the stray sweep retries");
    }
    Ok(())
}

/// Records a failed upload and removes what it wrote.
async fn abandon(state: &AppState, caller: &Caller, row: &VersionRow, upload: Option<&UploadRow>, reason: &str) {
    if let Err(e) = state.store.fail_upload(&row.uid, upload.map(|u| u.uid.as_str()), reason).await {
        tracing::warn!(error = %e, "could not record a failed upload");
    }
    if let Some(u) = upload {
        janitor::discard_upload(state, u).await;
    }
    let info = json!({"reason": reason});
    let result = state
        .store
        .record_event(yatai_store::NewEvent {
            org_uid: &caller.org.uid,
            actor_uid: Some(&caller.user.uid),
            actor_name: &caller.user.name,
            api_token_name: &caller.token_name,
            operation: "pushed",
            resource_type: row.kind().as_str(),
            resource_name: &row.tag(),
            status: "failed",
            info: &info.to_string(),
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not record an event");
    }
}

async fn start_upload<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ArtifactSchema>> {
    let row = upload_target(&state, &caller, K::KIND, &name, &version).await?;
    state.store.mark_upload_started(&row).await?;
    Ok(response(&state, &reload(&state, &row).await?))
}

async fn upload<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ArtifactSchema>> {
    let row = upload_target(&state, &caller, K::KIND, &name, &version).await?;
    if row.is_uploaded() && row.replace_requested_at.is_none() {
        return Err(ApiError::conflict(format!(
            "{} {} is already uploaded; push with --force to replace it",
            row.kind,
            row.tag()
        )));
    }
    let limits = limits(&state, &headers)?;
    let guard = InProgress::acquire(&state, &row)?;
    tracing::debug!(version = %row.tag(), expected = ?limits.expected_len, "receiving a proxy upload");
    // Run the transfer in its own task: if the client disconnects and the
    // handler is dropped, the cleanup below still runs.
    let caller = caller.0.clone();
    let task = tokio::spawn(async move {
        let _guard = guard;
        receive_proxy_upload(&state, &caller, row, body, limits).await.map(|r| (state, r))
    });
    let (state, row) = task.await.map_err(|e| ApiError::internal(format!("upload task failed: {e}")))??;
    Ok(response(&state, &row))
}

async fn receive_proxy_upload(
    state: &AppState,
    caller: &Caller,
    row: VersionRow,
    body: Body,
    limits: WriteLimits,
) -> ApiResult<VersionRow> {
    if !row.is_uploaded() && row.upload_status != UploadStatus::Uploading {
        state.store.mark_upload_started(&row).await?;
    }
    let key = BlobStore::new_blob_key();
    let upload = state
        .store
        .create_upload(&row.uid, UploadMode::Proxy, &key, None, upload_expiry(state, state.config.upload_ttl))
        .await?;
    match state.blobs.write(&key, body.into_data_stream(), limits).await {
        Ok(w) => finish(state, caller, &row, &upload, &w).await,
        Err(e) => {
            let err = ApiError::from(e);
            abandon(state, caller, &row, Some(&upload), &err.message).await;
            Err(err)
        }
    }
}

async fn finish_upload<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
    JsonBody(body): JsonBody<FinishUploadRequest>,
) -> ApiResult<Json<ArtifactSchema>> {
    let row = upload_target(&state, &caller, K::KIND, &name, &version).await?;
    let current = state
        .store
        .current_upload(&row.uid, &[UploadMode::Presigned, UploadMode::Multipart, UploadMode::Proxy])
        .await?;
    match body.status.parse::<UploadStatus>() {
        Ok(UploadStatus::Success) => {
            let Some(upload) = current.filter(|u| u.mode != UploadMode::Proxy) else {
                if row.is_uploaded() {
                    return Ok(response(&state, &row)); // a proxy upload already finished it
                }
                return Err(ApiError::bad_request(format!(
                    "nothing was uploaded for {} {}: upload the archive before finishing",
                    row.kind,
                    row.tag()
                )));
            };
            let written = match (upload.state.parse::<UploadState>(), upload.mode.parse::<UploadMode>()) {
                (Ok(UploadState::Received), _) => Written {
                    size: upload.size_bytes.unwrap_or_default() as u64,
                    sha256: upload.digest.clone().unwrap_or_default(),
                },
                (Ok(UploadState::Open), Ok(UploadMode::Presigned)) if state.blobs.is_s3() => {
                    // In its own task, so that a client going away mid-copy
                    // does not leave the upload claimed.
                    let (task_state, caller, upload) = (state.clone(), caller.0.clone(), upload.clone());
                    let row =
                        tokio::spawn(async move { finish_presigned_s3(&task_state, &caller, &row, upload).await })
                            .await
                            .map_err(|e| ApiError::internal(format!("finishing task failed: {e}")))??;
                    return Ok(response(&state, &row));
                }
                (Ok(UploadState::Open), Ok(UploadMode::Multipart)) => {
                    return Err(ApiError::bad_request("call complete_multipart_upload before finishing the upload"));
                }
                (Ok(UploadState::Receiving), _) => {
                    return Err(ApiError::conflict(
                        "the archive is still being received; finish the upload after its transfer completed",
                    ));
                }
                _ => {
                    return Err(ApiError::bad_request("the upload to the presigned URL did not complete"));
                }
            };
            let row = finish(&state, &caller, &row, &upload, &written).await?;
            Ok(response(&state, &row))
        }
        Ok(UploadStatus::Failed) => {
            let reason = body.reason.unwrap_or_default();
            let reason = if reason.is_empty() { "the client reported a failed upload".to_owned() } else { reason };
            abandon(&state, &caller, &row, current.as_ref(), &reason).await;
            Ok(response(&state, &reload(&state, &row).await?))
        }
        _ => Err(ApiError::bad_request(format!(
            "status must be \"{}\" or \"{}\", not {:?}",
            UploadStatus::Success,
            UploadStatus::Failed,
            body.status
        ))),
    }
}

/// Finishes a single presigned PUT straight to S3. The presigned URL stays
/// valid until it expires, so its object may still be overwritten by anyone
/// holding it: the bytes are first copied to a fresh key no URL names, and
/// only that copy is hashed and becomes the blob.
async fn finish_presigned_s3(
    state: &AppState,
    caller: &Caller,
    row: &VersionRow,
    upload: UploadRow,
) -> ApiResult<VersionRow> {
    claim(state, &upload).await?;
    let _busy = InProgress::claim(state, &upload.uid, || "this upload is already being finished".to_owned())?;
    let key = BlobStore::new_blob_key();
    let expiry = upload_expiry(state, state.config.upload_ttl);
    let private = match state.store.create_upload(&row.uid, UploadMode::Presigned, &key, None, expiry).await {
        Ok(p) => p,
        Err(e) => {
            release(state, &upload).await;
            return Err(e.into());
        }
    };
    let _busy_private = InProgress::claim(state, &private.uid, String::new)?;
    if !state.store.claim_upload(&private.uid).await? {
        release(state, &upload).await;
        return Err(ApiError::conflict("the upload was cancelled while it was being finished"));
    }
    let copied = match state.blobs.copy(&upload.storage_key, &key).await {
        Ok(()) => state.blobs.hash(&key).await,
        Err(e) => Err(e),
    };
    let w = match copied {
        Ok(w) => w,
        Err(e) => {
            janitor::discard_upload(state, &private).await;
            release(state, &upload).await;
            return Err(match e {
                yatai_blob::BlobError::NotFound(_) => {
                    ApiError::bad_request("nothing arrived at the presigned URL; upload the archive first")
                }
                e => e.into(),
            });
        }
    };
    // The client-writable object is not needed any more.
    janitor::discard_upload(state, &upload).await;
    finish(state, caller, row, &private, &w).await
}

async fn presign_upload_url<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<ArtifactSchema>> {
    let row = upload_target(&state, &caller, K::KIND, &name, &version).await?;
    let ttl = state.config.presign_ttl;
    let key = BlobStore::new_blob_key();
    let upload =
        state.store.create_upload(&row.uid, UploadMode::Presigned, &key, None, upload_expiry(&state, ttl)).await?;
    let url = match state.blobs.presign_put(&key, ttl).await? {
        Some(url) => url.to_string(),
        None => {
            signed_url(&state, &base_url(&state, &headers)?, "PUT", &format!("/transfer/uploads/{}", upload.uid), ttl)
        }
    };
    let mut a = artifact(&state, &row);
    a.presigned_upload_url = url;
    Ok(Json(a))
}

async fn start_multipart_upload<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ArtifactSchema>> {
    let row = upload_target(&state, &caller, K::KIND, &name, &version).await?;
    let key = BlobStore::new_blob_key();
    let backend_id = state.blobs.create_multipart(&key).await?;
    let expiry = upload_expiry(&state, state.config.upload_ttl);
    state.store.create_upload(&row.uid, UploadMode::Multipart, &key, backend_id.as_deref(), expiry).await?;
    Ok(response(&state, &reload(&state, &row).await?))
}

/// The open multipart upload `upload_id` of this version.
async fn multipart_upload(state: &AppState, row: &VersionRow, upload_id: &str) -> ApiResult<UploadRow> {
    let upload = state
        .store
        .get_upload(upload_id)
        .await?
        .filter(|u| u.version_uid == row.uid && u.mode == UploadMode::Multipart)
        .ok_or_else(|| {
            ApiError::not_found(format!("no multipart upload {upload_id:?} for {} {}", row.kind, row.tag()))
        })?;
    if upload.state != UploadState::Open {
        return Err(ApiError::conflict(format!("multipart upload {upload_id:?} is already {}", upload.state)));
    }
    Ok(upload)
}

async fn presign_multipart_upload_url<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PresignPartRequest>,
) -> ApiResult<Json<ArtifactSchema>> {
    let row = upload_target(&state, &caller, K::KIND, &name, &version).await?;
    let Some(part) = part_number(body.part_number) else {
        return Err(ApiError::bad_request(format!("part_number must be between 1 and {MAX_PART_NUMBER}")));
    };
    let upload = multipart_upload(&state, &row, &body.upload_id).await?;
    let ttl = state.config.presign_ttl;
    let url = match upload.backend_upload_id.as_deref() {
        Some(backend_id) => state
            .blobs
            .presign_part(&upload.storage_key, backend_id, part, ttl)
            .await?
            .map(|u| u.to_string())
            .unwrap_or_default(),
        None => signed_url(
            &state,
            &base_url(&state, &headers)?,
            "PUT",
            &format!("/transfer/uploads/{}/parts/{part}", upload.uid),
            ttl,
        ),
    };
    let mut a = artifact(&state, &row);
    a.presigned_upload_url = url;
    a.upload_id = Some(upload.uid);
    Ok(Json(a))
}

fn unquote(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

async fn complete_multipart_upload<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
    JsonBody(body): JsonBody<CompleteMultipartRequest>,
) -> ApiResult<Json<ArtifactSchema>> {
    let row = upload_target(&state, &caller, K::KIND, &name, &version).await?;
    let upload = multipart_upload(&state, &row, &body.upload_id).await?;
    let numbers: Vec<i64> = body.parts.iter().map(|p| p.part_number).collect();
    check_completed_parts(&numbers).map_err(ApiError::bad_request)?;
    // One assembler per upload, and no part may still be arriving: what is
    // assembled is exactly the parts listed. In its own task, so that a
    // client going away does not leave the upload claimed.
    let busy = InProgress::claim(&state, &upload.uid, || "this upload is already being assembled".to_owned())?;
    tokio::spawn(assemble_claimed(state.clone(), upload, body, busy))
        .await
        .map_err(|e| ApiError::internal(format!("assembling task failed: {e}")))??;
    Ok(response(&state, &reload(&state, &row).await?))
}

/// Claims a multipart upload, assembles its parts and records the result;
/// gives the upload back on failure so that the client can retry.
async fn assemble_claimed(
    state: AppState,
    upload: UploadRow,
    body: CompleteMultipartRequest,
    _busy: InProgress,
) -> ApiResult<()> {
    claim(&state, &upload).await?;
    if parts_in_progress(&state, &upload.uid) {
        release(&state, &upload).await;
        return Err(ApiError::conflict("parts of this upload are still being received; complete it after they finish"));
    }
    let written = match assemble(&state, &upload, &body).await {
        Ok(w) => w,
        Err(e) => {
            release(&state, &upload).await;
            return Err(e);
        }
    };
    if !state.store.mark_upload_received(&upload.uid, &written.sha256, written.size as i64).await? {
        return Err(ApiError::conflict("the upload was cancelled while its parts were assembled"));
    }
    Ok(())
}

async fn assemble(state: &AppState, upload: &UploadRow, body: &CompleteMultipartRequest) -> ApiResult<Written> {
    let written = match upload.backend_upload_id.as_deref() {
        Some(backend_id) => {
            let etags = body.parts.iter().map(|p| p.etag.clone()).collect();
            state.blobs.complete_multipart(&upload.storage_key, backend_id, etags).await.map_err(|e| {
                ApiError::bad_request(format!(
                    "the parts could not be assembled (a part is missing or its ETag differs): {e}"
                ))
            })?;
            state.blobs.hash(&upload.storage_key).await?
        }
        None => {
            let received = state.store.list_parts(&upload.uid).await?;
            let mut keys = Vec::with_capacity(body.parts.len());
            for p in &body.parts {
                match received.iter().find(|(n, _, _)| *n == p.part_number) {
                    Some((_, etag, _)) if unquote(etag) == unquote(&p.etag) => {
                        keys.push(BlobStore::part_key(&upload.uid, p.part_number as u32));
                    }
                    Some(_) => {
                        return Err(ApiError::bad_request(format!(
                            "the ETag of part {} does not match what was uploaded",
                            p.part_number
                        )));
                    }
                    None => {
                        return Err(ApiError::bad_request(format!("part {} was never uploaded", p.part_number)));
                    }
                }
            }
            let w = state.blobs.concat(&keys, &upload.storage_key).await?;
            janitor::delete_parts(state, &upload.uid).await;
            w
        }
    };
    Ok(written)
}

async fn presign_download_url<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<ArtifactSchema>> {
    let row = find_version(&state, &caller, K::KIND, &name, &version).await?;
    let key = uploaded_archive(&state, &row).await?;
    let ttl = state.config.presign_ttl;
    let url = match state.blobs.presign_get(&key, ttl).await? {
        Some(url) => url.to_string(),
        None => {
            signed_url(&state, &base_url(&state, &headers)?, "GET", &format!("/transfer/archives/{}", row.uid), ttl)
        }
    };
    if strategy_for(&state, &row) != Some("proxy") {
        record(
            &state,
            &caller,
            "pulled",
            row.kind().as_str(),
            &row.tag(),
            json!({"mode": UploadMode::Presigned.as_str()}),
        )
        .await;
    }
    let mut a = artifact(&state, &row);
    a.presigned_download_url = url;
    Ok(Json(a))
}

/// The storage key of a version's archive, or a 404 saying why there is none.
async fn uploaded_archive(state: &AppState, row: &VersionRow) -> ApiResult<String> {
    let digest =
        row.blob_digest.as_deref().filter(|_| row.upload_status == UploadStatus::Success).ok_or_else(|| {
            ApiError::not_found(format!(
                "{} {} has no uploaded archive (upload status: {}); push it first",
                row.kind,
                row.tag(),
                row.upload_status
            ))
        })?;
    let (key, _) = state
        .store
        .blob_key(digest)
        .await?
        .ok_or_else(|| ApiError::internal(format!("blob {digest} of {} is not recorded", row.tag())))?;
    Ok(key)
}

/// Streams a version's archive through yatai (the API's download and the dashboard's).
pub async fn stream_archive(state: &AppState, row: &VersionRow) -> ApiResult<Response> {
    let key = uploaded_archive(state, row).await?;
    let reader = state.blobs.open(&key).await?;
    let filename = format!("{}-{}.tar", row.repository_name, row.version);
    let mut resp = Body::from_stream(reader.stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(reader.size));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(d) = &row.blob_digest
        && let Ok(v) = HeaderValue::from_str(&format!("\"sha256:{d}\""))
    {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

async fn download<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let row = find_version(&state, &caller, K::KIND, &name, &version).await?;
    let resp = stream_archive(&state, &row).await?;
    record(&state, &caller, "pulled", row.kind().as_str(), &row.tag(), json!({"mode": UploadMode::Proxy.as_str()}))
        .await;
    Ok(resp)
}

#[derive(Deserialize)]
struct Signature {
    expires: i64,
    signature: String,
}

async fn signed_put(
    State(state): State<AppState>,
    Path(upload_uid): Path<String>,
    Query(sig): Query<Signature>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let path = format!("/transfer/uploads/{upload_uid}");
    state.signer.verify("PUT", &path, sig.expires, &sig.signature)?;
    let upload = open_upload(&state, &upload_uid, UploadMode::Presigned).await?;
    let limits = limits(&state, &headers)?;
    // One writer per upload: a second PUT, concurrent or late, is refused
    // and can never replace the bytes the first one's digest describes.
    let busy = InProgress::claim(&state, &upload.uid, || {
        "another PUT to this URL is in progress; wait for it to finish".to_owned()
    })?;
    let w = tokio::spawn(receive_presigned(state.clone(), upload, body, limits, busy))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(etag_response(&w))
}

/// Claims a presigned upload for this PUT and streams its body into place;
/// gives the upload back if the transfer fails so that the client can retry.
async fn receive_presigned(
    state: AppState,
    upload: UploadRow,
    body: Body,
    limits: WriteLimits,
    _busy: InProgress,
) -> ApiResult<Written> {
    claim(&state, &upload).await?;
    tracing::debug!(upload = %upload.uid, expected = ?limits.expected_len, "receiving a presigned upload");
    match state.blobs.write(&upload.storage_key, body.into_data_stream(), limits).await {
        Ok(w) => {
            if state.store.mark_upload_received(&upload.uid, &w.sha256, w.size as i64).await? {
                Ok(w)
            } else {
                let _ = state.blobs.delete(&upload.storage_key).await;
                Err(ApiError::conflict("the upload was cancelled while its bytes arrived"))
            }
        }
        Err(e) => {
            release(&state, &upload).await;
            Err(e.into())
        }
    }
}

async fn signed_put_part(
    State(state): State<AppState>,
    Path((upload_uid, part)): Path<(String, i64)>,
    Query(sig): Query<Signature>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let path = format!("/transfer/uploads/{upload_uid}/parts/{part}");
    state.signer.verify("PUT", &path, sig.expires, &sig.signature)?;
    let Some(part_no) = part_number(part) else {
        return Err(ApiError::bad_request(format!("part number must be between 1 and {MAX_PART_NUMBER}")));
    };
    let upload = open_upload(&state, &upload_uid, UploadMode::Multipart).await?;
    let limits = limits(&state, &headers)?;
    // One writer per part; marked before the state is checked again, so that
    // complete_multipart_upload (which claims the upload, then looks for
    // parts in progress) and this PUT cannot both go ahead.
    let busy = InProgress::claim(&state, &part_in_progress(&upload.uid, part), || {
        format!("part {part} of this upload is already being received; wait for it to finish")
    })?;
    let upload = open_upload(&state, &upload_uid, UploadMode::Multipart).await?;
    tracing::debug!(upload = %upload.uid, part, expected = ?limits.expected_len, "receiving a part");
    let key = BlobStore::part_key(&upload.uid, part_no);
    let w = tokio::spawn(receive_part(state.clone(), upload, part, key, body, limits, busy))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(etag_response(&w))
}

/// Streams one part into place and records it, unless the upload stopped
/// being open meanwhile.
async fn receive_part(
    state: AppState,
    upload: UploadRow,
    part: i64,
    key: String,
    body: Body,
    limits: WriteLimits,
    _busy: InProgress,
) -> ApiResult<Written> {
    let w = state.blobs.write_part(&key, body.into_data_stream(), limits).await?;
    if open_upload(&state, &upload.uid, UploadMode::Multipart).await.is_err() {
        let _ = state.blobs.delete(&key).await;
        return Err(ApiError::conflict("the upload was completed or cancelled while this part arrived"));
    }
    let etag = format!("\"{}\"", &w.sha256[..32]);
    state.store.record_part(&upload.uid, part, &etag, w.size as i64).await?;
    Ok(w)
}

async fn open_upload(state: &AppState, uid: &str, mode: UploadMode) -> ApiResult<UploadRow> {
    let upload = state
        .store
        .get_upload(uid)
        .await?
        .filter(|u| u.mode == mode)
        .ok_or_else(|| ApiError::not_found("this upload no longer exists; ask the server for a new URL"))?;
    match upload.state.parse::<UploadState>() {
        Ok(UploadState::Open) => Ok(upload),
        Ok(UploadState::Receiving) => {
            Err(ApiError::conflict("another transfer of this upload is in progress; wait for it to finish"))
        }
        _ => Err(ApiError::conflict(format!("this upload is already {}; ask the server for a new URL", upload.state))),
    }
}

fn etag_response(w: &Written) -> Response {
    let etag = format!("\"{}\"", &w.sha256[..32]);
    let mut resp = StatusCode::OK.into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

async fn signed_get(
    State(state): State<AppState>,
    Path(version_uid): Path<String>,
    Query(sig): Query<Signature>,
) -> ApiResult<Response> {
    let path = format!("/transfer/archives/{version_uid}");
    state.signer.verify("GET", &path, sig.expires, &sig.signature)?;
    let row = state
        .store
        .get_version_by_uid(&version_uid)
        .await?
        .ok_or_else(|| ApiError::not_found("this version no longer exists"))?;
    stream_archive(&state, &row).await
}

/// Property tests of what a client says about its upload: part numbers, the parts a
/// completion lists, and sizes.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn number() -> impl Strategy<Value = i64> {
        // Numbers that a cast to u32 would wrap into the valid range, too.
        let wraps = (-3..4i64, prop::sample::select(vec![1i64 << 32, -(1i64 << 32), i64::MIN]))
            .prop_map(|(n, w)| n.wrapping_add(w));
        prop_oneof![-3..4i64, MAX_PART_NUMBER - 2..MAX_PART_NUMBER + 3, any::<i64>(), wraps]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn part_numbers_are_those_s3_accepts(n in number()) {
            match part_number(n) {
                Some(p) => {
                    prop_assert!((1..=MAX_PART_NUMBER).contains(&n));
                    prop_assert_eq!(p as i64, n);
                }
                None => prop_assert!(!(1..=MAX_PART_NUMBER).contains(&n)),
            }
        }

        #[test]
        fn a_completion_lists_valid_parts_once_each_in_order(parts in prop::collection::vec(number(), 0..8)) {
            let valid = !parts.is_empty()
                && parts.iter().all(|n| (1..=MAX_PART_NUMBER).contains(n))
                && parts.windows(2).all(|w| w[0] < w[1]);
            let result = check_completed_parts(&parts);
            prop_assert_eq!(result.is_ok(), valid, "{:?}", result);
            // At most as many parts as S3 assembles.
            prop_assert!(result.is_err() || parts.len() as i64 <= MAX_PART_NUMBER);
        }

        #[test]
        fn duplicated_or_reordered_parts_are_refused(mut parts in prop::collection::btree_set(1..=MAX_PART_NUMBER, 2..8).prop_map(Vec::from_iter), i in any::<prop::sample::Index>(), swap in any::<bool>()) {
            prop_assert!(check_completed_parts(&parts).is_ok());
            let i = i.index(parts.len() - 1);
            if swap { parts.swap(i, i + 1) } else { parts[i + 1] = parts[i] }
            prop_assert!(check_completed_parts(&parts).is_err());
        }

        #[test]
        fn an_upload_body_is_accepted_only_within_the_limit(
            expected in prop::option::of(prop_oneof![0..5u64, any::<u64>()]),
            chunked in any::<bool>(),
            max in prop::option::of(prop_oneof![0..5u64, any::<u64>()]),
        ) {
            let result = write_limits(expected, chunked, max);
            let announced = match expected { Some(n) => n > 0, None => chunked };
            let over = matches!((expected, max), (Some(n), Some(m)) if n > m);
            prop_assert_eq!(result.is_ok(), announced && !over);
            match result {
                Ok(l) => prop_assert_eq!((l.expected_len, l.max_len), (expected, max)),
                Err(e) if !announced => prop_assert_eq!(e.status, StatusCode::BAD_REQUEST),
                Err(e) => prop_assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE),
            }
        }

        #[test]
        fn an_archive_over_the_limit_is_refused_however_it_arrived(len in any::<u64>(), max in prop::option::of(any::<u64>())) {
            let result = check_archive_size(len, max);
            prop_assert_eq!(result.is_ok(), max.is_none_or(|m| len <= m));
            if let Err(e) = result {
                prop_assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
                prop_assert!(e.message.contains(&len.to_string()));
            }
        }
    }
}
