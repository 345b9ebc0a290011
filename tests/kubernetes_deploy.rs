//! Deploying to Kubernetes as a user does it: `yatai serve` with a Kubernetes cluster registered
//! through the API, `yatai operator` running against the same control plane, and the real
//! bentoml CLI: `bentoml deployment create --cluster testbed` → BentoDeployment and Bento →
//! the operator's children → kwok pods Ready → `running` in `bentoml deployment get`, with the
//! Ingress host as the URL; terminate keeps the CR at zero replicas, restore brings the pods
//! back, delete removes the CR; a BentoDeployment yatai did not make is never overwritten.

mod support;

#[path = "support/kube.rs"]
mod kube_support;

#[path = "../crates/image-builder/tests/common/mod.rs"]
mod build_common;

use std::time::{Duration, Instant};

use kube_support::{SUFFIX, start_operator, wait_for_operator};
use serde_json::{Value, json};
use support::*;
use yatai_kube_testbed::Testbed;

const WAIT: Duration = Duration::from_secs(120);

fn deployment(server: &Server, name: &str) -> Value {
    let r = server.http().get(&format!("/api/v2/deployments/{name}?cluster=testbed"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Pushes `bento` with the CLI and has the server build its image, waiting for the build.
fn push_and_build_image(server: &Server, client: &Bentoml, bento: &str) {
    client.ok(&["push", bento]);
    let (repo, version) = bento.split_once(':').unwrap();
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
    let admin = rt.block_on(kube_support::prepare(testbed, "yatai"));

    // The server builds images into a real registry (the "cached image" a deployment runs).
    let fixtures = build_common::fixtures();
    let registry = build_common::TestRegistry::start(None);
    let base = registry.push_base();
    let target = format!("{}/bentos", registry.host());
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).building_images(
        &registry.host(),
        &base,
        &build_common::shared_cache(),
        &fixtures.uv,
    ));

    let _operator = start_operator(testbed, "yatai");
    wait_for_operator(&rt, &admin, "yatai");

    // Register the cluster as the README does: `yatai cluster add` beside the running server
    // (the server connects it when it is first used).
    kube_support::add_cluster(&server, testbed, "yatai");
    let listed = server.http().get("/api/v1/clusters").text();
    assert!(listed.contains("testbed"), "{listed}");

    // Push, build the image once, deploy with the CLI.
    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    push_and_build_image(&server, &client, &iris.bento);

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

/// Registering a cluster, attacked: bad credentials are refused at once with what to do and
/// nothing is stored; the kubeconfig never comes back from the API and is not in the database
/// file in clear; a member who is not an admin, and another organization, can do nothing to it.
#[test]
fn cluster_registration_refuses_bad_input_and_keeps_the_kubeconfig_sealed() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let testbed = rt.block_on(Testbed::shared()).unwrap();
    let admin = rt.block_on(testbed.client()).unwrap();
    rt.block_on(yatai_operator::crds::install_missing(&admin, &Default::default())).unwrap();
    let server = Server::start(Backend::SqliteLocal);
    // A mark only the kubeconfig carries (the testbed's refers to its key by path).
    let secret = format!("sealed-marker-{}", unique("kc"));
    let kubeconfig = format!("# {secret}\n{}", std::fs::read_to_string(testbed.kubeconfig()).unwrap());
    let register = |http: &Http, name: &str, kubeconfig: &str| {
        http.post(
            "/api/v1/clusters",
            &json!({"name": name, "kube_config": kubeconfig, "config": {"namespace": "default", "domain_suffix": SUFFIX}}),
        )
    };

    // Unreachable: refused, saying so, and not stored.
    let unreachable = kubeconfig.replace(
        &kubeconfig[kubeconfig.find("server: ").unwrap()..].lines().next().unwrap().to_string(),
        "server: https://127.0.0.1:1",
    );
    let r = register(&server.http(), "dead", &unreachable);
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());
    assert!(r.text().contains("reach") || r.text().contains("connect"), "{}", r.text());
    assert!(!server.http().get("/api/v1/clusters").text().contains("\"dead\""));
    // Not a kubeconfig at all.
    let r = register(&server.http(), "garbage", "{not yaml: [");
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());

    // Reachable, but no operator runs there: refused, saying what to install.
    let r = register(&server.http(), "good", &kubeconfig);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("no yatai operator runs"), "{}", r.text());

    // With the operator: the kubeconfig's secret never comes back, and is not in the database.
    let _operator = start_operator(testbed, "default");
    let r = wait_for("the cluster registered once the operator leads", WAIT, || {
        let r = register(&server.http(), "good", &kubeconfig);
        (r.status != 400 || !r.text().contains("operator")).then_some(r)
    });
    assert_eq!(r.status, 200, "{}", r.text());
    for path in ["/api/v1/clusters", "/api/v1/clusters/good"] {
        let text = server.http().get(path).text();
        assert!(!text.contains(&secret), "{path} returned the kubeconfig");
    }
    let detail = server.http().get("/api/v1/clusters/good").json();
    assert_eq!(detail["health"]["reachable"], true, "{detail:#}");
    assert_eq!(detail["health"]["crds_installed"], true, "{detail:#}");
    assert_eq!(detail["config"]["namespace"], "default", "{detail:#}");
    let mut db = Vec::new();
    for entry in std::fs::read_dir(server.data_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("yatai.db") {
            db.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(!db.is_empty(), "no database file found");
    let needle = secret.as_bytes();
    assert!(!db.windows(needle.len()).any(|w| w == needle), "the kubeconfig is in the database in clear");
    assert!(!server.log_text().contains(&secret), "the kubeconfig is in the server's log");

    // The client's view: its cluster schemas decode what the API returns (the 1.4 CLI has no
    // `bentoml cluster` command; `RestApiClient.v1` has the calls), and the instance types.
    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    let seen = client.python_code(&format!(
        "from bentoml._internal.cloud.client import RestApiClient\n\
         c = RestApiClient({url:?}, {token:?}).v1\n\
         print([x.name for x in c.get_cluster_list().items])\n\
         g = c.get_cluster('good')\n\
         print(g.config.default_deployment_kube_namespace, repr(g.kube_config), [r.name for r in g.resource_instances])",
        url = server.url,
        token = server.token,
    ));
    assert!(seen.contains("'good'"), "{seen}");
    assert!(seen.contains("default '' ['cpu.1', 'cpu.2', 'cpu.4', 'cpu.8']"), "{seen}");
    let types = client.ok(&["deployment", "list-instance-types", "--cluster", "good", "-o", "json"]);
    assert!(types.contains("cpu.2") && types.contains("4Gi"), "{types}");

    // A deployment that names no namespace goes to the cluster's ("default" here), and its
    // instance type sets the pods' requests; a type the cluster does not offer is refused.
    client.ok(&["push", &iris.bento]);
    let create = |name: &str, instance_type: &str| {
        server.http().post(
            "/api/v2/deployments?cluster=good",
            &json!({"name": name, "bento": iris.bento, "services": {"IrisClassifier": {"instance_type": instance_type}}}),
        )
    };
    let r = create("sized", "gpu.a100.8");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("cpu.1, cpu.2, cpu.4, cpu.8"), "{}", r.text());
    let r = create("sized", "cpu.2");
    assert_eq!(r.status, 200, "{}", r.text());
    let bds: kube::Api<yatai_kube_api::serving::v2alpha1::BentoDeployment> =
        kube::Api::namespaced(admin.clone(), "default");
    let bd = rt.block_on(bds.get("sized")).unwrap();
    let requests = bd.spec.resources.and_then(|r| r.requests).expect("requests set from the instance type");
    assert_eq!((requests.cpu.as_str(), requests.memory.as_str()), ("2", "4Gi"), "{requests:?}");
    assert_eq!(server.http().delete("/api/v2/deployments/sized?cluster=good").status, 200);

    // A namespace the cluster does not have: refused when the user creates, saying how to fix
    // it, with nothing kept — the same name then deploys where the namespace exists.
    let (repo, version) = iris.bento.split_once(':').unwrap();
    let v1 = |ns: &str| {
        server.http().post(
            "/api/v1/clusters/good/deployments",
            &json!({"name": "placed", "kube_namespace": ns,
                    "targets": [{"type": "stable", "bento_repository": repo, "bento": version}]}),
        )
    };
    let r = v1("nowhere");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("namespace nowhere does not exist") && r.text().contains("kubectl create namespace"),
        "{}",
        r.text()
    );
    assert_eq!(
        server.http().get("/api/v2/deployments/placed?cluster=good").status,
        404,
        "the refused deployment was kept"
    );
    let r = v1("default");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.http().delete("/api/v2/deployments/placed?cluster=good").status, 200);

    // A member who is not an admin, and another organization's admin.
    server.admin(&["user", "create", "dev", "--email", "dev@example.com", "--org", "default"]);
    let dev = server.admin(&["token", "create", "--name", "dev", "--user", "dev"]).trim().to_owned();
    let r = register(&server.http().with_token(&dev), "mine", &kubeconfig);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(server.http().with_token(&dev).delete("/api/v1/clusters/good").status, 403);
    server.admin(&["org", "create", "other"]);
    server.admin(&["user", "create", "eve", "--email", "eve@example.com", "--org", "other", "--role", "admin"]);
    let eve = server.admin(&["token", "create", "--name", "eve", "--user", "eve", "--org", "other"]).trim().to_owned();
    assert_eq!(server.http().with_token(&eve).get("/api/v1/clusters/good").status, 404);
    assert!(!server.http().with_token(&eve).get("/api/v1/clusters").text().contains("\"good\""));
    assert_eq!(server.http().with_token(&eve).delete("/api/v1/clusters/good").status, 404);
    assert_eq!(server.http().get("/api/v1/clusters/good").status, 200, "the cluster survived the attempts");
}

/// Secrets on a cluster: each becomes a Secret in the deployment's namespace that the pods
/// refer to (`secretKeyRef`, a volume per `mountfile` secret) and neither the BentoDeployment
/// nor the Deployment holds a value; replacing one updates the Secret and rolls the pods; a
/// Secret of that name yatai did not write is never taken over; Secrets no deployment uses
/// any more are collected.
#[test]
fn secrets_reach_the_pods_as_references_to_secrets_yatai_keeps_in_sync() {
    const NS: &str = "yatai-secrets";
    const VALUE: &str = "kube-env-value-5e1d8c";
    const NEW_VALUE: &str = "kube-rotated-value-9a7b3f";
    const FILE_VALUE: &str = "kube-file-value-3c2e1a";
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Secret;
    use yatai_kube_api::serving::v2alpha1::BentoDeployment;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let testbed = rt.block_on(Testbed::shared()).unwrap();
    let admin = rt.block_on(kube_support::prepare(testbed, NS));
    let fixtures = build_common::fixtures();
    let registry = build_common::TestRegistry::start(None);
    let base = registry.push_base();
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).building_images(
        &registry.host(),
        &base,
        &build_common::shared_cache(),
        &fixtures.uv,
    ));
    let _operator = start_operator(testbed, NS);
    wait_for_operator(&rt, &admin, NS);
    kube_support::add_cluster(&server, testbed, NS);

    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    push_and_build_image(&server, &client, &iris.bento);

    client.ok(&["secret", "create", "api-keys", &format!("API_KEY={VALUE}")]);
    client.ok(&[
        "secret",
        "create",
        "certs",
        "-t",
        "file",
        "-p",
        "$BENTOML_HOME/certs",
        &format!("token.txt={FILE_VALUE}"),
    ]);
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
        "--secret",
        "api-keys",
        "--secret",
        "certs",
    ]);
    assert!(out.contains("is ready"), "{out}");
    wait_status(&server, "iris", "running");

    let secrets: kube::Api<Secret> = kube::Api::namespaced(admin.clone(), NS);
    let bds: kube::Api<BentoDeployment> = kube::Api::namespaced(admin.clone(), NS);
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(admin.clone(), NS);
    let data = |name: &str, key: &str| {
        let s = rt.block_on(secrets.get(name)).unwrap();
        String::from_utf8(s.data.unwrap()[key].0.clone()).unwrap()
    };
    assert_eq!(data("yatai-secret-api-keys", "API_KEY"), VALUE);
    assert_eq!(data("yatai-secret-certs", "file-0"), FILE_VALUE);
    let bd = rt.block_on(bds.get("iris")).unwrap();
    let d = rt.block_on(deployments.get("iris")).unwrap();
    for (what, text) in [("BentoDeployment", serde_json::to_string(&bd)), ("Deployment", serde_json::to_string(&d))] {
        let text = text.unwrap();
        for v in [VALUE, FILE_VALUE] {
            assert!(!text.contains(v), "the {what} holds a secret's value: {text}");
        }
    }
    let pod = d.spec.template.spec.clone().unwrap();
    let main = &pod.containers[0];
    let api_key = main.env.as_ref().unwrap().iter().find(|e| e.name == "API_KEY").expect("API_KEY in the pod");
    let by_ref = api_key.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()).expect("a secretKeyRef");
    assert_eq!((by_ref.name.as_str(), by_ref.key.as_str()), ("yatai-secret-api-keys", "API_KEY"));
    let mount = main.volume_mounts.as_ref().unwrap().iter().find(|m| m.mount_path == "/home/bentoml/certs/token.txt");
    let mount = mount.expect("the file mounted below BENTOML_HOME");
    let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == mount.name).unwrap();
    assert_eq!(volume.secret.as_ref().unwrap().secret_name.as_deref(), Some("yatai-secret-certs"));
    let revision = |d: &Deployment| {
        d.spec.template.metadata.as_ref().unwrap().annotations.clone().unwrap_or_default()["yatai.ai/secrets-revision"]
            .clone()
    };
    let before = revision(&d);
    // The API and the CLI show the names, never the values.
    let got = client.ok(&["deployment", "get", "iris", "--cluster", "testbed", "-o", "json"]);
    assert!(got.contains("api-keys") && !got.contains(VALUE), "{got}");

    // Replacing a secret updates its Secret and rolls the pods (a new pod template).
    let replaced = server.http().patch(
        "/api/v1/org_secrets/api-keys",
        Some(
            &json!({"content": {"type": "env", "stage": "runtime", "items": [{"key": "API_KEY", "value": NEW_VALUE}]}}),
        ),
    );
    assert_eq!(replaced.status, 200, "{}", replaced.text());
    assert_eq!(data("yatai-secret-api-keys", "API_KEY"), NEW_VALUE);
    wait_for("the pods rolled to the new secret", WAIT, || {
        let d = rt.block_on(deployments.get("iris")).unwrap();
        (revision(&d) != before).then_some(())
    });

    // A Secret of the name yatai would use, made by someone else, is never taken over.
    let theirs = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "yatai-secret-handmade", "namespace": NS}, "stringData": {"TOKEN": "theirs"}});
    rt.block_on(secrets.create(&Default::default(), &serde_json::from_value(theirs).unwrap())).unwrap();
    client.ok(&["secret", "create", "handmade", "TOKEN=mine"]);
    let refused = client.fails(&["deployment", "update", "iris", "--cluster", "testbed", "--secret", "handmade"]);
    assert!(refused.contains("yatai-secret-handmade") && refused.contains("not written by yatai"), "{refused}");
    assert_eq!(data("yatai-secret-handmade", "TOKEN"), "theirs");

    // Updated without the file secret: its Secret goes; deleted: the env one goes too.
    client.ok(&["deployment", "update", "iris", "--cluster", "testbed", "--secret", "api-keys"]);
    wait_for("the unused Secret collected", WAIT, || {
        rt.block_on(secrets.get_opt("yatai-secret-certs")).unwrap().is_none().then_some(())
    });
    assert!(rt.block_on(secrets.get_opt("yatai-secret-api-keys")).unwrap().is_some());
    let refused = client.fails(&["secret", "delete", "api-keys"]);
    assert!(refused.contains("iris"), "deleting a secret in use names its deployment: {refused}");
    client.ok(&["deployment", "delete", "iris", "--cluster", "testbed"]);
    wait_for("the Secrets collected", WAIT, || {
        rt.block_on(secrets.get_opt("yatai-secret-api-keys")).unwrap().is_none().then_some(())
    });
    assert_eq!(data("yatai-secret-handmade", "TOKEN"), "theirs", "someone else's Secret is never collected");
}
