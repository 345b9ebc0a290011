//! Leader election against a real API server: two replicas, one leader; a release hands over at
//! once; a leader that stops renewing loses the Lease; a leader replaced by another learns it.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use futures::future::Either;
use k8s_openapi::api::coordination::v1::Lease as KubeLease;
use kube::Api;
use kube::api::PostParams;
use yatai_kube_testbed::{Testbed, poll_until};
use yatai_operator::leader::{self, LEASE_NAME, Timing};
use yatai_operator::{Context, Namespaces, Settings};

fn context(client: kube::Client, namespace: &str, identity: &str) -> Context {
    let mut settings = Settings::for_tests(Namespaces::Some(vec![namespace.into()]), namespace);
    settings.leader_election = true;
    settings.identity = identity.into();
    Context::new(client, settings)
}

async fn holder(api: &Api<KubeLease>) -> anyhow::Result<Option<String>> {
    let lease = api.get(LEASE_NAME).await?;
    Ok(lease.spec.and_then(|s| s.holder_identity))
}

/// Short enough to keep the expiry test quick, long enough for a busy 2-core machine.
fn quick() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(3),
        renew_interval: Duration::from_millis(500),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
    }
}

#[tokio::test]
async fn two_replicas_one_leader_and_release_hands_over() -> anyhow::Result<()> {
    let testbed = Testbed::shared().await?;
    let ns = testbed.namespace("leader").await?;
    let api: Api<KubeLease> = ns.api();

    // Both start at once on a free Lease: resourceVersion lets exactly one win.
    let start = |identity: &'static str| {
        let ctx = context(ns.client(), ns.name(), identity);
        tokio::spawn(async move { leader::acquire(&ctx).await })
    };
    let (first, mut second) = match futures::future::select(start("replica-a"), start("replica-b")).await {
        Either::Left((done, other)) | Either::Right((done, other)) => (done??, other),
    };
    let leader_identity = first.identity().to_string();
    assert_eq!(holder(&api).await?.as_deref(), Some(leader_identity.as_str()));
    // The other keeps waiting while the leader renews: 6 s spans a renewal (every 5 s) and
    // several of the candidate's looks (every 2 s), though not a whole lease duration (15 s).
    let still_waiting = tokio::time::timeout(Duration::from_secs(6), &mut second).await.is_err();
    ensure!(still_waiting, "the second replica became leader while {leader_identity} held the Lease");
    assert_eq!(holder(&api).await?.as_deref(), Some(leader_identity.as_str()), "the leader kept the Lease");

    let released_at = Instant::now();
    first.release().await;
    let next = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .context("the waiting replica did not take over within 5 s of the release")???;
    eprintln!("take-over after release: {:?}", released_at.elapsed());
    ensure!(next.identity() != leader_identity, "the same identity again");
    let lease = api.get(LEASE_NAME).await?.spec.unwrap_or_default();
    assert_eq!(lease.holder_identity.as_deref(), Some(next.identity()));
    assert_eq!(lease.lease_duration_seconds, Some(15));
    assert_eq!(lease.lease_transitions, Some(1), "one hand-over");
    assert!(lease.renew_time.is_some() && lease.acquire_time.is_some());
    next.release().await;
    assert_eq!(holder(&api).await?, None, "released: nobody holds it");
    Ok(())
}

#[tokio::test]
async fn a_leader_that_stops_renewing_loses_the_lease() -> anyhow::Result<()> {
    let testbed = Testbed::shared().await?;
    let ns = testbed.namespace("leader-expiry").await?;
    let api: Api<KubeLease> = ns.api();

    let stalled = leader::acquire_with(ns.client(), ns.name(), "stalled", quick()).await?;
    // Dropping stops the renewals without releasing, as a hung or killed process would.
    drop(stalled);
    let started = Instant::now();
    let successor = tokio::time::timeout(
        Duration::from_secs(20),
        leader::acquire_with(ns.client(), ns.name(), "successor", quick()),
    )
    .await
    .context("the Lease of a leader that stopped renewing was never taken over")??;
    let waited = started.elapsed();
    eprintln!("take-over after the leader stopped renewing: {waited:?}");
    ensure!(waited >= Duration::from_secs(2), "took over after {waited:?}, before the lease duration (3 s) ran out");
    assert_eq!(holder(&api).await?.as_deref(), Some("successor"));

    // The successor is itself replaced behind its back: its next renewal finds out.
    let mut lease = api.get(LEASE_NAME).await?;
    lease.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    api.replace(LEASE_NAME, &PostParams::default(), &lease).await?;
    let reason = tokio::time::timeout(Duration::from_secs(10), successor.lost())
        .await
        .context("a leader whose Lease was taken did not notice")?;
    ensure!(reason.contains("intruder"), "the reason should name the new holder: {reason}");
    // Losing is not overwriting: the intruder keeps it.
    poll_until(Duration::from_secs(3), "the Lease to stay with the intruder", || async {
        holder(&api).await.map(|h| (h.as_deref() == Some("intruder")).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn without_leader_election_acquire_returns_at_once() -> anyhow::Result<()> {
    let testbed = Testbed::shared().await?;
    let ns = testbed.namespace("leader-off").await?;
    let mut ctx = context(ns.client(), ns.name(), "solo");
    let mut settings = (*ctx.settings).clone();
    settings.leader_election = false;
    ctx.settings = settings.into();
    let lease = tokio::time::timeout(Duration::from_secs(5), leader::acquire(&ctx)).await??;
    assert_eq!(lease.identity(), "solo");
    let api: Api<KubeLease> = ns.api();
    assert!(api.get_opt(LEASE_NAME).await?.is_none(), "no Lease is written when election is off");
    Ok(())
}
