//! Cloud SQL's Google APIs, and nothing else: Google credentials, the IAM login token, the
//! Admin API's connect settings and ephemeral client certificate ([`Grant`]), and backups.
//! What is asked of Google comes back as plain data; `connect::tunnel` makes the mutual TLS
//! to the instance from it, as Google's own connectors do.
//!
//! Nothing here is built until a run needs it: a plain `DATABASE_URL` run never initialises
//! credentials or an HTTP client.

mod backup;
mod grant;
mod key_file;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use google_cloud_auth::credentials::{
    AccessTokenCredentials, Builder as CredentialsBuilder, Credentials,
};
use google_cloud_gax::client_builder::ClientBuilder;
use google_cloud_gax::error::Error as ApiError;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_sql_v1::client::SqlConnectService;
use tokio::sync::Mutex;

use crate::attempt::{self, Failure};
use crate::error::{Error, causes};
pub use grant::{Address, ClientKey, Grant};
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
    /// `GCE_METADATA_HOST`: the metadata server, when not Google's own name for it.
    pub metadata_host: Option<String>,
}

/// The e-mail of the service account the run logs in as, for an IAM login that names no user:
/// the key file's `client_email`, or else the metadata server's default service account
/// (Cloud Run, GKE with Workload Identity). Err says why neither could tell.
pub async fn service_account(options: &Options) -> Result<String, String> {
    if let Some(path) = &options.key_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        return match key["client_email"].as_str() {
            Some(email) if key["type"] == "service_account" => Ok(email.to_string()),
            _ => Err(format!(
                "the credentials in {} are not a service account's key",
                path.display()
            )),
        };
    }
    // reqwest's rustls has no crypto provider of its own, even for plain HTTP: ring, the
    // one every connection of the run uses (the Dialer installs it too, later).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let host = (options.metadata_host.as_deref()).unwrap_or("metadata.google.internal");
    let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/email");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| deepest(&e))?;
    // A new GKE pod's metadata server can take a moment to answer.
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let sent = client
            .get(&url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                let email = response.text().await.map_err(|e| deepest(&e))?;
                return Ok(email.trim().to_string());
            }
            Ok(response) => last = format!("the metadata server answered {}", response.status()),
            Err(error) if unresolved(&error) => {
                return Err(format!(
                    "no key file, and no metadata server ({host} does not resolve)"
                ));
            }
            Err(error) => {
                last = format!(
                    "no answer from the metadata server at {host}: {}",
                    deepest(&error)
                )
            }
        }
    }
    Err(last)
}

/// The run's client of Google's APIs for one instance: shared by the connections (the
/// certificate grant, the IAM login token) and the backup, so credentials are loaded and the
/// client key made once.
#[derive(Debug)]
pub struct Admin {
    pub options: Options,
    state: Mutex<State>,
    /// The run's client key, apart from `state`: whoever waits for credentials does not wait
    /// for the key to be made too.
    key: Mutex<Option<grant::Key>>,
}

#[derive(Debug, Default)]
struct State {
    google: Option<Google>,
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

impl Admin {
    pub fn new(options: Options) -> Admin {
        Admin {
            options,
            state: Mutex::new(State::default()),
            key: Mutex::new(None),
        }
    }

    /// Starts making the run's client key, for a run that will connect through the
    /// connector: it then takes shape while the run loads credentials and asks for a token,
    /// instead of after.
    pub fn start_key(&self) {
        if let Ok(mut key) = self.key.try_lock() {
            key.get_or_insert_with(|| grant::Key::Making(ClientKey::start()));
        }
    }

    fn instance(&self) -> String {
        self.options.instance.to_string()
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
                        refused: false,
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
                refused: false,
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
                refused: false,
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
                refused: false,
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
                    refused: false,
                }
            }
        }
    }
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
