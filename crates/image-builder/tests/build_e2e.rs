//! The image builder against real components: bentos made by bentoml 1.4.40, Debian's
//! docker-registry, a debootstrap base image, skopeo + umoci to read the result, and the image
//! run under unshare + chroot with its own entrypoint, env and user.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::Value;
use yatai_build::progress::Event;
use yatai_build::registry::{Registry, RegistryError};
use yatai_build::{BlobAction, BuildError, LayerKind, build};

fn quiet() -> impl Fn(&Event) + Send + Sync {
    |e: &Event| eprintln!("  [build] {e}")
}

/// `HOST/REPO@DIGEST`: skopeo refuses references with both a tag and a digest.
fn pinned(o: &yatai_build::BuildOutcome) -> String {
    format!("{}@{}", o.image.rsplit_once(':').unwrap().0, o.digest)
}

fn action(o: &yatai_build::BuildOutcome, kind: LayerKind) -> Vec<BlobAction> {
    o.layers.iter().filter(|l| l.kind == kind).map(|l| l.action).collect()
}

/// The whole life of an image: build, inspect, run and classify; build again (nothing pushed);
/// a code-only change (only the bento layer is new); another bento with the same requirements
/// (the dependency layer is reused).
#[tokio::test(flavor = "multi_thread")]
async fn iris_image_builds_runs_and_rebuilds_incrementally() {
    let fx = fixtures();
    let reg = TestRegistry::start(None);
    let base = reg.push_base();

    // 1. Build.
    let cfg = config(&reg, "iris_classifier", "yatai-bentos");
    let v1 = build(&cfg, &local(&fx.bento("iris-v1")), &quiet()).await.expect("build iris v1");
    assert!(!v1.already_built);
    let tag = v1.image.rsplit(':').next().unwrap().to_string();
    assert!(tag.starts_with("yatai.iris_classifier."), "{tag}");
    assert_eq!(v1.reference, format!("{}@{}", v1.image, v1.digest));
    let kinds: Vec<LayerKind> = v1.layers.iter().map(|l| l.kind).collect();
    assert_eq!(
        kinds,
        [LayerKind::Base, LayerKind::User, LayerKind::Deps, LayerKind::Shim, LayerKind::Model, LayerKind::Bento]
    );
    assert_eq!(action(&v1, LayerKind::Base), [BlobAction::Mounted], "base layers are mounted, never downloaded");

    // 2. An independent client reads it.
    let raw = skopeo_inspect(&pinned(&v1), Some("--raw"));
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(raw["annotations"]["org.opencontainers.image.base.name"], base);
    let media: Vec<&str> = raw["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].as_str().unwrap()).collect();
    assert_eq!(media.len(), 6);
    assert!(media[1..].iter().all(|m| m.starts_with("application/vnd.oci.image.layer.v1.tar")), "{media:?}");
    assert_eq!(media[2], "application/vnd.oci.image.layer.v1.tar+zstd");
    let cfgj = skopeo_inspect(&pinned(&v1), Some("--config"));
    let c = &cfgj["config"];
    assert_eq!(c["User"], "1034:1034");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/home/bentoml/bento/env/docker/entrypoint.sh"]));
    assert_eq!(c["Cmd"], Value::Null);
    assert_eq!(c["WorkingDir"], "/home/bentoml/bento");
    assert!(c["ExposedPorts"].get("3000/tcp").is_some());
    let env: Vec<&str> = c["Env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    for want in
        ["BENTO_PATH=/home/bentoml/bento", "BENTOML_HOME=/home/bentoml/", "VIRTUAL_ENV=/app/.venv", "IRIS_MODE=test"]
    {
        assert!(env.contains(&want), "{want} missing from {env:?}");
    }
    assert!(env.iter().any(|e| e.starts_with("PATH=/app/.venv/bin:")));
    assert_eq!(c["Labels"]["ai.yatai.bento.tag"], v1.bento);
    assert_eq!(c["Labels"]["owner"], "yatai-rs-tests");
    assert_eq!(cfgj["rootfs"]["diff_ids"].as_array().unwrap().len(), 6);

    // 3. Unpacked with umoci: owners and modes as BentoML's Dockerfile makes them.
    let (_tmp, bundle) = unpack(&pinned(&v1));
    let root = bundle.join("rootfs");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!((meta("home").uid(), meta("home").mode() & 0o7777), (0, 0o755));
    for p in ["home/bentoml", "home/bentoml/bento", "app/.venv", "app/.venv/bin/bentoml"] {
        assert_eq!(meta(p).uid(), 1034, "{p}");
    }
    assert_eq!(meta("app").uid(), 0);
    assert_eq!(meta("home/bentoml/bento/env/docker/entrypoint.sh").permissions().mode() & 0o777, 0o755);
    let model_dir = std::fs::read_dir(root.join("home/bentoml/bento/models/iris_clf"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap();
    assert_eq!(model_dir.metadata().unwrap().mode() & 0o777, 0o755, "the model store's 0700 is normalised");
    let script = std::fs::read_to_string(root.join("app/.venv/bin/bentoml")).unwrap();
    assert!(script.starts_with("#!/app/.venv/bin/python\n"), "{script}");
    assert!(
        std::fs::read_to_string(root.join("etc/passwd"))
            .unwrap()
            .contains("bentoml:x:1034:1034::/home/bentoml:/bin/sh")
    );
    assert!(
        std::fs::read_dir(root.join("app/.venv/lib/python3.11/site-packages/sklearn/__pycache__"))
            .unwrap()
            .next()
            .is_some(),
        "bytecode is precompiled"
    );

    // 4. Run it: its own entrypoint, env and user; a prediction from /classify.
    let mut run = Running::start(&bundle);
    run.wait_ready();
    let answer = run.post("/classify", r#"{"input_series": [[5.9, 3.0, 5.1, 1.8]]}"#);
    assert_eq!(answer.trim(), "[2]");
    assert_eq!(run.post("/greeting", "{}").trim(), "iris v1");
    let procs = run.processes();
    assert!(
        procs.iter().any(|(uid, cmd)| *uid == 1034
            && cmd.starts_with("/app/.venv/bin/python")
            && cmd.contains("bentoml serve")),
        "{procs:?}"
    );
    assert!(procs.iter().all(|(uid, _)| *uid == 1034), "nothing runs as root: {procs:?}");
    drop(run);

    // 5. Again: the tag exists, nothing is built or pushed.
    let uploads = "\"PUT /v2/yatai-bentos/blobs/uploads/";
    let starts = "\"POST /v2/yatai-bentos/blobs/uploads/";
    let before = (reg.requests(uploads), reg.requests(starts));
    let again = build(&cfg, &local(&fx.bento("iris-v1")), &quiet()).await.unwrap();
    assert_eq!((reg.requests(uploads), reg.requests(starts)), before);
    assert!(again.already_built);
    assert_eq!((again.bytes_pushed, again.digest.as_str()), (0, v1.digest.as_str()));

    // 6. --force rebuilds the same bytes: same digest (deterministic layers and config).
    let mut forced = cfg.clone();
    forced.force = true;
    let f = build(&forced, &local(&fx.bento("iris-v1")), &quiet()).await.unwrap();
    assert_eq!(f.digest, v1.digest);
    assert!(f.layers.iter().all(|l| l.action == BlobAction::Present));

    // 7. Only the service code changed: only the bento layer is new.
    let cfg2 = config(&reg, "iris_classifier", "yatai-bentos");
    let puts = reg.requests(uploads);
    let v2 = build(&cfg2, &local(&fx.bento("iris-v2")), &quiet()).await.expect("build iris v2");
    // The registry's own access log: two blob uploads (the bento layer and the config).
    assert_eq!(reg.requests(uploads) - puts, 2, "{}", reg.log());
    assert_ne!(v2.digest, v1.digest);
    for (a, b) in v1.layers.iter().zip(&v2.layers) {
        if a.kind == LayerKind::Bento {
            assert_ne!(a.diff_id, b.diff_id);
            assert_eq!(b.action, BlobAction::Uploaded);
        } else {
            assert_eq!(a.diff_id, b.diff_id, "{:?} layer changed", a.kind);
            assert_eq!(b.action, BlobAction::Present, "{:?} layer re-uploaded", a.kind);
        }
    }
    let bento_size = v2.layers.last().unwrap().size;
    assert!(v2.bytes_pushed < bento_size + 64 * 1024, "pushed {} bytes", v2.bytes_pushed);

    // 8. Another bento, same requirements: the dependency layer is reused, not rebuilt.
    let twin =
        build(&config(&reg, "twin_classifier", "yatai-bentos"), &local(&fx.bento("twin")), &quiet()).await.unwrap();
    let deps = |o: &yatai_build::BuildOutcome| o.layers.iter().find(|l| l.kind == LayerKind::Deps).unwrap().clone();
    assert_eq!(deps(&twin).digest, deps(&v1).digest);
    assert!(deps(&twin).cached);
    assert_eq!(deps(&twin).action, BlobAction::Present);

    // Every layer of build 1 is still there.
    let client = Registry::new(&reg.host(), true, None).unwrap();
    for l in &v1.layers {
        assert!(
            client
                .blob_exists("yatai-bentos", &l.digest, &[yatai_build::registry::push("yatai-bentos")])
                .await
                .unwrap()
        );
    }
}

/// Layers are reproducible: assembled again from nothing (a fresh builder cache: uv installs
/// again, bytecode is compiled again), gzip instead of zstd, every diff_id is the same, and the
/// gzip image is readable by umoci as pushed.
#[tokio::test(flavor = "multi_thread")]
async fn layers_are_reproducible_from_a_cold_cache() {
    let fx = fixtures();
    let reg = TestRegistry::start(None);
    reg.push_base();
    let warm = build(&config(&reg, "iris_classifier", "warm"), &local(&fx.bento("iris-v1")), &quiet()).await.unwrap();
    let cold_cache = tempfile::tempdir().unwrap();
    let mut cfg = config(&reg, "iris_classifier", "cold");
    cfg.cache_dir = cold_cache.path().to_path_buf();
    cfg.compression = yatai_build::Compression::Gzip;
    let cold = build(&cfg, &local(&fx.bento("iris-v1")), &quiet()).await.unwrap();
    assert!(cold.layers.iter().all(|l| !l.cached || l.kind == LayerKind::Base));
    let ids = |o: &yatai_build::BuildOutcome| o.layers.iter().map(|l| (l.kind, l.diff_id.clone())).collect::<Vec<_>>();
    assert_eq!(ids(&cold), ids(&warm));
    let raw = skopeo_inspect(&pinned(&cold), Some("--raw"));
    assert!(raw["layers"].as_array().unwrap()[1..].iter().all(|l| {
        let m = l["mediaType"].as_str().unwrap();
        m == "application/vnd.oci.image.layer.v1.tar+gzip" || m == "application/vnd.oci.image.layer.v1.tar"
    }));
    // umoci reads the gzip image without recompression.
    let d = tempfile::tempdir().unwrap();
    run_ok(
        std::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{}", pinned(&cold)))
            .arg(format!("oci:{}:img", d.path().join("oci").display())),
    );
    run_ok(
        std::process::Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:img", d.path().join("oci").display()))
            .arg(d.path().join("b")),
    );
    assert!(d.path().join("b/rootfs/app/.venv/bin/activate").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_base_without_the_bentos_python_is_refused() {
    let fx = fixtures();
    let reg = TestRegistry::start(None);
    reg.push_base();
    let dir = extract(&fx.bento("iris-v1"));
    let yaml = std::fs::read_to_string(dir.path().join("bento.yaml")).unwrap();
    std::fs::write(dir.path().join("bento.yaml"), yaml.replace("python_version: '3.11'", "python_version: '3.12'"))
        .unwrap();
    let err = build(&config(&reg, "iris_classifier", "py"), &local(dir.path()), &quiet()).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(matches!(err.downcast_ref::<BuildError>(), Some(BuildError::BasePython { .. })), "{msg}");
    assert_eq!(yatai_build::failure_kind(&err), yatai_build::FailureKind::Unbuildable);
    assert!(msg.contains("python3.12") && msg.contains("/usr/bin/python3.11"), "{msg}");
    assert_no_tags(&reg, "py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requirement_without_a_wheel_for_the_platform_is_refused() {
    let fx = fixtures();
    let reg = TestRegistry::start(None);
    reg.push_base();
    let dir = extract(&fx.bento("iris-v1"));
    let req = dir.path().join("env/python/requirements.txt");
    let text = std::fs::read_to_string(&req).unwrap();
    std::fs::write(&req, format!("{text}docopt==0.6.2\n")).unwrap();
    let err = build(&config(&reg, "iris_classifier", "sdist"), &local(dir.path()), &quiet()).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(err.downcast_ref::<yatai_build::python::NoWheel>().is_some(), "{msg}");
    assert!(msg.contains("docopt") && msg.contains("x86_64-manylinux_2_28"), "{msg}");
    assert_no_tags(&reg, "sdist").await;
}

fn with_commands(yaml: &str, commands: &str, post: &str) -> String {
    let start = yaml.find("  commands:\n").expect("image.commands in bento.yaml");
    let end = start + yaml[start..].find("  python_requirements:").unwrap();
    format!("{}  commands: {commands}\n{}", &yaml[..start], &yaml[end..])
        .replace("post_commands: []", &format!("post_commands: {post}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn run_steps_are_refused_not_skipped() {
    let fx = fixtures();
    let reg = TestRegistry::start(None);
    reg.push_base();
    let dir = extract(&fx.bento("iris-v1"));
    let path = dir.path().join("bento.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();

    std::fs::write(&path, with_commands(&yaml, "['apt-get install -y jq']", "[]")).unwrap();
    let err = build(&config(&reg, "iris_classifier", "runsteps"), &local(dir.path()), &quiet()).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(matches!(err.downcast_ref::<BuildError>(), Some(BuildError::RunStepsRefused { .. })), "{msg}");
    assert!(msg.contains("apt-get install -y jq") && msg.contains("--run-commands"), "{msg}");

    // post_commands need the installed environment: refused even with --run-commands.
    std::fs::write(&path, yaml.replace("post_commands: []", "post_commands: ['pip install extra']")).unwrap();
    let mut cfg = config(&reg, "iris_classifier", "runsteps");
    cfg.run_commands = true;
    let err = build(&cfg, &local(dir.path()), &quiet()).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("pip install extra") && msg.contains("bentoml containerize"), "{msg}");
    assert_no_tags(&reg, "runsteps").await;
}

/// With --run-commands, image.commands run in the base (overlay + chroot) and what they change
/// becomes one layer: new files with their own modes, deletions as whiteouts.
#[tokio::test(flavor = "multi_thread")]
async fn image_commands_run_in_a_sandbox_and_become_a_layer() {
    let fx = fixtures();
    let reg = TestRegistry::start(None);
    reg.push_base();
    let dir = extract(&fx.bento("iris-v1"));
    let path = dir.path().join("bento.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let cmds = "['mkdir -p /opt/tool && printf \"%s\" \"$(id -u)\" > /opt/tool/ran-as && chmod 4750 /opt/tool/ran-as', 'rm /etc/issue']";
    std::fs::write(&path, with_commands(&yaml, cmds, "[]")).unwrap();
    let mut cfg = config(&reg, "iris_classifier", "commands");
    cfg.run_commands = true;
    let out = build(&cfg, &local(dir.path()), &quiet()).await.expect("build with commands");
    let kinds: Vec<LayerKind> = out.layers.iter().map(|l| l.kind).collect();
    assert_eq!(kinds[..3], [LayerKind::Base, LayerKind::Commands, LayerKind::User]);

    let (_tmp, bundle) = unpack(&pinned(&out));
    let root = bundle.join("rootfs");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::read_to_string(root.join("opt/tool/ran-as")).unwrap(), "0");
    assert_eq!(std::fs::metadata(root.join("opt/tool/ran-as")).unwrap().permissions().mode() & 0o7777, 0o4750);
    assert!(!root.join("etc/issue").exists(), "the deletion is a whiteout");
    assert!(root.join("etc/issue.net").exists(), "nothing else is removed");

    // Cached per (base, commands): the next bento with the same commands reuses the layer.
    let mut again = cfg.clone();
    again.force = true;
    let out2 = build(&again, &local(dir.path()), &quiet()).await.unwrap();
    let cmd_layer =
        |o: &yatai_build::BuildOutcome| o.layers.iter().find(|l| l.kind == LayerKind::Commands).unwrap().clone();
    assert!(cmd_layer(&out2).cached);
    assert_eq!(cmd_layer(&out2).digest, cmd_layer(&out).digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_registry_fails_fast_and_clearly() {
    let fx = fixtures();
    let port = free_port(); // nothing listens there
    let mut cfg = yatai_build::BuildConfig::new("iris_classifier", format!("127.0.0.1:{port}/bentos"), shared_cache());
    cfg.plain_http = true;
    let started = std::time::Instant::now();
    let err = build(&cfg, &local(&fx.bento("iris-v1")), &quiet()).await.unwrap_err();
    assert!(matches!(err.downcast_ref::<RegistryError>(), Some(RegistryError::Unreachable { .. })), "{err:#}");
    assert_eq!(yatai_build::failure_kind(&err), yatai_build::FailureKind::RegistryUnavailable);
    assert!(format!("{err:#}").contains(&format!("127.0.0.1:{port} is unreachable")), "{err:#}");
    assert!(started.elapsed().as_secs() < 10);
}

/// A registry with htpasswd auth: without credentials a clear 401; with a docker config.json
/// (basic auth) the build goes through.
#[tokio::test(flavor = "multi_thread")]
async fn registry_credentials_come_from_docker_config() {
    let fx = fixtures();
    let reg = TestRegistry::start(Some(("builder", "s3cret")));
    reg.push_base();
    let cfg = config(&reg, "iris_classifier", "private");
    let err = build(&cfg, &local(&fx.bento("iris-v1")), &quiet()).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        matches!(err.downcast_ref::<RegistryError>(), Some(RegistryError::Unauthorized { status: 401, .. })),
        "{msg}"
    );
    assert_eq!(yatai_build::failure_kind(&err), yatai_build::FailureKind::RegistryAuth);
    assert!(msg.contains("docker config.json"), "{msg}");

    let d = tempfile::tempdir().unwrap();
    let wrong = docker_config(d.path(), &reg.host(), "builder", "wrong");
    let mut bad = cfg.clone();
    bad.docker_config = Some(wrong);
    let err = build(&bad, &local(&fx.bento("iris-v1")), &quiet()).await.unwrap_err();
    assert!(matches!(err.downcast_ref::<RegistryError>(), Some(RegistryError::Unauthorized { .. })), "{err:#}");

    let mut good = cfg.clone();
    good.docker_config = Some(docker_config(d.path(), &reg.host(), "builder", "s3cret"));
    let out = build(&good, &local(&fx.bento("iris-v1")), &quiet()).await.expect("build with credentials");
    assert_eq!(action(&out, LayerKind::Base), [BlobAction::Mounted]);
    let status = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--creds=builder:s3cret", "--raw"])
        .arg(format!("docker://{}", pinned(&out)))
        .output()
        .unwrap();
    assert!(status.status.success());
}

/// The registry dies after every blob is in and before the manifest: the build fails, no tag
/// exists; the next build pushes only the manifest.
#[tokio::test(flavor = "multi_thread")]
async fn an_interruption_before_the_manifest_leaves_no_tag() {
    let fx = fixtures();
    let mut reg = TestRegistry::start(None);
    reg.push_base();
    let cfg = config(&reg, "iris_classifier", "interrupted");
    let child = Arc::new(Mutex::new(reg.take_child()));
    let killer = {
        let child = child.clone();
        move |e: &Event| {
            eprintln!("  [build] {e}");
            if matches!(e, Event::PushingManifest { .. })
                && let Some(mut c) = child.lock().unwrap().take()
            {
                c.kill().unwrap();
                c.wait().unwrap();
            }
        }
    };
    let err = build(&cfg, &local(&fx.bento("iris-v1")), &killer).await.unwrap_err();
    assert!(matches!(err.downcast_ref::<RegistryError>(), Some(RegistryError::Unreachable { .. })), "{err:#}");

    reg.restart();
    assert_no_tags(&reg, "interrupted").await;
    let out = build(&cfg, &local(&fx.bento("iris-v1")), &quiet()).await.expect("build after the interruption");
    assert!(out.layers.iter().all(|l| l.action == BlobAction::Present), "blobs pushed before the cut are reused");
    assert!(out.bytes_pushed < 16 * 1024, "only the manifest: {}", out.bytes_pushed);
    let tags = tags(&reg, "interrupted").await;
    assert_eq!(tags.len(), 1);
}

async fn tags(reg: &TestRegistry, repo: &str) -> HashSet<String> {
    let url = format!("http://{}/v2/{repo}/tags/list", reg.host());
    let resp = reqwest::get(&url).await.unwrap();
    if resp.status() == 404 {
        return HashSet::new();
    }
    let v: Value = resp.json().await.unwrap();
    v["tags"].as_array().map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

async fn assert_no_tags(reg: &TestRegistry, repo: &str) {
    let t = tags(reg, repo).await;
    assert!(t.is_empty(), "tags left behind: {t:?}");
}

/// A private index on loopback (`tests/support/private_index.py`, basic auth) holding
/// `yatai-private-probe==version`; stopped at drop.
struct PrivateIndex {
    child: std::process::Child,
    port: u16,
    log: tempfile::TempDir,
}

impl PrivateIndex {
    fn start(token: &str, version: &str) -> Self {
        use std::io::BufRead;
        let log = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/support/private_index.py");
        let mut child = std::process::Command::new("python3")
            .args([script, "probe", token, version])
            .arg(log.path().join("requests"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        Self { child, port: line.trim().parse().unwrap(), log }
    }

    fn url(&self, token: &str) -> String {
        format!("http://probe:{token}@127.0.0.1:{}/simple", self.port)
    }

    fn requests(&self) -> String {
        std::fs::read_to_string(self.log.path().join("requests")).unwrap_or_default()
    }
}

impl Drop for PrivateIndex {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir` as text (names included).
fn all_text(dir: &std::path::Path) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let (p, t) = (e.path(), e.file_type().unwrap());
        text.push_str(&p.display().to_string());
        if t.is_dir() {
            text.push_str(&all_text(&p));
        } else if t.is_file() {
            text.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()));
        }
    }
    text
}

/// A requirement only a private index has, and a RUN step that needs the index's URL: the
/// secret env reaches uv (pip's variable, given to uv under its own name) and the sandbox, and
/// no layer, config, history or cache key holds it — a new token reuses every cached step.
#[tokio::test(flavor = "multi_thread")]
async fn secret_envs_reach_the_install_and_run_steps_and_no_image() {
    let fx = fixtures();
    let reg = TestRegistry::start(None);
    reg.push_base();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let (version, token) = (format!("0.{}.{}", now.as_secs(), std::process::id()), format!("tok-{}", now.as_nanos()));
    let index = PrivateIndex::start(&token, &version);
    let dir = extract(&fx.bento("iris-v1"));
    let req = dir.path().join("env/python/requirements.txt");
    let text = std::fs::read_to_string(&req).unwrap();
    std::fs::write(&req, format!("{text}yatai-private-probe=={version}\n")).unwrap();
    let path = dir.path().join("bento.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let step = r#"['case "$PIP_EXTRA_INDEX_URL" in http://probe:*@127.0.0.1:*) mkdir -p /opt/index && touch /opt/index/seen;; esac']"#;
    std::fs::write(&path, with_commands(&yaml, step, "[]")).unwrap();

    let mut cfg = config(&reg, "iris_classifier", "private-deps");
    cfg.run_commands = true;
    cfg.secret_envs = yatai_build::SecretEnvs::new([("PIP_EXTRA_INDEX_URL", index.url(&token))]);
    let lines = Arc::new(Mutex::new(String::new()));
    let log = {
        let lines = lines.clone();
        move |e: &Event| lines.lock().unwrap().push_str(&format!("{e}\n"))
    };
    let out = build(&cfg, &local(dir.path()), &log).await.expect("build with the private index");
    assert!(
        index.requests().contains(&format!("yatai_private_probe-{version}-py3-none-any.whl 200")),
        "{}",
        index.requests()
    );

    let (_tmp, bundle) = unpack(&pinned(&out));
    let root = bundle.join("rootfs");
    assert!(root.join("opt/index/seen").exists(), "the RUN step saw the variable");
    let lib = std::fs::read_dir(root.join("app/.venv/lib")).unwrap().next().unwrap().unwrap().path();
    let module = lib.join("site-packages/yatai_private_probe/__init__.py");
    assert!(std::fs::read_to_string(&module).unwrap().contains(&version), "installed from the private index");
    let config = skopeo_inspect(&pinned(&out), Some("--config")).to_string();
    for (what, text) in [
        ("the image's files", all_text(&bundle)),
        ("the config", config),
        ("the progress", lines.lock().unwrap().clone()),
    ] {
        assert!(!text.contains(&token), "{what} hold the token");
    }
    // The builder's cache (its keys, the pinned requirements), uv's own cache aside.
    for d in ["layers", "meta"] {
        assert!(!all_text(&cfg.cache_dir.join(d)).contains(&token), "the cache's {d} hold the token");
    }

    // Another token: every step from the cache (nothing asks the index), the same image.
    let before = index.requests();
    let mut rotated = cfg.clone();
    rotated.force = true;
    rotated.secret_envs = yatai_build::SecretEnvs::new([("PIP_EXTRA_INDEX_URL", index.url("rotated-token"))]);
    let again = build(&rotated, &local(dir.path()), &quiet()).await.expect("rebuild with a rotated token");
    assert_eq!(again.digest, out.digest);
    assert!(again.layers.iter().filter(|l| matches!(l.kind, LayerKind::Commands | LayerKind::Deps)).all(|l| l.cached));
    assert_eq!(index.requests(), before);

    // Without it, the requirement is nowhere.
    let mut without = cfg.clone();
    without.force = true;
    without.run_commands = false;
    std::fs::write(&path, &yaml).unwrap();
    without.secret_envs = Default::default();
    let err = build(&without, &local(dir.path()), &quiet()).await.unwrap_err();
    assert!(format!("{err:#}").contains("yatai-private-probe"), "{err:#}");
}
