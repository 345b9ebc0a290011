//! A deployment's traffic on a cluster, from what its pods report on their own `/metrics`
//! (BentoML's Prometheus counters), read through the API server's pod proxy every
//! [`EVERY`]: request and error rates over time, and each replica's total.
//!
//! Only ready pods are asked; a cluster that refuses the proxy (no `get pods/proxy`) gives no
//! samples, never an error.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use yatai_core::deploy::{Metrics, Sample};

pub const EVERY: Duration = Duration::from_secs(15);
/// One hour of samples.
const KEEP: usize = 240;

/// What one scrape of a pod found.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub requests: f64,
    pub errors: f64,
    pub inflight: f64,
}

/// Sums BentoML's counters in a Prometheus text exposition: `*request_total` (errors: a
/// `http_response_code` of 5xx) and `*request_in_progress`.
pub fn counts(exposition: &str) -> Counts {
    let mut c = Counts::default();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        if name.ends_with("request_total") {
            c.requests += value;
            if line.contains("http_response_code=\"5") {
                c.errors += value;
            }
        } else if name.ends_with("request_in_progress") {
            c.inflight += value;
        }
    }
    c
}

#[derive(Default)]
pub struct PodMetrics {
    samples: Mutex<VecDeque<Sample>>,
    /// Per pod: the counts at the last scrape.
    last: Mutex<HashMap<String, Counts>>,
    replica_requests: Mutex<Vec<(String, f64)>>,
    inflight: Mutex<usize>,
}

impl PodMetrics {
    /// Records one round of scrapes (`(pod, counts)`), `interval` after the previous one.
    pub fn record(&self, scraped: &[(String, Counts)], interval: Duration, at: i64) {
        let mut last = self.last.lock().expect("not poisoned");
        let (mut requests, mut errors, mut inflight) = (0.0, 0.0, 0.0);
        for (pod, now) in scraped {
            // A pod seen for the first time counts from now; a restarted one from zero.
            let before = last.get(pod).copied().unwrap_or(*now);
            let delta = |now: f64, before: f64| if now >= before { now - before } else { now };
            requests += delta(now.requests, before.requests);
            errors += delta(now.errors, before.errors);
            inflight += now.inflight;
        }
        *last = scraped.iter().cloned().collect();
        let secs = interval.as_secs_f64().max(0.001);
        let sample = Sample {
            at,
            requests_per_second: requests / secs,
            errors_per_second: errors / secs,
            p50_ms: None,
            p99_ms: None,
            inflight: inflight.max(0.0) as usize,
        };
        let mut samples = self.samples.lock().expect("not poisoned");
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(sample);
        *self.replica_requests.lock().expect("not poisoned") =
            scraped.iter().map(|(pod, c)| (pod.clone(), c.requests)).collect();
        *self.inflight.lock().expect("not poisoned") = inflight.max(0.0) as usize;
    }

    pub fn metrics(&self) -> Metrics {
        Metrics {
            samples: self.samples.lock().expect("not poisoned").iter().cloned().collect(),
            inflight: *self.inflight.lock().expect("not poisoned"),
            replica_requests: self.replica_requests.lock().expect("not poisoned").clone(),
        }
    }
}

/// Scrapes the ready pods of BentoDeployment `name` every [`EVERY`] until aborted.
pub async fn sample(client: kube::Client, namespace: String, name: String, pods: Store<Pod>, into: Arc<PodMetrics>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let state = pods.state();
        let ready: Vec<&Pod> = crate::phase::pods_of(&name, state.iter().map(|p| &**p))
            .into_iter()
            .filter(|p| crate::phase::pod_ready(p))
            .collect();
        let mut scraped = Vec::new();
        for pod in ready {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let port = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.ports.as_ref())
                .and_then(|ps| ps.iter().find(|p| p.name.as_deref() == Some("http")))
                .map(|p| p.container_port)
                .unwrap_or(3000);
            let path = format!("/api/v1/namespaces/{namespace}/pods/{pod_name}:{port}/proxy/metrics");
            let Ok(request) = http::Request::get(path).body(Vec::new()) else { continue };
            match tokio::time::timeout(Duration::from_secs(5), client.request_text(request)).await {
                Ok(Ok(text)) => scraped.push((pod_name, counts(&text))),
                Ok(Err(e)) => tracing::debug!(pod = %pod_name, "scraping /metrics: {e}"),
                Err(_) => tracing::debug!(pod = %pod_name, "scraping /metrics timed out"),
            }
        }
        if !scraped.is_empty() {
            into.record(&scraped, EVERY, k8s_openapi::jiff::Timestamp::now().as_microsecond());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "# HELP bentoml_service_request_total x\n\
        bentoml_service_request_total{endpoint=\"/classify\",http_response_code=\"200\"} 40.0\n\
        bentoml_service_request_total{endpoint=\"/classify\",http_response_code=\"500\"} 2.0\n\
        bentoml_service_request_in_progress{endpoint=\"/classify\"} 3.0\n\
        bentoml_service_request_duration_seconds_count 42\n";

    #[test]
    fn counters_are_summed_with_errors_apart() {
        assert_eq!(counts(EXPOSITION), Counts { requests: 42.0, errors: 2.0, inflight: 3.0 });
        assert_eq!(counts("garbage\n# only comments"), Counts::default());
    }

    #[test]
    fn rates_come_from_the_increase_and_survive_a_restart() {
        let m = PodMetrics::default();
        let c = |requests, errors| Counts { requests, errors, inflight: 1.0 };
        m.record(&[("a".into(), c(100.0, 0.0))], EVERY, 1);
        m.record(&[("a".into(), c(130.0, 3.0)), ("b".into(), c(7.0, 0.0))], EVERY, 2);
        // Pod a restarted: its counter starts again from zero.
        m.record(&[("a".into(), c(15.0, 0.0)), ("b".into(), c(22.0, 0.0))], EVERY, 3);
        let metrics = m.metrics();
        let rps: Vec<f64> = metrics.samples.iter().map(|s| s.requests_per_second).collect();
        assert_eq!(rps, vec![0.0, 2.0, 2.0]);
        assert_eq!(metrics.samples[1].errors_per_second, 0.2);
        assert_eq!(metrics.replica_requests, vec![("a".to_string(), 15.0), ("b".to_string(), 22.0)]);
        assert_eq!(metrics.inflight, 2);
    }
}
