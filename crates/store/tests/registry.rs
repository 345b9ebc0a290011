//! Repositories and versions: creation races, lists, `latest`, references
//! between bentos and models, and isolation between organizations — on SQLite
//! and PostgreSQL.

mod common;

use common::{each_backend, org_with_admin};
use yatai_core::Tag;
use yatai_store::{Kind, ListQuery, NewVersion, RepoSort, RepositoryRow, Store, StoreError, VersionSort};

fn new_version<'a>(version: &'a str, creator: &'a str, refs: &'a [Tag]) -> NewVersion<'a> {
    NewVersion {
        version,
        description: "",
        manifest: "{}",
        labels: "[]",
        build_at: None,
        creator_uid: creator,
        model_refs: refs,
    }
}

async fn repo(store: &Store, org: &str, kind: Kind, name: &str, creator: &str) -> RepositoryRow {
    store.create_repository(org, kind, name, "", creator).await.expect("create repository").0
}

#[tokio::test]
async fn concurrent_creators_of_one_version_all_get_the_same_row() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let r = repo(&store, &org.uid, Kind::Model, "clf", &admin.uid).await;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (store, r, uid) = (store.clone(), r.clone(), admin.uid.clone());
                tokio::spawn(async move { store.create_version(&r, new_version("v1", &uid, &[])).await })
            })
            .collect();
        let mut uids = Vec::new();
        let mut inserted = 0;
        for t in tasks {
            let (row, new) = t.await.unwrap().expect("create_version");
            inserted += new as usize;
            uids.push(row.uid);
        }
        assert_eq!(inserted, 1, "exactly one creator inserts");
        uids.dedup();
        assert_eq!(uids.len(), 1, "every creator sees the same version");
    })
    .await;
}

#[tokio::test]
async fn versions_list_newest_first_in_pages_with_search() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let r = repo(&store, &org.uid, Kind::Bento, "svc", &admin.uid).await;
        for i in 0..25 {
            store.create_version(&r, new_version(&format!("v{i:02}"), &admin.uid, &[])).await.unwrap();
        }
        let page = |start, count| ListQuery { start, count, ..Default::default() };
        let (first, total) = store.list_versions(&org.uid, Kind::Bento, Some("svc"), &page(0, 10)).await.unwrap();
        assert_eq!(total, 25);
        assert_eq!(first.iter().map(|v| v.version.as_str()).collect::<Vec<_>>()[..3], ["v24", "v23", "v22"]);
        let (last, _) = store.list_versions(&org.uid, Kind::Bento, Some("svc"), &page(20, 10)).await.unwrap();
        assert_eq!(last.len(), 5);
        assert_eq!(last.last().unwrap().version, "v00");
        let q = ListQuery { start: 0, count: 100, search: Some("v1_".into()), ..Default::default() };
        let (found, n) = store.list_versions(&org.uid, Kind::Bento, None, &q).await.unwrap();
        assert_eq!(n, 0, "'_' is matched literally, not as a wildcard: {found:?}");
        let q = ListQuery { start: 0, count: 100, search: Some("v1".into()), ..Default::default() };
        let (found, _) = store.list_versions(&org.uid, Kind::Bento, None, &q).await.unwrap();
        assert_eq!(found.len(), 10, "v10..v19");
        // Models are a different kind: none listed.
        let (models, n) = store.list_versions(&org.uid, Kind::Model, None, &page(0, 10)).await.unwrap();
        assert!(models.is_empty() && n == 0);
    })
    .await;
}

#[tokio::test]
async fn latest_prefers_the_newest_uploaded_version_when_asked() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let r = repo(&store, &org.uid, Kind::Model, "clf", &admin.uid).await;
        store.create_version(&r, new_version("a", &admin.uid, &[])).await.unwrap();
        store.create_version(&r, new_version("b", &admin.uid, &[])).await.unwrap();
        let newest = store.latest_version(&org.uid, Kind::Model, "clf", false).await.unwrap().unwrap();
        assert_eq!(newest.version, "b");
        assert!(
            store.latest_version(&org.uid, Kind::Model, "clf", true).await.unwrap().is_none(),
            "nothing is uploaded yet"
        );
    })
    .await;
}

#[tokio::test]
async fn a_model_named_by_a_bento_cannot_be_deleted_and_the_error_names_the_bento() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let models = repo(&store, &org.uid, Kind::Model, "clf", &admin.uid).await;
        let (model, _) = store.create_version(&models, new_version("m1", &admin.uid, &[])).await.unwrap();
        let bentos = repo(&store, &org.uid, Kind::Bento, "svc", &admin.uid).await;
        let refs = [Tag::parse("clf:m1").unwrap()];
        let (bento, _) = store.create_version(&bentos, new_version("b1", &admin.uid, &refs)).await.unwrap();
        assert_eq!(store.model_referrers(&org.uid, "clf", "m1").await.unwrap(), ["svc:b1"]);
        match store.delete_version(&model).await {
            Err(StoreError::Conflict(msg)) => assert!(msg.contains("svc:b1"), "{msg}"),
            other => panic!("expected a conflict naming the bento, got {other:?}"),
        }
        match store.delete_repository(&models).await {
            Err(StoreError::Conflict(msg)) => assert!(msg.contains("svc:b1"), "{msg}"),
            other => panic!("expected a conflict naming the bento, got {other:?}"),
        }
        store.delete_version(&bento).await.expect("the bento itself can go");
        store.delete_version(&model).await.expect("then the model can go");
        assert!(store.get_version(&org.uid, Kind::Model, "clf", "m1").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn another_organizations_repositories_and_references_are_invisible() {
    each_backend(|store| async move {
        let (a, admin_a) = org_with_admin(&store, "org-a").await;
        let (b, admin_b) = org_with_admin(&store, "org-b").await;
        let ra = repo(&store, &a.uid, Kind::Model, "shared", &admin_a.uid).await;
        store.create_version(&ra, new_version("v1", &admin_a.uid, &[])).await.unwrap();
        assert!(store.get_repository(&b.uid, Kind::Model, "shared").await.unwrap().is_none());
        assert!(store.get_version(&b.uid, Kind::Model, "shared", "v1").await.unwrap().is_none());
        let all = ListQuery { start: 0, count: 100, ..Default::default() };
        assert_eq!(store.list_repositories(&b.uid, Kind::Model, &all).await.unwrap().1, 0);
        // B's bento naming "shared:v1" refers to B's model of that name, not A's:
        // A's model stays deletable.
        let rb = repo(&store, &b.uid, Kind::Bento, "svc", &admin_b.uid).await;
        let refs = [Tag::parse("shared:v1").unwrap()];
        store.create_version(&rb, new_version("b1", &admin_b.uid, &refs)).await.unwrap();
        assert!(store.model_referrers(&a.uid, "shared", "v1").await.unwrap().is_empty());
        let v = store.get_version(&a.uid, Kind::Model, "shared", "v1").await.unwrap().unwrap();
        store.delete_version(&v).await.expect("another org's bento does not pin A's model");
    })
    .await;
}

#[tokio::test]
async fn the_version_page_cursor_walks_every_version_once_and_a_prefix_finds_in_version_order() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let r = repo(&store, &org.uid, Kind::Bento, "svc", &admin.uid).await;
        for i in 0..12 {
            store.create_version(&r, new_version(&format!("v{i:02}"), &admin.uid, &[])).await.unwrap();
        }
        for sort in [VersionSort::Newest, VersionSort::Oldest] {
            let mut walked = Vec::new();
            let mut after = None;
            loop {
                let mut page = store.version_page(&r.uid, None, sort, after, 5).await.unwrap();
                let more = page.len() > 5;
                page.truncate(5);
                after = page.last().map(|v| v.seq);
                walked.extend(page.into_iter().map(|v| v.version));
                if !more {
                    break;
                }
            }
            let mut want: Vec<String> = (0..12).map(|i| format!("v{i:02}")).collect();
            if sort == VersionSort::Newest {
                want.reverse();
            }
            assert_eq!(walked, want, "{sort:?}");
        }
        let found = store.version_page(&r.uid, Some("v1"), VersionSort::Newest, None, 10).await.unwrap();
        assert_eq!(found.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(), ["v10", "v11"]);
        assert!(store.version_page(&r.uid, Some("v_"), VersionSort::Newest, None, 10).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn the_repository_page_searches_sorts_counts_and_shows_the_newest_version() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let (other, _) = org_with_admin(&store, "other").await;
        let b = repo(&store, &org.uid, Kind::Model, "beta", &admin.uid).await;
        let a = repo(&store, &org.uid, Kind::Model, "alpha", &admin.uid).await;
        repo(&store, &org.uid, Kind::Bento, "alpha-svc", &admin.uid).await;
        repo(&store, &other.uid, Kind::Model, "alpha", &admin.uid).await;
        store.create_version(&a, new_version("1", &admin.uid, &[])).await.unwrap();
        store.create_version(&b, new_version("1", &admin.uid, &[])).await.unwrap();
        store.create_version(&b, new_version("2", &admin.uid, &[])).await.unwrap();

        let names = |p: &yatai_store::RepositoryPage| p.items.iter().map(|(r, _)| r.name.clone()).collect::<Vec<_>>();
        let page = store.repository_page(&org.uid, Kind::Model, None, RepoSort::Name, 0, 10).await.unwrap();
        assert_eq!((names(&page), page.total), (vec!["alpha".to_string(), "beta".to_string()], 2));
        let (beta, newest) = &page.items[1];
        assert_eq!((beta.version_count, newest.as_ref().map(|v| v.version.as_str())), (2, Some("2")));
        // Most recently pushed to first: beta got the last version.
        let page = store.repository_page(&org.uid, Kind::Model, None, RepoSort::Updated, 0, 10).await.unwrap();
        assert_eq!(names(&page), ["beta", "alpha"]);
        let page = store.repository_page(&org.uid, Kind::Model, Some(" alp "), RepoSort::Name, 0, 10).await.unwrap();
        assert_eq!((names(&page), page.total), (vec!["alpha".to_string()], 1));
        let page = store.repository_page(&org.uid, Kind::Model, None, RepoSort::Name, 1, 1).await.unwrap();
        assert_eq!((names(&page), page.total), (vec!["beta".to_string()], 2), "offset paging keeps the total");
    })
    .await;
}
