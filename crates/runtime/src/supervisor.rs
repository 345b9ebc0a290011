//! The supervisor of one deployment on the local runtime: an actor task that
//! owns the deployment's replicas and makes them match its spec.
//!
//! - **Apply** a spec: fetch the bento and models, prepare the Python
//!   environment, start `min` replicas, route traffic to those that are ready.
//!   Applying a spec that only changes scaling adjusts in place; any other
//!   change is a rolling update: the new revision's replicas start beside
//!   the old ones, traffic switches when all are ready, and the old ones are
//!   drained (no request in flight) before they are stopped.
//! - **Supervise**: a replica that exits or fails its liveness probe is
//!   restarted with exponential backoff; one that keeps crashing turns the
//!   deployment `unhealthy`, then `failed`, with its last output as the reason.
//! - **Scale** between min and max on requests in flight per replica, with a
//!   stabilisation window before scaling down.
//! - **Terminate** drains and stops everything; the endpoint stays bound (it
//!   answers 503) so the deployment keeps its port.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::logs::LogBook;
use crate::proxy::{Backend, Endpoint};
use crate::replica::{self, LaunchSpec, ReplicaProcess};
use crate::{DeploymentSnapshot, DeploymentSpec, Phase, ReplicaInfo, RuntimeError, Shared};

const TICK: Duration = Duration::from_millis(250);
const READINESS_EVERY: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const LOAD_WINDOW: Duration = Duration::from_secs(5);
const REPORT_AGAIN: Duration = Duration::from_secs(10);

pub(crate) enum Command {
    Apply(Box<DeploymentSpec>),
    Terminate,
    /// Stop every replica (server shutdown or deployment removal) and exit.
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    /// Crashed or failed its probes; restarts at `until`.
    Backoff {
        until: Instant,
    },
    /// Given up on (crash loop).
    Failed,
}

struct Replica {
    id: String,
    port: u16,
    process: Option<ReplicaProcess>,
    state: State,
    restarts: u32,
    failures_in_row: u32,
    backend: Arc<Backend>,
    since: Instant,
    started_at: i64,
    last_probe: Instant,
    probe_failures: u32,
    /// Why the last launch failed before a process existed (no output to
    /// show then): the reason a crash loop reports.
    launch_error: Option<String>,
}

struct Generation {
    spec: DeploymentSpec,
    venv: PathBuf,
    bento_dir: PathBuf,
    replicas: Vec<Replica>,
    ever_ready: bool,
    started: Instant,
}

impl Generation {
    fn ready(&self) -> Vec<Arc<Backend>> {
        self.replicas.iter().filter(|r| r.state == State::Ready).map(|r| r.backend.clone()).collect()
    }
}

struct Prepared {
    venv: PathBuf,
    bento_dir: PathBuf,
    env_cached: bool,
}

pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    uid: String,
    name: String,
    /// The user id the replicas run as (none: the server's).
    run_as: Option<u32>,
    endpoint: Arc<Endpoint>,
    logs: Arc<LogBook>,
    snapshot: Arc<Mutex<DeploymentSnapshot>>,
    current: Option<Generation>,
    next: Option<Generation>,
    preparing: Option<(u64, DeploymentSpec, JoinHandle<()>)>,
    prep_seq: u64,
    prep_tx: mpsc::UnboundedSender<(u64, Result<Prepared, RuntimeError>)>,
    prep_rx: mpsc::UnboundedReceiver<(u64, Result<Prepared, RuntimeError>)>,
    stopping: Vec<JoinHandle<()>>,
    desired: u32,
    terminated: bool,
    failure: Option<String>,
    update_failure: Option<String>,
    replica_seq: u32,
    load: VecDeque<(Instant, usize)>,
    below_since: Option<Instant>,
    reported: Option<(Phase, String)>,
    reported_at: Instant,
}

impl Supervisor {
    pub(crate) fn new(
        shared: Arc<Shared>,
        uid: &str,
        name: &str,
        run_as: Option<u32>,
        endpoint: Arc<Endpoint>,
        logs: Arc<LogBook>,
        snapshot: Arc<Mutex<DeploymentSnapshot>>,
    ) -> Self {
        let (prep_tx, prep_rx) = mpsc::unbounded_channel();
        Supervisor {
            shared,
            uid: uid.to_owned(),
            name: name.to_owned(),
            run_as,
            endpoint,
            logs,
            snapshot,
            current: None,
            next: None,
            preparing: None,
            prep_seq: 0,
            prep_tx,
            prep_rx,
            stopping: Vec::new(),
            desired: 0,
            terminated: false,
            failure: None,
            update_failure: None,
            replica_seq: 0,
            load: VecDeque::new(),
            below_since: None,
            reported: None,
            reported_at: Instant::now(),
        }
    }

    fn say(&self, line: &str) {
        self.logs.append("yatai", "event", line);
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Apply(spec)) => self.apply(*spec),
                    Some(Command::Terminate) => self.terminate(),
                    Some(Command::Shutdown(done)) => {
                        self.stop_all();
                        for h in self.stopping.drain(..) {
                            let _ = h.await;
                        }
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.stop_all();
                        for h in self.stopping.drain(..) {
                            let _ = h.await;
                        }
                        return;
                    }
                },
                Some((seq, result)) = self.prep_rx.recv() => self.on_prepared(seq, result).await,
                _ = tick.tick() => self.step().await,
            }
            self.stopping.retain(|h| !h.is_finished());
            self.publish();
        }
    }

    /// What must be equal for a new spec to be applied without restarting replicas.
    fn same_launch(a: &DeploymentSpec, b: &DeploymentSpec) -> bool {
        a.bento.digest == b.bento.digest
            && a.models.iter().map(|m| &m.digest).eq(b.models.iter().map(|m| &m.digest))
            && a.envs == b.envs
            && a.secrets == b.secrets
            && a.python_version == b.python_version
    }

    fn apply(&mut self, spec: DeploymentSpec) {
        self.terminated = false;
        self.failure = None;
        self.update_failure = None;
        let in_place = self.next.is_none()
            && self.preparing.is_none()
            && self.current.as_ref().is_some_and(|g| {
                g.replicas.iter().all(|r| r.state != State::Failed) && Self::same_launch(&g.spec, &spec)
            });
        if in_place {
            self.say(&format!("revision {} keeps the running replicas (only scaling changed)", spec.revision_uid));
            let generation = self.current.as_mut().expect("checked");
            generation.spec = spec;
            self.desired = self.desired.clamp(generation.spec.scaling.min_effective(), generation.spec.scaling.max);
            return;
        }
        if let Some((_, _, task)) = self.preparing.take() {
            task.abort();
        }
        if let Some(next) = self.next.take() {
            self.say("a newer revision replaces the update in progress");
            self.retire(next.replicas);
        }
        self.prep_seq += 1;
        let seq = self.prep_seq;
        self.say(&format!(
            "preparing revision {}: bento {}:{}",
            spec.revision_uid, spec.bento.name, spec.bento.version
        ));
        let shared = self.shared.clone();
        let tx = self.prep_tx.clone();
        let task_spec = spec.clone();
        let logs = self.logs.clone();
        let task = tokio::spawn(async move {
            let result = async {
                let bento_dir = shared.materializer.bento_dir(&task_spec.bento, &task_spec.models).await?;
                logs.append(
                    "yatai",
                    "event",
                    &format!("bento and {} model(s) ready at {}", task_spec.models.len(), bento_dir.display()),
                );
                // The build-stage env secrets reach the install only (not the cache key).
                let build_env: Vec<(String, String)> = task_spec
                    .secrets
                    .iter()
                    .flat_map(|s| s.build_env())
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let env = shared.envs.prepare(&bento_dir, task_spec.python_version.as_deref(), &build_env).await?;
                logs.append(
                    "yatai",
                    "event",
                    &format!(
                        "Python environment {} ({:.1} s)",
                        if env.cached { "reused from the cache" } else { "built" },
                        env.elapsed.as_secs_f64()
                    ),
                );
                Ok(Prepared { venv: env.venv, bento_dir, env_cached: env.cached })
            }
            .await;
            let _ = tx.send((seq, result));
        });
        self.preparing = Some((seq, spec, task));
    }

    async fn on_prepared(&mut self, seq: u64, result: Result<Prepared, RuntimeError>) {
        let Some((current_seq, spec, _)) = self.preparing.take() else {
            return;
        };
        if current_seq != seq {
            return;
        }
        match result {
            Err(e) => {
                let msg = format!("revision {} cannot start: {e}", spec.revision_uid);
                self.say(&msg);
                if self.current.is_some() {
                    self.update_failure = Some(format!("{msg}; the previous revision keeps serving"));
                } else {
                    self.failure = Some(msg);
                }
            }
            Ok(p) => {
                {
                    let mut snap = self.snapshot.lock().expect("lock");
                    snap.env_cached = Some(p.env_cached);
                }
                let generation = Generation {
                    spec,
                    venv: p.venv,
                    bento_dir: p.bento_dir,
                    replicas: Vec::new(),
                    ever_ready: false,
                    started: Instant::now(),
                };
                match &self.current {
                    None => {
                        self.desired = generation.spec.scaling.min_effective();
                        self.current = Some(generation);
                    }
                    Some(_) => {
                        // Start as many new replicas as serve now.
                        self.desired =
                            self.desired.clamp(generation.spec.scaling.min_effective(), generation.spec.scaling.max);
                        self.say(&format!(
                            "rolling update to revision {}: starting {} replica(s)",
                            generation.spec.revision_uid, self.desired
                        ));
                        self.next = Some(generation);
                    }
                }
            }
        }
    }

    fn terminate(&mut self) {
        if let Some((_, _, task)) = self.preparing.take() {
            task.abort();
        }
        self.say("terminating: draining and stopping every replica");
        self.terminated = true;
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.endpoint.set_backends(Vec::new());
        if let Some(g) = self.next.take() {
            self.retire(g.replicas);
        }
        if let Some(g) = self.current.take() {
            self.retire(g.replicas);
        }
    }

    /// Drains and stops replicas in the background.
    fn retire(&mut self, replicas: Vec<Replica>) {
        let grace = self.shared.config.stop_grace;
        let drain = self.shared.config.drain_timeout;
        let logs = self.logs.clone();
        let root = self.shared.config.root.clone();
        let uid = self.uid.clone();
        for r in replicas {
            let logs = logs.clone();
            let home = replica_home(&root, &uid, &r.id);
            self.stopping.push(tokio::spawn(async move {
                let deadline = Instant::now() + drain;
                while r.backend.inflight() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r.backend.close_idle();
                if let Some(p) = r.process {
                    p.stop(grace).await;
                    logs.append("yatai", "event", &format!("replica {} stopped", r.id));
                }
                let _ = tokio::fs::remove_dir_all(home).await;
            }));
        }
    }

    fn new_replica_id(&mut self) -> String {
        self.replica_seq += 1;
        format!("r{}", self.replica_seq)
    }

    async fn launch(&self, generation: &Generation, r: &mut Replica) {
        let home = replica_home(&self.shared.config.root, &self.uid, &r.id);
        let port = match replica::free_port() {
            Ok(p) => p,
            Err(e) => {
                self.say(&format!("replica {}: no free port: {e}", r.id));
                r.state = State::Backoff { until: Instant::now() + self.backoff(r.failures_in_row + 1) };
                return;
            }
        };
        let spec = LaunchSpec {
            venv: &generation.venv,
            bento_dir: &generation.bento_dir,
            home: &home,
            port,
            envs: &generation.spec.envs,
            secrets: &generation.spec.secrets,
            run_as: self.run_as,
        };
        let pid_file = self.shared.config.root.join("pids").join(format!("{}.{}", self.uid, r.id));
        match replica::launch(&spec, &r.id, self.logs.clone(), pid_file).await {
            Ok(p) => {
                self.say(&format!("replica {} started (pid {}, port {port})", r.id, p.pid));
                r.port = port;
                r.backend = Backend::new(&r.id, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
                r.process = Some(p);
                r.state = State::Starting;
                r.since = Instant::now();
                r.started_at = yatai_core::Timestamp::now().0;
                r.probe_failures = 0;
                r.launch_error = None;
            }
            Err(e) => {
                self.say(&format!("replica {} could not start: {e}", r.id));
                r.launch_error = Some(e.to_string());
                r.failures_in_row += 1;
                r.state = State::Backoff { until: Instant::now() + self.backoff(r.failures_in_row) };
            }
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let base = self.shared.config.backoff_base;
        let factor = 1u32 << failures.saturating_sub(1).min(10);
        (base * factor).min(self.shared.config.backoff_max)
    }

    /// Checks every replica of a generation; returns the reason of a crash
    /// loop if one replica gave up.
    async fn supervise(&mut self, which: Which) -> Option<String> {
        let mut generation = match which {
            Which::Current => self.current.take(),
            Which::Next => self.next.take(),
        }?;
        let mut crash_loop = None;
        let cold_start = generation.spec.cold_start_timeout;
        let limit = self.shared.config.crash_loop_limit;
        for i in 0..generation.replicas.len() {
            let mut r = std::mem::replace(&mut generation.replicas[i], placeholder());
            let now = Instant::now();
            // Exit?
            let exited = r.process.as_mut().and_then(|p| p.exited());
            if let Some(status) = exited {
                if let Some(p) = r.process.take() {
                    p.reap().await;
                }
                r.failures_in_row += 1;
                r.restarts += 1;
                self.shared.restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let wait = self.backoff(r.failures_in_row);
                self.say(&format!("replica {} exited ({status}); restarting in {:.1} s", r.id, wait.as_secs_f64()));
                r.state = State::Backoff { until: now + wait };
            }
            match r.state {
                State::Starting => {
                    if now.duration_since(r.last_probe) >= READINESS_EVERY {
                        r.last_probe = now;
                        if replica::probe(r.port, "/readyz", PROBE_TIMEOUT).await {
                            r.state = State::Ready;
                            r.failures_in_row = 0;
                            generation.ever_ready = true;
                            self.say(&format!(
                                "replica {} is ready ({:.1} s after start)",
                                r.id,
                                r.since.elapsed().as_secs_f64()
                            ));
                        } else if r.since.elapsed() > cold_start {
                            self.say(&format!("replica {} was not ready within {:?}; restarting it", r.id, cold_start));
                            self.kill_for_restart(&mut r);
                        }
                    }
                }
                State::Ready => {
                    if now.duration_since(r.last_probe) >= self.shared.config.liveness_every {
                        r.last_probe = now;
                        if replica::probe(r.port, "/livez", PROBE_TIMEOUT).await {
                            r.probe_failures = 0;
                        } else {
                            r.probe_failures += 1;
                            if r.probe_failures >= self.shared.config.liveness_failures {
                                self.say(&format!(
                                    "replica {} failed {} liveness checks; restarting it",
                                    r.id, r.probe_failures
                                ));
                                self.kill_for_restart(&mut r);
                            }
                        }
                    }
                }
                State::Backoff { until } => {
                    if r.failures_in_row >= limit {
                        let reason = match &r.launch_error {
                            Some(e) => format!(
                                "replica {} could not be started {} times in a row: {e}",
                                r.id, r.failures_in_row
                            ),
                            None => format!(
                                "replica {} crashed {} times in a row; its last output:\n{}",
                                r.id,
                                r.failures_in_row,
                                self.logs.recent(&r.id).join("\n")
                            ),
                        };
                        r.state = State::Failed;
                        crash_loop = Some(reason);
                    } else if now >= until {
                        self.launch(&generation, &mut r).await;
                    }
                }
                State::Failed => {}
            }
            generation.replicas[i] = r;
        }
        match which {
            Which::Current => self.current = Some(generation),
            Which::Next => self.next = Some(generation),
        }
        crash_loop
    }

    fn kill_for_restart(&self, r: &mut Replica) {
        if let Some(p) = r.process.take() {
            let grace = self.shared.config.stop_grace;
            tokio::spawn(p.stop(grace));
        }
        r.failures_in_row += 1;
        r.restarts += 1;
        self.shared.restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        r.state = State::Backoff { until: Instant::now() + self.backoff(r.failures_in_row) };
    }

    /// Adds or removes replicas of the current generation to match `desired`.
    async fn scale_current(&mut self) {
        let Some(mut generation) = self.current.take() else {
            return;
        };
        let live = generation.replicas.iter().filter(|r| r.state != State::Failed).count() as u32;
        if live < self.desired {
            for _ in live..self.desired {
                let id = self.new_replica_id();
                let mut r = Replica { id, ..placeholder() };
                self.launch(&generation, &mut r).await;
                generation.replicas.push(r);
            }
        } else if live > self.desired {
            // Prefer removing replicas that are not serving, then the least busy.
            generation.replicas.sort_by_key(|r| (r.state == State::Ready, std::cmp::Reverse(r.backend.inflight())));
            let extra = (live - self.desired) as usize;
            let removed: Vec<Replica> = generation.replicas.drain(..extra).collect();
            for r in &removed {
                self.say(&format!("scaling down: retiring replica {}", r.id));
            }
            generation.replicas.sort_by(|a, b| a.id.cmp(&b.id));
            self.endpoint.set_backends(generation.ready());
            self.retire(removed);
        }
        self.current = Some(generation);
    }

    fn autoscale(&mut self) {
        let Some(generation) = &self.current else {
            return;
        };
        let s = &generation.spec.scaling;
        let now = Instant::now();
        self.load.push_back((now, self.endpoint.inflight()));
        while self.load.front().is_some_and(|(t, _)| now.duration_since(*t) > LOAD_WINDOW) {
            self.load.pop_front();
        }
        let avg = self.load.iter().map(|(_, n)| *n as f64).sum::<f64>() / self.load.len().max(1) as f64;
        let want = ((avg / s.target_inflight).ceil() as u32).clamp(s.min_effective(), s.max);
        if want > self.desired {
            self.say(&format!("scaling up from {} to {want} replicas ({avg:.1} requests in flight)", self.desired));
            self.desired = want;
            self.below_since = None;
        } else if want < self.desired {
            let since = *self.below_since.get_or_insert(now);
            if now.duration_since(since) >= s.scale_down_window {
                self.say(&format!(
                    "scaling down from {} to {want} replicas ({avg:.1} requests in flight)",
                    self.desired
                ));
                self.desired = want;
                self.below_since = None;
            }
        } else {
            self.below_since = None;
        }
    }

    async fn step(&mut self) {
        if self.terminated {
            return;
        }
        if let Some(reason) = self.supervise(Which::Current).await {
            self.say(&format!("giving up: {reason}"));
            self.failure = Some(reason);
            if let Some(g) = self.current.take() {
                self.endpoint.set_backends(Vec::new());
                self.retire(g.replicas);
            }
        }
        if let Some(reason) = self.supervise(Which::Next).await {
            let msg = format!("the update failed: {reason}");
            self.say(&format!("{msg}; the previous revision keeps serving"));
            self.update_failure = Some(msg);
            if let Some(g) = self.next.take() {
                self.retire(g.replicas);
            }
        }
        if self.failure.is_some() {
            return;
        }
        // Start the replicas of a pending update; switch when all are ready.
        if let Some(mut next) = self.next.take() {
            while (next.replicas.len() as u32) < self.desired {
                let id = self.new_replica_id();
                let mut r = Replica { id, ..placeholder() };
                self.launch(&next, &mut r).await;
                next.replicas.push(r);
            }
            let all_ready = next.replicas.iter().all(|r| r.state == State::Ready);
            if all_ready {
                self.endpoint.set_backends(next.ready());
                self.say(&format!("switched traffic to revision {}", next.spec.revision_uid));
                if let Some(old) = self.current.replace(next) {
                    self.retire(old.replicas);
                }
                self.update_failure = None;
            } else {
                self.next = Some(next);
            }
        }
        if self.next.is_none() {
            self.autoscale();
            self.scale_current().await;
        }
        if self.next.is_none()
            && let Some(generation) = &self.current
        {
            self.endpoint.set_backends(generation.ready());
        }
    }

    fn phase(&self) -> (Phase, String) {
        if self.terminated {
            return if self.stopping.iter().any(|h| !h.is_finished()) {
                (Phase::Terminating, String::new())
            } else {
                (Phase::Terminated, String::new())
            };
        }
        if let Some(f) = &self.failure {
            return (Phase::Failed, f.clone());
        }
        let Some(generation) = &self.current else {
            return (Phase::Deploying, "preparing the bento and its Python environment".into());
        };
        let ready = generation.replicas.iter().filter(|r| r.state == State::Ready).count();
        let crashed: Vec<&Replica> =
            generation.replicas.iter().filter(|r| matches!(r.state, State::Backoff { .. })).collect();
        if let Some(r) = crashed.first() {
            if let Some(e) = &r.launch_error {
                return (
                    Phase::Unhealthy,
                    format!("replica {} could not be started ({} failure(s)): {e}", r.id, r.failures_in_row),
                );
            }
            let last = self.logs.recent(&r.id);
            let tail = last[last.len().saturating_sub(5)..].join("\n");
            return (
                Phase::Unhealthy,
                format!("replica {} is restarting after {} failure(s); last output:\n{tail}", r.id, r.failures_in_row),
            );
        }
        if ready == 0 {
            return if generation.ever_ready {
                (Phase::Unhealthy, "no replica is ready".into())
            } else {
                (Phase::Deploying, format!("starting replicas ({:.0} s)", generation.started.elapsed().as_secs_f64()))
            };
        }
        if let Some(u) = &self.update_failure {
            return (Phase::Unhealthy, u.clone());
        }
        if let Some(next) = &self.next {
            let ready = next.replicas.iter().filter(|r| r.state == State::Ready).count();
            return (
                Phase::Deploying,
                format!(
                    "rolling out revision {}: {ready} of {} new replicas ready",
                    next.spec.revision_uid, self.desired
                ),
            );
        }
        if let Some((_, spec, _)) = &self.preparing {
            return (Phase::Deploying, format!("preparing revision {}", spec.revision_uid));
        }
        (Phase::Running, String::new())
    }

    fn publish(&mut self) {
        let (phase, reason) = self.phase();
        {
            let mut snap = self.snapshot.lock().expect("lock");
            snap.phase = phase;
            snap.reason = reason.clone();
            snap.desired_replicas = self.desired;
            snap.revision_uid = self.current.as_ref().map(|g| g.spec.revision_uid.clone());
            snap.updating_to = self
                .next
                .as_ref()
                .map(|g| g.spec.revision_uid.clone())
                .or_else(|| self.preparing.as_ref().map(|(_, s, _)| s.revision_uid.clone()));
            snap.inflight = self.endpoint.inflight();
            snap.replicas = [&self.current, &self.next]
                .into_iter()
                .flatten()
                .flat_map(|g| {
                    g.replicas.iter().map(move |r| ReplicaInfo {
                        id: r.id.clone(),
                        revision_uid: g.spec.revision_uid.clone(),
                        port: r.port,
                        pid: r.process.as_ref().map(|p| p.pid),
                        state: match r.state {
                            State::Starting => "starting",
                            State::Ready => "ready",
                            State::Backoff { .. } => "restarting",
                            State::Failed => "failed",
                        },
                        restarts: r.restarts,
                        inflight: r.backend.inflight(),
                        started_at: r.started_at,
                    })
                })
                .collect();
        }
        // Report changes at once, and the same status again now and then, so
        // that a status written meanwhile by someone else does not stick.
        let changed = self.reported.as_ref() != Some(&(phase, reason.clone()));
        if changed || self.reported_at.elapsed() >= REPORT_AGAIN {
            self.shared.sink.status(&self.uid, &self.name, phase, &reason);
            self.reported = Some((phase, reason));
            self.reported_at = Instant::now();
        }
    }
}

#[derive(Clone, Copy)]
enum Which {
    Current,
    Next,
}

fn placeholder() -> Replica {
    Replica {
        id: String::new(),
        port: 0,
        process: None,
        state: State::Backoff { until: Instant::now() },
        restarts: 0,
        failures_in_row: 0,
        backend: Backend::new("", std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        since: Instant::now(),
        started_at: 0,
        last_probe: Instant::now() - Duration::from_secs(3600),
        probe_failures: 0,
        launch_error: None,
    }
}

fn replica_home(root: &std::path::Path, uid: &str, replica: &str) -> PathBuf {
    root.join("deployments").join(uid).join("replicas").join(replica)
}
