//! Invitations to an organization: replaced when re-sent, used once, refused
//! once expired — on SQLite and PostgreSQL.

mod common;

use common::{each_backend, org_with_admin};
use yatai_store::{Accepted, InvitationRow, MemberRole, NewInvitation, Store, StoreError, Timestamp};

const HOUR: i64 = 3_600_000_000;

async fn invite(
    store: &Store,
    org_uid: &str,
    inviter_uid: &str,
    invitee: &str,
    role: MemberRole,
    token_hash: &str,
    expires_at: Timestamp,
) -> InvitationRow {
    store
        .create_invitation(NewInvitation { org_uid, invitee, role, token_hash, inviter_uid, expires_at })
        .await
        .expect("create invitation")
}

#[tokio::test]
async fn an_invitation_is_found_by_its_secret_until_it_expires_and_resending_replaces_it() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let now = Timestamp::now();
        let exp = Timestamp(now.0 + HOUR);
        let first = invite(&store, &org.uid, &admin.uid, "Ann@Example.com", MemberRole::Developer, "t1", exp).await;
        assert_eq!(
            (first.org_name.as_str(), first.invitee.as_str(), first.role.as_str(), first.inviter_name.as_deref()),
            ("acme", "Ann@Example.com", "developer", Some("acme-admin"))
        );
        assert_eq!(store.find_invitation("t1", now).await.unwrap().expect("pending").uid, first.uid);
        assert!(store.find_invitation("t1", exp).await.unwrap().is_none(), "expired at expires_at");

        // Re-inviting the same address (in any case) replaces the pending
        // invitation: the first link stops working.
        let second = invite(&store, &org.uid, &admin.uid, "ann@example.com", MemberRole::Guest, "t2", exp).await;
        assert!(store.find_invitation("t1", now).await.unwrap().is_none());
        assert_eq!(store.find_invitation("t2", now).await.unwrap().expect("new link").uid, second.uid);
        let listed: Vec<String> =
            store.list_invitations(&org.uid, now).await.unwrap().into_iter().map(|i| i.uid).collect();
        assert_eq!(listed, vec![second.uid.clone()]);
        assert!(store.list_invitations(&org.uid, exp).await.unwrap().is_empty(), "expired ones are not listed");

        // Another organization can neither read nor revoke it.
        let (other, _) = org_with_admin(&store, "other").await;
        assert!(store.get_invitation(&other.uid, &second.uid).await.unwrap().is_none());
        assert!(!store.delete_invitation(&other.uid, &second.uid).await.unwrap());
        assert!(store.delete_invitation(&org.uid, &second.uid).await.unwrap());
        assert!(store.find_invitation("t2", now).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn a_user_sees_invitations_to_their_name_or_email_but_not_to_orgs_they_are_in() {
    each_backend(|store| async move {
        let (acme, acme_admin) = org_with_admin(&store, "acme").await;
        let (beta, beta_admin) = org_with_admin(&store, "beta").await;
        let (gamma, gamma_admin) = org_with_admin(&store, "gamma").await;
        let ann = store.create_user("ann", "Ann@Example.com", None, false).await.unwrap();
        let now = Timestamp::now();
        let exp = Timestamp(now.0 + HOUR);
        let by_name = invite(&store, &acme.uid, &acme_admin.uid, "ann", MemberRole::Guest, "a", exp).await;
        let by_email = invite(&store, &beta.uid, &beta_admin.uid, "ann@example.COM", MemberRole::Guest, "b", exp).await;
        invite(&store, &gamma.uid, &gamma_admin.uid, "ann", MemberRole::Guest, "c", exp).await;
        invite(&store, &acme.uid, &acme_admin.uid, "bob", MemberRole::Guest, "d", exp).await;
        store.set_member(&gamma.uid, &ann.uid, MemberRole::Guest).await.unwrap();

        let mut seen: Vec<String> =
            store.invitations_for(&ann, now).await.unwrap().into_iter().map(|i| i.uid).collect();
        seen.sort();
        let mut want = vec![by_name.uid, by_email.uid];
        want.sort();
        assert_eq!(seen, want);
        assert!(store.invitations_for(&ann, exp).await.unwrap().is_empty(), "expired ones are not offered");
    })
    .await;
}

#[tokio::test]
async fn of_concurrent_accepts_of_one_invitation_exactly_one_joins() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let now = Timestamp::now();
        let inv =
            invite(&store, &org.uid, &admin.uid, "team", MemberRole::Developer, "once", Timestamp(now.0 + HOUR)).await;
        let mut users = Vec::new();
        for i in 0..6 {
            users.push(store.create_user(&format!("u{i}"), "", None, false).await.unwrap());
        }
        let tasks: Vec<_> = users
            .iter()
            .map(|u| {
                let (store, inv, uid) = (store.clone(), inv.clone(), u.uid.clone());
                tokio::spawn(async move { store.accept_invitation(&inv, &uid, now).await })
            })
            .collect();
        let mut joined = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(Accepted::Joined) => joined += 1,
                Err(StoreError::NotFound(msg)) => assert!(msg.contains("used"), "{msg}"),
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!(joined, 1, "one invitation, one new member");
        let mut members = 0;
        for u in &users {
            if let Some(role) = store.member_role(&org.uid, &u.uid).await.unwrap() {
                assert_eq!(role, MemberRole::Developer);
                members += 1;
            }
        }
        assert_eq!(members, 1);
        assert!(store.find_invitation("once", now).await.unwrap().is_none(), "used up");
    })
    .await;
}

#[tokio::test]
async fn an_expired_invitation_is_refused_and_adds_no_one() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let now = Timestamp::now();
        let exp = Timestamp(now.0 + HOUR);
        let inv = invite(&store, &org.uid, &admin.uid, "ann", MemberRole::Developer, "late", exp).await;
        let ann = store.create_user("ann", "", None, false).await.unwrap();
        assert!(matches!(store.accept_invitation(&inv, &ann.uid, exp).await, Err(StoreError::NotFound(_))));
        assert_eq!(store.member_role(&org.uid, &ann.uid).await.unwrap(), None);
        match store.accept_invitation_as_new_user(&inv, "newbie", "n@example.com", "hash", exp).await {
            Err(StoreError::NotFound(_)) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(store.get_user_by_name("newbie").await.unwrap().is_none(), "no user was created");

        // Purging removes exactly the expired ones.
        invite(&store, &org.uid, &admin.uid, "bob", MemberRole::Guest, "fresh", Timestamp(exp.0 + HOUR)).await;
        assert_eq!(store.purge_expired_invitations(exp).await.unwrap(), 1);
        assert!(store.get_invitation(&org.uid, &inv.uid).await.unwrap().is_none());
        assert!(store.find_invitation("fresh", exp).await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn an_existing_member_keeps_their_role_and_the_invitation_is_used() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let now = Timestamp::now();
        let inv =
            invite(&store, &org.uid, &admin.uid, "acme-admin", MemberRole::Guest, "t", Timestamp(now.0 + HOUR)).await;
        assert_eq!(store.accept_invitation(&inv, &admin.uid, now).await.unwrap(), Accepted::AlreadyMember);
        assert_eq!(store.member_role(&org.uid, &admin.uid).await.unwrap(), Some(MemberRole::Admin), "not demoted");
        assert!(store.find_invitation("t", now).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn accepting_as_a_new_user_is_all_or_nothing() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let now = Timestamp::now();
        let inv =
            invite(&store, &org.uid, &admin.uid, "x@example.com", MemberRole::Developer, "t", Timestamp(now.0 + HOUR))
                .await;

        // A taken name fails the whole acceptance: the invitation survives
        // for a second try with another name.
        match store.accept_invitation_as_new_user(&inv, "acme-admin", "x@example.com", "hash", now).await {
            Err(StoreError::Conflict(msg)) => assert!(msg.contains("taken"), "{msg}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(store.find_invitation("t", now).await.unwrap().is_some(), "not consumed by a failed accept");

        let user = store.accept_invitation_as_new_user(&inv, "xavier", "x@example.com", "hash", now).await.unwrap();
        assert_eq!((user.name.as_str(), user.password_hash.as_deref(), user.is_admin), ("xavier", Some("hash"), 0));
        assert_eq!(store.member_role(&org.uid, &user.uid).await.unwrap(), Some(MemberRole::Developer));
        assert!(matches!(
            store.accept_invitation_as_new_user(&inv, "yves", "y@example.com", "hash", now).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(store.get_user_by_name("yves").await.unwrap().is_none());
    })
    .await;
}
