//! The webhook's own CA and serving certificate, kept in a Secret so that every replica and
//! every restart serves the certificate the CRD's `caBundle` vouches for.
//!
//! The CA lives ten years and is kept across rotations: a new serving certificate is signed by
//! the same CA key, so the `caBundle` does not change and replicas still serving the previous
//! certificate stay trusted until they pick up the new one. Validity and names are checked by
//! verifying the stored certificate as a TLS client would (rustls' WebPKI verifier, at a time
//! [`RENEW_BEFORE`] ahead), so no X.509 parser is needed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;

use crate::context::FIELD_MANAGER;

pub const SECRET_NAME: &str = "yatai-operator-webhook-cert";
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

/// A certificate closer than this to its end is replaced.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Tolerates API servers whose clock is a little behind ours.
const BACKDATE: Duration = Duration::from_secs(3600);
const CA_NAME: &str = "yatai-operator webhook CA";

/// Everything the Secret holds, PEM-encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Bundle {
    /// A new CA and a serving certificate for `names` signed by it.
    pub fn generate(names: &[String]) -> anyhow::Result<Bundle> {
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let now = time::OffsetDateTime::now_utc();
        let mut params = ca_params();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let ca = params.self_signed(&ca_key).context("signing the CA certificate")?;
        let ca_pem = ca.pem();
        let ca_key_pem = ca_key.serialize_pem();
        let (cert_pem, key_pem) = issue_serving(&ca_key_pem, names)?;
        Ok(Bundle { ca_pem, ca_key_pem, cert_pem, key_pem })
    }

    /// The same CA, a new serving certificate for `names`.
    pub fn reissue(&self, names: &[String]) -> anyhow::Result<Bundle> {
        let (cert_pem, key_pem) = issue_serving(&self.ca_key_pem, names)?;
        Ok(Bundle { cert_pem, key_pem, ..self.clone() })
    }

    /// Whether this serving certificate chains to the CA, covers every name and is still valid
    /// at `at` (and so is the CA); the reason if not.
    pub fn check(&self, names: &[String], at: SystemTime) -> Result<(), String> {
        let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(|e| format!("CA certificate: {e}"))?;
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| format!("serving certificate: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).map_err(|e| format!("CA certificate: {e}"))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()))
            .build()
            .map_err(|e| format!("CA certificate: {e}"))?;
        let at = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
        for name in names {
            let server_name = ServerName::try_from(name.as_str()).map_err(|e| format!("{name:?}: {e}"))?;
            verifier.verify_server_cert(&cert, &[], &server_name, &[], at).map_err(|e| format!("for {name}: {e}"))?;
        }
        self.certified_key().map(|_| ())
    }

    /// The serving certificate and key as rustls serves them.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, String> {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| format!("serving certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| format!("serving key: {e}"))?;
        let key = provider().key_provider.load_private_key(key).map_err(|e| format!("serving key: {e}"))?;
        let certified = CertifiedKey::new(vec![cert], key);
        certified.keys_match().map_err(|e| format!("serving key and certificate: {e}"))?;
        Ok(Arc::new(certified))
    }

    fn from_secret(secret: &Secret) -> Option<Bundle> {
        let data = secret.data.as_ref()?;
        let get = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok());
        Some(Bundle {
            ca_pem: get(CA_CERT)?,
            ca_key_pem: get(CA_KEY)?,
            cert_pem: get(TLS_CERT)?,
            key_pem: get(TLS_KEY)?,
        })
    }

    fn to_data(&self) -> BTreeMap<String, ByteString> {
        [(CA_CERT, &self.ca_pem), (CA_KEY, &self.ca_key_pem), (TLS_CERT, &self.cert_pem), (TLS_KEY, &self.key_pem)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }
}

pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The CA's parameters. An [`Issuer`] needs only its name, key identifier method and key
/// usages, all fixed here, so a stored CA can sign again from its key alone.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn issue_serving(ca_key_pem: &str, names: &[String]) -> anyhow::Result<(String, String)> {
    let ca_key = KeyPair::from_pem(ca_key_pem).context("reading the CA key")?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate().context("generating the serving key")?;
    let mut params = CertificateParams::new(names.to_vec()).context("the webhook's names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("yatai-operator"));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + SERVING_LIFETIME;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).context("signing the serving certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The names the API server may use for the webhook: the Service's DNS names, and the host of
/// `--webhook-url` when the operator runs outside the cluster.
pub fn names_for(namespace: &str, service: &str, url: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut names = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ];
    if let Some(url) = url {
        let host = url_host(url)?;
        if !names.contains(&host) {
            names.insert(0, host);
        }
    }
    Ok(names)
}

/// The host of an `https://host[:port][/path]` URL; IPv6 literals without their brackets.
fn url_host(url: &str) -> anyhow::Result<String> {
    let Some(rest) = url.strip_prefix("https://") else {
        bail!("--webhook-url {url:?} must start with https:// (the API server calls webhooks over TLS only)");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority)
    };
    if host.is_empty() || (host.contains(':') && host.parse::<IpAddr>().is_err()) {
        bail!("--webhook-url {url:?} has no usable host");
    }
    Ok(host.to_ascii_lowercase())
}

/// The bundle in the Secret, created, reused or rotated so that it serves `names` for at least
/// [`RENEW_BEFORE`]. Replicas racing here are serialized by `resourceVersion`: the loser reads
/// the winner's bundle and uses it.
pub async fn ensure(client: Client, namespace: &str, names: &[String]) -> anyhow::Result<Bundle> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let post = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    for _ in 0..5 {
        let existing = secrets
            .get_opt(SECRET_NAME)
            .await
            .with_context(|| format!("reading the Secret {namespace}/{SECRET_NAME}"))?;
        let Some(mut secret) = existing else {
            let bundle = Bundle::generate(names)?;
            let secret = Secret {
                metadata: ObjectMeta { name: Some(SECRET_NAME.into()), ..Default::default() },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(bundle.to_data()),
                ..Default::default()
            };
            match secrets.create(&post, &secret).await {
                Ok(_) => {
                    tracing::info!("created the webhook certificate in the Secret {namespace}/{SECRET_NAME}");
                    return Ok(bundle);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e).with_context(|| format!("creating the Secret {namespace}/{SECRET_NAME}")),
            }
        };
        let soon = SystemTime::now() + RENEW_BEFORE;
        let bundle = match Bundle::from_secret(&secret) {
            Some(stored) => match stored.check(names, soon) {
                Ok(()) => return Ok(stored),
                Err(why) => {
                    let reissued = stored.reissue(names).ok().filter(|b| b.check(names, soon).is_ok());
                    match reissued {
                        Some(b) => {
                            tracing::info!("renewing the webhook's serving certificate: {why}");
                            b
                        }
                        None => {
                            tracing::info!("replacing the webhook's CA and certificate: {why}");
                            Bundle::generate(names)?
                        }
                    }
                }
            },
            None => {
                tracing::warn!("the Secret {namespace}/{SECRET_NAME} lacks a key or holds non-PEM data; replacing it");
                Bundle::generate(names)?
            }
        };
        secret.data = Some(bundle.to_data());
        secret.string_data = None;
        match secrets.replace(SECRET_NAME, &post, &secret).await {
            Ok(_) => return Ok(bundle),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("updating the Secret {namespace}/{SECRET_NAME}")),
        }
    }
    Err(anyhow!(
        "the Secret {namespace}/{SECRET_NAME} kept changing while it was being written; is another operator rotating it?"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        names_for("yatai-system", "yatai-operator", Some("https://127.0.0.1:9443")).unwrap()
    }

    #[test]
    fn a_fresh_bundle_serves_every_name_for_its_lifetime() {
        let bundle = Bundle::generate(&names()).unwrap();
        bundle.check(&names(), SystemTime::now()).unwrap();
        bundle.check(&names(), SystemTime::now() + RENEW_BEFORE).unwrap();
        let late = bundle.check(&names(), SystemTime::now() + SERVING_LIFETIME + Duration::from_secs(60));
        assert!(late.unwrap_err().contains("expired"), "a year on, the serving certificate has expired");
    }

    #[test]
    fn other_names_need_a_new_certificate_from_the_same_ca() {
        let bundle = Bundle::generate(&names()).unwrap();
        let moved = names_for("yatai-system", "yatai-operator", Some("https://10.1.2.3:9443")).unwrap();
        assert!(bundle.check(&moved, SystemTime::now()).is_err());
        let reissued = bundle.reissue(&moved).unwrap();
        reissued.check(&moved, SystemTime::now()).unwrap();
        assert_eq!(reissued.ca_pem, bundle.ca_pem, "the caBundle stays");
        assert_ne!(reissued.cert_pem, bundle.cert_pem);
    }

    #[test]
    fn a_mismatched_key_is_detected() {
        let a = Bundle::generate(&names()).unwrap();
        let b = Bundle::generate(&names()).unwrap();
        let mixed = Bundle { key_pem: b.key_pem.clone(), ..a.clone() };
        assert!(mixed.check(&names(), SystemTime::now()).is_err());
        let foreign_ca = Bundle { ca_pem: b.ca_pem, ..a };
        assert!(foreign_ca.check(&names(), SystemTime::now()).is_err());
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("https://127.0.0.1:9443").unwrap(), "127.0.0.1");
        assert_eq!(url_host("https://[::1]:9443/x").unwrap(), "::1");
        assert_eq!(url_host("https://Webhook.Example.com/").unwrap(), "webhook.example.com");
        assert!(url_host("http://127.0.0.1:9443").unwrap_err().to_string().contains("https://"));
        assert!(url_host("https://:9443").is_err());
    }
}
