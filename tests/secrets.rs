//! Secrets with the unmodified bentoml CLI: `bentoml secret create/list/
//! apply/delete`, and `bentoml deployment create --secret NAME` on this
//! machine. A small bento (`tests/fixtures/secrets_echo`) echoes what its
//! replica received; everything a user or an operator can read besides it
//! (the CLI's and the API's deployment views, events, the server log, the
//! database) must hold no value in clear. The dashboard's secret pages are
//! driven in a real browser: no page, URL or notice holds a value.

mod support;

#[path = "support/browser.rs"]
mod browser;

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
fn database_text(server: &Server, secret: &str) -> String {
    match server.backend {
        Backend::SqliteLocal => {
            let mut text = String::new();
            for suffix in ["", "-wal", "-shm"] {
                let path = server.data_dir().join(format!("yatai.db{suffix}"));
                if let Ok(bytes) = std::fs::read(&path) {
                    text.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
            assert!(text.contains(secret), "the database file should hold the secret's row");
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
        assert_no_value("the database", &database_text(&server, "api-keys"));

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

// ---- the dashboard ----------------------------------------------------------------

const PASSWORD: &str = "correct horse battery";
/// A value only the mountfile secret made in the browser holds.
const CA_VALUE: &str = "ca-value-9d1e3f5a7c";

async fn on_page(b: &browser::Browser, page: &str) {
    b.wait_for(&format!("main#main[data-page={page}]")).await;
}

/// The page shown holds no value: not in its HTML, not in its URL.
async fn shows_no_value(b: &browser::Browser, what: &str) {
    let html = b.html().await;
    assert_no_value(what, &html);
    assert!(!html.contains(CA_VALUE), "{what} holds the value {CA_VALUE:?}");
    let url = b.current_url().await;
    assert_no_value(&format!("{what}'s URL"), &url);
}

/// Opens `path`, checks it is `page` without console errors, markup
/// problems or values, and saves a screenshot.
async fn visit(b: &browser::Browser, path: &str, page: &str) {
    b.goto(path).await;
    on_page(b, page).await;
    b.assert_no_console_errors();
    let problems = b.page_problems().await;
    assert!(problems.is_empty(), "{path}: {problems:?}");
    shows_no_value(b, path).await;
    b.screenshot(&format!("secrets-{page}")).await;
}

async fn submit_to(b: &browser::Browser, form: &str, page: &str) {
    b.submit(&format!("form[data-form={form}]")).await;
    on_page(b, page).await;
    shows_no_value(b, &format!("the page after submitting {form}")).await;
}

/// Submits a form the server refuses (422, which Chromium logs as a failed load).
async fn submit_expecting_errors(b: &browser::Browser, form: &str, page: &str) {
    b.assert_no_console_errors();
    submit_to(b, form, page).await;
    b.assert_no_console_errors_but(|e| e.kind == "log:network" && e.text.contains("status of 422"));
    b.clear_console_errors();
    let problems = b.page_problems().await;
    assert!(problems.is_empty(), "{form} refused: {problems:?}");
}

async fn sign_in(b: &browser::Browser, login: &str) {
    b.submit("form[data-form=logout]").await;
    on_page(b, "login").await;
    b.fill("form[data-form=login] [name=login]", login).await;
    b.fill("form[data-form=login] [name=password]", PASSWORD).await;
    b.submit("form[data-form=login]").await;
    on_page(b, "home").await;
}

async fn delete_in_page(b: &browser::Browser) {
    b.click("button[data-dialog=confirm-delete]").await;
    b.wait_until("document.getElementById('confirm-delete').open").await;
    b.click_and_wait("#confirm-delete [data-action=confirm]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_made_in_the_dashboard_reach_replicas_and_no_page() {
    let server = Server::start(Backend::SqliteLocal);
    let (home, bento) = echo_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, home.path());
    client.ok(&["push", bento]);
    let mut b = browser::Browser::launch().await.with_base(&server.url);
    b.timeout = Duration::from_secs(60);
    b.set_up_admin(&server.token, "ada", PASSWORD).await;

    // ---- the list, empty, with its nav link and the admin's button ----
    visit(&b, "/secrets", "secrets").await;
    assert_eq!(b.count("header nav a[href='/secrets'][aria-current=page]").await, 1);
    b.click_and_wait("a[data-action=new-secret]").await;
    on_page(&b, "secret-new").await;
    for field in ["name", "description", "type", "stage", "path", "item-key-1", "item-sub-1", "item-value-1"] {
        assert_eq!(b.count(&format!("form[data-form=secret] label[for={field}]")).await, 1, "label for {field}");
    }
    b.wait_until("!document.querySelector('button[data-add-item]').hidden").await;
    assert!(b.page_problems().await.is_empty(), "{:?}", b.page_problems().await);

    // ---- refused (a key that is no variable name): keys kept, values to type again ----
    b.fill("form[data-form=secret] [name=name]", "api-keys").await;
    b.fill("form[data-form=secret] [name=description]", "keys of the echo service").await;
    b.fill("#item-key-1", "API_KEY").await;
    b.fill("#item-value-1", ENV_VALUE).await;
    b.fill("#item-key-2", "1BAD").await;
    b.fill("#item-value-2", "eu").await;
    submit_expecting_errors(&b, "secret", "secret-new").await;
    let error = b.text(".field-error[data-error-for=items]").await;
    assert!(error.contains("environment variable name"), "{error}");
    assert_eq!(b.prop("#name", "value").await, "api-keys");
    assert_eq!(b.prop("#item-key-1", "value").await, "API_KEY");
    assert_eq!(b.prop("#item-key-2", "value").await, "1BAD");
    assert_eq!(b.prop("#item-value-1", "value").await, "", "a value is not sent back");
    assert_eq!(b.count("[data-retype]").await, 2, "both typed values are asked again");
    assert!(b.text("[data-testid=retype]").await.contains("never sent back"));
    b.screenshot("secrets-new-refused").await;

    // ---- created ----
    b.fill("#item-key-2", "REGION").await;
    b.fill("#item-value-1", ENV_VALUE).await;
    b.fill("#item-value-2", "eu").await;
    submit_to(&b, "secret", "secret").await;
    assert!(b.current_url().await.contains("/secrets/api-keys?notice="), "{}", b.current_url().await);
    b.wait_for_text("p.notice[role=status]", "Created secret api-keys").await;
    assert_eq!(b.texts("[data-testid=key]").await, ["API_KEY", "REGION"]);
    assert_eq!(b.text("[data-testid=type]").await, "env (environment variables)");
    assert_eq!(b.text("[data-testid=stage]").await, "runtime");
    b.wait_for("[data-testid=unused]").await;

    // ---- a mountfile secret, with an item row the script adds ----
    visit(&b, "/secrets/new", "secret-new").await;
    b.fill("form[data-form=secret] [name=name]", "certs").await;
    b.select("#type", "mountfile").await;
    b.fill("#path", "$BENTOML_HOME/certs").await;
    b.fill("#item-key-1", "token").await;
    b.fill("#item-sub-1", "token.txt").await;
    b.fill("#item-value-1", FILE_VALUE).await;
    assert_eq!(b.count("fieldset[data-item]").await, 3);
    b.click("button[data-add-item]").await;
    assert_eq!(b.count("fieldset[data-item]").await, 4);
    assert!(b.focused().await.starts_with("input#item-key-4"), "{}", b.focused().await);
    b.fill("#item-key-4", "ca.pem").await;
    b.fill("#item-value-4", &format!("{CA_VALUE}\nsecond line")).await;
    submit_to(&b, "secret", "secret").await;
    assert_eq!(b.texts("[data-testid=key] td:first-child").await, ["token", "ca.pem"]);
    assert_eq!(
        b.texts("[data-testid=key] td:nth-child(2)").await,
        ["$BENTOML_HOME/certs/token.txt", "$BENTOML_HOME/certs/ca.pem"]
    );
    assert_eq!(b.text("[data-testid=path]").await, "$BENTOML_HOME/certs");

    // ---- a deployment uses both; its replica holds the values ----
    let out =
        client.ok(&["deployment", "create", bento, "--name", "echo", "--secret", "api-keys", "--secret", "certs"]);
    assert!(out.contains("is ready"), "{out}");
    let d = server.http().get("/api/v2/deployments/echo").json();
    let ep = Http { base: d["urls"][0].as_str().unwrap().to_owned(), token: None };
    assert_eq!(
        echo(&ep, "/env", json!({"names": ["API_KEY", "REGION"]})),
        json!({"API_KEY": ENV_VALUE, "REGION": "eu"})
    );
    let files = echo(&ep, "/files", json!({"paths": ["certs/token.txt", "certs/ca.pem"]}));
    assert_eq!(files["certs/token.txt"]["content"], FILE_VALUE, "{files:#}");
    assert_eq!(files["certs/ca.pem"]["content"], format!("{CA_VALUE}\nsecond line"), "{files:#}");

    // ---- the list and the page say where each is used ----
    visit(&b, "/secrets", "secrets").await;
    let row = |name: &str| format!("[data-testid=row][data-name={}]", browser::js_str(name));
    assert_eq!(b.text(&format!("{} [data-testid=keys]", row("api-keys"))).await, "2");
    assert_eq!(b.text(&format!("{} [data-testid=type]", row("certs"))).await, "mountfile");
    assert_eq!(b.text(&format!("{} a[data-testid=used-by]", row("api-keys"))).await, "yatai/echo");
    assert_eq!(
        b.attr(&format!("{} a[data-testid=used-by]", row("certs")), "href").await.as_deref(),
        Some("/deployments/echo")
    );
    visit(&b, "/secrets?q=cert", "secrets").await;
    assert_eq!(b.count("[data-testid=row]").await, 1);
    visit(&b, "/secrets/api-keys", "secret").await;
    assert_eq!(b.text("a[data-testid=used-by]").await, "yatai/echo");

    // ---- replace: a new key without a value is refused, naming it ----
    assert_eq!(b.prop("#item-key-1", "value").await, "API_KEY");
    assert_eq!(b.prop("#item-key-2", "value").await, "REGION");
    assert_eq!(b.prop("#item-value-1", "value").await, "");
    b.fill("#item-value-1", NEW_ENV_VALUE).await;
    b.fill("#item-key-3", "EXTRA").await;
    submit_expecting_errors(&b, "secret-replace", "secret").await;
    let error = b.text(".field-error[data-error-for=items]").await;
    assert!(error.contains("\"EXTRA\"") && error.contains("new"), "{error}");
    assert_eq!(b.count("[data-retype]").await, 1, "the new value typed for API_KEY is asked again");
    assert_eq!(b.prop("#item-key-3", "value").await, "EXTRA");

    // ---- replace one value, keep the other ----
    b.fill("#item-key-3", "").await;
    b.fill("#item-value-1", NEW_ENV_VALUE).await;
    submit_to(&b, "secret-replace", "secret").await;
    b.wait_for_text("p.notice[role=status]", "Saved secret api-keys").await;
    assert_eq!(b.texts("[data-testid=key]").await, ["API_KEY", "REGION"]);
    wait_for("the replaced value to reach the replica", Duration::from_secs(240), || {
        let r = ep.post("/env", &json!({"names": ["API_KEY", "REGION"]}));
        (r.status == 200 && r.json()["API_KEY"] == NEW_ENV_VALUE).then(|| r.json())
    });
    assert_eq!(
        echo(&ep, "/env", json!({"names": ["API_KEY", "REGION"]})),
        json!({"API_KEY": NEW_ENV_VALUE, "REGION": "eu"}),
        "REGION kept its value"
    );
    let listed = client.ok(&["secret", "list", "-o", "json"]);
    assert!(listed.contains("API_KEY") && listed.contains("REGION"), "{listed}");

    // ---- not deleted while the deployment uses it, naming it ----
    delete_in_page(&b).await;
    on_page(&b, "secret").await;
    shows_no_value(&b, "the refused delete").await;
    let notice = b.text("p.notice[role=status]").await;
    assert!(notice.starts_with("Not deleted") && notice.contains("yatai/echo"), "{notice}");
    b.assert_no_console_errors();

    // ---- a developer reads, and changes nothing ----
    server.admin(&["user", "create", "dev", "--email", "dev@example.com", "--org", "default", "--role", "developer"]);
    server.admin_with_env(&["user", "set-password", "dev"], &[("YATAI_PASSWORD", PASSWORD)]);
    sign_in(&b, "dev").await;
    visit(&b, "/secrets", "secrets").await;
    assert_eq!(b.count("a[data-action=new-secret]").await, 0);
    assert_eq!(b.count(&row("api-keys")).await, 1);
    visit(&b, "/secrets/api-keys", "secret").await;
    assert_eq!(b.count("main form").await, 0, "a developer sees no form");
    b.wait_for("[data-testid=read-only]").await;
    assert_eq!(b.texts("[data-testid=key]").await, ["API_KEY", "REGION"]);
    b.goto("/secrets/new").await;
    on_page(&b, "error").await;
    assert!(b.text("main").await.contains("403"), "{}", b.text("main").await);
    b.assert_no_console_errors_but(|e| e.kind == "log:network" && e.text.contains("status of 403"));
    b.clear_console_errors();
    visit(&b, "/secrets/api-keys", "secret").await;
    // Posted with the developer's own valid CSRF token: refused all the same.
    let statuses = b
        .eval(
            "(() => { const csrf = document.querySelector('form[data-form=logout] [name=csrf]').value; \
             return Promise.all(['/secrets/new', '/secrets/api-keys/replace', '/secrets/api-keys/delete'].map(p => \
               fetch(p, {method: 'POST', redirect: 'manual', body: new URLSearchParams({csrf, name: 'mine', type: 'env', \
                 item_key: 'API_KEY', item_sub_path: '', item_value: 'dev-was-here'})}).then(r => r.status))); })()",
        )
        .await;
    assert_eq!(statuses, json!([403, 403, 403]));
    b.clear_console_errors();
    assert_eq!(server.http().get("/api/v1/org_secrets").json()["total"], 2, "nothing made or deleted");
    assert_eq!(echo(&ep, "/env", json!({"names": ["API_KEY"]}))["API_KEY"], NEW_ENV_VALUE, "nothing replaced");
    sign_in(&b, "ada").await;

    // ---- at phone width ----
    b.set_viewport(375, 812, true).await;
    for (path, page) in [("/secrets", "secrets"), ("/secrets/certs", "secret"), ("/secrets/new", "secret-new")] {
        b.goto(path).await;
        on_page(&b, page).await;
        let o = b.horizontal_overflow().await;
        assert!(o.viewport == 375 && o.over == 0, "{path} is wider than a 375 px phone: {o:?}");
        b.screenshot(&format!("secrets-{page}-phone")).await;
    }
    b.reset_viewport().await;

    // ---- once the deployment is gone, both are deleted ----
    client.ok(&["deployment", "terminate", "echo", "--wait"]);
    client.ok(&["deployment", "delete", "echo"]);
    for name in ["api-keys", "certs"] {
        visit(&b, &format!("/secrets/{name}"), "secret").await;
        b.wait_for("[data-testid=unused]").await;
        delete_in_page(&b).await;
        on_page(&b, "secrets").await;
        b.wait_for_text("p.notice[role=status]", &format!("Deleted secret {name}")).await;
        assert_eq!(b.count(&row(name)).await, 0);
    }
    b.assert_no_console_errors();

    // Nothing the server showed, recorded or logged holds a value.
    for (path, page) in [("/events", "events"), ("/", "home"), ("/deployments", "deployments")] {
        visit(&b, path, page).await;
    }
    let events = server.http().get("/api/v1/events?resource_type=secret&count=100").text();
    assert!(events.contains("\"deleted\"") && events.contains("\"updated\""), "{events}");
    assert_no_value("the events", &events);
    let log = server.log_text();
    assert_no_value("the server log", &log);
    assert!(!log.contains(CA_VALUE) && !events.contains(CA_VALUE));
}

/// The `private_dep` bento, requiring `yatai-private-probe==version` (only on the private
/// index), built in `client`'s home; its tag.
fn private_dep_bento(client: &Bentoml, version: &str) -> String {
    let src = Scratch::new("private-dep");
    for file in ["bentofile.yaml", "service.py"] {
        let text = std::fs::read_to_string(format!("{FIXTURES}/private_dep/{file}")).unwrap();
        std::fs::write(src.path().join(file), text.replace("VERSION", version)).unwrap();
    }
    let built = client.ok_in(src.path(), &["build", ".", "--output", "tag"]);
    built
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("__tag__:").map(str::to_owned))
        .unwrap_or_else(|| panic!("no tag in bentoml build output:\n{built}"))
}

/// Waits for a deployment to reach `status`; the deployment.
fn wait_status(server: &Server, name: &str, status: &str) -> Value {
    wait_for(&format!("deployment {name} to be {status}"), Duration::from_secs(300), || {
        let d = server.http().get(&format!("/api/v2/deployments/{name}")).json();
        if d["status"] == status {
            return Some(d);
        }
        let other = if status == "running" { "failed" } else { "running" };
        assert_ne!(d["status"], other, "deployment {name}: {d:#}");
        None
    })
}

#[test]
fn a_build_secret_reaches_the_install_of_a_private_requirement_and_nothing_else() {
    // A version no earlier run served: no cached environment holds it.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let version = format!("0.{}.{}", now.as_secs(), std::process::id());
    let token = format!("idx-token-{}", now.as_nanos());
    let wrong = format!("wrong-token-{}", now.as_nanos());
    let index = PrivateIndex::start("probe", &token, &version);
    let (url, wrong_url) = (index.url_with(&token), index.url_with(&wrong));
    let hidden = [token.as_str(), wrong.as_str(), url.as_str(), wrong_url.as_str()];
    let assert_hidden = |what: &str, text: &str| {
        for v in hidden {
            assert!(!text.contains(v), "{what} holds {v:?}:\n{}", &text[..text.len().min(4000)]);
        }
    };

    let server = Server::start(Backend::SqliteLocal);
    let client = Bentoml::new(&server.url, &server.token);
    let bento = private_dep_bento(&client, &version);
    client.ok(&["push", &bento]);
    let http = server.http();
    let create = |name: &str, secrets: Value| {
        let r = http.post("/api/v2/deployments", &json!({"bento": bento, "name": name, "secrets": secrets}));
        assert_eq!(r.status, 200, "{}", r.text());
    };

    // Without the secret: the requirement is nowhere, and the deployment says so.
    create("no-secret", json!([]));
    let d = wait_status(&server, "no-secret", "failed");
    let why = d["status_message"].as_str().unwrap_or_default();
    assert!(why.contains("yatai-private-probe was not found in the package registry"), "{d:#}");
    assert_eq!(index.requests(), "", "no installer knew of the index");

    // The secrets: pip's variable (given to uv under its own name), of stage build.
    for (name, u) in [("index-wrong", &wrong_url), ("index", &url)] {
        let out = client.ok(&["secret", "create", name, "-s", "build", &format!("PIP_EXTRA_INDEX_URL={u}")]);
        assert!(out.contains("created successfully"), "{out}");
    }
    // A wrong token: the index refuses it, and the deployment fails without quoting it.
    create("wrong-secret", json!(["index-wrong"]));
    let d = wait_status(&server, "wrong-secret", "failed");
    let why = d["status_message"].as_str().unwrap_or_default();
    assert!(why.contains("401 Unauthorized"), "the reason says the index refused: {d:#}");
    assert!(index.requests().contains("/simple/yatai-private-probe/ 401"), "{}", index.requests());
    assert_hidden("the failed deployment", &d.to_string());

    // The right one: installed from the private index, and served.
    create("private", json!(["index"]));
    let d = wait_status(&server, "private", "running");
    let requests = index.requests();
    assert!(requests.contains(&format!("GET /files/yatai_private_probe-{version}-py3-none-any.whl 200")), "{requests}");
    let ep = Http { base: d["urls"][0].as_str().unwrap().to_owned(), token: None };
    let r = ep.post("/probe", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["message"], format!("served by the private index, version {version}"));
    let d_text = d.to_string();
    assert!(d_text.contains("\"index\""), "the secret's name is shown: {d_text}");

    // Nothing a user or an operator reads holds the token.
    for name in ["no-secret", "wrong-secret", "private"] {
        assert_hidden("bentoml deployment get", &client.ok(&["deployment", "get", name, "-o", "json"]));
        for path in [
            format!("/api/v2/deployments/{name}"),
            format!("/api/v2/deployments/{name}/revisions"),
            format!("/api/v2/deployments/{name}/logs?tail=1000"),
        ] {
            let r = http.get(&path);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert_hidden(&path, &r.text());
        }
    }
    for path in ["/api/v2/deployments", "/api/v1/events?count=1000", "/api/v1/org_secrets"] {
        assert_hidden(path, &http.get(path).text());
    }
    assert_hidden("the server log", &server.log_text());
    assert_hidden("the database", &database_text(&server, "index-wrong"));
    assert_hidden("the data directory", &files_text(&server.data_dir()));
    let env_logs: String = std::fs::read_dir(cache_dir().join("test-envs"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    assert_hidden("the environments' install logs", &env_logs);
}
