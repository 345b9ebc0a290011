//! Clusters: registering, changing and removing Kubernetes clusters, and
//! what each one has (its health). Only an organization's admins change
//! them. A cluster is refused at the moment the user registers it when it
//! cannot work (unreachable, CRDs missing, RBAC lacking), rather than
//! leaving deployments stuck later.
//!
//! How yatai reaches a cluster ([`KubeClusterConfig`], kubeconfig included)
//! is sealed with XChaCha20-Poly1305 under a key kept in a file outside the
//! database ([`ClusterKey`]); the cluster's uid is the associated data, so a
//! sealed blob copied to another cluster's row does not open.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::Rng;
use serde::{Deserialize, Serialize};
use yatai_core::deploy::{ClusterHealth, ClusterKind, DeployTarget, KubeClusterConfig, StatusSink};
use yatai_store::{ClusterPatch, ClusterRow, NewCluster};

use crate::auth::{Caller, Permission};
use crate::deployments::{DbStatusSink, LOCAL_CLUSTER};
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// The largest kubeconfig accepted (real ones are a few KiB).
pub const MAX_KUBECONFIG: usize = 1 << 20;
const SEALED_PREFIX: &str = "xc20p1:";
/// How long registering waits for the cluster to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a page listing clusters waits for each one's health.
const LIST_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const NO_KUBERNETES: &str = "this server was built without Kubernetes support, so it cannot reach a Kubernetes \
     cluster; run a yatai built with it (the release binaries and image are)";

/// The key, kept in a file outside the database, that seals clusters'
/// credentials and secrets' values.
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ClusterKey(bytes)
    }

    /// Reads the key from `path` (hex), creating it (readable only by the
    /// server) when it does not exist yet.
    pub fn load_or_create(path: &Path) -> anyhow::Result<ClusterKey> {
        use anyhow::Context;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut fresh = [0u8; 32];
                rand::rng().fill_bytes(&mut fresh);
                write_private(path, hex::encode(fresh).as_bytes())
                    .with_context(|| format!("cannot write the cluster key to {}", path.display()))?;
                return Ok(ClusterKey(fresh));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read the cluster key {}", path.display())),
        };
        let bytes = hex::decode(text.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
            anyhow::anyhow!("the cluster key in {} is corrupt (it must be 32 bytes, hex-encoded)", path.display())
        })?;
        Ok(ClusterKey(bytes))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new_from_slice(&self.0).expect("32-byte key")
    }

    /// `plain`, sealed for the row with uid `aad` (a cluster's credentials,
    /// a secret's values): what is sealed for one row does not open for another.
    pub fn seal_bytes(&self, aad: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: plain, aad: aad.as_bytes() })
            .expect("encryption does not fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Opens what [`ClusterKey::seal_bytes`] sealed for the same row; `None`:
    /// another key, another row, or altered.
    pub fn open_bytes(&self, aad: &str, sealed: &str) -> Option<Vec<u8>> {
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|b| b.len() > 24)?;
        let (nonce, body) = bytes.split_at(24);
        let nonce = XNonce::try_from(nonce).ok()?;
        self.cipher().decrypt(&nonce, Payload { msg: body, aad: aad.as_bytes() }).ok()
    }

    /// `config`, sealed for the cluster with uid `cluster_uid`.
    pub fn seal(&self, cluster_uid: &str, config: &KubeClusterConfig) -> String {
        self.seal_bytes(cluster_uid, &serde_json::to_vec(config).expect("serializable"))
    }

    /// Opens what [`ClusterKey::seal`] sealed for the same cluster.
    pub fn open(&self, cluster_uid: &str, sealed: &str) -> Result<KubeClusterConfig, String> {
        let bad = || {
            "the cluster's stored credentials cannot be opened: the cluster key (--cluster-key-file, by default \
             DATA_DIR/secrets/cluster.key) is not the one they were sealed with (a database restored from a backup \
             taken without --include-keys needs the original cluster.key back), or they were altered; register the \
             cluster's kubeconfig again"
                .to_owned()
        };
        let plain = self.open_bytes(cluster_uid, sealed).ok_or_else(bad)?;
        serde_json::from_slice(&plain).map_err(|_| bad())
    }
}

/// Writes `bytes` to a new file readable only by the server (in a directory
/// only it can enter), atomically: the cluster key here, the URL-signing key
/// in `yatai serve`.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The settings of a cluster that are not secret, stored in clear (the
/// `config` column) and shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterSettings {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub in_cluster: bool,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub image_registry: Option<String>,
    #[serde(default)]
    pub domain_suffix: Option<String>,
    /// Where the operator runs (its Lease, its `network` ConfigMap); unset: found.
    #[serde(default)]
    pub operator_namespace: Option<String>,
}

impl ClusterSettings {
    fn of(c: &KubeClusterConfig) -> Self {
        ClusterSettings {
            namespace: c.namespace.clone(),
            in_cluster: c.kubeconfig.is_none(),
            context: c.context.clone(),
            image_registry: c.image_registry.clone(),
            domain_suffix: c.domain_suffix.clone(),
            operator_namespace: c.operator_namespace.clone(),
        }
    }
}

/// A cluster to register.
#[derive(Debug, Clone, Default)]
pub struct NewClusterInput {
    pub name: String,
    pub description: String,
    /// The kubeconfig's text; none with `in_cluster`.
    pub kubeconfig: Option<String>,
    /// Use the server's own service account.
    pub in_cluster: bool,
    pub context: Option<String>,
    /// Default: `yatai`.
    pub namespace: Option<String>,
    pub image_registry: Option<String>,
    pub domain_suffix: Option<String>,
    /// The operator's namespace; default: found by its Lease.
    pub operator_namespace: Option<String>,
}

/// What changes in a cluster: `None` keeps the value; an empty string
/// clears an optional setting.
#[derive(Debug, Clone, Default)]
pub struct ClusterChange {
    pub description: Option<String>,
    pub kubeconfig: Option<String>,
    pub in_cluster: Option<bool>,
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub image_registry: Option<String>,
    pub domain_suffix: Option<String>,
    pub operator_namespace: Option<String>,
}

impl ClusterChange {
    fn touches_connection(&self) -> bool {
        self.kubeconfig.is_some()
            || self.in_cluster.is_some()
            || self.context.is_some()
            || self.namespace.is_some()
            || self.image_registry.is_some()
            || self.domain_suffix.is_some()
            || self.operator_namespace.is_some()
    }
}

/// A cluster as shown: never its credentials.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub row: ClusterRow,
    /// Kubernetes clusters: the settings that are not secret.
    pub settings: Option<ClusterSettings>,
    /// Kubernetes clusters, when asked for: what the cluster has now.
    pub health: Option<ClusterHealth>,
}

fn check_cluster_name(name: &str) -> AppResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(AppError::invalid_field(
            "name",
            format!(
                "cluster name {:?} is not valid: use 1 to 63 lowercase letters, digits and '-', starting with a \
                 letter and not ending with '-'",
                name.chars().take(70).collect::<String>()
            ),
        ));
    }
    if name == LOCAL_CLUSTER {
        return Err(AppError::invalid_field("name", "the name \"local\" is this machine's cluster: pick another"));
    }
    // The dashboard's page for registering a cluster is /clusters/new.
    if name == "new" {
        return Err(AppError::invalid_field("name", "the name \"new\" is reserved by the dashboard: pick another"));
    }
    Ok(())
}

fn opt(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Checks a configuration before anything reaches the cluster.
fn check_config(c: &KubeClusterConfig) -> AppResult<()> {
    if let Some(k) = &c.kubeconfig {
        if k.len() > MAX_KUBECONFIG {
            return Err(AppError::too_large(format!(
                "the kubeconfig is {} bytes; at most {MAX_KUBECONFIG} are accepted (a kubeconfig is a few KiB: \
                 export only this cluster's context with `kubectl config view --minify --flatten`)",
                k.len()
            )));
        }
        if k.trim().is_empty() || k.contains('\0') {
            return Err(AppError::invalid_field(
                "kube_config",
                "the kubeconfig is empty or not text: give the file's content, or choose in-cluster",
            ));
        }
    }
    yatai_core::deploy::check_namespace(&c.namespace).map_err(|m| AppError::invalid_field("namespace", m))?;
    if let Some(ns) = &c.operator_namespace {
        yatai_core::deploy::check_namespace(ns).map_err(|m| AppError::invalid_field("operator_namespace", m))?;
    }
    if let Some(ctx) = &c.context
        && (ctx.len() > 253 || ctx.chars().any(char::is_control))
    {
        return Err(AppError::invalid_field("context", "the context name is not valid"));
    }
    if let Some(r) = &c.image_registry
        && (r.len() > 512 || r.contains("://") || r.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(AppError::invalid_field(
            "image_registry",
            format!("image registry {r:?} is not valid: give HOST[:PORT]/REPOSITORY, without a scheme"),
        ));
    }
    if let Some(d) = &c.domain_suffix {
        let ok = d.len() <= 253
            && !d.starts_with(['.', '-'])
            && !d.ends_with(['.', '-'])
            && d.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !ok {
            return Err(AppError::invalid_field(
                "domain_suffix",
                format!("domain suffix {d:?} is not valid: lowercase letters, digits, '-' and '.'"),
            ));
        }
    }
    Ok(())
}

fn config_of(input: &NewClusterInput) -> AppResult<KubeClusterConfig> {
    let kubeconfig = input.kubeconfig.clone().filter(|k| !k.trim().is_empty());
    match (&kubeconfig, input.in_cluster) {
        (Some(_), true) => {
            return Err(AppError::invalid_field(
                "kube_config",
                "give either a kubeconfig or in-cluster (the server's service account), not both",
            ));
        }
        (None, false) => {
            // An oversize or empty text is its own error.
            if let Some(k) = &input.kubeconfig
                && k.len() > MAX_KUBECONFIG
            {
                check_config(&KubeClusterConfig { kubeconfig: Some(k.clone()), ..Default::default() })?;
            }
            return Err(AppError::invalid_field(
                "kube_config",
                "give the cluster's kubeconfig (the text of the file), or choose in-cluster when yatai runs in \
                 that cluster",
            ));
        }
        _ => {}
    }
    let config = KubeClusterConfig {
        kubeconfig,
        context: opt(input.context.clone()),
        namespace: opt(input.namespace.clone()).unwrap_or_else(|| yatai_core::deploy::DEFAULT_NAMESPACE.to_owned()),
        image_registry: opt(input.image_registry.clone()),
        domain_suffix: opt(input.domain_suffix.clone()),
        operator_namespace: opt(input.operator_namespace.clone()),
    };
    check_config(&config)?;
    Ok(config)
}

/// Refuses a cluster that cannot run deployments, saying what to do.
fn refuse_unhealthy(name: &str, h: &ClusterHealth) -> AppResult<()> {
    let mut problems = h.problems.clone();
    if !h.reachable && problems.is_empty() {
        problems.push(
            "the cluster's API server cannot be reached: check the kubeconfig's server address and that this \
             server can reach it"
                .into(),
        );
    }
    if h.reachable && !h.crds_installed && !problems.iter().any(|p| p.contains("CRD")) {
        problems.push(
            "the CRDs are not installed: install them with `yatai crds | kubectl apply --server-side -f -`".into(),
        );
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(AppError::invalid_field("kube_config", format!("cluster {name:?} cannot be used: {}", problems.join("; "))))
}

async fn probe(state: &AppState, config: &KubeClusterConfig, timeout: Duration) -> AppResult<ClusterHealth> {
    let connector = state.targets.connector().ok_or_else(|| AppError::invalid_field("kube_config", NO_KUBERNETES))?;
    let mut health = tokio::time::timeout(timeout, connector.probe(config)).await.unwrap_or_else(|_| ClusterHealth {
        problems: vec![format!("the cluster did not answer within {} s", timeout.as_secs())],
        ..Default::default()
    });
    // A YAML parser's error quotes the kubeconfig's lines after its first line
    // (`--> <input>:2:12 | 1 | …`): only that first line is said.
    for p in &mut health.problems {
        if let Some(at) = p.find('\n') {
            p.truncate(at);
        }
    }
    Ok(health)
}

fn sink(state: &AppState) -> Arc<dyn StatusSink> {
    Arc::new(DbStatusSink { store: state.store.clone() })
}

fn settings_json(config: &KubeClusterConfig) -> String {
    serde_json::to_string(&ClusterSettings::of(config)).expect("serializable")
}

/// A Kubernetes cluster's settings that are not secret, as stored in clear; `None` for a
/// cluster of another kind.
pub fn settings_of(row: &ClusterRow) -> Option<ClusterSettings> {
    (row.kind == ClusterKind::Kubernetes.as_str())
        .then(|| serde_json::from_str::<ClusterSettings>(&row.config).unwrap_or_default())
}

fn view(row: ClusterRow) -> ClusterView {
    ClusterView { settings: settings_of(&row), row, health: None }
}

/// Registers a Kubernetes cluster (admins of the organization only).
pub async fn add(state: &AppState, caller: &Caller, input: NewClusterInput) -> AppResult<ClusterView> {
    caller.require(Permission::Admin)?;
    let v = add_in_org(state, &caller.org.uid, Some(&caller.user.uid), input).await?;
    record(state, caller, "created", &v).await;
    Ok(v)
}

/// An event for the organization's feed: what changed, never how it is reached.
async fn record(state: &AppState, caller: &Caller, operation: &str, v: &ClusterView) {
    let info = match &v.settings {
        Some(s) => serde_json::json!({"kind": v.row.kind, "namespace": s.namespace}),
        None => serde_json::json!({"kind": v.row.kind}),
    };
    crate::registry::record(state, caller, operation, "cluster", &v.row.name, info).await;
}

/// Registers a Kubernetes cluster in organization `org_uid` (admin commands).
pub async fn add_in_org(
    state: &AppState,
    org_uid: &str,
    creator_uid: Option<&str>,
    input: NewClusterInput,
) -> AppResult<ClusterView> {
    check_cluster_name(&input.name)?;
    let config = config_of(&input)?;
    let key = state.cluster_key()?;
    if state.store.get_cluster(org_uid, &input.name).await?.is_some() {
        return Err(AppError::conflict(format!(
            "a cluster named {:?} already exists in this organization; pick another name or update it",
            input.name
        )));
    }
    let health = probe(state, &config, PROBE_TIMEOUT).await?;
    refuse_unhealthy(&input.name, &health)?;
    let uid = yatai_store::new_uid();
    let connector = state.targets.connector().ok_or_else(|| AppError::invalid_field("kube_config", NO_KUBERNETES))?;
    let target = connector.connect(&uid, &config, sink(state)).await?;
    let sealed = key.seal(&uid, &config);
    let created = state
        .store
        .create_cluster(NewCluster {
            uid: &uid,
            org_uid,
            name: &input.name,
            description: input.description.trim(),
            kind: ClusterKind::Kubernetes.as_str(),
            config: &settings_json(&config),
            credentials: Some(&sealed),
            creator_uid,
        })
        .await;
    let row = match created {
        Ok(r) => r,
        Err(e) => {
            target.shutdown().await;
            return Err(e.into());
        }
    };
    state.targets.attach(&uid, target.clone());
    crate::gitops::follow(state, &row, &target);
    tracing::info!(cluster = %row.name, org = %org_uid, "registered a Kubernetes cluster");
    let mut v = view(row);
    v.health = Some(health);
    Ok(v)
}

async fn find(state: &AppState, org_uid: &str, name: &str) -> AppResult<ClusterRow> {
    state
        .store
        .get_cluster(org_uid, name)
        .await?
        .ok_or_else(|| AppError::not_found(format!("cluster {name:?} not found")))
}

/// The stored connection settings of a Kubernetes cluster.
fn stored_config(state: &AppState, row: &ClusterRow, sealed: Option<String>) -> AppResult<KubeClusterConfig> {
    let sealed = sealed.ok_or_else(|| {
        AppError::internal(format!("cluster {:?} has no stored credentials; register it again", row.name))
    })?;
    state.cluster_key()?.open(&row.uid, &sealed).map_err(AppError::unavailable)
}

/// Changes a cluster (admins only). Connection settings are checked
/// against the cluster, as when it was registered, before they replace the
/// stored ones.
pub async fn update(state: &AppState, caller: &Caller, name: &str, change: ClusterChange) -> AppResult<ClusterView> {
    caller.require(Permission::Admin)?;
    let row = find(state, &caller.org.uid, name).await?;
    if row.kind != ClusterKind::Kubernetes.as_str() && change.touches_connection() {
        return Err(AppError::invalid(format!(
            "cluster {name:?} is this machine ({}): only its description can change",
            row.kind
        )));
    }
    let mut patch_config = None;
    let mut sealed = None;
    let mut new_target = None;
    if change.touches_connection() {
        let old = stored_config(state, &row, state.store.cluster_credentials(&row.uid).await?)?;
        let in_cluster = change.in_cluster.unwrap_or(old.kubeconfig.is_none() && change.kubeconfig.is_none());
        let input = NewClusterInput {
            name: row.name.clone(),
            description: String::new(),
            kubeconfig: if in_cluster { None } else { change.kubeconfig.clone().or(old.kubeconfig.clone()) },
            in_cluster,
            context: change.context.clone().or(old.context.clone()),
            namespace: change.namespace.clone().or(Some(old.namespace.clone())),
            image_registry: change.image_registry.clone().or(old.image_registry.clone()),
            domain_suffix: change.domain_suffix.clone().or(old.domain_suffix.clone()),
            operator_namespace: change.operator_namespace.clone().or(old.operator_namespace.clone()),
        };
        if in_cluster && change.kubeconfig.as_deref().is_some_and(|k| !k.trim().is_empty()) {
            return Err(AppError::invalid_field(
                "kube_config",
                "give either a kubeconfig or in-cluster (the server's service account), not both",
            ));
        }
        let config = config_of(&input)?;
        let health = probe(state, &config, PROBE_TIMEOUT).await?;
        refuse_unhealthy(name, &health)?;
        let connector =
            state.targets.connector().ok_or_else(|| AppError::invalid_field("kube_config", NO_KUBERNETES))?;
        new_target = Some(connector.connect(&row.uid, &config, sink(state)).await?);
        sealed = Some(state.cluster_key()?.seal(&row.uid, &config));
        patch_config = Some(settings_json(&config));
    }
    let description = change.description.as_deref().map(str::trim);
    let stored = state
        .store
        .update_cluster(
            &caller.org.uid,
            &row.uid,
            ClusterPatch { description, config: patch_config.as_deref(), credentials: sealed.as_deref() },
        )
        .await;
    if let Err(e) = stored {
        if let Some(t) = new_target {
            t.shutdown().await;
        }
        return Err(e.into());
    }
    if let Some(t) = new_target {
        let old = state.targets.attach(&row.uid, t.clone());
        crate::gitops::follow(state, &row, &t);
        if let Some(old) = old {
            old.shutdown().await;
        }
    }
    let v = view(find(state, &caller.org.uid, name).await?);
    record(state, caller, "updated", &v).await;
    Ok(v)
}

/// Removes a cluster that has no deployments (admins only).
pub async fn remove(state: &AppState, caller: &Caller, name: &str) -> AppResult<()> {
    caller.require(Permission::Admin)?;
    let v = view(find(state, &caller.org.uid, name).await?);
    remove_in_org(state, &caller.org.uid, name).await?;
    record(state, caller, "deleted", &v).await;
    Ok(())
}

pub async fn remove_in_org(state: &AppState, org_uid: &str, name: &str) -> AppResult<()> {
    let row = find(state, org_uid, name).await?;
    if row.kind != ClusterKind::Kubernetes.as_str() {
        return Err(AppError::invalid(format!("cluster {name:?} is this machine: it cannot be removed")));
    }
    state.store.delete_cluster(org_uid, &row.uid).await?;
    if let Some(t) = state.targets.detach(&row.uid) {
        t.shutdown().await;
    }
    tracing::info!(cluster = %row.name, org = %org_uid, "removed a Kubernetes cluster");
    Ok(())
}

/// The health of a Kubernetes cluster now (problems reported, never an error).
async fn health_of(state: &AppState, row: &ClusterRow, timeout: Duration) -> ClusterHealth {
    let config = match state.store.cluster_credentials(&row.uid).await {
        Ok(sealed) => stored_config(state, row, sealed),
        Err(e) => Err(e.into()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => return ClusterHealth { problems: vec![e.message().to_owned()], ..Default::default() },
    };
    match probe(state, &config, timeout).await {
        Ok(h) => h,
        Err(e) => ClusterHealth { problems: vec![e.message().to_owned()], ..Default::default() },
    }
}

/// One cluster, with its health.
pub async fn get(state: &AppState, caller: &Caller, name: &str) -> AppResult<ClusterView> {
    get_within(state, caller, name, PROBE_TIMEOUT).await
}

/// One cluster, with its health as far as the cluster answers within
/// `timeout` (a page waits less than registering does).
pub async fn get_within(state: &AppState, caller: &Caller, name: &str, timeout: Duration) -> AppResult<ClusterView> {
    caller.require(Permission::ReadCluster)?;
    let row = find(state, &caller.org.uid, name).await?;
    let mut v = view(row);
    if v.settings.is_some() {
        v.health = Some(health_of(state, &v.row, timeout).await);
    }
    Ok(v)
}

/// The organization's clusters; with `health`, each Kubernetes cluster is
/// probed (all at once, each for a few seconds at most).
pub async fn list(state: &AppState, caller: &Caller, health: bool) -> AppResult<Vec<ClusterView>> {
    list_within(state, caller, health.then_some(LIST_PROBE_TIMEOUT)).await
}

/// [`list`], each Kubernetes cluster probed for at most `probe` when given.
pub async fn list_within(state: &AppState, caller: &Caller, probe: Option<Duration>) -> AppResult<Vec<ClusterView>> {
    caller.require(Permission::ReadCluster)?;
    let rows = state.store.list_clusters(&caller.org.uid).await?;
    let mut views: Vec<ClusterView> = rows.into_iter().map(view).collect();
    if let Some(timeout) = probe {
        let mut probes = tokio::task::JoinSet::new();
        for (i, v) in views.iter().enumerate().filter(|(_, v)| v.settings.is_some()) {
            let (state, row) = (state.clone(), v.row.clone());
            probes.spawn(async move { (i, health_of(&state, &row, timeout).await) });
        }
        while let Some(done) = probes.join_next().await {
            if let Ok((i, h)) = done {
                views[i].health = Some(h);
            }
        }
    }
    Ok(views)
}

/// At server start: a target for every stored Kubernetes cluster. A cluster
/// that cannot be connected is logged and its deployments get that reason;
/// the server starts anyway.
/// Connects a Kubernetes cluster this server does not know yet: one registered by `yatai
/// cluster add` on the database while the server ran. A failure is remembered (the cluster's
/// deployments then say why) until the server restarts or the cluster is changed.
pub async fn connect_new(state: &AppState, row: &ClusterRow) -> AppResult<Arc<dyn DeployTarget>> {
    let result = async {
        let sealed = state.store.cluster_credentials(&row.uid).await?;
        let config = stored_config(state, row, sealed)?;
        let connector = state.targets.connector().ok_or_else(|| AppError::unavailable(NO_KUBERNETES))?;
        Ok::<_, AppError>(connector.connect(&row.uid, &config, sink(state)).await?)
    }
    .await;
    match result {
        Ok(t) => {
            tracing::info!(cluster = %row.name, "connected a Kubernetes cluster registered while the server ran");
            state.targets.attach(&row.uid, t.clone());
            // What was made outside yatai on it is listed from the first use on.
            let mut seen = Default::default();
            if let Err(e) = crate::gitops::sync(state, row, t.as_ref(), &mut seen).await {
                tracing::warn!(cluster = %row.name, error = %e, "cannot import the deployments made outside yatai");
            }
            crate::gitops::follow(state, row, &t);
            Ok(t)
        }
        Err(e) => {
            tracing::error!(cluster = %row.name, error = %e, "cannot connect a Kubernetes cluster");
            state.targets.mark_broken(&row.uid, e.message());
            Err(e)
        }
    }
}

pub async fn connect_stored(state: &AppState) -> AppResult<usize> {
    let mut connected = 0;
    for stored in state.store.clusters_of_kind(ClusterKind::Kubernetes.as_str()).await? {
        let row = &stored.row;
        let result = async {
            let config = stored_config(state, row, stored.credentials.clone())?;
            let connector = state.targets.connector().ok_or_else(|| AppError::unavailable(NO_KUBERNETES))?;
            Ok::<_, AppError>(connector.connect(&row.uid, &config, sink(state)).await?)
        }
        .await;
        match result {
            Ok(t) => {
                state.targets.attach(&row.uid, t.clone());
                crate::gitops::follow(state, row, &t);
                connected += 1;
            }
            Err(e) => {
                tracing::error!(cluster = %row.name, error = %e, "cannot connect a Kubernetes cluster");
                state.targets.mark_broken(&row.uid, e.message());
            }
        }
    }
    Ok(connected)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use yatai_core::deploy::*;
    use yatai_store::{MemberRole, Store};

    use super::*;
    use crate::Targets;

    #[test]
    fn cluster_names_the_dashboard_or_this_machine_uses_are_refused() {
        for name in ["local", "new", "", "Prod", "-a", "a-", "a_b"] {
            let e = check_cluster_name(name).unwrap_err();
            assert_eq!(e.field(), Some("name"), "{name:?}: {}", e.message());
        }
        for name in ["prod", "news", "new-york", "a1"] {
            check_cluster_name(name).unwrap();
        }
    }

    /// Reports the health it was given and records what it connected.
    struct FakeConnector {
        health: Mutex<ClusterHealth>,
        connected: Mutex<Vec<(String, KubeClusterConfig)>>,
    }

    struct NoopTarget;

    #[async_trait::async_trait]
    impl DeployTarget for NoopTarget {
        fn kind(&self) -> ClusterKind {
            ClusterKind::Kubernetes
        }
        fn max_replicas(&self) -> u32 {
            10
        }
        async fn check(&self, _: &ArtifactRef) -> Result<(), TargetError> {
            Ok(())
        }
        fn allocate_port(&self, _: &[i64]) -> Result<Option<u16>, TargetError> {
            Ok(None)
        }
        async fn apply(&self, _: DeploymentSpec) -> Result<(), TargetError> {
            Ok(())
        }
        async fn terminate(&self, _: &str) {}
        async fn remove(&self, _: &str) {}
        fn status(&self, _: &str) -> Option<DeploymentSnapshot> {
            None
        }
        fn logs(&self, _: &str) -> Option<Arc<dyn LogSource>> {
            None
        }
        fn metrics(&self, _: &str) -> Option<Metrics> {
            None
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    #[async_trait::async_trait]
    impl ClusterConnector for FakeConnector {
        async fn probe(&self, _: &KubeClusterConfig) -> ClusterHealth {
            self.health.lock().unwrap().clone()
        }
        async fn connect(
            &self,
            uid: &str,
            config: &KubeClusterConfig,
            _: Arc<dyn StatusSink>,
        ) -> Result<Arc<dyn DeployTarget>, TargetError> {
            self.connected.lock().unwrap().push((uid.to_owned(), config.clone()));
            Ok(Arc::new(NoopTarget))
        }
    }

    fn healthy() -> ClusterHealth {
        ClusterHealth {
            reachable: true,
            version: Some("v1.31.0".into()),
            crds_installed: true,
            operator_running: true,
            domain_suffix: Some("example.com".into()),
            problems: vec![],
        }
    }

    const KUBECONFIG: &str = "apiVersion: v1\nusers:\n- name: u\n  user:\n    token: sekrit-token-4711\n";

    struct Setup {
        _dir: tempfile::TempDir,
        state: AppState,
        connector: Arc<FakeConnector>,
        admin: Caller,
        developer: Caller,
        stranger: Caller,
    }

    async fn setup(with_connector: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        let blobs = yatai_blob::BlobStore::local(dir.path().join("blobs"), false).unwrap();
        let connector = Arc::new(FakeConnector { health: Mutex::new(healthy()), connected: Mutex::new(Vec::new()) });
        let mut targets = Targets::default();
        if with_connector {
            targets = targets.with_connector(connector.clone());
        }
        let state =
            AppState::with_targets(store.clone(), blobs, b"0123456789abcdef", Default::default(), targets, None);
        state.set_cluster_key(ClusterKey::from_bytes([7; 32]));
        let org = store.create_org("o", "").await.unwrap();
        let other = store.create_org("p", "").await.unwrap();
        let mut callers = Vec::new();
        for (name, org, role) in
            [("a", &org, MemberRole::Admin), ("d", &org, MemberRole::Developer), ("s", &other, MemberRole::Admin)]
        {
            let user = store.create_user(name, "", None, false).await.unwrap();
            store.set_member(&org.uid, &user.uid, role).await.unwrap();
            callers.push(Caller::for_session(user, org.clone(), role));
        }
        let stranger = callers.pop().unwrap();
        let developer = callers.pop().unwrap();
        let admin = callers.pop().unwrap();
        Setup { _dir: dir, state, connector, admin, developer, stranger }
    }

    fn input(name: &str) -> NewClusterInput {
        NewClusterInput {
            name: name.into(),
            kubeconfig: Some(KUBECONFIG.into()),
            namespace: Some("yatai".into()),
            image_registry: Some("registry.example.com/bentos".into()),
            ..Default::default()
        }
    }

    #[test]
    fn sealed_credentials_open_only_for_their_cluster_and_key() {
        let key = ClusterKey::from_bytes([1; 32]);
        let config =
            KubeClusterConfig { kubeconfig: Some(KUBECONFIG.into()), namespace: "yatai".into(), ..Default::default() };
        let sealed = key.seal("uid-a", &config);
        assert!(!sealed.contains("sekrit"), "{sealed}");
        assert_ne!(sealed, key.seal("uid-a", &config), "each seal has its own nonce");
        assert_eq!(key.open("uid-a", &sealed).unwrap(), config);
        assert!(key.open("uid-b", &sealed).is_err(), "moved to another cluster's row");
        assert!(ClusterKey::from_bytes([2; 32]).open("uid-a", &sealed).is_err(), "another key");
        let mut tampered = sealed.clone().into_bytes();
        let n = tampered.len() - 5;
        tampered[n] = if tampered[n] == b'A' { b'B' } else { b'A' };
        assert!(key.open("uid-a", &String::from_utf8(tampered).unwrap()).is_err());
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets").join("cluster.key");
        let key = ClusterKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = ClusterKey::load_or_create(&path).unwrap();
        assert_eq!(key.0, again.0);
        std::fs::write(&path, "not hex").unwrap();
        let Err(e) = ClusterKey::load_or_create(&path) else { panic!("a corrupt key was accepted") };
        assert!(e.to_string().contains("corrupt"), "{e}");
    }

    #[tokio::test]
    async fn an_admin_registers_a_healthy_cluster_and_its_kubeconfig_is_stored_sealed() {
        let s = setup(true).await;
        let v = add(&s.state, &s.admin, input("prod")).await.unwrap();
        assert_eq!(v.row.kind, "kubernetes");
        assert_eq!(v.settings.as_ref().unwrap().namespace, "yatai");
        assert!(!v.row.config.contains("sekrit"));
        let sealed = s.state.store.cluster_credentials(&v.row.uid).await.unwrap().unwrap();
        assert!(!sealed.contains("sekrit"));
        assert_eq!(s.connector.connected.lock().unwrap()[0].0, v.row.uid);
        let row = s.state.store.get_cluster(&s.admin.org.uid, "prod").await.unwrap().unwrap();
        assert!(s.state.targets.for_cluster(&row).is_ok(), "its target is registered at once");

        // A sealed blob copied to another cluster's row does not open.
        let other = add(&s.state, &s.admin, input("staging")).await.unwrap();
        s.state
            .store
            .update_cluster(
                &s.admin.org.uid,
                &other.row.uid,
                yatai_store::ClusterPatch { credentials: Some(&sealed), ..Default::default() },
            )
            .await
            .unwrap();
        let h = get(&s.state, &s.admin, "staging").await.unwrap().health.unwrap();
        assert!(h.problems[0].contains("cannot be opened"), "{h:?}");

        let dup = add(&s.state, &s.admin, input("prod")).await.unwrap_err();
        assert!(matches!(dup, AppError::Conflict(_)), "{dup}");
    }

    #[tokio::test]
    async fn only_admins_of_the_organization_manage_clusters() {
        let s = setup(true).await;
        let denied = add(&s.state, &s.developer, input("prod")).await.unwrap_err();
        assert!(matches!(denied, AppError::Forbidden(_)), "{denied}");
        add(&s.state, &s.admin, input("prod")).await.unwrap();
        assert!(matches!(remove(&s.state, &s.developer, "prod").await, Err(AppError::Forbidden(_))));
        assert!(matches!(
            update(&s.state, &s.developer, "prod", ClusterChange::default()).await,
            Err(AppError::Forbidden(_))
        ));
        // Another organization sees nothing and removes nothing.
        assert!(list(&s.state, &s.stranger, false).await.unwrap().iter().all(|c| c.row.name != "prod"));
        assert!(matches!(get(&s.state, &s.stranger, "prod").await, Err(AppError::NotFound(_))));
        assert!(matches!(remove(&s.state, &s.stranger, "prod").await, Err(AppError::NotFound(_))));
        remove(&s.state, &s.admin, "prod").await.unwrap();
        assert!(matches!(get(&s.state, &s.admin, "prod").await, Err(AppError::NotFound(_))));
    }

    #[tokio::test]
    async fn a_cluster_that_cannot_work_is_refused_saying_what_to_do() {
        let s = setup(true).await;
        *s.connector.health.lock().unwrap() = ClusterHealth { reachable: true, ..healthy() };
        s.connector.health.lock().unwrap().crds_installed = false;
        let e = add(&s.state, &s.admin, input("prod")).await.unwrap_err();
        assert_eq!(e.field(), Some("kube_config"));
        assert!(e.message().contains("yatai crds | kubectl apply --server-side -f -"), "{e}");

        *s.connector.health.lock().unwrap() = ClusterHealth::default();
        let e = add(&s.state, &s.admin, input("prod")).await.unwrap_err();
        assert!(e.message().contains("cannot be reached"), "{e}");

        *s.connector.health.lock().unwrap() = ClusterHealth {
            problems: vec!["the kubeconfig's user may not list bentodeployments in namespace yatai".into()],
            ..healthy()
        };
        let e = add(&s.state, &s.admin, input("prod")).await.unwrap_err();
        assert!(e.message().contains("may not list bentodeployments"), "{e}");
        assert!(s.connector.connected.lock().unwrap().is_empty(), "nothing connected");
        assert!(s.state.store.get_cluster(&s.admin.org.uid, "prod").await.unwrap().is_none(), "nothing stored");
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_the_cluster_is_asked() {
        let s = setup(true).await;
        for (bad, field) in [
            (NewClusterInput { name: "Prod".into(), ..input("x") }, "name"),
            (NewClusterInput { name: "local".into(), ..input("x") }, "name"),
            (NewClusterInput { kubeconfig: None, ..input("prod") }, "kube_config"),
            (NewClusterInput { in_cluster: true, ..input("prod") }, "kube_config"),
            (NewClusterInput { namespace: Some("Not_A_Label".into()), ..input("prod") }, "namespace"),
            (NewClusterInput { image_registry: Some("https://r/x".into()), ..input("prod") }, "image_registry"),
            (NewClusterInput { domain_suffix: Some(".bad".into()), ..input("prod") }, "domain_suffix"),
        ] {
            let e = add(&s.state, &s.admin, bad).await.unwrap_err();
            assert_eq!(e.field(), Some(field), "{e}");
        }
        let huge = NewClusterInput { kubeconfig: Some("x".repeat(MAX_KUBECONFIG + 1)), ..input("prod") };
        assert!(matches!(add(&s.state, &s.admin, huge).await, Err(AppError::TooLarge(_))));
        assert!(s.connector.connected.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_kubernetes_support_a_cluster_is_refused_and_stored_ones_report_why() {
        let s = setup(false).await;
        let e = add(&s.state, &s.admin, input("prod")).await.unwrap_err();
        assert!(e.message().contains("without Kubernetes support"), "{e}");

        // A cluster stored by a server that had support is marked, not fatal.
        let with = setup(true).await;
        add(&with.state, &with.admin, input("prod")).await.unwrap();
        let state = AppState::with_targets(
            with.state.store.clone(),
            with.state.blobs.clone(),
            b"0123456789abcdef",
            Default::default(),
            Targets::default(),
            None,
        );
        state.set_cluster_key(ClusterKey::from_bytes([7; 32]));
        assert_eq!(connect_stored(&state).await.unwrap(), 0);
        let row = state.store.get_cluster(&with.admin.org.uid, "prod").await.unwrap().unwrap();
        let e = state.targets.for_cluster(&row).err().unwrap();
        assert!(e.message().contains("without Kubernetes support"), "{e}");
        assert_eq!(connect_stored(&with.state).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn changing_the_connection_is_checked_and_the_local_cluster_keeps_its_settings() {
        let s = setup(true).await;
        add(&s.state, &s.admin, input("prod")).await.unwrap();
        let v = update(
            &s.state,
            &s.admin,
            "prod",
            ClusterChange {
                namespace: Some("serving".into()),
                domain_suffix: Some("apps.example.com".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let settings = v.settings.unwrap();
        assert_eq!(settings.namespace, "serving");
        assert_eq!(settings.image_registry.as_deref(), Some("registry.example.com/bentos"), "kept");
        let (_, config) = s.connector.connected.lock().unwrap().last().unwrap().clone();
        assert_eq!(config.kubeconfig.as_deref(), Some(KUBECONFIG), "the kubeconfig is kept");

        *s.connector.health.lock().unwrap() = ClusterHealth::default();
        let e = update(
            &s.state,
            &s.admin,
            "prod",
            ClusterChange { kubeconfig: Some("other".into()), ..Default::default() },
        )
        .await
        .unwrap_err();
        assert_eq!(e.field(), Some("kube_config"));
        let row = s.state.store.get_cluster(&s.admin.org.uid, "prod").await.unwrap().unwrap();
        let sealed = s.state.store.cluster_credentials(&row.uid).await.unwrap().unwrap();
        assert_eq!(
            s.state.cluster_key().unwrap().open(&row.uid, &sealed).unwrap().kubeconfig.as_deref(),
            Some(KUBECONFIG)
        );

        crate::deployments::resolve_cluster(&s.state, &s.admin, None).await.unwrap();
        let e =
            update(&s.state, &s.admin, "local", ClusterChange { namespace: Some("x".into()), ..Default::default() })
                .await
                .unwrap_err();
        assert!(e.message().contains("only its description"), "{e}");
        assert!(remove(&s.state, &s.admin, "local").await.is_err());
    }
}
