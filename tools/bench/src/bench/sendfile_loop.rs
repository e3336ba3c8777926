//! The ceiling of the sendfile path: a server that sends one file over and over with
//! sendfile(2) to whoever connects, with no protocol at all, and a client that reads a given
//! number of bytes. Same link, same file, same consumer work per byte (optionally CRC32C, as
//! the measuring Kafka client does) as the gateway's sendfile path.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::Throughput;

/// Serves `file` to every connection on `listen` until the peer closes. Runs until killed.
pub fn serve(listen: &str, file: &Path) -> Result<()> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("stat {}", file.display()))?
        .len();
    if len == 0 {
        bail!("{} is empty", file.display());
    }
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    log::info!(
        "sendfile loop: serving {} ({len} bytes) on {listen}",
        file.display()
    );
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                continue;
            }
        };
        let path: PathBuf = file.to_owned();
        std::thread::spawn(move || {
            if let Err(e) = send_forever(stream, &path, len) {
                log::warn!("sendfile loop connection: {e:#}");
            }
        });
    }
    Ok(())
}

fn send_forever(stream: TcpStream, path: &Path, len: u64) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    loop {
        let mut off: libc::off_t = 0;
        while (off as u64) < len {
            let want = (len - off as u64).min(1 << 30) as usize;
            // SAFETY: both descriptors are open for the duration of the call (owned above) and
            // `off` is a valid, exclusively borrowed off_t the kernel updates.
            let n = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
            if n == 0 {
                bail!("sendfile returned 0 at {off}");
            }
            if n < 0 {
                match nix::errno::Errno::last() {
                    nix::errno::Errno::EINTR => {}
                    // The client read what it wanted and closed: done.
                    nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET => return Ok(()),
                    e => return Err(e).context("sendfile"),
                }
            }
        }
    }
}

/// Reads `bytes` bytes from `addr` in `buf_size` reads, optionally CRC32C-ing them.
pub fn read_stream(addr: &str, bytes: u64, buf_size: usize, crc: bool) -> Result<Throughput> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let mut buf = vec![0u8; buf_size.max(4096)];
    let t0 = Instant::now();
    let mut got = 0u64;
    let mut acc = 0u32;
    while got < bytes {
        let want = buf.len().min((bytes - got) as usize);
        match s.read(&mut buf[..want]) {
            Ok(0) => bail!("server closed after {got} of {bytes} bytes"),
            Ok(n) => {
                if crc {
                    acc = crc32c::crc32c_append(acc, &buf[..n]);
                }
                got += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the stream"),
        }
    }
    let elapsed = t0.elapsed();
    // Keep the checksum observable so the work is not optimised away.
    log::debug!("stream crc32c {acc:#010x}");
    Ok(Throughput {
        bytes: got,
        records: 0,
        elapsed,
    })
}
