//! `minReplicas = maxReplicas = 0` (what yatai's terminate writes) against a real control
//! plane: the BentoDeployment and its children stay, the Deployment goes to zero and its pods
//! with it, and raising the minimum brings them back under the HPA.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use yatai_kube_api::Bento;
use yatai_kube_api::condition;
use yatai_kube_api::crds::WebhookEndpoint;
use yatai_kube_api::resources::BentoSpec;
use yatai_kube_api::serving::v2alpha1::{Autoscaling, BentoDeployment, BentoDeploymentSpec};
use yatai_kube_testbed::{Testbed, poll_until};
use yatai_operator::{Context, Namespaces, Settings, bento_deployment};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_replicas_stops_the_pods_and_keeps_the_objects() -> anyhow::Result<()> {
    let testbed = Testbed::shared().await?;
    let ns = testbed.namespace("bd-zero").await?;
    yatai_operator::crds::install_missing(&ns.client(), &WebhookEndpoint::default()).await?;
    let mut settings = Settings::for_tests(Namespaces::Some(vec![ns.name().to_string()]), ns.name());
    settings.domain_suffix = Some("10.0.0.7.sslip.io".into());
    tokio::spawn(bento_deployment::run(Context::new(ns.client(), settings)));

    let bento = Bento::new(
        "iris--v1",
        BentoSpec { tag: "iris:v1".into(), image: "r.test/b:yatai.iris.v1".into(), ..Default::default() },
    );
    ns.api::<Bento>().create(&PostParams::default(), &bento).await?;
    let bds: Api<BentoDeployment> = ns.api();
    let spec = BentoDeploymentSpec {
        bento: "iris--v1".into(),
        autoscaling: Some(Autoscaling { min_replicas: 2, max_replicas: 3, ..Default::default() }),
        ..Default::default()
    };
    bds.create(&PostParams::default(), &BentoDeployment::new("iris", spec)).await?;
    let ready = |n: i32| {
        let bds = bds.clone();
        async move {
            poll_until(WAIT, &format!("iris Available with {n} ready"), || async {
                let bd = bds.get("iris").await?;
                let ok = bd.status.as_ref().is_some_and(|s| {
                    condition::is_true(&s.conditions, "Available")
                        && s.observed_generation == bd.metadata.generation
                        && s.ready_replicas.unwrap_or(0) >= n
                });
                Ok::<_, kube::Error>(ok.then_some(()))
            })
            .await
        }
    };
    ready(2).await?;

    let scale = |min: i32, max: i32| json!({"spec": {"autoscaling": {"minReplicas": min, "maxReplicas": max}}});
    bds.patch("iris", &PatchParams::default(), &Patch::Merge(scale(0, 0))).await?;
    let deployments: Api<Deployment> = ns.api();
    let pods: Api<Pod> = ns.api();
    let of_iris = ListParams::default().labels("yatai.ai/bento-deployment=iris");
    poll_until(WAIT, "the Deployment at zero and no pods", || async {
        let d = deployments.get("iris").await?;
        let none = pods.list(&of_iris).await?.items.is_empty();
        Ok::<_, kube::Error>((d.spec.replicas == Some(0) && none).then_some(()))
    })
    .await?;
    // The objects stay: only the pods went.
    assert!(ns.api::<HorizontalPodAutoscaler>().get_opt("iris").await?.is_some());
    let bd = bds.get("iris").await?;
    assert!(bd.status.unwrap().conditions.iter().all(|c| c.reason != "InvalidSpec"), "zero is a valid scale");

    // Raising the minimum again: the HPA owns the count once more.
    bds.patch("iris", &PatchParams::default(), &Patch::Merge(scale(2, 3))).await?;
    ready(2).await?;
    assert!(deployments.get("iris").await?.spec.replicas >= Some(2));
    ns.delete().await
}
