//! A testbed started by this process through `scripts/k8s-testbed run`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};

/// Overrides the path of the testbed script (default: `scripts/k8s-testbed` of this repo).
pub const SCRIPT_ENV: &str = "YATAI_K8S_TESTBED_SCRIPT";

/// Each testbed uses six consecutive loopback ports from its base (see the script).
const PORTS_PER_TESTBED: u16 = 6;

pub(crate) struct Started {
    pub(crate) kubeconfig: PathBuf,
    // The script stops the testbed when this pipe closes. Nobody writes to it; it closes when
    // the process exits, whether the tests passed, failed or the process was killed.
    _hold: ChildStdin,
    _child: Child,
}

impl Started {
    /// `real_node`: add the real node, its registry, kube-proxy, Traefik and metrics-server
    /// (`K8S_TESTBED_REAL_NODE=1`).
    pub(crate) fn start(real_node: bool) -> anyhow::Result<Started> {
        let script = match std::env::var_os(SCRIPT_ENV) {
            Some(s) if !s.is_empty() => PathBuf::from(s),
            _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/k8s-testbed")),
        };
        if !script.is_file() {
            bail!("the testbed script {} is missing; set {SCRIPT_ENV} to its path", script.display());
        }
        let base = free_port_base()?;
        let mut child = Command::new("bash")
            .arg(&script)
            .arg("run")
            .env("K8S_TESTBED_PORT_BASE", base.to_string())
            .env("K8S_TESTBED_REAL_NODE", if real_node { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} run", script.display()))?;

        // Forward the script's progress to our stderr (a cold build takes a while, and people
        // should see why), keeping the tail for the error message if start-up fails.
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail_writer = Arc::clone(&tail);
        let forwarder = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                let mut tail = tail_writer.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == 40 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });

        // The script prints the kubeconfig path on stdout once everything is ready, and
        // nothing else; EOF before that means start-up failed.
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout is piped");
        BufReader::new(stdout).read_line(&mut line).context("reading the testbed script's output")?;
        let kubeconfig = PathBuf::from(line.trim());
        if line.trim().is_empty() || !kubeconfig.is_file() {
            let status = child.wait().ok();
            // The script has exited, so its stderr is at EOF once the forwarder drained it.
            let _ = forwarder.join();
            let tail = tail_text(&tail);
            bail!(
                "`{} run` failed to start a testbed ({}); its last output:\n{tail}",
                script.display(),
                status.map(|s| s.to_string()).unwrap_or_else(|| "status unknown".into())
            );
        }
        let hold = child.stdin.take().expect("stdin is piped");
        Ok(Started { kubeconfig, _hold: hold, _child: child })
    }
}

fn tail_text(tail: &Mutex<VecDeque<String>>) -> String {
    let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
    tail.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// A base port whose six ports are free now (a real node's own ports are fixed, 19400-19407,
/// below this range), below Linux's ephemeral range (32768 and up) so
/// that no outgoing connection can take one of them between this check and the bind.
/// Derived from the pid so that concurrent test processes start from different places; the
/// script re-checks and fails clearly on a race.
fn free_port_base() -> anyhow::Result<u16> {
    const LOW: u16 = 20000;
    const SPAN: u16 = 12000;
    let start = (std::process::id() % 1000) as u16 * PORTS_PER_TESTBED * 2;
    for attempt in 0..100u16 {
        let base = LOW + (start + attempt * PORTS_PER_TESTBED) % SPAN;
        let all_free = (base..base + PORTS_PER_TESTBED).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    bail!("found no six consecutive free loopback ports in {LOW}..{}", LOW + SPAN)
}
