//! A self-signed certificate authority, for the certificate and Google stand-ins alike.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SignatureAlgorithm,
};

/// A self-signed CA named `name`, in PEM, and the issuer that signs with it.
pub fn authority(
    name: &str,
    algorithm: &'static SignatureAlgorithm,
) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate_for(algorithm).expect("CA key");
    let mut params = CertificateParams::new(Vec::new()).expect("no names");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-sign CA");
    (cert.pem(), Issuer::new(params, key))
}
