//! The real node of a testbed started with `K8S_TESTBED_REAL_NODE=1`: what tests need to
//! reach it, read from the testbed's `testbed.env` beside its kubeconfig.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;

/// Tests that need a real node run only when this is `1`: the node changes the host (a bridge,
/// iptables rules, cgroups) and needs root, so default test runs leave it out.
pub const REAL_NODE_ENV: &str = "YATAI_TEST_REAL_NODE";

/// Whether tests that need a real node should run (`YATAI_TEST_REAL_NODE=1`).
pub fn real_node_enabled() -> bool {
    std::env::var(REAL_NODE_ENV).is_ok_and(|v| v == "1")
}

/// A node that runs containers, with a loopback OCI registry it pulls from, Traefik serving
/// Ingresses, and metrics-server behind `metrics.k8s.io`.
#[derive(Debug, Clone)]
pub struct RealNode {
    name: String,
    ingress: String,
    registry: String,
}

impl RealNode {
    /// The real node described beside `kubeconfig`, if the testbed has one.
    pub(crate) fn of(kubeconfig: &Path) -> anyhow::Result<Option<RealNode>> {
        let Some(env_file) = kubeconfig.parent().map(|dir| dir.join("testbed.env")) else {
            return Ok(None);
        };
        if !env_file.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&env_file).with_context(|| format!("reading {}", env_file.display()))?;
        let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let (Some(name), Some(ingress), Some(registry)) =
            (vars.get("REAL_NODE"), vars.get("INGRESS"), vars.get("REGISTRY"))
        else {
            return Ok(None);
        };
        Ok(Some(RealNode { name: name.to_string(), ingress: ingress.to_string(), registry: registry.to_string() }))
    }

    /// The Node's name, e.g. for a `kubernetes.io/hostname` node selector.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `HOST:PORT` where Traefik serves Ingresses over plain HTTP (on loopback). Every Ingress
    /// gets `127.0.0.1` as its load-balancer address; send the rule's host as the Host header,
    /// e.g. `web-ns.127.0.0.1.sslip.io`, so that no test depends on public DNS.
    pub fn ingress(&self) -> &str {
        &self.ingress
    }

    /// `HOST:PORT` of the registry the node pulls from (plain HTTP, on loopback); push images
    /// there and name them `<registry>/<repository>:<tag>`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// An image in the registry with Debian's static busybox and every applet in `/bin`
    /// (`sh`, `httpd`, `nc`…); its default command is `/bin/sh`.
    pub fn busybox_image(&self) -> String {
        format!("{}/testbed/busybox:1", self.registry)
    }
}
