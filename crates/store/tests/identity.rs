//! Organizations, users, members and API tokens, on SQLite and PostgreSQL.

mod common;

use common::{each_backend, org_with_admin};
use yatai_store::{MemberRole, NewToken, StoreError, Timestamp};

#[tokio::test]
async fn names_of_organizations_users_and_tokens_are_unique() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        assert!(matches!(store.create_org("acme", "").await, Err(StoreError::Conflict(_))));
        assert!(matches!(store.create_user("acme-admin", "x@y.z", None, false).await, Err(StoreError::Conflict(_))));
        let scopes = vec!["api".to_string()];
        let token = |hash: &'static str| NewToken {
            org_uid: &org.uid,
            user_uid: &admin.uid,
            name: "ci",
            description: "",
            token_hash: hash,
            token_hint: "yatai_x…",
            scopes: &scopes,
            expires_at: None,
        };
        store.create_token(token("h1")).await.expect("first token");
        match store.create_token(token("h2")).await {
            Err(StoreError::Conflict(msg)) => assert!(msg.contains("\"ci\""), "{msg}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_token_resolves_to_its_user_org_and_role_until_deleted() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let (other, _) = org_with_admin(&store, "other").await;
        let scopes = vec!["read_organization".to_string()];
        let expires = Timestamp::now().after(std::time::Duration::from_secs(3600));
        let row = store
            .create_token(NewToken {
                org_uid: &org.uid,
                user_uid: &admin.uid,
                name: "reader",
                description: "",
                token_hash: "hash-of-reader",
                token_hint: "yatai_r…",
                scopes: &scopes,
                expires_at: Some(expires),
            })
            .await
            .unwrap();
        assert_eq!(row.scope_list(), scopes);
        assert!(!row.is_expired(Timestamp::now()));
        assert!(row.is_expired(Timestamp(expires.0 + 1)));
        let id = store.find_token_identity("hash-of-reader").await.unwrap().expect("identity");
        assert_eq!(
            (id.user.uid.as_str(), id.org.uid.as_str(), id.role),
            (admin.uid.as_str(), org.uid.as_str(), MemberRole::Admin)
        );
        assert!(store.find_token_identity("hash-of-nothing").await.unwrap().is_none());
        // Another organization can neither see nor delete it.
        assert!(store.get_token(&other.uid, &row.uid).await.unwrap().is_none());
        assert!(store.delete_token(&other.uid, &row.uid).await.unwrap().is_none());
        assert!(store.find_token_identity("hash-of-reader").await.unwrap().is_some());
        store.delete_token(&org.uid, &row.uid).await.unwrap().expect("deleted by its org");
        assert!(store.find_token_identity("hash-of-reader").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn set_member_changes_the_role_of_an_existing_member() {
    each_backend(|store| async move {
        let (org, _) = org_with_admin(&store, "acme").await;
        let dev = store.create_user("dev", "dev@acme.example", None, false).await.unwrap();
        assert_eq!(store.member_role(&org.uid, &dev.uid).await.unwrap(), None);
        store.set_member(&org.uid, &dev.uid, MemberRole::Developer).await.unwrap();
        assert_eq!(store.member_role(&org.uid, &dev.uid).await.unwrap(), Some(MemberRole::Developer));
        store.set_member(&org.uid, &dev.uid, MemberRole::Guest).await.unwrap();
        assert_eq!(store.member_role(&org.uid, &dev.uid).await.unwrap(), Some(MemberRole::Guest));
    })
    .await;
}

#[tokio::test]
async fn settings_initialise_once_under_concurrent_callers() {
    each_backend(|store| async move {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.get_or_init_setting("k", &format!("value-{i}")).await.unwrap() })
            })
            .collect();
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        seen.dedup();
        assert_eq!(seen.len(), 1, "every caller sees the one stored value: {seen:?}");
    })
    .await;
}
