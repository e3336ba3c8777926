//! TLS settings from PEM files: the server side of an SSL / SASL_SSL listener and the client
//! side of the tools. Every file problem names the file.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// How long a client may take to complete its handshake by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file (`what` says which flag it came from).
pub fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem =
        std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{what} {}: bad PEM: {e:?}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{what} {}: no certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        );
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| {
        format!(
            "reading the private key file (--tls-key) {}",
            path.display()
        )
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        anyhow!(
            "private key file (--tls-key) {}: no PEM private key (PKCS#8, SEC1 or PKCS#1) in it: {e:?}",
            path.display()
        )
    })
}

fn roots(path: &Path, what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path, what)? {
        roots
            .add(c)
            .map_err(|e| anyhow!("{what} {}: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A TLS listener's settings, shared by its connections.
pub struct TlsServer {
    pub(super) config: Arc<ServerConfig>,
    /// Whether clients must present a certificate signed by the client CA.
    pub client_auth: bool,
    /// A handshake not done by then closes the connection.
    pub handshake_timeout: Duration,
    /// The kTLS probe at load time: None if available, else why not.
    ktls_missing: Option<String>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsServer(client_auth: {})", self.client_auth)
    }
}

impl TlsServer {
    /// The certificate chain `cert` (PEM, leaf first) with its key `key`; with `client_ca`,
    /// clients must present a certificate it signed.
    pub fn load(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        handshake_timeout: Duration,
    ) -> Result<TlsServer> {
        let provider = provider();
        let certs = load_certs(cert, "certificate file (--tls-cert)")?;
        let key_der = load_key(key)?;
        let signing = provider
            .key_provider
            .load_private_key(key_der.clone_key())
            .map_err(|e| anyhow!("private key file {}: unusable key: {e}", key.display()))?;
        let certified = rustls::sign::CertifiedKey::new(certs.clone(), signing);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => bail!(
                "private key file {} does not match the certificate in {} ({e})",
                key.display(),
                cert.display()
            ),
        }
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match client_ca {
            Some(ca) => {
                let roots = roots(ca, "client CA file (--tls-client-ca)")?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| anyhow!("client CA file {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(certs, key_der).map_err(|e| {
            anyhow!(
                "certificate {} with key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
        Ok(TlsServer {
            config: Arc::new(config),
            client_auth: client_ca.is_some(),
            handshake_timeout,
            ktls_missing: super::ktls::probe().err(),
        })
    }

    /// How record bytes leave this listener's connections (for the startup line).
    pub fn record_path(&self) -> String {
        match &self.ktls_missing {
            Some(why) => format!("copy through rustls; no kTLS: {why}"),
            None => "copy through rustls; kTLS available but not used (offload not built)".into(),
        }
    }
}

/// The client side of a TLS connection to a listener: who to trust, and the name to check.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// Trusting the CA file given.
    pub config: Arc<ClientConfig>,
}

impl ClientTls {
    /// Trusts the certificates of `ca` (PEM).
    pub fn load(ca: &Path) -> Result<ClientTls> {
        let roots = roots(ca, "CA file")?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// A client connection to `addr` (HOST:PORT; the host is the name checked).
    pub fn connection(&self, addr: &str) -> Result<rustls::ClientConnection> {
        let host = match addr.parse::<SocketAddr>() {
            Ok(sa) => sa.ip().to_string(),
            Err(_) => addr
                .rsplit_once(':')
                .map_or(addr, |(h, _)| h)
                .trim_matches(['[', ']'])
                .to_string(),
        };
        let name = ServerName::try_from(host.clone())
            .map_err(|e| anyhow!("{host}: not a TLS server name: {e}"))?;
        rustls::ClientConnection::new(Arc::clone(&self.config), name)
            .with_context(|| format!("starting TLS to {addr}"))
    }
}
