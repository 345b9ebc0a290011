//! The registry's HTTP API directly: bad input, integrity, deletes and
//! garbage collection, authorisation, isolation between organizations,
//! events, OpenAPI.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// Creates model repository `repo` and version `version`; returns the
/// version's path.
fn create_model(http: &Http, repo: &str, version: &str) -> String {
    let r = http.post("/api/v1/model_repositories", &json!({"name": repo, "description": ""}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http.post(
        &format!("/api/v1/model_repositories/{repo}/models"),
        &json!({"version": version, "description": "", "manifest": model_manifest(), "build_at": "2026-11-24 19:44:50.976764", "labels": [{"key": "team", "value": "x"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    format!("/api/v1/model_repositories/{repo}/models/{version}")
}

/// The archive these tests upload for `payload`: archives must be tars, so
/// the payload travels as the member `./data` (and [`download`] unpacks it).
fn archive(payload: &[u8]) -> Vec<u8> {
    tar_of(&[("./data", payload)])
}

/// Downloads a version's archive; a 200's body is the payload inside it.
fn download(http: &Http, version_path: &str) -> Response {
    let mut r = http.get(&format!("{version_path}/download"));
    if r.status == 200 {
        r.body = tar_member(&r.body, "./data").expect("an archive made by archive()");
    }
    r
}

fn assert_error(r: &Response, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    let msg = body["message"].as_str().unwrap_or_else(|| panic!("no message in {body}"));
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
    assert!(body["code"].is_string());
}

#[test]
fn bad_tags_are_refused_with_a_clear_400() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    assert_error(&http.post("/api/v1/model_repositories", &json!({"name": "Iris CLF"})), 400, "lowercase");
    assert_error(&http.post("/api/v1/model_repositories", &json!({"name": "x".repeat(64)})), 400, "63");
    assert_error(&http.post("/api/v1/bento_repositories", &json!({"name": "-leading"})), 400, "bento name");
    assert_error(&http.get("/api/v1/model_repositories/under_score_"), 400, "model name");
    create_model(&http, "good", "v1");
    let r =
        http.post("/api/v1/model_repositories/good/models", &json!({"version": "V2", "manifest": model_manifest()}));
    assert_error(&r, 400, "model version");
    assert_error(&http.get("/api/v1/model_repositories/good/models/a..b."), 400, "model version");
    // Nothing was created by the refused requests.
    let list = http.get("/api/v1/model_repositories").json();
    assert_eq!(list["total"], 1, "{list}");
}

#[test]
fn malformed_bodies_are_refused_with_400_and_create_nothing() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    http.post("/api/v1/model_repositories", &json!({"name": "m"}));
    let r = http.raw(
        "POST",
        "/api/v1/model_repositories/m/models",
        &[("Content-Type", "application/json")],
        b"{\"version\": ",
        Some(12),
        false,
    );
    assert_error(&r, 400, "JSON");
    let r = http.post("/api/v1/model_repositories/m/models", &json!({"description": "no version"}));
    assert_error(&r, 400, "version");
    let r = http.post("/api/v1/model_repositories/m/models", &json!({"version": "v1", "manifest": {"module": ""}}));
    assert_error(&r, 400, "manifest");
    let r = http.post(
        "/api/v1/model_repositories/m/models",
        &json!({"version": "v1", "manifest": model_manifest(), "build_at": "yesterday"}),
    );
    assert_error(&r, 400, "build_at");
    let r = http.raw("POST", "/api/v1/model_repositories", &[("Content-Type", "text/plain")], b"{}", Some(2), false);
    assert_eq!(r.status, 415, "{}", r.text());
    assert_eq!(http.get("/api/v1/model_repositories/m/models/v1").status, 404);
}

#[test]
fn oversize_json_is_refused_with_413() {
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&["--max-json-body", "4KiB"]));
    let http = server.http();
    http.post("/api/v1/bento_repositories", &json!({"name": "big"}));
    let body = json!({"version": "v1", "description": "x".repeat(8 << 10), "manifest": null});
    let r = http.post("/api/v1/bento_repositories/big/bentos", &body);
    assert_error(&r, 413, "larger");
    assert_eq!(http.get("/api/v1/bento_repositories/big/bentos/v1").status, 404);
    // A body under the limit still works.
    let r = http.post("/api/v1/bento_repositories/big/bentos", &json!({"version": "v1", "manifest": null}));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn unknown_repositories_versions_and_routes_are_404_json() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    assert_error(&http.get("/api/v1/model_repositories/nope"), 404, "not found");
    assert_error(&http.get("/api/v1/model_repositories/nope/models/v1"), 404, "not found");
    assert_error(
        &http.post("/api/v1/model_repositories/nope/models", &json!({"version": "v1", "manifest": model_manifest()})),
        404,
        "not found",
    );
    assert_error(&http.put_bytes("/api/v1/model_repositories/nope/models/v1/upload", b"abc"), 404, "not found");
    assert_error(&http.get("/api/v1/no_such_route"), 404, "no route");
    assert_error(&http.raw("DELETE", "/healthz", &[], b"", Some(0), false), 405, "does not accept");
}

backend_test! {
    fn an_upload_shorter_than_its_content_length_is_refused_and_stores_nothing(backend: Backend) {
        let server = Server::start(backend);
        let http = server.http();
        let v = create_model(&http, "short", "v1");
        http.patch(&format!("{v}/start_upload"), None);
        let r = http.raw("PUT", &format!("{v}/upload"), &[("Content-Type", "application/octet-stream")], &[7u8; 500], Some(1000), true);
        assert_error(&r, 400, "500");
        let got = http.get(&v).json();
        assert_eq!(got["upload_status"], "failed", "{got}");
        assert!(got["upload_finished_reason"].as_str().unwrap().contains("1000"), "{got}");
        assert_eq!(download(&http, &v).status, 404);
        assert!(server.stored_archives().is_empty(), "{:?}", server.stored_archives());
        // The client can simply try again.
        let r = upload_payload(&http, &v, b"complete bytes");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(download(&http, &v).body, b"complete bytes");
    }
}

backend_test! {
    fn a_connection_cut_mid_upload_leaves_nothing_downloadable(backend: Backend) {
        let server = Server::start(backend);
        let http = server.http();
        let v = create_model(&http, "cut", "v1");
        http.patch(&format!("{v}/start_upload"), None);
        {
            let mut s = std::net::TcpStream::connect(http.addr()).unwrap();
            write!(s, "PUT {v}/upload HTTP/1.1\r\nHost: x\r\nX-YATAI-API-TOKEN: {}\r\nContent-Length: 10000000\r\n\r\n", server.token).unwrap();
            s.write_all(&[1u8; 1_000_000]).unwrap();
            // Dropped here: the connection closes 9 MB early.
        }
        let got = wait_for("the cut upload to be marked failed", Duration::from_secs(30), || {
            let got = http.get(&v).json();
            (got["upload_status"] == "failed").then_some(got)
        });
        assert!(got["upload_finished_reason"].as_str().unwrap().contains("interrupted") || got["upload_finished_reason"].as_str().unwrap().contains("1000000"), "{got}");
        assert_eq!(download(&http, &v).status, 404);
        wait_for("the partial object to be removed", Duration::from_secs(10), || server.stored_archives().is_empty().then_some(()));
    }
}

backend_test! {
    fn a_second_concurrent_upload_of_a_version_is_refused(backend: Backend) {
        let server = Server::start(backend);
        let http = server.http();
        let v = create_model(&http, "race", "v1");
        http.patch(&format!("{v}/start_upload"), None);
        let payload = vec![3u8; 2_000_000];
        let first_body = archive(&payload);
        let mut first = std::net::TcpStream::connect(http.addr()).unwrap();
        write!(first, "PUT {v}/upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-YATAI-API-TOKEN: {}\r\nContent-Length: {}\r\n\r\n", server.token, first_body.len()).unwrap();
        first.write_all(&first_body[..1_000_000]).unwrap();
        // Wait until the server is receiving the first upload.
        wait_for("the first upload to start", Duration::from_secs(10), || {
            server.log_text().contains("receiving a proxy upload").then_some(())
        });
        let r = http.put_bytes(&format!("{v}/upload"), b"second");
        assert_error(&r, 409, "in progress");
        first.write_all(&first_body[1_000_000..]).unwrap();
        let mut resp = String::new();
        std::io::Read::read_to_string(&mut first, &mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert_eq!(download(&http, &v).body, payload);
        assert_eq!(server.stored_archives().len(), 1);
    }
}

backend_test! {
    fn replacing_stored_bytes_needs_a_forced_push_and_the_old_archive_is_collected(backend: Backend) {
        let server = Server::start(backend);
        let http = server.http();
        let v = create_model(&http, "replace", "v1");
        assert_eq!(upload_payload(&http, &v, b"first content").status, 200);
        // A raw upload without start_upload (what only --force sends) is refused.
        let r = http.put_bytes(&format!("{v}/upload"), b"other content");
        assert_error(&r, 409, "--force");
        assert_eq!(download(&http, &v).body, b"first content");
        // Re-sending the same bytes is a no-op.
        assert_eq!(upload_payload(&http, &v, b"first content").status, 200);
        assert_eq!(server.stored_archives().len(), 1);
        // The forced flow (start_upload, then upload) replaces them.
        let r = upload_payload(&http, &v, b"second content");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(download(&http, &v).body, b"second content");
        assert_eq!(server.stored_archives().len(), 1, "the replaced archive was not collected");
    }
}

backend_test! {
    fn identical_archives_are_stored_once(backend: Backend) {
        let server = Server::start(backend);
        let http = server.http();
        let a = create_model(&http, "same-a", "v1");
        let b = create_model(&http, "same-b", "v7");
        let bytes = vec![9u8; 300_000];
        assert_eq!(upload_payload(&http, &a, &bytes).status, 200);
        assert_eq!(upload_payload(&http, &b, &bytes).status, 200);
        let (ja, jb) = (http.get(&a).json(), http.get(&b).json());
        assert_eq!(ja["archive_digest"], jb["archive_digest"]);
        assert_eq!(server.stored_archives().len(), 1);
        assert_eq!(download(&http, &b).body, bytes);
        // Deleting one keeps the shared archive for the other.
        assert_eq!(http.delete(&a).status, 200);
        assert_eq!(server.stored_archives().len(), 1);
        assert_eq!(download(&http, &b).body, bytes);
        assert_eq!(http.delete(&b).status, 200);
        assert!(server.stored_archives().is_empty());
    }
}

backend_test! {
    fn deletes_refuse_while_referenced_and_collect_archives(backend: Backend) {
        let server = Server::start(backend);
        let http = server.http();
        let m = create_model(&http, "used-model", "m1");
        assert_eq!(upload_payload(&http, &m, b"model bytes").status, 200);
        http.post("/api/v1/bento_repositories", &json!({"name": "svc"}));
        let bento_manifest = json!({"service": "service:Svc", "bentoml_version": "1.4.40", "size_bytes": 1, "models": ["used-model:m1"],
            "services": [{"name": "Svc", "models": [{"tag": "used-model:m1"}, {"tag": "not-pushed:v9"}]}]});
        let r = http.post("/api/v1/bento_repositories/svc/bentos", &json!({"version": "b1", "manifest": bento_manifest}));
        assert_eq!(r.status, 200, "{}", r.text());
        let b = "/api/v1/bento_repositories/svc/bentos/b1";
        assert_eq!(upload_payload(&http, b, b"bento bytes").status, 200);
        assert_eq!(server.stored_archives().len(), 2);

        let r = http.delete(&m);
        assert_error(&r, 409, "svc:b1");
        assert_error(&http.delete("/api/v1/model_repositories/used-model"), 409, "svc:b1");
        let users = http.get(&format!("{m}/bentos")).json();
        assert_eq!(users["items"][0]["version"], "b1");

        assert_eq!(http.delete(b).status, 200);
        assert_eq!(http.get(b).status, 404);
        assert_eq!(http.delete(&m).status, 200);
        assert_eq!(http.get(&m).status, 404);
        assert!(server.stored_archives().is_empty(), "{:?}", server.stored_archives());
        assert_eq!(http.delete("/api/v1/bento_repositories/svc").status, 200);
        assert_eq!(http.get("/api/v1/bento_repositories/svc").status, 404);
        let deleted = http.get("/api/v1/events?operation_name=deleted").json();
        assert_eq!(deleted["total"], 3, "{deleted}");
    }
}

backend_test! {
    fn organizations_cannot_see_each_other(backend: Backend) {
        let server = Server::start(backend);
        let admin = server.http();
        let v = create_model(&admin, "secret-model", "v1");
        assert_eq!(upload_payload(&admin, &v, b"secret").status, 200);

        server.admin(&["org", "create", "other"]);
        server.admin(&["user", "create", "bob", "--email", "bob@example.com", "--org", "other"]);
        let bob_token = server.admin(&["token", "create", "--name", "bob", "--user", "bob", "--org", "other"]).trim().to_owned();
        let bob = admin.with_token(&bob_token);
        assert_eq!(bob.get("/api/v1/current_org").json()["name"], "other");
        assert_eq!(bob.get("/api/v1/model_repositories/secret-model").status, 404);
        assert_eq!(bob.get(&v).status, 404);
        assert_eq!(bob.get(&format!("{v}/download")).status, 404);
        assert_eq!(bob.patch(&format!("{v}/presign_download_url"), None).status, 404);
        assert_eq!(bob.get("/api/v1/models").json()["total"], 0);
        assert_eq!(bob.get("/api/v1/events").json()["total"], 0);
        assert_eq!(bob.delete(&v).status, 404);
        // The same name in another organization is another repository.
        let bv = create_model(&bob, "secret-model", "v1");
        assert_eq!(upload_payload(&bob, &bv, b"bob's").status, 200);
        assert_eq!(download(&admin, &v).body, b"secret");
        assert_eq!(download(&bob, &bv).body, b"bob's");
        // And admin's token list does not show bob's token.
        let tokens = admin.get("/api/v1/api_tokens?all=true").json();
        assert!(tokens["items"].as_array().unwrap().iter().all(|t| t["name"] != "bob"), "{tokens}");
    }
}

#[test]
fn tokens_have_scopes_expire_and_can_be_revoked() {
    let server = Server::start(Backend::SqliteLocal);
    let admin = server.http();
    create_model(&admin, "scoped", "v1");

    let created = admin.post(
        "/api/v1/api_tokens",
        &json!({"name": "reader", "description": "", "scopes": ["read_organization"], "expired_at": null}),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    let created = created.json();
    let secret = created["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("yatai_"));
    let reader = admin.with_token(&secret);
    assert_eq!(reader.get("/api/v1/model_repositories/scoped").status, 200);
    assert_error(&reader.post("/api/v1/model_repositories", &json!({"name": "nope"})), 403, "may not");
    assert_error(&reader.post("/api/v1/api_tokens", &json!({"name": "escalate"})), 403, "may not");

    // The secret is shown once, never listed.
    let listed = admin.get("/api/v1/api_tokens").json();
    assert!(listed["items"].as_array().unwrap().iter().all(|t| t.get("token").is_none()), "{listed}");
    let uid = created["uid"].as_str().unwrap();
    assert_eq!(admin.delete(&format!("/api/v1/api_tokens/{uid}")).status, 200);
    assert_error(&reader.get("/api/v1/model_repositories/scoped"), 401, "not valid");

    let short = server.admin(&["token", "create", "--name", "short-lived", "--expires-in", "2s"]).trim().to_owned();
    assert_eq!(admin.with_token(&short).get("/api/v1/auth/current").status, 200);
    wait_for("the token to expire", Duration::from_secs(30), || {
        let r = admin.with_token(&short).get("/api/v1/auth/current");
        (r.status == 401).then_some(())
    });
    assert_error(&admin.with_token(&short).get("/api/v1/auth/current"), 401, "expired");
    assert_error(&admin.without_token().get("/api/v1/auth/current"), 401, "X-YATAI-API-TOKEN");
    // Tokens are stored hashed: the secret is nowhere in the database file.
    let db = std::fs::read(server.data_dir().join("yatai.db")).unwrap();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));
    assert!(!db.windows(server.token.len()).any(|w| w == server.token.as_bytes()));
}

#[test]
fn every_api_route_except_health_requires_a_token() {
    let server = Server::start(Backend::SqliteLocal);
    let doc = server.http().without_token().get("/api/openapi.json").json();
    let anon = server.http().without_token();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let concrete = path.replace(['{', '}'], "");
            let r = anon.request(&method.to_uppercase(), &concrete, None);
            if op.get("security").is_some() {
                assert_eq!(r.status, 401, "{method} {path} answered {} without a token", r.status);
                checked += 1;
            } else {
                assert!(
                    path.starts_with("/transfer/")
                        || path.contains("health")
                        || path == "/livez"
                        || path == "/api/v1/version",
                    "{method} {path} is public"
                );
            }
        }
    }
    assert!(checked > 40, "only {checked} routes checked");
}

#[test]
fn openapi_document_and_offline_swagger_ui_are_served() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http().without_token();
    let doc = http.get("/api/openapi.json").json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/v1/model_repositories/{name}/models/{version}/upload",
        "/api/v1/bento_repositories/{name}/bentos",
        "/api/v1/api_tokens",
        "/api/v1/events",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from the OpenAPI document");
    }
    assert!(doc["components"]["schemas"].get("ArtifactSchema").is_some());
    let ui = http.get("/api/docs/");
    assert_eq!(ui.status, 200);
    assert!(ui.text().to_lowercase().contains("swagger"), "{}", ui.text());
    let js = http.get("/api/docs/swagger-ui-bundle.js");
    assert_eq!(js.status, 200, "Swagger UI assets must be served by yatai itself");
    assert!(js.body.len() > 100_000);
}

#[test]
fn events_say_who_did_what_with_which_token() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    let v = create_model(&http, "audited", "v1");
    upload_payload(&http, &v, b"bytes");
    download(&http, &v);
    let events = http.get("/api/v1/events?count=10").json();
    let ops: Vec<&str> =
        events["items"].as_array().unwrap().iter().map(|e| e["operation_name"].as_str().unwrap()).collect();
    assert_eq!(ops, ["pulled", "pushed", "created", "created"], "{events}");
    let pushed = &events["items"][1];
    assert_eq!(pushed["resource_name"], "audited:v1");
    assert_eq!(pushed["creator"]["name"], "admin");
    assert_eq!(pushed["api_token_name"], "initial");
    assert_eq!(pushed["info"]["size_bytes"], archive(b"bytes").len());
    let filtered = http.get("/api/v1/current_org/events?operation_name=pulled").json();
    assert_eq!(filtered["total"], 1);
}

#[test]
fn signed_transfer_urls_reject_tampering() {
    let server =
        Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&["--transmission-strategy", "presigned"]));
    let http = server.http();
    let v = create_model(&http, "signed", "v1");
    let got = http.patch(&format!("{v}/presign_upload_url"), None).json();
    assert!(got["transmission_strategy"].is_null());
    let url = got["presigned_upload_url"].as_str().unwrap().to_owned();
    let path = url.trim_start_matches(&server.url).to_owned();
    let anon = http.without_token();
    let tampered = path.replace("signature=", "signature=00");
    assert_error(&anon.put_bytes(&tampered, b"evil"), 403, "signature");
    let other_upload = path.replacen("/transfer/uploads/", "/transfer/uploads/0", 1);
    assert_eq!(anon.put_bytes(&other_upload, b"evil").status, 403);
    let r = anon.put_bytes(&path, &archive(b"good"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("etag").is_some());
    let r = http.patch(&format!("{v}/finish_upload"), Some(&json!({"status": "success", "reason": ""})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upload_status"], "success");
    let dl = http.patch(&format!("{v}/presign_download_url"), None).json();
    let dl_path = dl["presigned_download_url"].as_str().unwrap().trim_start_matches(&server.url).to_owned();
    assert_eq!(anon.get(&dl_path).body, archive(b"good"));
    assert_eq!(anon.get(&dl_path.replace("expires=", "expires=1")).status, 403);
}

/// The operator's token (`YATAI_OPERATOR_API_TOKEN`, as the Helm chart sets it) reads the
/// registry and nothing more, and a new secret on restart revokes the old one.
#[test]
fn the_operator_token_only_reads_the_registry_and_rotates() {
    let first = format!("operator-{}", unique("secret"));
    let mut opts = ServerOptions::new(Backend::SqliteLocal);
    opts.env.push(("YATAI_OPERATOR_API_TOKEN".into(), first.clone()));
    let mut server = Server::start_with(opts);
    let v = create_model(&server.http(), "for-the-operator", "v1");
    assert_eq!(upload_payload(&server.http(), &v, b"weights").status, 200);

    let operator = server.http().with_token(&first);
    assert_eq!(download(&operator, &v).body, b"weights");
    assert_error(&operator.post("/api/v1/model_repositories", &json!({"name": "nope"})), 403, "may not");
    assert_error(&operator.post("/api/v1/api_tokens", &json!({"name": "escalate"})), 403, "may not");
    assert_error(&operator.post("/api/v2/deployments", &json!({"name": "x", "bento": "a:b"})), 403, "may not");
    let listed = server.http().get("/api/v1/api_tokens").json();
    let named: Vec<&Value> = listed["items"].as_array().unwrap().iter().filter(|t| t["name"] == "operator").collect();
    assert_eq!(named.len(), 1, "{listed}");
    assert_eq!(named[0]["scopes"], json!(["read_organization"]), "{listed}");

    // Restarted with the same secret: the same single token.
    server.restart();
    assert_eq!(download(&server.http().with_token(&first), &v).status, 200);
    // Rotated: the old secret is refused, the new one reads.
    let second = format!("operator-{}", unique("secret"));
    server.env.retain(|(k, _)| k != "YATAI_OPERATOR_API_TOKEN");
    server.env.push(("YATAI_OPERATOR_API_TOKEN".into(), second.clone()));
    server.restart();
    assert_error(&download(&server.http().with_token(&first), &v), 401, "not valid");
    assert_eq!(download(&server.http().with_token(&second), &v).body, b"weights");
    let listed = server.http().get("/api/v1/api_tokens").json();
    assert_eq!(listed["items"].as_array().unwrap().iter().filter(|t| t["name"] == "operator").count(), 1, "{listed}");
}

#[test]
fn a_restarted_server_keeps_data_tokens_and_bootstraps_once() {
    let mut server =
        Server::start_with(ServerOptions { random_token: true, ..ServerOptions::new(Backend::SqliteLocal) });
    assert!(server.banner.iter().any(|l| l.contains("bentoml cloud login --endpoint")), "{:?}", server.banner);
    let http = server.http();
    let v = create_model(&http, "durable", "v1");
    assert_eq!(upload_payload(&http, &v, b"kept").status, 200);
    server.restart();
    assert!(server.banner.iter().all(|l| !l.contains("yatai_")), "a second token was printed: {:?}", server.banner);
    let http = server.http();
    assert_eq!(download(&http, &v).body, b"kept");
}

backend_test! {
    fn abandoned_uploads_are_cleaned_up_by_the_janitor(backend: Backend) {
        let server = Server::start_with(ServerOptions::new(backend).args(&[
            "--transmission-strategy", "presigned", "--presign-ttl", "1s", "--upload-ttl", "1s", "--janitor-interval", "1s",
        ]));
        let http = server.http();
        let v = create_model(&http, "abandoned", "v1");
        let got = http.patch(&format!("{v}/presign_upload_url"), None).json();
        http.patch(&format!("{v}/start_upload"), None);
        let url = got["presigned_upload_url"].as_str().unwrap().to_owned();
        // The bytes arrive, but the client never calls finish_upload.
        let status = std::process::Command::new("curl")
            .args(["-sf", "-X", "PUT", "--data-binary", "abandoned bytes", &url])
            .status()
            .unwrap();
        assert!(status.success());
        if backend == Backend::SqliteLocal {
            // (With S3 the object sits in the bucket under blobs/ before it is a blob.)
            assert_eq!(server.stored_archives().len(), 1);
        }
        let got = wait_for("the janitor to give up on the upload", Duration::from_secs(30), || {
            let got = http.get(&v).json();
            (got["upload_status"] == "failed").then_some(got)
        });
        assert!(got["upload_finished_reason"].as_str().unwrap().contains("abandoned"), "{got}");
        wait_for("the abandoned object to be deleted", Duration::from_secs(30), || server.stored_archives().is_empty().then_some(()));
        assert_eq!(download(&http, &v).status, 404);
    }
}

/// M2: every free-text field of every registry and token body has a cap; a
/// request over one is refused with a message naming the field and the
/// limit, and stores nothing.
#[test]
fn fields_over_their_limits_are_refused_and_nothing_is_stored() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    let v = create_model(&http, "capped", "v1");
    let long_description = "d".repeat(64 * 1024 + 1);
    let many_labels: Vec<Value> = (0..65).map(|i| json!({"key": format!("k{i}"), "value": "v"})).collect();
    let long_value = vec![json!({"key": "k", "value": "v".repeat(4097)})];
    let mut big_manifest = model_manifest();
    big_manifest["metadata"] = json!({"blob": "m".repeat(1024 * 1024)});

    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("POST", "/api/v1/model_repositories", json!({"name": "new", "description": long_description}), "65536"),
        ("POST", "/api/v1/model_repositories", json!({"name": "new", "labels": many_labels}), "64"),
        ("POST", "/api/v1/bento_repositories", json!({"name": "new", "labels": long_value}), "4096"),
        ("PATCH", "/api/v1/model_repositories/capped", json!({"description": long_description}), "65536"),
        ("PATCH", "/api/v1/model_repositories/capped", json!({"labels": many_labels}), "64"),
        (
            "POST",
            "/api/v1/model_repositories/capped/models",
            json!({"version": "v2", "manifest": model_manifest(), "description": long_description}),
            "65536",
        ),
        (
            "POST",
            "/api/v1/model_repositories/capped/models",
            json!({"version": "v2", "manifest": model_manifest(), "labels": many_labels}),
            "64",
        ),
        (
            "POST",
            "/api/v1/model_repositories/capped/models",
            json!({"version": "v2", "manifest": big_manifest}),
            "1048576",
        ),
        ("PATCH", v.as_str(), json!({"description": long_description}), "65536"),
        ("PATCH", v.as_str(), json!({"manifest": big_manifest}), "1048576"),
        ("PATCH", v.as_str(), json!({"labels": long_value}), "4096"),
        ("POST", "/api/v1/api_tokens", json!({"name": "t", "description": long_description}), "65536"),
    ];
    for (method, path, body, limit) in &cases {
        let r = http.request(method, path, Some(body));
        assert_eq!(r.status, 400, "{method} {path}: {}", r.text());
        let msg = r.json()["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(limit), "{method} {path}: {msg:?} does not name the limit {limit}");
        assert!(msg.len() < 300, "{method} {path}: the message echoes the input: {}", msg.len());
    }
    // Nothing was created or changed.
    assert_eq!(http.get("/api/v1/model_repositories/new").status, 404);
    assert_eq!(http.get("/api/v1/bento_repositories/new").status, 404);
    assert_eq!(http.get("/api/v1/model_repositories/capped/models/v2").status, 404);
    let got = http.get(&v).json();
    assert_eq!(got["description"], "");
    assert_eq!(got["manifest"], model_manifest());
    assert_eq!(got["labels"], json!([{"key": "team", "value": "x"}]));
    let tokens = http.get("/api/v1/api_tokens").json();
    assert_eq!(tokens["total"], 1, "{tokens}");
    // At the limits, everything is accepted.
    let at_limit = json!({
        "description": "d".repeat(64 * 1024),
        "labels": (0..64).map(|i| json!({"key": format!("k{i}"), "value": "v".repeat(4096)})).collect::<Vec<_>>(),
    });
    let r = http.patch(&v, Some(&at_limit));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// M2: a page of versions whose manifests are all at the cap stops at the
/// list budget instead of holding them all in memory; paging on with `start`
/// returns the rest, and nothing is skipped.
#[test]
fn a_list_of_large_versions_stays_within_its_memory_bound() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    http.post("/api/v1/model_repositories", &json!({"name": "heavy"}));
    let mut big = model_manifest();
    big["metadata"] = json!({"blob": "m".repeat(1024 * 1024 - 300)});
    let n = 20;
    for i in 0..n {
        let r = http.post(
            "/api/v1/model_repositories/heavy/models",
            &json!({"version": format!("v{i:02}"), "manifest": big, "description": "d".repeat(60 * 1024)}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut seen = Vec::new();
    let mut pages = 0;
    for path in ["/api/v1/model_repositories/heavy/models", "/api/v1/models"] {
        seen.clear();
        while seen.len() < n {
            let r = http.get(&format!("{path}?start={}&count=1000", seen.len()));
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(r.body.len() <= 17 << 20, "{path}: a page of {} bytes", r.body.len());
            let page = r.json();
            assert_eq!(page["total"], n);
            let items = page["items"].as_array().unwrap();
            assert_eq!(page["count"], items.len());
            assert!(!items.is_empty() && items.len() < n, "{path}: {} items in one page", items.len());
            seen.extend(items.iter().map(|i| i["version"].as_str().unwrap().to_owned()));
            pages += 1;
        }
        let expected: Vec<String> = (0..n).rev().map(|i| format!("v{i:02}")).collect();
        assert_eq!(seen, expected, "{path}: paging skipped or repeated versions");
    }
    assert!(pages >= 4);
    // A repository list carries each repository's newest version, and is bounded the same way.
    let r = http.get("/api/v1/model_repositories?count=1000");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["items"][0]["latest_model"]["version"], "v19");
}

/// L3: a version literally named `latest` would shadow the alias (every
/// `name:latest` lookup would find it rather than the newest version), and
/// `size_bytes` must be a size.
#[test]
fn a_version_named_latest_and_impossible_sizes_are_refused() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    create_model(&http, "aliased", "v1");
    let v1 = "/api/v1/model_repositories/aliased/models/v1";
    assert_eq!(upload_payload(&http, v1, b"v1 bytes").status, 200);
    for kind in ["model", "bento"] {
        http.post(&format!("/api/v1/{kind}_repositories"), &json!({"name": "aliased"}));
        let r = http.post(
            &format!("/api/v1/{kind}_repositories/aliased/{kind}s"),
            &json!({"version": "latest", "manifest": model_manifest()}),
        );
        assert_error(&r, 400, "reserved");
    }
    assert_eq!(http.get("/api/v1/model_repositories/aliased/models/latest").json()["version"], "v1");
    let sizes = [json!(-1), json!(u64::MAX), json!((1u64 << 50) + 1), json!(1.5), json!("10")];
    for size in &sizes {
        let mut m = model_manifest();
        m["size_bytes"] = size.clone();
        let r = http.post("/api/v1/model_repositories/aliased/models", &json!({"version": "v2", "manifest": m}));
        assert_error(&r, 400, "size_bytes");
        let r = http.patch(v1, Some(&json!({"manifest": m})));
        assert_error(&r, 400, "size_bytes");
        let bento = json!({"service": "svc:Svc", "bentoml_version": "1.4.40", "size_bytes": size});
        let r = http.post("/api/v1/bento_repositories/aliased/bentos", &json!({"version": "v2", "manifest": bento}));
        assert_error(&r, 400, "size_bytes");
    }
    assert_eq!(http.get("/api/v1/model_repositories/aliased/models/v2").status, 404);
    assert_eq!(http.get(v1).json()["manifest"]["size_bytes"], 10);
}

/// Reads one response from a kept-alive connection: its head, and a body of
/// `Content-Length` bytes (the connection stays open).
fn read_one(s: &mut std::net::TcpStream) -> (String, Vec<u8>) {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed mid-head: {:?}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap().to_ascii_lowercase();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap()).unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    (head, body)
}

/// L4: a response sent before the request body was read (a bad path, no
/// token, over the body limit) says `Connection: close`, so a keep-alive
/// client does not send its next request into a closing connection; a
/// request whose body was read keeps the connection open.
#[test]
fn an_early_error_with_an_unread_body_says_connection_close() {
    use std::io::{Read, Write};
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&["--max-json-body", "4KiB"]));
    let http = server.http();
    http.post("/api/v1/model_repositories", &json!({"name": "kept"}));
    let body = serde_json::to_vec(&json!({"version": "v1", "manifest": model_manifest()})).unwrap();
    let big = vec![b' '; 8 << 10];
    let token = format!("X-YATAI-API-TOKEN: {}\r\n", server.token);
    let json_type = "Content-Type: application/json\r\n";
    let bytes_type = "Content-Type: application/octet-stream\r\n";
    // (method, path, token header, content type, body, status, whether the
    // body is certainly unread when the answer goes out). Over the body limit
    // the server may have read all of a small body: then it must keep the
    // connection usable instead.
    type Case<'a> = (&'a str, &'a str, &'a str, &'a str, &'a [u8], u16, bool);
    let cases: [Case; 4] = [
        (
            "PUT",
            "/api/v1/model_repositories/kept/models/Bad_Version/upload",
            token.as_str(),
            bytes_type,
            big.as_slice(),
            400,
            true,
        ),
        ("POST", "/api/v1/model_repositories/kept/models", "", json_type, body.as_slice(), 401, true),
        ("POST", "/api/v1/model_repositories/kept/models", token.as_str(), json_type, big.as_slice(), 413, false),
        ("POST", "/api/v1/model_repositories/kept/models", token.as_str(), "", body.as_slice(), 415, true),
    ];
    for (method, path, auth, content_type, payload, status, unread) in cases {
        let mut s = std::net::TcpStream::connect(http.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{content_type}Content-Length: {}\r\n\r\n",
            payload.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        // The server may answer (and stop reading) before all of the body is sent.
        let _ = s.write_all(payload);
        let (head, _) = read_one(&mut s);
        assert!(head.starts_with(&format!("http/1.1 {status}")), "{path}: {head}");
        if head.contains("connection: close") {
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            continue;
        }
        assert!(!unread, "{path}: a {status} with an unread body lacks Connection: close:\n{head}");
        // Without the header, the connection must serve the next request.
        s.write_all(format!("GET /api/v1/auth/current HTTP/1.1\r\nHost: x\r\n{token}\r\n").as_bytes()).unwrap();
        let (head, _) = read_one(&mut s);
        assert!(head.starts_with("http/1.1 200"), "{path}: the kept-alive connection failed: {head}");
    }
    // A request whose body was read keeps the connection, and a second request on it works.
    let mut s = std::net::TcpStream::connect(http.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for (i, version) in ["v1", "v2"].iter().enumerate() {
        let body = serde_json::to_vec(&json!({"version": version, "manifest": model_manifest()})).unwrap();
        let head = format!(
            "POST /api/v1/model_repositories/kept/models HTTP/1.1\r\nHost: x\r\n{token}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let (head, _) = read_one(&mut s);
        assert!(head.starts_with("http/1.1 200"), "request {i}: {head}");
        assert!(!head.contains("connection: close"), "request {i}: {head}");
    }
}

/// Fills a route template's parameters with the names of org A's objects.
fn concrete(path: &str, a: &BTreeMap<&str, String>) -> String {
    let kind = if path.contains("/model_repositories/") {
        "model"
    } else if path.contains("/bento_repositories/") {
        "bento"
    } else if path.contains("/org_secrets/") {
        "secret"
    } else if path.contains("/api_tokens/") {
        "token"
    } else {
        "deployment"
    };
    let mut out = String::new();
    for seg in path.split('/').skip(1) {
        out.push('/');
        let value = match seg {
            "{name}" => a[kind].clone(),
            "{version}" => a[&*format!("{kind}_version")].clone(),
            "{uid}" if kind == "token" => a["token_uid"].clone(),
            "{uid}" => a["build_uid"].clone(),
            "{cluster}" => "local".into(),
            "{namespace}" => a["namespace"].clone(),
            "{revision}" => a["revision"].clone(),
            other if other.starts_with('{') => panic!("no value for {other} in {path}: add it to the matrix"),
            other => other.into(),
        };
        out.push_str(&value);
    }
    out
}

/// A body that would change org A's object if the route let it through (else `{}`).
fn hostile_body(method: &str, path: &str, a: &BTreeMap<&str, String>) -> Option<Value> {
    if method == "GET" || method == "DELETE" {
        return None;
    }
    let content = json!({"type": "env", "stage": "runtime", "items": [{"key": "STOLEN", "value": "x"}]});
    Some(match path {
        p if p.ends_with("/org_secrets/{name}") => json!({"description": "pwned", "content": content}),
        p if p.ends_with("_repositories/{name}") => json!({"description": "pwned", "labels": []}),
        p if p.ends_with("/{version}") => json!({"description": "pwned", "labels": []}),
        "/api/v2/deployments" | "/api/v1/clusters/{cluster}/deployments" => {
            json!({"bento": a["bento_tag"], "name": "stolen", "secrets": [a["secret"]]})
        }
        p if p.ends_with("/deployments/{name}") => json!({"bento": a["bento_tag"], "secrets": [a["secret"]]}),
        p if p.ends_with("rollback") => json!({"revision_uid": a["revision"]}),
        _ => json!({}),
    })
}

/// What org A can see of its own objects: must read the same after everything another
/// organization and A's under-privileged members tried.
fn fingerprint(http: &Http, a: &BTreeMap<&str, String>) -> Vec<String> {
    let strip = |mut v: Value| {
        for key in ["last_used_at", "updated_at", "status_updated_at"] {
            if let Some(o) = v.as_object_mut() {
                o.remove(key);
            }
        }
        v.to_string()
    };
    let d = http.get(&format!("/api/v2/deployments/{}", a["deployment"])).json();
    vec![
        strip(http.get(&format!("/api/v1/bento_repositories/{}", a["bento"])).json()["description"].clone()),
        strip(http.get(&format!("/api/v1/bento_repositories/{}/bentos", a["bento"])).json()["total"].clone()),
        http.get(&format!("/api/v1/model_repositories/{}/models/{}", a["model"], a["model_version"])).text(),
        strip(http.get(&format!("/api/v1/org_secrets/{}", a["secret"])).json()["content"].clone()),
        strip(http.get(&format!("/api/v1/org_secrets/{}", a["secret"])).json()["description"].clone()),
        strip(d["status"].clone()),
        http.get(&format!("/api/v2/deployments/{}/revisions", a["deployment"])).text(),
        http.get("/api/v1/api_tokens").json()["total"].to_string(),
    ]
}

/// The isolation matrix, generated from the OpenAPI document: every authenticated route is
/// called with the names of organization A's objects by an admin of organization B (with
/// bodies that would change them), and by members of A whose role or token scope falls short
/// of what the route declares (`x-yatai-permission`). B gets a 4xx (or its own, empty view)
/// and never a byte of A's; the short-handed members get 403; A's objects read the same after.
#[test]
fn no_route_lets_another_organization_or_a_lesser_role_see_or_change_anything() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    client.ok(&["push", &iris.bento]);
    client.ok(&["secret", "create", "victim-secret-4d1f", "API_KEY=victim-value-8c2e"]);
    let (bento, bento_version) = iris.bento.split_once(':').unwrap();
    let model = http.get(&format!("/api/v1/bento_repositories/{bento}/bentos/{bento_version}/models")).json();
    let model =
        &model.as_array().or(model["items"].as_array()).unwrap_or_else(|| panic!("the bento's models: {model}"))[0];
    let created = http.post(
        "/api/v2/deployments",
        &json!({"bento": iris.bento, "name": "victim-dep-2b7a", "secrets": ["victim-secret-4d1f"]}),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(http.post("/api/v2/deployments/victim-dep-2b7a/terminate", &json!({})).status, 200);
    let revisions = http.get("/api/v2/deployments/victim-dep-2b7a/revisions").json();
    let token = http.post("/api/v1/api_tokens", &json!({"name": "victim-token-9e3c", "scopes": ["api"]})).json();
    let mut a: BTreeMap<&str, String> = BTreeMap::new();
    a.insert("bento", bento.into());
    a.insert("bento_version", bento_version.into());
    a.insert("bento_tag", iris.bento.clone());
    let repo = model["repository"]["name"].as_str().or(model["name"].as_str());
    a.insert("model", repo.unwrap_or_else(|| panic!("model repository in {model}")).into());
    a.insert("model_version", model["version"].as_str().expect("model version").into());
    a.insert("secret", "victim-secret-4d1f".into());
    a.insert("deployment", "victim-dep-2b7a".into());
    a.insert("namespace", created.json()["namespace"].as_str().unwrap_or("yatai").into());
    a.insert("revision", revisions["items"][0]["uid"].as_str().expect("a revision").into());
    a.insert("token_uid", token["uid"].as_str().expect("token uid").into());
    a.insert("build_uid", "no-such-build".into());
    let markers: Vec<String> = ["bento", "model", "model_version", "secret", "deployment", "token_uid", "revision"]
        .iter()
        .map(|k| a[k].clone())
        .chain(["victim-token-9e3c".into(), "victim-value-8c2e".into()])
        .collect();
    // An admin of A whose token has one narrow scope.
    let narrow = http.post("/api/v1/api_tokens", &json!({"name": "narrow", "scopes": ["read_cluster"]})).json();
    let narrow = http.with_token(narrow["token"].as_str().unwrap());
    let before = fingerprint(&http, &a);

    // B's admin, and A's members who lack the role or the scope a route needs.
    server.admin(&["org", "create", "other"]);
    server.admin(&["user", "create", "eve", "--email", "eve@example.com", "--org", "other", "--role", "admin"]);
    let eve =
        http.with_token(server.admin(&["token", "create", "--name", "eve", "--user", "eve", "--org", "other"]).trim());
    let mut by_role: BTreeMap<&str, Http> = BTreeMap::new();
    for role in ["guest", "developer"] {
        let user = format!("a-{role}");
        server.admin(&[
            "user",
            "create",
            &user,
            "--email",
            &format!("{user}@example.com"),
            "--org",
            "default",
            "--role",
            role,
        ]);
        let t = server.admin(&["token", "create", "--name", &user, "--user", &user]);
        by_role.insert(role, http.with_token(t.trim()));
    }

    let doc = http.without_token().get("/api/openapi.json").json();
    let rank = |r: &str| ["guest", "developer", "admin"].iter().position(|x| *x == r).unwrap();
    let (mut cross, mut denied) = (0, 0);
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(need) = op.get("x-yatai-permission") else {
                assert!(op.get("security").is_none(), "{method} {path} needs a token but declares no permission");
                continue;
            };
            let method = method.to_uppercase();
            let url = concrete(path, &a);
            let body = hostile_body(&method, path, &a);

            // Another organization: nothing of A's, whatever the status.
            let r = eve.request(&method, &url, body.as_ref());
            let text = r.text();
            // A name B sent may come back in the refusal; nothing else of A's may.
            let sent = format!("{url} {}", body.as_ref().map(Value::to_string).unwrap_or_default());
            for m in markers.iter().filter(|m| !sent.contains(m.as_str())) {
                assert!(
                    !text.contains(m.as_str()),
                    "{method} {url} showed org A's {m:?} to org B ({}): {text}",
                    r.status
                );
            }
            if path.contains('{') && !path.starts_with("/api/v1/clusters/{cluster}") || path.contains("/namespaces/") {
                assert!(r.status >= 400 && r.status < 500, "{method} {url} answered {} to org B: {text}", r.status);
            }
            cross += 1;

            // A's members below the route's role, and a token without a granting scope.
            let min_role = need["min_role"].as_str().unwrap();
            for (role, member) in &by_role {
                if rank(role) < rank(min_role) {
                    let r = member.request(&method, &url, body.as_ref());
                    assert_eq!(r.status, 403, "{method} {url} answered a {role} ({}): {}", r.status, r.text());
                    denied += 1;
                }
            }
            let scopes: Vec<&str> = need["scopes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
            if !scopes.contains(&"read_cluster") {
                let r = narrow.request(&method, &url, body.as_ref());
                assert_eq!(r.status, 403, "{method} {url} answered a read_cluster token ({}): {}", r.status, r.text());
                denied += 1;
            }
        }
    }
    assert!(cross > 80, "only {cross} routes tried across organizations");
    assert!(denied > 80, "only {denied} calls checked for role and scope");
    assert_eq!(fingerprint(&http, &a), before, "org A's objects changed");
    eprintln!("isolation matrix: {cross} routes tried by another organization, {denied} refusals by role or scope");
}
