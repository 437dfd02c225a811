//! The connector's TLS: the client key and the Admin API's certificate for it, and the check
//! that the server is the instance asked for.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

pub(super) struct ClientKey {
    pub(super) public_pem: String,
    pkcs8_der: Vec<u8>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(..)")
    }
}

/// RSA-2048, as every Google connector uses; kept in memory only.
pub(super) fn make_key() -> Result<ClientKey, String> {
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

/// TLS 1.3 with the ephemeral certificate, trusting only the instance's CA.
pub(super) fn client_config(
    ca_pem: &str,
    expected_cn: &str,
    dns_name: Option<&str>,
    certificate_pem: &str,
    key: &ClientKey,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).filter_map(Result::ok) {
        roots
            .add(certificate)
            .map_err(|e| format!("the instance's CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("connectSettings holds no server CA certificate".into());
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
    if chain.is_empty() {
        return Err("generateEphemeralCert returned no certificate".into());
    }
    let verifier = InstanceVerifier {
        roots: Arc::new(roots),
        expected_cn: expected_cn.to_string(),
        dns_name: dns_name.map(str::to_string),
        provider: provider.clone(),
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der.clone()));
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the client certificate: {e}"))
}

/// Checks the server the way Google's connectors do: the chain must end at the instance's
/// CA; then a CAS-based instance's certificate names its DNS name, and a legacy
/// per-instance certificate has `PROJECT:INSTANCE` as its common name.
#[derive(Debug)]
struct InstanceVerifier {
    roots: Arc<rustls::RootCertStore>,
    expected_cn: String,
    dns_name: Option<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for InstanceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &certificate,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if let Some(dns) = &self.dns_name {
            let named = ServerName::try_from(dns.as_str())
                .is_ok_and(|name| rustls::client::verify_server_name(&certificate, &name).is_ok());
            if named {
                return Ok(ServerCertVerified::assertion());
            }
        }
        match common_name(end_entity) {
            Some(cn) if cn == self.expected_cn => Ok(ServerCertVerified::assertion()),
            found => Err(rustls::Error::General(format!(
                "the server certificate is for {}, not instance {}{}",
                found.map_or_else(|| "no common name".to_string(), |cn| format!("\"{cn}\"")),
                self.expected_cn,
                self.dns_name
                    .as_ref()
                    .map(|d| format!(" (or {d})"))
                    .unwrap_or_default()
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The subject's common name.
fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    use x509_cert::der::Decode;
    use x509_cert::der::asn1::{PrintableStringRef, Utf8StringRef};
    let parsed = x509_cert::Certificate::from_der(certificate.as_ref()).ok()?;
    let cn = x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");
    parsed
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|attribute| attribute.oid == cn)
        .and_then(|attribute| {
            let value = &attribute.value;
            value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_string())
                .or_else(|_| {
                    value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                })
                .ok()
        })
}
