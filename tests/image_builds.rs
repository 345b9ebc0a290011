//! Image builds run by `yatai serve`: a bento pushed with the bentoml CLI
//! becomes an image in a real OCI registry (Debian's docker-registry),
//! checked with skopeo; the build's status, reference, digest and log are in
//! the API.

mod support;

#[path = "../crates/image-builder/tests/common/mod.rs"]
mod build_common;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn wait_build(server: &Server, uid: &str) -> Value {
    let mut last = Value::Null;
    let done = (0..1200).find_map(|_| {
        last = server.http().get(&format!("/api/v1/image_builds/{uid}")).json();
        if last["status"] == "success" || last["status"] == "failed" {
            return Some(last.clone());
        }
        std::thread::sleep(Duration::from_millis(500));
        None
    });
    done.unwrap_or_else(|| panic!("the build did not finish: {last:#}"))
}

#[test]
fn the_server_builds_a_pushed_bento_into_an_image() {
    let fixtures = build_common::fixtures();
    let registry = build_common::TestRegistry::start(None);
    let base = registry.push_base();
    let target = format!("{}/bentos", registry.host());
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).building_images(
        &registry.host(),
        &base,
        &build_common::shared_cache(),
        &fixtures.uv,
    ));
    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    client.ok(&["push", &iris.bento]);
    let (name, version) = iris.bento.split_once(':').unwrap();
    let path = format!("/api/v1/bento_repositories/{name}/bentos/{version}/image_builds");

    let started = server.http().post(&path, &json!({"force": false}));
    assert_eq!(started.status, 200, "{}", started.text());
    let build = wait_build(&server, started.json()["uid"].as_str().unwrap());
    assert_eq!(build["status"], "success", "{build:#}");
    let reference = build["reference"].as_str().unwrap();
    assert!(reference.starts_with(&format!("{target}:yatai.{name}.{version}@sha256:")), "{reference}");
    assert!(build["log"].as_str().unwrap().contains("done:"), "{build:#}");
    // skopeo takes a tag or a digest, not both.
    let by_digest = format!("{target}@{}", build["digest"].as_str().unwrap());
    let inspected = build_common::skopeo_inspect(&by_digest, None);
    assert_eq!(inspected["Digest"], build["digest"], "{inspected:#}");
    let bento = server.http().get(&format!("/api/v1/bento_repositories/{name}/bentos/{version}")).json();
    assert_eq!(bento["image_build_status"], "success");

    // Again: the tag exists, nothing is built or pushed.
    let again = server.http().post(&path, &json!({}));
    let again = wait_build(&server, again.json()["uid"].as_str().unwrap());
    assert_eq!(again["status"], "success");
    assert_eq!(again["report"]["already_built"], true, "{again:#}");
    assert_eq!(again["digest"], build["digest"]);
    let list = server.http().get(&path).json();
    assert_eq!(list["total"], 2);
}

#[test]
fn builds_are_refused_when_no_registry_is_configured() {
    let server = Server::start(Backend::SqliteLocal);
    let iris = iris_home();
    let client = Bentoml::with_home_from(&server.url, &server.token, iris.home.path());
    client.ok(&["push", &iris.bento]);
    let (name, version) = iris.bento.split_once(':').unwrap();
    let r = server.http().post(&format!("/api/v1/bento_repositories/{name}/bentos/{version}/image_builds"), &json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("--image-registry"));
}
