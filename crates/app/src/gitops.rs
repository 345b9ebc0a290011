//! Deployments made outside yatai: a BentoDeployment applied with kubectl or by a GitOps tool
//! in a namespace a cluster's target watches becomes a deployment of that cluster, owned by
//! the cluster's organization and marked `managed_by = external`. Yatai follows its status
//! and shows it everywhere a deployment is shown, and never changes it (every mutation is
//! refused, see [`crate::deployments::refuse_external`]). The row goes when the
//! BentoDeployment goes.
//!
//! One task per connected cluster ([`follow`]) imports what the target reports as
//! [`DeployTarget::foreign`] whenever the target's observations change (at most every
//! [`SETTLE`]), and every [`RESYNC`] in any case.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use yatai_core::deploy::{DeployTarget, ForeignDeployment};
use yatai_core::{Kind, Tag};
use yatai_store::{ClusterRow, ExternalDeployment, Imported, NewEvent};

use crate::deployments::{DeploymentConfig, EnvItem, config_json, entry_service};
use crate::error::AppResult;
use crate::state::AppState;

/// A burst of watch events (a rollout) is imported once.
const SETTLE: Duration = Duration::from_millis(500);
/// Imported again this often even without a change notification.
const RESYNC: Duration = Duration::from_secs(30);

/// What an imported deployment was last imported as, by `(namespace, name)`.
type Seen = HashMap<(String, String), ForeignDeployment>;

/// Starts importing the foreign deployments of `cluster` from `target` (the cluster's
/// current target): now, and on every change, until the target is replaced or detached.
pub fn follow(state: &AppState, cluster: &ClusterRow, target: &Arc<dyn DeployTarget>) {
    let Some(mut changes) = target.changes() else { return };
    let weak = Arc::downgrade(target);
    let (state, cluster) = (state.clone(), cluster.clone());
    tokio::spawn(async move {
        let mut seen = Seen::new();
        loop {
            let Some(target) = weak.upgrade() else { return };
            // Replaced (settings changed) or detached (cluster removed): that target's own
            // task, if any, takes over.
            if !state.targets.of_cluster(&cluster.uid).is_some_and(|t| Arc::ptr_eq(&t, &target)) {
                return;
            }
            if let Err(e) = sync(&state, &cluster, target.as_ref(), &mut seen).await {
                tracing::warn!(cluster = %cluster.name, error = %e, "cannot import the deployments made outside yatai");
            }
            drop(target);
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RESYNC) => {}
            }
            tokio::time::sleep(SETTLE).await;
            changes.mark_unchanged();
        }
    });
}

/// Makes the cluster's external deployment rows what the target observes: new ones imported,
/// changed ones revised, gone ones deleted. Nothing happens while the target does not know.
pub async fn sync(
    state: &AppState,
    cluster: &ClusterRow,
    target: &dyn DeployTarget,
    seen: &mut HashMap<(String, String), ForeignDeployment>,
) -> AppResult<()> {
    let Some(found) = target.foreign().await else { return Ok(()) };
    let rows = state.store.external_deployments(&cluster.uid).await?;
    for f in &found {
        let key = (f.namespace.clone(), f.name.clone());
        let stored = rows.iter().any(|d| d.namespace == f.namespace && d.name == f.name);
        if stored && seen.get(&key) == Some(f) {
            continue;
        }
        let bento = match f.bento_is_tag {
            true => registry_bento(state, &cluster.org_uid, &f.bento).await?,
            false => None,
        };
        let entry = bento.as_ref().map(|b| entry_service(&serde_json::from_str(&b.manifest).unwrap_or(Value::Null)));
        let config = config_json(&imported_config(f, entry.as_deref().unwrap_or("apiserver")));
        let imported = state
            .store
            .import_external_deployment(ExternalDeployment {
                org_uid: &cluster.org_uid,
                cluster_uid: &cluster.uid,
                namespace: &f.namespace,
                name: &f.name,
                bento_uid: bento.as_ref().map(|b| b.uid.as_str()),
                bento: &f.bento,
                config: &config,
            })
            .await?;
        match imported {
            Imported::New(d) => {
                tracing::info!(cluster = %cluster.name, namespace = %d.namespace, deployment = %d.name, bento = %f.bento, "imported a deployment made outside yatai");
                record(state, cluster, "imported", &f.namespace, &f.name, json!({"bento": f.bento})).await;
                target.follow_foreign(&d.uid, &d.namespace, &d.name);
            }
            Imported::Revised(d) => {
                record(state, cluster, "changed outside yatai", &f.namespace, &f.name, json!({"bento": f.bento})).await;
                target.follow_foreign(&d.uid, &d.namespace, &d.name);
            }
            Imported::Unchanged(d) => target.follow_foreign(&d.uid, &d.namespace, &d.name),
            Imported::Taken => {
                tracing::debug!(cluster = %cluster.name, namespace = %f.namespace, deployment = %f.name, "a yatai deployment has the name of a BentoDeployment made outside yatai");
            }
        }
        seen.insert(key, f.clone());
    }
    for d in rows {
        if found.iter().any(|f| f.namespace == d.namespace && f.name == d.name) {
            continue;
        }
        target.remove(&d.uid).await;
        state.store.delete_deployment(&d.uid).await?;
        seen.remove(&(d.namespace.clone(), d.name.clone()));
        tracing::info!(cluster = %cluster.name, namespace = %d.namespace, deployment = %d.name, "a deployment made outside yatai is gone");
        record(state, cluster, "removed outside yatai", &d.namespace, &d.name, Value::Null).await;
    }
    Ok(())
}

/// The registry's bento of that tag in the organization, if it has it uploaded.
async fn registry_bento(state: &AppState, org_uid: &str, tag: &str) -> AppResult<Option<yatai_store::VersionRow>> {
    let Ok(tag) = Tag::parse(tag) else { return Ok(None) };
    let Some(version) = tag.version.as_deref() else { return Ok(None) };
    let found = state.store.get_version(org_uid, Kind::Bento, &tag.name, version).await?;
    Ok(found.filter(|v| v.is_uploaded()))
}

/// The configuration shown for a foreign deployment, in the client's shape: its envs, and
/// the entry service's scaling and resources.
pub fn imported_config(f: &ForeignDeployment, entry: &str) -> DeploymentConfig {
    let mut service = Map::new();
    if let Some((min, max)) = f.replicas {
        service.insert("scaling".into(), json!({"min_replicas": min, "max_replicas": max}));
    }
    let r = &f.resources;
    let item = |cpu: &Option<String>, memory: &Option<String>| {
        let mut m = Map::new();
        if let Some(c) = cpu {
            m.insert("cpu".into(), c.clone().into());
        }
        if let Some(mem) = memory {
            m.insert("memory".into(), mem.clone().into());
        }
        m
    };
    let (requests, limits) = (item(&r.cpu_request, &r.memory_request), item(&r.cpu_limit, &r.memory_limit));
    if !requests.is_empty() || !limits.is_empty() {
        let mut res = Map::new();
        if !requests.is_empty() {
            res.insert("requests".into(), requests.into());
        }
        if !limits.is_empty() {
            res.insert("limits".into(), limits.into());
        }
        service.insert("resources".into(), res.into());
    }
    DeploymentConfig {
        access_authorization: Some(false),
        envs: Some(f.envs.iter().map(|(name, value)| EnvItem { name: name.clone(), value: value.clone() }).collect()),
        services: Some(Map::from_iter([(entry.to_owned(), Value::Object(service))])),
        ..Default::default()
    }
}

async fn record(state: &AppState, cluster: &ClusterRow, operation: &str, namespace: &str, name: &str, info: Value) {
    let mut info = match info {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    info.insert("cluster".into(), cluster.name.clone().into());
    info.insert("managed_by".into(), "external".into());
    let _ = state
        .store
        .record_event(NewEvent {
            org_uid: &cluster.org_uid,
            actor_uid: None,
            actor_name: "",
            api_token_name: "",
            operation,
            resource_type: "deployment",
            resource_name: &format!("{namespace}/{name}"),
            status: "success",
            info: &Value::Object(info).to_string(),
        })
        .await;
}

#[cfg(test)]
mod tests {
    use yatai_core::deploy::Resources;

    use super::*;

    #[test]
    fn a_foreign_deployment_is_shown_in_the_client_s_configuration_shape() {
        let f = ForeignDeployment {
            namespace: "ml".into(),
            name: "gitops-iris".into(),
            bento: "iris_classifier:v1".into(),
            bento_is_tag: true,
            envs: vec![("A".into(), "1".into())],
            replicas: Some((2, 3)),
            resources: Resources {
                cpu_request: Some("500m".into()),
                memory_limit: Some("1Gi".into()),
                ..Default::default()
            },
        };
        let c = serde_json::to_value(imported_config(&f, "IrisClassifier")).unwrap();
        assert_eq!(c["envs"], json!([{"name": "A", "value": "1"}]));
        assert_eq!(c["access_authorization"], false);
        let svc = &c["services"]["IrisClassifier"];
        assert_eq!(svc["scaling"], json!({"min_replicas": 2, "max_replicas": 3}));
        assert_eq!(svc["resources"], json!({"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}));

        // Nothing said: an empty service, no resources.
        let bare = ForeignDeployment { name: "x".into(), bento: "x--v1".into(), ..Default::default() };
        let c = serde_json::to_value(imported_config(&bare, "apiserver")).unwrap();
        assert_eq!(c["services"], json!({"apiserver": {}}));
        assert_eq!(c["envs"], json!([]));
    }
}
