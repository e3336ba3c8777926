//! Address-validation tokens (as QUIC's Retry): a token proves that the client receives
//! datagrams sent to its source IP address, so only validated sources get large answers.
//!
//! token = epoch (u32, big-endian) | SipHash-2-4-128(key[epoch], epoch | ip) (16 bytes).
//! The key rotates every `rotation`; tokens of the current and the previous epoch are
//! accepted, so a token lives between one and two rotation periods. Nothing is stored per
//! client: validation is one keyed hash.

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use siphasher::sip128::{Hasher128, SipHasher24};

use super::wire::TOKEN_LEN;

#[derive(Debug)]
struct Key {
    epoch: u32,
    key: [u8; 16],
}

/// The rotating server secret.
#[derive(Debug)]
pub struct TokenKeys {
    current: Key,
    previous: Option<Key>,
    rotation: Duration,
    next_rotation: Option<Instant>,
}

impl TokenKeys {
    pub fn new(rotation: Duration) -> TokenKeys {
        TokenKeys {
            current: Key {
                epoch: rand::random(),
                key: rand::random(),
            },
            previous: None,
            rotation,
            next_rotation: None,
        }
    }

    fn mac(key: &Key, ip: IpAddr) -> [u8; 16] {
        let mut h = SipHasher24::new_with_key(&key.key);
        h.write(&key.epoch.to_be_bytes());
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
        t[..4].copy_from_slice(&self.current.epoch.to_be_bytes());
        t[4..].copy_from_slice(&Self::mac(&self.current, ip));
        t
    }

    /// Whether `token` was minted for `ip` under the current or the previous key.
    pub fn verify(&self, ip: IpAddr, token: &[u8]) -> bool {
        if token.len() != TOKEN_LEN {
            return false;
        }
        let epoch = u32::from_be_bytes([token[0], token[1], token[2], token[3]]);
        let key = if epoch == self.current.epoch {
            &self.current
        } else {
            match &self.previous {
                Some(k) if k.epoch == epoch => k,
                _ => return false,
            }
        };
        // Not constant-time: a timing oracle on a 128-bit MAC over UDP is not a practical
        // attack, and the key rotates.
        Self::mac(key, ip) == token[4..]
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

    /// Makes a new key current; the old one stays valid for one more period.
    pub fn rotate(&mut self, now: Instant) {
        let next = Key {
            epoch: self.current.epoch.wrapping_add(1),
            key: rand::random(),
        };
        self.previous = Some(std::mem::replace(&mut self.current, next));
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
}
