//! The built-in reverse proxy in front of each deployment.
//!
//! Each deployment has an [`Endpoint`]: the set of ready replicas that take
//! traffic, a pool of kept-alive connections to each, and request metrics.
//! A request goes to the replica with the fewest requests in flight; if a
//! replica refuses the connection (it is dying) or a pooled connection turns
//! out closed before the request was sent, the request is retried on another
//! replica. Bodies stream both ways; nothing is buffered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Idle connections kept per replica.
const POOL_MAX: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Latency histogram bucket bounds, in milliseconds.
pub const LATENCY_BUCKETS_MS: [u64; 14] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, u64::MAX];

pub fn full_body(b: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

/// One replica as the proxy sees it.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    inflight: AtomicUsize,
    idle: Mutex<Vec<SendRequest<ProxyBody>>>,
}

impl Backend {
    pub fn new(id: &str, addr: SocketAddr) -> Arc<Backend> {
        Arc::new(Backend { id: id.to_owned(), addr, inflight: AtomicUsize::new(0), idle: Mutex::new(Vec::new()) })
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// A ready connection: a pooled one if any is still usable, else a new one.
    async fn connection(&self) -> Result<SendRequest<ProxyBody>, BoxError> {
        loop {
            let pooled = self.idle.lock().expect("lock").pop();
            let Some(mut sender) = pooled else { break };
            if sender.is_closed() {
                continue;
            }
            if tokio::time::timeout(Duration::from_millis(50), sender.ready()).await.is_ok_and(|r| r.is_ok()) {
                return Ok(sender);
            }
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr)).await??;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn give_back(&self, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("lock");
        if idle.len() < POOL_MAX {
            idle.push(sender);
        }
    }

    /// Drops pooled connections (the replica is going away).
    pub fn close_idle(&self) {
        self.idle.lock().expect("lock").clear();
    }
}

/// Request counters of an endpoint.
#[derive(Default)]
pub struct EndpointMetrics {
    pub requests: AtomicU64,
    /// Responses with a 5xx status, and requests the proxy could not serve.
    pub errors: AtomicU64,
    pub latency_buckets: [AtomicU64; 14],
    pub latency_sum_us: AtomicU64,
}

impl EndpointMetrics {
    fn observe(&self, status: u16, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let ms = elapsed.as_millis() as u64;
        let i = LATENCY_BUCKETS_MS.iter().position(|b| ms < *b).unwrap_or(LATENCY_BUCKETS_MS.len() - 1);
        self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn counts(&self) -> (u64, u64, [u64; 14]) {
        let mut b = [0u64; 14];
        for (i, v) in self.latency_buckets.iter().enumerate() {
            b[i] = v.load(Ordering::Relaxed);
        }
        (self.requests.load(Ordering::Relaxed), self.errors.load(Ordering::Relaxed), b)
    }
}

/// Who may call an endpoint whose deployment has access authorization.
#[derive(Clone)]
pub struct AccessRule {
    pub org_uid: String,
    /// `None` until the server has provided one: every request is refused.
    pub verifier: Option<Arc<dyn crate::AccessVerifier>>,
}

/// Paths that answer without a token: they say whether the replicas are up
/// and nothing else, and probes (load balancers, `bentoml` clients waiting
/// for readiness) call them bare.
const OPEN_PATHS: [&str; 3] = ["/readyz", "/livez", "/healthz"];

pub struct Endpoint {
    pub name: String,
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    pub metrics: EndpointMetrics,
    rr: AtomicUsize,
    access: RwLock<Option<AccessRule>>,
}

impl Endpoint {
    pub fn new(name: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            name: name.to_owned(),
            backends: RwLock::new(Arc::new(Vec::new())),
            metrics: EndpointMetrics::default(),
            rr: AtomicUsize::new(0),
            access: RwLock::new(None),
        })
    }

    /// Requires a token from now on (`Some`), or lets every request through.
    pub fn set_access(&self, rule: Option<AccessRule>) {
        *self.access.write().expect("lock") = rule;
    }

    /// Serves one request: checks its token if the deployment requires one
    /// (the token is then removed, so that the deployment's code never sees
    /// the caller's API token), and forwards it.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<ProxyBody>,
        client: Option<SocketAddr>,
    ) -> Response<ProxyBody> {
        let rule = self.access.read().expect("lock").clone();
        if let Some(rule) = rule
            && !(matches!(*req.method(), http::Method::GET | http::Method::HEAD)
                && OPEN_PATHS.contains(&req.uri().path()))
        {
            let started = Instant::now();
            let token = bearer_token(req.headers());
            let verdict = match &rule.verifier {
                Some(v) => v.verify(&rule.org_uid, token.as_deref()).await,
                None => Err(crate::AccessDenied {
                    status: 503,
                    message: "access authorization is on, and the server cannot check tokens yet".into(),
                }),
            };
            if let Err(denied) = verdict {
                let status = StatusCode::from_u16(denied.status).unwrap_or(StatusCode::UNAUTHORIZED);
                let mut resp = self.error_response(status, &denied.message, started);
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return resp;
            }
            req.headers_mut().remove(header::AUTHORIZATION);
        }
        self.forward(req, client).await
    }

    /// Replaces the replicas that take traffic.
    pub fn set_backends(&self, backends: Vec<Arc<Backend>>) {
        *self.backends.write().expect("lock") = Arc::new(backends);
    }

    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.read().expect("lock").clone()
    }

    /// Requests in flight across all replicas.
    pub fn inflight(&self) -> usize {
        self.backends().iter().map(|b| b.inflight()).sum()
    }

    /// The ready replica with the fewest requests in flight, skipping `tried`.
    fn pick(&self, tried: &[String]) -> Option<Arc<Backend>> {
        let all = self.backends();
        let n = all.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|i| &all[(start + i) % n]).filter(|b| !tried.contains(&b.id)).min_by_key(|b| b.inflight()).cloned()
    }

    /// Forwards one request to a replica and streams the answer back.
    async fn forward(self: Arc<Self>, req: Request<ProxyBody>, client: Option<SocketAddr>) -> Response<ProxyBody> {
        let started = Instant::now();
        let mut req = prepare_request(req, client);
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = String::from("no replica is ready");
        loop {
            let Some(backend) = self.pick(&tried) else {
                return self.error_response(StatusCode::SERVICE_UNAVAILABLE, &last_error, started);
            };
            tried.push(backend.id.clone());
            let mut sender = match backend.connection().await {
                Ok(s) => s,
                Err(e) => {
                    last_error = format!("replica {} refused the connection: {e}", backend.id);
                    continue;
                }
            };
            backend.inflight.fetch_add(1, Ordering::Relaxed);
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let tracked = Tracked {
                        inner: body,
                        done: Some(Done { endpoint: self.clone(), backend, sender: Some(sender), status, started }),
                    };
                    return Response::from_parts(parts, tracked.boxed_unsync());
                }
                Err(mut e) => {
                    backend.inflight.fetch_sub(1, Ordering::Relaxed);
                    match e.take_message() {
                        // Not sent: safe to try another replica.
                        Some(r) => {
                            last_error = format!("replica {} closed the connection: {}", backend.id, e.error());
                            req = r;
                        }
                        None => {
                            return self.error_response(
                                StatusCode::BAD_GATEWAY,
                                &format!("replica {} failed while answering: {}", backend.id, e.error()),
                                started,
                            );
                        }
                    }
                }
            }
        }
    }

    fn error_response(&self, status: StatusCode, message: &str, started: Instant) -> Response<ProxyBody> {
        self.metrics.observe(status.as_u16(), started.elapsed());
        let body =
            serde_json::json!({"code": "proxy_error", "message": format!("deployment {}: {message}", self.name)});
        let mut resp = Response::new(full_body(body.to_string()));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}

/// The token of `Authorization: Bearer <token>`, as `bentoml` clients send
/// it (`SyncHTTPClient(url, token=…)`, or `BENTO_CLOUD_API_KEY`).
fn bearer_token(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned()).filter(|t| !t.is_empty())
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    if let Some(extra) = headers.get(header::CONNECTION).and_then(|v| v.to_str().ok()).map(str::to_owned) {
        for name in extra.split(',') {
            headers.remove(name.trim());
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

fn prepare_request(req: Request<ProxyBody>, client: Option<SocketAddr>) -> Request<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(addr) = client {
        let value = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", addr.ip()),
            None => addr.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            parts.headers.insert("x-forwarded-for", v);
        }
    }
    if !parts.headers.contains_key("x-forwarded-proto") {
        parts.headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    // HTTP/1.1 to the replica, origin-form target.
    if let Some(pq) = parts.uri.path_and_query().cloned() {
        parts.uri = http::Uri::from(pq);
    }
    parts.version = http::Version::HTTP_11;
    Request::from_parts(parts, body)
}

/// Bookkeeping when a response finishes (or is dropped): request count and
/// latency, in-flight count, and the connection back to the pool.
struct Done {
    endpoint: Arc<Endpoint>,
    backend: Arc<Backend>,
    sender: Option<SendRequest<ProxyBody>>,
    status: u16,
    started: Instant,
}

impl Done {
    fn finish(mut self, complete: bool) {
        self.backend.inflight.fetch_sub(1, Ordering::Relaxed);
        self.endpoint.metrics.observe(self.status, self.started.elapsed());
        if complete && let Some(s) = self.sender.take() {
            self.backend.give_back(s);
        }
    }
}

struct Tracked {
    inner: Incoming,
    done: Option<Done>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            d.finish(false);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(d) = this.done.take() {
                    d.finish(true);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(d) = this.done.take() {
                    d.finish(false);
                }
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(f))) => {
                if this.inner.is_end_stream()
                    && let Some(d) = this.done.take()
                {
                    d.finish(true);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves an endpoint on its own listener, with the server's client limits, until `stop` fires.
pub async fn serve(
    endpoint: Arc<Endpoint>,
    listener: TcpListener,
    limits: yatai_http_server::Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let handle = move |req: Request<yatai_http_server::IdleTimeout>, peer: SocketAddr| {
        let endpoint = endpoint.clone();
        async move { endpoint.handle(req.map(|b| b.boxed_unsync()), Some(peer)).await }
    };
    let stopped = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = yatai_http_server::serve(listener, handle, limits, stopped).await {
        tracing::warn!(error = %e, "a deployment's endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OnlyGood;

    #[async_trait::async_trait]
    impl crate::AccessVerifier for OnlyGood {
        async fn verify(&self, org_uid: &str, token: Option<&str>) -> Result<(), crate::AccessDenied> {
            match token {
                Some("good") if org_uid == "org-a" => Ok(()),
                Some(_) => Err(crate::AccessDenied { status: 403, message: "not this one".into() }),
                None => Err(crate::AccessDenied { status: 401, message: "no token".into() }),
            }
        }
    }

    fn request(method: &str, path: &str, auth: Option<&str>) -> Request<ProxyBody> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(full_body("")).unwrap()
    }

    #[tokio::test]
    async fn a_deployment_with_access_authorization_needs_a_bearer_token() {
        let ep = Endpoint::new("d");
        ep.set_access(Some(AccessRule { org_uid: "org-a".into(), verifier: Some(Arc::new(OnlyGood)) }));
        let status = |r: Response<ProxyBody>| r.status().as_u16();
        assert_eq!(status(ep.clone().handle(request("POST", "/classify", None), None).await), 401);
        assert_eq!(status(ep.clone().handle(request("POST", "/classify", Some("Bearer bad")), None).await), 403);
        assert_eq!(status(ep.clone().handle(request("POST", "/classify", Some("Basic good")), None).await), 401);
        // Past the check, no replica is ready: 503.
        assert_eq!(status(ep.clone().handle(request("POST", "/classify", Some("Bearer good")), None).await), 503);
        assert_eq!(status(ep.clone().handle(request("GET", "/readyz", None), None).await), 503);
        assert_eq!(status(ep.clone().handle(request("POST", "/readyz", None), None).await), 401);
        // Without a verifier nothing gets through.
        ep.set_access(Some(AccessRule { org_uid: "org-a".into(), verifier: None }));
        assert_eq!(status(ep.clone().handle(request("POST", "/classify", Some("Bearer good")), None).await), 503);
        let denied = ep.clone().handle(request("POST", "/classify", Some("Bearer good")), None).await;
        assert!(denied.headers().contains_key(header::WWW_AUTHENTICATE));
        // Off: anyone.
        ep.set_access(None);
        assert_eq!(status(ep.clone().handle(request("POST", "/classify", None), None).await), 503);
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer  yatai_x "));
        assert_eq!(bearer_token(&h).as_deref(), Some("yatai_x"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer yatai_y"));
        assert_eq!(bearer_token(&h).as_deref(), Some("yatai_y"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }
}
