//! Deployments: names and hosts, on SQLite and PostgreSQL.

mod common;

use common::{each_backend, org_with_admin};
use yatai_store::{ExternalDeployment, Imported, Kind, NewDeployment, NewTarget, NewVersion, Store, StoreError};

/// Creates `name` in namespace `yatai` of the org's `local` cluster, with
/// the host key the local runtime uses.
async fn create(store: &Store, org_uid: &str, user_uid: &str, name: &str, port: u16) -> yatai_store::Result<()> {
    let cluster = store.ensure_cluster(org_uid, "local", "local", "").await?;
    let (repo, _) = store.create_repository(org_uid, Kind::Bento, "svc", "", user_uid).await?;
    let version = NewVersion {
        version: "v1",
        description: "",
        manifest: "{}",
        labels: "[]",
        build_at: None,
        creator_uid: user_uid,
        model_refs: &[],
    };
    let (bento, _) = store.create_version(&repo, version).await?;
    let host = format!("{name}-yatai");
    store
        .create_deployment(NewDeployment {
            org_uid,
            cluster_uid: &cluster.uid,
            namespace: "yatai",
            name,
            description: "",
            labels: "[]",
            creator_uid: user_uid,
            endpoint_port: Some(port),
            host: &host,
            targets: &[NewTarget { name: "main", bento_uid: &bento.uid, config: "{}" }],
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_taken_name_is_reported_as_such_and_a_taken_host_as_another_organizations() {
    each_backend(|store| async move {
        let (a, admin_a) = org_with_admin(&store, "org-a").await;
        let (b, admin_b) = org_with_admin(&store, "org-b").await;
        create(&store, &a.uid, &admin_a.uid, "shared", 40001).await.expect("first");
        match create(&store, &a.uid, &admin_a.uid, "shared", 40002).await {
            Err(StoreError::Conflict(msg)) => assert!(msg.contains("already exists"), "{msg}"),
            other => panic!("expected a name conflict, got {other:?}"),
        }
        match create(&store, &b.uid, &admin_b.uid, "shared", 40003).await {
            Err(StoreError::Conflict(msg)) => {
                assert!(msg.contains("host \"shared-yatai\""), "{msg}");
                assert!(!msg.contains("org-a"), "another organization is never named: {msg}");
            }
            other => panic!("expected a host conflict, got {other:?}"),
        }
        create(&store, &b.uid, &admin_b.uid, "other", 40004).await.expect("a free host");
    })
    .await;
}

#[tokio::test]
async fn only_the_active_revision_counts_as_running_a_bento() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        create(&store, &org.uid, &admin.uid, "web", 40011).await.expect("deployment");
        let repo = store.get_repository(&org.uid, Kind::Bento, "svc").await.unwrap().unwrap();
        let v1 = store.get_version(&org.uid, Kind::Bento, "svc", "v1").await.unwrap().unwrap();
        let version = |v| NewVersion {
            version: v,
            description: "",
            manifest: "{}",
            labels: "[]",
            build_at: None,
            creator_uid: &admin.uid,
            model_refs: &[],
        };
        let (v2, _) = store.create_version(&repo, version("v2")).await.unwrap();
        let dep = store.find_deployments_by_name(&org.uid, "web").await.unwrap().remove(0);

        let uses = store.deployment_uses(&repo.uid, None).await.unwrap();
        assert_eq!(
            uses.iter().map(|u| (u.name.as_str(), u.version.as_str(), u.cluster_name.as_str())).collect::<Vec<_>>(),
            vec![("web", "v1", "local")]
        );
        assert!(store.deployment_uses(&repo.uid, Some(&v2.uid)).await.unwrap().is_empty());
        assert_eq!(
            store.active_bentos(&[dep.uid.as_str()]).await.unwrap(),
            vec![(dep.uid.clone(), "svc".to_string(), "v1".to_string())]
        );
        match store.delete_version(&v1).await {
            Err(StoreError::Conflict(msg)) => assert!(msg.contains("yatai/web"), "{msg}"),
            other => panic!("a running bento must not be deleted, got {other:?}"),
        }

        // A new revision moves the deployment to v2: v1 is free again.
        store
            .add_revision(&dep.uid, &admin.uid, None, &[NewTarget { name: "main", bento_uid: &v2.uid, config: "{}" }])
            .await
            .unwrap();
        assert_eq!(store.active_bentos(&[dep.uid.as_str()]).await.unwrap()[0].2, "v2");
        assert!(store.deployment_uses(&repo.uid, Some(&v1.uid)).await.unwrap().is_empty());
        assert_eq!(store.deployment_uses(&repo.uid, Some(&v2.uid)).await.unwrap().len(), 1);
        store.delete_version(&v1).await.expect("no longer running");
        assert!(matches!(store.delete_version(&v2).await, Err(StoreError::Conflict(_))));
    })
    .await;
}

#[tokio::test]
async fn an_external_deployment_is_imported_revised_when_it_changes_and_never_over_a_yatai_one() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        create(&store, &org.uid, &admin.uid, "mine", 40021).await.expect("a yatai deployment");
        let cluster = store.ensure_cluster(&org.uid, "local", "local", "").await.unwrap();
        let external = |name, bento, config| ExternalDeployment {
            org_uid: &org.uid,
            cluster_uid: &cluster.uid,
            namespace: "yatai",
            name,
            bento_uid: None,
            bento,
            config,
        };
        let Imported::New(d) = store.import_external_deployment(external("gitops", "iris:v1", "{}")).await.unwrap()
        else {
            panic!("expected a new row")
        };
        assert!(d.is_external());
        assert_eq!((d.creator_uid.as_deref(), d.host.as_deref()), (None, None));
        assert_eq!(d.external_bento.as_deref(), Some("iris:v1"));
        let (rev, targets) = store.active_revision(&d.uid).await.unwrap().unwrap();
        assert_eq!((rev.creator_uid.as_deref(), targets[0].bento_uid.as_str()), (None, ""));

        // The same again: nothing new; another bento or config: a new revision.
        let again = store.import_external_deployment(external("gitops", "iris:v1", "{}")).await.unwrap();
        assert!(matches!(again, Imported::Unchanged(_)), "{again:?}");
        let changed = store.import_external_deployment(external("gitops", "iris:v2", "{}")).await.unwrap();
        assert!(matches!(&changed, Imported::Revised(d) if d.external_bento.as_deref() == Some("iris:v2")));
        let changed = store.import_external_deployment(external("gitops", "iris:v2", r#"{"envs":[]}"#)).await.unwrap();
        assert!(matches!(changed, Imported::Revised(_)), "{changed:?}");
        assert_eq!(store.list_revisions(&d.uid).await.unwrap().len(), 3);

        // A yatai deployment of that name is never taken over.
        let taken = store.import_external_deployment(external("mine", "iris:v1", "{}")).await.unwrap();
        assert!(matches!(taken, Imported::Taken), "{taken:?}");
        let mine = store.find_deployments_by_name(&org.uid, "mine").await.unwrap().remove(0);
        assert!(!mine.is_external());

        let listed: Vec<String> =
            store.external_deployments(&cluster.uid).await.unwrap().into_iter().map(|d| d.name).collect();
        assert_eq!(listed, ["gitops"]);
        store.delete_deployment(&d.uid).await.unwrap();
        assert!(store.external_deployments(&cluster.uid).await.unwrap().is_empty());
    })
    .await;
}
