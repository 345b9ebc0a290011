//! The Kubernetes target against a real control plane, with the operator running in this
//! process (kwok nodes make its pods Ready): apply → CRs → running, fields set by hand kept,
//! terminate and restore, remove, the operator's build, a name clash, and the probe.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use yatai_core::deploy::{
    ArtifactRef, ClusterConnector, DeployTarget, DeploymentSpec, KubeClusterConfig, Phase, Resources, Scaling,
    StatusSink, TargetError,
};
use yatai_kube_api::crds::WebhookEndpoint;
use yatai_kube_api::serving::v2alpha1::{BentoDeployment, BentoDeploymentSpec};
use yatai_kube_api::{Bento, BentoRequest, names};
use yatai_kube_target::{KubeConnector, KubeTarget};
use yatai_kube_testbed::{TestNamespace, Testbed, poll_until};
use yatai_operator::{Context, Namespaces, Settings};

const WAIT: Duration = Duration::from_secs(90);
const SUFFIX: &str = "10.0.0.7.sslip.io";

/// Every status the target reported, in order.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, Phase, String)>>,
}

impl StatusSink for Recorder {
    fn status(&self, deployment_uid: &str, _name: &str, phase: Phase, reason: &str) {
        self.seen.lock().unwrap().push((deployment_uid.to_string(), phase, reason.to_string()));
    }
    fn port_changed(&self, _deployment_uid: &str, _port: u16) {}
}

impl Recorder {
    /// Waits until `uid` was reported in `phase`; returns the reason.
    async fn reported(&self, uid: &str, phase: Phase) -> anyhow::Result<String> {
        poll_until(WAIT, &format!("{uid} reported {}", phase.as_str()), || async {
            let seen = self.seen.lock().unwrap();
            let found = seen.iter().rev().find(|(u, p, _)| u == uid && *p == phase).map(|(_, _, r)| r.clone());
            Ok::<_, std::convert::Infallible>(found)
        })
        .await
        .with_context(|| format!("reported so far: {:?}", self.seen.lock().unwrap()))
    }

    fn last(&self, uid: &str) -> Option<(Phase, String)> {
        self.seen.lock().unwrap().iter().rev().find(|(u, _, _)| u == uid).map(|(_, p, r)| (*p, r.clone()))
    }
}

struct Setup {
    ns: TestNamespace,
    ctx: Context,
    config: KubeClusterConfig,
    sink: Arc<Recorder>,
    target: Arc<KubeTarget>,
}

/// A namespace with the CRDs and the BentoDeployment controller, and a target connected with
/// the testbed's admin kubeconfig.
async fn setup(prefix: &str) -> anyhow::Result<Setup> {
    let testbed = Testbed::shared().await?;
    let ns = testbed.namespace(prefix).await?;
    yatai_operator::crds::install_missing(&ns.client(), &WebhookEndpoint::default()).await?;
    let mut settings = Settings::for_tests(Namespaces::Some(vec![ns.name().to_string()]), ns.name());
    settings.domain_suffix = Some(SUFFIX.into());
    let ctx = Context::new(ns.client(), settings);
    tokio::spawn(yatai_operator::bento_deployment::run(ctx.clone()));
    let config = KubeClusterConfig {
        kubeconfig: Some(std::fs::read_to_string(testbed.kubeconfig())?),
        context: None,
        namespace: ns.name().to_string(),
        image_registry: None,
        domain_suffix: Some(SUFFIX.into()),
        operator_namespace: None,
    };
    let sink = Arc::new(Recorder::default());
    let target = KubeTarget::connect("cluster-1", &config, sink.clone()).await?;
    ensure!(target.ready(ns.name()).await, "the caches of {} are filled", ns.name());
    Ok(Setup { ns, ctx, config, sink, target })
}

fn spec(ns: &str, uid: &str, name: &str, image: Option<&str>) -> DeploymentSpec {
    DeploymentSpec {
        uid: uid.into(),
        org_uid: "org-1".into(),
        name: name.into(),
        namespace: ns.into(),
        host: Some(format!("{name}-{ns}")),
        access_authorization: false,
        revision_uid: "rev-1".into(),
        bento: ArtifactRef {
            name: "iris_classifier".into(),
            version: "v1".into(),
            digest: "d".into(),
            storage_key: "k".into(),
        },
        models: vec![],
        image: image.map(String::from),
        python_version: None,
        envs: vec![("GREETING".into(), "hello".into())],
        secrets: Vec::new(),
        scaling: Scaling { min: 2, max: 3, target_inflight: 10.0, scale_down_window: Duration::from_secs(60) },
        resources: Resources { memory_limit: Some("2Gi".into()), ..Default::default() },
        port: 0,
        cold_start_timeout: Duration::from_secs(300),
    }
}

fn pods_of(ns: &TestNamespace, name: &str) -> (Api<Pod>, ListParams) {
    (ns.api(), ListParams::default().labels(&format!("yatai.ai/bento-deployment={name}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_runs_keeps_hand_set_fields_terminates_restores_and_is_removed() -> anyhow::Result<()> {
    let Setup { ns, sink, target, .. } = setup("kt-lifecycle").await?;
    let n = ns.name().to_string();
    let image = "registry.test/bentos:yatai.iris_classifier.v1";
    let mut s = spec(&n, "dep-1", "iris", Some(image));
    target.apply(s.clone()).await?;

    // The Bento names the image the server built; the BentoDeployment carries the spec and
    // the marks that map it back to the yatai deployment.
    let bento = ns.api::<Bento>().get("iris-classifier--v1").await?;
    assert_eq!((bento.spec.tag.as_str(), bento.spec.image.as_str()), ("iris_classifier:v1", image));
    assert_eq!(bento.labels()["app.kubernetes.io/managed-by"], "yatai");
    let bds: Api<BentoDeployment> = ns.api();
    let bd = bds.get("iris").await?;
    assert_eq!(bd.labels()["yatai.ai/deployment-uid"], "dep-1");
    assert_eq!(bd.annotations()["yatai.ai/revision-uid"], "rev-1");
    assert_eq!(bd.spec.bento, "iris-classifier--v1");
    let a = bd.spec.autoscaling.clone().unwrap();
    assert_eq!((a.min_replicas, a.max_replicas), (2, 3));
    assert_eq!(bd.spec.envs[0].name, "GREETING");
    assert!(bd.spec.ingress.enabled);
    assert_eq!(bd.spec.resources.as_ref().unwrap().limits.as_ref().unwrap().memory, "2Gi");
    assert!(
        bd.metadata.managed_fields.iter().flatten().any(|m| m.manager.as_deref() == Some("yatai")),
        "applied by field manager yatai"
    );

    // The operator makes kwok pods Ready: the sink hears `running`, and so does status().
    sink.reported("dep-1", Phase::Running).await?;
    let snap = poll_until(WAIT, "status() running with two ready replicas", || async {
        let snap = target.status("dep-1").unwrap();
        let ready = snap.replicas.iter().filter(|r| r.state == "ready").count();
        Ok::<_, std::convert::Infallible>((snap.phase == Phase::Running && ready >= 2).then_some(snap))
    })
    .await?;
    assert_eq!(snap.revision_uid.as_deref(), Some("rev-1"));
    assert_eq!(target.url("dep-1"), Some(format!("http://iris-{n}.{SUFFIX}")), "the Ingress host");
    assert!(snap.desired_replicas >= 2);
    // The log has yatai's own lines about the deployment (kwok pods print nothing).
    let logs = target.logs("dep-1").context("a log source")?;
    let tail = logs.tail(100);
    ensure!(tail.iter().any(|l| l.contains(" yatai status | running")), "{tail:?}");
    // Metrics come from the pods' own /metrics, which kwok pods do not serve: known, empty.
    assert!(target.metrics("dep-1").is_some_and(|m| m.samples.is_empty()));

    // Fields set by hand on the CR survive the next apply; yatai's own fields change.
    let by_hand = json!({
        "metadata": {"annotations": {"team.example/owner": "ml-platform"}},
        "spec": {"extraPodMetadata": {"annotations": {"sidecar.example/inject": "true"}}}
    });
    bds.patch(
        "iris",
        &PatchParams { field_manager: Some("kubectl-edit".into()), ..Default::default() },
        &Patch::Merge(&by_hand),
    )
    .await?;
    s.revision_uid = "rev-2".into();
    s.envs = vec![("GREETING".into(), "bonjour".into())];
    target.apply(s.clone()).await?;
    let bd = bds.get("iris").await?;
    assert_eq!(bd.annotations()["team.example/owner"], "ml-platform");
    assert_eq!(bd.annotations()["yatai.ai/revision-uid"], "rev-2");
    assert_eq!(
        bd.spec.extra_pod_metadata.as_ref().map(|m| m.annotations.clone()),
        Some(BTreeMap::from([("sidecar.example/inject".to_string(), "true".to_string())]))
    );
    assert_eq!(bd.spec.envs[0].value.as_deref(), Some("bonjour"));
    sink.reported("dep-1", Phase::Running).await?;

    // Terminate: the CR stays, scaled to zero; the pods go; `terminated`.
    target.terminate("dep-1").await;
    let (pods, selector) = pods_of(&ns, "iris");
    poll_until(WAIT, "no pods of iris", || async {
        Ok::<_, kube::Error>(pods.list(&selector).await?.items.is_empty().then_some(()))
    })
    .await?;
    sink.reported("dep-1", Phase::Terminated).await?;
    let bd = bds.get("iris").await?;
    let a = bd.spec.autoscaling.unwrap();
    assert_eq!((a.min_replicas, a.max_replicas), (0, 0));
    assert_eq!(target.status("dep-1").unwrap().phase, Phase::Terminated);

    // Restore: applying again brings the pods back.
    target.apply(s.clone()).await?;
    poll_until(WAIT, "iris running again after terminate", || async {
        let snap = target.status("dep-1").unwrap();
        let ready = snap.replicas.iter().filter(|r| r.state == "ready").count();
        Ok::<_, std::convert::Infallible>((snap.phase == Phase::Running && ready >= 2).then_some(()))
    })
    .await?;

    // Remove: the CRs are gone, and the target no longer knows the deployment.
    target.remove("dep-1").await;
    poll_until(WAIT, "the BentoDeployment and Bento deleted", || async {
        let bd = bds.get_opt("iris").await?;
        let bento = ns.api::<Bento>().get_opt("iris-classifier--v1").await?;
        Ok::<_, kube::Error>((bd.is_none() && bento.is_none()).then_some(()))
    })
    .await?;
    poll_until(WAIT, "status() forgets iris", || async {
        Ok::<_, std::convert::Infallible>(target.status("dep-1").is_none().then_some(()))
    })
    .await?;
    assert!(target.metrics("dep-1").is_none() && target.logs("dep-1").is_none());
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_image_the_operator_is_asked_to_build_and_its_failure_is_reported() -> anyhow::Result<()> {
    let Setup { ns, ctx, sink, target, .. } = setup("kt-build").await?;
    let n = ns.name().to_string();
    target.apply(spec(&n, "dep-2", "iris", None)).await?;

    let name = names::bento_request_name("iris_classifier:v1");
    let request = ns.api::<BentoRequest>().get(&name).await?;
    assert_eq!(request.spec.bento_tag, "iris_classifier:v1");
    assert!(ns.api::<Bento>().get_opt(&name).await?.is_none(), "no Bento: the operator makes it");
    let reason = sink.reported("dep-2", Phase::ImageBuilding).await?;
    ensure!(reason.contains("iris_classifier:v1"), "{reason}");
    assert_eq!(target.status("dep-2").unwrap().phase, Phase::ImageBuilding);

    // The BentoRequest controller cannot build here (no registry): the deployment fails
    // with the build's own words.
    tokio::spawn(yatai_operator::bento_request::run(ctx.clone()));
    let reason = sink.reported("dep-2", Phase::Failed).await?;
    ensure!(reason.starts_with("the image build failed: "), "{reason}");
    let conditions = ns.api::<BentoRequest>().get(&name).await?.status.unwrap_or_default().conditions;
    ensure!(conditions.iter().any(|c| reason.contains(&c.message)), "{reason} / {conditions:?}");
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bento_deployment_made_outside_yatai_is_never_overwritten() -> anyhow::Result<()> {
    let Setup { ns, target, sink, .. } = setup("kt-clash").await?;
    let n = ns.name().to_string();
    let bds: Api<BentoDeployment> = ns.api();
    let mine = BentoDeployment::new("iris", BentoDeploymentSpec { bento: "hand-made".into(), ..Default::default() });
    bds.create(&PostParams::default(), &mine).await?;

    let err = target.apply(spec(&n, "dep-3", "iris", Some("r/i:1"))).await.unwrap_err();
    let TargetError::Conflict(message) = err else { anyhow::bail!("expected a name conflict, got {err:?}") };
    ensure!(message.contains("made outside yatai") && message.contains("choose another name"), "{message}");
    assert_eq!(bds.get("iris").await?.spec.bento, "hand-made");
    assert!(target.status("dep-3").is_none());
    // It is seen, as made outside yatai.
    let seen = target.observed();
    let theirs = seen.iter().find(|d| d.namespace == n && d.name == "iris").context("the hand-made one is observed")?;
    assert_eq!(theirs.deployment_uid, None);
    assert!(sink.last("dep-3").is_none());

    // A namespace that does not exist is a refusal that says so.
    let err = target.apply(spec("no-such-namespace-kt", "dep-4", "iris", Some("r/i:1"))).await.unwrap_err();
    ensure!(err.to_string().contains("namespace no-such-namespace-kt does not exist"), "{err}");
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_reports_a_good_cluster_without_problems() -> anyhow::Result<()> {
    let Setup { ns, config, .. } = setup("kt-probe").await?;
    // An operator holds its Lease (here, in the test's namespace).
    let timing = yatai_operator::leader::Timing {
        lease_duration: Duration::from_secs(15),
        renew_interval: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_millis(200),
    };
    let _lease = yatai_operator::leader::acquire_with(ns.client(), ns.name(), "probe-test", timing).await?;

    let health = KubeConnector.probe(&config).await;
    assert!(health.reachable, "{health:?}");
    assert!(health.version.as_deref().is_some_and(|v| v.starts_with("v1.")), "{health:?}");
    assert!(health.crds_installed, "{health:?}");
    assert!(health.operator_running, "{health:?}");
    assert_eq!(health.domain_suffix.as_deref(), Some(SUFFIX));
    assert!(health.problems.is_empty(), "{:?}", health.problems);

    // A namespace that does not exist is named, with what to do.
    let missing = KubeClusterConfig { namespace: "no-such-namespace-kt".into(), ..config.clone() };
    let health = KubeConnector.probe(&missing).await;
    ensure!(
        health.problems.iter().any(|p| p.contains("namespace no-such-namespace-kt does not exist")),
        "{:?}",
        health.problems
    );
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_reported_and_refused() -> anyhow::Result<()> {
    let kubeconfig = r#"
apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster:
    server: https://127.0.0.1:1
    insecure-skip-tls-verify: true
users:
- name: someone
  user:
    token: not-a-token
contexts:
- name: nowhere
  context: {cluster: nowhere, user: someone}
current-context: nowhere
"#;
    let config =
        KubeClusterConfig { kubeconfig: Some(kubeconfig.into()), namespace: "yatai".into(), ..Default::default() };
    let health = KubeConnector.probe(&config).await;
    assert!(!health.reachable);
    assert_eq!(health.problems.len(), 1, "{:?}", health.problems);
    ensure!(
        health.problems[0].contains("cannot reach the Kubernetes API server at https://127.0.0.1:1"),
        "{:?}",
        health.problems
    );

    let err = KubeConnector.connect("c", &config, Arc::new(Recorder::default())).await.err().context("refused")?;
    ensure!(matches!(err, TargetError::Unavailable(_)) && err.to_string().contains("127.0.0.1:1"), "{err}");

    let garbage = KubeClusterConfig { kubeconfig: Some("{not yaml: [".into()), ..config };
    let health = KubeConnector.probe(&garbage).await;
    ensure!(!health.reachable && health.problems[0].contains("kubeconfig"), "{:?}", health.problems);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_without_rbac_is_told_which_permissions_it_lacks() -> anyhow::Result<()> {
    let testbed = Testbed::shared().await?;
    let ns = testbed.namespace("kt-rbac").await?;
    yatai_operator::crds::install_missing(&ns.client(), &WebhookEndpoint::default()).await?;
    let accounts: Api<ServiceAccount> = ns.api();
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some("nobody".into()), ..Default::default() },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &sa).await?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(600), ..Default::default() }),
        ..Default::default()
    };
    let token = accounts.create_token_request("nobody", &PostParams::default(), &request).await?;
    let token = token.status.context("a token")?.token;

    let admin = kube::config::Kubeconfig::read_from(testbed.kubeconfig())?;
    let cluster = admin.clusters[0].cluster.clone().context("a cluster")?;
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {
            "server": cluster.server, "certificate-authority": cluster.certificate_authority,
            "certificate-authority-data": cluster.certificate_authority_data,
        }}],
        "users": [{"name": "nobody", "user": {"token": token}}],
        "contexts": [{"name": "nobody", "context": {"cluster": "testbed", "user": "nobody"}}],
        "current-context": "nobody",
    });
    let config = KubeClusterConfig {
        kubeconfig: Some(serde_json::to_string(&kubeconfig)?),
        namespace: ns.name().to_string(),
        domain_suffix: Some(SUFFIX.into()),
        ..Default::default()
    };
    let health = KubeConnector.probe(&config).await;
    assert!(health.reachable, "{health:?}");
    assert!(health.crds_installed, "discovery is open to every account: {health:?}");
    let rbac = health
        .problems
        .iter()
        .find(|p| p.starts_with(&format!("the credentials lack permissions in namespace {}", ns.name())))
        .with_context(|| format!("{:?}", health.problems))?;
    for needed in
        ["create bentodeployments.serving.yatai.ai", "get pods/log", "delete bentorequests.resources.yatai.ai"]
    {
        ensure!(rbac.contains(needed), "{needed} missing from {rbac}");
    }
    assert!(!health.operator_running);
    ns.delete().await
}
