//! Reconcile against a mocked API server (as `bento_deployment::mock_tests`): the requests one
//! reconcile of a request whose image must be built makes, when its build environment names
//! a Secret that is not there.

use std::sync::Arc;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use yatai_kube_api::resources::BentoRequest;

use super::plan::reasons;
use super::{State, reconcile};
use crate::context::{Context, Namespaces, Settings};

/// A request checked (its image is not in the registry), so the next step is the build.
fn bento_request() -> BentoRequest {
    let cond = |type_: &str, status: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": "R", "message": message,
               "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2})
    };
    serde_json::from_value(json!({
        "apiVersion": "resources.yatai.ai/v1alpha1", "kind": "BentoRequest",
        "metadata": {"name": "iris--v1", "namespace": "ml", "uid": "uid-1", "generation": 2, "resourceVersion": "7"},
        "spec": {
            "bentoTag": "iris:v1",
            "image": "r.test/bentos:iris-v1",
            "downloadUrl": "http://files.test/iris.bento",
            "imageBuilderExtraContainerEnv": [
                {"name": "MODE", "value": "private"},
                {"name": "UV_INDEX_URL", "valueFrom": {"secretKeyRef": {"name": "index-creds", "key": "url"}}}
            ]
        },
        "status": {"observedGeneration": 2, "conditions": [
            cond("ImageExistsChecked", "True", "r.test/bentos:iris-v1"),
            cond("ImageExists", "False", "not in the registry"),
        ]}
    }))
    .unwrap()
}

fn respond(code: u16, body: Value) -> Response<Body> {
    Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
}

#[tokio::test]
async fn a_missing_build_secret_is_named_in_the_condition_and_retried_without_a_build() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Context::new(kube::Client::new(service, "default"), Settings::for_tests(Namespaces::All, "yatai-system"));
    let state = Arc::new(State::new(ctx));
    let server = tokio::spawn(async move {
        let mut seen: Vec<(String, String, Value)> = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (method, path) = (request.method().to_string(), request.uri().path().to_string());
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let answer = match (method.as_str(), path.as_str()) {
                ("GET", p) if p.ends_with("/bentorequests/iris--v1/status") => {
                    respond(200, serde_json::to_value(bento_request()).unwrap())
                }
                ("GET", p) if p.contains("/secrets/") => respond(
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
                ("PATCH", _) => respond(200, serde_json::to_value(bento_request()).unwrap()),
                _ => respond(
                    200,
                    json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null, "reportingController": "", "reportingInstance": "", "action": "", "reason": ""}),
                ),
            };
            send.send_response(answer);
            seen.push((method, path, body));
        }
        seen
    });

    let action = reconcile(Arc::new(bento_request()), state.clone()).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::requeue(super::plan::backoff(0)), "retried with backoff");
    assert!(state.builds.lock().unwrap().is_empty(), "no build started");
    drop(state);
    let seen = server.await.unwrap();
    let calls: Vec<String> = seen.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
    assert_eq!(
        calls,
        [
            "GET /apis/resources.yatai.ai/v1alpha1/namespaces/ml/bentorequests/iris--v1/status",
            "GET /api/v1/namespaces/ml/secrets/index-creds",
            "PATCH /apis/resources.yatai.ai/v1alpha1/namespaces/ml/bentorequests/iris--v1/status",
            "POST /apis/events.k8s.io/v1/namespaces/ml/events",
        ]
    );
    let conditions = seen[2].2["status"]["conditions"].as_array().unwrap();
    let building = conditions.iter().find(|c| c["type"] == "ImageBuilding").unwrap();
    assert_eq!(building["status"], "False");
    assert_eq!(building["reason"], reasons::SECRET_NOT_FOUND);
    let message = building["message"].as_str().unwrap();
    assert!(message.contains("UV_INDEX_URL") && message.contains("Secret ml/index-creds does not exist"), "{message}");
    assert_eq!(seen[3].2["type"], "Warning");
    assert_eq!(seen[3].2["reason"], reasons::SECRET_NOT_FOUND);
}
