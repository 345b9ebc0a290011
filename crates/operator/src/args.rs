//! The command line of `yatai operator`; every flag also reads a `YATAI_…` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::context::{Namespaces, Settings};
use crate::metrics::Metrics;

#[derive(Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Kubeconfig to use; without it, the in-cluster service account (or $KUBECONFIG).
    #[arg(long, env = "YATAI_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces whose BentoDeployments and BentoRequests to reconcile: comma-separated, or
    /// `all`.
    #[arg(long, env = "YATAI_NAMESPACES", default_value = "yatai")]
    pub namespaces: String,
    /// Ingress hosts are `<name>-<namespace>.<suffix>`. Without it: the `network` ConfigMap's
    /// `domain-suffix`, else `<ingress controller IP>.sslip.io`, discovered.
    #[arg(long, env = "YATAI_DOMAIN_SUFFIX")]
    pub domain_suffix: Option<String>,
    /// yatai's API, where BentoRequests without a download URL fetch their bento. The token
    /// comes from YATAI_API_TOKEN.
    #[arg(long, env = "YATAI_ENDPOINT")]
    pub yatai_endpoint: Option<String>,
    #[arg(long, env = "YATAI_API_TOKEN", hide_env_values = true, hide = true)]
    pub yatai_api_token: Option<String>,
    /// Where images are pushed: `host:port/repository` (or `host:port`, then `/yatai-bentos`).
    #[arg(long, env = "YATAI_IMAGE_REGISTRY")]
    pub image_registry: Option<String>,
    /// The registry speaks plain HTTP.
    #[arg(long, env = "YATAI_IMAGE_REGISTRY_INSECURE")]
    pub image_registry_insecure: bool,
    /// Image builds that may run at once.
    #[arg(long, env = "YATAI_BUILD_CONCURRENCY", default_value_t = 2)]
    pub build_concurrency: usize,
    /// BentoDeployment reconciles that may run at once. Unbounded, a cold start on 1,000
    /// drowned a small API server in 504s; raise it for a large one.
    #[arg(long, env = "YATAI_RECONCILE_CONCURRENCY", default_value_t = 16)]
    pub reconcile_concurrency: u16,
    /// The operator's own namespace: its Lease, its webhook certificate Secret, the `network`
    /// ConfigMap.
    #[arg(long, env = "YATAI_OPERATOR_NAMESPACE", default_value = "yatai-system")]
    pub operator_namespace: String,
    /// Where the conversion webhook listens (HTTPS).
    #[arg(long, env = "YATAI_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    pub webhook_listen: SocketAddr,
    /// How the API server reaches the webhook when the operator runs outside the cluster,
    /// e.g. `https://127.0.0.1:9443`. Without it, the Service `yatai-operator` in the
    /// operator's namespace.
    #[arg(long, env = "YATAI_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Leader election through a Lease; turn off only when one replica runs.
    #[arg(long, env = "YATAI_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Where `/metrics` (Prometheus text), `/healthz` and `/readyz` are served; `off` to serve
    /// nothing.
    #[arg(long, env = "YATAI_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: String,
    /// This replica's name in the Lease and in Events (default: the host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Registry credentials for pushing; also written into each BentoRequest namespace as the
    /// `kubernetes.io/dockerconfigjson` Secret `yatai-regcred`, the Bentos' imagePullSecret.
    #[arg(long, env = "YATAI_IMAGE_REGISTRY_USERNAME")]
    pub image_registry_username: Option<String>,
    #[arg(long, env = "YATAI_IMAGE_REGISTRY_PASSWORD", hide_env_values = true, hide = true)]
    pub image_registry_password: Option<String>,
    /// The image builder's cache (layers, base scans, uv's cache).
    #[arg(long, env = "YATAI_BUILD_CACHE", default_value = "/var/cache/yatai-operator/build")]
    pub build_cache_dir: PathBuf,
    /// Base image of every build (default: the bento's own, e.g. python:3.11-slim).
    #[arg(long, env = "YATAI_BUILD_BASE")]
    pub build_base: Option<String>,
    /// The `uv` executable the builder installs Python dependencies with.
    #[arg(long, env = "YATAI_BUILD_UV", default_value = "uv")]
    pub build_uv: PathBuf,
    /// uv's download cache (default: inside --build-cache-dir).
    #[arg(long, env = "YATAI_BUILD_UV_CACHE")]
    pub build_uv_cache: Option<PathBuf>,
}

impl OperatorArgs {
    /// The client, counting its requests into `metrics`.
    pub async fn client(&self, metrics: Arc<Metrics>) -> anyhow::Result<kube::Client> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .with_context(|| format!("using the kubeconfig {}", path.display()))?
            }
            None => kube::Config::infer().await.context("no --kubeconfig, and no in-cluster or default config")?,
        };
        let counting = tower::util::MapRequestLayer::new(move |request| {
            metrics.api_requests.fetch_add(1, Ordering::Relaxed);
            request
        });
        Ok(kube::client::ClientBuilder::try_from(config)
            .context("building the Kubernetes client")?
            .with_layer(&counting)
            .build())
    }

    pub fn settings(&self) -> anyhow::Result<Settings> {
        let namespaces = Namespaces::parse(&self.namespaces)?;
        let identity = self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        Ok(Settings {
            namespaces,
            domain_suffix: self.domain_suffix.clone().filter(|s| !s.is_empty()),
            yatai_endpoint: self.yatai_endpoint.clone().filter(|s| !s.is_empty()),
            yatai_api_token: self.yatai_api_token.clone().filter(|s| !s.is_empty()),
            image_registry: self.image_registry.clone().filter(|s| !s.is_empty()),
            image_registry_insecure: self.image_registry_insecure,
            build_concurrency: self.build_concurrency.max(1),
            reconcile_concurrency: self.reconcile_concurrency.max(1),
            operator_namespace: self.operator_namespace.clone(),
            webhook_listen: self.webhook_listen,
            webhook_url: self.webhook_url.clone().filter(|s| !s.is_empty()),
            leader_election: self.leader_election,
            identity,
            image_registry_username: self.image_registry_username.clone().filter(|s| !s.is_empty()),
            image_registry_password: self.image_registry_password.clone().filter(|s| !s.is_empty()),
            build_cache_dir: self.build_cache_dir.clone(),
            build_base: self.build_base.clone().filter(|s| !s.is_empty()),
            build_uv: self.build_uv.clone(),
            build_uv_cache: self.build_uv_cache.clone(),
        })
    }
}
