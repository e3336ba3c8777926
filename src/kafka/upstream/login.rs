//! The gateway's own SASL login to the cluster (`--upstream-sasl-user`,
//! `--upstream-sasl-password-file`, `--upstream-sasl-mechanism`): where the cluster's listener
//! is SASL_PLAINTEXT (cluster mode with a SASL listener relays its clients there), the
//! watcher's connections authenticate as this principal, which needs Describe on the cluster
//! and Read on the topics the gateway serves. Client side of PLAIN and SCRAM-SHA-256/512.

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use rand::RngCore;

use super::ClusterView;
use crate::kafka::apis::sb;
use crate::kafka::auth::scram::{self, ScramHash};
use crate::kafka::auth::Mechanism;
use crate::kafka::client::Connection;

/// Credentials of the gateway's own login.
#[derive(Clone)]
pub struct UpstreamLogin {
    /// PLAIN or SCRAM-SHA-256/512.
    pub mechanism: Mechanism,
    /// User name.
    pub user: String,
    /// Password (read from a file, never given on the command line).
    pub password: String,
}

impl std::fmt::Debug for UpstreamLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} as {}", self.mechanism.name(), self.user)
    }
}

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
    match l.mechanism {
        Mechanism::Plain => {
            step(conn, format!("\0{}\0{}", l.user, l.password).into_bytes())?;
        }
        Mechanism::Scram(h) => scram_login(conn, h, &l.user, &l.password)?,
    }
    Ok(())
}

fn scram_login(conn: &mut Connection, h: ScramHash, user: &str, password: &str) -> Result<()> {
    let mut n = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut n);
    let name = user.replace('=', "=3D").replace(',', "=2C");
    let bare = format!("n={name},r={}", B64.encode(n));
    let server_first = step(conn, format!("n,,{bare}").into_bytes())?;
    let server_first =
        String::from_utf8(server_first).context("SCRAM server-first is not UTF-8")?;
    let (client_final, want) = scram::client_final(h, password, &bare, &server_first)?;
    let got = step(conn, client_final.into_bytes())?;
    if got != want {
        bail!("the cluster's SCRAM server signature does not match (not the real cluster?)");
    }
    Ok(())
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
