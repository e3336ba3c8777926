//! The client side of SASL PLAIN and SCRAM-SHA-256/512 (RFC 4616, 5802, 7677), sans-I/O:
//! what `kxgw consume` sends to log in before it asks for a fetch ticket.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::exchange::Mechanism;
use super::scram::{self, ScramHash};

/// Who logs in, and how.
#[derive(Clone)]
pub struct Credentials {
    pub mechanism: Mechanism,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(f, "{} as {}", self.mechanism.name(), self.user)
    }
}

/// One login in progress.
pub enum Login {
    /// PLAIN: one token.
    Plain,
    /// SCRAM after the client-first message.
    ScramFirst {
        hash: ScramHash,
        bare: String,
    },
    /// SCRAM after the client-final message: the server signature expected.
    ScramFinal {
        expected: Vec<u8>,
    },
    Done,
}

/// `,` and `=` in a SCRAM user name (RFC 5802 section 5.1).
fn escape(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

impl Credentials {
    /// The first token, and the state for the server's answer.
    pub fn start(&self) -> (Vec<u8>, Login) {
        match self.mechanism {
            Mechanism::Plain => (
                format!("\0{}\0{}", self.user, self.password).into_bytes(),
                Login::Plain,
            ),
            Mechanism::Scram(hash) => {
                let nonce = B64.encode(rand::random::<[u8; 18]>());
                let bare = format!("n={},r={nonce}", escape(&self.user));
                let first = format!("n,,{bare}").into_bytes();
                (first, Login::ScramFirst { hash, bare })
            }
        }
    }
}

impl Login {
    /// The next token for the server's `reply` (None: the login is complete).
    pub fn step(&mut self, creds: &Credentials, reply: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match std::mem::replace(self, Login::Done) {
            Login::Plain | Login::Done => Ok(None),
            Login::ScramFirst { hash, bare } => {
                let server_first =
                    std::str::from_utf8(reply).map_err(|_| "server-first is not UTF-8")?;
                let (fin, expected) =
                    scram::client_final(hash, &creds.password, &bare, server_first)
                        .map_err(|e| format!("bad server-first {server_first:?}: {e}"))?;
                *self = Login::ScramFinal { expected };
                Ok(Some(fin.into_bytes()))
            }
            Login::ScramFinal { expected } => {
                if reply != expected.as_slice() {
                    return Err("the server's SCRAM signature does not verify".into());
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::scram::{ScramCredential, ScramServer, Step};
    use super::*;

    #[test]
    fn scram_client_logs_in_against_the_server_side() {
        for hash in ScramHash::ALL {
            let cred = ScramCredential::derive(hash, "pw,=x", b"salty", 4096);
            let creds = Credentials {
                mechanism: Mechanism::Scram(hash),
                user: "al,ice".into(),
                password: "pw,=x".into(),
            };
            let (first, mut login) = creds.start();
            let mut s = ScramServer::Start;
            let Step::Continue(sf) = s
                .step(
                    hash,
                    &first,
                    |u| (u == "al,ice").then(|| cred.clone()),
                    "SRV",
                    |_| vec![],
                )
                .unwrap()
            else {
                panic!("client-first answered")
            };
            let fin = login.step(&creds, &sf).unwrap().unwrap();
            let Step::Success { user, reply } =
                s.step(hash, &fin, |_| None, "", |_| vec![]).unwrap()
            else {
                panic!("login must succeed")
            };
            assert_eq!(user, "al,ice");
            assert_eq!(login.step(&creds, &reply).unwrap(), None);
            // A server that does not know the password cannot fake its signature.
            let mut l2 = Login::ScramFinal { expected: reply };
            assert!(l2.step(&creds, b"v=AAAA").is_err());
        }
        let plain = Credentials {
            mechanism: Mechanism::Plain,
            user: "a".into(),
            password: "b".into(),
        };
        assert_eq!(plain.start().0, b"\0a\0b");
    }
}
