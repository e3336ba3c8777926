//! Interface MTUs and the datagram size they allow: the one source both transports size
//! datagrams from. The MTU is read with SIOCGIFMTU, which answers for the calling thread's
//! network namespace (sysfs shows the namespace it was mounted in).

use std::net::IpAddr;
use std::os::fd::AsRawFd;

/// Largest UDP payload over IPv4 (the UDP length field minus headers).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Smallest datagram the fetch protocol works with.
pub const MIN_DATAGRAM: usize = 512;
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const UDP_HEADER: usize = 8;

/// The MTU leaves less than [`MIN_DATAGRAM`] bytes of UDP payload.
#[derive(Debug, thiserror::Error)]
#[error("MTU {0} is too small for the fetch protocol (needs {MIN_DATAGRAM} B of UDP payload)")]
pub struct MtuTooSmall(pub usize);

/// Largest UDP payload for `mtu`: an IPv4 endpoint answers over IPv4, an IPv6 one over IPv6.
pub fn max_datagram(mtu: usize, ipv6: bool) -> Result<usize, MtuTooSmall> {
    let ip = if ipv6 { IPV6_HEADER } else { IPV4_HEADER };
    mtu.checked_sub(ip + UDP_HEADER)
        .filter(|m| *m >= MIN_DATAGRAM)
        .map(|m| m.min(MAX_UDP_PAYLOAD))
        .ok_or(MtuTooSmall(mtu))
}

/// The MTU of interface `iface` (SIOCGIFMTU).
pub fn mtu(iface: &str) -> std::io::Result<usize> {
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{iface:?} is not an interface name"),
        ));
    }
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut req = libc::ifreq {
        ifr_name: [0; libc::IFNAMSIZ],
        ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_mtu: 0 },
    };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the NUL-terminated name and writes ifru_mtu of this ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote the mtu member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    usize::try_from(mtu).map_err(|_| std::io::Error::other(format!("MTU {mtu} of {iface}")))
}

/// (interface, MTU) of the interface that holds `ip`; for an unspecified address the
/// smallest MTU of the interfaces that are up (loopback excluded), so no datagram is too
/// large for any.
pub fn mtu_for(ip: IpAddr) -> Option<(String, usize)> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    let mut best: Option<(String, usize)> = None;
    for a in addrs {
        let Ok(mtu) = mtu(&a.interface_name) else {
            continue;
        };
        let matches = a.address.as_ref().and_then(|s| {
            s.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        });
        if ip.is_unspecified() {
            let up = a.flags.contains(InterfaceFlags::IFF_UP);
            let lo = a.flags.contains(InterfaceFlags::IFF_LOOPBACK);
            if up && !lo && best.as_ref().is_none_or(|b| mtu < b.1) {
                best = Some((a.interface_name, mtu));
            }
        } else if matches == Some(ip) {
            return Some((a.interface_name, mtu));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_sizes_follow_the_mtu() {
        assert_eq!(max_datagram(1500, false).unwrap(), 1472);
        assert_eq!(max_datagram(1500, true).unwrap(), 1452);
        assert_eq!(max_datagram(65_535, false).unwrap(), MAX_UDP_PAYLOAD);
        assert!(max_datagram(539, false).is_err());
        assert_eq!(max_datagram(540, false).unwrap(), MIN_DATAGRAM);
    }

    #[test]
    fn loopback_mtu_is_read() {
        assert!(mtu("lo").unwrap() >= 1280);
        assert!(mtu("no-such-if0").is_err());
    }
}
