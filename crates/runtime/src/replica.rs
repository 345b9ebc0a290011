//! One replica: a `bentoml serve` process in its own process group, its
//! output pumped into the deployment's log, probes against its health
//! endpoints, and a pid file so that a replica left over by a crashed server
//! is found and stopped at the next start. A replica does not outlive its
//! server: it is unreachable without the server's proxy, so the kernel sends
//! it SIGTERM when the server dies, however it dies.

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
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|e| RuntimeError::Launch(format!("cannot start bentoml serve: {e}")))?;
    let pid = child.id().unwrap_or_default();
    let start_time = process_start_time(pid).unwrap_or_default();
    if let Some(dir) = pid_file.parent() {
        let _ = tokio::fs::create_dir_all(dir).await;
    }
    let _ = tokio::fs::write(&pid_file, format!("{pid} {start_time}\n")).await;
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
    Ok(ReplicaProcess { pid, child, pid_file })
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

    /// SIGTERM to the process group, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        signal_group(self.pid, libc::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            signal_group(self.pid, libc::SIGKILL);
            let _ = self.child.wait().await;
        }
        // Workers of the group may outlive the leader for a moment.
        signal_group(self.pid, libc::SIGKILL);
        let _ = tokio::fs::remove_file(&self.pid_file).await;
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
        let (Some(pid), Some(start)) =
            (parts.next().and_then(|p| p.parse::<u32>().ok()), parts.next().and_then(|s| s.parse::<u64>().ok()))
        else {
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
