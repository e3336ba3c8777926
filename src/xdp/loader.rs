//! Loads the steering program (`bpf/kxgw.bpf.c`), configures it, attaches it through a
//! bpf_link and exposes its maps: the XSKMAP, the consumer allowlist and the counters.
//!
//! The program is attached with a bpf_link (not the legacy netlink attach), so the kernel
//! detaches it when the last reference to the link goes away: when this process exits,
//! SIGKILL included. Nothing stays behind on the interface.

use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};

use super::acl::Cidr;
use super::error::XdpError;
use super::skel::{KxgwSkel, KxgwSkelBuilder};

/// Where the program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (XDP_FLAGS_DRV_MODE): the mode AF_XDP zero-copy needs.
    Native,
    /// In the generic network stack (XDP_FLAGS_SKB_MODE): works everywhere, slowest.
    Generic,
}

impl XdpMode {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
    fn flags(self) -> u32 {
        match self {
            XdpMode::Native => 1 << 2,  // XDP_FLAGS_DRV_MODE
            XdpMode::Generic => 1 << 1, // XDP_FLAGS_SKB_MODE
        }
    }
}

/// The program's per-CPU counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteeringCounters {
    /// Requests redirected into an AF_XDP socket.
    pub steered: u64,
    /// Packets handed to the kernel (not for the fetch endpoint, or IP fragments).
    pub passed: u64,
    /// Requests from a source outside the allowlist.
    pub dropped_acl: u64,
    /// Truncated or inconsistent headers.
    pub dropped_malformed: u64,
    /// Requests on a queue without an AF_XDP socket (passed to the kernel).
    pub no_socket: u64,
}

/// What the program steers: the fetch endpoint and the consumer allowlist.
#[derive(Clone, Debug)]
pub struct SteeringConfig {
    /// UDP endpoint of the fetch protocol. An unspecified address (0.0.0.0 / ::) matches
    /// every destination address of that family.
    pub fetch: SocketAddr,
    /// Consumer prefixes allowed to send requests; empty = everyone.
    pub allow: Vec<Cidr>,
}

/// The loaded (and possibly attached) steering program.
pub struct Steering {
    skel: KxgwSkel<'static>,
    link: Option<OwnedFd>,
    attached: Option<(String, XdpMode)>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("attached", &self.attached)
            .finish()
    }
}

fn map_err(map: &'static str) -> impl Fn(libbpf_rs::Error) -> XdpError {
    move |e| XdpError::Map {
        map,
        reason: e.to_string(),
    }
}

impl Steering {
    /// Loads the program with `cfg` baked into its read-only globals and fills the allowlist.
    pub fn load(cfg: &SteeringConfig) -> Result<Steering, XdpError> {
        // The skeleton borrows its object storage for its whole life; the storage is a few
        // hundred bytes, allocated once per load, so it is simply leaked.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = KxgwSkelBuilder::default()
            .open(storage)
            .map_err(|e| XdpError::Load(format!("opening the BPF object: {e}")))?;
        let ro = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| XdpError::Load("BPF object has no .rodata section".into()))?;
        ro.fetch_port = cfg.fetch.port().to_be();
        ro.fetch_any_addr = u8::from(cfg.fetch.ip().is_unspecified());
        match cfg.fetch.ip() {
            IpAddr::V4(a) => {
                ro.fetch_has_v4 = 1;
                ro.fetch_addr_v4 = u32::from_ne_bytes(a.octets());
            }
            IpAddr::V6(a) => {
                ro.fetch_has_v6 = 1;
                ro.fetch_addr_v6 = a.octets();
                // [::] also takes IPv4 (dual-stack socket semantics).
                if a.is_unspecified() {
                    ro.fetch_has_v4 = 1;
                }
            }
        }
        ro.acl_enabled = u8::from(!cfg.allow.is_empty());
        let skel = open.load().map_err(|e| {
            let running = std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|r| format!("this is Linux {}", r.trim()))
                .unwrap_or_else(|_| "kernel version unknown".into());
            XdpError::Load(format!(
                "{e} (needs root or CAP_BPF+CAP_NET_ADMIN, and Linux >= 5.18 for a frags-aware \
                 XDP program; loading and serving are tested on Linux 6.1, 6.12 and 7.3 by \
                 scripts/testvm.sh; {running})"
            ))
        })?;
        let steering = Steering {
            skel,
            link: None,
            attached: None,
        };
        for cidr in &cfg.allow {
            steering.allow(*cidr)?;
        }
        Ok(steering)
    }

    /// Adds a prefix to the allowlist. Only meaningful when the program was loaded with a
    /// non-empty allowlist (an empty one means "allow all" and is baked in at load).
    pub fn allow(&self, cidr: Cidr) -> Result<(), XdpError> {
        let mut key = (u32::from(cidr.prefix)).to_ne_bytes().to_vec();
        let (map, name) = match cidr.addr {
            IpAddr::V4(a) => {
                key.extend_from_slice(&a.octets());
                (&self.skel.maps.allow_v4, "allow_v4")
            }
            IpAddr::V6(a) => {
                key.extend_from_slice(&a.octets());
                (&self.skel.maps.allow_v6, "allow_v6")
            }
        };
        map.update(&key, &[1], MapFlags::ANY).map_err(map_err(name))
    }

    /// Attaches to `iface` (in the current network namespace) through a bpf_link.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<u32, XdpError> {
        let ifindex = ifindex(iface)?;
        let prog_fd = self.skel.progs.kxgw_steer.as_fd().as_raw_fd();
        // SAFETY: plain-old-data options struct; zeroed is its documented initial state.
        let mut opts: libbpf_rs::libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of_val(&opts) as _;
        opts.flags = mode.flags();
        // SAFETY: prog_fd is a live program fd owned by the skeleton; opts is initialised.
        let fd = unsafe {
            libbpf_rs::libbpf_sys::bpf_link_create(
                prog_fd,
                ifindex as i32,
                libbpf_rs::libbpf_sys::BPF_XDP,
                &opts,
            )
        };
        if fd < 0 {
            let errno = -fd;
            let hint = match errno {
                libc::ERANGE => " (MTU too large for XDP on this driver: veth refuses non-frags programs above ~3.5 KB; lower the MTU or check the driver's XDP limit)",
                libc::EOPNOTSUPP => " (the driver has no native XDP: try --xdp-mode generic)",
                libc::EBUSY | libc::EEXIST => " (another XDP program is attached to this interface: `ip link set dev IF xdp off`)",
                libc::EINVAL => " (the driver rejected the program; for native mode on veth the peer must be up)",
                _ => "",
            };
            return Err(XdpError::Attach {
                iface: iface.to_string(),
                mode: mode.name(),
                err: std::io::Error::from_raw_os_error(errno),
                hint,
            });
        }
        // SAFETY: bpf_link_create returned a fresh fd that nothing else owns.
        self.link = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        self.attached = Some((iface.to_string(), mode));
        log::info!(
            "XDP steering attached to {iface} (ifindex {ifindex}) in {} mode via bpf_link",
            mode.name()
        );
        Ok(ifindex)
    }

    /// Interface and mode, once attached.
    pub fn attached(&self) -> Option<(&str, XdpMode)> {
        self.attached.as_ref().map(|(i, m)| (i.as_str(), *m))
    }

    /// Points queue `queue` of the interface at the AF_XDP socket `fd`.
    pub fn register_socket(&self, queue: u32, fd: RawFd) -> Result<(), XdpError> {
        self.skel
            .maps
            .xsks
            .update(
                &queue.to_ne_bytes(),
                &(fd as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(map_err("xsks"))
    }

    /// Removes the socket of `queue` (requests on it then pass to the kernel, counted as
    /// no_socket).
    pub fn unregister_socket(&self, queue: u32) -> Result<(), XdpError> {
        self.skel
            .maps
            .xsks
            .delete(&queue.to_ne_bytes())
            .map_err(map_err("xsks"))
    }

    /// Current counters, summed over CPUs.
    pub fn counters(&self) -> Result<SteeringCounters, XdpError> {
        read_counters(&self.skel.maps.counters)
    }

    /// A handle on the counters that other threads can read (metrics).
    pub fn counter_reader(&self) -> Result<CounterReader, XdpError> {
        libbpf_rs::MapHandle::try_from(&self.skel.maps.counters)
            .map(CounterReader)
            .map_err(map_err("counters"))
    }

    /// Runs the program once on `frame` with BPF_PROG_TEST_RUN (no interface needed) and
    /// returns its verdict (XDP_DROP = 1, XDP_PASS = 2, XDP_REDIRECT = 4).
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, XdpError> {
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            ..Default::default()
        };
        let out = self
            .skel
            .progs
            .kxgw_steer
            .test_run(input)
            .map_err(|e| XdpError::Load(format!("BPF_PROG_TEST_RUN: {e}")))?;
        Ok(out.return_value)
    }
}

/// Reads the steering counters from any thread (holds its own map fd).
#[derive(Debug)]
pub struct CounterReader(libbpf_rs::MapHandle);

impl CounterReader {
    /// Current counters, summed over CPUs.
    pub fn read(&self) -> Result<SteeringCounters, XdpError> {
        read_counters(&self.0)
    }
}

fn read_counters(map: &impl MapCore) -> Result<SteeringCounters, XdpError> {
    let mut slots = [0u64; 5];
    for (i, slot) in slots.iter_mut().enumerate() {
        let per_cpu = map
            .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("counters"))?
            .unwrap_or_default();
        *slot = per_cpu
            .iter()
            .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
            .map(u64::from_ne_bytes)
            .sum();
    }
    Ok(SteeringCounters {
        steered: slots[0],
        passed: slots[1],
        dropped_acl: slots[2],
        dropped_malformed: slots[3],
        no_socket: slots[4],
    })
}

/// The ifindex of `iface` in the current network namespace.
pub fn ifindex(iface: &str) -> Result<u32, XdpError> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| XdpError::NoInterface(iface.to_string()))
}
