//! `kxgw consume`'s fetch ticket: asked for on the gateway's Kafka listener (logging in with
//! SASL when given credentials) before fetching over UDP / AF_XDP, and renewed before it
//! expires on long runs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kxgw::kafka::auth::client::Credentials;
use kxgw::kafka::auth::scram::ScramHash;
use kxgw::kafka::auth::Mechanism;
use kxgw::kafka::ticket_client::request_ticket;

/// SASL mechanisms `kxgw consume` logs in with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl From<SaslMechanism> for Mechanism {
    fn from(m: SaslMechanism) -> Self {
        match m {
            SaslMechanism::Plain => Mechanism::Plain,
            SaslMechanism::ScramSha256 => Mechanism::Scram(ScramHash::Sha256),
            SaslMechanism::ScramSha512 => Mechanism::Scram(ScramHash::Sha512),
        }
    }
}

/// Fetch ticket options (a gateway with --acl or --sasl-users requires one on UDP/AF_XDP).
#[derive(Debug, clap::Args)]
pub struct TicketArgs {
    /// Kafka listener (HOST:PORT) of the gateway to ask for a fetch ticket [default:
    /// --bootstrap, when --sasl-user is given]. Without --sasl-user the ticket is for
    /// User:ANONYMOUS (a PLAINTEXT listener).
    #[arg(long, value_name = "HOST:PORT")]
    pub ticket_from: Option<String>,
    /// SASL user to log in as before asking for the ticket.
    #[arg(long, value_name = "USER")]
    pub sasl_user: Option<String>,
    /// SASL mechanism.
    #[arg(long, value_enum, default_value_t = SaslMechanism::ScramSha256)]
    pub sasl_mechanism: SaslMechanism,
    /// The user's password (visible to other local users in the process list: prefer
    /// --sasl-password-file).
    #[arg(
        long,
        value_name = "PASSWORD",
        requires = "sasl_user",
        conflicts_with = "sasl_password_file"
    )]
    pub sasl_password: Option<String>,
    /// File whose first line is the user's password.
    #[arg(long, value_name = "FILE", requires = "sasl_user")]
    pub sasl_password_file: Option<PathBuf>,
}

/// Gets and renews the ticket of one consumer.
pub struct Ticketing {
    addr: String,
    creds: Option<Credentials>,
    topics: Vec<String>,
    renew_at: Option<Instant>,
    /// When the last ticket was asked for (an immediate renewal waits [`MIN_RENEW_GAP`]).
    asked_at: Option<Instant>,
}

/// Least time between two renewals forced by the gateway refusing the ticket: a gateway that
/// refuses each new ticket at once is not asked in a loop.
const MIN_RENEW_GAP: Duration = Duration::from_millis(250);

impl Ticketing {
    /// None when no ticket is to be asked for (no --ticket-from, no --sasl-user).
    pub fn new(t: &TicketArgs, bootstrap: Option<&str>, topic: &str) -> Result<Option<Ticketing>> {
        let addr = match (&t.ticket_from, &t.sasl_user, bootstrap) {
            (Some(a), _, _) => a.clone(),
            (None, Some(_), Some(b)) => b.to_string(),
            (None, Some(_), None) => anyhow::bail!(
                "--sasl-user: give --ticket-from HOST:PORT (the gateway's Kafka listener) to ask for the fetch ticket"
            ),
            (None, None, _) => return Ok(None),
        };
        let creds = match &t.sasl_user {
            Some(user) => Some(Credentials {
                mechanism: t.sasl_mechanism.into(),
                user: user.clone(),
                password: password(t)?,
            }),
            None => None,
        };
        Ok(Some(Ticketing {
            addr,
            creds,
            topics: vec![topic.to_string()],
            renew_at: None,
            asked_at: None,
        }))
    }

    /// A ticket now (None: the gateway requires none); the next renewal is due at two thirds
    /// of its lifetime.
    pub fn get(&mut self, now: Instant) -> Result<Option<Vec<u8>>> {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.asked_at = Some(now);
        let issued = request_ticket(
            &self.addr,
            self.creds.as_ref(),
            &topics,
            Duration::from_secs(10),
        )
        .context("getting a fetch ticket")?;
        let Some(i) = issued else {
            log::info!("{} requires no fetch ticket", self.addr);
            self.renew_at = None;
            return Ok(None);
        };
        log::debug!("fetch ticket from {} valid for {:?}", self.addr, i.lifetime);
        self.renew_at = Some(now + i.lifetime * 2 / 3);
        Ok(Some(i.ticket))
    }

    /// A renewed ticket when due: at once when the gateway `refused` the last one, else at
    /// two thirds of its lifetime.
    pub fn renew(&mut self, now: Instant, refused: bool) -> Result<Option<Vec<u8>>> {
        match refused {
            true => self.renew_refused(now),
            false => self.renew_if_due(now),
        }
    }

    /// A renewed ticket when the last one is two thirds through its lifetime.
    fn renew_if_due(&mut self, now: Instant) -> Result<Option<Vec<u8>>> {
        match self.renew_at {
            Some(t) if now >= t => self.get(now),
            _ => Ok(None),
        }
    }

    /// A renewed ticket now, the gateway having refused the last one (expired: a renewal
    /// came too late, or the gateway's clock ran ahead), unless one was asked for less than
    /// [`MIN_RENEW_GAP`] ago.
    fn renew_refused(&mut self, now: Instant) -> Result<Option<Vec<u8>>> {
        if self
            .asked_at
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_RENEW_GAP)
        {
            return Ok(None);
        }
        log::debug!("the gateway refused the fetch ticket: renewing it now");
        self.get(now)
    }
}

fn password(t: &TicketArgs) -> Result<String> {
    match (&t.sasl_password, &t.sasl_password_file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the password file {}", f.display()))?;
            Ok(text.lines().next().unwrap_or_default().to_string())
        }
        (None, None) => anyhow::bail!("--sasl-user needs --sasl-password or --sasl-password-file"),
    }
}
