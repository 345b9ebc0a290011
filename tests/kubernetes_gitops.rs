//! GitOps: a BentoDeployment applied with kubectl (here: the Kubernetes API, as kubectl and
//! GitOps tools do) in the namespace of a registered cluster shows up in `bentoml deployment
//! list/get --cluster testbed` and the v2 API as a deployment of that cluster, managed outside
//! yatai, with its status followed to `running`; yatai refuses to terminate, delete or take
//! its name, and leaves the CR as it is; another organization never sees it; deleting it with
//! kubectl removes it from yatai.

mod support;

#[path = "support/kube.rs"]
mod kube_support;

use std::time::Duration;

use k8s_openapi::api::core::v1::EnvVar;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use support::*;
use yatai_kube_api::Bento;
use yatai_kube_api::resources::BentoSpec;
use yatai_kube_api::serving::v2alpha1::{Autoscaling, BentoDeployment, BentoDeploymentSpec};
use yatai_kube_testbed::Testbed;

const WAIT: Duration = Duration::from_secs(120);
const NAME: &str = "gitops-iris";

fn get(http: &Http, name: &str) -> Response {
    http.get(&format!("/api/v2/deployments/{name}?cluster=testbed"))
}

#[test]
fn a_kubectl_applied_bento_deployment_shows_up_managed_outside_yatai() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let testbed = rt.block_on(Testbed::shared()).unwrap();
    let admin = rt.block_on(kube_support::prepare(testbed, "yatai"));
    let server = Server::start(Backend::SqliteLocal);
    let _operator = kube_support::start_operator(testbed, "yatai");
    kube_support::add_cluster(&server, testbed, "yatai");

    // What a GitOps repository holds: a Bento naming an image, and a BentoDeployment of it.
    let bentos: Api<Bento> = Api::namespaced(admin.clone(), "yatai");
    let mut bento = Bento::new(
        "iris-classifier--v1",
        BentoSpec {
            tag: "iris_classifier:v1".into(),
            image: "registry.example.com/bentos:iris_classifier.v1".into(),
            ..Default::default()
        },
    );
    bento.metadata.namespace = Some("yatai".into());
    rt.block_on(bentos.create(&PostParams::default(), &bento)).unwrap();
    let bds: Api<BentoDeployment> = Api::namespaced(admin.clone(), "yatai");
    let bd = BentoDeployment::new(
        NAME,
        BentoDeploymentSpec {
            bento: "iris-classifier--v1".into(),
            autoscaling: Some(Autoscaling { min_replicas: 1, max_replicas: 2, ..Default::default() }),
            envs: vec![EnvVar { name: "MODE".into(), value: Some("gitops".into()), value_from: None }],
            ..Default::default()
        },
    );
    rt.block_on(bds.create(&PostParams::default(), &bd)).unwrap();
    let applied = rt.block_on(bds.get(NAME)).unwrap();

    // It shows up in the API as the cluster's, managed outside yatai, and its status is
    // followed until its (kwok) pods are ready.
    let d: Value = wait_for("the BentoDeployment listed as running", WAIT, || {
        let r = get(&server.http(), NAME);
        (r.status == 200 && r.json()["status"] == "running").then(|| r.json())
    });
    assert_eq!(d["managed_by"], "external", "{d:#}");
    assert_eq!(d["external_bento"], "iris_classifier:v1", "{d:#}");
    assert_eq!(d["cluster"]["name"], "testbed", "{d:#}");
    assert_eq!(d["kube_namespace"], "yatai", "{d:#}");
    assert!(d["creator"]["name"].as_str().unwrap().contains("outside yatai"), "{d:#}");
    let target = &d["latest_revision"]["targets"][0];
    assert_eq!(target["bento"], Value::Null, "the bento is not in the registry: {d:#}");
    assert_eq!(target["config"]["envs"], json!([{"name": "MODE", "value": "gitops"}]), "{d:#}");
    assert_eq!(target["config"]["services"]["apiserver"]["scaling"], json!({"min_replicas": 1, "max_replicas": 2}));

    // The real client decodes it: list and get.
    let client = server.client();
    let listed = client.ok(&["deployment", "list", "--cluster", "testbed"]);
    assert!(listed.contains(NAME), "{listed}");
    let out = client.ok(&["deployment", "get", NAME, "--cluster", "testbed", "-o", "json"]);
    let got: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    assert_eq!(got["status"]["status"], "running", "{got:#}");
    assert_eq!(got["cluster"], "testbed", "{got:#}");

    // Every change through yatai is refused, saying where to make it; the CR stays as applied.
    for args in [
        ["deployment", "terminate", NAME, "--cluster", "testbed"],
        ["deployment", "delete", NAME, "--cluster", "testbed"],
    ] {
        let refused = client.fails(&args);
        assert!(refused.contains("managed outside yatai") && refused.contains("GitOps"), "{args:?}: {refused}");
    }
    let r = server.http().post(&format!("/api/v2/deployments/{NAME}/terminate?cluster=testbed"), &json!({}));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("kubectl"), "{}", r.text());
    let r = server.http().delete(&format!("/api/v1/clusters/testbed/namespaces/yatai/deployments/{NAME}"));
    assert_eq!(r.status, 409, "{}", r.text());
    let r = server.http().post(
        "/api/v2/deployments?cluster=testbed",
        &json!({"name": NAME, "bento": "iris_classifier:v1", "services": {}}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("managed outside yatai") && r.text().contains("choose another name"), "{}", r.text());
    let now = rt.block_on(bds.get(NAME)).unwrap();
    assert_eq!(now.spec, applied.spec, "yatai changed a BentoDeployment it does not own");
    assert_eq!(now.metadata.labels, applied.metadata.labels);
    assert_eq!(get(&server.http(), NAME).json()["status"], "running");

    // Another organization never sees it.
    server.admin(&["org", "create", "other"]);
    server.admin(&["user", "create", "eve", "--email", "eve@example.com", "--org", "other", "--role", "admin"]);
    let eve = server.admin(&["token", "create", "--name", "eve", "--user", "eve", "--org", "other"]).trim().to_owned();
    let theirs = server.http().with_token(&eve);
    assert!(!theirs.get("/api/v2/deployments?all=true").text().contains(NAME));
    assert_eq!(theirs.get(&format!("/api/v2/deployments/{NAME}")).status, 404);

    // Deleted with kubectl: gone from yatai too.
    rt.block_on(bds.delete(NAME, &DeleteParams::default())).unwrap();
    wait_for("the deployment gone", WAIT, || (get(&server.http(), NAME).status == 404).then_some(()));
    let listed = client.run(&["deployment", "list", "--cluster", "testbed"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(NAME));
    assert!(
        rt.block_on(bentos.get_opt("iris-classifier--v1")).unwrap().is_some(),
        "yatai never deletes what it did not make"
    );
}
