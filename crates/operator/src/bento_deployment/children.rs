//! What one BentoDeployment becomes, as pure functions of the BentoDeployment, its Bento and
//! the network settings: the entry service's Deployment, Service, HorizontalPodAutoscaler and
//! (when enabled) Ingress, named, labelled and probed as Yatai does.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, Lifecycle, LifecycleHandler,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    Service, ServicePort, ServiceSpec, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use yatai_kube_api::Bento;
use yatai_kube_api::names::{self, annotations, labels};
use yatai_kube_api::serving::v2alpha1::{
    Autoscaling, BentoDeployment, ExtraPodMetadata, ExtraPodSpec, ResourceItem, Resources,
};

use crate::network::{Network, TlsMode};

/// The port BentoML serves on, named `http` in the pod and the Service.
pub const DEFAULT_PORT: i32 = 3000;
/// The user of images built by `yatai build` and by BentoML's Dockerfile.
pub const BENTO_UID: i64 = 1034;
/// How long a terminating pod keeps serving before its server gets SIGTERM (within the pod's
/// 30 s grace period): time for ingress controllers to stop routing to it.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 10;

/// Everything applied for one BentoDeployment: the API server's workload (flattened here),
/// one workload per runner of a legacy bento, and the Ingress.
#[derive(Clone, Debug)]
pub struct Children {
    pub deployment: Deployment,
    pub service: Service,
    pub hpa: HorizontalPodAutoscaler,
    /// Legacy bentos (BentoML < 1.2) with runners: `<name>-runner-<i>` each.
    pub runners: Vec<Workload>,
    /// `None` when `spec.ingress.enabled` is false (an existing Ingress is then deleted), or
    /// while the domain suffix is not known yet.
    pub ingress: Option<Ingress>,
    /// The minimum number of ready replicas for `Available`.
    pub min_replicas: i32,
    /// `http://<host>` of the Ingress, when there is one.
    pub url: Option<String>,
}

/// The Deployment, Service and HPA of one component (the API server, or a runner).
#[derive(Clone, Debug)]
pub struct Workload {
    pub deployment: Deployment,
    pub service: Service,
    pub hpa: HorizontalPodAutoscaler,
    pub min_replicas: i32,
}

/// What differs between the API server and a runner: names, per-component settings, command.
struct Component<'a> {
    /// The Deployment's and the HPA's name (and the selector value).
    name: String,
    service: String,
    /// The runner's name, for runners.
    runner: Option<&'a str>,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    resources: Option<&'a Resources>,
    autoscaling: Option<&'a Autoscaling>,
    envs: &'a [EnvVar],
    /// The BentoDeployment's own volumes and main-container mounts (every component's).
    volumes: &'a [Volume],
    volume_mounts: &'a [VolumeMount],
    extra_pod_metadata: Option<&'a ExtraPodMetadata>,
    extra_pod_spec: Option<&'a ExtraPodSpec>,
    /// Arguments to the image's entrypoint; `None` runs it as it is (`bentoml serve`).
    args: Option<Vec<String>>,
}

/// The Service of a runner: `<name>-runner-<md5(tag-runner)>`, or `runner-<md5>` when that is
/// longer than 63 characters (Yatai's rule).
pub fn runner_service_name(bd_name: &str, tag: &str, runner: &str) -> String {
    let hash = names::md5_hex(&format!("{tag}-{runner}"));
    let name = format!("{bd_name}-runner-{hash}");
    if name.len() > names::MAX_NAME { format!("runner-{hash}") } else { name }
}

/// A BentoDeployment or Bento that cannot become objects: the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// The Ingress host: `<name>-<namespace>.<suffix>`.
pub fn ingress_host(name: &str, namespace: &str, suffix: &str) -> String {
    format!("{name}-{namespace}.{suffix}")
}

/// Checks what Kubernetes would refuse later, with a message a person can act on.
pub fn check(bd: &BentoDeployment, bento: &Bento) -> Result<(), Invalid> {
    let name = bd.name_any();
    let ns = bd.namespace().unwrap_or_default();
    // The Service and the `yatai.ai/selector` label value both take the name; both are
    // limited to 63 characters, and so is the host's first label.
    if name.len() > names::MAX_NAME {
        return Err(Invalid(format!(
            "the name {name:?} is {} characters long; a BentoDeployment's name becomes a Service name, at most {} \
             characters: choose a shorter name",
            name.len(),
            names::MAX_NAME
        )));
    }
    if bd.spec.ingress.enabled && name.len() + 1 + ns.len() > names::MAX_NAME {
        return Err(Invalid(format!(
            "the ingress host's first label {name}-{ns} is longer than {} characters: choose a shorter name or \
             namespace, or disable the ingress",
            names::MAX_NAME
        )));
    }
    if bento.spec.image.trim().is_empty() {
        return Err(Invalid(format!("Bento {} has no image", bento.name_any())));
    }
    if names::split_tag(&bento.spec.tag).is_none() {
        return Err(Invalid(format!(
            "Bento {} has the tag {:?}, which is not repository:version",
            bento.name_any(),
            bento.spec.tag
        )));
    }
    if let Some(a) = &bd.spec.autoscaling
        && (a.min_replicas < 0 || a.min_replicas > a.max_replicas || (a.max_replicas < 1 && !scaled_to_zero(Some(a))))
    {
        return Err(Invalid(format!(
            "autoscaling: minReplicas {} and maxReplicas {} must satisfy 0 <= min <= max and max >= 1 (or both 0 to \
             scale to zero)",
            a.min_replicas, a.max_replicas
        )));
    }
    if let Some(strategy) = bd.spec.annotations.get(annotations::DEPLOYMENT_STRATEGY) {
        strategy_for(strategy)?;
    }
    port(bd)?;
    check_volumes(&bd.spec.volumes, &bd.spec.volume_mounts)?;
    Ok(())
}

/// The operator's own volume and mount, which `spec.volumes` / `spec.volumeMounts` may not take.
const SHM_VOLUME: &str = "shm";
const SHM_PATH: &str = "/dev/shm";

/// Volumes with distinct names other than the operator's; mounts at distinct absolute paths
/// other than its own, each of a volume the spec declares.
fn check_volumes(volumes: &[Volume], mounts: &[VolumeMount]) -> Result<(), Invalid> {
    let mut names = std::collections::BTreeSet::new();
    for v in volumes {
        if v.name == SHM_VOLUME || !names.insert(v.name.as_str()) {
            return Err(Invalid(format!(
                "spec.volumes: the name {:?} is taken (by the operator's {SHM_VOLUME:?} volume or another entry):                  rename it",
                v.name
            )));
        }
    }
    let mut paths = std::collections::BTreeSet::new();
    for m in mounts {
        let path = m.mount_path.trim_end_matches('/');
        if !m.mount_path.starts_with('/') || path == SHM_PATH || !paths.insert(path) {
            return Err(Invalid(format!(
                "spec.volumeMounts: the mount path {:?} must be absolute, not {SHM_PATH} and not mounted twice",
                m.mount_path
            )));
        }
        if !names.contains(m.name.as_str()) {
            return Err(Invalid(format!(
                "spec.volumeMounts: {:?} mounts the volume {:?}, which spec.volumes does not declare",
                m.mount_path, m.name
            )));
        }
    }
    Ok(())
}

/// Builds every child. `suffix` is the ingress domain suffix, when known.
pub fn build(
    bd: &BentoDeployment,
    bento: &Bento,
    network: &Network,
    suffix: Option<&str>,
) -> Result<Children, Invalid> {
    check(bd, bento)?;
    let name = bd.name_any();
    let ns = bd.namespace().unwrap_or_default();
    let (repository, version) = names::split_tag(&bento.spec.tag).expect("checked");
    let port = port(bd)?;

    // Legacy bentos: one workload per runner, and the API server told where they are.
    let mut runner_map = BTreeMap::new();
    let mut runners = Vec::new();
    for (i, runner) in bento.spec.runners.iter().enumerate() {
        let service = runner_service_name(&name, &bento.spec.tag, &runner.name);
        runner_map.insert(runner.name.clone(), format!("tcp://{service}:{DEFAULT_PORT}"));
        let overrides = bd.spec.runners.iter().find(|r| r.name == runner.name);
        let empty = BTreeMap::new();
        let component = Component {
            name: format!("{name}-runner-{i}"),
            service,
            runner: Some(&runner.name),
            labels: overrides.map(|r| &r.labels).unwrap_or(&empty),
            annotations: overrides.map(|r| &r.annotations).unwrap_or(&empty),
            resources: overrides.and_then(|r| r.resources.as_ref()),
            autoscaling: overrides.and_then(|r| r.autoscaling.as_ref()),
            envs: overrides.map(|r| r.envs.as_slice()).unwrap_or_default(),
            volumes: &bd.spec.volumes,
            volume_mounts: &bd.spec.volume_mounts,
            extra_pod_metadata: overrides.and_then(|r| r.extra_pod_metadata.as_ref()),
            extra_pod_spec: overrides.and_then(|r| r.extra_pod_spec.as_ref()),
            args: Some(
                ["python", "-m", "bentoml._internal.server.cli.runner", ".", "--runner-name", &runner.name]
                    .into_iter()
                    .map(String::from)
                    .chain([
                        "--bind".into(),
                        format!("tcp://0.0.0.0:{DEFAULT_PORT}"),
                        "--working-dir".into(),
                        ".".into(),
                    ])
                    .collect(),
            ),
        };
        runners.push(workload(bd, bento, &component, DEFAULT_PORT, (repository, version))?);
    }
    let api_args = (!runner_map.is_empty()).then(|| {
        vec![
            "python".into(),
            "-m".into(),
            "bentoml._internal.server.cli.api_server".into(),
            ".".into(),
            "--bind".into(),
            format!("tcp://0.0.0.0:{port}"),
            "--runner-map".into(),
            serde_json::to_string(&runner_map).expect("a map of strings"),
            "--working-dir".into(),
            ".".into(),
        ]
    });
    let api = Component {
        name: name.clone(),
        service: name.clone(),
        runner: None,
        labels: &bd.spec.labels,
        annotations: &bd.spec.annotations,
        resources: bd.spec.resources.as_ref(),
        autoscaling: bd.spec.autoscaling.as_ref(),
        envs: &bd.spec.envs,
        volumes: &bd.spec.volumes,
        volume_mounts: &bd.spec.volume_mounts,
        extra_pod_metadata: bd.spec.extra_pod_metadata.as_ref(),
        extra_pod_spec: bd.spec.extra_pod_spec.as_ref(),
        args: api_args,
    };
    let Workload { deployment, service, hpa, min_replicas } = workload(bd, bento, &api, port, (repository, version))?;

    let (ingress, url) = match (bd.spec.ingress.enabled, suffix) {
        (true, Some(suffix)) => {
            let host = ingress_host(&name, &ns, suffix);
            let mut ingress_labels = deployment.metadata.labels.clone().unwrap_or_default();
            ingress_labels.extend(bd.spec.ingress.labels.clone());
            let mut ingress_annotations = deployment.metadata.annotations.clone().unwrap_or_default();
            // Later entries win: the operator's, the cluster's (ConfigMap), the deployment's.
            ingress_annotations.insert("nginx.ingress.kubernetes.io/ssl-redirect".into(), "false".into());
            ingress_annotations.extend(network.ingress_annotations.clone());
            ingress_annotations.extend(bd.spec.ingress.annotations.clone());
            let tls_secret =
                bd.spec.ingress.tls.as_ref().map(|t| t.secret_name.clone()).filter(|s| !s.is_empty()).or_else(|| {
                    match network.tls_mode {
                        TlsMode::None => None,
                        TlsMode::Auto => Some(name.clone()),
                        TlsMode::Static => network.static_tls_secret.clone(),
                    }
                });
            let scheme = if tls_secret.is_some() { "https" } else { "http" };
            let ingress = Ingress {
                metadata: ObjectMeta {
                    labels: Some(ingress_labels),
                    annotations: Some(ingress_annotations),
                    ..deployment.metadata.clone()
                },
                spec: Some(IngressSpec {
                    ingress_class_name: network.ingress_class.clone(),
                    tls: tls_secret
                        .map(|secret| vec![IngressTLS { hosts: Some(vec![host.clone()]), secret_name: Some(secret) }]),
                    rules: Some(vec![IngressRule {
                        host: Some(host.clone()),
                        http: Some(HTTPIngressRuleValue {
                            paths: vec![HTTPIngressPath {
                                path: Some(network.ingress_path.clone()),
                                path_type: network.ingress_path_type.clone(),
                                backend: IngressBackend {
                                    service: Some(IngressServiceBackend {
                                        name: name.clone(),
                                        port: Some(ServiceBackendPort { name: Some("http".into()), number: None }),
                                    }),
                                    resource: None,
                                },
                            }],
                        }),
                    }]),
                    ..Default::default()
                }),
                status: None,
            };
            (Some(ingress), Some(format!("{scheme}://{host}")))
        }
        _ => (None, None),
    };

    Ok(Children { deployment, service, hpa, runners, ingress, min_replicas, url })
}

/// The Deployment, Service and HPA of one component.
fn workload(
    bd: &BentoDeployment,
    bento: &Bento,
    c: &Component,
    port: i32,
    (repository, version): (&str, &str),
) -> Result<Workload, Invalid> {
    let owner = bd.controller_owner_ref(&()).expect("a BentoDeployment read from the API server has a uid");
    let ns = bd.namespace().unwrap_or_default();
    let mut common = BTreeMap::from([
        (labels::BENTO_DEPLOYMENT.to_string(), bd.name_any()),
        (labels::BENTO_REPOSITORY.to_string(), repository.to_string()),
        (labels::BENTO_VERSION.to_string(), version.to_string()),
        (
            labels::COMPONENT_TYPE.to_string(),
            if c.runner.is_some() { labels::COMPONENT_RUNNER } else { labels::COMPONENT_API_SERVER }.to_string(),
        ),
        (labels::CREATOR.to_string(), labels::CREATOR_VALUE.to_string()),
    ]);
    if let Some(runner) = c.runner {
        common.insert(labels::COMPONENT_NAME.to_string(), runner.to_string());
    }
    common.extend(c.labels.clone());
    let common_annotations = BTreeMap::from([
        (labels::BENTO_REPOSITORY.to_string(), repository.to_string()),
        (labels::BENTO_VERSION.to_string(), version.to_string()),
    ]);
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.clone()),
        labels: Some(common.clone()),
        annotations: Some(common_annotations.clone()),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };
    let selector = BTreeMap::from([(labels::SELECTOR.to_string(), c.name.clone())]);

    let (min_replicas, max_replicas) = replicas(c.autoscaling);
    let deployment = Deployment {
        metadata: meta(&c.name),
        spec: DeploymentSpec {
            // Left unset: the HPA owns the replica count. Scaled to zero, it is 0, and the HPA
            // (which cannot go below one) leaves a Deployment at zero alone (`ScalingDisabled`).
            replicas: scaled_to_zero(c.autoscaling).then_some(0),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            strategy: Some(strategy_for(
                c.annotations.get(annotations::DEPLOYMENT_STRATEGY).map(String::as_str).unwrap_or("RollingUpdate"),
            )?),
            template: pod_template(bd, bento, c, &common, &selector, port)?,
            ..Default::default()
        },
        status: None,
    };

    let service = Service {
        metadata: meta(&c.service),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: DEFAULT_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };

    let hpa = HorizontalPodAutoscaler {
        metadata: meta(&c.name),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: c.name.clone(),
            },
            min_replicas: Some(min_replicas.max(1)),
            max_replicas,
            metrics: Some(metrics(c.autoscaling)),
            behavior: c.autoscaling.and_then(|a| a.behavior.clone()),
        },
        status: None,
    };
    Ok(Workload { deployment, service, hpa, min_replicas })
}

/// `minReplicas = maxReplicas = 0`: no pods, the BentoDeployment kept (what yatai's terminate
/// writes).
pub fn scaled_to_zero(autoscaling: Option<&Autoscaling>) -> bool {
    autoscaling.is_some_and(|a| a.min_replicas == 0 && a.max_replicas == 0)
}

/// `(min, max)`: Yatai's default is one replica when `autoscaling` is absent.
pub fn replicas(autoscaling: Option<&Autoscaling>) -> (i32, i32) {
    autoscaling.map(|a| (a.min_replicas, a.max_replicas.max(a.min_replicas).max(1))).unwrap_or((1, 1))
}

fn metrics(autoscaling: Option<&Autoscaling>) -> Vec<MetricSpec> {
    match autoscaling.map(|a| &a.metrics) {
        Some(m) if !m.is_empty() => m.clone(),
        _ => vec![MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(80),
                    ..Default::default()
                },
            }),
            ..Default::default()
        }],
    }
}

fn strategy_for(name: &str) -> Result<DeploymentStrategy, Invalid> {
    let rolling = |surge: IntOrString, unavailable: IntOrString| DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment { max_surge: Some(surge), max_unavailable: Some(unavailable) }),
    };
    let pct = |s: &str| IntOrString::String(s.into());
    Ok(match name {
        "RollingUpdate" | "" => rolling(pct("25%"), pct("25%")),
        "Recreate" => DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None },
        "RampedSlowRollout" => rolling(IntOrString::Int(1), IntOrString::Int(0)),
        "BestEffortControlledRollout" => rolling(IntOrString::Int(0), pct("20%")),
        other => {
            return Err(Invalid(format!(
                "annotation {}: {other:?} is not RollingUpdate, Recreate, RampedSlowRollout or \
                 BestEffortControlledRollout",
                annotations::DEPLOYMENT_STRATEGY
            )));
        }
    })
}

/// The container port: `PORT` from the user's envs, else 3000.
fn port(bd: &BentoDeployment) -> Result<i32, Invalid> {
    match bd.spec.envs.iter().find(|e| e.name == "PORT").and_then(|e| e.value.as_deref()) {
        None => Ok(DEFAULT_PORT),
        Some(v) => v
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| Invalid(format!("env PORT={v:?} is not a port number (1-65535)"))),
    }
}

fn pod_template(
    bd: &BentoDeployment,
    bento: &Bento,
    c: &Component,
    common: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
    port: i32,
) -> Result<PodTemplateSpec, Invalid> {
    let mut pod_labels = common.clone();
    pod_labels.extend(selector.clone());
    pod_labels.insert(labels::TARGET_TYPE.into(), labels::TARGET_PRODUCTION.into());
    let mut pod_annotations = BTreeMap::new();
    if let Some(extra) = c.extra_pod_metadata {
        pod_labels.extend(extra.labels.clone());
        pod_annotations.extend(extra.annotations.clone());
    }

    // Injected first, so that the user's values replace them.
    let mut env = vec![
        env_var("PORT", &port.to_string()),
        env_var("YATAI_T_DEPLOYMENT_UID", &bd.uid().unwrap_or_default()),
        env_var("YATAI_BENTO_DEPLOYMENT_NAME", &bd.name_any()),
        env_var("YATAI_BENTO_DEPLOYMENT_NAMESPACE", &bd.namespace().unwrap_or_default()),
    ];
    for user in c.envs {
        match env.iter_mut().find(|e| e.name == user.name) {
            Some(e) => *e = user.clone(),
            None => env.push(user.clone()),
        }
    }

    let resources =
        resources(c.resources.and_then(|r| r.requests.as_ref()), c.resources.and_then(|r| r.limits.as_ref()))?;
    let shm_size = resources
        .limits
        .as_ref()
        .and_then(|l| l.get("memory"))
        .and_then(|q| half_quantity(&q.0))
        .unwrap_or_else(|| "64Mi".into());

    let manifest = bento.spec.manifest.as_ref();
    let livez = manifest.map(|m| m.livez_endpoint.clone()).filter(|s| !s.is_empty()).unwrap_or("/livez".into());
    let readyz = manifest.map(|m| m.readyz_endpoint.clone()).filter(|s| !s.is_empty()).unwrap_or("/readyz".into());
    let http_get = |path: &str| {
        Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::String("http".into()), ..Default::default() })
    };

    let main = Container {
        name: "main".into(),
        image: Some(bento.spec.image.clone()),
        // The image's own entrypoint serves the bento (a runner, or an API server that calls
        // runners, by the arguments it is given).
        args: c.args.clone(),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(env),
        resources: Some(resources),
        // A model may take minutes to load: the startup probe allows 10 minutes before the
        // liveness probe may restart the container.
        startup_probe: Some(Probe {
            http_get: http_get(&livez),
            period_seconds: Some(5),
            timeout_seconds: Some(5),
            failure_threshold: Some(120),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: http_get(&livez),
            period_seconds: Some(10),
            timeout_seconds: Some(20),
            failure_threshold: Some(6),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            http_get: http_get(&readyz),
            period_seconds: Some(5),
            timeout_seconds: Some(5),
            failure_threshold: Some(12),
            ..Default::default()
        }),
        // A terminating pod leaves the Service's endpoints at once, but an ingress controller
        // or kube-proxy stops sending to it only when it sees that, a moment later; the server
        // stops listening on SIGTERM. Waiting before the SIGTERM keeps a rolling update from
        // losing those requests (on the real node: 144 of 2341 lost through Traefik without it,
        // none with it). The kubelet's own sleep, so the image needs no `sleep`.
        // A crash's last output lines become the container's termination message, which
        // the deployment's status quotes.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: PRE_STOP_SLEEP_SECONDS }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(
            std::iter::once(VolumeMount { name: SHM_VOLUME.into(), mount_path: SHM_PATH.into(), ..Default::default() })
                .chain(c.volume_mounts.iter().cloned())
                .collect(),
        ),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            run_as_non_root: Some(true),
            run_as_user: Some(BENTO_UID),
            run_as_group: Some(BENTO_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let mut containers = vec![main];
    let mut spec = PodSpec {
        image_pull_secrets: Some(bento.spec.image_pull_secrets.clone()).filter(|s| !s.is_empty()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            fs_group: Some(BENTO_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        volumes: Some(
            std::iter::once(Volume {
                name: SHM_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity(shm_size)),
                    mode: None,
                }),
                ..Default::default()
            })
            .chain(c.volumes.iter().cloned())
            .collect(),
        ),
        ..Default::default()
    };
    if let Some(extra) = c.extra_pod_spec {
        spec.scheduler_name = Some(extra.scheduler_name.clone()).filter(|s| !s.is_empty());
        spec.node_selector = Some(extra.node_selector.clone()).filter(|s| !s.is_empty());
        spec.affinity = extra.affinity.clone();
        spec.tolerations = Some(extra.tolerations.clone()).filter(|s| !s.is_empty());
        spec.topology_spread_constraints = Some(extra.topology_spread_constraints.clone()).filter(|s| !s.is_empty());
        spec.service_account_name = Some(extra.service_account_name.clone()).filter(|s| !s.is_empty());
        containers.extend(extra.containers.clone());
    }
    spec.containers = containers;

    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(pod_annotations).filter(|a| !a.is_empty()),
            ..Default::default()
        }),
        spec: Some(spec),
    })
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

/// Yatai's defaults (requests 300m / 500Mi, limits 500m / 1Gi) overlaid with the spec's;
/// `gpu` becomes the limit `nvidia.com/gpu`, `custom` entries are added as they are.
fn resources(requests: Option<&ResourceItem>, limits: Option<&ResourceItem>) -> Result<ResourceRequirements, Invalid> {
    let mut req =
        BTreeMap::from([("cpu".to_string(), "300m".to_string()), ("memory".to_string(), "500Mi".to_string())]);
    let mut lim = BTreeMap::from([("cpu".to_string(), "500m".to_string()), ("memory".to_string(), "1Gi".to_string())]);
    let overlay = |into: &mut BTreeMap<String, String>, item: Option<&ResourceItem>, gpu_allowed: bool| {
        let Some(item) = item else { return };
        if !item.cpu.is_empty() {
            into.insert("cpu".into(), item.cpu.clone());
        }
        if !item.memory.is_empty() {
            into.insert("memory".into(), item.memory.clone());
        }
        if gpu_allowed && !item.gpu.is_empty() {
            into.insert("nvidia.com/gpu".into(), item.gpu.clone());
        }
        into.extend(item.custom.clone());
    };
    overlay(&mut req, requests, false);
    overlay(&mut lim, limits, true);
    // A request above the default limit raises the limit with it, so that asking for 2 CPUs
    // alone is not refused by Kubernetes (request > limit).
    for key in ["cpu", "memory"] {
        let explicit_limit =
            limits.is_some_and(|l| if key == "cpu" { !l.cpu.is_empty() } else { !l.memory.is_empty() });
        let (request, limit) =
            (req.get(key).and_then(|q| parse_quantity(q)), lim.get(key).and_then(|q| parse_quantity(q)));
        if !explicit_limit
            && let (Some(r), Some(l)) = (request, limit)
            && r > l
        {
            lim.insert(key.into(), req[key].clone());
        }
    }
    for (what, map) in [("requests", &req), ("limits", &lim)] {
        for (k, v) in map {
            if parse_quantity(v).is_none() {
                return Err(Invalid(format!(
                    "resources.{what}.{k}: {v:?} is not a quantity (e.g. 500m, 2, 1Gi, 512Mi)"
                )));
            }
        }
    }
    let q = |m: BTreeMap<String, String>| Some(m.into_iter().map(|(k, v)| (k, Quantity(v))).collect());
    Ok(ResourceRequirements { requests: q(req), limits: q(lim), ..Default::default() })
}

/// A Kubernetes quantity as a number (base units), for comparisons and halving.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        _ => return None,
    };
    (n >= 0.0).then_some(n * mult)
}

/// Half of a memory quantity, in Mi (the `/dev/shm` size).
fn half_quantity(q: &str) -> Option<String> {
    let bytes = parse_quantity(q)?;
    let mi = (bytes / 2.0 / (1024.0 * 1024.0)).floor() as u64;
    (mi > 0).then(|| format!("{mi}Mi"))
}

#[cfg(test)]
mod tests {
    use yatai_kube_api::resources::BentoSpec;
    use yatai_kube_api::serving::v2alpha1::BentoDeploymentSpec;

    use super::*;

    fn with_autoscaling(min: i32, max: i32) -> BentoDeployment {
        let mut bd = BentoDeployment::new(
            "iris",
            BentoDeploymentSpec {
                bento: "iris--v1".into(),
                autoscaling: Some(Autoscaling { min_replicas: min, max_replicas: max, ..Default::default() }),
                ..Default::default()
            },
        );
        bd.metadata.namespace = Some("ml".into());
        bd.metadata.uid = Some("uid-1".into());
        bd
    }

    #[test]
    fn a_terminating_pod_keeps_serving_until_routes_to_it_are_gone() {
        let bento =
            Bento::new("iris--v1", BentoSpec { tag: "iris:v1".into(), image: "r/i:1".into(), ..Default::default() });
        let children = build(&with_autoscaling(1, 2), &bento, &Network::default(), None).unwrap();
        let pod = children.deployment.spec.template.spec.unwrap();
        let pre_stop = pod.containers[0].lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).expect("a preStop hook");
        assert_eq!(pre_stop.sleep.as_ref().map(|s| s.seconds), Some(PRE_STOP_SLEEP_SECONDS));
        assert!(pre_stop.exec.is_none(), "the kubelet sleeps: the image needs no sleep binary");
        // The hook counts against the grace period: the server still gets time to drain.
        let grace = pod.termination_grace_period_seconds.unwrap_or(30);
        assert!(grace >= PRE_STOP_SLEEP_SECONDS + 15, "grace period {grace}s");
    }

    #[test]
    fn zero_replicas_keeps_the_objects_with_a_deployment_at_zero() {
        let bento =
            Bento::new("iris--v1", BentoSpec { tag: "iris:v1".into(), image: "r/i:1".into(), ..Default::default() });
        let network = Network::default();
        let zero = build(&with_autoscaling(0, 0), &bento, &network, None).unwrap();
        assert_eq!(zero.deployment.spec.replicas, Some(0));
        assert_eq!(zero.min_replicas, 0);
        assert_eq!(zero.hpa.spec.min_replicas, Some(1), "an HPA cannot go below one");

        // Otherwise the HPA owns the count, as before.
        let two = build(&with_autoscaling(2, 3), &bento, &network, None).unwrap();
        assert_eq!(two.deployment.spec.replicas, None);
        let min_zero = build(&with_autoscaling(0, 3), &bento, &network, None).unwrap();
        assert_eq!(min_zero.deployment.spec.replicas, None);

        // A maximum of zero with a positive minimum is still a mistake.
        let bad = check(&with_autoscaling(1, 0), &bento).unwrap_err();
        assert!(bad.0.contains("both 0 to scale to zero"), "{}", bad.0);
        check(&with_autoscaling(0, 0), &bento).unwrap();
    }

    #[test]
    fn secret_refs_and_volumes_reach_the_pod_as_references() {
        use k8s_openapi::api::core::v1::{EnvVarSource, SecretKeySelector, SecretVolumeSource};
        let bento =
            Bento::new("iris--v1", BentoSpec { tag: "iris:v1".into(), image: "r/i:1".into(), ..Default::default() });
        let mut bd = with_autoscaling(1, 1);
        bd.spec.envs.push(EnvVar {
            name: "API_KEY".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector { name: "s".into(), key: "API_KEY".into(), optional: None }),
                ..Default::default()
            }),
        });
        bd.spec.volumes.push(Volume {
            name: "secret-db".into(),
            secret: Some(SecretVolumeSource { secret_name: Some("s".into()), ..Default::default() }),
            ..Default::default()
        });
        bd.spec.volume_mounts.push(VolumeMount {
            name: "secret-db".into(),
            mount_path: "/home/bentoml/creds/token".into(),
            sub_path: Some("file-0".into()),
            read_only: Some(true),
            ..Default::default()
        });
        let pod = build(&bd, &bento, &Network::default(), None).unwrap().deployment.spec.template.spec.unwrap();
        let main = &pod.containers[0];
        let env = main.env.as_ref().unwrap().iter().find(|e| e.name == "API_KEY").unwrap();
        assert!(env.value.is_none() && env.value_from.is_some(), "{env:?}");
        let volumes: Vec<&str> = pod.volumes.as_ref().unwrap().iter().map(|v| v.name.as_str()).collect();
        assert_eq!(volumes, ["shm", "secret-db"]);
        let mounts: Vec<&str> = main.volume_mounts.as_ref().unwrap().iter().map(|m| m.mount_path.as_str()).collect();
        assert_eq!(mounts, ["/dev/shm", "/home/bentoml/creds/token"]);

        // The operator's own names, a mount of an undeclared volume, twice the same path: refused.
        let mut shm = bd.clone();
        shm.spec.volumes[0].name = "shm".into();
        assert!(check(&shm, &bento).unwrap_err().0.contains("taken"));
        let mut undeclared = bd.clone();
        undeclared.spec.volume_mounts[0].name = "nope".into();
        assert!(check(&undeclared, &bento).unwrap_err().0.contains("does not declare"));
        let mut twice = bd.clone();
        twice.spec.volume_mounts.push(twice.spec.volume_mounts[0].clone());
        assert!(check(&twice, &bento).unwrap_err().0.contains("twice"));
        let mut dev_shm = bd;
        dev_shm.spec.volume_mounts[0].mount_path = "/dev/shm/".into();
        assert!(check(&dev_shm, &bento).is_err());
    }
}
