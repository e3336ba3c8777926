//! Detects a NIC (or its emulation) that damages UDP GSO datagrams, from the send side alone.
//!
//! With GSO, the kernel hands one large UDP datagram to the device, which cuts it into
//! segments (USO). A device that does this wrong (QEMU's igb model does) delivers segments
//! with bad checksums or bad bytes; the consumer drops them or its batch CRCs fail, and it asks
//! again for the same bytes, which go out with GSO again and are damaged again: the transfer
//! never finishes. Loss alone rarely makes a peer ask for the same bytes more than once again
//! (a repair of a repair), so the guard counts, per peer, the log byte ranges sent with GSO at
//! least `resends` times within `window`; once one peer has `ranges` of them, it trips and the
//! transport sends without GSO from then on. It looks only at what is sent (source, position,
//! length of the payload), so it does not depend on the fetch protocol's request format.
//! Sans-I/O: the transport feeds it every datagram that went out in a GSO message. It sits on
//! the send path of every datagram, so it tracks only a sample of the byte ranges, chosen by
//! position (a resend of a range is sampled exactly when its first send was): most datagrams
//! cost a multiply and a compare, not a hash-map lookup.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// When the guard trips.
#[derive(Clone, Debug)]
pub struct GsoGuardConfig {
    /// Counting window; counts start over when it ends.
    pub window: Duration,
    /// Sends of the same bytes to the same peer (with GSO) that make a range "repeated".
    pub resends: u32,
    /// Repeated (sampled) ranges of one peer within a window that trip the guard.
    pub ranges: u32,
    /// One range position in `sample` is tracked (1: all of them).
    pub sample: u32,
    /// At most this many (peer, range) entries are tracked per window (bounded memory).
    pub max_tracked: usize,
}

impl Default for GsoGuardConfig {
    fn default() -> Self {
        GsoGuardConfig {
            window: Duration::from_secs(10),
            resends: 3,
            // 2 sampled ranges of 1 in 4: about 8 repeated ranges. Erring towards tripping:
            // a false trip costs CPU (no GSO), a missed one a consumer that never finishes.
            ranges: 2,
            sample: 4,
            max_tracked: 1 << 13,
        }
    }
}

/// Why the guard tripped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GsoTrip {
    /// The peer that kept asking for the same bytes.
    pub peer: SocketAddr,
    /// Its ranges sent `resends` times or more within the window.
    pub ranges: u32,
    /// Datagrams of that peer's repeated ranges sent again (beyond the first send).
    pub resent: u64,
}

/// Identity of a payload: (peer, source id, position in the source, length).
type Key = (SocketAddr, usize, u64, usize);

/// The detector's state (one per transport socket).
#[derive(Debug)]
pub struct GsoGuard {
    cfg: GsoGuardConfig,
    window_start: Option<Instant>,
    sends: HashMap<Key, u32>,
    /// Per peer: (repeated ranges, datagrams sent again) in this window.
    peers: HashMap<SocketAddr, (u32, u64)>,
    tripped: bool,
}

impl GsoGuard {
    pub fn new(cfg: GsoGuardConfig) -> GsoGuard {
        GsoGuard {
            // All the room it may use, at once: growing the map rehashed it a dozen times per
            // window on the send path (a window's clear keeps the room).
            sends: HashMap::with_capacity(cfg.max_tracked),
            cfg,
            window_start: None,
            peers: HashMap::new(),
            tripped: false,
        }
    }

    /// Whether it has tripped (then it ignores further sends).
    pub fn tripped(&self) -> bool {
        self.tripped
    }

    /// `len` payload bytes at `position` of source `source` went to `peer` in a GSO message.
    /// Returns the trip the moment the guard trips (once).
    pub fn sent(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        source: usize,
        position: u64,
        len: usize,
    ) -> Option<GsoTrip> {
        if self.tripped || len == 0 || !sampled(source, position, self.cfg.sample) {
            return None;
        }
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= self.cfg.window {
            self.window_start = Some(now);
            self.sends.clear();
            self.peers.clear();
        }
        let key = (peer, source, position, len);
        let full = self.sends.len() >= self.cfg.max_tracked;
        let n = match self.sends.get_mut(&key) {
            Some(n) => {
                *n += 1;
                *n
            }
            // Full: what is tracked keeps counting, new ranges wait for the next window.
            None if full => return None,
            None => {
                self.sends.insert(key, 1);
                1
            }
        };
        if n < self.cfg.resends {
            return None;
        }
        let p = self.peers.entry(peer).or_insert((0, 0));
        if n == self.cfg.resends {
            p.0 += 1;
            p.1 += u64::from(n - 1);
        } else {
            p.1 += 1;
        }
        if p.0 < self.cfg.ranges {
            return None;
        }
        self.tripped = true;
        Some(GsoTrip {
            peer,
            ranges: p.0,
            resent: p.1,
        })
    }
}

/// Whether the range at `position` of `source` is one the guard tracks: a fixed choice per
/// range, spread evenly whatever the datagram size.
fn sampled(source: usize, position: u64, sample: u32) -> bool {
    if sample <= 1 {
        return true;
    }
    let mix = (position ^ (source as u64).rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mix >> 32) % u64::from(sample) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 2], port))
    }

    fn cfg() -> GsoGuardConfig {
        GsoGuardConfig {
            window: Duration::from_secs(10),
            resends: 3,
            ranges: 4,
            sample: 1,
            max_tracked: 1000,
        }
    }

    /// A response of `n` datagrams of 1380 bytes sent to `p` from position `from`.
    fn send_response(
        g: &mut GsoGuard,
        now: Instant,
        p: SocketAddr,
        from: u64,
        n: u64,
    ) -> Option<GsoTrip> {
        let mut trip = None;
        for i in 0..n {
            if let Some(t) = g.sent(now, p, 7, from + i * 1380, 1380) {
                trip = Some(t);
            }
        }
        trip
    }

    #[test]
    fn a_peer_asking_again_and_again_for_the_same_bytes_trips_it() {
        let mut g = GsoGuard::new(cfg());
        let t = Instant::now();
        // The same 10-datagram response, sent three times (two re-fetches after bad CRCs).
        assert_eq!(send_response(&mut g, t, peer(1), 0, 10), None);
        assert_eq!(send_response(&mut g, t, peer(1), 0, 10), None);
        let trip = send_response(&mut g, t, peer(1), 0, 10).expect("tripped on the third send");
        assert_eq!(trip.peer, peer(1));
        assert_eq!(trip.ranges, 4);
        assert_eq!(trip.resent, 8);
        assert!(g.tripped());
        // Once tripped it stays quiet.
        assert_eq!(send_response(&mut g, t, peer(1), 0, 10), None);
    }

    #[test]
    fn repairs_after_ordinary_loss_do_not_trip_it() {
        let mut g = GsoGuard::new(cfg());
        let t = Instant::now();
        // A long transfer; every response has one datagram lost and repaired once, and now
        // and then a repair is lost too (a third send of those bytes), but never `ranges`
        // such ranges within a window.
        for r in 0..1000u64 {
            let now = t + Duration::from_millis(r * 20);
            let from = r * 20 * 1380;
            assert_eq!(send_response(&mut g, now, peer(1), from, 20), None);
            assert_eq!(g.sent(now, peer(1), 7, from + 5 * 1380, 1380), None);
            if r % 200 == 0 {
                assert_eq!(g.sent(now, peer(1), 7, from + 5 * 1380, 1380), None);
            }
        }
        assert!(!g.tripped());
    }

    #[test]
    fn repeats_spread_over_windows_or_peers_do_not_add_up() {
        let mut g = GsoGuard::new(cfg());
        let t = Instant::now();
        // Three peers each repeat 3 ranges: below 4 for every one of them.
        for port in 1..=3 {
            for _ in 0..3 {
                assert_eq!(send_response(&mut g, t, peer(port), 0, 3), None);
            }
        }
        // One peer, 3 repeated ranges per window, windows apart.
        for w in 0..5u64 {
            let now = t + Duration::from_secs(11 * (w + 1));
            for _ in 0..3 {
                assert_eq!(send_response(&mut g, now, peer(9), 0, 3), None);
            }
        }
        assert!(!g.tripped());
        // The fourth repeated range in one window trips it.
        let now = t + Duration::from_secs(100);
        for _ in 0..2 {
            assert_eq!(send_response(&mut g, now, peer(9), 0, 4), None);
        }
        assert!(send_response(&mut g, now, peer(9), 0, 4).is_some());
    }

    #[test]
    fn tracking_is_bounded() {
        let mut g = GsoGuard::new(GsoGuardConfig {
            max_tracked: 8,
            ..cfg()
        });
        let t = Instant::now();
        assert_eq!(send_response(&mut g, t, peer(1), 0, 100), None);
        assert_eq!(g.sends.len(), 8);
        // The tracked ranges still count.
        assert_eq!(send_response(&mut g, t, peer(1), 0, 100), None);
        assert!(send_response(&mut g, t, peer(1), 0, 100).is_some());
    }

    #[test]
    fn sampling_tracks_about_one_range_in_n_and_still_trips() {
        let cfg = GsoGuardConfig {
            sample: 8,
            ranges: 2,
            ..cfg()
        };
        let picked = (0..8000u64).filter(|i| sampled(7, i * 1380, 8)).count();
        assert!((800..1200).contains(&picked), "{picked} of 8000 sampled");
        // A peer whose every GSO datagram is damaged asks for all of them again and again.
        let mut g = GsoGuard::new(cfg);
        let t = Instant::now();
        assert_eq!(send_response(&mut g, t, peer(1), 0, 64), None);
        assert_eq!(send_response(&mut g, t, peer(1), 0, 64), None);
        assert!(send_response(&mut g, t, peer(1), 0, 64).is_some());
        assert!(g.sends.len() < 64, "only the sampled ranges are tracked");
    }
}
