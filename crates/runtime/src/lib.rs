//! Where deployments run.
//!
//! [`LocalRuntime`] is the [`DeployTarget`] for this machine: supervised
//! `bentoml serve` processes behind a built-in reverse proxy, with each
//! deployment reachable on a stable port of its own, and by host name on the
//! server's port (`<name>-<namespace>.<domain>`). Kubernetes clusters are
//! other implementations of the same trait (`yatai_core::deploy`).

pub mod archive;
pub mod isolation;
pub mod logs;
pub mod materialize;
pub mod metrics;
pub mod proxy;
pub mod pyenv;
pub mod replica;
mod secret_files;
mod supervisor;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use yatai_blob::BlobStore;
use yatai_core::deploy::{ClusterKind, InstanceType, LogSource};

use crate::isolation::IdRange;
use crate::logs::LogBook;
use crate::materialize::Materializer;
use crate::proxy::{AccessRule, Endpoint};
use crate::pyenv::EnvCache;
use crate::supervisor::{Command, Supervisor};

/// A refused archive is the caller's to fix; anything else may pass.
impl From<RuntimeError> for TargetError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::BadArchive(m) => TargetError::Refused(format!("refused {m}")),
            other => TargetError::Unavailable(other.to_string()),
        }
    }
}

/// The most replicas one deployment may run on this machine.
pub const MAX_REPLICAS: u32 = 64;

/// The one instance type of this machine.
pub const LOCAL_INSTANCE_TYPE: &str = "local";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("could not fetch {0}")]
    Fetch(String),
    #[error("refused {0}")]
    BadArchive(String),
    #[error("{0}")]
    Env(String),
    #[error("could not start a replica: {0}")]
    Launch(String),
    #[error("could not listen on {0}")]
    Listen(String),
}

pub use yatai_core::deploy::{
    ArtifactRef, DeployTarget, DeploymentSnapshot, DeploymentSpec, Metrics, Phase, ReplicaInfo, Scaling, StatusSink,
    TargetError,
};

/// Why a request to a deployment with access authorization was refused.
#[derive(Debug, Clone)]
pub struct AccessDenied {
    /// 401 (no or unknown token) or 403 (a token that may not call it).
    pub status: u16,
    pub message: String,
}

/// Checks the token of a request to a deployment that requires one. The
/// server provides it (tokens live in its store; the runtime does not
/// depend on the store).
#[async_trait::async_trait]
pub trait AccessVerifier: Send + Sync + 'static {
    /// `token`: the bearer token of the request, if any.
    async fn verify(&self, org_uid: &str, token: Option<&str>) -> Result<(), AccessDenied>;
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Runtime directory: extracted bentos and models, replica homes, logs, pid files.
    pub root: PathBuf,
    /// Python environments (shared by deployments with the same requirements).
    pub env_dir: PathBuf,
    /// The `uv` to use (default: from PATH, else pip).
    pub uv: Option<PathBuf>,
    /// Address deployment endpoints listen on.
    pub listen_host: IpAddr,
    pub stop_grace: Duration,
    pub drain_timeout: Duration,
    pub liveness_every: Duration,
    pub liveness_failures: u32,
    pub crash_loop_limit: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub log_max_bytes: u64,
    pub log_keep: usize,
    /// User ids replicas run as, one per deployment (needs root); `None`:
    /// replicas run as the server's user.
    pub replica_ids: Option<IdRange>,
    /// What each deployment's endpoint allows its clients (connections, timeouts).
    pub client_limits: yatai_http_server::Limits,
}

impl RuntimeConfig {
    pub fn new(root: PathBuf, env_dir: PathBuf) -> Self {
        RuntimeConfig {
            root,
            env_dir,
            uv: None,
            listen_host: IpAddr::from([127, 0, 0, 1]),
            stop_grace: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            liveness_every: Duration::from_secs(5),
            liveness_failures: 3,
            crash_loop_limit: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            log_max_bytes: 10 << 20,
            log_keep: 3,
            replica_ids: None,
            client_limits: yatai_http_server::Limits::default(),
        }
    }
}

pub(crate) struct Shared {
    pub config: RuntimeConfig,
    pub materializer: Materializer,
    pub envs: EnvCache,
    pub sink: Arc<dyn StatusSink>,
    pub verifier: OnceLock<Arc<dyn AccessVerifier>>,
    /// Replicas restarted since the server started, for the metrics.
    pub restarts: std::sync::atomic::AtomicU64,
}

struct Running {
    tx: mpsc::UnboundedSender<Command>,
    endpoint: Arc<Endpoint>,
    history: Arc<metrics::History>,
    logs: Arc<LogBook>,
    snapshot: Arc<Mutex<DeploymentSnapshot>>,
    stop_listener: watch::Sender<bool>,
    host: Option<String>,
}

/// The deploy target for this machine.
pub struct LocalRuntime {
    shared: Arc<Shared>,
    deployments: Mutex<HashMap<String, Running>>,
    /// The user id each deployment's replicas run as, held until it is removed.
    replica_ids: Mutex<HashMap<String, u32>>,
}

impl LocalRuntime {
    pub fn new(config: RuntimeConfig, blobs: BlobStore, sink: Arc<dyn StatusSink>) -> Arc<LocalRuntime> {
        let materializer = Materializer::new(config.root.join("artifacts"), blobs);
        let envs = EnvCache::new(config.env_dir.clone(), config.uv.clone(), config.replica_ids.is_some());
        Arc::new(LocalRuntime {
            shared: Arc::new(Shared {
                config,
                materializer,
                envs,
                sink,
                verifier: OnceLock::new(),
                restarts: Default::default(),
            }),
            deployments: Mutex::new(HashMap::new()),
            replica_ids: Mutex::new(HashMap::new()),
        })
    }

    /// Sets who checks tokens for deployments with access authorization
    /// (until it is set, such deployments refuse every request).
    pub fn set_access_verifier(&self, verifier: Arc<dyn AccessVerifier>) {
        let _ = self.shared.verifier.set(verifier);
    }

    /// Lays out the runtime and environment directories for replicas that
    /// run as other users: searchable but not listable (0711), with what
    /// replicas must never read (archives, logs, pid files) private to the
    /// server. Returns the paths replicas cannot reach because a directory
    /// above them is closed to others.
    pub fn prepare_dirs(&self) -> std::io::Result<Vec<PathBuf>> {
        let c = &self.shared.config;
        let open = if c.replica_ids.is_some() { 0o711 } else { 0o700 };
        isolation::dir_with_mode(&c.root, open)?;
        isolation::dir_with_mode(&c.env_dir, open)?;
        let artifacts = c.root.join("artifacts");
        isolation::dir_with_mode(&artifacts, open)?;
        // Replicas read bentos through `bentos/<key>` and models through
        // `models/<digest>`: unguessable names, and no listing.
        isolation::dir_with_mode(&artifacts.join("bentos"), open)?;
        isolation::dir_with_mode(&artifacts.join("models"), open)?;
        isolation::dir_with_mode(&artifacts.join("bento-archives"), 0o700)?;
        isolation::dir_with_mode(&c.root.join("deployments"), open)?;
        isolation::dir_with_mode(&c.root.join("pids"), 0o700)?;
        if c.replica_ids.is_none() {
            return Ok(Vec::new());
        }
        Ok([&c.root, &c.env_dir].into_iter().filter_map(|p| isolation::closed_ancestor(p)).collect())
    }

    /// The bento's own files (extracted once, read-only), e.g. for image builds.
    pub async fn bento_files(&self, bento: &ArtifactRef) -> Result<PathBuf, RuntimeError> {
        self.shared.materializer.bento_files(bento).await
    }

    /// A model's files (extracted once, read-only).
    pub async fn model_files(&self, model: &ArtifactRef) -> Result<PathBuf, RuntimeError> {
        self.shared.materializer.model_files(model).await
    }

    /// The endpoint that answers at host label `key`.
    pub fn endpoint_by_host_key(&self, key: &str) -> Option<Arc<Endpoint>> {
        self.deployments
            .lock()
            .expect("lock")
            .values()
            .find(|r| r.host.as_deref() == Some(key))
            .map(|r| r.endpoint.clone())
    }

    fn access_rule(&self, spec: &DeploymentSpec) -> Option<AccessRule> {
        spec.access_authorization
            .then(|| AccessRule { org_uid: spec.org_uid.clone(), verifier: self.shared.verifier.get().cloned() })
    }

    /// A user id for a deployment's replicas, if they run as their own user.
    fn replica_id(&self, deployment_uid: &str) -> Result<Option<u32>, RuntimeError> {
        let Some(range) = self.shared.config.replica_ids else { return Ok(None) };
        let mut ids = self.replica_ids.lock().expect("lock");
        if let Some(id) = ids.get(deployment_uid) {
            return Ok(Some(*id));
        }
        let taken: HashSet<u32> = ids.values().copied().collect();
        let id = range.pick(deployment_uid, &taken).ok_or_else(|| {
            RuntimeError::Launch(format!(
                "no free user id left in {}-{} for the replicas (--replica-uids)",
                range.first, range.last
            ))
        })?;
        ids.insert(deployment_uid.to_owned(), id);
        Ok(Some(id))
    }

    fn logs(&self, uid: &str) -> Option<Arc<LogBook>> {
        self.deployments.lock().expect("lock").get(uid).map(|r| r.logs.clone())
    }

    /// Opens the log of a deployment that is not running (for reading).
    fn open_logs(&self, uid: &str) -> Option<Arc<LogBook>> {
        self.logs(uid).or_else(|| {
            let dir = self.shared.config.root.join("deployments").join(uid).join("logs");
            dir.exists()
                .then(|| LogBook::open(&dir, self.shared.config.log_max_bytes, self.shared.config.log_keep).ok())
                .flatten()
        })
    }

    async fn start(&self, spec: &DeploymentSpec) -> Result<(), RuntimeError> {
        let run_as = self.replica_id(&spec.uid)?;
        let endpoint = Endpoint::new(&spec.name);
        endpoint.set_access(self.access_rule(spec));
        let mut port = spec.port;
        let listener = match tokio::net::TcpListener::bind(SocketAddr::new(self.shared.config.listen_host, port)).await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(deployment = %spec.name, port, error = %e, "the endpoint port is taken; moving to another");
                let l = tokio::net::TcpListener::bind(SocketAddr::new(self.shared.config.listen_host, 0))
                    .await
                    .map_err(|e| RuntimeError::Listen(e.to_string()))?;
                port = l.local_addr().map_err(|e| RuntimeError::Listen(e.to_string()))?.port();
                self.shared.sink.port_changed(&spec.uid, port);
                l
            }
        };
        let deployment_dir = self.shared.config.root.join("deployments").join(&spec.uid);
        let open = if run_as.is_some() { 0o711 } else { 0o700 };
        for (dir, mode) in [(deployment_dir.clone(), open), (deployment_dir.join("replicas"), open)] {
            isolation::dir_with_mode(&dir, mode)
                .map_err(|e| RuntimeError::Launch(format!("{}: {e}", dir.display())))?;
        }
        let log_dir = deployment_dir.join("logs");
        isolation::dir_with_mode(&log_dir, 0o700)
            .map_err(|e| RuntimeError::Launch(format!("log directory {}: {e}", log_dir.display())))?;
        let logs = LogBook::open(&log_dir, self.shared.config.log_max_bytes, self.shared.config.log_keep)
            .map_err(|e| RuntimeError::Launch(format!("log directory: {e}")))?;
        let snapshot = Arc::new(Mutex::new(DeploymentSnapshot {
            phase: Phase::Deploying,
            reason: String::new(),
            revision_uid: None,
            updating_to: None,
            desired_replicas: 0,
            inflight: 0,
            replicas: Vec::new(),
            port,
            env_cached: None,
        }));
        let (stop_listener, stop_rx) = watch::channel(false);
        tokio::spawn(proxy::serve(endpoint.clone(), listener, self.shared.config.client_limits, stop_rx));
        let history = Arc::new(metrics::History::default());
        tokio::spawn(metrics::sample_forever(endpoint.clone(), history.clone()));
        let (tx, rx) = mpsc::unbounded_channel();
        let sup = Supervisor::new(
            self.shared.clone(),
            &spec.uid,
            &spec.name,
            run_as,
            endpoint.clone(),
            logs.clone(),
            snapshot.clone(),
        );
        tokio::spawn(sup.run(rx));
        self.deployments.lock().expect("lock").insert(
            spec.uid.clone(),
            Running { tx, endpoint, history, logs, snapshot, stop_listener, host: spec.host.clone() },
        );
        Ok(())
    }

    /// Stops every deployment's replicas (graceful server shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<Running> = self.deployments.lock().expect("lock").drain().map(|(_, r)| r).collect();
        let mut waits = Vec::new();
        for r in all {
            let (done, wait) = oneshot::channel();
            if r.tx.send(Command::Shutdown(done)).is_ok() {
                waits.push(wait);
            }
            let _ = r.stop_listener.send(true);
        }
        for w in waits {
            let _ = w.await;
        }
    }
}

#[async_trait::async_trait]
impl DeployTarget for LocalRuntime {
    fn kind(&self) -> ClusterKind {
        ClusterKind::Local
    }

    fn replica_restarts(&self) -> u64 {
        self.shared.restarts.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn max_replicas(&self) -> u32 {
        MAX_REPLICAS
    }

    fn instance_types(&self) -> Vec<InstanceType> {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        vec![InstanceType::new(
            LOCAL_INSTANCE_TYPE,
            "Replicas run as processes on the yatai server's machine",
            &cpus.to_string(),
            "",
        )]
    }

    async fn check(&self, bento: &ArtifactRef) -> Result<(), TargetError> {
        self.shared.materializer.bento_files(bento).await.map(|_| ()).map_err(TargetError::from)
    }

    fn allocate_port(&self, in_use: &[i64]) -> Result<Option<u16>, TargetError> {
        for _ in 0..100 {
            let l = std::net::TcpListener::bind((self.shared.config.listen_host, 0))
                .map_err(|e| TargetError::Unavailable(format!("could not listen: {e}")))?;
            let port = l.local_addr().map_err(|e| TargetError::Unavailable(format!("could not listen: {e}")))?.port();
            if !in_use.contains(&i64::from(port)) {
                return Ok(Some(port));
            }
        }
        Err(TargetError::Unavailable("no free port for the deployment's endpoint".into()))
    }

    async fn apply(&self, mut spec: DeploymentSpec) -> Result<(), TargetError> {
        let known = self.deployments.lock().expect("lock").contains_key(&spec.uid);
        if !known {
            self.start(&spec).await.map_err(|e| TargetError::Unavailable(e.to_string()))?;
        }
        let guard = self.deployments.lock().expect("lock");
        let r = guard.get(&spec.uid).expect("just started");
        // A change of access authorization applies at once, not when the
        // new revision's replicas are ready.
        r.endpoint.set_access(self.access_rule(&spec));
        spec.port = r.snapshot.lock().expect("lock").port;
        let _ = r.tx.send(Command::Apply(Box::new(spec)));
        Ok(())
    }

    async fn terminate(&self, uid: &str) {
        if let Some(r) = self.deployments.lock().expect("lock").get(uid) {
            let _ = r.tx.send(Command::Terminate);
        }
    }

    async fn remove(&self, uid: &str) {
        let r = self.deployments.lock().expect("lock").remove(uid);
        if let Some(r) = r {
            let (done, wait) = oneshot::channel();
            if r.tx.send(Command::Shutdown(done)).is_ok() {
                let _ = wait.await;
            }
            let _ = r.stop_listener.send(true);
        }
        let _ = tokio::fs::remove_dir_all(self.shared.config.root.join("deployments").join(uid)).await;
        self.replica_ids.lock().expect("lock").remove(uid);
    }

    fn status(&self, uid: &str) -> Option<DeploymentSnapshot> {
        self.deployments.lock().expect("lock").get(uid).map(|r| r.snapshot.lock().expect("lock").clone())
    }

    fn logs(&self, uid: &str) -> Option<Arc<dyn LogSource>> {
        self.open_logs(uid).map(|b| b as Arc<dyn LogSource>)
    }

    fn metrics(&self, uid: &str) -> Option<Metrics> {
        let (history, endpoint) = {
            let guard = self.deployments.lock().expect("lock");
            let r = guard.get(uid)?;
            (r.history.clone(), r.endpoint.clone())
        };
        Some(Metrics {
            samples: history.samples(),
            inflight: endpoint.inflight(),
            replica_requests: history.replica_requests.lock().expect("lock").clone(),
        })
    }

    async fn recover(&self) -> usize {
        let stopped = replica::stop_orphans(&self.shared.config.root.join("pids"), self.shared.config.stop_grace).await;
        // The homes of replicas a crashed server left behind hold their
        // mounted secrets in clear: nothing runs now, so they all go.
        if let Ok(mut entries) = tokio::fs::read_dir(self.shared.config.root.join("deployments")).await {
            while let Ok(Some(e)) = entries.next_entry().await {
                let _ = tokio::fs::remove_dir_all(e.path().join("replicas")).await;
            }
        }
        stopped
    }

    async fn shutdown(&self) {
        LocalRuntime::shutdown(self).await
    }

    fn describe(&self) -> String {
        format!("{} (Python environments in {})", self.shared.config.root.display(), self.shared.envs.describe())
    }
}
