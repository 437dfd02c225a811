//! `db-migrate plan`: runs a plan's statements one at a time inside one transaction that is
//! always rolled back, and records what each did: the table locks it took (from `pg_locks`
//! for the job's own backend, before and after), which of the bot's operations each blocks,
//! whether it rewrote a table (its relfilenode changed), the rows it touched, its duration,
//! and how long each lock that blocks the bot stays held to the end of its migration's
//! transaction. The static rules (`rules::check`) run first, on the catalog as it is.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use tokio_postgres::Client;

use crate::error::{Error, Failure, Refusal};
use crate::history;
use crate::plan::{Direction, Plan};
use crate::rules::{self, Finding, RowCount, Rule};
use crate::session;
use crate::sql;

/// A lock a statement took on a relation that existed before the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Lock {
    pub relation: String,
    pub mode: String,
    /// How long it stays held after the statement, to the end of its migration.
    pub held_after_ms: f64,
    /// The relation's rows and bytes once its migration ran; none when the migration dropped it.
    pub rows: Option<i64>,
    /// How `rows` was had: the planner's estimate, or a count (capped at `--hazard-rows`) for
    /// a table never counted, whose estimate says nothing (`reltuples` -1: read as 0, a table
    /// holding rows was shown as empty).
    pub row_count: RowCount,
    pub bytes: Option<i64>,
    /// Already held from an earlier migration of the plan, so not seen taken in `pg_locks`:
    /// `up` runs this migration in a transaction of its own, where the statement takes it.
    pub earlier: bool,
}

impl Lock {
    /// Which of the bot's operations the mode blocks.
    pub fn blocks(&self) -> &'static str {
        blocks(&self.mode)
    }
}

/// Which of the bot's operations a lock `mode` blocks, from PostgreSQL's conflict table: its
/// reads take ACCESS SHARE, its writes ROW EXCLUSIVE.
fn blocks(mode: &str) -> &'static str {
    match mode {
        "AccessExclusiveLock" => "reads and writes",
        "ExclusiveLock" | "ShareRowExclusiveLock" | "ShareLock" => "writes",
        _ => "nothing",
    }
}

/// Of `held` (locks that block the bot, held from earlier migrations of the plan), those the
/// statement takes again: a lock already held is no new row in `pg_locks`, so the trace would
/// give it to the earlier migration alone, while `up` runs each migration in a transaction
/// of its own, where this statement takes it and holds it to its migration's end. By the
/// lock levels of the statement's kind (`classify::strong_locks`), its tables looked up
/// before it runs (a rename moves the name).
async fn earlier_locks(
    client: &Client,
    statement: &str,
    held: &BTreeSet<(i64, String)>,
) -> Result<Vec<(i64, String)>, Error> {
    let wanted = rules::classify::strong_locks(statement);
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = wanted.iter().map(|(name, _)| name.sql()).collect();
    // A partitioned table's lock goes to each of its partitions as well, and only those are
    // tables the trace watches; an index's to its table (REINDEX INDEX, DROP INDEX).
    let rows = client
        .query(
            "SELECT u.i, r.oid::int8 FROM unnest($1::text[]) WITH ORDINALITY AS u(n, i)
               CROSS JOIN LATERAL (SELECT pg_catalog.to_regclass(u.n) AS oid
                                   UNION SELECT t.relid FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass(u.n)) t
                                   UNION SELECT x.indrelid::pg_catalog.regclass FROM pg_catalog.pg_index x
                                          WHERE x.indexrelid = pg_catalog.to_regclass(u.n)) r
              WHERE r.oid IS NOT NULL",
            &[&names],
        )
        .await
        .map_err(Error::database("looking up the tables a statement locks"))?;
    Ok((rows.iter())
        .filter_map(|row| {
            let at = usize::try_from(row.get::<_, i64>(0)).ok()?.checked_sub(1)?;
            let lock = (row.get::<_, i64>(1), wanted.get(at)?.1.to_string());
            held.contains(&lock).then_some(lock)
        })
        .collect())
}

/// Why a statement of the plan was only checked, not run under the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untraced {
    /// Its file runs outside a transaction (`-- no-transaction`).
    NoTransaction,
    /// Its migration uses a value an earlier migration of the plan adds to an enum type,
    /// which PostgreSQL allows only once that one has committed (55P04): `up` commits each
    /// migration first, the plan's one transaction cannot.
    EnumValueUncommitted,
    /// Its migration calls `setval`, which a rollback does not undo: traced, it would leave
    /// the sequence where the migration set it, behind keys the bot has used.
    Setval,
    /// Its migration fails on something not found (an index, a table, an enum value) that a
    /// migration of the plan before it names, one the plan did not run (`-- no-transaction`,
    /// or untraced itself): `up` runs that one first.
    AwaitsNoTransaction,
}

impl Untraced {
    /// The name JSON gives it.
    pub fn id(self) -> &'static str {
        match self {
            Untraced::NoTransaction => "no_transaction",
            Untraced::EnumValueUncommitted => "enum_value_uncommitted",
            Untraced::Setval => "setval",
            Untraced::AwaitsNoTransaction => "awaits_no_transaction",
        }
    }

    /// What the text report says of it.
    fn says(self) -> &'static str {
        match self {
            Untraced::NoTransaction => "not traced (-- no-transaction)",
            Untraced::EnumValueUncommitted => {
                "not traced: its migration uses a value an earlier one adds to an enum type, \
                 usable only once that one commits (as up commits it)"
            }
            Untraced::Setval => {
                "not traced: its migration calls setval(), whose value a rollback does not undo"
            }
            Untraced::AwaitsNoTransaction => {
                "not traced: its migration fails on something a migration before it names, \
                 which plan did not run (up runs that one first)"
            }
        }
    }
}

/// One statement of the plan, traced (or, where it cannot be, only checked).
#[derive(Debug, Clone)]
pub struct Statement {
    pub version: i64,
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub headline: String,
    /// Why it was not traced; `None` when it was.
    pub untraced: Option<Untraced>,
    pub duration_ms: f64,
    pub locks: Vec<Lock>,
    pub rewrites: Vec<String>,
    /// Rows the server reported for it (INSERT, UPDATE, DELETE, ...).
    pub rows: Option<u64>,
    /// The rows it deleted from each table that existed before the plan, when it deleted
    /// from more than one: a foreign key's `ON DELETE CASCADE` (or a trigger) took rows of
    /// tables the statement does not name, which its own row count does not show.
    pub deleted: Vec<(String, i64)>,
    pub findings: Vec<Finding>,
    /// The allow comments above it.
    allows: Vec<(Rule, String)>,
    /// The locks that block the bot which it takes again, already held from an earlier
    /// migration of the plan (see `earlier_locks`).
    again: Vec<(i64, String)>,
}

/// What `plan` found.
#[derive(Debug, Default)]
pub struct Report {
    pub statements: Vec<Statement>,
}

impl Report {
    /// The findings that make `plan` exit 9: those `up`/`down` refuse, and a strong lock
    /// held long, unless allowed.
    pub fn hazards(&self) -> Vec<&Finding> {
        self.statements
            .iter()
            .flat_map(|s| s.findings.iter())
            .filter(|f| blocking(f) && f.allowed.is_none())
            .collect()
    }
}

/// A finding of a rule that makes `plan` exit 9 unless allowed; the others are notes.
fn blocking(finding: &Finding) -> bool {
    finding.rule.refused() || finding.rule == Rule::StrongLockHeldLong
}

/// Traces `plan` on a database with its history table; `lock_budget` is how long a lock
/// that blocks the bot may stay held (`--ddl-lock-timeout`).
pub async fn run(
    client: &Client,
    session: &session::Session,
    plan: &Plan<'_>,
    limits: rules::Limits,
    lock_budget: std::time::Duration,
) -> Result<Report, Error> {
    let (report, result) = run_partly(client, session, plan, limits, lock_budget, None).await;
    result.map(|()| report)
}

/// [`run`], for any database. What was traced before a failure comes back too: the migrations
/// before the one that failed, and their findings, which `plan` prints before the error (a
/// hazard of an earlier migration was lost with the rest of the trace when a later one
/// failed).
///
/// `missing`: the history table, when the database has none yet. `up` creates it before the
/// first migration, so the trace does too, in its transaction: a migration that uses it
/// (Harbor's add a column to golang-migrate's `schema_migrations`, db-migrate's default
/// name) finds it as `up` would.
pub async fn run_partly(
    client: &Client,
    session: &session::Session,
    plan: &Plan<'_>,
    limits: rules::Limits,
    lock_budget: std::time::Duration,
    missing: Option<&history::Table>,
) -> (Report, Result<(), Error>) {
    let mut report = Report::default();
    let result = traced(
        client,
        session,
        plan,
        limits,
        lock_budget,
        missing,
        &mut report,
    )
    .await;
    (report, result)
}

async fn traced(
    client: &Client,
    session: &session::Session,
    plan: &Plan<'_>,
    limits: rules::Limits,
    lock_budget: std::time::Duration,
    missing: Option<&history::Table>,
    report: &mut Report,
) -> Result<(), Error> {
    // The tables before the plan, by name: what the report calls them, and whether the
    // database holds any at all (without, the rules weigh nothing, as for `up`).
    let names = names(client).await?;
    let known = match names.is_empty() {
        true => rules::Tables::None,
        false => rules::Tables::Unknown,
    };
    let findings = rules::check(client, plan, limits, true, known).await?;
    let budget_ms = lock_budget.as_secs_f64() * 1000.0;
    session::transaction(client, session, false, async || {
        // A statement must not end the transaction, or what follows it would commit: a
        // COMMIT fails on the WITH HOLD cursor (as in a real run), and a ROLLBACK is seen
        // after the statement by the transaction-local mark being gone.
        let guard = format!(
            "DECLARE db_migrate_plan_guard CURSOR WITH HOLD FOR \
             SELECT pg_catalog.current_setting('{}'); \
             SELECT pg_catalog.set_config('{OPEN}', 'on', true)",
            session::COMMIT_REFUSED
        );
        (client.batch_execute(&guard).await)
            .map_err(Error::database("guarding the plan's transaction"))?;
        if let Some(table) = missing {
            history::create(client, table).await?;
        }
        let existing = snapshot(client, None, &names).await?;
        let tables: Vec<i64> = existing.files.keys().copied().collect();
        // The files not run, whose objects later migrations may not find.
        let mut skipped: Vec<&str> = Vec::new();
        'migrations: for step in &plan.steps {
            let script = step.script;
            let mut migration: Vec<Statement> = Vec::new();
            let statements = sql::split(&script.sql);
            let untraced = match script.no_transaction {
                true => Some(Untraced::NoTransaction),
                false if sql::calls_setval(&script.sql) => Some(Untraced::Setval),
                false => None,
            };
            // A migration that cannot be traced here is rewound to its savepoint, and the
            // plan goes on with the next one (see `Untraced::EnumValueUncommitted`).
            if untraced.is_none() {
                (client
                    .batch_execute(&format!("SAVEPOINT {MIGRATION}"))
                    .await)
                    .map_err(Error::database("opening the migration's savepoint"))?;
            }
            let mut checked = Vec::new();
            for statement in &statements {
                let (line, column) = statement.place(&script.sql);
                checked.push(Statement {
                    version: step.migration.version,
                    file: script.path.clone(),
                    line,
                    column,
                    headline: sql::headline(statement.text, rules::HEADLINE),
                    untraced,
                    duration_ms: 0.0,
                    locks: Vec::new(),
                    rewrites: Vec::new(),
                    rows: None,
                    deleted: Vec::new(),
                    allows: rules::allows(&script.sql, statement.offset, &script.path)?,
                    again: Vec::new(),
                    findings: (findings.iter())
                        .filter(|f| {
                            f.version == step.migration.version
                                && (f.line, f.column) == (line, column)
                                && f.file == script.path
                        })
                        .cloned()
                        .collect(),
                });
            }
            if untraced.is_some() {
                skipped.push(&script.sql);
                report.statements.extend(checked);
                continue;
            }
            // Around each statement: the snapshot after one is the one before the next (the
            // sizes are read once the migration is done). What runs between them is the
            // trace's own reads of tables, whose ACCESS SHARE locks are set apart, by the
            // statement whose diff they would show in.
            let mut snapshots = vec![snapshot(client, Some(&tables), &names).await?];
            // The locks that block the bot held from earlier migrations of the plan, and those
            // of them this migration's statements take again (each at the first that does).
            let inherited: BTreeSet<(i64, String)> = (snapshots[0].locks.iter())
                .filter(|(_, mode)| blocks(mode) != "nothing")
                .cloned()
                .collect();
            let mut claimed: BTreeSet<(i64, String)> = BTreeSet::new();
            for (statement, mut traced) in statements.iter().zip(checked.iter().cloned()) {
                if !inherited.is_empty() {
                    let again = earlier_locks(client, statement.text, &inherited).await?;
                    traced.again = again.into_iter().filter(|l| claimed.insert(l.clone())).collect();
                }
                // What the parser cannot see into may drop or empty a table: what each held
                // is read before it, to compare with what is left after.
                let opaque = matches!(
                    sql::command_tag(statement.text).split(' ').next(),
                    Some("DO" | "CALL" | "SELECT" | "EXECUTE")
                );
                let held = match opaque {
                    true => {
                        let at = (step.migration.version, script.path.as_path());
                        let held = contents(client, &tables).await;
                        let mut held = held.map_err(|e| gave_up_on_lock(e, at))?;
                        let read = rows_held(client, &mut held, statement.text).await;
                        let read = read.map_err(|e| gave_up_on_lock(e, at))?;
                        if let Some(last) = snapshots.last_mut() {
                            last.read.extend(read);
                        }
                        Some(held)
                    }
                    false => None,
                };
                let started = Instant::now();
                let answer = session::counted(client, statement.text, 0).await;
                traced.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
                let failure = |e| {
                    failed(
                        step.migration.version,
                        &script.path,
                        &script.sql,
                        statement.offset,
                        e,
                    )
                };
                let counted = match answer.map_err(failure) {
                    Ok(counted) => counted,
                    Err(Error::Apply(f)) => {
                        let up = plan.direction == Direction::Up;
                        let (sqlstate, message) = (&f.sqlstate, &f.message);
                        let why = sql::rehearsal_only(sqlstate, message, &script.sql, &skipped, up);
                        let Some(why) = why else {
                            return Err(match f.sqlstate == "55P03" {
                                true => Error::PlanLockTimeout {
                                    version: f.version,
                                    file: f.file,
                                    message: format!("{} {}", f.sqlstate, f.message),
                                },
                                false => Error::Apply(f),
                            });
                        };
                        (client
                            .batch_execute(&format!("ROLLBACK TO SAVEPOINT {MIGRATION}"))
                            .await)
                            .map_err(Error::database("rewinding the migration's savepoint"))?;
                        tracing::warn!(version = f.version, file = %f.file.display(), sqlstate = %f.sqlstate, error = %f.message, "plan: not traced, {}", why.why());
                        skipped.push(&script.sql);
                        let untraced = Some(match why {
                            sql::RehearsalOnly::EnumCommit => Untraced::EnumValueUncommitted,
                            sql::RehearsalOnly::Skipped => Untraced::AwaitsNoTransaction,
                        });
                        (report.statements)
                            .extend(checked.into_iter().map(|s| Statement { untraced, ..s }));
                        continue 'migrations;
                    }
                    Err(error) => return Err(error),
                };
                // Sent together; the snapshot counts only once the check says the statement
                // left the plan's transaction open.
                let (open, after) = tokio::join!(
                    still_open(client, step.migration.version, &script.path),
                    snapshot(client, Some(&tables), &names)
                );
                open?;
                snapshots.push(after?);
                if let Some(held) = held {
                    let at = (step.migration.version, script.path.as_path());
                    let lost = lost(client, &held, &tables).await;
                    let (lost, read) = lost.map_err(|e| gave_up_on_lock(e, at))?;
                    if let Some(last) = snapshots.last_mut() {
                        last.read.extend(read);
                    }
                    for (relation, rows, what) in lost {
                        traced.findings.push(Finding {
                            rule: Rule::DropsData,
                            version: traced.version,
                            file: traced.file.clone(),
                            line: traced.line,
                            column: traced.column,
                            statement: traced.headline.clone(),
                            relation,
                            rows,
                            // What the table held before: the planner's estimate.
                            row_count: RowCount::Estimated,
                            what: what.into(),
                            allowed: (traced.allows.iter())
                                .find(|(rule, _)| *rule == Rule::DropsData)
                                .map(|(_, reason)| reason.clone()),
                        });
                    }
                }
                // The server reports no count for a DO block or a CALL, whatever they touch:
                // its 0 would read as "touched nothing" (Harbor's 050 inserts 13,000 rows in
                // one). The snapshot's deletions above still show what it deleted.
                traced.rows = match sql::command_tag(statement.text).as_str() {
                    "DO" | "CALL" => None,
                    _ => counted.counts.last().copied(),
                };
                migration.push(traced);
            }
            (client
                .batch_execute(&format!("RELEASE SAVEPOINT {MIGRATION}"))
                .await)
                .map_err(Error::database("releasing the migration's savepoint"))?;
            let before = Before {
                files: &existing.files,
                names: &names,
            };
            finish(
                client,
                before,
                migration,
                &snapshots,
                budget_ms,
                limits.hazard_rows,
                &mut *report,
            )
            .await?;
        }
        Ok(())
    })
    .await
}

/// A migration's statements done: the locks each took, what it rewrote, and how long the
/// locks that block the bot stay held after it.
async fn finish(
    client: &Client,
    existing: Before<'_>,
    migration: Vec<Statement>,
    snapshots: &[Snapshot],
    budget_ms: f64,
    hazard_rows: i64,
    report: &mut Report,
) -> Result<(), Error> {
    let durations: Vec<f64> = migration.iter().map(|s| s.duration_ms).collect();
    for (i, mut statement) in migration.into_iter().enumerate() {
        let (before, after) = (&snapshots[i], &snapshots[i + 1]);
        // As the statement names it: the name the table had just before it ran.
        let name = |relation: i64| match before.names.get(&relation) {
            Some(name) => name.clone(),
            None => existing.name(relation),
        };
        // An empty sum is -0.0; adding 0.0 makes it print as 0.0.
        let held_after_ms: f64 = durations[i + 1..].iter().sum::<f64>() + 0.0;
        let taken = (after.locks.difference(&before.locks)).map(|lock| (lock, false));
        let again = statement.again.iter().map(|lock| (lock, true));
        for ((relation, mode), earlier) in taken.chain(again).collect::<Vec<_>>() {
            let ours = mode == "AccessShareLock" && before.read.contains(relation);
            if !existing.files.contains_key(relation) || ours {
                continue;
            }
            let size = size(client, *relation, hazard_rows).await?;
            statement.locks.push(Lock {
                relation: name(*relation),
                mode: mode.clone(),
                held_after_ms,
                rows: size.map(|(rows, _, _)| rows),
                row_count: size.map_or(RowCount::Estimated, |(_, how, _)| how),
                bytes: size.map(|(_, _, bytes)| bytes),
                earlier,
            });
        }
        statement
            .locks
            .sort_by(|a, b| (&a.relation, &a.mode).cmp(&(&b.relation, &b.mode)));
        let rewritten: Vec<i64> = (after.files.iter())
            .filter(|(relation, file)| {
                before.files.get(*relation).is_some_and(|old| old != *file)
                    && existing.files.contains_key(*relation)
            })
            .map(|(relation, _)| *relation)
            .collect();
        statement.rewrites = rewritten.iter().map(|r| name(*r)).collect();
        statement.rewrites.sort();
        let mut deleted: Vec<(String, i64)> = (after.deleted.iter())
            .map(|(relation, rows)| (relation, rows - before.deleted.get(relation).unwrap_or(&0)))
            .filter(|(_, rows)| *rows > 0)
            .map(|(relation, rows)| (name(*relation), rows))
            .collect();
        if deleted.len() > 1 {
            deleted.sort();
            statement.deleted = deleted;
        }
        // A type change the parser flags may be binary compatible (varchar(n) to text): the
        // trace saw whether the table was rewritten.
        if statement.rewrites.is_empty() {
            (statement.findings)
                .retain(|f| !(f.rule == Rule::TableRewrite && f.what == "ALTER COLUMN ... TYPE"));
        }
        // And a rewrite the parser cannot know of (a default calling a volatile function of
        // the database's own) is still one.
        if !(statement.findings.iter()).any(|f| f.rule == Rule::TableRewrite) {
            for relation in &rewritten {
                let Some((rows, row_count)) = rows_now(client, *relation, hazard_rows).await?
                else {
                    continue;
                };
                if rows < hazard_rows {
                    continue;
                }
                statement.findings.push(Finding {
                    rule: Rule::TableRewrite,
                    version: statement.version,
                    file: statement.file.clone(),
                    line: statement.line,
                    column: statement.column,
                    statement: statement.headline.clone(),
                    relation: name(*relation),
                    rows,
                    row_count,
                    what: "the trace saw the table written anew".into(),
                    allowed: (statement.allows.iter())
                        .find(|(rule, _)| *rule == Rule::TableRewrite)
                        .map(|(_, reason)| reason.clone()),
                });
            }
        }
        let held_long = statement
            .locks
            .iter()
            .find(|lock| lock.blocks() != "nothing" && lock.held_after_ms > budget_ms)
            .cloned();
        if let Some(lock) = held_long {
            statement.findings.push(Finding {
                rule: Rule::StrongLockHeldLong,
                version: statement.version,
                file: statement.file.clone(),
                line: statement.line,
                column: statement.column,
                statement: statement.headline.clone(),
                relation: lock.relation.clone(),
                rows: lock.rows.unwrap_or_default(),
                row_count: lock.row_count,
                what: format!(
                    "{} held {:.0} ms after it, blocking the bot's {}",
                    lock.mode,
                    lock.held_after_ms,
                    lock.blocks()
                ),
                allowed: (statement.allows.iter())
                    .find(|(rule, _)| *rule == Rule::StrongLockHeldLong)
                    .map(|(_, reason)| reason.clone()),
            });
        }
        report.statements.push(statement);
    }
    Ok(())
}

/// The transaction-local mark that says the plan's transaction is still the one it opened.
const OPEN: &str = "db_migrate.plan_transaction";

/// The savepoint each transactional migration of the plan runs after.
const MIGRATION: &str = "db_migrate_plan_migration";

/// An error when the statement just run ended the plan's transaction.
async fn still_open(client: &Client, version: i64, file: &std::path::Path) -> Result<(), Error> {
    let row = client
        .query_one(
            &format!("SELECT pg_catalog.current_setting('{OPEN}', true)"),
            &[],
        )
        .await
        .map_err(Error::database("checking the plan's transaction"))?;
    match row.get::<_, Option<String>>(0).as_deref() {
        Some("on") => Ok(()),
        _ => Err(Error::TransactionEnded {
            version,
            file: file.to_path_buf(),
            refusal: Refusal::TransactionEnded,
        }),
    }
}

/// The job's own relation locks, and the relfilenode of every user table, by the
/// relations' oids: their names are read only for what a statement locked or rewrote.
#[derive(Debug, Default)]
struct Snapshot {
    locks: BTreeSet<(i64, String)>,
    files: HashMap<i64, i64>,
    /// Each table's name at the snapshot: one renamed earlier in the plan is named as the
    /// statements after the rename name it (Kratos's and Authelia's audits).
    names: HashMap<i64, String>,
    /// Rows the plan's transaction deleted from each table so far, where it deleted any.
    deleted: HashMap<i64, i64>,
    /// The tables the trace itself read after the snapshot, before the next statement ran:
    /// their ACCESS SHARE locks are the trace's, not that statement's.
    read: BTreeSet<i64>,
}

/// `among`: only these relations (the tables that existed before the plan); every user table
/// when `None`. What the plan creates is locked until its end and new to the bot: without the
/// filter each snapshot would carry every lock the plan took so far, hundreds in a long one.
async fn snapshot(
    client: &Client,
    among: Option<&[i64]>,
    named: &HashMap<i64, String>,
) -> Result<Snapshot, Error> {
    // Locks on system catalogs (oid < 16384) are the snapshot's own and the server's.
    let rows = client
        .query(
            "SELECT 'lock', l.relation::int8, l.mode, 0::int8 FROM pg_catalog.pg_locks l
              WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation'
                AND l.granted AND l.relation >= 16384
                AND ($1::int8[] IS NULL OR l.relation::int8 = ANY ($1::int8[]))
             UNION ALL
             SELECT 'file', c.oid::int8, c.oid::pg_catalog.regclass::text, c.relfilenode::int8
               FROM pg_catalog.pg_class c
              WHERE c.relkind IN ('r', 'm') AND c.oid >= 16384
                AND ($1::int8[] IS NULL OR c.oid::int8 = ANY ($1::int8[]))
             UNION ALL
             SELECT 'deleted', c.oid::int8, '', pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid)
               FROM pg_catalog.pg_class c
              WHERE $1::int8[] IS NOT NULL AND c.oid::int8 = ANY ($1::int8[])
                AND pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid) > 0",
            &[&among],
        )
        .await
        .map_err(Error::database(
            "reading the locks and files of the traced statement",
        ))?;
    let mut snapshot = Snapshot::default();
    for row in rows {
        let (kind, relation, mode, number): (String, i64, String, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        match kind.as_str() {
            "lock" => {
                snapshot.locks.insert((relation, mode));
            }
            "file" => {
                snapshot.files.insert(relation, number);
                // Kept only where it differs from the name before the plan: a long plan on a
                // database of thousands of tables keeps every snapshot to its migration's end.
                if named.get(&relation) != Some(&mode) {
                    snapshot.names.insert(relation, mode);
                }
            }
            _ => {
                snapshot.deleted.insert(relation, number);
            }
        }
    }
    Ok(snapshot)
}

/// What a table that existed before the plan holds, to tell what a statement took of it.
#[derive(Debug, Clone)]
struct Contents {
    /// Whether it may hold a row: its file has a page (an empty table loses nothing; a table
    /// another session dropped meanwhile has no size: none), and, where the statement names
    /// it and its pages may hold only dead rows, it has one ([`rows_held`]).
    pages: bool,
    /// Its name, unquoted and unqualified, and as the server reads it.
    relname: String,
    regclass: String,
    /// Its schema's name, unquoted.
    schema: String,
    /// Whether a read sees all its rows: the run may read it, and no row security hides any.
    readable: bool,
    /// The planner's estimate of its rows (0 when never counted).
    estimate: i64,
    /// Rows this transaction has deleted from it so far.
    deleted: i64,
    file: i64,
}

/// [`Contents`] of each of `among` that still exists.
async fn contents(client: &Client, among: &[i64]) -> Result<HashMap<i64, Contents>, Error> {
    let rows = client
        .query(
            "SELECT c.oid::int8, coalesce(pg_catalog.pg_relation_size(c.oid) > 0, false),
                    greatest(c.reltuples, 0)::int8, coalesce(x.n_tup_del, 0)::int8,
                    c.relfilenode::int8, c.relname::text, c.oid::regclass::text,
                    NOT c.relrowsecurity AND pg_catalog.has_table_privilege(c.oid, 'SELECT'),
                    (SELECT n.nspname::text FROM pg_catalog.pg_namespace n WHERE n.oid = c.relnamespace)
               FROM pg_catalog.pg_class c
               LEFT JOIN pg_catalog.pg_stat_xact_user_tables x ON x.relid = c.oid
              WHERE c.oid::int8 = ANY ($1::int8[]) AND c.relkind IN ('r', 'm')",
            &[&among],
        )
        .await
        .map_err(Error::database("reading what the tables hold"))?;
    Ok((rows.iter())
        .map(|row| {
            let contents = Contents {
                pages: row.get(1),
                relname: row.get(5),
                regclass: row.get(6),
                readable: row.get(7),
                schema: row.get(8),
                estimate: row.get(2),
                deleted: row.get(3),
                file: row.get(4),
            };
            (row.get(0), contents)
        })
        .collect())
}

/// Whether the tables with pages that `statement` names hold a row, in one query: pages may
/// hold only dead rows (a table emptied earlier in the plan, or before it and not vacuumed
/// since), and dropping such a table loses no data. Returns the tables read (the trace's
/// own ACCESS SHARE locks). A table the text does not name (a name built at run time), or
/// one whose rows a read may not all see, is taken to hold rows when it has pages.
async fn rows_held(
    client: &Client,
    held: &mut HashMap<i64, Contents>,
    statement: &str,
) -> Result<Vec<i64>, Error> {
    let text = statement.to_ascii_lowercase();
    let unsure: Vec<i64> = (held.iter())
        .filter(|(_, c)| c.pages && c.readable && text.contains(&c.relname.to_ascii_lowercase()))
        .map(|(relation, _)| *relation)
        .collect();
    if unsure.is_empty() {
        return Ok(unsure);
    }
    let columns: Vec<String> = (unsure.iter())
        .map(|relation| format!("EXISTS (SELECT FROM {})", held[relation].regclass))
        .collect();
    let row = (client
        .query_one(&format!("SELECT {}", columns.join(", ")), &[])
        .await)
        .map_err(Error::database("reading whether the tables hold rows"))?;
    for (i, relation) in unsure.iter().enumerate() {
        if let Some(contents) = held.get_mut(relation) {
            contents.pages = row.get(i);
        }
    }
    Ok(unsure)
}

/// The trace's own reads of the tables around a statement (their sizes, whether a row is
/// left) wait for the same locks the statement would: a table another session holds past
/// the lock timeout stops `plan` as the statement would have (exit 6), not as a failure.
fn gave_up_on_lock(error: Error, (version, file): (i64, &std::path::Path)) -> Error {
    match error {
        Error::Database { source, .. }
            if source.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
        {
            Error::PlanLockTimeout {
                version,
                file: file.to_path_buf(),
                message: crate::error::describe_db(&source),
            }
        }
        error => error,
    }
}

/// The tables that held rows before a statement the parser cannot see into (`held`) and
/// that it dropped, or emptied (deleted rows from, or gave a new file, and left without
/// any): each by its name just before the statement (as its lock lines name it), with about
/// how many rows it lost, and what the trace saw. `up` cannot see this; the trace can.
async fn lost(
    client: &Client,
    held: &HashMap<i64, Contents>,
    among: &[i64],
) -> Result<(Vec<(String, i64, &'static str)>, Vec<i64>), Error> {
    let now = contents(client, among).await?;
    let mut read = Vec::new();
    let name = |relation: &i64| held[relation].regclass.clone();
    let mut lost = Vec::new();
    for (relation, before) in held.iter().filter(|(_, c)| c.pages) {
        let Some(after) = now.get(relation) else {
            let rows = before.estimate.max(1);
            if !rebuilt(client, before, among).await? {
                lost.push((name(relation), rows, "the trace saw the table dropped"));
            }
            continue;
        };
        if after.deleted == before.deleted && after.file == before.file {
            continue;
        }
        let context = "reading what the tables hold";
        let empty = format!("SELECT NOT EXISTS (SELECT FROM {})", after.regclass);
        let row = (client.query_one(&empty, &[]).await).map_err(Error::database(context))?;
        read.push(*relation);
        if row.get(0) {
            let rows = (after.deleted - before.deleted).max(before.estimate).max(1);
            lost.push((name(relation), rows, "the trace saw every row deleted"));
        }
    }
    lost.sort();
    Ok((lost, read))
}

/// Whether a table dropped by the statement was rebuilt under the name it had just before
/// it: a table the plan made (none of `among`, the tables there before the plan) now carries
/// that schema and name, and holds at least the rows the planner estimated the dropped one
/// held (the rows themselves are not compared). River's 005 renames its table away, creates
/// it again, copies the rows over and drops the old one, in one DO block. A table never
/// counted (no estimate) is not taken as rebuilt, nor is one made again without its rows.
async fn rebuilt(client: &Client, dropped: &Contents, among: &[i64]) -> Result<bool, Error> {
    if dropped.estimate <= 0 {
        return Ok(false);
    }
    let context = "reading what the tables hold";
    let found = client
        .query(
            "SELECT c.oid::pg_catalog.regclass::text FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
                AND c.oid::int8 <> ALL ($3::int8[])
                AND pg_catalog.has_table_privilege(c.oid, 'SELECT')",
            &[&dropped.schema, &dropped.relname, &among],
        )
        .await
        .map_err(Error::database(context))?;
    let Some(table) = found.first().map(|row| row.get::<_, String>(0)) else {
        return Ok(false);
    };
    let rows = dropped.estimate;
    let count = format!("SELECT pg_catalog.count(*) FROM (SELECT FROM {table} LIMIT {rows}) s");
    let row = (client.query_one(&count, &[]).await).map_err(Error::database(context))?;
    Ok(row.get::<_, i64>(0) >= rows)
}

/// The tables that existed before the plan: their files, and their names then, which is what
/// the report calls them (a statement may rename or drop one).
#[derive(Clone, Copy)]
struct Before<'a> {
    files: &'a HashMap<i64, i64>,
    names: &'a HashMap<i64, String>,
}

impl Before<'_> {
    fn name(&self, relation: i64) -> String {
        self.names
            .get(&relation)
            .cloned()
            .unwrap_or_else(|| relation.to_string())
    }
}

async fn names(client: &Client) -> Result<HashMap<i64, String>, Error> {
    let rows = client
        .query(
            "SELECT c.oid::int8, c.oid::regclass::text FROM pg_catalog.pg_class c
              WHERE c.relkind IN ('r', 'm') AND c.oid >= 16384",
            &[],
        )
        .await
        .map_err(Error::database("reading the names of the tables"))?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Rows of a table the plan rewrote, as the static rules size one: the planner's estimate
/// when it reaches `threshold`, else counted up to it; none when the plan dropped it.
async fn rows_now(
    client: &Client,
    relation: i64,
    threshold: i64,
) -> Result<Option<(i64, RowCount)>, Error> {
    let context = "sizing a table the plan rewrote";
    let row = client
        .query_opt(
            "SELECT c.oid::regclass::text, c.reltuples::int8 FROM pg_catalog.pg_class c
              WHERE c.oid = $1::int8::oid",
            &[&relation],
        )
        .await
        .map_err(Error::database(context))?;
    let Some(row) = row else { return Ok(None) };
    let (name, estimate): (String, i64) = (row.get(0), row.get(1));
    if estimate >= threshold {
        return Ok(Some((estimate, RowCount::Estimated)));
    }
    let count = format!("SELECT count(*) FROM (SELECT 1 FROM {name} LIMIT {threshold}) s");
    let row = (client.query_one(&count, &[]).await).map_err(Error::database(context))?;
    let count: i64 = row.get(0);
    Ok(Some((count, RowCount::capped(count, threshold))))
}

/// A traced relation's rows (and how they were had) and bytes; none when a statement of the
/// plan dropped it. A table never counted (`reltuples` -1, as before its first `ANALYZE` or
/// `VACUUM`) is counted, up to `cap` rows.
async fn size(
    client: &Client,
    relation: i64,
    cap: i64,
) -> Result<Option<(i64, RowCount, i64)>, Error> {
    let context = "reading the size of a traced relation";
    let row = client
        .query_opt(
            "SELECT c.reltuples::int8, pg_catalog.pg_total_relation_size(c.oid),
                    c.reltuples < 0 AND (c.relkind = 'r' OR c.relkind = 'm' AND c.relispopulated)
                    AND pg_catalog.has_table_privilege(c.oid, 'SELECT'),
                    c.oid::regclass::text
               FROM pg_catalog.pg_class c WHERE c.oid = $1::int8::oid",
            &[&relation],
        )
        .await
        .map_err(Error::database(context))?;
    let Some(row) = row else { return Ok(None) };
    let (estimate, bytes, uncounted, name): (i64, i64, bool, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if !uncounted {
        return Ok(Some((estimate.max(0), RowCount::Estimated, bytes)));
    }
    // Counted where the run may read it (a lock needs no SELECT), and a materialized view
    // only once populated: reading one that is not fails.
    let cap = cap.max(1);
    let count = format!("SELECT count(*) FROM (SELECT 1 FROM {name} LIMIT {cap}) s");
    let row = (client.query_one(&count, &[]).await).map_err(Error::database(context))?;
    let count: i64 = row.get(0);
    Ok(Some((count, RowCount::capped(count, cap), bytes)))
}

/// A statement that failed under the trace, named by file, line and column.
fn failed(
    version: i64,
    file: &std::path::Path,
    sql: &str,
    offset: usize,
    error: tokio_postgres::Error,
) -> Error {
    if let Some(refusal) = session::refusal(&error) {
        return Error::TransactionEnded {
            version,
            file: file.to_path_buf(),
            refusal,
        };
    }
    let Some(db) = error.as_db_error() else {
        return Error::Database {
            context: "tracing a statement",
            source: error,
        };
    };
    // Where the server points inside the statement, or else the statement's start.
    let within = match db.position() {
        Some(tokio_postgres::error::ErrorPosition::Original(position)) => *position as usize,
        _ => 1,
    };
    let position = sql[..offset].chars().count() + within;
    Error::Apply(Box::new(Failure {
        version,
        file: file.to_path_buf(),
        position: Some(sql::line_col(sql, position)),
        sqlstate: db.code().code().to_string(),
        message: db.message().to_string(),
        detail: db.detail().map(str::to_string),
        hint: db.hint().map(str::to_string),
        atomic: true,
        in_own_transaction: false,
    }))
}

/// How `plan` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A readable block per migration.
    Text,
    /// One JSON object per statement.
    Json,
    /// GitHub workflow annotations, one per finding.
    Github,
}

/// The report on stdout.
pub fn print(report: &Report, format: Format) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            for s in &report.statements {
                writeln!(out, "{}", json_of(s))?;
            }
        }
        Format::Github => {
            // GitHub shows only the first few annotations of each level a step prints: what
            // refuses the plan comes first, then what was allowed and the renames the running
            // bot meets, and a note (the rules' advice, such as not-idempotent) once per rule,
            // file and kind of change, naming its other lines, so that 70 notes cannot hide a
            // hazard.
            let findings: Vec<&Finding> = (report.statements.iter())
                .flat_map(|s| s.findings.iter())
                .collect();
            let level = |f: &Finding| match (f.allowed.is_some(), blocking(f)) {
                (false, true) => "error",
                (true, true) => "warning",
                _ if f.rule == Rule::RenamesInUse => "warning",
                _ => "notice",
            };
            let alike = |a: &Finding, b: &Finding| {
                level(a) == "notice"
                    && level(b) == "notice"
                    && (a.rule, &a.file, &a.what) == (b.rule, &b.file, &b.what)
            };
            for wanted in ["error", "warning", "notice"] {
                for (i, f) in findings.iter().enumerate() {
                    if level(f) != wanted || findings[..i].iter().any(|o| alike(o, f)) {
                        continue;
                    }
                    let others: Vec<String> = (findings[i + 1..].iter())
                        .filter(|o| alike(o, f))
                        .map(|o| format!("{}{}", o.line, on(o)))
                        .collect();
                    let more = match others.is_empty() {
                        true => String::new(),
                        false => format!(" (also at line(s) {})", others.join(", ")),
                    };
                    let (rule, what, fix) = (f.rule.id(), &f.what, f.rule.fix_for(&f.what));
                    let message = escape_data(&format!("{rule}: {what}{}{more}; {fix}", on(f)));
                    writeln!(
                        out,
                        "::{wanted} file={},line={},col={},title=db-migrate {}::{message}",
                        escape_property(&f.file.display().to_string()),
                        f.line,
                        f.column,
                        f.rule.id()
                    )?;
                }
            }
        }
        Format::Text => {
            let mut version = None;
            for (i, s) in report.statements.iter().enumerate() {
                if version != Some(s.version) {
                    version = Some(s.version);
                    writeln!(out, "migration {} ({})", s.version, s.file.display())?;
                }
                writeln!(out, "  {}:{}  {}", s.line, s.column, s.headline)?;
                // Why a statement was not traced is said once for its migration.
                let said = i
                    .checked_sub(1)
                    .map(|p| &report.statements[p])
                    .is_some_and(|p| p.version == s.version && p.untraced == s.untraced);
                match s.untraced {
                    None => write!(out, "        {:.1} ms", s.duration_ms)?,
                    Some(_) if said => write!(out, "        not traced (as above)")?,
                    Some(why) => write!(out, "        {}", why.says())?,
                }
                if let Some(rows) = s.rows {
                    write!(out, ", {rows} row(s)")?;
                }
                writeln!(out)?;
                for lock in &s.locks {
                    let blocks = match lock.blocks() {
                        "nothing" => "blocks none of the bot's queries".to_string(),
                        what => format!("blocks the bot's {what}"),
                    };
                    let size = match (lock.rows, lock.bytes) {
                        (Some(rows), Some(bytes)) if lock.row_count == RowCount::AtLeast => {
                            format!("at least {rows} rows, {bytes} bytes")
                        }
                        (Some(rows), Some(bytes)) => format!("{rows} rows, {bytes} bytes"),
                        _ => "dropped in this migration".to_string(),
                    };
                    let earlier = match lock.earlier {
                        true => {
                            " (held already from an earlier migration of the plan; the run takes it here)"
                        }
                        false => "",
                    };
                    writeln!(
                        out,
                        "        locks {} {} ({blocks}){earlier} until {:.1} ms after it; {size}",
                        lock.relation, lock.mode, lock.held_after_ms
                    )?;
                }
                for relation in &s.rewrites {
                    writeln!(out, "        rewrites {relation}")?;
                }
                if !s.deleted.is_empty() {
                    let tables: Vec<String> = (s.deleted.iter())
                        .map(|(relation, rows)| format!("{relation} {rows}"))
                        .collect();
                    // A DELETE names one table; the others are what it reached. A DO block or a
                    // function may delete from each itself.
                    let delete = (s.headline.split_whitespace().next())
                        .is_some_and(|word| word.eq_ignore_ascii_case("DELETE"));
                    let how = match delete {
                        true => " (a foreign key's ON DELETE CASCADE, a trigger, partitions)",
                        false => "",
                    };
                    writeln!(
                        out,
                        "        deletes rows from {} tables{how}: {}",
                        tables.len(),
                        tables.join(", ")
                    )?;
                }
                for f in &s.findings {
                    let mark = match (f.allowed.is_some(), blocking(f)) {
                        (true, _) => "allowed",
                        (false, true) => "HAZARD",
                        (false, false) => "note",
                    };
                    writeln!(out, "        {mark} {}: {}{}", f.rule.id(), f.what, on(f))?;
                    match &f.allowed {
                        Some(reason) => writeln!(out, "          reason: {reason}")?,
                        None => writeln!(out, "          fix: {}", f.rule.fix_for(&f.what))?,
                    }
                }
            }
            let hazards = report.hazards().len();
            writeln!(
                out,
                "{} statement(s), {hazards} hazard(s)",
                report.statements.len()
            )?;
        }
    }
    Ok(())
}

/// ` on video_requests`, or nothing for a finding that concerns no table.
fn on(finding: &Finding) -> String {
    match finding.relation.is_empty() {
        true => String::new(),
        false => format!(" on {}", finding.relation),
    }
}

fn json_of(s: &Statement) -> serde_json::Value {
    json!({
        "version": s.version,
        "file": s.file.display().to_string(),
        "line": s.line,
        "column": s.column,
        "statement": s.headline,
        "traced": s.untraced.is_none(),
        "not_traced": s.untraced.map(Untraced::id),
        "duration_ms": s.duration_ms,
        "rows": s.rows,
        "locks": s.locks.iter().map(|l| json!({
            "relation": l.relation,
            "mode": l.mode,
            "blocks": l.blocks(),
            "held_after_ms": l.held_after_ms,
            "relation_rows": l.rows,
            "relation_row_count": l.row_count.id(),
            "relation_bytes": l.bytes,
            "held_from_earlier_migration": l.earlier,
        })).collect::<Vec<_>>(),
        "rewrites": s.rewrites,
        "deleted": s.deleted.iter().map(|(relation, rows)| json!({
            "relation": relation,
            "rows": rows,
        })).collect::<Vec<_>>(),
        "findings": s.findings.iter().map(|f| json!({
            "rule": f.rule.id(),
            "what": f.what,
            "relation": f.relation,
            "rows": f.rows,
            "rows_known": f.row_count.id(),
            "allowed": f.allowed.is_some(),
            "reason": f.allowed,
            "fix": f.rule.fix_for(&f.what),
        })).collect::<Vec<_>>(),
    })
}

/// GitHub's workflow-command escaping of a message.
fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// GitHub's workflow-command escaping of a property value (`file=`).
fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}
