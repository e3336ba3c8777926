//! The gateway's own SASL login to the cluster (`--upstream-sasl-user`,
//! `--upstream-sasl-password-file`, `--upstream-sasl-mechanism`): where the cluster's listener
//! is SASL_PLAINTEXT (cluster mode with a SASL listener relays its clients there), the
//! watcher's connections authenticate as this principal, which needs Describe on the cluster
//! and Read on the topics the gateway serves. Client side of PLAIN and SCRAM-SHA-256/512.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};

use super::ClusterView;
use crate::kafka::apis::sb;
use crate::kafka::auth::client::Credentials;
use crate::kafka::client::Connection;

/// Credentials of the gateway's own login: the same type (and client state machine) as
/// `kxgw consume`'s ticket login, so SCRAM's client side exists once.
pub type UpstreamLogin = Credentials;

/// Connects to `addr` and logs in if the view has credentials.
pub fn connect(view: &ClusterView, addr: &str) -> Result<Connection> {
    let mut conn = Connection::connect(addr, "kxgw-upstream")?;
    if let Some(l) = view.login() {
        conn.set_timeout(std::time::Duration::from_secs(5))?;
        login(&mut conn, l).with_context(|| format!("SASL login to {addr} ({l:?})"))?;
    }
    Ok(conn)
}

/// SaslHandshake v1 and SaslAuthenticate on `conn` (blocking).
pub fn login(conn: &mut Connection, l: &UpstreamLogin) -> Result<()> {
    let hs: SaslHandshakeResponse = conn.call(
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default().with_mechanism(sb(l.mechanism.name())),
    )?;
    if hs.error_code != 0 {
        let offered: Vec<&str> = hs.mechanisms.iter().map(|m| m.as_str()).collect();
        bail!(
            "SaslHandshake: error {} (the cluster offers {offered:?})",
            hs.error_code
        );
    }
    // PLAIN: one token, no answer to check; SCRAM: client-first, client-final, then the
    // server's signature is verified.
    let (mut token, mut state) = l.start();
    loop {
        let reply = step(conn, token)?;
        match state
            .step(l, &reply)
            .map_err(|e| anyhow!("SCRAM with the cluster: {e} (not the real cluster?)"))?
        {
            Some(next) => token = next,
            None => return Ok(()),
        }
    }
}

/// One SaslAuthenticate (v1): the server's bytes, or its error.
fn step(conn: &mut Connection, token: Vec<u8>) -> Result<Vec<u8>> {
    let r: SaslAuthenticateResponse = conn.call(
        ApiKey::SaslAuthenticate,
        1,
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token)),
    )?;
    if r.error_code != 0 {
        bail!(
            "authentication failed: error {} {}",
            r.error_code,
            r.error_message.as_deref().unwrap_or_default()
        );
    }
    Ok(r.auth_bytes.to_vec())
}
