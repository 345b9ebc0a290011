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

/// A small tmpfs, unmounted at drop.
struct SmallDisk(std::path::PathBuf, #[allow(dead_code)] Scratch);

impl SmallDisk {
    fn mount(megabytes: u32) -> SmallDisk {
        let scratch = Scratch::new("small-disk");
        let dir = scratch.path().join("data");
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        SmallDisk(dir, scratch)
    }

    /// Fills the disk until at most `leave` bytes are free (a file of zeros).
    fn fill(&self, name: &str, leave: u64) {
        let mut f = std::fs::File::create(self.0.join(name)).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while self.free() > leave + chunk.len() as u64 {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
    }

    fn free(&self) -> u64 {
        let out = std::process::Command::new("df").args(["--output=avail", "-B1"]).arg(&self.0).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_gives_507_loses_nothing_and_writes_resume_once_there_is_room() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("a_full_disk_gives_507…: skipped (mounting a small filesystem needs root)");
        return;
    }
    let disk = SmallDisk::mount(32);
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).data_dir(&disk.0));
    let http = server.http();
    let kept: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
    let first = create_model_version(&http, "kept", "v1");
    assert_eq!(upload_payload(&http, &first, &kept).status, 200);

    // An archive larger than what is left: 507 with a reason, and the version stays un-uploaded.
    let big: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let second = create_model_version(&http, "big", "v1");
    disk.fill("filler", 2 * 1024 * 1024);
    // The server may answer before it has read the whole body.
    let r = upload_tolerant(&http, &second, &big);
    assert_eq!(r.status, 507, "an upload onto a full disk: {} {}", r.status, r.text());
    let message = r.json()["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("no space left"), "{message}");
    assert_ne!(http.get(&second).json()["upload_status"], "success");

    // With no room at all, metadata writes are refused as well, or succeed for real: never a 500.
    disk.fill("filler-2", 0);
    let mut statuses = Vec::new();
    for i in 0..5 {
        let r = http.post("/api/v1/model_repositories", &json!({"name": format!("full-{i}"), "description": ""}));
        assert!(r.status == 200 || r.status == 507, "creating a repository on a full disk: {} {}", r.status, r.text());
        statuses.push(r.status);
        if r.status == 200 {
            assert_eq!(http.get(&format!("/api/v1/model_repositories/full-{i}")).status, 200);
        }
    }
    eprintln!("faults: repositories created with the disk full: {statuses:?}");
    // What was stored before reads back whole.
    assert_eq!(downloaded_payload(&http, &first), kept);

    // Room again: the same upload succeeds, without a restart, and reads back whole.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    std::fs::remove_file(disk.0.join("filler-2")).unwrap();
    let r = upload_payload(&http, &second, &big);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(downloaded_payload(&http, &second), big);
    assert_eq!(downloaded_payload(&http, &first), kept);
    drop(server);
}

/// The server's open sockets, and its open files below `dir` (archives being read).
fn sockets_and_files(pid: u32, dir: &std::path::Path) -> (usize, usize) {
    let (mut sockets, mut files) = (0, 0);
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        if target.to_string_lossy().starts_with("socket:") {
            sockets += 1;
        } else if target.starts_with(dir) {
            files += 1;
        }
    }
    (sockets, files)
}

/// Whether the server has closed this connection (end of stream or reset), without waiting.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a response (408) before the close
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_and_stuck_clients_are_timed_out_and_cannot_starve_the_server() {
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&[
        "--client-header-timeout",
        "3s",
        "--client-body-timeout",
        "3s",
        "--client-send-timeout",
        "5s",
    ]));
    let http = server.http();
    let pid = server.child.id();
    // A 32 MiB archive: more than the socket buffers of both ends hold.
    let payload: Vec<u8> = (0..32 * 1024 * 1024u32).map(|i| (i % 249) as u8).collect();
    let big = create_model_version(&http, "big", "v1");
    assert_eq!(upload_payload(&http, &big, &payload).status, 200);
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));

    // 300 clients that never finish their request's head (slowloris), a byte now and then.
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(http.addr()).unwrap();
            s.write_all(b"GET /api/v1/version HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(http.get("/livez").status, 200);
    }
    let answered_in = started.elapsed();
    assert!(answered_in < Duration::from_secs(5), "20 requests took {answered_in:?} beside 300 slow clients");
    let closed = wait_for("the slow heads to be cut off", Duration::from_secs(30), || {
        let mut closed = 0;
        for s in &mut slow {
            let _ = s.write_all(b"a");
            if closed_by_server(s) {
                closed += 1;
            }
        }
        (closed == slow.len()).then_some(closed)
    });
    let cut_after = started.elapsed();
    eprintln!(
        "faults: {closed} slow request heads cut off within {cut_after:?}; 20 requests answered in {answered_in:?} meanwhile"
    );

    // An upload that stalls in its body: the request fails, the version can be uploaded again.
    let stalled = create_model_version(&http, "stalled", "v1");
    assert_eq!(http.patch(&format!("{stalled}/start_upload"), None).status, 200);
    let mut s = TcpStream::connect(http.addr()).unwrap();
    let head = format!(
        "PUT {stalled}/upload HTTP/1.1\r\nHost: x\r\nX-YATAI-API-TOKEN: {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: 10485760\r\n\r\n",
        server.token
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&[0u8; 4096]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let stall_started = Instant::now();
    let response = read_response(&mut s);
    assert!(response.status >= 400, "a stalled upload answered {}: {}", response.status, response.text());
    eprintln!("faults: a stalled upload failed with {} after {:?}", response.status, stall_started.elapsed());
    assert_eq!(
        upload_payload(&http, &stalled, b"whole").status,
        200,
        "the version could not be uploaded after a stall"
    );

    // Downloads to clients that stopped reading: the connections end, their files are closed.
    // Measured by the server's sockets and the archives it holds open: its database pool may
    // open files of its own meanwhile.
    let archives = server.data_dir().join("artifacts");
    let (sockets_before, _) = sockets_and_files(pid, &archives);
    let stuck: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(http.addr()).unwrap();
            // A small receive buffer: what the client does not read soon fills every buffer.
            let small: libc::c_int = 4096;
            // SAFETY: setsockopt on our own socket, with a pointer to a live c_int.
            unsafe {
                use std::os::fd::AsRawFd;
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&small as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            let req = format!("GET {big}/download HTTP/1.1\r\nHost: x\r\nX-YATAI-API-TOKEN: {}\r\n\r\n", server.token);
            s.write_all(req.as_bytes()).unwrap();
            s
        })
        .collect();
    // Serving them holds the archive open. (Not counted by sockets: the slow clients of the
    // step before may still be closing, so the count taken above can be high; this once waited
    // for a count it could not reach.)
    wait_for("the server to serve the downloads", Duration::from_secs(30), || {
        let (_, files) = sockets_and_files(pid, &archives);
        (files >= 1).then_some(())
    });
    let stuck_started = Instant::now();
    wait_for("the stuck downloads' connections to end", Duration::from_secs(60), || {
        let (sockets, files) = sockets_and_files(pid, &archives);
        (sockets <= sockets_before && files == 0).then_some(())
    });
    eprintln!("faults: 4 downloads to clients that stopped reading ended after {:?}", stuck_started.elapsed());
    drop(stuck);

    let rss_after = rss_kib(pid);
    eprintln!(
        "faults: server RSS {rss_before} KiB before, {rss_after} KiB after; fds {fds_before} → {}",
        open_fds(pid)
    );
    assert!(rss_after < rss_before + 64 * 1024, "memory grew from {rss_before} KiB to {rss_after} KiB");
    assert_eq!(downloaded_payload(&http, &big).len(), payload.len());
}

/// Every version of model repository `repo`: `(version, upload status, archive digest, size)`.
fn versions(http: &Http, repo: &str) -> Vec<(String, String, String, u64)> {
    let r = http.get(&format!("/api/v1/model_repositories/{repo}/models?count=1000"));
    if r.status == 404 {
        return Vec::new();
    }
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["version"].as_str().unwrap().to_owned(),
                m["upload_status"].as_str().unwrap().to_owned(),
                m["archive_digest"].as_str().unwrap_or_default().trim_start_matches("sha256:").to_owned(),
                m["archive_size_bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// `kill -9` of `yatai serve` at random moments while archives are pushed and deleted: after
/// each restart every version the server calls uploaded has exactly its recorded bytes, every
/// push confirmed before a crash is still there, an interrupted push can be pushed again, and
/// the janitor leaves no partial file behind.
#[test]
fn kill_9_at_random_moments_loses_nothing_and_leaves_nothing_half_visible() {
    let rounds: u32 = std::env::var("YATAI_FAULT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(50);
    let (mut rng, seed) = Rng::seeded("YATAI_FAULT_SEED");
    eprintln!("faults: kill -9 loop, {rounds} rounds, YATAI_FAULT_SEED={seed}");
    // Unfinished uploads expire soon (a presigned one when its URL does), so that the janitor's
    // sweep of what crashes left can be checked at the end.
    let mut server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&[
        "--upload-ttl",
        "20s",
        "--presign-ttl",
        "20s",
        "--janitor-interval",
        "1s",
    ]));
    let repo = "crashy";
    let mut modes = [0u32; 3];
    // Payloads by version: what a confirmed push stored (deleted ones removed).
    let mut confirmed: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    let (mut interrupted, mut completed) = (0, 0);
    for round in 0..rounds {
        let http = server.http();
        let delete = !confirmed.is_empty() && rng.below(4) == 0;
        let victim = confirmed.keys().nth(rng.below(confirmed.len().max(1) as u64) as usize).cloned();
        let version = format!("r{round}");
        let mode = [Mode3::Proxy, Mode3::Presigned, Mode3::Multipart][rng.below(3) as usize];
        modes[mode as usize] += 1;
        let size = 64 * 1024 + rng.below(3 * 1024 * 1024) as usize;
        let fill = rng.next() as u8;
        let payload: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(fill)).collect();
        let op = {
            let (http, payload, version, victim) =
                (http.without_token().with_token(&server.token), payload.clone(), version.clone(), victim.clone());
            std::thread::spawn(move || -> bool {
                let send = |method: &str, path: &str, body: &[u8], kind: &str| {
                    Some(request_tolerant(&http, method, path, body, kind).status).filter(|s| *s != 0)
                };
                let json = |v: serde_json::Value| v.to_string().into_bytes();
                let base = format!("/api/v1/model_repositories/{repo}");
                if delete {
                    return send("DELETE", &format!("{base}/models/{}", victim.unwrap()), b"", "application/json")
                        == Some(200);
                }
                let manifest = model_manifest();
                let _ = send(
                    "POST",
                    "/api/v1/model_repositories",
                    &json(json!({"name": repo, "description": ""})),
                    "application/json",
                );
                let version_body = json!({"version": version, "description": "", "manifest": manifest, "build_at": "2026-11-24 19:44:50.976764", "labels": []});
                if send("POST", &format!("{base}/models"), &json(version_body), "application/json") != Some(200) {
                    return false;
                }
                let path = format!("{base}/models/{version}");
                let archive = tar_of(&[("./data", &payload)]);
                let patch = |route: &str, body: serde_json::Value| {
                    let r =
                        request_tolerant(&http, "PATCH", &format!("{path}/{route}"), &json(body), "application/json");
                    (r.status == 200).then(|| serde_json::from_slice::<serde_json::Value>(&r.body).ok()).flatten()
                };
                // A URL the server signed, as the path to PUT to (it is the server's own).
                let put_signed = |url: &str, body: &[u8]| {
                    let target = url.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]));
                    let r = request_tolerant(&http.without_token(), "PUT", target?, body, "application/octet-stream");
                    (r.status == 200).then_some(r)
                };
                let finish = || patch("finish_upload", json!({"status": "success", "reason": ""})).is_some();
                match mode {
                    Mode3::Proxy => {
                        if patch("start_upload", json!({})).is_none() {
                            return false;
                        }
                        send("PUT", &format!("{path}/upload"), &archive, "application/octet-stream") == Some(200)
                    }
                    Mode3::Presigned => {
                        let Some(a) = patch("presign_upload_url", json!({})) else { return false };
                        let url = a["presigned_upload_url"].as_str().unwrap_or_default().to_owned();
                        patch("start_upload", json!({})).is_some() && put_signed(&url, &archive).is_some() && finish()
                    }
                    Mode3::Multipart => {
                        if patch("start_upload", json!({})).is_none() {
                            return false;
                        }
                        let Some(started) = patch("start_multipart_upload", json!({})) else { return false };
                        let upload_id = started["upload_id"].as_str().unwrap_or_default().to_owned();
                        let half = archive.len() / 2;
                        let mut parts = Vec::new();
                        for (n, bytes) in [(1, &archive[..half]), (2, &archive[half..])] {
                            let Some(u) = patch(
                                "presign_multipart_upload_url",
                                json!({"upload_id": upload_id, "part_number": n}),
                            ) else {
                                return false;
                            };
                            let Some(r) = put_signed(u["presigned_upload_url"].as_str().unwrap_or_default(), bytes)
                            else {
                                return false;
                            };
                            parts.push(json!({"part_number": n, "etag": r.header("etag").unwrap_or_default()}));
                        }
                        patch("complete_multipart_upload", json!({"upload_id": upload_id, "parts": parts})).is_some()
                            && finish()
                    }
                }
            })
        };
        // Within the operation's few dozen milliseconds, mostly.
        std::thread::sleep(Duration::from_millis(rng.below(25)));
        server.crash();
        let succeeded = op.join().unwrap_or(false);
        server.start_again();
        let http = server.http();
        match (delete, succeeded) {
            (true, true) => {
                confirmed.remove(victim.as_ref().unwrap());
            }
            (false, true) => {
                confirmed.insert(version.clone(), payload.clone());
            }
            // A delete cut off by the crash happened or not (its answer was lost): the version
            // is gone, or there whole (checked below).
            (true, false) => {
                let victim = victim.as_ref().unwrap();
                if !versions(&server.http(), repo).iter().any(|l| &l.0 == victim) {
                    confirmed.remove(victim);
                }
            }
            (false, false) => {}
        }
        if succeeded {
            completed += 1;
        } else {
            interrupted += 1;
        }

        // Every uploaded version reads back as exactly what was recorded; confirmed ones are
        // all there with their own bytes.
        let listed = versions(&http, repo);
        for (v, status, digest, size) in &listed {
            if status != "success" {
                continue;
            }
            let path = format!("/api/v1/model_repositories/{repo}/models/{v}");
            let r = http.get(&format!("{path}/download"));
            assert_eq!(r.status, 200, "round {round}: {v} is uploaded but does not download: {}", r.text());
            assert_eq!(
                (sha256_hex(&r.body), r.body.len() as u64),
                (digest.clone(), *size),
                "round {round}: {v}'s bytes"
            );
        }
        for (v, payload) in &confirmed {
            let found = listed.iter().find(|l| &l.0 == v);
            assert!(
                found.is_some_and(|l| l.1 == "success"),
                "round {round} (seed {seed}): the confirmed push {v} is gone or not uploaded: {found:?}"
            );
            let path = format!("/api/v1/model_repositories/{repo}/models/{v}");
            assert_eq!(&downloaded_payload(&http, &path), payload, "round {round}: {v}'s payload");
        }
        // The interrupted push of this round can be pushed again.
        if !delete && !succeeded {
            let exists = listed.iter().find(|l| l.0 == version);
            let path = match exists {
                Some(_) => format!("/api/v1/model_repositories/{repo}/models/{version}"),
                None => create_model_version(&http, repo, &version),
            };
            if exists.is_none_or(|l| l.1 != "success") {
                let r = upload_payload(&http, &path, &payload);
                assert_eq!(r.status, 200, "round {round}: pushing {version} again after the crash: {}", r.text());
            }
            confirmed.insert(version, payload);
        }
    }
    // The janitor sweeps what the crashes left.
    let tmp = server.data_dir().join("artifacts/tmp");
    let partials = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "partial")).count())
            .unwrap_or(0)
    };
    wait_for("the janitor to remove partial files", Duration::from_secs(60), || (partials(&tmp) == 0).then_some(()));
    // And no archive is stored but those of uploaded versions (parts of interrupted multipart
    // uploads, archives of presigned uploads never finished: gone once their uploads expired).
    let uploaded = || {
        versions(&server.http(), repo)
            .iter()
            .filter(|v| v.1 == "success")
            .map(|v| v.2.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let stored = loop {
        let files = server.stored_archives();
        let tmp_files: Vec<_> = std::fs::read_dir(&tmp)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
            .unwrap_or_default();
        let want = uploaded();
        if files.len() == want.len() && tmp_files.is_empty() {
            break files.len();
        }
        if Instant::now() > deadline {
            let db = server.data_dir().join("yatai.db");
            let tables = std::process::Command::new("python3")
                .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); [print(t, r) for t in ('uploads','blobs') for r in c.execute('select * from '+t)]"])
                .arg(&db)
                .output()
                .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
                .unwrap_or_default();
            let digests: Vec<String> = files
                .iter()
                .map(|f| format!("{} {}", f.display(), sha256_hex(&std::fs::read(f).unwrap_or_default())))
                .collect();
            panic!(
                "the janitor left what interrupted uploads stored: {} archives for {} uploaded versions {want:?}:\n{}\ntemporary files: {tmp_files:?}\nuploads and blobs:\n{tables}\nserver log tail:\n{}",
                files.len(),
                want.len(),
                digests.join("\n"),
                server
                    .log_text()
                    .lines()
                    .rev()
                    .take(60)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "faults: {rounds} kill -9 rounds (seed {seed}; proxy, presigned, multipart: {modes:?}): {completed} operations \
         completed, {interrupted} interrupted; {} versions intact; {stored} archives stored, none orphaned",
        confirmed.len()
    );
}

/// How a round of the kill -9 loop uploads.
#[derive(Clone, Copy, Debug)]
enum Mode3 {
    Proxy,
    Presigned,
    Multipart,
}

/// Pushes at once: 100 clients pushing distinct models, then 20 pushing the same new version.
/// No 5xx; every stored archive reads back whole; of the 20, one upload wins (the others get
/// 409) and what is stored is its archive, whole; the server's memory stays bounded.
#[test]
fn concurrent_pushes_store_every_archive_whole_and_one_winner_for_a_contested_version() {
    let server = Server::start(Backend::SqliteLocal);
    let pid = server.child.id();
    let rss_before = rss_kib(pid);
    let payload = |i: usize, size: usize| -> Vec<u8> { (0..size).map(|j| ((i * 7919 + j) % 251) as u8).collect() };

    let started = Instant::now();
    let pushes: Vec<_> = (0..100)
        .map(|i| {
            let http = server.http();
            std::thread::spawn(move || {
                let path = create_model_version(&http, &format!("many-{i}"), "v1");
                let r = upload_payload(&http, &path, &payload(i, 256 * 1024));
                (path, r.status, r.text())
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    let mut stored = Vec::new();
    for (i, p) in pushes.into_iter().enumerate() {
        let (path, status, text) = p.join().expect("a pushing thread");
        assert!(status < 500, "push {i} got {status}: {text}");
        *statuses.entry(status).or_insert(0) += 1;
        stored.push((i, path));
    }
    let took = started.elapsed();
    assert_eq!(statuses.get(&200), Some(&100), "statuses of 100 distinct pushes: {statuses:?}");
    let http = server.http();
    for (i, path) in &stored {
        assert_eq!(downloaded_payload(&http, path), payload(*i, 256 * 1024), "model many-{i}");
    }
    eprintln!("faults: 100 concurrent pushes of 256 KiB models: all stored whole in {took:?}");

    // 20 clients push the same new version with different bytes.
    let path = create_model_version(&http, "contested", "v1");
    let contenders: Vec<_> = (0..20)
        .map(|i| {
            let (http, path) = (server.http(), path.clone());
            std::thread::spawn(move || {
                let start = http.patch(&format!("{path}/start_upload"), None);
                if start.status != 200 {
                    return (start.status, start.text());
                }
                let r = put_tolerant(&http, &path, &tar_of(&[("./data", &payload(1000 + i, 512 * 1024))]));
                (r.status, r.text())
            })
        })
        .collect();
    let mut outcome = std::collections::BTreeMap::new();
    for c in contenders {
        let (status, text) = c.join().expect("a contending thread");
        assert!(status < 500, "a contended push got {status}: {text}");
        *outcome.entry(status).or_insert(0) += 1;
    }
    let stored = downloaded_payload(&http, &path);
    let winner = (0..20).find(|i| payload(1000 + i, 512 * 1024) == stored);
    assert!(winner.is_some(), "the stored archive is none of those sent (torn or mixed)");
    // One upload wins; the others are told the version is being (or was) uploaded (409), or
    // had their connection closed on that answer before they finished sending (0).
    assert_eq!(outcome.get(&200), Some(&1), "contended pushes: {outcome:?}");
    let refused = outcome.get(&409).copied().unwrap_or(0) + outcome.get(&0).copied().unwrap_or(0);
    assert_eq!(refused, 19, "contended pushes: {outcome:?}");
    eprintln!(
        "faults: 20 pushes of one version: {outcome:?}; the stored bytes are contender {}'s, whole",
        winner.unwrap()
    );
    let rss_after = rss_kib(pid);
    eprintln!("faults: RSS {rss_before} KiB before, {rss_after} KiB after the 120 pushes");
    assert!(rss_after < rss_before + 256 * 1024, "memory grew from {rss_before} KiB to {rss_after} KiB");
}

/// An upload that reads the server's answer even when the server answers (and closes) before
/// the whole body was sent.
fn upload_tolerant(http: &Http, version_path: &str, payload: &[u8]) -> Response {
    let r = http.patch(&format!("{version_path}/start_upload"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    put_tolerant(http, version_path, &tar_of(&[("./data", payload)]))
}

/// `PUT {version_path}/upload` of `body`, reading the answer even when the server answers (and
/// closes) before the whole body was sent — a refused upload (409) does not read it.
fn put_tolerant(http: &Http, version_path: &str, body: &[u8]) -> Response {
    request_tolerant(http, "PUT", &format!("{version_path}/upload"), body, "application/octet-stream")
}

/// A request that may meet a server that is dead, or answers and closes before the body was
/// sent: a failure is an answer (status 0 when there is none), never a panic.
fn request_tolerant(http: &Http, method: &str, path: &str, body: &[u8], kind: &str) -> Response {
    let none = || Response { status: 0, headers: Vec::new(), body: Vec::new() };
    let Ok(mut s) = TcpStream::connect(http.addr()) else { return none() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-YATAI-API-TOKEN: {}\r\n\
         Content-Type: {kind}\r\nContent-Length: {}\r\n\r\n",
        http.token.as_deref().unwrap_or_default(),
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    // A server that refused early may reset the connection before its answer is read.
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    if !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        return none();
    }
    read_response(&mut std::io::Cursor::new(answer))
}

/// The S3 server behind a proxy this test switches: an upload while it is down, and one cut off
/// in the middle, fail with a 5xx that says why, within a bound, and leave the version not
/// uploaded; once S3 is back the same upload succeeds and reads back whole.
#[test]
fn s3_that_goes_away_fails_the_upload_and_a_retry_succeeds() {
    let s3 = std::env::var("YATAI_TEST_S3_ENDPOINT").expect("YATAI_TEST_S3_ENDPOINT");
    let proxy = Proxy::start(s3.trim_start_matches("http://").trim_end_matches('/').to_owned());
    let server = Server::start_with(
        ServerOptions::new(Backend::PostgresS3)
            .storage_through(&proxy.addr)
            .args(&["--transmission-strategy", "proxy"]),
    );
    let http = server.http();
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    let path = create_model_version(&http, "s3-faults", "v1");

    // S3 down for the whole upload.
    proxy.set(Mode::Down);
    let started = Instant::now();
    let r = upload_tolerant(&http, &path, &payload);
    let took = started.elapsed();
    eprintln!("faults: an upload with S3 down answered {} after {took:?}: {}", r.status, r.text());
    assert!(r.status >= 500, "an upload with S3 down answered {}: {}", r.status, r.text());
    assert!(r.text().contains("storage"), "{}", r.text());
    assert!(took < Duration::from_secs(60), "an upload with S3 down took {took:?} to fail");
    assert_ne!(http.get(&path).json()["upload_status"], "success");

    // S3 stalls in the middle of an upload.
    proxy.set(Mode::Up);
    let stall = {
        let mode = proxy.mode.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            *mode.lock().unwrap() = Mode::Stalled;
        })
    };
    let started = Instant::now();
    let r = upload_tolerant(&http, &path, &payload);
    stall.join().unwrap();
    let took = started.elapsed();
    eprintln!("faults: an upload with S3 stalled mid-way answered {} after {took:?}", r.status);
    if r.status == 200 {
        eprintln!("faults: (the upload finished before the stall)");
    } else {
        assert!(r.status >= 500, "{}", r.text());
        assert!(took < Duration::from_secs(150), "an upload with S3 stalled took {took:?} to fail");
    }

    // Back: the same upload succeeds and reads back whole.
    proxy.set(Mode::Up);
    if http.get(&path).json()["upload_status"] != "success" {
        let r = upload_payload(&http, &path, &payload);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(downloaded_payload(&http, &path), payload);
}
