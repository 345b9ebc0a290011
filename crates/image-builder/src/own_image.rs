//! `yatai image build`: yatai's own container image, made by the same machinery as a bento's —
//! the base image by reference (its layers mounted or copied, never rebuilt), one layer with
//! the `yatai` binary (and optionally `uv`), a config, and the manifest PUT as the commit. No
//! Dockerfile and no daemon: the image the Helm chart runs is built by yatai itself.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use crate::base;
use crate::blob::{self, Cache, Compression, Encoding, LayerBlob};
use crate::builder::{FORMAT, LayerReport, ensure_local_blob, push_base_blobs};
use crate::image::{self, AddedLayer, Platform};
use crate::progress::{BlobAction, Event, LayerKind, Progress};
use crate::registry::{self, ImageRef, Registry, auth};
use crate::tarball::{LAYER_MTIME, Source, Tree};

/// Where the binary lives in the image (the Entrypoint).
pub const BINARY_PATH: &str = "/usr/local/bin/yatai";
/// Where `--uv` puts uv: the server's local runtime and the operator's builder run `uv` from PATH.
pub const UV_PATH: &str = "/usr/local/bin/uv";
/// The server's data directory (SQLite, artifacts, keys), owned by [`UID`]; also HOME and the
/// working directory, so `yatai serve` with no flags has somewhere to write.
pub const DATA_DIR: &str = "/var/lib/yatai";
/// The image's user: numeric (Kubernetes' `runAsNonRoot` can only check a number), the
/// "nonroot" id distroless images use, so the base needs no passwd entry for it.
pub const UID: u64 = 65532;
/// The server's port (`YATAI_BIND=0.0.0.0:3000`): in a container, loopback would be unreachable.
pub const PORT: u16 = 3000;
/// Every layer's mtime, as the config's `created`: the same inputs give the same digest.
const CREATED: &str = "1980-01-01T00:00:00Z";

/// Everything one build of yatai's image needs. No environment is read here.
#[derive(Debug, Clone)]
pub struct OwnImageConfig {
    /// Base image reference (any Linux image whose glibc runs the binary).
    pub base: String,
    /// Where to push, `HOST[:PORT]/REPOSITORY[:TAG]`; without a tag, the version is the tag.
    pub target: String,
    /// The `yatai` executable to put in the image.
    pub binary: PathBuf,
    /// A `uv` executable to put beside it, if any.
    pub uv: Option<PathBuf>,
    /// `org.opencontainers.image.version`, and the default tag.
    pub version: Option<String>,
    /// `org.opencontainers.image.revision` (a git commit).
    pub revision: Option<String>,
    pub plain_http: bool,
    pub compression: Compression,
    pub cache_dir: PathBuf,
    pub docker_config: Option<PathBuf>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OwnImageOutcome {
    /// `HOST/REPO:TAG@sha256:…`
    pub reference: String,
    /// `HOST/REPO:TAG`
    pub image: String,
    pub digest: String,
    pub platform: String,
    pub base: String,
    pub base_digest: String,
    pub bytes_pushed: u64,
    /// Base layers first, then the binary's.
    pub layers: Vec<LayerReport>,
    pub seconds: f64,
}

/// The target reference with its tag settled: `--tag`'s own, else the version. Checked before
/// anything touches the network, so a bad reference pushes nothing.
pub fn target_ref(target: &str, version: Option<&str>) -> anyhow::Result<ImageRef> {
    let r = ImageRef::parse(target).map_err(|e| anyhow::anyhow!("--tag: {e}"))?;
    if r.digest.is_some() {
        bail!("--tag {target:?} names a digest; give HOST[:PORT]/REPOSITORY[:TAG] (the digest is the result)");
    }
    match (&r.tag, version) {
        (Some(_), _) => Ok(r),
        (None, Some(v)) if registry::reference::valid_tag(v) => Ok(r.with_tag(v)),
        (None, Some(v)) => bail!("--tag {target:?} has no tag, and the version {v:?} is not a valid one: add :TAG"),
        (None, None) => bail!("--tag {target:?} has no tag and the binary's version is unknown: add :TAG"),
    }
}

/// The platform an executable runs on, from its ELF header: the image must be that platform.
pub fn elf_platform(path: &Path) -> anyhow::Result<Platform> {
    let mut head = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .with_context(|| format!("reading {}", path.display()))?;
    if &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        bail!("{} is not a 64-bit little-endian ELF executable (a Linux binary of yatai)", path.display());
    }
    match u16::from_le_bytes([head[18], head[19]]) {
        62 => Platform::parse("linux/amd64"),
        183 => Platform::parse("linux/arm64"),
        m => bail!("{}: ELF machine {m} is neither x86-64 nor aarch64", path.display()),
    }
}

/// The layer: the binary at [`BINARY_PATH`], uv at [`UV_PATH`] when given, and [`DATA_DIR`]
/// owned by [`UID`]. Parents are root's 0755, as in every Debian-like base.
pub fn layer_tree(binary: &Path, uv: Option<&Path>) -> Tree {
    let root = |_: &str| 0;
    let mut t = Tree::new();
    t.file(BINARY_PATH, Source::Path(binary.to_path_buf()), true, &root);
    if let Some(uv) = uv {
        t.file(UV_PATH, Source::Path(uv.to_path_buf()), true, &root);
    }
    let data = DATA_DIR.trim_start_matches('/');
    t.dir(data, &|p| if p == data { UID } else { 0 });
    t
}

/// The OCI labels yatai's image carries (the base's are kept unless these override them).
pub fn oci_labels(version: Option<&str>, revision: Option<&str>, base: &ImageRef) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        l.insert(format!("org.opencontainers.image.{k}"), v.to_string());
    };
    put("title", "yatai");
    put("description", "yatai-rs: a self-hosted registry and deployer for BentoML models");
    put("source", env!("CARGO_PKG_REPOSITORY"));
    put("licenses", env!("CARGO_PKG_LICENSE"));
    put("base.name", &base.to_string());
    if let Some(v) = version {
        put("version", v);
    }
    if let Some(r) = revision {
        put("revision", r);
    }
    l
}

/// The image config: the base's, with yatai's entrypoint, user, data directory and port on top.
/// No IO, no clock: equal inputs give equal bytes.
pub fn image_config(
    base_config: &Value,
    platform: &Platform,
    layer: &AddedLayer,
    labels: &BTreeMap<String, String>,
) -> Value {
    let mut cfg = base_config.get("config").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut env: Vec<String> = cfg
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    for (k, v) in
        [("HOME", DATA_DIR.to_string()), ("YATAI_DATA_DIR", DATA_DIR.into()), ("YATAI_BIND", format!("0.0.0.0:{PORT}"))]
    {
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) != k);
        env.push(format!("{k}={v}"));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    cfg.insert("Env".into(), json!(env));
    cfg.insert("Entrypoint".into(), json!([BINARY_PATH]));
    // The chart's `args: [serve, …]` / `[operator, …]` replace this.
    cfg.insert("Cmd".into(), json!(["serve"]));
    cfg.insert("User".into(), json!(format!("{UID}:{UID}")));
    cfg.insert("WorkingDir".into(), json!(DATA_DIR));
    let mut ports = cfg.get("ExposedPorts").and_then(Value::as_object).cloned().unwrap_or_default();
    ports.insert(format!("{PORT}/tcp"), json!({}));
    cfg.insert("ExposedPorts".into(), Value::Object(ports));
    let mut all_labels = cfg.get("Labels").and_then(Value::as_object).cloned().unwrap_or_default();
    for (k, v) in labels {
        all_labels.insert(k.clone(), json!(v));
    }
    cfg.insert("Labels".into(), Value::Object(all_labels));
    cfg.remove("Healthcheck");

    let mut diff_ids: Vec<Value> =
        base_config.pointer("/rootfs/diff_ids").and_then(Value::as_array).cloned().unwrap_or_default();
    diff_ids.push(json!(layer.blob.diff_id));
    let mut history: Vec<Value> = base_config.get("history").and_then(Value::as_array).cloned().unwrap_or_default();
    history.push(json!({"created": CREATED, "created_by": layer.created_by, "comment": "yatai image build"}));

    let mut out = Map::new();
    out.insert("architecture".into(), json!(platform.architecture));
    out.insert("os".into(), json!(platform.os));
    if let Some(v) = &platform.variant {
        out.insert("variant".into(), json!(v));
    }
    out.insert("created".into(), json!(CREATED));
    out.insert("config".into(), Value::Object(cfg));
    out.insert("rootfs".into(), json!({"type": "layers", "diff_ids": diff_ids}));
    out.insert("history".into(), Value::Array(history));
    Value::Object(out)
}

/// Builds yatai's image on `cfg.base` and pushes it to `cfg.target`.
pub async fn build_own_image(cfg: &OwnImageConfig, progress: &dyn Progress) -> anyhow::Result<OwnImageOutcome> {
    let started = Instant::now();
    let step = |s: String| progress.event(&Event::Step(s));
    // Everything that can be checked locally first: a bad --tag or binary pushes nothing.
    let target = target_ref(&cfg.target, cfg.version.as_deref())?;
    let tag = target.tag.clone().expect("target_ref sets a tag");
    let base_ref = ImageRef::parse(&cfg.base).map_err(|e| anyhow::anyhow!("--base: {e}"))?;
    let platform = elf_platform(&cfg.binary)?;
    if let Some(uv) = &cfg.uv {
        let p = elf_platform(uv)?;
        if p.architecture != platform.architecture {
            bail!("--uv {} is {p}, but the yatai binary is {platform}", uv.display());
        }
    }
    let cache = Cache::new(&cfg.cache_dir)?;

    let creds = auth::lookup(cfg.docker_config.as_deref(), &target.registry)?;
    let treg = Registry::new(target.api_host(), cfg.plain_http, creds)?;
    treg.ping().await?;
    let other_registry = if base_ref.api_host() == target.api_host() {
        None
    } else {
        let creds = auth::lookup(cfg.docker_config.as_deref(), &base_ref.registry)?;
        Some(Registry::new(base_ref.api_host(), false, creds)?)
    };
    let breg = other_registry.as_ref().unwrap_or(&treg);
    step(format!("resolving base image {base_ref} for {platform} (the binary's platform)"));
    let base = base::resolve(breg, &base_ref, &platform)
        .await
        .with_context(|| format!("base image {base_ref} for the {platform} binary {}", cfg.binary.display()))?;

    let layer = binary_layer(cfg, &cache, cfg.compression.into()).await?;
    progress.event(&Event::Layer {
        kind: LayerKind::Binary,
        name: BINARY_PATH.into(),
        digest: layer.blob.digest.clone(),
        size: layer.blob.size,
        cached: layer.cached,
    });
    let added = AddedLayer { blob: layer.blob.clone(), created_by: layer.created_by.clone() };
    let labels = oci_labels(cfg.version.as_deref(), cfg.revision.as_deref(), &base_ref);
    let config = image::canonical(&image_config(&base.config, &platform, &added, &labels));
    let manifest = image::canonical(&image::manifest(&config, &base.layers, &[added], &base_ref, &base.digest));

    let mut bytes_pushed = 0;
    let mut layers =
        push_base_blobs(&treg, &target, breg, &base, other_registry.is_none(), progress, &mut bytes_pushed).await?;
    let scopes = [registry::push(&target.repository)];
    let path = cache.blob_path(&layer.blob.digest);
    let b = &layer.blob;
    let action = ensure_local_blob(&treg, &target.repository, &b.digest, b.size, &path, &scopes).await?;
    if action == BlobAction::Uploaded {
        bytes_pushed += b.size;
    }
    progress.event(&Event::Blob { digest: b.digest.clone(), size: b.size, action });
    layers.push(LayerReport {
        kind: LayerKind::Binary,
        name: BINARY_PATH.into(),
        diff_id: b.diff_id.clone(),
        digest: b.digest.clone(),
        size: b.size,
        media_type: b.media_type.clone(),
        cached: layer.cached,
        action,
    });
    let config_digest = blob::sha256_digest(&config);
    let config_path = cache.blob_path(&config_digest);
    std::fs::write(&config_path, &config)?;
    let size = config.len() as u64;
    if ensure_local_blob(&treg, &target.repository, &config_digest, size, &config_path, &scopes).await?
        == BlobAction::Uploaded
    {
        bytes_pushed += size;
    }
    progress.event(&Event::PushingManifest { reference: target.to_string() });
    let digest = treg.put_manifest(&target.repository, &tag, &manifest, registry::MEDIA_OCI_MANIFEST).await?;
    bytes_pushed += manifest.len() as u64;

    let reference = target.with_digest(&digest).to_string();
    progress.event(&Event::Done { reference: reference.clone(), bytes_pushed, already_built: false });
    Ok(OwnImageOutcome {
        reference,
        image: target.to_string(),
        digest,
        platform: platform.to_string(),
        base: base_ref.to_string(),
        base_digest: base.digest.clone(),
        bytes_pushed,
        layers,
        seconds: started.elapsed().as_secs_f64(),
    })
}

struct BinaryLayer {
    blob: LayerBlob,
    cached: bool,
    created_by: String,
}

/// The binary's layer, from the cache when the same files were packed before (a hashing pass
/// over a debug build's few hundred MB is much cheaper than compressing it again).
async fn binary_layer(cfg: &OwnImageConfig, cache: &Cache, encoding: Encoding) -> anyhow::Result<BinaryLayer> {
    let (binary, uv, cache) = (cfg.binary.clone(), cfg.uv.clone(), cache.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<BinaryLayer> {
        let bin_sum = blob::sha256_file(&binary)?;
        let uv_sum = uv.as_deref().map(blob::sha256_file).transpose()?;
        let mut created_by = format!("yatai-rs: {BINARY_PATH} ({bin_sum})");
        if let Some(s) = &uv_sum {
            created_by.push_str(&format!(", {UV_PATH} ({s})"));
        }
        created_by.push_str(&format!(", {DATA_DIR} ({UID}:{UID})"));
        let key = format!("own-image:{FORMAT}:{bin_sum}:{uv_sum:?}:{UID}:{encoding:?}:{LAYER_MTIME}");
        if let Some(blob) = cache.layer(&key)
            && cache.blob_path(&blob.digest).is_file()
        {
            return Ok(BinaryLayer { blob, cached: true, created_by });
        }
        let tree = layer_tree(&binary, uv.as_deref());
        let (blob, _) = blob::write_blob(&tree, encoding, &cache.blobs_dir())?;
        cache.put_layer(&key, &blob)?;
        Ok(BinaryLayer { blob, cached: false, created_by })
    })
    .await?
}

/// `yatai image …`: yatai's own container image.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ImageCommand {
    /// Build yatai's own container image — this binary on a base image, no Dockerfile, no
    /// daemon — and push it. The last line of stdout is the pushed reference with its digest.
    Build(ImageBuildArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ImageBuildArgs {
    /// Where to push: HOST[:PORT]/REPOSITORY[:TAG] (e.g. registry.example.com/yatai:0.1.0).
    /// Without a tag, the binary's version is the tag.
    #[arg(long, value_parser = valid_target)]
    pub tag: String,
    /// Base image: any Linux image with a glibc at least as new as the build machine's (the
    /// binary links against it), e.g. debian:bookworm-slim.
    #[arg(long, default_value = "debian:bookworm-slim")]
    pub base: String,
    /// The yatai executable to put in the image (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Also put this uv executable at /usr/local/bin/uv (the server's local runtime and the
    /// operator's image builder need uv; the base may have it instead).
    #[arg(long)]
    pub uv: Option<PathBuf>,
    /// org.opencontainers.image.version (default: the binary's own `--version`).
    #[arg(long)]
    pub image_version: Option<String>,
    /// org.opencontainers.image.revision, e.g. `git rev-parse HEAD` (default: the commit the
    /// binary was built from, when it was built with YATAI_GIT_COMMIT).
    #[arg(long)]
    pub revision: Option<String>,
    /// Talk plain HTTP to the target registry (and to a base image on the same host).
    #[arg(long)]
    pub plain_http: bool,
    /// Layer compression: zstd (containerd ≥ 1.5, Docker ≥ 23) or gzip (everything).
    #[arg(long, value_enum, default_value_t = Compression::Zstd)]
    pub compression: Compression,
    /// Builder cache (the binary's layer by its sha256). Default ~/.cache/yatai/build.
    #[arg(long, env = "YATAI_BUILD_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// docker config.json with registry credentials (default $DOCKER_CONFIG/config.json or ~/.docker/config.json).
    #[arg(long, env = "YATAI_BUILD_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
    /// Also write the outcome (reference, digest, bytes pushed, layers) as JSON here.
    #[arg(long)]
    pub json_report: Option<PathBuf>,
}

/// Refuses a bad reference while the arguments are read.
fn valid_target(s: &str) -> Result<String, String> {
    let r = ImageRef::parse(s)?;
    if r.digest.is_some() {
        return Err(format!("{s:?} names a digest; give HOST[:PORT]/REPOSITORY[:TAG]"));
    }
    Ok(s.to_string())
}

impl ImageBuildArgs {
    /// The config, with the defaults that need this process: the running executable, its
    /// version and commit, or the given binary's own `--version` when it runs here.
    pub async fn config(&self) -> anyhow::Result<OwnImageConfig> {
        let own = std::env::current_exe().context("finding the running executable")?;
        let binary = self.binary.clone().unwrap_or_else(|| own.clone());
        let is_self = std::fs::canonicalize(&binary).ok() == std::fs::canonicalize(&own).ok();
        let version = match &self.image_version {
            Some(v) => Some(v.clone()),
            None if is_self => Some(env!("CARGO_PKG_VERSION").to_string()),
            None => version_of(&binary).await,
        };
        let revision = self.revision.clone().or_else(|| {
            is_self.then_some(option_env!("YATAI_GIT_COMMIT")).flatten().filter(|c| !c.is_empty()).map(str::to_string)
        });
        let cache_dir = match &self.cache_dir {
            Some(d) => d.clone(),
            None => crate::cli::default_cache_dir().context("no --cache-dir and no HOME to put the build cache in")?,
        };
        Ok(OwnImageConfig {
            base: self.base.clone(),
            target: self.tag.clone(),
            binary,
            uv: self.uv.clone(),
            version,
            revision,
            plain_http: self.plain_http,
            compression: self.compression,
            cache_dir,
            docker_config: self.docker_config.clone(),
        })
    }
}

/// `BINARY --version` → `yatai 0.1.0` → `0.1.0`; `None` when it does not run here (another
/// architecture) or says something else.
async fn version_of(binary: &Path) -> Option<String> {
    let run = tokio::process::Command::new(binary).arg("--version").kill_on_drop(true).output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), run).await.ok()?.ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut words = text.split_whitespace();
    (out.status.success() && words.next()? == "yatai").then(|| words.next().map(str::to_string)).flatten()
}

/// `yatai image …`: progress on stderr, the pushed reference as the last line of stdout.
pub async fn run_image(cmd: ImageCommand) -> anyhow::Result<()> {
    let ImageCommand::Build(args) = cmd;
    let cfg = args.config().await?;
    let outcome = build_own_image(&cfg, &crate::cli::Stderr(Instant::now())).await?;
    if let Some(p) = &args.json_report {
        std::fs::write(p, serde_json::to_vec_pretty(&outcome)?).with_context(|| format!("writing {}", p.display()))?;
    }
    let reused =
        outcome.layers.iter().filter(|l| matches!(l.action, BlobAction::Present | BlobAction::Mounted)).count();
    eprintln!(
        "{} layers ({}), {reused} already in the registry or mounted, {} uploaded in {:.2} s",
        outcome.layers.len(),
        outcome.platform,
        crate::progress::human(outcome.bytes_pushed),
        outcome.seconds
    );
    println!("{}", outcome.reference);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_config() -> Value {
        json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/root"], "Cmd": ["bash"],
                       "Labels": {"vendor": "debian", "org.opencontainers.image.title": "debian"},
                       "ExposedPorts": {"22/tcp": {}}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:base"]},
            "history": [{"created_by": "debootstrap"}],
        })
    }

    fn added() -> AddedLayer {
        let blob = LayerBlob {
            diff_id: "sha256:ours".into(),
            digest: "sha256:blob".into(),
            size: 1,
            media_type: blob::MEDIA_LAYER_ZSTD.into(),
        };
        AddedLayer { blob, created_by: "yatai-rs: /usr/local/bin/yatai".into() }
    }

    #[test]
    fn the_config_runs_yatai_serve_as_a_numeric_non_root_user_in_a_writable_data_dir() {
        let base = ImageRef::parse("registry.example/debian:bookworm-slim").unwrap();
        let labels = oci_labels(Some("0.1.0"), Some("abc123"), &base);
        let platform = Platform::parse("linux/amd64").unwrap();
        let c = image_config(&base_config(), &platform, &added(), &labels);
        let cfg = &c["config"];
        assert_eq!(cfg["Entrypoint"], json!(["/usr/local/bin/yatai"]));
        assert_eq!(cfg["Cmd"], json!(["serve"]), "the base's bash must not survive");
        assert_eq!(cfg["User"], "65532:65532");
        assert_eq!(cfg["WorkingDir"], DATA_DIR);
        assert_eq!(cfg["ExposedPorts"], json!({"22/tcp": {}, "3000/tcp": {}}));
        let env: Vec<&str> = cfg["Env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        assert_eq!(
            env,
            [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "HOME=/var/lib/yatai",
                "YATAI_DATA_DIR=/var/lib/yatai",
                "YATAI_BIND=0.0.0.0:3000"
            ]
        );
        let l = &cfg["Labels"];
        assert_eq!(l["vendor"], "debian", "the base's labels are kept");
        assert_eq!(l["org.opencontainers.image.title"], "yatai", "ours win");
        assert_eq!(l["org.opencontainers.image.version"], "0.1.0");
        assert_eq!(l["org.opencontainers.image.revision"], "abc123");
        assert_eq!(l["org.opencontainers.image.source"], "https://github.com/yatai-rs/yatai-rs");
        assert_eq!(l["org.opencontainers.image.base.name"], "registry.example/debian:bookworm-slim");
        assert_eq!(c["rootfs"]["diff_ids"], json!(["sha256:base", "sha256:ours"]));
        assert_eq!(c["history"][1]["created_by"], "yatai-rs: /usr/local/bin/yatai");
        assert_eq!((&c["architecture"], &c["created"]), (&json!("amd64"), &json!(CREATED)));
        // Same inputs, same bytes: a rebuild pushes the same config.
        assert_eq!(image::canonical(&c), image::canonical(&image_config(&base_config(), &platform, &added(), &labels)));

        let unknown = oci_labels(None, None, &base);
        assert!(!unknown.contains_key("org.opencontainers.image.version"));
        assert!(!unknown.contains_key("org.opencontainers.image.revision"));
    }

    #[test]
    fn the_layer_holds_the_binary_and_uv_executable_and_the_data_dir_owned_by_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, uv) = (dir.path().join("yatai"), dir.path().join("uv"));
        std::fs::write(&bin, b"\x7fELF yatai").unwrap();
        std::fs::write(&uv, b"\x7fELF uv").unwrap();
        let tar = layer_tree(&bin, Some(&uv)).write_to(Vec::new()).unwrap();
        let mut got = Vec::new();
        for e in tar::Archive::new(tar.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header();
            let (path, mode, uid, gid) =
                (e.path().unwrap().display().to_string(), h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap());
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            got.push((path, mode, uid, gid, body));
        }
        let want: Vec<(String, u32, u64, u64, Vec<u8>)> = [
            ("usr/", 0o755, 0, b"" as &[u8]),
            ("usr/local/", 0o755, 0, b""),
            ("usr/local/bin/", 0o755, 0, b""),
            ("usr/local/bin/uv", 0o755, 0, b"\x7fELF uv"),
            ("usr/local/bin/yatai", 0o755, 0, b"\x7fELF yatai"),
            ("var/", 0o755, 0, b""),
            ("var/lib/", 0o755, 0, b""),
            ("var/lib/yatai/", 0o755, UID, b""),
        ]
        .into_iter()
        .map(|(p, m, u, b)| (p.to_string(), m, u, u, b.to_vec()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_platform_comes_from_the_binarys_elf_header() {
        let own = std::env::current_exe().unwrap();
        assert_eq!(elf_platform(&own).unwrap().to_string(), Platform::host().to_string());
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("yatai");
        std::fs::write(&script, "#!/bin/sh\necho yatai 0.1.0\n").unwrap();
        let err = elf_platform(&script).unwrap_err().to_string();
        assert!(err.contains("is not a 64-bit little-endian ELF executable"), "{err}");
        let mut arm = std::fs::read(&own).unwrap()[..64].to_vec();
        arm[18..20].copy_from_slice(&183u16.to_le_bytes());
        std::fs::write(&script, &arm).unwrap();
        assert_eq!(elf_platform(&script).unwrap().to_string(), "linux/arm64/v8");
    }

    #[test]
    fn the_tag_is_the_given_one_else_the_version_and_never_a_digest() {
        let t = |s: &str, v: Option<&str>| target_ref(s, v).map(|r| r.to_string()).map_err(|e| e.to_string());
        assert_eq!(t("reg.example:5000/yatai:dev", Some("0.1.0")).unwrap(), "reg.example:5000/yatai:dev");
        assert_eq!(t("reg.example:5000/yatai", Some("0.1.0")).unwrap(), "reg.example:5000/yatai:0.1.0");
        assert!(t("reg.example/yatai", None).unwrap_err().contains("add :TAG"));
        assert!(t("reg.example/Yatai:x", None).unwrap_err().contains("repository must be lowercase"));
        assert!(t("reg.example/yatai:bad tag", None).unwrap_err().starts_with("--tag:"));
        let pinned = format!("reg.example/yatai@sha256:{}", "a".repeat(64));
        assert!(t(&pinned, None).unwrap_err().contains("names a digest"));
    }
}
