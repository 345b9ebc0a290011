//! Pod output of one deployment: every replica's lines, kept in a bounded ring (the tail) and
//! sent to followers as they come, in the local runtime's line format
//! (`<time> <replica> <source> | <line>`).
//!
//! A follower task per deployment watches which pods exist (from the pod watch) and streams
//! each one's log (`follow=true`, with timestamps, so that a stream that breaks resumes where
//! it stopped instead of repeating lines).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::LogParams;
use kube::runtime::reflector::Store;
use tokio::sync::{broadcast, watch};
use yatai_core::deploy::LogSource;

/// Lines kept per deployment.
const KEEP: usize = 5000;
/// Lines of a pod's past read when following it starts.
const FIRST_TAIL: i64 = 500;
/// How long a pod whose log cannot be read is left alone.
const RETRY: Duration = Duration::from_secs(30);

pub struct PodLogs {
    lines: Mutex<VecDeque<String>>,
    live: broadcast::Sender<Arc<str>>,
}

impl PodLogs {
    pub fn new() -> Arc<PodLogs> {
        let (live, _) = broadcast::channel(1024);
        Arc::new(PodLogs { lines: Mutex::new(VecDeque::new()), live })
    }

    /// Appends a line from a pod's container, or from yatai about the deployment.
    pub fn append(&self, at: &str, replica: &str, source: &str, line: &str) {
        let text = format!("{at} {replica} {source} | {}", line.trim_end_matches(['\r', '\n']));
        {
            let mut lines = self.lines.lock().expect("not poisoned");
            if lines.len() == KEEP {
                lines.pop_front();
            }
            lines.push_back(text.clone());
        }
        let _ = self.live.send(Arc::from(text));
    }
}

impl LogSource for PodLogs {
    fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().expect("not poisoned");
        lines.iter().skip(lines.len().saturating_sub(n)).cloned().collect()
    }

    fn follow(&self) -> broadcast::Receiver<Arc<str>> {
        self.live.subscribe()
    }
}

/// Follows the logs of every pod of BentoDeployment `name` until aborted. `changed` ticks
/// when the namespace's pods change.
pub async fn follow(
    client: kube::Client,
    namespace: String,
    name: String,
    pods: Store<Pod>,
    mut changed: watch::Receiver<u64>,
    logs: Arc<PodLogs>,
) {
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    // Per pod: the stream task, and the time of the last line read (where to resume).
    let resume: Arc<Mutex<HashMap<String, Timestamp>>> = Arc::default();
    let mut streams: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let state = pods.state();
        let current = crate::phase::pods_of(&name, state.iter().map(|p| &**p));
        let mut alive = Vec::new();
        for pod in current {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            alive.push(pod_name.clone());
            // Only pods whose container started have a log to read.
            let started = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.state.as_ref().is_some_and(|s| s.waiting.is_none())));
            let running = streams.get(&pod_name).is_some_and(|t| !t.is_finished());
            if started && !running {
                let task = tokio::spawn(stream_pod(api.clone(), pod_name.clone(), resume.clone(), logs.clone()));
                streams.insert(pod_name, task);
            }
        }
        streams.retain(|pod, task| {
            let keep = alive.contains(pod);
            if !keep {
                task.abort();
                resume.lock().expect("not poisoned").remove(pod);
            }
            keep
        });
        // Pod changes, and now and then in case a stream ended while nothing changed.
        let _ = tokio::time::timeout(Duration::from_secs(5), changed.changed()).await;
    }
}

async fn stream_pod(api: Api<Pod>, pod: String, resume: Arc<Mutex<HashMap<String, Timestamp>>>, logs: Arc<PodLogs>) {
    let since = resume.lock().expect("not poisoned").get(&pod).copied();
    let params = LogParams {
        container: Some("main".into()),
        follow: true,
        timestamps: true,
        tail_lines: since.is_none().then_some(FIRST_TAIL),
        since_time: since,
        ..Default::default()
    };
    let stream = match api.log_stream(&pod, &params).await {
        Ok(s) => s,
        Err(e) => {
            // The node may not serve logs (yet): asked again after a pause, not in a loop
            // that costs the API server a request per pod every few seconds.
            tracing::debug!(%pod, "cannot read the pod's log: {e}");
            tokio::time::sleep(RETRY).await;
            return;
        }
    };
    let mut lines = stream.lines();
    while let Some(line) = lines.next().await {
        let Ok(line) = line else { break };
        // `<RFC 3339 time> <text>`, as the kubelet writes with timestamps=true.
        let (at, text) = line.split_once(' ').unwrap_or(("", line.as_str()));
        let Ok(ts) = at.parse::<Timestamp>() else {
            logs.append(&Timestamp::now().to_string(), &pod, "main", &line);
            continue;
        };
        if since.is_some_and(|s| ts <= s) {
            continue;
        }
        resume.lock().expect("not poisoned").insert(pod.clone(), ts);
        logs.append(at, &pod, "main", text);
    }
    // The container stopped (or the stream broke): resumed from the last line after a pause.
    tokio::time::sleep(RETRY / 6).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_tail_is_bounded_and_followers_see_new_lines() {
        let logs = PodLogs::new();
        let mut rx = logs.follow();
        logs.append("t", "iris-abc", "main", "line 0\n");
        assert_eq!(&*rx.recv().await.unwrap(), "t iris-abc main | line 0");
        for i in 1..KEEP + 10 {
            logs.append("t", "iris-abc", "main", &format!("line {i}\n"));
        }
        let tail = logs.tail(2);
        assert_eq!(
            tail,
            vec![format!("t iris-abc main | line {}", KEEP + 8), format!("t iris-abc main | line {}", KEEP + 9)]
        );
        assert_eq!(logs.tail(usize::MAX).len(), KEEP);
    }
}
