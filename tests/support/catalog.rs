//! Queries of a test database's catalogs and history table, for tests to assert on.

use tokio_postgres::Client;

use super::{TestDb, connect, eventually, server};

/// The one value a one-row, one-column query returns.
pub async fn one<T>(client: &Client, query: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query_one(query, &[])
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .get(0)
}

/// A table's columns from the catalog, in order: (name, type, nullable, default or "").
pub async fn columns(client: &Client, table: &str) -> Vec<(String, String, String, String)> {
    client
        .query(
            "SELECT column_name::text, data_type::text, is_nullable::text,
                    coalesce(column_default, '')::text
             FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .expect("read columns")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// A table's constraints as `pg_get_constraintdef` prints them, sorted.
pub async fn constraints(client: &Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = $1::text::regclass ORDER BY 1",
            &[&table],
        )
        .await
        .expect("read constraints")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Applied versions in the history table, oldest first. Fails the test if the table can't be
/// read: a test that expects no table asks [`tables`] instead.
pub async fn history(client: &Client) -> Vec<i64> {
    client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap_or_else(|e| {
            let reason = e.as_db_error().map_or(e.to_string(), ToString::to_string);
            panic!("cannot read the history table schema_migrations: {reason}")
        })
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Names of the tables in the public schema, sorted.
pub async fn tables(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("list tables")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits (up to 60 s) until another session in `db` runs a statement containing `text`.
pub async fn running(db: &TestDb, text: &str) {
    let watcher = db.client().await;
    let pattern = format!("%{text}%");
    eventually(
        &format!("a statement with {text} to be running"),
        || async {
            let rows = watcher
                .query(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()
                     AND state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()",
                    &[&pattern],
                )
                .await
                .unwrap();
            !rows.is_empty()
        },
    )
    .await;
}

/// Whether a database named `name` exists on the shared server.
pub async fn database_exists(name: &str) -> bool {
    let admin = connect(&format!("{}/postgres", server().base_url)).await;
    let row = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&name],
        )
        .await
        .expect("look for a database");
    row.get(0)
}

/// Creates the role `name` (NOLOGIN) on the shared server unless it is there: roles belong to
/// the server, not to a test's database, and tests running at once may ask for the same one.
pub async fn role(name: &str) {
    let admin = connect(&format!("{}/postgres", server().base_url)).await;
    let sql = format!(
        "DO $$ BEGIN CREATE ROLE {name} NOLOGIN; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    );
    admin
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("creating role {name}: {e}"));
}
