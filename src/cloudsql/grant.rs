//! What a connection to the instance needs from the Admin API, as plain data: where the
//! instance listens, its server CA, and a short-lived client certificate for a key made in
//! memory (`connectSettings` and `generateEphemeralCert`, asked for at once).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use google_cloud_sql_v1::model;

use super::{Admin, Instance, IpType};
use crate::attempt::Failure;
use crate::error::Error;

/// Where the instance listens: an IP address, or (Private Service Connect) the DNS name the
/// consumer network resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Ip(ip) => ip.fmt(f),
            Address::Name(name) => f.write_str(name),
        }
    }
}

/// A client certificate for the run's key, and where and whom it lets the run connect to.
#[derive(Debug, Clone)]
pub struct Grant {
    pub address: Address,
    /// The instance's DNS name: what a CAS-based instance's server certificate names.
    pub dns_name: Option<String>,
    /// `PROJECT:INSTANCE`: what a legacy per-instance server certificate has as its common
    /// name.
    pub common_name: String,
    /// PEM: the CA the server's certificate must lead to.
    pub server_ca: String,
    /// PEM: the client certificate for `key`.
    pub certificate: String,
    pub key: Arc<ClientKey>,
    pub expires: SystemTime,
    /// How the instance's server certificates are issued, e.g. `GOOGLE_MANAGED_CAS_CA`.
    pub ca_mode: String,
}

/// The run's client key: RSA-2048, as every Google connector uses; kept in memory only.
pub struct ClientKey {
    public_pem: String,
    pkcs8_der: Vec<u8>,
}

impl ClientKey {
    fn new() -> Result<ClientKey, String> {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let key =
            rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|e| e.to_string())?;
        let pkcs8_der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        Ok(ClientKey {
            public_pem,
            pkcs8_der: pkcs8_der.as_bytes().to_vec(),
        })
    }

    /// The private key, PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8_der
    }
}

/// Says nothing of the key: it is a secret.
impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(..)")
    }
}

impl Admin {
    /// Asks the Admin API for the instance's settings and a certificate for the run's key, at
    /// once. With IAM login the request carries the login token, so that the certificate
    /// admits that login.
    pub async fn grant(&self) -> Result<Grant, Failure> {
        let google = self.google().await?;
        let key = self.key().await?;
        let Instance { project, name, .. } = &self.options.instance;
        let token = match &google.login {
            Some(_) => Some(self.login(&google).await?),
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
        let (address, dns_name) = self.address(&settings)?;
        let expires = certificate
            .expiration_time
            .as_ref()
            .and_then(|t| u64::try_from(t.seconds()).ok())
            .map_or(SystemTime::now() + Duration::from_secs(3600), |s| {
                UNIX_EPOCH + Duration::from_secs(s)
            });
        let server_ca = settings.server_ca_cert.as_ref().map(|c| c.cert.clone());
        Ok(Grant {
            address,
            dns_name,
            common_name: format!("{project}:{name}"),
            server_ca: server_ca.unwrap_or_default(),
            certificate: certificate.cert,
            key,
            expires,
            ca_mode: settings.server_ca_mode.name().unwrap_or("?").to_string(),
        })
    }

    /// The run's client key, made on first use: making one takes a moment.
    async fn key(&self) -> Result<Arc<ClientKey>, Failure> {
        let mut state = self.state.lock().await;
        if let Some(key) = &state.key {
            return Ok(Arc::clone(key));
        }
        let key = ClientKey::new()
            .map_err(|reason| Failure::fatal(self.error("making the client key", reason)))?;
        let key = Arc::new(key);
        state.key = Some(Arc::clone(&key));
        Ok(key)
    }

    /// The address to dial and the DNS name the server's certificate may carry.
    fn address(
        &self,
        settings: &model::ConnectSettings,
    ) -> Result<(Address, Option<String>), Failure> {
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
            return Ok((Address::Ip(address), dns_name));
        }
        // Private Service Connect has no address in the settings: the consumer network's DNS
        // resolves the instance's name to its endpoint.
        if let (Some(IpType::Psc), true, Some(dns)) =
            (self.options.ip_type, settings.psc_enabled, &dns_name)
        {
            return Ok((Address::Name(dns.clone()), dns_name.clone()));
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
}
