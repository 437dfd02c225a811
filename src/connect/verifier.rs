//! How the server's certificate is checked where rustls's own verifier does not fit: the
//! sslmodes short of verify-full, and a Cloud SQL instance, checked as Google's connectors
//! check it. Whatever the check, [`Verifier`] checks the handshake signatures the one way.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

/// What is checked of the server's certificate (chain) itself.
pub(super) trait Check: fmt::Debug + Send + Sync {
    /// `ServerCertVerifier::verify_server_cert`, with the algorithms signatures are checked
    /// with.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
        algorithms: &WebPkiSupportedAlgorithms,
    ) -> Result<ServerCertVerified, rustls::Error>;

    /// The subjects of the trusted CAs, for the server to pick its certificate by.
    fn root_hints(&self) -> Option<&[DistinguishedName]> {
        None
    }
}

/// A certificate check made a rustls verifier. The handshake signatures are checked with the
/// provider's algorithms, as rustls's own `WebPkiServerVerifier` checks them, so whatever the
/// check, the peer holds the key of the certificate it presented.
#[derive(Debug)]
pub(super) struct Verifier<C> {
    check: C,
    algorithms: WebPkiSupportedAlgorithms,
}

impl<C: Check> Verifier<C> {
    pub(super) fn new(check: C, provider: &CryptoProvider) -> Verifier<C> {
        Verifier {
            check,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl<C: Check> ServerCertVerifier for Verifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let algorithms = &self.algorithms;
        (self.check).check(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
            algorithms,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.check.root_hints()
    }
}

/// The checks short of verify-full. With `chain` (verify-ca, or a weaker mode given
/// sslrootcert), the chain must lead to sslrootcert but the name need not match the host: Cloud
/// SQL's server certificate names project:instance, not the IP address connected to. Without
/// it (require/prefer/allow and no sslrootcert), libpq encrypts without checking who the
/// server is.
#[derive(Debug)]
pub(super) struct Lenient {
    pub(super) chain: Option<Arc<WebPkiServerVerifier>>,
}

impl Check for Lenient {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
        _: &WebPkiSupportedAlgorithms,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // rustls checks the name only after the chain, validity and revocation have passed
            // (webpki/server_verifier.rs), so a name error means all else was fine.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn root_hints(&self) -> Option<&[DistinguishedName]> {
        self.chain.as_ref()?.root_hint_subjects()
    }
}

/// A Cloud SQL instance, checked the way Google's connectors check it: the chain must end at
/// the instance's CA; then a CAS-based instance's certificate names its DNS name, and a legacy
/// per-instance certificate has `PROJECT:INSTANCE` as its common name.
#[derive(Debug)]
pub(super) struct Instance {
    pub(super) roots: RootCertStore,
    pub(super) common_name: String,
    pub(super) dns_name: Option<String>,
}

impl Check for Instance {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
        algorithms: &WebPkiSupportedAlgorithms,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &certificate,
            &self.roots,
            intermediates,
            now,
            algorithms.all,
        )?;
        if let Some(dns) = &self.dns_name {
            let named = ServerName::try_from(dns.as_str())
                .is_ok_and(|name| rustls::client::verify_server_name(&certificate, &name).is_ok());
            if named {
                return Ok(ServerCertVerified::assertion());
            }
        }
        match common_name(end_entity) {
            Some(cn) if cn == self.common_name => Ok(ServerCertVerified::assertion()),
            found => Err(rustls::Error::General(format!(
                "the server certificate is for {}, not instance {}{}",
                found.map_or_else(|| "no common name".to_string(), |cn| format!("\"{cn}\"")),
                self.common_name,
                self.dns_name
                    .as_ref()
                    .map(|d| format!(" (or {d})"))
                    .unwrap_or_default()
            ))),
        }
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
