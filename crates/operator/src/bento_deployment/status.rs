//! Whether a BentoDeployment serves, from its Deployment and pods: `Available=True` only when
//! the Deployment has rolled out the current template and its ready replicas reach the
//! minimum; otherwise the reason a person would look for (image pull, crash loop,
//! unschedulable) with Kubernetes' own message.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

/// What the status says about serving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    pub available: bool,
    pub reason: String,
    pub message: String,
    pub replicas: i32,
    pub updated: i32,
    pub ready: i32,
    pub available_replicas: i32,
}

/// Reads the Deployment's rollout and, when it is not serving, its pods' problems.
pub fn serving(deployment: &Deployment, min_replicas: i32, pods: &[Pod]) -> Serving {
    let status = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0) >= generation;
    let replicas = status.replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let available_replicas = status.available_replicas.unwrap_or(0);
    let min = min_replicas.max(0);
    let base = Serving {
        available: false,
        reason: String::new(),
        message: String::new(),
        replicas,
        updated,
        ready,
        available_replicas,
    };
    // A rollout is done when every replica runs the current template; until then old pods
    // may be the ready ones.
    let rolled_out = observed && updated >= min && replicas <= updated.max(min);
    if rolled_out && ready >= min && available_replicas >= min {
        return Serving {
            available: true,
            reason: "Ready".into(),
            message: format!("{ready}/{min} replicas ready"),
            ..base
        };
    }
    if let Some((reason, message)) = yatai_kube_api::pods::problem(pods) {
        return Serving { reason, message, ..base };
    }
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some("Progressing") && c.status.as_deref() == Some("False"))
    {
        return Serving {
            reason: c.reason.clone().unwrap_or_else(|| "ProgressDeadlineExceeded".into()),
            message: c.message.clone().unwrap_or_default(),
            ..base
        };
    }
    let message = if !observed || updated < replicas {
        format!("rolling out: {updated} of {replicas} replicas updated, {ready}/{min} ready")
    } else {
        format!("{ready}/{min} replicas ready")
    };
    Serving { reason: "Deploying".into(), message, ..base }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn deployment(generation: i64, observed: i64, replicas: i32, updated: i32, ready: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta { generation: Some(generation), ..Default::default() },
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(replicas),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                available_replicas: Some(ready),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn available_only_for_the_current_generation_with_enough_ready_replicas() {
        assert!(serving(&deployment(2, 2, 2, 2, 2), 2, &[]).available);
        assert!(!serving(&deployment(3, 2, 2, 2, 2), 2, &[]).available, "an unobserved generation is not available");
        assert!(!serving(&deployment(2, 2, 3, 1, 2), 2, &[]).available, "old pods still serving mid-rollout");
        let s = serving(&deployment(2, 2, 2, 2, 1), 2, &[]);
        assert!(!s.available);
        assert_eq!(s.reason, "Deploying");
        assert_eq!(s.message, "1/2 replicas ready");
    }

    #[test]
    fn pod_problems_name_the_reason() {
        let pod = |status: PodStatus| Pod {
            metadata: ObjectMeta { name: Some("p".into()), ..Default::default() },
            status: Some(status),
            ..Default::default()
        };
        let pulling = pod(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "main".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ImagePullBackOff".into()),
                        message: Some("Back-off pulling image \"r/x:y\"".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let s = serving(&deployment(1, 1, 1, 1, 0), 1, &[pulling]);
        assert_eq!(s.reason, "ImagePullBackOff");
        assert!(s.message.contains("Back-off pulling image"), "{}", s.message);
        let unschedulable = pod(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some("0/2 nodes are available: 2 Insufficient cpu.".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(yatai_kube_api::pods::problem(&[unschedulable]).unwrap().0, "Unschedulable");
    }
}
