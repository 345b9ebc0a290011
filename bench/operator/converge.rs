//! Driver of bench/operator/run.sh: creates N BentoDeployments on a kwok testbed, starts
//! `yatai operator` ($YATAI_BIN) and measures how long it takes to converge them, the latency
//! of one new deployment while N exist, and the operator's footprint.

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use yatai_kube_api::Bento;
use yatai_kube_api::condition;
use yatai_kube_api::resources::BentoSpec;
use yatai_kube_api::serving::v2alpha1::{
    Autoscaling, BentoDeployment, BentoDeploymentSpec, Ingress, ResourceItem, Resources,
};
use yatai_kube_testbed::Testbed;

const BENTOS: usize = 10;

fn deployment(i: usize) -> BentoDeployment {
    let small = ResourceItem { cpu: "10m".into(), memory: "16Mi".into(), ..Default::default() };
    BentoDeployment::new(
        &format!("bd-{i:04}"),
        BentoDeploymentSpec {
            bento: format!("bento-{}", i % BENTOS),
            autoscaling: Some(Autoscaling { min_replicas: 1, max_replicas: 2, ..Default::default() }),
            resources: Some(Resources { requests: Some(small.clone()), limits: Some(small) }),
            ingress: Ingress { enabled: true, ..Default::default() },
            ..Default::default()
        },
    )
}

/// Reconciled = status written for the current generation; available = Available=True.
fn counts(list: &[BentoDeployment]) -> (usize, usize) {
    let reconciled = list
        .iter()
        .filter(|b| {
            b.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == b.metadata.generation && !s.conditions.is_empty())
        })
        .count();
    let available = list
        .iter()
        .filter(|b| b.status.as_ref().is_some_and(|s| condition::is_true(&s.conditions, "Available")))
        .count();
    (reconciled, available)
}

struct Proc {
    child: Child,
    clock_ticks: f64,
}

impl Proc {
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / self.clock_ticks
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric(port: u16, name: &str) -> f64 {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return 0.0 };
    use std::io::Write as _;
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let yatai = std::env::var("YATAI_BIN").unwrap_or_else(|_| "target/release/yatai".into());
    let testbed = Testbed::shared().await?;
    let ns = testbed.namespace("bench").await?;
    let name = ns.name().to_string();
    yatai_operator::crds::install_missing(&ns.client(), &Default::default()).await?;

    eprintln!("creating {BENTOS} Bentos and {n} BentoDeployments in {name} …");
    let bentos: Api<Bento> = ns.api();
    for i in 0..BENTOS {
        let spec =
            BentoSpec { tag: format!("b{i}:v1"), image: format!("r.test/b:yatai.b{i}.v1"), ..Default::default() };
        bentos.create(&PostParams::default(), &Bento::new(&format!("bento-{i}"), spec)).await?;
    }
    let bds: Api<BentoDeployment> = ns.api();
    let created = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let bds = bds.clone();
            async move { bds.create(&PostParams::default(), &deployment(i)).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!("created in {:.1} s; starting the operator", created.elapsed().as_secs_f64());

    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let webhook_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let clock_ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let start = Instant::now();
    let op = Proc {
        child: Command::new(&yatai)
            .arg("operator")
            .arg("--kubeconfig")
            .arg(testbed.kubeconfig())
            .args(["--namespaces", &name, "--operator-namespace", &name, "--domain-suffix", "10.0.0.7.sslip.io"])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook_port}")])
            .args(["--webhook-url", &format!("https://127.0.0.1:{webhook_port}")])
            .env("YATAI_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
        clock_ticks,
    };

    // The driver watches instead of listing: a list of 1,000 BentoDeployments four times a
    // second costs the API server more than the operator does.
    let (store, writer) = kube::runtime::reflector::store();
    let watch = kube::runtime::reflector(writer, kube::runtime::watcher(bds.clone(), Default::default()))
        .for_each(|_| std::future::ready(()));
    let watch = tokio::spawn(watch);
    store.wait_until_ready().await?;

    let mut peak_rss: f64 = 0.0;
    let mut converged = None;
    let mut all_available = None;
    let mut last_progress = Instant::now();
    let deadline = Duration::from_secs(600);
    while start.elapsed() < deadline {
        peak_rss = peak_rss.max(op.rss_mib());
        let list: Vec<BentoDeployment> = store.state().iter().map(|b| (**b).clone()).collect();
        let (reconciled, available) = counts(&list);
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            eprintln!(
                "{:>5.0} s: {reconciled} reconciled, {available} available; operator: {:.0} requests, {:.0} reconciles",
                start.elapsed().as_secs_f64(),
                metric(metrics_port, "yatai_operator_api_requests_total"),
                metric(metrics_port, "yatai_operator_reconciles_total"),
            );
        }
        if converged.is_none() && reconciled == n {
            converged = Some((
                start.elapsed(),
                op.cpu_seconds(),
                metric(metrics_port, "yatai_operator_api_requests_total"),
                metric(metrics_port, "yatai_operator_reconciles_total"),
            ));
            eprintln!("all {n} reconciled after {:.1} s", start.elapsed().as_secs_f64());
        }
        if available == n {
            all_available = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    watch.abort();
    let (converge_time, converge_cpu, requests, reconciles) =
        converged.ok_or_else(|| anyhow::anyhow!("not converged within {deadline:?}"))?;

    // Idle: what a converged operator costs.
    let idle_from = op.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let idle_cpu = (op.cpu_seconds() - idle_from) / 20.0 * 100.0;
    let idle_rss = op.rss_mib();

    // One new deployment while N exist: until its status is written, and until Available.
    let mut written = Vec::new();
    let mut serving = Vec::new();
    for k in 0..5 {
        let bd = deployment(n + k);
        let t = Instant::now();
        bds.create(&PostParams::default(), &bd).await?;
        let mut seen_written = None;
        loop {
            let b = bds.get(&bd.name_any()).await?;
            if seen_written.is_none() && counts(std::slice::from_ref(&b)).0 == 1 {
                seen_written = Some(t.elapsed());
            }
            if counts(std::slice::from_ref(&b)).1 == 1 {
                serving.push(t.elapsed());
                break;
            }
            if t.elapsed() > Duration::from_secs(120) {
                anyhow::bail!("the new deployment did not become available");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        written.push(seen_written.unwrap_or_default());
    }
    written.sort();
    serving.sort();

    drop(op);

    // Side by side, on the same API server and neighbours: the same 4 × N children applied by
    // a plain client (16 at once, no operator, no status), the floor any operator meets here.
    let floor_ns = testbed.namespace("bench-floor").await?;
    let floor = apply_children_directly(&floor_ns, n).await?;
    eprintln!("a plain client applied the same children in {:.1} s", floor.as_secs_f64());

    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!("| measure | result |");
    println!("|---|---|");
    println!("| BentoDeployments | {n} (kwok nodes: {}) |", std::env::var("K8S_TESTBED_NODES").unwrap_or_default());
    println!(
        "| cold start → all {n} reconciled (children applied, status written) | {:.1} s |",
        converge_time.as_secs_f64()
    );
    match all_available {
        Some(t) => println!("| cold start → all {n} Available (pods Ready on kwok) | {:.1} s |", t.as_secs_f64()),
        None => println!("| cold start → all {n} Available | not within {deadline:?} |"),
    }
    println!(
        "| the same {} children server-side applied by a plain client, 16 at once (the floor here) | {:.1} s |",
        4 * n,
        floor.as_secs_f64()
    );
    println!(
        "| operator's cold start ÷ the plain client's | {:.2} |",
        converge_time.as_secs_f64() / floor.as_secs_f64()
    );
    println!("| one new BentoDeployment while {n} exist → status written (median of 5) | {} |", ms(written[2]));
    println!("| one new BentoDeployment while {n} exist → Available (median of 5) | {} |", ms(serving[2]));
    println!("| operator peak RSS while converging | {peak_rss:.0} MiB |");
    println!("| operator RSS idle | {idle_rss:.0} MiB |");
    println!(
        "| operator CPU while converging | {converge_cpu:.1} CPU-s ({:.0} % of one core) |",
        converge_cpu / converge_time.as_secs_f64() * 100.0
    );
    println!("| operator CPU idle | {idle_cpu:.1} % of one core |");
    println!(
        "| API requests per reconcile (until converged) | {:.1} ({requests:.0} requests / {reconciles:.0} reconciles) |",
        requests / reconciles.max(1.0)
    );
    // No namespace deletion: collecting thousands of objects outlasts any sensible wait, and
    // the testbed goes with this process.
    drop((ns, floor_ns));
    Ok(())
}

/// Server-side applies the Deployment, Service, HPA and Ingress the operator makes for each of
/// `n` deployments (without owner references, which would have them collected), 16
/// deployments at once; returns how long it took.
async fn apply_children_directly(ns: &yatai_kube_testbed::TestNamespace, n: usize) -> anyhow::Result<Duration> {
    use kube::api::{Patch, PatchParams};
    use yatai_operator::bento_deployment::children;
    let network = yatai_operator::network::Network::from_config_map(&Default::default()).map_err(anyhow::Error::msg)?;
    let bentos: Vec<Bento> = (0..BENTOS)
        .map(|i| {
            let spec =
                BentoSpec { tag: format!("b{i}:v1"), image: format!("r.test/b:yatai.b{i}.v1"), ..Default::default() };
            Bento::new(&format!("bento-{i}"), spec)
        })
        .collect();
    async fn apply<K>(api: Api<K>, mut object: K) -> anyhow::Result<()>
    where
        K: kube::Resource<DynamicType = ()>
            + k8s_openapi::serde::Serialize
            + k8s_openapi::serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        object.meta_mut().owner_references = None;
        let name = object.meta().name.clone().unwrap_or_default();
        let value = yatai_kube_api::apply_body(&object);
        api.patch(&name, &PatchParams::apply("bench-floor").force(), &Patch::Apply(value)).await?;
        Ok(())
    }
    let started = Instant::now();
    let results = futures_util::stream::iter(0..n)
        .map(|i| {
            let mut bd = deployment(i);
            bd.metadata.namespace = Some(ns.name().to_string());
            bd.metadata.uid = Some(format!("floor-{i}"));
            let bento = bentos[i % BENTOS].clone();
            let network = network.clone();
            async move {
                let c = children::build(&bd, &bento, &network, Some("10.0.0.7.sslip.io"))
                    .map_err(|e| anyhow::anyhow!("{}", e.0))?;
                apply(ns.api(), c.deployment).await?;
                apply(ns.api(), c.service).await?;
                apply(ns.api(), c.hpa).await?;
                if let Some(ingress) = c.ingress {
                    apply(ns.api(), ingress).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(started.elapsed())
}
