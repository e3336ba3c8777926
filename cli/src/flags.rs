//! clap mirrors of the library's settings types: the library has no clap dependency, so the
//! flags (and their value enums) are declared here and converted into the library's structs.

use std::net::SocketAddr;

use kxgw::kafka::fetch_advert::HostPort;
use kxgw::xdp::Cidr;

/// Declares a clap value enum mirroring a library enum variant for variant.
macro_rules! mirror_enum {
    ($(#[$m:meta])* $name:ident => $lib:path { $($(#[$vm:meta])* $v:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
        pub enum $name {
            $($(#[$vm])* $v),+
        }

        impl From<$name> for $lib {
            fn from(v: $name) -> Self {
                match v {
                    $($name::$v => <$lib>::$v),+
                }
            }
        }
    };
}

mirror_enum! {
    /// What a consumer reads of transactional data (Kafka's isolation.level).
    IsolationLevel => kxgw::fetch::wire::IsolationLevel {
        /// Stop at the last stable offset and drop the records of aborted transactions
        /// (librdkafka's default).
        #[value(name = "read_committed")]
        ReadCommitted,
        /// Every data record up to the readable end, aborted and open transactions included.
        #[value(name = "read_uncommitted")]
        ReadUncommitted,
    }
}

mirror_enum! {
    /// Where the XDP program is attached.
    XdpMode => kxgw::xdp::XdpMode {
        /// In the driver (XDP_FLAGS_DRV_MODE): the mode AF_XDP zero-copy needs.
        Native,
        /// In the generic network stack (XDP_FLAGS_SKB_MODE): works everywhere, slowest.
        Generic,
    }
}

mirror_enum! {
    /// How TX payload bytes reach the wire.
    TxStrategy => kxgw::xdp::TxStrategy {
        /// `sg` in zero-copy mode; `copy` in copy mode (measured faster at every size on veth).
        Auto,
        /// Header frame + descriptors pointing into the log arena (XDP_PKT_CONTD).
        Sg,
        /// Payload copied into TX frames.
        Copy,
    }
}

mirror_enum! {
    /// How AF_XDP sockets are bound.
    BindPolicy => kxgw::xdp::bind::BindPolicy {
        /// The best the driver offers: zero-copy multi-buffer, zero-copy, copy multi-buffer, copy.
        Auto,
        /// Zero-copy or fail (multi-buffer if the driver has it).
        ZeroCopy,
        /// Copy mode only (multi-buffer if the kernel has it).
        Copy,
    }
}

mirror_enum! {
    /// How record bytes are sent.
    IoMode => kxgw::kafka::IoMode {
        /// `sendfile(2)` from the segment file: no copy through user space.
        Sendfile,
        /// `pread(2)` into a buffer, then `send(2)`: the traditional copy path.
        Copy,
    }
}

mirror_enum! {
    /// On/off switch for CLI flags.
    OnOff => kxgw::fetch::gateway::OnOff {
        On,
        Off,
    }
}

/// The fetch endpoint's flags of `kxgw serve` (flattened into its arguments).
#[derive(Clone, Debug, clap::Args)]
pub struct FetchArgs {
    /// kxgw UDP fetch endpoint (kernel UDP transport), e.g. 198.18.0.1:9093.
    #[arg(long, value_name = "IP:PORT")]
    pub fetch_listen: Option<SocketAddr>,
    /// Send fetch datagrams with UDP GSO (UDP_SEGMENT) when the kernel has it.
    #[arg(long, value_enum, default_value = "on")]
    pub udp_gso: OnOff,
    /// MTU to size fetch datagrams from (default: the MTU of the listen address's interface).
    #[arg(long, value_name = "BYTES")]
    pub fetch_mtu: Option<usize>,
    /// Busy-poll the fetch socket instead of sleeping (lower latency, one core spinning).
    #[arg(long)]
    pub fetch_busy_poll: bool,
    /// Fetch endpoint advertised to Kafka clients in Metadata (a tagged field, see
    /// docs/fetch-protocol.md), when it differs from --fetch-listen [default: --fetch-listen,
    /// its wildcard IP replaced by --advertised-host or the --kafka-listen IP].
    #[arg(long, value_name = "HOST:PORT", value_parser = host_port, requires = "fetch_listen")]
    pub fetch_advertise: Option<HostPort>,
}

fn host_port(s: &str) -> Result<HostPort, String> {
    HostPort::parse(s)
}

impl FetchArgs {
    /// The fetch endpoint to advertise in Metadata, None without one (or when a wildcard
    /// --fetch-listen leaves no host to name: logged).
    pub fn advertised(
        &self,
        advertised_host: Option<&str>,
        kafka: Option<SocketAddr>,
    ) -> Option<HostPort> {
        if let Some(a) = &self.fetch_advertise {
            return Some(a.clone());
        }
        let listen = self.fetch_listen?;
        let host = if !listen.ip().is_unspecified() {
            Some(listen.ip().to_string())
        } else if let Some(h) = advertised_host {
            Some(h.to_string())
        } else {
            kafka
                .filter(|k| !k.ip().is_unspecified())
                .map(|k| k.ip().to_string())
        };
        match host {
            Some(host) if listen.port() != 0 => Some(HostPort {
                host,
                port: listen.port(),
            }),
            _ => {
                log::warn!(
                    "fetch endpoint {listen} is not advertised in Metadata (no host or port to \
                     name): give --fetch-advertise HOST:PORT"
                );
                None
            }
        }
    }
}

impl From<&FetchArgs> for kxgw::fetch::gateway::FetchArgs {
    fn from(a: &FetchArgs) -> Self {
        Self {
            fetch_listen: a.fetch_listen,
            udp_gso: a.udp_gso.into(),
            fetch_mtu: a.fetch_mtu,
            fetch_busy_poll: a.fetch_busy_poll,
        }
    }
}

/// `--xdp-*` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct XdpArgs {
    /// Interface to attach the XDP steering program and AF_XDP sockets to.
    #[arg(long = "xdp-iface", value_name = "IF")]
    pub iface: Option<String>,
    /// XDP attach mode.
    #[arg(long = "xdp-mode", value_enum, default_value = "native")]
    pub xdp_mode: XdpMode,
    /// RX queues to serve (0..N); default: all queues of the interface.
    #[arg(long)]
    pub queues: Option<u32>,
    /// Spin on the rings and enable kernel busy polling (lowest latency, burns a core per queue).
    #[arg(long)]
    pub busy_poll: bool,
    /// How payload bytes are transmitted.
    #[arg(long, value_enum, default_value = "auto")]
    pub tx_strategy: TxStrategy,
    /// Fail instead of falling back to kernel UDP when XDP cannot be set up.
    #[arg(long)]
    pub require_xdp: bool,
    /// Consumer prefixes allowed to fetch (repeatable); default: everyone.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<Cidr>,
    /// Size of the UMEM log arena (MiB) that stages log pages for the sg strategy.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub arena_mib: u64,
    /// Register the log's segment files that live on tmpfs as UMEM themselves, so `sg`
    /// descriptors point at their pages with no staging copy. Opens them read-write (required
    /// for a UMEM mapping; kxgw never writes them) and pins them; segments must not be
    /// truncated while the gateway runs. Files elsewhere and bytes appended after startup are
    /// staged through the arena.
    #[arg(long)]
    pub umem_segments: bool,
    /// AF_XDP bind: `auto` takes the best the driver offers (zero-copy multi-buffer,
    /// zero-copy single-buffer, copy multi-buffer, copy); `zero-copy` fails without it;
    /// `copy` never tries zero-copy.
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    pub xdp_bind: BindPolicy,
    /// Same as `--xdp-bind copy` (kept for existing command lines).
    #[arg(long)]
    pub no_zero_copy: bool,
    /// Write the UMEM's physical page ranges (from /proc/self/pagemap) to FILE after binding,
    /// to check a trace of the driver's TX DMA addresses against (scripts/testvm.sh).
    #[arg(long, value_name = "FILE")]
    pub xdp_umem_pagemap: Option<std::path::PathBuf>,
}

impl From<&XdpArgs> for kxgw::xdp::cli::XdpArgs {
    fn from(a: &XdpArgs) -> Self {
        Self {
            iface: a.iface.clone(),
            xdp_mode: a.xdp_mode.into(),
            queues: a.queues,
            busy_poll: a.busy_poll,
            tx_strategy: a.tx_strategy.into(),
            require_xdp: a.require_xdp,
            allow: a.allow.clone(),
            arena_mib: a.arena_mib,
            umem_segments: a.umem_segments,
            xdp_bind: a.xdp_bind.into(),
            no_zero_copy: a.no_zero_copy,
            xdp_umem_pagemap: a.xdp_umem_pagemap.clone(),
        }
    }
}
