//! The operator's own metrics, in Prometheus' text format at `/metrics`: reconciles, failures
//! and time spent, per controller.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    controllers: Mutex<Vec<(String, Arc<ControllerMetrics>)>>,
    /// Requests sent to the API server (counted in the client's service stack).
    pub api_requests: AtomicU64,
}

#[derive(Default)]
pub struct ControllerMetrics {
    reconciles: AtomicU64,
    failures: AtomicU64,
    micros: AtomicU64,
}

impl ControllerMetrics {
    pub fn observe(&self, took: Duration, failed: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }
}

impl Metrics {
    /// The counters of one controller (created on first use).
    pub fn controller(&self, name: &str) -> Arc<ControllerMetrics> {
        let mut all = self.controllers.lock().expect("not poisoned");
        if let Some((_, m)) = all.iter().find(|(n, _)| n == name) {
            return m.clone();
        }
        let m = Arc::new(ControllerMetrics::default());
        all.push((name.to_string(), m.clone()));
        m
    }

    pub fn render(&self) -> String {
        let all = self.controllers.lock().expect("not poisoned");
        let mut out = String::new();
        let mut family = |name: &str, help: &str, kind: &str, value: &dyn Fn(&ControllerMetrics) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (controller, m) in all.iter() {
                let _ = writeln!(out, "{name}{{controller=\"{controller}\"}} {}", value(m));
            }
        };
        family("yatai_operator_reconciles_total", "Reconciles run.", "counter", &|m| {
            m.reconciles.load(Ordering::Relaxed).to_string()
        });
        family("yatai_operator_reconcile_errors_total", "Reconciles that failed and were retried.", "counter", &|m| {
            m.failures.load(Ordering::Relaxed).to_string()
        });
        family("yatai_operator_reconcile_seconds_total", "Time spent reconciling.", "counter", &|m| {
            format!("{:.6}", m.micros.load(Ordering::Relaxed) as f64 / 1e6)
        });
        let _ = writeln!(
            out,
            "# HELP yatai_operator_api_requests_total Requests sent to the Kubernetes API server.\n\
             # TYPE yatai_operator_api_requests_total counter\nyatai_operator_api_requests_total {}",
            self.api_requests.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_controller() {
        let m = Metrics::default();
        m.controller("bentodeployment").observe(Duration::from_millis(5), false);
        m.controller("bentodeployment").observe(Duration::from_millis(5), true);
        let text = m.render();
        assert!(text.contains("yatai_operator_reconciles_total{controller=\"bentodeployment\"} 2"), "{text}");
        assert!(text.contains("yatai_operator_reconcile_errors_total{controller=\"bentodeployment\"} 1"), "{text}");
    }
}
