//! What every controller shares: the client, the settings, the event recorder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use kube::runtime::events::{Recorder, Reporter};

use crate::metrics::Metrics;

/// Which namespaces the controllers watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    All,
    Some(Vec<String>),
}

impl Namespaces {
    /// `all` (or `*`), or a comma-separated list of namespace names.
    pub fn parse(s: &str) -> anyhow::Result<Namespaces> {
        let s = s.trim();
        if s == "all" || s == "*" || s.is_empty() {
            return Ok(Namespaces::All);
        }
        let names: Vec<String> = s.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
        for n in &names {
            if n.len() > 63 || !n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                bail!("--namespaces: {n:?} is not a namespace name (lower-case letters, digits and '-')");
            }
        }
        Ok(Namespaces::Some(names))
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub namespaces: Namespaces,
    pub domain_suffix: Option<String>,
    pub yatai_endpoint: Option<String>,
    pub yatai_api_token: Option<String>,
    pub image_registry: Option<String>,
    pub image_registry_insecure: bool,
    pub build_concurrency: usize,
    pub reconcile_concurrency: u16,
    pub operator_namespace: String,
    pub webhook_listen: SocketAddr,
    pub webhook_url: Option<String>,
    pub leader_election: bool,
    pub identity: String,
    pub image_registry_username: Option<String>,
    pub image_registry_password: Option<String>,
    pub build_cache_dir: PathBuf,
    pub build_base: Option<String>,
    pub build_uv: PathBuf,
    pub build_uv_cache: Option<PathBuf>,
}

impl Settings {
    /// Settings for tests: everything off or at its default.
    pub fn for_tests(namespaces: Namespaces, operator_namespace: &str) -> Settings {
        Settings {
            namespaces,
            domain_suffix: None,
            yatai_endpoint: None,
            yatai_api_token: None,
            image_registry: None,
            image_registry_insecure: false,
            build_concurrency: 1,
            reconcile_concurrency: 16,
            operator_namespace: operator_namespace.to_string(),
            webhook_listen: "127.0.0.1:0".parse().expect("an address"),
            webhook_url: None,
            leader_election: false,
            identity: format!("test-{}", std::process::id()),
            image_registry_username: None,
            image_registry_password: None,
            build_cache_dir: std::env::temp_dir().join("yatai-operator-test-build"),
            build_base: None,
            build_uv: PathBuf::from("uv"),
            build_uv_cache: None,
        }
    }
}

/// Shared by every reconcile.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub settings: Arc<Settings>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

/// The field manager of every server-side apply: one owner for every field the operator sets.
pub const FIELD_MANAGER: &str = "yatai-operator";

impl Context {
    pub fn new(client: kube::Client, settings: Settings) -> Context {
        Context::with_metrics(client, settings, Arc::default())
    }

    /// With the metrics the client counts its requests into.
    pub fn with_metrics(client: kube::Client, settings: Settings, metrics: Arc<Metrics>) -> Context {
        let reporter = Reporter { controller: "yatai-operator".into(), instance: Some(settings.identity.clone()) };
        Context { recorder: Recorder::new(client.clone(), reporter), client, settings: Arc::new(settings), metrics }
    }
}

/// How a controller's watches retry after the API server fails: 250 ms, doubling to 5 s, back
/// to 250 ms after the first event that arrives. kube's default (0.8 s to 30 s, reset only
/// after two quiet minutes) is shared by every watch of a controller, so one API server
/// restart left the operator deaf for most of a minute.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: std::time::Duration,
}

impl WatchBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(250);
    const MAX: std::time::Duration = std::time::Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<std::time::Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}
