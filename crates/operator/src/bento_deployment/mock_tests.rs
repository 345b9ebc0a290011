//! Reconcile against a mocked API server (controller-rs's pattern): the exact requests one
//! reconcile makes, in order, and what it writes. Fast, and beside the real-cluster tests in
//! `tests/bento_deployment.rs`, never instead of them.

use std::sync::Arc;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::watch;
use yatai_kube_api::serving::v2alpha1::{BentoDeployment, BentoDeploymentSpec, Ingress};

use yatai_kube_api::Bento;

use super::caches::filled;
use super::{APPLIED_DIGEST, State, reconcile};
use crate::context::{Context, Namespaces, Settings};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A reconcile's state whose caches hold `bentos` and nothing else.
fn state(bentos: Vec<Bento>) -> (Arc<State>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let ctx = Context::new(client, Settings::for_tests(Namespaces::All, "yatai-system"));
    let (_tx, suffix) = watch::channel(Some("10.0.0.7.sslip.io".to_string()));
    let metrics = ctx.metrics.controller("bentodeployment");
    (Arc::new(State::new(ctx, suffix, filled::caches(bentos), metrics)), handle)
}

fn iris_bento() -> Bento {
    serde_json::from_value(json!({
        "apiVersion": "resources.yatai.ai/v1alpha1", "kind": "Bento",
        "metadata": {"name": "iris--v1", "namespace": "ml"},
        "spec": {"tag": "iris:v1", "image": "r.test/b:yatai.iris.v1"}
    }))
    .unwrap()
}

fn bento_deployment() -> BentoDeployment {
    let mut bd = BentoDeployment::new(
        "iris",
        BentoDeploymentSpec {
            bento: "iris--v1".into(),
            ingress: Ingress { enabled: true, ..Default::default() },
            ..Default::default()
        },
    );
    bd.metadata.namespace = Some("ml".into());
    bd.metadata.uid = Some("uid-1".into());
    bd.metadata.generation = Some(3);
    bd
}

fn not_found() -> Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
    Response::builder().status(404).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap()
}

fn ok(body: Value) -> Response<Body> {
    Response::builder().status(200).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
}

/// Serves the requests one by one: each gets `respond`'s answer; returns what was asked.
async fn serve(
    mut handle: Handle,
    mut respond: impl FnMut(&str, &str, &Value) -> Response<Body>,
) -> Vec<(String, String, Value)> {
    let mut seen = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        send.send_response(respond(&method, &uri, &body));
        seen.push((method, uri, body));
    }
    seen
}

#[tokio::test]
async fn a_missing_bento_is_looked_up_twice_and_reported_once() {
    // Not in the cache: asked of the API server before being reported missing.
    let (state, handle) = state(vec![]);
    let server = tokio::spawn(serve(handle, |method, uri, body| match (method, uri) {
        ("GET", _) => not_found(),
        ("PATCH", _) => ok(
            json!({"apiVersion": "serving.yatai.ai/v2alpha1", "kind": "BentoDeployment", "metadata": {"name": "iris"}, "spec": {"bento": "x"}, "status": body["status"]}),
        ),
        _ => ok(
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null, "reportingController": "", "reportingInstance": "", "action": "", "reason": ""}),
        ),
    }));
    let action = reconcile(Arc::new(bento_deployment()), state.clone()).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::requeue(super::RESYNC));
    drop(state);
    let seen = server.await.unwrap();
    let calls: Vec<_> = seen.iter().map(|(m, u, _)| format!("{m} {}", u.split('?').next().unwrap())).collect();
    assert_eq!(
        calls,
        [
            "GET /apis/resources.yatai.ai/v1alpha1/namespaces/ml/bentoes/iris--v1",
            "GET /apis/resources.yatai.ai/v1alpha1/namespaces/ml/bentorequests/iris--v1",
            "PATCH /apis/serving.yatai.ai/v2alpha1/namespaces/ml/bentodeployments/iris/status",
            "POST /apis/events.k8s.io/v1/namespaces/ml/events",
        ]
    );
    let status = &seen[2].2["status"];
    let available = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Available").unwrap();
    assert_eq!((available["status"].as_str(), available["reason"].as_str()), (Some("False"), Some("BentoNotFound")));
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(seen[3].2["type"], "Warning");
}

#[tokio::test]
async fn a_new_deployment_reads_nothing_and_applies_each_child_once() {
    let (state, handle) = state(vec![iris_bento()]);
    let server = tokio::spawn(serve(handle, |method, uri, body| {
        let path = uri.split('?').next().unwrap();
        match (method, path) {
            ("GET", _) => not_found(),
            ("PATCH", p) if p.ends_with("/deployments/iris") => {
                // The API server answers an apply with the object, here already rolled out.
                let mut d = body.clone();
                d["metadata"]["generation"] = json!(1);
                d["status"] = json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1});
                ok(d)
            }
            ("PATCH", p) if p.ends_with("/status") => ok(
                json!({"apiVersion": "serving.yatai.ai/v2alpha1", "kind": "BentoDeployment", "metadata": {"name": "iris"}, "spec": {"bento": "x"}}),
            ),
            ("PATCH", _) => ok(body.clone()),
            _ => ok(
                json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null, "reportingController": "", "reportingInstance": "", "action": "", "reason": ""}),
            ),
        }
    }));
    reconcile(Arc::new(bento_deployment()), state.clone()).await.unwrap();
    drop(state);
    let seen = server.await.unwrap();
    let calls: Vec<_> = seen.iter().map(|(m, u, _)| format!("{m} {}", u.split('?').next().unwrap())).collect();
    assert_eq!(
        calls,
        [
            "PATCH /apis/apps/v1/namespaces/ml/deployments/iris",
            "PATCH /api/v1/namespaces/ml/services/iris",
            "PATCH /apis/autoscaling/v2/namespaces/ml/horizontalpodautoscalers/iris",
            "PATCH /apis/networking.k8s.io/v1/namespaces/ml/ingresses/iris",
            "PATCH /apis/serving.yatai.ai/v2alpha1/namespaces/ml/bentodeployments/iris/status",
            "POST /apis/events.k8s.io/v1/namespaces/ml/events",
        ],
        "the Bento and the network ConfigMap come from the caches; no pod listing when the Deployment serves"
    );
    // Every apply is server-side, forced, by one field manager, never sets replicas, and
    // marks the child with the digest of what was applied.
    for (method, uri, body) in &seen[..4] {
        assert_eq!(method, "PATCH");
        assert!(uri.contains("fieldManager=yatai-operator") && uri.contains("force=true"), "{uri}");
        assert_eq!(body["metadata"]["annotations"][APPLIED_DIGEST].as_str().map(str::len), Some(32), "{uri}");
    }
    assert!(seen[0].2["spec"].get("replicas").is_none(), "the HPA owns replicas");
    let status = &seen[4].2["status"];
    assert_eq!(status["url"], "http://iris-ml.10.0.0.7.sslip.io");
    assert_eq!(status["printerReady"], "1/1");
}

#[tokio::test]
async fn a_reconcile_woken_by_a_child_asks_nothing_when_nothing_changed() {
    // First reconcile: what it applies and writes.
    let (state, handle) = state(vec![iris_bento()]);
    let rolled_out = json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1});
    let answer = rolled_out.clone();
    let server = tokio::spawn(serve(handle, move |method, uri, body| match method {
        "PATCH" if body.get("status").is_some() => ok(
            json!({"apiVersion": "serving.yatai.ai/v2alpha1", "kind": "BentoDeployment", "metadata": {"name": "iris"}, "spec": {"bento": "x"}}),
        ),
        "PATCH" if uri.contains("/deployments/") => {
            let mut d = body.clone();
            d["metadata"]["generation"] = json!(1);
            d["status"] = answer.clone();
            ok(d)
        }
        "PATCH" => ok(body.clone()),
        _ => ok(
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null, "reportingController": "", "reportingInstance": "", "action": "", "reason": ""}),
        ),
    }));
    reconcile(Arc::new(bento_deployment()), state.clone()).await.unwrap();
    drop(state);
    let seen = server.await.unwrap();

    // The watches then hold the children as applied, the Deployment rolled out, and the
    // BentoDeployment with the status written.
    let served = |i: usize| {
        let mut o = seen[i].2.clone();
        o["metadata"]["namespace"] = json!("ml");
        o["metadata"]["generation"] = json!(1);
        o
    };
    let mut deployment = served(0);
    deployment["status"] = rolled_out;
    let caches = super::Caches {
        deployments: filled::store(vec![serde_json::from_value(deployment).unwrap()]),
        services: filled::store(vec![serde_json::from_value(served(1)).unwrap()]),
        hpas: filled::store(vec![serde_json::from_value(served(2)).unwrap()]),
        ingresses: filled::store(vec![serde_json::from_value(served(3)).unwrap()]),
        ..filled::caches(vec![iris_bento()])
    };
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Context::new(kube::Client::new(service, "default"), Settings::for_tests(Namespaces::All, "yatai-system"));
    let (_tx, suffix) = watch::channel(Some("10.0.0.7.sslip.io".to_string()));
    let metrics = ctx.metrics.controller("bentodeployment");
    let state = Arc::new(State::new(ctx, suffix, caches, metrics));
    // Children applied a moment ago by this process: not forced again before RESYNC.
    state.full_applies.lock().unwrap().insert("ml/iris".into(), std::time::Instant::now());
    let mut bd = bento_deployment();
    bd.status = Some(serde_json::from_value(seen[4].2["status"].clone()).unwrap());

    let server = tokio::spawn(serve(handle, |_, _, _| not_found()));
    reconcile(Arc::new(bd), state.clone()).await.unwrap();
    drop(state);
    let calls: Vec<_> = server.await.unwrap().into_iter().map(|(m, u, _)| format!("{m} {u}")).collect();
    assert!(calls.is_empty(), "a reconcile with nothing to change asked the API server: {calls:?}");
}
