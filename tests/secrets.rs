//! Secrets with the unmodified bentoml CLI: `bentoml secret create/list/
//! apply/delete`, and `bentoml deployment create --secret NAME` on this
//! machine. A small bento (`tests/fixtures/secrets_echo`) echoes what its
//! replica received; everything a user or an operator can read besides it
//! (the CLI's and the API's deployment views, events, the server log, the
//! database) must hold no value in clear.

mod support;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// Values that appear nowhere but in a replica.
const ENV_VALUE: &str = "env-value-7f3a9c1e5d";
const NEW_ENV_VALUE: &str = "rotated-value-4c9e2a7b1f";
const FILE_VALUE: &str = "file-value-2b8d4e6f0a";
const VALUES: [&str; 3] = [ENV_VALUE, NEW_ENV_VALUE, FILE_VALUE];

/// A `BENTOML_HOME` holding the secrets_echo bento, built once per test process.
fn echo_home() -> &'static (Scratch, String) {
    static HOME: OnceLock<(Scratch, String)> = OnceLock::new();
    HOME.get_or_init(|| {
        let b = Bentoml::new("http://127.0.0.1:9", "unused");
        let built = b.ok_in(Path::new(&format!("{FIXTURES}/secrets_echo")), &["build", ".", "--output", "tag"]);
        let tag = built
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("__tag__:").map(str::to_owned))
            .unwrap_or_else(|| panic!("no tag in bentoml build output:\n{built}"));
        let home = Scratch(b.home.0.clone());
        std::mem::forget(b);
        (home, tag)
    })
}

fn secret_body(name: &str, content: Value) -> Value {
    json!({"name": name, "content": content})
}

fn env_content(items: Value) -> Value {
    json!({"type": "env", "items": items, "stage": "runtime"})
}

/// Every byte a server keeps in its metadata database, as text.
fn database_text(server: &Server) -> String {
    match server.backend {
        Backend::SqliteLocal => {
            let mut text = String::new();
            for suffix in ["", "-wal", "-shm"] {
                let path = server.data_dir().join(format!("yatai.db{suffix}"));
                if let Ok(bytes) = std::fs::read(&path) {
                    text.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
            assert!(text.contains("api-keys"), "the database file should hold the secret's row");
            text
        }
        Backend::PostgresS3 => {
            let i = server.args.iter().position(|a| a == "--database-url").expect("a PostgreSQL URL");
            let out = std::process::Command::new("pg_dump").arg(&server.args[i + 1]).output().expect("pg_dump");
            assert!(out.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }
}

fn assert_no_value(what: &str, text: &str) {
    for v in VALUES {
        assert!(!text.contains(v), "{what} holds the secret value {v:?}:\n{}", &text[..text.len().min(4000)]);
    }
}

/// Every file below `dir`, as text (for values left behind).
fn files_text(dir: &Path) -> String {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    let mut text = String::new();
    for f in files {
        if f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("yatai.db")) {
            continue; // checked as the database, where the sealed values live
        }
        if let Ok(bytes) = std::fs::read(&f) {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    text
}

fn echo(ep: &Http, api: &str, body: Value) -> Value {
    let r = ep.post(api, &body);
    assert_eq!(r.status, 200, "{api}: {}", r.text());
    r.json()
}

#[test]
fn hostile_secrets_are_refused_with_a_clear_4xx() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    let post = |body: Value| http.post("/api/v1/org_secrets", &body);
    let refused = |body: Value, status: u16, needle: &str| {
        let r = post(body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.text().contains(needle), "{body}: expected {needle:?} in {}", r.text());
    };
    let one = json!([{"key": "A", "value": "1"}]);
    refused(secret_body("s", json!({"type": "vault", "items": one})), 400, "env");
    refused(secret_body("s", json!({"type": "env", "items": one, "stage": "sometimes"})), 400, "stage");
    refused(secret_body("s", env_content(json!([]))), 400, "at least one item");
    refused(
        secret_body("s", env_content(json!([{"key": "A", "value": "1"}, {"key": "A", "value": "2"}]))),
        400,
        "twice",
    );
    for bad in ["1A", "A-B", "A B", "A=B", ""] {
        refused(secret_body("s", env_content(json!([{"key": bad, "value": "1"}]))), 400, "environment variable name");
    }
    refused(secret_body("s", env_content(json!([{"key": "A"}]))), 400, "no value");
    for escape in ["../../etc/cron.d/x", "/etc/passwd", "a/../../b"] {
        let items = json!([{"key": "k", "sub_path": escape, "value": "v"}]);
        refused(
            secret_body("s", json!({"type": "mountfile", "items": items, "path": "$BENTOML_HOME"})),
            400,
            "relative",
        );
        refused(
            secret_body("s", json!({"type": "mountfile", "items": [{"key": escape, "value": "v"}]})),
            400,
            "relative",
        );
    }
    for path in ["/etc", "$BENTOML_HOME/../..", "relative/dir"] {
        let body = secret_body("s", json!({"type": "mountfile", "items": [{"key": "k", "value": "v"}], "path": path}));
        refused(body, 400, "$BENTOML_HOME");
    }
    let big = "x".repeat(600 * 1024);
    refused(
        secret_body("s", env_content(json!([{"key": "A", "value": big}, {"key": "B", "value": big}]))),
        400,
        "at most",
    );
    for name in ["Bad", "a_b", "-a", "a.b", &"a".repeat(64)] {
        refused(secret_body(name, env_content(one.clone())), 400, "secret name");
    }
    // Nothing of the above was stored.
    assert_eq!(http.get("/api/v1/org_secrets").json()["total"], 0);
    // A name not taken is a 404 everywhere.
    assert_eq!(http.get("/api/v1/org_secrets/nope").status, 404);
    assert_eq!(http.patch("/api/v1/org_secrets/nope", Some(&json!({"content": env_content(one.clone())}))).status, 404);
    assert_eq!(http.delete("/api/v1/org_secrets/nope").status, 404);
    // Only admins create, replace and delete; any member reads the keys.
    assert_eq!(post(secret_body("s", env_content(one.clone()))).status, 200);
    server.admin(&["user", "create", "dev", "--email", "dev@example.com", "--org", "default", "--role", "developer"]);
    let dev = server.admin(&["token", "create", "--name", "dev", "--user", "dev"]).trim().to_owned();
    let dev = http.with_token(&dev);
    assert_eq!(dev.post("/api/v1/org_secrets", &secret_body("t", env_content(one.clone()))).status, 403);
    assert_eq!(dev.patch("/api/v1/org_secrets/s", Some(&json!({"content": env_content(one.clone())}))).status, 403);
    assert_eq!(dev.delete("/api/v1/org_secrets/s").status, 403);
    let listed = dev.get("/api/v1/org_secrets");
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["items"][0]["content"]["items"], json!([{"key": "A", "sub_path": null, "value": null}]));
    assert_eq!(post(secret_body("s", env_content(one))).status, 409, "a second secret with the same name");
}

backend_test! {
    fn secrets_reach_replicas_and_nothing_else(backend: Backend) {
        let server = Server::start(backend);
        let (home, bento) = echo_home();
        let client = Bentoml::with_home_from(&server.url, &server.token, home.path());
        client.ok(&["push", bento]);

        let out = client.ok(&["secret", "create", "api-keys", &format!("API_KEY={ENV_VALUE}"), "REGION=eu"]);
        assert!(out.contains("created successfully"), "{out}");
        let out = client.ok(&["secret", "create", "certs", "-t", "file", "-p", "$BENTOML_HOME/certs", &format!("token.txt={FILE_VALUE}")]);
        assert!(out.contains("created successfully"), "{out}");
        let table = client.ok(&["secret", "list"]);
        for expected in ["api-keys", "API_KEY, REGION", "certs", "token.txt", "$BENTOML_HOME/certs", "local"] {
            assert!(table.contains(expected), "{expected:?} not in:\n{table}");
        }
        let listed = client.ok(&["secret", "list", "-o", "json"]);
        assert_no_value("bentoml secret list -o json", &listed);
        assert!(client.fails(&["secret", "create", "api-keys", "A=1"]).contains("already exists"));

        // Another organization sees nothing of it, and cannot use it.
        server.admin(&["org", "create", "other"]);
        server.admin(&["user", "create", "eve", "--email", "eve@example.com", "--org", "other", "--role", "admin"]);
        let eve_token = server.admin(&["token", "create", "--name", "eve", "--user", "eve", "--org", "other"]).trim().to_owned();
        let eve = server.http().with_token(&eve_token);
        assert_eq!(eve.get("/api/v1/org_secrets/api-keys").status, 404);
        assert_eq!(eve.get("/api/v1/org_secrets").json()["total"], 0);
        assert_eq!(eve.delete("/api/v1/org_secrets/api-keys").status, 404);
        let eve_client = Bentoml::with_home_from(&server.url, &eve_token, home.path());
        eve_client.ok(&["push", bento]);
        let attach = |secret: &str| {
            eve.post("/api/v2/deployments", &json!({"bento": bento, "name": "stolen", "secrets": [secret]}))
        };
        let theirs = attach("api-keys");
        let unknown = attach("zzzzzzzz");
        assert_eq!((theirs.status, unknown.status), (400, 400), "{} / {}", theirs.text(), unknown.text());
        let msg = |r: &Response| r.json()["message"].as_str().unwrap().to_owned();
        assert_eq!(msg(&theirs).replace("api-keys", "zzzzzzzz"), msg(&unknown), "no hint that the name exists elsewhere");
        assert_eq!(eve.get("/api/v2/deployments/stolen").status, 404, "a refused deployment is not stored");

        // A developer may attach secrets (only admins make them).
        server.admin(&["user", "create", "dev", "--email", "dev@example.com", "--org", "default", "--role", "developer"]);
        let dev_token = server.admin(&["token", "create", "--name", "dev", "--user", "dev"]).trim().to_owned();
        let dev = Bentoml::with_home_from(&server.url, &dev_token, home.path());
        assert!(dev.fails(&["secret", "create", "mine", "A=1"]).contains("403"));
        let out = dev.ok(&["deployment", "create", bento, "--name", "echo", "--secret", "api-keys", "--secret", "certs"]);
        assert!(out.contains("is ready"), "{out}");
        let d = server.http().get("/api/v2/deployments/echo").json();
        assert_eq!(d["status"], "running", "{d:#}");
        let ep = Http { base: d["urls"][0].as_str().unwrap().to_owned(), token: None };
        let env = echo(&ep, "/env", json!({"names": ["API_KEY", "REGION"]}));
        assert_eq!(env, json!({"API_KEY": ENV_VALUE, "REGION": "eu"}));
        let files = echo(&ep, "/files", json!({"paths": ["certs/token.txt"]}));
        let file = &files["certs/token.txt"];
        assert_eq!(file["content"], FILE_VALUE, "{files:#}");
        assert_eq!((file["mode"].as_str(), file["dir_mode"].as_str()), (Some("0o600"), Some("0o700")), "{files:#}");
        assert_eq!(file["owner_is_me"], true, "{files:#}");

        // A replaced secret rolls the deployment: the new value arrives.
        let out = client.ok(&["secret", "apply", "api-keys", &format!("API_KEY={NEW_ENV_VALUE}"), "REGION=us"]);
        assert!(out.contains("applied successfully"), "{out}");
        wait_for("the replaced value to reach the replica", Duration::from_secs(240), || {
            let r = ep.post("/env", &json!({"names": ["API_KEY"]}));
            (r.status == 200 && r.json()["API_KEY"] == NEW_ENV_VALUE).then_some(())
        });

        // Deleting a secret in use is refused, naming the deployment.
        let refused = client.fails(&["secret", "delete", "api-keys"]);
        assert!(refused.contains("yatai/echo"), "{refused}");
        assert!(server.http().get("/api/v1/org_secrets/api-keys").status == 200);

        // Nothing a user or an operator reads holds a value.
        let got = client.ok(&["deployment", "get", "echo", "-o", "json"]);
        assert!(got.contains("api-keys") && got.contains("certs"), "the names are shown: {got}");
        assert_no_value("bentoml deployment get", &got);
        for path in [
            "/api/v2/deployments/echo",
            "/api/v2/deployments/echo/revisions",
            "/api/v2/deployments",
            "/api/v1/clusters/local/namespaces/yatai/deployments/echo",
            "/api/v1/clusters/local/namespaces/yatai/deployments/echo/revisions",
            "/api/v1/org_secrets",
            "/api/v1/org_secrets/api-keys",
            "/api/v1/events?count=1000",
            "/api/v2/deployments/echo/logs?tail=1000",
        ] {
            let r = server.http().get(path);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert_no_value(path, &r.text());
        }
        let events = server.http().get("/api/v1/events?resource_type=secret&count=100").json();
        let ops: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["operation_name"].as_str().unwrap()).collect();
        assert!(ops.contains(&"created") && ops.contains(&"updated"), "{ops:?}");
        assert_no_value("the server log", &server.log_text());
        assert_no_value("the database", &database_text(&server));

        // An update without `certs` frees it; the revision that named it cannot come back without it.
        let first = server.http().get("/api/v2/deployments/echo").json()["latest_revision"]["uid"].as_str().unwrap().to_owned();
        let r = server.http().request("PUT", "/api/v2/deployments/echo", Some(&json!({"bento": bento, "secrets": ["api-keys"]})));
        assert_eq!(r.status, 200, "{}", r.text());
        let out = client.ok(&["secret", "delete", "certs"]);
        assert!(out.contains("deleted successfully"), "{out}");
        let r = server.http().post("/api/v2/deployments/echo/rollback", &json!({"revision_uid": first}));
        assert_eq!(r.status, 409, "{}", r.text());
        assert!(r.text().contains("certs"), "{}", r.text());

        // Once stopped, no value is left on disk (the mounted files went with the replicas).
        client.ok(&["deployment", "terminate", "echo", "--wait"]);
        wait_for("the replicas' homes to go", Duration::from_secs(60), || {
            let text = files_text(&server.data_dir());
            (!text.contains(FILE_VALUE)).then_some(())
        });
        assert_no_value("the data directory", &files_text(&server.data_dir()));
        // Still named by the terminated deployment (it may be restored): still refused.
        assert!(client.fails(&["secret", "delete", "api-keys"]).contains("yatai/echo"));
        client.ok(&["deployment", "delete", "echo"]);
        let out = client.ok(&["secret", "delete", "api-keys"]);
        assert!(out.contains("deleted successfully"), "{out}");
        assert!(!client.ok(&["secret", "list"]).contains("api-keys"));
        let events = server.http().get("/api/v1/events?resource_type=secret&count=100").text();
        assert!(events.contains("\"deleted\""), "{events}");
        assert_no_value("the events", &events);
    }
}
