//! The test harness: real `yatai serve` processes, the real bentoml CLI from
//! PyPI, PostgreSQL and an S3 server (s3s-fs). `scripts/test` installs and
//! starts the external components and passes them in environment variables:
//!
//! - `YATAI_TEST_VENV`: a venv with bentoml 1.4.40, scikit-learn and uv
//! - `YATAI_TEST_PG_URL`: a PostgreSQL admin URL (each test gets a database)
//! - `YATAI_TEST_S3_ENDPOINT`, `YATAI_TEST_S3_ROOT`, `YATAI_TEST_S3_KEY`,
//!   `YATAI_TEST_S3_SECRET`: an s3s-fs server and the directory it serves
//!   (each test gets a bucket, made as a directory there)

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn env_required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with scripts/test, which installs and starts what the tests need")
    })
}

pub fn venv() -> PathBuf {
    PathBuf::from(std::env::var("YATAI_TEST_VENV").unwrap_or_else(|_| "/var/cache/yatai-rs/venv".into()))
}

/// The machine-wide cache the test setup uses.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(std::env::var("YATAI_CACHE").unwrap_or_else(|_| "/var/cache/yatai-rs".into()))
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A name unique within this test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Polls `f` every 200 ms until it returns `Some`, or returns `None` at the deadline.
pub fn poll<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(Duration::from_millis(200), timeout, f)
}

/// Polls `f` every `every` until it returns `Some`, or returns `None` at the deadline.
pub fn poll_every<T>(every: Duration, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which metadata database and artifact store a server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded defaults: SQLite and a local directory.
    SqliteLocal,
    /// PostgreSQL and an S3 server.
    PostgresS3,
}

/// A scratch directory removed at drop (kept when the test failed).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let base = std::env::var("YATAI_TEST_TMP").map(PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
        let dir = base.join(unique(&format!("yatai-{name}-")));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub struct ServerOptions {
    pub backend: Backend,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Start without YATAI_INITIAL_API_TOKEN, so the server makes one up.
    pub random_token: bool,
    /// Start as the README says a new user does: in an empty directory, with
    /// the default (relative) data directory and environment directory, and
    /// `uv` found on PATH.
    pub readme_defaults: bool,
    /// PostgreSQL: reach it at this `HOST:PORT` (a fault-injecting proxy) instead.
    pub database_through: Option<String>,
    /// The data directory instead of one in the server's scratch (e.g. on a small filesystem).
    pub data_dir: Option<PathBuf>,
    /// Serve this data directory (and database and bucket) instead of fresh ones.
    pub on: Option<Target>,
    /// S3: reach it at this `HOST:PORT` (a fault-injecting proxy) instead.
    pub storage_through: Option<String>,
}

impl ServerOptions {
    pub fn new(backend: Backend) -> Self {
        ServerOptions {
            backend,
            args: Vec::new(),
            env: Vec::new(),
            random_token: false,
            readme_defaults: false,
            database_through: None,
            data_dir: None,
            on: None,
            storage_through: None,
        }
    }
    /// The S3 server reached through `addr` (`HOST:PORT`), e.g. a proxy that injects faults.
    pub fn storage_through(mut self, addr: &str) -> Self {
        self.storage_through = Some(addr.to_owned());
        self
    }
    /// Keep the data (SQLite, archives, keys) in `dir`.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }
    /// PostgreSQL reached through `addr` (`HOST:PORT`), e.g. a proxy that injects faults.
    pub fn database_through(mut self, addr: &str) -> Self {
        self.database_through = Some(addr.to_owned());
        self
    }
    /// Serve `target` (e.g. one a backup was restored into).
    pub fn on(mut self, target: Target) -> Self {
        self.backend = target.backend;
        self.on = Some(target);
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }
    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
    /// A server that builds the images of pushed bentos into `<registry>/bentos` (plain HTTP)
    /// on `base`, with the image builder's shared test cache and `uv`.
    pub fn building_images(self, registry: &str, base: &str, cache: &Path, uv: &Path) -> Self {
        self.args(&["--image-registry", &format!("{registry}/bentos"), "--image-plain-http", "--image-base", base])
            .args(&["--image-build-cache", &cache.display().to_string(), "--uv", &uv.display().to_string()])
    }
}

/// A data directory, and with [`Backend::PostgresS3`] a new database and bucket, with nothing
/// started on them yet: where a server runs, or a backup is restored to.
pub struct Target {
    pub scratch: Scratch,
    pub data_dir: PathBuf,
    pub backend: Backend,
    /// `--data-dir` (unless the README's defaults are used), and the database and storage arguments.
    pub args: Vec<String>,
    /// The S3 credentials.
    pub env: Vec<(String, String)>,
    pub bucket_dir: Option<PathBuf>,
}

impl Target {
    pub fn fresh(backend: Backend) -> Target {
        Self::new(&ServerOptions::new(backend))
    }

    /// What `opts` asks for: the README's defaults, a given data directory, PostgreSQL through a proxy.
    fn new(opts: &ServerOptions) -> Target {
        let (backend, readme_defaults) = (opts.backend, opts.readme_defaults);
        let scratch = Scratch::new("server");
        let mut args = Vec::new();
        let data_dir = if readme_defaults {
            scratch.path().join("yatai-data")
        } else {
            let dir = opts.data_dir.clone().unwrap_or_else(|| scratch.path().join("data"));
            args.extend(["--data-dir".into(), dir.display().to_string()]);
            dir
        };
        let mut env = Vec::new();
        let mut bucket_dir = None;
        if backend == Backend::PostgresS3 {
            let mut url = new_pg_database("t");
            if let Some(addr) = &opts.database_through {
                url = url.replace(&pg_addr(), addr);
            }
            args.extend(["--database-url".into(), url]);
            let bucket = unique("b").replace('x', "-");
            let dir = PathBuf::from(env_required("YATAI_TEST_S3_ROOT")).join(&bucket);
            std::fs::create_dir_all(&dir).unwrap();
            bucket_dir = Some(dir);
            args.extend([
                "--storage".into(),
                format!("s3://{bucket}"),
                "--s3-endpoint".into(),
                match &opts.storage_through {
                    Some(addr) => format!("http://{addr}"),
                    None => env_required("YATAI_TEST_S3_ENDPOINT"),
                },
            ]);
            env.push(("YATAI_S3_ACCESS_KEY_ID".into(), env_required("YATAI_TEST_S3_KEY")));
            env.push(("YATAI_S3_SECRET_ACCESS_KEY".into(), env_required("YATAI_TEST_S3_SECRET")));
        }
        Target { scratch, data_dir, backend, args, env, bucket_dir }
    }

    /// Runs `yatai ARGS` on this target's database and storage (it may fail).
    pub fn yatai(&self, args: &[&str]) -> Output {
        run_yatai(args, &self.args, &self.env)
    }
}

fn run_yatai(args: &[&str], backend_args: &[String], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(yatai_bin());
    cmd.args(args).args(backend_args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A running `yatai serve`, stopped at drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub token: String,
    pub scratch: Scratch,
    pub backend: Backend,
    /// `serve` arguments, to restart the same server.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where the bucket of this server lives on disk (S3 backend).
    pub bucket_dir: Option<PathBuf>,
    pub log: PathBuf,
    /// What the server printed on stdout before it listened.
    pub banner: Vec<String>,
    data_dir: PathBuf,
    /// `--data-dir`, and the database and storage arguments of the backend.
    pub backend_args: Vec<String>,
}

/// The `yatai` binary under test: this build's, or `YATAI_TEST_BIN` (a release build, to
/// record figures with the suite's own load tests).
pub fn yatai_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| std::env::var("YATAI_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_yatai").to_owned()))
}

impl Server {
    pub fn start(backend: Backend) -> Server {
        Self::start_with(ServerOptions::new(backend))
    }

    pub fn start_with(opts: ServerOptions) -> Server {
        let token = format!("yatai_test_{}", unique("t"));
        let target = match opts.on {
            Some(t) => t,
            None => Target::new(&opts),
        };
        let mut args: Vec<String> = vec!["serve".into(), "--bind".into(), "127.0.0.1:0".into()];
        args.extend(target.args.iter().cloned());
        let mut env = vec![
            ("YATAI_LOG".to_owned(), "info,yatai_api=debug,sqlx=warn".to_owned()),
            // Tests do not measure durability; syncing slows them down.
            ("YATAI_FSYNC".to_owned(), "false".to_owned()),
            // Deployments: build Python environments with the test venv's uv,
            // cached across tests and runs (the first build downloads from PyPI).
            ("UV_CACHE_DIR".to_owned(), cache_dir().join("uv-cache").display().to_string()),
            ("YATAI_STOP_GRACE".to_owned(), "5s".to_owned()),
        ];
        if opts.readme_defaults {
            let path = std::env::var("PATH").unwrap_or_default();
            env.push(("PATH".to_owned(), format!("{}:{path}", venv().join("bin").display())));
        } else {
            env.push(("YATAI_UV".to_owned(), venv().join("bin/uv").display().to_string()));
            env.push(("YATAI_ENV_DIR".to_owned(), cache_dir().join("test-envs").display().to_string()));
        }
        env.extend(target.env.iter().cloned());
        if !opts.random_token {
            env.push(("YATAI_INITIAL_API_TOKEN".to_owned(), token.clone()));
        }
        args.extend(opts.args);
        env.extend(opts.env);
        let Target { scratch, data_dir, bucket_dir, backend, args: backend_args, .. } = target;
        let log = scratch.path().join("server.log");
        let (child, url, banner) = spawn_server(&args, &env, scratch.path(), &log);
        let token = if opts.random_token {
            banner.iter().map(|l| l.trim()).find(|l| l.starts_with("yatai_")).expect("a printed token").to_owned()
        } else {
            token
        };
        Server { child, url, token, scratch, backend, args, env, bucket_dir, log, banner, data_dir, backend_args }
    }

    /// Stops the server (SIGTERM, then waits) and starts it again with the
    /// same configuration and data.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Kills the server with SIGKILL (a crash): nothing of it gets to clean up.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again after [`Server::stop`] or [`Server::crash`].
    pub fn start_again(&mut self) {
        // Keep listening on the same address, so clients' endpoints stay valid.
        let mut args = self.args.clone();
        let bind = args.iter().position(|a| a == "--bind").expect("bind") + 1;
        args[bind] = self.url.trim_start_matches("http://").to_owned();
        let (child, url, banner) = spawn_server(&args, &self.env, self.scratch.path(), &self.log);
        self.child = child;
        self.url = url;
        self.banner = banner;
    }

    pub fn stop(&mut self) {
        if !self.stop_within(Duration::from_secs(20)) {
            panic!("yatai serve did not stop within 20 s of SIGTERM");
        }
    }

    /// SIGTERM, as a service manager stops it: the server stops its replicas and exits. Kills
    /// it (SIGKILL) if it has not exited within `grace`; returns whether it had.
    fn stop_within(&mut self, grace: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        // SAFETY: kill(2) on our own child's pid, not yet reaped (try_wait said it runs).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    /// Files that hold archives, wherever this server keeps them.
    pub fn stored_archives(&self) -> Vec<PathBuf> {
        let root = match &self.bucket_dir {
            Some(dir) => dir.join("blobs"),
            None => self.data_dir().join("artifacts").join("blobs"),
        };
        let mut out = Vec::new();
        collect_files(&root, &mut out);
        out.retain(|p| !p.to_string_lossy().contains(".s3s-fs"));
        out
    }

    /// A bentoml CLI client with a fresh home, logged in to this server.
    pub fn client(&self) -> Bentoml {
        Bentoml::new(&self.url, &self.token)
    }

    /// An HTTP client for direct API calls.
    pub fn http(&self) -> Http {
        Http { base: self.url.clone(), token: Some(self.token.clone()) }
    }

    /// Runs `yatai ARGS` on this server's database and storage (it may fail).
    pub fn yatai(&self, args: &[&str]) -> Output {
        run_yatai(args, &self.backend_args, &self.env)
    }

    /// Runs an admin subcommand against this server's database.
    pub fn admin(&self, args: &[&str]) -> String {
        self.admin_with_env(args, &[])
    }

    /// Runs an admin subcommand against this server's database, with more
    /// environment (`YATAI_PASSWORD` for `user set-password`).
    pub fn admin_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut cmd = Command::new(yatai_bin());
        cmd.args(args);
        let db_args = self.db_args();
        cmd.args(&db_args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "yatai {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn db_args(&self) -> Vec<String> {
        let mut v = vec!["--data-dir".to_owned(), self.data_dir().display().to_string()];
        if let Some(i) = self.args.iter().position(|a| a == "--database-url") {
            v.push("--database-url".into());
            v.push(self.args[i + 1].clone());
        }
        v
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stopped, not killed: a killed server leaves its deployments' replicas running (they
        // are only stopped by the next start on the same data directory).
        self.stop_within(Duration::from_secs(20));
        if std::thread::panicking() {
            eprintln!("---- yatai serve log ({}) ----\n{}", self.log.display(), self.log_text());
        }
    }
}

/// Starts `yatai serve` in `cwd`, as a user starts it in a directory of theirs.
fn spawn_server(args: &[String], env: &[(String, String)], cwd: &Path, log: &Path) -> (Child, String, Vec<String>) {
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut cmd = Command::new(yatai_bin());
    cmd.args(args).current_dir(cwd).stdout(Stdio::piped()).stderr(log_file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start yatai serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("yatai listening on ") {
                let _ = tx.send((url.trim().to_owned(), std::mem::take(&mut banner)));
            } else {
                banner.push(line);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok((url, banner)) => (child, url, banner),
        Err(_) => {
            let _ = child.kill();
            panic!("yatai serve did not start; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
    }
}

/// `HOST:PORT` of the test PostgreSQL server.
pub fn pg_addr() -> String {
    let base = env_required("YATAI_TEST_PG_URL");
    let after_at = base.split_once('@').map(|(_, r)| r).unwrap_or(&base);
    after_at.split('/').next().unwrap_or_default().to_owned()
}

/// A new, empty database of the test PostgreSQL server, named from `prefix`: its URL.
pub fn new_pg_database(prefix: &str) -> String {
    let db = unique(prefix);
    create_pg_database(&db);
    let base = env_required("YATAI_TEST_PG_URL");
    match base.rsplit_once('/') {
        Some((head, _)) => format!("{head}/{db}"),
        None => panic!("YATAI_TEST_PG_URL must end in /DATABASE"),
    }
}

fn create_pg_database(name: &str) {
    let url = env_required("YATAI_TEST_PG_URL");
    let out = Command::new("psql")
        .args([&url, "-v", "ON_ERROR_STOP=1", "-qc", &format!("CREATE DATABASE {name}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "createdb failed: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every file under `dir` with its contents, keyed by relative path.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files
        .into_iter()
        .map(|p| (p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

/// The bentoml CLI with its own `BENTOML_HOME`.
pub struct Bentoml {
    pub home: Scratch,
    pub endpoint: String,
    pub token: String,
}

impl Bentoml {
    pub fn new(endpoint: &str, token: &str) -> Bentoml {
        Bentoml { home: Scratch::new("bentoml-home"), endpoint: endpoint.to_owned(), token: token.to_owned() }
    }

    /// A client whose home starts as a copy of `template`.
    pub fn with_home_from(endpoint: &str, token: &str, template: &Path) -> Bentoml {
        let b = Self::new(endpoint, token);
        let status =
            Command::new("cp").arg("-a").arg(format!("{}/.", template.display())).arg(b.home.path()).status().unwrap();
        assert!(status.success());
        b
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(venv().join("bin").join(program));
        cmd.env("BENTOML_HOME", self.home.path())
            .env("BENTOML_DO_NOT_TRACK", "true")
            .env("BENTO_CLOUD_API_ENDPOINT", &self.endpoint)
            .env("BENTO_CLOUD_API_KEY", &self.token)
            .env("NO_PROXY", "*")
            .env("COLUMNS", "200")
            .env("TERM", "dumb")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command("bentoml").args(args).output().expect("run bentoml")
    }

    /// Runs bentoml in `dir` (bentoml build reads only below its cwd).
    pub fn ok_in(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.command("bentoml").args(args).current_dir(dir).output().expect("run bentoml");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "bentoml {args:?} in {} failed ({}):\n{text}", dir.display(), out.status);
        text
    }

    /// `bentoml build` of the bento in `tests/fixtures/<fixture>` (with `extra` arguments) in
    /// this client's home; returns its tag.
    pub fn build_fixture(&self, fixture: &str, extra: &[&str]) -> String {
        let mut args = vec!["build", ".", "--output", "tag"];
        args.extend_from_slice(extra);
        let out = self.ok_in(Path::new(&format!("{FIXTURES}/{fixture}")), &args);
        out.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("__tag__:").map(str::to_owned))
            .unwrap_or_else(|| panic!("no tag in bentoml build output:\n{out}"))
    }

    /// Runs bentoml and returns stdout + stderr; panics with both if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "bentoml {args:?} failed ({}):\n{text}", out.status);
        text
    }

    /// Runs bentoml expecting failure; returns stdout + stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "bentoml {args:?} unexpectedly succeeded:\n{text}");
        text
    }

    pub fn python(&self, script: &str, args: &[&str]) -> String {
        let out = self.command("python").arg(script).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "python {script} failed:\n{text}{}", String::from_utf8_lossy(&out.stderr));
        text
    }

    pub fn python_code(&self, code: &str) -> String {
        let out = self.command("python").arg("-c").arg(code).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "python failed:\n{code}\n{text}{}", String::from_utf8_lossy(&out.stderr));
        text
    }

    /// Saves a model of `size` random bytes; returns its tag.
    pub fn create_model(&self, name: &str, size: usize) -> String {
        let code = format!(
            "import bentoml, os\n\
             with bentoml.models.create({name:?}, labels={{'team': 'e2e'}}, metadata={{'size': {size}}}) as m:\n\
             \x20   with open(os.path.join(m.path, 'weights.bin'), 'wb') as f:\n\
             \x20       left = {size}\n\
             \x20       while left > 0:\n\
             \x20           n = min(left, 1 << 20); f.write(os.urandom(n)); left -= n\n\
             print(m.tag)"
        );
        self.python_code(&code).trim().to_owned()
    }

    pub fn model_dir(&self, tag: &str) -> PathBuf {
        let (name, version) = tag.split_once(':').unwrap();
        self.home.path().join("models").join(name).join(version)
    }

    pub fn bento_dir(&self, tag: &str) -> PathBuf {
        let (name, version) = tag.split_once(':').unwrap();
        self.home.path().join("bentos").join(name).join(version)
    }
}

/// A `BENTOML_HOME` holding the iris bento and its two models, built once
/// per test process and copied for each test.
pub struct IrisHome {
    pub home: Scratch,
    pub bento: String,
    /// A second build of the same service: same models, another version.
    pub bento_v2: String,
    /// The service built with a required environment variable (no default).
    pub needs_env: String,
    pub models: Vec<String>,
}

pub fn iris_home() -> &'static IrisHome {
    static HOME: OnceLock<IrisHome> = OnceLock::new();
    HOME.get_or_init(|| {
        let b = Bentoml::new("http://127.0.0.1:9", "unused");
        let out = b.python(&format!("{FIXTURES}/iris/save_models.py"), &["fixture"]);
        let models: Vec<String> = out.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect();
        let build = |extra: &[&str]| b.build_fixture("iris", extra);
        let bento = build(&[]);
        let bento_v2 = build(&[]);
        let needs_env = build(&["-f", "bentofile-needs-env.yaml"]);
        // Keep the template outside Scratch's cleanup (it lives for the process).
        let home = Scratch(b.home.0.clone());
        std::mem::forget(b);
        IrisHome { home, bento, bento_v2, needs_env, models }
    })
}

/// A minimal HTTP/1.1 client on `std::net`, so tests can send exactly the
/// bytes they mean to (wrong lengths, cut-off bodies) and read what comes back.
pub struct Http {
    pub base: String,
    pub token: Option<String>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("status {} body is not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Http {
    pub fn without_token(&self) -> Http {
        Http { base: self.base.clone(), token: None }
    }
    pub fn with_token(&self, token: &str) -> Http {
        Http { base: self.base.clone(), token: Some(token.to_owned()) }
    }

    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").trim_end_matches('/').to_owned()
    }

    /// Sends a request built from `head_extra` headers and `body`, where
    /// `content_length` may lie, and reads the response.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        head_extra: &[(&str, &str)],
        body: &[u8],
        content_length: Option<usize>,
        close_after: bool,
    ) -> Response {
        let mut s = std::net::TcpStream::connect(self.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr());
        if let Some(t) = &self.token {
            head.push_str(&format!("X-YATAI-API-TOKEN: {t}\r\n"));
        }
        for (k, v) in head_extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(n) = content_length {
            head.push_str(&format!("Content-Length: {n}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        if close_after {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        read_response(&mut s)
    }

    pub fn request(&self, method: &str, path: &str, json: Option<&serde_json::Value>) -> Response {
        match json {
            Some(v) => {
                let body = serde_json::to_vec(v).unwrap();
                self.raw(method, path, &[("Content-Type", "application/json")], &body, Some(body.len()), false)
            }
            None => self.raw(method, path, &[], b"", Some(0), false),
        }
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }
    pub fn post(&self, path: &str, json: &serde_json::Value) -> Response {
        self.request("POST", path, Some(json))
    }
    pub fn patch(&self, path: &str, json: Option<&serde_json::Value>) -> Response {
        self.request("PATCH", path, json)
    }
    pub fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, None)
    }
    pub fn put_bytes(&self, path: &str, body: &[u8]) -> Response {
        self.raw("PUT", path, &[("Content-Type", "application/octet-stream")], body, Some(body.len()), false)
    }
}

pub fn read_response(s: &mut impl Read) -> Response {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response (got {} bytes: {:?})", buf.len(), String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut body = buf[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))).collect();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
    out
}

/// Generates one test per backend: `name::sqlite_local` and `name::postgres_s3`.
#[macro_export]
macro_rules! backend_test {
    ($(#[$meta:meta])* fn $name:ident($backend:ident: Backend) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn run($backend: Backend) $body
            #[test]
            fn sqlite_local() {
                run(Backend::SqliteLocal)
            }
            #[test]
            fn postgres_s3() {
                run(Backend::PostgresS3)
            }
        }
    };
}

/// Pids of `bentoml serve` processes running from `dir` (a server's data dir).
pub fn serve_processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("bentoml serve") && cmd.contains(&needle) {
            out.push(pid);
        }
    }
    out
}

/// Every process whose command line names `dir` (a server's data dir): after the server is
/// gone, whatever it left running (replicas and their workers).
pub fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            out.push((pid, cmd));
        }
    }
    out
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A plain tar of `files` (name, bytes), ustar with a fixed mtime, so equal
/// input gives equal bytes.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut h = [0u8; 512];
        assert!(name.len() <= 100, "{name} is too long for a plain ustar name");
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"15000000000");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// The bytes of member `name` of a plain tar made by [`tar_of`].
pub fn tar_member(tar: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let h = &tar[at..at + 512];
        if h.iter().all(|b| *b == 0) {
            return None;
        }
        let end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let size = usize::from_str_radix(std::str::from_utf8(&h[124..135]).ok()?.trim_matches('\0').trim(), 8).ok()?;
        let data = tar.get(at + 512..at + 512 + size)?;
        if &h[..end] == name.as_bytes() {
            return Some(data.to_vec());
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    None
}

/// A private package index on loopback (`tests/support/private_index.py`): PEP 503 pages
/// behind basic auth `user:token`, holding one wheel, `yatai-private-probe==version`, whose
/// module says which version it is. Stopped at drop.
pub struct PrivateIndex {
    child: Child,
    pub port: u16,
    pub user: String,
    pub token: String,
    pub version: String,
    log: PathBuf,
    _dir: Scratch,
}

impl PrivateIndex {
    pub fn start(user: &str, token: &str, version: &str) -> PrivateIndex {
        let dir = Scratch::new("private-index");
        let log = dir.path().join("requests.log");
        std::fs::write(&log, "").unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/support/private_index.py");
        let mut child = Command::new("python3")
            .args([script, user, token, version])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 for the private index");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the private index printed {line:?}, not its port"));
        PrivateIndex { child, port, user: user.into(), token: token.into(), version: version.into(), log, _dir: dir }
    }

    /// The index's URL with the credentials in it, as an installer takes it.
    pub fn url_with(&self, token: &str) -> String {
        format!("http://{}:{token}@127.0.0.1:{}/simple", self.user, self.port)
    }

    /// `METHOD PATH STATUS` of each request so far.
    pub fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PrivateIndex {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A model's manifest as the bentoml client sends it, for tests that push through the API.
pub fn model_manifest() -> serde_json::Value {
    serde_json::json!({"module": "", "api_version": "v1", "bentoml_version": "1.4.40", "size_bytes": 10,
                       "metadata": {}, "context": {}, "options": {}})
}

/// Creates model `repo:version` through the API (and its repository if needed); returns the
/// version's API path.
pub fn create_model_version(http: &Http, repo: &str, version: &str) -> String {
    let r = http.post("/api/v1/model_repositories", &serde_json::json!({"name": repo, "description": ""}));
    assert!(r.status == 200 || r.status == 409, "{}", r.text());
    let r = http.post(
        &format!("/api/v1/model_repositories/{repo}/models"),
        &serde_json::json!({"version": version, "description": "", "manifest": model_manifest(),
                            "build_at": "2026-11-24 19:44:50.976764", "labels": []}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    format!("/api/v1/model_repositories/{repo}/models/{version}")
}

/// Uploads `payload` as the archive member `./data` of the version at `version_path`.
pub fn upload_payload(http: &Http, version_path: &str, payload: &[u8]) -> Response {
    let r = http.patch(&format!("{version_path}/start_upload"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    http.put_bytes(&format!("{version_path}/upload"), &tar_of(&[("./data", payload)]))
}

/// The payload of the archive [`upload_payload`] stored.
pub fn downloaded_payload(http: &Http, version_path: &str) -> Vec<u8> {
    let r = http.get(&format!("{version_path}/download"));
    assert_eq!(r.status, 200, "{}", r.text());
    tar_member(&r.body, "./data").expect("the archive's payload")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// How many file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// A small xorshift generator for tests that act at random moments, reproducible from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the environment variable `var` if set (to replay a failure), else from the
    /// clock; returns the seed too, for the test to print.
    pub fn seeded(var: &str) -> (Rng, u64) {
        let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        (Rng(seed), seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
