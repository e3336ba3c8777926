//! Frame accounting of one queue: every UMEM frame of the queue is either in the worker's
//! hands (TX free list, a packet waiting for ring room) or with the kernel (fill, RX, TX or
//! completion ring). In zero-copy mode the driver holds fill-ring frames for DMA, so a frame
//! that is never returned is memory the NIC may still write: the ledger counts what is
//! outstanding and, at shutdown once TX has drained, what went missing.

/// Counts of one queue's frames.
#[derive(Debug)]
pub struct FrameLedger {
    rx_frames: u64,
    tx_frames: u64,
    /// RX frames handed to the kernel (fill ring) and not yet back through the RX ring.
    rx_with_kernel: u64,
    /// Frames dropped on the floor (a fill ring that took fewer than offered).
    lost: u64,
}

impl FrameLedger {
    /// A queue with `rx_frames` RX and `tx_frames` TX frames, all in the worker's hands.
    pub fn new(rx_frames: u32, tx_frames: u32) -> FrameLedger {
        FrameLedger {
            rx_frames: u64::from(rx_frames),
            tx_frames: u64::from(tx_frames),
            rx_with_kernel: 0,
            lost: 0,
        }
    }

    /// `offered` frames were put on the fill ring, which took `taken`.
    pub fn filled(&mut self, offered: usize, taken: u32) {
        self.rx_with_kernel += u64::from(taken);
        self.lost += (offered as u64).saturating_sub(u64::from(taken));
    }

    /// `n` frames came back through the RX ring.
    pub fn received(&mut self, n: u64) {
        self.rx_with_kernel = self.rx_with_kernel.saturating_sub(n);
    }

    /// TX frames with the kernel: neither free nor in a packet still waiting for ring room.
    pub fn tx_with_kernel(&self, tx_free: usize, tx_waiting: usize) -> u64 {
        self.tx_frames.saturating_sub((tx_free + tx_waiting) as u64)
    }

    /// Frames with the kernel (fill + RX + TX + completion rings).
    pub fn outstanding(&self, tx_free: usize, tx_waiting: usize) -> u64 {
        self.rx_with_kernel + self.tx_with_kernel(tx_free, tx_waiting)
    }

    /// Frames unaccounted for once TX has drained: RX frames neither on the fill/RX rings
    /// nor lost-and-counted, TX frames never completed, and frames a short fill dropped.
    pub fn leaked(&self, tx_free: usize, tx_waiting: usize) -> u64 {
        self.rx_frames.abs_diff(self.rx_with_kernel) + self.tx_with_kernel(tx_free, tx_waiting)
    }

    /// Frames dropped by a short fill.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_queue_leaks_nothing() {
        let mut l = FrameLedger::new(8, 4);
        l.filled(8, 8);
        l.received(3);
        assert_eq!(l.outstanding(4, 0), 5);
        l.filled(3, 3);
        // Two TX frames sent and not completed yet, one waiting for ring room.
        assert_eq!(l.outstanding(1, 1), 10);
        assert_eq!(l.leaked(1, 1), 2);
        assert_eq!(l.leaked(4, 0), 0);
    }

    #[test]
    fn short_fill_and_missing_completion_are_leaks() {
        let mut l = FrameLedger::new(8, 4);
        l.filled(8, 6);
        assert_eq!(l.lost(), 2);
        assert_eq!(l.leaked(3, 0), 2 + 1);
    }
}
