//! Capability handling of the gateway process.
//!
//! Setup needs privileges (CAP_BPF to load the XDP program and its maps, CAP_NET_ADMIN to
//! attach it, CAP_NET_RAW for AF_XDP sockets, CAP_IPC_LOCK to pin the UMEM); serving needs
//! none: the attached link, the sockets and the pinned memory stay usable through the file
//! descriptors already held. So once setup is done every set is cleared, and a compromise of
//! the running gateway gains nothing from them.

use anyhow::{Context, Result};
use caps::{CapSet, Capability};

/// The capabilities currently effective, by name (`CAP_BPF`...).
pub fn effective() -> Result<Vec<String>> {
    let mut names: Vec<String> = caps::read(None, CapSet::Effective)
        .context("reading the effective capability set")?
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// Clears the bounding, ambient, inheritable, effective and permitted sets of the process
/// (every thread: capabilities are per thread, so this runs before serving threads could
/// have been relied on to do it, and clears what they inherited too via the bounding set).
pub fn drop_all() -> Result<()> {
    let before = effective()?;
    if before.is_empty() {
        return Ok(());
    }
    // The bounding set can only shrink while CAP_SETPCAP is still effective.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        caps::clear(None, CapSet::Bounding).context("clearing the bounding capability set")?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).with_context(|| format!("clearing the {set:?} capability set"))?;
    }
    log::info!(
        "dropped {} capabilities after setup (the running gateway needs none)",
        before.len()
    );
    Ok(())
}
