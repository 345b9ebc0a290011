//! Upgrades: a data dir and a PostgreSQL database written by an earlier release of yatai
//! (`tests/fixtures/upgrade/<release>/`), served by this build. Its migrations apply on start,
//! and everything the earlier release stored reads back: tokens, the dashboard's password, the
//! registry byte for byte (pulled with the real bentoml CLI), the secret (its sealed values open:
//! a restored deployment's replica sees them), deployments and their revisions, events.
//!
//! A fixture is written by the release it stands for, from a checkout of that release:
//!
//!     YATAI_WRITE_UPGRADE_FIXTURE=tests/fixtures/upgrade/NAME scripts/test --test upgrade -- --nocapture
//!
//! Keep every fixture: each is a release someone may upgrade from.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const PASSWORD: &str = "upgrade fixture password";
const SECRET_VALUE: &str = "fixture-value-5e1b";

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(FIXTURES).join("upgrade");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("manifest.json").exists())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no upgrade fixture in {}", dir.display());
    out
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn untar(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    run(Command::new("tar").arg("-xzf").arg(archive).arg("-C").arg(into));
}

/// A new PostgreSQL database of the test cluster holding `dump` (plain SQL, gzip): its URL.
fn database_from(dump: &Path) -> String {
    let url = new_pg_database("upgrade");
    let sql = run(Command::new("gzip").arg("-dc").arg(dump));
    let mut psql = Command::new("psql")
        .args([&url, "-v", "ON_ERROR_STOP=1", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    psql.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    assert!(psql.wait().unwrap().success(), "loading {} failed", dump.display());
    url
}

/// Serves an earlier release's data with this build and checks that everything reads back.
fn check_upgrade(fixture: &Path, backend: &str, server: Server) {
    let manifest: Value = serde_json::from_slice(&std::fs::read(fixture.join("manifest.json")).unwrap()).unwrap();
    let manifest = &manifest[backend];
    let token = manifest["token"].as_str().unwrap();
    let http = server.http().with_token(token);
    let bento = manifest["bento"].as_str().unwrap();
    let (repo, version) = bento.split_once(':').unwrap();
    let label = format!("{} ({backend})", fixture.file_name().unwrap().to_string_lossy());

    // The token, its user and organization.
    let me = http.get("/api/v1/auth/current");
    assert_eq!(me.status, 200, "{label}: the earlier release's token: {}", me.text());
    // The registry: the bento's archive byte for byte, and the CLI pulls it with its models.
    let v = http.get(&format!("/api/v1/bento_repositories/{repo}/bentos/{version}")).json();
    assert_eq!(v["upload_status"], "success", "{label}: {v}");
    let archive = http.get(&format!("/api/v1/bento_repositories/{repo}/bentos/{version}/download"));
    assert_eq!(archive.status, 200);
    assert_eq!(format!("sha256:{}", sha256_hex(&archive.body)), manifest["bento_digest"].as_str().unwrap(), "{label}");
    let puller = Bentoml::new(&server.url, token);
    let out = puller.ok(&["pull", bento, "--with-models"]);
    assert!(out.to_lowercase().contains("successfully pulled bento"), "{label}: {out}");
    for m in manifest["models"].as_array().unwrap() {
        let m = m.as_str().unwrap();
        let (name, version) = m.split_once(':').unwrap();
        let r = http.get(&format!("/api/v1/model_repositories/{name}/models/{version}"));
        assert_eq!(r.status, 200, "{label}: model {m}: {}", r.text());
        assert!(puller.model_dir(m).join("model.yaml").exists(), "{label}: {m} was not pulled");
    }
    // Secrets, deployments, revisions, events, organizations.
    let secrets = http.get("/api/v1/org_secrets").json();
    assert!(secrets.to_string().contains("fixture-secret"), "{label}: {secrets}");
    let d = http.get("/api/v2/deployments/fixture-dep").json();
    assert_eq!(d["status"], "terminated", "{label}: {d}");
    let revisions = http.get("/api/v2/deployments/fixture-dep/revisions").json();
    assert_eq!(revisions["total"], 2, "{label}: {revisions}");
    let events = http.get("/api/v1/events?count=100").json();
    assert!(events["items"].as_array().unwrap().len() >= 5, "{label}: {events}");
    let bob = http.with_token(manifest["other_org_token"].as_str().unwrap());
    assert_eq!(bob.get(&format!("/api/v1/bento_repositories/{repo}")).status, 404, "{label}: isolation");
    // The dashboard's password: the sign-in form takes it.
    let page = server.http().without_token().get("/login");
    let cookies: Vec<String> = page
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .collect();
    let html = page.text();
    let csrf = html.split(r#"name="csrf" value=""#).nth(1).map(|r| r.split('"').next().unwrap()).unwrap_or("");
    let form = format!("csrf={csrf}&login=admin&password={}", PASSWORD.replace(' ', "+"));
    let r = server.http().without_token().raw(
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", &cookies.join("; "))],
        form.as_bytes(),
        Some(form.len()),
        false,
    );
    let signed_in =
        r.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with("yatai_session="));
    assert!(
        r.status == 303 && signed_in,
        "{label}: signing in with the earlier release's password: {} {}",
        r.status,
        r.text()
    );

    // The deployment runs again, and its replica gets the secret the earlier release sealed.
    let r = http.post("/api/v2/deployments/fixture-dep/restore", &json!({}));
    assert_eq!(r.status, 200, "{label}: restore: {}", r.text());
    let d = wait_for("the restored deployment to run", Duration::from_secs(180), || {
        let d = http.get("/api/v2/deployments/fixture-dep").json();
        (d["status"] == "running").then_some(d)
    });
    let ep = Http { base: d["urls"][0].as_str().unwrap().to_owned(), token: None };
    let r = ep.post("/classify", &json!({"input_series": [[5.1, 3.5, 1.4, 0.2]]}));
    assert_eq!(r.status, 200, "{label}: {}", r.text());
    let pid = d["replicas"][0]["pid"].as_u64().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    assert!(
        environ.split(|b| *b == 0).any(|v| v == format!("API_KEY={SECRET_VALUE}").as_bytes()),
        "{label}: the replica did not get the secret sealed by the earlier release"
    );
    let r = http.post("/api/v2/deployments/fixture-dep/terminate", &json!({}));
    assert_eq!(r.status, 200);
    drop(server);
}

#[test]
fn a_sqlite_data_dir_of_an_earlier_release_is_served_whole() {
    if std::env::var_os("YATAI_WRITE_UPGRADE_FIXTURE").is_some() {
        return;
    }
    for fixture in fixtures() {
        let scratch = Scratch::new("upgrade-sqlite");
        untar(&fixture.join("sqlite-data.tar.gz"), scratch.path());
        let server =
            Server::start_with(ServerOptions::new(Backend::SqliteLocal).data_dir(&scratch.path().join("data")));
        check_upgrade(&fixture, "sqlite", server);
    }
}

#[test]
fn a_postgresql_database_of_an_earlier_release_is_served_whole() {
    if std::env::var_os("YATAI_WRITE_UPGRADE_FIXTURE").is_some() {
        return;
    }
    for fixture in fixtures() {
        let scratch = Scratch::new("upgrade-postgres");
        untar(&fixture.join("postgres-data.tar.gz"), scratch.path());
        let url = database_from(&fixture.join("postgres.sql.gz"));
        let server = Server::start_with(
            ServerOptions::new(Backend::SqliteLocal)
                .data_dir(&scratch.path().join("data"))
                .args(&["--database-url", &url]),
        );
        check_upgrade(&fixture, "postgres", server);
    }
}

/// What an earlier release is asked to store, through its API, CLI and admin commands.
fn populate(server: &Server, token: &str) -> Value {
    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, token, iris.home.path());
    client.ok(&["push", &iris.bento]);
    client.ok(&["secret", "create", "fixture-secret", &format!("API_KEY={SECRET_VALUE}")]);
    let http = server.http().with_token(token);
    let r = http.post(
        "/api/v2/deployments",
        &json!({"bento": iris.bento, "name": "fixture-dep", "secrets": ["fixture-secret"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http.request(
        "PUT",
        "/api/v2/deployments/fixture-dep",
        Some(&json!({"bento": iris.bento, "secrets": ["fixture-secret"], "envs": [{"name": "MODE", "value": "fixture"}]})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(http.post("/api/v2/deployments/fixture-dep/terminate", &json!({})).status, 200);
    wait_for("the deployment to stop", Duration::from_secs(60), || {
        (http.get("/api/v2/deployments/fixture-dep").json()["status"] == "terminated").then_some(())
    });
    server.admin_with_env(&["user", "set-password", "admin"], &[("YATAI_PASSWORD", PASSWORD)]);
    server.admin(&["org", "create", "other"]);
    server.admin(&["user", "create", "bob", "--email", "bob@example.com", "--org", "other", "--role", "admin"]);
    let other = server.admin(&["token", "create", "--name", "bob", "--user", "bob", "--org", "other"]);
    let (repo, version) = iris.bento.split_once(':').unwrap();
    let digest =
        http.get(&format!("/api/v1/bento_repositories/{repo}/bentos/{version}")).json()["archive_digest"].clone();
    json!({
        "made_by": run(Command::new("git").args(["rev-parse", "HEAD"])).trim(),
        "token": token,
        "other_org_token": other.trim(),
        "bento": iris.bento,
        "bento_digest": digest,
        "models": iris.models,
    })
}

/// Writes a fixture of this build to `YATAI_WRITE_UPGRADE_FIXTURE` (see the top of the file).
#[test]
fn write_an_upgrade_fixture_when_asked() {
    let Some(out) = std::env::var_os("YATAI_WRITE_UPGRADE_FIXTURE") else { return };
    let out = std::env::current_dir().unwrap().join("../..").join(out);
    std::fs::create_dir_all(&out).unwrap();
    let pack = |data: &Path, name: &str| {
        // The runtime's unpacked bentos and logs are rebuilt; what is stored is the rest.
        run(Command::new("tar")
            .arg("-czf")
            .arg(out.join(name))
            .arg("--exclude=./data/runtime")
            .arg("-C")
            .arg(data.parent().unwrap())
            .arg("./data"));
    };
    // SQLite and local storage.
    let mut server = Server::start(Backend::SqliteLocal);
    let sqlite = populate(&server, &server.token.clone());
    server.stop();
    pack(&server.data_dir(), "sqlite-data.tar.gz");
    // PostgreSQL with local storage.
    let url = new_pg_database("fixture");
    let mut server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&["--database-url", &url]));
    let postgres = populate(&server, &server.token.clone());
    server.stop();
    pack(&server.data_dir(), "postgres-data.tar.gz");
    let dump = run(Command::new("pg_dump").args(["--no-owner", "--no-privileges", &url]));
    let mut gz = Command::new("gzip")
        .arg("-9n")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        gz.stdin.take().unwrap().write_all(dump.as_bytes()).unwrap();
    }
    std::fs::write(out.join("postgres.sql.gz"), gz.wait_with_output().unwrap().stdout).unwrap();
    let manifest = json!({"sqlite": sqlite, "postgres": postgres});
    std::fs::write(out.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    eprintln!("upgrade fixture written to {}", out.display());
}
