//! Asks a kxgw Kafka listener for a fetch ticket (what `kxgw consume` does before fetching
//! over UDP / AF_XDP from a gateway that requires tickets): connect, log in with SASL if
//! given credentials, send the FetchTicket extension request
//! ([`crate::kafka::apis::fetch_ticket`]).

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::apis::fetch_ticket::{self, TicketRequest, TicketResponse};
use super::auth::client::Credentials;
use super::client::read_response;
use super::frame::{decode_response, encode_request};

const CLIENT_ID: &str = "kxgw-consume";

/// A ticket and how long it is valid.
#[derive(Clone, Debug)]
pub struct Issued {
    pub ticket: Vec<u8>,
    pub lifetime: Duration,
}

/// Connects to `addr` (HOST:PORT), logs in with `creds` (None: PLAINTEXT, User:ANONYMOUS)
/// and asks for a ticket naming `topics`. Ok(None): the gateway requires no ticket.
pub fn request_ticket(
    addr: &str,
    creds: Option<&Credentials>,
    topics: &[&str],
    timeout: Duration,
) -> Result<Option<Issued>> {
    let sa = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))?;
    let mut s = TcpStream::connect_timeout(&sa, timeout)
        .with_context(|| format!("connecting to the Kafka listener {addr}"))?;
    s.set_read_timeout(Some(timeout)).context("SO_RCVTIMEO")?;
    s.set_nodelay(true).context("TCP_NODELAY")?;
    if let Some(c) = creds {
        login(&mut s, c).with_context(|| format!("SASL {c:?} at {addr}"))?;
    }
    let req = TicketRequest {
        topics: topics.iter().map(|t| t.to_string()).collect(),
    };
    s.write_all(&fetch_ticket::request_frame(1, CLIENT_ID, &req))
        .context("sending FetchTicket")?;
    let frame = read_response(&mut s).with_context(|| {
        format!("reading the FetchTicket answer of {addr} (a kxgw gateway? it closes the connection when the request comes before the login)")
    })?;
    let (corr, resp) = fetch_ticket::response_body(&frame)
        .map_err(|e| anyhow::anyhow!("FetchTicket answer of {addr}: {e}"))?;
    if corr != 1 {
        bail!("FetchTicket answer of {addr} has correlation id {corr}");
    }
    judge(addr, resp)
}

fn judge(addr: &str, resp: TicketResponse) -> Result<Option<Issued>> {
    const SECURITY_DISABLED: i16 = 54;
    match resp.error_code {
        0 => {}
        SECURITY_DISABLED => return Ok(None),
        code => bail!(
            "{addr} refused a fetch ticket: error {code}: {}{}",
            resp.error_message.as_deref().unwrap_or(""),
            refused_topics(&resp)
        ),
    }
    if resp.topics.iter().any(|(_, c)| *c != 0) {
        bail!(
            "{addr} refused a fetch ticket for some topics:{}",
            refused_topics(&resp)
        );
    }
    Ok(Some(Issued {
        lifetime: resp.lifetime(),
        ticket: resp.ticket,
    }))
}

fn refused_topics(r: &TicketResponse) -> String {
    r.topics
        .iter()
        .filter(|(_, c)| *c != 0)
        .map(|(t, c)| format!(" {t} (error {c})"))
        .collect()
}

fn call<Req, Resp>(
    s: &mut TcpStream,
    key: ApiKey,
    version: i16,
    corr: i32,
    req: &Req,
) -> Result<Resp>
where
    Req: kafka_protocol::protocol::Encodable,
    Resp: kafka_protocol::protocol::Decodable,
{
    let frame = encode_request(key, version, corr, CLIENT_ID, req)?;
    s.write_all(&frame)
        .with_context(|| format!("sending {key:?}"))?;
    let mut resp: Bytes =
        read_response(s).with_context(|| format!("reading the {key:?} answer"))?;
    decode_response(key, version, corr, &mut resp)
}

/// SaslHandshake v1 + SaslAuthenticate v2 until the mechanism is done.
fn login(s: &mut TcpStream, c: &Credentials) -> Result<()> {
    let name = c.mechanism.name();
    let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(name));
    let r: SaslHandshakeResponse = call(s, ApiKey::SaslHandshake, 1, 101, &hs)?;
    if r.error_code != 0 {
        let offered: Vec<&str> = r.mechanisms.iter().map(|m| m.as_str()).collect();
        bail!(
            "SaslHandshake refused {name} (error {}; offered: {offered:?})",
            r.error_code
        );
    }
    let (mut token, mut state) = c.start();
    for corr in 102..110 {
        let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
        let r: SaslAuthenticateResponse = call(s, ApiKey::SaslAuthenticate, 2, corr, &req)?;
        if r.error_code != 0 {
            bail!(
                "authentication failed (error {}): {}",
                r.error_code,
                r.error_message.as_ref().map_or("", |m| m.as_str())
            );
        }
        match state.step(c, &r.auth_bytes).map_err(anyhow::Error::msg)? {
            Some(next) => token = next,
            None => return Ok(()),
        }
    }
    bail!("the SASL exchange did not finish")
}
