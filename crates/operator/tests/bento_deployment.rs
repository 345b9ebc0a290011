//! The BentoDeployment controller against a real control plane (kwok nodes make pods Ready):
//! every child field by field, status that means serving, updates, scaling, the ingress
//! switch, garbage collection, and bad input ending in conditions and Events.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{EnvVar, Event, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use yatai_kube_api::condition;
use yatai_kube_api::crds::WebhookEndpoint;
use yatai_kube_api::resources::BentoSpec;
use yatai_kube_api::serving::v2alpha1::{Autoscaling, BentoDeployment, BentoDeploymentSpec, Ingress as IngressSpec};
use yatai_kube_api::{Bento, names};
use yatai_kube_testbed::{TestNamespace, Testbed, poll_until};
use yatai_operator::{Context, Namespaces, Settings, bento_deployment};

const WAIT: Duration = Duration::from_secs(90);
const SUFFIX: &str = "10.0.0.7.sslip.io";

async fn setup(prefix: &str) -> anyhow::Result<(TestNamespace, Context)> {
    let testbed = Testbed::shared().await?;
    let ns = testbed.namespace(prefix).await?;
    yatai_operator::crds::install_missing(&ns.client(), &WebhookEndpoint::default()).await?;
    let mut settings = Settings::for_tests(Namespaces::Some(vec![ns.name().to_string()]), ns.name());
    settings.domain_suffix = Some(SUFFIX.into());
    let ctx = Context::new(ns.client(), settings);
    tokio::spawn(bento_deployment::run(ctx.clone()));
    Ok((ns, ctx))
}

fn bento(tag: &str, image: &str) -> Bento {
    let mut b = Bento::new(
        &names::bento_request_name(tag),
        BentoSpec { tag: tag.into(), image: image.into(), ..Default::default() },
    );
    b.spec.image_pull_secrets = vec![k8s_openapi::api::core::v1::LocalObjectReference { name: "yatai-regcred".into() }];
    b
}

fn deployment(name: &str, bento: &str) -> BentoDeployment {
    BentoDeployment::new(
        name,
        BentoDeploymentSpec {
            bento: bento.into(),
            autoscaling: Some(Autoscaling { min_replicas: 2, max_replicas: 4, ..Default::default() }),
            envs: vec![
                EnvVar { name: "A".into(), value: Some("b".into()), value_from: None },
                // A user's value wins over the injected one.
                EnvVar { name: "YATAI_BENTO_DEPLOYMENT_NAME".into(), value: Some("mine".into()), value_from: None },
            ],
            labels: BTreeMap::from([("team".into(), "ml".into())]),
            ingress: IngressSpec { enabled: true, ..Default::default() },
            ..Default::default()
        },
    )
}

async fn available(api: &Api<BentoDeployment>, name: &str) -> anyhow::Result<BentoDeployment> {
    poll_until(WAIT, &format!("BentoDeployment {name} Available=True"), || async {
        let bd = api.get(name).await?;
        let ok = bd.status.as_ref().is_some_and(|s| {
            condition::is_true(&s.conditions, "Available") && s.observed_generation == bd.metadata.generation
        });
        Ok::<_, kube::Error>(ok.then_some(bd))
    })
    .await
}

async fn condition_reason(api: &Api<BentoDeployment>, name: &str, type_: &str, reason: &str) -> anyhow::Result<String> {
    poll_until(WAIT, &format!("BentoDeployment {name} {type_} reason {reason}"), || async {
        let bd = api.get(name).await?;
        let c = bd.status.as_ref().and_then(|s| condition::find(&s.conditions, type_).cloned());
        Ok::<_, kube::Error>(c.filter(|c| c.reason == reason).map(|c| c.message))
    })
    .await
}

fn env(d: &Deployment) -> BTreeMap<String, String> {
    d.spec.template.spec.as_ref().unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bento_deployment_becomes_children_that_serve() -> anyhow::Result<()> {
    let (ns, _ctx) = setup("bd-children").await?;
    let n = ns.name().to_string();
    ns.api::<Bento>().create(&PostParams::default(), &bento("iris:v1", "registry.test/bentos:yatai.iris.v1")).await?;
    let bds: Api<BentoDeployment> = ns.api();
    let created = bds.create(&PostParams::default(), &deployment("iris", "iris--v1")).await?;
    let uid = created.uid().unwrap();

    let bd = available(&bds, "iris").await?;
    let status = bd.status.clone().unwrap();
    assert_eq!(status.url, format!("http://iris-{n}.{SUFFIX}"));
    assert!(status.ready_replicas.unwrap() >= 2, "{status:?}");
    assert_eq!(status.printer_ready, "2/2");
    assert!(condition::is_true(&status.conditions, "BentoFound"));

    // The Deployment, field by field.
    let d = ns.api::<Deployment>().get("iris").await?;
    let owner = &d.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("BentoDeployment", uid.as_str(), Some(true))
    );
    let labels = d.labels();
    for (k, v) in [
        ("yatai.ai/bento-deployment", "iris"),
        ("yatai.ai/bento-repository", "iris"),
        ("yatai.ai/bento-version", "v1"),
        ("yatai.ai/bento-deployment-component-type", "api-server"),
        ("yatai.ai/creator", "yatai-deployment"),
        ("team", "ml"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    assert_eq!(d.spec.selector.match_labels.as_ref().unwrap()["yatai.ai/selector"], "iris");
    let template = d.spec.template.clone();
    let pod_labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(pod_labels["yatai.ai/selector"], "iris");
    assert_eq!(pod_labels["yatai.ai/bento-deployment-target-type"], "production");
    let pod = template.spec.unwrap();
    let main = &pod.containers[0];
    assert_eq!(main.name, "main");
    assert_eq!(main.image.as_deref(), Some("registry.test/bentos:yatai.iris.v1"));
    assert!(main.command.is_none() && main.args.is_none(), "the image's own entrypoint runs");
    let port = &main.ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.container_port), (Some("http"), 3000));
    let env = env(&d);
    assert_eq!(env["PORT"], "3000");
    assert_eq!(env["YATAI_T_DEPLOYMENT_UID"], uid);
    assert_eq!(env["YATAI_BENTO_DEPLOYMENT_NAMESPACE"], n);
    assert_eq!(env["YATAI_BENTO_DEPLOYMENT_NAME"], "mine", "user envs win");
    assert_eq!(env["A"], "b");
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone()).unwrap()
    };
    assert_eq!(path(&main.liveness_probe), "/livez");
    assert_eq!(path(&main.readiness_probe), "/readyz");
    assert_eq!(path(&main.startup_probe), "/livez");
    assert!(
        main.startup_probe.as_ref().unwrap().failure_threshold.unwrap()
            * main.startup_probe.as_ref().unwrap().period_seconds.unwrap()
            >= 300
    );
    let res = main.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "300m");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "1Gi");
    let sc = main.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &["ALL"]);
    assert_eq!(main.volume_mounts.as_ref().unwrap()[0].mount_path, "/dev/shm");
    let shm = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(shm.empty_dir.as_ref().unwrap().medium.as_deref(), Some("Memory"));
    assert_eq!(shm.empty_dir.as_ref().unwrap().size_limit.as_ref().unwrap().0, "512Mi", "half the memory limit");
    assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "yatai-regcred");
    assert_eq!(d.spec.strategy.as_ref().unwrap().type_.as_deref(), Some("RollingUpdate"));

    // Service, HPA, Ingress.
    let s = ns.api::<Service>().get("iris").await?;
    let spec = s.spec.unwrap();
    assert_eq!(spec.selector.unwrap()["yatai.ai/selector"], "iris");
    let sp = &spec.ports.unwrap()[0];
    assert_eq!((sp.name.as_deref(), sp.port), (Some("http"), 3000));
    assert_eq!(sp.target_port, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into())));
    assert_eq!(s.metadata.owner_references.unwrap()[0].uid, uid);

    let h = ns.api::<HorizontalPodAutoscaler>().get("iris").await?;
    assert_eq!((h.spec.min_replicas, h.spec.max_replicas), (Some(2), 4));
    assert_eq!(h.spec.scale_target_ref.name, "iris");
    let m = &h.spec.metrics.as_ref().unwrap()[0];
    assert_eq!(m.resource.as_ref().unwrap().name, "cpu");
    assert_eq!(m.resource.as_ref().unwrap().target.average_utilization, Some(80));

    let i = ns.api::<Ingress>().get("iris").await?;
    let rule = &i.spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some(format!("iris-{n}.{SUFFIX}").as_str()));
    let backend = rule.http.as_ref().unwrap().paths[0].backend.service.clone().unwrap();
    assert_eq!((backend.name.as_str(), backend.port.unwrap().name.as_deref()), ("iris", Some("http")));

    // An Event says it became available.
    let events: Api<Event> = ns.api();
    poll_until(WAIT, "an Event for the BentoDeployment", || async {
        let list = events.list(&ListParams::default()).await?;
        Ok::<_, kube::Error>(list.items.iter().any(|e| e.involved_object.name.as_deref() == Some("iris")).then_some(()))
    })
    .await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_scale_ingress_switch_repair_and_delete() -> anyhow::Result<()> {
    let (ns, _ctx) = setup("bd-lifecycle").await?;
    let bentos = ns.api::<Bento>();
    bentos.create(&PostParams::default(), &bento("iris:v1", "registry.test/bentos:yatai.iris.v1")).await?;
    bentos.create(&PostParams::default(), &bento("iris:v2", "registry.test/bentos:yatai.iris.v2")).await?;
    let bds: Api<BentoDeployment> = ns.api();
    bds.create(&PostParams::default(), &deployment("iris", "iris--v1")).await?;
    available(&bds, "iris").await?;
    let deployments = ns.api::<Deployment>();

    // A new bento version rolls the Deployment to the new image, and Available follows the
    // new generation.
    bds.patch("iris", &PatchParams::default(), &Patch::Merge(json!({"spec": {"bento": "iris--v2"}}))).await?;
    let bd = available(&bds, "iris").await?;
    let d = deployments.get("iris").await?;
    assert_eq!(
        d.spec.template.spec.as_ref().unwrap().containers[0].image.as_deref(),
        Some("registry.test/bentos:yatai.iris.v2")
    );
    assert_eq!(d.labels()["yatai.ai/bento-version"], "v2");
    assert!(bd.status.unwrap().updated_replicas.unwrap() >= 2);

    // Scaling up: the HPA's minimum moves, the HPA scales the Deployment, and Available waits
    // for three ready replicas.
    bds.patch(
        "iris",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"autoscaling": {"minReplicas": 3, "maxReplicas": 5}}})),
    )
    .await?;
    poll_until(WAIT, "three ready replicas", || async {
        let bd = bds.get("iris").await?;
        let s = bd.status.unwrap_or_default();
        Ok::<_, kube::Error>(
            (condition::is_true(&s.conditions, "Available") && s.ready_replicas >= Some(3) && s.printer_ready == "3/3")
                .then_some(()),
        )
    })
    .await?;
    let h = ns.api::<HorizontalPodAutoscaler>().get("iris").await?;
    assert_eq!((h.spec.min_replicas, h.spec.max_replicas), (Some(3), 5));
    assert!(deployments.get("iris").await?.spec.replicas >= Some(3), "the HPA owns replicas; we never reset them");

    // A deleted child comes back.
    ns.api::<Service>().delete("iris", &DeleteParams::default()).await?;
    poll_until(WAIT, "the Service recreated", || async {
        ns.api::<Service>()
            .get_opt("iris")
            .await
            .map(|s| s.filter(|s| s.metadata.deletion_timestamp.is_none()).map(|_| ()))
    })
    .await?;

    // Ingress off: the Ingress goes; the URL becomes the in-cluster one.
    bds.patch("iris", &PatchParams::default(), &Patch::Merge(json!({"spec": {"ingress": {"enabled": false}}}))).await?;
    poll_until(WAIT, "the Ingress removed", || async {
        ns.api::<Ingress>().get_opt("iris").await.map(|i| i.is_none().then_some(()))
    })
    .await?;
    let n = ns.name().to_string();
    poll_until(WAIT, "the in-cluster URL", || async {
        let bd = bds.get("iris").await?;
        let url = bd.status.map(|s| s.url).unwrap_or_default();
        Ok::<_, kube::Error>((url == format!("http://iris.{n}.svc.cluster.local:3000")).then_some(()))
    })
    .await?;

    // Deleting the BentoDeployment garbage-collects every child.
    bds.delete("iris", &DeleteParams::foreground()).await?;
    poll_until(WAIT, "children garbage-collected", || async {
        let d = deployments.get_opt("iris").await?;
        let s = ns.api::<Service>().get_opt("iris").await?;
        let h = ns.api::<HorizontalPodAutoscaler>().get_opt("iris").await?;
        Ok::<_, kube::Error>((d.is_none() && s.is_none() && h.is_none()).then_some(()))
    })
    .await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_in_conditions_and_events_without_a_hot_loop() -> anyhow::Result<()> {
    let (ns, ctx) = setup("bd-bad").await?;
    let bds: Api<BentoDeployment> = ns.api();
    ns.api::<Bento>().create(&PostParams::default(), &bento("iris:v1", "registry.test/bentos:yatai.iris.v1")).await?;

    // A missing bento: both lookups say so, and the message says what to do.
    bds.create(&PostParams::default(), &deployment("lost", "no-such-bento")).await?;
    let message = condition_reason(&bds, "lost", "Available", "BentoNotFound").await?;
    ensure!(message.contains("no-such-bento") && message.contains("create one"), "{message}");
    let bd = bds.get("lost").await?;
    let s = bd.status.unwrap();
    assert_eq!(condition::find(&s.conditions, "BentoFound").unwrap().status, "False");
    assert_eq!(condition::find(&s.conditions, "BentoRequestFound").unwrap().status, "False");

    // Impossible resources: named in the condition, no children made.
    let mut greedy = deployment("greedy", "iris--v1");
    greedy.spec.resources = Some(yatai_kube_api::serving::Resources {
        requests: Some(yatai_kube_api::serving::ResourceItem { cpu: "lots".into(), ..Default::default() }),
        limits: None,
    });
    bds.create(&PostParams::default(), &greedy).await?;
    let message = condition_reason(&bds, "greedy", "Available", "InvalidSpec").await?;
    ensure!(message.contains("resources.requests.cpu") && message.contains("lots"), "{message}");
    assert!(ns.api::<Deployment>().get_opt("greedy").await?.is_none());

    // A name too long for a Service.
    let long = "a".repeat(64);
    bds.create(&PostParams::default(), &deployment(&long, "iris--v1")).await?;
    let message = condition_reason(&bds, &long, "Available", "InvalidSpec").await?;
    ensure!(message.contains("63"), "{message}");

    // A bad strategy annotation.
    let mut odd = deployment("odd", "iris--v1");
    odd.spec.annotations.insert("yatai.ai/deployment-strategy".into(), "Sideways".into());
    bds.create(&PostParams::default(), &odd).await?;
    let message = condition_reason(&bds, "odd", "Available", "InvalidSpec").await?;
    ensure!(message.contains("Sideways") && message.contains("Recreate"), "{message}");

    // Each says so in a Warning Event.
    let events: Api<Event> = ns.api();
    poll_until(WAIT, "Warning Events for the bad deployments", || async {
        let list = events.list(&ListParams::default()).await?;
        let warned: Vec<_> = list
            .items
            .iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .filter_map(|e| e.involved_object.name.clone())
            .collect();
        Ok::<_, kube::Error>(["lost", "greedy", "odd"].iter().all(|n| warned.iter().any(|w| w == n)).then_some(()))
    })
    .await?;

    // No hot loop: over a 3 s window the controller reconciles these four deployments a
    // handful of times, not hundreds.
    let metrics = ctx.metrics.controller("bentodeployment");
    let before = metrics.reconciles();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = metrics.reconciles() - before;
    ensure!(during <= 8, "{during} reconciles in 3 s for four stuck deployments");

    // Fixing the input recovers without a restart.
    bds.patch(
        "greedy",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"resources": {"requests": {"cpu": "100m"}}}})),
    )
    .await?;
    available(&bds, "greedy").await.context("fixed resources become available")?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_suffix_the_ingress_controller_s_address_becomes_the_sslip_io_domain() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let testbed = Testbed::shared().await?;
    let ns = testbed.namespace("bd-domain").await?;
    yatai_operator::crds::install_missing(&ns.client(), &WebhookEndpoint::default()).await?;
    // No --domain-suffix and no `network` ConfigMap.
    let settings = Settings::for_tests(Namespaces::Some(vec![ns.name().to_string()]), ns.name());
    tokio::spawn(bento_deployment::run(Context::new(ns.client(), settings)));
    ns.api::<Bento>().create(&PostParams::default(), &bento("iris:v1", "registry.test/bentos:yatai.iris.v1")).await?;
    let bds: Api<BentoDeployment> = ns.api();
    bds.create(&PostParams::default(), &deployment("iris", "iris--v1")).await?;

    // Until the suffix is known the deployment serves, and says what its Ingress waits for.
    let waiting = poll_until(WAIT, "Available while the Ingress waits", || async {
        let bd = bds.get("iris").await?;
        let c = bd.status.and_then(|s| condition::find(&s.conditions, "Available").cloned());
        Ok::<_, kube::Error>(c.filter(|c| c.status == "True").map(|c| c.message))
    })
    .await?;
    ensure!(waiting.contains("domain suffix"), "{waiting}");
    assert!(ns.api::<Ingress>().get_opt("iris").await?.is_none());

    // Play the ingress controller: publish an address on the probe Ingress.
    let ingresses = ns.api::<Ingress>();
    poll_until(WAIT, "the probe Ingress", || async {
        ingresses.get_opt(yatai_operator::network::PROBE_INGRESS).await.map(|i| i.map(|_| ()))
    })
    .await?;
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.1.2.3"}]}}});
    ingresses
        .patch_status(yatai_operator::network::PROBE_INGRESS, &PatchParams::default(), &Patch::Merge(&status))
        .await?;

    // The suffix is written where Yatai keeps it, the probe goes, and the deployment gets its host.
    let n = ns.name().to_string();
    let host = format!("iris-{n}.10.1.2.3.sslip.io");
    poll_until(WAIT, "the Ingress on the discovered domain", || async {
        let i = ingresses.get_opt("iris").await?;
        let h = i.and_then(|i| i.spec?.rules?.first()?.host.clone());
        Ok::<_, kube::Error>((h.as_deref() == Some(host.as_str())).then_some(()))
    })
    .await?;
    let cm = ns.api::<ConfigMap>().get("network").await?;
    assert_eq!(cm.data.unwrap()["domain-suffix"], "10.1.2.3.sslip.io");
    poll_until(WAIT, "the probe Ingress deleted", || async {
        ingresses.get_opt(yatai_operator::network::PROBE_INGRESS).await.map(|i| i.is_none().then_some(()))
    })
    .await?;
    poll_until(WAIT, "the URL on the discovered domain", || async {
        let url = bds.get("iris").await?.status.map(|s| s.url).unwrap_or_default();
        Ok::<_, kube::Error>((url == format!("http://{host}")).then_some(()))
    })
    .await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bento_request_that_cannot_build_fails_the_deployment_with_its_reason() -> anyhow::Result<()> {
    use yatai_kube_api::BentoRequest;
    use yatai_kube_api::resources::BentoRequestSpec;
    let (ns, _ctx) = setup("bd-request").await?;
    let requests = ns.api::<BentoRequest>();
    let request = BentoRequest::new("iris--v9", BentoRequestSpec { bento_tag: "iris:v9".into(), ..Default::default() });
    requests.create(&PostParams::default(), &request).await?;
    let bds: Api<BentoDeployment> = ns.api();
    bds.create(&PostParams::default(), &deployment("iris", "iris--v9")).await?;

    // While the request has not failed, the deployment waits for it.
    let message = condition_reason(&bds, "iris", "Available", "WaitingForBento").await?;
    ensure!(message.contains("iris--v9"), "{message}");
    let bd = bds.get("iris").await?;
    assert_eq!(condition::find(&bd.status.unwrap().conditions, "BentoRequestFound").unwrap().status, "True");

    // The build fails (written here as the BentoRequest controller would): the deployment
    // says so, with the build's own message.
    let status = json!({"status": {"conditions": [{
        "type": "ImageBuilding", "status": "False", "reason": "BuildFailed",
        "message": "downloading the bento: HTTP 404 from spec.downloadUrl",
        "lastTransitionTime": "2026-11-30T00:00:00Z"
    }]}});
    requests.patch_status("iris--v9", &PatchParams::default(), &Patch::Merge(&status)).await?;
    let message = condition_reason(&bds, "iris", "Available", "BentoRequestFailed").await?;
    ensure!(message.contains("HTTP 404") && message.contains("BuildFailed"), "{message}");
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_bento_with_runners_gets_a_workload_per_runner_and_a_runner_map() -> anyhow::Result<()> {
    use yatai_kube_api::resources::BentoRunner;
    use yatai_kube_api::serving::v2alpha1::RunnerSpec;
    use yatai_operator::bento_deployment::children::runner_service_name;
    let (ns, _ctx) = setup("bd-runners").await?;
    let mut legacy = bento("iris:v1", "registry.test/bentos:yatai.iris.v1");
    legacy.spec.runners = vec![
        BentoRunner {
            name: "iris_clf".into(),
            runnable_type: "SklearnRunnable".into(),
            model_tags: vec!["iris_clf:1".into()],
        },
        BentoRunner { name: "embedder".into(), ..Default::default() },
    ];
    ns.api::<Bento>().create(&PostParams::default(), &legacy).await?;
    let mut bd = deployment("iris", "iris--v1");
    bd.spec.runners = vec![RunnerSpec {
        name: "embedder".into(),
        autoscaling: Some(Autoscaling { min_replicas: 2, max_replicas: 3, ..Default::default() }),
        envs: vec![EnvVar { name: "EMBED".into(), value: Some("1".into()), value_from: None }],
        ..Default::default()
    }];
    let bds: Api<BentoDeployment> = ns.api();
    bds.create(&PostParams::default(), &bd).await?;
    let bd = available(&bds, "iris").await?;
    assert_eq!(bd.status.unwrap().printer_ready, "2/2");

    let deployments = ns.api::<Deployment>();
    let services = ns.api::<Service>();
    let mut expected_map = BTreeMap::new();
    for (i, runner) in ["iris_clf", "embedder"].iter().enumerate() {
        let d = deployments.get(&format!("iris-runner-{i}")).await?;
        assert_eq!(d.labels()["yatai.ai/bento-deployment-component-type"], "runner");
        assert_eq!(d.labels()["yatai.ai/bento-deployment-component-name"], *runner);
        assert_eq!(d.owner_references()[0].kind, "BentoDeployment");
        let args = d.spec.template.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
        assert!(args.windows(2).any(|w| w == ["--runner-name", runner]), "{args:?}");
        assert!(args.contains(&"tcp://0.0.0.0:3000".to_string()), "{args:?}");
        let svc = runner_service_name("iris", "iris:v1", runner);
        let s = services.get(&svc).await?;
        assert_eq!(s.spec.unwrap().selector.unwrap()["yatai.ai/selector"], format!("iris-runner-{i}"));
        expected_map.insert(runner.to_string(), format!("tcp://{svc}:3000"));
    }
    // The per-runner settings reach that runner only.
    let hpa = ns.api::<HorizontalPodAutoscaler>().get("iris-runner-1").await?;
    assert_eq!(hpa.spec.min_replicas, Some(2));
    assert_eq!(env(&deployments.get("iris-runner-1").await?)["EMBED"], "1");
    assert!(!env(&deployments.get("iris-runner-0").await?).contains_key("EMBED"));
    // The API server is told where the runners are.
    let api = deployments.get("iris").await?;
    let args = api.spec.template.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    let at = args.iter().position(|a| a == "--runner-map").expect("a --runner-map argument");
    let map: BTreeMap<String, String> = serde_json::from_str(&args[at + 1])?;
    assert_eq!(map, expected_map);
    assert!(args.contains(&"bentoml._internal.server.cli.api_server".to_string()), "{args:?}");
    // Every runner ready counts: the HPA minimum of the runner decides Available too.
    poll_until(WAIT, "two ready embedder replicas", || async {
        let d = deployments.get("iris-runner-1").await?;
        Ok::<_, kube::Error>((d.status.and_then(|s| s.ready_replicas) >= Some(2)).then_some(()))
    })
    .await?;
    ns.delete().await
}
