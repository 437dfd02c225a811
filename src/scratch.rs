//! The scratch database `test` and `verify --schema` replay migrations into: created with a
//! unique name on the server the run connects to and dropped however the work ends, or one the
//! user gives (`--scratch-url`), which must be empty and is emptied again afterwards.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};
use tracing::{info, warn};

use crate::connect::{CLEANUP_RETRY, Dialer, Purpose};
use crate::error::Error;
use crate::history::Table;
use crate::interrupt::Interrupt;
use crate::schema::{self, Kind};

/// Every scratch database's name starts with this, so one left behind by a killed run is
/// easy to recognise (and safe to drop).
pub const PREFIX: &str = "db_migrate_scratch_";

/// Where the scratch database comes from.
pub enum Source<'a> {
    /// Created on the server `client` is connected to, through `dialer`'s way in.
    Create {
        client: &'a Client,
        dialer: &'a Dialer,
    },
    /// An empty database the user named; `target`: a connection to the run's database,
    /// whose settings the replay takes.
    Given {
        dialer: &'a Dialer,
        target: &'a Client,
    },
}

/// Runs `work` on a scratch database (its dialer and a connection to it, which the
/// interrupt then cancels statements on), then drops it (or empties a given one), whether
/// `work` succeeded, failed or was stopped by a signal. `table` is the history table as
/// configured, not yet resolved: in the scratch database it is looked up there.
pub async fn with<T>(
    source: Source<'_>,
    table: &Table,
    interrupt: &Interrupt,
    work: impl AsyncFnOnce(&Dialer, &Client) -> Result<T, Error>,
) -> Result<T, Error> {
    match source {
        Source::Create { client, dialer } => {
            drop_stale(client).await;
            let name = scratch_name();
            if let Err(error) = create(client, &name, dialer.target()).await {
                // A CREATE DATABASE whose answer the connection lost may have created it.
                if matches!(&error, Error::Database { source, .. } if source.as_db_error().is_none())
                {
                    drop_database(client, dialer, &name, Created::Maybe).await;
                }
                return Err(error);
            }
            let scratch = dialer.with_database(&name);
            let result = async {
                let connection = scratch.open(Purpose::Migration).await?;
                interrupt.arm(scratch.canceller(connection.cancel_token()));
                work(&scratch, &connection).await
            }
            .await;
            drop_database(client, dialer, &name, Created::Yes).await;
            result
        }
        Source::Given { dialer, target } => {
            // The database is the user's, so the target's settings are given to each session
            // of the run rather than stored on it (Kestra's `search_path` read as drift
            // through a given database).
            let plain = dialer.open(Purpose::Migration).await?;
            check_empty(&plain, dialer.target(), table).await?;
            let settings = session_settings(target, &plain).await;
            // Without settings to give, the connection that looked is the run's.
            let settled;
            let (dialer, connection) = match settings.is_empty() {
                true => (dialer, plain),
                false => {
                    drop(plain);
                    settled = dialer.with_settings(&settings);
                    let connection = settled.open(Purpose::Migration).await?;
                    (&settled, connection)
                }
            };
            interrupt.arm(dialer.canceller(connection.cancel_token()));
            let result = work(dialer, &connection).await;
            empty(&connection, dialer.target(), table).await;
            result
        }
    }
}

/// A new scratch database's name: the time it was made (for [`drop_stale`]), the process,
/// and a few bits of the clock to tell apart two made in one second.
fn scratch_name() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{PREFIX}{}_{}_{:04x}",
        since_epoch.as_secs(),
        std::process::id(),
        since_epoch.subsec_nanos() & 0xffff
    )
}

/// Creates the scratch database `name`.
async fn create(client: &Client, name: &str, target: &str) -> Result<(), Error> {
    // A statement_timeout set on the user or the database is meant for the bot's queries;
    // copying a big template can take longer, and failing there is no failed migration.
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .map_err(Error::database("preparing to create the scratch database"))?;
    match client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
    {
        Ok(()) => {
            info!(database = %name, "scratch database created");
            copy_settings(client, name).await;
            Ok(())
        }
        Err(error) if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            Err(Error::Config(format!(
                "cannot create a scratch database on {target}: the user may not create databases; grant it CREATEDB, or give an empty database to use with --scratch-url (DB_MIGRATE_SCRATCH_URL)"
            )))
        }
        Err(error) => Err(Error::database("creating the scratch database")(error)),
    }
}

/// Gives the scratch database the target's own settings (`ALTER DATABASE ... SET`) and the
/// run's user's settings in it (`ALTER ROLE ... IN DATABASE ... SET`, which win), so the
/// migrations replay under them: with `search_path = app, public` set on the target, a
/// `CREATE TABLE widgets` lands in `app` there and must here too. Dropping the scratch
/// database drops both. A setting the scratch database cannot take (a superuser's) is left
/// out with a warning.
async fn copy_settings(client: &Client, name: &str) {
    for TargetSetting {
        setting,
        value,
        scope,
    } in target_settings(client).await
    {
        let whose = match scope {
            Scope::Database => format!("DATABASE {name}"),
            Scope::RoleInDatabase => format!("ROLE CURRENT_USER IN DATABASE {name}"),
            // The same user logs in there, on the same server: it has them already.
            Scope::Role => continue,
        };
        let sql = format!(
            "ALTER {whose} SET {setting} = {}",
            setting_value(&setting, &value)
        );
        if let Err(error) = client.batch_execute(&sql).await {
            warn!(setting, error = %error, "the scratch database runs without a setting of the target's");
        }
    }
}

/// Where a stored setting of the target applies, in the order PostgreSQL lets each override
/// the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// `ALTER DATABASE ... SET`.
    Database,
    /// `ALTER ROLE ... SET`, for the run's user in every database.
    Role,
    /// `ALTER ROLE ... IN DATABASE ... SET`, for the run's user in the target.
    RoleInDatabase,
}

/// A setting stored for the target database or the run's user, and where it applies.
struct TargetSetting {
    setting: String,
    value: String,
    scope: Scope,
}

/// The target's stored settings for the run's user, in the order they apply (each later one
/// wins); none when they cannot be read (with a warning).
async fn target_settings(client: &Client) -> Vec<TargetSetting> {
    let settings = client
        .query(
            "SELECT split_part(c, '=', 1), substr(c, strpos(c, '=') + 1),
                    CASE WHEN s.setdatabase = 0 THEN 1 WHEN s.setrole = 0 THEN 0 ELSE 2 END AS scope
               FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) AS c
              WHERE s.setdatabase IN (0, (SELECT d.oid FROM pg_catalog.pg_database d
                                           WHERE d.datname = pg_catalog.current_database()))
                AND s.setrole IN (0, (SELECT r.oid FROM pg_catalog.pg_roles r
                                       WHERE r.rolname = pg_catalog.current_user()))
                AND (s.setdatabase <> 0 OR s.setrole <> 0)
              ORDER BY scope",
            &[],
        )
        .await;
    let settings = match settings {
        Ok(rows) => rows,
        Err(error) => {
            warn!(error = %error, "cannot read the target database's settings for the scratch database");
            return Vec::new();
        }
    };
    // Setting names are plain words, dotted for an extension's own.
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    (settings.iter())
        .map(|row| TargetSetting {
            setting: row.get(0),
            value: row.get(1),
            scope: match row.get::<_, i32>(2) {
                0 => Scope::Database,
                1 => Scope::Role,
                _ => Scope::RoleInDatabase,
            },
        })
        .filter(|s| !s.setting.is_empty() && s.setting.chars().all(word))
        .collect()
}

/// The target's settings as the sessions of a given scratch database take them at login.
/// Each is tried on `scratch` first (`set_config`, rolled back): at login one the server
/// refuses (a value it rejects, a text search configuration the empty database lacks, one
/// only a superuser may set, a parameter an older server does not know) would refuse the
/// login itself; so would a library to load (`*_preload_libraries`) that server lacks, which
/// set_config cannot tell, so those are left out. An extension's or an application's own
/// setting (a dotted name, which may hold a secret such as a JWT key) is not sent to the other
/// database. Each left out is said.
async fn session_settings(target: &Client, scratch: &Client) -> Vec<(String, String)> {
    let mut settings = Vec::new();
    for TargetSetting { setting, value, .. } in target_settings(target).await {
        if setting.contains('.') {
            warn!(
                setting,
                "the scratch database runs without a setting of the target's: an extension's or application's own (it may hold a secret), not sent to another database"
            );
            continue;
        }
        // A library the scratch server lacks refuses the login, which set_config cannot tell.
        if setting.to_ascii_lowercase().ends_with("_preload_libraries") {
            warn!(
                setting,
                "the scratch database runs without a setting of the target's: libraries loaded at login, which that server may lack"
            );
            continue;
        }
        let tried = async {
            scratch.batch_execute("BEGIN").await?;
            let set = (scratch.query(
                "SELECT pg_catalog.set_config($1, $2, true)",
                &[&setting, &value],
            ))
            .await;
            scratch.batch_execute("ROLLBACK").await?;
            set.map(|_| ())
        };
        match tried.await {
            Ok(()) => settings.push((setting, value)),
            Err(error) => {
                warn!(setting, error = %error, "the scratch database runs without a setting of the target's")
            }
        }
    }
    settings
}

/// The schemas of the target's search path (set on its database or role, which the scratch
/// database takes too) that exist there and that no migration of `replay` creates: made by
/// hand or by the application (a sqlx or Flyway service started with `search_path = app`).
/// Without them in the scratch database, the replay's unqualified names land in `public`
/// and every table reads as drift. A schema a migration creates is left to it: made before,
/// it would take what the first migrations made elsewhere when they ran (UPchieve's
/// extensions), or fail its `CREATE SCHEMA`. So is one named in a migration that may create
/// it out of sight (a `DO` block, a `CALL`, a file that does not parse), one an extension
/// owns (its own script makes it), and the user's own (`"$user"`, which names whoever runs
/// the check, not who migrated). A read failure leaves the list empty.
pub async fn schemas_made_elsewhere(
    client: &Client,
    replay: &[&crate::source::Migration],
) -> Vec<String> {
    let rows = client
        .query(
            "SELECT s::text FROM pg_catalog.unnest(pg_catalog.current_schemas(false)) AS s \
              WHERE s <> 'public' AND s <> current_user \
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                                 WHERE d.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass \
                                   AND d.objid = (SELECT n.oid FROM pg_catalog.pg_namespace n \
                                                   WHERE n.nspname = s) \
                                   AND d.deptype = 'e')",
            &[],
        )
        .await;
    let candidates: Vec<String> = match rows {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(error) => {
            warn!(%error, "cannot read the target's search path for the scratch database");
            return Vec::new();
        }
    };
    let made = |name: &str| {
        replay.iter().any(|migration| {
            let sql = &migration.up.sql;
            match crate::rules::classify::schemas_created(sql) {
                Some(created) => created.iter().any(|c| c == name),
                None => names(&crate::sql::without_comments(sql)).any(|word| word == name),
            }
        })
    };
    candidates.into_iter().filter(|name| !made(name)).collect()
}

/// The words of `sql` (letters, digits, `_` and `$`, in string literals too, as in
/// `format('%I', 'app')`), as written and in lower case, as the server folds an unquoted
/// name: what may name a schema. A schema named with other characters is not found so.
/// Given the text without its comments.
fn names(sql: &str) -> impl Iterator<Item = String> + '_ {
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .filter(|word| !word.is_empty())
        .flat_map(|word| [word.to_string(), word.to_lowercase()])
}

/// Creates `schemas` in the scratch database, before `test` or the replay.
pub async fn make_schemas(client: &Client, schemas: &[String]) -> Result<(), Error> {
    for schema in schemas {
        let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
        (client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
            .await)
            .map_err(Error::database(
                "creating a schema of the search path in the scratch database",
            ))?;
        info!(schema = %schema, "schema of the target's search path, made by no migration, created in the scratch database");
    }
    Ok(())
}

/// A stored setting's value as `ALTER DATABASE ... SET` takes it back. The catalog keeps a
/// list of names (`search_path`, `temp_tablespaces`) as SQL writes it, each element quoted
/// where needed: written back as it is, or it would become one name. Anything else is one
/// string.
fn setting_value(setting: &str, value: &str) -> String {
    let list = matches!(
        setting.to_ascii_lowercase().as_str(),
        "search_path" | "temp_tablespaces"
    );
    let plain = value
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '$' | '"' | ',' | ' ' | '.' | '-'));
    match list && plain {
        true => value.to_string(),
        false => format!("'{}'", value.replace('\'', "''")),
    }
}

/// How old a scratch database must be before a later run drops it as left behind: a run
/// killed outright (SIGKILL, a second signal) cannot drop its own.
const STALE_AFTER_SECS: u64 = 24 * 60 * 60;

/// Drops the scratch databases earlier runs left behind, going by the creation time in their
/// names: only those over a day old that nobody is connected to (no FORCE), and only where
/// this user may (an owner's). Failures are ignored: it is housekeeping.
async fn drop_stale(client: &Client) {
    let Ok(rows) = client
        .query(
            "SELECT d.datname::text FROM pg_catalog.pg_database d WHERE d.datname LIKE 'db\\_migrate\\_scratch\\_%' \
             AND pg_catalog.pg_has_role(d.datdba, 'MEMBER') \
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.datid = d.oid)",
            &[],
        )
        .await
    else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for row in rows {
        let name: String = row.get(0);
        let created = (name.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('_').next())
            .and_then(|epoch| epoch.parse::<u64>().ok());
        let Some(created) = created.filter(|c| now.saturating_sub(*c) > STALE_AFTER_SECS) else {
            continue;
        };
        // The name is ours, from the pattern above: letters, digits and underscores.
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        if client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .is_ok()
        {
            info!(database = %name, created, "scratch database left by an earlier run dropped");
        }
    }
}

/// Whether the scratch database is there to drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Created {
    Yes,
    /// Its CREATE DATABASE was sent and the answer lost.
    Maybe,
}

/// How long a drop may wait for its answer on the run's connection before it is tried on a
/// new one: a link that has stalled would hold it for as long as it stays so.
const DROP_TIMEOUT: Duration = Duration::from_secs(10);

/// Drops the scratch database, disconnecting whatever still uses it (PostgreSQL 13 and
/// later), on the run's connection, or on a new one when that one was lost (or gives no
/// answer within [`DROP_TIMEOUT`]); a failure is logged, not returned: the run's own outcome
/// is what matters.
async fn drop_database(client: &Client, dialer: &Dialer, name: &str, created: Created) {
    let failed = match tokio::time::timeout(DROP_TIMEOUT, drop_on(client, name)).await {
        Ok(Ok(())) => None,
        // The server's refusal: a new connection would be refused the same.
        Ok(Err(error)) if error.as_db_error().is_some() => {
            return cannot_drop(name, &crate::error::describe_db(&error));
        }
        Ok(Err(error)) => Some(crate::error::describe_db(&error)),
        Err(_) => Some(format!("no answer within {}s", DROP_TIMEOUT.as_secs())),
    };
    if let Some(lost) = failed {
        info!(database = %name, error = %lost, "the connection that made the scratch database is lost; dropping it over a new one");
        let dropped = async {
            let fresh = dialer
                .open(Purpose::Cleanup)
                .await
                .map_err(|e| e.to_string())?;
            drop_on(&fresh, name)
                .await
                .map_err(|e| crate::error::describe_db(&e))
        };
        match tokio::time::timeout(DROP_TIMEOUT + CLEANUP_RETRY, dropped).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return cannot_drop(name, &error),
            Err(_) => return cannot_drop(name, "no answer"),
        }
    }
    match created {
        Created::Yes => info!(database = %name, "scratch database dropped"),
        Created::Maybe => info!(database = %name, "scratch database dropped, if it was made"),
    }
}

/// `DROP DATABASE IF EXISTS name`, with FORCE where the server has it.
async fn drop_on(client: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    let messages = client.simple_query("SHOW server_version_num").await?;
    let version = (messages.iter())
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse::<i32>().ok()),
            _ => None,
        })
        .unwrap_or_default();
    let force = match version >= 130_000 {
        true => " WITH (FORCE)",
        false => "",
    };
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}{force}"))
        .await
}

fn cannot_drop(name: &str, error: &str) {
    warn!(database = %name, error = %error, "could not drop the scratch database; drop it by hand");
}

/// A given scratch database must hold nothing but what every new database has: replaying
/// into one that does would test something else.
async fn check_empty(client: &Client, target: &str, table: &Table) -> Result<(), Error> {
    let table = table.resolve(client).await?;
    let snapshot = schema::read(client, &table, schema::Options::default()).await?;
    let history = client
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&table.quoted()],
        )
        .await
        .map_err(Error::database(
            "looking for a history table in the scratch database",
        ))?
        .get::<_, bool>(0);
    let first = snapshot.objects.keys().find(|key| !pristine(key));
    let what = match (first, history) {
        (Some(key), _) => key.to_string(),
        (None, true) => format!("history table {}", table.quoted()),
        (None, false) => return Ok(()),
    };
    Err(Error::Config(format!(
        "the scratch database {target} is not empty (it has {what}); --scratch-url (DB_MIGRATE_SCRATCH_URL) needs an empty database, which each run leaves empty again"
    )))
}

/// What a new database holds: the public schema and PL/pgSQL.
fn pristine(key: &schema::Key) -> bool {
    matches!(
        (key.kind, key.name.as_str()),
        (Kind::Schema, "public") | (Kind::Extension, "plpgsql")
    )
}

/// Empties a given scratch database again: every schema and extension the replay created,
/// the public schema's contents with it. A failure is logged: the next run says the database
/// is not empty.
async fn empty(client: &Client, target: &str, table: &Table) {
    let Ok(table) = table.resolve(client).await else {
        return;
    };
    let Ok(snapshot) = schema::read(client, &table, schema::Options::default()).await else {
        warn!(db = %target, "could not read the scratch database to empty it; empty it by hand");
        return;
    };
    let mut statements: Vec<String> = Vec::new();
    for (key, _) in snapshot.of(Kind::Extension) {
        if !pristine(key) {
            statements.push(format!("DROP EXTENSION IF EXISTS {} CASCADE", key.name));
        }
    }
    for (key, _) in snapshot.of(Kind::Schema) {
        statements.push(format!("DROP SCHEMA IF EXISTS {} CASCADE", key.name));
    }
    statements.push(format!("DROP TABLE IF EXISTS {}", table.quoted()));
    statements.push("CREATE SCHEMA IF NOT EXISTS public".to_string());
    if let Err(error) = client.batch_execute(&statements.join("; ")).await {
        warn!(db = %target, error = %crate::error::describe_db(&error), "could not empty the scratch database; empty it by hand");
    }
}
