//! What pods say about a deployment that does not serve: read by the operator (the
//! BentoDeployment's condition) and by yatai's Kubernetes target (the deployment's status).

use k8s_openapi::api::core::v1::Pod;

/// Why a container waits when it will not start without a change (Kubernetes' reasons).
pub const STUCK_WAITING: [&str; 7] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The first problem a pod reports, as (reason, message): containers that cannot pull or
/// start (with the last exit code of one that crashed), and pods the scheduler cannot place.
pub fn problem<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Option<(String, String)> {
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(status) = &pod.status else { continue };
        for cs in status.container_statuses.iter().flatten() {
            let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else { continue };
            let reason = waiting.reason.clone().unwrap_or_default();
            if !STUCK_WAITING.contains(&reason.as_str()) {
                continue;
            }
            let mut message = format!("pod {name} container {}: {reason}", cs.name);
            if let Some(m) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
                message.push_str(": ");
                message.push_str(m);
            }
            if let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
                message.push_str(&format!(
                    " (last exit code {}{})",
                    t.exit_code,
                    t.reason.as_deref().map(|r| format!(", {r}")).unwrap_or_default()
                ));
                // With `terminationMessagePolicy: FallbackToLogsOnError` the kubelet keeps the
                // end of a crashed container's output here: the lines that say why.
                if let Some(output) = t.message.as_deref().map(last_lines).filter(|o| !o.is_empty()) {
                    message.push_str(": ");
                    message.push_str(&output);
                }
            }
            return Some((reason, message));
        }
        for c in status.conditions.iter().flatten() {
            if c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable") {
                return Some((
                    "Unschedulable".into(),
                    format!("pod {name} cannot be scheduled: {}", c.message.clone().unwrap_or_default()),
                ));
            }
        }
    }
    None
}

/// A container that runs but has not passed its readiness probe: (pod, container). Not a
/// problem by itself (a model may load for minutes), but what a person asks about when a
/// deployment stays unready; the probe's own failures are in the pod's `Unhealthy` events.
pub fn not_ready<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Option<(String, String)> {
    pods.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).find_map(|pod| {
        let status = pod.status.as_ref()?;
        let cs = status
            .container_statuses
            .iter()
            .flatten()
            .find(|cs| !cs.ready && cs.state.as_ref().is_some_and(|s| s.running.is_some()))?;
        Some((pod.metadata.name.clone().unwrap_or_default(), cs.name.clone()))
    })
}

/// What the deployment's status says about a container that runs but is not ready, with the
/// last probe failure the kubelet reported (an `Unhealthy` event's message), if any. No
/// counts or durations: the text stays the same while nothing changes, so the status is not
/// rewritten on every check.
pub fn not_ready_message(pod: &str, container: &str, probe_failure: Option<&str>) -> String {
    match probe_failure.map(str::trim).filter(|m| !m.is_empty()) {
        Some(failure) => format!("pod {pod} container {container} runs but is not ready: {failure}"),
        None => format!("pod {pod} container {container} runs but has not passed its readiness probe yet"),
    }
}

/// The last lines of a crashed container's output, on one line, at most about 600 bytes.
fn last_lines(output: &str) -> String {
    const LINES: usize = 6;
    const BYTES: usize = 600;
    let lines: Vec<&str> = output.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    let mut joined = lines[lines.len().saturating_sub(LINES)..].join(" | ");
    if joined.len() > BYTES {
        let mut cut = joined.len() - BYTES;
        while !joined.is_char_boundary(cut) {
            cut += 1;
        }
        joined = format!("…{}", &joined[cut..]);
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning, ContainerStatus, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, running: bool, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "main".into(),
                    ready,
                    state: Some(ContainerState {
                        running: running.then(ContainerStateRunning::default),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_running_container_that_is_not_ready_is_named_with_its_probe_failure() {
        let pods = [pod("ready", true, true), pod("starting", false, false), pod("stuck", true, false)];
        assert_eq!(not_ready(&pods), Some(("stuck".into(), "main".into())));
        assert_eq!(not_ready(&pods[..2]), None, "a container that does not run yet is not 'not ready'");
        let mut leaving = pod("leaving", true, false);
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
        assert_eq!(not_ready(&[leaving]), None, "a pod being deleted is not asked about");
        assert_eq!(
            not_ready_message(
                "stuck",
                "main",
                Some("Readiness probe failed: HTTP probe failed with statuscode: 503\n")
            ),
            "pod stuck container main runs but is not ready: Readiness probe failed: HTTP probe failed with statuscode: 503"
        );
        assert_eq!(
            not_ready_message("stuck", "main", Some(" ")),
            "pod stuck container main runs but has not passed its readiness probe yet"
        );
    }

    #[test]
    fn a_crash_reads_as_its_last_output_lines_in_bounds() {
        let output = "starting\n\nTraceback (most recent call last):\n  File \"x.py\"\n    import y\n\
                      ModuleNotFoundError: No module named 'y'\n  more\n last\n";
        let got = last_lines(output);
        assert_eq!(
            got,
            "Traceback (most recent call last): |   File \"x.py\" |     import y | ModuleNotFoundError: No module named 'y' |   more |  last"
        );
        let long = "é".repeat(2000);
        let got = last_lines(&long);
        assert!(got.len() <= 600 + "…".len() && got.starts_with('…') && got.ends_with('é'), "{}", got.len());
        assert_eq!(last_lines(""), "");
    }
}
