//! Log setup (Cloud Logging JSON or text, on stderr) and the command output on stdout.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::apply::LockTally;
use crate::error::{Error, Outcome};
use crate::plan::{Applied, Direction, Entry, Plan};
use crate::progress::{Done, Running, Show};
use crate::source::Migration;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Auto,
    Json,
    Text,
}

/// Whether `format` means JSON lines: `auto` does when stderr is not a terminal.
pub fn json(format: Format) -> bool {
    match format {
        Format::Json => true,
        Format::Text => false,
        Format::Auto => !std::io::stderr().is_terminal(),
    }
}

/// How the run's output reads, decided once from `--log-format`, `--verbose` and where
/// stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    /// stdout is a terminal: each migration gets a line as it completes, and the run ends
    /// with a sentence.
    pub terminal: bool,
    /// stderr is a person's terminal (`auto`, no `--verbose`): warnings and the error only,
    /// in a line each; the informational events are the log's, for `--verbose`.
    pub person: bool,
    pub verbose: bool,
}

/// Installs the global subscriber, writing to stderr; called once, from `main`.
pub fn init(format: Format, verbose: bool) -> Output {
    let json = json(format);
    let output = Output {
        terminal: std::io::stdout().is_terminal(),
        person: format == Format::Auto && !json && !verbose,
        verbose,
    };
    // A write that fails (stderr a pipe its reader closed: `2>&1 | head`) is dropped: the
    // subscriber would otherwise report it with `eprintln!`, which panics on the same closed
    // pipe, and the run aborted (exit 134) between two migrations.
    let builder =
        (tracing_subscriber::fmt().with_writer(std::io::stderr)).log_internal_errors(false);
    if json {
        builder
            .with_max_level(Level::INFO)
            .fmt_fields(JsonFields::new())
            .event_format(CloudLogging)
            .init();
    } else if output.person {
        builder
            .with_max_level(Level::WARN)
            .event_format(Person)
            .init();
    } else {
        // Every field but `person`, which says the others again as a sentence.
        let fields =
            tracing_subscriber::fmt::format::debug_fn(|writer, field, value| match field.name() {
                PERSON => Ok(()),
                "message" => write!(writer, "{value:?}"),
                name => write!(writer, " {name}={value:?}"),
            });
        builder
            .with_max_level(Level::INFO)
            .with_target(false)
            .fmt_fields(fields)
            .init();
    }
    output
}

/// The field an event may carry with its whole line for a person, which [`Person`] prints
/// in place of the message and the other fields (a hazard's dozen fields read as a sentence),
/// and JSON leaves out: the other fields hold it all.
pub const PERSON: &str = "person";

/// A warning or an error in one line for a person: `warning: message (field: value, ...)`.
struct Person;

impl<S, N> FormatEvent<S, N> for Person
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            _ => "note",
        };
        if let Some(Value::String(text)) = fields.remove(PERSON) {
            return writeln!(writer, "{level}: {text}");
        }
        let message = match fields.remove("message") {
            Some(Value::String(message)) => message,
            _ => String::new(),
        };
        let details: Vec<String> = (fields.iter())
            .map(|(key, value)| match value {
                Value::String(text) => format!("{key}: {text}"),
                other => format!("{key}: {other}"),
            })
            .collect();
        match details.is_empty() {
            true => writeln!(writer, "{level}: {message}"),
            false => writeln!(writer, "{level}: {message} ({})", details.join(", ")),
        }
    }
}

/// One JSON object per event with the fields Cloud Logging reads at top level (`severity`,
/// `message`, `time`), followed by the enclosing spans' fields and the event's own.
/// <https://cloud.google.com/logging/docs/structured-logging#special-payload-fields>
struct CloudLogging;

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut object = Map::new();
        object.insert("severity".into(), severity(event.metadata().level()).into());
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        object.insert("time".into(), time.into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let fields = extensions.get::<FormattedFields<N>>();
                if let Some(Ok(Value::Object(fields))) =
                    fields.map(|f| serde_json::from_str::<Value>(&f.fields))
                {
                    object.extend(fields);
                }
            }
        }
        event.record(&mut Fields(&mut object));
        object.remove(PERSON);
        writeln!(writer, "{}", Value::Object(object))
    }
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// Collects an event's fields as JSON values, keeping numbers and booleans typed.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        // A list of numbers (`versions = ?missing`) reads as JSON already: an array for the
        // machines, not a string to parse again.
        // Only a list of whole numbers: `%` fields come here too, and a name that reads as
        // JSON (a schema called `[1]`) stays the string it is.
        let numbers = |items: &Vec<Value>| items.iter().all(|v| v.is_i64() || v.is_u64());
        let value = match text.starts_with('[') {
            true => match serde_json::from_str::<Value>(&text) {
                Ok(Value::Array(items)) if numbers(&items) => Value::Array(items),
                _ => text.into(),
            },
            false => text.into(),
        };
        self.0.insert(field.name().into(), value);
    }
}

/// What a run did, for the summary event; filled in as the run goes, so a failed run still
/// reports what it completed before the failure.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The subcommand, e.g. `up`.
    pub command: &'static str,
    /// `user@host:port/database`.
    pub target: Option<String>,
    /// Migrations applied by this run.
    pub applied: usize,
    /// Migrations rolled back by this run, once `down` has a plan.
    pub rolled_back: Option<usize>,
    /// Migrations on disk not applied when the run ended; None when the run never learned
    /// (it could not connect, or the lock was not free), and the summary leaves it out.
    pub pending: Option<usize>,
    /// The newest applied version when the run ended (for the commands that change history).
    pub at_version: Option<i64>,
    pub dry_run: bool,
    /// What `status` found.
    pub status: Vec<Entry>,
    /// Files `new` created.
    pub created: Vec<std::path::PathBuf>,
    /// The id of the backup taken before migrating.
    pub backup: Option<String>,
    /// What waiting for table locks cost, when migrations ran.
    pub locks: Option<LockTally>,
    /// `test`: migrations tested, and how many of them failed.
    pub tested: Option<(usize, usize)>,
    /// `verify --schema`: objects that differ from what the applied migrations create.
    pub schema_changes: Option<usize>,
    /// `baseline`: migrations recorded as applied without running them (none is `applied`).
    pub recorded: Option<usize>,
    /// What [`Summary::ran`] was given, so the counts can be told again from a number of
    /// completed steps alone ([`Summary::completed`]).
    ran: Option<Ran>,
}

/// A plan's run as versions: those applied before it, the steps in order, the files.
#[derive(Debug, Clone, Default)]
struct Ran {
    up: bool,
    before: Vec<i64>,
    steps: Vec<i64>,
    files: Vec<i64>,
}

impl Summary {
    pub fn new(command: &'static str) -> Summary {
        Summary {
            command,
            ..Summary::default()
        }
    }

    /// Where the database stands when a run is refused before it has a plan (drift, a file
    /// out of order, a rollback past what is applied): the files not applied and the newest
    /// version that is.
    pub fn standing(&mut self, migrations: &[Migration], applied: &[Applied]) {
        let done: std::collections::HashSet<i64> = applied.iter().map(|a| a.version).collect();
        self.pending = Some(
            (migrations.iter())
                .filter(|m| !done.contains(&m.version))
                .count(),
        );
        self.at_version = applied.iter().map(|a| a.version).max();
    }

    /// What running `plan` did: its first `completed` steps stay applied (or rolled back),
    /// from the history `before` it over the `migrations` on disk.
    pub fn ran(
        &mut self,
        plan: &Plan<'_>,
        completed: usize,
        before: &[Applied],
        migrations: &[Migration],
        dry_run: bool,
    ) {
        self.dry_run = dry_run;
        self.ran = Some(Ran {
            up: plan.direction == Direction::Up,
            before: before.iter().map(|a| a.version).collect(),
            steps: plan.steps.iter().map(|s| s.migration.version).collect(),
            files: migrations.iter().map(|m| m.version).collect(),
        });
        self.completed(completed);
    }

    /// The counts once `completed` steps of the plan given to [`Summary::ran`] are done:
    /// also for a run abandoned before it could report them itself (see
    /// `Interrupt::completed`). Nothing without a plan.
    pub fn completed(&mut self, completed: usize) {
        let Some(ran) = &self.ran else { return };
        // The versions applied now, sorted: a `BTreeSet` of them took 0.15 ms per call over
        // 5,000 applied files, for sets this simple.
        let mut now = ran.before.clone();
        let mut steps: Vec<i64> = ran.steps.iter().take(completed).copied().collect();
        if ran.up {
            now.append(&mut steps);
        } else {
            steps.sort_unstable();
            now.retain(|version| steps.binary_search(version).is_err());
        }
        now.sort_unstable();
        now.dedup();
        (self.applied, self.rolled_back) = match ran.up {
            true => (completed, None),
            false => (0, Some(completed)),
        };
        let applied = |version: &&i64| now.binary_search(version).is_ok();
        self.pending = Some(ran.files.iter().filter(|v| !applied(v)).count());
        self.at_version = now.last().copied();
    }

    /// The steps completed by the counts, for comparing with what an abandoned run counted.
    pub fn steps_completed(&self) -> usize {
        self.rolled_back.unwrap_or(self.applied)
    }
}

/// Logs the one summary event that ends every run and returns the exit code: `result` is how
/// a run that succeeded ended, or why it failed. A failure is logged here and nowhere else,
/// as this event's message.
pub fn finish(
    summary: &Summary,
    result: &Result<Outcome, Error>,
    started: Instant,
    output: Output,
) -> u8 {
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let db = summary.target.as_deref().unwrap_or("-");
    let (command, applied, pending) = (summary.command, summary.applied, summary.pending);
    let rolled_back = summary.rolled_back;
    let at_version = summary.at_version;
    let backup_id = summary.backup.as_deref();
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let lock_wait_ms = summary.locks.map(|l| ms(l.waited));
    let longest_lock_stall_ms = summary.locks.map(|l| ms(l.longest_stall));
    let (tested, failed) = (summary.tested.map(|t| t.0), summary.tested.map(|t| t.1));
    let schema_changes = summary.schema_changes;
    let recorded = summary.recorded;
    if let (Ok(outcome), true) = (result, output.terminal)
        && let Some(sentence) = sentence(summary, *outcome, duration_ms)
    {
        // A closed terminal is the reader's choice, not a failed run.
        let _ = writeln!(std::io::stdout(), "{sentence}");
    }
    match result {
        Ok(outcome) => {
            let exit_code = outcome.code();
            tracing::info!(
                outcome = outcome.as_str(),
                command,
                applied,
                rolled_back,
                pending,
                at_version,
                duration_ms,
                exit_code,
                db,
                backup_id,
                lock_wait_ms,
                longest_lock_stall_ms,
                tested,
                failed,
                schema_changes,
                recorded,
                "db-migrate finished"
            );
            exit_code
        }
        Err(failure) if output.person => {
            // A closed terminal is the reader's choice, not a failed run.
            let _ = writeln!(std::io::stderr(), "error: {failure}");
            failure.outcome().code()
        }
        Err(failure) => {
            let outcome = failure.outcome();
            let exit_code = outcome.code();
            let (version, sqlstate) = match failure {
                Error::Apply(f) => (Some(f.version), Some(f.sqlstate.as_str())),
                Error::Around {
                    version, source, ..
                } => (Some(*version), source.code().map(|c| c.code())),
                _ => (None, None),
            };
            tracing::error!(
                outcome = outcome.as_str(),
                command,
                applied,
                rolled_back,
                pending,
                at_version,
                duration_ms,
                exit_code,
                db,
                backup_id,
                lock_wait_ms,
                longest_lock_stall_ms,
                tested,
                failed,
                schema_changes,
                recorded,
                version,
                sqlstate,
                "{failure}"
            );
            exit_code
        }
    }
}

/// What a run that changed (or would change) the history did, in words, for a person at a
/// terminal: the last line of `up` and `down`.
fn sentence(summary: &Summary, outcome: Outcome, duration_ms: u64) -> Option<String> {
    let at = match summary.at_version {
        Some(version) => format!("database at version {version}"),
        None => "nothing applied".to_string(),
    };
    let count = |n: usize| match n {
        1 => "1 migration".to_string(),
        n => format!("{n} migrations"),
    };
    Some(match (summary.command, outcome) {
        ("up" | "down", Outcome::DryRun) => format!(
            "dry run: everything ran and was rolled back, nothing changed; {} pending; {at}",
            summary.pending.unwrap_or_default()
        ),
        ("up", Outcome::UpToDate) => format!("nothing to apply; {at}"),
        ("up", _) => format!(
            "applied {} in {duration_ms} ms; {at}",
            count(summary.applied)
        ),
        ("down", _) => format!(
            "rolled back {} in {duration_ms} ms; {} pending; {at}",
            count(summary.rolled_back.unwrap_or_default()),
            summary.pending.unwrap_or_default()
        ),
        // `verify --schema` prints its own comparison.
        ("verify", _) if summary.schema_changes.is_none() => {
            let applied = summary.status.iter().filter(|e| !e.is_pending()).count();
            format!(
                "history matches the files: {} applied, none changed; {at}",
                count(applied)
            )
        }
        ("baseline", _) => format!(
            "recorded {} as applied without running them",
            count(summary.recorded.unwrap_or_default())
        ),
        _ => return None,
    })
}

/// Each migration as a line on stdout as it completes, and one still running on a line that
/// updates in place: what a person at a terminal reads instead of the log.
pub struct Terminal {
    /// Each statement under its migration's line: `--verbose`, and always for a dry run.
    verbose: bool,
    /// When the running line was last drawn, while one is on the screen.
    drawn: Mutex<Option<Instant>>,
}

impl Terminal {
    pub fn new(verbose: bool) -> Terminal {
        Terminal {
            verbose,
            drawn: Mutex::new(None),
        }
    }
}

/// How often the running line is redrawn.
const REDRAW: Duration = Duration::from_secs(1);

impl Show for Terminal {
    fn running(&self, running: &Running<'_>) {
        let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        if running.elapsed < REDRAW || drawn.is_some_and(|at| at.elapsed() < REDRAW) {
            return;
        }
        *drawn = Some(Instant::now());
        let doing = match (&running.waiting_for, running.index) {
            (Some((lock, Some(pid))), _) => format!("waiting for {lock}, held by pid {pid}"),
            (Some((lock, None)), _) => format!("waiting for {lock}"),
            (None, Some((phase, done, total))) if total > 0 => {
                format!("{phase}: {}% of blocks", done * 100 / total)
            }
            (None, Some((phase, _, _))) => phase.to_string(),
            (None, None) => String::new(),
        };
        let migration = running.migration;
        let what = format!("{:03}_{}", migration.version, migration.name);
        let line = format!(
            "{:<15} {what:<36} {:>6} s   {doing}",
            "running",
            running.elapsed.as_secs()
        );
        let mut out = std::io::stdout().lock();
        // A closed terminal is the reader's choice, not a failed run.
        let _ = write!(out, "\r\x1b[2K{}", line.trim_end()).and_then(|()| out.flush());
    }

    fn done(&self, done: &Done<'_>) {
        let drawn = self.drawn.lock().map(|mut d| d.take()).unwrap_or(None);
        // A closed terminal is the reader's choice, not a failed run.
        let _ = print_done(done, drawn.is_some(), self.verbose || done.dry_run);
    }
}

fn print_done(done: &Done<'_>, clear: bool, statements: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if clear {
        write!(out, "\r\x1b[2K")?;
    }
    let verb = match (done.recorded, done.dry_run, done.direction) {
        (false, _, _) => "ran again",
        (true, false, Direction::Up) => "applied",
        (true, false, Direction::Down) => "rolled back",
        (true, true, Direction::Up) => "would apply",
        (true, true, Direction::Down) => "would roll back",
    };
    let commands = &done.commands;
    let file = done
        .script
        .path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let ms = done.duration.as_millis();
    let line = format!("{verb:<15} {file:<36} {ms:>6} ms  {}", done.summary());
    writeln!(out, "{}", line.trim_end())?;
    if statements {
        for command in commands {
            writeln!(
                out,
                "    {:<24} line {:<5} {}",
                command.tag,
                command.statement.line,
                crate::sql::headline(command.statement.text, 72)
            )?;
        }
    }
    out.flush()
}

/// A command line clap refused, ready to report; neither `text` nor `error` holds anything
/// of what was typed that may be a password.
#[derive(Debug)]
pub struct Usage {
    /// `--log-format` or LOG_FORMAT as typed, though the command line did not parse.
    pub format: Format,
    /// The subcommand, when one was recognisable, else `-`.
    pub command: &'static str,
    /// clap's text, for a terminal.
    pub text: String,
    /// The same in one line, for the summary event.
    pub error: Error,
}

/// Ends a run whose command line clap refused like any failed run: with JSON logs, one
/// summary event (`config_error`, exit 2), so a log pipeline sees why the job stopped; on a
/// terminal, clap's text.
pub fn usage(usage: Usage, started: Instant) -> u8 {
    if !json(usage.format) {
        // Nothing to do if stderr is closed.
        let _ = write!(std::io::stderr(), "{}", usage.text);
        return usage.error.exit_code();
    }
    let output = init(Format::Json, false);
    let summary = Summary {
        command: usage.command,
        ..Summary::default()
    };
    finish(&summary, &Err(usage.error), started, output)
}

/// What writing a command's output to stdout came to. A reader that closed it (`| head`)
/// made its choice, and the run stands; any other failure (a full disk under `> file`, an
/// I/O error) lost output a script or a file was to get, and the run fails saying so.
pub fn written(result: std::io::Result<()>) -> Result<(), Error> {
    match result {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::Config(format!(
                "cannot write the output to stdout: {error}; what was written is incomplete: send it where it fits"
            )))
        }
        _ => Ok(()),
    }
}

/// Prints `status` to stdout: a table, or a JSON array for scripts, which ends with `extra`
/// (the conflicts' rows).
pub fn print_status(entries: &[Entry], extra: &[Value], json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let at = (entries.iter())
            .filter(|e| e.state != crate::plan::State::Pending)
            .map(|e| e.version)
            .max();
        let mut rows: Vec<Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "version": e.version,
                    "name": e.name,
                    "state": e.state.as_str(),
                    "applied_at": e.applied_at,
                    "execution_ms": e.execution_ms,
                    "rollback": e.rollback,
                    "out_of_order": out_of_order(e, at),
                })
            })
            .collect();
        rows.extend(extra.iter().cloned());
        writeln!(out, "{}", Value::Array(rows))?;
        return out.flush();
    }
    write!(out, "{}", status_table(entries))?;
    writeln!(out, "{}", status_line(entries))?;
    out.flush()
}

/// `status`'s table, a line per migration, its columns as wide as their widest value.
fn status_table(entries: &[Entry]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    // As wide as the longest version: timestamped ones (20240131120000) are 14 digits.
    let wide = (entries.iter().map(|e| e.version.to_string().len()))
        .max()
        .unwrap_or_default()
        .max(8);
    let _ = writeln!(
        out,
        "{:<wide$} {:<9} {:<25} {:>8}  {:<4}  NAME",
        "VERSION", "STATE", "APPLIED AT", "MS", "DOWN"
    );
    for e in entries {
        let down = match e.rollback {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        let _ = writeln!(
            out,
            "{:<wide$} {:<9} {:<25} {:>8}  {down:<4}  {}",
            e.version,
            e.state.as_str(),
            e.applied_at.as_deref().unwrap_or("-"),
            e.execution_ms.map_or("-".to_string(), |ms| ms.to_string()),
            e.name
        );
    }
    out
}

/// Whether a pending migration is older than the database's version `at` (Kestra's
/// backports), which `up` and `verify` refuse without --allow-out-of-order.
fn out_of_order(entry: &Entry, at: Option<i64>) -> bool {
    entry.state == crate::plan::State::Pending && at.is_some_and(|at| entry.version < at)
}

/// The last line of `status`: how many migrations are in each state, and the database's
/// version (the newest applied).
fn status_line(entries: &[Entry]) -> String {
    use crate::plan::State;
    let count = |state: State| entries.iter().filter(|e| e.state == state).count();
    let at = entries
        .iter()
        .filter(|e| e.state != State::Pending)
        .map(|e| e.version)
        .max();
    let late = (entries.iter()).filter(|e| out_of_order(e, at)).count();
    let pending = match late {
        0 => format!("{} pending", count(State::Pending)),
        late => format!(
            "{} pending ({late} of them out of order, older than the database's version: `up` and `verify` refuse them without --allow-out-of-order)",
            count(State::Pending)
        ),
    };
    let mut parts = vec![format!("{} applied", count(State::Applied)), pending];
    for (state, word) in [
        (State::Drift, "changed since applied"),
        (State::Missing, "missing their file"),
        (State::Conflict, "claimed by two files"),
    ] {
        if count(state) > 0 {
            parts.push(format!("{} {word}", count(state)));
        }
    }
    let at = match at {
        Some(version) => format!("database at version {version}"),
        None => "nothing applied yet".to_string(),
    };
    format!("{}; {at}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status row of `version` in `state`.
    fn entry(version: i64, state: crate::plan::State) -> Entry {
        Entry {
            version,
            name: "m".into(),
            state,
            applied_at: None,
            execution_ms: None,
            rollback: Some(true),
        }
    }

    #[test]
    fn status_columns_line_up_with_timestamped_versions() {
        let table = status_table(&[
            entry(1, crate::plan::State::Applied),
            entry(20240131120000, crate::plan::State::Pending),
        ]);
        let columns: Vec<Option<usize>> = table
            .lines()
            // Where the second column starts: after the first run of spaces.
            .map(|line| {
                let mut chars = line.char_indices().skip_while(|(_, c)| *c != ' ');
                chars.find(|(_, c)| *c != ' ').map(|(i, _)| i)
            })
            .collect();
        assert_eq!(columns.len(), 3, "{table}");
        assert!(columns.iter().all(|c| *c == columns[0]), "{table}");
    }

    #[test]
    fn status_counts_pending_migrations_older_than_the_database() {
        use crate::plan::State::{Applied, Pending};
        let line = status_line(&[entry(1, Pending), entry(2, Applied), entry(3, Pending)]);
        assert_eq!(
            line,
            "1 applied, 2 pending (1 of them out of order, older than the database's version: `up` and `verify` refuse them without --allow-out-of-order); database at version 2"
        );
        let line = status_line(&[entry(1, Applied), entry(2, Pending)]);
        assert!(!line.contains("out of order"), "{line}");
    }

    #[test]
    fn up_and_down_end_with_what_they_did_in_words() {
        let summary = |command, applied, rolled_back, pending, at_version| Summary {
            command,
            applied,
            rolled_back,
            pending: Some(pending),
            at_version,
            ..Summary::default()
        };
        let cases = [
            (
                summary("up", 2, None, 0, Some(2)),
                Outcome::Applied,
                "applied 2 migrations in 41 ms; database at version 2",
            ),
            (
                summary("up", 1, None, 1, Some(1)),
                Outcome::Applied,
                "applied 1 migration in 41 ms; database at version 1",
            ),
            (
                summary("up", 0, None, 0, Some(2)),
                Outcome::UpToDate,
                "nothing to apply; database at version 2",
            ),
            (
                summary("up", 0, None, 2, None),
                Outcome::DryRun,
                "dry run: everything ran and was rolled back, nothing changed; 2 pending; nothing applied",
            ),
            (
                summary("down", 0, Some(3), 3, None),
                Outcome::RolledBack,
                "rolled back 3 migrations in 41 ms; 3 pending; nothing applied",
            ),
        ];
        for (summary, outcome, expected) in cases {
            assert_eq!(sentence(&summary, outcome, 41).as_deref(), Some(expected));
        }
        assert_eq!(
            sentence(&summary("status", 0, None, 0, None), Outcome::Ok, 1),
            None
        );
    }
}
