//! TLS on the Kafka listener: the SSL and SASL_SSL listeners, with rustls (ring provider).
//!
//! - [`config`]: the server certificate and key (`--tls-cert`, `--tls-key`) and the optional
//!   client CA (`--tls-client-ca`) loaded into a rustls configuration; the client side of the
//!   tools (`kxgw-bench kafka-load --tls-ca`).
//! - [`principal`]: a client certificate's subject as Kafka's default principal builder names
//!   it (`User:CN=alice,OU=eng,O=example`).
//! - [`conn`]: one connection's TLS layer between its socket and its session. A thin
//!   transport: the session sees the same plaintext bytes as on a PLAINTEXT listener.
//! - [`ktls`]: whether the kernel offers TLS offload (`TCP_ULP "tls"`).
//! - [`stats`]: handshakes completed and the causes of connections closed by TLS.
//!
//! Record bytes on a TLS connection leave through the copy path: rustls encrypts in user
//! space, so they are read from the segment into the TLS writer (`pread`), never `sendfile`d.
//! kTLS (which would let `sendfile` carry them) is probed at start and reported; offload to it
//! is not implemented.

pub mod config;
pub mod conn;
pub mod ktls;
pub mod principal;
pub mod stats;

pub use config::{ClientTls, TlsServer};
pub use conn::{HandshakeDeadlines, TlsConn};
pub use stats::TlsStats;
