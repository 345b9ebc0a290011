//! What a deployment is doing on a cluster, in the client's vocabulary, read from the CRs and
//! pods the watches keep: pure, so every case is a unit test.
//!
//! - the BentoRequest builds the image → `image-building`; its build gave up → `failed`;
//! - `Available=True` for the current generation → `running`;
//! - the operator names a problem (image pull, crash loop, unschedulable, invalid spec, the
//!   build failed) → `unhealthy` while some replicas still serve, else `failed`, with
//!   Kubernetes' message;
//! - scaled to zero → `terminating` while pods remain, then `terminated`;
//! - otherwise `deploying`, with what it waits for.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use yatai_core::deploy::{DeploymentSnapshot, Phase, ReplicaInfo};
use yatai_kube_api::condition::{self, FALSE};
use yatai_kube_api::resources::conditions as br;
use yatai_kube_api::serving::conditions::AVAILABLE;
use yatai_kube_api::serving::v2alpha1::BentoDeployment;
use yatai_kube_api::{BentoRequest, condition::TRUE};

use crate::objects::{self, marks};

/// BentoRequest reasons after which it will not produce the Bento without help (the
/// operator's own list, `bento_request::plan::reasons`).
const BUILD_GAVE_UP: [&str; 7] =
    ["BuildFailed", "Unbuildable", "Timeout", "RegistryUnreachable", "NoImageRegistry", "InvalidSpec", "Failed"];

/// `Available=False` reasons that mean the deployment cannot serve without a change (the
/// operator's, and Kubernetes' own for pods and rollouts).
const FAILURES: [&str; 6] = [
    "Unschedulable",
    "ProgressDeadlineExceeded",
    "InvalidSpec",
    "BentoRequestFailed",
    "BentoNotFound",
    "ReplicaFailure",
];

fn is_failure(reason: &str) -> bool {
    FAILURES.contains(&reason) || yatai_kube_api::pods::STUCK_WAITING.contains(&reason)
}

/// Everything the watches know about one deployment.
#[derive(Clone, Copy, Default)]
pub struct Observed<'a> {
    pub bd: Option<&'a BentoDeployment>,
    /// The BentoRequest named by `spec.bento`, if any.
    pub request: Option<&'a BentoRequest>,
    /// Whether the Bento named by `spec.bento` exists.
    pub bento_exists: bool,
    /// The pods of the BentoDeployment.
    pub pods: &'a [&'a Pod],
}

/// The phase and the reason shown beside it.
pub fn phase(o: &Observed) -> (Phase, String) {
    let Some(bd) = o.bd else {
        return (Phase::Deploying, "waiting for the BentoDeployment to be created".into());
    };
    let name = kube::ResourceExt::name_any(bd);
    if objects::scaled_to_zero(bd) {
        let live = o.pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).count();
        return match o.pods.len() {
            0 => (Phase::Terminated, String::new()),
            n => (Phase::Terminating, format!("{n} pod(s) stopping ({live} not yet asked to)")),
        };
    }
    let status = bd.status.clone().unwrap_or_default();
    let available = condition::find(&status.conditions, AVAILABLE);
    let current = |c: &&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
        bd.metadata.generation.is_none() || c.observed_generation >= bd.metadata.generation
    };

    if !o.bento_exists
        && let Some(request) = o.request
    {
        let conditions = request.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        let gave_up = [br::IMAGE_EXISTS_CHECKED, br::IMAGE_BUILDING, br::IMAGE_EXISTS, br::BENTO_AVAILABLE]
            .iter()
            .filter_map(|t| condition::find(conditions, t))
            .find(|c| c.status == FALSE && BUILD_GAVE_UP.contains(&c.reason.as_str()));
        if let Some(c) = gave_up {
            return (Phase::Failed, format!("the image build failed: {}: {}", c.reason, c.message));
        }
        let doing = condition::find(conditions, br::IMAGE_BUILDING)
            .filter(|c| c.status == TRUE)
            .map(|c| c.message.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| format!("the operator builds the image of {}", request.spec.bento_tag));
        return (Phase::ImageBuilding, doing);
    }

    let Some(available) = available.filter(current) else {
        let generation = bd.metadata.generation.unwrap_or_default();
        return (
            Phase::Deploying,
            format!(
                "waiting for the yatai operator to reconcile BentoDeployment {name} (generation {generation}); if \
                 this lasts, check on the cluster's page that the operator runs"
            ),
        );
    };
    if available.status == TRUE {
        return (Phase::Running, available.message.clone());
    }
    // A pod problem the operator has not looked at yet (it rechecks every few seconds) is
    // already in the pods the watch keeps.
    let (reason, message) = match yatai_kube_api::pods::problem(o.pods.iter().copied()) {
        Some(p) if !is_failure(&available.reason) => p,
        _ => (available.reason.clone(), available.message.clone()),
    };
    if is_failure(&reason) {
        let ready = o.pods.iter().filter(|p| pod_ready(p)).count();
        let phase = if ready > 0 { Phase::Unhealthy } else { Phase::Failed };
        return (phase, format!("{reason}: {message}"));
    }
    (Phase::Deploying, message)
}

/// The snapshot `status()` returns: the phase and one replica per pod.
pub fn snapshot(o: &Observed) -> DeploymentSnapshot {
    let (phase, reason) = phase(o);
    let revision = o.bd.and_then(|bd| bd.metadata.annotations.as_ref()?.get(marks::REVISION_UID).cloned());
    let desired =
        o.bd.map(|bd| {
            if objects::scaled_to_zero(bd) {
                return 0;
            }
            let min = bd.spec.autoscaling.as_ref().map(|a| a.min_replicas).unwrap_or(1);
            bd.status.as_ref().and_then(|s| s.replicas).unwrap_or(min).max(min).max(0) as u32
        })
        .unwrap_or(0);
    let mut replicas: Vec<ReplicaInfo> =
        o.pods.iter().map(|p| replica(p, revision.clone().unwrap_or_default())).collect();
    replicas.sort_by(|a, b| a.id.cmp(&b.id));
    DeploymentSnapshot {
        phase,
        reason,
        revision_uid: revision,
        updating_to: None,
        desired_replicas: desired,
        inflight: 0,
        replicas,
        port: 0,
        env_cached: None,
    }
}

fn replica(pod: &Pod, revision_uid: String) -> ReplicaInfo {
    let status = pod.status.clone().unwrap_or_default();
    let statuses = status.container_statuses.clone().unwrap_or_default();
    let restarts = statuses.iter().map(|c| c.restart_count.max(0) as u32).sum();
    let crashing = statuses.iter().any(|c| {
        c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref()) == Some("CrashLoopBackOff")
    });
    let state = if status.phase.as_deref() == Some("Failed") {
        "failed"
    } else if crashing {
        "restarting"
    } else if pod_ready(pod) {
        "ready"
    } else {
        "starting"
    };
    let started_at = status.start_time.as_ref().map(|t| t.0.as_microsecond()).unwrap_or_default();
    ReplicaInfo {
        id: pod.metadata.name.clone().unwrap_or_default(),
        revision_uid,
        port: 0,
        pid: None,
        state,
        restarts,
        inflight: 0,
        started_at,
    }
}

/// Whether the pod's `Ready` condition is true.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == TRUE))
}

/// The pods of a BentoDeployment, by the label the operator puts on them.
pub fn pods_of<'a>(name: &str, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<&'a Pod> {
    pods.into_iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l: &BTreeMap<String, String>| l.get(yatai_kube_api::names::labels::BENTO_DEPLOYMENT))
                == Some(&name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
    use yatai_kube_api::resources::{BentoRequestSpec, BentoRequestStatus};
    use yatai_kube_api::serving::v2alpha1::{Autoscaling, BentoDeploymentSpec, BentoDeploymentStatus};

    use super::*;

    fn cond(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(generation),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        }
    }

    fn bd(generation: i64, conditions: Vec<Condition>) -> BentoDeployment {
        let mut bd = BentoDeployment::new(
            "iris",
            BentoDeploymentSpec {
                bento: "iris--v1".into(),
                autoscaling: Some(Autoscaling { min_replicas: 2, max_replicas: 3, ..Default::default() }),
                ..Default::default()
            },
        );
        bd.metadata.generation = Some(generation);
        bd.metadata.annotations = Some([(marks::REVISION_UID.to_string(), "rev-1".to_string())].into());
        bd.status = Some(BentoDeploymentStatus { conditions, replicas: Some(2), ..Default::default() });
        bd
    }

    fn pod(name: &str, ready: bool, waiting: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("yatai.ai/bento-deployment".to_string(), "iris".to_string())].into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                container_statuses: waiting.map(|w| {
                    vec![ContainerStatus {
                        name: "main".into(),
                        restart_count: 3,
                        state: Some(ContainerState {
                            waiting: Some(ContainerStateWaiting {
                                reason: Some(w.into()),
                                message: Some("back-off 40s".into()),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn request(conditions: Vec<Condition>) -> BentoRequest {
        let mut r =
            BentoRequest::new("iris--v1", BentoRequestSpec { bento_tag: "iris:v1".into(), ..Default::default() });
        r.status = Some(BentoRequestStatus { conditions, ..Default::default() });
        r
    }

    #[test]
    fn available_for_the_current_generation_is_running() {
        let b = bd(3, vec![cond("Available", "True", "Ready", "2/2 replicas ready", 3)]);
        let (p0, p1) = (pod("a", true, None), pod("b", true, None));
        let pods = [&p0, &p1];
        let o = Observed { bd: Some(&b), bento_exists: true, pods: &pods, ..Default::default() };
        assert_eq!(phase(&o), (Phase::Running, "2/2 replicas ready".into()));
        let s = snapshot(&o);
        assert_eq!(s.replicas.len(), 2);
        assert_eq!(s.replicas[0].state, "ready");
        assert_eq!(s.revision_uid.as_deref(), Some("rev-1"));
        assert_eq!(s.desired_replicas, 2);
    }

    #[test]
    fn a_stale_available_is_still_deploying() {
        let b = bd(4, vec![cond("Available", "True", "Ready", "2/2 replicas ready", 3)]);
        let o = Observed { bd: Some(&b), bento_exists: true, ..Default::default() };
        let (p, reason) = phase(&o);
        assert_eq!(p, Phase::Deploying);
        assert!(reason.contains("generation 4"), "{reason}");
        let none = Observed::default();
        assert_eq!(phase(&none).0, Phase::Deploying);
    }

    #[test]
    fn pod_problems_fail_or_make_unhealthy_with_the_reason() {
        let b = bd(1, vec![cond("Available", "False", "ImagePullBackOff", "pod a: Back-off pulling image", 1)]);
        let o = Observed { bd: Some(&b), bento_exists: true, ..Default::default() };
        let (p, reason) = phase(&o);
        assert_eq!(p, Phase::Failed);
        assert!(reason.starts_with("ImagePullBackOff: pod a: Back-off"), "{reason}");

        // One replica still serves while another crash-loops: unhealthy. The pods tell
        // before the operator's next look does.
        let b = bd(1, vec![cond("Available", "False", "Deploying", "1/2 replicas ready", 1)]);
        let (p0, p1) = (pod("a", true, None), pod("b", false, Some("CrashLoopBackOff")));
        let pods = [&p0, &p1];
        let o = Observed { bd: Some(&b), bento_exists: true, pods: &pods, ..Default::default() };
        let (p, reason) = phase(&o);
        assert_eq!(p, Phase::Unhealthy);
        assert!(reason.contains("CrashLoopBackOff") && reason.contains("pod b"), "{reason}");
        assert_eq!(snapshot(&o).replicas[1].state, "restarting");
        assert_eq!(snapshot(&o).replicas[1].restarts, 3);

        let b = bd(1, vec![cond("Available", "False", "Unschedulable", "pod a cannot be scheduled: 0/2 nodes", 1)]);
        let o = Observed { bd: Some(&b), bento_exists: true, ..Default::default() };
        assert_eq!(phase(&o).0, Phase::Failed);

        let b = bd(1, vec![cond("Available", "False", "Deploying", "0/2 replicas ready", 1)]);
        let o = Observed { bd: Some(&b), bento_exists: true, ..Default::default() };
        assert_eq!(phase(&o), (Phase::Deploying, "0/2 replicas ready".into()));
    }

    #[test]
    fn a_bento_request_is_building_until_it_gives_up() {
        let b = bd(1, vec![cond("Available", "False", "WaitingForBento", "waiting", 1)]);
        let r = request(vec![]);
        let o = Observed { bd: Some(&b), request: Some(&r), ..Default::default() };
        assert_eq!(phase(&o).0, Phase::ImageBuilding);

        let r = request(vec![cond("ImageExistsChecked", "False", "NoImageRegistry", "no --image-registry", 1)]);
        let o = Observed { bd: Some(&b), request: Some(&r), ..Default::default() };
        let (p, reason) = phase(&o);
        assert_eq!(p, Phase::Failed);
        assert_eq!(reason, "the image build failed: NoImageRegistry: no --image-registry");

        // Once the Bento exists, the request's history no longer matters.
        let b = bd(1, vec![cond("Available", "True", "Ready", "2/2", 1)]);
        let o = Observed { bd: Some(&b), request: Some(&r), bento_exists: true, ..Default::default() };
        assert_eq!(phase(&o).0, Phase::Running);

        // The BentoDeployment's own word for a failed build is a failure too.
        let b =
            bd(1, vec![cond("Available", "False", "BentoRequestFailed", "BentoRequest iris--v1: BuildFailed: x", 1)]);
        let o = Observed { bd: Some(&b), bento_exists: false, ..Default::default() };
        assert_eq!(phase(&o).0, Phase::Failed);
    }

    #[test]
    fn scaled_to_zero_is_terminating_until_the_pods_are_gone() {
        let mut b = bd(2, vec![cond("Available", "True", "Ready", "0/0", 2)]);
        b.spec.autoscaling = Some(Autoscaling { min_replicas: 0, max_replicas: 0, ..Default::default() });
        let p0 = pod("a", true, None);
        let pods = [&p0];
        let o = Observed { bd: Some(&b), bento_exists: true, pods: &pods, ..Default::default() };
        assert_eq!(phase(&o).0, Phase::Terminating);
        let o = Observed { bd: Some(&b), bento_exists: true, ..Default::default() };
        assert_eq!(phase(&o), (Phase::Terminated, String::new()));
        assert_eq!(snapshot(&o).desired_replicas, 0);
    }

    #[test]
    fn pods_are_matched_by_the_operator_s_label() {
        let (a, mut b) = (pod("a", true, None), pod("b", true, None));
        b.metadata.labels = Some([("yatai.ai/bento-deployment".to_string(), "other".to_string())].into());
        let found = pods_of("iris", [&a, &b]);
        assert_eq!(found.len(), 1);
    }
}
