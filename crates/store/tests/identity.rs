//! Organizations, users, members and API tokens, on SQLite and PostgreSQL.

mod common;

use common::{each_backend, org_with_admin};
use yatai_store::{MemberRole, NewSession, NewToken, StoreError, Timestamp};

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
async fn removing_a_member_takes_their_tokens_and_sessions_in_that_org_only() {
    each_backend(|store| async move {
        let (acme, admin) = org_with_admin(&store, "acme").await;
        let (beta, _) = org_with_admin(&store, "beta").await;
        let dev = store.create_user("dev", "dev@acme.example", Some("pw-hash"), false).await.unwrap();
        store.set_member(&acme.uid, &dev.uid, MemberRole::Developer).await.unwrap();
        store.set_member(&beta.uid, &dev.uid, MemberRole::Guest).await.unwrap();
        let scopes = vec!["api".to_string()];
        for (org_uid, hash) in [(&acme.uid, "dev-acme"), (&beta.uid, "dev-beta")] {
            store
                .create_token(NewToken {
                    org_uid,
                    user_uid: &dev.uid,
                    name: "t",
                    description: "",
                    token_hash: hash,
                    token_hint: "",
                    scopes: &scopes,
                    expires_at: None,
                })
                .await
                .unwrap();
        }
        let exp = Timestamp(Timestamp::now().0 + 3_600_000_000);
        for (id_hash, org_uid) in [("s-acme", &acme.uid), ("s-beta", &beta.uid)] {
            store
                .create_session(NewSession {
                    id_hash,
                    user_uid: &dev.uid,
                    org_uid,
                    expires_at: exp,
                    user_agent: "",
                    client_addr: "",
                })
                .await
                .unwrap();
        }

        let members = store.list_members(&acme.uid).await.unwrap();
        let row = members.iter().find(|m| m.uid == dev.uid).expect("listed");
        assert_eq!((row.role(), row.token_count, row.has_password), (MemberRole::Developer, 1, 1));
        let orgs: Vec<(String, MemberRole)> =
            store.user_orgs(&dev.uid).await.unwrap().into_iter().map(|(o, r)| (o.name, r)).collect();
        assert_eq!(orgs, vec![("acme".to_string(), MemberRole::Developer), ("beta".to_string(), MemberRole::Guest)]);

        assert!(store.remove_member(&acme.uid, &dev.uid).await.unwrap());
        assert!(!store.remove_member(&acme.uid, &dev.uid).await.unwrap(), "already gone");
        assert_eq!(store.member_role(&acme.uid, &dev.uid).await.unwrap(), None);
        assert!(store.find_token_identity("dev-acme").await.unwrap().is_none());
        assert!(store.list_tokens(&acme.uid, Some(&dev.uid), None).await.unwrap().is_empty(), "token row deleted");
        let now = Timestamp::now();
        assert!(store.find_session("s-acme", now).await.unwrap().is_none());
        // Their membership, token and session elsewhere are untouched.
        assert!(store.find_token_identity("dev-beta").await.unwrap().is_some());
        assert!(store.find_session("s-beta", now).await.unwrap().is_some());
        assert_eq!(store.list_members(&acme.uid).await.unwrap().len(), 1);
        assert_eq!(store.list_members(&acme.uid).await.unwrap()[0].uid, admin.uid);
    })
    .await;
}

/// The dashboard asks `count_org_admins` first for a friendly message, so
/// that count must follow every role change and removal.
#[tokio::test]
async fn the_admin_count_follows_role_changes_and_removals() {
    each_backend(|store| async move {
        let (acme, admin) = org_with_admin(&store, "acme").await;
        let (beta, _) = org_with_admin(&store, "beta").await;
        let second = store.create_user("second", "", None, false).await.unwrap();
        assert_eq!(store.count_org_admins(&acme.uid).await.unwrap(), 1);
        store.set_member(&acme.uid, &second.uid, MemberRole::Developer).await.unwrap();
        assert_eq!(store.count_org_admins(&acme.uid).await.unwrap(), 1, "developers are not admins");
        store.set_member(&acme.uid, &second.uid, MemberRole::Admin).await.unwrap();
        store.set_member(&beta.uid, &second.uid, MemberRole::Admin).await.unwrap();
        assert_eq!(store.count_org_admins(&acme.uid).await.unwrap(), 2);
        assert!(store.remove_member(&acme.uid, &admin.uid).await.unwrap());
        assert_eq!(store.count_org_admins(&acme.uid).await.unwrap(), 1);
        assert_eq!(store.count_org_admins(&beta.uid).await.unwrap(), 2, "per organization");
    })
    .await;
}

#[tokio::test]
async fn first_run_setup_completes_once() {
    each_backend(|store| async move {
        let (_, admin) = org_with_admin(&store, "acme").await;
        assert!(store.setup_pending().await.unwrap());
        store.complete_setup(&admin.uid, "root", "root@acme.example", "pw").await.unwrap();
        assert!(!store.setup_pending().await.unwrap());
        let user = store.get_user(&admin.uid).await.unwrap().unwrap();
        assert_eq!((user.name.as_str(), user.password_hash.as_deref()), ("root", Some("pw")));
        assert!(matches!(
            store.complete_setup(&admin.uid, "again", "x@y.z", "pw2").await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.get_user(&admin.uid).await.unwrap().unwrap().name, "root");
        let found: Vec<String> =
            store.find_login_candidates("ROOT@acme.example").await.unwrap().into_iter().map(|u| u.uid).collect();
        assert_eq!(found, vec![admin.uid.clone()], "email sign-in ignores case");
        assert!(store.email_taken("Root@Acme.Example", None).await.unwrap());
        assert!(!store.email_taken("root@acme.example", Some(&admin.uid)).await.unwrap());
    })
    .await;
}

/// The store itself refuses to demote or remove the last admin, so two
/// admins doing it to each other at once cannot leave the organization with
/// none: exactly one of them succeeds.
#[tokio::test]
async fn concurrent_demotions_or_removals_of_the_last_two_admins_leave_one() {
    each_backend(|store| async move {
        for (round, remove) in [(0, false), (1, true), (2, false), (3, true)] {
            let (org, first) = org_with_admin(&store, &format!("race{round}")).await;
            let second = store.create_user(&format!("second{round}"), "", None, false).await.unwrap();
            store.set_member(&org.uid, &second.uid, MemberRole::Admin).await.unwrap();
            let step = |user: String| {
                let (store, org) = (store.clone(), org.uid.clone());
                tokio::spawn(async move {
                    if remove {
                        store.remove_member(&org, &user).await.map(|_| ())
                    } else {
                        store.set_member(&org, &user, MemberRole::Developer).await
                    }
                })
            };
            let (a, b) = (step(first.uid.clone()), step(second.uid.clone()));
            let results = [a.await.unwrap(), b.await.unwrap()];
            let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
            assert_eq!(refused.len(), 1, "remove={remove}: {results:?}");
            assert!(matches!(refused[0], StoreError::Conflict(m) if m.contains("at least one admin")), "{refused:?}");
            assert_eq!(store.count_org_admins(&org.uid).await.unwrap(), 1, "remove={remove}");
        }
    })
    .await;
}

#[tokio::test]
async fn the_last_admin_can_be_neither_demoted_nor_removed_but_another_can() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        for attempt in [
            store.set_member(&org.uid, &admin.uid, MemberRole::Guest).await,
            store.remove_member(&org.uid, &admin.uid).await.map(|_| ()),
        ] {
            assert!(matches!(attempt, Err(StoreError::Conflict(_))), "{attempt:?}");
        }
        assert_eq!(store.member_role(&org.uid, &admin.uid).await.unwrap(), Some(MemberRole::Admin));
        // Re-granting admin to the last admin is no demotion.
        store.set_member(&org.uid, &admin.uid, MemberRole::Admin).await.unwrap();
        let dev = store.create_user("dev", "", None, false).await.unwrap();
        store.set_member(&org.uid, &dev.uid, MemberRole::Developer).await.unwrap();
        store.set_member(&org.uid, &dev.uid, MemberRole::Guest).await.unwrap();
        assert!(store.remove_member(&org.uid, &dev.uid).await.unwrap());
    })
    .await;
}

/// `%` and `_` in a token search match themselves, as in the other searches.
#[tokio::test]
async fn token_search_treats_like_wildcards_literally() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let scopes = vec!["api".to_string()];
        for name in ["ci_deploy", "cixdeploy", "100%", "1000"] {
            store
                .create_token(NewToken {
                    org_uid: &org.uid,
                    user_uid: &admin.uid,
                    name,
                    description: "",
                    token_hash: &format!("hash-{name}"),
                    token_hint: "yatai_x…",
                    scopes: &scopes,
                    expires_at: None,
                })
                .await
                .unwrap();
        }
        let names = |search: &'static str| {
            let store = store.clone();
            let org = org.uid.clone();
            async move {
                let mut v: Vec<String> =
                    store.list_tokens(&org, None, Some(search)).await.unwrap().into_iter().map(|t| t.name).collect();
                v.sort();
                v
            }
        };
        assert_eq!(names("ci_").await, ["ci_deploy"]);
        assert_eq!(names("0%").await, ["100%"]);
        assert_eq!(names("%").await, ["100%"]);
        assert_eq!(names("deploy").await, ["ci_deploy", "cixdeploy"]);
    })
    .await;
}
