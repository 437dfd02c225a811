//! The Cloud SQL connector, IAM database login and the backup before migrating, against the
//! stand-ins in `support/google.rs` (Admin API, metadata server, instance TLS listener) and
//! the real test PostgreSQL behind them.

#[path = "support/google.rs"]
mod google;
mod support;

use std::path::Path;
use std::process::Command;

use google::{BackupOutcome, Google, Identity};
use support::{Output, TestDb};

/// The real binary pointed at the stand-ins, logging JSON, for `url` and the files in `dir`.
fn job(google: &Google, url: &str, dir: &Path) -> Command {
    let mut command = support::binary();
    google.env(&mut command);
    command
        .env("LOG_FORMAT", "json")
        .env("DATABASE_URL", url)
        .env("MIGRATIONS_DIR", dir)
        .env("DB_MIGRATE_CONNECT_TIMEOUT", "10s");
    command
}

/// A run of the seed's migrations through the connector: no host in the URL, so the
/// connector is the way in.
fn run(google: &Google, db: &TestDb, args: &[&str]) -> Output {
    checked(job(google, &connector_url(db), &support::seed_dir()).args(args))
}

/// Takes the metadata server away, as on a machine that is not on Google Cloud.
fn without_metadata_server(command: &mut Command) -> &mut Command {
    command.env(
        "GCE_METADATA_HOST",
        format!("127.0.0.1:{}", support::free_port()),
    )
}

/// Also asserts that no token the stand-ins handed out appears in any output.
fn checked(command: &mut Command) -> Output {
    let output = support::output(command);
    for text in [&output.stdout, &output.stderr] {
        assert_no_token(text);
    }
    output
}

/// Fails the test if `text` contains a token the stand-ins handed out.
fn assert_no_token(text: &str) {
    for token in [google::ADMIN_TOKEN, google::LOGIN_TOKEN] {
        assert!(!text.contains(token), "a token appeared in output:\n{text}");
    }
}

/// The test database's URL without its host and port.
fn connector_url(db: &TestDb) -> String {
    format!(
        "postgresql://{}:{}@/{}",
        support::SUPERUSER,
        support::SUPERUSER_PASSWORD,
        db.name
    )
}

fn summary(output: &Output) -> serde_json::Value {
    support::events(&output.stderr)
        .into_iter()
        .rfind(|e| e.get("exit_code").is_some())
        .unwrap_or_else(|| panic!("no summary event:\n{}", output.stderr))
}

/// The summary event's message: the error, for a failed run.
fn failure_message(output: &Output) -> String {
    summary(output)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// How many times the run retried its connection.
fn retries(output: &Output) -> usize {
    support::events(&output.stderr)
        .into_iter()
        .filter(|e| e["message"] == "cannot connect yet; retrying")
        .count()
}

async fn has_table(db: &TestDb, name: &str) -> bool {
    let client = db.client().await;
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .expect("to_regclass");
    row.get(0)
}

fn server_port() -> u16 {
    support::server().port
}

#[tokio::test]
async fn up_through_the_connector_with_a_legacy_instance_certificate() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    let output = run(&google, &db, &["up"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert!(has_table(&db, "video_requests").await);
    let summary = summary(&output);
    assert_eq!(
        summary["db"],
        format!("postgres@{}/{}", google::CONNECTION_NAME, db.name)
    );
    assert!(google.accepted() >= 1);
    // Named as the direct way names it, not as rustls's `TLSv1_3`.
    let connected = support::events(&output.stderr)
        .into_iter()
        .find(|e| e["message"] == "connected")
        .expect("connected event");
    assert_eq!(connected["tls_version"], "TLSv1.3", "{connected}");
    assert_eq!(connected["via"], "cloudsql-connector", "{connected}");

    let settings = google.calls("connectSettings");
    assert_eq!(settings.len(), 1, "{settings:#?}");
    assert_eq!(settings[0].method, "GET");
    assert_eq!(
        settings[0].path,
        format!(
            "/v1/projects/{}/instances/{}/connectSettings",
            google::PROJECT,
            google::INSTANCE
        )
    );
    assert!(settings[0].query.contains("enum-encoding%3Dint"));
    assert_eq!(
        settings[0].header("authorization"),
        Some(format!("Bearer {}", google::ADMIN_TOKEN).as_str())
    );
    let certs = google.calls("generateEphemeralCert");
    assert_eq!(certs.len(), 1);
    let posted = certs[0].json();
    let public_key = posted["public_key"].as_str().expect("public_key");
    let spki = pem::parse(public_key).expect("PEM");
    assert_eq!(spki.tag(), "PUBLIC KEY");
    // An RSA-2048 SubjectPublicKeyInfo is 294 bytes and names rsaEncryption.
    assert_eq!(spki.contents().len(), 294, "not an RSA-2048 key");
    let rsa_encryption = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    assert!(spki.contents().windows(9).any(|w| w == rsa_encryption));
    assert!(
        posted.get("access_token").is_none(),
        "no token without --iam-auth"
    );
}

#[tokio::test]
async fn up_through_the_connector_with_a_cas_instance_certificate() {
    let db = support::database().await;
    let google = Google::start(Identity::Cas, server_port());
    let output = run(&google, &db, &["up"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert!(has_table(&db, "video_requests").await);
    let issued = support::events(&output.stderr)
        .into_iter()
        .find(|e| e["message"] == "Cloud SQL client certificate issued")
        .expect("issued event");
    assert_eq!(issued["ca_mode"], "GOOGLE_MANAGED_CAS_CA");
}

#[tokio::test]
async fn a_server_certificate_for_another_instance_is_refused() {
    let db = support::database().await;
    let google = Google::start(Identity::OtherInstance, server_port());
    let output = run(&google, &db, &["up"]);
    assert_eq!(output.code, 5, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(message.contains("TLS handshake"), "{message}");
    assert!(message.contains("test-proj:other"), "{message}");
    assert!(!has_table(&db, "schema_migrations").await);
}

#[tokio::test]
async fn a_client_certificate_not_from_the_instance_ca_is_refused_by_the_instance() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    google.behave(|b| b.sign_with_unknown_ca = true);
    let output = run(&google, &db, &["up"]);
    assert_eq!(output.code, 5, "{}", output.stderr);
    // The stand-in notes the refusal after sending its alert, so possibly after the exit.
    support::eventually("the instance to record the refused handshake", || async {
        !google.refused().is_empty()
    })
    .await;
    assert_eq!(google.accepted(), 0);
    // Refused at once: no retry of a handshake that cannot succeed.
    let retries = retries(&output);
    assert_eq!(retries, 0, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(message.contains("client certificate"), "{message}");
    assert!(!has_table(&db, "schema_migrations").await);
}

#[tokio::test]
async fn a_region_that_does_not_match_the_connection_name_is_a_config_error() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    google.behave(|b| b.region = "us-central1".into());
    let output = run(&google, &db, &["up"]);
    assert_eq!(output.code, 2, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(message.contains("region us-central1"), "{message}");
    assert!(
        message.contains("test-proj:us-central1:videos"),
        "{message}"
    );
    assert_eq!(google.accepted(), 0);
}

#[tokio::test]
async fn asking_for_an_ip_type_the_instance_lacks_names_the_types_it_has() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    let output = run(&google, &db, &["up", "--ip-type", "private"]);
    assert_eq!(output.code, 2, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(message.contains("no private IP address"), "{message}");
    assert!(message.contains("it has: public"), "{message}");
    // The default takes the private address when there is no public one.
    google.behave(|b| b.ip_addresses = vec![(3, "127.0.0.1".into())]);
    let output = run(&google, &db, &["up"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
}

#[tokio::test]
async fn permission_denied_names_the_role_and_not_found_is_a_config_error() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    google.behave(|b| {
        b.failures = vec![("connectSettings", 403, "PERMISSION_DENIED")];
    });
    let output = run(&google, &db, &["up"]);
    assert_eq!(output.code, 5, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(message.contains("roles/cloudsql.client"), "{message}");
    assert_eq!(
        google.calls("connectSettings").len(),
        1,
        "403 is not retried"
    );

    google.behave(|b| {
        b.failures = vec![("connectSettings", 404, "NOT_FOUND")];
    });
    let output = run(&google, &db, &["up"]);
    assert_eq!(output.code, 2, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(message.contains("not found"), "{message}");
    assert!(!has_table(&db, "schema_migrations").await);
}

#[tokio::test]
async fn transient_admin_api_failures_are_retried() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    google.behave(|b| {
        b.failures = vec![
            ("connectSettings", 503, "UNAVAILABLE"),
            ("connectSettings", 429, "RESOURCE_EXHAUSTED"),
        ];
    });
    let output = run(&google, &db, &["up"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    let retries = retries(&output);
    assert_eq!(retries, 2, "{}", output.stderr);
    assert_eq!(google.calls("connectSettings").len(), 3);
}

#[tokio::test]
async fn no_credentials_fails_at_once_with_the_ways_to_provide_them() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    // As on a laptop without gcloud credentials: the metadata server's name does not resolve
    // (.invalid never does, RFC 2606).
    let output = checked(
        job(&google, &connector_url(&db), &support::seed_dir())
            .env("GCE_METADATA_HOST", "metadata.invalid")
            .arg("up"),
    );
    assert_eq!(output.code, 5, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(
        message.contains("GOOGLE_APPLICATION_CREDENTIALS"),
        "{message}"
    );
    assert_eq!(retries(&output), 0, "{}", output.stderr);
    assert!(google.requests().is_empty());
}

#[tokio::test]
async fn a_metadata_server_that_starts_late_is_waited_for() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    // GKE's metadata server can refuse a new pod for its first seconds: here it starts
    // listening only once the job has been refused and said it will retry.
    let port = support::free_port();
    let mut job = support::Running::spawn(
        job(&google, &connector_url(&db), &support::seed_dir())
            .env("GCE_METADATA_HOST", format!("127.0.0.1:{port}"))
            .arg("up"),
    );
    job.wait_for("a retry", |e| {
        e["message"] == "cannot connect yet; retrying"
    });
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind late");
    let target = google.http_port;
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let server = std::net::TcpStream::connect(("127.0.0.1", target)).expect("stand-in");
            let (mut from_client, mut to_server) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut from_client, &mut to_server));
            let (mut from_server, mut to_client) = (server, client);
            std::thread::spawn(move || std::io::copy(&mut from_server, &mut to_client));
        }
    });
    let (code, events) = job.finish();
    assert_no_token(&serde_json::Value::Array(events.clone()).to_string());
    assert_eq!(code, Some(0), "{events:#?}");
    assert!(has_table(&db, "video_requests").await);
}

/// The IAM user of the key-file service account (roles are per server, so each test that
/// logs in has a user of its own).
const IAM_USER: &str = "migrator@test-proj.iam";

/// Creates an IAM database user whose password is the stand-in's login token, as Cloud SQL
/// accepts that token for a `cloud_iam_service_account` user.
async fn create_iam_user(db: &TestDb, user: &str) -> tokio_postgres::Client {
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{user}\" LOGIN PASSWORD '{}';
             GRANT ALL ON DATABASE \"{}\" TO \"{user}\";
             GRANT ALL ON SCHEMA public TO \"{user}\";",
            google::LOGIN_TOKEN,
            db.name
        ))
        .await
        .expect("create the IAM user");
    admin
}

async fn owner_of_video_requests(admin: &tokio_postgres::Client) -> String {
    admin
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'video_requests'",
            &[],
        )
        .await
        .expect("owner")
        .get(0)
}

async fn drop_iam_user(admin: &tokio_postgres::Client, user: &str) {
    admin
        .batch_execute(&format!("DROP OWNED BY \"{user}\"; DROP ROLE \"{user}\";"))
        .await
        .expect("drop what the IAM user owns");
}

#[tokio::test]
async fn iam_login_uses_the_login_token_as_password_of_the_mapped_user() {
    let db = support::database().await;
    let user = "runner@test-proj.iam";
    let admin = create_iam_user(&db, user).await;
    let google = Google::start(Identity::Legacy, server_port());
    // User and database from PGUSER and PGDATABASE alone, the user as the full e-mail.
    let mut command = job(&google, "", &support::seed_dir());
    command
        .env_remove("DATABASE_URL")
        .env("PGUSER", "runner@test-proj.iam.gserviceaccount.com")
        .env("PGDATABASE", &db.name)
        .env("CLOUD_SQL_IAM_AUTH", "true")
        .arg("up");
    let output = checked(&mut command);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(owner_of_video_requests(&admin).await, user);
    let certs = google.calls("generateEphemeralCert");
    assert_eq!(certs[0].json()["access_token"], google::LOGIN_TOKEN);
    let tokens = google.calls("token");
    assert!(
        tokens.iter().any(|t| t.query.contains("sqlservice.login")),
        "{tokens:#?}"
    );
    drop_iam_user(&admin, user).await;
}

#[tokio::test]
async fn iam_login_with_a_key_file_trades_a_signed_assertion_for_a_token() {
    let db = support::database().await;
    let admin = create_iam_user(&db, IAM_USER).await;
    let google = Google::start(Identity::Legacy, server_port());
    let dir = tempfile::tempdir().unwrap();
    let key_file = google.key_file(dir.path());
    // No user named: it is the key file's service account.
    let url = format!("postgresql:///{}", db.name);
    let mut command = job(&google, &url, &support::seed_dir());
    without_metadata_server(&mut command)
        .env("GOOGLE_APPLICATION_CREDENTIALS", &key_file)
        .env("CLOUD_SQL_IAM_AUTH", "true")
        .arg("up");
    let output = checked(&mut command);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(owner_of_video_requests(&admin).await, IAM_USER);
    let summary = support::events(&output.stderr).pop().unwrap();
    assert_eq!(
        summary["db"],
        format!("{IAM_USER}@{}/{}", google::CONNECTION_NAME, db.name)
    );
    // One exchange at the key's token_uri, cached for the certificate request and the login.
    let exchanges: Vec<_> = google
        .calls("token")
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(exchanges.len(), 1, "{exchanges:#?}");
    let certs = google.calls("generateEphemeralCert");
    assert_eq!(certs[0].json()["access_token"], google::LOGIN_TOKEN);
    // Without a key file, the metadata server's service account (Cloud Run, GKE).
    let other = support::database().await;
    admin
        .batch_execute(&format!(
            "GRANT ALL ON DATABASE \"{}\" TO \"{IAM_USER}\"",
            other.name
        ))
        .await
        .unwrap();
    let url = format!("postgresql:///{}", other.name);
    let output = checked(
        job(&google, &url, &support::seed_dir())
            .env("CLOUD_SQL_IAM_AUTH", "true")
            .arg("status"),
    );
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(google.calls("email").len(), 1);
    // Neither: refused before any connection, naming PGUSER.
    let mut command = job(&google, &url, &support::seed_dir());
    let output = checked(
        without_metadata_server(&mut command)
            .env("CLOUD_SQL_IAM_AUTH", "true")
            .arg("status"),
    );
    assert_eq!(output.code, 2, "{}", output.stderr);
    let summary = support::events(&output.stderr).pop().unwrap();
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("set PGUSER") && message.contains("no answer from the metadata server"),
        "{message}"
    );
    assert!(
        !output.stderr.contains("\"connected\""),
        "{}",
        output.stderr
    );
    drop_iam_user(&admin, IAM_USER).await;
}

#[tokio::test]
async fn a_certificate_about_to_expire_is_replaced_for_the_next_connection() {
    let slow = [("001_slow.sql", "SELECT pg_sleep(2);\n")];
    for (lifetime, expected) in [(3 * 60, 2), (3600, 1)] {
        let db = support::database().await;
        let dir = support::migrations(&slow);
        let google = Google::start(Identity::Legacy, server_port());
        google.behave(|b| b.certificate_lifetime = std::time::Duration::from_secs(lifetime));
        // The progress monitor opens the second connection once the migration runs 100 ms.
        let output = checked(
            job(&google, &connector_url(&db), dir.path())
                .env("DB_MIGRATE_PROGRESS_INTERVAL", "100ms")
                .arg("up"),
        );
        assert_eq!(output.code, 0, "{}", output.stderr);
        let events = support::events(&output.stderr);
        let monitor = events
            .iter()
            .filter(|e| e["message"] == "connected" && e["connection"] == "monitor")
            .count();
        assert_eq!(monitor, 1, "{}", output.stderr);
        assert_eq!(
            google.calls("generateEphemeralCert").len(),
            expected,
            "lifetime {lifetime}s"
        );
    }
}

#[tokio::test]
async fn backup_auto_backs_up_once_before_the_first_migration() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    let output = run(&google, &db, &["up", "--backup", "auto"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    let inserts = google.calls("backupRuns.insert");
    assert_eq!(inserts.len(), 1);
    let description = inserts[0].json()["description"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        description.starts_with("db-migrate before 001_"),
        "{description}"
    );
    assert_eq!(summary(&output)["backup_id"], google::BACKUP_ID);
    let events = support::events(&output.stderr);
    let position = |message: &str| {
        events
            .iter()
            .position(|e| e["message"] == message)
            .unwrap_or_else(|| panic!("no event {message}:\n{}", output.stderr))
    };
    assert!(position("backup done") < position("migration applied"));

    // Nothing pending: no backup.
    let output = run(&google, &db, &["up", "--backup", "auto"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(google.calls("backupRuns.insert").len(), 1);
    assert!(summary(&output).get("backup_id").is_none());
    // always: a backup even so.
    let output = run(&google, &db, &["up", "--backup", "always"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(google.calls("backupRuns.insert").len(), 2);
}

#[tokio::test]
async fn a_failed_backup_stops_the_run_with_exit_8_and_nothing_applied() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    google.behave(|b| b.backup = BackupOutcome::Fails);
    let output = run(&google, &db, &["up", "--backup", "auto"]);
    assert_eq!(output.code, 8, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(message.contains("Backup failed."), "{message}");
    assert!(!has_table(&db, "video_requests").await);

    google.behave(|b| b.backup = BackupOutcome::Hangs);
    let output = run(
        &google,
        &db,
        &["up", "--backup", "auto", "--backup-timeout", "1s"],
    );
    assert_eq!(output.code, 8, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(message.contains("--backup-timeout"), "{message}");
    assert!(!has_table(&db, "video_requests").await);
}

#[tokio::test]
async fn a_plan_that_single_transaction_refuses_is_refused_before_the_backup() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("001_a.sql"), "CREATE TABLE a (i int);\n").unwrap();
    let index = "-- no-transaction\nCREATE INDEX CONCURRENTLY a_i ON a (i);\n";
    std::fs::write(dir.path().join("002_index.sql"), index).unwrap();
    let output = checked(job(&google, &connector_url(&db), dir.path()).args([
        "up",
        "--single-transaction",
        "--backup",
        "auto",
    ]));
    assert_eq!(output.code, 2, "{}", output.stderr);
    assert!(failure_message(&output).contains("migration 2 runs outside a transaction"));
    assert!(google.calls("backupRuns.insert").is_empty());
    assert!(!has_table(&db, "a").await);
}

#[tokio::test]
async fn a_dry_run_never_backs_up() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    let output = run(&google, &db, &["up", "--dry-run", "--backup", "always"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert!(google.calls("backupRuns.insert").is_empty());
}

#[tokio::test]
async fn backup_through_a_direct_connection_uses_the_instance_from_the_flag() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    // The URL names a host: the connection goes there (as through a socket or a proxy),
    // and only the backup goes through the Admin API.
    let output =
        checked(job(&google, &db.url, &support::seed_dir()).args(["up", "--backup", "auto"]));
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(google.calls("backupRuns.insert").len(), 1);
    assert!(google.calls("generateEphemeralCert").is_empty());
    assert_eq!(google.accepted(), 0);
}

#[tokio::test]
async fn cloud_sql_flags_without_an_instance_are_refused() {
    let db = support::database().await;
    for flag in [["--backup", "auto"], ["--ip-type", "private"]] {
        let mut command = support::binary();
        command
            .env("LOG_FORMAT", "json")
            .env("DATABASE_URL", &db.url)
            .env("MIGRATIONS_DIR", support::seed_dir())
            .arg("up")
            .args(flag);
        let output = checked(&mut command);
        assert_eq!(output.code, 2, "{}", output.stderr);
        assert!(output.stderr.contains("--cloudsql-instance"));
    }
    let mut command = support::binary();
    command
        .env("DATABASE_URL", &db.url)
        .env("CLOUD_SQL_INSTANCE", "just-a-name")
        .arg("up");
    let output = checked(&mut command);
    assert_eq!(output.code, 2, "{}", output.stderr);
    assert!(output.stderr.contains("PROJECT:REGION:INSTANCE"));
}

#[tokio::test]
async fn sigterm_cancels_the_running_migration_through_the_connector() {
    let db = support::database().await;
    let dir = support::migrations(&[(
        "001_slow.sql",
        "CREATE TABLE slow_marker (id int);\nSELECT pg_sleep(60);\n",
    )]);
    let google = Google::start(Identity::Legacy, server_port());
    let mut job = support::Running::spawn(job(&google, &connector_url(&db), dir.path()).arg("up"));
    job.wait_for("the migration to start", |e| {
        e["message"] == "connected" && e["connection"] == "migration"
    });
    let watcher = db.client().await;
    support::eventually("the slow migration to be running", || async {
        let rows = watcher
            .query(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()
                 AND state = 'active' AND query LIKE '%pg_sleep(60)%'",
                &[],
            )
            .await
            .unwrap();
        !rows.is_empty()
    })
    .await;
    job.signal("TERM");
    let (code, events) = job.finish();
    assert_eq!(code, Some(143), "{events:#?}");
    // The cancel request went through a tunnel of its own and reached the server.
    assert!(
        !events
            .iter()
            .any(|e| e["message"] == "could not send the cancel request; the server rolls back when the connection closes"),
        "{events:#?}"
    );
    assert!(
        google.accepted() >= 2,
        "no second TLS session for the cancel"
    );
    // Over the certificate the run already had: stopping asks Google for nothing.
    assert_eq!(google.calls("generateEphemeralCert").len(), 1);
    assert!(!has_table(&db, "slow_marker").await);
}

#[tokio::test]
async fn the_tunnel_probes_a_silent_instance_within_30_seconds() {
    let db = support::database().await;
    let dir = support::migrations(&[("001_wait.sql", support::SLEEP)]);
    let google = Google::start(Identity::Legacy, server_port());
    let job = support::Running::spawn(job(&google, &connector_url(&db), dir.path()).arg("up"));
    // tokio-postgres sets keepalives only on sockets it opens; the tunnel's is the connector's.
    support::assert_probes_within_30_seconds(job, &db, google.instance_port).await;
}

#[tokio::test]
async fn a_service_account_key_file_authenticates_the_admin_api() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    let dir = tempfile::tempdir().unwrap();
    let key_file = google.key_file(dir.path());
    // No metadata server: the key file must be what is used.
    let mut command = job(&google, &connector_url(&db), &support::seed_dir());
    without_metadata_server(&mut command)
        .env("GOOGLE_APPLICATION_CREDENTIALS", &key_file)
        .arg("up");
    let output = checked(&mut command);
    assert_eq!(output.code, 0, "{}", output.stderr);
    let settings = google.calls("connectSettings");
    let bearer = settings[0]
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap();
    let claims = google::jwt_claims(bearer).expect("a JWT");
    assert_eq!(claims["iss"], google::SERVICE_ACCOUNT);
    assert!(!output.stderr.contains(bearer));
}

#[tokio::test]
async fn private_service_connect_dials_the_instance_dns_name() {
    let db = support::database().await;
    let google = Google::start(Identity::Psc, server_port());
    let output = run(&google, &db, &["up"]);
    // The default (public, then private) finds neither, and names what there is.
    assert_eq!(output.code, 2, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(message.contains("it has: psc"), "{message}");
    let output = run(&google, &db, &["up", "--ip-type", "psc"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert!(has_table(&db, "video_requests").await);
    assert!(google.accepted() >= 1);
}

#[tokio::test]
async fn an_unreachable_admin_api_is_retried_until_the_connect_timeout() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let output = checked(
        job(&google, &connector_url(&db), &support::seed_dir())
            .env("CLOUD_SQL_ADMIN_ENDPOINT", &closed)
            .env("DB_MIGRATE_CONNECT_TIMEOUT", "2s")
            .arg("up"),
    );
    assert_eq!(output.code, 5, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(message.contains("cannot reach the Admin API"), "{message}");
    assert!(message.contains(&closed), "{message}");
    let retries = retries(&output);
    assert!(retries >= 1, "{}", output.stderr);
}

#[tokio::test]
async fn a_refused_iam_login_fails_at_once_without_the_token_in_output() {
    let db = support::database().await;
    let user = "stranger@test-proj.iam";
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{user}\" LOGIN PASSWORD 'not-the-token'"
        ))
        .await
        .unwrap();
    let google = Google::start(Identity::Legacy, server_port());
    let url = format!("postgresql://stranger%40test-proj.iam@/{}", db.name);
    let output = checked(
        job(&google, &url, &support::seed_dir())
            .env("CLOUD_SQL_IAM_AUTH", "true")
            .arg("up"),
    );
    assert_eq!(output.code, 5, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(message.contains("authentication failed"), "{message}");
    assert_eq!(retries(&output), 0, "{}", output.stderr);
    admin
        .batch_execute(&format!("DROP ROLE \"{user}\""))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_admin_api_over_https_is_trusted_through_the_system_ca_bundle() {
    let db = support::database().await;
    let google = Google::start(Identity::Legacy, server_port());
    let mut command = job(&google, &connector_url(&db), &support::seed_dir());
    let output = checked(google.https(&mut command).args(["up", "--backup", "auto"]));
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(google.calls("generateEphemeralCert").len(), 1);
    assert_eq!(google.calls("backupRuns.insert").len(), 1);
    // Without the CA the endpoint is not trusted: a certificate problem, final at once.
    let mut command = job(&google, &connector_url(&db), &support::seed_dir());
    google.https(&mut command).env_remove("SSL_CERT_FILE");
    let output = checked(
        command
            .env("DB_MIGRATE_CONNECT_TIMEOUT", "1s")
            .arg("status"),
    );
    assert_eq!(output.code, 5, "{}", output.stderr);
    let message = failure_message(&output);
    assert!(message.contains("is not trusted"), "{message}");
    assert_eq!(retries(&output), 0, "{}", output.stderr);
}
