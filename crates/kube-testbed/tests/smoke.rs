//! Proves that the testbed is a working cluster for an operator: the API server validates
//! custom resources, the controllers turn a Deployment into Ready pods on kwok nodes with an
//! EndpointSlice, and deleting owners or namespaces garbage-collects what hangs off them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use yatai_kube_testbed::{Testbed, poll_until};

const WAIT: Duration = Duration::from_secs(120);

/// The CRD is cluster-scoped and may outlive this test on a shared testbed: server-side apply
/// makes installing it again harmless.
const CRD_NAME: &str = "widgets.smoke.yatai.test";

fn widget_crd() -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": "smoke.yatai.test",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["model", "replicas"],
                            "properties": {
                                "model": {"type": "string", "minLength": 1},
                                "replicas": {"type": "integer", "minimum": 1, "maximum": 10}
                            }
                        },
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                }}
            }]
        }
    })
}

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("smoke.yatai.test", "v1", "Widget"), "widgets")
}

fn widget(name: &str, spec: serde_json::Value) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "smoke.yatai.test/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

#[tokio::test]
async fn control_plane_validates_schedules_and_garbage_collects() -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("smoke: {what} at {:.1}s", t0.elapsed().as_secs_f64());
    let testbed = Testbed::shared().await?;
    step("testbed ready");
    let ns = testbed.namespace("smoke").await?;
    step("namespace ready");
    let client = ns.client();

    // --- A CustomResourceDefinition; the API server enforces its schema. --------------------
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(widget_crd())?;
    crds.patch(CRD_NAME, &PatchParams::apply("yatai-smoke-test").force(), &Patch::Apply(&crd))
        .await
        .context("applying the Widget CRD")?;
    poll_until(WAIT, "the Widget CRD to be Established", || async {
        let crd = crds.get(CRD_NAME).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        Ok::<_, kube::Error>(established.then_some(()))
    })
    .await?;

    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &widget_resource());
    // Creating right after Established can still race the API server's discovery of the new
    // type (404 for a moment), so the good object is retried until the type is served.
    let good = widget("iris", json!({"model": "iris:v1", "replicas": 2}))?;
    let created = poll_until(WAIT, "the Widget type to be served", || async {
        match widgets.create(&PostParams::default(), &good).await {
            Ok(w) => Ok(Some(w)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    })
    .await?;
    let created_uid = created.metadata.uid.clone().context("created Widget has no uid")?;
    assert_eq!(created.data["spec"]["replicas"], 2);

    for (bad_name, bad_spec, field) in [
        ("bad-type", json!({"model": "iris:v1", "replicas": "three"}), "spec.replicas"),
        ("bad-range", json!({"model": "iris:v1", "replicas": 0}), "spec.replicas"),
        ("bad-missing", json!({"replicas": 1}), "spec.model"),
    ] {
        let result = widgets.create(&PostParams::default(), &widget(bad_name, bad_spec)?).await;
        match result {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{bad_name}: expected 422 Invalid, got {status:?}");
                assert!(status.message.contains(field), "{bad_name}: error should name {field}: {}", status.message);
            }
            other => panic!("{bad_name}: the API server accepted an invalid Widget: {other:?}"),
        }
    }
    assert!(widgets.get_opt("bad-type").await?.is_none(), "a rejected Widget was stored");
    step("CRD served and validating");

    // --- Ownership: a ConfigMap owned by the Widget goes when the Widget goes. ---------------
    // (This is what an operator relies on; the garbage collector first has to discover the
    // freshly installed type.)
    let configmaps: Api<ConfigMap> = ns.api();
    let owned: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "iris-config",
            "ownerReferences": [{
                "apiVersion": "smoke.yatai.test/v1", "kind": "Widget", "name": "iris",
                "uid": created_uid, "controller": true, "blockOwnerDeletion": true
            }]
        },
        "data": {"model": "iris:v1"}
    }))?;
    configmaps.create(&PostParams::default(), &owned).await?;
    widgets.delete("iris", &DeleteParams::background()).await?;
    poll_until(WAIT, "the Widget-owned ConfigMap to be garbage-collected", || async {
        configmaps.get_opt("iris-config").await.map(|cm| cm.is_none().then_some(()))
    })
    .await?;
    step("Widget-owned ConfigMap collected");

    // --- A Deployment with two replicas becomes two Ready pods on kwok nodes. ----------------
    let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{
                    "name": "web",
                    "image": "registry.invalid/never-pulled:1",
                    "ports": [{"containerPort": 3000, "name": "http"}]
                }]}
            }
        }
    }))?;
    let deployments: Api<Deployment> = ns.api();
    deployments.create(&PostParams::default(), &deployment).await?;
    poll_until(WAIT, "Deployment web to have 2 ready replicas", || async {
        let d = deployments.get("web").await?;
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        Ok::<_, kube::Error>((ready == 2).then_some(()))
    })
    .await?;

    step("Deployment ready");
    let pods: Api<Pod> = ns.api();
    let listed = pods.list(&ListParams::default().labels("app=web")).await?;
    assert_eq!(listed.items.len(), 2, "expected exactly the two replicas");
    let mut pod_ips = Vec::new();
    for pod in &listed.items {
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("");
        assert!(node.starts_with("kwok-node-"), "pod {name} is on {node:?}, not a kwok node");
        let status = pod.status.as_ref().context("pod without status")?;
        assert_eq!(status.phase.as_deref(), Some("Running"), "pod {name}");
        let ready =
            status.conditions.as_deref().unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready, "pod {name} is not Ready");
        pod_ips.push(status.pod_ip.clone().with_context(|| format!("pod {name} has no IP"))?);
    }
    pod_ips.sort();

    // --- A Service gets an EndpointSlice listing both ready pods. ---------------------------
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]}
    }))?;
    let services: Api<Service> = ns.api();
    services.create(&PostParams::default(), &service).await?;
    let slices: Api<EndpointSlice> = ns.api();
    let slice_ips = poll_until(WAIT, "an EndpointSlice for Service web with both pods ready", || async {
        let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await?;
        let mut ips: Vec<String> = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses.iter().cloned())
            .collect();
        ips.sort();
        Ok::<_, kube::Error>((ips.len() == 2).then_some(ips))
    })
    .await?;
    assert_eq!(slice_ips, pod_ips, "the EndpointSlice should list exactly the pods' IPs");
    step("EndpointSlice lists both pods");

    // --- Deleting the namespace removes everything in it. -----------------------------------
    let name = ns.name().to_string();
    ns.delete().await?;
    step("namespace deleted");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    ensure!(namespaces.get_opt(&name).await?.is_none(), "namespace {name} still exists");
    // Listing across all namespaces proves the objects are gone, not just hidden.
    let in_ns = |n: &Option<String>| n.as_deref() == Some(name.as_str());
    let all = ListParams::default();
    ensure!(
        !Api::<Pod>::all(client.clone()).list(&all).await?.items.iter().any(|o| in_ns(&o.metadata.namespace)),
        "pods survived"
    );
    ensure!(
        !Api::<ReplicaSet>::all(client.clone()).list(&all).await?.items.iter().any(|o| in_ns(&o.metadata.namespace)),
        "replicasets survived"
    );
    ensure!(
        !Api::<Deployment>::all(client.clone()).list(&all).await?.items.iter().any(|o| in_ns(&o.metadata.namespace)),
        "deployments survived"
    );
    ensure!(
        !Api::<EndpointSlice>::all(client.clone()).list(&all).await?.items.iter().any(|o| in_ns(&o.metadata.namespace)),
        "endpointslices survived"
    );
    ensure!(
        !Api::<DynamicObject>::all_with(client.clone(), &widget_resource())
            .list(&all)
            .await?
            .items
            .iter()
            .any(|o| in_ns(&o.metadata.namespace)),
        "widgets survived"
    );
    Ok(())
}

/// Two tests in one process share one control plane, each in a namespace of its own.
#[tokio::test]
async fn tests_get_distinct_namespaces_on_one_shared_testbed() -> anyhow::Result<()> {
    let a = Testbed::shared().await?;
    let b = Testbed::shared().await?;
    assert!(std::ptr::eq(a, b), "Testbed::shared() must hand out one testbed per process");
    let ns1 = a.namespace("share").await?;
    let ns2 = a.namespace("share").await?;
    assert_ne!(ns1.name(), ns2.name());
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "same-name"}}))?;
    ns1.api::<ConfigMap>().create(&PostParams::default(), &cm).await?;
    ns2.api::<ConfigMap>().create(&PostParams::default(), &cm).await?;

    // Dropping a namespace starts its deletion without waiting for it.
    let dropped = ns1.name().to_string();
    drop(ns1);
    let namespaces: Api<Namespace> = Api::all(a.client().await?);
    let phase = namespaces.get_opt(&dropped).await?.and_then(|n| n.status).and_then(|s| s.phase);
    assert!(phase.as_deref() != Some("Active"), "namespace {dropped} is still Active after drop: {phase:?}");
    ns2.delete().await?;
    Ok(())
}
