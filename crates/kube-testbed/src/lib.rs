//! Test support for code that talks to Kubernetes: a real control plane (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler and kwok fake nodes, built from Go
//! modules by `scripts/k8s-testbed`), a [`kube::Client`] for it, and a fresh namespace per
//! test.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let testbed = yatai_kube_testbed::Testbed::shared().await?;
//! let ns = testbed.namespace("my-test").await?;
//! // ... create objects in ns.name() with ns.client() ...
//! ns.delete().await?; // or let it drop: deletion then runs in the background
//! # Ok(()) }
//! ```
//!
//! Which control plane [`Testbed::shared`] returns:
//! - if `YATAI_TEST_KUBECONFIG` is set, the one it points at (the harness started it, e.g.
//!   with `scripts/k8s-testbed start`, and stops it);
//! - otherwise one started for this test process on free loopback ports, which goes away when
//!   the process exits, however it exits (see [`Testbed::shared`]).
//!
//! [`Testbed::shared_real_node`] hands out a testbed with one real node (containerd, kubelet,
//! kube-proxy), a loopback OCI registry, Traefik and metrics-server: see [`RealNode`]. Tests
//! that need it run only when `YATAI_TEST_REAL_NODE=1` ([`real_node_enabled`]).

mod namespace;
mod poll;
mod real_node;
mod started;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use namespace::{DELETE_TIMEOUT, TEST_NAMESPACE_LABEL, TestNamespace};
pub use poll::poll_until;
pub use real_node::{REAL_NODE_ENV, RealNode, real_node_enabled};

/// Names an admin kubeconfig of a running testbed; tests attach to it instead of starting one.
pub const KUBECONFIG_ENV: &str = "YATAI_TEST_KUBECONFIG";

/// A running control plane that tests may use.
pub struct Testbed {
    kubeconfig: PathBuf,
    real_node: Option<RealNode>,
    // Holds the started testbed (if we started it) for as long as the process lives.
    _started: Option<started::Started>,
}

static SHARED: OnceLock<Result<Testbed, String>> = OnceLock::new();
static SHARED_REAL_NODE: OnceLock<Result<Testbed, String>> = OnceLock::new();

impl Testbed {
    /// The control plane for this test process, attached or started on first use.
    ///
    /// Starting one takes about 7 s (and, on a machine without the build cache, a cold Go
    /// build of about 18 min); all tests of the process share it, each in its own namespace. A
    /// started testbed lives until the process exits: `scripts/k8s-testbed run` holds it and
    /// stops it when the pipe to this process closes.
    pub async fn shared() -> anyhow::Result<&'static Testbed> {
        tokio::task::spawn_blocking(|| {
            SHARED
                .get_or_init(|| Self::attach_or_start().map_err(|e| format!("{e:#}")))
                .as_ref()
                .map_err(|e| anyhow::anyhow!("the Kubernetes testbed is not available: {e}"))
        })
        .await
        .context("the testbed start-up task panicked")?
    }

    /// The testbed with a real node for this test process, attached or started on first use.
    ///
    /// It attaches to `YATAI_TEST_KUBECONFIG` if that testbed has a real node (started with
    /// `K8S_TESTBED_REAL_NODE=1 scripts/k8s-testbed start`); otherwise it starts one like
    /// [`Testbed::shared`] does, which takes about 25 s more (and, without the build cache,
    /// the cold Go builds of kubelet, Traefik and metrics-server). Only one real node can run
    /// per machine: starting fails clearly while another runs.
    pub async fn shared_real_node() -> anyhow::Result<&'static Testbed> {
        tokio::task::spawn_blocking(|| {
            SHARED_REAL_NODE
                .get_or_init(|| Self::attach_or_start_real_node().map_err(|e| format!("{e:#}")))
                .as_ref()
                .map_err(|e| anyhow::anyhow!("the Kubernetes testbed with a real node is not available: {e}"))
        })
        .await
        .context("the testbed start-up task panicked")?
    }

    fn attach_or_start() -> anyhow::Result<Testbed> {
        match std::env::var_os(KUBECONFIG_ENV) {
            Some(path) if !path.is_empty() => Self::attach(PathBuf::from(path)),
            _ => Self::start(false),
        }
    }

    fn attach_or_start_real_node() -> anyhow::Result<Testbed> {
        if let Some(path) = std::env::var_os(KUBECONFIG_ENV).filter(|p| !p.is_empty()) {
            let attached = Self::attach(PathBuf::from(path))?;
            if attached.real_node.is_some() {
                return Ok(attached);
            }
        }
        let testbed = Self::start(true)?;
        if testbed.real_node.is_none() {
            bail!("the testbed in {} started without its real node", testbed.kubeconfig.display());
        }
        Ok(testbed)
    }

    fn start(real_node: bool) -> anyhow::Result<Testbed> {
        let started = started::Started::start(real_node)?;
        let real_node = RealNode::of(&started.kubeconfig)?;
        Ok(Testbed { kubeconfig: started.kubeconfig.clone(), real_node, _started: Some(started) })
    }

    /// Use a control plane that something else started and will stop.
    pub fn attach(kubeconfig: PathBuf) -> anyhow::Result<Testbed> {
        if !kubeconfig.is_file() {
            bail!(
                "{KUBECONFIG_ENV}={} does not name a file; start a testbed with \
                 `scripts/k8s-testbed start` (its last line is the path) or unset {KUBECONFIG_ENV} \
                 to let the tests start their own",
                kubeconfig.display()
            );
        }
        let real_node = RealNode::of(&kubeconfig)?;
        Ok(Testbed { kubeconfig, real_node, _started: None })
    }

    /// The real node of this testbed, if it has one: its name, its ingress and registry
    /// addresses.
    pub fn real_node(&self) -> Option<&RealNode> {
        self.real_node.as_ref()
    }

    /// The admin kubeconfig (system:masters) of this testbed.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The client configuration for this testbed, e.g. to hand to code under test.
    pub async fn config(&self) -> anyhow::Result<kube::Config> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading kubeconfig {}", self.kubeconfig.display()))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading kubeconfig {}", self.kubeconfig.display()))
    }

    /// An admin client. Make one per test: a client belongs to the tokio runtime it was made
    /// on, and every `#[tokio::test]` has its own runtime.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        kube::Client::try_from(self.config().await?).context("building a kube client for the testbed")
    }

    /// A new namespace named `<prefix>-<random>`, ready for pods (its `default`
    /// ServiceAccount exists). It is deleted when the [`TestNamespace`] is dropped.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<TestNamespace> {
        TestNamespace::create(self.client().await?, self.kubeconfig.clone(), prefix).await
    }
}
