//! The audit feed: who (user and token) did what to which resource, when.

use sqlx::any::AnyArguments;
use sqlx::{Arguments, FromRow};

use crate::{Result, Store, Timestamp, built, new_uid};

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub uid: String,
    pub org_uid: String,
    pub created_at: i64,
    pub actor_uid: Option<String>,
    pub actor_name: String,
    pub api_token_name: String,
    pub operation: String,
    pub resource_type: String,
    pub resource_name: String,
    pub status: String,
    pub info: String,
}

pub struct NewEvent<'a> {
    pub org_uid: &'a str,
    pub actor_uid: Option<&'a str>,
    pub actor_name: &'a str,
    pub api_token_name: &'a str,
    /// `created`, `pushed`, `pulled`, `deleted`, `updated`, …
    pub operation: &'a str,
    pub resource_type: &'a str,
    pub resource_name: &'a str,
    /// `success` or `failed`.
    pub status: &'a str,
    /// JSON object with details.
    pub info: &'a str,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub operation: Option<String>,
    pub resource_type: Option<String>,
    pub resource_name: Option<String>,
    pub actor_name: Option<String>,
    /// Only events with `seq` below this (for paging backwards).
    pub before_seq: Option<i64>,
    pub start: i64,
    pub count: i64,
}

const EVENT_SELECT: &str = "SELECT seq, uid, org_uid, created_at, actor_uid, actor_name, api_token_name, operation, \
     resource_type, resource_name, status, info FROM events";

/// The `WHERE` clause of an organization's events that pass `f`, and the
/// values of its placeholders in order (a caller's own placeholders follow
/// from `args.len() + 1`): the counted list and the feed page select the
/// same events. Only the conditions `f` sets are written: an unused
/// `($n IS NULL OR resource_type = $n)` keeps SQLite from using the
/// `(org_uid, resource_type, resource_name, seq)` index a deployment's feed
/// needs.
fn event_filter(org_uid: &str, f: &EventFilter) -> Result<(String, AnyArguments)> {
    let mut args = AnyArguments::default();
    args.add(org_uid).map_err(sqlx::Error::Encode)?;
    let mut sql = String::from("WHERE org_uid = $1");
    let equal = [
        ("operation", &f.operation),
        ("resource_type", &f.resource_type),
        ("resource_name", &f.resource_name),
        ("actor_name", &f.actor_name),
    ];
    for (column, value) in equal {
        if let Some(value) = value {
            args.add(value.as_str()).map_err(sqlx::Error::Encode)?;
            sql.push_str(&format!(" AND {column} = ${}", args.len()));
        }
    }
    if let Some(seq) = f.before_seq {
        args.add(seq).map_err(sqlx::Error::Encode)?;
        sql.push_str(&format!(" AND seq < ${}", args.len()));
    }
    Ok((sql, args))
}

impl Store {
    pub async fn record_event(&self, e: NewEvent<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO events (uid, org_uid, created_at, actor_uid, actor_name, api_token_name, operation, \
             resource_type, resource_name, status, info) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(new_uid())
        .bind(e.org_uid)
        .bind(Timestamp::now().0)
        .bind(e.actor_uid)
        .bind(e.actor_name)
        .bind(e.api_token_name)
        .bind(e.operation)
        .bind(e.resource_type)
        .bind(e.resource_name)
        .bind(e.status)
        .bind(e.info)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Deletes up to `limit` of the oldest events recorded before `before` (every organization's);
    /// returns how many it deleted.
    pub async fn delete_events_before(&self, before: Timestamp, limit: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE created_at < $1 ORDER BY seq LIMIT $2)",
        )
        .bind(before.0)
        .bind(limit)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Events of an organization, newest first, with the total that matches.
    pub async fn list_events(&self, org_uid: &str, f: &EventFilter) -> Result<(Vec<EventRow>, i64)> {
        let (filter, args) = event_filter(org_uid, f)?;
        let total: i64 = sqlx::query_scalar_with(built(format!("SELECT COUNT(*) FROM events {filter}")), args)
            .fetch_one(self.pool())
            .await?;
        let (filter, args) = event_filter(org_uid, f)?;
        let n = args.len() + 1;
        let rows = sqlx::query_as_with(
            built(format!("{EVENT_SELECT} {filter} ORDER BY seq DESC LIMIT ${n} OFFSET ${}", n + 1)),
            args,
        )
        .bind(f.count)
        .bind(f.start)
        .fetch_all(self.pool())
        .await?;
        Ok((rows, total))
    }

    /// A page of an organization's feed, newest first, older than a cursor
    /// (`seq`), without counting the whole feed. Returns one row more than
    /// asked when there is an older page.
    pub async fn event_page(&self, org_uid: &str, f: &EventFilter, count: i64) -> Result<Vec<EventRow>> {
        let (filter, args) = event_filter(org_uid, f)?;
        let n = args.len() + 1;
        Ok(sqlx::query_as_with(built(format!("{EVENT_SELECT} {filter} ORDER BY seq DESC LIMIT ${n}")), args)
            .bind(count + 1)
            .fetch_all(self.pool())
            .await?)
    }

    /// Operation names seen in an organization's feed, for the filter menu.
    pub async fn event_operations(&self, org_uid: &str) -> Result<Vec<String>> {
        // Bounded: a feed with millions of rows still answers from the
        // newest ten thousand.
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT operation FROM (SELECT operation FROM events WHERE org_uid = $1 ORDER BY seq DESC LIMIT 10000) e \
             ORDER BY operation",
        )
        .bind(org_uid)
        .fetch_all(self.pool())
        .await?)
    }
}
