//! The store's test harness: every test runs against a fresh SQLite file and,
//! when `YATAI_TEST_PG_URL` names a PostgreSQL server (as `scripts/test`
//! provides), against a fresh PostgreSQL database too.
//!
//! Without PostgreSQL the SQLite half still runs, so `cargo test -p
//! yatai-store` gives a signal in seconds on any machine; under CI (`CI` set)
//! a missing PostgreSQL is an error rather than a silent skip.

#![allow(dead_code)]

use std::future::Future;

use sqlx::Connection;
use yatai_store::{MemberRole, OrgRow, Store, UserRow};

/// One backend under test: the store and what keeps its database alive.
pub struct Backend {
    pub name: &'static str,
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("yatai.db").display());
    let store = Store::connect(&url).await.expect("SQLite store");
    Backend { name: "sqlite", store, _dir: Some(dir) }
}

/// The PostgreSQL admin URL, if the environment offers one.
pub fn pg_admin_url() -> Option<String> {
    match std::env::var("YATAI_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "YATAI_TEST_PG_URL is not set under CI: run the suite with scripts/test"
            );
            eprintln!("YATAI_TEST_PG_URL is not set: PostgreSQL half skipped (scripts/test sets it)");
            None
        }
    }
}

/// A fresh, empty PostgreSQL database on the test server; returns its URL.
pub async fn fresh_pg_database(admin_url: &str) -> String {
    let name = format!("store_test_{}", yatai_store::new_uid());
    let mut admin = sqlx::PgConnection::connect(admin_url).await.expect("connect to PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    admin.close().await.ok();
    let (base, _) = admin_url.rsplit_once('/').expect("URL with a database");
    format!("{base}/{name}")
}

pub async fn postgres() -> Option<Backend> {
    let admin = pg_admin_url()?;
    let url = fresh_pg_database(&admin).await;
    let store = Store::connect(&url).await.expect("PostgreSQL store");
    Some(Backend { name: "postgres", store, _dir: None })
}

/// Every backend available here.
pub async fn backends() -> Vec<Backend> {
    let mut all = vec![sqlite().await];
    all.extend(postgres().await);
    all
}

/// Runs `test` once per backend, naming the backend when it fails.
pub async fn each_backend<F, Fut>(test: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    for b in backends().await {
        eprintln!("-- on {}", b.name);
        test(b.store.clone()).await;
        b.store.close().await;
    }
}

/// An organization with one admin member.
pub async fn org_with_admin(store: &Store, org: &str) -> (OrgRow, UserRow) {
    let org = store.create_org(org, "").await.expect("create org");
    let user = store
        .create_user(&format!("{}-admin", org.name), &format!("admin@{}.example", org.name), None, false)
        .await
        .expect("create user");
    store.set_member(&org.uid, &user.uid, MemberRole::Admin).await.expect("add member");
    (org, user)
}
