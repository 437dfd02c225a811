//! Behind a transaction-pooling proxy the migration lock protects nothing: the job notices
//! and stops with exit 2. Uses a real PgBouncer in transaction mode.

mod support;

use std::process::{Command, Stdio};

use support::{binary, output, seed_dir, tables};

/// Starts PgBouncer in transaction mode, round-robin over server connections, in front of
/// the shared test server; it is killed when the returned guard drops.
struct Bouncer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pgbouncer() -> Bouncer {
    let server = support::server();
    let dir = tempfile::tempdir().unwrap();
    let owner = support::server_user();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    }
    let port = support::free_port();
    let users = dir.path().join("users.txt");
    std::fs::write(
        &users,
        format!(
            "\"{}\" \"{}\"\n",
            support::SUPERUSER,
            support::SUPERUSER_PASSWORD
        ),
    )
    .unwrap();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n* = host=127.0.0.1 port={}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}\n\
             pool_mode = transaction\nserver_round_robin = 1\ndefault_pool_size = 4\n\
             ignore_startup_parameters = extra_float_digits,options\nlogfile = {}\n",
            server.port,
            users.display(),
            dir.path().join("pgbouncer.log").display()
        ),
    )
    .unwrap();
    let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("pgbouncer not found; install the pgbouncer package");
    let mut command = support::as_server_user(Command::new(program), owner);
    let child = command
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgbouncer");
    Bouncer {
        child,
        port,
        _dir: dir,
    }
}

#[tokio::test]
async fn transaction_pooler_is_detected_and_nothing_is_applied() {
    let db = support::database().await;
    let bouncer = pgbouncer();
    let url = format!(
        "postgresql://{}:{}@127.0.0.1:{}/{}?sslmode=disable",
        support::SUPERUSER,
        support::SUPERUSER_PASSWORD,
        bouncer.port,
        db.name
    );
    // Open several server connections at once, so that consecutive transactions of one
    // client land on different ones, as they do under real load.
    let mut clients = Vec::new();
    support::eventually("pgbouncer to accept connections", || async {
        tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .is_ok()
    })
    .await;
    for _ in 0..3 {
        let client = support::connect(&url).await;
        client.batch_execute("BEGIN; SELECT 1").await.unwrap();
        clients.push(client);
    }
    for client in &clients {
        client.batch_execute("COMMIT").await.unwrap();
    }
    let out = output(
        binary()
            .args(["up", "--log-format", "json"])
            .env("DATABASE_URL", &url)
            .env("MIGRATIONS_DIR", seed_dir()),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("session-pooling port"),
        "{}",
        out.stderr
    );
    assert!(tables(&db.client().await).await.is_empty());
}
