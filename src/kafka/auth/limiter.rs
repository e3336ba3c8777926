//! Failed authentications per source address: a token bucket per IP. Each failure takes a
//! token; an address without tokens is refused before its credentials are even checked
//! (a password guesser gets `burst` tries, then one per `refill`), until its bucket refills.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Addresses remembered at most (full buckets are forgotten first).
const MAX_TRACKED: usize = 65_536;

/// Limiter settings.
#[derive(Clone, Copy, Debug)]
pub struct LimitConfig {
    /// Failures allowed in a burst.
    pub burst: u32,
    /// One more failure allowed per this much time.
    pub refill: Duration,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            burst: 10,
            refill: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The per-address buckets.
#[derive(Debug)]
pub struct FailLimiter {
    cfg: LimitConfig,
    buckets: HashMap<IpAddr, Bucket>,
}

impl FailLimiter {
    /// An empty limiter.
    pub fn new(cfg: LimitConfig) -> Self {
        FailLimiter {
            cfg,
            buckets: HashMap::new(),
        }
    }

    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        level(self.cfg, b, now)
    }

    /// Whether `ip` may try to authenticate now.
    pub fn allowed(&self, ip: IpAddr, now: Instant) -> bool {
        self.buckets
            .get(&ip)
            .is_none_or(|b| self.level(b, now) >= 1.0)
    }

    /// Records a failed authentication from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&ip) {
            let (cfg, full) = (self.cfg, f64::from(self.cfg.burst));
            self.buckets.retain(|_, b| level(cfg, b, now) < full);
            if self.buckets.len() >= MAX_TRACKED {
                // Every tracked address is failing: make room by forgetting one.
                if let Some(k) = self.buckets.keys().next().copied() {
                    self.buckets.remove(&k);
                }
            }
        }
        let burst = f64::from(self.cfg.burst);
        let level = match self.buckets.get(&ip) {
            Some(b) => self.level(b, now),
            None => burst,
        };
        self.buckets.insert(
            ip,
            Bucket {
                tokens: (level - 1.0).max(0.0),
                at: now,
            },
        );
    }
}

/// Tokens in `b` at `now`.
fn level(cfg: LimitConfig, b: &Bucket, now: Instant) -> f64 {
    let per_sec = 1.0 / cfg.refill.as_secs_f64().max(1e-6);
    let refilled = now.saturating_duration_since(b.at).as_secs_f64() * per_sec;
    (b.tokens + refilled).min(f64::from(cfg.burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_refill_per_address() {
        let mut l = FailLimiter::new(LimitConfig {
            burst: 3,
            refill: Duration::from_secs(2),
        });
        let (a, b): (IpAddr, IpAddr) = ("198.18.0.2".parse().unwrap(), "::1".parse().unwrap());
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.allowed(a, t));
            l.failed(a, t);
        }
        assert!(!l.allowed(a, t));
        assert!(l.allowed(b, t), "other addresses are not affected");
        assert!(!l.allowed(a, t + Duration::from_secs(1)));
        assert!(l.allowed(a, t + Duration::from_secs(2)));
        l.failed(a, t + Duration::from_secs(2));
        assert!(!l.allowed(a, t + Duration::from_secs(3)));
        assert!(l.allowed(a, t + Duration::from_secs(60)));
    }
}
