//! The Cloud SQL tunnel: mutual TLS 1.3 straight to the instance's connector listener with
//! the client certificate the Admin API grants, the server checked as `verifier::Instance`
//! says; the grant is kept and replaced before its certificate expires.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::client::TlsStream;
use tracing::{debug, info};

use super::verifier::{self, Verifier};
use crate::attempt::Failure;
use crate::cloudsql::{self, Address, Grant};
use crate::error::Error;

/// How long a dial may take when the connection settings do not say: as long as one Admin API
/// request.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The run's way to the instance: shared by every connection (the migration's, the monitor's,
/// a cancel request), so the certificate is fetched once while it is valid.
#[derive(Debug)]
pub struct Tunnel {
    admin: Arc<cloudsql::Admin>,
    /// The latest link; None before the first connection.
    link: Mutex<Option<Arc<Link>>>,
}

/// Everything needed to open TLS to the instance, valid until `expires`.
#[derive(Debug)]
struct Link {
    tls: Arc<rustls::ClientConfig>,
    address: Address,
    server_name: ServerName<'static>,
    expires: SystemTime,
}

impl Tunnel {
    pub fn new(admin: Arc<cloudsql::Admin>) -> Tunnel {
        Tunnel {
            admin,
            link: Mutex::new(None),
        }
    }

    /// A TLS stream to the instance, dialled within `timeout` (or [`DIAL_TIMEOUT`]), with
    /// `keepalive`'s keepalive and TCP_USER_TIMEOUT settings on its socket when given.
    pub async fn dial(
        &self,
        timeout: Option<Duration>,
        keepalive: Option<&tokio_postgres::Config>,
    ) -> Result<TlsStream<TcpStream>, Failure> {
        let link = self.link().await?;
        self.dial_link(&link, timeout, keepalive).await
    }

    /// For the cancel request a signal sends: over the link the run's connection already
    /// uses, never a new grant, so stopping asks Google for nothing (the server rolls back
    /// when the connection closes anyway). Sharing no Google calls with [`dial`](Self::dial)
    /// also keeps a second copy of them out of the binary (about 330 KB).
    pub async fn dial_current(&self, timeout: Duration) -> Result<TlsStream<TcpStream>, Failure> {
        let link = self.link.lock().await.clone();
        let link = link.ok_or_else(|| {
            Failure::fatal(self.error("connecting", "no connection was made yet".into()))
        })?;
        self.dial_link(&link, Some(timeout), None).await
    }

    async fn dial_link(
        &self,
        link: &Link,
        timeout: Option<Duration>,
        keepalive: Option<&tokio_postgres::Config>,
    ) -> Result<TlsStream<TcpStream>, Failure> {
        let port = self.admin.options.port;
        let address = format!("{}:{port}", link.address);
        let timeout = timeout.unwrap_or(DIAL_TIMEOUT);
        let dial = async {
            match &link.address {
                Address::Ip(ip) => TcpStream::connect((*ip, port)).await,
                Address::Name(name) => TcpStream::connect((name.as_str(), port)).await,
            }
        };
        let tcp = match tokio::time::timeout(timeout, dial).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                return Err(Failure {
                    error: self.error("connecting", format!("{address}: {e}")),
                    transient: true,
                    refused: false,
                });
            }
            Err(_) => {
                return Err(Failure {
                    error: self.error(
                        "connecting",
                        format!("{address}: no answer in {}s", timeout.as_secs()),
                    ),
                    transient: true,
                    refused: false,
                });
            }
        };
        let _ = tcp.set_nodelay(true);
        // Set before the handshake, so that a server that vanishes during it is noticed too.
        if let Err(error) = keepalive.map_or(Ok(()), |pg| keep_alive(&tcp, pg)) {
            debug!(error = %error, "cannot set TCP keepalives on the tunnel's socket");
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&link.tls));
        connector
            .connect(link.server_name.clone(), tcp)
            .await
            .map_err(|e| match e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) {
                Some(tls) => Failure::fatal(self.error(
                    "TLS handshake",
                    format!("{tls}; the address does not serve this instance, or its certificate changed: check --cloudsql-instance"),
                )),
                None => Failure {
                    error: self.error("TLS handshake", format!("{address}: {e}")),
                    transient: true,
                    refused: false,
                },
            })
    }

    /// The current link, or a fresh one when there is none or its certificate is about to
    /// expire.
    async fn link(&self) -> Result<Arc<Link>, Failure> {
        let mut current = self.link.lock().await;
        if let Some(link) = current.as_ref() {
            let left = link
                .expires
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            if left > cloudsql::REFRESH_BEFORE {
                return Ok(Arc::clone(link));
            }
            info!(
                instance = %self.admin.options.instance,
                seconds_left = left.as_secs(),
                "client certificate about to expire; fetching a new one"
            );
        }
        let link = Arc::new(self.link_for(self.admin.grant().await?)?);
        *current = Some(Arc::clone(&link));
        Ok(link)
    }

    /// The link a grant makes.
    fn link_for(&self, grant: Grant) -> Result<Link, Failure> {
        let setting_up = |reason: String| Failure::fatal(self.error("setting up TLS", reason));
        let tls = client_config(&grant).map_err(setting_up)?;
        // SNI carries the instance's DNS name when it has one; an IP address sends none.
        let server_name = match (&grant.dns_name, &grant.address) {
            (None, Address::Ip(ip)) => ServerName::IpAddress((*ip).into()),
            (Some(name), _) | (None, Address::Name(name)) => ServerName::try_from(name.clone())
                .map_err(|e| setting_up(format!("DNS name {name}: {e}")))?,
        };
        let seconds_left = grant
            .expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs();
        info!(
            instance = %self.admin.options.instance,
            address = %grant.address,
            ca_mode = %grant.ca_mode,
            certificate_seconds_left = seconds_left,
            "Cloud SQL client certificate issued"
        );
        Ok(Link {
            tls: Arc::new(tls),
            address: grant.address,
            server_name,
            expires: grant.expires,
        })
    }

    fn error(&self, step: &'static str, reason: String) -> Error {
        Error::CloudSql {
            instance: self.admin.options.instance.to_string(),
            step,
            reason,
        }
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

/// TLS 1.3 with the granted certificate, trusting only the instance's CA.
fn client_config(grant: &Grant) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in
        CertificateDer::pem_slice_iter(grant.server_ca.as_bytes()).filter_map(Result::ok)
    {
        roots
            .add(certificate)
            .map_err(|e| format!("the instance's CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("connectSettings holds no server CA certificate".into());
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(grant.certificate.as_bytes())
            .filter_map(Result::ok)
            .collect();
    if chain.is_empty() {
        return Err("generateEphemeralCert returned no certificate".into());
    }
    let instance = verifier::Instance {
        roots,
        common_name: grant.common_name.clone(),
        dns_name: grant.dns_name.clone(),
    };
    let verifier = Arc::new(Verifier::new(instance, &provider));
    let key = PrivatePkcs8KeyDer::from(grant.key.pkcs8_der().to_vec());
    let key = PrivateKeyDer::Pkcs8(key);
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the client certificate: {e}"))
}
