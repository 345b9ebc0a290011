//! The operator rides out a restart of the kube-apiserver: its watches break and come back,
//! and changes made after the restart are reconciled without restarting the operator.
//!
//! This restarts the apiserver of the testbed this process uses, so it lives in its own test
//! binary (cargo runs test binaries one at a time) and is the only test in it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use yatai_kube_api::Bento;
use yatai_kube_api::condition;
use yatai_kube_api::crds::WebhookEndpoint;
use yatai_kube_api::resources::BentoSpec;
use yatai_kube_api::serving::v2alpha1::{Autoscaling, BentoDeployment, BentoDeploymentSpec};
use yatai_kube_testbed::{Testbed, poll_until};
use yatai_operator::{Context, Namespaces, Settings, bento_deployment};

const WAIT: Duration = Duration::from_secs(120);

/// Stops the apiserver the testbed started and starts it again with the same command line,
/// recording the new process in the testbed's pid file so that `scripts/k8s-testbed stop`
/// still ends it.
fn restart_apiserver(state: &Path) -> anyhow::Result<()> {
    let pid_file = state.join("kube-apiserver.pid");
    let record = std::fs::read_to_string(&pid_file).context("reading the apiserver's pid file")?;
    let pid: i32 = record.split_whitespace().next().context("empty pid file")?.parse()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).context("reading the apiserver's command line")?;
    let argv: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    // The testbed started it in its own process group. It drains long requests on SIGTERM
    // for up to a minute; after 5 s it is killed, which is the harsher fault anyway.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let started = std::time::Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        if started.elapsed() > Duration::from_secs(5) {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the apiserver (pid {pid}) did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::OpenOptions::new().append(true).open(state.join("logs/kube-apiserver.log"))?;
    let child = std::process::Command::new("setsid")
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the apiserver again")?;
    let new_pid = child.id();
    let stat = std::fs::read_to_string(format!("/proc/{new_pid}/stat"))?;
    let start_time = stat.rsplit(") ").next().unwrap_or("").split_whitespace().nth(19).unwrap_or("").to_string();
    std::fs::write(&pid_file, format!("{new_pid} {start_time}\n"))?;
    Ok(())
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(") ").next().is_some_and(|rest| rest.starts_with('Z')))
        .unwrap_or(true)
}

async fn available_with(api: &Api<BentoDeployment>, name: &str, ready: i32) -> anyhow::Result<()> {
    poll_until(WAIT, &format!("{name} available with {ready} ready"), || async {
        let bd = api.get(name).await?;
        let s = bd.status.unwrap_or_default();
        Ok::<_, kube::Error>(
            (condition::is_true(&s.conditions, "Available") && s.ready_replicas >= Some(ready)).then_some(()),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_recovers_from_an_apiserver_restart() -> anyhow::Result<()> {
    let testbed = Testbed::shared().await?;
    let state: PathBuf = testbed.kubeconfig().parent().context("the kubeconfig lives in the state dir")?.into();
    let ns = testbed.namespace("apiserver-restart").await?;
    yatai_operator::crds::install_missing(&ns.client(), &WebhookEndpoint::default()).await?;
    let mut settings = Settings::for_tests(Namespaces::Some(vec![ns.name().into()]), ns.name());
    settings.domain_suffix = Some("10.0.0.7.sslip.io".into());
    // The operator keeps its own client for the whole test: it must recover by itself.
    let ctx = Context::new(ns.client(), settings);
    tokio::spawn(bento_deployment::run(ctx.clone()));

    let bento = Bento::new(
        "iris--v1",
        BentoSpec { tag: "iris:v1".into(), image: "r.test/b:yatai.iris.v1".into(), ..Default::default() },
    );
    ns.api::<Bento>().create(&PostParams::default(), &bento).await?;
    let bds: Api<BentoDeployment> = ns.api();
    let spec = BentoDeploymentSpec {
        bento: "iris--v1".into(),
        autoscaling: Some(Autoscaling { min_replicas: 1, max_replicas: 3, ..Default::default() }),
        ..Default::default()
    };
    bds.create(&PostParams::default(), &BentoDeployment::new("iris", spec)).await?;
    if let Err(e) = available_with(&bds, "iris", 1).await {
        let d: Api<k8s_openapi::api::apps::v1::Deployment> = ns.api();
        bail!(
            "{e:#}\nstatus: {:?}\ndeployment: {:?}",
            bds.get("iris").await?.status,
            d.get_opt("iris").await?.map(|d| d.status)
        );
    }

    tokio::task::spawn_blocking(move || restart_apiserver(&state)).await??;

    // After the restart (a fresh client for the test; the operator keeps its own), a change
    // and a deleted child are both reconciled.
    let client = testbed.client().await?;
    let bds: Api<BentoDeployment> = Api::namespaced(client.clone(), ns.name());
    poll_until(WAIT, "the apiserver back", || async { bds.get_opt("iris").await.map(|b| b.map(|_| ())) }).await?;
    bds.patch(
        "iris",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"autoscaling": {"minReplicas": 2, "maxReplicas": 3}}})),
    )
    .await?;
    // What the operator owes after the restart: the HPA carries the new minimum and the
    // status describes the new generation (how fast the HPA controller then scales is the
    // controller-manager's business, not the operator's).
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::namespaced(client.clone(), ns.name());
    poll_until(WAIT, "the HPA's new minimum", || async {
        Ok::<_, kube::Error>((hpas.get("iris").await?.spec.min_replicas == Some(2)).then_some(()))
    })
    .await?;
    poll_until(WAIT, "the status of the new generation", || async {
        let bd = bds.get("iris").await?;
        let observed = bd.status.and_then(|s| s.observed_generation);
        Ok::<_, kube::Error>((observed == bd.metadata.generation).then_some(()))
    })
    .await?;
    let services: Api<Service> = Api::namespaced(client.clone(), ns.name());
    services.delete("iris", &DeleteParams::default()).await?;
    poll_until(WAIT, "the Service recreated after the restart", || async {
        services.get_opt("iris").await.map(|s| s.filter(|s| s.metadata.deletion_timestamp.is_none()).map(|_| ()))
    })
    .await?;
    ns.delete().await
}
