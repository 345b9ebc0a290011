//! Attacks on the local runtime, run against the real server with the real
//! bentoml CLI and real replicas: each test performs the attack and asserts
//! that it fails.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const DOMAIN: &str = "127.0.0.1.sslip.io";

/// A second organization with a developer `bob`; returns bob's token.
fn other_org(server: &Server) -> String {
    server.admin(&["org", "create", "other"]);
    server.admin(&["user", "create", "bob", "--email", "bob@example.com", "--org", "other"]);
    server.admin(&["token", "create", "--name", "bob", "--user", "bob", "--org", "other"]).trim().to_owned()
}

fn get_deployment(http: &Http, name: &str) -> Value {
    let r = http.get(&format!("/api/v2/deployments/{name}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn wait_running(http: &Http, name: &str) -> Value {
    let mut last = Value::Null;
    let found = (0..).take(3000).find_map(|_| {
        last = get_deployment(http, name);
        if last["status"] == "running" {
            return Some(last.clone());
        }
        assert_ne!(last["status"], "failed", "deployment {name} failed: {last:#}");
        std::thread::sleep(Duration::from_millis(200));
        None
    });
    found.unwrap_or_else(|| panic!("deployment {name} did not become running: {last:#}"))
}

/// The endpoint of a deployment reported on its own port.
fn endpoint(d: &Value) -> Http {
    Http { base: d["urls"][0].as_str().expect("one URL").to_owned(), token: None }
}

fn classify_with(ep: &Http, headers: &[(&str, &str)]) -> Response {
    let body = serde_json::to_vec(&json!({"input_series": [[5.1, 3.5, 1.4, 0.2]]})).unwrap();
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    ep.raw("POST", "/classify", &h, &body, Some(body.len()), false)
}

/// A request to the server's main port for `host` (host-based routing).
fn via_host(server: &Server, host: &str, path: &str, body: &Value) -> Response {
    use std::io::{Read, Write};
    let addr = server.url.trim_start_matches("http://").to_owned();
    let body = serde_json::to_vec(body).unwrap();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let port = addr.rsplit_once(':').unwrap().1;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.as_bytes().to_vec()).unwrap_or_default();
    Response { status, headers: Vec::new(), body }
}

/// H1: two organizations creating a deployment of the same name at the same
/// moment must not share its URL: one wins, the other is told to pick
/// another name, and the URL answers with the winner's replicas only.
#[test]
fn deployment_hosts_are_unique_across_organizations() {
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&["--deployment-domain", DOMAIN]));
    let iris = iris_home();
    let bob_token = other_org(&server);
    for token in [server.token.as_str(), bob_token.as_str()] {
        Bentoml::with_home_from(&server.url, token, iris.home.path()).ok(&["push", &iris.bento]);
    }
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let racers: Vec<_> = [server.token.clone(), bob_token.clone()]
        .into_iter()
        .map(|token| {
            let http = server.http().with_token(&token);
            let bento = iris.bento.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                http.post("/api/v2/deployments", &json!({"name": "shared", "bento": bento}))
            })
        })
        .collect();
    let results: Vec<Response> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    let mut statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{:?}", results.iter().map(Response::text).collect::<Vec<_>>());
    let winner = if results[0].status == 200 { server.token.clone() } else { bob_token.clone() };
    let loser = if winner == server.token { bob_token.clone() } else { server.token.clone() };
    let refusal = results.iter().find(|r| r.status == 409).unwrap().json();
    let message = refusal["message"].as_str().unwrap_or_default();
    assert!(message.contains("shared-yatai") && message.contains("pick another name"), "{refusal}");

    // Nothing was stored for the loser, and its own name works.
    let loser_http = server.http().with_token(&loser);
    assert_eq!(loser_http.get("/api/v2/deployments/shared").status, 404);
    let r = loser_http.post("/api/v2/deployments", &json!({"name": "shared-2", "bento": iris.bento}));
    assert_eq!(r.status, 200, "{}", r.text());

    // The shared URL is the winner's, and requests to it reach its replicas.
    let winner_http = server.http().with_token(&winner);
    let d = wait_running(&winner_http, "shared");
    let url = d["urls"][0].as_str().unwrap();
    assert!(url.starts_with(&format!("http://shared-yatai.{DOMAIN}:")), "{url}");
    let r = via_host(
        &server,
        &format!("shared-yatai.{DOMAIN}"),
        "/classify",
        &json!({"input_series": [[5.1, 3.5, 1.4, 0.2]]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let other = get_deployment(&loser_http, "shared-2");
    assert!(other["urls"][0].as_str().unwrap().starts_with(&format!("http://shared-2-yatai.{DOMAIN}:")), "{other}");
}

/// H2: a deployment created with `--access-authorization true` answers only
/// requests with an API token of its organization.
#[test]
fn access_authorization_requires_a_token_of_the_organization() {
    let server = Server::start(Backend::SqliteLocal);
    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    client.ok(&["push", &iris.bento]);
    let bob_token = other_org(&server);
    let reader = server
        .admin(&["token", "create", "--name", "registry-reader", "--scopes", "read_organization"])
        .trim()
        .to_owned();
    let out = client.ok(&["deployment", "create", &iris.bento, "--name", "private", "--access-authorization", "true"]);
    assert!(out.contains("is ready"), "{out}");
    let d = wait_running(&server.http(), "private");
    assert_eq!(d["latest_revision"]["targets"][0]["config"]["access_authorization"], true);
    let ep = endpoint(&d);

    let anonymous = classify_with(&ep, &[]);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert!(anonymous.text().contains("Authorization: Bearer"), "{}", anonymous.text());
    assert_eq!(ep.get("/docs.json").status, 401, "the API description is not public either");
    let wrong = classify_with(&ep, &[("Authorization", "Bearer yatai_not_a_token")]);
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    let other_org = classify_with(&ep, &[("Authorization", &format!("Bearer {bob_token}"))]);
    assert_eq!(other_org.status, 403, "{}", other_org.text());
    let narrow = classify_with(&ep, &[("Authorization", &format!("Bearer {reader}"))]);
    assert_eq!(narrow.status, 403, "a registry-only token may not call deployments: {}", narrow.text());
    // The yatai header is not how deployments are called: it does not count.
    let yatai_header = classify_with(&ep, &[("X-YATAI-API-TOKEN", &server.token)]);
    assert_eq!(yatai_header.status, 401, "{}", yatai_header.text());
    let own = classify_with(&ep, &[("Authorization", &format!("Bearer {}", server.token))]);
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(own.json(), json!([0]));
    // Probes stay open: they tell only whether replicas are up.
    assert_eq!(ep.get("/readyz").status, 200);

    // The bentoml client, as users call deployments.
    let url = d["urls"][0].as_str().unwrap();
    let code = format!(
        "import bentoml\n\
         with bentoml.SyncHTTPClient({url:?}, token={token:?}) as c:\n\
         \x20   print('with token:', c.classify(input_series=[[5.1, 3.5, 1.4, 0.2]]).tolist())\n\
         try:\n\
         \x20   with bentoml.SyncHTTPClient({url:?}, token='') as c:\n\
         \x20       c.classify(input_series=[[5.1, 3.5, 1.4, 0.2]])\n\
         \x20   print('without token: allowed')\n\
         except Exception as e:\n\
         \x20   print('without token: refused', type(e).__name__, e)\n",
        token = server.token
    );
    let out = client.python_code(&code);
    assert!(out.contains("with token: [0]"), "{out}");
    assert!(out.contains("without token: refused"), "{out}");

    // Turning it off opens the deployment at once.
    client.ok(&["deployment", "update", "private", "--access-authorization", "false"]);
    let opened = wait_for_status(&ep, 200);
    assert_eq!(opened.json(), json!([0]));
}

fn wait_for_status(ep: &Http, status: u16) -> Response {
    let mut last = None;
    for _ in 0..600 {
        let r = classify_with(ep, &[]);
        if r.status == status {
            return r;
        }
        last = Some(r);
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("never got {status}; last: {:?}", last.map(|r| r.text()));
}

/// H3: a deployment's code cannot read the server's database, URL-signing
/// key or archives, cannot touch the server, and cannot change the shared
/// Python environment or its bento, while it still serves.
#[test]
fn replicas_cannot_reach_the_server_or_shared_files() {
    let server = Server::start(Backend::SqliteLocal);
    let client = server.client();
    let probe = client.build_fixture("probe", &[]);
    client.ok(&["push", &probe]);
    let data = server.data_dir();
    assert!(data.join("secrets/url-signing.key").exists(), "the signing key lives in a file");
    let out = client.ok(&[
        "deployment",
        "create",
        &probe,
        "--name",
        "probe",
        "--env",
        &format!("PROBE_DATA_DIR={}", data.display()),
        "--env",
        &format!("PROBE_SERVER_PID={}", server.child.id()),
    ]);
    assert!(out.contains("is ready"), "{out}");
    let d = wait_running(&server.http(), "probe");
    let r = endpoint(&d).post("/probe", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let result = r.json();
    let uid = result["uid"].as_u64().unwrap();
    assert_ne!(uid, 0, "the replica runs as root: {result:#}");
    assert_ne!(uid, u64::from(unsafe { libc::geteuid() }), "the replica runs as the server's user: {result:#}");
    for (check, outcome) in result.as_object().unwrap() {
        match check.as_str() {
            "uid" => {}
            "write_home" | "write_tmp" => assert_eq!(outcome, "allowed", "{check}: {result:#}"),
            _ => assert!(outcome.as_str().unwrap_or("").starts_with("denied"), "{check} succeeded: {result:#}"),
        }
    }
    assert!(result.as_object().unwrap().len() >= 14, "{result:#}");

    // What the server keeps is closed to other users on disk, too.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("yatai.db")), 0o600);
    assert_eq!(mode(&data.join("secrets/url-signing.key")), 0o600);
    assert_eq!(mode(&data.join("secrets")), 0o700);
    assert_eq!(mode(&data.join("artifacts")), 0o700);
    assert_eq!(mode(&data) & 0o066, 0, "nobody else may list the data directory");

    // Stopping the deployment removes the replica's home.
    client.ok(&["deployment", "terminate", "probe", "--wait"]);
    let uid_dir = data.join("runtime/deployments").join(d["uid"].as_str().unwrap()).join("replicas");
    wait_for("the replica home to be removed", Duration::from_secs(30), || {
        std::fs::read_dir(&uid_dir).map(|mut e| e.next().is_none()).unwrap_or(true).then_some(())
    });
}

/// H3: a signing key an earlier version kept in the database moves to the
/// key file (URLs it signed stay valid) and leaves the database.
#[test]
fn a_signing_key_in_the_database_moves_to_a_private_file() {
    let mut server = Server::start(Backend::SqliteLocal);
    server.stop();
    let key_file = server.data_dir().join("secrets/url-signing.key");
    std::fs::remove_file(&key_file).unwrap();
    let old_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let db = server.data_dir().join("yatai.db");
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(format!("INSERT INTO settings (key, value) VALUES ('url_signing_key', '{old_key}')"))
        .output();
    let Ok(out) = out else {
        eprintln!("sqlite3 is not installed; skipping the migration check");
        return;
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.start_again();
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), old_key);
    let left = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT count(*) FROM settings WHERE key = 'url_signing_key'")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "0");
}
