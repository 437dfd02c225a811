//! How a run ended: the one table of exit codes and outcome names, and the signals that
//! stop a run.

/// How a run ended: what the summary event's `outcome` field says and what the process
/// exits with. Success has several names and one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `up` applied at least one migration.
    Applied,
    /// `up` found nothing to apply.
    UpToDate,
    /// `down` finished.
    RolledBack,
    /// `--dry-run` ran everything and rolled it back.
    DryRun,
    /// Any other command succeeded.
    Ok,
    MigrationFailed,
    ConfigError,
    InvalidMigrations,
    HistoryMismatch,
    ConnectFailed,
    LockTimeout,
    Pending,
    BackupFailed,
    /// A statement would block the bot's table or drop data, and nothing allows it.
    Hazard,
    /// `db-migrate test`: a migration failed a step.
    TestFailed,
    /// `verify --schema`: the schema is not what the applied migrations create.
    SchemaDrift,
    Interrupted(Signal),
}

impl Outcome {
    /// The process exit code; README.md's "Exit codes" documents each one.
    pub fn code(self) -> u8 {
        self.entry().0
    }

    /// The summary event's `outcome` field.
    pub fn as_str(self) -> &'static str {
        self.entry().1
    }

    /// The one table of exit codes and outcome names.
    fn entry(self) -> (u8, &'static str) {
        match self {
            Outcome::Applied => (0, "applied"),
            Outcome::UpToDate => (0, "up_to_date"),
            Outcome::RolledBack => (0, "rolled_back"),
            Outcome::DryRun => (0, "dry_run"),
            Outcome::Ok => (0, "ok"),
            Outcome::MigrationFailed => (1, "migration_failed"),
            // clap also exits 2 for usage errors.
            Outcome::ConfigError => (2, "config_error"),
            Outcome::InvalidMigrations => (3, "invalid_migrations"),
            Outcome::HistoryMismatch => (4, "history_mismatch"),
            Outcome::ConnectFailed => (5, "connect_failed"),
            Outcome::LockTimeout => (6, "lock_timeout"),
            Outcome::Pending => (7, "pending"),
            Outcome::BackupFailed => (8, "backup_failed"),
            Outcome::Hazard => (9, "hazard"),
            Outcome::TestFailed => (1, "test_failed"),
            Outcome::SchemaDrift => (4, "schema_drift"),
            // The shell's convention for a process a signal ended: 130 SIGINT, 143 SIGTERM.
            Outcome::Interrupted(signal) => (128 + signal.number(), "interrupted"),
        }
    }
}

/// A signal that stops the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    pub fn number(self) -> u8 {
        match self {
            Signal::Interrupt => 2,
            Signal::Terminate => 15,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_in_the_readme_exit_code_table() {
        let readme = include_str!("../../README.md");
        let outcomes = [
            Outcome::Applied,
            Outcome::UpToDate,
            Outcome::RolledBack,
            Outcome::DryRun,
            Outcome::Ok,
            Outcome::MigrationFailed,
            Outcome::ConfigError,
            Outcome::InvalidMigrations,
            Outcome::HistoryMismatch,
            Outcome::ConnectFailed,
            Outcome::LockTimeout,
            Outcome::Pending,
            Outcome::BackupFailed,
            Outcome::Hazard,
            Outcome::TestFailed,
            Outcome::SchemaDrift,
            Outcome::Interrupted(Signal::Interrupt),
            Outcome::Interrupted(Signal::Terminate),
        ];
        for outcome in outcomes {
            let (code, name) = (
                outcome.code().to_string(),
                format!("`{}`", outcome.as_str()),
            );
            let documented = readme.lines().any(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                cells.len() > 3
                    && cells[1].split(" / ").any(|c| c == code)
                    && cells[2].split(", ").any(|n| n == name)
            });
            assert!(documented, "{outcome:?}: {code} {name}");
        }
    }
}
