//! Real components for the builder's tests: Debian's docker-registry on loopback, a debootstrap
//! base image (built once by `scripts/build-testbed/base-image.sh`, cached), bentos built by the
//! real bentoml client (`scripts/build-testbed/make-bentos.sh`, cached), skopeo and umoci as the
//! independent client, and unshare + chroot to run what was built.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use yatai_build::BuildConfig;

pub fn cache_root() -> PathBuf {
    std::env::var_os("YATAI_BUILD_TEST_CACHE").map(PathBuf::from).unwrap_or_else(|| "/var/cache/yatai-rs/build".into())
}

fn venv() -> PathBuf {
    std::env::var_os("YATAI_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| "/var/cache/yatai-rs/venv".into())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub struct Fixtures {
    /// OCI layout of the debootstrap base (tag `bookworm`).
    pub base_layout: PathBuf,
    /// Directory of exported bentos: iris-v1.bento, iris-v2.bento, twin.bento.
    pub bentos: PathBuf,
    pub uv: PathBuf,
}

impl Fixtures {
    pub fn bento(&self, name: &str) -> PathBuf {
        self.bentos.join(format!("{name}.bento"))
    }
}

/// Builds the cached fixtures once per test binary (cheap when the cache is warm).
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let missing: Vec<&str> = ["docker-registry", "skopeo", "umoci", "debootstrap", "unshare", "chroot"]
            .into_iter()
            .filter(|t| {
                !Command::new("sh")
                    .args(["-c", &format!("command -v {t}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success()
            })
            .collect();
        assert!(
            missing.is_empty(),
            "missing tools {missing:?}: apt-get install -y docker-registry skopeo umoci debootstrap"
        );
        let uv = venv().join("bin/uv");
        assert!(uv.exists(), "no {} (the bentoml venv: see docs/image-builder.md, Tests)", uv.display());
        let script = |name: &str| -> PathBuf {
            let out = Command::new("bash")
                .arg(repo_root().join("scripts/build-testbed").join(name))
                .arg(cache_root())
                .stderr(Stdio::inherit())
                .output()
                .unwrap();
            assert!(out.status.success(), "{name} failed");
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        };
        Fixtures { base_layout: script("base-image.sh"), bentos: script("make-bentos.sh"), uv }
    })
}

/// The builder cache shared by the tests (a fixed directory, so a second run is warm).
pub fn shared_cache() -> PathBuf {
    cache_root().join("test-cache")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_status(url: &str) -> Option<u16> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", url])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok().filter(|c| *c != 0)
}

/// Debian's docker-registry (distribution 2.8) on a loopback port, optionally with htpasswd.
pub struct TestRegistry {
    pub port: u16,
    pub data: tempfile::TempDir,
    child: Option<Child>,
    auth: Option<(String, String)>,
}

impl TestRegistry {
    pub fn start(auth: Option<(&str, &str)>) -> Self {
        let mut r = Self {
            port: free_port(),
            data: tempfile::tempdir().unwrap(),
            child: None,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        r.restart();
        r
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the registry process on the same port and storage.
    pub fn restart(&mut self) {
        let dir = self.data.path();
        let mut cfg = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
             http: {{addr: 127.0.0.1:{}, secret: test}}\n",
            dir.join("store").display(),
            self.port
        );
        if let Some((u, p)) = &self.auth {
            // bcrypt from Debian's libxcrypt through Python's crypt module (3.11 still has it).
            let out = Command::new("/usr/bin/python3")
                .args([
                    "-W",
                    "ignore",
                    "-c",
                    "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))",
                ])
                .arg(p)
                .output()
                .unwrap();
            assert!(out.status.success(), "bcrypt via python3 crypt failed");
            let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
            assert!(hash.starts_with("$2"), "{hash}");
            std::fs::write(dir.join("htpasswd"), format!("{u}:{hash}\n")).unwrap();
            cfg.push_str(&format!("auth: {{htpasswd: {{realm: test, path: {}}}}}\n", dir.join("htpasswd").display()));
        }
        std::fs::write(dir.join("config.yml"), cfg).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = unsafe_die_with_parent(Command::new("docker-registry").arg("serve").arg(dir.join("config.yml")))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry");
        self.child = Some(child);
        let url = format!("http://{}/v2/", self.host());
        poll("docker-registry to listen", Duration::from_secs(20), || {
            http_status(&url).filter(|c| *c == 200 || *c == 401)
        });
    }

    /// SIGKILL, and wait until the process is gone (its socket closed).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }

    /// Pushes the debootstrap base image here with skopeo; returns its reference.
    pub fn push_base(&self) -> String {
        push_base_to(&self.host(), self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str())))
    }

    /// How many requests the registry's access log records whose request line contains
    /// `needle` (e.g. `"PUT /v2/repo/blobs/uploads/`).
    pub fn requests(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Children must not outlive a test binary that panics or is killed.
fn unsafe_die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A build config for a bento exported at `bento` into `repo` of `reg`, on its base image.
pub fn config(reg: &TestRegistry, tag: &str, repo: &str) -> BuildConfig {
    let mut c = BuildConfig::new(tag, format!("{}/{repo}", reg.host()), shared_cache());
    c.base = Some(format!("{}/base/debian-python:bookworm", reg.host()));
    c.plain_http = true;
    c.uv = fixtures().uv.clone();
    c.uv_cache = Some(cache_root().join("uv-cache"));
    c
}

pub fn local(bento: &Path) -> yatai_build::source::LocalSource {
    yatai_build::source::LocalSource { bento: Some(bento.to_path_buf()), bentoml_home: None }
}

/// Extracts an exported bento into a directory the test may edit.
pub fn extract(bento: &Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    run_ok(Command::new("tar").arg("-xf").arg(bento).arg("-C").arg(d.path()));
    d
}

/// `skopeo inspect` (`--config` for the image config, `--raw` for the manifest).
/// Copies the debootstrap base into the registry at `host` (plain HTTP); returns its reference.
pub fn push_base_to(host: &str, creds: Option<(&str, &str)>) -> String {
    let reference = format!("{host}/base/debian-python:bookworm");
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if let Some((u, p)) = creds {
        cmd.arg(format!("--dest-creds={u}:{p}"));
    }
    let src = format!("oci:{}:bookworm", fixtures().base_layout.display());
    run_ok(cmd.arg(src).arg(format!("docker://{reference}")));
    reference
}

pub fn skopeo_inspect(reference: &str, flag: Option<&str>) -> Value {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if let Some(f) = flag {
        cmd.arg(f);
    }
    serde_json::from_str(&run_ok(cmd.arg(format!("docker://{reference}")))).unwrap()
}

/// Pulls `reference` with skopeo (recompressing to gzip: Debian's umoci 0.4.7 cannot read zstd)
/// and unpacks it with umoci as root, so owners are applied.
pub fn unpack(reference: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("oci");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false", "--dest-compress", "--dest-compress-format", "gzip"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:img", layout.display())),
    );
    let bundle = d.path().join("bundle");
    run_ok(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:img", layout.display())).arg(&bundle));
    (d, bundle)
}

/// An unpacked image's process, run as the image says (args, env, cwd, uid/gid from umoci's
/// runtime config) under unshare (mount + pid namespaces) and chroot.
pub struct Running {
    pub port: u16,
    unshare: Child,
    pub log: PathBuf,
}

impl Running {
    pub fn start(bundle: &Path) -> Self {
        Self::start_with(bundle, |port| {
            vec![format!("PORT={port}"), "BENTOML_HOST=127.0.0.1".into(), "BENTOML_DO_NOT_TRACK=true".into()]
        })
    }

    /// As [`Running::start`], with `extra_env(port)` after the image's own env (later wins).
    pub fn start_with(bundle: &Path, extra_env: impl FnOnce(u16) -> Vec<String>) -> Self {
        let rt: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        let p = &rt["process"];
        let rootfs = bundle.join("rootfs");
        // A runtime would bind-mount these; chroot does not.
        std::fs::write(rootfs.join("etc/hosts"), "127.0.0.1\tlocalhost\n::1\tlocalhost\n").unwrap();
        let port = free_port();
        let uid = p["user"]["uid"].as_u64().unwrap();
        let gid = p["user"]["gid"].as_u64().unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--pid", "--fork", "sh", "-c"])
            .arg(
                r#"R=$1; U=$2; C=$3; shift 3
mount -t proc proc "$R/proc" && mount --rbind /dev "$R/dev" && mount -t tmpfs tmpfs "$R/tmp" || exit 97
exec chroot --userspec="$U" "$R" /usr/bin/env -i -C "$C" "$@""#,
            )
            .arg("sh")
            .arg(&rootfs)
            .arg(format!("{uid}:{gid}"))
            .arg(p["cwd"].as_str().unwrap());
        for e in p["env"].as_array().unwrap() {
            cmd.arg(e.as_str().unwrap());
        }
        cmd.args(extra_env(port));
        for a in p["args"].as_array().unwrap() {
            cmd.arg(a.as_str().unwrap());
        }
        let log = bundle.join("serve.log");
        let f = std::fs::File::create(&log).unwrap();
        let unshare = unsafe_die_with_parent(&mut cmd).stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap();
        Self { port, unshare, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn wait_ready(&mut self) {
        self.wait_ready_at("/readyz")
    }

    /// Polls `path` until it answers 200, failing with the log when the process exits first.
    pub fn wait_ready_at(&mut self, path: &str) {
        let url = self.url(path);
        let log = self.log.clone();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if http_status(&url) == Some(200) {
                return;
            }
            if let Ok(Some(st)) = self.unshare.try_wait() {
                panic!("the image's process exited ({st}): {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(
                Instant::now() < deadline,
                "not ready in 90 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn post(&self, path: &str, body: &str) -> String {
        run_ok(
            Command::new("curl")
                .args(["-sf", "--max-time", "20", "-X", "POST", "-H", "content-type: application/json", "-d", body])
                .arg(self.url(path)),
        )
    }

    /// The host pid of the namespace's PID 1 (the image's entrypoint process).
    pub fn init_pid(&self) -> Option<u32> {
        let id = self.unshare.id();
        let s = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children")).ok()?;
        s.split_whitespace().next()?.parse().ok()
    }

    /// uid and command line of every process in the namespace.
    pub fn processes(&self) -> Vec<(u32, String)> {
        let Some(init) = self.init_pid() else {
            return Vec::new();
        };
        let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).ok();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() != ns {
                continue;
            }
            let mut cmdline = String::new();
            let _ =
                std::fs::File::open(format!("/proc/{pid}/cmdline")).and_then(|mut f| f.read_to_string(&mut cmdline));
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let uid = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse().ok())
                .unwrap_or(u32::MAX);
            out.push((uid, cmdline.replace('\0', " ").trim().to_string()));
        }
        out
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Killing the namespace's init kills every process in it (unshare itself ignores
        // SIGTERM, and chroot's setuid clears --kill-child's parent-death signal).
        if let Some(pid) = self.init_pid() {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// A docker config.json with basic credentials for `host`.
pub fn docker_config(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::json!({"auths": {host: {"auth": auth}}}).to_string()).unwrap();
    p
}
