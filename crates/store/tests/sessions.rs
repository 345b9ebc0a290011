//! Dashboard sign-in sessions: what a session grants, for how long, and how
//! it ends — on SQLite and PostgreSQL.

mod common;

use common::{each_backend, org_with_admin};
use yatai_store::{MemberRole, NewSession, Store, Timestamp};

const HOUR: i64 = 3_600_000_000;

async fn create(store: &Store, id_hash: &str, user_uid: &str, org_uid: &str, expires_at: Timestamp) {
    store
        .create_session(NewSession {
            id_hash,
            user_uid,
            org_uid,
            expires_at,
            user_agent: "test-agent",
            client_addr: "127.0.0.1",
        })
        .await
        .expect("create session");
}

#[tokio::test]
async fn a_session_grants_its_user_org_and_role_until_it_expires() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let now = Timestamp::now();
        let expires = Timestamp(now.0 + HOUR);
        create(&store, "s1", &admin.uid, &org.uid, expires).await;

        let id = store.find_session("s1", now).await.unwrap().expect("a live session");
        assert_eq!(
            (id.user.uid.as_str(), id.org.uid.as_str(), id.org.name.as_str(), id.role),
            (admin.uid.as_str(), org.uid.as_str(), "acme", MemberRole::Admin)
        );
        assert_eq!(id.expires_at, expires.0);
        assert!(store.find_session("no-such-session", now).await.unwrap().is_none());
        // Expiry is exclusive: at `expires_at` the session is gone.
        assert!(store.find_session("s1", Timestamp(expires.0 - 1)).await.unwrap().is_some());
        assert!(store.find_session("s1", expires).await.unwrap().is_none());

        // Touching slides the expiry: the session now outlives its first end.
        let later = Timestamp(expires.0 + HOUR);
        store.touch_session("s1", Timestamp(now.0 + 10), later).await.unwrap();
        let id = store.find_session("s1", expires).await.unwrap().expect("still live after touch");
        assert_eq!((id.last_seen_at, id.expires_at), (now.0 + 10, later.0));

        store.delete_session("s1").await.unwrap();
        assert!(store.find_session("s1", now).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn a_session_grants_nothing_once_its_user_is_not_a_member_of_its_org() {
    each_backend(|store| async move {
        let (acme, admin) = org_with_admin(&store, "acme").await;
        let (other, _) = org_with_admin(&store, "other").await;
        let now = Timestamp::now();
        let dev = store.create_user("dev", "dev@acme.example", None, false).await.unwrap();
        store.set_member(&acme.uid, &dev.uid, MemberRole::Developer).await.unwrap();
        create(&store, "dev-session", &dev.uid, &acme.uid, Timestamp(now.0 + HOUR)).await;
        let id = store.find_session("dev-session", now).await.unwrap().expect("member");
        assert_eq!(id.role, MemberRole::Developer);

        // Switching to an organization the user is not in grants nothing.
        store.set_session_org("dev-session", &other.uid).await.unwrap();
        assert!(store.find_session("dev-session", now).await.unwrap().is_none());
        store.set_session_org("dev-session", &acme.uid).await.unwrap();
        assert!(store.find_session("dev-session", now).await.unwrap().is_some());

        // A role change is seen by the next request.
        store.set_member(&acme.uid, &dev.uid, MemberRole::Guest).await.unwrap();
        assert_eq!(store.find_session("dev-session", now).await.unwrap().unwrap().role, MemberRole::Guest);

        // Removal from the organization ends the session there.
        create(&store, "admin-session", &admin.uid, &acme.uid, Timestamp(now.0 + HOUR)).await;
        assert!(store.remove_member(&acme.uid, &dev.uid).await.unwrap());
        assert!(store.find_session("dev-session", now).await.unwrap().is_none());
        assert!(store.find_session("admin-session", now).await.unwrap().is_some(), "other members keep theirs");
    })
    .await;
}

#[tokio::test]
async fn signing_out_everywhere_else_keeps_only_the_current_session_of_that_user() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let dev = store.create_user("dev", "dev@acme.example", None, false).await.unwrap();
        store.set_member(&org.uid, &dev.uid, MemberRole::Developer).await.unwrap();
        let now = Timestamp::now();
        let exp = Timestamp(now.0 + HOUR);
        for s in ["a1", "a2", "a3"] {
            create(&store, s, &admin.uid, &org.uid, exp).await;
        }
        create(&store, "d1", &dev.uid, &org.uid, exp).await;

        assert_eq!(store.delete_user_sessions(&admin.uid, Some("a2")).await.unwrap(), 2);
        assert!(store.find_session("a1", now).await.unwrap().is_none());
        assert!(store.find_session("a2", now).await.unwrap().is_some(), "the current session stays");
        assert!(store.find_session("a3", now).await.unwrap().is_none());
        assert!(store.find_session("d1", now).await.unwrap().is_some(), "another user's session stays");

        // Without an exception every session of the user goes.
        assert_eq!(store.delete_user_sessions(&admin.uid, None).await.unwrap(), 1);
        assert!(store.find_session("a2", now).await.unwrap().is_none());
        assert!(store.find_session("d1", now).await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn purging_deletes_only_expired_sessions() {
    each_backend(|store| async move {
        let (org, admin) = org_with_admin(&store, "acme").await;
        let now = Timestamp::now();
        create(&store, "old", &admin.uid, &org.uid, Timestamp(now.0 - 1)).await;
        create(&store, "edge", &admin.uid, &org.uid, now).await;
        create(&store, "live", &admin.uid, &org.uid, Timestamp(now.0 + HOUR)).await;

        assert_eq!(store.purge_expired_sessions(now).await.unwrap(), 2);
        assert_eq!(store.purge_expired_sessions(now).await.unwrap(), 0, "nothing left to purge");
        // Purged rows are gone, not just hidden: a session found at an
        // earlier time would otherwise still resolve.
        let before = Timestamp(now.0 - HOUR);
        assert!(store.find_session("old", before).await.unwrap().is_none());
        assert!(store.find_session("edge", before).await.unwrap().is_none());
        assert!(store.find_session("live", now).await.unwrap().is_some());
    })
    .await;
}
