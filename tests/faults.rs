//! Faults under a running `yatai serve`, with real components: PostgreSQL that goes away (its
//! connections cut, then stalled without a word) behind a proxy this test controls. Requests
//! fail with a 503 that says why, none hangs past the server's deadline, and the server recovers
//! without a restart once the database is back; nothing stored is lost.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Bytes flow both ways.
    Up,
    /// Every connection is closed; new ones are closed at once (the database is down).
    Down,
    /// Connections stay open and new ones are accepted, but nothing is delivered (a network
    /// partition): the client hears nothing, not even a reset.
    Stalled,
}

/// A TCP proxy to `upstream` whose behaviour the test switches.
struct Proxy {
    addr: String,
    mode: Arc<Mutex<Mode>>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mode = Arc::new(Mutex::new(Mode::Up));
        let sockets: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (m, s) = (mode.clone(), sockets.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let now = *m.lock().unwrap();
                match now {
                    Mode::Down => drop(client),
                    Mode::Stalled => s.lock().unwrap().push(client),
                    Mode::Up => {
                        let Ok(server) = TcpStream::connect(&upstream) else { continue };
                        s.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                        for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                        {
                            let m = m.clone();
                            std::thread::spawn(move || pipe(from, to, &m));
                        }
                    }
                }
            }
        });
        Proxy { addr, mode, sockets }
    }

    /// Switches the mode. Leaving `Up` for `Down`, or `Stalled` for `Up`, closes every
    /// connection (a stalled one would never recover: the partition "reset" it).
    fn set(&self, mode: Mode) {
        let before = std::mem::replace(&mut *self.mode.lock().unwrap(), mode);
        if mode == Mode::Down || (before == Mode::Stalled && mode == Mode::Up) {
            for s in self.sockets.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copies bytes until either side closes; drops them while the proxy is stalled.
fn pipe(mut from: TcpStream, mut to: TcpStream, mode: &Mutex<Mode>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if *mode.lock().unwrap() == Mode::Stalled {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A request that must fail with a 503 saying why, within `deadline`.
fn refused_in_time(http: &Http, path: &str, deadline: Duration) -> String {
    let started = Instant::now();
    let r = http.get(path);
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{path} answered {} while the database was away: {}", r.status, r.text());
    assert!(took <= deadline, "{path} took {took:?} to fail (deadline {deadline:?})");
    let message = r.json()["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.is_empty(), "a 503 without a reason: {}", r.text());
    message
}

#[test]
fn a_database_that_goes_away_gives_503s_in_time_and_the_server_recovers_without_a_restart() {
    const TIMEOUT: Duration = Duration::from_secs(5);
    // The deadline, plus what a busy machine adds.
    const DEADLINE: Duration = Duration::from_secs(12);
    let proxy = Proxy::start(pg_addr());
    let server = Server::start_with(
        ServerOptions::new(Backend::PostgresS3).database_through(&proxy.addr).args(&["--request-timeout", "5s"]),
    );
    let http = server.http();
    let create = |name: &str| http.post("/api/v1/model_repositories", &json!({"name": name, "description": "kept"}));
    assert_eq!(create("before-faults").status, 200);

    // Down: its connections cut, new ones refused.
    proxy.set(Mode::Down);
    let started = Instant::now();
    for _ in 0..3 {
        let message = refused_in_time(&http, "/api/v1/model_repositories", DEADLINE);
        assert!(message.contains("database") || message.contains("could not answer"), "{message}");
    }
    refused_in_time(&http, "/healthz", DEADLINE);
    eprintln!("faults: 4 requests refused in {:?} with the database down", started.elapsed());
    proxy.set(Mode::Up);
    let back = Instant::now();
    wait_for("requests to succeed again after the database came back", Duration::from_secs(30), || {
        (http.get("/api/v1/model_repositories").status == 200).then_some(())
    });
    eprintln!("faults: answering again {:?} after the database came back", back.elapsed());

    // Stalled: connections open, nothing answers. The deadline ends each request.
    proxy.set(Mode::Stalled);
    let message = refused_in_time(&http, "/api/v1/model_repositories", DEADLINE);
    assert!(message.contains(&format!("{TIMEOUT:?}")), "{message}");
    assert_eq!(create("during-stall").status, 503);
    proxy.set(Mode::Up);
    wait_for("requests to succeed again after the partition", Duration::from_secs(30), || {
        (http.get("/api/v1/model_repositories").status == 200).then_some(())
    });

    // Nothing was lost, nothing half-written, and writes work.
    assert_eq!(create("after-faults").status, 200);
    let listed = http.get("/api/v1/model_repositories").json();
    let names: Vec<&str> = listed["items"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(names.contains(&"before-faults") && names.contains(&"after-faults"), "{listed}");
    assert!(!names.contains(&"during-stall"), "a write refused with 503 was stored: {listed}");
    assert_eq!(http.get("/api/v1/model_repositories/before-faults").json()["description"], "kept");
}
