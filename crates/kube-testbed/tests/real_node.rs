//! Proves that the testbed's real node serves: a pod runs an image pulled from the loopback
//! registry, a Service and an Ingress route to it, Traefik answers on the ingress address for
//! the Ingress's sslip.io host, and metrics-server reports the pod's usage.
//!
//! Runs only with `YATAI_TEST_REAL_NODE=1` (root; it changes the host's network while the
//! testbed runs). Otherwise each test passes with a note on stderr.

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use yatai_kube_testbed::{RealNode, TestNamespace, Testbed, poll_until, real_node_enabled};

const WAIT: Duration = Duration::from_secs(120);

fn skip(test: &str) -> bool {
    if real_node_enabled() {
        return false;
    }
    eprintln!("{test}: skipped; set YATAI_TEST_REAL_NODE=1 (as root) to run it on a real node");
    true
}

/// A pod on the real node running busybox `httpd` on 8080, Ready once it answers.
fn web_pod(node: &RealNode, name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node.name()},
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "httpd",
                "image": node.busybox_image(),
                "command": ["sh", "-c", "mkdir -p /www && echo \"hello from $(hostname)\" > /www/index.html && exec httpd -f -p 8080 -h /www"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}, "limits": {"cpu": "500m", "memory": "32Mi"}}
            }]
        }
    }))?)
}

async fn wait_ready(pods: &Api<Pod>, name: &str) -> anyhow::Result<Pod> {
    poll_until(WAIT, &format!("pod {name} to be Ready"), || async {
        let pod = pods.get(name).await?;
        let status = pod.status.clone().unwrap_or_default();
        // Fail at once, with the reason, on a pull or start failure rather than at the deadline.
        for c in status.container_statuses.iter().flatten() {
            if let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                let reason = waiting.reason.as_deref().unwrap_or_default();
                if matches!(reason, "ErrImagePull" | "ImagePullBackOff" | "CrashLoopBackOff" | "CreateContainerError") {
                    anyhow::bail!(
                        "pod {name} cannot start: {reason}: {}",
                        waiting.message.as_deref().unwrap_or_default()
                    );
                }
            }
        }
        let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
        Ok::<_, anyhow::Error>(ready.then_some(pod))
    })
    .await
}

/// One plain HTTP/1.1 GET to `addr` with the given Host header: (status, body).
async fn http_get(addr: &str, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .context("reading the answer")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status line")?;
    Ok((status, body.to_string()))
}

#[tokio::test]
async fn a_pod_from_the_loopback_registry_answers_through_the_ingress() -> anyhow::Result<()> {
    if skip("a_pod_from_the_loopback_registry_answers_through_the_ingress") {
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("real_node: {what} at {:.1}s", t0.elapsed().as_secs_f64());
    let testbed = Testbed::shared_real_node().await?;
    let node = testbed.real_node().context("the testbed has no real node")?;
    step("testbed ready");
    let ns: TestNamespace = testbed.namespace("ingress").await?;

    let pods: Api<Pod> = ns.api();
    pods.create(&PostParams::default(), &web_pod(node, "web")?).await?;
    let pod = wait_ready(&pods, "web").await?;
    step("pod Ready");
    let image_id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.image_id.clone());
    ensure!(
        image_id.as_deref().is_some_and(|id| id.starts_with(&format!("{}/testbed/busybox@sha256:", node.registry()))),
        "the container's image should come from the loopback registry {}, got {image_id:?}",
        node.registry()
    );

    let services: Api<Service> = ns.api();
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
            }))?,
        )
        .await?;
    let host = format!("web-{}.127.0.0.1.sslip.io", ns.name());
    let ingresses: Api<Ingress> = ns.api();
    ingresses
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": {"name": "web"},
                "spec": {"rules": [{"host": host, "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"number": 80}}}
                }]}}]}
            }))?,
        )
        .await?;

    // Traefik picks the Ingress up (it is of the default class) and routes to the pod.
    let body = poll_until(WAIT, &format!("an answer through {} for Host {host}", node.ingress()), || async {
        let (status, body) = http_get(node.ingress(), &host, "/").await?;
        Ok::<_, anyhow::Error>((status == 200).then_some(body))
    })
    .await?;
    step("answer through the ingress");
    ensure!(body.trim() == "hello from web", "the ingress answered {body:?}, not the pod's page");
    let (status, _) = http_get(node.ingress(), &format!("nothing-{}.127.0.0.1.sslip.io", ns.name()), "/").await?;
    ensure!(status == 404, "a host no Ingress names should get 404, got {status}");

    // Traefik publishes its address on the Ingress, as an ingress controller with a load
    // balancer does; the operator derives the default domain from it.
    let ip = poll_until(WAIT, "the Ingress's load-balancer address", || async {
        let ingress = ingresses.get("web").await?;
        let ip = ingress
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .and_then(|i| i.into_iter().next())
            .and_then(|i| i.ip);
        Ok::<_, kube::Error>(ip)
    })
    .await?;
    ensure!(ip == "127.0.0.1", "Ingress status should carry 127.0.0.1, got {ip}");

    // kube-proxy programs the ClusterIP too; from the host it is reachable on the bridge.
    let cluster_ip =
        services.get("web").await?.spec.and_then(|s| s.cluster_ip).context("the Service has no ClusterIP")?;
    let body = poll_until(WAIT, &format!("an answer from ClusterIP {cluster_ip}"), || async {
        let (status, body) = http_get(&format!("{cluster_ip}:80"), "web", "/").await?;
        Ok::<_, anyhow::Error>((status == 200).then_some(body))
    })
    .await?;
    ensure!(body.trim() == "hello from web", "the ClusterIP answered {body:?}");
    step("answer through the ClusterIP");
    ns.delete().await?;
    Ok(())
}

#[tokio::test]
async fn metrics_server_reports_a_busy_pods_usage() -> anyhow::Result<()> {
    if skip("metrics_server_reports_a_busy_pods_usage") {
        return Ok(());
    }
    let testbed = Testbed::shared_real_node().await?;
    let node = testbed.real_node().context("the testbed has no real node")?;
    let ns = testbed.namespace("metrics").await?;
    let pods: Api<Pod> = ns.api();
    let busy: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "busy"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node.name()},
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "spin",
                "image": node.busybox_image(),
                "command": ["sh", "-c", "while :; do :; done"],
                // A tenth of a core: visible in the metrics, light on a shared machine.
                "resources": {"requests": {"cpu": "50m", "memory": "8Mi"}, "limits": {"cpu": "100m", "memory": "16Mi"}}
            }]
        }
    }))?;
    pods.create(&PostParams::default(), &busy).await?;
    wait_ready(&pods, "busy").await?;

    // What `kubectl top pod` reads: metrics.k8s.io/v1beta1 PodMetrics, served by metrics-server
    // through the aggregator. The first sample needs two kubelet scrapes (15 s apart).
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics"), "pods");
    let metrics: Api<DynamicObject> = Api::namespaced_with(ns.client(), ns.name(), &resource);
    let usage = poll_until(WAIT, "PodMetrics for pod busy with CPU usage", || async {
        let Some(m) = metrics.get_opt("busy").await? else { return Ok::<_, kube::Error>(None) };
        let usage = m.data["containers"][0]["usage"].clone();
        Ok(usage["cpu"].as_str().is_some_and(|cpu| cpu_millicores(cpu) > 0.0).then_some(usage))
    })
    .await?;
    let cpu = cpu_millicores(usage["cpu"].as_str().unwrap_or_default());
    // The container spins under a 100m limit: it uses a good part of it, never much more.
    ensure!((20.0..=150.0).contains(&cpu), "the spinning pod should use about 100m CPU, metrics say {usage}");
    ensure!(usage["memory"].as_str().is_some_and(|m| m != "0"), "no memory usage in {usage}");

    let node_resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "NodeMetrics"), "nodes");
    let node_metrics: Api<DynamicObject> = Api::all_with(ns.client(), &node_resource);
    let node_usage = node_metrics.get(node.name()).await?.data["usage"].clone();
    ensure!(
        node_usage["cpu"].is_string() && node_usage["memory"].is_string(),
        "NodeMetrics without usage: {node_usage}"
    );
    ns.delete().await?;
    Ok(())
}

/// Kubernetes CPU quantities as metrics-server writes them: nanocores (`n`), microcores (`u`),
/// millicores (`m`) or cores.
fn cpu_millicores(q: &str) -> f64 {
    let (num, scale) = match q.as_bytes().last() {
        Some(b'n') => (&q[..q.len() - 1], 1e-6),
        Some(b'u') => (&q[..q.len() - 1], 1e-3),
        Some(b'm') => (&q[..q.len() - 1], 1.0),
        _ => (q, 1000.0),
    };
    num.parse::<f64>().map_or(0.0, |n| n * scale)
}

#[test]
fn cpu_quantities() {
    assert_eq!(cpu_millicores("100m"), 100.0);
    assert_eq!(cpu_millicores("2"), 2000.0);
    assert_eq!(cpu_millicores("250000000n"), 250.0);
    assert_eq!(cpu_millicores("1500u"), 1.5);
    assert_eq!(cpu_millicores("junk"), 0.0);
}
