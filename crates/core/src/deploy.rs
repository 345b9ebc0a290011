//! Deployments, independent of where they run: what a revision runs
//! ([`DeploymentSpec`]), what is observed ([`Phase`], [`DeploymentSnapshot`]),
//! the states stored as text, the naming rules, and [`DeployTarget`], the
//! seam every place deployments run implements (this machine's processes
//! today, a Kubernetes cluster next).

use std::sync::Arc;
use std::time::Duration;

use crate::text_enum::text_enum;

/// An archive in the registry, by name and content: what a target fetches
/// (from the blob store by `storage_key`, or its own copy by `digest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRef {
    pub name: String,
    pub version: String,
    /// SHA-256 of the archive.
    pub digest: String,
    pub storage_key: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    pub min: u32,
    pub max: u32,
    /// Requests in flight per replica the autoscaler aims for.
    pub target_inflight: f64,
    pub scale_down_window: Duration,
}

impl Scaling {
    /// At least one replica runs (no target scales to zero yet).
    pub fn min_effective(&self) -> u32 {
        self.min.max(1).min(self.max.max(1))
    }
}

/// Requests and limits per replica, as the client sends them (Kubernetes
/// quantities such as `500m` or `1Gi`); a target that cannot enforce them
/// records them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

/// A size of replica a target offers: what `bentoml deployment
/// list-instance-types` lists and a service's `instance_type` names. Its
/// requests become the replica's when the configuration sets none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceType {
    pub name: String,
    pub description: String,
    /// A Kubernetes quantity (`2`, `500m`).
    pub cpu: String,
    /// A Kubernetes quantity (`4Gi`); empty: not set.
    pub memory: String,
}

impl InstanceType {
    pub fn new(name: &str, description: &str, cpu: &str, memory: &str) -> InstanceType {
        InstanceType { name: name.into(), description: description.into(), cpu: cpu.into(), memory: memory.into() }
    }
}

/// Everything needed to run one revision of a deployment, anywhere.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSpec {
    pub uid: String,
    pub org_uid: String,
    pub name: String,
    pub namespace: String,
    /// The host label routed to the deployment (`<name>-<namespace>`; none
    /// for a deployment whose label another one held first).
    pub host: Option<String>,
    /// Requests must carry an API token of the deployment's organization.
    pub access_authorization: bool,
    pub revision_uid: String,
    pub bento: ArtifactRef,
    pub models: Vec<ArtifactRef>,
    /// The image built from the bento, when there is one (a cluster runs it).
    pub image: Option<String>,
    /// From the bento's manifest (`image.python_version`), e.g. `3.11`.
    pub python_version: Option<String>,
    pub envs: Vec<(String, String)>,
    /// The secrets the revision names that replicas receive (runtime
    /// stage), opened by the application just before it applies the spec.
    /// Nothing stores a spec; `Debug` shows no value.
    pub secrets: Vec<crate::secret::DeploySecret>,
    pub scaling: Scaling,
    pub resources: Resources,
    /// The port the deployment's own endpoint had (targets that give each
    /// deployment a port keep it stable across restarts; 0: none yet).
    pub port: u16,
    /// How long a replica may take to become ready.
    pub cold_start_timeout: Duration,
}

text_enum!(
    /// Observed state of a deployment, in the client's vocabulary (the
    /// `status` column).
    Phase, "deployment status" {
        /// The image the deployment runs is being built (Kubernetes targets).
        ImageBuilding = "image-building",
        Deploying = "deploying",
        Running = "running",
        Unhealthy = "unhealthy",
        Failed = "failed",
        Terminating = "terminating",
        Terminated = "terminated",
    }
);

text_enum!(
    /// What the user asked a deployment to be (the `desired` column).
    Desired, "desired state" {
        Running = "running",
        Terminated = "terminated",
    }
);

text_enum!(
    /// A revision is the one running, or history.
    RevisionStatus, "revision status" {
        Active = "active",
        Inactive = "inactive",
    }
);

text_enum!(
    /// Where a cluster's deployments run.
    ClusterKind, "cluster kind" {
        /// This machine: replicas are supervised local processes.
        Local = "local",
        /// A Kubernetes cluster, through the operator.
        Kubernetes = "kubernetes",
    }
);

impl Phase {
    /// Whether the phase reports a problem (events record it as failed).
    pub fn is_failure(self) -> bool {
        matches!(self, Phase::Failed | Phase::Unhealthy)
    }
}

/// The namespace deployments get when the client does not say (the v2 API has none).
pub const DEFAULT_NAMESPACE: &str = "yatai";

/// Deployment names become host names (`<name>-<namespace>.<domain>`) and
/// Kubernetes object names, so they follow DNS label rules.
pub fn check_deployment_name(name: &str) -> Result<(), String> {
    if is_dns_label(name, 50) {
        return Ok(());
    }
    Err(format!(
        "deployment name {:?} is not valid: use 1 to 50 lowercase letters, digits and '-', starting with a letter \
         and not ending with '-'",
        name.chars().take(60).collect::<String>()
    ))
}

/// Namespaces are Kubernetes namespaces and part of host names.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    if is_dns_label(ns, 50) {
        return Ok(());
    }
    Err(format!("namespace {:?} is not a valid DNS label", ns.chars().take(60).collect::<String>()))
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The host label of a deployment: `<name>-<namespace>`, as Yatai has it.
/// It is unique across organizations (the store refuses a second
/// deployment with the same label, atomically), rather than carrying the
/// organization: URLs keep Yatai's shape.
pub fn host_label(name: &str, namespace: &str) -> String {
    format!("{name}-{namespace}")
}

#[derive(Debug, Clone, Default)]
pub struct ReplicaInfo {
    pub id: String,
    pub revision_uid: String,
    pub port: u16,
    pub pid: Option<u32>,
    /// `starting`, `ready`, `restarting` or `failed`.
    pub state: &'static str,
    pub restarts: u32,
    pub inflight: usize,
    /// Microseconds since the epoch.
    pub started_at: i64,
}

/// What a target observes of one deployment right now.
#[derive(Debug, Clone)]
pub struct DeploymentSnapshot {
    pub phase: Phase,
    pub reason: String,
    pub revision_uid: Option<String>,
    pub updating_to: Option<String>,
    pub desired_replicas: u32,
    pub inflight: usize,
    pub replicas: Vec<ReplicaInfo>,
    pub port: u16,
    pub env_cached: Option<bool>,
}

/// One point of a deployment's traffic history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// Microseconds since the epoch.
    pub at: i64,
    pub requests_per_second: f64,
    pub errors_per_second: f64,
    /// Latency quantiles over the interval, in milliseconds (upper bucket bounds).
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub inflight: usize,
}

/// A deployment's traffic: history, requests in flight now, and what each
/// replica reports on its own `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub inflight: usize,
    pub replica_requests: Vec<(String, f64)>,
}

/// A deployment's replica output: the last lines, and the lines to come.
pub trait LogSource: Send + Sync {
    fn tail(&self, lines: usize) -> Vec<String>;
    fn follow(&self) -> tokio::sync::broadcast::Receiver<Arc<str>>;
}

/// Receives status changes from a target (the server writes them to the
/// database and the event feed).
pub trait StatusSink: Send + Sync + 'static {
    fn status(&self, deployment_uid: &str, name: &str, phase: Phase, reason: &str);
    /// The deployment's endpoint had to move to another port.
    fn port_changed(&self, deployment_uid: &str, port: u16);
}

/// Why a target refused or could not do something.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The request cannot work here, whatever is retried (a bad archive, a
    /// setting the target does not support).
    #[error("{0}")]
    Refused(String),
    /// The target cannot do it now (a port, the cluster's API).
    #[error("{0}")]
    Unavailable(String),
    /// The name is taken on the target by something yatai does not own (a
    /// BentoDeployment made with kubectl or by GitOps).
    #[error("{0}")]
    Conflict(String),
}

/// A deployment found on a target that yatai did not make (a BentoDeployment
/// applied with kubectl or by a GitOps tool): yatai shows it, never changes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForeignDeployment {
    pub namespace: String,
    pub name: String,
    /// `name:version` when the target knows the bento's tag, else what the
    /// deployment names (a Kubernetes object name).
    pub bento: String,
    /// Whether `bento` is a tag (`name:version`) rather than an object name.
    pub bento_is_tag: bool,
    pub envs: Vec<(String, String)>,
    /// Minimum and maximum replicas, when the deployment says.
    pub replicas: Option<(u32, u32)>,
    pub resources: Resources,
}

/// A place deployments run. The application keeps one per cluster kind and
/// drives every deployment of that kind through it; nothing above it knows
/// whether replicas are processes or pods.
#[async_trait::async_trait]
pub trait DeployTarget: Send + Sync {
    fn kind(&self) -> ClusterKind;
    /// The most replicas one deployment may ask for here.
    fn max_replicas(&self) -> u32;
    /// The sizes of replica a deployment may name (`instance_type`); none:
    /// the target offers no choice.
    fn instance_types(&self) -> Vec<InstanceType> {
        Vec::new()
    }
    /// Checks, before anything is stored, that a bento can run here (its
    /// archive fetched and found safe to extract, for instance).
    async fn check(&self, bento: &ArtifactRef) -> Result<(), TargetError>;
    /// A port for a new deployment's own endpoint, not in `in_use`; `None`
    /// when the target does not give deployments ports.
    fn allocate_port(&self, in_use: &[i64]) -> Result<Option<u16>, TargetError>;
    /// Runs `spec`'s revision: starts it, or rolls the deployment over to it.
    async fn apply(&self, spec: DeploymentSpec) -> Result<(), TargetError>;
    /// Stops every replica, keeping the deployment known.
    async fn terminate(&self, deployment_uid: &str);
    /// Stops everything and forgets the deployment.
    async fn remove(&self, deployment_uid: &str);
    /// What runs now; `None` for a deployment the target does not run.
    fn status(&self, deployment_uid: &str) -> Option<DeploymentSnapshot>;
    /// Replica output, also of a deployment that no longer runs.
    fn logs(&self, deployment_uid: &str) -> Option<Arc<dyn LogSource>>;
    fn metrics(&self, deployment_uid: &str) -> Option<Metrics>;
    /// Replicas this target restarted itself since the server started (they exited, crashed or
    /// were not ready in time). 0 for targets whose restarts are the cluster's own (a pod's
    /// `restartCount`, which Kubernetes reports).
    fn replica_restarts(&self) -> u64 {
        0
    }
    /// Where the deployment answers when the target publishes it itself (a
    /// Kubernetes Ingress host); `None`: the server's own endpoint for it.
    fn url(&self, _deployment_uid: &str) -> Option<String> {
        None
    }
    /// At server start, before deployments are restored: cleans up what a
    /// previous server left running; returns how many it stopped.
    async fn recover(&self) -> usize {
        0
    }
    /// Graceful server shutdown.
    async fn shutdown(&self) {}
    /// The deployments on the target that yatai did not make; `None` while
    /// the target does not know yet (its caches are filling) or has none of
    /// its own kind (this machine).
    async fn foreign(&self) -> Option<Vec<ForeignDeployment>> {
        None
    }
    /// From now on, `deployment_uid` names the foreign deployment
    /// `namespace/name`: its status goes to the sink, and `status`, `logs`,
    /// `metrics` and `url` answer for it. Nothing is written to the target.
    fn follow_foreign(&self, _deployment_uid: &str, _namespace: &str, _name: &str) {}
    /// Ticks whenever what the target observes changes (`None`: never).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    fn describe(&self) -> String;
}

/// How yatai reaches a Kubernetes cluster. Stored encrypted; the API never
/// returns it and `Debug` never prints the kubeconfig.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KubeClusterConfig {
    /// A kubeconfig's text; `None`: the server's own service account
    /// (yatai running in the cluster).
    #[serde(default)]
    pub kubeconfig: Option<String>,
    /// The kubeconfig context to use; `None`: its current context.
    #[serde(default)]
    pub context: Option<String>,
    /// The namespace deployments go to when the user names none.
    pub namespace: String,
    /// The registry images built for this cluster are pushed to, as the
    /// operator's `--image-registry` (shown; the operator holds its credentials).
    #[serde(default)]
    pub image_registry: Option<String>,
    /// The domain suffix of deployments' hosts; `None`: what the operator
    /// discovered (the `network` ConfigMap, else the ingress address).
    #[serde(default)]
    pub domain_suffix: Option<String>,
    /// The operator's namespace (its Lease, its `network` ConfigMap); `None`:
    /// wherever its Lease is found, else `yatai-system`.
    #[serde(default)]
    pub operator_namespace: Option<String>,
}

impl std::fmt::Debug for KubeClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClusterConfig")
            .field("kubeconfig", &self.kubeconfig.as_ref().map(|_| "<secret>"))
            .field("context", &self.context)
            .field("namespace", &self.namespace)
            .field("image_registry", &self.image_registry)
            .field("domain_suffix", &self.domain_suffix)
            .field("operator_namespace", &self.operator_namespace)
            .finish()
    }
}

/// What a cluster has, as found by [`ClusterConnector::probe`]: shown on the
/// cluster's page, and checked when a user registers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterHealth {
    pub reachable: bool,
    /// The API server's version (`v1.37.2`).
    pub version: Option<String>,
    /// The BentoDeployment, BentoRequest and Bento CRDs are established.
    pub crds_installed: bool,
    /// A `yatai operator` holds the leader lease.
    pub operator_running: bool,
    /// The domain suffix deployments' hosts end with.
    pub domain_suffix: Option<String>,
    /// What is wrong, each in words a person can act on; empty when all is well.
    pub problems: Vec<String>,
}

/// Builds the targets of clusters registered at run time from their stored
/// configuration (Kubernetes). Lives outside the application so that it
/// needs no Kubernetes client.
#[async_trait::async_trait]
pub trait ClusterConnector: Send + Sync {
    /// Reaches the cluster with `config` and reports what it has (RBAC,
    /// CRDs, namespace, operator). Never fails: problems are in the report.
    async fn probe(&self, config: &KubeClusterConfig) -> ClusterHealth;
    /// A target running deployments on the cluster with uid `cluster_uid`;
    /// status changes go to `sink` as the local runtime's do.
    async fn connect(
        &self,
        cluster_uid: &str,
        config: &KubeClusterConfig,
        sink: Arc<dyn StatusSink>,
    ) -> Result<Arc<dyn DeployTarget>, TargetError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_text() {
        for (p, s) in Phase::ALL {
            assert_eq!(s.parse::<Phase>().unwrap(), *p);
            assert_eq!(p.as_str(), *s);
        }
        assert_eq!("kubernetes".parse::<ClusterKind>().unwrap(), ClusterKind::Kubernetes);
        assert!("Running".parse::<Phase>().unwrap_err().contains("deployment status"));
        assert!(Desired::Running == "running");
        assert!(RevisionStatus::Active == "active");
    }

    #[test]
    fn names_follow_dns_label_rules() {
        for ok in ["iris", "a1-b2", "x"] {
            assert!(check_deployment_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Iris", "1abc", "a-", "a_b", "a.b", &"a".repeat(51)] {
            assert!(check_deployment_name(bad).is_err(), "{bad}");
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
        assert_eq!(host_label("iris", "yatai"), "iris-yatai");
    }
}
