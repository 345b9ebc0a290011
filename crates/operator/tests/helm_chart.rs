//! The Helm chart (`deploy/helm/yatai`) against real Helm and the real control plane: it lints,
//! the plain manifests (`deploy/manifests/yatai.yaml`) are its rendering, and its RBAC is enough
//! for the operator and no more — the chart's objects are applied to the testbed and the
//! operator, run with nothing but the chart's ServiceAccount token, takes the Lease, serves the
//! conversion webhook and brings a BentoDeployment to Available.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use yatai_kube_api::condition;
use yatai_kube_api::resources::BentoSpec;
use yatai_kube_api::serving::v2alpha1::{Autoscaling, BentoDeployment, BentoDeploymentSpec};
use yatai_kube_api::{Bento, names};
use yatai_kube_testbed::{Testbed, poll_until};

const WAIT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `helm ARGS…` (the testbed script builds it once into the machine cache); stdout.
fn helm(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(repo().join("scripts/k8s-testbed"))
        .arg("helm")
        .args(args)
        .current_dir(repo())
        .output()
        .context("running scripts/k8s-testbed helm")?;
    anyhow::ensure!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn the_chart_lints_and_the_plain_manifests_are_its_rendering() -> anyhow::Result<()> {
    // The chart's CRDs are `yatai crds`.
    let crds = yatai_kube_api::crds::to_yaml(&yatai_kube_api::crds::all(&Default::default()));
    let crds_path = repo().join("deploy/helm/yatai/crds/yatai-crds.yaml");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&crds_path, &crds)?;
    }
    assert!(
        std::fs::read_to_string(&crds_path)? == crds,
        "{} is not `yatai crds`: run with UPDATE_SNAPSHOTS=1",
        crds_path.display()
    );

    let lint = helm(&["lint", "--strict", "deploy/helm/yatai"])?;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    // Listed namespaces: Roles there instead of cluster-wide rights.
    let scoped =
        helm(&["template", "t", "deploy/helm/yatai", "--namespace", "ops", "--set", "operator.namespaces=a\\,b"])?;
    assert!(
        !scoped.contains("kind: ClusterRole\nmetadata:\n  name: t-yatai-operator\n"),
        "no cluster-wide operator role when namespaces are listed"
    );
    assert_eq!(
        scoped.matches("\nkind: Role\n").count(),
        2 + 2 + 2,
        "operator and server Roles in a and b, and the two of ops"
    );

    let rendered = helm(&[
        "template",
        "yatai",
        "deploy/helm/yatai",
        "--namespace",
        "yatai-system",
        "--include-crds",
        "--set",
        "createApiTokenSecret=false",
    ])?;
    let rendered = format!(
        "# yatai's plain manifests: `helm template yatai deploy/helm/yatai --namespace yatai-system --include-crds\n\
         # --set createApiTokenSecret=false`, kept in step by crates/operator/tests/helm_chart.rs\n\
         # (UPDATE_SNAPSHOTS=1 rewrites it). Before applying, create the namespace and the API tokens:\n\
         #   kubectl create namespace yatai-system\n\
         #   kubectl -n yatai-system create secret generic yatai-api-token --from-literal=token=$(openssl rand -hex 24) \\\n\
         #     --from-literal=operator-token=$(openssl rand -hex 24)\n\
         #   kubectl apply --server-side -n yatai-system -f deploy/manifests/yatai.yaml\n{rendered}"
    );
    let path = repo().join("deploy/manifests/yatai.yaml");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &rendered)?;
    }
    let kept = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    assert!(kept == rendered, "{} is not the chart's rendering: run with UPDATE_SNAPSHOTS=1", path.display());
    assert!(!rendered.contains("kind: Secret\n"), "the plain manifests must not ship a token");
    Ok(())
}

/// The API resource of each kind the chart renders.
fn resource(kind: &str) -> anyhow::Result<(ApiResource, bool)> {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, networking::v1 as net, rbac::v1 as rbac};
    Ok(match kind {
        "ServiceAccount" => (ApiResource::erase::<core::ServiceAccount>(&()), true),
        "Secret" => (ApiResource::erase::<core::Secret>(&()), true),
        "ConfigMap" => (ApiResource::erase::<core::ConfigMap>(&()), true),
        "Service" => (ApiResource::erase::<core::Service>(&()), true),
        "PersistentVolumeClaim" => (ApiResource::erase::<core::PersistentVolumeClaim>(&()), true),
        "Deployment" => (ApiResource::erase::<apps::Deployment>(&()), true),
        "Ingress" => (ApiResource::erase::<net::Ingress>(&()), true),
        "Role" => (ApiResource::erase::<rbac::Role>(&()), true),
        "RoleBinding" => (ApiResource::erase::<rbac::RoleBinding>(&()), true),
        "ClusterRole" => (ApiResource::erase::<rbac::ClusterRole>(&()), false),
        "ClusterRoleBinding" => (ApiResource::erase::<rbac::ClusterRoleBinding>(&()), false),
        other => anyhow::bail!("the chart renders a {other}, unknown to this test"),
    })
}

/// Whether `client` may `verb` the `resource` (`group/resource`, or `resource` of the core group)
/// in `ns`.
async fn can_i(client: &kube::Client, verb: &str, resource: &str, ns: &str) -> anyhow::Result<bool> {
    let (group, resource) = resource.split_once('/').unwrap_or(("", resource));
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// A token of the ServiceAccount `name`, as its pods get one.
async fn sa_token(ns: &yatai_kube_testbed::TestNamespace, name: &str) -> anyhow::Result<String> {
    let sas: Api<ServiceAccount> = ns.api();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    let answer = sas.create_token_request(name, &PostParams::default(), &request).await?;
    answer.status.and_then(|s| s.token).context("a TokenRequest without a token")
}

/// A kubeconfig for the testbed that authenticates with `token` only.
fn kubeconfig_with_token(testbed: &Testbed, token: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(testbed.kubeconfig())?)?;
    let users = config["users"].as_sequence_mut().context("a kubeconfig without users")?;
    for user in users {
        user["user"] = serde_yaml_ng::to_value(serde_json::json!({ "token": token }))?;
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml_ng::to_string(&config)?)?;
    Ok(path)
}

#[tokio::test]
async fn the_operator_runs_with_the_chart_s_rbac_and_no_more() -> anyhow::Result<()> {
    let testbed = Testbed::shared().await?;
    let release_ns = testbed.namespace("helm-ops").await?;
    let workloads = testbed.namespace("helm-apps").await?;
    let admin = release_ns.client();
    yatai_operator::crds::install_missing(&admin, &Default::default()).await?;
    let release = release_ns.name().to_string(); // unique, so that cluster-scoped names are too

    let rendered = helm(&[
        "template",
        &release,
        "deploy/helm/yatai",
        "--namespace",
        release_ns.name(),
        "--set",
        &format!("operator.namespaces={}", workloads.name()),
    ])?;
    let apply = PatchParams::apply("helm-chart-test").force();
    for doc in serde_yaml_ng::Deserializer::from_str(&rendered) {
        let value = serde_json::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value.clone())?;
        let kind = object.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
        let (ar, namespaced) = resource(&kind)?;
        let api: Api<DynamicObject> = if namespaced {
            let ns = object.namespace().unwrap_or_else(|| release_ns.name().to_string());
            Api::namespaced_with(admin.clone(), &ns, &ar)
        } else {
            Api::all_with(admin.clone(), &ar)
        };
        api.patch(&object.name_any(), &apply, &Patch::Apply(&value))
            .await
            .with_context(|| format!("applying {kind} {}", object.name_any()))?;
    }

    // The operator's ServiceAccount token, as the pod would have it.
    let dir = tempfile::tempdir()?;
    let kubeconfig = kubeconfig_with_token(
        testbed,
        &sa_token(&release_ns, &format!("{release}-yatai-operator")).await?,
        dir.path(),
    )?;
    let as_operator = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?,
    )?;

    // Least privilege: Secrets one by one in the namespaces it builds in (those a BentoRequest's
    // build environment names), never listed, and nothing outside its namespaces.
    assert!(can_i(&as_operator, "get", "secrets", workloads.name()).await?, "a build's secretKeyRef is read");
    assert!(!can_i(&as_operator, "list", "secrets", workloads.name()).await?, "the operator may list Secrets");
    assert!(!can_i(&as_operator, "watch", "secrets", workloads.name()).await?, "the operator may watch Secrets");
    assert!(!can_i(&as_operator, "list", "secrets", release_ns.name()).await?, "the operator may list Secrets");
    assert!(
        !can_i(&as_operator, "get", "secrets", "default").await?,
        "the operator reads Secrets beyond its namespaces"
    );
    assert!(
        !can_i(&as_operator, "create", "apps/deployments", "default").await?,
        "the operator reaches beyond its namespaces"
    );
    assert!(can_i(&as_operator, "patch", "apps/deployments", workloads.name()).await?);

    // The operator with that token only, as the chart runs it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: yatai_operator::OperatorArgs,
    }
    let Cli { args } = Cli::try_parse_from([
        "operator",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--namespaces",
        workloads.name(),
        "--operator-namespace",
        release_ns.name(),
        "--domain-suffix",
        "10.0.0.7.sslip.io",
        "--webhook-listen",
        &format!("127.0.0.1:{port}"),
        "--webhook-url",
        &format!("https://127.0.0.1:{port}"),
        "--metrics-listen",
        "off",
    ])?;
    let operator = tokio::spawn(yatai_operator::run(args));

    let tag = "iris:helm1";
    let bentos: Api<Bento> = workloads.api();
    let spec = BentoSpec { tag: tag.into(), image: "r.test/iris:1".into(), ..Default::default() };
    bentos.create(&PostParams::default(), &Bento::new(&names::bento_request_name(tag), spec)).await?;
    let bds: Api<BentoDeployment> = workloads.api();
    let bd = BentoDeployment::new(
        "iris",
        BentoDeploymentSpec {
            bento: names::bento_request_name(tag),
            autoscaling: Some(Autoscaling { min_replicas: 1, max_replicas: 2, ..Default::default() }),
            ..Default::default()
        },
    );
    bds.create(&PostParams::default(), &bd).await?;
    poll_until(WAIT, "the BentoDeployment Available under the chart's RBAC", || async {
        anyhow::ensure!(!operator.is_finished(), "the operator stopped");
        let bd = bds.get("iris").await?;
        let ok = bd.status.as_ref().is_some_and(|s| condition::is_true(&s.conditions, "Available"));
        Ok::<_, anyhow::Error>(ok.then_some(()))
    })
    .await?;
    // The server's ServiceAccount is enough for yatai's Kubernetes target: the probe a user
    // meets when registering the cluster finds nothing missing.
    let server_dir = tempfile::tempdir()?;
    let server_kubeconfig = kubeconfig_with_token(
        testbed,
        &sa_token(&release_ns, &format!("{release}-yatai-server")).await?,
        server_dir.path(),
    )?;
    let cluster = yatai_core::deploy::KubeClusterConfig {
        kubeconfig: Some(std::fs::read_to_string(&server_kubeconfig)?),
        namespace: workloads.name().to_string(),
        operator_namespace: Some(release_ns.name().to_string()),
        domain_suffix: Some("10.0.0.7.sslip.io".into()),
        ..Default::default()
    };
    use yatai_core::deploy::ClusterConnector as _;
    let health = yatai_kube_target::KubeConnector.probe(&cluster).await;
    assert!(health.problems.is_empty() && health.crds_installed && health.operator_running, "{health:?}");

    let leases: Api<Lease> = release_ns.api();
    assert!(leases.get_opt("yatai-operator").await?.is_some(), "no Lease taken");
    let secrets: Api<Secret> = release_ns.api();
    assert!(secrets.get_opt("yatai-operator-webhook-cert").await?.is_some(), "no webhook certificate kept");
    operator.abort();
    Ok(())
}

use serde::Deserialize as _;
