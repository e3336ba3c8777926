//! Which AF_XDP bind mode to ask for, and what the mode got allows the TX path to do.
//!
//! Drivers differ: ice/i40e/mlx5 do zero-copy with multi-buffer (`XDP_USE_SG`); igb and
//! virtio-net do zero-copy only single-buffer (`XDP_USE_SG` next to `XDP_ZEROCOPY` is
//! EOPNOTSUPP); veth does copy mode only. The bind walks [`BindPolicy::attempts`] best first.

use super::error::XdpError;

/// How TX payload bytes reach the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStrategy {
    /// `sg` in zero-copy mode; `copy` in copy mode (measured faster at every size on veth).
    Auto,
    /// Header frame + descriptors pointing into the log arena (XDP_PKT_CONTD).
    Sg,
    /// Payload copied into TX frames.
    Copy,
}

impl TxStrategy {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            TxStrategy::Auto => "auto",
            TxStrategy::Sg => "sg",
            TxStrategy::Copy => "copy",
        }
    }
}

/// How a socket is bound: who moves the bytes, and whether a packet may span descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindMode {
    /// The NIC DMAs to and from the UMEM (else the kernel copies between UMEM and skbs).
    pub zero_copy: bool,
    /// `XDP_USE_SG`: a packet may be several descriptors chained with `XDP_PKT_CONTD`.
    pub multi_buffer: bool,
}

impl BindMode {
    /// Copy mode, single-buffer: what every kernel with AF_XDP offers.
    pub const COPY: BindMode = BindMode {
        zero_copy: false,
        multi_buffer: false,
    };

    /// Name for logs, `kxgw stats` and the banner.
    pub fn name(self) -> &'static str {
        match (self.zero_copy, self.multi_buffer) {
            (true, true) => "zero-copy multi-buffer",
            (true, false) => "zero-copy single-buffer",
            (false, true) => "copy multi-buffer",
            (false, false) => "copy single-buffer",
        }
    }

    /// `zero-copy` or `copy` (the metrics label).
    pub fn copy_name(self) -> &'static str {
        if self.zero_copy {
            "zero-copy"
        } else {
            "copy"
        }
    }
}

/// `--xdp-bind`: which modes may be tried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindPolicy {
    /// The best the driver offers: zero-copy multi-buffer, zero-copy, copy multi-buffer, copy.
    #[default]
    Auto,
    /// Zero-copy or fail (multi-buffer if the driver has it).
    ZeroCopy,
    /// Copy mode only (multi-buffer if the kernel has it).
    Copy,
}

impl BindPolicy {
    /// The modes to try, best first.
    pub fn attempts(self) -> Vec<BindMode> {
        let all = [
            BindMode {
                zero_copy: true,
                multi_buffer: true,
            },
            BindMode {
                zero_copy: true,
                multi_buffer: false,
            },
            BindMode {
                zero_copy: false,
                multi_buffer: true,
            },
            BindMode::COPY,
        ];
        all.into_iter()
            .filter(|m| match self {
                BindPolicy::Auto => true,
                BindPolicy::ZeroCopy => m.zero_copy,
                BindPolicy::Copy => !m.zero_copy,
            })
            .collect()
    }
}

/// The TX strategy the workers use in `mode`. Without multi-buffer every packet is one
/// descriptor: `auto` copies the payload into one UMEM frame, `sg` cannot work and is refused
/// here instead of stalling on descriptors the kernel drops.
pub fn tx_strategy_for(asked: TxStrategy, mode: BindMode) -> Result<TxStrategy, XdpError> {
    match (asked, mode.multi_buffer) {
        (TxStrategy::Sg, false) => Err(XdpError::Config(format!(
            "--tx-strategy sg needs a multi-buffer (XDP_USE_SG) bind, but the socket is bound \
             {}: the driver refused XDP_USE_SG. Use --tx-strategy copy or auto",
            mode.name()
        ))),
        (TxStrategy::Auto, false) => Ok(TxStrategy::Copy),
        (s, _) => Ok(s),
    }
}

/// Largest UDP payload that fits one 4 KiB UMEM chunk with Ethernet (two VLAN tags), IP and
/// UDP headers in front: the datagram limit when packets cannot span descriptors.
pub fn single_buffer_datagram(ipv6: bool) -> usize {
    let ip = if ipv6 {
        super::packet::IPV6_LEN
    } else {
        super::packet::IPV4_LEN
    };
    super::consts::FRAME as usize
        - super::packet::ETH_LEN
        - 2 * super::packet::VLAN_LEN
        - ip
        - super::packet::UDP_LEN
}

/// `max` (from the MTU) limited to what `mode` can send in one packet.
pub fn fit_datagram(max: usize, mode: BindMode, ipv6: bool) -> usize {
    if mode.multi_buffer {
        max
    } else {
        max.min(single_buffer_datagram(ipv6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_best_first_and_policies_filter() {
        let names: Vec<_> = BindPolicy::Auto
            .attempts()
            .iter()
            .map(|m| m.name())
            .collect();
        assert_eq!(
            names,
            [
                "zero-copy multi-buffer",
                "zero-copy single-buffer",
                "copy multi-buffer",
                "copy single-buffer"
            ]
        );
        assert!(BindPolicy::ZeroCopy.attempts().iter().all(|m| m.zero_copy));
        assert!(BindPolicy::Copy.attempts().iter().all(|m| !m.zero_copy));
        assert_eq!(BindPolicy::Copy.attempts().len(), 2);
    }

    #[test]
    fn single_buffer_refuses_sg_and_auto_copies() {
        let zc1 = BindMode {
            zero_copy: true,
            multi_buffer: false,
        };
        assert!(tx_strategy_for(TxStrategy::Sg, zc1).is_err());
        assert_eq!(
            tx_strategy_for(TxStrategy::Auto, zc1).ok(),
            Some(TxStrategy::Copy)
        );
        let zcsg = BindMode {
            zero_copy: true,
            multi_buffer: true,
        };
        assert_eq!(
            tx_strategy_for(TxStrategy::Sg, zcsg).ok(),
            Some(TxStrategy::Sg)
        );
        assert_eq!(
            tx_strategy_for(TxStrategy::Auto, zcsg).ok(),
            Some(TxStrategy::Auto)
        );
    }

    #[test]
    fn single_buffer_datagrams_fit_one_chunk() {
        // 4096 - 14 - 8 - 20 - 8
        assert_eq!(single_buffer_datagram(false), 4046);
        assert_eq!(fit_datagram(8972, BindMode::COPY, false), 4046);
        assert_eq!(fit_datagram(1472, BindMode::COPY, false), 1472);
        let mb = BindMode {
            zero_copy: false,
            multi_buffer: true,
        };
        assert_eq!(fit_datagram(8972, mb, false), 8972);
    }
}
