//! A namespace per test, so tests sharing one control plane cannot see each other's objects.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client, Resource};

use crate::poll_until;

/// Label on every namespace this crate creates, to find leftovers of killed test runs.
pub const TEST_NAMESPACE_LABEL: &str = "yatai.test/namespace";

/// How long a new namespace may take to get its `default` ServiceAccount (KCM's
/// serviceaccount controller; well under a second on an idle testbed).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long deleting a namespace may take: the namespace controller deletes every object in
/// it, kwok finalises the pods, and the garbage collector removes dependents.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(120);

/// A namespace created for one test. Dropping it starts its deletion (without waiting);
/// [`TestNamespace::delete`] deletes it and waits until it is gone.
pub struct TestNamespace {
    name: String,
    client: Client,
    kubeconfig: PathBuf,
    deleted: bool,
}

impl TestNamespace {
    pub(crate) async fn create(client: Client, kubeconfig: PathBuf, prefix: &str) -> anyhow::Result<Self> {
        let name = format!("{}-{}", prefix.trim_end_matches('-'), unique_suffix());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating test namespace {name}"))?;
        let this = TestNamespace { name, client, kubeconfig, deleted: false };
        // Pods are refused by the ServiceAccount admission plugin until the namespace's
        // `default` ServiceAccount exists; tests should not have to know that.
        let accounts: Api<ServiceAccount> = this.api();
        poll_until(READY_TIMEOUT, &format!("ServiceAccount {}/default", this.name), || async {
            accounts.get_opt("default").await.map(|sa| sa.map(|_| ()))
        })
        .await?;
        Ok(this)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin client this namespace was created with.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// An API for a namespaced resource type, in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Delete the namespace and wait until the API server has removed it, which happens only
    /// after every object in it is gone.
    pub async fn delete(mut self) -> anyhow::Result<()> {
        self.deleted = true;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .delete(&self.name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting test namespace {}", self.name))?;
        poll_until(DELETE_TIMEOUT, &format!("namespace {} to be deleted", self.name), || async {
            namespaces.get_opt(&self.name).await.map(|ns| match ns {
                None => Some(()),
                Some(_) => None,
            })
        })
        .await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        // The test's runtime may be shutting down (or this is a panic unwinding inside it), so
        // its client cannot be used here: ask for deletion from a thread with its own runtime
        // and its own client, and wait only for the request, not for the deletion.
        let name = std::mem::take(&mut self.name);
        let kubeconfig = self.kubeconfig.clone();
        let result = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let testbed = crate::Testbed::attach(kubeconfig)?;
                let namespaces: Api<Namespace> = Api::all(testbed.client().await?);
                namespaces.delete(&name, &DeleteParams::background()).await?;
                Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) = result {
            eprintln!("yatai-kube-testbed: could not delete a test namespace: {e:#}");
        }
    }
}

/// Eight lowercase hex digits, unique within this process and very likely across processes.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mix = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // A multiplicative hash spreads the bits so that nearby inputs give unrelated names.
    format!("{:08x}", (mix.wrapping_mul(0xff51_afd7_ed55_8ccd) >> 32) as u32)
}
