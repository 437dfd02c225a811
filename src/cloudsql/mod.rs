//! Cloud SQL without a proxy: the instance's address and CA from the Admin API, a short-lived
//! client certificate for a key made in memory, mutual TLS straight to the instance, and the
//! PostgreSQL protocol inside it, as Google's own connectors do.
//!
//! Nothing here is built until a run needs it: a plain `DATABASE_URL` run never initialises
//! credentials or an HTTP client.

mod backup;
mod certificates;
mod key_file;

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use google_cloud_auth::credentials::{
    AccessTokenCredentials, Builder as CredentialsBuilder, Credentials,
};
use google_cloud_gax::client_builder::ClientBuilder;
use google_cloud_gax::error::Error as ApiError;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_sql_v1::client::SqlConnectService;
use google_cloud_sql_v1::model;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_postgres::{CancelToken, Client};
use tracing::{debug, info};

use crate::attempt::{self, Failure};
use crate::error::{Error, causes};
use certificates::{ClientKey, client_config, make_key};
use key_file::KeyFileLogin;

/// The scope of the token that is the password of an IAM database login.
const LOGIN_SCOPE: &str = "https://www.googleapis.com/auth/sqlservice.login";

/// A certificate with less than this left is replaced before the next connection.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(4 * 60);

/// The port an instance's connector listener serves.
pub const DEFAULT_PORT: u16 = 3307;

/// How long one Admin API or metadata-server request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `PROJECT:REGION:INSTANCE`; the project may carry a domain (`example.com:project`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub project: String,
    pub region: String,
    pub name: String,
}

impl FromStr for Instance {
    type Err = String;

    fn from_str(text: &str) -> Result<Instance, String> {
        let mut parts = text.rsplitn(3, ':');
        let (name, region, project) = (parts.next(), parts.next(), parts.next());
        match (project, region, name) {
            (Some(p), Some(r), Some(n)) if !p.is_empty() && !r.is_empty() && !n.is_empty() => {
                Ok(Instance {
                    project: p.to_string(),
                    region: r.to_string(),
                    name: n.to_string(),
                })
            }
            _ => Err(format!(
                "\"{text}\" is not a Cloud SQL connection name; use PROJECT:REGION:INSTANCE as `gcloud sql instances describe INSTANCE --format='value(connectionName)'` prints it"
            )),
        }
    }
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.project, self.region, self.name)
    }
}

/// Which of the instance's addresses to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpType {
    Public,
    Private,
    Psc,
}

impl IpType {
    fn as_str(self) -> &'static str {
        match self {
            IpType::Public => "public",
            IpType::Private => "private",
            IpType::Psc => "psc",
        }
    }
}

/// What the flags say about Cloud SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub instance: Instance,
    /// `None`: public, then private.
    pub ip_type: Option<IpType>,
    pub iam_auth: bool,
    /// The Admin API's base URL; `None` is Google's.
    pub admin_endpoint: Option<String>,
    /// The port the instance's connector listener serves.
    pub port: u16,
    /// `GOOGLE_APPLICATION_CREDENTIALS`, for IAM login with a service-account key file.
    pub key_file: Option<std::path::PathBuf>,
}

/// The run's way to Cloud SQL: shared by every connection (the migration's, the monitor's,
/// a cancel request) and by the backup, so credentials and certificate are fetched once.
#[derive(Debug)]
pub struct Connector {
    pub options: Options,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    google: Option<Google>,
    key: Option<Arc<ClientKey>>,
    tunnel: Option<Arc<Tunnel>>,
}

/// Credentials and Admin API clients, built on first use.
#[derive(Debug, Clone)]
struct Google {
    credentials: AccessTokenCredentials,
    login: Option<Login>,
    connect: SqlConnectService,
}

/// Where the IAM login token comes from.
#[derive(Debug, Clone)]
enum Login {
    Credentials(AccessTokenCredentials),
    KeyFile(Arc<KeyFileLogin>),
}

/// Where the instance listens: an IP address, or (Private Service Connect) the DNS name the
/// consumer network resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dial {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dial::Ip(ip) => ip.fmt(f),
            Dial::Name(name) => f.write_str(name),
        }
    }
}

/// Everything needed to open TLS to the instance, valid until `expires`.
#[derive(Debug)]
struct Tunnel {
    tls: Arc<rustls::ClientConfig>,
    address: Dial,
    server_name: ServerName<'static>,
    expires: SystemTime,
}

impl Connector {
    pub fn new(options: Options) -> Connector {
        Connector {
            options,
            state: Mutex::new(State::default()),
        }
    }

    fn instance(&self) -> String {
        self.options.instance.to_string()
    }

    /// Opens a PostgreSQL session through mutual TLS to the instance.
    pub async fn open(&self, pg: &tokio_postgres::Config) -> Result<Client, Failure> {
        let tunnel = self.tunnel().await?;
        let stream = self
            .tls_stream(&tunnel, pg.get_connect_timeout().copied(), Some(pg))
            .await?;
        let mut pg = pg.clone();
        // The TLS is ours: tokio-postgres must not ask the server for it again inside.
        pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
        if self.options.iam_auth {
            pg.password(self.login_token().await?);
        }
        let (client, connection) = pg
            .connect_raw(stream, tokio_postgres::NoTls)
            .await
            .map_err(|e| attempt::failure(self.target(&pg), e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(error = %error, "connection closed");
            }
        });
        Ok(client)
    }

    /// `user@PROJECT:REGION:INSTANCE/database`.
    pub fn target(&self, pg: &tokio_postgres::Config) -> String {
        let user = pg.get_user().unwrap_or("?");
        let database = pg.get_dbname().unwrap_or(user);
        format!("{user}@{}/{database}", self.options.instance)
    }

    /// Sends the cancel request for `token`'s session through the same kind of tunnel.
    pub async fn cancel(&self, token: &CancelToken) -> Result<(), String> {
        let tunnel = self.tunnel().await.map_err(|f| f.error.to_string())?;
        let stream = self
            .tls_stream(&tunnel, Some(Duration::from_secs(5)), None)
            .await
            .map_err(|f| f.error.to_string())?;
        token
            .cancel_query_raw(stream, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())
    }

    /// The password of an IAM database login: an OAuth2 token with the login scope.
    pub async fn login_token(&self) -> Result<String, Failure> {
        let google = self.google().await?;
        self.login(&google).await
    }

    async fn login(&self, google: &Google) -> Result<String, Failure> {
        match &google.login {
            Some(Login::Credentials(credentials)) => self.token(credentials).await,
            Some(Login::KeyFile(key_file)) => {
                key_file
                    .token()
                    .await
                    .map_err(|(reason, transient)| Failure {
                        error: self.error("getting the IAM login token", reason),
                        transient,
                    })
            }
            None => self.token(&google.credentials).await,
        }
    }

    async fn token(&self, credentials: &AccessTokenCredentials) -> Result<String, Failure> {
        let fetched = tokio::time::timeout(REQUEST_TIMEOUT, credentials.access_token()).await;
        match fetched {
            Ok(Ok(token)) => Ok(token.token),
            // GKE's metadata server takes a few seconds to serve a new pod, so a refused or
            // failed fetch is retried; a metadata host whose name does not resolve means the
            // job is not on Google Cloud, which no retry mends.
            Ok(Err(error)) if unresolved(&error) => Err(Failure::fatal(self.error(
                "getting Google credentials",
                format!(
                    "none found: no key file, no gcloud credentials, and the metadata server's name (metadata.google.internal, or GCE_METADATA_HOST) does not resolve; {}",
                    credentials_hint()
                ),
            ))),
            Ok(Err(error)) => Err(Failure {
                transient: error.is_transient(),
                error: self.error(
                    "getting Google credentials",
                    format!("{}; {}", deepest(&error), credentials_hint()),
                ),
            }),
            Err(_) => Err(Failure {
                error: self.error(
                    "getting Google credentials",
                    format!(
                        "no token within {}s; {}",
                        REQUEST_TIMEOUT.as_secs(),
                        credentials_hint()
                    ),
                ),
                transient: true,
            }),
        }
    }

    fn error(&self, step: &'static str, reason: String) -> Error {
        Error::CloudSql {
            instance: self.instance(),
            step,
            reason,
        }
    }

    /// What every Admin API client shares: the credentials, the endpoint, a timeout for each
    /// request, and no retries of its own: the connect loop retries within
    /// `--connect-timeout`, the backup poll within `--backup-timeout`, and an insert must not
    /// be sent twice.
    fn admin<F>(
        &self,
        builder: ClientBuilder<F, Credentials>,
        credentials: &Credentials,
    ) -> ClientBuilder<F, Credentials> {
        let builder = builder
            .with_credentials(credentials.clone())
            .with_retry_policy(NeverRetry)
            .with_attempt_timeout(REQUEST_TIMEOUT);
        match &self.options.admin_endpoint {
            Some(endpoint) => builder.with_endpoint(endpoint),
            None => builder,
        }
    }

    /// Credentials and the Admin client, built once per run. The check that a token can be
    /// had comes first so that missing credentials fail at once with advice, instead of
    /// inside the API client's retries.
    async fn google(&self) -> Result<Google, Failure> {
        let mut state = self.state.lock().await;
        if let Some(google) = &state.google {
            return Ok(google.clone());
        }
        // The Google crates use rustls without choosing a provider; ring is the project's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let build = |scopes: Option<&str>| {
            let builder = CredentialsBuilder::default();
            let builder = match scopes {
                Some(scope) => builder.with_scopes([scope]),
                None => builder,
            };
            builder.build_access_token_credentials().map_err(|e| {
                Failure::fatal(self.error(
                    "loading Google credentials",
                    format!("{}; {}", deepest(&e), credentials_hint()),
                ))
            })
        };
        let credentials = build(None)?;
        self.token(&credentials).await?;
        let key_file = match (&self.options.key_file, self.options.iam_auth) {
            (Some(path), true) => KeyFileLogin::load(path).map_err(|reason| {
                Failure::fatal(self.error("reading GOOGLE_APPLICATION_CREDENTIALS", reason))
            })?,
            _ => None,
        };
        let login = match (self.options.iam_auth, key_file) {
            (false, _) => None,
            (true, Some(key_file)) => Some(Login::KeyFile(Arc::new(key_file))),
            (true, None) => Some(Login::Credentials(build(Some(LOGIN_SCOPE))?)),
        };
        let admin = Credentials::from(credentials.clone());
        let builder = self.admin(SqlConnectService::builder(), &admin);
        let connect = builder.build().await.map_err(|e| {
            Failure::fatal(self.error("building the Admin API client", deepest(&e)))
        })?;
        let google = Google {
            credentials,
            login,
            connect,
        };
        state.google = Some(google.clone());
        Ok(google)
    }

    /// The current tunnel, or a fresh one when there is none or its certificate is about
    /// to expire.
    async fn tunnel(&self) -> Result<Arc<Tunnel>, Failure> {
        let google = self.google().await?;
        let mut state = self.state.lock().await;
        if let Some(tunnel) = &state.tunnel {
            let left = tunnel
                .expires
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            if left > REFRESH_BEFORE {
                return Ok(tunnel.clone());
            }
            info!(
                instance = %self.options.instance,
                seconds_left = left.as_secs(),
                "client certificate about to expire; fetching a new one"
            );
        }
        let key = match &state.key {
            Some(key) => key.clone(),
            None => {
                let key = Arc::new(make_key().map_err(|reason| {
                    Failure::fatal(self.error("making the client key", reason))
                })?);
                state.key = Some(key.clone());
                key
            }
        };
        let tunnel = Arc::new(self.fetch(&google, &key).await?);
        state.tunnel = Some(tunnel.clone());
        Ok(tunnel)
    }

    /// Asks the Admin API for the instance's settings and a certificate for `key`, at once.
    async fn fetch(&self, google: &Google, key: &ClientKey) -> Result<Tunnel, Failure> {
        let Instance { project, name, .. } = &self.options.instance;
        // Not `login_token()`: the caller holds the state lock it would take again.
        let token = match &google.login {
            Some(_) => Some(self.login(google).await?),
            None => None,
        };
        let settings = google
            .connect
            .get_connect_settings()
            .set_project(project)
            .set_instance(name)
            .send();
        let mut request = google
            .connect
            .generate_ephemeral_cert()
            .set_project(project)
            .set_instance(name)
            .set_public_key(key.public_pem.clone());
        if let Some(token) = token {
            request = request.set_access_token(token);
        }
        let (settings, certificate) = tokio::join!(settings, request.send());
        let settings = settings.map_err(|e| self.api_failure("connectSettings", &e))?;
        let certificate = certificate
            .map_err(|e| self.api_failure("generateEphemeralCert", &e))?
            .ephemeral_cert
            .ok_or_else(|| {
                Failure::fatal(self.error(
                    "generateEphemeralCert",
                    "the reply holds no certificate".into(),
                ))
            })?;
        self.tunnel_to(&settings, &certificate, key)
    }

    /// The tunnel the instance's settings and a certificate for `key` make.
    fn tunnel_to(
        &self,
        settings: &model::ConnectSettings,
        certificate: &model::SslCert,
        key: &ClientKey,
    ) -> Result<Tunnel, Failure> {
        let (address, dns_name) = self.address(settings)?;
        let expires = certificate
            .expiration_time
            .as_ref()
            .and_then(|t| u64::try_from(t.seconds()).ok())
            .map_or(SystemTime::now() + Duration::from_secs(3600), |s| {
                UNIX_EPOCH + Duration::from_secs(s)
            });
        let ca = settings
            .server_ca_cert
            .as_ref()
            .map(|c| c.cert.as_str())
            .unwrap_or_default();
        let Instance { project, name, .. } = &self.options.instance;
        let expected_cn = format!("{project}:{name}");
        let setting_up = |reason: String| Failure::fatal(self.error("setting up TLS", reason));
        let tls = client_config(
            ca,
            &expected_cn,
            dns_name.as_deref(),
            &certificate.cert,
            key,
        )
        .map_err(setting_up)?;
        // SNI carries the instance's DNS name when it has one; an IP address sends none.
        let server_name = match (&dns_name, &address) {
            (None, Dial::Ip(ip)) => ServerName::IpAddress((*ip).into()),
            (Some(name), _) | (None, Dial::Name(name)) => ServerName::try_from(name.clone())
                .map_err(|e| setting_up(format!("DNS name {name}: {e}")))?,
        };
        let seconds_left = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs();
        info!(
            instance = %self.options.instance,
            address = %address,
            ca_mode = settings.server_ca_mode.name().unwrap_or("?"),
            certificate_seconds_left = seconds_left,
            "Cloud SQL client certificate issued"
        );
        Ok(Tunnel {
            tls: Arc::new(tls),
            address,
            server_name,
            expires,
        })
    }

    /// The address to dial and the DNS name the server's certificate may carry.
    fn address(
        &self,
        settings: &model::ConnectSettings,
    ) -> Result<(Dial, Option<String>), Failure> {
        let wanted = &self.options.instance.region;
        if !settings.region.is_empty() && settings.region != *wanted {
            return Err(Failure::fatal(Error::Config(format!(
                "Cloud SQL instance {} is in region {}, not {wanted}; correct --cloudsql-instance to {}:{}:{}",
                self.options.instance,
                settings.region,
                self.options.instance.project,
                settings.region,
                self.options.instance.name
            ))));
        }
        let dns_name =
            Some(settings.dns_name.trim_end_matches('.').to_string()).filter(|d| !d.is_empty());
        let ip = |kind: model::SqlIpAddressType| {
            settings
                .ip_addresses
                .iter()
                .find(|m| m.r#type == kind)
                .and_then(|m| m.ip_address.parse::<IpAddr>().ok())
        };
        let public = ip(model::SqlIpAddressType::Primary);
        let private = ip(model::SqlIpAddressType::Private);
        let chosen = match self.options.ip_type {
            None => public.or(private),
            Some(IpType::Public) => public,
            Some(IpType::Private) => private,
            Some(IpType::Psc) => None,
        };
        if let Some(address) = chosen {
            return Ok((Dial::Ip(address), dns_name));
        }
        // Private Service Connect has no address in the settings: the consumer network's DNS
        // resolves the instance's name to its endpoint.
        if let (Some(IpType::Psc), true, Some(dns)) =
            (self.options.ip_type, settings.psc_enabled, &dns_name)
        {
            return Ok((Dial::Name(dns.clone()), dns_name.clone()));
        }
        let mut has: Vec<&str> = Vec::new();
        if public.is_some() {
            has.push("public");
        }
        if private.is_some() {
            has.push("private");
        }
        if settings.psc_enabled {
            has.push("psc");
        }
        let asked = self
            .options
            .ip_type
            .map_or("public or private", IpType::as_str);
        Err(Failure::fatal(Error::Config(format!(
            "Cloud SQL instance {} has no {asked} IP address; it has: {}; pick one with --ip-type",
            self.options.instance,
            match has.is_empty() {
                true => "none".to_string(),
                false => has.join(", "),
            }
        ))))
    }

    /// An Admin API failure in words that say what to do; throttling, server errors and an
    /// unreachable endpoint are transient.
    fn api_failure(&self, call: &'static str, error: &ApiError) -> Failure {
        let status = http_status(error);
        let message = error
            .status()
            .map(|s| s.message.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| deepest(error));
        match status {
            Some(404) => Failure::fatal(Error::Config(format!(
                "Cloud SQL instance {} not found ({message}); check --cloudsql-instance against `gcloud sql instances list --project {}`",
                self.options.instance, self.options.instance.project
            ))),
            Some(403) => Failure::fatal(self.error(
                call,
                format!(
                    "permission denied ({message}); grant the job's service account roles/cloudsql.client on project {} (and roles/cloudsql.instanceUser for --iam-auth), and enable the Cloud SQL Admin API",
                    self.options.instance.project
                ),
            )),
            Some(401) => Failure::fatal(self.error(
                call,
                format!("the credentials were refused ({message}); {}", credentials_hint()),
            )),
            Some(code) if code == 429 || code >= 500 => Failure {
                error: self.error(call, format!("HTTP {code}: {message}")),
                transient: true,
            },
            Some(code) => Failure::fatal(self.error(call, format!("HTTP {code}: {message}"))),
            None if error.is_authentication() => Failure::fatal(self.error(
                call,
                format!("no usable credentials ({message}); {}", credentials_hint()),
            )),
            None => {
                let endpoint = self
                    .options
                    .admin_endpoint
                    .as_deref()
                    .unwrap_or("https://sqladmin.googleapis.com");
                // An endpoint whose certificate is not trusted stays so: no retry mends it.
                if let Some(problem) = attempt::certificate_problem(error) {
                    return Failure::fatal(self.error(
                        call,
                        format!(
                            "the Admin API at {endpoint} is not trusted ({problem}); the system's CA bundle (/etc/ssl/certs/ca-certificates.crt, or SSL_CERT_FILE) must hold its CA"
                        ),
                    ));
                }
                Failure {
                    error: self.error(
                        call,
                        format!("cannot reach the Admin API at {endpoint} ({message})"),
                    ),
                    transient: true,
                }
            }
        }
    }

    async fn tls_stream(
        &self,
        tunnel: &Tunnel,
        timeout: Option<Duration>,
        keepalive: Option<&tokio_postgres::Config>,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
        let address = format!("{}:{}", tunnel.address, self.options.port);
        let timeout = timeout.unwrap_or(REQUEST_TIMEOUT);
        let dial = async {
            match &tunnel.address {
                Dial::Ip(ip) => TcpStream::connect((*ip, self.options.port)).await,
                Dial::Name(name) => TcpStream::connect((name.as_str(), self.options.port)).await,
            }
        };
        let tcp = match tokio::time::timeout(timeout, dial).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                return Err(Failure {
                    error: self.error("connecting", format!("{address}: {e}")),
                    transient: true,
                });
            }
            Err(_) => {
                return Err(Failure {
                    error: self.error(
                        "connecting",
                        format!("{address}: no answer in {}s", timeout.as_secs()),
                    ),
                    transient: true,
                });
            }
        };
        let _ = tcp.set_nodelay(true);
        // Set before the handshake, so that a server that vanishes during it is noticed too.
        if let Err(error) = keepalive.map_or(Ok(()), |pg| keep_alive(&tcp, pg)) {
            debug!(error = %error, "cannot set TCP keepalives on the tunnel's socket");
        }
        let connector = tokio_rustls::TlsConnector::from(tunnel.tls.clone());
        connector
            .connect(tunnel.server_name.clone(), tcp)
            .await
            .map_err(|e| match e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) {
                Some(tls) => Failure::fatal(self.error(
                    "TLS handshake",
                    format!("{tls}; the address does not serve this instance, or its certificate changed: check --cloudsql-instance"),
                )),
                None => Failure {
                    error: self.error("TLS handshake", format!("{address}: {e}")),
                    transient: true,
                },
            })
    }
}

/// The run's keepalive and TCP_USER_TIMEOUT settings (`connect`'s defaults or the URL's) on
/// the tunnel's socket: tokio-postgres applies them only to sockets it opens itself.
fn keep_alive(tcp: &TcpStream, pg: &tokio_postgres::Config) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    if pg.get_keepalives() {
        let mut keepalive = socket2::TcpKeepalive::new().with_time(pg.get_keepalives_idle());
        if let Some(interval) = pg.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(retries) = pg.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    // TCP_USER_TIMEOUT is Linux's; tokio-postgres sets it only there too.
    #[cfg(target_os = "linux")]
    if let Some(timeout) = pg.get_tcp_user_timeout() {
        socket.set_tcp_user_timeout(Some(*timeout))?;
    }
    Ok(())
}

/// Where Application Default Credentials come from, for the message when there are none.
fn credentials_hint() -> &'static str {
    "provide credentials as Application Default Credentials: on Cloud Run or GKE Workload Identity run as a service account; elsewhere set GOOGLE_APPLICATION_CREDENTIALS to a key file or run `gcloud auth application-default login`"
}

/// The outermost and the innermost cause: the Google crates wrap the useful text several
/// layers down.
fn deepest(error: &(dyn std::error::Error + 'static)) -> String {
    let outer = error.to_string();
    match causes(error).last().map(ToString::to_string) {
        Some(inner) if inner != outer => format!("{outer}: {inner}"),
        _ => outer,
    }
}

/// Whether a host name did not resolve somewhere in `error`'s causes. hyper-util reports it
/// only in words ("dns error").
fn unresolved(error: &(dyn std::error::Error + 'static)) -> bool {
    causes(error).any(|cause| cause.to_string().starts_with("dns error"))
}

/// The HTTP status, also when a retry limit wrapped the error that carried it.
fn http_status(error: &ApiError) -> Option<u16> {
    causes(error).find_map(|cause| {
        cause
            .downcast_ref::<ApiError>()
            .and_then(ApiError::http_status_code)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_names_parse_with_and_without_a_domain() {
        let plain: Instance = "my-proj:europe-west1:videos".parse().unwrap();
        assert_eq!(
            (
                plain.project.as_str(),
                plain.region.as_str(),
                plain.name.as_str()
            ),
            ("my-proj", "europe-west1", "videos")
        );
        let domain: Instance = "example.com:proj:us-central1:db".parse().unwrap();
        assert_eq!(domain.project, "example.com:proj");
        assert_eq!(domain.to_string(), "example.com:proj:us-central1:db");
        for bad in ["videos", "proj:videos", "proj::videos", ":r:i", "p:r:"] {
            let error = bad.parse::<Instance>().unwrap_err();
            assert!(error.contains("PROJECT:REGION:INSTANCE"), "{bad}: {error}");
        }
    }
}
