//! `yatai image build`: yatai's own container image, built by its own daemonless builder onto
//! the builder tests' debootstrap base in Debian's docker-registry, read back by skopeo and by
//! hand, unpacked by umoci and run — `yatai serve` as the image says, under unshare + chroot.

#[path = "../crates/image-builder/tests/common/mod.rs"]
mod build_common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use build_common::{Running, TestRegistry, run_ok, skopeo_inspect, unpack};
use serde_json::{Value, json};

const YATAI: &str = env!("CARGO_BIN_EXE_yatai");

fn yatai_image_build(args: &[&str], cache: &Path) -> Output {
    let out = Command::new(YATAI)
        .args(["image", "build", "--cache-dir"])
        .arg(cache)
        .args(args)
        .env_remove("DOCKER_CONFIG")
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn sha256_of(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_string()
}

fn report(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn actions(report: &Value, kind: &str) -> Vec<String> {
    report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == kind)
        .map(|l| l["action"].as_str().unwrap().to_string())
        .collect()
}

/// Tags of `repo`, as the registry lists them (none when the repository does not exist).
fn tags(reg: &TestRegistry, repo: &str) -> Vec<String> {
    let out = run_ok(Command::new("curl").args(["-s", &format!("http://{}/v2/{repo}/tags/list", reg.host())]));
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v["tags"].as_array().map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn yatai_builds_its_own_image_which_serves_on_the_base() {
    let reg = TestRegistry::start(None);
    let base = reg.push_base();
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = format!("{}/yatai:test", reg.host());
    let first_report = work.path().join("first.json");

    // 1. Build from the running executable (the default) onto the base, by reference.
    let started = Instant::now();
    let out = yatai_image_build(
        &["--tag", &target, "--base", &base, "--plain-http", "--json-report", first_report.to_str().unwrap()],
        cache.path(),
    );
    let cold = started.elapsed();
    assert!(out.status.success(), "yatai image build failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let reference = stdout.lines().last().unwrap().to_string();
    let (image, digest) = reference.split_once('@').unwrap();
    assert_eq!(image, target);
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{reference}");
    let first = report(&first_report);
    assert_eq!(actions(&first, "base"), ["mounted"], "the base's layer is mounted, never downloaded");
    assert_eq!(actions(&first, "binary"), ["uploaded"]);
    eprintln!("cold build and push: {cold:.2?}, {} bytes pushed", first["bytes_pushed"]);

    // 2. An independent client reads the manifest and the config.
    let pinned = format!("{}/yatai@{digest}", reg.host());
    let manifest = skopeo_inspect(&pinned, Some("--raw"));
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["annotations"]["org.opencontainers.image.base.name"], base);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "the base's one layer, then the binary's");
    let config = skopeo_inspect(&pinned, Some("--config"));
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], json!(["/usr/local/bin/yatai"]));
    assert_eq!(c["Cmd"], json!(["serve"]));
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["WorkingDir"], "/var/lib/yatai");
    assert_eq!(c["ExposedPorts"], json!({"3000/tcp": {}}));
    let env: Vec<&str> = c["Env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    for want in ["YATAI_DATA_DIR=/var/lib/yatai", "YATAI_BIND=0.0.0.0:3000", "HOME=/var/lib/yatai"] {
        assert!(env.contains(&want), "{want} missing from {env:?}");
    }
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "yatai");
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["org.opencontainers.image.source"], "https://github.com/yatai-rs/yatai-rs");
    assert_eq!(labels["org.opencontainers.image.base.name"], base);
    assert_eq!(config["architecture"], "amd64");

    // 3. The last layer, read by hand: the binary with the same bytes, at the entrypoint's path.
    let last = layers.last().unwrap();
    assert_eq!(last["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd");
    let blob = work.path().join("layer.tar.zst");
    run_ok(Command::new("curl").args(["-sf", "-o"]).arg(&blob).arg(format!(
        "http://{}/v2/yatai/blobs/{}",
        reg.host(),
        last["digest"].as_str().unwrap()
    )));
    let rootfs = work.path().join("layer");
    std::fs::create_dir(&rootfs).unwrap();
    run_ok(Command::new("tar").arg("--zstd").arg("-xf").arg(&blob).arg("-C").arg(&rootfs));
    let listing = run_ok(Command::new("tar").arg("--zstd").arg("-tvf").arg(&blob));
    assert!(listing.contains("65532/65532") && listing.contains("var/lib/yatai/"), "{listing}");
    assert_eq!(sha256_of(&rootfs.join("usr/local/bin/yatai")), sha256_of(Path::new(YATAI)));

    // 4. Again, the binary named explicitly: same image, nothing but the manifest pushed.
    let uploads_before = reg.requests("/v2/yatai/blobs/uploads/");
    let second_report = work.path().join("second.json");
    let started = Instant::now();
    let out = yatai_image_build(
        &[
            "--tag",
            &target,
            "--base",
            &base,
            "--plain-http",
            "--binary",
            YATAI,
            "--json-report",
            second_report.to_str().unwrap(),
        ],
        cache.path(),
    );
    let warm = started.elapsed();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().last().unwrap(), reference, "same inputs, same digest");
    let second = report(&second_report);
    assert_eq!(actions(&second, "base"), ["present"]);
    assert_eq!(actions(&second, "binary"), ["present"]);
    assert_eq!(second["layers"][1]["cached"], true, "the binary's layer came from the cache");
    assert_eq!(reg.requests("/v2/yatai/blobs/uploads/"), uploads_before, "no blob upload started");
    eprintln!("warm build and push: {warm:.2?}, {} bytes pushed", second["bytes_pushed"]);

    // 5. Unpacked by umoci and run as the image says (user, cwd, env, args): the binary runs on
    //    this base, and `yatai serve` creates its data in the image's data directory.
    let (_tmp, bundle) = unpack(&pinned);
    let root = bundle.join("rootfs");
    let version = run_ok(
        Command::new("chroot").arg("--userspec=65532:65532").arg(&root).args(["/usr/local/bin/yatai", "--version"]),
    );
    assert_eq!(version.trim(), format!("yatai {}", env!("CARGO_PKG_VERSION")));
    let mut server = Running::start_with(&bundle, |port| vec![format!("YATAI_BIND=127.0.0.1:{port}")]);
    server.wait_ready_at("/healthz");
    let db = root.join("var/lib/yatai/yatai.db");
    assert!(db.is_file(), "the SQLite database is in the data directory");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&db).unwrap().uid(), 65532, "written by the image's user");
}

#[test]
fn bad_inputs_fail_clearly_and_push_nothing() {
    let reg = TestRegistry::start(None);
    let base = reg.push_base();
    let cache = tempfile::tempdir().unwrap();

    // A bad reference is refused while the arguments are read: nothing runs.
    let bad = format!("{}/Yatai:bad tag", reg.host());
    let out = yatai_image_build(&["--tag", &bad, "--base", &base, "--plain-http"], cache.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
    assert!(stderr.contains("invalid value") && stderr.contains("--tag"), "{stderr}");
    assert!(stderr.contains("repository must be lowercase"), "{stderr}");
    assert!(out.stdout.is_empty());

    // A base that is not there: named, with what the registry said.
    let target = format!("{}/yatai:test", reg.host());
    let missing = format!("{}/base/nothing:here", reg.host());
    let out = yatai_image_build(&["--tag", &target, "--base", &missing, "--plain-http"], cache.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains(&format!("base image {missing}")) && stderr.contains("not found"), "{stderr}");

    // A binary for another architecture than the base: refused before any layer is pushed.
    let arm = cache.path().join("yatai-arm64");
    let mut bytes = std::fs::read(YATAI).unwrap();
    bytes[18..20].copy_from_slice(&183u16.to_le_bytes());
    std::fs::write(&arm, bytes).unwrap();
    let out = yatai_image_build(
        &["--tag", &target, "--base", &base, "--plain-http", "--binary", arm.to_str().unwrap()],
        cache.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("is amd64, not linux/arm64"), "{stderr}");

    assert!(tags(&reg, "yatai").is_empty(), "no tag after any of them");
    assert_eq!(reg.requests("/v2/yatai/blobs/uploads/"), 0, "no blob pushed");

    // An unreachable registry: said at once.
    let closed = build_common::free_port();
    let started = Instant::now();
    let out = yatai_image_build(
        &["--tag", &format!("127.0.0.1:{closed}/yatai:test"), "--base", &base, "--plain-http"],
        cache.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains(&format!("registry 127.0.0.1:{closed} is unreachable")), "{stderr}");
    assert!(started.elapsed().as_secs() < 10);
}
