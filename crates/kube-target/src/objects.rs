//! What one revision of a yatai deployment becomes on a cluster, as pure functions of its
//! [`DeploymentSpec`]: the `Bento` (the server built the image) or the `BentoRequest` (the
//! operator builds it), and the `BentoDeployment`. Every object carries yatai's marks, so any
//! CR can be mapped back to the deployment it belongs to, and a hand-made one is recognised.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, Secret, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use yatai_core::deploy::{DeploymentSpec, ForeignDeployment, InstanceType, Resources as SpecResources};
use yatai_core::secret::{DeploySecret, SecretType};
use yatai_kube_api::names;
use yatai_kube_api::resources::{BentoModel, BentoRequestSpec, BentoSpec};
use yatai_kube_api::serving::v2alpha1::{
    Autoscaling, BentoDeployment, BentoDeploymentSpec, ExtraPodMetadata, Ingress, ResourceItem, Resources,
};
use yatai_kube_api::{Bento, BentoRequest};

/// The replica sizes a Kubernetes cluster offers, named as BentoCloud names its CPU instance
/// types so that a configuration written for it works here; each sets the pod's requests.
pub fn instance_types() -> Vec<InstanceType> {
    [("cpu.1", "1", "2Gi"), ("cpu.2", "2", "4Gi"), ("cpu.4", "4", "8Gi"), ("cpu.8", "8", "16Gi")]
        .into_iter()
        .map(|(name, cpu, memory)| {
            let description = format!("{cpu} CPU, {memory} of memory requested per replica");
            InstanceType::new(name, &description, cpu, memory)
        })
        .collect()
}

/// The field manager of every server-side apply yatai makes: the fields it sets are its own;
/// fields a person sets by hand on the same CR stay theirs.
pub const FIELD_MANAGER: &str = "yatai";

/// Labels and annotations yatai puts on the CRs it writes.
pub mod marks {
    /// Label: the uid of the yatai deployment a BentoDeployment belongs to.
    pub const DEPLOYMENT_UID: &str = "yatai.ai/deployment-uid";
    /// Label: `yatai` on every CR the server wrote (a BentoDeployment without it was made
    /// outside yatai, e.g. by GitOps).
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGED_BY_VALUE: &str = "yatai";
    /// Annotation: the revision the BentoDeployment runs.
    pub const REVISION_UID: &str = "yatai.ai/revision-uid";
    /// Annotation: the organization that owns the deployment.
    pub const ORGANIZATION_UID: &str = "yatai.ai/organization-uid";
    /// Label: on a Secret yatai wrote, the name of the yatai secret it holds.
    pub const SECRET_NAME: &str = "yatai.ai/secret-name";
    /// Annotation: on such a Secret, the revision of the values it holds.
    pub const SECRET_REVISION: &str = "yatai.ai/secret-revision";
    /// Pod annotation: the revisions of the secrets the replicas read, so that replacing
    /// one rolls the pods (a Secret's change alone restarts nothing).
    pub const SECRETS_REVISION: &str = "yatai.ai/secrets-revision";
}

/// Where an image made by yatai or BentoML keeps `BENTOML_HOME`, under which `mountfile`
/// secrets are mounted (unless the deployment's envs set another).
const IMAGE_BENTOML_HOME: &str = "/home/bentoml";

/// The Secret that holds a yatai secret's values in a namespace. Shared by the deployments
/// of the namespace that use it; written by each apply, collected when none uses it.
pub fn secret_object_name(secret: &str) -> String {
    format!("yatai-secret-{secret}")
}

/// The data key of an item: the variable's name for `env`, `file-<index>` for `mountfile`
/// (a file's key may hold characters a Secret's key may not).
fn data_key(secret: &DeploySecret, index: usize) -> String {
    match secret.content.kind {
        SecretType::Env => secret.content.items[index].key.clone(),
        SecretType::MountFile => format!("file-{index}"),
    }
}

fn reaches_pods(s: &DeploySecret) -> bool {
    s.content.stage.at_runtime()
}

fn reaches_build(s: &DeploySecret) -> bool {
    s.content.kind == SecretType::Env && s.content.stage.at_build()
}

/// The Secrets the spec's secrets become: one per secret that reaches the pods, or the
/// operator's build (only when the image is still to be built).
pub fn secrets(spec: &DeploymentSpec) -> Vec<Secret> {
    spec.secrets
        .iter()
        .filter(|s| reaches_pods(s) || (reaches_build(s) && spec.image.is_none()))
        .map(|s| {
            let mut labels = labels();
            labels.insert(marks::SECRET_NAME.to_string(), s.name.clone());
            let mut metadata = meta(secret_object_name(&s.name), &spec.namespace, labels);
            metadata.annotations = Some(BTreeMap::from([(marks::SECRET_REVISION.to_string(), s.revision.clone())]));
            let data = s
                .content
                .items
                .iter()
                .enumerate()
                .map(|(i, item)| (data_key(s, i), ByteString(item.value.clone().into_bytes())))
                .collect();
            Secret { metadata, data: Some(data), type_: Some("Opaque".into()), ..Default::default() }
        })
        .collect()
}

/// `env` items as references to the secret's Secret: the value is never in the object.
fn secret_env(s: &DeploySecret) -> impl Iterator<Item = EnvVar> + '_ {
    s.content.items.iter().enumerate().map(move |(i, item)| EnvVar {
        name: item.key.clone(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret_object_name(&s.name),
                key: data_key(s, i),
                optional: None,
            }),
            ..Default::default()
        }),
    })
}

/// The pods' volumes and mounts for the `mountfile` secrets: one volume per secret, one
/// read-only mount per file (so that the rest of `BENTOML_HOME`, the bento, stays visible).
fn secret_mounts(spec: &DeploymentSpec) -> (Vec<Volume>, Vec<VolumeMount>) {
    let home = spec
        .envs
        .iter()
        .find(|(k, _)| k == "BENTOML_HOME")
        .map(|(_, v)| v.trim_end_matches('/').to_string())
        .filter(|h| h.starts_with('/'))
        .unwrap_or_else(|| IMAGE_BENTOML_HOME.to_string());
    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    for (n, s) in spec.secrets.iter().filter(|s| s.content.kind == SecretType::MountFile).enumerate() {
        let files = s.files();
        if files.is_empty() {
            continue;
        }
        let volume = format!("yatai-secret-{n}");
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_object_name(&s.name)),
                // Readable by the bento's user (the pod's fsGroup) and root only.
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
        for (i, (path, _)) in files.iter().enumerate() {
            mounts.push(VolumeMount {
                name: volume.clone(),
                mount_path: format!("{home}/{path}"),
                sub_path: Some(data_key(s, i)),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    (volumes, mounts)
}

/// The pods' annotation that changes when a secret they read is replaced.
fn secrets_revision(spec: &DeploymentSpec) -> Option<String> {
    let revisions: Vec<String> =
        spec.secrets.iter().filter(|s| reaches_pods(s)).map(|s| format!("{}={}", s.name, s.revision)).collect();
    (!revisions.is_empty()).then(|| revisions.join(","))
}

/// The names of the Secrets an object of the namespace refers to (envs and volumes).
pub fn referenced_secrets<'a>(
    envs: impl IntoIterator<Item = &'a EnvVar>,
    volumes: impl IntoIterator<Item = &'a Volume>,
) -> impl Iterator<Item = String> {
    let from_envs = envs
        .into_iter()
        .filter_map(|e| e.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()).map(|r| r.name.clone()));
    let from_volumes = volumes.into_iter().filter_map(|v| v.secret.as_ref().and_then(|s| s.secret_name.clone()));
    from_envs.chain(from_volumes).collect::<Vec<_>>().into_iter()
}

/// `repository:version` of the spec's bento.
pub fn bento_tag(spec: &DeploymentSpec) -> String {
    format!("{}:{}", spec.bento.name, spec.bento.version)
}

/// The Bento / BentoRequest name the BentoDeployment points at (Yatai's naming rule).
pub fn bento_object_name(spec: &DeploymentSpec) -> String {
    names::bento_request_name(&bento_tag(spec))
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(marks::MANAGED_BY.to_string(), marks::MANAGED_BY_VALUE.to_string())])
}

fn meta(name: String, namespace: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta { name: Some(name), namespace: Some(namespace.to_string()), labels: Some(labels), ..Default::default() }
}

fn models(spec: &DeploymentSpec) -> Vec<BentoModel> {
    spec.models.iter().map(|m| BentoModel { tag: format!("{}:{}", m.name, m.version), ..Default::default() }).collect()
}

/// The Bento naming an image the server already built.
pub fn bento(spec: &DeploymentSpec, image: &str) -> Bento {
    Bento {
        metadata: meta(bento_object_name(spec), &spec.namespace, labels()),
        spec: BentoSpec { tag: bento_tag(spec), image: image.to_string(), models: models(spec), ..Default::default() },
        status: None,
    }
}

/// The BentoRequest that has the operator build the image (downloading the bento from yatai).
/// Secrets of stage `build` reach the operator's build as the builder's environment,
/// by reference.
pub fn bento_request(spec: &DeploymentSpec) -> BentoRequest {
    BentoRequest {
        metadata: meta(bento_object_name(spec), &spec.namespace, labels()),
        spec: BentoRequestSpec {
            bento_tag: bento_tag(spec),
            models: models(spec),
            image_builder_extra_container_env: spec
                .secrets
                .iter()
                .filter(|s| reaches_build(s))
                .flat_map(secret_env)
                .collect(),
            ..Default::default()
        },
        status: None,
    }
}

/// The BentoDeployment of the revision. Only the fields yatai decides are set, so that fields
/// set by hand (extraPodMetadata, extraPodSpec, monitorExporter, ...) survive an apply.
pub fn bento_deployment(spec: &DeploymentSpec) -> BentoDeployment {
    let mut labels = labels();
    labels.insert(marks::DEPLOYMENT_UID.to_string(), spec.uid.clone());
    let mut metadata = meta(spec.name.clone(), &spec.namespace, labels);
    metadata.annotations = Some(BTreeMap::from([
        (marks::REVISION_UID.to_string(), spec.revision_uid.clone()),
        (marks::ORGANIZATION_UID.to_string(), spec.org_uid.clone()),
    ]));
    let min = spec.scaling.min_effective() as i32;
    let max = (spec.scaling.max as i32).max(min);
    let item = |cpu: &Option<String>, memory: &Option<String>| {
        (cpu.is_some() || memory.is_some()).then(|| ResourceItem {
            cpu: cpu.clone().unwrap_or_default(),
            memory: memory.clone().unwrap_or_default(),
            ..Default::default()
        })
    };
    let r = &spec.resources;
    let requests = item(&r.cpu_request, &r.memory_request);
    let limits = item(&r.cpu_limit, &r.memory_limit);
    let resources = (requests.is_some() || limits.is_some()).then_some(Resources { requests, limits });
    let window = spec.scaling.scale_down_window.as_secs().min(3600) as i32;
    let mut envs: Vec<EnvVar> =
        spec.envs.iter().map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), value_from: None }).collect();
    envs.extend(
        spec.secrets.iter().filter(|s| reaches_pods(s) && s.content.kind == SecretType::Env).flat_map(secret_env),
    );
    let (volumes, volume_mounts) = secret_mounts(spec);
    // Set only with secrets: the annotations a person sets by hand stay theirs.
    let extra_pod_metadata = secrets_revision(spec).map(|r| ExtraPodMetadata {
        annotations: BTreeMap::from([(marks::SECRETS_REVISION.to_string(), r)]),
        ..Default::default()
    });
    BentoDeployment {
        metadata,
        spec: BentoDeploymentSpec {
            bento: bento_object_name(spec),
            resources,
            autoscaling: Some(Autoscaling {
                min_replicas: min,
                max_replicas: max,
                metrics: Vec::new(),
                behavior: Some(HorizontalPodAutoscalerBehavior {
                    scale_down: Some(HPAScalingRules {
                        stabilization_window_seconds: Some(window),
                        ..Default::default()
                    }),
                    scale_up: None,
                }),
            }),
            envs,
            volumes,
            volume_mounts,
            extra_pod_metadata,
            // The operator's host is `<name>-<namespace>.<suffix>`: the label the store gave
            // this deployment. One whose label another deployment holds gets no Ingress.
            ingress: Ingress { enabled: spec.host.is_some(), ..Default::default() },
            ..Default::default()
        },
        status: None,
    }
}

/// The yatai deployment a BentoDeployment belongs to, when yatai wrote it.
pub fn deployment_uid(bd: &BentoDeployment) -> Option<&str> {
    bd.labels().get(marks::DEPLOYMENT_UID).map(String::as_str)
}

/// What yatai shows of a BentoDeployment it did not make: the bento's tag (from the Bento,
/// else the BentoRequest, it names; else the name itself), envs, replicas and resources.
pub fn foreign(bd: &BentoDeployment, bento: Option<&Bento>, request: Option<&BentoRequest>) -> ForeignDeployment {
    let tag =
        bento.map(|b| b.spec.tag.as_str()).or(request.map(|r| r.spec.bento_tag.as_str())).filter(|t| t.contains(':'));
    let quantity = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let r = bd.spec.resources.clone().unwrap_or_default();
    let requests = r.requests.unwrap_or_default();
    let limits = r.limits.unwrap_or_default();
    ForeignDeployment {
        namespace: bd.namespace().unwrap_or_default(),
        name: bd.name_any(),
        bento: tag.unwrap_or(&bd.spec.bento).to_string(),
        bento_is_tag: tag.is_some(),
        envs: bd.spec.envs.iter().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect(),
        replicas: bd.spec.autoscaling.as_ref().map(|a| (a.min_replicas.max(0) as u32, a.max_replicas.max(0) as u32)),
        resources: SpecResources {
            cpu_request: quantity(&requests.cpu),
            memory_request: quantity(&requests.memory),
            cpu_limit: quantity(&limits.cpu),
            memory_limit: quantity(&limits.memory),
        },
    }
}

/// Whether the BentoDeployment is scaled to zero (what [`crate::KubeTarget`]'s terminate
/// writes: `minReplicas = maxReplicas = 0`).
pub fn scaled_to_zero(bd: &BentoDeployment) -> bool {
    bd.spec.autoscaling.as_ref().is_some_and(|a| a.max_replicas == 0)
}

/// The merge patch that scales a BentoDeployment to zero, keeping everything else.
pub fn scale_to_zero_patch() -> serde_json::Value {
    serde_json::json!({ "spec": { "autoscaling": { "minReplicas": 0, "maxReplicas": 0 } } })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use yatai_core::deploy::{ArtifactRef, Scaling};

    use super::*;

    pub(crate) fn spec() -> DeploymentSpec {
        DeploymentSpec {
            uid: "dep-uid-1".into(),
            org_uid: "org-1".into(),
            name: "iris".into(),
            namespace: "ml".into(),
            host: Some("iris-ml".into()),
            access_authorization: false,
            revision_uid: "rev-1".into(),
            bento: ArtifactRef {
                name: "iris_classifier".into(),
                version: "v1".into(),
                digest: "d".into(),
                storage_key: "k".into(),
            },
            models: vec![ArtifactRef {
                name: "clf".into(),
                version: "m1".into(),
                digest: "d".into(),
                storage_key: "k".into(),
            }],
            image: Some("registry.test/bentos:yatai.iris_classifier.v1".into()),
            python_version: None,
            envs: vec![("A".into(), "b".into())],
            secrets: Vec::new(),
            scaling: Scaling { min: 2, max: 4, target_inflight: 10.0, scale_down_window: Duration::from_secs(120) },
            resources: SpecResources { cpu_request: Some("250m".into()), ..Default::default() },
            port: 0,
            cold_start_timeout: Duration::from_secs(300),
        }
    }

    #[test]
    fn a_bento_deployment_carries_the_spec_and_yatai_s_marks() {
        let bd = bento_deployment(&spec());
        assert_eq!(bd.name_any(), "iris");
        assert_eq!(bd.namespace().as_deref(), Some("ml"));
        assert_eq!(deployment_uid(&bd), Some("dep-uid-1"));
        assert_eq!(bd.labels()[marks::MANAGED_BY], "yatai");
        assert_eq!(bd.annotations()[marks::REVISION_UID], "rev-1");
        assert_eq!(bd.spec.bento, "iris-classifier--v1");
        let a = bd.spec.autoscaling.as_ref().unwrap();
        assert_eq!((a.min_replicas, a.max_replicas), (2, 4));
        assert_eq!(a.behavior.as_ref().unwrap().scale_down.as_ref().unwrap().stabilization_window_seconds, Some(120));
        assert_eq!(bd.spec.envs[0].name, "A");
        assert!(bd.spec.ingress.enabled);
        let r = bd.spec.resources.as_ref().unwrap();
        assert_eq!(r.requests.as_ref().unwrap().cpu, "250m");
        assert!(r.limits.is_none());
        // Fields a person may set by hand are left out of what yatai applies.
        let json = serde_json::to_value(&bd.spec).unwrap();
        for absent in ["extraPodMetadata", "extraPodSpec", "monitorExporter", "runners", "annotations"] {
            assert!(json.get(absent).is_none(), "{absent} in {json}");
        }
    }

    #[test]
    fn no_host_means_no_ingress_and_min_is_at_least_one() {
        let mut s = spec();
        s.host = None;
        s.scaling.min = 0;
        s.scaling.max = 0;
        let bd = bento_deployment(&s);
        assert!(!bd.spec.ingress.enabled);
        let a = bd.spec.autoscaling.unwrap();
        assert_eq!((a.min_replicas, a.max_replicas), (1, 1));
    }

    #[test]
    fn bento_and_request_are_named_by_the_tag() {
        let s = spec();
        let b = bento(&s, "r/x:y");
        assert_eq!(
            (b.name_any().as_str(), b.spec.tag.as_str(), b.spec.image.as_str()),
            ("iris-classifier--v1", "iris_classifier:v1", "r/x:y")
        );
        assert_eq!(b.spec.models[0].tag, "clf:m1");
        let r = bento_request(&s);
        assert_eq!(r.name_any(), names::bento_request_name("iris_classifier:v1"));
        assert_eq!(r.spec.bento_tag, "iris_classifier:v1");
    }

    #[test]
    fn a_hand_made_bento_deployment_is_shown_by_its_bento_s_tag() {
        let mut bd = BentoDeployment::new(
            "gitops-iris",
            BentoDeploymentSpec {
                bento: "iris-classifier--v1".into(),
                envs: vec![EnvVar { name: "A".into(), value: Some("1".into()), value_from: None }],
                autoscaling: Some(Autoscaling { min_replicas: 2, max_replicas: 3, ..Default::default() }),
                resources: Some(Resources {
                    requests: Some(ResourceItem { cpu: "500m".into(), ..Default::default() }),
                    limits: Some(ResourceItem { memory: "1Gi".into(), ..Default::default() }),
                }),
                ..Default::default()
            },
        );
        bd.metadata.namespace = Some("ml".into());
        let b = bento(&spec(), "r/x:y");
        let f = foreign(&bd, Some(&b), None);
        assert_eq!((f.namespace.as_str(), f.name.as_str()), ("ml", "gitops-iris"));
        assert_eq!((f.bento.as_str(), f.bento_is_tag), ("iris_classifier:v1", true));
        assert_eq!(f.envs, [("A".to_string(), "1".to_string())]);
        assert_eq!(f.replicas, Some((2, 3)));
        assert_eq!(f.resources.cpu_request.as_deref(), Some("500m"));
        assert_eq!(f.resources.memory_limit.as_deref(), Some("1Gi"));
        assert_eq!(f.resources.memory_request, None);
        // The BentoRequest's tag while the Bento is not there yet; the bare name without either.
        let r = bento_request(&spec());
        assert_eq!(foreign(&bd, None, Some(&r)).bento, "iris_classifier:v1");
        let bare = foreign(&bd, None, None);
        assert_eq!((bare.bento.as_str(), bare.bento_is_tag), ("iris-classifier--v1", false));
    }

    fn secret(name: &str, kind: &str, stage: &str, items: &[(&str, Option<&str>, &str)]) -> DeploySecret {
        let items = items
            .iter()
            .map(|(k, sub, v)| yatai_core::secret::SecretItem {
                key: k.to_string(),
                sub_path: sub.map(String::from),
                value: v.to_string(),
            })
            .collect();
        let path = (kind == "mountfile").then_some("$BENTOML_HOME/creds");
        let content = yatai_core::secret::check_content(kind, Some(stage), path, items).unwrap();
        DeploySecret { name: name.into(), revision: format!("rev-{name}"), content }
    }

    #[test]
    fn secrets_become_secrets_and_the_objects_only_refer_to_them() {
        let mut s = spec();
        s.image = None;
        s.secrets = vec![
            secret("api", "env", "runtime", &[("API_KEY", None, "value-api-1")]),
            secret("db", "mountfile", "all", &[("cfg", Some("conf/db.ini"), "value-db-2")]),
            secret("index", "env", "build", &[("UV_INDEX_URL", None, "value-index-3")]),
        ];
        let written = secrets(&s);
        let names: Vec<String> = written.iter().map(|x| x.name_any()).collect();
        assert_eq!(names, ["yatai-secret-api", "yatai-secret-db", "yatai-secret-index"]);
        assert_eq!(written[0].labels()[marks::SECRET_NAME], "api");
        assert_eq!(written[0].annotations()[marks::SECRET_REVISION], "rev-api");
        let data = written[1].data.as_ref().unwrap();
        assert_eq!(data["file-0"].0, b"value-db-2");

        let bd = bento_deployment(&s);
        let request = bento_request(&s);
        for (what, json) in
            [("BentoDeployment", serde_json::to_string(&bd)), ("BentoRequest", serde_json::to_string(&request))]
        {
            let json = json.unwrap();
            assert!(!json.contains("value-"), "a value in the {what}: {json}");
        }
        // Runtime env → a secretKeyRef after the plain envs; the build-only secret stays out.
        let envs: Vec<&str> = bd.spec.envs.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(envs, ["A", "API_KEY"]);
        let r = bd.spec.envs[1].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("yatai-secret-api", "API_KEY"));
        // The file, mounted alone below the image's BENTOML_HOME.
        assert_eq!(bd.spec.volumes[0].secret.as_ref().unwrap().secret_name.as_deref(), Some("yatai-secret-db"));
        let m = &bd.spec.volume_mounts[0];
        assert_eq!((m.mount_path.as_str(), m.sub_path.as_deref()), ("/home/bentoml/creds/conf/db.ini", Some("file-0")));
        assert_eq!(
            bd.spec.extra_pod_metadata.as_ref().unwrap().annotations[marks::SECRETS_REVISION],
            "api=rev-api,db=rev-db"
        );
        // Build → the builder's environment, by reference.
        let build: Vec<&str> = request.spec.image_builder_extra_container_env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(build, ["UV_INDEX_URL"]);
        let used: Vec<String> = referenced_secrets(
            bd.spec.envs.iter().chain(&request.spec.image_builder_extra_container_env),
            &bd.spec.volumes,
        )
        .collect();
        assert_eq!(used, ["yatai-secret-api", "yatai-secret-index", "yatai-secret-db"]);
        // An image already built: the build's secret is not written (nothing would refer to it).
        s.image = Some("r/x:y".into());
        assert_eq!(secrets(&s).len(), 2);

        // Without secrets: no volumes, no pod annotation (hand-set ones stay theirs).
        let plain = bento_deployment(&spec());
        assert!(plain.spec.volumes.is_empty() && plain.spec.extra_pod_metadata.is_none());
    }
}
