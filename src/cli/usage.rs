//! A command line clap refused: one line that hides whatever may hold a password, with the
//! log format and subcommand that were typed, for the summary event.

use clap::ValueEnum;

use super::{Cli, LogFormatArg};
use crate::config::Command;
use crate::error::Error;
use crate::{connect, log};

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
    if let Some((typed_as, variable)) = from_environment(error, args) {
        // clap names the flag though the value came from its variable, which the flag would
        // have overridden.
        let flag = typed_as.split(' ').next().unwrap_or_default();
        let source = format!("in {variable} (the environment variable of {flag})");
        text = text.replacen(&format!("for '{typed_as}'"), &source, 1);
    }
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
        _ => {
            let mut lines = text.lines();
            let first = lines.next().unwrap_or_default();
            let mut line = first.trim_start_matches("error: ").to_string();
            // clap lists an enumerated flag's values on the line below its refusal.
            if let Some(values) = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("[possible values: "))
            {
                line = format!("{line}; possible values: {}", values.trim_end_matches(']'));
            }
            // "the following required arguments were not provided:" lists them below.
            if line.ends_with(':') {
                let listed: Vec<&str> = (lines.take_while(|l| l.starts_with("  ")))
                    .map(str::trim)
                    .collect();
                line = format!("{line} {}", listed.join(", "));
            }
            line
        }
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

/// For a value refused in the environment variable of an argument not typed on the command
/// line: the argument as clap names it (`--lock-wait <LOCK_WAIT>`) and the variable. A typed
/// argument takes nothing from its variable ([`Cli::parse_args`]), and a default is never
/// refused, so the value can only have come from there.
fn from_environment(error: &clap::Error, args: &[String]) -> Option<(String, String)> {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(typed_as)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = typed_as.split(' ').next()?.strip_prefix("--")?;
    let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    let command = Cli::command();
    let every = (command.get_arguments()).chain(
        command
            .get_subcommands()
            .flat_map(|sub| sub.get_arguments()),
    );
    let arg = every
        .filter(|arg| arg.get_long() == Some(long))
        .find(|arg| arg.get_env().is_some())?;
    let variable = arg.get_env()?.to_string_lossy().into_owned();
    (!typed(arg, &args)).then(|| (typed_as.clone(), variable))
}

/// Whether `arg` is on the command line `args` (the program's name left out), before any
/// `--`: as `--name`, `--name=value`, or its short name alone or in a cluster (`-v`, `-hv`).
pub(super) fn typed(arg: &clap::Arg, args: &[std::ffi::OsString]) -> bool {
    let long = arg.get_long().map(|long| format!("--{long}"));
    let short = arg.get_short();
    let args = args.iter().map(|a| a.to_string_lossy());
    args.take_while(|a| a != "--").any(|a| {
        let as_long = long.as_deref().is_some_and(|long| {
            a.strip_prefix(long)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
        });
        let clustered = a.strip_prefix('-').filter(|rest| !rest.starts_with('-'));
        as_long || short.is_some_and(|c| clustered.is_some_and(|rest| rest.contains(c)))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_args(std::iter::once("db-migrate").chain(args.iter().copied()))
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
    fn a_missing_argument_is_named_on_the_one_line() {
        let args: &[&str] = &["repair"];
        let error = parse(args).unwrap_err();
        let line = usage(&error, &strings(args), None).error.to_string();
        assert!(
            line.contains("were not provided: --version <VERSION>; usage:"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
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
}
