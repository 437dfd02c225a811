//! Other migration tools: their history tables, read so that `baseline --from TOOL` can
//! record in ours what that tool already applied (leaving theirs as it is), and their
//! migration directories, which `import --from TOOL` writes as ours.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::Digest;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::error::Error;
use crate::history::Table;
use crate::plan::Recorded;
use crate::source::{self, invalid};

/// A tool whose history `baseline --from` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `schema_migrations (version bigint, dirty boolean)`: one row, the current version.
    GolangMigrate,
    /// `schema_migrations (version varchar)`: a row per applied version.
    Dbmate,
    /// `_sqlx_migrations (version bigint, success boolean, ...)`: a row per migration run.
    Sqlx,
    /// `__diesel_schema_migrations (version varchar(50), run_on timestamp)`: a row per
    /// applied version, written as its directory's name has it, without the dashes.
    Diesel,
    /// `flyway_schema_history (version varchar, success boolean, ...)`: a row per script run.
    Flyway,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::GolangMigrate => "golang-migrate",
            Tool::Dbmate => "dbmate",
            Tool::Sqlx => "sqlx",
            Tool::Diesel => "diesel",
            Tool::Flyway => "flyway",
        }
    }

    /// The history table the tool uses unless told otherwise.
    pub fn default_table(self) -> &'static str {
        match self {
            Tool::GolangMigrate | Tool::Dbmate => "schema_migrations",
            Tool::Sqlx => "_sqlx_migrations",
            Tool::Diesel => "__diesel_schema_migrations",
            Tool::Flyway => "flyway_schema_history",
        }
    }

    /// The tool `baseline --from` names so.
    pub fn named(from: &str) -> Option<Tool> {
        [
            Tool::GolangMigrate,
            Tool::Dbmate,
            Tool::Sqlx,
            Tool::Diesel,
            Tool::Flyway,
        ]
        .into_iter()
        .find(|tool| tool.name() == from)
    }

    /// The history table as the tool creates it, under `table` (quoted): what a replay of
    /// migrations that use it starts from.
    pub fn create_sql(self, table: &str) -> String {
        let columns = match self {
            Tool::GolangMigrate => "version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL",
            Tool::Dbmate => "version varchar(128) PRIMARY KEY",
            Tool::Sqlx => {
                "version bigint PRIMARY KEY, description text NOT NULL, \
                 installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL, \
                 checksum bytea NOT NULL, execution_time bigint NOT NULL"
            }
            Tool::Diesel => {
                "version varchar(50) PRIMARY KEY NOT NULL, \
                 run_on timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP"
            }
            Tool::Flyway => {
                "installed_rank integer NOT NULL PRIMARY KEY, version varchar(50), \
                 description varchar(200) NOT NULL, type varchar(20) NOT NULL, \
                 script varchar(1000) NOT NULL, checksum integer, \
                 installed_by varchar(100) NOT NULL, installed_on timestamp NOT NULL DEFAULT now(), \
                 execution_time integer NOT NULL, success boolean NOT NULL"
            }
        };
        format!("CREATE TABLE IF NOT EXISTS {table} ({columns})")
    }

    /// The query that reads the tool's history: (version as text, whether it succeeded, the
    /// row's kind), in the order the tool wrote the rows.
    fn query(self, table: &str) -> String {
        match self {
            Tool::GolangMigrate => format!("SELECT version::text, NOT dirty, 'SQL' FROM {table}"),
            Tool::Dbmate => format!("SELECT version::text, true, 'SQL' FROM {table}"),
            Tool::Sqlx => format!("SELECT version::text, success, 'SQL' FROM {table}"),
            Tool::Diesel => format!("SELECT version::text, true, 'SQL' FROM {table}"),
            // Flyway's repeatable scripts (R__) have no version; its schema-creation marker
            // applies nothing. A BASELINE row stands for every version up to its own; an
            // UNDO_* row takes its version back, and so does the DELETE row `flyway repair`
            // writes for a migration whose file is gone (Flyway then counts it not applied).
            Tool::Flyway => format!(
                "SELECT version, success, type FROM {table} \
                  WHERE version IS NOT NULL AND type <> 'SCHEMA' \
                  ORDER BY installed_rank"
            ),
        }
    }
}

/// Reads `tool`'s history in `table`: golang-migrate keeps only its current version, the others
/// every version they applied. Refuses a history that says a migration failed halfway
/// (golang-migrate's dirty flag, sqlx's and Flyway's failed rows), and a version that is not a
/// whole number, with what to do.
pub async fn applied(client: &Client, tool: Tool, table: &Table) -> Result<Recorded, Error> {
    let rows = client
        .query(&tool.query(table.quoted()), &[])
        .await
        .map_err(|e| match e.code() {
            Some(code) if *code == SqlState::UNDEFINED_TABLE => Error::Config(format!(
                "no {} history table {} in this database; pass --from-table with the table {} uses",
                tool.name(),
                table.name(),
                tool.name()
            )),
            Some(code) if *code == SqlState::UNDEFINED_COLUMN => Error::Config(format!(
                "the table {} is not {}'s history (its columns differ); check --from and --from-table",
                table.name(),
                tool.name()
            )),
            _ => Error::database("reading the other tool's history")(e),
        })?;
    let mut versions = Vec::with_capacity(rows.len());
    let mut baseline = None;
    for row in &rows {
        let (text, ok, kind): (String, bool, String) = (row.get(0), row.get(1), row.get(2));
        let version: i64 = text.trim().parse().map_err(|_| {
            Error::Config(format!(
                "{} recorded version {text:?}, which is not a whole number as db-migrate's versions are; renumber every file to a whole number that keeps {}'s order (as `import` says) and adopt with `baseline --version N`, N the renumbered last version {} applied, leaving {}'s history table as it is (rewritten, it breaks that tool's own runs)",
                tool.name(),
                tool.name(),
                tool.name(),
                tool.name()
            ))
        })?;
        if !ok {
            return Err(Error::Config(match tool {
                Tool::GolangMigrate => format!(
                    "golang-migrate left this database dirty at version {version}: that migration failed partway; repair the schema by hand, run `migrate force {version}` (or the version before it), then adopt"
                ),
                _ => format!(
                    "{} recorded version {version} as failed; repair the schema by hand and that tool's history, then adopt",
                    tool.name()
                ),
            }));
        }
        match kind.as_str() {
            "BASELINE" => baseline = Some(version),
            undo if undo.starts_with("UNDO") || undo == "DELETE" => {
                versions.retain(|v| *v != version)
            }
            _ => versions.push(version),
        }
    }
    versions.sort_unstable();
    versions.dedup();
    Ok(match (tool, baseline) {
        (_, Some(at)) => Recorded::Baseline {
            at,
            then: versions.into_iter().filter(|v| *v > at).collect(),
        },
        (Tool::GolangMigrate, None) => match versions.last() {
            Some(current) => Recorded::UpTo(*current),
            None => Recorded::Exactly(Vec::new()),
        },
        _ => Recorded::Exactly(versions),
    })
}

/// The rollback files the tools write for a new migration, before anyone fills them in:
/// sqlx's `migrate add -r`, diesel's `migration generate`.
const ROLLBACK_TEMPLATES: [&str; 2] = [
    "-- Add down migration script here",
    "-- This file should undo anything in `up.sql`",
];

/// What a migration that held no statement is given, so that it runs and its version stays.
const NO_OP: &str = "SELECT 1; -- imported without a statement";

/// The versions of `adopted` whose file is not the text the other tool ran, by the checksum it
/// recorded: sqlx's SHA-384 of the file's bytes, Flyway's CRC32 of its lines. Such a file was
/// edited since (or read by sqlx with `ignored-chars`), and baseline would record it as it is
/// now. What `import` changes on the way (the `-- no-transaction` line, a `SELECT 1;` for a file
/// without a statement, the file's own `BEGIN` and `COMMIT` commented out) is undone before
/// comparing. The other tools keep no checksum.
pub async fn edited_since(
    client: &Client,
    tool: Tool,
    table: &Table,
    adopted: &[&source::Migration],
) -> Result<Vec<Edited>, Error> {
    Ok(compared(client, tool, table, adopted).await?.0)
}

/// A migration whose file differs from what the other tool ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edited {
    pub version: i64,
    /// Only in its line endings (CRLF against LF): a checkout that converts them (git's
    /// `core.autocrlf`), not an edit of its SQL.
    pub line_endings: bool,
}

/// [`edited_since`], and how many of `adopted` have a recorded checksum that matches.
async fn compared(
    client: &Client,
    tool: Tool,
    table: &Table,
    adopted: &[&source::Migration],
) -> Result<(Vec<Edited>, usize), Error> {
    let table = table.quoted();
    let query = match tool {
        Tool::Sqlx => format!("SELECT version::text, checksum FROM {table} WHERE success"),
        // A later row of a version (run again after an undo, or `flyway repair`) wins.
        Tool::Flyway => format!(
            "SELECT version, int4send(checksum) FROM {table} \
              WHERE type = 'SQL' AND success AND checksum IS NOT NULL ORDER BY installed_rank"
        ),
        _ => return Ok((Vec::new(), 0)),
    };
    let rows = (client.query(&query, &[]).await)
        .map_err(Error::database("reading the other tool's checksums"))?;
    let recorded: BTreeMap<i64, Vec<u8>> = rows
        .iter()
        // Flyway's repeatable scripts have no version.
        .filter_map(|r| {
            let version: Option<String> = r.try_get(0).ok()?;
            Some((version?.trim().parse().ok()?, r.try_get(1).ok()?))
        })
        .collect();
    let fingerprint = |text: &str| -> Vec<u8> {
        match tool {
            Tool::Sqlx => sha2::Sha384::digest(text.as_bytes()).to_vec(),
            // Flyway adds up each line without its line break, after a byte order mark.
            _ => {
                let mut crc = crc32fast::Hasher::new();
                for piece in text.split(['\r', '\n']) {
                    crc.update(piece.as_bytes());
                }
                crc.finalize().to_be_bytes().to_vec()
            }
        }
    };
    let (mut edited, mut matched) = (Vec::new(), 0);
    for m in adopted {
        let Some(theirs) = recorded.get(&m.version) else {
            continue;
        };
        let texts = as_run(&m.up.sql, tool);
        if texts.iter().any(|text| fingerprint(text) == *theirs) {
            matched += 1;
            continue;
        }
        let other_endings = |text: &String| match text.contains("\r\n") {
            true => text.replace("\r\n", "\n"),
            false => text.replace('\n', "\r\n"),
        };
        let line_endings = (texts.iter()).any(|text| fingerprint(&other_endings(text)) == *theirs);
        edited.push(Edited {
            version: m.version,
            line_endings,
        });
    }
    Ok((edited, matched))
}

/// [`crate::history::refuse_other_tools`], then [`refuse_out_of_reach`]: for a database with
/// no history of ours.
pub async fn refuse_other_histories(
    client: &Client,
    table: &Table,
    files: &[source::Migration],
) -> Result<(), Error> {
    crate::history::refuse_other_tools(client, table, files).await?;
    refuse_out_of_reach(client, table, files).await
}

/// For a history table named without a schema, on a database with no history of ours: another
/// tool's history table in a schema the search path does not reach (a `search_path` set on
/// the role or database since that tool ran: UPchieve's `ALTER ROLE ... SET search_path`
/// hid dbmate's `public.schema_migrations`), where every version it applied has its file
/// here, and for sqlx and Flyway one file's checksum at least says it ran these files. Applying them would
/// run again what that tool ran. golang-migrate keeps one number, which another service's
/// table in its own schema may share, so it is not looked for; nor are tables another
/// service keeps for its own migrations, which name no file of this directory.
pub async fn refuse_out_of_reach(
    client: &Client,
    table: &Table,
    files: &[source::Migration],
) -> Result<(), Error> {
    if table.given_schema().is_some() || files.is_empty() {
        return Ok(());
    }
    let candidates = client
        .query(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relname IN ('schema_migrations', '_sqlx_migrations', \
                                  '__diesel_schema_migrations', 'flyway_schema_history') \
                AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't' \
                AND NOT n.nspname = ANY (pg_catalog.current_schemas(true)) \
                AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' \
                AND (c.relname <> 'schema_migrations' \
                     OR (SELECT pg_catalog.string_agg(attname, ' ' ORDER BY attnum) \
                           FROM pg_catalog.pg_attribute \
                          WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped) = 'version') \
              ORDER BY n.nspname, c.relname",
            &[],
        )
        .await
        .map_err(Error::database(
            "looking for other tools' history tables in other schemas",
        ))?;
    for row in candidates {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let tool = match name.as_str() {
            "_sqlx_migrations" => Tool::Sqlx,
            "__diesel_schema_migrations" => Tool::Diesel,
            "flyway_schema_history" => Tool::Flyway,
            _ => Tool::Dbmate,
        };
        let Ok(theirs) = Table::parse(&format!("{schema}.{name}")) else {
            continue;
        };
        // Not that tool's (a table of other columns), or a history that says a migration
        // failed: not taken for this directory's.
        let recorded = match applied(client, tool, &theirs).await {
            Ok(recorded @ Recorded::Exactly(_)) => recorded,
            Ok(Recorded::Baseline { at, then }) if !then.is_empty() => {
                Recorded::Baseline { at, then }
            }
            _ => continue,
        };
        let Ok((adopted, _)) = crate::plan::adopt(files, &[], &recorded, tool.name(), false) else {
            continue;
        };
        // For the tools that keep a checksum, one file whose checksum matches says these are
        // this directory's files; another service's table with versions 1, 2, 3 matches none
        // of them (and a BASELINE or Java migration's row has none to match).
        let checked = matches!(tool, Tool::Sqlx | Tool::Flyway);
        if adopted.is_empty()
            || (checked && compared(client, tool, &theirs, &adopted).await?.1 == 0)
        {
            continue;
        }
        return Err(Error::OtherToolsOutOfReach {
            history: table.name().to_string(),
            tool: tool.name(),
            from: tool.name(),
            table: theirs.name().to_string(),
        });
    }
    Ok(())
}

/// The texts the other tool may have run for a file that reads `text` here: as it is, without
/// what `import` added to it, with the `BEGIN` and `COMMIT` it commented out put back, and (for sqlx, which hashes the bytes) with the byte order mark
/// that db-migrate drops when it reads a file.
fn as_run(text: &str, tool: Tool) -> Vec<String> {
    let mut texts = vec![text.to_string()];
    if let Some(rest) = text.strip_prefix("-- no-transaction\n") {
        texts.push(rest.to_string());
    }
    let added = format!("{NO_OP}\n");
    for index in 0..texts.len() {
        if let Some(body) = texts[index].strip_suffix(&added).map(str::to_string) {
            if let Some(short) = body.strip_suffix('\n') {
                texts.push(short.to_string());
            }
            texts.push(body);
        }
    }
    let restored: Vec<String> = texts.iter().filter_map(|t| uncommented(t)).collect();
    texts.extend(restored);
    if tool == Tool::Sqlx {
        let marked: Vec<String> = (texts.iter())
            .map(|t| format!("{}{t}", crate::sql::BOM))
            .collect();
        texts.extend(marked);
    }
    texts
}

/// A migration layout `import --from` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `NNN_name.up.sql` and `NNN_name.down.sql`.
    GolangMigrate,
    /// `NNN_name.sql` holding `-- migrate:up` and `-- migrate:down` sections.
    Dbmate,
    /// `NNN_name.up.sql` / `.down.sql`, or a lone `NNN_name.sql`.
    Sqlx,
    /// `YYYY-MM-DD-HHMMSS_name/up.sql` and `down.sql` directories; `metadata.toml` may say
    /// `run_in_transaction = false`.
    Diesel,
    /// `V1__name.sql`, with `U1__name.sql` to undo it.
    Flyway,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::GolangMigrate => "golang-migrate",
            Layout::Dbmate => "dbmate",
            Layout::Sqlx => "sqlx",
            Layout::Diesel => "diesel",
            Layout::Flyway => "flyway",
        }
    }
}

/// One migration read from another tool's directory, ready to write as ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub version: i64,
    pub name: String,
    pub up: String,
    /// None when the other tool had no rollback, or an empty one.
    pub down: Option<String>,
    /// Where it came from, for the report.
    pub source: String,
    /// What was changed on the way, for the report.
    pub changes: Vec<String>,
}

/// Reads `src`, laid out as `layout`, into migrations; refuses (naming the file) what cannot be
/// carried over: a version that is not a whole number, one version twice, a Flyway repeatable
/// script.
pub fn read(layout: Layout, src: &Path) -> Result<Vec<Imported>, Error> {
    let mut entries = listed(src)?;
    // Flyway finds migrations in the subdirectories of its locations too.
    if layout == Layout::Flyway {
        let mut below = Vec::new();
        while let Some(path) = entries.pop() {
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            // Not through a symbolic link: one to a directory above would never end.
            let dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            match dir && !hidden {
                true => entries.extend(listed(&path)?),
                false => below.push(path),
            }
        }
        entries = below;
        entries.sort();
    }
    let mut ups: BTreeMap<i64, Imported> = BTreeMap::new();
    let mut downs: BTreeMap<i64, (String, Vec<String>, String)> = BTreeMap::new();
    // The order the other tool runs them in, where that is not by number: diesel orders
    // versions as text, dbmate files by name. (key, version, source) of each migration.
    let mut order: Vec<(String, i64, String)> = Vec::new();
    for path in entries {
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if file.starts_with('.') {
            continue;
        }
        let parsed = match layout {
            Layout::Diesel if path.is_dir() => diesel(&path, &file)?,
            Layout::Diesel => continue,
            _ if !file.ends_with(".sql") => continue,
            Layout::Dbmate => dbmate(&path, &file)?,
            Layout::GolangMigrate if !file.ends_with(".up.sql") && !file.ends_with(".down.sql") => {
                return Err(invalid(
                    &path,
                    "is not a golang-migrate migration: golang-migrate runs only NAME.up.sql and NAME.down.sql and skips this file, so it never ran; rename it to .up.sql if it should run, or move it out of the directory".into(),
                ));
            }
            Layout::GolangMigrate | Layout::Sqlx => reversible(&path, &file)?,
            Layout::Flyway => flyway(&path, &file)?,
        };
        let Some((version, part)) = parsed else {
            continue;
        };
        // Named by where it lies in `src`, when that is below it (Flyway).
        let part = match part {
            Part::Up(mut imported) => {
                if let Ok(below) = path.strip_prefix(src) {
                    imported.source = below.to_string_lossy().into_owned();
                }
                Part::Up(imported)
            }
            down => down,
        };
        match part {
            Part::Down(sql, notes) => {
                if downs.insert(version, (sql, notes, file.clone())).is_some() {
                    return Err(invalid(
                        &path,
                        format!("is a second rollback for version {version}; keep one"),
                    ));
                }
            }
            Part::Up(imported) => {
                if let Some(other) = ups.get(&version) {
                    // Named by their leading digits, as the other tool read them.
                    let digits = |source: &str| {
                        let name = source.rsplit('/').next().unwrap_or(source);
                        name.chars()
                            .take_while(char::is_ascii_digit)
                            .collect::<String>()
                    };
                    let mut both = [digits(&other.source), digits(&imported.source)];
                    both.sort();
                    // Only where the other tool keeps versions as text: golang-migrate and
                    // sqlx read them as numbers too, and refuse such a pair themselves.
                    let as_text = matches!(layout, Layout::Diesel | Layout::Dbmate);
                    let fix = match as_text && both[0] != both[1] {
                        true => format!(
                            "{} tells {:?} and {:?} apart by their text, db-migrate reads both as the number {version}; rename one to a free version before importing",
                            layout.name(),
                            both[0],
                            both[1]
                        ),
                        false => "keep one".to_string(),
                    };
                    return Err(invalid(
                        &path,
                        format!("version {version} is also {}; {fix}", other.source),
                    ));
                }
                let key = match layout {
                    Layout::Diesel => file.split('_').next().unwrap_or("").replace('-', ""),
                    Layout::Dbmate => file.clone(),
                    _ => String::new(),
                };
                order.push((key, version, imported.source.clone()));
                ups.insert(version, imported);
            }
        }
    }
    if matches!(layout, Layout::Diesel | Layout::Dbmate) {
        order.sort();
        if layout == Layout::Diesel && disordered(&order).is_some() {
            widen(src, &mut order, &mut ups)?;
        }
        if let Some(pair) = disordered(&order) {
            let ((first_key, first, source), (next_key, next, next_source)) = (&pair[0], &pair[1]);
            let how = match layout {
                Layout::Diesel => "diesel orders versions as text",
                _ => "dbmate orders files by name",
            };
            // diesel's own names grew four digits (YYYY-MM-DD-HHMMSS-NNNN) in version 2.2.
            let lengths = match layout == Layout::Diesel && first_key.len() != next_key.len() {
                true => format!(
                    " (here they differ in length: {} digits against {})",
                    first_key.len(),
                    next_key.len()
                ),
                false => String::new(),
            };
            return Err(invalid(
                &src.join(source),
                format!(
                    "is version {first}, above the {next} of {next_source}, which {} runs after it ({how}); db-migrate runs versions by number, so it would run them the other way round; import a copy of the directory with the versions renamed so that their numbers keep {}'s order{lengths}",
                    layout.name(),
                    layout.name()
                ),
            ));
        }
    }
    let mut migrations = Vec::with_capacity(ups.len());
    for (version, mut imported) in ups {
        if let Some((down, notes, file)) = downs.remove(&version) {
            imported.down = Some(down);
            imported.changes.extend(notes);
            // Paired by version: a rollback named otherwise (Ente's `3_drop_x.down.sql`
            // beside `3_add_y.up.sql`) is named on the line, as it is renamed.
            if !matches!(layout, Layout::Dbmate | Layout::Diesel)
                && described(&file) != imported.name
            {
                imported.changes.push(format!("rollback from {file}"));
            }
        }
        imported.up = own_transaction_removed(&imported.up, &mut imported.changes, "");
        // An empty rollback is no rollback (dbmate writes an empty `-- migrate:down` section
        // for none), but it is said to be there. One that holds only comments was written to
        // undo nothing (Coder's "It's not possible to drop enum values" rollbacks), and the
        // other tool ran it so: it gets a statement that does nothing, as a forward file does.
        let mut template_left_out = false;
        if let Some(down) = imported.down.take() {
            let down = own_transaction_removed(&down, &mut imported.changes, "rollback's ");
            let statements = !crate::sql::is_empty(&down);
            // The tools' own templates, left as written, are no rollback either.
            let template = ROLLBACK_TEMPLATES.contains(&down.trim());
            imported.down = match (statements, down.trim().is_empty() || template) {
                (true, _) => Some(down),
                // Said apart: the other tool ran it as a no-op, and `down` will refuse here
                // (Hyperswitch keeps it on its enum migrations).
                (false, true) if template => {
                    template_left_out = true;
                    (imported.changes).push(format!(
                        "its rollback is {}'s untouched template, left out so that `down` refuses it rather than delete the row while the change stays; write the .down.sql (SELECT 1; if undoing nothing is right)",
                        layout.name()
                    ));
                    None
                }
                (false, true) => None,
                (false, false) => {
                    let end = if down.ends_with('\n') { "" } else { "\n" };
                    (imported.changes).push(format!(
                        "rollback holds no statement, so SELECT 1; was added: rolling back runs nothing, as {} ran it",
                        layout.name()
                    ));
                    Some(format!("{down}{end}{NO_OP}\n"))
                }
            };
        }
        // The other tool ran such a file and recorded its version; db-migrate refuses a file
        // without a statement (a forgotten `new`), so it gets one that does nothing, and its
        // version stays for `baseline --from` to find.
        if crate::sql::is_empty(&imported.up) {
            let end = match imported.up.is_empty() || imported.up.ends_with('\n') {
                true => "",
                false => "\n",
            };
            imported.up = format!("{}{end}{NO_OP}\n", imported.up);
            (imported.changes).push(
                "no statement, so SELECT 1; was added (db-migrate runs no file without one)".into(),
            );
        }
        if layout == Layout::GolangMigrate {
            imported.up = morph_marked(&imported.up, &mut imported.changes, "");
            if let Some(down) = imported.down.take() {
                imported.down = Some(morph_marked(&down, &mut imported.changes, "rollback: "));
            }
        }
        imported.up = outside_marked(&imported.up, &mut imported.changes, "");
        if let Some(down) = imported.down.take() {
            imported.down = Some(outside_marked(&down, &mut imported.changes, "rollback: "));
        }
        if imported.down.is_none() && !template_left_out {
            imported.changes.push("no rollback".into());
        }
        let texts = [Some(&imported.up), imported.down.as_ref()];
        if let Some(table) = texts
            .into_iter()
            .flatten()
            .find_map(|text| history_mentioned(layout, text))
        {
            imported.changes.push(history_note(layout, table));
        }
        if layout == Layout::Flyway {
            let texts = [Some(&imported.up), imported.down.as_ref()];
            let mut names: Vec<&str> = Vec::new();
            for name in texts.into_iter().flatten().flat_map(|t| placeholders(t)) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            if !names.is_empty() {
                let names = names
                    .iter()
                    .map(|n| format!("${{{n}}}"))
                    .collect::<Vec<_>>();
                let note = format!(
                    "Flyway placeholder {} left as written: db-migrate runs the text as it is; write the value in",
                    names.join(", ")
                );
                imported.changes.push(note);
            }
        }
        migrations.push(imported);
    }
    if let Some(version) = downs.keys().next() {
        return Err(invalid(
            src,
            format!(
                "has a rollback for version {version} but no forward file; add it or delete the rollback"
            ),
        ));
    }
    Ok(migrations)
}

/// morph (Mattermost's migration runner, on golang-migrate's file names) runs a file whose
/// first line is `-- morph:nontransactional` outside a transaction: here that is
/// `-- no-transaction`, which that line is made into. Left as it was, it would be a comment,
/// and the file would run inside a transaction (an `ALTER TYPE ... ADD VALUE` used after it,
/// or a long backfill meant to commit in parts).
fn morph_marked(sql: &str, changes: &mut Vec<String>, whose: &str) -> String {
    let body = sql.strip_prefix(crate::sql::BOM).unwrap_or(sql);
    let (first, rest) = body.split_once('\n').unwrap_or((body, ""));
    if first.trim() != "-- morph:nontransactional" {
        return sql.to_string();
    }
    changes.push(format!(
        "{whose}-- morph:nontransactional -> -- no-transaction"
    ));
    format!("-- no-transaction\n{rest}")
}

/// What a separate rollback file's name describes, as a migration's name is made from it:
/// after its version (`3_name.down.sql`, `U3__name.sql`), without the suffix.
fn described(file: &str) -> String {
    let stem = file.trim_end_matches(".sql").trim_end_matches(".down");
    let rest = stem.trim_start_matches(|c: char| c.is_ascii_alphabetic() || c.is_ascii_digit());
    let rest = rest
        .strip_prefix("__")
        .or_else(|| rest.strip_prefix('_'))
        .unwrap_or(rest);
    match slug(rest) {
        name if name.is_empty() => "migration".to_string(),
        name => name,
    }
}

/// `sql` with `-- no-transaction` as its first line. A byte order mark goes: read as white
/// space only at the start of a file, it would begin the statement on the line after.
fn marked(sql: &str) -> String {
    let body = sql.strip_prefix(crate::sql::BOM).unwrap_or(sql);
    format!("-- no-transaction\n{body}")
}

/// A file that holds a statement PostgreSQL refuses inside a transaction block (`CREATE INDEX
/// CONCURRENTLY`, ...) ran in the other tool without one (golang-migrate runs a file as it is,
/// Flyway notices such statements itself); here it needs `-- no-transaction` to run at all.
fn outside_marked(sql: &str, changes: &mut Vec<String>, whose: &str) -> String {
    if crate::sql::is_no_transaction(sql) {
        return sql.to_string();
    }
    match crate::sql::transaction_use(sql).outside_only {
        Some((_, what)) => {
            changes.push(format!(
                "{whose}-- no-transaction added ({what} cannot run in a transaction)"
            ));
            marked(sql)
        }
        None => sql.to_string(),
    }
}

/// Writes `migrations` into `dir` as `NNN_name.sql` and `NNN_name.down.sql`, keeping their
/// versions (as wide as the widest, at least three digits), then reads the directory back as
/// `up` would and checks every file written. Refuses a directory that already holds `.sql`
/// files, and takes back every file it wrote (and the directory, when it made it) when the
/// read or a check fails: an import writes all of it or nothing.
pub fn write<'a>(
    dir: &Path,
    migrations: &'a [Imported],
) -> Result<Vec<(PathBuf, &'a Imported)>, Error> {
    let existed = dir.exists();
    if existed {
        let entries = fs::read_dir(dir).map_err(|source| Error::Directory {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut held: Vec<String> = (entries.filter_map(|entry| entry.ok()))
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql") && !name.starts_with('.'))
            .collect();
        held.sort();
        if let Some(first) = held.first() {
            return Err(invalid(
                dir,
                format!(
                    "already holds migration files ({first}{}); import into an empty or new directory",
                    match held.len() {
                        1 => String::new(),
                        n => format!(" and {} more", n - 1),
                    }
                ),
            ));
        }
    }
    fs::create_dir_all(dir).map_err(|source| Error::Directory {
        path: dir.to_path_buf(),
        source,
    })?;
    let width = (migrations.iter())
        .map(|m| m.version.to_string().len())
        .max()
        .unwrap_or(3)
        .max(3);
    let mut planned = Vec::new();
    for imported in migrations {
        let stem = format!("{:0width$}_{}", imported.version, imported.name);
        let up = dir.join(format!("{stem}.sql"));
        let down = imported
            .down
            .as_ref()
            .map(|sql| (dir.join(format!("{stem}.down.sql")), sql));
        for path in std::iter::once(&up).chain(down.as_ref().map(|(p, _)| p)) {
            if path.exists() {
                return Err(invalid(
                    path,
                    "already exists; import into an empty directory".into(),
                ));
            }
        }
        planned.push((up, &imported.up, down, imported));
    }
    // Each file to write, with the file it comes from and which part of it.
    let origins: Vec<(PathBuf, String, &str)> = (planned.iter())
        .flat_map(|(up, _, down, imported)| {
            let up = (up.clone(), imported.source.clone(), "forward");
            let down = (down.as_ref())
                .map(|(path, _)| (path.clone(), imported.source.clone(), "rollback"));
            std::iter::once(up).chain(down)
        })
        .collect();
    let mut written = Vec::new();
    let mut files = Vec::new();
    let wrote = (|| {
        for (up, sql, down, imported) in planned {
            write_file(&up, sql)?;
            files.push(up.clone());
            if let Some((path, sql)) = down {
                write_file(&path, sql)?;
                files.push(path);
            }
            written.push((up, imported));
        }
        // What `up` will say of these files, said now, while they can still be taken back.
        for migration in source::load(dir)? {
            source::check(&migration.up)?;
            if let Some(down) = &migration.down {
                source::check(down)?;
            }
        }
        Ok(())
    })();
    if let Err(error) = wrote {
        for file in &files {
            let _ = fs::remove_file(file);
        }
        if !existed {
            let _ = fs::remove_dir(dir);
        }
        // The file the error names is gone again: name the one it came from.
        return Err(match error {
            Error::InvalidFile { file, problem } => {
                match origins.iter().find(|(path, _, _)| *path == file) {
                    Some((path, source, part)) => Error::InvalidFile {
                        file: PathBuf::from(source),
                        problem: format!(
                            "{problem} (in its {part} migration as imported, lines counted in the text import made of it, which would have been {}; nothing was written)",
                            path.file_name().unwrap_or_default().to_string_lossy()
                        ),
                    },
                    None => Error::InvalidFile { file, problem },
                }
            }
            error => error,
        });
    }
    Ok(written)
}

enum Part {
    Up(Imported),
    /// A rollback's text, and what was changed on the way (for its migration's line).
    Down(String, Vec<String>),
}

type Parsed = Option<(i64, Part)>;

fn imported(version: i64, name: &str, up: String, source: &str) -> Imported {
    Imported {
        version,
        name: name.to_string(),
        up,
        down: None,
        source: source.to_string(),
        changes: Vec::new(),
    }
}

/// `NNN_name.up.sql`, `NNN_name.down.sql`, or (sqlx) a lone `NNN_name.sql`.
fn reversible(path: &Path, file: &str) -> Result<Parsed, Error> {
    let (stem, down) = match (file.strip_suffix(".down.sql"), file.strip_suffix(".up.sql")) {
        (Some(stem), _) => (stem, true),
        (None, Some(stem)) => (stem, false),
        (None, None) => (file.trim_end_matches(".sql"), false),
    };
    let (version, name) = version_and_name(path, stem, '_')?;
    let sql = read_text(path)?;
    Ok(Some(match down {
        true => (version, Part::Down(sql, Vec::new())),
        false => (version, Part::Up(imported(version, &name, sql, file))),
    }))
}

/// Go's `\s`, which dbmate's patterns use: ASCII white space only.
fn go_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r')
}

/// What follows `--` (any white space) `migrate:WORD` at the very start of `line`.
fn dbmate_marker<'a>(line: &'a str, word: &str) -> Option<&'a str> {
    let rest = line.strip_prefix("--")?.trim_start_matches(go_space);
    rest.strip_prefix("migrate:")?.strip_prefix(word)
}

/// dbmate's up marker, `(?m)^--\s*migrate:up(\s*$|\s+\S+)`: white space or the line's end
/// after `up`, so `-- migrate:upgrade` is a comment.
fn dbmate_up(line: &str) -> bool {
    dbmate_marker(line, "up").is_some_and(|rest| rest.is_empty() || rest.starts_with(go_space))
}

/// dbmate's down marker, `(?m)^--\s*migrate:down(\s*$|\s+\S+)$`: nothing after `down` but white
/// space, or one option and the line's end (`-- migrate:down transaction:false`).
fn dbmate_down(line: &str) -> bool {
    let Some(rest) = dbmate_marker(line, "down") else {
        return false;
    };
    let rest = rest.strip_suffix('\n').unwrap_or(rest);
    let option = rest.trim_start_matches(go_space);
    option.is_empty() || (option.len() < rest.len() && !option.contains(go_space))
}

/// Whether a marker line sets `transaction:false`: dbmate trims the line (Go's TrimSpace,
/// Unicode white space), splits it at ASCII white space and reads each `key:value` word, the
/// last of a key counting.
fn dbmate_outside(line: &str) -> bool {
    let mut transaction = None;
    for word in line.trim().split(go_space) {
        let mut pair = word.split(':');
        if let (Some("transaction"), Some(value), None) = (pair.next(), pair.next(), pair.next()) {
            transaction = Some(value);
        }
    }
    transaction == Some("false")
}

/// dbmate: one file, `-- migrate:up [transaction:false]` then `-- migrate:down`, split where
/// dbmate splits it: the up section runs from the first up marker to the first down marker,
/// the down section from there to the end, so any other marker is a comment of its section.
fn dbmate(path: &Path, file: &str) -> Result<Parsed, Error> {
    let (version, name) = version_and_name(path, file.trim_end_matches(".sql"), '_')?;
    let text = read_text(path)?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let Some(up_at) = lines.iter().position(|line| dbmate_up(line)) else {
        return Err(invalid(
            path,
            "has no `-- migrate:up` section; is it a dbmate migration?".into(),
        ));
    };
    let Some(down_at) = lines.iter().position(|line| dbmate_down(line)) else {
        return Err(invalid(
            path,
            "has no `-- migrate:down` line, without which dbmate refuses to run the file; add one (with nothing under it when there is no rollback)".into(),
        ));
    };
    if down_at < up_at {
        return Err(invalid(
            path,
            "has its `-- migrate:down` line before its `-- migrate:up` line, an order dbmate refuses to run; put the up section first".into(),
        ));
    }
    // dbmate allows blank lines and `--` comments there, nothing else.
    let before_up = |line: &&str| {
        let line = line.trim_start_matches(go_space);
        line.is_empty() || line.starts_with("--")
    };
    if !lines[..up_at].iter().all(before_up) {
        return Err(invalid(
            path,
            "has a line before its `-- migrate:up` line that is neither blank nor a `--` comment, which dbmate refuses to run; move it into the up or the down section".into(),
        ));
    }
    let up = lines[up_at + 1..down_at].concat();
    let down = lines[down_at + 1..].concat();
    let mut imported = imported(
        version,
        &name,
        up.trim_start_matches('\n').to_string(),
        file,
    );
    // A line that looks like a marker to a reader less exact than dbmate's (indented, a second
    // one, `-- migrate:downgrade`) stays SQL of its section, as dbmate runs it.
    let looks_like_marker = |line: &str| {
        let line = line.trim_start();
        line.strip_prefix("--")
            .is_some_and(|rest| rest.trim_start().starts_with("migrate:"))
    };
    let others = (lines.iter().enumerate())
        .filter(|(at, line)| *at != up_at && *at != down_at && looks_like_marker(line))
        .count();
    if others > 0 {
        imported.changes.push(format!(
            "{others} other `-- migrate:` line(s) (indented, repeated or misspelled) are comments to dbmate, so they stay in their sections"
        ));
    }
    if dbmate_outside(lines[up_at]) {
        imported.up = format!("-- no-transaction\n{}", imported.up);
        imported
            .changes
            .push("transaction:false -> -- no-transaction".into());
    }
    let down = down.trim_start_matches('\n').to_string();
    imported.down = Some(
        match dbmate_outside(lines[down_at]) && !crate::sql::is_empty(&down) {
            true => format!("-- no-transaction\n{down}"),
            false => down,
        },
    );
    Ok(Some((version, Part::Up(imported))))
}

/// The first neighbours of `order` (sorted as the other tool runs them) whose numbers run the
/// other way.
fn disordered(order: &[(String, i64, String)]) -> Option<&[(String, i64, String)]> {
    order.windows(2).find(|pair| pair[0].1 > pair[1].1)
}

/// diesel 2.2 names new directories `YYYY-MM-DD-HHMMSS-NNNN_` (18 digits) where older ones
/// have 14, and projects keep writing both (ChirpStack's 2025-11-11-140459-0000 runs between
/// 2025-10-01-085546 and 2026-01-28-120000): read as numbers, every 18-digit version runs
/// last. Widened with zeros on the right to the longest width, the numbers keep diesel's
/// text order, and `baseline --from diesel` finds a version diesel recorded in 14 digits the
/// same way. Only a set whose order needs it is widened, so a set imported before keeps its
/// versions. Two names that widen to one number stay refused.
fn widen(
    src: &Path,
    order: &mut [(String, i64, String)],
    ups: &mut BTreeMap<i64, Imported>,
) -> Result<(), Error> {
    let width = order.iter().map(|(key, ..)| key.len()).max().unwrap_or(0);
    // Past 18 digits a version no longer fits db-migrate's bigint; refused as it was.
    if width > 18 {
        return Ok(());
    }
    let mut widened = BTreeMap::new();
    for (key, version, source) in order.iter_mut() {
        let Some(mut imported) = ups.remove(version) else {
            continue;
        };
        let wide = *version * 10_i64.pow((width - key.len()) as u32);
        if wide != *version {
            imported.changes.push(format!(
                "version {version} -> {wide}, widened to {width} digits to keep diesel's order"
            ));
        }
        imported.version = wide;
        if let Some(other) = widened.insert(wide, imported) {
            return Err(invalid(
                &src.join(source.as_str()),
                format!(
                    "is version {wide} once the versions are widened to {width} digits to keep diesel's order, as is {}; rename one to a free version before importing",
                    other.source
                ),
            ));
        }
        *version = wide;
    }
    *ups = widened;
    Ok(())
}

/// diesel: `2024-01-02-030405_name/` (or `00000000000000_name/`) with `up.sql`, `down.sql` and
/// maybe `metadata.toml`.
fn diesel(path: &Path, file: &str) -> Result<Parsed, Error> {
    let Some((stamp, name)) = file.split_once('_') else {
        return Ok(None);
    };
    let digits: String = stamp.chars().filter(|c| *c != '-').collect();
    let version = digits.parse::<i64>().map_err(|_| {
        invalid(
            path,
            "does not start with diesel's YYYY-MM-DD-HHMMSS_ version".into(),
        )
    })?;
    let up = read_text(&path.join("up.sql"))?;
    let mut imported = imported(version, &slug(name), up, file);
    let down = path.join("down.sql");
    if down.exists() {
        imported.down = Some(read_text(&down)?);
    }
    let metadata = fs::read_to_string(path.join("metadata.toml")).unwrap_or_default();
    let outside = metadata.lines().any(|l| {
        let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
        l == "run_in_transaction=false"
    });
    // The setting covers both of the directory's files.
    if outside {
        imported.up = format!("-- no-transaction\n{}", imported.up);
        if let Some(down) = imported.down.as_mut() {
            *down = format!("-- no-transaction\n{down}");
        }
        imported
            .changes
            .push("run_in_transaction = false -> -- no-transaction".into());
    }
    Ok(Some((version, Part::Up(imported))))
}

/// The entries of `dir`, sorted.
fn listed(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let read = fs::read_dir(dir).map_err(|source| Error::Directory {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut entries: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    Ok(entries)
}

/// The history table `layout`'s tool keeps by default, when `sql` names it (as a whole word,
/// in any case): a migration that reads or copies it (underway's first migration creates its
/// own with `LIKE public._sqlx_migrations`) assumes that tool ran it.
fn history_mentioned(layout: Layout, sql: &str) -> Option<&'static str> {
    let table = match layout {
        Layout::GolangMigrate | Layout::Dbmate => "schema_migrations",
        Layout::Sqlx => "_sqlx_migrations",
        Layout::Diesel => "__diesel_schema_migrations",
        Layout::Flyway => "flyway_schema_history",
    };
    let lower = sql.to_ascii_lowercase();
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let found = lower.match_indices(table).any(|(at, _)| {
        !word(lower[..at].chars().next_back()) && !word(lower[at + table.len()..].chars().next())
    });
    found.then_some(table)
}

/// The note for a migration that names its tool's history table `table`.
fn history_note(layout: Layout, table: &str) -> String {
    match layout {
        Layout::GolangMigrate | Layout::Dbmate => format!(
            "names {table}, the other tool's history table and db-migrate's own by default (--history-table): read what it does with it"
        ),
        _ => format!(
            "names {table}, the other tool's history table, which db-migrate does not keep: it fails (or finds nothing) where only db-migrate ran"
        ),
    }
}

/// The names of the Flyway placeholders (`${name}`, Flyway's default syntax) in `sql`, in
/// order: Flyway replaces them before it runs the file, db-migrate does not.
fn placeholders(sql: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = sql;
    while let Some(start) = rest.find("${") {
        rest = &rest[start + 2..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_:.-".contains(c)))
            .unwrap_or(rest.len());
        if end > 0 && rest[end..].starts_with('}') && !names.contains(&&rest[..end]) {
            names.push(&rest[..end]);
        }
    }
    names
}

/// Flyway: `V1__name.sql` and `U1__name.sql`; a repeatable `R__` script has no version.
fn flyway(path: &Path, file: &str) -> Result<Parsed, Error> {
    let stem = file.trim_end_matches(".sql");
    let (kind, rest) = stem.split_at(1.min(stem.len()));
    if kind == "R" {
        return Err(invalid(
            path,
            "is a Flyway repeatable script, which has no version; turn it into a numbered migration".into(),
        ));
    }
    if kind != "V" && kind != "U" {
        return Ok(None);
    }
    let Some((version, name)) = rest.split_once("__") else {
        return Err(invalid(
            path,
            "is not named V<version>__<description>.sql".into(),
        ));
    };
    // Flyway reads `_` in a version as `.`: V1_1 is 1.1, which sorts before V2 (dropping the
    // `_` would make it 11, after V10).
    let dotted = version.replace('_', ".");
    let whole = version.bytes().all(|b| b.is_ascii_digit());
    let version: i64 = (version.parse().ok().filter(|_| whole)).ok_or_else(|| {
        invalid(
            path,
            format!("has version {dotted}, which is not a whole number as db-migrate's versions are; give every file a whole number that keeps Flyway's order, the whole ones too (V<a> as V<a*1000>, V<a>_<b> as V<a*1000+b>: V1 as V1000, V1_1 as V1001, V2 as V2000), import again, and adopt with `baseline --version N`, N the renumbered last version Flyway applied (an application that still runs Flyway at startup then finds versions it does not know: turn that off first)"),
        )
    })?;
    let sql = read_text(path)?;
    let (sql, note) = flyway_outside(path, file, sql)?;
    let whose = if kind == "U" { "rollback: " } else { "" };
    let notes: Vec<String> = note.into_iter().map(|n| format!("{whose}{n}")).collect();
    Ok(Some(match kind {
        "U" => (version, Part::Down(sql, notes)),
        _ => {
            let mut imported = imported(version, &slug(name), sql, file);
            imported.changes = notes;
            (version, Part::Up(imported))
        }
    }))
}

/// Flyway runs a script outside a transaction when its script configuration says
/// `executeInTransaction=false`: in a file beside it named after it plus `.conf`, or in a
/// `-- flyway:executeInTransaction=false` comment among its first lines. Here that is
/// `-- no-transaction`, put first; left out, the file would run in a transaction (an enum
/// value added and used, a backfill meant to commit in parts) and fail or hold its locks.
fn flyway_outside(path: &Path, file: &str, sql: String) -> Result<(String, Option<String>), Error> {
    let setting = |line: &str| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "executeInTransaction").then(|| value.trim().eq_ignore_ascii_case("false"))
    };
    let conf = path.with_file_name(format!("{file}.conf"));
    let from_conf = match fs::read_to_string(&conf) {
        Ok(text)
            if text.lines().any(|line| {
                let (key, value) = line.split_once('=').unwrap_or_default();
                key.trim() == "shouldExecute" && !value.trim().eq_ignore_ascii_case("true")
            }) =>
        {
            return Err(invalid(
                &conf,
                "sets shouldExecute, which Flyway decides as it runs (per environment); db-migrate runs every file: remove the setting, or leave the script out of the import".into(),
            ));
        }
        Ok(text) => text.lines().find_map(setting),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(invalid(&conf, format!("cannot be read: {e}"))),
    };
    let from_comment = || {
        let body = sql.strip_prefix(crate::sql::BOM).unwrap_or(&sql);
        body.lines()
            .map(str::trim)
            .take_while(|line| line.is_empty() || line.starts_with("--"))
            .filter_map(|line| line.strip_prefix("--")?.trim().strip_prefix("flyway:"))
            .find_map(setting)
    };
    let (outside, whence) = match from_conf {
        Some(outside) => (outside, format!("{file}.conf")),
        None => (
            from_comment().unwrap_or(false),
            "its -- flyway: comment".to_string(),
        ),
    };
    if !outside || crate::sql::is_no_transaction(&sql) {
        return Ok((sql, None));
    }
    let note = format!("executeInTransaction=false ({whence}) -> -- no-transaction");
    Ok((marked(&sql), Some(note)))
}

fn version_and_name(path: &Path, stem: &str, separator: char) -> Result<(i64, String), Error> {
    let (digits, name) = stem.split_once(separator).unwrap_or((stem, ""));
    let unsigned = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    let version = (digits.parse::<i64>().ok().filter(|_| unsigned)).ok_or_else(|| {
        let why = match unsigned {
            // Ory's 20-digit versions (20150100000001000000): more than a version holds here.
            true => format!(
                "has version {digits}, larger than db-migrate's versions go (at most {}); import a copy of the directory with the files renumbered in the same order",
                i64::MAX
            ),
            false => format!("does not start with a whole-number version ({digits:?})"),
        };
        invalid(path, why)
    })?;
    let name = match slug(name) {
        name if name.is_empty() => "migration".to_string(),
        name => name,
    };
    Ok((version, name))
}

/// A description as db-migrate's file names allow it: letters, digits, `_` and `-`.
fn slug(name: &str) -> String {
    let mapped: String = (name.chars())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let parts: Vec<&str> = mapped.split('_').filter(|p| !p.is_empty()).collect();
    parts.join("_")
}

/// The file with its own outer `BEGIN; ... COMMIT;` commented out: db-migrate runs each
/// migration in a transaction of its own, and refuses a file that ends it. Commented out rather
/// than removed, so that `baseline --from` can still compare the file with the checksum sqlx or
/// Flyway recorded of it.
fn own_transaction_removed(sql: &str, changes: &mut Vec<String>, whose: &str) -> String {
    let statements = crate::sql::split(sql);
    let (Some(first), Some(last)) = (statements.first(), statements.last()) else {
        return sql.to_string();
    };
    let words = |text: &str| -> String {
        let code: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect();
        code.join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_uppercase()
    };
    let (open, close) = (words(first.text), words(last.text));
    if statements.len() < 2
        || !BEGINS.contains(&open.trim_end_matches(';'))
        || !COMMITS.contains(&close.trim_end_matches(';'))
    {
        return sql.to_string();
    }
    // The statement's end, with its `;`: past white space and comments, not one inside a
    // comment (`BEGIN -- open; see JIRA` ends at the `;` on the next line).
    let after = |statement: &crate::sql::Statement<'_>| {
        let end = statement.offset + statement.text.len();
        end + semicolon_after(&sql[end..])
    };
    let (open, close) = (
        &sql[first.offset..after(first)],
        &sql[last.offset..after(last)],
    );
    // A block comment inside (`BEGIN /* tx */;`) would end the one that comments it out: the
    // file is left as it was, and refused as db-migrate refuses transaction control.
    if open.contains(COMMENTED.1) || close.contains(COMMENTED.1) {
        return sql.to_string();
    }
    changes.push(format!("{whose}own BEGIN/COMMIT commented out"));
    format!(
        "{}{}{open}{}{}{}{close}{}{}",
        &sql[..first.offset],
        COMMENTED.0,
        COMMENTED.1,
        &sql[after(first)..last.offset],
        COMMENTED.0,
        COMMENTED.1,
        &sql[after(last)..],
    )
}

/// How `import` comments out a file's own `BEGIN` and `COMMIT`, in place and byte for byte, so
/// that the text the other tool ran (and checksummed) can be had back: [`uncommented`].
const COMMENTED: (&str, &str) = ("/* commented out by db-migrate import: ", " */");

/// The statements `import` comments out when they open and close a whole file.
const BEGINS: [&str; 4] = [
    "BEGIN",
    "BEGIN TRANSACTION",
    "BEGIN WORK",
    "START TRANSACTION",
];
const COMMITS: [&str; 5] = [
    "COMMIT",
    "END",
    "COMMIT TRANSACTION",
    "COMMIT WORK",
    "END TRANSACTION",
];

/// How far past `rest`'s start the `;` that ends a statement is, through white space and
/// comments; 0 when the next thing is not one.
fn semicolon_after(rest: &str) -> usize {
    let mut at = 0;
    loop {
        let tail = &rest[at..];
        let trimmed = tail.trim_start();
        at += tail.len() - trimmed.len();
        if trimmed.starts_with(';') {
            return at + 1;
        } else if trimmed.starts_with("--") {
            match trimmed.find('\n') {
                Some(end) => at += end + 1,
                None => return 0,
            }
        } else if trimmed.starts_with("/*") {
            match trimmed.find("*/") {
                Some(end) => at += end + 2,
                None => return 0,
            }
        } else {
            return 0;
        }
    }
}

/// `text` with the `BEGIN` and `COMMIT` that `import` commented out put back, if it commented
/// them out: only those, so that the marker copied onto other text by hand is that text's.
fn uncommented(text: &str) -> Option<String> {
    let (open, close) = COMMENTED;
    if !text.contains(open) {
        return None;
    }
    let mut back = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(open) {
        let inner = &rest[at + open.len()..];
        let end = inner.find(close)?;
        let words: Vec<String> = (inner[..end].lines())
            .filter_map(|l| l.split("--").next())
            .flat_map(str::split_whitespace)
            .map(str::to_uppercase)
            .collect();
        let words = words.join(" ");
        let statement = words.trim_end_matches(';').trim_end();
        if !BEGINS.contains(&statement) && !COMMITS.contains(&statement) {
            return None;
        }
        back.push_str(&rest[..at]);
        back.push_str(&inner[..end]);
        rest = &inner[end + close.len()..];
    }
    back.push_str(rest);
    Some(back)
}

fn read_text(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Directory {
        path: path.to_path_buf(),
        source,
    })
}

/// The text as the other tool had it (but for the changes the report lists): a file's bytes
/// are its checksum.
fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    source::write_new(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_table_is_found_as_a_whole_word_in_any_case() {
        let sqlx = |sql| history_mentioned(Layout::Sqlx, sql);
        assert_eq!(
            sqlx("SELECT * FROM _SQLX_Migrations"),
            Some("_sqlx_migrations")
        );
        assert_eq!(
            sqlx("(LIKE public._sqlx_migrations)"),
            Some("_sqlx_migrations")
        );
        assert_eq!(sqlx("CREATE TABLE my_sqlx_migrations (id int)"), None);
        assert_eq!(sqlx("CREATE TABLE _sqlx_migrations_old (id int)"), None);
        let dbmate = history_mentioned(Layout::Dbmate, "DELETE FROM schema_migrations");
        assert_eq!(dbmate, Some("schema_migrations"));
        assert_eq!(history_mentioned(Layout::Flyway, "SELECT 1"), None);
    }

    #[test]
    fn a_file_s_own_transaction_is_commented_out_and_can_be_had_back() {
        let file =
            "-- adds email\nbegin transaction ;\n\nALTER TABLE users ADD email text;\nCOMMIT;\n\n";
        let mut changes = Vec::new();
        let imported = own_transaction_removed(file, &mut changes, "");
        assert_eq!(
            imported,
            "-- adds email\n/* commented out by db-migrate import: begin transaction ; */\n\n\
             ALTER TABLE users ADD email text;\n/* commented out by db-migrate import: COMMIT; */\n\n"
        );
        assert_eq!(changes, ["own BEGIN/COMMIT commented out"]);
        let script = crate::source::Script::new("1_add_email.sql".into(), imported.clone());
        assert!(crate::source::check(&script).is_ok());
        assert!(as_run(&imported, Tool::Flyway).contains(&file.to_string()));
        let noted = format!("-- no-transaction\n{imported}");
        assert!(as_run(&noted, Tool::Sqlx).contains(&file.to_string()));
        // A comment written by hand is the file's own text.
        let unclosed = "/* commented out by db-migrate import: BEGIN;\nSELECT 1;";
        assert_eq!(uncommented(unclosed), None);
        let copied = "/* commented out by db-migrate import: CREATE EXTENSION x; */\nSELECT 1;";
        assert_eq!(uncommented(copied), None);
        // The `;` that ends BEGIN is the one after its comment, not one inside it.
        let file = "BEGIN -- open; see JIRA\n;\nSELECT 2;\nCOMMIT;\n";
        let imported = own_transaction_removed(file, &mut Vec::new(), "");
        assert_eq!(
            imported,
            "/* commented out by db-migrate import: BEGIN -- open; see JIRA\n; */\nSELECT 2;\n\
             /* commented out by db-migrate import: COMMIT; */\n"
        );
        assert_eq!(uncommented(&imported).as_deref(), Some(file));
    }
}
