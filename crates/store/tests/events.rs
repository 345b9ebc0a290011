//! The audit feed: each filter field narrows both the counted list and the
//! dashboard's feed page, and the page's cursor walks the whole feed once —
//! on SQLite and PostgreSQL.

mod common;

use common::{each_backend, org_with_admin};
use yatai_store::{EventFilter, EventRow, NewEvent, Store};

/// (operation, resource_type, resource_name, actor_name), oldest first.
const FEED: &[(&str, &str, &str, &str)] = &[
    ("pushed", "model", "clf", "ann"),
    ("pushed", "bento", "svc", "ann"),
    ("pulled", "model", "clf", "bob"),
    ("deleted", "model", "old", "bob"),
    ("created", "deployment", "svc", "ann"),
    ("pushed", "model", "clf", "bob"),
    ("updated", "deployment", "svc", "bob"),
];

async fn record(store: &Store, org_uid: &str) {
    for (operation, resource_type, resource_name, actor_name) in FEED {
        store
            .record_event(NewEvent {
                org_uid,
                actor_uid: None,
                actor_name,
                api_token_name: "",
                operation,
                resource_type,
                resource_name,
                status: "success",
                info: "{}",
            })
            .await
            .unwrap();
    }
}

fn key(e: &EventRow) -> (String, String, String, String) {
    (e.operation.clone(), e.resource_type.clone(), e.resource_name.clone(), e.actor_name.clone())
}

/// What `f` should select from [`FEED`], newest first.
fn expected(f: &EventFilter) -> Vec<(String, String, String, String)> {
    let is = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
    FEED.iter()
        .rev()
        .filter(|(o, t, n, a)| {
            is(&f.operation, o) && is(&f.resource_type, t) && is(&f.resource_name, n) && is(&f.actor_name, a)
        })
        .map(|(o, t, n, a)| (o.to_string(), t.to_string(), n.to_string(), a.to_string()))
        .collect()
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

#[tokio::test]
async fn each_filter_field_narrows_the_list_and_the_feed_page() {
    each_backend(|store| async move {
        let (org, _) = org_with_admin(&store, "acme").await;
        let (other, _) = org_with_admin(&store, "other").await;
        record(&store, &org.uid).await;
        record(&store, &other.uid).await;
        let all = EventFilter { count: 100, ..Default::default() };
        let filters = [
            EventFilter { operation: some("pushed"), ..all.clone() },
            EventFilter { resource_type: some("deployment"), ..all.clone() },
            EventFilter { resource_name: some("clf"), ..all.clone() },
            EventFilter { actor_name: some("bob"), ..all.clone() },
            EventFilter {
                operation: some("pushed"),
                resource_name: some("clf"),
                actor_name: some("bob"),
                ..all.clone()
            },
            EventFilter { resource_type: some("model"), resource_name: some("svc"), ..all.clone() },
            all.clone(),
        ];
        for f in &filters {
            let want = expected(f);
            let (rows, total) = store.list_events(&org.uid, f).await.unwrap();
            assert_eq!(rows.iter().map(key).collect::<Vec<_>>(), want, "list_events {f:?}");
            assert_eq!(total, want.len() as i64, "total of {f:?}");
            assert!(rows.iter().all(|e| e.org_uid == org.uid), "only the organization's own events");
            let page = store.event_page(&org.uid, f, 100).await.unwrap();
            assert_eq!(page.iter().map(key).collect::<Vec<_>>(), want, "event_page {f:?}");
        }

        // `before_seq` keeps only older events, in both queries.
        let (newest_first, _) = store.list_events(&org.uid, &all).await.unwrap();
        let cut = newest_first[2].seq;
        let older = EventFilter { before_seq: Some(cut), ..all.clone() };
        let (rows, total) = store.list_events(&org.uid, &older).await.unwrap();
        assert_eq!(total, FEED.len() as i64 - 3);
        assert_eq!(
            rows.iter().map(|e| e.seq).collect::<Vec<_>>(),
            newest_first[3..].iter().map(|e| e.seq).collect::<Vec<_>>()
        );
        let page = store.event_page(&org.uid, &older, 100).await.unwrap();
        assert_eq!(
            page.iter().map(|e| e.seq).collect::<Vec<_>>(),
            newest_first[3..].iter().map(|e| e.seq).collect::<Vec<_>>()
        );

        // `start` and `count` page the counted list; the total ignores them.
        let (rows, total) =
            store.list_events(&org.uid, &EventFilter { start: 2, count: 3, ..all.clone() }).await.unwrap();
        assert_eq!(total, FEED.len() as i64);
        assert_eq!(
            rows.iter().map(|e| e.seq).collect::<Vec<_>>(),
            newest_first[2..5].iter().map(|e| e.seq).collect::<Vec<_>>()
        );

        let ops = store.event_operations(&org.uid).await.unwrap();
        assert_eq!(ops, vec!["created", "deleted", "pulled", "pushed", "updated"]);
    })
    .await;
}

#[tokio::test]
async fn the_feed_page_cursor_walks_every_event_once_newest_first() {
    each_backend(|store| async move {
        let (org, _) = org_with_admin(&store, "acme").await;
        record(&store, &org.uid).await;
        let (everything, _) =
            store.list_events(&org.uid, &EventFilter { count: 100, ..Default::default() }).await.unwrap();
        assert_eq!(everything.len(), FEED.len());

        let mut walked = Vec::new();
        let mut f = EventFilter::default();
        let mut pages = 0;
        loop {
            let mut page = store.event_page(&org.uid, &f, 3).await.unwrap();
            pages += 1;
            assert!(pages <= FEED.len(), "the cursor must move");
            let more = page.len() > 3;
            page.truncate(3);
            walked.extend(page.iter().map(|e| e.seq));
            if !more {
                break;
            }
            f.before_seq = Some(page.last().unwrap().seq);
        }
        assert_eq!(pages, 3, "7 events in pages of 3");
        assert_eq!(walked, everything.iter().map(|e| e.seq).collect::<Vec<_>>());

        // The cursor combines with a filter.
        let mut f = EventFilter { actor_name: some("bob"), ..Default::default() };
        let first = store.event_page(&org.uid, &f, 2).await.unwrap();
        assert_eq!(first.len(), 3, "one more than asked: there is an older page");
        f.before_seq = Some(first[1].seq);
        let rest = store.event_page(&org.uid, &f, 2).await.unwrap();
        assert_eq!(rest.len(), 2, "the last page");
        assert!(rest.iter().all(|e| e.actor_name == "bob" && e.seq < first[1].seq));
    })
    .await;
}

#[tokio::test]
async fn events_older_than_the_retention_are_deleted_oldest_first_in_batches() {
    each_backend(|store| async move {
        let (org, _) = org_with_admin(&store, "retention").await;
        record(&store, &org.uid).await;
        let all = store.event_page(&org.uid, &EventFilter::default(), 100).await.unwrap();
        // Nothing is older than a moment before the first event.
        let first = all.last().unwrap().created_at;
        assert_eq!(store.delete_events_before(yatai_core::Timestamp(first), 100).await.unwrap(), 0);
        // In batches, oldest first.
        let now = yatai_core::Timestamp::now().after(std::time::Duration::from_secs(1));
        assert_eq!(store.delete_events_before(now, 3).await.unwrap(), 3);
        let left = store.event_page(&org.uid, &EventFilter::default(), 100).await.unwrap();
        assert_eq!(
            left.iter().map(|e| e.seq).collect::<Vec<_>>(),
            all[..FEED.len() - 3].iter().map(|e| e.seq).collect::<Vec<_>>()
        );
        assert_eq!(store.delete_events_before(now, 100).await.unwrap(), (FEED.len() - 3) as u64);
        assert!(store.event_page(&org.uid, &EventFilter::default(), 100).await.unwrap().is_empty());
    })
    .await;
}
