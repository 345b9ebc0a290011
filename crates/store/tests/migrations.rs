//! The SQLite and PostgreSQL migrations describe one schema: the same tables
//! with the same columns. Their DDL differs only where the engines do (key
//! generation, types), so a column added to one and forgotten in the other
//! fails here instead of in a query at run time.

mod common;

use std::collections::BTreeMap;

use sqlx::Row;

type Schema = BTreeMap<String, Vec<String>>;

async fn sqlite_schema(store: &yatai_store::Store) -> Schema {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT LIKE '_sqlx_%' ORDER BY name",
    )
    .fetch_all(store.pool())
    .await
    .expect("list tables");
    let mut schema = Schema::new();
    for t in tables {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT name FROM pragma_table_info('{t}') ORDER BY name")))
            .fetch_all(store.pool())
            .await
            .expect("table info");
        schema.insert(t, rows.iter().map(|r| r.get::<String, _>(0)).collect());
    }
    schema
}

async fn postgres_schema(store: &yatai_store::Store) -> Schema {
    let rows = sqlx::query(
        "SELECT c.table_name::text, c.column_name::text FROM information_schema.columns c \
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
         AND c.table_name NOT LIKE '\\_sqlx\\_%' ORDER BY 1, 2",
    )
    .fetch_all(store.pool())
    .await
    .expect("information_schema");
    let mut schema = Schema::new();
    for r in rows {
        schema.entry(r.get::<String, _>(0)).or_default().push(r.get::<String, _>(1));
    }
    schema
}

#[tokio::test]
async fn sqlite_and_postgres_migrations_define_the_same_tables_and_columns() {
    let sqlite = common::sqlite().await;
    let lite = sqlite_schema(&sqlite.store).await;
    assert!(lite.contains_key("versions") && lite.contains_key("deployments"), "unexpected schema: {lite:?}");
    let Some(pg) = common::postgres().await else { return };
    let post = postgres_schema(&pg.store).await;
    let tables = |s: &Schema| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(tables(&lite), tables(&post), "the two migration sets create different tables");
    for (table, cols) in &lite {
        assert_eq!(cols, &post[table], "table {table} has different columns in SQLite and PostgreSQL");
    }
}

#[tokio::test]
async fn migrations_are_idempotent_on_reconnect() {
    let b = common::sqlite().await;
    let url = {
        // A second connect to the same file runs the migrator again.
        let path: String = sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(b.store.pool())
            .await
            .expect("database file");
        format!("sqlite://{path}")
    };
    let again = yatai_store::Store::connect(&url).await.expect("reconnect migrates cleanly");
    again.ping().await.expect("ping");
}
