//! Local stand-ins for Google's side of Cloud SQL, speaking the real wire formats, so the
//! product's own code (google-cloud-auth, google-cloud-sql-v1, the connector) runs unchanged,
//! pointed here by the endpoint settings Google's libraries honour:
//!
//! - the metadata server's token endpoint (`GCE_METADATA_HOST`), as on Cloud Run and GKE;
//! - the Cloud SQL Admin API v1 (`CLOUD_SQL_ADMIN_ENDPOINT`): `connectSettings`,
//!   `generateEphemeralCert` (signing the posted public key with the instance's client CA),
//!   `backupRuns.insert` and `operations.get`, in JSON as the generated client asks for it
//!   (`$alt=json;enum-encoding=int`);
//! - the instance (`CLOUD_SQL_PORT`): a TLS 1.3 listener that requires a client certificate
//!   from the client CA, presents a server certificate of the legacy (CN `project:instance`)
//!   or CAS (DNS SAN) kind, and forwards the decrypted stream to the test PostgreSQL.
//!
//! Every HTTP request is recorded for the tests to inspect.

// tests/support/ca.rs: a file compiled through `#[path]` finds its submodules beside it.
mod ca;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

pub const PROJECT: &str = "test-proj";
pub const REGION: &str = "europe-west1";
pub const INSTANCE: &str = "videos";
pub const CONNECTION_NAME: &str = "test-proj:europe-west1:videos";
/// The name a CAS-based instance's certificate carries, as connectSettings gives it.
pub const DNS_NAME: &str = "1a2b3c4d5e6f.1a2b3c4d5e6f.europe-west1.sql.goog.";
/// What the metadata server hands out: for the Admin API, and for IAM database login.
pub const ADMIN_TOKEN: &str = "ya29.admin-token-sentinel-3f9c";
pub const LOGIN_TOKEN: &str = "ya29.login-token-sentinel-81d2";
/// The service account of key-file credentials.
pub const SERVICE_ACCOUNT: &str = "migrator@test-proj.iam.gserviceaccount.com";
/// The operation's backup id the stand-in reports.
pub const BACKUP_ID: &str = "1700000000123";

/// How the instance's server certificate names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Per-instance CA: CN `PROJECT:INSTANCE`, no SAN.
    Legacy,
    /// CAS-based CA: the DNS name in the SAN, some other CN.
    Cas,
    /// A certificate from the right CA for another instance (`PROJECT:other`).
    OtherInstance,
    /// Private Service Connect only: no IP addresses, and a DNS name (`localhost` here) that
    /// the consumer network resolves to the endpoint and the certificate carries.
    Psc,
}

impl Identity {
    /// `dnsName` in connectSettings, with the trailing dot the API writes.
    fn dns_name(self) -> &'static str {
        match self {
            Identity::Cas => DNS_NAME,
            Identity::Psc => "localhost.",
            Identity::Legacy | Identity::OtherInstance => "",
        }
    }
}

/// What the backup operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupOutcome {
    /// PENDING at insert, DONE at the first poll.
    Succeeds,
    /// DONE with an error.
    Fails,
    /// Never finishes.
    Hangs,
}

/// What the Admin API stand-in answers; tests change it before a run.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub region: String,
    /// (type, address): 1 PRIMARY (public), 3 PRIVATE.
    pub ip_addresses: Vec<(i32, String)>,
    pub psc_enabled: bool,
    /// `expirationTime` of issued certificates, from now.
    pub certificate_lifetime: Duration,
    /// Sign ephemeral certificates with a CA the instance does not trust.
    pub sign_with_unknown_ca: bool,
    /// Failures to answer instead, in order, per call: (call, HTTP status, gRPC status).
    pub failures: Vec<(&'static str, u16, &'static str)>,
    pub backup: BackupOutcome,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            region: REGION.into(),
            ip_addresses: vec![(1, "127.0.0.1".into())],
            psc_enabled: false,
            certificate_lifetime: Duration::from_secs(3600),
            sign_with_unknown_ca: false,
            failures: Vec::new(),
            backup: BackupOutcome::Succeeds,
        }
    }
}

/// One HTTP request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The Admin API call this is, by path.
    pub fn call(&self) -> &'static str {
        let p = &self.path;
        match () {
            _ if p.ends_with("/connectSettings") => "connectSettings",
            _ if p.ends_with(":generateEphemeralCert") => "generateEphemeralCert",
            _ if p.ends_with("/backupRuns") => "backupRuns.insert",
            _ if p.contains("/operations/") => "operations.get",
            _ if p.ends_with("/token") => "token",
            _ if p.ends_with("/service-accounts/default/email") => "email",
            _ => "other",
        }
    }
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Request>>,
    server_ca: String,
    client_ca: Issuer<'static, KeyPair>,
    unknown_ca: Issuer<'static, KeyPair>,
    /// TLS sessions the instance accepted, and handshakes it refused.
    accepted: AtomicUsize,
    refused: Mutex<Vec<String>>,
}

/// The stand-ins for one test, on ports of their own.
pub struct Google {
    /// The Admin API and the metadata server, on one HTTP port.
    pub http_port: u16,
    /// The Admin API over HTTPS, as Google serves it, with a certificate for 127.0.0.1 from
    /// the CA in `https_ca`.
    pub https_port: u16,
    https_ca: PathBuf,
    pub instance_port: u16,
    shared: Arc<Shared>,
    home: tempfile::TempDir,
}

impl Google {
    /// Starts the stand-ins; the instance forwards to PostgreSQL on `127.0.0.1:pg_port`.
    pub fn start(identity: Identity, pg_port: u16) -> Google {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (server_ca_pem, server_ca) = authority("Google Cloud SQL Server CA");
        let (client_ca_pem, client_ca) = authority("Google Cloud SQL Client CA");
        let (_, unknown_ca) = authority("some other CA");
        let server_key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        match identity {
            Identity::Legacy => params
                .distinguished_name
                .push(DnType::CommonName, format!("{PROJECT}:{INSTANCE}")),
            Identity::OtherInstance => params
                .distinguished_name
                .push(DnType::CommonName, format!("{PROJECT}:other")),
            Identity::Cas | Identity::Psc => {
                params
                    .distinguished_name
                    .push(DnType::CommonName, "Google Cloud SQL Server");
                params.subject_alt_names = vec![SanType::DnsName(
                    identity
                        .dns_name()
                        .trim_end_matches('.')
                        .try_into()
                        .expect("DNS name"),
                )];
            }
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params.signed_by(&server_key, &server_ca).expect("sign");
        let mut behaviour = Behaviour::default();
        if identity == Identity::Psc {
            behaviour.ip_addresses.clear();
            behaviour.psc_enabled = true;
        }
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(behaviour),
            requests: Mutex::new(Vec::new()),
            server_ca: server_ca_pem,
            client_ca,
            unknown_ca,
            accepted: AtomicUsize::new(0),
            refused: Mutex::new(Vec::new()),
        });
        let http = TcpListener::bind("127.0.0.1:0").expect("bind HTTP stand-in");
        let http_port = http.local_addr().expect("addr").port();
        let state = shared.clone();
        std::thread::spawn(move || {
            for stream in http.incoming().map_while(Result::ok) {
                let state = state.clone();
                std::thread::spawn(move || serve_http(stream, &state, identity));
            }
        });
        let home = tempfile::tempdir().expect("tempdir");
        let (https_port, https_ca) = start_https(&shared, identity, home.path());
        let instance_port = start_instance(
            &shared,
            server_cert.pem(),
            server_key.serialize_pem(),
            &client_ca_pem,
            pg_port,
        );
        Google {
            http_port,
            https_port,
            https_ca,
            instance_port,
            shared,
            home,
        }
    }

    /// Points `command` at the stand-ins, as a deploy points the job at Google.
    pub fn env<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command
            .env("CLOUD_SQL_INSTANCE", CONNECTION_NAME)
            .env(
                "CLOUD_SQL_ADMIN_ENDPOINT",
                format!("http://127.0.0.1:{}", self.http_port),
            )
            .env("CLOUD_SQL_PORT", self.instance_port.to_string())
            .env("GCE_METADATA_HOST", format!("127.0.0.1:{}", self.http_port))
            // No gcloud credentials of the machine's own may be found instead.
            .env("HOME", self.home.path())
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
    }

    /// Points the Admin API at the HTTPS listener, trusting its CA through SSL_CERT_FILE, as
    /// the system's CA bundle would be read in the image.
    pub fn https<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command
            .env(
                "CLOUD_SQL_ADMIN_ENDPOINT",
                format!("https://127.0.0.1:{}", self.https_port),
            )
            .env("SSL_CERT_FILE", &self.https_ca)
    }

    pub fn behave(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.shared.behaviour.lock().unwrap());
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The Admin API (or token) requests of one kind.
    pub fn calls(&self, call: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.call() == call)
            .collect()
    }

    /// TLS sessions the instance accepted.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Why the instance refused handshakes.
    pub fn refused(&self) -> Vec<String> {
        self.shared.refused.lock().unwrap().clone()
    }
}

fn authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    ca::authority(name, &rcgen::PKCS_ECDSA_P256_SHA256)
}

fn serve_http(mut stream: impl Read + Write, shared: &Shared, identity: Identity) {
    let Some(request) = read_request(&mut stream) else {
        return;
    };
    shared.requests.lock().unwrap().push(request.clone());
    let (status, body) = respond(&request, shared, identity);
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Error",
    };
    let content_type = match request.path.starts_with("/computeMetadata/") && status == 200 {
        true if request.path.ends_with("/universe-domain") => "application/text",
        _ => "application/json",
    };
    let reply = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\nmetadata-flavor: Google\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.flush();
}

fn read_request(stream: &mut impl Read) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        query,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn google_error(status: u16, code: &str, message: &str) -> (u16, String) {
    let body = json!({"error": {"code": status, "message": message, "status": code}});
    (status, body.to_string())
}

fn respond(request: &Request, shared: &Shared, identity: Identity) -> (u16, String) {
    let path = request.path.as_str();
    if let Some(rest) = path.strip_prefix("/computeMetadata/v1/") {
        if request.header("metadata-flavor") != Some("Google") {
            return (403, "missing Metadata-Flavor: Google".into());
        }
        return match rest {
            "instance/service-accounts/default/token" => {
                let token = match request.query.contains("sqlservice.login") {
                    true => LOGIN_TOKEN,
                    false => ADMIN_TOKEN,
                };
                let body =
                    json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"});
                (200, body.to_string())
            }
            "universe/universe-domain" => (200, "googleapis.com".into()),
            "instance/service-accounts/default/email" => (200, SERVICE_ACCOUNT.into()),
            _ => (404, "not found".into()),
        };
    }
    if path == "/token" && request.method == "POST" {
        return token_exchange(request);
    }
    let bearer = request
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    // A metadata-server token, or the self-signed JWT google-cloud-auth makes from a
    // service-account key file (its signature is not checked here).
    let key_file_jwt = jwt_claims(bearer).is_some_and(|c| c["iss"] == SERVICE_ACCOUNT);
    if bearer != ADMIN_TOKEN && !key_file_jwt {
        return google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        );
    }
    let call = request.call();
    let mut behaviour = shared.behaviour.lock().unwrap();
    if let Some(at) = behaviour.failures.iter().position(|(c, _, _)| *c == call) {
        let (_, status, code) = behaviour.failures.remove(at);
        return google_error(status, code, &format!("stand-in {call} answers {status}"));
    }
    let instance_prefix = format!("/v1/projects/{PROJECT}/instances/{INSTANCE}");
    let operations_prefix = format!("/v1/projects/{PROJECT}/operations/");
    if !path.starts_with(&instance_prefix) && !path.starts_with(&operations_prefix) {
        return google_error(404, "NOT_FOUND", "The Cloud SQL instance does not exist.");
    }
    match (request.method.as_str(), call) {
        ("GET", "connectSettings") => {
            let ips: Vec<Value> = behaviour
                .ip_addresses
                .iter()
                .map(|(kind, ip)| json!({"type": kind, "ipAddress": ip}))
                .collect();
            let body = json!({
                "kind": "sql#connectSettings",
                "serverCaCert": {"kind": "sql#sslCert", "cert": shared.server_ca, "instance": INSTANCE,
                                 "commonName": "C=US,O=Google\\, Inc,CN=Google Cloud SQL Server CA",
                                 "expirationTime": "2034-01-01T00:00:00.000Z"},
                "ipAddresses": ips,
                "region": behaviour.region,
                "databaseVersion": 172,
                "backendType": 2,
                "pscEnabled": behaviour.psc_enabled,
                "dnsName": identity.dns_name(),
                "serverCaMode": if identity.dns_name().is_empty() { 1 } else { 2 },
            });
            (200, body.to_string())
        }
        ("POST", "generateEphemeralCert") => {
            let posted = request.json();
            let Some(public_key) = posted["public_key"].as_str() else {
                return google_error(400, "INVALID_ARGUMENT", "public_key is required");
            };
            let Ok(spki) = rcgen::SubjectPublicKeyInfo::from_pem(public_key) else {
                return google_error(
                    400,
                    "INVALID_ARGUMENT",
                    "public_key is not a PEM public key",
                );
            };
            let mut params = CertificateParams::new(Vec::new()).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{PROJECT}:{INSTANCE}"));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let issuer = match behaviour.sign_with_unknown_ca {
                true => &shared.unknown_ca,
                false => &shared.client_ca,
            };
            let cert = params.signed_by(&spki, issuer).expect("sign ephemeral");
            let expires = SystemTime::now() + behaviour.certificate_lifetime;
            let body = json!({"ephemeralCert": {
                "kind": "sql#sslCert", "cert": cert.pem(), "instance": INSTANCE,
                "commonName": format!("{PROJECT}:{INSTANCE}"),
                "expirationTime": rfc3339(expires),
            }});
            (200, body.to_string())
        }
        ("POST", "backupRuns.insert") => {
            let status = match behaviour.backup {
                BackupOutcome::Succeeds | BackupOutcome::Hangs => 1,
                BackupOutcome::Fails => 3,
            };
            (200, operation("op-backup-1", status, behaviour.backup))
        }
        ("GET", "operations.get") => {
            let status = match behaviour.backup {
                BackupOutcome::Hangs => 2,
                _ => 3,
            };
            (200, operation("op-backup-1", status, behaviour.backup))
        }
        _ => google_error(404, "NOT_FOUND", "no such method"),
    }
}

/// The OAuth2 token endpoint of a key file's `token_uri`: a JWT-bearer grant (RFC 7523) for
/// the service account gets the login token.
fn token_exchange(request: &Request) -> (u16, String) {
    let form: Vec<(&str, &str)> = request
        .body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let field = |name: &str| form.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let grant = field("grant_type");
    let claims = field("assertion").and_then(jwt_claims);
    let error = |description: &str| {
        let body = json!({"error": "invalid_grant", "error_description": description});
        (400, body.to_string())
    };
    if grant != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
        return error("unsupported grant_type");
    }
    let Some(claims) = claims else {
        return error("no assertion");
    };
    if claims["iss"] != SERVICE_ACCOUNT
        || !claims["aud"]
            .as_str()
            .is_some_and(|a| a.ends_with("/token"))
    {
        return error("Invalid JWT: iss or aud");
    }
    let token = match claims["scope"]
        .as_str()
        .unwrap_or_default()
        .contains("sqlservice.login")
    {
        true => LOGIN_TOKEN,
        false => ADMIN_TOKEN,
    };
    let body = json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"});
    (200, body.to_string())
}

/// The claims of a JWT, unverified.
pub fn jwt_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&base64url(payload)?).ok()
}

fn base64url(text: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().take_while(|&c| c != b'=') {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

/// A service-account key file for [`SERVICE_ACCOUNT`] with a fresh RSA key, whose
/// `token_uri` is this stand-in.
impl Google {
    pub fn key_file(&self, dir: &std::path::Path) -> std::path::PathBuf {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
        let pem = key.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8");
        let file = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "0123456789abcdef",
            "private_key": pem.as_str(),
            "client_email": SERVICE_ACCOUNT,
            "client_id": "100000000000000000001",
            "token_uri": format!("http://127.0.0.1:{}/token", self.http_port),
        });
        let path = dir.join("key.json");
        std::fs::write(&path, file.to_string()).expect("write key file");
        path
    }
}

/// A sqladmin `Operation` for an on-demand backup (type 9, BACKUP_VOLUME).
fn operation(name: &str, status: i32, outcome: BackupOutcome) -> String {
    let mut body = json!({
        "kind": "sql#operation",
        "targetLink": format!("https://sqladmin.googleapis.com/v1/projects/{PROJECT}/instances/{INSTANCE}"),
        "status": status,
        "user": "migrator@test-proj.iam.gserviceaccount.com",
        "insertTime": "2026-11-24T00:00:00.000Z",
        "operationType": 9,
        "name": name,
        "targetId": INSTANCE,
        "selfLink": format!("https://sqladmin.googleapis.com/v1/projects/{PROJECT}/operations/{name}"),
        "targetProject": PROJECT,
        "backupContext": {"kind": "sql#backupContext", "backupId": BACKUP_ID},
    });
    if status == 3 && outcome == BackupOutcome::Fails {
        body["error"] = json!({"kind": "sql#operationErrors", "errors": [
            {"kind": "sql#operationError", "code": "INTERNAL_ERROR", "message": "Backup failed."}
        ]});
    }
    body.to_string()
}

/// `2026-11-24T12:34:56Z`.
fn rfc3339(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The Admin API over TLS, one thread a connection; returns the port and the CA's file.
fn start_https(shared: &Arc<Shared>, identity: Identity, dir: &Path) -> (u16, PathBuf) {
    let (ca_pem, ca) = authority("Admin API test CA");
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let cert = params.signed_by(&key, &ca).expect("sign");
    let chain = vec![cert.der().clone()];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("HTTPS config");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind HTTPS stand-in");
    let port = listener.local_addr().expect("addr").port();
    let shared = shared.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            let (shared, config) = (shared.clone(), config.clone());
            std::thread::spawn(move || {
                let Ok(connection) = rustls::ServerConnection::new(config) else {
                    return;
                };
                serve_http(rustls::StreamOwned::new(connection, tcp), &shared, identity);
            });
        }
    });
    let path = dir.join("admin-ca.pem");
    std::fs::write(&path, ca_pem).expect("write CA");
    (port, path)
}

/// The instance's TLS listener, on a runtime of its own so that it serves while the test
/// waits for the binary.
fn start_instance(
    shared: &Arc<Shared>,
    cert_pem: String,
    key_pem: String,
    client_ca_pem: &str,
    pg_port: u16,
) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(cert.expect("client CA")).expect("add client CA");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("server chain");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("server key");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind instance stand-in");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let shared = shared.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            shared.refused.lock().unwrap().push(e.to_string());
                            return;
                        }
                    };
                    shared.accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut pg) = tokio::net::TcpStream::connect(("127.0.0.1", pg_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut pg).await;
                });
            }
        });
    });
    port
}
