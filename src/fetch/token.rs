//! Address-validation tokens (as QUIC's Retry): a token proves that the client receives
//! datagrams sent to its source IP address, so only validated sources get large answers.
//!
//! token = epoch (u32, big-endian) | SipHash-2-4-128(key[epoch], epoch | ip) (16 bytes), with
//! key[epoch] = SipHash-2-4-128(secret, "kxgw token key" | epoch) and a random secret per
//! gateway. The epoch advances every `rotation`; tokens of the current and the previous epoch
//! are accepted, so a token lives between one and two rotation periods. Nothing is stored
//! per client: validation is one keyed hash.

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use siphasher::sip128::{Hasher128, SipHasher24};

use super::wire::TOKEN_LEN;

/// The rotating server secret. Per-epoch keys derive from one secret, so several servers
/// (one per transport worker) given the same secret validate each other's tokens.
#[derive(Debug)]
pub struct TokenKeys {
    secret: [u8; 16],
    epoch: u32,
    rotation: Duration,
    next_rotation: Option<Instant>,
}

impl TokenKeys {
    /// Keys from a fresh random secret.
    pub fn new(rotation: Duration) -> TokenKeys {
        Self::with_secret(rotation, rand::random())
    }

    /// Keys from a given secret (shared by the workers of one gateway).
    pub fn with_secret(rotation: Duration, secret: [u8; 16]) -> TokenKeys {
        TokenKeys {
            secret,
            epoch: 0,
            rotation,
            next_rotation: None,
        }
    }

    fn key(&self, epoch: u32) -> [u8; 16] {
        let mut h = SipHasher24::new_with_key(&self.secret);
        h.write(b"kxgw token key");
        h.write(&epoch.to_be_bytes());
        h.finish128().as_bytes()
    }

    fn mac(&self, epoch: u32, ip: IpAddr) -> [u8; 16] {
        let mut h = SipHasher24::new_with_key(&self.key(epoch));
        h.write(&epoch.to_be_bytes());
        match ip {
            IpAddr::V4(a) => {
                h.write_u8(4);
                h.write(&a.octets());
            }
            IpAddr::V6(a) => {
                h.write_u8(6);
                h.write(&a.octets());
            }
        }
        h.finish128().as_bytes()
    }

    /// A token for `ip` under the current key.
    pub fn mint(&self, ip: IpAddr) -> [u8; TOKEN_LEN] {
        let mut t = [0u8; TOKEN_LEN];
        t[..4].copy_from_slice(&self.epoch.to_be_bytes());
        t[4..].copy_from_slice(&self.mac(self.epoch, ip));
        t
    }

    /// Whether `token` was minted for `ip` in the current or the previous epoch (or the
    /// next one: a sibling worker may have rotated a moment earlier).
    pub fn verify(&self, ip: IpAddr, token: &[u8]) -> bool {
        if token.len() != TOKEN_LEN {
            return false;
        }
        let epoch = u32::from_be_bytes([token[0], token[1], token[2], token[3]]);
        let age = self.epoch.wrapping_sub(epoch) as i32;
        if !(-1..=1).contains(&age) {
            return false;
        }
        // Not constant-time: a timing oracle on a 128-bit MAC over UDP is not a practical
        // attack, and the key rotates.
        self.mac(epoch, ip) == token[4..]
    }

    /// When the key must rotate next (set on the first call to [`TokenKeys::tick`]).
    pub fn next_rotation(&self) -> Option<Instant> {
        self.next_rotation
    }

    /// Starts the rotation clock, and rotates when due.
    pub fn tick(&mut self, now: Instant) {
        match self.next_rotation {
            None => self.next_rotation = Some(now + self.rotation),
            Some(t) if now >= t => self.rotate(now),
            Some(_) => {}
        }
    }

    /// Moves to the next epoch; tokens of the one before stay valid for one more period.
    pub fn rotate(&mut self, now: Instant) {
        self.epoch = self.epoch.wrapping_add(1);
        self.next_rotation = Some(now + self.rotation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_to_ip_and_expire_after_two_rotations() {
        let now = Instant::now();
        let mut k = TokenKeys::new(Duration::from_secs(10));
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        let b: IpAddr = "198.18.0.3".parse().unwrap();
        let t = k.mint(a);
        assert!(k.verify(a, &t));
        assert!(!k.verify(b, &t));
        let mut forged = t;
        forged[10] ^= 1;
        assert!(!k.verify(a, &forged));
        assert!(!k.verify(a, &t[..10]));
        k.rotate(now);
        assert!(k.verify(a, &t), "previous epoch still accepted");
        k.rotate(now);
        assert!(!k.verify(a, &t), "two rotations later it is stale");
        assert!(k.verify(a, &k.mint(a)));
    }

    #[test]
    fn workers_sharing_a_secret_accept_each_others_tokens() {
        let now = Instant::now();
        let secret = [5u8; 16];
        let mut w1 = TokenKeys::with_secret(Duration::from_secs(10), secret);
        let w2 = TokenKeys::with_secret(Duration::from_secs(10), secret);
        let other = TokenKeys::with_secret(Duration::from_secs(10), [6u8; 16]);
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        assert!(w2.verify(a, &w1.mint(a)));
        assert!(!other.verify(a, &w1.mint(a)));
        // w1 rotated a moment before w2: both still accept each other's tokens.
        w1.rotate(now);
        assert!(w2.verify(a, &w1.mint(a)));
        assert!(w1.verify(a, &w2.mint(a)));
    }
}
