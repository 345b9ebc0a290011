//! Deployments on one machine, driven by the unmodified bentoml CLI: real
//! bentos served by real `bentoml serve` processes behind yatai's proxy.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// A server with the iris bento (both builds) and its models pushed.
fn server_with_iris(backend: Backend, opts: ServerOptions) -> (Server, Bentoml) {
    let _ = backend;
    let server = Server::start_with(opts);
    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    client.ok(&["push", &iris.bento]);
    client.ok(&["push", &iris.bento_v2]);
    (server, client)
}

fn get_deployment(server: &Server, name: &str) -> Value {
    let r = server.http().get(&format!("/api/v2/deployments/{name}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn wait_status(server: &Server, name: &str, status: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    let found = poll(timeout, || {
        last = get_deployment(server, name);
        (last["status"] == status).then(|| last.clone())
    });
    found.unwrap_or_else(|| {
        panic!("deployment {name} did not become {status}; last seen: {last:#}\nlogs:\n{}", logs(server, name))
    })
}

fn logs(server: &Server, name: &str) -> String {
    server.http().get(&format!("/api/v2/deployments/{name}/logs?tail=60")).text()
}

/// The endpoint's address (`127.0.0.1:PORT`) as an HTTP client for it.
fn endpoint(d: &Value) -> Http {
    let url = d["urls"][0].as_str().expect("one URL").to_owned();
    Http { base: url, token: None }
}

fn classify(ep: &Http) -> Response {
    ep.post("/classify", &json!({"input_series": [[5.1, 3.5, 1.4, 0.2]]}))
}

backend_test! {
    fn deploy_predict_browse_terminate_and_delete_with_the_cli(backend: Backend) {
        let (server, client) = server_with_iris(backend, ServerOptions::new(backend));
        let iris = iris_home();
        let out = client.ok(&[
            "deployment", "create", &iris.bento, "--name", "iris", "--scaling-min", "1", "--scaling-max", "3", "--env", "LOG=1",
        ]);
        assert!(out.contains("is ready"), "{out}");

        let d = get_deployment(&server, "iris");
        assert_eq!(d["status"], "running");
        assert_eq!(d["urls"].as_array().unwrap().len(), 1);
        assert_eq!(d["latest_revision"]["targets"][0]["bento"]["repository"]["name"], "iris_service");
        let ep = endpoint(&d);
        let r = classify(&ep);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!([0]));
        let ui = ep.get("/");
        assert_eq!(ui.status, 200);
        assert!(ui.text().contains("swagger") || ui.text().contains("Swagger"), "{}", ui.text());
        let docs = ep.get("/docs.json").json();
        assert!(docs["paths"].get("/classify").is_some(), "{docs}");

        let out = client.ok(&["deployment", "get", "iris", "-o", "json"]);
        let got: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
        assert_eq!(got["status"]["status"], "running");
        assert_eq!(got["config"]["envs"][0]["name"], "LOG");
        let out = client.ok(&["deployment", "list"]);
        assert!(out.contains("iris"), "{out}");

        let pids = serve_processes_under(&server.data_dir());
        assert_eq!(pids.len(), 1, "one replica should run: {pids:?}");
        let out = client.ok(&["deployment", "terminate", "iris", "--wait"]);
        assert!(out.to_lowercase().contains("terminat"), "{out}");
        assert_eq!(get_deployment(&server, "iris")["status"], "terminated");
        wait_for("the replica to exit", Duration::from_secs(30), || pids.iter().all(|p| !pid_alive(*p)).then_some(()));
        assert_eq!(classify(&ep).status, 503, "a terminated deployment answers 503");

        client.ok(&["deployment", "delete", "iris"]);
        assert_eq!(server.http().get("/api/v2/deployments/iris").status, 404);
        let events = server.http().get("/api/v1/events?resource_type=deployment&count=50").json();
        let ops: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["operation_name"].as_str().unwrap()).collect();
        for op in ["created", "status", "terminated", "deleted"] {
            assert!(ops.contains(&op), "no {op} event in {ops:?}");
        }
    }
}

/// The README's first deploy, as a new user runs it: `yatai serve` with no
/// flags in an empty directory (the data directory `yatai-data` is relative),
/// `uv` on PATH, then `bentoml deployment create`. Relative paths once
/// reached replicas that run in another working directory, and every replica
/// failed to start.
#[test]
fn the_readme_flow_with_the_default_relative_data_dir_deploys_and_predicts() {
    let opts = ServerOptions { readme_defaults: true, ..ServerOptions::new(Backend::SqliteLocal) };
    let (server, client) = server_with_iris(Backend::SqliteLocal, opts);
    assert!(!server.args.iter().any(|a| a == "--data-dir"), "{:?}", server.args);
    assert!(server.data_dir().join("yatai.db").exists(), "the default data dir is ./yatai-data");
    let out = client.ok(&["deployment", "create", &iris_home().bento, "--name", "iris"]);
    assert!(out.contains("is ready"), "{out}");
    let d = get_deployment(&server, "iris");
    assert_eq!(d["status"], "running", "{d}");
    let r = classify(&endpoint(&d));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!([0]));
    assert!(server.data_dir().join("envs").is_dir(), "environments are built under ./yatai-data/envs");
}

#[test]
fn a_rolling_update_drops_no_request() {
    let (server, client) = server_with_iris(Backend::SqliteLocal, ServerOptions::new(Backend::SqliteLocal));
    let iris = iris_home();
    client.ok(&["deployment", "create", &iris.bento, "--name", "rolling", "--scaling-min", "2", "--scaling-max", "2"]);
    let d = wait_status(&server, "rolling", "running", Duration::from_secs(120));
    let first_revision = d["latest_revision"]["uid"].as_str().unwrap().to_owned();
    let ep = Arc::new(endpoint(&d));

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (ep, stop, ok, failed, failures) =
                (ep.clone(), stop.clone(), ok.clone(), failed.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = std::panic::catch_unwind(|| classify(&ep));
                    match r {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => {
                            failures.lock().unwrap().push(format!("{} {}", r.status, r.text()));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => {
                            failures.lock().unwrap().push("connection failed".into());
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    let out = client.ok(&["deployment", "update", "rolling", "--bento", &iris.bento_v2]);
    assert!(out.to_lowercase().contains("updated") || out.contains("rolling"), "{out}");
    // Wait until only the new revision's replicas are left and serving.
    let done = poll(Duration::from_secs(180), || {
        let d = get_deployment(&server, "rolling");
        let rev = d["latest_revision"]["uid"].as_str().unwrap().to_owned();
        let replicas = d["replicas"].as_array().unwrap().clone();
        (rev != first_revision
            && d["status"] == "running"
            && replicas.len() == 2
            && replicas.iter().all(|r| r["revision_uid"] == rev.as_str() && r["state"] == "ready"))
        .then_some(d)
    });
    // Keep sending for a moment after the switch, while old replicas stop.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }
    let d = done.unwrap_or_else(|| {
        panic!(
            "the update did not finish: {:#}\nlogs:\n{}",
            get_deployment(&server, "rolling"),
            logs(&server, "rolling")
        )
    });
    assert_eq!(d["latest_revision"]["targets"][0]["bento"]["version"], iris.bento_v2.split_once(':').unwrap().1);
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the update: {:?}",
        ok + failed,
        failures.lock().unwrap()
    );
    assert!(ok > 50, "only {ok} requests were sent during the update");
    // The old replicas drain, then exit.
    let left = || serve_processes_under(&server.data_dir()).len();
    poll(Duration::from_secs(60), || (left() == 2).then_some(()))
        .unwrap_or_else(|| panic!("the old replicas were not stopped: {} serve processes", left()));

    // Roll back to the first revision: one more revision, same bento as the first.
    let revs = server.http().get("/api/v2/deployments/rolling/revisions").json();
    assert_eq!(revs["total"], 2);
    let r = server.http().post("/api/v2/deployments/rolling/rollback", &json!({"revision_uid": first_revision}));
    assert_eq!(r.status, 200, "{}", r.text());
    let back = poll(Duration::from_secs(180), || {
        let d = get_deployment(&server, "rolling");
        let replicas = d["replicas"].as_array().unwrap().clone();
        (d["status"] == "running"
            && replicas.len() == 2
            && replicas.iter().all(|r| r["revision_uid"] == d["latest_revision"]["uid"] && r["state"] == "ready"))
        .then_some(d)
    })
    .expect("rollback finished");
    assert_eq!(back["latest_revision"]["targets"][0]["bento"]["version"], iris.bento.split_once(':').unwrap().1);
    assert_eq!(back["latest_revision"]["rollback_of"], first_revision.as_str());
}

#[test]
fn a_killed_replica_comes_back_and_status_returns_to_running() {
    let (server, client) = server_with_iris(Backend::SqliteLocal, ServerOptions::new(Backend::SqliteLocal));
    let iris = iris_home();
    client.ok(&["deployment", "create", &iris.bento, "--name", "phoenix"]);
    let d = wait_status(&server, "phoenix", "running", Duration::from_secs(120));
    let pid = d["replicas"][0]["pid"].as_u64().unwrap() as i32;
    // Its workers: bentoml's run in sessions of their own, out of the replica's process group.
    let workers: Vec<u32> = processes_naming(&server.data_dir())
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| *p as i32 != pid && *p != server.child.id())
        .collect();
    assert!(!workers.is_empty(), "no worker of the replica found");
    // SAFETY: SIGKILL to the replica we just looked up.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    wait_for("the crash to be noticed", Duration::from_secs(30), || {
        let d = get_deployment(&server, "phoenix");
        (d["replicas"][0]["restarts"].as_u64().unwrap_or(0) >= 1).then_some(())
    });
    let d = wait_status(&server, "phoenix", "running", Duration::from_secs(120));
    assert_ne!(d["replicas"][0]["pid"].as_u64().unwrap() as i32, pid);
    // The killed replica's workers, which would go on answering on its port, are gone.
    let left: Vec<u32> = workers.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(left.is_empty(), "workers {left:?} of the killed replica are still running");
    // The restart is counted in the server's metrics.
    let metrics = server.http().get("/metrics").text();
    let restarts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("yatai_replica_restarts_total "))
        .unwrap_or_else(|| panic!("no yatai_replica_restarts_total in:\n{metrics}"));
    assert!(restarts.trim().parse::<f64>().unwrap() >= 1.0, "restarts: {restarts}");
    assert_eq!(classify(&endpoint(&d)).json(), json!([0]));
    let events = server.http().get("/api/v1/events?resource_type=deployment&operation_name=status&count=50").json();
    let statuses: Vec<&str> =
        events["items"].as_array().unwrap().iter().map(|e| e["info"]["status"].as_str().unwrap()).collect();
    assert!(statuses.contains(&"unhealthy"), "the crash was not recorded: {statuses:?}");
}

#[test]
fn a_restarted_or_crashed_server_brings_deployments_back_without_orphans() {
    let (mut server, client) = server_with_iris(Backend::SqliteLocal, ServerOptions::new(Backend::SqliteLocal));
    let iris = iris_home();
    client.ok(&["deployment", "create", &iris.bento, "--name", "durable"]);
    let d = wait_status(&server, "durable", "running", Duration::from_secs(120));
    let url = d["urls"][0].clone();
    let before = serve_processes_under(&server.data_dir());
    assert_eq!(before.len(), 1);

    // A graceful stop stops the replicas too.
    server.stop();
    wait_for("replicas to stop with the server", Duration::from_secs(30), || {
        before.iter().all(|p| !pid_alive(*p)).then_some(())
    });
    server.start_again();
    let d = wait_status(&server, "durable", "running", Duration::from_secs(120));
    assert_eq!(d["urls"][0], url, "the endpoint moved");
    assert_eq!(classify(&endpoint(&d)).json(), json!([0]));
    assert_eq!(serve_processes_under(&server.data_dir()).len(), 1);

    // A crash (SIGKILL: nothing of the server runs) takes the replica down with it — it is
    // unreachable without the server's proxy — and the next start runs one anew.
    let orphans = serve_processes_under(&server.data_dir());
    server.crash();
    wait_for("the replica and its workers to stop after the server's crash", Duration::from_secs(30), || {
        (orphans.iter().all(|p| !pid_alive(*p)) && processes_naming(&server.data_dir()).is_empty()).then_some(())
    });
    server.start_again();
    let d = wait_status(&server, "durable", "running", Duration::from_secs(120));
    assert_eq!(classify(&endpoint(&d)).json(), json!([0]));
    let now = serve_processes_under(&server.data_dir());
    assert_eq!(now.len(), 1, "replicas were duplicated: {now:?}");
}

#[test]
fn scales_up_under_load_and_back_down() {
    let (server, client) = server_with_iris(Backend::SqliteLocal, ServerOptions::new(Backend::SqliteLocal));
    let iris = iris_home();
    let _ = client;
    // The scaling policy through the API (what `--config-file` sends).
    let body = json!({"name": "elastic", "bento": iris.bento, "services": {"IrisClassifier": {"scaling": {"min_replicas": 1, "max_replicas": 3,
        "policy": {"metrics": [{"type": "concurrency", "value": 2}], "scale_down_stabilization_window": 5}}}}});
    let r = server.http().post("/api/v2/deployments", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let d = wait_status(&server, "elastic", "running", Duration::from_secs(120));
    assert_eq!(d["replicas"].as_array().unwrap().len(), 1);
    let ep = Arc::new(endpoint(&d));
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (ep, stop) = (ep.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::panic::catch_unwind(|| ep.post("/slow", &json!({"seconds": 1.0})));
                }
            })
        })
        .collect();
    let up = poll(Duration::from_secs(120), || {
        let d = get_deployment(&server, "elastic");
        let ready = d["replicas"].as_array().unwrap().iter().filter(|r| r["state"] == "ready").count();
        (ready == 3).then_some(d)
    });
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    up.unwrap_or_else(|| {
        panic!("did not scale up to 3: {:#}\n{}", get_deployment(&server, "elastic"), logs(&server, "elastic"))
    });
    poll(Duration::from_secs(90), || {
        let d = get_deployment(&server, "elastic");
        (d["replicas"].as_array().unwrap().len() == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("did not scale back down: {:#}", get_deployment(&server, "elastic")));
    assert!(logs(&server, "elastic").contains("scaling down"));
}

#[test]
fn bad_deployment_requests_are_refused_and_start_nothing() {
    let (server, client) = server_with_iris(Backend::SqliteLocal, ServerOptions::new(Backend::SqliteLocal));
    let iris = iris_home();
    client.ok(&["push", &iris.needs_env]);
    let http = server.http();
    let body = |name: &str, bento: &str, min: i64, max: i64| {
        json!({"name": name, "bento": bento, "access_authorization": false, "envs": null, "labels": null, "secrets": null,
               "services": {"IrisClassifier": {"scaling": {"min_replicas": min, "max_replicas": max}}}, "canary": null, "dev": false})
    };
    let expect = |r: Response, status: u16, needle: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        assert!(r.json()["message"].as_str().unwrap().contains(needle), "{}", r.text());
    };
    expect(http.post("/api/v2/deployments", &body("ghost", "no_such_bento:v1", 1, 1)), 404, "not found");
    expect(http.post("/api/v2/deployments", &body("minmax", &iris.bento, 3, 1)), 400, "larger than");
    expect(http.post("/api/v2/deployments", &body("Bad_Name", &iris.bento, 1, 1)), 400, "not valid");
    expect(http.post("/api/v2/deployments", &body("needs", &iris.needs_env, 1, 1)), 400, "REQUIRED_TOKEN");
    let out = client.fails(&["deployment", "create", &iris.needs_env, "--name", "needs2"]);
    assert!(out.contains("REQUIRED_TOKEN"), "{out}");
    expect(http.post("/api/v1/clusters/nowhere/deployments", &json!({"name": "x", "targets": []})), 404, "cluster");
    assert_eq!(http.get("/api/v2/deployments").json()["total"], 0, "a refused request created a deployment");

    // A taken name.
    client.ok(&["deployment", "create", &iris.bento, "--name", "taken", "--no-wait"]);
    expect(http.post("/api/v2/deployments", &body("taken", &iris.bento, 1, 1)), 409, "already exists");

    // A bento whose archive climbs out of its directory.
    http.post("/api/v1/bento_repositories", &json!({"name": "evil"}));
    let manifest =
        json!({"service": "service:Evil", "bentoml_version": "1.4.40", "size_bytes": 1, "entry_service": "Evil"});
    assert_eq!(
        http.post("/api/v1/bento_repositories/evil/bentos", &json!({"version": "v1", "manifest": manifest})).status,
        200
    );
    // Extraction happens in DATA/runtime/artifacts/bento-archives/<tmp>/:
    // five levels up is the server's scratch directory.
    let escaped = format!("escaped-{}", unique(""));
    let outside = server.scratch.path().join(&escaped);
    let archive = evil_tar(&format!("./../../../../../{escaped}"));
    http.patch("/api/v1/bento_repositories/evil/bentos/v1/start_upload", None);
    assert_eq!(http.put_bytes("/api/v1/bento_repositories/evil/bentos/v1/upload", &archive).status, 200);
    expect(http.post("/api/v2/deployments", &body("evil", "evil:v1", 1, 1)), 400, "unsafe path");
    assert!(!outside.exists(), "the archive wrote outside the runtime directory");
    assert_eq!(http.get("/api/v2/deployments").json()["total"], 1);

    // The bento of a deployment cannot be deleted.
    let (name, version) = iris.bento.split_once(':').unwrap();
    let r = http.delete(&format!("/api/v1/bento_repositories/{name}/bentos/{version}"));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("taken"), "{}", r.text());
}

/// A tar with `bento.yaml` and one member at `path`.
fn evil_tar(path: &str) -> Vec<u8> {
    tar_of(&[("./bento.yaml", b"service: service:Evil\n"), (path, b"pwned")])
}

#[test]
fn a_deployments_port_cuts_slow_clients_and_keeps_answering() {
    let opts = ServerOptions::new(Backend::SqliteLocal).args(&["--client-header-timeout", "2s"]);
    let (server, client) = server_with_iris(Backend::SqliteLocal, opts);
    let iris = iris_home();
    client.ok(&["deployment", "create", &iris.bento, "--name", "sturdy"]);
    let d = wait_status(&server, "sturdy", "running", Duration::from_secs(120));
    let ep = endpoint(&d);
    let pid = server.child.id();
    let fds_before = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();

    // 200 clients on the deployment's port that never finish their request's head (slowloris).
    let started = std::time::Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(ep.addr()).unwrap();
            use std::io::Write;
            s.write_all(b"POST /classify HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // The endpoint answers others meanwhile.
    for _ in 0..5 {
        assert_eq!(classify(&ep).json(), json!([0]));
    }
    // Each slow client is cut once the header timeout passes.
    for s in &mut slow {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    let cut_after = started.elapsed();
    assert!(cut_after < Duration::from_secs(20), "the slow clients were cut only after {cut_after:?}");
    eprintln!("deployment port: 200 slowloris clients cut after {cut_after:?}");
    drop(slow);
    assert_eq!(classify(&ep).json(), json!([0]));
    let fds_after = wait_for("the server's descriptors to come back", Duration::from_secs(15), || {
        let n = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
        (n <= fds_before + 5).then_some(n)
    });
    eprintln!("deployment port: server descriptors {fds_before} before, {fds_after} after");
}

/// `kill -9` of `yatai serve` at random moments while a deployment is updated, rolled back,
/// terminated and restored: after each restart the deployment converges to what the server
/// recorded (a confirmed change is there), every replica runs the latest revision and answers,
/// and exactly as many replica processes run as the deployment shows: none orphaned, none
/// doubled. `YATAI_DEPLOY_FAULT_ROUNDS` (default 8), `YATAI_DEPLOY_FAULT_SEED` to replay.
#[test]
fn kill_9_during_updates_rollbacks_and_terminations_converges_without_orphans() {
    let rounds: u32 = std::env::var("YATAI_DEPLOY_FAULT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(8);
    let (mut rng, seed) = Rng::seeded("YATAI_DEPLOY_FAULT_SEED");
    eprintln!("deploy faults: {rounds} rounds, YATAI_DEPLOY_FAULT_SEED={seed}");
    let (mut server, client) = server_with_iris(Backend::SqliteLocal, ServerOptions::new(Backend::SqliteLocal));
    let iris = iris_home();
    client.ok(&["deployment", "create", &iris.bento, "--name", "phoenix"]);
    wait_status(&server, "phoenix", "running", Duration::from_secs(120));
    let first_revision = get_deployment(&server, "phoenix")["latest_revision"]["uid"].as_str().unwrap().to_owned();
    let mut ops = std::collections::BTreeMap::<&str, u32>::new();
    for round in 0..rounds {
        let d = get_deployment(&server, "phoenix");
        let terminated = d["status"] == "terminated";
        let current = d["latest_revision"]["targets"][0]["bento"]["version"].as_str().unwrap().to_owned();
        let other = [&iris.bento, &iris.bento_v2].into_iter().find(|b| !b.ends_with(&format!(":{current}"))).unwrap();
        let (op, method, path, body) = match (terminated, rng.below(3)) {
            (true, _) => ("restore", "POST", "/api/v2/deployments/phoenix/restore", json!({})),
            (false, 0) => ("update", "PUT", "/api/v2/deployments/phoenix", json!({"bento": other})),
            (false, 1) => {
                ("rollback", "POST", "/api/v2/deployments/phoenix/rollback", json!({"revision_uid": first_revision}))
            }
            (false, _) => ("terminate", "POST", "/api/v2/deployments/phoenix/terminate", json!({})),
        };
        *ops.entry(op).or_default() += 1;
        let http = server.http();
        let sent = std::thread::spawn(move || {
            std::panic::catch_unwind(|| http.request(method, path, Some(&body)).status).unwrap_or(0)
        });
        // Within the change's rollout (replicas take seconds to start), mostly.
        std::thread::sleep(Duration::from_millis(rng.below(3000)));
        server.crash();
        let confirmed = sent.join().unwrap_or(0) == 200;
        server.start_again();

        // Converged to what the server recorded.
        let settled = poll(Duration::from_secs(180), || {
            let d = get_deployment(&server, "phoenix");
            let latest = d["latest_revision"]["uid"].clone();
            let replicas = d["replicas"].as_array().cloned().unwrap_or_default();
            let done = match d["status"].as_str() {
                Some("terminated") => replicas.is_empty(),
                Some("running") => {
                    !replicas.is_empty()
                        && replicas.iter().all(|r| r["revision_uid"] == latest && r["state"] == "ready")
                }
                _ => false,
            };
            done.then_some(d)
        })
        .unwrap_or_else(|| {
            panic!(
                "round {round} ({op}, seed {seed}): the deployment did not settle: {:#}\n{}",
                get_deployment(&server, "phoenix"),
                logs(&server, "phoenix")
            )
        });
        if confirmed {
            let version = settled["latest_revision"]["targets"][0]["bento"]["version"].as_str().unwrap_or_default();
            match op {
                "terminate" => assert_eq!(settled["status"], "terminated", "round {round}: a confirmed terminate"),
                "restore" => assert_eq!(settled["status"], "running", "round {round}: a confirmed restore"),
                "update" => assert!(other.ends_with(&format!(":{version}")), "round {round}: a confirmed update"),
                _ => assert_eq!(settled["latest_revision"]["rollback_of"], first_revision.as_str(), "round {round}"),
            }
        }
        // As many replica processes as replicas: none orphaned by the crash, none doubled.
        let want = settled["replicas"].as_array().map(Vec::len).unwrap_or(0);
        poll(Duration::from_secs(30), || (serve_processes_under(&server.data_dir()).len() == want).then_some(()))
            .unwrap_or_else(|| {
                panic!(
                    "round {round} ({op}): {} replica processes for {want} replicas",
                    serve_processes_under(&server.data_dir()).len()
                )
            });
        if settled["status"] == "running" {
            assert_eq!(classify(&endpoint(&settled)).json(), json!([0]), "round {round}: the endpoint answers");
        }
    }
    eprintln!(
        "deploy faults: {rounds} kill -9 rounds (seed {seed}), operations {ops:?}: converged every time, no orphan"
    );
}
