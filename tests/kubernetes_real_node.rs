//! The seed flow end to end on the testbed's real node, with real components only: the bentoml
//! CLI pushes the iris bento to `yatai serve` and deploys it to a cluster registered without a
//! domain suffix; `yatai operator` (no `--domain-suffix` either) builds the image in-process,
//! pushes it to the node's loopback registry, and the kubelet runs that image until it is Ready;
//! the URL's host is the one the operator discovered from Traefik's address; the prediction,
//! Swagger UI and the OpenAPI document come back through Traefik; terminate leaves no pod and
//! delete leaves no object. Then the paths around it: a bento of two services (BentoML >= 1.2
//! dependencies) deployed from the dashboard's form in Chromium serves through Traefik; a
//! readiness that never comes and an image that cannot be pulled are reported with their reasons
//! in the API, the CLI and the dashboard, and the operator does not hot-loop meanwhile. And a
//! deployment's secrets reach a real pod as environment variables and files (by reference to
//! Secrets, never in the pod spec), and a replaced value reaches new pods.
//!
//! Runs only with `YATAI_TEST_REAL_NODE=1` (root; the real node changes the host's network while
//! the testbed runs). Otherwise it passes with a note on stderr.

mod support;

#[path = "support/browser.rs"]
mod browser;
#[path = "support/kube.rs"]
mod kube_support;
#[path = "support/real_node.rs"]
mod real_node;

#[path = "../crates/image-builder/tests/common/mod.rs"]
mod build_common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use browser::Browser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{ListParams, PostParams};
use real_node::*;
use serde_json::{Value, json};
use support::*;
use yatai_kube_api::resources::{Bento, BentoRequest, BentoSpec};
use yatai_kube_api::serving::v2alpha1::{Autoscaling, BentoDeployment, BentoDeploymentSpec};
use yatai_kube_testbed::{Testbed, real_node_enabled};

/// Building the image (cold: uv installs the dependencies) and starting it on a busy machine.
const BUILD_AND_START: Duration = Duration::from_secs(900);
const PODS: &str = "yatai.ai/bento-deployment=iris";
/// The tests share the node and measure rollouts and autoscaling: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("kubernetes_real_node: {what} at {:.1}s", t0.elapsed().as_secs_f64());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let testbed = rt.block_on(Testbed::shared_real_node()).unwrap();
    let node = testbed.real_node().expect("the testbed has a real node");
    let Seed { namespace, ns, admin, server, target, operator: _operator, .. } = set_up(&rt, testbed, "seed", &step);

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
            let ready = pods.iter().filter(|p| pod_ready(p)).count();
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

    // After the load, back to one replica once the scale-down window (60 s by default) has
    // passed with the CPU idle.
    let unloaded = Instant::now();
    poll(Duration::from_secs(300), || {
        (rt.block_on(pods.list(&ListParams::default().labels(PODS))).unwrap().items.len() == 1).then_some(())
    })
    .unwrap_or_else(|| {
        let hpa = rt.block_on(Api::<HorizontalPodAutoscaler>::namespaced(admin.clone(), &ns).get("iris")).unwrap();
        panic!("the HPA did not scale back to 1: {:#?}\n{}", hpa.status, diagnose(&rt, &admin, &ns))
    });
    eprintln!("kubernetes_real_node: load stopped → 1 replica {:.1}s", unloaded.elapsed().as_secs_f64());
    step("scaled back down after the load");

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

#[test]
fn a_two_service_bento_deployed_from_the_dashboard_serves_and_failures_say_why() {
    if !real_node_enabled() {
        eprintln!(
            "a_two_service_bento_deployed_from_the_dashboard_serves_and_failures_say_why: skipped (YATAI_TEST_REAL_NODE)"
        );
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("kubernetes_real_node (paths): {what} at {:.1}s", t0.elapsed().as_secs_f64());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let testbed = rt.block_on(Testbed::shared_real_node()).unwrap();
    let node = testbed.real_node().expect("the testbed has a real node");
    let Seed { namespace, ns, admin, server, target, metrics, operator: _operator } =
        set_up(&rt, testbed, "paths", &step);

    // A bento of two services (the entry service calls the other), built and pushed with the CLI.
    let client = Bentoml::new(&server.url, &server.token);
    let bento = client.build_fixture("pipeline", &[]);
    client.ok(&["push", &bento]);
    let (repo, version) = bento.split_once(':').unwrap();
    step("two-service bento pushed");

    // Deployed from the dashboard's form, as a user clicking Deploy does.
    let mut browser = rt.block_on(Browser::launch()).with_base(&server.url);
    browser.timeout = Duration::from_secs(60);
    let b = &browser;
    let url = format!("http://pipeline-{ns}.127.0.0.1.sslip.io");
    rt.block_on(async {
        b.set_up_admin(&server.token, "ada", "a long enough password").await;
        b.goto(&format!("/deployments/new?bento_repository={repo}&bento_version={version}")).await;
        b.wait_for("main#main[data-page=deployment-new]").await;
        b.select("[name=cluster]", "testbed").await;
        b.fill("[name=name]", "pipeline").await;
        b.fill("[name=min_replicas]", "1").await;
        b.fill("[name=max_replicas]", "1").await;
        b.submit("form[data-form=deployment]").await;
        b.wait_for("main#main[data-page=deployment]").await;
        let js = "(s => s === 'running' || s === 'failed' ? s : null)\
                  (document.querySelector('[data-testid=status]').textContent.trim())";
        let seen = b.wait_until_for(js, "the status to turn running", BUILD_AND_START).await;
        assert_eq!(seen, "running", "{}\n{}", b.text("[data-live-reason]").await, diagnose(&rt, &admin, &ns));
        let js = "(a => a ? a.getAttribute('href').replace(/\\/$/, '') : null)\
                  (document.querySelector('a[data-testid=url]'))";
        let shown = b.wait_until_for(js, "the Ingress URL on the page", WAIT).await;
        assert_eq!(shown, url.as_str());
        b.assert_no_console_errors();
        b.screenshot("real-node-deployment").await;
    });
    step("deployed from the dashboard: running");

    // One pod runs the image the operator built; through Traefik, the entry service answers
    // with the help of the other service, in another process.
    let bentos: Api<Bento> = Api::namespaced(admin.clone(), &ns);
    let image = rt.block_on(bentos.list(&ListParams::default())).unwrap().items[0].spec.image.clone();
    assert!(image.starts_with(&format!("{target}:yatai.{repo}.{version}")), "{image}");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let listed =
        rt.block_on(pods.list(&ListParams::default().labels("yatai.ai/bento-deployment=pipeline"))).unwrap().items;
    assert_eq!(listed.len(), 1, "{}", diagnose(&rt, &admin, &ns));
    let host = url.trim_start_matches("http://");
    let answer = poll(WAIT, || {
        let r = via_ingress(node, host, "POST", "/summarize", Some(&json!({"values": [1.0, 3.0]}))).ok()?;
        (r.status == 200).then_some(r)
    })
    .unwrap_or_else(|| panic!("no answer through the ingress for {host}\n{}", diagnose(&rt, &admin, &ns)));
    let got = answer.json();
    assert_eq!(got["normalized"], json!([0.25, 0.75]), "{got}");
    assert_ne!(got["pid"], got["normalizer_pid"], "the dependency runs as its own process: {got}");
    let docs = via_ingress(node, host, "GET", "/docs.json", None).unwrap();
    assert!(docs.json()["paths"].get("/summarize").is_some(), "{}", docs.text());
    step("the two services answer through the ingress");

    // A readiness that never comes (the same bento, told never to be ready), and an image that
    // cannot be pulled (a Bento applied with kubectl naming an image the registry lacks).
    client.ok(&[
        "deployment",
        "create",
        &bento,
        "--name",
        "stuck",
        "--cluster",
        "testbed",
        "--env",
        "PIPELINE_NEVER_READY=1",
        "--no-wait",
    ]);
    let mut unpullable = Bento::new(
        "unpullable",
        BentoSpec { tag: format!("{repo}:{version}"), image: format!("{target}:no-such-image"), ..Default::default() },
    );
    unpullable.metadata.namespace = Some(ns.clone());
    rt.block_on(bentos.create(&PostParams::default(), &unpullable)).unwrap();
    let bds: Api<BentoDeployment> = Api::namespaced(admin.clone(), &ns);
    let bd = BentoDeployment::new(
        "unpullable",
        BentoDeploymentSpec {
            bento: "unpullable".into(),
            autoscaling: Some(Autoscaling { min_replicas: 1, max_replicas: 1, ..Default::default() }),
            ..Default::default()
        },
    );
    rt.block_on(bds.create(&PostParams::default(), &bd)).unwrap();

    let stuck = poll(BUILD_AND_START, || {
        let d = deployment(&server, "stuck");
        d["status_message"].as_str().is_some_and(|m| m.contains("Readiness probe failed")).then_some(d)
    })
    .unwrap_or_else(|| {
        panic!("no readiness failure reported: {:#}\n{}", deployment(&server, "stuck"), diagnose(&rt, &admin, &ns))
    });
    assert_eq!(stuck["status"], "deploying", "a service still loading is not a failure: {stuck:#}");
    let message = stuck["status_message"].as_str().unwrap();
    assert!(message.contains("not ready") && message.contains("503"), "{stuck:#}");
    let pulled = poll(WAIT, || {
        let r = server.http().get("/api/v2/deployments/unpullable?cluster=testbed");
        let d = (r.status == 200).then(|| r.json())?;
        d["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("ImagePullBackOff") || m.contains("ErrImagePull"))
            .then_some(d)
    })
    .unwrap_or_else(|| panic!("no image pull failure reported\n{}", diagnose(&rt, &admin, &ns)));
    assert_eq!(pulled["status"], "failed", "{pulled:#}");
    assert!(pulled["status_message"].as_str().unwrap().contains("no-such-image"), "{pulled:#}");
    step("a readiness that never comes and an unpullable image are reported");

    // The same in the CLI and on the dashboard's pages.
    for (name, status) in [("stuck", "deploying"), ("unpullable", "failed")] {
        let out = client.ok(&["deployment", "get", name, "--cluster", "testbed", "-o", "json"]);
        let got: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
        assert_eq!(got["status"]["status"], status, "{name}: {got:#}");
    }
    rt.block_on(async {
        for (name, says) in [("stuck", "Readiness probe failed"), ("unpullable", "no-such-image")] {
            b.goto(&format!("/deployments/{name}")).await;
            b.wait_for("main#main[data-page=deployment]").await;
            b.wait_for_text("[data-live-reason]", says).await;
            b.screenshot(&format!("real-node-{name}")).await;
        }
        b.assert_no_console_errors();
    });

    // While both stay broken, the operator looks at them every few seconds, not in a loop.
    let window = Duration::from_secs(30);
    let (reconciles, requests) = operator_counters(&metrics);
    let until = Instant::now() + window;
    poll(window + Duration::from_secs(1), || (Instant::now() >= until).then_some(()));
    let (reconciles2, requests2) = operator_counters(&metrics);
    let (reconciled, requested) = (reconciles2 - reconciles, requests2 - requests);
    eprintln!(
        "kubernetes_real_node: in {window:?} with two broken deployments: {reconciled} reconciles, {requested} API requests"
    );
    assert!(
        reconciled <= 30.0 && requested <= 120.0,
        "the operator hot-loops: {reconciled} reconciles, {requested} requests in {window:?}"
    );
    step("the operator does not hot-loop");

    client.ok(&["deployment", "delete", "stuck", "--cluster", "testbed"]);
    client.ok(&["deployment", "delete", "pipeline", "--cluster", "testbed"]);
    rt.block_on(namespace.delete()).unwrap();
}

#[test]
fn secrets_reach_a_real_pod_by_reference_and_a_replaced_value_rolls_it() {
    if !real_node_enabled() {
        eprintln!(
            "secrets_reach_a_real_pod_by_reference_and_a_replaced_value_rolls_it: skipped (YATAI_TEST_REAL_NODE)"
        );
        return;
    }
    const VALUE: &str = "real-node-env-value-6d2f";
    const NEW_VALUE: &str = "real-node-rotated-value-8b1c";
    const FILE_VALUE: &str = "real-node-file-value-4a9e";
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("kubernetes_real_node (secrets): {what} at {:.1}s", t0.elapsed().as_secs_f64());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let testbed = rt.block_on(Testbed::shared_real_node()).unwrap();
    let node = testbed.real_node().expect("the testbed has a real node");
    let Seed { namespace, ns, admin, server, operator: _operator, .. } = set_up(&rt, testbed, "secrets", &step);

    let client = Bentoml::new(&server.url, &server.token);
    let bento = client.build_fixture("secrets_echo", &[]);
    client.ok(&["push", &bento]);
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
    // A secret for the build only: the operator's build reads it from its Secret; pods never see it.
    let build_only = json!({"name": "build-token", "content": {"type": "env", "stage": "build",
        "items": [{"key": "BUILD_ONLY_TOKEN", "value": "real-node-build-value-1f3d"}]}});
    let created = server.http().post("/api/v1/org_secrets", &build_only);
    assert_eq!(created.status, 200, "{}", created.text());
    client.ok(&[
        "deployment",
        "create",
        &bento,
        "--name",
        "echo",
        "--cluster",
        "testbed",
        "--scaling-min",
        "1",
        "--scaling-max",
        "1",
        "--secret",
        "api-keys",
        "--secret",
        "certs",
        "--secret",
        "build-token",
        "--no-wait",
    ]);
    let running = poll(BUILD_AND_START, || (deployment(&server, "echo")["status"] == "running").then_some(()));
    running.unwrap_or_else(|| panic!("{:#}\n{}", deployment(&server, "echo"), diagnose(&rt, &admin, &ns)));
    step("deployed with two secrets: running");

    let host = format!("echo-{ns}.127.0.0.1.sslip.io");
    let ask = |api: &str, body: Value| {
        poll(WAIT, || {
            let r = via_ingress(node, &host, "POST", api, Some(&body)).ok()?;
            (r.status == 200).then(|| r.json())
        })
        .unwrap_or_else(|| panic!("no answer from {api} through the ingress\n{}", diagnose(&rt, &admin, &ns)))
    };
    let env = ask("/env", json!({"names": ["API_KEY", "BUILD_ONLY_TOKEN"]}));
    assert_eq!(env["API_KEY"], VALUE, "{env}");
    assert!(env["BUILD_ONLY_TOKEN"].is_null(), "a build-only secret reached the pod: {env}");
    // The operator's build took it by reference from the BentoRequest.
    let requests: Api<BentoRequest> = Api::namespaced(admin.clone(), &ns);
    let request = rt.block_on(requests.list(&ListParams::default())).unwrap().items.remove(0);
    let refs = serde_json::to_string(&request.spec.image_builder_extra_container_env).unwrap();
    assert!(refs.contains("yatai-secret-build-token") && !refs.contains("real-node-build-value"), "{refs}");
    let files = ask("/files", json!({"paths": ["certs/token.txt"]}));
    let file = &files["certs/token.txt"];
    assert_eq!(file["content"], FILE_VALUE, "{files}");
    assert_eq!(file["mode"], "0o440", "readable by the bento's group and root only: {files}");
    step("the pod reads the env value and the file");

    // The pod spec refers to the Secrets; it holds no value.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let listed = rt.block_on(pods.list(&ListParams::default().labels("yatai.ai/bento-deployment=echo"))).unwrap();
    let spec = serde_json::to_string(&listed.items[0].spec).unwrap();
    assert!(spec.contains("yatai-secret-api-keys") && spec.contains("yatai-secret-certs"), "{spec}");
    assert!(!spec.contains(VALUE) && !spec.contains(FILE_VALUE), "a value in the pod spec: {spec}");
    assert!(!spec.contains("BUILD_ONLY_TOKEN"), "the build's secret in the pod spec: {spec}");

    // A replaced value reaches the replicas: yatai updates the Secret and rolls the pods.
    let replaced = server.http().patch(
        "/api/v1/org_secrets/api-keys",
        Some(
            &json!({"content": {"type": "env", "stage": "runtime", "items": [{"key": "API_KEY", "value": NEW_VALUE}]}}),
        ),
    );
    assert_eq!(replaced.status, 200, "{}", replaced.text());
    poll(BUILD_AND_START, || {
        let r = via_ingress(node, &host, "POST", "/env", Some(&json!({"names": ["API_KEY"]}))).ok()?;
        (r.status == 200 && r.json()["API_KEY"] == NEW_VALUE).then_some(())
    })
    .unwrap_or_else(|| panic!("the new value never reached a replica\n{}", diagnose(&rt, &admin, &ns)));
    step("the replaced value is served");

    client.ok(&["deployment", "delete", "echo", "--cluster", "testbed"]);
    rt.block_on(namespace.delete()).unwrap();
}
