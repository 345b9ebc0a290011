//! What every use case can reach: the stores, the authenticator, the URL
//! signer, the configuration and the deploy targets.

use std::collections::HashSet;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use yatai_blob::BlobStore;
use yatai_store::Store;

use crate::auth::Authenticator;
use crate::signing::UrlSigner;
use crate::targets::Targets;

/// How clients are told to move bytes (the server decides, the client follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmissionMode {
    /// Proxy through yatai for the local store; with S3, a presigned single
    /// PUT/GET below the multipart threshold and multipart above it.
    Auto,
    /// Always through yatai.
    Proxy,
    /// One presigned PUT / GET per archive.
    Presigned,
    /// Multipart with presigned parts (100 MiB each, chosen by the client).
    Multipart,
}

impl FromStr for TransmissionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TransmissionMode::Auto),
            "proxy" => Ok(TransmissionMode::Proxy),
            "presigned" | "presigned_url" => Ok(TransmissionMode::Presigned),
            "multipart" => Ok(TransmissionMode::Multipart),
            other => Err(format!("unknown transmission strategy {other:?}: use auto, proxy, presigned or multipart")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub transmission: TransmissionMode,
    /// The URL clients reach this server at, for presigned URLs that yatai
    /// serves itself. When unset, it is taken from each request's Host.
    pub external_url: Option<url::Url>,
    pub max_json_body: usize,
    pub max_artifact_size: Option<u64>,
    pub presign_ttl: Duration,
    /// With `auto` and S3: archives at least this large go multipart.
    pub multipart_threshold: u64,
    /// How long an upload may stay unfinished before it is cleaned up.
    pub upload_ttl: Duration,
    /// How long the audit events are kept (`None`: for ever).
    pub event_retention: Option<Duration>,
    /// With a domain (e.g. `127.0.0.1.sslip.io`), deployments are also
    /// reachable on the main port as `<name>-<namespace>.<domain>`, and that
    /// is the URL they report.
    pub deployment_domain: Option<String>,
    /// How long a replica may take to become ready, unless the deployment says.
    pub cold_start_timeout: Duration,
    /// Where and how the server builds images of bentos (none: builds are off).
    pub image_builds: Option<crate::images::ImageBuildSettings>,
    /// `GET /metrics` needs `Authorization: Bearer <this>` (none: open).
    pub metrics_token: Option<String>,
    /// The longest an API request may take to its response's head (archive uploads and
    /// transfers excepted): past it, the client gets a 503 and whatever the request waited on
    /// (a database that stopped answering) is let go. `None`: no limit.
    pub request_timeout: Option<Duration>,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            transmission: TransmissionMode::Auto,
            external_url: None,
            max_json_body: yatai_core::limits::DEFAULT_MAX_JSON_BODY,
            max_artifact_size: None,
            presign_ttl: Duration::from_secs(3600),
            multipart_threshold: 64 << 20,
            upload_ttl: Duration::from_secs(24 * 3600),
            event_retention: None,
            deployment_domain: None,
            cold_start_timeout: Duration::from_secs(300),
            image_builds: None,
            metrics_token: None,
            request_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// Counts of what the server's background work did, for its metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub janitor_runs: std::sync::atomic::AtomicU64,
    /// Uploads, archives and temporary files the janitor removed.
    pub janitor_removed: std::sync::atomic::AtomicU64,
}

pub struct Inner {
    pub store: Store,
    pub blobs: BlobStore,
    pub auth: Authenticator,
    pub signer: UrlSigner,
    pub config: AppConfig,
    /// Versions receiving a proxy upload right now, to refuse a second one.
    pub uploads_in_progress: Mutex<HashSet<String>>,
    /// Where each cluster's deployments run (none in admin commands).
    pub targets: Targets,
    /// The extracted files of archives, for image builds (none: builds are off).
    pub files: Option<Arc<dyn crate::images::ArtifactFiles>>,
    /// What background work did, for the metrics.
    pub counters: Counters,
    /// Seals clusters' credentials (set by the server and the admin commands).
    cluster_key: OnceLock<crate::clusters::ClusterKey>,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// A state with no deploy targets (admin commands, tests of the registry).
    pub fn new(store: Store, blobs: BlobStore, signing_key: &[u8], config: AppConfig) -> Self {
        Self::with_targets(store, blobs, signing_key, config, Targets::default(), None)
    }

    pub fn with_targets(
        store: Store,
        blobs: BlobStore,
        signing_key: &[u8],
        config: AppConfig,
        targets: Targets,
        files: Option<Arc<dyn crate::images::ArtifactFiles>>,
    ) -> Self {
        AppState(Arc::new(Inner {
            targets,
            files,
            auth: Authenticator::new(store.clone()),
            store,
            blobs,
            signer: UrlSigner::new(signing_key),
            config,
            uploads_in_progress: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            cluster_key: OnceLock::new(),
        }))
    }

    /// The key clusters' credentials are sealed with (set once).
    pub fn set_cluster_key(&self, key: crate::clusters::ClusterKey) {
        let _ = self.cluster_key.set(key);
    }

    pub fn cluster_key(&self) -> crate::error::AppResult<&crate::clusters::ClusterKey> {
        self.cluster_key.get().ok_or_else(|| crate::error::AppError::internal("no cluster key was loaded"))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
