//! What the integration tests share: the throwaway PostgreSQL and its databases
//! ([`server`]), the real binary ([`runner`]), queries of the catalogs and the history table
//! ([`catalog`]), and here the migration directories and the library run most tests start
//! from.
//!
//! The Google and certificate stand-ins beside this file are not part of this module: each
//! is compiled only into the test file that uses it.

#![allow(
    dead_code,
    reason = "each test binary compiles all of this and uses its own part"
)]

mod catalog;
mod runner;
mod server;

#[allow(
    unused_imports,
    reason = "some test binaries use nothing of one of these modules"
)]
pub use {catalog::*, runner::*, server::*};

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use db_migrate::plan::Target;
use db_migrate::{Command as Cmd, Config, Mode};
use db_migrate::{Error, Summary};

/// A migrations directory holding `files` (name, content).
pub fn migrations(files: &[(impl AsRef<Path>, impl AsRef<[u8]>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("write migration");
    }
    dir
}

/// The repository's own migrations/ directory.
pub fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")
}

/// A migrations directory with the seed's files plus `extra` (name, content).
pub fn copy_of_seed(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(seed_dir()).expect("read seed dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    for (name, content) in extra {
        std::fs::write(dir.path().join(name), content).expect("write migration");
    }
    dir
}

/// A config as the CLI would build it, for `command` against `url` with migrations in `dir`.
pub fn config(url: &str, dir: &Path, command: Cmd) -> Config {
    let database = db_migrate::connect::resolve(Some(url), &Default::default());
    let mut config = Config::new(command, dir, Some(database.expect("test URL parses")));
    config.applied_by = "test".into();
    config
}

pub fn up() -> Cmd {
    Cmd::Up {
        target: Target::Latest,
        mode: Mode::Each,
    }
}

/// Runs one command through the library, as the binary does.
pub async fn run(config: &Config) -> (Summary, Result<(), Error>) {
    db_migrate::run(config).await
}

/// Runs `up` on `db` with the migrations in `dir`, expecting success.
pub async fn up_ok(db: &TestDb, dir: &Path) -> Summary {
    let (summary, result) = run(&config(&db.url, dir, up())).await;
    result.unwrap_or_else(|e| panic!("up failed: {e}"));
    summary
}

/// Appends to a file the test owns, for tests that change a migration after applying it.
pub fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open");
    file.write_all(text.as_bytes()).expect("append");
}

/// Polls `condition` every 20 ms for up to 60 s.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} did not happen within 60 s");
}
