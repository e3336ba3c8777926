//! Errors of the fast path. Each names what was attempted and, where it helps, what to do.

use std::io;

/// Failures of the XDP program, the AF_XDP sockets and the UMEM.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// Loading the BPF object (verifier, map creation) failed.
    #[error("loading the XDP steering program: {0}")]
    Load(String),
    /// Attaching the program to the interface failed.
    #[error("attaching XDP ({mode}) to {iface}: {err}{hint}")]
    Attach {
        /// Interface name.
        iface: String,
        /// Requested mode.
        mode: &'static str,
        /// The kernel's answer.
        err: io::Error,
        /// What usually causes this errno.
        hint: &'static str,
    },
    /// A map update or lookup failed.
    #[error("BPF map {map}: {reason}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What failed.
        reason: String,
    },
    /// The interface does not exist (in this network namespace).
    #[error("interface {0:?} not found in this network namespace")]
    NoInterface(String),
    /// A system call on the AF_XDP socket or the UMEM failed.
    #[error("{what}: {err}{hint}")]
    Sys {
        /// What was attempted.
        what: String,
        /// The kernel's answer.
        err: io::Error,
        /// What usually causes this errno.
        hint: &'static str,
    },
    /// A configuration value is out of range.
    #[error("invalid fast-path configuration: {0}")]
    Config(String),
}

impl XdpError {
    /// A `Sys` error from the last OS error or an explicit errno.
    pub(crate) fn sys(what: impl Into<String>, errno: i32) -> XdpError {
        let hint = match errno {
            libc::EFAULT | libc::ENOMEM => {
                " (UMEM registration pins every page read-write: the area must be an anonymous or \
                 tmpfs/memfd MAP_SHARED read-write mapping, never an ext4/xfs file mapping; ENOMEM \
                 can also be RLIMIT_MEMLOCK)"
            }
            libc::EBUSY => {
                " (the queue is still held by a previous AF_XDP socket or another program; it \
                 frees shortly after that socket closes)"
            }
            libc::EOPNOTSUPP => " (the driver has no zero-copy support for this queue)",
            libc::EINVAL => " (check queue id against `ethtool -l`, chunk size <= 4096, ring sizes powers of two)",
            _ => "",
        };
        XdpError::Sys {
            what: what.into(),
            err: io::Error::from_raw_os_error(errno),
            hint,
        }
    }

    /// The errno behind a `Sys` or `Attach` error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            XdpError::Sys { err, .. } | XdpError::Attach { err, .. } => err.raw_os_error(),
            _ => None,
        }
    }
}
