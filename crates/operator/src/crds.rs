//! Installing the CRDs from the operator (tests, and `yatai operator --install-crds`).

use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use yatai_kube_api::crds::{self, WebhookEndpoint};

/// Creates the CRDs that do not exist yet (existing ones are left alone: the conversion
/// webhook may have rewritten theirs) and waits until all are established.
pub async fn install_missing(client: &kube::Client, webhook: &WebhookEndpoint) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds::all(webhook) {
        let name = crd.name_any();
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => tracing::info!("created CRD {name}"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("creating CRD {name}")),
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for crd in crds::all(webhook) {
        let name = crd.name_any();
        loop {
            let current = api.get(&name).await.with_context(|| format!("reading CRD {name}"))?;
            let established = current
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("CRD {name} was not established within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
