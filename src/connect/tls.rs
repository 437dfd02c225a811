//! TLS for the database connection with rustls, following libpq's sslmode semantics: which
//! certificate checks each mode makes (`verifier` has those rustls lacks), the
//! sslrootcert/sslcert/sslkey files, and the tokio-postgres connector with its channel
//! binding. `attempt::certificate_problem` puts a failed handshake in words.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ProtocolVersion, RootCertStore};
use sha2::{Digest, Sha256, Sha384, Sha512};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use super::settings::{SslMode, TlsSettings};
use super::verifier::{Lenient, Verifier};
use crate::error::Error;

/// The mode tokio-postgres itself knows: it has no `allow` (plaintext first, TLS on refusal;
/// `connect` retries with TLS) and no verify modes, which live in the rustls verifier here.
pub fn tokio_mode(mode: SslMode) -> tokio_postgres::config::SslMode {
    use tokio_postgres::config::SslMode as Tokio;
    match mode {
        SslMode::Disable | SslMode::Allow => Tokio::Disable,
        SslMode::Prefer => Tokio::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Tokio::Require,
    }
}

/// Makes the TLS handshake for tokio-postgres with the checks `sslmode` asks for. Clones share
/// what the latest handshake negotiated.
#[derive(Clone)]
pub struct Connector {
    /// None for `sslmode=disable`, which reads no certificate files, as libpq does not.
    config: Option<Arc<ClientConfig>>,
    negotiated: Arc<Mutex<Option<ProtocolVersion>>>,
}

impl Connector {
    /// Reads the certificate files the settings name and decides the checks; a file that is
    /// missing or holds no usable PEM is a config error naming the file and its setting.
    pub fn new(settings: &TlsSettings) -> Result<Connector, Error> {
        let config = match settings.mode {
            SslMode::Disable => None,
            _ => Some(Arc::new(client_config(settings)?)),
        };
        Ok(Connector {
            config,
            negotiated: Arc::default(),
        })
    }

    /// A connector with the same checks and its own record of what its handshakes negotiated,
    /// for a connection that may be opened while another is.
    pub fn separate(&self) -> Connector {
        Connector {
            config: self.config.clone(),
            negotiated: Arc::default(),
        }
    }

    /// The TLS version of the latest connection made through this connector or its clones,
    /// e.g. "TLSv1.3"; None when it went without TLS.
    pub fn negotiated(&self) -> Option<String> {
        (*lock(&self.negotiated)).map(version_name)
    }
}

/// A TLS version as logs name it, e.g. `TLSv1.3`, on either way in.
pub fn version_name(version: ProtocolVersion) -> String {
    match version {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.config.is_some())
            .field("negotiated", &self.negotiated())
            .finish()
    }
}

/// A poisoned lock still holds a usable `Option`: nothing panics while holding it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn client_config(settings: &TlsSettings) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = verifier(settings, &provider)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?
        // "dangerous" only because the verifier depends on the mode; verify-full's is
        // rustls's own WebPkiServerVerifier.
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates(cert, "sslcert")?, private_key(key)?)
            .map_err(|e| {
                Error::Config(format!(
                    "sslkey file {} does not fit the certificate in sslcert file {}: {e}",
                    key.display(),
                    cert.display()
                ))
            })?,
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), None) => return Err(half_pair("sslcert", cert, "sslkey")),
        (None, Some(key)) => return Err(half_pair("sslkey", key, "sslcert")),
    };
    // PostgreSQL 17 requires this ALPN name for sslnegotiation=direct and accepts it otherwise;
    // older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

fn half_pair(given: &str, path: &Path, missing: &str) -> Error {
    Error::Config(format!(
        "{given} is set ({}) but {missing} is not; a client certificate needs both sslcert and sslkey",
        path.display()
    ))
}

/// The server-certificate check for the mode. libpq without a root certificate encrypts
/// without checking in require/prefer/allow, and with one checks the chain (as verify-ca).
fn verifier(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, Error> {
    let Some(path) = &settings.root_cert else {
        return match settings.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => Err(Error::Config(format!(
                "sslmode={} needs sslrootcert, the PEM file of the CA that signed the server's certificate; set sslrootcert (there is no system CA store to fall back on)",
                settings.mode
            ))),
            _ => Ok(Arc::new(Verifier::new(Lenient { chain: None }, provider))),
        };
    };
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(path)?), Arc::clone(provider))
            .build()
            .map_err(|e| file_error("sslrootcert", path, &format!("cannot be used: {e}")))?;
    Ok(match settings.mode {
        SslMode::VerifyFull => webpki,
        _ => Arc::new(Verifier::new(
            Lenient {
                chain: Some(webpki),
            },
            provider,
        )),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, Error> {
    if path == Path::new("system") {
        return Err(Error::Config(
            "sslrootcert=system is not supported: the image has no system CA store; give the path of the CA's PEM file".into(),
        ));
    }
    let mut roots = RootCertStore::empty();
    for (number, cert) in (1..).zip(certificates(path, "sslrootcert")?) {
        roots.add(cert).map_err(|e| {
            file_error(
                "sslrootcert",
                path,
                &format!("certificate {number} cannot be a trust anchor: {e}"),
            )
        })?;
    }
    Ok(roots)
}

fn certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read(path, setting)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(setting, path, pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(file_error(
            setting,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = read(path, "sslkey")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let problem = match e {
            _ if is_encrypted(&bytes) => "holds an encrypted private key; give an unencrypted one",
            pem::Error::NoItemsFound => {
                "holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
            }
            other => pem_problem(&other),
        };
        file_error("sslkey", path, problem)
    })
}

/// PKCS#8 "ENCRYPTED PRIVATE KEY" or OpenSSL's traditional "Proc-Type: 4,ENCRYPTED" header.
fn is_encrypted(pem: &[u8]) -> bool {
    [
        &b"ENCRYPTED PRIVATE KEY-----"[..],
        b"Proc-Type: 4,ENCRYPTED",
    ]
    .iter()
    .any(|marker| pem.windows(marker.len()).any(|w| w == *marker))
}

fn read(path: &Path, setting: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| file_error(setting, path, &format!("cannot be read: {e}")))
}

/// pem's own Display may quote a line of the file, which for a key file is secret.
fn pem_problem(error: &pem::Error) -> &'static str {
    match error {
        pem::Error::MissingSectionEnd { .. } => "has a PEM section without its END line",
        pem::Error::IllegalSectionStart { .. } => "has a malformed PEM BEGIN line",
        pem::Error::Base64Decode(_) => "has a PEM section that is not valid base64",
        pem::Error::SectionTooLarge => "has a PEM section that is too large",
        _ => "is not a valid PEM file",
    }
}

fn file_error(setting: &str, path: &Path, problem: &str) -> Error {
    Error::Config(format!("{setting} file {} {problem}", path.display()))
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Handshake;
    type Error = io::Error;

    /// Never fails: tokio-postgres calls this for every connection, also for a Unix socket
    /// (empty name) and under sslmode=disable, where no handshake follows. A handshake that
    /// cannot happen fails when it is attempted.
    fn make_tls_connect(&mut self, domain: &str) -> Result<Handshake, io::Error> {
        *lock(&self.negotiated) = None;
        let target = match (&self.config, ServerName::try_from(domain)) {
            (None, _) => Err(io::Error::other("TLS requested under sslmode=disable")),
            (Some(_), Err(e)) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("host name \"{domain}\" cannot be used for TLS: {e}"),
            )),
            (Some(config), Ok(name)) => Ok((
                tokio_rustls::TlsConnector::from(Arc::clone(config)),
                name.to_owned(),
            )),
        };
        Ok(Handshake {
            target,
            negotiated: Arc::clone(&self.negotiated),
        })
    }
}

/// One TLS handshake, made by [`Connector`] for one connection.
pub struct Handshake {
    target: Result<(tokio_rustls::TlsConnector, ServerName<'static>), io::Error>,
    negotiated: Arc<Mutex<Option<ProtocolVersion>>>,
}

impl<S> TlsConnect<S> for Handshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let (connector, name) = self.target?;
            let tls = connector.connect(name, stream).await?;
            *lock(&self.negotiated) = tls.get_ref().1.protocol_version();
            Ok(Stream(tls))
        })
    }
}

/// A connection's TLS stream.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> TlsStream for Stream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// tls-server-end-point (RFC 5929), so SCRAM-SHA-256-PLUS ties the login to this session.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        let end_point = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| end_point_hash(cert));
        match end_point {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The certificate hashed with its signature's hash, MD5 and SHA-1 raised to SHA-256 (RFC
/// 5929 section 4.1), as PostgreSQL computes it. None for a signature without a separate hash
/// (Ed25519, RSA-PSS): the server cannot bind those either, so SCRAM goes without -PLUS.
fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    use x509_cert::der::Decode;
    use x509_cert::der::oid::ObjectIdentifier;
    use x509_cert::der::oid::db::rfc5912::{
        ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, MD_5_WITH_RSA_ENCRYPTION,
        SHA_1_WITH_RSA_ENCRYPTION, SHA_256_WITH_RSA_ENCRYPTION, SHA_384_WITH_RSA_ENCRYPTION,
        SHA_512_WITH_RSA_ENCRYPTION,
    };
    // ecdsa-with-SHA1 (RFC 5758), which const-oid's database does not name.
    const ECDSA_WITH_SHA_1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");
    let algorithm = x509_cert::Certificate::from_der(cert)
        .ok()?
        .signature_algorithm
        .oid;
    let signed_with = |oids: &[ObjectIdentifier]| oids.contains(&algorithm);
    if signed_with(&[
        MD_5_WITH_RSA_ENCRYPTION,
        SHA_1_WITH_RSA_ENCRYPTION,
        ECDSA_WITH_SHA_1,
        SHA_256_WITH_RSA_ENCRYPTION,
        ECDSA_WITH_SHA_256,
    ]) {
        Some(Sha256::digest(cert).to_vec())
    } else if signed_with(&[SHA_384_WITH_RSA_ENCRYPTION, ECDSA_WITH_SHA_384]) {
        Some(Sha384::digest(cert).to_vec())
    } else if signed_with(&[SHA_512_WITH_RSA_ENCRYPTION, ECDSA_WITH_SHA_512]) {
        Some(Sha512::digest(cert).to_vec())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokio_postgres_sees_disable_prefer_or_require() {
        use tokio_postgres::config::SslMode as Tokio;
        let cases = [
            (SslMode::Disable, Tokio::Disable),
            (SslMode::Allow, Tokio::Disable),
            (SslMode::Prefer, Tokio::Prefer),
            (SslMode::Require, Tokio::Require),
            (SslMode::VerifyCa, Tokio::Require),
            (SslMode::VerifyFull, Tokio::Require),
        ];
        for (mode, expected) in cases {
            assert_eq!(tokio_mode(mode), expected, "{mode}");
        }
    }

    fn settings(mode: SslMode, files: [Option<&Path>; 3]) -> TlsSettings {
        let [root_cert, cert, key] = files.map(|f| f.map(Path::to_path_buf));
        TlsSettings {
            mode,
            root_cert,
            cert,
            key,
        }
    }

    #[test]
    fn bad_certificate_files_are_config_errors_naming_file_and_setting() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
        let cert_pem = params.self_signed(&key).unwrap().pem();
        let good_cert = dir.path().join("good.crt");
        let good_key = dir.path().join("good.key");
        std::fs::write(&good_cert, &cert_pem).unwrap();
        std::fs::write(&good_key, key.serialize_pem()).unwrap();
        let secret = "c2VjcmV0LWtleS1ieXRlcw==!!";
        let broken = format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n");
        let pkcs8_encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let traditional_encrypted = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let no_pem = "no PEM here, only words\n";
        // (setting, file content or None for a missing file, what the message says)
        let cases = [
            ("sslrootcert", None, "cannot be read: "),
            ("sslrootcert", Some(no_pem), "holds no PEM certificate"),
            ("sslcert", Some(no_pem), "holds no PEM certificate"),
            ("sslcert", None, "cannot be read: "),
            ("sslkey", None, "cannot be read: "),
            (
                "sslkey",
                Some(cert_pem.as_str()),
                "holds no PEM private key",
            ),
            ("sslkey", Some(broken.as_str()), "not valid base64"),
            ("sslkey", Some(pkcs8_encrypted), "encrypted"),
            ("sslkey", Some(traditional_encrypted), "encrypted"),
        ];
        for (number, (setting, content, problem)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("{number}.pem"));
            if let Some(content) = content {
                std::fs::write(&path, content).unwrap();
            }
            let files = match setting {
                "sslrootcert" => [Some(path.as_path()), None, None],
                "sslcert" => [None, Some(path.as_path()), Some(good_key.as_path())],
                _ => [None, Some(good_cert.as_path()), Some(path.as_path())],
            };
            let error = Connector::new(&settings(SslMode::Require, files)).unwrap_err();
            let text = error.to_string();
            assert_eq!(error.exit_code(), 2, "{text}");
            let expected = format!("{setting} file {} ", path.display());
            assert!(text.starts_with(&expected), "{text}");
            assert!(text.contains(problem), "{text}");
            assert!(!text.contains(secret) && !text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let params = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
        let cert_key = rcgen::KeyPair::generate().unwrap();
        let cert = dir.path().join("client.crt");
        std::fs::write(&cert, params.self_signed(&cert_key).unwrap().pem()).unwrap();
        let other = dir.path().join("other.key");
        std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let files = [None, Some(cert.as_path()), Some(other.as_path())];
        let error = Connector::new(&settings(SslMode::Require, files)).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("does not fit"), "{error}");
    }

    #[test]
    fn incomplete_settings_are_config_errors_saying_what_to_set() {
        let path = Path::new("/nowhere/file.pem");
        let cases = [
            (
                settings(SslMode::VerifyFull, [None; 3]),
                "sslmode=verify-full needs sslrootcert",
            ),
            (
                settings(SslMode::VerifyCa, [None; 3]),
                "sslmode=verify-ca needs sslrootcert",
            ),
            (
                settings(SslMode::Require, [None, Some(path), None]),
                "but sslkey is not",
            ),
            (
                settings(SslMode::Require, [None, None, Some(path)]),
                "but sslcert is not",
            ),
            (
                settings(SslMode::VerifyCa, [Some(Path::new("system")), None, None]),
                "system",
            ),
        ];
        for (settings, expected) in cases {
            let error = Connector::new(&settings).unwrap_err();
            assert_eq!(error.exit_code(), 2);
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    #[test]
    fn disable_reads_no_files_and_the_other_modes_need_none() {
        let absent = Path::new("/nowhere/ca.crt");
        assert!(Connector::new(&settings(SslMode::Disable, [Some(absent); 3])).is_ok());
        for mode in [SslMode::Allow, SslMode::Prefer, SslMode::Require] {
            let connector = Connector::new(&settings(mode, [None; 3])).unwrap();
            assert_eq!(connector.negotiated(), None);
        }
    }

    #[test]
    fn channel_binding_hash_follows_the_certificate_signature() {
        let cases = [
            (&rcgen::PKCS_ECDSA_P256_SHA256, Some(32)),
            (&rcgen::PKCS_ECDSA_P384_SHA384, Some(48)),
            (&rcgen::PKCS_ED25519, None),
        ];
        for (algorithm, length) in cases {
            let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let params = rcgen::CertificateParams::new(vec!["db".to_string()]).unwrap();
            let cert = params.self_signed(&key).unwrap();
            let hash = end_point_hash(cert.der());
            assert_eq!(hash.as_ref().map(Vec::len), length, "{algorithm:?}");
            if length == Some(32) {
                assert_eq!(hash, Some(Sha256::digest(cert.der()).to_vec()));
            }
        }
        assert_eq!(end_point_hash(b"\x30\x03\x02\x01"), None);
    }
}
