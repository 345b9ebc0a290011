use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{BentoSource, BentoTag};
use crate::bento::{BentoInfo, ModelRef};
use crate::tarball;

/// A yatai (or Yatai / BentoCloud-compatible) server, read through the same v1 REST calls the
/// bentoml 1.4 client makes on `bentoml pull` (§6 of the protocol notes): the bento or model
/// object, then its archive through `…/download` (proxy strategy) or a presigned URL.
pub struct YataiSource {
    endpoint: String,
    token: String,
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct Artifact {
    version: String,
    #[serde(default)]
    upload_status: String,
    #[serde(default)]
    transmission_strategy: Option<String>,
    #[serde(default)]
    presigned_download_url: String,
    #[serde(default)]
    upload_finished_at: Option<String>,
    #[serde(default)]
    manifest: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct List {
    #[serde(default)]
    items: Vec<Artifact>,
}

impl YataiSource {
    pub fn new(endpoint: &str, token: &str) -> anyhow::Result<Self> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!("yatai endpoint {endpoint:?} must start with http:// or https://");
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("yatai-rs-build/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .build()?;
        Ok(Self { endpoint, token: token.to_string(), http })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.endpoint)).header("X-YATAI-API-TOKEN", &self.token)
    }

    async fn send(&self, what: &str, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = rb.send().await.with_context(|| format!("{what}: yatai server {} is unreachable", self.endpoint))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let not_found = status == 404 || (status == 400 && body.contains("record not found"));
        match () {
            _ if not_found => bail!("{what}: not found on {}", self.endpoint),
            _ if status == 401 || status == 403 => {
                bail!(
                    "{what}: {} rejected the API token (HTTP {status}); set --api-token / YATAI_API_TOKEN",
                    self.endpoint
                )
            }
            _ => bail!(
                "{what}: {} answered HTTP {status}: {}",
                self.endpoint,
                body.chars().take(300).collect::<String>()
            ),
        }
    }

    async fn artifact(&self, kind: &str, name: &str, version: Option<&str>) -> anyhow::Result<Artifact> {
        let what = format!("{kind} {name}:{}", version.unwrap_or("latest"));
        let a: Artifact = match version {
            Some(v) => {
                let path = format!("/api/v1/{kind}_repositories/{name}/{kind}s/{v}");
                self.send(&what, self.req(reqwest::Method::GET, &path))
                    .await?
                    .json()
                    .await
                    .with_context(|| what.clone())?
            }
            None => {
                let path = format!("/api/v1/{kind}_repositories/{name}/{kind}s?start=0&count=1");
                let l: List = self.send(&what, self.req(reqwest::Method::GET, &path)).await?.json().await?;
                l.items.into_iter().next().with_context(|| format!("{what}: the repository has no versions"))?
            }
        };
        if a.upload_status != yatai_core::upload::UploadStatus::Success {
            bail!("{kind} {name}:{} is not fully uploaded (upload_status {:?})", a.version, a.upload_status);
        }
        Ok(a)
    }

    /// Streams an artifact's archive to `dest` and extracts it.
    async fn download(&self, kind: &str, name: &str, a: &Artifact, work: &Path, dest: &Path) -> anyhow::Result<()> {
        let base = format!("/api/v1/{kind}_repositories/{name}/{kind}s/{}", a.version);
        let what = format!("download of {kind} {name}:{}", a.version);
        let resp = match a.transmission_strategy.as_deref() {
            Some("proxy") => self.send(&what, self.req(reqwest::Method::GET, &format!("{base}/download"))).await?,
            _ => {
                let p: Artifact = self
                    .send(&what, self.req(reqwest::Method::PATCH, &format!("{base}/presign_download_url")))
                    .await?
                    .json()
                    .await?;
                if p.presigned_download_url.is_empty() {
                    self.send(&what, self.req(reqwest::Method::GET, &format!("{base}/download"))).await?
                } else {
                    self.send(&what, self.http.get(&p.presigned_download_url)).await?
                }
            }
        };
        tokio::fs::create_dir_all(work).await?;
        let archive = tempfile::NamedTempFile::new_in(work)?;
        let mut f = tokio::fs::File::from_std(archive.reopen()?);
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            f.write_all(&chunk.with_context(|| what.clone())?).await?;
        }
        f.flush().await?;
        let (path, dest) = (archive.path().to_path_buf(), dest.to_path_buf());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            tarball::extract_safe(tarball::open_archive(&path)?, &dest)
        })
        .await?
        .with_context(|| format!("extracting the {kind} archive of {name}:{}", a.version))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl BentoSource for YataiSource {
    async fn fetch_bento(&self, tag: &BentoTag, work: &Path) -> anyhow::Result<PathBuf> {
        let a = self.artifact("bento", &tag.name, tag.version.as_deref()).await?;
        let dest = work.join("bento");
        self.download("bento", &tag.name, &a, work, &dest).await?;
        let info = BentoInfo::load(&dest)?;
        if info.name != tag.name || info.version != a.version {
            bail!("the server sent bento {} for {}:{}", info.tag(), tag.name, a.version);
        }
        Ok(dest)
    }

    async fn fetch_model(&self, model: &ModelRef, _bento_dir: &Path, work: &Path) -> anyhow::Result<PathBuf> {
        let a = self.artifact("model", &model.name, Some(&model.version)).await?;
        let dest = work.join("models").join(&model.name).join(&model.version);
        self.download("model", &model.name, &a, work, &dest).await?;
        if !dest.join("model.yaml").is_file() {
            bail!("the archive of model {} has no model.yaml", model.tag());
        }
        Ok(dest)
    }

    async fn model_key(&self, model: &ModelRef) -> anyhow::Result<Option<String>> {
        let a = self.artifact("model", &model.name, Some(&model.version)).await?;
        let size = a.manifest.as_ref().and_then(|m| m.get("size_bytes")).cloned();
        Ok(a.upload_finished_at.map(|t| format!("yatai|{}|{}|{t}|{size:?}", self.endpoint, model.tag())))
    }

    fn describe(&self) -> String {
        format!("yatai server {}", self.endpoint)
    }
}
