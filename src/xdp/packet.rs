//! Ethernet/VLAN/IPv4/IPv6/UDP parsing of received requests and header building for replies.
//!
//! Replies retrace the request's path: Ethernet destination = the request's source MAC, the
//! same VLAN tags, source address/port = the address the request was sent to. IPv4 replies
//! carry a computed header checksum and UDP checksum 0 (batch CRCs protect the data); IPv6
//! replies carry a computed UDP checksum (mandatory there).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// One VLAN tag.
pub const VLAN_LEN: usize = 4;
/// IPv4 header without options (what replies use).
pub const IPV4_LEN: usize = 20;
/// IPv6 fixed header.
pub const IPV6_LEN: usize = 40;
/// UDP header.
pub const UDP_LEN: usize = 8;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_UDP: u8 = 17;

/// Why a received frame is not a request we can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The frame ends inside a header.
    #[error("truncated {0} header")]
    Truncated(&'static str),
    /// Not IPv4/IPv6 + UDP (the XDP program should not have steered it).
    #[error("not a UDP datagram")]
    NotUdp,
    /// Lengths in the headers disagree with the frame.
    #[error("inconsistent {0} length")]
    BadLength(&'static str),
    /// An IPv4 fragment.
    #[error("IPv4 fragment")]
    Fragment,
}

/// Everything needed to address a reply to the sender of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The requester's MAC (the reply's Ethernet destination).
    pub peer_mac: [u8; 6],
    /// Our MAC as the requester addressed it (the reply's Ethernet source).
    pub local_mac: [u8; 6],
    /// VLAN tags (TPID, TCI) outermost first; `vlan_count` of them are used.
    pub vlans: [(u16, u16); 2],
    /// Number of VLAN tags.
    pub vlan_count: u8,
    /// IPv4 TTL / IPv6 hop limit for replies.
    pub ttl: u8,
}

impl Route {
    /// Length of the Ethernet + VLAN + IP + UDP headers for a reply to a peer of this family.
    pub fn header_len(&self, v6: bool) -> usize {
        ETH_LEN
            + VLAN_LEN * usize::from(self.vlan_count)
            + if v6 { IPV6_LEN } else { IPV4_LEN }
            + UDP_LEN
    }
}

/// A received UDP datagram.
#[derive(Debug)]
pub struct Request<'a> {
    /// How to get back to the sender.
    pub route: Route,
    /// Sender address.
    pub src: SocketAddr,
    /// Address it was sent to (our endpoint).
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: &'a [u8],
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses an Ethernet frame carrying UDP over IPv4 or IPv6 (up to two VLAN tags).
pub fn parse(frame: &[u8]) -> Result<Request<'_>, ParseError> {
    if frame.len() < ETH_LEN {
        return Err(ParseError::Truncated("Ethernet"));
    }
    let mut route = Route {
        peer_mac: [0; 6],
        local_mac: [0; 6],
        vlans: [(0, 0); 2],
        vlan_count: 0,
        ttl: 64,
    };
    route.local_mac.copy_from_slice(&frame[0..6]);
    route.peer_mac.copy_from_slice(&frame[6..12]);
    let mut proto = be16(frame, 12);
    let mut at = ETH_LEN;
    while (proto == ETH_P_8021Q || proto == ETH_P_8021AD) && route.vlan_count < 2 {
        if frame.len() < at + VLAN_LEN {
            return Err(ParseError::Truncated("VLAN"));
        }
        route.vlans[usize::from(route.vlan_count)] = (proto, be16(frame, at));
        route.vlan_count += 1;
        proto = be16(frame, at + 2);
        at += VLAN_LEN;
    }
    let (src_ip, dst_ip, udp_at, ip_end): (IpAddr, IpAddr, usize, usize) = match proto {
        ETH_P_IP => {
            let ip = frame
                .get(at..at + IPV4_LEN)
                .ok_or(ParseError::Truncated("IPv4"))?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || ihl < IPV4_LEN {
                return Err(ParseError::BadLength("IPv4 header"));
            }
            if ip[9] != IPPROTO_UDP {
                return Err(ParseError::NotUdp);
            }
            if be16(ip, 6) & 0x3fff != 0 {
                return Err(ParseError::Fragment);
            }
            let total = usize::from(be16(ip, 2));
            if total < ihl || at + total > frame.len() {
                return Err(ParseError::BadLength("IPv4 total"));
            }
            let s = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let d = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (s.into(), d.into(), at + ihl, at + total)
        }
        ETH_P_IPV6 => {
            let ip = frame
                .get(at..at + IPV6_LEN)
                .ok_or(ParseError::Truncated("IPv6"))?;
            if ip[0] >> 4 != 6 {
                return Err(ParseError::BadLength("IPv6 version"));
            }
            if ip[6] != IPPROTO_UDP {
                return Err(ParseError::NotUdp);
            }
            let plen = usize::from(be16(ip, 4));
            if at + IPV6_LEN + plen > frame.len() {
                return Err(ParseError::BadLength("IPv6 payload"));
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&ip[8..24]);
            d.copy_from_slice(&ip[24..40]);
            (
                Ipv6Addr::from(s).into(),
                Ipv6Addr::from(d).into(),
                at + IPV6_LEN,
                at + IPV6_LEN + plen,
            )
        }
        _ => return Err(ParseError::NotUdp),
    };
    let udp = frame
        .get(udp_at..udp_at + UDP_LEN)
        .ok_or(ParseError::Truncated("UDP"))?;
    let ulen = usize::from(be16(udp, 4));
    if ulen < UDP_LEN || udp_at + ulen > ip_end {
        return Err(ParseError::BadLength("UDP"));
    }
    Ok(Request {
        route,
        src: SocketAddr::new(src_ip, be16(udp, 0)),
        dst: SocketAddr::new(dst_ip, be16(udp, 2)),
        payload: &frame[udp_at + UDP_LEN..udp_at + ulen],
    })
}

/// Internet checksum accumulator (RFC 1071), fed in pieces of any length.
#[derive(Default, Clone, Copy)]
pub struct Checksum {
    sum: u64,
    odd: Option<u8>,
}

impl Checksum {
    /// Adds bytes (continuing an odd leftover byte from the previous piece).
    pub fn add(&mut self, mut data: &[u8]) {
        if let Some(hi) = self.odd.take() {
            match data.split_first() {
                Some((lo, rest)) => {
                    self.sum += u64::from(u16::from_be_bytes([hi, *lo]));
                    data = rest;
                }
                None => {
                    self.odd = Some(hi);
                    return;
                }
            }
        }
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            self.sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            self.odd = Some(*last);
        }
    }

    /// The one's complement of the folded sum.
    pub fn finish(mut self) -> u16 {
        if let Some(hi) = self.odd.take() {
            self.sum += u64::from(u16::from_be_bytes([hi, 0]));
        }
        while self.sum > 0xffff {
            self.sum = (self.sum & 0xffff) + (self.sum >> 16);
        }
        !(self.sum as u16)
    }
}

/// Writes the Ethernet/VLAN/IP/UDP headers of a datagram from `src` to `dst` along `route`
/// into the start of `buf` and returns their length. `payload` holds the UDP payload in
/// pieces (only read for the IPv6 UDP checksum). Fails if `buf` is too short, the families
/// differ or the datagram is larger than UDP can carry.
pub fn write_headers(
    buf: &mut [u8],
    route: &Route,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[&[u8]],
) -> Option<usize> {
    let payload_len: usize = payload.iter().map(|p| p.len()).sum();
    let v6 = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return None,
    };
    let hlen = route.header_len(v6);
    if buf.len() < hlen {
        return None;
    }
    let udp_len = u16::try_from(UDP_LEN + payload_len).ok()?;
    buf[0..6].copy_from_slice(&route.peer_mac);
    buf[6..12].copy_from_slice(&route.local_mac);
    let mut at = 12;
    for (tpid, tci) in &route.vlans[..usize::from(route.vlan_count)] {
        buf[at..at + 2].copy_from_slice(&tpid.to_be_bytes());
        buf[at + 2..at + 4].copy_from_slice(&tci.to_be_bytes());
        at += VLAN_LEN;
    }
    let ether = if v6 { ETH_P_IPV6 } else { ETH_P_IP };
    buf[at..at + 2].copy_from_slice(&ether.to_be_bytes());
    at += 2;
    let udp_at;
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(IPV4_LEN + usize::from(udp_len)).ok()?;
            let ip = &mut buf[at..at + IPV4_LEN];
            ip[0] = 0x45;
            ip[1] = 0;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[4..6].copy_from_slice(&[0, 0]); // id: never fragmented (DF)
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
            ip[8] = route.ttl;
            ip[9] = IPPROTO_UDP;
            ip[10..12].copy_from_slice(&[0, 0]);
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let mut c = Checksum::default();
            c.add(ip);
            let sum = c.finish();
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            udp_at = at + IPV4_LEN;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = &mut buf[at..at + IPV6_LEN];
            ip[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
            ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
            ip[6] = IPPROTO_UDP;
            ip[7] = route.ttl;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            udp_at = at + IPV6_LEN;
        }
        _ => return None,
    }
    let udp = &mut buf[udp_at..udp_at + UDP_LEN];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    if let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) {
        let mut c = Checksum::default();
        c.add(&s.octets());
        c.add(&d.octets());
        c.add(&u32::from(udp_len).to_be_bytes());
        c.add(&[0, 0, 0, IPPROTO_UDP]);
        c.add(udp);
        for p in payload {
            c.add(p);
        }
        let sum = match c.finish() {
            0 => 0xffff, // 0 means "no checksum", forbidden on IPv6
            s => s,
        };
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
    }
    Some(hlen)
}

/// Builds a whole frame (headers + payload); used by tests and the raw generator.
pub fn build_frame(route: &Route, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let v6 = src.is_ipv6();
    let mut buf = vec![0u8; route.header_len(v6) + payload.len()];
    match write_headers(&mut buf, route, src, dst, &[payload]) {
        Some(h) => buf[h..].copy_from_slice(payload),
        None => buf.clear(),
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(vlans: u8) -> Route {
        Route {
            peer_mac: [2, 0, 0, 0, 0, 2],
            local_mac: [2, 0, 0, 0, 0, 1],
            vlans: [(ETH_P_8021AD, 100), (ETH_P_8021Q, 200)],
            vlan_count: vlans,
            ttl: 64,
        }
    }

    #[test]
    fn roundtrip_v4_with_qinq() {
        let src: SocketAddr = "198.18.0.1:9092".parse().unwrap();
        let dst: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let f = build_frame(&route(2), src, dst, b"hello");
        let r = parse(&f).unwrap();
        assert_eq!(r.src, src);
        assert_eq!(r.dst, dst);
        assert_eq!(r.payload, b"hello");
        assert_eq!(r.route.vlan_count, 2);
        assert_eq!(r.route.vlans[1], (ETH_P_8021Q, 200));
        // Parsed from the receiver's view: our "local" is the frame's destination MAC.
        assert_eq!(r.route.local_mac, [2, 0, 0, 0, 0, 2]);
        // IPv4 header checksum verifies to zero.
        let mut c = Checksum::default();
        c.add(&f[22..42]);
        assert_eq!(c.finish(), 0);
    }

    #[test]
    fn v6_udp_checksum_verifies() {
        let src: SocketAddr = "[2001:db8::1]:9092".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::2]:5555".parse().unwrap();
        let payload: Vec<u8> = (0..1001u32).map(|i| i as u8).collect();
        let f = build_frame(&route(0), src, dst, &payload);
        let r = parse(&f).unwrap();
        assert_eq!(r.payload, &payload[..]);
        let udp = &f[54..];
        let mut c = Checksum::default();
        c.add(&f[22..38]);
        c.add(&f[38..54]);
        c.add(&(udp.len() as u32).to_be_bytes());
        c.add(&[0, 0, 0, 17]);
        c.add(udp);
        assert_eq!(c.finish(), 0);
    }

    #[test]
    fn split_checksum_equals_whole() {
        let data: Vec<u8> = (0..777u32).map(|i| (i * 7) as u8).collect();
        let mut a = Checksum::default();
        a.add(&data);
        let mut b = Checksum::default();
        for piece in data.chunks(13) {
            b.add(piece);
        }
        assert_eq!(a.finish(), b.finish());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let src: SocketAddr = "198.18.0.1:9092".parse().unwrap();
        let dst: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let f = build_frame(&route(1), src, dst, b"x");
        for n in 0..f.len() {
            assert!(parse(&f[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn build_then_parse_round_trips(
            v6 in proptest::prelude::any::<bool>(),
            a in proptest::prelude::any::<u128>(),
            b in proptest::prelude::any::<u128>(),
            sp in proptest::prelude::any::<u16>(),
            dp in proptest::prelude::any::<u16>(),
            vlans in 0u8..=2,
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
        ) {
            let (src, dst): (SocketAddr, SocketAddr) = if v6 {
                ((Ipv6Addr::from(a), sp).into(), (Ipv6Addr::from(b), dp).into())
            } else {
                ((Ipv4Addr::from(a as u32), sp).into(), (Ipv4Addr::from(b as u32), dp).into())
            };
            let f = build_frame(&route(vlans), src, dst, &payload);
            let r = parse(&f).unwrap();
            proptest::prop_assert_eq!(r.src, src);
            proptest::prop_assert_eq!(r.dst, dst);
            proptest::prop_assert_eq!(r.payload, &payload[..]);
            proptest::prop_assert_eq!(r.route.vlan_count, vlans);
        }
    }
}
