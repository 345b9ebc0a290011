//! The deploy-target seam, in process: the v2 deployment routes drive
//! whatever [`DeployTarget`] the server was given for the deployment's
//! cluster, with the spec the user asked for, and nothing else. A recording
//! fake stands in for the local runtime (and for a Kubernetes cluster), so
//! these tests take milliseconds and need no `bentoml`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Api, SIGNING_KEY, open_store};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use yatai_api::AppState;
use yatai_app::Targets;
use yatai_app::deployments::DbStatusSink;
use yatai_core::deploy::{
    ArtifactRef, ClusterKind, DeployTarget, DeploymentSnapshot, DeploymentSpec, LogSource, Metrics, Phase, ReplicaInfo,
    StatusSink, TargetError,
};
use yatai_store::{MemberRole, Store};

/// What the application asked a target to do.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    /// The digest of the bento checked.
    Check(String),
    Apply(Box<DeploymentSpec>),
    Terminate(String),
    Remove(String),
}

/// A target that runs nothing: it records each call, reports the status a
/// real one would through the server's status sink, and shows one ready
/// replica per `min_replicas` of what it was last given.
struct Fake {
    kind: ClusterKind,
    max_replicas: u32,
    sink: DbStatusSink,
    calls: Mutex<Vec<Call>>,
    /// By deployment uid: the spec running, or none once terminated.
    running: Mutex<HashMap<String, Option<DeploymentSpec>>>,
}

impl Fake {
    fn new(kind: ClusterKind, max_replicas: u32, store: &Store) -> Arc<Fake> {
        Arc::new(Fake {
            kind,
            max_replicas,
            sink: DbStatusSink { store: store.clone() },
            calls: Mutex::default(),
            running: Mutex::default(),
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The specs applied, in order.
    fn applied(&self) -> Vec<DeploymentSpec> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Apply(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }
}

#[async_trait::async_trait]
impl DeployTarget for Fake {
    fn kind(&self) -> ClusterKind {
        self.kind
    }
    fn max_replicas(&self) -> u32 {
        self.max_replicas
    }
    async fn check(&self, bento: &ArtifactRef) -> Result<(), TargetError> {
        self.record(Call::Check(bento.digest.clone()));
        Ok(())
    }
    fn allocate_port(&self, _: &[i64]) -> Result<Option<u16>, TargetError> {
        Ok(None)
    }
    async fn apply(&self, spec: DeploymentSpec) -> Result<(), TargetError> {
        self.record(Call::Apply(Box::new(spec.clone())));
        self.sink.status(&spec.uid, &spec.name, Phase::Running, "");
        self.running.lock().unwrap().insert(spec.uid.clone(), Some(spec));
        Ok(())
    }
    async fn terminate(&self, uid: &str) {
        self.record(Call::Terminate(uid.to_owned()));
        let name = self.running.lock().unwrap().insert(uid.to_owned(), None).flatten().map(|s| s.name);
        self.sink.status(uid, &name.unwrap_or_default(), Phase::Terminated, "");
    }
    async fn remove(&self, uid: &str) {
        self.record(Call::Remove(uid.to_owned()));
        self.running.lock().unwrap().remove(uid);
    }
    fn status(&self, uid: &str) -> Option<DeploymentSnapshot> {
        let running = self.running.lock().unwrap();
        let spec = running.get(uid)?;
        let replicas = spec
            .iter()
            .flat_map(|s| {
                (0..s.scaling.min_effective()).map(|i| ReplicaInfo {
                    id: format!("fake-{i}"),
                    revision_uid: s.revision_uid.clone(),
                    state: "ready",
                    ..Default::default()
                })
            })
            .collect();
        Some(DeploymentSnapshot {
            phase: if spec.is_some() { Phase::Running } else { Phase::Terminated },
            reason: String::new(),
            revision_uid: spec.as_ref().map(|s| s.revision_uid.clone()),
            updating_to: None,
            desired_replicas: spec.as_ref().map_or(0, |s| s.scaling.min_effective()),
            inflight: 0,
            replicas,
            port: 0,
            env_cached: None,
        })
    }
    fn logs(&self, _: &str) -> Option<Arc<dyn LogSource>> {
        None
    }
    fn metrics(&self, _: &str) -> Option<Metrics> {
        None
    }
    fn describe(&self) -> String {
        format!("fake {} target", self.kind)
    }
}

impl Api {
    /// The API on `store`, running deployments through `targets`.
    fn with_targets(dir: tempfile::TempDir, store: Store, targets: Targets) -> Api {
        Api::with_state(dir, store, |store, blobs| {
            AppState::with_targets(store, blobs, SIGNING_KEY, Default::default(), targets, None)
        })
    }

    /// The API with one fake target for local deployments.
    async fn local(max_replicas: u32) -> (Api, Arc<Fake>) {
        let (dir, store) = open_store().await;
        let fake = Fake::new(ClusterKind::Local, max_replicas, &store);
        let api = Api::with_targets(dir, store, Targets::default().with_kind(fake.clone()));
        (api, fake)
    }

    /// Pushes bento `name:version` the way `bentoml push` does in proxy mode
    /// (repository, version with its manifest, start_upload, PUT upload);
    /// returns the archive's SHA-256.
    async fn push_bento(&self, token: &str, name: &str, version: &str) -> String {
        let repo = format!("/api/v1/bento_repositories/{name}");
        let (status, body) = self
            .call_as(
                "POST",
                "/api/v1/bento_repositories",
                token,
                Some(json!({"name": name, "description": "", "labels": []})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "create repository: {body}");
        let manifest = json!({
            "name": name, "version": version, "service": "service:Iris", "entry_service": "iris",
            "bentoml_version": "1.4.40", "size_bytes": 1024, "models": [], "services": [], "envs": [], "apis": {},
            "image": {"python_version": "3.11"}, "spec": 2,
        });
        let (status, body) = self
            .call_as(
                "POST",
                &format!("{repo}/bentos"),
                token,
                Some(json!({"version": version, "description": "", "manifest": manifest, "labels": []})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "create version: {body}");
        let (status, body) = self.call_as("PATCH", &format!("{repo}/bentos/{version}/start_upload"), token, None).await;
        assert_eq!(status, StatusCode::OK, "start_upload: {body}");
        let archive = bento_archive(name, version);
        let put = Request::builder()
            .method("PUT")
            .uri(format!("{repo}/bentos/{version}/upload"))
            .header("content-length", archive.len());
        let (status, body) = self.send(put, Some(token), Body::from(archive.clone())).await;
        assert_eq!(status, StatusCode::OK, "upload: {body}");
        assert_eq!(body["upload_status"], "success", "{body}");
        hex::encode(Sha256::digest(&archive))
    }

    /// The deployment, once its stored status is `status` (the server
    /// writes what the target reports in the background).
    async fn deployment_when(&self, token: &str, uri: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (code, body) = self.call_as("GET", uri, token, None).await;
            assert_eq!(code, StatusCode::OK, "{body}");
            if body["status"] == status {
                return body;
            }
            assert!(tokio::time::Instant::now() < deadline, "{uri} never became {status}: {body}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// An uncompressed tar as the bentoml client builds it: `bento.yaml` at the
/// top naming the tag, and the service's source.
fn bento_archive(name: &str, version: &str) -> Vec<u8> {
    let manifest = format!("name: {name}\nversion: {version}\nservice: service:Iris\nspec: 2\n");
    let files: [(&str, &[u8]); 2] = [
        ("bento.yaml", manifest.as_bytes()),
        ("src/service.py", b"import bentoml\n\n@bentoml.service\nclass Iris: ...\n"),
    ];
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, data).expect("tar member");
    }
    tar.into_inner().expect("tar")
}

fn iris(min: u32, max: u32, envs: &[(&str, &str)]) -> Value {
    let envs: Vec<Value> = envs.iter().map(|(n, v)| json!({"name": n, "value": v})).collect();
    json!({
        "name": "iris",
        "bento": "iris:v1",
        "envs": envs,
        "services": {"iris": {"scaling": {"min_replicas": min, "max_replicas": max}}},
    })
}

fn owned(envs: &[(&str, &str)]) -> Vec<(String, String)> {
    envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn a_new_deployment_is_applied_once_with_the_spec_the_user_asked_for() {
    let (api, fake) = Api::local(4).await;
    let token = api.member("acme", MemberRole::Admin, &["api"]).await;
    let digest = api.push_bento(&token, "iris", "v1").await;

    let (status, created) =
        api.call_as("POST", "/api/v2/deployments", &token, Some(iris(2, 3, &[("GREETING", "hello")]))).await;
    assert_eq!(status, StatusCode::OK, "{created}");

    let uid = created["uid"].as_str().expect("uid");
    let org = api.store.get_org_by_name("acme").await.unwrap().unwrap();
    let calls = fake.calls();
    assert_eq!(calls.len(), 2, "one check, then one apply: {calls:#?}");
    assert_eq!(calls[0], Call::Check(digest.clone()));
    let Call::Apply(spec) = &calls[1] else { panic!("expected an apply: {calls:#?}") };
    assert_eq!((spec.uid.as_str(), spec.org_uid.as_str()), (uid, org.uid.as_str()));
    assert_eq!((spec.name.as_str(), spec.namespace.as_str()), ("iris", "yatai"));
    assert_eq!(spec.host.as_deref(), Some("iris-yatai"));
    assert_eq!((spec.bento.name.as_str(), spec.bento.version.as_str()), ("iris", "v1"));
    assert_eq!(spec.bento.digest, digest, "the digest of the archive uploaded");
    assert_eq!((spec.scaling.min, spec.scaling.max), (2, 3));
    assert_eq!(spec.envs, owned(&[("GREETING", "hello")]));
    assert_eq!(spec.python_version.as_deref(), Some("3.11"), "from the bento's manifest");
    assert_eq!(spec.revision_uid, created["latest_revision"]["uid"].as_str().unwrap());

    let shown = api.deployment_when(&token, "/api/v2/deployments/iris", "running").await;
    let replicas: Vec<&str> = shown["replicas"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(replicas, ["fake-0", "fake-1"], "what the target observes: {shown}");
    assert_eq!(shown["replicas"][0]["revision_uid"], spec.revision_uid.as_str());
    assert_eq!(fake.applied().len(), 1, "reading a deployment applies nothing");
}

#[tokio::test]
async fn more_replicas_than_the_target_allows_is_refused_before_anything_is_stored_or_started() {
    let (api, fake) = Api::local(4).await;
    let token = api.member("acme", MemberRole::Admin, &["api"]).await;
    api.push_bento(&token, "iris", "v1").await;

    let (status, body) = api.call_as("POST", "/api/v2/deployments", &token, Some(iris(1, 5, &[]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_replicas") && message.contains('4'), "names the setting and the limit: {body}");
    assert!(fake.calls().is_empty(), "the target was not asked anything: {:#?}", fake.calls());
    let (status, body) = api.call_as("GET", "/api/v2/deployments/iris", &token, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, list) = api.call_as("GET", "/api/v2/deployments", &token, None).await;
    assert_eq!(list["total"], 0, "{list}");
}

#[tokio::test]
async fn each_change_to_a_deployment_reaches_its_target() {
    let (api, fake) = Api::local(4).await;
    let token = api.member("acme", MemberRole::Admin, &["api"]).await;
    api.push_bento(&token, "iris", "v1").await;
    let one = "/api/v2/deployments/iris";
    let (status, body) =
        api.call_as("POST", "/api/v2/deployments", &token, Some(iris(1, 3, &[("GREETING", "hello")]))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let uid = body["uid"].as_str().unwrap().to_owned();
    let first = fake.applied().pop().expect("applied on create");
    api.deployment_when(&token, one, "running").await;

    let (status, body) = api.call_as("POST", &format!("{one}/terminate"), &token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fake.calls().last(), Some(&Call::Terminate(uid.clone())));
    let shown = api.deployment_when(&token, one, "terminated").await;
    assert_eq!(shown["replicas"], json!([]), "{shown}");

    let (status, body) = api.call_as("POST", &format!("{one}/restore"), &token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fake.applied(), [first.clone(), first.clone()], "restored with the same revision and spec");

    let (status, body) =
        api.call_as("PUT", one, &token, Some(iris(1, 3, &[("GREETING", "bonjour"), ("LANG", "fr")]))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let updated = fake.applied().pop().unwrap();
    assert_ne!(updated.revision_uid, first.revision_uid, "an update is a new revision");
    assert_eq!(updated.envs, owned(&[("GREETING", "bonjour"), ("LANG", "fr")]));
    assert_eq!(updated.uid, uid);

    let (status, body) = api
        .call_as("POST", &format!("{one}/rollback"), &token, Some(json!({"revision_uid": first.revision_uid})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rolled_back = fake.applied().pop().unwrap();
    assert!(![&first.revision_uid, &updated.revision_uid].contains(&&rolled_back.revision_uid), "a new revision");
    assert_eq!(
        DeploymentSpec { revision_uid: first.revision_uid.clone(), ..rolled_back },
        first,
        "the first revision's configuration, again"
    );
    assert_eq!(fake.applied().len(), 4, "create, restore, update, rollback");

    let (status, body) = api.call_as("DELETE", one, &token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fake.calls().last(), Some(&Call::Remove(uid)));
    let (status, body) = api.call_as("GET", one, &token, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn a_kubernetes_cluster_is_driven_by_its_own_target_only() {
    let (dir, store) = open_store().await;
    let org = store.create_org("acme", "").await.expect("org");
    let prod = store.ensure_cluster(&org.uid, "prod", "kubernetes", "a Kubernetes cluster").await.expect("cluster");
    let local = Fake::new(ClusterKind::Local, 4, &store);
    let kube = Fake::new(ClusterKind::Kubernetes, 10, &store);
    let targets = Targets::default().with_kind(local.clone()).with_cluster(&prod.uid, kube.clone());
    let api = Api::with_targets(dir, store, targets);
    let token = api.member("acme", MemberRole::Admin, &["api"]).await;
    api.push_bento(&token, "iris", "v1").await;

    // More replicas than this machine allows: the cluster's own limit applies.
    let (status, body) = api.call_as("POST", "/api/v2/deployments?cluster=prod", &token, Some(iris(1, 8, &[]))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cluster"]["name"], "prod", "{body}");
    let uid = body["uid"].as_str().unwrap().to_owned();
    let applied = kube.applied();
    assert_eq!(applied.len(), 1, "{applied:#?}");
    assert_eq!((applied[0].uid.as_str(), applied[0].scaling.max), (uid.as_str(), 8));
    assert!(local.calls().is_empty(), "this machine runs nothing of the cluster's: {:#?}", local.calls());

    let shown = api.deployment_when(&token, "/api/v2/deployments/iris?cluster=prod", "running").await;
    assert_eq!(shown["replicas"].as_array().map(Vec::len), Some(1), "what the cluster's target observes: {shown}");

    // A deployment with no cluster runs on this machine, not on the cluster.
    let mut dev = iris(1, 1, &[]);
    dev["name"] = json!("iris-dev");
    let (status, body) = api.call_as("POST", "/api/v2/deployments", &token, Some(dev)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(local.applied().len(), 1);
    assert_eq!(kube.applied().len(), 1, "the cluster got nothing new");

    let (status, body) = api.call_as("POST", "/api/v2/deployments/iris/terminate?cluster=prod", &token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.call_as("DELETE", "/api/v2/deployments/iris?cluster=prod", &token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(kube.calls()[2..], [Call::Terminate(uid.clone()), Call::Remove(uid)]);
    assert!(local.calls().iter().all(|c| !matches!(c, Call::Terminate(_) | Call::Remove(_))), "{:#?}", local.calls());
}

#[tokio::test]
async fn a_server_with_no_targets_says_it_runs_no_deployments() {
    let api = Api::new().await;
    let token = api.member("acme", MemberRole::Admin, &["api"]).await;
    api.push_bento(&token, "iris", "v1").await;

    let (status, body) = api.call_as("POST", "/api/v2/deployments", &token, Some(iris(1, 1, &[]))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("runs no deployments"), "{body}");
    let (status, body) = api.call_as("GET", "/api/v2/deployments/iris", &token, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
