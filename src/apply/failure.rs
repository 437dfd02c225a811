//! What the server answered, as the error that says what happened to the migration.

use tokio_postgres::error::SqlState;

use super::{Run, Wrap};
use crate::error::{Error, Failure, Refusal};
use crate::plan::Step;
use crate::session;
use crate::sql;

pub(super) use crate::error::is_connection_lost;

/// What a lost connection left behind, by how the migration in flight was running.
pub(super) fn connection_lost(step: Step<'_>, wrap: Wrap, error: &tokio_postgres::Error) -> Error {
    let outcome = match (wrap, step.script.no_transaction) {
        (_, true) => {
            "the statements of this -- no-transaction file that completed stay, and it is not recorded; run again (such files are idempotent)"
        }
        (Wrap::Own, false) => {
            "its COMMIT had already been sent, so it may have committed, and so may any migration sent behind it: each one's history row exists exactly when it did, and `db-migrate status` (or the next run) shows which"
        }
        (Wrap::Outer, false) => {
            "the run's one transaction ends with the connection, so nothing of this run was committed"
        }
    };
    Error::ConnectionLost {
        version: step.migration.version,
        file: step.script.path.clone(),
        cause: crate::error::describe_db(error),
        outcome,
        uncertain: wrap == Wrap::Own && !step.script.no_transaction,
    }
}

/// Turns one of our own refusals (see `session`) into the error that says what happened;
/// any other failure of what we run around the file (`doing`) names the migration and says
/// what of it was `kept`.
pub(super) fn refused(
    run: &Run<'_>,
    step: Step<'_>,
    error: tokio_postgres::Error,
    doing: &'static str,
    kept: &'static str,
) -> Error {
    let Some(refusal) = session::refusal(&error) else {
        return Error::Around {
            version: step.migration.version,
            file: step.script.path.clone(),
            doing,
            kept,
            source: error,
        };
    };
    match refusal {
        Refusal::LockLost => Error::LockLost {
            version: step.migration.version,
        },
        Refusal::OtherSession(now) => run.session.pooled(now),
        _ => Error::TransactionEnded {
            version: step.migration.version,
            file: step.script.path.clone(),
            refusal,
        },
    }
}

/// Whether `error` says the run's prepared history statements are gone (26000): a file, or
/// one run before it in the session, deallocated them. Nothing of the migration was kept.
pub(super) fn statements_gone(error: &Error) -> bool {
    match error {
        Error::Around { source, .. } | Error::Database { source, .. } => {
            source.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME)
        }
        _ => false,
    }
}

/// What stayed of a migration whose transaction failed before it committed.
pub(super) fn rolled_back(wrap: Wrap) -> &'static str {
    match wrap {
        Wrap::Own => {
            "it was rolled back and nothing of it was kept; fix what stopped it (a trigger, rule or constraint on the history table, a deferred constraint) and run again"
        }
        Wrap::Outer => {
            "the run's one transaction was rolled back and nothing of this run was kept; fix what stopped it (a trigger, rule or constraint on the history table, a deferred constraint) and run again"
        }
    }
}

/// Whether the history change failed because the history table is gone under it: the file
/// dropped (or renamed) it. Not a table a trigger on it writes to: that error comes with a
/// context.
pub(super) fn is_history_gone(run: &Run<'_>, error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::UNDEFINED_TABLE)
        && (error.as_db_error()).is_some_and(|db| {
            db.where_().is_none()
                && (run.ctx.table.name().rsplit('.').next())
                    .is_some_and(|bare| db.message().contains(bare))
        })
}

/// What stayed of a migration whose own SQL dropped or renamed the history table (a rollback
/// that drops its schema with CASCADE): its row had nowhere to go.
pub(super) fn history_gone(wrap: Wrap) -> &'static str {
    match wrap {
        Wrap::Own => {
            "the migration itself dropped or renamed the history table (a DROP SCHEMA ... CASCADE that reaches it, say), so it was rolled back and nothing of it was kept; keep the history table out of what the file drops"
        }
        Wrap::Outer => {
            "the migration itself dropped or renamed the history table (a DROP SCHEMA ... CASCADE that reaches it, say), so the run's one transaction was rolled back and nothing of this run was kept; keep the history table out of what the file drops"
        }
    }
}

/// Turns the server's error into one that names the file, line and column. `offset` is the
/// byte offset in the file of the text that was sent, and `prefix` how many characters of our
/// own went before it in the message, since the server counts from the message's start.
pub(super) fn failed(
    step: Step<'_>,
    offset: usize,
    prefix: usize,
    atomic: bool,
    error: tokio_postgres::Error,
) -> Error {
    let Some(db) = error.as_db_error() else {
        return Error::Database {
            context: "running the migration",
            source: error,
        };
    };
    let (migration, script) = (step.migration, step.script);
    let before = script.sql[..offset].chars().count();
    let at = match db.position() {
        Some(tokio_postgres::error::ErrorPosition::Original(position)) => {
            (*position as usize).checked_sub(prefix).filter(|&p| p > 0)
        }
        _ => None,
    };
    let position = match at {
        Some(p) => Some(sql::line_col(&script.sql, before + p)),
        // Sent statement by statement, the failing one is known: name where it starts.
        _ if !atomic => Some(sql::line_col(&script.sql, before + 1)),
        _ => None,
    };
    let mut hint = db.hint().map(str::to_string);
    // 25001 also stands for a SET TRANSACTION after the transaction's first query, which the
    // server's own message says how to fix. Told apart by the server's routine, whatever the
    // language of its messages (an extension's refusal has a routine of its own).
    if *db.code() == SqlState::ACTIVE_SQL_TRANSACTION
        && (db.routine() == Some("PreventInTransactionBlock")
            || db.message().contains("inside a transaction block"))
    {
        hint = Some(match script.no_transaction {
            // Then only the file's own BEGIN put it inside one.
            true => "move it out of the file's own BEGIN ... COMMIT".into(),
            false => {
                "start the file with `-- no-transaction` to run it outside a transaction".into()
            }
        });
    }
    // A file that adds an enum value and uses it (the value the message quotes is one the
    // file names): the server's hint asks for a commit between the two, which db-migrate's
    // transaction around the file rules out (River's 004 to 006 in one file).
    let label = (db.message().split('"').nth(1)).map(|label| format!("'{label}'"));
    let adds_it = label.is_some_and(|label| script.sql.contains(&label));
    if db.code().code() == "55P04"
        && adds_it
        && sql::adds_enum_value(&script.sql)
        && !script.no_transaction
    {
        hint = Some(
            "the file adds the value and uses it, and PostgreSQL lets a new value be used only once the transaction that added it has committed: move the ALTER TYPE ... ADD VALUE into a migration of its own before this one (or start the file with `-- no-transaction`, when nothing else in it needs a transaction)".into(),
        );
    }
    let text_at = at.and_then(|p| script.sql.char_indices().nth(before + p - 1));
    if *db.code() == SqlState::SYNTAX_ERROR
        && let Some(variable) = text_at.and_then(|(i, _)| psql_variable(&script.sql[i..]))
    {
        hint = Some(format!(
            "{variable} is a psql variable, which only psql fills in; db-migrate runs the file as written: write the value in"
        ));
    }
    Error::Apply(Box::new(Failure {
        version: migration.version,
        file: script.path.clone(),
        position,
        sqlstate: db.code().code().to_string(),
        message: db.message().to_string(),
        detail: db.detail().map(str::to_string),
        hint,
        atomic,
        in_own_transaction: false,
    }))
}

/// The psql variable reference `text` starts with (`:name`, `:'name'`, `:"name"`), which
/// psql replaces before the server sees the text: a syntax error there means the file was
/// written for psql.
fn psql_variable(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(':')?;
    let name = |s: &str| {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let len = match rest.chars().next()? {
        quote @ ('\'' | '"') => {
            let inner = name(&rest[1..]);
            (inner > 0 && rest[1 + inner..].starts_with(quote)).then_some(inner + 2)?
        }
        c if c.is_alphabetic() || c == '_' => name(rest),
        _ => return None,
    };
    Some(&text[..1 + len])
}

#[cfg(test)]
mod tests {
    use super::psql_variable;

    #[test]
    fn a_psql_variable_is_named_with_its_quotes() {
        assert_eq!(psql_variable(":SCHEMA.jobs (id int)"), Some(":SCHEMA"));
        assert_eq!(psql_variable(":'tenant' || 'x'"), Some(":'tenant'"));
        assert_eq!(psql_variable(":\"owner\";"), Some(":\"owner\""));
        // A cast, a slice bound, a lone colon: not a variable.
        assert_eq!(psql_variable("::int"), None);
        assert_eq!(psql_variable(":3]"), None);
        assert_eq!(psql_variable(":'unclosed"), None);
        assert_eq!(psql_variable("SELECT"), None);
    }
}
