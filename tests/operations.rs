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
