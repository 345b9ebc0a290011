//! What the BentoDeployment controller's watches hold, so that a reconcile reads its inputs
//! and its children from memory instead of asking the API server again.
//!
//! A cold start on 1,000 BentoDeployments made ~49 requests per object when every reconcile
//! read the Bento and the `network` ConfigMap and re-applied all four children, whatever
//! woke it (bench/operator). With these caches a reconcile woken by a child's status asks
//! nothing but, at most, a status write. Objects are kept without `managedFields`, and the
//! children without their specs (a child is compared by the digest in its annotation, and a
//! Deployment's status is read): most of their size, of no use here.

use std::fmt::Debug;
use std::sync::Arc;

use futures::Stream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use yatai_kube_api::{Bento, BentoRequest};

/// The reflector stores of one controller (one watched namespace, or all).
#[derive(Clone)]
pub struct Caches {
    pub bentos: Store<Bento>,
    pub requests: Store<BentoRequest>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub hpas: Store<HorizontalPodAutoscaler>,
    pub ingresses: Store<Ingress>,
    /// The operator's `network` ConfigMap (at most one object).
    pub network: Store<ConfigMap>,
}

impl Caches {
    /// Until every store has its first full list, a reconcile would take "not cached" for
    /// "does not exist".
    pub async fn ready(&self) {
        let _ = tokio::join!(
            self.bentos.wait_until_ready(),
            self.requests.wait_until_ready(),
            self.deployments.wait_until_ready(),
            self.services.wait_until_ready(),
            self.hpas.wait_until_ready(),
            self.ingresses.wait_until_ready(),
            self.network.wait_until_ready(),
        );
    }
}

/// `namespace/name` in `store`.
pub fn cached<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

/// A watch of `api` that fills a store (objects without `managedFields`, then trimmed by
/// `trim`), and the stream of objects it saw change, for the controller's triggers. The store
/// fills only while the stream is polled.
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .modify(move |o: &mut K| {
            o.meta_mut().managed_fields = None;
            trim(o);
        })
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// Trims for [`reflect`].
pub mod trim {
    use super::*;

    pub fn nothing<K>(_: &mut K) {}
    /// The pod template is most of a Deployment; its status and generation stay.
    pub fn deployment(d: &mut Deployment) {
        d.spec.template = Default::default();
    }
    pub fn service(s: &mut Service) {
        s.spec = None;
    }
    pub fn hpa(h: &mut HorizontalPodAutoscaler) {
        h.spec = Default::default();
    }
    pub fn ingress(i: &mut Ingress) {
        i.spec = None;
    }
}

/// Stores filled by hand, for the mocked-API-server tests.
#[cfg(test)]
pub mod filled {
    use super::*;

    pub fn store<K>(objects: Vec<K>) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        // The writer may go: a store keeps what it was given.
        store
    }

    pub fn caches(bentos: Vec<Bento>) -> Caches {
        Caches {
            bentos: store(bentos),
            requests: store(vec![]),
            deployments: store(vec![]),
            services: store(vec![]),
            hpas: store(vec![]),
            ingresses: store(vec![]),
            network: store(vec![]),
        }
    }
}
