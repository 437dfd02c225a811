//! The schema snapshot against the real PostgreSQL: every object kind read from the catalogs
//! and printed the same way twice and for two databases built the same way; `schema`;
//! `up --write-schema`; and `verify --schema`, which names what was changed by hand.

mod support;

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use db_migrate::history::Table;
use db_migrate::schema::{self, Key, Kind, Snapshot};
use support::{Output, TestDb, binary, events, output, seed_dir, summary_message};
use tokio_postgres::Client;

/// One object of every kind the snapshot reads, and things it must leave out: an extension's
/// own functions and types, an identity column's sequence, a history table.
const EVERY_KIND: &str = r#"
CREATE EXTENSION IF NOT EXISTS citext;
CREATE SCHEMA app;
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE app.pair AS (a integer, b text);
CREATE DOMAIN app.url AS text CONSTRAINT url_https CHECK (VALUE LIKE 'https://%');
CREATE TYPE app.floats AS RANGE (subtype = float8);
CREATE SEQUENCE app.tickets START 10 INCREMENT 5;
CREATE TABLE app.t (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text COLLATE "C" NOT NULL DEFAULT 'x',
    mood app.mood,
    doubled bigint GENERATED ALWAYS AS (id * 2) STORED,
    counter serial,
    email citext,
    CONSTRAINT name_short CHECK (length(name) < 100)
);
CREATE UNIQUE INDEX t_name ON app.t (name) WHERE mood IS NOT NULL;
CREATE VIEW app.v AS SELECT id, name FROM app.t;
CREATE MATERIALIZED VIEW app.mv AS SELECT count(*) AS n FROM app.t;
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE PROCEDURE app.noop() LANGUAGE sql AS $$ SELECT 1 $$;
CREATE TRIGGER t_touch BEFORE UPDATE ON app.t FOR EACH ROW EXECUTE FUNCTION app.touch();
ALTER TABLE app.t ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON app.t FOR SELECT TO PUBLIC USING (name = current_user);
CREATE STATISTICS app.t_dependencies (dependencies) ON id, counter FROM app.t;
CREATE RULE v_insert AS ON INSERT TO app.v DO INSTEAD NOTHING;
CREATE TABLE app.parted (id integer, at date) PARTITION BY RANGE (at);
CREATE TABLE app.parted_2026 PARTITION OF app.parted FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE COLLATION app.german (provider = icu, locale = 'de-DE');
CREATE FUNCTION app.on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN END$$;
CREATE EVENT TRIGGER app_ddl ON ddl_command_end WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION app.on_ddl();
CREATE TABLE public.schema_migrations (version bigint PRIMARY KEY);
CREATE PUBLICATION app_changes FOR TABLE app.t, public.schema_migrations;
CREATE PUBLICATION everything FOR ALL TABLES;
"#;

async fn snapshot(client: &Client) -> Snapshot {
    let table = Table::parse("schema_migrations").unwrap();
    let table = table.resolve(client).await.unwrap();
    schema::read(client, &table, schema::Options::default())
        .await
        .unwrap()
}

/// The definition of the object `kind` `name` (on `table`), asserting it is there.
fn definition<'a>(snapshot: &'a Snapshot, kind: Kind, table: &str, name: &str) -> &'a str {
    let key = Key {
        kind,
        table: table.into(),
        name: name.into(),
    };
    match snapshot.objects.get(&key) {
        Some(object) => &object.definition,
        None => panic!("no {key} in:\n{}", snapshot.text()),
    }
}

async fn built(sql: &str) -> (TestDb, Snapshot) {
    let db = support::database().await;
    let client = db.client().await;
    client.batch_execute(sql).await.unwrap();
    let snapshot = snapshot(&client).await;
    (db, snapshot)
}

#[tokio::test]
async fn every_object_kind_is_read_with_its_definition() {
    let (_db, s) = built(EVERY_KIND).await;
    let t = "app.t";
    let expected = [
        (Kind::Extension, "", "citext", "WITH SCHEMA public VERSION"),
        (Kind::Schema, "", "app", ""),
        (
            Kind::Collation,
            "",
            "app.german",
            "locale de-DE, collisdeterministic true, collprovider i",
        ),
        (
            Kind::EventTrigger,
            "",
            "app_ddl",
            "ON ddl_command_end WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION app.on_ddl()",
        ),
        // Published tables as the server lists them: never the history table.
        (
            Kind::Publication,
            "",
            "app_changes",
            "pubviaroot false TABLES app.t",
        ),
        (Kind::Type, "", "app.mood", "AS ENUM ('sad', 'ok', 'happy')"),
        (Kind::Type, "", "app.pair", "AS (a integer, b text)"),
        (
            Kind::Type,
            "",
            "app.url",
            "DOMAIN AS text CONSTRAINT url_https CHECK",
        ),
        (
            Kind::Type,
            "",
            "app.floats",
            "AS RANGE (SUBTYPE = double precision)",
        ),
        (
            Kind::Sequence,
            "",
            "app.tickets",
            "START WITH 10 INCREMENT BY 5",
        ),
        (
            Kind::Sequence,
            "",
            "app.t_counter_seq",
            "OWNED BY app.t.counter",
        ),
        (Kind::Table, "", t, "ROW LEVEL SECURITY"),
        (
            Kind::Column,
            t,
            "id",
            "bigint NOT NULL GENERATED ALWAYS AS IDENTITY",
        ),
        (
            Kind::Column,
            t,
            "name",
            "text COLLATE pg_catalog.\"C\" NOT NULL DEFAULT 'x'::text",
        ),
        (Kind::Column, t, "mood", "app.mood"),
        (
            Kind::Column,
            t,
            "doubled",
            "bigint GENERATED ALWAYS AS ((id * 2)) STORED",
        ),
        (
            Kind::Column,
            t,
            "counter",
            "integer NOT NULL DEFAULT nextval('app.t_counter_seq'::regclass)",
        ),
        (Kind::Column, t, "email", "citext"),
        (Kind::Constraint, t, "t_pkey", "PRIMARY KEY (id)"),
        (
            Kind::Constraint,
            t,
            "name_short",
            "CHECK (length(name) < 100)",
        ),
        (
            Kind::Index,
            t,
            "app.t_name",
            "CREATE UNIQUE INDEX t_name ON app.t USING btree (name) WHERE (mood IS NOT NULL)",
        ),
        (
            Kind::Trigger,
            t,
            "t_touch",
            "CREATE TRIGGER t_touch BEFORE UPDATE ON app.t FOR EACH ROW EXECUTE FUNCTION app.touch()",
        ),
        (
            Kind::Policy,
            t,
            "own_rows",
            "AS PERMISSIVE FOR SELECT TO PUBLIC USING ((name = CURRENT_USER))",
        ),
        (
            Kind::Statistics,
            t,
            "app.t_dependencies",
            "CREATE STATISTICS app.t_dependencies (dependencies) ON id, counter FROM app.t",
        ),
        (
            Kind::Rule,
            "app.v",
            "v_insert",
            "ON INSERT TO app.v DO INSTEAD NOTHING",
        ),
        (
            Kind::View,
            "",
            "app.v",
            "SELECT t.id,\n    t.name\n   FROM app.t;",
        ),
        (Kind::MaterializedView, "", "app.mv", "count(*) AS n"),
        (
            Kind::Function,
            "",
            "app.touch()",
            "CREATE OR REPLACE FUNCTION app.touch()",
        ),
        (
            Kind::Procedure,
            "",
            "app.noop()",
            "CREATE OR REPLACE PROCEDURE app.noop()",
        ),
        (Kind::Table, "", "app.parted", "PARTITION BY RANGE (at)"),
        (
            Kind::Table,
            "",
            "app.parted_2026",
            "PARTITION OF app.parted FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
        ),
    ];
    for (kind, table, name, part) in expected {
        let found = definition(&s, kind, table, name);
        assert!(
            found.contains(part),
            "{kind:?} {name}: {found:?} lacks {part:?}"
        );
    }
    let everything = definition(&s, Kind::Publication, "", "everything");
    assert!(
        everything.contains("puballtables true")
            && everything.contains("app.t")
            && !everything.contains("schema_migrations"),
        "{everything}"
    );
    // Left out: the history table, the identity column's sequence, citext's own functions
    // and type, the table's row type.
    let names: Vec<String> = s.objects.keys().map(|k| k.to_string()).collect();
    for absent in [
        "schema_migrations",
        "t_id_seq",
        "citextin",
        "public.citext",
        "type app.t",
    ] {
        assert!(
            !names.iter().any(|n| n.contains(absent)),
            "{absent} in {names:#?}"
        );
    }
}

#[tokio::test]
async fn the_text_is_the_same_twice_and_for_two_databases_built_the_same_way() {
    let (db, first) = built(EVERY_KIND).await;
    let again = snapshot(&db.client().await).await;
    let (_other, second) = built(EVERY_KIND).await;
    assert_eq!(first.text(), again.text());
    assert_eq!(first.text(), second.text());
    assert!(first.diff(&second).is_empty());
    let text = first.text();
    for line in [
        "CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA public VERSION",
        "CREATE SCHEMA app;",
        "CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');",
        "CREATE DOMAIN app.url AS text CONSTRAINT url_https CHECK",
        "CREATE TABLE app.t (\n    id bigint NOT NULL GENERATED ALWAYS AS IDENTITY,\n    name text",
        "ALTER TABLE app.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);",
        "CREATE POLICY own_rows ON app.t AS PERMISSIVE FOR SELECT",
        "CREATE MATERIALIZED VIEW app.mv AS\n",
        "CREATE OR REPLACE PROCEDURE app.noop()",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
}

#[tokio::test]
async fn the_read_is_not_bounded_by_the_migrations_statement_timeout() {
    let (db, expected) = built(EVERY_KIND).await;
    let client = db.client().await;
    let table = Table::parse("schema_migrations").unwrap();
    let table = table.resolve(&client).await.unwrap();
    let mut reader = schema::Reader::new(&client, &table, schema::Options::default())
        .await
        .unwrap();
    // `--statement-timeout` as a run sets it for the session: the catalog query takes more
    // than 2 ms on any server, so under it the read would be cancelled (57014). Not 1 ms:
    // on a loaded machine the one-line query that reads the setting back can take that.
    client
        .batch_execute("SET statement_timeout = 2")
        .await
        .unwrap();
    let read = reader.read().await.unwrap();
    assert_eq!(read.text(), expected.text());
    // Read back with one short query; cancelled by the timeout itself (a stall on a loaded
    // machine), it shows the setting is still in force as well.
    let left = match client.simple_query("SHOW statement_timeout").await {
        Ok(rows) => db_migrate::history::first_value(&rows).unwrap().to_string(),
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
            "2ms".to_string()
        }
        Err(error) => panic!("{error}"),
    };
    assert_eq!(left, "2ms");
}

#[tokio::test]
async fn lists_read_in_order_whatever_order_they_were_written_in() {
    support::role("schema_a").await;
    support::role("schema_z").await;
    let build = |tables: &str, to: &str| {
        format!(
            "CREATE TABLE a (id int, note text); CREATE TABLE z (id int);
             CREATE PUBLICATION p FOR TABLE {tables};
             CREATE POLICY mine ON a TO {to} USING (true);"
        )
    };
    let filtered = "a (id) WHERE (id > 0)";
    let (_db, first) = built(&build(&format!("z, {filtered}"), "schema_z, schema_a")).await;
    let (_other, second) = built(&build(&format!("{filtered}, z"), "schema_a, schema_z")).await;
    assert_eq!(first.text(), second.text());
    // Each table with the columns it publishes and its row filter.
    let publication = definition(&first, Kind::Publication, "", "p");
    assert!(
        publication.ends_with("TABLES public.a (id) WHERE (id > 0), public.z (id)"),
        "{publication}"
    );
    let policy = definition(&first, Kind::Policy, "public.a", "mine");
    assert!(policy.contains("TO schema_a, schema_z"), "{policy}");
}

#[tokio::test]
async fn comments_are_read_on_every_kind_but_not_on_schemas_extensions_their_members_or_large_objects()
 {
    let (db, _) = built(EVERY_KIND).await;
    let client = db.client().await;
    client
        .batch_execute(
            "COMMENT ON SCHEMA app IS 'the app'; \
             COMMENT ON INDEX app.t_name IS 'names'; \
             COMMENT ON CONSTRAINT name_short ON app.t IS 'short'; \
             COMMENT ON FUNCTION app.touch() IS 'touches'; \
             COMMENT ON TYPE app.mood IS 'moods'; \
             COMMENT ON SEQUENCE app.tickets IS 'tickets'; \
             COMMENT ON COLUMN app.v.name IS 'its name'; \
             COMMENT ON TRIGGER t_touch ON app.t IS 'on update'; \
             COMMENT ON TABLE app.t IS 'the table'; \
             COMMENT ON TABLE public.schema_migrations IS 'history'; \
             COMMENT ON FUNCTION citext(boolean) IS 'an extension''s'; \
             SELECT lo_create(4242); COMMENT ON LARGE OBJECT 4242 IS 'data'; \
             CREATE TRIGGER h BEFORE UPDATE ON public.schema_migrations \
                 FOR EACH ROW EXECUTE FUNCTION app.touch(); \
             COMMENT ON TRIGGER h ON public.schema_migrations IS 'on history'; \
             CREATE TEMP TABLE tt (id int); \
             CREATE TRIGGER tt_trg BEFORE UPDATE ON tt FOR EACH ROW EXECUTE FUNCTION app.touch(); \
             COMMENT ON TRIGGER tt_trg ON tt IS 'on temp'; \
             COMMENT ON EXTENSION citext IS 'changed'; \
             ALTER TABLE app.t CLUSTER ON t_pkey;",
        )
        .await
        .unwrap();
    let s = snapshot(&client).await;
    for (name, comment) in [
        ("index app.t_name", "'names'"),
        ("table constraint name_short on app.t", "'short'"),
        ("function app.touch()", "'touches'"),
        ("type app.mood", "'moods'"),
        ("sequence app.tickets", "'tickets'"),
        ("view column app.v.name", "'its name'"),
        ("trigger t_touch on app.t", "'on update'"),
    ] {
        assert_eq!(definition(&s, Kind::Comment, "", name), comment);
    }
    // A table's comment is part of its own definition; the history table is not read.
    assert!(definition(&s, Kind::Table, "", "app.t").ends_with("COMMENT 'the table'"));
    // Nothing else: not a schema's or an extension's, not those on the history table, a
    // temporary table, an extension member or a large object.
    let comments: Vec<&str> = (s.of(Kind::Comment))
        .map(|(k, _)| k.name.as_str())
        .collect();
    assert_eq!(
        comments,
        [
            "function app.touch()",
            "index app.t_name",
            "sequence app.tickets",
            "table constraint name_short on app.t",
            "trigger t_touch on app.t",
            "type app.mood",
            "view column app.v.name"
        ]
    );
    // The primary key is the table's CLUSTER index.
    let pkey = definition(&s, Kind::Constraint, "app.t", "t_pkey");
    assert_eq!(pkey, "PRIMARY KEY (id) -- CLUSTER");
    assert!(
        s.text().contains("-- comment on index app.t_name: 'names'"),
        "{}",
        s.text()
    );
}

#[tokio::test]
async fn casts_operators_text_search_and_foreign_data_objects_are_read() {
    // Each of these, left behind by a rollback, once passed `test` and `verify --schema`.
    let (db, before) = built(EVERY_KIND).await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE FUNCTION app.mood_of(int) RETURNS app.mood LANGUAGE sql IMMUTABLE AS $$ SELECT 'ok'::app.mood $$;
             CREATE CAST (int AS app.mood) WITH FUNCTION app.mood_of(int) AS ASSIGNMENT;
             CREATE FUNCTION app.same(int, int) RETURNS bool LANGUAGE sql IMMUTABLE AS $$ SELECT $1 = $2 $$;
             CREATE OPERATOR app.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = app.same, COMMUTATOR = OPERATOR(app.===));
             CREATE TEXT SEARCH DICTIONARY app.plain (TEMPLATE = pg_catalog.simple, STOPWORDS = english);
             CREATE TEXT SEARCH CONFIGURATION app.prompts (COPY = english);
             ALTER TEXT SEARCH CONFIGURATION app.prompts ALTER MAPPING FOR asciiword WITH app.plain, english_stem;
             CREATE FOREIGN DATA WRAPPER elsewhere;
             CREATE SERVER archive FOREIGN DATA WRAPPER elsewhere OPTIONS (host 'archive.internal');
             CREATE USER MAPPING FOR PUBLIC SERVER archive OPTIONS (user 'reader', password 'sentinel-password');
             CREATE FOREIGN TABLE app.old_requests (id int OPTIONS (column_name 'request_id')) SERVER archive OPTIONS (table_name 'requests');
             ALTER TABLE app.t ALTER COLUMN name SET COMPRESSION pglz;",
        )
        .await
        .unwrap();
    let s = snapshot(&client).await;
    let expected = [
        (
            Kind::Cast,
            "",
            "(integer AS app.mood)",
            "WITH FUNCTION app.mood_of(integer) AS ASSIGNMENT",
        ),
        (
            Kind::Operator,
            "",
            "app.===(integer,integer)",
            "PROCEDURE app.same(integer,integer) COMMUTATOR app.===(integer,integer)",
        ),
        (
            Kind::TextSearchDictionary,
            "",
            "app.plain",
            "TEMPLATE pg_catalog.simple OPTIONS stopwords = 'english'",
        ),
        (Kind::ForeignDataWrapper, "", "elsewhere", ""),
        (
            Kind::ForeignServer,
            "",
            "archive",
            "FOREIGN DATA WRAPPER elsewhere OPTIONS (host=archive.internal)",
        ),
        (
            Kind::UserMapping,
            "",
            "for PUBLIC server archive",
            "OPTIONS (password, user)",
        ),
        (
            Kind::Table,
            "",
            "app.old_requests",
            "FOREIGN SERVER archive OPTIONS (table_name=requests)",
        ),
        (
            Kind::Column,
            "app.old_requests",
            "id",
            "integer OPTIONS (column_name=request_id)",
        ),
    ];
    for (kind, table, name, text) in expected {
        let found = definition(&s, kind, table, name);
        assert!(found.contains(text), "{kind:?} {name}: {found}");
    }
    let mapping = definition(&s, Kind::TextSearchConfiguration, "", "app.prompts");
    assert!(
        mapping.starts_with("PARSER pg_catalog.\"default\" MAPPING "),
        "{mapping}"
    );
    assert!(
        mapping.contains("asciiword WITH app.plain, english_stem,"),
        "{mapping}"
    );
    assert!(definition(&s, Kind::Column, "app.t", "name").ends_with("COMPRESSION pglz"));
    // A user mapping's values never reach the snapshot or its text.
    assert!(!s.text().contains("sentinel-password"));
    // Every one of them is a difference from the schema before.
    let changed: Vec<String> = before
        .diff(&s)
        .changes
        .iter()
        .map(|c| c.key().to_string())
        .collect();
    for name in [
        "cast (integer AS app.mood)",
        "operator app.===(integer,integer)",
        "text search configuration app.prompts",
        "server archive",
        "user mapping for PUBLIC server archive",
        "column app.t.name",
    ] {
        assert!(
            changed.iter().any(|c| c == name),
            "{name} not in {changed:?}"
        );
    }
}

#[tokio::test]
async fn an_identity_column_shows_its_sequence_options_that_are_not_the_defaults() {
    let (db, s) = built(EVERY_KIND).await;
    let id = "bigint NOT NULL GENERATED ALWAYS AS IDENTITY";
    assert_eq!(definition(&s, Kind::Column, "app.t", "id"), id);
    let client = db.client().await;
    client
        .batch_execute(
            "ALTER TABLE app.t ALTER COLUMN id SET INCREMENT BY 10 SET START WITH 1000 SET CACHE 20; \
             CREATE TABLE app.down (n smallint GENERATED BY DEFAULT AS IDENTITY (INCREMENT BY -1 MINVALUE -99 CYCLE))",
        )
        .await
        .unwrap();
    let s = snapshot(&client).await;
    assert_eq!(
        definition(&s, Kind::Column, "app.t", "id"),
        format!("{id} (START WITH 1000 INCREMENT BY 10 CACHE 20)")
    );
    assert_eq!(
        definition(&s, Kind::Column, "app.down", "n"),
        "smallint NOT NULL GENERATED BY DEFAULT AS IDENTITY (INCREMENT BY -1 MINVALUE -99 CYCLE)"
    );
    // Back to the defaults: read as before.
    client
        .batch_execute(
            "ALTER TABLE app.t ALTER COLUMN id SET INCREMENT BY 1 SET START WITH 1 SET CACHE 1",
        )
        .await
        .unwrap();
    assert_eq!(
        definition(&snapshot(&client).await, Kind::Column, "app.t", "id"),
        id
    );
}

#[tokio::test]
async fn an_invalid_index_a_disabled_trigger_and_a_disabled_rule_are_marked() {
    let (db, _) = built(EVERY_KIND).await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO app.t (name) VALUES ('a'); ALTER TABLE app.t DISABLE TRIGGER t_touch; \
             CREATE RULE t_keep AS ON DELETE TO app.t DO INSTEAD NOTHING; \
             ALTER TABLE app.t DISABLE RULE t_keep;",
        )
        .await
        .unwrap();
    let failed = client
        .batch_execute("CREATE INDEX CONCURRENTLY t_bad ON app.t ((1 / (id - id)))")
        .await;
    assert!(failed.is_err());
    let s = snapshot(&client).await;
    assert!(definition(&s, Kind::Index, "app.t", "app.t_bad").ends_with(" -- INVALID"));
    assert!(definition(&s, Kind::Trigger, "app.t", "t_touch").ends_with(" -- DISABLED"));
    client
        .batch_execute("ALTER TABLE app.t ENABLE REPLICA TRIGGER t_touch")
        .await
        .unwrap();
    let replica =
        definition(&snapshot(&client).await, Kind::Trigger, "app.t", "t_touch").to_string();
    assert!(replica.ends_with(" -- ENABLE REPLICA"), "{replica}");
    assert!(definition(&s, Kind::Rule, "app.t", "t_keep").ends_with(" -- DISABLED"));
    assert!(
        s.text().contains("DO INSTEAD NOTHING; -- DISABLED"),
        "{}",
        s.text()
    );
    assert!(
        s.text().contains("(((1 / (id - id)))); -- INVALID"),
        "{}",
        s.text()
    );
}

fn run(db: &TestDb, dir: &Path, args: &[&str]) -> Output {
    output(
        binary()
            .args(args)
            .args(["--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir),
    )
}

#[tokio::test]
async fn schema_prints_the_same_text_for_two_databases_migrated_the_same_way() {
    let (a, b) = (support::database().await, support::database().await);
    for db in [&a, &b] {
        support::up_ok(db, &seed_dir()).await;
    }
    let first = run(&a, &seed_dir(), &["schema"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.stdout, run(&a, &seed_dir(), &["schema"]).stdout);
    assert_eq!(first.stdout, run(&b, &seed_dir(), &["schema"]).stdout);
    // It reads the database alone: no migrations directory is needed.
    let nowhere = tempfile::tempdir().unwrap();
    let without = run(&a, &nowhere.path().join("migrations"), &["schema"]);
    assert_eq!(without.code, 0, "{}", without.stderr);
    assert_eq!(without.stdout, first.stdout);
    assert!(
        first.stdout.contains(
            "CREATE TABLE public.video_requests (\n    id uuid NOT NULL DEFAULT gen_random_uuid(),"
        ),
        "{}",
        first.stdout
    );
    assert!(
        first
            .stdout
            .contains("CREATE INDEX idx_video_requests_status_created")
    );
    assert!(
        !first.stdout.contains("schema_migrations"),
        "{}",
        first.stdout
    );
}

#[tokio::test]
async fn up_write_schema_writes_what_schema_prints_and_a_dry_run_writes_nothing() {
    let db = support::database().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("schema.sql");
    let file_arg = file.to_str().unwrap();
    let dry = run(
        &db,
        &seed_dir(),
        &["up", "--dry-run", "--write-schema", file_arg],
    );
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(!file.exists());
    let out = run(&db, &seed_dir(), &["up", "--write-schema", file_arg]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written, run(&db, &seed_dir(), &["schema"]).stdout);
    assert!(written.contains("CREATE TABLE public.video_requests"));
    // With nothing left to apply the file is still brought up to date.
    std::fs::remove_file(&file).unwrap();
    let again = run(&db, &seed_dir(), &["up", "--write-schema", file_arg]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
}

/// `--write-schema` through a symbolic link writes the link's target, leaving the link; a
/// device or a directory there is refused before anything runs.
#[tokio::test]
async fn up_write_schema_writes_through_a_link_and_refuses_what_is_not_a_file() {
    let db = support::database().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    let target = dir.path().join("real/schema.sql");
    std::fs::write(&target, "old").unwrap();
    let link = dir.path().join("schema.sql");
    std::os::unix::fs::symlink("real/schema.sql", &link).unwrap();
    let out = run(
        &db,
        &seed_dir(),
        &["up", "--write-schema", link.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let written = std::fs::read_to_string(&target).unwrap();
    assert!(
        written.contains("CREATE TABLE public.video_requests"),
        "{written}"
    );
    let empty = support::database().await;
    for (path, what) in [
        ("/dev/null", "is a device"),
        (dir.path().to_str().unwrap(), "is a directory"),
    ] {
        let out = run(&empty, &seed_dir(), &["up", "--write-schema", path]);
        assert_eq!(out.code, 2, "{path}: {}", out.stderr);
        let text = summary_message(&out);
        assert!(text.contains(what), "{text}");
        assert!(
            support::tables(&empty.client().await).await.is_empty(),
            "{path}"
        );
    }
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

/// Output that cannot be written (a full disk under `> file`) fails the run: a script reading
/// `status --format json` or a file `schema` writes would otherwise get nothing with exit 0.
#[tokio::test]
async fn output_that_cannot_be_written_fails_the_run() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    for args in [
        &["schema"][..],
        &["status", "--format", "json"],
        &["status"],
        &["verify", "--schema"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = output(
            binary()
                .args(args)
                .args(["--log-format", "json"])
                .env("DATABASE_URL", &db.url)
                .env("MIGRATIONS_DIR", seed_dir())
                .stdout(full),
        );
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        let text = summary_message(&out);
        assert!(text.contains("cannot write the output to stdout"), "{text}");
    }
}

/// A migration that needs what was made by hand on the target (here its schema) fails in
/// `verify --schema`'s replay: said as the replay's failure, not as a deploy's.
#[tokio::test]
async fn a_replay_that_fails_says_it_was_the_replay() {
    let db = support::database().await;
    db.client()
        .await
        .batch_execute("CREATE SCHEMA app")
        .await
        .unwrap();
    let dir = support::migrations(&[("001_t.sql", "CREATE TABLE IF NOT EXISTS app.t (i int);")]);
    support::up_ok(&db, dir.path()).await;
    let (code, _, message) = verify(&db, dir.path());
    assert_eq!(code, 1, "{message}");
    assert!(
        message
            .starts_with("replaying the applied migrations into the scratch database: migration 1"),
        "{message}"
    );
    assert!(message.contains("3F000"), "{message}");
    assert!(message.contains("the target was not touched"), "{message}");
    // A search path set on the database after migrating is the scratch database's from the
    // replay's first file, where its schema is not made yet: the message says that too.
    let db = support::database().await;
    let dir = support::migrations(&[
        (
            "001_ext.sql",
            "CREATE EXTENSION IF NOT EXISTS citext;\nCREATE SCHEMA IF NOT EXISTS app;\n",
        ),
        (
            "002_t.sql",
            "CREATE TABLE app.users (id int, email citext);\n",
        ),
    ]);
    support::up_ok(&db, dir.path()).await;
    db.set_search_path("app").await;
    let out = run(
        &db,
        dir.path(),
        &[
            "--history-table",
            "public.schema_migrations",
            "verify",
            "--schema",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    let message = summary_message(&out);
    assert!(
        message.contains("3F000") && message.contains("a search_path set on the database or role"),
        "{message}"
    );
}

/// A search path set on the database that names a schema no migration makes (made by hand,
/// or by the application, as Kestra's Flyway and sqlx services expect): the replay makes it
/// first, so the tables land where `up` put them, not all in `public` as drift (Kestra's
/// audit). A schema a migration makes is left to it.
#[tokio::test]
async fn a_search_path_schema_no_migration_makes_is_made_for_the_replay() {
    let db = support::database().await;
    (db.client().await)
        .batch_execute("CREATE SCHEMA app")
        .await
        .unwrap();
    db.set_search_path("app, public").await;
    let dir = support::migrations(&[
        (
            "001_t.sql",
            "CREATE TABLE t (id int);\nCREATE INDEX t_id ON t (id);\n",
        ),
        (
            "002_own.sql",
            "CREATE SCHEMA own;\nCREATE TABLE own.u (id int);\n",
        ),
    ]);
    support::up_ok(&db, dir.path()).await;
    let client = db.client().await;
    let schema: String = support::one(
        &client,
        "SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = 't'",
    )
    .await;
    assert_eq!(schema, "app");
    let (code, text, message) = verify(&db, dir.path());
    assert_eq!(code, 0, "{text}\n{message}");
    // A table made by hand in it is still drift.
    client
        .batch_execute("CREATE TABLE app.hand (id int)")
        .await
        .unwrap();
    let (code, text, _) = verify(&db, dir.path());
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("app.hand"), "{text}");
    // `test` rehearses with it too: a migration naming it runs there as it ran on the target.
    let named = support::migrations(&[
        ("001_v.sql", "CREATE TABLE IF NOT EXISTS app.v (id int);\n"),
        ("001_v.down.sql", "DROP TABLE IF EXISTS app.v;\n"),
    ]);
    let out = run(&db, named.path(), &["test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

/// A search path naming only a schema made by hand (Authelia's `search_path = authelia`):
/// the history table goes there on the target, and in the scratch database the schema is
/// made before the history table is looked for, which found nowhere for it and refused.
#[tokio::test]
async fn a_search_path_of_one_schema_made_by_hand_holds_the_replay_s_history_too() {
    let db = support::database().await;
    (db.client().await)
        .batch_execute("CREATE SCHEMA authelia")
        .await
        .unwrap();
    db.set_search_path("authelia").await;
    // A DO block whose comment names the schema (River's `-- River's ...`) makes none.
    let dir = support::migrations(&[
        ("001_t.sql", "CREATE TABLE IF NOT EXISTS t (id int);\n"),
        ("001_t.down.sql", "DROP TABLE IF EXISTS t;\n"),
        (
            "002_do.sql",
            "DO $body$\nBEGIN\n  -- Authelia's own table, kept\n  PERFORM 1;\nEND\n$body$;\n",
        ),
        ("002_do.down.sql", "SELECT 1;\n"),
    ]);
    support::up_ok(&db, dir.path()).await;
    let (code, text, message) = verify(&db, dir.path());
    assert_eq!(code, 0, "{text}\n{message}");
    let out = run(&db, dir.path(), &["test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

/// A scratch database the user gives (`--scratch-url`) takes the target's settings for the
/// run, the user's own in it over the database's, without keeping them: Kestra's search path
/// replayed there put every table in `public` and read as drift.
#[tokio::test]
async fn a_given_scratch_database_replays_under_the_target_s_settings_and_keeps_none() {
    let (db, scratch) = (support::database().await, support::database().await);
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA app; ALTER DATABASE {0} SET search_path = public; \
             ALTER ROLE CURRENT_USER IN DATABASE {0} SET search_path = app, \"$user\", public; \
             ALTER DATABASE {0} SET work_mem = '8MB'; ALTER DATABASE {0} SET TimeZone = 'Asia/Tokyo'; \
             ALTER DATABASE {0} SET app.jwt_secret = 'not-for-the-scratch'",
            db.name
        ))
        .await
        .unwrap();
    let dir = support::migrations(&[(
        "001_t.sql",
        "CREATE TABLE t (id int);\nCREATE TEXT SEARCH CONFIGURATION public.mycfg (COPY = pg_catalog.simple);\n",
    )]);
    support::up_ok(&db, dir.path()).await;
    // A setting naming what a migration made, which the empty scratch database lacks.
    client
        .batch_execute(&format!(
            "ALTER DATABASE {} SET default_text_search_config = 'public.mycfg'",
            db.name
        ))
        .await
        .unwrap();
    let schema: String = support::one(
        &client,
        "SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = 't'",
    )
    .await;
    assert_eq!(schema, "app");
    let out = run(
        &db,
        dir.path(),
        &["verify", "--schema", "--scratch-url", &scratch.url],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // One the scratch database refuses (its text search configuration is the target's own)
    // would refuse the login: left out, and said; so is an application's own setting, which
    // is not sent there. The others are given, none said.
    let left_out = |setting: &str| {
        (events(&out.stderr).iter()).any(|e| {
            e["setting"] == setting
                && (e["message"].as_str())
                    .is_some_and(|m| m.starts_with("the scratch database runs without"))
        })
    };
    assert!(left_out("default_text_search_config"), "{}", out.stderr);
    assert!(left_out("app.jwt_secret"), "{}", out.stderr);
    assert!(
        !left_out("TimeZone") && !left_out("search_path"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("not-for-the-scratch"),
        "{}",
        out.stderr
    );
    let scratch_client = scratch.client().await;
    assert!(support::tables(&scratch_client).await.is_empty());
    let kept: i64 = support::one(
        &scratch_client,
        &format!(
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
              WHERE d.datname = '{}'",
            scratch.name
        ),
    )
    .await;
    assert_eq!(kept, 0);
}

/// The schemas of the search path the scratch database is not given: one a migration makes
/// out of sight (a `DO` block's `EXECUTE`, which made it twice), the checking user's own
/// (`"$user"` names whoever runs the check), and one an extension owns (left out of both
/// snapshots on the target only).
#[tokio::test]
async fn search_path_schemas_a_migration_an_extension_or_the_user_owns_are_not_made_twice() {
    let db = support::database().await;
    (db.client().await)
        .batch_execute(
            "CREATE SCHEMA ext_s; CREATE EXTENSION IF NOT EXISTS pgcrypto; \
             ALTER EXTENSION pgcrypto ADD SCHEMA ext_s;",
        )
        .await
        .unwrap();
    db.set_search_path("app, \"$user\", ext_s, public").await;
    let dir = support::migrations(&[
        (
            "001_app.sql",
            "DO $$ BEGIN EXECUTE format('CREATE SCHEMA %I', 'app'); END $$;\n",
        ),
        ("002_t.sql", "CREATE TABLE widgets (id int);\n"),
        (
            "003_public.sql",
            "ALTER TABLE app.widgets ADD COLUMN note text;\n",
        ),
    ]);
    support::up_ok(&db, dir.path()).await;
    // The user's own schema, made after migrating (PostgreSQL 15's advice for a new role).
    (db.client().await)
        .batch_execute("DO $$ BEGIN EXECUTE format('CREATE SCHEMA %I', current_user); END $$")
        .await
        .unwrap();
    // What was made by hand is listed, and nothing else: no `- schema ext_s` made in the
    // scratch database as a plain one, no table moved.
    let (code, text, message) = verify(&db, dir.path());
    assert_eq!(code, 4, "{text}\n{message}");
    let lines: Vec<&str> = (text.lines())
        .filter(|l| l.starts_with("+ ") || l.starts_with("- "))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("+ extension pgcrypto") && lines[1].starts_with("+ schema "),
        "{text}"
    );
}

/// `verify --schema`'s exit code, what it printed, and the summary's message.
fn verify(db: &TestDb, dir: &Path) -> (i32, String, String) {
    let out = run(db, dir, &["verify", "--schema"]);
    let summary = events(&out.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap_or_default().to_string();
    (out.code, out.stdout, message)
}

#[tokio::test]
async fn verify_schema_names_each_change_made_by_hand_and_never_writes_to_the_target() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    let client = db.client().await;
    let before = run(&db, &seed_dir(), &["schema"]).stdout;
    let (code, text, _) = verify(&db, &seed_dir());
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("is what its 2 applied migration(s) create"),
        "{text}"
    );
    assert_eq!(run(&db, &seed_dir(), &["schema"]).stdout, before);
    let cases = [
        (
            "ALTER TABLE video_requests ADD COLUMN hotfix integer",
            "+ column public.video_requests.hotfix: integer",
            "ALTER TABLE video_requests DROP COLUMN hotfix",
        ),
        (
            "DROP INDEX idx_video_requests_user_created",
            "- index public.idx_video_requests_user_created on public.video_requests: CREATE INDEX",
            "CREATE INDEX idx_video_requests_user_created ON video_requests (user_id, created_at DESC)",
        ),
        (
            "ALTER TABLE video_requests ALTER COLUMN generate_audio SET DEFAULT false",
            "~ column public.video_requests.generate_audio: boolean NOT NULL DEFAULT true -> boolean NOT NULL DEFAULT false",
            "ALTER TABLE video_requests ALTER COLUMN generate_audio SET DEFAULT true",
        ),
        (
            "ALTER TABLE video_requests DROP CONSTRAINT video_requests_resolution_check",
            "- constraint video_requests_resolution_check on public.video_requests",
            "ALTER TABLE video_requests ADD CONSTRAINT video_requests_resolution_check CHECK (resolution IN ('720p', '1080p'))",
        ),
        // What a table is besides its columns, and what a column is besides its type.
        (
            "ALTER TABLE video_requests SET (fillfactor = 50)",
            "WITH (fillfactor=50)",
            "ALTER TABLE video_requests RESET (fillfactor)",
        ),
        (
            "ALTER TABLE video_requests REPLICA IDENTITY FULL",
            "REPLICA IDENTITY FULL",
            "ALTER TABLE video_requests REPLICA IDENTITY DEFAULT",
        ),
        (
            "COMMENT ON COLUMN video_requests.prompt IS 'what the user asked'",
            "COMMENT 'what the user asked'",
            "COMMENT ON COLUMN video_requests.prompt IS NULL",
        ),
        (
            "ALTER TABLE video_requests ALTER COLUMN prompt SET STATISTICS 500",
            "STATISTICS 500",
            "ALTER TABLE video_requests ALTER COLUMN prompt SET STATISTICS -1",
        ),
        (
            "CREATE STATISTICS user_guild (ndistinct) ON user_id, guild_id FROM video_requests",
            "+ statistics public.user_guild on public.video_requests: CREATE STATISTICS",
            "DROP STATISTICS user_guild",
        ),
        (
            "CREATE RULE keep AS ON DELETE TO video_requests DO INSTEAD NOTHING",
            "+ rule keep on public.video_requests",
            "DROP RULE keep ON video_requests",
        ),
        (
            "ALTER TABLE video_requests ALTER COLUMN prompt SET (n_distinct = 100)",
            "text NOT NULL WITH (n_distinct=100)",
            "ALTER TABLE video_requests ALTER COLUMN prompt RESET (n_distinct)",
        ),
        (
            "ALTER TABLE video_requests CLUSTER ON idx_video_requests_user_created",
            "-- CLUSTER",
            "ALTER TABLE video_requests SET WITHOUT CLUSTER",
        ),
        (
            "COMMENT ON INDEX idx_video_requests_user_created IS 'the list command'",
            "+ comment on index public.idx_video_requests_user_created: 'the list command'",
            "COMMENT ON INDEX idx_video_requests_user_created IS NULL",
        ),
    ];
    for (change, named, undo) in cases {
        client.batch_execute(change).await.unwrap();
        let (code, text, message) = verify(&db, &seed_dir());
        assert_eq!(code, 4, "{change}: {text}");
        assert!(text.contains(named), "{change}: {text}");
        assert!(message.contains(named), "{change}: {message}");
        let summary = events(&run(&db, &seed_dir(), &["verify", "--schema"]).stderr)
            .pop()
            .unwrap();
        assert_eq!(summary["schema_changes"], 1, "{change}: {summary}");
        assert_eq!(summary["outcome"], "schema_drift");
        client.batch_execute(undo).await.unwrap();
        let (code, text, _) = verify(&db, &seed_dir());
        assert_eq!(code, 0, "after undoing {change}: {text}");
    }
    // An index whose build failed is INVALID; the replay's is not.
    client
        .batch_execute(
            "DROP INDEX idx_video_requests_user_created; \
             INSERT INTO video_requests (user_id, guild_id, channel_id, prompt, duration_seconds, \
             aspect_ratio, resolution, status) VALUES ('u', 'g', 'c', 'p', 4, '16:9', '720p', 'pending')",
        )
        .await
        .unwrap();
    let failed = client
        .batch_execute(
            "CREATE INDEX CONCURRENTLY idx_video_requests_user_created \
             ON video_requests (user_id, created_at DESC) WHERE 1 / (duration_seconds - 4) = 0",
        )
        .await;
    assert!(failed.is_err());
    let (code, text, _) = verify(&db, &seed_dir());
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("-- INVALID"), "{text}");
    // Read-only: the history is what it was; and the scratch database is gone.
    assert_eq!(support::history(&client).await, [1, 2]);
    let out = run(&db, &seed_dir(), &["verify", "--schema"]);
    let events = events(&out.stderr);
    let created = events
        .iter()
        .find(|e| e["message"] == "scratch database created");
    let scratch = created.unwrap()["database"].as_str().unwrap();
    assert!(!support::database_exists(scratch).await);
}

#[tokio::test]
async fn verify_schema_holds_on_a_baselined_database_and_with_migrations_pending() {
    let db = support::database().await;
    let client = db.client().await;
    let seed = std::fs::read_to_string(seed_dir().join("001_create_video_requests.sql")).unwrap();
    client.batch_execute(&seed).await.unwrap();
    let out = run(&db, &seed_dir(), &["baseline", "--version", "1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (code, text, _) = verify(&db, &seed_dir());
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("is what its 1 applied migration(s) create"),
        "{text}"
    );
    // Migration 2 is pending: `up`'s to apply, not drift.
    let out = run(&db, &seed_dir(), &["verify"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
}

/// `up` makes the history table's schema when it is missing: the replay's scratch database
/// has it, a target not migrated yet does not, and that alone is no drift. A schema that holds
/// more than the history is compared.
#[tokio::test]
async fn the_history_table_s_own_schema_is_no_drift() {
    let db = support::database().await;
    let history = ["--history-table", "ops.history"];
    let gate = |db: &TestDb, args: &[&str]| {
        let out = run(db, &seed_dir(), &[history.as_slice(), args].concat());
        (out.code, out.stdout, out.stderr)
    };
    let (code, text, stderr) = gate(&db, &["verify", "--schema"]);
    assert_eq!(code, 0, "{text}{stderr}");
    let (code, _, stderr) = gate(&db, &["up"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, text, stderr) = gate(&db, &["verify", "--schema", "--privileges"]);
    assert_eq!(code, 0, "{text}{stderr}");
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE ops.by_hand (i int)")
        .await
        .unwrap();
    let (code, text, _) = gate(&db, &["verify", "--schema"]);
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("+ table ops.by_hand"), "{text}");
    assert!(!text.contains("schema ops"), "{text}");
}

/// A database restored from pg_dump: the dump writes `v IN ('a', 'b')` on a varchar column
/// as a cast of the whole array, which the restore parses into a cast of each element. The
/// same check, not drift; a different list still is.
#[tokio::test]
async fn verify_schema_holds_on_a_database_restored_from_a_dump() {
    let migration = "CREATE TABLE t (v varchar(10) CHECK (v IN ('a', 'b')));\n\
                     CREATE INDEX t_v ON t (v) WHERE v IN ('a', 'b');\n";
    let dir = support::migrations(&[("001_t.sql", migration)]);
    // What pg_dump writes for them, as a restore runs it.
    let restored = |values: &str| {
        format!(
            "CREATE TABLE public.t (v character varying(10), CONSTRAINT t_v_check CHECK (((v)::text = ANY ((ARRAY[{values}])::text[]))));\n\
             CREATE INDEX t_v ON public.t USING btree (v) WHERE ((v)::text = ANY ((ARRAY[{values}])::text[]));"
        )
    };
    let same = "'a'::character varying, 'b'::character varying";
    let other = "'a'::character varying, 'c'::character varying";
    for (values, drift) in [(same, false), (other, true)] {
        let db = support::database().await;
        let client = db.client().await;
        client.batch_execute(&restored(values)).await.unwrap();
        let out = run(&db, dir.path(), &["baseline", "--version", "1"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let (code, text, message) = verify(&db, dir.path());
        match drift {
            false => assert_eq!(code, 0, "{text}\n{message}"),
            true => {
                assert_ne!(code, 0, "{text}");
                assert!(
                    text.contains("~ constraint t_v_check on public.t"),
                    "{text}"
                );
                assert!(text.contains("~ index public.t_v on public.t"), "{text}");
            }
        }
    }
}

#[tokio::test]
async fn the_replay_runs_under_the_target_database_s_own_settings() {
    let db = support::database().await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA app; ALTER DATABASE {} SET search_path = app, public",
            db.name
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("001_widgets.sql"),
        "CREATE SCHEMA IF NOT EXISTS app;\nCREATE TABLE IF NOT EXISTS widgets (id int);\n",
    )
    .unwrap();
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The table went where the database's search_path put it, in the target and the replay.
    let (code, text, message) = verify(&db, dir.path());
    assert_eq!(code, 0, "{text}\n{message}");
}

#[tokio::test]
async fn the_replay_runs_under_the_user_s_own_settings_in_the_target_database() {
    // `ALTER ROLE ... IN DATABASE ... SET` (what managed services' consoles write) wins over
    // the database's own setting, so the replay needs it too.
    let db = support::database().await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA app; ALTER DATABASE {0} SET search_path = public; \
             ALTER ROLE CURRENT_USER IN DATABASE {0} SET search_path = app, public",
            db.name
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("001_widgets.sql"),
        "CREATE SCHEMA IF NOT EXISTS app;\nCREATE TABLE IF NOT EXISTS widgets (id int);\n",
    )
    .unwrap();
    let out = run(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let schema: String = client
        .query_one(
            "SELECT schemaname::text FROM pg_tables WHERE tablename = 'widgets'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema, "app");
    let (code, text, message) = verify(&db, dir.path());
    assert_eq!(code, 0, "{text}\n{message}");
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE s.setdatabase <> 0 AND d.oid IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "no setting outlives the scratch database");
}

#[tokio::test]
async fn a_statement_timeout_set_on_the_database_does_not_fail_the_scratch_database() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    (db.client().await)
        .batch_execute(&format!(
            "ALTER DATABASE {} SET statement_timeout = '20ms'",
            db.name
        ))
        .await
        .unwrap();
    let (code, text, message) = verify(&db, &seed_dir());
    assert_eq!(code, 0, "{text}\n{message}");
}

#[tokio::test]
async fn owners_and_grants_are_compared_only_when_asked() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    let client = db.client().await;
    support::role("schema_reader").await;
    client
        .batch_execute("GRANT SELECT ON video_requests TO schema_reader")
        .await
        .unwrap();
    let (code, text, _) = verify(&db, &seed_dir());
    assert_eq!(code, 0, "{text}");
    let out = run(&db, &seed_dir(), &["verify", "--schema", "--privileges"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("~ privileges on table public.video_requests: OWNER postgres GRANTS postgres=arwdDxt/postgres -> OWNER postgres GRANTS postgres=arwdDxt/postgres schema_reader=r/postgres"),
        "{}",
        out.stdout
    );
    let printed = run(&db, &seed_dir(), &["schema", "--privileges"]).stdout;
    assert!(
        printed.contains("-- privileges on table public.video_requests: OWNER postgres GRANTS"),
        "{printed}"
    );
    assert!(
        !run(&db, &seed_dir(), &["schema"])
            .stdout
            .contains("privileges")
    );
}

#[tokio::test]
async fn column_grants_type_grants_and_default_privileges_are_compared_when_asked() {
    let db = support::database().await;
    support::up_ok(&db, &seed_dir()).await;
    let client = db.client().await;
    support::role("schema_columns").await;
    client
        .batch_execute("CREATE TYPE public.shade AS ENUM ('dark', 'light')")
        .await
        .unwrap();
    // Each grant is made by hand, seen, and revoked: revoked, it reads as never granted.
    let by_hand = [
        (
            "GRANT SELECT (prompt) ON video_requests TO schema_columns",
            "privileges on column public.video_requests.prompt: GRANTS schema_columns=r/postgres",
            "REVOKE SELECT (prompt) ON video_requests FROM schema_columns",
        ),
        (
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO schema_columns",
            "privileges on new tables of postgres: GRANTS postgres=arwdDxt/postgres schema_columns=r/postgres",
            "ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM schema_columns",
        ),
        (
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO schema_columns",
            "privileges on new sequences of postgres in schema public: GRANTS schema_columns=U/postgres",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE ON SEQUENCES FROM schema_columns",
        ),
    ];
    for (grant, seen, revoke) in by_hand {
        client.batch_execute(grant).await.unwrap();
        let out = run(&db, &seed_dir(), &["verify", "--schema", "--privileges"]);
        assert_eq!(out.code, 4, "{grant}: {}", out.stderr);
        // Not in what the migrations create: the target has it in addition.
        let added = format!("+ {seen}");
        assert!(out.stdout.contains(&added), "{grant}: {}", out.stdout);
        let printed = run(&db, &seed_dir(), &["schema", "--privileges"]).stdout;
        assert!(printed.contains(&format!("-- {seen}\n")), "{printed}");
        assert!(!run(&db, &seed_dir(), &["schema"]).stdout.contains(seen));
        client.batch_execute(revoke).await.unwrap();
    }
    // A type's grants: USAGE given to PUBLIC by default, spelled out; a grant adds to them.
    client
        .batch_execute("GRANT USAGE ON TYPE public.shade TO schema_columns")
        .await
        .unwrap();
    let printed = run(&db, &seed_dir(), &["schema", "--privileges"]).stdout;
    assert!(
        printed.starts_with(
            "-- Schema as db-migrate reads it from the catalogs (`db-migrate schema --privileges`)"
        ),
        "{printed}"
    );
    assert!(
        printed.contains("-- privileges on type public.shade: OWNER postgres GRANTS =U/postgres postgres=U/postgres schema_columns=U/postgres"),
        "{printed}"
    );
    // Every grant revoked and the type gone: what the seed creates again, grants and all.
    client
        .batch_execute("DROP TYPE public.shade")
        .await
        .unwrap();
    let out = run(&db, &seed_dir(), &["verify", "--schema", "--privileges"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}
