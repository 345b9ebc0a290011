//! v1alpha3 ⇄ v2alpha1 for the conversion webhook: pure functions, no lookups, no side effects.
//!
//! Yatai's webhook created a BentoRequest while converting to v2alpha1 and read the Bento back
//! to recover the tag when converting to v1alpha3, so a missing Bento made every v1alpha3 read
//! fail (Yatai issue #481). Here the tag travels with the object instead: converting to
//! v2alpha1 records it in the annotation [`BENTO_TAG_ANNOTATION`] (the API server lets a
//! conversion change labels and annotations, nothing else of the metadata), and converting
//! back reads it, or inverts [`bento_request_name`] (`name--version` → `name:version`) when the
//! object was written as v2alpha1. Creating the BentoRequest is the operator's business.
//!
//! What does not survive a round trip, as in Yatai: v1alpha3 → v2alpha1 → v1alpha3 adds the
//! default CPU target (80 %) to an autoscaling block without metrics and drops `gpu`; v2alpha1 →
//! v1alpha3 → v2alpha1 drops metrics other than CPU utilization, average memory and the
//! `http_request` pods metric, HPA `behavior`, `envs` that use `valueFrom`, `volumes` and
//! `volumeMounts` (yatai-rs additions), sidecar `containers`, `serviceAccountName`, `monitorExporter`, and the status
//! conditions, `observedGeneration` and `url`; it also puts the metrics v1alpha3 can say in its order (CPU, memory,
//! `http_request`), spells an autoscaling block without metrics as the default CPU target, reads an env without a value
//! as `""` and a zero replica count as not reported. Everything else comes back equal (the property tests below).

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{v1alpha3, v2alpha1};
use crate::names::{bento_request_name, split_tag};

/// The v1alpha3 `bento_tag` a v2alpha1 object was converted from.
pub const BENTO_TAG_ANNOTATION: &str = "yatai.ai/bento-tag";
/// The pods metric that v1alpha3's `qps` becomes (what BentoML's metrics call it).
pub const QPS_METRIC: &str = "http_request";
/// Yatai's defaults when a v1alpha3 `autoscaling` block leaves a bound out.
pub const DEFAULT_MIN_REPLICAS: i32 = 2;
pub const DEFAULT_MAX_REPLICAS: i32 = 10;
/// The CPU utilization target when a v1alpha3 `autoscaling` block names no metric.
pub const DEFAULT_CPU_UTILIZATION: i32 = 80;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConversionError {
    #[error(
        "spec.bento_tag {0:?} is not a bento tag: write it as <bento name>:<version>, e.g. iris_classifier:4jwnpq2ia6g3baav"
    )]
    BadTag(String),
}

/// v1alpha3 → v2alpha1 (what the API server stores).
pub fn to_v2alpha1(old: &v1alpha3::BentoDeployment) -> Result<v2alpha1::BentoDeployment, ConversionError> {
    let tag = old.spec.bento_tag.trim();
    if split_tag(tag).is_none() {
        return Err(ConversionError::BadTag(old.spec.bento_tag.clone()));
    }
    let mut metadata = old.metadata.clone();
    metadata.annotations.get_or_insert_with(BTreeMap::new).insert(BENTO_TAG_ANNOTATION.into(), tag.into());
    let s = &old.spec;
    Ok(v2alpha1::BentoDeployment {
        metadata,
        spec: v2alpha1::BentoDeploymentSpec {
            annotations: s.annotations.clone(),
            labels: s.labels.clone(),
            bento: bento_request_name(tag),
            resources: s.resources.clone(),
            autoscaling: s.autoscaling.as_ref().map(autoscaling_to_v2),
            envs: envs_to_v2(s.envs.as_deref()),
            volumes: Vec::new(),
            volume_mounts: Vec::new(),
            runners: s.runners.iter().map(runner_to_v2).collect(),
            ingress: s.ingress.clone(),
            monitor_exporter: None,
            extra_pod_metadata: s.extra_pod_metadata.clone(),
            extra_pod_spec: s.extra_pod_spec.as_ref().map(pod_spec_to_v2),
        },
        status: old.status.as_ref().map(status_to_v2),
    })
}

/// v2alpha1 → v1alpha3. Never fails: a v1alpha3 reader must be able to list whatever is stored.
pub fn to_v1alpha3(new: &v2alpha1::BentoDeployment) -> v1alpha3::BentoDeployment {
    let s = &new.spec;
    v1alpha3::BentoDeployment {
        metadata: new.metadata.clone(),
        spec: v1alpha3::BentoDeploymentSpec {
            annotations: s.annotations.clone(),
            labels: s.labels.clone(),
            bento_tag: bento_tag_of(&new.metadata, &s.bento),
            resources: s.resources.clone(),
            autoscaling: s.autoscaling.as_ref().map(autoscaling_to_v1),
            envs: envs_to_v1(&s.envs),
            runners: s.runners.iter().map(runner_to_v1).collect(),
            ingress: s.ingress.clone(),
            extra_pod_metadata: s.extra_pod_metadata.clone(),
            extra_pod_spec: s.extra_pod_spec.as_ref().map(pod_spec_to_v1),
        },
        status: new.status.as_ref().map(status_to_v1),
    }
}

/// The tag a v2alpha1 `bento` stands for. The annotation counts only while it still names the
/// same bento: someone who edits `spec.bento` in v2alpha1 leaves a stale annotation behind.
fn bento_tag_of(metadata: &ObjectMeta, bento: &str) -> String {
    let recorded = metadata.annotations.as_ref().and_then(|a| a.get(BENTO_TAG_ANNOTATION));
    if let Some(tag) = recorded.filter(|tag| bento_request_name(tag) == bento) {
        return tag.clone();
    }
    // `bento_request_name` turns `:` into `--`; the version is what follows the last one
    // (versions are generated without `--`). A name without it is not a tag we made: keep it
    // whole rather than fail, so the object stays readable.
    match bento.rsplit_once("--") {
        Some((name, version)) if !name.is_empty() && !version.is_empty() => format!("{name}:{version}"),
        _ => bento.to_string(),
    }
}

fn autoscaling_to_v2(hpa: &v1alpha3::HpaConf) -> v2alpha1::Autoscaling {
    let mut metrics = Vec::new();
    if let Some(cpu) = hpa.cpu.filter(|c| *c > 0) {
        metrics.push(resource_metric(
            "cpu",
            MetricTarget { type_: "Utilization".into(), average_utilization: Some(cpu), ..Default::default() },
        ));
    }
    if let Some(memory) = hpa.memory.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
        metrics.push(resource_metric(
            "memory",
            MetricTarget {
                type_: "AverageValue".into(),
                average_value: Some(Quantity(memory.into())),
                ..Default::default()
            },
        ));
    }
    if let Some(qps) = hpa.qps.filter(|q| *q > 0) {
        metrics.push(MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier { name: QPS_METRIC.into(), selector: None },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(qps.to_string())),
                    ..Default::default()
                },
            }),
            ..Default::default()
        });
    }
    if metrics.is_empty() {
        metrics.push(resource_metric(
            "cpu",
            MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(DEFAULT_CPU_UTILIZATION),
                ..Default::default()
            },
        ));
    }
    v2alpha1::Autoscaling {
        min_replicas: hpa.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS),
        max_replicas: hpa.max_replicas.unwrap_or(DEFAULT_MAX_REPLICAS),
        metrics,
        behavior: None,
    }
}

fn resource_metric(name: &str, target: MetricTarget) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource { name: name.into(), target }),
        ..Default::default()
    }
}

fn autoscaling_to_v1(autoscaling: &v2alpha1::Autoscaling) -> v1alpha3::HpaConf {
    let mut hpa = v1alpha3::HpaConf {
        min_replicas: Some(autoscaling.min_replicas),
        max_replicas: Some(autoscaling.max_replicas),
        ..Default::default()
    };
    for metric in &autoscaling.metrics {
        if let Some(resource) = &metric.resource {
            let target = &resource.target;
            match (resource.name.as_str(), target.type_.as_str()) {
                ("cpu", "Utilization") => hpa.cpu = target.average_utilization,
                ("memory", "AverageValue") => hpa.memory = target.average_value.as_ref().map(|q| q.0.clone()),
                _ => {}
            }
        }
        if let Some(pods) = &metric.pods
            && pods.metric.name == QPS_METRIC
            && pods.target.type_ == "AverageValue"
        {
            // The flat form holds whole requests per second; a fractional target ("500m")
            // has no v1alpha3 spelling.
            hpa.qps = pods.target.average_value.as_ref().and_then(|q| q.0.parse().ok());
        }
    }
    hpa
}

fn envs_to_v2(envs: Option<&[v1alpha3::EnvItem]>) -> Vec<EnvVar> {
    envs.unwrap_or_default()
        .iter()
        .map(|e| EnvVar { name: e.key.clone(), value: Some(e.value.clone()), value_from: None })
        .collect()
}

/// `valueFrom` has no key/value form: such variables are left out of the v1alpha3 view.
fn envs_to_v1(envs: &[EnvVar]) -> Option<Vec<v1alpha3::EnvItem>> {
    if envs.is_empty() {
        return None;
    }
    Some(
        envs.iter()
            .filter(|e| e.value_from.is_none())
            .map(|e| v1alpha3::EnvItem { key: e.name.clone(), value: e.value.clone().unwrap_or_default() })
            .collect(),
    )
}

fn runner_to_v2(r: &v1alpha3::RunnerSpec) -> v2alpha1::RunnerSpec {
    v2alpha1::RunnerSpec {
        name: r.name.clone(),
        annotations: r.annotations.clone(),
        labels: r.labels.clone(),
        resources: r.resources.clone(),
        autoscaling: r.autoscaling.as_ref().map(autoscaling_to_v2),
        envs: envs_to_v2(r.envs.as_deref()),
        extra_pod_metadata: r.extra_pod_metadata.clone(),
        extra_pod_spec: r.extra_pod_spec.as_ref().map(pod_spec_to_v2),
    }
}

fn runner_to_v1(r: &v2alpha1::RunnerSpec) -> v1alpha3::RunnerSpec {
    v1alpha3::RunnerSpec {
        name: r.name.clone(),
        annotations: r.annotations.clone(),
        labels: r.labels.clone(),
        resources: r.resources.clone(),
        autoscaling: r.autoscaling.as_ref().map(autoscaling_to_v1),
        envs: envs_to_v1(&r.envs),
        extra_pod_metadata: r.extra_pod_metadata.clone(),
        extra_pod_spec: r.extra_pod_spec.as_ref().map(pod_spec_to_v1),
    }
}

fn pod_spec_to_v2(p: &v1alpha3::ExtraPodSpec) -> v2alpha1::ExtraPodSpec {
    v2alpha1::ExtraPodSpec {
        scheduler_name: p.scheduler_name.clone(),
        node_selector: p.node_selector.clone(),
        affinity: p.affinity.clone(),
        tolerations: p.tolerations.clone(),
        topology_spread_constraints: p.topology_spread_constraints.clone(),
        containers: Vec::new(),
        service_account_name: String::new(),
    }
}

fn pod_spec_to_v1(p: &v2alpha1::ExtraPodSpec) -> v1alpha3::ExtraPodSpec {
    v1alpha3::ExtraPodSpec {
        scheduler_name: p.scheduler_name.clone(),
        node_selector: p.node_selector.clone(),
        affinity: p.affinity.clone(),
        tolerations: p.tolerations.clone(),
        topology_spread_constraints: p.topology_spread_constraints.clone(),
    }
}

/// v1alpha3 cannot tell a zero count from a missing one (it omits zeros), so zero reads as
/// "not reported".
fn status_to_v2(s: &v1alpha3::BentoDeploymentStatus) -> v2alpha1::BentoDeploymentStatus {
    let count = |n: i32| (n != 0).then_some(n);
    v2alpha1::BentoDeploymentStatus {
        conditions: Vec::new(),
        pod_selector: s.pod_selector.clone(),
        observed_generation: None,
        printer_ready: s.printer_ready.clone(),
        replicas: count(s.replicas),
        updated_replicas: count(s.updated_replicas),
        ready_replicas: count(s.ready_replicas),
        available_replicas: count(s.available_replicas),
        url: String::new(),
    }
}

fn status_to_v1(s: &v2alpha1::BentoDeploymentStatus) -> v1alpha3::BentoDeploymentStatus {
    let replicas = s.replicas.unwrap_or(0);
    let available = s.available_replicas.unwrap_or(0);
    v1alpha3::BentoDeploymentStatus {
        pod_selector: s.pod_selector.clone(),
        printer_ready: s.printer_ready.clone(),
        replicas,
        updated_replicas: s.updated_replicas.unwrap_or(0),
        ready_replicas: s.ready_replicas.unwrap_or(0),
        available_replicas: available,
        // What the Deployment reports as unavailable: desired minus available.
        // Saturating: the counts are whatever the status holds, and `i32::MIN - 1` overflowed
        // (a panic in debug builds, a wrapped count in release ones).
        unavailable_replicas: replicas.saturating_sub(available).max(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A manifest as Yatai's api-server writes it (and as Yatai's docs show it): an API
    /// server and one runner, both autoscaled in the flat form, envs, an ingress with TLS, and
    /// pod overrides.
    const YATAI_V1ALPHA3: &str = r#"
apiVersion: serving.yatai.ai/v1alpha3
kind: BentoDeployment
metadata:
  name: iris
  namespace: yatai
  labels:
    yatai.ai/creator: admin
  annotations:
    yatai.ai/deployment-target-uid: 4f1e6a2c
spec:
  bento_tag: iris_classifier:4jwnpq2ia6g3baav
  annotations:
    yatai.ai/deployment-strategy: RollingUpdate
  labels:
    team: ml
  resources:
    requests:
      cpu: 500m
      memory: 500Mi
    limits:
      cpu: 1000m
      memory: 1Gi
      gpu: "1"
  autoscaling:
    min_replicas: 2
    max_replicas: 5
    cpu: 70
    memory: 800Mi
    qps: 100
  envs:
    - key: BENTOML_CONFIG_OPTIONS
      value: api_server.traffic.timeout=60
    - key: LOG_LEVEL
      value: info
  ingress:
    enabled: true
    annotations:
      nginx.ingress.kubernetes.io/proxy-body-size: 100m
    tls:
      secretName: iris-tls
  extra_pod_metadata:
    annotations:
      prometheus.io/scrape: "true"
    labels:
      tier: inference
  extra_pod_spec:
    schedulerName: default-scheduler
    nodeSelector:
      pool: cpu
    tolerations:
      - key: dedicated
        operator: Equal
        value: ml
        effect: NoSchedule
  runners:
    - name: iris_clf
      resources:
        requests:
          cpu: 250m
          memory: 256Mi
      autoscaling:
        min_replicas: 1
        max_replicas: 4
        cpu: 60
      envs:
        - key: OMP_NUM_THREADS
          value: "1"
status:
  printerReady: 2/2
  replicas: 2
  updatedReplicas: 2
  readyReplicas: 2
  availableReplicas: 2
  podSelector:
    yatai.ai/bento-deployment: iris
"#;

    fn example() -> v1alpha3::BentoDeployment {
        serde_yaml_ng::from_str(YATAI_V1ALPHA3).expect("the example parses as v1alpha3")
    }

    #[test]
    fn yatai_manifest_maps_field_by_field() {
        let v2 = to_v2alpha1(&example()).unwrap();
        let json = serde_json::to_value(&v2).unwrap();
        assert_eq!(json["spec"]["bento"], "iris-classifier--4jwnpq2ia6g3baav");
        assert_eq!(json["metadata"]["annotations"][BENTO_TAG_ANNOTATION], "iris_classifier:4jwnpq2ia6g3baav");
        assert_eq!(json["metadata"]["annotations"]["yatai.ai/deployment-target-uid"], "4f1e6a2c");
        assert_eq!(
            json["spec"]["autoscaling"],
            json!({
                "minReplicas": 2,
                "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "800Mi"}}},
                    {"type": "Pods", "pods": {"metric": {"name": "http_request"}, "target": {"type": "AverageValue", "averageValue": "100"}}},
                ]
            })
        );
        assert_eq!(
            json["spec"]["envs"],
            json!([
                {"name": "BENTOML_CONFIG_OPTIONS", "value": "api_server.traffic.timeout=60"},
                {"name": "LOG_LEVEL", "value": "info"}
            ])
        );
        assert_eq!(json["spec"]["ingress"]["tls"]["secretName"], "iris-tls");
        assert_eq!(json["spec"]["extraPodMetadata"]["labels"]["tier"], "inference");
        assert_eq!(json["spec"]["extraPodSpec"]["nodeSelector"]["pool"], "cpu");
        assert_eq!(json["spec"]["extraPodSpec"]["tolerations"][0]["effect"], "NoSchedule");
        assert_eq!(json["spec"]["runners"][0]["name"], "iris_clf");
        assert_eq!(
            json["spec"]["runners"][0]["autoscaling"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            60
        );
        assert_eq!(json["spec"]["runners"][0]["envs"][0], json!({"name": "OMP_NUM_THREADS", "value": "1"}));
        assert_eq!(json["spec"]["resources"]["limits"]["gpu"], "1");
        assert_eq!(json["status"]["readyReplicas"], 2);
        assert_eq!(json["status"]["printerReady"], "2/2");
    }

    #[test]
    fn yatai_manifest_round_trips() {
        let original = example();
        let back = to_v1alpha3(&to_v2alpha1(&original).unwrap());
        let mut expected = original.clone();
        expected
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(BENTO_TAG_ANNOTATION.into(), original.spec.bento_tag.clone());
        assert_eq!(back.spec, expected.spec);
        assert_eq!(back.metadata, expected.metadata);
        assert_eq!(back.status, expected.status);
        // And the v2alpha1 side is a fixed point too.
        let v2 = to_v2alpha1(&back).unwrap();
        let again = to_v2alpha1(&to_v1alpha3(&v2)).unwrap();
        assert_eq!(serde_json::to_value(again).unwrap(), serde_json::to_value(v2).unwrap());
    }

    #[test]
    fn autoscaling_defaults_follow_yatai() {
        let mut bd = example();
        bd.spec.autoscaling = Some(v1alpha3::HpaConf { max_replicas: Some(3), ..Default::default() });
        let a = to_v2alpha1(&bd).unwrap().spec.autoscaling.unwrap();
        assert_eq!((a.min_replicas, a.max_replicas), (DEFAULT_MIN_REPLICAS, 3));
        assert_eq!(a.metrics.len(), 1);
        let cpu = a.metrics[0].resource.as_ref().unwrap();
        assert_eq!((cpu.name.as_str(), cpu.target.average_utilization), ("cpu", Some(80)));

        bd.spec.autoscaling = Some(v1alpha3::HpaConf { min_replicas: Some(1), gpu: Some(50), ..Default::default() });
        let a = to_v2alpha1(&bd).unwrap().spec.autoscaling.unwrap();
        assert_eq!((a.min_replicas, a.max_replicas), (1, DEFAULT_MAX_REPLICAS));

        bd.spec.autoscaling = None;
        assert_eq!(to_v2alpha1(&bd).unwrap().spec.autoscaling, None);
    }

    #[test]
    fn tag_comes_back_without_the_annotation() {
        let v2: v2alpha1::BentoDeployment = serde_json::from_value(json!({
            "apiVersion": "serving.yatai.ai/v2alpha1",
            "kind": "BentoDeployment",
            "metadata": {"name": "x"},
            "spec": {"bento": "iris-classifier--4jwnpq2ia6g3baav"}
        }))
        .unwrap();
        assert_eq!(to_v1alpha3(&v2).spec.bento_tag, "iris-classifier:4jwnpq2ia6g3baav");

        let mut plain = v2.clone();
        plain.spec.bento = "my-bento".into();
        assert_eq!(to_v1alpha3(&plain).spec.bento_tag, "my-bento", "kept whole, not refused");
    }

    #[test]
    fn a_stale_tag_annotation_is_ignored() {
        let mut v2 = to_v2alpha1(&example()).unwrap();
        v2.spec.bento = "iris-classifier--newversion".into();
        assert_eq!(to_v1alpha3(&v2).spec.bento_tag, "iris-classifier:newversion");
    }

    #[test]
    fn hashed_names_keep_their_tag_through_the_annotation() {
        let mut bd = example();
        bd.spec.bento_tag = format!("{}:v1", "a".repeat(70));
        let v2 = to_v2alpha1(&bd).unwrap();
        assert!(v2.spec.bento.starts_with("bento-"));
        assert_eq!(to_v1alpha3(&v2).spec.bento_tag, bd.spec.bento_tag);
    }

    #[test]
    fn malformed_tags_are_refused_with_a_fix() {
        for tag in ["", "iris", ":v1", "iris:", "a:b:c"] {
            let mut bd = example();
            bd.spec.bento_tag = tag.into();
            let err = to_v2alpha1(&bd).unwrap_err();
            assert!(err.to_string().contains("<bento name>:<version>"), "{tag:?}: {err}");
        }
    }

    /// Found by the property tests: any counts a status holds convert.
    #[test]
    fn extreme_replica_counts_convert() {
        let mut v2 = to_v2alpha1(&example()).unwrap();
        for (replicas, available, unavailable) in
            [(i32::MIN, 1, 0), (i32::MAX, -1, i32::MAX), (i32::MIN, i32::MAX, 0), (3, 1, 2)]
        {
            let status = v2.status.get_or_insert_with(Default::default);
            (status.replicas, status.available_replicas) = (Some(replicas), Some(available));
            assert_eq!(to_v1alpha3(&v2).status.unwrap().unavailable_replicas, unavailable, "{replicas} - {available}");
        }
    }

    #[test]
    fn v2_only_fields_are_dropped_going_back() {
        let v2: v2alpha1::BentoDeployment = serde_json::from_value(json!({
            "apiVersion": "serving.yatai.ai/v2alpha1",
            "kind": "BentoDeployment",
            "metadata": {"name": "x"},
            "spec": {
                "bento": "iris--v1",
                "envs": [
                    {"name": "A", "value": "1"},
                    {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
                ],
                "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "metrics": [
                    {"type": "External", "external": {"metric": {"name": "queue"}, "target": {"type": "Value", "value": "5"}}}
                ]},
                "extraPodSpec": {"serviceAccountName": "sa", "containers": [{"name": "sidecar", "image": "busybox"}]}
            },
            "status": {"conditions": [{"type": "Available", "status": "True", "reason": "Ready", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                       "replicas": 3, "availableReplicas": 1}
        }))
        .unwrap();
        let v1 = to_v1alpha3(&v2);
        assert_eq!(v1.spec.bento_tag, "iris:v1");
        assert_eq!(v1.spec.envs, Some(vec![v1alpha3::EnvItem { key: "A".into(), value: "1".into() }]));
        assert_eq!(
            v1.spec.autoscaling,
            Some(v1alpha3::HpaConf { min_replicas: Some(1), max_replicas: Some(3), ..Default::default() })
        );
        assert_eq!(v1.spec.extra_pod_spec, Some(v1alpha3::ExtraPodSpec::default()));
        let status = v1.status.unwrap();
        assert_eq!((status.replicas, status.available_replicas, status.unavailable_replicas), (3, 1, 2));
    }
}

/// Property tests: the webhook converts whatever the API server holds, written by people and
/// tools in either version.
#[cfg(test)]
mod properties {
    use k8s_openapi::api::autoscaling::v2::{ExternalMetricSource, HorizontalPodAutoscalerBehavior};
    use k8s_openapi::api::core::v1::{EnvVarSource, SecretKeySelector, Toleration, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use proptest::prelude::*;

    use super::*;
    use crate::serving::{ExtraPodMetadata, Ingress, IngressTls, ResourceItem, Resources};

    /// The generated objects do not implement `PartialEq` whole; their parts do.
    fn parts(
        d: &v2alpha1::BentoDeployment,
    ) -> (&ObjectMeta, &v2alpha1::BentoDeploymentSpec, &Option<v2alpha1::BentoDeploymentStatus>) {
        (&d.metadata, &d.spec, &d.status)
    }

    fn parts_v1(
        d: &v1alpha3::BentoDeployment,
    ) -> (&ObjectMeta, &v1alpha3::BentoDeploymentSpec, &Option<v1alpha3::BentoDeploymentStatus>) {
        (&d.metadata, &d.spec, &d.status)
    }

    fn config() -> ProptestConfig {
        ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
    }

    fn map() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map("[a-z][a-z0-9./-]{0,12}", "[ -~]{0,10}", 0..3)
    }

    fn resources() -> impl Strategy<Value = Option<Resources>> {
        let item = || {
            ("([1-9][0-9]{0,3}m?)?", "([1-9][0-9]{0,3}(Mi|Gi))?", "[0-2]?", map())
                .prop_map(|(cpu, memory, gpu, custom)| ResourceItem { cpu, memory, gpu, custom })
        };
        prop::option::of(
            (prop::option::of(item()), prop::option::of(item()))
                .prop_map(|(requests, limits)| Resources { requests, limits }),
        )
    }

    fn metadata_extra() -> impl Strategy<Value = Option<ExtraPodMetadata>> {
        prop::option::of((map(), map()).prop_map(|(annotations, labels)| ExtraPodMetadata { annotations, labels }))
    }

    fn ingress() -> impl Strategy<Value = Ingress> {
        (any::<bool>(), map(), map(), prop::option::of("[a-z-]{0,10}")).prop_map(
            |(enabled, annotations, labels, tls)| Ingress {
                enabled,
                annotations,
                labels,
                tls: tls.map(|secret_name| IngressTls { secret_name }),
            },
        )
    }

    fn tolerations() -> impl Strategy<Value = Vec<Toleration>> {
        prop::collection::vec(
            ("[a-z]{1,6}", prop::option::of("[a-z]{1,6}"), prop::sample::select(vec!["NoSchedule", "NoExecute"]))
                .prop_map(|(key, value, effect)| Toleration {
                    key: Some(key),
                    operator: Some(if value.is_some() { "Equal" } else { "Exists" }.into()),
                    value,
                    effect: Some(effect.into()),
                    ..Default::default()
                }),
            0..2,
        )
    }

    /// Pod overrides v1alpha3 can hold: no sidecars, no service account.
    fn pod_spec() -> impl Strategy<Value = Option<v2alpha1::ExtraPodSpec>> {
        prop::option::of(("[a-z-]{0,10}", map(), tolerations()).prop_map(
            |(scheduler_name, node_selector, tolerations)| v2alpha1::ExtraPodSpec {
                scheduler_name,
                node_selector,
                tolerations,
                ..Default::default()
            },
        ))
    }

    fn envs() -> impl Strategy<Value = Vec<EnvVar>> {
        prop::collection::vec(
            ("[A-Z_][A-Z0-9_]{0,8}", "[ -~]{0,12}").prop_map(|(name, value)| EnvVar {
                name,
                value: Some(value),
                value_from: None,
            }),
            0..3,
        )
    }

    prop_compose! {
        /// The metrics v1alpha3's flat form can say, in the order it says them (CPU utilization,
        /// average memory, the `http_request` pods metric); none stands for the default CPU target.
        fn autoscaling()(
            min_replicas in any::<i32>(),
            max_replicas in any::<i32>(),
            cpu in prop::option::of(1..=i32::MAX),
            memory in prop::option::of("[1-9][0-9]{0,4}(Mi|Gi|M)?"),
            qps in prop::option::of(1..=i64::MAX),
        ) -> v2alpha1::Autoscaling {
            let cpu = match (cpu, &memory, qps) {
                (None, None, None) => Some(DEFAULT_CPU_UTILIZATION),
                _ => cpu,
            };
            let mut hpa = v1alpha3::HpaConf { cpu, memory, qps, ..Default::default() };
            hpa.min_replicas = Some(min_replicas);
            hpa.max_replicas = Some(max_replicas);
            autoscaling_to_v2(&hpa)
        }
    }

    prop_compose! {
        fn runner()(
            name in "[a-z_]{0,10}",
            annotations in map(),
            labels in map(),
            resources in resources(),
            autoscaling in prop::option::of(autoscaling()),
            envs in envs(),
            extra_pod_metadata in metadata_extra(),
            extra_pod_spec in pod_spec(),
        ) -> v2alpha1::RunnerSpec {
            v2alpha1::RunnerSpec { name, annotations, labels, resources, autoscaling, envs, extra_pod_metadata, extra_pod_spec }
        }
    }

    prop_compose! {
        /// What v1alpha3 can report: no conditions, generation or URL, and zero is "not reported".
        fn status()(
            pod_selector in map(),
            printer_ready in "([0-9]/[0-9])?",
            counts in prop::array::uniform4(prop::option::of(prop_oneof![1..=i32::MAX, i32::MIN..0])),
        ) -> v2alpha1::BentoDeploymentStatus {
            let [replicas, updated_replicas, ready_replicas, available_replicas] = counts;
            v2alpha1::BentoDeploymentStatus {
                pod_selector, printer_ready, replicas, updated_replicas, ready_replicas, available_replicas,
                ..Default::default()
            }
        }
    }

    prop_compose! {
        /// The bento and the metadata that names its tag: recorded by an earlier conversion (any
        /// tag the client writes, hashed names included), or absent when the object was written as
        /// v2alpha1 with a `name--version` bento (then converting back records it).
        fn bento()(
            name in "[a-zA-Z][a-zA-Z0-9_.-]{0,70}",
            version in "[a-z0-9]{1,16}",
            recorded in any::<bool>(),
            written in "[a-z]([a-z0-9-]{0,20}[a-z0-9])?",
            annotations in map(),
        ) -> (String, ObjectMeta, String) {
            let mut metadata = ObjectMeta { name: Some("x".into()), namespace: Some("ns".into()), ..Default::default() };
            metadata.annotations = Some(annotations).filter(|a| !a.is_empty());
            if recorded {
                let tag = format!("{name}:{version}");
                metadata.annotations.get_or_insert_with(BTreeMap::new).insert(BENTO_TAG_ANNOTATION.into(), tag.clone());
                (bento_request_name(&tag), metadata, tag)
            } else {
                (format!("{written}--{version}"), metadata, format!("{written}:{version}"))
            }
        }
    }

    prop_compose! {
        fn representable()(
            (bento, metadata, tag) in bento(),
            annotations in map(),
            labels in map(),
            resources in resources(),
            autoscaling in prop::option::of(autoscaling()),
            envs in envs(),
            runners in prop::collection::vec(runner(), 0..3),
            ingress in ingress(),
            extra_pod_metadata in metadata_extra(),
            extra_pod_spec in pod_spec(),
            status in prop::option::of(status()),
        ) -> (v2alpha1::BentoDeployment, String) {
            let spec = v2alpha1::BentoDeploymentSpec {
                annotations, labels, bento, resources, autoscaling, envs, runners, ingress, extra_pod_metadata,
                extra_pod_spec, ..Default::default()
            };
            (v2alpha1::BentoDeployment { metadata, spec, status }, tag)
        }
    }

    prop_compose! {
        /// Anything v2alpha1 can hold, including what v1alpha3 cannot say.
        fn anything()(
            (mut v2, _) in representable(),
            bento in prop_oneof!["[ -~]{0,30}", any::<String>()],
            stale_tag in prop::option::of(prop_oneof!["[ -~]{0,30}", any::<String>()]),
            counts in prop::array::uniform4(any::<Option<i32>>()),
            raw_metrics in prop::collection::vec(
                ("[a-zA-Z]{0,8}", prop::option::of("[a-z_]{0,8}"), "[a-zA-Z]{0,12}", any::<Option<i32>>(), prop::option::of("[ -~]{0,8}")),
                0..4,
            ),
            secret_env in prop::option::of("[A-Z]{1,4}"),
            extras in any::<bool>(),
        ) -> v2alpha1::BentoDeployment {
            v2.spec.bento = bento;
            if let Some(tag) = stale_tag {
                v2.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(BENTO_TAG_ANNOTATION.into(), tag);
            }
            let status = v2.status.get_or_insert_with(Default::default);
            [status.replicas, status.updated_replicas, status.ready_replicas, status.available_replicas] = counts;
            let metrics: Vec<MetricSpec> = raw_metrics
                .into_iter()
                .map(|(type_, name, target_type, utilization, value)| {
                    let target = MetricTarget {
                        type_: target_type,
                        average_utilization: utilization,
                        average_value: value.clone().map(Quantity),
                        value: value.map(Quantity),
                    };
                    match name {
                        Some(name) if type_.len() % 2 == 0 => resource_metric(&name, target),
                        Some(name) => MetricSpec {
                            type_,
                            pods: Some(PodsMetricSource { metric: MetricIdentifier { name, selector: None }, target }),
                            ..Default::default()
                        },
                        None => MetricSpec {
                            type_,
                            external: Some(ExternalMetricSource {
                                metric: MetricIdentifier { name: "queue".into(), selector: None },
                                target,
                            }),
                            ..Default::default()
                        },
                    }
                })
                .collect();
            v2.spec.autoscaling = Some(v2alpha1::Autoscaling {
                metrics,
                behavior: extras.then(HorizontalPodAutoscalerBehavior::default),
                ..v2.spec.autoscaling.unwrap_or_default()
            });
            if let Some(name) = secret_env {
                let secret = SecretKeySelector { name: "s".into(), key: "k".into(), optional: None };
                let value_from = EnvVarSource { secret_key_ref: Some(secret), ..Default::default() };
                v2.spec.envs.push(EnvVar { name, value: None, value_from: Some(value_from) });
            }
            if extras {
                v2.spec.volumes.push(Volume { name: "v".into(), ..Default::default() });
                v2.spec.extra_pod_spec.get_or_insert_with(Default::default).service_account_name = "sa".into();
                let condition: Condition = serde_json::from_value(serde_json::json!({
                    "type": "Available", "status": "True", "reason": "Ready", "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"
                }))
                .unwrap();
                status.conditions.push(condition);
                status.observed_generation = Some(1);
                status.url = "http://x".into();
            }
            v2
        }
    }

    proptest! {
        #![proptest_config(config())]

        /// What v1alpha3 can say survives v2alpha1 → v1alpha3 → v2alpha1 whole; converting
        /// back records the tag in the annotation when the object had none.
        #[test]
        fn v2alpha1_round_trips_through_v1alpha3((v2, tag) in representable()) {
            let v1 = to_v1alpha3(&v2);
            prop_assert_eq!(&v1.spec.bento_tag, &tag);
            let back = to_v2alpha1(&v1).unwrap();
            let mut expected = v2.clone();
            expected.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(BENTO_TAG_ANNOTATION.into(), tag);
            prop_assert_eq!(parts(&back), parts(&expected));
        }

        /// Whatever is stored, the v1alpha3 view is produced (a reader must be able to list it),
        /// and converting that view back fails only for a bento that is no tag.
        #[test]
        fn any_v2alpha1_object_converts(v2 in anything()) {
            let v1 = to_v1alpha3(&v2);
            let tag_ok = split_tag(v1.spec.bento_tag.trim()).is_some();
            match to_v2alpha1(&v1) {
                Ok(again) => {
                    prop_assert!(tag_ok);
                    // One trip loses what v1alpha3 cannot say; a second loses nothing more.
                    let view = to_v1alpha3(&again);
                    let again_view = to_v1alpha3(&to_v2alpha1(&view).unwrap());
                    prop_assert_eq!(parts_v1(&again_view), parts_v1(&view));
                }
                Err(e) => {
                    prop_assert!(!tag_ok, "{}", e);
                    prop_assert_eq!(e, ConversionError::BadTag(v1.spec.bento_tag.clone()));
                }
            }
            if let Some(s) = &v1.status {
                prop_assert!(s.unavailable_replicas >= 0);
            }
        }

        /// v1alpha3 objects as people write them: any tag, autoscaling bounds and targets,
        /// counts. Converting refuses exactly the malformed tags; a round trip keeps everything
        /// but the documented losses and is then a fixed point.
        #[test]
        fn any_v1alpha3_object_converts(
            (v2, _) in representable(),
            bento_tag in prop_oneof!["[a-z_]{1,8}:[a-z0-9]{1,8}", " ?[a-zA-Z_:. -]{0,12} ?", any::<String>()],
            hpa in prop::option::of((
                any::<Option<i32>>(), any::<Option<i32>>(), any::<Option<i32>>(),
                prop::option::of(" ?[0-9]{0,4}(Mi)? ?"), any::<Option<i64>>(), any::<Option<i32>>(),
            )),
            counts in prop::array::uniform5(any::<i32>()),
        ) {
            let mut v1 = to_v1alpha3(&v2);
            v1.spec.bento_tag = bento_tag.clone();
            v1.spec.autoscaling = hpa.map(|(cpu, gpu, min_replicas, memory, qps, max_replicas)| {
                v1alpha3::HpaConf { cpu, gpu, memory, qps, min_replicas, max_replicas }
            });
            let [replicas, updated_replicas, ready_replicas, available_replicas, unavailable_replicas] = counts;
            v1.status = Some(v1alpha3::BentoDeploymentStatus {
                replicas, updated_replicas, ready_replicas, available_replicas, unavailable_replicas,
                ..Default::default()
            });
            let converted = to_v2alpha1(&v1);
            prop_assert_eq!(converted.is_ok(), split_tag(bento_tag.trim()).is_some(), "{:?}", converted);
            let Ok(v2) = converted else { return Ok(()) };
            let once = to_v1alpha3(&v2);
            prop_assert_eq!(&once.spec.bento_tag, bento_tag.trim());
            prop_assert_eq!((&once.spec.labels, &once.spec.annotations), (&v1.spec.labels, &v1.spec.annotations));
            prop_assert_eq!((&once.spec.resources, &once.spec.ingress), (&v1.spec.resources, &v1.spec.ingress));
            prop_assert_eq!(&once.spec.runners, &v1.spec.runners);
            if let (Some(a), Some(b)) = (&once.spec.autoscaling, &v1.spec.autoscaling) {
                prop_assert_eq!(a.min_replicas, Some(b.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS)));
                prop_assert_eq!(a.max_replicas, Some(b.max_replicas.unwrap_or(DEFAULT_MAX_REPLICAS)));
                prop_assert_eq!(a.gpu, None);
                prop_assert_eq!(a.qps, b.qps.filter(|q| *q > 0));
                let memory = b.memory.as_deref().map(str::trim).filter(|m| !m.is_empty());
                prop_assert_eq!(a.memory.as_deref(), memory);
                let default_cpu = b.cpu.is_none_or(|c| c <= 0) && memory.is_none() && a.qps.is_none();
                prop_assert_eq!(a.cpu, if default_cpu { Some(DEFAULT_CPU_UTILIZATION) } else { b.cpu.filter(|c| *c > 0) });
            }
            let (s, t) = (once.status.as_ref().unwrap(), v1.status.as_ref().unwrap());
            prop_assert_eq!((s.replicas, s.ready_replicas, s.available_replicas), (t.replicas, t.ready_replicas, t.available_replicas));
            prop_assert!(s.unavailable_replicas >= 0);
            let twice = to_v1alpha3(&to_v2alpha1(&once).unwrap());
            prop_assert_eq!(parts_v1(&twice), parts_v1(&once));
        }
    }
}
