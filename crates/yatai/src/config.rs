//! Configuration of each role: flags with `YATAI_…` environment fallbacks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use yatai_app::{AppConfig, TransmissionMode};
use yatai_blob::{BlobStore, S3Config};
use yatai_store::Store;

/// Where the metadata lives. Shared by `serve` and the admin commands.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// Directory for everything yatai keeps locally (SQLite file, artifacts).
    #[arg(long, env = "YATAI_DATA_DIR", default_value = "yatai-data")]
    pub data_dir: PathBuf,
    /// Metadata database: `sqlite://PATH` or `postgres://USER:PASS@HOST/DB`.
    /// Default: SQLite at DATA_DIR/yatai.db.
    #[arg(long, env = "YATAI_DATABASE_URL")]
    pub database_url: Option<String>,
}

impl DbArgs {
    pub fn url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("yatai.db").display()),
        }
    }

    /// The URL with any password masked, for logs.
    pub fn describe(&self) -> String {
        let url = self.url();
        match url::Url::parse(&url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => url,
        }
    }

    pub async fn connect(&self) -> anyhow::Result<Store> {
        if self.database_url.is_none() {
            std::fs::create_dir_all(&self.data_dir)
                .with_context(|| format!("cannot create the data directory {}", self.data_dir.display()))?;
        }
        Store::connect(&self.url()).await.with_context(|| format!("cannot open the database {}", self.describe()))
    }
}

/// Where artifacts live.
#[derive(Args, Debug, Clone)]
pub struct StorageArgs {
    /// Artifact storage: a directory path, or `s3://BUCKET[/PREFIX]` for an
    /// S3-compatible store. Default: DATA_DIR/artifacts.
    #[arg(long, env = "YATAI_STORAGE")]
    pub storage: Option<String>,
    /// S3 endpoint, e.g. `http://127.0.0.1:9000` (default: AWS).
    #[arg(long, env = "YATAI_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "YATAI_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Also read from AWS_ACCESS_KEY_ID.
    #[arg(long, env = "YATAI_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    /// Also read from AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "YATAI_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Address the bucket as ENDPOINT/BUCKET (needed by most S3-compatible
    /// servers) rather than BUCKET.ENDPOINT. Default: on when an endpoint is set.
    #[arg(long, env = "YATAI_S3_PATH_STYLE")]
    pub s3_path_style: Option<bool>,
    /// Sync each archive to disk before reporting its upload done (local
    /// storage). Turning this off is faster and loses data on power failure.
    #[arg(long, env = "YATAI_FSYNC", default_value_t = true, action = clap::ArgAction::Set)]
    pub fsync: bool,
}

impl StorageArgs {
    pub fn open(&self, data_dir: &std::path::Path) -> anyhow::Result<BlobStore> {
        match self.storage.as_deref() {
            Some(s) if s.starts_with("s3://") => {
                let rest = &s["s3://".len()..];
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    bail!("--storage {s:?} names no bucket: use s3://BUCKET[/PREFIX]");
                }
                let config = S3Config {
                    bucket: bucket.to_owned(),
                    prefix: prefix.to_owned(),
                    endpoint: self.s3_endpoint.clone(),
                    region: self.s3_region.clone(),
                    access_key_id: self.s3_access_key_id.clone(),
                    secret_access_key: self.s3_secret_access_key.clone(),
                    path_style: self.s3_path_style.unwrap_or(self.s3_endpoint.is_some()),
                };
                Ok(BlobStore::s3(&config)?)
            }
            Some(s) if s.contains("://") => {
                bail!("unsupported --storage {s:?}: use a directory path or s3://BUCKET")
            }
            Some(dir) => Ok(BlobStore::local(PathBuf::from(dir), self.fsync)?),
            None => Ok(BlobStore::local(data_dir.join("artifacts"), self.fsync)?),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "YATAI_BIND", default_value = "127.0.0.1:3000")]
    pub bind: String,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    /// How clients move archive bytes: auto (proxy for local storage; with
    /// S3, presigned below the multipart threshold and multipart above),
    /// proxy, presigned or multipart.
    #[arg(long, env = "YATAI_TRANSMISSION_STRATEGY", default_value = "auto")]
    pub transmission_strategy: TransmissionMode,
    /// With `auto` and S3: archives at least this large use multipart.
    #[arg(long, env = "YATAI_MULTIPART_THRESHOLD", default_value = "64MiB", value_parser = parse_size)]
    pub multipart_threshold: u64,
    /// The URL clients reach this server at (for URLs yatai signs itself).
    /// Default: taken from each request's Host header.
    #[arg(long, env = "YATAI_EXTERNAL_URL")]
    pub external_url: Option<url::Url>,
    /// Largest JSON body accepted. The default fits the largest manifest,
    /// description and labels the per-field limits allow (README, "Limits").
    #[arg(long, env = "YATAI_MAX_JSON_BODY", default_value = "2MiB", value_parser = parse_size)]
    pub max_json_body: u64,
    /// Largest archive accepted (default: no limit).
    #[arg(long, env = "YATAI_MAX_ARTIFACT_SIZE", value_parser = parse_size)]
    pub max_artifact_size: Option<u64>,
    /// How long presigned URLs stay valid.
    #[arg(long, env = "YATAI_PRESIGN_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub presign_ttl: Duration,
    /// How long an unfinished upload may wait before it is cleaned up.
    #[arg(long, env = "YATAI_UPLOAD_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub upload_ttl: Duration,
    /// How long the audit events (the dashboard's Events, `/api/v1/events`) are kept; `0` keeps
    /// them for ever. Each push, pull, delete or deployment change adds one (≈ 0.4 KB).
    #[arg(long, env = "YATAI_EVENT_RETENTION", default_value = "365d", value_parser = humantime::parse_duration)]
    pub event_retention: Duration,
    /// How often the janitor looks for abandoned uploads and unreferenced archives.
    #[arg(long, env = "YATAI_JANITOR_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub janitor_interval: Duration,
    /// Where the local runtime keeps extracted bentos, replica homes and logs.
    /// Default: DATA_DIR/runtime.
    #[arg(long, env = "YATAI_RUNTIME_DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Where Python environments for bentos are built and cached (shared by
    /// every deployment with the same requirements). Default: DATA_DIR/envs.
    #[arg(long, env = "YATAI_ENV_DIR")]
    pub env_dir: Option<PathBuf>,
    /// The `uv` executable for building environments (default: `uv` on
    /// PATH; without uv, `python3 -m venv` and pip).
    #[arg(long, env = "YATAI_UV")]
    pub uv: Option<PathBuf>,
    /// User ids the replicas run as, one per deployment, when the server
    /// runs as root: `FIRST-LAST` (ids with an entry in the password database
    /// are skipped), or `off` to run them as the server's user. Without
    /// root, replicas always run as the server's user.
    #[arg(long, env = "YATAI_REPLICA_UIDS", default_value = "1500000000-1500999999")]
    pub replica_uids: String,
    /// The key that signs transfer URLs yatai serves itself; created on
    /// first start, readable only by the server. Share it between servers
    /// that serve the same storage. Default: DATA_DIR/secrets/url-signing.key.
    #[arg(long, env = "YATAI_URL_SIGNING_KEY_FILE")]
    pub url_signing_key_file: Option<PathBuf>,
    /// The key that seals Kubernetes clusters' credentials and secrets' values in the database;
    /// created on first start, readable only by the server. Keep it with the
    /// database's backups, but apart. Default: DATA_DIR/secrets/cluster.key.
    #[arg(long, env = "YATAI_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Also route `<name>-<namespace>.<DOMAIN>` on the main port to each
    /// deployment, and report that as its URL (e.g. `127.0.0.1.sslip.io`).
    /// Default: each deployment has a port of its own.
    #[arg(long, env = "YATAI_DEPLOYMENT_DOMAIN")]
    pub deployment_domain: Option<String>,
    /// Require `Authorization: Bearer <TOKEN>` on `GET /metrics` (Prometheus' `authorization`
    /// setting). Default: the metrics are open, like `/healthz`.
    #[arg(long, env = "YATAI_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// The longest an API request may take to its response's head (archive uploads and
    /// downloads excepted): past it the client gets a 503 saying so, and what the request
    /// waited on is let go (e.g. a database connection that stopped answering). `0s`: no limit.
    #[arg(long, env = "YATAI_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// The most client connections served at once; more wait in the listen backlog.
    #[arg(long, env = "YATAI_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// A request's head must arrive within this (slow clients holding connections).
    #[arg(long, env = "YATAI_CLIENT_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub client_header_timeout: Duration,
    /// A request body that sends nothing for this long fails (a stalled upload).
    #[arg(long, env = "YATAI_CLIENT_BODY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub client_body_timeout: Duration,
    /// A connection whose client acknowledges nothing sent for this long is closed (a download
    /// to a client that stopped reading).
    #[arg(long, env = "YATAI_CLIENT_SEND_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub client_send_timeout: Duration,
    /// How long a replica may take to become ready before it is restarted.
    #[arg(long, env = "YATAI_COLD_START_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub cold_start_timeout: Duration,
    /// How long a replica gets to stop after SIGTERM before SIGKILL.
    #[arg(long, env = "YATAI_STOP_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub stop_grace: Duration,
    /// Build images of bentos on request and push them to this repository,
    /// `HOST[:PORT]/REPOSITORY`. Default: no image builds.
    #[arg(long, env = "YATAI_IMAGE_REGISTRY")]
    pub image_registry: Option<String>,
    /// Speak plain HTTP to the image registry (loopback or trusted networks only).
    #[arg(long, env = "YATAI_IMAGE_PLAIN_HTTP")]
    pub image_plain_http: bool,
    /// Base image for every build, instead of each bento's `image.base_image`.
    #[arg(long, env = "YATAI_IMAGE_BASE")]
    pub image_base: Option<String>,
    /// The image builder's cache (layers, dependency installs). Default: DATA_DIR/build-cache.
    #[arg(long, env = "YATAI_IMAGE_BUILD_CACHE")]
    pub image_build_cache: Option<PathBuf>,
    /// Docker `config.json` with registry credentials (default: $DOCKER_CONFIG or ~/.docker).
    #[arg(long, env = "YATAI_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
    /// First start only: the organization, admin user and email to create.
    #[arg(long, env = "YATAI_ORG_NAME", default_value = "default")]
    pub org_name: String,
    #[arg(long, env = "YATAI_ADMIN_NAME", default_value = "admin")]
    pub admin_name: String,
    #[arg(long, env = "YATAI_ADMIN_EMAIL", default_value = "admin@localhost")]
    pub admin_email: String,
    /// First start only: use this secret as the admin's API token instead of
    /// a random one (for automation). Ignored once an admin exists.
    #[arg(long, env = "YATAI_INITIAL_API_TOKEN", hide_env_values = true)]
    pub initial_api_token: Option<String>,
    /// The operator's API token: on every start, a token of the admin with
    /// this secret that may only read the registry (the operator downloads
    /// bentos with it) is made if missing; a changed secret replaces it.
    #[arg(long, env = "YATAI_OPERATOR_API_TOKEN", hide_env_values = true)]
    pub operator_api_token: Option<String>,
}

impl ServeArgs {
    /// Makes every path-shaped setting absolute, once, at start: replicas,
    /// environment builds and image builds run in other working directories,
    /// where a relative path (the default `yatai-data` among them) would name
    /// something else. A bare `--uv` name stays a name, looked up on PATH.
    pub fn resolve_paths(&mut self) -> anyhow::Result<()> {
        let absolute = |p: &mut PathBuf| -> anyhow::Result<()> {
            *p = std::path::absolute(&*p).with_context(|| format!("cannot resolve the path {}", p.display()))?;
            Ok(())
        };
        absolute(&mut self.db.data_dir)?;
        for p in [
            &mut self.runtime_dir,
            &mut self.env_dir,
            &mut self.image_build_cache,
            &mut self.docker_config,
            &mut self.url_signing_key_file,
            &mut self.cluster_key_file,
        ]
        .into_iter()
        .flatten()
        {
            absolute(p)?;
        }
        if let Some(uv) = &mut self.uv
            && uv.components().count() > 1
        {
            absolute(uv)?;
        }
        if let Some(dir) = &mut self.storage.storage
            && !dir.starts_with("s3://")
        {
            let resolved = std::path::absolute(&*dir).with_context(|| format!("cannot resolve the path {dir}"))?;
            *dir = resolved.display().to_string();
        }
        Ok(())
    }

    /// The user ids for replicas, if the server can and should switch users.
    pub fn replica_ids(&self) -> anyhow::Result<Option<yatai_runtime::isolation::IdRange>> {
        if self.replica_uids.trim() == "off" {
            return Ok(None);
        }
        let range = self.replica_uids.parse().map_err(|e: String| anyhow::anyhow!("--replica-uids: {e}"))?;
        Ok(yatai_runtime::isolation::can_switch_users().then_some(range))
    }

    pub fn signing_key_file(&self) -> PathBuf {
        self.url_signing_key_file.clone().unwrap_or_else(|| self.db.data_dir.join("secrets").join("url-signing.key"))
    }

    pub fn cluster_key_file(&self) -> PathBuf {
        self.cluster_key_file.clone().unwrap_or_else(|| self.db.data_dir.join("secrets").join("cluster.key"))
    }

    pub fn runtime_config(&self) -> anyhow::Result<yatai_runtime::RuntimeConfig> {
        let data = &self.db.data_dir;
        let mut c = yatai_runtime::RuntimeConfig::new(
            self.runtime_dir.clone().unwrap_or_else(|| data.join("runtime")),
            self.env_dir.clone().unwrap_or_else(|| data.join("envs")),
        );
        c.uv = self.uv.clone();
        c.stop_grace = self.stop_grace;
        c.replica_ids = self.replica_ids()?;
        if let Ok(addr) = self.bind.parse::<std::net::SocketAddr>() {
            c.listen_host = addr.ip();
        }
        Ok(c)
    }

    pub fn app_config(&self) -> AppConfig {
        AppConfig {
            transmission: self.transmission_strategy,
            external_url: self.external_url.clone(),
            max_json_body: self.max_json_body as usize,
            max_artifact_size: self.max_artifact_size,
            presign_ttl: self.presign_ttl,
            multipart_threshold: self.multipart_threshold,
            upload_ttl: self.upload_ttl,
            event_retention: Some(self.event_retention).filter(|d| !d.is_zero()),
            deployment_domain: self.deployment_domain.clone(),
            metrics_token: self.metrics_token.clone().filter(|t| !t.is_empty()),
            request_timeout: Some(self.request_timeout).filter(|t| !t.is_zero()),
            cold_start_timeout: self.cold_start_timeout,
            image_builds: self.image_registry.clone().map(|registry| yatai_app::images::ImageBuildSettings {
                registry,
                cache_dir: self.image_build_cache.clone().unwrap_or_else(|| self.db.data_dir.join("build-cache")),
                plain_http: self.image_plain_http,
                docker_config: self.docker_config.clone(),
                uv: self.uv.clone(),
                base: self.image_base.clone(),
            }),
        }
    }
}

/// Parses sizes like `64MiB`, `1GB`, `512k`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 64MiB, 1GB, 1048576)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "ti" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::{ServeArgs, parse_size};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// Every path-shaped flag given relative (and the relative default data
    /// directory) becomes absolute against the working directory; a bare
    /// `--uv` name stays a name for PATH, and an S3 URL stays a URL.
    #[test]
    fn relative_paths_are_resolved_against_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        let mut args = Cli::parse_from([
            "yatai",
            "--runtime-dir",
            "rt",
            "--env-dir",
            "./envs",
            "--image-build-cache",
            "cache",
            "--docker-config",
            "docker",
            "--url-signing-key-file",
            "secrets/key",
            "--uv",
            "tools/uv",
            "--storage",
            "blobs",
        ])
        .serve;
        args.resolve_paths().unwrap();
        assert_eq!(args.db.data_dir, cwd.join("yatai-data"));
        assert_eq!(args.runtime_dir.unwrap(), cwd.join("rt"));
        assert_eq!(args.env_dir.unwrap(), cwd.join("envs"));
        assert_eq!(args.image_build_cache.unwrap(), cwd.join("cache"));
        assert_eq!(args.docker_config.unwrap(), cwd.join("docker"));
        assert_eq!(args.url_signing_key_file.unwrap(), cwd.join("secrets/key"));
        assert_eq!(args.uv.unwrap(), cwd.join("tools/uv"));
        assert_eq!(args.storage.storage.unwrap(), cwd.join("blobs").display().to_string());

        let mut args = Cli::parse_from(["yatai", "--uv", "uv", "--storage", "s3://bucket/prefix"]).serve;
        args.resolve_paths().unwrap();
        assert_eq!(args.uv.unwrap(), std::path::PathBuf::from("uv"));
        assert_eq!(args.storage.storage.unwrap(), "s3://bucket/prefix");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
