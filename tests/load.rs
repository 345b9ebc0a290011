//! Load against a real `yatai serve`: a fixed rate of mixed registry reads, and a soak of pushes,
//! pulls, deletes and deployments. Neither asserts a latency or a throughput figure (those are
//! recorded in docs/reliability.md); both assert what must hold under load: no error, every byte
//! read back as written, and the server's memory, file descriptors and data dir flat.
//!
//! The rate and durations are set by environment variables, so the figures in
//! docs/reliability.md come from this same code run longer:
//! - `YATAI_LOAD_RPS` (default 1000: what the debug build the suite runs keeps up with on 2
//!   cores; the recorded 2,000/s ran the release build, `YATAI_TEST_BIN=target/release/yatai`)
//!   and `YATAI_LOAD_SECS` (default 60);
//! - `YATAI_SOAK_SECS` (default 120; the recorded soak ran 1200).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One kept-alive HTTP/1.1 connection, for load: requests go out back to back on it.
struct KeepAlive {
    reader: BufReader<TcpStream>,
    addr: String,
    token: String,
}

impl KeepAlive {
    fn connect(addr: &str, token: &str) -> std::io::Result<KeepAlive> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(KeepAlive { reader: BufReader::new(s), addr: addr.to_owned(), token: token.to_owned() })
    }

    /// `GET path`: the status and the body.
    fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nX-YATAI-API-TOKEN: {}\r\n\r\n", self.addr, self.token);
        self.reader.get_mut().write_all(head.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("status line {line:?}")))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let start = body.len();
                body.resize(start + size + 2, 0);
                self.reader.read_exact(&mut body[start..])?;
                body.truncate(start + size);
                if size == 0 {
                    break;
                }
            }
        } else {
            body.resize(length.unwrap_or(0), 0);
            self.reader.read_exact(&mut body)?;
        }
        Ok((status, body))
    }
}

/// The server's resident memory (KiB) and open descriptors, sampled once a second.
struct Sampler {
    samples: Arc<Mutex<Vec<(Duration, u64, usize)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                s.lock().unwrap().push((started.elapsed(), rss_kib(pid), open_fds(pid)));
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Sampler { samples, stop, thread: Some(thread) }
    }

    fn finish(mut self) -> Vec<(Duration, u64, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// The largest RSS (KiB) of the samples taken in `[from, to)` of the run.
fn peak_rss(samples: &[(Duration, u64, usize)], from: f64, to: f64) -> u64 {
    let end = samples.last().map(|s| s.0.as_secs_f64()).unwrap_or(0.0);
    samples.iter().filter(|s| (from * end..to * end).contains(&s.0.as_secs_f64())).map(|s| s.1).max().unwrap_or(0)
}

/// Growth of the RSS peak from the second quarter of a run (after the warm-up: caches filled,
/// pools at size) to its last quarter, in KiB. A leak grows it with the number of requests.
fn rss_growth(samples: &[(Duration, u64, usize)]) -> i64 {
    peak_rss(samples, 0.75, 1.01) as i64 - peak_rss(samples, 0.25, 0.5) as i64
}

/// What the descriptors of `pid` point to.
fn fd_targets(pid: u32) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.display().to_string())
        .collect();
    out.sort();
    out
}

/// The database's connection pool grows to its size (8 SQLite connections, each with the
/// database and its WAL open, and one shared memory map) under load and keeps it: those
/// descriptors are bounded, not leaked.
const POOL_FDS: usize = 8 * 2 + 1;

/// Waits up to 15 s for the server's descriptors to come back to what it held before (plus
/// the pool's); fails naming what it still holds. Returns the count.
fn assert_no_descriptor_leak(pid: u32, before: usize, data_dir: &std::path::Path) -> usize {
    let database = data_dir.join("yatai.db").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let targets = fd_targets(pid);
        let pool = targets.iter().filter(|t| t.starts_with(&database)).count();
        let others = targets.len() - pool;
        if others <= before || Instant::now() > deadline {
            assert!(
                others <= before && pool <= POOL_FDS,
                "descriptors leaked: {before} open before, {} now: {targets:?}",
                targets.len()
            );
            return targets.len();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// A request of the mix, chosen by its sequence number: lists, repositories, versions, small
/// archive downloads and the identity check, in the proportions a registry serving pulls and a
/// dashboard sees.
fn mixed_read(i: u64, repos: u64, versions: u64) -> (String, &'static str) {
    // A cheap, fixed scramble, so that consecutive requests hit different rows.
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
    let (r, v) = (h % repos, (h / repos) % versions);
    let version = format!("/api/v1/model_repositories/load-{r}/models/v{v}");
    match i % 20 {
        0..=3 => ("/api/v1/model_repositories?start=0&count=20".to_owned(), "repository list"),
        4..=7 => (format!("/api/v1/model_repositories/load-{r}"), "repository"),
        8..=10 => (format!("/api/v1/model_repositories/load-{r}/models?start=0&count=10"), "version list"),
        11..=16 => (version, "version"),
        17 | 18 => (format!("{version}/download"), "download"),
        _ => ("/api/v1/auth/current".to_owned(), "current user"),
    }
}

#[test]
fn mixed_registry_reads_at_a_fixed_rate_give_no_error_and_keep_memory_and_descriptors_flat() {
    let rate = env_number("YATAI_LOAD_RPS", 1000);
    let secs = env_number("YATAI_LOAD_SECS", 60);
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    let pid = server.child.id();
    let (repos, versions) = (10u64, 5u64);
    let mut payloads = std::collections::HashMap::new();
    for r in 0..repos {
        for v in 0..versions {
            let payload: Vec<u8> = (0..4096u32).map(|i| (i as u64 * (r + 3) + v) as u8).collect();
            let path = create_model_version(&http, &format!("load-{r}"), &format!("v{v}"));
            assert_eq!(upload_payload(&http, &path, &payload).status, 200);
            payloads.insert(path, tar_of(&[("./data", &payload)]));
        }
    }
    let payloads = Arc::new(payloads);
    let fds_before = open_fds(pid);

    // Open loop: request k is due at k / rate; a worker that falls behind sends at once, and
    // its latency counts from when the request was due (so a stalled server shows in p99
    // rather than slowing the load down).
    let total = rate * secs;
    let workers = 48;
    let next = Arc::new(AtomicU64::new(0));
    let sampler = Sampler::start(pid);
    let started = Instant::now() + Duration::from_millis(200);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (next, payloads, addr, token) = (next.clone(), payloads.clone(), http.addr(), server.token.clone());
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut errors: Vec<String> = Vec::new();
                let mut conn = KeepAlive::connect(&addr, &token).unwrap();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= total {
                        break;
                    }
                    let due = started + Duration::from_nanos(k * 1_000_000_000 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let (path, what) = mixed_read(k, repos, versions);
                    let result = conn.get(&path);
                    latencies.push(due.elapsed().as_micros() as u64);
                    match result {
                        Ok((200, body)) => {
                            if what == "download" {
                                let path = path.trim_end_matches("/download");
                                if payloads.get(path) != Some(&body) {
                                    errors.push(format!("{path}: the archive read back differs"));
                                }
                            }
                        }
                        Ok((status, body)) => {
                            errors.push(format!("{what} {path}: {status} {}", String::from_utf8_lossy(&body)))
                        }
                        Err(e) => {
                            errors.push(format!("{what} {path}: {e}"));
                            conn = KeepAlive::connect(&addr, &token).unwrap();
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for h in handles {
        let (l, e) = h.join().unwrap();
        latencies.extend(l);
        errors.extend(e);
    }
    let elapsed = started.elapsed();
    let samples = sampler.finish();
    latencies.sort_unstable();
    let (rss_first, rss_last) = (samples.first().map(|s| s.1).unwrap_or(0), samples.last().map(|s| s.1).unwrap_or(0));
    let fds_peak = samples.iter().map(|s| s.2).max().unwrap_or(0);
    eprintln!(
        "load: {} requests ({rate}/s due for {secs} s) in {:.1} s = {:.0}/s, {} errors; latency from due time \
         p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; RSS {} → {} KiB \
         (peak growth from the 2nd to the 4th quarter {} KiB); fds {fds_before} before, peak {fds_peak}",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        errors.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        percentile(&latencies, 1.0),
        rss_first,
        rss_last,
        rss_growth(&samples),
    );
    assert!(
        errors.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        errors.len(),
        latencies.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(latencies.len() as u64, total);
    // Memory: flat once warm. 1 KiB kept per request would grow it by tens of MiB here.
    let growth = rss_growth(&samples);
    assert!(growth < 16 * 1024, "RSS grew by {growth} KiB from the second to the last quarter of the run: {samples:?}");
    // Descriptors: the load's connections (48) and nothing else while it runs; all of them
    // returned once they close.
    assert!(fds_peak <= fds_before + workers as usize + 16, "the server held {fds_peak} descriptors under load");
    assert_no_descriptor_leak(pid, fds_before, &server.data_dir());
    drop(server);
}

/// Total bytes of the files below `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files.iter().filter_map(|f| std::fs::symlink_metadata(f).ok()).map(|m| m.len()).sum()
}

/// Polls the deployment until `ok` holds of it, for up to `timeout`.
fn deployment_until(
    http: &Http,
    name: &str,
    timeout: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    poll(timeout, || {
        let r = http.get(&format!("/api/v2/deployments/{name}"));
        assert_eq!(r.status, 200, "{}", r.text());
        last = r.json();
        ok(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("deployment {name} did not get there within {timeout:?}: {last:#}"))
}

/// One deployment's life through the API: created, answering, updated to the other build of
/// the bento, rolled back to its first revision, terminated, deleted. Returns how many
/// predictions it answered.
fn deployment_cycle(http: &Http, name: &str, bento: &str, bento_v2: &str) -> usize {
    // Running the revision that serves `bento` on every replica.
    let rolled_out = |d: &serde_json::Value, bento: &str| {
        let rev = &d["latest_revision"];
        let replicas = d["replicas"].as_array().cloned().unwrap_or_default();
        d["status"] == "running"
            && rev["targets"][0]["bento"]["version"] == bento.split_once(':').unwrap().1
            && !replicas.is_empty()
            && replicas.iter().all(|r| r["revision_uid"] == rev["uid"] && r["state"] == "ready")
    };
    let r = http.post("/api/v2/deployments", &json!({"name": name, "bento": bento}));
    assert_eq!(r.status, 200, "create: {}", r.text());
    let d = deployment_until(http, name, Duration::from_secs(180), |d| rolled_out(d, bento));
    let predict = |d: &serde_json::Value| {
        let ep = Http { base: d["urls"][0].as_str().expect("a URL").to_owned(), token: None };
        let r = ep.post("/classify", &json!({"input_series": [[5.1, 3.5, 1.4, 0.2]]}));
        assert_eq!(r.status, 200, "predict: {}", r.text());
        assert_eq!(r.json(), json!([0]));
    };
    predict(&d);
    let r = http.request("PUT", &format!("/api/v2/deployments/{name}"), Some(&json!({"bento": bento_v2})));
    assert_eq!(r.status, 200, "update: {}", r.text());
    let d = deployment_until(http, name, Duration::from_secs(180), |d| rolled_out(d, bento_v2));
    predict(&d);
    let revisions = http.get(&format!("/api/v2/deployments/{name}/revisions")).json();
    let first = revisions["items"].as_array().and_then(|r| r.last()).map(|r| r["uid"].clone()).expect("revisions");
    let r = http.post(&format!("/api/v2/deployments/{name}/rollback"), &json!({"revision_uid": first}));
    assert_eq!(r.status, 200, "rollback: {}", r.text());
    let d = deployment_until(http, name, Duration::from_secs(180), |d| rolled_out(d, bento));
    predict(&d);
    let r = http.post(&format!("/api/v2/deployments/{name}/terminate"), &json!({}));
    assert_eq!(r.status, 200, "terminate: {}", r.text());
    deployment_until(http, name, Duration::from_secs(60), |d| d["status"] == "terminated");
    let r = http.delete(&format!("/api/v2/deployments/{name}"));
    assert_eq!(r.status, 200, "delete: {}", r.text());
    3
}

#[test]
fn a_soak_of_pushes_pulls_deploys_and_deletes_keeps_memory_descriptors_and_disk_flat() {
    let secs = env_number("YATAI_SOAK_SECS", 120);
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&["--janitor-interval", "2s"]));
    let http = server.http();
    let pid = server.child.id();
    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    client.ok(&["push", &iris.bento]);
    client.ok(&["push", &iris.bento_v2]);
    let fds_before = open_fds(pid);
    let sampler = Sampler::start(pid);
    let deadline = Instant::now() + Duration::from_secs(secs);

    // Deployments, one after another, beside the registry traffic.
    let deployer = {
        let (http, bento, bento_v2) = (server.http(), iris.bento.clone(), iris.bento_v2.clone());
        let runtime = server.data_dir().join("runtime");
        std::thread::spawn(move || {
            let (mut cycles, mut predictions, mut runtime_bytes) = (0, 0, Vec::new());
            while Instant::now() < deadline || cycles < 2 {
                predictions += deployment_cycle(&http, &format!("soak-{cycles}"), &bento, &bento_v2);
                cycles += 1;
                runtime_bytes.push(bytes_under(&runtime));
            }
            (cycles, predictions, runtime_bytes)
        })
    };

    // Pushes of new versions, a pull of a random live one after each, and deletes that keep 16
    // live: what is stored stays the same size while everything moves.
    let mut live: std::collections::VecDeque<(String, Vec<u8>)> = Default::default();
    let (mut pushed, mut pulled, mut deleted) = (0u64, 0u64, 0u64);
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut next = || rng.next();
    while Instant::now() < deadline {
        let size = 1024 + (next() % (512 * 1024)) as usize;
        let fill = next() as u8;
        let payload: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(fill)).collect();
        let path = create_model_version(&http, "soak", &format!("v{pushed}"));
        let r = upload_payload(&http, &path, &payload);
        assert_eq!(r.status, 200, "push {path}: {}", r.text());
        pushed += 1;
        live.push_back((path, payload));
        let (path, payload) = &live[(next() % live.len() as u64) as usize];
        assert!(downloaded_payload(&http, path) == *payload, "{path} read back differs");
        pulled += 1;
        if live.len() > 16 {
            let (path, _) = live.pop_front().unwrap();
            let r = http.delete(&path);
            assert_eq!(r.status, 200, "delete {path}: {}", r.text());
            deleted += 1;
        }
    }
    let (cycles, predictions, runtime_bytes) = deployer.join().expect("the deployment cycles failed");
    let samples = sampler.finish();

    // Disk: the archives stored are exactly the live versions' (the janitor has removed the
    // deleted ones), and the runtime keeps nothing of deleted deployments but the shared
    // environments and bento copies.
    let listed = http.get("/api/v1/model_repositories/soak/models?count=1000").json();
    assert_eq!(listed["items"].as_array().unwrap().len(), live.len(), "versions listed: {listed}");
    let blobs = server.data_dir().join("artifacts/blobs");
    let stored = stored_archive_bytes(&http);
    poll(Duration::from_secs(30), || (bytes_under(&blobs) == stored).then_some(())).unwrap_or_else(|| {
        panic!("archives on disk: {} bytes; archives of live versions: {stored}", bytes_under(&blobs))
    });
    let growth = rss_growth(&samples);
    let fds_after = assert_no_descriptor_leak(pid, fds_before, &server.data_dir());
    let rss_first = samples.first().map(|s| s.1).unwrap_or(0);
    let rss_last = samples.last().map(|s| s.1).unwrap_or(0);
    eprintln!(
        "soak: {secs} s: {pushed} pushes, {pulled} pulls, {deleted} deletes, {cycles} deployment cycles \
         (create, update, rollback, terminate, delete; {predictions} predictions); RSS {rss_first} → {rss_last} KiB \
         (peak growth from the 2nd to the 4th quarter {growth} KiB); fds {fds_before} before, {fds_after} after; \
         archives stored {} bytes for {} live versions; database {} bytes; runtime dir after each cycle {runtime_bytes:?} bytes",
        bytes_under(&blobs),
        live.len(),
        std::fs::metadata(server.data_dir().join("yatai.db")).map(|m| m.len()).unwrap_or(0),
    );
    // What the database holds after it all: rows by table (the events are the history kept).
    const COUNT_ROWS: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
tables = [t for (t,) in c.execute("select name from sqlite_master where type = 'table'")]
print(", ".join("%s: %d" % (t, c.execute('select count(*) from "%s"' % t).fetchone()[0]) for t in tables))
"#;
    let rows = std::process::Command::new("python3")
        .args(["-c", COUNT_ROWS])
        .arg(server.data_dir().join("yatai.db"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    eprintln!("soak: database rows by table: {rows}");
    // What a deleted deployment leaves in the runtime dir: nothing that adds up cycle after
    // cycle (the bentos' unpacked copies are shared; a deployment's logs and homes go with it).
    let (first, last) = (runtime_bytes[0], *runtime_bytes.last().unwrap());
    assert!(last <= first + 256 * 1024, "the runtime dir grew from {first} to {last} bytes over {cycles} cycles");
    assert!(growth < 32 * 1024, "RSS grew by {growth} KiB from the second to the last quarter: {samples:?}");
    drop(server);
}

/// The bytes of the distinct archives every version of every repository (models and bentos) names.
fn stored_archive_bytes(http: &Http) -> u64 {
    let mut archives = std::collections::BTreeMap::new();
    for (kind, items) in [("model_repositories", "models"), ("bento_repositories", "bentos")] {
        let repos = http.get(&format!("/api/v1/{kind}?count=1000")).json();
        for repo in repos["items"].as_array().unwrap() {
            let name = repo["name"].as_str().unwrap();
            let versions = http.get(&format!("/api/v1/{kind}/{name}/{items}?count=1000")).json();
            for v in versions["items"].as_array().unwrap() {
                if let (Some(digest), Some(size)) = (v["archive_digest"].as_str(), v["archive_size_bytes"].as_u64()) {
                    archives.insert(digest.to_owned(), size);
                }
            }
        }
    }
    archives.values().sum()
}
