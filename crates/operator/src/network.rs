//! The `network` ConfigMap (Yatai's keys, in the operator's namespace) and the ingress domain
//! suffix.
//!
//! The suffix is `--domain-suffix`, else the ConfigMap's `domain-suffix`, else discovered as
//! Yatai does: a throw-away Ingress is created, and once the ingress controller publishes its
//! load-balancer address on it, `<ip>.sslip.io` is written back into the ConfigMap. Discovery
//! runs in the background; deployments get their Ingress when it ends.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    ServiceBackendPort,
};
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use tokio::sync::watch;

use crate::context::{Context, FIELD_MANAGER};

pub const CONFIG_MAP: &str = "network";
/// The Ingress that asks the ingress controller for its address.
pub const PROBE_INGRESS: &str = "yatai-domain-suffix-probe";

/// Ingress settings from the `network` ConfigMap, with Yatai's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Network {
    pub ingress_class: Option<String>,
    pub ingress_annotations: BTreeMap<String, String>,
    pub ingress_path: String,
    pub ingress_path_type: String,
    pub domain_suffix: Option<String>,
    pub tls_mode: TlsMode,
    pub static_tls_secret: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    #[default]
    None,
    /// The Ingress names a Secret of its own name (cert-manager's annotations issue it).
    Auto,
    /// Every Ingress uses `ingress-static-tls-secret-name`.
    Static,
}

impl Network {
    /// Reads Yatai's keys; a malformed value is an error that names the key.
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<Network, String> {
        let get = |k: &str| data.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let ingress_annotations = match get("ingress-annotations") {
            Some(json) => serde_json::from_str(&json).map_err(|e| {
                format!("ConfigMap {CONFIG_MAP}: ingress-annotations must be a JSON object of strings: {e}")
            })?,
            None => BTreeMap::new(),
        };
        let tls_mode = match get("ingress-tls-mode").as_deref() {
            None | Some("none") => TlsMode::None,
            Some("auto") => TlsMode::Auto,
            Some("static") => TlsMode::Static,
            Some(other) => {
                return Err(format!("ConfigMap {CONFIG_MAP}: ingress-tls-mode {other:?} is not none, auto or static"));
            }
        };
        Ok(Network {
            ingress_class: get("ingress-class"),
            ingress_annotations,
            ingress_path: get("ingress-path").unwrap_or_else(|| "/".into()),
            ingress_path_type: get("ingress-path-type").unwrap_or_else(|| "ImplementationSpecific".into()),
            domain_suffix: get("domain-suffix"),
            tls_mode,
            static_tls_secret: get("ingress-static-tls-secret-name"),
        })
    }

    /// The ConfigMap's settings (defaults when it does not exist).
    pub async fn read(ctx: &Context) -> Result<Network, String> {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.settings.operator_namespace);
        match api.get_opt(CONFIG_MAP).await {
            Ok(Some(cm)) => Network::from_config_map(&cm.data.unwrap_or_default()),
            Ok(None) => Ok(Network::from_config_map(&BTreeMap::new()).expect("defaults parse")),
            Err(e) => Err(format!("reading ConfigMap {}/{CONFIG_MAP}: {e}", ctx.settings.operator_namespace)),
        }
    }
}

/// `<ip>.sslip.io`, with dashes for IPv6 as sslip.io expects.
pub fn sslip_suffix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}.sslip.io"),
        IpAddr::V6(v6) => format!("{}.sslip.io", v6.to_string().replace(':', "-")),
    }
}

/// The domain suffix, as soon as it is known: `--domain-suffix`, the ConfigMap, or discovery.
pub type Suffix = watch::Receiver<Option<String>>;

/// Starts resolving the suffix; the receiver changes when it is known. With `--domain-suffix`
/// it is known at once and nothing runs.
pub fn resolve_suffix(ctx: Context) -> Suffix {
    let (tx, rx) = watch::channel(ctx.settings.domain_suffix.clone());
    if ctx.settings.domain_suffix.is_none() {
        tokio::spawn(async move {
            let suffix = discover(&ctx).await;
            tracing::info!(%suffix, "ingress domain suffix");
            let _ = tx.send(Some(suffix));
        });
    }
    rx
}

/// Polls until the ConfigMap names a suffix or the ingress controller publishes an address
/// on the probe Ingress; never gives up (the ingress controller may be installed later), but
/// backs off to one attempt every 30 s.
async fn discover(ctx: &Context) -> String {
    let ns = &ctx.settings.operator_namespace;
    let ingresses: Api<Ingress> = Api::namespaced(ctx.client.clone(), ns);
    let mut delay = Duration::from_millis(500);
    let mut announced = false;
    loop {
        match discover_once(ctx, &ingresses).await {
            Ok(Some(suffix)) => return suffix,
            Ok(None) if !announced => {
                tracing::info!(
                    "no --domain-suffix and no domain-suffix in ConfigMap {ns}/{CONFIG_MAP}: waiting for the ingress \
                     controller to publish an address on Ingress {ns}/{PROBE_INGRESS}"
                );
                announced = true;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("discovering the ingress domain suffix: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn discover_once(ctx: &Context, ingresses: &Api<Ingress>) -> Result<Option<String>, String> {
    let network = Network::read(ctx).await?;
    if let Some(suffix) = network.domain_suffix {
        let _ = ingresses.delete(PROBE_INGRESS, &DeleteParams::default()).await;
        return Ok(Some(suffix));
    }
    let probe = ingresses.get_opt(PROBE_INGRESS).await.map_err(|e| format!("reading the probe Ingress: {e}"))?;
    let address =
        probe.as_ref().and_then(|i| i.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref()?.first().cloned());
    let Some(address) = address else {
        if probe.is_none() {
            ingresses
                .patch(
                    PROBE_INGRESS,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(probe_ingress(&network)),
                )
                .await
                .map_err(|e| format!("creating the probe Ingress: {e}"))?;
        }
        return Ok(None);
    };
    let ip = match (address.ip.as_deref(), address.hostname.as_deref()) {
        (Some(ip), _) => ip.parse::<IpAddr>().map_err(|e| format!("the ingress controller published {ip:?}: {e}"))?,
        (None, Some(host)) => tokio::net::lookup_host((host, 80))
            .await
            .map_err(|e| format!("resolving the ingress controller's hostname {host}: {e}"))?
            .map(|a| a.ip())
            .find(IpAddr::is_ipv4)
            .ok_or_else(|| format!("the ingress controller's hostname {host} has no IPv4 address"))?,
        (None, None) => return Ok(None),
    };
    let suffix = sslip_suffix(ip);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.settings.operator_namespace);
    let patch = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": CONFIG_MAP },
        "data": { "domain-suffix": suffix },
    });
    cms.patch(CONFIG_MAP, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(patch))
        .await
        .map_err(|e| format!("writing domain-suffix into ConfigMap {CONFIG_MAP}: {e}"))?;
    let _ = ingresses.delete(PROBE_INGRESS, &DeleteParams::default()).await;
    Ok(Some(suffix))
}

fn probe_ingress(network: &Network) -> Ingress {
    Ingress {
        metadata: ObjectMeta {
            name: Some(PROBE_INGRESS.into()),
            labels: Some([("yatai.ai/creator".to_string(), "yatai-operator".to_string())].into()),
            ..Default::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: network.ingress_class.clone(),
            rules: Some(vec![IngressRule {
                host: Some("probe.this-is-yatai-in-order-to-generate-the-default-domain-suffix.yeah".into()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: "yatai-domain-suffix-probe".into(),
                                port: Some(ServiceBackendPort { number: Some(80), name: None }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_map_keys_are_yatai_s() {
        let data: BTreeMap<String, String> = [
            ("ingress-class", "traefik"),
            ("ingress-annotations", r#"{"a.b/c":"d"}"#),
            ("domain-suffix", "10.0.0.7.sslip.io"),
            ("ingress-tls-mode", "static"),
            ("ingress-static-tls-secret-name", "wildcard"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let n = Network::from_config_map(&data).unwrap();
        assert_eq!(n.ingress_class.as_deref(), Some("traefik"));
        assert_eq!(n.ingress_annotations["a.b/c"], "d");
        assert_eq!(n.ingress_path, "/");
        assert_eq!(n.ingress_path_type, "ImplementationSpecific");
        assert_eq!(n.tls_mode, TlsMode::Static);
        assert_eq!(n.static_tls_secret.as_deref(), Some("wildcard"));
        let bad: BTreeMap<String, String> = [("ingress-annotations".to_string(), "[1]".to_string())].into();
        assert!(Network::from_config_map(&bad).unwrap_err().contains("ingress-annotations"));
    }

    #[test]
    fn sslip_names() {
        assert_eq!(sslip_suffix("127.0.0.1".parse().unwrap()), "127.0.0.1.sslip.io");
        assert_eq!(sslip_suffix("fd00::1".parse().unwrap()), "fd00--1.sslip.io");
    }
}
