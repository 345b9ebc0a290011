//! `yatai build`: the arguments (a `clap::Args` the `yatai` binary flattens in) and the command.

use std::path::PathBuf;

use anyhow::Context;

use crate::blob::Compression;
use crate::builder::{BuildConfig, build};
use crate::progress::{Event, Progress};
use crate::source::{BentoSource, BentoTag, InvalidBentoTag, LocalSource, YataiSource};

/// Build a bento's OCI image and push it to a registry (no Docker daemon needed).
///
/// The image is tagged `yatai.<bento name>.<version>`; when that tag already exists nothing is
/// built unless --force. The last line of stdout is the pushed reference with its digest.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Bento tag: NAME, NAME:latest or NAME:VERSION.
    #[arg(value_parser = valid_bento_tag)]
    pub tag: String,
    /// Target repository, HOST[:PORT]/REPOSITORY (e.g. registry.example.com/bentos).
    #[arg(long, env = "YATAI_BUILD_REGISTRY")]
    pub registry: String,
    /// Base image (default: the bento's image.base_image, e.g. python:3.11-slim).
    #[arg(long, env = "YATAI_BUILD_BASE")]
    pub base: Option<String>,
    /// Target platform, linux/amd64 or linux/arm64 (default: this machine's).
    #[arg(long, env = "YATAI_BUILD_PLATFORM")]
    pub platform: Option<String>,
    /// Layer compression: zstd (containerd ≥ 1.5, Docker ≥ 23) or gzip (everything).
    #[arg(long, value_enum, default_value_t = Compression::Zstd, env = "YATAI_BUILD_COMPRESSION")]
    pub compression: Compression,
    /// Talk plain HTTP to the target registry (and to a base image on the same host).
    #[arg(long, env = "YATAI_BUILD_PLAIN_HTTP")]
    pub plain_http: bool,
    /// Build and push even when the image tag already exists.
    #[arg(long)]
    pub force: bool,
    /// yatai server to fetch the bento and its models from.
    #[arg(long, env = "YATAI_ENDPOINT")]
    pub endpoint: Option<String>,
    /// API token for --endpoint.
    #[arg(long, env = "YATAI_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Build from a local bento instead: an exported bento (`bentoml export`) or a bento directory.
    #[arg(long, conflicts_with = "endpoint")]
    pub bento_path: Option<PathBuf>,
    /// bentoml store to read bentos (without --endpoint/--bento-path) and models from.
    #[arg(long, env = "BENTOML_HOME")]
    pub bentoml_home: Option<PathBuf>,
    /// Builder cache (layers, base image facts, uv cache). Default ~/.cache/yatai/build.
    #[arg(long, env = "YATAI_BUILD_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// docker config.json with registry credentials (default $DOCKER_CONFIG/config.json or ~/.docker/config.json).
    #[arg(long, env = "YATAI_BUILD_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
    /// uv executable used to install the Python dependencies.
    #[arg(long, env = "YATAI_BUILD_UV", default_value = "uv")]
    pub uv: PathBuf,
    /// uv's download cache (default: inside --cache-dir).
    #[arg(long, env = "YATAI_BUILD_UV_CACHE")]
    pub uv_cache: Option<PathBuf>,
    /// Also write the build outcome (reference, digest, bytes pushed, layers) as JSON here.
    #[arg(long)]
    pub json_report: Option<PathBuf>,
    /// python3.X on this machine used to precompile bytecode (default: found on PATH).
    #[arg(long, env = "YATAI_BUILD_HOST_PYTHON")]
    pub host_python: Option<PathBuf>,
    /// Scratch directory for the fetched bento and the dependency install (default: /dev/shm
    /// when it has ≥ 8 GiB free, else inside --cache-dir).
    #[arg(long, env = "YATAI_BUILD_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Run the bento's image.commands / system packages in a sandbox on this host (overlay +
    /// chroot; needs root) instead of refusing the bento.
    #[arg(long, env = "YATAI_BUILD_RUN_COMMANDS")]
    pub run_commands: bool,
    /// The interpreter inside the base image, e.g. /usr/local/bin/python3.11; skips reading
    /// the base image's files (for multi-GB bases).
    #[arg(long, env = "YATAI_BUILD_BASE_PYTHON")]
    pub base_python: Option<String>,
    /// An environment variable of this process that the dependency install and the image
    /// commands get as a secret (e.g. UV_INDEX_URL with a private index's credentials): never
    /// kept in the image or the cache's keys, masked in the output. Repeatable.
    #[arg(long = "secret-env", value_name = "NAME")]
    pub secret_env: Vec<String>,
}

impl BuildArgs {
    pub fn config(&self) -> anyhow::Result<BuildConfig> {
        let cache_dir = match &self.cache_dir {
            Some(d) => d.clone(),
            None => default_cache_dir().context("no --cache-dir and no HOME to put the build cache in")?,
        };
        let mut c = BuildConfig::new(&self.tag, &self.registry, cache_dir);
        c.base = self.base.clone();
        c.platform = self.platform.clone();
        c.compression = self.compression;
        c.plain_http = self.plain_http;
        c.force = self.force;
        c.docker_config = self.docker_config.clone();
        c.uv = self.uv.clone();
        c.uv_cache = self.uv_cache.clone();
        c.host_python = self.host_python.clone();
        c.base_python = self.base_python.clone();
        c.run_commands = self.run_commands;
        c.work_dir = self.work_dir.clone();
        let mut secrets = Vec::new();
        for name in &self.secret_env {
            let value = std::env::var(name)
                .with_context(|| format!("--secret-env {name}: no such environment variable (or not UTF-8)"))?;
            secrets.push((name.clone(), value));
        }
        c.secret_envs = crate::SecretEnvs::new(secrets);
        Ok(c)
    }

    pub fn source(&self) -> anyhow::Result<Box<dyn BentoSource>> {
        let home =
            self.bentoml_home.clone().or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join("bentoml")));
        if let Some(p) = &self.bento_path {
            return Ok(Box::new(LocalSource { bento: Some(p.clone()), bentoml_home: home }));
        }
        if let Some(e) = &self.endpoint {
            let token = self.api_token.clone().unwrap_or_default();
            return Ok(Box::new(YataiSource::new(e, &token)?));
        }
        Ok(Box::new(LocalSource { bento: None, bentoml_home: home }))
    }
}

/// Refuses a bad tag while the arguments are read, with the same message [`build`] would give.
fn valid_bento_tag(s: &str) -> Result<String, InvalidBentoTag> {
    BentoTag::parse(s).map(|_| s.to_string())
}

pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("yatai/build"))
}

pub(crate) struct Stderr(pub(crate) std::time::Instant);

impl Progress for Stderr {
    fn event(&self, e: &Event) {
        eprintln!("[{:6.2}s] {e}", self.0.elapsed().as_secs_f64());
    }
}

/// `yatai build`: progress on stderr, the pushed reference as the last line of stdout.
pub async fn run(args: BuildArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let source = args.source()?;
    let outcome = build(&cfg, source.as_ref(), &Stderr(std::time::Instant::now())).await?;
    if let Some(p) = &args.json_report {
        std::fs::write(p, serde_json::to_vec_pretty(&outcome)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if !outcome.already_built {
        let reused = outcome.reused().count();
        eprintln!(
            "{} layers, {reused} already in the registry, {} uploaded in {:.2} s",
            outcome.layers.len(),
            crate::progress::human(outcome.bytes_pushed),
            outcome.seconds
        );
    }
    println!("{}", outcome.reference);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BuildArgs,
    }

    fn parse(tag: &str) -> Result<BuildArgs, clap::Error> {
        Cli::try_parse_from(["yatai-build", tag, "--registry", "127.0.0.1:1/bentos"]).map(|c| c.args)
    }

    #[test]
    fn an_upper_case_tag_is_refused_while_reading_the_arguments_as_core_refuses_it() {
        let err = parse("Iris:ABC").expect_err("Iris:ABC was accepted");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        let msg = err.to_string();
        let core = yatai_core::Tag::parse("Iris:ABC").unwrap_err().to_string();
        assert!(msg.contains(&format!("bento tag \"Iris:ABC\": {core}")), "{msg}");
    }

    #[test]
    fn a_valid_tag_is_kept_as_written() {
        for tag in ["iris", "iris:latest", "iris_clf:pndy6nhijceeoax4"] {
            assert_eq!(parse(tag).unwrap().tag, tag);
        }
    }
}
