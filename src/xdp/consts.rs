//! Sizes and flags the UMEM, the arena, the sockets and the queues agree on.

/// UMEM chunk size: the kernel's maximum (8192+ is EINVAL), one page.
pub const FRAME: u64 = 4096;
/// Descriptors per packet the kernel accepts (1 + MAX_SKB_FRAGS); a 19th drops the packet.
pub const MAX_DESCS: usize = 18;
/// `xdp_desc.options`: more descriptors of this packet follow.
pub const XDP_PKT_CONTD: u32 = 1;
/// RX frames per queue (on the fill ring or the RX ring).
pub const RX_FRAMES: u32 = 2048;
/// TX frames per queue (headers and copied payloads).
pub const TX_FRAMES: u32 = 2048;
/// RX and TX ring sizes.
pub const RING: u32 = 2048;
/// Fill ring size.
pub const FILL_RING: u32 = 4096;
/// Completion ring size.
pub const COMP_RING: u32 = 4096;
/// RX descriptors taken per receive call.
pub const RX_BATCH: u32 = 64;
