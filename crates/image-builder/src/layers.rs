//! The layers of an image, each assembled from its inputs or taken from the cache: the
//! commands layer (sandboxed RUN steps), the user, the Python dependencies, the venv shim, one
//! per model, and the bento.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::base::{self, BaseFacts, ResolvedBase};
use crate::bento::BentoInfo;
use crate::blob::{self, Cache, Encoding, LayerBlob};
use crate::builder::{BuildConfig, FORMAT};
use crate::image::Platform;
use crate::progress::{Event, LayerKind, Progress};
use crate::python::{self, Target, Uv, VENV, venv_owner};
use crate::registry::Registry;
use crate::tarball::{BENTO_UID, Source, Tree};

pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a BuildConfig,
    pub(crate) cache: Cache,
    pub(crate) progress: &'a dyn Progress,
    pub(crate) encoding: Encoding,
}

impl Ctx<'_> {
    pub(crate) fn step(&self, s: impl Into<String>) {
        self.progress.event(&Event::Step(s.into()));
    }
}

pub(crate) struct Built {
    pub(crate) kind: LayerKind,
    pub(crate) name: String,
    pub(crate) blob: LayerBlob,
    pub(crate) cached: bool,
    pub(crate) created_by: String,
}

pub(crate) async fn commands_layer(
    ctx: &Ctx<'_>,
    breg: &Registry,
    base: &ResolvedBase,
    bento: &BentoInfo,
    steps: &[String],
    platform: &Platform,
) -> anyhow::Result<Built> {
    if platform.architecture != Platform::host().architecture {
        bail!("image commands {steps:?} can only run for this host's platform ({}), not {platform}", Platform::host());
    }
    let envs = bento.build_envs();
    // Secret envs by name only: a new token for the same index reuses the layer.
    let secrets = &ctx.cfg.secret_envs;
    let key = if secrets.is_empty() {
        format!("commands:{FORMAT}:{}:{steps:?}:{envs:?}:{:?}", base.digest, ctx.encoding)
    } else {
        format!("commands:{FORMAT}:{}:{steps:?}:{envs:?}:secrets={}:{:?}", base.digest, secrets.key(), ctx.encoding)
    };
    let name = format!("{} command(s)", steps.len());
    let created_by = format!("yatai-rs: RUN {}", steps.join(" && "));
    if let Some(blob) = ctx.cache.layer(&key) {
        return Ok(Built { kind: LayerKind::Commands, name, blob, cached: true, created_by });
    }
    ctx.step(format!("unpacking the base image to run {} command(s) in it (once per base digest)", steps.len()));
    let rootfs = crate::sandbox::base_rootfs(breg, base, &ctx.cache).await?;
    ctx.step(format!("running in a sandbox (overlay + chroot): {steps:?}"));
    let log = |l: String| ctx.progress.event(&Event::Step(l));
    let blob =
        crate::sandbox::commands_layer(&rootfs, steps, &envs, secrets.vars(), &ctx.cache, ctx.encoding, &log).await?;
    ctx.cache.put_layer(&key, &blob)?;
    Ok(Built { kind: LayerKind::Commands, name, blob, cached: false, created_by })
}

fn bento_owner(path: &str) -> u64 {
    if path == "home/bentoml" || path.starts_with("home/bentoml/") { BENTO_UID } else { 0 }
}

/// Small layers are rebuilt every time (milliseconds); their digest is stable anyway.
pub(crate) fn small_layer(
    ctx: &Ctx,
    kind: LayerKind,
    name: &str,
    tree: Tree,
    created_by: String,
) -> anyhow::Result<Built> {
    let (blob, _) = blob::write_blob(&tree, ctx.encoding, &ctx.cache.blobs_dir())?;
    Ok(Built { kind, name: name.to_string(), blob, cached: false, created_by })
}

pub(crate) fn user_layer(ctx: &Ctx, facts: Option<&BaseFacts>) -> anyhow::Result<Built> {
    let mut t = Tree::new();
    t.dir("home/bentoml", &bento_owner);
    t.dir("app", &|_| 0);
    if let Some(f) = facts
        && let (Some(p), Some(g)) = (&f.passwd, &f.group)
    {
        let (p, g) = base::with_bento_user(p, g);
        t.file("etc/passwd", Source::Bytes(p.into_bytes()), false, &|_| 0);
        t.file("etc/group", Source::Bytes(g.into_bytes()), false, &|_| 0);
    }
    small_layer(ctx, LayerKind::User, "bentoml", t, "yatai-rs: user bentoml (1034:1034), /home/bentoml, /app".into())
}

/// The requirements to install, as BentoML's Dockerfile / install.sh would pick them.
fn requirements(bento: &BentoInfo, bento_dir: &Path, work: &Path) -> anyhow::Result<(PathBuf, PathBuf, Vec<String>)> {
    let py = bento_dir.join("env/python");
    let lock = py.join("requirements.lock.txt");
    let req = if bento.spec == 1 && lock.is_file() { lock } else { py.join("requirements.txt") };
    let mut text =
        std::fs::read_to_string(&req).with_context(|| format!("bento {} has no {}", bento.tag(), req.display()))?;
    yatai_core::requirements::check_no_local_paths(&text)
        .map_err(|reason| crate::builder::BuildError::Requirements { bento: bento.tag(), reason })?;
    let mut extra_keys = Vec::new();
    if let Ok(rd) = std::fs::read_dir(py.join("wheels")) {
        let mut wheels: Vec<PathBuf> =
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "whl")).collect();
        wheels.sort();
        for w in wheels {
            extra_keys.push(format!("{}={}", w.file_name().unwrap().to_string_lossy(), blob::sha256_file(&w)?));
            text.push_str(&format!("\n{}\n", w.display()));
        }
    }
    if bento.spec == 1
        && !text.lines().any(|l| l.trim_start().starts_with("bentoml"))
        && !bento.bentoml_version.is_empty()
    {
        text.push_str(&format!("\nbentoml=={}\n", bento.bentoml_version));
    }
    let file = work.join("requirements.in.txt");
    std::fs::write(&file, &text)?;
    let cwd = if bento_dir.join("src").is_dir() { bento_dir.join("src") } else { py };
    extra_keys.push(format!(
        "req={}",
        blob::sha256_digest(text.replace(&bento_dir.display().to_string(), "${BENTO}").as_bytes())
    ));
    Ok((file, cwd, extra_keys))
}

pub(crate) async fn deps_layer(
    ctx: &Ctx<'_>,
    bento: &BentoInfo,
    bento_dir: &Path,
    target: &Target,
    work: &Path,
) -> anyhow::Result<Built> {
    let uv = Uv {
        bin: ctx.cfg.uv.clone(),
        cache_dir: ctx.cfg.uv_cache.clone().unwrap_or_else(|| ctx.cache.root().join("uv")),
        secrets: ctx.cfg.secret_envs.clone(),
    };
    let uv_version = uv.version().await?;
    let (req_file, cwd, req_keys) = requirements(bento, bento_dir, work)?;
    let build_envs = bento.build_envs();
    let mut envs_key = blob::sha256_digest(format!("{build_envs:?}").as_bytes());
    if !ctx.cfg.secret_envs.is_empty() {
        // The names of the secret envs (which index variables are set), never their values.
        envs_key.push_str(&format!(":secrets={}", ctx.cfg.secret_envs.key()));
    }
    let bento_root = bento_dir.display().to_string();

    // 1. Pin. Cached by the requirements, the platform and the python minor (not by bento), so
    //    a warm build and a code-only rebuild never ask the index again. A cold resolution sees
    //    nothing published after the bento was created (`--exclude-newer`), so unpinned
    //    requirements give what the bento's author could have got; bentos built with
    //    `lock_packages` (bentoml's default) are fully pinned anyway.
    let resolve_key =
        format!("resolve:{FORMAT}:{}:{}:{}:{envs_key}", req_keys.join(","), target.uv_platform, target.python);
    let resolved = match ctx.cache.meta::<String>(&resolve_key) {
        Some(r) => r,
        None => {
            ctx.step(format!("resolving Python requirements for {} / python {}", target.uv_platform, target.python));
            // An index of the build's own (a private one, usually) may not publish upload times
            // (PEP 700 is in the JSON API only; plain HTML indexes have none), and uv drops every
            // file without one under `--exclude-newer`: no cutoff then.
            let own_index = crate::secrets::names_an_index(build_envs.iter().chain(ctx.cfg.secret_envs.vars()));
            let exclude_newer = (!own_index).then_some(bento.creation_time.as_str());
            if own_index {
                ctx.step("the build names a package index of its own: no --exclude-newer cutoff (such indexes may not publish upload times)");
            }
            let r = uv.compile(&req_file, &cwd, target, exclude_newer, &build_envs).await?;
            let r = r.replace(&bento_root, "${BENTO}");
            ctx.cache.put_meta(&resolve_key, &r)?;
            r
        }
    };

    // 2. The layer, keyed by what it contains, not by which bento asked for it.
    let host_python = ctx.cfg.host_python.clone().or_else(|| python::find_host_python(&target.python));
    let pyc = match &host_python {
        Some(p) => format!("pyc:{}", p.display()),
        None => "no-pyc".into(),
    };
    let key = format!(
        "deps:{FORMAT}:{}:{}:{}:{uv_version}:{pyc}:{:?}",
        blob::sha256_digest(resolved.as_bytes()),
        target.uv_platform,
        target.python,
        ctx.encoding
    );
    let name = format!(
        "python{} {} ({} packages)",
        target.python,
        target.uv_platform,
        resolved.lines().filter(|l| l.contains("==") || l.contains(" @ ")).count()
    );
    let created_by = format!(
        "yatai-rs: uv pip install --target {VENV} ({}, {})",
        blob::sha256_digest(resolved.as_bytes()),
        target.uv_platform
    );
    if let Some(blob) = ctx.cache.layer(&key) {
        return Ok(Built { kind: LayerKind::Deps, name, blob, cached: true, created_by });
    }

    let stage = work.join("deps");
    let site = stage.join("site-packages");
    let pinned = work.join("requirements.pinned.txt");
    std::fs::write(&pinned, resolved.replace("${BENTO}", &bento_root))?;
    ctx.step(format!("installing Python packages for {} / python {}", target.uv_platform, target.python));
    uv.install(&pinned, &cwd, &site, target, &build_envs).await?;
    let venv_bin = stage.join("bin");
    let scripts = python::relocate_scripts(&site.join("bin"), &venv_bin)?;
    let image_site = format!("{VENV}/lib/python{}/site-packages", target.python);
    match &host_python {
        Some(p) => {
            ctx.step(format!("compiling bytecode with {}", p.display()));
            python::compile_bytecode(p, &site, &image_site).await?;
        }
        None => ctx.step(format!(
            "no python{} on the build host: the image ships no precompiled bytecode (modules compile on first import)",
            target.python
        )),
    }
    let mut tree = Tree::new();
    tree.add_dir_all(&site, image_site.trim_start_matches('/'), &venv_owner, &|_| false)?;
    if !scripts.is_empty() {
        tree.add_dir_all(&venv_bin, &format!("{}/bin", VENV.trim_start_matches('/')), &venv_owner, &|_| false)?;
    }
    let enc = ctx.encoding;
    let blobs = ctx.cache.blobs_dir();
    let (blob, _) = tokio::task::spawn_blocking(move || blob::write_blob(&tree, enc, &blobs)).await??;
    ctx.cache.put_layer(&key, &blob)?;
    Ok(Built { kind: LayerKind::Deps, name, blob, cached: false, created_by })
}

pub(crate) async fn model_layer(ctx: &Ctx<'_>, name: &str, version: &str, dir: &Path) -> anyhow::Result<Built> {
    let mut tree = Tree::new();
    let dest = format!("home/bentoml/bento/models/{name}/{version}");
    tree.add_dir_all(dir, &dest, &bento_owner, &|_| false)?;
    let enc = ctx.encoding;
    let blobs = ctx.cache.blobs_dir();
    let cache = ctx.cache.clone();
    let created_by = format!("yatai-rs: model {name}:{version}");
    let (blob, cached) = tokio::task::spawn_blocking(move || -> anyhow::Result<(LayerBlob, bool)> {
        // A hashing pass first (fast); only a layer never seen before is compressed.
        let diff_id = blob::diff_id_of(&tree)?;
        let key = format!("model:{FORMAT}:{diff_id}:{enc:?}");
        if let Some(b) = cache.layer(&key) {
            return Ok((b, true));
        }
        let enc = if blob::worth_compressing(&tree)? { enc } else { Encoding::None };
        let (b, _) = blob::write_blob(&tree, enc, &blobs)?;
        cache.put_layer(&key, &b)?;
        Ok((b, false))
    })
    .await??;
    Ok(Built { kind: LayerKind::Model, name: format!("{name}:{version}"), blob, cached, created_by })
}

pub(crate) fn bento_layer(ctx: &Ctx, bento: &BentoInfo, dir: &Path) -> anyhow::Result<Built> {
    let mut tree = Tree::new();
    let root = "home/bentoml/bento";
    // Model versions have their own layers; `models/<name>/latest` stays here.
    let model_dirs: Vec<String> = bento.models.iter().map(|m| format!("models/{}/{}", m.name, m.version)).collect();
    tree.add_dir_all(dir, root, &bento_owner, &|rel| {
        model_dirs.iter().any(|m| rel == m || rel.starts_with(&format!("{m}/")))
    })?;
    for m in bento.models.iter().filter(|m| m.registry != "huggingface") {
        let latest = format!("{root}/models/{}/latest", m.name);
        if !tree.paths().any(|p| p == latest) {
            tree.file(&latest, Source::Bytes(m.version.clone().into_bytes()), false, &bento_owner);
        }
    }
    tree.dir(&format!("{root}/hf-models"), &bento_owner);
    let ep = format!("{root}/env/docker/entrypoint.sh");
    if !tree.paths().any(|p| p == ep) {
        bail!("bento {} has no env/docker/entrypoint.sh (bentoml ≥ 1.2 writes it at build time)", bento.tag());
    }
    tree.file(&ep, Source::Path(dir.join("env/docker/entrypoint.sh")), true, &bento_owner);
    small_layer(ctx, LayerKind::Bento, &bento.tag(), tree, format!("yatai-rs: bento {}", bento.tag()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SecretEnvs;

    const TOKEN: &str = "tok-9d8c7b6a5f";

    /// A `uv` that appends each call's index variables to `record`, pins `six`, installs one
    /// file, and fails (echoing the index URL, as uv does) when the URL says so.
    fn fake_uv(dir: &Path, record: &Path) -> PathBuf {
        let uv = dir.join("uv");
        let script = format!(
            r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo "uv 0.0.0-fake"; exit 0; fi
{{ echo "CALL $1 $2"; env | grep -E '^(UV_|PIP_|IRIS_)' | grep -v '^UV_CACHE_DIR\|^UV_NO_PROGRESS' | sort; }} >> {record}
case "$UV_EXTRA_INDEX_URL" in *fail*) echo "error: failed to fetch $UV_EXTRA_INDEX_URL/six/" >&2; exit 2;; esac
prev=""
for a in "$@"; do
  case "$prev" in
    --output-file) echo "six==1.16.0" > "$a";;
    --target) mkdir -p "$a/six" && echo "x = 1" > "$a/six/__init__.py";;
  esac
  prev="$a"
done
"#,
            record = record.display()
        );
        std::fs::write(&uv, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&uv, std::fs::Permissions::from_mode(0o755)).unwrap();
        uv
    }

    async fn deps(cfg: &BuildConfig, bento_dir: &Path) -> anyhow::Result<Built> {
        let yaml = "name: iris\nversion: v1\ncreation_time: '2026-01-01T00:00:00+00:00'\n\
                    envs: [{name: IRIS_MODE, value: test, stage: build}]\n";
        let bento = BentoInfo::parse(yaml).unwrap();
        let ctx = Ctx { cfg, cache: Cache::new(&cfg.cache_dir)?, progress: &|_: &Event| {}, encoding: Encoding::None };
        let work = tempfile::tempdir()?;
        // A python minor no build host has: no bytecode step.
        let target = Target { uv_platform: "x86_64-manylinux_2_28".into(), python: "3.99".into() };
        deps_layer(&ctx, &bento, bento_dir, &target, work.path()).await
    }

    #[tokio::test]
    async fn the_install_sees_secret_envs_that_no_cache_key_layer_or_history_holds() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("record");
        let bento_dir = dir.path().join("bento");
        std::fs::create_dir_all(bento_dir.join("env/python")).unwrap();
        std::fs::write(bento_dir.join("env/python/requirements.txt"), "six\n").unwrap();
        let mut cfg = BuildConfig::new("iris:v1", "r.test/b", dir.path().join("cache"));
        cfg.uv = fake_uv(dir.path(), &record);
        let url = |token: &str| format!("https://user:{token}@pypi.example/simple");
        cfg.secret_envs = SecretEnvs::new([("PIP_EXTRA_INDEX_URL", url(TOKEN))]);

        let first = deps(&cfg, &bento_dir).await.unwrap();
        assert!(!first.cached);
        let calls = std::fs::read_to_string(&record).unwrap();
        assert_eq!(calls.matches("CALL pip").count(), 2, "compile and install: {calls}");
        // Both calls saw the bento's build env, pip's variable, and the same under uv's name.
        for var in [format!("UV_EXTRA_INDEX_URL={}", url(TOKEN)), format!("PIP_EXTRA_INDEX_URL={}", url(TOKEN))] {
            assert_eq!(calls.matches(&var).count(), 2, "{var}: {calls}");
        }
        assert_eq!(calls.matches("IRIS_MODE=test").count(), 2, "{calls}");
        let blob = std::fs::read(Cache::new(&cfg.cache_dir).unwrap().blob_path(&first.blob.digest)).unwrap();
        assert!(String::from_utf8_lossy(&blob).contains("x = 1"), "an uncompressed layer, readable");
        assert!(!String::from_utf8_lossy(&blob).contains(TOKEN), "no value in the layer");
        assert!(!first.created_by.contains(TOKEN) && !first.name.contains(TOKEN));
        let cache_text = files_text(&cfg.cache_dir);
        assert!(!cache_text.contains(TOKEN), "no value in the cache (keys, metadata)");

        // Another token for the same variable: the same keys, so nothing is resolved or installed again.
        cfg.secret_envs = SecretEnvs::new([("PIP_EXTRA_INDEX_URL", url("other-token-1234"))]);
        let second = deps(&cfg, &bento_dir).await.unwrap();
        assert!(second.cached, "the layer comes from the cache");
        assert_eq!(second.blob.digest, first.blob.digest);
        assert_eq!(std::fs::read_to_string(&record).unwrap(), calls, "uv was not called again");

        // A failing index: uv's message names the URL, the error does not name the token.
        std::fs::write(bento_dir.join("env/python/requirements.txt"), "six\nsomething-else\n").unwrap();
        cfg.secret_envs = SecretEnvs::new([("UV_EXTRA_INDEX_URL", url("fail-token-5678"))]);
        let Err(err) = deps(&cfg, &bento_dir).await else { panic!("the index fails") };
        let err = format!("{err:#}");
        assert!(err.contains("failed to fetch ****/six/") && !err.contains("fail-token-5678"), "{err}");
    }

    fn files_text(dir: &Path) -> String {
        let mut text = String::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                text.push_str(&files_text(&p));
            } else {
                text.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
            }
        }
        text
    }
}
