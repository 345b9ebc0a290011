//! The BentoRequest controller against real components: the testbed's kube-apiserver, Debian's
//! docker-registry and the debootstrap base image the image builder's tests use (their support
//! code is included from `crates/image-builder/tests/common`), a bento exported by the real
//! bentoml client and served over HTTP, and the builder running in-process.

#[path = "../../image-builder/tests/common/mod.rs"]
mod build_common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use yatai_kube_api::condition;
use yatai_kube_api::names;
use yatai_kube_api::resources::{Bento, BentoRequest, BentoRequestSpec, annotations, conditions as c};
use yatai_kube_testbed::{Testbed, poll_until};
use yatai_operator::{Context, Namespaces, Settings, bento_request};

const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
const QUICK: Duration = Duration::from_secs(60);

/// Applies the BentoRequest and Bento CRDs (server-side, forced: other test binaries may apply
/// the same ones at the same time) and waits until they are served.
async fn install_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [BentoRequest::crd(), Bento::crd()] {
        let name = crd.name_any();
        crds.patch(&name, &PatchParams::apply("yatai-crds").force(), &Patch::Apply(&crd)).await.unwrap();
        yatai_operator::crds::wait_established(client, &name, QUICK).await.unwrap();
    }
}

/// A one-file HTTP server: `GET /<name>` answers the file registered under that name, anything
/// else 404. It records when each path was asked for.
struct FileServer {
    port: u16,
    hits: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
}

impl FileServer {
    async fn start(files: HashMap<String, std::path::PathBuf>) -> FileServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
        let files = Arc::new(files);
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let (files, hits) = (files.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                    hits.lock().unwrap().entry(path.clone()).or_default().push(Instant::now());
                    match files.get(&path) {
                        Some(p) => {
                            let body = tokio::fs::read(p).await.unwrap();
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = sock.write_all(head.as_bytes()).await;
                            let _ = sock.write_all(&body).await;
                        }
                        None => {
                            let _ = sock
                                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found")
                                .await;
                        }
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        FileServer { port, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn hits(&self, path: &str) -> Vec<Instant> {
        self.hits.lock().unwrap().get(path).cloned().unwrap_or_default()
    }
}

fn request(tag: &str, download_url: &str) -> BentoRequest {
    BentoRequest::new(
        &names::bento_request_name(tag),
        BentoRequestSpec { bento_tag: tag.into(), download_url: download_url.into(), ..Default::default() },
    )
}

/// Waits until the request's condition `type_` has `status` and returns the request.
async fn wait_condition(
    api: &Api<BentoRequest>,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> BentoRequest {
    poll_until(timeout, &format!("{name}: {type_}={status}"), || async {
        let r = api.get(name).await?;
        let cs = r.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let hit = condition::find(&cs, type_).is_some_and(|x| x.status == status);
        Ok::<_, kube::Error>(hit.then_some(r))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn cond<'a>(r: &'a BentoRequest, type_: &str) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    condition::find(&r.status.as_ref().unwrap().conditions, type_).unwrap_or_else(|| panic!("no {type_} on {r:?}"))
}

/// Events about `name` in `ns` with `reason`.
async fn events(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Vec<KubeEvent> {
    let api: Api<KubeEvent> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason) && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect()
}

async fn wait_event(client: &kube::Client, ns: &str, name: &str, reason: &str) -> KubeEvent {
    poll_until(QUICK, &format!("a {reason} event for {ns}/{name}"), || async {
        Ok::<_, ()>(events(client, ns, name, reason).await.into_iter().next())
    })
    .await
    .unwrap()
}

fn settings(namespaces: &[&str], registry: &str) -> Settings {
    let fx = build_common::fixtures();
    let mut s =
        Settings::for_tests(Namespaces::Some(namespaces.iter().map(|n| n.to_string()).collect()), "yatai-system");
    s.image_registry = Some(registry.to_string());
    s.image_registry_insecure = true;
    s.build_cache_dir = build_common::shared_cache();
    s.build_uv = fx.uv.clone();
    s.build_uv_cache = Some(build_common::cache_root().join("uv-cache"));
    s
}

/// Build once, find it the second time (another namespace: not rebuilt), force a rebuild, and
/// a download URL that answers 404 fails with a reason and is retried with backoff.
#[tokio::test(flavor = "multi_thread")]
async fn bento_request_builds_pushes_and_writes_the_bento_and_never_rebuilds_an_existing_tag() {
    let fx = build_common::fixtures();
    let reg = build_common::TestRegistry::start(None);
    let base = reg.push_base();
    let testbed = Testbed::shared().await.unwrap();
    let client = testbed.client().await.unwrap();
    install_crds(&client).await;

    let bento_dir = build_common::extract(&fx.bento("iris-v1"));
    let info = yatai_build::bento::BentoInfo::load(bento_dir.path()).unwrap();
    let tag = info.tag();
    let files = HashMap::from([("iris-v1.bento".to_string(), fx.bento("iris-v1"))]);
    let server = FileServer::start(files).await;

    let (a, b, f) = (
        testbed.namespace("br-build").await.unwrap(),
        testbed.namespace("br-found").await.unwrap(),
        testbed.namespace("br-force").await.unwrap(),
    );
    let mut s = settings(&[a.name(), b.name(), f.name()], &format!("{}/bentos", reg.host()));
    s.build_base = Some(base);
    let controller = tokio::spawn(bento_request::run(Context::new(client.clone(), s)));

    // 1. A new tag is built, pushed and becomes a Bento.
    let image = names::image_name(&format!("{}/bentos", reg.host()), &tag);
    let name = names::bento_request_name(&tag);
    let api_a: Api<BentoRequest> = a.api();
    let started = Instant::now();
    api_a.create(&PostParams::default(), &request(&tag, &server.url("iris-v1.bento"))).await.unwrap();
    let r = wait_condition(&api_a, &name, c::BENTO_AVAILABLE, condition::TRUE, BUILD_TIMEOUT).await;
    eprintln!("BentoRequest → Bento with a build of {tag}: {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(cond(&r, c::IMAGE_EXISTS_CHECKED).status, "True");
    assert_eq!(cond(&r, c::IMAGE_EXISTS_CHECKED).message, image);
    assert_eq!(cond(&r, c::IMAGE_EXISTS).status, "True");
    assert_eq!(cond(&r, c::IMAGE_EXISTS).reason, "ImageBuilt");
    assert_eq!(cond(&r, c::IMAGE_BUILDING).status, "False");
    assert_eq!(cond(&r, c::IMAGE_BUILDING).reason, "ImageBuilt");
    assert_eq!(r.status.as_ref().unwrap().observed_generation, r.metadata.generation);
    assert_eq!(server.hits("iris-v1.bento").len(), 1, "the bento was downloaded once");
    wait_event(&client, a.name(), &name, "Building").await;
    wait_event(&client, a.name(), &name, "ImageBuilt").await;

    // An independent client finds the image under Yatai's name.
    let raw = build_common::skopeo_inspect(&image, Some("--raw"));
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let config = build_common::skopeo_inspect(&image, Some("--config"));
    assert_eq!(config["config"]["Labels"]["ai.yatai.bento.tag"], tag);
    let manifest_puts = || reg.requests("\"PUT /v2/bentos/manifests/");
    assert_eq!(manifest_puts(), 1, "{}", reg.log());

    // The Bento, owned by the request.
    let bentos_a: Api<Bento> = a.api();
    let bento = bentos_a.get(&name).await.unwrap();
    assert_eq!(bento.spec.tag, tag);
    assert_eq!(bento.spec.image, image);
    assert_eq!(bento.spec.context.as_ref().unwrap().bentoml_version, info.bentoml_version);
    let model_tags: Vec<String> = bento.spec.models.iter().map(|m| m.tag.clone()).collect();
    let want: Vec<String> = info.models.iter().map(|m| m.tag()).collect();
    assert!(!want.is_empty());
    assert_eq!(model_tags, want);
    assert!(bento.spec.image_pull_secrets.is_empty(), "no credentials, no pull secret");
    let owners = bento.metadata.owner_references.clone().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].kind, "BentoRequest");
    assert_eq!(owners[0].api_version, "resources.yatai.ai/v1alpha1");
    assert_eq!(owners[0].name, name);
    assert_eq!(Some(owners[0].uid.clone()), r.metadata.uid);
    assert_eq!(owners[0].controller, Some(true));

    // A deleted Bento is written again.
    bentos_a.delete(&name, &Default::default()).await.unwrap();
    poll_until(QUICK, "the Bento recreated", || async {
        Ok::<_, kube::Error>(
            bentos_a
                .get_opt(&name)
                .await?
                .filter(|b| b.metadata.deletion_timestamp.is_none() && b.uid() != bento.uid()),
        )
    })
    .await
    .unwrap();

    // 2. The same tag in another namespace: found in the registry, not built again.
    let api_b: Api<BentoRequest> = b.api();
    api_b.create(&PostParams::default(), &request(&tag, &server.url("iris-v1.bento"))).await.unwrap();
    let r = wait_condition(&api_b, &name, c::BENTO_AVAILABLE, condition::TRUE, QUICK).await;
    assert_eq!(cond(&r, c::IMAGE_EXISTS).reason, "ImageFound");
    assert!(condition::find(&r.status.as_ref().unwrap().conditions, c::IMAGE_BUILDING).is_none());
    assert_eq!(manifest_puts(), 1, "an existing tag must not be pushed again");
    assert_eq!(server.hits("iris-v1.bento").len(), 1, "nor downloaded");
    let bento_b: Api<Bento> = b.api();
    assert_eq!(bento_b.get(&name).await.unwrap().spec.image, image);

    // 3. yatai.ai/force-build-image builds even so.
    let api_f: Api<BentoRequest> = f.api();
    let mut forced = request(&tag, &server.url("iris-v1.bento"));
    forced.annotations_mut().insert(annotations::FORCE_BUILD_IMAGE.into(), "true".into());
    api_f.create(&PostParams::default(), &forced).await.unwrap();
    let r = wait_condition(&api_f, &name, c::BENTO_AVAILABLE, condition::TRUE, BUILD_TIMEOUT).await;
    assert_eq!(cond(&r, c::IMAGE_EXISTS).reason, "ImageBuilt");
    assert_eq!(manifest_puts(), 2, "the forced build pushed the manifest again");
    assert_eq!(server.hits("iris-v1.bento").len(), 2);

    // 4. A download URL that answers 404: a readable False condition, a Warning Event, and a
    // retry only after a backoff.
    let missing = "missing_bento:v1";
    let missing_name = names::bento_request_name(missing);
    api_a.create(&PostParams::default(), &request(missing, &server.url("missing.bento"))).await.unwrap();
    let r = wait_condition(&api_a, &missing_name, c::IMAGE_BUILDING, condition::FALSE, QUICK).await;
    let building = cond(&r, c::IMAGE_BUILDING);
    assert_eq!(building.reason, "BuildFailed");
    assert!(building.message.contains("HTTP 404"), "{}", building.message);
    assert!(building.message.contains("spec.downloadUrl"), "{}", building.message);
    let ev = wait_event(&client, a.name(), &missing_name, "BuildFailed").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    let hits = poll_until(QUICK, "a retry of the failed download", || async {
        let h = server.hits("missing.bento");
        Ok::<_, ()>((h.len() >= 2).then_some(h))
    })
    .await
    .unwrap();
    let gap = hits[1] - hits[0];
    assert!(gap >= Duration::from_secs(4), "retried after {gap:?}: that is a hot loop, not a backoff");

    controller.abort();
    for ns in [a, b, f] {
        ns.delete().await.unwrap();
    }
}

/// A registry nobody answers on: a False ImageExistsChecked saying what to check, a Warning
/// Event, and attempts spaced by a backoff.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_registry_ends_in_a_condition_and_a_backoff_not_a_hot_loop() {
    let testbed = Testbed::shared().await.unwrap();
    let client = testbed.client().await.unwrap();
    install_crds(&client).await;

    // Accepts and drops every connection, counting them: unreachable, but observable.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let conns: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = conns.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            seen.lock().unwrap().push(Instant::now());
            drop(sock);
        }
    });

    let ns = testbed.namespace("br-unreach").await.unwrap();
    let s = Settings {
        image_registry: Some(format!("127.0.0.1:{port}/bentos")),
        image_registry_insecure: true,
        ..Settings::for_tests(Namespaces::Some(vec![ns.name().to_string()]), "yatai-system")
    };
    let controller = tokio::spawn(bento_request::run(Context::new(client.clone(), s)));

    let api: Api<BentoRequest> = ns.api();
    let tag = "iris_classifier:unreachable1";
    let name = names::bento_request_name(tag);
    api.create(&PostParams::default(), &request(tag, "http://127.0.0.1:9/none.bento")).await.unwrap();
    let r = wait_condition(&api, &name, c::IMAGE_EXISTS_CHECKED, condition::FALSE, QUICK).await;
    let checked = cond(&r, c::IMAGE_EXISTS_CHECKED);
    assert_eq!(checked.reason, "RegistryUnreachable");
    assert!(checked.message.contains(&format!("127.0.0.1:{port}")), "{}", checked.message);
    assert!(checked.message.contains("--image-registry"), "{}", checked.message);
    let ev = wait_event(&client, ns.name(), &name, "RegistryUnreachable").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));

    let attempts = poll_until(QUICK, "a second registry check", || async {
        let c = conns.lock().unwrap().clone();
        // reqwest may retry a connection once within an attempt: group by > 1 s gaps.
        let mut starts = vec![];
        for t in c {
            if starts.last().is_none_or(|l: &Instant| t - *l > Duration::from_secs(1)) {
                starts.push(t);
            }
        }
        Ok::<_, ()>((starts.len() >= 2).then_some(starts))
    })
    .await
    .unwrap();
    let gap = attempts[1] - attempts[0];
    assert!(gap >= Duration::from_secs(4), "checked again after {gap:?}: a hot loop");

    controller.abort();
    ns.delete().await.unwrap();
}
