//! What an operator of yatai runs it with: `GET /metrics` scraped by a real Prometheus, the
//! token that guards it, and JSON logs that say which request and which user a line is about
//! without ever holding a token or a transfer URL's signature.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// The samples of an exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect()
}

fn sample(all: &BTreeMap<String, f64>, key: &str) -> f64 {
    *all.get(key).unwrap_or_else(|| panic!("no sample {key} in:\n{all:#?}"))
}

/// The process, and its directory (removed after it, at drop).
struct Prometheus(Child, #[allow(dead_code)] Scratch);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus (Debian's) scraping `target` every second with `token`.
fn prometheus(target: &str, token: &str) -> (Prometheus, Http) {
    let dir = Scratch::new("prometheus");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: yatai\n    authorization:\n      \
             credentials: {token}\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .expect("prometheus (Debian's package, installed by scripts/setup-test-deps)");
    (Prometheus(child, dir), Http { base: format!("http://127.0.0.1:{port}"), token: None })
}

/// A Prometheus query's single value, when there is one.
fn query(prom: &Http, q: &str) -> Option<f64> {
    // Not listening yet: no answer.
    std::net::TcpStream::connect(prom.addr()).ok()?;
    let r = prom.get(&format!("/api/v1/query?query={q}"));
    if r.status != 200 {
        return None;
    }
    let v = r.json();
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn metrics_are_scraped_by_prometheus_and_logs_are_json_without_secrets() {
    const METRICS_TOKEN: &str = "metrics-token-5f1e2d";
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&[
        "--log-format",
        "json",
        "--metrics-token",
        METRICS_TOKEN,
        "--transmission-strategy",
        "presigned",
    ]));
    let http = server.http();

    // A push through presigned URLs (their signatures must not reach the log).
    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    client.ok(&["push", &iris.bento]);

    // The token guards the metrics; with it, they say what happened and what is stored.
    let open = http.without_token();
    let refused = open.get("/metrics");
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert!(refused.text().contains("--metrics-token"), "{}", refused.text());
    let wrong = open.raw("GET", "/metrics", &[("Authorization", "Bearer nope")], b"", Some(0), false);
    assert_eq!(wrong.status, 401);
    let bearer = format!("Bearer {METRICS_TOKEN}");
    let scraped = open.raw("GET", "/metrics", &[("Authorization", &bearer)], b"", Some(0), false);
    assert_eq!(scraped.status, 200, "{}", scraped.text());
    assert!(scraped.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    let text = scraped.text();
    let all = samples(&text);
    assert_eq!(sample(&all, r#"yatai_registry_versions{kind="bento",status="success"}"#), 1.0);
    let models = sample(&all, r#"yatai_registry_versions{kind="model",status="success"}"#);
    assert!(models >= 1.0, "{text}");
    // Each version its own archive here: the bento's and its models'.
    assert_eq!(sample(&all, "yatai_registry_stored_archives"), 1.0 + models);
    assert!(sample(&all, "yatai_registry_stored_bytes") > 1000.0, "{text}");
    assert!(sample(&all, "yatai_db_pool_connections") >= 1.0, "{text}");
    // Requests are counted by route template: no bento's name becomes a label.
    let pushed = all
        .iter()
        .filter(|(k, _)| {
            k.starts_with("yatai_http_requests_total{") && k.contains(r#"route="/api/v1/bento_repositories/{"#)
        })
        .count();
    assert!(pushed > 0, "{text}");
    let (repo, _) = iris.bento.split_once(':').unwrap();
    assert!(!text.contains(repo), "an artifact's name in the metrics:\n{text}");

    // A real Prometheus scrapes them (with the token) and answers queries on them.
    let (_prom, prom) = prometheus(&http.addr(), METRICS_TOKEN);
    let up = wait_for("Prometheus to scrape yatai", Duration::from_secs(60), || {
        query(&prom, "up%7Bjob%3D%22yatai%22%7D").filter(|v| *v == 1.0)
    });
    assert_eq!(up, 1.0);
    let stored = wait_for("the stored archives in Prometheus", Duration::from_secs(30), || {
        query(&prom, "yatai_registry_stored_archives")
    });
    assert_eq!(stored, 1.0 + models);
    let rate = wait_for("a request count in Prometheus", Duration::from_secs(30), || {
        query(&prom, "sum(yatai_http_requests_total)").filter(|v| *v > 0.0)
    });
    assert!(rate > 0.0);

    // JSON logs: every line an object; a failed request's line names its id, path and user,
    // and no line holds the API token or a presigned URL's signature.
    let failed = http.get("/api/v1/bento_repositories/no-such-thing?q=%ff");
    let failed_id = failed.header("x-request-id").unwrap().to_owned();
    let log = wait_for("the log to be written", Duration::from_secs(10), || {
        let log = server.log_text();
        log.contains(&failed_id).then_some(log)
    });
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}")))
        .collect();
    // The request's span: its id, method, path (never the query) and who acted.
    let line = lines.iter().find(|l| l["span"]["id"] == failed_id.as_str()).expect("a line with the request's id");
    let span = &line["span"];
    assert_eq!(span["path"], "/api/v1/bento_repositories/no-such-thing", "{line}");
    assert!(span["user"].as_str().is_some_and(|u| u.starts_with("admin (token ")), "{line}");
    assert!(line["status"].is_u64(), "the request's status on its line: {line}");
    assert!(!log.contains(&server.token), "the API token in the log");
    assert!(!log.contains(METRICS_TOKEN), "the metrics token in the log");
    for signature in ["X-Amz-Signature", "signature=", "sig="] {
        assert!(!log.contains(signature), "a transfer URL's signature in the log ({signature})");
    }
}

// ---- `yatai backup` / `yatai restore` ----

fn assert_same_tree(a: &std::path::Path, b: &std::path::Path) {
    let (ta, tb) = (tree(a), tree(b));
    assert!(!ta.is_empty(), "{} is empty", a.display());
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>(), "different files");
    for (k, v) in &ta {
        assert!(v == &tb[k], "{k} differs between {} and {}", a.display(), b.display());
    }
}

/// The SHA-256 of every archive a server stores.
fn archive_digests(server: &Server) -> std::collections::BTreeSet<String> {
    use sha2::Digest;
    server.stored_archives().iter().map(|p| hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))).collect()
}

fn ok(out: std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    stderr
}

fn fails(out: std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what} succeeded but should have failed:\n{stderr}");
    stderr
}

/// Pulls the iris bento and its models from `server` with `token` and compares every file with
/// what `pusher` pushed.
fn pulls_the_same(server: &Server, token: &str, pusher: &Bentoml) {
    let iris = iris_home();
    let puller = Bentoml::new(&server.url, token);
    let out = puller.ok(&["pull", &iris.bento, "--with-models"]);
    assert!(out.to_lowercase().contains("successfully pulled bento"), "{out}");
    assert_same_tree(&pusher.bento_dir(&iris.bento), &puller.bento_dir(&iris.bento));
    for m in &iris.models {
        assert_same_tree(&pusher.model_dir(m), &puller.model_dir(m));
    }
}

/// A backup taken while the server runs, restored into a fresh SQLite data directory and into a
/// fresh PostgreSQL database and S3 bucket: each serves the same pulls byte for byte, the tokens
/// and the secret came along; without `--include-keys` the registry works and the secret's values
/// cannot be opened, saying which key is missing.
#[test]
fn a_backup_taken_while_serving_restores_into_sqlite_and_into_postgres_and_s3() {
    let server = Server::start(Backend::SqliteLocal);
    let iris = iris_home();
    let pusher = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    pusher.ok(&["push", &iris.bento]);
    pusher.ok(&["secret", "create", "api-keys", "API_KEY=restored-value", "REGION=eu"]);
    server.admin(&["org", "create", "other"]);
    server.admin(&["user", "create", "eve", "--org", "other", "--role", "developer"]);
    let eve = server.admin(&["token", "create", "--name", "eve", "--user", "eve", "--org", "other"]).trim().to_owned();
    let digests = archive_digests(&server);
    assert_eq!(digests.len(), 3);

    let dir = Scratch::new("backups");
    let with_keys = dir.path().join("with-keys.tar.zst");
    let started = std::time::Instant::now();
    let log = ok(
        server.yatai(&["backup", "--output", with_keys.to_str().unwrap(), "--include-keys"]),
        "yatai backup (server running)",
    );
    let took = started.elapsed();
    let size = std::fs::metadata(&with_keys).unwrap().len();
    let stored: u64 = server.stored_archives().iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    eprintln!("MEASURED backup with keys: {size} bytes ({stored} bytes of archives) in {took:?}");
    assert!(log.contains("table versions: 3 rows"), "{log}");
    assert!(log.contains("archive 3/3"), "{log}");
    assert!(log.contains("keep it safe"), "{log}");
    let without_keys = dir.path().join("without-keys.tar.zst");
    let log = ok(server.yatai(&["backup", "--output", without_keys.to_str().unwrap()]), "yatai backup");
    assert!(log.contains("not included"), "{log}");
    // An existing file is never overwritten.
    let e = fails(server.yatai(&["backup", "--output", without_keys.to_str().unwrap()]), "backup over a file");
    assert!(e.contains("exists already"), "{e}");
    // The source keeps serving throughout.
    pusher.ok(&["models", "list"]);

    // Into a fresh SQLite data directory, with the keys.
    let target = Target::fresh(Backend::SqliteLocal);
    let started = std::time::Instant::now();
    let log = ok(target.yatai(&["restore", "--input", with_keys.to_str().unwrap()]), "yatai restore (sqlite)");
    eprintln!("MEASURED restore into SQLite + local: {:?}", started.elapsed());
    assert!(log.contains("restored the key"), "{log}");
    assert_eq!(
        std::fs::read(target.data_dir.join("secrets/cluster.key")).unwrap(),
        std::fs::read(server.data_dir().join("secrets/cluster.key")).unwrap()
    );
    let restored = Server::start_with(ServerOptions::new(Backend::SqliteLocal).on(target));
    assert_eq!(archive_digests(&restored), digests);
    pulls_the_same(&restored, &server.token, &pusher);
    let me = restored.http().with_token(&eve).get("/api/v1/auth/current");
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["name"], "eve");
    let secrets = Bentoml::new(&restored.url, &server.token).ok(&["secret", "list"]);
    assert!(secrets.contains("api-keys"), "{secrets}");

    // The same file into a fresh PostgreSQL database and S3 bucket.
    let target = Target::fresh(Backend::PostgresS3);
    let started = std::time::Instant::now();
    ok(target.yatai(&["restore", "--input", with_keys.to_str().unwrap()]), "yatai restore (postgres + s3)");
    eprintln!("MEASURED restore into PostgreSQL + S3: {:?}", started.elapsed());
    let on_pg = Server::start_with(ServerOptions::new(Backend::PostgresS3).on(target));
    assert_eq!(archive_digests(&on_pg), digests);
    pulls_the_same(&on_pg, &server.token, &pusher);
    assert_eq!(on_pg.http().with_token(&eve).get("/api/v1/auth/current").status, 200);
    let secrets = Bentoml::new(&on_pg.url, &server.token).ok(&["secret", "list"]);
    assert!(secrets.contains("api-keys"), "{secrets}");
    // New rows still get fresh keys after the restored ones (PostgreSQL's sequences moved on).
    let again = Bentoml::with_home_from(&on_pg.url, &server.token, iris.home.path());
    again.ok(&["push", &iris.bento_v2]);
    drop(on_pg);

    // Without the keys: the registry works, the secret is listed, its values cannot be opened.
    let target = Target::fresh(Backend::SqliteLocal);
    let log = ok(target.yatai(&["restore", "--input", without_keys.to_str().unwrap()]), "restore without keys");
    assert!(log.contains("holds no keys") && log.contains("cluster.key"), "{log}");
    let keyless = Server::start_with(ServerOptions::new(Backend::SqliteLocal).on(target));
    pulls_the_same(&keyless, &server.token, &pusher);
    let client = Bentoml::new(&keyless.url, &server.token);
    assert!(client.ok(&["secret", "list"]).contains("api-keys"));
    let e = client.fails(&["deployment", "create", &iris.bento, "--name", "needs-key", "--secret", "api-keys"]);
    assert!(e.contains("cannot be opened") && e.contains("cluster.key"), "{e}");
}

/// Rewrites a backup member by member through `edit` (name, bytes) → bytes.
fn rewrite(backup: &std::path::Path, out: &std::path::Path, mut edit: impl FnMut(&str, Vec<u8>) -> Vec<u8>) {
    use std::io::Read;
    let mut archive = tar::Archive::new(zstd::Decoder::new(std::fs::File::open(backup).unwrap()).unwrap());
    let mut builder = tar::Builder::new(zstd::Encoder::new(std::fs::File::create(out).unwrap(), 3).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        let bytes = edit(&name, bytes);
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        builder.append_data(&mut h, &name, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
}

/// Damaged backups and targets that hold something are refused with a message that says what is
/// wrong, and nothing is left half-restored: the same target then takes the intact backup.
#[test]
fn restore_refuses_damaged_backups_and_targets_that_are_not_empty() {
    let server = Server::start(Backend::SqliteLocal);
    let client = server.client();
    let tag = client.create_model("backed-up", 300_000);
    client.ok(&["models", "push", &tag]);
    let dir = Scratch::new("backups");
    let good = dir.path().join("good.tar.zst");
    ok(server.yatai(&["backup", "--output", good.to_str().unwrap()]), "yatai backup");
    let bytes = std::fs::read(&good).unwrap();
    let target = Target::fresh(Backend::SqliteLocal);
    let restore = |file: &std::path::Path| target.yatai(&["restore", "--input", file.to_str().unwrap()]);

    // Truncated, at several points.
    for cut in [bytes.len() / 10, bytes.len() / 2, bytes.len() - 100] {
        let truncated = dir.path().join(format!("cut-{cut}.tar.zst"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        let e = fails(restore(&truncated), "restore of a truncated backup");
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
        assert!(e.contains("nothing was restored"), "{e}");
    }

    // An archive's bytes altered (same size).
    let altered = dir.path().join("altered.tar.zst");
    rewrite(&good, &altered, |name, mut b| {
        if name.starts_with("blobs/") {
            let mid = b.len() / 2;
            b[mid] ^= 0xff;
        }
        b
    });
    let e = fails(restore(&altered), "restore of an altered backup");
    assert!(e.contains("does not match the sha256 in its manifest"), "{e}");
    assert!(e.contains("nothing was restored"), "{e}");

    // A row altered.
    let altered_rows = dir.path().join("altered-rows.tar.zst");
    rewrite(&good, &altered_rows, |name, b| {
        if name == "tables/repositories.jsonl" {
            String::from_utf8(b).unwrap().replace("backed-up", "backed-uq").into_bytes()
        } else {
            b
        }
    });
    let e = fails(restore(&altered_rows), "restore of altered rows");
    assert!(e.contains("tables/repositories.jsonl") && e.contains("does not match"), "{e}");

    // A newer format, and something that is not a backup at all.
    let newer = dir.path().join("newer.tar.zst");
    rewrite(&good, &newer, |name, b| {
        if name == "manifest.json" {
            let mut m: serde_json::Value = serde_json::from_slice(&b).unwrap();
            m["format_version"] = 99.into();
            m["yatai_version"] = "7.0.0".into();
            serde_json::to_vec(&m).unwrap()
        } else {
            b
        }
    });
    let e = fails(restore(&newer), "restore of a newer format");
    assert!(e.contains("format 99") && e.contains("yatai 7.0.0 or newer"), "{e}");
    let not_backup = dir.path().join("notes.txt");
    std::fs::write(&not_backup, "just some text\n").unwrap();
    let e = fails(restore(&not_backup), "restore of a text file");
    assert!(e.contains("not a yatai backup"), "{e}");

    // Nothing of the failed attempts is left: the target takes the intact backup.
    let log = ok(restore(&good), "restore of the intact backup after the failures");
    assert!(log.contains("restored"), "{log}");
    // ...and not a second time: it is no longer empty.
    let e = fails(restore(&good), "restore into a restored target");
    assert!(e.contains("not empty") && e.contains("nothing was restored"), "{e}");
    // The running server's own data directory is refused too.
    let e = fails(server.yatai(&["restore", "--input", good.to_str().unwrap()]), "restore over a running server");
    assert!(e.contains("is not empty"), "{e}");
    // An empty database with objects in its storage.
    let other = Target::fresh(Backend::SqliteLocal);
    std::fs::create_dir_all(other.data_dir.join("artifacts/blobs")).unwrap();
    std::fs::write(other.data_dir.join("artifacts/blobs/stray"), b"x").unwrap();
    let e = fails(other.yatai(&["restore", "--input", good.to_str().unwrap()]), "restore into a full bucket");
    assert!(e.contains("storage") && e.contains("not empty"), "{e}");
}
