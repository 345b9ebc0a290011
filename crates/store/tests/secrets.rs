//! Secrets on SQLite and PostgreSQL: scoped to an organization, and kept
//! while a deployment's active revision names them.

mod common;

use common::{each_backend, org_with_admin};
use yatai_store::{Kind, NewDeployment, NewSecret, NewTarget, NewVersion, SecretChange, Store, StoreError};

fn secret<'a>(uid: &'a str, org_uid: &'a str, name: &'a str) -> NewSecret<'a> {
    NewSecret {
        uid,
        org_uid,
        name,
        description: "",
        kind: "env",
        stage: "runtime",
        path: None,
        items: r#"[{"key":"API_KEY","sub_path":null}]"#,
        sealed: "xc20p1:sealed",
        creator_uid: None,
    }
}

/// A deployment whose only revision runs with `config`; returns its uid.
async fn deployment(store: &Store, org_uid: &str, user_uid: &str, name: &str, config: &str) -> String {
    let cluster = store.ensure_cluster(org_uid, "local", "local", "").await.unwrap();
    let (repo, _) = store.create_repository(org_uid, Kind::Bento, "svc", "", user_uid).await.unwrap();
    let version = NewVersion {
        version: "v1",
        description: "",
        manifest: "{}",
        labels: "[]",
        build_at: None,
        creator_uid: user_uid,
        model_refs: &[],
    };
    let (bento, _) = store.create_version(&repo, version).await.unwrap();
    let host = format!("{name}-yatai");
    let d = store
        .create_deployment(NewDeployment {
            org_uid,
            cluster_uid: &cluster.uid,
            namespace: "yatai",
            name,
            description: "",
            labels: "[]",
            creator_uid: user_uid,
            endpoint_port: None,
            host: &host,
            targets: &[NewTarget { name: "main", bento_uid: &bento.uid, config }],
        })
        .await
        .unwrap();
    d.uid
}

#[tokio::test]
async fn a_secret_named_by_an_active_revision_is_kept_until_no_revision_names_it() {
    each_backend(|store| async move {
        let (a, admin) = org_with_admin(&store, "org-a").await;
        let (b, _) = org_with_admin(&store, "org-b").await;
        store.create_secret(secret("s-a", &a.uid, "db")).await.unwrap();
        // The same name in another organization is another secret.
        store.create_secret(secret("s-b", &b.uid, "db")).await.unwrap();
        assert!(matches!(store.create_secret(secret("s-c", &a.uid, "db")).await, Err(StoreError::Conflict(_))));
        let (page, total) = store.list_secrets(&a.uid, Some("d"), 0, 10).await.unwrap();
        assert_eq!((page.len(), total, page[0].uid.as_str()), (1, 1, "s-a"));
        assert_eq!(store.list_secrets(&a.uid, Some("_"), 0, 10).await.unwrap().1, 0, "LIKE wildcards are literal");

        let d = deployment(&store, &a.uid, &admin.uid, "api", r#"{"secrets":["db"]}"#).await;
        match store.delete_secret(&a.uid, "s-a").await {
            Err(StoreError::Conflict(m)) => assert!(m.contains("yatai/api"), "{m}"),
            other => panic!("expected a conflict naming the deployment, got {other:?}"),
        }
        // Another organization's secret of the same name is not in use.
        assert!(store.deployments_using_secret(&b.uid, "db").await.unwrap().is_empty());
        store.delete_secret(&b.uid, "s-b").await.unwrap();

        let change = SecretChange {
            description: None,
            kind: "mountfile",
            stage: "all",
            path: Some("$BENTOML_HOME"),
            items: "[]",
            sealed: "xc20p1:other",
            if_updated_at: None,
        };
        store.update_secret(&a.uid, "s-a", change).await.unwrap();
        assert_eq!(store.secret_sealed("s-a").await.unwrap().as_deref(), Some("xc20p1:other"));

        // A new revision without it frees it (the old revision is history).
        let bento = store.active_revision(&d).await.unwrap().unwrap().1[0].bento_uid.clone();
        let targets = [NewTarget { name: "main", bento_uid: &bento, config: r#"{"secrets":null}"# }];
        store.add_revision(&d, &admin.uid, None, &targets).await.unwrap();
        assert!(store.deployments_using_secret(&a.uid, "db").await.unwrap().is_empty());
        store.delete_secret(&a.uid, "s-a").await.unwrap();
        assert!(store.get_secret(&a.uid, "db").await.unwrap().is_none());
        assert!(matches!(store.delete_secret(&a.uid, "s-a").await, Err(StoreError::NotFound(_))));
    })
    .await;
}
