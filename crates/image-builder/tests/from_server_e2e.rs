//! `yatai build` fetching the bento and its models from a real `yatai serve`, to which the real
//! bentoml 1.4.40 client pushed them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use yatai_build::source::YataiSource;
use yatai_build::{LayerKind, build};

const TOKEN: &str = "build-e2e-token-0123456789";

/// The workspace's `yatai` binary, built once (it is another package's binary, so Cargo does
/// not hand it to this package's tests).
fn yatai_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "-q", "-p", "yatai", "--bin", "yatai", "--message-format=short"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "cargo build -p yatai failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        let bin = target.join("debug/yatai");
        assert!(bin.exists(), "{} not built", bin.display());
        bin
    })
}

struct Server {
    url: String,
    child: Child,
    _data: tempfile::TempDir,
}

impl Server {
    /// `strategy`: the server's `--transmission-strategy` (`auto` = proxy for local storage).
    fn start(strategy: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(data.path().join("serve.log")).unwrap();
        let child = Command::new(yatai_bin())
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--transmission-strategy", strategy])
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .env("YATAI_INITIAL_API_TOKEN", TOKEN)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let probe = format!("{url}/healthz");
        poll("yatai serve to answer", Duration::from_secs(60), || {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", &probe])
                .output()
                .ok()?;
            (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
        });
        Self { url, child, _data: data }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self._data.path().join("serve.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "--- yatai serve log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            if let Ok(Some(st)) = self.child.try_wait() {
                eprintln!("--- yatai serve had exited: {st}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bentoml push` with the real client, from a copy of the fixtures' bentoml store.
fn bentoml_push(server: &Server, home: &Path, tag: &str) {
    let venv =
        std::env::var_os("YATAI_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| "/var/cache/yatai-rs/venv".into());
    run_ok(
        Command::new(venv.join("bin/bentoml"))
            .args(["push", tag])
            .env("BENTOML_HOME", home)
            .env("BENTO_CLOUD_API_ENDPOINT", &server.url)
            .env("BENTO_CLOUD_API_KEY", TOKEN)
            .env("BENTOML_DO_NOT_TRACK", "true")
            .env("NO_PROXY", "127.0.0.1,localhost"),
    );
}

fn version_of(exported: &Path) -> String {
    let dir = extract(exported);
    let yaml = std::fs::read_to_string(dir.path().join("bento.yaml")).unwrap();
    yaml.lines().find_map(|l| l.strip_prefix("version: ")).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn builds_what_the_bentoml_client_pushed_to_yatai_serve() {
    let fx = fixtures();
    let server = Server::start("auto");
    let home = tempfile::tempdir().unwrap();
    run_ok(Command::new("cp").arg("-a").arg(common::cache_root().join("bentoml-home/.")).arg(home.path()));
    let (v1, v2) = (version_of(&fx.bento("iris-v1")), version_of(&fx.bento("iris-v2")));
    bentoml_push(&server, home.path(), &format!("iris_classifier:{v1}"));
    bentoml_push(&server, home.path(), &format!("iris_classifier:{v2}"));

    let reg = TestRegistry::start(None);
    reg.push_base();

    // The CLI, configured from the environment like the `yatai` binary will be.
    let cli = |tag: &str, token: &str| {
        Command::new(env!("CARGO_BIN_EXE_yatai-build"))
            .arg(tag)
            .args(["--registry", &format!("{}/from-server", reg.host())])
            .args(["--base", &format!("{}/base/debian-python:bookworm", reg.host())])
            .arg("--plain-http")
            .arg("--cache-dir")
            .arg(shared_cache())
            .arg("--uv-cache")
            .arg(common::cache_root().join("uv-cache"))
            .arg("--uv")
            .arg(&fx.uv)
            .env("YATAI_ENDPOINT", &server.url)
            .env("YATAI_API_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = cli("iris_classifier:latest", TOKEN);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let reference = stdout.lines().last().unwrap().to_string();
    let expected = format!("{}/from-server:yatai.iris_classifier.{v2}@sha256:", reg.host());
    assert!(reference.starts_with(&expected), "latest is v2: {reference}");
    assert!(stderr.contains(&format!("yatai server {}", server.url)), "{stderr}");

    // Again: already built, same reference, nothing pushed.
    let again = cli("iris_classifier:latest", TOKEN);
    assert!(again.status.success());
    assert_eq!(String::from_utf8(again.stdout).unwrap().lines().last().unwrap(), reference);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already built"));

    // The layers are the same whichever source the bento came from: content-addressed.
    let mut local_cfg = config(&reg, "iris_classifier", "from-export");
    local_cfg.force = true;
    let from_export = build(&local_cfg, &local(&fx.bento("iris-v2")), &|_: &yatai_build::Event| {}).await.unwrap();
    let mut server_cfg = config(&reg, &format!("iris_classifier:{v1}"), "from-server");
    server_cfg.force = true;
    let steps = std::sync::Mutex::new(Vec::new());
    let record = |e: &yatai_build::Event| steps.lock().unwrap().push(e.to_string());
    let from_server_v1 = build(&server_cfg, &YataiSource::new(&server.url, TOKEN).unwrap(), &record).await.unwrap();
    let steps = steps.into_inner().unwrap();
    assert!(
        steps.iter().any(|s| s.contains("layer from cache, not downloaded")),
        "the model of v1 is the one v2 used: not downloaded again: {steps:?}"
    );
    assert!(!steps.iter().any(|s| s.starts_with("fetching model")), "{steps:?}");
    let model =
        |o: &yatai_build::BuildOutcome| o.layers.iter().find(|l| l.kind == LayerKind::Model).unwrap().diff_id.clone();
    assert_eq!(model(&from_server_v1), model(&from_export), "one model layer for every bento and source");
    let (_tmp, bundle) = unpack(&format!("{}/from-server@{}", reg.host(), reference.rsplit_once('@').unwrap().1));
    let root = bundle.join("rootfs/home/bentoml/bento");
    assert!(std::fs::read_to_string(root.join("src/service.py")).unwrap().contains("iris v2"));
    let model_dir = home.path().join("models/iris_clf");
    let mv = std::fs::read_to_string(model_dir.join("latest")).unwrap();
    assert_eq!(
        std::fs::read(root.join("models/iris_clf").join(mv.trim()).join("saved_model.pkl")).unwrap(),
        std::fs::read(model_dir.join(mv.trim()).join("saved_model.pkl")).unwrap()
    );

    // Faults: a wrong token, a bento the server does not have.
    let bad = cli("iris_classifier:latest", "wrong-token");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(err.contains("rejected the API token"), "{err}");
    let missing = cli("no_such_bento:latest", TOKEN);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(err.contains("not found on"), "{err}");
}

/// The same through the server's presigned URLs (`PATCH …/presign_download_url`, then a GET
/// without the token), which is what an S3-backed yatai answers.
#[tokio::test(flavor = "multi_thread")]
async fn builds_through_presigned_downloads() {
    let fx = fixtures();
    let server = Server::start("presigned");
    let home = tempfile::tempdir().unwrap();
    run_ok(Command::new("cp").arg("-a").arg(common::cache_root().join("bentoml-home/.")).arg(home.path()));
    let v1 = version_of(&fx.bento("iris-v1"));
    bentoml_push(&server, home.path(), &format!("iris_classifier:{v1}"));
    let reg = TestRegistry::start(None);
    reg.push_base();
    let cfg = config(&reg, &format!("iris_classifier:{v1}"), "presigned");
    let out = build(&cfg, &YataiSource::new(&server.url, TOKEN).unwrap(), &|_: &yatai_build::Event| {})
        .await
        .expect("build through presigned downloads");
    let exported = build(
        &config(&reg, "iris_classifier", "presigned-export"),
        &local(&fx.bento("iris-v1")),
        &|_: &yatai_build::Event| {},
    )
    .await
    .unwrap();
    let ids = |o: &yatai_build::BuildOutcome| o.layers.iter().map(|l| (l.kind, l.diff_id.clone())).collect::<Vec<_>>();
    assert_eq!(ids(&out), ids(&exported), "same layers as from the exported bento");
}
