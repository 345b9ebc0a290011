//! Leader election through a `coordination.k8s.io` Lease: one replica runs the controllers.
//!
//! The protocol is client-go's: the holder writes its identity and a renew time into the
//! Lease `yatai-operator` in the operator's namespace every few seconds; a candidate takes the
//! Lease when nobody holds it, or when the record has not changed for a whole lease duration.
//! Every write carries the `resourceVersion` that was read, so two candidates racing for a free
//! Lease cannot both win: the API server accepts one write and answers 409 to the other.
//!
//! Expiry is judged by how long *this* process has seen the same record, not by comparing the
//! record's `renewTime` with the local clock, so clock skew between nodes cannot hand the
//! Lease to two replicas.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::{Lease as KubeLease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::context::Context;

/// The Lease's name, in the operator's namespace.
pub const LEASE_NAME: &str = "yatai-operator";

/// How often and how long, as client-go's defaults for controllers.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How long an unrenewed Lease keeps others out (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_interval: Duration,
    /// How long the holder keeps leading while renewals fail. Shorter than the lease
    /// duration, so that a holder cut off from the API server stops its controllers before
    /// another replica may start its own.
    pub renew_deadline: Duration,
    /// How often a candidate looks at a Lease someone else holds.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// This replica's hold on the lease.
pub struct Lease {
    identity: String,
    held: Option<Held>,
}

struct Held {
    api: Api<KubeLease>,
    /// The Lease as last written by us: what `release` clears.
    current: Arc<Mutex<KubeLease>>,
    lost: watch::Receiver<Option<String>>,
    renewer: JoinHandle<()>,
}

/// Waits until this replica holds the lease (at once when leader election is off).
pub async fn acquire(ctx: &Context) -> anyhow::Result<Lease> {
    if !ctx.settings.leader_election {
        return Ok(Lease { identity: ctx.settings.identity.clone(), held: None });
    }
    acquire_with(ctx.client.clone(), &ctx.settings.operator_namespace, &ctx.settings.identity, Timing::default()).await
}

/// [`acquire`] with explicit timing (tests use short leases).
pub async fn acquire_with(client: Client, namespace: &str, identity: &str, timing: Timing) -> anyhow::Result<Lease> {
    let api: Api<KubeLease> = Api::namespaced(client, namespace);
    let mut observed: Option<(String, Instant)> = None;
    let mut waiting_logged = false;
    loop {
        match try_take(&api, identity, &timing, &mut observed).await {
            Ok(Some(lease)) => {
                tracing::info!(%identity, namespace, "acquired the Lease {LEASE_NAME}");
                let current = Arc::new(Mutex::new(lease));
                let (lost_tx, lost) = watch::channel(None);
                let renewer = tokio::spawn(renew(api.clone(), identity.to_string(), timing, current.clone(), lost_tx));
                return Ok(Lease { identity: identity.to_string(), held: Some(Held { api, current, lost, renewer }) });
            }
            Ok(None) => {
                if !waiting_logged {
                    let holder = observed.as_ref().map(|(h, _)| h.as_str()).unwrap_or("?");
                    tracing::info!(%identity, namespace, "waiting for the Lease {LEASE_NAME}, held by {holder}");
                    waiting_logged = true;
                }
            }
            // Losing a race for the Lease is normal; anything else is worth a warning, but
            // the API server may come back, so keep trying.
            Err(e) if is_conflict(&e) => {}
            Err(e) => tracing::warn!(%identity, namespace, "reading or writing the Lease {LEASE_NAME}: {e}"),
        }
        tokio::time::sleep(timing.retry_period).await;
    }
}

/// One attempt: the Lease as written by us if we took it, `None` while someone else holds it.
/// `observed` remembers the other holder's record (its resourceVersion) and since when we see it.
async fn try_take(
    api: &Api<KubeLease>,
    identity: &str,
    timing: &Timing,
    observed: &mut Option<(String, Instant)>,
) -> Result<Option<KubeLease>, kube::Error> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let seconds = timing.lease_duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        let lease = KubeLease {
            metadata: ObjectMeta { name: Some(LEASE_NAME.into()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.into()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return api.create(&PostParams::default(), &lease).await.map(Some);
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    if let Some(holder) = &holder
        && holder != identity
    {
        // The record counts as renewed whenever it changes; the holder's own duration
        // (not ours) says how long it may go without renewing.
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let record = format!("{holder}@{version}");
        let since = match observed {
            Some((seen, since)) if *seen == record => *since,
            _ => {
                *observed = Some((record, Instant::now()));
                return Ok(None);
            }
        };
        let duration = spec
            .lease_duration_seconds
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(s as u64))
            .unwrap_or(timing.lease_duration);
        if since.elapsed() < duration {
            return Ok(None);
        }
        tracing::info!(%identity, "the Lease {LEASE_NAME} held by {holder} was not renewed for {duration:?}; taking it");
    }
    if holder.as_deref() != Some(identity) {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.acquire_time = Some(now.clone());
    }
    spec.holder_identity = Some(identity.into());
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(now);
    // `replace` sends the resourceVersion we read: if anyone wrote in between, 409.
    api.replace(LEASE_NAME, &PostParams::default(), &lease).await.map(Some)
}

/// Renews until it fails for longer than the renew deadline or someone else holds the Lease;
/// then says why on `lost` and stops.
async fn renew(
    api: Api<KubeLease>,
    identity: String,
    timing: Timing,
    current: Arc<Mutex<KubeLease>>,
    lost: watch::Sender<Option<String>>,
) {
    let mut last_renewed = Instant::now();
    let mut last_error = String::new();
    loop {
        tokio::time::sleep(timing.renew_interval).await;
        let mut lease = current.lock().await;
        match renew_once(&api, &identity, &lease).await {
            Ok(Renewal::Renewed(renewed)) => {
                *lease = *renewed;
                last_renewed = Instant::now();
            }
            Ok(Renewal::Lost(reason)) => {
                let _ = lost.send(Some(reason));
                return;
            }
            Err(e) => {
                tracing::warn!(%identity, "renewing the Lease {LEASE_NAME}: {e}");
                last_error = e.to_string();
            }
        }
        if last_renewed.elapsed() >= timing.renew_deadline {
            let reason = format!(
                "could not renew the Lease {LEASE_NAME} for {:?} (last error: {last_error})",
                last_renewed.elapsed()
            );
            let _ = lost.send(Some(reason));
            return;
        }
    }
}

enum Renewal {
    Renewed(Box<KubeLease>),
    Lost(String),
}

async fn renew_once(api: &Api<KubeLease>, identity: &str, lease: &KubeLease) -> Result<Renewal, kube::Error> {
    let mut next = lease.clone();
    next.spec.get_or_insert_with(LeaseSpec::default).renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    match api.replace(LEASE_NAME, &PostParams::default(), &next).await {
        Ok(renewed) => return Ok(Renewal::Renewed(Box::new(renewed))),
        Err(e) if is_not_found(&e) => return Ok(Renewal::Lost(format!("the Lease {LEASE_NAME} was deleted"))),
        Err(e) if !is_conflict(&e) => return Err(e),
        Err(_) => {}
    }
    // Someone wrote the Lease since our last renewal. Still ours (a label added, say)? Then
    // renew on top of their write; otherwise we have been replaced.
    let Some(mut fresh) = api.get_opt(LEASE_NAME).await? else {
        return Ok(Renewal::Lost(format!("the Lease {LEASE_NAME} was deleted")));
    };
    let holder = fresh.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
    if holder != identity {
        let holder = if holder.is_empty() { "nobody (it was released)".to_string() } else { holder };
        return Ok(Renewal::Lost(format!("the Lease {LEASE_NAME} is now held by {holder}")));
    }
    fresh.spec.get_or_insert_with(LeaseSpec::default).renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    api.replace(LEASE_NAME, &PostParams::default(), &fresh).await.map(|l| Renewal::Renewed(Box::new(l)))
}

impl Lease {
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Resolves when the lease is lost (another replica took it, or renewing failed too long),
    /// with the reason.
    pub async fn lost(&self) -> String {
        let Some(held) = &self.held else { return futures::future::pending().await };
        let mut lost = held.lost.clone();
        match lost.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The renewer ended without a word: only a panic does that.
            Err(_) => format!("the renewal of the Lease {LEASE_NAME} stopped unexpectedly"),
        }
    }

    /// Gives the lease up so another replica takes over at once: clears `holderIdentity`,
    /// which candidates read as "free". Errors are logged; the Lease then simply expires.
    pub async fn release(mut self) {
        let Some(held) = self.held.take() else { return };
        held.renewer.abort();
        let lease = held.current.lock().await.clone();
        if let Err(e) = release_once(&held.api, &self.identity, lease).await {
            tracing::warn!(identity = %self.identity, "releasing the Lease {LEASE_NAME} (it will expire instead): {e:#}");
        } else {
            tracing::info!(identity = %self.identity, "released the Lease {LEASE_NAME}");
        }
    }
}

async fn release_once(api: &Api<KubeLease>, identity: &str, mut lease: KubeLease) -> anyhow::Result<()> {
    for _ in 0..3 {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(identity) {
            // Already someone else's: nothing of ours to give up.
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        match api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
            Ok(_) => return Ok(()),
            Err(e) if is_conflict(&e) => match api.get_opt(LEASE_NAME).await? {
                Some(fresh) => lease = fresh,
                None => return Ok(()),
            },
            Err(e) => return Err(e).context("clearing holderIdentity"),
        }
    }
    anyhow::bail!("the Lease kept changing under us")
}

impl Drop for Lease {
    /// A dropped Lease stops renewing (as a crashed process would); it is not released.
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            held.renewer.abort();
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
