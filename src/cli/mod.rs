//! Every flag and environment variable: `Cli` is what was typed, and [`Cli::config`] turns it
//! into the [`Config`] a run uses. `values` holds the flags' own value types, `usage` what a
//! refused command line prints, `environment` what is read besides the flags.

mod environment;
mod usage;
mod values;

use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::cloudsql::{self, IpType};
use crate::config::{self, Baseline, Command, Config, Mode, PlanOf, Session};
use crate::connect;
use crate::error::Error;
use crate::history::Table;
use crate::plan::{Rollback, Target};
use crate::{import, rehearsal, rules, trace};
use environment::{applied_by, dotenv_value};
pub use values::{BackupArg, IpTypeArg, LogFormatArg, OutputFormatArg, Span, parse_duration};

/// Applies numbered plain-SQL migrations to PostgreSQL, once, before a deploy.
#[derive(Debug, Parser)]
#[command(name = "db-migrate", version, about, max_term_width = 100)]
pub struct Cli {
    /// Directory holding NNN_description.sql (and .down.sql) files.
    #[arg(
        long,
        env = "MIGRATIONS_DIR",
        default_value = config::DEFAULT_DIR,
        global = true,
        help_heading = "Migrations"
    )]
    pub dir: PathBuf,

    /// postgresql://user:password@host:port/database, or key=value pairs. When unset, a .env
    /// file in the working directory may supply DATABASE_URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        help_heading = "Connection"
    )]
    pub database_url: Option<String>,

    /// History table, `table` or `schema.table` (quoted as typed).
    #[arg(
        long,
        env = "DB_MIGRATE_HISTORY_TABLE",
        default_value = config::DEFAULT_HISTORY_TABLE,
        global = true,
        help_heading = "Migrations"
    )]
    pub history_table: String,

    /// How long to wait for another run's migration lock, e.g. 90s, 5m (plain number: seconds).
    #[arg(long, env = "DB_MIGRATE_LOCK_WAIT", default_value_t = Span(config::DEFAULT_LOCK_WAIT), global = true, help_heading = "Migration run")]
    pub lock_wait: Span,

    /// Apply pending migrations older than the newest applied one instead of refusing.
    #[arg(long, env = "DB_MIGRATE_ALLOW_OUT_OF_ORDER", global = true, help_heading = "Migration run",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_out_of_order: bool,

    /// How long to keep retrying the first connection while the database is unreachable,
    /// starting up or out of connection slots [default: 60s; 5s on a terminal].
    #[arg(
        long,
        env = "DB_MIGRATE_CONNECT_TIMEOUT",
        global = true,
        help_heading = "Connection"
    )]
    pub connect_timeout: Option<Span>,

    /// lock_timeout for migration statements: the longest the bot's queries wait behind a
    /// DDL that waits for its table lock; then it is rolled back and tried again once the
    /// lock's holders are gone.
    #[arg(long, env = "DB_MIGRATE_DDL_LOCK_TIMEOUT", default_value_t = Span(config::DEFAULT_LOCK_TIMEOUT), global = true, help_heading = "Migration run",
          value_parser = values::lock_timeout)]
    pub ddl_lock_timeout: Span,

    /// How long the run waits in all for the table locks its migrations need (attempts and
    /// the waits between them) before it stops with exit 6.
    #[arg(long, env = "DB_MIGRATE_DDL_LOCK_WAIT", default_value_t = Span(config::DEFAULT_DDL_LOCK_WAIT), global = true, help_heading = "Migration run")]
    pub ddl_lock_wait: Span,

    /// A table at or above this many rows is big enough for the hazard rules: a plain
    /// CREATE INDEX, a rewrite or an in-place validation on it is refused before it runs.
    #[arg(long, env = "DB_MIGRATE_HAZARD_ROWS", default_value_t = config::DEFAULT_HAZARD_ROWS,
          value_parser = clap::value_parser!(i64).range(0..), global = true, help_heading = "Migration run")]
    pub hazard_rows: i64,

    /// Let a migration or rollback drop a table or column holding data, truncate or delete
    /// (take a backup first).
    #[arg(long, env = "DB_MIGRATE_ALLOW_DATA_LOSS", global = true, help_heading = "Migration run",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_data_loss: bool,

    /// statement_timeout for migration statements (default: none).
    #[arg(
        long,
        env = "DB_MIGRATE_STATEMENT_TIMEOUT",
        global = true,
        help_heading = "Migration run"
    )]
    pub statement_timeout: Option<Span>,

    /// While a migration runs longer than this, log a progress event this often.
    #[arg(long, env = "DB_MIGRATE_PROGRESS_INTERVAL", default_value_t = Span(config::DEFAULT_PROGRESS_INTERVAL), global = true, help_heading = "Migration run")]
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
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Auto, global = true, help_heading = "Logging")]
    pub log_format: LogFormatArg,

    /// On a terminal, list each statement a migration ran with its command tag, and show the
    /// log's informational events as well as its warnings.
    #[arg(short, long, env = "DB_MIGRATE_VERBOSE", global = true, help_heading = "Logging",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: CommandArgs,
}

#[derive(Debug, Subcommand)]
pub enum CommandArgs {
    /// Apply pending migrations, each in its own transaction.
    #[command(
        after_help = "Examples:\n  db-migrate up\n  db-migrate up --target 3 --dry-run\n  db-migrate up --write-schema db/schema.sql"
    )]
    Up(UpArgs),
    /// Roll back applied migrations, newest first.
    #[command(
        after_help = "Examples:\n  db-migrate down --steps 1\n  db-migrate down --to 2 --dry-run\n  db-migrate down --all --allow-data-loss"
    )]
    Down(DownArgs),
    /// Show every version with its state.
    #[command(after_help = "Examples:\n  db-migrate status\n  db-migrate status --format json")]
    Status {
        /// text: a table and a line that counts; json: one array for scripts.
        #[arg(long, value_enum, default_value_t = OutputFormatArg::Text)]
        format: OutputFormatArg,
    },
    /// Exit 0 only when nothing is pending (7) and nothing drifted (4); with --schema, when
    /// the schema is what the applied migrations create (4 when not).
    #[command(after_help = "Examples:\n  db-migrate verify\n  db-migrate verify --schema")]
    Verify(VerifyArgs),
    /// Create the next NNN_description.sql and its .down.sql.
    #[command(after_help = "Example:\n  db-migrate new \"add thumbnail url\"")]
    New {
        /// What the migration does, e.g. "add thumbnail url".
        description: String,
    },
    /// Record the current checksum of an applied file that was edited on purpose.
    Repair {
        /// The applied migration whose recorded checksum to replace with its file's.
        #[arg(long, value_parser = values::version)]
        version: i64,
    },
    /// Record versions up to N (or what another tool applied) as applied without running
    /// them: adopting a database.
    #[command(
        after_help = "Examples:\n  db-migrate baseline --version 2\n  db-migrate --history-table db_migrate_history baseline --from golang-migrate"
    )]
    Baseline(BaselineArgs),
    /// Trace what each pending migration (with --down: each rollback) would lock, rewrite
    /// and delete, in a transaction that is rolled back; exit 9 on a hazard.
    #[command(
        after_help = "Examples:\n  db-migrate plan\n  db-migrate plan --down --steps 1\n  db-migrate plan --format github"
    )]
    Plan(PlanArgs),
    /// Rehearse every migration on a scratch database: apply, apply again, roll back, roll
    /// back again, re-apply, checking the schema after each step.
    #[command(
        after_help = "Examples:\n  db-migrate test\n  db-migrate test --keep-going --format json\n  db-migrate test --scratch-url postgresql://postgres@localhost/scratch"
    )]
    Test(TestArgs),
    /// Print the database's schema as deterministic SQL-like text (no pg_dump needed).
    #[command(
        after_help = "Examples:\n  db-migrate schema > db/schema.sql\n  db-migrate schema --privileges"
    )]
    Schema(SchemaArgs),
    /// Delete the history row of a migration whose file is gone (a branch switch on a
    /// development database); what the migration changed stays.
    #[command(after_help = "Example:\n  db-migrate forget --version 7")]
    Forget {
        /// The version whose history row to delete.
        #[arg(long, value_parser = values::version)]
        version: i64,
        /// Delete the row even though the migration's file is there.
        #[arg(long)]
        force: bool,
    },
    /// Write another tool's migrations (golang-migrate, dbmate, sqlx, diesel, Flyway) into the
    /// migrations directory as NNN_description.sql files, and say what changed.
    #[command(
        after_help = "Examples:\n  db-migrate import --from dbmate db/migrations\n  db-migrate --dir migrations import --from golang-migrate ../old/migrations"
    )]
    Import {
        /// The tool whose layout SRC has.
        #[arg(long, value_enum)]
        from: LayoutArg,
        /// The other tool's migrations directory.
        src: PathBuf,
    },
}

/// `import --from`, as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LayoutArg {
    GolangMigrate,
    Dbmate,
    Sqlx,
    Diesel,
    Flyway,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Include each object's owner and grants.
    #[arg(long)]
    privileges: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["version", "from"])))]
pub struct BaselineArgs {
    /// Record every version up to and including N.
    #[arg(long, value_parser = values::version)]
    version: Option<i64>,
    /// Record what this tool's history table says it applied; the tool's table is left as it is.
    #[arg(long, value_enum)]
    from: Option<ToolArg>,
    /// The other tool's history table, when not its default (schema_migrations for
    /// golang-migrate and dbmate, _sqlx_migrations, __diesel_schema_migrations,
    /// flyway_schema_history).
    #[arg(long, requires = "from")]
    from_table: Option<String>,
    /// Record the files as they are even where sqlx's or Flyway's checksum says the file
    /// differs from what that tool ran (edited since); each is named in a warning.
    #[arg(long, requires = "from")]
    accept_edited: bool,
    /// Leave out the versions the other tool recorded that have no file here (deleted on
    /// purpose); each is named in a warning.
    #[arg(long, requires = "from")]
    ignore_missing: bool,
}

/// `baseline --from`, as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolArg {
    GolangMigrate,
    Dbmate,
    Sqlx,
    Diesel,
    Flyway,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Also replay the applied migrations into a scratch database and compare its schema
    /// with this one's: exit 4 on a difference made by hand. Pending migrations are then not
    /// an error.
    #[arg(long)]
    schema: bool,
    /// With --schema: compare owners and grants too.
    #[arg(long, requires = "schema")]
    privileges: bool,
    #[command(flatten)]
    scratch: ScratchArgs,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test every migration, not only up to the first failure.
    #[arg(long)]
    keep_going: bool,
    /// text: a line per migration; json: one object for CI.
    #[arg(long, value_enum, default_value_t = OutputFormatArg::Text)]
    format: OutputFormatArg,
    /// Check owners and grants too: a rollback must revoke what its migration granted.
    #[arg(long)]
    privileges: bool,
    /// Run each file once per direction (apply, roll back, re-apply), leaving out the second
    /// runs: for migrations written for a tool that never runs a file twice (sqlx, diesel,
    /// Flyway, golang-migrate, dbmate), which need not be idempotent.
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    scratch: ScratchArgs,
}

#[derive(Debug, Args)]
pub struct ScratchArgs {
    /// An empty database to replay the migrations into, instead of creating (and dropping) a
    /// scratch database on the server DATABASE_URL names; it is emptied again afterwards.
    #[arg(long, env = "DB_MIGRATE_SCRATCH_URL", hide_env_values = true)]
    scratch_url: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("down_extent").multiple(true).args(["steps", "to", "all"])))]
pub struct PlanArgs {
    /// Trace the rollbacks `down` would run (with --steps, --to or --all).
    #[arg(long, requires = "down_extent")]
    down: bool,
    /// Without --down: stop after this version.
    #[arg(long, conflicts_with = "down", value_parser = values::version)]
    target: Option<i64>,
    /// With --down: this many rollbacks.
    #[arg(long, requires = "down", conflicts_with = "to", value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
    /// With --down: every migration newer than this version.
    #[arg(long, requires = "down", value_parser = values::version)]
    to: Option<i64>,
    /// With --down: every applied migration.
    #[arg(long, requires = "down")]
    all: bool,
    /// text: a block per migration; json: one object per statement; github: workflow
    /// annotations on file and line.
    #[arg(long, value_enum, default_value_t = PlanFormatArg::Text)]
    format: PlanFormatArg,
}

/// `plan --format`, as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormatArg {
    Text,
    Json,
    Github,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Stop after this version.
    #[arg(long, value_parser = values::version)]
    target: Option<i64>,
    /// Run the pending migrations in a transaction that is rolled back.
    #[arg(long, conflicts_with = "single_transaction")]
    dry_run: bool,
    /// Apply all pending migrations in one transaction: all or none.
    #[arg(long)]
    single_transaction: bool,
    /// After a successful run, write the schema (`db-migrate schema`) to this file, so a
    /// change to it shows next to the migration that made it.
    #[arg(long, env = "DB_MIGRATE_WRITE_SCHEMA")]
    write_schema: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("how_far").required(true).multiple(true).args(["steps", "to", "all"])))]
pub struct DownArgs {
    /// Roll back this many migrations.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "to")]
    steps: Option<u64>,
    /// Roll back every migration newer than this version (0: all).
    #[arg(long, value_parser = values::version)]
    to: Option<i64>,
    /// Roll back every applied migration; a --steps or --to given as well takes its place
    /// (`npm run db:migrate:down -- --steps 1`).
    #[arg(long)]
    all: bool,
    /// Run the rollbacks in a transaction that is rolled back.
    #[arg(long)]
    dry_run: bool,
}

impl CommandArgs {
    /// The subcommand's name, for the summary event, known even when the rest is invalid.
    pub fn name(&self) -> &'static str {
        command(self).name()
    }

    /// `--scratch-url`, for the commands that take it; empty counts as unset.
    fn scratch_url(&self) -> Option<&str> {
        let scratch = match self {
            CommandArgs::Test(test) => &test.scratch,
            CommandArgs::Verify(verify) => &verify.scratch,
            _ => return None,
        };
        scratch
            .scratch_url
            .as_deref()
            .filter(|url| !connect::is_blank(url))
    }
}

impl Cli {
    /// Parses a command line (the program's name first). An argument given on the command
    /// line takes nothing from its environment variable, as clap documents; clap would still
    /// check the variable of a global argument, and refuse a bad `DB_MIGRATE_LOCK_WAIT` under
    /// `--lock-wait 5s` that overrides it (clap-rs/clap#5588).
    pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString>,
    {
        use clap::{CommandFactory, FromArgMatches};
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let mut command = Cli::command();
        let typed: Vec<clap::Id> = (command.get_arguments())
            .filter(|arg| arg.get_env().is_some() && usage::typed(arg, &args[1.min(args.len())..]))
            .map(|arg| arg.get_id().clone())
            .collect();
        for id in typed {
            command = command.mut_arg(id, |arg| arg.env(None));
        }
        let mut matches = command.try_get_matches_from_mut(args)?;
        Cli::from_arg_matches_mut(&mut matches).map_err(|error| error.format(&mut command))
    }

    /// Resolves what was typed into a [`Config`]: the one place that reads the environment
    /// beyond clap's own `env` attributes.
    pub fn config(self) -> Result<Config, Error> {
        let cloudsql = self.cloudsql()?;
        let connect_timeout = self.connect_timeout();
        let command = command(&self.command);
        // An empty variable (`DATABASE_URL=` in a manifest, or `""` kept by docker's
        // --env-file) counts as unset.
        // Where the connection string came from, for its errors to name what was typed.
        let variable = std::env::var("DATABASE_URL").ok();
        let (url, given) = match self.database_url.filter(|url| !connect::is_blank(url)) {
            Some(url) if variable.as_ref() != Some(&url) => (Some(url), "--database-url"),
            Some(url) => (Some(url), "DATABASE_URL"),
            None => {
                let url = dotenv_value(Path::new(".env"), "DATABASE_URL")?
                    .filter(|url| !connect::is_blank(url));
                let given = if url.is_some() {
                    "DATABASE_URL in .env"
                } else {
                    "DATABASE_URL"
                };
                (url, given)
            }
        };
        let env: connect::Environment = connect::VARIABLES
            .iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .collect();
        let scratch = match self.command.scratch_url() {
            Some(url) => {
                // The connection string's errors name DATABASE_URL, the one they are about
                // elsewhere; here they are about this one.
                let mut settings = connect::resolve(Some(url), &env).map_err(|e| match e {
                    Error::Config(text) => Error::Config(
                        text.replace("DATABASE_URL", "--scratch-url (DB_MIGRATE_SCRATCH_URL)"),
                    ),
                    e => e,
                })?;
                settings.retry_for = connect_timeout;
                Some(settings)
            }
            None => None,
        };
        let write_schema = match &self.command {
            CommandArgs::Up(up) => up
                .write_schema
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            _ => None,
        };
        let write_schema = write_schema.map(schema_file).transpose()?;
        let database = match (&command, url) {
            (Command::New { .. } | Command::Import { .. }, _) => None,
            // `test` needs no other database than the one it replays into.
            (Command::Test { .. }, None) if scratch.is_some() => scratch.clone(),
            (_, None)
                if cloudsql.is_none()
                    && !env.keys().any(|k| k == "PGHOST" || k == "PGDATABASE") =>
            {
                return Err(Error::Config(
                    "no database given; set DATABASE_URL (or --database-url, DATABASE_URL in .env, or PGHOST/PGDATABASE)".into(),
                ));
            }
            (_, url) => {
                let resolved = connect::resolve(url.as_deref(), &env).map_err(|e| match e {
                    Error::Config(text) if text.starts_with("DATABASE_URL") => {
                        Error::Config(text.replacen("DATABASE_URL", given, 1))
                    }
                    e => e,
                });
                let mut settings = resolved?;
                settings.retry_for = connect_timeout;
                if cloudsql.as_ref().is_some_and(|options| options.iam_auth) {
                    iam_user(&mut settings.pg);
                }
                Some(settings)
            }
        };
        let one_transaction = matches!(
            command,
            Command::Up { mode, .. } | Command::Down { mode, .. } if mode != Mode::Each
        );
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
                ddl_lock_wait: self.ddl_lock_wait.0,
                statement_timeout: self.statement_timeout.map(|span| span.0),
                progress_interval: self.progress_interval.0,
            },
            cloudsql,
            backup: self.backup.into(),
            backup_timeout: self.backup_timeout.0,
            hazards: rules::Limits {
                hazard_rows: self.hazard_rows,
                allow_data_loss: self.allow_data_loss,
                lock_timeout: self.ddl_lock_timeout.0,
                one_transaction,
            },
            scratch,
            write_schema,
            schema: crate::schema::Options {
                privileges: match &self.command {
                    CommandArgs::Schema(args) => args.privileges,
                    CommandArgs::Verify(args) => args.privileges,
                    CommandArgs::Test(args) => args.privileges,
                    _ => false,
                },
            },
            // npm sets this for the scripts it runs.
            npm_script: std::env::var("npm_lifecycle_event")
                .ok()
                .filter(|script| script.starts_with("db:")),
            verbose: self.verbose,
        })
    }

    /// `--connect-timeout`, or its default: a job waits for a database that is starting, a
    /// person at a terminal wants to hear soon that nothing is running.
    fn connect_timeout(&self) -> std::time::Duration {
        use std::io::IsTerminal;
        match self.connect_timeout {
            Some(span) => span.0,
            None if std::io::stderr().is_terminal() => connect::TERMINAL_CONNECT_TIMEOUT,
            None => connect::DEFAULT_CONNECT_TIMEOUT,
        }
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
            // Read by google-cloud-auth too; the IAM user is derived from the same server.
            metadata_host: std::env::var("GCE_METADATA_HOST")
                .ok()
                .filter(|h| !h.is_empty()),
        }))
    }
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
        CommandArgs::Plan(plan) => Command::Plan {
            of: match (plan.down, plan.steps, plan.to) {
                (false, ..) => PlanOf::Up(plan.target.map_or(Target::Latest, Target::Version)),
                (true, Some(steps), _) => PlanOf::Down(Rollback::Steps(
                    usize::try_from(steps).unwrap_or(usize::MAX),
                )),
                (true, None, Some(version)) => PlanOf::Down(Rollback::To(version)),
                (true, None, None) => PlanOf::Down(Rollback::All),
            },
            format: match plan.format {
                PlanFormatArg::Text => trace::Format::Text,
                PlanFormatArg::Json => trace::Format::Json,
                PlanFormatArg::Github => trace::Format::Github,
            },
        },
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
        CommandArgs::Verify(verify) => Command::Verify {
            schema: verify.schema,
        },
        CommandArgs::Test(test) => Command::Test {
            keep_going: test.keep_going,
            runs: match test.once {
                true => rehearsal::Runs::Once,
                false => rehearsal::Runs::Twice,
            },
            format: test.format.into(),
        },
        CommandArgs::Schema(_) => Command::Schema,
        CommandArgs::Import { from, src } => Command::Import {
            from: match from {
                LayoutArg::GolangMigrate => import::Layout::GolangMigrate,
                LayoutArg::Dbmate => import::Layout::Dbmate,
                LayoutArg::Sqlx => import::Layout::Sqlx,
                LayoutArg::Diesel => import::Layout::Diesel,
                LayoutArg::Flyway => import::Layout::Flyway,
            },
            src: src.clone(),
        },
        CommandArgs::Forget { version, force } => Command::Forget {
            version: *version,
            force: *force,
        },
        CommandArgs::New { description } => Command::New {
            description: description.clone(),
        },
        CommandArgs::Repair { version } => Command::Repair { version: *version },
        CommandArgs::Baseline(args) => Command::Baseline(match (args.version, args.from) {
            (Some(version), _) => Baseline::UpTo(version),
            (None, tool) => Baseline::From {
                tool: match tool {
                    Some(ToolArg::Dbmate) => import::Tool::Dbmate,
                    Some(ToolArg::Sqlx) => import::Tool::Sqlx,
                    Some(ToolArg::Diesel) => import::Tool::Diesel,
                    Some(ToolArg::Flyway) => import::Tool::Flyway,
                    // clap requires --version or --from.
                    Some(ToolArg::GolangMigrate) | None => import::Tool::GolangMigrate,
                },
                table: args.from_table.clone(),
                accept_edited: args.accept_edited,
                ignore_missing: args.ignore_missing,
            },
        }),
    }
}

fn mode(dry_run: bool, single_transaction: bool) -> Mode {
    match (dry_run, single_transaction) {
        (true, _) => Mode::DryRun,
        (false, true) => Mode::Single,
        (false, false) => Mode::Each,
    }
}

/// `--write-schema`'s path as the file is written: the schema goes to a file beside it and
/// is renamed over it, which would replace a symbolic link itself (so the link's target is
/// written, as `>` would) and a device, pipe or directory (refused, before anything runs).
fn schema_file(path: PathBuf) -> Result<PathBuf, Error> {
    use std::os::unix::fs::FileTypeExt;
    let mut target = path.clone();
    // A link to a link: followed as the kernel does, to a limit.
    for _ in 0..40 {
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let to = std::fs::read_link(&target).map_err(|e| cannot(&path, &e))?;
                target = match target.parent() {
                    Some(parent) => parent.join(to),
                    None => to,
                };
            }
            Ok(meta) => {
                let kind = meta.file_type();
                let what = if kind.is_file() {
                    return Ok(target);
                } else if kind.is_dir() {
                    "a directory"
                } else if kind.is_char_device() || kind.is_block_device() {
                    "a device"
                } else if kind.is_fifo() {
                    "a pipe"
                } else {
                    "not a regular file"
                };
                return Err(Error::Config(format!(
                    "--write-schema (DB_MIGRATE_WRITE_SCHEMA) {} is {what}; it is replaced by a file holding the schema, so give the path of a file (it need not exist yet)",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(target),
            Err(e) => return Err(cannot(&path, &e)),
        }
    }
    Err(Error::Config(format!(
        "--write-schema (DB_MIGRATE_WRITE_SCHEMA) {}: too many symbolic links; give the path of a file",
        path.display()
    )))
}

fn cannot(path: &std::path::Path, error: &std::io::Error) -> Error {
    Error::Config(format!(
        "--write-schema (DB_MIGRATE_WRITE_SCHEMA) {}: {error}; give the path of a file it can write",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_args(std::iter::once("db-migrate").chain(args.iter().copied()))
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
    fn down_needs_one_extent_and_all_gives_way_to_a_narrower_one() {
        let cases: [(&[&str], Option<Rollback>); 9] = [
            (&["down", "--steps", "2"], Some(Rollback::Steps(2))),
            (&["down", "--to", "1"], Some(Rollback::To(1))),
            (&["down", "--all"], Some(Rollback::All)),
            (&["down"], None),
            // The npm script passes --all; what is added after it narrows it, in any order.
            (&["down", "--all", "--steps", "1"], Some(Rollback::Steps(1))),
            (&["down", "--to", "2", "--all"], Some(Rollback::To(2))),
            (&["down", "--steps", "1", "--to", "2"], None),
            (&["down", "--all", "--steps", "1", "--to", "2"], None),
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

    #[test]
    fn every_subcommand_is_known_by_name() {
        let names: Vec<_> = <Cli as clap::CommandFactory>::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert_eq!(names, Command::NAMES);
    }

    #[test]
    fn every_flag_has_a_description_and_a_typo_gets_a_suggestion() {
        let command = <Cli as clap::CommandFactory>::command();
        for sub in std::iter::once(&command).chain(command.get_subcommands()) {
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "{} {:?} has no description",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
        let error = parse(&["stauts"]).unwrap_err().to_string();
        assert!(
            error.contains("similar subcommand exists: 'status'"),
            "{error}"
        );
        let error = parse(&["up", "--dry-rnu"]).unwrap_err().to_string();
        assert!(
            error.contains("similar argument exists: '--dry-run'"),
            "{error}"
        );
    }

    #[test]
    fn a_subcommand_help_shows_its_own_flags_first_then_the_shared_ones_and_examples() {
        let mut command = <Cli as clap::CommandFactory>::command();
        // Global flags reach the subcommands when the command is built, as when parsing.
        command.build();
        let help = (command.find_subcommand_mut("up").unwrap())
            .render_help()
            .to_string();
        let (own, connection) = (
            help.find("--dry-run").unwrap(),
            help.find("Connection:").unwrap(),
        );
        assert!(own < connection, "{help}");
        assert!(help.find("--database-url").unwrap() > connection, "{help}");
        assert!(help.contains("Examples:\n  db-migrate up\n"), "{help}");
    }

    #[test]
    fn dry_run_and_single_transaction_conflict() {
        let error = parse(&["up", "--dry-run", "--single-transaction"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }
}
