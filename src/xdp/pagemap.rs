//! Physical page ranges of the UMEM (`--xdp-umem-pagemap FILE`), read from
//! `/proc/self/pagemap`: with no IOMMU in between, the DMA address a driver writes into a TX
//! descriptor is the physical address, so a trace of those addresses checked against these
//! ranges proves the NIC read the frames from the UMEM (scripts/testvm.sh does that).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

const PAGE: u64 = 4096;
const PRESENT: u64 = 1 << 63;
const PFN_MASK: u64 = (1 << 55) - 1;

/// Physical ranges `[start, end)` backing `len` bytes at virtual address `base`, merged.
pub fn physical_ranges(base: usize, len: usize) -> Result<Vec<(u64, u64)>> {
    let pm = File::open("/proc/self/pagemap").context("opening /proc/self/pagemap")?;
    let first = base as u64 / PAGE;
    let pages = (len as u64).div_ceil(PAGE);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; 8 * 4096];
    let mut done = 0u64;
    while done < pages {
        let n = (pages - done).min(4096);
        let bytes = &mut buf[..(n * 8) as usize];
        pm.read_exact_at(bytes, (first + done) * 8)
            .context("reading /proc/self/pagemap")?;
        for e in bytes.chunks_exact(8) {
            let v = u64::from_ne_bytes(e.try_into().unwrap_or([0; 8]));
            let pfn = v & PFN_MASK;
            if v & PRESENT == 0 || pfn == 0 {
                bail!("a UMEM page is not present or its frame number is hidden (needs root)");
            }
            let start = pfn * PAGE;
            match ranges.last_mut() {
                Some(last) if last.1 == start => last.1 = start + PAGE,
                _ => ranges.push((start, start + PAGE)),
            }
        }
        done += n;
    }
    Ok(ranges)
}

/// Writes the UMEM's physical ranges to `path`, one `start end` pair (decimal) a line.
pub fn write_ranges(base: *const u8, len: usize, path: &Path) -> Result<()> {
    let ranges = physical_ranges(base as usize, len)?;
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    for (s, e) in &ranges {
        writeln!(f, "{s} {e}").with_context(|| format!("writing {}", path.display()))?;
    }
    log::info!(
        "UMEM physical page ranges ({} range(s), {} MiB) written to {}",
        ranges.len(),
        len >> 20,
        path.display()
    );
    Ok(())
}
