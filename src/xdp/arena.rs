//! The log arena: a cache of log segment bytes inside the UMEM, so a TX descriptor can point
//! at them (the `sg` strategy).
//!
//! Segment files on ext4/xfs cannot be registered as UMEM, so their bytes are staged once into
//! the pre-sized memfd arena with `pwrite`, and every consumer of the same bytes is then served
//! from there (one staging copy amortised over all consumers, no per-consumer copy). The arena
//! is cut into 1 MiB blocks, each caching one aligned 1 MiB range of one segment; within a
//! block each page tracks which byte range is staged (an active segment grows, so a page may be
//! staged partially first and completed later; log bytes never change once written, so
//! re-staging a range in flight writes identical bytes).
//!
//! A block referenced by an in-flight TX descriptor is never evicted: every descriptor takes a
//! reference, released when its address comes back on the completion ring. Eviction is a
//! clock sweep over unreferenced blocks.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use super::consts::FRAME;
use super::error::XdpError;
use super::umem::UmemArea;
pub use crate::log::SourceId;

/// Bytes of segment cached per block.
pub const BLOCK: u64 = 1 << 20;
const PAGES_PER_BLOCK: usize = (BLOCK / FRAME) as usize;

struct Block {
    key: Option<(usize, u64)>,
    keep: Option<Arc<dyn Any + Send + Sync>>,
    refs: u32,
    recently_used: bool,
    // Staged byte range [lo, hi) of each page (lo == hi: nothing).
    pages: Box<[(u16, u16)]>,
}

/// Counters of the arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Bytes written into the arena (staging copies).
    pub staged_bytes: u64,
    /// Bytes served from already staged pages.
    pub hit_bytes: u64,
    /// Blocks evicted to make room.
    pub evictions: u64,
    /// Requests refused because every block was referenced by in-flight descriptors.
    pub full: u64,
}

/// The arena's bookkeeping; the bytes live in the [`UmemArea`].
pub struct Arena {
    area: Arc<UmemArea>,
    base: u64,
    blocks: Vec<Block>,
    index: HashMap<(usize, u64), u32>,
    hand: usize,
    stats: ArenaStats,
}

/// The arena could not take the payload (all blocks in flight); the caller copies instead.
#[derive(Debug)]
pub struct ArenaFull;

impl Arena {
    /// Manages the arena part of `area`.
    pub fn new(area: Arc<UmemArea>) -> Arena {
        let (base, len) = (area.arena_offset(), area.arena_len());
        Arena::part(area, base, len)
    }

    /// Manages `len` bytes of the arena part of `area` from UMEM offset `base` (one queue's
    /// share: queues have their own arenas, so they share no lock).
    pub fn part(area: Arc<UmemArea>, base: u64, len: u64) -> Arena {
        let n = (len / BLOCK) as usize;
        let blocks = (0..n)
            .map(|_| Block {
                key: None,
                keep: None,
                refs: 0,
                recently_used: false,
                pages: vec![(0u16, 0u16); PAGES_PER_BLOCK].into_boxed_slice(),
            })
            .collect();
        Arena {
            base,
            area,
            blocks,
            index: HashMap::new(),
            hand: 0,
            stats: ArenaStats::default(),
        }
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Counters.
    pub fn stats(&self) -> ArenaStats {
        self.stats
    }

    /// Whether UMEM address `addr` lies in the arena.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.base + self.blocks.len() as u64 * BLOCK
    }

    /// Stages `bytes` (= bytes `position..position+len` of `source`) and appends one
    /// (UMEM address, length) per page piece to `out`, each holding a block reference until
    /// [`Arena::release`]. Pieces never cross a page (valid in aligned mode, and in zero-copy
    /// mode where pages need not be physically contiguous). `ahead` starts with `bytes` and may
    /// continue with the bytes that follow in the source (the rest of a fetch response): when
    /// staging is needed, one write stages as much of it as the block holds, so a response
    /// costs one `pwrite` per block rather than one per datagram page.
    pub fn stage(
        &mut self,
        source: &SourceId,
        position: u64,
        bytes: &[u8],
        ahead: &[u8],
        out: &mut Vec<(u64, u32)>,
    ) -> Result<Result<(), ArenaFull>, XdpError> {
        let ahead = if ahead.len() >= bytes.len() && ahead[..bytes.len()].as_ptr() == bytes.as_ptr()
        {
            ahead
        } else {
            bytes
        };
        let start_len = out.len();
        let mut done = 0usize;
        while done < bytes.len() {
            let pos = position + done as u64;
            let block_no = pos / BLOCK;
            let in_block = pos % BLOCK;
            let page = (in_block / FRAME) as usize;
            let in_page = (in_block % FRAME) as usize;
            let n = (FRAME as usize - in_page).min(bytes.len() - done);
            let b = match self.block_for(source, block_no) {
                Some(b) => b,
                None => {
                    self.stats.full += 1;
                    self.release_all(&out[start_len..]);
                    out.truncate(start_len);
                    return Ok(Err(ArenaFull));
                }
            };
            let addr = self.base + b as u64 * BLOCK + in_block;
            let (lo, hi) = self.blocks[b].pages[page];
            let (a, z) = (in_page as u16, (in_page + n) as u16);
            if lo <= a && z <= hi && lo < hi {
                self.stats.hit_bytes += n as u64;
            } else {
                // Stage from here to the end of the block or of what the caller has.
                let w = ((BLOCK - in_block) as usize).min(ahead.len() - done);
                if let Err(e) = self.area.pwrite(&ahead[done..done + w], addr) {
                    self.release_all(&out[start_len..]);
                    out.truncate(start_len);
                    return Err(e);
                }
                self.stats.staged_bytes += w as u64;
                self.mark(b, in_block, in_block + w as u64);
            }
            let blk = &mut self.blocks[b];
            blk.refs += 1;
            blk.recently_used = true;
            out.push((addr, n as u32));
            done += n;
        }
        Ok(Ok(()))
    }

    /// Records bytes `from..to` of block `b` as staged.
    fn mark(&mut self, b: usize, from: u64, to: u64) {
        let pages = &mut self.blocks[b].pages;
        let mut at = from;
        while at < to {
            let page = (at / FRAME) as usize;
            let a = (at % FRAME) as u16;
            let end = to.min((page as u64 + 1) * FRAME);
            let z = (end - page as u64 * FRAME) as u16;
            let (lo, hi) = pages[page];
            // One contiguous staged range per page: union when touching, else the new one.
            pages[page] = if lo < hi && a <= hi && lo <= z {
                (lo.min(a), hi.max(z))
            } else {
                (a, z)
            };
            at = end;
        }
    }

    fn release_all(&mut self, pieces: &[(u64, u32)]) {
        for (addr, _) in pieces {
            self.release(*addr);
        }
    }

    /// Drops the reference of the descriptor at UMEM address `addr` (from the completion ring).
    pub fn release(&mut self, addr: u64) {
        if !self.contains(addr) {
            return;
        }
        let b = ((addr - self.base) / BLOCK) as usize;
        let blk = &mut self.blocks[b];
        blk.refs = blk.refs.saturating_sub(1);
    }

    /// In-flight references over all blocks (tests, stats).
    pub fn references(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.refs)).sum()
    }

    fn block_for(&mut self, source: &SourceId, block_no: u64) -> Option<usize> {
        if let Some(&b) = self.index.get(&(source.id, block_no)) {
            return Some(b as usize);
        }
        let n = self.blocks.len();
        // Two sweeps: the first clears "recently used" bits, the second finds one cleared.
        for _ in 0..2 * n {
            let i = self.hand;
            self.hand = (self.hand + 1) % n;
            let blk = &mut self.blocks[i];
            if blk.refs > 0 {
                continue;
            }
            if blk.recently_used {
                blk.recently_used = false;
                continue;
            }
            if let Some(old) = blk.key.take() {
                self.index.remove(&old);
                self.stats.evictions += 1;
            }
            blk.key = Some((source.id, block_no));
            blk.keep = Some(source.keep.clone());
            blk.pages.iter_mut().for_each(|p| *p = (0, 0));
            self.index.insert((source.id, block_no), i as u32);
            return Some(i);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(id: usize) -> SourceId {
        SourceId::anonymous(id)
    }

    fn read(area: &UmemArea, addr: u64, len: u32) -> Vec<u8> {
        // SAFETY: test-only read of a range inside the live mapping.
        unsafe { std::slice::from_raw_parts(area.base().add(addr as usize), len as usize) }.to_vec()
    }

    fn area(blocks: u64) -> Arc<UmemArea> {
        crate::test_support::require_root().unwrap();
        Arc::new(UmemArea::new(16, blocks * BLOCK, Vec::new(), 64, 64).unwrap())
    }

    #[test]
    fn stages_page_pieces_and_reuses_them() {
        let area = area(2);
        let mut arena = Arena::new(area.clone());
        let data: Vec<u8> = (0..3 * BLOCK as usize).map(|i| (i % 251) as u8).collect();
        let src = source(1);
        let mut out = Vec::new();
        // A range crossing a page and a block boundary.
        let pos = BLOCK - 5000;
        arena
            .stage(
                &src,
                pos,
                &data[pos as usize..pos as usize + 9000],
                &[],
                &mut out,
            )
            .unwrap()
            .unwrap();
        assert!(out.iter().all(|(a, l)| a % FRAME + u64::from(*l) <= FRAME));
        let mut got = Vec::new();
        for (a, l) in &out {
            got.extend(read(&area, *a, *l));
        }
        assert_eq!(got, &data[pos as usize..pos as usize + 9000]);
        assert_eq!(arena.references(), out.len() as u64);
        assert_eq!(arena.stats().staged_bytes, 9000);
        // Same bytes again: no staging, same addresses.
        let hits_before = arena.stats().hit_bytes;
        let mut again = Vec::new();
        arena
            .stage(
                &src,
                pos,
                &data[pos as usize..pos as usize + 9000],
                &[],
                &mut again,
            )
            .unwrap()
            .unwrap();
        assert_eq!(again, out);
        assert_eq!(arena.stats().hit_bytes - hits_before, 9000);
        assert_eq!(arena.stats().staged_bytes, 9000);
        // Both blocks are referenced: a third block cannot be placed.
        let mut third = Vec::new();
        let r = arena
            .stage(&source(2), 0, &data[..100], &[], &mut third)
            .unwrap();
        assert!(r.is_err());
        assert!(third.is_empty());
        // Release everything: now it evicts.
        for (a, _) in out.iter().chain(again.iter()) {
            arena.release(*a);
        }
        assert_eq!(arena.references(), 0);
        arena
            .stage(&source(2), 0, &data[..100], &[], &mut third)
            .unwrap()
            .unwrap();
        assert_eq!(read(&area, third[0].0, 100), &data[..100]);
        assert_eq!(arena.stats().evictions, 1);
    }

    #[test]
    fn a_growing_page_is_completed_not_lost() {
        let area = area(1);
        let mut arena = Arena::new(area.clone());
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 13 % 256) as u8).collect();
        let src = source(7);
        let mut out = Vec::new();
        arena
            .stage(&src, 100, &data[100..700], &[], &mut out)
            .unwrap()
            .unwrap();
        arena
            .stage(&src, 700, &data[700..2000], &[], &mut out)
            .unwrap()
            .unwrap();
        arena
            .stage(&src, 50, &data[50..2100], &[], &mut out)
            .unwrap()
            .unwrap();
        let (a, l) = out[2];
        assert_eq!(read(&area, a, l), &data[50..2100]);
    }

    #[test]
    fn staging_ahead_serves_later_datagrams_without_writes() {
        let area = area(2);
        let mut arena = Arena::new(area.clone());
        let data: Vec<u8> = (0..(BLOCK as usize + 70_000))
            .map(|i| (i % 253) as u8)
            .collect();
        let src = source(3);
        let start = BLOCK as usize - 50_000;
        let mut out = Vec::new();
        // First datagram of a response: stages up to the end of its block in one write.
        arena
            .stage(
                &src,
                start as u64,
                &data[start..start + 1400],
                &data[start..],
                &mut out,
            )
            .unwrap()
            .unwrap();
        assert_eq!(arena.stats().staged_bytes, 50_000);
        // The next datagrams of that block are hits; the one crossing into the next block
        // stages the rest.
        let mut pos = start + 1400;
        while pos < data.len() {
            let n = 1400.min(data.len() - pos);
            let mut o = Vec::new();
            arena
                .stage(&src, pos as u64, &data[pos..pos + n], &data[pos..], &mut o)
                .unwrap()
                .unwrap();
            let mut got = Vec::new();
            for (a, l) in &o {
                got.extend(read(&area, *a, *l));
            }
            assert_eq!(got, &data[pos..pos + n], "datagram at {pos}");
            pos += n;
        }
        assert_eq!(arena.stats().staged_bytes, (data.len() - start) as u64);
    }
}
