//! Reconcile against a mocked API server (controller-rs's pattern): the exact requests one
//! reconcile makes, in order, and what it writes. Fast, and beside the real-cluster tests in
//! `tests/bento_deployment.rs`, never instead of them.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::watch;
use yatai_kube_api::serving::v2alpha1::{BentoDeployment, BentoDeploymentSpec, Ingress};

use super::{State, reconcile};
use crate::context::{Context, Namespaces, Settings};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn state() -> (Arc<State>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let ctx = Context::new(client, Settings::for_tests(Namespaces::All, "yatai-system"));
    let (_tx, suffix) = watch::channel(Some("10.0.0.7.sslip.io".to_string()));
    let metrics = ctx.metrics.controller("bentodeployment");
    (Arc::new(State { ctx, suffix, failures: Mutex::default(), metrics }), handle)
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
    let (state, handle) = state();
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
async fn a_serving_deployment_costs_one_read_per_input_and_one_apply_per_child() {
    let (state, handle) = state();
    let server = tokio::spawn(serve(handle, |method, uri, body| {
        let path = uri.split('?').next().unwrap();
        match (method, path) {
            ("GET", p) if p.ends_with("/bentoes/iris--v1") => ok(json!({
                "apiVersion": "resources.yatai.ai/v1alpha1", "kind": "Bento",
                "metadata": {"name": "iris--v1", "namespace": "ml"},
                "spec": {"tag": "iris:v1", "image": "r.test/b:yatai.iris.v1"}
            })),
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
            "GET /apis/resources.yatai.ai/v1alpha1/namespaces/ml/bentoes/iris--v1",
            "GET /api/v1/namespaces/yatai-system/configmaps/network",
            "PATCH /apis/apps/v1/namespaces/ml/deployments/iris",
            "PATCH /api/v1/namespaces/ml/services/iris",
            "PATCH /apis/autoscaling/v2/namespaces/ml/horizontalpodautoscalers/iris",
            "PATCH /apis/networking.k8s.io/v1/namespaces/ml/ingresses/iris",
            "PATCH /apis/serving.yatai.ai/v2alpha1/namespaces/ml/bentodeployments/iris/status",
            "POST /apis/events.k8s.io/v1/namespaces/ml/events",
        ],
        "no pod listing when the Deployment serves"
    );
    // Every apply is server-side, forced, by one field manager, and never sets replicas.
    for (method, uri, _) in &seen[2..6] {
        assert_eq!(method, "PATCH");
        assert!(uri.contains("fieldManager=yatai-operator") && uri.contains("force=true"), "{uri}");
    }
    assert!(seen[2].2["spec"].get("replicas").is_none(), "the HPA owns replicas");
    let status = &seen[6].2["status"];
    assert_eq!(status["url"], "http://iris-ml.10.0.0.7.sslip.io");
    assert_eq!(status["printerReady"], "1/1");
}
