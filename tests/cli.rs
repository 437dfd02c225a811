//! The real binary: exit codes, what goes to stdout and stderr, the log format, secrets.

mod support;

use std::path::Path;
use std::process::Command;

use support::{Output, TestDb, binary, events, history, migrations, output, seed_dir};

fn db_migrate(db: &TestDb, dir: &Path, args: &[&str]) -> Output {
    output(
        binary()
            .args(args)
            .args(["--log-format", "json"])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir),
    )
}

/// The one summary event that ends every run.
fn summary_event(out: &Output) -> serde_json::Value {
    let events = events(&out.stderr);
    let summaries: Vec<_> = events
        .iter()
        .filter(|e| e.get("outcome").is_some())
        .collect();
    assert_eq!(
        summaries.len(),
        1,
        "exactly one summary event:\n{}",
        out.stderr
    );
    assert_eq!(events.last(), Some(summaries[0]), "the summary comes last");
    summaries[0].clone()
}

#[tokio::test]
async fn json_logs_carry_cloud_logging_fields_and_one_summary() {
    let db = support::database().await;
    let out = db_migrate(&db, &seed_dir(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "", "up writes nothing to stdout");
    for event in events(&out.stderr) {
        assert!(event["severity"].is_string(), "{event}");
        assert!(event["message"].is_string(), "{event}");
        assert!(
            event["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{event}"
        );
    }
    let applied: Vec<_> = events(&out.stderr)
        .into_iter()
        .filter(|e| e["message"] == "migration applied")
        .collect();
    assert_eq!(applied.len(), 2);
    assert_eq!(applied[0]["version"], 1);
    assert_eq!(applied[0]["name"], "create_video_requests");
    assert!(applied[0]["duration_ms"].is_u64());
    let summary = summary_event(&out);
    assert_eq!(summary["outcome"], "applied");
    assert_eq!(summary["applied"], 2);
    assert_eq!(summary["pending"], 0);
    assert_eq!(summary["exit_code"], 0);
    assert!(summary["duration_ms"].is_u64());
    assert_eq!(
        summary["db"],
        format!("postgres@127.0.0.1:{}/{}", support::server().port, db.name)
    );

    let again = db_migrate(&db, &seed_dir(), &["up"]);
    assert_eq!(summary_event(&again)["outcome"], "up_to_date");
}

#[tokio::test]
async fn failed_migration_exits_1_with_file_position_and_sqlstate_in_the_summary() {
    let db = support::database().await;
    let dir = migrations(&[("001_bad.sql", "CREATE TABLE t (id int);\n  SELEC 1;\n")]);
    let out = db_migrate(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let summary = summary_event(&out);
    assert_eq!(summary["severity"], "ERROR");
    assert_eq!(summary["outcome"], "migration_failed");
    assert_eq!(summary["sqlstate"], "42601", "{}", out.stderr);
    assert_eq!(summary["version"], 1);
    let message = summary["message"].as_str().unwrap();
    assert!(message.contains("001_bad.sql:2:3"), "{message}");
    assert!(!message.contains("psql variable"), "{message}");
}

#[tokio::test]
async fn a_file_written_for_psql_names_the_variable_psql_would_have_filled_in() {
    let db = support::database().await;
    // As graphile-worker-rs writes its schema: a psql variable the server cannot read.
    let dir = migrations(&[(
        "001_jobs.sql",
        "CREATE TABLE :WORKER_SCHEMA.jobs (id bigint, slice int[]);\n",
    )]);
    let out = db_migrate(&db, dir.path(), &["up"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let message = summary_event(&out)["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("001_jobs.sql:1:14: 42601 syntax error at or near \":\"")
            && message.contains(":WORKER_SCHEMA is a psql variable, which only psql fills in"),
        "{message}"
    );
}

#[tokio::test]
async fn status_goes_to_stdout_as_text_or_json() {
    let db = support::database().await;
    let out = db_migrate(&db, &seed_dir(), &["status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(
        lines[1].starts_with("1 ") && lines[1].contains("pending") && lines[1].contains(" yes "),
        "{}",
        out.stdout
    );
    assert_eq!(lines[3], "0 applied, 2 pending; nothing applied yet");

    assert_eq!(
        db_migrate(&db, &seed_dir(), &["up", "--target", "1"]).code,
        0
    );
    let out = db_migrate(&db, &seed_dir(), &["status", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows[0]["state"], "applied");
    assert!(rows[0]["applied_at"].is_string());
    assert!(rows[0]["execution_ms"].is_i64());
    assert_eq!(rows[1]["state"], "pending");
    assert!(rows[1]["applied_at"].is_null());
    assert_eq!(rows[1]["rollback"], true);
    let out = db_migrate(&db, &seed_dir(), &["status"]);
    assert_eq!(
        out.stdout.lines().last(),
        Some("1 applied, 1 pending; database at version 1")
    );
}

#[tokio::test]
async fn verify_gates_on_pending_and_drift() {
    let db = support::database().await;
    let dir = migrations(&[("001_a.sql", "CREATE TABLE a (id int);\n")]);
    assert_eq!(db_migrate(&db, dir.path(), &["verify"]).code, 7);
    assert_eq!(db_migrate(&db, dir.path(), &["up"]).code, 0);
    assert_eq!(db_migrate(&db, dir.path(), &["verify"]).code, 0);
    support::append(&dir.path().join("001_a.sql"), "-- edited\n");
    let drift = db_migrate(&db, dir.path(), &["verify"]);
    assert_eq!(drift.code, 4, "{}", drift.stderr);
    assert_eq!(db_migrate(&db, dir.path(), &["status"]).code, 0);
    assert!(
        db_migrate(&db, dir.path(), &["status"])
            .stdout
            .contains("drift")
    );
}

#[tokio::test]
async fn exit_codes_for_usage_configuration_and_connection_problems() {
    let unused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = format!("postgresql://u:p@127.0.0.1:{unused_port}/d");
    let cases: [(&[&str], Option<&str>, i32); 5] = [
        (&["frobnicate"], None, 2),
        (&["down"], None, 2),
        (&["up"], None, 2),
        (&["up"], Some("postgresql://u@h:notaport/d"), 2),
        (&["up"], Some(refused.as_str()), 5),
    ];
    let empty = tempfile::tempdir().unwrap();
    for (args, url, code) in cases {
        let mut command = binary();
        command
            .args(args)
            .current_dir(empty.path())
            .env("MIGRATIONS_DIR", seed_dir())
            .env("DB_MIGRATE_CONNECT_TIMEOUT", "1s");
        if let Some(url) = url {
            command.env("DATABASE_URL", url);
        }
        let out = output(&mut command);
        assert_eq!(out.code, code, "{args:?} {url:?}: {}", out.stderr);
    }
}

/// A log reader that goes away (`2>&1 | head`) leaves the run to finish: every write to the
/// closed pipe fails, and the subscriber reported the first with `eprintln!`, which panicked
/// and aborted the run (exit 134) between two migrations. So does a closed stdout for `new`.
#[tokio::test]
async fn a_closed_log_pipe_does_not_stop_the_run() {
    let db = support::database().await;
    let files: Vec<(String, String)> = (1..=20)
        .map(|v| {
            (
                format!("{v:03}_t{v}.sql"),
                format!("CREATE TABLE t{v} (id int);\n"),
            )
        })
        .collect();
    let dir = migrations(&files);
    for format in ["json", "text"] {
        let mut child = binary()
            .args(["up", "--log-format", format])
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the run writes anything: its every log write fails.
        drop(child.stderr.take());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{format}: {status}");
    }
    assert_eq!(history(&db.client().await).await.len(), 20);
    let mut new = binary()
        .args(["new", "add_things", "--log-format", "json"])
        .env("MIGRATIONS_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(new.stdout.take());
    assert_eq!(new.wait().unwrap().code(), Some(0));
    assert!(dir.path().join("021_add_things.sql").exists());
}

/// A flag overrides its environment variable even when the variable's value is bad (clap
/// checked it anyway, clap-rs/clap#5588), and a bad variable with no flag over it is named as
/// the variable, not as the flag the user never typed.
#[tokio::test]
async fn a_flag_overrides_a_bad_environment_variable_and_a_bad_variable_is_named() {
    let db = support::database().await;
    let dir = migrations(&[("001_a.sql", "CREATE TABLE a (id int);\n")]);
    let run = |args: &[&str], variable: (&str, &str)| {
        output(
            binary()
                .args(args)
                .env("DATABASE_URL", &db.url)
                .env("MIGRATIONS_DIR", dir.path())
                .env(variable.0, variable.1),
        )
    };
    let overridden: [(&[&str], (&str, &str)); 5] = [
        (
            &["--lock-wait", "5s", "up"],
            ("DB_MIGRATE_LOCK_WAIT", "abc"),
        ),
        (&["up", "--lock-wait=5s"], ("DB_MIGRATE_LOCK_WAIT", "abc")),
        (&["up", "--log-format", "json"], ("LOG_FORMAT", "xml")),
        (
            &["-v", "up", "--log-format", "json"],
            ("DB_MIGRATE_VERBOSE", "maybe"),
        ),
        (
            &["up", "--hazard-rows", "10", "--log-format", "json"],
            ("DB_MIGRATE_HAZARD_ROWS", "-1"),
        ),
    ];
    for (args, variable) in overridden {
        let out = run(args, variable);
        assert_eq!(out.code, 0, "{args:?} {variable:?}: {}", out.stderr);
    }
    assert_eq!(history(&db.client().await).await, [1]);
    let named: [(&[&str], (&str, &str), &str); 3] = [
        (
            &["up", "--log-format", "json"],
            ("DB_MIGRATE_LOCK_WAIT", "abc"),
            "invalid value 'abc' in DB_MIGRATE_LOCK_WAIT (the environment variable of --lock-wait): \"abc\" is not a duration",
        ),
        (
            &["up", "--log-format", "json"],
            ("DB_MIGRATE_VERBOSE", "maybe"),
            "in DB_MIGRATE_VERBOSE (the environment variable of --verbose)",
        ),
        (
            &["up"],
            ("LOG_FORMAT", "xml"),
            "invalid value 'xml' in LOG_FORMAT (the environment variable of --log-format); possible values: auto, json, text",
        ),
    ];
    for (args, variable, says) in named {
        let out = run(args, variable);
        assert_eq!(out.code, 2, "{args:?} {variable:?}: {}", out.stderr);
        let summary = summary_event(&out);
        let message = summary["message"].as_str().unwrap();
        assert!(message.contains(says), "{variable:?}: {message}");
    }
    // Typed, a bad value is still the flag's, with the values it takes.
    let typed = run(&["up", "--log-format", "xml"], ("LOG_FORMAT", "json"));
    assert_eq!(typed.code, 2, "{}", typed.stderr);
    let message = summary_event(&typed)["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with(
            "invalid value 'xml' for '--log-format <LOG_FORMAT>'; possible values: auto, json, text"
        ),
        "{message}"
    );
}

/// A connection string's error names where it came from: the flag, the variable or `.env`.
#[test]
fn a_bad_connection_string_is_named_as_it_was_given() {
    let bad = "postgresql://u:Wr0ng@Secret@host/db";
    let dir = tempfile::tempdir().unwrap();
    for (flag, variable, dotenv, named) in [
        (true, None, false, "--database-url has an @"),
        (false, Some(bad), false, "DATABASE_URL has an @"),
        (false, None, true, "DATABASE_URL in .env has an @"),
    ] {
        if dotenv {
            std::fs::write(dir.path().join(".env"), format!("DATABASE_URL={bad}\n")).unwrap();
        }
        let mut command = binary();
        command.current_dir(dir.path()).env_remove("DATABASE_URL");
        command.args(["status", "--log-format", "json"]);
        if flag {
            command.args(["--database-url", bad]);
        }
        if let Some(value) = variable {
            command.env("DATABASE_URL", value);
        }
        let out = output(&mut command);
        assert_eq!(out.code, 2, "{named}: {}", out.stderr);
        let message = summary_event(&out)["message"].as_str().unwrap().to_string();
        assert!(message.starts_with(named), "{message}");
        assert!(!out.stderr.contains("Secret"), "{}", out.stderr);
    }
}

#[test]
fn usage_errors_end_with_the_same_summary_event_as_other_configuration_errors() {
    let run = |args: &[&str], log_format: Option<&str>| {
        let mut command = binary();
        command.args(args).env("MIGRATIONS_DIR", seed_dir());
        if let Some(format) = log_format {
            command.env("LOG_FORMAT", format);
        }
        output(&mut command)
    };
    // No database: a configuration error found after parsing, for comparison.
    let config_error = summary_event(&run(&["up", "--log-format", "json"], None));
    let fields = |event: &serde_json::Value| {
        let mut keys: Vec<String> = event.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    // The flag, the variable, and auto (stderr is a pipe here) all mean JSON.
    let cases: [(&[&str], Option<&str>, &str, &str); 8] = [
        (
            &["frobnicate", "--log-format", "json"],
            None,
            "-",
            "unrecognized subcommand 'frobnicate'",
        ),
        (
            &["up", "--lock-wait", "abc"],
            Some("json"),
            "up",
            "\"abc\" is not a duration",
        ),
        (
            &["status", "--no-such-flag"],
            None,
            "status",
            "unexpected argument '--no-such-flag'",
        ),
        (&["down", "--log-format=json"], None, "down", "--steps"),
        (
            &["up", "--ddl-lock-timeout", "0ms", "--log-format", "json"],
            None,
            "up",
            "0 turns PostgreSQL's lock_timeout off",
        ),
        (
            &[
                "test",
                "--scratch-url",
                "mysql://x@h/d",
                "--log-format",
                "json",
            ],
            None,
            "test",
            "--scratch-url (DB_MIGRATE_SCRATCH_URL) is a mysql:// URL",
        ),
        (&["--log-format", "json"], None, "-", "no command given"),
        (
            &["verify", "extra"],
            Some("auto"),
            "verify",
            "unexpected argument 'extra'",
        ),
    ];
    for (args, log_format, command, says) in cases {
        let out = run(args, log_format);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        let summary = summary_event(&out);
        assert_eq!(summary["outcome"], "config_error", "{summary}");
        assert_eq!(summary["exit_code"], 2, "{summary}");
        assert_eq!(summary["severity"], "ERROR", "{summary}");
        assert_eq!(summary["command"], command, "{summary}");
        assert_eq!(fields(&summary), fields(&config_error), "{args:?}");
        let message = summary["message"].as_str().unwrap();
        assert!(message.contains(says), "{args:?}: {message}");
    }
    let text = run(&["up", "--lock-wait", "abc", "--log-format", "text"], None);
    assert_eq!(text.code, 2);
    assert!(
        text.stderr
            .starts_with("error: invalid value 'abc' for '--lock-wait"),
        "{}",
        text.stderr
    );
    for args in [["--help"], ["--version"]] {
        let out = run(&args, Some("json"));
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        assert!(
            out.stdout.contains("db-migrate"),
            "{args:?}: {}",
            out.stdout
        );
        assert_eq!(out.stderr, "", "{args:?}");
    }
}

#[tokio::test]
async fn sentinel_password_never_appears_in_any_output() {
    let sentinel = "Sentinel-Pw-7f3a9c";
    let db = support::database().await;
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE bot LOGIN PASSWORD '{sentinel}'; GRANT ALL ON SCHEMA public TO bot;"
        ))
        .await
        .unwrap();
    let port = support::server().port;
    let good = format!("postgresql://bot:{sentinel}@127.0.0.1:{port}/{}", db.name);
    let wrong = format!(
        "postgresql://bot:{sentinel}-wrong@127.0.0.1:{port}/{}",
        db.name
    );
    let broken = format!("postgresql://bot:{sentinel}@127.0.0.1:notaport/{}", db.name);
    let seed = |file: &str| std::fs::read_to_string(seed_dir().join(file)).unwrap();
    let (first, second) = (
        seed("001_create_video_requests.sql"),
        seed("002_add_indexes.sql"),
    );
    let failing = migrations(&[
        ("001_create_video_requests.sql", first.as_str()),
        ("002_add_indexes.sql", second.as_str()),
        ("003_bad.sql", "SELEC 1;"),
    ]);
    let runs: [(&str, &[&str], &Path, i32); 6] = [
        (&good, &["up"], &seed_dir(), 0),
        (&good, &["status"], &seed_dir(), 0),
        (&good, &["verify"], &seed_dir(), 0),
        (&good, &["up"], failing.path(), 1),
        (&wrong, &["up"], &seed_dir(), 5),
        (&broken, &["up"], &seed_dir(), 2),
    ];
    for (url, args, dir, code) in runs {
        for format in ["json", "text"] {
            let out = output(
                binary()
                    .args(args)
                    .args(["--log-format", format])
                    .env("DATABASE_URL", url)
                    .env("MIGRATIONS_DIR", dir),
            );
            assert_eq!(out.code, code, "{args:?}: {}", out.stderr);
            assert!(
                !out.stdout.contains(sentinel),
                "{args:?} stdout: {}",
                out.stdout
            );
            assert!(
                !out.stderr.contains(sentinel),
                "{args:?} stderr: {}",
                out.stderr
            );
        }
    }
    let help = output(binary().arg("--help").env("DATABASE_URL", &good));
    assert_eq!(help.code, 0);
    assert!(
        help.stdout.contains("DATABASE_URL") && !help.stdout.contains(sentinel),
        "{}",
        help.stdout
    );
}

#[tokio::test]
async fn wrong_password_fails_at_once_naming_authentication() {
    let db = support::database().await;
    let wrong = db
        .url
        .replace(support::SUPERUSER_PASSWORD, "not-the-password");
    let out = output(
        binary()
            .args(["up", "--log-format", "json"])
            .env("DATABASE_URL", wrong)
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    assert_eq!(out.code, 5, "{}", out.stderr);
    let summary = summary_event(&out);
    assert_eq!(summary["outcome"], "connect_failed");
    assert!(
        summary["message"].as_str().unwrap().contains("28P01"),
        "{summary}"
    );
}

#[tokio::test]
async fn a_database_that_does_not_exist_is_named_with_what_to_do() {
    let db = support::database().await;
    let missing = db.url.replace(&db.name, "no_such_db");
    let out = output(
        binary()
            .args(["up", "--log-format", "json", "--connect-timeout", "0"])
            .env("DATABASE_URL", missing)
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    assert_eq!(out.code, 5, "{}", out.stderr);
    let summary = summary_event(&out);
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("3D000 database \"no_such_db\" does not exist; check the database name in the URL, or create the database"),
        "{message}"
    );
}

#[tokio::test]
async fn existing_tables_without_history_warn_about_baseline() {
    let db = support::database().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE legacy (id int)")
        .await
        .unwrap();
    let warned = |out: &Output| {
        events(&out.stderr).into_iter().any(|e| {
            e["severity"] == "WARNING"
                && e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("baseline")
        })
    };
    let out = db_migrate(&db, &seed_dir(), &["up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(warned(&out), "{}", out.stderr);
    // Once the history exists, and on a database with no tables, there is nothing to say.
    let again = db_migrate(&db, &seed_dir(), &["up"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(!warned(&again), "{}", again.stderr);
    let empty = support::database().await;
    let fresh = db_migrate(&empty, &seed_dir(), &["up"]);
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    assert!(!warned(&fresh), "{}", fresh.stderr);
}

#[tokio::test]
async fn dotenv_supplies_database_url_but_the_environment_wins() {
    let db = support::database().await;
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join(".env"),
        format!("DATABASE_URL={}\n", db.url),
    )
    .unwrap();
    // Node's db-migrate package takes the same name; npm puts its bin directory first on
    // PATH. The wrapper must never run it.
    let node_bin = work.path().join("node_modules/.bin");
    std::fs::create_dir_all(&node_bin).unwrap();
    std::fs::write(
        node_bin.join("db-migrate"),
        "#!/bin/sh\necho 0.11.14\nexit 99\n",
    )
    .unwrap();
    std::fs::set_permissions(
        node_bin.join("db-migrate"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let from_file = output(
        binary()
            .args(["up", "--log-format", "json"])
            .current_dir(work.path())
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    assert_eq!(from_file.code, 0, "{}", from_file.stderr);
    let refused = output(
        binary()
            .args(["status"])
            .current_dir(work.path())
            .env("MIGRATIONS_DIR", seed_dir())
            .env("DATABASE_URL", "postgresql://u:p@127.0.0.1:1/none")
            .env("DB_MIGRATE_CONNECT_TIMEOUT", "1s"),
    );
    assert_eq!(
        refused.code, 5,
        "the environment's DATABASE_URL must win: {}",
        refused.stderr
    );
}

#[tokio::test]
async fn npm_scripts_run_the_binary_with_dotenv_from_the_working_directory() {
    let db = support::database().await;
    let work = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(root.join("package.json"), work.path().join("package.json")).unwrap();
    std::fs::create_dir(work.path().join("scripts")).unwrap();
    std::fs::copy(
        root.join("scripts/db-migrate.sh"),
        work.path().join("scripts/db-migrate.sh"),
    )
    .unwrap();
    std::fs::create_dir(work.path().join("migrations")).unwrap();
    for entry in std::fs::read_dir(seed_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            work.path().join("migrations").join(entry.file_name()),
        )
        .unwrap();
    }
    std::fs::write(
        work.path().join(".env"),
        format!("DATABASE_URL={}\n", db.url),
    )
    .unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_db-migrate"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let npm_with = |script: &str, extra: &[&str]| {
        let mut command = Command::new("npm");
        support::unsteered(&mut command)
            .args(["run", "--silent", script])
            .args(extra)
            .current_dir(work.path())
            .env("PATH", &path)
            .env("LOG_FORMAT", "json");
        output(&mut command)
    };
    let npm = |script: &str| npm_with(script, &[]);
    let up = npm("db:migrate");
    assert_eq!(up.code, 0, "npm run db:migrate: {}", up.stderr);
    let summary = events(&up.stderr).pop().unwrap();
    assert_eq!(
        (&summary["applied"], &summary["pending"]),
        (&2.into(), &0.into())
    );
    assert_eq!(summary["at_version"], 2);
    assert!(summary.get("rolled_back").is_none(), "{summary}");
    assert_eq!(
        events(&up.stderr)
            .iter()
            .filter(|e| e["message"] == "migration applied")
            .count(),
        2
    );
    let status = npm("db:migrate:status");
    assert_eq!(
        status
            .stdout
            .lines()
            .filter(|l| l.contains(" applied "))
            .count(),
        2,
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .ends_with("2 applied, 0 pending; database at version 2\n")
    );
    let test = npm("db:migrate:test");
    assert_eq!(test.code, 0, "npm run db:migrate:test: {}", test.stderr);
    assert!(
        test.stdout
            .contains("2 migration(s) tested: 2 passed, 0 failed"),
        "{}",
        test.stdout
    );
    // The script's --all gives way to a narrower extent passed after `--`.
    let last = npm_with("db:migrate:down", &["--", "--steps", "1"]);
    assert_eq!(last.code, 0, "{}", last.stderr);
    assert_eq!(history(&db.client().await).await, [1]);
    // The summary's counts are named for what they count.
    let summary = events(&last.stderr).pop().unwrap();
    let counts = ["applied", "rolled_back", "pending", "at_version"].map(|k| summary[k].clone());
    assert_eq!(
        counts,
        [0, 1, 1, 1].map(serde_json::Value::from),
        "{summary}"
    );
    // With a request in the table, rolling back everything would lose it: refused, with how
    // to run the script again once a backup is taken.
    db.client()
        .await
        .batch_execute(
            "INSERT INTO video_requests (user_id, guild_id, channel_id, prompt, duration_seconds, \
             aspect_ratio, resolution, status) VALUES ('u', 'g', 'c', 'p', 4, '16:9', '720p', 'pending')",
        )
        .await
        .unwrap();
    let refused = npm("db:migrate:down");
    assert_eq!(refused.code, 9, "{}", refused.stderr);
    let summary = events(&refused.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("(here: npm run db:migrate:down -- --allow-data-loss)"),
        "{message}"
    );
    assert_eq!(history(&db.client().await).await, [1]);
    let down = npm_with("db:migrate:down", &["--", "--allow-data-loss"]);
    assert_eq!(down.code, 0, "{}", down.stderr);
    assert!(support::tables(&db.client().await).await == ["schema_migrations"]);
}

#[tokio::test]
async fn dev_sh_starts_the_local_database_and_applies_the_migrations_in_one_command() {
    // A copy of the repository's scripts and migrations, so that the local database it starts
    // (in .local-postgres/ beside them, on a free port) is this test's own.
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(root.path().join("scripts/lib")).unwrap();
    for script in [
        "scripts/dev.sh",
        "scripts/local-postgres.sh",
        "scripts/lib/common.sh",
    ] {
        std::fs::copy(repo.join(script), root.path().join(script)).unwrap();
    }
    std::fs::create_dir(root.path().join("migrations")).unwrap();
    for entry in std::fs::read_dir(seed_dir()).unwrap() {
        let entry = entry.unwrap();
        let to = root.path().join("migrations").join(entry.file_name());
        std::fs::copy(entry.path(), to).unwrap();
    }
    let port = support::free_port().to_string();
    let dev = |args: &[&str]| {
        let mut command = Command::new("bash");
        support::unsteered(&mut command)
            .arg(root.path().join("scripts/dev.sh"))
            .args(args)
            .current_dir(root.path())
            .env("PGPORT", &port)
            .env("DB_MIGRATE_BIN", env!("CARGO_BIN_EXE_db-migrate"))
            .env("LOG_FORMAT", "json");
        output(&mut command)
    };
    let up = dev(&[]);
    let stop = || {
        let mut command = Command::new("bash");
        command
            .arg(root.path().join("scripts/local-postgres.sh"))
            .arg("stop")
            .env("PGPORT", &port);
        output(&mut command)
    };
    if up.code != 0 {
        stop();
        panic!("scripts/dev.sh: {}", up.stderr);
    }
    let said = format!(
        "dev.sh: database: postgresql://discord_video@localhost:{port}/discord_video_dev?sslmode=disable"
    );
    assert!(up.stderr.contains(&said), "{}", up.stderr);
    support::assert_no_password(&up.stderr);
    assert!(!up.stderr.contains("dev_password"), "{}", up.stderr);
    // The scripts' own notes are plain lines; db-migrate's are JSON.
    let json: String = (up.stderr.lines())
        .filter(|l| l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    let summary = events(&json).pop().unwrap();
    assert_eq!(summary["outcome"], "applied", "{summary}");
    assert_eq!(summary["applied"], 2);
    // Again, with the database already running: nothing to do.
    let again = dev(&["status"]);
    stop();
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again
            .stdout
            .lines()
            .filter(|l| l.contains(" applied "))
            .count(),
        2,
        "{}",
        again.stdout
    );
}

/// Runs the binary with `args` under a pseudo-terminal (util-linux `script`), as a person at a
/// terminal runs it, with JSON logs; returns everything the terminal showed.
fn on_a_terminal(db: &TestDb, args: &str) -> String {
    let (code, shown) = at_a_terminal(db, &seed_dir(), &format!("{args} --log-format json"));
    assert_eq!(code, 0, "{args}: {shown}");
    shown
}

/// Runs the binary with `args` over the migrations in `dir` under a pseudo-terminal, stdout
/// and stderr both on it; returns the exit code and what the terminal showed, one entry per
/// line drawn (a line redrawn in place counts once per drawing).
fn at_a_terminal(db: &TestDb, dir: &Path, args: &str) -> (i32, String) {
    let command = format!("{} {args}", env!("CARGO_BIN_EXE_db-migrate"));
    let mut script = Command::new("script");
    support::unsteered(&mut script)
        .args(["-qec", &command, "/dev/null"])
        .env("DATABASE_URL", &db.url)
        .env("MIGRATIONS_DIR", dir)
        .env_remove("LOG_FORMAT");
    let out = output(&mut script);
    let shown = out
        .stdout
        .replace("\x1b[2K", "")
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    (out.code, shown)
}

/// The line of `shown` that starts with `verb` and names `file`.
fn line_of<'a>(shown: &'a str, verb: &str, file: &str) -> &'a str {
    shown
        .lines()
        .find(|l| l.starts_with(verb) && l.contains(file))
        .unwrap_or_else(|| panic!("no `{verb}` line for {file}:\n{shown}"))
}

/// A hazard at a person's terminal is one sentence: where, what, on what, and the fix (left
/// out once it is allowed). The JSON event keeps its fields and nothing more.
#[tokio::test]
async fn on_a_terminal_a_hazard_reads_as_a_sentence() {
    let db = support::database().await;
    let dir = support::copy_of_seed(&[(
        "003_drop_prompt.sql",
        "ALTER TABLE video_requests DROP COLUMN prompt;\n",
    )]);
    assert_eq!(
        db_migrate(&db, dir.path(), &["up", "--target", "2"]).code,
        0
    );
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO video_requests (user_id, guild_id, channel_id, prompt, duration_seconds, \
             aspect_ratio, resolution, status) VALUES ('u', 'g', 'c', 'p', 4, '16:9', '720p', 'pending')",
        )
        .await
        .unwrap();
    let expected = "warning: hazard refused: 003_drop_prompt.sql:1:1: drops-data (DROP COLUMN) \
                    on video_requests.prompt holding 1 row(s) of data; take a backup first";
    let (code, shown) = at_a_terminal(&db, dir.path(), "up");
    assert_eq!(code, 9, "{shown}");
    assert!(
        shown.lines().any(|l| l.ends_with("above the statement")
            && l.starts_with("warning: hazard refused: ")
            && l.contains(&expected["warning: hazard refused: ".len()..])),
        "{shown}"
    );
    assert!(!shown.contains("rows_known"), "{shown}");
    let (code, shown) = at_a_terminal(&db, dir.path(), "up --dry-run --allow-data-loss");
    assert_eq!(code, 0, "{shown}");
    let allowed = shown
        .lines()
        .find(|l| l.starts_with("warning: hazard allowed (--allow-data-loss): "))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(allowed.ends_with("1 row(s) of data"), "{allowed}");
    let out = db_migrate(&db, dir.path(), &["up", "--dry-run"]);
    let event = events(&out.stderr)
        .into_iter()
        .find(|e| e["message"] == "hazard refused")
        .unwrap_or_else(|| panic!("{}", out.stderr));
    assert_eq!(event["rule"], "drops-data");
    assert!(event.get("person").is_none(), "{event}");
}

#[tokio::test]
async fn on_a_terminal_each_migration_gets_a_line_with_what_its_sql_did() {
    let db = support::database().await;
    let dir = support::copy_of_seed(&[
        (
            "003_backfill.sql",
            "SELECT pg_sleep(2.5);\nCREATE TABLE IF NOT EXISTS priorities (n int);\n\
             INSERT INTO priorities SELECT generate_series(1, 120);\n",
        ),
        (
            "003_backfill.down.sql",
            "DROP TABLE IF EXISTS priorities;\n",
        ),
    ]);
    // A dry run lists every statement it ran under its migration, with its tag and line.
    let (code, shown) = at_a_terminal(&db, dir.path(), "up --dry-run");
    assert_eq!(code, 0, "{shown}");
    let line = line_of(&shown, "would apply", "002_add_indexes.sql");
    assert!(line.ends_with(" ms  CREATE INDEX ×3"), "{line}");
    assert!(
        shown
            .lines()
            .any(|l| l.trim_start().starts_with("CREATE INDEX")
                && l.contains("line 3")
                && l.contains("CREATE INDEX IF NOT EXISTS idx_video_requests_user_created")),
        "{shown}"
    );
    let line = line_of(&shown, "would apply", "003_backfill.sql");
    assert!(
        line.ends_with("SELECT 1, CREATE TABLE, INSERT 0 120"),
        "{line}"
    );
    // A command's output, not a log stream: no informational events, no JSON.
    assert!(!shown.contains("INFO") && !shown.contains('{'), "{shown}");
    let client = db.client().await;
    let untouched = "SELECT to_regclass('schema_migrations') IS NULL";
    assert!(
        client
            .query_one(untouched, &[])
            .await
            .unwrap()
            .get::<_, bool>(0)
    );

    let (code, shown) = at_a_terminal(&db, dir.path(), "up");
    assert_eq!(code, 0, "{shown}");
    let line = line_of(&shown, "applied", "001_create_video_requests.sql");
    assert!(line.ends_with(" ms  CREATE TABLE"), "{line}");
    let line = line_of(&shown, "applied", "003_backfill.sql");
    assert!(
        line.ends_with("SELECT 1, CREATE TABLE, INSERT 0 120"),
        "{line}"
    );
    // The slow one was shown running, on a line drawn over by its result.
    let running = line_of(&shown, "running", "003_backfill");
    assert!(running.trim_end().ends_with(" s"), "{running}");
    // Statements are listed only on a dry run or with --verbose.
    assert!(!shown.contains("line 3"), "{shown}");
    assert!(shown.contains("applied 3 migrations in "), "{shown}");

    let (code, shown) = at_a_terminal(&db, dir.path(), "verify");
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains(
            "history matches the files: 3 migrations applied, none changed; database at version 3"
        ),
        "{shown}"
    );

    let (code, shown) = at_a_terminal(
        &db,
        dir.path(),
        "down --steps 1 --verbose --allow-data-loss",
    );
    assert_eq!(code, 0, "{shown}");
    let line = line_of(&shown, "rolled back", "003_backfill.down.sql");
    assert!(line.ends_with(" ms  DROP TABLE"), "{line}");
    assert!(shown.contains("line 1"), "{shown}");

    // A failure ends with one line that says what failed, nothing of the summary's fields.
    std::fs::write(
        dir.path().join("004_broken.sql"),
        "SELECT 1;\nSELECT 1/0;\n",
    )
    .unwrap();
    let (code, shown) = at_a_terminal(&db, dir.path(), "up");
    assert_eq!(code, 1, "{shown}");
    let error = shown
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(error.contains("004_broken.sql:2"), "{shown}");
    assert!(
        !shown.contains("outcome") && !shown.contains("ERROR"),
        "{shown}"
    );

    // Off a terminal, the JSON event of each migration names its commands.
    std::fs::remove_file(dir.path().join("004_broken.sql")).unwrap();
    let piped = db_migrate(
        &db,
        dir.path(),
        &["down", "--steps", "1", "--allow-data-loss"],
    );
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    let event = events(&piped.stderr)
        .into_iter()
        .find(|e| e["message"] == "migration rolled back")
        .expect("a migration event");
    assert_eq!(event["commands"], "DROP TABLE", "{event}");
}

#[tokio::test]
async fn on_a_terminal_up_and_down_end_with_what_they_did_in_words() {
    let db = support::database().await;
    let shown = on_a_terminal(&db, "up");
    let said = shown
        .lines()
        .find(|l| l.starts_with("applied 2 migrations in "));
    assert!(
        said.is_some_and(|l| l.trim_end().ends_with(" ms; database at version 2")),
        "{shown}"
    );
    assert!(on_a_terminal(&db, "up").contains("nothing to apply; database at version 2"));
    let shown = on_a_terminal(&db, "down --steps 1");
    let said = shown
        .lines()
        .find(|l| l.starts_with("rolled back 1 migration in "));
    assert!(
        said.is_some_and(|l| l.trim_end().ends_with("; 1 pending; database at version 1")),
        "{shown}"
    );
    // Off a terminal, stdout carries only command output: no sentence.
    let piped = db_migrate(&db, &seed_dir(), &["up"]);
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    assert!(piped.stdout.is_empty(), "{}", piped.stdout);
}
