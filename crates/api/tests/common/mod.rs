//! The in-process harness: the router on a fresh SQLite store and a local
//! blob directory, answering through `tower::oneshot` (no server, no port).

#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, request};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use yatai_api::{AppState, auth};
use yatai_blob::BlobStore;
use yatai_store::{MemberRole, NewToken, Store};

pub const SIGNING_KEY: &[u8] = b"in-process test key";

pub struct Api {
    pub router: Router,
    pub store: Store,
    _dir: tempfile::TempDir,
}

/// A fresh SQLite store, before the server is built on it (e.g. to create a
/// cluster whose uid a target is registered by).
pub async fn open_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("yatai.db").display())).await.expect("store");
    (dir, store)
}

impl Api {
    /// The API with no deploy targets.
    pub async fn new() -> Api {
        let (dir, store) = open_store().await;
        Api::with_state(dir, store, |store, blobs| AppState::new(store, blobs, SIGNING_KEY, Default::default()))
    }

    /// The API on `store` with the state `make` builds from it.
    pub fn with_state(dir: tempfile::TempDir, store: Store, make: impl FnOnce(Store, BlobStore) -> AppState) -> Api {
        let blobs = BlobStore::local(dir.path().join("artifacts"), false).expect("blobs");
        let (router, _) = yatai_api::app(make(store.clone(), blobs));
        Api { router, store, _dir: dir }
    }

    /// A member of `org` (created if new) with `role`, and an API token of
    /// theirs with `scopes`.
    pub async fn member(&self, org: &str, role: MemberRole, scopes: &[&str]) -> String {
        let org = match self.store.get_org_by_name(org).await.expect("find org") {
            Some(o) => o,
            None => self.store.create_org(org, "").await.expect("org"),
        };
        let user = self
            .store
            .create_user(
                &format!("{}-{}", org.name, yatai_store::new_uid()),
                &format!("{}@{}.example", yatai_store::new_uid(), org.name),
                None,
                false,
            )
            .await
            .expect("user");
        self.store.set_member(&org.uid, &user.uid, role).await.expect("member");
        let secret = auth::generate_token();
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        self.store
            .create_token(NewToken {
                org_uid: &org.uid,
                user_uid: &user.uid,
                name: "test",
                description: "",
                token_hash: &auth::hash_token(&secret.secret),
                token_hint: "yatai_…",
                scopes: &scopes,
                expires_at: None,
            })
            .await
            .expect("token");
        secret.secret
    }

    /// Sends `req` with `token` (if any) and `body`; the status and the body
    /// as JSON (or as a JSON string when it is not JSON).
    pub async fn send(&self, req: request::Builder, token: Option<&str>, body: Body) -> (StatusCode, Value) {
        let req = match token {
            Some(t) => req.header(auth::TOKEN_HEADER, t),
            None => req,
        };
        let res = self.router.clone().oneshot(req.body(body).expect("request")).await.expect("infallible");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    /// `method uri` with a JSON body, if any.
    pub async fn call(&self, method: &str, uri: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let req = Request::builder().method(method).uri(uri);
        match body {
            Some(b) => {
                self.send(req.header("content-type", "application/json"), token, Body::from(b.to_string())).await
            }
            None => self.send(req, token, Body::empty()).await,
        }
    }

    /// [`Api::call`] with `token`.
    pub async fn call_as(&self, method: &str, uri: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, uri, Some(token), body).await
    }
}
