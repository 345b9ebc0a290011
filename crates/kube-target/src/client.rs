//! A Kubernetes client from a cluster's stored configuration: a kubeconfig's text (and
//! context), or the server's own service account.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use yatai_core::deploy::KubeClusterConfig;

/// How long one request may take before the cluster counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The client configuration; the error says what to fix in the cluster's settings.
pub async fn config(cluster: &KubeClusterConfig) -> Result<kube::Config, String> {
    let mut config = match &cluster.kubeconfig {
        Some(text) => {
            let kubeconfig = Kubeconfig::from_yaml(text)
                .map_err(|e| format!("the kubeconfig is not valid YAML for a kubeconfig: {e}"))?;
            let options = KubeConfigOptions { context: cluster.context.clone(), ..Default::default() };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| match &cluster.context {
                Some(c) => format!("the kubeconfig cannot be used with context {c:?}: {e}"),
                None => format!("the kubeconfig cannot be used: {e}"),
            })?
        }
        None => kube::Config::incluster().map_err(|e| {
            format!(
                "no kubeconfig was given and yatai does not run in a cluster ({e}): upload a kubeconfig, or run \
                 yatai in the cluster with a service account"
            )
        })?,
    };
    // kube's read timeout stays: it outlasts a watch's own server-side timeout, and notices a
    // connection that died without closing.
    config.connect_timeout = Some(TIMEOUT);
    config.write_timeout = Some(TIMEOUT);
    Ok(config)
}

/// A client for the cluster that counts the requests it sends into `requests` (watches
/// count once, when they start).
pub async fn client(cluster: &KubeClusterConfig, requests: Arc<AtomicU64>) -> Result<(kube::Client, String), String> {
    let config = config(cluster).await?;
    let url = config.cluster_url.to_string();
    let counting = tower::util::MapRequestLayer::new(move |request| {
        requests.fetch_add(1, Ordering::Relaxed);
        request
    });
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| format!("cannot make a client for {url}: {e}"))?
        .with_layer(&counting)
        .build();
    Ok((client, url))
}
