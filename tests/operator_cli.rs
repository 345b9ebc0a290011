//! `yatai crds` and `yatai operator` as a platform engineer runs them: the CRDs printed and
//! applied with kubectl, the operator started with its flags against a real control plane,
//! Yatai-style manifests applied with kubectl, `kubectl get bentodeployments` showing the URL,
//! `/metrics`, and a clean stop on SIGTERM.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{wait_for, yatai_bin};
use yatai_kube_testbed::Testbed;

const WAIT: Duration = Duration::from_secs(90);

fn kubectl_bin() -> PathBuf {
    let cache = std::env::var("K8S_TESTBED_CACHE").unwrap_or_else(|_| "/var/cache/yatai-rs/k8s".into());
    let version = std::env::var("K8S_TESTBED_K8S_VERSION").unwrap_or_else(|_| "1.37.2".into());
    PathBuf::from(cache).join(format!("bin/kubernetes-v{version}/kubectl"))
}

struct Kubectl(PathBuf);

impl Kubectl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut child = Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(&self.0)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, text) = self.run(args, stdin);
        assert!(ok, "kubectl {args:?} failed: {text}");
        text
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_and_operator_from_the_command_line() {
    let testbed = Testbed::shared().await.unwrap();
    let ns = testbed.namespace("operator-cli").await.unwrap();
    let n = ns.name().to_string();
    let kubectl = Kubectl(testbed.kubeconfig().to_path_buf());

    // yatai crds | kubectl apply -f -
    let crds = Command::new(yatai_bin()).arg("crds").output().unwrap();
    assert!(crds.status.success());
    let yaml = String::from_utf8(crds.stdout).unwrap();
    let applied = kubectl.ok(&["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(&yaml));
    for crd in ["bentodeployments.serving.yatai.ai", "bentorequests.resources.yatai.ai", "bentoes.resources.yatai.ai"] {
        assert!(applied.contains(crd), "{applied}");
    }
    kubectl
        .ok(&["wait", "--for=condition=Established", "crd/bentodeployments.serving.yatai.ai", "--timeout=60s"], None);

    // A bad kubeconfig is an error that names it, not a hang.
    let bad = Command::new(yatai_bin())
        .args(["operator", "--kubeconfig", "/nonexistent/kubeconfig", "--metrics-listen", "off"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");

    let metrics_port = free_port();
    let webhook_port = free_port();
    let log = support::Scratch::new("operator-cli");
    let log_path = log.path().join("operator.log");
    let operator = Operator(
        Command::new(yatai_bin())
            .arg("operator")
            .arg("--kubeconfig")
            .arg(testbed.kubeconfig())
            .args(["--namespaces", &n, "--operator-namespace", &n, "--domain-suffix", "10.0.0.7.sslip.io"])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook_port}")])
            .args(["--webhook-url", &format!("https://127.0.0.1:{webhook_port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );

    // Yatai's own manifests, applied with kubectl.
    let manifests = format!(
        r#"
apiVersion: resources.yatai.ai/v1alpha1
kind: Bento
metadata:
  name: iris--v1
  namespace: {n}
spec:
  tag: iris:v1
  image: registry.test/bentos:yatai.iris.v1
---
apiVersion: serving.yatai.ai/v2alpha1
kind: BentoDeployment
metadata:
  name: iris
  namespace: {n}
spec:
  bento: iris--v1
  ingress:
    enabled: true
  resources:
    requests: {{cpu: 500m, memory: 1Gi}}
  autoscaling:
    minReplicas: 1
    maxReplicas: 3
"#
    );
    kubectl.ok(&["apply", "-f", "-"], Some(&manifests));

    let table = wait_for("kubectl get bentodeployments to show it available", WAIT, || {
        let (_, out) = kubectl.run(&["get", "bentodeployments", "-n", &n], None);
        out.lines().any(|l| l.starts_with("iris ") && l.contains("True") && l.contains("sslip.io")).then_some(out)
    });
    let header = table.lines().next().unwrap();
    for column in ["NAME", "BENTO", "AVAILABLE", "READY", "URL", "AGE"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(table.contains(&format!("http://iris-{n}.10.0.0.7.sslip.io")), "{table}");

    let metrics = wait_for("metrics", WAIT, || http_get(metrics_port, "/metrics"));
    assert!(metrics.contains("yatai_operator_reconciles_total{controller=\"bentodeployment\"}"), "{metrics}");
    assert!(metrics.contains("yatai_operator_leader 1"), "{metrics}");
    assert!(http_get(metrics_port, "/readyz").unwrap().starts_with("HTTP/1.1 200"));

    // A second replica stands by: it serves its webhook and metrics but does not lead.
    let standby_metrics = free_port();
    let standby_webhook = free_port();
    let standby = Operator(
        Command::new(yatai_bin())
            .arg("operator")
            .arg("--kubeconfig")
            .arg(testbed.kubeconfig())
            .args(["--namespaces", &n, "--operator-namespace", &n, "--domain-suffix", "10.0.0.7.sslip.io"])
            .args(["--metrics-listen", &format!("127.0.0.1:{standby_metrics}")])
            .args(["--webhook-listen", &format!("127.0.0.1:{standby_webhook}")])
            .args(["--webhook-url", &format!("https://127.0.0.1:{standby_webhook}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the stand-by's metrics", WAIT, || {
        http_get(standby_metrics, "/metrics").filter(|m| m.contains("yatai_operator_leader 0"))
    });
    assert!(http_get(metrics_port, "/metrics").unwrap().contains("yatai_operator_leader 1"));

    // SIGTERM: a clean, prompt exit that hands the lease over.
    let mut operator = operator;
    unsafe { libc::kill(operator.0.id() as i32, libc::SIGTERM) };
    let status =
        wait_for("the operator to exit after SIGTERM", Duration::from_secs(20), || operator.0.try_wait().unwrap());
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "exit {status:?}; log:\n{text}");
    wait_for("the stand-by to lead", WAIT, || {
        http_get(standby_metrics, "/metrics").filter(|m| m.contains("yatai_operator_leader 1"))
    });
    // The new leader reconciles: a new deployment becomes available.
    kubectl.ok(&["apply", "-f", "-"], Some(&manifests.replace("name: iris\n", "name: iris2\n")));
    wait_for("the new leader to make iris2 available", WAIT, || {
        let (_, out) = kubectl.run(&["get", "bentodeployments", "iris2", "-n", &n], None);
        out.lines().any(|l| l.starts_with("iris2 ") && l.contains("True")).then_some(())
    });
    drop(standby);
    ns.delete().await.unwrap();
}
