//! What the target's catalog says of the tables a plan's hazards concern: whether each exists
//! and how many rows it holds. Read-only, and cheap: one query for all of them, and an exact
//! count, cut off at the hazard threshold, only where the planner's estimate (`reltuples`)
//! is below it or missing.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::classify::Name;
use crate::error::Error;

/// How far a count of a dropped column's values goes before it says "at least".
const VALUES_CAP: i64 = 1_000_000;

pub(super) struct Facts {
    /// Rows of each existing table, by its SQL name; absent tables are missing.
    rows: HashMap<String, i64>,
}

impl Facts {
    pub async fn read(client: &Client, tables: &[&Name], threshold: i64) -> Result<Facts, Error> {
        let mut names: Vec<String> = tables.iter().map(|t| t.sql()).collect();
        names.sort();
        names.dedup();
        let mut rows = HashMap::new();
        if names.is_empty() {
            return Ok(Facts { rows });
        }
        let estimates = client
            .query(
                "SELECT n, c.reltuples::int8 FROM unnest($1::text[]) AS n
                   JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(n)
                  WHERE c.relkind IN ('r', 'p', 'm')",
                &[&names],
            )
            .await
            .map_err(Error::database("reading table sizes for the hazard rules"))?;
        let mut small = Vec::new();
        for row in estimates {
            let (name, estimate): (String, i64) = (row.get(0), row.get(1));
            if estimate >= threshold {
                rows.insert(name, estimate);
            } else {
                small.push(name);
            }
        }
        if !small.is_empty() {
            // Never analyzed (-1) or small: count, but never past the threshold.
            let counts: Vec<String> = small
                .iter()
                .map(|name| {
                    format!("(SELECT count(*) FROM (SELECT 1 FROM {name} LIMIT {threshold}) s)")
                })
                .collect();
            let row = client
                .query_one(&format!("SELECT {}", counts.join(", ")), &[])
                .await
                .map_err(Error::database("counting rows for the hazard rules"))?;
            for (i, name) in small.into_iter().enumerate() {
                rows.insert(name, row.get(i));
            }
        }
        Ok(Facts { rows })
    }

    /// Rows of `table`, or `None` when it does not exist.
    pub fn rows(&self, table: &Name) -> Option<i64> {
        self.rows.get(&table.sql()).copied()
    }

    /// Rows of `table` holding a value in `column`, or `None` when either does not exist.
    pub async fn values(
        &self,
        client: &Client,
        table: &Name,
        column: &str,
    ) -> Result<Option<i64>, Error> {
        let Some(rows) = self.rows(table) else {
            return Ok(None);
        };
        if rows == 0 {
            return Ok(Some(0));
        }
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_attribute
                  WHERE attrelid = pg_catalog.to_regclass($1) AND attname = $2 AND NOT attisdropped",
                &[&table.sql(), &column],
            )
            .await
            .map_err(Error::database("looking up a dropped column"))?;
        if exists.is_none() {
            return Ok(None);
        }
        let column = Name {
            schema: None,
            name: column.to_string(),
        }
        .sql();
        let count: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {column} IS NOT NULL LIMIT {VALUES_CAP}) s"
                ),
                &[],
            )
            .await
            .map_err(Error::database("counting the values of a dropped column"))?
            .get(0);
        Ok(Some(count))
    }
}
