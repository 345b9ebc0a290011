//! Model and bento repositories and versions: what `bentoml push` creates
//! before it uploads, what `bentoml pull` reads, what the dashboard lists.

use axum::Json;
use axum::extract::State;
use axum::routing::{delete, get, patch, post};
use serde_json::Value;
use yatai_core::Kind;
use yatai_core::limits::{self, LIST_BUDGET};
use yatai_core::manifest::bento_model_refs;
use yatai_core::{Tag, Timestamp, validate_new_version};
use yatai_store::{ListQuery, NewVersion, RepositoryRow, VersionPatch, VersionRow};

use super::artifacts::{
    ListParams, artifact, check_fields, check_repo_name, check_version_name, find_repository,
    find_repository_uncounted, find_version, record, repository, repository_with_latest,
};
use super::{Auth, KindParam};
use crate::auth::Permission;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Query};
use crate::openapi::{Api, Op};
use crate::schemas::{
    ArtifactList, ArtifactSchema, CreateRepositoryRequest, CreateVersionRequest, RepositoryList, RepositorySchema,
    UpdateRepositoryRequest, UpdateVersionRequest, labels_to_json,
};
use yatai_app::AppState;

const LIST_QUERIES: [(&str, &str); 4] = [
    ("start", "offset of the first item (default 0)"),
    ("count", "page size (default 20, at most 1000; a page of large items may hold fewer, see `count` in the reply)"),
    ("search", "text to look for in names and versions"),
    ("q", "filters: `label:key=value`, `label:key`, free words"),
];

pub fn routes<K: KindParam>(state: AppState) -> Api {
    let repos = format!("/api/v1/{}", K::REPOS);
    let repo = format!("{repos}/{{name}}");
    let versions = format!("{repo}/{}", K::VERSIONS);
    let version = format!("{versions}/{{version}}");
    let all = format!("/api/v1/{}", K::VERSIONS);
    let kind = K::KIND;
    let with_queries = |mut op: Op| {
        for (n, d) in LIST_QUERIES {
            op = op.query(n, d);
        }
        op
    };
    let mut api = Api::new(state)
        .route(
            with_queries(Op::get(&repos, format!("List {kind} repositories")))
                .tag(K::TAG)
                .perm(Permission::ReadRegistry)
                .ok::<RepositoryList>(),
            get(list_repositories::<K>),
        )
        .route(
            Op::post(&repos, format!("Create a {kind} repository (returns the existing one if the name is taken)"))
                .tag(K::TAG)
                .perm(Permission::WriteRegistry)
                .body::<CreateRepositoryRequest>()
                .ok::<RepositorySchema>(),
            post(create_repository::<K>),
        )
        .route(
            Op::get(&repo, format!("Get a {kind} repository with its newest version"))
                .tag(K::TAG)
                .perm(Permission::ReadRegistry)
                .ok::<RepositorySchema>()
                .errors(&[404]),
            get(get_repository::<K>),
        )
        .route(
            Op::patch(&repo, format!("Update a {kind} repository's description and labels"))
                .tag(K::TAG)
                .perm(Permission::WriteRegistry)
                .body::<UpdateRepositoryRequest>()
                .ok::<RepositorySchema>()
                .errors(&[404]),
            patch(update_repository::<K>),
        )
        .route(
            Op::delete(&repo, format!("Delete a {kind} repository and all its versions"))
                .tag(K::TAG)
                .perm(Permission::WriteRegistry)
                .ok::<RepositorySchema>()
                .errors(&[404, 409]),
            delete(delete_repository::<K>),
        )
        .route(
            with_queries(Op::get(&versions, format!("List a repository's {kind} versions, newest first")))
                .tag(K::TAG)
                .perm(Permission::ReadRegistry)
                .ok::<ArtifactList>()
                .errors(&[404]),
            get(list_versions::<K>),
        )
        .route(
            Op::post(&versions, format!("Create a {kind} version (returns the existing one if it exists)"))
                .tag(K::TAG)
                .perm(Permission::WriteRegistry)
                .body::<CreateVersionRequest>()
                .ok::<ArtifactSchema>()
                .errors(&[404, 413]),
            post(create_version::<K>),
        )
        .route(
            Op::get(&version, format!("Get a {kind} version (`latest`: the newest uploaded one)"))
                .tag(K::TAG)
                .perm(Permission::ReadRegistry)
                .ok::<ArtifactSchema>()
                .errors(&[404]),
            get(get_version::<K>),
        )
        .route(
            Op::patch(&version, format!("Update a {kind} version's description, manifest and labels"))
                .tag(K::TAG)
                .perm(Permission::WriteRegistry)
                .body::<UpdateVersionRequest>()
                .ok::<ArtifactSchema>()
                .errors(&[404, 413]),
            patch(update_version::<K>),
        )
        .route(
            Op::delete(&version, format!("Delete a {kind} version (refused while something uses it)"))
                .tag(K::TAG)
                .perm(Permission::WriteRegistry)
                .ok::<ArtifactSchema>()
                .errors(&[404, 409]),
            delete(delete_version::<K>),
        )
        .route(
            with_queries(Op::get(&all, format!("List {kind} versions across repositories, newest first")))
                .tag(K::TAG)
                .perm(Permission::ReadRegistry)
                .ok::<ArtifactList>(),
            get(list_all_versions::<K>),
        );
    api = match kind {
        Kind::Bento => api.route(
            Op::get(format!("{version}/models"), "The stored models a bento uses")
                .tag(K::TAG)
                .perm(Permission::ReadRegistry)
                .ok::<ArtifactList>()
                .errors(&[404]),
            get(bento_models),
        ),
        Kind::Model => api.route(
            Op::get(format!("{version}/bentos"), "The bentos that use a model")
                .tag(K::TAG)
                .perm(Permission::ReadRegistry)
                .ok::<ArtifactList>()
                .errors(&[404]),
            get(model_bentos),
        ),
    };
    api
}

async fn list_repositories<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<RepositoryList>> {
    let q = params.to_query()?;
    let mut budget = Budget::default();
    let mut items = Vec::new();
    let mut total = 0;
    while items.len() < q.count as usize && !budget.spent() {
        let chunk = ListQuery { start: q.start + items.len() as i64, count: chunk_size(&q, items.len()), ..q.clone() };
        let (rows, t) = state.store.list_repositories(&caller.org.uid, K::KIND, &chunk).await?;
        total = t;
        let fetched = rows.len();
        for r in &rows {
            let item = repository_with_latest(&state, r).await?;
            let latest = item.latest_model.iter().chain(&item.latest_bento).flatten();
            if !budget.take(repository_weight(r) + latest.map(|v| artifact_weight(v)).sum::<usize>(), items.len()) {
                break;
            }
            items.push(item);
        }
        if fetched < chunk.count as usize {
            break;
        }
    }
    Ok(Json(RepositoryList { start: q.start, count: items.len() as i64, total, items }))
}

async fn create_repository<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    crate::extract::Json(body): crate::extract::Json<CreateRepositoryRequest>,
) -> ApiResult<Json<RepositorySchema>> {
    check_repo_name(K::KIND, &body.name)?;
    check_fields(body.description.as_deref(), body.labels.as_deref())?;
    let (row, created) = state
        .store
        .create_repository(
            &caller.org.uid,
            K::KIND,
            &body.name,
            body.description.as_deref().unwrap_or(""),
            &caller.user.uid,
        )
        .await?;
    if let Some(labels) = &body.labels
        && created
    {
        state
            .store
            .update_repository(&caller.org.uid, K::KIND, &body.name, None, Some(&labels_to_json(labels)))
            .await?;
    }
    if created {
        record(&state, &caller, "created", K::KIND.repository_resource_type(), &body.name, Value::Null).await;
    }
    let row = state.store.get_repository(&caller.org.uid, K::KIND, &body.name).await?.unwrap_or(row);
    Ok(Json(repository_with_latest(&state, &row).await?))
}

async fn get_repository<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<RepositorySchema>> {
    let row = find_repository(&state, &caller, K::KIND, &name).await?;
    Ok(Json(repository_with_latest(&state, &row).await?))
}

async fn update_repository<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    crate::extract::Json(body): crate::extract::Json<UpdateRepositoryRequest>,
) -> ApiResult<Json<RepositorySchema>> {
    find_repository(&state, &caller, K::KIND, &name).await?;
    check_fields(body.description.as_deref(), body.labels.as_deref())?;
    let labels = body.labels.as_deref().map(labels_to_json);
    let row = state
        .store
        .update_repository(&caller.org.uid, K::KIND, &name, body.description.as_deref(), labels.as_deref())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{} repository {name:?} not found", K::KIND)))?;
    record(&state, &caller, "updated", K::KIND.repository_resource_type(), &name, Value::Null).await;
    Ok(Json(repository_with_latest(&state, &row).await?))
}

async fn delete_repository<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<RepositorySchema>> {
    let row = find_repository(&state, &caller, K::KIND, &name).await?;
    let response = repository(&row, None);
    let digests = state.store.delete_repository(&row).await?;
    yatai_app::janitor::collect_blobs(&state, &digests).await;
    record(
        &state,
        &caller,
        "deleted",
        K::KIND.repository_resource_type(),
        &name,
        serde_json::json!({"versions": row.version_count}),
    )
    .await;
    Ok(Json(response))
}

async fn list_versions<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<ArtifactList>> {
    find_repository_uncounted(&state, &caller, K::KIND, &name).await?;
    let q = params.to_query()?;
    let (rows, total) = list_versions_bounded(&state, &caller.org.uid, K::KIND, Some(&name), &q).await?;
    if total == 0 && q.search.is_none() && q.labels.is_empty() {
        // The Python client indexes items[0] of this list without checking
        // for emptiness; a 404 is what it handles.
        return Err(ApiError::not_found(format!("{} repository {name:?} has no versions", K::KIND)));
    }
    let items: Vec<_> = rows.iter().map(|r| artifact(&state, r)).collect();
    Ok(Json(ArtifactList { start: q.start, count: items.len() as i64, total, items }))
}

async fn list_all_versions<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<ArtifactList>> {
    let q = params.to_query()?;
    let (rows, total) = list_versions_bounded(&state, &caller.org.uid, K::KIND, None, &q).await?;
    let mut repo_uids: Vec<&str> = rows.iter().map(|r| r.repository_uid.as_str()).collect();
    repo_uids.sort_unstable();
    repo_uids.dedup();
    let repos = state.store.get_repositories_by_uid(&repo_uids).await?;
    let items = rows
        .iter()
        .map(|r| {
            let mut a = artifact(&state, r);
            a.repository = repos.iter().find(|p| p.uid == r.repository_uid).map(|p| Box::new(repository(p, None)));
            a
        })
        .collect::<Vec<_>>();
    Ok(Json(ArtifactList { start: q.start, count: items.len() as i64, total, items }))
}

/// Rows fetched per query while a list fills its page: small, so that the
/// rows held beyond the budget stay small too.
const CHUNK: i64 = 20;

fn chunk_size(q: &ListQuery, have: usize) -> i64 {
    (q.count - have as i64).clamp(0, CHUNK)
}

/// The bytes of stored text a list response may still carry (see
/// [`LIST_BUDGET`]). The first item is always taken, so paging on with
/// `start` makes progress whatever the items' sizes.
#[derive(Default)]
struct Budget(usize);

impl Budget {
    fn take(&mut self, weight: usize, have: usize) -> bool {
        if have > 0 && self.0 + weight > LIST_BUDGET {
            self.0 = LIST_BUDGET;
            return false;
        }
        self.0 += weight;
        true
    }
    fn spent(&self) -> bool {
        self.0 >= LIST_BUDGET
    }
}

/// What a version's stored text adds to a response, plus its fixed fields.
fn version_weight(r: &VersionRow) -> usize {
    r.manifest.len() + r.description.len() + r.labels.len() + 1024
}

fn artifact_weight(a: &ArtifactSchema) -> usize {
    a.manifest.get().len()
        + a.description.len()
        + a.labels.iter().map(|l| l.key.len() + l.value.len() + 32).sum::<usize>()
        + 1024
}

fn repository_weight(r: &RepositoryRow) -> usize {
    r.description.len() + r.labels.len() + 1024
}

/// A page of versions, newest first, fetched in chunks and cut short once
/// it holds [`LIST_BUDGET`] bytes, so that neither the rows read nor the
/// response grow past a known bound (each field has its own cap, see
/// `yatai_core::limits`).
async fn list_versions_bounded(
    state: &AppState,
    org_uid: &str,
    kind: Kind,
    repo: Option<&str>,
    q: &ListQuery,
) -> ApiResult<(Vec<VersionRow>, i64)> {
    let mut budget = Budget::default();
    let mut items = Vec::new();
    let mut total = 0;
    while items.len() < q.count as usize && !budget.spent() {
        let chunk = ListQuery { start: q.start + items.len() as i64, count: chunk_size(q, items.len()), ..q.clone() };
        let (rows, t) = state.store.list_versions(org_uid, kind, repo, &chunk).await?;
        total = t;
        let fetched = rows.len();
        for r in rows {
            if !budget.take(version_weight(&r), items.len()) {
                break;
            }
            items.push(r);
        }
        if fetched < chunk.count as usize {
            break;
        }
    }
    if q.count == 0 {
        total = state.store.list_versions(org_uid, kind, repo, q).await?.1;
    }
    Ok((items, total))
}

/// Checks a manifest as the client will decode it when it reads it back.
fn check_manifest(kind: Kind, manifest: Option<&serde_json::value::RawValue>) -> ApiResult<(String, Vec<Tag>)> {
    let raw = manifest.map(|m| m.get()).unwrap_or("null");
    limits::check_manifest(raw).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let value: Value = serde_json::from_str(raw).map_err(|e| ApiError::bad_request(format!("manifest: {e}")))?;
    match kind {
        Kind::Model => {
            let obj = value
                .as_object()
                .ok_or_else(|| ApiError::bad_request("a model needs a manifest object (model.yaml as JSON)"))?;
            for key in ["module", "api_version", "bentoml_version"] {
                if !obj.get(key).is_some_and(Value::is_string) {
                    return Err(ApiError::bad_request(format!("the model manifest needs a string {key:?}")));
                }
            }
            let size = obj
                .get("size_bytes")
                .ok_or_else(|| ApiError::bad_request("the model manifest needs \"size_bytes\""))?;
            limits::check_size_bytes(size).map_err(ApiError::bad_request)?;
            Ok((raw.to_owned(), Vec::new()))
        }
        Kind::Bento => {
            if value.is_null() {
                return Ok(("null".to_owned(), Vec::new()));
            }
            let obj = value.as_object().ok_or_else(|| {
                ApiError::bad_request("a bento manifest must be an object (bento.yaml as JSON) or null")
            })?;
            for key in ["service", "bentoml_version"] {
                if !obj.get(key).is_some_and(Value::is_string) {
                    return Err(ApiError::bad_request(format!("the bento manifest needs a string {key:?}")));
                }
            }
            let size = obj
                .get("size_bytes")
                .ok_or_else(|| ApiError::bad_request("the bento manifest needs \"size_bytes\""))?;
            limits::check_size_bytes(size).map_err(ApiError::bad_request)?;
            let refs = bento_model_refs(&value);
            Ok((raw.to_owned(), refs))
        }
    }
}

async fn create_version<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    crate::extract::Json(body): crate::extract::Json<CreateVersionRequest>,
) -> ApiResult<Json<ArtifactSchema>> {
    let repo = find_repository_uncounted(&state, &caller, K::KIND, &name).await?;
    check_version_name(K::KIND, &body.version)?;
    validate_new_version(K::KIND.version_label(), &body.version)?;
    check_fields(body.description.as_deref(), body.labels.as_deref())?;
    let (manifest, refs) = check_manifest(K::KIND, body.manifest.as_deref())?;
    let labels = body.labels.unwrap_or_default();
    let build_at = match body.build_at.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            Timestamp::parse_client(s)
                .ok_or_else(|| ApiError::bad_request(format!("build_at {s:?} is not a timestamp (use RFC 3339)")))?,
        ),
    };
    let (row, created) = state
        .store
        .create_version(
            &repo,
            NewVersion {
                version: &body.version,
                description: body.description.as_deref().unwrap_or(""),
                manifest: &manifest,
                labels: &labels_to_json(&labels),
                build_at,
                creator_uid: &caller.user.uid,
                model_refs: &refs,
            },
        )
        .await?;
    if created {
        record(&state, &caller, "created", K::KIND.as_str(), &row.tag(), Value::Null).await;
    }
    Ok(Json(artifact(&state, &row)))
}

async fn get_version<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ArtifactSchema>> {
    let row = find_version(&state, &caller, K::KIND, &name, &version).await?;
    Ok(Json(artifact(&state, &row)))
}

async fn update_version<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
    crate::extract::Json(body): crate::extract::Json<UpdateVersionRequest>,
) -> ApiResult<Json<ArtifactSchema>> {
    let row = find_version(&state, &caller, K::KIND, &name, &version).await?;
    check_fields(body.description.as_deref(), body.labels.as_deref())?;
    let manifest = match &body.manifest {
        Some(m) => Some(check_manifest(K::KIND, Some(m))?),
        None => None,
    };
    let labels = body.labels.as_deref().map(labels_to_json);
    let patch = VersionPatch {
        description: body.description.as_deref(),
        manifest: manifest.as_ref().map(|(m, _)| m.as_str()),
        labels: labels.as_deref(),
        model_refs: manifest.as_ref().filter(|_| K::KIND == Kind::Bento).map(|(_, r)| r.as_slice()),
    };
    let row = state.store.patch_version(&row, patch).await?;
    record(&state, &caller, "updated", K::KIND.as_str(), &row.tag(), Value::Null).await;
    Ok(Json(artifact(&state, &row)))
}

async fn delete_version<K: KindParam>(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ArtifactSchema>> {
    let row = find_version(&state, &caller, K::KIND, &name, &version).await?;
    if row.version != version {
        return Err(ApiError::bad_request("name the exact version to delete, not `latest`"));
    }
    let response = artifact(&state, &row);
    yatai_app::registry::delete_version(&state, &caller, &row).await?;
    Ok(Json(response))
}

async fn bento_models(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ArtifactList>> {
    let row = find_version(&state, &caller, Kind::Bento, &name, &version).await?;
    let models = state.store.bento_models(&row).await?;
    let items: Vec<_> = models.iter().filter_map(|(_, _, found)| found.as_ref()).map(|m| artifact(&state, m)).collect();
    let total = items.len() as i64;
    Ok(Json(ArtifactList { start: 0, count: total, total, items }))
}

async fn model_bentos(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ArtifactList>> {
    let row = find_version(&state, &caller, Kind::Model, &name, &version).await?;
    let mut items = Vec::new();
    for tag in state.store.model_referrers(&caller.org.uid, &row.repository_name, &row.version).await? {
        if let Some((repo, ver)) = tag.split_once(':')
            && let Some(b) = state.store.get_version(&caller.org.uid, Kind::Bento, repo, ver).await?
        {
            items.push(artifact(&state, &b));
        }
    }
    let total = items.len() as i64;
    Ok(Json(ArtifactList { start: 0, count: total, total, items }))
}
