//! The API in process: the router answers requests through `tower::oneshot`,
//! on a fresh SQLite store and a local blob directory, without a server, a
//! port or the bentoml client. Seconds, not minutes: the end-to-end suite
//! (`tests/` at the root) covers the same routes against real components.
//!
//! The OpenAPI document is compared with a reviewed snapshot
//! (`tests/snapshots/openapi.json`), so any change to the wire shows up in
//! review. After an intended change, regenerate it with
//! `UPDATE_SNAPSHOTS=1 cargo test -p yatai-api --test in_process` and read the diff.

mod common;

use axum::http::StatusCode;
use common::Api;
use serde_json::json;
use yatai_store::MemberRole;

#[tokio::test]
async fn the_openapi_document_matches_the_reviewed_snapshot() {
    let api = Api::new().await;
    let (status, doc) = api.call("GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/openapi.json");
    let rendered = serde_json::to_string_pretty(&doc).expect("json") + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &rendered).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("snapshot exists (UPDATE_SNAPSHOTS=1 writes it)");
    if expected != rendered {
        let (e, r): (Vec<_>, Vec<_>) = (expected.lines().collect(), rendered.lines().collect());
        let first = e.iter().zip(&r).position(|(a, b)| a != b).unwrap_or(e.len().min(r.len()));
        panic!(
            "the OpenAPI document changed (first difference at line {}):\n  snapshot: {:?}\n  now:      {:?}\n\
             If the change is intended, run UPDATE_SNAPSHOTS=1 cargo test -p yatai-api --test in_process \
             and commit the snapshot with the change.",
            first + 1,
            e.get(first),
            r.get(first)
        );
    }
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused_with_a_json_reason() {
    let api = Api::new().await;
    let (status, body) = api.call("GET", "/api/v1/auth/current", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap_or_default().contains("X-YATAI-API-TOKEN"), "{body}");
    let (status, _) = api.call("GET", "/api/v1/auth/current", Some("yatai_not-a-token"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = api.call("GET", "/api/v1/no/such/route", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn a_repository_created_by_one_organization_is_invisible_to_another() {
    let api = Api::new().await;
    let acme = api.member("acme", MemberRole::Admin, &["api"]).await;
    let rival = api.member("rival", MemberRole::Admin, &["api"]).await;
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/bento_repositories",
            Some(&acme),
            Some(json!({"name": "iris", "description": "", "labels": []})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "iris");
    let (status, _) = api.call("GET", "/api/v1/bento_repositories/iris", Some(&acme), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api.call("GET", "/api/v1/bento_repositories/iris", Some(&rival), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The rival may create its own repository of the same name; acme's is untouched.
    let (status, _) = api
        .call(
            "POST",
            "/api/v1/bento_repositories",
            Some(&rival),
            Some(json!({"name": "iris", "description": "theirs", "labels": []})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = api.call("GET", "/api/v1/bento_repositories/iris", Some(&acme), None).await;
    assert_eq!(body["description"], "");
}

#[tokio::test]
async fn a_read_only_token_cannot_write() {
    let api = Api::new().await;
    let reader = api.member("acme", MemberRole::Admin, &["read_organization"]).await;
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/model_repositories",
            Some(&reader),
            Some(json!({"name": "m", "description": "", "labels": []})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = api.call("GET", "/api/v1/model_repositories", Some(&reader), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_names_and_bodies_get_a_4xx_that_says_what_is_wrong() {
    let api = Api::new().await;
    let token = api.member("acme", MemberRole::Admin, &["api"]).await;
    for name in ["../etc", "UPPER", "", "a b"] {
        let (status, body) = api
            .call(
                "POST",
                "/api/v1/bento_repositories",
                Some(&token),
                Some(json!({"name": name, "description": "", "labels": []})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert!(!body["message"].as_str().unwrap_or_default().is_empty(), "{body}");
    }
    let (status, _) = api.call("POST", "/api/v1/bento_repositories", Some(&token), Some(json!({"nom": 1}))).await;
    assert!(status.is_client_error(), "{status}");
    // Deployments need a runtime: without one the API says so instead of failing later.
    let (status, body) =
        api.call("POST", "/api/v2/deployments", Some(&token), Some(json!({"bento": "iris:v1", "name": "iris"}))).await;
    assert!(status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE, "{status} {body}");
}
