//! `kxgw consume`: read a partition through the kxgw UDP fetch protocol (falling back to
//! the Kafka TCP listener when the UDP endpoint does not answer), print records like kcat
//! or verify every batch (CRC, offset continuity, demo content) and report throughput and
//! loss recovery.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use kxgw::fetch::consumer::UdpConsumer;
use kxgw::fetch::{ClientConfig, Event, StartAt, Subscription};
use kxgw::kafka::client::KafkaFetcher;
use kxgw::log::record::{decode_records, records_section, RecordRef};
use kxgw_demo_data::{demo_key, demo_value_into};

use crate::flags::IsolationLevel;

mod discover;
mod group;
mod ticket;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// kxgw fetch endpoint (UDP), e.g. 198.18.0.1:9093.
    #[arg(long, value_name = "ADDR")]
    pub fetch: Option<SocketAddr>,
    /// Kafka listener (TCP) used when the fetch endpoint does not answer (or none is given);
    /// with --discover, the gateways to ask Metadata (comma-separated).
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap: Option<String>,
    #[arg(long)]
    pub topic: String,
    /// Consume as a member of this consumer group: join, get partitions of --topic assigned
    /// and commit offsets through the coordinator at --bootstrap, read the records over UDP
    /// from --fetch (starting at the committed offsets, else as --from-beginning/--from-end).
    #[arg(long, value_name = "GROUP", requires_all = ["fetch", "bootstrap"], conflicts_with_all = ["offset", "amplification_probe"])]
    pub group: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub partition: i32,
    /// Find the fetch endpoints through Metadata at --bootstrap (a cluster of gateways):
    /// read each partition over UDP from the fetch endpoint its leader's gateway advertises.
    #[arg(long, requires = "bootstrap", conflicts_with_all = ["fetch", "group", "amplification_probe"])]
    pub discover: bool,
    /// With --discover: the partitions to read [default: all of --topic].
    #[arg(
        long,
        value_name = "P[,P...]",
        value_delimiter = ',',
        requires = "discover"
    )]
    pub partitions: Vec<i32>,
    /// First offset to read.
    #[arg(long, conflicts_with_all = ["from_beginning", "from_end"])]
    pub offset: Option<i64>,
    /// Start at the log start (the default).
    #[arg(long)]
    pub from_beginning: bool,
    /// Start at the log end (only new records; implies nothing without --follow).
    #[arg(long)]
    pub from_end: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Keep waiting for new records at the log end (until --count or Ctrl-C).
    #[arg(long)]
    pub follow: bool,
    /// Check every batch CRC, offset continuity and the demo content (records written by
    /// `kxgw produce`); print a summary instead of the records. Exit status 1 on any error.
    #[arg(long)]
    pub verify: bool,
    /// Output format per record, kcat style: %t topic, %p partition, %o offset, %k key,
    /// %s value, %S value size, %K key size, %T timestamp, %h headers, \n \t escapes.
    #[arg(long, default_value = "%s\\n")]
    pub format: String,
    /// Bytes the consumer lets be in flight toward it (flow-control window).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub window: u32,
    /// max_bytes of each fetch.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub fetch_bytes: u32,
    /// Give up on the UDP endpoint after this long without an answer to the handshake.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub connect_timeout_ms: u64,
    /// Kafka isolation level, over UDP and over the Kafka fallback alike. Transaction
    /// markers (control records) are never printed.
    #[arg(long, value_enum, default_value_t = IsolationLevel::ReadCommitted)]
    pub isolation_level: IsolationLevel,
    /// Long-poll wait at the log end (with --follow).
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub max_wait_ms: u64,
    /// Instead of consuming: send fetches without a valid token (as a spoofed source would)
    /// and report how many bytes came back (never more than were sent).
    #[arg(long, requires = "fetch")]
    pub amplification_probe: bool,
    /// Fetch ticket (--ticket-from, --sasl-user and its options).
    #[command(flatten)]
    pub ticket: ticket::TicketArgs,
}

/// `--amplification-probe`: token-less and forged-token fetches for a lot of data.
fn amplification_probe(addr: SocketAddr, args: &Args) -> Result<ExitCode> {
    use kxgw::fetch::wire::{FetchRequest, PartRequest, TOKEN_LEN};
    let sock = std::net::UdpSocket::bind(if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })
    .context("binding a UDP socket")?;
    sock.set_read_timeout(Some(Duration::from_millis(300)))?;
    let forged = [0xA5u8; TOKEN_LEN];
    let mut sent = 0usize;
    let mut sent_n = 0usize;
    for round in 0..10u32 {
        for (token, pad) in [
            (&[][..], 0),
            (&[][..], 64),
            (&[][..], 1400),
            (&forged[..], 0),
        ] {
            let req = FetchRequest {
                version: kxgw::fetch::wire::VERSION,
                isolation: args.isolation_level.into(),
                ticket: &[],
                request_id: round + 1,
                ack_floor: 0,
                window: u32::MAX,
                max_wait_ms: 0,
                token,
                parts: vec![PartRequest {
                    topic: &args.topic,
                    partition: args.partition,
                    offset: kxgw::fetch::wire::OFFSET_EARLIEST,
                    max_bytes: 8 << 20,
                    range_start: 0,
                    range_end: 0,
                }],
            };
            let d = req.encode(pad).context("encoding the probe")?;
            sent += sock.send_to(&d, addr).context("sending the probe")?;
            sent_n += 1;
        }
    }
    let (mut got, mut got_n) = (0usize, 0usize);
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                got += n;
                got_n += 1;
            }
            Err(_) => break,
        }
    }
    println!(
        "amplification probe: sent {sent_n} fetches without a valid token ({sent} bytes), received {got_n} datagrams ({got} bytes): {}",
        if got <= sent { "no amplification" } else { "AMPLIFIED" }
    );
    Ok(if got <= sent {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the output side counts.
#[derive(Default)]
struct Tally {
    records: u64,
    batches: u64,
    bytes: u64,
    errors: u64,
    first: Option<i64>,
    next: Option<i64>,
    /// Next offset per partition (a group member reads several).
    next_of: std::collections::BTreeMap<i32, i64>,
}

struct Sink<'a> {
    args: &'a Args,
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    tally: Tally,
    bar: Option<indicatif::ProgressBar>,
    /// Reused for the expected demo value (no allocation per record).
    scratch: Vec<u8>,
}

impl Sink<'_> {
    fn done(&self) -> bool {
        self.args.count.is_some_and(|c| self.tally.records >= c)
    }

    fn error(&mut self, msg: String) {
        self.tally.errors += 1;
        if self.tally.errors <= 10 {
            eprintln!("kxgw consume: {msg}");
        }
    }

    /// One delivered batch: records from `from_offset` on.
    fn batch(&mut self, partition: i32, from_offset: i64, data: &[u8]) -> Result<()> {
        self.tally.batches += 1;
        self.tally.bytes += data.len() as u64;
        // Compressed batches are decompressed here: the gateway serves them as stored.
        let (h, body) = match records_section(data) {
            Ok(r) => r,
            Err(e) => {
                self.error(format!("batch at {from_offset}: {e}"));
                return Ok(());
            }
        };
        let recs = match decode_records(&h, &body) {
            Ok(r) => r,
            Err(e) => {
                self.error(format!("batch at {from_offset}: {e}"));
                return Ok(());
            }
        };
        for r in recs {
            if r.offset < from_offset || self.done() {
                continue;
            }
            if self.args.verify {
                if let Some(&n) = self.tally.next_of.get(&partition) {
                    if r.offset != n {
                        self.error(format!(
                            "offset {} follows {} (expected {n})",
                            r.offset,
                            n - 1
                        ));
                    }
                }
                // Keys are `demo_key` padded with 'k' or cut to the key size.
                let key_ok = r.key.is_none_or(|k| {
                    let d = demo_key(r.offset);
                    let n = k.len().min(d.len());
                    k[..n] == d[..n] && k[n..].iter().all(|&b| b == b'k')
                });
                let value_ok = r.value.is_some_and(|v| {
                    self.scratch.clear();
                    demo_value_into(&mut self.scratch, partition, r.offset, v.len());
                    self.scratch == v
                });
                if !key_ok || !value_ok {
                    self.error(format!(
                        "record {} does not hold the demo content",
                        r.offset
                    ));
                }
            } else {
                self.print(partition, h.base_timestamp, &r)?;
            }
            self.tally.first.get_or_insert(r.offset);
            self.tally.next = Some(r.offset + 1);
            self.tally.next_of.insert(partition, r.offset + 1);
            self.tally.records += 1;
        }
        if let Some(b) = &self.bar {
            b.set_position(self.tally.records);
        }
        Ok(())
    }

    fn print(&mut self, partition: i32, _base_ts: i64, r: &RecordRef<'_>) -> Result<()> {
        let f = self.args.format.as_bytes();
        let mut i = 0;
        let out = &mut self.out;
        while i < f.len() {
            let c = f[i];
            if (c == b'%' || c == b'\\') && i + 1 < f.len() {
                let n = f[i + 1];
                i += 2;
                match (c, n) {
                    (b'%', b't') => out.write_all(self.args.topic.as_bytes())?,
                    (b'%', b'p') => write!(out, "{partition}")?,
                    (b'%', b'o') => write!(out, "{}", r.offset)?,
                    (b'%', b'k') => out.write_all(r.key.unwrap_or(b""))?,
                    (b'%', b's') => out.write_all(r.value.unwrap_or(b""))?,
                    (b'%', b'S') => write!(out, "{}", r.value.map_or(-1, |v| v.len() as i64))?,
                    (b'%', b'K') => write!(out, "{}", r.key.map_or(-1, |k| k.len() as i64))?,
                    (b'%', b'T') => write!(out, "{}", r.timestamp)?,
                    (b'%', b'h') => {
                        for (k, (hk, hv)) in r.headers.iter().enumerate() {
                            if k > 0 {
                                out.write_all(b",")?;
                            }
                            out.write_all(hk)?;
                            out.write_all(b"=")?;
                            out.write_all(hv.unwrap_or(b""))?;
                        }
                    }
                    (b'%', b'%') => out.write_all(b"%")?,
                    (b'\\', b'n') => out.write_all(b"\n")?,
                    (b'\\', b't') => out.write_all(b"\t")?,
                    (b'\\', b'\\') => out.write_all(b"\\")?,
                    (c, n) => out.write_all(&[c, n])?,
                }
            } else {
                out.write_all(&[c])?;
                i += 1;
            }
        }
        Ok(())
    }
}

/// The UDP fetch client's settings from the flags (one partition, or a group's assignment).
fn client_config(args: &Args) -> ClientConfig {
    ClientConfig {
        window: args.window,
        fetch_bytes: args.fetch_bytes,
        follow: args.follow,
        max_wait: Duration::from_millis(args.max_wait_ms),
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        isolation: args.isolation_level.into(),
        ..ClientConfig::default()
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    match run_inner(args) {
        // `kxgw consume ... | head`: the reader left, which is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        r => r,
    }
}

fn run_inner(args: Args) -> Result<ExitCode> {
    if let (true, Some(addr)) = (args.amplification_probe, args.fetch) {
        return amplification_probe(addr, &args);
    }
    if args.fetch.is_none() && args.bootstrap.is_none() {
        bail!("give --fetch ADDR (kxgw UDP fetch) and/or --bootstrap HOST:PORT (Kafka TCP)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let start = match (args.offset, args.from_end) {
        (Some(o), _) => StartAt::Offset(o),
        (None, true) => StartAt::Latest,
        _ => StartAt::Earliest,
    };
    let mut sink = Sink {
        args: &args,
        out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock()),
        tally: Tally::default(),
        bar: progress_bar(&args),
        scratch: Vec::new(),
    };
    let t0 = Instant::now();
    let mut transport = String::new();
    let mut recovery = String::new();
    let mut answered = false;
    if args.discover {
        (transport, recovery) = discover::run(&args, start, &mut sink, &stop)?;
        answered = true;
    } else if let Some(g) = &args.group {
        (transport, recovery) = group::run(&args, g, &mut sink, &stop)?;
        answered = true;
    } else if let Some(addr) = args.fetch {
        (transport, recovery, answered) = consume_udp(&args, addr, start, &mut sink, &stop)?;
    }
    if !answered && !stop.load(Ordering::Relaxed) {
        if let Some(b) = &args.bootstrap {
            transport = consume_kafka(&args, b, start, &mut sink, &stop)?;
            recovery = String::new();
        }
    }
    finish(&args, sink, t0, &transport, &recovery, &stop)
}

/// A progress bar on a terminal while verifying.
fn progress_bar(args: &Args) -> Option<indicatif::ProgressBar> {
    (std::io::stderr().is_terminal() && args.verify).then(|| {
        let b = match args.count {
            Some(c) => indicatif::ProgressBar::new(c),
            None => indicatif::ProgressBar::new_spinner(),
        };
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos} records [{elapsed_precise}, {per_sec}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    })
}

/// One partition over kxgw UDP fetch: (transport, loss recovery line, whether the endpoint
/// answered). Not answering is an error unless `--bootstrap` gives a fallback.
fn consume_udp(
    args: &Args,
    addr: SocketAddr,
    start: StartAt,
    sink: &mut Sink<'_>,
    stop: &AtomicBool,
) -> Result<(String, String, bool)> {
    let mut answered = false;
    let cfg = client_config(args);
    let sub = Subscription {
        topic: args.topic.clone(),
        partition: args.partition,
        start,
    };
    let mut c = UdpConsumer::connect(addr, cfg, vec![sub])
        .with_context(|| format!("opening a UDP socket toward {addr}"))?;
    let mut tickets = ticket::Ticketing::new(&args.ticket, args.bootstrap.as_deref(), &args.topic)?;
    if let Some(t) = tickets
        .as_mut()
        .map(|t| t.get(Instant::now()))
        .transpose()?
        .flatten()
    {
        c.set_ticket(t);
    }
    'outer: while !stop.load(Ordering::Relaxed) && !sink.done() {
        let refused = c.client().ticket_refused();
        if let Some(t) = tickets
            .as_mut()
            .map(|t| t.renew(Instant::now(), refused))
            .transpose()?
            .flatten()
        {
            c.set_ticket(t);
        }
        c.poll(Duration::from_millis(50))
            .with_context(|| format!("fetching from {addr}"))?;
        while let Some(ev) = c.next_event() {
            match ev {
                Event::Connected => {
                    answered = true;
                    log::debug!("fetch endpoint {addr} answered");
                }
                Event::Batch(b) => {
                    sink.batch(b.partition, b.from_offset, &b.data)?;
                    c.recycle(b.data);
                }
                Event::CaughtUp { offset, .. } => {
                    log::debug!("caught up at offset {offset}");
                }
                Event::OffsetReset { from, to, .. } => {
                    eprintln!("kxgw consume: offset {from} out of range, continuing at {to}");
                }
                Event::PartitionError {
                    code,
                    log_start,
                    log_end,
                    ..
                } => {
                    sink.error(format!(
                        "{}-{}: {code} (log start {log_start}, end {log_end})",
                        args.topic, args.partition
                    ));
                    break 'outer;
                }
                Event::Unreachable => break 'outer,
            }
            if sink.done() {
                break 'outer;
            }
        }
        // A tailing consumer shows records as they come, not when the buffer fills.
        if args.follow {
            sink.out.flush()?;
        }
        if c.client().is_finished() {
            break;
        }
    }
    log::debug!("fetch client at exit: {}", c.client().state_summary());
    let st = c.client().stats();
    let transport = format!("kxgw UDP fetch {addr}");
    let recovery = format!(
        "loss recovered: {} re-fetches ({} bytes asked again), {} gap detections, {} timeouts, {} duplicates, {} CRC errors",
        st.refetches, st.refetch_bytes, st.gap_detections, st.timeouts, st.duplicate_datagrams, st.crc_errors
    );
    if !answered {
        match &args.bootstrap {
            Some(b) => eprintln!(
                "kxgw consume: the fetch endpoint {addr} did not answer within {} ms; falling back to the Kafka listener {b}",
                args.connect_timeout_ms
            ),
            None => bail!(
                "the fetch endpoint {addr} did not answer within {} ms (give --bootstrap HOST:PORT to fall back to Kafka)",
                args.connect_timeout_ms
            ),
        }
    }
    Ok((transport, recovery, answered))
}

/// One partition over the Kafka listener `b` (alone, or as the UDP fetch's fallback): the
/// transport name.
fn consume_kafka(
    args: &Args,
    b: &str,
    start: StartAt,
    sink: &mut Sink<'_>,
    stop: &AtomicBool,
) -> Result<String> {
    let committed = args.isolation_level == IsolationLevel::ReadCommitted;
    let mut k = KafkaFetcher::connect(
        b,
        &args.topic,
        args.partition,
        start,
        args.fetch_bytes,
        committed,
    )
    .with_context(|| format!("connecting to the Kafka listener {b}"))?;
    let transport = if args.fetch.is_some() {
        format!("Kafka TCP {b} (fallback)")
    } else {
        format!("Kafka TCP {b}")
    };
    while !stop.load(Ordering::Relaxed) && !sink.done() {
        let wait = if args.follow {
            args.max_wait_ms as i32
        } else {
            0
        };
        match k.fetch(wait)? {
            Some(batches) => {
                for (from, data) in batches {
                    sink.batch(args.partition, from, &data)?;
                }
            }
            None if args.follow => {}
            None => break,
        }
        if args.follow {
            sink.out.flush()?;
        }
    }
    Ok(transport)
}

/// Flushes, prints the `--verify` summary and decides the exit code (errors, or fewer
/// records than `--count` without being stopped, fail).
fn finish(
    args: &Args,
    mut sink: Sink<'_>,
    t0: Instant,
    transport: &str,
    recovery: &str,
    stop: &AtomicBool,
) -> Result<ExitCode> {
    sink.out.flush()?;
    if let Some(b) = &sink.bar {
        b.finish_and_clear();
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let t = &sink.tally;
    if args.verify {
        writeln!(
            sink.out,
            "verified {} records (offsets {}..{}) in {} batches, {} bytes ({:.1} MB) in {:.2} s: {:.0} records/s, {:.1} MB/s via {transport}; errors: {}",
            t.records,
            t.first.unwrap_or(0),
            t.next.unwrap_or(0),
            t.batches,
            t.bytes,
            t.bytes as f64 / 1e6,
            secs,
            t.records as f64 / secs,
            t.bytes as f64 / 1e6 / secs,
            t.errors
        )?;
        if !recovery.is_empty() {
            writeln!(sink.out, "{recovery}")?;
        }
        sink.out.flush()?;
    } else {
        log::info!("{} records via {transport}", t.records);
    }
    let short = args.count.is_some_and(|c| t.records < c) && !stop.load(Ordering::Relaxed);
    if short {
        eprintln!(
            "kxgw consume: only {} of {} records",
            t.records,
            args.count.unwrap_or(0)
        );
    }
    Ok(if t.errors > 0 || short {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
