//! A thin OCI distribution client over reqwest (the workspace's 0.13).
//!
//! Why not oci-client 0.18: its `mount_blob` drops the upload session on a 202 and asks for a
//! token scoped to the target repository only, so cross-repository mounts fail on token-auth
//! registries; `push` uploads every layer without checking; `push_blob` wants the whole blob in
//! memory; and it has no docker config.json reader. What we need is small: HEAD,
//! mount-or-continue, a monolithic streamed PUT from a file, manifest GET/HEAD/PUT, and the
//! Basic/Bearer token dance with several scopes.

pub mod auth;
pub mod reference;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{self, HeaderMap};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

pub use auth::Credentials;
pub use reference::ImageRef;

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry} is unreachable: {detail}")]
    Unreachable { registry: String, detail: String },
    #[error("registry {registry} refused the credentials for {what} (HTTP {status}){hint}: {body}")]
    Unauthorized { registry: String, what: String, status: u16, hint: String, body: String },
    #[error("{what}: not found in {registry}")]
    NotFound { registry: String, what: String },
    #[error("{what}: registry {registry} answered HTTP {status}: {body}")]
    Status { registry: String, what: String, status: u16, body: String },
    #[error("{what}: {detail}")]
    Protocol { what: String, detail: String },
}

pub type Result<T> = std::result::Result<T, RegistryError>;

#[derive(Debug, Clone)]
enum Scheme {
    Anonymous,
    Basic,
    Bearer { realm: String, service: Option<String> },
}

/// One registry host.
pub struct Registry {
    http: reqwest::Client,
    host: String,
    base: String,
    creds: Option<Credentials>,
    scheme: Mutex<Option<Scheme>>,
    /// Bearer tokens by their scope set.
    tokens: Mutex<HashMap<String, String>>,
}

pub enum Mount {
    Mounted,
    /// The registry opened an upload session instead (202); continue it with a PUT.
    Upload(String),
}

impl Registry {
    /// `host` is the API host (`registry-1.docker.io` for the Hub); `plain_http` speaks http.
    pub fn new(host: &str, plain_http: bool, creds: Option<Credentials>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("yatai-rs-build/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            // No read timeout: a registry sends nothing while a multi-GB model layer uploads.
            .tcp_keepalive(Duration::from_secs(30))
            .build()?;
        let base = format!("{}://{host}", if plain_http { "http" } else { "https" });
        Ok(Self {
            http,
            host: host.to_string(),
            base,
            creds,
            scheme: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn absolute(&self, location: &str) -> Result<String> {
        let base = reqwest::Url::parse(&self.base).expect("valid base");
        base.join(location).map(|u| u.to_string()).map_err(|e| RegistryError::Protocol {
            what: "upload location".into(),
            detail: format!("bad Location {location:?}: {e}"),
        })
    }

    /// Sends the request built by `build` (called again for a retry after an auth challenge),
    /// authenticating for `scopes` (`repository:NAME:pull[,push]`).
    async fn send(
        &self,
        what: &str,
        scopes: &[String],
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Sync),
    ) -> Result<Response> {
        for attempt in 0..2 {
            let mut req = build(&self.http);
            if let Some(h) = self.auth_header(scopes) {
                req = req.header(header::AUTHORIZATION, h);
            }
            let resp = req.send().await.map_err(|e| self.transport_error(what, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge =
                resp.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = resp.text().await.unwrap_or_default();
            if attempt == 1 {
                return Err(self.unauthorized(what, 401, body));
            }
            match challenge.as_deref().map(parse_challenge) {
                Some(Some(Scheme::Basic)) => {
                    if self.creds.is_none() {
                        return Err(self.unauthorized(what, 401, body));
                    }
                    *self.scheme.lock().unwrap() = Some(Scheme::Basic);
                }
                Some(Some(Scheme::Bearer { realm, service })) => {
                    let token = self.fetch_token(what, &realm, service.as_deref(), scopes).await?;
                    *self.scheme.lock().unwrap() = Some(Scheme::Bearer { realm, service });
                    self.tokens.lock().unwrap().insert(scopes.join(" "), token);
                }
                _ => return Err(self.unauthorized(what, 401, body)),
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    fn auth_header(&self, scopes: &[String]) -> Option<String> {
        match self.scheme.lock().unwrap().clone()? {
            Scheme::Anonymous => None,
            Scheme::Basic => match &self.creds {
                Some(Credentials::Basic { username, password }) => Some(basic(username, password)),
                _ => None,
            },
            Scheme::Bearer { .. } => self.tokens.lock().unwrap().get(&scopes.join(" ")).map(|t| format!("Bearer {t}")),
        }
    }

    async fn fetch_token(&self, what: &str, realm: &str, service: Option<&str>, scopes: &[String]) -> Result<String> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scopes {
            query.push(("scope", s));
        }
        let req = match &self.creds {
            Some(Credentials::IdentityToken(rt)) => {
                let mut form =
                    vec![("grant_type", "refresh_token"), ("refresh_token", rt.as_str()), ("client_id", "yatai-rs")];
                form.extend(query.iter().copied());
                self.http.post(realm).form(&form)
            }
            Some(Credentials::Basic { username, password }) => {
                self.http.get(realm).query(&query).basic_auth(username, Some(password))
            }
            None => self.http.get(realm).query(&query),
        };
        let resp = req.send().await.map_err(|e| self.transport_error(&format!("token for {what}"), e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let body = resp.text().await.unwrap_or_default();
            return Err(self.unauthorized(&format!("token for {what}"), status.as_u16(), body));
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(RegistryError::Status {
                registry: self.host.clone(),
                what: format!("token for {what} from {realm}"),
                status: status.as_u16(),
                body,
            });
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = resp
            .json()
            .await
            .map_err(|e| RegistryError::Protocol { what: format!("token for {what}"), detail: e.to_string() })?;
        t.token.or(t.access_token).filter(|t| !t.is_empty()).ok_or_else(|| RegistryError::Protocol {
            what: format!("token for {what}"),
            detail: "the token endpoint returned no token".into(),
        })
    }

    fn unauthorized(&self, what: &str, status: u16, body: String) -> RegistryError {
        let hint = if self.creds.is_none() {
            " — no credentials for this registry in the docker config.json (`docker login` writes them)".to_string()
        } else {
            String::new()
        };
        RegistryError::Unauthorized {
            registry: self.host.clone(),
            what: what.to_string(),
            status,
            hint,
            body: trim(body),
        }
    }

    fn transport_error(&self, what: &str, e: reqwest::Error) -> RegistryError {
        let mut detail = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            src = s.source();
        }
        RegistryError::Unreachable { registry: self.host.clone(), detail: format!("{what}: {detail}") }
    }

    async fn status_error(&self, what: &str, resp: Response) -> RegistryError {
        let status = resp.status().as_u16();
        let body = trim(resp.text().await.unwrap_or_default());
        if status == 401 || status == 403 {
            return self.unauthorized(what, status, body);
        }
        if status == 404 {
            return RegistryError::NotFound { registry: self.host.clone(), what: what.to_string() };
        }
        RegistryError::Status { registry: self.host.clone(), what: what.to_string(), status, body }
    }

    /// `GET /v2/`: reachability, and which auth scheme the registry wants.
    pub async fn ping(&self) -> Result<()> {
        let resp = self.http.get(self.url("/v2/")).send().await.map_err(|e| self.transport_error("GET /v2/", e))?;
        let scheme = match resp.status() {
            s if s.is_success() => Scheme::Anonymous,
            StatusCode::UNAUTHORIZED => {
                let c = resp.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
                match c.and_then(parse_challenge) {
                    Some(s) => s,
                    None => return Err(self.status_error("GET /v2/", resp).await),
                }
            }
            _ => {
                return Err(self.status_error("GET /v2/ (is this an OCI registry?)", resp).await);
            }
        };
        if matches!(scheme, Scheme::Basic) && self.creds.is_none() {
            return Err(self.unauthorized("GET /v2/", 401, String::new()));
        }
        *self.scheme.lock().unwrap() = Some(scheme);
        Ok(())
    }

    /// The manifest named by `reference`: its bytes, media type and digest.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<(Vec<u8>, String, String)> {
        let what = format!("manifest {repo}:{reference}");
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let scopes = [pull(repo)];
        let resp = self.send(&what, &scopes, &|c| c.get(&url).header(header::ACCEPT, MANIFEST_ACCEPT)).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&what, resp).await);
        }
        let media = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&what, e))?.to_vec();
        let digest = crate::blob::sha256_digest(&bytes);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(RegistryError::Protocol { what, detail: format!("content has digest {digest}") });
        }
        Ok((bytes, media, digest))
    }

    /// The digest a tag points at, if the tag exists.
    pub async fn manifest_digest(&self, repo: &str, reference: &str) -> Result<Option<String>> {
        let what = format!("manifest {repo}:{reference}");
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let scopes = [pull(repo)];
        let resp = self.send(&what, &scopes, &|c| c.head(&url).header(header::ACCEPT, MANIFEST_ACCEPT)).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                if let Some(d) = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
                    return Ok(Some(d.to_string()));
                }
                Ok(Some(self.get_manifest(repo, reference).await?.2))
            }
            _ => Err(self.status_error(&what, resp).await),
        }
    }

    pub async fn blob_exists(&self, repo: &str, digest: &str, scopes: &[String]) -> Result<bool> {
        let what = format!("blob {digest} in {repo}");
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.send(&what, scopes, &|c| c.head(&url)).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            _ => Err(self.status_error(&what, resp).await),
        }
    }

    /// Streams a blob (follows the registry's redirects to object storage).
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Response> {
        let what = format!("blob {digest} from {repo}");
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.send(&what, &[pull(repo)], &|c| c.get(&url)).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&what, resp).await);
        }
        Ok(resp)
    }

    /// Asks the registry to mount `digest` from `from` into `repo`. Per the distribution spec a
    /// 202 means "not mounted, here is an upload session instead", which we continue.
    pub async fn mount_blob(&self, repo: &str, digest: &str, from: &str, scopes: &[String]) -> Result<Mount> {
        let what = format!("mount of {digest} from {from} into {repo}");
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"));
        let resp = self.send(&what, scopes, &|c| c.post(&url).header(header::CONTENT_LENGTH, "0")).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Upload(self.location(&what, resp.headers())?)),
            _ => Err(self.status_error(&what, resp).await),
        }
    }

    pub async fn start_upload(&self, repo: &str, scopes: &[String]) -> Result<String> {
        let what = format!("upload to {repo}");
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let resp = self.send(&what, scopes, &|c| c.post(&url).header(header::CONTENT_LENGTH, "0")).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(&what, resp).await);
        }
        self.location(&what, resp.headers())
    }

    fn location(&self, what: &str, h: &HeaderMap) -> Result<String> {
        let loc = h.get(header::LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| RegistryError::Protocol {
            what: what.to_string(),
            detail: "202 without a Location header".into(),
        })?;
        self.absolute(loc)
    }

    /// Finishes an upload session with the whole blob in one PUT, streamed from `path`.
    pub async fn put_blob_file(
        &self,
        location: &str,
        digest: &str,
        path: &Path,
        size: u64,
        scopes: &[String],
    ) -> Result<()> {
        let what = format!("upload of blob {digest}");
        let url = with_digest(location, digest);
        let path = path.to_path_buf();
        let build = move |c: &reqwest::Client| {
            let path = path.clone();
            let stream = futures_util::stream::once(async move { tokio::fs::File::open(path).await }).map_ok_file();
            c.put(&url)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_LENGTH, size.to_string())
                .body(reqwest::Body::wrap_stream(stream))
        };
        let resp = self.send(&what, scopes, &build).await?;
        self.check_put(&what, digest, resp).await
    }

    /// Finishes an upload session with a body streamed from elsewhere (a blob copied from
    /// another registry). Not replayable, so the session must already be authorised.
    pub async fn put_blob_stream(
        &self,
        location: &str,
        digest: &str,
        size: u64,
        body: reqwest::Body,
        scopes: &[String],
    ) -> Result<()> {
        let what = format!("upload of blob {digest}");
        let mut req = self
            .http
            .put(with_digest(location, digest))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size.to_string())
            .body(body);
        if let Some(h) = self.auth_header(scopes) {
            req = req.header(header::AUTHORIZATION, h);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&what, e))?;
        self.check_put(&what, digest, resp).await
    }

    async fn check_put(&self, what: &str, digest: &str, resp: Response) -> Result<()> {
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self.status_error(what, resp).await);
        }
        if let Some(d) = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok())
            && d != digest
        {
            return Err(RegistryError::Protocol { what: what.to_string(), detail: format!("registry stored {d}") });
        }
        Ok(())
    }

    /// Abandons an upload session (best effort; registries purge stale ones anyway).
    pub async fn cancel_upload(&self, location: &str, scopes: &[String]) {
        let url = location.to_string();
        let _ = self.send("cancel upload", scopes, &|c| c.request(Method::DELETE, &url)).await;
    }

    /// `PUT /v2/<repo>/manifests/<tag>`: the atomic commit of a build. Returns the digest.
    pub async fn put_manifest(&self, repo: &str, tag: &str, bytes: &[u8], media_type: &str) -> Result<String> {
        let what = format!("manifest {repo}:{tag}");
        let url = self.url(&format!("/v2/{repo}/manifests/{tag}"));
        let scopes = [push(repo)];
        let body = bytes.to_vec();
        let resp = self
            .send(&what, &scopes, &|c| c.put(&url).header(header::CONTENT_TYPE, media_type).body(body.clone()))
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&what, resp).await);
        }
        let digest = crate::blob::sha256_digest(bytes);
        if let Some(d) = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok())
            && d != digest
        {
            return Err(RegistryError::Protocol { what, detail: format!("registry computed {d}, we sent {digest}") });
        }
        Ok(digest)
    }
}

trait FileStreamExt {
    fn map_ok_file(self) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static;
}

impl<S> FileStreamExt for S
where
    S: futures_util::Stream<Item = std::io::Result<tokio::fs::File>> + Send + 'static,
{
    fn map_ok_file(self) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
        use futures_util::StreamExt;
        self.flat_map(|f| match f {
            Ok(f) => tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).left_stream(),
            Err(e) => futures_util::stream::once(async move { Err(e) }).right_stream(),
        })
    }
}

pub fn pull(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

pub fn push(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

fn basic(u: &str, p: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
}

fn trim(mut s: String) -> String {
    s = s.trim().to_string();
    if s.len() > 500 {
        let mut cut = 500;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
fn parse_challenge(h: &str) -> Option<Scheme> {
    let (scheme, params) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Scheme::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut map = HashMap::new();
    let mut rest = params;
    while let Some((k, v)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, tail) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (&v[..end], &v[end..]),
                None => (v, ""),
            }
        };
        map.insert(k, val.to_string());
        rest = tail;
    }
    Some(Scheme::Bearer { realm: map.remove("realm")?, service: map.remove("service") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let s = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#,
        )
        .unwrap();
        match s {
            Scheme::Bearer { realm, service } => {
                assert_eq!(realm, "https://auth.docker.io/token");
                assert_eq!(service.as_deref(), Some("registry.docker.io"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Scheme::Basic)));
        assert!(parse_challenge("Negotiate").is_none());
    }

    #[test]
    fn digest_is_appended_to_the_upload_location() {
        assert_eq!(
            with_digest("http://h/v2/r/blobs/uploads/u?_state=x", "sha256:a"),
            "http://h/v2/r/blobs/uploads/u?_state=x&digest=sha256:a"
        );
        assert_eq!(with_digest("http://h/u", "sha256:a"), "http://h/u?digest=sha256:a");
    }
}
