//! The per-connection output queue and the two ways record bytes leave the process:
//! `sendfile(2)` from the segment file (`--io sendfile`) or `pread(2)` into a user-space
//! buffer followed by `send(2)` (`--io copy`, the traditional path). Non-blocking: a write
//! that would block leaves the queue where it stopped; the event loop retries on writable.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;

use super::chunk::{Chunk, FileRange};

/// How record bytes are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// `sendfile(2)` from the segment file: no copy through user space.
    Sendfile,
    /// `pread(2)` into a buffer, then `send(2)`: the traditional copy path.
    Copy,
}

impl IoMode {
    /// Name as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            IoMode::Sendfile => "sendfile",
            IoMode::Copy => "copy",
        }
    }
}

/// Size of the copy-mode buffer (allocated only while a file chunk is in flight).
const COPY_BUF: usize = 128 * 1024;
/// Largest single sendfile call.
const SENDFILE_MAX: usize = 1 << 30;

/// What one [`OutQueue::write_to`] call moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Encoded protocol bytes sent.
    pub mem: u64,
    /// Record bytes sent from files.
    pub file: u64,
    /// The socket would block: wait for writable.
    pub blocked: bool,
}

/// Copy-mode staging: bytes read from the file but not yet accepted by the socket.
struct Staged {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Ordered chunks waiting for the socket.
#[derive(Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    pending: usize,
    staged: Option<Staged>,
}

impl OutQueue {
    /// Appends a response.
    pub fn push(&mut self, chunks: Vec<Chunk>) {
        for c in chunks {
            if !c.is_empty() {
                self.pending += c.len();
                self.chunks.push_back(c);
            }
        }
    }

    /// Bytes queued and not yet sent.
    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    /// Nothing left to send.
    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Hands every queued chunk to the caller and empties the queue (for writers other than
    /// a socket, e.g. tests that decode responses without I/O).
    pub fn take(&mut self) -> Vec<Chunk> {
        self.pending = 0;
        self.staged = None;
        self.chunks.drain(..).collect()
    }

    /// Sends as much as the socket accepts. An `Err` means the connection is unusable
    /// (peer gone, file shorter than promised); the caller closes it.
    pub fn write_to<S: AsFd>(&mut self, sock: &S, mode: IoMode) -> io::Result<Written> {
        let mut w = Written::default();
        loop {
            let more = self.chunks.len() > 1;
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let res = match front {
                Chunk::Mem(b) => send_mem(sock, b, more).inspect(|&n| {
                    w.mem += n as u64;
                    let _ = b.split_to(n);
                }),
                Chunk::File(r) => {
                    let n = match mode {
                        IoMode::Sendfile => send_file(sock, r),
                        IoMode::Copy => {
                            copy_file(|b, more| send_mem(sock, b, more), r, &mut self.staged, more)
                        }
                    };
                    n.inspect(|&n| w.file += n as u64)
                }
            };
            match res {
                Ok(n) => {
                    self.pending -= n;
                    if front.is_empty() && self.staged.is_none() {
                        self.chunks.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    w.blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.release_if_idle();
        Ok(w)
    }

    /// Moves about `budget` bytes (or fewer, if `sink` stops taking them) into `sink`, a TLS
    /// writer: encoded bytes as they are, record bytes read from their file into the staging
    /// buffer first (the copy path, whatever the listener's I/O mode).
    pub fn write_into<W: io::Write>(&mut self, sink: &mut W, budget: usize) -> io::Result<Written> {
        let mut w = Written::default();
        while w.mem + w.file < budget as u64 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let res = match front {
                Chunk::Mem(b) => sink.write(b).inspect(|&n| {
                    w.mem += n as u64;
                    let _ = b.split_to(n);
                }),
                Chunk::File(r) => copy_file(|b, _| sink.write(b), r, &mut self.staged, false)
                    .inspect(|&n| w.file += n as u64),
            };
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            self.pending -= n;
            if front.is_empty() && self.staged.is_none() {
                self.chunks.pop_front();
            } else if n == 0 {
                // The sink is full.
                break;
            }
        }
        self.release_if_idle();
        Ok(w)
    }

    fn release_if_idle(&mut self) {
        if self.chunks.is_empty() {
            // Idle connections hold no buffers.
            self.staged = None;
            self.chunks.shrink_to(4);
        }
    }
}

fn send_mem<S: AsFd>(sock: &S, buf: &[u8], more: bool) -> io::Result<usize> {
    use nix::sys::socket::MsgFlags;
    let mut flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    if more {
        // The next chunk follows at once: let the kernel coalesce header and records.
        flags |= MsgFlags::from_bits_retain(libc::MSG_MORE);
    }
    Ok(nix::sys::socket::send(
        sock.as_fd().as_raw_fd(),
        buf,
        flags,
    )?)
}

fn send_file<S: AsFd>(sock: &S, r: &mut FileRange) -> io::Result<usize> {
    let mut off = i64::try_from(r.position)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file position beyond i64"))?;
    let count = r.len.min(SENDFILE_MAX);
    // With an explicit offset the file's own position is untouched, so ranges can share a file.
    let n = nix::sys::sendfile::sendfile64(sock, &*r.file, Some(&mut off), count)?;
    if n == 0 {
        return Err(file_ended(r));
    }
    r.position += n as u64;
    r.len -= n;
    Ok(n)
}

/// The segment is shorter than the range promised (truncated under us).
fn file_ended(r: &FileRange) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "segment file ended at {} with {} record bytes still to send",
            r.position, r.len
        ),
    )
}

/// Copy mode: pread a piece of the range into the staging buffer, `send` it (a socket, or a
/// TLS writer); bytes it did not take stay staged for the next call. Returns file bytes
/// handed over.
fn copy_file(
    mut send: impl FnMut(&[u8], bool) -> io::Result<usize>,
    r: &mut FileRange,
    staged: &mut Option<Staged>,
    more_chunks: bool,
) -> io::Result<usize> {
    let st = staged.get_or_insert_with(|| Staged {
        buf: vec![0u8; COPY_BUF],
        start: 0,
        end: 0,
    });
    if st.start == st.end {
        if r.len == 0 {
            *staged = None;
            return Ok(0);
        }
        let want = r.len.min(st.buf.len());
        let n = r.file.read_at(&mut st.buf[..want], r.position)?;
        if n == 0 {
            return Err(file_ended(r));
        }
        r.position += n as u64;
        r.len -= n;
        st.start = 0;
        st.end = n;
    }
    let more = more_chunks || r.len > 0;
    let n = send(&st.buf[st.start..st.end], more)?;
    st.start += n;
    if st.start == st.end && r.len == 0 {
        *staged = None;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    /// A receiver that reads slowly forces partial writes and EAGAIN; whatever the mode,
    /// the bytes arrive complete and in order.
    #[test]
    fn partial_writes_and_eagain_keep_order_in_both_modes() {
        let mut tmp = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        tmp.write_all(&content).unwrap();
        let file = Arc::new(tmp);
        for mode in [IoMode::Sendfile, IoMode::Copy] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let tx = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut rx, _) = l.accept().unwrap();
            tx.set_nonblocking(true).unwrap();
            // Small buffers so the slow reader really makes the sender wait.
            socket2::SockRef::from(&tx)
                .set_send_buffer_size(16 * 1024)
                .unwrap();
            socket2::SockRef::from(&rx)
                .set_recv_buffer_size(16 * 1024)
                .unwrap();
            let mut q = OutQueue::default();
            let mut expect = Vec::new();
            for (pos, len) in [(5usize, 1_000_000usize), (2_000_000, 999_999)] {
                let head = Bytes::from(format!("hdr{pos}"));
                expect.extend_from_slice(&head);
                expect.extend_from_slice(&content[pos..pos + len]);
                q.push(vec![
                    Chunk::Mem(head),
                    Chunk::File(FileRange {
                        file: file.clone(),
                        position: pos as u64,
                        len,
                    }),
                ]);
            }
            let total = expect.len();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 7000];
                while got.len() < total {
                    let n = rx.read(&mut buf).unwrap();
                    assert!(n > 0);
                    got.extend_from_slice(&buf[..n]);
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                got
            });
            let mut blocked = 0;
            let mut sent = 0u64;
            while !q.is_empty() {
                let w = q.write_to(&tx, mode).unwrap();
                sent += w.mem + w.file;
                if w.blocked {
                    blocked += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            assert_eq!(sent as usize, total);
            assert!(
                blocked > 0,
                "{mode:?}: the slow reader never made the socket block"
            );
            let got = reader.join().unwrap();
            assert!(got == expect, "{mode:?}: bytes differ");
        }
    }

    #[test]
    fn short_file_is_an_error_not_a_hang() {
        let mut tmp = tempfile::tempfile().unwrap();
        tmp.write_all(b"0123456789").unwrap();
        let file = Arc::new(tmp);
        for mode in [IoMode::Sendfile, IoMode::Copy] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let tx = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let _rx = l.accept().unwrap();
            let mut q = OutQueue::default();
            q.push(vec![Chunk::File(FileRange {
                file: file.clone(),
                position: 4,
                len: 100,
            })]);
            let mut res = q.write_to(&tx, mode);
            if res.is_ok() {
                res = q.write_to(&tx, mode);
            }
            let e = res.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{mode:?}");
        }
    }
}
