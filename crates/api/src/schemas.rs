//! Wire types. Field names, required keys and null rules follow what the
//! bentoml 1.4 client decodes (see docs/protocol-notes.md): every resource
//! has `uid`, `created_at`, `updated_at`, `deleted_at`, `name`,
//! `resource_type` and `labels` (a list, never null); strings are `""`
//! rather than null; timestamps are RFC 3339 UTC.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use yatai_core::Timestamp;
use yatai_store::{OrgRow, TokenRow, UserRow};

pub use yatai_app::labels::{Label, labels_from_json, labels_to_json};

pub fn ts(micros: i64) -> String {
    Timestamp(micros).to_rfc3339()
}

pub fn opt_ts(micros: Option<i64>) -> Option<String> {
    micros.map(ts)
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserSchema {
    pub uid: String,
    pub name: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub resource_type: &'static str,
    pub labels: Vec<Label>,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
    pub is_admin: bool,
}

impl From<&UserRow> for UserSchema {
    fn from(u: &UserRow) -> Self {
        UserSchema {
            uid: u.uid.clone(),
            name: u.name.clone(),
            email: u.email.clone(),
            first_name: u.first_name.clone(),
            last_name: u.last_name.clone(),
            resource_type: "user",
            labels: Vec::new(),
            created_at: ts(u.created_at),
            updated_at: opt_ts(u.updated_at),
            deleted_at: None,
            is_admin: u.is_admin != 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrganizationSchema {
    pub uid: String,
    pub name: String,
    pub description: String,
    pub resource_type: &'static str,
    pub labels: Vec<Label>,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
}

impl From<&OrgRow> for OrganizationSchema {
    fn from(o: &OrgRow) -> Self {
        OrganizationSchema {
            uid: o.uid.clone(),
            name: o.name.clone(),
            description: o.description.clone(),
            resource_type: "organization",
            labels: Vec::new(),
            created_at: ts(o.created_at),
            updated_at: opt_ts(o.updated_at),
            deleted_at: None,
        }
    }
}

/// A model or bento version (the client's `ModelSchema` / `BentoSchema`).
/// `name` equals `version`, as the client requires for bentos.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ArtifactSchema {
    pub uid: String,
    pub name: String,
    pub version: String,
    /// `model` or `bento`.
    pub resource_type: &'static str,
    pub labels: Vec<Label>,
    pub description: String,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
    pub build_at: Option<String>,
    /// `pending`, `uploading`, `success` or `failed`.
    pub upload_status: String,
    pub upload_finished_reason: String,
    pub upload_started_at: Option<String>,
    pub upload_finished_at: Option<String>,
    /// How the client should move bytes: `proxy` (through yatai),
    /// `presigned_url` (multipart with presigned parts), or null (ask
    /// `presign_upload_url` / `presign_download_url` for a single URL).
    pub transmission_strategy: Option<&'static str>,
    pub upload_id: Option<String>,
    pub presigned_upload_url: String,
    pub presigned_download_url: String,
    pub image_build_status: String,
    /// The manifest exactly as the client sent it: an object, or null for
    /// a bento created without one.
    #[schema(value_type = Option<Object>)]
    pub manifest: Box<RawValue>,
    /// Size of the stored archive in bytes, once uploaded.
    pub archive_size_bytes: Option<i64>,
    /// `sha256:<hex>` of the stored archive, once uploaded.
    pub archive_digest: Option<String>,
    pub creator: Option<CreatorSchema>,
    /// The repository, in lists across repositories and in deployment targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub repository: Option<Box<RepositorySchema>>,
}

/// Who created something, in brief.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatorSchema {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RepositorySchema {
    pub uid: String,
    pub name: String,
    /// `model_repository` or `bento_repository`.
    pub resource_type: &'static str,
    pub labels: Vec<Label>,
    pub description: String,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
    pub creator: Option<CreatorSchema>,
    pub version_count: i64,
    /// Present (possibly null) on model repositories.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub latest_model: Option<Option<Box<ArtifactSchema>>>,
    /// Present (possibly null) on bento repositories.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub latest_bento: Option<Option<Box<ArtifactSchema>>>,
}

macro_rules! list_schema {
    ($name:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $name {
            pub start: i64,
            pub count: i64,
            pub total: i64,
            pub items: Vec<$item>,
        }
    };
}

list_schema!(ArtifactList, ArtifactSchema, "A page of model or bento versions, newest first.");
list_schema!(RepositoryList, RepositorySchema, "A page of repositories, newest first.");
list_schema!(TokenList, TokenSchema, "A page of API tokens, newest first.");
list_schema!(EventList, EventSchema, "A page of events, newest first.");

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateRepositoryRequest {
    #[schema(pattern = "^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$", max_length = 63)]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub description: Option<String>,
    #[serde(default)]
    /// At most 64 labels.
    pub labels: Option<Vec<Label>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateRepositoryRequest {
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub description: Option<String>,
    #[serde(default)]
    /// At most 64 labels.
    pub labels: Option<Vec<Label>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateVersionRequest {
    /// Not `latest`, which names the newest version.
    #[schema(pattern = "^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$", max_length = 63)]
    pub version: String,
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub description: Option<String>,
    /// `model.yaml` / `bento.yaml` as JSON; stored verbatim. At most 1 MiB
    /// serialised; a bento's may be null.
    #[schema(value_type = Option<Object>)]
    #[serde(default)]
    pub manifest: Option<Box<RawValue>>,
    /// `%Y-%m-%d %H:%M:%S.%f` (UTC) as bentoml sends it, or RFC 3339.
    #[serde(default)]
    pub build_at: Option<String>,
    #[serde(default)]
    /// At most 64 labels.
    pub labels: Option<Vec<Label>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateVersionRequest {
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    #[serde(default)]
    pub manifest: Option<Box<RawValue>>,
    #[serde(default)]
    /// At most 64 labels.
    pub labels: Option<Vec<Label>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct FinishUploadRequest {
    /// `success` or `failed`.
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PresignPartRequest {
    pub upload_id: String,
    pub part_number: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletedPart {
    pub part_number: i64,
    pub etag: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CompleteMultipartRequest {
    pub upload_id: String,
    pub parts: Vec<CompletedPart>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateTokenRequest {
    #[schema(pattern = "\\S", min_length = 1, max_length = 128)]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub description: Option<String>,
    /// `api` (everything the user may do), `read_organization`,
    /// `write_organization`, `read_cluster`, `write_cluster`.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// When the token stops working; null for never.
    #[serde(default)]
    pub expired_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenSchema {
    pub uid: String,
    pub name: String,
    pub description: String,
    pub resource_type: &'static str,
    pub labels: Vec<Label>,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
    pub scopes: Vec<String>,
    pub user: UserSchema,
    pub organization: OrganizationSchema,
    pub expired_at: Option<String>,
    pub last_used_at: Option<String>,
    pub is_expired: bool,
    pub is_api_token: bool,
    pub is_organization_token: bool,
    pub is_global_access: bool,
    /// The first characters of the secret, to tell tokens apart.
    pub token_hint: String,
    /// The secret itself: only in the response that creates the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl TokenSchema {
    pub fn from_row(t: &TokenRow, user: UserSchema, org: OrganizationSchema, secret: Option<String>) -> Self {
        TokenSchema {
            uid: t.uid.clone(),
            name: t.name.clone(),
            description: t.description.clone(),
            resource_type: "api_token",
            labels: Vec::new(),
            created_at: ts(t.created_at),
            updated_at: None,
            deleted_at: None,
            scopes: t.scope_list(),
            user,
            organization: org,
            expired_at: opt_ts(t.expires_at),
            last_used_at: opt_ts(t.last_used_at),
            is_expired: t.is_expired(Timestamp::now()),
            is_api_token: true,
            is_organization_token: false,
            is_global_access: false,
            token_hint: t.token_hint.clone(),
            token: secret,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventSchema {
    pub uid: String,
    pub created_at: String,
    /// `created`, `pushed`, `pulled`, `deleted`, `updated`, `revoked`, …
    pub operation_name: String,
    pub resource_type: String,
    pub resource_name: String,
    /// `success` or `failed`.
    pub status: String,
    pub creator: Option<CreatorSchema>,
    pub api_token_name: String,
    /// Details of the operation, or null when it has none.
    #[schema(value_type = Option<Object>)]
    pub info: Box<RawValue>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthSchema {
    pub status: &'static str,
    pub version: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionInfoSchema {
    pub version: &'static str,
    pub git_commit: &'static str,
}
