//! The conversion webhook against a real API server: the operator runs outside the cluster, so
//! it points the CRD at `https://127.0.0.1:<port>/convert` with its own CA; a v1alpha3 manifest
//! as Yatai writes it is stored (as v2alpha1) and reads back in both versions; a v2alpha1
//! object reads as v1alpha3; a malformed tag is refused with a message; a restarted webhook
//! serves the certificate from the Secret again.
//!
//! Everything runs in one test: the CRD is cluster-scoped and points at one URL at a time, so
//! two webhooks of this process would keep re-pointing it at each other.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use yatai_kube_api::crds::{self, WebhookEndpoint};
use yatai_kube_api::serving::conversion::BENTO_TAG_ANNOTATION;
use yatai_kube_api::serving::v2alpha1;
use yatai_kube_testbed::{Testbed, poll_until};
use yatai_operator::webhook::{self, CRD_NAME, cert::SECRET_NAME};
use yatai_operator::{Context, Namespaces, Settings};

const WAIT: Duration = Duration::from_secs(60);

/// Installs yatai's CRDs and waits until they are served. Safe to run from several tests and
/// test binaries at once: a server-side apply of the same content is a no-op, and `force`
/// settles a race between two appliers. The conversion stanza is left out: it is the running
/// webhook's to write, and applying the default (the in-cluster Service, no CA) would undo
/// another test's webhook.
async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("yatai-operator-tests").force();
    for mut crd in crds::all(&WebhookEndpoint::default()) {
        crd.spec.conversion = None;
        crd.metadata.managed_fields = None;
        let name = crd.metadata.name.clone().context("a CRD without a name")?;
        api.patch(&name, &params, &Patch::Apply(&crd)).await.with_context(|| format!("applying the CRD {name}"))?;
        yatai_operator::crds::wait_established(client, &name, WAIT).await?;
    }
    Ok(())
}

fn v1alpha3() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.yatai.ai", "v1alpha3", "BentoDeployment"),
        "bentodeployments",
    )
}

/// A manifest as Yatai's api-server writes it.
fn yatai_manifest(name: &str, tag: &str) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "serving.yatai.ai/v1alpha3",
        "kind": "BentoDeployment",
        "metadata": {"name": name, "labels": {"yatai.ai/creator": "admin"}},
        "spec": {
            "bento_tag": tag,
            "annotations": {"yatai.ai/deployment-strategy": "RollingUpdate"},
            "resources": {"requests": {"cpu": "500m", "memory": "500Mi"}, "limits": {"cpu": "1000m", "memory": "1Gi"}},
            "autoscaling": {"min_replicas": 2, "max_replicas": 5, "cpu": 70, "qps": 100},
            "envs": [{"key": "LOG_LEVEL", "value": "info"}, {"key": "BENTOML_CONFIG_OPTIONS", "value": "api_server.traffic.timeout=60"}],
            "ingress": {"enabled": true, "tls": {"secretName": "iris-tls"}},
            "extra_pod_metadata": {"labels": {"tier": "inference"}},
            "extra_pod_spec": {"nodeSelector": {"pool": "cpu"}},
            "runners": [{"name": "iris_clf", "autoscaling": {"min_replicas": 1, "max_replicas": 4}}]
        }
    }))?)
}

/// A loopback port nobody listens on right now.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

fn start_webhook(
    client: kube::Client,
    namespace: &str,
) -> anyhow::Result<(String, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let addr = free_port()?;
    let mut settings = Settings::for_tests(Namespaces::Some(vec![namespace.into()]), namespace);
    settings.webhook_listen = addr;
    settings.webhook_url = Some(format!("https://{addr}"));
    let url = format!("https://{addr}/convert");
    Ok((url, tokio::spawn(webhook::run(Context::new(client, settings)))))
}

/// Waits until the CRD points at `url` and the API server converts through it: the probe,
/// stored as v2alpha1, reads as v1alpha3 with its tag.
async fn wait_for_conversion(client: &kube::Client, namespace: &str, url: &str) -> anyhow::Result<Vec<u8>> {
    let crds_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ca = poll_until(WAIT, &format!("the CRD to point at {url}"), || async {
        let crd = crds_api.get(CRD_NAME).await?;
        let config = crd.spec.conversion.and_then(|c| c.webhook).and_then(|w| w.client_config);
        Ok::<_, kube::Error>(config.filter(|c| c.url.as_deref() == Some(url)).and_then(|c| c.ca_bundle).map(|b| b.0))
    })
    .await?;
    let old: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &v1alpha3());
    poll_until(WAIT, "the probe to read as v1alpha3 through the webhook", || async {
        let probe = old.get("probe").await?;
        Ok::<_, kube::Error>((probe.data["spec"]["bento_tag"] == "probe:v1").then_some(()))
    })
    .await?;
    Ok(ca)
}

#[tokio::test]
async fn v1alpha3_and_v2alpha1_convert_through_the_webhook() -> anyhow::Result<()> {
    let testbed = Testbed::shared().await?;
    let ns = testbed.namespace("webhook").await?;
    let client = ns.client();
    install_crds(&client).await?;

    let (url, running) = start_webhook(client.clone(), ns.name())?;
    let new: Api<v2alpha1::BentoDeployment> = ns.api();
    let probe: v2alpha1::BentoDeployment = serde_json::from_value(json!({
        "apiVersion": "serving.yatai.ai/v2alpha1", "kind": "BentoDeployment",
        "metadata": {"name": "probe"}, "spec": {"bento": "probe--v1"}
    }))?;
    new.create(&PostParams::default(), &probe).await.context("creating a v2alpha1 BentoDeployment")?;
    let ca = wait_for_conversion(&client, ns.name(), &url).await?;
    ensure!(String::from_utf8_lossy(&ca).contains("BEGIN CERTIFICATE"), "caBundle is a PEM CA");

    // kubectl create -f yatai-manifest.yaml (v1alpha3).
    let old: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &v1alpha3());
    old.create(&PostParams::default(), &yatai_manifest("iris", "iris_classifier:4jwnpq2ia6g3baav")?)
        .await
        .context("creating a v1alpha3 BentoDeployment")?;

    // Read back as the storage version.
    let stored = new.get("iris").await?;
    assert_eq!(stored.spec.bento, "iris-classifier--4jwnpq2ia6g3baav");
    let annotations = stored.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get(BENTO_TAG_ANNOTATION).map(String::as_str), Some("iris_classifier:4jwnpq2ia6g3baav"));
    assert_eq!(stored.metadata.labels.unwrap_or_default().get("yatai.ai/creator").map(String::as_str), Some("admin"));
    let autoscaling = stored.spec.autoscaling.clone().context("autoscaling")?;
    assert_eq!((autoscaling.min_replicas, autoscaling.max_replicas), (2, 5));
    let metrics = serde_json::to_value(&autoscaling.metrics)?;
    assert_eq!(metrics[0]["resource"]["name"], "cpu");
    assert_eq!(metrics[0]["resource"]["target"]["averageUtilization"], 70);
    assert_eq!(metrics[1]["pods"]["metric"]["name"], "http_request");
    assert_eq!(metrics[1]["pods"]["target"]["averageValue"], "100");
    let envs: Vec<(String, Option<String>)> =
        stored.spec.envs.iter().map(|e| (e.name.clone(), e.value.clone())).collect();
    assert_eq!(envs[0], ("LOG_LEVEL".to_string(), Some("info".to_string())));
    assert_eq!(envs.len(), 2);
    assert!(stored.spec.ingress.enabled);
    assert_eq!(stored.spec.ingress.tls.as_ref().map(|t| t.secret_name.as_str()), Some("iris-tls"));
    assert_eq!(
        stored.spec.extra_pod_spec.as_ref().and_then(|p| p.node_selector.get("pool")).map(String::as_str),
        Some("cpu")
    );
    let runner_scaling = stored.spec.runners[0].autoscaling.as_ref().context("runner autoscaling")?;
    assert_eq!((runner_scaling.min_replicas, runner_scaling.max_replicas), (1, 4));
    assert_eq!(runner_scaling.metrics.len(), 1, "no metric given: cpu 80 %");

    // And as it was written.
    let back = old.get("iris").await?;
    let spec = &back.data["spec"];
    assert_eq!(spec["bento_tag"], "iris_classifier:4jwnpq2ia6g3baav", "the tag, underscore and all");
    assert_eq!(spec["autoscaling"], json!({"min_replicas": 2, "max_replicas": 5, "cpu": 70, "qps": 100}));
    assert_eq!(spec["envs"][1], json!({"key": "BENTOML_CONFIG_OPTIONS", "value": "api_server.traffic.timeout=60"}));
    assert_eq!(spec["extra_pod_metadata"]["labels"]["tier"], "inference");
    assert_eq!(spec["runners"][0]["name"], "iris_clf");

    // A v2alpha1 object, written without the annotation, as v1alpha3.
    let probe = old.get("probe").await?;
    assert_eq!(probe.data["spec"]["bento_tag"], "probe:v1");
    assert!(probe.data["spec"].get("bento").is_none(), "no v2alpha1 field leaks: {}", probe.data["spec"]);

    // A malformed tag is refused, and the message says what to write.
    let refused = old.create(&PostParams::default(), &yatai_manifest("bad", "iris-without-version")?).await;
    let message = format!("{:#}", refused.err().context("a tag without a version was accepted")?);
    ensure!(message.contains("<bento name>:<version>"), "the error should say how to write a tag: {message}");

    // Restart: the Secret's certificate is served again and the caBundle stays.
    let secrets: Api<Secret> = ns.api();
    let before = secrets.get(SECRET_NAME).await?.data;
    running.abort();
    let (url2, running2) = start_webhook(client.clone(), ns.name())?;
    let ca2 = wait_for_conversion(&client, ns.name(), &url2).await?;
    assert_eq!(ca2, ca, "the restarted webhook kept the CA");
    assert_eq!(secrets.get(SECRET_NAME).await?.data, before, "the certificate was reused, not reissued");
    let again = old.get("iris").await?;
    assert_eq!(again.data["spec"]["bento_tag"], "iris_classifier:4jwnpq2ia6g3baav");

    // Hostile callers, over TLS verified with the CA from the Secret, as the API server does.
    let ca_pem = String::from_utf8(before.unwrap_or_default()["ca.crt"].0.clone())?;
    let addr: SocketAddr = url2.trim_start_matches("https://").trim_end_matches("/convert").parse()?;
    let garbage = raw_https(addr, &ca_pem, "POST", "/convert", b"{not json").await?;
    ensure!(garbage.starts_with("HTTP/1.1 200"), "{garbage}");
    ensure!(garbage.contains("\"Failure\"") && garbage.contains("not a ConversionReview"), "{garbage}");
    let get = raw_https(addr, &ca_pem, "GET", "/convert", b"").await?;
    ensure!(get.starts_with("HTTP/1.1 405"), "{get}");
    let elsewhere = raw_https(addr, &ca_pem, "POST", "/admin", b"{}").await?;
    ensure!(elsewhere.starts_with("HTTP/1.1 404"), "{elsewhere}");
    // Still serving after all that.
    assert_eq!(old.get("iris").await?.data["spec"]["bento_tag"], "iris_classifier:4jwnpq2ia6g3baav");
    running2.abort();
    Ok(())
}

/// One HTTP/1.1 request over TLS to 127.0.0.1, trusting only `ca_pem`; the whole response.
async fn raw_https(addr: SocketAddr, ca_pem: &str, method: &str, path: &str, body: &[u8]) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1")?, tcp)
        .await
        .context("TLS handshake with the webhook, verified against the Secret's CA")?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    let mut response = Vec::new();
    // The server closes after answering (Connection: close); a peer that skips TLS
    // close_notify shows up as an error after the data, which is fine here.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

#[tokio::test]
async fn a_port_in_use_is_an_error_not_a_hang() -> anyhow::Result<()> {
    let testbed = Testbed::shared().await?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut settings = Settings::for_tests(Namespaces::All, "unused");
    settings.webhook_listen = taken.local_addr()?;
    let result =
        tokio::time::timeout(Duration::from_secs(10), webhook::run(Context::new(testbed.client().await?, settings)))
            .await
            .context("webhook::run hung on a port in use")?;
    let message = format!("{:#}", result.err().context("webhook::run succeeded on a port in use")?);
    ensure!(message.contains("cannot listen"), "{message}");
    Ok(())
}

#[tokio::test]
async fn the_secret_is_reused_renewed_for_new_names_and_repaired() -> anyhow::Result<()> {
    use yatai_operator::webhook::cert::{self, Bundle};
    let testbed = Testbed::shared().await?;
    let ns = testbed.namespace("webhook-cert").await?;
    let secrets: Api<Secret> = ns.api();
    let here = cert::names_for(ns.name(), "yatai-operator", Some("https://127.0.0.1:9443"))?;

    let first = cert::ensure(ns.client(), ns.name(), &here).await?;
    first.check(&here, std::time::SystemTime::now() + cert::RENEW_BEFORE).map_err(anyhow::Error::msg)?;
    let stored = secrets.get(SECRET_NAME).await?;
    assert_eq!(stored.type_.as_deref(), Some("kubernetes.io/tls"));
    let keys: Vec<&str> = stored.data.as_ref().context("data")?.keys().map(String::as_str).collect();
    assert_eq!(keys, ["ca.crt", "ca.key", "tls.crt", "tls.key"]);

    // A restart with the same names: the same bundle, and nothing written.
    let version = stored.metadata.resource_version.clone();
    assert_eq!(cert::ensure(ns.client(), ns.name(), &here).await?, first);
    assert_eq!(secrets.get(SECRET_NAME).await?.metadata.resource_version, version);

    // The operator moved: a new serving certificate, signed by the same CA (the caBundle stays).
    let moved = cert::names_for(ns.name(), "yatai-operator", Some("https://10.9.8.7:9443"))?;
    let renewed = cert::ensure(ns.client(), ns.name(), &moved).await?;
    assert_eq!(renewed.ca_pem, first.ca_pem);
    assert_ne!(renewed.cert_pem, first.cert_pem);
    renewed.check(&moved, std::time::SystemTime::now()).map_err(anyhow::Error::msg)?;
    assert_eq!(cert::ensure(ns.client(), ns.name(), &moved).await?, renewed, "what was written is what is read");

    // Someone wrote garbage into it: replaced by a working bundle rather than served broken.
    let mut broken = secrets.get(SECRET_NAME).await?;
    broken.data.as_mut().context("data")?.insert("tls.crt".into(), k8s_openapi::ByteString(b"not a cert".to_vec()));
    secrets.replace(SECRET_NAME, &PostParams::default(), &broken).await?;
    let repaired: Bundle = cert::ensure(ns.client(), ns.name(), &moved).await?;
    repaired.check(&moved, std::time::SystemTime::now()).map_err(anyhow::Error::msg)?;
    Ok(())
}
