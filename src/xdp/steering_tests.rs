//! BPF_PROG_TEST_RUN tests of the steering program on crafted frames (no NIC needed).
//!
//! With no AF_XDP socket in the XSKMAP (there is none in a test run), a request for the fetch
//! endpoint comes back as XDP_PASS: the program looks the queue up first and counts
//! `no_socket` (bpf_redirect_map's own fallback would also return XDP_PASS, silently). So a
//! "steered" decision shows up here as verdict PASS + `no_socket` + 1, distinct from an
//! ordinary pass (`passed` + 1). The end-to-end tests check `steered` with real sockets.

use std::net::SocketAddr;

use super::packet::{build_frame, Route};
use super::{Cidr, Steering, SteeringConfig, SteeringCounters};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn load(fetch: &str, allow: &[&str]) -> Steering {
    crate::test_support::require_root().unwrap();
    let cfg = SteeringConfig {
        fetch: fetch.parse().unwrap(),
        allow: allow.iter().map(|c| c.parse::<Cidr>().unwrap()).collect(),
    };
    Steering::load(&cfg).unwrap()
}

fn route(vlans: u8) -> Route {
    Route {
        peer_mac: [2, 0, 0, 0, 0, 1],
        local_mac: [2, 0, 0, 0, 0, 2],
        vlans: [(0x88A8, 10), (0x8100, 20)],
        vlan_count: vlans,
        ttl: 64,
    }
}

fn udp(src: &str, dst: &str, vlans: u8, payload: &[u8]) -> Vec<u8> {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    build_frame(&route(vlans), src, dst, payload)
}

/// Runs one frame and returns (verdict, counter delta).
fn run(s: &Steering, frame: &[u8]) -> (u32, SteeringCounters) {
    let before = s.counters().unwrap();
    let verdict = s.test_run(frame).unwrap();
    let a = s.counters().unwrap();
    (
        verdict,
        SteeringCounters {
            steered: a.steered - before.steered,
            passed: a.passed - before.passed,
            dropped_acl: a.dropped_acl - before.dropped_acl,
            dropped_malformed: a.dropped_malformed - before.dropped_malformed,
            no_socket: a.no_socket - before.no_socket,
        },
    )
}

fn only(field: &str) -> SteeringCounters {
    let mut c = SteeringCounters::default();
    match field {
        "passed" => c.passed = 1,
        "dropped_acl" => c.dropped_acl = 1,
        "dropped_malformed" => c.dropped_malformed = 1,
        "no_socket" => c.no_socket = 1,
        other => panic!("unknown counter {other}"),
    }
    c
}

const GW: &str = "198.18.0.1:9093";
const CL: &str = "198.18.0.2:40000";

#[test]
fn request_to_fetch_endpoint_is_steered_and_no_socket_passes() {
    let s = load(GW, &[]);
    let f = udp(CL, GW, 0, b"fetch request");
    assert_eq!(run(&s, &f), (XDP_PASS, only("no_socket")));
}

#[test]
fn other_traffic_passes() {
    let s = load(GW, &[]);
    // Other UDP port, other destination address.
    let f = udp(CL, "198.18.0.1:53", 0, b"dns");
    assert_eq!(run(&s, &f), (XDP_PASS, only("passed")));
    let f = udp(CL, "198.18.0.9:9093", 0, b"x");
    assert_eq!(run(&s, &f), (XDP_PASS, only("passed")));
    // TCP to the Kafka port: same frame with protocol 6 (header checksum is not checked).
    let mut f = udp(CL, "198.18.0.1:9092", 0, &[0u8; 20]);
    f[14 + 9] = 6;
    assert_eq!(run(&s, &f), (XDP_PASS, only("passed")));
    // ARP request.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0u8; 20]);
    assert_eq!(run(&s, &arp), (XDP_PASS, only("passed")));
    // IPv6 to an IPv4-only endpoint.
    let f = udp("[2001:db8::2]:40000", "[2001:db8::1]:9093", 0, b"x");
    assert_eq!(run(&s, &f), (XDP_PASS, only("passed")));
}

#[test]
fn every_truncation_point_of_a_request_is_dropped_as_malformed() {
    let s = load(GW, &[]);
    for vlans in 0..=2 {
        let f = udp(CL, GW, vlans, b"0123456789");
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header (EINVAL).
        assert!(s.test_run(&f[..13]).is_err());
        for n in 14..f.len() {
            assert_eq!(
                run(&s, &f[..n]),
                (1, only("dropped_malformed")),
                "{vlans} VLAN tags, frame cut at {n} of {}",
                f.len()
            );
        }
        assert_eq!(run(&s, &f), (XDP_PASS, only("no_socket")));
    }
}

#[test]
fn inconsistent_lengths_are_malformed() {
    let s = load(GW, &[]);
    let good = udp(CL, GW, 0, b"abcdef");
    // UDP length below the header size.
    let mut f = good.clone();
    f[34 + 4..34 + 6].copy_from_slice(&7u16.to_be_bytes());
    assert_eq!(run(&s, &f), (XDP_DROP, only("dropped_malformed")));
    // UDP length beyond the IP payload.
    let mut f = good.clone();
    f[34 + 4..34 + 6].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(run(&s, &f), (XDP_DROP, only("dropped_malformed")));
    // IHL below 5.
    let mut f = good.clone();
    f[14] = 0x44;
    assert_eq!(run(&s, &f), (XDP_DROP, only("dropped_malformed")));
    // Ethernet padding after the datagram is fine.
    let mut f = good.clone();
    f.extend_from_slice(&[0u8; 16]);
    assert_eq!(run(&s, &f), (XDP_PASS, only("no_socket")));
}

#[test]
fn ipv4_options_are_parsed_and_fragments_pass() {
    let s = load(GW, &[]);
    let good = udp(CL, GW, 0, b"abcdef");
    // Insert 4 bytes of options (NOP NOP NOP EOL): IHL 6, total length + 4.
    let mut f = good[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]);
    f.extend_from_slice(&good[34..]);
    f[14] = 0x46;
    let tot = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    assert_eq!(run(&s, &f), (XDP_PASS, only("no_socket")));
    // More-fragments bit, and a non-zero fragment offset.
    for frag in [0x2000u16, 0x0010] {
        let mut f = good.clone();
        f[20..22].copy_from_slice(&frag.to_be_bytes());
        assert_eq!(
            run(&s, &f),
            (XDP_PASS, only("passed")),
            "frag_off {frag:#x}"
        );
    }
}

#[test]
fn vlan_and_qinq_requests_are_steered_three_tags_pass() {
    let s = load(GW, &[]);
    for vlans in 1..=2 {
        let f = udp(CL, GW, vlans, b"q");
        assert_eq!(run(&s, &f), (XDP_PASS, only("no_socket")), "{vlans} tags");
    }
    // A third tag is beyond what the program parses: the kernel gets it.
    let f = udp(CL, GW, 2, b"q");
    let mut three = f[..12].to_vec();
    three.extend_from_slice(&[0x81, 0x00, 0, 30]);
    three.extend_from_slice(&f[12..]);
    assert_eq!(run(&s, &three), (XDP_PASS, only("passed")));
}

#[test]
fn ipv6_requests_are_steered_extension_headers_pass() {
    let gw6 = "[2001:db8::1]:9093";
    let s = load(gw6, &[]);
    let f = udp("[2001:db8::2]:40000", gw6, 0, b"v6 request");
    assert_eq!(run(&s, &f), (XDP_PASS, only("no_socket")));
    let f2 = udp("[2001:db8::2]:40000", gw6, 1, b"v6 request");
    assert_eq!(run(&s, &f2), (XDP_PASS, only("no_socket")));
    // Next header = hop-by-hop options: passes.
    let mut e = f.clone();
    e[14 + 6] = 0;
    assert_eq!(run(&s, &e), (XDP_PASS, only("passed")));
    // Other address, and IPv4 to an IPv6-only endpoint.
    let f = udp("[2001:db8::2]:40000", "[2001:db8::9]:9093", 0, b"x");
    assert_eq!(run(&s, &f), (XDP_PASS, only("passed")));
    let f = udp(CL, GW, 0, b"x");
    assert_eq!(run(&s, &f), (XDP_PASS, only("passed")));
    // Payload length beyond the frame.
    let mut t = udp("[2001:db8::2]:40000", gw6, 0, b"abc");
    t[18..20].copy_from_slice(&200u16.to_be_bytes());
    assert_eq!(run(&s, &t), (XDP_DROP, only("dropped_malformed")));
}

#[test]
fn wildcard_endpoint_matches_any_address() {
    let s = load("0.0.0.0:9093", &[]);
    for dst in ["198.18.0.1:9093", "10.9.8.7:9093"] {
        let f = udp(CL, dst, 0, b"x");
        assert_eq!(run(&s, &f), (XDP_PASS, only("no_socket")), "{dst}");
    }
    let f = udp(CL, "10.9.8.7:9094", 0, b"x");
    assert_eq!(run(&s, &f), (XDP_PASS, only("passed")));
}

#[test]
fn allowlist_drops_other_consumers_only() {
    let s = load(GW, &["198.18.0.0/30", "2001:db8:1::/48"]);
    let f = udp(CL, GW, 0, b"x");
    assert_eq!(run(&s, &f), (XDP_PASS, only("no_socket")));
    let f = udp("198.18.0.5:40000", GW, 0, b"x");
    assert_eq!(run(&s, &f), (XDP_DROP, only("dropped_acl")));
    // Traffic that is not a request is never subject to the allowlist.
    let f = udp("10.0.0.1:40000", "198.18.0.1:22", 0, b"ssh-ish");
    assert_eq!(run(&s, &f), (XDP_PASS, only("passed")));

    let gw6 = "[::]:9093";
    let s6 = load(gw6, &["2001:db8:1::/48"]);
    let f = udp("[2001:db8:1::7]:40000", "[2001:db8::1]:9093", 0, b"x");
    assert_eq!(run(&s6, &f), (XDP_PASS, only("no_socket")));
    let f = udp("[2001:db8:2::7]:40000", "[2001:db8::1]:9093", 0, b"x");
    assert_eq!(run(&s6, &f), (XDP_DROP, only("dropped_acl")));
    // [::] listens dual-stack; the allowlist has no IPv4 prefix, so IPv4 consumers are out.
    let f = udp(CL, GW, 0, b"x");
    assert_eq!(run(&s6, &f), (XDP_DROP, only("dropped_acl")));
}

#[test]
fn jumbo_multi_buffer_request_is_handled() {
    // Larger than one page: BPF_PROG_TEST_RUN hands a frags-aware program a multi-buffer xdp_buff.
    let s = load(GW, &[]);
    let f = udp(CL, GW, 0, &vec![7u8; 9000 - 28]);
    assert_eq!(run(&s, &f), (XDP_PASS, only("no_socket")));
    let cut = &f[..f.len() - 1];
    assert_eq!(run(&s, cut), (XDP_DROP, only("dropped_malformed")));
}
