//! The seed flow end to end on the testbed's real node, with real components only: the bentoml
//! CLI pushes the iris bento to `yatai serve` and deploys it to a cluster registered without a
//! domain suffix; `yatai operator` (no `--domain-suffix` either) builds the image in-process,
//! pushes it to the node's loopback registry, and the kubelet runs that image until it is Ready;
//! the URL's host is the one the operator discovered from Traefik's address; the prediction,
//! Swagger UI and the OpenAPI document come back through Traefik; terminate leaves no pod and
//! delete leaves no object.
//!
//! Runs only with `YATAI_TEST_REAL_NODE=1` (root; the real node changes the host's network while
//! the testbed runs). Otherwise it passes with a note on stderr.

mod support;

#[path = "support/kube.rs"]
mod kube_support;

#[path = "../crates/image-builder/tests/common/mod.rs"]
mod build_common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use support::*;
use yatai_kube_api::resources::{Bento, BentoRequest};
use yatai_kube_api::serving::v2alpha1::BentoDeployment;
use yatai_kube_testbed::{RealNode, Testbed, real_node_enabled};

/// Building the image (cold: uv installs the dependencies) and starting it on a busy machine.
const BUILD_AND_START: Duration = Duration::from_secs(900);
const WAIT: Duration = Duration::from_secs(120);
const PODS: &str = "yatai.ai/bento-deployment=iris";

/// Polls `f` every 200 ms until it returns `Some`, or returns `None` at the deadline.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a person debugging a failure looks at: the CRs' status, the pods' state and the
/// namespace's events (the operator's log is on stderr).
fn diagnose(rt: &tokio::runtime::Runtime, client: &kube::Client, ns: &str) -> String {
    let mut out = String::new();
    let list = |kind: &str, items: Vec<Value>, out: &mut String| {
        for item in items {
            let name = item["metadata"]["name"].as_str().unwrap_or("?").to_owned();
            out.push_str(&format!("--- {kind} {name}\nspec: {}\nstatus: {:#}\n", item["spec"], item["status"]));
        }
    };
    macro_rules! dump {
        ($kind:ty, $name:literal) => {
            match rt.block_on(Api::<$kind>::namespaced(client.clone(), ns).list(&ListParams::default())) {
                Ok(l) => list($name, l.items.iter().map(|i| serde_json::to_value(i).unwrap()).collect(), &mut out),
                Err(e) => out.push_str(&format!("listing {}: {e}\n", $name)),
            }
        };
    }
    dump!(BentoRequest, "BentoRequest");
    dump!(Bento, "Bento");
    dump!(BentoDeployment, "BentoDeployment");
    dump!(Deployment, "Deployment");
    dump!(Pod, "Pod");
    if let Ok(events) = rt.block_on(Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default())) {
        out.push_str("--- events\n");
        for e in events.items {
            out.push_str(&format!(
                "{} {}/{} {}: {}\n",
                e.type_.unwrap_or_default(),
                e.involved_object.kind.unwrap_or_default(),
                e.involved_object.name.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            ));
        }
    }
    out
}

/// One HTTP/1.1 request to Traefik's address with the deployment's Host header.
fn via_ingress(
    node: &RealNode,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<Response> {
    let mut s = std::net::TcpStream::connect(node.ingress())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(&body)?;
    Ok(read_response(&mut s))
}

fn deployment(server: &Server, name: &str) -> Value {
    let r = server.http().get(&format!("/api/v2/deployments/{name}?cluster=testbed"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn the_seed_flow_serves_on_the_real_node_through_the_ingress() {
    if !real_node_enabled() {
        eprintln!(
            "the_seed_flow_serves_on_the_real_node_through_the_ingress: skipped; set YATAI_TEST_REAL_NODE=1 (as \
             root) to run it on a real node"
        );
        return;
    }
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("kubernetes_real_node: {what} at {:.1}s", t0.elapsed().as_secs_f64());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let testbed = rt.block_on(Testbed::shared_real_node()).unwrap();
    let node = testbed.real_node().expect("the testbed has a real node");
    // A fresh namespace each run, so that the domain is discovered anew; removed on drop.
    let namespace = rt.block_on(testbed.namespace("seed")).unwrap();
    let ns = namespace.name().to_owned();
    let admin = rt.block_on(kube_support::prepare(testbed, &ns));
    step("testbed ready");

    // The base image and the bentos' images live in the registry the node pulls from.
    let fixtures = build_common::fixtures();
    let base = build_common::push_base_to(node.registry(), None);
    let target = format!("{}/bentos", node.registry());
    step("base image pushed");

    // The server builds nothing (no --image-registry): the operator builds from a BentoRequest,
    // fetching the bento from the server's API.
    let server = Server::start(Backend::SqliteLocal);
    let build_cache = build_common::shared_cache().display().to_string();
    let uv_cache = build_common::cache_root().join("uv-cache").display().to_string();
    let _operator = kube_support::start_operator_with(
        testbed,
        &ns,
        &[
            "--image-registry",
            &target,
            "--image-registry-insecure",
            "--build-base",
            &base,
            "--build-uv",
            &fixtures.uv.display().to_string(),
            "--build-cache-dir",
            &build_cache,
            "--build-uv-cache",
            &uv_cache,
            "--yatai-endpoint",
            &server.url,
        ],
        &[("YATAI_API_TOKEN", &server.token)],
    );
    kube_support::wait_for_operator(&rt, &admin, &ns);

    // Item 2: no suffix anywhere; the operator discovers it from Traefik's address (127.0.0.1)
    // and writes it into its `network` ConfigMap.
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let suffix = wait_for("the discovered domain suffix", WAIT, || {
        let cm = rt.block_on(config_maps.get_opt("network")).unwrap()?;
        cm.data?.get("domain-suffix").cloned()
    });
    assert_eq!(suffix, "127.0.0.1.sslip.io");
    step("domain suffix discovered");
    kube_support::add_cluster_with(&server, testbed, &ns, None);

    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    client.ok(&["push", &iris.bento]);
    let (repo, version) = iris.bento.split_once(':').unwrap();
    // `--no-wait`: the CLI's own wait ends by asking the URL's `/readyz`, on port 80 of
    // 127.0.0.1, where Traefik does not listen in the testbed (it is on `node.ingress()`).
    let created = Instant::now();
    client.ok(&[
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
        "--no-wait",
    ]);
    step("deployment created");

    // The operator builds the image and writes the Bento naming it.
    let bentos: Api<Bento> = Api::namespaced(admin.clone(), &ns);
    let image = poll(BUILD_AND_START, || {
        rt.block_on(bentos.list(&ListParams::default())).unwrap().items.into_iter().next().map(|b| b.spec.image)
    })
    .unwrap_or_else(|| panic!("no Bento: the image was not built\n{}", diagnose(&rt, &admin, &ns)));
    let built = created.elapsed();
    step("image built and pushed");
    assert!(image.starts_with(&format!("{target}:yatai.{repo}.{version}")), "the Bento's image: {image}");
    let tag = image.split('@').next().unwrap();
    let digest = build_common::skopeo_inspect(tag, None)["Digest"].as_str().unwrap().to_owned();

    // The pod on the real node runs that image, and turns Ready; yatai says running.
    let d = poll(BUILD_AND_START, || {
        let d = deployment(&server, "iris");
        assert_ne!(d["status"], "failed", "{d:#}\n{}", diagnose(&rt, &admin, &ns));
        (d["status"] == "running").then_some(d)
    })
    .unwrap_or_else(|| panic!("not running: {:#}\n{}", deployment(&server, "iris"), diagnose(&rt, &admin, &ns)));
    let running = created.elapsed();
    step("running");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let listed = rt.block_on(pods.list(&ListParams::default().labels(PODS))).unwrap().items;
    assert_eq!(listed.len(), 1, "{}", diagnose(&rt, &admin, &ns));
    let pod = &listed[0];
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some(node.name()));
    let container = &pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0];
    assert!(container.ready, "{container:?}");
    assert_eq!(container.image.split('@').next(), Some(tag), "{container:?}");
    assert_eq!(container.image_id, format!("{target}@{digest}"), "the pod runs the image the operator pushed");

    // The URL's host is `<name>-<namespace>.<discovered suffix>`, in yatai and in the CLI.
    let url = format!("http://iris-{ns}.127.0.0.1.sslip.io");
    let urls: Vec<&str> = d["urls"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(urls, [url.as_str()], "{d:#}");
    let out = client.ok(&["deployment", "get", "iris", "--cluster", "testbed", "-o", "json"]);
    let got: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    assert_eq!(got["status"]["status"], "running", "{got:#}");
    assert_eq!(got["endpoint_urls"], json!([url]), "{got:#}");

    // Through Traefik with that Host: the prediction, Swagger UI and the OpenAPI document.
    let host = url.trim_start_matches("http://");
    let input = json!({"input_series": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]});
    let answer = poll(WAIT, || {
        let r = via_ingress(node, host, "POST", "/classify", Some(&input)).ok()?;
        (r.status == 200).then_some(r)
    })
    .unwrap_or_else(|| panic!("no answer through the ingress for {host}\n{}", diagnose(&rt, &admin, &ns)));
    let answered = created.elapsed();
    step("first answer through the ingress");
    assert_eq!(answer.json(), json!([0, 2]), "{}", answer.text());
    let ui = via_ingress(node, host, "GET", "/", None).unwrap();
    assert_eq!(ui.status, 200, "{}", ui.text());
    assert!(ui.text().to_lowercase().contains("swagger-ui"), "{}", ui.text());
    let docs = via_ingress(node, host, "GET", "/docs.json", None).unwrap();
    assert!(docs.json()["paths"].get("/classify").is_some(), "{}", docs.text());
    eprintln!(
        "kubernetes_real_node: create → image pushed {:.1}s, → running {:.1}s, → first answer through Traefik {:.1}s",
        built.as_secs_f64(),
        running.as_secs_f64(),
        answered.as_secs_f64()
    );

    // What the dashboard's live logs and request charts read, from the real pod: its output
    // through the API server (the request's access line), and the request totals of its /metrics.
    let logs_path = "/api/v2/deployments/iris/logs?cluster=testbed&tail=500";
    poll(WAIT, || server.http().get(logs_path).text().contains("/classify").then_some(()))
        .unwrap_or_else(|| panic!("the pod's logs never showed the request: {}", server.http().get(logs_path).text()));
    let metrics_path = "/api/v2/deployments/iris/metrics?cluster=testbed";
    poll(WAIT, || {
        let m = server.http().get(metrics_path).json();
        let total: f64 = m["replica_requests_total"].as_object()?.values().filter_map(Value::as_f64).sum();
        (total >= 1.0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!("no request counted from the pod's /metrics: {}", server.http().get(metrics_path).text())
    });
    step("logs and request totals from the pod");

    // A rolling update to a new bento version while a client keeps asking: no request is lost.
    let (_, version2) = iris.bento_v2.split_once(':').unwrap();
    let tag2 = format!("{target}:yatai.{repo}.{version2}");
    client.ok(&["push", &iris.bento_v2]);
    let stop = AtomicBool::new(false);
    let (served, lost) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let (mut served, mut lost) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match via_ingress(node, host, "POST", "/classify", Some(&input)) {
                    Ok(r) if r.status == 200 => served += 1,
                    Ok(r) => lost.push(format!("{} {}", r.status, r.text())),
                    Err(e) => lost.push(e.to_string()),
                }
            }
            (served, lost)
        });
        let updated = Instant::now();
        client.ok(&["deployment", "update", "iris", "--cluster", "testbed", "--bento", &iris.bento_v2]);
        let rolled = poll(BUILD_AND_START, || {
            let pods = rt.block_on(pods.list(&ListParams::default().labels(PODS))).unwrap().items;
            let on_v2 = pods.len() == 1
                && pods.iter().all(|p| {
                    let c = &p.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
                    c.first().is_some_and(|c| c.ready && c.image.starts_with(&tag2))
                });
            (on_v2 && deployment(&server, "iris")["status"] == "running").then_some(())
        });
        stop.store(true, Ordering::Relaxed);
        let result = load.join().unwrap();
        rolled.unwrap_or_else(|| panic!("the update did not roll out\n{}", diagnose(&rt, &admin, &ns)));
        eprintln!("kubernetes_real_node: update → rolled out {:.1}s", updated.elapsed().as_secs_f64());
        result
    });
    step("rolled out to the new version");
    assert!(
        lost.is_empty(),
        "{} of {} requests lost during the rollout: {lost:?}",
        lost.len(),
        served as usize + lost.len()
    );
    assert!(served > 10, "the client got only {served} answers during the rollout");

    // A bounded CPU load (three clients, for at most three minutes) makes the HPA scale to its
    // maximum of two.
    let stop = AtomicBool::new(false);
    let big = json!({"input_series": vec![[6.7, 3.0, 5.2, 2.3]; 2000]});
    let loaded = Instant::now();
    let scaled = std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = via_ingress(node, host, "POST", "/classify", Some(&big));
                }
            });
        }
        let scaled = poll(Duration::from_secs(180), || {
            let pods = rt.block_on(pods.list(&ListParams::default().labels(PODS))).unwrap().items;
            let ready = pods
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count();
            (ready == 2).then_some(())
        });
        stop.store(true, Ordering::Relaxed);
        scaled
    });
    scaled.unwrap_or_else(|| {
        let hpa = rt.block_on(Api::<HorizontalPodAutoscaler>::namespaced(admin.clone(), &ns).get("iris")).unwrap();
        panic!("the HPA did not scale to 2: {:#?}\n{}", hpa.status, diagnose(&rt, &admin, &ns))
    });
    eprintln!("kubernetes_real_node: CPU load → 2 replicas Ready {:.1}s", loaded.elapsed().as_secs_f64());
    step("scaled up under load");

    // Terminate: no pod is left.
    client.ok(&["deployment", "terminate", "iris", "--cluster", "testbed"]);
    poll(WAIT, || rt.block_on(pods.list(&ListParams::default().labels(PODS))).unwrap().items.is_empty().then_some(()))
        .unwrap_or_else(|| panic!("pods left after terminate\n{}", diagnose(&rt, &admin, &ns)));
    poll(WAIT, || (deployment(&server, "iris")["status"] == "terminated").then_some(()))
        .unwrap_or_else(|| panic!("not terminated: {:#}", deployment(&server, "iris")));
    step("terminated, no pods");

    // Delete: the BentoDeployment, every child, and the BentoRequests and Bentos of every
    // revision (the first one's too) go.
    client.ok(&["deployment", "delete", "iris", "--cluster", "testbed"]);
    let gone = || {
        let bd = rt.block_on(Api::<BentoDeployment>::namespaced(admin.clone(), &ns).get_opt("iris")).unwrap();
        let d = rt.block_on(Api::<Deployment>::namespaced(admin.clone(), &ns).get_opt("iris")).unwrap();
        let s = rt.block_on(Api::<Service>::namespaced(admin.clone(), &ns).get_opt("iris")).unwrap();
        let h = rt.block_on(Api::<HorizontalPodAutoscaler>::namespaced(admin.clone(), &ns).get_opt("iris")).unwrap();
        let i = rt.block_on(Api::<Ingress>::namespaced(admin.clone(), &ns).get_opt("iris")).unwrap();
        let br = rt.block_on(Api::<BentoRequest>::namespaced(admin.clone(), &ns).list(&ListParams::default())).unwrap();
        let b = rt.block_on(bentos.list(&ListParams::default())).unwrap();
        let left: Vec<&str> = [
            ("BentoDeployment", bd.is_some()),
            ("Deployment", d.is_some()),
            ("Service", s.is_some()),
            ("HorizontalPodAutoscaler", h.is_some()),
            ("Ingress", i.is_some()),
            ("BentoRequest", !br.items.is_empty()),
            ("Bento", !b.items.is_empty()),
        ]
        .into_iter()
        .filter_map(|(kind, present)| present.then_some(kind))
        .collect();
        left.is_empty().then_some(()).ok_or(left)
    };
    poll(WAIT, || gone().ok())
        .unwrap_or_else(|| panic!("left after delete: {:?}\n{}", gone().err(), diagnose(&rt, &admin, &ns)));
    step("deleted");

    // A service that crashes at start (its BentoML config file does not exist): the status
    // says CrashLoopBackOff with the crash's last output lines, and the CLI does not say running.
    client.ok(&[
        "deployment",
        "create",
        &iris.bento,
        "--name",
        "crashy",
        "--cluster",
        "testbed",
        "--env",
        "BENTOML_CONFIG=/nonexistent/bentoml.yaml",
        "--no-wait",
    ]);
    let crashed = poll(BUILD_AND_START, || {
        let d = deployment(&server, "crashy");
        d["status_message"].as_str().is_some_and(|m| m.contains("CrashLoopBackOff")).then_some(d)
    })
    .unwrap_or_else(|| {
        panic!("no crash reported: {:#}\n{}", deployment(&server, "crashy"), diagnose(&rt, &admin, &ns))
    });
    assert!(["failed", "unhealthy"].contains(&crashed["status"].as_str().unwrap()), "{crashed:#}");
    assert!(
        crashed["status_message"].as_str().unwrap().contains("BentoML config file specified in ENV VAR not found"),
        "the crash's output is not in the status: {crashed:#}"
    );
    let out = client.ok(&["deployment", "get", "crashy", "--cluster", "testbed", "-o", "json"]);
    let got: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    assert_eq!(got["status"]["status"], crashed["status"], "{got:#}");
    client.ok(&["deployment", "delete", "crashy", "--cluster", "testbed"]);
    step("a crash at start is reported with its output");
    rt.block_on(namespace.delete()).unwrap();
}
