//! [`KubeTarget`]: yatai's deployments on one Kubernetes cluster, through the operator.
//!
//! Writing is server-side apply with yatai's field manager; reading is from caches that
//! watches keep per namespace (BentoDeployments, BentoRequests, Bentos, and the pods the
//! operator labels), so `status()` costs no request and a change reaches the [`StatusSink`]
//! as soon as the watch sees it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use yatai_core::deploy::{
    ArtifactRef, ClusterConnector, ClusterHealth, ClusterKind, DeployTarget, DeploymentSnapshot, DeploymentSpec,
    ForeignDeployment, InstanceType, KubeClusterConfig, LogSource, Metrics, Phase, StatusSink, TargetError,
};
use yatai_kube_api::names::labels;
use yatai_kube_api::serving::v2alpha1::BentoDeployment;
use yatai_kube_api::{Bento, BentoRequest};

use crate::logs::{self, PodLogs};
use crate::metrics::PodMetrics;
use crate::objects::{self, FIELD_MANAGER, marks};
use crate::phase::{self, Observed};

/// The most replicas one deployment may ask for (the HPA's maximum).
const MAX_REPLICAS: u32 = 100;
/// The same status is reported again this often, so that one written meanwhile by someone
/// else does not stick (as the local runtime does).
const REPORT_AGAIN: Duration = Duration::from_secs(10);

/// Connects yatai to Kubernetes clusters: [`ClusterConnector`] for the server.
#[derive(Clone, Copy, Debug, Default)]
pub struct KubeConnector;

#[async_trait::async_trait]
impl ClusterConnector for KubeConnector {
    async fn probe(&self, config: &KubeClusterConfig) -> ClusterHealth {
        crate::probe::probe(config).await
    }

    async fn connect(
        &self,
        cluster_uid: &str,
        config: &KubeClusterConfig,
        sink: Arc<dyn StatusSink>,
    ) -> Result<Arc<dyn DeployTarget>, TargetError> {
        Ok(KubeTarget::connect(cluster_uid, config, sink).await? as Arc<dyn DeployTarget>)
    }
}

/// The deploy target of one cluster. Dropping it stops its watches and log followers.
pub struct KubeTarget {
    inner: Arc<Inner>,
}

struct Inner {
    cluster_uid: String,
    client: kube::Client,
    url: String,
    /// Requests sent to the API server (watches count when they start).
    requests: Arc<AtomicU64>,
    namespace: String,
    sink: Arc<dyn StatusSink>,
    /// Ticks on every change any watch sees.
    changed: watch::Sender<u64>,
    namespaces: Mutex<HashMap<String, Arc<Watched>>>,
    deployments: Mutex<HashMap<String, Tracked>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Held while BentoRequests and Bentos are written or collected, so that a removal never
    /// collects the bento objects an apply has just written for its BentoDeployment.
    bento_objects: tokio::sync::Mutex<()>,
}

/// The caches of one namespace.
struct Watched {
    bds: Store<BentoDeployment>,
    requests: Store<BentoRequest>,
    bentos: Store<Bento>,
    pods: Store<Pod>,
}

/// A deployment this target runs.
struct Tracked {
    namespace: String,
    name: String,
    /// Whether its status goes to the sink: the server asked for it to run (apply), or follows
    /// it (a BentoDeployment made outside yatai), rather than only looked at it.
    applied: bool,
    logs: Arc<PodLogs>,
    metrics: Arc<PodMetrics>,
    /// The log follower and the metrics sampler.
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl KubeTarget {
    /// Reaches the cluster, starts watching the configured namespace and reporting status.
    pub async fn connect(
        cluster_uid: &str,
        config: &KubeClusterConfig,
        sink: Arc<dyn StatusSink>,
    ) -> Result<Arc<KubeTarget>, TargetError> {
        let requests = Arc::new(AtomicU64::new(0));
        let (client, url) = crate::client::client(config, requests.clone()).await.map_err(TargetError::Refused)?;
        client
            .apiserver_version()
            .await
            .map_err(|e| TargetError::Unavailable(format!("cannot reach the Kubernetes API server at {url}: {e}")))?;
        let (changed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            cluster_uid: cluster_uid.to_string(),
            client,
            url,
            requests,
            namespace: config.namespace.clone(),
            sink,
            changed,
            namespaces: Mutex::default(),
            deployments: Mutex::default(),
            tasks: Mutex::default(),
            bento_objects: tokio::sync::Mutex::default(),
        });
        inner.watched(&config.namespace);
        let reporter = tokio::spawn(report(inner.clone()));
        inner.tasks.lock().expect("not poisoned").push(reporter);
        Ok(Arc::new(KubeTarget { inner }))
    }

    /// How many requests this target has sent to the cluster's API server (a watch counts
    /// once, and again each time it is restarted).
    pub fn api_requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Watches `namespace` (if not yet) and waits, at most 30 s, until its caches hold what
    /// the cluster has; false when they do not (the CRDs missing, the cluster away).
    pub async fn ready(&self, namespace: &str) -> bool {
        let w = self.inner.watched(namespace);
        let all = async {
            w.bds.wait_until_ready().await.is_ok()
                && w.requests.wait_until_ready().await.is_ok()
                && w.bentos.wait_until_ready().await.is_ok()
                && w.pods.wait_until_ready().await.is_ok()
        };
        tokio::time::timeout(Duration::from_secs(30), all).await.unwrap_or(false)
    }
}

/// A BentoDeployment in a watched namespace, whoever made it.
#[derive(Debug, Clone)]
pub struct ObservedDeployment {
    pub namespace: String,
    pub name: String,
    /// The yatai deployment it belongs to; `None`: made outside yatai (kubectl, GitOps).
    pub deployment_uid: Option<String>,
    /// `status.url`: the Ingress host's URL, else the Service's in-cluster address.
    pub url: Option<String>,
    pub snapshot: DeploymentSnapshot,
}

impl KubeTarget {
    /// Where the deployment answers, as the operator wrote it (`http://<name>-<namespace>.<suffix>`
    /// with an Ingress).
    pub fn url(&self, deployment_uid: &str) -> Option<String> {
        let (ns, name) = self.inner.locate(deployment_uid)?;
        let bd = self.inner.watched(&ns).bds.get(&ObjectRef::new(&name).within(&ns))?;
        bd.status.as_ref().map(|s| s.url.clone()).filter(|u| !u.is_empty())
    }

    /// Every BentoDeployment in the watched namespaces (the configured one, those yatai
    /// deployed to, and those passed to [`KubeTarget::ready`]), with its status.
    pub fn observed(&self) -> Vec<ObservedDeployment> {
        let namespaces: Vec<(String, Arc<Watched>)> =
            self.inner.namespaces.lock().expect("not poisoned").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut all = Vec::new();
        for (ns, w) in namespaces {
            for bd in w.bds.state() {
                let name = bd.name_any();
                all.push(ObservedDeployment {
                    snapshot: self.inner.snapshot(&ns, &name),
                    deployment_uid: objects::deployment_uid(&bd).map(String::from),
                    url: bd.status.as_ref().map(|s| s.url.clone()).filter(|u| !u.is_empty()),
                    namespace: ns.clone(),
                    name,
                });
            }
        }
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
    }
}

impl Drop for KubeTarget {
    fn drop(&mut self) {
        self.inner.stop();
    }
}

impl Inner {
    fn stop(&self) {
        for t in self.tasks.lock().expect("not poisoned").drain(..) {
            t.abort();
        }
        self.deployments.lock().expect("not poisoned").clear();
    }

    fn tick(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The caches of a namespace, watching it from now on if it was not watched yet.
    fn watched(&self, ns: &str) -> Arc<Watched> {
        let mut namespaces = self.namespaces.lock().expect("not poisoned");
        if let Some(w) = namespaces.get(ns) {
            return w.clone();
        }
        let mut tasks = self.tasks.lock().expect("not poisoned");
        let client = &self.client;
        let all = watcher::Config::default();
        let (bds, t1) = reflect(Api::namespaced(client.clone(), ns), all.clone(), self.changed.clone());
        let (requests, t2) = reflect(Api::namespaced(client.clone(), ns), all.clone(), self.changed.clone());
        let (bentos, t3) = reflect(Api::namespaced(client.clone(), ns), all, self.changed.clone());
        // Only the pods the operator made, by its label.
        let (pods, t4) = reflect(
            Api::namespaced(client.clone(), ns),
            watcher::Config::default().labels(labels::BENTO_DEPLOYMENT),
            self.changed.clone(),
        );
        tasks.extend([t1, t2, t3, t4]);
        let w = Arc::new(Watched { bds, requests, bentos, pods });
        namespaces.insert(ns.to_string(), w.clone());
        w
    }

    /// Where a deployment is: tracked, or found by yatai's label in a watched namespace (a
    /// deployment applied before the server restarted).
    fn locate(&self, uid: &str) -> Option<(String, String)> {
        if let Some(t) = self.deployments.lock().expect("not poisoned").get(uid) {
            return Some((t.namespace.clone(), t.name.clone()));
        }
        let namespaces: Vec<(String, Arc<Watched>)> =
            self.namespaces.lock().expect("not poisoned").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        namespaces.into_iter().find_map(|(ns, w)| {
            w.bds
                .state()
                .iter()
                .find(|bd| objects::deployment_uid(bd) == Some(uid))
                .map(|bd| (ns.clone(), bd.name_any()))
        })
    }

    fn snapshot(&self, ns: &str, name: &str) -> DeploymentSnapshot {
        let w = self.watched(ns);
        let bd = w.bds.get(&ObjectRef::new(name).within(ns));
        let bento = bd.as_ref().map(|bd| bd.spec.bento.clone()).unwrap_or_default();
        let request = w.requests.get(&ObjectRef::new(&bento).within(ns));
        let bento_exists = w.bentos.get(&ObjectRef::new(&bento).within(ns)).is_some();
        let pods = w.pods.state();
        let mine = phase::pods_of(name, pods.iter().map(|p| &**p));
        phase::snapshot(&Observed { bd: bd.as_deref(), request: request.as_deref(), bento_exists, pods: &mine })
    }

    /// Tracks a deployment, starting its log follower.
    fn track(self: &Arc<Self>, uid: &str, ns: &str, name: &str, applied: bool) -> Arc<PodLogs> {
        let mut deployments = self.deployments.lock().expect("not poisoned");
        if let Some(t) = deployments.get_mut(uid)
            && t.namespace == ns
            && t.name == name
        {
            t.applied |= applied;
            return t.logs.clone();
        }
        let logs = PodLogs::new();
        let metrics = Arc::new(PodMetrics::default());
        let mut tasks = Vec::new();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let pods = self.watched(ns).pods.clone();
            tasks.push(rt.spawn(logs::follow(
                self.client.clone(),
                ns.to_string(),
                name.to_string(),
                pods.clone(),
                self.changed.subscribe(),
                logs.clone(),
            )));
            tasks.push(rt.spawn(crate::metrics::sample(
                self.client.clone(),
                ns.to_string(),
                name.to_string(),
                pods,
                metrics.clone(),
            )));
        }
        deployments.insert(
            uid.to_string(),
            Tracked { namespace: ns.to_string(), name: name.to_string(), applied, logs: logs.clone(), metrics, tasks },
        );
        logs
    }

    async fn apply(self: &Arc<Self>, spec: DeploymentSpec) -> Result<(), TargetError> {
        let ns = spec.namespace.as_str();
        self.watched(ns);
        let bds: Api<BentoDeployment> = Api::namespaced(self.client.clone(), ns);
        // A BentoDeployment of that name that is not this deployment's is someone else's:
        // never overwritten.
        match bds.get_opt(&spec.name).await {
            Ok(Some(existing)) if objects::deployment_uid(&existing) != Some(spec.uid.as_str()) => {
                return Err(TargetError::Conflict(format!(
                    "a BentoDeployment named {} already exists in namespace {ns} of this cluster and is not this \
                     deployment's ({}): choose another name, or delete that BentoDeployment first",
                    spec.name,
                    match objects::deployment_uid(&existing) {
                        Some(_) => "another yatai deployment owns it",
                        None => "it was made outside yatai, with kubectl or by GitOps",
                    }
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(api_error(e, "read BentoDeployments", ns)),
        }
        let _writing = self.bento_objects.lock().await;
        // The secrets' Secrets first: a pod created from the new spec finds them.
        for secret in objects::secrets(&spec) {
            self.write_secret(&secret, ns).await?;
        }
        match &spec.image {
            Some(image) => {
                server_side_apply(&self.client, &objects::bento(&spec, image), "write the Bento", ns).await?
            }
            None => {
                server_side_apply(&self.client, &objects::bento_request(&spec), "write the BentoRequest", ns).await?
            }
        };
        server_side_apply(&self.client, &objects::bento_deployment(&spec), "write the BentoDeployment", ns).await?;
        // Secrets this deployment no longer names, and no one else uses.
        self.collect_secrets(ns, None).await;
        drop(_writing);
        self.track(&spec.uid, ns, &spec.name, true);
        self.tick();
        Ok(())
    }

    /// Writes the Secret of a yatai secret, unless a Secret of that name that yatai did not
    /// write is there: that one is someone else's and is never overwritten.
    async fn write_secret(&self, secret: &Secret, ns: &str) -> Result<(), TargetError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let name = secret.name_any();
        match secrets.get_metadata_opt(&name).await {
            Ok(Some(existing)) if existing.labels().get(marks::SECRET_NAME).is_none() => {
                return Err(TargetError::Conflict(format!(
                    "a Secret named {name} already exists in namespace {ns} and was not written by yatai: yatai keeps                      the values of secret {:?} there; rename or delete that Secret, or use another secret name",
                    secret.labels().get(marks::SECRET_NAME).cloned().unwrap_or_default()
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(api_error(e, "read Secrets", ns)),
        }
        server_side_apply(&self.client, secret, "write the Secret of a secret", ns).await
    }

    async fn terminate(&self, uid: &str) {
        let Some((ns, name)) = self.locate(uid) else { return };
        let bds: Api<BentoDeployment> = Api::namespaced(self.client.clone(), &ns);
        // Only a BentoDeployment yatai made is scaled (a followed foreign one is not yatai's).
        if let Ok(found) = bds.get_opt(&name).await
            && found.is_none_or(|bd| objects::deployment_uid(&bd) != Some(uid))
        {
            return;
        }
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let patch = objects::scale_to_zero_patch();
        // A short outage of the API server should not leave the deployment running.
        for attempt in 0..5u32 {
            match bds.patch(&name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => break,
                Err(kube::Error::Api(e)) if e.code == 404 => break,
                Err(e) => {
                    tracing::warn!(deployment = %name, namespace = %ns, "scaling to zero failed: {e}");
                    tokio::time::sleep(Duration::from_millis(500) * 2u32.pow(attempt)).await;
                }
            }
        }
        self.tick();
    }

    async fn remove(&self, uid: &str) {
        let Some((ns, name)) = self.locate(uid) else { return };
        self.deployments.lock().expect("not poisoned").remove(uid);
        let bds: Api<BentoDeployment> = Api::namespaced(self.client.clone(), &ns);
        match bds.get_opt(&name).await {
            Ok(Some(bd)) if objects::deployment_uid(&bd) == Some(uid) => {
                if let Err(e) = bds.delete(&name, &DeleteParams::background()).await {
                    tracing::warn!(deployment = %name, namespace = %ns, "deleting the BentoDeployment failed: {e}");
                }
            }
            _ => return,
        };
        self.collect_bento_objects(&ns, &name).await;
        let _writing = self.bento_objects.lock().await;
        self.collect_secrets(&ns, Some(&name)).await;
    }

    /// Deletes the Secrets yatai wrote in `ns` for its secrets that no BentoDeployment (but
    /// `removed`, going) and no BentoRequest refers to any more. Called with `bento_objects`
    /// held, so that an apply's new Secret is not collected before its BentoDeployment is in.
    async fn collect_secrets(&self, ns: &str, removed: Option<&str>) {
        let bds: Api<BentoDeployment> = Api::namespaced(self.client.clone(), ns);
        let requests: Api<BentoRequest> = Api::namespaced(self.client.clone(), ns);
        let (Ok(bds), Ok(requests)) = (bds.list(&Default::default()).await, requests.list(&Default::default()).await)
        else {
            tracing::warn!(namespace = %ns, "not collecting Secrets: listing what refers to them failed");
            return;
        };
        let mut used = std::collections::HashSet::new();
        for bd in bds.items.iter().filter(|bd| Some(bd.name_any().as_str()) != removed) {
            let runners = bd.spec.runners.iter().flat_map(|r| r.envs.iter());
            used.extend(objects::referenced_secrets(bd.spec.envs.iter().chain(runners), bd.spec.volumes.iter()));
        }
        for r in &requests.items {
            used.extend(objects::referenced_secrets(r.spec.image_builder_extra_container_env.iter(), []));
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let ours = ListParams::default().labels(&format!(
            "{}={},{}",
            marks::MANAGED_BY,
            marks::MANAGED_BY_VALUE,
            marks::SECRET_NAME
        ));
        let listed = match secrets.list_metadata(&ours).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(namespace = %ns, "not collecting Secrets: listing them failed: {e}");
                return;
            }
        };
        for s in listed {
            let name = s.name_any();
            if !used.contains(&name)
                && let Err(e) = secrets.delete(&name, &DeleteParams::background()).await
            {
                tracing::warn!(namespace = %ns, "deleting the Secret {name} failed: {e}");
            }
        }
    }

    /// Deletes the BentoRequests and Bentos yatai wrote in `ns` that no BentoDeployment uses
    /// any more (`removed` is going): the current revision's, and those earlier revisions left.
    /// They are per bento, shared by the deployments of the same bento in the namespace.
    async fn collect_bento_objects(&self, ns: &str, removed: &str) {
        let _writing = self.bento_objects.lock().await;
        let bds: Api<BentoDeployment> = Api::namespaced(self.client.clone(), ns);
        // Read now, not from the cache: an apply just before this may not be in it yet.
        let used: Vec<String> = match bds.list(&Default::default()).await {
            Ok(list) => list.items.into_iter().filter(|bd| bd.name_any() != removed).map(|bd| bd.spec.bento).collect(),
            Err(e) => {
                tracing::warn!(namespace = %ns, "not collecting bento objects: listing BentoDeployments failed: {e}");
                return;
            }
        };
        let ours = ListParams::default().labels(&format!("{}={}", marks::MANAGED_BY, marks::MANAGED_BY_VALUE));
        let requests: Api<BentoRequest> = Api::namespaced(self.client.clone(), ns);
        for r in requests.list(&ours).await.map(|l| l.items).unwrap_or_default() {
            let name = r.name_any();
            if !used.contains(&name)
                && let Err(e) = requests.delete(&name, &DeleteParams::background()).await
            {
                tracing::warn!(namespace = %ns, "deleting the BentoRequest {name} failed: {e}");
            }
        }
        let bentos: Api<Bento> = Api::namespaced(self.client.clone(), ns);
        for b in bentos.list(&ours).await.map(|l| l.items).unwrap_or_default() {
            let name = b.name_any();
            if !used.contains(&name)
                && let Err(e) = bentos.delete(&name, &DeleteParams::background()).await
            {
                tracing::warn!(namespace = %ns, "deleting the Bento {name} failed: {e}");
            }
        }
    }
}

/// A watch of one kind into a cache; every event ticks `changed`.
fn reflect<K>(api: Api<K>, config: watcher::Config, changed: watch::Sender<u64>) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream =
        watcher(api, config).default_backoff().modify(|o: &mut K| o.meta_mut().managed_fields = None).reflect(writer);
    let task = tokio::spawn(async move {
        stream
            .for_each(|event| {
                if let Err(e) = &event {
                    tracing::debug!("watching {}: {e}", K::plural(&()));
                }
                changed.send_modify(|n| *n = n.wrapping_add(1));
                futures::future::ready(())
            })
            .await;
    });
    (store, task)
}

async fn server_side_apply<K>(client: &kube::Client, object: &K, what: &str, ns: &str) -> Result<(), TargetError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let value = yatai_kube_api::apply_body(object);
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(value))
        .await
        .map(|_| ())
        .map_err(|e| api_error(e, what, ns))
}

/// The cluster's refusal in words a person can act on.
fn api_error(e: kube::Error, what: &str, ns: &str) -> TargetError {
    match e {
        kube::Error::Api(e) if e.code == 404 && e.message.contains("namespaces") => TargetError::Refused(format!(
            "namespace {ns} does not exist in the cluster: create it (kubectl create namespace {ns}) or deploy to \
             another namespace"
        )),
        kube::Error::Api(e) if e.code == 404 => TargetError::Refused(format!(
            "cannot {what}: the cluster does not serve yatai's CRDs ({}): install them with `yatai crds | kubectl \
             apply -f -` or the Helm chart",
            e.message
        )),
        kube::Error::Api(e) if e.code == 403 => TargetError::Refused(format!(
            "cannot {what} in namespace {ns}: yatai's credentials lack the permission ({}): bind them the Role of the \
             Helm chart",
            e.message
        )),
        kube::Error::Api(e) if e.code == 409 || e.code == 422 || e.code == 400 => {
            TargetError::Refused(format!("cannot {what}: the cluster refused it: {}", e.message))
        }
        e => TargetError::Unavailable(format!("cannot {what}: the cluster's API did not answer: {e}")),
    }
}

/// Reports every phase change of the deployments yatai applied or follows to the sink, and the same
/// phase again now and then.
async fn report(inner: Arc<Inner>) {
    let mut changed = inner.changed.subscribe();
    let mut reported: HashMap<String, (Phase, String, Instant)> = HashMap::new();
    loop {
        let applied: Vec<(String, String, String)> = inner
            .deployments
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, t)| t.applied)
            .map(|(uid, t)| (uid.clone(), t.namespace.clone(), t.name.clone()))
            .collect();
        reported.retain(|uid, _| applied.iter().any(|(u, _, _)| u == uid));
        for (uid, ns, name) in applied {
            let snap = inner.snapshot(&ns, &name);
            let again = match reported.get(&uid) {
                Some((phase, reason, at)) => {
                    *phase != snap.phase || *reason != snap.reason || at.elapsed() >= REPORT_AGAIN
                }
                None => true,
            };
            if again {
                if reported.get(&uid).is_none_or(|(p, r, _)| *p != snap.phase || *r != snap.reason) {
                    tracing::debug!(cluster = %inner.cluster_uid, deployment = %name, phase = %snap.phase.as_str(), reason = %snap.reason, "status");
                    // In the deployment's log too, as the local runtime writes its own lines.
                    let logs = inner.deployments.lock().expect("not poisoned").get(&uid).map(|t| t.logs.clone());
                    if let Some(logs) = logs {
                        let line = match snap.reason.as_str() {
                            "" => snap.phase.as_str().to_string(),
                            reason => format!("{}: {reason}", snap.phase.as_str()),
                        };
                        logs.append(&k8s_openapi::jiff::Timestamp::now().to_string(), "yatai", "status", &line);
                    }
                }
                inner.sink.status(&uid, &name, snap.phase, &snap.reason);
                reported.insert(uid, (snap.phase, snap.reason, Instant::now()));
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(REPORT_AGAIN) => {}
        }
    }
}

#[async_trait::async_trait]
impl DeployTarget for KubeTarget {
    fn kind(&self) -> ClusterKind {
        ClusterKind::Kubernetes
    }

    fn max_replicas(&self) -> u32 {
        MAX_REPLICAS
    }

    fn instance_types(&self) -> Vec<InstanceType> {
        objects::instance_types()
    }

    async fn check(&self, _bento: &ArtifactRef) -> Result<(), TargetError> {
        // The operator (or the server's builder) reads the bento; nothing to check here.
        Ok(())
    }

    fn allocate_port(&self, _in_use: &[i64]) -> Result<Option<u16>, TargetError> {
        Ok(None)
    }

    async fn apply(&self, spec: DeploymentSpec) -> Result<(), TargetError> {
        self.inner.apply(spec).await
    }

    async fn terminate(&self, deployment_uid: &str) {
        self.inner.terminate(deployment_uid).await
    }

    async fn remove(&self, deployment_uid: &str) {
        self.inner.remove(deployment_uid).await
    }

    fn status(&self, deployment_uid: &str) -> Option<DeploymentSnapshot> {
        let (ns, name) = self.inner.locate(deployment_uid)?;
        Some(self.inner.snapshot(&ns, &name))
    }

    fn logs(&self, deployment_uid: &str) -> Option<Arc<dyn LogSource>> {
        let (ns, name) = self.inner.locate(deployment_uid)?;
        Some(self.inner.track(deployment_uid, &ns, &name, false) as Arc<dyn LogSource>)
    }

    fn metrics(&self, deployment_uid: &str) -> Option<Metrics> {
        let (ns, name) = self.inner.locate(deployment_uid)?;
        self.inner.track(deployment_uid, &ns, &name, false);
        let deployments = self.inner.deployments.lock().expect("not poisoned");
        deployments.get(deployment_uid).map(|t| t.metrics.metrics())
    }

    fn url(&self, deployment_uid: &str) -> Option<String> {
        KubeTarget::url(self, deployment_uid)
    }

    async fn shutdown(&self) {
        self.inner.stop();
    }

    fn describe(&self) -> String {
        format!("Kubernetes cluster at {} (namespace {})", self.inner.url, self.inner.namespace)
    }

    async fn foreign(&self) -> Option<Vec<ForeignDeployment>> {
        let namespaces: Vec<String> = self.inner.namespaces.lock().expect("not poisoned").keys().cloned().collect();
        // Until every cache holds what the cluster has, what is missing is unknown, not gone.
        for ns in &namespaces {
            if !self.ready(ns).await {
                return None;
            }
        }
        let mut all = Vec::new();
        for ns in namespaces {
            let w = self.inner.watched(&ns);
            for bd in w.bds.state().iter().filter(|bd| objects::deployment_uid(bd).is_none()) {
                let bento = w.bentos.get(&ObjectRef::new(&bd.spec.bento).within(&ns));
                let request = w.requests.get(&ObjectRef::new(&bd.spec.bento).within(&ns));
                all.push(objects::foreign(bd, bento.as_deref(), request.as_deref()));
            }
        }
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Some(all)
    }

    fn follow_foreign(&self, deployment_uid: &str, namespace: &str, name: &str) {
        self.inner.track(deployment_uid, namespace, name, true);
        self.inner.tick();
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.changed.subscribe())
    }
}
