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

mod namespace;
mod poll;
mod started;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use namespace::{DELETE_TIMEOUT, TEST_NAMESPACE_LABEL, TestNamespace};
pub use poll::poll_until;

/// Names an admin kubeconfig of a running testbed; tests attach to it instead of starting one.
pub const KUBECONFIG_ENV: &str = "YATAI_TEST_KUBECONFIG";

/// A running control plane that tests may use.
pub struct Testbed {
    kubeconfig: PathBuf,
    // Holds the started testbed (if we started it) for as long as the process lives.
    _started: Option<started::Started>,
}

static SHARED: OnceLock<Result<Testbed, String>> = OnceLock::new();

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

    fn attach_or_start() -> anyhow::Result<Testbed> {
        match std::env::var_os(KUBECONFIG_ENV) {
            Some(path) if !path.is_empty() => Self::attach(PathBuf::from(path)),
            _ => {
                let started = started::Started::start()?;
                Ok(Testbed { kubeconfig: started.kubeconfig.clone(), _started: Some(started) })
            }
        }
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
        Ok(Testbed { kubeconfig, _started: None })
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
