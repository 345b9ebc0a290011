//! Setup shared by the tests against the Kubernetes testbed: yatai's CRDs and a namespace,
//! `yatai operator` as a platform engineer starts it, and the cluster registered beside a
//! running server with `yatai cluster add`, as the README does.
//!
//! Include it from a test binary with
//!
//! ```ignore
//! #[path = "support/kube.rs"]
//! mod kube_support;
//! ```

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

use yatai_kube_testbed::Testbed;

use crate::support::{Server, yatai_bin};

/// The ingress domain suffix the operator and the cluster are given.
pub const SUFFIX: &str = "10.0.0.7.sslip.io";

/// A running `yatai operator`, killed when dropped.
pub struct Operator(Child);

impl Operator {
    /// Kills it and waits for it to exit (its Lease stays until it expires).
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `yatai operator` as a platform engineer starts it, for the namespace `ns`, with the domain
/// suffix [`SUFFIX`].
pub fn start_operator(testbed: &Testbed, ns: &str) -> Operator {
    start_operator_with(testbed, ns, &["--domain-suffix", SUFFIX], &[])
}

/// `yatai operator` for the namespace `ns` (also its own namespace), its webhook on a free
/// port, with `args` and `env` added; without `--domain-suffix` in `args`, it discovers the
/// suffix from the ingress controller; without `--metrics-listen`, it serves no metrics.
pub fn start_operator_with(testbed: &Testbed, ns: &str, args: &[&str], env: &[(&str, &str)]) -> Operator {
    let webhook = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_off: &[&str] = if args.contains(&"--metrics-listen") { &[] } else { &["--metrics-listen", "off"] };
    Operator(
        Command::new(yatai_bin())
            .arg("operator")
            .arg("--kubeconfig")
            .arg(testbed.kubeconfig())
            .args(["--namespaces", ns, "--operator-namespace", ns])
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook}")])
            .args(["--webhook-url", &format!("https://127.0.0.1:{webhook}")])
            .args(metrics_off)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

/// Waits until the operator holds its Lease in `ns`: registering a cluster checks that one runs.
pub fn wait_for_operator(rt: &tokio::runtime::Runtime, client: &kube::Client, ns: &str) {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> = kube::Api::namespaced(client.clone(), ns);
    crate::support::wait_for("the operator's Lease", std::time::Duration::from_secs(120), || {
        let lease = rt.block_on(leases.get_opt("yatai-operator")).unwrap()?;
        lease.spec?.holder_identity.map(|_| ())
    });
}

/// yatai's CRDs installed, and the namespace `ns` created (kept if it exists); returns an
/// admin client.
pub async fn prepare(testbed: &Testbed, ns: &str) -> kube::Client {
    use k8s_openapi::api::core::v1::Namespace;
    let admin = testbed.client().await.unwrap();
    yatai_operator::crds::install_missing(&admin, &Default::default()).await.unwrap();
    let namespaces: kube::Api<Namespace> = kube::Api::all(admin.clone());
    if namespaces.get_opt(ns).await.unwrap().is_none() {
        let namespace = Namespace {
            metadata: kube::api::ObjectMeta { name: Some(ns.into()), ..Default::default() },
            ..Default::default()
        };
        namespaces.create(&Default::default(), &namespace).await.unwrap();
    }
    admin
}

/// The shared testbed, prepared as [`prepare`] does.
pub async fn prepared_testbed(ns: &str) -> &'static Testbed {
    let testbed = Testbed::shared().await.unwrap();
    prepare(testbed, ns).await;
    testbed
}

/// Registers the testbed as cluster `testbed` (namespace `ns`, domain suffix [`SUFFIX`]) with
/// `yatai cluster add` beside the running server, which connects it when it is first used.
pub fn add_cluster(server: &Server, testbed: &Testbed, ns: &str) {
    add_cluster_with(server, testbed, ns, Some(SUFFIX));
}

/// [`add_cluster`] with the given domain suffix, or none: the one the operator discovered (its
/// `network` ConfigMap) is then used.
pub fn add_cluster_with(server: &Server, testbed: &Testbed, ns: &str, suffix: Option<&str>) {
    let kubeconfig = testbed.kubeconfig().display().to_string();
    let mut args = vec!["cluster", "add", "testbed", "--kubeconfig", &kubeconfig];
    args.extend(["--namespace", ns, "--operator-namespace", ns]);
    if let Some(suffix) = suffix {
        args.extend(["--domain-suffix", suffix]);
    }
    let out = server.admin(&args);
    assert!(out.contains("testbed"), "{out}");
}
