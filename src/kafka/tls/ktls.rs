//! Whether the kernel offers TLS offload (kTLS), which would let `sendfile` carry record bytes
//! on TLS connections.

/// `Ok` if the kernel has the `tls` TCP upper-layer protocol. Probed on a fresh, unconnected
/// TCP socket: setting `TCP_ULP "tls"` fails with ENOENT when the kernel has no kTLS (after
/// trying to load the module) and with ENOTCONN when it has it (it only attaches to an
/// established connection), so nothing is changed and no connection is needed.
pub fn probe() -> Result<(), String> {
    use nix::errno::Errno;
    use nix::sys::socket::{setsockopt, sockopt::TcpUlp};
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("probing kTLS: socket: {e}"))?;
    match setsockopt(&s, TcpUlp::default(), b"tls") {
        Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(format!("TCP_ULP \"tls\": {e}")),
    }
}

#[cfg(test)]
mod tests {
    /// The probe answers either way without panicking; on the project's machines (no kTLS)
    /// it names the errno.
    #[test]
    fn probe_answers() {
        match super::probe() {
            Ok(()) => {}
            Err(why) => assert!(why.contains("TCP_ULP"), "{why}"),
        }
    }
}
