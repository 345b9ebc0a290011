//! A Kubernetes cluster ready for yatai, for tests that deploy to one: the
//! testbed's control plane (kwok nodes) with yatai's CRDs, the namespace
//! deployments go to, and `yatai operator` running as a platform engineer
//! starts it.
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

/// The domain suffix the operator gives deployments' hosts.
pub const SUFFIX: &str = "10.0.0.7.sslip.io";

/// A running `yatai operator`, killed when dropped.
pub struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `yatai operator` for the namespace `ns` (its Lease in `ns` too).
pub fn start_operator(testbed: &Testbed, ns: &str) -> Operator {
    let webhook = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    Operator(
        Command::new(crate::support::yatai_bin())
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

/// The shared testbed with yatai's CRDs installed and the namespace `ns`
/// created (kept if it exists).
pub async fn prepared_testbed(ns: &str) -> &'static Testbed {
    use k8s_openapi::api::core::v1::Namespace;
    let testbed = Testbed::shared().await.unwrap();
    let admin = testbed.client().await.unwrap();
    yatai_operator::crds::install_missing(&admin, &Default::default()).await.unwrap();
    let namespaces: kube::Api<Namespace> = kube::Api::all(admin);
    if namespaces.get_opt(ns).await.unwrap().is_none() {
        let namespace = Namespace {
            metadata: kube::api::ObjectMeta { name: Some(ns.into()), ..Default::default() },
            ..Default::default()
        };
        namespaces.create(&Default::default(), &namespace).await.unwrap();
    }
    testbed
}
