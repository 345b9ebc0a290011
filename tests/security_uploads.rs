//! Attacks on the upload paths, performed against the real server: a second
//! or late writer to a presigned URL or part (C2), an altered stored object
//! offered for deduplication (C2), empty and non-tar archives (M1), archives
//! naming another tag (L3), and temporary files left by crashes (M3). Each
//! test asserts that the attack fails and that nothing stored changed.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::json;
use support::*;

/// Creates model `repo:version` (and its repository if needed); returns the
/// version's API path.
fn create_model(http: &Http, repo: &str, version: &str) -> String {
    let r = http.post("/api/v1/model_repositories", &json!({"name": repo, "description": ""}));
    assert!(r.status == 200 || r.status == 409, "{}", r.text());
    let r = http.post(
        &format!("/api/v1/model_repositories/{repo}/models"),
        &json!({"version": version, "description": "", "manifest": model_manifest(), "build_at": "2026-11-24 19:44:50.976764"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    format!("/api/v1/model_repositories/{repo}/models/{version}")
}

/// A model archive as the client makes it: `./model.yaml` naming the tag,
/// then the weights.
fn model_archive(name: &str, version: &str, weights: &[u8]) -> Vec<u8> {
    let yaml = format!("name: {name}\nversion: {version}\nmodule: ''\napi_version: v1\nlabels: {{}}\n");
    tar_of(&[("./model.yaml", yaml.as_bytes()), ("./weights.bin", weights)])
}

fn sha256(bytes: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// A second organization with its own token.
fn other_org(server: &Server, org: &str) -> Http {
    server.admin(&["org", "create", org]);
    let user = format!("{org}-user");
    server.admin(&["user", "create", &user, "--email", &format!("{user}@example.com"), "--org", org]);
    let token = server.admin(&["token", "create", "--name", &user, "--user", &user, "--org", org]).trim().to_owned();
    server.http().with_token(&token)
}

fn assert_error(r: &Response, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let msg = r.json()["message"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
}

/// PUTs `body` to an upload URL the server handed out: its own signed URL,
/// or S3's (sent with curl, which signs nothing and keeps the URL's host).
/// Returns the status and the ETag.
fn put_url(server: &Server, url: &str, body: &[u8]) -> (u16, Option<String>) {
    if let Some(path) = url.strip_prefix(&server.url) {
        let r = server.http().without_token().put_bytes(path, body);
        let etag = r.header("etag").map(str::to_owned);
        return (r.status, etag);
    }
    let file = server.scratch.path().join(unique("body-"));
    std::fs::write(&file, body).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "-X", "PUT", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(url)
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let etag = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("etag").then(|| v.trim().to_owned())
    });
    (status, etag)
}

/// Pushes `bytes` to version `v` the way the bentoml client does in the
/// transfer mode the server gives for it. Returns the response of the step
/// that makes the bytes the version's content (the proxy PUT, or
/// finish_upload), or of the first step that failed.
fn push(server: &Server, http: &Http, v: &str, bytes: &[u8]) -> Response {
    let got = http.get(v).json();
    let start = |http: &Http| {
        let r = http.patch(&format!("{v}/start_upload"), None);
        assert_eq!(r.status, 200, "{}", r.text());
    };
    match got["transmission_strategy"].as_str() {
        Some("proxy") => {
            start(http);
            http.put_bytes(&format!("{v}/upload"), bytes)
        }
        None => {
            let url = http.patch(&format!("{v}/presign_upload_url"), None).json()["presigned_upload_url"]
                .as_str()
                .unwrap()
                .to_owned();
            start(http);
            if let Some(path) = url.strip_prefix(&server.url) {
                // yatai's own presigned URL refuses some bodies at the PUT already (an empty one).
                let r = server.http().without_token().put_bytes(path, bytes);
                if r.status != 200 {
                    return r;
                }
            } else {
                let (status, _) = put_url(server, &url, bytes);
                assert_eq!(status, 200, "the presigned PUT failed");
            }
            http.patch(&format!("{v}/finish_upload"), Some(&json!({"status": "success", "reason": ""})))
        }
        Some(_) => {
            start(http);
            let (upload_id, etag) = put_part(server, http, v, bytes);
            let r = http.patch(
                &format!("{v}/complete_multipart_upload"),
                Some(&json!({"upload_id": upload_id, "parts": [{"part_number": 1, "etag": etag}]})),
            );
            if r.status != 200 {
                return r;
            }
            http.patch(&format!("{v}/finish_upload"), Some(&json!({"status": "success", "reason": ""})))
        }
    }
}

/// Starts a multipart upload and PUTs `bytes` as its part 1; returns the
/// upload id and the part's ETag.
fn put_part(server: &Server, http: &Http, v: &str, bytes: &[u8]) -> (String, String) {
    let upload_id =
        http.patch(&format!("{v}/start_multipart_upload"), None).json()["upload_id"].as_str().unwrap().to_owned();
    let url = part_url(http, v, &upload_id);
    let (status, etag) = put_url(server, &url, bytes);
    assert_eq!(status, 200, "the part PUT failed");
    (upload_id, etag.expect("an ETag"))
}

fn part_url(http: &Http, v: &str, upload_id: &str) -> String {
    let r = http
        .patch(&format!("{v}/presign_multipart_upload_url"), Some(&json!({"upload_id": upload_id, "part_number": 1})));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["presigned_upload_url"].as_str().unwrap().to_owned()
}

fn download(http: &Http, v: &str) -> Vec<u8> {
    let r = http.get(&format!("{v}/download"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.body
}

/// The archive a version serves is exactly the bytes of the digest it
/// records.
fn assert_serves(http: &Http, v: &str, expected: &[u8]) {
    let got = download(http, v);
    assert!(got == expected, "{v} serves {} bytes, not the {} pushed", got.len(), expected.len());
    let digest = http.get(v).json()["archive_digest"].as_str().unwrap().to_owned();
    assert_eq!(digest, format!("sha256:{}", sha256(expected)));
}

/// Opens a PUT with `Content-Length: body.len()` and sends the first
/// `sent` bytes, leaving the rest for later.
fn start_slow_put(http: &Http, path: &str, body: &[u8], sent: usize) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(http.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "PUT {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
    s.write_all(&body[..sent]).unwrap();
    s
}

fn finish_slow_put(mut s: std::net::TcpStream, rest: &[u8]) -> String {
    // The server may already have answered and closed (a refused PUT).
    let _ = s.write_all(rest);
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp
}

fn wait_log(server: &Server, needle: &str, count: usize) {
    wait_for(&format!("{count} × {needle:?} in the server log"), Duration::from_secs(20), || {
        (server.log_text().matches(needle).count() >= count).then_some(())
    });
}

/// The attack of the issue, as it was reported: org B starts a slow PUT of
/// EVIL bytes to its presigned URL, PUTs bytes X fast, finishes; then the
/// slow PUT lands. Org A then pushes X and must get X back, not EVIL.
#[test]
fn a_slow_presigned_put_holds_its_upload_and_cannot_poison_another_org() {
    let server =
        Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&["--transmission-strategy", "presigned"]));
    let org_a = server.http();
    let org_b = other_org(&server, "org-b");
    let x = model_archive("shared", "v1", &[b'x'; 2048]);
    let evil = model_archive("shared", "v1", &b"EVIL".repeat(100_000));

    let vb = create_model(&org_b, "shared", "v1");
    let url = org_b.patch(&format!("{vb}/presign_upload_url"), None).json()["presigned_upload_url"]
        .as_str()
        .unwrap()
        .to_owned();
    org_b.patch(&format!("{vb}/start_upload"), None);
    let path = url.strip_prefix(&server.url).unwrap().to_owned();
    let slow = start_slow_put(&org_b, &path, &evil, 100_000);
    wait_log(&server, "receiving a presigned upload", 1);

    // The fast PUT is refused while the slow one holds the upload...
    assert_error(&org_b.without_token().put_bytes(&path, &x), 409, "in progress");
    // ...and the upload cannot be finished before its bytes are complete.
    let r = org_b.patch(&format!("{vb}/finish_upload"), Some(&json!({"status": "success", "reason": ""})));
    assert_error(&r, 409, "still being received");
    assert_eq!(org_b.get(&format!("{vb}/download")).status, 404);

    let resp = finish_slow_put(slow, &evil[100_000..]);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // A PUT after the bytes arrived is refused too.
    assert_eq!(org_b.without_token().put_bytes(&path, &x).status, 409);
    let r = org_b.patch(&format!("{vb}/finish_upload"), Some(&json!({"status": "success", "reason": ""})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_serves(&org_b, &vb, &evil);

    // Org A pushes X: it is stored as X, and A gets X back.
    let va = create_model(&org_a, "shared", "v1");
    assert_eq!(push(&server, &org_a, &va, &x).status, 200);
    assert_serves(&org_a, &va, &x);
    assert_serves(&org_b, &vb, &evil);
}

backend_test! {
    /// The reported race the other way round: X is PUT and finished first,
    /// then a late PUT of EVIL arrives at the same presigned URL (a slow
    /// one, or simply a second one while the URL is still valid).
    fn a_late_put_to_a_presigned_url_never_replaces_the_finished_archive(backend: Backend) {
        let server = Server::start_with(ServerOptions::new(backend).args(&["--transmission-strategy", "presigned"]));
        let org_a = server.http();
        let org_b = other_org(&server, "org-b");
        let x = model_archive("shared", "v1", &[b'x'; 2048]);
        let evil = model_archive("shared", "v1", &b"EVIL".repeat(100_000));

        let vb = create_model(&org_b, "shared", "v1");
        let url = org_b.patch(&format!("{vb}/presign_upload_url"), None).json()["presigned_upload_url"]
            .as_str()
            .unwrap()
            .to_owned();
        org_b.patch(&format!("{vb}/start_upload"), None);
        if backend == Backend::SqliteLocal {
            // A slow PUT that only starts now is refused as soon as its
            // headers arrive...
            let path = url.strip_prefix(&server.url).unwrap().to_owned();
            assert_eq!(put_url(&server, &url, &x).0, 200);
            let mut slow = start_slow_put(&org_b, &path, &evil, 1000);
            // Refused before its body is read: the answer comes at once.
            let mut resp = String::new();
            let _ = slow.read_to_string(&mut resp);
            assert!(resp.starts_with("HTTP/1.1 409"), "{resp}");
        } else {
            assert_eq!(put_url(&server, &url, &x).0, 200);
        }
        let r = org_b.patch(&format!("{vb}/finish_upload"), Some(&json!({"status": "success", "reason": ""})));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_serves(&org_b, &vb, &x);

        // ...and so is any PUT after the finish. On S3 the bucket accepts it
        // (the URL is valid until it expires), but it lands on an object
        // the version no longer uses.
        let (status, _) = put_url(&server, &url, &evil);
        if backend == Backend::SqliteLocal {
            assert!(status == 404 || status == 409, "a late PUT answered {status}");
        }
        // Finishing again changes nothing either.
        let r = org_b.patch(&format!("{vb}/finish_upload"), Some(&json!({"status": "success", "reason": ""})));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_serves(&org_b, &vb, &x);

        // Org A pushes the same bytes X: deduplicated onto B's blob, which
        // still holds exactly X.
        let va = create_model(&org_a, "shared", "v1");
        assert_eq!(push(&server, &org_a, &va, &x).status, 200);
        assert_serves(&org_a, &va, &x);
        if backend == Backend::SqliteLocal {
            // (On S3 the late PUT left an object no record knows, for the stray sweep.)
            assert_eq!(server.stored_archives().len(), 1, "{:?}", server.stored_archives());
        }
    }
}

backend_test! {
    /// A part URL of a completed multipart upload cannot change its archive.
    fn a_part_put_after_completion_never_replaces_the_archive(backend: Backend) {
        let server = Server::start_with(ServerOptions::new(backend).args(&["--transmission-strategy", "multipart"]));
        let org_a = server.http();
        let org_b = other_org(&server, "org-b");
        let x = model_archive("shared", "v1", &[b'x'; 2048]);
        let evil = model_archive("shared", "v1", &b"EVIL".repeat(100_000));

        let vb = create_model(&org_b, "shared", "v1");
        org_b.patch(&format!("{vb}/start_upload"), None);
        let (upload_id, etag) = put_part(&server, &org_b, &vb, &x);
        let url = part_url(&org_b, &vb, &upload_id);
        let r = org_b.patch(
            &format!("{vb}/complete_multipart_upload"),
            Some(&json!({"upload_id": upload_id, "parts": [{"part_number": 1, "etag": etag}]})),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        // Completing twice is refused: one assembler per upload.
        let r = org_b.patch(
            &format!("{vb}/complete_multipart_upload"),
            Some(&json!({"upload_id": upload_id, "parts": [{"part_number": 1, "etag": etag}]})),
        );
        assert_eq!(r.status, 409, "{}", r.text());
        let (status, _) = put_url(&server, &url, &evil);
        if backend == Backend::SqliteLocal {
            assert!(status == 404 || status == 409, "a part PUT after completion answered {status}");
        }
        let r = org_b.patch(&format!("{vb}/finish_upload"), Some(&json!({"status": "success", "reason": ""})));
        assert_eq!(r.status, 200, "{}", r.text());
        let (status, _) = put_url(&server, &url, &evil);
        if backend == Backend::SqliteLocal {
            assert!(status == 404 || status == 409, "a part PUT after the finish answered {status}");
        }
        assert_serves(&org_b, &vb, &x);
        let va = create_model(&org_a, "shared", "v1");
        assert_eq!(push(&server, &org_a, &va, &x).status, 200);
        assert_serves(&org_a, &va, &x);
    }
}

/// Parts that yatai receives itself: one writer per part, and no assembly
/// while a part is still arriving.
#[test]
fn a_part_being_received_cannot_be_raced_or_assembled_early() {
    let server =
        Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&["--transmission-strategy", "multipart"]));
    let http = server.http();
    let good = model_archive("parts", "v1", &[b'g'; 300_000]);
    let v = create_model(&http, "parts", "v1");
    http.patch(&format!("{v}/start_upload"), None);
    let upload_id =
        http.patch(&format!("{v}/start_multipart_upload"), None).json()["upload_id"].as_str().unwrap().to_owned();
    let url = part_url(&http, &v, &upload_id);
    let path = url.strip_prefix(&server.url).unwrap().to_owned();
    let slow = start_slow_put(&http, &path, &good, 100_000);
    wait_log(&server, "receiving a part", 1);
    assert_error(&http.without_token().put_bytes(&path, b"EVIL"), 409, "already being received");
    let r = http.patch(
        &format!("{v}/complete_multipart_upload"),
        Some(&json!({"upload_id": upload_id, "parts": [{"part_number": 1, "etag": "\"whatever\""}]})),
    );
    assert_error(&r, 409, "still being received");
    let resp = finish_slow_put(slow, &good[100_000..]);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let etag = resp
        .lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("etag")).map(|(_, v)| v.trim().to_owned())
        })
        .expect("an ETag");
    // The refused complete gave the upload back: completing now works.
    let r = http.patch(
        &format!("{v}/complete_multipart_upload"),
        Some(&json!({"upload_id": upload_id, "parts": [{"part_number": 1, "etag": etag}]})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http.patch(&format!("{v}/finish_upload"), Some(&json!({"status": "success", "reason": ""})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_serves(&http, &v, &good);
}

/// An object that no longer holds the bytes of its recorded digest (as the
/// race above left them before it was fixed) is never handed to another
/// organization by deduplication: the new upload's verified bytes replace it.
#[test]
fn an_altered_stored_archive_is_not_trusted_for_deduplication() {
    let server = Server::start(Backend::SqliteLocal);
    let org_a = server.http();
    let org_b = other_org(&server, "org-b");
    let x = model_archive("shared", "v1", &[b'x'; 2048]);
    let evil = model_archive("shared", "v1", &b"EVIL".repeat(100_000));
    let vb = create_model(&org_b, "shared", "v1");
    assert_eq!(push(&server, &org_b, &vb, &x).status, 200);
    let stored = server.stored_archives();
    assert_eq!(stored.len(), 1);
    std::fs::write(&stored[0], &evil).unwrap();

    let va = create_model(&org_a, "shared", "v1");
    let r = push(&server, &org_a, &va, &x);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_serves(&org_a, &va, &x);
    // B's version shares the repaired blob.
    assert_serves(&org_b, &vb, &x);
    assert_eq!(server.stored_archives().len(), 1, "{:?}", server.stored_archives());
    assert!(server.log_text().contains("does not hold the bytes of its digest"));
}

backend_test! {
    /// M1: an empty or non-tar body is refused in every transfer mode, and
    /// the archive stored before stays, with its status.
    fn empty_and_non_tar_archives_are_refused_and_keep_the_stored_one(backend: Backend) {
        for mode in ["proxy", "presigned", "multipart"] {
            let server = Server::start_with(ServerOptions::new(backend).args(&["--transmission-strategy", mode]));
            let http = server.http();
            let good = model_archive("m1", "v1", &[b'g'; 5000]);
            let v = create_model(&http, "m1", "v1");
            let r = push(&server, &http, &v, &good);
            assert_eq!(r.status, 200, "{mode}: {}", r.text());
            let bad: [(&[u8], &str); 3] = [
                (b"", "empty"),
                (b"EVIL: definitely not a tar file", "not a tar"),
                (&[0u8; 10240], "no members"),
            ];
            for (body, needle) in bad {
                if mode == "multipart" && body.is_empty() {
                    continue; // an empty part is not something S3 assembles
                }
                let r = push(&server, &http, &v, body);
                assert_error(&r, 400, needle);
                let got = http.get(&v).json();
                assert_eq!(got["upload_status"], "success", "{mode}: {got}");
                assert_serves(&http, &v, &good);
            }
            // A version with no archive yet is left failed, with the reason.
            let fresh = create_model(&http, "m1", "v2");
            assert_error(&push(&server, &http, &fresh, b"EVIL"), 400, "not a tar");
            let got = http.get(&fresh).json();
            assert_eq!(got["upload_status"], "failed", "{mode}: {got}");
            assert!(got["upload_finished_reason"].as_str().unwrap().contains("not a tar"), "{got}");
            assert_eq!(http.get(&format!("{fresh}/download")).status, 404);
            wait_for("the refused objects to be deleted", Duration::from_secs(20), || {
                (server.stored_archives().len() == 1).then_some(())
            });
        }
    }
}

/// M1 with the real client: after a refused empty upload, `bentoml models
/// pull` still gets the model that was pushed.
#[test]
fn the_client_still_pulls_a_model_after_a_refused_empty_upload() {
    let server = Server::start(Backend::SqliteLocal);
    let client = server.client();
    let tag = client.create_model("pulled-after-attack", 100_000);
    client.ok(&["models", "push", &tag]);
    let (name, version) = tag.split_once(':').unwrap();
    let v = format!("/api/v1/model_repositories/{name}/models/{version}");
    let http = server.http();
    http.patch(&format!("{v}/start_upload"), None);
    assert_error(&http.put_bytes(&format!("{v}/upload"), b""), 400, "empty");
    let other = server.client();
    other.ok(&["models", "pull", &tag]);
    let pulled = std::fs::read(other.model_dir(&tag).join("weights.bin")).unwrap();
    assert_eq!(pulled, std::fs::read(client.model_dir(&tag).join("weights.bin")).unwrap());
}

backend_test! {
    /// L3: the client takes the tag from the archive's manifest on pull, so
    /// an archive naming another tag than the one it is pushed as is refused.
    fn an_archive_whose_manifest_names_another_tag_is_refused(backend: Backend) {
        let server = Server::start(backend);
        let http = server.http();
        let v = create_model(&http, "named", "v1");
        assert_error(&push(&server, &http, &v, &model_archive("named", "v2", b"w")), 400, "names version \"v2\"");
        assert_error(&push(&server, &http, &v, &model_archive("other", "v1", b"w")), 400, "names name \"other\"");
        assert_eq!(http.get(&v).json()["upload_status"], "failed");
        let good = model_archive("named", "v1", b"w");
        assert_eq!(push(&server, &http, &v, &good).status, 200);
        // A --force push of a mislabelled archive keeps the good one.
        assert_error(&push(&server, &http, &v, &model_archive("named", "v9", b"w")), 400, "model.yaml");
        assert_serves(&http, &v, &good);

        http.post("/api/v1/bento_repositories", &json!({"name": "svc"}));
        let r = http.post("/api/v1/bento_repositories/svc/bentos", &json!({"version": "b1", "manifest": null}));
        assert_eq!(r.status, 200, "{}", r.text());
        let b = "/api/v1/bento_repositories/svc/bentos/b1";
        let bento = |version: &str| {
            let yaml = format!("service: service:Svc\nname: svc\nversion: {version}\nspec: 2\n");
            tar_of(&[("./README.md", b"hi"), ("./bento.yaml", yaml.as_bytes()), ("./src/service.py", b"x = 1\n")])
        };
        assert_error(&push(&server, &http, b, &bento("b2")), 400, "bento.yaml names version \"b2\"");
        assert_eq!(push(&server, &http, b, &bento("b1")).status, 200);
        assert_serves(&http, b, &bento("b1"));
    }
}

/// M3: temporary files of uploads a crash interrupted are swept when the
/// server starts and by the janitor (never those of uploads still running);
/// `yatai gc` sweeps those idle for an hour (a running server may own
/// fresher ones).
#[test]
fn temporary_files_of_crashed_uploads_are_swept() {
    let mut server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&["--janitor-interval", "1s"]));
    let tmp = server.data_dir().join("artifacts").join("tmp");
    let partials = |tmp: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect();
        v.sort();
        v
    };
    let http = server.http();
    let v = create_model(&http, "crashy", "v1");
    http.patch(&format!("{v}/start_upload"), None);
    let mut s = std::net::TcpStream::connect(http.addr()).unwrap();
    write!(
        s,
        "PUT {v}/upload HTTP/1.1\r\nHost: x\r\nX-YATAI-API-TOKEN: {}\r\nContent-Length: 10000000\r\n\r\n",
        server.token
    )
    .unwrap();
    s.write_all(&[1u8; 1_000_000]).unwrap();
    wait_for("the partial file to appear", Duration::from_secs(20), || (!partials(&tmp).is_empty()).then_some(()));
    server.crash();
    drop(s);
    // Earlier crashes left more.
    for i in 0..6 {
        std::fs::write(tmp.join(format!("earlier{i}.partial")), vec![0u8; 10_000]).unwrap();
    }
    assert_eq!(partials(&tmp).len(), 7);
    server.start_again();
    wait_for("the sweep at start", Duration::from_secs(20), || partials(&tmp).is_empty().then_some(()));

    // While an upload runs, the janitor sweeps a crash's leftovers but not
    // the running upload's file.
    let http = server.http();
    let good = model_archive("crashy", "v1", &[b'w'; 2_000_000]);
    http.patch(&format!("{v}/start_upload"), None);
    let mut slow = std::net::TcpStream::connect(http.addr()).unwrap();
    write!(slow, "PUT {v}/upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-YATAI-API-TOKEN: {}\r\nContent-Length: {}\r\n\r\n", server.token, good.len()).unwrap();
    slow.write_all(&good[..1_000_000]).unwrap();
    let running = wait_for("the running upload's file", Duration::from_secs(20), || {
        let p = partials(&tmp);
        (p.len() == 1).then(|| p[0].clone())
    });
    std::fs::write(tmp.join("leftover.partial"), b"left").unwrap();
    wait_for("the janitor to sweep the leftover", Duration::from_secs(20), || {
        (partials(&tmp) == [running.clone()]).then_some(())
    });
    slow.write_all(&good[1_000_000..]).unwrap();
    let mut resp = String::new();
    slow.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_serves(&http, &v, &good);

    // `yatai gc` (here with the server stopped): idle files go, fresh ones stay.
    server.stop();
    let old = tmp.join("old.partial");
    std::fs::write(&old, vec![0u8; 1000]).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options().write(true).open(&old).unwrap().set_modified(two_hours_ago).unwrap();
    let fresh = tmp.join("fresh.partial");
    std::fs::write(&fresh, b"fresh").unwrap();
    let out = server.admin(&["gc"]);
    assert!(out.contains("1 temporary files"), "{out}");
    assert!(!old.exists());
    assert!(fresh.exists());
}
