//! db-migrate: applies numbered plain-SQL migrations to PostgreSQL as a one-shot job.
//!
//! The binary parses flags into a [`Config`] and calls [`run`]; everything else lives here.

pub mod apply;
pub mod attempt;
pub mod cli;
pub mod cloudsql;
pub mod config;
pub mod connect;
pub mod error;
pub mod history;
pub mod interrupt;
pub mod lock;
pub mod log;
pub mod monitor;
pub mod plan;
pub mod session;
pub mod source;
pub mod sql;
pub mod tls;

use tokio_postgres::Client;
use tracing::{info, warn};

pub use config::{Command, Config, Mode};
pub use error::Error;

use apply::Direction;
use history::Applied;
use interrupt::Interrupt;
use monitor::Monitor;
use plan::Entry;
use source::Migration;

/// What a run did, for the summary event; filled in as the run goes, so a failed run still
/// reports what it completed before the failure.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The subcommand, e.g. `up`.
    pub command: &'static str,
    /// `user@host:port/database`.
    pub target: Option<String>,
    /// Migrations applied (or rolled back, for `down`).
    pub applied: usize,
    /// Migrations still pending when the run ended.
    pub pending: usize,
    pub dry_run: bool,
    /// What `status` found.
    pub status: Vec<Entry>,
    /// Files `new` created.
    pub created: Vec<std::path::PathBuf>,
    /// The id of the backup taken before migrating.
    pub backup: Option<String>,
}

/// Runs one command to completion.
pub async fn run(config: &Config, summary: &mut Summary) -> Result<(), Error> {
    if let Command::New { description } = &config.command {
        let (up, down) = source::create(&config.dir, description)?;
        info!(file = %up.display(), rollback = %down.display(), "migration created");
        println!("{}\n{}", up.display(), down.display());
        summary.created = vec![up, down];
        return Ok(());
    }
    // Files are checked before any connection: a bad directory never touches the database.
    let migrations = source::load(&config.dir)?;
    let Some(database) = &config.database else {
        return Err(Error::Config("no database given; set DATABASE_URL".into()));
    };
    let database = &database.clone().with_cloudsql(config.cloudsql.clone());
    summary.target = Some(database.target());
    let interrupt = Interrupt::default();
    interrupt::guard(
        &interrupt,
        connected(config, database, &migrations, &interrupt, summary),
    )
    .await
}

/// What the commands that change the database share.
struct Run<'a> {
    config: &'a Config,
    database: &'a connect::Settings,
    client: &'a Client,
    /// The history table, schema-qualified once for the whole run.
    table: &'a history::Table,
    migrations: &'a [Migration],
    interrupt: &'a Interrupt,
    session: session::Session,
}

async fn connected(
    config: &Config,
    database: &connect::Settings,
    migrations: &[Migration],
    interrupt: &Interrupt,
    summary: &mut Summary,
) -> Result<(), Error> {
    let client = connect::open(database).await?;
    interrupt.arm(connect::canceller(database, client.cancel_token()));
    let table = config.history_table.resolve(&client).await?;
    if let Command::Status { .. } | Command::Verify = &config.command {
        return inspect(config, &client, &table, migrations, summary).await;
    }
    let limits = session::Limits {
        lock_timeout: config.session.lock_timeout,
        statement_timeout: config.session.statement_timeout,
    };
    let session = session::Session::prepare(&client, limits, lock::key(&table)).await?;
    let backend_pid = session.backend_pid;
    let run = Run {
        config,
        database,
        client: &client,
        table: &table,
        migrations,
        interrupt,
        session,
    };
    lock::with(
        &client,
        &table,
        config.lock_wait,
        backend_pid,
        interrupt,
        async || change(&run, summary).await,
    )
    .await
}

/// `status` and `verify`: read only, no lock, never create the history table.
async fn inspect(
    config: &Config,
    client: &Client,
    table: &history::Table,
    migrations: &[Migration],
    summary: &mut Summary,
) -> Result<(), Error> {
    let columns = match &config.command {
        Command::Status { .. } => history::Columns::WithTimes,
        _ => history::Columns::Checks,
    };
    let applied = history::applied(client, table, columns)
        .await?
        .unwrap_or_default();
    summary.status = plan::status(migrations, &applied);
    summary.pending = summary
        .status
        .iter()
        .filter(|e| e.state == plan::State::Pending)
        .count();
    match &config.command {
        Command::Verify => plan::verify(migrations, &applied, config.allow_out_of_order),
        Command::Status { format } => {
            // A closed stdout (`| head`) is the reader's choice, not a failed run.
            let _ = log::print_status(&summary.status, *format == config::OutputFormat::Json);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The commands that change the database, run under the migration lock.
async fn change(run: &Run<'_>, summary: &mut Summary) -> Result<(), Error> {
    let (config, client, migrations, table) = (run.config, run.client, run.migrations, run.table);
    let recorded = history::applied(client, table, history::Columns::Checks).await?;
    if recorded.is_none()
        && matches!(config.command, Command::Up { .. })
        && history::has_user_tables(client).await?
    {
        warn!(
            history_table = table.name(),
            "database has tables but no history; if the old scripts migrated it, run `db-migrate baseline --version N` first (applying anyway: files are idempotent by rule)"
        );
    }
    let applied = recorded.clone().unwrap_or_default();
    match &config.command {
        Command::Up { target, mode } => {
            let plan = plan::up(migrations, &applied, *target, config.allow_out_of_order)?;
            summary.pending = plan.len();
            check(&plan, Direction::Up)?;
            backup(run, &plan, *mode, summary).await?;
            if plan.is_empty() {
                return Ok(());
            }
            let ready = recorded.is_some();
            execute(run, &plan, Direction::Up, *mode, ready, summary).await
        }
        Command::Down { rollback, mode } => {
            let plan = plan::down(migrations, &applied, *rollback)?;
            check(&plan, Direction::Down)?;
            backup(run, &plan, *mode, summary).await?;
            if plan.is_empty() {
                return Ok(());
            }
            execute(run, &plan, Direction::Down, *mode, true, summary).await
        }
        Command::Repair { version } => repair(client, table, migrations, &applied, *version).await,
        Command::Baseline { version } => {
            baseline(
                run,
                migrations,
                &applied,
                recorded.is_some(),
                *version,
                summary,
            )
            .await
        }
        Command::Status { .. } | Command::Verify | Command::New { .. } => Ok(()),
    }
}

/// The content rules for the files a plan runs, before any of them (or a backup) runs. A
/// new migration's rollback is checked with it, not first when an emergency needs it.
fn check(plan: &[&Migration], direction: Direction) -> Result<(), Error> {
    for migration in plan {
        let forward = (direction == Direction::Up).then_some(&migration.up);
        for script in forward.into_iter().chain(&migration.down) {
            source::check(script)?;
        }
    }
    Ok(())
}

/// The backup `--backup` asks for, under the migration lock and before anything changes:
/// `auto` only when the plan runs something, never for a dry run.
async fn backup(
    run: &Run<'_>,
    plan: &[&Migration],
    mode: Mode,
    summary: &mut Summary,
) -> Result<(), Error> {
    let config = run.config;
    let wanted = match config.backup {
        config::Backup::Never => false,
        config::Backup::Auto => !plan.is_empty(),
        config::Backup::Always => true,
    };
    let Some(connector) = run.database.cloudsql.as_deref().filter(|_| wanted) else {
        return Ok(());
    };
    if mode == Mode::DryRun {
        return Ok(());
    }
    let stem = |m: &Migration| {
        m.up.path.file_stem().map_or_else(
            || m.version.to_string(),
            |s| s.to_string_lossy().into_owned(),
        )
    };
    let description = match (plan.first(), plan.last()) {
        (Some(first), Some(last)) => {
            format!("db-migrate before {}..{}", stem(first), stem(last))
        }
        _ => "db-migrate before a run with nothing pending".to_string(),
    };
    info!(instance = %connector.options.instance, description = %description, "backing up before migrating");
    let id = connector
        .backup(&description, config.backup_timeout, run.interrupt)
        .await?;
    info!(instance = %connector.options.instance, backup_id = %id, "backup done");
    summary.backup = Some(id);
    Ok(())
}

/// Runs a plan in the chosen mode. When the history table does not exist yet it is created
/// first; for the dry run inside the transaction that is rolled back, so it leaves no trace.
async fn execute(
    run: &Run<'_>,
    plan: &[&Migration],
    direction: Direction,
    mode: Mode,
    table_exists: bool,
    summary: &mut Summary,
) -> Result<(), Error> {
    let (config, client, table) = (run.config, run.client, run.table);
    summary.dry_run = mode == Mode::DryRun;
    let session = &config.session;
    let mut monitor = Monitor::new(
        run.database,
        run.session.backend_pid,
        session.progress_interval,
        session.lock_timeout,
    );
    let mut applied = 0;
    let result = match mode {
        Mode::Each => {
            if !table_exists {
                history::create(client, table).await?;
            }
            let statements = history::prepare(client, table, |v| run.session.guard(v)).await?;
            let prepared = std::sync::Mutex::new(statements);
            let ctx = context(run, false, Some(&prepared));
            apply::each(&ctx, &mut monitor, plan, direction, &mut applied).await
        }
        Mode::Single | Mode::DryRun => {
            let commit = mode == Mode::Single;
            apply::transaction(client, commit, async || {
                if !table_exists {
                    history::create(client, table).await?;
                }
                let ctx = context(run, !commit, None);
                apply::inside(&ctx, &mut monitor, plan, direction, !commit).await?;
                applied = if commit { plan.len() } else { 0 };
                Ok(())
            })
            .await
        }
    };
    if result.is_ok() && mode == Mode::DryRun {
        info!(
            would_apply = plan.len(),
            "dry run succeeded; everything was rolled back"
        );
    }
    summary.applied = applied;
    summary.pending = match direction {
        Direction::Up => plan.len() - applied,
        Direction::Down => 0,
    };
    result
}

fn context<'a>(
    run: &'a Run<'a>,
    dry_run: bool,
    prepared: Option<&'a std::sync::Mutex<history::Statements>>,
) -> apply::Context<'a> {
    apply::Context {
        client: run.client,
        table: run.table,
        session: &run.session,
        prepared,
        applied_by: &run.config.applied_by,
        dry_run,
        lock_retries: run.config.session.lock_retries,
        interrupt: run.interrupt,
    }
}

async fn repair(
    client: &Client,
    table: &history::Table,
    migrations: &[Migration],
    applied: &[Applied],
    version: i64,
) -> Result<(), Error> {
    let file = migrations.iter().find(|m| m.version == version);
    let row = applied.iter().find(|a| a.version == version);
    let (Some(file), Some(row)) = (file, row) else {
        return Err(Error::Config(format!(
            "--version {version} must be both applied and present in the directory; `db-migrate status` lists them"
        )));
    };
    if file.checksum == row.checksum {
        info!(version, checksum = %row.checksum, "checksum already matches; nothing to repair");
        return Ok(());
    }
    history::set_checksum(client, table, version, &file.checksum).await?;
    warn!(version, old_checksum = %row.checksum, new_checksum = %file.checksum, "recorded checksum replaced");
    Ok(())
}

async fn baseline(
    run: &Run<'_>,
    migrations: &[Migration],
    applied: &[Applied],
    table_exists: bool,
    version: i64,
    summary: &mut Summary,
) -> Result<(), Error> {
    if !applied.is_empty() {
        return Err(Error::HistoryNotEmpty {
            count: applied.len(),
        });
    }
    if !migrations.iter().any(|m| m.version == version) {
        return Err(Error::Config(format!(
            "--version {version} names no migration in the directory; pick the newest version the old scripts applied"
        )));
    }
    let (client, table) = (run.client, run.table);
    if !table_exists {
        history::create(client, table).await?;
    }
    let adopted: Vec<&Migration> = migrations.iter().filter(|m| m.version <= version).collect();
    history::record_baseline(client, table, &adopted, &run.config.applied_by).await?;
    summary.applied = adopted.len();
    info!(
        version,
        recorded = adopted.len(),
        "baseline recorded; nothing was executed"
    );
    Ok(())
}
