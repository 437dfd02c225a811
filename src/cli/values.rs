//! The flags' own value types: what clap parses, mapped onto the plain types of `config`,
//! `log` and `cloudsql`, which know nothing of clap.

use std::time::Duration;

use clap::ValueEnum;

use crate::cloudsql::IpType;
use crate::config::{Backup, OutputFormat};
use crate::log;

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

/// A [`Span`] for `--ddl-lock-timeout`, which must not be 0: PostgreSQL reads a
/// `lock_timeout` of 0 as none, and a migration would wait in the lock queue as long as it
/// must, every query of the bot on the table behind it.
pub fn lock_timeout(text: &str) -> Result<Span, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(
            "0 turns PostgreSQL's lock_timeout off, so a migration would queue for its lock with the bot's queries behind it; give the longest the bot may wait, e.g. 200ms".into(),
        ),
        duration => Ok(Span(duration)),
    }
}

/// A migration's version, as `--target`, `--to` and `--version` take it: the whole number a
/// file's name starts with. A diesel version typed with its dashes is told how it reads here.
pub fn version(text: &str) -> Result<i64, String> {
    if let Ok(version) = text.trim().parse() {
        return Ok(version);
    }
    let dashed = text.contains('-') && text.chars().all(|c| c.is_ascii_digit() || c == '-');
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    match dashed && digits.parse::<i64>().is_ok() {
        true => Err(format!(
            "a version is a whole number: {digits}, without the dashes"
        )),
        false => Err(
            "a version is the whole number a migration file's name starts with, e.g. 3 for 003_add_indexes.sql".into(),
        ),
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
    use crate::{config, connect};

    #[test]
    fn a_version_is_a_whole_number_and_a_dashed_one_is_told_how_it_reads() {
        assert_eq!(version("20200802025026"), Ok(20200802025026));
        assert_eq!(
            version("2020-08-02-025026"),
            Err("a version is a whole number: 20200802025026, without the dashes".into())
        );
        assert!(
            version("v3")
                .unwrap_err()
                .contains("e.g. 3 for 003_add_indexes.sql")
        );
        assert!(version("-").unwrap_err().contains("e.g. 3 for"));
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
            (config::DEFAULT_LOCK_TIMEOUT, "200ms"),
            (config::DEFAULT_DDL_LOCK_WAIT, "3m"),
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
}
