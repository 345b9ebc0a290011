//! One replica: a `bentoml serve` process in its own process group, its
//! output pumped into the deployment's log, probes against its health
//! endpoints, and a pid file so that a replica left over by a crashed server
//! is found and stopped at the next start. A replica does not outlive its
//! server: it is unreachable without the server's proxy, so the kernel sends
//! it SIGTERM when the server dies, however it dies.
//!
//! bentoml's workers leave the replica's process group (circus calls
//! `setsid` for each), so a signal to the group misses them, and a worker
//! whose arbiter was killed lives on. Every process of a replica therefore
//! carries a mark in its environment (`YATAI_REPLICA`, one per launch, copied
//! to the workers with the rest of it), and stopping a replica ends whatever
//! carries its mark.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::RuntimeError;
use crate::logs::LogBook;

/// Environment variables a replica inherits from the server; everything else
/// (tokens, storage secrets) stays out.
const INHERITED_ENV: [&str; 9] =
    ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "UV_CACHE_DIR", "PYTHONPATH"];

pub struct LaunchSpec<'a> {
    pub venv: &'a Path,
    pub bento_dir: &'a Path,
    /// A writable BENTOML_HOME for the replica.
    pub home: &'a Path,
    pub port: u16,
    pub envs: &'a [(String, String)],
    /// Secrets: `env` items join the environment (after `envs`, so a secret
    /// wins), `mountfile` items are written below `home`.
    pub secrets: &'a [yatai_core::secret::DeploySecret],
    /// Run as this user id (and the group of the same number), with `home`
    /// as its HOME and `home/tmp` as its TMPDIR.
    pub run_as: Option<u32>,
}

pub struct ReplicaProcess {
    pub pid: u32,
    child: tokio::process::Child,
    pid_file: PathBuf,
    mark: String,
}

/// The environment variable that marks every process of one launch.
const MARK_VAR: &str = "YATAI_REPLICA";

/// A mark no other launch of this server, or of an earlier one, carries.
fn new_mark(id: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')).collect();
    format!("{id}.{}.{}.{seq}", std::process::id(), now.as_nanos())
}

/// Starts a replica. Its stdout and stderr lines go to `logs` under `id`.
pub async fn launch(
    spec: &LaunchSpec<'_>,
    id: &str,
    logs: Arc<LogBook>,
    pid_file: PathBuf,
) -> Result<ReplicaProcess, RuntimeError> {
    tokio::fs::create_dir_all(spec.home)
        .await
        .map_err(|e| RuntimeError::Launch(format!("{}: {e}", spec.home.display())))?;
    let tmp = spec.home.join("tmp");
    if let Some(id) = spec.run_as {
        give_home(spec.home, &tmp, id).map_err(|e| RuntimeError::Launch(format!("{}: {e}", spec.home.display())))?;
    }
    let files: Vec<(String, &str)> = spec.secrets.iter().flat_map(|s| s.files()).collect();
    if !files.is_empty() {
        crate::secret_files::write(spec.home, &files, spec.run_as)
            .map_err(|e| RuntimeError::Launch(format!("secret files: {e}")))?;
    }
    let mut cmd = tokio::process::Command::new(spec.venv.join("bin/bentoml"));
    cmd.arg("serve")
        .arg(spec.bento_dir)
        .args(["--host", "127.0.0.1", "--port"])
        .arg(spec.port.to_string())
        .current_dir(spec.home)
        .env_clear();
    for key in INHERITED_ENV {
        // The server's home, temp and caches are not the replica's.
        if spec.run_as.is_some() && matches!(key, "HOME" | "TMPDIR" | "UV_CACHE_DIR") {
            continue;
        }
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    if let Some(id) = spec.run_as {
        cmd.env("HOME", spec.home)
            .env("TMPDIR", &tmp)
            .env("USER", format!("replica{id}"))
            .env("LOGNAME", format!("replica{id}"))
            // The environment is read-only to the replica: no bytecode files.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .uid(id)
            .gid(id);
        // Setuid programs cannot give the replica back what it dropped.
        // SAFETY: prctl(2) is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    // SIGTERM when the server dies (bentoml serve then stops its workers). Set after the
    // switch of user above (a change of credentials clears it), and checked against a server
    // that died before it was set. The signal follows the *thread* that forked: replicas are
    // started from the runtime's worker threads, which live as long as the server does.
    let server = std::process::id() as libc::pid_t;
    // SAFETY: prctl(2) and getppid(2) are async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != server {
                return Err(std::io::Error::other("the server exited while starting the replica"));
            }
            Ok(())
        });
    }
    let path = format!("{}:{}", spec.venv.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    cmd.env("PATH", path)
        .env("VIRTUAL_ENV", spec.venv)
        .env("BENTOML_HOME", spec.home)
        .env("BENTOML_DO_NOT_TRACK", "true")
        .env("PYTHONUNBUFFERED", "1")
        .env("PORT", spec.port.to_string());
    for (k, v) in spec.envs {
        cmd.env(k, v);
    }
    for (k, v) in spec.secrets.iter().flat_map(|s| s.env()) {
        cmd.env(k, v);
    }
    // Last, so that nothing the deployment sets replaces it.
    let mark = new_mark(id);
    cmd.env(MARK_VAR, &mark);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|e| RuntimeError::Launch(format!("cannot start bentoml serve: {e}")))?;
    let pid = child.id().unwrap_or_default();
    let start_time = process_start_time(pid).unwrap_or_default();
    if let Some(dir) = pid_file.parent() {
        let _ = tokio::fs::create_dir_all(dir).await;
    }
    let _ = tokio::fs::write(&pid_file, format!("{pid} {start_time} {mark}\n")).await;
    for (stream, name) in
        [(child.stdout.take().map(Pipe::Out), "stdout"), (child.stderr.take().map(Pipe::Err), "stderr")]
    {
        let Some(stream) = stream else { continue };
        let logs = logs.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let mut lines = match stream {
                Pipe::Out(s) => BufReader::new(Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>).lines(),
                Pipe::Err(s) => BufReader::new(Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>).lines(),
            };
            while let Ok(Some(line)) = lines.next_line().await {
                logs.append(&id, name, &line);
            }
        });
    }
    Ok(ReplicaProcess { pid, child, pid_file, mark })
}

/// Makes `home` and `tmp` the replica user's own, closed to everyone else.
/// A replica that ran before may have left anything in its home: ownership
/// and mode are set through a descriptor opened without following
/// symlinks, so a link planted as `tmp` cannot hand the replica another
/// directory.
fn give_home(home: &Path, tmp: &Path, id: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if std::fs::symlink_metadata(tmp).is_ok_and(|m| !m.is_dir()) {
        std::fs::remove_file(tmp)?;
    }
    if let Err(e) = std::fs::create_dir(tmp)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(e);
    }
    for dir in [home, tmp] {
        let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dir)?;
        std::os::unix::fs::fchown(&f, Some(id), Some(id))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

enum Pipe {
    Out(tokio::process::ChildStdout),
    Err(tokio::process::ChildStderr),
}

impl ReplicaProcess {
    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// After the replica exited by itself (or was killed): ends the workers it left, which
    /// would otherwise go on serving its port with what it was started with.
    pub async fn reap(self) {
        end_marked(&self.mark).await;
        let _ = tokio::fs::remove_file(&self.pid_file).await;
    }

    /// SIGTERM to the process group, then SIGKILL after `grace` to it and
    /// to every process carrying the launch's mark.
    pub async fn stop(mut self, grace: Duration) {
        signal_group(self.pid, libc::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            signal_group(self.pid, libc::SIGKILL);
            let _ = self.child.wait().await;
        }
        // Workers may outlive the leader for a moment, or for good when it was killed.
        signal_group(self.pid, libc::SIGKILL);
        end_marked(&self.mark).await;
        let _ = tokio::fs::remove_file(&self.pid_file).await;
    }
}

/// The processes whose environment carries `mark`.
pub fn marked_processes(mark: &str) -> Vec<u32> {
    let needle = format!("{MARK_VAR}={mark}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

/// SIGKILL to every process carrying `mark` until none is left (a worker
/// being forked at that moment is found on the next pass), for at most 5 s.
async fn end_marked(mark: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let pids = marked_processes(mark);
        if pids.is_empty() || tokio::time::Instant::now() >= deadline {
            if !pids.is_empty() {
                tracing::warn!(?pids, "processes of a stopped replica did not end");
            }
            return;
        }
        for pid in pids {
            // SAFETY: kill(2); the pid carried the mark a moment ago. A pid reused since then
            // by a process without the mark is not ours, and the window is this loop's pass.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal_group(pgid: u32, sig: i32) {
    if pgid == 0 {
        return;
    }
    // SAFETY: kill(2) on a process group we created (process_group(0) makes
    // the replica the leader of a group whose id is its pid).
    unsafe {
        libc::kill(-(pgid as i32), sig);
    }
}

/// The start time of a process (field 22 of /proc/PID/stat), to tell a
/// replica from an unrelated process that reused its pid.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Stops replicas a previous server left running, from their pid files.
/// Returns how many it stopped.
pub async fn stop_orphans(pid_dir: &Path, grace: Duration) -> usize {
    let Ok(mut entries) = tokio::fs::read_dir(pid_dir).await else {
        return 0;
    };
    let mut stopped = 0;
    while let Ok(Some(e)) = entries.next_entry().await {
        let path = e.path();
        let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
        let mut parts = text.split_whitespace();
        let (Some(pid), Some(start), mark) = (
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next().and_then(|s| s.parse::<u64>().ok()),
            parts.next(),
        ) else {
            let _ = tokio::fs::remove_file(&path).await;
            continue;
        };
        if process_start_time(pid) == Some(start) {
            tracing::warn!(pid, file = %path.display(), "stopping a replica left running by a previous server");
            signal_group(pid, libc::SIGTERM);
            let deadline = tokio::time::Instant::now() + grace;
            while process_start_time(pid) == Some(start) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            signal_group(pid, libc::SIGKILL);
            stopped += 1;
        }
        // Its workers, even when the replica itself is already gone.
        if let Some(mark) = mark {
            end_marked(mark).await;
        }
        let _ = tokio::fs::remove_file(&path).await;
    }
    stopped
}

/// `GET path` on the replica; true on a 2xx within `timeout`.
pub async fn probe(port: u16, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        Some(head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2"))
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten().unwrap_or(false)
}

/// A port free on loopback right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A "bentoml" that ignores SIGTERM and starts a worker in a session of its own, as
    /// circus does: a signal to the replica's group cannot reach that worker.
    fn fake_venv(dir: &Path) -> PathBuf {
        let venv = dir.join("venv");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        let script = venv.join("bin/bentoml");
        std::fs::write(
            &script,
            "#!/bin/sh\ntrap '' TERM\nsetsid sh -c 'echo $$ > worker.pid; exec sleep 300' &\nexec sleep 300\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        venv
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    }

    async fn launch_fake(dir: &Path) -> (ReplicaProcess, u32) {
        let venv = fake_venv(dir);
        let home = dir.join("home");
        let spec =
            LaunchSpec { venv: &venv, bento_dir: dir, home: &home, port: 1, envs: &[], secrets: &[], run_as: None };
        let logs = LogBook::open(&dir.join("logs"), 1 << 20, 1).unwrap();
        let replica = launch(&spec, "r-1", logs, dir.join("pids/d.r-1")).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let worker = loop {
            if let Some(pid) = std::fs::read_to_string(home.join("worker.pid")).ok().and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "the fake replica started no worker");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(marked_processes(&replica.mark).len(), 2, "the replica and its worker carry the mark");
        (replica, worker)
    }

    #[tokio::test]
    async fn stopping_a_replica_ends_workers_that_left_its_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let (replica, worker) = launch_fake(dir.path()).await;
        let mark = replica.mark.clone();
        replica.stop(Duration::from_millis(200)).await;
        assert!(!alive(worker), "worker {worker} outlived its replica");
        assert!(marked_processes(&mark).is_empty());
    }

    #[tokio::test]
    async fn a_killed_replicas_workers_are_ended_when_it_is_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut replica, worker) = launch_fake(dir.path()).await;
        // SIGKILL to the replica alone, as a crash or the OOM killer would.
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(replica.pid as i32, libc::SIGKILL);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while replica.exited().is_none() {
            assert!(std::time::Instant::now() < deadline, "the replica did not exit on SIGKILL");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(alive(worker), "the worker should have survived its replica until the reap");
        replica.reap().await;
        assert!(!alive(worker), "worker {worker} of a killed replica was left running");
    }

    #[tokio::test]
    async fn an_orphaned_replicas_workers_are_stopped_even_when_the_replica_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut replica, worker) = launch_fake(dir.path()).await;
        // The replica dies alone (as bentoml serve killed by SIGKILL would); its worker lives on.
        signal_group(replica.pid, libc::SIGKILL);
        let _ = replica.child.wait().await;
        assert!(alive(worker));
        let stopped = stop_orphans(&dir.path().join("pids"), Duration::from_millis(200)).await;
        assert_eq!(stopped, 0, "the replica itself was already gone");
        assert!(!alive(worker), "worker {worker} of a dead replica was left running");
    }
}
