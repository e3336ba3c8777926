//! `kxgw-bench`: the measuring instruments `scripts/bench.sh` drives. Each subcommand prints
//! one JSON line on stdout.

mod bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::bench::{fetch_load, hops, latency, load, raw_udp, sendfile_loop};

/// Measuring instruments of scripts/bench.sh (not a product binary).
#[derive(Debug, Parser)]
#[command(name = "kxgw-bench", version)]
pub struct Args {
    #[command(subcommand)]
    tool: Tool,
}

#[derive(Debug, Subcommand)]
enum Tool {
    /// Serve FILE over and over with sendfile(2) to every connection, no protocol (ceiling).
    SendfileServer {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Read BYTES from a stream server and report the throughput.
    StreamClient {
        #[arg(long)]
        connect: String,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 1 << 20)]
        buf_size: usize,
        /// CRC32C every byte read (the same per-byte work as the Kafka load client).
        #[arg(long)]
        crc: bool,
    },
    /// Receive the raw AF_XDP generator's pattern (`kxgw xdp-raw`) with recvmmsg; throughput.
    RawUdpClient {
        #[arg(long)]
        server: std::net::SocketAddr,
        #[arg(long)]
        bytes: u64,
        /// Datagram payload size asked for (the generator clamps it to its MTU).
        #[arg(long, default_value_t = 65536)]
        size: usize,
        #[arg(long, default_value_t = 16 << 20)]
        window: u64,
        /// CRC32C every payload byte (the same per-byte work as the fetch client).
        #[arg(long)]
        crc: bool,
    },
    /// N concurrent kxgw fetch-protocol consumers of one partition, from offset 0; aggregate
    /// throughput (the fetch paths' counterpart of kafka-load).
    FetchLoad(FetchLoadArgs),
    /// N concurrent Kafka Fetch consumers of one partition; aggregate throughput.
    KafkaLoad(KafkaLoadArgs),
    /// Append stamped records at a fixed rate, one per batch (the tailing probes' producer).
    TailProduce {
        #[arg(long)]
        log_dir: PathBuf,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 0)]
        partition: i32,
        #[arg(long)]
        count: u64,
        /// Records per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
    },
    /// Tail a partition with Kafka long-poll fetches; produce-to-consume delay percentiles.
    TailKafka {
        #[arg(long)]
        bootstrap: String,
        #[arg(long, default_value_t = 500)]
        max_wait_ms: i32,
        #[command(flatten)]
        tail: TailArgs,
    },
    /// Tail a partition over the kxgw fetch protocol; produce-to-consume delay percentiles.
    TailFetch {
        #[arg(long)]
        fetch: std::net::SocketAddr,
        #[command(flatten)]
        tail: TailArgs,
    },
    /// Join a tailing probe's records (--records-out) with the gateway's tail trace (`kxgw
    /// stats --tail-trace`): p50/p99/p99.9 of each record's hops (append to detection, to
    /// validation, to the send, to the arrival), one tab-separated line per hop.
    TailHops {
        #[arg(long)]
        trace: PathBuf,
        #[arg(long)]
        records: PathBuf,
        #[arg(long)]
        topic: String,
        /// The listener the probe read from: fetch (UDP, AF_XDP) or kafka.
        #[arg(long, value_parser = ["fetch", "kafka"])]
        via: String,
    },
}

/// Which partition the load clients read, and how many of them.
#[derive(Debug, clap::Args)]
struct Load {
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 0)]
    partition: i32,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
}

// The load tools' flags (no doc comment: the variant's is the subcommand's help).
#[derive(Debug, clap::Args)]
struct FetchLoadArgs {
    #[arg(long)]
    fetch: std::net::SocketAddr,
    #[command(flatten)]
    load: Load,
    /// Records per consumer.
    #[arg(long)]
    records: u64,
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

impl FetchLoadArgs {
    fn config(self) -> fetch_load::FetchLoadConfig {
        fetch_load::FetchLoadConfig {
            server: self.fetch,
            topic: self.load.topic,
            partition: self.load.partition,
            consumers: self.load.consumers,
            records: self.records,
            timeout: Duration::from_secs(self.timeout_secs),
        }
    }
}

#[derive(Debug, clap::Args)]
struct KafkaLoadArgs {
    #[arg(long)]
    bootstrap: String,
    #[command(flatten)]
    load: Load,
    #[arg(long, default_value_t = 0)]
    start_offset: i64,
    /// Records per consumer (0 = until the high watermark).
    #[arg(long, default_value_t = 0)]
    records: u64,
    /// partition_max_bytes of each Fetch.
    #[arg(long, default_value_t = 4 << 20)]
    max_bytes: i32,
    #[arg(long, default_value_t = 11)]
    fetch_version: i16,
    /// Skip the CRC32C check of each batch.
    #[arg(long)]
    no_verify: bool,
    /// Connect with TLS (an SSL listener), trusting this CA file (PEM).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

impl KafkaLoadArgs {
    fn config(self) -> Result<load::LoadConfig> {
        let tls = match &self.tls_ca {
            Some(ca) => Some(kxgw::kafka::tls::ClientTls::load(ca)?),
            None => None,
        };
        Ok(load::LoadConfig {
            bootstrap: self.bootstrap,
            topic: self.load.topic,
            partition: self.load.partition,
            consumers: self.load.consumers,
            start_offset: self.start_offset,
            records: self.records,
            max_bytes: self.max_bytes,
            version: self.fetch_version,
            verify: !self.no_verify,
            tls,
        })
    }
}

/// What a tailing probe waits for.
#[derive(Debug, clap::Args)]
struct TailArgs {
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 0)]
    partition: i32,
    /// First offset to wait for (the log end when the producer starts).
    #[arg(long)]
    offset: i64,
    /// Stamped records to receive.
    #[arg(long)]
    count: usize,
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Spin on the socket instead of sleeping in the kernel until a response arrives.
    #[arg(long)]
    spin: bool,
    /// Write every record received (partition, offset, stamp, arrival; CLOCK_MONOTONIC ns)
    /// to FILE, for `tail-hops`.
    #[arg(long, value_name = "FILE")]
    records_out: Option<PathBuf>,
}

impl TailArgs {
    fn tail(&self) -> latency::Tail {
        latency::Tail {
            partition: self.partition,
            offset: self.offset,
            count: self.count,
            deadline: Duration::from_secs(self.timeout_secs),
            wait: if self.spin {
                latency::Wait::Spin
            } else {
                latency::Wait::Block
            },
        }
    }
}

/// Runs one tool.
fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kxgw-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    match args.tool {
        Tool::SendfileServer { listen, file } => {
            sendfile_loop::serve(&listen, &file)?;
        }
        Tool::StreamClient {
            connect,
            bytes,
            buf_size,
            crc,
        } => {
            let t = sendfile_loop::read_stream(&connect, bytes, buf_size, crc)?;
            println!("{}", t.to_json(""));
        }
        Tool::RawUdpClient {
            server,
            bytes,
            size,
            window,
            crc,
        } => {
            let r = raw_udp::receive(server, bytes, size, window, Duration::from_millis(100), crc)?;
            println!(
                "{}",
                r.throughput.to_json(&format!(
                    ",\"datagrams\":{},\"lost_bytes\":{}",
                    r.datagrams, r.lost_bytes
                ))
            );
        }
        Tool::FetchLoad(a) => {
            let cfg = a.config();
            print_load(fetch_load::run(&cfg)?, cfg.consumers);
        }
        Tool::KafkaLoad(a) => {
            let cfg = a.config()?;
            print_load(load::run(&cfg)?, cfg.consumers);
        }
        Tool::TailProduce {
            log_dir,
            topic,
            partition,
            count,
            rate,
            value_size,
        } => {
            let first =
                latency::produce_stamped(&log_dir, &topic, partition, count, rate, value_size)?;
            println!("{{\"first_offset\":{first},\"count\":{count}}}");
        }
        Tool::TailKafka {
            bootstrap,
            max_wait_ms,
            tail,
        } => {
            let got = latency::tail_kafka(&bootstrap, &tail.topic, max_wait_ms, tail.tail())?;
            report_arrivals(&got, &tail)?;
        }
        Tool::TailFetch { fetch, tail } => {
            let got = latency::tail_fetch(fetch, &tail.topic, tail.tail())?;
            report_arrivals(&got, &tail)?;
        }
        Tool::TailHops {
            trace,
            records,
            topic,
            via,
        } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            let t = hops::Trace::parse(&read(&trace)?)
                .with_context(|| format!("parsing {}", trace.display()))?;
            let a = hops::parse_arrivals(&read(&records)?)
                .with_context(|| format!("parsing {}", records.display()))?;
            let j = hops::join(&t, &topic, &via, &a);
            print!("{}", j.to_tsv());
            if j.joined == 0 {
                bail!(
                    "none of the {} records is in the trace (topic {topic}, via {via})",
                    j.records
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A load run's JSON line.
fn print_load(t: bench::Throughput, consumers: usize) {
    println!("{}", t.to_json(&format!(",\"consumers\":{consumers}")));
}

/// A probe's summary line (and its record file, if asked for).
fn report_arrivals(got: &[latency::Arrival], tail: &TailArgs) -> Result<()> {
    if let Some(path) = &tail.records_out {
        latency::write_arrivals(path, got)?;
    }
    let mut d: Vec<u64> = got.iter().map(latency::Arrival::delay).collect();
    report_delays(&mut d, tail.count)
}

fn report_delays(d: &mut [u64], wanted: usize) -> Result<()> {
    match latency::Percentiles::of(d) {
        Some(p) => {
            println!("{}", p.to_json());
            if p.count < wanted {
                bail!(
                    "only {} of {wanted} stamped records arrived before the timeout",
                    p.count
                );
            }
            Ok(())
        }
        None => bail!("no stamped record arrived"),
    }
}
