//! Request rate, error rate and latency of each deployment over time: the
//! proxy's counters sampled every few seconds into a bounded history, plus
//! what each replica's own `/metrics` (Prometheus) reports.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::proxy::{Endpoint, LATENCY_BUCKETS_MS};

pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// One hour of samples.
const KEEP: usize = 720;

pub use yatai_core::deploy::Sample;

#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    last: Mutex<Option<(u64, u64, [u64; 14])>>,
    /// Total requests each replica reported on its own /metrics at the last scrape.
    pub replica_requests: Mutex<Vec<(String, f64)>>,
}

fn quantile(buckets: &[u64; 14], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(LATENCY_BUCKETS_MS[i].min(60_000));
        }
    }
    None
}

impl History {
    pub fn record(&self, endpoint: &Endpoint, interval: Duration) {
        let (req, err, buckets) = endpoint.metrics.counts();
        let mut last = self.last.lock().expect("lock");
        let (dr, de, db) = match *last {
            Some((r0, e0, b0)) => {
                let mut d = [0u64; 14];
                for i in 0..14 {
                    d[i] = buckets[i].saturating_sub(b0[i]);
                }
                (req.saturating_sub(r0), err.saturating_sub(e0), d)
            }
            None => (0, 0, [0u64; 14]),
        };
        *last = Some((req, err, buckets));
        let secs = interval.as_secs_f64().max(0.001);
        let sample = Sample {
            at: yatai_core::Timestamp::now().0,
            requests_per_second: dr as f64 / secs,
            errors_per_second: de as f64 / secs,
            p50_ms: quantile(&db, 0.5),
            p99_ms: quantile(&db, 0.99),
            inflight: endpoint.inflight(),
        };
        let mut s = self.samples.lock().expect("lock");
        if s.len() == KEEP {
            s.pop_front();
        }
        s.push_back(sample);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("lock").iter().cloned().collect()
    }
}

/// Sum of `bentoml_service_request_total` (or any `*_request_total`
/// counter) in a Prometheus text exposition.
pub fn total_requests(exposition: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next().is_some_and(|name| name.ends_with("request_total")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Samples the endpoint every [`SAMPLE_EVERY`] and scrapes the replicas'
/// `/metrics` every third sample, until the endpoint is dropped elsewhere.
pub async fn sample_forever(endpoint: Arc<Endpoint>, history: Arc<History>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        if Arc::strong_count(&endpoint) == 1 {
            return;
        }
        history.record(&endpoint, SAMPLE_EVERY);
        n += 1;
        if n.is_multiple_of(3) {
            let mut totals = Vec::new();
            for b in endpoint.backends().iter() {
                if let Some(text) = scrape(b.addr.port()).await {
                    totals.push((b.id.clone(), total_requests(&text)));
                }
            }
            *history.replica_requests.lock().expect("lock") = totals;
        }
    }
}

async fn scrape(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let body = text.split_once("\r\n\r\n")?.1.to_owned();
        text.starts_with("HTTP/1.1 200").then_some(body)
    };
    tokio::time::timeout(Duration::from_secs(3), fetch).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_request_counters() {
        let text = "# HELP bentoml_service_request_total x\n\
                    bentoml_service_request_total{endpoint=\"/classify\",http_response_code=\"200\"} 7.0\n\
                    bentoml_service_request_total{endpoint=\"/readyz\",http_response_code=\"200\"} 3.0\n\
                    bentoml_service_request_duration_seconds_count 10\n";
        assert_eq!(total_requests(text), 10.0);
    }

    #[test]
    fn quantiles_use_bucket_bounds() {
        let mut b = [0u64; 14];
        b[0] = 98; // < 1 ms
        b[5] = 2; // < 50 ms
        assert_eq!(quantile(&b, 0.5), Some(1));
        assert_eq!(quantile(&b, 0.99), Some(50));
        assert_eq!(quantile(&[0; 14], 0.5), None);
    }
}
