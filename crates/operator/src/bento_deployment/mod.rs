//! BentoDeployment → Deployment, Service, HPA and Ingress for the bento's entry service, and a
//! status that says whether it serves.
//!
//! [`children`] builds the objects (pure), [`status`] reads serving from the Deployment and its
//! pods (pure); [`reconcile`] applies the one and writes the other. Every child is applied
//! with server-side apply by one field manager and owned by the BentoDeployment, so deleting it
//! garbage-collects them; `replicas` is never set, so the HPA owns it.

pub mod caches;
pub mod children;
pub mod status;

#[cfg(test)]
mod mock_tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event as PodEvent, Pod};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use yatai_kube_api::condition::{self, FALSE, TRUE};
use yatai_kube_api::names::labels;
use yatai_kube_api::resources::conditions as br_conditions;
use yatai_kube_api::serving::conditions::{AVAILABLE, BENTO_FOUND, BENTO_REQUEST_FOUND};
use yatai_kube_api::serving::v2alpha1::{BentoDeployment, BentoDeploymentStatus};

use self::caches::Caches;
use crate::context::{Context, FIELD_MANAGER, Namespaces};
use crate::metrics::ControllerMetrics;
use crate::network::{self, Network};

/// How often a deployment that is not serving yet is looked at again, besides the watches
/// (pod problems such as an image pull back-off do not change the Deployment).
const NOT_READY_RECHECK: Duration = Duration::from_secs(10);
/// How often a serving deployment is checked, as a safety net for missed events; its children
/// are then applied even when the caches say they are as wanted.
const RESYNC: Duration = Duration::from_secs(300);
/// Triggers for one object that arrive closer together than this make one reconcile (a new
/// Deployment's status moves several times in its first second).
const DEBOUNCE: Duration = Duration::from_millis(250);
/// The pods of a deployment that does not serve are read to say why only once its Deployment
/// has made no progress for this long: before that, nothing is wrong yet.
const PODS_EXPLAIN_AFTER: Duration = Duration::from_secs(5);
/// The `Available=False` reason while a replica runs but has not passed its readiness probe.
const NOT_READY: &str = "NotReady";
/// The annotation on each child with the digest of what was last applied: a child whose
/// cached copy carries the digest of what would be applied now is not applied again.
pub const APPLIED_DIGEST: &str = "yatai.ai/applied-digest";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Network(String),
}

/// What each reconcile of one controller shares.
pub struct State {
    pub ctx: Context,
    pub suffix: network::Suffix,
    caches: Caches,
    failures: Mutex<HashMap<String, u32>>,
    /// When each deployment's children were last applied whatever the caches said.
    full_applies: Mutex<HashMap<String, Instant>>,
    metrics: Arc<ControllerMetrics>,
}

impl State {
    fn new(ctx: Context, suffix: network::Suffix, caches: Caches, metrics: Arc<ControllerMetrics>) -> State {
        State { ctx, suffix, caches, failures: Mutex::default(), full_applies: Mutex::default(), metrics }
    }
}

/// Reconciles BentoDeployments in the watched namespaces until the process stops.
pub async fn run(ctx: Context) {
    let suffix = network::resolve_suffix(ctx.clone());
    let metrics = ctx.metrics.controller("bentodeployment");
    let scopes: Vec<Option<String>> = match &ctx.settings.namespaces {
        Namespaces::All => vec![None],
        Namespaces::Some(list) => list.iter().cloned().map(Some).collect(),
    };
    futures::future::join_all(
        scopes.into_iter().map(|ns| controller(ctx.clone(), suffix.clone(), metrics.clone(), ns)),
    )
    .await;
}

fn api<K>(client: &kube::Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn controller(ctx: Context, suffix: network::Suffix, metrics: Arc<ControllerMetrics>, ns: Option<String>) {
    let client = ctx.client.clone();
    let ns = ns.as_deref();
    let owned = watcher::Config::default().labels(labels::BENTO_DEPLOYMENT);
    use caches::{reflect, trim};
    let (deployments, deployment_changes) = reflect(api(&client, ns), owned.clone(), trim::deployment);
    let (services, service_changes) = reflect(api(&client, ns), owned.clone(), trim::service);
    let (hpas, hpa_changes) = reflect(api(&client, ns), owned.clone(), trim::hpa);
    let (ingresses, ingress_changes) = reflect(api(&client, ns), owned, trim::ingress);
    let (bentos, bento_changes) = reflect(api(&client, ns), watcher::Config::default(), trim::nothing);
    let (requests, request_changes) = reflect(api(&client, ns), watcher::Config::default(), trim::nothing);
    let (network, network_changes) = reflect(
        Api::<ConfigMap>::namespaced(client.clone(), &ctx.settings.operator_namespace),
        watcher::Config::default().fields(&format!("metadata.name={}", network::CONFIG_MAP)),
        trim::nothing,
    );
    let caches = Caches { bentos, requests, deployments, services, hpas, ingresses, network };
    let state = Arc::new(State::new(ctx, suffix, caches, metrics));
    let controller = Controller::new(api::<BentoDeployment>(&client, ns), watcher::Config::default());
    let store = controller.store();
    let by_bento = move |namespace: Option<String>, name: String| {
        store
            .state()
            .into_iter()
            .filter(|bd| bd.namespace() == namespace && bd.spec.bento == name)
            .map(|bd| ObjectRef::from_obj(&*bd))
            .collect::<Vec<_>>()
    };
    let by_bento2 = by_bento.clone();
    // A new suffix (discovered once), or a changed `network` ConfigMap, changes every
    // deployment's Ingress.
    let suffix_changes =
        futures::stream::unfold(
            state.suffix.clone(),
            |mut rx| async move { rx.changed().await.ok().map(|()| ((), rx)) },
        );
    let network_changes = network_changes
        .backoff(crate::context::WatchBackoff::default())
        .filter_map(|r| std::future::ready(r.ok().map(|_| ())));
    controller
        .owns_stream(deployment_changes)
        .owns_stream(service_changes)
        .owns_stream(hpa_changes)
        .owns_stream(ingress_changes)
        .watches_stream(bento_changes, move |b| by_bento(b.namespace(), b.name_any()))
        .watches_stream(request_changes, move |b| by_bento2(b.namespace(), b.name_any()))
        .reconcile_all_on(futures::stream::select(suffix_changes, network_changes))
        .trigger_backoff(crate::context::WatchBackoff::default())
        .with_config(
            controller::Config::default().concurrency(state.ctx.settings.reconcile_concurrency).debounce(DEBOUNCE),
        )
        .run(reconcile, error_policy, state)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("bentodeployment controller: {e}");
            }
        })
        .await;
}

async fn reconcile(bd: Arc<BentoDeployment>, state: Arc<State>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&bd, &state).await;
    state.metrics.observe(started.elapsed(), result.is_err());
    if result.is_ok() {
        state.failures.lock().expect("not poisoned").remove(&key(&bd));
    }
    result
}

fn key(bd: &BentoDeployment) -> String {
    format!("{}/{}", bd.namespace().unwrap_or_default(), bd.name_any())
}

/// Exponential backoff per object (1 s, 2 s, 4 s … 5 min), never a hot loop.
fn error_policy(bd: Arc<BentoDeployment>, error: &Error, state: Arc<State>) -> Action {
    let mut failures = state.failures.lock().expect("not poisoned");
    let n = failures.entry(key(&bd)).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300));
    tracing::warn!(bentodeployment = %key(&bd), attempt = *n, retry_in = ?delay, "reconcile failed: {error}");
    Action::requeue(delay)
}

async fn reconcile_inner(bd: &BentoDeployment, state: &State) -> Result<Action, Error> {
    let ctx = &state.ctx;
    let ns = bd.namespace().unwrap_or_default();
    let name = bd.name_any();
    let generation = bd.metadata.generation;
    let mut status = bd.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    state.caches.ready().await;

    let Some(bento) = cached_or_get(&state.caches.bentos, ctx, &ns, &bd.spec.bento).await? else {
        return waiting_for_bento(bd, state, status).await;
    };
    condition::set(&mut status.conditions, BENTO_FOUND, TRUE, "BentoFound", "", generation);
    condition::remove(&mut status.conditions, BENTO_REQUEST_FOUND);

    let network = match caches::cached(&state.caches.network, &ctx.settings.operator_namespace, network::CONFIG_MAP) {
        Some(cm) => Network::from_config_map(cm.data.as_ref().unwrap_or(&Default::default())),
        None => Network::from_config_map(&Default::default()),
    }
    .map_err(Error::Network)?;
    let suffix = state.suffix.borrow().clone();
    let children = match children::build(bd, &bento, &network, suffix.as_deref()) {
        Ok(c) => c,
        Err(invalid) => {
            let changed =
                condition::set(&mut status.conditions, AVAILABLE, FALSE, "InvalidSpec", &invalid.0, generation);
            write_status(bd, state, status, changed.then(|| ("InvalidSpec", invalid.0.clone()))).await?;
            // Nothing to retry until the BentoDeployment or its Bento changes.
            return Ok(Action::await_change());
        }
    };

    // Every child is applied when the spec changed (the caches hold other digests), when one
    // is missing, and every RESYNC whatever the caches say (someone may have edited a field
    // the operator owns).
    let force = {
        let mut full = state.full_applies.lock().expect("not poisoned");
        let due = full.get(&key(bd)).is_none_or(|at| at.elapsed() >= RESYNC);
        if due {
            full.insert(key(bd), Instant::now());
        }
        due
    };
    let applied = apply_all(state, &ns, &name, bd, &children, force).await;
    let (deployment, runner_deployments) = match applied {
        Ok(d) => d,
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 422 || e.code == 400 => {
            // Kubernetes refused the objects (an impossible quantity, a bad label): a spec
            // problem, said in the condition; retried slowly in case the cause is elsewhere.
            let message = format!("Kubernetes refused the deployment's objects: {}", e.message);
            let changed = condition::set(&mut status.conditions, AVAILABLE, FALSE, "InvalidSpec", &message, generation);
            write_status(bd, state, status, changed.then(|| ("InvalidSpec", message.clone()))).await?;
            return Ok(Action::requeue(RESYNC));
        }
        Err(e) => return Err(e),
    };

    // Serving means the API server and every runner serve. The pods are read only when
    // something does not, to say why.
    let runners_serving = || {
        children.runners.iter().zip(&runner_deployments).find_map(|(w, d)| {
            let s = status::serving(d, w.min_replicas, &[]);
            (!s.available).then(|| (w.deployment.metadata.name.clone().unwrap_or_default(), s))
        })
    };
    let mut serving = status::serving(&deployment, children.min_replicas, &[]);
    if serving.available
        && let Some((runner, s)) = runners_serving()
    {
        serving = status::Serving {
            available: false,
            reason: s.reason,
            message: format!("{runner}: {}", s.message),
            ..serving
        };
    }
    let stalled = stalled_for(&deployment).is_some_and(|d| d >= PODS_EXPLAIN_AFTER);
    if !serving.available && children.min_replicas > 0 && stalled {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let selector = format!("{}={name}", labels::BENTO_DEPLOYMENT);
        let pods = pods.list(&ListParams::default().labels(&selector)).await?.items;
        if let Some((reason, message)) = yatai_kube_api::pods::problem(&pods) {
            serving.reason = reason;
            serving.message = message;
        } else if let Some((pod, container)) = yatai_kube_api::pods::not_ready(&pods) {
            let failure = last_probe_failure(ctx, &ns, &pod).await;
            serving.reason = NOT_READY.into();
            serving.message = yatai_kube_api::pods::not_ready_message(&pod, &container, failure.as_deref());
        }
    }
    let mut message = serving.message.clone();
    if bd.spec.ingress.enabled && suffix.is_none() {
        message.push_str("; the Ingress waits for the domain suffix (see the operator's log)");
    }
    let (cstatus, reason) = if serving.available { (TRUE, "Ready") } else { (FALSE, serving.reason.as_str()) };
    let changed = condition::set(&mut status.conditions, AVAILABLE, cstatus, reason, &message, generation);
    status.replicas = Some(serving.replicas);
    status.updated_replicas = Some(serving.updated);
    status.ready_replicas = Some(serving.ready);
    status.available_replicas = Some(serving.available_replicas);
    status.printer_ready = format!("{}/{}", serving.ready, children.min_replicas);
    status.pod_selector = [(labels::SELECTOR.to_string(), name.clone())].into();
    status.url = children.url.clone().unwrap_or_else(|| format!("http://{name}.{ns}.svc.cluster.local:3000"));
    let event = changed.then(|| (reason, message.clone()));
    write_status(bd, state, status, event).await?;
    Ok(Action::requeue(if serving.available {
        RESYNC
    } else if stalled {
        NOT_READY_RECHECK
    } else {
        PODS_EXPLAIN_AFTER
    }))
}

/// The last probe failure the kubelet reported for `pod` (its newest `Unhealthy` event), so
/// that a deployment that never turns ready says why. Events are best effort: an error reads as
/// none.
async fn last_probe_failure(ctx: &Context, ns: &str, pod: &str) -> Option<String> {
    let events: Api<PodEvent> = Api::namespaced(ctx.client.clone(), ns);
    let fields = format!("involvedObject.kind=Pod,involvedObject.name={pod},reason=Unhealthy");
    let list = match events.list(&ListParams::default().fields(&fields)).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::debug!(%pod, "reading the pod's events: {e}");
            return None;
        }
    };
    let when = |e: &PodEvent| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
    };
    list.into_iter().max_by_key(|e| when(e)).and_then(|e| e.message)
}

/// How long the Deployment has made no progress (by its `Progressing` condition, which the
/// Deployment controller touches whenever a replica set or pod moves on); `None` before it has
/// said anything.
fn stalled_for(deployment: &Deployment) -> Option<Duration> {
    let conditions = deployment.status.as_ref()?.conditions.as_ref()?;
    let progressing = conditions.iter().find(|c| c.type_.as_deref() == Some("Progressing"))?;
    let at = progressing.last_update_time.as_ref().or(progressing.last_transition_time.as_ref())?;
    let now = k8s_openapi::jiff::Timestamp::now();
    Some(Duration::from_secs(now.as_second().saturating_sub(at.0.as_second()).max(0) as u64))
}

/// `namespace/name` from the cache, or — when the cache has not seen it, as for a Bento created
/// just before the BentoDeployment naming it, whose watch event is still on its way — from the
/// API server, so that a missing object is never reported before it is really missing.
async fn cached_or_get<K>(
    store: &kube::runtime::reflector::Store<K>,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<Arc<K>>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + 'static,
{
    if let Some(o) = caches::cached(store, ns, name) {
        return Ok(Some(o));
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api.get_opt(name).await?.map(Arc::new))
}

/// No Bento yet: say whether a BentoRequest will produce it, or why it will not.
async fn waiting_for_bento(
    bd: &BentoDeployment,
    state: &State,
    mut status: BentoDeploymentStatus,
) -> Result<Action, Error> {
    let ns = bd.namespace().unwrap_or_default();
    let generation = bd.metadata.generation;
    let request = cached_or_get(&state.caches.requests, &state.ctx, &ns, &bd.spec.bento).await?;
    let bento = &bd.spec.bento;
    condition::set(
        &mut status.conditions,
        BENTO_FOUND,
        FALSE,
        "BentoNotFound",
        &format!("no Bento {bento} in {ns}"),
        generation,
    );
    let (reason, message) = match &request {
        None => {
            condition::set(
                &mut status.conditions,
                BENTO_REQUEST_FOUND,
                FALSE,
                "BentoRequestNotFound",
                &format!("no BentoRequest {bento} in {ns}"),
                generation,
            );
            (
                "BentoNotFound",
                format!(
                    "neither a Bento nor a BentoRequest named {bento} exists in namespace {ns}: create one, or fix \
                     spec.bento"
                ),
            )
        }
        Some(request) => {
            condition::set(&mut status.conditions, BENTO_REQUEST_FOUND, TRUE, "BentoRequestFound", "", generation);
            let conditions = request.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
            // The reasons after which the BentoRequest will not produce the Bento without help.
            use crate::bento_request::plan::reasons as r;
            const STUCK: [&str; 7] = [
                r::BUILD_FAILED,
                r::UNBUILDABLE,
                r::TIMEOUT,
                r::REGISTRY_UNREACHABLE,
                r::NO_IMAGE_REGISTRY,
                r::INVALID_SPEC,
                "Failed",
            ];
            let failed = [
                br_conditions::IMAGE_EXISTS_CHECKED,
                br_conditions::IMAGE_BUILDING,
                br_conditions::IMAGE_EXISTS,
                br_conditions::BENTO_AVAILABLE,
            ]
            .iter()
            .filter_map(|t| condition::find(conditions, t))
            .find(|c| c.status == FALSE && STUCK.contains(&c.reason.as_str()));
            match failed {
                Some(c) => ("BentoRequestFailed", format!("BentoRequest {bento}: {}: {}", c.reason, c.message)),
                None => ("WaitingForBento", format!("waiting for BentoRequest {bento} to produce the Bento")),
            }
        }
    };
    let changed = condition::set(&mut status.conditions, AVAILABLE, FALSE, reason, &message, generation);
    write_status(bd, state, status, changed.then(|| (reason, message.clone()))).await?;
    // The Bento and BentoRequest watches bring it back when either appears or changes.
    Ok(Action::requeue(RESYNC))
}

async fn apply_all(
    state: &State,
    ns: &str,
    name: &str,
    bd: &BentoDeployment,
    children: &children::Children,
    force: bool,
) -> Result<(Deployment, Vec<Deployment>), Error> {
    let (ctx, c) = (&state.ctx, &state.caches);
    // Runners first: the API server is told where they are.
    let mut runner_deployments = Vec::new();
    for w in &children.runners {
        runner_deployments.push(ensure(ctx, &c.deployments, ns, &w.deployment, force).await?);
        ensure(ctx, &c.services, ns, &w.service, force).await?;
        ensure(ctx, &c.hpas, ns, &w.hpa, force).await?;
    }
    let deployment = ensure(ctx, &c.deployments, ns, &children.deployment, force).await?;
    ensure(ctx, &c.services, ns, &children.service, force).await?;
    ensure(ctx, &c.hpas, ns, &children.hpa, force).await?;
    match &children.ingress {
        Some(ingress) => {
            ensure(ctx, &c.ingresses, ns, ingress, force).await?;
        }
        None if !bd.spec.ingress.enabled => {
            // Disabled: remove the one we made, never someone else's.
            if let Some(existing) = caches::cached(&c.ingresses, ns, name) {
                let ours = existing.owner_references().iter().any(|o| Some(&o.uid) == bd.uid().as_ref());
                if ours {
                    let ingresses: Api<Ingress> = Api::namespaced(ctx.client.clone(), ns);
                    match ingresses.delete(name, &DeleteParams::default()).await {
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Ok(_) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        None => {}
    }
    Ok((deployment, runner_deployments))
}

/// Applies `object` unless the cache holds it as last applied (same digest) and `force` is
/// off; returns the object as the API server (or the cache) has it.
async fn ensure<K>(ctx: &Context, store: &Store<K>, ns: &str, object: &K, force: bool) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
        + 'static,
{
    let digest =
        yatai_kube_api::names::md5_hex(&serde_json::to_string(object).expect("a Kubernetes object serializes"));
    let name = object.meta().name.clone().unwrap_or_default();
    if !force
        && let Some(live) = caches::cached(store, ns, &name)
        && live.annotations().get(APPLIED_DIGEST) == Some(&digest)
    {
        return Ok((*live).clone());
    }
    let mut object = object.clone();
    object.meta_mut().annotations.get_or_insert_default().insert(APPLIED_DIGEST.to_string(), digest);
    apply(ctx, ns, &object).await
}

async fn apply<K>(ctx: &Context, ns: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let name = object.meta().name.clone().unwrap_or_default();
    let value = yatai_kube_api::apply_body(object);
    Ok(api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(value)).await?)
}

/// Writes the status when it changed, and publishes an Event when a condition moved.
async fn write_status(
    bd: &BentoDeployment,
    state: &State,
    status: BentoDeploymentStatus,
    event: Option<(&str, String)>,
) -> Result<(), Error> {
    if bd.status.as_ref() != Some(&status) {
        let api: Api<BentoDeployment> = Api::namespaced(state.ctx.client.clone(), &bd.namespace().unwrap_or_default());
        let patch = serde_json::json!({ "status": status });
        api.patch_status(&bd.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    if let Some((reason, message)) = event {
        let available = condition::is_true(&status.conditions, AVAILABLE);
        let ev = Event {
            type_: if available || reason == "Deploying" || reason == "WaitingForBento" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: reason.to_string(),
            note: Some(message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = state.ctx.recorder.publish(&ev, &bd.object_ref(&())).await {
            tracing::warn!("publishing an Event for {}: {e}", key(bd));
        }
    }
    Ok(())
}
