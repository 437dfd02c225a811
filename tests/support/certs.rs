//! Certificates for the TLS tests, made fresh per test binary by rcgen: a CA, a server
//! certificate for `localhost` and 127.0.0.1 signed by it, client certificates named after a
//! role (for `cert` authentication), and an unrelated "wrong" CA.

// tests/support/ca.rs: a file compiled through `#[path]` finds its submodules beside it.
mod ca;

use std::path::{Path, PathBuf};

use ca::authority;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A 2048-bit RSA key in PKCS#1 PEM, the format Cloud SQL hands out client keys in. ring (the
/// only crypto here) cannot generate RSA keys, so this one is fixed; the certificates over it
/// are still made per run. It guards nothing: it exists only for these tests.
const RSA_PKCS1_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAnOwP4G/VZ3ruikeFlrUN3AWlLcs2+vrrPJj7clcJwFpJmc7P
pYO/uDZB9KFj1I3wJwG+lVe9AIC6c1PZtxzohnwOyi8N6oeoJ0rOFdd0Fw/C4N/7
4IUbvlCxaVJRy+WDOFCirajHKkOsueerrQ8CV4rr+Lm5yBfNPPK/zdfEVAebstsI
LSBSnxUmbLxnm/8gT/eR3UPdfgRzwQauiOePOujbtI0Cn07kzDGuyJu59OxdNPEy
vRmxO5V7J2ebPD8/IcilkyfjzPBQhkLfl6ea/t/ZLJYfSe8IYfme1MIxlSGts7Jv
1OHKkNqMBvkc8x/yaaiUScYyINy277dzXSefowIDAQABAoIBABF1jk/+rAlnEGf1
jIkiZy1bZMUTPsXD6devKbgks6K20543ortxTNZ2avYzMq6b2uQWz0PseXc3MLIo
2n4DdbeTe/hw2HqHUg/fxHgs+u9J7fkj0pwTaJfPKz4No6jXm2GbpHiai7ZJxfZV
LrEC4il9Um3ftCpCw69hTt0x1tfbvZON2uTJtAHrX6QMp/p/a+WRmIRRaA4gDHCs
DaHlxGRvSZ9czjsvDThSu+uGzctrCeERjr89Mv/mwDysOe/aA/O9dRik4BTjGfzF
GVwVCsKadggLHAy0JVuAQcmeExXLxuZi6k6ID9B6Y+A+ziGHJaTXdFaG9P/FGhOD
y3a52ikCgYEAyscQq/TCfPeoV+43UWMIyd34RKVU730JjdIcamC0hbQPv3yS5Pa0
t9mXBo5yFG/nwSKvzOQpzKQwq8KNugXVgYXZbPLUrMp/6+mrfgN7sqvyGsaSb/LH
j4WWgfxfGpPJOGfarVxOnqRobYsyHqLytRwLAOHJ8yUgDUw+JJOZoK8CgYEAxhvl
wKqounVGz6lOie9ZVHrE0cefqjPETtL2iyX2OA/aXETbyNwtswaeHNZG23lDMqLy
Kg2OFXKA4WPIFOm8032HG0ub7DOVqMkMJdFRCNXRP5ePMQDBv6zyE4u/+WPOeAFu
SuYfxO5kmf8eM5umf5mrQAkikOy0+rG+gewXJU0CgYAzjo+PmQjGK1XTHY9VEyAN
63EPSxYgWiNOushcx7++avzCDBNxQcTLJfi/QwKAbb94HLCkILL8BBcX5LySOp+B
ch3JFKi8UjRaMCxZOtt9nzhMVIaxDgJtXGLbI+auZDr6K3WvNFQNA/JFP+n7XiTl
pX6qt73YI21V1DfMpvadowKBgQC82Zc5BPZ3WJi6GMFfyCS13ZqGB+/yhgqawYx4
tSVz59jWoGWLoiiGQsay4qkFSyF9wctrvyQ02cR2F3KCTRbN3RnQMVFf5wTBs3W7
D0BaVcl0/3tm0TvhBnJ1o4DLshL+Xw7Oo3ShfEe2bXZS6AveE5UmJA8pbBxR5uKe
Y3rk+QKBgEzOQV/TjPHSSSxN2EoLkkRsZkhC6cjajtfcrPLow3Q5agHedW1pZi72
fHYVrhGtfzqTF0R2twgdZiWMzwmupHrHEmCfs/XXHardWnNGNPezlnlOS29TfFFI
2S3IW1XN0VoC0SGv50krs0JfDwoeQoyL3Gwv1i/uCRx3K7CYHTTW
-----END RSA PRIVATE KEY-----
";

/// The server's name and address, as its certificate gives them.
pub const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// A test PKI in PEM.
pub struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    /// A CA that signed nothing the server presents, and that the server does not trust.
    pub wrong_ca: String,
    ca_issuer: Issuer<'static, KeyPair>,
    wrong_ca_issuer: Issuer<'static, KeyPair>,
}

/// How a client key file is encoded.
#[derive(Debug, Clone, Copy)]
pub enum KeyFormat {
    /// "PRIVATE KEY", ECDSA P-256.
    Pkcs8,
    /// "EC PRIVATE KEY" with its curve named, as `openssl ecparam -genkey` writes it.
    Sec1,
    /// "RSA PRIVATE KEY".
    RsaPkcs1,
}

/// Client-side files in a directory of their own, deleted on drop.
pub struct ClientFiles {
    pub dir: tempfile::TempDir,
    /// The CA that signed the server certificate.
    pub root_cert: PathBuf,
    pub wrong_root_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// Every key ECDSA P-256, so every signature is ecdsa-with-SHA256.
    pub fn new() -> Pki {
        Pki::signed_with(&rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// Every key and signature of `algorithm`.
    pub fn signed_with(algorithm: &'static SignatureAlgorithm) -> Pki {
        let (ca, ca_issuer) = authority("db-migrate test CA", algorithm);
        let (wrong_ca, wrong_ca_issuer) = authority("unrelated test CA", algorithm);
        let key = KeyPair::generate_for(algorithm).expect("server key");
        let names = SERVER_NAMES.map(String::from).to_vec();
        let mut params = CertificateParams::new(names).expect("server names");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca_issuer).expect("sign server");
        Pki {
            ca,
            server_cert: cert.pem(),
            server_key: key.serialize_pem(),
            wrong_ca,
            ca_issuer,
            wrong_ca_issuer,
        }
    }

    /// `server.crt`, `server.key` and `ca.crt` (to check client certificates) for
    /// `support::ServerOptions::files`.
    pub fn server_files(&self) -> Vec<(String, Vec<u8>)> {
        [
            ("server.crt", &self.server_cert),
            ("server.key", &self.server_key),
            ("ca.crt", &self.ca),
        ]
        .map(|(name, pem)| (name.to_string(), pem.clone().into_bytes()))
        .to_vec()
    }

    /// The settings that make a server use [`Pki::server_files`].
    pub fn server_settings() -> Vec<(String, String)> {
        [
            ("ssl", "on"),
            ("ssl_cert_file", "server.crt"),
            ("ssl_key_file", "server.key"),
            ("ssl_ca_file", "ca.crt"),
        ]
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .to_vec()
    }

    /// Both CAs, and a certificate for `role` signed by the CA the server trusts.
    pub fn client_files(&self, role: &str, format: KeyFormat) -> ClientFiles {
        self.write(role, format, &self.ca_issuer)
    }

    /// As [`Pki::client_files`], but the certificate is signed by the wrong CA.
    pub fn untrusted_client_files(&self, role: &str) -> ClientFiles {
        self.write(role, KeyFormat::Pkcs8, &self.wrong_ca_issuer)
    }

    fn write(&self, role: &str, format: KeyFormat, issuer: &Issuer<'_, KeyPair>) -> ClientFiles {
        let (key, key_pem) = client_key(format);
        let mut params = CertificateParams::new(Vec::new()).expect("no names");
        params.distinguished_name.push(DnType::CommonName, role);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, issuer).expect("sign client");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, content: &str| write_file(dir.path(), name, content);
        ClientFiles {
            root_cert: file("ca.crt", &self.ca),
            wrong_root_cert: file("wrong-ca.crt", &self.wrong_ca),
            cert: file("client.crt", &cert.pem()),
            key: file("client.key", &key_pem),
            dir,
        }
    }
}

fn write_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write client file");
    path
}

/// A key pair for rcgen to certify, and its PEM in `format`.
fn client_key(format: KeyFormat) -> (KeyPair, String) {
    match format {
        KeyFormat::Pkcs8 => {
            let key = KeyPair::generate().expect("P-256 key");
            let pem = key.serialize_pem();
            (key, pem)
        }
        KeyFormat::Sec1 => {
            let key = KeyPair::generate().expect("P-256 key");
            let pem = pem_text("EC PRIVATE KEY", sec1(key.serialized_der()));
            (key, pem)
        }
        KeyFormat::RsaPkcs1 => {
            let PrivateKeyDer::Pkcs1(pkcs1) =
                PrivateKeyDer::from_pem_slice(RSA_PKCS1_KEY.as_bytes()).expect("fixture parses")
            else {
                panic!("the RSA fixture is not PKCS#1");
            };
            // ring loads RSA keys for rcgen from PKCS#8 only: wrap the same key in it.
            let rsa_encryption = [&OID_RSA_ENCRYPTION[..], &[0x05, 0x00]].concat();
            let pkcs8 = der(
                0x30,
                &[
                    &[0x02, 0x01, 0x00][..],
                    &der(0x30, &[&rsa_encryption[..]]),
                    &der(0x04, &[pkcs1.secret_pkcs1_der()]),
                ],
            );
            let key = KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(pkcs8),
                &rcgen::PKCS_RSA_SHA256,
            )
            .expect("RSA fixture loads");
            (key, RSA_PKCS1_KEY.to_string())
        }
    }
}

const OID_RSA_ENCRYPTION: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_PRIME256V1: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The SEC1 ECPrivateKey inside ring's PKCS#8 P-256 key, with the curve parameter OpenSSL
/// writes added: SEQUENCE { version, privateKey, [0] curve, [1] publicKey }.
fn sec1(pkcs8: &[u8]) -> Vec<u8> {
    let [_version, _algorithm, private_key] = elements(content(pkcs8)).try_into().expect("PKCS#8");
    let inner = content(private_key.1);
    let [version, secret, public] = elements(inner).try_into().expect("ECPrivateKey");
    let parts = [version, secret].map(|(tag, value)| der(tag, &[value]));
    let curve = der(0xa0, &[&OID_PRIME256V1[..]]);
    der(
        0x30,
        &[&parts[0], &parts[1], &curve, &der(public.0, &[public.1])],
    )
}

/// The contents of the one DER element `input` holds.
fn content(input: &[u8]) -> &[u8] {
    elements(input)[0].1
}

/// The (tag, contents) of each DER element in `input`.
fn elements(mut input: &[u8]) -> Vec<(u8, &[u8])> {
    let mut found = Vec::new();
    while let [tag, first, rest @ ..] = input {
        let (length, rest) = match *first {
            short @ 0..=0x7f => (usize::from(short), rest),
            long => {
                let (bytes, rest) = rest.split_at(usize::from(long & 0x7f));
                (
                    bytes.iter().fold(0, |n, &b| (n << 8) | usize::from(b)),
                    rest,
                )
            }
        };
        let (value, after) = rest.split_at(length);
        found.push((*tag, value));
        input = after;
    }
    found
}

/// One DER element of `tag` holding `parts` in a row.
fn der(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let value = parts.concat();
    let mut out = vec![tag];
    match u8::try_from(value.len()) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let length = value.len().to_be_bytes();
            let zeros = length.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | (length.len() - zeros) as u8);
            out.extend(&length[zeros..]);
        }
    }
    out.extend(value);
    out
}

fn pem_text(tag: &str, der: Vec<u8>) -> String {
    pem::encode(&pem::Pem::new(tag, der))
}
