//! What a run shows a person as it goes: each migration as it completes, with what its SQL
//! did, and a migration that is still running. `apply` and the monitor report here; `log`
//! draws it on a terminal, and the JSON log keeps its own events.

use std::time::Duration;

use crate::plan::Direction;
use crate::source::{Migration, Script};
use crate::sql;

/// Where a run's progress goes.
pub trait Show: Sync {
    /// A migration still running, as the monitor last saw it.
    fn running(&self, _running: &Running<'_>) {}
    /// A migration that completed (or, in a dry run, ran and waits to be rolled back).
    fn done(&self, _done: &Done<'_>) {}
}

/// Shows nothing: for the runs whose caller prints its own report (`test`, `verify --schema`).
pub struct Quiet;

impl Show for Quiet {}

/// A migration still running.
#[derive(Debug)]
pub struct Running<'a> {
    pub migration: &'a Migration,
    pub elapsed: Duration,
    /// The lock it waits for (`AccessExclusiveLock on video_requests`), and the session
    /// holding it.
    pub waiting_for: Option<(String, Option<i32>)>,
    /// The phase of the index it builds, with blocks done and in all.
    pub index: Option<(&'a str, i64, i64)>,
}

/// A migration that completed.
#[derive(Debug)]
pub struct Done<'a> {
    pub migration: &'a Migration,
    /// The file that ran: the migration's own, or its rollback.
    pub script: &'a Script,
    pub direction: Direction,
    pub dry_run: bool,
    /// False when the file ran a second time without a history change (`test`).
    pub recorded: bool,
    pub duration: Duration,
    /// Each statement of the file with its command tag ([`commands`]); empty when the
    /// server's answers could not be matched to the file's statements.
    pub commands: Vec<Command<'a>>,
}

/// One statement of a file and what the server said it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command<'a> {
    pub statement: sql::Statement<'a>,
    /// As the server tags it, with its count where it has one: `CREATE TABLE`, `INSERT 0 120`.
    pub tag: String,
}

/// Each statement of `script` with its command tag, from the count each one reported (`rows`,
/// in order); empty when the counts do not match the statements one for one.
pub fn commands<'a>(script: &'a Script, rows: &[u64]) -> Vec<Command<'a>> {
    let statements = sql::split(&script.sql);
    if statements.len() != rows.len() {
        return Vec::new();
    }
    (statements.into_iter().zip(rows))
        .map(|(statement, &rows)| {
            let tag = tag(&sql::command_tag(statement.text), rows);
            Command { statement, tag }
        })
        .collect()
}

impl Done<'_> {
    /// What the file's SQL did in a few words: `CREATE TABLE, CREATE INDEX ×3, INSERT 0 120`.
    pub fn summary(&self) -> String {
        summarize(&self.commands)
    }
}

/// A command tag with its count, spelled as psql prints it; the commands without a count keep
/// their words only.
fn tag(command: &str, rows: u64) -> String {
    match command {
        "INSERT" => format!("INSERT 0 {rows}"),
        "UPDATE" | "DELETE" | "SELECT" | "MERGE" | "COPY" | "FETCH" | "MOVE" => {
            format!("{command} {rows}")
        }
        other => other.to_string(),
    }
}

/// The tags in the order they first appear, repeats counted: `CREATE INDEX ×3`; repeated
/// commands with a count add their rows up: `INSERT ×2, 120 rows`.
pub fn summarize(commands: &[Command<'_>]) -> String {
    // (command words, times, rows, the one tag when it ran once)
    let mut seen: Vec<(String, usize, u64, String)> = Vec::new();
    for command in commands {
        let (words, rows) = split_count(&command.tag);
        match seen.iter_mut().find(|s| s.0 == words) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += rows.unwrap_or(0);
            }
            None => seen.push((words.to_string(), 1, rows.unwrap_or(0), command.tag.clone())),
        }
    }
    let counted = |words: &str| split_count(&tag(words, 0)).1.is_some();
    seen.iter()
        .map(
            |(words, times, rows, once)| match (*times, counted(words)) {
                (1, _) => once.clone(),
                (n, true) => format!("{words} ×{n}, {rows} rows"),
                (n, false) => format!("{words} ×{n}"),
            },
        )
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT 0 120` -> (`INSERT`, Some(120)); `CREATE TABLE` -> (`CREATE TABLE`, None).
fn split_count(tag: &str) -> (&str, Option<u64>) {
    let Some((head, Ok(rows))) = tag.rsplit_once(' ').map(|(h, n)| (h, n.parse())) else {
        return (tag, None);
    };
    (head.strip_suffix(" 0").unwrap_or(head), Some(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(tags: &[&str]) -> Vec<Command<'static>> {
        tags.iter()
            .map(|tag| Command {
                statement: sql::split("SELECT 1").remove(0),
                tag: tag.to_string(),
            })
            .collect()
    }

    #[test]
    fn summary_counts_repeats_and_adds_up_rows() {
        let summary = summarize(&tagged(&[
            "CREATE TABLE",
            "CREATE INDEX",
            "INSERT 0 100",
            "CREATE INDEX",
            "INSERT 0 20",
            "CREATE INDEX",
            "UPDATE 3",
        ]));
        assert_eq!(
            summary,
            "CREATE TABLE, CREATE INDEX ×3, INSERT ×2, 120 rows, UPDATE 3"
        );
        assert_eq!(summarize(&tagged(&["INSERT 0 1"])), "INSERT 0 1");
        assert_eq!(summarize(&[]), "");
    }

    #[test]
    fn commands_match_each_statement_to_its_count_or_none_at_all() {
        let migration = Migration {
            version: 1,
            name: "seed".into(),
            up: Script::new(
                "001_seed.sql".into(),
                "CREATE TABLE t (a int);\n-- rows\nINSERT INTO t VALUES (1), (2);\n".into(),
            ),
            down: None,
            checksum: crate::source::checksum(""),
        };
        let matched = commands(&migration.up, &[0, 2]);
        let tags: Vec<&str> = matched.iter().map(|c| c.tag.as_str()).collect();
        assert_eq!(tags, ["CREATE TABLE", "INSERT 0 2"]);
        assert_eq!(matched[1].statement.line, 3);
        let done = Done {
            migration: &migration,
            script: &migration.up,
            direction: Direction::Up,
            dry_run: false,
            recorded: true,
            duration: Duration::ZERO,
            commands: commands(&migration.up, &[0]),
        };
        assert_eq!(done.summary(), "");
    }
}
