//! What the target's catalog says of the tables a plan's hazards concern: whether each exists
//! and how many rows it holds. Read-only, and cheap: one query for all of them, and an exact
//! count, cut off at the hazard threshold, only where the planner's estimate (`reltuples`)
//! is below it or missing.

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};
use tracing::warn;

use super::RowCount;
use super::classify::{Dropped, Name, Role};
use crate::error::Error;

/// How far a count of a dropped column's values goes before it says "at least".
const VALUES_CAP: i64 = 1_000_000;

pub(super) struct Facts {
    /// Rows of each existing table, by its SQL name; absent tables are missing.
    rows: HashMap<String, (i64, RowCount)>,
    /// The partitioned ones among them, whose fixes differ (no index is built on one
    /// CONCURRENTLY, and no foreign key added NOT VALID before PostgreSQL 18).
    partitioned: HashSet<String>,
}

impl Facts {
    /// The rows of `tables`, counted where the estimate is below `threshold`; of `named`,
    /// only whether each exists (its rows are the planner's estimate, never counted).
    pub async fn read(
        client: &Client,
        tables: &[&Name],
        named: &[&Name],
        threshold: i64,
    ) -> Result<Facts, Error> {
        let sized: Vec<String> = tables.iter().map(|t| t.sql()).collect();
        let mut names = sized.clone();
        names.extend(named.iter().map(|t| t.sql()));
        names.sort();
        names.dedup();
        let (mut rows, mut partitioned) = (HashMap::new(), HashSet::new());
        if names.is_empty() {
            return Ok(Facts { rows, partitioned });
        }
        // Typed queries: one round trip each, with no statement prepared first.
        let estimates = client
            .query_typed(
                "SELECT n, c.reltuples::int8, c.relkind = 'p', NOT c.relispopulated,
                        c.relkind IN ('i', 'I')
                   FROM unnest($1::text[]) AS n
                   JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(n)
                  WHERE c.relkind IN ('r', 'p', 'm', 'i', 'I')",
                &[(&names, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(Error::database("reading table sizes for the hazard rules"))?;
        let mut small = Vec::new();
        for row in estimates {
            let (name, estimate): (String, i64) = (row.get(0), row.get(1));
            // An index is only ever named (CREATE INDEX IF NOT EXISTS): whether it exists.
            if row.get::<_, bool>(4) {
                if !sized.contains(&name) {
                    rows.insert(name, (estimate.max(0), RowCount::Estimated));
                }
                continue;
            }
            if row.get::<_, bool>(2) {
                partitioned.insert(name.clone());
            }
            // A materialized view made WITH NO DATA holds none, and reading it fails.
            if row.get::<_, bool>(3) {
                rows.insert(name, (0, RowCount::Counted));
                continue;
            }
            if estimate >= threshold || !sized.contains(&name) {
                rows.insert(name, (estimate, RowCount::Estimated));
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
            let rows_counted = client
                .query_typed(&format!("SELECT {}", counts.join(", ")), &[])
                .await
                .map_err(Error::database("counting rows for the hazard rules"))?;
            let Some(row) = rows_counted.first() else {
                return Ok(Facts { rows, partitioned });
            };
            for (i, name) in small.into_iter().enumerate() {
                let count: i64 = row.get(i);
                rows.insert(name, (count, RowCount::capped(count, threshold)));
            }
        }
        Ok(Facts { rows, partitioned })
    }

    /// Whether `table` is a partitioned table.
    pub fn partitioned(&self, table: &Name) -> bool {
        self.partitioned.contains(&table.sql())
    }

    /// Rows of `table`, and how they were had, or `None` when it does not exist.
    pub fn rows(&self, table: &Name) -> Option<(i64, RowCount)> {
        self.rows.get(&table.sql()).copied()
    }

    /// Whether `index` is an index of `table`, each name resolved as the server resolves it:
    /// an index lives in its table's schema, so one of that name elsewhere on the search
    /// path is not the one CREATE INDEX IF NOT EXISTS finds.
    pub async fn index_on(
        &self,
        client: &Client,
        index: &Name,
        table: &Name,
    ) -> Result<bool, Error> {
        let rows = client
            .query_typed(
                "SELECT 1 FROM pg_catalog.pg_index
                  WHERE indexrelid = pg_catalog.to_regclass($1)
                    AND indrelid = pg_catalog.to_regclass($2)",
                &[(&index.sql(), Type::TEXT), (&table.sql(), Type::TEXT)],
            )
            .await
            .map_err(Error::database("looking up an index created IF NOT EXISTS"))?;
        Ok(!rows.is_empty())
    }

    /// Whether `table` has `column` (false when the table does not exist).
    pub async fn has_column(
        &self,
        client: &Client,
        table: &Name,
        column: &str,
    ) -> Result<bool, Error> {
        if self.rows(table).is_none() {
            return Ok(false);
        }
        let rows = client
            .query_typed(
                "SELECT 1 FROM pg_catalog.pg_attribute
                  WHERE attrelid = pg_catalog.to_regclass($1) AND attname = $2
                    AND NOT attisdropped",
                &[(&table.sql(), Type::TEXT), (&column, Type::TEXT)],
            )
            .await
            .map_err(Error::database("looking up a column added IF NOT EXISTS"))?;
        Ok(!rows.is_empty())
    }

    /// Rows of `table` holding a value in `column`, or `None` when either does not exist:
    /// from the planner's statistics when they saw values, else counted, reading the table
    /// for at most [`COUNT_TIMEOUT`] (then every row counts).
    pub async fn values(
        &self,
        client: &Client,
        table: &Name,
        column: &str,
    ) -> Result<Option<(i64, RowCount)>, Error> {
        let Some((rows, row_count)) = self.rows(table) else {
            return Ok(None);
        };
        if rows == 0 {
            return Ok(Some((0, row_count)));
        }
        // The column, and the planner's share of NULLs in it when the table was analyzed.
        let row = client
            .query_typed(
                "SELECT (SELECT s.null_frac::float8 FROM pg_catalog.pg_stats s
                          WHERE s.schemaname = n.nspname AND s.tablename = c.relname
                            AND s.attname = a.attname AND NOT s.inherited)
                   FROM pg_catalog.pg_attribute a
                   JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = $2
                    AND NOT a.attisdropped",
                &[(&table.sql(), Type::TEXT), (&column, Type::TEXT)],
            )
            .await
            .map_err(Error::database("looking up a dropped column"))?;
        let Some(row) = row.first() else {
            return Ok(None);
        };
        // On a big table, statistics that saw values are enough to say the column holds
        // data; statistics that saw none may be older than the values, so only a count can
        // say it is empty. A table below the threshold was counted, and so is the column.
        if row_count != RowCount::Counted
            && let Some(null_frac) = row.get::<_, Option<f64>>(0)
            && null_frac < 1.0
        {
            let held = ((rows as f64) * (1.0 - null_frac)).ceil().max(1.0) as i64;
            return Ok(Some((held, RowCount::Estimated)));
        }
        let column = Name {
            schema: None,
            name: column.to_string(),
        }
        .sql();
        // The count reads the table (sharing it with the bot); on a table too big to read in
        // COUNT_TIMEOUT it stops, and the column counts as holding the table's rows.
        let count = format!(
            "BEGIN; SET LOCAL statement_timeout = {}; \
             SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {column} IS NOT NULL LIMIT {VALUES_CAP}) s; \
             COMMIT",
            COUNT_TIMEOUT.as_millis()
        );
        match client.simple_query(&count).await {
            Ok(messages) => Ok(Some(match first_value(&messages) {
                Some(count) => (count, RowCount::capped(count, VALUES_CAP)),
                None => (rows, row_count),
            })),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
                (client.batch_execute("ROLLBACK").await)
                    .map_err(Error::database("ending the count of a dropped column"))?;
                Ok(Some((rows, row_count)))
            }
            Err(e) => Err(Error::Database {
                context: "counting the values of a dropped column",
                source: e,
            }),
        }
    }
}

/// What [`labels_in_use`] found: the columns holding a deleted label, each with its rows;
/// `untold` when it could not say for every column (the query of the labels failed, or the
/// counts ran past [`LABELS_BUDGET`]).
pub(super) struct Held {
    pub columns: Vec<(Name, String, (i64, RowCount))>,
    pub untold: bool,
}

/// How long the counts of [`labels_in_use`] may take in all: a type used in thousands of
/// tables (a schema per tenant) would otherwise hold the run for as many counts.
const LABELS_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// The columns holding enum labels that `deleted` (a query of type OIDs and labels, from
/// [`crate::sql::enum_labels_deleted`]) finds, with the rows of each holding one. A column
/// holds them when its type is the enum or an array of it, through domains (each compared as
/// text), or anything else built on them (a range, a multirange, a composite type: then
/// every row with a value counts). Temporary tables (another session's), unpopulated
/// materialized views and foreign tables are left out. The query is the statement's own, run
/// read-only, so a WITH that writes fails here instead of writing. Each count reads its table
/// for at most [`COUNT_TIMEOUT`], then counts as at least one row; so does a table the run may
/// not read.
pub(super) async fn labels_in_use(client: &Client, deleted: &str) -> Result<Held, Error> {
    let columns = format!(
        "WITH RECURSIVE db_migrate_deleted(typ, label) AS ({deleted}
         ),
         -- Which type holds which: a domain its base, an array its element, a range its
         -- subtype, a composite type (a table's row type too) its attributes' types.
         db_migrate_contains(outer_type, inner_type, kind) AS (
             SELECT t.oid, t.typbasetype, 'd' FROM pg_catalog.pg_type t WHERE t.typtype = 'd'
           UNION ALL
             SELECT t.oid, t.typelem, 'a' FROM pg_catalog.pg_type t
              WHERE t.typcategory = 'A' AND t.typelem <> 0
           UNION ALL
             SELECT r.rngtypid, r.rngsubtype, 'o' FROM pg_catalog.pg_range r
           UNION ALL
             -- A multirange (PostgreSQL 14) its range: read through JSON, which names no
             -- column an older server lacks.
             SELECT (pg_catalog.to_jsonb(r) ->> 'rngmultitypid')::oid, r.rngtypid, 'o'
               FROM pg_catalog.pg_range r WHERE pg_catalog.to_jsonb(r) ? 'rngmultitypid'
           UNION ALL
             SELECT t.oid, a.atttypid, 'o' FROM pg_catalog.pg_type t
               JOIN pg_catalog.pg_attribute a
                 ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
              WHERE t.typtype = 'c'
         ),
         -- Every type holding one of the enums, and how its values show the labels: 'e' as
         -- the label (the enum, a domain over it), 'a' as an array of them, 'o' otherwise.
         db_migrate_holding(oid, how, enum) AS (
             SELECT DISTINCT typ, 'e', typ FROM db_migrate_deleted
           UNION
             SELECT c.outer_type,
                    CASE WHEN c.kind = 'd' THEN h.how
                         WHEN c.kind = 'a' AND h.how = 'e' THEN 'a'
                         ELSE 'o' END,
                    h.enum
               FROM db_migrate_holding h JOIN db_migrate_contains c ON c.inner_type = h.oid
         )
         SELECT n.nspname::text, c.relname::text, a.attname::text, c.relkind = 'p', h.how,
                pg_catalog.array_agg(DISTINCT d.label)
           FROM db_migrate_holding h
           JOIN db_migrate_deleted d ON d.typ = h.enum
           JOIN pg_catalog.pg_attribute a ON a.atttypid = h.oid
           JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition
            AND c.relpersistence <> 't' AND (c.relkind <> 'm' OR c.relispopulated)
            AND a.attnum > 0 AND NOT a.attisdropped
          GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3"
    );
    let timeout = COUNT_TIMEOUT.as_millis();
    // The planner's cost guess for the recursive query turned JIT compiling on: 0.6 s of it
    // for a query of 3 ms (`jit` is PostgreSQL 11's). Row security off: a table it would
    // filter fails the count, which then counts as holding rows, rather than reading as empty.
    let read_only = format!(
        "BEGIN READ ONLY; SET LOCAL statement_timeout = {timeout}; SET LOCAL row_security = off; \
         SELECT pg_catalog.set_config('jit', 'off', true) WHERE pg_catalog.current_setting('jit', true) IS NOT NULL"
    );
    let context = "finding the rows that hold the enum labels a DELETE FROM pg_enum deletes";
    let begin = async || {
        let begun = client.batch_execute(&read_only).await;
        if begun.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        begun.map_err(Error::database(context))
    };
    begin().await?;
    let found = client.query(&columns, &[]).await;
    (client.batch_execute("ROLLBACK").await).map_err(Error::database(context))?;
    let mut held = Held {
        columns: Vec::new(),
        untold: false,
    };
    let found = match found {
        Ok(rows) => rows,
        Err(error) if error.as_db_error().is_some() => {
            warn!(error = %error, "the enum labels a DELETE FROM pg_enum deletes could not be told");
            held.untold = true;
            return Ok(held);
        }
        Err(error) => return Err(Error::database(context)(error)),
    };
    let started = std::time::Instant::now();
    for row in found {
        if started.elapsed() > LABELS_BUDGET {
            warn!(
                budget_s = LABELS_BUDGET.as_secs(),
                "the rows holding the enum labels a DELETE FROM pg_enum deletes were not all counted in time"
            );
            held.untold = true;
            break;
        }
        let table = Name {
            schema: Some(row.get(0)),
            name: row.get(1),
        };
        let column: String = row.get(2);
        let (partitioned, how, labels): (bool, &str, Vec<String>) =
            (row.get(3), row.get(4), row.get(5));
        let name = Name::bare(&column).sql();
        // A table's children under inheritance are listed on their own; a partitioned
        // table's partitions are not, and ONLY would read none of them.
        let only = if partitioned { "" } else { "ONLY " };
        let (holds, params): (String, &[(&(dyn ToSql + Sync), Type)]) = match how {
            "e" => (
                format!("{name}::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1)"),
                &[(&labels, Type::TEXT_ARRAY)],
            ),
            "a" => (
                format!("{name}::pg_catalog.text[] OPERATOR(pg_catalog.&&) $1"),
                &[(&labels, Type::TEXT_ARRAY)],
            ),
            // IS NOT NULL of a composite value asks that every field be set.
            _ => (format!("{name} IS DISTINCT FROM NULL"), &[]),
        };
        let count = format!(
            "SELECT pg_catalog.count(*) FROM (SELECT FROM {only}{table} WHERE {holds} LIMIT {VALUES_CAP}) s"
        );
        begin().await?;
        let counted = client.query_typed(&count, params).await;
        (client.batch_execute("ROLLBACK").await).map_err(Error::database(context))?;
        let count = match counted {
            Ok(rows) => rows.first().map_or(0, |row| row.get::<_, i64>(0)),
            // Out of time, or a table the run may not read: it may hold them.
            Err(error) if error.as_db_error().is_some() => {
                warn!(table = %table, column, error = %error, "rows holding a deleted enum label not counted; taken as at least one");
                held.columns.push((table, column, (1, RowCount::AtLeast)));
                continue;
            }
            Err(error) => return Err(Error::database(context)(error)),
        };
        let row_count = match how {
            "e" | "a" => RowCount::capped(count, VALUES_CAP),
            _ => RowCount::Estimated,
        };
        if count > 0 {
            held.columns.push((table, column, (count, row_count)));
        }
    }
    Ok(held)
}

/// A table, or a column of one, that a DROP or TRUNCATE ... CASCADE takes with the object it
/// names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lost {
    pub table: Name,
    pub column: Option<String>,
}

/// What each of `objects` takes with it when dropped with CASCADE (or, for
/// [`Dropped::Referenced`], emptied), in their order: the tables and columns holding data that
/// depend on it in `pg_depend` (the graph the server's own DROP follows: a schema's tables, the
/// columns of a type or of a domain over it, an extension's tables, materialized views over a
/// table), or that reference it through foreign keys, at any depth. One query for all; an
/// object that does not exist takes nothing.
pub(super) async fn dependents(
    client: &Client,
    objects: &[&Dropped],
) -> Result<Vec<Vec<Lost>>, Error> {
    let mut found = vec![Vec::new(); objects.len()];
    if objects.is_empty() {
        return Ok(found);
    }
    let (kinds, names): (Vec<&str>, Vec<String>) = objects
        .iter()
        .map(|object| match object {
            Dropped::Relation(name) => ("r", name.sql()),
            Dropped::Schema(schema) => ("s", Name::bare(schema).sql()),
            Dropped::Type(name) => ("t", name.sql()),
            Dropped::Extension(name) => ("e", name.clone()),
            Dropped::Referenced(name) => ("f", name.sql()),
            Dropped::Function { name, args: None } => ("q", name.sql()),
            Dropped::Function {
                name,
                args: Some(_),
            } => ("p", name.sql()),
            Dropped::Owned(Role::Named(role)) => ("o", role.clone()),
            Dropped::Owned(Role::Current) => ("o", String::new()),
            Dropped::Owned(Role::Session) => ("O", String::new()),
        })
        .unzip();
    // A function's argument types, one row each: (its object's number, the type).
    let (of, args): (Vec<i64>, Vec<&str>) = (objects.iter().enumerate())
        .flat_map(|(i, object)| match object {
            Dropped::Function {
                args: Some(args), ..
            } => args.iter().map(|a| (i as i64 + 1, a.as_str())).collect(),
            _ => Vec::new(),
        })
        .unzip();
    let rows = client
        .query_typed(
            DEPENDENTS,
            &[
                (&kinds, Type::TEXT_ARRAY),
                (&names, Type::TEXT_ARRAY),
                (&of, Type::INT8_ARRAY),
                (&args, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(Error::database(
            "finding what a CASCADE drops for the hazard rules",
        ))?;
    for row in rows {
        let (origin, schema, table, column): (i64, String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let Some(lost) = usize::try_from(origin - 1)
            .ok()
            .and_then(|i| found.get_mut(i))
        else {
            continue;
        };
        lost.push(Lost {
            table: Name {
                schema: Some(schema),
                name: table,
            },
            column,
        });
    }
    // A column of a table that goes whole is not lost on its own.
    for lost in &mut found {
        let whole: Vec<Name> = (lost.iter())
            .filter(|l| l.column.is_none())
            .map(|l| l.table.clone())
            .collect();
        lost.retain(|l| l.column.is_none() || !whole.contains(&l.table));
        lost.sort_by(|a, b| (a.table.sql(), &a.column).cmp(&(b.table.sql(), &b.column)));
        lost.dedup();
    }
    Ok(found)
}

/// The query of [`dependents`]: `$1` kinds (`r` relation, `s` schema, `t` type, `e` extension,
/// `f` a table TRUNCATE empties, `p` a function with its argument types, `q` one without, `o`
/// what a role owns (empty: the current user's), `O` what the session user owns), `$2` their
/// names as SQL writes them (an extension's and a role's bare); `$3` and `$4` the argument types,
/// each with the number of its function. Each type is looked up on its own first: a type that
/// does not exist makes `to_regprocedure` raise an error, not answer NULL.
/// Dependencies followed: normal (what CASCADE adds), automatic, internal (a table's row type,
/// a type's array type), extension membership and partitions. And up from an internal part
/// reached on the way, as the server's DROP goes: a view's or a materialized view's rule that
/// uses what is dropped takes its view, a generated column's expression its column.
const DEPENDENTS: &str = "
WITH RECURSIVE start(origin, kind, classid, objid) AS (
    SELECT s.i, s.k,
           CASE s.k WHEN 's' THEN 'pg_catalog.pg_namespace'::regclass
                    WHEN 't' THEN 'pg_catalog.pg_type'::regclass
                    WHEN 'e' THEN 'pg_catalog.pg_extension'::regclass
                    WHEN 'p' THEN 'pg_catalog.pg_proc'::regclass
                    WHEN 'q' THEN 'pg_catalog.pg_proc'::regclass
                    WHEN 'o' THEN 'pg_catalog.pg_authid'::regclass
                    WHEN 'O' THEN 'pg_catalog.pg_authid'::regclass
                    ELSE 'pg_catalog.pg_class'::regclass END::oid,
           CASE s.k WHEN 's' THEN pg_catalog.to_regnamespace(s.n)::oid
                    WHEN 't' THEN pg_catalog.to_regtype(s.n)::oid
                    WHEN 'e' THEN (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = s.n)
                    WHEN 'q' THEN pg_catalog.to_regproc(s.n)::oid
                    WHEN 'o' THEN (SELECT r.oid FROM pg_catalog.pg_roles r
                                    WHERE r.rolname = coalesce(nullif(s.n, ''), current_user))
                    WHEN 'O' THEN (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = session_user)
                    WHEN 'p' THEN
                        (SELECT CASE WHEN pg_catalog.count(*) = pg_catalog.count(pg_catalog.to_regtype(a.t))
                                THEN pg_catalog.to_regprocedure(s.n || '(' || coalesce(pg_catalog.string_agg(
                                    pg_catalog.to_regtype(a.t)::text, ',' ORDER BY a.at), '') || ')')::oid END
                           FROM unnest($3::int8[], $4::text[]) WITH ORDINALITY AS a(o, t, at)
                          WHERE a.o = s.i)
                    ELSE pg_catalog.to_regclass(s.n)::oid END
      FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS s(k, n, i)
), dropped(origin, classid, objid, objsubid, named) AS (
    SELECT origin, classid, objid, 0, true FROM start WHERE kind <> 'f' AND objid IS NOT NULL
  UNION
    SELECT p.origin, x.classid, x.objid, x.objsubid, false
      FROM dropped p
      CROSS JOIN LATERAL (
          SELECT d.classid, d.objid, d.objsubid
            FROM pg_catalog.pg_depend d
           WHERE d.refclassid = p.classid AND d.refobjid = p.objid
             AND (p.objsubid = 0 OR d.refobjsubid = p.objsubid)
             AND d.deptype IN ('n', 'a', 'i', 'e', 'x', 'P')
        UNION ALL
          -- A role's objects in this database (DROP OWNED): what it owns, from pg_shdepend.
          SELECT sd.classid, sd.objid, sd.objsubid
            FROM pg_catalog.pg_shdepend sd
           WHERE p.classid = 'pg_catalog.pg_authid'::regclass
             AND sd.refclassid = 'pg_catalog.pg_authid'::regclass AND sd.refobjid = p.objid
             AND sd.deptype = 'o'
             AND sd.dbid = (SELECT d.oid FROM pg_catalog.pg_database d
                             WHERE d.datname = pg_catalog.current_database())
        UNION ALL
          -- The server refuses to drop a named internal part or extension member; one
          -- reached takes its owner: the view of a rule, the extension of a member (with
          -- every other member, tables too).
          SELECT d.refclassid, d.refobjid, d.refobjsubid
            FROM pg_catalog.pg_depend d
           WHERE NOT p.named AND d.classid = p.classid AND d.objid = p.objid
             AND (p.objsubid = 0 OR d.objsubid = p.objsubid)
             AND d.deptype IN ('i', 'e')
      ) x
), emptied(origin, objid) AS (
    SELECT origin, objid FROM start WHERE kind = 'f' AND objid IS NOT NULL
  UNION
    SELECT e.origin, c.conrelid
      FROM emptied e
      JOIN pg_catalog.pg_constraint c ON c.confrelid = e.objid AND c.contype = 'f'
), reached(origin, objid, objsubid) AS (
    SELECT origin, objid, objsubid FROM dropped
     WHERE classid = 'pg_catalog.pg_class'::regclass
  UNION ALL
    SELECT origin, objid, 0 FROM emptied
)
SELECT x.origin, n.nspname::text, c.relname::text, a.attname::text
  FROM reached x
  JOIN pg_catalog.pg_class c ON c.oid = x.objid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = x.objsubid
 WHERE c.relkind IN ('r', 'p', 'm')
   AND (x.objsubid = 0 OR (a.attnum > 0 AND NOT a.attisdropped))
   AND NOT EXISTS (SELECT 1 FROM start s WHERE s.origin = x.origin AND s.objid = x.objid)";

/// What changing a column's type does to the table and its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retype {
    /// The same type, or one that only widens it: PostgreSQL changes the catalog alone.
    Free,
    /// A rewrite of the table, every value converted as it was.
    Rewrite,
    /// A rewrite that rounds or cuts values (what, for the finding): the old ones are lost.
    Lossy(&'static str),
}

/// What changing `column` of `table` to the type `to` (name, modifiers) does; a rewrite when
/// either is missing or the change is not known to be free.
pub(super) async fn retype(
    client: &Client,
    table: &Name,
    column: &str,
    to: &(String, Vec<i32>),
    zone_kept: bool,
) -> Result<Retype, Error> {
    let rows = client
        .query_typed(
            "SELECT a.atttypid::regtype::text, a.atttypmod,
                    pg_catalog.to_regtype($3)::text,
                    pg_catalog.current_setting('TimeZone'),
                    pg_catalog.current_setting('server_version_num')::int4
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = $2
                AND NOT a.attisdropped",
            &[
                (&table.sql(), Type::TEXT),
                (&column, Type::TEXT),
                (&to.0, Type::TEXT),
            ],
        )
        .await
        .map_err(Error::database(
            "reading a column's type for the hazard rules",
        ))?;
    let Some(row) = rows.first() else {
        return Ok(Retype::Rewrite);
    };
    let (from, modifier, resolved): (String, i32, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    let (zone, version): (String, i32) = (row.get(3), row.get(4));
    // PostgreSQL 12 and later turn a timestamp into a timestamptz (or back) in the catalog
    // alone when the session's time zone is UTC, as Cloud SQL's is unless set otherwise: the
    // stored values are the same. Not when a statement of the plan changed the zone first.
    let utc = zone_kept && version >= 120_000 && is_utc(&zone);
    if widening(&from, modifier, &to.0, &to.1)
        || (resolved.as_deref() == Some(from.as_str()) && to.1.is_empty() && modifier == -1)
        || (utc && zone_flip(&from, modifier, resolved.as_deref(), &to.1))
    {
        return Ok(Retype::Free);
    }
    Ok(
        match resolved.and_then(|to_name| lossy(&from, modifier, &to_name, &to.1)) {
            Some(what) => Retype::Lossy(what),
            None => Retype::Rewrite,
        },
    )
}

/// Why adding a column of the type `of_type`, with a default calling `calls`, rewrites the
/// table, or `None` when it does not: PostgreSQL writes every row when the type is a domain
/// with constraints, its own or a base domain's (to check them, even with no default), or
/// when the default calls a volatile function (a value per row); without a default of its
/// own (`own_default`) the column takes the domain's, read from the catalog and weighed the
/// same way. A function name with several volatilities among its overloads counts as
/// volatile. Unqualified names resolve along `path` (a migration's own search path, after
/// `pg_catalog`) before the run's; a function of that name in any schema of either counts.
pub(super) async fn add_column_rewrites(
    client: &Client,
    of_type: Option<&str>,
    calls: &[(Option<String>, String)],
    own_default: bool,
    path: &[String],
) -> Result<Option<&'static str>, Error> {
    const DOMAIN_DEFAULT: &str = "ADD COLUMN of a domain whose default calls a volatile function";
    // The schemas an unqualified type name is looked for in, in order, before the run's
    // search path: pg_catalog first, as the server does when the path does not name it.
    let type_path: Vec<&str> = match of_type {
        Some(name) if !path.is_empty() && !name.contains('.') => std::iter::once("pg_catalog")
            .chain(path.iter().map(String::as_str))
            .collect(),
        _ => Vec::new(),
    };
    let looked = match of_type {
        None => Vec::new(),
        Some(_) => client
            .query_typed(
                "WITH RECURSIVE domain AS (
                 SELECT t.oid, t.typbasetype, t.typnotnull, t.typdefault, 1 AS depth
                   FROM pg_catalog.pg_type t
                  WHERE t.oid = coalesce(
                          (SELECT pg_catalog.to_regtype(pg_catalog.quote_ident(p.s) || '.' || $1)
                             FROM unnest($2::text[]) WITH ORDINALITY AS p(s, o)
                            WHERE pg_catalog.to_regtype(pg_catalog.quote_ident(p.s) || '.' || $1)
                                  IS NOT NULL
                            ORDER BY p.o LIMIT 1),
                          pg_catalog.to_regtype($1))
                    AND t.typtype = 'd'
                 UNION ALL
                 SELECT b.oid, b.typbasetype, b.typnotnull, b.typdefault, d.depth + 1
                   FROM domain d JOIN pg_catalog.pg_type b ON b.oid = d.typbasetype
                  WHERE b.typtype = 'd')
             SELECT EXISTS (SELECT FROM domain d
                             WHERE d.typnotnull OR EXISTS (SELECT FROM pg_catalog.pg_constraint c
                                                            WHERE c.contypid = d.oid)),
                    (SELECT d.typdefault FROM domain d WHERE d.typdefault IS NOT NULL
                      ORDER BY d.depth LIMIT 1)",
                &[(&of_type, Type::TEXT), (&type_path, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(Error::database(
                "reading a new column's type for the hazard rules",
            ))?,
    };
    let (checked, domain_default): (bool, Option<String>) = looked
        .first()
        .map_or((false, None), |r| (r.get(0), r.get(1)));
    if checked {
        return Ok(Some("ADD COLUMN of a domain with constraints"));
    }
    let mut from_domain = Vec::new();
    if let Some(default) = domain_default.filter(|_| !own_default) {
        // A default that no longer parses here (a newer server's syntax) is weighed as one
        // calling something volatile: the rule cannot tell.
        match super::classify::default_calls(&default) {
            Some((false, calls)) => from_domain = calls,
            _ => return Ok(Some(DOMAIN_DEFAULT)),
        }
    }
    // The column's own default calls `calls`; without one, it takes the domain's.
    let (calls, what) = match own_default {
        true => (
            calls,
            "ADD COLUMN with a default calling a volatile function",
        ),
        false => (from_domain.as_slice(), DOMAIN_DEFAULT),
    };
    if calls.is_empty() {
        return Ok(None);
    }
    let (schemas, names): (Vec<String>, Vec<String>) = (calls.iter())
        .map(|(schema, name)| (schema.clone().unwrap_or_default(), name.clone()))
        .unzip();
    let rows = client
        .query_typed(
            "SELECT FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
               JOIN unnest($1::text[], $2::text[]) AS f(schema, name) ON p.proname = f.name
              WHERE p.provolatile = 'v'
                AND (f.schema = n.nspname
                     OR f.schema = '' AND (pg_catalog.pg_function_is_visible(p.oid)
                                           OR n.nspname = ANY ($3::text[])))
              LIMIT 1",
            &[
                (&schemas, Type::TEXT_ARRAY),
                (&names, Type::TEXT_ARRAY),
                (&path, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(Error::database(
            "reading a new column's default for the hazard rules",
        ))?;
    Ok((!rows.is_empty()).then_some(what))
}

/// Whether `column` of `table` needs no read to be made NOT NULL: it is already, or a
/// validated `CHECK (column IS NOT NULL)` proves it holds no NULL (the documented way to
/// make a big table's column NOT NULL without blocking its writes for the read).
pub(super) async fn proven_not_null(
    client: &Client,
    table: &Name,
    column: &str,
) -> Result<bool, Error> {
    let rows = client
        .query_typed(
            "SELECT a.attnotnull OR EXISTS (
                    SELECT FROM pg_catalog.pg_constraint c
                     WHERE c.conrelid = a.attrelid AND c.contype = 'c' AND c.convalidated
                       AND pg_catalog.pg_get_constraintdef(c.oid)
                           = 'CHECK ((' || pg_catalog.quote_ident(a.attname) || ' IS NOT NULL))')
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = $2
                AND NOT a.attisdropped",
            &[(&table.sql(), Type::TEXT), (&column, Type::TEXT)],
        )
        .await
        .map_err(Error::database(
            "reading a column's constraints for the hazard rules",
        ))?;
    Ok(rows.first().is_some_and(|row| row.get(0)))
}

/// The time zones whose offset from UTC is zero and always was: PostgreSQL's test for a
/// timestamp conversion without a rewrite (`TimestampTimestampTzRequiresRewrite`) asks for a
/// zone with one offset, zero. `Europe/London` or `Africa/Abidjan` had others.
const UTC_ZONES: [&str; 18] = [
    "UTC",
    "UCT",
    "Universal",
    "Zulu",
    "GMT",
    "GMT0",
    "GMT+0",
    "GMT-0",
    "Greenwich",
    "Etc/UTC",
    "Etc/UCT",
    "Etc/Universal",
    "Etc/Zulu",
    "Etc/GMT",
    "Etc/GMT0",
    "Etc/GMT+0",
    "Etc/GMT-0",
    "Etc/Greenwich",
];

/// Whether the `TimeZone` setting `zone` is UTC under any of its names.
fn is_utc(zone: &str) -> bool {
    UTC_ZONES.iter().any(|utc| utc.eq_ignore_ascii_case(zone))
}

/// Whether `from` (with its modifier) to `to` (resolved, with the statement's modifiers) is
/// `timestamp` to `timestamptz` or back, keeping at least its fractional digits.
fn zone_flip(from: &str, from_mod: i32, to: Option<&str>, modifiers: &[i32]) -> bool {
    const TIMESTAMPS: [&str; 2] = ["timestamp without time zone", "timestamp with time zone"];
    let Some(to) = to else {
        return false;
    };
    let kept = match modifiers {
        [] => true,
        [digits] => from_mod != -1 && *digits >= from_mod,
        _ => false,
    };
    from != to && TIMESTAMPS.contains(&from) && TIMESTAMPS.contains(&to) && kept
}

/// The changes PostgreSQL makes without a rewrite (its cast is binary, and the new length or
/// precision holds every old value): `from` as `regtype` prints it with its `atttypmod`, `to`
/// as the parser names it with its modifiers.
fn widening(from: &str, from_mod: i32, to: &str, modifiers: &[i32]) -> bool {
    let to_mod = match (to, modifiers) {
        (_, []) => -1,
        ("varchar" | "varbit", [n]) if *n > 0 => n + 4,
        ("numeric", [p]) if *p > 0 => (p << 16) + 4,
        ("numeric", [p, s]) if *p > 0 && *s >= 0 => ((p << 16) | s) + 4,
        _ => return false,
    };
    let longer = to_mod == -1 || (from_mod != -1 && to_mod >= from_mod);
    match (from, to) {
        ("character varying", "varchar") | ("bit varying", "varbit") => longer,
        ("character varying" | "text", "text") => true,
        ("text", "varchar") | ("cidr", "inet") => to_mod == -1,
        ("numeric", "numeric") => {
            let scale = |m: i32| (m - 4) & 0xffff;
            let precision = |m: i32| (m - 4) >> 16;
            to_mod == -1
                || (from_mod != -1
                    && scale(to_mod) == scale(from_mod)
                    && precision(to_mod) >= precision(from_mod))
        }
        _ => false,
    }
}

/// The conversions PostgreSQL makes without an error that change the values themselves,
/// both types as `regtype` prints them (`to` with the statement's modifiers): the old
/// values are gone once it commits. A conversion that can only fail (a shorter `varchar`, a
/// smaller integer) loses nothing: the statement stops instead.
fn lossy(from: &str, from_mod: i32, to: &str, modifiers: &[i32]) -> Option<&'static str> {
    const WHOLE: [&str; 3] = ["smallint", "integer", "bigint"];
    const FRACTIONAL: [&str; 4] = ["numeric", "real", "double precision", "money"];
    const TIMESTAMPS: [&str; 2] = ["timestamp without time zone", "timestamp with time zone"];
    if WHOLE.contains(&to) && FRACTIONAL.contains(&from) {
        return Some("ALTER COLUMN ... TYPE to a whole number, rounding each value");
    }
    if (to == "real" && ["double precision", "numeric", "integer", "bigint"].contains(&from))
        || (to == "double precision" && ["numeric", "bigint"].contains(&from))
    {
        return Some("ALTER COLUMN ... TYPE to a float, rounding values to its precision");
    }
    if to == "date" && TIMESTAMPS.contains(&from) {
        return Some("ALTER COLUMN ... TYPE date, dropping each value's time of day");
    }
    if to.starts_with("time ") && (TIMESTAMPS.contains(&from) || from == "date") {
        return Some("ALTER COLUMN ... TYPE time, dropping each value's date");
    }
    if to == "numeric" {
        // numeric(p) keeps no fraction; numeric(p, s) keeps s digits of it.
        let scale = match modifiers {
            [_] => Some(0),
            [_, s] => Some(*s),
            _ => None,
        };
        let from_scale = match from {
            "numeric" if from_mod != -1 => Some((from_mod - 4) & 0xffff),
            "numeric" | "real" | "double precision" => None,
            _ => return None,
        };
        if let Some(scale) = scale
            && from_scale.is_none_or(|from_scale| scale < from_scale)
        {
            return Some("ALTER COLUMN ... TYPE numeric with fewer decimals, rounding each value");
        }
        return None;
    }
    // timestamp(p), time(p), interval(p): fractional seconds kept to p digits (6 unless given).
    let precise = TIMESTAMPS.contains(&to) || to.starts_with("time ") || to == "interval";
    if precise && let [p] = modifiers {
        let from_precision = match from_mod {
            -1 => 6,
            m => m & 0xffff,
        };
        let same_family = from == to || (TIMESTAMPS.contains(&to) && TIMESTAMPS.contains(&from));
        if same_family && *p < from_precision {
            return Some(
                "ALTER COLUMN ... TYPE with fewer digits of a second, rounding each value",
            );
        }
    }
    None
}

/// How long the count of a dropped column's values may read the table.
const COUNT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The first column of the first row of a simple query's answer, as a number.
fn first_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<i64> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::{is_utc, lossy, widening, zone_flip};

    #[test]
    fn a_timestamp_changes_zone_in_the_catalog_alone_under_utc_keeping_its_digits() {
        const PLAIN: &str = "timestamp without time zone";
        const ZONED: &str = "timestamp with time zone";
        for (from, modifier, to, modifiers, free) in [
            (PLAIN, -1, Some(ZONED), &[][..], true),
            (ZONED, -1, Some(PLAIN), &[], true),
            (PLAIN, 3, Some(ZONED), &[3], true),
            (PLAIN, 3, Some(ZONED), &[6], true),
            (PLAIN, 3, Some(ZONED), &[], true),
            (PLAIN, 6, Some(ZONED), &[3], false),
            (PLAIN, -1, Some(ZONED), &[3], false),
            (PLAIN, -1, Some(PLAIN), &[], false),
            (PLAIN, -1, Some("date"), &[], false),
            (PLAIN, -1, None, &[], false),
        ] {
            assert_eq!(
                zone_flip(from, modifier, to, modifiers),
                free,
                "{from}({modifier}) to {to:?}{modifiers:?}"
            );
        }
        for zone in ["UTC", "utc", "Etc/UTC", "GMT", "Zulu"] {
            assert!(is_utc(zone), "{zone}");
        }
        for zone in [
            "Europe/London",
            "Africa/Abidjan",
            "America/New_York",
            "UTC+1",
            "",
        ] {
            assert!(!is_utc(zone), "{zone}");
        }
    }

    #[test]
    fn a_type_change_that_rounds_or_cuts_values_is_lossy() {
        let numeric_10_2 = (10 << 16 | 2) + 4;
        for (from, modifier, to, modifiers, is_lossy) in [
            ("numeric", -1, "integer", &[][..], true),
            ("double precision", -1, "bigint", &[], true),
            ("numeric", numeric_10_2, "numeric", &[10, 0], true),
            ("numeric", numeric_10_2, "numeric", &[12], true),
            ("numeric", -1, "numeric", &[12, 2], true),
            ("numeric", numeric_10_2, "numeric", &[12, 2], false),
            ("numeric", numeric_10_2, "numeric", &[12, 4], false),
            ("integer", -1, "numeric", &[12, 2], false),
            ("timestamp with time zone", -1, "date", &[], true),
            (
                "timestamp without time zone",
                -1,
                "time without time zone",
                &[],
                true,
            ),
            (
                "timestamp with time zone",
                -1,
                "timestamp with time zone",
                &[0],
                true,
            ),
            (
                "timestamp with time zone",
                3,
                "timestamp with time zone",
                &[6],
                false,
            ),
            ("double precision", -1, "real", &[], true),
            ("integer", -1, "bigint", &[], false),
            ("bigint", -1, "integer", &[], false),
            ("text", -1, "character varying", &[3], false),
            ("integer", -1, "text", &[], false),
            ("date", -1, "timestamp with time zone", &[], false),
        ] {
            assert_eq!(
                lossy(from, modifier, to, modifiers).is_some(),
                is_lossy,
                "{from}({modifier}) -> {to}{modifiers:?}"
            );
        }
    }

    #[test]
    fn only_a_widening_type_change_is_free() {
        // varchar(100) is atttypmod 104; numeric(10,2) is (10 << 16 | 2) + 4.
        let numeric_10_2 = (10 << 16 | 2) + 4;
        for (from, modifier, to, modifiers, free) in [
            ("character varying", 104, "varchar", &[200][..], true),
            ("character varying", 104, "varchar", &[], true),
            ("character varying", 104, "varchar", &[100], true),
            ("character varying", 104, "varchar", &[50], false),
            ("character varying", -1, "varchar", &[50], false),
            ("character varying", 104, "text", &[], true),
            ("text", -1, "varchar", &[], true),
            ("text", -1, "varchar", &[10], false),
            ("numeric", numeric_10_2, "numeric", &[12, 2], true),
            ("numeric", numeric_10_2, "numeric", &[12, 3], false),
            ("numeric", numeric_10_2, "numeric", &[8, 2], false),
            ("numeric", numeric_10_2, "numeric", &[], true),
            ("numeric", -1, "numeric", &[12, 2], false),
            ("integer", -1, "int8", &[], false),
            ("cidr", -1, "inet", &[], true),
        ] {
            assert_eq!(
                widening(from, modifier, to, modifiers),
                free,
                "{from}({modifier}) -> {to}{modifiers:?}"
            );
        }
    }
}
