//! Driver of bench/real_node/run.sh (issue 14): the seed flow on the testbed's real node, timed,
//! with the bentoml CLI, `yatai serve` and `yatai operator` as the tests run them.
//!
//! 1. `bentoml deployment create --cluster testbed` → the first correct `POST /classify`
//!    through Traefik, in parts read by polling every 100 ms (the Bento written = image built
//!    and pushed; the pod scheduled; its container running; Ready; the answer) and the pull time
//!    the kubelet reports. Per round, side by side:
//!    - *cold*: a new bento version and an empty builder cache (the dependencies layer is built
//!      by uv from its warm download cache), the image in no registry;
//!    - *new version*: another new version, the builder's cache warm (what a code change costs);
//!    - *cached*: the cold round's bento under another name: the image is in the registry and
//!      on the node, nothing is built or pulled;
//!    - *bare pod*: a plain client creates a Pod with the cached deployment's pod spec: what
//!      Kubernetes and BentoML cost without yatai (create → Ready).
//! 2. The HPA's reaction: three clients load a deployment (min 1, max 2); the time until the
//!    HPA wants 2 replicas and until the second is Ready.
//! 3. The footprint at idle: RSS of every testbed component, yatai serve, yatai operator and
//!    one idle bento pod.
//!
//! Usage: bench/real_node/run.sh [ROUNDS]   (default 3; a Markdown report on stdout)

#[path = "../../tests/support/mod.rs"]
mod support;

#[path = "../../tests/support/kube.rs"]
mod kube_support;
#[path = "../../tests/support/real_node.rs"]
mod real_node;

#[path = "../../crates/image-builder/tests/common/mod.rs"]
mod build_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use real_node::*;
use serde_json::json;
use support::*;
use yatai_kube_api::resources::Bento;
use yatai_kube_testbed::{RealNode, Testbed};

const DEADLINE: Duration = Duration::from_secs(900);

/// When each part of one deployment was first seen, in seconds from the create command.
#[derive(Default, Clone, Debug)]
struct Timeline {
    /// The Bento naming the image exists (built and pushed, or found in the registry).
    bento: Option<f64>,
    scheduled: Option<f64>,
    running: Option<f64>,
    ready: Option<f64>,
    answer: Option<f64>,
    /// What the kubelet says the pull took (0 when the image was on the node).
    pull: Option<f64>,
}

struct Bench<'a> {
    rt: tokio::runtime::Runtime,
    node: &'a RealNode,
    seed: Seed,
    client: Bentoml,
}

impl Bench<'_> {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.seed.admin.clone(), &self.seed.ns)
    }

    fn pods_of(&self, name: &str) -> Vec<Pod> {
        let selector = format!("yatai.ai/bento-deployment={name}");
        self.rt.block_on(self.pods().list(&ListParams::default().labels(&selector))).unwrap().items
    }

    /// Creates deployment `name` of `bento` with the CLI and times it until the first correct
    /// answer through Traefik.
    fn deploy(&self, name: &str, bento: &str, max: u32) -> Timeline {
        let bentos: Api<Bento> = Api::namespaced(self.seed.admin.clone(), &self.seed.ns);
        let host = format!("{name}-{}.127.0.0.1.sslip.io", self.seed.ns);
        let input = json!({"input_series": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]});
        let max = max.to_string();
        let t0 = Instant::now();
        self.client.ok(&[
            "deployment",
            "create",
            bento,
            "--name",
            name,
            "--cluster",
            "testbed",
            "--scaling-min",
            "1",
            "--scaling-max",
            &max,
            "--no-wait",
        ]);
        let mut t = Timeline::default();
        let at = |slot: &mut Option<f64>, seen: bool| {
            if seen && slot.is_none() {
                *slot = Some(t0.elapsed().as_secs_f64());
            }
        };
        let done = poll_every(Duration::from_millis(100), DEADLINE, || {
            if t.bento.is_none() {
                let list = self.rt.block_on(bentos.list(&ListParams::default())).unwrap().items;
                at(&mut t.bento, list.iter().any(|b| b.spec.tag == bento));
            }
            if let Some(pod) = self.pods_of(name).first() {
                let status = pod.status.clone().unwrap_or_default();
                at(&mut t.scheduled, pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()));
                let running = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
                at(&mut t.running, running);
                at(&mut t.ready, pod_ready(pod));
            }
            if t.ready.is_some() {
                let answered = via_ingress(self.node, &host, "POST", "/classify", Some(&input))
                    .is_ok_and(|r| r.status == 200 && r.json() == json!([0, 2]));
                at(&mut t.answer, answered);
            }
            t.answer.map(|_| ())
        });
        if done.is_none() {
            panic!("{name}: no answer in {DEADLINE:?}: {t:?}\n{}", diagnose(&self.rt, &self.seed.admin, &self.seed.ns));
        }
        if let Some(pod) = self.pods_of(name).first() {
            t.pull = self.pull_seconds(&pod.metadata.name.clone().unwrap_or_default());
        }
        t
    }

    /// The pull time from the kubelet's `Pulled` event ("… in 1.234s (…)"), 0 when the image
    /// was already present.
    fn pull_seconds(&self, pod: &str) -> Option<f64> {
        let events: Api<Event> = Api::namespaced(self.seed.admin.clone(), &self.seed.ns);
        let fields = format!("involvedObject.name={pod},reason=Pulled");
        let list = self.rt.block_on(events.list(&ListParams::default().fields(&fields))).ok()?.items;
        let message = list.into_iter().find_map(|e| e.message)?;
        if message.contains("already present") {
            return Some(0.0);
        }
        let after = message.split(" in ").nth(1)?;
        let number = after.split_whitespace().next()?;
        parse_go_duration(number)
    }

    /// A Pod with the pod spec of `like`'s pod, created by a plain client: seconds to Ready.
    fn bare_pod(&self, like: &str, name: &str) -> f64 {
        let template = self.pods_of(like).into_iter().next().expect("a pod to copy");
        let mut spec = template.spec.clone().unwrap();
        spec.node_name = None;
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("bench".to_string(), "bare".to_string())].into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        };
        let pods = self.pods();
        let t0 = Instant::now();
        self.rt.block_on(pods.create(&PostParams::default(), &pod)).unwrap();
        poll_every(Duration::from_millis(100), DEADLINE, || {
            self.rt.block_on(pods.get(name)).ok().filter(pod_ready).map(|_| ())
        })
        .unwrap_or_else(|| panic!("the bare pod {name} never turned Ready"));
        let took = t0.elapsed().as_secs_f64();
        self.rt.block_on(pods.delete(name, &DeleteParams::default())).unwrap();
        took
    }

    /// Who holds the operator's Lease.
    fn lease_holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.seed.admin.clone(), &self.seed.ns);
        self.rt.block_on(leases.get_opt("yatai-operator")).unwrap()?.spec?.holder_identity
    }

    fn delete(&self, name: &str) {
        self.client.ok(&["deployment", "delete", name, "--cluster", "testbed"]);
        poll_every(Duration::from_millis(200), WAIT, || self.pods_of(name).is_empty().then_some(()))
            .unwrap_or_else(|| panic!("{name}'s pods stayed after delete"));
    }
}

/// Seconds in a Go duration as the kubelet prints it: `1.234s`, `850ms`, `1m2.5s`.
fn parse_go_duration(s: &str) -> Option<f64> {
    let s = s.trim_end_matches([',', ')']);
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    let (minutes, rest) = match s.split_once('m') {
        Some((m, rest)) => (m.parse::<f64>().ok()?, rest),
        None => (0.0, s),
    };
    let seconds = rest.strip_suffix('s').unwrap_or(rest);
    let seconds = if seconds.is_empty() { 0.0 } else { seconds.parse::<f64>().ok()? };
    Some(minutes * 60.0 + seconds)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[n / 2],
    }
}

/// RSS in MiB of this benchmark's processes whose executable's name is in `names`, summed per
/// name: the testbed's (whose command line or environment names the testbed's directory
/// `testbed_dir`), the `yatai` processes this benchmark started, and the pods' — not those of
/// anything else running on the machine.
fn rss_by_name(names: &[&str], testbed_dir: &str) -> BTreeMap<String, (usize, f64)> {
    let mut out = BTreeMap::new();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Some(name) = process_name(pid) else { continue };
        let ours = if name.starts_with("yatai ") {
            parent(pid) == Some(me)
        } else {
            mentions(pid, "cmdline", testbed_dir) || mentions(pid, "environ", testbed_dir)
        };
        let group = if in_pod(pid) {
            "bento pod (every process in kubepods)".to_string()
        } else if let Some(n) = names.iter().find(|n| **n == name).filter(|_| ours) {
            n.to_string()
        } else {
            continue;
        };
        let Some(kib) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned())))
            .and_then(|v| v.trim_end_matches(" kB").trim().parse::<f64>().ok())
        else {
            continue;
        };
        let slot = out.entry(group).or_insert((0, 0.0));
        slot.0 += 1;
        slot.1 += kib / 1024.0;
    }
    out
}

/// The executable's file name, or for `yatai`, `yatai serve` / `yatai operator`.
fn process_name(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let exe = std::path::Path::new(args.first()?).file_name()?.to_string_lossy().into_owned();
    Some(match (exe.as_str(), args.get(1).map(String::as_str)) {
        ("yatai", Some(sub)) => format!("yatai {sub}"),
        _ => exe,
    })
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn mentions(pid: u32, file: &str, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

fn in_pod(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains("kubepods"))
}

fn fmt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".into())
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map(|a| a.parse().expect("ROUNDS is a number")).unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let testbed: &'static Testbed = rt.block_on(Testbed::shared_real_node()).unwrap();
    let node = testbed.real_node().expect("the testbed has a real node");
    let seed = set_up(&rt, testbed, "bench", &|what: &str| eprintln!("bench: {what}"));
    let client = Bentoml::with_home_from(&seed.server.url, &seed.server.token, iris_home().home.path());
    let mut bench = Bench { rt, node, seed, client };

    // ---- 1. create → first answer ----
    let mut rows: Vec<(String, Timeline)> = Vec::new();
    let mut bare = Vec::new();
    // Each round's builder cache, kept while its operator (and then the last one) runs.
    let mut caches = Vec::new();
    for round in 1..=rounds {
        // A fresh builder cache: the cold build makes the dependencies layer again.
        // The new operator takes over once the old one's Lease expires.
        caches.push(Scratch::new("bench-build-cache"));
        let cache = caches.last().unwrap();
        let before = bench.lease_holder();
        bench.seed.operator.stop();
        bench.seed.operator =
            start_operator(testbed, &bench.seed.ns, &bench.seed.server, &bench.seed.metrics, cache.path());
        poll_every(Duration::from_millis(500), WAIT, || (bench.lease_holder() != before).then_some(()))
            .expect("the restarted operator never took the Lease");
        let cold = bench.client.build_fixture("iris", &[]);
        let newer = bench.client.build_fixture("iris", &[]);
        bench.client.ok(&["push", &cold]);
        bench.client.ok(&["push", &newer]);
        for (kind, name, bento) in
            [("cold", "cold", &cold), ("new version", "newer", &newer), ("cached", "cached", &cold)]
        {
            let t = bench.deploy(&format!("{name}-{round}"), bento, 1);
            eprintln!("bench: round {round} {kind}: {t:?}");
            rows.push((kind.to_string(), t));
        }
        bare.push(bench.bare_pod(&format!("cached-{round}"), &format!("bare-{round}")));
        for name in ["cold", "newer", "cached"] {
            bench.delete(&format!("{name}-{round}"));
        }
    }

    // ---- 3. footprint at idle (before the HPA part leaves a deployment behind) ----
    const COMPONENTS: [&str; 14] = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "kubelet",
        "kube-proxy",
        "containerd",
        "containerd-shim-runc-v2",
        "traefik",
        "metrics-server",
        "docker-registry",
        "yatai serve",
        "yatai operator",
    ];
    let hpa_name = "hpa";
    let hpa_bento = bench.client.build_fixture("iris", &[]);
    bench.client.ok(&["push", &hpa_bento]);
    let hpa_timeline = bench.deploy(hpa_name, &hpa_bento, 2);
    eprintln!("bench: hpa deployment {hpa_timeline:?}");
    // Idle: nothing asked of it for a while.
    let settle = Instant::now() + Duration::from_secs(30);
    poll_every(Duration::from_secs(1), Duration::from_secs(31), || (Instant::now() >= settle).then_some(()));
    let testbed_dir = testbed.kubeconfig().parent().expect("the kubeconfig is in the testbed's directory");
    let footprint = rss_by_name(&COMPONENTS, &testbed_dir.display().to_string());

    // ---- 2. the HPA under load ----
    let host = format!("{hpa_name}-{}.127.0.0.1.sslip.io", bench.seed.ns);
    let big = json!({"input_series": vec![[6.7, 3.0, 5.2, 2.3]; 2000]});
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(bench.seed.admin.clone(), &bench.seed.ns);
    let stop = AtomicBool::new(false);
    let loaded = Instant::now();
    let (wanted, ready2) = std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = via_ingress(node, &host, "POST", "/classify", Some(&big));
                }
            });
        }
        let mut wanted = None;
        let ready2 = poll_every(Duration::from_millis(200), Duration::from_secs(300), || {
            if wanted.is_none() {
                let hpa = bench.rt.block_on(hpas.get(hpa_name)).unwrap();
                if hpa.status.is_some_and(|s| s.desired_replicas >= 2) {
                    wanted = Some(loaded.elapsed().as_secs_f64());
                }
            }
            (bench.pods_of(hpa_name).iter().filter(|p| pod_ready(p)).count() >= 2)
                .then(|| loaded.elapsed().as_secs_f64())
        });
        stop.store(true, Ordering::Relaxed);
        (wanted, ready2)
    });
    bench.delete(hpa_name);

    // ---- report ----
    println!("### First answer through the ingress, {rounds} round(s)\n");
    println!("Seconds from `bentoml deployment create` (median of the rounds):\n");
    println!(
        "| case | image built and pushed | pod scheduled | container running | Ready | first answer | pull (kubelet) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for kind in ["cold", "new version", "cached"] {
        let of = |f: fn(&Timeline) -> Option<f64>| {
            let v: Vec<f64> = rows.iter().filter(|(k, _)| k == kind).filter_map(|(_, t)| f(t)).collect();
            (!v.is_empty()).then(|| median(v))
        };
        println!(
            "| {kind} | {} | {} | {} | {} | **{}** | {} |",
            fmt(of(|t| t.bento)),
            fmt(of(|t| t.scheduled)),
            fmt(of(|t| t.running)),
            fmt(of(|t| t.ready)),
            fmt(of(|t| t.answer)),
            fmt(of(|t| t.pull)),
        );
    }
    let bare_median = median(bare.clone());
    println!("| bare Pod, same spec (plain client) | – | – | – | {bare_median:.1} | – | – |\n");
    let answer = |kind: &str| median(rows.iter().filter(|(k, _)| k == kind).filter_map(|(_, t)| t.answer).collect());
    let ready = |kind: &str| median(rows.iter().filter(|(k, _)| k == kind).filter_map(|(_, t)| t.ready).collect());
    println!(
        "Ratios (same run): cold ÷ cached first answer **{:.2}**, new version ÷ cached **{:.2}**, cached Ready ÷ bare Pod Ready **{:.2}**.\n",
        answer("cold") / answer("cached"),
        answer("new version") / answer("cached"),
        ready("cached") / bare_median
    );
    println!("Every round: ");
    for (kind, t) in &rows {
        println!(
            "- {kind}: built {} · scheduled {} · running {} · Ready {} · answer {} · pull {}",
            fmt(t.bento),
            fmt(t.scheduled),
            fmt(t.running),
            fmt(t.ready),
            fmt(t.answer),
            fmt(t.pull)
        );
    }
    println!("- bare Pod → Ready: {}\n", bare.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(", "));

    println!("### The HPA under load (min 1, max 2, three clients)\n");
    println!(
        "| load start → HPA wants 2 | → second replica Ready |\n|---|---|\n| {} s | {} s |\n",
        fmt(wanted),
        fmt(ready2)
    );

    println!("### Footprint at idle (VmRSS)\n");
    println!("| component | processes | MiB |\n|---|---|---|");
    let mut total = 0.0;
    for (name, (n, mib)) in &footprint {
        total += mib;
        println!("| {name} | {n} | {mib:.0} |");
    }
    println!("| **total** | | **{total:.0}** |");
}
