//! Deployments: create, update, terminate, restore, roll back and delete,
//! shared by the v1 and v2 APIs and the dashboard. Each use case records
//! what the user asked for in the store, then drives the cluster's
//! [`DeployTarget`]; the target reports back through [`DbStatusSink`].

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use yatai_core::deploy::{
    ArtifactRef, ClusterKind, DEFAULT_NAMESPACE, DeployTarget, DeploymentSpec, Desired, InstanceType, Phase, Resources,
    RevisionStatus, Scaling, StatusSink, TargetError,
};
use yatai_core::{Kind, Tag, Timestamp};
use yatai_store::{ClusterRow, DeploymentRow, NewDeployment, NewEvent, NewTarget, Store, VersionRow};

use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::labels::{Label, labels_to_json};
use crate::registry::{check_fields, find_version};
use crate::state::AppState;

/// This machine, as a cluster.
pub const LOCAL_CLUSTER: &str = "local";

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct EnvItem {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// What a revision runs with, as the client sends it; stored and echoed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeploymentConfig {
    #[serde(default)]
    pub access_authorization: Option<bool>,
    #[serde(default)]
    pub envs: Option<Vec<EnvItem>>,
    #[serde(default)]
    pub labels: Option<Vec<Label>>,
    #[serde(default)]
    pub secrets: Option<Vec<String>>,
    /// `{<service name>: {instance_type, scaling: {min_replicas, max_replicas, policy}, envs, …}}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub services: Option<Map<String, Value>>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub canary: Option<Value>,
}

/// A new deployment, as the APIs and the dashboard ask for it.
#[derive(Debug, Clone)]
pub struct DeploymentRequest<'a> {
    /// Cluster name; none or empty: the default cluster.
    pub cluster: Option<&'a str>,
    /// None or empty: the cluster's namespace (see [`default_namespace`]).
    pub namespace: Option<&'a str>,
    /// None or empty: `<bento name>-<random>`.
    pub name: Option<&'a str>,
    /// `name:version` (`latest` allowed).
    pub bento: &'a str,
    pub config: &'a DeploymentConfig,
    pub description: &'a str,
}

/// The cluster a request names (none or empty means the default one).
pub async fn resolve_cluster(state: &AppState, caller: &Caller, name: Option<&str>) -> AppResult<ClusterRow> {
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    match name {
        None | Some(LOCAL_CLUSTER) => Ok(state
            .store
            .ensure_cluster(
                &caller.org.uid,
                LOCAL_CLUSTER,
                ClusterKind::Local.as_str(),
                "This machine: replicas run as local processes",
            )
            .await?),
        Some(n) => state.store.get_cluster(&caller.org.uid, n).await?.ok_or_else(|| {
            AppError::not_found(format!("cluster {n:?} not found (this server has the cluster {LOCAL_CLUSTER:?})"))
        }),
    }
}

/// Where a deployment of `cluster` goes when the request names no namespace
/// (the v2 API and the dashboard have none): the namespace a Kubernetes
/// cluster was registered with, else [`DEFAULT_NAMESPACE`].
pub fn default_namespace(cluster: &ClusterRow) -> String {
    crate::clusters::settings_of(cluster)
        .map(|s| s.namespace)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

/// The target that runs deployments of `cluster`.
pub async fn target_of(state: &AppState, cluster: &ClusterRow) -> AppResult<Arc<dyn DeployTarget>> {
    if cluster.kind == ClusterKind::Kubernetes.as_str() && !state.targets.knows(&cluster.uid) {
        return crate::clusters::connect_new(state, cluster).await;
    }
    state.targets.for_cluster(cluster)
}

/// The target that runs `d`, if this server has one for its cluster.
pub async fn target_for(state: &AppState, d: &DeploymentRow) -> AppResult<Arc<dyn DeployTarget>> {
    let cluster = state
        .store
        .get_cluster(&d.org_uid, &d.cluster_name)
        .await?
        .ok_or_else(|| AppError::internal(format!("the cluster of deployment {:?} is missing", d.name)))?;
    target_of(state, &cluster).await
}

/// Connects the organization's Kubernetes clusters this server does not know yet (registered
/// with `yatai cluster add` while it ran), so that the deployments made on them outside yatai
/// are listed. A cluster that fails is remembered as broken, and not tried again.
pub async fn connect_clusters(state: &AppState, org_uid: &str) -> AppResult<()> {
    for c in state.store.list_clusters(org_uid).await? {
        if c.kind == ClusterKind::Kubernetes.as_str() && !state.targets.knows(&c.uid) {
            let _ = crate::clusters::connect_new(state, &c).await;
        }
    }
    Ok(())
}

/// What a deployment's target observes now (none when nothing runs it).
pub async fn observed(state: &AppState, d: &DeploymentRow) -> Option<yatai_core::deploy::DeploymentSnapshot> {
    target_for(state, d).await.ok()?.status(&d.uid)
}

/// The configuration of service `entry`: its own entry, or the only one given.
fn service_config<'a>(config: &'a DeploymentConfig, entry: &str) -> Option<&'a Value> {
    let services = config.services.as_ref()?;
    services.get(entry).or_else(|| if services.len() == 1 { services.values().next() } else { None })
}

/// The parts of a service's configuration a target uses.
struct ServiceSettings {
    scaling: Scaling,
    envs: Vec<(String, String)>,
    cold_start: Option<Duration>,
}

fn service_settings(
    config: &DeploymentConfig,
    entry: &str,
    default_cold_start: Duration,
    max_replicas: u32,
) -> AppResult<ServiceSettings> {
    let svc = service_config(config, entry).cloned().unwrap_or(Value::Null);
    let scaling = svc.get("scaling").cloned().unwrap_or(Value::Null);
    let int = |v: &Value, key: &'static str| -> AppResult<Option<i64>> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_i64()
                .map(Some)
                .ok_or_else(|| AppError::invalid_field(key, format!("scaling.{key} must be a whole number"))),
        }
    };
    let min = int(&scaling, "min_replicas")?.unwrap_or(1);
    let max = int(&scaling, "max_replicas")?.unwrap_or(min.max(1));
    if min < 0 {
        return Err(AppError::invalid_field("min_replicas", "scaling.min_replicas must not be negative"));
    }
    if max < 1 {
        return Err(AppError::invalid_field("max_replicas", "scaling.max_replicas must be at least 1"));
    }
    if min > max {
        return Err(AppError::invalid_field(
            "min_replicas",
            format!("scaling.min_replicas ({min}) is larger than scaling.max_replicas ({max})"),
        ));
    }
    if max > i64::from(max_replicas) {
        return Err(AppError::invalid_field(
            "max_replicas",
            format!("scaling.max_replicas is at most {max_replicas} on this cluster"),
        ));
    }
    let policy = scaling.get("policy").cloned().unwrap_or(Value::Null);
    let mut target = 1.0;
    for m in policy.get("metrics").and_then(Value::as_array).into_iter().flatten() {
        if matches!(m.get("type").and_then(Value::as_str), Some("concurrency" | "inflight"))
            && let Some(v) = m.get("value").and_then(Value::as_f64).filter(|v| *v > 0.0)
        {
            target = v;
        }
    }
    let window = policy.get("scale_down_stabilization_window").and_then(Value::as_u64).unwrap_or(60);
    let mut envs = Vec::new();
    for e in config.envs.iter().flatten() {
        envs.push((e.name.clone(), e.value.clone()));
    }
    for e in svc.get("envs").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(n), v) =
            (e.get("name").and_then(Value::as_str), e.get("value").and_then(Value::as_str).unwrap_or(""))
        {
            envs.retain(|(k, _)| k != n);
            envs.push((n.to_owned(), v.to_owned()));
        }
    }
    for (k, _) in &envs {
        let valid = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(AppError::invalid_field("envs", format!("environment variable name {k:?} is not valid")));
        }
    }
    let cold_start =
        svc.get("cold_start_timeout").and_then(Value::as_u64).map(Duration::from_secs).or(Some(default_cold_start));
    Ok(ServiceSettings {
        scaling: Scaling {
            min: min as u32,
            max: max as u32,
            target_inflight: target,
            scale_down_window: Duration::from_secs(window),
        },
        envs,
        cold_start,
    })
}

/// Requests and limits of the entry service (`resources: {requests: {cpu,
/// memory}, limits: {…}}`), as the client sends them; requests it does not
/// set come from its `instance_type`, when the target offers that type.
fn resources(config: &DeploymentConfig, entry: &str, types: &[InstanceType]) -> Resources {
    let svc = service_config(config, entry);
    let get = |kind: &str, what: &str| {
        svc.and_then(|s| s.pointer(&format!("/resources/{kind}/{what}"))).and_then(Value::as_str).map(str::to_owned)
    };
    let sized = instance_type_of(config, entry).and_then(|name| types.iter().find(|t| t.name == name));
    let of_type = |q: Option<&String>| q.filter(|q| !q.is_empty()).cloned();
    Resources {
        cpu_request: get("requests", "cpu").or_else(|| of_type(sized.map(|t| &t.cpu))),
        memory_request: get("requests", "memory").or_else(|| of_type(sized.map(|t| &t.memory))),
        cpu_limit: get("limits", "cpu"),
        memory_limit: get("limits", "memory"),
    }
}

/// The `instance_type` the entry service's configuration names, if any.
fn instance_type_of<'a>(config: &'a DeploymentConfig, entry: &str) -> Option<&'a str> {
    service_config(config, entry)?.get("instance_type")?.as_str().map(str::trim).filter(|t| !t.is_empty())
}

fn manifest_of(bento: &VersionRow) -> Value {
    serde_json::from_str(&bento.manifest).unwrap_or(Value::Null)
}

pub fn entry_service(manifest: &Value) -> String {
    manifest.get("entry_service").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("apiserver").to_owned()
}

/// Checks a configuration against a bento and the target before it is
/// stored: scaling, env names, required envs, unsupported features.
pub fn validate_config(
    state: &AppState,
    target: &dyn DeployTarget,
    bento: &VersionRow,
    config: &DeploymentConfig,
    secret_envs: &[String],
) -> AppResult<()> {
    let manifest = manifest_of(bento);
    let settings =
        service_settings(config, &entry_service(&manifest), state.config.cold_start_timeout, target.max_replicas())?;
    if let Some(name) = instance_type_of(config, &entry_service(&manifest)) {
        let types = target.instance_types();
        if !types.iter().any(|t| t.name == name) {
            let offered: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
            return Err(AppError::invalid_field(
                "instance_type",
                format!(
                    "instance type {name:?} is not offered by this cluster; choose one of: {} (`bentoml deployment \
                     list-instance-types --cluster …` lists them)",
                    offered.join(", ")
                ),
            ));
        }
    }
    let provided: Vec<&str> =
        settings.envs.iter().map(|(k, _)| k.as_str()).chain(secret_envs.iter().map(String::as_str)).collect();
    let missing: Vec<String> = manifest
        .get("envs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("stage").and_then(Value::as_str) != Some("build"))
        .filter(|e| e.get("value").and_then(Value::as_str).unwrap_or("").is_empty())
        .filter_map(|e| e.get("name").and_then(Value::as_str))
        .filter(|n| !provided.contains(n))
        .map(str::to_owned)
        .collect();
    if !missing.is_empty() {
        return Err(AppError::invalid_field(
            "envs",
            format!(
                "bento {} requires environment variable{} {} with no default; pass {}",
                bento.tag(),
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", "),
                missing.iter().map(|m| format!("--env {m}=…")).collect::<Vec<_>>().join(" ")
                    + " (or a --secret that holds it)"
            ),
        ));
    }
    Ok(())
}

/// The secret names a configuration gives (duplicates removed, order kept).
fn secret_names(config: &DeploymentConfig) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for n in config.secrets.iter().flatten() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// Checks the secrets a configuration names (see [`crate::secrets::check_attached`]);
/// returns the environment variables they provide.
async fn check_secrets(state: &AppState, org_uid: &str, config: &DeploymentConfig) -> AppResult<Vec<String>> {
    let canary_secrets =
        config.canary.as_ref().and_then(|c| c.pointer("/versions")).and_then(Value::as_object).is_some_and(|vs| {
            vs.values().any(|v| v.get("secrets").and_then(Value::as_array).is_some_and(|a| !a.is_empty()))
        });
    if canary_secrets {
        return Err(AppError::invalid_field("secrets", "secrets on canary versions are not supported by this server"));
    }
    crate::secrets::check_attached(state, org_uid, &secret_names(config)).await
}

/// Finds the bento a request names; it must be uploaded.
pub async fn resolve_bento(state: &AppState, caller: &Caller, tag: &str) -> AppResult<VersionRow> {
    let tag = Tag::parse(tag).map_err(|e| AppError::invalid_field("bento", format!("bento {tag:?}: {e}")))?;
    let version = tag.version.as_deref().unwrap_or("latest");
    let row = find_version(state, caller, Kind::Bento, &tag.name, version).await?;
    if !row.is_uploaded() {
        return Err(AppError::invalid_field(
            "bento",
            format!("bento {} is not uploaded yet (status {}); push it first", row.tag(), row.upload_status),
        ));
    }
    Ok(row)
}

/// What the target needs to run a deployment's active revision.
pub async fn spec_for(state: &AppState, target: &dyn DeployTarget, d: &DeploymentRow) -> AppResult<DeploymentSpec> {
    let (rev, targets) = state
        .store
        .active_revision(&d.uid)
        .await?
        .ok_or_else(|| AppError::internal(format!("deployment {} has no active revision", d.name)))?;
    let target_row = targets.first().ok_or_else(|| AppError::internal("revision without targets"))?;
    let bento = state.store.get_version_by_uid(&target_row.bento_uid).await?.ok_or_else(|| {
        AppError::conflict("the bento of this revision was deleted; update the deployment to another bento")
    })?;
    let bento_ref = artifact_ref(state, &bento).await?;
    let mut models = Vec::new();
    for (name, version, found) in state.store.bento_models(&bento).await? {
        let Some(m) = found.filter(|m| m.is_uploaded()) else {
            return Err(missing_model(&bento, &name, &version));
        };
        models.push(artifact_ref(state, &m).await?);
    }
    let config: DeploymentConfig = serde_json::from_str(&target_row.config).unwrap_or_default();
    let manifest = manifest_of(&bento);
    let entry = entry_service(&manifest);
    let settings = service_settings(&config, &entry, state.config.cold_start_timeout, target.max_replicas())?;
    let secrets = crate::secrets::open_for_deployment(state, &d.org_uid, &secret_names(&config)).await?;
    let python_version = manifest
        .pointer("/image/python_version")
        .or_else(|| manifest.pointer("/docker/python_version"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    // The newest image built from the bento, for targets that run images.
    let image = state
        .store
        .list_image_builds(&bento.uid)
        .await?
        .into_iter()
        .find(|b| b.status == "success" && !b.reference.is_empty())
        .map(|b| b.reference);
    Ok(DeploymentSpec {
        uid: d.uid.clone(),
        org_uid: d.org_uid.clone(),
        name: d.name.clone(),
        namespace: d.namespace.clone(),
        host: d.host.clone(),
        access_authorization: config.access_authorization.unwrap_or(false),
        revision_uid: rev.uid,
        bento: bento_ref,
        models,
        image,
        python_version,
        envs: settings.envs,
        secrets,
        scaling: settings.scaling,
        resources: resources(&config, &entry, &target.instance_types()),
        port: d.endpoint_port.unwrap_or(0) as u16,
        cold_start_timeout: settings.cold_start.unwrap_or(state.config.cold_start_timeout),
    })
}

pub async fn artifact_ref(state: &AppState, v: &VersionRow) -> AppResult<ArtifactRef> {
    let digest =
        v.blob_digest.clone().ok_or_else(|| AppError::invalid(format!("{} {} is not uploaded", v.kind, v.tag())))?;
    let (key, _) = state
        .store
        .blob_key(&digest)
        .await?
        .ok_or_else(|| AppError::internal(format!("blob of {} missing", v.tag())))?;
    Ok(ArtifactRef { name: v.repository_name.clone(), version: v.version.clone(), digest, storage_key: key })
}

fn missing_model(bento: &VersionRow, name: &str, version: &str) -> AppError {
    AppError::invalid_field(
        "bento",
        format!(
            "bento {} needs model {name}:{version}, which is not in the registry; push it with `bentoml models push {name}:{version}`",
            bento.tag()
        ),
    )
}

/// Every model the bento needs is in the registry.
pub async fn check_models(state: &AppState, bento: &VersionRow) -> AppResult<()> {
    for (name, version, found) in state.store.bento_models(bento).await? {
        if !found.is_some_and(|m| m.is_uploaded()) {
            return Err(missing_model(bento, &name, &version));
        }
    }
    Ok(())
}

/// Checks, before anything is stored or started, that a bento can run on
/// `target`: its models are all in the registry and the target accepts it.
pub async fn preflight(state: &AppState, target: &dyn DeployTarget, bento: &VersionRow) -> AppResult<()> {
    check_models(state, bento).await?;
    let r = artifact_ref(state, bento).await?;
    target.check(&r).await.map_err(|e| AppError::from(e).in_field("bento"))
}

/// Sends the deployment's active revision to its target.
pub async fn apply(state: &AppState, d: &DeploymentRow) -> AppResult<()> {
    let target = target_for(state, d).await?;
    let spec = spec_for(state, target.as_ref(), d).await?;
    target.apply(spec).await.map_err(|e| AppError::unavailable(e.to_string()))
}

/// The URL a deployment is reached at. `request_host`: the Host the
/// request came with, used when the server has no external URL. `None`: a
/// cluster that publishes deployments itself (a Kubernetes Ingress) has not
/// published this one yet.
pub fn deployment_url(state: &AppState, request_host: Option<&str>, d: &DeploymentRow) -> Option<String> {
    if let Some(target) = state.targets.of_cluster(&d.cluster_uid) {
        return target.url(&d.uid);
    }
    // One made outside yatai answers only where its cluster publishes it.
    if d.is_external() {
        return None;
    }
    let base = match &state.config.external_url {
        Some(u) => u.clone(),
        None => url::Url::parse(&format!("http://{}", request_host.unwrap_or("127.0.0.1")))
            .unwrap_or_else(|_| url::Url::parse("http://127.0.0.1").expect("valid")),
    };
    let host = base.host_str().unwrap_or("127.0.0.1").to_owned();
    match (&state.config.deployment_domain, &d.host) {
        (Some(domain), Some(label)) => {
            let port = base.port().map(|p| format!(":{p}")).unwrap_or_default();
            Some(format!("{}://{label}.{domain}{port}", base.scheme()))
        }
        // No domain, or a deployment whose host another one held first (see
        // migration 0007): its own port.
        _ => d.endpoint_port.map(|port| format!("http://{host}:{port}")),
    }
}

/// Finds a deployment by name: in the named cluster's default namespace, or
/// anywhere in the organization when no cluster is given.
pub async fn find(state: &AppState, caller: &Caller, cluster: Option<&str>, name: &str) -> AppResult<DeploymentRow> {
    let not_found = || AppError::not_found(format!("deployment {name:?} not found"));
    if name.is_empty() || name.len() > 100 {
        return Err(not_found());
    }
    // A deployment made outside yatai on a cluster not connected yet is found too.
    connect_clusters(state, &caller.org.uid).await?;
    match cluster.filter(|c| !c.is_empty()) {
        Some(c) => {
            let cluster = resolve_cluster(state, caller, Some(c)).await?;
            let ns = default_namespace(&cluster);
            let found = state.store.get_deployment(&caller.org.uid, &cluster.uid, &ns, name).await?;
            match found {
                Some(d) => Ok(d),
                None => state
                    .store
                    .find_deployments_by_name(&caller.org.uid, name)
                    .await?
                    .into_iter()
                    .find(|d| d.cluster_uid == cluster.uid)
                    .ok_or_else(not_found),
            }
        }
        None => {
            let mut all = state.store.find_deployments_by_name(&caller.org.uid, name).await?;
            all.sort_by_key(|d| d.namespace != DEFAULT_NAMESPACE);
            all.into_iter().next().ok_or_else(not_found)
        }
    }
}

pub(crate) fn config_json(config: &DeploymentConfig) -> String {
    let mut c = config.clone();
    c.envs.get_or_insert_with(Vec::new);
    c.access_authorization.get_or_insert(false);
    c.services.get_or_insert_with(Default::default);
    serde_json::to_string(&c).expect("config serialises")
}

/// Creates a deployment and starts it.
pub async fn create(state: &AppState, caller: &Caller, req: DeploymentRequest<'_>) -> AppResult<DeploymentRow> {
    let cluster = resolve_cluster(state, caller, req.cluster).await.map_err(|e| e.in_field("cluster"))?;
    let target = target_of(state, &cluster).await?;
    let namespace = match req.namespace.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => n.to_owned(),
        None => default_namespace(&cluster),
    };
    yatai_core::deploy::check_namespace(&namespace).map_err(|m| AppError::invalid_field("namespace", m))?;
    if let Some(name) = req.name.map(str::trim).filter(|n| !n.is_empty())
        && let Some(d) = state.store.get_deployment(&caller.org.uid, &cluster.uid, &namespace, name).await?
        && d.is_external()
    {
        return Err(name_held_outside(name, &namespace, &cluster.name));
    }
    let bento = resolve_bento(state, caller, req.bento).await?;
    let name = match req.name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => n.to_owned(),
        None => {
            let base: String = bento.repository_name.replace(['_', '.'], "-").chars().take(40).collect();
            format!("{}-{}", base.trim_matches('-'), name_suffix())
        }
    };
    yatai_core::deploy::check_deployment_name(&name).map_err(|m| AppError::invalid_field("name", m))?;
    check_fields(Some(req.description), req.config.labels.as_deref())?;
    let secret_envs = check_secrets(state, &caller.org.uid, req.config).await?;
    validate_config(state, target.as_ref(), &bento, req.config, &secret_envs)?;
    preflight(state, target.as_ref(), &bento).await?;
    let in_use = state.store.used_endpoint_ports().await?;
    let port = target.allocate_port(&in_use)?;
    let cfg = config_json(req.config);
    let labels = labels_to_json(req.config.labels.as_deref().unwrap_or(&[]));
    let host = yatai_core::deploy::host_label(&name, &namespace);
    let d = state
        .store
        .create_deployment(NewDeployment {
            org_uid: &caller.org.uid,
            cluster_uid: &cluster.uid,
            namespace: &namespace,
            name: &name,
            description: req.description,
            labels: &labels,
            creator_uid: &caller.user.uid,
            endpoint_port: port,
            host: &host,
            targets: &[NewTarget { name: "main", bento_uid: &bento.uid, config: &cfg }],
        })
        .await?;
    let applied = match spec_for(state, target.as_ref(), &d).await {
        Ok(spec) => target.apply(spec).await,
        Err(e) => {
            record(state, caller, "created", &d, json!({"bento": bento.tag()})).await;
            let _ = state.store.set_status(&d.uid, Phase::Failed.as_str(), e.message()).await;
            return Err(e);
        }
    };
    // The name is someone else's on the cluster (made outside yatai, not imported yet):
    // nothing was written there, so nothing is kept or recorded here either.
    match applied {
        Err(TargetError::Conflict(_)) => {
            state.store.delete_deployment(&d.uid).await?;
            return Err(name_held_outside(&name, &namespace, &cluster.name));
        }
        // The cluster refused the objects (a namespace that does not exist, a missing CRD,
        // credentials without the permission): the user acts on it now, and a retry with the
        // same name must not find a failed deployment in its way.
        Err(TargetError::Refused(m)) => {
            state.store.delete_deployment(&d.uid).await?;
            let field = if m.starts_with("namespace ") { "namespace" } else { "cluster" };
            return Err(AppError::invalid_field(field, format!("cluster {:?}: {m}", cluster.name)));
        }
        _ => {}
    }
    record(state, caller, "created", &d, json!({"bento": bento.tag()})).await;
    match applied {
        Ok(()) => Ok(d),
        Err(e) => {
            let e = AppError::unavailable(e.to_string());
            let _ = state.store.set_status(&d.uid, Phase::Failed.as_str(), e.message()).await;
            Err(e)
        }
    }
}

/// Adds a revision running `bento_tag` with `config`, and rolls out to it.
pub async fn update(
    state: &AppState,
    caller: &Caller,
    d: &DeploymentRow,
    bento_tag: &str,
    config: &DeploymentConfig,
) -> AppResult<DeploymentRow> {
    refuse_external(d, "update")?;
    let target = target_for(state, d).await?;
    let bento = resolve_bento(state, caller, bento_tag).await?;
    let secret_envs = check_secrets(state, &caller.org.uid, config).await?;
    validate_config(state, target.as_ref(), &bento, config, &secret_envs)?;
    preflight(state, target.as_ref(), &bento).await?;
    let cfg = config_json(config);
    state
        .store
        .add_revision(
            &d.uid,
            &caller.user.uid,
            None,
            &[NewTarget { name: "main", bento_uid: &bento.uid, config: &cfg }],
        )
        .await?;
    state.store.set_desired(&d.uid, Desired::Running.as_str()).await?;
    let _ = state.store.set_status(&d.uid, Phase::Deploying.as_str(), "rolling out a new revision").await;
    let d = reload(state, d).await?;
    record(state, caller, "updated", &d, json!({"bento": bento.tag()})).await;
    apply(state, &d).await?;
    Ok(d)
}

/// Refuses to change a deployment made outside yatai, saying where to change it.
pub fn refuse_external(d: &DeploymentRow, what: &str) -> AppResult<()> {
    if !d.is_external() {
        return Ok(());
    }
    Err(AppError::conflict(format!(
        "deployment {name:?} is managed outside yatai: it is the BentoDeployment {name} in namespace {ns} of cluster \
         {cluster:?}, made with kubectl or by a GitOps tool, and yatai never changes it; to {what} it, change the \
         BentoDeployment where it comes from (the GitOps repository, or `kubectl edit|delete bentodeployment {name} \
         -n {ns}`)",
        name = d.name,
        ns = d.namespace,
        cluster = d.cluster_name,
    )))
}

/// The refusal to create a deployment whose name a BentoDeployment made outside yatai holds.
fn name_held_outside(name: &str, namespace: &str, cluster: &str) -> AppError {
    AppError::conflict(format!(
        "a BentoDeployment named {name} in namespace {namespace} of cluster {cluster:?} is managed outside yatai \
         (kubectl or GitOps), and yatai never overwrites it: choose another name, or delete that BentoDeployment \
         where it comes from (the GitOps repository, or `kubectl delete bentodeployment {name} -n {namespace}`)"
    ))
}

pub async fn reload(state: &AppState, d: &DeploymentRow) -> AppResult<DeploymentRow> {
    state
        .store
        .get_deployment_by_uid(&d.uid)
        .await?
        .ok_or_else(|| AppError::not_found(format!("deployment {:?} was deleted", d.name)))
}

/// Stops every replica; the deployment and its URL stay.
pub async fn terminate(state: &AppState, caller: &Caller, d: &DeploymentRow) -> AppResult<DeploymentRow> {
    refuse_external(d, "terminate")?;
    state.store.set_desired(&d.uid, Desired::Terminated.as_str()).await?;
    let target = target_for(state, d).await.ok();
    let stopping = target.as_ref().and_then(|t| t.status(&d.uid)).is_some_and(|s| !s.replicas.is_empty());
    let phase = if stopping { Phase::Terminating } else { Phase::Terminated };
    let _ = state.store.set_status(&d.uid, phase.as_str(), "").await;
    if let Some(t) = target {
        t.terminate(&d.uid).await;
    }
    record(state, caller, "terminated", d, Value::Null).await;
    reload(state, d).await
}

/// Starts a terminated deployment again with its active revision.
pub async fn restore(state: &AppState, caller: &Caller, d: &DeploymentRow) -> AppResult<DeploymentRow> {
    refuse_external(d, "restore")?;
    if d.desired == Desired::Running {
        return Err(AppError::conflict(format!("deployment {:?} is not terminated", d.name)));
    }
    state.store.set_desired(&d.uid, Desired::Running.as_str()).await?;
    let _ = state.store.set_status(&d.uid, Phase::Deploying.as_str(), "restoring").await;
    let d = reload(state, d).await?;
    record(state, caller, "restored", &d, Value::Null).await;
    apply(state, &d).await?;
    Ok(d)
}

/// Stops the deployment, then deletes it and its revisions.
pub async fn delete(state: &AppState, caller: &Caller, d: &DeploymentRow) -> AppResult<()> {
    refuse_external(d, "delete")?;
    if let Ok(t) = target_for(state, d).await {
        t.remove(&d.uid).await;
    }
    state.store.delete_deployment(&d.uid).await?;
    record(state, caller, "deleted", d, Value::Null).await;
    Ok(())
}

/// Rolls back to an earlier revision, as a new revision.
pub async fn rollback(
    state: &AppState,
    caller: &Caller,
    d: &DeploymentRow,
    revision_uid: &str,
) -> AppResult<DeploymentRow> {
    refuse_external(d, "roll back")?;
    let (rev, targets) = state
        .store
        .get_revision(&d.uid, revision_uid)
        .await?
        .ok_or_else(|| AppError::not_found(format!("deployment {:?} has no revision {revision_uid:?}", d.name)))?;
    if rev.status == RevisionStatus::Active {
        return Err(AppError::conflict("that revision is already the active one"));
    }
    for t in &targets {
        let bento = state.store.get_version_by_uid(&t.bento_uid).await?;
        if !bento.as_ref().is_some_and(|b| b.is_uploaded()) {
            return Err(AppError::conflict("the bento of that revision was deleted; it cannot be restored"));
        }
        let config: DeploymentConfig = serde_json::from_str(&t.config).unwrap_or_default();
        check_secrets(state, &d.org_uid, &config)
            .await
            .map_err(|e| AppError::conflict(format!("that revision cannot be restored: {}", e.message())))?;
    }
    let copies: Vec<NewTarget> =
        targets.iter().map(|t| NewTarget { name: &t.name, bento_uid: &t.bento_uid, config: &t.config }).collect();
    state.store.add_revision(&d.uid, &caller.user.uid, Some(&rev.uid), &copies).await?;
    state.store.set_desired(&d.uid, Desired::Running.as_str()).await?;
    let _ = state.store.set_status(&d.uid, Phase::Deploying.as_str(), "rolling back").await;
    let d = reload(state, d).await?;
    record(state, caller, "rolled back", &d, json!({"to_revision": rev.uid})).await;
    apply(state, &d).await?;
    Ok(d)
}

/// Writes the targets' status changes to the database and the event feed.
pub struct DbStatusSink {
    pub store: Store,
}

impl StatusSink for DbStatusSink {
    fn status(&self, deployment_uid: &str, name: &str, phase: Phase, reason: &str) {
        let store = self.store.clone();
        let (uid, name, reason) = (deployment_uid.to_owned(), name.to_owned(), reason.to_owned());
        tokio::spawn(async move {
            let Ok(Some(d)) = store.get_deployment_by_uid(&uid).await else { return };
            // A deployment the user terminated stays terminated, whatever a
            // late report from its replicas says.
            if d.desired == Desired::Terminated && !matches!(phase, Phase::Terminating | Phase::Terminated) {
                return;
            }
            match store.set_status(&uid, phase.as_str(), &reason).await {
                Ok(true) => {
                    if d.status == phase {
                        return; // only the reason changed
                    }
                    tracing::info!(deployment = %name, status = phase.as_str(), %reason, "deployment status");
                    let info = json!({"status": phase.as_str(), "previous": d.status, "reason": reason}).to_string();
                    let _ = store
                        .record_event(NewEvent {
                            org_uid: &d.org_uid,
                            actor_uid: None,
                            actor_name: "",
                            api_token_name: "",
                            operation: "status",
                            resource_type: "deployment",
                            resource_name: &format!("{}/{}", d.namespace, d.name),
                            status: if phase.is_failure() { "failed" } else { "success" },
                            info: &info,
                        })
                        .await;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not record a deployment status"),
            }
        });
    }

    fn port_changed(&self, deployment_uid: &str, port: u16) {
        let store = self.store.clone();
        let uid = deployment_uid.to_owned();
        tokio::spawn(async move {
            if let Err(e) = store.set_endpoint_port(&uid, port).await {
                tracing::warn!(error = %e, "could not record a moved endpoint port");
            }
        });
    }
}

/// At server start, before it answers: lets every target clean up what a
/// crashed server left behind, and marks every deployment that should run
/// as `deploying`, so that nobody reads a stale `running`. Returns those
/// deployments, for [`restore_all`].
pub async fn prepare_restore(state: &AppState) -> Vec<DeploymentRow> {
    if state.targets.is_empty() {
        return Vec::new();
    }
    for target in state.targets.all() {
        let orphans = target.recover().await;
        if orphans > 0 {
            tracing::warn!(orphans, target = %target.describe(), "stopped replicas left running by a previous server");
        }
    }
    let deployments = match state.store.all_deployments().await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot list deployments to restore");
            return Vec::new();
        }
    };
    let mut to_run = Vec::new();
    // Deployments made outside yatai are the cluster's to run; their status is followed.
    for d in deployments.into_iter().filter(|d| !d.is_external()) {
        if d.desired == Desired::Running {
            let _ = state.store.set_status(&d.uid, Phase::Deploying.as_str(), "restoring after a server restart").await;
            to_run.push(d);
        } else {
            let _ = state.store.set_status(&d.uid, Phase::Terminated.as_str(), "").await;
        }
    }
    to_run
}

/// Brings back the deployments [`prepare_restore`] returned.
pub async fn restore_all(state: &AppState, deployments: Vec<DeploymentRow>) {
    for d in deployments {
        if let Err(e) = apply(state, &d).await {
            tracing::warn!(deployment = %d.name, error = %e, "cannot restore a deployment");
            let _ = state.store.set_status(&d.uid, Phase::Failed.as_str(), e.message()).await;
        }
    }
}

/// Records a user's action on a deployment in the event feed.
pub async fn record(state: &AppState, caller: &Caller, operation: &str, d: &DeploymentRow, info: Value) {
    crate::registry::record(state, caller, operation, "deployment", &format!("{}/{}", d.namespace, d.name), info).await;
}

/// A random suffix for server-chosen names.
fn name_suffix() -> String {
    let n = Timestamp::now().0 as u64 ^ (std::process::id() as u64).rotate_left(32);
    format!("{:06x}", n & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(service: Value) -> DeploymentConfig {
        DeploymentConfig { services: Some(Map::from_iter([("svc".to_owned(), service)])), ..Default::default() }
    }

    #[test]
    fn an_instance_type_sets_the_requests_the_configuration_leaves_unset() {
        let types = [InstanceType::new("cpu.2", "", "2", "4Gi")];
        let sized = resources(&config(json!({"instance_type": "cpu.2"})), "svc", &types);
        assert_eq!((sized.cpu_request.as_deref(), sized.memory_request.as_deref()), (Some("2"), Some("4Gi")));
        let explicit = resources(
            &config(json!({"instance_type": "cpu.2", "resources": {"requests": {"cpu": "500m"}}})),
            "svc",
            &types,
        );
        assert_eq!((explicit.cpu_request.as_deref(), explicit.memory_request.as_deref()), (Some("500m"), Some("4Gi")));
        let unknown = resources(&config(json!({"instance_type": "gpu.1"})), "svc", &types);
        assert_eq!(unknown, Resources::default());
    }

    #[test]
    fn deployments_go_to_a_kubernetes_clusters_namespace_unless_named() {
        let row = |kind: &str, config: &str| ClusterRow {
            uid: "c".into(),
            org_uid: "o".into(),
            name: "c".into(),
            description: String::new(),
            kind: kind.into(),
            config: config.into(),
            creator_uid: None,
            creator_name: None,
            created_at: 0,
            updated_at: None,
        };
        assert_eq!(default_namespace(&row("kubernetes", r#"{"namespace":"ml"}"#)), "ml");
        assert_eq!(default_namespace(&row("kubernetes", "{}")), DEFAULT_NAMESPACE);
        assert_eq!(default_namespace(&row("local", r#"{"namespace":"ml"}"#)), DEFAULT_NAMESPACE);
    }
}
