//! TLS to the database by sslmode, against a server of this binary's own that has TLS on and
//! refuses plaintext (but for the superuser's setup connections), with certificates made per
//! run; and against the shared server, which has TLS off.

#[path = "support/certs.rs"]
mod certs;
mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use certs::{ClientFiles, KeyFormat, Pki};
use db_migrate::attempt::certificate_problem;
use db_migrate::connect::tls::{self, Connector};
use db_migrate::connect::{SslMode, TlsSettings};
use support::{SUPERUSER, SUPERUSER_PASSWORD, Server, ServerOptions};

/// The role that logs in with a client certificate instead of a password.
const CERT_USER: &str = "certuser";

struct TlsServer {
    server: Server,
    pki: Pki,
}

/// The TLS server, started on first use and shared by the tests of this binary.
fn tls_server() -> &'static TlsServer {
    static TLS: OnceLock<TlsServer> = OnceLock::new();
    TLS.get_or_init(|| {
        let pki = Pki::new();
        let server = start_tls(
            &pki,
            &[
                format!("hostssl all {CERT_USER} 127.0.0.1/32 cert"),
                // support::database_on sets up databases without TLS, as the superuser.
                format!("hostnossl postgres {SUPERUSER} 127.0.0.1/32 scram-sha-256"),
                "hostnossl all all 127.0.0.1/32 reject".into(),
            ],
        );
        TlsServer { server, pki }
    })
}

fn start_tls(pki: &Pki, hba: &[String]) -> Server {
    support::start(&ServerOptions {
        settings: Pki::server_settings(),
        hba: hba.to_vec(),
        files: pki.server_files(),
    })
}

#[derive(Debug, Clone, Copy)]
enum On {
    /// TLS on, plaintext refused.
    Tls,
    /// The shared server: TLS off.
    Plain,
}

#[derive(Debug, Clone, Copy)]
enum Root {
    None,
    /// The CA that signed the server's certificate.
    Right,
    Wrong,
    Missing,
}

#[derive(Debug, Clone, Copy)]
enum Login {
    Password,
    /// As [`CERT_USER`], with this client certificate (None: without one).
    Certificate(Option<KeyFormat>),
    /// As [`CERT_USER`], with a certificate from a CA the server does not trust.
    UntrustedCertificate,
}

/// One connection attempt through the library, as a deploy would make it.
#[derive(Debug)]
struct Case {
    on: On,
    host: &'static str,
    mode: &'static str,
    root: Root,
    login: Login,
    exit_code: u8,
    /// Part of the error message; empty for success.
    says: &'static str,
}

const fn case(on: On, host: &'static str, mode: &'static str, root: Root) -> Case {
    Case {
        on,
        host,
        mode,
        root,
        login: Login::Password,
        exit_code: 0,
        says: "",
    }
}

impl Case {
    const fn fails(self, exit_code: u8, says: &'static str) -> Case {
        Case {
            exit_code,
            says,
            ..self
        }
    }

    const fn login(self, login: Login) -> Case {
        Case { login, ..self }
    }
}

/// Runs `up` with the seed migrations for each case, checking the exit code and message.
async fn check(cases: &[Case]) {
    for case in cases {
        let tls = tls_server();
        let server = match case.on {
            On::Tls => &tls.server,
            On::Plain => support::server(),
        };
        let db = support::database_on(server).await;
        let files = match case.login {
            Login::Certificate(Some(format)) => tls.pki.client_files(CERT_USER, format),
            Login::UntrustedCertificate => tls.pki.untrusted_client_files(CERT_USER),
            _ => tls.pki.client_files(CERT_USER, KeyFormat::Pkcs8),
        };
        let login = match case.login {
            Login::Password => format!("{SUPERUSER}:{SUPERUSER_PASSWORD}"),
            _ => {
                give_to_cert_user(server, &db.name).await;
                CERT_USER.to_string()
            }
        };
        let url = format!(
            "postgresql://{login}@{host}:{port}/{name}?hostaddr=127.0.0.1&sslmode={mode}{params}",
            host = case.host,
            port = server.port,
            name = db.name,
            mode = case.mode,
            params = tls_params(case, &files),
        );
        // Refusals should come back at once, not after retries; the time is in the message.
        let started = Instant::now();
        let (summary, result) =
            support::run(&support::config(&url, &support::seed_dir(), support::up())).await;
        let took = started.elapsed();
        match result {
            Ok(()) => {
                assert_eq!(case.exit_code, 0, "{case:?} connected in {took:?}");
                assert_eq!(summary.applied, 2, "{case:?}");
            }
            Err(error) => {
                let text = error.to_string();
                assert_eq!(
                    error.exit_code(),
                    case.exit_code,
                    "{case:?} after {took:?}: {text}"
                );
                assert!(text.contains(case.says), "{case:?}: {text}");
            }
        }
    }
}

fn tls_params(case: &Case, files: &ClientFiles) -> String {
    let root = match case.root {
        Root::None => None,
        Root::Right => Some(files.root_cert.clone()),
        Root::Wrong => Some(files.wrong_root_cert.clone()),
        Root::Missing => Some(files.dir.path().join("absent-ca.crt")),
    };
    let mut params = String::new();
    if let Some(root) = root {
        params.push_str(&format!("&sslrootcert={}", root.display()));
    }
    if let Login::Certificate(Some(_)) | Login::UntrustedCertificate = case.login {
        params.push_str(&format!(
            "&sslcert={}&sslkey={}",
            files.cert.display(),
            files.key.display()
        ));
    }
    params
}

/// Creates the certificate role once (tests race for it) and makes it the owner of `database`,
/// so that it may create the seed tables there.
async fn give_to_cert_user(server: &Server, database: &str) {
    let admin = support::connect(&format!("{}/postgres", server.base_url)).await;
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {CERT_USER} LOGIN;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
             ALTER DATABASE \"{database}\" OWNER TO {CERT_USER}"
        ))
        .await
        .expect("create the certificate role");
}

#[tokio::test]
async fn verify_modes_check_the_ca_and_verify_full_also_the_host_name() {
    use On::Tls;
    use Root::{Right, Wrong};
    check(&[
        case(Tls, "localhost", "verify-full", Right),
        case(Tls, "127.0.0.1", "verify-full", Right),
        case(Tls, "localhost", "verify-full", Wrong).fails(5, "not signed by the CA"),
        case(Tls, "wrong.example", "verify-full", Right).fails(5, "wrong.example"),
        case(Tls, "wrong.example", "verify-ca", Right),
        case(Tls, "localhost", "verify-ca", Wrong).fails(5, "not signed by the CA"),
        case(Tls, "wrong.example", "verify-ca", Wrong).fails(5, "not signed by the CA"),
    ])
    .await;
}

#[tokio::test]
async fn require_encrypts_unchecked_but_checks_the_ca_once_given_one() {
    use On::Tls;
    use Root::{None, Right, Wrong};
    check(&[
        case(Tls, "wrong.example", "require", None),
        case(Tls, "wrong.example", "require", Right),
        case(Tls, "localhost", "require", Wrong).fails(5, "not signed by the CA"),
        case(Tls, "wrong.example", "prefer", None),
        case(Tls, "localhost", "prefer", Right),
    ])
    .await;
}

#[tokio::test]
async fn plaintext_goes_only_where_the_mode_and_the_server_allow_it() {
    use On::{Plain, Tls};
    use Root::None;
    check(&[
        case(Plain, "localhost", "require", None).fails(5, "TLS"),
        case(Plain, "localhost", "verify-full", Root::Right).fails(5, "TLS"),
        case(Plain, "localhost", "prefer", None),
        case(Plain, "localhost", "allow", None),
        case(Plain, "localhost", "disable", None),
        case(Tls, "localhost", "disable", None).fails(5, "pg_hba.conf"),
        case(Tls, "localhost", "allow", None),
    ])
    .await;
}

#[tokio::test]
async fn client_certificate_logs_in_without_password_in_every_key_format() {
    use Login::{Certificate, UntrustedCertificate};
    use On::Tls;
    use Root::Right;
    let with = |format| case(Tls, "localhost", "verify-full", Right).login(Certificate(format));
    check(&[
        with(Some(KeyFormat::Pkcs8)),
        with(Some(KeyFormat::Sec1)),
        with(Some(KeyFormat::RsaPkcs1)),
        with(None).fails(5, "certificate"),
        case(Tls, "localhost", "verify-full", Right)
            .login(UntrustedCertificate)
            .fails(5, "certificate"),
    ])
    .await;
}

#[tokio::test]
async fn missing_root_certificate_is_a_config_error_naming_the_file() {
    check(&[
        case(On::Tls, "localhost", "verify-full", Root::Missing).fails(2, "absent-ca.crt"),
        case(On::Tls, "localhost", "require", Root::Missing).fails(2, "sslrootcert"),
    ])
    .await;
}

/// A superuser connection to the `postgres` database of the server on `port`, as `host`
/// but at 127.0.0.1.
fn direct_config(port: u16, host: &str, mode: SslMode) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(port)
        .user(SUPERUSER)
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres")
        .ssl_mode(tls::tokio_mode(mode));
    config
}

fn settings(mode: SslMode, root_cert: Option<&Path>, files: Option<&ClientFiles>) -> TlsSettings {
    TlsSettings {
        mode,
        root_cert: root_cert.map(Path::to_path_buf),
        cert: files.map(|f| f.cert.clone()),
        key: files.map(|f| f.key.clone()),
    }
}

async fn connect(
    config: &tokio_postgres::Config,
    connector: &Connector,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(connector.clone()).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Whether the server sees this connection encrypted, from pg_stat_ssl.
async fn server_sees_tls(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

#[tokio::test]
async fn negotiated_names_the_tls_version_of_the_latest_connection() {
    let tls = tls_server();
    let files = tls.pki.client_files(CERT_USER, KeyFormat::Pkcs8);
    let connector = Connector::new(&settings(SslMode::Prefer, Some(&files.root_cert), None))
        .expect("connector");
    assert_eq!(connector.negotiated(), None, "before any connection");

    let encrypted = direct_config(tls.server.port, "localhost", SslMode::Prefer);
    let client = connect(&encrypted, &connector)
        .await
        .expect("TLS connection");
    assert!(server_sees_tls(&client).await);
    assert_eq!(connector.negotiated().as_deref(), Some("TLSv1.3"));

    let plain = direct_config(support::server().port, "localhost", SslMode::Prefer);
    let client = connect(&plain, &connector)
        .await
        .expect("plaintext connection");
    assert!(!server_sees_tls(&client).await);
    assert_eq!(connector.negotiated(), None, "after a plaintext connection");
}

#[tokio::test]
async fn scram_plus_binds_to_sha256_and_sha384_signed_server_certificates() {
    let p384 = Pki::signed_with(&rcgen::PKCS_ECDSA_P384_SHA384);
    let p384_server = start_tls(&p384, &[]);
    let shared = tls_server();
    for (pki, server) in [(&shared.pki, &shared.server), (&p384, &p384_server)] {
        let files = pki.client_files(CERT_USER, KeyFormat::Pkcs8);
        let connector =
            Connector::new(&settings(SslMode::VerifyFull, Some(&files.root_cert), None))
                .expect("connector");
        let mut config = direct_config(server.port, "localhost", SslMode::VerifyFull);
        config.channel_binding(tokio_postgres::config::ChannelBinding::Require);
        let client = connect(&config, &connector)
            .await
            .unwrap_or_else(|e| panic!("SCRAM-SHA-256-PLUS login failed: {e:?}"));
        assert!(server_sees_tls(&client).await);
    }
}

#[tokio::test]
async fn certificate_problem_says_which_check_failed() {
    let tls = tls_server();
    let trusted = tls.pki.client_files(CERT_USER, KeyFormat::Pkcs8);
    let untrusted = tls.pki.untrusted_client_files(CERT_USER);
    let full = SslMode::VerifyFull;
    let cases = [
        (
            settings(full, Some(&trusted.wrong_root_cert), None),
            "localhost",
            "server certificate is not signed by the CA in sslrootcert",
        ),
        (
            settings(full, Some(&trusted.root_cert), None),
            "wrong.example",
            "server certificate does not name host wrong.example (it names localhost, 127.0.0.1)",
        ),
        (
            settings(full, Some(&trusted.root_cert), Some(&untrusted)),
            "localhost",
            "server rejected the client certificate",
        ),
    ];
    for (settings, host, expected) in cases {
        let connector = Connector::new(&settings).expect("connector");
        let config = direct_config(tls.server.port, host, settings.mode);
        let error = connect(&config, &connector).await.expect_err("refused");
        let problem = certificate_problem(&error);
        assert!(
            problem.as_deref().is_some_and(|p| p.starts_with(expected)),
            "{problem:?} for {error:?}"
        );
    }
    let plain = direct_config(support::server().port, "localhost", SslMode::Require);
    let connector = Connector::new(&settings(SslMode::Require, None, None)).expect("connector");
    let error = connect(&plain, &connector).await.expect_err("no TLS there");
    assert!(
        certificate_problem(&error).is_some_and(|p| p.contains("ssl = off")),
        "{error:?}"
    );
}

#[tokio::test]
async fn sigterm_over_tls_cancels_the_running_statement_before_the_run_exits() {
    // The cancel request goes over TLS as the run's connection does, and is held open until
    // the server closes it.
    let tls = tls_server();
    let db = support::database_on(&tls.server).await;
    let files = tls.pki.client_files(CERT_USER, KeyFormat::Pkcs8);
    let url = format!(
        "postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@localhost:{}/{}?hostaddr=127.0.0.1\
         &sslmode=verify-full&sslrootcert={}",
        tls.server.port,
        db.name,
        files.root_cert.display()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("001_sleep.sql"), "SELECT pg_sleep(60);\n").unwrap();
    // The superuser may watch only from the postgres database without TLS.
    let watcher = support::connect(&format!("{}/postgres", tls.server.base_url)).await;
    let events = support::sigterm_while_sleeping(&url, dir.path(), &watcher, &db.name).await;
    let warned = (events.iter()).any(|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("cancel request"))
    });
    assert!(!warned, "{events:#?}");
}

/// The pid the server announces at login is read back whatever the sslmode, so a run over TLS
/// sets its session up without a round trip before, as a plaintext one does.
#[tokio::test]
async fn the_pid_the_server_announced_is_known_over_tls_in_every_mode() {
    let tls = tls_server();
    let files = tls.pki.client_files(CERT_USER, KeyFormat::Pkcs8);
    for mode in [SslMode::Prefer, SslMode::Require, SslMode::VerifyFull] {
        let connector =
            Connector::new(&settings(mode, Some(&files.root_cert), None)).expect("connector");
        let config = direct_config(tls.server.port, "localhost", mode);
        let client = connect(&config, &connector).await.expect("TLS connection");
        assert!(server_sees_tls(&client).await);
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let announced = db_migrate::connect::announced_pid(&client.cancel_token()).await;
        assert_eq!(announced, Some(pid), "{mode:?}");
    }
}
