//! The test PKI of kxgw's TLS tests: a self-signed CA and the server and client
//! certificates it signs, written as PEM files in a directory the test owns. A leaf crate
//! (rcgen only): the library's unit tests use it without a second copy of `kxgw`, which
//! `kxgw-testkit` would bring.
//!
//! Test code: every failure panics.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use rcgen::DnType;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};

/// A CA; what it issues is written beside its certificate as `NAME.pem` and `NAME.key`.
pub struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// The CA certificate's PEM file.
    pub ca_file: PathBuf,
}

/// What a certificate is for.
#[derive(Clone, Copy, Debug)]
pub enum Usage<'a> {
    /// A TLS server, valid for this host: an IP address or a DNS name.
    Server(&'a str),
    /// A TLS client.
    Client,
}

/// An issued certificate: its PEM files and its DER bytes.
pub struct Issued {
    /// `NAME.pem`.
    pub cert: PathBuf,
    /// `NAME.key` (PKCS#8).
    pub key: PathBuf,
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

fn params(dn: &[(DnType, &str)]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    for (t, v) in dn {
        p.distinguished_name.push(t.clone(), *v);
    }
    p
}

impl Pki {
    /// A CA whose common name is `name`, its certificate written as `dir/NAME.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = params(&[(DnType::CommonName, name)]);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let ca_file = dir.join(format!("{name}.pem"));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
            ca_file,
        }
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca.der().to_vec()
    }

    /// `name` in the CA's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A certificate for subject `dn` signed by the CA, written as `NAME.pem` / `NAME.key`.
    pub fn issue(&self, name: &str, dn: &[(DnType, &str)], usage: Usage) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut p = params(dn);
        match usage {
            Usage::Server(host) => {
                p.subject_alt_names = vec![match host.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(host.try_into().unwrap()),
                }];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Usage::Client => p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let issued = Issued {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}
