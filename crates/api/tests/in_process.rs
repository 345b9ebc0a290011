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

/// Found by the property tests of the upload checks: `--max-artifact-size` held each part of a
/// multipart upload, but not the archive assembled from them, so two parts within the limit
/// stored an archive over it.
#[tokio::test]
async fn an_archive_assembled_from_parts_is_held_to_the_size_limit() {
    use axum::body::Body;
    use axum::http::Request;
    use sha2::Digest;

    const LIMIT: u64 = 3000;
    let (dir, store) = common::open_store().await;
    let api = Api::with_state(dir, store, |store, blobs| {
        let config = yatai_api::AppConfig {
            transmission: yatai_api::TransmissionMode::Multipart,
            max_artifact_size: Some(LIMIT),
            ..Default::default()
        };
        yatai_api::AppState::new(store, blobs, common::SIGNING_KEY, config)
    });
    let token = api.member("acme", MemberRole::Admin, &["api"]).await;
    let repo = json!({"name": "m", "description": "", "labels": []});
    let (status, body) = api.call_as("POST", "/api/v1/model_repositories", &token, Some(repo)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let manifest = json!({"module": "", "api_version": "v1", "bentoml_version": "1.4.40", "size_bytes": 10,
                          "metadata": {}, "context": {}, "options": {}});
    let version = json!({"version": "v1", "description": "", "manifest": manifest, "build_at": "2026-11-24 19:44:50"});
    let (status, body) = api.call_as("POST", "/api/v1/model_repositories/m/models", &token, Some(version)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v = "/api/v1/model_repositories/m/models/v1";
    let (status, body) = api.call_as("PATCH", &format!("{v}/start_multipart_upload"), &token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let upload_id = body["upload_id"].as_str().unwrap().to_owned();

    // A tar of 4 KiB in two parts of 2 KiB, each within the limit.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(2048);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "weights.bin", &[7u8; 2048][..]).unwrap();
    let archive = b.into_inner().unwrap();
    assert!(archive.len() as u64 > LIMIT);
    let mut parts = Vec::new();
    for (i, bytes) in archive.chunks(archive.len().div_ceil(2)).enumerate() {
        assert!(bytes.len() as u64 <= LIMIT);
        let n = i + 1;
        let presign = json!({"upload_id": upload_id, "part_number": n});
        let req = Request::builder()
            .method("PATCH")
            .uri(format!("{v}/presign_multipart_upload_url"))
            .header("host", "yatai.test")
            .header("content-type", "application/json");
        let (status, body) = api.send(req, Some(&token), Body::from(presign.to_string())).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let url = body["presigned_upload_url"].as_str().unwrap();
        let path = &url[url.find("/transfer/").expect("a URL yatai serves")..];
        let put = Request::builder().method("PUT").uri(path).header("content-length", bytes.len());
        let (status, body) = api.send(put, None, Body::from(bytes.to_vec())).await;
        assert_eq!(status, StatusCode::OK, "part {n}: {body}");
        let etag = format!("\"{}\"", &hex::encode(sha2::Sha256::digest(bytes))[..32]);
        parts.push(json!({"part_number": n, "etag": etag}));
    }
    let complete = json!({"upload_id": upload_id, "parts": parts});
    let (status, body) = api.call_as("PATCH", &format!("{v}/complete_multipart_upload"), &token, Some(complete)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let finish = json!({"status": "success", "reason": ""});
    let (status, body) = api.call_as("PATCH", &format!("{v}/finish_upload"), &token, Some(finish)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["message"].as_str().unwrap().contains(&LIMIT.to_string()), "{body}");
    let (status, body) = api.call_as("GET", v, &token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(body["upload_status"], "success", "{body}");
}
