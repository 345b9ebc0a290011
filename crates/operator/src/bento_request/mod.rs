//! BentoRequest → image (found in the registry, or built in-process by the daemonless
//! builder) → Bento.
//!
//! A reconcile walks the steps [`plan::decide`] names, recording each in Yatai's conditions
//! (`ImageExistsChecked`, `ImageExists`, `ImageBuilding`, `BentoAvailable`). Builds run in
//! tasks of their own, at most `--build-concurrency` at once, so a long build never holds up
//! the reconciles of other objects; a finished build triggers a reconcile of its request.
//! Failures are written into the conditions and an Event, and retried with exponential backoff
//! (a status write re-triggers the watch, so the backoff is enforced here, not only by the
//! controller's error policy).

pub mod build;
pub mod build_env;
#[cfg(test)]
mod mock_tests;
pub mod plan;
pub mod registry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::{LocalObjectReference, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::Semaphore;
use yatai_kube_api::condition::{self, FALSE, TRUE};
use yatai_kube_api::resources::{
    Bento, BentoContext, BentoModel, BentoRequest, BentoRequestStatus, BentoSpec, conditions as c,
};

use crate::context::{Context, FIELD_MANAGER, Namespaces};
use build::{BentoFacts, Built, Failed, Job, Origin};
use plan::{Step, reasons};
use registry::{REGCRED_SECRET, RegistryAuth};

/// Reconciles BentoRequests in the watched namespaces until the process stops.
pub async fn run(ctx: Context) {
    let state = Arc::new(State::new(ctx.clone()));
    match &ctx.settings.namespaces {
        Namespaces::All => {
            controller(state, Api::all(ctx.client.clone()), Api::all(ctx.client.clone()), None).await;
        }
        Namespaces::Some(list) => {
            let all = list.iter().map(|ns| {
                let (requests, bentos) =
                    (Api::namespaced(ctx.client.clone(), ns), Api::namespaced(ctx.client.clone(), ns));
                controller(state.clone(), requests, bentos, Some(ns.clone()))
            });
            futures::future::join_all(all).await;
        }
    }
}

async fn controller(state: Arc<State>, requests: Api<BentoRequest>, bentos: Api<Bento>, namespace: Option<String>) {
    let (tx, rx) = mpsc::unbounded();
    state.triggers.lock().unwrap().insert(namespace, tx);
    Controller::new(requests, watcher::Config::default())
        .owns(bentos, watcher::Config::default())
        .reconcile_on(rx)
        .trigger_backoff(crate::context::WatchBackoff::default())
        .run(reconcile, error_policy, state)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!("bentorequest controller: {e}");
            }
            futures::future::ready(())
        })
        .await;
}

/// `namespace/name`.
type Key = (String, String);

/// A build this operator started.
enum BuildSlot {
    Running,
    Finished { image: String, generation: Option<i64>, result: Result<Built, Failed> },
}

/// Retries of one request: how many in a row failed, and not before when to try again.
struct Retry {
    attempts: u32,
    not_before: Instant,
    generation: Option<i64>,
}

pub struct State {
    ctx: Context,
    build_slots: Semaphore,
    builds: Mutex<HashMap<Key, BuildSlot>>,
    retries: Mutex<HashMap<Key, Retry>>,
    /// One per controller (per namespace, or `None` for all): wakes a request when its build ends.
    triggers: Mutex<HashMap<Option<String>, mpsc::UnboundedSender<ObjectRef<BentoRequest>>>>,
}

impl State {
    fn new(ctx: Context) -> State {
        State {
            build_slots: Semaphore::new(ctx.settings.build_concurrency.max(1)),
            ctx,
            builds: Mutex::new(HashMap::new()),
            retries: Mutex::new(HashMap::new()),
            triggers: Mutex::new(HashMap::new()),
        }
    }

    fn auth(&self) -> Option<RegistryAuth> {
        let s = &self.ctx.settings;
        match (&s.image_registry_username, &s.image_registry_password) {
            (Some(u), Some(p)) => Some(RegistryAuth { username: u.clone(), password: p.clone() }),
            _ => None,
        }
    }

    /// How long this request must still wait before the next attempt (same generation only).
    fn retry_wait(&self, key: &Key, generation: Option<i64>) -> Option<Duration> {
        let mut retries = self.retries.lock().unwrap();
        let r = retries.get(key)?;
        if r.generation != generation {
            retries.remove(key);
            return None;
        }
        let now = Instant::now();
        (r.not_before > now).then(|| r.not_before - now)
    }

    /// Records a failed attempt; returns the backoff before the next one.
    fn failed(&self, key: &Key, generation: Option<i64>) -> Duration {
        let mut retries = self.retries.lock().unwrap();
        let r = retries.entry(key.clone()).or_insert(Retry { attempts: 0, not_before: Instant::now(), generation });
        if r.generation != generation {
            r.attempts = 0;
            r.generation = generation;
        }
        let wait = plan::backoff(r.attempts);
        r.attempts += 1;
        r.not_before = Instant::now() + wait;
        wait
    }

    fn succeeded(&self, key: &Key) {
        self.retries.lock().unwrap().remove(key);
    }

    fn trigger(&self, key: &Key) {
        let triggers = self.triggers.lock().unwrap();
        let tx = triggers.get(&Some(key.0.clone())).or_else(|| triggers.get(&None));
        if let Some(tx) = tx {
            let _ = tx.unbounded_send(ObjectRef::new(&key.1).within(&key.0));
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("BentoRequest has no namespace")]
    NoNamespace,
}

fn error_policy(req: Arc<BentoRequest>, err: &Error, state: Arc<State>) -> Action {
    let key = (req.namespace().unwrap_or_default(), req.name_any());
    let wait = state.failed(&key, req.metadata.generation);
    tracing::warn!(namespace = %key.0, name = %key.1, "reconcile failed: {err}; retrying in {wait:?}");
    Action::requeue(wait)
}

/// Per-reconcile view of one request: its API, its status being edited, and what it was.
struct Rec<'a> {
    state: &'a State,
    req: &'a BentoRequest,
    key: Key,
    api: Api<BentoRequest>,
    status: BentoRequestStatus,
}

impl Rec<'_> {
    fn set(&mut self, type_: &str, status: &str, reason: &str, message: &str) -> bool {
        let generation = self.status.observed_generation;
        condition::set(&mut self.status.conditions, type_, status, reason, message, generation)
    }

    /// Writes the status through the status subresource, when it changed.
    async fn save(&self) -> Result<(), Error> {
        let unchanged = self.req.status.as_ref().is_some_and(|s| {
            s.conditions == self.status.conditions && s.observed_generation == self.status.observed_generation
        });
        if unchanged {
            return Ok(());
        }
        let patch = serde_json::json!({"status": {
            "conditions": self.status.conditions,
            "observedGeneration": self.status.observed_generation,
        }});
        self.api.patch_status(&self.key.1, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.state.ctx.recorder.publish(&ev, &self.req.object_ref(&())).await {
            tracing::warn!(namespace = %self.key.0, name = %self.key.1, "publishing event {reason}: {e}");
        }
    }

    /// A failure that a retry may fix: condition, Warning Event (when new), backoff.
    async fn fail(&mut self, type_: &str, reason: &str, message: &str) -> Result<Action, Error> {
        let changed = self.set(type_, FALSE, reason, message);
        self.save().await?;
        if changed {
            self.event(EventType::Warning, reason, message.to_string()).await;
        }
        Ok(Action::requeue(self.state.failed(&self.key, self.req.metadata.generation)))
    }

    /// A failure only a change of the request (or of the operator's flags) fixes.
    async fn refuse(&mut self, type_: &str, reason: &str, message: &str) -> Result<Action, Error> {
        let changed = self.set(type_, FALSE, reason, message);
        self.save().await?;
        if changed {
            self.event(EventType::Warning, reason, message.to_string()).await;
        }
        Ok(Action::await_change())
    }
}

async fn reconcile(req: Arc<BentoRequest>, state: Arc<State>) -> Result<Action, Error> {
    let ns = req.namespace().ok_or(Error::NoNamespace)?;
    let key = (ns.clone(), req.name_any());
    let generation = req.metadata.generation;
    if let Some(wait) = state.retry_wait(&key, generation) {
        return Ok(Action::requeue(wait));
    }
    let settings = state.ctx.settings.clone();
    let mut rec = Rec {
        state: &state,
        req: &req,
        key: key.clone(),
        api: Api::namespaced(state.ctx.client.clone(), &ns),
        status: plan::current_status(&req),
    };

    let image = match plan::image(&req, settings.image_registry.as_deref()) {
        Ok(image) => image,
        Err((reason, message)) => return rec.refuse(c::IMAGE_EXISTS_CHECKED, reason, &message).await,
    };
    let plain_http = settings.image_registry_insecure
        || req.spec.oci_registry_insecure == Some(true)
        || req
            .annotations()
            .get(yatai_kube_api::resources::annotations::DOCKER_REGISTRY_INSECURE)
            .is_some_and(|v| v == "true");
    let auth = state.auth();

    // A build that ended since the last reconcile: record how.
    let mut facts = None;
    let finished = {
        let mut builds = state.builds.lock().unwrap();
        match builds.get(&key) {
            Some(BuildSlot::Finished { .. }) => builds.remove(&key),
            _ => None,
        }
    };
    if let Some(BuildSlot::Finished { image: built_image, generation: g, result }) = finished
        && built_image == image
        && g == generation
    {
        match result {
            Ok(b) => {
                let msg = format!("built and pushed {} ({}) in {:.1}s", b.image, b.digest, b.seconds);
                rec.set(c::IMAGE_BUILDING, FALSE, reasons::IMAGE_BUILT, &msg);
                rec.set(c::IMAGE_EXISTS, TRUE, reasons::IMAGE_BUILT, &msg);
                rec.event(EventType::Normal, reasons::IMAGE_BUILT, msg).await;
                state.succeeded(&key);
                facts = Some(b.facts);
            }
            Err(f) => {
                let message = format!("building {image} failed: {}", f.message);
                if f.reason == reasons::UNBUILDABLE {
                    return rec.refuse(c::IMAGE_BUILDING, f.reason, &message).await;
                }
                return rec.fail(c::IMAGE_BUILDING, f.reason, &message).await;
            }
        }
    }

    loop {
        // A build that finished since the harvest above counts as running: its trigger is on
        // the way, and starting another would build the same image twice.
        let running = state.builds.lock().unwrap().contains_key(&key);
        match plan::decide(&rec.status, &image, running) {
            Step::Check => {
                let forced = plan::force_build(&req);
                let exists = if forced {
                    false
                } else {
                    match registry::image_exists(&image, plain_http, auth.as_ref()).await {
                        Ok(e) => e,
                        Err(e) => {
                            let reason = match e {
                                registry::CheckError::BadImage { .. } => reasons::INVALID_SPEC,
                                registry::CheckError::Registry { .. } => reasons::REGISTRY_UNREACHABLE,
                            };
                            rec.set(c::IMAGE_EXISTS, condition::UNKNOWN, reason, "the registry could not be asked");
                            return rec.fail(c::IMAGE_EXISTS_CHECKED, reason, &e.to_string()).await;
                        }
                    }
                };
                plan::record_check(&mut rec.status, &image, exists, forced);
            }
            Step::Build => {
                // The watch cache can lag behind this controller's own status writes (a build's
                // trigger may run a reconcile on the copy from before its result was recorded):
                // confirm with a fresh read before starting an expensive build.
                let fresh = rec.api.get_status(&key.1).await?;
                if fresh.metadata.resource_version != req.metadata.resource_version {
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                let origin = match Origin::of(&req.spec.download_url, &settings) {
                    Ok(o) => o,
                    Err(message) => return rec.refuse(c::IMAGE_BUILDING, reasons::INVALID_SPEC, &message).await,
                };
                let secrets: Api<Secret> = Api::namespaced(state.ctx.client.clone(), &ns);
                let env = match build_env::resolve(&secrets, &ns, &req.spec.image_builder_extra_container_env).await {
                    Ok(env) => env,
                    Err(u) if u.retry => return rec.fail(c::IMAGE_BUILDING, u.reason, &u.message).await,
                    Err(u) => return rec.refuse(c::IMAGE_BUILDING, u.reason, &u.message).await,
                };
                let job = Job {
                    tag: req.spec.bento_tag.clone(),
                    image: image.clone(),
                    plain_http,
                    origin,
                    timeout: plan::build_timeout(&req),
                    secret_envs: yatai_build::SecretEnvs::new(env),
                };
                let msg = format!(
                    "building {image} from {} (at most {} builds at once)",
                    match &job.origin {
                        Origin::Url(u) => u.clone(),
                        Origin::Yatai { endpoint, .. } => format!("yatai {endpoint}"),
                    },
                    settings.build_concurrency
                );
                start_build(&state, key.clone(), generation, job, auth.clone());
                rec.set(c::IMAGE_BUILDING, TRUE, reasons::BUILDING, &msg);
                rec.save().await?;
                rec.event(EventType::Normal, reasons::BUILDING, msg).await;
                // The build's end triggers a reconcile; this is only a safety net.
                return Ok(Action::requeue(Duration::from_secs(600)));
            }
            Step::WaitForBuild => {
                rec.save().await?;
                return Ok(Action::requeue(Duration::from_secs(600)));
            }
            Step::GaveUp => {
                rec.save().await?;
                return Ok(Action::await_change());
            }
            Step::WriteBento => {
                let bentos: Api<Bento> = Api::namespaced(state.ctx.client.clone(), &ns);
                let available = condition::is_true(&rec.status.conditions, c::BENTO_AVAILABLE);
                // Yatai leaves an available request alone; only a deleted Bento is written again.
                if !(available && facts.is_none() && bentos.get_opt(&key.1).await?.is_some()) {
                    write_bento(&state, &req, &bentos, &image, auth.as_ref(), facts.as_ref()).await?;
                }
                let msg = format!("Bento {} names image {image}", key.1);
                if rec.set(c::BENTO_AVAILABLE, TRUE, reasons::BENTO_WRITTEN, &msg) {
                    rec.event(EventType::Normal, reasons::BENTO_WRITTEN, msg).await;
                }
                rec.save().await?;
                state.succeeded(&key);
                return Ok(Action::await_change());
            }
        }
    }
}

/// Starts a build in a task of its own; it waits for a build slot, and its end wakes the
/// request.
fn start_build(state: &Arc<State>, key: Key, generation: Option<i64>, job: Job, auth: Option<RegistryAuth>) {
    state.builds.lock().unwrap().insert(key.clone(), BuildSlot::Running);
    let state = state.clone();
    tokio::spawn(async move {
        let result = {
            let _slot = state.build_slots.acquire().await.expect("the build semaphore is never closed");
            tracing::info!(namespace = %key.0, name = %key.1, image = %job.image, "building");
            build::run(&state.ctx.settings, auth.as_ref(), &job).await
        };
        match &result {
            Ok(b) => tracing::info!(image = %b.image, seconds = b.seconds, "built"),
            Err(f) => tracing::warn!(image = %job.image, "build failed ({}): {}", f.reason, f.message),
        }
        state.builds.lock().unwrap().insert(key.clone(), BuildSlot::Finished { image: job.image, generation, result });
        state.trigger(&key);
    });
}

/// Server-side applies the Bento (and the pull Secret it names, when the operator has
/// registry credentials).
async fn write_bento(
    state: &State,
    req: &BentoRequest,
    bentos: &Api<Bento>,
    image: &str,
    auth: Option<&RegistryAuth>,
    facts: Option<&BentoFacts>,
) -> Result<(), Error> {
    let ns = req.namespace().ok_or(Error::NoNamespace)?;
    let name = req.name_any();
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let mut pull_secrets = Vec::new();
    if !req.spec.docker_config_json_secret_name.is_empty() {
        pull_secrets.push(LocalObjectReference { name: req.spec.docker_config_json_secret_name.clone() });
    } else if let (Some(a), Some(host)) = (auth, registry::registry_host(image)) {
        let secrets: Api<Secret> = Api::namespaced(state.ctx.client.clone(), &ns);
        secrets.patch(REGCRED_SECRET, &apply, &Patch::Apply(registry::regcred_secret(&ns, &host, a))).await?;
        pull_secrets.push(LocalObjectReference { name: REGCRED_SECRET.into() });
    }
    let spec = bento_spec(req, image, facts, pull_secrets);
    let mut bento = Bento::new(&name, spec);
    bento.metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(ns),
        owner_references: req.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    };
    bentos.patch(&name, &apply, &Patch::Apply(&bento)).await?;
    Ok(())
}

/// The Bento of a request: its spec, plus what the build read from the bento's manifest when
/// the spec leaves it out.
pub fn bento_spec(
    req: &BentoRequest,
    image: &str,
    facts: Option<&BentoFacts>,
    image_pull_secrets: Vec<LocalObjectReference>,
) -> BentoSpec {
    let spec = &req.spec;
    let spec_version = spec.context.as_ref().map(|c| c.bentoml_version.clone()).filter(|v| !v.is_empty());
    let bentoml_version = spec_version.or_else(|| facts.map(|f| f.bentoml_version.clone()).filter(|v| !v.is_empty()));
    let mut models = spec.models.clone();
    for tag in facts.map(|f| f.models.as_slice()).unwrap_or_default() {
        if !models.iter().any(|m| &m.tag == tag) {
            models.push(BentoModel { tag: tag.clone(), ..Default::default() });
        }
    }
    BentoSpec {
        tag: spec.bento_tag.clone(),
        image: image.to_string(),
        service_name: spec.service_name.clone(),
        context: bentoml_version.map(|v| BentoContext { bentoml_version: v }),
        runners: spec.runners.clone(),
        models,
        manifest: None,
        image_pull_secrets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yatai_kube_api::resources::{BentoRequestSpec, BentoRunner};

    #[test]
    fn the_bento_takes_the_spec_first_then_the_manifest() {
        let mut req = BentoRequest::new(
            "iris",
            BentoRequestSpec {
                bento_tag: "iris:v1".into(),
                service_name: "svc".into(),
                models: vec![BentoModel { tag: "extra:1".into(), ..Default::default() }],
                runners: vec![BentoRunner { name: "r".into(), ..Default::default() }],
                ..Default::default()
            },
        );
        let facts = BentoFacts { bentoml_version: "1.4.40".into(), models: vec!["clf:1".into(), "extra:1".into()] };
        let s = bento_spec(&req, "r/b:yatai.iris.v1", Some(&facts), vec![]);
        assert_eq!(s.tag, "iris:v1");
        assert_eq!(s.image, "r/b:yatai.iris.v1");
        assert_eq!(s.service_name, "svc");
        assert_eq!(s.context.unwrap().bentoml_version, "1.4.40");
        let tags: Vec<&str> = s.models.iter().map(|m| m.tag.as_str()).collect();
        assert_eq!(tags, ["extra:1", "clf:1"]);
        assert_eq!(s.runners.len(), 1);

        req.spec.context = Some(BentoContext { bentoml_version: "1.2.0".into() });
        assert_eq!(bento_spec(&req, "i", Some(&facts), vec![]).context.unwrap().bentoml_version, "1.2.0");
        assert!(bento_spec(&BentoRequest::new("x", BentoRequestSpec::default()), "i", None, vec![]).context.is_none());
    }
}
