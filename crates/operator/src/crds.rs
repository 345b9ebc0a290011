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
    for crd in crds::all(webhook) {
        wait_established(client, &crd.name_any(), Duration::from_secs(60)).await?;
    }
    Ok(())
}

/// Waits until the CRD `name` is Established (its kind is served), polling every 100 ms.
pub async fn wait_established(client: &kube::Client, name: &str, within: Duration) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let current = api.get(name).await.with_context(|| format!("reading CRD {name}"))?;
        if is_established(&current) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("CRD {name} was not established within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the API server serves the CRD's kind.
pub fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"))
}
