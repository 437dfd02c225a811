//! Hazards a migration's statements hold for the live bot and its data, known before anything
//! runs: each statement's effects (`classify`, PostgreSQL's own parser) weighed against the
//! target's catalog (`facts`: which tables exist and how many rows they hold).
//!
//! `up` and `down` call [`refuse`] under the migration lock and before any backup: a statement
//! that would block or rewrite a big table, validate one in place, or drop data is refused
//! with exit 9 unless a comment line directly above it says
//! `-- db-migrate:allow <rule-id> <reason>` (or, for dropped data, the run passes
//! `--allow-data-loss`).

pub mod classify;
mod facts;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use tokio_postgres::Client;
use tokio_postgres::types::Type as PgType;
use tracing::warn;

use crate::error::Error;
use crate::plan::Plan;
use crate::sql;
use classify::{Effect, Name};

/// What a `VALIDATE CONSTRAINT` in the transaction that added the constraint `NOT VALID`
/// does: the finding's `what`, and the key of its own fix.
const VALIDATE_WITH_ADD: &str =
    "VALIDATE CONSTRAINT in the transaction that added it NOT VALID, under that ADD's lock";

/// The same in a run of one transaction (`--single-transaction`, `--dry-run`), the `ADD` in
/// an earlier migration of the run: its lock is held until the run ends.
const VALIDATE_IN_RUN: &str = "VALIDATE CONSTRAINT in the run's one transaction, under the lock of an earlier migration's ADD ... NOT VALID";

/// A rule: what it finds, with a stable id users write in allow comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    IndexWithoutConcurrently,
    TableRewrite,
    ValidatesWholeTable,
    /// Found by `plan`'s trace only.
    StrongLockHeldLong,
    DropsData,
    RenamesInUse,
    NotIdempotent,
    LiftsLockTimeout,
}

impl Rule {
    pub const ALL: [Rule; 8] = [
        Rule::IndexWithoutConcurrently,
        Rule::TableRewrite,
        Rule::ValidatesWholeTable,
        Rule::StrongLockHeldLong,
        Rule::DropsData,
        Rule::RenamesInUse,
        Rule::NotIdempotent,
        Rule::LiftsLockTimeout,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Rule::IndexWithoutConcurrently => "index-without-concurrently",
            Rule::TableRewrite => "table-rewrite",
            Rule::ValidatesWholeTable => "validates-whole-table",
            Rule::StrongLockHeldLong => "strong-lock-held-long",
            Rule::DropsData => "drops-data",
            Rule::RenamesInUse => "renames-in-use",
            Rule::NotIdempotent => "not-idempotent",
            Rule::LiftsLockTimeout => "lifts-lock-timeout",
        }
    }

    pub fn from_id(id: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|rule| rule.id() == id)
    }

    /// The way out, in one line.
    pub fn fix(self) -> &'static str {
        match self {
            Rule::IndexWithoutConcurrently => {
                "build it with CREATE INDEX CONCURRENTLY IF NOT EXISTS in a -- no-transaction file"
            }
            Rule::TableRewrite => {
                "add a new column, backfill it in batches and switch over, instead of rewriting the table"
            }
            Rule::ValidatesWholeTable => {
                "add the constraint NOT VALID, then VALIDATE CONSTRAINT in a later migration (it does not block writes)"
            }
            Rule::StrongLockHeldLong => {
                "move what runs after it into a migration of its own, so its lock is released at once"
            }
            Rule::DropsData => {
                "take a backup first, then allow it: --allow-data-loss, or -- db-migrate:allow drops-data <reason> above the statement"
            }
            Rule::RenamesInUse => {
                "add the new name beside the old one, move the bot over, then drop the old name in a later release"
            }
            Rule::NotIdempotent => "write CREATE ... IF NOT EXISTS and DROP ... IF EXISTS",
            Rule::LiftsLockTimeout => {
                "leave lock_timeout to db-migrate: remove the statement, and raise --ddl-lock-timeout for the run if its locks need a longer wait"
            }
        }
    }

    /// [`fix`](Self::fix) for a finding of what `what` says the statement does: the general
    /// fix of a rule does not fit every statement it finds (a view is not backfilled, and
    /// `VACUUM FULL` has nothing to switch over to).
    pub fn fix_for(self, what: &str) -> &'static str {
        match (self, what) {
            (Rule::TableRewrite, classify::REFRESH_VIEW) => {
                "refresh it with REFRESH MATERIALIZED VIEW CONCURRENTLY (the view needs a unique index), which lets the bot read it meanwhile"
            }
            (Rule::TableRewrite, classify::VACUUM_FULL | classify::CLUSTER) => {
                "leave it out of the migration: compact the table with pg_repack beside the deploy, which holds its strong lock only at the end"
            }
            (Rule::ValidatesWholeTable, classify::SET_NOT_NULL) => {
                "add CHECK (column IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT it in a later migration (it does not block writes), then SET NOT NULL, which the validated check spares the read (PostgreSQL 12+), and drop the check"
            }
            (Rule::ValidatesWholeTable, VALIDATE_WITH_ADD) => {
                "move VALIDATE CONSTRAINT into a migration of its own, after the one that adds the constraint NOT VALID (its lock then blocks no writes)"
            }
            (Rule::ValidatesWholeTable, VALIDATE_IN_RUN) => {
                "apply up to the migration that adds the constraint NOT VALID first (up --target N), then the rest, or run without --single-transaction: VALIDATE then blocks no writes"
            }
            (Rule::NotIdempotent, classify::UNNAMED_INDEX) => {
                "name the index and write CREATE INDEX IF NOT EXISTS name (without a name each run builds another index)"
            }
            (Rule::DropsData, classify::DELETE_ENUM_LABEL) => {
                "move the rows to another label before the run (UPDATE ... SET column = 'other' WHERE column = 'label'); rows left holding a deleted label can no longer be read (SELECT * and pg_dump of the table fail). Moved in the same file, they are still counted as they are before the run: allow the DELETE there with -- db-migrate:allow drops-data <reason>"
            }
            (Rule::DropsData, classify::DELETE_ENUM_UNTOLD) => {
                "write it as DELETE FROM pg_enum WHERE enumtypid = 'type'::regtype AND enumlabel = 'label', or, once no row holds the labels, allow it: -- db-migrate:allow drops-data <reason>"
            }
            (Rule::IndexWithoutConcurrently, classify::REINDEX_TABLE) => {
                "rebuild it with REINDEX TABLE CONCURRENTLY in a -- no-transaction file"
            }
            (Rule::IndexWithoutConcurrently, classify::REINDEX_INDEX) => {
                "rebuild it with REINDEX INDEX CONCURRENTLY in a -- no-transaction file"
            }
            (Rule::IndexWithoutConcurrently, classify::INDEX_ON_PARTITIONED) => {
                "CONCURRENTLY cannot build it on a partitioned table: create it with CREATE INDEX IF NOT EXISTS ... ON ONLY the table (reads no rows), then in a -- no-transaction file build each partition's with CREATE INDEX CONCURRENTLY and ALTER INDEX ... ATTACH PARTITION it; the table's index is valid once all are attached"
            }
            (Rule::IndexWithoutConcurrently, classify::KEY_ON_PARTITIONED) => {
                "no index is built CONCURRENTLY on a partitioned table, nor a constraint added USING INDEX: in a -- no-transaction file build each partition's unique index with CREATE UNIQUE INDEX CONCURRENTLY, make it the partition's key with ALTER TABLE <partition> ADD CONSTRAINT ... PRIMARY KEY USING INDEX, then add the key to the partitioned table, which takes over the partitions' keys without building (allow that statement: -- db-migrate:allow index-without-concurrently <reason>)"
            }
            (Rule::ValidatesWholeTable, classify::FOREIGN_KEY_ON_PARTITIONED) => {
                "a partitioned table takes no NOT VALID foreign key before PostgreSQL 18: add it NOT VALID to each partition and VALIDATE each in a later migration, then add it to the partitioned table, which takes over the partitions' keys without reading them (allow that statement: -- db-migrate:allow validates-whole-table <reason>)"
            }
            _ => self.fix(),
        }
    }

    /// Whether `up` and `down` refuse it before anything runs (the others are reported by
    /// `plan` only).
    pub fn refused(self) -> bool {
        matches!(
            self,
            Rule::IndexWithoutConcurrently
                | Rule::TableRewrite
                | Rule::ValidatesWholeTable
                | Rule::DropsData
                | Rule::LiftsLockTimeout
        )
    }
}

/// How a finding's row count was had: the catalog's numbers are estimates, and a count stops
/// at its cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowCount {
    #[default]
    Counted,
    /// The planner's estimate (`pg_class.reltuples`, `pg_stats`).
    Estimated,
    /// A count that reached its cap: at least this many.
    AtLeast,
}

impl RowCount {
    /// A count of at most `cap` rows that came to `count`.
    pub fn capped(count: i64, cap: i64) -> RowCount {
        match count >= cap {
            true => RowCount::AtLeast,
            false => RowCount::Counted,
        }
    }

    /// As the JSON events and `plan --format json` give it.
    pub fn id(self) -> &'static str {
        match self {
            RowCount::Counted => "counted",
            RowCount::Estimated => "estimated",
            RowCount::AtLeast => "at_least",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            RowCount::Counted => "",
            RowCount::Estimated => "about ",
            RowCount::AtLeast => "at least ",
        }
    }
}

/// How much of a statement a finding and `plan` show.
pub const HEADLINE: usize = 120;

/// The rows of a finding that concerns no table.
const NO_ROWS: (i64, RowCount) = (0, RowCount::Counted);

/// One statement's hazard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: Rule,
    pub version: i64,
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The statement on one line ([`sql::headline`], at most [`HEADLINE`] characters).
    pub statement: String,
    pub relation: String,
    /// Rows of the relation (for a dropped column: rows holding a value in it).
    pub rows: i64,
    /// Whether `rows` is a count, an estimate or a floor.
    pub row_count: RowCount,
    /// What the statement does, e.g. `CREATE INDEX`.
    pub what: String,
    /// The reason of an allow comment that silences it.
    pub allowed: Option<String>,
}

impl Finding {
    /// Where and what, without the fix: `file:line:column: rule (what) on relation holding N
    /// row(s)`.
    pub fn found(&self) -> String {
        let at = format!(
            "{}:{}:{}: {} ({})",
            self.file.display(),
            self.line,
            self.column,
            self.rule.id(),
            self.what
        );
        if self.relation.is_empty() {
            return at;
        }
        let known = self.row_count.prefix();
        let rows = match self.rule {
            Rule::DropsData => format!("{known}{} row(s) of data", self.rows),
            _ => format!("{known}{} row(s)", self.rows),
        };
        format!("{at} on {} holding {rows}", self.relation)
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fix = self.rule.fix_for(&self.what);
        write!(f, "{}; {fix}", self.found())
    }
}

/// What the rules are given besides the plan.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A table at or above this many rows is big enough for the size rules.
    pub hazard_rows: i64,
    /// Data loss was accepted for this run (`--allow-data-loss`).
    pub allow_data_loss: bool,
    /// The run's `lock_timeout` (`--ddl-lock-timeout`): a statement may lower it, not lift it.
    pub lock_timeout: std::time::Duration,
    /// The run applies its migrations in one transaction (`--single-transaction`,
    /// `--dry-run`): a lock one takes is held through the others.
    pub one_transaction: bool,
}

/// What the run already knows of the target's tables when the rules look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tables {
    /// The catalog says: one look for the tables the plan's statements concern.
    Unknown,
    /// There were none when the run took the migration lock (`up` on a database without
    /// history looks): everything the plan creates is new, and nothing is at stake.
    None,
}

/// Checks every statement of `plan` against the target's catalog, logs each finding, and
/// refuses the run (exit 9) when one that `up` and `down` refuse is not allowed.
pub async fn refuse(
    client: &Client,
    plan: &Plan<'_>,
    limits: Limits,
    tables: Tables,
) -> Result<(), Error> {
    // The idempotency convention is `plan`'s to report; here it would be noise.
    let findings = check(client, plan, limits, false, tables).await?;
    let mut refused = Vec::new();
    for finding in findings {
        let allowed = finding.allowed.is_some()
            || (finding.rule == Rule::DropsData && limits.allow_data_loss);
        let message = match (finding.rule.refused(), allowed) {
            (false, _) => "hazard noted",
            (true, true) => "hazard allowed",
            (true, false) => "hazard refused",
        };
        // At a person's terminal the line `log::Person` prints instead of the fields.
        let person = match (&finding.allowed, allowed && finding.rule.refused()) {
            (Some(reason), _) => format!("{message} ({reason}): {}", finding.found()),
            (None, true) => format!("{message} (--allow-data-loss): {}", finding.found()),
            (None, false) => format!("{message}: {finding}"),
        };
        warn!(
            person,
            rule = finding.rule.id(),
            version = finding.version,
            file = %finding.file.display(),
            line = finding.line,
            column = finding.column,
            relation = %finding.relation,
            rows = finding.rows,
            rows_known = finding.row_count.id(),
            statement = %finding.statement,
            allowed,
            reason = finding.allowed.as_deref(),
            fix = finding.rule.fix_for(&finding.what),
            "{message}"
        );
        if finding.rule.refused() && !allowed {
            refused.push(finding);
        }
    }
    match refused.first() {
        None => Ok(()),
        Some(first) => Err(Error::Hazard {
            count: refused.len(),
            first: first.to_string(),
            traced: false,
        }),
    }
}

/// The findings of every statement of `plan`, in order; those of [`Rule::NotIdempotent`]
/// only when `conventions` asks for them.
pub async fn check(
    client: &Client,
    plan: &Plan<'_>,
    limits: Limits,
    conventions: bool,
    known: Tables,
) -> Result<Vec<Finding>, Error> {
    // On a database without tables (`up`'s first run) nothing is at stake: every rule weighs
    // a table that was there before the plan, so none can find anything, and no statement
    // is parsed (the parser's first use was most of the client's time between the seed's
    // history read and its first migration). The allow comments are still read, so that a
    // malformed one is refused on an empty database as on any other.
    if known == Tables::None && !conventions {
        for step in &plan.steps {
            for statement in sql::split(&step.script.sql) {
                allows(&step.script.sql, statement.offset, &step.script.path)?;
            }
        }
        return Ok(Vec::new());
    }
    let mut statements = Vec::new();
    // A CREATE that builds no index only names what it creates, which matters to a hazard
    // later in the plan on that name and to nothing else: without the conventions such
    // statements are parsed only when the plan holds a hazard at all. The parser is most of
    // what a run of many such files costs in memory.
    let mut deferred = Vec::new();
    for step in &plan.steps {
        let script = step.script;
        for statement in sql::split(&script.sql) {
            let allows = allows(&script.sql, statement.offset, &script.path)?;
            let effects = match sql::reach(statement.text) {
                sql::Reach::None => Vec::new(),
                sql::Reach::Creates if !conventions => {
                    deferred.push(statements.len());
                    Vec::new()
                }
                _ => classify::effects(statement.text),
            };
            statements.push((step.migration.version, script, statement, allows, effects));
        }
    }
    qualify(client, &mut statements).await?;
    if known == Tables::Unknown {
        index_tables(client, &mut statements).await?;
    }
    let hazards = statements.iter().any(|(.., effects)| {
        (effects.iter()).any(|e| {
            weigh(e).is_some()
                || matches!(
                    e,
                    Effect::DropsDependents { .. } | Effect::DeletesEnumLabels { .. }
                )
        })
    });
    if hazards {
        for i in deferred {
            statements[i].4 = classify::effects(statements[i].2.text);
        }
    }
    // One look at the catalog for every table a hazard could concern, but for those the plan
    // creates (or drops, or renames away) before the statement reaches them, as the weighing
    // below skips. A CREATE ... IF NOT EXISTS creates only what is missing, so the look also
    // says whether it will (`named`: whether it exists, no count): the seed's `CREATE TABLE
    // IF NOT EXISTS video_requests` on a database that already holds the bot's table creates
    // nothing, and the seed's index builds after it block that table's writes; the hazards
    // after it on that name are sized as on any table.
    // What each DROP ... CASCADE takes with it, from the catalog as it is before the plan.
    let cascades: Vec<&classify::Dropped> = match known {
        Tables::None => Vec::new(),
        Tables::Unknown => (statements.iter())
            .flat_map(|(.., effects)| effects)
            .filter_map(|effect| match effect {
                Effect::DropsDependents { object, .. } => Some(object),
                _ => None,
            })
            .collect(),
    };
    let lost = facts::dependents(client, &cascades).await?;
    let mut tables: Vec<&Name> = lost.iter().flatten().map(|l| &l.table).collect();
    let mut named: Vec<&Name> = Vec::new();
    let mut fresh: HashSet<&Name> = HashSet::new();
    for (.., effects) in &statements {
        for effect in effects {
            match sized_table(effect) {
                None => {
                    if let Effect::Creates {
                        relation,
                        if_not_exists,
                    } = effect
                        && !fresh.contains(relation)
                    {
                        match if_not_exists {
                            true => named.push(relation),
                            false => {
                                fresh.insert(relation);
                            }
                        }
                    }
                }
                Some(table) if fresh.contains(table) => {}
                Some(table) => {
                    tables.push(table);
                    if vacates(effect) {
                        fresh.insert(table);
                    }
                }
            }
        }
    }
    if known == Tables::None {
        tables.clear();
        named.clear();
    }
    let facts = facts::Facts::read(client, &tables, &named, limits.hazard_rows).await?;
    let mut findings = Vec::new();
    // Tables dropped, renamed away or created earlier in the plan are new ones by the time a
    // later statement reaches them: what the catalog says of the old one does not apply.
    let mut fresh: HashSet<Name> = HashSet::new();
    // A table renamed earlier in the plan is the old one under its new name: sized as such.
    let mut renamed: HashMap<Name, Name> = HashMap::new();
    // Columns added earlier in the plan hold only their default or NULL: an UPDATE that
    // writes nothing else fills them in (a backfill before SET NOT NULL) and loses nothing.
    let mut added: HashSet<(&Name, &str)> = HashSet::new();
    // Of those, the ones added NOT NULL: a later SET NOT NULL on one finds it so already and
    // reads nothing, as it does on a column the catalog says is NOT NULL before the plan.
    let mut added_not_null: HashSet<(&Name, &str)> = HashSet::new();
    // Constraints added NOT VALID in the transaction so far, with the version that added
    // each: validating one in it reads the table under the lock that ADD took (ACCESS
    // EXCLUSIVE for a CHECK). A run of one transaction is one transaction throughout.
    let mut not_valid: HashMap<(&Name, &str), i64> = HashMap::new();
    let mut transaction = None;
    // No statement of the plan so far has changed the session's time zone (a `SET` lasts
    // into the migrations after it): a timestamp conversion is judged under the run's own.
    // Only a type change asks, so the statements are read for it only in a plan with one.
    let mut zone_kept = true;
    // The type each column was last changed to by the plan, as written.
    let mut retyped: HashMap<(Name, String), (String, Vec<i32>)> = HashMap::new();
    // Columns a RENAME COLUMN of the plan made: an ADD COLUMN IF NOT EXISTS of one adds
    // nothing, though the catalog before the plan lacks it.
    let mut renamed_into: HashSet<(Name, String)> = HashSet::new();
    let retypes = (statements.iter())
        .any(|(.., effects)| effects.iter().any(|e| matches!(e, Effect::Retypes { .. })));
    let mut lost = lost.iter();
    for (at, (version, script, statement, allows, effects)) in statements.iter().enumerate() {
        zone_kept &= !(retypes && sql::changes_time_zone(statement.text));
        let next = transaction != Some(*version) && !limits.one_transaction;
        if next || script.no_transaction {
            not_valid.clear();
            transaction = Some(*version);
        }
        let finding =
            |rule: Rule, relation: String, (rows, row_count): (i64, RowCount), what: &str| {
                let (line, column) = statement.place(&script.sql);
                Finding {
                    rule,
                    version: *version,
                    file: script.path.clone(),
                    line,
                    column,
                    statement: sql::headline(statement.text, HEADLINE),
                    relation,
                    rows,
                    row_count,
                    what: what.to_string(),
                    allowed: allowed(allows, rule),
                }
            };
        // Not a table's size but every table's queue: the statements after it wait for
        // their locks as long as they must, and the bot's queries wait behind them. On a
        // database without tables no one waits (a pg_dump schema as the first migration
        // starts with `SET lock_timeout = 0`).
        let run_ms = limits.lock_timeout.as_millis();
        let change = match known {
            Tables::None => None,
            Tables::Unknown => sql::lock_timeout_change(statement.text),
        };
        let lifted = match change {
            Some(sql::LockTimeout::Set(wait)) if wait.is_zero() => {
                Some("lock_timeout 0, no limit".to_string())
            }
            Some(sql::LockTimeout::Set(wait)) => (wait > limits.lock_timeout).then(|| {
                format!(
                    "lock_timeout {} ms, above the run's {run_ms} ms",
                    wait.as_millis()
                )
            }),
            Some(sql::LockTimeout::Reset) => {
                Some("lock_timeout back to the session's default, no limit unless set".into())
            }
            Some(sql::LockTimeout::Unknown) => Some(
                "lock_timeout to a value it computes, or inside a DO block, pg_settings or a computed set_config".into(),
            ),
            None => None,
        };
        if let Some(what) = lifted {
            findings.push(finding(
                Rule::LiftsLockTimeout,
                String::new(),
                NO_ROWS,
                &what,
            ));
        }
        // CREATE INDEX IF NOT EXISTS of an index the catalog has on the statement's table
        // builds nothing (Harbor repeats its index statements in later releases), unless an
        // earlier statement of the plan may have dropped it (see `may_drop_index`).
        let mut builds_nothing = false;
        if let [
            Effect::Creates {
                relation,
                if_not_exists: true,
            },
            Effect::BuildsIndex { table, .. },
            ..,
        ] = effects.as_slice()
            && !fresh.contains(relation)
            && !fresh.contains(table)
            && !renamed.contains_key(table)
            && facts.rows(relation).is_some()
            && !may_drop_index(&statements[..at], &relation.name, table)
        {
            builds_nothing = facts.index_on(client, relation, table).await?;
        }
        // The effects of a column that ADD COLUMN IF NOT EXISTS finds there already: none
        // happens (Kestra's V3_3 adds again a stored generated column V1_11 added).
        let mut skip = 0;
        for effect in effects {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            if builds_nothing && matches!(effect, Effect::BuildsIndex { .. }) {
                continue;
            }
            // A column dropped or added again, or changed to a type not read here, is no
            // longer of the type a change gave it; a renamed one is another column.
            match effect {
                Effect::AddsColumn { table, column, .. }
                | Effect::DropsColumn { table, column }
                | Effect::Retypes {
                    table,
                    column,
                    to: None,
                } => {
                    retyped.remove(&(renamed.get(table).unwrap_or(table).clone(), column.clone()));
                }
                Effect::Renames {
                    table,
                    column: Some(_),
                    to,
                } => {
                    let table = renamed.get(table).unwrap_or(table);
                    retyped.retain(|(t, _), _| t != table);
                    renamed_into.insert((table.clone(), to.name.clone()));
                }
                _ => {}
            }
            if let Effect::DropsDependents { what, .. } = effect {
                let Some(lost) = lost.next().filter(|_| known == Tables::Unknown) else {
                    continue;
                };
                let (mut rows, mut count, mut names) = (0, RowCount::Counted, Vec::new());
                for l in lost {
                    let held = match &l.column {
                        Some(column) => facts.values(client, &l.table, column).await?,
                        None => facts.rows(&l.table),
                    };
                    if let Some((held @ 1.., how)) = held {
                        rows += held;
                        count = count.max(how);
                        names.push(match &l.column {
                            Some(column) => format!("{}.{}", l.table, Name::bare(column)),
                            None => l.table.to_string(),
                        });
                    }
                }
                if rows > 0 {
                    findings.push(finding(
                        Rule::DropsData,
                        listed(&names),
                        (rows, count),
                        what,
                    ));
                }
                continue;
            }
            // The rows that would hold a label no longer in the catalog, which the server
            // then cannot read (Hyperswitch's rollbacks of ADD VALUE). What cannot be told is
            // refused as well: the loss cannot be undone.
            if let Effect::DeletesEnumLabels { reference } = effect {
                if known == Tables::None {
                    continue;
                }
                let held = match sql::enum_labels_deleted(statement.text, reference) {
                    Some(deleted) => facts::labels_in_use(client, &deleted).await?,
                    None => facts::Held {
                        columns: Vec::new(),
                        untold: true,
                    },
                };
                // Counted as the catalog stands before the plan: a table the plan renamed
                // still holds its rows, and one it dropped is said too rather than guessed at
                // by name across schemas.
                for (table, column, rows) in held.columns {
                    let relation = format!("{table}.{}", Name::bare(&column));
                    let what = classify::DELETE_ENUM_LABEL;
                    findings.push(finding(Rule::DropsData, relation, rows, what));
                }
                if held.untold {
                    let what = classify::DELETE_ENUM_UNTOLD;
                    findings.push(finding(Rule::DropsData, String::new(), NO_ROWS, what));
                }
                continue;
            }
            match effect {
                Effect::AddsColumn {
                    table,
                    column,
                    not_null,
                    if_not_exists,
                    then,
                } => {
                    // IF NOT EXISTS adds nothing where the column is there: in the catalog
                    // before the plan (under the table's name then), or added by the plan.
                    let there = *if_not_exists
                        && !fresh.contains(table)
                        && (added.contains(&(table, column.as_str()))
                            || known == Tables::None
                            || (renamed_into.iter()).any(|(t, c)| {
                                t == renamed.get(table).unwrap_or(table) && c == column
                            })
                            || facts
                                .has_column(client, renamed.get(table).unwrap_or(table), column)
                                .await?);
                    if there {
                        skip = *then;
                    } else {
                        added.insert((table, column));
                        if *not_null {
                            added_not_null.insert((table, column));
                        }
                    }
                }
                Effect::Validates {
                    table,
                    not_null: Some(column),
                    ..
                } if added_not_null.contains(&(table, column.as_str())) => {
                    continue;
                }
                Effect::AddsNotValid { table, constraint } => {
                    not_valid.insert((table, constraint), *version);
                }
                Effect::ValidatesConstraint { table, constraint }
                    if !not_valid.contains_key(&(table, constraint.as_str())) =>
                {
                    continue;
                }
                Effect::ChangesAllRows { table, columns, .. }
                    if !columns.is_empty()
                        && (columns.iter()).all(|c| added.contains(&(table, c.as_str()))) =>
                {
                    continue;
                }
                _ => {}
            }
            let Some((rule, table, mut what, column_name)) = weigh(effect) else {
                match effect {
                    // Already there, IF NOT EXISTS leaves it as it is.
                    Effect::Creates {
                        if_not_exists: true,
                        relation,
                    } if !fresh.contains(relation) && facts.rows(relation).is_some() => {}
                    Effect::Creates { relation, .. } => {
                        fresh.insert(relation.clone());
                    }
                    // A convention, not a hazard: no table, no rows, never refused.
                    Effect::NotIdempotent { what } if conventions => {
                        let note = finding(Rule::NotIdempotent, String::new(), NO_ROWS, what);
                        // One note for a statement that does it to several columns.
                        if !findings.contains(&note) {
                            findings.push(note);
                        }
                    }
                    _ => {}
                }
                continue;
            };
            if fresh.contains(table) {
                continue;
            }
            if let Effect::ValidatesConstraint { table, constraint } = effect
                && not_valid.get(&(table, constraint.as_str())) != Some(version)
            {
                what = VALIDATE_IN_RUN;
            }
            if let Effect::Renames {
                column: None, to, ..
            } = effect
            {
                let new = Name {
                    schema: to.schema.clone().or_else(|| table.schema.clone()),
                    name: to.name.clone(),
                };
                let old = renamed.get(table).cloned().unwrap_or_else(|| table.clone());
                renamed.insert(new, old);
            }
            // The catalog knows a table renamed earlier in the plan by its old name; the
            // finding names it as the file does (crates.io's 108 named the old one).
            let written = table;
            let table = renamed.get(table).unwrap_or(table);
            // A type that only widens is changed in the catalog alone; one that rounds or
            // cuts values loses the old ones, whatever the table's size.
            if let Effect::Retypes {
                column,
                to: Some(to),
                ..
            } = effect
            {
                // The same change earlier in the plan left the column of that type already:
                // Harbor's 071 and 080 both make vulnerability_record.id bigint.
                let key = (table.clone(), column.clone());
                if retyped.get(&key) == Some(to) {
                    continue;
                }
                retyped.insert(key, to.clone());
                match facts::retype(client, table, column, to, zone_kept).await? {
                    facts::Retype::Free => continue,
                    facts::Retype::Lossy(what) => {
                        if let Some(held @ (1.., _)) = facts.values(client, table, column).await? {
                            let name = format!("{}.{}", written, Name::bare(column));
                            findings.push(finding(Rule::DropsData, name, held, what));
                        }
                    }
                    facts::Retype::Rewrite => {}
                }
            }
            // PostgreSQL 12 and later skip the read when a validated CHECK proves it.
            if let Effect::Validates {
                not_null: Some(column),
                ..
            } = effect
                && facts::proven_not_null(client, table, column).await?
            {
                continue;
            }
            let rows = match (rule, column_name) {
                (Rule::DropsData, Some(column)) => facts.values(client, table, column).await?,
                _ => facts.rows(table),
            };
            let Some((rows, row_count)) = rows else {
                continue;
            };
            let hit = match rule {
                Rule::DropsData => rows > 0,
                Rule::RenamesInUse => true,
                _ => rows >= limits.hazard_rows,
            };
            if vacates(effect) {
                fresh.insert(table.clone());
            }
            // Only the catalog tells whether the type is a domain that checks something, or
            // a function the default calls is volatile; asked only of a table that size.
            let what = match effect {
                Effect::MayRewrite {
                    of_type,
                    calls,
                    own_default,
                    path,
                    ..
                } if hit => {
                    let of_type = of_type.as_deref();
                    let rewrites =
                        facts::add_column_rewrites(client, of_type, calls, *own_default, path);
                    match rewrites.await? {
                        Some(what) => what,
                        None => continue,
                    }
                }
                _ => what,
            };
            // What the general fix proposes is not possible on a partitioned table, and what
            // this one proposes builds no index there.
            let what = match what {
                classify::CREATE_INDEX_ON_ONLY if facts.partitioned(table) => continue,
                classify::CREATE_INDEX if facts.partitioned(table) => {
                    classify::INDEX_ON_PARTITIONED
                }
                classify::ADD_FOREIGN_KEY if facts.partitioned(table) => {
                    classify::FOREIGN_KEY_ON_PARTITIONED
                }
                classify::ADD_KEY if facts.partitioned(table) => classify::KEY_ON_PARTITIONED,
                _ => what,
            };
            if hit {
                // A dropped column is named: one statement may drop several.
                let relation = match (rule, column_name) {
                    (Rule::DropsData, Some(column)) => {
                        format!("{}.{}", written, Name::bare(column))
                    }
                    _ => written.to_string(),
                };
                findings.push(finding(rule, relation, (rows, row_count), what));
            }
        }
    }
    // One finding per rule, statement, relation and kind of change: an ALTER TABLE that
    // changes three columns' types rewrites its table once, and a TRUNCATE ... CASCADE that
    // names a table its cascade also reaches empties it once (UPchieve's audit saw each said
    // again).
    let mut seen = HashSet::new();
    findings.retain(|f| {
        seen.insert((
            f.rule,
            f.version,
            f.file.clone(),
            f.line,
            f.column,
            f.relation.clone(),
            f.what.clone(),
        ))
    });
    Ok(findings)
}

/// Unqualified names after a migration's own `SET search_path` resolve through that path, as
/// the server resolves them when the statement runs, not through the session's (a new
/// column's type and the functions its default calls are looked up along it later): each gets
/// the first schema on the path that holds a relation of that name (or, when none does, the
/// first schema on it, where a CREATE puts it). The path lasts to the migration's end (each
/// migration starts from the run's settings).
async fn qualify(client: &Client, statements: &mut [Checked<'_>]) -> Result<(), Error> {
    let mut path: Option<Vec<String>> = None;
    let mut step = None;
    // (statement, effect, path) of each unqualified name under a path of the file's own.
    let mut under: Vec<(usize, usize, Vec<String>)> = Vec::new();
    for (i, (version, script, statement, _, effects)) in statements.iter_mut().enumerate() {
        if step != Some((*version, script.path.as_path())) {
            step = Some((*version, script.path.as_path()));
            path = None;
        }
        // Only a SET, a RESET or a SELECT of set_config is parsed for it: the parser is what
        // a run of many files costs.
        let tag = sql::command_tag(statement.text);
        let set_config = || {
            tag == "SELECT"
                && (statement.text.as_bytes().windows(10))
                    .any(|w| w.eq_ignore_ascii_case(b"set_config"))
        };
        if (tag == "SET" || tag == "RESET" || set_config())
            && let Some(set) = classify::search_path(statement.text)
        {
            path = set.map(|schemas| {
                (schemas.into_iter())
                    .filter(|s| s != "$user" && s != "pg_catalog" && s != "pg_temp")
                    .collect()
            });
            continue;
        }
        let Some(schemas) = path.as_ref().filter(|p| !p.is_empty()) else {
            continue;
        };
        for (j, effect) in effects.iter_mut().enumerate() {
            if let Effect::MayRewrite { path, .. } = effect {
                path.clone_from(schemas);
            }
            if effect.table_mut().is_some_and(|t| t.schema.is_none()) {
                under.push((i, j, schemas.clone()));
            }
        }
    }
    for (i, j, schemas) in under {
        let effect = &mut statements[i].4[j];
        let kind = effect.named_kind();
        let Some(name) = effect.table_mut().map(|t| t.name.clone()) else {
            continue;
        };
        let row = client
            .query_typed(
                // The first schema of the path holding an object of that name and kind, as
                // the server looks up a relation, a type (DROP TYPE ... CASCADE) or a
                // function (DROP FUNCTION ... CASCADE): a function of the table's name in an
                // earlier schema does not hide the table.
                "SELECT coalesce((SELECT s FROM unnest($2::text[]) WITH ORDINALITY AS p(s, o)
                                    JOIN pg_catalog.pg_namespace n ON n.nspname = p.s
                                   WHERE CASE $3
                                         WHEN 't' THEN EXISTS (SELECT FROM pg_catalog.pg_type t
                                                  WHERE t.typnamespace = n.oid AND t.typname = $1)
                                         WHEN 'f' THEN EXISTS (SELECT FROM pg_catalog.pg_proc f
                                                  WHERE f.pronamespace = n.oid AND f.proname = $1)
                                         ELSE EXISTS (SELECT FROM pg_catalog.pg_class c
                                                  WHERE c.relnamespace = n.oid AND c.relname = $1)
                                         END
                                   ORDER BY o LIMIT 1), $2[1])",
                &[
                    (&name, PgType::TEXT),
                    (&schemas, PgType::TEXT_ARRAY),
                    (&kind, PgType::TEXT),
                ],
            )
            .await
            .map_err(Error::database(
                "resolving names through a migration's search_path",
            ))?;
        let schema: Option<String> = row.first().and_then(|r| r.get(0));
        if let Some(table) = statements[i].4[j].table_mut() {
            table.schema = schema;
        }
    }
    Ok(())
}

/// Turns each REINDEX INDEX into the index build it is on the index's table, found in the
/// catalog; one of an index the catalog does not hold yet (the plan creates it) weighs
/// nothing.
async fn index_tables(client: &Client, statements: &mut [Checked<'_>]) -> Result<(), Error> {
    for (.., effects) in statements.iter_mut() {
        let mut resolved = Vec::with_capacity(effects.len());
        for effect in effects.drain(..) {
            let Effect::ReindexesIndex { index } = &effect else {
                resolved.push(effect);
                continue;
            };
            let rows = client
                .query_typed(
                    "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_index i
                       JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE i.indexrelid = pg_catalog.to_regclass($1)",
                    &[(&index.sql(), PgType::TEXT)],
                )
                .await
                .map_err(Error::database("finding the table of a reindexed index"))?;
            if let Some(row) = rows.first() {
                resolved.push(Effect::BuildsIndex {
                    table: Name {
                        schema: Some(row.get(0)),
                        name: row.get(1),
                    },
                    concurrently: false,
                    what: classify::REINDEX_INDEX,
                });
            }
        }
        *effects = resolved;
    }
    Ok(())
}

/// One statement of a plan, as [`check`] weighs it: its migration's version and script, the
/// statement, its allow comments, its effects.
type Checked<'a> = (
    i64,
    &'a crate::source::Script,
    sql::Statement<'a>,
    Vec<(Rule, String)>,
    Vec<Effect>,
);

/// Whether `effect` leaves no table under its table's name: a CREATE of that name after it
/// makes a new one, with or without IF NOT EXISTS.
fn vacates(effect: &Effect) -> bool {
    matches!(
        effect,
        Effect::DropsTable { .. } | Effect::Renames { column: None, .. }
    )
}

/// Names in a finding: the first three, then how many more.
fn listed(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [a] => a.clone(),
        [a, b] => format!("{a} and {b}"),
        [a, b, c] => format!("{a}, {b} and {c}"),
        [a, b, c, rest @ ..] => format!("{a}, {b}, {c} and {} more", rest.len()),
    }
}

/// The reason of the allow comment for `rule` among `allows`.
fn allowed(allows: &[(Rule, String)], rule: Rule) -> Option<String> {
    allows
        .iter()
        .find(|(r, _)| *r == rule)
        .map(|(_, why)| why.clone())
}

/// Whether a statement among `earlier` may have dropped the index `name` of `table`: one
/// that names it (DROP INDEX, a rename, a constraint dropped), drops a column of the table
/// (its indexes go with it), drops anything CASCADE, or runs code (a DO block, a CALL).
fn may_drop_index(earlier: &[Checked<'_>], name: &str, table: &Name) -> bool {
    let name = name.to_lowercase();
    earlier.iter().any(|(.., statement, _, effects)| {
        let text = statement.text.to_lowercase();
        text.contains(&name)
            || text.contains("cascade")
            || matches!(sql::command_tag(statement.text).as_str(), "DO" | "CALL")
            || (effects.iter()).any(|e| match e {
                Effect::DropsColumn { table: t, .. } => t.name == table.name,
                Effect::DropsDependents { .. } => true,
                _ => false,
            })
    })
}

/// The rule an effect falls under, the table it concerns, what it does, and the column it
/// drops.
fn weigh(effect: &Effect) -> Option<(Rule, &Name, &'static str, Option<&str>)> {
    match effect {
        Effect::BuildsIndex {
            table,
            concurrently: false,
            what,
        } => Some((Rule::IndexWithoutConcurrently, table, what, None)),
        Effect::Rewrites { table, what } => Some((Rule::TableRewrite, table, what, None)),
        Effect::Retypes { table, .. } => {
            Some((Rule::TableRewrite, table, "ALTER COLUMN ... TYPE", None))
        }
        Effect::ValidatesConstraint { table, .. } => {
            Some((Rule::ValidatesWholeTable, table, VALIDATE_WITH_ADD, None))
        }
        Effect::MayRewrite { table, .. } => Some((
            Rule::TableRewrite,
            table,
            "ADD COLUMN of a domain with constraints, or with a default calling a volatile function",
            None,
        )),
        Effect::Validates { table, what, .. } => {
            Some((Rule::ValidatesWholeTable, table, what, None))
        }
        Effect::DropsTable { table } => Some((Rule::DropsData, table, "DROP TABLE", None)),
        Effect::DropsColumn { table, column } => {
            Some((Rule::DropsData, table, "DROP COLUMN", Some(column.as_str())))
        }
        Effect::Truncates { table } => Some((Rule::DropsData, table, "TRUNCATE", None)),
        Effect::ChangesAllRows { table, what, .. } => Some((Rule::DropsData, table, what, None)),
        Effect::Renames { table, column, to } => Some((
            Rule::RenamesInUse,
            table,
            match column {
                Some(_) => "RENAME COLUMN",
                None if to.schema.is_some() => "SET SCHEMA",
                None => "RENAME",
            },
            None,
        )),
        _ => None,
    }
}

/// The table whose size an effect's rule depends on.
fn sized_table(effect: &Effect) -> Option<&Name> {
    weigh(effect).map(|(_, table, ..)| table)
}

/// The allow comments directly above the statement at `offset`: the run of `--` comment lines
/// that ends on the line before it. Each must name a known rule and give a reason.
pub fn allows(
    sql: &str,
    offset: usize,
    file: &std::path::Path,
) -> Result<Vec<(Rule, String)>, Error> {
    const PREFIX: &str = "db-migrate:allow";
    let before = &sql[..offset];
    // Backwards from the statement, lazily: only the lines directly above it are read.
    let mut lines = before.rsplit('\n');
    // What precedes the statement on its own line.
    if !lines.next().unwrap_or_default().trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for (back, line) in lines.enumerate() {
        let Some(comment) = line.trim().strip_prefix("--") else {
            break;
        };
        let Some(rest) = comment.trim().strip_prefix(PREFIX) else {
            continue;
        };
        let mut words = rest.trim().splitn(2, char::is_whitespace);
        let id = words.next().unwrap_or_default();
        let reason = words.next().unwrap_or_default().trim();
        let problem = match (Rule::from_id(id), reason.is_empty()) {
            (Some(rule), false) => {
                found.push((rule, reason.to_string()));
                continue;
            }
            (None, _) => format!(
                "unknown rule {id:?} in the allow comment; known: {}",
                Rule::ALL.map(Rule::id).join(", ")
            ),
            (Some(_), true) => format!(
                "the allow comment for {id} gives no reason; write -- {PREFIX} {id} <why it is safe>"
            ),
        };
        let line_number = before.matches('\n').count() - back;
        return Err(Error::InvalidFile {
            file: file.to_path_buf(),
            problem: format!("line {line_number}: {problem}"),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_read_back() {
        for rule in Rule::ALL {
            assert_eq!(Rule::from_id(rule.id()), Some(rule));
        }
        assert_eq!(Rule::from_id("drop-data"), None);
    }

    #[test]
    fn a_fix_fits_the_statement_it_is_for() {
        let rewrite = Rule::TableRewrite;
        let view = rewrite.fix_for(classify::REFRESH_VIEW);
        assert!(view.contains("CONCURRENTLY"), "{view}");
        assert!(rewrite.fix_for(classify::VACUUM_FULL).contains("pg_repack"));
        assert_eq!(rewrite.fix_for("SET TABLESPACE"), rewrite.fix());
        let reindex = Rule::IndexWithoutConcurrently.fix_for(classify::REINDEX_TABLE);
        assert!(reindex.contains("REINDEX TABLE CONCURRENTLY"), "{reindex}");
    }

    #[test]
    fn allow_comments_are_read_from_the_lines_directly_above() {
        let sql = "SELECT 1;\n-- db-migrate:allow drops-data the table is a cache\n-- other\nDROP TABLE t;\n\nDROP TABLE u;\n";
        let path = std::path::Path::new("m.sql");
        let statements = sql::split(sql);
        let first = allows(sql, statements[1].offset, path).unwrap();
        assert_eq!(
            first,
            [(Rule::DropsData, "the table is a cache".to_string())]
        );
        // A blank line ends the run of comments.
        assert_eq!(allows(sql, statements[2].offset, path).unwrap(), []);
        assert_eq!(allows(sql, statements[0].offset, path).unwrap(), []);
    }

    #[test]
    fn an_allow_comment_needs_a_known_rule_and_a_reason() {
        let path = std::path::Path::new("m.sql");
        for (sql, needle) in [
            (
                "-- db-migrate:allow drops-data\nDROP TABLE t;",
                "gives no reason",
            ),
            (
                "-- db-migrate:allow drop-data old\nDROP TABLE t;",
                "unknown rule \"drop-data\"",
            ),
        ] {
            let offset = sql::split(sql)[0].offset;
            let error = allows(sql, offset, path).unwrap_err().to_string();
            assert!(error.contains(needle), "{error}");
            assert!(error.starts_with("m.sql: line 1: "), "{error}");
            assert_eq!(
                Error::InvalidFile {
                    file: path.into(),
                    problem: String::new()
                }
                .exit_code(),
                3
            );
        }
    }
}
