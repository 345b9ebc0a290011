//! The CustomResourceDefinitions, generated from the types: what `yatai crds` prints.
//!
//! BentoDeployment serves v1alpha3 and v2alpha1 and stores v2alpha1; the API server converts
//! between them by calling the operator's webhook (`/convert`). The CRDs printed here point the
//! webhook at the operator's Service; the operator rewrites that (and the CA bundle) when it
//! starts, so nothing else has to know its certificate.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, ServiceReference, WebhookClientConfig, WebhookConversion,
};
use kube::CustomResourceExt;
use kube::core::crd::merge_crds;

use crate::resources::{Bento, BentoRequest};
use crate::serving::{v1alpha3, v2alpha1};

/// Where the API server reaches the conversion webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookEndpoint {
    /// In the cluster: the operator's Service (port 443, path `/convert`).
    Service { namespace: String, name: String },
    /// Anywhere else, e.g. an operator run outside the cluster: `https://host:port/convert`.
    Url(String),
}

impl Default for WebhookEndpoint {
    fn default() -> Self {
        WebhookEndpoint::Service { namespace: "yatai-system".into(), name: "yatai-operator".into() }
    }
}

pub const WEBHOOK_PATH: &str = "/convert";

/// The BentoDeployment CRD with both versions (v2alpha1 stored) and the conversion webhook.
pub fn bento_deployment(webhook: &WebhookEndpoint, ca_bundle: Option<&[u8]>) -> CustomResourceDefinition {
    let mut crd = merge_crds(vec![v1alpha3::BentoDeployment::crd(), v2alpha1::BentoDeployment::crd()], "v2alpha1")
        .expect("the two BentoDeployment versions share group, kind and scope");
    crd.spec.conversion = Some(conversion(webhook, ca_bundle));
    crd
}

/// The conversion stanza of the BentoDeployment CRD.
pub fn conversion(webhook: &WebhookEndpoint, ca_bundle: Option<&[u8]>) -> CustomResourceConversion {
    let (service, url) = match webhook {
        WebhookEndpoint::Service { namespace, name } => (
            Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(WEBHOOK_PATH.into()),
                port: Some(443),
            }),
            None,
        ),
        WebhookEndpoint::Url(base) => (None, Some(format!("{}{WEBHOOK_PATH}", base.trim_end_matches('/')))),
    };
    CustomResourceConversion {
        strategy: "Webhook".into(),
        webhook: Some(WebhookConversion {
            client_config: Some(WebhookClientConfig {
                ca_bundle: ca_bundle.map(|b| k8s_openapi::ByteString(b.to_vec())),
                service,
                url,
            }),
            conversion_review_versions: vec!["v1".into()],
        }),
    }
}

/// Every CRD yatai uses, BentoDeployment first.
pub fn all(webhook: &WebhookEndpoint) -> Vec<CustomResourceDefinition> {
    vec![bento_deployment(webhook, None), BentoRequest::crd(), Bento::crd()]
}

/// The CRDs as one multi-document YAML stream, ready for `kubectl apply -f -`.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(crd).expect("a CRD serializes"));
    }
    out
}
