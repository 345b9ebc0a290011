//! What the tests and the benchmark on the testbed's real node share: yatai serve and yatai
//! operator set up against it, requests through its ingress, and what to print when something
//! does not come.
//!
//! Include it beside `support`, `kube_support` and `build_common`:
//!
//! ```ignore
//! #[path = "support/real_node.rs"]
//! mod real_node;
//! ```

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;
use yatai_kube_api::resources::{Bento, BentoRequest};
use yatai_kube_api::serving::v2alpha1::BentoDeployment;
use yatai_kube_testbed::{RealNode, TestNamespace, Testbed};

use crate::support::{Backend, Http, Response, Server, read_response, wait_for};
use crate::{build_common, kube_support};

/// How long a request or a published object may take to come.
pub const WAIT: Duration = Duration::from_secs(120);

/// What a person debugging a failure looks at: the CRs' status, the pods' state and the
/// namespace's events (the operator's log is on stderr).
pub fn diagnose(rt: &tokio::runtime::Runtime, client: &kube::Client, ns: &str) -> String {
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
pub fn via_ingress(
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

/// What the real-node tests and the benchmark start from: a fresh namespace (so that the domain is discovered anew;
/// removed on drop), the base image in the node's registry, `yatai serve`, and `yatai
/// operator` building into that registry, with its metrics served; the cluster registered
/// without a domain suffix.
pub struct Seed {
    pub namespace: TestNamespace,
    pub ns: String,
    pub admin: kube::Client,
    pub server: Server,
    /// The repository the operator pushes bento images to.
    pub target: String,
    /// The operator's `/metrics` address.
    pub metrics: String,
    pub operator: kube_support::Operator,
}

pub fn set_up(rt: &tokio::runtime::Runtime, testbed: &'static Testbed, prefix: &str, step: &dyn Fn(&str)) -> Seed {
    let node = testbed.real_node().expect("the testbed has a real node");
    let namespace = rt.block_on(testbed.namespace(prefix)).unwrap();
    let ns = namespace.name().to_owned();
    let admin = rt.block_on(kube_support::prepare(testbed, &ns));
    step("testbed ready");

    // The server builds nothing (no --image-registry): the operator builds from a BentoRequest,
    // fetching the bento from the server's API.
    let server = Server::start(Backend::SqliteLocal);
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let operator = start_operator(testbed, &ns, &server, &metrics, &build_common::shared_cache());
    step("operator started");
    kube_support::wait_for_operator(rt, &admin, &ns);

    // No suffix anywhere: the operator discovers it from Traefik's address (127.0.0.1) and
    // writes it into its `network` ConfigMap.
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let suffix = wait_for("the discovered domain suffix", WAIT, || {
        let cm = rt.block_on(config_maps.get_opt("network")).unwrap()?;
        cm.data?.get("domain-suffix").cloned()
    });
    assert_eq!(suffix, "127.0.0.1.sslip.io");
    step("domain suffix discovered");
    kube_support::add_cluster_with(&server, testbed, &ns, None);
    Seed { namespace, ns, admin, server, target: target(node), metrics, operator }
}

/// The repository in the node's registry that bento images are pushed to.
pub fn target(node: &RealNode) -> String {
    format!("{}/bentos", node.registry())
}

/// `yatai operator` for namespace `ns`, building images in-process into the node's registry
/// (the base image pushed there first) with the builder's cache in `build_cache`, fetching
/// bentos from `server`, its metrics on `metrics`.
pub fn start_operator(
    testbed: &Testbed,
    ns: &str,
    server: &Server,
    metrics: &str,
    build_cache: &Path,
) -> kube_support::Operator {
    let node = testbed.real_node().expect("the testbed has a real node");
    let fixtures = build_common::fixtures();
    let base = build_common::push_base_to(node.registry(), None);
    let uv_cache = build_common::cache_root().join("uv-cache").display().to_string();
    kube_support::start_operator_with(
        testbed,
        ns,
        &[
            "--image-registry",
            &target(node),
            "--image-registry-insecure",
            "--build-base",
            &base,
            "--build-uv",
            &fixtures.uv.display().to_string(),
            "--build-cache-dir",
            &build_cache.display().to_string(),
            "--build-uv-cache",
            &uv_cache,
            "--yatai-endpoint",
            &server.url,
            "--metrics-listen",
            metrics,
        ],
        &[("YATAI_API_TOKEN", &server.token)],
    )
}

/// The operator's counters: (BentoDeployment reconciles, requests to the API server).
pub fn operator_counters(metrics: &str) -> (f64, f64) {
    let text = Http { base: format!("http://{metrics}"), token: None }.get("/metrics").text();
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no `{prefix}` in the operator's metrics:\n{text}"))
    };
    (
        value("yatai_operator_reconciles_total{controller=\"bentodeployment\"}"),
        value("yatai_operator_api_requests_total"),
    )
}

/// Whether the pod's `Ready` condition is true.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
