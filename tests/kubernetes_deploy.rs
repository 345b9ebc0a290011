//! Deploying to Kubernetes as a user does it: `yatai serve` with a Kubernetes cluster registered
//! through the API, `yatai operator` running against the same control plane, and the real
//! bentoml CLI: `bentoml deployment create --cluster testbed` → BentoDeployment and Bento →
//! the operator's children → kwok pods Ready → `running` in `bentoml deployment get`, with the
//! Ingress host as the URL; terminate keeps the CR at zero replicas, restore brings the pods
//! back, delete removes the CR; a BentoDeployment yatai did not make is never overwritten.

mod support;

#[path = "../crates/image-builder/tests/common/mod.rs"]
mod build_common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use yatai_kube_testbed::Testbed;

const WAIT: Duration = Duration::from_secs(120);
const SUFFIX: &str = "10.0.0.7.sslip.io";

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn deployment(server: &Server, name: &str) -> Value {
    let r = server.http().get(&format!("/api/v2/deployments/{name}?cluster=testbed"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn wait_status(server: &Server, name: &str, status: &str) -> Value {
    let mut last = Value::Null;
    wait_for(&format!("deployment {name} {status}"), WAIT, || {
        last = deployment(server, name);
        (last["status"] == status).then(|| last.clone())
    })
}

#[test]
fn bentoml_deploys_to_a_kubernetes_cluster_through_the_operator() {
    // The client side of the test is synchronous (the bentoml CLI, the HTTP helper); the
    // Kubernetes client runs on this runtime.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // A control plane with kwok nodes, yatai's CRDs, and the namespace the v2 API deploys to.
    let testbed = rt.block_on(Testbed::shared()).unwrap();
    let admin = rt.block_on(testbed.client()).unwrap();
    rt.block_on(yatai_operator::crds::install_missing(&admin, &Default::default())).unwrap();
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(admin.clone());
    let ns = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta { name: Some("yatai".into()), ..Default::default() },
        ..Default::default()
    };
    rt.block_on(namespaces.create(&Default::default(), &ns)).unwrap();

    // The server builds images into a real registry (the "cached image" a deployment runs).
    let fixtures = build_common::fixtures();
    let registry = build_common::TestRegistry::start(None);
    let base = registry.push_base();
    let target = format!("{}/bentos", registry.host());
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&[
        "--image-registry",
        &target,
        "--image-plain-http",
        "--image-base",
        &base,
        "--image-build-cache",
        &build_common::shared_cache().display().to_string(),
        "--uv",
        &fixtures.uv.display().to_string(),
    ]));

    // The operator, as a platform engineer starts it.
    let webhook = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _operator = Operator(
        Command::new(yatai_bin())
            .arg("operator")
            .arg("--kubeconfig")
            .arg(testbed.kubeconfig())
            .args(["--namespaces", "yatai", "--operator-namespace", "yatai", "--domain-suffix", SUFFIX])
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook}")])
            .args(["--webhook-url", &format!("https://127.0.0.1:{webhook}")])
            .args(["--metrics-listen", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    // Register the cluster: a kubeconfig the server keeps sealed.
    let kubeconfig = std::fs::read_to_string(testbed.kubeconfig()).unwrap();
    let r = server.http().post(
        "/api/v1/clusters",
        &json!({
            "name": "testbed",
            "description": "the test control plane",
            "kube_config": kubeconfig,
            "config": {"default_deployment_kube_namespace": "yatai", "domain_suffix": SUFFIX, "operator_namespace": "yatai"},
        }),
    );
    assert!(r.status == 200 || r.status == 201, "registering the cluster: {} {}", r.status, r.text());
    let listed = server.http().get("/api/v1/clusters").text();
    assert!(listed.contains("testbed"), "{listed}");
    assert!(!listed.contains("client-key-data") && !listed.contains("BEGIN"), "a kubeconfig came back: {listed}");

    // Push, build the image once, deploy with the CLI.
    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    client.ok(&["push", &iris.bento]);
    let (repo, version) = iris.bento.split_once(':').unwrap();
    let build = server
        .http()
        .post(&format!("/api/v1/bento_repositories/{repo}/bentos/{version}/image_builds"), &json!({"force": false}));
    assert_eq!(build.status, 200, "{}", build.text());
    let uid = build.json()["uid"].as_str().unwrap().to_string();
    wait_for("the image build", Duration::from_secs(600), || {
        let b = server.http().get(&format!("/api/v1/image_builds/{uid}")).json();
        (b["status"] == "success").then_some(()).or_else(|| {
            assert_ne!(b["status"], "failed", "{b:#}");
            None
        })
    });

    let started = Instant::now();
    let out = client.ok(&[
        "deployment",
        "create",
        &iris.bento,
        "--name",
        "iris",
        "--cluster",
        "testbed",
        "--scaling-min",
        "1",
        "--scaling-max",
        "2",
        "--env",
        "LOG=1",
    ]);
    eprintln!("bentoml deployment create --cluster testbed → ready: {:.1}s", started.elapsed().as_secs_f64());
    assert!(out.contains("is ready"), "{out}");
    let d = wait_status(&server, "iris", "running");
    let urls: Vec<&str> = d["urls"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(urls, [format!("http://iris-yatai.{SUFFIX}")], "{d:#}");

    // What the operator made of it.
    let bds: kube::Api<yatai_kube_api::serving::v2alpha1::BentoDeployment> =
        kube::Api::namespaced(admin.clone(), "yatai");
    let bd = rt.block_on(bds.get("iris")).unwrap();
    assert_eq!(bd.spec.envs.iter().find(|e| e.name == "LOG").and_then(|e| e.value.clone()).as_deref(), Some("1"));
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(admin.clone(), "yatai");
    let image =
        rt.block_on(deployments.get("iris")).unwrap().spec.template.spec.unwrap().containers[0].image.clone().unwrap();
    assert!(image.starts_with(&format!("{target}:yatai.")), "the pods run the image yatai built: {image}");

    let out = client.ok(&["deployment", "get", "iris", "--cluster", "testbed", "-o", "json"]);
    let got: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    assert_eq!(got["status"]["status"], "running", "{got:#}");
    let out = client.ok(&["deployment", "list", "--cluster", "testbed"]);
    assert!(out.contains("iris"), "{out}");

    // Terminate: the CR stays, no pods; restore: back to running; delete: the CR goes.
    client.ok(&["deployment", "terminate", "iris", "--cluster", "testbed", "--wait"]);
    wait_status(&server, "iris", "terminated");
    assert!(rt.block_on(bds.get_opt("iris")).unwrap().is_some(), "terminate keeps the BentoDeployment");
    client.ok(&["deployment", "update", "iris", "--cluster", "testbed", "--scaling-min", "1"]);
    wait_status(&server, "iris", "running");
    client.ok(&["deployment", "delete", "iris", "--cluster", "testbed"]);
    wait_for("the BentoDeployment deleted", WAIT, || rt.block_on(bds.get_opt("iris")).unwrap().is_none().then_some(()));

    // A BentoDeployment made by hand is never overwritten by a yatai deployment of its name.
    let hand = json!({
        "apiVersion": "serving.yatai.ai/v2alpha1", "kind": "BentoDeployment",
        "metadata": {"name": "handmade", "namespace": "yatai"},
        "spec": {"bento": "someone-elses--v1"},
    });
    let dynamic: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        admin.clone(),
        "yatai",
        &kube::api::ApiResource::erase::<yatai_kube_api::serving::v2alpha1::BentoDeployment>(&()),
    );
    rt.block_on(dynamic.create(&Default::default(), &serde_json::from_value(hand).unwrap())).unwrap();
    let refused = client.fails(&["deployment", "create", &iris.bento, "--name", "handmade", "--cluster", "testbed"]);
    assert!(refused.contains("handmade") || refused.contains("not made by yatai"), "{refused}");
    let kept = rt.block_on(bds.get("handmade")).unwrap();
    assert_eq!(kept.spec.bento, "someone-elses--v1", "yatai overwrote a BentoDeployment it did not make");
}
