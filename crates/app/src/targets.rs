//! The registry of deploy targets: which [`DeployTarget`] runs a cluster's
//! deployments. A cluster may have its own target (a Kubernetes cluster,
//! by its uid); otherwise its kind chooses (`local`: this machine). Adding a
//! kind of cluster is a new implementation registered here, with no change
//! to the use cases, the API or the dashboard.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use yatai_core::deploy::{ClusterConnector, ClusterKind, DeployTarget};
use yatai_store::ClusterRow;

use crate::error::{AppError, AppResult};

/// Clusters join and leave while the server runs, so their targets are
/// shared behind a lock (clones see the same clusters).
#[derive(Default, Clone)]
pub struct Targets {
    by_kind: HashMap<ClusterKind, Arc<dyn DeployTarget>>,
    by_cluster: Arc<RwLock<HashMap<String, Arc<dyn DeployTarget>>>>,
    /// Clusters that could not be connected, and why.
    broken: Arc<RwLock<HashMap<String, String>>>,
    /// Builds targets of Kubernetes clusters (none: built without Kubernetes).
    connector: Option<Arc<dyn ClusterConnector>>,
}

impl Targets {
    /// Runs every cluster of the target's kind that has no target of its own.
    pub fn with_kind(mut self, target: Arc<dyn DeployTarget>) -> Self {
        self.by_kind.insert(target.kind(), target);
        self
    }

    /// Replicas the targets restarted themselves since the server started.
    pub fn replica_restarts(&self) -> u64 {
        self.by_kind.values().map(|t| t.replica_restarts()).sum()
    }

    /// Runs the cluster with uid `cluster_uid`.
    pub fn with_cluster(self, cluster_uid: &str, target: Arc<dyn DeployTarget>) -> Self {
        self.attach(cluster_uid, target);
        self
    }

    /// Kubernetes clusters registered at run time get their targets from `connector`.
    pub fn with_connector(mut self, connector: Arc<dyn ClusterConnector>) -> Self {
        self.connector = Some(connector);
        self
    }

    pub fn connector(&self) -> Option<&Arc<dyn ClusterConnector>> {
        self.connector.as_ref()
    }

    /// Runs the cluster with uid `cluster_uid` from now on; returns the
    /// target it replaces.
    pub fn attach(&self, cluster_uid: &str, target: Arc<dyn DeployTarget>) -> Option<Arc<dyn DeployTarget>> {
        self.broken.write().expect("lock").remove(cluster_uid);
        self.by_cluster.write().expect("lock").insert(cluster_uid.to_owned(), target)
    }

    /// Forgets a removed cluster; returns its target, to shut down.
    pub fn detach(&self, cluster_uid: &str) -> Option<Arc<dyn DeployTarget>> {
        self.broken.write().expect("lock").remove(cluster_uid);
        self.by_cluster.write().expect("lock").remove(cluster_uid)
    }

    /// Records why a cluster has no target: its deployments report it.
    pub fn mark_broken(&self, cluster_uid: &str, reason: &str) {
        self.broken.write().expect("lock").insert(cluster_uid.to_owned(), reason.to_owned());
    }

    /// Whether this server knows the cluster: connected, or failed to connect.
    pub fn knows(&self, cluster_uid: &str) -> bool {
        self.by_cluster.read().expect("lock").contains_key(cluster_uid)
            || self.broken.read().expect("lock").contains_key(cluster_uid)
    }

    /// The target of its own the cluster with uid `cluster_uid` has (a Kubernetes cluster's).
    pub fn of_cluster(&self, cluster_uid: &str) -> Option<Arc<dyn DeployTarget>> {
        self.by_cluster.read().expect("lock").get(cluster_uid).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.by_kind.is_empty() && self.by_cluster.read().expect("lock").is_empty()
    }

    /// Every target, once (for recovery at start and shutdown).
    pub fn all(&self) -> Vec<Arc<dyn DeployTarget>> {
        let mut all: Vec<Arc<dyn DeployTarget>> = Vec::new();
        let by_cluster = self.by_cluster.read().expect("lock");
        for t in self.by_kind.values().chain(by_cluster.values()) {
            if !all.iter().any(|a| Arc::ptr_eq(a, t)) {
                all.push(t.clone());
            }
        }
        all
    }

    /// The target that runs `cluster`'s deployments.
    pub fn for_cluster(&self, cluster: &ClusterRow) -> AppResult<Arc<dyn DeployTarget>> {
        if let Some(t) = self.by_cluster.read().expect("lock").get(&cluster.uid) {
            return Ok(t.clone());
        }
        if let Some(why) = self.broken.read().expect("lock").get(&cluster.uid) {
            return Err(AppError::unavailable(format!(
                "cluster {:?} is not connected: {why}; fix its settings (PATCH /api/v1/clusters/{}) or restart the server",
                cluster.name, cluster.name
            )));
        }
        let kind: ClusterKind =
            cluster.kind.parse().map_err(|e| AppError::internal(format!("cluster {:?}: {e}", cluster.name)))?;
        self.by_kind.get(&kind).cloned().ok_or_else(|| {
            if self.is_empty() {
                AppError::unavailable("this server runs no deployments")
            } else {
                AppError::invalid_field(
                    "cluster",
                    format!("cluster {:?} ({kind}) is not served by this server", cluster.name),
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use yatai_core::deploy::*;

    use super::*;

    struct Fake(ClusterKind);

    #[async_trait::async_trait]
    impl DeployTarget for Fake {
        fn kind(&self) -> ClusterKind {
            self.0
        }
        fn max_replicas(&self) -> u32 {
            1
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
            self.0.to_string()
        }
    }

    fn cluster(uid: &str, kind: &str) -> ClusterRow {
        ClusterRow {
            uid: uid.into(),
            org_uid: "o".into(),
            name: format!("c-{uid}"),
            description: String::new(),
            kind: kind.into(),
            config: "{}".into(),
            creator_uid: None,
            creator_name: None,
            created_at: 0,
            updated_at: None,
        }
    }

    #[test]
    fn a_cluster_gets_its_own_target_before_its_kinds() {
        let local: Arc<dyn DeployTarget> = Arc::new(Fake(ClusterKind::Local));
        let prod: Arc<dyn DeployTarget> = Arc::new(Fake(ClusterKind::Kubernetes));
        let targets = Targets::default().with_kind(local.clone()).with_cluster("k1", prod.clone());
        assert!(Arc::ptr_eq(&targets.for_cluster(&cluster("l", "local")).unwrap(), &local));
        assert!(Arc::ptr_eq(&targets.for_cluster(&cluster("k1", "kubernetes")).unwrap(), &prod));
        let unknown = targets.for_cluster(&cluster("k2", "kubernetes")).err().unwrap();
        assert_eq!(unknown.field(), Some("cluster"), "{unknown}");
        assert_eq!(targets.all().len(), 2);
        let none = Targets::default().for_cluster(&cluster("l", "local")).err().unwrap();
        assert!(matches!(none, AppError::Unavailable(_)));

        // Clusters join and leave at run time, seen by every clone.
        let clone = targets.clone();
        clone.mark_broken("k2", "the kubeconfig expired");
        let broken = targets.for_cluster(&cluster("k2", "kubernetes")).err().unwrap();
        assert!(broken.message().contains("the kubeconfig expired"), "{broken}");
        clone.attach("k2", prod.clone());
        assert!(Arc::ptr_eq(&targets.for_cluster(&cluster("k2", "kubernetes")).unwrap(), &prod));
        assert!(targets.detach("k2").is_some());
        assert!(targets.for_cluster(&cluster("k2", "kubernetes")).is_err());
    }
}
