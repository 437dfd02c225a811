//! What a connection to the instance needs from the Admin API, as plain data: where the
//! instance listens, its server CA, and a short-lived client certificate for a key made in
//! memory (`connectSettings` and `generateEphemeralCert`, asked for at once).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use google_cloud_sql_v1::model;

use tracing::debug;
use zeroize::Zeroizing;

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
    pkcs8_der: Zeroizing<Vec<u8>>,
}

/// A client key on its way: made on threads of its own from the moment the run knows it will
/// connect through the connector, while it loads credentials and asks for a token.
pub(super) type Making = tokio::sync::oneshot::Receiver<Result<ClientKey, String>>;

impl ClientKey {
    /// Starts making the run's key on a thread of its own; without one to be had, makes it
    /// here, as it was made before it had a thread.
    pub(super) fn start() -> Making {
        let (send, receive) = tokio::sync::oneshot::channel();
        let make = move || send.send(ClientKey::new());
        if let Err(error) = std::thread::Builder::new()
            .name("client-key".into())
            .spawn(make)
        {
            debug!(error = %error, "no thread for the client key; making it on the run's");
            let (send, receive) = tokio::sync::oneshot::channel();
            let _ = send.send(ClientKey::new());
            return receive;
        }
        receive
    }

    /// Makes a key here: on this thread and the ones that look for its primes.
    pub fn new() -> Result<ClientKey, String> {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let key = rsa_2048()?;
        let pkcs8_der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        Ok(ClientKey {
            public_pem,
            pkcs8_der: Zeroizing::new(pkcs8_der.as_bytes().to_vec()),
        })
    }

    /// The private key, PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8_der
    }
}

/// The run's client key, once asked for.
#[derive(Debug)]
pub(super) enum Key {
    Making(Making),
    Made(Arc<ClientKey>),
}

/// Says nothing of the key: it is a secret.
impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(..)")
    }
}

/// The most threads that look for the key's primes at once.
const PRIME_SEEKERS: usize = 4;

/// An RSA-2048 key with exponent 65537 from two random 1024-bit primes with their top two
/// bits set, each passing the `probably_prime` test `RsaPrivateKey::new` uses (its candidates
/// are drawn anew each time rather than stepped from one, and `from_p_q` takes the private
/// exponent modulo the Carmichael function rather than Euler's: both valid), looked for on
/// up to one thread a core, the first two that make a key kept. On 2 cores a key took 139 ms
/// on average and 400 at worst, against 204 and 806 for `RsaPrivateKey::new` on one thread
/// (BENCHMARKS.md, "The Cloud SQL client key").
fn rsa_2048() -> Result<rsa::RsaPrivateKey, String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let found = Arc::new(AtomicBool::new(false));
    let (send, primes) = std::sync::mpsc::channel();
    let mut seekers = 0;
    for _ in 0..cores.clamp(1, PRIME_SEEKERS) {
        let (send, found) = (send.clone(), Arc::clone(&found));
        let spawned = std::thread::Builder::new()
            .name("client-key".into())
            .spawn(move || seek_primes(&found, &send));
        seekers += usize::from(spawned.is_ok());
    }
    drop(send);
    if seekers == 0 {
        debug!("no thread to look for the client key's primes; one thread makes it");
        return rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
            .map_err(|e| e.to_string());
    }
    let exponent = rsa::BigUint::from(65_537_u32);
    let mut kept: Vec<Zeroizing<rsa::BigUint>> = Vec::new();
    let key = loop {
        let prime = match primes.recv() {
            Ok(Ok(prime)) => Zeroizing::new(prime),
            Ok(Err(reason)) => break Err(reason),
            Err(_) => break Err("every thread looking for its primes stopped".into()),
        };
        // Two equal primes, or a pair whose totient shares a factor with the exponent, make
        // no key; the next prime found is paired with each kept one.
        let pair = kept.iter().find_map(|other| {
            let (p, q) = (rsa::BigUint::clone(&prime), rsa::BigUint::clone(other));
            rsa::RsaPrivateKey::from_p_q(p, q, exponent.clone()).ok()
        });
        match pair {
            Some(key) => break Ok(key),
            None => kept.push(prime),
        }
    };
    found.store(true, Ordering::Relaxed);
    key
}

/// Sends random 1024-bit primes with their top two bits set (so that the product of two is
/// 2048 bits, never 2047) until `found`; a candidate at a time, so a seeker stops within one
/// test once the key is made.
fn seek_primes(
    found: &std::sync::atomic::AtomicBool,
    primes: &std::sync::mpsc::Sender<Result<rsa::BigUint, String>>,
) {
    use rsa::rand_core::{OsRng, RngCore};
    // The last candidate's bytes are a prime of the key's.
    let mut bytes = Zeroizing::new([0_u8; 128]);
    while !found.load(std::sync::atomic::Ordering::Relaxed) {
        if let Err(error) = OsRng.try_fill_bytes(bytes.as_mut()) {
            let _ = primes.send(Err(format!("no random numbers from the system: {error}")));
            return;
        }
        bytes[0] |= 0b1100_0000;
        bytes[127] |= 1;
        let candidate = rsa::BigUint::from_bytes_be(bytes.as_ref());
        if num_bigint_dig::prime::probably_prime(&candidate, 20)
            && primes.send(Ok(candidate)).is_err()
        {
            return;
        }
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

    /// The run's client key: the one [`Admin::start_key`] set making, or made now.
    async fn key(&self) -> Result<Arc<ClientKey>, Failure> {
        let mut key = self.key.lock().await;
        // A wait given up (the attempt timed out) leaves the key in the making for the next.
        let made = match key.get_or_insert_with(|| Key::Making(ClientKey::start())) {
            Key::Made(key) => return Ok(Arc::clone(key)),
            Key::Making(making) => making
                .await
                .unwrap_or_else(|_| Err("its thread ended without one".into())),
        };
        let made = made.map_err(|reason| {
            *key = None;
            Failure::fatal(self.error("making the client key", reason))
        })?;
        let made = Arc::new(made);
        *key = Some(Key::Made(Arc::clone(&made)));
        Ok(made)
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

#[cfg(test)]
mod tests {
    use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
    use rsa::traits::PublicKeyParts;

    #[tokio::test]
    async fn the_client_key_is_rsa_2048_with_exponent_65537_its_public_half_and_ring_takes_it() {
        for _ in 0..3 {
            let key = super::ClientKey::start().await.unwrap().unwrap();
            let private = rsa::RsaPrivateKey::from_pkcs8_der(key.pkcs8_der()).unwrap();
            assert_eq!(private.n().bits(), 2048);
            assert_eq!(private.e(), &rsa::BigUint::from(65_537_u32));
            private.validate().unwrap();
            let public = rsa::RsaPublicKey::from_public_key_pem(&key.public_pem).unwrap();
            assert_eq!(public, private.to_public_key());
            // ring, which signs the TLS handshake with it, takes it too.
            let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec());
            rustls::crypto::ring::sign::any_supported_type(&der.into()).unwrap();
        }
    }
}
