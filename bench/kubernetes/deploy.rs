//! Driver of bench/kubernetes/run.sh (issue 13): what yatai's Kubernetes target adds to a
//! deployment on a cluster, measured side by side with a plain client on the same testbed and
//! the same operator ($YATAI_BIN, release build):
//!   - time from apply to `running` with a cached image (the Bento names an existing image):
//!     yatai's `KubeTarget::apply` until its status report says running, vs. a plain client's
//!     server-side apply of the same Bento and BentoDeployment until `Available=True`;
//!   - the load yatai puts on the API server: requests per minute with no deployment (its
//!     watches) and with N running deployments, per deployment; the watches it holds.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{Patch, PatchParams};
use yatai_core::deploy::{
    ArtifactRef, DeployTarget, DeploymentSpec, KubeClusterConfig, Phase, Resources, Scaling, StatusSink,
};
use yatai_kube_api::Bento;
use yatai_kube_api::condition;
use yatai_kube_api::serving::v2alpha1::BentoDeployment;
use yatai_kube_target::{KubeTarget, objects};
use yatai_kube_testbed::Testbed;

const ROUNDS: usize = 5;
const IDLE: Duration = Duration::from_secs(60);
const IMAGE: &str = "registry.test/bentos:yatai.iris.v1";

#[derive(Default)]
struct Running(Mutex<Vec<String>>);

impl StatusSink for Running {
    fn status(&self, uid: &str, _name: &str, phase: Phase, _reason: &str) {
        if phase == Phase::Running {
            self.0.lock().unwrap().push(uid.to_string());
        }
    }
    fn port_changed(&self, _uid: &str, _port: u16) {}
}

fn spec(ns: &str, i: usize) -> DeploymentSpec {
    let name = format!("yatai-{i}");
    DeploymentSpec {
        uid: format!("uid-{i}"),
        org_uid: "org".into(),
        host: Some(format!("{name}-{ns}")),
        name,
        namespace: ns.into(),
        access_authorization: false,
        revision_uid: format!("rev-{i}"),
        bento: ArtifactRef {
            name: "iris_classifier".into(),
            version: format!("v{i}"),
            digest: "d".into(),
            storage_key: "k".into(),
        },
        models: vec![],
        image: Some(IMAGE.into()),
        python_version: None,
        envs: vec![],
        secrets: vec![],
        scaling: Scaling { min: 1, max: 1, target_inflight: 10.0, scale_down_window: Duration::from_secs(60) },
        resources: Resources {
            cpu_request: Some("10m".into()),
            memory_request: Some("16Mi".into()),
            ..Default::default()
        },
        port: 0,
        cold_start_timeout: Duration::from_secs(300),
    }
}

async fn poll<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let yatai = std::env::var("YATAI_BIN").unwrap_or_else(|_| "target/release/yatai".into());
    let testbed = Testbed::shared().await?;
    let ns = testbed.namespace("kbench").await?;
    let name = ns.name().to_string();
    yatai_operator::crds::install_missing(&ns.client(), &Default::default()).await?;
    let webhook = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _operator = Operator(
        Command::new(&yatai)
            .arg("operator")
            .arg("--kubeconfig")
            .arg(testbed.kubeconfig())
            .args(["--namespaces", &name, "--operator-namespace", &name, "--domain-suffix", "10.0.0.7.sslip.io"])
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook}")])
            .args(["--webhook-url", &format!("https://127.0.0.1:{webhook}")])
            .args(["--metrics-listen", "off"])
            .env("YATAI_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );

    let running = Arc::new(Running::default());
    let config = KubeClusterConfig {
        kubeconfig: Some(std::fs::read_to_string(testbed.kubeconfig())?),
        namespace: name.clone(),
        ..Default::default()
    };
    let target = KubeTarget::connect("bench", &config, running.clone()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    target.ready(&name).await;

    // Idle: only the watches.
    let before = target.api_requests();
    tokio::time::sleep(IDLE).await;
    let idle_per_min = (target.api_requests() - before) as f64 * 60.0 / IDLE.as_secs_f64();

    // Side by side: a plain client applying the same objects, then yatai, round by round.
    let bds: Api<BentoDeployment> = ns.api();
    let bentos: Api<Bento> = ns.api();
    let plain = PatchParams::apply("bench-plain").force();
    let (mut floor, mut ours) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let mut s = spec(&name, 100 + i);
        s.name = format!("plain-{i}");
        let start = Instant::now();
        let bento = objects::bento(&s, IMAGE);
        bentos.patch(&bento.metadata.name.clone().unwrap(), &plain, &Patch::Apply(&bento)).await?;
        bds.patch(&s.name, &plain, &Patch::Apply(&objects::bento_deployment(&s))).await?;
        poll("the plain BentoDeployment Available", async || {
            let bd = bds.get(&s.name).await.ok()?;
            bd.status.as_ref().is_some_and(|st| condition::is_true(&st.conditions, "Available")).then_some(())
        })
        .await?;
        floor.push(start.elapsed().as_secs_f64());

        let s = spec(&name, i);
        let start = Instant::now();
        target.apply(s.clone()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        poll("yatai's deployment running", async || running.0.lock().unwrap().contains(&s.uid).then_some(())).await?;
        ours.push(start.elapsed().as_secs_f64());
        eprintln!("round {i}: plain {:.2} s, yatai {:.2} s", floor.last().unwrap(), ours.last().unwrap());
    }
    for i in 0..ROUNDS {
        let _ = bds.delete(&format!("plain-{i}"), &Default::default()).await;
    }

    // Load with ROUNDS deployments running (each one pod, followed for logs, sampled for metrics).
    let before = target.api_requests();
    tokio::time::sleep(IDLE).await;
    let busy_per_min = (target.api_requests() - before) as f64 * 60.0 / IDLE.as_secs_f64();

    let (f, o) = (median(floor), median(ours));
    println!("| measure | result |");
    println!("|---|---|");
    println!("| apply → Available, plain client (median of {ROUNDS}) | {:.0} ms |", f * 1000.0);
    println!("| apply → `running` reported by yatai's target (median of {ROUNDS}) | {:.0} ms |", o * 1000.0);
    println!("| yatai ÷ plain | {:.2} |", o / f);
    println!("| yatai's API requests per minute, no deployment | {idle_per_min:.1} |");
    println!("| yatai's API requests per minute, {ROUNDS} running deployments | {busy_per_min:.1} |");
    println!("| per running deployment | {:.1} requests/min |", (busy_per_min - idle_per_min) / ROUNDS as f64);
    for i in 0..ROUNDS {
        target.remove(&format!("uid-{i}")).await;
    }
    Ok(())
}
