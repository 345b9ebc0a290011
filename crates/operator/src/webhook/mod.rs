//! The conversion webhook: `/convert` over HTTPS for BentoDeployment v1alpha3 ⇄ v2alpha1,
//! without cert-manager.
//!
//! - [`cert`]: a CA and a serving certificate, kept in the Secret
//!   `yatai-operator-webhook-cert` of the operator's namespace, rotated before they expire.
//! - [`review`]: the ConversionReview itself (pure).
//! - The CRD's `spec.conversion` is pointed at this webhook, with the CA as `caBundle`: the
//!   URL of `--webhook-url` when the operator runs outside the cluster, else the Service
//!   `yatai-operator` in its namespace. It is checked every minute, so that re-applying the
//!   CRDs (which resets the stanza) heals by itself.
//!
//! Every replica serves the webhook, leader or not: the API server may call any of them.

pub mod cert;
pub mod review;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use yatai_kube_api::crds::{self, WEBHOOK_PATH, WebhookEndpoint};

use crate::context::{Context, FIELD_MANAGER, Settings};

/// The Service in front of the operator's pods, in its namespace.
pub const SERVICE_NAME: &str = "yatai-operator";
/// `bentodeployments.serving.yatai.ai`.
pub const CRD_NAME: &str = "bentodeployments.serving.yatai.ai";

/// A ConversionReview of a long list can be big; anything past this is not one.
const MAX_BODY: usize = 64 << 20;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the Secret and the CRD are checked once all is well.
const RECHECK: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Serves `/convert` until the process stops. Fails at once if the address cannot be bound;
/// waits (retrying, with the reason logged) until the certificate Secret can be read or created.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let settings = ctx.settings.clone();
    let listener = TcpListener::bind(settings.webhook_listen)
        .await
        .with_context(|| format!("the conversion webhook cannot listen on {}", settings.webhook_listen))?;
    let endpoint = endpoint(&settings);
    let names = cert::names_for(&settings.operator_namespace, SERVICE_NAME, settings.webhook_url.as_deref())?;

    let mut backoff = Backoff::default();
    let bundle = loop {
        match cert::ensure(ctx.client.clone(), &settings.operator_namespace, &names).await {
            Ok(bundle) => break bundle,
            Err(e) => {
                let wait = backoff.next();
                tracing::error!("conversion webhook: no certificate yet, retrying in {wait:?}: {e:#}");
                tokio::time::sleep(wait).await;
            }
        }
    };
    let resolver = Arc::new(Resolver(RwLock::new(bundle.certified_key().map_err(anyhow::Error::msg)?)));
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(cert::provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    tracing::info!(
        listen = %settings.webhook_listen,
        endpoint = ?endpoint,
        "conversion webhook serving {WEBHOOK_PATH}"
    );
    let _upkeep = AbortOnDrop(tokio::spawn(upkeep(ctx.clone(), endpoint, names, bundle, resolver)));
    serve(listener, acceptor).await
}

/// Ends the upkeep task with the webhook, however `run` ends (its caller may abort it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the CRD should send conversions.
pub fn endpoint(settings: &Settings) -> WebhookEndpoint {
    match &settings.webhook_url {
        Some(url) => WebhookEndpoint::Url(url.clone()),
        None => WebhookEndpoint::Service { namespace: settings.operator_namespace.clone(), name: SERVICE_NAME.into() },
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor) -> anyhow::Result<()> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: transient, and the listener is fine.
                tracing::warn!("conversion webhook: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, "conversion webhook: TLS handshake: {e}"),
                Err(_) => return tracing::debug!(%peer, "conversion webhook: TLS handshake timed out"),
            };
            let service = hyper::service::service_fn(handle);
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await
            {
                tracing::debug!(%peer, "conversion webhook: connection: {e}");
            }
        });
    }
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if request.uri().path() != WEBHOOK_PATH {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            format!("not found; the conversion webhook answers POST {WEBHOOK_PATH}"),
        ));
    }
    if request.method() != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, format!("{WEBHOOK_PATH} takes a POSTed ConversionReview")));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Ok(plain(StatusCode::PAYLOAD_TOO_LARGE, format!("reading the ConversionReview: {e}"))),
    };
    // Converting a long list is CPU work; keep it off the threads that serve other requests.
    let answer = tokio::task::spawn_blocking(move || serde_json::to_vec(&review::answer(&body))).await;
    Ok(match answer {
        Ok(Ok(json)) => Response::builder()
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "building the response".into())),
        Ok(Err(e)) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("serializing the ConversionReview: {e}")),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("the conversion panicked: {e}")),
    })
}

fn plain(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message + "\n")));
    *response.status_mut() = status;
    response
}

/// The certificate being served; replaced in place when the Secret rotates.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Keeps the CRD pointing at us with our CA, and the served certificate fresh: at once, then
/// every [`RECHECK`], backing off while something fails.
async fn upkeep(
    ctx: Context,
    endpoint: WebhookEndpoint,
    names: Vec<String>,
    mut bundle: cert::Bundle,
    resolver: Arc<Resolver>,
) {
    let namespace = ctx.settings.operator_namespace.clone();
    let mut backoff = Backoff::default();
    let mut first = true;
    loop {
        let mut wait = RECHECK;
        if !first {
            match cert::ensure(ctx.client.clone(), &namespace, &names).await {
                Ok(fresh) if fresh != bundle => match fresh.certified_key() {
                    Ok(key) => {
                        *resolver.0.write().unwrap_or_else(|e| e.into_inner()) = key;
                        tracing::info!("conversion webhook: serving the certificate now in the Secret");
                        bundle = fresh;
                    }
                    Err(e) => tracing::error!("conversion webhook: the new certificate is unusable: {e}"),
                },
                Ok(_) => {}
                Err(e) => {
                    wait = backoff.next();
                    tracing::warn!("conversion webhook: checking the certificate, retrying in {wait:?}: {e:#}");
                }
            }
        }
        first = false;
        match point_crd(&ctx, &endpoint, bundle.ca_pem.as_bytes()).await {
            Ok(()) => backoff = Backoff::default(),
            Err(e) => {
                wait = wait.min(backoff.next());
                tracing::warn!("conversion webhook: {e:#}; retrying in {wait:?}");
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// Writes the conversion stanza into the BentoDeployment CRD unless it is already there. A
/// JSON merge patch of that one field: the rest of the CRD belongs to whoever installed it.
async fn point_crd(ctx: &Context, endpoint: &WebhookEndpoint, ca_pem: &[u8]) -> anyhow::Result<()> {
    let crds_api: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let Some(crd) = crds_api.get_opt(CRD_NAME).await.with_context(|| format!("reading the CRD {CRD_NAME}"))? else {
        anyhow::bail!(
            "the CRD {CRD_NAME} is not installed, so nothing calls this webhook yet \
             (install it with `yatai crds | kubectl apply --server-side -f -`)"
        );
    };
    let desired = crds::conversion(endpoint, Some(ca_pem));
    if crd.spec.conversion.as_ref() == Some(&desired) {
        return Ok(());
    }
    let mut conversion = serde_json::to_value(&desired).context("serializing the conversion stanza")?;
    // A merge patch keeps keys it does not mention: say explicitly that the other way of
    // reaching the webhook (Service or URL) is gone.
    if let Some(client_config) = conversion.pointer_mut("/webhook/clientConfig").and_then(|c| c.as_object_mut()) {
        for key in ["service", "url"] {
            client_config.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    let patch = serde_json::json!({ "spec": { "conversion": conversion } });
    crds_api
        .patch(
            CRD_NAME,
            &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
            &Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("pointing the CRD {CRD_NAME} at the webhook"))?;
    tracing::info!(endpoint = ?endpoint, "the CRD {CRD_NAME} now converts through this webhook");
    Ok(())
}

/// 1 s, doubling up to a minute.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_secs(1))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        now
    }
}
