//! Proves that `scripts/k8s-testbed stop` leaves nothing of a real node on the host: no
//! process, interface, route, iptables rule, mount, cgroup or path (`check-clean`), after a
//! pod really ran. And that `check-clean` sees those things while the node runs, so that its
//! passing means something.
//!
//! Runs only with `YATAI_TEST_REAL_NODE=1` (root). It needs the machine's one real-node slot,
//! so it waits for another test binary's real-node testbed to finish stopping first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use yatai_kube_testbed::{Testbed, poll_until, real_node_enabled};

/// Control-plane ports for this test: below the range the crate picks bases from
/// (20000-32000) and beside the real node's own (19400-19407).
const PORT_BASE: &str = "19380";
const MARKER: &str = "/run/yatai-k8s-testbed-real-node";

fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/k8s-testbed"))
}

fn testbed(args: &[&str]) -> anyhow::Result<Output> {
    Command::new("bash")
        .arg(script())
        .args(args)
        .env("K8S_TESTBED_PORT_BASE", PORT_BASE)
        .env("K8S_TESTBED_REAL_NODE", "1")
        .output()
        .with_context(|| format!("running scripts/k8s-testbed {args:?}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Stops the testbed if the test ends early, so that a failure does not hold the host.
struct StopOnDrop;
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = testbed(&["stop"]);
    }
}

#[tokio::test]
async fn stop_leaves_nothing_of_the_real_node_behind() -> anyhow::Result<()> {
    if !real_node_enabled() {
        eprintln!(
            "stop_leaves_nothing_of_the_real_node_behind: skipped; set YATAI_TEST_REAL_NODE=1 (as root) to run it"
        );
        return Ok(());
    }
    // Another test binary's testbed stops after that binary exits; wait for the slot.
    poll_until(Duration::from_secs(180), "no other real-node testbed on this machine", || async {
        Ok::<_, std::convert::Infallible>((!Path::new(MARKER).exists()).then_some(()))
    })
    .await?;

    let started = testbed(&["start"])?;
    let _stop = StopOnDrop;
    ensure!(started.status.success(), "start failed:\n{}", text(&started));
    let kubeconfig = String::from_utf8_lossy(&started.stdout).lines().last().unwrap_or_default().to_string();

    // A second real node on the machine is refused, and says why.
    let second = Command::new("bash")
        .arg(script())
        .arg("start")
        .env("K8S_TESTBED_PORT_BASE", "19390")
        .env("K8S_TESTBED_REAL_NODE", "1")
        .output()?;
    ensure!(!second.status.success(), "a second real-node testbed started:\n{}", text(&second));
    ensure!(text(&second).contains("already running"), "the refusal should say why:\n{}", text(&second));

    // A pod that runs, so that there are containers, a veth, mounts and pod cgroups to remove.
    let tb = Testbed::attach(PathBuf::from(&kubeconfig))?;
    let node = tb.real_node().context("the started testbed has no real node")?;
    let ns = tb.namespace("teardown").await?;
    let pods: Api<Pod> = ns.api();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper"},
        "spec": {"containers": [{"name": "sleep", "image": node.busybox_image(), "command": ["sleep", "3600"]}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    poll_until(Duration::from_secs(120), "pod sleeper Running", || async {
        let phase = pods.get("sleeper").await?.status.and_then(|s| s.phase);
        Ok::<_, kube::Error>((phase.as_deref() == Some("Running")).then_some(()))
    })
    .await?;

    // The guard that keeps pods on the host is the first rule of mangle FORWARD.
    let mangle = Command::new("iptables").args(["-t", "mangle", "-S", "FORWARD"]).output()?;
    let first_rule = String::from_utf8_lossy(&mangle.stdout).lines().nth(1).unwrap_or_default().to_string();
    ensure!(
        first_rule.contains("pods may not leave the host") && first_rule.ends_with("-j DROP"),
        "the first mangle FORWARD rule should drop pod traffic leaving the bridge, is {first_rule:?}"
    );

    let dirty = testbed(&["check-clean"])?;
    ensure!(!dirty.status.success(), "check-clean passed while a real node runs:\n{}", text(&dirty));
    for expected in [
        "interface ytestbed0",
        "kubelet",
        "containerd-shim-runc-v2",
        "cgroup /sys/fs/cgroup/",
        "KUBE-SERVICES",
        "pods may not leave the host",
    ] {
        ensure!(
            text(&dirty).contains(expected),
            "check-clean did not list {expected:?} while the node runs:\n{}",
            text(&dirty)
        );
    }
    drop(ns);

    let t = std::time::Instant::now();
    let stopped = testbed(&["stop"])?;
    ensure!(stopped.status.success(), "stop failed:\n{}", text(&stopped));
    eprintln!("stop took {:.1}s", t.elapsed().as_secs_f64());
    let clean = testbed(&["check-clean"])?;
    ensure!(clean.status.success(), "stop left things behind:\n{}", text(&clean));
    Ok(())
}
