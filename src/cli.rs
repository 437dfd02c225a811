//! Every flag and environment variable: `Cli` is what was typed, and [`Cli::config`] turns it
//! into the [`Config`] a run uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::cloudsql::{self, IpType};
use crate::config::{self, Backup, Command, Config, Mode, OutputFormat, Session};
use crate::error::Error;
use crate::history::Table;
use crate::plan::{Rollback, Target};
use crate::{connect, log};

/// Applies numbered plain-SQL migrations to PostgreSQL, once, before a deploy.
#[derive(Debug, Parser)]
#[command(name = "db-migrate", version, about, max_term_width = 100)]
pub struct Cli {
    /// Directory holding NNN_description.sql (and .down.sql) files.
    #[arg(
        long,
        env = "MIGRATIONS_DIR",
        default_value = config::DEFAULT_DIR,
        global = true
    )]
    pub dir: PathBuf,

    /// postgresql://user:password@host:port/database, or key=value pairs. When unset, a .env
    /// file in the working directory may supply DATABASE_URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,

    /// History table, `table` or `schema.table` (quoted as typed).
    #[arg(
        long,
        env = "DB_MIGRATE_HISTORY_TABLE",
        default_value = config::DEFAULT_HISTORY_TABLE,
        global = true
    )]
    pub history_table: String,

    /// How long to wait for another run's migration lock, e.g. 90s, 5m (plain number: seconds).
    #[arg(long, env = "DB_MIGRATE_LOCK_WAIT", default_value_t = Span(config::DEFAULT_LOCK_WAIT), global = true)]
    pub lock_wait: Span,

    /// Apply pending migrations older than the newest applied one instead of refusing.
    #[arg(long, env = "DB_MIGRATE_ALLOW_OUT_OF_ORDER", global = true,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_out_of_order: bool,

    /// How long to keep retrying the first connection while the database is unreachable,
    /// starting up or out of connection slots.
    #[arg(long, env = "DB_MIGRATE_CONNECT_TIMEOUT", default_value_t = Span(connect::DEFAULT_CONNECT_TIMEOUT), global = true)]
    pub connect_timeout: Span,

    /// lock_timeout for migration statements: a DDL that cannot get its table lock in time
    /// gives up instead of queueing the bot's queries behind it.
    #[arg(long, env = "DB_MIGRATE_DDL_LOCK_TIMEOUT", default_value_t = Span(config::DEFAULT_LOCK_TIMEOUT), global = true)]
    pub ddl_lock_timeout: Span,

    /// How many times a migration that hit the DDL lock timeout is retried (with backoff)
    /// before the run gives up with exit 6.
    #[arg(
        long,
        env = "DB_MIGRATE_DDL_LOCK_RETRIES",
        default_value_t = config::DEFAULT_LOCK_RETRIES,
        global = true
    )]
    pub ddl_lock_retries: u32,

    /// statement_timeout for migration statements (default: none).
    #[arg(long, env = "DB_MIGRATE_STATEMENT_TIMEOUT", global = true)]
    pub statement_timeout: Option<Span>,

    /// While a migration runs longer than this, log a progress event this often.
    #[arg(long, env = "DB_MIGRATE_PROGRESS_INTERVAL", default_value_t = Span(config::DEFAULT_PROGRESS_INTERVAL), global = true)]
    pub progress_interval: Span,

    /// Cloud SQL instance PROJECT:REGION:INSTANCE: without a host in DATABASE_URL the job
    /// connects through the built-in connector (mutual TLS, no proxy); backups need it too.
    #[arg(
        long,
        env = "CLOUD_SQL_INSTANCE",
        global = true,
        help_heading = "Cloud SQL"
    )]
    pub cloudsql_instance: Option<String>,

    /// Which address of the instance the connector dials [default: public, then private].
    #[arg(
        long,
        env = "CLOUD_SQL_IP_TYPE",
        value_enum,
        global = true,
        help_heading = "Cloud SQL"
    )]
    pub ip_type: Option<IpTypeArg>,

    /// IAM database login: the password is an OAuth2 token of the job's service account,
    /// whose e-mail without `.gserviceaccount.com` is the user.
    #[arg(long, env = "CLOUD_SQL_IAM_AUTH", global = true, help_heading = "Cloud SQL",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub iam_auth: bool,

    /// Cloud SQL Admin API base URL (Private Service Connect for Google APIs).
    #[arg(
        long,
        env = "CLOUD_SQL_ADMIN_ENDPOINT",
        global = true,
        help_heading = "Cloud SQL"
    )]
    pub cloudsql_admin_endpoint: Option<String>,

    /// The port the instance's connector listener serves.
    #[arg(
        long,
        env = "CLOUD_SQL_PORT",
        default_value_t = cloudsql::DEFAULT_PORT,
        global = true,
        help_heading = "Cloud SQL"
    )]
    pub cloudsql_port: u16,

    /// Back the instance up through the Admin API before migrating: auto (only when
    /// something is pending), always, never.
    #[arg(long, env = "DB_MIGRATE_BACKUP", value_enum, default_value_t = BackupArg::Never, global = true, help_heading = "Cloud SQL")]
    pub backup: BackupArg,

    /// How long to wait for that backup before giving up with exit 8.
    #[arg(long, env = "DB_MIGRATE_BACKUP_TIMEOUT", default_value_t = Span(config::DEFAULT_BACKUP_TIMEOUT), global = true, help_heading = "Cloud SQL")]
    pub backup_timeout: Span,

    /// auto: JSON lines when stderr is not a terminal, text when it is.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Auto, global = true)]
    pub log_format: LogFormatArg,

    #[command(subcommand)]
    pub command: CommandArgs,
}

#[derive(Debug, Subcommand)]
pub enum CommandArgs {
    /// Apply pending migrations, each in its own transaction.
    Up(UpArgs),
    /// Roll back applied migrations, newest first.
    Down(DownArgs),
    /// Show every version with its state.
    Status {
        #[arg(long, value_enum, default_value_t = OutputFormatArg::Text)]
        format: OutputFormatArg,
    },
    /// Exit 0 only when nothing is pending (7) and nothing drifted (4).
    Verify,
    /// Create the next NNN_description.sql and its .down.sql.
    New {
        /// What the migration does, e.g. "add thumbnail url".
        description: String,
    },
    /// Record the current checksum of an applied file that was edited on purpose.
    Repair {
        #[arg(long)]
        version: i64,
    },
    /// Record versions up to N as applied without running them (adopting a database).
    Baseline {
        #[arg(long)]
        version: i64,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Stop after this version.
    #[arg(long)]
    target: Option<i64>,
    /// Run the pending migrations in a transaction that is rolled back.
    #[arg(long, conflicts_with = "single_transaction")]
    dry_run: bool,
    /// Apply all pending migrations in one transaction: all or none.
    #[arg(long)]
    single_transaction: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("how_far").required(true).args(["steps", "to", "all"])))]
pub struct DownArgs {
    /// Roll back this many migrations.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
    /// Roll back every migration newer than this version (0: all).
    #[arg(long)]
    to: Option<i64>,
    /// Roll back every applied migration.
    #[arg(long)]
    all: bool,
    /// Run the rollbacks in a transaction that is rolled back.
    #[arg(long)]
    dry_run: bool,
}

/// `--backup`, as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackupArg {
    /// Only when at least one migration will run.
    Auto,
    /// Even when nothing is pending.
    Always,
    /// Never (the default).
    Never,
}

impl From<BackupArg> for Backup {
    fn from(arg: BackupArg) -> Backup {
        match arg {
            BackupArg::Auto => Backup::Auto,
            BackupArg::Always => Backup::Always,
            BackupArg::Never => Backup::Never,
        }
    }
}

/// `status --format`, as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormatArg {
    Text,
    Json,
}

impl From<OutputFormatArg> for OutputFormat {
    fn from(arg: OutputFormatArg) -> OutputFormat {
        match arg {
            OutputFormatArg::Text => OutputFormat::Text,
            OutputFormatArg::Json => OutputFormat::Json,
        }
    }
}

/// `--log-format`, as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Auto,
    Json,
    Text,
}

impl From<LogFormatArg> for log::Format {
    fn from(arg: LogFormatArg) -> log::Format {
        match arg {
            LogFormatArg::Auto => log::Format::Auto,
            LogFormatArg::Json => log::Format::Json,
            LogFormatArg::Text => log::Format::Text,
        }
    }
}

/// `--ip-type`, as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpTypeArg {
    Public,
    Private,
    Psc,
}

impl From<IpTypeArg> for IpType {
    fn from(arg: IpTypeArg) -> IpType {
        match arg {
            IpTypeArg::Public => IpType::Public,
            IpTypeArg::Private => IpType::Private,
            IpTypeArg::Psc => IpType::Psc,
        }
    }
}

impl CommandArgs {
    /// The subcommand's name, for the summary event, known even when the rest is invalid.
    pub fn name(&self) -> &'static str {
        command(self).name()
    }
}

impl Cli {
    /// Resolves what was typed into a [`Config`]: the one place that reads the environment
    /// beyond clap's own `env` attributes.
    pub fn config(self) -> Result<Config, Error> {
        let cloudsql = self.cloudsql()?;
        let command = command(&self.command);
        // An empty variable (`DATABASE_URL=` in a manifest) counts as unset.
        let url = match self.database_url.filter(|url| !url.trim().is_empty()) {
            Some(url) => Some(url),
            None => dotenv_value(Path::new(".env"), "DATABASE_URL")?,
        };
        let env: connect::Environment = connect::VARIABLES
            .iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .collect();
        let database = match (&command, url) {
            (Command::New { .. }, _) => None,
            (_, None)
                if cloudsql.is_none()
                    && !env.keys().any(|k| k == "PGHOST" || k == "PGDATABASE") =>
            {
                return Err(Error::Config(
                    "no database given; set DATABASE_URL (or --database-url, DATABASE_URL in .env, or PGHOST/PGDATABASE)".into(),
                ));
            }
            (_, url) => {
                let mut settings = connect::resolve(url.as_deref(), &env)?;
                settings.retry_for = self.connect_timeout.0;
                if cloudsql.as_ref().is_some_and(|options| options.iam_auth) {
                    iam_user(&mut settings.pg);
                }
                Some(settings)
            }
        };
        Ok(Config {
            command,
            dir: self.dir,
            database,
            history_table: Table::parse(&self.history_table)?,
            lock_wait: self.lock_wait.0,
            allow_out_of_order: self.allow_out_of_order,
            applied_by: applied_by(),
            session: Session {
                lock_timeout: self.ddl_lock_timeout.0,
                lock_retries: self.ddl_lock_retries,
                statement_timeout: self.statement_timeout.map(|span| span.0),
                progress_interval: self.progress_interval.0,
            },
            cloudsql,
            backup: self.backup.into(),
            backup_timeout: self.backup_timeout.0,
        })
    }

    fn cloudsql(&self) -> Result<Option<cloudsql::Options>, Error> {
        let instance = self
            .cloudsql_instance
            .as_deref()
            .filter(|i| !i.trim().is_empty());
        let Some(instance) = instance else {
            let needs = [
                (self.iam_auth, "--iam-auth (CLOUD_SQL_IAM_AUTH)"),
                (self.ip_type.is_some(), "--ip-type (CLOUD_SQL_IP_TYPE)"),
                (
                    self.backup != BackupArg::Never,
                    "--backup (DB_MIGRATE_BACKUP)",
                ),
            ];
            if let Some((_, flag)) = needs.iter().find(|(set, _)| *set) {
                return Err(Error::Config(format!(
                    "{flag} needs the Cloud SQL instance; set --cloudsql-instance (CLOUD_SQL_INSTANCE) to PROJECT:REGION:INSTANCE"
                )));
            }
            return Ok(None);
        };
        let instance = instance.trim().parse().map_err(|e: String| {
            Error::Config(format!("--cloudsql-instance (CLOUD_SQL_INSTANCE): {e}"))
        })?;
        let admin_endpoint = self
            .cloudsql_admin_endpoint
            .clone()
            .filter(|e| !e.trim().is_empty());
        Ok(Some(cloudsql::Options {
            instance,
            ip_type: self.ip_type.map(IpType::from),
            iam_auth: self.iam_auth,
            admin_endpoint,
            port: self.cloudsql_port,
            key_file: std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }))
    }
}

/// Stands for a typed argument that may hold a password, in clap's errors.
const HIDDEN: &str = "<hidden>";

impl Cli {
    /// A command line clap refused, for [`log::usage`]: clap's text with every argument that
    /// may hold a password hidden (clap repeats a stray `postgresql://user:password@...`
    /// verbatim), and the log format and subcommand read from the arguments by hand.
    pub fn usage(error: &clap::Error) -> log::Usage {
        let args: Vec<String> = std::env::args_os()
            .skip(1)
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        usage(error, &args, std::env::var("LOG_FORMAT").ok().as_deref())
    }
}

fn usage(error: &clap::Error, args: &[String], log_format: Option<&str>) -> log::Usage {
    let mut text = error.render().to_string();
    let mut hidden = false;
    for arg in args.iter().filter(|arg| may_hold_secret(arg)) {
        hidden |= text.contains(arg.as_str());
        text = text.replace(arg.as_str(), HIDDEN);
    }
    let mut text = connect::redact(&text);
    let mut line = match error.kind() {
        clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        | clap::error::ErrorKind::MissingSubcommand => {
            format!(
                "no command given; name one of {}",
                Command::NAMES.join(", ")
            )
        }
        _ => text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string(),
    };
    if let Some(usage) = text.lines().find_map(|l| l.strip_prefix("Usage: ")) {
        line.push_str(&format!("; usage: {usage}"));
    }
    if hidden {
        let note = format!(
            "an argument that may hold a password is shown as {HIDDEN}; give the database in DATABASE_URL, not on the command line"
        );
        line.push_str(&format!("; {note}"));
        text.push_str(&format!("note: {note}\n"));
    }
    log::Usage {
        format: typed_log_format(args, log_format),
        command: args
            .iter()
            .find_map(|arg| Command::NAMES.into_iter().find(|c| c == arg))
            .unwrap_or("-"),
        text,
        error: Error::Config(line),
    }
}

/// A URL with credentials, a `password=` pair, or anything with an `@`.
fn may_hold_secret(arg: &str) -> bool {
    arg.contains("://") || arg.contains('@') || arg.to_ascii_lowercase().contains("password")
}

/// `--log-format X` or `--log-format=X` as typed (the last one), else LOG_FORMAT, else auto;
/// a value that is not a format counts as not given.
fn typed_log_format(args: &[String], variable: Option<&str>) -> log::Format {
    let mut typed = None;
    let mut args = args.iter().take_while(|arg| *arg != "--");
    while let Some(arg) = args.next() {
        match arg.strip_prefix("--log-format") {
            Some("") => typed = args.next().map(String::as_str),
            Some(value) if value.starts_with('=') => typed = Some(&value[1..]),
            _ => {}
        }
    }
    let parse = |value: &str| {
        LogFormatArg::from_str(value, false)
            .ok()
            .map(log::Format::from)
    };
    typed
        .and_then(parse)
        .or_else(|| variable.and_then(parse))
        .unwrap_or(log::Format::Auto)
}

/// An IAM login's user is the service account's e-mail without `.gserviceaccount.com`; the
/// full e-mail, the natural thing to paste, is shortened rather than refused.
fn iam_user(pg: &mut tokio_postgres::Config) {
    if let Some(short) = pg
        .get_user()
        .and_then(|user| user.strip_suffix(".gserviceaccount.com"))
    {
        let short = short.to_string();
        pg.user(short);
    }
}

fn command(args: &CommandArgs) -> Command {
    match args {
        CommandArgs::Up(up) => Command::Up {
            target: up.target.map_or(Target::Latest, Target::Version),
            mode: mode(up.dry_run, up.single_transaction),
        },
        CommandArgs::Down(down) => Command::Down {
            rollback: match (down.steps, down.to) {
                (Some(steps), _) => Rollback::Steps(usize::try_from(steps).unwrap_or(usize::MAX)),
                (None, Some(version)) => Rollback::To(version),
                (None, None) => Rollback::All,
            },
            mode: mode(down.dry_run, false),
        },
        CommandArgs::Status { format } => Command::Status {
            format: (*format).into(),
        },
        CommandArgs::Verify => Command::Verify,
        CommandArgs::New { description } => Command::New {
            description: description.clone(),
        },
        CommandArgs::Repair { version } => Command::Repair { version: *version },
        CommandArgs::Baseline { version } => Command::Baseline { version: *version },
    }
}

fn mode(dry_run: bool, single_transaction: bool) -> Mode {
    match (dry_run, single_transaction) {
        (true, _) => Mode::DryRun,
        (false, true) => Mode::Single,
        (false, false) => Mode::Each,
    }
}

/// Reads one key from a `.env` file without touching the process environment, so a real
/// environment variable (already taken by clap) always wins.
fn dotenv_value(path: &Path, key: &str) -> Result<Option<String>, Error> {
    let entries = match dotenvy::from_path_iter(path) {
        Ok(entries) => entries,
        Err(e) if e.not_found() => return Ok(None),
        Err(e) => return Err(dotenv_error(path, e)),
    };
    for entry in entries {
        let (name, value) = entry.map_err(|e| dotenv_error(path, e))?;
        if name == key {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

fn dotenv_error(path: &Path, error: dotenvy::Error) -> Error {
    // dotenvy's parse errors quote the offending line, which may hold a password.
    let what = match error {
        dotenvy::Error::LineParse(_, index) => format!("cannot parse it near byte {index}"),
        dotenvy::Error::Io(e) => e.to_string(),
        _ => "cannot read it".to_string(),
    };
    Error::Config(format!(
        "{}: {what}; fix the file or set DATABASE_URL in the environment",
        path.display()
    ))
}

/// Who applied a migration: the Cloud Run execution, the Kubernetes pod, or the host.
fn applied_by() -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(execution) = var("CLOUD_RUN_EXECUTION") {
        return format!("cloud-run/{execution}");
    }
    let host = var("HOSTNAME").or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
    });
    match (var("KUBERNETES_SERVICE_HOST"), host) {
        (Some(_), Some(pod)) => format!("pod/{pod}"),
        (None, Some(host)) => host,
        (_, None) => "unknown".to_string(),
    }
}

/// A length of time on the command line: typed as `90`, `90s`, `1500ms` or `5m`, and shown
/// so in `--help`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Span, String> {
        parse_duration(text).map(Span)
    }
}

impl std::fmt::Display for Span {
    /// Whole minutes above one in minutes, other whole seconds in seconds, as the defaults
    /// have always read in `--help` (60s, 20m); clap parses the text back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        match (ms % 1000, ms / 1000) {
            (0, s) if s > 60 && s % 60 == 0 => write!(f, "{}m", s / 60),
            (0, s) => write!(f, "{s}s"),
            _ => write!(f, "{ms}ms"),
        }
    }
}

/// `90`, `90s`, `1500ms`, `5m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("\"{text}\" is not a duration; write e.g. 30s, 1500ms or 5m"))?;
    match unit.trim() {
        "" | "s" => Ok(Duration::from_secs(value)),
        "ms" => Ok(Duration::from_millis(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        other => Err(format!("unknown unit \"{other}\"; use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("db-migrate").chain(args.iter().copied()))
    }

    #[test]
    fn durations_take_units() {
        let cases = [
            ("90", 90_000),
            ("90s", 90_000),
            ("1500ms", 1_500),
            ("5m", 300_000),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn defaults_show_as_they_are_typed_and_read_back_the_same() {
        let cases = [
            (config::DEFAULT_LOCK_WAIT, "60s"),
            (config::DEFAULT_LOCK_TIMEOUT, "5s"),
            (config::DEFAULT_PROGRESS_INTERVAL, "10s"),
            (config::DEFAULT_BACKUP_TIMEOUT, "20m"),
            (connect::DEFAULT_CONNECT_TIMEOUT, "60s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::ZERO, "0s"),
        ];
        for (duration, text) in cases {
            assert_eq!(Span(duration).to_string(), text);
            assert_eq!(text.parse(), Ok(Span(duration)), "{text}");
        }
    }

    #[test]
    fn up_flags_become_a_target_and_a_mode() {
        let cases: [(&[&str], Target, Mode); 4] = [
            (&["up"], Target::Latest, Mode::Each),
            (&["up", "--target", "7"], Target::Version(7), Mode::Each),
            (&["up", "--dry-run"], Target::Latest, Mode::DryRun),
            (
                &["up", "--single-transaction"],
                Target::Latest,
                Mode::Single,
            ),
        ];
        for (args, target, mode) in cases {
            let cli = parse(args).unwrap();
            assert_eq!(
                command(&cli.command),
                Command::Up { target, mode },
                "{args:?}"
            );
        }
    }

    #[test]
    fn down_needs_exactly_one_extent() {
        let cases: [(&[&str], Option<Rollback>); 6] = [
            (&["down", "--steps", "2"], Some(Rollback::Steps(2))),
            (&["down", "--to", "1"], Some(Rollback::To(1))),
            (&["down", "--all"], Some(Rollback::All)),
            (&["down"], None),
            (&["down", "--all", "--steps", "1"], None),
            (&["down", "--steps", "0"], None),
        ];
        for (args, expected) in cases {
            let parsed = parse(args).ok().map(|cli| command(&cli.command));
            let rollback = parsed.map(|c| match c {
                Command::Down { rollback, .. } => rollback,
                other => panic!("{other:?}"),
            });
            assert_eq!(rollback, expected, "{args:?}");
        }
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn usage_errors_hide_arguments_that_may_hold_a_password() {
        let cases: [&[&str]; 4] = [
            &["up", "postgresql://bot:S3cret@h/db"],
            &["up", "host=h password=S3cret"],
            &["up", "--log-format", "postgresql://bot:S3cret@h/db"],
            &["status", "--format=x", "bot:S3cret@h"],
        ];
        for args in cases {
            let error = parse(args).unwrap_err();
            let usage = usage(&error, &strings(args), None);
            let line = usage.error.to_string();
            for text in [&usage.text, &line] {
                assert!(!text.contains("S3cret"), "{args:?}: {text}");
            }
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(usage.error.exit_code(), 2);
            assert_eq!(usage.command, args[0]);
        }
        let stray = usage(
            &parse(&["up", "postgresql://bot:S3cret@h/db"]).unwrap_err(),
            &strings(&["up", "postgresql://bot:S3cret@h/db"]),
            None,
        );
        assert!(
            stray
                .error
                .to_string()
                .contains("give the database in DATABASE_URL"),
            "{}",
            stray.error
        );
    }

    #[test]
    fn usage_errors_keep_the_log_format_and_command_that_were_typed() {
        let cases: [(&[&str], Option<&str>, log::Format); 6] = [
            (
                &["up", "--log-format", "json", "--bad"],
                None,
                log::Format::Json,
            ),
            (
                &["--log-format=text", "up", "--bad"],
                Some("json"),
                log::Format::Text,
            ),
            (&["up", "--bad"], Some("json"), log::Format::Json),
            (
                &["up", "--log-format", "xml"],
                Some("text"),
                log::Format::Text,
            ),
            (&["up", "--bad"], None, log::Format::Auto),
            (
                &["up", "--", "--log-format", "json"],
                None,
                log::Format::Auto,
            ),
        ];
        for (args, variable, format) in cases {
            let error = parse(args).unwrap_err();
            let usage = usage(&error, &strings(args), variable);
            assert_eq!(usage.format, format, "{args:?} {variable:?}");
            assert_eq!(usage.command, "up", "{args:?}");
        }
        let unknown = usage(
            &parse(&["frobnicate"]).unwrap_err(),
            &strings(&["frobnicate"]),
            None,
        );
        assert_eq!(unknown.command, "-");
        assert!(
            unknown
                .error
                .to_string()
                .starts_with("unrecognized subcommand 'frobnicate'"),
            "{}",
            unknown.error
        );
    }

    #[test]
    fn every_subcommand_is_known_by_name() {
        let names: Vec<_> = <Cli as clap::CommandFactory>::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert_eq!(names, Command::NAMES);
    }

    #[test]
    fn dry_run_and_single_transaction_conflict() {
        let error = parse(&["up", "--dry-run", "--single-transaction"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn dotenv_supplies_a_missing_value_only_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "# local\nOTHER=1\nDATABASE_URL=\"postgresql://u@h/d\"\n",
        )
        .unwrap();
        assert_eq!(
            dotenv_value(&path, "DATABASE_URL").unwrap().as_deref(),
            Some("postgresql://u@h/d")
        );
        assert_eq!(
            dotenv_value(&dir.path().join("none"), "DATABASE_URL").unwrap(),
            None
        );
    }
}
