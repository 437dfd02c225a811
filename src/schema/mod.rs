//! The schema of a database as a value: read from the catalogs in one query, compared
//! (`diff`), and printed as deterministic SQL-like text (`text`).
//!
//! What it holds is what a migration can change and a person would review: schemas, tables
//! and their columns, constraints, indexes (with their validity), views, sequences, functions
//! and procedures, triggers, extended statistics (`CREATE STATISTICS`), rules, types,
//! collations, extensions, event triggers, publications and row-level security, and the
//! comments on them. Left out: the history table, objects an extension owns (the extension
//! stands for them), owners and grants (unless asked for), the comments on schemas and
//! extensions (the `public` schema's and an extension's come from the server and the
//! extension), and anything volatile (OIDs, a sequence's current value, the planner's
//! statistics), so that two databases migrated the same way read the same.

mod diff;
mod text;

use std::collections::BTreeMap;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

pub use diff::{Change, Diff, enum_values, literal_value, split_name};

use crate::error::Error;
use crate::history::Table;

/// What kind of object an entry is, in the order the text prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Extension,
    Schema,
    /// A collation (`CREATE COLLATION`), named with its schema.
    Collation,
    Type,
    Sequence,
    Table,
    Column,
    Constraint,
    Index,
    Trigger,
    Policy,
    /// An extended statistics object (`CREATE STATISTICS`), named with its schema.
    Statistics,
    /// A rule (`CREATE RULE`), other than the one that makes a view a view.
    Rule,
    View,
    MaterializedView,
    Function,
    Procedure,
    /// An event trigger (`CREATE EVENT TRIGGER`), the database's own.
    EventTrigger,
    /// A publication for logical replication, with the tables it publishes.
    Publication,
    /// A cast between two types (`CREATE CAST`), named `(source AS target)`.
    Cast,
    /// An operator (`CREATE OPERATOR`), named with its schema and argument types.
    Operator,
    /// A text search dictionary, named with its schema.
    TextSearchDictionary,
    /// A text search configuration, named with its schema: its parser and each token type's
    /// dictionaries.
    TextSearchConfiguration,
    /// A foreign-data wrapper not made by an extension.
    ForeignDataWrapper,
    /// A foreign server (`CREATE SERVER`).
    ForeignServer,
    /// A user mapping: the names of its options only, whose values hold passwords.
    UserMapping,
    /// The comment on an object whose own definition does not carry it (tables', columns'
    /// and views' do): named by the object's kind and identity, `index public.idx_prompt`.
    Comment,
    /// An object's owner and grants: only when asked for ([`Options::privileges`]).
    Privileges,
}

impl Kind {
    /// As the catalog query names it.
    fn parse(text: &str) -> Option<Kind> {
        Some(match text {
            "extension" => Kind::Extension,
            "schema" => Kind::Schema,
            "collation" => Kind::Collation,
            "type" => Kind::Type,
            "sequence" => Kind::Sequence,
            "table" => Kind::Table,
            "column" => Kind::Column,
            "constraint" => Kind::Constraint,
            "index" => Kind::Index,
            "trigger" => Kind::Trigger,
            "policy" => Kind::Policy,
            "statistics" => Kind::Statistics,
            "rule" => Kind::Rule,
            "view" => Kind::View,
            "materialized view" => Kind::MaterializedView,
            "function" => Kind::Function,
            "procedure" => Kind::Procedure,
            "event trigger" => Kind::EventTrigger,
            "publication" => Kind::Publication,
            "cast" => Kind::Cast,
            "operator" => Kind::Operator,
            "text search dictionary" => Kind::TextSearchDictionary,
            "text search configuration" => Kind::TextSearchConfiguration,
            "foreign-data wrapper" => Kind::ForeignDataWrapper,
            "server" => Kind::ForeignServer,
            "user mapping" => Kind::UserMapping,
            "comment" => Kind::Comment,
            "privileges" => Kind::Privileges,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Extension => "extension",
            Kind::Schema => "schema",
            Kind::Collation => "collation",
            Kind::Type => "type",
            Kind::Sequence => "sequence",
            Kind::Table => "table",
            Kind::Column => "column",
            Kind::Constraint => "constraint",
            Kind::Index => "index",
            Kind::Trigger => "trigger",
            Kind::Policy => "policy",
            Kind::Statistics => "statistics",
            Kind::Rule => "rule",
            Kind::View => "view",
            Kind::MaterializedView => "materialized view",
            Kind::Function => "function",
            Kind::Procedure => "procedure",
            Kind::EventTrigger => "event trigger",
            Kind::Publication => "publication",
            Kind::Cast => "cast",
            Kind::Operator => "operator",
            Kind::TextSearchDictionary => "text search dictionary",
            Kind::TextSearchConfiguration => "text search configuration",
            Kind::ForeignDataWrapper => "foreign-data wrapper",
            Kind::ForeignServer => "server",
            Kind::UserMapping => "user mapping",
            Kind::Comment => "comment",
            Kind::Privileges => "privileges",
        }
    }
}

/// Which object: its kind, the table it belongs to (columns, constraints, indexes, triggers,
/// policies; empty for the rest), and its name, quoted as SQL would need it. Schema-level
/// names are schema-qualified; a function's carries its argument types.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: Kind,
    pub table: String,
    pub name: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.kind, self.table.is_empty()) {
            (Kind::Column, false) => write!(f, "column {}.{}", self.table, self.name),
            (kind, false) => write!(f, "{} {} on {}", kind.as_str(), self.name, self.table),
            (Kind::Privileges, true) => write!(f, "privileges on {}", self.name),
            (Kind::Comment, true) => write!(f, "comment on {}", self.name),
            (kind, true) => write!(f, "{} {}", kind.as_str(), self.name),
        }
    }
}

/// One object as the catalogs describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The column's number in its table (0 for everything else): the order a table's columns
    /// print in. Compared separately from the definition, as a note.
    pub position: i32,
    /// What the object is: a column's type and modifiers, a constraint's or an index's
    /// definition, a function's `CREATE FUNCTION`, a table's options.
    pub definition: String,
}

/// The schema of one database. Ordered maps, so that printing and comparing never depend on
/// the order the server returned rows in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub objects: BTreeMap<Key, Object>,
}

impl Snapshot {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The objects of `kind`.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = (&Key, &Object)> {
        self.objects.iter().filter(move |(key, _)| key.kind == kind)
    }

    /// The objects that belong to `table` and are of `kind`; columns in their table's order.
    pub fn children(&self, table: &str, kind: Kind) -> Vec<(&Key, &Object)> {
        // Keys sort by kind, then table: a table's children of a kind are one run of them,
        // found without walking the rest (a diff asks this of every table).
        let first = Key {
            kind,
            table: table.to_string(),
            name: String::new(),
        };
        let mut children: Vec<_> = (self.objects.range(first..))
            .take_while(|(key, _)| key.kind == kind && key.table == table)
            .collect();
        children.sort_by_key(|(key, object)| (object.position, key.name.clone()));
        children
    }

    /// What changed from `self` (expected) to `actual`.
    pub fn diff(&self, actual: &Snapshot) -> Diff {
        diff::compare(self, actual)
    }

    /// The snapshot as SQL-like text, sorted and free of volatile values.
    pub fn text(&self) -> String {
        text::render(self)
    }
}

/// What a snapshot holds besides the schema itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Each schema's, table's, view's, sequence's, function's and type's owner and grants, a
    /// column's own grants and the default privileges (`ALTER DEFAULT PRIVILEGES`). Left out
    /// by default: they depend on who ran the migrations, not on the migrations.
    pub privileges: bool,
}

/// Reads the schema of the database `client` is connected to, without the history `table`
/// (schema-qualified).
pub async fn read(client: &Client, table: &Table, options: Options) -> Result<Snapshot, Error> {
    Reader::new(client, table, options).await?.read().await
}

/// Reads snapshots of one database again and again, as `test` does before and after every
/// step: the catalog query is prepared once, which saves the server planning it each time
/// (a third of a snapshot's cost on a database of 500 tables).
pub struct Reader<'a> {
    client: &'a Client,
    /// The catalog query for the server's version ([`catalog`]).
    query: String,
    statement: Statement,
    history: String,
    /// The schema `--history-table` named, when it named one.
    history_schema: Option<String>,
    privileges: bool,
}

const CONTEXT: &str = "reading the schema from the catalogs";

/// Prepares the catalog query without a statement timeout, as it runs (see
/// [`Reader::once`]): parsing it can outlast a `statement_timeout` set on the user or the
/// database for the bot. The prepared statement outlives the transaction.
async fn prepare(client: &Client, query: &str) -> Result<Statement, Error> {
    let (open, statement, close) = tokio::join!(
        client.batch_execute("BEGIN READ ONLY; SET LOCAL statement_timeout = 0"),
        client.prepare(query),
        client.batch_execute("COMMIT"),
    );
    open.map_err(Error::database(CONTEXT))?;
    let statement = statement.map_err(Error::database(CONTEXT))?;
    close.map_err(Error::database(CONTEXT))?;
    Ok(statement)
}

impl<'a> Reader<'a> {
    pub async fn new(
        client: &'a Client,
        table: &Table,
        options: Options,
    ) -> Result<Reader<'a>, Error> {
        let version = client
            .simple_query("SELECT pg_catalog.current_setting('server_version_num')")
            .await
            .map_err(Error::database(CONTEXT))?;
        let version = version.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
            _ => None,
        });
        let query = catalog(version.unwrap_or_default());
        let statement = prepare(client, &query).await?;
        Ok(Reader {
            client,
            query,
            statement,
            history: table.quoted().to_string(),
            history_schema: table.given_schema().map(str::to_string),
            privileges: options.privileges,
        })
    }

    /// One snapshot. A migration may have deallocated the prepared query (`DEALLOCATE ALL`,
    /// `DISCARD ALL`): then it is prepared again.
    pub async fn read(&mut self) -> Result<Snapshot, Error> {
        match self.once().await {
            Err(error) if error.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) => {
                self.statement = prepare(self.client, &self.query).await?;
                self.once().await.map_err(Error::database(CONTEXT))
            }
            result => result.map_err(Error::database(CONTEXT)),
        }
    }

    async fn once(&self) -> Result<Snapshot, tokio_postgres::Error> {
        // The deparsers leave out the schema of what the search path finds, so a definition
        // would depend on the session's search_path: pinned to pg_catalog, every name outside
        // it is schema-qualified, the same in every database and session. READ ONLY: reading
        // the schema never writes. Without a statement timeout: `--statement-timeout` bounds
        // migration statements, and on a big schema this read can take longer than they may.
        // The generic plan, always: with a custom one the server plans the query again for
        // every read (6 ms of a 15 ms read on 500 tables), since only a custom plan can leave
        // out the privileges branch that `$2` turns off, which the generic plan skips at run
        // time anyway; `test` on 500 migrations took 22.5 s instead of 18.2 (2,000 reads).
        // And no JIT: the planner's estimate for this many catalog joins can pass
        // `jit_above_cost`, and compiling the query then took 2.6 s of a 2.6 s read (a
        // database with two publications, PostgreSQL 15's defaults).
        // The three messages travel together; COMMIT ends the transaction (as a rollback)
        // also when the query failed.
        let client = self.client;
        let params: [&(dyn ToSql + Sync); 3] =
            [&self.history, &self.privileges, &self.history_schema];
        let (open, rows, close) = tokio::join!(
            client.batch_execute(
                "BEGIN READ ONLY; SET LOCAL search_path TO pg_catalog, pg_temp; \
                 SET LOCAL statement_timeout = 0; SET LOCAL plan_cache_mode = force_generic_plan; \
                 SET LOCAL jit = off"
            ),
            client.query(&self.statement, &params),
            client.batch_execute("COMMIT"),
        );
        open?;
        let rows = rows?;
        close?;
        let mut snapshot = Snapshot::default();
        for row in rows {
            let kind: &str = row.get(0);
            let Some(kind) = Kind::parse(kind) else {
                continue;
            };
            let key = Key {
                kind,
                table: row.get(1),
                name: row.get(2),
            };
            let object = Object {
                position: row.get::<_, i16>(3).into(),
                definition: row.get(4),
            };
            snapshot.objects.insert(key, object);
        }
        Ok(snapshot)
    }
}

/// [`CATALOG`] for a server of `version` (`server_version_num`): with a column's compression
/// from 14, which added it.
fn catalog(version: i32) -> String {
    let compression = match version >= 140000 {
        true => {
            "CASE a.attcompression WHEN 'p' THEN 'COMPRESSION pglz' WHEN 'l' THEN 'COMPRESSION lz4' END,"
        }
        false => "",
    };
    CATALOG.replace("/*compression*/", compression)
}

/// The catalog query: one row per object as (kind, table, name, position, definition), all
/// text built by the server's own deparsers (`pg_get_constraintdef`, `pg_get_indexdef`,
/// `pg_get_viewdef`, `pg_get_functiondef`, `pg_get_triggerdef`, `pg_get_expr`, `format_type`),
/// so a definition reads as PostgreSQL would dump it. `$1` is the history table, left out
/// with everything that belongs to it, and so is another tool's history table, known by its
/// columns (golang-migrate's, dbmate's, sqlx's, diesel's, Flyway's, as `baseline --from` reads them;
/// `relnatts` counts dropped columns too, so a table under its tool's own name is looked at
/// whatever it says: Harbor's migrations add a column to golang-migrate's and drop it again):
/// a database adopted from that tool keeps it, and no migration made it. System schemas and objects an extension created are
/// left out too. `$2` asks for owners and grants (columns' and default privileges too); the
/// default grants a new object has are spelled out, so a GRANT undone by a REVOKE reads as it
/// did before. Comments are read from `pg_description` directly: `obj_description` and
/// `col_description` are SQL functions the server runs as such for every row, a third of a
/// read's time (8.8 against 5.7 ms on 500 tables).
const CATALOG: &str = r#"
WITH ns AS (
    SELECT n.oid, n.nspname FROM pg_catalog.pg_namespace n
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                      AND d.objid = n.oid AND d.deptype = 'e')
),
member AS (
    SELECT d.classid, d.objid FROM pg_catalog.pg_depend d WHERE d.deptype = 'e'
),
-- The schema the history table was named in (`$3`, `ops` of `--history-table ops.history`):
-- `up` makes it for the table, and a database not migrated yet lacks it. It is never listed
-- itself (what it holds is, as anywhere), and its owner and grants only while it holds
-- nothing else (no other relation than the table's indexes, no function, no type but the
-- table's row type and its array). Only a schema so named: one the search path chose may
-- be another in the scratch database.
history_only AS (
    SELECT ns.oid FROM ns
    WHERE ns.nspname = $3::text
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.relnamespace = ns.oid
                      AND c.oid IS DISTINCT FROM pg_catalog.to_regclass($1)
                      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indexrelid = c.oid
                                      AND i.indrelid = pg_catalog.to_regclass($1)))
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p WHERE p.pronamespace = ns.oid)
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type t WHERE t.typnamespace = ns.oid
                      AND t.typrelid IS DISTINCT FROM pg_catalog.to_regclass($1)
                      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.oid = t.typelem
                                      AND e.typrelid = pg_catalog.to_regclass($1)))
),
rel AS (
    SELECT c.oid, c.relname, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
           c.relispartition, c.relpartbound, c.relowner, c.relacl, c.reloptions, c.relreplident, ns.nspname,
           pg_catalog.format('%I.%I', ns.nspname, c.relname) AS qualified
    FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
    WHERE c.oid IS DISTINCT FROM pg_catalog.to_regclass($1)
      AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND m.objid = c.oid)
      AND NOT (c.relkind = 'r' AND (c.relnatts IN (1, 2, 6, 10)
               OR c.relname IN ('schema_migrations', '_sqlx_migrations', '__diesel_schema_migrations', 'flyway_schema_history')) AND (
          SELECT pg_catalog.string_agg(a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
            FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          ) ~ '^(version bigint, dirty boolean|version character varying(\(\d+\))?|version character varying\(50\), run_on timestamp without time zone|version bigint, description text, installed_on timestamp with time zone, success boolean, checksum bytea, execution_time bigint|installed_rank integer, version character varying\(50\), description character varying\(200\), type character varying\(20\), script character varying\(1000\), checksum integer, installed_by character varying\(100\), installed_on timestamp without time zone, execution_time integer, success boolean)$')
)
SELECT 'extension', '', pg_catalog.quote_ident(e.extname), 0::int2,
       pg_catalog.format('WITH SCHEMA %I VERSION %L', n.nspname, e.extversion)
FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
UNION ALL
SELECT 'schema', '', pg_catalog.quote_ident(ns.nspname), 0::int2, '' FROM ns
WHERE ns.nspname IS DISTINCT FROM $3::text
UNION ALL
SELECT 'table', '', r.qualified, 0::int2,
       pg_catalog.concat_ws(' ',
           CASE WHEN r.relpersistence = 'u' THEN 'UNLOGGED' END,
           CASE WHEN r.relispartition THEN 'PARTITION OF ' ||
               (SELECT pg_catalog.string_agg(i.inhparent::pg_catalog.regclass::text, ', ') FROM pg_catalog.pg_inherits i WHERE i.inhrelid = r.oid)
               || ' ' || pg_catalog.pg_get_expr(r.relpartbound, r.oid)
             WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = r.oid) THEN 'INHERITS (' ||
               (SELECT pg_catalog.string_agg(i.inhparent::pg_catalog.regclass::text, ', ' ORDER BY i.inhseqno) FROM pg_catalog.pg_inherits i WHERE i.inhrelid = r.oid) || ')'
           END,
           CASE WHEN r.relkind = 'p' THEN 'PARTITION BY ' || pg_catalog.pg_get_partkeydef(r.oid) END,
           CASE WHEN r.relkind = 'f' THEN
               (SELECT 'FOREIGN SERVER ' || pg_catalog.quote_ident(fs.srvname)
                       || COALESCE(' OPTIONS (' || pg_catalog.array_to_string(ft.ftoptions, ', ') || ')', '')
                FROM pg_catalog.pg_foreign_table ft JOIN pg_catalog.pg_foreign_server fs ON fs.oid = ft.ftserver
                WHERE ft.ftrelid = r.oid) END,
           CASE WHEN r.relrowsecurity THEN 'ROW LEVEL SECURITY' END,
           CASE WHEN r.relforcerowsecurity THEN 'FORCE ROW LEVEL SECURITY' END,
           'WITH (' || pg_catalog.array_to_string(r.reloptions, ', ') || ')',
           CASE r.relreplident WHEN 'f' THEN 'REPLICA IDENTITY FULL' WHEN 'n' THEN 'REPLICA IDENTITY NOTHING'
               WHEN 'i' THEN 'REPLICA IDENTITY USING INDEX ' ||
                   (SELECT pg_catalog.quote_ident(ic.relname) FROM pg_catalog.pg_index i
                    JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = r.oid AND i.indisreplident) END,
           'COMMENT ' || pg_catalog.quote_literal((SELECT dsc.description FROM pg_catalog.pg_description dsc WHERE dsc.objoid = r.oid
               AND dsc.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND dsc.objsubid = 0)))
FROM rel r WHERE r.relkind IN ('r', 'p', 'f')
UNION ALL
SELECT 'column', r.qualified, pg_catalog.quote_ident(a.attname), a.attnum,
       pg_catalog.concat_ws(' ',
           pg_catalog.format_type(a.atttypid, a.atttypmod),
           CASE WHEN a.attcollation <> t.typcollation THEN 'COLLATE ' ||
               (SELECT pg_catalog.format('%I.%I', cn.nspname, co.collname) FROM pg_catalog.pg_collation co
                JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation) END,
           CASE WHEN a.attnotnull THEN 'NOT NULL' END,
           CASE WHEN a.attgenerated = 's' THEN 'GENERATED ALWAYS AS (' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) || ') STORED'
                WHEN a.atthasdef THEN 'DEFAULT ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) END,
           CASE a.attidentity WHEN 'a' THEN 'GENERATED ALWAYS AS IDENTITY' WHEN 'd' THEN 'GENERATED BY DEFAULT AS IDENTITY' END
               || COALESCE((SELECT ' (' || NULLIF(pg_catalog.concat_ws(' ',
                              CASE WHEN s.seqstart <> CASE WHEN s.seqincrement > 0 THEN s.seqmin ELSE s.seqmax END
                                   THEN 'START WITH ' || s.seqstart END,
                              CASE WHEN s.seqincrement <> 1 THEN 'INCREMENT BY ' || s.seqincrement END,
                              CASE WHEN s.seqmin <> CASE WHEN s.seqincrement > 0 THEN 1 ELSE bound.low END
                                   THEN 'MINVALUE ' || s.seqmin END,
                              CASE WHEN s.seqmax <> CASE WHEN s.seqincrement > 0 THEN bound.high ELSE -1 END
                                   THEN 'MAXVALUE ' || s.seqmax END,
                              CASE WHEN s.seqcache <> 1 THEN 'CACHE ' || s.seqcache END,
                              CASE WHEN s.seqcycle THEN 'CYCLE' END), '') || ')'
                   FROM pg_catalog.pg_depend d
                   JOIN pg_catalog.pg_sequence s ON s.seqrelid = d.objid
                   CROSS JOIN LATERAL (SELECT CASE s.seqtypid WHEN 'pg_catalog.int2'::pg_catalog.regtype THEN -32768
                                                               WHEN 'pg_catalog.int4'::pg_catalog.regtype THEN -2147483648
                                                               ELSE -9223372036854775808 END,
                                              CASE s.seqtypid WHEN 'pg_catalog.int2'::pg_catalog.regtype THEN 32767
                                                              WHEN 'pg_catalog.int4'::pg_catalog.regtype THEN 2147483647
                                                              ELSE 9223372036854775807 END) AS bound(low, high)
                   WHERE a.attidentity <> '' AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                     AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = r.oid
                     AND d.refobjsubid = a.attnum AND d.deptype = 'i'), ''),
           CASE WHEN a.attstattarget >= 0 THEN 'STATISTICS ' || a.attstattarget END,
           'WITH (' || pg_catalog.array_to_string(a.attoptions, ', ') || ')',
           CASE WHEN a.attstorage <> t.typstorage THEN 'STORAGE ' ||
               CASE a.attstorage WHEN 'p' THEN 'PLAIN' WHEN 'e' THEN 'EXTERNAL' WHEN 'm' THEN 'MAIN' ELSE 'EXTENDED' END END,
           /*compression*/
           'OPTIONS (' || pg_catalog.array_to_string(a.attfdwoptions, ', ') || ')',
           'COMMENT ' || pg_catalog.quote_literal((SELECT dsc.description FROM pg_catalog.pg_description dsc WHERE dsc.objoid = r.oid
               AND dsc.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND dsc.objsubid = a.attnum)))
FROM rel r
JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE r.relkind IN ('r', 'p', 'f')
UNION ALL
SELECT 'constraint', r.qualified, pg_catalog.quote_ident(co.conname), 0::int2,
       pg_catalog.pg_get_constraintdef(co.oid, true)
       || CASE WHEN co.contype IN ('p', 'u', 'x') AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                    WHERE i.indexrelid = co.conindid AND i.indisclustered) THEN ' -- CLUSTER' ELSE '' END
FROM pg_catalog.pg_constraint co JOIN rel r ON r.oid = co.conrelid
UNION ALL
SELECT 'index', r.qualified, pg_catalog.format('%I.%I', r.nspname, ic.relname), 0::int2,
       pg_catalog.pg_get_indexdef(i.indexrelid) || CASE WHEN NOT i.indisvalid THEN ' -- INVALID' ELSE '' END
       || CASE WHEN i.indisclustered THEN ' -- CLUSTER' ELSE '' END
FROM pg_catalog.pg_index i
JOIN rel r ON r.oid = i.indrelid
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint co WHERE co.conindid = i.indexrelid
                  AND co.conrelid = i.indrelid AND co.contype IN ('p', 'u', 'x'))
UNION ALL
SELECT 'trigger', r.qualified, pg_catalog.quote_ident(tg.tgname), 0::int2,
       pg_catalog.pg_get_triggerdef(tg.oid, true) || CASE tg.tgenabled WHEN 'D' THEN ' -- DISABLED'
           WHEN 'R' THEN ' -- ENABLE REPLICA' WHEN 'A' THEN ' -- ENABLE ALWAYS' ELSE '' END
FROM pg_catalog.pg_trigger tg JOIN rel r ON r.oid = tg.tgrelid
WHERE NOT tg.tgisinternal
UNION ALL
SELECT 'policy', r.qualified, pg_catalog.quote_ident(p.polname), 0::int2,
       pg_catalog.concat_ws(' ',
           CASE WHEN p.polpermissive THEN 'AS PERMISSIVE' ELSE 'AS RESTRICTIVE' END,
           'FOR ' || CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
           'TO ' || (SELECT pg_catalog.string_agg(x.name, ', ' ORDER BY x.name)
                     FROM (SELECT CASE WHEN r.role = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(r.role)) END
                           FROM pg_catalog.unnest(p.polroles) AS r(role)) AS x(name)),
           'USING (' || pg_catalog.pg_get_expr(p.polqual, p.polrelid) || ')',
           'WITH CHECK (' || pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) || ')')
FROM pg_catalog.pg_policy p JOIN rel r ON r.oid = p.polrelid
UNION ALL
SELECT 'statistics', r.qualified, pg_catalog.format('%I.%I', sn.nspname, st.stxname), 0::int2,
       pg_catalog.pg_get_statisticsobjdef(st.oid)
FROM pg_catalog.pg_statistic_ext st JOIN rel r ON r.oid = st.stxrelid
JOIN pg_catalog.pg_namespace sn ON sn.oid = st.stxnamespace
WHERE NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass AND m.objid = st.oid)
UNION ALL
SELECT 'rule', r.qualified, pg_catalog.quote_ident(rw.rulename), 0::int2,
       pg_catalog.rtrim(pg_catalog.pg_get_ruledef(rw.oid, true), ';')
       || CASE rw.ev_enabled WHEN 'D' THEN ' -- DISABLED' WHEN 'R' THEN ' -- ENABLE REPLICA'
           WHEN 'A' THEN ' -- ENABLE ALWAYS' ELSE '' END
FROM pg_catalog.pg_rewrite rw JOIN rel r ON r.oid = rw.ev_class
WHERE rw.rulename <> '_RETURN'
UNION ALL
SELECT CASE r.relkind WHEN 'v' THEN 'view' ELSE 'materialized view' END, '', r.qualified, 0::int2,
       pg_catalog.pg_get_viewdef(r.oid, true)
       || COALESCE(' WITH (' || pg_catalog.array_to_string(r.reloptions, ', ') || ')', '')
       || COALESCE(' COMMENT ' || pg_catalog.quote_literal((SELECT dsc.description FROM pg_catalog.pg_description dsc WHERE dsc.objoid = r.oid
               AND dsc.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND dsc.objsubid = 0)), '')
FROM rel r WHERE r.relkind IN ('v', 'm')
UNION ALL
SELECT 'sequence', '', r.qualified, 0::int2,
       pg_catalog.format('AS %s START WITH %s INCREMENT BY %s MINVALUE %s MAXVALUE %s CACHE %s%s',
           pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache,
           CASE WHEN s.seqcycle THEN ' CYCLE' ELSE '' END)
       || COALESCE((SELECT ' OWNED BY ' || pg_catalog.format('%s.%I', d.refobjid::pg_catalog.regclass, a.attname)
                    FROM pg_catalog.pg_depend d
                    JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = r.oid
                      AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype = 'a' LIMIT 1), '')
FROM rel r JOIN pg_catalog.pg_sequence s ON s.seqrelid = r.oid
WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND d.objid = r.oid AND d.deptype = 'i')
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END, '',
       pg_catalog.format('%I.%I(%s)', ns.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)), 0::int2,
       CASE WHEN p.prokind = 'a' THEN
           (SELECT pg_catalog.concat_ws(' ', 'AGGREGATE SFUNC ' || ag.aggtransfn::text,
                   'STYPE ' || pg_catalog.format_type(ag.aggtranstype, NULL),
                   CASE WHEN ag.aggfinalfn <> 0 THEN 'FINALFUNC ' || ag.aggfinalfn::text END,
                   CASE WHEN ag.aggcombinefn <> 0 THEN 'COMBINEFUNC ' || ag.aggcombinefn::text END,
                   'INITCOND ' || pg_catalog.quote_literal(ag.agginitval),
                   CASE WHEN ag.aggsortop <> 0 THEN 'SORTOP ' || ag.aggsortop::regoperator::text END)
            FROM pg_catalog.pg_aggregate ag WHERE ag.aggfnoid = p.oid)
       ELSE pg_catalog.pg_get_functiondef(p.oid) END
FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                  AND d.objid = p.oid AND d.deptype IN ('e', 'i'))
UNION ALL
SELECT 'type', '', pg_catalog.format('%I.%I', ns.nspname, t.typname), 0::int2,
       CASE t.typtype
           WHEN 'e' THEN 'AS ENUM (' || COALESCE((SELECT pg_catalog.string_agg(pg_catalog.quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                                                  FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid), '') || ')'
           WHEN 'c' THEN 'AS (' || COALESCE((SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname) || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                                             FROM pg_catalog.pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped), '') || ')'
           WHEN 'd' THEN pg_catalog.concat_ws(' ', 'DOMAIN AS ' || pg_catalog.format_type(t.typbasetype, t.typtypmod),
                                              CASE WHEN t.typnotnull THEN 'NOT NULL' END,
                                              'DEFAULT ' || t.typdefault,
                                              (SELECT pg_catalog.string_agg(pg_catalog.format('CONSTRAINT %I %s', co.conname, pg_catalog.pg_get_constraintdef(co.oid, true)), ' ' ORDER BY co.conname)
                                               FROM pg_catalog.pg_constraint co WHERE co.contypid = t.oid))
           WHEN 'r' THEN 'AS RANGE (SUBTYPE = ' || (SELECT pg_catalog.format_type(rg.rngsubtype, NULL) FROM pg_catalog.pg_range rg WHERE rg.rngtypid = t.oid) || ')'
           ELSE 'AS ' || t.typtype::text
       END
FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace
WHERE t.typtype IN ('e', 'c', 'd', 'r')
  AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid) = 'c')
  AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND m.objid = t.oid)
UNION ALL
-- A collation's settings by their catalog names, whatever the server's version has (the ICU
-- locale is colliculocale in 15 and 16, colllocale from 17): every column but the volatile.
SELECT 'collation', '', pg_catalog.format('%I.%I', ns.nspname, co.collname), 0::int2,
       (SELECT pg_catalog.string_agg(j.key || ' ' || j.value, ', ' ORDER BY j.key)
          FROM pg_catalog.jsonb_each_text(pg_catalog.to_jsonb(co) - 'oid' - 'collname' - 'collnamespace'
                                          - 'collowner' - 'collversion') AS j
         WHERE j.value IS NOT NULL)
FROM pg_catalog.pg_collation co JOIN ns ON ns.oid = co.collnamespace
-- initdb's own (800 ICU locales, all in pg_catalog) have oids below 16384: not read at all,
-- which keeps the snapshot `test` takes after every step as cheap as before.
WHERE co.oid >= 16384
  AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_catalog.pg_collation'::pg_catalog.regclass AND m.objid = co.oid)
UNION ALL
SELECT 'event trigger', '', pg_catalog.quote_ident(et.evtname), 0::int2,
       pg_catalog.concat_ws(' ', 'ON ' || et.evtevent,
           'WHEN TAG IN (' || (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(t), ', ' ORDER BY t)
                               FROM pg_catalog.unnest(et.evttags) AS t) || ')',
           'EXECUTE FUNCTION ' || et.evtfoid::pg_catalog.regprocedure::text,
           CASE et.evtenabled WHEN 'D' THEN '-- DISABLED' WHEN 'R' THEN '-- ENABLE REPLICA'
                              WHEN 'A' THEN '-- ENABLE ALWAYS' END)
FROM pg_catalog.pg_event_trigger et
WHERE NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_catalog.pg_event_trigger'::pg_catalog.regclass AND m.objid = et.oid)
UNION ALL
-- A publication's options by their catalog names, and the tables it publishes as the server
-- works them out (FOR ALL TABLES, FOR TABLES IN SCHEMA), the history table left out, each
-- with its columns and row filter where the server has them (pg_publication_tables, read
-- through to_jsonb so that a server before 15, without those columns, reads the rest).
SELECT 'publication', '', pg_catalog.quote_ident(pb.pubname), 0::int2,
       (SELECT pg_catalog.string_agg(j.key || ' ' || j.value, ', ' ORDER BY j.key)
          FROM pg_catalog.jsonb_each_text(pg_catalog.to_jsonb(pb) - 'oid' - 'pubname' - 'pubowner') AS j)
       || COALESCE(' TABLES ' || (SELECT pg_catalog.string_agg(t.entry, ', ' ORDER BY t.entry)
                                  FROM (SELECT pg_catalog.format('%I.%I', pt.schemaname, pt.tablename)
                                               -- From 15: the columns published, the row filter.
                                               || COALESCE(' (' || (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c.name), ', ' ORDER BY c.at)
                                                                    FROM pg_catalog.jsonb_array_elements_text(pg_catalog.to_jsonb(pt) -> 'attnames')
                                                                         WITH ORDINALITY AS c(name, at)) || ')', '')
                                               || COALESCE(' WHERE ' || (pg_catalog.to_jsonb(pt) ->> 'rowfilter'), '')
                                        FROM pg_catalog.pg_publication_tables pt
                                        WHERE pt.pubname = pb.pubname
                                          AND pg_catalog.to_regclass(pg_catalog.format('%I.%I', pt.schemaname, pt.tablename))
                                              IS DISTINCT FROM pg_catalog.to_regclass($1)) AS t(entry)), '')
FROM pg_catalog.pg_publication pb
UNION ALL
-- Casts, operators, text search objects and foreign-data objects the migrations made:
-- initdb's own have oids below 16384 or live in pg_catalog, an extension's are its members.
SELECT 'cast', '', pg_catalog.format('(%s AS %s)', pg_catalog.format_type(c.castsource, NULL),
                                     pg_catalog.format_type(c.casttarget, NULL)), 0::int2,
       pg_catalog.concat_ws(' ',
           CASE c.castmethod WHEN 'f' THEN 'WITH FUNCTION ' || c.castfunc::pg_catalog.regprocedure::text
                             WHEN 'i' THEN 'WITH INOUT' ELSE 'WITHOUT FUNCTION' END,
           CASE c.castcontext WHEN 'a' THEN 'AS ASSIGNMENT' WHEN 'i' THEN 'AS IMPLICIT' END)
FROM pg_catalog.pg_cast c
WHERE c.oid >= 16384
  AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_catalog.pg_cast'::pg_catalog.regclass AND m.objid = c.oid)
UNION ALL
SELECT 'operator', '', o.oid::pg_catalog.regoperator::text, 0::int2,
       pg_catalog.concat_ws(' ', 'PROCEDURE ' || o.oprcode::pg_catalog.regprocedure::text,
           'COMMUTATOR ' || NULLIF(o.oprcom, 0)::pg_catalog.regoperator::text,
           'NEGATOR ' || NULLIF(o.oprnegate, 0)::pg_catalog.regoperator::text,
           'RESTRICT ' || NULLIF(o.oprrest, 0)::pg_catalog.regprocedure::text,
           'JOIN ' || NULLIF(o.oprjoin, 0)::pg_catalog.regprocedure::text,
           CASE WHEN o.oprcanhash THEN 'HASHES' END, CASE WHEN o.oprcanmerge THEN 'MERGES' END)
FROM pg_catalog.pg_operator o JOIN ns ON ns.oid = o.oprnamespace
WHERE o.oid >= 16384
  AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND m.objid = o.oid)
UNION ALL
SELECT 'text search dictionary', '', pg_catalog.format('%I.%I', ns.nspname, d.dictname), 0::int2,
       pg_catalog.concat_ws(' ',
           'TEMPLATE ' || (SELECT pg_catalog.format('%I.%I', tn.nspname, tp.tmplname) FROM pg_catalog.pg_ts_template tp
                           JOIN pg_catalog.pg_namespace tn ON tn.oid = tp.tmplnamespace WHERE tp.oid = d.dicttemplate),
           'OPTIONS ' || d.dictinitoption)
FROM pg_catalog.pg_ts_dict d JOIN ns ON ns.oid = d.dictnamespace
WHERE d.oid >= 16384
  AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_catalog.pg_ts_dict'::pg_catalog.regclass AND m.objid = d.oid)
UNION ALL
SELECT 'text search configuration', '', pg_catalog.format('%I.%I', ns.nspname, cfg.cfgname), 0::int2,
       'PARSER ' || (SELECT pg_catalog.format('%I.%I', pn.nspname, pr.prsname) FROM pg_catalog.pg_ts_parser pr
                     JOIN pg_catalog.pg_namespace pn ON pn.oid = pr.prsnamespace WHERE pr.oid = cfg.cfgparser)
       || COALESCE(' MAPPING ' || (SELECT pg_catalog.string_agg(tt.alias || ' WITH ' || mp.dicts, ', ' ORDER BY tt.alias)
                                   FROM (SELECT mm.maptokentype,
                                                pg_catalog.string_agg(mm.mapdict::pg_catalog.regdictionary::text, ', ' ORDER BY mm.mapseqno) AS dicts
                                         FROM pg_catalog.pg_ts_config_map mm WHERE mm.mapcfg = cfg.oid
                                         GROUP BY mm.maptokentype) AS mp
                                   JOIN pg_catalog.ts_token_type(cfg.cfgparser) AS tt ON tt.tokid = mp.maptokentype), '')
FROM pg_catalog.pg_ts_config cfg JOIN ns ON ns.oid = cfg.cfgnamespace
WHERE cfg.oid >= 16384
  AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_catalog.pg_ts_config'::pg_catalog.regclass AND m.objid = cfg.oid)
UNION ALL
SELECT 'foreign-data wrapper', '', pg_catalog.quote_ident(w.fdwname), 0::int2,
       pg_catalog.concat_ws(' ', 'HANDLER ' || NULLIF(w.fdwhandler, 0)::pg_catalog.regprocedure::text,
           'VALIDATOR ' || NULLIF(w.fdwvalidator, 0)::pg_catalog.regprocedure::text,
           'OPTIONS (' || pg_catalog.array_to_string(w.fdwoptions, ', ') || ')')
FROM pg_catalog.pg_foreign_data_wrapper w
WHERE NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_catalog.pg_foreign_data_wrapper'::pg_catalog.regclass AND m.objid = w.oid)
UNION ALL
SELECT 'server', '', pg_catalog.quote_ident(fs.srvname), 0::int2,
       pg_catalog.concat_ws(' ', 'TYPE ' || pg_catalog.quote_literal(fs.srvtype),
           'VERSION ' || pg_catalog.quote_literal(fs.srvversion),
           'FOREIGN DATA WRAPPER ' || (SELECT pg_catalog.quote_ident(w.fdwname) FROM pg_catalog.pg_foreign_data_wrapper w WHERE w.oid = fs.srvfdw),
           'OPTIONS (' || pg_catalog.array_to_string(fs.srvoptions, ', ') || ')')
FROM pg_catalog.pg_foreign_server fs
WHERE NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_catalog.pg_foreign_server'::pg_catalog.regclass AND m.objid = fs.oid)
UNION ALL
-- A user mapping's option names only: their values are the remote login's, password and all.
SELECT 'user mapping', '', pg_catalog.format('for %s server %I',
           CASE WHEN um.umuser = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(um.usename) END, um.srvname), 0::int2,
       COALESCE('OPTIONS (' || (SELECT pg_catalog.string_agg(pg_catalog.split_part(x.o, '=', 1), ', ' ORDER BY x.o)
                                FROM pg_catalog.unnest(um.umoptions) AS x(o)) || ')', '')
FROM pg_catalog.pg_user_mappings um
UNION ALL
-- Comments on everything else the migrations made, named by the object's kind and identity:
-- in the schemas read; a trigger's, policy's or rule's (which have no schema of their own) on
-- a table read; event triggers', publications', foreign servers' and the like made after
-- initdb. Not a schema's or an extension's (the server's and the extension's own text), nor
-- a large object's (data).
SELECT 'comment', '', o.type || ' ' || o.identity, 0::int2, pg_catalog.quote_literal(dsc.description)
FROM pg_catalog.pg_description dsc
CROSS JOIN LATERAL pg_catalog.pg_identify_object(dsc.classoid, dsc.objoid, dsc.objsubid) o
WHERE dsc.objoid >= 16384 AND o.identity IS NOT NULL
  AND dsc.classoid NOT IN ('pg_catalog.pg_namespace'::pg_catalog.regclass, 'pg_catalog.pg_extension'::pg_catalog.regclass,
                           'pg_catalog.pg_largeobject'::pg_catalog.regclass)
  AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = dsc.classoid AND m.objid = dsc.objoid)
  AND CASE dsc.classoid
      WHEN 'pg_catalog.pg_class'::pg_catalog.regclass THEN
          EXISTS (SELECT 1 FROM rel r WHERE r.oid = dsc.objoid
                  AND NOT (dsc.objsubid = 0 AND r.relkind IN ('r', 'p', 'f', 'v', 'm'))
                  AND NOT (dsc.objsubid > 0 AND r.relkind IN ('r', 'p', 'f')))
      WHEN 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN
          EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.oid = dsc.objoid
                  AND (c.conrelid IN (SELECT r.oid FROM rel r) OR c.contypid IN (SELECT t.oid FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace)))
      WHEN 'pg_catalog.pg_trigger'::pg_catalog.regclass THEN
          EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t JOIN rel r ON r.oid = t.tgrelid WHERE t.oid = dsc.objoid)
      WHEN 'pg_catalog.pg_policy'::pg_catalog.regclass THEN
          EXISTS (SELECT 1 FROM pg_catalog.pg_policy p JOIN rel r ON r.oid = p.polrelid WHERE p.oid = dsc.objoid)
      WHEN 'pg_catalog.pg_rewrite'::pg_catalog.regclass THEN
          EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w JOIN rel r ON r.oid = w.ev_class WHERE w.oid = dsc.objoid)
      ELSE o.schema IS NULL OR o.schema IN (SELECT ns.nspname FROM ns) END
UNION ALL
SELECT 'privileges', '', o.object, 0::int2,
       pg_catalog.concat_ws(' ', 'OWNER ' || pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(o.owner)),
           'GRANTS ' || (SELECT pg_catalog.string_agg(x.item::text, ' ' ORDER BY x.item::text)
                         FROM pg_catalog.unnest(o.acl) AS x(item)))
FROM (
    SELECT CASE r.relkind WHEN 'S' THEN 'sequence ' WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view ' ELSE 'table ' END
           || r.qualified AS object, r.relowner AS owner,
           COALESCE(r.relacl, pg_catalog.acldefault(CASE r.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", r.relowner)) AS acl
    FROM rel r WHERE r.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
    UNION ALL
    SELECT 'schema ' || pg_catalog.quote_ident(n.nspname), n.nspowner,
           COALESCE(n.nspacl, pg_catalog.acldefault('n', n.nspowner))
    FROM pg_catalog.pg_namespace n JOIN ns ON ns.oid = n.oid
    WHERE n.oid NOT IN (SELECT h.oid FROM history_only h)
    UNION ALL
    SELECT CASE p.prokind WHEN 'p' THEN 'procedure ' ELSE 'function ' END
           || pg_catalog.format('%I.%I(%s)', ns.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)),
           p.proowner, COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))
    FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                      AND d.objid = p.oid AND d.deptype IN ('e', 'i'))
    UNION ALL
    -- A column's own grants (GRANT SELECT (col)); its owner is its table's. A column whose
    -- grants were all revoked keeps an empty list, which reads as one never granted.
    SELECT 'column ' || r.qualified || '.' || pg_catalog.quote_ident(a.attname), NULL, a.attacl
    FROM rel r JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE r.relkind IN ('r', 'p', 'f', 'v', 'm') AND pg_catalog.cardinality(a.attacl) > 0
    UNION ALL
    SELECT CASE t.typtype WHEN 'd' THEN 'domain ' ELSE 'type ' END || pg_catalog.format('%I.%I', ns.nspname, t.typname),
           t.typowner, COALESCE(t.typacl, pg_catalog.acldefault('T', t.typowner))
    FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace
    WHERE t.typtype IN ('e', 'c', 'd', 'r')
      AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid) = 'c')
      AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND m.objid = t.oid)
    UNION ALL
    -- ALTER DEFAULT PRIVILEGES: the grants objects get when a role creates them, everywhere or
    -- in one schema (pg_default_acl is the database's own, as the rest is).
    SELECT pg_catalog.concat_ws(' ', 'new',
               CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions'
                                    WHEN 'T' THEN 'types' WHEN 'n' THEN 'schemas' ELSE d.defaclobjtype::text END,
               'of', pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(d.defaclrole)),
               'in schema ' || (SELECT pg_catalog.quote_ident(n.nspname) FROM ns n WHERE n.oid = d.defaclnamespace)),
           NULL, d.defaclacl
    FROM pg_catalog.pg_default_acl d
    WHERE d.defaclnamespace = 0 OR d.defaclnamespace IN (SELECT ns.oid FROM ns)
) o
WHERE $2
"#;
