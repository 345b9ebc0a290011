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

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `yatai operator` as a platform engineer starts it, for the namespace `ns`.
pub fn start_operator(testbed: &Testbed, ns: &str) -> Operator {
    let webhook = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    Operator(
        Command::new(yatai_bin())
            .arg("operator")
            .arg("--kubeconfig")
            .arg(testbed.kubeconfig())
            .args(["--namespaces", ns, "--operator-namespace", ns, "--domain-suffix", SUFFIX])
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook}")])
            .args(["--webhook-url", &format!("https://127.0.0.1:{webhook}")])
            .args(["--metrics-listen", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
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

/// Registers the testbed as cluster `testbed` (namespace `ns`) with `yatai cluster add` beside
/// the running server, which connects it when it is first used.
pub fn add_cluster(server: &Server, testbed: &Testbed, ns: &str) {
    let out = server.admin(&[
        "cluster",
        "add",
        "testbed",
        "--kubeconfig",
        &testbed.kubeconfig().display().to_string(),
        "--namespace",
        ns,
        "--operator-namespace",
        ns,
        "--domain-suffix",
        SUFFIX,
    ]);
    assert!(out.contains("testbed"), "{out}");
}
