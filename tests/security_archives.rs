//! Hostile archives against the real server. A bento or model archive is extracted by the
//! server (deployment preflight, image-build preflight, model archives at rollout); links the
//! archive itself creates must never carry a write — or a hard link — outside the extraction
//! directory.
//!
//! The attack: `a -> .` makes `a/a/a/a/up` sit at the top of the extraction directory although
//! it looks four levels deep, so its target `../../../..` (lexically inside) is really four levels
//! up: extraction happens in `DATA/runtime/artifacts/<kind>/.<digest>.partial-PID/`, so `up` is
//! the server's data directory.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (kind, name, link, data): (_, &str, &str, &[u8]) = match e {
            Entry::File(p, data) => (tar::EntryType::Regular, p, "", data),
            Entry::Symlink(p, t) => (tar::EntryType::Symlink, p, t, b""),
            Entry::HardLink(p, t) => (tar::EntryType::Link, p, t, b""),
        };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        // Raw names: the tar crate's setters refuse `..`, which hostile archives hold.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// `top` (`bento.yaml` or `model.yaml`), then the chain, then writes through it: a new file in
/// the data directory and an existing one overwritten.
fn chain_that_writes(top: (&str, &[u8])) -> Vec<u8> {
    tar_of(&[
        Entry::File(top.0, top.1),
        Entry::Symlink("a", "."),
        Entry::Symlink("a/a/a/a/up", "../../../.."),
        Entry::File("up/ESCAPED.txt", b"pwned"),
        Entry::File("up/canary.txt", b"pwned"),
    ])
}

/// The same chain, then a hard link that would pull the data directory's file into the tree.
fn chain_that_links(top: (&str, &[u8])) -> Vec<u8> {
    tar_of(&[
        Entry::File(top.0, top.1),
        Entry::Symlink("a", "."),
        Entry::Symlink("a/a/a/a/up", "../../../.."),
        Entry::HardLink("stolen.txt", "up/canary.txt"),
    ])
}

const BENTO_YAML: (&str, &[u8]) = ("bento.yaml", b"service: service:Evil\n");
const MODEL_YAML: (&str, &[u8]) = ("model.yaml", b"name: evil\n");

/// A canary in the data directory the attack reaches.
fn plant_canary(server: &Server) -> PathBuf {
    let canary = server.data_dir().join("canary.txt");
    std::fs::write(&canary, b"untouched").unwrap();
    canary
}

/// Files anywhere below `dir`, not following links.
fn files_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            files_named(&p, name, out);
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
}

fn assert_nothing_escaped(server: &Server, canary: &Path, what: &str) {
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::read(canary).unwrap(), b"untouched", "{what}: the data directory's file was overwritten");
    assert_eq!(std::fs::metadata(canary).unwrap().nlink(), 1, "{what}: the data directory's file was hard-linked");
    for name in ["ESCAPED.txt", "stolen.txt"] {
        let mut found = Vec::new();
        files_named(server.scratch.path(), name, &mut found);
        assert!(found.is_empty(), "{what}: {found:?}");
    }
}

fn create_version(http: &Http, kind: &str, name: &str, version: &str, manifest: Value, archive: &[u8]) {
    let r = http.post(&format!("/api/v1/{kind}_repositories"), &json!({"name": name, "description": ""}));
    assert!(r.status == 200 || r.status == 409, "{}", r.text());
    let base = format!("/api/v1/{kind}_repositories/{name}/{kind}s");
    let r = http.post(&base, &json!({"version": version, "description": "", "manifest": manifest}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http.patch(&format!("{base}/{version}/start_upload"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http.put_bytes(&format!("{base}/{version}/upload"), archive);
    assert_eq!(r.status, 200, "{}", r.text());
}

fn bento_manifest(models: &[&str]) -> Value {
    json!({"service": "service:Evil", "bentoml_version": "1.4.40", "size_bytes": 1, "entry_service": "Evil",
           "models": models})
}

fn deployment(name: &str, bento: &str) -> Value {
    json!({"name": name, "bento": bento, "access_authorization": false, "envs": null, "labels": null, "secrets": null,
           "services": {"Evil": {"scaling": {"min_replicas": 1, "max_replicas": 1}}}, "canary": null, "dev": false})
}

fn assert_refused(r: &Response, what: &str) {
    assert_eq!(r.status, 400, "{what}: {}", r.text());
    let msg = r.json()["message"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("unsafe path") && msg.contains("a/a/a/a/up"), "{what}: {msg}");
}

#[test]
fn link_chains_in_bento_archives_are_refused_by_deployments_and_image_builds() {
    // An unreachable registry: the image-build preflight extracts the bento before any push.
    let server = Server::start_with(ServerOptions::new(Backend::SqliteLocal).args(&[
        "--image-registry",
        "127.0.0.1:9/bentos",
        "--image-plain-http",
    ]));
    let admin = server.http();
    let canary = plant_canary(&server);
    // A push-only token is enough to reach the image builder.
    let created = admin.post(
        "/api/v1/api_tokens",
        &json!({"name": "pusher", "description": "", "scopes": ["write_organization"], "expired_at": null}),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    let pusher = admin.with_token(created.json()["token"].as_str().unwrap());

    for (version, archive) in [("writes", chain_that_writes(BENTO_YAML)), ("links", chain_that_links(BENTO_YAML))] {
        create_version(&pusher, "bento", "evil", version, bento_manifest(&[]), &archive);
        let tag = format!("evil:{version}");
        let r = admin.post("/api/v2/deployments", &deployment(&format!("evil-{version}"), &tag));
        assert_refused(&r, &format!("deployment of {tag}"));
        assert_nothing_escaped(&server, &canary, &format!("deployment of {tag}"));

        let builds = format!("/api/v1/bento_repositories/evil/bentos/{version}/image_builds");
        let r = pusher.post(&builds, &json!({"force": false}));
        assert_refused(&r, &format!("image build of {tag}"));
        assert_nothing_escaped(&server, &canary, &format!("image build of {tag}"));
        assert_eq!(admin.get(&builds).json()["total"], 0, "a refused build was recorded");
    }
    assert_eq!(admin.get("/api/v2/deployments").json()["total"], 0, "a refused request created a deployment");
}

#[test]
fn link_chains_in_model_archives_fail_the_rollout_and_write_nothing() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    let canary = plant_canary(&server);
    for (version, archive) in [("writes", chain_that_writes(MODEL_YAML)), ("links", chain_that_links(MODEL_YAML))] {
        create_version(&http, "model", "evil", version, model_manifest(), &archive);
        // model.yaml names `evil`: the server checks an archive against its tag.
        let model = format!("evil:{version}");
        // The bento itself is clean: only the model's archive is hostile, and it is extracted
        // when the deployment rolls out.
        create_version(
            &http,
            "bento",
            "carrier",
            version,
            bento_manifest(&[&model]),
            &tar_of(&[Entry::File(BENTO_YAML.0, BENTO_YAML.1)]),
        );
        let name = format!("carrier-{version}");
        let r = http.post("/api/v2/deployments", &deployment(&name, &format!("carrier:{version}")));
        assert_eq!(r.status, 200, "{}", r.text());
        let mut last = Value::Null;
        wait_for(&format!("deployment {name} to fail"), Duration::from_secs(60), || {
            last = http.get(&format!("/api/v2/deployments/{name}")).json();
            (last["status"] == "failed").then_some(())
        });
        assert_nothing_escaped(&server, &canary, &format!("rollout with {model}"));
        let reason = last["status_message"].as_str().unwrap_or_default();
        assert!(reason.contains("unsafe path") && reason.contains("a/a/a/a/up"), "{last:#}");
    }
}

/// A bento's requirements.txt is installed by the server (as itself, into an environment shared
/// by every bento with the same text): one that names a local path would make uv read the
/// server's files into the build log its owner reads, or install what a relative path held in
/// whichever bento built the shared environment first. Such a bento fails its rollout with the
/// line named, and nothing of the named file shows anywhere.
#[test]
fn requirements_naming_local_paths_fail_the_rollout_without_reading_them() {
    let server = Server::start(Backend::SqliteLocal);
    let http = server.http();
    let secret = server.data_dir().join("private-notes.txt");
    std::fs::write(&secret, "root:TOPSECRET-HASH:19000:0:99999:7:::\n").unwrap();
    for (version, line) in
        [("abs", format!("-r {}", secret.display())), ("rel", "./wheels/evil-1.0-py3-none-any.whl".to_owned())]
    {
        let requirements = format!("bentoml==1.4.40\n{line}\n");
        let archive = tar_of(&[
            Entry::File(BENTO_YAML.0, BENTO_YAML.1),
            Entry::File("env/python/requirements.txt", requirements.as_bytes()),
        ]);
        create_version(&http, "bento", "reqs", version, bento_manifest(&[]), &archive);
        let name = format!("reqs-{version}");
        let r = http.post("/api/v2/deployments", &deployment(&name, &format!("reqs:{version}")));
        assert_eq!(r.status, 200, "{}", r.text());
        let mut last = Value::Null;
        wait_for(&format!("deployment {name} to fail"), Duration::from_secs(60), || {
            last = http.get(&format!("/api/v2/deployments/{name}")).json();
            (last["status"] == "failed").then_some(())
        });
        let reason = last["status_message"].as_str().unwrap_or_default();
        assert!(reason.contains("line 2 names a local path"), "{last:#}");
    }
    let logs = server.log_text();
    assert!(!logs.contains("TOPSECRET"), "the named file was read into the server's log");
    let events = http.get("/api/v1/events?count=100").text();
    assert!(!events.contains("TOPSECRET"), "the named file was read into the events");
}
