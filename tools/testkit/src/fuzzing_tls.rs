//! Fuzz entry of the TLS layer of the SSL and SASL_SSL listeners: [`tls_stream`] feeds
//! arbitrary bytes as a client's side of a TLS connection to a [`TlsConn`], as the listener
//! does (plaintext Kafka bytes, noise, truncated or malformed handshakes). Errors close the
//! connection; panics, hangs and unbounded buffering are the bugs.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kxgw::kafka::outq::OutQueue;
use kxgw::kafka::tls::{ClientTls, TlsConn, TlsServer, TlsStats};

/// A self-signed P-256 certificate and its key, for fuzzing only (public on purpose: they
/// protect nothing).
const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIUZYZkTlPqdxihRk61/bMyjHjKgaAwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJa3hndy1mdXp6MCAXDTI2MTIwMTE1MzgwNloYDzIxMjYxMTA3
MTUzODA2WjAUMRIwEAYDVQQDDAlreGd3LWZ1enowWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAT7Pi+YY8g/Ru+BBz/lWjZXwPekUGB3v2jBRDl4WyeXEACoo44be+/q
0HziOuNmhb6B5vy9RS/DqGgtWfSBCL0uo2kwZzAdBgNVHQ4EFgQUO2Z8AYsJkx5h
Djl/cnlB+T/eVtAwHwYDVR0jBBgwFoAUO2Z8AYsJkx5hDjl/cnlB+T/eVtAwDwYD
VR0TAQH/BAUwAwEB/zAUBgNVHREEDTALgglsb2NhbGhvc3QwCgYIKoZIzj0EAwID
SAAwRQIgQ+41eRxvitUoeyq+ugyTtDm2s/DZjUaZu60d2kpWrxwCIQDFH0+ymTur
eBVgFhBhGqpGTaa4ZcJUIeACjSLLiXIgBw==
-----END CERTIFICATE-----
";
const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBEpXLwypH2Kjq2kV
ehqsJJisvPdYuX5f0nWzTalkg46hRANCAAT7Pi+YY8g/Ru+BBz/lWjZXwPekUGB3
v2jBRDl4WyeXEACoo44be+/q0HziOuNmhb6B5vy9RS/DqGgtWfSBCL0u
-----END PRIVATE KEY-----
";

struct Fixture {
    server: TlsServer,
    stats: TlsStats,
    /// A rustls client's first flight to this server.
    hello: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kxgw-fuzz-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz fixture: TLS dir");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, CERT).expect("fuzz fixture: cert");
        std::fs::write(&key, KEY).expect("fuzz fixture: key");
        let server = TlsServer::load(&cert, &key, None, Duration::from_secs(10))
            .expect("fuzz fixture: TLS server");
        let client = ClientTls::load(&cert).expect("fuzz fixture: TLS client");
        let _ = std::fs::remove_dir_all(&dir);
        let mut hello = Vec::new();
        let mut c = client
            .connection("localhost:9094")
            .expect("fuzz fixture: client connection");
        while c.wants_write() {
            c.write_tls(&mut hello).expect("fuzz fixture: client hello");
        }
        Fixture {
            server,
            stats: TlsStats::default(),
            hello,
        }
    })
}

/// The socket: what the client sent (`eof` once it is all there); what we send is counted.
struct Sock {
    rx: VecDeque<u8>,
    eof: bool,
    sent: usize,
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rx.is_empty() && !self.eof {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.rx.read(buf)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sent += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Feeds `data` (cut in two at its first byte's value, so records split across reads are
/// covered) to a fresh server connection, reading and answering as the listener does.
pub fn tls_stream(data: &[u8]) {
    let f = fixture();
    let Ok(mut conn) = TlsConn::new(&f.server, Instant::now()) else {
        return;
    };
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut sock = Sock {
        rx: VecDeque::new(),
        eof: false,
        sent: 0,
    };
    let mut out = OutQueue::default();
    let mut buf = [0u8; 4096];
    for (i, piece) in [&data[..cut], &data[cut..]].into_iter().enumerate() {
        sock.rx.extend(piece);
        sock.eof = i == 1;
        loop {
            match conn.read_plain(&mut sock, &mut buf, &f.stats) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        if conn.write_out(&mut sock, &mut out).is_err() {
            return;
        }
    }
}

/// Seeds: a real ClientHello whole, split and truncated; a PLAINTEXT Kafka request; HTTP.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let hello = fixture().hello.clone();
    let api_versions: &[u8] = &[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0, 0];
    vec![
        ("tls_stream", "client-hello".into(), hello.clone()),
        (
            "tls_stream",
            "client-hello-truncated".into(),
            hello[..hello.len() / 2].to_vec(),
        ),
        (
            "tls_stream",
            "plaintext-kafka".into(),
            api_versions.to_vec(),
        ),
        (
            "tls_stream",
            "http".into(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    /// The seeds reach the TLS layer's refusals: each is counted, none completes a handshake.
    #[test]
    fn seeds_are_refused_and_counted() {
        use std::sync::atomic::Ordering::Relaxed;
        for (_, _, data) in super::seeds() {
            super::tls_stream(&data);
        }
        let s = &super::fixture().stats;
        assert_eq!(s.ok.load(Relaxed), 0);
        assert!(s.not_tls.load(Relaxed) >= 2, "plaintext Kafka and HTTP");
        assert!(
            s.truncated.load(Relaxed) >= 2,
            "the hello alone, and half of it"
        );
    }
}
