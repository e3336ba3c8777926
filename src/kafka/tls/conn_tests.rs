//! TlsConn against a rustls client over an in-memory socket: handshake, responses with
//! record bytes from a file (the copy path), client certificates, and garbage.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::*;
use crate::kafka::chunk::{Chunk, FileRange};
use crate::kafka::tls::stats::TlsStats;

/// A non-blocking socket: `rx` is what the peer sent, `tx` what we sent.
#[derive(Default)]
struct Sock {
    rx: VecDeque<u8>,
    tx: Vec<u8>,
    eof: bool,
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rx.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        self.rx.read(buf)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
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
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = params(&[(DnType::CommonName, "kxgw test CA")]);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// A certificate signed by the CA: (DER, PKCS#8 key DER); also written as NAME.pem and
    /// NAME.key.
    fn issue(&self, name: &str, dn: &[(DnType, &str)], server: bool) -> (Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut p = params(dn);
        if server {
            p.subject_alt_names = vec![SanType::DnsName("localhost".try_into().unwrap())];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        (cert.der().to_vec(), key.serialize_der())
    }

    fn server(&self, client_ca: bool) -> TlsServer {
        self.issue("server", &[(DnType::CommonName, "localhost")], true);
        let ca = self.path("ca.pem");
        TlsServer::load(
            &self.path("server.pem"),
            &self.path("server.key"),
            client_ca.then_some(ca.as_path()),
            Duration::from_secs(10),
        )
        .unwrap()
    }

    fn client(&self, cert: Option<(Vec<u8>, Vec<u8>)>) -> ClientConnection {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.der().to_vec()))
            .unwrap();
        let b =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let cfg = match cert {
            Some((c, k)) => b
                .with_client_auth_cert(
                    vec![CertificateDer::from(c)],
                    PrivateKeyDer::from(PrivatePkcs8KeyDer::from(k)),
                )
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        ClientConnection::new(Arc::new(cfg), ServerName::try_from("localhost").unwrap()).unwrap()
    }
}

/// Moves bytes both ways until nothing moves; returns the plaintext the server read and
/// the first server-side error.
fn run(
    c: &mut ClientConnection,
    s: &mut TlsConn,
    sock: &mut Sock,
    out: &mut OutQueue,
    stats: &TlsStats,
    got: &mut Vec<u8>,
) -> io::Result<Vec<u8>> {
    let mut plain = Vec::new();
    for _ in 0..200 {
        while c.wants_write() {
            c.write_tls(&mut sock.rx).unwrap();
        }
        let mut buf = [0u8; 4096];
        loop {
            match s.read_plain(sock, &mut buf, stats) {
                Ok(0) => break,
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        s.write_out(sock, out)?;
        let mut rd = &sock.tx[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().map_err(io::Error::other)?;
            // rustls holds little received plaintext: take it as it comes.
            let _ = c.reader().read_to_end(got);
        }
        sock.tx.clear();
        if !c.is_handshaking() && out.is_empty() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    Ok(plain)
}

fn file_with(content: &[u8]) -> Arc<std::fs::File> {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(content).unwrap();
    Arc::new(f)
}

#[test]
fn handshake_then_responses_with_record_bytes_through_the_copy_path() {
    let pki = Pki::new();
    let server = pki.server(false);
    let stats = TlsStats::default();
    let mut s = TlsConn::new(&server, Instant::now()).unwrap();
    let mut c = pki.client(None);
    let mut sock = Sock::default();
    let mut out = OutQueue::default();
    let mut got = Vec::new();
    c.writer().write_all(b"request bytes").unwrap();
    let plain = run(&mut c, &mut s, &mut sock, &mut out, &stats, &mut got).unwrap();
    assert_eq!(plain, b"request bytes");
    assert!(s.is_established());
    assert_eq!(s.take_principal(), None, "no client certificate asked for");
    // A response bigger than one step: header, then record bytes from a file.
    let content: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    out.push(vec![
        Chunk::Mem(Bytes::from_static(b"hdr")),
        Chunk::File(FileRange {
            file: file_with(&content),
            position: 7,
            len: 1_000_000,
        }),
    ]);
    run(&mut c, &mut s, &mut sock, &mut out, &stats, &mut got).unwrap();
    let mut want = b"hdr".to_vec();
    want.extend_from_slice(&content[7..1_000_007]);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "bytes differ");
    assert_eq!(stats.ok.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn client_certificate_subject_is_the_principal() {
    let pki = Pki::new();
    let server = pki.server(true);
    let alice = pki.issue(
        "alice",
        &[
            (DnType::OrganizationName, "kxgw"),
            (DnType::CommonName, "alice"),
        ],
        false,
    );
    let stats = TlsStats::default();
    let mut s = TlsConn::new(&server, Instant::now()).unwrap();
    let mut c = pki.client(Some(alice));
    let mut sock = Sock::default();
    run(
        &mut c,
        &mut s,
        &mut sock,
        &mut OutQueue::default(),
        &stats,
        &mut Vec::new(),
    )
    .unwrap();
    assert!(s.is_established());
    assert_eq!(s.take_principal().as_deref(), Some("User:CN=alice,O=kxgw"));
    assert_eq!(s.take_principal(), None, "handed over once");

    // Without a certificate: refused, counted.
    let mut s = TlsConn::new(&server, Instant::now()).unwrap();
    let mut c = pki.client(None);
    let mut sock = Sock::default();
    let e = run(
        &mut c,
        &mut s,
        &mut sock,
        &mut OutQueue::default(),
        &stats,
        &mut Vec::new(),
    );
    assert_eq!(e.unwrap_err().kind(), io::ErrorKind::InvalidData);
    assert!(s.failed() && !s.is_established());
    assert_eq!(
        stats.client_cert.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn plaintext_kafka_bytes_are_not_tls_and_get_an_alert() {
    let pki = Pki::new();
    let server = pki.server(false);
    let stats = TlsStats::default();
    let mut s = TlsConn::new(&server, Instant::now()).unwrap();
    let mut sock = Sock::default();
    // An ApiVersions v0 request as a PLAINTEXT client sends it.
    sock.rx.extend([0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0, 0]);
    let e = s
        .read_plain(&mut sock, &mut [0u8; 1024], &stats)
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(s.failed());
    assert_eq!(s.deadline(), None, "no handshake to wait for any more");
    assert_eq!(stats.not_tls.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(sock.tx.first(), Some(&21), "a TLS alert record was sent");
}

#[test]
fn truncated_handshake_is_counted() {
    let pki = Pki::new();
    let server = pki.server(false);
    let stats = TlsStats::default();
    let mut c = pki.client(None);
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    let mut s = TlsConn::new(&server, Instant::now()).unwrap();
    let mut sock = Sock::default();
    sock.rx.extend(&hello[..hello.len() / 2]);
    let mut buf = [0u8; 1024];
    let e = s.read_plain(&mut sock, &mut buf, &stats).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "half a hello: wait");
    assert!(s.deadline().is_some());
    sock.eof = true;
    assert_eq!(s.read_plain(&mut sock, &mut buf, &stats).unwrap(), 0);
    assert!(s.failed());
    assert_eq!(
        stats.truncated.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(stats.ok.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn missing_files_and_a_foreign_key_are_named() {
    let pki = Pki::new();
    pki.issue("server", &[(DnType::CommonName, "localhost")], true);
    pki.issue("other", &[(DnType::CommonName, "other")], true);
    let t = Duration::from_secs(1);
    let err =
        |cert: &Path, key: &Path| format!("{:#}", TlsServer::load(cert, key, None, t).unwrap_err());
    let missing = pki.path("nope.pem");
    let e = err(&missing, &pki.path("server.key"));
    assert!(e.contains("nope.pem") && e.contains("--tls-cert"), "{e}");
    let e = err(&pki.path("server.pem"), &missing);
    assert!(e.contains("nope.pem") && e.contains("--tls-key"), "{e}");
    let e = err(&pki.path("server.pem"), &pki.path("other.key"));
    assert!(
        e.contains("other.key") && e.contains("does not match") && e.contains("server.pem"),
        "{e}"
    );
    let e = err(&pki.path("server.key"), &pki.path("server.key"));
    assert!(e.contains("no certificate"), "{e}");
    let e = format!(
        "{:#}",
        TlsServer::load(
            &pki.path("server.pem"),
            &pki.path("server.key"),
            Some(&missing),
            t
        )
        .unwrap_err()
    );
    assert!(
        e.contains("nope.pem") && e.contains("--tls-client-ca"),
        "{e}"
    );
}

#[test]
fn deadlines_come_due_in_order() {
    let mut d = HandshakeDeadlines::default();
    let t0 = Instant::now();
    d.push(t0 + Duration::from_secs(2), 7);
    d.push(t0 + Duration::from_secs(1), 9);
    assert_eq!(d.next(), Some(t0 + Duration::from_secs(1)));
    assert_eq!(d.due(t0), Vec::<usize>::new());
    assert_eq!(d.due(t0 + Duration::from_secs(1)), vec![9]);
    assert_eq!(d.due(t0 + Duration::from_secs(5)), vec![7]);
    assert_eq!(d.next(), None);
}
