//! The XDP steering program against a reference classifier written in Rust: random and
//! mutated frames go through BPF_PROG_TEST_RUN, and each verdict (and which counter moved)
//! must equal what the reference says, under several endpoint / allowlist configurations.
//!
//! CI runs `KXGW_XDP_PACKETS` frames (default 200,000); the long variant is
//! `KXGW_XDP_PACKETS=1000000 cargo test --release --test xdp_verdicts -- --nocapture`.
//! `KXGW_XDP_SEED` replays a given run.
//!
//! In a test run there is no AF_XDP socket in the XSKMAP, so a packet the program would steer
//! comes back as XDP_PASS with the `no_socket` counter (see src/xdp/steering_tests.rs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use kxgw::xdp::packet::{build_frame, Route};
use kxgw::xdp::{Cidr, Steering, SteeringConfig, SteeringCounters};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Passed,
    Steered,
    DroppedAcl,
    DroppedMalformed,
}

impl Outcome {
    fn verdict(self) -> u32 {
        match self {
            Outcome::Passed | Outcome::Steered => XDP_PASS,
            Outcome::DroppedAcl | Outcome::DroppedMalformed => XDP_DROP,
        }
    }
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// What the steering program must do with a linear (single-buffer) frame, written from its
/// specification: up to two VLAN tags, IPv4 (no fragments, lengths consistent with the frame)
/// or IPv6 (no extension headers), UDP to the fetch endpoint, source in the allowlist.
fn reference(cfg: &SteeringConfig, f: &[u8]) -> Outcome {
    use Outcome::*;
    let len = f.len();
    if len < 14 {
        return DroppedMalformed;
    }
    let mut proto = be16(f, 12);
    let mut c = 14;
    for _ in 0..2 {
        if proto != 0x8100 && proto != 0x88a8 {
            break;
        }
        if c + 4 > len {
            return DroppedMalformed;
        }
        proto = be16(f, c + 2);
        c += 4;
    }
    let ip = cfg.fetch.ip();
    let any = ip.is_unspecified();
    let has_v4 = ip.is_ipv4() || ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let has_v6 = ip.is_ipv6();
    let allowed = |src: IpAddr| cfg.allow.is_empty() || cfg.allow.iter().any(|c| c.contains(src));
    let udp = |u: usize, ip_payload: usize, src: IpAddr| {
        if u + 8 > len {
            return DroppedMalformed;
        }
        if be16(f, u + 2) != cfg.fetch.port() {
            return Passed;
        }
        let ulen = be16(f, u + 4) as usize;
        if ulen < 8 || ulen > ip_payload {
            return DroppedMalformed;
        }
        if !allowed(src) {
            return DroppedAcl;
        }
        Steered
    };
    match proto {
        0x0800 => {
            if c + 20 > len {
                return DroppedMalformed;
            }
            let (ver, ihl) = (f[c] >> 4, (f[c] & 0xf) as usize);
            if ver != 4 || ihl < 5 {
                return DroppedMalformed;
            }
            if !has_v4 || f[c + 9] != 17 {
                return Passed;
            }
            let dst = Ipv4Addr::new(f[c + 16], f[c + 17], f[c + 18], f[c + 19]);
            if !any && IpAddr::V4(dst) != ip {
                return Passed;
            }
            if be16(f, c + 6) & 0x3fff != 0 {
                return Passed;
            }
            let hlen = ihl * 4;
            let tot = be16(f, c + 2) as usize;
            if tot < hlen || c + tot > len {
                return DroppedMalformed;
            }
            let src = Ipv4Addr::new(f[c + 12], f[c + 13], f[c + 14], f[c + 15]);
            udp(c + hlen, tot - hlen, IpAddr::V4(src))
        }
        0x86dd => {
            if c + 40 > len {
                return DroppedMalformed;
            }
            if f[c] >> 4 != 6 {
                return DroppedMalformed;
            }
            if !has_v6 || f[c + 6] != 17 {
                return Passed;
            }
            let addr = |at: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&f[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            if !any && addr(c + 24) != ip {
                return Passed;
            }
            let plen = be16(f, c + 4) as usize;
            if c + 40 + plen > len {
                return DroppedMalformed;
            }
            udp(c + 40, plen, addr(c + 8))
        }
        _ => Passed,
    }
}

fn observed(verdict: u32, d: &SteeringCounters) -> Option<Outcome> {
    let moved = [
        (d.passed, Outcome::Passed),
        (d.no_socket, Outcome::Steered),
        (d.dropped_acl, Outcome::DroppedAcl),
        (d.dropped_malformed, Outcome::DroppedMalformed),
    ];
    let hits: Vec<Outcome> = moved
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|&(_, o)| o)
        .collect();
    match hits.as_slice() {
        [o] if d.steered == 0 && o.verdict() == verdict => Some(*o),
        _ => None,
    }
}

fn delta(a: &SteeringCounters, b: &SteeringCounters) -> SteeringCounters {
    SteeringCounters {
        steered: b.steered - a.steered,
        passed: b.passed - a.passed,
        dropped_acl: b.dropped_acl - a.dropped_acl,
        dropped_malformed: b.dropped_malformed - a.dropped_malformed,
        no_socket: b.no_socket - a.no_socket,
    }
}

const SOURCES: &[&str] = &[
    "198.18.0.2:40000",
    "198.18.0.9:40001",
    "10.1.2.3:9093",
    "[2001:db8:1::7]:40000",
    "[2001:db8:2::7]:40000",
    "[fe80::1]:9093",
];
const DESTS: &[&str] = &[
    "198.18.0.1:9093",
    "198.18.0.1:9092",
    "10.9.8.7:9093",
    "[2001:db8::1]:9093",
    "[2001:db8::1]:22",
    "[2001:db8::9]:9093",
];

/// A valid UDP frame (random addresses from small sets, so endpoint and allowlist matches are
/// common) or an arbitrary one, then 0-4 mutations aimed at the parsed fields or anywhere.
fn frame(rng: &mut impl Rng) -> Vec<u8> {
    let mut f = if rng.gen_ratio(1, 10) {
        let n = rng.gen_range(14..200);
        let mut f: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        let et: [u16; 5] = [0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806];
        f[12..14].copy_from_slice(&et[rng.gen_range(0..5)].to_be_bytes());
        f
    } else {
        let v6 = rng.gen_bool(0.5);
        let pick = |rng: &mut dyn rand::RngCore, list: &[&str]| -> SocketAddr {
            let fam: Vec<&str> = list
                .iter()
                .copied()
                .filter(|s| s.starts_with('[') == v6)
                .collect();
            fam[rng.gen_range(0..fam.len())].parse().unwrap()
        };
        let src = pick(rng, SOURCES);
        let dst = pick(rng, DESTS);
        let route = Route {
            peer_mac: [2, 0, 0, 0, 0, 1],
            local_mac: [2, 0, 0, 0, 0, 2],
            vlans: [(0x88A8, 10), (0x8100, 20)],
            vlan_count: rng.gen_range(0..=2),
            ttl: 64,
        };
        let payload: Vec<u8> = (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect();
        build_frame(&route, src, dst, &payload)
    };
    for _ in 0..rng.gen_range(0..=4) {
        let l3 = 14 + 4 * usize::from(matches!(be16(&f, 12), 0x8100 | 0x88a8));
        let interesting = [
            12,
            13,
            l3,
            l3 + 2,
            l3 + 3,
            l3 + 4,
            l3 + 5,
            l3 + 6,
            l3 + 7,
            l3 + 9,
            l3 + 19,
            l3 + 22,
            l3 + 23,
            l3 + 24,
            l3 + 25,
            l3 + 42,
            l3 + 43,
            l3 + 44,
            l3 + 45,
        ];
        match rng.gen_range(0..6) {
            0 => {
                let i = rng.gen_range(0..f.len());
                f[i] = rng.gen();
            }
            1 => {
                let i = interesting[rng.gen_range(0..interesting.len())];
                if i < f.len() {
                    let vals = [
                        0u8, 1, 4, 5, 6, 0x11, 0x20, 0x23, 0x24, 0x45, 0x60, 0x7f, 0xff,
                    ];
                    f[i] = if rng.gen_bool(0.5) {
                        vals[rng.gen_range(0..vals.len())]
                    } else {
                        rng.gen()
                    };
                }
            }
            2 => {
                let n = rng.gen_range(14..=f.len());
                f.truncate(n);
            }
            3 => {
                let n = rng.gen_range(1..64);
                f.extend((0..n).map(|_| rng.gen::<u8>()));
            }
            4 => {
                // One more VLAN tag in front (three tags are beyond what the program parses).
                let tag = [0x81, 0x00, 0x00, rng.gen()];
                let et = [f[12], f[13]];
                f.splice(12..14, tag.iter().copied().chain(et));
            }
            _ => {
                // IPv4 header length / total length / UDP length set to random 16-bit values.
                let i = [l3 + 2, l3 + 24, l3 + 4, l3 + 44][rng.gen_range(0..4)];
                if i + 1 < f.len() {
                    let v: u16 = if rng.gen_bool(0.5) {
                        rng.gen_range(0..600)
                    } else {
                        rng.gen()
                    };
                    f[i..i + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    f
}

fn configs() -> Vec<SteeringConfig> {
    let cidrs = |l: &[&str]| l.iter().map(|c| c.parse::<Cidr>().unwrap()).collect();
    vec![
        SteeringConfig {
            fetch: "198.18.0.1:9093".parse().unwrap(),
            allow: vec![],
        },
        SteeringConfig {
            fetch: "198.18.0.1:9093".parse().unwrap(),
            allow: cidrs(&["198.18.0.0/30", "10.0.0.0/8"]),
        },
        SteeringConfig {
            fetch: "0.0.0.0:9093".parse().unwrap(),
            allow: vec![],
        },
        SteeringConfig {
            fetch: "[2001:db8::1]:9093".parse().unwrap(),
            allow: vec![],
        },
        SteeringConfig {
            fetch: "[::]:9093".parse().unwrap(),
            allow: cidrs(&["2001:db8:1::/48", "198.18.0.2/32"]),
        },
    ]
}

#[test]
fn steering_verdicts_match_the_reference_classifier() {
    kxgw_testkit::testnet::require_root().unwrap();
    let total: usize = std::env::var("KXGW_XDP_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seed: u64 = std::env::var("KXGW_XDP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let cfgs = configs();
    let progs: Vec<Steering> = cfgs
        .iter()
        .map(|c| Steering::load(c).expect("loading the steering program"))
        .collect();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut mismatches = Vec::new();
    let mut before: Vec<SteeringCounters> = progs.iter().map(|p| p.counters().unwrap()).collect();
    let t0 = std::time::Instant::now();
    for n in 0..total {
        let i = n % progs.len();
        let f = frame(&mut rng);
        let want = reference(&cfgs[i], &f);
        let verdict = progs[i].test_run(&f).expect("BPF_PROG_TEST_RUN");
        let after = progs[i].counters().unwrap();
        let got = observed(verdict, &delta(&before[i], &after));
        before[i] = after;
        *seen.entry(format!("{want:?}")).or_default() += 1;
        if got != Some(want) && mismatches.len() < 10 {
            mismatches.push(format!(
                "config {i} ({}): reference {want:?}, program verdict {verdict} -> {got:?}; frame {}",
                cfgs[i].fetch,
                f.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ));
        }
    }
    eprintln!(
        "{total} frames in {:.1?} (seed {seed}); reference outcomes: {seen:?}",
        t0.elapsed()
    );
    assert!(
        mismatches.is_empty(),
        "seed {seed}: {} mismatches, first ones:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // Every outcome was exercised a fair number of times.
    for o in ["Passed", "Steered", "DroppedAcl", "DroppedMalformed"] {
        assert!(
            seen.get(o).copied().unwrap_or(0) >= total / 100,
            "outcome {o} too rare: {seen:?}"
        );
    }
}
